//! Open files: what every open handle of a node shares (the staged new
//! content, the committed content it reads), and the handle table.
//!
//! Writes never touch committed content: the first write to a node copies its
//! content into a staging file (or starts empty for `O_TRUNC`), later writes go
//! there, and `flush`/`fsync`/`release` hash the staging file into the content
//! store and commit it as one new version of the node. So other regions only
//! ever see whole versions, and a crash loses only writes nobody was told were
//! durable (those since the last `fsync`).

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::BackingId;
use geosync_core::model::NodeId;
use geosync_core::store::content::{ContentId, ContentRef, Manifest, OpenGuard};

/// New content being written, not yet committed.
pub struct Staging {
    pub path: PathBuf,
    pub file: File,
    pub size: u64,
    /// Chunk hashes of the content so far while every write appended (the
    /// usual `cp`/`rsync` pattern): the commit then needs no second read.
    pub hasher: Option<SeqHasher>,
}

impl Staging {
    /// Records a write of `data` at `offset`.
    pub fn wrote(&mut self, offset: u64, data: &[u8]) {
        if let Some(h) = &mut self.hasher
            && !h.append(offset, data)
        {
            self.hasher = None;
        }
        self.size = self.size.max(offset + data.len() as u64);
    }

    /// Records a truncate or extend to `size`.
    pub fn resized(&mut self, size: u64) {
        if self.hasher.as_ref().is_some_and(|h| h.len != size) {
            self.hasher = None;
        }
        self.size = size;
    }

    /// The manifest of the staged content, if the writes allowed hashing it
    /// on the way.
    pub fn manifest(&mut self) -> Option<Manifest> {
        let h = self.hasher.take()?;
        (h.len == self.size).then(|| h.finish()).flatten()
    }
}

/// Hashes content chunk by chunk as it is appended.
pub struct SeqHasher {
    chunk_size: u64,
    chunks: Vec<[u8; 32]>,
    current: blake3::Hasher,
    in_chunk: u64,
    /// Bytes hashed so far (the next append must start here).
    len: u64,
}

impl SeqHasher {
    pub fn new(chunk_size: u32) -> SeqHasher {
        SeqHasher {
            chunk_size: u64::from(chunk_size),
            chunks: Vec::new(),
            current: blake3::Hasher::new(),
            in_chunk: 0,
            len: 0,
        }
    }

    /// Hashes `data` if it continues the content; false if it does not.
    fn append(&mut self, offset: u64, mut data: &[u8]) -> bool {
        if offset != self.len {
            return false;
        }
        while !data.is_empty() {
            let room = (self.chunk_size - self.in_chunk) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.current.update(now);
            self.in_chunk += now.len() as u64;
            self.len += now.len() as u64;
            if self.in_chunk == self.chunk_size {
                self.chunks.push(*self.current.finalize().as_bytes());
                self.current.reset();
                self.in_chunk = 0;
            }
            data = rest;
        }
        true
    }

    fn finish(mut self) -> Option<Manifest> {
        if self.in_chunk > 0 {
            self.chunks.push(*self.current.finalize().as_bytes());
        }
        Manifest::new(self.chunk_size as u32, self.len, self.chunks).ok()
    }
}

/// What the open handles of one node share.
#[derive(Default)]
pub struct NodeState {
    /// Open handles of the node.
    pub handles: usize,
    /// The committed content reads see when nothing is staged.
    pub content: Option<ContentRef>,
    /// Staged writes (the node is "dirty" while this is `Some`).
    pub staging: Option<Staging>,
    /// An mtime set while dirty (`futimens` before `close`, as `cp -p` does):
    /// the commit uses it instead of the time of the last write.
    pub mtime_ns: Option<i64>,
    /// When the staging file was last written.
    pub last_write_ns: i64,
    /// The kernel reads this content directly (FUSE passthrough) for
    /// `passthrough_handles` handles; all of them must share one backing file.
    pub passthrough: Option<(ContentId, Arc<BackingId>)>,
    pub passthrough_handles: usize,
    /// Handles using the page cache; the kernel refuses passthrough and
    /// page-cache opens of one inode at the same time.
    pub cached_handles: usize,
}

impl NodeState {
    pub fn dirty(&self) -> bool {
        self.staging.is_some()
    }

    /// The size and mtime the node has for its readers now.
    pub fn pending_size_mtime(&self) -> Option<(u64, i64)> {
        self.staging
            .as_ref()
            .map(|s| (s.size, self.mtime_ns.unwrap_or(self.last_write_ns)))
    }
}

pub type SharedState = Arc<Mutex<NodeState>>;

pub fn lock(state: &SharedState) -> MutexGuard<'_, NodeState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handle's open content object file, opened at its first read.
pub type ObjectSlot = Mutex<Option<(ContentId, File)>>;

/// How a handle reads.
pub enum Reader {
    /// A namespace file: through the node's shared state.
    Node {
        /// The object file of `object.0`, opened on first read.
        object: ObjectSlot,
        /// Keeps the content from eviction while the handle is open.
        _guard: Option<OpenGuard>,
    },
    /// A generated control file (`status.json`): its bytes at open.
    Bytes(Vec<u8>),
    /// A conflict version under `.geosync/conflicts/`.
    Version {
        content: Option<ContentRef>,
        object: ObjectSlot,
        _guard: Option<OpenGuard>,
    },
}

/// An open file.
pub struct Handle {
    pub node: NodeId,
    pub ino: u64,
    pub write: bool,
    pub state: Option<SharedState>,
    pub reader: Reader,
    /// Passthrough handles keep their backing id registered until release.
    pub passthrough: bool,
}

/// Open directory: the entries as they were at `opendir` (offsets index it).
pub struct DirHandle {
    pub entries: Vec<DirItem>,
}

#[derive(Clone)]
pub struct DirItem {
    pub ino: u64,
    pub node: Option<NodeId>,
    pub kind: fuser::FileType,
    pub name: Vec<u8>,
}

/// Every open handle and node state of a mount.
#[derive(Default)]
pub struct OpenFiles {
    nodes: Mutex<HashMap<NodeId, SharedState>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OpenFiles {
    /// The shared state of `node`, counting one more handle; `init` fills a
    /// new state's committed content.
    pub fn attach(&self, node: NodeId, init: impl FnOnce() -> Option<ContentRef>) -> SharedState {
        let mut nodes = locked(&self.nodes);
        let state = nodes.entry(node).or_insert_with(|| {
            Arc::new(Mutex::new(NodeState {
                content: init(),
                ..NodeState::default()
            }))
        });
        lock(state).handles += 1;
        state.clone()
    }

    /// One handle of `node` fewer; forgets the state after the last one.
    pub fn detach(&self, node: NodeId) {
        let mut nodes = locked(&self.nodes);
        if let Some(state) = nodes.get(&node) {
            let mut s = lock(state);
            s.handles = s.handles.saturating_sub(1);
            let last = s.handles == 0;
            drop(s);
            if last {
                nodes.remove(&node);
            }
        }
    }

    /// The state of `node` if it has open handles.
    pub fn state(&self, node: NodeId) -> Option<SharedState> {
        locked(&self.nodes).get(&node).cloned()
    }

    /// Moves the state of `from` to `to` (a conflict copy became a real file).
    pub fn rekey(&self, from: NodeId, to: NodeId) {
        let mut nodes = locked(&self.nodes);
        if let Some(state) = nodes.remove(&from) {
            nodes.insert(to, state);
        }
    }

    fn next_fh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next_fh();
        locked(&self.handles).insert(fh, Arc::new(handle));
        fh
    }

    pub fn handle(&self, fh: u64) -> Option<Arc<Handle>> {
        locked(&self.handles).get(&fh).cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        locked(&self.handles).remove(&fh)
    }

    pub fn insert_dir(&self, dir: DirHandle) -> u64 {
        let fh = self.next_fh();
        locked(&self.dirs).insert(fh, Arc::new(dir));
        fh
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        locked(&self.dirs).get(&fh).cloned()
    }

    pub fn remove_dir(&self, fh: u64) {
        locked(&self.dirs).remove(&fh);
    }

    /// Open handles (files and directories), for status.
    pub fn counts(&self) -> (usize, usize) {
        (locked(&self.handles).len(), locked(&self.dirs).len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_content_hashes_like_the_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        for pieces in [1usize, 3, 64, 1000, 4096] {
            let mut h = SeqHasher::new(1024);
            let mut at = 0u64;
            for p in data.chunks(pieces) {
                assert!(h.append(at, p));
                at += p.len() as u64;
            }
            let m = h.finish().unwrap();
            assert_eq!(
                m.id(),
                Manifest::for_bytes(&data, 1024).unwrap().id(),
                "{pieces}"
            );
        }
        let empty = SeqHasher::new(1024).finish().unwrap();
        assert_eq!(empty.id(), Manifest::for_bytes(&[], 1024).unwrap().id());
        let mut h = SeqHasher::new(1024);
        assert!(h.append(0, b"abc"));
        assert!(!h.append(10, b"gap"), "a write that skips is not an append");
    }
}
