use std::collections::BTreeMap;

use super::*;
use crate::clock::Timestamp;
use crate::model::Name;
use crate::model::{Change, NodeId, NodeMeta};
use crate::store::content::{ContentId, ContentRef};

fn region(s: &str) -> RegionId {
    RegionId::new(s).unwrap()
}

fn content(byte: u8) -> Option<ContentRef> {
    Some(ContentRef {
        id: ContentId([byte; 32]),
        size: 1,
    })
}

/// A version written by `r` as its `counter`-th write at `ms`, on top of `base`.
fn write(base: &VectorClock, r: &str, counter: u64, ms: u64, data: u8) -> Version {
    let mut vclock = base.clone();
    vclock.merge(&[(region(r), counter)].into_iter().collect());
    let change = Change {
        stamp: Timestamp {
            physical_ms: ms,
            logical: 0,
            region: region(r),
        },
        counter,
    };
    Version {
        meta: NodeMeta {
            kind: NodeKind::File,
            parent: NodeId::ROOT,
            name: Name::new(b"f.txt".to_vec()).unwrap(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 1,
            mtime_ns: ms as i64,
            content: content(data),
            target: None,
            xattrs: BTreeMap::new(),
            deleted: false,
        },
        vclock,
        write: change.clone(),
        changes: FieldChanges::all(&change),
        forks: BTreeMap::new(),
        dismissed: Default::default(),
    }
}

fn resolved(heads: &[Version], s: &Strategy) -> Version {
    match resolve(heads, s) {
        Resolution::Resolved(v) => v,
        Resolution::Open { .. } => panic!("expected a resolution"),
    }
}

#[test]
fn policy_picks_the_longest_component_prefix() {
    let policy = ConflictPolicy {
        default: Strategy::LastWriterWins,
        rules: vec![
            ("/media".into(), Strategy::Fork),
            ("/media/shared/".into(), Strategy::Manual),
        ],
    };
    assert_eq!(policy.strategy_for(b"/media/a.mkv"), &Strategy::Fork);
    assert_eq!(policy.strategy_for(b"/media"), &Strategy::Fork);
    assert_eq!(policy.strategy_for(b"/media/shared/x"), &Strategy::Manual);
    assert_eq!(
        policy.strategy_for(b"/mediaserver/x"),
        &Strategy::LastWriterWins
    );
    assert_eq!(policy.strategy_for(b"/docs"), &Strategy::LastWriterWins);
}

#[test]
fn resolution_does_not_depend_on_head_order_or_grouping() {
    let base = VectorClock::new();
    let a = write(&base, "eu", 1, 100, 1);
    let b = write(&base, "us", 1, 200, 2);
    let c = write(&base, "ap", 1, 150, 3);
    for s in [
        Strategy::LastWriterWins,
        Strategy::Fork,
        Strategy::Merge,
        Strategy::PrimaryWins(region("ap")),
    ] {
        let all = resolved(&[a.clone(), b.clone(), c.clone()], &s);
        let all_rev = resolved(&[c.clone(), b.clone(), a.clone()], &s);
        let ab = resolved(&[a.clone(), b.clone()], &s);
        let stepwise = resolved(&[ab, c.clone()], &s);
        let bc = resolved(&[b.clone(), c.clone()], &s);
        let stepwise2 = resolved(&[bc, a.clone()], &s);
        assert_eq!(all, all_rev, "{s:?}");
        assert_eq!(all.meta, stepwise.meta, "{s:?}");
        assert_eq!(all.forks, stepwise.forks, "{s:?}");
        assert_eq!(all.meta, stepwise2.meta, "{s:?}");
        assert_eq!(all.forks, stepwise2.forks, "{s:?}");
        assert_eq!(all.vclock, stepwise.vclock);
    }
}

#[test]
fn strategies_pick_their_winner() {
    let base = VectorClock::new();
    let old = write(&base, "eu", 1, 100, 1);
    let new = write(&base, "us", 1, 200, 2);
    let heads = [old.clone(), new.clone()];
    let lww = resolved(&heads, &Strategy::LastWriterWins);
    assert_eq!(lww.meta.content, new.meta.content);
    assert!(lww.forks.is_empty());
    assert_eq!(lww.vclock, old.vclock.joined(&new.vclock));

    let fork = resolved(&heads, &Strategy::Fork);
    assert_eq!(fork.meta.content, new.meta.content);
    assert_eq!(
        fork.forks.values().map(|f| f.content).collect::<Vec<_>>(),
        vec![old.meta.content]
    );

    let primary = resolved(&heads, &Strategy::PrimaryWins(region("eu")));
    assert_eq!(primary.meta.content, old.meta.content);
    assert_eq!(
        primary
            .forks
            .values()
            .map(|f| f.content)
            .collect::<Vec<_>>(),
        vec![new.meta.content]
    );

    match resolve(&heads, &Strategy::Manual) {
        Resolution::Open { preview } => assert_eq!(preview, new),
        other => panic!("{other:?}"),
    }
}

#[test]
fn equal_ties_break_by_region() {
    let base = VectorClock::new();
    let a = write(&base, "eu", 1, 100, 1);
    let b = write(&base, "us", 1, 100, 2);
    assert_eq!(
        resolved(&[a.clone(), b.clone()], &Strategy::LastWriterWins)
            .meta
            .content,
        b.meta.content
    );
    assert_eq!(
        resolved(&[b, a], &Strategy::LastWriterWins).meta.content,
        content(2)
    );
}

#[test]
fn a_delete_loses_against_a_concurrent_write() {
    let base = VectorClock::new();
    let write_v = write(&base, "eu", 1, 100, 1);
    let mut delete = write(&base, "us", 1, 900, 1);
    delete.meta.deleted = true;
    for s in [
        Strategy::LastWriterWins,
        Strategy::Fork,
        Strategy::Merge,
        Strategy::Manual,
    ] {
        let r = resolved(&[write_v.clone(), delete.clone()], &s);
        assert!(!r.meta.deleted, "{s:?}");
        assert_eq!(r.meta.content, write_v.meta.content);
    }
    let mut delete2 = write(&base, "ap", 1, 50, 1);
    delete2.meta.deleted = true;
    assert!(resolved(&[delete, delete2], &Strategy::Fork).meta.deleted);
}

#[test]
fn merge_falls_back_to_fork_for_concurrent_content() {
    let base = VectorClock::new();
    let a = write(&base, "eu", 1, 100, 1);
    let b = write(&base, "us", 1, 200, 2);
    let m = resolved(&[a.clone(), b.clone()], &Strategy::Merge);
    assert_eq!(m.meta.content, b.meta.content);
    assert_eq!(
        m.forks.values().map(|f| f.content).collect::<Vec<_>>(),
        vec![a.meta.content]
    );
}
