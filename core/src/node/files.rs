//! File access without a mount: the `Files` gRPC service over the namespace.
//!
//! A thin adapter: it checks input, calls the namespace and the content store (on the blocking
//! pool), and answers. Every path goes through [`parse_path`]'s rules (absolute, no empty, `.` or
//! `..` component, no NUL), checked before anything changes. Changes (`Write`, `Remove`,
//! `Mkdir`) are made durable ([`Namespace::sync`](crate::namespace::Namespace::sync)) before the
//! reply, so a reply means the change survives a crash.
//!
//! - `Read` streams pieces of at most [`READ_PIECE_BYTES`]; content not held locally is fetched
//!   piece by piece through the [`ChunkSource`] first. Symlinks are not followed: reading one is
//!   `FAILED_PRECONDITION` (`Stat` shows its target).
//! - `Write` stages the data in the content store's `tmp/` as it arrives, and commits it as one
//!   new version when the stream ends: a new file gets the header's mode, an existing file keeps
//!   its node and mode and gets the new content. A directory there is `FAILED_PRECONDITION`, a
//!   symlink `ALREADY_EXISTS` (not followed). There is no size limit (the data is streamed to
//!   disk). A stream that breaks off leaves nothing behind; one that ends normally commits.
//! - `List` answers every entry in one reply, or `RESOURCE_EXHAUSTED` when there are more than
//!   [`MAX_LIST_ENTRIES`] or they would not fit in one message.

use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use geosync_proto::v1;
use geosync_proto::v1::files_server::{Files, FilesServer};
use geosync_proto::v1::write_request::Part;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Engine;
use crate::model::{NodeId, NodeKind};
use crate::namespace::{NewNode, NodeView, parse_path};
use crate::node::fetch::ChunkSource;
use crate::rpc::MAX_MESSAGE_BYTES;
use crate::store::content::ContentRef;
use crate::{Error, Result};

/// The most bytes one `FileData` message of `Read` carries.
pub const READ_PIECE_BYTES: usize = 1 << 20;

/// The most entries one `List` reply carries.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// Entries read from the namespace per `readdir` call.
const LIST_PAGE: usize = 1024;

/// Room left in a `List` reply for framing, besides the entries.
const LIST_SLACK_BYTES: usize = 1024;

/// Permission bits of a file written without a mode.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// Permission bits of a directory made without a mode.
pub const DEFAULT_DIR_MODE: u32 = 0o755;

/// `FileData` messages a `Read` stream may have in flight before its producer waits.
const STREAM_BUFFER: usize = 4;

/// Times `Write` retries its commit when a concurrent change took the name in between.
const COMMIT_ATTEMPTS: usize = 3;

type ReadStream = Pin<Box<dyn Stream<Item = Result<v1::FileData, Status>> + Send>>;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Waits for blocking work; a panic in it is re-raised here.
async fn join<T>(task: tokio::task::JoinHandle<Result<T>>) -> Result<T, Status> {
    match task.await {
        Ok(result) => result.map_err(Status::from),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Status::internal(format!(
            "file service task cancelled: {e}"
        ))),
    }
}

/// Permission bits from a request: 0 means `default`; bits beyond 0o7777 are refused.
fn mode(requested: u32, default: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(default),
        m if m & !crate::wire::MODE_MASK != 0 => Err(Status::invalid_argument(format!(
            "mode {m:#o} has bits beyond the permission bits 0o7777"
        ))),
        m => Ok(m),
    }
}

/// Checks a path before any work, so bad input changes nothing.
fn checked(path: &[u8]) -> Result<(), Status> {
    parse_path(path).map(|_| ()).map_err(Status::from)
}

fn file_info(engine: &Engine, path: Vec<u8>, view: &NodeView) -> Result<v1::FileInfo> {
    let meta = &view.meta;
    let local = match meta.content {
        Some(c) => c.size == 0 || engine.content.is_complete(&c.id)?,
        None => true,
    };
    Ok(v1::FileInfo {
        path,
        node: view.id.to_bytes().to_vec(),
        kind: v1::NodeKind::from(meta.kind).into(),
        size: meta.size,
        mode: meta.mode,
        mtime_ns: meta.mtime_ns,
        content: meta.content.as_ref().map(v1::ContentRef::from),
        target: meta.target.clone(),
        local,
        in_conflict: view.in_conflict,
    })
}

/// Deletes a staging file unless it was consumed.
struct Staging {
    path: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        match fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(path = %self.path.display(), "write: staging file removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "write: could not remove the staging file")
            }
        }
    }
}

/// The `Files` gRPC service over a region's engine.
#[derive(Clone)]
pub struct FilesService {
    engine: Arc<Engine>,
    chunks: Arc<dyn ChunkSource>,
}

impl FilesService {
    /// Serves `engine`'s namespace, fetching cold content through `chunks`.
    pub fn new(engine: Arc<Engine>, chunks: Arc<dyn ChunkSource>) -> Self {
        FilesService { engine, chunks }
    }

    /// The tonic server for this service, with geosync's message limits.
    pub fn into_server(self) -> FilesServer<Self> {
        FilesServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Runs blocking engine work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let engine = self.engine.clone();
        join(tokio::task::spawn_blocking(move || f(&engine))).await
    }
}

/// What listing a directory gave.
enum Listing {
    Entries(Vec<v1::ListEntry>),
    /// More than a reply carries: how many entries were seen when it stopped.
    TooLarge(usize),
}

fn list(engine: &Engine, path: &[u8]) -> Result<Listing> {
    let ns = &engine.namespace;
    let dir = ns.resolve(path)?;
    if dir.meta.kind != NodeKind::Directory {
        return Err(Error::NotADirectory(show(path)));
    }
    let budget = MAX_MESSAGE_BYTES - LIST_SLACK_BYTES;
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = ns.readdir(dir.id, after.as_deref(), LIST_PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.name.as_bytes().to_vec());
        for e in page {
            let size = match ns.get(e.node) {
                Ok(view) => view.meta.size,
                // Removed since the page was read.
                Err(Error::NotFound(_)) => continue,
                Err(err) => return Err(err),
            };
            let entry = v1::ListEntry {
                name: e.name.as_bytes().to_vec(),
                kind: v1::NodeKind::from(e.kind).into(),
                size,
            };
            // The entry, its field tag and its length prefix.
            bytes += entry.encoded_len() + 1 + prost::length_delimiter_len(entry.encoded_len());
            if entries.len() >= MAX_LIST_ENTRIES || bytes > budget {
                return Ok(Listing::TooLarge(entries.len()));
            }
            entries.push(entry);
        }
    }
    Ok(Listing::Entries(entries))
}

/// Creates `path` as a file with `content`, or gives an existing file this content.
fn commit_write(engine: &Engine, path: &[u8], content: ContentRef, mode: u32) -> Result<NodeView> {
    let ns = &engine.namespace;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (parent, name) = ns.resolve_parent(path)?;
        match ns.lookup(parent.id, name.as_bytes()) {
            Ok(existing) => {
                return match existing.meta.kind {
                    NodeKind::File => ns.write_content(existing.id, content, now_ns()),
                    NodeKind::Directory => Err(Error::IsADirectory(show(path))),
                    NodeKind::Symlink => {
                        Err(Error::AlreadyExists(format!("{} (a symlink)", show(path))))
                    }
                };
            }
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let new = NewNode {
            content: Some(content),
            ..NewNode::file(mode)
        };
        match ns.create(parent.id, name.as_bytes(), new) {
            Err(Error::AlreadyExists(_)) if attempt < COMMIT_ATTEMPTS => continue,
            other => return other,
        }
    }
}

/// Checks `path` can take a written file (its parent exists, it is not a directory), before the
/// data is received.
fn check_write_target(engine: &Engine, path: &[u8]) -> Result<()> {
    let ns = &engine.namespace;
    let (parent, name) = ns.resolve_parent(path)?;
    if parent.meta.kind != NodeKind::Directory {
        return Err(Error::NotADirectory(show(path)));
    }
    match ns.lookup(parent.id, name.as_bytes()) {
        Ok(v) if v.meta.kind == NodeKind::Directory => Err(Error::IsADirectory(show(path))),
        Ok(v) if v.meta.kind == NodeKind::Symlink => {
            Err(Error::AlreadyExists(format!("{} (a symlink)", show(path))))
        }
        Ok(_) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the directory `dir` (entry `name` of `parent`) and everything below it, depth first.
/// Returns how many nodes were removed.
fn remove_tree(engine: &Engine, parent: NodeId, name: Vec<u8>, dir: NodeId) -> Result<u64> {
    let ns = &engine.namespace;
    let mut removed = 0u64;
    // The directories being emptied, outermost first: (parent, name, directory).
    let mut stack = vec![(parent, name, dir)];
    while let Some((p, n, d)) = stack.last().cloned() {
        let page = ns.readdir(d, None, LIST_PAGE)?;
        if page.is_empty() {
            ns.rmdir(p, &n)?;
            removed += 1;
            stack.pop();
            continue;
        }
        for e in page {
            if e.kind == NodeKind::Directory {
                stack.push((d, e.name.as_bytes().to_vec(), e.node));
                break;
            }
            ns.unlink(d, e.name.as_bytes())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn remove(engine: &Engine, path: &[u8], recursive: bool) -> Result<u64> {
    let ns = &engine.namespace;
    let (parent, name) = ns.resolve_parent(path)?;
    let node = ns.lookup(parent.id, name.as_bytes())?;
    let removed = match node.meta.kind {
        NodeKind::Directory if recursive => {
            remove_tree(engine, parent.id, name.as_bytes().to_vec(), node.id)?
        }
        NodeKind::Directory => {
            ns.rmdir(parent.id, name.as_bytes())?;
            1
        }
        NodeKind::File | NodeKind::Symlink => {
            ns.unlink(parent.id, name.as_bytes())?;
            1
        }
    };
    ns.sync()?;
    Ok(removed)
}

fn mkdir(engine: &Engine, path: &[u8], mode: u32, parents: bool) -> Result<NodeView> {
    let ns = &engine.namespace;
    let names = parse_path(path)?;
    let view = if parents {
        let mut at = ns.get(NodeId::ROOT)?;
        let last = names.len();
        for (i, name) in names.into_iter().enumerate() {
            let found = match ns.lookup(at.id, name.as_bytes()) {
                Err(Error::NotFound(_)) => {
                    match ns.create(at.id, name.as_bytes(), NewNode::directory(mode)) {
                        Err(Error::AlreadyExists(_)) => ns.lookup(at.id, name.as_bytes())?,
                        other => other?,
                    }
                }
                other => other?,
            };
            if found.meta.kind != NodeKind::Directory {
                // `mkdir -p` over a file: the last name exists, an earlier one is in the way.
                return Err(if i + 1 == last {
                    Error::AlreadyExists(show(path))
                } else {
                    Error::NotADirectory(found.meta.name.to_string())
                });
            }
            at = found;
        }
        at
    } else {
        if names.is_empty() {
            return Err(Error::AlreadyExists(show(path)));
        }
        let (parent, name) = ns.resolve_parent(path)?;
        ns.create(parent.id, name.as_bytes(), NewNode::directory(mode))?
    };
    ns.sync()?;
    Ok(view)
}

#[tonic::async_trait]
impl Files for FilesService {
    async fn stat(
        &self,
        request: Request<v1::PathRequest>,
    ) -> Result<Response<v1::FileInfo>, Status> {
        let path = request.into_inner().path;
        checked(&path)?;
        let info = self
            .blocking(move |e| {
                let view = e.namespace.resolve(&path)?;
                file_info(e, path, &view)
            })
            .await?;
        Ok(Response::new(info))
    }

    async fn list(
        &self,
        request: Request<v1::PathRequest>,
    ) -> Result<Response<v1::ListReply>, Status> {
        let path = request.into_inner().path;
        checked(&path)?;
        let shown = show(&path);
        match self.blocking(move |e| list(e, &path)).await? {
            Listing::Entries(entries) => Ok(Response::new(v1::ListReply { entries })),
            Listing::TooLarge(seen) => Err(Status::resource_exhausted(format!(
                "directory {shown} has more entries than one reply carries (stopped after {seen}; \
                 at most {MAX_LIST_ENTRIES} within {MAX_MESSAGE_BYTES} bytes)"
            ))),
        }
    }

    type ReadStream = ReadStream;

    /// Resolves the path before answering (a missing path or a directory is the reply's status);
    /// fetching and reading happen as the stream is consumed, and stop when the client goes.
    async fn read(
        &self,
        request: Request<v1::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let r = request.into_inner();
        checked(&r.path)?;
        let shown = show(&r.path);
        let path = r.path;
        let view = self.blocking(move |e| e.namespace.resolve(&path)).await?;
        let content = match view.meta.kind {
            NodeKind::File => view.meta.content,
            NodeKind::Directory => return Err(Error::IsADirectory(shown).into()),
            NodeKind::Symlink => {
                return Err(Status::failed_precondition(format!(
                    "{shown} is a symlink: read its target (Stat shows it)"
                )));
            }
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let Some(content) = content.filter(|c| c.size > 0) else {
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        };
        let size = content.size;
        let start = r.offset.min(size);
        let end = match r.length {
            0 => size,
            n => r.offset.saturating_add(n).min(size),
        };
        let engine = self.engine.clone();
        let chunks = self.chunks.clone();
        tokio::spawn(async move {
            if start >= end {
                return;
            }
            let store = engine.content.clone();
            let id = content.id;
            // Held while reading: open content is never evicted under the reader.
            let opened = join(tokio::task::spawn_blocking(move || {
                let guard = store.open_handle(&id);
                let complete = store.is_complete(&id)?;
                Ok((guard, complete))
            }))
            .await;
            let (_guard, complete) = match opened {
                Ok(opened) => opened,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let mut at = start;
            while at < end {
                let piece_end = end.min(at + READ_PIECE_BYTES as u64);
                if !complete && let Err(e) = chunks.ensure(content, at..piece_end).await {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
                let store = engine.content.clone();
                let read = join(tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; (piece_end - at) as usize];
                    let n = store.read_at(&id, at, &mut buf)?;
                    buf.truncate(n);
                    Ok(buf)
                }))
                .await;
                let data = match read {
                    Ok(data) => data,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if data.is_empty() {
                    return;
                }
                at += data.len() as u64;
                if tx.send(Ok(v1::FileData { data })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Cancel-safe in the sense that matters: a client that goes away mid-stream leaves no
    /// staging file and no change behind.
    async fn write(
        &self,
        request: Request<Streaming<v1::WriteRequest>>,
    ) -> Result<Response<v1::FileInfo>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(v1::WriteRequest {
                part: Some(Part::Header(header)),
            }) => header,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a Write must be its header",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "empty Write stream: the first message must be the header",
                ));
            }
        };
        checked(&header.path)?;
        let mode = mode(header.mode, DEFAULT_FILE_MODE)?;
        let path = header.path;
        let target = path.clone();
        self.blocking(move |e| check_write_target(e, &target))
            .await?;

        let (staged, file) = self.blocking(|e| e.content.staging_file()).await?;
        let staging = Staging { path: staged };
        let file = Arc::new(file);
        let mut received = 0u64;
        loop {
            let data = match stream.message().await {
                Ok(Some(v1::WriteRequest {
                    part: Some(Part::Data(data)),
                })) => data,
                Ok(Some(v1::WriteRequest {
                    part: Some(Part::Header(_)),
                })) => {
                    return Err(Status::invalid_argument(
                        "a Write has one header, first: a second one came after data",
                    ));
                }
                Ok(Some(v1::WriteRequest { part: None })) => {
                    return Err(Status::invalid_argument(
                        "a Write message carries neither header nor data",
                    ));
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(path = %show(&path), %status, received, "write: the stream broke off");
                    return Err(status);
                }
            };
            if data.is_empty() {
                continue;
            }
            received += data.len() as u64;
            let f = file.clone();
            let at = staging.path.clone();
            join(tokio::task::spawn_blocking(move || {
                (&*f)
                    .write_all(&data)
                    .map_err(|e| Error::io("write", at, e))
            }))
            .await?;
        }
        drop(file);
        // The guard moves into the commit, so a client leaving now does not race it.
        let info = self
            .blocking(move |e| {
                let staging = staging;
                let content = e.content.put_file(&staging.path)?;
                let view = commit_write(e, &path, content, mode)?;
                e.namespace.sync()?;
                tracing::debug!(path = %show(&path), size = content.size, id = %content.id.short(), "write committed");
                file_info(e, path, &view)
            })
            .await?;
        Ok(Response::new(info))
    }

    async fn remove(
        &self,
        request: Request<v1::RemoveRequest>,
    ) -> Result<Response<v1::RemoveReply>, Status> {
        let r = request.into_inner();
        checked(&r.path)?;
        let removed = self
            .blocking(move |e| remove(e, &r.path, r.recursive))
            .await?;
        Ok(Response::new(v1::RemoveReply { removed }))
    }

    async fn mkdir(
        &self,
        request: Request<v1::MkdirRequest>,
    ) -> Result<Response<v1::FileInfo>, Status> {
        let r = request.into_inner();
        checked(&r.path)?;
        let mode = mode(r.mode, DEFAULT_DIR_MODE)?;
        let info = self
            .blocking(move |e| {
                let view = mkdir(e, &r.path, mode, r.parents)?;
                file_info(e, r.path, &view)
            })
            .await?;
        Ok(Response::new(info))
    }
}
