//! The chunk service regions serve to each other, and the verified fetcher of cold chunks.
//!
//! [`ChunkService`] serves the `Chunks` gRPC service from the local content store: manifests
//! (also of content known only cold) and the chunks the region holds, each chunk cut into pieces
//! of at most [`MAX_CHUNK_PIECE_BYTES`] so every message fits the message size limit. Chunks are
//! read for peers unverified: the receiver verifies them (invariant 5).
//!
//! [`RemoteChunks`] is the [`ChunkSource`] a region reads cold content through. It asks a
//! [`Locator`] (in production [`CoordinatorLocator`], the coordinator's `Locate`) which regions
//! hold a content version, and fetches from them in the order given:
//! - a manifest it lacks is checked against the content id ([`Manifest::verify_id`]) before it is
//!   registered; a wrong one is dropped and the next holder asked;
//! - chunks are reassembled from their pieces and stored with [`ContentStore::write_chunk`], which
//!   verifies each against the manifest; a holder that sends a bad chunk, breaks the protocol or
//!   fails is abandoned and the next one asked for what is still missing;
//! - a read that starts where the previous one of the same content ended is sequential: the next
//!   `read_ahead_chunks` chunks after it are fetched too (with the missing ones of the read, or in
//!   the background when the read itself needs nothing);
//! - one fetch per content version at a time, so two readers of the same cold chunk download it
//!   once (the second finds it present).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use geosync_proto::MAX_CHUNK_PIECE_BYTES;
use geosync_proto::v1;
use geosync_proto::v1::chunks_client::ChunksClient;
use geosync_proto::v1::chunks_server::{Chunks, ChunksServer};
use geosync_proto::v1::coordinator_client::CoordinatorClient;
use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::clock::RegionId;
use crate::node::fetch::ChunkSource;
use crate::rpc::MAX_MESSAGE_BYTES;
use crate::store::content::{ContentId, ContentRef, ContentStore, Manifest};
use crate::wire::{content_id_from_wire, region_from_wire};
use crate::{Error, Result};

/// The most chunk indexes one `FetchChunks` request may name.
pub const MAX_FETCH_INDEXES: usize = 1024;

/// Chunks fetched ahead of a sequential read, by default.
pub const DEFAULT_READ_AHEAD_CHUNKS: u32 = 2;

/// How often a read waiting on a background read-ahead looks again even
/// without a wake-up.
const READ_AHEAD_POLL: Duration = Duration::from_millis(20);

/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a peer may take to answer a request, or to send the next message of a stream.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Peer channels kept, and how long an unused one stays.
const MAX_PEERS: u64 = 256;
const PEER_CHANNEL_IDLE: Duration = Duration::from_secs(600);

/// Content locations remembered, and for how long (new holders appear as
/// regions replicate, so the answer goes stale).
const MAX_CACHED_LOCATIONS: u64 = 10_000;
const LOCATIONS_TTL: Duration = Duration::from_secs(10);

/// Chunk pieces a `FetchChunks` stream may have in flight before its producer waits.
const STREAM_BUFFER: usize = 4;

/// Contents whose last read end (sequential detection) is remembered; the table is cleared when
/// it would grow past this.
const MAX_TRACKED_READS: usize = 4096;

/// Missing chunk indexes named in a `NOT_FOUND` message, at most.
const MAX_NAMED_MISSING: usize = 16;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::Chunk, Status>> + Send>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits for blocking store work; a panic in it is re-raised here.
async fn join<T>(task: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Unreachable(format!(
            "content store task cancelled: {e}"
        ))),
    }
}

fn content_id(bytes: &[u8]) -> Result<ContentId, Status> {
    content_id_from_wire(bytes, "content_id").map_err(|e| Status::from(Error::from(e)))
}

// ---------------------------------------------------------------------------------------------
// The server

/// The `Chunks` gRPC service over a region's content store.
#[derive(Clone, Debug)]
pub struct ChunkService {
    content: Arc<ContentStore>,
    piece_bytes: usize,
}

impl ChunkService {
    pub fn new(content: Arc<ContentStore>) -> Self {
        ChunkService {
            content,
            piece_bytes: MAX_CHUNK_PIECE_BYTES,
        }
    }

    /// Sends chunks in pieces of at most `bytes` (clamped to 1 ..= [`MAX_CHUNK_PIECE_BYTES`]),
    /// e.g. to exercise reassembly with small chunks.
    pub fn with_piece_bytes(mut self, bytes: usize) -> Self {
        self.piece_bytes = bytes.clamp(1, MAX_CHUNK_PIECE_BYTES);
        self
    }

    /// The tonic server for this service, with geosync's message limits.
    pub fn into_server(self) -> ChunksServer<Self> {
        ChunksServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Runs blocking store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ContentStore) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let content = self.content.clone();
        join(tokio::task::spawn_blocking(move || f(&content)))
            .await
            .map_err(Status::from)
    }
}

/// Sends one chunk as pieces; false when the receiver is gone.
async fn send_pieces(
    tx: &mpsc::Sender<Result<v1::Chunk, Status>>,
    index: u32,
    data: Bytes,
    piece_bytes: usize,
) -> bool {
    let mut offset = 0;
    while offset < data.len() {
        let end = (offset + piece_bytes).min(data.len());
        let piece = v1::Chunk {
            index,
            // A chunk is at most `MAX_CHUNK_SIZE` (64 MiB) long: its offsets fit.
            offset: u32::try_from(offset).unwrap_or(u32::MAX),
            data: data.slice(offset..end),
        };
        if tx.send(Ok(piece)).await.is_err() {
            return false;
        }
        offset = end;
    }
    true
}

#[tonic::async_trait]
impl Chunks for ChunkService {
    async fn get_manifest(
        &self,
        request: Request<v1::ManifestRequest>,
    ) -> Result<Response<v1::Manifest>, Status> {
        let id = content_id(&request.into_inner().content_id)?;
        let manifest = self
            .blocking(move |c| c.manifest(&id))
            .await?
            .ok_or(Error::ContentNotFound { id })?;
        Ok(Response::new(v1::Manifest::from(&manifest)))
    }

    type FetchChunksStream = ChunkStream;

    /// Checks the whole request first (content known, every index within the manifest), then
    /// streams the chunks the region holds in the order asked, and ends with `NOT_FOUND` naming
    /// those it lacks.
    async fn fetch_chunks(
        &self,
        request: Request<v1::FetchChunksRequest>,
    ) -> Result<Response<Self::FetchChunksStream>, Status> {
        let r = request.into_inner();
        let id = content_id(&r.content_id)?;
        if r.indexes.len() > MAX_FETCH_INDEXES {
            return Err(Status::invalid_argument(format!(
                "fetch of {} chunks exceeds the maximum of {MAX_FETCH_INDEXES} per request",
                r.indexes.len()
            )));
        }
        let count = self
            .blocking(move |c| c.manifest(&id))
            .await?
            .ok_or(Error::ContentNotFound { id })?
            .chunk_count();
        if let Some(&index) = r.indexes.iter().find(|&&i| i >= count) {
            return Err(Error::ChunkOutOfRange { id, index, count }.into());
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let content = self.content.clone();
        let piece_bytes = self.piece_bytes;
        tokio::spawn(async move {
            let mut lacking = Vec::new();
            for index in r.indexes {
                if tx.is_closed() {
                    return;
                }
                let c = content.clone();
                let read = join(tokio::task::spawn_blocking(move || {
                    c.read_chunk(&id, index)
                }));
                match read.await {
                    Ok(data) => {
                        if !send_pieces(&tx, index, Bytes::from(data), piece_bytes).await {
                            return;
                        }
                    }
                    Err(Error::ChunkMissing { .. }) => lacking.push(index),
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
            }
            if !lacking.is_empty() {
                let named: Vec<u32> = lacking.iter().take(MAX_NAMED_MISSING).copied().collect();
                let more = lacking.len().saturating_sub(named.len());
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                let _ = tx
                    .send(Err(Status::not_found(format!(
                        "this region lacks chunks {named:?}{more} of content {id}: ask another"
                    ))))
                    .await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

// ---------------------------------------------------------------------------------------------
// Locating content

/// Tells which regions hold a content version.
#[tonic::async_trait]
pub trait Locator: Send + Sync {
    /// The regions holding (some of) `id` with the URL of their gRPC endpoint, best first.
    async fn locate(&self, id: ContentId) -> Result<Vec<(RegionId, String)>>;
}

/// A [`Locator`] asking the coordinator (`Locate`).
#[derive(Clone, Debug)]
pub struct CoordinatorLocator {
    channel: Channel,
}

impl CoordinatorLocator {
    pub fn new(channel: Channel) -> Self {
        CoordinatorLocator { channel }
    }
}

#[tonic::async_trait]
impl Locator for CoordinatorLocator {
    /// Cancel-safe (one request, nothing stored).
    async fn locate(&self, id: ContentId) -> Result<Vec<(RegionId, String)>> {
        let mut client = CoordinatorClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let request = v1::LocateRequest {
            content_id: id.0.to_vec(),
        };
        let unreachable = |cause: &dyn fmt::Display| {
            Error::Unreachable(format!("locating content {id}: {cause}"))
        };
        let reply = tokio::time::timeout(PEER_IDLE_TIMEOUT, client.locate(request))
            .await
            .map_err(|_| unreachable(&"the coordinator did not answer in time"))?
            .map_err(|status| unreachable(&status))?
            .into_inner();
        let mut out = Vec::with_capacity(reply.locations.len());
        for location in reply.locations {
            match region_from_wire(&location.region, "locations.region") {
                Ok(region) => out.push((region, location.grpc_endpoint)),
                Err(e) => tracing::warn!(error = %e, "locate: skipping a malformed location"),
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// The fetcher

/// Why fetching from one holder stopped.
enum FetchError {
    /// The holder failed or misbehaved: try the next one.
    Peer(String),
    /// The local store failed: give up.
    Local(Error),
}

/// What is remembered of the reads of one content version.
#[derive(Clone, Copy, Debug, Default)]
struct ReadState {
    /// Where the last read ended.
    end: Option<u64>,
    /// The content's chunk size, once its manifest was seen.
    chunk_size: Option<u32>,
}

type FetchLocks = Mutex<HashMap<ContentId, Arc<tokio::sync::Mutex<()>>>>;

/// Held while fetching chunks of one content version; forgets the lock when nobody else wants it.
struct FetchTurn<'a> {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    locks: &'a FetchLocks,
    id: ContentId,
}

impl Drop for FetchTurn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = lock(self.locks);
        if locks
            .get(&self.id)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            locks.remove(&self.id);
        }
    }
}

struct Inner {
    content: Arc<ContentStore>,
    me: RegionId,
    locator: Arc<dyn Locator>,
    /// One lazily connected channel per peer endpoint, dropped when idle.
    peers: moka::sync::Cache<String, Channel>,
    /// Who holds a content version, as the coordinator said a moment ago:
    /// a sequential read asks once, not once per piece.
    holders: moka::sync::Cache<ContentId, Arc<Vec<(RegionId, String)>>>,
    read_ahead_chunks: AtomicU32,
    reads: Mutex<HashMap<ContentId, ReadState>>,
    fetching: FetchLocks,
    /// Contents with a background read-ahead under way (one at a time each).
    reading_ahead: Mutex<HashSet<ContentId>>,
    /// Woken whenever a fetched chunk is stored: a read that a background
    /// read-ahead is about to satisfy waits for its chunks, not for the batch.
    stored: tokio::sync::Notify,
}

/// Fetches cold chunks from the regions that hold them (see the module docs).
pub struct RemoteChunks {
    inner: Arc<Inner>,
}

impl fmt::Debug for RemoteChunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteChunks")
            .field("me", &self.inner.me)
            .field("read_ahead_chunks", &self.inner.read_ahead())
            .finish_non_exhaustive()
    }
}

impl RemoteChunks {
    /// A fetcher for region `me` (never asked for its own content) storing into `content`.
    pub fn new(content: Arc<ContentStore>, me: RegionId, locator: Arc<dyn Locator>) -> Self {
        RemoteChunks {
            inner: Arc::new(Inner {
                content,
                me,
                locator,
                peers: moka::sync::Cache::builder()
                    .max_capacity(MAX_PEERS)
                    .time_to_idle(PEER_CHANNEL_IDLE)
                    .build(),
                holders: moka::sync::Cache::builder()
                    .max_capacity(MAX_CACHED_LOCATIONS)
                    .time_to_live(LOCATIONS_TTL)
                    .build(),
                read_ahead_chunks: AtomicU32::new(DEFAULT_READ_AHEAD_CHUNKS),
                reads: Mutex::new(HashMap::new()),
                fetching: Mutex::new(HashMap::new()),
                reading_ahead: Mutex::new(HashSet::new()),
                stored: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Chunks fetched ahead of a sequential read (0 turns read-ahead off).
    pub fn with_read_ahead(self, chunks: u32) -> Self {
        self.inner
            .read_ahead_chunks
            .store(chunks, Ordering::Relaxed);
        self
    }

    pub fn read_ahead_chunks(&self) -> u32 {
        self.inner.read_ahead()
    }
}

#[tonic::async_trait]
impl ChunkSource for RemoteChunks {
    /// Cancel-safe: chunks stored before cancellation stay stored and verified. An empty range
    /// needs nothing and does nothing.
    async fn ensure(&self, content: ContentRef, range: Range<u64>) -> Result<()> {
        if range.start >= range.end {
            return Ok(());
        }
        let inner = &self.inner;
        let id = content.id;
        let (sequential, chunk_size) = inner.note_read(id, &range);
        match inner.content.missing_chunks(&id, range.clone()) {
            Ok(missing) if missing.is_empty() => {
                if sequential && inner.read_ahead() > 0 {
                    inner.read_ahead_in_background(id, range.end, chunk_size);
                }
                Ok(())
            }
            Ok(_) | Err(Error::ContentNotFound { .. }) => {
                if inner.read_ahead_delivers(id, &range).await {
                    if sequential && inner.read_ahead() > 0 {
                        inner.read_ahead_in_background(id, range.end, chunk_size);
                    }
                    return Ok(());
                }
                inner.fetch_range(id, range, sequential).await
            }
            Err(e) => Err(e),
        }
    }
}

impl Inner {
    fn read_ahead(&self) -> u32 {
        self.read_ahead_chunks.load(Ordering::Relaxed)
    }

    /// Records a read of `range`: whether it continues the previous read of `id`, and the chunk
    /// size if known.
    fn note_read(&self, id: ContentId, range: &Range<u64>) -> (bool, Option<u32>) {
        let mut reads = lock(&self.reads);
        if reads.len() >= MAX_TRACKED_READS && !reads.contains_key(&id) {
            reads.clear();
        }
        let state = reads.entry(id).or_default();
        let sequential = state.end == Some(range.start);
        state.end = Some(range.end);
        (sequential, state.chunk_size)
    }

    fn note_chunk_size(&self, id: ContentId, chunk_size: u32) {
        if let Some(state) = lock(&self.reads).get_mut(&id) {
            state.chunk_size = Some(chunk_size);
        }
    }

    /// The bytes of the read-ahead window after a read ending at `end`.
    fn window(&self, end: u64, chunk_size: u32) -> Range<u64> {
        let len = u64::from(self.read_ahead()) * u64::from(chunk_size);
        end..end.saturating_add(len)
    }

    /// Missing chunks of the read-ahead window.
    fn missing_ahead(&self, id: &ContentId, end: u64, chunk_size: u32) -> Result<Vec<u32>> {
        self.content
            .missing_chunks(id, self.window(end, chunk_size))
    }

    /// While a background read-ahead of `id` runs, waits for the chunks of
    /// `range` to arrive one by one (instead of for the whole batch). True if
    /// they all did; false when there is no read-ahead or it ended without them.
    async fn read_ahead_delivers(&self, id: ContentId, range: &Range<u64>) -> bool {
        loop {
            let stored = self.stored.notified();
            if self
                .content
                .missing_chunks(&id, range.clone())
                .is_ok_and(|m| m.is_empty())
            {
                return true;
            }
            if !lock(&self.reading_ahead).contains(&id) {
                return false;
            }
            // A bounded wait: the read-ahead may end without a final chunk.
            let _ = tokio::time::timeout(READ_AHEAD_POLL, stored).await;
        }
    }

    /// Waits for this task's turn to fetch chunks of `id`. Cancel-safe.
    async fn turn(&self, id: ContentId) -> FetchTurn<'_> {
        let mutex = lock(&self.fetching).entry(id).or_default().clone();
        let mut turn = FetchTurn {
            guard: None,
            locks: &self.fetching,
            id,
        };
        turn.guard = Some(mutex.lock_owned().await);
        turn
    }

    async fn manifest(&self, id: ContentId) -> Result<Option<Manifest>> {
        let content = self.content.clone();
        join(tokio::task::spawn_blocking(move || content.manifest(&id))).await
    }

    /// The regions to ask for `id`: the locator's, without this one.
    async fn holders(&self, id: ContentId) -> Result<Vec<(RegionId, String)>> {
        if let Some(holders) = self.holders.get(&id) {
            return Ok(holders.as_ref().clone());
        }
        let mut holders = self.locator.locate(id).await?;
        holders.retain(|(region, _)| *region != self.me);
        if !holders.is_empty() {
            self.holders.insert(id, Arc::new(holders.clone()));
        }
        Ok(holders)
    }

    fn channel(&self, url: &str) -> Result<Channel, String> {
        self.peers
            .try_get_with(url.to_owned(), || {
                crate::rpc::endpoint(url)
                    .map(|e| e.connect_timeout(CONNECT_TIMEOUT).connect_lazy())
                    .map_err(|e| format!("invalid endpoint {url:?}: {e}"))
            })
            .map_err(|e| e.as_ref().clone())
    }

    fn client(&self, url: &str) -> Result<ChunksClient<Channel>, String> {
        Ok(ChunksClient::new(self.channel(url)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Makes the chunks of `range` present (and the read-ahead window's when `sequential`).
    /// Cancel-safe.
    async fn fetch_range(&self, id: ContentId, range: Range<u64>, sequential: bool) -> Result<()> {
        let _turn = self.turn(id).await;
        let mut holders = None;
        let manifest = match self.manifest(id).await? {
            Some(manifest) => manifest,
            None => {
                let found = self.holders(id).await?;
                let manifest = self.fetch_manifest(id, &found).await?;
                holders = Some(found);
                manifest
            }
        };
        self.note_chunk_size(id, manifest.chunk_size);
        // Another reader may have fetched them while this one waited for its turn.
        let required = self.content.missing_chunks(&id, range.clone())?;
        let mut wanted: BTreeSet<u32> = required.iter().copied().collect();
        if sequential && self.read_ahead() > 0 {
            wanted.extend(self.missing_ahead(&id, range.end, manifest.chunk_size)?);
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let holders = match holders {
            Some(holders) => holders,
            None => self.holders(id).await?,
        };
        let lacking = self.fetch_chunks(id, &manifest, wanted, &holders).await?;
        match required.iter().find(|index| lacking.contains(index)) {
            Some(&index) => Err(Error::ChunkMissing { id, index }),
            None => Ok(()),
        }
    }

    /// Starts fetching the read-ahead window after `end` in a background task.
    fn read_ahead_in_background(
        self: &Arc<Self>,
        id: ContentId,
        end: u64,
        chunk_size: Option<u32>,
    ) {
        if let Some(chunk_size) = chunk_size {
            match self.missing_ahead(&id, end, chunk_size) {
                Ok(missing) if missing.is_empty() => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(id = %id.short(), error = %e, "read-ahead: nothing to do");
                    return;
                }
            }
        }
        if !lock(&self.reading_ahead).insert(id) {
            return;
        }
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = inner.fetch_ahead(id, end, chunk_size).await {
                tracing::debug!(id = %id.short(), error = %e, "read-ahead failed");
            }
            lock(&inner.reading_ahead).remove(&id);
        });
    }

    async fn fetch_ahead(&self, id: ContentId, end: u64, chunk_size: Option<u32>) -> Result<()> {
        let _turn = self.turn(id).await;
        let Some(manifest) = self.manifest(id).await? else {
            return Ok(());
        };
        if chunk_size.is_none() {
            self.note_chunk_size(id, manifest.chunk_size);
        }
        let wanted: BTreeSet<u32> = self
            .missing_ahead(&id, end, manifest.chunk_size)?
            .into_iter()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let holders = self.holders(id).await?;
        self.fetch_chunks(id, &manifest, wanted, &holders).await?;
        Ok(())
    }

    /// Gets, verifies and registers the manifest of `id` from the first holder with a right one.
    async fn fetch_manifest(
        &self,
        id: ContentId,
        holders: &[(RegionId, String)],
    ) -> Result<Manifest> {
        let mut last_cause = String::from("no region is known to hold it");
        for (region, url) in holders {
            let cause = match self.manifest_from(id, url).await {
                Ok(manifest) => {
                    let content = self.content.clone();
                    let registered = manifest.clone();
                    // Another region holds it whole: the local copy may be
                    // evicted under the cache budget without losing anything.
                    join(tokio::task::spawn_blocking(move || {
                        content.register_remote(&registered)?;
                        content.set_replicated(&registered.id(), true)
                    }))
                    .await?;
                    tracing::debug!(id = %id.short(), %region, "registered a remote manifest");
                    return Ok(manifest);
                }
                Err(cause) => cause,
            };
            tracing::warn!(id = %id.short(), %region, %cause, "manifest fetch failed, trying the next holder");
            last_cause = format!("region {region}: {cause}");
        }
        tracing::warn!(id = %id.short(), cause = %last_cause, "no region could provide the manifest");
        Err(Error::ContentNotFound { id })
    }

    async fn manifest_from(&self, id: ContentId, url: &str) -> Result<Manifest, String> {
        let mut client = self.client(url)?;
        let request = v1::ManifestRequest {
            content_id: id.0.to_vec(),
        };
        let reply = tokio::time::timeout(PEER_IDLE_TIMEOUT, client.get_manifest(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
        let manifest = Manifest::try_from(reply.into_inner()).map_err(|e| e.to_string())?;
        manifest.verify_id(&id).map_err(|e| e.to_string())?;
        Ok(manifest)
    }

    /// Fetches `wanted` from the holders in order, each asked for what is still missing. Returns
    /// the chunks nobody provided; fails only when the local store does.
    async fn fetch_chunks(
        &self,
        id: ContentId,
        manifest: &Manifest,
        wanted: BTreeSet<u32>,
        holders: &[(RegionId, String)],
    ) -> Result<BTreeSet<u32>> {
        let mut missing = wanted;
        let mut last_cause = String::from("no region is known to hold it");
        for (region, url) in holders {
            if missing.is_empty() {
                break;
            }
            let asked: Vec<u32> = missing.iter().copied().collect();
            for batch in asked.chunks(MAX_FETCH_INDEXES) {
                match self
                    .fetch_from(id, manifest, url, batch, &mut missing)
                    .await
                {
                    Ok(()) => {}
                    Err(FetchError::Local(e)) => return Err(e),
                    Err(FetchError::Peer(cause)) => {
                        tracing::warn!(id = %id.short(), %region, %cause, "chunk fetch failed, trying the next holder");
                        last_cause = format!("region {region}: {cause}");
                        break;
                    }
                }
            }
        }
        if !missing.is_empty() {
            tracing::warn!(
                id = %id.short(),
                chunks = ?missing.iter().take(MAX_NAMED_MISSING).collect::<Vec<_>>(),
                cause = %last_cause,
                "no region could provide these chunks"
            );
        }
        Ok(missing)
    }

    /// Fetches `batch` (ascending) from one holder, storing each verified chunk and removing it
    /// from `missing`. A holder that lacks some (`NOT_FOUND` at the end) is not at fault.
    async fn fetch_from(
        &self,
        id: ContentId,
        manifest: &Manifest,
        url: &str,
        batch: &[u32],
        missing: &mut BTreeSet<u32>,
    ) -> Result<(), FetchError> {
        let mut client = self.client(url).map_err(FetchError::Peer)?;
        let request = v1::FetchChunksRequest {
            content_id: id.0.to_vec(),
            indexes: batch.to_vec(),
        };
        let status = |s: Status| FetchError::Peer(format!("{}: {}", s.code(), s.message()));
        let mut stream = tokio::time::timeout(PEER_IDLE_TIMEOUT, client.fetch_chunks(request))
            .await
            .map_err(|_| FetchError::Peer("timed out".into()))?
            .map_err(status)?
            .into_inner();
        // The chunk being reassembled: index, bytes so far, expected length.
        let mut current: Option<(u32, Vec<u8>, usize)> = None;
        loop {
            let message = tokio::time::timeout(PEER_IDLE_TIMEOUT, stream.message())
                .await
                .map_err(|_| FetchError::Peer("stream stalled".into()))?;
            let piece = match message {
                Ok(Some(piece)) => piece,
                Ok(None) if current.is_none() => return Ok(()),
                Ok(None) => return Err(FetchError::Peer("stream ended inside a chunk".into())),
                Err(s) if s.code() == Code::NotFound && current.is_none() => {
                    tracing::debug!(id = %id.short(), url, message = s.message(), "holder lacks some chunks");
                    return Ok(());
                }
                Err(s) => return Err(status(s)),
            };
            let index = piece.index;
            if batch.binary_search(&index).is_err() {
                return Err(FetchError::Peer(format!(
                    "sent chunk {index}, which was not asked for"
                )));
            }
            let (at, buf, expected) = current.get_or_insert_with(|| {
                let range = manifest.chunk_range(index);
                let expected = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
                (index, Vec::with_capacity(expected), expected)
            });
            if *at != index || piece.offset as usize != buf.len() {
                return Err(FetchError::Peer(format!(
                    "piece of chunk {index} at offset {} out of order",
                    piece.offset
                )));
            }
            buf.extend_from_slice(&piece.data);
            if buf.len() > *expected {
                return Err(FetchError::Peer(format!(
                    "chunk {index} is longer than its manifest says"
                )));
            }
            if buf.len() < *expected {
                continue;
            }
            let Some((index, data, _)) = current.take() else {
                continue;
            };
            let content = self.content.clone();
            let stored = join(tokio::task::spawn_blocking(move || {
                content.write_chunk(&id, index, &data)
            }))
            .await;
            match stored {
                Ok(()) => {
                    missing.remove(&index);
                    self.stored.notify_waiters();
                }
                Err(Error::ChunkHashMismatch { .. }) => {
                    return Err(FetchError::Peer(format!(
                        "chunk {index} does not match its manifest hash"
                    )));
                }
                Err(e) => return Err(FetchError::Local(e)),
            }
        }
    }
}
