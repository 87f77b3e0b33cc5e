//! Cold reads across regions: a real coordinator and real chunk servers on loopback.
//!
//! Region "west" writes a file; the coordinator learns where its content lives from the pushed
//! events; region "north" reads it cold through `RemoteChunks` (located by the coordinator's
//! `Locate`) and through `Files.Read`, fetching only what it needs, reading ahead when reading
//! sequentially, and verifying everything (invariant 5): a holder that serves a corrupt chunk or
//! a wrong manifest is skipped for an honest one.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use geosync_core::clock::RegionId;
use geosync_core::coordinator::service::CoordinatorService;
use geosync_core::coordinator::{Coordinator, CoordinatorSettings, PushOutcome};
use geosync_core::model::{ChangeEvent, NodeId};
use geosync_core::namespace::{NamespaceConfig, NewNode};
use geosync_core::node::chunks::{
    ChunkService, CoordinatorLocator, Locator, MAX_FETCH_INDEXES, RemoteChunks,
};
use geosync_core::node::fetch::ChunkSource;
use geosync_core::node::files::FilesService;
use geosync_core::rpc::MAX_MESSAGE_BYTES;
use geosync_core::store::content::{ContentRef, Manifest};
use geosync_core::{Engine, EngineConfig, Error};
use geosync_proto::v1;
use geosync_proto::v1::chunks_client::ChunksClient;
use geosync_proto::v1::chunks_server::{Chunks, ChunksServer};
use geosync_proto::v1::files_client::FilesClient;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};

mod common;
use common::{bytes, wait_until, within};

const CHUNK: u32 = 64 << 10;
/// Pieces smaller than a chunk, so every fetch reassembles chunks from several pieces.
const PIECE: usize = 10_000;
/// 16 full chunks and a short last one.
const SIZE: usize = (1 << 20) + 1000;

fn region_id(name: &str) -> RegionId {
    RegionId::new(name).unwrap()
}

fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_lazy()
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// The chunk service, with what was asked of it recorded, and optionally lying about manifests.
#[derive(Clone)]
struct Observed {
    inner: ChunkService,
    fetched: Arc<Mutex<Vec<u32>>>,
    manifests: Arc<AtomicUsize>,
    fake_manifest: Option<v1::Manifest>,
}

#[tonic::async_trait]
impl Chunks for Observed {
    async fn get_manifest(
        &self,
        request: Request<v1::ManifestRequest>,
    ) -> Result<Response<v1::Manifest>, Status> {
        self.manifests.fetch_add(1, Ordering::SeqCst);
        if let Some(fake) = &self.fake_manifest {
            return Ok(Response::new(fake.clone()));
        }
        self.inner.get_manifest(request).await
    }

    type FetchChunksStream = <ChunkService as Chunks>::FetchChunksStream;

    async fn fetch_chunks(
        &self,
        request: Request<v1::FetchChunksRequest>,
    ) -> Result<Response<Self::FetchChunksStream>, Status> {
        self.fetched
            .lock()
            .unwrap()
            .extend_from_slice(&request.get_ref().indexes);
        self.inner.fetch_chunks(request).await
    }
}

struct Region {
    id: RegionId,
    engine: Arc<Engine>,
    url: String,
    remote: Arc<RemoteChunks>,
    fetched: Arc<Mutex<Vec<u32>>>,
    manifests: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl Region {
    /// Chunk indexes other regions asked this one for, sorted.
    fn fetched(&self) -> Vec<u32> {
        let mut out = self.fetched.lock().unwrap().clone();
        out.sort_unstable();
        out
    }

    fn clear_fetched(&self) {
        self.fetched.lock().unwrap().clear();
    }

    fn files(&self) -> FilesClient<Channel> {
        FilesClient::new(channel(&self.url)).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            within("server stops", server).await.unwrap();
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A region serving `Chunks` and `Files`, locating content through the coordinator at
/// `coordinator_url`.
async fn start_region(
    name: &str,
    coordinator_url: &str,
    fake_manifest: Option<v1::Manifest>,
) -> Region {
    let dir = tempfile::tempdir().unwrap();
    let id = region_id(name);
    let mut config = EngineConfig::new(NamespaceConfig::new(id.clone()));
    config.content.chunk_size = CHUNK;
    let engine = Arc::new(Engine::in_memory(dir.path(), config, None).unwrap());
    let locator: Arc<dyn Locator> = Arc::new(CoordinatorLocator::new(channel(coordinator_url)));
    let remote = Arc::new(RemoteChunks::new(
        engine.content.clone(),
        id.clone(),
        locator,
    ));
    let fetched = Arc::new(Mutex::new(Vec::new()));
    let manifests = Arc::new(AtomicUsize::new(0));
    let observed = Observed {
        inner: ChunkService::new(engine.content.clone()).with_piece_bytes(PIECE),
        fetched: fetched.clone(),
        manifests: manifests.clone(),
        fake_manifest,
    };
    let chunks = ChunksServer::new(observed)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let files = FilesService::new(engine.clone(), remote.clone()).into_server();
    let (listener, url) = listen().await;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        Server::builder()
            .add_service(chunks)
            .add_service(files)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled())
            .await
            .unwrap();
    });
    Region {
        id,
        engine,
        url,
        remote,
        fetched,
        manifests,
        shutdown,
        server: Some(server),
        _dir: dir,
    }
}

struct Cluster {
    coordinator: Arc<Coordinator>,
    url: String,
    shutdown: CancellationToken,
    _dir: TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_coordinator() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let coordinator =
        Arc::new(Coordinator::open(dir.path(), CoordinatorSettings::default()).unwrap());
    let shutdown = CancellationToken::new();
    let service = CoordinatorService::new(coordinator.clone(), shutdown.clone()).into_server();
    let (listener, url) = listen().await;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled())
            .await
            .unwrap();
    });
    Cluster {
        coordinator,
        url,
        shutdown,
        _dir: dir,
    }
}

impl Cluster {
    /// Registers `region` (its chunk server's URL) and pushes what it queued.
    fn publish(&self, region: &Region) {
        let now = geosync_core::clock::system_ms();
        self.coordinator
            .register(&region.id, &region.url, "http://127.0.0.1:9", now)
            .unwrap();
        let items = region.engine.queue.take(usize::MAX, u64::MAX).unwrap();
        if items.is_empty() {
            return;
        }
        let events: Vec<ChangeEvent> = items
            .iter()
            .map(|i| ChangeEvent::decode(&i.payload).unwrap())
            .collect();
        let outcomes = self.coordinator.push(&region.id, events, now).unwrap();
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, PushOutcome::Accepted { .. })),
            "{outcomes:?}"
        );
        let ids: Vec<_> = items.iter().map(|i| i.id).collect();
        region.engine.queue.ack(&ids).unwrap();
    }

    /// Applies the whole log to `region`'s namespace (metadata only: content stays cold).
    fn deliver(&self, region: &Region) {
        for event in self.coordinator.events_after(0, 10_000).unwrap() {
            region.engine.namespace.apply_remote(&event).unwrap();
        }
    }
}

/// Writes `data` as `/name` in `region`.
fn write_file(region: &Region, name: &[u8], data: &[u8]) -> ContentRef {
    let content = region.engine.content.put_bytes(data).unwrap();
    region
        .engine
        .namespace
        .create(
            NodeId::ROOT,
            name,
            NewNode {
                content: Some(content),
                ..NewNode::file(0o644)
            },
        )
        .unwrap();
    content
}

fn all_chunks() -> BTreeSet<u32> {
    (0..SIZE.div_ceil(CHUNK as usize) as u32).collect()
}

fn missing(region: &Region, content: &ContentRef) -> BTreeSet<u32> {
    region
        .engine
        .content
        .missing_chunks(&content.id, 0..content.size)
        .unwrap()
        .into_iter()
        .collect()
}

fn chunk_start(index: u32) -> u64 {
    u64::from(index) * u64::from(CHUNK)
}

async fn read(region: &Region, path: &[u8], offset: u64, length: u64) -> Result<Vec<u8>, Status> {
    let mut files = region.files();
    let request = v1::ReadRequest {
        path: path.to_vec(),
        offset,
        length,
    };
    within("read", async {
        let mut stream = files.read(request).await?.into_inner();
        let mut out = Vec::new();
        while let Some(piece) = stream.message().await? {
            out.extend_from_slice(&piece.data);
        }
        Ok(out)
    })
    .await
}

async fn stat(region: &Region, path: &[u8]) -> v1::FileInfo {
    let request = v1::PathRequest {
        path: path.to_vec(),
    };
    within("stat", region.files().stat(request))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_reads_fetch_only_what_they_need_and_read_ahead_when_sequential() {
    let cluster = start_coordinator().await;
    let west = start_region("west", &cluster.url, None).await;
    let north = start_region("north", &cluster.url, None).await;
    let data = bytes(1, SIZE);
    let content = write_file(&west, b"movie.mkv", &data);
    cluster.publish(&west);
    cluster.publish(&north);
    cluster.deliver(&north);

    // The coordinator knows where the content is.
    let locator = CoordinatorLocator::new(channel(&cluster.url));
    let holders = within("locate", locator.locate(content.id)).await.unwrap();
    assert_eq!(holders, vec![(west.id.clone(), west.url.clone())]);

    // North knows the file but holds none of it.
    let info = stat(&north, b"/movie.mkv").await;
    assert_eq!(info.size, SIZE as u64);
    assert!(!info.local);
    assert!(!north.engine.content.contains(&content.id));

    // Random reads fetch only the chunks they touch.
    let got = read(&north, b"/movie.mkv", 200_000, 1000).await.unwrap();
    assert_eq!(got, data[200_000..201_000]);
    assert_eq!(west.manifests.load(Ordering::SeqCst), 1);
    assert_eq!(west.fetched(), vec![3]);
    let straddle = chunk_start(10) - 10;
    let got = read(&north, b"/movie.mkv", straddle, 20).await.unwrap();
    assert_eq!(got, data[straddle as usize..straddle as usize + 20]);
    let tail = (1 << 20) + 500;
    let got = read(&north, b"/movie.mkv", tail, 0).await.unwrap();
    assert_eq!(got, data[tail as usize..]);
    assert_eq!(west.fetched(), vec![3, 9, 10, 16]);
    let mut expected = all_chunks();
    for i in [3, 9, 10, 16] {
        expected.remove(&i);
    }
    assert_eq!(missing(&north, &content), expected);
    // Held chunks are not fetched again, and the manifest is not asked for again.
    let got = read(&north, b"/movie.mkv", chunk_start(3), 100)
        .await
        .unwrap();
    assert_eq!(
        got,
        data[chunk_start(3) as usize..chunk_start(3) as usize + 100]
    );
    assert_eq!(west.fetched(), vec![3, 9, 10, 16]);
    assert_eq!(west.manifests.load(Ordering::SeqCst), 1);

    // Sequential reads through a fetcher of north's: the first read is not known to be
    // sequential; the next one, starting where it ended, reads ahead.
    west.clear_fetched();
    let fetcher = RemoteChunks::new(
        north.engine.content.clone(),
        north.id.clone(),
        Arc::new(CoordinatorLocator::new(channel(&cluster.url))),
    );
    assert_eq!(fetcher.read_ahead_chunks(), 2);
    within("ensure", fetcher.ensure(content, 0..chunk_start(1)))
        .await
        .unwrap();
    assert_eq!(west.fetched(), vec![0]);
    within(
        "ensure",
        fetcher.ensure(content, chunk_start(1)..chunk_start(2)),
    )
    .await
    .unwrap();
    // Chunk 1 was needed, 2 and 3 are the read-ahead window (3 was held already).
    assert_eq!(west.fetched(), vec![0, 1, 2]);
    // A read of held chunks that continues the sequence reads ahead in the background.
    within(
        "ensure",
        fetcher.ensure(content, chunk_start(2)..chunk_start(3)),
    )
    .await
    .unwrap();
    wait_until("read-ahead of chunk 4", || {
        !missing(&north, &content).contains(&4)
    })
    .await;
    assert!(missing(&north, &content).contains(&5));
    assert_eq!(west.fetched(), vec![0, 1, 2, 4]);
    // A random read does not read ahead.
    within(
        "ensure",
        fetcher.ensure(content, chunk_start(12)..chunk_start(12) + 1),
    )
    .await
    .unwrap();
    assert_eq!(west.fetched(), vec![0, 1, 2, 4, 12]);
    assert!(missing(&north, &content).contains(&13));

    // A whole read completes the copy; the bytes match.
    let got = read(&north, b"/movie.mkv", 0, 0).await.unwrap();
    assert_eq!(got, data);
    assert!(missing(&north, &content).is_empty());
    assert!(north.engine.content.is_complete(&content.id).unwrap());
    assert!(stat(&north, b"/movie.mkv").await.local);
    // Every chunk was fetched once (3, 9, 10 and 16 before the count was cleared).
    let fetched: Vec<u32> = west.fetched();
    let mut unique: BTreeSet<u32> = fetched.iter().copied().collect();
    assert_eq!(fetched.len(), unique.len(), "{fetched:?}");
    unique.extend([3, 9, 10, 16]);
    assert_eq!(unique, all_chunks());
    // North now serves what it holds.
    let north_copy = north.engine.content.read_chunk(&content.id, 7).unwrap();
    assert_eq!(
        north_copy,
        data[chunk_start(7) as usize..chunk_start(8) as usize]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_or_a_wrong_manifest_is_refused_and_fetched_elsewhere() {
    let cluster = start_coordinator().await;
    // Locate lists holders by region name: "aaa-liar", then "east", then "west".
    let other = Manifest::for_bytes(&bytes(99, 5000), CHUNK).unwrap();
    let liar = start_region("aaa-liar", &cluster.url, Some(v1::Manifest::from(&other))).await;
    let east = start_region("east", &cluster.url, None).await;
    let west = start_region("west", &cluster.url, None).await;
    let north = start_region("north", &cluster.url, None).await;
    let data = bytes(2, SIZE);
    let content = write_file(&west, b"movie.mkv", &data);
    assert_eq!(write_file(&east, b"copy.mkv", &data), content);
    assert_eq!(write_file(&liar, b"lie.mkv", &data), content);
    for r in [&west, &east, &liar, &north] {
        cluster.publish(r);
    }
    cluster.deliver(&north);
    let locator = CoordinatorLocator::new(channel(&cluster.url));
    let holders: Vec<RegionId> = within("locate", locator.locate(content.id))
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(
        holders,
        vec![liar.id.clone(), east.id.clone(), west.id.clone()]
    );

    // Corrupt chunk 5 of east's copy on disk: east serves it unverified.
    {
        use std::os::unix::fs::FileExt;
        let path = east.engine.content.object_path(&content.id);
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(b"not the right bytes", chunk_start(5) + 100)
            .unwrap();
    }
    // The liar has dropped its copy since: asked for chunks, it answers NOT_FOUND.
    assert!(liar.engine.content.remove(&content.id).unwrap());
    let got = read(&north, b"/movie.mkv", chunk_start(5) + 50, 1000)
        .await
        .unwrap();
    assert_eq!(
        got,
        data[chunk_start(5) as usize + 50..chunk_start(5) as usize + 1050]
    );
    // The liar's manifest was refused and east's taken; the liar lacked chunk 5, east's copy
    // was refused, west's taken.
    assert_eq!(liar.manifests.load(Ordering::SeqCst), 1);
    assert_eq!(east.manifests.load(Ordering::SeqCst), 1);
    assert_eq!(west.manifests.load(Ordering::SeqCst), 0);
    assert_eq!(liar.fetched(), vec![5]);
    assert_eq!(east.fetched(), vec![5]);
    assert_eq!(west.fetched(), vec![5]);
    // What north stored is right, and it stored nothing else.
    assert_eq!(
        north.engine.content.read_chunk(&content.id, 5).unwrap(),
        data[chunk_start(5) as usize..chunk_start(6) as usize]
    );
    let mut expected = all_chunks();
    expected.remove(&5);
    assert_eq!(missing(&north, &content), expected);
    // The liar's manifest was not registered.
    assert!(!north.engine.content.contains(&other.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_nobody_can_provide_is_an_error_naming_it() {
    let cluster = start_coordinator().await;
    let mut west = start_region("west", &cluster.url, None).await;
    let north = start_region("north", &cluster.url, None).await;
    let data = bytes(3, SIZE);
    let content = write_file(&west, b"movie.mkv", &data);
    cluster.publish(&west);
    cluster.deliver(&north);
    let got = read(&north, b"/movie.mkv", 0, 10).await.unwrap();
    assert_eq!(got, data[..10]);

    west.stop().await;
    let err = within(
        "ensure",
        north
            .remote
            .ensure(content, chunk_start(7)..chunk_start(7) + 1),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::ChunkMissing { id, index: 7 } if id == content.id),
        "{err:?}"
    );
    let status = read(&north, b"/movie.mkv", chunk_start(7), 10)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("chunk 7"), "{status:?}");
    assert!(
        status.message().contains(&content.id.to_hex()),
        "{status:?}"
    );
    // Nothing unverified was stored.
    assert!(missing(&north, &content).contains(&7));

    // Content whose manifest nobody can provide.
    let unknown = ContentRef {
        id: Manifest::for_bytes(b"nobody has this", CHUNK).unwrap().id(),
        size: 15,
    };
    let err = within("ensure", north.remote.ensure(unknown, 0..15))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ContentNotFound { id } if id == unknown.id),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_of_a_cold_chunk_fetch_it_once() {
    let cluster = start_coordinator().await;
    let west = start_region("west", &cluster.url, None).await;
    let north = start_region("north", &cluster.url, None).await;
    let data = bytes(4, SIZE);
    let content = write_file(&west, b"movie.mkv", &data);
    cluster.publish(&west);
    let range = chunk_start(4) + 7..chunk_start(6) + 3;
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let remote = north.remote.clone();
            let range = range.clone();
            tokio::spawn(async move { remote.ensure(content, range).await })
        })
        .collect();
    for reader in readers {
        within("reader", reader).await.unwrap().unwrap();
    }
    assert_eq!(west.fetched(), vec![4, 5, 6]);
    assert_eq!(west.manifests.load(Ordering::SeqCst), 1);
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    north
        .engine
        .content
        .read_at(&content.id, range.start, &mut buf)
        .unwrap();
    assert_eq!(buf, data[range.start as usize..range.end as usize]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chunk_service_answers_by_the_rules() {
    let cluster = start_coordinator().await;
    let west = start_region("west", &cluster.url, None).await;
    let north = start_region("north", &cluster.url, None).await;
    let data = bytes(5, SIZE);
    let content = write_file(&west, b"movie.mkv", &data);
    cluster.publish(&west);
    let client = |url: &str| {
        ChunksClient::new(channel(url))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    };
    let mut c = client(&west.url);
    let id = content.id.0.to_vec();

    // Manifests.
    let manifest = within(
        "manifest",
        c.get_manifest(v1::ManifestRequest {
            content_id: id.clone(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let manifest = Manifest::try_from(manifest).unwrap();
    manifest.verify_id(&content.id).unwrap();
    let unknown = Manifest::for_bytes(b"unknown", CHUNK)
        .unwrap()
        .id()
        .0
        .to_vec();
    let status = within(
        "manifest",
        c.get_manifest(v1::ManifestRequest {
            content_id: unknown.clone(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = within(
        "manifest",
        c.get_manifest(v1::ManifestRequest {
            content_id: vec![1; 31],
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Bad fetches are refused before anything is streamed.
    let fetch = |content_id: Vec<u8>, indexes: Vec<u32>| v1::FetchChunksRequest {
        content_id,
        indexes,
    };
    for (request, code) in [
        (
            fetch(id.clone(), vec![0; MAX_FETCH_INDEXES + 1]),
            Code::InvalidArgument,
        ),
        (fetch(id.clone(), vec![0, 17]), Code::OutOfRange),
        (fetch(unknown.clone(), vec![0]), Code::NotFound),
        (fetch(vec![0; 3], vec![0]), Code::InvalidArgument),
    ] {
        let status = within("fetch", c.fetch_chunks(request)).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }

    // Chunks come in the order asked, in pieces of at most PIECE bytes, offsets in order.
    let mut stream = within("fetch", c.fetch_chunks(fetch(id.clone(), vec![16, 2])))
        .await
        .unwrap()
        .into_inner();
    let mut pieces = Vec::new();
    while let Some(piece) = within("piece", stream.message()).await.unwrap() {
        assert!(piece.data.len() <= PIECE);
        pieces.push((piece.index, piece.offset, piece.data));
    }
    let mut expect_offset = 0;
    let mut chunk16 = Vec::new();
    let mut chunk2 = Vec::new();
    for (index, offset, piece) in &pieces {
        let chunk = if *index == 16 {
            &mut chunk16
        } else {
            &mut chunk2
        };
        if chunk.is_empty() {
            expect_offset = 0;
        }
        assert_eq!(*offset as usize, expect_offset);
        expect_offset += piece.len();
        chunk.extend_from_slice(piece);
    }
    assert_eq!(pieces.first().map(|p| p.0), Some(16));
    assert_eq!(pieces.last().map(|p| p.0), Some(2));
    assert_eq!(chunk16, data[chunk_start(16) as usize..]);
    assert_eq!(
        chunk2,
        data[chunk_start(2) as usize..chunk_start(3) as usize]
    );
    assert_eq!(pieces.len(), 1 + (CHUNK as usize).div_ceil(PIECE));

    // A partial holder: north registered the manifest (cold) and holds chunk 3 only. It serves
    // the manifest, chunk 3, and ends with NOT_FOUND for the chunks it lacks.
    cluster.publish(&north);
    within(
        "ensure",
        north
            .remote
            .ensure(content, chunk_start(3)..chunk_start(3) + 1),
    )
    .await
    .unwrap();
    let mut n = client(&north.url);
    let cold = within(
        "manifest",
        n.get_manifest(v1::ManifestRequest {
            content_id: id.clone(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(Manifest::try_from(cold).unwrap(), manifest);
    let mut stream = within("fetch", n.fetch_chunks(fetch(id.clone(), vec![4, 3, 5])))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let end = loop {
        match within("piece", stream.message()).await {
            Ok(Some(piece)) => {
                assert_eq!(piece.index, 3);
                got.extend_from_slice(&piece.data);
            }
            Ok(None) => panic!("the stream should end with NOT_FOUND"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, data[chunk_start(3) as usize..chunk_start(4) as usize]);
    assert_eq!(end.code(), Code::NotFound);
    assert!(end.message().contains("[4, 5]"), "{end:?}");
}
