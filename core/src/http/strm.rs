//! A region's STRM routes:
//!
//! - `GET|HEAD /stream/<path>?[job=<job>&]sig=<hex>`: a signed link of a `.strm` file. Without
//!   `job` the path is a namespace path (served from the content store; cold chunks are fetched
//!   from another region first); with `job` it is below that job's source (a local file, or a
//!   302 to a freshly signed OpenList link). `Range` (one range) gets 206 with `Content-Range`,
//!   `Accept-Ranges: bytes` always, `Content-Type` by extension. A path with `..`, empty or `.`
//!   components is 400, a bad or missing signature 403, a missing file 404.
//! - `POST /api/v1/webhook/clouddrive`: CloudDrive2 file events (token in `Authorization`, with
//!   or without `Bearer`, or `?token=`). Wrong token 401, body over
//!   [`MAX_WEBHOOK_BYTES`] or more than [`MAX_WEBHOOK_ITEMS`] changes 413, malformed 400;
//!   otherwise 200 `{"queued": [run ids]}` at once, the runs doing the work.
//! - `GET /api/v1/strm/jobs`, `GET /api/v1/strm/runs[?limit=]`, `GET /api/v1/strm/runs/<id>`,
//!   `POST /api/v1/strm/runs` (`{"job", "strategy"?, "now"?}`),
//!   `POST /api/v1/strm/runs/<id>/cancel`, `POST /api/v1/strm/runs/<id>/confirm-cleanup`: what
//!   `geosync strm` uses.

use std::collections::HashMap;
use std::ops::Range;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::RegionHttp;
use crate::config::RunStrategy;
use crate::model::NodeKind;
use crate::store::content::ContentRef;
use crate::strm::runs::Trigger;
use crate::strm::stream::{ByteRange, content_type, parse_range};
use crate::strm::webhook::{self, MAX_WEBHOOK_BYTES, MAX_WEBHOOK_ITEMS, PayloadError};
use crate::strm::{StreamError, StreamTarget, StrmError};

/// Bytes per piece of a streamed body.
const STREAM_PIECE_BYTES: u64 = 1 << 20;

/// Pieces a streamed body may have ready before its reader waits.
const STREAM_BUFFER: usize = 4;

/// The most runs one listing returns.
const MAX_RUNS_LISTED: usize = 1000;

type Piece = Result<Bytes, std::io::Error>;

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, body.into()).into_response()
}

/// The STRM routes (see the module docs).
pub fn routes() -> Router<RegionHttp> {
    Router::new()
        .route("/stream/{*path}", get(stream))
        .route("/api/v1/webhook/clouddrive", post(clouddrive))
        .route("/api/v1/strm/jobs", get(jobs))
        .route("/api/v1/strm/runs", get(runs).post(start_run))
        .route("/api/v1/strm/runs/{id}", get(one_run))
        .route("/api/v1/strm/runs/{id}/cancel", post(cancel_run))
        .route(
            "/api/v1/strm/runs/{id}/confirm-cleanup",
            post(confirm_cleanup),
        )
}

fn strm_error(e: StrmError) -> Response {
    let status = match &e {
        StrmError::UnknownJob(_) | StrmError::UnknownRun(_) => StatusCode::NOT_FOUND,
        StrmError::WrongState { .. } | StrmError::IncrementalByHand(_) => StatusCode::CONFLICT,
        StrmError::BadPath(_) => StatusCode::BAD_REQUEST,
        StrmError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, e.to_string())
}

async fn stream(
    State(r): State<RegionHttp>,
    method: Method,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/{path}");
    let sig = query.get("sig").map(String::as_str).unwrap_or("");
    let job = query.get("job").map(String::as_str);
    let target = match r.strm.stream_target(&path, job, sig).await {
        Ok(t) => t,
        Err(e) => {
            let status = match &e {
                StreamError::BadPath(_) => StatusCode::BAD_REQUEST,
                StreamError::BadSignature => StatusCode::FORBIDDEN,
                StreamError::NotConfigured | StreamError::UnknownJob(_) => StatusCode::NOT_FOUND,
                StreamError::Upstream(_) => StatusCode::BAD_GATEWAY,
            };
            return text(status, e.to_string());
        }
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let head = method == Method::HEAD;
    match target {
        StreamTarget::Redirect(url) => match HeaderValue::from_str(&url) {
            Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
            Err(_) => text(StatusCode::BAD_GATEWAY, "the source gave an unusable link"),
        },
        StreamTarget::Namespace(p) => stream_namespace(&r, &p, range.as_deref(), head).await,
        StreamTarget::Local(file) => stream_local(&file, range.as_deref(), head).await,
    }
}

/// The status and headers for a range of a file of `size`; `Err` is a finished answer (416).
fn ranged(
    name: &str,
    size: u64,
    range: Option<&str>,
    etag: Option<String>,
) -> Result<(StatusCode, HeaderMap, Range<u64>), Box<Response>> {
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&format!("\"{t}\"")).ok()) {
        h.insert(header::ETAG, tag);
    }
    let (status, span) = match parse_range(range, size) {
        ByteRange::Full => (StatusCode::OK, 0..size),
        ByteRange::Partial { start, end } => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, start..end)
        }
        ByteRange::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            return Err(Box::new(
                (StatusCode::RANGE_NOT_SATISFIABLE, h).into_response(),
            ));
        }
    };
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(span.end - span.start),
    );
    Ok((status, h, span))
}

async fn stream_namespace(r: &RegionHttp, path: &str, range: Option<&str>, head: bool) -> Response {
    let engine = r.engine.clone();
    let p = path.to_owned();
    let view =
        match tokio::task::spawn_blocking(move || engine.namespace.resolve(p.as_bytes())).await {
            Ok(Ok(v)) => v,
            Ok(Err(crate::Error::NotFound(_))) => {
                return text(StatusCode::NOT_FOUND, format!("no such file: {path}"));
            }
            Ok(Err(crate::Error::InvalidPath { reason, .. })) => {
                return text(StatusCode::BAD_REQUEST, reason);
            }
            Ok(Err(e)) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
    if view.meta.kind != NodeKind::File {
        return text(StatusCode::BAD_REQUEST, format!("{path} is not a file"));
    }
    let content = view.meta.content;
    let etag = content.map(|c| c.id.to_hex());
    let (status, headers, span) = match ranged(path, view.meta.size, range, etag) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    if head || span.is_empty() {
        return (status, headers).into_response();
    }
    let Some(content) = content else {
        return (status, headers).into_response();
    };
    let (tx, rx) = mpsc::channel::<Piece>(STREAM_BUFFER);
    tokio::spawn(send_content(r.clone(), content, span, tx));
    (status, headers, Body::from_stream(ReceiverStream::new(rx))).into_response()
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Sends `span` of `content`, fetching cold chunks first; an error ends the body abruptly (the
/// client sees a short answer, never wrong bytes).
async fn send_content(
    r: RegionHttp,
    content: ContentRef,
    span: Range<u64>,
    tx: mpsc::Sender<Piece>,
) {
    let store = r.engine.content.clone();
    let id = content.id;
    let opened = tokio::task::spawn_blocking(move || {
        // Held while reading: open content is never evicted under the reader.
        let guard = store.open_handle(&id);
        let complete = store.is_complete(&id)?;
        Ok::<_, crate::Error>((guard, complete))
    })
    .await;
    let (_guard, complete) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            let _ = tx.send(Err(io_error(e))).await;
            return;
        }
        Err(e) => {
            let _ = tx.send(Err(io_error(e))).await;
            return;
        }
    };
    let mut at = span.start;
    while at < span.end {
        let end = span.end.min(at + STREAM_PIECE_BYTES);
        if !complete && let Err(e) = r.chunks.ensure(content, at..end).await {
            let _ = tx.send(Err(io_error(e))).await;
            return;
        }
        let store = r.engine.content.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; (end - at) as usize];
            let n = store.read_at(&id, at, &mut buf)?;
            buf.truncate(n);
            Ok::<_, crate::Error>(buf)
        })
        .await;
        let data = match read {
            Ok(Ok(d)) if !d.is_empty() => d,
            Ok(Ok(_)) => {
                let _ = tx.send(Err(io_error("content ended early"))).await;
                return;
            }
            Ok(Err(e)) => {
                let _ = tx.send(Err(io_error(e))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(io_error(e))).await;
                return;
            }
        };
        at += data.len() as u64;
        if tx.send(Ok(Bytes::from(data))).await.is_err() {
            return;
        }
    }
}

async fn stream_local(file: &std::path::Path, range: Option<&str>, head: bool) -> Response {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let shown = file.display().to_string();
    let mut f = match tokio::fs::File::open(file).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return text(StatusCode::NOT_FOUND, format!("no such file: {shown}"));
        }
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("{shown}: {e}")),
    };
    let meta = match f.metadata().await {
        Ok(m) if m.is_file() => m,
        Ok(_) => return text(StatusCode::BAD_REQUEST, format!("{shown} is not a file")),
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("{shown}: {e}")),
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (status, headers, span) = match ranged(&name, meta.len(), range, None) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    if head || span.is_empty() {
        return (status, headers).into_response();
    }
    if let Err(e) = f.seek(std::io::SeekFrom::Start(span.start)).await {
        return text(StatusCode::BAD_GATEWAY, format!("{shown}: {e}"));
    }
    let (tx, rx) = mpsc::channel::<Piece>(STREAM_BUFFER);
    tokio::spawn(async move {
        let mut left = span.end - span.start;
        while left > 0 {
            let mut buf = vec![0u8; left.min(STREAM_PIECE_BYTES) as usize];
            match f.read(&mut buf).await {
                Ok(0) => {
                    let _ = tx.send(Err(io_error("file ended early"))).await;
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    (status, headers, Body::from_stream(ReceiverStream::new(rx))).into_response()
}

/// Compares two strings in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn clouddrive(
    State(r): State<RegionHttp>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let Some(token) = r.strm.config().webhook_token.clone() else {
        return text(
            StatusCode::NOT_FOUND,
            "the webhook is not configured (strm.webhook_token)",
        );
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).to_owned())
        .or_else(|| query.get("token").cloned())
        .unwrap_or_default();
    if !same_secret(&given, &token) {
        return text(StatusCode::UNAUTHORIZED, "wrong or missing webhook token");
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_WEBHOOK_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("webhook body over {MAX_WEBHOOK_BYTES} bytes"),
            );
        }
    };
    let changes = match webhook::parse(&body) {
        Ok(c) => c,
        Err(e @ PayloadError::TooMany(_)) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{e} (max {MAX_WEBHOOK_ITEMS})"),
            );
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match r.strm.webhook(changes).await {
        Ok(ids) => Json(serde_json::json!({ "queued": ids })).into_response(),
        Err(e) => strm_error(e),
    }
}

async fn jobs(State(r): State<RegionHttp>) -> Response {
    match r.strm.jobs().await {
        Ok(j) => Json(j).into_response(),
        Err(e) => strm_error(e),
    }
}

async fn runs(State(r): State<RegionHttp>, Query(q): Query<HashMap<String, String>>) -> Response {
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) => l.min(MAX_RUNS_LISTED),
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "limit: expected a number"),
    };
    match r.strm.runs(limit).await {
        Ok(runs) => Json(runs).into_response(),
        Err(e) => strm_error(e),
    }
}

async fn one_run(State(r): State<RegionHttp>, Path(id): Path<u64>) -> Response {
    match r.strm.run(id).await {
        Ok(run) => Json(run).into_response(),
        Err(e) => strm_error(e),
    }
}

/// The body of `POST /api/v1/strm/runs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRun {
    job: String,
    #[serde(default)]
    strategy: Option<RunStrategy>,
    /// Delete orphans at once (no grace run).
    #[serde(default)]
    now: bool,
    #[serde(default)]
    trigger: Option<Trigger>,
    /// Source paths an incremental run processes (relative to the job's source root).
    #[serde(default)]
    paths: Vec<String>,
}

async fn start_run(State(r): State<RegionHttp>, body: Bytes) -> Response {
    let req: StartRun = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("malformed request: {e}")),
    };
    let trigger = match req.trigger {
        None | Some(Trigger::Cli) => Trigger::Cli,
        Some(Trigger::Console) => Trigger::Console,
        Some(t) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("trigger {t:?} cannot be requested"),
            );
        }
    };
    let queued = if req.strategy == Some(RunStrategy::Incremental) || !req.paths.is_empty() {
        r.strm.enqueue_paths(&req.job, &req.paths, trigger).await
    } else {
        r.strm
            .enqueue(&req.job, req.strategy, trigger, req.now)
            .await
    };
    match queued {
        Ok(id) => Json(serde_json::json!({ "id": id })).into_response(),
        Err(e) => strm_error(e),
    }
}

async fn cancel_run(State(r): State<RegionHttp>, Path(id): Path<u64>) -> Response {
    match r.strm.cancel(id).await {
        Ok(()) => Json(serde_json::json!({ "cancelled": id })).into_response(),
        Err(e) => strm_error(e),
    }
}

async fn confirm_cleanup(State(r): State<RegionHttp>, Path(id): Path<u64>) -> Response {
    match r.strm.confirm_cleanup(id, Trigger::Cli).await {
        Ok(run) => Json(serde_json::json!({ "id": run })).into_response(),
        Err(e) => strm_error(e),
    }
}
