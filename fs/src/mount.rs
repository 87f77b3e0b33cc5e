//! Mounting and unmounting, and the task that carries remote changes to the
//! kernel's caches.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, Session, SessionACL};
use geosync_core::namespace::{Notification, NotificationKind};
use nix::errno::Errno as NixErrno;
use nix::mount::MntFlags;
use tokio::sync::broadcast::error::RecvError;

use crate::filesystem::GeoFs;
use crate::inodes::Inodes;
use crate::open::{OpenFiles, lock};
use crate::{FsContext, MountOptions};

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {0} does not exist (create it first: mkdir -p {0})")]
    MissingMountPoint(String),
    #[error("mount point {0} is not a directory")]
    NotADirectory(String),
    #[error(
        "/dev/fuse is missing: install FUSE (Debian/Ubuntu: apt-get install fuse3) and load the \
         module (modprobe fuse); in a container, pass the device (--device /dev/fuse)"
    )]
    NoFuseDevice,
    #[error("{path} is already mounted ({fstype}); unmount it first (fusermount3 -u {path})")]
    AlreadyMounted { path: String, fstype: String },
    #[error("cannot mount {path}: {source}")]
    Mount { path: String, source: io::Error },
    #[error("cannot unmount {path}: {source}")]
    Unmount { path: String, source: io::Error },
}

/// How long an unmount waits for the request threads to finish.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A mounted namespace; unmounted by [`Mounted::unmount`] or on drop.
pub struct Mounted {
    path: PathBuf,
    session: Option<BackgroundSession>,
    /// The FUSE connection (the mount's device number), to abort it if open
    /// files keep a lazily unmounted file system alive.
    connection: u64,
    stop_invalidator: Arc<tokio::sync::Notify>,
    invalidator: Option<JoinHandle<()>>,
    passthrough: Arc<AtomicBool>,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the kernel reads local content directly (FUSE passthrough).
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Unmounts, also when files are still open (they get `ENOTCONN`).
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), MountError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        self.stop_invalidator.notify_one();
        if let Some(t) = self.invalidator.take() {
            let _ = t.join();
        }
        let failed = |source| MountError::Unmount {
            path: self.path.display().to_string(),
            source,
        };
        match nix::mount::umount2(&self.path, MntFlags::empty()) {
            Ok(()) => {}
            Err(NixErrno::EBUSY) => {
                // Open files: detach the mount, then end the connection so the
                // request threads stop.
                nix::mount::umount2(&self.path, MntFlags::MNT_DETACH)
                    .map_err(|e| failed(io::Error::from(e)))?;
                abort_connection(self.connection);
            }
            Err(NixErrno::EINVAL) => {} // not mounted any more
            Err(e) => return Err(failed(io::Error::from(e))),
        }
        // Join with a deadline: a connection that cannot be aborted must not
        // hang the process.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(session.join());
        });
        match done_rx.recv_timeout(JOIN_TIMEOUT) {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "FUSE session ended with an error"),
        }
        tracing::info!(path = %self.path.display(), "unmounted");
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "unmount failed");
        }
    }
}

/// Ends a FUSE connection through the fusectl file system (mounting it if
/// needed), so a lazily unmounted file system with open files goes away.
fn abort_connection(connection: u64) {
    let dir = Path::new("/sys/fs/fuse/connections");
    let abort = dir.join(connection.to_string()).join("abort");
    if !abort.exists() {
        let _ = nix::mount::mount(
            Some("fusectl"),
            dir,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    if let Err(e) = std::fs::write(&abort, b"1") {
        tracing::warn!(error = %e, path = %abort.display(), "cannot abort the FUSE connection");
    }
}

/// The file system type mounted at `path` (from `/proc/self/mountinfo`).
fn mounted_type(path: &Path) -> Option<String> {
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_bytes();
    info.split(|b| *b == b'\n').find_map(|line| {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let point = unescape(fields.get(4)?);
        if point != want {
            return None;
        }
        let sep = fields.iter().position(|f| *f == b"-")?;
        Some(String::from_utf8_lossy(fields.get(sep + 1)?).into_owned())
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && let Ok(s) = std::str::from_utf8(&field[i + 1..i + 4])
            && let Ok(b) = u8::from_str_radix(s, 8)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Checks the mount point, clearing a stale geosync mount left by a process
/// that died (its requests fail with `ENOTCONN`).
fn check_mount_point(path: &Path) -> Result<PathBuf, MountError> {
    let show = || path.display().to_string();
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoFuseDevice);
    }
    let meta = match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(path = %show(), "clearing a stale FUSE mount (its process died)");
            nix::mount::umount2(path, MntFlags::MNT_DETACH).map_err(|e| MountError::Mount {
                path: show(),
                source: io::Error::from(e),
            })?;
            std::fs::metadata(path)
        }
        other => other,
    };
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::MissingMountPoint(show()));
        }
        Err(source) => {
            return Err(MountError::Mount {
                path: show(),
                source,
            });
        }
    };
    if !meta.is_dir() {
        return Err(MountError::NotADirectory(show()));
    }
    let path = path.canonicalize().map_err(|source| MountError::Mount {
        path: show(),
        source,
    })?;
    if let Some(fstype) = mounted_type(&path) {
        return Err(MountError::AlreadyMounted {
            path: path.display().to_string(),
            fstype,
        });
    }
    Ok(path)
}

/// Mounts `ctx`'s namespace at `path`; requests are served on background
/// threads until the returned [`Mounted`] is unmounted or dropped.
pub fn mount(ctx: FsContext, path: &Path, options: &MountOptions) -> Result<Mounted, MountError> {
    let path = check_mount_point(path)?;
    let mut mount_options = vec![
        MountOption::FSName("geosync".into()),
        MountOption::Subtype("geosync".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if options.read_only {
        mount_options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;

    let inodes = Arc::new(Inodes::new());
    let open = Arc::new(OpenFiles::default());
    let origin = rand_origin();
    let passthrough = Arc::new(AtomicBool::new(false));
    let notifications = ctx.engine.namespace.subscribe();
    let fs = GeoFs::new(
        ctx.clone(),
        options,
        inodes.clone(),
        open.clone(),
        origin,
        passthrough.clone(),
    );
    let failed = |source| MountError::Mount {
        path: path.display().to_string(),
        source,
    };
    let session = Session::new(fs, &path, &config).map_err(failed)?;
    let notifier = session.notifier();
    let session = session.spawn().map_err(failed)?;
    let connection = std::fs::metadata(&path).map(|m| m.dev()).unwrap_or(0);
    let stop = Arc::new(tokio::sync::Notify::new());
    let invalidator = Invalidator {
        ctx,
        inodes,
        open,
        notifier,
        origin,
    };
    let runtime = invalidator.ctx.runtime.clone();
    let stopped = stop.clone();
    let invalidator = std::thread::Builder::new()
        .name("geosync-invalidate".into())
        .spawn(move || runtime.block_on(invalidator.run(notifications, stopped)))
        .map_err(failed)?;
    tracing::info!(
        path = %path.display(),
        read_only = options.read_only,
        allow_other = options.allow_other,
        "mounted"
    );
    Ok(Mounted {
        path,
        session: Some(session),
        connection,
        stop_invalidator: stop,
        invalidator: Some(invalidator),
        passthrough,
    })
}

/// A tag for this mount's own changes, unlikely to collide with another mount's.
fn rand_origin() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

/// Turns namespace notifications into kernel cache invalidations.
struct Invalidator {
    ctx: FsContext,
    inodes: Arc<Inodes>,
    open: Arc<OpenFiles>,
    notifier: Notifier,
    origin: u64,
}

impl Invalidator {
    async fn run(
        self,
        mut rx: tokio::sync::broadcast::Receiver<Notification>,
        stop: Arc<tokio::sync::Notify>,
    ) {
        loop {
            let note = tokio::select! {
                _ = stop.notified() => return,
                note = rx.recv() => note,
            };
            match note {
                Ok(note) if note.origin == self.origin => {}
                Ok(note) => self.invalidate(&note),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "missed change notifications; invalidating everything"
                    );
                    self.invalidate_all();
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn invalidate(&self, note: &Notification) {
        let started = Instant::now();
        match &note.kind {
            NotificationKind::EntryAdded { parent, name }
            | NotificationKind::EntryRemoved { parent, name } => {
                if let Some(parent) = self.inodes.known(*parent) {
                    let _ = self.notifier.inval_entry(
                        INodeNo(parent),
                        std::ffi::OsStr::from_bytes(name.as_bytes()),
                    );
                }
            }
            NotificationKind::Changed => {
                if let Some(ino) = self.inodes.known(note.node) {
                    self.refresh_open(note.node);
                    let _ = self.notifier.inval_inode(INodeNo(ino), 0, 0);
                }
            }
        }
        tracing::trace!(elapsed = ?started.elapsed(), ?note, "invalidated");
    }

    /// Open handles of a node read the new committed content from now on
    /// (unless they are writing their own).
    fn refresh_open(&self, node: geosync_core::model::NodeId) {
        if let Some(state) = self.open.state(node) {
            let content = self
                .ctx
                .engine
                .namespace
                .get(node)
                .ok()
                .and_then(|v| v.meta.content);
            let mut s = lock(&state);
            if !s.dirty() {
                s.content = content;
            }
        }
    }

    fn invalidate_all(&self) {
        for (ino, parent, name) in self.inodes.entries() {
            let _ = self
                .notifier
                .inval_entry(INodeNo(parent), std::ffi::OsStr::from_bytes(&name));
            let _ = self.notifier.inval_inode(INodeNo(ino), 0, 0);
        }
        for (_, node) in self.inodes.known_nodes() {
            self.refresh_open(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(br"/mnt/a\040b"), b"/mnt/a b".to_vec());
        assert_eq!(unescape(br"/plain"), b"/plain".to_vec());
        assert_eq!(unescape(br"/end\04"), br"/end\04".to_vec());
    }

    #[test]
    fn missing_and_non_directory_mount_points_are_refused() {
        let dir = std::env::temp_dir().join(format!("geosync-fs-test-{}", std::process::id()));
        let missing = dir.join("missing");
        match check_mount_point(&missing) {
            Err(MountError::MissingMountPoint(_)) | Err(MountError::NoFuseDevice) => {}
            other => panic!("unexpected {other:?}"),
        }
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        match check_mount_point(&file) {
            Err(MountError::NotADirectory(_)) | Err(MountError::NoFuseDevice) => {}
            other => panic!("unexpected {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
