//! The operator's gRPC service (console and CLI) on the coordinator: the
//! cluster view, conflicts, pause/resume, resync; queue requests are forwarded
//! to the region that owns the queue.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use geosync_proto::v1;
use geosync_proto::v1::admin_client::AdminClient;
use geosync_proto::v1::admin_server::Admin;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::clock::{self, RegionId};
use crate::model::NodeId;
use crate::namespace::{ConflictChoice, ConflictInfo};
use crate::wire::{node_id_from_wire, region_from_wire};

use super::registry::RegionState;
use super::{ClusterView, Coordinator};

/// How often a cluster watch refreshes without log activity (heartbeats and
/// lag seconds change without new events).
pub const WATCH_REFRESH: Duration = Duration::from_secs(1);

type ViewStream = Pin<Box<dyn Stream<Item = Result<v1::ClusterView, Status>> + Send>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<v1::LoggedEvent, Status>> + Send>>;

/// Events read from the log per step of an event watch.
pub const WATCH_EVENTS_BATCH: usize = 256;

/// The Admin service of a coordinator.
#[derive(Clone)]
pub struct AdminService {
    coordinator: Arc<Coordinator>,
    shutdown: CancellationToken,
}

fn region(value: &str) -> Result<RegionId, Status> {
    region_from_wire(value, "region").map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The wire form of a cluster view.
pub fn view_to_wire(view: &ClusterView) -> v1::ClusterView {
    v1::ClusterView {
        epoch: view.epoch.clone(),
        head: view.head,
        leader: Some(v1::LeaderInfo {
            id: view.leader.id.clone(),
            term: view.leader.term,
        }),
        quorum: Some(v1::Quorum {
            total: view.quorum.total as u32,
            healthy: view.quorum.healthy as u32,
            required: view.quorum.required as u32,
            sufficient: view.quorum.sufficient,
        }),
        regions: view
            .regions
            .iter()
            .map(|r| v1::RegionStatus {
                id: r.record.id.to_string(),
                state: match r.state {
                    RegionState::Healthy => v1::RegionState::Healthy,
                    RegionState::Degraded => v1::RegionState::Degraded,
                    RegionState::Offline => v1::RegionState::Offline,
                } as i32,
                acked: r.acked,
                lag_events: r.lag.events,
                lag_seconds: r.lag.seconds,
                queue: Some(v1::QueueStats {
                    pending: r.record.queue.pending,
                    pending_by_priority: Vec::new(),
                    inflight: r.record.queue.inflight,
                    retrying: r.record.queue.retrying,
                    dead: r.record.queue.dead,
                    oldest_age_ms: None,
                }),
                clock_drift_ms: r.record.clock_drift_ms,
                last_heartbeat_ms: r.record.last_seen_ms,
                paused: r.record.paused,
                grpc_endpoint: r.record.grpc_endpoint.clone(),
                http_endpoint: r.record.http_endpoint.clone(),
            })
            .collect(),
        conflicts_open: view.conflicts_open,
        events_total: view.head,
    }
}

/// The wire form of an open conflict; its id is the node id in hex.
pub fn conflict_to_wire(c: &ConflictInfo) -> v1::Conflict {
    v1::Conflict {
        id: c.node.to_string(),
        path: String::from_utf8_lossy(&c.path).into_owned(),
        strategy: c.strategy.name().to_owned(),
        detected_at_ms: c.detected_ms,
        versions: c
            .versions
            .iter()
            .map(|v| v1::ConflictVersion {
                region: v.write.stamp.region.to_string(),
                size: v.meta.size,
                hash: v.meta.content.map(|c| c.id.0.to_vec()).unwrap_or_default(),
                hlc: Some(v1::Timestamp::from(&v.write.stamp)),
                mtime_ns: v.meta.mtime_ns,
                deleted: v.meta.deleted,
            })
            .collect(),
        node: c.node.to_bytes().to_vec(),
    }
}

/// The operator's form of a logged event, with the node's path now.
fn logged_event(c: &Coordinator, e: &crate::model::ChangeEvent) -> v1::LoggedEvent {
    let path = match c.path_of(e.node) {
        Ok(p) => String::from_utf8_lossy(&p).into_owned(),
        Err(_) => e.node.to_string(),
    };
    v1::LoggedEvent {
        seq: e.seq.unwrap_or(0),
        op: v1::ChangeOp::from(e.op) as i32,
        path,
        origin: e.origin.to_string(),
        hlc: Some(v1::Timestamp::from(&e.version.write.stamp)),
        size: e.version.meta.size,
    }
}

/// A conflict id as the CLI and console show it: the node id in hex.
pub fn parse_conflict_id(id: &str) -> Result<NodeId, Status> {
    u128::from_str_radix(id, 16)
        .ok()
        .filter(|_| id.len() == 32)
        .map(NodeId)
        .ok_or_else(|| Status::invalid_argument(format!("conflict id {id:?} is not 32 hex digits")))
}

impl AdminService {
    pub fn new(coordinator: Arc<Coordinator>, shutdown: CancellationToken) -> Self {
        AdminService {
            coordinator,
            shutdown,
        }
    }

    pub fn into_server(self) -> v1::admin_server::AdminServer<Self> {
        v1::admin_server::AdminServer::new(self)
            .max_decoding_message_size(crate::rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::rpc::MAX_MESSAGE_BYTES)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Coordinator) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        super::service::on_blocking_pool(&self.coordinator, f).await
    }

    /// An Admin client for the region that owns a queue.
    async fn region_admin(
        &self,
        id: &RegionId,
    ) -> Result<AdminClient<tonic::transport::Channel>, Status> {
        let endpoint = self
            .blocking({
                let id = id.clone();
                move |c| {
                    c.cluster(clock::system_ms())?
                        .regions
                        .into_iter()
                        .find(|r| r.record.id == id)
                        .map(|r| r.record.grpc_endpoint)
                        .ok_or_else(|| crate::Error::UnknownRegion(id.to_string()))
                }
            })
            .await?;
        let channel = crate::rpc::endpoint(&endpoint)
            .map_err(|e| Status::internal(format!("region {id} endpoint {endpoint}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| {
                Status::unavailable(format!("region {id} at {endpoint} is unreachable: {e}"))
            })?;
        Ok(AdminClient::new(channel))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    type WatchClusterStream = ViewStream;

    async fn watch_cluster(
        &self,
        _request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchClusterStream>, Status> {
        let c = self.coordinator.clone();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut head = c.watch_head();
            loop {
                let item = super::service::on_blocking_pool(&c, |c| c.cluster(clock::system_ms()))
                    .await
                    .map(|view| view_to_wire(&view));
                if tx.send(item).await.is_err() {
                    return;
                }
                // Cancel-safe: each branch only waits.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = head.changed() => {}
                    _ = tokio::time::sleep(WATCH_REFRESH) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_cluster(
        &self,
        _request: Request<v1::WatchRequest>,
    ) -> Result<Response<v1::ClusterView>, Status> {
        let view = self.blocking(|c| c.cluster(clock::system_ms())).await?;
        Ok(Response::new(view_to_wire(&view)))
    }

    async fn list_conflicts(
        &self,
        _request: Request<v1::ListConflictsRequest>,
    ) -> Result<Response<v1::ListConflictsReply>, Status> {
        let conflicts = self.blocking(|c| c.conflicts()).await?;
        Ok(Response::new(v1::ListConflictsReply {
            conflicts: conflicts.iter().map(conflict_to_wire).collect(),
        }))
    }

    async fn resolve_conflict(
        &self,
        request: Request<v1::ResolveConflictRequest>,
    ) -> Result<Response<v1::ResolveConflictReply>, Status> {
        use v1::resolve_conflict_request::Choice;
        let r = request.into_inner();
        let node = parse_conflict_id(&r.id)?;
        let choice = match r.choice {
            Some(Choice::KeepRegion(name)) => ConflictChoice::Keep(region(&name)?),
            Some(Choice::KeepBoth(true)) => ConflictChoice::KeepBoth,
            Some(Choice::Merge(true)) => ConflictChoice::Merge,
            _ => {
                return Err(Status::invalid_argument(
                    "choose keep_region, keep_both or merge",
                ));
            }
        };
        self.blocking(move |c| c.resolve_conflict(node, choice))
            .await?;
        Ok(Response::new(v1::ResolveConflictReply {}))
    }

    async fn list_queue(
        &self,
        request: Request<v1::ListQueueRequest>,
    ) -> Result<Response<v1::ListQueueReply>, Status> {
        let r = request.into_inner();
        let id = region(&r.region)?;
        let mut client = self.region_admin(&id).await?;
        client.list_queue(r).await
    }

    async fn retry_queue_item(
        &self,
        request: Request<v1::QueueItemRequest>,
    ) -> Result<Response<v1::RetryQueueItemReply>, Status> {
        let r = request.into_inner();
        let id = region(&r.region)?;
        self.region_admin(&id).await?.retry_queue_item(r).await
    }

    async fn drop_queue_item(
        &self,
        request: Request<v1::QueueItemRequest>,
    ) -> Result<Response<v1::DropQueueItemReply>, Status> {
        let r = request.into_inner();
        let id = region(&r.region)?;
        self.region_admin(&id).await?.drop_queue_item(r).await
    }

    async fn pause_region(
        &self,
        request: Request<v1::RegionRequest>,
    ) -> Result<Response<v1::PauseRegionReply>, Status> {
        let id = region(&request.into_inner().region)?;
        self.blocking(move |c| c.set_paused(&id, true)).await?;
        Ok(Response::new(v1::PauseRegionReply {}))
    }

    async fn resume_region(
        &self,
        request: Request<v1::RegionRequest>,
    ) -> Result<Response<v1::ResumeRegionReply>, Status> {
        let id = region(&request.into_inner().region)?;
        self.blocking(move |c| c.set_paused(&id, false)).await?;
        Ok(Response::new(v1::ResumeRegionReply {}))
    }

    async fn trigger_resync(
        &self,
        request: Request<v1::RegionRequest>,
    ) -> Result<Response<v1::TriggerResyncReply>, Status> {
        let id = region(&request.into_inner().region)?;
        self.blocking(move |c| c.request_resync(&id)).await?;
        Ok(Response::new(v1::TriggerResyncReply {}))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let c = self.coordinator.clone();
        let shutdown = self.shutdown.clone();
        let mut next = request.into_inner().after.unwrap_or_else(|| c.head());
        let (tx, rx) = mpsc::channel(WATCH_EVENTS_BATCH);
        tokio::spawn(async move {
            let mut head = c.watch_head();
            loop {
                let batch = super::service::on_blocking_pool(&c, move |c| {
                    let events = c.events_after(next, WATCH_EVENTS_BATCH)?;
                    Ok(events
                        .iter()
                        .map(|e| logged_event(c, e))
                        .collect::<Vec<_>>())
                })
                .await;
                let batch = match batch {
                    Ok(b) => b,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let full = batch.len() == WATCH_EVENTS_BATCH;
                for event in batch {
                    next = next.max(event.seq);
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                // Cancel-safe: each branch only waits.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    changed = head.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Parses a node id from wire bytes (used by clients of this service).
pub fn node_from_wire(bytes: &[u8]) -> Result<NodeId, Status> {
    node_id_from_wire(bytes, "node").map_err(|e| Status::invalid_argument(e.to_string()))
}
