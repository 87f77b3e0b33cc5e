//! The backend: the console's only network code. It keeps a cluster watch
//! open (reconnecting with backoff while the coordinator is unreachable) and
//! carries out the app's [`Request`]s, each in its own task; every answer
//! comes back as an [`Action`] on a channel, so the event loop and rendering
//! never wait on the network.

use std::time::Duration;

use geosync_core::store::content::{ContentId, Manifest};
use geosync_proto::v1;
use geosync_proto::v1::admin_client::AdminClient;
use geosync_proto::v1::chunks_client::ChunksClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::action::{Action, Operation, Request, StrmSnapshot};
use crate::strm_api;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an operation or a load may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A watch that sends nothing for this long is taken as dead (the coordinator
/// refreshes the view every second).
pub const WATCH_SILENCE: Duration = Duration::from_secs(5);
/// The first wait before reconnecting; doubled up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// At most this many queue items are listed.
pub const QUEUE_LIMIT: u32 = 1000;
/// At most this many recent STRM runs are listed per region.
pub const STRM_RUNS_LIMIT: usize = 20;

/// Checks a coordinator URL and makes a lazily connecting channel to it.
pub fn channel(url: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("invalid coordinator URL {url:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(endpoint.connect_lazy())
}

fn admin(channel: Channel) -> AdminClient<Channel> {
    AdminClient::new(channel).max_decoding_message_size(geosync_proto::MAX_MESSAGE_BYTES)
}

/// Runs the backend until `cancel` fires: the cluster watch, and the
/// requests from `requests`. Answers go to `actions`.
pub async fn run(
    channel: Channel,
    mut requests: mpsc::UnboundedReceiver<Request>,
    actions: mpsc::UnboundedSender<Action>,
    cancel: CancellationToken,
) {
    let watch = tokio::spawn(watch(channel.clone(), actions.clone(), cancel.clone()));
    let tail = tokio::spawn(tail_events(
        channel.clone(),
        actions.clone(),
        cancel.clone(),
    ));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            request = requests.recv() => match request {
                Some(r) => {
                    tokio::spawn(serve(channel.clone(), r, actions.clone()));
                }
                None => break,
            },
        }
    }
    cancel.cancel();
    let _ = watch.await;
    let _ = tail.await;
}

/// Keeps an event watch open: each logged change event becomes an action.
/// The cluster watch reports the link's state, so failures here only wait
/// and retry; events logged while no watch was open are not replayed.
async fn tail_events(
    channel: Channel,
    actions: mpsc::UnboundedSender<Action>,
    cancel: CancellationToken,
) {
    let mut client = admin(channel);
    loop {
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.watch_events(v1::WatchEventsRequest { after: None }) => r,
        };
        if let Ok(response) = opened {
            let mut stream = response.into_inner();
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    n = stream.next() => n,
                };
                match next {
                    Some(Ok(event)) => {
                        if actions.send(Action::Change(event)).is_err() {
                            return;
                        }
                    }
                    _ => break,
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(MAX_BACKOFF) => {}
        }
    }
}

/// Keeps a cluster watch open; reports views, and disconnections with retries.
async fn watch(
    channel: Channel,
    actions: mpsc::UnboundedSender<Action>,
    cancel: CancellationToken,
) {
    let mut client = admin(channel);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let error = tokio::select! {
            _ = cancel.cancelled() => return,
            e = watch_once(&mut client, &actions) => e,
        };
        if actions.is_closed() {
            return;
        }
        if error.is_empty() {
            backoff = FIRST_BACKOFF;
        }
        let shown = if error.is_empty() {
            "the cluster watch ended".to_owned()
        } else {
            error
        };
        tracing::warn!(error = %shown, "coordinator unreachable, retrying in {backoff:?}");
        let _ = actions.send(Action::Disconnected(shown));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        let _ = actions.send(Action::Connecting);
    }
}

/// One watch: until it fails. Returns the error ("" when views did arrive
/// before it ended, so the next attempt starts without backoff).
async fn watch_once(
    client: &mut AdminClient<Channel>,
    actions: &mpsc::UnboundedSender<Action>,
) -> String {
    let mut stream = match client.watch_cluster(v1::WatchRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(e) => return status_text(&e),
    };
    loop {
        match tokio::time::timeout(WATCH_SILENCE, stream.next()).await {
            Ok(Some(Ok(view))) => {
                if actions.send(Action::Cluster(view)).is_err() {
                    return String::new();
                }
            }
            Ok(Some(Err(e))) => return status_text(&e),
            Ok(None) => return "the coordinator closed the cluster watch".to_owned(),
            Err(_) => return format!("no cluster view for {WATCH_SILENCE:?}"),
        }
    }
}

/// A status as the operator reads it: its message and, for transport
/// failures, the causes (`tcp connect error: Connection refused`).
fn status_text(status: &tonic::Status) -> String {
    let mut text = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    };
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Carries out one request and reports the outcome.
async fn serve(channel: Channel, request: Request, actions: mpsc::UnboundedSender<Action>) {
    let mut client = admin(channel);
    match request {
        Request::Run(operations) => {
            // In order, one at a time: a bulk resolution must not flood the coordinator.
            for operation in operations {
                let result = run_operation(&mut client, &operation).await;
                if let Err(e) = &result {
                    tracing::warn!(operation = %operation.describe(), error = %e, "operation failed");
                }
                if actions.send(Action::Done { operation, result }).is_err() {
                    return;
                }
            }
        }
        Request::LoadConflicts => {
            let call = client.list_conflicts(v1::ListConflictsRequest {});
            let result = match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                Ok(r) => r
                    .map(|r| r.into_inner().conflicts)
                    .map_err(|e| status_text(&e)),
                Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
            };
            let _ = actions.send(Action::Conflicts(result));
        }
        Request::LoadQueue(region) => {
            let call = client.list_queue(v1::ListQueueRequest {
                region: region.clone(),
                limit: QUEUE_LIMIT,
            });
            let items = match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                Ok(r) => r.map(|r| r.into_inner().items).map_err(|e| status_text(&e)),
                Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
            };
            let _ = actions.send(Action::Queue { region, items });
        }
        Request::LoadContent { hash, endpoints } => {
            let mut data = Err("no region to fetch it from".to_owned());
            for endpoint in &endpoints {
                data = match tokio::time::timeout(REQUEST_TIMEOUT, fetch_content(endpoint, &hash))
                    .await
                {
                    Ok(d) => d,
                    Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
                };
                if data.is_ok() {
                    break;
                }
            }
            let _ = actions.send(Action::Content { hash, data });
        }
        Request::LoadStrm { region, http } => {
            let result = load_strm(&http).await;
            let _ = actions.send(Action::Strm { region, result });
        }
    }
}

/// A region's STRM jobs and recent runs.
async fn load_strm(http: &str) -> Result<StrmSnapshot, String> {
    let api = strm_api::Api::new(http, REQUEST_TIMEOUT).map_err(|e| format!("{e:#}"))?;
    let (jobs, runs) = tokio::join!(api.jobs(), api.runs(STRM_RUNS_LIMIT));
    Ok(StrmSnapshot {
        jobs: jobs.map_err(|e| format!("{e:#}"))?,
        runs: runs.map_err(|e| format!("{e:#}"))?,
    })
}

/// Carries out a STRM operation through the region's HTTP API.
async fn strm_operation(operation: &Operation) -> Result<(), String> {
    let call = async {
        match operation {
            Operation::StrmRun {
                http,
                job,
                strategy,
                ..
            } => {
                let api = strm_api::Api::new(http, REQUEST_TIMEOUT)?;
                api.start_console_run(job, Some(strategy)).await.map(drop)
            }
            Operation::StrmConfirm { http, run, .. } => {
                let api = strm_api::Api::new(http, REQUEST_TIMEOUT)?;
                api.confirm_cleanup(*run).await.map(drop)
            }
            Operation::StrmCancel { http, run, .. } => {
                let api = strm_api::Api::new(http, REQUEST_TIMEOUT)?;
                api.cancel(*run).await
            }
            other => anyhow::bail!("{} is not a STRM operation", other.describe()),
        }
    };
    call.await.map_err(|e| format!("{e:#}"))
}

/// Carries out one operation through the Admin service (STRM operations
/// through the region's HTTP API).
pub async fn run_operation(
    client: &mut AdminClient<Channel>,
    operation: &Operation,
) -> Result<(), String> {
    if matches!(
        operation,
        Operation::StrmRun { .. } | Operation::StrmConfirm { .. } | Operation::StrmCancel { .. }
    ) {
        return strm_operation(operation).await;
    }
    let call = async {
        match operation.clone() {
            Operation::Resolve { id, choice, .. } => client
                .resolve_conflict(v1::ResolveConflictRequest {
                    id,
                    choice: Some(choice.to_wire()),
                })
                .await
                .map(drop),
            Operation::Retry { region, id, .. } => client
                .retry_queue_item(v1::QueueItemRequest { region, id })
                .await
                .map(drop),
            Operation::Drop { region, id, .. } => client
                .drop_queue_item(v1::QueueItemRequest { region, id })
                .await
                .map(drop),
            Operation::Pause(region) => client
                .pause_region(v1::RegionRequest { region })
                .await
                .map(drop),
            Operation::Resume(region) => client
                .resume_region(v1::RegionRequest { region })
                .await
                .map(drop),
            Operation::Resync(region) => client
                .trigger_resync(v1::RegionRequest { region })
                .await
                .map(drop),
            Operation::StrmRun { .. }
            | Operation::StrmConfirm { .. }
            | Operation::StrmCancel { .. } => Err(tonic::Status::internal(
                "a STRM operation goes to the region's HTTP API, not the Admin service",
            )),
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| status_text(&e)),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Fetches a whole content version from a region, verifying the manifest
/// against the content id and every chunk against the manifest.
async fn fetch_content(endpoint: &str, hash: &[u8]) -> Result<Vec<u8>, String> {
    let id: [u8; 32] = hash
        .try_into()
        .map_err(|_| format!("content id of {} bytes, not 32", hash.len()))?;
    let id = ContentId(id);
    let url = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    let channel = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("invalid region endpoint {url:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let mut client =
        ChunksClient::new(channel).max_decoding_message_size(geosync_proto::MAX_MESSAGE_BYTES);
    let wire = client
        .get_manifest(v1::ManifestRequest {
            content_id: hash.to_vec(),
        })
        .await
        .map_err(|e| status_text(&e))?
        .into_inner();
    let manifest = Manifest::try_from(wire).map_err(|e| e.to_string())?;
    manifest.verify_id(&id).map_err(|e| e.to_string())?;
    let count = manifest.chunk_count();
    let mut stream = client
        .fetch_chunks(v1::FetchChunksRequest {
            content_id: hash.to_vec(),
            indexes: (0..count).collect(),
        })
        .await
        .map_err(|e| status_text(&e))?
        .into_inner();
    let mut chunks: Vec<Vec<u8>> = vec![Vec::new(); count as usize];
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| status_text(&e))?;
        let chunk = chunks
            .get_mut(piece.index as usize)
            .ok_or_else(|| format!("chunk {} past the manifest's end", piece.index))?;
        if piece.offset as usize != chunk.len() {
            return Err(format!("chunk {} pieces out of order", piece.index));
        }
        chunk.extend_from_slice(&piece.data);
    }
    let mut data = Vec::with_capacity(manifest.size as usize);
    for (i, chunk) in chunks.iter().enumerate() {
        manifest
            .verify_chunk(i as u32, chunk)
            .map_err(|e| e.to_string())?;
        data.extend_from_slice(chunk);
    }
    Ok(data)
}
