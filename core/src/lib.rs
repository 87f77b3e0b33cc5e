//! The geosync engine.
//!
//! - [`clock`]: vector clocks (causality) and the hybrid logical clock (order).
//! - [`model`]: node ids, names, node metadata, versions and change events.
//! - [`store`]: the embedded metadata store (redb) and the content store.
//! - [`queue`]: the persisted sync queue of outgoing change events.
//! - [`conflict`]: conflict detection and the resolution strategies.
//! - [`namespace`]: file system operations and the application of remote events.
//! - [`config`]: the TOML configuration of coordinators and regions.
//! - [`coordinator`]: the change log, conflicts, regions and quorum.
//! - [`wire`]: conversions to and from the gRPC wire types.
//! - [`node`]: the region runtime and the services a region offers.
//! - [`strm`]: STRM jobs: media libraries to `.strm` files in the namespace, run queue, webhook.
//! - [`http`]: the HTTP surface (metrics, sync status, quorum, health) of every process.
//! - [`rpc`]: the gRPC boundary: error statuses and message limits.
//! - [`Engine`]: a region's local state (all of the above) opened from one directory.
#![deny(unsafe_code)]

pub mod clock;
pub mod config;
pub mod conflict;
pub mod coordinator;
mod engine;
mod error;
pub mod http;
pub mod model;
pub mod namespace;
pub mod node;
pub mod queue;
pub mod rpc;
pub mod store;
pub mod strm;
pub mod wire;

pub use engine::{Engine, EngineConfig};
pub use error::{Error, Result};
