//! Crash safety: a child process commits changes in a loop and is killed with
//! SIGKILL at random moments. After each kill the parent reopens the engine and
//! checks that
//!
//! - reopening succeeds (no corruption);
//! - every change whose durable commit (`Namespace::sync`) had returned is
//!   present, content included;
//! - node changes and queue items are consistent both ways: every queued event
//!   names a change that landed, and every change that landed has its event;
//! - queue items the child had taken (in flight when it died) are back to
//!   pending, and nothing the parent saw after an earlier crash was lost.
//!
//! The test binary re-executes itself as the child: `child_writer` is an
//! `#[ignore]`d helper that only does something when the parent runs it with
//! `GEOSYNC_CRASH_CHILD_DIR` set (it returns at once otherwise).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use geosync_core::clock::{self, RegionId};
use geosync_core::model::{ChangeEvent, ChangeOp, NodeId, NodeKind};
use geosync_core::namespace::{NamespaceConfig, NewNode, NodeView, RenameMode, SetAttr};
use geosync_core::queue::{ItemId, ItemState};
use geosync_core::store::content::{ContentRef, DEFAULT_CHUNK_SIZE, Manifest};
use geosync_core::{Engine, EngineConfig};
use rand::Rng;

/// Where the child keeps its engine state; its presence makes `child_writer` run.
const CHILD_DIR_ENV: &str = "GEOSYNC_CRASH_CHILD_DIR";
/// Highest iteration committed before a `sync` that returned, one per line.
const ACKED_LOG: &str = "acked.log";
/// Queue item ids taken (made in flight) by a `take` that returned, one per line.
const TAKEN_LOG: &str = "taken.log";
/// Created by the child once its engine is open.
const READY_FILE: &str = "child.ready";

const ROUNDS: usize = 16;
/// How long a child may take to open its engine.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a killed child may take to be reaped.
const REAP_DEADLINE: Duration = Duration::from_secs(10);
/// A child that outlives this exits on its own (the parent must kill it first).
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

fn config() -> EngineConfig {
    EngineConfig::new(NamespaceConfig::new(region()))
}

fn region() -> RegionId {
    RegionId::new("eu").expect("valid region id")
}

fn payload(i: u64) -> String {
    format!("payload {i}")
}

/// Iterations that also change the file's mode.
fn sets_mode(i: u64) -> bool {
    i % 3 == 1
}

/// Iterations that also make a directory `d<i>` and move a new file `g<i>` into it.
fn makes_dir(i: u64) -> bool {
    i % 4 == 2
}

fn expected_ref(i: u64) -> ContentRef {
    Manifest::for_bytes(payload(i).as_bytes(), DEFAULT_CHUNK_SIZE)
        .expect("manifest")
        .content_ref()
}

/// The iteration number of a root entry the child creates (`f<i>`, `g<i>`, `d<i>`).
fn iteration_of(name: &[u8]) -> Option<u64> {
    let (first, rest) = name.split_first()?;
    if !matches!(first, b'f' | b'g' | b'd') {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// The numbers of a log's complete lines (a line torn by the kill is ignored).
fn read_log(path: &Path) -> Vec<u64> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .map(|l| {
            l.parse()
                .unwrap_or_else(|e| panic!("bad line {l:?} in {}: {e}", path.display()))
        })
        .collect()
}

/// Appends one line with a single write and makes it durable.
fn append_durably(log: &mut File, value: u64) {
    log.write_all(format!("{value}\n").as_bytes())
        .expect("append to log");
    log.sync_data().expect("sync log");
}

fn open_log(dir: &Path, name: &str) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("open log")
}

// ----- the child -----

/// The child process (see the module docs): not a test of its own.
#[test]
#[ignore = "the child process of `killed_writer_keeps_every_synced_change`, run by it"]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let parent = std::os::unix::process::parent_id();
    let started = Instant::now();
    let engine = Engine::open(&dir, config()).expect("child: open engine");
    let ns = &engine.namespace;
    let mut acked = open_log(&dir, ACKED_LOG);
    let mut taken = open_log(&dir, TAKEN_LOG);

    // Continue after whatever the earlier children left.
    let mut next = read_log(&dir.join(ACKED_LOG))
        .into_iter()
        .max()
        .map_or(0, |i| i + 1);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let batch = ns
            .readdir(NodeId::ROOT, after.as_deref(), 1024)
            .expect("child: readdir");
        let Some(last) = batch.last() else { break };
        after = Some(last.name.as_bytes().to_vec());
        for e in &batch {
            if let Some(i) = iteration_of(e.name.as_bytes()) {
                next = next.max(i + 1);
            }
        }
    }
    File::create(dir.join(READY_FILE)).expect("child: ready marker");
    eprintln!("child: starting at iteration {next}");

    let mut rng = rand::rng();
    let mut until_sync = rng.random_range(1..=5u32);
    for i in next.. {
        assert!(
            started.elapsed() < CHILD_LIFETIME,
            "child: never killed, giving up"
        );
        assert_eq!(
            std::os::unix::process::parent_id(),
            parent,
            "child: the parent is gone"
        );
        let mtime = 1_000_000_000 * i as i64;
        let content = engine
            .content
            .put_bytes(payload(i).as_bytes())
            .expect("child: put");
        let file = ns
            .create(
                NodeId::ROOT,
                format!("f{i}").as_bytes(),
                NewNode::file(0o644),
            )
            .expect("child: create");
        ns.write_content(file.id, content, mtime)
            .expect("child: write");
        if sets_mode(i) {
            let attr = SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            };
            ns.setattr(file.id, attr).expect("child: setattr");
        }
        if makes_dir(i) {
            let d = ns
                .create(
                    NodeId::ROOT,
                    format!("d{i}").as_bytes(),
                    NewNode::directory(0o755),
                )
                .expect("child: mkdir");
            let g = format!("g{i}");
            ns.create(NodeId::ROOT, g.as_bytes(), NewNode::file(0o644))
                .expect("child: create g");
            ns.rename(
                NodeId::ROOT,
                g.as_bytes(),
                d.id,
                b"moved",
                RenameMode::NoReplace,
            )
            .expect("child: rename");
        }
        until_sync -= 1;
        if until_sync == 0 {
            // Every change up to iteration i was committed before this sync.
            ns.sync().expect("child: sync");
            append_durably(&mut acked, i);
            until_sync = rng.random_range(1..=5);
            // Sometimes take items (a durable commit of the queue's own) and
            // never ack them: they are in flight when the child dies.
            if rng.random_bool(0.2) {
                let items = engine
                    .queue
                    .take(rng.random_range(1..=3), clock::system_ms())
                    .expect("child: take");
                for item in items {
                    append_durably(&mut taken, item.id);
                }
            }
        }
    }
}

// ----- the parent -----

/// Kills (SIGKILL) and reaps the child on every path, a failed assertion included.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Whether the child has exited on its own, with how.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.0.as_mut().expect("child present");
        child.try_wait().expect("try_wait")
    }

    /// Sends SIGKILL (`Child::kill` does on Unix) and reaps the child.
    fn kill_and_reap(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("child present");
        let _ = child.kill();
        let end = Instant::now() + REAP_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= end {
                self.0 = Some(child); // Drop tries once more.
                panic!("killed child not reaped within {REAP_DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_child(dir: &Path, output: &Path) -> ChildGuard {
    let out = File::create(output).expect("child output file");
    let err = out.try_clone().expect("clone output file");
    let child = Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "--exact",
            "child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn child");
    ChildGuard(Some(child))
}

fn child_output(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<no output: {e}>"))
}

/// What the parent saw after a crash, all of it durable (reopening committed
/// durably on top of it), so later crashes must keep it.
#[derive(Default)]
struct Seen {
    items: BTreeMap<ItemId, Vec<u8>>,
    paths: BTreeSet<Vec<u8>>,
}

fn path(name: &str) -> Vec<u8> {
    format!("/{name}").into_bytes()
}

fn read_content(engine: &Engine, what: &str, r: &ContentRef) -> Vec<u8> {
    let mut buf = vec![0u8; r.size as usize + 1];
    let n = engine
        .content
        .read_at(&r.id, 0, &mut buf)
        .unwrap_or_else(|e| panic!("{what}: content {} unreadable: {e}", r.id));
    buf.truncate(n);
    buf
}

/// Reopens the engine and checks everything (see the module docs). Returns
/// what it saw and the number of synced iterations.
fn check_after_crash(dir: &Path, round: usize, before: &Seen) -> (Seen, Option<u64>) {
    let engine = Engine::open(dir, config())
        .unwrap_or_else(|e| panic!("round {round}: reopening after the kill failed: {e}"));
    let ns = &engine.namespace;
    let tree = ns.tree().expect("tree");
    let eu = region();

    // 1. Every synced iteration is there, content included.
    let acked = read_log(&dir.join(ACKED_LOG)).into_iter().max();
    for i in acked.map_or(0..0, |a| 0..a + 1) {
        let f = format!("f{i}");
        let view = tree
            .get(&path(&f))
            .unwrap_or_else(|| panic!("round {round}: synced {f} (<= {acked:?}) is missing"));
        assert_eq!(view.meta.kind, NodeKind::File, "round {round}: {f}");
        let want = expected_ref(i);
        assert_eq!(
            view.meta.content,
            Some(want),
            "round {round}: synced {f} lost its content"
        );
        assert_eq!(view.meta.size, want.size, "round {round}: {f} size");
        let mode = if sets_mode(i) { 0o600 } else { 0o644 };
        assert_eq!(view.meta.mode, mode, "round {round}: synced {f} mode");
        if makes_dir(i) {
            let d = tree
                .get(&path(&format!("d{i}")))
                .unwrap_or_else(|| panic!("round {round}: synced d{i} is missing"));
            assert_eq!(d.meta.kind, NodeKind::Directory, "round {round}: d{i}");
            assert!(
                tree.contains_key(&path(&format!("d{i}/moved"))),
                "round {round}: synced rename of g{i} into d{i} is missing"
            );
            assert!(
                !tree.contains_key(&path(&format!("g{i}"))),
                "round {round}: synced rename of g{i} undone"
            );
        }
    }
    // Every file with content (synced or not) can be read back, and holds its payload.
    for (p, view) in &tree {
        let Some(r) = view.meta.content else { continue };
        let what = format!("round {round}: {}", String::from_utf8_lossy(p));
        let bytes = read_content(&engine, &what, &r);
        let name = p.strip_prefix(b"/").unwrap_or(p);
        let i = iteration_of(name).unwrap_or_else(|| panic!("{what}: unexpected file"));
        assert_eq!(bytes, payload(i).as_bytes(), "{what}: wrong bytes");
        assert_eq!(r, expected_ref(i), "{what}: wrong content ref");
    }

    // 2. Queue and nodes agree, both ways.
    let items = engine.queue.list(None).expect("queue list");
    assert_eq!(
        engine.queue.len().expect("queue len"),
        items.len() as u64,
        "round {round}: queue length"
    );
    let stats = engine.queue.stats(clock::system_ms()).expect("queue stats");
    assert_eq!(
        (stats.inflight, stats.retrying, stats.dead),
        (0, 0, 0),
        "round {round}: in-flight items must be pending again after reopening"
    );
    assert_eq!(
        stats.pending_by_priority.iter().sum::<u64>(),
        items.len() as u64,
        "round {round}: pending counters"
    );
    let mut events: BTreeMap<NodeId, BTreeMap<u64, ChangeEvent>> = BTreeMap::new();
    for item in &items {
        assert_eq!(item.state, ItemState::Pending, "round {round}: {item:?}");
        let event = ChangeEvent::decode(&item.payload)
            .unwrap_or_else(|e| panic!("round {round}: item {} undecodable: {e}", item.id));
        assert_eq!(item.priority, event.priority() as u8, "round {round}");
        assert_eq!(event.origin, eu, "round {round}");
        let counter = event.vclock().get(&eu);
        let node = event.node;
        if let Some(dup) = events.entry(node).or_default().insert(counter, event) {
            panic!("round {round}: two queued events for write {counter} of {node}: {dup:?}");
        }
    }
    let by_id: BTreeMap<NodeId, (&Vec<u8>, &NodeView)> =
        tree.iter().map(|(p, v)| (v.id, (p, v))).collect();
    // No queue item without its node change.
    for (node, writes) in &events {
        let Some((p, view)) = by_id.get(node) else {
            panic!("round {round}: queued events for {node}, which does not exist: {writes:?}");
        };
        let landed = view.vclock.get(&eu);
        let newest = *writes.keys().last().expect("at least one");
        assert!(
            newest <= landed,
            "round {round}: {} has write {landed} but a queued event for write {newest}",
            String::from_utf8_lossy(p)
        );
    }
    // No node change without its queue item: writes 1..=n of each node, the
    // first a creation, the last the version shown.
    for (p, view) in &tree {
        let name = String::from_utf8_lossy(p);
        let n = view.vclock.get(&eu);
        assert!(n >= 1, "round {round}: {name} has no local write");
        let writes = events
            .get(&view.id)
            .unwrap_or_else(|| panic!("round {round}: {name} has no queued event"));
        let counters: Vec<u64> = writes.keys().copied().collect();
        assert_eq!(
            counters,
            (1..=n).collect::<Vec<_>>(),
            "round {round}: {name}: queued writes vs the node's clock"
        );
        assert_eq!(writes[&1].op, ChangeOp::Create, "round {round}: {name}");
        let last = &writes[&n];
        assert_eq!(&last.version.vclock, &view.vclock, "round {round}: {name}");
        assert_eq!(last.version.meta.content, view.meta.content, "{name}");
        assert_eq!(last.version.meta.mode, view.meta.mode, "{name}");
        assert_eq!(last.version.meta.parent, view.meta.parent, "{name}");
        assert_eq!(last.version.meta.name, view.meta.name, "{name}");
    }

    // 3. Nothing durable was lost: items taken (in flight) by the child, and
    // whatever the parent saw after the previous crash.
    let now: BTreeMap<ItemId, Vec<u8>> = items.into_iter().map(|i| (i.id, i.payload)).collect();
    for id in read_log(&dir.join(TAKEN_LOG)) {
        assert!(
            now.contains_key(&id),
            "round {round}: item {id}, in flight when the child died, is lost"
        );
    }
    for (id, payload) in &before.items {
        assert_eq!(
            now.get(id),
            Some(payload),
            "round {round}: queue item {id} seen after an earlier crash changed or vanished"
        );
    }
    for p in &before.paths {
        assert!(
            tree.contains_key(p),
            "round {round}: {} seen after an earlier crash vanished",
            String::from_utf8_lossy(p)
        );
    }
    let seen = Seen {
        items: now,
        paths: tree.into_keys().collect(),
    };
    (seen, acked)
}

#[test]
fn killed_writer_keeps_every_synced_change() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("engine");
    std::fs::create_dir(&dir).expect("engine dir");
    let mut rng = rand::rng();
    let mut seen = Seen::default();
    let mut acked = None;
    let started = Instant::now();
    for round in 0..ROUNDS {
        let _ = std::fs::remove_file(dir.join(READY_FILE));
        let output = root.path().join(format!("child-{round}.log"));
        let mut child = spawn_child(&dir, &output);
        // Most rounds kill the writer in its loop; some while it opens the
        // engine (recovering from the previous kill).
        let during_open = round % 4 == 3;
        if during_open {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..50)));
        } else {
            let ready = geosync_tests::wait_until(READY_DEADLINE, || {
                dir.join(READY_FILE).exists() || child.exited().is_some()
            });
            assert!(
                ready,
                "round {round}: child not ready in {READY_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        }
        if let Some(status) = child.exited() {
            panic!(
                "round {round}: the child exited on its own ({status}):\n{}",
                child_output(&output)
            );
        }
        let status = child.kill_and_reap();
        assert!(
            !status.success(),
            "round {round}: child status {status}:\n{}",
            child_output(&output)
        );
        let (now_seen, now_acked) = check_after_crash(&dir, round, &seen);
        assert!(now_acked >= acked, "round {round}: the acked log shrank");
        eprintln!(
            "round {round}: synced up to {now_acked:?}, {} paths, {} queue items",
            now_seen.paths.len(),
            now_seen.items.len()
        );
        seen = now_seen;
        acked = now_acked;
    }
    // The test means something only if the writers got work done.
    let acked = acked.expect("no sync ever returned in the children");
    assert!(
        acked >= 20,
        "only {acked} iterations synced in {ROUNDS} rounds"
    );
    eprintln!("{ROUNDS} rounds in {:?}", started.elapsed());
}
