//! The persisted STRM run queue and the index of what each job wrote.
//!
//! Runs live in the region's redb, keyed by their id in big-endian bytes, so store order is
//! creation order and the oldest queued run is served first. A run found `running` when the
//! region starts was interrupted: it goes back to `queued` and runs again (a run is idempotent:
//! unchanged outputs are not rewritten).
//!
//! The output index maps `job \0 output path` (relative to the job's output directory) to the
//! source path that produced it. Cleanup only ever deletes files in this index, so files a media
//! server wrote into the output tree are never touched.

use std::collections::HashMap;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::webhook::Action;
use crate::config::RunStrategy;
use crate::{Error, Result};

const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("strm_runs");
const OUTPUTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("strm_outputs");
/// The ids of queued runs: the next run to serve is the first key.
const QUEUED: TableDefinition<u64, ()> = TableDefinition::new("strm_queued");

/// Runs kept in the store: the oldest finished ones go when a new one is queued beyond this.
pub const MAX_KEPT_RUNS: u64 = 10_000;

/// Errors and warnings a run keeps at most (the counts keep counting).
pub const MAX_RUN_MESSAGES: usize = 100;

/// What asked for a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Schedule,
    Cli,
    Console,
    Webhook,
    /// An operator confirmed a held cleanup.
    Confirm,
}

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Queued,
    Running,
    Done,
    /// Finished, but its cleanup is larger than the job's threshold and waits for
    /// `geosync strm confirm-cleanup`.
    Held,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn is_finished(self) -> bool {
        !matches!(self, RunState::Queued | RunState::Running)
    }
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Source files seen.
    pub scanned: u64,
    /// Outputs written (new or changed).
    pub written: u64,
    /// Outputs already up to date.
    pub unchanged: u64,
    /// Files skipped by the strategy (skip-existing, `SkipMeta`).
    pub skipped: u64,
    /// Outputs deleted.
    pub deleted: u64,
    /// Files that could not be processed.
    pub failed: u64,
}

/// A change an incremental run applies, with paths relative to the job's source root
/// (`None`: that side is outside the job).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobChange {
    pub action: Action,
    pub is_dir: bool,
    pub source: Option<String>,
    pub destination: Option<String>,
}

/// One run of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: u64,
    pub job: String,
    pub strategy: RunStrategy,
    pub trigger: Trigger,
    pub state: RunState,
    /// Delete orphans at once instead of after one more run.
    pub cleanup_now: bool,
    /// A confirmation run: deletes what run `confirms` held, nothing else.
    pub confirms: Option<u64>,
    pub counts: Counts,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// The changes an incremental run applies.
    pub changes: Vec<JobChange>,
    /// Output paths a held cleanup would delete.
    pub held: Vec<String>,
    /// For a held run: the confirmation run queued for it.
    pub confirmed_by: Option<u64>,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

impl Run {
    /// Keeps an error (up to [`MAX_RUN_MESSAGES`]).
    pub fn error(&mut self, message: String) {
        if self.errors.len() < MAX_RUN_MESSAGES {
            self.errors.push(message);
        }
    }

    /// Keeps a warning (up to [`MAX_RUN_MESSAGES`]).
    pub fn warn(&mut self, message: String) {
        if self.warnings.len() < MAX_RUN_MESSAGES {
            self.warnings.push(message);
        }
    }
}

/// An output a job wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// The source file (relative to the source root) it was made from.
    pub source: String,
    /// Set by the first full run that found its source gone: the next one deletes it (grace).
    pub orphan_since: Option<u64>,
}

fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|source| Error::Encode { what, source })
}

fn decode<'a, T: Deserialize<'a>>(what: &'static str, b: &'a [u8]) -> Result<T> {
    postcard::from_bytes(b).map_err(|source| Error::Decode { what, source })
}

fn output_key(job: &str, path: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(job.len() + 1 + path.len());
    k.extend_from_slice(job.as_bytes());
    k.push(0);
    k.extend_from_slice(path.as_bytes());
    k
}

fn job_range(job: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = job.as_bytes().to_vec();
    start.push(0);
    let mut end = job.as_bytes().to_vec();
    end.push(1);
    (start, end)
}

/// The run queue and output index over a region's database (blocking calls).
#[derive(Clone)]
pub struct RunStore {
    db: std::sync::Arc<Database>,
    max_kept: u64,
}

impl RunStore {
    /// Opens the tables and puts runs interrupted by a stop back in the queue.
    pub fn open(db: std::sync::Arc<Database>) -> Result<RunStore> {
        let txn = db.begin_write()?;
        {
            let mut runs = txn.open_table(RUNS)?;
            let mut queued = txn.open_table(QUEUED)?;
            txn.open_table(OUTPUTS)?;
            let mut interrupted = Vec::new();
            for item in runs.iter()? {
                let (_, v) = item?;
                let run: Run = decode("STRM run", v.value())?;
                if run.state == RunState::Running {
                    interrupted.push(run);
                }
            }
            for mut run in interrupted {
                run.state = RunState::Queued;
                run.warn("interrupted by a region stop; queued again".into());
                runs.insert(run.id, encode("STRM run", &run)?.as_slice())?;
                queued.insert(run.id, ())?;
            }
        }
        txn.commit()?;
        Ok(RunStore {
            db,
            max_kept: MAX_KEPT_RUNS,
        })
    }

    /// Keeps at most `max_kept` runs (see [`MAX_KEPT_RUNS`]).
    pub fn with_max_kept(mut self, max_kept: u64) -> Self {
        self.max_kept = max_kept;
        self
    }

    /// Queues a run; its id is assigned here.
    pub fn enqueue(&self, mut run: Run) -> Result<Run> {
        let txn = self.db.begin_write()?;
        {
            let mut runs = txn.open_table(RUNS)?;
            let last = runs.last()?.map(|(k, _)| k.value()).unwrap_or(0);
            run.id = last + 1;
            run.state = RunState::Queued;
            runs.insert(run.id, encode("STRM run", &run)?.as_slice())?;
            txn.open_table(QUEUED)?.insert(run.id, ())?;
            // Forget the oldest finished runs (a queued or running one stops the pruning).
            while runs.len()? > self.max_kept {
                let Some((k, v)) = runs.first()? else { break };
                let (id, old): (u64, Run) = (k.value(), decode("STRM run", v.value())?);
                drop((k, v));
                if !old.state.is_finished() {
                    break;
                }
                runs.remove(id)?;
            }
        }
        txn.commit()?;
        Ok(run)
    }

    /// Stores a run's new state.
    pub fn save(&self, run: &Run) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(RUNS)?
            .insert(run.id, encode("STRM run", run)?.as_slice())?;
        {
            let mut queued = txn.open_table(QUEUED)?;
            if run.state == RunState::Queued {
                queued.insert(run.id, ())?;
            } else {
                queued.remove(run.id)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn get(&self, id: u64) -> Result<Option<Run>> {
        let txn = self.db.begin_read()?;
        let runs = txn.open_table(RUNS)?;
        runs.get(id)?
            .map(|v| decode("STRM run", v.value()))
            .transpose()
    }

    /// The oldest queued run.
    pub fn next_queued(&self) -> Result<Option<Run>> {
        let txn = self.db.begin_read()?;
        let runs = txn.open_table(RUNS)?;
        let queued = txn.open_table(QUEUED)?;
        for item in queued.iter()? {
            let (id, _) = item?;
            if let Some(v) = runs.get(id.value())? {
                let run: Run = decode("STRM run", v.value())?;
                if run.state == RunState::Queued {
                    return Ok(Some(run));
                }
            }
        }
        Ok(None)
    }

    /// The newest `limit` runs, newest first.
    pub fn list(&self, limit: usize) -> Result<Vec<Run>> {
        let txn = self.db.begin_read()?;
        let runs = txn.open_table(RUNS)?;
        let mut out = Vec::new();
        for item in runs.iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item?;
            out.push(decode("STRM run", v.value())?);
        }
        Ok(out)
    }

    /// Whether `job` has a queued or running run.
    pub fn has_pending(&self, job: &str) -> Result<bool> {
        let txn = self.db.begin_read()?;
        let runs = txn.open_table(RUNS)?;
        for item in runs.iter()?.rev() {
            let (_, v) = item?;
            let run: Run = decode("STRM run", v.value())?;
            if run.job == job && !run.state.is_finished() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every output of `job`: output path -> record.
    pub fn outputs(&self, job: &str) -> Result<HashMap<String, OutputRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTPUTS)?;
        let (start, end) = job_range(job);
        let mut out = HashMap::new();
        for item in table.range(start.as_slice()..end.as_slice())? {
            let (k, v) = item?;
            let path = String::from_utf8_lossy(&k.value()[start.len()..]).into_owned();
            out.insert(path, decode("STRM output", v.value())?);
        }
        Ok(out)
    }

    /// Records (`Some`) or forgets (`None`) outputs of `job`, in one transaction.
    pub fn update_outputs(
        &self,
        job: &str,
        changes: &[(String, Option<OutputRecord>)],
    ) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(OUTPUTS)?;
            for (path, record) in changes {
                let key = output_key(job, path);
                match record {
                    Some(r) => {
                        table.insert(key.as_slice(), encode("STRM output", r)?.as_slice())?;
                    }
                    None => {
                        table.remove(key.as_slice())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(job: &str) -> Run {
        Run {
            id: 0,
            job: job.into(),
            strategy: RunStrategy::Full,
            trigger: Trigger::Cli,
            state: RunState::Queued,
            cleanup_now: false,
            confirms: None,
            counts: Counts::default(),
            errors: vec![],
            warnings: vec![],
            changes: vec![],
            held: vec![],
            confirmed_by: None,
            created_ms: 1,
            started_ms: None,
            finished_ms: None,
        }
    }

    #[test]
    fn queue_serves_in_order_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let db = crate::store::open_database(&path).unwrap();
            let store = RunStore::open(db).unwrap();
            let a = store.enqueue(run("a")).unwrap();
            let b = store.enqueue(run("b")).unwrap();
            assert_eq!((a.id, b.id), (1, 2));
            let mut first = store.next_queued().unwrap().unwrap();
            assert_eq!(first.id, 1);
            first.state = RunState::Running;
            store.save(&first).unwrap();
            assert_eq!(store.next_queued().unwrap().unwrap().id, 2);
            assert!(store.has_pending("a").unwrap());
            store
                .update_outputs(
                    "a",
                    &[(
                        "x.strm".into(),
                        Some(OutputRecord {
                            source: "x.mkv".into(),
                            orphan_since: None,
                        }),
                    )],
                )
                .unwrap();
        }
        let db = crate::store::open_database(&path).unwrap();
        let store = RunStore::open(db).unwrap();
        // The interrupted run is queued again, first.
        let again = store.next_queued().unwrap().unwrap();
        assert_eq!(again.id, 1);
        assert_eq!(again.warnings.len(), 1);
        assert_eq!(
            store
                .list(10)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            [2, 1]
        );
        let outputs = store.outputs("a").unwrap();
        // Pruning: the oldest finished runs go, a queued one stops it.
        let store = store.with_max_kept(2);
        let mut first = store.get(1).unwrap().unwrap();
        first.state = RunState::Done;
        store.save(&first).unwrap();
        store.enqueue(run("c")).unwrap();
        assert_eq!(
            store
                .list(10)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            [3, 2]
        );
        store.enqueue(run("d")).unwrap();
        assert_eq!(
            store.list(10).unwrap().len(),
            3,
            "queued runs are never pruned"
        );
        assert_eq!(outputs["x.strm"].source, "x.mkv");
        assert!(store.outputs("ab").unwrap().is_empty());
    }
}
