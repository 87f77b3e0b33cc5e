//! The `Files` service on a real server on loopback: stat, list, read, write, remove, mkdir,
//! and bad input (paths, streams, modes) refused with INVALID_ARGUMENT, changing nothing.

use std::collections::BTreeMap;
use std::net::{Shutdown, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use geosync_core::clock::RegionId;
use geosync_core::namespace::{NamespaceConfig, NodeView};
use geosync_core::node::fetch::ChunkSource;
use geosync_core::node::files::{FilesService, READ_PIECE_BYTES};
use geosync_core::rpc::MAX_MESSAGE_BYTES;
use geosync_core::store::content::ContentRef;
use geosync_core::{Engine, EngineConfig, Error};
use geosync_proto::v1;
use geosync_proto::v1::files_client::FilesClient;
use geosync_proto::v1::write_request::Part;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};

mod common;
use common::{bytes, wait_until, within};

/// Content here is always local: nothing may ask for remote chunks.
struct NoRemote;

#[tonic::async_trait]
impl ChunkSource for NoRemote {
    async fn ensure(&self, content: ContentRef, _range: Range<u64>) -> geosync_core::Result<()> {
        Err(Error::ChunkMissing {
            id: content.id,
            index: 0,
        })
    }
}

struct Region {
    engine: Arc<Engine>,
    addr: SocketAddr,
    client: FilesClient<Channel>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl Drop for Region {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Region {
    async fn start_at(dir: TempDir, on_disk: bool) -> Region {
        let mut config = EngineConfig::new(NamespaceConfig::new(RegionId::new("eu").unwrap()));
        config.content.chunk_size = 64 << 10;
        let engine = if on_disk {
            Engine::open(dir.path(), config).unwrap()
        } else {
            Engine::in_memory(dir.path(), config, None).unwrap()
        };
        let engine = Arc::new(engine);
        let service = FilesService::new(engine.clone(), Arc::new(NoRemote)).into_server();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled())
                .await
                .unwrap();
        });
        let channel = Endpoint::from_shared(url).unwrap().connect_lazy();
        let client = FilesClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Region {
            engine,
            addr,
            client,
            shutdown,
            server: Some(server),
            _dir: dir,
        }
    }

    async fn start() -> Region {
        Region::start_at(tempfile::tempdir().unwrap(), false).await
    }

    fn tmp_dir(&self) -> PathBuf {
        self.engine.dir.join("content").join("tmp")
    }

    fn staged_files(&self) -> usize {
        std::fs::read_dir(self.tmp_dir()).unwrap().count()
    }

    fn tree(&self) -> BTreeMap<Vec<u8>, NodeView> {
        self.engine.namespace.tree().unwrap()
    }

    async fn stat(&self, path: &[u8]) -> Result<v1::FileInfo, tonic::Status> {
        let request = v1::PathRequest {
            path: path.to_vec(),
        };
        within("stat", self.client.clone().stat(request))
            .await
            .map(|r| r.into_inner())
    }

    async fn list(&self, path: &[u8]) -> Result<Vec<(String, v1::NodeKind, u64)>, tonic::Status> {
        let request = v1::PathRequest {
            path: path.to_vec(),
        };
        let reply = within("list", self.client.clone().list(request)).await?;
        Ok(reply
            .into_inner()
            .entries
            .into_iter()
            .map(|e| {
                let kind = e.kind();
                (String::from_utf8(e.name).unwrap(), kind, e.size)
            })
            .collect())
    }

    /// The pieces a read streams.
    async fn read_pieces(
        &self,
        path: &[u8],
        offset: u64,
        length: u64,
    ) -> Result<Vec<Vec<u8>>, tonic::Status> {
        let request = v1::ReadRequest {
            path: path.to_vec(),
            offset,
            length,
        };
        let mut client = self.client.clone();
        within("read", async move {
            let mut stream = client.read(request).await?.into_inner();
            let mut pieces = Vec::new();
            while let Some(piece) = stream.message().await? {
                pieces.push(piece.data);
            }
            Ok(pieces)
        })
        .await
    }

    async fn read(&self, path: &[u8], offset: u64, length: u64) -> Result<Vec<u8>, tonic::Status> {
        Ok(self.read_pieces(path, offset, length).await?.concat())
    }

    async fn write_messages(
        &self,
        messages: Vec<v1::WriteRequest>,
    ) -> Result<v1::FileInfo, tonic::Status> {
        let stream = tokio_stream::iter(messages);
        within("write", self.client.clone().write(stream))
            .await
            .map(|r| r.into_inner())
    }

    async fn write(
        &self,
        path: &[u8],
        data: &[u8],
        piece: usize,
    ) -> Result<v1::FileInfo, tonic::Status> {
        self.write_messages(write_messages(path, 0, data, piece))
            .await
    }

    async fn mkdir(&self, path: &[u8], parents: bool) -> Result<v1::FileInfo, tonic::Status> {
        let request = v1::MkdirRequest {
            path: path.to_vec(),
            mode: 0,
            parents,
        };
        within("mkdir", self.client.clone().mkdir(request))
            .await
            .map(|r| r.into_inner())
    }

    async fn remove(&self, path: &[u8], recursive: bool) -> Result<u64, tonic::Status> {
        let request = v1::RemoveRequest {
            path: path.to_vec(),
            recursive,
        };
        within("remove", self.client.clone().remove(request))
            .await
            .map(|r| r.into_inner().removed)
    }
}

fn header(path: &[u8], mode: u32) -> v1::WriteRequest {
    v1::WriteRequest {
        part: Some(Part::Header(v1::WriteHeader {
            path: path.to_vec(),
            mode,
        })),
    }
}

fn data_message(data: &[u8]) -> v1::WriteRequest {
    v1::WriteRequest {
        part: Some(Part::Data(data.to_vec())),
    }
}

fn write_messages(path: &[u8], mode: u32, data: &[u8], piece: usize) -> Vec<v1::WriteRequest> {
    let mut out = vec![header(path, mode)];
    out.extend(data.chunks(piece).map(data_message));
    out
}

fn names(entries: &[(String, v1::NodeKind, u64)]) -> Vec<&str> {
    entries.iter().map(|(n, _, _)| n.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip() {
    let region = Region::start().await;

    // mkdir -p, twice; plain mkdir of an existing one is ALREADY_EXISTS, of an orphan NOT_FOUND.
    let dir = region.mkdir(b"/a/b/c", true).await.unwrap();
    assert_eq!(dir.kind(), v1::NodeKind::Directory);
    assert_eq!(dir.path, b"/a/b/c");
    assert_eq!(dir.mode, 0o755);
    assert_eq!(region.mkdir(b"/a/b/c", true).await.unwrap().node, dir.node);
    assert_eq!(
        region.mkdir(b"/a/b", false).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    assert_eq!(
        region.mkdir(b"/x/y", false).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        region.mkdir(b"/", false).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    assert_eq!(
        region.mkdir(b"/", true).await.unwrap().kind(),
        v1::NodeKind::Directory
    );

    // Write more than a read piece, in several messages.
    let data = bytes(1, 2 * READ_PIECE_BYTES + 12_345);
    let info = region.write(b"/a/b/c/f.bin", &data, 300_000).await.unwrap();
    assert_eq!(info.kind(), v1::NodeKind::File);
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.mode, 0o644);
    assert!(info.local);
    assert_eq!(info.node.len(), 16);
    let content = info.content.clone().unwrap();
    assert_eq!(content.size, data.len() as u64);
    assert_eq!(region.staged_files(), 0);

    let stat = region.stat(b"/a/b/c/f.bin").await.unwrap();
    assert_eq!(stat, info);
    let stat = region.stat(b"/a/b/c/").await.unwrap();
    assert_eq!(stat.node, dir.node);
    assert_eq!(
        region.stat(b"/a/b/nope").await.unwrap_err().code(),
        Code::NotFound
    );

    // Listing, in name order with sizes.
    region.write(b"/a/b/z", b"zz", 1).await.unwrap();
    let m = region
        .write_messages(write_messages(b"/a/b/m", 0o600, b"", 1))
        .await
        .unwrap();
    assert_eq!(m.mode, 0o600);
    assert_eq!(m.size, 0);
    assert!(m.local);
    let entries = region.list(b"/a/b").await.unwrap();
    assert_eq!(names(&entries), ["c", "m", "z"]);
    assert_eq!(entries[0].1, v1::NodeKind::Directory);
    assert_eq!(entries[1], ("m".to_owned(), v1::NodeKind::File, 0));
    assert_eq!(entries[2], ("z".to_owned(), v1::NodeKind::File, 2));
    assert_eq!(names(&region.list(b"/").await.unwrap()), ["a"]);
    assert_eq!(
        region.list(b"/a/b/z").await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // Reads: whole (in pieces of at most READ_PIECE_BYTES), and at offsets.
    let pieces = region.read_pieces(b"/a/b/c/f.bin", 0, 0).await.unwrap();
    assert_eq!(pieces.len(), data.len().div_ceil(READ_PIECE_BYTES));
    assert!(pieces.iter().all(|p| p.len() <= READ_PIECE_BYTES));
    assert_eq!(pieces.concat(), data);
    let len = data.len() as u64;
    for (offset, length) in [
        (0, 10),
        (READ_PIECE_BYTES as u64 - 5, 10),
        (12_345, 3 * READ_PIECE_BYTES as u64),
        (len - 3, 0),
        (len - 3, 100),
        (len, 0),
        (len + 10, 5),
    ] {
        let start = (offset as usize).min(data.len());
        let end = match length {
            0 => data.len(),
            n => (offset + n).min(len) as usize,
        }
        .max(start);
        let got = region.read(b"/a/b/c/f.bin", offset, length).await.unwrap();
        assert_eq!(got, data[start..end], "offset {offset} length {length}");
    }
    assert_eq!(region.read(b"/a/b/m", 0, 0).await.unwrap(), b"");
    assert_eq!(
        region.read(b"/a/b", 0, 0).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        region.read(b"/a/nope", 0, 0).await.unwrap_err().code(),
        Code::NotFound
    );

    // Overwrite: same node, new content.
    let new = bytes(2, 100_000);
    let over = region.write(b"/a/b/c/f.bin", &new, 64 << 10).await.unwrap();
    assert_eq!(over.node, info.node);
    assert_eq!(over.size, new.len() as u64);
    assert_ne!(over.content, info.content);
    assert_eq!(region.read(b"/a/b/c/f.bin", 0, 0).await.unwrap(), new);
    // A directory cannot be written over, nor a file written where its parent is missing.
    assert_eq!(
        region.write(b"/a/b/c", b"x", 1).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        region.write(b"/q/f", b"x", 1).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(region.staged_files(), 0);

    // Remove: a non-empty directory needs `recursive`; then everything below goes.
    assert_eq!(
        region.remove(b"/a", false).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(region.remove(b"/a/b/z", false).await.unwrap(), 1);
    assert_eq!(
        region.remove(b"/a/b/z", false).await.unwrap_err().code(),
        Code::NotFound
    );
    // a, b, c, f.bin, m.
    assert_eq!(region.remove(b"/a", true).await.unwrap(), 5);
    assert_eq!(region.stat(b"/a").await.unwrap_err().code(), Code::NotFound);
    assert!(region.list(b"/").await.unwrap().is_empty());
    assert_eq!(
        region.remove(b"/", true).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // An empty directory goes without `recursive`.
    region.mkdir(b"/e", false).await.unwrap();
    assert_eq!(region.remove(b"/e", false).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_are_invalid_arguments_and_change_nothing() {
    let region = Region::start().await;
    region.mkdir(b"/a/b", true).await.unwrap();
    region.write(b"/a/b/f", b"hello", 2).await.unwrap();
    let before = region.tree();
    let queued = region.engine.queue.len().unwrap();
    let bad: [&[u8]; 8] = [
        b"a/b",
        b"/a/../b",
        b"/a//b",
        b"/a/\0",
        b"",
        b"/a/./b",
        b"/a/b/..",
        b"relative",
    ];
    for path in bad {
        let shown = String::from_utf8_lossy(path).into_owned();
        let codes = [
            (
                "stat",
                region.stat(path).await.map(|_| ()).unwrap_err().code(),
            ),
            (
                "list",
                region.list(path).await.map(|_| ()).unwrap_err().code(),
            ),
            (
                "read",
                region
                    .read(path, 0, 0)
                    .await
                    .map(|_| ())
                    .unwrap_err()
                    .code(),
            ),
            (
                "write",
                region
                    .write(path, b"data", 2)
                    .await
                    .map(|_| ())
                    .unwrap_err()
                    .code(),
            ),
            (
                "mkdir -p",
                region
                    .mkdir(path, true)
                    .await
                    .map(|_| ())
                    .unwrap_err()
                    .code(),
            ),
            (
                "mkdir",
                region
                    .mkdir(path, false)
                    .await
                    .map(|_| ())
                    .unwrap_err()
                    .code(),
            ),
            (
                "rm -r",
                region
                    .remove(path, true)
                    .await
                    .map(|_| ())
                    .unwrap_err()
                    .code(),
            ),
        ];
        for (op, code) in codes {
            assert_eq!(code, Code::InvalidArgument, "{op} {shown:?}");
        }
    }
    // A name longer than a name may be.
    let long = [b"/a/".as_slice(), &[b'n'; 300]].concat();
    assert_eq!(
        region.write(&long, b"x", 1).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        region.mkdir(&long, true).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(region.tree(), before);
    assert_eq!(region.engine.queue.len().unwrap(), queued);
    assert_eq!(region.staged_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_write_streams_are_refused_and_leave_nothing() {
    let region = Region::start().await;
    let before = region.tree();
    let cases: Vec<(&str, Vec<v1::WriteRequest>)> = vec![
        ("no header", vec![data_message(b"data"), header(b"/f", 0)]),
        ("empty stream", vec![]),
        (
            "second header",
            vec![header(b"/f", 0), data_message(b"data"), header(b"/g", 0)],
        ),
        (
            "empty message",
            vec![header(b"/f", 0), v1::WriteRequest { part: None }],
        ),
        (
            "mode beyond the permission bits",
            vec![header(b"/f", 0o100644), data_message(b"x")],
        ),
    ];
    for (what, messages) in cases {
        let status = region.write_messages(messages).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    assert_eq!(region.tree(), before);
    wait_until("staging files removed", || region.staged_files() == 0).await;
}

/// A TCP proxy to `target` whose connections the test can cut, as a crashed client's would be.
struct Proxy {
    url: String,
    sockets: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let kept = sockets.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    return;
                };
                let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                };
                {
                    let mut kept = kept.lock().unwrap();
                    kept.push(client.try_clone().unwrap());
                    kept.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { url, sockets }
    }

    /// Cuts every connection made through the proxy.
    fn cut(&self) {
        for socket in self.sockets.lock().unwrap().iter() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_write_leaves_nothing_behind() {
    let region = Region::start().await;
    let proxy = Proxy::start(region.addr);
    let channel = Endpoint::from_shared(proxy.url.clone())
        .unwrap()
        .connect_lazy();
    let mut client = FilesClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    tx.send(header(b"/partial", 0)).await.unwrap();
    tx.send(data_message(&bytes(3, 200_000))).await.unwrap();
    let call = tokio::spawn(async move { client.write(ReceiverStream::new(rx)).await });
    // The server staged what it received; the stream stays open.
    wait_until("data staged", || region.staged_files() == 1).await;
    proxy.cut();
    let reply = within("the call ends", call).await.unwrap();
    assert!(reply.is_err(), "{reply:?}");
    wait_until("staging file removed", || region.staged_files() == 0).await;
    assert_eq!(
        region.stat(b"/partial").await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(region.tree().is_empty());
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let data = bytes(4, 300_000);
    let mut region = Region::start_at(dir, true).await;
    region.mkdir(b"/d", false).await.unwrap();
    let info = region.write(b"/d/f", &data, 100_000).await.unwrap();
    // Stop serving and let go of the engine, then open it again from disk.
    region.shutdown.cancel();
    within("server stops", region.server.take().unwrap())
        .await
        .unwrap();
    let engine = region.engine.clone();
    let dir = std::mem::replace(&mut region._dir, tempfile::tempdir().unwrap());
    drop(region);
    wait_until("engine released", || Arc::strong_count(&engine) == 1).await;
    drop(engine);
    assert_eq!(dir.path(), path);
    let region = Region::start_at(dir, true).await;
    let stat = region.stat(b"/d/f").await.unwrap();
    assert_eq!(stat.node, info.node);
    assert_eq!(stat.content, info.content);
    assert!(stat.local);
    assert_eq!(region.read(b"/d/f", 0, 0).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_are_shown_not_followed() {
    let region = Region::start().await;
    region.write(b"/target", b"data", 4).await.unwrap();
    region
        .engine
        .namespace
        .create(
            geosync_core::model::NodeId::ROOT,
            b"link",
            geosync_core::namespace::NewNode::symlink(b"/target"),
        )
        .unwrap();
    let info = region.stat(b"/link").await.unwrap();
    assert_eq!(info.kind(), v1::NodeKind::Symlink);
    assert_eq!(info.target.as_deref(), Some(b"/target".as_slice()));
    assert_eq!(info.content, None);
    let status = region.read(b"/link", 0, 0).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = region.write(b"/link", b"x", 1).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(region.remove(b"/link", false).await.unwrap(), 1);
    assert_eq!(region.read(b"/target", 0, 0).await.unwrap(), b"data");
}
