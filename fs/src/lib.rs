//! The FUSE file system over a geosync region's namespace.
//!
//! [`mount`] serves one region's namespace at a directory so that media
//! servers and ordinary tools use it like a local disk. The adapter is thin:
//! every call maps onto `geosync-core`'s namespace and content store.
//!
//! - **Inodes** ([`inodes`]): 64-bit numbers handed out per mount for 128-bit
//!   node ids.
//! - **Writes** ([`open`]): staged in a file, committed as one new version on
//!   `flush`/`fsync`/`release`; `fsync` returns once the commit is durable.
//! - **Reads**: local content straight from the content store, through FUSE
//!   passthrough when the kernel allows it (Linux ≥ 6.9, `CAP_SYS_ADMIN`);
//!   content the region lacks is fetched chunk by chunk, verified and cached,
//!   with read-ahead for sequential reads.
//! - **Remote changes** reach the kernel: entries and attributes are
//!   invalidated as remote events are applied, so cache lifetimes can be long.
//! - **Replication state** for tools ([`control`]): `user.geosync.*` xattrs and
//!   the read-only `.geosync/` directory.
//!
//! Hard links are refused with `EPERM` (a node has exactly one name); local
//! advisory locks (`flock`, `fcntl`) are handled by the kernel for this host.
#![forbid(unsafe_code)]

pub mod control;
mod errno;
mod filesystem;
pub mod inodes;
mod mount;
mod open;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use geosync_core::Engine;
use geosync_core::node::chunks::Locator;
use geosync_core::node::fetch::ChunkSource;

pub use mount::{MountError, Mounted, mount};

/// Builds the JSON object `.geosync/status.json` shows.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What a mount serves: a region's engine and how to get what it lacks.
#[derive(Clone)]
pub struct FsContext {
    pub engine: Arc<Engine>,
    /// Fetches cold content from other regions.
    pub chunks: Arc<dyn ChunkSource>,
    /// Tells which regions hold content (`user.geosync.locations`); optional.
    pub locator: Option<Arc<dyn Locator>>,
    /// The runtime the chunk source and locator run on.
    pub runtime: tokio::runtime::Handle,
    /// The region's data directory (`statfs` reports its file system).
    pub data_dir: PathBuf,
    pub status: StatusFn,
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let other users (a media server's account) use the mount.
    pub allow_other: bool,
    pub read_only: bool,
    /// How long the kernel may cache entries and attributes; remote changes
    /// invalidate them at once, so this can be long.
    pub ttl: Duration,
    /// Threads serving requests.
    pub threads: usize,
    /// Let the kernel read local content directly where it can.
    pub passthrough: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            read_only: false,
            ttl: Duration::from_secs(60),
            threads: 4,
            passthrough: true,
        }
    }
}

impl FsContext {
    /// The context of a running region: its engine, its cold-content fetcher
    /// and locator, and its sync status for `.geosync/status.json`.
    pub fn for_region(node: &geosync_core::node::RegionNode) -> FsContext {
        use std::sync::atomic::Ordering;
        let engine = node.engine().clone();
        let status = node.status().clone();
        let region = node.region().to_string();
        let status_engine = engine.clone();
        FsContext {
            engine,
            chunks: node.chunks(),
            locator: Some(node.locator()),
            runtime: tokio::runtime::Handle::current(),
            data_dir: node.data_dir().to_path_buf(),
            status: Arc::new(move || {
                let now = geosync_core::clock::system_ms();
                let queue = status_engine.queue.stats(now).ok();
                let conflicts = status_engine.namespace.conflict_count().ok();
                serde_json::json!({
                    "region": region,
                    "ready": status.ready.load(Ordering::Relaxed),
                    "paused": status.paused.load(Ordering::Relaxed),
                    "applied_seq": status.applied.load(Ordering::Relaxed),
                    "events_applied": status.events_applied.load(Ordering::Relaxed),
                    "push_failures": status.push_failures.load(Ordering::Relaxed),
                    "queue": queue.map(|q| serde_json::json!({
                        "pending": q.pending_by_priority.iter().sum::<u64>(),
                        "in_flight": q.inflight,
                        "retrying": q.retrying,
                        "dead": q.dead,
                    })),
                    "open_conflicts": conflicts,
                })
            }),
        }
    }
}
