//! The console's state and the one function that changes it: [`App::update`]
//! takes an [`Action`] and returns the [`Request`]s for the backend. Nothing
//! here waits, touches the terminal or the network.

use std::collections::{BTreeMap, HashMap, VecDeque};

use geosync_proto::v1;

use super::action::{Action, Choice, Operation, Request, StrmSnapshot, View};
use super::strings;

/// Rows moved by PageUp / PageDown.
pub const PAGE_ROWS: usize = 10;
/// Samples kept for each sparkline (one per tick).
pub const HISTORY_SAMPLES: usize = 120;
/// Lines kept in the event log.
pub const EVENT_LOG_LINES: usize = 2000;
/// Content versions up to this size are fetched for a line diff.
pub const DIFF_MAX_BYTES: u64 = 64 * 1024;

/// How the console starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// The coordinator's gRPC URL.
    pub coordinator: String,
    /// Refuse every action that changes the cluster.
    pub readonly: bool,
    /// Use colours (off when `NO_COLOR` is set).
    pub color: bool,
}

/// The link to the coordinator, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Not connected yet.
    Connecting,
    /// Cluster views arrive.
    Connected,
    /// Unreachable; the backend keeps retrying. Holds the last error.
    Disconnected(String),
}

/// A one-line prompt at the bottom of the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// Editing the current view's filter (`/`); it applies as it is typed.
    Filter,
    /// Typing a command (`:`).
    Command,
}

/// An operation (or a bulk set) waiting for the operator's yes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The question, naming the target.
    pub question: String,
    /// What happens to each item (bulk previews), shown under the question.
    pub details: Vec<String>,
    /// What runs on yes.
    pub operations: Vec<Operation>,
}

/// Whether the status line reports good or bad news.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

/// The status line's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub text: String,
    pub level: Level,
}

/// What an event log line is about (the Events filter matches its name too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The log accepted a change event.
    Change,
    /// A region's health, pause state or registration changed.
    Health,
    /// Conflicts appeared or went away.
    Conflict,
    /// An operator action and its outcome.
    Operator,
    /// The link to the coordinator.
    Link,
}

impl EventKind {
    /// The kind as the Events view shows it.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Change => "change",
            EventKind::Health => "health",
            EventKind::Conflict => "conflict",
            EventKind::Operator => "operator",
            EventKind::Link => "link",
        }
    }
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLine {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: EventKind,
    pub text: String,
}

/// A content version fetched for a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentState {
    Loading,
    Loaded(Vec<u8>),
    Failed(String),
}

/// What the console knows of one region's STRM jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrmRegion {
    /// The jobs and recent runs, as last fetched.
    pub snapshot: Option<StrmSnapshot>,
    /// Why the last fetch failed, if it did.
    pub error: Option<String>,
    /// A fetch is under way.
    pub loading: bool,
}

/// The filtered conflict list and what it was computed from.
#[derive(Debug, Clone, Default)]
struct ConflictView {
    indexes: Vec<usize>,
    filter: String,
    generation: u64,
}

/// A selection that survives refreshes: it follows its item's stable key and
/// only falls back to the row number when the item went away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection<K> {
    key: Option<K>,
    index: usize,
}

impl<K: Clone + PartialEq> Selection<K> {
    /// The selected row among `len` rows whose keys `key_at` gives, if any
    /// row exists.
    pub fn resolve_with<'a>(&self, len: usize, key_at: impl Fn(usize) -> &'a K) -> Option<usize>
    where
        K: 'a,
    {
        if len == 0 {
            return None;
        }
        self.key
            .as_ref()
            .and_then(|k| (0..len).find(|&i| key_at(i) == k))
            .or(Some(self.index.min(len - 1)))
    }

    /// The selected row among `keys`, if any row exists.
    pub fn resolve(&self, keys: &[K]) -> Option<usize> {
        self.resolve_with(keys.len(), |i| &keys[i])
    }

    /// The selected key among `keys`, if any row exists.
    pub fn current<'a>(&self, keys: &'a [K]) -> Option<&'a K> {
        self.resolve(keys).map(|i| &keys[i])
    }

    /// Moves by `delta` rows (clamped) and remembers the new row's key.
    pub fn step_with<'a>(&mut self, len: usize, key_at: impl Fn(usize) -> &'a K, delta: isize)
    where
        K: 'a,
    {
        let Some(i) = self.resolve_with(len, &key_at) else {
            return;
        };
        let j = (i as isize + delta).clamp(0, len as isize - 1) as usize;
        self.key = Some(key_at(j).clone());
        self.index = j;
    }

    /// Moves by `delta` rows among `keys`.
    pub fn step(&mut self, keys: &[K], delta: isize) {
        self.step_with(keys.len(), |i| &keys[i], delta);
    }

    /// Selects a row by number.
    pub fn select(&mut self, keys: &[K], index: usize) {
        if let Some(k) = keys.get(index) {
            self.key = Some(k.clone());
            self.index = index;
        }
    }
}

/// The console's whole state.
#[derive(Debug, Clone)]
pub struct App {
    pub options: Options,
    pub view: View,
    pub connection: Connection,
    /// The clock as of the last tick (milliseconds since the Unix epoch).
    pub now_ms: u64,
    /// The newest cluster view.
    pub cluster: Option<v1::ClusterView>,
    /// Each region's lag in events, one sample per tick, oldest first.
    pub lag_history: BTreeMap<String, VecDeque<u64>>,
    /// Events accepted by the log per tick, oldest first.
    pub throughput: VecDeque<u64>,
    sampled_head: Option<u64>,
    /// The open conflicts, oldest first.
    pub conflicts: Vec<v1::Conflict>,
    /// Bumped whenever `conflicts` is replaced.
    conflicts_generation: u64,
    conflict_view: ConflictView,
    pub conflicts_error: Option<String>,
    /// `(head, open count)` of the cluster view the conflict list matches.
    conflicts_as_of: Option<(u64, u64)>,
    conflicts_loading: bool,
    /// The region whose queue the Queues view shows.
    pub queue_region: Option<String>,
    /// Its items, in service order.
    pub queue: Vec<v1::QueueItem>,
    pub queue_error: Option<String>,
    /// The event log, oldest first.
    pub events: VecDeque<EventLine>,
    /// Rows scrolled up from the newest event (0: follow the tail).
    pub events_scroll: usize,
    /// Each view's filter.
    pub filters: BTreeMap<View, String>,
    pub prompt: Option<Prompt>,
    /// The command being typed.
    pub command: String,
    pub confirmation: Option<Confirmation>,
    pub message: Option<Message>,
    pub help: bool,
    pub region_sel: Selection<String>,
    pub conflict_sel: Selection<String>,
    /// Which version of the selected conflict is chosen (index into its versions).
    pub version_sel: usize,
    pub item_sel: Selection<u64>,
    /// Content versions for diffs, by content id.
    pub contents: HashMap<Vec<u8>, ContentState>,
    /// Each region's STRM jobs and runs, by region id.
    pub strm: BTreeMap<String, StrmRegion>,
    /// The STRM job selected: (region, job).
    pub strm_sel: Selection<(String, String)>,
    /// The console should end.
    pub quit: bool,
}

impl App {
    pub fn new(options: Options) -> App {
        App {
            options,
            view: View::Overview,
            connection: Connection::Connecting,
            now_ms: 0,
            cluster: None,
            lag_history: BTreeMap::new(),
            throughput: VecDeque::new(),
            sampled_head: None,
            conflicts: Vec::new(),
            conflicts_generation: 0,
            conflict_view: ConflictView::default(),
            conflicts_error: None,
            conflicts_as_of: None,
            conflicts_loading: false,
            queue_region: None,
            queue: Vec::new(),
            queue_error: None,
            events: VecDeque::new(),
            events_scroll: 0,
            filters: BTreeMap::new(),
            prompt: None,
            command: String::new(),
            confirmation: None,
            message: None,
            help: false,
            region_sel: Selection::default(),
            conflict_sel: Selection::default(),
            version_sel: 0,
            item_sel: Selection::default(),
            contents: HashMap::new(),
            strm: BTreeMap::new(),
            strm_sel: Selection::default(),
            quit: false,
        }
    }

    // ----- what the views show -----

    /// The current view's filter ("" when none).
    pub fn filter(&self, view: View) -> &str {
        self.filters.get(&view).map_or("", String::as_str)
    }

    fn matches(&self, view: View, text: &str) -> bool {
        let f = self.filter(view);
        f.is_empty() || text.to_lowercase().contains(&f.to_lowercase())
    }

    /// The regions the Overview shows (filtered), as indexes into the view.
    pub fn visible_regions(&self) -> Vec<usize> {
        let Some(c) = &self.cluster else {
            return Vec::new();
        };
        (0..c.regions.len())
            .filter(|&i| {
                let r = &c.regions[i];
                self.matches(
                    View::Overview,
                    &format!("{} {}", r.id, strings::region_state(r.state)),
                )
            })
            .collect()
    }

    /// The conflicts the Conflicts view shows (filtered), as indexes. Kept
    /// up to date by [`App::update`]: with thousands of conflicts, filtering
    /// on every frame would cost more than drawing it.
    pub fn visible_conflicts(&self) -> &[usize] {
        &self.conflict_view.indexes
    }

    fn refresh_conflict_view(&mut self) {
        let filter = self.filter(View::Conflicts).to_lowercase();
        if self.conflict_view.filter == filter
            && self.conflict_view.generation == self.conflicts_generation
        {
            return;
        }
        self.conflict_view = ConflictView {
            indexes: (0..self.conflicts.len())
                .filter(|&i| conflict_matches(&self.conflicts[i], &filter))
                .collect(),
            filter,
            generation: self.conflicts_generation,
        };
    }

    /// The queue items the Queues view shows (filtered), as indexes.
    pub fn visible_items(&self) -> Vec<usize> {
        (0..self.queue.len())
            .filter(|&i| {
                let it = &self.queue[i];
                self.matches(
                    View::Queues,
                    &format!(
                        "{} {} {} {} {}",
                        it.id,
                        strings::op_name(it.op),
                        it.path,
                        strings::item_state(it.state),
                        it.last_error
                    ),
                )
            })
            .collect()
    }

    /// The event lines the Events view shows (filtered), as indexes.
    pub fn visible_events(&self) -> Vec<usize> {
        (0..self.events.len())
            .filter(|&i| {
                let e = &self.events[i];
                self.matches(View::Events, &format!("{} {}", e.kind.name(), e.text))
            })
            .collect()
    }

    fn region_keys(&self) -> Vec<String> {
        let Some(c) = &self.cluster else {
            return Vec::new();
        };
        self.visible_regions()
            .into_iter()
            .map(|i| c.regions[i].id.clone())
            .collect()
    }

    fn item_keys(&self) -> Vec<u64> {
        self.visible_items()
            .into_iter()
            .map(|i| self.queue[i].id)
            .collect()
    }

    /// The region selected in the Overview.
    pub fn selected_region(&self) -> Option<&v1::RegionStatus> {
        let keys = self.region_keys();
        let id = self.region_sel.current(&keys)?;
        self.cluster.as_ref()?.regions.iter().find(|r| &r.id == id)
    }

    /// The conflict selected in the Conflicts view.
    pub fn selected_conflict(&self) -> Option<&v1::Conflict> {
        let row = self.selected_conflict_row()?;
        Some(&self.conflicts[self.visible_conflicts()[row]])
    }

    fn selected_conflict_row(&self) -> Option<usize> {
        let visible = self.visible_conflicts();
        self.conflict_sel
            .resolve_with(visible.len(), |i| &self.conflicts[visible[i]].id)
    }

    /// The queue item selected in the Queues view.
    pub fn selected_item(&self) -> Option<&v1::QueueItem> {
        let keys = self.item_keys();
        let id = self.item_sel.current(&keys)?;
        self.queue.iter().find(|i| i.id == *id)
    }

    /// The regions the STRM view shows: those with an HTTP endpoint, in
    /// cluster order.
    pub fn strm_regions(&self) -> Vec<&v1::RegionStatus> {
        self.cluster.as_ref().map_or_else(Vec::new, |c| {
            c.regions
                .iter()
                .filter(|r| !r.http_endpoint.is_empty())
                .collect()
        })
    }

    /// The STRM jobs the STRM view lists (filtered), as (region, job) keys,
    /// region by region.
    pub fn strm_job_keys(&self) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        for r in self.strm_regions() {
            let Some(snap) = self.strm.get(&r.id).and_then(|s| s.snapshot.as_ref()) else {
                continue;
            };
            for j in &snap.jobs {
                let text = format!("{} {} {} {}", r.id, j.name, j.source, j.output);
                if self.matches(View::Strm, &text) {
                    keys.push((r.id.clone(), j.name.clone()));
                }
            }
        }
        keys
    }

    /// The STRM job selected in the STRM view, with its region.
    pub fn selected_strm_job(&self) -> Option<(&v1::RegionStatus, &crate::strm_api::Job)> {
        let keys = self.strm_job_keys();
        let (region, job) = self.strm_sel.current(&keys)?;
        let r = self.strm_regions().into_iter().find(|r| &r.id == region)?;
        let snap = self.strm.get(region)?.snapshot.as_ref()?;
        let j = snap.jobs.iter().find(|j| &j.name == job)?;
        Some((r, j))
    }

    /// The recent runs of a region's job, newest first.
    pub fn strm_runs_of<'a>(
        &'a self,
        region: &str,
        job: &'a str,
    ) -> impl Iterator<Item = &'a crate::strm_api::Run> + 'a {
        self.strm
            .get(region)
            .and_then(|s| s.snapshot.as_ref())
            .map_or(&[][..], |s| s.runs.as_slice())
            .iter()
            .filter(move |r| r.job == job)
    }

    /// The selected row of the current view's list, for the views.
    pub fn selected_row(&self, view: View) -> Option<usize> {
        match view {
            View::Strm => self.strm_sel.resolve(&self.strm_job_keys()),
            View::Overview => self.region_sel.resolve(&self.region_keys()),
            View::Conflicts => self.selected_conflict_row(),
            View::Queues => self.item_sel.resolve(&self.item_keys()),
            _ => None,
        }
    }

    /// The chosen version of the selected conflict.
    pub fn selected_version(&self) -> Option<&v1::ConflictVersion> {
        let c = self.selected_conflict()?;
        c.versions
            .get(self.version_sel.min(c.versions.len().saturating_sub(1)))
    }

    /// Whether merging is offered for a conflict, or why not.
    pub fn merge_allowed(conflict: &v1::Conflict) -> Result<(), &'static str> {
        if conflict.versions.iter().any(|v| v.deleted) {
            Err(strings::MERGE_DELETED)
        } else {
            Ok(())
        }
    }

    // ----- the one place state changes -----

    /// Applies an action; returns what the backend should do.
    pub fn update(&mut self, action: Action) -> Vec<Request> {
        let requests = self.apply(action);
        self.refresh_conflict_view();
        requests
    }

    fn apply(&mut self, action: Action) -> Vec<Request> {
        self.refresh_conflict_view();
        match action {
            Action::Quit => {
                self.quit = true;
                Vec::new()
            }
            Action::NextView => self.show(View::at(self.view.index() + 1)),
            Action::PrevView => self.show(View::at(self.view.index() + View::ALL.len() - 1)),
            Action::Show(v) => self.show(v),
            Action::Up => self.step(-1),
            Action::Down => self.step(1),
            Action::PageUp => self.step(-(PAGE_ROWS as isize)),
            Action::PageDown => self.step(PAGE_ROWS as isize),
            Action::Top => self.step(isize::MIN / 2),
            Action::Bottom => self.step(isize::MAX / 2),
            Action::Left => self.sideways(-1),
            Action::Right => self.sideways(1),
            Action::Activate => self.activate(),
            Action::ToggleHelp => {
                self.help = !self.help;
                Vec::new()
            }
            Action::BeginFilter => {
                self.prompt = Some(Prompt::Filter);
                Vec::new()
            }
            Action::BeginCommand => {
                self.prompt = Some(Prompt::Command);
                self.command.clear();
                Vec::new()
            }
            Action::Escape => {
                self.escape();
                Vec::new()
            }
            Action::Input(c) => {
                match self.prompt {
                    Some(Prompt::Filter) => self.filters.entry(self.view).or_default().push(c),
                    Some(Prompt::Command) => self.command.push(c),
                    None => {}
                }
                self.after_filter_change()
            }
            Action::Backspace => {
                match self.prompt {
                    Some(Prompt::Filter) => {
                        self.filters.entry(self.view).or_default().pop();
                    }
                    Some(Prompt::Command) => {
                        self.command.pop();
                    }
                    None => {}
                }
                self.after_filter_change()
            }
            Action::Submit => match self.prompt.take() {
                Some(Prompt::Command) => {
                    let line = std::mem::take(&mut self.command);
                    self.update(Action::Command(line))
                }
                _ => Vec::new(),
            },
            Action::Confirm => match self.confirmation.take() {
                Some(c) => {
                    for op in &c.operations {
                        self.log(EventKind::Operator, format!("requested: {}", op.describe()));
                    }
                    self.info(format!("{}…", c.question.trim_end_matches('?')));
                    vec![Request::Run(c.operations)]
                }
                None => Vec::new(),
            },
            Action::KeepBoth => self.resolve_selected(Choice::Both),
            Action::Merge => self.resolve_selected(Choice::Merge),
            Action::Bulk(choice) => self.bulk(choice),
            Action::BulkKeepChosen => match self.selected_version().map(|v| v.region.clone()) {
                Some(region) => self.bulk(Choice::Keep(region)),
                None => {
                    self.error(strings::NO_CONFLICT_SELECTED.to_owned());
                    Vec::new()
                }
            },
            Action::Retry => self.retry_selected(),
            Action::Drop => self.drop_selected(),
            Action::TogglePause => self.pause_selected(),
            Action::Resync => self.resync_selected(),
            Action::StrmRun(strategy) => self.strm_run_selected(strategy),
            Action::StrmConfirm => self.strm_confirm_selected(),
            Action::StrmCancel => self.strm_cancel_selected(),
            Action::Command(line) => self.command(&line),
            Action::Tick(now) => self.tick(now),
            Action::Connecting => Vec::new(),
            Action::Cluster(view) => self.cluster_view(view),
            Action::Change(e) => {
                self.log(
                    EventKind::Change,
                    format!(
                        "#{} {} {} from {} ({})",
                        e.seq,
                        strings::op_name(e.op),
                        e.path,
                        e.origin,
                        strings::bytes(e.size)
                    ),
                );
                Vec::new()
            }
            Action::Disconnected(error) => {
                if !matches!(self.connection, Connection::Disconnected(_)) {
                    self.log(EventKind::Link, format!("coordinator unreachable: {error}"));
                }
                self.connection = Connection::Disconnected(error);
                self.conflicts_loading = false;
                Vec::new()
            }
            Action::Conflicts(result) => {
                self.conflicts_loading = false;
                match result {
                    Ok(list) => {
                        self.conflicts = list;
                        self.conflicts_generation += 1;
                        self.refresh_conflict_view();
                        self.conflicts_error = None;
                        self.conflicts_as_of =
                            self.cluster.as_ref().map(|c| (c.head, c.conflicts_open));
                        self.contents_wanted()
                    }
                    Err(e) => {
                        self.conflicts_error = Some(e);
                        Vec::new()
                    }
                }
            }
            Action::Queue { region, items } => {
                if self.queue_region.as_deref() == Some(region.as_str()) {
                    match items {
                        Ok(items) => {
                            self.queue = items;
                            self.queue_error = None;
                        }
                        Err(e) => self.queue_error = Some(e),
                    }
                }
                Vec::new()
            }
            Action::Content { hash, data } => {
                let state = match data {
                    Ok(d) => ContentState::Loaded(d),
                    Err(e) => ContentState::Failed(e),
                };
                self.contents.insert(hash, state);
                Vec::new()
            }
            Action::Strm { region, result } => {
                let s = self.strm.entry(region).or_default();
                s.loading = false;
                match result {
                    Ok(snap) => {
                        s.snapshot = Some(snap);
                        s.error = None;
                    }
                    Err(e) => s.error = Some(e),
                }
                Vec::new()
            }
            Action::Done { operation, result } => self.done(operation, result),
        }
    }

    fn info(&mut self, text: String) {
        self.message = Some(Message {
            text,
            level: Level::Info,
        });
    }

    fn error(&mut self, text: String) {
        self.message = Some(Message {
            text,
            level: Level::Error,
        });
    }

    fn log(&mut self, kind: EventKind, text: String) {
        self.events.push_back(EventLine {
            at_ms: self.now_ms,
            kind,
            text,
        });
        while self.events.len() > EVENT_LOG_LINES {
            self.events.pop_front();
        }
        if self.events_scroll > 0 {
            // Keep the rows the operator is reading in place.
            self.events_scroll += 1;
        }
    }

    fn connected(&self) -> bool {
        self.connection == Connection::Connected
    }

    fn show(&mut self, view: View) -> Vec<Request> {
        self.view = view;
        self.prompt = None;
        match view {
            View::Queues => self.queue_request(),
            View::Conflicts => {
                let mut out = self.conflicts_request();
                out.extend(self.contents_wanted());
                out
            }
            View::Strm => self.strm_requests(),
            _ => Vec::new(),
        }
    }

    /// Fetches of every STRM region's jobs and runs not already under way.
    fn strm_requests(&mut self) -> Vec<Request> {
        if !self.connected() {
            return Vec::new();
        }
        let wanted: Vec<(String, String)> = self
            .strm_regions()
            .into_iter()
            .map(|r| (r.id.clone(), r.http_endpoint.clone()))
            .collect();
        let mut out = Vec::new();
        for (region, http) in wanted {
            let s = self.strm.entry(region.clone()).or_default();
            if !s.loading {
                s.loading = true;
                out.push(Request::LoadStrm { region, http });
            }
        }
        out
    }

    fn queue_request(&self) -> Vec<Request> {
        match (&self.queue_region, self.connected()) {
            (Some(r), true) => vec![Request::LoadQueue(r.clone())],
            _ => Vec::new(),
        }
    }

    /// A conflict list reload when it may be stale: the open count changed,
    /// or (only while the list is shown, since a busy log moves the head every
    /// second) the head moved.
    fn conflicts_request(&mut self) -> Vec<Request> {
        let now = self.cluster.as_ref().map(|c| (c.head, c.conflicts_open));
        let stale = match (now, self.conflicts_as_of) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some((head, open)), Some((seen_head, seen_open))) => {
                open != seen_open || (self.view == View::Conflicts && head != seen_head)
            }
        };
        if self.connected() && !self.conflicts_loading && stale {
            self.conflicts_loading = true;
            vec![Request::LoadConflicts]
        } else {
            Vec::new()
        }
    }

    /// Content fetches the selected conflict's diff needs (failed ones again
    /// only when `retry_failed`: on the operator's moves, not every second).
    fn contents_wanted_with(&mut self, retry_failed: bool) -> Vec<Request> {
        if self.view != View::Conflicts {
            return Vec::new();
        }
        let Some(c) = self.selected_conflict() else {
            return Vec::new();
        };
        let endpoints_of = |region: &str| -> Vec<String> {
            let Some(cluster) = &self.cluster else {
                return Vec::new();
            };
            // The writing region first: it surely holds its own version.
            let mut out: Vec<String> = cluster
                .regions
                .iter()
                .filter(|r| r.id == region)
                .map(|r| r.grpc_endpoint.clone())
                .collect();
            out.extend(
                cluster
                    .regions
                    .iter()
                    .filter(|r| r.id != region)
                    .map(|r| r.grpc_endpoint.clone()),
            );
            out
        };
        // Failed fetches are tried again (the region may be back); versions
        // wait for a cluster view that names regions to fetch them from.
        let wanted: Vec<(Vec<u8>, Vec<String>)> = c
            .versions
            .iter()
            .filter(|v| !v.hash.is_empty() && v.size <= DIFF_MAX_BYTES)
            .filter(|v| match self.contents.get(&v.hash) {
                None => true,
                Some(ContentState::Failed(_)) => retry_failed,
                Some(_) => false,
            })
            .map(|v| (v.hash.clone(), endpoints_of(&v.region)))
            .filter(|(_, endpoints)| !endpoints.is_empty())
            .collect();
        wanted
            .into_iter()
            .map(|(hash, endpoints)| {
                self.contents.insert(hash.clone(), ContentState::Loading);
                Request::LoadContent { hash, endpoints }
            })
            .collect()
    }

    fn step(&mut self, delta: isize) -> Vec<Request> {
        match self.view {
            View::Overview => {
                let keys = self.region_keys();
                self.region_sel.step(&keys, delta);
            }
            View::Queues => {
                let keys = self.item_keys();
                self.item_sel.step(&keys, delta);
            }
            View::Conflicts => {
                let before = self.selected_conflict().map(|c| c.id.clone());
                let visible = &self.conflict_view.indexes;
                let conflicts = &self.conflicts;
                self.conflict_sel
                    .step_with(visible.len(), |i| &conflicts[visible[i]].id, delta);
                if self.selected_conflict().map(|c| c.id.clone()) != before {
                    self.version_sel = 0;
                }
                return self.contents_wanted();
            }
            View::Events => {
                let len = self.visible_events().len();
                let scroll = self.events_scroll as isize - delta;
                self.events_scroll = scroll.clamp(0, len.saturating_sub(1) as isize) as usize;
            }
            View::Strm => {
                let keys = self.strm_job_keys();
                self.strm_sel.step(&keys, delta);
            }
            View::Cluster => {}
        }
        Vec::new()
    }

    fn sideways(&mut self, delta: isize) -> Vec<Request> {
        match self.view {
            View::Queues => {
                let Some(c) = &self.cluster else {
                    return Vec::new();
                };
                let ids: Vec<String> = c.regions.iter().map(|r| r.id.clone()).collect();
                if ids.is_empty() {
                    return Vec::new();
                }
                let i = self
                    .queue_region
                    .as_ref()
                    .and_then(|r| ids.iter().position(|x| x == r))
                    .unwrap_or(0) as isize;
                let j = (i + delta).rem_euclid(ids.len() as isize) as usize;
                self.set_queue_region(ids[j].clone())
            }
            View::Conflicts => {
                let n = self.selected_conflict().map_or(0, |c| c.versions.len());
                if n > 0 {
                    self.version_sel =
                        (self.version_sel as isize + delta).rem_euclid(n as isize) as usize;
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn set_queue_region(&mut self, region: String) -> Vec<Request> {
        if self.queue_region.as_deref() != Some(region.as_str()) {
            self.queue.clear();
            self.queue_error = None;
            self.item_sel = Selection::default();
        }
        self.queue_region = Some(region);
        self.queue_request()
    }

    fn activate(&mut self) -> Vec<Request> {
        match self.view {
            View::Overview => {
                let Some(id) = self.selected_region().map(|r| r.id.clone()) else {
                    return Vec::new();
                };
                let mut out = self.set_queue_region(id);
                self.view = View::Queues;
                if out.is_empty() {
                    out = self.queue_request();
                }
                out
            }
            View::Conflicts => match self.selected_version().map(|v| v.region.clone()) {
                Some(region) => self.resolve_selected(Choice::Keep(region)),
                None => Vec::new(),
            },
            View::Queues => self.retry_selected(),
            View::Strm => self.strm_run_selected("full"),
            _ => Vec::new(),
        }
    }

    fn escape(&mut self) {
        if self.help {
            self.help = false;
        } else if let Some(c) = self.confirmation.take() {
            self.info(format!("cancelled: {}", c.question.trim_end_matches('?')));
        } else if let Some(p) = self.prompt.take() {
            if p == Prompt::Filter {
                self.filters.remove(&self.view);
            }
            self.command.clear();
        } else if !self.filter(self.view).is_empty() {
            self.filters.remove(&self.view);
        } else {
            self.message = None;
        }
    }

    fn after_filter_change(&mut self) -> Vec<Request> {
        self.refresh_conflict_view();
        if self.prompt == Some(Prompt::Filter) && self.view == View::Conflicts {
            self.version_sel = 0;
            return self.contents_wanted();
        }
        Vec::new()
    }

    /// Asks for confirmation of operations, or refuses them in read-only mode.
    fn propose(&mut self, question: String, details: Vec<String>, ops: Vec<Operation>) {
        if self.options.readonly {
            self.error(format!("{}: {}", strings::READONLY_REFUSED, question));
            return;
        }
        if ops.is_empty() {
            self.error(format!("nothing to do: {question}"));
            return;
        }
        self.confirmation = Some(Confirmation {
            question,
            details,
            operations: ops,
        });
    }

    fn resolve_selected(&mut self, choice: Choice) -> Vec<Request> {
        let Some(c) = self.selected_conflict().cloned() else {
            self.error(strings::NO_CONFLICT_SELECTED.to_owned());
            return Vec::new();
        };
        match &choice {
            Choice::Merge => {
                if let Err(why) = App::merge_allowed(&c) {
                    self.error(format!("cannot merge {}: {why}", c.path));
                    return Vec::new();
                }
            }
            Choice::Keep(region) => {
                if !c.versions.iter().any(|v| &v.region == region) {
                    self.error(format!("{} has no version from region {region}", c.path));
                    return Vec::new();
                }
            }
            Choice::Both => {}
        }
        let op = Operation::Resolve {
            id: c.id.clone(),
            path: c.path.clone(),
            choice,
        };
        self.propose(format!("{}?", op.describe()), Vec::new(), vec![op]);
        Vec::new()
    }

    /// Plans a bulk resolution of the filtered conflicts: what happens to
    /// each (or why it is skipped), then asks.
    fn bulk(&mut self, choice: Choice) -> Vec<Request> {
        let chosen: Vec<v1::Conflict> = self
            .visible_conflicts()
            .iter()
            .map(|&i| self.conflicts[i].clone())
            .collect();
        let plan = BulkPlan::new(&chosen, &choice);
        let question = format!(
            "bulk: {} {} conflict(s) matching {:?} ({} skipped)?",
            choice.describe(),
            plan.operations.len(),
            self.filter(View::Conflicts),
            plan.skipped
        );
        self.propose(question, plan.details, plan.operations);
        Vec::new()
    }

    fn retry_selected(&mut self) -> Vec<Request> {
        let (Some(region), Some(item)) = (self.queue_region.clone(), self.selected_item()) else {
            self.error(strings::NO_ITEM_SELECTED.to_owned());
            return Vec::new();
        };
        let op = Operation::Retry {
            region,
            id: item.id,
            path: item.path.clone(),
        };
        if self.options.readonly {
            self.error(format!("{}: {}", strings::READONLY_REFUSED, op.describe()));
            return Vec::new();
        }
        // Retrying is harmless (the item was going to be pushed anyway): no question.
        self.log(EventKind::Operator, format!("requested: {}", op.describe()));
        vec![Request::Run(vec![op])]
    }

    fn drop_selected(&mut self) -> Vec<Request> {
        let (Some(region), Some(item)) = (self.queue_region.clone(), self.selected_item()) else {
            self.error(strings::NO_ITEM_SELECTED.to_owned());
            return Vec::new();
        };
        let op = Operation::Drop {
            region,
            id: item.id,
            path: item.path.clone(),
        };
        let question = format!(
            "{} ({}, {} attempt(s))? {}",
            op.describe(),
            strings::op_name(item.op),
            item.attempts,
            strings::DROP_WARNING
        );
        self.propose(question, Vec::new(), vec![op]);
        Vec::new()
    }

    fn strm_run_selected(&mut self, strategy: &str) -> Vec<Request> {
        let Some((r, j)) = self.selected_strm_job() else {
            self.error(strings::NO_STRM_JOB_SELECTED.to_owned());
            return Vec::new();
        };
        let op = Operation::StrmRun {
            region: r.id.clone(),
            http: r.http_endpoint.clone(),
            job: j.name.clone(),
            strategy: strategy.to_owned(),
        };
        let question = format!("{} ({} -> {})?", op.describe(), j.source, j.output);
        self.propose(question, Vec::new(), vec![op]);
        Vec::new()
    }

    fn strm_confirm_selected(&mut self) -> Vec<Request> {
        let Some((r, j)) = self.selected_strm_job() else {
            self.error(strings::NO_STRM_JOB_SELECTED.to_owned());
            return Vec::new();
        };
        let Some(run) = self
            .strm_runs_of(&r.id, &j.name)
            .find(|run| run.awaits_confirmation())
        else {
            self.error(format!(
                "STRM job {} in region {} has no held cleanup",
                j.name, r.id
            ));
            return Vec::new();
        };
        let op = Operation::StrmConfirm {
            region: r.id.clone(),
            http: r.http_endpoint.clone(),
            run: run.id,
            job: j.name.clone(),
            deletions: run.held,
        };
        let question = format!("{}?", op.describe());
        self.propose(
            question,
            vec![strings::STRM_CONFIRM_WARNING.to_owned()],
            vec![op],
        );
        Vec::new()
    }

    fn strm_cancel_selected(&mut self) -> Vec<Request> {
        let Some((r, j)) = self.selected_strm_job() else {
            self.error(strings::NO_STRM_JOB_SELECTED.to_owned());
            return Vec::new();
        };
        let Some(run) = self
            .strm_runs_of(&r.id, &j.name)
            .find(|run| run.is_active())
        else {
            self.error(format!(
                "STRM job {} in region {} has no queued or running run",
                j.name, r.id
            ));
            return Vec::new();
        };
        let op = Operation::StrmCancel {
            region: r.id.clone(),
            http: r.http_endpoint.clone(),
            run: run.id,
            job: j.name.clone(),
        };
        let question = format!("{} ({})?", op.describe(), run.state);
        self.propose(question, Vec::new(), vec![op]);
        Vec::new()
    }

    fn target_region(&self) -> Option<String> {
        match self.view {
            View::Queues => self.queue_region.clone(),
            _ => self.selected_region().map(|r| r.id.clone()),
        }
    }

    fn pause_selected(&mut self) -> Vec<Request> {
        let Some(id) = self.target_region() else {
            self.error(strings::NO_REGION_SELECTED.to_owned());
            return Vec::new();
        };
        let paused = self
            .cluster
            .as_ref()
            .and_then(|c| c.regions.iter().find(|r| r.id == id))
            .is_some_and(|r| r.paused);
        let op = if paused {
            Operation::Resume(id)
        } else {
            Operation::Pause(id)
        };
        self.propose(format!("{}?", op.describe()), Vec::new(), vec![op]);
        Vec::new()
    }

    fn resync_selected(&mut self) -> Vec<Request> {
        let Some(id) = self.target_region() else {
            self.error(strings::NO_REGION_SELECTED.to_owned());
            return Vec::new();
        };
        let op = Operation::Resync(id);
        self.propose(format!("{}?", op.describe()), Vec::new(), vec![op]);
        Vec::new()
    }

    /// Runs a command line (see [`strings::COMMANDS`]).
    fn command(&mut self, line: &str) -> Vec<Request> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let region_op = |app: &mut App, make: fn(String) -> Operation, arg: Option<&&str>| {
            let region = arg.map(|s| s.to_string()).or_else(|| app.target_region());
            match region {
                Some(r) => {
                    let op = make(r);
                    app.propose(format!("{}?", op.describe()), Vec::new(), vec![op]);
                }
                None => app.error(strings::NO_REGION_SELECTED.to_owned()),
            }
            Vec::new()
        };
        match words.as_slice() {
            [] => Vec::new(),
            ["q" | "quit"] => self.update(Action::Quit),
            ["help"] => self.update(Action::ToggleHelp),
            ["view", name] | [name] if View::named(name).is_some() => {
                let v = View::named(name).unwrap_or(View::Overview);
                self.show(v)
            }
            ["pause", rest @ ..] if rest.len() <= 1 => {
                region_op(self, Operation::Pause, rest.first())
            }
            ["resume", rest @ ..] if rest.len() <= 1 => {
                region_op(self, Operation::Resume, rest.first())
            }
            ["resync", rest @ ..] if rest.len() <= 1 => {
                region_op(self, Operation::Resync, rest.first())
            }
            ["queue", region] => {
                let mut out = self.set_queue_region(region.to_string());
                out.extend(self.show(View::Queues));
                out
            }
            ["retry" | "drop", id] => match id.parse::<u64>() {
                Ok(id) => {
                    let keys = self.item_keys();
                    match keys.iter().position(|k| *k == id) {
                        Some(i) => {
                            self.item_sel.select(&keys, i);
                            if words[0] == "retry" {
                                self.retry_selected()
                            } else {
                                self.drop_selected()
                            }
                        }
                        None => {
                            self.error(format!(
                                "no item {id} in the queue shown (region {})",
                                self.queue_region.as_deref().unwrap_or("-")
                            ));
                            Vec::new()
                        }
                    }
                }
                Err(_) => {
                    self.error(format!("{id:?} is not a queue item id"));
                    Vec::new()
                }
            },
            ["keep", region] => self.resolve_selected(Choice::Keep(region.to_string())),
            ["both"] => self.resolve_selected(Choice::Both),
            ["merge"] => self.resolve_selected(Choice::Merge),
            ["bulk", "keep", region] => self.bulk(Choice::Keep(region.to_string())),
            ["bulk", "both"] => self.bulk(Choice::Both),
            ["bulk", "merge"] => self.bulk(Choice::Merge),
            ["filter", rest @ ..] => {
                self.filters.insert(self.view, rest.join(" "));
                Vec::new()
            }
            _ => {
                self.error(format!("unknown command {line:?}; {}", strings::COMMANDS));
                Vec::new()
            }
        }
    }

    fn tick(&mut self, now: u64) -> Vec<Request> {
        self.now_ms = now;
        if let Some(c) = &self.cluster {
            let head = c.head;
            let delta = self.sampled_head.map_or(0, |h| head.saturating_sub(h));
            self.sampled_head = Some(head);
            push_capped(&mut self.throughput, delta);
            for r in &c.regions {
                push_capped(
                    self.lag_history.entry(r.id.clone()).or_default(),
                    r.lag_events,
                );
            }
        }
        let mut out = self.conflicts_request();
        if self.view == View::Queues {
            out.extend(self.queue_request());
        }
        if self.view == View::Strm {
            out.extend(self.strm_requests());
        }
        out
    }

    fn cluster_view(&mut self, view: v1::ClusterView) -> Vec<Request> {
        if self.connection != Connection::Connected {
            let text = match self.connection {
                Connection::Disconnected(_) => "coordinator reachable again",
                _ => "connected to the coordinator",
            };
            self.log(EventKind::Link, text.to_owned());
        }
        self.connection = Connection::Connected;
        if let Some(old) = self.cluster.take() {
            self.diff_views(&old, &view);
        }
        if self.queue_region.is_none() {
            self.queue_region = view.regions.first().map(|r| r.id.clone());
        }
        self.cluster = Some(view);
        if self.region_sel.resolve(&self.region_keys()).is_some() && self.region_sel.key.is_none() {
            let keys = self.region_keys();
            self.region_sel.select(&keys, 0);
        }
        let mut out = self.conflicts_request();
        out.extend(self.contents_wanted_with(false));
        out
    }

    fn contents_wanted(&mut self) -> Vec<Request> {
        self.contents_wanted_with(true)
    }

    /// Logs what changed between two cluster views.
    fn diff_views(&mut self, old: &v1::ClusterView, new: &v1::ClusterView) {
        if new.epoch != old.epoch {
            self.log(
                EventKind::Health,
                format!("new log epoch {} (was {})", new.epoch, old.epoch),
            );
        }
        for r in &new.regions {
            match old.regions.iter().find(|o| o.id == r.id) {
                None => self.log(EventKind::Health, format!("region {} registered", r.id)),
                Some(o) => {
                    if o.state != r.state {
                        self.log(
                            EventKind::Health,
                            format!(
                                "region {}: {} -> {}",
                                r.id,
                                strings::region_state(o.state),
                                strings::region_state(r.state)
                            ),
                        );
                    }
                    if o.paused != r.paused {
                        let what = if r.paused { "paused" } else { "resumed" };
                        self.log(EventKind::Health, format!("region {} {what}", r.id));
                    }
                }
            }
        }
        if new.conflicts_open != old.conflicts_open {
            self.log(
                EventKind::Conflict,
                format!(
                    "open conflicts {} -> {}",
                    old.conflicts_open, new.conflicts_open
                ),
            );
        }
        let q_old = old.quorum.unwrap_or_default();
        let q_new = new.quorum.unwrap_or_default();
        if q_old.sufficient != q_new.sufficient {
            let what = if q_new.sufficient {
                "quorum regained"
            } else {
                "quorum lost: operations that need it are skipped"
            };
            self.log(
                EventKind::Health,
                format!(
                    "{what} ({}/{} healthy, {} required)",
                    q_new.healthy, q_new.total, q_new.required
                ),
            );
        }
    }

    fn done(&mut self, operation: Operation, result: Result<(), String>) -> Vec<Request> {
        match result {
            Ok(()) => {
                let text = format!("done: {}", operation.describe());
                self.log(EventKind::Operator, text.clone());
                self.info(text);
            }
            Err(e) => {
                let text = format!("failed: {}: {e}", operation.describe());
                self.log(EventKind::Operator, text.clone());
                self.error(text);
            }
        }
        match operation {
            Operation::Resolve { .. } => {
                // Reload even if the view's counters look the same.
                self.conflicts_as_of = None;
                self.conflicts_request()
            }
            Operation::Retry { .. } | Operation::Drop { .. } => self.queue_request(),
            Operation::StrmRun { .. }
            | Operation::StrmConfirm { .. }
            | Operation::StrmCancel { .. } => self.strm_requests(),
            _ => Vec::new(),
        }
    }
}

/// Whether a conflict matches a filter (lower-case; "" matches all): its
/// path, strategy or a version's region contains it.
pub fn conflict_matches(c: &v1::Conflict, filter_lower: &str) -> bool {
    filter_lower.is_empty()
        || c.path.to_lowercase().contains(filter_lower)
        || c.strategy.contains(filter_lower)
        || c.versions.iter().any(|v| v.region.contains(filter_lower))
}

/// What a bulk resolution will do: the operations, and a line per conflict
/// saying what happens to it or why it is skipped. The console previews it
/// before asking; `geosync conflicts resolve-all` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkPlan {
    pub operations: Vec<Operation>,
    pub details: Vec<String>,
    pub skipped: usize,
}

impl BulkPlan {
    /// Plans resolving each of `conflicts` with `choice`.
    pub fn new(conflicts: &[v1::Conflict], choice: &Choice) -> BulkPlan {
        let mut plan = BulkPlan {
            operations: Vec::new(),
            details: Vec::new(),
            skipped: 0,
        };
        for c in conflicts {
            let skip = match choice {
                Choice::Keep(r) if !c.versions.iter().any(|v| &v.region == r) => {
                    Some(format!("no version from {r}"))
                }
                Choice::Merge => App::merge_allowed(c).err().map(str::to_owned),
                _ => None,
            };
            match skip {
                Some(why) => {
                    plan.skipped += 1;
                    plan.details.push(format!("skip {}: {why}", c.path));
                }
                None => {
                    let op = Operation::Resolve {
                        id: c.id.clone(),
                        path: c.path.clone(),
                        choice: choice.clone(),
                    };
                    plan.details.push(op.describe());
                    plan.operations.push(op);
                }
            }
        }
        plan
    }
}

fn push_capped(samples: &mut VecDeque<u64>, value: u64) {
    samples.push_back(value);
    while samples.len() > HISTORY_SAMPLES {
        samples.pop_front();
    }
}

#[cfg(test)]
mod tests;
