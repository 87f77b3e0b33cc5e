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
use geosync_core::store::content::{ContentId, ContentRef, OpenGuard};

/// New content being written, not yet committed.
pub struct Staging {
    pub path: PathBuf,
    pub file: File,
    pub size: u64,
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

/// How a handle reads.
pub enum Reader {
    /// A namespace file: through the node's shared state.
    Node {
        /// The object file of `object.0`, opened on first read.
        object: Mutex<Option<(ContentId, File)>>,
        /// Keeps the content from eviction while the handle is open.
        guard: Mutex<Option<OpenGuard>>,
    },
    /// A generated control file (`status.json`): its bytes at open.
    Bytes(Vec<u8>),
    /// A conflict version under `.geosync/conflicts/`.
    Version {
        content: Option<ContentRef>,
        object: Mutex<Option<File>>,
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
    /// Where the next sequential read starts (read-ahead on a match).
    pub next_offset: AtomicU64,
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
