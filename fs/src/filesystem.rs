//! The `fuser::Filesystem` implementation: POSIX calls onto the namespace.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use geosync_core::model::{NodeId, NodeKind};
use geosync_core::namespace::{NewNode, NodeView, RenameMode, SetAttr, with_origin};
use geosync_core::store::content::ContentRef;
use geosync_core::{Engine, Error, Result};

use crate::control::{self, CONTROL_DIR};
use crate::errno::errno;
use crate::inodes::{Control, Inode, Inodes, ROOT_INO};
use crate::open::{
    DirHandle, DirItem, Handle, NodeState, OpenFiles, Reader, SeqHasher, Staging, lock,
};
use crate::{FsContext, MountOptions};

/// The largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// The control tree changes behind the kernel's back: never cached.
const CONTROL_TTL: Duration = Duration::ZERO;

/// How long a writer's open waits for passthrough readers' pending releases.
const RELEASE_GRACE: Duration = Duration::from_millis(200);

/// Entries whose attributes `readdirplus` reads in one transaction.
const READDIRPLUS_PAGE: usize = 128;

/// Entries read from the namespace per page when a directory is opened.
const DIR_PAGE: usize = 4096;

/// A new version's mtime when nobody set one: now.
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn time_ns(t: TimeOrNow) -> i64 {
    match t {
        TimeOrNow::Now => now_ns(),
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i64,
            Err(e) => -(e.duration().as_nanos() as i64),
        },
    }
}

pub fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Directory => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
    }
}

/// Attributes of a file or directory that is not a namespace node: owned by
/// the mounting user.
pub fn synthetic_attr(ino: u64, kind: FileType, size: u64, mtime_ns: i64, perm: u16) -> FileAttr {
    let owner = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    file_attr(ino, kind, size, mtime_ns, perm, owner)
}

/// The attributes the kernel sees: one time for all four stamps, and a link
/// count of 1 for directories too, so tools (find) do not guess subdirectory
/// counts from it.
fn file_attr(
    ino: u64,
    kind: FileType,
    size: u64,
    mtime_ns: i64,
    perm: u16,
    (uid, gid): (u32, u32),
) -> FileAttr {
    let t = system_time(mtime_ns);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm,
        nlink: 1,
        uid,
        gid,
        rdev: 0,
        blksize: MAX_WRITE,
        flags: 0,
    }
}

/// The FUSE file system of one region's namespace.
pub struct GeoFs {
    pub(crate) ctx: FsContext,
    pub(crate) inodes: Arc<Inodes>,
    pub(crate) open: Arc<OpenFiles>,
    pub(crate) ttl: Duration,
    /// Tags this mount's own changes so their notifications are not sent back
    /// to the kernel as invalidations.
    pub(crate) origin: u64,
    /// Try FUSE passthrough for reads of local content.
    want_passthrough: bool,
    /// The kernel agreed to passthrough (set at `init`).
    pub(crate) passthrough: Arc<AtomicBool>,
}

type Res<T> = std::result::Result<T, Errno>;

fn name_bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

impl GeoFs {
    pub fn new(
        ctx: FsContext,
        options: &MountOptions,
        inodes: Arc<Inodes>,
        open: Arc<OpenFiles>,
        origin: u64,
        passthrough: Arc<AtomicBool>,
    ) -> GeoFs {
        GeoFs {
            ctx,
            inodes,
            open,
            ttl: options.ttl,
            origin,
            want_passthrough: options.passthrough,
            passthrough,
        }
    }

    fn engine(&self) -> &Engine {
        &self.ctx.engine
    }

    /// Runs a namespace change tagged as this mount's own.
    fn own<T>(&self, f: impl FnOnce() -> Result<T>) -> Res<T> {
        with_origin(self.origin, f).map_err(|e| errno(&e))
    }

    fn inode(&self, ino: INodeNo) -> Res<Inode> {
        self.inodes.get(ino.0).ok_or(Errno::ENOENT)
    }

    fn node(&self, ino: INodeNo) -> Res<NodeId> {
        match self.inode(ino)? {
            Inode::Node(id) => Ok(id),
            Inode::Control(_) => Err(Errno::EROFS),
        }
    }

    fn view(&self, id: NodeId) -> Res<NodeView> {
        self.engine().namespace.get(id).map_err(|e| errno(&e))
    }

    pub(crate) fn attr(&self, ino: u64, view: &NodeView) -> FileAttr {
        let (mut size, mut mtime) = (view.meta.size, view.meta.mtime_ns);
        if view.meta.kind == NodeKind::File
            && let Some(state) = self.open.state(view.id)
            && let Some((s, m)) = lock(&state).pending_size_mtime()
        {
            (size, mtime) = (s, m);
        }
        file_attr(
            ino,
            file_type(view.meta.kind),
            size,
            mtime,
            (view.meta.mode & 0o7777) as u16,
            (view.meta.uid, view.meta.gid),
        )
    }

    fn entry_of(&self, parent: u64, name: &[u8], view: &NodeView) -> FileAttr {
        let ino = self.inodes.node_ino(view.id);
        self.inodes.remember_entry(ino, parent, name);
        self.attr(ino, view)
    }

    fn is_control_name(parent: INodeNo, name: &[u8]) -> bool {
        parent.0 == ROOT_INO && name == CONTROL_DIR
    }

    // ----- content -----

    /// Makes `range` of `content` present locally, fetching cold chunks.
    fn ensure(&self, content: ContentRef, range: std::ops::Range<u64>) -> Result<()> {
        let store = &self.engine().content;
        // Unknown content (not registered yet) is fetched like missing chunks.
        if store.is_complete(&content.id).unwrap_or(false)
            || store
                .missing_chunks(&content.id, range.clone())
                .is_ok_and(|m| m.is_empty())
        {
            return Ok(());
        }
        let chunks = self.ctx.chunks.clone();
        self.ctx
            .runtime
            .block_on(async move { chunks.ensure(content, range).await })
    }

    /// Reads `size` bytes at `offset` of committed content, through `object`
    /// (the handle's open object file).
    pub(crate) fn read_content(
        &self,
        content: ContentRef,
        object: &mut Option<(geosync_core::store::content::ContentId, File)>,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>> {
        if offset >= content.size {
            return Ok(Vec::new());
        }
        let end = (offset + size as u64).min(content.size);
        // The chunk source sees sequential reads and fetches ahead of them in
        // the background; random reads fetch only the chunks they touch.
        self.ensure(content, offset..end)?;
        if object.as_ref().is_none_or(|(id, _)| *id != content.id) {
            let path = self.engine().content.object_path(&content.id);
            let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
            *object = Some((content.id, file));
        }
        let Some((_, file)) = object.as_ref() else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; (end - offset) as usize];
        read_full(file, &mut buf, offset).map_err(|e| Error::io("read", "content", e))?;
        Ok(buf)
    }

    /// Starts staging new content for `state` (a copy of the committed
    /// content, or empty when `empty`).
    fn stage(&self, state: &mut NodeState, empty: bool) -> Result<()> {
        if state.staging.is_some() {
            return Ok(());
        }
        let store = &self.engine().content;
        let (path, mut file) = store.staging_file()?;
        let mut size = 0;
        if let Some(base) = state.content.filter(|c| c.size > 0 && !empty) {
            let copied = self.ensure(base, 0..base.size).and_then(|()| {
                let src = store.object_path(&base.id);
                let mut from = File::open(&src).map_err(|e| Error::io("open", &src, e))?;
                io::copy(&mut from, &mut file).map_err(|e| Error::io("copy", &path, e))?;
                file.set_len(base.size)
                    .map_err(|e| Error::io("truncate", &path, e))
            });
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            size = base.size;
        }
        // Hash on the way while the content is built by appends from empty.
        let hasher = (size == 0).then(|| SeqHasher::new(store.config().chunk_size));
        state.staging = Some(Staging {
            path,
            file,
            size,
            hasher,
        });
        state.last_write_ns = now_ns();
        Ok(())
    }

    /// Commits staged content of `node` as a new version.
    pub(crate) fn commit(&self, node: NodeId, state: &mut NodeState) -> Res<()> {
        let Some(staging) = state.staging.take() else {
            return Ok(());
        };
        let mut staging = staging;
        let manifest = staging.manifest();
        let Staging { path, file, .. } = staging;
        drop(file);
        let ns = &self.engine().namespace;
        let store = &self.engine().content;
        let put = match manifest {
            Some(manifest) => store.put_hashed(&path, manifest),
            None => store.put_file(&path),
        };
        let content = match put {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(errno(&e));
            }
        };
        let mtime = state.mtime_ns.take().unwrap_or(state.last_write_ns);
        match with_origin(self.origin, || ns.write_content(node, content, mtime)) {
            Ok(_) => {
                state.content = Some(content);
                Ok(())
            }
            // Unlinked while open: what was written goes with it.
            Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(errno(&e)),
        }
    }

    /// Sets the size of a node's content (truncate or extend).
    fn truncate(&self, id: NodeId, size: u64) -> Res<()> {
        let view = self.view(id)?;
        match view.meta.kind {
            NodeKind::Directory => return Err(Errno::EISDIR),
            NodeKind::Symlink => return Err(Errno::EINVAL),
            NodeKind::File => {}
        }
        let state = self.open.attach(id, || view.meta.content);
        let result = (|| {
            let mut s = lock(&state);
            self.stage(&mut s, size == 0).map_err(|e| errno(&e))?;
            let staging = s.staging.as_mut().ok_or(Errno::EIO)?;
            staging.file.set_len(size).map_err(Errno::from)?;
            staging.resized(size);
            s.last_write_ns = now_ns();
            // Nobody else has it open: this is the whole change.
            if s.handles == 1 {
                self.commit(id, &mut s)?;
            }
            Ok(())
        })();
        self.open.detach(id);
        result
    }

    /// Clears set-user-id and set-group-id on a write by an unprivileged
    /// writer (the kernel asks us to: `FUSE_HANDLE_KILLPRIV_V2`).
    fn kill_suid(&self, id: NodeId) -> Res<()> {
        let view = self.view(id)?;
        let mode = view.meta.mode;
        if mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
            return Ok(());
        }
        let attr = SetAttr {
            mode: Some(mode & !(libc::S_ISUID | libc::S_ISGID)),
            ..SetAttr::default()
        };
        self.own(|| self.engine().namespace.setattr(id, attr))
            .map(|_| ())
    }

    // ----- opening -----

    fn open_node(&self, ino: u64, id: NodeId, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let trunc = flags.0 & libc::O_TRUNC != 0;
        let view = match self.view(id) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let (id, view) = match self.writable(ino, view, write) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        match view.meta.kind {
            NodeKind::Directory => return reply.error(Errno::EISDIR),
            NodeKind::Symlink => return reply.error(Errno::ELOOP),
            NodeKind::File => {}
        }
        let state = self.open.attach(id, || view.meta.content);
        let mut s = lock(&state);
        if write && s.passthrough_handles > 0 {
            // The kernel sends RELEASE after close returns: readers that just
            // closed may still count here for a moment.
            drop(s);
            let deadline = std::time::Instant::now() + RELEASE_GRACE;
            while lock(&state).passthrough_handles > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            s = lock(&state);
        }
        if trunc && write {
            if let Some(old) = s.staging.take() {
                let _ = std::fs::remove_file(&old.path);
            }
            if let Err(e) = self.stage(&mut s, true) {
                drop(s);
                self.open.detach(id);
                return reply.error(errno(&e));
            }
        }
        // Passthrough: the kernel reads the content file itself. Once an inode
        // has passthrough opens, the kernel wants every open of it to be
        // passthrough with the same backing file: later readers share it (they
        // read the version the first reader opened), writers must wait.
        if s.passthrough_handles > 0 && write {
            drop(s);
            self.open.detach(id);
            return reply.error(Errno::ETXTBSY);
        }
        let shared = s.passthrough.as_ref().map(|(cid, b)| (*cid, b.clone()));
        let fresh = s
            .content
            .filter(|_| self.passthrough.load(Ordering::Relaxed))
            .filter(|_| !write && s.staging.is_none() && s.cached_handles == 0)
            .filter(|c| self.engine().content.is_complete(&c.id).unwrap_or(false));
        let backing = match (shared, fresh) {
            (Some((cid, backing)), _) => Some(Ok((cid, backing))),
            (None, Some(content)) => {
                let path = self.engine().content.object_path(&content.id);
                Some(
                    File::open(&path)
                        .and_then(|f| reply.open_backing(f))
                        .map(|b| (content.id, Arc::new(b))),
                )
            }
            (None, None) => None,
        };
        match backing {
            Some(Ok((cid, backing))) => {
                let guard = self.engine().content.open_handle(&cid);
                s.passthrough = Some((cid, backing.clone()));
                s.passthrough_handles += 1;
                drop(s);
                let fh = self.open.insert(Handle {
                    node: id,
                    ino,
                    write: false,
                    state: Some(state),
                    reader: Reader::Node {
                        object: Mutex::new(None),
                        _guard: Some(guard),
                    },
                    passthrough: true,
                });
                return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "FUSE passthrough refused; reading through the daemon");
                self.passthrough.store(false, Ordering::Relaxed);
            }
            None => {}
        }
        s.cached_handles += 1;
        let flags = FopenFlags::FOPEN_KEEP_CACHE;
        let guard = s.content.map(|c| self.engine().content.open_handle(&c.id));
        drop(s);
        let fh = self.open.insert(Handle {
            node: id,
            ino,
            write,
            state: Some(state),
            reader: Reader::Node {
                object: Mutex::new(None),
                _guard: guard,
            },
            passthrough: false,
        });
        reply.opened(FileHandle(fh), flags);
    }

    /// A node opened for writing: a kept conflict copy becomes a real file
    /// first (same inode number for the kernel).
    fn writable(&self, ino: u64, view: NodeView, write: bool) -> Res<(NodeId, NodeView)> {
        if !write || view.fork_of.is_none() {
            return Ok((view.id, view));
        }
        let ns = &self.engine().namespace;
        let id = self.own(|| ns.materialize(view.id))?;
        self.inodes.rebind(ino, id);
        self.open.rekey(view.id, id);
        Ok((id, self.view(id)?))
    }

    fn release_handle(&self, fh: u64) -> Res<()> {
        let Some(handle) = self.open.remove(fh) else {
            return Ok(());
        };
        let mut result = Ok(());
        if let Some(state) = &handle.state {
            let mut s = lock(state);
            if handle.write && s.dirty() {
                result = self.commit(handle.node, &mut s);
            }
            if handle.passthrough {
                s.passthrough_handles = s.passthrough_handles.saturating_sub(1);
                if s.passthrough_handles == 0 {
                    s.passthrough = None;
                }
            } else if !handle.passthrough && s.cached_handles > 0 {
                s.cached_handles -= 1;
            }
            drop(s);
            self.open.detach(handle.node);
        }
        result
    }

    fn read_handle(&self, handle: &Handle, offset: u64, size: u32) -> Res<Vec<u8>> {
        match &handle.reader {
            Reader::Bytes(data) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                Ok(data[start..end].to_vec())
            }
            Reader::Version {
                content, object, ..
            } => {
                let Some(content) = content else {
                    return Ok(Vec::new());
                };
                let mut object = object.lock().unwrap_or_else(|p| p.into_inner());
                self.read_content(*content, &mut object, offset, size)
                    .map_err(|e| errno(&e))
            }
            Reader::Node { object, .. } => {
                let state = handle.state.as_ref().ok_or(Errno::EIO)?;
                let s = lock(state);
                if let Some(staging) = &s.staging {
                    if offset >= staging.size {
                        return Ok(Vec::new());
                    }
                    let len = (size as u64).min(staging.size - offset) as usize;
                    let mut buf = vec![0u8; len];
                    read_full(&staging.file, &mut buf, offset).map_err(Errno::from)?;
                    return Ok(buf);
                }
                let content = s.content;
                drop(s);
                let Some(content) = content else {
                    return Ok(Vec::new());
                };
                let mut object = object.lock().unwrap_or_else(|p| p.into_inner());
                self.read_content(content, &mut object, offset, size)
                    .map_err(|e| errno(&e))
            }
        }
    }

    // ----- directories -----

    fn list_node_dir(&self, ino: u64, id: NodeId) -> Res<Vec<DirItem>> {
        let ns = &self.engine().namespace;
        let view = self.view(id)?;
        if view.meta.kind != NodeKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        let parent_ino = if id == NodeId::ROOT {
            ROOT_INO
        } else {
            self.inodes.node_ino(view.meta.parent)
        };
        let mut items = vec![
            DirItem {
                ino,
                node: Some(id),
                kind: FileType::Directory,
                name: b".".to_vec(),
            },
            DirItem {
                ino: parent_ino,
                node: None,
                kind: FileType::Directory,
                name: b"..".to_vec(),
            },
        ];
        if id == NodeId::ROOT {
            items.push(DirItem {
                ino: self.inodes.ino(Inode::Control(Control::Dir)),
                node: None,
                kind: FileType::Directory,
                name: CONTROL_DIR.to_vec(),
            });
        }
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = ns
                .readdir(id, after.as_deref(), DIR_PAGE)
                .map_err(|e| errno(&e))?;
            let Some(last) = page.last() else { break };
            after = Some(last.name.as_bytes().to_vec());
            let inos = self
                .inodes
                .node_inos(&page.iter().map(|e| e.node).collect::<Vec<_>>());
            for (e, ino) in page.into_iter().zip(inos) {
                if id == NodeId::ROOT && e.name.as_bytes() == CONTROL_DIR {
                    continue;
                }
                items.push(DirItem {
                    ino,
                    node: Some(e.node),
                    kind: file_type(e.kind),
                    name: e.name.as_bytes().to_vec(),
                });
            }
        }
        Ok(items)
    }

    fn check_writable_parent(&self, parent: INodeNo, name: &[u8]) -> Res<NodeId> {
        if Self::is_control_name(parent, name) {
            return Err(Errno::EEXIST);
        }
        self.node(parent)
    }

    /// Removes `name` from `parent` with `remove`; the control directory answers
    /// `control` instead.
    fn remove(
        &self,
        parent: INodeNo,
        name: &[u8],
        control: Errno,
        remove: impl FnOnce(NodeId, &[u8]) -> Result<()>,
    ) -> Res<()> {
        if Self::is_control_name(parent, name) {
            return Err(control);
        }
        let dir = self.node(parent)?;
        self.own(|| remove(dir, name))
    }

    /// Creates `name` in `parent`, owned by the caller.
    fn make(&self, req: &Request, parent: INodeNo, name: &[u8], new: NewNode) -> Res<NodeView> {
        let dir = self.check_writable_parent(parent, name)?;
        let new = NewNode {
            uid: req.uid(),
            gid: req.gid(),
            ..new
        };
        self.own(|| self.engine().namespace.create(dir, name, new))
    }

    fn reply_entry(&self, reply: ReplyEntry, parent: INodeNo, name: &[u8], made: Res<NodeView>) {
        match made {
            Ok(view) => reply.entry(
                &self.ttl,
                &self.entry_of(parent.0, name, &view),
                Generation(0),
            ),
            Err(e) => reply.error(e),
        }
    }
}

/// Reads exactly `buf.len()` bytes at `offset` (short only at end of file).
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl fuser::Filesystem for GeoFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let mut wanted = InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            // We clear set-id bits on write ourselves, which spares the kernel
            // a getxattr(security.capability) round trip before every write.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let can_passthrough = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH);
        if self.want_passthrough && can_passthrough {
            wanted |= InitFlags::FUSE_PASSTHROUGH;
        }
        let wanted = wanted & config.capabilities();
        let _ = config.add_capabilities(wanted);
        if wanted.contains(InitFlags::FUSE_PASSTHROUGH) && config.set_max_stack_depth(1).is_ok() {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        tracing::info!(
            passthrough = self.passthrough.load(Ordering::Relaxed),
            "FUSE session initialised"
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_bytes(name);
        match self.inode(parent) {
            Err(e) => reply.error(e),
            Ok(Inode::Control(c)) => match control::lookup(self, &c, name) {
                Ok(attr) => reply.entry(&CONTROL_TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            },
            Ok(Inode::Node(_)) if Self::is_control_name(parent, name) => {
                let attr = control::attr(self, &Control::Dir);
                reply.entry(&self.ttl, &attr, Generation(0))
            }
            Ok(Inode::Node(dir)) => match self.engine().namespace.lookup(dir, name) {
                Ok(view) => {
                    let attr = self.entry_of(parent.0, name, &view);
                    reply.entry(&self.ttl, &attr, Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            },
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inode(ino) {
            Err(e) => reply.error(e),
            Ok(Inode::Control(c)) => reply.attr(&CONTROL_TTL, &control::attr(self, &c)),
            Ok(Inode::Node(id)) => match self.view(id) {
                Ok(view) => reply.attr(&self.ttl, &self.attr(ino.0, &view)),
                Err(e) => reply.error(e),
            },
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = (|| {
            let id = self.node(ino)?;
            if let Some(size) = size {
                self.truncate(id, size)?;
            }
            let ns = &self.engine().namespace;
            let mut attr = SetAttr {
                mode,
                uid,
                gid,
                mtime_ns: None,
            };
            if let Some(t) = mtime {
                let t = time_ns(t);
                // Dirty content: the commit carries the mtime (cp -p sets it before close).
                let deferred = self.open.state(id).is_some_and(|state| {
                    let mut s = lock(&state);
                    if s.dirty() {
                        s.mtime_ns = Some(t);
                    }
                    s.dirty()
                });
                if !deferred {
                    attr.mtime_ns = Some(t);
                }
            }
            if attr != SetAttr::default() {
                self.own(|| ns.setattr(id, attr))?;
            }
            let view = self.view(id)?;
            Ok(self.attr(ino.0, &view))
        })();
        match result {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).and_then(|id| self.view(id)) {
            Ok(view) => match (view.meta.kind, &view.meta.target) {
                (NodeKind::Symlink, Some(target)) => reply.data(target),
                _ => reply.error(Errno::EINVAL),
            },
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name_bytes(name);
        let made = self.make(
            req,
            parent,
            name,
            NewNode::directory(mode & !umask & 0o7777),
        );
        self.reply_entry(reply, parent, name, made)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.remove(parent, name_bytes(name), Errno::EISDIR, |dir, name| {
            self.engine().namespace.unlink(dir, name)
        });
        reply_empty(reply, result)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.remove(parent, name_bytes(name), Errno::EROFS, |dir, name| {
            self.engine().namespace.rmdir(dir, name)
        });
        reply_empty(reply, result)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let name = name_bytes(link_name);
        let made = self.make(
            req,
            parent,
            name,
            NewNode::symlink(target.as_os_str().as_bytes()),
        );
        self.reply_entry(reply, parent, name, made)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name_bytes(name), name_bytes(newname));
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            // RENAME_WHITEOUT is for overlay file systems.
            return reply.error(Errno::EINVAL);
        };
        let result =
            if Self::is_control_name(parent, name) || Self::is_control_name(newparent, newname) {
                Err(Errno::EROFS)
            } else {
                self.node(parent).and_then(|from| {
                    let to = self.node(newparent)?;
                    self.own(|| {
                        self.engine()
                            .namespace
                            .rename(from, name, to, newname, mode)
                    })
                })
            };
        reply_empty(reply, result)
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // Hard links are not supported: a node has one name (see the README).
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.inode(ino) {
            Err(e) => reply.error(e),
            Ok(Inode::Control(c)) => {
                if flags.acc_mode() != OpenAccMode::O_RDONLY {
                    return reply.error(Errno::EROFS);
                }
                match control::open(self, &c) {
                    Ok((reader, fopen)) => {
                        let fh = self.open.insert(Handle {
                            node: NodeId(0),
                            ino: ino.0,
                            write: false,
                            state: None,
                            reader,
                            passthrough: false,
                        });
                        reply.opened(FileHandle(fh), fopen)
                    }
                    Err(e) => reply.error(e),
                }
            }
            Ok(Inode::Node(id)) => self.open_node(ino.0, id, flags, reply),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name_bytes(name);
        let made = match self.make(req, parent, name, NewNode::file(mode & !umask & 0o7777)) {
            // Created meanwhile by someone else: without O_EXCL, open it.
            Err(Errno::EEXIST)
                if flags & libc::O_EXCL == 0 && !Self::is_control_name(parent, name) =>
            {
                self.node(parent)
                    .and_then(|dir| {
                        self.engine()
                            .namespace
                            .lookup(dir, name)
                            .map_err(|e| errno(&e))
                    })
                    .and_then(|v| match v.meta.kind {
                        NodeKind::File => Ok(v),
                        NodeKind::Directory => Err(Errno::EISDIR),
                        NodeKind::Symlink => Err(Errno::EEXIST),
                    })
            }
            other => other,
        };
        let view = match made {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let attr = self.entry_of(parent.0, name, &view);
        let write = OpenFlags(flags).acc_mode() != OpenAccMode::O_RDONLY;
        let state = self.open.attach(view.id, || view.meta.content);
        {
            let mut s = lock(&state);
            if s.passthrough_handles > 0 {
                drop(s);
                self.open.detach(view.id);
                return reply.error(Errno::ETXTBSY);
            }
            if write && flags & libc::O_TRUNC != 0 && view.meta.size > 0 {
                if let Some(old) = s.staging.take() {
                    let _ = std::fs::remove_file(&old.path);
                }
                if let Err(e) = self.stage(&mut s, true) {
                    drop(s);
                    self.open.detach(view.id);
                    return reply.error(errno(&e));
                }
            }
            s.cached_handles += 1;
        }
        let fh = self.open.insert(Handle {
            node: view.id,
            ino: attr.ino.0,
            write,
            state: Some(state),
            reader: Reader::Node {
                object: Mutex::new(None),
                _guard: None,
            },
            passthrough: false,
        });
        reply.created(
            &self.ttl,
            &attr,
            Generation(0),
            FileHandle(fh),
            FopenFlags::FOPEN_KEEP_CACHE,
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(handle) = self.open.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        match self.read_handle(&handle, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(handle) = self.open.handle(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let Some(state) = handle.state.as_ref().filter(|_| handle.write) else {
            return reply.error(Errno::EBADF);
        };
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Err(e) = self.kill_suid(handle.node)
        {
            return reply.error(e);
        }
        let mut s = lock(state);
        if let Err(e) = self.stage(&mut s, false) {
            return reply.error(errno(&e));
        }
        let Some(staging) = s.staging.as_mut() else {
            return reply.error(Errno::EIO);
        };
        match staging.file.write_all_at(data, offset) {
            Ok(()) => {
                staging.wrote(offset, data);
                s.last_write_ns = now_ns();
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let Some(handle) = self.open.handle(fh.0) else {
            return reply.ok();
        };
        let result = match handle.state.as_ref().filter(|_| handle.write) {
            Some(state) => self.commit(handle.node, &mut lock(state)),
            None => Ok(()),
        };
        reply_empty(reply, result)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.release_handle(fh.0))
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            if let Some(handle) = self.open.handle(fh.0)
                && let Some(state) = handle.state.as_ref().filter(|_| handle.write)
            {
                self.commit(handle.node, &mut lock(state))?;
            }
            self.engine().namespace.sync().map_err(|e| errno(&e))
        })();
        reply_empty(reply, result)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let entries = match self.inode(ino) {
            Err(e) => Err(e),
            Ok(Inode::Control(c)) => control::list(self, ino.0, &c),
            Ok(Inode::Node(id)) => self.list_node_dir(ino.0, id),
        };
        match entries {
            Ok(entries) => {
                let fh = self.open.insert_dir(DirHandle { entries });
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(dir) = self.open.dir(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, item) in dir.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(item.ino),
                i as u64 + 1,
                item.kind,
                OsStr::from_bytes(&item.name),
            ) {
                break;
            }
        }
        reply.ok()
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(dir) = self.open.dir(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        // Attributes a page at a time, in one read transaction each.
        let mut at = offset as usize;
        'pages: while at < dir.entries.len() {
            let page = &dir.entries[at..(at + READDIRPLUS_PAGE).min(dir.entries.len())];
            let ids: Vec<NodeId> = page.iter().filter_map(|item| item.node).collect();
            let views = match self.engine().namespace.get_many(&ids) {
                Ok(v) => v,
                Err(e) => return reply.error(errno(&e)),
            };
            let mut views = views.into_iter();
            for (i, item) in page.iter().enumerate() {
                let attr = match (item.node, &item.name[..]) {
                    (None, _) => match self.inodes.get(item.ino) {
                        Some(Inode::Control(c)) => control::attr(self, &c),
                        _ => synthetic_attr(item.ino, item.kind, 0, 0, 0o755),
                    },
                    (Some(_), name) => match views.next() {
                        Some(Ok(view)) => {
                            if name != b"." {
                                self.inodes.remember_entry(item.ino, ino.0, name);
                            }
                            self.attr(item.ino, &view)
                        }
                        // Removed since the directory was opened.
                        _ => continue,
                    },
                };
                let next = (at + i) as u64 + 1;
                if reply.add(
                    INodeNo(item.ino),
                    next,
                    OsStr::from_bytes(&item.name),
                    &self.ttl,
                    &attr,
                    Generation(0),
                ) {
                    break 'pages;
                }
            }
            at += page.len();
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.open.remove_dir(fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.engine().namespace.sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.ctx.data_dir) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = name_bytes(name);
        let result = (|| {
            let id = self.node(ino)?;
            if name.starts_with(control::XATTR_PREFIX) {
                return Err(Errno::EPERM);
            }
            let ns = &self.engine().namespace;
            let exists = ns.get_xattr(id, name).map_err(|e| errno(&e))?.is_some();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(Errno::EEXIST);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(Errno::ENODATA);
            }
            self.own(|| ns.set_xattr(id, name, Some(value))).map(|_| ())
        })();
        reply_empty(reply, result)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name_bytes(name);
        let value = (|| {
            let id = match self.inode(ino)? {
                Inode::Node(id) => id,
                Inode::Control(_) => return Err(Errno::ENODATA),
            };
            if let Some(value) = control::state_xattr(self, id, name)? {
                return Ok(value);
            }
            self.engine()
                .namespace
                .get_xattr(id, name)
                .map_err(|e| errno(&e))?
                .ok_or(Errno::ENODATA)
        })();
        match value {
            Ok(v) => xattr_reply(reply, size, &v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names = (|| {
            let id = match self.inode(ino)? {
                Inode::Node(id) => id,
                Inode::Control(_) => return Ok(Vec::new()),
            };
            let view = self.view(id)?;
            let mut out = Vec::new();
            for name in control::STATE_XATTRS {
                out.extend_from_slice(name);
                out.push(0);
            }
            for name in view.meta.xattrs.keys() {
                out.extend_from_slice(name);
                out.push(0);
            }
            Ok(out)
        })();
        match names {
            Ok(v) => xattr_reply(reply, size, &v),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        let result = (|| {
            let id = self.node(ino)?;
            if name.starts_with(control::XATTR_PREFIX) {
                return Err(Errno::EPERM);
            }
            let ns = &self.engine().namespace;
            self.own(|| ns.set_xattr(id, name, None)).map(|_| ())
        })();
        reply_empty(reply, result)
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions (`default_permissions`).
        reply.ok()
    }
}

/// Answers a call whose only result is success or an errno.
fn reply_empty(reply: ReplyEmpty, result: Res<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}
