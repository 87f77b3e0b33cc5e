use super::*;
use crate::conflict::Strategy;
use crate::engine::{Engine, EngineConfig};
use crate::namespace::{NewNode, RenameMode};

fn region(s: &str) -> RegionId {
    RegionId::new(s).unwrap()
}

fn engine(r: &str) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mut ns = NamespaceConfig::new(region(r));
    ns.policy = ConflictPolicy::uniform(Strategy::Manual);
    let engine = Engine::in_memory(dir.path(), EngineConfig::new(ns), None).unwrap();
    (dir, engine)
}

fn drain(e: &Engine) -> Vec<ChangeEvent> {
    let items = e.queue.take(usize::MAX, u64::MAX).unwrap();
    let ids: Vec<_> = items.iter().map(|i| i.id).collect();
    e.queue.ack(&ids).unwrap();
    items
        .iter()
        .map(|i| ChangeEvent::decode(&i.payload).unwrap())
        .collect()
}

fn coordinator(dir: &Path) -> Coordinator {
    let settings = CoordinatorSettings {
        policy: ConflictPolicy::uniform(Strategy::Manual),
        ..Default::default()
    };
    Coordinator::open(dir, settings).unwrap()
}

#[test]
fn push_logs_new_events_once_and_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (_d, eu) = engine("eu");
    eu.namespace
        .create(crate::model::NodeId::ROOT, b"f", NewNode::file(0o644))
        .unwrap();
    let events = drain(&eu);
    assert!(matches!(
        c.push(&region("eu"), events.clone(), 1),
        Err(Error::UnknownRegion(_))
    ));
    c.register(&region("eu"), "g", "h", 1).unwrap();
    let out = c.push(&region("eu"), events.clone(), 2).unwrap();
    assert_eq!(out, vec![PushOutcome::Accepted { seq: 1 }]);
    assert_eq!(
        c.push(&region("eu"), events.clone(), 3).unwrap(),
        vec![PushOutcome::Duplicate]
    );
    c.register(&region("us"), "g", "h", 1).unwrap();
    let spoofed = c.push(&region("us"), events, 4).unwrap();
    assert!(
        matches!(&spoofed[0], PushOutcome::Rejected { reason } if reason.contains("pushed by region us"))
    );
    assert_eq!(c.head(), 1);
    let logged = c.events_after(0, 10).unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].seq, Some(1));
    // Counted for `/metrics`: the logged event once, the spoofed one as a failure of us.
    let counters = c.counters();
    assert_eq!(
        counters.events,
        BTreeMap::from([(("eu".to_string(), "create"), 1)])
    );
    assert_eq!(counters.rejected, BTreeMap::from([("us".to_string(), 1)]));
    assert!(counters.conflicts.is_empty());
}

#[test]
fn conflicts_are_logged_and_resolved_by_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (_d1, eu) = engine("eu");
    let (_d2, us) = engine("us");
    for r in ["eu", "us"] {
        c.register(&region(r), "g", "h", 1).unwrap();
    }
    let f = eu
        .namespace
        .create(crate::model::NodeId::ROOT, b"f", NewNode::file(0o644))
        .unwrap()
        .id;
    let base = drain(&eu);
    c.push(&region("eu"), base.clone(), 1).unwrap();
    for ev in &base {
        us.namespace.apply_remote(ev).unwrap();
    }
    eu.namespace
        .write_content(f, eu.content.put_bytes(b"eu").unwrap(), 1)
        .unwrap();
    us.namespace
        .write_content(f, us.content.put_bytes(b"us").unwrap(), 2)
        .unwrap();
    assert!(matches!(
        c.push(&region("eu"), drain(&eu), 2).unwrap()[0],
        PushOutcome::Accepted { .. }
    ));
    assert!(matches!(
        c.push(&region("us"), drain(&us), 3).unwrap()[0],
        PushOutcome::ConflictOpen { .. }
    ));
    let conflicts = c.conflicts().unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(c.cluster(4).unwrap().conflicts_open, 1);
    let head = c
        .resolve_conflict(f, ConflictChoice::Keep(region("us")))
        .unwrap();
    assert_eq!(head, 4, "the resolution is logged like any change");
    assert!(c.conflicts().unwrap().is_empty());
    // Counted for `/metrics`: the conflict under the pusher and the path's
    // strategy; every logged event (the operator's included) once.
    let counters = c.counters();
    assert_eq!(
        counters.conflicts,
        BTreeMap::from([(("us".to_string(), "manual"), 1)])
    );
    assert_eq!(counters.events.values().sum::<u64>(), head);
    assert_eq!(counters.events[&("us".to_string(), "update")], 1);
    assert!(counters.events.keys().any(|(r, _)| r == COORDINATOR_REGION));
    // A region that applies the log converges on the operator's choice.
    for ev in c.events_after(0, 100).unwrap() {
        eu.namespace.apply_remote(&ev).unwrap();
    }
    assert!(eu.namespace.conflicts().unwrap().is_empty());
    assert_eq!(
        eu.namespace.get(f).unwrap().meta.content,
        Some(us.content.put_bytes(b"us").unwrap())
    );
}

#[test]
fn registry_identity_and_epoch_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (epoch, leader) = {
        let c = coordinator(dir.path());
        c.register(&region("eu"), "grpc://eu", "http://eu", 1)
            .unwrap();
        c.set_paused(&region("eu"), true).unwrap();
        (c.epoch().to_owned(), c.leader().clone())
    };
    let c = coordinator(dir.path());
    assert_eq!(c.epoch(), epoch);
    assert_eq!(c.leader().id, leader.id);
    assert_eq!(c.leader().term, leader.term + 1, "each start is a new term");
    let view = c.cluster(2).unwrap();
    assert_eq!(view.regions.len(), 1);
    assert!(view.regions[0].record.paused);
    assert!(matches!(
        c.push(&region("eu"), Vec::new(), 3),
        Err(Error::RegionPaused(_))
    ));
}

#[test]
fn cluster_view_states_lag_and_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (_d, eu) = engine("eu");
    for r in ["eu", "us", "ap"] {
        c.register(&region(r), "g", "h", 1_000).unwrap();
    }
    eu.namespace
        .create(crate::model::NodeId::ROOT, b"a", NewNode::directory(0o755))
        .unwrap();
    eu.namespace
        .rename(
            crate::model::NodeId::ROOT,
            b"a",
            crate::model::NodeId::ROOT,
            b"b",
            RenameMode::Replace,
        )
        .unwrap();
    c.push(&region("eu"), drain(&eu), 1_000).unwrap();
    c.ack(&region("eu"), 2, 1_500).unwrap();
    assert!(matches!(
        c.ack(&region("eu"), 9, 1_500),
        Err(Error::AckBeyondHead { .. })
    ));
    c.heartbeat(&region("eu"), 1_000, QueueReport::default(), 10_000)
        .unwrap();
    c.heartbeat(&region("us"), 1_000, QueueReport::default(), 10_000)
        .unwrap();
    let view = c.cluster(10_000).unwrap();
    let state = |r: &str| {
        view.regions
            .iter()
            .find(|v| v.record.id.as_str() == r)
            .unwrap()
    };
    assert_eq!(state("eu").state, RegionState::Healthy);
    assert_eq!(state("eu").lag.events, 0);
    assert_eq!(state("us").lag.events, 2);
    assert_eq!(state("us").record.clock_drift_ms, -9_000);
    assert_eq!(
        state("ap").state,
        RegionState::Healthy,
        "1000 + 15 s not reached at 10 s"
    );
    let later = c.cluster(16_500).unwrap();
    assert_eq!(
        later.quorum,
        Quorum {
            total: 3,
            healthy: 2,
            required: 2,
            sufficient: true
        }
    );
    let (epoch, versions, head) = c.sync_status().unwrap();
    assert_eq!((epoch.as_str(), head), (c.epoch(), 2));
    assert_eq!(versions.get(&region("eu")), Some(&2));
    assert_eq!(versions.get(&region("ap")), Some(&0));
}

#[test]
fn snapshot_carries_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path());
    let (_d, eu) = engine("eu");
    c.register(&region("eu"), "g", "h", 1).unwrap();
    for name in [&b"a"[..], b"b", b"c"] {
        eu.namespace
            .create(crate::model::NodeId::ROOT, name, NewNode::file(0o644))
            .unwrap();
    }
    c.push(&region("eu"), drain(&eu), 1).unwrap();
    let (_d2, fresh) = engine("ap");
    let mut after = None;
    loop {
        let (events, next) = c.snapshot(after, 2).unwrap();
        if events.is_empty() {
            break;
        }
        for ev in &events {
            fresh.namespace.apply_remote(ev).unwrap();
        }
        after = next;
    }
    assert_eq!(
        fresh.namespace.tree().unwrap(),
        eu.namespace.tree().unwrap()
    );
}
