//! The `geosync` library half: the operator's console (a ratatui TUI), so
//! that tests and benchmarks can drive it; the binary (`src/main.rs`) holds
//! the CLI and the long-running commands.
//!
//! - `tui`: the console: app state, actions, key table, views, event loop;
//! - `strm_api`: the client of a region's STRM API (the CLI and the console use it).

pub mod strm_api;
pub mod tui;
