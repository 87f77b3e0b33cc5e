//! Group commit: concurrent changes share one write transaction.
//!
//! redb runs one write transaction at a time and each commit has a fixed cost,
//! so callers that arrive while a change is running join the same transaction
//! instead of queueing for their own. The first caller to find no open
//! transaction becomes the *leader*: it opens one, runs its change, lets every
//! caller already waiting run theirs (up to [`MAX_GROUP_CHANGES`] or
//! [`MAX_GROUP_WAIT`]), then commits once and wakes them. A lone caller pays
//! nothing extra: it is leader and member at once.
//!
//! A change that fails before writing anything (the usual case: a name taken,
//! a directory not empty) only fails itself. A change that fails after writing
//! (a storage error) poisons the group: the transaction is dropped, so nothing
//! of the group lands, and every member is told — no caller is ever told its
//! change landed when it did not.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redb::{Database, Durability, WriteTransaction};

use crate::{Error, Result};

/// The most changes one group commits.
pub(crate) const MAX_GROUP_CHANGES: usize = 512;

/// How long a leader waits for late joiners before committing.
pub(crate) const MAX_GROUP_WAIT: Duration = Duration::from_millis(2);

/// How many failed groups are remembered for members that wake late.
const FAILED_GROUPS_KEPT: usize = 256;

/// What one member's change produced: its value, or its error and whether it
/// had already written when it failed.
pub(crate) type Step<T> = std::result::Result<T, (Error, bool)>;

#[derive(Default)]
struct State {
    txn: Option<WriteTransaction>,
    /// The open group's number; bumped when it ends.
    generation: u64,
    members: usize,
    poisoned: bool,
    /// Why recent groups failed, by generation.
    failed: BTreeMap<u64, String>,
}

/// The group commit of one database (see the module docs).
#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    ended: Condvar,
    /// Callers waiting for the state lock, so the leader knows whom to wait for.
    joining: AtomicUsize,
    /// Groups committed so far (non-durably).
    committed: AtomicU64,
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every unlock, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Groups committed so far.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Runs `change` inside the current group's transaction and returns once
    /// that transaction has committed (non-durably) or failed.
    pub fn run<T>(
        &self,
        db: &Database,
        change: impl FnOnce(&WriteTransaction) -> Step<T>,
    ) -> Result<T> {
        self.joining.fetch_add(1, Ordering::SeqCst);
        let mut g = self.lock();
        self.joining.fetch_sub(1, Ordering::SeqCst);
        let leader = g.txn.is_none();
        if leader {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::None)?;
            g.txn = Some(txn);
            g.members = 0;
        }
        let generation = g.generation;
        g.members += 1;
        let outcome = match g.txn.as_ref() {
            Some(txn) => change(txn),
            None => Err((Error::GroupCommit("no open transaction".into()), false)),
        };
        let outcome = outcome.map_err(|(e, wrote)| {
            g.poisoned |= wrote;
            e
        });
        if !leader {
            while g.generation == generation {
                g = self.ended.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            return match g.failed.get(&generation) {
                Some(why) => Err(Error::GroupCommit(why.clone())),
                None => outcome,
            };
        }
        let start = Instant::now();
        while self.joining.load(Ordering::SeqCst) > 0
            && g.members < MAX_GROUP_CHANGES
            && start.elapsed() < MAX_GROUP_WAIT
        {
            drop(g);
            std::thread::yield_now();
            g = self.lock();
        }
        let txn = g.txn.take();
        let committed = match (txn, g.poisoned) {
            (Some(txn), false) => txn.commit().map_err(Error::from),
            (Some(txn), true) => {
                drop(txn);
                Err(Error::GroupCommit(
                    "a change of the group failed after writing".into(),
                ))
            }
            (None, _) => Err(Error::GroupCommit("no open transaction".into())),
        };
        g.poisoned = false;
        if let Err(e) = &committed {
            g.failed.insert(generation, e.to_string());
            while g.failed.len() > FAILED_GROUPS_KEPT {
                g.failed.pop_first();
            }
        } else {
            self.committed.fetch_add(1, Ordering::SeqCst);
        }
        g.generation += 1;
        drop(g);
        self.ended.notify_all();
        committed?;
        outcome
    }
}
