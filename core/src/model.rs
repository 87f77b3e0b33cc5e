//! The data model: node ids, names, node metadata, versions and change events.
//!
//! Replication is state-based: every [`ChangeEvent`] carries the whole new
//! [`Version`] of one node (metadata, vector clock, and which write last changed
//! each field group), so applying an event never depends on having applied the
//! previous event of the same node, and duplicates are harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::{RegionId, Timestamp, VectorClock};
use crate::store::content::ContentRef;

/// The longest file name accepted, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// A node's identity, unique across all regions and stable across renames.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u128);

impl NodeId {
    /// The root directory, the same node in every region.
    pub const ROOT: NodeId = NodeId(1);

    /// A fresh random id for a node created locally.
    pub fn random() -> NodeId {
        loop {
            let id = NodeId(rand::random::<u128>());
            if id.0 > 1 {
                return id;
            }
        }
    }

    /// A deterministic id derived from `self` and some bytes: every region derives
    /// the same id for the same derived object (for example a fork's entry).
    pub fn derive(&self, context: &str, bytes: &[u8]) -> NodeId {
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(&self.0.to_be_bytes());
        h.update(bytes);
        let out = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&out.as_bytes()[..16]);
        NodeId(u128::from_be_bytes(id).max(2))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_bytes(b: [u8; 16]) -> NodeId {
        NodeId(u128::from_be_bytes(b))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A file name: arbitrary bytes (not only UTF-8), 1 to 255 of them, without `/`
/// or NUL, and neither `.` nor `..`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(Vec<u8>);

/// Why bytes are not a valid file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("file name is empty")]
    Empty,
    #[error("file name {0:?} is '.' or '..'")]
    Dot(String),
    #[error("file name {0:?} contains '/'")]
    Slash(String),
    #[error("file name {0:?} contains a NUL byte")]
    Nul(String),
    #[error("file name {name:?}… is {len} bytes long, more than {MAX_NAME_LEN}")]
    TooLong { name: String, len: usize },
}

impl Name {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Name, NameError> {
        let bytes = bytes.into();
        let lossy = || String::from_utf8_lossy(&bytes).into_owned();
        if bytes.is_empty() {
            return Err(NameError::Empty);
        }
        if bytes == b"." || bytes == b".." {
            return Err(NameError::Dot(lossy()));
        }
        if bytes.contains(&b'/') {
            return Err(NameError::Slash(lossy()));
        }
        if bytes.contains(&0) {
            return Err(NameError::Nul(lossy()));
        }
        if bytes.len() > MAX_NAME_LEN {
            let name = String::from_utf8_lossy(&bytes[..32]).into_owned();
            return Err(NameError::TooLong {
                name,
                len: bytes.len(),
            });
        }
        Ok(Name(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name of a conflict copy: `stem.conflict-<region>-<stamp>.ext`, the
    /// stem shortened when needed so the result stays within [`MAX_NAME_LEN`].
    pub fn conflict_copy(&self, stamp: &Timestamp) -> Name {
        let bytes = &self.0;
        // A leading dot is part of the stem (".bashrc" has no extension).
        let split = bytes.iter().rposition(|&b| b == b'.').filter(|&i| i > 0);
        let (stem, ext) = match split {
            Some(i) => (&bytes[..i], &bytes[i..]),
            None => (&bytes[..], &[][..]),
        };
        let tag = format!(".conflict-{}-{}", stamp.region, stamp.compact());
        let room = MAX_NAME_LEN.saturating_sub(tag.len() + ext.len()).max(1);
        let mut out = stem[..stem.len().min(room)].to_vec();
        out.extend_from_slice(tag.as_bytes());
        if out.len() + ext.len() <= MAX_NAME_LEN {
            out.extend_from_slice(ext);
        }
        Name(out)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        Name::new(bytes).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// What a node is. A node's kind never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeKind {
    File,
    Directory,
    Symlink,
}

/// A node's metadata as the file system shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub kind: NodeKind,
    pub parent: NodeId,
    /// The name the node claims in its parent; shown as is unless another node
    /// claims the same name (see `namespace` for the collision rule).
    pub name: Name,
    /// Permission bits (`0o7777` at most); the file type lives in `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// The content of a file (`None` for directories and symlinks).
    pub content: Option<ContentRef>,
    /// The target of a symlink.
    pub target: Option<Vec<u8>>,
    /// User extended attributes (`user.*`), replicated with the node.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// A tombstone: the node was deleted. Kept so late, older events stay older.
    pub deleted: bool,
}

/// One write: the writing region's counter for this node (a "dot": the pair
/// `(region, counter)` names the write uniquely) and its HLC stamp.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Change {
    pub stamp: Timestamp,
    pub counter: u64,
}

impl Change {
    /// The write's unique name.
    pub fn dot(&self) -> Dot {
        Dot {
            region: self.stamp.region.clone(),
            counter: self.counter,
        }
    }

    /// True when a version with clock `vclock` has seen this write.
    pub fn seen_by(&self, vclock: &VectorClock) -> bool {
        vclock.has_seen(&self.stamp.region, self.counter)
    }
}

/// The unique name of a write: the region's counter for the node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub region: RegionId,
    pub counter: u64,
}

/// Which write last changed each group of fields. Merging concurrent versions
/// takes each group from the version whose change to it the other has seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChanges {
    /// `parent` and `name`.
    pub location: Change,
    /// `content`, `size` and `target`.
    pub content: Change,
    /// `mode`, `uid` and `gid`.
    pub perms: Change,
    pub mtime: Change,
    pub xattrs: Change,
}

impl FieldChanges {
    /// All groups changed by one write (a creation).
    pub fn all(change: &Change) -> FieldChanges {
        FieldChanges {
            location: change.clone(),
            content: change.clone(),
            perms: change.clone(),
            mtime: change.clone(),
            xattrs: change.clone(),
        }
    }
}

/// A losing concurrent version of a file kept beside the winner (fork and
/// primary-wins strategies, or an operator's "keep both"): shown as
/// `name.conflict-<region>-<stamp>.ext` next to the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    /// The write that produced the kept content.
    pub change: Change,
    pub content: Option<ContentRef>,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
}

/// One version of a node: its state, its vector clock, and its history markers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub meta: NodeMeta,
    pub vclock: VectorClock,
    /// The write that made this version; for a merged version, the newest write
    /// among those merged (it orders versions for last-writer-wins).
    pub write: Change,
    pub changes: FieldChanges,
    /// Losing versions kept as conflict copies, by the dot of their write. A
    /// grow-only map: merged by union, hidden once their dot is in `dismissed`.
    pub forks: BTreeMap<Dot, Fork>,
    /// Forks removed (deleted or turned into real files). Grow-only.
    pub dismissed: BTreeSet<Dot>,
}

impl Version {
    /// The forks still shown.
    pub fn visible_forks(&self) -> impl Iterator<Item = (&Dot, &Fork)> {
        self.forks
            .iter()
            .filter(|(dot, _)| !self.dismissed.contains(*dot))
    }

    /// The first version of a node: every field group written by `change`.
    pub fn created(meta: NodeMeta, change: Change) -> Version {
        Version {
            meta,
            vclock: [(change.stamp.region.clone(), change.counter)]
                .into_iter()
                .collect(),
            changes: FieldChanges::all(&change),
            write: change,
            forks: BTreeMap::new(),
            dismissed: BTreeSet::new(),
        }
    }

    /// The key that orders versions for last-writer-wins.
    pub fn lww_key(&self) -> &Timestamp {
        &self.write.stamp
    }
}

/// What a change event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeOp {
    Create,
    Update,
    Metadata,
    Delete,
    Rename,
}

impl ChangeOp {
    /// Push priority: deletes first (they free space and names everywhere), then
    /// creations and renames (structure), then content, then metadata.
    pub fn priority(self) -> Priority {
        match self {
            ChangeOp::Delete => Priority::Delete,
            ChangeOp::Create | ChangeOp::Rename => Priority::Create,
            ChangeOp::Update => Priority::Update,
            ChangeOp::Metadata => Priority::Metadata,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Create => "create",
            ChangeOp::Update => "update",
            ChangeOp::Metadata => "metadata",
            ChangeOp::Delete => "delete",
            ChangeOp::Rename => "rename",
        }
    }
}

/// Push priority of a change event; lower values go first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Priority {
    Delete = 0,
    Create = 1,
    Update = 2,
    Metadata = 3,
}

/// A change of one node, as replicated between regions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub node: NodeId,
    pub op: ChangeOp,
    /// The node's whole new version (its vector clock and HLC stamp included).
    pub version: Version,
    /// The region where the change was made.
    pub origin: RegionId,
    /// The coordinator's global sequence number, once assigned.
    pub seq: Option<u64>,
}

impl ChangeEvent {
    pub fn vclock(&self) -> &VectorClock {
        &self.version.vclock
    }

    pub fn stamp(&self) -> &Timestamp {
        &self.version.write.stamp
    }

    pub fn priority(&self) -> Priority {
        self.op.priority()
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain in-memory data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> crate::Result<ChangeEvent> {
        postcard::from_bytes(bytes).map_err(|source| crate::Error::Decode {
            what: "change event",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(region: &str, ms: u64) -> Timestamp {
        Timestamp {
            physical_ms: ms,
            logical: 3,
            region: RegionId::new(region).unwrap(),
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(Name::new(b"h\xffllo".to_vec()).is_ok(), "non-UTF-8 is fine");
        assert_eq!(Name::new(b"".to_vec()), Err(NameError::Empty));
        assert!(matches!(Name::new(b".".to_vec()), Err(NameError::Dot(_))));
        assert!(matches!(Name::new(b"..".to_vec()), Err(NameError::Dot(_))));
        assert!(matches!(
            Name::new(b"a/b".to_vec()),
            Err(NameError::Slash(_))
        ));
        assert!(matches!(
            Name::new(b"a\0b".to_vec()),
            Err(NameError::Nul(_))
        ));
        assert!(Name::new(vec![b'x'; 255]).is_ok());
        assert!(matches!(
            Name::new(vec![b'x'; 256]),
            Err(NameError::TooLong { len: 256, .. })
        ));
    }

    #[test]
    fn conflict_copy_names() {
        let s = stamp("us", 1700000000123);
        let n = |s: &str| Name::new(s.as_bytes().to_vec()).unwrap();
        assert_eq!(
            n("report.txt").conflict_copy(&s),
            n("report.conflict-us-1700000000123-3.txt")
        );
        assert_eq!(
            n("Makefile").conflict_copy(&s),
            n("Makefile.conflict-us-1700000000123-3")
        );
        assert_eq!(
            n(".bashrc").conflict_copy(&s),
            n(".bashrc.conflict-us-1700000000123-3")
        );
        let long = Name::new(
            vec![b'a'; 250]
                .into_iter()
                .chain(*b".mkv")
                .collect::<Vec<_>>(),
        )
        .unwrap()
        .conflict_copy(&s);
        assert_eq!(long.as_bytes().len(), MAX_NAME_LEN);
        assert!(long.as_bytes().ends_with(b"-3.mkv"));
    }

    #[test]
    fn priorities_follow_the_reference_order() {
        assert!(ChangeOp::Delete.priority() < ChangeOp::Create.priority());
        assert!(ChangeOp::Create.priority() < ChangeOp::Update.priority());
        assert!(ChangeOp::Update.priority() < ChangeOp::Metadata.priority());
        assert_eq!(Priority::Delete as u8, 0);
        assert_eq!(Priority::Metadata as u8, 3);
    }

    #[test]
    fn decoding_garbage_is_an_error() {
        assert!(ChangeEvent::decode(b"\xff\xff\xff").is_err());
    }
}
