//! The coordinator's persisted change log: every accepted change event, in global sequence order.
//!
//! The coordinator gives each event it accepts the next global sequence number and appends it
//! here; regions subscribe from their last applied sequence, apply in order and acknowledge; the
//! coordinator derives each region's lag from the acknowledgements (see "The flows" in
//! `ARCHITECTURE.md`: Push, Subscribe/apply/ack, Reconnect).
//!
//! # Sequences
//!
//! Sequences start at 1 and are contiguous: a committed append of `n` events after head `h` holds
//! exactly `h + 1 ..= h + n`, and [`ChangeLog::head`] is the last sequence assigned (0 for an
//! empty log). A sequence is never reused within an epoch, not even after a restart.
//!
//! # Epoch
//!
//! The log is created with an epoch, a random UUID v4 string, stored with it and never changed.
//! It names this incarnation of the log:
//!
//! - same epoch as a region last saw: the region's last applied sequence still means what it
//!   meant, and the region continues from it (pull the events after it, then push);
//! - another epoch: the log was recreated (for instance the coordinator's data directory was
//!   wiped) and its sequences restarted from 1, so a region's sequence means nothing here: the
//!   region does a full resync against a snapshot before pushing.
//!
//! # Storage
//!
//! The log lives in the coordinator's redb [`Database`], next to other tables, in a single table
//! named `change_log` (`&[u8] -> &[u8]`). The first byte of every key is a tag that splits the
//! table into keyspaces; numbers are big-endian, so keys compare like the numbers they encode and
//! the store order of the events is the sequence order:
//!
//! - `a ++ region id (UTF-8, 1 to 32 bytes)` -> `acked seq(8) ++ acked_at_ms(8)`: each region's
//!   highest acknowledged sequence and when it last advanced;
//! - `e ++ seq(8)` -> `appended_at_ms(8) ++ ChangeEvent::encode()` (the event with `seq` set);
//! - `h` -> `head(8)`: the last sequence assigned;
//! - `m` -> the epoch (UTF-8).
//!
//! A keyspace is read as the range of its tag (`e` up to, not including, `f`, and so on).
//!
//! One table rather than one per keyspace because a write transaction pays at commit for every
//! distinct table it wrote, while more writes to a table it already wrote are cheap. An append
//! writes one table: its events at the end of the `e` keyspace and the `h` record, which sorts
//! right after the newest event and so usually shares its page. An ack writes one record.
//!
//! The head is a record of its own rather than the last event's key so that compaction can remove
//! events freely. Compaction is not implemented, but the layout allows it: removing a prefix of
//! the `e` keyspace (up to the lowest acknowledged sequence, say) is one range deletion and leaves
//! the head, the acks and the epoch alone. It will need one more record, the lowest retained
//! sequence (the low watermark, under a new tag), so that [`ChangeLog::read_from`] can tell a
//! region asking for compacted events to resync from a snapshot instead of silently skipping
//! them; [`ChangeLog::lag`] already measures the age of the oldest *retained* unacknowledged
//! event.
//!
//! # Durability
//!
//! Appends are durable when they return (by default, [`LogConfig::durable_commits`]): the
//! coordinator acknowledges a push, and broadcasts its events, only after the append returned, so
//! a region never holds a sequence the log could lose in a crash. With `durable_commits` off
//! (tests and benchmarks only) a crash may lose the last appends while keeping the epoch, and
//! regions that had received them would wrongly continue from their sequence.
//!
//! Acknowledgements are not durable by default ([`LogConfig::durable_acks`]): they are persisted
//! by the next durable commit to the database (the next append). Losing the last ones in a crash
//! is harmless: an ack only feeds lag and status, it only ever moves forward, and the region
//! acknowledges again as it applies (a region resumes from its own last applied sequence, not
//! from its ack here).
//!
//! # Concurrency
//!
//! `ChangeLog` is `Send + Sync`: share it behind an `Arc`, every method takes `&self`. Appends are
//! serialized by redb's single writer, so concurrent appends from several threads get disjoint,
//! contiguous ranges of sequences, each batch its own consecutive run. Reads use read
//! transactions (snapshots) and never wait for a writer.
//!
//! Each method that writes opens its own write transaction; a thread that holds a write
//! transaction on the same database must not call them (redb runs one write transaction at a
//! time: it would deadlock), but may append inside its transaction with
//! [`ChangeLog::append_batch_in`] (so that, say, a conflict record and the accepted events commit
//! together) and then call [`ChangeLog::notify_appended`] after committing.
//!
//! Open one `ChangeLog` per database: the in-memory head and its wake-ups only see appends made
//! through this value.
//!
//! # Waking subscribers
//!
//! [`ChangeLog::subscribe_head`] gives a [`watch::Receiver`] of the head, published after each
//! committed append (never before its commit, so a head seen there is always readable). Published
//! heads only grow. A subscription stream task can wait for events after `last` with
//!
//! ```ignore
//! let mut head = log.subscribe_head();
//! loop {
//!     let events = log.read_from(last, BATCH)?;
//!     if let Some(e) = events.last() { last = e.seq.unwrap(); send(events).await?; continue; }
//!     head.wait_for(|&h| h > last).await?; // Err: the log was dropped
//! }
//! ```
//!
//! `Receiver::wait_for` and `Receiver::changed` are cancel safe (tokio documents it): used as a
//! branch of `select!` that loses, they mark nothing seen and lose no wake-up. `wait_for` checks
//! the current value first, so no wake-up can be missed between a read and the wait.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::sync::watch;

use crate::clock::RegionId;
use crate::error::{Error, Result};
use crate::model::ChangeEvent;

/// The log's only table: every keyspace of the module doc, told apart by the key's first byte.
const LOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("change_log");

/// Tag of the acknowledgements: `a ++ region id`.
const TAG_ACK: u8 = b'a';
/// Tag of the events: `e ++ seq`.
const TAG_EVENT: u8 = b'e';
/// Tag (and whole key) of the head record.
const TAG_HEAD: u8 = b'h';
/// Tag (and whole key) of the epoch record.
const TAG_EPOCH: u8 = b'm';

const EVENT_KEY_LEN: usize = 9;
const HEAD_KEY: &[u8] = &[TAG_HEAD];
const EPOCH_KEY: &[u8] = &[TAG_EPOCH];
/// The append time that prefixes an event's value.
const TIME_LEN: usize = 8;
const ACK_VALUE_LEN: usize = 16;

const EVENT_RECORD: &str = "change log event";
const HEAD_RECORD: &str = "change log head";
const EPOCH_RECORD: &str = "change log epoch";
const ACK_RECORD: &str = "change log acknowledgement";
const KEY_RECORD: &str = "change log key";

/// What the log's methods fail with when [`crate::Error`] has no variant for it.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A region acknowledged a sequence the log has not assigned yet.
    #[error("region {region} acknowledged sequence {acked}, beyond the change log's head {head}")]
    AckBeyondHead {
        region: RegionId,
        acked: u64,
        head: u64,
    },
    /// Any other failure (the store, a corrupt record).
    #[error(transparent)]
    Engine(#[from] Error),
}

/// How the log commits.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Whether appends (and the creation of the log) are durable when they return (default
    /// true). When false they use [`Durability::None`]: for tests and benchmarks only (see the
    /// module doc). [`ChangeLog::append_batch_in`] never commits: the caller's transaction
    /// decides.
    pub durable_commits: bool,
    /// Whether acknowledgements are durable when they return (default false: the next durable
    /// commit persists them, see the module doc).
    pub durable_acks: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            durable_commits: true,
            durable_acks: false,
        }
    }
}

/// How far behind the head a region is.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lag {
    /// Events appended after the region's acknowledged sequence.
    pub events: u64,
    /// Age of the oldest of those events (now minus its append time), in seconds; 0 when the
    /// region is caught up, or when the clock passed in is behind the append time.
    pub seconds: f64,
}

/// The coordinator's persisted, ordered log of accepted change events (see the module doc).
pub struct ChangeLog {
    db: Arc<Database>,
    config: LogConfig,
    epoch: String,
    /// The last published head; receivers are woken when it grows.
    head: watch::Sender<u64>,
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog")
            .field("epoch", &self.epoch)
            .field("head", &self.head())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ChangeLog {
    /// Opens the log in `db`, creating it (with a new epoch) if the database has none, with the
    /// default [`LogConfig`] (durable appends).
    pub fn open(db: Arc<Database>) -> Result<ChangeLog> {
        ChangeLog::open_with_config(db, LogConfig::default())
    }

    /// [`open`](Self::open) with a configuration.
    ///
    /// Errors: [`Error::Store`], or [`Error::Decode`] for a log whose records are inconsistent (an
    /// event beyond the head, records without an epoch).
    pub fn open_with_config(db: Arc<Database>, config: LogConfig) -> Result<ChangeLog> {
        let txn = begin_write(&db, config.durable_commits)?;
        let (epoch, head, created) = {
            let mut table = txn.open_table(LOG)?;
            let head = read_head(&table)?;
            if let Some((key, _)) = keyspace(&table, TAG_EVENT)?.next_back().transpose()? {
                let last = event_key_seq(key.value())?;
                if last > head {
                    tracing::error!(last, head, "change log: an event lies beyond the head");
                    return Err(corrupt(HEAD_RECORD));
                }
            }
            let stored = match table.get(EPOCH_KEY)? {
                Some(bytes) => Some(
                    std::str::from_utf8(bytes.value())
                        .ok()
                        .filter(|e| !e.is_empty())
                        .ok_or_else(|| corrupt(EPOCH_RECORD))?
                        .to_owned(),
                ),
                None => None,
            };
            match stored {
                Some(epoch) => (epoch, head, false),
                None => {
                    if table.first()?.is_some() {
                        tracing::error!("change log: records without an epoch");
                        return Err(corrupt(EPOCH_RECORD));
                    }
                    let epoch = uuid::Uuid::new_v4().to_string();
                    table.insert(EPOCH_KEY, epoch.as_bytes())?;
                    (epoch, head, true)
                }
            }
        };
        if created {
            txn.commit()?;
            tracing::info!(epoch, "change log: created with a new epoch");
        } else {
            txn.abort()?;
        }
        let (head_tx, _) = watch::channel(head);
        Ok(ChangeLog {
            db,
            config,
            epoch,
            head: head_tx,
        })
    }

    /// The log's configuration.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The log's epoch: a UUID v4 string created with the log, the same for its whole life.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The last sequence assigned (0 when the log is empty), as last published: a commit in
    /// progress shows here once it has returned.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A receiver of the head, updated after each committed append (see the module doc for the
    /// waiting pattern and cancel safety). Its current value counts as seen.
    pub fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Appends `events` in one write transaction: they get consecutive sequences after the head,
    /// in the order given (any `seq` they carry is replaced), and `now_ms` as their append time.
    /// Commits (durably unless configured otherwise), wakes the subscribers, and returns the
    /// sequences. An empty batch commits nothing and returns no sequence.
    pub fn append_batch(&self, events: Vec<ChangeEvent>, now_ms: u64) -> Result<Vec<u64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let txn = begin_write(&self.db, self.config.durable_commits)?;
        let seqs = append_in(&txn, events, now_ms)?;
        txn.commit()?;
        if let Some(&last) = seqs.last() {
            self.publish(last);
        }
        Ok(seqs)
    }

    /// Appends `events` like [`append_batch`](Self::append_batch), but inside the caller's write
    /// transaction, so that they commit together with the caller's other writes or not at all.
    /// Does not commit and wakes no one: after committing, the caller calls
    /// [`notify_appended`](Self::notify_appended). The sequences returned are only valid if the
    /// transaction commits.
    pub fn append_batch_in(
        &self,
        txn: &WriteTransaction,
        events: Vec<ChangeEvent>,
        now_ms: u64,
    ) -> Result<Vec<u64>> {
        append_in(txn, events, now_ms)
    }

    /// Publishes the committed head to the subscribers (after a transaction that used
    /// [`append_batch_in`](Self::append_batch_in) committed) and returns it. Reads the head from
    /// the store, so it never publishes an uncommitted sequence.
    pub fn notify_appended(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let head = read_head(&txn.open_table(LOG)?)?;
        self.publish(head);
        Ok(head)
    }

    /// Up to `limit` events with a sequence above `after_seq`, in sequence order, each with its
    /// `seq` set. Empty when `after_seq` is at or beyond the head, or `limit` is 0.
    pub fn read_from(&self, after_seq: u64, limit: usize) -> Result<Vec<ChangeEvent>> {
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let (low, high) = (event_key(first), event_key(u64::MAX));
        let mut events = Vec::with_capacity(limit.min(1024));
        for entry in table
            .range::<&[u8]>(low.as_slice()..=high.as_slice())?
            .take(limit)
        {
            let (key, value) = entry?;
            let seq = event_key_seq(key.value())?;
            let (_, bytes) = split_event_value(value.value())?;
            let mut event = ChangeEvent::decode(bytes)?;
            event.seq = Some(seq);
            events.push(event);
        }
        Ok(events)
    }

    /// When the event `seq` was appended (ms, the clock passed to the append), `None` if the log
    /// holds no such event.
    pub fn append_time(&self, seq: u64) -> Result<Option<u64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        match table.get(event_key(seq).as_slice())? {
            Some(value) => Ok(Some(split_event_value(value.value())?.0)),
            None => Ok(None),
        }
    }

    /// Records that `region` has applied every event up to `seq`, at `now_ms`. Monotonic: an ack
    /// at or below the region's acknowledged sequence changes nothing (and commits nothing).
    ///
    /// Errors: [`LogError::AckBeyondHead`] when `seq` is above the head (the region holds
    /// sequences this log never assigned: it should compare epochs); [`LogError::Engine`]
    /// otherwise.
    pub fn ack(&self, region: &RegionId, seq: u64, now_ms: u64) -> Result<(), LogError> {
        // Repeated acks are common: answer them from a snapshot, without the writer lock.
        {
            let txn = self.db.begin_read().map_err(Error::from)?;
            let table = txn.open_table(LOG).map_err(Error::from)?;
            if seq <= read_ack(&table, region)?.map_or(0, |a| a.0) {
                return Ok(());
            }
        }
        let txn = begin_write(&self.db, self.config.durable_acks)?;
        {
            let mut table = txn.open_table(LOG).map_err(Error::from)?;
            if seq <= read_ack(&table, region)?.map_or(0, |a| a.0) {
                drop(table);
                txn.abort().map_err(Error::from)?;
                return Ok(());
            }
            let head = read_head(&table)?;
            if seq > head {
                return Err(LogError::AckBeyondHead {
                    region: region.clone(),
                    acked: seq,
                    head,
                });
            }
            let mut value = [0u8; ACK_VALUE_LEN];
            value[..8].copy_from_slice(&seq.to_be_bytes());
            value[8..].copy_from_slice(&now_ms.to_be_bytes());
            table
                .insert(ack_key(region).as_slice(), value.as_slice())
                .map_err(Error::from)?;
        }
        txn.commit().map_err(Error::from)?;
        Ok(())
    }

    /// The highest sequence `region` acknowledged, 0 if it never did.
    pub fn acked(&self, region: &RegionId) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        Ok(read_ack(&table, region)?.map_or(0, |a| a.0))
    }

    /// When `region`'s acknowledged sequence last advanced (ms, the clock passed to
    /// [`ack`](Self::ack)), `None` if it never acknowledged.
    pub fn last_ack_ms(&self, region: &RegionId) -> Result<Option<u64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        Ok(read_ack(&table, region)?.map(|a| a.1))
    }

    /// Every region that acknowledged, with its highest acknowledged sequence (the `versions` of
    /// the sync status). Regions that never acknowledged are absent.
    pub fn acks(&self) -> Result<BTreeMap<RegionId, u64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut acks = BTreeMap::new();
        for entry in keyspace(&table, TAG_ACK)? {
            let (key, value) = entry?;
            let region = ack_key_region(key.value())?;
            acks.insert(region, decode_ack(value.value())?.0);
        }
        Ok(acks)
    }

    /// How far `region` is behind the head, as of `now_ms` (see [`Lag`]). A region that never
    /// acknowledged is behind by the whole log.
    pub fn lag(&self, region: &RegionId, now_ms: u64) -> Result<Lag> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let head = read_head(&table)?;
        let acked = read_ack(&table, region)?.map_or(0, |a| a.0);
        lag_of(&table, head, acked, now_ms)
    }

    /// [`lag`](Self::lag) of every region that acknowledged, from one snapshot.
    pub fn lags(&self, now_ms: u64) -> Result<BTreeMap<RegionId, Lag>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let head = read_head(&table)?;
        let mut lags = BTreeMap::new();
        for entry in keyspace(&table, TAG_ACK)? {
            let (key, value) = entry?;
            let region = ack_key_region(key.value())?;
            let acked = decode_ack(value.value())?.0;
            lags.insert(region, lag_of(&table, head, acked, now_ms)?);
        }
        Ok(lags)
    }

    /// Raises the published head to `seq` (heads published by concurrent appends may arrive out
    /// of order: the highest wins) and wakes the receivers if it grew. After an
    /// [`append_batch_in`](Self::append_batch_in), call it once the caller's commit is durable:
    /// what is published is what subscribers may read.
    pub fn publish(&self, seq: u64) {
        self.head.send_if_modified(|head| {
            if seq > *head {
                *head = seq;
                true
            } else {
                false
            }
        });
    }
}

fn begin_write(db: &Database, durable: bool) -> Result<WriteTransaction> {
    let mut txn = db.begin_write()?;
    if !durable {
        txn.set_durability(Durability::None)?;
    }
    Ok(txn)
}

/// Appends `events` after the head in `txn` and moves the head; returns their sequences.
fn append_in(txn: &WriteTransaction, events: Vec<ChangeEvent>, now_ms: u64) -> Result<Vec<u64>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut table = txn.open_table(LOG)?;
    let head = read_head(&table)?;
    let mut seqs = Vec::with_capacity(events.len());
    let mut value = Vec::new();
    let mut seq = head;
    for mut event in events {
        // 2^64 sequences cannot be reached; refuse rather than wrap onto old events.
        seq = seq.checked_add(1).ok_or_else(|| corrupt(HEAD_RECORD))?;
        event.seq = Some(seq);
        value.clear();
        value.extend_from_slice(&now_ms.to_be_bytes());
        value.extend_from_slice(&event.encode());
        table.insert(event_key(seq).as_slice(), value.as_slice())?;
        seqs.push(seq);
    }
    table.insert(HEAD_KEY, seq.to_be_bytes().as_slice())?;
    Ok(seqs)
}

/// The lag of a region that acknowledged `acked`, with `head` read from the same snapshot.
fn lag_of<T>(table: &T, head: u64, acked: u64, now_ms: u64) -> Result<Lag>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    if acked >= head {
        return Ok(Lag::default());
    }
    // The oldest retained event the region has not acknowledged (`acked + 1` until compaction).
    let (low, high) = (event_key(acked + 1), event_key(u64::MAX));
    let oldest = match table
        .range::<&[u8]>(low.as_slice()..=high.as_slice())?
        .next()
        .transpose()?
    {
        Some((_, value)) => Some(split_event_value(value.value())?.0),
        None => None,
    };
    let age_ms = oldest.map_or(0, |appended| now_ms.saturating_sub(appended));
    Ok(Lag {
        events: head - acked,
        seconds: age_ms as f64 / 1000.0,
    })
}

/// The head record, 0 if there is none yet.
fn read_head<T>(table: &T) -> Result<u64>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    match table.get(HEAD_KEY)? {
        Some(value) => {
            let bytes: [u8; 8] = value.value().try_into().map_err(|_| corrupt(HEAD_RECORD))?;
            Ok(u64::from_be_bytes(bytes))
        }
        None => Ok(0),
    }
}

/// The region's `(acked seq, acked_at_ms)`, `None` if it never acknowledged.
fn read_ack<T>(table: &T, region: &RegionId) -> Result<Option<(u64, u64)>>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    match table.get(ack_key(region).as_slice())? {
        Some(value) => decode_ack(value.value()).map(Some),
        None => Ok(None),
    }
}

fn decode_ack(value: &[u8]) -> Result<(u64, u64)> {
    let value: [u8; ACK_VALUE_LEN] = value.try_into().map_err(|_| corrupt(ACK_RECORD))?;
    Ok((be_u64(&value[..8]), be_u64(&value[8..])))
}

/// Every entry of one keyspace: the keys from `[tag]` up to, not including, `[tag + 1]`.
fn keyspace<T>(table: &T, tag: u8) -> Result<redb::Range<'_, &'static [u8], &'static [u8]>>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let (low, high) = ([tag], [tag + 1]);
    Ok(table.range::<&[u8]>(low.as_slice()..high.as_slice())?)
}

/// `e ++ seq`, big-endian: byte order is sequence order.
fn event_key(seq: u64) -> [u8; EVENT_KEY_LEN] {
    let mut key = [0u8; EVENT_KEY_LEN];
    key[0] = TAG_EVENT;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn event_key_seq(key: &[u8]) -> Result<u64> {
    match key {
        [TAG_EVENT, seq @ ..] if seq.len() == 8 => Ok(be_u64(seq)),
        _ => Err(corrupt(KEY_RECORD)),
    }
}

/// Splits an event's value into its append time and the encoded event.
fn split_event_value(value: &[u8]) -> Result<(u64, &[u8])> {
    if value.len() < TIME_LEN {
        return Err(corrupt(EVENT_RECORD));
    }
    let (time, event) = value.split_at(TIME_LEN);
    Ok((be_u64(time), event))
}

/// `a ++ region id`.
fn ack_key(region: &RegionId) -> Vec<u8> {
    let id = region.as_str().as_bytes();
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(TAG_ACK);
    key.extend_from_slice(id);
    key
}

fn ack_key_region(key: &[u8]) -> Result<RegionId> {
    key.strip_prefix(&[TAG_ACK])
        .and_then(|id| std::str::from_utf8(id).ok())
        .and_then(|id| RegionId::new(id).ok())
        .ok_or_else(|| corrupt(KEY_RECORD))
}

/// Reads a big-endian u64 from an 8-byte slice.
fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(bytes);
    u64::from_be_bytes(buf)
}

/// A record of the log that cannot be right.
fn corrupt(what: &'static str) -> Error {
    Error::Decode {
        what,
        source: postcard::Error::DeserializeBadEncoding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    use redb::TableHandle;

    use crate::clock::Timestamp;
    use crate::model::{Change, ChangeOp, Name, NodeId, NodeKind, NodeMeta, Version};

    fn region(id: &str) -> RegionId {
        RegionId::new(id).unwrap()
    }

    /// A distinct event for each `n`.
    fn event(n: u64) -> ChangeEvent {
        let origin = region("us-east");
        let change = Change {
            stamp: Timestamp {
                physical_ms: 1_700_000_000_000 + n,
                logical: 0,
                region: origin.clone(),
            },
            counter: n + 1,
        };
        let meta = NodeMeta {
            kind: NodeKind::File,
            parent: NodeId::ROOT,
            name: Name::new(format!("file-{n}")).unwrap(),
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            size: n,
            mtime_ns: 0,
            content: None,
            target: None,
            xattrs: BTreeMap::new(),
            deleted: false,
        };
        ChangeEvent {
            node: NodeId(u128::from(n) + 2),
            op: ChangeOp::Create,
            version: Version::created(meta, change),
            origin,
            seq: None,
        }
    }

    fn events(range: std::ops::Range<u64>) -> Vec<ChangeEvent> {
        range.map(event).collect()
    }

    fn db_path(dir: &Path) -> std::path::PathBuf {
        dir.join("coordinator.redb")
    }

    fn open_db(dir: &Path) -> Arc<Database> {
        Arc::new(Database::create(db_path(dir)).expect("create db"))
    }

    fn setup() -> (tempfile::TempDir, ChangeLog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = ChangeLog::open(open_db(dir.path())).expect("open log");
        (dir, log)
    }

    fn seqs(events: &[ChangeEvent]) -> Vec<u64> {
        events.iter().map(|e| e.seq.unwrap()).collect()
    }

    #[test]
    fn change_log_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ChangeLog>();
    }

    #[test]
    fn sequences_are_contiguous_across_batches_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = ChangeLog::open(open_db(dir.path())).unwrap();
            assert_eq!(log.head(), 0);
            assert_eq!(log.append_batch(events(0..3), 10).unwrap(), vec![1, 2, 3]);
            assert_eq!(log.append_batch(Vec::new(), 11).unwrap(), Vec::<u64>::new());
            assert_eq!(log.append_batch(events(3..4), 12).unwrap(), vec![4]);
            assert_eq!(log.head(), 4);
        }
        let log = ChangeLog::open(open_db(dir.path())).unwrap();
        assert_eq!(log.head(), 4);
        assert_eq!(log.append_batch(events(4..6), 13).unwrap(), vec![5, 6]);
        assert_eq!(log.head(), 6);
        let all = log.read_from(0, 100).unwrap();
        assert_eq!(seqs(&all), (1..=6).collect::<Vec<_>>());
        for (i, e) in all.iter().enumerate() {
            let mut want = event(i as u64);
            want.seq = Some(i as u64 + 1);
            assert_eq!(e, &want);
        }
        let times: Vec<_> = (1..=6).map(|s| log.append_time(s).unwrap()).collect();
        assert_eq!(
            times,
            [10, 10, 10, 12, 13, 13].map(Some).to_vec(),
            "the empty batch took no time slot"
        );
        assert_eq!(log.append_time(0).unwrap(), None);
        assert_eq!(log.append_time(7).unwrap(), None);
    }

    #[test]
    fn appended_events_carry_their_sequence_whatever_they_came_with() {
        let (_dir, log) = setup();
        let mut e = event(0);
        e.seq = Some(999);
        assert_eq!(log.append_batch(vec![e], 0).unwrap(), vec![1]);
        assert_eq!(seqs(&log.read_from(0, 10).unwrap()), vec![1]);
    }

    #[test]
    fn epoch_is_stable_across_reopen_and_new_after_a_wipe() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let log = ChangeLog::open(open_db(dir.path())).unwrap();
            let epoch = log.epoch().to_owned();
            let parsed = uuid::Uuid::parse_str(&epoch).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 4);
            log.append_batch(events(0..2), 1).unwrap();
            epoch
        };
        {
            let log = ChangeLog::open(open_db(dir.path())).unwrap();
            assert_eq!(log.epoch(), first);
            assert_eq!(log.head(), 2);
        }
        std::fs::remove_file(db_path(dir.path())).unwrap();
        let log = ChangeLog::open(open_db(dir.path())).unwrap();
        assert_ne!(log.epoch(), first);
        assert_eq!(log.head(), 0);
        assert_eq!(log.append_batch(events(0..1), 1).unwrap(), vec![1]);
    }

    #[test]
    fn read_from_boundaries_and_limits() {
        let (_dir, log) = setup();
        assert!(log.read_from(0, 10).unwrap().is_empty(), "empty log");
        log.append_batch(events(0..5), 1).unwrap();
        log.append_batch(events(5..10), 2).unwrap();
        assert_eq!(
            seqs(&log.read_from(0, 100).unwrap()),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(seqs(&log.read_from(0, 3).unwrap()), vec![1, 2, 3]);
        assert_eq!(seqs(&log.read_from(4, 3).unwrap()), vec![5, 6, 7]);
        assert_eq!(seqs(&log.read_from(8, 100).unwrap()), vec![9, 10]);
        assert_eq!(seqs(&log.read_from(9, 1).unwrap()), vec![10]);
        assert!(log.read_from(10, 100).unwrap().is_empty(), "at head");
        assert!(log.read_from(11, 100).unwrap().is_empty(), "beyond head");
        assert!(log.read_from(u64::MAX, 100).unwrap().is_empty());
        assert!(log.read_from(0, 0).unwrap().is_empty(), "limit 0");
        assert_eq!(log.read_from(0, usize::MAX).unwrap().len(), 10);
    }

    #[test]
    fn store_order_is_sequence_order_past_one_byte() {
        let (_dir, log) = setup();
        log.append_batch(events(0..300), 1).unwrap();
        let all = log.read_from(250, 100).unwrap();
        assert_eq!(seqs(&all), (251..=300).collect::<Vec<_>>());
        let all = log.read_from(0, 1000).unwrap();
        assert_eq!(seqs(&all), (1..=300).collect::<Vec<_>>());
    }

    #[test]
    fn acks_are_monotonic_and_bounded_by_the_head() {
        let (_dir, log) = setup();
        let (us, eu) = (region("us"), region("eu"));
        assert_eq!(log.acked(&us).unwrap(), 0);
        assert!(log.acks().unwrap().is_empty());
        log.ack(&us, 0, 1).unwrap();
        assert!(log.acks().unwrap().is_empty(), "ack 0 stores nothing");

        let err = log.ack(&us, 1, 1).unwrap_err();
        assert!(
            matches!(
                err,
                LogError::AckBeyondHead {
                    acked: 1,
                    head: 0,
                    ..
                }
            ),
            "{err:?}"
        );

        log.append_batch(events(0..5), 100).unwrap();
        log.ack(&us, 3, 200).unwrap();
        assert_eq!(log.acked(&us).unwrap(), 3);
        assert_eq!(log.last_ack_ms(&us).unwrap(), Some(200));
        log.ack(&us, 2, 300).unwrap();
        assert_eq!(log.acked(&us).unwrap(), 3, "a lower ack is ignored");
        log.ack(&us, 3, 300).unwrap();
        assert_eq!(log.last_ack_ms(&us).unwrap(), Some(200), "an equal ack too");

        let err = log.ack(&eu, 6, 400).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains('6') && message.contains('5') && message.contains("eu"),
            "{message}"
        );
        assert_eq!(log.acked(&eu).unwrap(), 0, "a refused ack stores nothing");
        log.ack(&eu, 5, 400).unwrap();
        log.ack(&us, 4, 500).unwrap();
        assert_eq!(
            log.acks().unwrap(),
            BTreeMap::from([(eu.clone(), 5), (us.clone(), 4)])
        );
        assert_eq!(log.last_ack_ms(&region("ap")).unwrap(), None);
    }

    #[test]
    fn acks_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = ChangeLog::open(open_db(dir.path())).unwrap();
            log.append_batch(events(0..3), 1).unwrap();
            log.ack(&region("us"), 2, 5).unwrap();
            // Acks are not durable by default: a later durable append persists them.
            log.append_batch(events(3..4), 6).unwrap();
        }
        let log = ChangeLog::open(open_db(dir.path())).unwrap();
        assert_eq!(log.acked(&region("us")).unwrap(), 2);
        assert_eq!(log.last_ack_ms(&region("us")).unwrap(), Some(5));
    }

    #[test]
    fn lag_counts_events_and_the_age_of_the_oldest_unacked() {
        let (_dir, log) = setup();
        let us = region("us");
        assert_eq!(log.lag(&us, 1_000).unwrap(), Lag::default(), "empty log");
        log.append_batch(events(0..2), 10_000).unwrap(); // 1, 2
        log.append_batch(events(2..5), 12_500).unwrap(); // 3, 4, 5

        // Never acked: behind by the whole log, since the first event.
        assert_eq!(
            log.lag(&us, 20_000).unwrap(),
            Lag {
                events: 5,
                seconds: 10.0
            }
        );
        log.ack(&us, 1, 20_000).unwrap();
        assert_eq!(
            log.lag(&us, 20_000).unwrap(),
            Lag {
                events: 4,
                seconds: 10.0
            },
            "event 2 is from the first batch"
        );
        log.ack(&us, 2, 20_000).unwrap();
        assert_eq!(
            log.lag(&us, 20_250).unwrap(),
            Lag {
                events: 3,
                seconds: 7.75
            }
        );
        assert_eq!(
            log.lag(&us, 12_000).unwrap(),
            Lag {
                events: 3,
                seconds: 0.0
            },
            "a clock behind the append time"
        );
        log.ack(&us, 5, 21_000).unwrap();
        assert_eq!(log.lag(&us, 99_000).unwrap(), Lag::default(), "caught up");

        let eu = region("eu");
        log.ack(&eu, 4, 21_000).unwrap();
        assert_eq!(
            log.lags(13_500).unwrap(),
            BTreeMap::from([
                (
                    eu,
                    Lag {
                        events: 1,
                        seconds: 1.0
                    }
                ),
                (us, Lag::default()),
            ])
        );
    }

    #[test]
    fn the_head_watch_sees_each_commit() {
        let (_dir, log) = setup();
        let mut rx = log.subscribe_head();
        assert_eq!(*rx.borrow(), 0);
        assert!(!rx.has_changed().unwrap());

        log.append_batch(events(0..3), 1).unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 3);
        assert!(!rx.has_changed().unwrap());

        log.append_batch(Vec::new(), 2).unwrap();
        log.ack(&region("us"), 3, 2).unwrap();
        assert!(!rx.has_changed().unwrap(), "nothing appended");

        let late = log.subscribe_head();
        assert_eq!(*late.borrow(), 3);
        assert!(
            !late.has_changed().unwrap(),
            "a new receiver has seen the head"
        );

        log.append_batch(events(3..4), 3).unwrap();
        log.append_batch(events(4..6), 3).unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            *rx.borrow_and_update(),
            6,
            "wake-ups coalesce to the latest head"
        );

        drop(log);
        assert!(rx.has_changed().is_err(), "the log is gone");
    }

    #[test]
    fn append_in_the_callers_transaction() {
        let (_dir, log) = setup();
        let rx = log.subscribe_head();
        log.append_batch(events(0..1), 1).unwrap();

        let txn = log.db.begin_write().unwrap();
        assert_eq!(
            log.append_batch_in(&txn, events(1..3), 2).unwrap(),
            vec![2, 3]
        );
        txn.abort().unwrap();
        assert_eq!(log.notify_appended().unwrap(), 1, "aborted: nothing landed");
        assert_eq!(seqs(&log.read_from(0, 10).unwrap()), vec![1]);

        let txn = log.db.begin_write().unwrap();
        assert_eq!(
            log.append_batch_in(&txn, events(1..3), 2).unwrap(),
            vec![2, 3]
        );
        txn.commit().unwrap();
        assert_eq!(log.head(), 1, "not published yet");
        assert_eq!(log.notify_appended().unwrap(), 3);
        assert_eq!(log.head(), 3);
        assert_eq!(*rx.borrow(), 3);
        assert_eq!(seqs(&log.read_from(0, 10).unwrap()), vec![1, 2, 3]);
    }

    #[test]
    fn concurrent_appends_get_unique_contiguous_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            durable_commits: false,
            ..LogConfig::default()
        };
        let log = Arc::new(ChangeLog::open_with_config(open_db(dir.path()), config).unwrap());
        const THREADS: u64 = 4;
        const BATCHES: u64 = 50;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for b in 0..BATCHES {
                        let size = 1 + (t + b) % 3;
                        let first = (t * BATCHES + b) * 10;
                        let seqs = log.append_batch(events(first..first + size), b).unwrap();
                        got.push((first, seqs));
                    }
                    got
                })
            })
            .collect();
        let mut all = BTreeSet::new();
        let mut node_of_seq = BTreeMap::new();
        for handle in handles {
            for (first, seqs) in handle.join().unwrap() {
                assert!(
                    seqs.windows(2).all(|w| w[1] == w[0] + 1),
                    "a batch is one run: {seqs:?}"
                );
                for (i, &seq) in seqs.iter().enumerate() {
                    assert!(all.insert(seq), "sequence {seq} handed out twice");
                    node_of_seq.insert(seq, event(first + i as u64).node);
                }
            }
        }
        let total = all.len() as u64;
        assert_eq!(all, (1..=total).collect::<BTreeSet<_>>());
        assert_eq!(log.head(), total);
        let stored = log.read_from(0, usize::MAX).unwrap();
        assert_eq!(seqs(&stored), (1..=total).collect::<Vec<_>>());
        for e in &stored {
            assert_eq!(node_of_seq[&e.seq.unwrap()], e.node);
        }
    }

    #[test]
    fn the_whole_log_is_one_table() {
        let (_dir, log) = setup();
        log.append_batch(events(0..3), 1).unwrap();
        log.ack(&region("us"), 2, 2).unwrap();
        let txn = log.db.begin_read().unwrap();
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        assert_eq!(names, vec!["change_log".to_owned()]);
        let table = txn.open_table(LOG).unwrap();
        let keys: Vec<Vec<u8>> = table
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value().to_vec())
            .collect();
        let want: Vec<Vec<u8>> = vec![
            b"aus".to_vec(),
            event_key(1).to_vec(),
            event_key(2).to_vec(),
            event_key(3).to_vec(),
            b"h".to_vec(),
            b"m".to_vec(),
        ];
        assert_eq!(keys, want);
    }

    #[test]
    fn inconsistent_records_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        {
            let log = ChangeLog::open(Arc::clone(&db)).unwrap();
            log.append_batch(events(0..2), 1).unwrap();
        }
        let txn = db.begin_write().unwrap();
        txn.open_table(LOG)
            .unwrap()
            .insert(HEAD_KEY, 1u64.to_be_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
        let err = ChangeLog::open(Arc::clone(&db)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Decode {
                    what: HEAD_RECORD,
                    ..
                }
            ),
            "{err:?}"
        );

        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(LOG).unwrap();
            table
                .insert(HEAD_KEY, 2u64.to_be_bytes().as_slice())
                .unwrap();
            table.remove(EPOCH_KEY).unwrap();
        }
        txn.commit().unwrap();
        let err = ChangeLog::open(db).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Decode {
                    what: EPOCH_RECORD,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
