//! The engine's error type: one enum for every failure the engine can report,
//! so each boundary (gRPC, FUSE, HTTP) maps it exhaustively.

use std::path::PathBuf;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded metadata store failed (I/O, corruption, a closed database).
    #[error("metadata store: {0}")]
    Store(#[from] redb::Error),

    /// A file system operation on `path` failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A stored record could not be decoded: the store holds bytes this version cannot read.
    #[error("corrupt {what} record in the store: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },

    /// A stored record could not be encoded (should not happen for well-formed values).
    #[error("could not encode {what} record: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },

    /// A string is not a content id (64 lower-case hex characters).
    #[error("invalid content id {input:?}: expected 64 lower-case hex characters")]
    InvalidContentId { input: String },

    /// The content store knows nothing of this content.
    #[error("content {id} is not in the store")]
    ContentNotFound {
        id: crate::store::content::ContentId,
    },

    /// A chunk index past the end of the content's manifest.
    #[error("chunk {index} is out of range for content {id} ({count} chunks)")]
    ChunkOutOfRange {
        id: crate::store::content::ContentId,
        index: u32,
        count: u32,
    },

    /// A chunk the operation needs is not held locally (cold content): fetch it first.
    #[error("chunk {index} of content {id} is not present locally")]
    ChunkMissing {
        id: crate::store::content::ContentId,
        index: u32,
    },

    /// Chunk data does not match the hash (or length) its manifest records.
    #[error("chunk {index} of content {id} does not match its manifest hash")]
    ChunkHashMismatch {
        id: crate::store::content::ContentId,
        index: u32,
    },

    /// A manifest is internally inconsistent (chunk size, size and chunk count disagree).
    #[error("invalid content manifest: {reason}")]
    InvalidManifest { reason: String },

    /// A received manifest does not hash to the content id it was sent for.
    #[error("manifest hashes to content {actual}, expected content {expected}")]
    ManifestIdMismatch {
        expected: crate::store::content::ContentId,
        actual: crate::store::content::ContentId,
    },

    /// The content store's configuration is unusable.
    #[error("invalid content store config: {reason}")]
    InvalidContentConfig { reason: String },

    /// A directory entry in the store does not hold a valid name.
    #[error("corrupt directory entry in the store: {0}")]
    CorruptEntry(String),

    /// An operator command named a sync queue item that does not exist.
    #[error("no sync queue item with id {0}")]
    QueueItemNotFound(u64),

    /// An operator command cannot apply to a sync queue item while it is being pushed.
    #[error("sync queue item {0} is in flight")]
    QueueItemInFlight(u64),

    /// A change event's encoded payload is too large for the sync queue.
    #[error("sync queue payload of {size} bytes exceeds the maximum of {max} bytes")]
    QueuePayloadTooLarge { size: usize, max: usize },

    /// A sync queue priority outside `0..=3`.
    #[error("invalid sync queue priority {0}: expected 0..=3")]
    QueueInvalidPriority(u8),

    /// No node has that name or id.
    #[error("no such file or directory: {0}")]
    NotFound(String),

    /// The name is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),

    #[error("{0} is not a directory")]
    NotADirectory(String),

    #[error("{0} is a directory")]
    IsADirectory(String),

    #[error("directory {0} is not empty")]
    NotEmpty(String),

    /// A file name that cannot be stored.
    #[error("invalid name: {0}")]
    InvalidName(#[from] crate::model::NameError),

    /// A path that is not absolute or has an empty, `.` or `..` component.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },

    /// A rename that would break the tree.
    #[error("invalid rename: {0}")]
    InvalidRename(String),

    /// Only `user.*` extended attributes are stored.
    #[error("extended attribute {0:?} is not supported: only user.* names up to 255 bytes")]
    XattrNotSupported(String),

    #[error("extended attribute value of {len} bytes exceeds the maximum of {max}")]
    XattrTooLarge { len: usize, max: usize },

    #[error("no extended attribute {0:?}")]
    NoSuchXattr(String),

    /// The node has no open conflict.
    #[error("node {0} has no open conflict")]
    NoSuchConflict(String),

    /// The conflict has no version from that region.
    #[error("conflict on node {node} has no version written in region {region}")]
    NoSuchVersion {
        node: String,
        region: crate::clock::RegionId,
    },

    /// The shared commit this change was part of failed; the change did not land.
    #[error("commit failed, the change did not land: {0}")]
    GroupCommit(String),

    /// A configuration file that cannot be used (the message names the file and key).
    #[error(transparent)]
    Config(Box<crate::config::ConfigError>),

    /// A message from the wire that does not hold what it must.
    #[error("invalid message: {0}")]
    Wire(#[from] crate::wire::WireError),

    /// A peer (coordinator or region) could not be reached or broke off.
    #[error("unreachable: {0}")]
    Unreachable(String),

    /// A region the coordinator does not know (it must register first).
    #[error("unknown region {0}: register first")]
    UnknownRegion(String),

    /// A region an operator paused: its pushes are refused until resumed.
    #[error("region {0} is paused by an operator")]
    RegionPaused(String),

    /// A region acknowledged a sequence the log has not assigned.
    #[error("region {region} acknowledged sequence {acked}, beyond the change log's head {head}")]
    AckBeyondHead {
        region: crate::clock::RegionId,
        acked: u64,
        head: u64,
    },

    /// A change event that cannot be right, whatever the local state.
    #[error("invalid change event for node {node}: {reason}")]
    InvalidEvent { node: String, reason: String },
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! redb_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Store(redb::Error::from(e))
            }
        }
    )*};
}
redb_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<crate::config::ConfigError> for Error {
    fn from(e: crate::config::ConfigError) -> Self {
        // Boxed: configuration errors are large and rare; every Result pays for the largest variant.
        Error::Config(Box::new(e))
    }
}

impl Error {
    /// Wraps an I/O error with the operation and the path it concerned.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
