//! Conversions between the engine's types and the wire types of `geosync-proto`.
//!
//! - Engine to wire: `From<&T>` for the matching [`v1`] message (infallible), e.g.
//!   `v1::ChangeEvent::from(&event)`; [`queue_item_to_wire`] for a sync queue item.
//! - Wire to engine: `TryFrom<v1::T>` with [`WireError`], e.g.
//!   `model::ChangeEvent::try_from(wire)?`. Nothing received is trusted: every guarantee of the
//!   engine's types is checked (node ids of 16 bytes, content ids of 32, names through
//!   [`Name::new`], regions through [`RegionId::new`], canonical vector clocks, permission bits
//!   within `0o7777`, consistent manifests, enums neither UNSPECIFIED nor unknown, and lists that
//!   stand for sorted maps or sets strictly ascending, so every value has exactly one encoding).
//!   Required message fields that are absent are rejected.
//! - [`node_id_from_wire`], [`content_id_from_wire`], [`region_from_wire`]: the same checks for
//!   the ids that requests carry outside these messages.
//!
//! A [`WireError`] names the offending field by its path from the converted message, e.g.
//! `change_event.version.forks[1].fork.change.stamp.region`. Converting `From` then `TryFrom`
//! gives back the same value, with one exception: [`QueueStats::oldest_age`] travels in whole
//! milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use geosync_proto::v1;

use crate::clock::{RegionId, RegionIdError, Timestamp, VectorClock};
use crate::model::{
    self, Change, ChangeOp, Dot, FieldChanges, Fork, Name, NameError, NodeId, NodeKind, NodeMeta,
    Version,
};
use crate::queue::{ItemState, QueueItem, QueueStats};
use crate::store::content::{ContentId, ContentRef, Manifest};

/// The permission bits a mode may hold (`NodeMeta::mode`, `Fork::mode`).
pub const MODE_MASK: u32 = 0o7777;

/// Why a wire message is not a valid engine value. Every variant names the offending field
/// (`field`) by its path from the converted message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A required message field is absent.
    #[error("missing field {field}")]
    Missing { field: String },

    /// A node id that is not 16 bytes.
    #[error("node id must be 16 bytes, got {len} ({field})")]
    NodeIdLength { field: String, len: usize },

    /// A content id that is not 32 bytes.
    #[error("content id must be 32 bytes, got {len} ({field})")]
    ContentIdLength { field: String, len: usize },

    /// A manifest's chunk hash that is not 32 bytes.
    #[error("chunk hash must be 32 bytes, got {len} ({field})")]
    ChunkHashLength { field: String, len: usize },

    /// A string that is not a region id.
    #[error("invalid region id {value:?} in {field}: {error}")]
    Region {
        field: String,
        value: String,
        error: RegionIdError,
    },

    /// Bytes that are not a file name.
    #[error("invalid name in {field}: {error}")]
    Name { field: String, error: NameError },

    /// An enum field left at its UNSPECIFIED zero value (or unset).
    #[error("unspecified {what} in {field}")]
    Unspecified { field: String, what: &'static str },

    /// An enum value this version does not know.
    #[error("unknown {what} {value} in {field}")]
    UnknownEnum {
        field: String,
        what: &'static str,
        value: i32,
    },

    /// A list that stands for a sorted map or set is not strictly ascending: `key` is not
    /// greater than the key before it.
    #[error("{what} out of order or duplicated at {key} ({field})")]
    Unordered {
        field: String,
        what: &'static str,
        key: String,
    },

    /// A vector clock entry with a zero counter (zero counters are left out).
    #[error("counter 0 in vector clock entry for region {region} ({field})")]
    ZeroCounter { field: String, region: String },

    /// A mode with bits beyond the permission bits.
    #[error("mode {mode:#o} has bits beyond 0o7777 ({field})")]
    Mode { field: String, mode: u32 },

    /// A manifest whose chunk size, size and chunk count disagree.
    #[error("invalid manifest in {field}: {reason}")]
    Manifest { field: String, reason: String },

    /// Queue statistics whose counts disagree.
    #[error("invalid queue stats in {field}: {reason}")]
    QueueStats { field: String, reason: String },
}

impl WireError {
    /// The path of the offending field, e.g. `change_event.version.meta.name`.
    pub fn field(&self) -> &str {
        match self {
            WireError::Missing { field }
            | WireError::NodeIdLength { field, .. }
            | WireError::ContentIdLength { field, .. }
            | WireError::ChunkHashLength { field, .. }
            | WireError::Region { field, .. }
            | WireError::Name { field, .. }
            | WireError::Unspecified { field, .. }
            | WireError::UnknownEnum { field, .. }
            | WireError::Unordered { field, .. }
            | WireError::ZeroCounter { field, .. }
            | WireError::Mode { field, .. }
            | WireError::Manifest { field, .. }
            | WireError::QueueStats { field, .. } => field,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field paths

/// The path of a field from the converted message, built on the stack as the conversion
/// descends and rendered only when an error names it.
#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Seg<'a>,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Field(&'a str),
    Index(usize),
}

impl<'a> Path<'a> {
    fn root(name: &'a str) -> Path<'a> {
        Path {
            parent: None,
            seg: Seg::Field(name),
        }
    }

    fn field(&'a self, name: &'static str) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Seg::Field(name),
        }
    }

    fn index(&'a self, i: usize) -> Path<'a> {
        Path {
            parent: Some(self),
            seg: Seg::Index(i),
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(parent) = self.parent {
            parent.fmt(f)?;
        }
        match self.seg {
            Seg::Field(name) if self.parent.is_some() => write!(f, ".{name}"),
            Seg::Field(name) => f.write_str(name),
            Seg::Index(i) => write!(f, "[{i}]"),
        }
    }
}

fn required<T>(value: Option<T>, path: &Path<'_>) -> Result<T, WireError> {
    value.ok_or_else(|| WireError::Missing {
        field: path.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Ids and scalars

/// A node id from its wire form (16 bytes, big-endian); `field` names it in errors.
pub fn node_id_from_wire(bytes: &[u8], field: &str) -> Result<NodeId, WireError> {
    node_id(bytes, &Path::root(field))
}

/// A content id from its wire form (32 bytes); `field` names it in errors.
pub fn content_id_from_wire(bytes: &[u8], field: &str) -> Result<ContentId, WireError> {
    content_id(bytes, &Path::root(field))
}

/// A region id from its wire form; `field` names it in errors.
pub fn region_from_wire(value: &str, field: &str) -> Result<RegionId, WireError> {
    region(value, &Path::root(field))
}

fn node_id(bytes: &[u8], path: &Path<'_>) -> Result<NodeId, WireError> {
    <[u8; 16]>::try_from(bytes)
        .map(NodeId::from_bytes)
        .map_err(|_| WireError::NodeIdLength {
            field: path.to_string(),
            len: bytes.len(),
        })
}

fn content_id(bytes: &[u8], path: &Path<'_>) -> Result<ContentId, WireError> {
    <[u8; 32]>::try_from(bytes)
        .map(ContentId)
        .map_err(|_| WireError::ContentIdLength {
            field: path.to_string(),
            len: bytes.len(),
        })
}

fn region(value: &str, path: &Path<'_>) -> Result<RegionId, WireError> {
    RegionId::new(value).map_err(|error| WireError::Region {
        field: path.to_string(),
        value: value.to_owned(),
        error,
    })
}

fn mode(mode: u32, path: &Path<'_>) -> Result<u32, WireError> {
    if mode & !MODE_MASK != 0 {
        return Err(WireError::Mode {
            field: path.to_string(),
            mode,
        });
    }
    Ok(mode)
}

/// Checks `key` is strictly greater than the previous key of a sorted list.
fn ascending<K: Ord>(
    previous: Option<&K>,
    key: &K,
    what: &'static str,
    shown: impl FnOnce() -> String,
    path: &Path<'_>,
) -> Result<(), WireError> {
    if previous.is_some_and(|p| p >= key) {
        return Err(WireError::Unordered {
            field: path.to_string(),
            what,
            key: shown(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Enums

impl From<NodeKind> for v1::NodeKind {
    fn from(kind: NodeKind) -> Self {
        match kind {
            NodeKind::File => v1::NodeKind::File,
            NodeKind::Directory => v1::NodeKind::Directory,
            NodeKind::Symlink => v1::NodeKind::Symlink,
        }
    }
}

impl TryFrom<v1::NodeKind> for NodeKind {
    type Error = WireError;

    fn try_from(kind: v1::NodeKind) -> Result<Self, WireError> {
        node_kind(kind as i32, &Path::root("node_kind"))
    }
}

fn node_kind(value: i32, path: &Path<'_>) -> Result<NodeKind, WireError> {
    const WHAT: &str = "node kind";
    match v1::NodeKind::try_from(value) {
        Ok(v1::NodeKind::File) => Ok(NodeKind::File),
        Ok(v1::NodeKind::Directory) => Ok(NodeKind::Directory),
        Ok(v1::NodeKind::Symlink) => Ok(NodeKind::Symlink),
        Ok(v1::NodeKind::Unspecified) => Err(WireError::Unspecified {
            field: path.to_string(),
            what: WHAT,
        }),
        Err(_) => Err(WireError::UnknownEnum {
            field: path.to_string(),
            what: WHAT,
            value,
        }),
    }
}

impl From<ChangeOp> for v1::ChangeOp {
    fn from(op: ChangeOp) -> Self {
        match op {
            ChangeOp::Create => v1::ChangeOp::Create,
            ChangeOp::Update => v1::ChangeOp::Update,
            ChangeOp::Metadata => v1::ChangeOp::Metadata,
            ChangeOp::Delete => v1::ChangeOp::Delete,
            ChangeOp::Rename => v1::ChangeOp::Rename,
        }
    }
}

impl TryFrom<v1::ChangeOp> for ChangeOp {
    type Error = WireError;

    fn try_from(op: v1::ChangeOp) -> Result<Self, WireError> {
        change_op(op as i32, &Path::root("change_op"))
    }
}

fn change_op(value: i32, path: &Path<'_>) -> Result<ChangeOp, WireError> {
    const WHAT: &str = "change op";
    match v1::ChangeOp::try_from(value) {
        Ok(v1::ChangeOp::Create) => Ok(ChangeOp::Create),
        Ok(v1::ChangeOp::Update) => Ok(ChangeOp::Update),
        Ok(v1::ChangeOp::Metadata) => Ok(ChangeOp::Metadata),
        Ok(v1::ChangeOp::Delete) => Ok(ChangeOp::Delete),
        Ok(v1::ChangeOp::Rename) => Ok(ChangeOp::Rename),
        Ok(v1::ChangeOp::Unspecified) => Err(WireError::Unspecified {
            field: path.to_string(),
            what: WHAT,
        }),
        Err(_) => Err(WireError::UnknownEnum {
            field: path.to_string(),
            what: WHAT,
            value,
        }),
    }
}

impl From<ItemState> for v1::QueueItemState {
    fn from(state: ItemState) -> Self {
        match state {
            ItemState::Pending => v1::QueueItemState::Pending,
            ItemState::InFlight => v1::QueueItemState::InFlight,
            ItemState::Retrying => v1::QueueItemState::Retrying,
            ItemState::Dead => v1::QueueItemState::Dead,
        }
    }
}

impl TryFrom<v1::QueueItemState> for ItemState {
    type Error = WireError;

    fn try_from(state: v1::QueueItemState) -> Result<Self, WireError> {
        queue_item_state(state as i32, &Path::root("queue_item_state"))
    }
}

/// A queue item state from the raw value of a `QueueItemState` field; `field` names it in
/// errors.
pub fn queue_item_state_from_wire(value: i32, field: &str) -> Result<ItemState, WireError> {
    queue_item_state(value, &Path::root(field))
}

fn queue_item_state(value: i32, path: &Path<'_>) -> Result<ItemState, WireError> {
    const WHAT: &str = "queue item state";
    match v1::QueueItemState::try_from(value) {
        Ok(v1::QueueItemState::Pending) => Ok(ItemState::Pending),
        Ok(v1::QueueItemState::InFlight) => Ok(ItemState::InFlight),
        Ok(v1::QueueItemState::Retrying) => Ok(ItemState::Retrying),
        Ok(v1::QueueItemState::Dead) => Ok(ItemState::Dead),
        Ok(v1::QueueItemState::Unspecified) => Err(WireError::Unspecified {
            field: path.to_string(),
            what: WHAT,
        }),
        Err(_) => Err(WireError::UnknownEnum {
            field: path.to_string(),
            what: WHAT,
            value,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Clocks

impl From<&Timestamp> for v1::Timestamp {
    fn from(t: &Timestamp) -> Self {
        v1::Timestamp {
            physical_ms: t.physical_ms,
            logical: t.logical,
            region: t.region.as_str().to_owned(),
        }
    }
}

impl TryFrom<v1::Timestamp> for Timestamp {
    type Error = WireError;

    fn try_from(t: v1::Timestamp) -> Result<Self, WireError> {
        timestamp(t, &Path::root("timestamp"))
    }
}

fn timestamp(t: v1::Timestamp, path: &Path<'_>) -> Result<Timestamp, WireError> {
    Ok(Timestamp {
        physical_ms: t.physical_ms,
        logical: t.logical,
        region: region(&t.region, &path.field("region"))?,
    })
}

impl From<&VectorClock> for v1::VectorClock {
    fn from(clock: &VectorClock) -> Self {
        v1::VectorClock {
            entries: clock
                .iter()
                .map(|(region, counter)| v1::ClockEntry {
                    region: region.as_str().to_owned(),
                    counter,
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::VectorClock> for VectorClock {
    type Error = WireError;

    fn try_from(clock: v1::VectorClock) -> Result<Self, WireError> {
        vector_clock(clock, &Path::root("vector_clock"))
    }
}

fn vector_clock(clock: v1::VectorClock, path: &Path<'_>) -> Result<VectorClock, WireError> {
    let entries_path = path.field("entries");
    let mut entries: Vec<(RegionId, u64)> = Vec::with_capacity(clock.entries.len());
    for (i, entry) in clock.entries.into_iter().enumerate() {
        let entry_path = entries_path.index(i);
        let region = region(&entry.region, &entry_path.field("region"))?;
        ascending(
            entries.last().map(|(r, _)| r),
            &region,
            "vector clock entries",
            || region.to_string(),
            &entry_path,
        )?;
        if entry.counter == 0 {
            return Err(WireError::ZeroCounter {
                field: entry_path.field("counter").to_string(),
                region: region.to_string(),
            });
        }
        entries.push((region, entry.counter));
    }
    // Sorted, unique and without zero counters: exactly the clock's canonical form.
    Ok(entries.into_iter().collect())
}

// ---------------------------------------------------------------------------------------------
// Model

impl From<&Change> for v1::Change {
    fn from(c: &Change) -> Self {
        v1::Change {
            stamp: Some((&c.stamp).into()),
            counter: c.counter,
        }
    }
}

impl TryFrom<v1::Change> for Change {
    type Error = WireError;

    fn try_from(c: v1::Change) -> Result<Self, WireError> {
        change(c, &Path::root("change"))
    }
}

fn change(c: v1::Change, path: &Path<'_>) -> Result<Change, WireError> {
    let stamp_path = path.field("stamp");
    Ok(Change {
        stamp: timestamp(required(c.stamp, &stamp_path)?, &stamp_path)?,
        counter: c.counter,
    })
}

/// A required `Change` field.
fn required_change(c: Option<v1::Change>, path: &Path<'_>) -> Result<Change, WireError> {
    change(required(c, path)?, path)
}

impl From<&Dot> for v1::Dot {
    fn from(d: &Dot) -> Self {
        v1::Dot {
            region: d.region.as_str().to_owned(),
            counter: d.counter,
        }
    }
}

impl TryFrom<v1::Dot> for Dot {
    type Error = WireError;

    fn try_from(d: v1::Dot) -> Result<Self, WireError> {
        dot(d, &Path::root("dot"))
    }
}

fn dot(d: v1::Dot, path: &Path<'_>) -> Result<Dot, WireError> {
    Ok(Dot {
        region: region(&d.region, &path.field("region"))?,
        counter: d.counter,
    })
}

fn show_dot(d: &Dot) -> String {
    format!("({}, {})", d.region, d.counter)
}

impl From<&ContentRef> for v1::ContentRef {
    fn from(c: &ContentRef) -> Self {
        v1::ContentRef {
            id: c.id.0.to_vec(),
            size: c.size,
        }
    }
}

impl TryFrom<v1::ContentRef> for ContentRef {
    type Error = WireError;

    fn try_from(c: v1::ContentRef) -> Result<Self, WireError> {
        content_ref(c, &Path::root("content_ref"))
    }
}

fn content_ref(c: v1::ContentRef, path: &Path<'_>) -> Result<ContentRef, WireError> {
    Ok(ContentRef {
        id: content_id(&c.id, &path.field("id"))?,
        size: c.size,
    })
}

fn optional_content_ref(
    c: Option<v1::ContentRef>,
    path: &Path<'_>,
) -> Result<Option<ContentRef>, WireError> {
    c.map(|c| content_ref(c, path)).transpose()
}

impl From<&NodeMeta> for v1::NodeMeta {
    fn from(m: &NodeMeta) -> Self {
        v1::NodeMeta {
            kind: v1::NodeKind::from(m.kind).into(),
            parent: m.parent.to_bytes().to_vec(),
            name: m.name.as_bytes().to_vec(),
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            size: m.size,
            mtime_ns: m.mtime_ns,
            content: m.content.as_ref().map(Into::into),
            target: m.target.clone(),
            xattrs: m
                .xattrs
                .iter()
                .map(|(name, value)| v1::Xattr {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            deleted: m.deleted,
        }
    }
}

impl TryFrom<v1::NodeMeta> for NodeMeta {
    type Error = WireError;

    fn try_from(m: v1::NodeMeta) -> Result<Self, WireError> {
        node_meta(m, &Path::root("node_meta"))
    }
}

fn node_meta(m: v1::NodeMeta, path: &Path<'_>) -> Result<NodeMeta, WireError> {
    let kind = node_kind(m.kind, &path.field("kind"))?;
    let parent = node_id(&m.parent, &path.field("parent"))?;
    let name = Name::new(m.name).map_err(|error| WireError::Name {
        field: path.field("name").to_string(),
        error,
    })?;
    let mode = mode(m.mode, &path.field("mode"))?;
    let content = optional_content_ref(m.content, &path.field("content"))?;

    let xattrs_path = path.field("xattrs");
    let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(m.xattrs.len());
    for (i, xattr) in m.xattrs.into_iter().enumerate() {
        ascending(
            xattrs.last().map(|(name, _)| name),
            &xattr.name,
            "xattrs",
            || format!("{:?}", String::from_utf8_lossy(&xattr.name)),
            &xattrs_path.index(i).field("name"),
        )?;
        xattrs.push((xattr.name, xattr.value));
    }

    Ok(NodeMeta {
        kind,
        parent,
        name,
        mode,
        uid: m.uid,
        gid: m.gid,
        size: m.size,
        mtime_ns: m.mtime_ns,
        content,
        target: m.target,
        // Already ascending: the map is built in one pass.
        xattrs: xattrs.into_iter().collect::<BTreeMap<_, _>>(),
        deleted: m.deleted,
    })
}

impl From<&FieldChanges> for v1::FieldChanges {
    fn from(c: &FieldChanges) -> Self {
        v1::FieldChanges {
            location: Some((&c.location).into()),
            content: Some((&c.content).into()),
            perms: Some((&c.perms).into()),
            mtime: Some((&c.mtime).into()),
            xattrs: Some((&c.xattrs).into()),
        }
    }
}

impl TryFrom<v1::FieldChanges> for FieldChanges {
    type Error = WireError;

    fn try_from(c: v1::FieldChanges) -> Result<Self, WireError> {
        field_changes(c, &Path::root("field_changes"))
    }
}

fn field_changes(c: v1::FieldChanges, path: &Path<'_>) -> Result<FieldChanges, WireError> {
    Ok(FieldChanges {
        location: required_change(c.location, &path.field("location"))?,
        content: required_change(c.content, &path.field("content"))?,
        perms: required_change(c.perms, &path.field("perms"))?,
        mtime: required_change(c.mtime, &path.field("mtime"))?,
        xattrs: required_change(c.xattrs, &path.field("xattrs"))?,
    })
}

impl From<&Fork> for v1::Fork {
    fn from(f: &Fork) -> Self {
        v1::Fork {
            change: Some((&f.change).into()),
            content: f.content.as_ref().map(Into::into),
            size: f.size,
            mtime_ns: f.mtime_ns,
            mode: f.mode,
        }
    }
}

impl TryFrom<v1::Fork> for Fork {
    type Error = WireError;

    fn try_from(f: v1::Fork) -> Result<Self, WireError> {
        fork(f, &Path::root("fork"))
    }
}

fn fork(f: v1::Fork, path: &Path<'_>) -> Result<Fork, WireError> {
    Ok(Fork {
        change: required_change(f.change, &path.field("change"))?,
        content: optional_content_ref(f.content, &path.field("content"))?,
        size: f.size,
        mtime_ns: f.mtime_ns,
        mode: mode(f.mode, &path.field("mode"))?,
    })
}

impl From<&Version> for v1::Version {
    fn from(v: &Version) -> Self {
        v1::Version {
            meta: Some((&v.meta).into()),
            vclock: Some((&v.vclock).into()),
            write: Some((&v.write).into()),
            changes: Some((&v.changes).into()),
            forks: v
                .forks
                .iter()
                .map(|(dot, fork)| v1::ForkEntry {
                    dot: Some(dot.into()),
                    fork: Some(fork.into()),
                })
                .collect(),
            dismissed: v.dismissed.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<v1::Version> for Version {
    type Error = WireError;

    fn try_from(v: v1::Version) -> Result<Self, WireError> {
        version(v, &Path::root("version"))
    }
}

fn version(v: v1::Version, path: &Path<'_>) -> Result<Version, WireError> {
    let meta_path = path.field("meta");
    let meta = node_meta(required(v.meta, &meta_path)?, &meta_path)?;
    let vclock_path = path.field("vclock");
    let vclock = vector_clock(required(v.vclock, &vclock_path)?, &vclock_path)?;
    let write = required_change(v.write, &path.field("write"))?;
    let changes_path = path.field("changes");
    let changes = field_changes(required(v.changes, &changes_path)?, &changes_path)?;

    let forks_path = path.field("forks");
    let mut forks: Vec<(Dot, Fork)> = Vec::with_capacity(v.forks.len());
    for (i, entry) in v.forks.into_iter().enumerate() {
        let entry_path = forks_path.index(i);
        let dot_path = entry_path.field("dot");
        let key = dot(required(entry.dot, &dot_path)?, &dot_path)?;
        ascending(
            forks.last().map(|(d, _)| d),
            &key,
            "forks",
            || show_dot(&key),
            &dot_path,
        )?;
        let fork_path = entry_path.field("fork");
        let value = fork(required(entry.fork, &fork_path)?, &fork_path)?;
        forks.push((key, value));
    }

    let dismissed_path = path.field("dismissed");
    let mut dismissed: Vec<Dot> = Vec::with_capacity(v.dismissed.len());
    for (i, d) in v.dismissed.into_iter().enumerate() {
        let dot_path = dismissed_path.index(i);
        let d = dot(d, &dot_path)?;
        ascending(
            dismissed.last(),
            &d,
            "dismissed dots",
            || show_dot(&d),
            &dot_path,
        )?;
        dismissed.push(d);
    }

    Ok(Version {
        meta,
        vclock,
        write,
        changes,
        // Already ascending: the map and set are built in one pass.
        forks: forks.into_iter().collect::<BTreeMap<_, _>>(),
        dismissed: dismissed.into_iter().collect::<BTreeSet<_>>(),
    })
}

impl From<&model::ChangeEvent> for v1::ChangeEvent {
    fn from(e: &model::ChangeEvent) -> Self {
        v1::ChangeEvent {
            node: e.node.to_bytes().to_vec(),
            op: v1::ChangeOp::from(e.op).into(),
            version: Some((&e.version).into()),
            origin: e.origin.as_str().to_owned(),
            seq: e.seq,
        }
    }
}

impl From<model::ChangeEvent> for v1::ChangeEvent {
    fn from(e: model::ChangeEvent) -> Self {
        (&e).into()
    }
}

impl TryFrom<v1::ChangeEvent> for model::ChangeEvent {
    type Error = WireError;

    fn try_from(e: v1::ChangeEvent) -> Result<Self, WireError> {
        change_event(e, &Path::root("change_event"))
    }
}

fn change_event(e: v1::ChangeEvent, path: &Path<'_>) -> Result<model::ChangeEvent, WireError> {
    let node = node_id(&e.node, &path.field("node"))?;
    let op = change_op(e.op, &path.field("op"))?;
    let version_path = path.field("version");
    let version = version(required(e.version, &version_path)?, &version_path)?;
    let origin = region(&e.origin, &path.field("origin"))?;
    Ok(model::ChangeEvent {
        node,
        op,
        version,
        origin,
        seq: e.seq,
    })
}

// ---------------------------------------------------------------------------------------------
// Content

impl From<&Manifest> for v1::Manifest {
    fn from(m: &Manifest) -> Self {
        v1::Manifest {
            chunk_size: m.chunk_size,
            size: m.size,
            chunks: m.chunks.iter().map(|hash| hash.to_vec()).collect(),
        }
    }
}

impl TryFrom<v1::Manifest> for Manifest {
    type Error = WireError;

    fn try_from(m: v1::Manifest) -> Result<Self, WireError> {
        manifest(m, &Path::root("manifest"))
    }
}

fn manifest(m: v1::Manifest, path: &Path<'_>) -> Result<Manifest, WireError> {
    let chunks_path = path.field("chunks");
    let chunks = m
        .chunks
        .iter()
        .enumerate()
        .map(|(i, hash)| {
            <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| WireError::ChunkHashLength {
                field: chunks_path.index(i).to_string(),
                len: hash.len(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Manifest::new(m.chunk_size, m.size, chunks).map_err(|e| WireError::Manifest {
        field: path.to_string(),
        reason: match e {
            crate::Error::InvalidManifest { reason } => reason,
            other => other.to_string(),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Sync queue

impl From<&QueueStats> for v1::QueueStats {
    fn from(s: &QueueStats) -> Self {
        v1::QueueStats {
            pending: s
                .pending_by_priority
                .iter()
                .fold(0u64, |sum, n| sum.saturating_add(*n)),
            pending_by_priority: s.pending_by_priority.to_vec(),
            inflight: s.inflight,
            retrying: s.retrying,
            dead: s.dead,
            oldest_age_ms: s
                .oldest_age
                .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

impl TryFrom<v1::QueueStats> for QueueStats {
    type Error = WireError;

    /// Rejects a `pending_by_priority` that does not hold 4 counts summing to `pending`; an
    /// empty one is accepted only when `pending` is 0 (the engine always knows the split).
    fn try_from(s: v1::QueueStats) -> Result<Self, WireError> {
        queue_stats(s, &Path::root("queue_stats"))
    }
}

fn queue_stats(s: v1::QueueStats, path: &Path<'_>) -> Result<QueueStats, WireError> {
    let invalid = |reason: String| WireError::QueueStats {
        field: path.field("pending_by_priority").to_string(),
        reason,
    };
    let pending_by_priority: [u64; 4] = match s.pending_by_priority.len() {
        0 if s.pending == 0 => [0; 4],
        0 => {
            return Err(invalid(format!(
                "empty, but pending is {}: the split by priority is needed",
                s.pending
            )));
        }
        _ => <[u64; 4]>::try_from(s.pending_by_priority.as_slice()).map_err(|_| {
            invalid(format!(
                "{} counts, expected 4 (one per priority)",
                s.pending_by_priority.len()
            ))
        })?,
    };
    let sum = pending_by_priority
        .iter()
        .try_fold(0u64, |sum, n| sum.checked_add(*n));
    if sum != Some(s.pending) {
        return Err(invalid(format!(
            "{pending_by_priority:?} does not sum to pending {}",
            s.pending
        )));
    }
    Ok(QueueStats {
        pending_by_priority,
        inflight: s.inflight,
        retrying: s.retrying,
        dead: s.dead,
        oldest_age: s.oldest_age_ms.map(Duration::from_millis),
    })
}

/// A sync queue item as the operator sees it, for `Admin.ListQueue`. `path` is the node's path
/// for display (the caller resolves it). The op comes from the item's payload (an encoded
/// [`model::ChangeEvent`]); a payload that does not decode gives `CHANGE_OP_UNSPECIFIED`, so one
/// unreadable item does not break a listing.
pub fn queue_item_to_wire(item: &QueueItem, path: &str) -> v1::QueueItem {
    let op = model::ChangeEvent::decode(&item.payload)
        .map(|event| v1::ChangeOp::from(event.op))
        .unwrap_or(v1::ChangeOp::Unspecified);
    v1::QueueItem {
        id: item.id,
        priority: u32::from(item.priority),
        op: op.into(),
        path: path.to_owned(),
        attempts: item.attempts,
        next_attempt_ms: item.due_at_ms,
        last_error: item.last_error.clone().unwrap_or_default(),
        state: v1::QueueItemState::from(item.state).into(),
        enqueued_at_ms: item.enqueued_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use geosync_proto::v1;
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::model::{Change, ChangeOp, Dot, FieldChanges, Fork, Name, NodeId, NodeKind};

    fn region(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    fn change(r: &str, ms: u64, counter: u64) -> Change {
        Change {
            stamp: Timestamp {
                physical_ms: ms,
                logical: 7,
                region: region(r),
            },
            counter,
        }
    }

    fn dot(r: &str, counter: u64) -> Dot {
        Dot {
            region: region(r),
            counter,
        }
    }

    fn content(seed: u8) -> ContentRef {
        ContentRef {
            id: ContentId([seed; 32]),
            size: 5 << 30,
        }
    }

    /// An event with every optional field set and every list non-empty.
    fn full_event() -> model::ChangeEvent {
        let write = change("us", 1_700_000_000_123, 9);
        let mut forks = BTreeMap::new();
        for (r, counter) in [("ap", 4), ("ap", 11), ("eu", 2)] {
            forks.insert(
                dot(r, counter),
                Fork {
                    change: change(r, 1_699_999_999_999, counter),
                    content: (counter != 11).then(|| content(counter as u8)),
                    size: 42,
                    mtime_ns: i64::MIN,
                    mode: 0o644,
                },
            );
        }
        model::ChangeEvent {
            node: NodeId(u128::MAX - 41),
            op: ChangeOp::Rename,
            version: Version {
                meta: NodeMeta {
                    kind: NodeKind::Symlink,
                    parent: NodeId::ROOT,
                    name: Name::new(b"caf\xc3\xa9 \xff.mkv".to_vec()).unwrap(),
                    mode: 0o4755,
                    uid: 1000,
                    gid: u32::MAX,
                    size: 12,
                    mtime_ns: -1_234_567_890_123,
                    content: Some(content(1)),
                    target: Some(b"../elsewhere".to_vec()),
                    xattrs: [
                        (b"user.a".to_vec(), Vec::new()),
                        (b"user.b".to_vec(), vec![0, 255, 10]),
                        (b"user.\xff".to_vec(), b"x".to_vec()),
                    ]
                    .into_iter()
                    .collect(),
                    deleted: true,
                },
                vclock: [(region("eu"), 3), (region("us"), 9), (region("ap"), 11)]
                    .into_iter()
                    .collect(),
                write: write.clone(),
                changes: FieldChanges {
                    location: write,
                    content: change("eu", 1_700_000_000_001, 3),
                    perms: change("eu", 1_700_000_000_002, 2),
                    mtime: change("eu", 1_700_000_000_003, 1),
                    xattrs: change("us", 1_700_000_000_004, 0),
                },
                forks,
                dismissed: [dot("ap", 2), dot("ap", 4), dot("eu", 1)]
                    .into_iter()
                    .collect(),
            },
            origin: region("us"),
            seq: Some(u64::MAX),
        }
    }

    /// An event with every optional field absent and every list empty.
    fn bare_event() -> model::ChangeEvent {
        let c = change("eu", 0, 0);
        model::ChangeEvent {
            node: NodeId(2),
            op: ChangeOp::Create,
            version: Version {
                meta: NodeMeta {
                    kind: NodeKind::Directory,
                    parent: NodeId(0),
                    name: Name::new(b"d".to_vec()).unwrap(),
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    mtime_ns: 0,
                    content: None,
                    target: None,
                    xattrs: BTreeMap::new(),
                    deleted: false,
                },
                vclock: VectorClock::new(),
                write: c.clone(),
                changes: FieldChanges::all(&c),
                forks: BTreeMap::new(),
                dismissed: BTreeSet::new(),
            },
            origin: region("eu"),
            seq: None,
        }
    }

    /// `event` through the wire type, then through prost bytes; both must give it back.
    fn assert_round_trips(event: &model::ChangeEvent) {
        let wire = v1::ChangeEvent::from(event);
        assert_eq!(&model::ChangeEvent::try_from(wire.clone()).unwrap(), event);
        let bytes = wire.encode_to_vec();
        let decoded = v1::ChangeEvent::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, wire);
        let back = model::ChangeEvent::try_from(decoded).unwrap();
        assert_eq!(&back, event);
        // One encoding per value.
        assert_eq!(v1::ChangeEvent::from(back).encode_to_vec(), bytes);
    }

    fn wire_full() -> v1::ChangeEvent {
        v1::ChangeEvent::from(&full_event())
    }

    /// A change to a valid wire event that makes it invalid.
    type Mutation = fn(&mut v1::ChangeEvent);

    fn version(e: &mut v1::ChangeEvent) -> &mut v1::Version {
        e.version.as_mut().unwrap()
    }

    fn meta(e: &mut v1::ChangeEvent) -> &mut v1::NodeMeta {
        version(e).meta.as_mut().unwrap()
    }

    /// Converts a mutated event, expecting an error whose message names `field`.
    fn reject(mutate: impl FnOnce(&mut v1::ChangeEvent), field: &str) -> WireError {
        let mut e = wire_full();
        mutate(&mut e);
        let err = model::ChangeEvent::try_from(e).expect_err("must be rejected");
        assert_eq!(err.field(), field, "{err}");
        assert!(err.to_string().contains(field), "{err}");
        err
    }

    #[test]
    fn full_and_bare_events_round_trip() {
        assert_round_trips(&full_event());
        assert_round_trips(&bare_event());
        // `Some(0)` stays distinct from `None`.
        assert_round_trips(&model::ChangeEvent {
            seq: Some(0),
            ..bare_event()
        });
        let wire = wire_full();
        assert_eq!(wire.op(), v1::ChangeOp::Rename);
        assert_eq!(wire.node, (u128::MAX - 41).to_be_bytes());
        let v = wire.version.unwrap();
        assert_eq!(v.meta.as_ref().unwrap().kind(), v1::NodeKind::Symlink);
        let regions: Vec<_> = v
            .vclock
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.region)
            .collect();
        assert_eq!(regions, ["ap", "eu", "us"]);
        assert_eq!(v.forks.len(), 3);
        assert_eq!(v.dismissed.len(), 3);
    }

    #[test]
    fn nested_types_round_trip_on_their_own() {
        let e = full_event();
        let v = &e.version;
        assert_eq!(Version::try_from(v1::Version::from(v)).unwrap(), *v);
        assert_eq!(
            NodeMeta::try_from(v1::NodeMeta::from(&v.meta)).unwrap(),
            v.meta
        );
        assert_eq!(
            VectorClock::try_from(v1::VectorClock::from(&v.vclock)).unwrap(),
            v.vclock
        );
        assert_eq!(
            Change::try_from(v1::Change::from(&v.write)).unwrap(),
            v.write
        );
        assert_eq!(
            Timestamp::try_from(v1::Timestamp::from(&v.write.stamp)).unwrap(),
            v.write.stamp
        );
        assert_eq!(
            FieldChanges::try_from(v1::FieldChanges::from(&v.changes)).unwrap(),
            v.changes
        );
        for (d, f) in &v.forks {
            assert_eq!(Dot::try_from(v1::Dot::from(d)).unwrap(), *d);
            assert_eq!(Fork::try_from(v1::Fork::from(f)).unwrap(), *f);
        }
        let c = content(7);
        assert_eq!(ContentRef::try_from(v1::ContentRef::from(&c)).unwrap(), c);
        for kind in [NodeKind::File, NodeKind::Directory, NodeKind::Symlink] {
            assert_eq!(NodeKind::try_from(v1::NodeKind::from(kind)).unwrap(), kind);
        }
        for op in [
            ChangeOp::Create,
            ChangeOp::Update,
            ChangeOp::Metadata,
            ChangeOp::Delete,
            ChangeOp::Rename,
        ] {
            assert_eq!(ChangeOp::try_from(v1::ChangeOp::from(op)).unwrap(), op);
        }
        for state in [
            ItemState::Pending,
            ItemState::InFlight,
            ItemState::Retrying,
            ItemState::Dead,
        ] {
            let wire = v1::QueueItemState::from(state);
            assert_eq!(ItemState::try_from(wire).unwrap(), state);
            assert_eq!(queue_item_state_from_wire(wire as i32, "s").unwrap(), state);
        }
        // Errors of a conversion started from a nested type name that type.
        let err = Timestamp::try_from(v1::Timestamp {
            region: "EU".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.field(), "timestamp.region");
    }

    fn region_strategy() -> impl Strategy<Value = RegionId> {
        prop_oneof![Just("ap"), Just("eu"), Just("us"), Just("a-1_z")].prop_map(region)
    }

    fn change_strategy() -> impl Strategy<Value = Change> {
        (any::<u64>(), any::<u32>(), region_strategy(), any::<u64>()).prop_map(
            |(physical_ms, logical, region, counter)| Change {
                stamp: Timestamp {
                    physical_ms,
                    logical,
                    region,
                },
                counter,
            },
        )
    }

    fn dot_strategy() -> impl Strategy<Value = Dot> {
        (region_strategy(), 0..5u64).prop_map(|(region, counter)| Dot { region, counter })
    }

    fn content_strategy() -> impl Strategy<Value = Option<ContentRef>> {
        proptest::option::of(
            (any::<[u8; 32]>(), any::<u64>()).prop_map(|(id, size)| ContentRef {
                id: ContentId(id),
                size,
            }),
        )
    }

    fn name_strategy() -> impl Strategy<Value = Name> {
        proptest::collection::vec(any::<u8>(), 1..12)
            .prop_filter_map("valid name", |b| Name::new(b).ok())
    }

    fn meta_strategy() -> impl Strategy<Value = NodeMeta> {
        (
            prop_oneof![
                Just(NodeKind::File),
                Just(NodeKind::Directory),
                Just(NodeKind::Symlink)
            ],
            any::<u128>(),
            name_strategy(),
            0..=MODE_MASK,
            (any::<u32>(), any::<u32>(), any::<u64>(), any::<i64>()),
            content_strategy(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..6),
                proptest::collection::vec(any::<u8>(), 0..6),
                0..4,
            ),
            any::<bool>(),
        )
            .prop_map(
                |(
                    kind,
                    parent,
                    name,
                    mode,
                    (uid, gid, size, mtime_ns),
                    content,
                    target,
                    xattrs,
                    deleted,
                )| {
                    NodeMeta {
                        kind,
                        parent: NodeId(parent),
                        name,
                        mode,
                        uid,
                        gid,
                        size,
                        mtime_ns,
                        content,
                        target,
                        xattrs,
                        deleted,
                    }
                },
            )
    }

    fn fork_strategy() -> impl Strategy<Value = Fork> {
        (
            change_strategy(),
            content_strategy(),
            any::<u64>(),
            any::<i64>(),
            0..=MODE_MASK,
        )
            .prop_map(|(change, content, size, mtime_ns, mode)| Fork {
                change,
                content,
                size,
                mtime_ns,
                mode,
            })
    }

    fn event_strategy() -> impl Strategy<Value = model::ChangeEvent> {
        let version = (
            meta_strategy(),
            proptest::collection::btree_map(region_strategy(), 1..u64::MAX, 0..4),
            change_strategy(),
            proptest::collection::vec(change_strategy(), 5),
            proptest::collection::btree_map(dot_strategy(), fork_strategy(), 0..3),
            proptest::collection::btree_set(dot_strategy(), 0..4),
        )
            .prop_map(|(meta, clock, write, changes, forks, dismissed)| Version {
                meta,
                vclock: clock.into_iter().collect(),
                write,
                changes: FieldChanges {
                    location: changes[0].clone(),
                    content: changes[1].clone(),
                    perms: changes[2].clone(),
                    mtime: changes[3].clone(),
                    xattrs: changes[4].clone(),
                },
                forks,
                dismissed,
            });
        (
            any::<u128>(),
            prop_oneof![
                Just(ChangeOp::Create),
                Just(ChangeOp::Update),
                Just(ChangeOp::Metadata),
                Just(ChangeOp::Delete),
                Just(ChangeOp::Rename)
            ],
            version,
            region_strategy(),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(node, op, version, origin, seq)| model::ChangeEvent {
                node: NodeId(node),
                op,
                version,
                origin,
                seq,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn random_events_round_trip(event in event_strategy()) {
            let wire = v1::ChangeEvent::from(&event);
            prop_assert_eq!(&model::ChangeEvent::try_from(wire.clone()).unwrap(), &event);
            let bytes = wire.encode_to_vec();
            let decoded = v1::ChangeEvent::decode(bytes.as_slice()).unwrap();
            prop_assert_eq!(&decoded, &wire);
            prop_assert_eq!(&model::ChangeEvent::try_from(decoded).unwrap(), &event);
        }
    }

    #[test]
    fn missing_required_fields_are_rejected() {
        let cases: [(Mutation, &str); 14] = [
            (|e| e.version = None, "change_event.version"),
            (|e| version(e).meta = None, "change_event.version.meta"),
            (|e| version(e).vclock = None, "change_event.version.vclock"),
            (|e| version(e).write = None, "change_event.version.write"),
            (
                |e| version(e).changes = None,
                "change_event.version.changes",
            ),
            (
                |e| version(e).write.as_mut().unwrap().stamp = None,
                "change_event.version.write.stamp",
            ),
            (
                |e| version(e).changes.as_mut().unwrap().location = None,
                "change_event.version.changes.location",
            ),
            (
                |e| version(e).changes.as_mut().unwrap().content = None,
                "change_event.version.changes.content",
            ),
            (
                |e| version(e).changes.as_mut().unwrap().perms = None,
                "change_event.version.changes.perms",
            ),
            (
                |e| version(e).changes.as_mut().unwrap().mtime = None,
                "change_event.version.changes.mtime",
            ),
            (
                |e| {
                    version(e)
                        .changes
                        .as_mut()
                        .unwrap()
                        .xattrs
                        .as_mut()
                        .unwrap()
                        .stamp = None
                },
                "change_event.version.changes.xattrs.stamp",
            ),
            (
                |e| version(e).forks[1].dot = None,
                "change_event.version.forks[1].dot",
            ),
            (
                |e| version(e).forks[2].fork = None,
                "change_event.version.forks[2].fork",
            ),
            (
                |e| version(e).forks[0].fork.as_mut().unwrap().change = None,
                "change_event.version.forks[0].fork.change",
            ),
        ];
        for (mutate, field) in cases {
            let err = reject(mutate, field);
            assert!(matches!(err, WireError::Missing { .. }), "{err}");
            assert_eq!(err.to_string(), format!("missing field {field}"));
        }
    }

    #[test]
    fn bad_node_ids_are_rejected() {
        let err = reject(|e| e.node = vec![1, 2, 3], "change_event.node");
        assert!(
            matches!(err, WireError::NodeIdLength { len: 3, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "node id must be 16 bytes, got 3 (change_event.node)"
        );
        let err = reject(
            |e| meta(e).parent = vec![0; 17],
            "change_event.version.meta.parent",
        );
        assert!(
            matches!(err, WireError::NodeIdLength { len: 17, .. }),
            "{err}"
        );
        let err = reject(|e| e.node.clear(), "change_event.node");
        assert!(
            matches!(err, WireError::NodeIdLength { len: 0, .. }),
            "{err}"
        );
        assert_eq!(
            node_id_from_wire(&[0; 16], "conflict.node").unwrap(),
            NodeId(0)
        );
        let err = node_id_from_wire(&[0; 4], "conflict.node").unwrap_err();
        assert_eq!(err.field(), "conflict.node");
    }

    #[test]
    fn bad_content_ids_are_rejected() {
        let err = reject(
            |e| {
                meta(e)
                    .content
                    .as_mut()
                    .unwrap()
                    .id
                    .pop()
                    .map(drop)
                    .unwrap()
            },
            "change_event.version.meta.content.id",
        );
        assert!(
            matches!(err, WireError::ContentIdLength { len: 31, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("content id must be 32 bytes, got 31")
        );
        let err = reject(
            |e| {
                version(e).forks[0]
                    .fork
                    .as_mut()
                    .unwrap()
                    .content
                    .as_mut()
                    .unwrap()
                    .id = vec![]
            },
            "change_event.version.forks[0].fork.content.id",
        );
        assert!(
            matches!(err, WireError::ContentIdLength { len: 0, .. }),
            "{err}"
        );
        let err = ContentRef::try_from(v1::ContentRef {
            id: vec![0; 33],
            size: 1,
        })
        .unwrap_err();
        assert_eq!(err.field(), "content_ref.id");
        assert_eq!(
            content_id_from_wire(&[9; 32], "locate_request.content_id").unwrap(),
            ContentId([9; 32])
        );
        assert!(content_id_from_wire(&[9; 3], "locate_request.content_id").is_err());
    }

    #[test]
    fn bad_regions_are_rejected() {
        let err = reject(|e| e.origin = "EU".into(), "change_event.origin");
        assert!(
            matches!(&err, WireError::Region { value, .. } if value == "EU"),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("invalid region id \"EU\" in change_event.origin: "),
            "{err}"
        );
        let err = reject(|e| e.origin.clear(), "change_event.origin");
        assert!(matches!(err, WireError::Region { .. }), "{err}");
        let cases: [(Mutation, &str); 5] = [
            (
                |e| version(e).vclock.as_mut().unwrap().entries[1].region = "e u".into(),
                "change_event.version.vclock.entries[1].region",
            ),
            (
                |e| {
                    version(e)
                        .write
                        .as_mut()
                        .unwrap()
                        .stamp
                        .as_mut()
                        .unwrap()
                        .region = "x".repeat(33)
                },
                "change_event.version.write.stamp.region",
            ),
            (
                |e| version(e).forks[1].dot.as_mut().unwrap().region = "Ap".into(),
                "change_event.version.forks[1].dot.region",
            ),
            (
                |e| {
                    let fork = version(e).forks[2].fork.as_mut().unwrap();
                    fork.change.as_mut().unwrap().stamp.as_mut().unwrap().region = "é".into();
                },
                "change_event.version.forks[2].fork.change.stamp.region",
            ),
            (
                |e| version(e).dismissed[0].region = "ap/".into(),
                "change_event.version.dismissed[0].region",
            ),
        ];
        for (mutate, field) in cases {
            let err = reject(mutate, field);
            assert!(matches!(err, WireError::Region { .. }), "{err}");
        }
        assert_eq!(
            region_from_wire("eu", "push_request.region").unwrap(),
            region("eu")
        );
        assert_eq!(
            region_from_wire("", "push_request.region")
                .unwrap_err()
                .field(),
            "push_request.region"
        );
    }

    #[test]
    fn bad_names_are_rejected() {
        for name in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            let err = reject(
                |e| meta(e).name = name.to_vec(),
                "change_event.version.meta.name",
            );
            assert!(matches!(err, WireError::Name { .. }), "{err}");
            assert!(
                err.to_string()
                    .starts_with("invalid name in change_event.version.meta.name: "),
                "{err}"
            );
        }
    }

    #[test]
    fn unspecified_and_unknown_enums_are_rejected() {
        let err = reject(|e| e.op = 0, "change_event.op");
        assert!(
            matches!(
                err,
                WireError::Unspecified {
                    what: "change op",
                    ..
                }
            ),
            "{err}"
        );
        let err = reject(|e| e.op = 99, "change_event.op");
        assert!(
            matches!(err, WireError::UnknownEnum { value: 99, .. }),
            "{err}"
        );
        assert_eq!(err.to_string(), "unknown change op 99 in change_event.op");
        let err = reject(|e| meta(e).kind = 0, "change_event.version.meta.kind");
        assert!(matches!(err, WireError::Unspecified { .. }), "{err}");
        let err = reject(|e| meta(e).kind = 7, "change_event.version.meta.kind");
        assert!(
            matches!(err, WireError::UnknownEnum { value: 7, .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("unknown node kind 7"), "{err}");
        let err = reject(|e| meta(e).kind = -1, "change_event.version.meta.kind");
        assert!(
            matches!(err, WireError::UnknownEnum { value: -1, .. }),
            "{err}"
        );

        assert!(NodeKind::try_from(v1::NodeKind::Unspecified).is_err());
        assert!(ChangeOp::try_from(v1::ChangeOp::Unspecified).is_err());
        assert!(ItemState::try_from(v1::QueueItemState::Unspecified).is_err());
        let err = queue_item_state_from_wire(9, "queue_item.state").unwrap_err();
        assert!(
            matches!(err, WireError::UnknownEnum { value: 9, .. }),
            "{err}"
        );
    }

    #[test]
    fn non_canonical_vector_clocks_are_rejected() {
        fn entries(e: &mut v1::ChangeEvent) -> &mut Vec<v1::ClockEntry> {
            &mut version(e).vclock.as_mut().unwrap().entries
        }
        // ap, eu, us.
        let err = reject(
            |e| entries(e).swap(0, 1),
            "change_event.version.vclock.entries[1]",
        );
        assert!(
            matches!(&err, WireError::Unordered { key, .. } if key == "ap"),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("vector clock entries out of order or duplicated at ap"),
            "{err}"
        );
        let err = reject(
            |e| entries(e)[2].region = "eu".into(),
            "change_event.version.vclock.entries[2]",
        );
        assert!(matches!(err, WireError::Unordered { .. }), "{err}");
        let err = reject(
            |e| entries(e)[1].counter = 0,
            "change_event.version.vclock.entries[1].counter",
        );
        assert!(
            matches!(&err, WireError::ZeroCounter { region, .. } if region == "eu"),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("counter 0 in vector clock entry for region eu"),
            "{err}"
        );
    }

    #[test]
    fn unordered_or_duplicated_lists_are_rejected() {
        let err = reject(
            |e| meta(e).xattrs.swap(0, 1),
            "change_event.version.meta.xattrs[1].name",
        );
        assert!(
            matches!(&err, WireError::Unordered { what: "xattrs", key, .. } if key == "\"user.a\""),
            "{err}"
        );
        let err = reject(
            |e| meta(e).xattrs[1].name = b"user.a".to_vec(),
            "change_event.version.meta.xattrs[1].name",
        );
        assert!(matches!(err, WireError::Unordered { .. }), "{err}");

        // Forks: (ap, 4), (ap, 11), (eu, 2).
        let err = reject(
            |e| version(e).forks.swap(0, 1),
            "change_event.version.forks[1].dot",
        );
        assert!(
            matches!(&err, WireError::Unordered { what: "forks", key, .. } if key == "(ap, 4)"),
            "{err}"
        );
        let err = reject(
            |e| {
                let f = version(e).forks[0].clone();
                version(e).forks.insert(0, f);
            },
            "change_event.version.forks[1].dot",
        );
        assert!(matches!(err, WireError::Unordered { .. }), "{err}");

        // Dismissed: (ap, 2), (ap, 4), (eu, 1).
        let err = reject(
            |e| version(e).dismissed.swap(1, 2),
            "change_event.version.dismissed[2]",
        );
        assert!(
            matches!(
                &err,
                WireError::Unordered {
                    what: "dismissed dots",
                    ..
                }
            ),
            "{err}"
        );
        let err = reject(
            |e| version(e).dismissed[1].counter = 2,
            "change_event.version.dismissed[1]",
        );
        assert!(matches!(err, WireError::Unordered { .. }), "{err}");
    }

    #[test]
    fn modes_beyond_permission_bits_are_rejected() {
        let err = reject(
            |e| meta(e).mode = 0o170000,
            "change_event.version.meta.mode",
        );
        assert!(
            matches!(err, WireError::Mode { mode: 0o170000, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "mode 0o170000 has bits beyond 0o7777 (change_event.version.meta.mode)"
        );
        let err = reject(
            |e| version(e).forks[1].fork.as_mut().unwrap().mode = 0o100644,
            "change_event.version.forks[1].fork.mode",
        );
        assert!(matches!(err, WireError::Mode { .. }), "{err}");
    }

    #[test]
    fn manifests_convert_and_are_validated() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let m = Manifest::for_bytes(&data, 4096).unwrap();
        let wire = v1::Manifest::from(&m);
        assert_eq!(wire.chunks.len(), 3);
        let bytes = wire.encode_to_vec();
        let back = Manifest::try_from(v1::Manifest::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.id(), m.id());
        let empty = Manifest::for_bytes(&[], 4096).unwrap();
        assert_eq!(
            Manifest::try_from(v1::Manifest::from(&empty)).unwrap(),
            empty
        );

        let mut short_hash = wire.clone();
        short_hash.chunks[2].truncate(5);
        let err = Manifest::try_from(short_hash).unwrap_err();
        assert!(
            matches!(err, WireError::ChunkHashLength { len: 5, .. }),
            "{err}"
        );
        assert_eq!(err.field(), "manifest.chunks[2]");
        assert!(err.to_string().contains("manifest.chunks[2]"));

        let mut missing_chunk = wire.clone();
        missing_chunk.chunks.pop();
        let err = Manifest::try_from(missing_chunk).unwrap_err();
        assert!(matches!(err, WireError::Manifest { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("invalid manifest in manifest: "),
            "{err}"
        );

        let zero_chunk_size = v1::Manifest {
            chunk_size: 0,
            ..wire
        };
        assert!(matches!(
            Manifest::try_from(zero_chunk_size),
            Err(WireError::Manifest { .. })
        ));
    }

    #[test]
    fn queue_stats_convert_and_are_validated() {
        let stats = QueueStats {
            pending_by_priority: [1, 2, 3, u64::MAX - 6],
            inflight: 4,
            retrying: 5,
            dead: 6,
            oldest_age: Some(Duration::from_millis(1234)),
        };
        let wire = v1::QueueStats::from(&stats);
        assert_eq!(wire.pending, u64::MAX);
        assert_eq!(wire.oldest_age_ms, Some(1234));
        let bytes = wire.encode_to_vec();
        let back = QueueStats::try_from(v1::QueueStats::decode(bytes.as_slice()).unwrap());
        assert_eq!(back.unwrap(), stats);
        let idle = QueueStats::default();
        let wire_idle = v1::QueueStats::from(&idle);
        assert_eq!(wire_idle.oldest_age_ms, None);
        assert_eq!(QueueStats::try_from(wire_idle).unwrap(), idle);
        // An empty split is fine when nothing is pending.
        assert_eq!(
            QueueStats::try_from(v1::QueueStats::default()).unwrap(),
            idle
        );
        // Sub-millisecond ages are truncated.
        let fine = QueueStats {
            oldest_age: Some(Duration::from_micros(1500)),
            ..QueueStats::default()
        };
        assert_eq!(v1::QueueStats::from(&fine).oldest_age_ms, Some(1));

        let field = "queue_stats.pending_by_priority";
        for bad in [
            v1::QueueStats {
                pending: 3,
                ..Default::default()
            },
            v1::QueueStats {
                pending: 3,
                pending_by_priority: vec![1, 2],
                ..Default::default()
            },
            v1::QueueStats {
                pending: 4,
                pending_by_priority: vec![1, 2, 0, 0],
                ..Default::default()
            },
            v1::QueueStats {
                pending: 0,
                pending_by_priority: vec![u64::MAX, 1, 0, 0],
                ..Default::default()
            },
        ] {
            let err = QueueStats::try_from(bad).unwrap_err();
            assert!(matches!(err, WireError::QueueStats { .. }), "{err}");
            assert_eq!(err.field(), field);
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn queue_items_carry_their_op() {
        let event = full_event();
        let mut item = QueueItem {
            id: 17,
            priority: 1,
            payload: event.encode(),
            state: ItemState::Retrying,
            attempts: 3,
            enqueued_at_ms: 1000,
            due_at_ms: 2000,
            last_error: Some("coordinator unavailable".into()),
        };
        let wire = queue_item_to_wire(&item, "/media/caf\u{e9}.mkv");
        assert_eq!(
            wire,
            v1::QueueItem {
                id: 17,
                priority: 1,
                op: v1::ChangeOp::Rename.into(),
                path: "/media/caf\u{e9}.mkv".into(),
                attempts: 3,
                next_attempt_ms: 2000,
                last_error: "coordinator unavailable".into(),
                state: v1::QueueItemState::Retrying.into(),
                enqueued_at_ms: 1000,
            }
        );
        // An unreadable payload does not break the listing.
        item.payload = b"\xff\xff\xff".to_vec();
        item.last_error = None;
        item.state = ItemState::Dead;
        let wire = queue_item_to_wire(&item, "?");
        assert_eq!(wire.op(), v1::ChangeOp::Unspecified);
        assert_eq!(wire.state(), v1::QueueItemState::Dead);
        assert_eq!(wire.last_error, "");
    }

    #[test]
    fn truncated_bytes_never_panic_nor_give_the_original() {
        for event in [full_event(), bare_event()] {
            let bytes = v1::ChangeEvent::from(&event).encode_to_vec();
            for len in 0..bytes.len() {
                let Ok(decoded) = v1::ChangeEvent::decode(&bytes[..len]) else {
                    continue;
                };
                if let Ok(converted) = model::ChangeEvent::try_from(decoded) {
                    // Only a cut right before `origin` or `seq` leaves a valid event.
                    assert_ne!(converted, event, "prefix of {len} bytes");
                }
            }
        }
        // Cutting inside `version` loses a required field or fails to decode.
        let bytes = wire_full().encode_to_vec();
        for len in 0..bytes.len() / 2 {
            let converted = v1::ChangeEvent::decode(&bytes[..len])
                .ok()
                .map(model::ChangeEvent::try_from);
            assert!(!matches!(converted, Some(Ok(_))), "prefix of {len} bytes");
        }
    }

    #[test]
    fn wire_errors_become_engine_errors() {
        let err = reject(|e| e.op = 0, "change_event.op");
        let engine: crate::Error = err.clone().into();
        assert!(matches!(engine, crate::Error::Wire(_)));
        assert!(engine.to_string().contains(&err.to_string()), "{engine}");
    }
}
