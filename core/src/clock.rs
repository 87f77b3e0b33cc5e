//! Logical time: vector clocks for causality, a hybrid logical clock for order.
//!
//! A [`VectorClock`] answers "did this version know about that one?" and so tells
//! a newer version (`After`) from a concurrent one (`Concurrent`, a conflict).
//! The [`Hlc`] gives every change a [`Timestamp`] that is totally ordered across
//! regions (physical milliseconds, then a logical counter, then the region id as
//! the tie-break), so last-writer-wins never compares raw wall clocks: a region
//! whose wall clock jumps back still stamps strictly increasing times.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The longest region id accepted.
pub const MAX_REGION_ID_LEN: usize = 32;

/// The default bound on how far a remote stamp may run ahead of the local wall clock.
pub const DEFAULT_MAX_DRIFT: Duration = Duration::from_millis(500);

/// The id of a region: 1 to 32 characters of `a-z`, `0-9`, `-` and `_`, so that it
/// can appear in file names (conflict copies), metric labels and URLs unescaped.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RegionId(String);

/// Why a string is not a region id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionIdError {
    #[error("region id is empty")]
    Empty,
    #[error("region id {0:?} is longer than {MAX_REGION_ID_LEN} characters")]
    TooLong(String),
    #[error("region id {0:?} may only hold a-z, 0-9, '-' and '_'")]
    BadCharacter(String),
}

impl RegionId {
    /// Validates and wraps a region id.
    pub fn new(id: impl Into<String>) -> Result<Self, RegionIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(RegionIdError::Empty);
        }
        if id.len() > MAX_REGION_ID_LEN {
            return Err(RegionIdError::TooLong(id));
        }
        if !id
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'))
        {
            return Err(RegionIdError::BadCharacter(id));
        }
        Ok(RegionId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RegionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RegionId::new(s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for RegionId {
    type Err = RegionIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RegionId::new(s)
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How two vector clocks relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// `self` happened before `other`: `other` has seen everything `self` has.
    Before,
    /// `self` happened after `other`.
    After,
    Equal,
    /// Neither has seen the other: concurrent writes, a conflict.
    Concurrent,
}

/// A vector clock: region id -> number of changes of that region seen.
///
/// Zero counters are never stored, so two clocks that mean the same are equal as
/// values and encode to the same bytes (the map is ordered by region id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VectorClock(BTreeMap<RegionId, u64>);

impl VectorClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `region` (0 when absent).
    pub fn get(&self, region: &RegionId) -> u64 {
        self.0.get(region).copied().unwrap_or(0)
    }

    /// Counts one more change of `region` and returns the new counter.
    pub fn increment(&mut self, region: &RegionId) -> u64 {
        let counter = self.0.entry(region.clone()).or_insert(0);
        *counter += 1;
        *counter
    }

    /// Makes `self` the least upper bound of `self` and `other` (entry-wise maximum).
    pub fn merge(&mut self, other: &VectorClock) {
        for (region, &counter) in &other.0 {
            let mine = self.0.entry(region.clone()).or_insert(0);
            *mine = (*mine).max(counter);
        }
    }

    /// The least upper bound of `self` and `other`.
    pub fn joined(&self, other: &VectorClock) -> VectorClock {
        let mut out = self.clone();
        out.merge(other);
        out
    }

    /// Compares two clocks in one ordered walk over both maps.
    pub fn compare(&self, other: &VectorClock) -> Causality {
        let (mut less, mut greater) = (false, false);
        let mut a = self.0.iter().peekable();
        let mut b = other.0.iter().peekable();
        loop {
            let step = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Greater,
                (None, Some(_)) => Ordering::Less,
                (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                    Ordering::Equal => {
                        let o = va.cmp(vb);
                        a.next();
                        b.next();
                        match o {
                            Ordering::Less => less = true,
                            Ordering::Greater => greater = true,
                            Ordering::Equal => {}
                        }
                        continue;
                    }
                    // A key present only on one side has a positive counter there.
                    Ordering::Less => Ordering::Greater,
                    Ordering::Greater => Ordering::Less,
                },
            };
            if step == Ordering::Greater {
                greater = true;
                a.next();
            } else {
                less = true;
                b.next();
            }
            if less && greater {
                return Causality::Concurrent;
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// True when `self` has seen the change `(region, counter)`.
    pub fn has_seen(&self, region: &RegionId, counter: u64) -> bool {
        self.get(region) >= counter
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RegionId, u64)> {
        self.0.iter().map(|(r, &c)| (r, c))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The canonical encoding: entry count, then `(len, id bytes, counter)` per
    /// entry in region order, integers as LEB128. Equal clocks, equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.0.len() * 8);
        put_varint(&mut out, self.0.len() as u64);
        for (region, &counter) in &self.0 {
            put_varint(&mut out, region.0.len() as u64);
            out.extend_from_slice(region.0.as_bytes());
            put_varint(&mut out, counter);
        }
        out
    }

    /// Decodes [`VectorClock::encode`]'s bytes, refusing anything non-canonical
    /// (unordered or duplicate ids, zero counters, trailing bytes).
    pub fn decode(mut bytes: &[u8]) -> Result<Self, ClockDecodeError> {
        let count = take_varint(&mut bytes)?;
        let mut map = BTreeMap::new();
        let mut last: Option<RegionId> = None;
        for _ in 0..count {
            let len = take_varint(&mut bytes)? as usize;
            if len > bytes.len() {
                return Err(ClockDecodeError::Truncated);
            }
            let (id, rest) = bytes.split_at(len);
            bytes = rest;
            let id = std::str::from_utf8(id).map_err(|_| ClockDecodeError::BadRegion)?;
            let region = RegionId::new(id).map_err(|_| ClockDecodeError::BadRegion)?;
            if last.as_ref().is_some_and(|l| *l >= region) {
                return Err(ClockDecodeError::NotCanonical);
            }
            let counter = take_varint(&mut bytes)?;
            if counter == 0 {
                return Err(ClockDecodeError::NotCanonical);
            }
            last = Some(region.clone());
            map.insert(region, counter);
        }
        if !bytes.is_empty() {
            return Err(ClockDecodeError::TrailingBytes);
        }
        Ok(VectorClock(map))
    }
}

impl FromIterator<(RegionId, u64)> for VectorClock {
    fn from_iter<I: IntoIterator<Item = (RegionId, u64)>>(iter: I) -> Self {
        VectorClock(iter.into_iter().filter(|(_, c)| *c > 0).collect())
    }
}

/// Why bytes are not an encoded vector clock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockDecodeError {
    #[error("vector clock bytes end early")]
    Truncated,
    #[error("vector clock holds an invalid region id")]
    BadRegion,
    #[error("vector clock is not in canonical form (order, duplicates or zero counters)")]
    NotCanonical,
    #[error("vector clock bytes continue after the last entry")]
    TrailingBytes,
    #[error("vector clock integer is malformed")]
    BadVarint,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, ClockDecodeError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or(ClockDecodeError::Truncated)?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ClockDecodeError::BadVarint)
}

/// A hybrid logical clock reading: totally ordered by physical milliseconds, then
/// the logical counter, then the region id, so two regions never tie.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch (the largest wall-clock reading seen).
    pub physical_ms: u64,
    /// Orders stamps within one millisecond.
    pub logical: u32,
    pub region: RegionId,
}

impl Timestamp {
    /// The compact form used in conflict file names: `<ms>-<logical>`.
    pub fn compact(&self) -> String {
        format!("{}-{}", self.physical_ms, self.logical)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.logical, self.region)
    }
}

/// A remote stamp is further ahead of our wall clock than the allowed drift.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "clock of region {region} runs {ahead_ms} ms ahead of ours (at most {max_drift_ms} ms allowed); check NTP on that host"
)]
pub struct ClockDriftError {
    pub region: RegionId,
    pub ahead_ms: u64,
    pub max_drift_ms: u64,
}

/// A source of wall-clock milliseconds; injectable so tests can move time back.
pub type WallClock = Box<dyn Fn() -> u64 + Send + Sync>;

/// The system wall clock in milliseconds since the epoch.
pub fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).
///
/// Stamps stay close to the wall clock but never go backwards: when the wall
/// clock stalls or jumps back, the logical counter carries the order.
pub struct Hlc {
    region: RegionId,
    max_drift: Duration,
    wall: WallClock,
    /// `(l, c)` of the last stamp issued or observed.
    last: Mutex<(u64, u32)>,
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hlc")
            .field("region", &self.region)
            .field("max_drift", &self.max_drift)
            .finish()
    }
}

impl Hlc {
    /// A clock for `region` on the system wall clock.
    pub fn new(region: RegionId, max_drift: Duration) -> Self {
        Self::with_wall_clock(region, max_drift, Box::new(system_ms))
    }

    pub fn with_wall_clock(region: RegionId, max_drift: Duration, wall: WallClock) -> Self {
        Hlc {
            region,
            max_drift,
            wall,
            last: Mutex::new((0, 0)),
        }
    }

    pub fn region(&self) -> &RegionId {
        &self.region
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u32)> {
        // The guarded pair is always consistent, so a poisoned lock is still usable.
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stamps a local event.
    pub fn now(&self) -> Timestamp {
        let pt = (self.wall)();
        let mut last = self.lock();
        let (l, c) = *last;
        *last = if pt > l {
            (pt, 0)
        } else {
            (l, c.saturating_add(1))
        };
        Timestamp {
            physical_ms: last.0,
            logical: last.1,
            region: self.region.clone(),
        }
    }

    /// Observes a remote stamp so that later local stamps order after it.
    ///
    /// Refuses (and ignores) a stamp more than the configured drift ahead of our
    /// wall clock: merging it would drag every later local stamp into the future.
    pub fn update(&self, remote: &Timestamp) -> Result<(), ClockDriftError> {
        let pt = (self.wall)();
        let limit = pt.saturating_add(self.max_drift.as_millis() as u64);
        if remote.physical_ms > limit {
            return Err(ClockDriftError {
                region: remote.region.clone(),
                ahead_ms: remote.physical_ms - pt,
                max_drift_ms: self.max_drift.as_millis() as u64,
            });
        }
        let mut last = self.lock();
        let (l, c) = *last;
        let (ml, mc) = (remote.physical_ms, remote.logical);
        let nl = l.max(ml).max(pt);
        let nc = if nl == l && nl == ml {
            c.max(mc).saturating_add(1)
        } else if nl == l {
            c.saturating_add(1)
        } else if nl == ml {
            mc.saturating_add(1)
        } else {
            0
        };
        *last = (nl, nc);
        Ok(())
    }

    /// The signed drift of a remote reading relative to our wall clock, in ms
    /// (positive: the remote runs ahead). Used for per-region drift reports.
    pub fn drift_ms(&self, remote_wall_ms: u64) -> i64 {
        remote_wall_ms as i64 - (self.wall)() as i64
    }
}

#[cfg(test)]
mod tests;
