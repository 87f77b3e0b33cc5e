//! The FUSE adapter over `geosync-core`'s namespace: inode and handle tables,
//! the read and write paths, kernel cache invalidation.
//!
//! The adapter arrives with the FUSE work; until then this crate is empty.
#![forbid(unsafe_code)]
