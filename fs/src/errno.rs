//! The errno a file system call returns for each engine error.

use fuser::Errno;
use geosync_core::Error;
use geosync_core::model::NameError;

/// Maps an engine error to the errno POSIX programs expect; unexpected errors
/// are logged (the caller only sees `EIO`).
pub fn errno(e: &Error) -> Errno {
    match e {
        Error::NotFound(_) | Error::NoSuchConflict(_) | Error::NoSuchVersion { .. } => {
            Errno::ENOENT
        }
        Error::AlreadyExists(_) => Errno::EEXIST,
        Error::NotADirectory(_) => Errno::ENOTDIR,
        Error::IsADirectory(_) => Errno::EISDIR,
        Error::NotEmpty(_) => Errno::ENOTEMPTY,
        Error::InvalidName(NameError::TooLong { .. }) => Errno::ENAMETOOLONG,
        Error::InvalidName(_) | Error::InvalidPath { .. } | Error::InvalidRename(_) => {
            Errno::EINVAL
        }
        Error::XattrNotSupported(_) => Errno::EOPNOTSUPP,
        Error::XattrTooLarge { .. } => Errno::E2BIG,
        Error::NoSuchXattr(_) => Errno::ENODATA,
        other => {
            tracing::warn!(error = %other, "file system call failed");
            Errno::EIO
        }
    }
}
