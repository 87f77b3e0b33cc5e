//! The coordinator's region-facing gRPC service: a thin adapter that checks
//! input, calls [`Coordinator`], and answers. Blocking store work runs on the
//! blocking pool so the async runtime keeps serving streams.

use std::pin::Pin;
use std::sync::Arc;

use geosync_proto::v1;
use geosync_proto::v1::coordinator_server::Coordinator as CoordinatorRpc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::clock::{self, RegionId};
use crate::model::{ChangeEvent, NodeId};
use crate::wire::{content_id_from_wire, region_from_wire};

use super::registry::QueueReport;
use super::{Coordinator, PushOutcome, Welcome};

/// The most events one push may carry (a larger batch is refused whole).
pub const MAX_PUSH_EVENTS: usize = 10_000;

/// Events sent per read of the log while a subscriber catches up.
const SUBSCRIBE_BATCH: usize = 512;

/// Nodes per snapshot page.
const SNAPSHOT_PAGE: usize = 256;

/// Messages a stream may have in flight before its producer waits.
const STREAM_BUFFER: usize = 64;

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::ChangeEvent, Status>> + Send>>;
type SnapshotStream = Pin<Box<dyn Stream<Item = Result<v1::SnapshotChunk, Status>> + Send>>;

/// The gRPC face of a [`Coordinator`].
#[derive(Clone)]
pub struct CoordinatorService {
    coordinator: Arc<Coordinator>,
    /// Ends the subscription streams when the server shuts down.
    shutdown: CancellationToken,
}

impl CoordinatorService {
    pub fn new(coordinator: Arc<Coordinator>, shutdown: CancellationToken) -> Self {
        CoordinatorService {
            coordinator,
            shutdown,
        }
    }

    /// The tonic server for this service, with geosync's message limits.
    pub fn into_server(self) -> v1::coordinator_server::CoordinatorServer<Self> {
        v1::coordinator_server::CoordinatorServer::new(self)
            .max_decoding_message_size(crate::rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::rpc::MAX_MESSAGE_BYTES)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Coordinator) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        on_blocking_pool(&self.coordinator, f).await
    }
}

/// Runs blocking coordinator work (the store) off the async threads.
pub(crate) async fn on_blocking_pool<T: Send + 'static>(
    coordinator: &Arc<Coordinator>,
    f: impl FnOnce(&Coordinator) -> crate::Result<T> + Send + 'static,
) -> Result<T, Status> {
    let c = coordinator.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|e| Status::internal(format!("coordinator task failed: {e}")))?
        .map_err(Status::from)
}

fn region(value: &str) -> Result<RegionId, Status> {
    region_from_wire(value, "region").map_err(|e| Status::invalid_argument(e.to_string()))
}

fn welcome_reply(w: &Welcome) -> v1::HeartbeatReply {
    v1::HeartbeatReply {
        epoch: w.epoch.clone(),
        head: w.head,
        wall_ms: clock::system_ms(),
        paused: w.paused,
        resync: w.resync,
    }
}

fn leader(w: &Welcome) -> v1::LeaderInfo {
    v1::LeaderInfo {
        id: w.leader.id.clone(),
        term: w.leader.term,
    }
}

fn outcome(o: PushOutcome) -> v1::EventOutcome {
    use v1::event_outcome::Status as S;
    let (status, seq, error) = match o {
        PushOutcome::Accepted { seq } => (S::Accepted, Some(seq), String::new()),
        PushOutcome::Duplicate => (S::Duplicate, None, String::new()),
        PushOutcome::ConflictResolved { seq } => (S::ConflictResolved, Some(seq), String::new()),
        PushOutcome::ConflictOpen { seq } => (S::ConflictOpen, Some(seq), String::new()),
        PushOutcome::Rejected { reason } => (S::Rejected, None, reason),
    };
    v1::EventOutcome {
        status: status as i32,
        seq,
        error,
    }
}

#[tonic::async_trait]
impl CoordinatorRpc for CoordinatorService {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterReply>, Status> {
        let r = request.into_inner();
        let id = region(&r.region)?;
        let w = self
            .blocking(move |c| {
                c.register(&id, &r.grpc_endpoint, &r.http_endpoint, clock::system_ms())
            })
            .await?;
        Ok(Response::new(v1::RegisterReply {
            epoch: w.epoch.clone(),
            head: w.head,
            leader: Some(leader(&w)),
            heartbeat_interval_ms: w.heartbeat_interval.as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatReply>, Status> {
        let r = request.into_inner();
        let id = region(&r.region)?;
        let q = r.queue.unwrap_or_default();
        let queue = QueueReport {
            pending: q.pending,
            inflight: q.inflight,
            retrying: q.retrying,
            dead: q.dead,
        };
        let w = self
            .blocking(move |c| c.heartbeat(&id, r.wall_ms, queue, clock::system_ms()))
            .await?;
        Ok(Response::new(welcome_reply(&w)))
    }

    async fn push(
        &self,
        request: Request<v1::PushRequest>,
    ) -> Result<Response<v1::PushReply>, Status> {
        let r = request.into_inner();
        let id = region(&r.region)?;
        if r.events.len() > MAX_PUSH_EVENTS {
            return Err(Status::invalid_argument(format!(
                "push of {} events exceeds the maximum of {MAX_PUSH_EVENTS}",
                r.events.len()
            )));
        }
        // Events that do not even decode are refused one by one, like the
        // ones the coordinator refuses after looking at them.
        let mut decoded: Vec<Result<ChangeEvent, String>> = Vec::with_capacity(r.events.len());
        for e in r.events {
            decoded.push(ChangeEvent::try_from(e).map_err(|e| e.to_string()));
        }
        let valid: Vec<ChangeEvent> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok().cloned())
            .collect();
        let pushed = self
            .blocking(move |c| c.push(&id, valid, clock::system_ms()))
            .await?;
        let mut pushed = pushed.into_iter();
        let outcomes = decoded
            .into_iter()
            .map(|d| match d {
                Ok(_) => pushed.next().map(outcome).unwrap_or_else(|| {
                    outcome(PushOutcome::Rejected {
                        reason: "no outcome".into(),
                    })
                }),
                Err(reason) => outcome(PushOutcome::Rejected { reason }),
            })
            .collect();
        Ok(Response::new(v1::PushReply { outcomes }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = request.into_inner();
        let id = region(&r.region)?;
        let c = self.coordinator.clone();
        if !r.epoch.is_empty() && r.epoch != c.epoch() {
            return Err(Status::failed_precondition(format!(
                "epoch {} is not the log's epoch {}: resync from a snapshot",
                r.epoch,
                c.epoch()
            )));
        }
        if r.after_seq > c.head() {
            return Err(Status::out_of_range(format!(
                "sequence {} is beyond the log's head {}",
                r.after_seq,
                c.head()
            )));
        }
        tracing::debug!(region = %id, after = r.after_seq, "subscribe");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut head = c.watch_head();
            let mut last = r.after_seq;
            loop {
                let batch = match on_blocking_pool(&c, move |c| {
                    c.events_after(last, SUBSCRIBE_BATCH)
                })
                .await
                {
                    Ok(batch) => batch,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    // Cancel-safe: `wait_for` checks the current head first.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                        changed = head.wait_for(|&h| h > last) => if changed.is_err() { return },
                    }
                    continue;
                }
                for event in batch {
                    last = event.seq.unwrap_or(last);
                    if tx.send(Ok(v1::ChangeEvent::from(&event))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ack(
        &self,
        request: Request<v1::AckRequest>,
    ) -> Result<Response<v1::AckReply>, Status> {
        let r = request.into_inner();
        let id = region(&r.region)?;
        self.blocking(move |c| c.ack(&id, r.seq, clock::system_ms()))
            .await?;
        Ok(Response::new(v1::AckReply {}))
    }

    async fn get_sync_status(
        &self,
        _request: Request<v1::SyncStatusRequest>,
    ) -> Result<Response<v1::SyncStatus>, Status> {
        let (epoch, versions, head) = self.blocking(|c| c.sync_status()).await?;
        let versions = versions
            .into_iter()
            .map(|(r, seq)| (r.to_string(), seq))
            .collect();
        Ok(Response::new(v1::SyncStatus {
            epoch,
            versions,
            head,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<v1::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let id = region(&request.into_inner().region)?;
        tracing::info!(region = %id, "snapshot for a full resync");
        let c = self.coordinator.clone();
        // The head first: events after it may already be in the pages, and the
        // region re-applies them from the log afterwards (harmless duplicates).
        let head = c.head();
        let epoch = c.epoch().to_owned();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut after: Option<NodeId> = None;
            loop {
                let (events, next) =
                    match on_blocking_pool(&c, move |c| c.snapshot(after, SNAPSHOT_PAGE)).await {
                        Ok(page) => page,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    };
                let chunk = v1::SnapshotChunk {
                    epoch: epoch.clone(),
                    head_at_snapshot: head,
                    events: events.iter().map(v1::ChangeEvent::from).collect(),
                };
                let last = next.is_none() || events.is_empty();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    sent = tx.send(Ok(chunk)) => if sent.is_err() { return },
                }
                if last {
                    return;
                }
                after = next;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn locate(
        &self,
        request: Request<v1::LocateRequest>,
    ) -> Result<Response<v1::LocateReply>, Status> {
        let r = request.into_inner();
        let id = content_id_from_wire(&r.content_id, "content_id")
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let locations = self.blocking(move |c| c.locate(&id)).await?;
        Ok(Response::new(v1::LocateReply {
            locations: locations
                .into_iter()
                .map(|(region, grpc_endpoint)| v1::ContentLocation {
                    region: region.to_string(),
                    grpc_endpoint,
                    complete: true,
                })
                .collect(),
        }))
    }
}
