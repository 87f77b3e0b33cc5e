use tempfile::TempDir;

use super::*;
use crate::engine::{Engine, EngineConfig};

fn region(s: &str) -> RegionId {
    RegionId::new(s).unwrap()
}

fn engine(r: &str, strategy: Strategy) -> (TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mut ns = NamespaceConfig::new(region(r));
    ns.policy = ConflictPolicy::uniform(strategy);
    let engine = Engine::in_memory(dir.path(), EngineConfig::new(ns), None).unwrap();
    (dir, engine)
}

/// Takes every queued event of a region (acknowledging them).
fn drain(e: &Engine) -> Vec<ChangeEvent> {
    let items = e.queue.take(usize::MAX, u64::MAX).unwrap();
    let ids: Vec<_> = items.iter().map(|i| i.id).collect();
    e.queue.ack(&ids).unwrap();
    items
        .iter()
        .map(|i| ChangeEvent::decode(&i.payload).unwrap())
        .collect()
}

fn deliver(events: &[ChangeEvent], to: &Engine) {
    for ev in events {
        to.namespace.apply_remote(ev).unwrap();
    }
}

fn put(e: &Engine, parent: NodeId, name: &str, data: &[u8]) -> NodeId {
    let ns = &e.namespace;
    let content = e.content.put_bytes(data).unwrap();
    let id = match ns.lookup(parent, name.as_bytes()) {
        Ok(v) => v.id,
        Err(_) => {
            ns.create(parent, name.as_bytes(), NewNode::file(0o644))
                .unwrap()
                .id
        }
    };
    ns.write_content(id, content, 1).unwrap();
    id
}

fn names(ns: &Namespace) -> Vec<String> {
    ns.tree()
        .unwrap()
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

fn content_of(ns: &Namespace, path: &str) -> Option<ContentRef> {
    ns.tree()
        .unwrap()
        .get(path.as_bytes())
        .and_then(|v| v.meta.content)
}

#[test]
fn create_lookup_readdir_round_trip() {
    let (_d, e) = engine("eu", Strategy::LastWriterWins);
    let ns = &e.namespace;
    let dir = ns
        .create(NodeId::ROOT, b"media", NewNode::directory(0o755))
        .unwrap();
    let f = put(&e, dir.id, "a.mkv", b"movie");
    ns.create(dir.id, b"link", NewNode::symlink(b"a.mkv"))
        .unwrap();
    let odd = b"caf\xe9 \xff.txt";
    ns.create(dir.id, odd, NewNode::file(0o600)).unwrap();

    assert_eq!(
        ns.lookup(NodeId::ROOT, b"media").unwrap().meta.kind,
        NodeKind::Directory
    );
    let got = ns.lookup(dir.id, b"a.mkv").unwrap();
    assert_eq!(got.id, f);
    assert_eq!(got.meta.size, 5);
    assert_eq!(
        ns.lookup(dir.id, b"link").unwrap().meta.target.as_deref(),
        Some(&b"a.mkv"[..])
    );
    assert_eq!(ns.lookup(dir.id, odd).unwrap().meta.mode, 0o600);

    let listed: Vec<Vec<u8>> = ns
        .readdir(dir.id, None, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.name.as_bytes().to_vec())
        .collect();
    assert_eq!(
        listed,
        vec![b"a.mkv".to_vec(), odd.to_vec(), b"link".to_vec()]
    );
    // Paging resumes after the given name.
    let rest = ns.readdir(dir.id, Some(b"a.mkv"), 1).unwrap();
    assert_eq!(rest[0].name.as_bytes(), odd);
    assert_eq!(ns.path_of(f).unwrap(), b"/media/a.mkv");
}

#[test]
fn every_local_change_enqueues_one_event() {
    let (_d, e) = engine("eu", Strategy::LastWriterWins);
    let ns = &e.namespace;
    let f = ns
        .create(NodeId::ROOT, b"f", NewNode::file(0o644))
        .unwrap()
        .id;
    ns.setattr(
        f,
        SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .unwrap();
    ns.set_xattr(f, b"user.tag", Some(b"x")).unwrap();
    ns.rename(NodeId::ROOT, b"f", NodeId::ROOT, b"g", RenameMode::Replace)
        .unwrap();
    ns.unlink(NodeId::ROOT, b"g").unwrap();
    let ops: Vec<ChangeOp> = drain(&e).into_iter().map(|ev| ev.op).collect();
    // Service order: the delete first, then by due time.
    assert_eq!(
        ops,
        vec![
            ChangeOp::Delete,
            ChangeOp::Create,
            ChangeOp::Rename,
            ChangeOp::Metadata,
            ChangeOp::Metadata
        ]
    );
}

#[test]
fn setattr_xattrs_and_rename() {
    let (_d, e) = engine("eu", Strategy::LastWriterWins);
    let ns = &e.namespace;
    let a = ns
        .create(NodeId::ROOT, b"a", NewNode::directory(0o755))
        .unwrap()
        .id;
    let b = ns
        .create(NodeId::ROOT, b"b", NewNode::directory(0o755))
        .unwrap()
        .id;
    let f = put(&e, a, "f", b"1");
    ns.setattr(
        f,
        SetAttr {
            mode: Some(0o4640),
            uid: Some(7),
            gid: Some(8),
            mtime_ns: Some(42),
        },
    )
    .unwrap();
    let v = ns.get(f).unwrap();
    assert_eq!(
        (v.meta.mode, v.meta.uid, v.meta.gid, v.meta.mtime_ns),
        (0o4640, 7, 8, 42)
    );
    ns.set_xattr(f, b"user.k", Some(b"v")).unwrap();
    assert_eq!(
        ns.get_xattr(f, b"user.k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
    ns.set_xattr(f, b"user.k", None).unwrap();
    assert!(matches!(
        ns.set_xattr(f, b"user.k", None),
        Err(Error::NoSuchXattr(_))
    ));
    assert!(matches!(
        ns.set_xattr(f, b"trusted.k", Some(b"v")),
        Err(Error::XattrNotSupported(_))
    ));

    // Move across directories, replacing an existing file.
    let g = put(&e, b, "g", b"2");
    ns.rename(a, b"f", b, b"g", RenameMode::Replace).unwrap();
    assert_eq!(ns.lookup(b, b"g").unwrap().id, f);
    assert!(matches!(ns.get(g), Err(Error::NotFound(_))));
    assert!(matches!(ns.lookup(a, b"f"), Err(Error::NotFound(_))));

    // NOREPLACE refuses, EXCHANGE swaps.
    let h = put(&e, a, "h", b"3");
    assert!(matches!(
        ns.rename(a, b"h", b, b"g", RenameMode::NoReplace),
        Err(Error::AlreadyExists(_))
    ));
    ns.rename(a, b"h", b, b"g", RenameMode::Exchange).unwrap();
    assert_eq!(ns.lookup(b, b"g").unwrap().id, h);
    assert_eq!(ns.lookup(a, b"h").unwrap().id, f);
    assert!(matches!(
        ns.rename(a, b"h", b, b"nope", RenameMode::Exchange),
        Err(Error::NotFound(_))
    ));
}

/// Every refusal has its own error and leaves the namespace and the queue as they were.
#[test]
fn bad_input_gets_a_specific_error_and_changes_nothing() {
    let (_d, e) = engine("eu", Strategy::LastWriterWins);
    let ns = &e.namespace;
    let a = ns
        .create(NodeId::ROOT, b"a", NewNode::directory(0o755))
        .unwrap()
        .id;
    let sub = ns.create(a, b"sub", NewNode::directory(0o755)).unwrap().id;
    put(&e, sub, "f", b"x");
    let before_tree = ns.tree().unwrap();
    let before_queue = e.queue.len().unwrap();

    let bad_names: [&[u8]; 6] = [b"a/b", b"a\0b", b".", b"..", b"", &[b'n'; 256]];
    for name in bad_names {
        let err = ns.create(a, name, NewNode::file(0o644)).unwrap_err();
        assert!(matches!(err, Error::InvalidName(_)), "{name:?}: {err}");
        let err = ns
            .rename(a, b"sub", a, name, RenameMode::Replace)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidName(_)), "{name:?}: {err}");
    }
    assert!(matches!(
        ns.rename(NodeId::ROOT, b"a", sub, b"loop", RenameMode::Replace),
        Err(Error::InvalidRename(_))
    ));
    assert!(matches!(
        ns.rename(NodeId::ROOT, b"a", a, b"self", RenameMode::Replace),
        Err(Error::InvalidRename(_))
    ));
    assert!(matches!(ns.rmdir(a, b"sub"), Err(Error::NotEmpty(_))));
    assert!(matches!(ns.rmdir(sub, b"f"), Err(Error::NotADirectory(_))));
    assert!(matches!(ns.unlink(a, b"sub"), Err(Error::IsADirectory(_))));
    assert!(matches!(
        ns.create(a, b"sub", NewNode::file(0o644)),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        ns.create(NodeId(77), b"x", NewNode::file(0o644)),
        Err(Error::NotFound(_))
    ));
    let file = ns.lookup(sub, b"f").unwrap().id;
    assert!(matches!(
        ns.create(file, b"x", NewNode::file(0o644)),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(ns.unlink(a, b"missing"), Err(Error::NotFound(_))));
    // Replacing a non-empty directory, or a directory by a file and back.
    let other = ns
        .create(NodeId::ROOT, b"other", NewNode::directory(0o755))
        .unwrap()
        .id;
    ns.create(other, b"keep", NewNode::file(0o644)).unwrap();
    let before_tree2 = ns.tree().unwrap();
    let before_queue2 = e.queue.len().unwrap();
    assert!(matches!(
        ns.rename(a, b"sub", NodeId::ROOT, b"other", RenameMode::Replace),
        Err(Error::NotEmpty(_))
    ));
    assert!(matches!(
        ns.rename(sub, b"f", NodeId::ROOT, b"other", RenameMode::Replace),
        Err(Error::IsADirectory(_))
    ));
    assert!(matches!(
        ns.rename(NodeId::ROOT, b"other", sub, b"f", RenameMode::Replace),
        Err(Error::NotADirectory(_))
    ));
    assert_eq!(ns.tree().unwrap(), before_tree2);
    assert_eq!(e.queue.len().unwrap(), before_queue2);
    assert_eq!(before_tree.len() + 2, before_tree2.len());
    assert_eq!(before_queue + 2, before_queue2);
}

#[test]
fn remote_events_are_idempotent() {
    let (_d1, a) = engine("eu", Strategy::LastWriterWins);
    let (_d2, b) = engine("us", Strategy::LastWriterWins);
    let dir = a
        .namespace
        .create(NodeId::ROOT, b"d", NewNode::directory(0o755))
        .unwrap()
        .id;
    put(&a, dir, "f", b"hello");
    let events = drain(&a);
    let outcomes: Vec<_> = events
        .iter()
        .map(|ev| b.namespace.apply_remote(ev).unwrap())
        .collect();
    assert!(outcomes.iter().all(|o| *o == ApplyOutcome::Applied));
    let tree = b.namespace.tree().unwrap();
    for ev in events.iter().rev() {
        assert_eq!(
            b.namespace.apply_remote(ev).unwrap(),
            ApplyOutcome::Duplicate
        );
    }
    assert_eq!(b.namespace.tree().unwrap(), tree);
    assert_eq!(names(&a.namespace), names(&b.namespace));
    assert!(
        b.queue.is_empty().unwrap(),
        "remote events are not pushed back"
    );
}

#[test]
fn malformed_remote_events_are_refused() {
    let (_d1, a) = engine("eu", Strategy::LastWriterWins);
    let (_d2, b) = engine("us", Strategy::LastWriterWins);
    a.namespace
        .create(NodeId::ROOT, b"d", NewNode::directory(0o755))
        .unwrap();
    let good = drain(&a).remove(0);

    let mut own_parent = good.clone();
    own_parent.version.meta.parent = own_parent.node;
    let mut unseen = good.clone();
    unseen.version.vclock = VectorClock::new();
    let mut root_delete = good.clone();
    root_delete.node = NodeId::ROOT;
    root_delete.version.meta.deleted = true;
    let mut as_file = good.clone();
    as_file.version.meta.kind = NodeKind::File;
    as_file.version.vclock.increment(&region("eu"));
    for bad in [own_parent, unseen, root_delete] {
        assert!(
            matches!(
                b.namespace.apply_remote(&bad),
                Err(Error::InvalidEvent { .. })
            ),
            "{bad:?}"
        );
    }
    b.namespace.apply_remote(&good).unwrap();
    // A node's kind never changes.
    assert!(matches!(
        b.namespace.apply_remote(&as_file),
        Err(Error::InvalidEvent { .. })
    ));
    assert_eq!(names(&b.namespace), vec!["/d"]);
}

/// Two regions write the same file concurrently.
fn concurrent_writes(strategy: Strategy) -> (Engine, Engine, TempDir, TempDir) {
    let (d1, a) = engine("eu", strategy.clone());
    let (d2, b) = engine("us", strategy);
    let f = put(&a, NodeId::ROOT, "doc.txt", b"base");
    deliver(&drain(&a), &b);
    put(&a, NodeId::ROOT, "doc.txt", b"from eu");
    std::thread::sleep(Duration::from_millis(2));
    b.namespace
        .write_content(f, b.content.put_bytes(b"from us").unwrap(), 2)
        .unwrap();
    let (ea, eb) = (drain(&a), drain(&b));
    deliver(&eb, &a);
    deliver(&ea, &b);
    (a, b, d1, d2)
}

#[test]
fn lww_keeps_the_newest_write() {
    let (a, b, _d1, _d2) = concurrent_writes(Strategy::LastWriterWins);
    let us = b.content.put_bytes(b"from us").unwrap();
    for e in [&a, &b] {
        assert_eq!(names(&e.namespace), vec!["/doc.txt"]);
        assert_eq!(content_of(&e.namespace, "/doc.txt"), Some(us));
    }
}

#[test]
fn fork_keeps_the_loser_as_a_conflict_copy() {
    let (a, b, _d1, _d2) = concurrent_writes(Strategy::Fork);
    let eu = a.content.put_bytes(b"from eu").unwrap();
    let us = b.content.put_bytes(b"from us").unwrap();
    for e in [&a, &b] {
        let tree = e.namespace.tree().unwrap();
        assert_eq!(tree.len(), 2, "{:?}", names(&e.namespace));
        assert_eq!(content_of(&e.namespace, "/doc.txt"), Some(us));
        let (copy, view) = tree
            .iter()
            .find(|(k, _)| k.starts_with(b"/doc.conflict-eu-"))
            .unwrap();
        assert!(copy.ends_with(b".txt"));
        assert_eq!(view.meta.content, Some(eu));
        assert!(view.fork_of.is_some());
    }
    assert_eq!(
        a.namespace.tree().unwrap().keys().collect::<Vec<_>>(),
        b.namespace.tree().unwrap().keys().collect::<Vec<_>>()
    );

    // Deleting the conflict copy in one region removes it everywhere.
    let copy = names(&a.namespace)
        .into_iter()
        .find(|n| n.contains("conflict"))
        .unwrap();
    a.namespace
        .unlink(NodeId::ROOT, &copy.as_bytes()[1..])
        .unwrap();
    deliver(&drain(&a), &b);
    assert_eq!(names(&a.namespace), vec!["/doc.txt"]);
    assert_eq!(names(&b.namespace), vec!["/doc.txt"]);
}

#[test]
fn writing_a_conflict_copy_makes_it_a_real_file() {
    let (a, b, _d1, _d2) = concurrent_writes(Strategy::Fork);
    let copy = names(&a.namespace)
        .into_iter()
        .find(|n| n.contains("conflict"))
        .unwrap();
    let fork = a
        .namespace
        .lookup(NodeId::ROOT, &copy.as_bytes()[1..])
        .unwrap();
    let edited = a.content.put_bytes(b"edited copy").unwrap();
    let real = a.namespace.materialize(fork.id).unwrap();
    a.namespace.write_content(real, edited, 5).unwrap();
    deliver(&drain(&a), &b);
    for e in [&a, &b] {
        assert_eq!(
            content_of(&e.namespace, &copy),
            Some(edited),
            "{:?}",
            names(&e.namespace)
        );
        assert!(
            e.namespace
                .lookup(NodeId::ROOT, &copy.as_bytes()[1..])
                .unwrap()
                .fork_of
                .is_none()
        );
    }
}

#[test]
fn merge_combines_disjoint_changes() {
    let (_d1, a) = engine("eu", Strategy::Merge);
    let (_d2, b) = engine("us", Strategy::Merge);
    let f = put(&a, NodeId::ROOT, "f", b"base");
    deliver(&drain(&a), &b);
    let new = a.content.put_bytes(b"new content").unwrap();
    a.namespace.write_content(f, new, 10).unwrap();
    b.namespace
        .setattr(
            f,
            SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
    b.namespace.set_xattr(f, b"user.seen", Some(b"1")).unwrap();
    let (ea, eb) = (drain(&a), drain(&b));
    deliver(&eb, &a);
    deliver(&ea, &b);
    for e in [&a, &b] {
        let v = e.namespace.get(f).unwrap();
        assert_eq!(v.meta.content, Some(new));
        assert_eq!(v.meta.mode, 0o600);
        assert_eq!(
            v.meta.xattrs.get(&b"user.seen"[..]).map(Vec::as_slice),
            Some(&b"1"[..])
        );
        assert_eq!(names(&e.namespace), vec!["/f"]);
    }
}

#[test]
fn manual_conflict_waits_for_the_operator() {
    let (a, b, _d1, _d2) = concurrent_writes(Strategy::Manual);
    let eu = a.content.put_bytes(b"from eu").unwrap();
    for e in [&a, &b] {
        let conflicts = e.namespace.conflicts().unwrap();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(e.namespace.conflict_count().unwrap(), 1);
        assert_eq!(conflicts[0].path, b"/doc.txt");
        assert_eq!(conflicts[0].versions.len(), 2);
        assert!(
            e.namespace
                .lookup(NodeId::ROOT, b"doc.txt")
                .unwrap()
                .in_conflict
        );
    }
    let node = a.namespace.conflicts().unwrap()[0].node;
    assert!(matches!(
        a.namespace
            .resolve_conflict(node, ConflictChoice::Keep(region("ap"))),
        Err(Error::NoSuchVersion { .. })
    ));
    a.namespace
        .resolve_conflict(node, ConflictChoice::Keep(region("eu")))
        .unwrap();
    deliver(&drain(&a), &b);
    for e in [&a, &b] {
        assert!(e.namespace.conflicts().unwrap().is_empty());
        assert_eq!(e.namespace.conflict_count().unwrap(), 0);
        assert_eq!(content_of(&e.namespace, "/doc.txt"), Some(eu));
        assert_eq!(names(&e.namespace), vec!["/doc.txt"]);
    }
    assert!(matches!(
        a.namespace.resolve_conflict(node, ConflictChoice::KeepBoth),
        Err(Error::NoSuchConflict(_))
    ));
}

#[test]
fn manual_keep_both_forks_the_other_version() {
    let (a, b, _d1, _d2) = concurrent_writes(Strategy::Manual);
    let node = b.namespace.conflicts().unwrap()[0].node;
    b.namespace
        .resolve_conflict(node, ConflictChoice::KeepBoth)
        .unwrap();
    deliver(&drain(&b), &a);
    for e in [&a, &b] {
        assert!(e.namespace.conflicts().unwrap().is_empty());
        assert_eq!(
            e.namespace.tree().unwrap().len(),
            2,
            "{:?}",
            names(&e.namespace)
        );
    }
}

#[test]
fn primary_wins_keeps_the_primary_regions_version() {
    let (a, b, _d1, _d2) = concurrent_writes(Strategy::PrimaryWins(region("eu")));
    let eu = a.content.put_bytes(b"from eu").unwrap();
    for e in [&a, &b] {
        assert_eq!(
            content_of(&e.namespace, "/doc.txt"),
            Some(eu),
            "the older write from the primary wins"
        );
        assert!(
            names(&e.namespace)
                .iter()
                .any(|n| n.starts_with("/doc.conflict-us-"))
        );
    }
}

#[test]
fn delete_never_destroys_a_concurrent_write() {
    for strategy in [
        Strategy::LastWriterWins,
        Strategy::Fork,
        Strategy::Merge,
        Strategy::Manual,
    ] {
        let (_d1, a) = engine("eu", strategy.clone());
        let (_d2, b) = engine("us", strategy.clone());
        let f = put(&a, NodeId::ROOT, "f", b"base");
        deliver(&drain(&a), &b);
        // The delete is the later write, yet the write survives.
        let written = b.content.put_bytes(b"written").unwrap();
        b.namespace.write_content(f, written, 3).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        a.namespace.unlink(NodeId::ROOT, b"f").unwrap();
        let (ea, eb) = (drain(&a), drain(&b));
        deliver(&eb, &a);
        deliver(&ea, &b);
        for e in [&a, &b] {
            assert_eq!(
                content_of(&e.namespace, "/f"),
                Some(written),
                "{strategy:?}"
            );
        }
    }
}

#[test]
fn directory_deleted_while_a_file_is_created_in_it_comes_back() {
    let (_d1, a) = engine("eu", Strategy::LastWriterWins);
    let (_d2, b) = engine("us", Strategy::LastWriterWins);
    let dir = a
        .namespace
        .create(NodeId::ROOT, b"d", NewNode::directory(0o755))
        .unwrap()
        .id;
    deliver(&drain(&a), &b);
    a.namespace.rmdir(NodeId::ROOT, b"d").unwrap();
    put(&b, dir, "new", b"data");
    let (ea, eb) = (drain(&a), drain(&b));
    deliver(&eb, &a);
    deliver(&ea, &b);
    for e in [&a, &b] {
        assert_eq!(names(&e.namespace), vec!["/d", "/d/new"]);
    }
}

#[test]
fn concurrent_creates_of_one_name_both_survive() {
    let (_d1, a) = engine("eu", Strategy::LastWriterWins);
    let (_d2, b) = engine("us", Strategy::LastWriterWins);
    put(&a, NodeId::ROOT, "same.txt", b"eu");
    std::thread::sleep(Duration::from_millis(2));
    put(&b, NodeId::ROOT, "same.txt", b"us");
    let (ea, eb) = (drain(&a), drain(&b));
    deliver(&eb, &a);
    deliver(&ea, &b);
    let eu = a.content.put_bytes(b"eu").unwrap();
    for e in [&a, &b] {
        let n = names(&e.namespace);
        assert_eq!(n.len(), 2, "{n:?}");
        assert_eq!(
            n[0],
            "/same.conflict-us-".to_owned() + &n[0]["/same.conflict-us-".len()..]
        );
        assert_eq!(
            content_of(&e.namespace, "/same.txt"),
            Some(eu),
            "the first creation keeps the name"
        );
    }
    assert_eq!(names(&a.namespace), names(&b.namespace));
}

#[test]
fn concurrent_renames_cannot_make_a_cycle() {
    let (_d1, a) = engine("eu", Strategy::LastWriterWins);
    let (_d2, b) = engine("us", Strategy::LastWriterWins);
    a.namespace
        .create(NodeId::ROOT, b"x", NewNode::directory(0o755))
        .unwrap();
    a.namespace
        .create(NodeId::ROOT, b"y", NewNode::directory(0o755))
        .unwrap();
    deliver(&drain(&a), &b);
    let x = a.namespace.lookup(NodeId::ROOT, b"x").unwrap().id;
    let y = a.namespace.lookup(NodeId::ROOT, b"y").unwrap().id;
    a.namespace
        .rename(NodeId::ROOT, b"x", y, b"x", RenameMode::Replace)
        .unwrap();
    std::thread::sleep(Duration::from_millis(2));
    b.namespace
        .rename(NodeId::ROOT, b"y", x, b"y", RenameMode::Replace)
        .unwrap();
    let (ea, eb) = (drain(&a), drain(&b));
    deliver(&eb, &a);
    deliver(&ea, &b);
    for e in [&a, &b] {
        // The later rename (y into x) is the one undone in the view: y stays at the root.
        assert_eq!(names(&e.namespace), vec!["/y", "/y/x"]);
        assert!(e.namespace.path_of(x).is_ok() && e.namespace.path_of(y).is_ok());
    }
    // A later rename that breaks the cycle puts things where they were asked to be.
    a.namespace
        .rename(y, b"x", NodeId::ROOT, b"x", RenameMode::Replace)
        .unwrap();
    deliver(&drain(&a), &b);
    for e in [&a, &b] {
        assert_eq!(names(&e.namespace), vec!["/x", "/x/y"]);
    }
}

#[test]
fn notifications_report_entries_and_changes() {
    let (_d, e) = engine("eu", Strategy::LastWriterWins);
    let mut rx = e.namespace.subscribe();
    let f = put(&e, NodeId::ROOT, "f", b"1");
    let mut seen = Vec::new();
    while let Ok(n) = rx.try_recv() {
        seen.push(n);
    }
    let name = Name::new(b"f".to_vec()).unwrap();
    assert!(seen.contains(&Notification {
        node: f,
        kind: NotificationKind::EntryAdded {
            parent: NodeId::ROOT,
            name
        },
        origin: 0,
    }));
    assert!(seen.contains(&Notification {
        node: f,
        kind: NotificationKind::Changed,
        origin: 0,
    }));
}

#[test]
fn sync_makes_commits_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig::new(NamespaceConfig::new(region("eu")));
    {
        let e = Engine::open(dir.path(), config.clone()).unwrap();
        put(&e, NodeId::ROOT, "kept", b"data");
        e.namespace.sync().unwrap();
    }
    let e = Engine::open(dir.path(), config).unwrap();
    assert_eq!(names(&e.namespace), vec!["/kept"]);
    assert_eq!(e.queue.len().unwrap(), 2);
}

/// Concurrent changes share commits; every one lands, and a change that fails
/// (a name taken) fails alone.
#[test]
fn concurrent_changes_share_commits_and_fail_alone() {
    let (_d, e) = engine("eu", Strategy::LastWriterWins);
    let ns = e.namespace.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let ns = ns.clone();
            std::thread::spawn(move || {
                let mut taken = 0;
                for i in 0..100 {
                    // Threads 0 and 1 race for the same names: one of each pair fails.
                    let name = if t < 2 {
                        format!("shared-{i}")
                    } else {
                        format!("t{t}-{i}")
                    };
                    match ns.create(NodeId::ROOT, name.as_bytes(), NewNode::file(0o644)) {
                        Ok(_) => {}
                        Err(Error::AlreadyExists(_)) => taken += 1,
                        Err(other) => panic!("{other}"),
                    }
                }
                taken
            })
        })
        .collect();
    let taken: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(taken, 100, "each shared name is created exactly once");
    assert_eq!(ns.tree().unwrap().len(), 700);
    assert_eq!(
        e.queue.len().unwrap(),
        700,
        "one event per landed change, none for the failed ones"
    );
    eprintln!("{} commits for 800 changes", ns.group.committed());
    // 800 changes ran (100 of them failed); never more commits than changes.
    assert!(
        ns.group.committed() <= 800,
        "{} commits",
        ns.group.committed()
    );
}

/// A namespace rebuilt from another's snapshot shows the same tree and the
/// same open conflicts, tombstones included.
#[test]
fn snapshot_rebuilds_the_same_tree() {
    let (a, b, _d1, _d2) = concurrent_writes(Strategy::Manual);
    put(&a, NodeId::ROOT, "gone", b"x");
    a.namespace.unlink(NodeId::ROOT, b"gone").unwrap();
    a.namespace
        .setattr(
            NodeId::ROOT,
            SetAttr {
                mode: Some(0o700),
                ..Default::default()
            },
        )
        .unwrap();
    drop(b);
    let (_d3, c) = engine("ap", Strategy::Manual);
    let mut after = None;
    let mut nodes = 0;
    loop {
        let batch = a.namespace.snapshot(after, 2).unwrap();
        let Some((last, _)) = batch.last() else { break };
        after = Some(*last);
        for (node, heads) in batch {
            nodes += 1;
            for version in heads {
                let event = ChangeEvent {
                    node,
                    op: ChangeOp::Update,
                    version,
                    origin: region("eu"),
                    seq: None,
                };
                c.namespace.apply_remote(&event).unwrap();
            }
        }
    }
    assert!(nodes >= 3, "root, doc.txt and the tombstone of gone");
    assert_eq!(c.namespace.tree().unwrap(), a.namespace.tree().unwrap());
    assert_eq!(c.namespace.get(NodeId::ROOT).unwrap().meta.mode, 0o700);
    let conflicts = |e: &Engine| {
        e.namespace
            .conflicts()
            .unwrap()
            .into_iter()
            .map(|c| (c.node, c.versions))
            .collect::<Vec<_>>()
    };
    assert_eq!(conflicts(&c), conflicts(&a));
    // The tombstone came along: an old create of "gone" is now a duplicate.
    assert!(c.namespace.lookup(NodeId::ROOT, b"gone").is_err());
}

/// One bad event in a batch is refused alone; the others land, and what the
/// hook writes lands in the same transaction.
#[test]
fn a_bad_event_in_a_batch_fails_alone() {
    let (_d1, a) = engine("eu", Strategy::LastWriterWins);
    let (_d2, b) = engine("us", Strategy::LastWriterWins);
    a.namespace
        .create(NodeId::ROOT, b"d", NewNode::directory(0o755))
        .unwrap();
    put(&a, NodeId::ROOT, "f", b"1");
    let mut events = drain(&a);
    let mut bad = events[0].clone();
    bad.version.meta.parent = bad.node;
    let mut wrong_kind = events[0].clone();
    wrong_kind.version.meta.kind = NodeKind::Symlink;
    wrong_kind.version.vclock.increment(&region("eu"));
    wrong_kind.version.write.counter += 1;
    events.insert(1, bad);
    events.push(wrong_kind);
    const HOOK: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("hook");
    let (outcomes, seen) = b
        .namespace
        .apply_remote_batch_with(&events, |txn, outcomes| {
            let mut t = txn.open_table(HOOK)?;
            t.insert(
                "applied",
                outcomes.iter().filter(|o| o.is_ok()).count() as u64,
            )?;
            Ok(outcomes.len())
        })
        .unwrap();
    assert_eq!(seen, events.len());
    assert!(matches!(outcomes[1], Err(Error::InvalidEvent { .. })));
    assert!(matches!(
        outcomes.last(),
        Some(Err(Error::InvalidEvent { .. }))
    ));
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Ok(ApplyOutcome::Applied)))
            .count(),
        events.len() - 2
    );
    assert_eq!(names(&b.namespace), vec!["/d", "/f"]);
    let txn = b.db.begin_read().unwrap();
    assert_eq!(
        txn.open_table(HOOK)
            .unwrap()
            .get("applied")
            .unwrap()
            .unwrap()
            .value(),
        (events.len() - 2) as u64
    );
}

#[test]
fn paths_resolve_and_traversal_is_refused() {
    let (_d, e) = engine("eu", Strategy::LastWriterWins);
    let ns = &e.namespace;
    let a = ns
        .create(NodeId::ROOT, b"a", NewNode::directory(0o755))
        .unwrap()
        .id;
    let f = put(&e, a, "f.txt", b"x");
    assert_eq!(ns.resolve(b"/").unwrap().id, NodeId::ROOT);
    assert_eq!(ns.resolve(b"/a/f.txt").unwrap().id, f);
    assert_eq!(ns.resolve(b"/a/").unwrap().id, a);
    let (parent, name) = ns.resolve_parent(b"/a/new").unwrap();
    assert_eq!((parent.id, name.as_bytes()), (a, &b"new"[..]));
    for bad in [
        &b"a/f.txt"[..],
        b"/a/../a",
        b"/a/./f.txt",
        b"//a",
        b"/a//f.txt",
        b"",
        b"/a\0b",
    ] {
        assert!(
            matches!(ns.resolve(bad), Err(Error::InvalidPath { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(ns.resolve(b"/missing"), Err(Error::NotFound(_))));
    assert!(matches!(
        ns.resolve_parent(b"/"),
        Err(Error::InvalidPath { .. })
    ));
}
