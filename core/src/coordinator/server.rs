//! Running a coordinator: its gRPC services on a listener until shut down.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

use super::admin::AdminService;
use super::service::CoordinatorService;
use super::{Coordinator, CoordinatorSettings};

/// A running coordinator.
pub struct CoordinatorNode {
    coordinator: Arc<Coordinator>,
    grpc_addr: SocketAddr,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl CoordinatorNode {
    /// Opens the coordinator's state under `dir` and serves the region-facing
    /// and admin services on `listener`.
    pub async fn start(
        dir: &Path,
        settings: CoordinatorSettings,
        listener: TcpListener,
    ) -> Result<CoordinatorNode> {
        let grpc_addr = listener
            .local_addr()
            .map_err(|e| Error::io("local address", "listener", e))?;
        let dir = dir.to_path_buf();
        let coordinator = tokio::task::spawn_blocking(move || Coordinator::open(&dir, settings))
            .await
            .map_err(|e| Error::Unreachable(format!("opening the coordinator: {e}")))??;
        let coordinator = Arc::new(coordinator);
        let shutdown = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(
                CoordinatorService::new(coordinator.clone(), shutdown.clone()).into_server(),
            )
            .add_service(AdminService::new(coordinator.clone(), shutdown.clone()).into_server());
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            if let Err(e) = server
                .serve_with_incoming_shutdown(incoming, stop.cancelled())
                .await
            {
                tracing::error!(error = %e, "coordinator gRPC server failed");
            }
        });
        tracing::info!(%grpc_addr, epoch = coordinator.epoch(), "coordinator started");
        Ok(CoordinatorNode {
            coordinator,
            grpc_addr,
            shutdown,
            server: Some(server),
        })
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Stops serving (streams end) and waits for the server to finish.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for CoordinatorNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
