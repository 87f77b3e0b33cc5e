//! `geosync`: the one binary (regions, coordinator, demo cluster, operator CLI
//! and console). Subcommands arrive with the replication and console work.

use clap::Parser;

/// A geo-replicated sync file system.
#[derive(Parser, Debug)]
#[command(name = "geosync", version, about)]
struct Cli {}

fn main() {
    Cli::parse();
}
