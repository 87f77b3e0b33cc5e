//! What can happen to the console: the operator's intents (from the key
//! table or the command line) and the world's news (from the backend and the
//! clock). The app state changes only through these.

use geosync_proto::v1;

use crate::strm_api;

/// A region's STRM jobs and its recent runs (newest first), as last fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrmSnapshot {
    pub jobs: Vec<strm_api::Job>,
    pub runs: Vec<strm_api::Run>,
}

/// The console's views, in tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum View {
    Overview,
    Queues,
    Conflicts,
    Cluster,
    Events,
    Strm,
}

impl View {
    /// Every view in tab order (`1`..).
    pub const ALL: [View; 6] = [
        View::Overview,
        View::Queues,
        View::Conflicts,
        View::Cluster,
        View::Events,
        View::Strm,
    ];

    /// The view's place in the tab order, from 0.
    pub fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    /// The view at a place in the tab order, wrapping around.
    pub fn at(index: usize) -> View {
        View::ALL[index % View::ALL.len()]
    }

    /// The name the command line (`:view NAME`) and the tabs use.
    pub fn name(self) -> &'static str {
        match self {
            View::Overview => "overview",
            View::Queues => "queues",
            View::Conflicts => "conflicts",
            View::Cluster => "cluster",
            View::Events => "events",
            View::Strm => "strm",
        }
    }

    /// The view named `name` (a prefix is enough), if any.
    pub fn named(name: &str) -> Option<View> {
        if name.is_empty() {
            return None;
        }
        View::ALL.into_iter().find(|v| v.name().starts_with(name))
    }
}

/// How an operator resolves a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Keep the version written in this region; discard the others.
    Keep(String),
    /// Keep the newest version at the path and the others as conflict copies.
    Both,
    /// Merge the field groups; concurrent contents become conflict copies.
    Merge,
}

impl Choice {
    /// The choice as the CLI's `--keep` names it: `both`, `merge`, or a region.
    pub fn from_keep(keep: &str) -> Choice {
        match keep {
            "both" => Choice::Both,
            "merge" => Choice::Merge,
            region => Choice::Keep(region.to_owned()),
        }
    }

    /// The wire form of the choice.
    pub fn to_wire(&self) -> v1::resolve_conflict_request::Choice {
        use v1::resolve_conflict_request::Choice as W;
        match self {
            Choice::Keep(region) => W::KeepRegion(region.clone()),
            Choice::Both => W::KeepBoth(true),
            Choice::Merge => W::Merge(true),
        }
    }

    /// How the choice reads in confirmations and the event log.
    pub fn describe(&self) -> String {
        match self {
            Choice::Keep(region) => format!("keep {region}'s version"),
            Choice::Both => "keep both versions".to_owned(),
            Choice::Merge => "merge the versions".to_owned(),
        }
    }
}

/// Something the operator asks the cluster to do. Every variant names its
/// target by a stable id (conflict id, region, queue item id), never by a row
/// number, so a refresh between the question and the answer cannot redirect it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Resolve a conflict.
    Resolve {
        id: String,
        path: String,
        choice: Choice,
    },
    /// Make a queue item due now.
    Retry {
        region: String,
        id: u64,
        path: String,
    },
    /// Remove a queue item for good.
    Drop {
        region: String,
        id: u64,
        path: String,
    },
    /// Stop a region pushing and applying.
    Pause(String),
    /// Let a paused region go on.
    Resume(String),
    /// Make a region rebuild from a snapshot.
    Resync(String),
    /// Queue a run of a region's STRM job (through the region's HTTP API at `http`).
    StrmRun {
        region: String,
        http: String,
        job: String,
        /// `full` or `skip-existing`.
        strategy: String,
    },
    /// Let a held STRM cleanup go ahead.
    StrmConfirm {
        region: String,
        http: String,
        run: u64,
        job: String,
        /// How many outputs it deletes.
        deletions: u64,
    },
    /// Cancel a queued or running STRM run.
    StrmCancel {
        region: String,
        http: String,
        run: u64,
        job: String,
    },
}

impl Operation {
    /// One line naming the operation and its target.
    pub fn describe(&self) -> String {
        match self {
            Operation::Resolve { path, choice, .. } => {
                format!("resolve {path}: {}", choice.describe())
            }
            Operation::Retry { region, id, path } => {
                format!("retry item {id} ({path}) of region {region} now")
            }
            Operation::Drop { region, id, path } => {
                format!("drop item {id} ({path}) of region {region}")
            }
            Operation::Pause(region) => format!("pause region {region}"),
            Operation::Resume(region) => format!("resume region {region}"),
            Operation::Resync(region) => format!("resync region {region} from a snapshot"),
            Operation::StrmRun {
                region,
                job,
                strategy,
                ..
            } => format!("run STRM job {job} ({strategy}) in region {region}"),
            Operation::StrmConfirm {
                region,
                run,
                job,
                deletions,
                ..
            } => format!(
                "confirm the cleanup of run {run} of STRM job {job} in region {region}: \
                 delete {deletions} output(s)"
            ),
            Operation::StrmCancel {
                region, run, job, ..
            } => format!("cancel run {run} of STRM job {job} in region {region}"),
        }
    }
}

/// What the app asks of the backend. Answers come back as [`Action`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Carry out operations (one, or a confirmed bulk set).
    Run(Vec<Operation>),
    /// Fetch the open conflicts.
    LoadConflicts,
    /// Fetch a region's sync queue.
    LoadQueue(String),
    /// Fetch a small content version (for a diff) from one of these regions'
    /// gRPC endpoints, in order.
    LoadContent {
        hash: Vec<u8>,
        endpoints: Vec<String>,
    },
    /// Fetch a region's STRM jobs and recent runs from its HTTP API at `http`.
    LoadStrm { region: String, http: String },
}

/// Everything that changes the app state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    // ----- the operator's intents -----
    /// Leave the console.
    Quit,
    /// The next view (Tab).
    NextView,
    /// The previous view (Shift-Tab).
    PrevView,
    /// A given view (`1`..`6`).
    Show(View),
    /// Selection up one row.
    Up,
    /// Selection down one row.
    Down,
    /// Selection up one page.
    PageUp,
    /// Selection down one page.
    PageDown,
    /// First row.
    Top,
    /// Last row.
    Bottom,
    /// The previous region (Queues) or version (Conflicts).
    Left,
    /// The next region (Queues) or version (Conflicts).
    Right,
    /// The main action of the row: open a region's queue, keep the chosen
    /// version of a conflict.
    Activate,
    /// Show or hide the key table.
    ToggleHelp,
    /// Start editing the view's filter (`/`).
    BeginFilter,
    /// Start typing a command (`:`).
    BeginCommand,
    /// Close what is open (help, prompt, dialog) or clear the filter.
    Escape,
    /// A character typed into the open prompt.
    Input(char),
    /// Delete the prompt's last character.
    Backspace,
    /// Finish the open prompt.
    Submit,
    /// Answer yes to the open confirmation.
    Confirm,
    /// Resolve the chosen conflict keeping both versions.
    KeepBoth,
    /// Resolve the chosen conflict by merging.
    Merge,
    /// Preview a bulk resolution of the filtered conflicts.
    Bulk(Choice),
    /// Preview a bulk resolution of the filtered conflicts keeping the
    /// region of the chosen version.
    BulkKeepChosen,
    /// Retry the chosen queue item now.
    Retry,
    /// Drop the chosen queue item (asks first).
    Drop,
    /// Pause or resume the chosen region (asks first).
    TogglePause,
    /// Resync the chosen region (asks first).
    Resync,
    /// Run the chosen STRM job (asks first) with this strategy: `full` or `skip-existing`.
    StrmRun(&'static str),
    /// Confirm the held cleanup of the chosen STRM job (asks first).
    StrmConfirm,
    /// Cancel the chosen STRM job's active run (asks first).
    StrmCancel,
    /// Run a command line (as typed after `:`).
    Command(String),

    // ----- the world's news -----
    /// The clock: milliseconds since the Unix epoch.
    Tick(u64),
    /// The backend is (re)connecting to the coordinator.
    Connecting,
    /// A fresh cluster view.
    Cluster(v1::ClusterView),
    /// A change event the log accepted.
    Change(v1::LoggedEvent),
    /// The coordinator is unreachable; the backend retries.
    Disconnected(String),
    /// The open conflicts, or why they could not be fetched.
    Conflicts(Result<Vec<v1::Conflict>, String>),
    /// A region's sync queue, or why it could not be fetched.
    Queue {
        region: String,
        items: Result<Vec<v1::QueueItem>, String>,
    },
    /// A content version, or why it could not be fetched.
    Content {
        hash: Vec<u8>,
        data: Result<Vec<u8>, String>,
    },
    /// A region's STRM jobs and recent runs, or why they could not be fetched.
    Strm {
        region: String,
        result: Result<StrmSnapshot, String>,
    },
    /// The outcome of an operation.
    Done {
        operation: Operation,
        result: Result<(), String>,
    },
}
