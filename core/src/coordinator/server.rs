//! Running a coordinator: its gRPC services on a listener, and optionally its
//! HTTP surface ([`crate::http`]) on another, until shut down.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

use super::admin::AdminService;
use super::service::CoordinatorService;
use super::{Coordinator, CoordinatorSettings};

/// A running coordinator.
pub struct CoordinatorNode {
    coordinator: Arc<Coordinator>,
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
}

impl CoordinatorNode {
    /// Opens the coordinator's state under `dir` and serves the region-facing
    /// and admin services on `listener`, and HTTP on `http` when given.
    pub async fn start(
        dir: &Path,
        settings: CoordinatorSettings,
        listener: TcpListener,
        http: Option<TcpListener>,
    ) -> Result<CoordinatorNode> {
        let grpc_addr = listener
            .local_addr()
            .map_err(|e| Error::io("local address", "listener", e))?;
        let http_addr = http
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|e| Error::io("local address", "HTTP listener", e))?;
        let dir = dir.to_path_buf();
        let coordinator = tokio::task::spawn_blocking(move || Coordinator::open(&dir, settings))
            .await
            .map_err(|e| Error::Unreachable(format!("opening the coordinator: {e}")))??;
        let coordinator = Arc::new(coordinator);
        let shutdown = CancellationToken::new();
        let server = crate::rpc::server()
            .add_service(
                CoordinatorService::new(coordinator.clone(), shutdown.clone()).into_server(),
            )
            .add_service(AdminService::new(coordinator.clone(), shutdown.clone()).into_server());
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            let incoming = crate::rpc::incoming(listener);
            if let Err(e) = server
                .serve_with_incoming_shutdown(incoming, stop.cancelled())
                .await
            {
                tracing::error!(error = %e, "coordinator gRPC server failed");
            }
        });
        let http = http.map(|listener| {
            tokio::spawn(crate::http::serve_coordinator(
                coordinator.clone(),
                listener,
                shutdown.clone(),
            ))
        });
        tracing::info!(%grpc_addr, ?http_addr, epoch = coordinator.epoch(), "coordinator started");
        Ok(CoordinatorNode {
            coordinator,
            grpc_addr,
            http_addr,
            shutdown,
            server: Some(server),
            http,
        })
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where HTTP is served, when it is.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Stops serving (streams end) and waits for the servers to finish.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(http) = self.http.take() {
            let _ = http.await;
        }
    }
}

impl Drop for CoordinatorNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
