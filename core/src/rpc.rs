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
