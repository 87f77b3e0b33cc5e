//! The sync queue: a region's persisted outgoing change queue.
//!
//! Every local write becomes a change event that must reach the coordinator. The queue keeps the
//! encoded event (an opaque payload: the queue never decodes it) durably until the coordinator
//! acknowledges it, retrying failed pushes with exponential backoff.
//!
//! # Storage
//!
//! The queue lives in the region's redb [`Database`], next to other tables, in a single table
//! named `queue` (`&[u8] -> &[u8]`). The first byte of every key is a tag that splits the table
//! into keyspaces; the numbers in keys are big-endian, so keys compare like the numbers they
//! encode:
//!
//! - `i ++ id(8)` -> postcard-encoded [`QueueItem`], every item in every state;
//! - `r ++ priority(1) ++ due_at_ms(8) ++ id(8)` -> empty, one entry per
//!   [`Pending`](ItemState::Pending) or [`Retrying`](ItemState::Retrying) item (the ready index);
//! - `f ++ id(8)` -> empty, one entry per [`InFlight`](ItemState::InFlight) item;
//! - `a ++ enqueued_at_ms(8) ++ id(8)` -> empty, one entry per item that is not dead;
//! - `m` -> one postcard-encoded record of the counters: the next id and the per-state counts.
//!
//! A keyspace is read as the range of its tag (`r` up to, not including, `s`, and so on).
//!
//! One table rather than one per keyspace because a write transaction pays at commit for every
//! distinct table it wrote (the copy-on-write of the table's root path and the update of its
//! root), on top of the pages it dirtied. [`SyncQueue::enqueue_in`] runs once per change inside the
//! caller's transaction: it adds one table to it, and within that table it writes after the newest
//! item, after the newest entry of the `a` keyspace and after the latest-due entry of its priority
//! in the `r` keyspace (clocks permitting); the `m` record sorts right after the newest item, so
//! it usually shares its page. The counters record is written only by transactions that change a
//! counter.
//!
//! The ready keys make the store order the service order: the `r` keyspace iterates by priority
//! (0 first), then by due time, then by id (the enqueue order). [`SyncQueue::take`] therefore
//! reads, for each priority, the prefix of entries whose due time has passed and stops: it never
//! visits items that are not ready, whatever the queue's length. Items not due yet (retries backing
//! off) sort after the ready ones of their priority, so they cost nothing either. The counters are
//! updated in the same transactions as the items, so [`SyncQueue::stats`] and [`SyncQueue::len`]
//! are exact and O(1); the `a` keyspace answers the oldest item's age with one lookup; the `f`
//! keyspace makes restart recovery proportional to the number of items in flight, not to the
//! queue's length.
//!
//! Ids come from a persisted counter, start at 1 and only grow: a committed id is never handed out
//! again, not even after a restart. (An id returned by [`SyncQueue::enqueue_in`] in a transaction
//! the caller then aborts was never stored and may be handed out again.)
//!
//! # Life of an item
//!
//! `Pending` (due at enqueue time) -> [`take`](SyncQueue::take) -> `InFlight` ->
//! [`ack`](SyncQueue::ack) removes it, or [`fail`](SyncQueue::fail) -> `Retrying` (due after a
//! backoff) -> `take` again, ... An item is ready when it is `Pending` or `Retrying` and its due
//! time is at or before the `now_ms` passed in (so a `Pending` item is ready at once unless the
//! clock passed in goes backwards).
//!
//! # Restart
//!
//! An item in flight when the process stopped may or may not have reached the coordinator. On
//! [`SyncQueue::open`] every `InFlight` item returns to `Pending` with its due time and attempt
//! count unchanged, and is pushed again: delivery is at least once, and the coordinator must treat
//! a repeated event as a no-op.
//!
//! # Dead letters
//!
//! After [`QueueConfig::max_attempts`] failed attempts an item becomes `Dead`. Dead items are never
//! taken again but are never dropped silently either: they stay in the queue, visible in
//! [`SyncQueue::list`] and counted in [`QueueStats::dead`], until an operator retries them
//! ([`SyncQueue::retry_now`]) or drops them ([`SyncQueue::drop_item`]).
//!
//! # Unknown ids
//!
//! Consumer calls ([`ack`](SyncQueue::ack), [`fail`](SyncQueue::fail),
//! [`fail_many`](SyncQueue::fail_many)) tolerate ids that are no longer in flight (acks may be
//! repeated, an operator may have dropped an item meanwhile); operator calls
//! ([`retry_now`](SyncQueue::retry_now), [`drop_item`](SyncQueue::drop_item)) report an unknown
//! id as [`Error::QueueItemNotFound`].
//!
//! # Transactions
//!
//! Each call is one redb transaction (batches included). redb runs one write transaction at a
//! time: a thread holding a write transaction must use [`SyncQueue::enqueue_in`] with it, never a
//! method that opens its own, or it deadlocks.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::error::{Error, Result};

/// A queue item's id: from a persisted counter, increasing, never reused once committed.
pub type ItemId = u64;

/// The lowest priority (the highest number) an item may have.
pub const MAX_PRIORITY: u8 = 3;

/// Priority of a delete event.
pub const PRIORITY_DELETE: u8 = 0;
/// Priority of a create event.
pub const PRIORITY_CREATE: u8 = 1;
/// Priority of an update event.
pub const PRIORITY_UPDATE: u8 = 2;
/// Priority of a metadata event.
pub const PRIORITY_METADATA: u8 = 3;

/// The largest payload the queue accepts, in bytes (16 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// The queue's only table: every keyspace of the module doc, told apart by the key's first byte.
const QUEUE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("queue");

/// Tag of the items: `i ++ id`.
const TAG_ITEM: u8 = b'i';
/// Tag of the ready index: `r ++ priority ++ due_at_ms ++ id`.
const TAG_READY: u8 = b'r';
/// Tag of the in-flight index: `f ++ id`.
const TAG_INFLIGHT: u8 = b'f';
/// Tag of the age index: `a ++ enqueued_at_ms ++ id`.
const TAG_AGE: u8 = b'a';
/// Tag (and whole key) of the counters record.
const TAG_COUNTERS: u8 = b'm';

const ITEM_KEY_LEN: usize = 9;
const READY_KEY_LEN: usize = 18;
const INFLIGHT_KEY_LEN: usize = 9;
const AGE_KEY_LEN: usize = 17;
const COUNTERS_KEY: &[u8] = &[TAG_COUNTERS];

/// The value of an index entry: the key says it all.
const EMPTY: &[u8] = &[];

const ITEM_RECORD: &str = "sync queue item";
const COUNTERS_RECORD: &str = "sync queue counters";
const KEY_RECORD: &str = "sync queue key";

/// Where an item is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemState {
    /// Waiting to be pushed (new, recovered after a restart, or retried by an operator).
    Pending,
    /// Taken by the consumer and being pushed: waiting for an ack or a failure.
    InFlight,
    /// A push failed; waiting for its backoff to end (`due_at_ms`).
    Retrying,
    /// Failed `max_attempts` times: kept for an operator, never taken again.
    Dead,
}

/// One queued change event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    /// The item's id.
    pub id: ItemId,
    /// 0 (highest) to 3: delete 0, create 1, update 2, metadata 3.
    pub priority: u8,
    /// The encoded event, opaque to the queue.
    pub payload: Vec<u8>,
    /// Where the item is in its life.
    pub state: ItemState,
    /// Failed attempts so far (reset by [`SyncQueue::retry_now`]).
    pub attempts: u32,
    /// When the item was enqueued (ms, the caller's clock).
    pub enqueued_at_ms: u64,
    /// When the item may next be taken (ms). For an in-flight item, when it was due when taken;
    /// for a dead one, when its last retry was due.
    pub due_at_ms: u64,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
}

/// The queue's retry policy.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Backoff after the first failed attempt (default 500 ms); it doubles with each failure.
    pub base_backoff: Duration,
    /// The longest backoff (default 60 s).
    pub max_backoff: Duration,
    /// Random spread of a backoff, as a fraction of it (default 0.2: +/- 20%). Clamped to
    /// `0.0..=1.0`; NaN counts as 0.
    pub jitter: f64,
    /// After this many failed attempts an item is dead (default 10; 0 behaves like 1).
    pub max_attempts: u32,
    /// Whether the queue's own commits are durable when they return (default true). When false
    /// they use [`Durability::None`]: they survive a crash only once a later durable commit to the
    /// same database follows (for benchmarks, and for callers that group-commit).
    /// [`SyncQueue::enqueue_in`] never commits: the caller's transaction decides.
    pub durable_commits: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            jitter: 0.2,
            max_attempts: 10,
            durable_commits: true,
        }
    }
}

impl QueueConfig {
    /// The backoff after `attempts` failed attempts, before jitter:
    /// `min(max_backoff, base_backoff * 2^(attempts - 1))` (no overflow for any `attempts`).
    pub fn nominal_backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1);
        let nominal = if exp >= 32 {
            self.max_backoff
        } else {
            self.base_backoff.saturating_mul(1u32 << exp)
        };
        nominal.min(self.max_backoff)
    }

    /// The backoff actually applied after `attempts` failed attempts: the nominal backoff times a
    /// random factor in `[1 - jitter, 1 + jitter]`, then capped at `max_backoff`. The result is
    /// never above `max_backoff`: once the nominal backoff reaches the cap, jitter can only
    /// shorten it.
    pub fn jittered_backoff(&self, attempts: u32) -> Duration {
        let nominal = self.nominal_backoff(attempts);
        let jitter = self.jitter_fraction();
        if jitter == 0.0 {
            return nominal;
        }
        let factor = rand::rng().random_range((1.0 - jitter)..=(1.0 + jitter));
        Duration::try_from_secs_f64(nominal.as_secs_f64() * factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    fn jitter_fraction(&self) -> f64 {
        if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        }
    }
}

/// Counts of the queue's items by state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// `Pending` items, by priority (index = priority).
    pub pending_by_priority: [u64; 4],
    /// `InFlight` items.
    pub inflight: u64,
    /// `Retrying` items (due or not).
    pub retrying: u64,
    /// `Dead` items.
    pub dead: u64,
    /// Age of the oldest item that is not dead (by `enqueued_at_ms`), `None` if there is none.
    /// Zero if the clock passed in is behind the item's enqueue time.
    pub oldest_age: Option<Duration>,
}

/// What a failed attempt did to an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// The item will be retried; it may be taken again from `due_at_ms`.
    Retrying {
        /// When the item may be taken again (ms).
        due_at_ms: u64,
    },
    /// The item reached `max_attempts`: it is dead and kept for an operator.
    Dead,
    /// The id is not in flight (unknown, acked, dropped, already failed, or returned to pending
    /// by a restart or an operator): the report is stale and nothing changed.
    NotInFlight,
}

/// The persisted outgoing change queue of a region. Share it behind an `Arc`: every method takes
/// `&self`.
pub struct SyncQueue {
    db: Arc<Database>,
    config: QueueConfig,
    notify: Notify,
}

impl std::fmt::Debug for SyncQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncQueue")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SyncQueue {
    /// Opens the queue's table in `db`, creating it if needed, and recovers from a restart:
    /// every `InFlight` item returns to `Pending` (due time and attempts unchanged), in one
    /// transaction.
    pub fn open(db: Arc<Database>, config: QueueConfig) -> Result<SyncQueue> {
        let queue = SyncQueue {
            db,
            config,
            notify: Notify::new(),
        };
        let txn = queue.begin_write()?;
        let (recovered, ready) = {
            let mut table = QueueTable::open(&txn)?;
            let ids = keyspace(&table.table, TAG_INFLIGHT)?
                .map(|entry| {
                    let (key, _) = entry?;
                    Ok(be_u64(&fixed_key::<INFLIGHT_KEY_LEN>(key.value())?[1..]))
                })
                .collect::<Result<Vec<ItemId>>>()?;
            let mut counters = table.counters()?;
            for &id in &ids {
                let Some(mut item) = table.load(id)? else {
                    tracing::warn!(id, "sync queue: in-flight index names a missing item");
                    table.remove_key(&inflight_key(id))?;
                    continue;
                };
                table.transition(&mut counters, &mut item, |item| {
                    item.state = ItemState::Pending;
                })?;
            }
            table.store_counters(&counters)?;
            let ready = keyspace(&table.table, TAG_READY)?
                .next()
                .transpose()?
                .is_some();
            (ids.len(), ready)
        };
        txn.commit()?;
        if recovered > 0 {
            tracing::info!(recovered, "sync queue: in-flight items returned to pending");
        }
        if ready {
            queue.notify_enqueued();
        }
        Ok(queue)
    }

    /// The queue's configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Enqueues an item inside the caller's write transaction, so that a change and its event are
    /// committed together or not at all. Does not commit: after the caller commits, it should
    /// call [`notify_enqueued`](Self::notify_enqueued) to wake the consumer. Returns the new id.
    ///
    /// Errors: [`Error::QueueInvalidPriority`] for a priority above 3,
    /// [`Error::QueuePayloadTooLarge`] for a payload over [`MAX_PAYLOAD_BYTES`].
    pub fn enqueue_in(
        &self,
        txn: &WriteTransaction,
        priority: u8,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<ItemId> {
        check_item(priority, payload)?;
        let mut table = QueueTable::open(txn)?;
        let mut counters = table.counters()?;
        let id = table.insert_new(&mut counters, priority, payload, now_ms)?;
        table.store_counters(&counters)?;
        Ok(id)
    }

    /// Enqueues a batch of `(priority, payload)` items in one transaction of its own, commits and
    /// wakes the consumer. Returns the ids in the order of `items`. Nothing is enqueued if any
    /// item is invalid (see [`enqueue_in`](Self::enqueue_in)).
    pub fn enqueue(&self, items: &[(u8, Vec<u8>)], now_ms: u64) -> Result<Vec<ItemId>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        for (priority, payload) in items {
            check_item(*priority, payload)?;
        }
        let txn = self.begin_write()?;
        let ids = {
            let mut table = QueueTable::open(&txn)?;
            let mut counters = table.counters()?;
            let mut ids = Vec::with_capacity(items.len());
            for (priority, payload) in items {
                ids.push(table.insert_new(&mut counters, *priority, payload, now_ms)?);
            }
            table.store_counters(&counters)?;
            ids
        };
        txn.commit()?;
        self.notify_enqueued();
        Ok(ids)
    }

    /// Takes up to `max` ready items (`Pending` or `Retrying`, due at or before `now_ms`) in
    /// service order: priority (0 first), then due time, then id. Marks them `InFlight`, in one
    /// transaction (none is committed when nothing is ready).
    pub fn take(&self, max: usize, now_ms: u64) -> Result<Vec<QueueItem>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let txn = self.begin_write()?;
        let taken = {
            let mut table = QueueTable::open(&txn)?;
            let mut keys: Vec<[u8; READY_KEY_LEN]> = Vec::new();
            'priorities: for priority in 0..=MAX_PRIORITY {
                let low = ready_key(priority, 0, 0);
                let high = ready_key(priority, now_ms, u64::MAX);
                for entry in table
                    .table
                    .range::<&[u8]>(low.as_slice()..=high.as_slice())?
                {
                    if keys.len() >= max {
                        break 'priorities;
                    }
                    let (key, _) = entry?;
                    keys.push(fixed_key(key.value())?);
                }
            }
            let mut counters = table.counters()?;
            let mut taken = Vec::with_capacity(keys.len());
            for key in keys {
                let id = ready_key_id(&key);
                let Some(mut item) = table.load(id)? else {
                    tracing::warn!(id, "sync queue: ready index names a missing item");
                    table.remove_key(&key)?;
                    continue;
                };
                table.transition(&mut counters, &mut item, |item| {
                    item.state = ItemState::InFlight;
                })?;
                taken.push(item);
            }
            table.store_counters(&counters)?;
            taken
        };
        if taken.is_empty() {
            txn.abort()?;
        } else {
            txn.commit()?;
        }
        Ok(taken)
    }

    /// Removes acknowledged items, in one transaction. Ids not in the queue are ignored (acks may
    /// be repeated). An item that is no longer in flight (a late ack after a failure was reported)
    /// is removed too: the coordinator has it.
    pub fn ack(&self, ids: &[ItemId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        let removed = {
            let mut table = QueueTable::open(&txn)?;
            let mut counters = table.counters()?;
            let mut removed = 0usize;
            for &id in ids {
                if let Some(item) = table.load(id)? {
                    if item.state != ItemState::InFlight {
                        tracing::debug!(id, state = ?item.state, "sync queue: ack for an item not in flight");
                    }
                    table.remove(&mut counters, &item)?;
                    removed += 1;
                }
            }
            table.store_counters(&counters)?;
            removed
        };
        if removed == 0 {
            txn.abort()?;
        } else {
            txn.commit()?;
        }
        Ok(())
    }

    /// Reports a failed attempt for an in-flight item: `attempts += 1` and `error` is stored; if
    /// `attempts` reaches `max_attempts` the item is `Dead` (kept, see the module doc), otherwise
    /// it is `Retrying`, due at `now_ms` plus [`QueueConfig::jittered_backoff`]. An id not in
    /// flight (unknown included) changes nothing and gives [`FailOutcome::NotInFlight`].
    pub fn fail(&self, id: ItemId, error: &str, now_ms: u64) -> Result<FailOutcome> {
        let outcomes = self.fail_many(&[id], error, now_ms)?;
        Ok(outcomes
            .first()
            .copied()
            .unwrap_or(FailOutcome::NotInFlight))
    }

    /// [`fail`](Self::fail) for a whole batch (a failed push of several items), in one
    /// transaction. Returns one outcome per id, in the order of `ids`.
    pub fn fail_many(&self, ids: &[ItemId], error: &str, now_ms: u64) -> Result<Vec<FailOutcome>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.begin_write()?;
        let outcomes = {
            let mut table = QueueTable::open(&txn)?;
            let mut counters = table.counters()?;
            let mut outcomes = Vec::with_capacity(ids.len());
            for &id in ids {
                let mut item = match table.load(id)? {
                    Some(item) if item.state == ItemState::InFlight => item,
                    _ => {
                        outcomes.push(FailOutcome::NotInFlight);
                        continue;
                    }
                };
                let config = &self.config;
                table.transition(&mut counters, &mut item, |item| {
                    item.attempts = item.attempts.saturating_add(1);
                    item.last_error = Some(error.to_owned());
                    if item.attempts >= config.max_attempts {
                        item.state = ItemState::Dead;
                    } else {
                        let backoff = config.jittered_backoff(item.attempts);
                        let backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
                        item.state = ItemState::Retrying;
                        item.due_at_ms = now_ms.saturating_add(backoff_ms);
                    }
                })?;
                if item.state == ItemState::Dead {
                    tracing::warn!(
                        id,
                        attempts = item.attempts,
                        error,
                        "sync queue: item is dead"
                    );
                    outcomes.push(FailOutcome::Dead);
                } else {
                    outcomes.push(FailOutcome::Retrying {
                        due_at_ms: item.due_at_ms,
                    });
                }
            }
            table.store_counters(&counters)?;
            outcomes
        };
        if outcomes.iter().all(|o| *o == FailOutcome::NotInFlight) {
            txn.abort()?;
        } else {
            txn.commit()?;
        }
        Ok(outcomes)
    }

    /// Operator: makes a `Pending`, `Retrying` or `Dead` item `Pending`, due at `now_ms`, with
    /// `attempts` reset to 0 (its `last_error` is kept), and wakes the consumer.
    ///
    /// Errors: [`Error::QueueItemNotFound`] for an unknown id, [`Error::QueueItemInFlight`] for an
    /// item being pushed.
    pub fn retry_now(&self, id: ItemId, now_ms: u64) -> Result<()> {
        let txn = self.begin_write()?;
        {
            let mut table = QueueTable::open(&txn)?;
            let mut item = table.load(id)?.ok_or(Error::QueueItemNotFound(id))?;
            if item.state == ItemState::InFlight {
                return Err(Error::QueueItemInFlight(id));
            }
            let mut counters = table.counters()?;
            table.transition(&mut counters, &mut item, |item| {
                item.state = ItemState::Pending;
                item.attempts = 0;
                item.due_at_ms = now_ms;
            })?;
            table.store_counters(&counters)?;
        }
        txn.commit()?;
        self.notify_enqueued();
        Ok(())
    }

    /// Operator: removes an item in any state and returns it. A later ack or failure report for
    /// it is ignored. Error: [`Error::QueueItemNotFound`] for an unknown id.
    pub fn drop_item(&self, id: ItemId) -> Result<QueueItem> {
        let txn = self.begin_write()?;
        let item = {
            let mut table = QueueTable::open(&txn)?;
            let item = table.load(id)?.ok_or(Error::QueueItemNotFound(id))?;
            let mut counters = table.counters()?;
            table.remove(&mut counters, &item)?;
            table.store_counters(&counters)?;
            item
        };
        txn.commit()?;
        tracing::info!(id, state = ?item.state, "sync queue: item dropped by an operator");
        Ok(item)
    }

    /// The item with this id, if it is in the queue.
    pub fn get(&self, id: ItemId) -> Result<Option<QueueItem>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(QUEUE)?;
        match table.get(item_key(id).as_slice())? {
            Some(bytes) => decode_item(bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Items of every state (dead and in-flight ones included: their state says so) in service
    /// order (priority, due time, id); the first `limit` of them if `limit` is given. Reads every
    /// item: meant for operators, not for the push path.
    pub fn list(&self, limit: Option<usize>) -> Result<Vec<QueueItem>> {
        if limit == Some(0) {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(QUEUE)?;
        let mut kept: BinaryHeap<ServiceOrder> = BinaryHeap::new();
        for entry in keyspace(&table, TAG_ITEM)? {
            let (_, bytes) = entry?;
            kept.push(ServiceOrder(decode_item(bytes.value())?));
            if let Some(limit) = limit
                && kept.len() > limit
            {
                kept.pop();
            }
        }
        Ok(kept
            .into_sorted_vec()
            .into_iter()
            .map(|entry| entry.0)
            .collect())
    }

    /// Counts by state and the age of the oldest item that is not dead, as of `now_ms`. O(1).
    pub fn stats(&self, now_ms: u64) -> Result<QueueStats> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(QUEUE)?;
        let counters = Counters::load(&table)?;
        let oldest_age = match keyspace(&table, TAG_AGE)?.next().transpose()? {
            Some((key, _)) => {
                let enqueued_at_ms = be_u64(&fixed_key::<AGE_KEY_LEN>(key.value())?[1..9]);
                Some(Duration::from_millis(now_ms.saturating_sub(enqueued_at_ms)))
            }
            None => None,
        };
        Ok(QueueStats {
            pending_by_priority: counters.pending,
            inflight: counters.inflight,
            retrying: counters.retrying,
            dead: counters.dead,
            oldest_age,
        })
    }

    /// The earliest due time among `Pending` and `Retrying` items (`None` if there are none): a
    /// consumer with nothing ready may sleep until then (or until woken, see
    /// [`wait_for_work`](Self::wait_for_work)).
    pub fn next_due_ms(&self) -> Result<Option<u64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(QUEUE)?;
        let mut earliest: Option<u64> = None;
        for priority in 0..=MAX_PRIORITY {
            let low = ready_key(priority, 0, 0);
            let high = ready_key(priority, u64::MAX, u64::MAX);
            let mut range = table.range::<&[u8]>(low.as_slice()..=high.as_slice())?;
            if let Some((key, _)) = range.next().transpose()? {
                let due = be_u64(&fixed_key::<READY_KEY_LEN>(key.value())?[2..10]);
                earliest = Some(earliest.map_or(due, |e| e.min(due)));
            }
        }
        Ok(earliest)
    }

    /// The number of items in the queue, in every state. O(1): the sum of the counters.
    pub fn len(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(Counters::load(&txn.open_table(QUEUE)?)?.items())
    }

    /// Whether the queue holds no item at all (dead ones count).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Wakes the consumer waiting in [`wait_for_work`](Self::wait_for_work), or the next one to
    /// call it if none is waiting (one wake-up is stored; several calls coalesce into one).
    /// Call it after committing a transaction that used [`enqueue_in`](Self::enqueue_in); the
    /// queue's own methods call it when they make items ready.
    pub fn notify_enqueued(&self) {
        self.notify.notify_one();
    }

    /// Waits until [`notify_enqueued`](Self::notify_enqueued) is called (returns at once if it
    /// was called since the last wake-up). Wake-ups coalesce, so after waking a consumer should
    /// [`take`](Self::take) until nothing is ready, then wait again — with a timeout at
    /// [`next_due_ms`](Self::next_due_ms) for retries backing off.
    ///
    /// Cancel safe: dropping the future (e.g. a losing `select!` branch) loses no wake-up; one
    /// that was delivered to it passes on to the next waiter or is stored for the next call.
    pub async fn wait_for_work(&self) {
        self.notify.notified().await;
    }

    fn begin_write(&self) -> Result<WriteTransaction> {
        let mut txn = self.db.begin_write()?;
        if !self.config.durable_commits {
            txn.set_durability(Durability::None)?;
        }
        Ok(txn)
    }
}

/// The queue's table, open in one write transaction.
struct QueueTable<'txn> {
    table: redb::Table<'txn, &'static [u8], &'static [u8]>,
    /// The counters as read, so that the record is written back only if they changed.
    loaded: Option<Counters>,
}

impl<'txn> QueueTable<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self> {
        Ok(QueueTable {
            table: txn.open_table(QUEUE)?,
            loaded: None,
        })
    }

    fn counters(&mut self) -> Result<Counters> {
        let counters = Counters::load(&self.table)?;
        self.loaded = Some(counters);
        Ok(counters)
    }

    /// Writes the counters record, unless it holds `counters` already (as read by
    /// [`QueueTable::counters`] or last written).
    fn store_counters(&mut self, counters: &Counters) -> Result<()> {
        if self.loaded.as_ref() != Some(counters) {
            let mut buf = [0u8; Counters::MAX_ENCODED_LEN];
            let bytes = postcard::to_slice(counters, &mut buf).map_err(|source| Error::Encode {
                what: COUNTERS_RECORD,
                source,
            })?;
            self.table.insert(COUNTERS_KEY, &*bytes)?;
            self.loaded = Some(*counters);
        }
        Ok(())
    }

    fn load(&self, id: ItemId) -> Result<Option<QueueItem>> {
        match self.table.get(item_key(id).as_slice())? {
            Some(bytes) => decode_item(bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    fn store(&mut self, item: &QueueItem) -> Result<()> {
        let bytes = postcard::to_stdvec(item).map_err(|source| Error::Encode {
            what: ITEM_RECORD,
            source,
        })?;
        self.table
            .insert(item_key(item.id).as_slice(), bytes.as_slice())?;
        Ok(())
    }

    /// Inserts an index entry (empty value).
    fn insert_key(&mut self, key: &[u8]) -> Result<()> {
        self.table.insert(key, EMPTY)?;
        Ok(())
    }

    fn remove_key(&mut self, key: &[u8]) -> Result<()> {
        self.table.remove(key)?;
        Ok(())
    }

    fn insert_new(
        &mut self,
        counters: &mut Counters,
        priority: u8,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<ItemId> {
        let id = counters.next_id.max(1);
        counters.next_id = id.saturating_add(1);
        let item = QueueItem {
            id,
            priority,
            payload: payload.to_vec(),
            state: ItemState::Pending,
            attempts: 0,
            enqueued_at_ms: now_ms,
            due_at_ms: now_ms,
            last_error: None,
        };
        self.index_state(&item)?;
        self.insert_key(&age_key(item.enqueued_at_ms, item.id))?;
        counters.add(&item);
        self.store(&item)?;
        Ok(id)
    }

    /// Changes a stored item with `change`, keeping the indexes and counters in step.
    fn transition(
        &mut self,
        counters: &mut Counters,
        item: &mut QueueItem,
        change: impl FnOnce(&mut QueueItem),
    ) -> Result<()> {
        let age_before = age_entry(item);
        self.unindex_state(item)?;
        counters.sub(item);
        change(item);
        self.index_state(item)?;
        counters.add(item);
        // The age entry stays put unless the item died (or came back).
        let age_after = age_entry(item);
        if age_before != age_after {
            if let Some(key) = age_before {
                self.remove_key(&key)?;
            }
            if let Some(key) = age_after {
                self.insert_key(&key)?;
            }
        }
        self.store(item)
    }

    fn remove(&mut self, counters: &mut Counters, item: &QueueItem) -> Result<()> {
        self.unindex_state(item)?;
        if let Some(key) = age_entry(item) {
            self.remove_key(&key)?;
        }
        counters.sub(item);
        self.remove_key(&item_key(item.id))
    }

    /// Adds the item's entry in the index of its state (the ready or the in-flight one).
    fn index_state(&mut self, item: &QueueItem) -> Result<()> {
        match item.state {
            ItemState::Pending | ItemState::Retrying => {
                self.insert_key(&ready_key(item.priority, item.due_at_ms, item.id))
            }
            ItemState::InFlight => self.insert_key(&inflight_key(item.id)),
            ItemState::Dead => Ok(()),
        }
    }

    /// Removes what [`QueueTable::index_state`] added.
    fn unindex_state(&mut self, item: &QueueItem) -> Result<()> {
        match item.state {
            ItemState::Pending | ItemState::Retrying => {
                self.remove_key(&ready_key(item.priority, item.due_at_ms, item.id))
            }
            ItemState::InFlight => self.remove_key(&inflight_key(item.id)),
            ItemState::Dead => Ok(()),
        }
    }
}

/// The counters record (`m`): the next id and the number of items in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    next_id: u64,
    pending: [u64; 4],
    inflight: u64,
    retrying: u64,
    dead: u64,
}

impl Counters {
    /// The longest postcard encoding: eight varint-encoded u64 of at most 10 bytes each.
    const MAX_ENCODED_LEN: usize = 8 * 10;

    /// Reads the counters record; all zero if there is none yet.
    fn load(table: &impl ReadableTable<&'static [u8], &'static [u8]>) -> Result<Self> {
        match table.get(COUNTERS_KEY)? {
            Some(bytes) => postcard::from_bytes(bytes.value()).map_err(|source| Error::Decode {
                what: COUNTERS_RECORD,
                source,
            }),
            None => Ok(Counters::default()),
        }
    }

    /// The number of items, in every state.
    fn items(&self) -> u64 {
        self.pending
            .iter()
            .chain([&self.inflight, &self.retrying, &self.dead])
            .fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    fn slot(&mut self, item: &QueueItem) -> &mut u64 {
        match item.state {
            ItemState::Pending => &mut self.pending[usize::from(item.priority.min(MAX_PRIORITY))],
            ItemState::InFlight => &mut self.inflight,
            ItemState::Retrying => &mut self.retrying,
            ItemState::Dead => &mut self.dead,
        }
    }

    fn add(&mut self, item: &QueueItem) {
        let slot = self.slot(item);
        *slot = slot.saturating_add(1);
    }

    fn sub(&mut self, item: &QueueItem) {
        let slot = self.slot(item);
        *slot = slot.saturating_sub(1);
    }
}

/// Orders items by service order, for [`SyncQueue::list`].
struct ServiceOrder(QueueItem);

impl ServiceOrder {
    fn key(&self) -> (u8, u64, u64) {
        (self.0.priority, self.0.due_at_ms, self.0.id)
    }
}

impl PartialEq for ServiceOrder {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ServiceOrder {}

impl PartialOrd for ServiceOrder {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ServiceOrder {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

fn check_item(priority: u8, payload: &[u8]) -> Result<()> {
    if priority > MAX_PRIORITY {
        return Err(Error::QueueInvalidPriority(priority));
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Error::QueuePayloadTooLarge {
            size: payload.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(())
}

fn decode_item(bytes: &[u8]) -> Result<QueueItem> {
    postcard::from_bytes(bytes).map_err(|source| Error::Decode {
        what: ITEM_RECORD,
        source,
    })
}

/// Every entry of one keyspace: the keys from `[tag]` up to, not including, `[tag + 1]`.
fn keyspace<T>(table: &T, tag: u8) -> Result<redb::Range<'_, &'static [u8], &'static [u8]>>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let (low, high) = ([tag], [tag + 1]);
    Ok(table.range::<&[u8]>(low.as_slice()..high.as_slice())?)
}

/// A stored key of a fixed-width keyspace; a key of another length is corrupt.
fn fixed_key<const N: usize>(key: &[u8]) -> Result<[u8; N]> {
    key.try_into().map_err(|_| Error::Decode {
        what: KEY_RECORD,
        source: postcard::Error::DeserializeBadEncoding,
    })
}

/// `i ++ id`.
fn item_key(id: ItemId) -> [u8; ITEM_KEY_LEN] {
    tagged_id(TAG_ITEM, id)
}

/// `f ++ id`.
fn inflight_key(id: ItemId) -> [u8; INFLIGHT_KEY_LEN] {
    tagged_id(TAG_INFLIGHT, id)
}

fn tagged_id(tag: u8, id: ItemId) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = tag;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// `r ++ priority ++ due_at_ms ++ id`, big-endian: byte order is service order.
fn ready_key(priority: u8, due_at_ms: u64, id: ItemId) -> [u8; READY_KEY_LEN] {
    let mut key = [0u8; READY_KEY_LEN];
    key[0] = TAG_READY;
    key[1] = priority;
    key[2..10].copy_from_slice(&due_at_ms.to_be_bytes());
    key[10..].copy_from_slice(&id.to_be_bytes());
    key
}

fn ready_key_id(key: &[u8; READY_KEY_LEN]) -> ItemId {
    be_u64(&key[10..])
}

/// `a ++ enqueued_at_ms ++ id`, big-endian: byte order is age order.
fn age_key(enqueued_at_ms: u64, id: ItemId) -> [u8; AGE_KEY_LEN] {
    let mut key = [0u8; AGE_KEY_LEN];
    key[0] = TAG_AGE;
    key[1..9].copy_from_slice(&enqueued_at_ms.to_be_bytes());
    key[9..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The item's entry in the age index: every item that is not dead has one.
fn age_entry(item: &QueueItem) -> Option<[u8; AGE_KEY_LEN]> {
    (item.state != ItemState::Dead).then(|| age_key(item.enqueued_at_ms, item.id))
}

/// Reads a big-endian u64 from an 8-byte slice of a fixed-width key.
fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(bytes);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::future::Future;
    use std::path::Path;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use proptest::prelude::*;
    use redb::TableHandle;

    fn no_jitter() -> QueueConfig {
        QueueConfig {
            jitter: 0.0,
            ..QueueConfig::default()
        }
    }

    fn open_db(path: &Path) -> Arc<Database> {
        Arc::new(Database::create(path.join("queue.redb")).expect("create db"))
    }

    fn setup(config: QueueConfig) -> (tempfile::TempDir, SyncQueue) {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = SyncQueue::open(open_db(dir.path()), config).expect("open queue");
        (dir, queue)
    }

    fn ids(items: &[QueueItem]) -> Vec<ItemId> {
        items.iter().map(|i| i.id).collect()
    }

    /// Reads the queue's table raw and checks that it holds exactly the keys the module doc lists:
    /// every index entry matches an item in the right state, and the one counters record counts
    /// the items. Returns the counters.
    fn check_layout(q: &SyncQueue) -> Counters {
        let txn = q.db.begin_read().unwrap();
        let table = txn.open_table(QUEUE).unwrap();
        let mut items = BTreeMap::new();
        let (mut ready, mut inflight, mut age) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let mut counters_records = 0;
        for entry in table.iter().unwrap() {
            let (key, value) = entry.unwrap();
            let (key, value) = (key.value(), value.value());
            match key[0] {
                TAG_ITEM => {
                    let item = decode_item(value).unwrap();
                    assert_eq!(key, item_key(item.id));
                    items.insert(item.id, item);
                }
                TAG_READY => {
                    assert!(value.is_empty());
                    ready.insert(fixed_key::<READY_KEY_LEN>(key).unwrap());
                }
                TAG_INFLIGHT => {
                    assert!(value.is_empty());
                    inflight.insert(fixed_key::<INFLIGHT_KEY_LEN>(key).unwrap());
                }
                TAG_AGE => {
                    assert!(value.is_empty());
                    age.insert(fixed_key::<AGE_KEY_LEN>(key).unwrap());
                }
                TAG_COUNTERS => {
                    assert_eq!(key, COUNTERS_KEY);
                    counters_records += 1;
                }
                tag => panic!("unexpected key tag {tag:#04x}"),
            }
        }
        assert!(counters_records <= 1);
        let mut want = Counters::default();
        for item in items.values() {
            want.add(item);
        }
        let counters = Counters::load(&table).unwrap();
        assert_eq!(
            Counters {
                next_id: 0,
                ..counters
            },
            want
        );
        assert!(items.keys().all(|id| *id < counters.next_id));
        let (want_ready, want_inflight, want_age) = (
            items
                .values()
                .filter(|i| matches!(i.state, ItemState::Pending | ItemState::Retrying))
                .map(|i| ready_key(i.priority, i.due_at_ms, i.id))
                .collect::<BTreeSet<_>>(),
            items
                .values()
                .filter(|i| i.state == ItemState::InFlight)
                .map(|i| inflight_key(i.id))
                .collect::<BTreeSet<_>>(),
            items
                .values()
                .filter_map(age_entry)
                .collect::<BTreeSet<_>>(),
        );
        assert_eq!(ready, want_ready);
        assert_eq!(inflight, want_inflight);
        assert_eq!(age, want_age);
        counters
    }

    fn table_names(tables: impl Iterator<Item = redb::UntypedTableHandle>) -> Vec<String> {
        let mut names: Vec<String> = tables.map(|t| t.name().to_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn take_orders_by_priority_then_due_then_id() {
        let (_dir, q) = setup(no_jitter());
        let a = q
            .enqueue(&[(PRIORITY_METADATA, b"m".to_vec())], 100)
            .unwrap()[0];
        let b = q
            .enqueue(&[(PRIORITY_UPDATE, b"u1".to_vec())], 300)
            .unwrap()[0];
        let c = q
            .enqueue(&[(PRIORITY_DELETE, b"d1".to_vec())], 500)
            .unwrap()[0];
        let d = q
            .enqueue(&[(PRIORITY_UPDATE, b"u2".to_vec())], 200)
            .unwrap()[0];
        let batch = q
            .enqueue(
                &[
                    (PRIORITY_CREATE, b"c1".to_vec()),
                    (PRIORITY_DELETE, b"d2".to_vec()),
                ],
                400,
            )
            .unwrap();
        let (e, f) = (batch[0], batch[1]);
        assert!(a < b && b < c && c < d && d < e && e < f);

        // Same priority and due time: by id.
        let g = q
            .enqueue(&[(PRIORITY_UPDATE, b"u3".to_vec())], 200)
            .unwrap()[0];

        let listed = ids(&q.list(None).unwrap());
        assert_eq!(listed, vec![f, c, e, d, g, b, a]);

        // Items due later than `now` are not ready.
        assert_eq!(ids(&q.take(10, 350).unwrap()), vec![d, g, b, a]);
        assert_eq!(ids(&q.take(1, 1000).unwrap()), vec![f]);
        let rest = q.take(10, 1000).unwrap();
        assert_eq!(ids(&rest), vec![c, e]);
        assert!(rest.iter().all(|i| i.state == ItemState::InFlight));
        assert!(q.take(10, 1000).unwrap().is_empty());
        assert_eq!(q.get(c).unwrap().unwrap().payload, b"d1".to_vec());
    }

    #[test]
    fn nominal_backoff_doubles_and_caps() {
        let config = no_jitter();
        let ms = |a| config.nominal_backoff(a).as_millis();
        assert_eq!(ms(1), 500);
        assert_eq!(ms(2), 1000);
        assert_eq!(ms(3), 2000);
        assert_eq!(ms(7), 32_000);
        assert_eq!(ms(8), 60_000);
        assert_eq!(ms(40), 60_000);
        assert_eq!(ms(u32::MAX), 60_000);
        assert_eq!(config.jittered_backoff(3), Duration::from_millis(2000));
    }

    #[test]
    fn fail_backoff_exact_without_jitter() {
        let config = QueueConfig {
            max_attempts: 100,
            ..no_jitter()
        };
        let (_dir, q) = setup(config);
        let id = q.enqueue(&[(1, b"x".to_vec())], 0).unwrap()[0];
        let mut now = 0;
        let expected = [
            500u64, 1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000,
        ];
        for (n, backoff) in expected.into_iter().enumerate() {
            let taken = q.take(10, now).unwrap();
            assert_eq!(ids(&taken), vec![id]);
            assert_eq!(taken[0].attempts, n as u32);
            let outcome = q.fail(id, "unreachable", now).unwrap();
            assert_eq!(
                outcome,
                FailOutcome::Retrying {
                    due_at_ms: now + backoff
                }
            );
            assert_eq!(q.next_due_ms().unwrap(), Some(now + backoff));
            // Not ready one millisecond early.
            assert!(q.take(10, now + backoff - 1).unwrap().is_empty());
            now += backoff;
        }
        let item = q.get(id).unwrap().unwrap();
        assert_eq!(item.state, ItemState::Retrying);
        assert_eq!(item.last_error.as_deref(), Some("unreachable"));
    }

    #[test]
    fn jittered_backoff_stays_in_bounds() {
        let config = QueueConfig {
            jitter: 0.2,
            ..QueueConfig::default()
        };
        for attempts in 1..=12 {
            let nominal = config.nominal_backoff(attempts).as_secs_f64();
            for _ in 0..200 {
                let b = config.jittered_backoff(attempts);
                assert!(b <= config.max_backoff, "{b:?} above the cap");
                let s = b.as_secs_f64();
                assert!(s >= nominal * 0.8 - 1e-6, "{s} below {nominal} - 20%");
                assert!(s <= nominal * 1.2 + 1e-6, "{s} above {nominal} + 20%");
            }
        }
        // At the cap, jitter only lowers the backoff, and it does spread.
        let capped: Vec<Duration> = (0..200).map(|_| config.jittered_backoff(20)).collect();
        assert!(capped.iter().all(|b| *b <= config.max_backoff));
        assert!(capped.iter().any(|b| *b < config.max_backoff));

        // Through the queue: due times within bounds (ms rounding down).
        let (_dir, q) = setup(QueueConfig {
            max_attempts: 100,
            ..config.clone()
        });
        let id = q.enqueue(&[(0, vec![1])], 0).unwrap()[0];
        let mut now = 0u64;
        for attempts in 1..=12u32 {
            assert_eq!(q.take(1, now).unwrap().len(), 1);
            let FailOutcome::Retrying { due_at_ms } = q.fail(id, "e", now).unwrap() else {
                panic!("expected a retry");
            };
            let nominal = config.nominal_backoff(attempts).as_millis() as f64;
            let backoff = (due_at_ms - now) as f64;
            assert!(backoff >= (nominal * 0.8).floor() - 1.0 && backoff <= nominal * 1.2);
            assert!(backoff <= 60_000.0);
            now = due_at_ms;
        }
    }

    #[test]
    fn dead_letter_after_max_attempts() {
        let config = QueueConfig {
            max_attempts: 3,
            ..no_jitter()
        };
        let (_dir, q) = setup(config);
        let id = q.enqueue(&[(2, b"doomed".to_vec())], 0).unwrap()[0];
        let other = q.enqueue(&[(3, b"fine".to_vec())], 0).unwrap()[0];
        let mut now = 0;
        for _ in 0..2 {
            assert_eq!(ids(&q.take(1, now).unwrap()), vec![id]);
            let FailOutcome::Retrying { due_at_ms } = q.fail(id, "boom", now).unwrap() else {
                panic!("expected a retry");
            };
            now = due_at_ms;
        }
        assert_eq!(ids(&q.take(1, now).unwrap()), vec![id]);
        assert_eq!(q.fail(id, "final boom", now).unwrap(), FailOutcome::Dead);

        let dead = q.get(id).unwrap().unwrap();
        assert_eq!(dead.state, ItemState::Dead);
        assert_eq!(dead.attempts, 3);
        assert_eq!(dead.last_error.as_deref(), Some("final boom"));
        // Listed, counted, never taken.
        assert!(
            q.list(None)
                .unwrap()
                .iter()
                .any(|i| i.id == id && i.state == ItemState::Dead)
        );
        assert_eq!(q.stats(now).unwrap().dead, 1);
        assert_eq!(ids(&q.take(10, u64::MAX).unwrap()), vec![other]);
        assert!(q.take(10, u64::MAX).unwrap().is_empty());
        assert_eq!(q.next_due_ms().unwrap(), None);
        // A second failure report is stale.
        assert_eq!(q.fail(id, "late", now).unwrap(), FailOutcome::NotInFlight);

        q.retry_now(id, now + 5).unwrap();
        let back = q.get(id).unwrap().unwrap();
        assert_eq!(
            (back.state, back.attempts, back.due_at_ms),
            (ItemState::Pending, 0, now + 5)
        );
        assert_eq!(q.stats(now).unwrap().dead, 0);
        assert_eq!(ids(&q.take(10, now + 5).unwrap()), vec![id]);
    }

    #[test]
    fn restart_returns_inflight_items_to_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (taken, retrying, last_id) = {
            let db = open_db(dir.path());
            let q = SyncQueue::open(db, no_jitter()).unwrap();
            let all = q
                .enqueue(
                    &[(1, b"a".to_vec()), (1, b"b".to_vec()), (2, b"c".to_vec())],
                    10,
                )
                .unwrap();
            let taken = q.take(2, 20).unwrap();
            assert_eq!(ids(&taken), all[..2].to_vec());
            // One of them fails once, is taken again and is in flight at the "crash".
            let FailOutcome::Retrying { due_at_ms } = q.fail(all[1], "x", 20).unwrap() else {
                panic!("expected a retry");
            };
            assert_eq!(ids(&q.take(1, due_at_ms).unwrap()), vec![all[1]]);
            (ids(&taken), due_at_ms, all[2])
        };
        // Database and queue dropped: reopen the file.
        let db = Arc::new(Database::open(dir.path().join("queue.redb")).unwrap());
        let q = SyncQueue::open(db, no_jitter()).unwrap();
        let stats = q.stats(20).unwrap();
        assert_eq!(stats.inflight, 0);
        assert_eq!(stats.pending_by_priority, [0, 2, 1, 0]);
        let first = q.get(taken[0]).unwrap().unwrap();
        assert_eq!(
            (first.state, first.attempts, first.due_at_ms),
            (ItemState::Pending, 0, 10)
        );
        let second = q.get(taken[1]).unwrap().unwrap();
        assert_eq!(
            (second.state, second.attempts, second.due_at_ms),
            (ItemState::Pending, 1, retrying)
        );
        assert_eq!(
            ids(&q.take(10, retrying).unwrap()),
            vec![taken[0], taken[1], last_id]
        );
        // Ids continue after the restart, never reused.
        q.ack(&[taken[0], taken[1], last_id]).unwrap();
        assert!(q.is_empty().unwrap());
        let next = q.enqueue(&[(0, vec![])], 30).unwrap()[0];
        assert!(next > last_id);
        // The wake-up stored at open (items were ready) is there.
        assert_eq!(poll_once(q.wait_for_work()), Poll::Ready(()));
    }

    #[test]
    fn ack_drop_and_unknown_ids() {
        let (_dir, q) = setup(no_jitter());
        let got = q.enqueue(
            &[(0, b"a".to_vec()), (1, b"b".to_vec()), (2, b"c".to_vec())],
            0,
        );
        let [a, b, c] = got.unwrap()[..] else {
            panic!("three ids")
        };
        assert_eq!(q.len().unwrap(), 3);
        assert_eq!(ids(&q.take(2, 0).unwrap()), vec![a, b]);
        q.ack(&[a]).unwrap();
        q.ack(&[a, a, 999]).unwrap(); // duplicate and unknown acks are harmless
        assert_eq!(q.get(a).unwrap(), None);
        assert_eq!(q.len().unwrap(), 2);
        assert_eq!(q.stats(0).unwrap().inflight, 1);

        let dropped = q.drop_item(b).unwrap(); // in flight
        assert_eq!((dropped.id, dropped.payload), (b, b"b".to_vec()));
        assert_eq!(q.fail(b, "late", 0).unwrap(), FailOutcome::NotInFlight);
        q.ack(&[b]).unwrap();
        assert_eq!(q.drop_item(c).unwrap().state, ItemState::Pending);
        assert!(q.is_empty().unwrap());
        assert_eq!(q.stats(0).unwrap(), QueueStats::default());
        assert_eq!(q.next_due_ms().unwrap(), None);

        assert!(matches!(q.drop_item(a), Err(Error::QueueItemNotFound(id)) if id == a));
        assert!(matches!(
            q.retry_now(77, 0),
            Err(Error::QueueItemNotFound(77))
        ));
        assert_eq!(q.get(77).unwrap(), None);
        assert_eq!(q.fail(77, "e", 0).unwrap(), FailOutcome::NotInFlight);
        assert_eq!(
            Error::QueueItemNotFound(77).to_string(),
            "no sync queue item with id 77"
        );

        let d = q.enqueue(&[(0, vec![])], 0).unwrap()[0];
        q.take(1, 0).unwrap();
        assert!(matches!(q.retry_now(d, 0), Err(Error::QueueItemInFlight(id)) if id == d));
    }

    #[test]
    fn fail_many_reports_each_id() {
        let (_dir, q) = setup(QueueConfig {
            max_attempts: 2,
            ..no_jitter()
        });
        let all = q
            .enqueue(&[(0, vec![1]), (0, vec![2]), (0, vec![3])], 0)
            .unwrap();
        q.take(2, 0).unwrap();
        let out = q
            .fail_many(&[all[0], all[2], 4242, all[1]], "push failed", 100)
            .unwrap();
        assert_eq!(
            out,
            vec![
                FailOutcome::Retrying { due_at_ms: 600 },
                FailOutcome::NotInFlight,
                FailOutcome::NotInFlight,
                FailOutcome::Retrying { due_at_ms: 600 },
            ]
        );
        assert_eq!(ids(&q.take(10, 600).unwrap()), vec![all[2], all[0], all[1]]);
        // Second failure for the first two (dead), first for the third.
        let out = q.fail_many(&all, "again", 600).unwrap();
        let want = [
            FailOutcome::Dead,
            FailOutcome::Dead,
            FailOutcome::Retrying { due_at_ms: 1100 },
        ];
        assert_eq!(out, want);
        let stats = q.stats(600).unwrap();
        assert_eq!((stats.dead, stats.retrying, stats.inflight), (2, 1, 0));
        q.drop_item(all[2]).unwrap();
        assert_eq!(q.stats(600).unwrap().oldest_age, None); // only dead items left
    }

    #[test]
    fn stats_after_mixed_sequence() {
        let (_dir, q) = setup(QueueConfig {
            max_attempts: 2,
            ..no_jitter()
        });
        assert_eq!(q.stats(0).unwrap(), QueueStats::default());
        let [p3_old, p2_old] = q.enqueue(&[(3, vec![]), (2, vec![])], 1_000).unwrap()[..] else {
            panic!("two ids")
        };
        let second = q.enqueue(&[(0, vec![]), (0, vec![]), (1, vec![]), (2, vec![])], 2_000);
        let [p0_a, p0_b, p1, p2_new] = second.unwrap()[..] else {
            panic!("four ids")
        };
        assert_eq!(ids(&q.take(3, 2_000).unwrap()), vec![p0_a, p0_b, p1]);
        q.ack(&[p0_a]).unwrap();
        q.fail(p0_b, "e", 2_000).unwrap(); // retrying, due 2_500
        // p1 stays in flight.
        assert_eq!(
            ids(&q.take(10, 2_000).unwrap()),
            vec![p2_old, p2_new, p3_old]
        );
        q.ack(&[p2_old, p2_new]).unwrap();
        q.fail(p3_old, "e", 2_000).unwrap();
        let mid = q.stats(2_000).unwrap();
        assert_eq!(
            (mid.pending_by_priority, mid.inflight, mid.retrying),
            ([0; 4], 1, 2)
        );
        assert_eq!(mid.oldest_age, Some(Duration::from_millis(1_000)));
        assert_eq!(ids(&q.take(1, 3_000).unwrap()), vec![p0_b]);
        assert_eq!(ids(&q.take(1, 3_000).unwrap()), vec![p3_old]);
        // Second failures: both dead (max 2 attempts).
        assert_eq!(q.fail(p3_old, "e", 3_000).unwrap(), FailOutcome::Dead);
        assert_eq!(q.fail(p0_b, "e", 3_000).unwrap(), FailOutcome::Dead);
        let late = q.enqueue(&[(2, vec![]), (1, vec![])], 4_000).unwrap();
        q.take(1, 4_000).unwrap(); // the priority-1 one
        q.enqueue(&[(3, vec![])], 5_000).unwrap();

        let stats = q.stats(10_000).unwrap();
        assert_eq!(
            stats,
            QueueStats {
                pending_by_priority: [0, 0, 1, 1],
                inflight: 2, // p1 (enqueued at 2_000, the oldest) and late[1]
                retrying: 0,
                dead: 2,
                oldest_age: Some(Duration::from_millis(8_000)),
            }
        );
        assert_eq!(q.len().unwrap(), 6);
        assert_eq!(q.get(late[0]).unwrap().unwrap().state, ItemState::Pending);

        // A retrying item counts as retrying, not pending; the clock behind gives age zero.
        let r = q.take(1, 10_000).unwrap()[0].id;
        q.fail(r, "e", 10_000).unwrap();
        let stats = q.stats(0).unwrap();
        assert_eq!(stats.pending_by_priority, [0, 0, 0, 1]);
        assert_eq!(stats.retrying, 1);
        assert_eq!(stats.oldest_age, Some(Duration::ZERO));
    }

    #[test]
    fn enqueue_in_follows_the_callers_transaction() {
        let (_dir, q) = setup(no_jitter());
        let db = q.db.clone();
        {
            let txn = db.begin_write().unwrap();
            let id = q.enqueue_in(&txn, 1, b"lost", 5).unwrap();
            assert_eq!(id, 1);
            drop(txn); // aborted
        }
        assert!(q.is_empty().unwrap());
        assert_eq!(q.stats(5).unwrap(), QueueStats::default());

        let txn = db.begin_write().unwrap();
        let id = q.enqueue_in(&txn, 1, b"kept", 5).unwrap();
        let id2 = q.enqueue_in(&txn, 0, b"kept too", 6).unwrap();
        // The same transaction can write the caller's own tables too.
        {
            let mut other = txn
                .open_table(TableDefinition::<u64, u64>::new("nodes"))
                .unwrap();
            other.insert(7, 8).unwrap();
        }
        txn.commit().unwrap();
        q.notify_enqueued();
        assert_eq!(poll_once(q.wait_for_work()), Poll::Ready(()));
        assert_eq!(q.get(id).unwrap().unwrap().payload, b"kept".to_vec());
        assert_eq!(ids(&q.take(10, 6).unwrap()), vec![id2, id]);

        let txn = db.begin_write().unwrap();
        assert!(matches!(
            q.enqueue_in(&txn, 4, b"", 0),
            Err(Error::QueueInvalidPriority(4))
        ));
        txn.abort().unwrap();
    }

    #[test]
    fn the_whole_queue_is_one_table() {
        let (_dir, q) = setup(QueueConfig {
            max_attempts: 2,
            ..no_jitter()
        });
        let db = q.db.clone();
        assert_eq!(
            table_names(db.begin_read().unwrap().list_tables().unwrap()),
            ["queue"]
        );

        // The caller's transaction writes its own table and the queue's, nothing else.
        let txn = db.begin_write().unwrap();
        {
            let mut nodes = txn
                .open_table(TableDefinition::<u64, &[u8]>::new("nodes"))
                .unwrap();
            nodes.insert(1, b"node".as_slice()).unwrap();
        }
        let first = q.enqueue_in(&txn, PRIORITY_CREATE, b"create", 10).unwrap();
        let second = q.enqueue_in(&txn, PRIORITY_DELETE, b"delete", 10).unwrap();
        assert_eq!(table_names(txn.list_tables().unwrap()), ["nodes", "queue"]);
        txn.commit().unwrap();
        check_layout(&q);

        // A mixed sequence: every state, every operation, a restart.
        let batch = q
            .enqueue(&[(0, vec![1]), (2, vec![2]), (3, vec![3])], 20)
            .unwrap();
        assert_eq!(ids(&q.take(2, 20).unwrap()), vec![second, batch[0]]);
        q.ack(&[second]).unwrap();
        q.fail(batch[0], "e", 20).unwrap(); // retrying
        check_layout(&q);
        assert_eq!(ids(&q.take(1, 20).unwrap()), vec![first]);
        q.fail(first, "e", 20).unwrap();
        assert_eq!(ids(&q.take(2, 1_000).unwrap()), vec![batch[0], first]);
        assert_eq!(q.fail(first, "e", 1_000).unwrap(), FailOutcome::Dead);
        check_layout(&q);
        q.retry_now(first, 1_000).unwrap();
        q.drop_item(batch[2]).unwrap();
        q.take(1, 1_000).unwrap(); // `first` and `batch[0]` in flight at the restart
        assert_eq!(check_layout(&q).inflight, 2);
        drop(q);
        let q = SyncQueue::open(db.clone(), no_jitter()).unwrap();
        let counters = check_layout(&q);
        assert_eq!(counters.inflight, 0);
        assert_eq!(q.len().unwrap(), 3);

        let txn = db.begin_read().unwrap();
        assert_eq!(table_names(txn.list_tables().unwrap()), ["nodes", "queue"]);
        assert_eq!(txn.list_multimap_tables().unwrap().count(), 0);
    }

    #[test]
    fn corrupt_keys_are_reported() {
        let (_dir, q) = setup(no_jitter());
        q.enqueue(&[(1, vec![])], 0).unwrap();
        let txn = q.db.begin_write().unwrap();
        {
            let mut table = txn.open_table(QUEUE).unwrap();
            // A ready key of priority 0 and an age key, both too short.
            table.insert([TAG_READY, 0, 1].as_slice(), EMPTY).unwrap();
            table.insert([TAG_AGE, 0].as_slice(), EMPTY).unwrap();
        }
        txn.commit().unwrap();
        let corrupt = |e: Error| matches!(e, Error::Decode { what, .. } if what == KEY_RECORD);
        assert!(corrupt(q.next_due_ms().unwrap_err()));
        assert!(corrupt(q.stats(0).unwrap_err()));
        assert!(corrupt(q.take(1, u64::MAX).unwrap_err()));
        // The rest still reads.
        assert_eq!(q.len().unwrap(), 1);
        assert_eq!(q.list(None).unwrap().len(), 1);
    }

    #[test]
    fn oversized_payload_is_refused() {
        let (_dir, q) = setup(no_jitter());
        let big = vec![0u8; MAX_PAYLOAD_BYTES + 1];
        let err = q.enqueue(&[(0, vec![1]), (0, big)], 0).unwrap_err();
        assert!(matches!(
            err,
            Error::QueuePayloadTooLarge { size, max }
                if size == MAX_PAYLOAD_BYTES + 1 && max == MAX_PAYLOAD_BYTES
        ));
        assert!(err.to_string().contains("16777217 bytes"), "{err}");
        assert!(q.is_empty().unwrap()); // nothing of the batch was enqueued
    }

    fn poll_once<F: Future>(future: F) -> Poll<F::Output> {
        let mut future = pin!(future);
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn wait_for_work_wakes_and_is_cancel_safe() {
        let (_dir, q) = setup(no_jitter());
        assert_eq!(poll_once(q.wait_for_work()), Poll::Pending);
        // A notification before waiting is stored.
        q.notify_enqueued();
        q.notify_enqueued();
        assert_eq!(poll_once(q.wait_for_work()), Poll::Ready(()));
        assert_eq!(poll_once(q.wait_for_work()), Poll::Pending); // coalesced
        // A waiter notified and then dropped does not lose the wake-up.
        {
            let mut waiting = pin!(q.wait_for_work());
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Pending);
            q.enqueue(&[(0, vec![])], 0).unwrap();
        }
        assert_eq!(poll_once(q.wait_for_work()), Poll::Ready(()));
    }

    // ----- model-based property test -----

    #[derive(Clone, Debug)]
    enum Op {
        Enqueue(Vec<u8>),
        Take(usize),
        Ack(Vec<prop::sample::Index>),
        Fail(Vec<prop::sample::Index>),
        Advance(u64),
        Reopen,
        RetryNow(prop::sample::Index),
        Drop(prop::sample::Index),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop::collection::vec(0u8..=3, 1..4).prop_map(Op::Enqueue),
            4 => (0usize..5).prop_map(Op::Take),
            2 => prop::collection::vec(any::<prop::sample::Index>(), 1..3).prop_map(Op::Ack),
            3 => prop::collection::vec(any::<prop::sample::Index>(), 1..3).prop_map(Op::Fail),
            3 => (0u64..1500).prop_map(Op::Advance),
            1 => Just(Op::Reopen),
            1 => any::<prop::sample::Index>().prop_map(Op::RetryNow),
            1 => any::<prop::sample::Index>().prop_map(Op::Drop),
        ]
    }

    #[derive(Clone, Debug)]
    struct ModelItem {
        priority: u8,
        state: ItemState,
        attempts: u32,
        enqueued: u64,
        due: u64,
    }

    #[derive(Default)]
    struct Model {
        items: BTreeMap<ItemId, ModelItem>,
        next_id: ItemId,
    }

    impl Model {
        fn take(&mut self, max: usize, now: u64) -> Vec<ItemId> {
            let mut ready: Vec<(u8, u64, ItemId)> = self
                .items
                .iter()
                .filter(|(_, i)| {
                    matches!(i.state, ItemState::Pending | ItemState::Retrying) && i.due <= now
                })
                .map(|(id, i)| (i.priority, i.due, *id))
                .collect();
            ready.sort();
            ready.truncate(max);
            for (_, _, id) in &ready {
                if let Some(item) = self.items.get_mut(id) {
                    item.state = ItemState::InFlight;
                }
            }
            ready.into_iter().map(|(_, _, id)| id).collect()
        }

        fn fail(&mut self, id: ItemId, now: u64, config: &QueueConfig) -> FailOutcome {
            match self.items.get_mut(&id) {
                Some(item) if item.state == ItemState::InFlight => {
                    item.attempts += 1;
                    if item.attempts >= config.max_attempts {
                        item.state = ItemState::Dead;
                        FailOutcome::Dead
                    } else {
                        let backoff = config.nominal_backoff(item.attempts).as_millis() as u64;
                        item.state = ItemState::Retrying;
                        item.due = now + backoff;
                        FailOutcome::Retrying {
                            due_at_ms: item.due,
                        }
                    }
                }
                _ => FailOutcome::NotInFlight,
            }
        }

        fn stats(&self, now: u64) -> QueueStats {
            let mut stats = QueueStats::default();
            for item in self.items.values() {
                match item.state {
                    ItemState::Pending => stats.pending_by_priority[item.priority as usize] += 1,
                    ItemState::InFlight => stats.inflight += 1,
                    ItemState::Retrying => stats.retrying += 1,
                    ItemState::Dead => stats.dead += 1,
                }
            }
            stats.oldest_age = self
                .items
                .values()
                .filter(|i| i.state != ItemState::Dead)
                .map(|i| i.enqueued)
                .min()
                .map(|e| Duration::from_millis(now.saturating_sub(e)));
            stats
        }

        fn next_due(&self) -> Option<u64> {
            self.items
                .values()
                .filter(|i| matches!(i.state, ItemState::Pending | ItemState::Retrying))
                .map(|i| i.due)
                .min()
        }
    }

    fn pick(known: &[ItemId], index: &prop::sample::Index) -> ItemId {
        // Sometimes an id that was never issued.
        if known.is_empty() || index.index(known.len() + 1) == known.len() {
            1_000_000
        } else {
            known[index.index(known.len())]
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn matches_in_memory_model(ops in prop::collection::vec(op(), 1..60)) {
            let config = QueueConfig {
                base_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(1000),
                jitter: 0.0,
                max_attempts: 4,
                durable_commits: false,
            };
            let dir = tempfile::tempdir().unwrap();
            let db = open_db(dir.path());
            let mut q = SyncQueue::open(db.clone(), config.clone()).unwrap();
            let mut model = Model { next_id: 1, ..Model::default() };
            let mut known: Vec<ItemId> = Vec::new();
            let mut now = 1_000u64;
            for op in ops {
                match op {
                    Op::Enqueue(priorities) => {
                        let batch: Vec<(u8, Vec<u8>)> =
                            priorities.iter().map(|p| (*p, vec![*p; 3])).collect();
                        let got = q.enqueue(&batch, now).unwrap();
                        for p in priorities {
                            let id = model.next_id;
                            model.next_id += 1;
                            model.items.insert(id, ModelItem {
                                priority: p, state: ItemState::Pending, attempts: 0,
                                enqueued: now, due: now,
                            });
                            known.push(id);
                        }
                        prop_assert_eq!(&got[..], &known[known.len() - got.len()..]);
                    }
                    Op::Take(max) => {
                        let got = ids(&q.take(max, now).unwrap());
                        prop_assert_eq!(got, model.take(max, now));
                    }
                    Op::Ack(picks) => {
                        let acked: Vec<ItemId> = picks.iter().map(|i| pick(&known, i)).collect();
                        q.ack(&acked).unwrap();
                        for id in acked {
                            model.items.remove(&id);
                        }
                    }
                    Op::Fail(picks) => {
                        let failed: Vec<ItemId> = picks.iter().map(|i| pick(&known, i)).collect();
                        let got = q.fail_many(&failed, "err", now).unwrap();
                        let want: Vec<FailOutcome> =
                            failed.iter().map(|id| model.fail(*id, now, &config)).collect();
                        prop_assert_eq!(got, want);
                    }
                    Op::Advance(ms) => now += ms,
                    Op::Reopen => {
                        drop(q);
                        q = SyncQueue::open(db.clone(), config.clone()).unwrap();
                        for item in model.items.values_mut() {
                            if item.state == ItemState::InFlight {
                                item.state = ItemState::Pending;
                            }
                        }
                    }
                    Op::RetryNow(index) => {
                        let id = pick(&known, &index);
                        let got = q.retry_now(id, now);
                        match model.items.get_mut(&id) {
                            None => prop_assert!(matches!(got, Err(Error::QueueItemNotFound(_)))),
                            Some(item) if item.state == ItemState::InFlight => {
                                prop_assert!(matches!(got, Err(Error::QueueItemInFlight(_))));
                            }
                            Some(item) => {
                                prop_assert!(got.is_ok());
                                item.state = ItemState::Pending;
                                item.attempts = 0;
                                item.due = now;
                            }
                        }
                    }
                    Op::Drop(index) => {
                        let id = pick(&known, &index);
                        let got = q.drop_item(id);
                        match model.items.remove(&id) {
                            None => prop_assert!(matches!(got, Err(Error::QueueItemNotFound(_)))),
                            Some(item) => prop_assert_eq!(got.unwrap().state, item.state),
                        }
                    }
                }
                prop_assert_eq!(q.stats(now).unwrap(), model.stats(now));
                prop_assert_eq!(q.next_due_ms().unwrap(), model.next_due());
                prop_assert_eq!(q.len().unwrap(), model.items.len() as u64);
                prop_assert_eq!(check_layout(&q).next_id.max(1), model.next_id);
            }
            // The stored items agree with the model item by item, in service order.
            let listed = q.list(None).unwrap();
            let mut want: Vec<(u8, u64, ItemId)> =
                model.items.iter().map(|(id, i)| (i.priority, i.due, *id)).collect();
            want.sort();
            prop_assert_eq!(
                listed.iter().map(|i| (i.priority, i.due_at_ms, i.id)).collect::<Vec<_>>(),
                want
            );
            for item in &listed {
                let m = &model.items[&item.id];
                prop_assert_eq!((item.state, item.attempts), (m.state, m.attempts));
            }
            let limited = q.list(Some(3)).unwrap();
            prop_assert_eq!(&limited[..], &listed[..listed.len().min(3)]);
        }
    }
}
