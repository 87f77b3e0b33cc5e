//! The Admin service on a region: its own sync queue (list, retry, drop). The
//! coordinator forwards operators' queue requests here; cluster-wide requests
//! are the coordinator's and are refused with a pointer to it.

use std::sync::Arc;

use geosync_proto::v1;
use geosync_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use crate::Engine;
use crate::clock::{self, RegionId};
use crate::model::ChangeEvent;
use crate::wire::queue_item_to_wire;

/// The most queue items one list returns.
pub const MAX_LIST: usize = 10_000;

/// A region's Admin service.
#[derive(Clone)]
pub struct RegionAdmin {
    engine: Arc<Engine>,
    region: RegionId,
}

impl RegionAdmin {
    pub fn new(engine: Arc<Engine>, region: RegionId) -> Self {
        RegionAdmin { engine, region }
    }

    pub fn into_server(self) -> v1::admin_server::AdminServer<Self> {
        v1::admin_server::AdminServer::new(self)
            .max_decoding_message_size(crate::rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::rpc::MAX_MESSAGE_BYTES)
    }

    fn check_region(&self, region: &str) -> Result<(), Status> {
        if !region.is_empty() && region != self.region.as_str() {
            return Err(Status::invalid_argument(format!(
                "this is region {}, not {region}",
                self.region
            )));
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| Status::internal(format!("region task failed: {e}")))?
            .map_err(Status::from)
    }
}

fn coordinators_job() -> Status {
    Status::failed_precondition("served by the coordinator: ask it, not a region")
}

#[tonic::async_trait]
impl Admin for RegionAdmin {
    type WatchClusterStream = tokio_stream::Empty<Result<v1::ClusterView, Status>>;

    async fn watch_cluster(
        &self,
        _request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchClusterStream>, Status> {
        Err(coordinators_job())
    }

    async fn get_cluster(
        &self,
        _request: Request<v1::WatchRequest>,
    ) -> Result<Response<v1::ClusterView>, Status> {
        Err(coordinators_job())
    }

    async fn list_conflicts(
        &self,
        _request: Request<v1::ListConflictsRequest>,
    ) -> Result<Response<v1::ListConflictsReply>, Status> {
        Err(coordinators_job())
    }

    async fn resolve_conflict(
        &self,
        _request: Request<v1::ResolveConflictRequest>,
    ) -> Result<Response<v1::ResolveConflictReply>, Status> {
        Err(coordinators_job())
    }

    async fn list_queue(
        &self,
        request: Request<v1::ListQueueRequest>,
    ) -> Result<Response<v1::ListQueueReply>, Status> {
        let r = request.into_inner();
        self.check_region(&r.region)?;
        let limit = if r.limit == 0 {
            MAX_LIST
        } else {
            (r.limit as usize).min(MAX_LIST)
        };
        let items = self
            .blocking(move |engine| {
                let items = engine.queue.list(Some(limit))?;
                Ok(items
                    .iter()
                    .map(|item| {
                        let path = match ChangeEvent::decode(&item.payload) {
                            Ok(event) => engine
                                .namespace
                                .path_of(event.node)
                                .map(|p| String::from_utf8_lossy(&p).into_owned())
                                .unwrap_or_else(|_| event.version.meta.name.to_string()),
                            Err(_) => String::new(),
                        };
                        queue_item_to_wire(item, &path)
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(v1::ListQueueReply { items }))
    }

    async fn retry_queue_item(
        &self,
        request: Request<v1::QueueItemRequest>,
    ) -> Result<Response<v1::RetryQueueItemReply>, Status> {
        let r = request.into_inner();
        self.check_region(&r.region)?;
        self.blocking(move |e| {
            e.queue.retry_now(r.id, clock::system_ms())?;
            e.queue.notify_enqueued();
            Ok(())
        })
        .await?;
        Ok(Response::new(v1::RetryQueueItemReply {}))
    }

    async fn drop_queue_item(
        &self,
        request: Request<v1::QueueItemRequest>,
    ) -> Result<Response<v1::DropQueueItemReply>, Status> {
        let r = request.into_inner();
        self.check_region(&r.region)?;
        let item = self.blocking(move |e| e.queue.drop_item(r.id)).await?;
        tracing::warn!(region = %self.region, item = item.id, "queue item dropped by an operator");
        Ok(Response::new(v1::DropQueueItemReply {}))
    }

    async fn pause_region(
        &self,
        _request: Request<v1::RegionRequest>,
    ) -> Result<Response<v1::PauseRegionReply>, Status> {
        Err(coordinators_job())
    }

    async fn resume_region(
        &self,
        _request: Request<v1::RegionRequest>,
    ) -> Result<Response<v1::ResumeRegionReply>, Status> {
        Err(coordinators_job())
    }

    async fn trigger_resync(
        &self,
        _request: Request<v1::RegionRequest>,
    ) -> Result<Response<v1::TriggerResyncReply>, Status> {
        Err(coordinators_job())
    }

    type WatchEventsStream = tokio_stream::Empty<Result<v1::LoggedEvent, Status>>;

    async fn watch_events(
        &self,
        _request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(coordinators_job())
    }
}
