//! The region registry: who is registered, how healthy each region is, and
//! whether enough of them are healthy (quorum).
//!
//! A region is **offline** when no heartbeat arrived for `offline_after`,
//! **degraded** when it heartbeats but lags behind the log (events or seconds
//! past the thresholds) or has dead or retrying items in its sync queue, and
//! **healthy** otherwise. Quorum follows the reference design:
//! `required = ceil(total / 2)` healthy regions out of all registered ones.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::RegionId;

use super::log::Lag;

/// Default interval between heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Default silence after which a region counts as offline.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(15);

/// A region's health as the coordinator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionState {
    Healthy,
    Degraded,
    Offline,
}

impl RegionState {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Healthy => "healthy",
            RegionState::Degraded => "degraded",
            RegionState::Offline => "offline",
        }
    }
}

/// A region's sync queue, as reported in its heartbeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    pub pending: u64,
    pub inflight: u64,
    pub retrying: u64,
    pub dead: u64,
}

/// What the coordinator remembers of a region (persisted across restarts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionRecord {
    pub id: RegionId,
    pub grpc_endpoint: String,
    pub http_endpoint: String,
    /// When the last heartbeat (or registration) arrived, coordinator ms.
    pub last_seen_ms: u64,
    /// The region's wall clock minus ours at its last heartbeat.
    pub clock_drift_ms: i64,
    pub queue: QueueReport,
    /// Paused by an operator: its pushes are refused until resumed.
    pub paused: bool,
    /// An operator asked for a full resync; cleared once the region is told.
    pub resync_requested: bool,
}

/// Thresholds that decide a region's state.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthPolicy {
    pub offline_after: Duration,
    pub degraded_lag_events: u64,
    pub degraded_lag_seconds: f64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            offline_after: OFFLINE_AFTER,
            degraded_lag_events: 1000,
            degraded_lag_seconds: 30.0,
        }
    }
}

impl HealthPolicy {
    /// The state of a region seen last at `last_seen_ms`, now `now_ms`.
    pub fn state(&self, record: &RegionRecord, lag: Lag, now_ms: u64) -> RegionState {
        let silent = now_ms.saturating_sub(record.last_seen_ms);
        if u128::from(silent) >= self.offline_after.as_millis() {
            return RegionState::Offline;
        }
        let lagging =
            lag.events > self.degraded_lag_events || lag.seconds > self.degraded_lag_seconds;
        if lagging || record.queue.dead > 0 || record.queue.retrying > 0 {
            return RegionState::Degraded;
        }
        RegionState::Healthy
    }
}

/// Whether enough regions are healthy for operations that need a majority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    pub total: u64,
    pub healthy: u64,
    pub required: u64,
    pub sufficient: bool,
}

impl Quorum {
    /// `required = ceil(total / 2)`; an empty cluster has no quorum.
    pub fn of(states: impl IntoIterator<Item = RegionState>) -> Quorum {
        let (mut total, mut healthy) = (0u64, 0u64);
        for s in states {
            total += 1;
            healthy += u64::from(s == RegionState::Healthy);
        }
        let required = total.div_ceil(2);
        Quorum {
            total,
            healthy,
            required,
            sufficient: total > 0 && healthy >= required,
        }
    }
}

/// The registered regions, by id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    regions: BTreeMap<RegionId, RegionRecord>,
}

impl Registry {
    /// Registers a region or refreshes its endpoints; returns whether it is new.
    pub fn register(&mut self, id: RegionId, grpc: String, http: String, now_ms: u64) -> bool {
        match self.regions.get_mut(&id) {
            Some(r) => {
                r.grpc_endpoint = grpc;
                r.http_endpoint = http;
                r.last_seen_ms = now_ms;
                false
            }
            None => {
                let record = RegionRecord {
                    id: id.clone(),
                    grpc_endpoint: grpc,
                    http_endpoint: http,
                    last_seen_ms: now_ms,
                    clock_drift_ms: 0,
                    queue: QueueReport::default(),
                    paused: false,
                    resync_requested: false,
                };
                self.regions.insert(id, record);
                true
            }
        }
    }

    /// Records a heartbeat; `None` when the region never registered.
    pub fn heartbeat(
        &mut self,
        id: &RegionId,
        region_wall_ms: u64,
        queue: QueueReport,
        now_ms: u64,
    ) -> Option<&mut RegionRecord> {
        let r = self.regions.get_mut(id)?;
        r.last_seen_ms = now_ms;
        r.clock_drift_ms = region_wall_ms as i64 - now_ms as i64;
        r.queue = queue;
        Some(r)
    }

    pub fn get(&self, id: &RegionId) -> Option<&RegionRecord> {
        self.regions.get(id)
    }

    pub fn get_mut(&mut self, id: &RegionId) -> Option<&mut RegionRecord> {
        self.regions.get_mut(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &RegionRecord> {
        self.regions.values()
    }

    pub fn len(&self) -> usize {
        self.regions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    #[test]
    fn quorum_requires_half_rounded_up() {
        use RegionState::*;
        assert_eq!(
            Quorum::of([]),
            Quorum {
                total: 0,
                healthy: 0,
                required: 0,
                sufficient: false
            }
        );
        assert!(Quorum::of([Healthy]).sufficient);
        assert_eq!(Quorum::of([Healthy, Offline]).required, 1);
        assert!(Quorum::of([Healthy, Offline]).sufficient);
        let q = Quorum::of([Healthy, Offline, Degraded]);
        assert_eq!(
            (q.total, q.healthy, q.required, q.sufficient),
            (3, 1, 2, false)
        );
        assert!(Quorum::of([Healthy, Healthy, Offline]).sufficient);
    }

    #[test]
    fn states_follow_heartbeats_lag_and_queue() {
        let policy = HealthPolicy::default();
        let mut reg = Registry::default();
        assert!(reg.register(region("eu"), "g".into(), "h".into(), 1_000));
        assert!(!reg.register(region("eu"), "g2".into(), "h".into(), 1_000));
        let lag = Lag::default();
        let r = reg.get(&region("eu")).unwrap().clone();
        assert_eq!(r.grpc_endpoint, "g2");
        assert_eq!(policy.state(&r, lag, 1_000 + 14_999), RegionState::Healthy);
        assert_eq!(policy.state(&r, lag, 1_000 + 15_000), RegionState::Offline);
        let far = Lag {
            events: 1001,
            seconds: 0.0,
        };
        assert_eq!(policy.state(&r, far, 2_000), RegionState::Degraded);
        let old = Lag {
            events: 1,
            seconds: 31.0,
        };
        assert_eq!(policy.state(&r, old, 2_000), RegionState::Degraded);

        let queue = QueueReport {
            dead: 1,
            ..Default::default()
        };
        let r = reg
            .heartbeat(&region("eu"), 20_250, queue, 20_000)
            .unwrap()
            .clone();
        assert_eq!(r.clock_drift_ms, 250);
        assert_eq!(policy.state(&r, lag, 20_000), RegionState::Degraded);
        assert!(
            reg.heartbeat(&region("us"), 0, QueueReport::default(), 0)
                .is_none()
        );
    }
}
