//! The gRPC boundary: how engine errors become statuses, and how servers and
//! clients are configured (message size limits).

use tonic::{Code, Status};

use crate::Error;

pub use geosync_proto::MAX_MESSAGE_BYTES;

impl From<Error> for Status {
    /// The one mapping from engine errors to gRPC codes. Bad input is
    /// `INVALID_ARGUMENT` (or the more precise code), never `INTERNAL`; storage
    /// failures are `INTERNAL` and say so.
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::Store(_) | Error::Io { .. } | Error::Decode { .. } | Error::Encode { .. } => {
                Code::Internal
            }
            Error::CorruptEntry(_) | Error::GroupCommit(_) => Code::Internal,
            Error::InvalidContentConfig { .. } | Error::Config(_) => Code::Internal,
            Error::InvalidContentId { .. }
            | Error::InvalidManifest { .. }
            | Error::ManifestIdMismatch { .. }
            | Error::ChunkHashMismatch { .. }
            | Error::QueuePayloadTooLarge { .. }
            | Error::QueueInvalidPriority(_)
            | Error::InvalidName(_)
            | Error::InvalidPath { .. }
            | Error::InvalidRename(_)
            | Error::XattrNotSupported(_)
            | Error::XattrTooLarge { .. }
            | Error::Wire(_)
            | Error::InvalidEvent { .. } => Code::InvalidArgument,
            Error::ContentNotFound { .. }
            | Error::ChunkMissing { .. }
            | Error::QueueItemNotFound(_)
            | Error::NotFound(_)
            | Error::NoSuchXattr(_)
            | Error::NoSuchConflict(_)
            | Error::NoSuchVersion { .. }
            | Error::UnknownRegion(_) => Code::NotFound,
            Error::ChunkOutOfRange { .. } | Error::AckBeyondHead { .. } => Code::OutOfRange,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Unreachable(_) => Code::Unavailable,
            Error::NotADirectory(_)
            | Error::IsADirectory(_)
            | Error::NotEmpty(_)
            | Error::QueueItemInFlight(_)
            | Error::RegionPaused(_) => Code::FailedPrecondition,
        };
        Status::new(code, e.to_string())
    }
}

/// HTTP/2 flow-control windows: a whole default chunk (4 MiB) may be in flight
/// on one stream, so a sender never stalls in the middle of a chunk.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// Larger frames: fewer per chunk (HTTP/2 allows up to 16 MiB - 1).
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// A gRPC server configured for geosync's traffic.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
}

/// The connections accepted on `listener`, with Nagle's algorithm off: small
/// replies (a push outcome, an ack) must not wait for a delayed ACK. (The
/// server builder's own `tcp_nodelay` does not reach sockets accepted from a
/// listener handed in.)
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// An endpoint to another geosync process, configured like [`server`].
pub fn endpoint(url: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES))
}
