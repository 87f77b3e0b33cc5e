//! geosync's wire format: the gRPC services and messages between regions, the
//! coordinator and the console. Wire types only; conversions to and from the
//! engine's types live in `geosync-core`.
//!
//! The services arrive with the replication work; until then this crate is empty.
#![forbid(unsafe_code)]
