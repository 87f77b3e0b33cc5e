//! The geosync test harness: an in-process cluster on loopback (a coordinator
//! and regions, each with its own temporary directory and port), deadlines
//! for everything that waits, and tree comparison for convergence checks.
//! Scenario tests live in `tests/tests/`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use geosync_core::clock::RegionId;
use geosync_core::config::{ConflictConfig, RegionConfig, StrategyName, SyncConfig};
use geosync_core::coordinator::CoordinatorSettings;
use geosync_core::coordinator::registry::HealthPolicy;
use geosync_core::coordinator::server::CoordinatorNode;
use geosync_core::model::NodeId;
use geosync_core::namespace::{Namespace, NamespaceConfig, NewNode, NodeView};
use geosync_core::node::{RegionNode, RegionSettings};
use geosync_core::{Engine, EngineConfig};
pub use geosync_fs::{FsContext, MountOptions, Mounted};
use tempfile::TempDir;
use tokio::net::TcpListener;

/// How long a scenario may wait for the cluster to settle.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Polls `condition` until it holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_until`] for async conditions.
pub async fn wait_for<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a region shows, comparable across regions: path -> (kind, content, mode, size, deleted-ness).
pub type Tree = BTreeMap<Vec<u8>, String>;

/// A canonical, printable view of a namespace's tree.
pub fn tree(ns: &Namespace) -> Tree {
    ns.tree()
        .unwrap_or_default()
        .into_iter()
        .map(|(path, v): (Vec<u8>, NodeView)| {
            let content = v.meta.content.map(|c| c.id.short()).unwrap_or_default();
            (
                path,
                format!(
                    "{:?} {content} {:o} {}",
                    v.meta.kind, v.meta.mode, v.meta.size
                ),
            )
        })
        .collect()
}

/// Writes a file (creating it if needed) through a namespace, like the FUSE layer will.
pub fn put(engine: &Engine, parent: NodeId, name: &str, data: &[u8]) -> NodeId {
    let content = engine.content.put_bytes(data).expect("put bytes");
    let ns = &engine.namespace;
    let id = match ns.lookup(parent, name.as_bytes()) {
        Ok(v) => v.id,
        Err(_) => {
            ns.create(parent, name.as_bytes(), NewNode::file(0o644))
                .expect("create")
                .id
        }
    };
    ns.write_content(id, content, 1).expect("write");
    id
}

/// A coordinator and regions on loopback, each in a temporary directory.
pub struct Cluster {
    pub root: TempDir,
    pub coordinator: Option<CoordinatorNode>,
    pub coordinator_addr: std::net::SocketAddr,
    /// The coordinator's HTTP address (kept across coordinator restarts).
    pub coordinator_http_addr: std::net::SocketAddr,
    pub regions: BTreeMap<String, RegionNode>,
    pub conflicts: ConflictConfig,
    /// The chunk size every region uses (small, so tests span many chunks).
    pub chunk_size: u32,
    /// The content sync strategies regions started from now on use.
    pub sync: SyncConfig,
    /// The content cache budget of regions started from now on (None: the default).
    pub cache_budget: Option<u64>,
}

impl Cluster {
    /// Starts a coordinator and the named regions, all with one conflict strategy.
    pub async fn start(regions: &[&str], strategy: StrategyName) -> Cluster {
        let conflicts = ConflictConfig {
            default: strategy,
            primary: None,
            rules: Vec::new(),
        };
        Self::start_with(regions, conflicts).await
    }

    /// Starts a coordinator and the named regions with a conflict configuration.
    pub async fn start_with(regions: &[&str], conflicts: ConflictConfig) -> Cluster {
        let root = tempfile::tempdir().expect("temporary directory");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind coordinator");
        let coordinator_addr = listener.local_addr().expect("coordinator address");
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind coordinator HTTP");
        let coordinator_http_addr = http.local_addr().expect("coordinator HTTP address");
        let mut cluster = Cluster {
            root,
            coordinator: None,
            coordinator_addr,
            coordinator_http_addr,
            regions: BTreeMap::new(),
            conflicts,
            chunk_size: 64 * 1024,
            sync: SyncConfig::default(),
            cache_budget: None,
        };
        cluster.start_coordinator_on(listener, http).await;
        for r in regions {
            cluster.start_region(r).await;
        }
        cluster
    }

    fn coordinator_dir(&self) -> PathBuf {
        self.root.path().join("coordinator")
    }

    fn settings(&self) -> CoordinatorSettings {
        CoordinatorSettings {
            policy: self.conflicts.policy(),
            health: HealthPolicy::default(),
            heartbeat_interval: Duration::from_millis(200),
            ..CoordinatorSettings::default()
        }
    }

    async fn start_coordinator_on(&mut self, listener: TcpListener, http: TcpListener) {
        let node = CoordinatorNode::start(
            &self.coordinator_dir(),
            self.settings(),
            listener,
            Some(http),
        )
        .await
        .expect("start coordinator");
        self.coordinator = Some(node);
    }

    /// Restarts the coordinator on the same port (optionally with its data wiped).
    pub async fn restart_coordinator(&mut self, wipe: bool) {
        if let Some(node) = self.coordinator.take() {
            node.shutdown().await;
        }
        if wipe {
            std::fs::remove_dir_all(self.coordinator_dir()).expect("wipe coordinator data");
        }
        let listener = bind_retrying(self.coordinator_addr).await;
        let http = bind_retrying(self.coordinator_http_addr).await;
        self.start_coordinator_on(listener, http).await;
    }

    /// Stops the coordinator (regions keep running, queueing their writes).
    pub async fn stop_coordinator(&mut self) {
        if let Some(node) = self.coordinator.take() {
            node.shutdown().await;
        }
    }

    pub fn region_dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// The configuration a region of this cluster runs with.
    pub fn region_config(&self, name: &str) -> RegionConfig {
        let id = RegionId::new(name).expect("region id");
        let mut config = RegionConfig::new(id);
        config.data_dir = self.region_dir(name);
        config.coordinator = vec![format!("http://{}", self.coordinator_addr)];
        config.listen = "127.0.0.1:0".parse().expect("address");
        config.http_listen = Some("127.0.0.1:0".parse().expect("address"));
        config.conflicts = self.conflicts.clone();
        config.sync = self.sync.clone();
        if let Some(budget) = self.cache_budget {
            config.cache_budget = geosync_core::config::ByteSize(budget);
        }
        config
    }

    /// Starts (or restarts) a region with its data kept.
    pub async fn start_region(&mut self, name: &str) {
        self.start_region_with(name, |_| {}).await;
    }

    /// [`Cluster::start_region`] after `edit` adjusted the region's configuration (STRM jobs,
    /// a mount, ...).
    pub async fn start_region_with(&mut self, name: &str, edit: impl FnOnce(&mut RegionConfig)) {
        let mut config = self.region_config(name);
        edit(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind region");
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind region HTTP");
        let mut settings = RegionSettings::new(config);
        settings.chunk_size = self.chunk_size;
        settings.eviction_interval = Duration::from_millis(200);
        let node = RegionNode::start(settings, listener, Some(http))
            .await
            .expect("start region");
        self.regions.insert(name.to_owned(), node);
    }

    /// Opens a stopped region's state directly and runs `f` on it: a region
    /// that keeps working while cut off (its changes wait in its own queue).
    pub fn offline<T>(&self, name: &str, f: impl FnOnce(&Engine) -> T) -> T {
        assert!(!self.regions.contains_key(name), "region {name} is running");
        let config = self.region_config(name);
        let mut ns = NamespaceConfig::new(config.region.clone());
        ns.policy = config.conflicts.policy();
        let mut engine_config = EngineConfig::new(ns);
        engine_config.content.chunk_size = self.chunk_size;
        let engine = Engine::open(&config.data_dir, engine_config).expect("open offline region");
        let out = f(&engine);
        engine.namespace.sync().expect("sync offline region");
        out
    }

    /// Stops a region (its data stays for a restart).
    pub async fn stop_region(&mut self, name: &str) {
        if let Some(node) = self.regions.remove(name) {
            node.shutdown().await.expect("region shutdown");
        }
    }

    pub fn region(&self, name: &str) -> &RegionNode {
        &self.regions[name]
    }

    /// A running region's HTTP address.
    pub fn region_http_addr(&self, name: &str) -> std::net::SocketAddr {
        self.regions[name]
            .http_addr()
            .expect("the harness starts regions with HTTP")
    }

    pub fn ns(&self, name: &str) -> &Namespace {
        &self.regions[name].engine().namespace
    }

    /// Waits until every running region is ready, has applied the whole log,
    /// has nothing left to push, and all show the same tree. Returns the tree.
    pub async fn converged(&self) -> Result<Tree, String> {
        let ok = wait_for(SETTLE, || async {
            let Some(c) = &self.coordinator else {
                return false;
            };
            let head = c.coordinator().head();
            let settled = self.regions.values().all(|r| {
                r.status().ready.load(Ordering::SeqCst)
                    && r.status().applied.load(Ordering::SeqCst) >= head
                    && r.engine().queue.is_empty().unwrap_or(false)
            });
            settled && c.coordinator().head() == head && {
                let trees: Vec<Tree> = self
                    .regions
                    .values()
                    .map(|r| tree(&r.engine().namespace))
                    .collect();
                trees.windows(2).all(|w| w[0] == w[1])
            }
        })
        .await;
        let trees: BTreeMap<&String, Tree> = self
            .regions
            .iter()
            .map(|(n, r)| (n, tree(&r.engine().namespace)))
            .collect();
        if ok {
            Ok(trees.into_values().next().unwrap_or_default())
        } else {
            Err(format!("no convergence within {SETTLE:?}: {trees:#?}"))
        }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// Starts regions eu and us with `conflicts`, writes `/name` as `base`
    /// everywhere, then writes it concurrently: `eu_text` in eu, and `us_text`
    /// in us while us is disconnected (so later in time). Returns when us is
    /// running again, before convergence.
    pub async fn concurrent_writes(
        conflicts: ConflictConfig,
        name: &str,
        base: &[u8],
        eu_text: &[u8],
        us_text: &[u8],
    ) -> Cluster {
        let mut cluster = Cluster::start_with(&["eu", "us"], conflicts).await;
        let eu = cluster.region("eu").engine().clone();
        put(&eu, NodeId::ROOT, name, base);
        cluster.converged().await.expect("first sync");
        cluster.stop_region("us").await;
        put(&eu, NodeId::ROOT, name, eu_text);
        cluster.offline("us", |offline| put(offline, NodeId::ROOT, name, us_text));
        cluster.start_region("us").await;
        cluster
    }

    /// Mounts a running region with FUSE at `<root>/mnt/<name>`. The mount is
    /// unmounted when the returned guard drops (also when a test panics): keep
    /// it declared after the cluster so it drops first. Call from a
    /// multi-threaded runtime: cold reads run on it while the test blocks.
    pub fn mount(&self, name: &str, options: MountOptions) -> Mounted {
        let dir = self.root.path().join("mnt").join(name);
        std::fs::create_dir_all(&dir).expect("create the mount point");
        let ctx = FsContext::for_region(self.region(name));
        geosync_fs::mount(ctx, &dir, &options).expect("mount")
    }

    /// Stops everything, regions first.
    pub async fn shutdown(mut self) {
        let names: Vec<String> = self.regions.keys().cloned().collect();
        for n in names {
            self.stop_region(&n).await;
        }
        self.stop_coordinator().await;
    }
}

/// Binds an address that was just released (the port may linger briefly).
async fn bind_retrying(addr: std::net::SocketAddr) -> TcpListener {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < end => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}

/// How long [`http_request`] waits for a whole answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` on `addr` over HTTP/1.1: the status and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// A bodiless HTTP/1.1 request (one connection, `Connection: close`): the
/// status and the body (de-chunked when the server chunked it). Panics on a
/// transport failure or a malformed answer.
pub async fn http_request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} on {addr}: no answer within {HTTP_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no end of headers in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).unwrap_or_else(|| panic!("{method} {path}: bad chunked body"))
    } else {
        body.to_vec()
    };
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}
