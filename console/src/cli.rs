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
    /// Open the operator's console (a terminal UI) on a coordinator.
    Console(ConsoleArgs),
    /// Pause a region: it stops pushing and applying until resumed.
    Pause(RegionActionArgs),
    /// Resume a paused region.
    Resume(RegionActionArgs),
    /// Make a region rebuild its namespace from a snapshot.
    Resync(RegionActionArgs),
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
    /// Do not mount the regions (by default each is mounted at DIR/mnt/<region>).
    #[arg(long)]
    pub no_mount: bool,
    #[command(flatten)]
    pub mount: MountArgs,
}

/// How a region's namespace is mounted with FUSE.
#[derive(Args, Debug, Clone, Default)]
pub struct MountArgs {
    /// Let other users use the mounts (a media server running as its own user).
    #[arg(long)]
    pub allow_other: bool,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
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
    /// Mount the namespace with FUSE at this directory (overrides the file's `mount`).
    #[arg(long)]
    pub mount: Option<PathBuf>,
    #[command(flatten)]
    pub mount_options: MountArgs,
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
    /// Resolve a conflict: keep one region's version, both, or merge.
    Resolve {
        /// The conflict id (from `conflicts list`).
        id: String,
        /// A region id, `both` to keep every version, or `merge`.
        #[arg(long)]
        keep: String,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
    },
    /// Resolve every open conflict whose path contains FILTER the same way
    /// (prints the plan; add --yes to carry it out).
    ResolveAll {
        /// A region id, `both` to keep every version, or `merge`.
        #[arg(long)]
        keep: String,
        /// Only conflicts whose path, strategy or regions contain this text.
        #[arg(long, default_value = "")]
        filter: String,
        /// Carry out the plan instead of only printing it.
        #[arg(long)]
        yes: bool,
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

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
    /// Refuse every action that changes the cluster (watch only).
    #[arg(long)]
    pub readonly: bool,
    /// Where the console writes its log (default: $XDG_STATE_HOME/geosync,
    /// or ~/.local/state/geosync).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RegionActionArgs {
    /// The region's id.
    pub region: String,
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
}
