//! STRM jobs: media libraries turned into Jellyfin `.strm` files and metadata in the namespace.
//!
//! - [`runs`]: the persisted run queue and the index of each job's outputs.
//! - [`source`]: local directories, OpenList/AList servers and namespace subtrees.
//! - [`sign`]: `/stream/` links with a non-expiring signature under the cluster secret.
//! - [`webhook`]: CloudDrive2 webhook payloads, checked as untrusted input.
//! - [`stream`]: what `/stream/` needs besides the namespace (ranges, content types).
//! - `run`: executing a run (scan, worker pool, writes, cleanup).
//!
//! [`Strm`] runs inside a region: every trigger (schedule, CLI, console, webhook) queues a run in
//! the region's store, and one runner executes queued runs one at a time, oldest first, so runs
//! of one job never overlap. Outputs are ordinary namespace writes, so they replicate to every
//! region like any other change.

mod run;
pub mod runs;
pub mod sign;
pub mod source;
pub mod stream;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Engine;
use crate::config::{JobConfig, RunStrategy, SourceConfig, StrmConfig, StrmMode};
use crate::node::fetch::ChunkSource;
use run::{RunCtx, Texts};
use runs::{Counts, JobChange, Run, RunState, RunStore, Trigger};
use sign::Signer;
use source::Source;
use webhook::FileChange;

/// Why a STRM request cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum StrmError {
    #[error("no STRM job named {0:?}")]
    UnknownJob(String),
    #[error("no STRM run {0}")]
    UnknownRun(u64),
    #[error("run {id} is {state:?}: {why}")]
    WrongState {
        id: u64,
        state: RunState,
        why: &'static str,
    },
    #[error("an incremental run of {0:?} needs source paths (or comes from webhook events)")]
    IncrementalByHand(String),
    #[error("invalid source path: {0}")]
    BadPath(String),
    #[error(transparent)]
    Engine(#[from] crate::Error),
}

/// Live counters of the running run.
#[derive(Debug, Default)]
pub struct Progress {
    pub scanned: AtomicU64,
    pub written: AtomicU64,
    pub unchanged: AtomicU64,
    pub skipped: AtomicU64,
    pub deleted: AtomicU64,
    pub failed: AtomicU64,
    /// Files being processed now, and the most at once so far.
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
}

impl Progress {
    pub fn counts(&self) -> Counts {
        Counts {
            scanned: self.scanned.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            deleted: self.deleted.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// A job as `geosync strm jobs` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub name: String,
    pub source: String,
    pub output: String,
    pub mode: StrmMode,
    pub strategy: RunStrategy,
    pub max_concurrency: usize,
    pub schedule_secs: Option<u64>,
    /// Set for a configuration worth knowing about (e.g. local mode and Jellyfin).
    pub note: Option<String>,
    /// The newest run, if any.
    pub last_run: Option<RunView>,
}

/// A run as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RunView {
    pub id: u64,
    pub job: String,
    pub strategy: String,
    pub trigger: Trigger,
    pub state: RunState,
    pub counts: Counts,
    /// The most files in flight at once (the running run and finished ones alike).
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub held: usize,
    pub confirmed_by: Option<u64>,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

impl From<&Run> for RunView {
    fn from(r: &Run) -> Self {
        RunView {
            id: r.id,
            job: r.job.clone(),
            strategy: match r.confirms {
                Some(_) => "cleanup".into(),
                None => r.strategy.as_str().into(),
            },
            trigger: r.trigger,
            state: r.state,
            counts: r.counts,
            errors: r.errors.clone(),
            warnings: r.warnings.clone(),
            held: r.held.len(),
            confirmed_by: r.confirmed_by,
            created_ms: r.created_ms,
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
        }
    }
}

/// What `/stream/` should serve for a signed request.
pub enum StreamTarget {
    /// A namespace path.
    Namespace(String),
    /// A file of a local source.
    Local(PathBuf),
    /// A redirect to a freshly signed OpenList link.
    Redirect(String),
}

/// Why `/stream/` refuses.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("STRM links are not configured in this region (no strm.secret)")]
    NotConfigured,
    #[error("invalid path: {0}")]
    BadPath(String),
    #[error("bad signature")]
    BadSignature,
    #[error("no STRM job named {0:?} in this region")]
    UnknownJob(String),
    #[error("the source could not give a link: {0}")]
    Upstream(String),
}

struct Current {
    id: u64,
    cancel: CancellationToken,
    progress: Arc<Progress>,
}

struct Inner {
    engine: Arc<Engine>,
    config: StrmConfig,
    texts: Texts,
    sources: HashMap<String, Source>,
    client: reqwest::Client,
    store: RunStore,
    wake: Notify,
    current: Mutex<Option<Current>>,
    /// Each job's output index as the last run left it (runs are one at a time, and every index
    /// change goes through the run, so this matches the store). Saves reading a large index for
    /// every webhook run.
    indexes: Mutex<HashMap<String, HashMap<String, runs::OutputRecord>>>,
}

/// A region's STRM engine (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Strm {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    crate::clock::system_ms()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| crate::Error::Unreachable(format!("STRM task failed: {e}")))?
}

/// Maps an absolute source path to a path relative to `prefix` (`None`: outside it).
fn relative_to(prefix: &str, path: &str) -> Option<String> {
    let p = prefix.trim_end_matches('/');
    if path == p || (p.is_empty() && path == "/") {
        return Some(String::new());
    }
    path.strip_prefix(p)
        .and_then(|rest| rest.strip_prefix('/'))
        .map(str::to_owned)
}

impl Strm {
    /// The STRM engine of a region: `base_url` is what links start with (`public_url` or the
    /// region's HTTP address), `mount` the region's FUSE mount (for local-mode namespace jobs).
    pub fn open(
        engine: Arc<Engine>,
        config: StrmConfig,
        base_url: String,
        mount: Option<PathBuf>,
        chunks: Arc<dyn ChunkSource>,
    ) -> crate::Result<Strm> {
        let store = RunStore::open(engine.db.clone())?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| crate::Error::Unreachable(format!("HTTP client: {e}")))?;
        let mut sources = HashMap::new();
        for job in &config.jobs {
            let source = match &job.source {
                SourceConfig::Local { path, download_url } => Source::Local {
                    root: path.clone(),
                    download_url: download_url.clone(),
                },
                SourceConfig::Openlist {
                    url,
                    token,
                    root,
                    password,
                } => Source::Openlist(Arc::new(source::Openlist {
                    url: url.clone(),
                    token: token.clone(),
                    root: root.clone(),
                    password: password.clone(),
                    client: client.clone(),
                })),
                SourceConfig::Namespace { path } => Source::Namespace {
                    root: path.clone(),
                    engine: engine.clone(),
                    chunks: chunks.clone(),
                },
            };
            sources.insert(job.name.clone(), source);
        }
        for job in config.jobs.iter().filter(|j| j.mode == StrmMode::Local) {
            tracing::warn!(
                job = %job.name,
                "STRM mode \"local\": Jellyfin 10.11.7 and later ignore local paths in .strm \
                 files (\"Ignoring invalid or non-remote .strm path\"); these outputs serve Emby \
                 and Kodi only"
            );
        }
        let unroutable = ["http://0.0.0.0", "http://[::]"];
        if config.public_url.is_none()
            && !config.jobs.is_empty()
            && unroutable.iter().any(|u| base_url.starts_with(u))
        {
            tracing::warn!(
                %base_url,
                "STRM links would point at an unroutable address: set strm.public_url"
            );
        }
        let texts = Texts {
            base_url: config
                .public_url
                .clone()
                .unwrap_or(base_url)
                .trim_end_matches('/')
                .to_owned(),
            signer: config.secret.as_deref().map(Signer::new),
            mount,
        };
        Ok(Strm {
            inner: Arc::new(Inner {
                engine,
                config,
                texts,
                sources,
                client,
                store,
                wake: Notify::new(),
                current: Mutex::new(None),
                indexes: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Starts the runner and the schedules; they stop on `shutdown`.
    pub fn start(&self, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(self.clone().runner(shutdown.clone()))];
        for job in &self.inner.config.jobs {
            if let Some(secs) = job.schedule_secs {
                tasks.push(tokio::spawn(self.clone().schedule(
                    job.name.clone(),
                    Duration::from_secs(secs),
                    shutdown.clone(),
                )));
            }
        }
        tasks
    }

    pub fn config(&self) -> &StrmConfig {
        &self.inner.config
    }

    /// The signer of `/stream/` links (none without `strm.secret`).
    pub fn signer(&self) -> Option<&Signer> {
        self.inner.texts.signer.as_ref()
    }

    /// The base URL links start with.
    pub fn base_url(&self) -> &str {
        &self.inner.texts.base_url
    }

    /// Queues a run of `job` (`strategy` `None`: the job's own).
    pub async fn enqueue(
        &self,
        job: &str,
        strategy: Option<RunStrategy>,
        trigger: Trigger,
        cleanup_now: bool,
    ) -> Result<u64, StrmError> {
        let config = self
            .inner
            .config
            .job(job)
            .ok_or_else(|| StrmError::UnknownJob(job.to_owned()))?;
        let strategy = strategy.unwrap_or(config.strategy);
        if strategy == RunStrategy::Incremental {
            return Err(StrmError::IncrementalByHand(job.to_owned()));
        }
        self.queue(new_run(job, strategy, trigger, cleanup_now, Vec::new()))
            .await
    }

    /// Queues an incremental run that (re)processes source paths (files or directories,
    /// relative to the job's source root) without a scan.
    pub async fn enqueue_paths(
        &self,
        job: &str,
        paths: &[String],
        trigger: Trigger,
    ) -> Result<u64, StrmError> {
        if self.inner.config.job(job).is_none() {
            return Err(StrmError::UnknownJob(job.to_owned()));
        }
        if paths.is_empty() {
            return Err(StrmError::IncrementalByHand(job.to_owned()));
        }
        let mut changes = Vec::new();
        for p in paths {
            let norm = webhook::normalize_path(p).map_err(StrmError::BadPath)?;
            changes.push(JobChange {
                action: webhook::Action::Create,
                is_dir: false,
                source: Some(norm.trim_start_matches('/').to_owned()),
                destination: None,
            });
        }
        let run = new_run(job, RunStrategy::Incremental, trigger, false, changes);
        self.queue(run).await
    }

    async fn queue(&self, run: Run) -> Result<u64, StrmError> {
        let store = self.inner.store.clone();
        let run = blocking(move || store.enqueue(run)).await?;
        tracing::info!(run = run.id, job = %run.job, strategy = run.strategy.as_str(), "STRM run queued");
        self.inner.wake.notify_one();
        Ok(run.id)
    }

    /// Queues incremental runs for webhook changes: one per job a change touches (a rename
    /// counts when either side is inside the job's source prefix). Returns the run ids.
    pub async fn webhook(&self, changes: Vec<FileChange>) -> Result<Vec<u64>, StrmError> {
        let mut per_job: BTreeMap<String, Vec<JobChange>> = BTreeMap::new();
        for job in &self.inner.config.jobs {
            let prefix = job.webhook_prefix();
            for c in &changes {
                let source = relative_to(&prefix, &c.source);
                let destination = c
                    .destination
                    .as_deref()
                    .and_then(|d| relative_to(&prefix, d));
                if source.is_none() && destination.is_none() {
                    continue;
                }
                per_job
                    .entry(job.name.clone())
                    .or_default()
                    .push(JobChange {
                        action: c.action,
                        is_dir: c.is_dir,
                        source,
                        destination,
                    });
            }
        }
        let mut ids = Vec::new();
        for (job, changes) in per_job {
            let run = new_run(
                &job,
                RunStrategy::Incremental,
                Trigger::Webhook,
                false,
                changes,
            );
            ids.push(self.queue(run).await?);
        }
        Ok(ids)
    }

    /// The newest `limit` runs, the running one with live counts.
    pub async fn runs(&self, limit: usize) -> Result<Vec<RunView>, StrmError> {
        let store = self.inner.store.clone();
        let runs = blocking(move || store.list(limit)).await?;
        Ok(runs.iter().map(|r| self.view(r)).collect())
    }

    pub async fn run(&self, id: u64) -> Result<RunView, StrmError> {
        let store = self.inner.store.clone();
        let run = blocking(move || store.get(id))
            .await?
            .ok_or(StrmError::UnknownRun(id))?;
        Ok(self.view(&run))
    }

    fn view(&self, run: &Run) -> RunView {
        let mut v = RunView::from(run);
        if run.state == RunState::Running
            && let Some(c) = lock(&self.inner.current).as_ref()
            && c.id == run.id
        {
            v.counts = c.progress.counts();
        }
        v
    }

    /// The most files the running (or last) run had in flight at once, if one is running.
    pub fn current_peak_in_flight(&self) -> Option<u64> {
        lock(&self.inner.current)
            .as_ref()
            .map(|c| c.progress.peak_in_flight.load(Ordering::SeqCst))
    }

    /// The configured jobs with their newest run.
    pub async fn jobs(&self) -> Result<Vec<JobView>, StrmError> {
        let runs = self.runs(1000).await?;
        Ok(self
            .inner
            .config
            .jobs
            .iter()
            .map(|j| JobView {
                name: j.name.clone(),
                source: match &j.source {
                    SourceConfig::Local { path, .. } => format!("local {}", path.display()),
                    SourceConfig::Openlist { url, root, .. } => format!("openlist {url} {root}"),
                    SourceConfig::Namespace { path } => format!("namespace {path}"),
                },
                output: j.output.clone(),
                mode: j.mode,
                strategy: j.strategy,
                max_concurrency: j.max_concurrency,
                schedule_secs: j.schedule_secs,
                note: (j.mode == StrmMode::Local).then(|| {
                    "local paths: Jellyfin 10.11.7+ ignores them (Emby/Kodi only)".to_owned()
                }),
                last_run: runs.iter().find(|r| r.job == j.name).cloned(),
            })
            .collect())
    }

    /// Cancels a queued or running run.
    pub async fn cancel(&self, id: u64) -> Result<(), StrmError> {
        let store = self.inner.store.clone();
        let mut run = blocking(move || store.get(id))
            .await?
            .ok_or(StrmError::UnknownRun(id))?;
        match run.state {
            RunState::Queued => {
                run.state = RunState::Cancelled;
                run.finished_ms = Some(now_ms());
                let store = self.inner.store.clone();
                blocking(move || store.save(&run)).await?;
                Ok(())
            }
            RunState::Running => {
                if let Some(c) = lock(&self.inner.current).as_ref()
                    && c.id == id
                {
                    c.cancel.cancel();
                }
                Ok(())
            }
            state => Err(StrmError::WrongState {
                id,
                state,
                why: "only queued or running runs can be cancelled",
            }),
        }
    }

    /// Confirms a held cleanup: queues a run deleting what it held. Returns that run's id.
    pub async fn confirm_cleanup(&self, id: u64, trigger: Trigger) -> Result<u64, StrmError> {
        let store = self.inner.store.clone();
        let mut held = blocking(move || store.get(id))
            .await?
            .ok_or(StrmError::UnknownRun(id))?;
        if held.state != RunState::Held {
            return Err(StrmError::WrongState {
                id,
                state: held.state,
                why: "only a run whose cleanup is held can be confirmed",
            });
        }
        if let Some(by) = held.confirmed_by {
            return Ok(by);
        }
        let mut run = new_run(&held.job, RunStrategy::Full, trigger, true, Vec::new());
        run.confirms = Some(id);
        let new_id = self.queue(run).await?;
        held.confirmed_by = Some(new_id);
        let store = self.inner.store.clone();
        blocking(move || store.save(&held)).await?;
        Ok(new_id)
    }

    /// Checks a `/stream/` request and says what to serve. `path` is the decoded path after
    /// `/stream` (starting with `/`).
    pub async fn stream_target(
        &self,
        path: &str,
        job: Option<&str>,
        sig: &str,
    ) -> Result<StreamTarget, StreamError> {
        crate::namespace::parse_path(path.as_bytes())
            .map_err(|e| StreamError::BadPath(e.to_string()))?;
        if path == "/" {
            return Err(StreamError::BadPath("the root is not a file".into()));
        }
        let signer = self.signer().ok_or(StreamError::NotConfigured)?;
        if !signer.verify(job, path, sig) {
            return Err(StreamError::BadSignature);
        }
        let Some(job) = job else {
            return Ok(StreamTarget::Namespace(path.to_owned()));
        };
        let source = self
            .inner
            .sources
            .get(job)
            .ok_or_else(|| StreamError::UnknownJob(job.to_owned()))?;
        let rel = path.trim_start_matches('/');
        match source {
            Source::Local { root, .. } => Ok(StreamTarget::Local(root.join(rel))),
            Source::Openlist(o) => o
                .raw_url(rel)
                .await
                .map(StreamTarget::Redirect)
                .map_err(StreamError::Upstream),
            Source::Namespace { root, .. } => Ok(StreamTarget::Namespace(source::join(root, rel))),
        }
    }

    async fn schedule(self, job: String, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let store = self.inner.store.clone();
            let j = job.clone();
            match blocking(move || store.has_pending(&j)).await {
                Ok(true) => {
                    tracing::debug!(%job, "scheduled run skipped: one is queued or running")
                }
                Ok(false) => {
                    if let Err(e) = self.enqueue(&job, None, Trigger::Schedule, false).await {
                        tracing::warn!(%job, error = %e, "scheduled run not queued");
                    }
                }
                Err(e) => tracing::warn!(%job, error = %e, "scheduled run not queued"),
            }
        }
    }

    /// Executes queued runs one at a time until `shutdown`. Cancel-safe between runs; a run
    /// interrupted by shutdown stays `running` in the store and is queued again at the next start.
    async fn runner(self, shutdown: CancellationToken) {
        loop {
            let store = self.inner.store.clone();
            let next = match blocking(move || store.next_queued()).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "STRM run queue unreadable");
                    None
                }
            };
            let Some(run) = next else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.inner.wake.notified() => continue,
                    // The store is the truth; also look now and then.
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            };
            let cancel = shutdown.child_token();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.execute(run, cancel) => {}
            }
        }
    }

    async fn execute(&self, mut run: Run, cancel: CancellationToken) {
        let progress = Arc::new(Progress::default());
        run.state = RunState::Running;
        run.started_ms = Some(now_ms());
        let store = self.inner.store.clone();
        let saved = run.clone();
        if let Err(e) = blocking(move || store.save(&saved)).await {
            tracing::error!(run = run.id, error = %e, "STRM run could not start");
            return;
        }
        *lock(&self.inner.current) = Some(Current {
            id: run.id,
            cancel: cancel.clone(),
            progress: progress.clone(),
        });
        tracing::info!(run = run.id, job = %run.job, strategy = run.strategy.as_str(), "STRM run started");
        let outcome = self.execute_inner(&mut run, progress, cancel.clone()).await;
        run.finished_ms = Some(now_ms());
        run.state = match outcome {
            Err(e) => {
                run.error(e.to_string());
                RunState::Failed
            }
            Ok(()) if cancel.is_cancelled() => RunState::Cancelled,
            Ok(()) if !run.held.is_empty() => RunState::Held,
            Ok(()) => RunState::Done,
        };
        let engine = self.inner.engine.clone();
        if let Err(e) = blocking(move || engine.namespace.sync()).await {
            run.error(format!("making the outputs durable: {e}"));
        }
        let store = self.inner.store.clone();
        let saved = run.clone();
        if let Err(e) = blocking(move || store.save(&saved)).await {
            tracing::error!(run = run.id, error = %e, "STRM run result not stored");
        }
        *lock(&self.inner.current) = None;
        tracing::info!(run = run.id, job = %run.job, state = ?run.state, counts = ?run.counts, "STRM run finished");
    }

    async fn execute_inner(
        &self,
        run: &mut Run,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Result<(), StrmError> {
        let job: JobConfig = self
            .inner
            .config
            .job(&run.job)
            .cloned()
            .ok_or_else(|| StrmError::UnknownJob(run.job.clone()))?;
        let source = self
            .inner
            .sources
            .get(&run.job)
            .cloned()
            .ok_or_else(|| StrmError::UnknownJob(run.job.clone()))?;
        let (store, engine, texts, client) = (
            self.inner.store.clone(),
            self.inner.engine.clone(),
            self.inner.texts.clone(),
            self.inner.client.clone(),
        );
        let id = run.id;
        let cached = lock(&self.inner.indexes).remove(&run.job);
        let outputs = match cached {
            Some(o) => o,
            None => {
                let (store, job) = (store.clone(), run.job.clone());
                blocking(move || store.outputs(&job)).await?
            }
        };
        let ctx = Arc::new(RunCtx::new(
            id, job, source, engine, texts, client, progress, cancel, store, outputs,
        ));
        if let Some(of) = run.confirms {
            let store = self.inner.store.clone();
            let held = blocking(move || store.get(of))
                .await?
                .map(|r| r.held)
                .unwrap_or_default();
            run::run_confirmed(&ctx, held).await;
        } else if run.strategy == RunStrategy::Incremental {
            run.held = run::run_incremental(&ctx, &run.changes).await;
        } else {
            run.held = run::run_scan(&ctx, run.strategy, run.cleanup_now).await;
        }
        ctx.finish_into(run);
        if let Some(outputs) = ctx.take_outputs() {
            lock(&self.inner.indexes).insert(run.job.clone(), outputs);
        }
        Ok(())
    }
}

fn new_run(
    job: &str,
    strategy: RunStrategy,
    trigger: Trigger,
    cleanup_now: bool,
    changes: Vec<JobChange>,
) -> Run {
    Run {
        id: 0,
        job: job.to_owned(),
        strategy,
        trigger,
        state: RunState::Queued,
        cleanup_now,
        confirms: None,
        counts: Counts::default(),
        errors: Vec::new(),
        warnings: Vec::new(),
        changes,
        held: Vec::new(),
        confirmed_by: None,
        created_ms: now_ms(),
        started_ms: None,
        finished_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_paths_map_to_jobs_by_component() {
        assert_eq!(relative_to("/m", "/m/a/b.mkv").as_deref(), Some("a/b.mkv"));
        assert_eq!(relative_to("/m/", "/m").as_deref(), Some(""));
        assert_eq!(relative_to("/m", "/movies/a"), None);
        assert_eq!(relative_to("/", "/a").as_deref(), Some("a"));
    }
}
