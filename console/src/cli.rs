//! The command line: every subcommand and flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The coordinator URL when none is given.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7400";

/// The region URL when none is given (the first demo region).
pub const DEFAULT_REGION: &str = "http://127.0.0.1:7410";

/// A geo-replicated sync file system.
#[derive(Parser, Debug)]
#[command(name = "geosync", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a whole cluster on this machine: one coordinator and several regions.
    Demo(DemoArgs),
    /// Run a coordinator.
    Coordinator(CoordinatorArgs),
    /// Run a region.
    Region(RegionArgs),
    /// Show the cluster: leader, quorum, regions, lag and queues.
    Status(StatusArgs),
    /// List or resolve conflicts.
    #[command(subcommand)]
    Conflicts(ConflictsCommand),
    /// List, retry or drop sync queue items of a region.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// List a directory of a region's namespace.
    Ls(FileArgs),
    /// Print a file of a region's namespace.
    Cat(FileArgs),
    /// Write a file into a region's namespace (from a file or standard input).
    Put(PutArgs),
    /// Remove a file or directory from a region's namespace.
    Rm(RmArgs),
    /// Create a directory in a region's namespace.
    Mkdir(MkdirArgs),
    /// STRM jobs: list them, run them, follow runs, confirm held cleanups.
    #[command(subcommand)]
    Strm(crate::strm::StrmCommand),
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the cluster keeps its data.
    #[arg(long, default_value = "./geosync-demo")]
    pub dir: PathBuf,
    /// The regions to start, in port order.
    #[arg(long, value_delimiter = ',', default_value = "eu,us,ap")]
    pub regions: Vec<String>,
    /// Run without the console (for scripts and tests).
    #[arg(long)]
    pub headless: bool,
    /// The coordinator's gRPC port; regions use base+10, base+11, ...; HTTP is +1000.
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
}

#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// A TOML configuration file (`--print-config` shows an example).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The gRPC address to listen on (overrides the file).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// The data directory (overrides the file).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print an example configuration file and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Args, Debug)]
pub struct RegionArgs {
    /// A TOML configuration file (`--print-config` shows an example).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The region id (overrides the file).
    #[arg(long)]
    pub region: Option<String>,
    /// The gRPC address to listen on (overrides the file).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// The coordinator URL (overrides the file).
    #[arg(long, env = "GEOSYNC_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The data directory (overrides the file).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print an example configuration file and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Args, Debug)]
pub struct CoordinatorUrl {
    /// The coordinator's URL.
    #[arg(long, env = "GEOSYNC_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    pub coordinator: String,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ConflictsCommand {
    /// List open conflicts.
    List {
        #[command(flatten)]
        coordinator: CoordinatorUrl,
        #[arg(long)]
        json: bool,
    },
    /// Resolve a conflict: keep one region's version, or both.
    Resolve {
        /// The conflict id (from `conflicts list`).
        id: String,
        /// A region id, or `both` to keep every version.
        #[arg(long)]
        keep: String,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// List a region's sync queue (all regions when none is given).
    List {
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
    },
    /// Make an item due now (also a dead one).
    Retry {
        id: u64,
        #[arg(long)]
        region: String,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
    },
    /// Drop an item for good.
    Drop {
        id: u64,
        #[arg(long)]
        region: String,
        /// Confirm: a dropped change never reaches the other regions.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
    },
}

#[derive(Args, Debug)]
pub struct RegionUrl {
    /// The region's URL (its gRPC endpoint).
    #[arg(long, env = "GEOSYNC_REGION", default_value = DEFAULT_REGION)]
    pub region: String,
}

#[derive(Args, Debug)]
pub struct FileArgs {
    #[command(flatten)]
    pub region: RegionUrl,
    /// An absolute path in the namespace.
    pub path: String,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    pub region: RegionUrl,
    /// An absolute path in the namespace.
    pub path: String,
    /// A local file to upload (standard input when absent or `-`).
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[command(flatten)]
    pub region: RegionUrl,
    pub path: String,
    /// Remove a directory and everything in it.
    #[arg(short, long)]
    pub recursive: bool,
}

#[derive(Args, Debug)]
pub struct MkdirArgs {
    #[command(flatten)]
    pub region: RegionUrl,
    pub path: String,
    /// Create missing parents; no error if it exists.
    #[arg(short, long)]
    pub parents: bool,
}
