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
}

/// Ended groups, behind their own lock so that members waking up do not
/// compete with the next group for the state lock.
#[derive(Default)]
struct Ended {
    /// Groups `0..count` have ended.
    count: u64,
    /// Why recent groups failed, by generation.
    failed: BTreeMap<u64, String>,
}

/// The group commit of one database (see the module docs).
#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    ended: Mutex<Ended>,
    /// Signalled when a group ends (its members may return).
    ended_cv: Condvar,
    /// Signalled when a joiner has run its change (the leader may commit).
    joined: Condvar,
    /// Callers that arrived and have not run their change yet: the leader waits
    /// for them before it commits.
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
        let leader = g.txn.is_none();
        if leader {
            let opened = db.begin_write().map_err(Error::from).and_then(|mut txn| {
                txn.set_durability(Durability::None)?;
                Ok(txn)
            });
            match opened {
                Ok(txn) => g.txn = Some(txn),
                Err(e) => {
                    self.joining.fetch_sub(1, Ordering::SeqCst);
                    return Err(e);
                }
            }
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
        self.joining.fetch_sub(1, Ordering::SeqCst);
        if !leader {
            drop(g);
            self.joined.notify_one();
            let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            while ended.count <= generation {
                ended = self.ended_cv.wait(ended).unwrap_or_else(|p| p.into_inner());
            }
            return match ended.failed.get(&generation) {
                Some(why) => Err(Error::GroupCommit(why.clone())),
                None => outcome,
            };
        }
        // Let every caller that arrived meanwhile run its change first.
        let deadline = Instant::now() + MAX_GROUP_WAIT;
        while self.joining.load(Ordering::SeqCst) > 0 && g.members < MAX_GROUP_CHANGES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = self
                .joined
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
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
        g.generation += 1;
        if committed.is_ok() {
            self.committed.fetch_add(1, Ordering::SeqCst);
        }
        drop(g);
        {
            let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = &committed {
                ended.failed.insert(generation, e.to_string());
                while ended.failed.len() > FAILED_GROUPS_KEPT {
                    ended.failed.pop_first();
                }
            }
            ended.count = generation + 1;
        }
        self.ended_cv.notify_all();
        committed?;
        outcome
    }
}
