//! Executing one run: the scan, the worker pool, the output writes and the orphan cleanup.
//!
//! **Scan.** Breadth-first from the source root, at most `max_depth` levels below it (what is
//! cut is named in a warning and its outputs are protected from cleanup), one listing at a time
//! paced by the job's `qps`. Files go to a pool of `max_concurrency` workers as they are found.
//!
//! **Workers.** Media files become `.strm` files: the text is built, compared with the existing
//! output by content id (the BLAKE3 of the bytes, so equal ids are equal strings; a cold output
//! needs no fetch to compare) and written only when different, as one namespace commit (atomic:
//! readers see the old or the new file). Metadata files are skipped or compared by size and
//! mtime, copied by reading the source (an I/O error falls back to an HTTP download), and get the
//! source's mtime.
//!
//! **Cleanup** (full runs only) happens only when the scan finished without cancellation or any
//! listing that was not a clear answer. Orphans are outputs in the job's index whose source was
//! not seen. More than the job's threshold: the run is held for an operator. Otherwise an orphan
//! is marked by the first run that finds it and deleted by the next (grace), or at once with
//! `cleanup_now`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Progress;
use super::runs::{JobChange, OutputRecord, Run, RunStore};
use super::sign::Signer;
use super::source::{self, Listing, Pacer, ReadError, Source, SourceEntry};
use super::webhook::Action;
use crate::config::{JobConfig, MetaMode, MetaUpdate, RunStrategy, SourceConfig, StrmMode};
use crate::model::{NodeId, NodeKind};
use crate::namespace::NewNode;
use crate::store::content::{ContentRef, Manifest};
use crate::{Engine, Error};

/// Index changes written per transaction while a run goes.
const INDEX_BATCH: usize = 2048;

/// Permission bits of written outputs.
const OUTPUT_FILE_MODE: u32 = 0o644;
const OUTPUT_DIR_MODE: u32 = 0o755;

/// What a `.strm` file should hold, per job.
#[derive(Clone)]
pub(super) struct Texts {
    pub base_url: String,
    pub signer: Option<Signer>,
    pub mount: Option<std::path::PathBuf>,
}

impl Texts {
    /// The `.strm` text for the source file `rel` of `job` (one line, newline-terminated).
    pub fn strm_text(&self, job: &JobConfig, rel: &str) -> Result<String, String> {
        let line = match (job.mode, &job.source) {
            (StrmMode::Local, SourceConfig::Local { path, .. }) => {
                path.join(rel).to_string_lossy().into_owned()
            }
            (StrmMode::Local, SourceConfig::Namespace { path }) => {
                let mount = self
                    .mount
                    .as_ref()
                    .ok_or("STRM mode \"local\" for a namespace source needs the region's mount")?;
                let p = source::join(path, rel);
                mount
                    .join(p.trim_start_matches('/'))
                    .to_string_lossy()
                    .into_owned()
            }
            (StrmMode::Local, SourceConfig::Openlist { .. }) => {
                return Err("an OpenList source has no local paths: use mode \"url\"".into());
            }
            (StrmMode::Url, src) => {
                let signer = self
                    .signer
                    .as_ref()
                    .ok_or("no strm.secret configured to sign links with")?;
                match src {
                    SourceConfig::Namespace { path } => {
                        signer.link(&self.base_url, None, &source::join(path, rel))
                    }
                    _ => signer.link(&self.base_url, Some(&job.name), &format!("/{rel}")),
                }
            }
        };
        if line.contains(['\n', '\r']) {
            return Err(format!(
                "{rel:?}: a name with a line break cannot go in a .strm file"
            ));
        }
        Ok(format!("{line}\n"))
    }
}

/// The extension of a file name, lower-case (`None` without one).
fn extension(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_ascii_lowercase())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FileKind {
    Media,
    Metadata,
}

/// What processing one file did.
enum Outcome {
    Written,
    Unchanged,
    Skipped,
    /// Neither media nor metadata (or metadata mode `none`).
    Ignored,
    Failed(String),
}

/// One run's shared state.
pub(super) struct RunCtx {
    pub run_id: u64,
    pub job: JobConfig,
    pub source: Source,
    pub engine: Arc<Engine>,
    pub texts: Texts,
    pub client: reqwest::Client,
    pub progress: Arc<Progress>,
    pub cancel: CancellationToken,
    pub store: RunStore,
    media: HashSet<String>,
    metadata: HashSet<String>,
    dirs: Mutex<HashMap<String, NodeId>>,
    outputs: Mutex<HashMap<String, OutputRecord>>,
    pending_index: Mutex<Vec<(String, Option<OutputRecord>)>>,
    seen: Mutex<HashSet<String>>,
    messages: Mutex<(Vec<String>, Vec<String>)>,
}

impl RunCtx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        run_id: u64,
        job: JobConfig,
        source: Source,
        engine: Arc<Engine>,
        texts: Texts,
        client: reqwest::Client,
        progress: Arc<Progress>,
        cancel: CancellationToken,
        store: RunStore,
        outputs: HashMap<String, OutputRecord>,
    ) -> RunCtx {
        let lower = |l: &[String]| l.iter().map(|e| e.to_ascii_lowercase()).collect();
        RunCtx {
            run_id,
            media: lower(&job.media_extensions),
            metadata: lower(&job.metadata_extensions),
            job,
            source,
            engine,
            texts,
            client,
            progress,
            cancel,
            store,
            dirs: Mutex::new(HashMap::new()),
            outputs: Mutex::new(outputs),
            pending_index: Mutex::new(Vec::new()),
            seen: Mutex::new(HashSet::new()),
            messages: Mutex::new((Vec::new(), Vec::new())),
        }
    }

    /// The job's output index as this run left it, when every change of it is stored (so it can
    /// serve the next run without reading the store again).
    pub fn take_outputs(&self) -> Option<HashMap<String, OutputRecord>> {
        let pending = lock(&self.pending_index);
        pending
            .is_empty()
            .then(|| std::mem::take(&mut *lock(&self.outputs)))
    }

    fn error(&self, m: String) {
        tracing::warn!(job = %self.job.name, run = self.run_id, "{m}");
        let mut g = lock(&self.messages);
        if g.0.len() < super::runs::MAX_RUN_MESSAGES {
            g.0.push(m);
        }
    }

    fn warn(&self, m: String) {
        tracing::warn!(job = %self.job.name, run = self.run_id, "{m}");
        let mut g = lock(&self.messages);
        if g.1.len() < super::runs::MAX_RUN_MESSAGES {
            g.1.push(m);
        }
    }

    fn kind(&self, name: &str) -> Option<FileKind> {
        let ext = extension(name)?;
        if self.media.contains(&ext) {
            Some(FileKind::Media)
        } else if self.metadata.contains(&ext) {
            Some(FileKind::Metadata)
        } else {
            None
        }
    }

    /// The output path (relative to the job's output directory) of a source file.
    fn output_of(&self, rel: &str) -> Option<(FileKind, String)> {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let kind = self.kind(name)?;
        let out = match kind {
            FileKind::Media => {
                let stem = rel.rsplit_once('.').map_or(rel, |(s, _)| s);
                format!("{stem}.strm")
            }
            FileKind::Metadata => rel.to_owned(),
        };
        Some((kind, out))
    }

    fn record(&self, out: &str, source: &str) {
        let mut outputs = lock(&self.outputs);
        let fresh = OutputRecord {
            source: source.to_owned(),
            orphan_since: None,
        };
        if outputs.get(out) != Some(&fresh) {
            outputs.insert(out.to_owned(), fresh.clone());
            lock(&self.pending_index).push((out.to_owned(), Some(fresh)));
        }
    }

    fn forget(&self, out: &str) {
        lock(&self.outputs).remove(out);
        lock(&self.pending_index).push((out.to_owned(), None));
    }

    /// Writes pending index changes (all of them with `force`, else only a full batch).
    async fn flush_index(&self, force: bool) -> crate::Result<()> {
        let batch = {
            let mut p = lock(&self.pending_index);
            if p.is_empty() || (!force && p.len() < INDEX_BATCH) {
                return Ok(());
            }
            std::mem::take(&mut *p)
        };
        let store = self.store.clone();
        let job = self.job.name.clone();
        blocking(move || store.update_outputs(&job, &batch)).await
    }

    /// Moves the messages into the run record.
    pub fn finish_into(&self, run: &mut Run) {
        let (errors, warnings) = std::mem::take(&mut *lock(&self.messages));
        for e in errors {
            run.error(e);
        }
        for w in warnings {
            run.warn(w);
        }
        run.counts = self.progress.counts();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unreachable(format!("STRM task failed: {e}")))?
}

fn output_path(job: &JobConfig, out_rel: &str) -> String {
    format!("{}/{out_rel}", job.output.trim_end_matches('/'))
}

/// The directory `dir_rel` below the job's output (created as needed), cached per run.
fn ensure_dir(ctx: &RunCtx, dir_rel: &str) -> crate::Result<NodeId> {
    if let Some(id) = lock(&ctx.dirs).get(dir_rel) {
        return Ok(*id);
    }
    let ns = &ctx.engine.namespace;
    let full = if dir_rel.is_empty() {
        ctx.job.output.trim_end_matches('/').to_owned()
    } else {
        output_path(&ctx.job, dir_rel)
    };
    let mut at = NodeId::ROOT;
    for name in crate::namespace::parse_path(full.as_bytes())? {
        let found = match ns.lookup(at, name.as_bytes()) {
            Err(Error::NotFound(_)) => {
                match ns.create(at, name.as_bytes(), NewNode::directory(OUTPUT_DIR_MODE)) {
                    Err(Error::AlreadyExists(_)) => ns.lookup(at, name.as_bytes())?,
                    other => other?,
                }
            }
            other => other?,
        };
        if found.meta.kind != NodeKind::Directory {
            return Err(Error::NotADirectory(
                String::from_utf8_lossy(&full.into_bytes()).into_owned(),
            ));
        }
        at = found.id;
    }
    lock(&ctx.dirs).insert(dir_rel.to_owned(), at);
    Ok(at)
}

fn split_rel(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// Gives `name` in `parent` this content (creating the file if needed).
fn put_output(
    engine: &Engine,
    parent: NodeId,
    name: &str,
    content: ContentRef,
    mtime_ns: i64,
) -> crate::Result<()> {
    let ns = &engine.namespace;
    for _ in 0..3 {
        match ns.lookup(parent, name.as_bytes()) {
            Ok(v) if v.meta.kind == NodeKind::File => {
                ns.write_content(v.id, content, mtime_ns)?;
                return Ok(());
            }
            Ok(_) => return Err(Error::AlreadyExists(format!("{name} (not a file)"))),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let new = NewNode {
            content: Some(content),
            mtime_ns,
            ..NewNode::file(OUTPUT_FILE_MODE)
        };
        match ns.create(parent, name.as_bytes(), new) {
            Err(Error::AlreadyExists(_)) => continue,
            other => return other.map(|_| ()),
        }
    }
    Err(Error::AlreadyExists(name.to_owned()))
}

/// Processes one source file; never fails the run.
async fn process_file(ctx: Arc<RunCtx>, rel: String, entry: SourceEntry, strategy: RunStrategy) {
    ctx.progress.scanned.fetch_add(1, Ordering::Relaxed);
    let Some((kind, out_rel)) = ctx.output_of(&rel) else {
        return;
    };
    lock(&ctx.seen).insert(out_rel.clone());
    let in_flight = ctx.progress.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    ctx.progress
        .peak_in_flight
        .fetch_max(in_flight, Ordering::SeqCst);
    let outcome = match kind {
        FileKind::Media => write_strm(&ctx, &rel, &out_rel, &entry, strategy).await,
        FileKind::Metadata => write_metadata(&ctx, &rel, &out_rel, &entry, strategy).await,
    };
    ctx.progress.in_flight.fetch_sub(1, Ordering::SeqCst);
    let p = &ctx.progress;
    match outcome {
        Outcome::Written => {
            p.written.fetch_add(1, Ordering::Relaxed);
            ctx.record(&out_rel, &rel);
        }
        Outcome::Unchanged => {
            p.unchanged.fetch_add(1, Ordering::Relaxed);
            ctx.record(&out_rel, &rel);
        }
        Outcome::Skipped => {
            p.skipped.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Ignored => {}
        Outcome::Failed(m) => {
            p.failed.fetch_add(1, Ordering::Relaxed);
            ctx.error(m);
        }
    }
}

async fn write_strm(
    ctx: &Arc<RunCtx>,
    rel: &str,
    out_rel: &str,
    entry: &SourceEntry,
    strategy: RunStrategy,
) -> Outcome {
    let text = match ctx.texts.strm_text(&ctx.job, rel) {
        Ok(t) => t,
        Err(m) => return Outcome::Failed(m),
    };
    let c = ctx.clone();
    let out_rel = out_rel.to_owned();
    let mtime = entry.mtime_ns;
    let r = blocking(move || {
        let (dir, name) = split_rel(&out_rel);
        let parent = ensure_dir(&c, dir)?;
        let existing = match c.engine.namespace.lookup(parent, name.as_bytes()) {
            Ok(v) => Some(v),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(v) = &existing {
            if strategy == RunStrategy::SkipExisting {
                return Ok(Outcome::Skipped);
            }
            let chunk = c.engine.content.config().chunk_size;
            let id = Manifest::for_bytes(text.as_bytes(), chunk)?.id();
            if v.meta.kind == NodeKind::File && v.meta.content.map(|x| x.id) == Some(id) {
                return Ok(Outcome::Unchanged);
            }
        }
        let content = c.engine.content.put_bytes(text.as_bytes())?;
        put_output(&c.engine, parent, name, content, mtime)?;
        Ok(Outcome::Written)
    })
    .await;
    r.unwrap_or_else(|e| Outcome::Failed(format!("{rel}: {e}")))
}

async fn write_metadata(
    ctx: &Arc<RunCtx>,
    rel: &str,
    out_rel: &str,
    entry: &SourceEntry,
    strategy: RunStrategy,
) -> Outcome {
    let mode = ctx.job.metadata.mode;
    if mode == MetaMode::None {
        return Outcome::Ignored;
    }
    let c = ctx.clone();
    let o = out_rel.to_owned();
    let (size, mtime) = (entry.size, entry.mtime_ns);
    let check = blocking(move || {
        let (dir, name) = split_rel(&o);
        let parent = ensure_dir(&c, dir)?;
        match c.engine.namespace.lookup(parent, name.as_bytes()) {
            Ok(v) => {
                if strategy == RunStrategy::SkipExisting
                    || c.job.metadata.update == MetaUpdate::Skip
                {
                    return Ok((parent, Some(Outcome::Skipped)));
                }
                if v.meta.kind == NodeKind::File && v.meta.size == size && v.meta.mtime_ns == mtime
                {
                    return Ok((parent, Some(Outcome::Unchanged)));
                }
                Ok((parent, None))
            }
            Err(Error::NotFound(_)) => Ok((parent, None)),
            Err(e) => Err(e),
        }
    })
    .await;
    let parent = match check {
        Ok((_, Some(done))) => return done,
        Ok((parent, None)) => parent,
        Err(e) => return Outcome::Failed(format!("{rel}: {e}")),
    };
    let store = ctx.engine.content.clone();
    let staged = match blocking(move || store.staging_file().map(|(p, _)| p)).await {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(format!("{rel}: {e}")),
    };
    let fetched = fetch_metadata(ctx, rel, entry, mode, &staged).await;
    if let Err(m) = fetched {
        let _ = std::fs::remove_file(&staged);
        return Outcome::Failed(m);
    }
    let c = ctx.clone();
    let name = split_rel(out_rel).1.to_owned();
    let r = blocking(move || {
        let content = ingest(&c.engine, &staged);
        if content.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        put_output(&c.engine, parent, &name, content?, mtime)
    })
    .await;
    match r {
        Ok(()) => Outcome::Written,
        Err(e) => Outcome::Failed(format!("{rel}: {e}")),
    }
}

/// Metadata files up to this size are stored from memory: `put_file` reads through a buffer of
/// a whole chunk, far more than a poster or an `.nfo` needs.
const SMALL_FILE_BYTES: u64 = 1 << 20;

/// Stores a staged file in the content store (consuming it).
fn ingest(engine: &Engine, staged: &Path) -> crate::Result<ContentRef> {
    let len = std::fs::metadata(staged)
        .map_err(|e| Error::io("stat", staged, e))?
        .len();
    if len > SMALL_FILE_BYTES {
        return engine.content.put_file(staged);
    }
    let data = std::fs::read(staged).map_err(|e| Error::io("read", staged, e))?;
    let content = engine.content.put_bytes(&data)?;
    let _ = std::fs::remove_file(staged);
    Ok(content)
}

/// Gets a metadata file into `staged`: copy first (download on an I/O error), or download.
async fn fetch_metadata(
    ctx: &RunCtx,
    rel: &str,
    entry: &SourceEntry,
    mode: MetaMode,
    staged: &Path,
) -> Result<(), String> {
    let url = ctx.source.download_url(rel, entry);
    let download = |why: Option<String>| async {
        let Some(url) = &url else {
            return Err(match why {
                Some(w) => format!("{rel}: {w}; no download URL to fall back to"),
                None => format!("{rel}: the source has no download URL"),
            });
        };
        source::download(&ctx.client, url, staged)
            .await
            .map_err(|e| match &why {
                Some(w) => format!("{rel}: copy failed ({w}), download failed too ({e})"),
                None => format!("{rel}: {e}"),
            })
    };
    match mode {
        MetaMode::Download => download(None).await,
        _ => match ctx.source.copy_to(rel, staged).await {
            Ok(()) => Ok(()),
            Err(ReadError::Io(e)) => {
                tracing::debug!(%rel, error = %e, "metadata copy failed, downloading");
                download(Some(e)).await
            }
            Err(ReadError::Other(e)) => Err(format!("{rel}: {e}")),
        },
    }
}

/// What a scan found out about completeness.
#[derive(Default)]
struct ScanReport {
    listing_errors: u64,
    /// Directories not descended into (depth limit): their outputs are not orphans.
    cut: Vec<String>,
    cancelled: bool,
}

/// Scans from `start` (relative dir, depth `start_depth`), handing files to the worker pool.
async fn scan(ctx: &Arc<RunCtx>, start: &str, strategy: RunStrategy) -> ScanReport {
    let mut report = ScanReport::default();
    let mut pacer = Pacer::new(ctx.job.qps);
    let permits = Arc::new(Semaphore::new(ctx.job.max_concurrency));
    let mut workers = JoinSet::new();
    let start_depth = if start.is_empty() {
        0
    } else {
        start.split('/').count() as u32
    };
    let mut queue = VecDeque::from([(start.to_owned(), start_depth)]);
    while let Some((dir, depth)) = queue.pop_front() {
        if ctx.cancel.is_cancelled() {
            report.cancelled = true;
            break;
        }
        let entries = match ctx.source.list(&dir, &mut pacer, &ctx.cancel).await {
            Listing::Present(e) => e,
            Listing::Absent if dir.is_empty() => {
                report.listing_errors += 1;
                ctx.error(
                    "the source root does not exist (unmounted?): nothing is cleaned up".into(),
                );
                continue;
            }
            Listing::Absent => {
                ctx.warn(format!("{dir}: gone while scanning"));
                continue;
            }
            Listing::Unknown(e) => {
                report.listing_errors += 1;
                ctx.error(e);
                continue;
            }
        };
        for e in entries {
            let rel = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            if e.is_dir {
                if depth + 1 > ctx.job.max_depth {
                    ctx.warn(format!(
                        "{rel}: deeper than max_depth {} below the source root, not scanned",
                        ctx.job.max_depth
                    ));
                    report.cut.push(rel);
                } else {
                    queue.push_back((rel, depth + 1));
                }
                continue;
            }
            if ctx.cancel.is_cancelled() {
                break;
            }
            let permit = tokio::select! {
                _ = ctx.cancel.cancelled() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let c = ctx.clone();
            workers.spawn(async move {
                process_file(c, rel, e, strategy).await;
                drop(permit);
            });
            // Reap finished workers as we go so the set stays small.
            while let Some(done) = workers.try_join_next() {
                if let Err(e) = done {
                    ctx.error(format!("a worker failed: {e}"));
                }
            }
        }
        if let Err(e) = ctx.flush_index(false).await {
            ctx.error(format!("writing the output index: {e}"));
        }
    }
    if ctx.cancel.is_cancelled() {
        report.cancelled = true;
    }
    while let Some(done) = workers.join_next().await {
        if let Err(e) = done {
            ctx.error(format!("a worker failed: {e}"));
        }
    }
    report
}

/// Deletes an output file (only called for files in the job's index), then its directories
/// while they are empty, up to the output root.
fn delete_output(ctx: &RunCtx, out_rel: &str) -> crate::Result<bool> {
    let ns = &ctx.engine.namespace;
    let path = output_path(&ctx.job, out_rel);
    let (parent, name) = match ns.resolve_parent(path.as_bytes()) {
        Ok(p) => p,
        Err(Error::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    let removed = match ns.lookup(parent.id, name.as_bytes()) {
        Ok(v) if v.meta.kind == NodeKind::File => {
            ns.unlink(parent.id, name.as_bytes())?;
            true
        }
        Ok(_) | Err(Error::NotFound(_)) => false,
        Err(e) => return Err(e),
    };
    // Empty directories the outputs lived in go too; a media server's file keeps one.
    let mut dir = split_rel(out_rel).0.to_owned();
    while !dir.is_empty() {
        let full = output_path(&ctx.job, &dir);
        let Ok((p, n)) = ns.resolve_parent(full.as_bytes()) else {
            break;
        };
        if ns.rmdir(p.id, n.as_bytes()).is_err() {
            break;
        }
        lock(&ctx.dirs).remove(&dir);
        dir = split_rel(&dir).0.to_owned();
    }
    Ok(removed)
}

async fn delete_outputs(ctx: &Arc<RunCtx>, outs: Vec<String>) {
    for out in outs {
        let c = ctx.clone();
        let o = out.clone();
        match blocking(move || delete_output(&c, &o)).await {
            Ok(removed) => {
                if removed {
                    ctx.progress.deleted.fetch_add(1, Ordering::Relaxed);
                }
                ctx.forget(&out);
            }
            Err(e) => {
                ctx.progress.failed.fetch_add(1, Ordering::Relaxed);
                ctx.error(format!("deleting {out}: {e}"));
            }
        }
    }
}

fn under(prefix: &str, path: &str) -> bool {
    prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// Orphan cleanup after a complete full scan (see the module docs). Returns the held paths when
/// the deletion is over the threshold.
async fn cleanup(ctx: &Arc<RunCtx>, report: &ScanReport, now: bool) -> Vec<String> {
    let seen = std::mem::take(&mut *lock(&ctx.seen));
    let outputs = lock(&ctx.outputs).clone();
    let total = outputs.len() as u64;
    let mut orphans: Vec<(String, OutputRecord)> = outputs
        .into_iter()
        .filter(|(out, rec)| {
            !seen.contains(out) && !report.cut.iter().any(|c| under(c, &rec.source))
        })
        .collect();
    orphans.sort_by(|a, b| a.0.cmp(&b.0));
    let n = orphans.len() as u64;
    if n == 0 {
        return Vec::new();
    }
    let job = &ctx.job;
    if over_threshold(job, n, total) {
        ctx.warn(format!(
            "cleanup of {n} of {total} outputs is over the threshold ({}% or {} files): \
             held until an operator confirms it",
            job.cleanup_max_percent, job.cleanup_max_files
        ));
        return orphans.into_iter().map(|(o, _)| o).collect();
    }
    let mut due = Vec::new();
    for (out, mut rec) in orphans {
        match rec.orphan_since {
            Some(run) if run < ctx.run_id => due.push(out),
            _ if now => due.push(out),
            Some(_) => {}
            None => {
                rec.orphan_since = Some(ctx.run_id);
                lock(&ctx.outputs).insert(out.clone(), rec.clone());
                lock(&ctx.pending_index).push((out, Some(rec)));
            }
        }
    }
    let marked = n - due.len() as u64;
    if marked > 0 {
        ctx.warn(format!(
            "{marked} outputs lost their source: deleted by the next full run (or now with --now)"
        ));
    }
    delete_outputs(ctx, due).await;
    Vec::new()
}

/// Runs a full or skip-existing run. Returns the held cleanup, if any.
pub(super) async fn run_scan(
    ctx: &Arc<RunCtx>,
    strategy: RunStrategy,
    cleanup_now: bool,
) -> Vec<String> {
    let report = scan(ctx, "", strategy).await;
    let mut held = Vec::new();
    if strategy == RunStrategy::Full {
        if report.cancelled {
            ctx.warn("cancelled: no cleanup".into());
        } else if report.listing_errors > 0 {
            ctx.warn(format!(
                "{} listings failed: no cleanup this run (nothing is deleted on an unclear answer)",
                report.listing_errors
            ));
        } else {
            held = cleanup(ctx, &report, cleanup_now).await;
        }
    }
    if let Err(e) = ctx.flush_index(true).await {
        ctx.error(format!("writing the output index: {e}"));
    }
    held
}

/// Deletes the outputs a held run listed (those still in the index).
pub(super) async fn run_confirmed(ctx: &Arc<RunCtx>, held: Vec<String>) {
    let known: Vec<String> = {
        let outputs = lock(&ctx.outputs);
        held.into_iter()
            .filter(|o| outputs.contains_key(o))
            .collect()
    };
    delete_outputs(ctx, known).await;
    if let Err(e) = ctx.flush_index(true).await {
        ctx.error(format!("writing the output index: {e}"));
    }
}

/// Applies webhook changes without a scan.
pub(super) async fn run_incremental(ctx: &Arc<RunCtx>, changes: &[JobChange]) -> Vec<String> {
    // Deletions announced by events go at once, unless together they are a mass deletion (a
    // whole library "deleted" by an unmount looks like this): then they wait for an operator.
    let total = lock(&ctx.outputs).len() as u64;
    let mut held = Vec::new();
    let mut deleting = 0u64;
    for change in changes {
        if ctx.cancel.is_cancelled() {
            ctx.warn("cancelled".into());
            break;
        }
        if let Some(src) = &change.source
            && matches!(change.action, Action::Delete | Action::Rename)
        {
            let outs = outputs_of_source(ctx, src, change.is_dir);
            // A rename moves outputs (they are written again under the new name): only deletions
            // count toward the threshold.
            let moved = change.action == Action::Rename && change.destination.is_some();
            if !moved {
                deleting += outs.len() as u64;
            }
            if !moved && (!held.is_empty() || over_threshold(&ctx.job, deleting, total)) {
                held.extend(outs);
            } else {
                delete_outputs(ctx, outs).await;
            }
        }
        let created = match change.action {
            Action::Create => change.source.as_ref(),
            Action::Rename => change.destination.as_ref(),
            Action::Delete => None,
        };
        if let Some(rel) = created {
            produce(ctx, rel, change.is_dir).await;
        }
    }
    if !held.is_empty() {
        ctx.warn(format!(
            "events delete {} of {total} outputs, over the threshold ({}% or {} files): held \
             until an operator confirms it",
            held.len(),
            ctx.job.cleanup_max_percent,
            ctx.job.cleanup_max_files
        ));
    }
    if let Err(e) = ctx.flush_index(true).await {
        ctx.error(format!("writing the output index: {e}"));
    }
    held
}

/// Whether deleting `n` of a job's `total` outputs needs an operator's confirmation.
fn over_threshold(job: &JobConfig, n: u64, total: u64) -> bool {
    n > job.cleanup_max_files || n * 100 > total * u64::from(job.cleanup_max_percent)
}

fn outputs_of_source(ctx: &RunCtx, src: &str, is_dir: bool) -> Vec<String> {
    lock(&ctx.outputs)
        .iter()
        .filter(|(_, r)| {
            if is_dir {
                under(src, &r.source)
            } else {
                r.source == src
            }
        })
        .map(|(o, _)| o.clone())
        .collect()
}

async fn produce(ctx: &Arc<RunCtx>, rel: &str, is_dir: bool) {
    if is_dir {
        let report = scan(ctx, rel, RunStrategy::Incremental).await;
        if report.listing_errors > 0 {
            ctx.warn(format!("{rel}: {} listings failed", report.listing_errors));
        }
        return;
    }
    match ctx.source.stat(rel).await {
        Ok(Some(entry)) if !entry.is_dir => {
            process_file(ctx.clone(), rel.to_owned(), entry, RunStrategy::Incremental).await;
        }
        Ok(Some(_)) => {
            Box::pin(produce(ctx, rel, true)).await;
        }
        Ok(None) => ctx.warn(format!(
            "{rel}: announced but not in the source (already gone?)"
        )),
        Err(e) => {
            ctx.progress.failed.fetch_add(1, Ordering::Relaxed);
            ctx.error(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_and_prefixes() {
        assert_eq!(extension("A.MKV").as_deref(), Some("mkv"));
        assert_eq!(extension(".hidden"), None);
        assert_eq!(extension("noext"), None);
        assert!(under("", "a"));
        assert!(under("a", "a/b"));
        assert!(!under("a", "ab/c"));
    }
}
