//! The `geosync` library half: the operator's console (a ratatui TUI), so
//! that tests and benchmarks can drive it; the binary (`src/main.rs`) holds
//! the CLI and the long-running commands.
//!
//! - `tui`: the console: app state, actions, key table, views, event loop.

pub mod tui;
