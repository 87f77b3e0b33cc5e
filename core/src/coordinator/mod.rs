//! The coordinator: orders change events, detects and resolves conflicts,
//! tracks the regions, and serves the log they subscribe to.
//!
//! The coordinator keeps its own [`Namespace`](crate::namespace::Namespace):
//! applying a pushed event there tells whether it is new (`Applied`), already
//! known (`Duplicate`), or concurrent with what it holds (a conflict, resolved
//! by the path's strategy exactly as every region will resolve it). New and
//! conflicting events get the next global sequence in the [`log`]; the apply
//! and the append commit in one transaction, made durable before the push is
//! answered, so an acknowledged push is never lost and never half-recorded.
//! Duplicates are answered but not logged again.
//!
//! Regions receive every logged event, their own included: applying one's own
//! event is a cheap duplicate, and a stream without holes keeps gap detection
//! (`seq > last + 1`) exact. (The architecture notes said "excluding the
//! origin"; sequence holes would make every region's gap check depend on which
//! events were its own.)

pub mod admin;
pub mod log;
pub mod registry;
pub mod server;
pub mod service;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::{self, RegionId};
use crate::conflict::ConflictPolicy;
use crate::model::{ChangeEvent, ChangeOp, NodeId};
use crate::namespace::{ApplyOutcome, ConflictChoice, ConflictInfo, NamespaceConfig};
use crate::store::content::ContentId;
use crate::store::{kv_get, kv_put};
use crate::{Engine, EngineConfig, Error, Result};
use redb::ReadableDatabase;

use log::{ChangeLog, Lag, LogError};
use registry::{HealthPolicy, QueueReport, Quorum, RegionRecord, RegionState, Registry};

/// The region id the coordinator writes its own changes (operator resolutions) under.
pub const COORDINATOR_REGION: &str = "coordinator";

/// `content id ++ region id` for every region known to hold a content version
/// (the region that wrote it, for now).
const LOCATIONS: redb::TableDefinition<&[u8], ()> = redb::TableDefinition::new("content_locations");

const KV_REGISTRY: &str = "coordinator/registry";
const KV_IDENTITY: &str = "coordinator/identity";

/// How a coordinator runs.
#[derive(Clone, Debug)]
pub struct CoordinatorSettings {
    pub policy: ConflictPolicy,
    pub health: HealthPolicy,
    pub heartbeat_interval: Duration,
    pub max_drift: Duration,
}

impl CoordinatorSettings {
    /// The settings a configuration file describes.
    pub fn from_config(config: &crate::config::CoordinatorConfig) -> Self {
        CoordinatorSettings {
            policy: config.conflicts.policy(),
            health: HealthPolicy {
                offline_after: config.heartbeat.offline_after(),
                degraded_lag_events: config.degraded_lag_events,
                degraded_lag_seconds: config.degraded_lag_seconds,
            },
            heartbeat_interval: config.heartbeat.interval(),
            max_drift: config.max_clock_drift(),
        }
    }
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        CoordinatorSettings {
            policy: ConflictPolicy::default(),
            health: HealthPolicy::default(),
            heartbeat_interval: registry::HEARTBEAT_INTERVAL,
            max_drift: clock::DEFAULT_MAX_DRIFT,
        }
    }
}

/// Who leads. In embedded mode the coordinator leads itself; the term counts
/// its starts, so a restarted coordinator is recognisably a new leadership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub id: String,
    pub term: u64,
}

/// What became of one pushed event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// New: logged under `seq`.
    Accepted { seq: u64 },
    /// Already known: nothing logged.
    Duplicate,
    /// Concurrent with what the coordinator held; resolved by the path's
    /// strategy and logged (every region resolves it the same way).
    ConflictResolved { seq: u64 },
    /// Concurrent and waiting for an operator (manual strategy); logged.
    ConflictOpen { seq: u64 },
    /// Refused: the event cannot be right.
    Rejected { reason: String },
}

/// A region as the cluster view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionView {
    pub record: RegionRecord,
    pub state: RegionState,
    pub acked: u64,
    pub lag: Lag,
}

/// The whole cluster at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterView {
    pub epoch: String,
    pub head: u64,
    pub leader: LeaderInfo,
    pub quorum: Quorum,
    pub regions: Vec<RegionView>,
    pub conflicts_open: u64,
}

/// What a region learns when it registers or heartbeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub epoch: String,
    pub head: u64,
    pub leader: LeaderInfo,
    pub heartbeat_interval: Duration,
    pub paused: bool,
    /// An operator asked this region for a full resync (told once).
    pub resync: bool,
}

/// What the coordinator counted since it started (for `/metrics`; not
/// persisted, so the counters restart from zero with the process, as
/// Prometheus counters may).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events logged, by origin region and op (`create`, `update`, ...).
    pub events: BTreeMap<(String, &'static str), u64>,
    /// Pushed events that met a conflict (resolved or left open), by pushing
    /// region and the strategy name of the node's path.
    pub conflicts: BTreeMap<(String, &'static str), u64>,
    /// Pushed events rejected, by pushing region.
    pub rejected: BTreeMap<String, u64>,
}

/// The coordinator (see the module docs).
pub struct Coordinator {
    engine: Engine,
    log: ChangeLog,
    registry: Mutex<Registry>,
    settings: CoordinatorSettings,
    leader: LeaderInfo,
    /// Serializes pushes and operator changes so the log order is the order
    /// in which the coordinator's namespace saw the events.
    order: Mutex<()>,
    /// Counted outcomes of pushes and logged events (see [`Counters`]).
    counters: Mutex<Counters>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn from_log(e: LogError) -> Error {
    match e {
        LogError::Engine(e) => e,
        LogError::AckBeyondHead {
            region,
            acked,
            head,
        } => Error::AckBeyondHead {
            region,
            acked,
            head,
        },
    }
}

impl Coordinator {
    /// Opens (or creates) the coordinator's state under `dir`.
    pub fn open(dir: &Path, settings: CoordinatorSettings) -> Result<Coordinator> {
        let region =
            RegionId::new(COORDINATOR_REGION).unwrap_or_else(|_| unreachable!("a valid region id"));
        let mut ns = NamespaceConfig::new(region);
        ns.policy = settings.policy.clone();
        ns.max_drift = settings.max_drift;
        let engine = Engine::open(dir, EngineConfig::new(ns))?;
        let log = ChangeLog::open(engine.db.clone())?;
        let registry = match kv_get(&engine.db, KV_REGISTRY)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|source| Error::Decode {
                what: "region registry",
                source,
            })?,
            None => Registry::default(),
        };
        let mut leader = match kv_get(&engine.db, KV_IDENTITY)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|source| Error::Decode {
                what: "coordinator identity",
                source,
            })?,
            None => LeaderInfo {
                id: uuid::Uuid::new_v4().to_string(),
                term: 0,
            },
        };
        leader.term += 1;
        kv_put(
            &engine.db,
            KV_IDENTITY,
            &postcard::to_allocvec(&leader).unwrap_or_default(),
        )?;
        let coordinator = Coordinator {
            engine,
            log,
            registry: Mutex::new(registry),
            settings,
            leader,
            order: Mutex::new(()),
            counters: Mutex::new(Counters::default()),
        };
        // Operator resolutions committed before a crash but not yet logged.
        coordinator.log_own_changes()?;
        Ok(coordinator)
    }

    pub fn epoch(&self) -> &str {
        self.log.epoch()
    }

    pub fn head(&self) -> u64 {
        self.log.head()
    }

    pub fn leader(&self) -> &LeaderInfo {
        &self.leader
    }

    pub fn settings(&self) -> &CoordinatorSettings {
        &self.settings
    }

    /// Woken whenever the log grows: for subscription streams.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.log.subscribe_head()
    }

    fn save_registry(&self, registry: &Registry) -> Result<()> {
        let bytes = postcard::to_allocvec(registry).unwrap_or_default();
        kv_put(&self.engine.db, KV_REGISTRY, &bytes)
    }

    fn welcome(&self, record: &mut RegionRecord) -> Welcome {
        Welcome {
            epoch: self.epoch().to_owned(),
            head: self.head(),
            leader: self.leader.clone(),
            heartbeat_interval: self.settings.heartbeat_interval,
            paused: record.paused,
            resync: std::mem::take(&mut record.resync_requested),
        }
    }

    /// Registers a region (or refreshes its endpoints).
    pub fn register(
        &self,
        region: &RegionId,
        grpc: &str,
        http: &str,
        now_ms: u64,
    ) -> Result<Welcome> {
        let mut registry = lock(&self.registry);
        registry.register(region.clone(), grpc.to_owned(), http.to_owned(), now_ms);
        let welcome = match registry.get_mut(region) {
            Some(record) => self.welcome(record),
            None => return Err(Error::UnknownRegion(region.to_string())),
        };
        self.save_registry(&registry)?;
        Ok(welcome)
    }

    /// Records a heartbeat: liveness, clock drift and the region's queue.
    pub fn heartbeat(
        &self,
        region: &RegionId,
        region_wall_ms: u64,
        queue: QueueReport,
        now_ms: u64,
    ) -> Result<Welcome> {
        let mut registry = lock(&self.registry);
        let record = registry
            .heartbeat(region, region_wall_ms, queue, now_ms)
            .ok_or_else(|| Error::UnknownRegion(region.to_string()))?;
        let was_requested = record.resync_requested;
        let welcome = self.welcome(record);
        if was_requested {
            self.save_registry(&registry)?;
        }
        Ok(welcome)
    }

    /// Takes a batch of events pushed by `region` (see the module docs).
    pub fn push(
        &self,
        region: &RegionId,
        events: Vec<ChangeEvent>,
        now_ms: u64,
    ) -> Result<Vec<PushOutcome>> {
        {
            let registry = lock(&self.registry);
            let record = registry
                .get(region)
                .ok_or_else(|| Error::UnknownRegion(region.to_string()))?;
            if record.paused {
                return Err(Error::RegionPaused(region.to_string()));
            }
        }
        let order = lock(&self.order);
        // What each event is, for the counters once the outcomes are known.
        let kinds: Vec<(String, &'static str, NodeId)> = events
            .iter()
            .map(|e| (e.origin.to_string(), e.op.as_str(), e.node))
            .collect();
        // Events claiming another origin are refused before anything else;
        // `None` marks the slots the batch answers.
        let mut out: Vec<Option<PushOutcome>> = Vec::with_capacity(events.len());
        let mut batch = Vec::with_capacity(events.len());
        for e in events {
            if e.origin == *region {
                out.push(None);
                batch.push(e);
            } else {
                let reason = format!("event of region {} pushed by region {region}", e.origin);
                out.push(Some(PushOutcome::Rejected { reason }));
            }
        }
        let (applied, seqs) =
            self.engine
                .namespace
                .apply_remote_batch_with(&batch, |txn, outcomes| {
                    let accepted: Vec<ChangeEvent> = batch
                        .iter()
                        .zip(outcomes)
                        .filter(|(_, o)| {
                            matches!(o, Ok(ApplyOutcome::Applied | ApplyOutcome::Conflict { .. }))
                        })
                        .map(|(e, _)| e.clone())
                        .collect();
                    let mut locations = txn.open_table(LOCATIONS)?;
                    for e in &accepted {
                        if let Some(content) =
                            e.version.meta.content.filter(|_| !e.version.meta.deleted)
                        {
                            let mut key = content.id.0.to_vec();
                            key.extend_from_slice(e.origin.as_str().as_bytes());
                            locations.insert(key.as_slice(), ())?;
                        }
                    }
                    drop(locations);
                    self.log.append_batch_in(txn, accepted, now_ms)
                })?;
        // The order is fixed once applied and appended: the next push may go
        // on while this one flushes (concurrent flushes are shared).
        drop(order);
        // Acknowledged pushes must survive a crash, and subscribers only ever
        // see durable events: flush, then publish.
        self.engine.namespace.sync()?;
        if let Some(&last) = seqs.iter().max() {
            self.log.publish(last);
        }
        let mut seqs = seqs.into_iter();
        let mut applied = applied.into_iter().map(|outcome| match outcome {
            Ok(ApplyOutcome::Duplicate) => PushOutcome::Duplicate,
            Ok(outcome) => match (seqs.next(), outcome) {
                (Some(seq), ApplyOutcome::Conflict { open: true }) => {
                    PushOutcome::ConflictOpen { seq }
                }
                (Some(seq), ApplyOutcome::Conflict { open: false }) => {
                    PushOutcome::ConflictResolved { seq }
                }
                (Some(seq), _) => PushOutcome::Accepted { seq },
                (None, _) => PushOutcome::Rejected {
                    reason: "not logged".into(),
                },
            },
            Err(e) => PushOutcome::Rejected {
                reason: e.to_string(),
            },
        });
        let outcomes: Vec<PushOutcome> = out
            .into_iter()
            .map(|slot| {
                slot.or_else(|| applied.next())
                    .unwrap_or(PushOutcome::Rejected {
                        reason: "no outcome".into(),
                    })
            })
            .collect();
        self.count_push(region, &kinds, &outcomes);
        Ok(outcomes)
    }

    /// Counts a push's outcomes (see [`Counters`]).
    fn count_push(
        &self,
        region: &RegionId,
        kinds: &[(String, &'static str, NodeId)],
        outcomes: &[PushOutcome],
    ) {
        let policy = &self.settings.policy;
        // The strategy of each conflict's path, looked up before taking the lock.
        let strategies: Vec<Option<&'static str>> = kinds
            .iter()
            .zip(outcomes)
            .map(|((_, _, node), outcome)| match outcome {
                PushOutcome::ConflictResolved { .. } | PushOutcome::ConflictOpen { .. } => {
                    Some(if policy.rules.is_empty() {
                        policy.default.name()
                    } else {
                        let path = self.engine.namespace.path_of(*node).unwrap_or_default();
                        policy.strategy_for(&path).name()
                    })
                }
                _ => None,
            })
            .collect();
        let mut counters = lock(&self.counters);
        for (((origin, op, _), outcome), strategy) in kinds.iter().zip(outcomes).zip(strategies) {
            match outcome {
                PushOutcome::Duplicate => continue,
                PushOutcome::Rejected { .. } => {
                    *counters.rejected.entry(region.to_string()).or_default() += 1;
                    continue;
                }
                _ => {}
            }
            *counters.events.entry((origin.clone(), *op)).or_default() += 1;
            if let Some(strategy) = strategy {
                *counters
                    .conflicts
                    .entry((region.to_string(), strategy))
                    .or_default() += 1;
            }
        }
    }

    /// A snapshot of what the coordinator counted since it started.
    pub fn counters(&self) -> Counters {
        lock(&self.counters).clone()
    }

    /// Up to `limit` logged events after `after_seq`.
    /// Stops at the published head: events appended but not yet durable are
    /// not shown to regions (a crash could still take them back).
    pub fn events_after(&self, after_seq: u64, limit: usize) -> Result<Vec<ChangeEvent>> {
        let head = self.log.head();
        let mut events = self.log.read_from(after_seq, limit)?;
        events.retain(|e| e.seq.is_some_and(|seq| seq <= head));
        Ok(events)
    }

    /// A region applied everything up to `seq`.
    pub fn ack(&self, region: &RegionId, seq: u64, now_ms: u64) -> Result<()> {
        if lock(&self.registry).get(region).is_none() {
            return Err(Error::UnknownRegion(region.to_string()));
        }
        self.log.ack(region, seq, now_ms).map_err(from_log)
    }

    /// `{epoch, versions: region -> acked sequence, head}`.
    pub fn sync_status(&self) -> Result<(String, std::collections::BTreeMap<RegionId, u64>, u64)> {
        let mut acks = self.log.acks()?;
        for r in lock(&self.registry).iter() {
            acks.entry(r.id.clone()).or_insert(0);
        }
        Ok((self.epoch().to_owned(), acks, self.head()))
    }

    /// A page of the full state for a resync: every node's stored versions
    /// after `after`, as events, and the cursor for the next page.
    pub fn snapshot(
        &self,
        after: Option<NodeId>,
        limit: usize,
    ) -> Result<(Vec<ChangeEvent>, Option<NodeId>)> {
        let nodes = self.engine.namespace.snapshot(after, limit)?;
        let next = nodes.last().map(|(id, _)| *id);
        let events = nodes
            .into_iter()
            .flat_map(|(node, heads)| {
                heads.into_iter().map(move |version| ChangeEvent {
                    node,
                    op: ChangeOp::Update,
                    origin: version.write.stamp.region.clone(),
                    version,
                    seq: None,
                })
            })
            .collect();
        Ok((events, next))
    }

    /// Quorum over the registered regions.
    pub fn quorum(&self, now_ms: u64) -> Result<Quorum> {
        Ok(self.cluster(now_ms)?.quorum)
    }

    /// The cluster view: leader, quorum, and every region's state and lag.
    pub fn cluster(&self, now_ms: u64) -> Result<ClusterView> {
        let records: Vec<RegionRecord> = lock(&self.registry).iter().cloned().collect();
        let mut regions = Vec::with_capacity(records.len());
        for record in records {
            let lag = self.log.lag(&record.id, now_ms)?;
            let acked = self.log.acked(&record.id)?;
            let state = self.settings.health.state(&record, lag, now_ms);
            regions.push(RegionView {
                record,
                state,
                acked,
                lag,
            });
        }
        let quorum = Quorum::of(regions.iter().map(|r| r.state));
        let conflicts_open = self.engine.namespace.conflict_count()?;
        Ok(ClusterView {
            epoch: self.epoch().to_owned(),
            head: self.head(),
            leader: self.leader.clone(),
            quorum,
            regions,
            conflicts_open,
        })
    }

    /// The registered regions known to hold a content version, with their
    /// gRPC endpoints.
    pub fn locate(&self, id: &ContentId) -> Result<Vec<(RegionId, String)>> {
        let txn = self.engine.db.begin_read()?;
        let table = match txn.open_table(LOCATIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let start = id.0.to_vec();
        let end = crate::namespace::prefix_end(&start);
        let registry = lock(&self.registry);
        let mut out = Vec::new();
        for item in table.range(start.as_slice()..end.as_slice())? {
            let (k, _) = item?;
            let Ok(name) = std::str::from_utf8(&k.value()[32..]) else {
                continue;
            };
            let Ok(region) = RegionId::new(name) else {
                continue;
            };
            if let Some(record) = registry.get(&region) {
                out.push((region, record.grpc_endpoint.clone()));
            }
        }
        Ok(out)
    }

    /// A node's path in the coordinator's namespace now.
    pub fn path_of(&self, node: NodeId) -> Result<Vec<u8>> {
        self.engine.namespace.path_of(node)
    }

    /// Open manual conflicts.
    pub fn conflicts(&self) -> Result<Vec<ConflictInfo>> {
        self.engine.namespace.conflicts()
    }

    /// An operator's decision on a manual conflict: a new version that has
    /// seen every conflicting one, logged like any change.
    pub fn resolve_conflict(&self, node: NodeId, choice: ConflictChoice) -> Result<u64> {
        let _order = lock(&self.order);
        self.engine.namespace.resolve_conflict(node, choice)?;
        self.log_own_changes_locked()
    }

    /// Pauses or resumes a region's pushes.
    pub fn set_paused(&self, region: &RegionId, paused: bool) -> Result<()> {
        let mut registry = lock(&self.registry);
        let record = registry
            .get_mut(region)
            .ok_or_else(|| Error::UnknownRegion(region.to_string()))?;
        record.paused = paused;
        self.save_registry(&registry)
    }

    /// Asks a region to resync from a snapshot (told at its next heartbeat).
    pub fn request_resync(&self, region: &RegionId) -> Result<()> {
        let mut registry = lock(&self.registry);
        let record = registry
            .get_mut(region)
            .ok_or_else(|| Error::UnknownRegion(region.to_string()))?;
        record.resync_requested = true;
        self.save_registry(&registry)
    }

    fn log_own_changes(&self) -> Result<u64> {
        let _order = lock(&self.order);
        self.log_own_changes_locked()
    }

    /// Moves the coordinator's own queued changes into the log. Crash-safe:
    /// an item leaves the queue only after its event was logged, and logging it
    /// twice is harmless (regions see a duplicate).
    fn log_own_changes_locked(&self) -> Result<u64> {
        let queue = &self.engine.queue;
        let items = queue.take(usize::MAX, u64::MAX)?;
        if items.is_empty() {
            return Ok(self.head());
        }
        let events = items
            .iter()
            .map(|i| ChangeEvent::decode(&i.payload))
            .collect::<Result<Vec<_>>>()?;
        let kinds: Vec<(String, &'static str)> = events
            .iter()
            .map(|e| (e.origin.to_string(), e.op.as_str()))
            .collect();
        self.log.append_batch(events, clock::system_ms())?;
        let mut counters = lock(&self.counters);
        for kind in kinds {
            *counters.events.entry(kind).or_default() += 1;
        }
        drop(counters);
        let ids: Vec<_> = items.iter().map(|i| i.id).collect();
        queue.ack(&ids)?;
        Ok(self.head())
    }
}

#[cfg(test)]
mod tests;
