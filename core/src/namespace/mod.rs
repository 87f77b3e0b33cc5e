//! The namespace: the file system's operations over the metadata store.
//!
//! Every local change updates its node *and* enqueues its change event in one
//! redb transaction, so a change is never stored without its event or the other
//! way round. Commits are made non-durable first and made durable in groups by
//! [`Namespace::sync`] (what `fsync` calls): one disk flush covers every change
//! committed before it, however many callers wait.
//!
//! Remote events go through [`Namespace::apply_remote`]: idempotent (a version
//! already seen is a duplicate), causal (vector clocks decide), and resolved by
//! the path's conflict strategy (see `conflict`). The derived tree is in `tree`.

mod group;
mod tree;

pub(crate) use tree::prefix_end;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableDatabase, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::clock::{self, Causality, Hlc, RegionId, Timestamp, VectorClock};
use crate::conflict::{self, ConflictPolicy, Resolution, Strategy};
use crate::model::{
    Change, ChangeEvent, ChangeOp, Dot, Fork, Name, NodeId, NodeKind, NodeMeta, Version,
};
use crate::queue::SyncQueue;
use crate::store::content::{ContentRef, ContentStore};
use crate::{Error, Result};

use tree::{
    ForkRef, INDEX, Listing, TAG_CONFLICT, TAG_ENTRY, TAG_FORK, Tables, decode_record, entry_key,
    index_keys, node_value, tagged,
};

/// How many change notifications a slow subscriber may fall behind before it
/// is told it lagged (and should re-read what it caches).
pub const NOTIFICATION_CAPACITY: usize = 4096;

/// The deepest directory nesting a local operation creates.
pub const MAX_DEPTH: usize = 1024;

/// The largest user xattr value accepted (Linux's `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE: usize = 64 * 1024;

/// The persisted state of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    /// The received versions no other received version has seen: the maximal
    /// elements of everything received, so they do not depend on arrival order.
    /// A resolution is never stored as a head: it is derived from the heads, and
    /// a later write that supersedes one head must see the others still there.
    heads: Vec<Version>,
    /// What the file system shows: the single head, or the heads' resolution.
    view: Version,
    /// A manual conflict waits for an operator.
    open_conflict: bool,
    listing: Option<Listing>,
}

/// A change the file system layer or the console may want to react to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub node: NodeId,
    pub kind: NotificationKind,
    /// Who made the change: the tag of the thread that made it (see [`with_origin`]), 0 for
    /// changes made outside any tagged scope (remote events, other services).
    pub origin: u64,
}

thread_local! {
    static ORIGIN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with the changes it makes on this thread tagged `origin` in their
/// notifications, so that a subscriber can tell its own changes from the
/// others' (a FUSE mount need not invalidate the kernel's caches for what it
/// wrote itself).
pub fn with_origin<T>(origin: u64, f: impl FnOnce() -> T) -> T {
    let before = ORIGIN.with(|o| o.replace(origin));
    let out = f();
    ORIGIN.with(|o| o.set(before));
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotificationKind {
    EntryAdded {
        parent: NodeId,
        name: Name,
    },
    EntryRemoved {
        parent: NodeId,
        name: Name,
    },
    /// The node's attributes or content changed.
    Changed,
}

/// A node as the file system sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub meta: NodeMeta,
    pub vclock: VectorClock,
    /// The write that made the shown version.
    pub write: Change,
    /// A manual conflict waits for an operator.
    pub in_conflict: bool,
    /// The entry is a kept losing version (read-only until written to).
    pub fork_of: Option<NodeId>,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Name,
    pub node: NodeId,
    pub kind: NodeKind,
}

/// Attributes of a node to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNode {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub content: Option<ContentRef>,
    pub target: Option<Vec<u8>>,
}

impl NewNode {
    pub fn file(mode: u32) -> Self {
        Self::of(NodeKind::File, mode)
    }

    pub fn directory(mode: u32) -> Self {
        Self::of(NodeKind::Directory, mode)
    }

    pub fn symlink(target: &[u8]) -> Self {
        NewNode {
            target: Some(target.to_vec()),
            ..Self::of(NodeKind::Symlink, 0o777)
        }
    }

    fn of(kind: NodeKind, mode: u32) -> Self {
        NewNode {
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime_ns: now_ns(),
            content: None,
            target: None,
        }
    }
}

/// Attributes to change; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime_ns: Option<i64>,
}

/// How `rename` treats an existing destination (Linux `renameat2` flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the destination (plain `rename`).
    #[default]
    Replace,
    /// Fail with `AlreadyExists` if the destination exists (`RENAME_NOREPLACE`).
    NoReplace,
    /// Swap source and destination, both must exist (`RENAME_EXCHANGE`).
    Exchange,
}

/// What applying a remote event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The event was new and is now (part of) the node's state.
    Applied,
    /// The node already had this version or a newer one.
    Duplicate,
    /// The event was concurrent with the local state; the conflict was resolved
    /// (`open == false`) or waits for an operator.
    Conflict { open: bool },
}

/// An operator's decision on a manual conflict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConflictChoice {
    /// Keep the version written in this region.
    Keep(RegionId),
    /// Keep the newest version at the path and the others as conflict copies.
    KeepBoth,
    /// Merge field groups; concurrent contents are kept as conflict copies.
    Merge,
}

/// An open manual conflict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictInfo {
    pub node: NodeId,
    pub path: Vec<u8>,
    pub strategy: Strategy,
    pub detected_ms: u64,
    pub versions: Vec<Version>,
}

/// Configuration of a namespace.
#[derive(Clone, Debug)]
pub struct NamespaceConfig {
    pub region: RegionId,
    pub policy: ConflictPolicy,
    pub max_drift: Duration,
}

impl NamespaceConfig {
    pub fn new(region: RegionId) -> Self {
        NamespaceConfig {
            region,
            policy: ConflictPolicy::default(),
            max_drift: clock::DEFAULT_MAX_DRIFT,
        }
    }
}

/// A region's namespace (see the module docs).
pub struct Namespace {
    db: Arc<Database>,
    region: RegionId,
    hlc: Hlc,
    policy: ConflictPolicy,
    queue: Arc<SyncQueue>,
    content: Arc<ContentStore>,
    notify_tx: broadcast::Sender<Notification>,
    /// Shares write transactions between concurrent changes.
    group: group::GroupCommit,
    /// How many of them are known durable; the lock elects one flusher at a time.
    durable: Mutex<u64>,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn root_version() -> Version {
    let root =
        RegionId::new("root").unwrap_or_else(|_| unreachable!("\"root\" is a valid region id"));
    let change = Change {
        stamp: Timestamp {
            physical_ms: 0,
            logical: 0,
            region: root,
        },
        counter: 0,
    };
    // Counter 0: no region wrote it, so every region's first change dominates it.
    Version::created(
        NodeMeta {
            kind: NodeKind::Directory,
            parent: NodeId::ROOT,
            name: Name::new(b"root".to_vec()).unwrap_or_else(|_| unreachable!("a valid name")),
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            content: None,
            target: None,
            xattrs: BTreeMap::new(),
            deleted: false,
        },
        change,
    )
}

impl Namespace {
    /// Opens the namespace stored in `db` (creating the root on first use).
    pub fn open(
        db: Arc<Database>,
        config: NamespaceConfig,
        queue: Arc<SyncQueue>,
        content: Arc<ContentStore>,
    ) -> Result<Namespace> {
        let hlc = Hlc::new(config.region.clone(), config.max_drift);
        Self::open_with_clock(db, config, queue, content, hlc)
    }

    /// [`Namespace::open`] with a given clock (tests drive time).
    pub fn open_with_clock(
        db: Arc<Database>,
        config: NamespaceConfig,
        queue: Arc<SyncQueue>,
        content: Arc<ContentStore>,
        hlc: Hlc,
    ) -> Result<Namespace> {
        let txn = db.begin_write()?;
        {
            let mut t = Tables::open(&txn, clock::system_ms())?;
            if t.load(NodeId::ROOT)?.is_none() {
                let root = root_version();
                t.save(
                    NodeId::ROOT,
                    &NodeRecord {
                        heads: vec![root.clone()],
                        view: root,
                        open_conflict: false,
                        listing: None,
                    },
                )?;
            }
            t.finish()?;
        }
        txn.commit()?;
        let (notify_tx, _) = broadcast::channel(NOTIFICATION_CAPACITY);
        Ok(Namespace {
            db,
            region: config.region,
            hlc,
            policy: config.policy,
            queue,
            content,
            notify_tx,
            group: group::GroupCommit::default(),
            durable: Mutex::new(0),
        })
    }

    pub fn region(&self) -> &RegionId {
        &self.region
    }

    pub fn queue(&self) -> &Arc<SyncQueue> {
        &self.queue
    }

    pub fn content(&self) -> &Arc<ContentStore> {
        &self.content
    }

    pub fn hlc(&self) -> &Hlc {
        &self.hlc
    }

    /// Write transactions committed so far (each may hold many changes).
    pub fn commits(&self) -> u64 {
        self.group.committed()
    }

    /// Change notifications (entries added and removed, nodes changed), sent
    /// after each commit.
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.notify_tx.subscribe()
    }

    // ----- reads -----

    /// The node at `name` in `parent`.
    pub fn lookup(&self, parent: NodeId, name: &[u8]) -> Result<NodeView> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(INDEX)?;
        let id = match index.get(tagged(TAG_ENTRY, &entry_key(parent, name)).as_slice())? {
            Some(v) => node_value(v.value())?,
            None => return Err(Error::NotFound(String::from_utf8_lossy(name).into_owned())),
        };
        drop(index);
        self.view_in(&txn, id)
    }

    /// A node by id.
    pub fn get(&self, id: NodeId) -> Result<NodeView> {
        let txn = self.db.begin_read()?;
        self.view_in(&txn, id)
    }

    /// Several nodes by id in one read transaction (the attributes of a
    /// directory listing); a node that is gone is `Err(NotFound)` in its slot.
    pub fn get_many(&self, ids: &[NodeId]) -> Result<Vec<Result<NodeView>>> {
        let txn = self.db.begin_read()?;
        Ok(ids.iter().map(|id| self.view_in(&txn, *id)).collect())
    }

    fn view_in(&self, txn: &redb::ReadTransaction, id: NodeId) -> Result<NodeView> {
        let nodes = txn.open_table(tree::NODES)?;
        if let Some(rec) = nodes.get(id.0)? {
            let rec = decode_record(rec.value())?;
            if rec.listing.is_none() && id != NodeId::ROOT {
                return Err(Error::NotFound(id.to_string()));
            }
            return Ok(Self::view_of(id, &rec));
        }
        let index = txn.open_table(INDEX)?;
        let Some(fork) = index.get(tagged(TAG_FORK, &id.to_bytes()).as_slice())? else {
            return Err(Error::NotFound(id.to_string()));
        };
        let fork: ForkRef = postcard::from_bytes(fork.value()).map_err(|source| Error::Decode {
            what: "fork entry",
            source,
        })?;
        let rec = nodes
            .get(fork.node.0)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let rec = decode_record(rec.value())?;
        let f = rec
            .view
            .forks
            .get(&fork.dot)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let listing = rec
            .listing
            .as_ref()
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let shown = listing
            .forks
            .iter()
            .find(|(fid, _)| *fid == id)
            .map(|(_, n)| n.clone())
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let mut meta = rec.view.meta.clone();
        meta.parent = listing.parent;
        meta.name = shown;
        meta.content = f.content;
        meta.size = f.size;
        meta.mtime_ns = f.mtime_ns;
        meta.mode = f.mode;
        Ok(NodeView {
            id,
            meta,
            vclock: rec.view.vclock.clone(),
            write: f.change.clone(),
            in_conflict: false,
            fork_of: Some(fork.node),
        })
    }

    fn view_of(id: NodeId, rec: &NodeRecord) -> NodeView {
        let mut meta = rec.view.meta.clone();
        if let Some(l) = &rec.listing {
            meta.parent = l.parent;
            meta.name = l.shown.clone();
        }
        NodeView {
            id,
            meta,
            vclock: rec.view.vclock.clone(),
            write: rec.view.write.clone(),
            in_conflict: rec.open_conflict,
            fork_of: None,
        }
    }

    /// The entries of a directory in name order, starting after `after`.
    pub fn readdir(
        &self,
        dir: NodeId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<DirEntry>> {
        let txn = self.db.begin_read()?;
        let view = self.view_in(&txn, dir)?;
        if view.meta.kind != NodeKind::Directory {
            return Err(Error::NotADirectory(view.meta.name.to_string()));
        }
        let index = txn.open_table(INDEX)?;
        let nodes = txn.open_table(tree::NODES)?;
        let start = match after {
            Some(name) => {
                let mut k = tagged(TAG_ENTRY, &entry_key(dir, name));
                k.push(0);
                k
            }
            None => tagged(TAG_ENTRY, &dir.to_bytes()),
        };
        let end = tree::prefix_end(&tagged(TAG_ENTRY, &dir.to_bytes()));
        let mut out = Vec::new();
        for item in index.range(start.as_slice()..end.as_slice())? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let name = Name::new(k.value()[17..].to_vec())
                .map_err(|e| Error::CorruptEntry(e.to_string()))?;
            let node = node_value(v.value())?;
            let kind = match nodes.get(node.0)? {
                Some(rec) => decode_record(rec.value())?.view.meta.kind,
                None => NodeKind::File, // a fork entry: forks are files
            };
            out.push(DirEntry { name, node, kind });
        }
        Ok(out)
    }

    /// The node at an absolute path (`/` is the root).
    pub fn resolve(&self, path: &[u8]) -> Result<NodeView> {
        let mut view = self.get(NodeId::ROOT)?;
        for name in parse_path(path)? {
            view = self.lookup(view.id, name.as_bytes())?;
        }
        Ok(view)
    }

    /// The directory holding `path` and the last name of `path`.
    pub fn resolve_parent(&self, path: &[u8]) -> Result<(NodeView, Name)> {
        let mut names = parse_path(path)?;
        let last = names.pop().ok_or_else(|| Error::InvalidPath {
            path: String::from_utf8_lossy(path).into_owned(),
            reason: "the root has no parent".into(),
        })?;
        let mut view = self.get(NodeId::ROOT)?;
        for name in names {
            view = self.lookup(view.id, name.as_bytes())?;
        }
        Ok((view, last))
    }

    /// The path of a listed node from the root, `/`-separated (`/` for the root).
    pub fn path_of(&self, id: NodeId) -> Result<Vec<u8>> {
        let txn = self.db.begin_read()?;
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut at = id;
        while at != NodeId::ROOT {
            let view = self.view_in(&txn, at)?;
            if parts.len() > MAX_DEPTH {
                return Err(Error::NotFound(id.to_string()));
            }
            parts.push(view.meta.name.as_bytes().to_vec());
            at = view.meta.parent;
        }
        Ok(join_path(parts))
    }

    /// The value of a user xattr.
    pub fn get_xattr(&self, id: NodeId, name: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get(id)?.meta.xattrs.get(name).cloned())
    }

    /// Every stored version of nodes after `after` (by id), up to `limit` nodes:
    /// the material of a full resync. A region that applies every batch holds
    /// the same heads, so the same tree, as this namespace. Tombstones are
    /// included: a deletion must reach a region that still holds the node.
    pub fn snapshot(
        &self,
        after: Option<NodeId>,
        limit: usize,
    ) -> Result<Vec<(NodeId, Vec<Version>)>> {
        let txn = self.db.begin_read()?;
        let nodes = txn.open_table(tree::NODES)?;
        let start = after.map_or(0, |id| id.0.saturating_add(1));
        let mut out = Vec::new();
        if after.is_some_and(|id| id.0 == u128::MAX) {
            return Ok(out);
        }
        for item in nodes.range(start..)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let rec = decode_record(v.value())?;
            // The root's counter-0 version is the same everywhere: nothing to send.
            let heads: Vec<Version> = rec
                .heads
                .into_iter()
                .filter(|h| h.write.counter > 0)
                .collect();
            if !heads.is_empty() {
                out.push((NodeId(k.value()), heads));
            }
        }
        Ok(out)
    }

    /// How many manual conflicts are open (without reading them).
    pub fn conflict_count(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(INDEX)?;
        let start = tagged(TAG_CONFLICT, &[]);
        let end = prefix_end(&start);
        Ok(index.range(start.as_slice()..end.as_slice())?.count() as u64)
    }

    /// Open manual conflicts.
    pub fn conflicts(&self) -> Result<Vec<ConflictInfo>> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(INDEX)?;
        let nodes = txn.open_table(tree::NODES)?;
        let mut out = Vec::new();
        for (k, v) in index_keys(&index, TAG_CONFLICT, &[], usize::MAX)? {
            let node = node_value(&k)?;
            let detected_ms = u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8]));
            let Some(rec) = nodes.get(node.0)? else {
                continue;
            };
            let rec = decode_record(rec.value())?;
            let path = self.path_of(node).unwrap_or_default();
            let strategy = self.policy.strategy_for(&path).clone();
            out.push(ConflictInfo {
                node,
                path,
                strategy,
                detected_ms,
                versions: rec.heads,
            });
        }
        Ok(out)
    }

    // ----- local changes -----

    /// Runs `f` in a write transaction (shared with concurrent changes: see
    /// `group`) and returns once it committed non-durably: the change and its
    /// queued events land together or not at all.
    fn change<T>(&self, f: impl FnOnce(&mut Local<'_, '_>) -> Result<T>) -> Result<T> {
        let (out, notes) = self.group.run(&self.db, |txn| {
            let t = Tables::open(txn, clock::system_ms()).map_err(|e| (e, false))?;
            let mut local = Local { ns: self, txn, t };
            match f(&mut local) {
                Ok(out) => local
                    .t
                    .finish()
                    .map(|notes| (out, notes))
                    .map_err(|e| (e, true)),
                Err(e) => Err((e, local.t.mutated())),
            }
        })?;
        self.queue.notify_enqueued();
        self.publish(notes);
        Ok(out)
    }

    fn publish(&self, notes: Vec<Notification>) {
        let origin = ORIGIN.with(|o| o.get());
        for mut n in notes {
            n.origin = origin;
            // No subscriber is not an error.
            let _ = self.notify_tx.send(n);
        }
    }

    /// Creates a node named `name` in `parent`.
    pub fn create(&self, parent: NodeId, name: &[u8], new: NewNode) -> Result<NodeView> {
        let name = Name::new(name.to_vec())?;
        self.change(|l| {
            l.require_dir(parent)?;
            if l.t.lookup(parent, name.as_bytes())?.is_some() {
                return Err(Error::AlreadyExists(name.to_string()));
            }
            let size = new.content.map(|c| c.size).unwrap_or(0);
            let size = if new.kind == NodeKind::Symlink {
                new.target.as_ref().map_or(0, |t| t.len() as u64)
            } else {
                size
            };
            let meta = NodeMeta {
                kind: new.kind,
                parent,
                name,
                mode: new.mode & 0o7777,
                uid: new.uid,
                gid: new.gid,
                size,
                mtime_ns: new.mtime_ns,
                content: new.content,
                target: new.target,
                xattrs: BTreeMap::new(),
                deleted: false,
            };
            let id = l.create_node(meta)?;
            l.view(id)
        })
    }

    /// Replaces a file's content (the write path commits a whole new version).
    pub fn write_content(
        &self,
        id: NodeId,
        content: ContentRef,
        mtime_ns: i64,
    ) -> Result<NodeView> {
        self.change(|l| {
            let id = l.materialize_if_fork(id)?;
            let base = l.current(id)?;
            if base.meta.kind != NodeKind::File {
                return Err(Error::IsADirectory(base.meta.name.to_string()));
            }
            l.update(id, ChangeOp::Update, base, |v, c| {
                v.meta.content = Some(content);
                v.meta.size = content.size;
                v.meta.mtime_ns = mtime_ns;
                v.changes.content = c.clone();
                v.changes.mtime = c.clone();
            })
        })
    }

    /// Changes permissions, owner or mtime.
    pub fn setattr(&self, id: NodeId, attr: SetAttr) -> Result<NodeView> {
        self.change(|l| {
            let id = l.materialize_if_fork(id)?;
            let base = l.current(id)?;
            l.update(id, ChangeOp::Metadata, base, |v, c| {
                if attr.mode.is_some() || attr.uid.is_some() || attr.gid.is_some() {
                    v.meta.mode = attr.mode.map_or(v.meta.mode, |m| m & 0o7777);
                    v.meta.uid = attr.uid.unwrap_or(v.meta.uid);
                    v.meta.gid = attr.gid.unwrap_or(v.meta.gid);
                    v.changes.perms = c.clone();
                }
                if let Some(mtime) = attr.mtime_ns {
                    v.meta.mtime_ns = mtime;
                    v.changes.mtime = c.clone();
                }
            })
        })
    }

    /// Sets (`Some`) or removes (`None`) a user xattr. Names must start with `user.`.
    pub fn set_xattr(&self, id: NodeId, name: &[u8], value: Option<&[u8]>) -> Result<NodeView> {
        if !name.starts_with(b"user.") || name.len() > 255 || name.contains(&0) {
            return Err(Error::XattrNotSupported(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        if value.is_some_and(|v| v.len() > MAX_XATTR_VALUE) {
            return Err(Error::XattrTooLarge {
                len: value.map_or(0, |v| v.len()),
                max: MAX_XATTR_VALUE,
            });
        }
        self.change(|l| {
            let id = l.materialize_if_fork(id)?;
            let base = l.current(id)?;
            if value.is_none() && !base.meta.xattrs.contains_key(name) {
                return Err(Error::NoSuchXattr(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
            l.update(id, ChangeOp::Metadata, base, |v, c| {
                match value {
                    Some(value) => v.meta.xattrs.insert(name.to_vec(), value.to_vec()),
                    None => v.meta.xattrs.remove(name),
                };
                v.changes.xattrs = c.clone();
            })
        })
    }

    /// Removes a file or symlink (or a fork entry: the kept version is dropped).
    pub fn unlink(&self, parent: NodeId, name: &[u8]) -> Result<()> {
        self.change(|l| {
            let id = l.entry(parent, name)?;
            if let Some((node, dot)) = l.fork_target(id)? {
                return l.dismiss_fork(node, dot);
            }
            let base = l.current(id)?;
            if base.meta.kind == NodeKind::Directory {
                return Err(Error::IsADirectory(base.meta.name.to_string()));
            }
            l.delete(id, base)
        })
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: NodeId, name: &[u8]) -> Result<()> {
        self.change(|l| {
            let id = l.entry(parent, name)?;
            let base = l.current(id)?;
            if base.meta.kind != NodeKind::Directory {
                return Err(Error::NotADirectory(base.meta.name.to_string()));
            }
            if l.t.has_entries(id)? {
                return Err(Error::NotEmpty(base.meta.name.to_string()));
            }
            l.delete(id, base)
        })
    }

    /// Renames `src_name` in `src_parent` to `dst_name` in `dst_parent`.
    pub fn rename(
        &self,
        src_parent: NodeId,
        src_name: &[u8],
        dst_parent: NodeId,
        dst_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        let dst_name = Name::new(dst_name.to_vec())?;
        self.change(|l| {
            let src = l.entry(src_parent, src_name)?;
            let src = l.materialize_if_fork(src)?;
            l.require_dir(dst_parent)?;
            let dst = l.t.lookup(dst_parent, dst_name.as_bytes())?;
            if dst == Some(src) {
                return Ok(());
            }
            let src_v = l.current(src)?;
            match (mode, dst) {
                (RenameMode::NoReplace, Some(_)) => {
                    return Err(Error::AlreadyExists(dst_name.to_string()));
                }
                (RenameMode::Exchange, None) => {
                    return Err(Error::NotFound(dst_name.to_string()));
                }
                (RenameMode::Exchange, Some(dst)) => {
                    let dst = l.materialize_if_fork(dst)?;
                    let dst_v = l.current(dst)?;
                    let src_name = Name::new(src_name.to_vec())?;
                    l.refuse_cycle(src, &src_v, dst_parent)?;
                    l.refuse_cycle(dst, &dst_v, src_parent)?;
                    l.move_to(src, src_v, dst_parent, dst_name.clone())?;
                    return l.move_to(dst, dst_v, src_parent, src_name);
                }
                (RenameMode::Replace, Some(dst)) => {
                    let dst_v = l.current(dst)?;
                    match (
                        src_v.meta.kind == NodeKind::Directory,
                        dst_v.meta.kind == NodeKind::Directory,
                    ) {
                        (true, false) => return Err(Error::NotADirectory(dst_name.to_string())),
                        (false, true) => return Err(Error::IsADirectory(dst_name.to_string())),
                        (true, true) if l.t.has_entries(dst)? => {
                            return Err(Error::NotEmpty(dst_name.to_string()));
                        }
                        _ => {}
                    }
                    l.refuse_cycle(src, &src_v, dst_parent)?;
                    l.delete(dst, dst_v)?;
                }
                (_, None) => l.refuse_cycle(src, &src_v, dst_parent)?,
            }
            l.move_to(src, src_v, dst_parent, dst_name)
        })
    }

    /// Turns a fork entry into a real file (for a writer); other ids unchanged.
    pub fn materialize(&self, id: NodeId) -> Result<NodeId> {
        self.change(|l| l.materialize_if_fork(id))
    }

    /// Decides a manual conflict: a new local version that has seen every head.
    pub fn resolve_conflict(&self, node: NodeId, choice: ConflictChoice) -> Result<NodeView> {
        self.change(|l| {
            let rec =
                l.t.load(node)?
                    .ok_or_else(|| Error::NotFound(node.to_string()))?;
            if !rec.open_conflict {
                return Err(Error::NoSuchConflict(node.to_string()));
            }
            let mut base = match &choice {
                ConflictChoice::Keep(region) => rec
                    .heads
                    .iter()
                    .filter(|h| h.write.stamp.region == *region)
                    .max_by(|a, b| a.write.stamp.cmp(&b.write.stamp))
                    .cloned()
                    .ok_or_else(|| Error::NoSuchVersion {
                        node: node.to_string(),
                        region: region.clone(),
                    })?,
                ConflictChoice::KeepBoth => match conflict::resolve(&rec.heads, &Strategy::Fork) {
                    Resolution::Resolved(v) | Resolution::Open { preview: v } => v,
                },
                ConflictChoice::Merge => match conflict::resolve(&rec.heads, &Strategy::Merge) {
                    Resolution::Resolved(v) | Resolution::Open { preview: v } => v,
                },
            };
            for h in &rec.heads {
                base.vclock.merge(&h.vclock);
                for (dot, fork) in &h.forks {
                    base.forks
                        .entry(dot.clone())
                        .or_insert_with(|| fork.clone());
                }
                base.dismissed.extend(h.dismissed.iter().cloned());
            }
            l.update(node, ChangeOp::Update, base, |_, _| {})
        })
    }

    // ----- remote changes -----

    /// Applies a change event from another region (see the module docs).
    pub fn apply_remote(&self, event: &ChangeEvent) -> Result<ApplyOutcome> {
        let mut outcomes = self.apply_remote_batch(std::slice::from_ref(event))?;
        outcomes
            .pop()
            .ok_or_else(|| Error::GroupCommit("no outcome for the applied event".into()))?
    }

    /// Applies a batch of remote events in one transaction (one commit). An
    /// event that cannot be right is refused alone (its slot holds the error);
    /// the others are applied.
    pub fn apply_remote_batch(&self, events: &[ChangeEvent]) -> Result<Vec<Result<ApplyOutcome>>> {
        self.apply_remote_batch_with(events, |_, _| Ok(()))
            .map(|(outcomes, ())| outcomes)
    }

    /// [`Namespace::apply_remote_batch`], then `also` in the same transaction,
    /// given the outcomes: what `also` writes lands together with the applied
    /// events or not at all (the coordinator appends them to its log there).
    pub fn apply_remote_batch_with<T>(
        &self,
        events: &[ChangeEvent],
        also: impl FnOnce(&WriteTransaction, &[Result<ApplyOutcome>]) -> Result<T>,
    ) -> Result<(Vec<Result<ApplyOutcome>>, T)> {
        let checked: Vec<Result<()>> = events.iter().map(validate_remote).collect();
        for (event, _) in events.iter().zip(&checked).filter(|(_, c)| c.is_ok()) {
            // A stamp too far ahead is still applied (refusing it would stall
            // convergence forever); only our clock refuses to follow it.
            if let Err(drift) = self.hlc.update(event.stamp()) {
                tracing::warn!(%drift, node = %event.node, "remote stamp too far ahead");
            }
        }
        let (out, notes) = self.group.run(&self.db, |txn| {
            let mut t = Tables::open(txn, clock::system_ms()).map_err(|e| (e, false))?;
            let mut outcomes = Vec::with_capacity(events.len());
            for (event, checked) in events.iter().zip(checked) {
                if let Err(e) = checked {
                    outcomes.push(Err(e));
                    continue;
                }
                let writes = t.writes();
                match integrate(&mut t, &self.policy, event.node, event.version.clone()) {
                    Ok(outcome) => outcomes.push(Ok(outcome)),
                    // Refused before writing anything: only this event fails.
                    Err(e) if t.writes() == writes => outcomes.push(Err(e)),
                    Err(e) => return Err((e, true)),
                }
            }
            let notes = t.finish().map_err(|e| (e, true))?;
            let extra = also(txn, &outcomes).map_err(|e| (e, true))?;
            Ok(((outcomes, extra), notes))
        })?;
        self.publish(notes);
        Ok(out)
    }

    // ----- durability -----

    /// Makes every change committed before this call durable (content files
    /// first, then one metadata flush). Concurrent callers share one flush.
    pub fn sync(&self) -> Result<()> {
        let target = self.group.committed();
        let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        if *durable >= target {
            return Ok(());
        }
        let upto = self.group.committed();
        self.content.sync_pending()?;
        let txn = self.db.begin_write()?;
        txn.commit()?;
        *durable = upto;
        Ok(())
    }

    /// The next local write's change for a node whose clock is `vclock`.
    fn next_change(&self, vclock: &VectorClock) -> Change {
        Change {
            stamp: self.hlc.now(),
            counter: vclock.get(&self.region) + 1,
        }
    }

    /// Every listed path with its node: a canonical dump of the tree, used to
    /// compare regions (convergence) and by tools.
    pub fn tree(&self) -> Result<BTreeMap<Vec<u8>, NodeView>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![(NodeId::ROOT, Vec::new())];
        while let Some((dir, path)) = stack.pop() {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let batch = self.readdir(dir, after.as_deref(), 1024)?;
                let Some(last) = batch.last() else { break };
                after = Some(last.name.as_bytes().to_vec());
                for e in batch {
                    let mut p = path.clone();
                    p.push(b'/');
                    p.extend_from_slice(e.name.as_bytes());
                    if e.kind == NodeKind::Directory && out.len() < usize::MAX {
                        stack.push((e.node, p.clone()));
                    }
                    out.insert(p, self.get(e.node)?);
                }
            }
        }
        Ok(out)
    }
}

/// Splits an absolute path into names, refusing relative paths and empty,
/// `.` and `..` components (a trailing `/` is allowed): no traversal.
pub fn parse_path(path: &[u8]) -> Result<Vec<Name>> {
    let bad = |reason: &str| Error::InvalidPath {
        path: String::from_utf8_lossy(path).into_owned(),
        reason: reason.to_owned(),
    };
    let rest = path
        .strip_prefix(b"/")
        .ok_or_else(|| bad("it must start with '/'"))?;
    let rest = rest.strip_suffix(b"/").unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<Name> = rest
        .split(|&b| b == b'/')
        .map(|part| match part {
            b"" => Err(bad("it has an empty component")),
            b"." | b".." => Err(bad("'.' and '..' are not allowed")),
            _ => Name::new(part.to_vec()).map_err(|e| bad(&e.to_string())),
        })
        .collect::<Result<_>>()?;
    if names.len() > MAX_DEPTH {
        return Err(bad("it is nested too deeply"));
    }
    Ok(names)
}

fn join_path(mut parts: Vec<Vec<u8>>) -> Vec<u8> {
    if parts.is_empty() {
        return b"/".to_vec();
    }
    parts.reverse();
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(&p);
    }
    out
}

/// Refuses remote events that cannot be right, whatever the local state.
fn validate_remote(event: &ChangeEvent) -> Result<()> {
    let v = &event.version;
    let bad = |why: &str| {
        Err(Error::InvalidEvent {
            node: event.node.to_string(),
            reason: why.to_owned(),
        })
    };
    if event.node == NodeId::ROOT {
        if v.meta.deleted || v.meta.kind != NodeKind::Directory || v.meta.parent != NodeId::ROOT {
            return bad("the root can only change attributes");
        }
    } else if v.meta.parent == event.node {
        return bad("a node cannot be its own parent");
    }
    if event.node.0 == 0 {
        return bad("node id 0 is reserved");
    }
    if v.write.counter == 0 || !v.write.seen_by(&v.vclock) {
        return bad("the vector clock has not seen the version's own write");
    }
    if v.meta.mode > 0o7777 {
        return bad("mode has bits beyond 0o7777");
    }
    if (v.meta.kind == NodeKind::File) != v.meta.content.is_some() && !v.meta.deleted {
        if v.meta.kind == NodeKind::File {
            // A file created empty has no content yet: allowed.
        } else {
            return bad("only files have content");
        }
    }
    Ok(())
}

/// Merges one version (local or remote) into a node's state.
fn integrate(
    t: &mut Tables<'_>,
    policy: &ConflictPolicy,
    id: NodeId,
    version: Version,
) -> Result<ApplyOutcome> {
    let Some(mut rec) = t.load(id)? else {
        let rec = NodeRecord {
            heads: vec![version.clone()],
            view: version,
            open_conflict: false,
            listing: None,
        };
        let is_dir = rec.view.meta.kind == NodeKind::Directory;
        t.save(id, &rec)?;
        if rec.view.meta.deleted {
            let now = t.now_ms.to_be_bytes();
            t.ix_put(tree::TAG_TOMBSTONE, &id.to_bytes(), &now)?;
        }
        t.settle(id)?;
        if is_dir {
            t.check_cycles(id)?;
        }
        return Ok(ApplyOutcome::Applied);
    };
    if rec.view.meta.kind != version.meta.kind {
        return Err(Error::InvalidEvent {
            node: id.to_string(),
            reason: format!(
                "kind {:?} differs from the stored {:?}",
                version.meta.kind, rec.view.meta.kind
            ),
        });
    }
    for h in &rec.heads {
        if matches!(
            version.vclock.compare(&h.vclock),
            Causality::Before | Causality::Equal
        ) {
            return Ok(ApplyOutcome::Duplicate);
        }
    }
    rec.heads
        .retain(|h| h.vclock.compare(&version.vclock) != Causality::Before);
    rec.heads.push(version);
    // Canonical order, so the stored record does not depend on arrival order.
    rec.heads.sort_by(|a, b| a.write.stamp.cmp(&b.write.stamp));
    let old_parent = rec.view.meta.parent;
    let (was_open, was_deleted) = (rec.open_conflict, rec.view.meta.deleted);
    let mut outcome = ApplyOutcome::Applied;
    rec.open_conflict = false;
    if rec.heads.len() == 1 {
        rec.view = rec.heads[0].clone();
    } else {
        let path = path_in(t, id)?;
        match conflict::resolve(&rec.heads, policy.strategy_for(&path)) {
            Resolution::Resolved(v) => {
                rec.view = v;
                outcome = ApplyOutcome::Conflict { open: false };
            }
            Resolution::Open { preview } => {
                rec.view = preview;
                rec.open_conflict = true;
                outcome = ApplyOutcome::Conflict { open: true };
            }
        }
    }
    if rec.open_conflict && !was_open {
        let now = t.now_ms;
        t.ix_put(tree::TAG_CONFLICT, &id.to_bytes(), &now.to_be_bytes())?;
    } else if !rec.open_conflict && was_open {
        t.ix_del(tree::TAG_CONFLICT, &id.to_bytes())?;
    }
    if rec.view.meta.deleted && !was_deleted {
        let now = t.now_ms;
        t.ix_put(tree::TAG_TOMBSTONE, &id.to_bytes(), &now.to_be_bytes())?;
    } else if !rec.view.meta.deleted && was_deleted {
        t.ix_del(tree::TAG_TOMBSTONE, &id.to_bytes())?;
    }
    let moved = rec.view.meta.parent != old_parent;
    let is_dir = rec.view.meta.kind == NodeKind::Directory;
    t.save(id, &rec)?;
    t.notes.push(Notification {
        node: id,
        kind: NotificationKind::Changed,
        origin: 0,
    });
    t.settle(id)?;
    if is_dir && (moved || t.any_detached()?) {
        t.check_cycles(id)?;
    }
    Ok(outcome)
}

/// The node's listed path, for choosing its conflict strategy.
fn path_in(t: &Tables<'_>, id: NodeId) -> Result<Vec<u8>> {
    let mut parts = Vec::new();
    let mut at = id;
    while at != NodeId::ROOT && parts.len() <= MAX_DEPTH {
        let Some(rec) = t.load(at)? else { break };
        let Some(l) = rec.listing else { break };
        parts.push(l.shown.as_bytes().to_vec());
        at = l.parent;
    }
    Ok(join_path(parts))
}

/// A local change in progress: the namespace and the open transaction.
struct Local<'ns, 'txn> {
    ns: &'ns Namespace,
    txn: &'txn WriteTransaction,
    t: Tables<'txn>,
}

impl Local<'_, '_> {
    fn entry(&self, parent: NodeId, name: &[u8]) -> Result<NodeId> {
        self.t
            .lookup(parent, name)?
            .ok_or_else(|| Error::NotFound(String::from_utf8_lossy(name).into_owned()))
    }

    /// The shown version of a listed node (a node being deleted elsewhere is still
    /// listed while it has children, so it may be deleted here too).
    fn current(&self, id: NodeId) -> Result<Version> {
        let rec = self
            .t
            .load(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        if rec.listing.is_none() && id != NodeId::ROOT {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(rec.view)
    }

    fn view(&self, id: NodeId) -> Result<NodeView> {
        let rec = self
            .t
            .load(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        Ok(Namespace::view_of(id, &rec))
    }

    fn require_dir(&self, id: NodeId) -> Result<()> {
        let v = self.current(id)?;
        // A listed directory is usable even when deleted elsewhere: it is shown
        // because it still holds entries, and new entries keep it shown.
        if v.meta.kind != NodeKind::Directory {
            return Err(Error::NotADirectory(v.meta.name.to_string()));
        }
        Ok(())
    }

    fn fork_target(&self, id: NodeId) -> Result<Option<(NodeId, Dot)>> {
        let Some(v) = self.t.ix_get(TAG_FORK, &id.to_bytes())? else {
            return Ok(None);
        };
        let f: ForkRef = postcard::from_bytes(&v).map_err(|source| Error::Decode {
            what: "fork entry",
            source,
        })?;
        Ok(Some((f.node, f.dot)))
    }

    /// A new version of `id` built on `base`: the clock counts one more local
    /// write, and `edit` changes the fields (and marks their groups changed).
    fn update(
        &mut self,
        id: NodeId,
        op: ChangeOp,
        base: Version,
        edit: impl FnOnce(&mut Version, &Change),
    ) -> Result<NodeView> {
        let mut v = base;
        let change = self.ns.next_change(&v.vclock);
        v.vclock.increment(&self.ns.region);
        edit(&mut v, &change);
        v.write = change;
        self.commit(id, op, v)?;
        self.view(id)
    }

    /// Stores a local version and enqueues its event, in this transaction.
    fn commit(&mut self, id: NodeId, op: ChangeOp, version: Version) -> Result<()> {
        let event = ChangeEvent {
            node: id,
            op,
            version: version.clone(),
            origin: self.ns.region.clone(),
            seq: None,
        };
        integrate(&mut self.t, &self.ns.policy, id, version)?;
        let now = self.t.now_ms;
        self.ns
            .queue
            .enqueue_in(self.txn, event.priority() as u8, &event.encode(), now)?;
        Ok(())
    }

    fn delete(&mut self, id: NodeId, base: Version) -> Result<()> {
        // Kept losing versions become real files first: deleting a file must
        // not take its conflict copies with it.
        let forks: Vec<(Dot, Fork)> = base
            .visible_forks()
            .map(|(d, f)| (d.clone(), f.clone()))
            .collect();
        let mut base = base;
        for (dot, _) in &forks {
            self.materialize_fork(id, dot.clone())?;
            base = self.current(id)?;
        }
        self.update(id, ChangeOp::Delete, base, |v, c| {
            v.meta.deleted = true;
            v.changes.location = c.clone();
        })?;
        Ok(())
    }

    fn move_to(&mut self, id: NodeId, base: Version, parent: NodeId, name: Name) -> Result<()> {
        self.update(id, ChangeOp::Rename, base, |v, c| {
            v.meta.parent = parent;
            v.meta.name = name;
            v.changes.location = c.clone();
        })?;
        Ok(())
    }

    /// Refuses to move directory `id` under `new_parent` when `new_parent` is
    /// `id` itself or inside its subtree.
    fn refuse_cycle(&self, id: NodeId, v: &Version, new_parent: NodeId) -> Result<()> {
        if v.meta.kind != NodeKind::Directory {
            return Ok(());
        }
        let mut at = new_parent;
        for _ in 0..=MAX_DEPTH {
            if at == id {
                return Err(Error::InvalidRename(format!(
                    "cannot move directory {} into its own subtree",
                    v.meta.name
                )));
            }
            if at == NodeId::ROOT {
                return Ok(());
            }
            let rec = self
                .t
                .load(at)?
                .ok_or_else(|| Error::NotFound(at.to_string()))?;
            at = rec.listing.map_or(NodeId::ROOT, |l| l.parent);
        }
        Err(Error::InvalidRename("directory tree too deep".into()))
    }

    fn materialize_if_fork(&mut self, id: NodeId) -> Result<NodeId> {
        match self.fork_target(id)? {
            Some((node, dot)) => self.materialize_fork(node, dot),
            None => Ok(id),
        }
    }

    /// Turns a fork into a real file at the name it was shown under.
    fn materialize_fork(&mut self, node: NodeId, dot: Dot) -> Result<NodeId> {
        let rec = self
            .t
            .load(node)?
            .ok_or_else(|| Error::NotFound(node.to_string()))?;
        let listing = rec
            .listing
            .clone()
            .ok_or_else(|| Error::NotFound(node.to_string()))?;
        let fork = rec
            .view
            .forks
            .get(&dot)
            .cloned()
            .ok_or_else(|| Error::NotFound(node.to_string()))?;
        let fork_id = tree::fork_id(node, &dot);
        let shown = listing
            .forks
            .iter()
            .find(|(f, _)| *f == fork_id)
            .map(|(_, n)| n.clone())
            .ok_or_else(|| Error::NotFound(fork_id.to_string()))?;
        self.dismiss_fork(node, dot)?;
        let meta = NodeMeta {
            kind: NodeKind::File,
            parent: listing.parent,
            name: shown,
            mode: fork.mode,
            uid: rec.view.meta.uid,
            gid: rec.view.meta.gid,
            size: fork.size,
            mtime_ns: fork.mtime_ns,
            content: fork.content,
            target: None,
            xattrs: BTreeMap::new(),
            deleted: false,
        };
        self.create_node(meta)
    }

    /// Creates a node with a fresh id, written by one local change.
    fn create_node(&mut self, meta: NodeMeta) -> Result<NodeId> {
        let id = NodeId::random();
        let change = self.ns.next_change(&VectorClock::new());
        self.commit(id, ChangeOp::Create, Version::created(meta, change))?;
        Ok(id)
    }

    fn dismiss_fork(&mut self, node: NodeId, dot: Dot) -> Result<()> {
        let base = self.current(node)?;
        self.update(node, ChangeOp::Metadata, base, |v, _| {
            v.dismissed.insert(dot);
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
