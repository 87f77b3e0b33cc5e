//! The region runtime: registration and heartbeats, the push loop, the
//! subscribe-apply-ack loop, and the services a region offers (chunks, files).
//!
//! **Reconnect flow.** On every (re)connection the sync loop asks the
//! coordinator for its epoch. Same epoch as the one stored with the region's
//! last applied sequence: subscribe from that sequence. Another epoch (the
//! coordinator's log was recreated): apply a snapshot of the coordinator's
//! state, push the region's own full state back (the new log lost it), and
//! subscribe from the snapshot's head. The push loop starts only once the
//! region has caught up after connecting, so offline writes are pushed after
//! the remote changes they may conflict with were applied.
//!
//! **Gaps.** Events arrive with contiguous sequences; one with
//! `seq > applied + 1` means something was lost on the way: the loop drops the
//! stream and resubscribes from `applied`. Events at or below `applied` are
//! duplicates and skipped. The applied sequence is stored in the same
//! transaction as the events it covers, so a crash never skips or repeats
//! beyond what idempotent apply absorbs.

pub mod admin;
pub mod chunks;
pub mod fetch;
pub mod files;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use geosync_proto::v1;
use geosync_proto::v1::coordinator_client::CoordinatorClient;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

use crate::clock::{self, RegionId};
use crate::config::{RegionConfig, SyncStrategy};
use crate::model::ChangeEvent;
use crate::namespace::NamespaceConfig;
use crate::queue::QueueConfig;
use crate::store::content::{ContentConfig, ContentRef};
use crate::store::{KV, kv_get};
use crate::{Engine, EngineConfig, Error, Result};

use chunks::{ChunkService, CoordinatorLocator, Locator, RemoteChunks};
use fetch::ChunkSource;
use files::FilesService;

const KV_APPLIED: &str = "region/applied_seq";
const KV_EPOCH: &str = "region/epoch";

/// Events applied per transaction while catching up.
const APPLY_BATCH: usize = 512;

/// How long the sync loop gathers arriving events into one transaction.
const APPLY_WINDOW: Duration = Duration::from_millis(2);

/// Nodes per page when pushing the whole state to a new log.
const REPUSH_PAGE: usize = 256;

/// Content transfers a region runs at once for eager/lazy replication.
const CONTENT_TRANSFERS: usize = 4;

/// How often the content cache is brought back under its budget.
const EVICTION_INTERVAL: Duration = Duration::from_secs(10);

/// Backoff between reconnection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How long a connection attempt to the coordinator may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How a region runs: its configuration plus knobs tests use.
#[derive(Clone, Debug)]
pub struct RegionSettings {
    pub config: RegionConfig,
    /// Content chunk size (cluster-wide; part of content ids).
    pub chunk_size: u32,
    /// How often cached content is evicted down to the budget.
    pub eviction_interval: Duration,
}

impl RegionSettings {
    pub fn new(config: RegionConfig) -> Self {
        RegionSettings {
            config,
            chunk_size: crate::store::content::DEFAULT_CHUNK_SIZE,
            eviction_interval: EVICTION_INTERVAL,
        }
    }
}

/// Live state other tasks (heartbeat, HTTP, tests) read.
#[derive(Debug, Default)]
pub struct RegionStatus {
    /// The last sequence applied from the log.
    pub applied: AtomicU64,
    /// Connected to a coordinator and caught up once since connecting.
    pub ready: AtomicBool,
    /// Drop the next event received (a lost event, for gap tests).
    pub drop_next_event: AtomicBool,
    /// Events applied from the log so far.
    pub events_applied: AtomicU64,
    /// Pushes that failed.
    pub push_failures: AtomicU64,
    /// Full resyncs from a snapshot done since start.
    pub resyncs: AtomicU64,
    /// An operator paused this region: pushes wait (so queued changes do not
    /// spend their attempts and turn into dead letters) until it is resumed.
    pub paused: AtomicBool,
}

/// The coordinators to talk to, in failover order.
#[derive(Clone)]
struct Coordinators {
    channels: Arc<Vec<(String, Channel)>>,
    current: Arc<AtomicU64>,
}

impl Coordinators {
    fn new(urls: &[String]) -> Result<Coordinators> {
        let mut channels = Vec::with_capacity(urls.len());
        for url in urls {
            let endpoint = crate::rpc::endpoint(url)
                .map_err(|e| Error::Unreachable(format!("coordinator URL {url}: {e}")))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true);
            channels.push((url.clone(), endpoint.connect_lazy()));
        }
        if channels.is_empty() {
            return Err(Error::Unreachable("no coordinator URL configured".into()));
        }
        Ok(Coordinators {
            channels: Arc::new(channels),
            current: Arc::new(AtomicU64::new(0)),
        })
    }

    fn channel(&self) -> Channel {
        let i = self.current.load(Ordering::Relaxed) as usize % self.channels.len();
        self.channels[i].1.clone()
    }

    fn client(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::new(self.channel())
            .max_decoding_message_size(crate::rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::rpc::MAX_MESSAGE_BYTES)
    }

    /// Moves to the next coordinator after a connection failure.
    fn failover(&self) {
        if self.channels.len() > 1 {
            let next = self.current.fetch_add(1, Ordering::Relaxed) + 1;
            let url = &self.channels[next as usize % self.channels.len()].0;
            tracing::warn!(%url, "failing over to the next coordinator");
        }
    }
}

/// Whether a status means the coordinator could not be reached at all.
fn unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
    )
}

/// A running region (see the module docs).
pub struct RegionNode {
    engine: Arc<Engine>,
    region: RegionId,
    data_dir: std::path::PathBuf,
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    status: Arc<RegionStatus>,
    chunks: Arc<dyn ChunkSource>,
    locator: Arc<dyn Locator>,
    strm: crate::strm::Strm,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RegionNode {
    /// Opens the region's state and starts its server and loops. The gRPC
    /// server (chunks and files) serves on `listener`, HTTP ([`crate::http`])
    /// on `http` when given (and the region registers that address).
    pub async fn start(
        settings: RegionSettings,
        listener: TcpListener,
        http: Option<TcpListener>,
    ) -> Result<RegionNode> {
        let mut config = settings.config.clone();
        let grpc_addr = listener
            .local_addr()
            .map_err(|e| Error::io("local address", "listener", e))?;
        let http_addr = http
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|e| Error::io("local address", "HTTP listener", e))?;
        if http_addr.is_some() {
            config.http_listen = http_addr;
        }
        let mut ns = NamespaceConfig::new(config.region.clone());
        ns.policy = config.conflicts.policy();
        ns.max_drift = Duration::from_millis(config.max_clock_drift_ms);
        let engine_config = EngineConfig {
            namespace: ns,
            queue: QueueConfig::default(),
            content: ContentConfig {
                chunk_size: settings.chunk_size,
                cache_budget_bytes: config.cache_budget.bytes(),
            },
            meta_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
        };
        let data_dir = config.data_dir.clone();
        let engine = tokio::task::spawn_blocking(move || Engine::open(&data_dir, engine_config))
            .await
            .map_err(|e| Error::Unreachable(format!("opening the engine: {e}")))??;
        let engine = Arc::new(engine);
        let coordinators = Coordinators::new(&config.coordinator)?;
        let status = Arc::new(RegionStatus::default());
        status
            .applied
            .store(read_u64(&engine, KV_APPLIED)?, Ordering::SeqCst);
        let shutdown = CancellationToken::new();

        let locator: Arc<dyn Locator> = Arc::new(CoordinatorLocator::new(coordinators.channel()));
        let chunk_source: Arc<dyn ChunkSource> = Arc::new(RemoteChunks::new(
            engine.content.clone(),
            config.region.clone(),
            locator.clone(),
        ));
        let mut tasks = Vec::new();

        // The region's own gRPC server: chunks for other regions, files for clients.
        let server = crate::rpc::server()
            .add_service(
                admin::RegionAdmin::new(engine.clone(), config.region.clone()).into_server(),
            )
            .add_service(ChunkService::new(engine.content.clone()).into_server())
            .add_service(FilesService::new(engine.clone(), chunk_source.clone()).into_server());
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let incoming = crate::rpc::incoming(listener);
            if let Err(e) = server
                .serve_with_incoming_shutdown(incoming, stop.cancelled())
                .await
            {
                tracing::error!(error = %e, "region gRPC server failed");
            }
        }));
        let strm = crate::strm::Strm::open(
            engine.clone(),
            config.strm.clone(),
            format!("http://{}", config.http_addr()),
            config.mount.clone(),
            chunk_source.clone(),
        )?;
        tasks.extend(strm.start(shutdown.clone()));
        if let Some(listener) = http {
            let state = crate::http::RegionHttp {
                engine: engine.clone(),
                region: config.region.clone(),
                status: status.clone(),
                strm: strm.clone(),
                chunks: chunk_source.clone(),
            };
            tasks.push(tokio::spawn(crate::http::serve_region(
                state,
                listener,
                shutdown.clone(),
            )));
        }

        let (welcome_tx, welcome_rx) = watch::channel(None::<Welcome>);
        let (fetch_tx, fetch_rx) = mpsc::unbounded_channel();
        let runtime = Runtime {
            engine: engine.clone(),
            region: config.region.clone(),
            config: config.clone(),
            grpc_endpoint: format!("http://{grpc_addr}"),
            coordinators,
            status: status.clone(),
            shutdown: shutdown.clone(),
            fetch_tx,
            eviction_interval: settings.eviction_interval,
        };
        tasks.push(tokio::spawn(
            runtime.clone().content_loop(fetch_rx, chunk_source.clone()),
        ));
        tasks.push(tokio::spawn(runtime.clone().eviction_loop()));
        tasks.push(tokio::spawn(runtime.clone().heartbeat_loop(welcome_tx)));
        tasks.push(tokio::spawn(runtime.clone().sync_loop(welcome_rx.clone())));
        tasks.push(tokio::spawn(runtime.push_loop()));
        tracing::info!(region = %config.region, %grpc_addr, ?http_addr, "region started");
        Ok(RegionNode {
            engine,
            data_dir: config.data_dir.clone(),
            region: config.region,
            grpc_addr,
            http_addr,
            status,
            chunks: chunk_source,
            locator,
            strm,
            shutdown,
            tasks,
        })
    }

    /// Fetches content this region lacks from the regions that hold it (for the
    /// file system's cold reads).
    pub fn chunks(&self) -> Arc<dyn ChunkSource> {
        self.chunks.clone()
    }

    /// Tells which regions hold a content version.
    pub fn locator(&self) -> Arc<dyn Locator> {
        self.locator.clone()
    }

    /// The region's STRM engine.
    pub fn strm(&self) -> &crate::strm::Strm {
        &self.strm
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// Where the region keeps its state.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where HTTP is served, when it is.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The coordinator log epoch this region follows (see [`followed_epoch`]).
    pub fn followed_epoch(&self) -> Result<Option<String>> {
        followed_epoch(&self.engine)
    }

    pub fn status(&self) -> &Arc<RegionStatus> {
        &self.status
    }

    /// Stops the loops and the server, then flushes everything to disk.
    pub async fn shutdown(mut self) -> Result<()> {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.namespace.sync())
            .await
            .map_err(|e| Error::Unreachable(format!("final sync: {e}")))?
    }
}

impl Drop for RegionNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What the coordinator said at registration or the last heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Welcome {
    epoch: String,
    resync: bool,
}

/// The coordinator log epoch a region's applied sequence belongs to, as stored
/// with it; `None` before the region first synced. Reads the store (blocking).
pub fn followed_epoch(engine: &Engine) -> Result<Option<String>> {
    Ok(kv_get(&engine.db, KV_EPOCH)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Records, inside `txn`, the log (epoch) and the sequence applied from it.
fn write_position(txn: &redb::WriteTransaction, epoch: &str, applied: u64) -> Result<()> {
    let mut kv = txn.open_table(KV)?;
    kv.insert(KV_APPLIED, applied.to_be_bytes().as_slice())?;
    kv.insert(KV_EPOCH, epoch.as_bytes())?;
    Ok(())
}

fn read_u64(engine: &Engine, key: &str) -> Result<u64> {
    Ok(kv_get(&engine.db, key)?
        .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// The loops' shared handles.
#[derive(Clone)]
struct Runtime {
    engine: Arc<Engine>,
    region: RegionId,
    config: RegionConfig,
    grpc_endpoint: String,
    coordinators: Coordinators,
    status: Arc<RegionStatus>,
    shutdown: CancellationToken,
    /// Content to replicate in the background (eager first, then lazy).
    fetch_tx: mpsc::UnboundedSender<(SyncStrategy, ContentRef)>,
    eviction_interval: Duration,
}

impl Runtime {
    /// Sleeps, or returns false when the region shuts down first.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| Error::Unreachable(format!("region task failed: {e}")))?
    }

    /// Registers, then heartbeats; re-registers after any failure. Publishes
    /// what the coordinator says to the other loops.
    async fn heartbeat_loop(self, welcome_tx: watch::Sender<Option<Welcome>>) {
        let mut backoff = RECONNECT_MIN;
        'connect: loop {
            let request = v1::RegisterRequest {
                region: self.region.to_string(),
                grpc_endpoint: self.grpc_endpoint.clone(),
                http_endpoint: format!("http://{}", self.config.http_addr()),
                software_version: env!("CARGO_PKG_VERSION").into(),
            };
            let mut client = self.coordinators.client();
            let reply = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = client.register(request) => r,
            };
            let (epoch, interval) = match reply {
                Ok(r) => {
                    let r = r.into_inner();
                    backoff = RECONNECT_MIN;
                    (
                        r.epoch,
                        Duration::from_millis(r.heartbeat_interval_ms.max(100)),
                    )
                }
                Err(status) => {
                    tracing::warn!(region = %self.region, error = %status.message(), "register failed");
                    if unreachable(&status) {
                        self.coordinators.failover();
                    }
                    if !self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    continue 'connect;
                }
            };
            welcome_tx.send_replace(Some(Welcome {
                epoch,
                resync: false,
            }));
            loop {
                let stats = match self.blocking(|e| e.queue.stats(clock::system_ms())).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "queue stats");
                        Default::default()
                    }
                };
                let request = v1::HeartbeatRequest {
                    region: self.region.to_string(),
                    wall_ms: clock::system_ms(),
                    applied_seq: self.status.applied.load(Ordering::SeqCst),
                    queue: Some(v1::QueueStats::from(&stats)),
                };
                let mut client = self.coordinators.client();
                let reply = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    r = client.heartbeat(request) => r,
                };
                match reply {
                    Ok(r) => {
                        let r = r.into_inner();
                        self.status.paused.store(r.paused, Ordering::SeqCst);
                        let welcome = Welcome {
                            epoch: r.epoch,
                            resync: r.resync,
                        };
                        welcome_tx.send_if_modified(|w| {
                            let changed = w.as_ref() != Some(&welcome);
                            *w = Some(welcome);
                            changed
                        });
                    }
                    Err(status) => {
                        tracing::warn!(region = %self.region, error = %status.message(), "heartbeat failed");
                        if unreachable(&status) {
                            self.coordinators.failover();
                        }
                        welcome_tx.send_replace(None);
                        continue 'connect;
                    }
                }
                if !self.pause(interval).await {
                    return;
                }
            }
        }
    }

    /// Keeps the region applying the log (see the module docs).
    async fn sync_loop(self, mut welcome_rx: watch::Receiver<Option<Welcome>>) {
        let mut backoff = RECONNECT_MIN;
        loop {
            // Wait until registered.
            let welcome = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                w = welcome_rx.wait_for(|w| w.is_some()) => match w {
                    Ok(w) => w.clone(),
                    Err(_) => return,
                },
            };
            let Some(welcome) = welcome else { continue };
            self.status.ready.store(false, Ordering::SeqCst);
            let result = self.sync_once(&welcome, &mut welcome_rx).await;
            self.status.ready.store(false, Ordering::SeqCst);
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(region = %self.region, error = %e, "sync stream ended; reconnecting");
                    if !self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    }

    /// One connection's worth of syncing: catch up, then follow the stream.
    /// Returns `Ok` only on shutdown.
    async fn sync_once(
        &self,
        welcome: &Welcome,
        welcome_rx: &mut watch::Receiver<Option<Welcome>>,
    ) -> Result<()> {
        let stored_epoch =
            kv_get(&self.engine.db, KV_EPOCH)?.map(|b| String::from_utf8_lossy(&b).into_owned());
        let status = self
            .coordinators
            .client()
            .get_sync_status(v1::SyncStatusRequest {
                region: self.region.to_string(),
            })
            .await
            .map_err(|s| Error::Unreachable(s.message().to_owned()))?
            .into_inner();
        let new_epoch = stored_epoch.as_deref() != Some(status.epoch.as_str());
        if welcome.resync || (new_epoch && stored_epoch.is_some()) {
            self.resync(&status.epoch).await?;
        } else if new_epoch {
            self.store_position(&status.epoch, self.status.applied.load(Ordering::SeqCst))
                .await?;
        }
        let epoch = status.epoch;
        let after = self.status.applied.load(Ordering::SeqCst);
        let request = v1::SubscribeRequest {
            region: self.region.to_string(),
            after_seq: after,
            epoch: epoch.clone(),
        };
        let stream = match self.coordinators.client().subscribe(request).await {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == Code::FailedPrecondition || s.code() == Code::OutOfRange => {
                // The log is not the one our sequence belongs to.
                self.resync(&epoch).await?;
                return Err(Error::Unreachable(format!(
                    "resynced after: {}",
                    s.message()
                )));
            }
            Err(s) => return Err(Error::Unreachable(s.message().to_owned())),
        };
        if self.status.applied.load(Ordering::SeqCst) >= status.head {
            self.status.ready.store(true, Ordering::SeqCst);
        }
        let mut head = status.head;
        // Whatever arrived within the window is applied as one transaction.
        let mut chunks = Box::pin(stream.chunks_timeout(APPLY_BATCH, APPLY_WINDOW));
        loop {
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                changed = welcome_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let w = welcome_rx.borrow().clone();
                    match w {
                        Some(w) if w.epoch == epoch && !w.resync => continue,
                        _ => return Err(Error::Unreachable("coordinator changed; reconnecting".into())),
                    }
                }
                next = chunks.next() => next,
            };
            let Some(received) = next else {
                return Err(Error::Unreachable(
                    "subscription closed by the coordinator".into(),
                ));
            };
            let mut batch: Vec<ChangeEvent> = Vec::with_capacity(received.len());
            let mut stop = None;
            for item in received {
                let event = match item {
                    Ok(event) => event,
                    Err(s) => {
                        stop = Some(Error::Unreachable(s.message().to_owned()));
                        break;
                    }
                };
                if self.status.drop_next_event.swap(false, Ordering::SeqCst) {
                    tracing::warn!(seq = ?event.seq, "dropping an event (test fault)");
                    continue;
                }
                let event = ChangeEvent::try_from(event)?;
                let seq = event.seq.unwrap_or(0);
                let expected = self.status.applied.load(Ordering::SeqCst) + batch.len() as u64 + 1;
                if seq < expected {
                    continue; // delivered twice
                }
                if seq > expected {
                    stop = Some(Error::Unreachable(format!(
                        "gap in the change stream: got sequence {seq}, expected {expected}; resubscribing"
                    )));
                    break;
                }
                head = head.max(seq);
                batch.push(event);
            }
            self.apply(&epoch, batch).await?;
            if let Some(e) = stop {
                return Err(e);
            }
            if self.status.applied.load(Ordering::SeqCst) >= head {
                self.status.ready.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Applies a contiguous batch and stores the applied sequence with it, then acks.
    async fn apply(&self, epoch: &str, batch: Vec<ChangeEvent>) -> Result<()> {
        let Some(last) = batch.last().and_then(|e| e.seq) else {
            return Ok(());
        };
        let count = batch.len() as u64;
        let epoch_owned = epoch.to_owned();
        let sync = self.config.sync.clone();
        let fetch = self.blocking(move |engine| {
            let (outcomes, ()) = engine
                .namespace
                .apply_remote_batch_with(&batch, |txn, _| write_position(txn, &epoch_owned, last))?;
            let mut fetch = Vec::new();
            for (event, outcome) in batch.iter().zip(outcomes) {
                if let Err(e) = outcome {
                    // A bad event in the log is skipped, never fatal: the others must land.
                    tracing::error!(seq = ?event.seq, error = %e, "refused an event from the log");
                    continue;
                }
                let meta = &event.version.meta;
                let Some(content) = meta.content.filter(|_| !meta.deleted) else { continue };
                if event.origin == *engine.namespace.region() || engine.content.is_complete(&content.id)? {
                    continue;
                }
                // The node's path decides: eager and lazy replicate now, on-demand at first read.
                let Ok(path) = engine.namespace.path_of(event.node) else { continue };
                let strategy = sync.strategy_for(&path);
                if strategy != SyncStrategy::OnDemand {
                    fetch.push((strategy, content));
                }
            }
            Ok(fetch)
        })
        .await?;
        for item in fetch {
            // The receiver lives as long as the region: a send only fails at shutdown.
            let _ = self.fetch_tx.send(item);
        }
        self.status.applied.store(last, Ordering::SeqCst);
        self.status
            .events_applied
            .fetch_add(count, Ordering::Relaxed);
        let ack = v1::AckRequest {
            region: self.region.to_string(),
            seq: last,
        };
        if let Err(s) = self.coordinators.client().ack(ack).await {
            tracing::debug!(error = %s.message(), "ack failed; the next one covers it");
        }
        Ok(())
    }

    async fn store_position(&self, epoch: &str, applied: u64) -> Result<()> {
        let epoch = epoch.to_owned();
        self.blocking(move |engine| {
            let txn = engine.db.begin_write()?;
            write_position(&txn, &epoch, applied)?;
            txn.commit()?;
            Ok(())
        })
        .await?;
        self.status.applied.store(applied, Ordering::SeqCst);
        Ok(())
    }

    /// Full resync: apply the coordinator's snapshot, give the new log our
    /// whole state, and continue from the snapshot's head.
    async fn resync(&self, epoch: &str) -> Result<()> {
        tracing::warn!(region = %self.region, %epoch, "full resync from a snapshot");
        let mut stream = self
            .coordinators
            .client()
            .snapshot(v1::SnapshotRequest {
                region: self.region.to_string(),
            })
            .await
            .map_err(|s| Error::Unreachable(s.message().to_owned()))?
            .into_inner();
        let mut head = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| Error::Unreachable(s.message().to_owned()))?;
            head = chunk.head_at_snapshot;
            let events = chunk
                .events
                .into_iter()
                .map(ChangeEvent::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            self.blocking(move |engine| engine.namespace.apply_remote_batch(&events).map(|_| ()))
                .await?;
        }
        self.repush_state().await?;
        self.store_position(epoch, head).await?;
        self.status.resyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Pushes every local node's versions (the coordinator drops what it has).
    async fn repush_state(&self) -> Result<()> {
        let mut after = None;
        loop {
            let page = self
                .blocking(move |engine| engine.namespace.snapshot(after, REPUSH_PAGE))
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(*last);
            let events: Vec<v1::ChangeEvent> = page
                .into_iter()
                .flat_map(|(node, heads)| {
                    heads
                        .into_iter()
                        .filter(|v| v.write.stamp.region == self.region)
                        .map(move |version| {
                            v1::ChangeEvent::from(&ChangeEvent {
                                node,
                                op: crate::model::ChangeOp::Update,
                                origin: version.write.stamp.region.clone(),
                                version,
                                seq: None,
                            })
                        })
                })
                .collect();
            if events.is_empty() {
                continue;
            }
            self.coordinators
                .client()
                .push(v1::PushRequest {
                    region: self.region.to_string(),
                    events,
                })
                .await
                .map_err(|s| Error::Unreachable(s.message().to_owned()))?;
        }
    }

    /// Replicates content in the background: eager content first, then lazy,
    /// a few transfers at a time. A failed transfer is left for the first read.
    async fn content_loop(
        self,
        mut fetch_rx: mpsc::UnboundedReceiver<(SyncStrategy, ContentRef)>,
        chunks: Arc<dyn ChunkSource>,
    ) {
        let permits = Arc::new(Semaphore::new(CONTENT_TRANSFERS));
        let mut lazy: std::collections::VecDeque<ContentRef> = Default::default();
        loop {
            // Eager items are taken as they come; lazy ones wait their turn.
            let next = if lazy.is_empty() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    item = fetch_rx.recv() => item,
                }
            } else {
                match fetch_rx.try_recv() {
                    Ok(item) => Some(item),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        lazy.pop_front().map(|c| (SyncStrategy::Eager, c))
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            };
            let Some((strategy, content)) = next else {
                return;
            };
            if strategy == SyncStrategy::Lazy {
                lazy.push_back(content);
                continue;
            }
            let permit = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let chunks = chunks.clone();
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    r = chunks.ensure(content, 0..content.size) => if let Err(e) = r {
                        tracing::warn!(content = %content.id.short(), error = %e, "background replication failed; the first read retries");
                    },
                }
            });
        }
    }

    /// Keeps cached content under the budget: evicts, least recently used
    /// first, content that another region holds and nothing pins or reads.
    async fn eviction_loop(self) {
        loop {
            if !self.pause(self.eviction_interval).await {
                return;
            }
            match self.blocking(|e| e.content.evict_to_budget()).await {
                Ok(report) if !report.evicted.is_empty() => tracing::info!(
                    evicted = report.evicted.len(),
                    freed = report.freed_bytes,
                    usage = report.usage_bytes,
                    "evicted cached content"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "eviction failed"),
            }
        }
    }

    /// Drains the sync queue to the coordinator in batches, once caught up.
    async fn push_loop(self) {
        let batch_size = self.config.push_batch.max(1);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            if !self.status.ready.load(Ordering::SeqCst)
                || self.status.paused.load(Ordering::SeqCst)
            {
                if !self.pause(Duration::from_millis(20)).await {
                    return;
                }
                continue;
            }
            let items = match self
                .blocking(move |e| e.queue.take(batch_size, clock::system_ms()))
                .await
            {
                Ok(items) => items,
                Err(e) => {
                    tracing::error!(error = %e, "taking from the sync queue");
                    if !self.pause(RECONNECT_MAX).await {
                        return;
                    }
                    continue;
                }
            };
            if items.is_empty() {
                let next_due = self
                    .blocking(|e| e.queue.next_due_ms())
                    .await
                    .ok()
                    .flatten();
                let wait = next_due
                    .map(|due| Duration::from_millis(due.saturating_sub(clock::system_ms())))
                    .unwrap_or(RECONNECT_MAX)
                    .clamp(Duration::from_millis(1), RECONNECT_MAX);
                let queue = self.engine.queue.clone();
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = queue.wait_for_work() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            self.push_items(items).await;
        }
    }

    async fn push_items(&self, items: Vec<crate::queue::QueueItem>) {
        let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
        let mut events = Vec::with_capacity(items.len());
        let mut undecodable = Vec::new();
        for item in &items {
            match ChangeEvent::decode(&item.payload) {
                Ok(e) => events.push((item.id, v1::ChangeEvent::from(&e))),
                Err(e) => undecodable.push((item.id, e.to_string())),
            }
        }
        let request = v1::PushRequest {
            region: self.region.to_string(),
            events: events.iter().map(|(_, e)| e.clone()).collect(),
        };
        let mut client = self.coordinators.client();
        let reply = tokio::select! {
            _ = self.shutdown.cancelled() => {
                // In flight items return to pending on the next start.
                return;
            }
            r = client.push(request) => r,
        };
        let now = clock::system_ms();
        match reply {
            Ok(reply) => {
                let outcomes = reply.into_inner().outcomes;
                let mut done = Vec::new();
                let mut failed = undecodable;
                for ((id, _), outcome) in events.iter().zip(outcomes.iter()) {
                    use v1::event_outcome::Status as S;
                    match outcome.status() {
                        S::Accepted | S::Duplicate | S::ConflictResolved | S::ConflictOpen => {
                            done.push(*id)
                        }
                        _ => failed.push((*id, outcome.error.clone())),
                    }
                }
                // An outcome missing from the reply is a failure to retry.
                for (id, _) in events.iter().skip(outcomes.len()) {
                    failed.push((*id, "no outcome in the push reply".into()));
                }
                let result = self
                    .blocking(move |e| {
                        e.queue.ack(&done)?;
                        for (id, why) in failed {
                            tracing::warn!(item = id, error = %why, "push refused");
                            e.queue.fail(id, &why, now)?;
                        }
                        Ok(())
                    })
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "recording push outcomes");
                }
            }
            Err(status) => {
                self.status.push_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(region = %self.region, error = %status.message(), "push failed");
                if unreachable(&status) {
                    self.coordinators.failover();
                }
                if status.code() == Code::FailedPrecondition {
                    // Paused by an operator: wait for the heartbeat to say resumed.
                    self.status.paused.store(true, Ordering::SeqCst);
                }
                let why = status.message().to_owned();
                let _ = self
                    .blocking(move |e| e.queue.fail_many(&ids, &why, now).map(|_| ()))
                    .await;
                self.pause(RECONNECT_MIN).await;
            }
        }
    }
}
