//! Hand-written benchmarks of the engine's hot paths (no criterion: it would
//! double the compile time of the workspace).
//!
//! Run with `cargo bench -p geosync-core --bench engine`. Every figure is the
//! median of several timed runs after a warm-up; every run checks that it did
//! the work it claims (counts, empty queue, tree size).
//!
//! Environment:
//! - `GEOSYNC_BENCH_QUICK=1` divides every N by 10 (a smoke run).
//! - `GEOSYNC_BENCH_ONLY=apply,create` runs only the named sections (`clocks`,
//!   `queue`, `apply`, `create`, `memory`), e.g. under a profiler.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) the binary exits at
//! once unless `GEOSYNC_BENCH_QUICK=1` is set, so test runs stay fast.
//!
//! The memory figures run in a child process (this binary re-executed with
//! `GEOSYNC_BENCH_CHILD=memory`), so the heap left behind by the other
//! benchmarks does not hide or inflate the growth being measured.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use geosync_core::clock::{Causality, RegionId, VectorClock};
use geosync_core::model::{ChangeEvent, NodeId, NodeKind};
use geosync_core::namespace::{ApplyOutcome, Namespace, NamespaceConfig, NewNode};
use geosync_core::queue::{QueueConfig, SyncQueue};
use geosync_core::store::content::{ContentConfig, ContentStore, DEFAULT_CHUNK_SIZE, Manifest};
use geosync_core::store::{DEFAULT_CACHE_BYTES, open_database};
use geosync_core::{Engine, EngineConfig};
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableHandle};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Timed runs per figure (the median is reported).
const RUNS: usize = 5;
/// Timed runs for the figures whose single run takes seconds.
const HEAVY_RUNS: usize = 3;

struct Settings {
    quick: bool,
}

impl Settings {
    /// `n`, or `n / 10` in a quick run.
    fn n(&self, n: usize) -> usize {
        if self.quick { (n / 10).max(1) } else { n }
    }
}

fn main() -> BenchResult {
    let quick = std::env::var("GEOSYNC_BENCH_QUICK").is_ok_and(|v| v == "1");
    let settings = Settings { quick };
    match std::env::var("GEOSYNC_BENCH_CHILD").as_deref() {
        Ok("memory") => return bench_memory(&settings, None),
        Ok("memory-small-cache") => return bench_memory(&settings, Some(SMALL_CACHE_BYTES)),
        _ => {}
    }
    if !std::env::args().any(|a| a == "--bench") && !quick {
        println!("geosync-core engine bench: skipped (run it with `cargo bench`)");
        return Ok(());
    }
    let total = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("geosync-core engine benchmarks");
    println!(
        "  cores: {cores}, mode: {}, temp dir: {}, each figure: median of {RUNS} runs \
         ({HEAVY_RUNS} for the multi-second ones) after a warm-up",
        if quick { "QUICK (N / 10)" } else { "full" },
        std::env::temp_dir().display(),
    );
    println!();

    let only = std::env::var("GEOSYNC_BENCH_ONLY").unwrap_or_default();
    let wanted = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    if wanted("clocks") {
        bench_clocks(&settings);
        println!();
    }
    if wanted("queue") {
        bench_queue(&settings)?;
        println!();
    }
    if wanted("apply") {
        bench_apply(&settings)?;
        println!();
    }
    if wanted("create") {
        bench_create(&settings)?;
        println!();
    }
    if wanted("memory") {
        run_memory_child()?;
        println!();
    }
    println!("total bench time: {:.1} s", total.elapsed().as_secs_f64());
    Ok(())
}

// ----- helpers -----

/// Runs `run` once as a warm-up (unless `warmup` is false), then `runs` times,
/// and returns the median of the durations the timed runs report.
fn median_of(
    runs: usize,
    warmup: bool,
    mut run: impl FnMut() -> BenchResult<Duration>,
) -> BenchResult<Duration> {
    if warmup {
        run()?;
    }
    let mut times = (0..runs).map(|_| run()).collect::<BenchResult<Vec<_>>>()?;
    times.sort();
    Ok(times[times.len() / 2])
}

fn per_sec(count: usize, time: Duration) -> f64 {
    count as f64 / time.as_secs_f64()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

/// Prints a throughput figure against a "at least" goal.
fn report_rate(label: &str, rate: f64, unit: &str, goal: f64) {
    println!(
        "{label}: {rate:.0} {unit} (goal >= {goal:.0}) {}",
        verdict(rate >= goal)
    );
}

fn region(name: &str) -> RegionId {
    RegionId::new(name).expect("valid region id")
}

fn engine_config(name: &str) -> EngineConfig {
    EngineConfig::new(NamespaceConfig::new(region(name)))
}

/// ~100 bytes of content unique to `i`.
fn small_content(i: usize) -> Vec<u8> {
    let mut data = vec![0u8; 100];
    data[..8].copy_from_slice(&(i as u64).to_le_bytes());
    for (j, b) in data.iter_mut().enumerate().skip(8) {
        *b = (j as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    data
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

// ----- 1. vector clocks -----

/// Two concurrent clocks over `n` regions that agree on every entry but the
/// last two (one greater on each side), so `compare` walks all of them.
fn concurrent_clocks(n: usize) -> (VectorClock, VectorClock) {
    let names: Vec<String> = if n == 3 {
        vec!["ap".into(), "eu".into(), "us".into()]
    } else {
        (0..n).map(|i| format!("region-{i:02}")).collect()
    };
    let base: Vec<(RegionId, u64)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (region(name), 1_000 + i as u64))
        .collect();
    let mut a = base.clone();
    let mut b = base;
    a[n - 2].1 += 1;
    b[n - 1].1 += 1;
    let a: VectorClock = a.into_iter().collect();
    let b: VectorClock = b.into_iter().collect();
    assert_eq!(a.compare(&b), Causality::Concurrent);
    assert_eq!(a.iter().count(), n);
    (a, b)
}

fn bench_clocks(s: &Settings) {
    println!("[1] vector clocks (concurrent clocks: compare walks every entry)");
    for n in [3, 32] {
        // About 0.1 s per timed run.
        let iters = s.n(if n == 3 { 1_000_000 } else { 100_000 });
        let (a, b) = concurrent_clocks(n);
        let compare = median_of(RUNS, true, || {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(black_box(&a).compare(black_box(&b)));
            }
            Ok(start.elapsed())
        })
        .expect("infallible");
        // Merging into a clock that already holds every region: the steady state
        // of a node's clock absorbing versions.
        let mut acc = a.joined(&b);
        let merge = median_of(RUNS, true, || {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(&mut acc).merge(black_box(&b));
            }
            Ok(start.elapsed())
        })
        .expect("infallible");
        assert_eq!(acc, a.joined(&b));
        let joined = median_of(RUNS, true, || {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(black_box(&a).joined(black_box(&b)));
            }
            Ok(start.elapsed())
        })
        .expect("infallible");
        let ns = |d: Duration| d.as_nanos() as f64 / iters as f64;
        println!(
            "vector clock compare ({n} regions): {:.1} ns/op (no goal)",
            ns(compare)
        );
        println!(
            "vector clock merge into existing clock ({n} regions): {:.1} ns/op (no goal)",
            ns(merge)
        );
        println!(
            "vector clock joined = clone + merge ({n} regions): {:.1} ns/op (no goal)",
            ns(joined)
        );
    }
}

// ----- 2. sync queue -----

fn bench_queue(s: &Settings) -> BenchResult {
    println!("[2] sync queue on a redb file: enqueue batch + take batch + ack batch");
    let total = s.n(100_000);
    let batch = 1_000.min(total);
    let payload_len = 200;
    let items: Vec<(u8, Vec<u8>)> = (0..batch)
        .map(|i| {
            let mut p = vec![0u8; payload_len];
            p[..8].copy_from_slice(&(i as u64).to_le_bytes());
            ((i % 4) as u8, p)
        })
        .collect();
    for durable in [true, false] {
        let run = |total: usize| -> BenchResult<Duration> {
            let dir = tempfile::tempdir()?;
            let db = open_database(&dir.path().join("meta.redb"))?;
            let queue = SyncQueue::open(
                db,
                QueueConfig {
                    durable_commits: durable,
                    ..QueueConfig::default()
                },
            )?;
            let now = 1_000_000;
            let mut done = 0usize;
            let start = Instant::now();
            for _ in 0..total / batch {
                let ids = queue.enqueue(&items, now)?;
                assert_eq!(ids.len(), batch);
                let taken = queue.take(batch, now)?;
                assert_eq!(taken.len(), batch);
                let ids: Vec<u64> = taken.iter().map(|item| item.id).collect();
                queue.ack(&ids)?;
                done += ids.len();
            }
            let time = start.elapsed();
            assert_eq!(done, total / batch * batch);
            assert!(queue.is_empty()?, "queue not empty after acking everything");
            Ok(time)
        };
        run(total / 10)?; // warm-up
        let time = median_of(RUNS, false, || run(total))?;
        let done = total / batch * batch;
        report_rate(
            &format!(
                "queue enqueue+take+ack ({}, batch {batch}, {done} items of {payload_len} B)",
                if durable {
                    "durable"
                } else {
                    "durable_commits: false"
                }
            ),
            per_sec(done, time),
            "items/s",
            100_000.0,
        );
    }
    Ok(())
}

// ----- 3. apply_remote -----

/// The events of `dirs` directories and `files` files created in region "eu".
fn generate_events(dirs: usize, files: usize) -> BenchResult<Vec<ChangeEvent>> {
    let tmp = tempfile::tempdir()?;
    let eu = Engine::in_memory(tmp.path(), engine_config("eu"), None)?;
    let ns = &eu.namespace;
    let dir_ids = (0..dirs)
        .map(|d| {
            ns.create(
                NodeId::ROOT,
                format!("dir-{d:03}").as_bytes(),
                NewNode::directory(0o755),
            )
            .map(|v| v.id)
        })
        .collect::<Result<Vec<_>, _>>()?;
    for i in 0..files {
        // Content refs without storing the bytes: the applying side never reads them.
        let content = Manifest::for_bytes(&small_content(i), DEFAULT_CHUNK_SIZE)?.content_ref();
        ns.create(
            dir_ids[i % dirs],
            format!("file-{i:06}.txt").as_bytes(),
            NewNode {
                content: Some(content),
                ..NewNode::file(0o644)
            },
        )?;
    }
    let events = eu
        .queue
        .take(usize::MAX, u64::MAX)?
        .iter()
        .map(|item| ChangeEvent::decode(&item.payload))
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(events.len(), dirs + files);
    Ok(events)
}

fn bench_apply(s: &Settings) -> BenchResult {
    let dirs = 100;
    let files = s.n(50_000);
    let batch = 1_000;
    println!(
        "[3] Namespace::apply_remote of {} events from region eu ({dirs} dirs, {files} files) \
         into a fresh region us, sync() every {batch} events",
        dirs + files
    );
    let gen_start = Instant::now();
    let events = generate_events(dirs, files)?;
    println!(
        "  (generated {} events in {:.1} s)",
        events.len(),
        gen_start.elapsed().as_secs_f64()
    );
    for on_disk in [true, false] {
        for batched in [false, true] {
            let mut verified = false;
            let run = |events: &[ChangeEvent], verify: bool| -> BenchResult<Duration> {
                let tmp = tempfile::tempdir()?;
                let us = if on_disk {
                    Engine::open(tmp.path(), engine_config("us"))?
                } else {
                    Engine::in_memory(tmp.path(), engine_config("us"), None)?
                };
                let ns = &us.namespace;
                let mut applied = 0usize;
                let start = Instant::now();
                if batched {
                    for chunk in events.chunks(batch) {
                        let outcomes = ns.apply_remote_batch(chunk)?;
                        applied += outcomes
                            .iter()
                            .filter(|o| matches!(o, Ok(ApplyOutcome::Applied)))
                            .count();
                        ns.sync()?;
                    }
                } else {
                    for (i, event) in events.iter().enumerate() {
                        if ns.apply_remote(event)? == ApplyOutcome::Applied {
                            applied += 1;
                        }
                        if (i + 1).is_multiple_of(batch) {
                            ns.sync()?;
                        }
                    }
                }
                ns.sync()?;
                let time = start.elapsed();
                assert_eq!(applied, events.len(), "every event must apply cleanly");
                if verify {
                    let tree = ns.tree()?;
                    let dirs_seen = tree
                        .values()
                        .filter(|v| v.meta.kind == NodeKind::Directory)
                        .count();
                    assert_eq!(tree.len(), events.len(), "tree size after apply");
                    assert_eq!(dirs_seen, dirs);
                    assert!(tree.values().all(|v| !v.in_conflict));
                }
                Ok(time)
            };
            run(&events[..events.len() / 10], false)?; // warm-up
            let time = median_of(HEAVY_RUNS, false, || {
                let verify = !verified;
                verified = true;
                run(&events, verify)
            })?;
            report_rate(
                &format!(
                    "apply_remote{} ({}, {} events)",
                    if batched {
                        format!("_batch (batches of {batch})")
                    } else {
                        " one by one".to_owned()
                    },
                    if on_disk {
                        "on-disk engine"
                    } else {
                        "in-memory engine"
                    },
                    events.len()
                ),
                per_sec(events.len(), time),
                "events/s",
                50_000.0,
            );
        }
    }
    Ok(())
}

// ----- 4. local creates -----

#[derive(Clone, Copy, PartialEq, Eq)]
enum CreateVariant {
    /// `put_bytes`, `create` of an empty file, then `write_content`.
    ThenWriteContent,
    /// `put_bytes`, then `create` carrying the content.
    ContentInCreate,
    /// `create` of an empty file only: the namespace's own cost.
    NoContent,
}

fn bench_create(s: &Settings) -> BenchResult {
    let dirs = 10;
    let sync_every = 100;
    println!(
        "[4] local creates on an on-disk engine, files spread over {dirs} dirs, \
         namespace.sync() every {sync_every} creates of each thread"
    );
    // What one durable flush costs here: the floor under any "sync every N".
    {
        let tmp = tempfile::tempdir()?;
        let engine = Engine::open(tmp.path(), engine_config("eu"))?;
        let ns = &engine.namespace;
        let mut times = Vec::new();
        for i in 0..s.n(200).max(20) {
            ns.create(
                NodeId::ROOT,
                format!("probe-{i}").as_bytes(),
                NewNode::file(0o644),
            )?;
            let start = Instant::now();
            ns.sync()?;
            times.push(start.elapsed());
        }
        times.sort();
        println!(
            "durable flush (namespace.sync after one create): median {:.2} ms, p90 {:.2} ms (info)",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() * 9 / 10].as_secs_f64() * 1e3
        );
    }
    for (variant, threads) in [
        (CreateVariant::ThenWriteContent, 1),
        (CreateVariant::ContentInCreate, 1),
        (CreateVariant::NoContent, 1),
        (CreateVariant::ContentInCreate, 4),
        (CreateVariant::NoContent, 4),
    ] {
        // GEOSYNC_BENCH_CREATE=nocontent (or content) narrows the runs, for profiling.
        let filter = std::env::var("GEOSYNC_BENCH_CREATE").unwrap_or_default();
        let is_nocontent = variant == CreateVariant::NoContent;
        if (filter == "nocontent" && !is_nocontent) || (filter == "content" && is_nocontent) {
            continue;
        }
        // The content variants fsync every file: fewer of them keeps the bench short.
        let n = s.n(if variant == CreateVariant::NoContent {
            20_000
        } else {
            5_000
        });
        let run = |n: usize| -> BenchResult<Duration> {
            let tmp = tempfile::tempdir()?;
            let engine = Engine::open(tmp.path(), engine_config("eu"))?;
            let ns = &engine.namespace;
            let dir_ids = (0..dirs)
                .map(|d| {
                    ns.create(
                        NodeId::ROOT,
                        format!("dir-{d}").as_bytes(),
                        NewNode::directory(0o755),
                    )
                    .map(|v| v.id)
                })
                .collect::<Result<Vec<_>, _>>()?;
            ns.sync()?;
            let contents: Vec<Vec<u8>> = if variant == CreateVariant::NoContent {
                Vec::new()
            } else {
                (0..n).map(small_content).collect()
            };
            let start = Instant::now();
            // Each worker creates every `threads`-th file; concurrent creates
            // share commits (group commit), and so do concurrent syncs.
            let create_one = |i: usize| -> BenchResult {
                let parent = dir_ids[i % dirs];
                let name = format!("file-{i:06}.txt");
                match variant {
                    CreateVariant::ThenWriteContent => {
                        let content = engine.content.put_bytes(&contents[i])?;
                        let node = ns.create(parent, name.as_bytes(), NewNode::file(0o644))?;
                        ns.write_content(node.id, content, now_ns())?;
                    }
                    CreateVariant::ContentInCreate => {
                        let content = engine.content.put_bytes(&contents[i])?;
                        ns.create(
                            parent,
                            name.as_bytes(),
                            NewNode {
                                content: Some(content),
                                ..NewNode::file(0o644)
                            },
                        )?;
                    }
                    CreateVariant::NoContent => {
                        ns.create(parent, name.as_bytes(), NewNode::file(0o644))?;
                    }
                }
                if (i / threads + 1).is_multiple_of(sync_every) {
                    ns.sync()?;
                }
                Ok(())
            };
            std::thread::scope(|scope| -> BenchResult {
                let workers: Vec<_> = (0..threads)
                    .map(|t| {
                        let create_one = &create_one;
                        scope.spawn(move || -> Result<(), String> {
                            (t..n)
                                .step_by(threads)
                                .try_for_each(|i| create_one(i).map_err(|e| e.to_string()))
                        })
                    })
                    .collect();
                for w in workers {
                    w.join().map_err(|_| "create worker panicked")??;
                }
                Ok(())
            })?;
            ns.sync()?;
            let time = start.elapsed();
            // Every create (and write) queued one event; every file is listed.
            let events_per_file = if variant == CreateVariant::ThenWriteContent {
                2
            } else {
                1
            };
            assert_eq!(engine.queue.len()?, (n * events_per_file + dirs) as u64);
            let listed: usize = dir_ids
                .iter()
                .map(|d| ns.readdir(*d, None, usize::MAX).map(|e| e.len()))
                .sum::<Result<usize, _>>()?;
            assert_eq!(listed, n);
            if threads > 1 {
                println!(
                    "  ({threads} threads: {} changes in {} commits)",
                    n * events_per_file + dirs,
                    ns.commits()
                );
            }
            Ok(time)
        };
        run(n / 10)?; // warm-up
        let time = median_of(HEAVY_RUNS, false, || run(n))?;
        let label = match variant {
            CreateVariant::ThenWriteContent => {
                "create + write_content (content.put_bytes 100 B, sync every 100)"
            }
            CreateVariant::ContentInCreate => {
                "create with NewNode.content (content.put_bytes 100 B, sync every 100)"
            }
            CreateVariant::NoContent => {
                "create of empty files, no content store (reference, sync every 100)"
            }
        };
        report_rate(
            &format!("{label}, {threads} thread(s), {n} files"),
            per_sec(n, time),
            "creates/s",
            20_000.0,
        );
    }
    Ok(())
}

// ----- 5. memory per node -----

/// The redb cache of the second memory child: small enough that what it adds
/// to the RSS is negligible, so its growth is the memory outside redb's cache.
const SMALL_CACHE_BYTES: usize = 1 << 20;

fn run_memory_child() -> BenchResult {
    println!("[5] memory per namespace node (each measurement in a fresh child process)");
    let mut results = BTreeMap::new();
    for mode in ["memory", "memory-small-cache"] {
        let output = Command::new(std::env::current_exe()?)
            .arg("--bench")
            .env("GEOSYNC_BENCH_CHILD", mode)
            .output()?;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            match line.strip_prefix('@').and_then(|kv| kv.split_once('=')) {
                Some((key, value)) => {
                    results.insert(format!("{mode}.{key}"), value.parse::<f64>()?);
                }
                None => println!("{line}"),
            }
        }
        if !output.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&output.stderr));
            return Err(format!("memory bench child {mode} failed: {}", output.status).into());
        }
    }
    let full = results["memory.rss_per_node"];
    let small = results["memory-small-cache.rss_per_node"];
    println!(
        "memory (b) redb page cache share of (a): ~{:.0} bytes/node, the rest: {small:.0} \
         bytes/node (= RSS growth of the same workload with redb's cache set to {} MiB; \
         Database::cache_stats() reports zeros because redb is built without its \
         `cache_metrics` feature)",
        full - small,
        SMALL_CACHE_BYTES >> 20
    );
    Ok(())
}

/// What `Engine::open` builds, with a chosen redb cache size.
fn open_engine_with_cache(dir: &Path, cache_bytes: usize) -> BenchResult<Engine> {
    let db = Arc::new(
        Database::builder()
            .set_cache_size(cache_bytes)
            .create(dir.join("meta.redb"))?,
    );
    let content = Arc::new(ContentStore::open(
        db.clone(),
        &dir.join("content"),
        ContentConfig::default(),
    )?);
    let queue = Arc::new(SyncQueue::open(db.clone(), QueueConfig::default())?);
    let namespace = Arc::new(Namespace::open(
        db.clone(),
        NamespaceConfig::new(region("eu")),
        queue.clone(),
        content.clone(),
    )?);
    Ok(Engine {
        db,
        content,
        queue,
        namespace,
        dir: dir.to_path_buf(),
    })
}

/// The resident set size of this process, in bytes.
fn rss_bytes() -> BenchResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()?;
    Ok(kb * 1024)
}

/// Returns freed heap to the kernel, so RSS counts live memory, not malloc's free lists.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of glibc's allocator; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Creates the nodes and measures; with `cache_bytes`, only the RSS growth
/// (reported to the parent) of an engine whose redb cache is that small.
fn bench_memory(s: &Settings, cache_bytes: Option<usize>) -> BenchResult {
    let dirs = s.n(1_000);
    let per_dir = 199;
    let nodes = dirs + dirs * per_dir;
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("meta.redb");
    let engine = match cache_bytes {
        None => Engine::open(tmp.path(), engine_config("eu"))?,
        Some(bytes) => open_engine_with_cache(tmp.path(), bytes)?,
    };
    let ns = Arc::clone(&engine.namespace);
    ns.sync()?;
    trim_heap();
    let rss_before = rss_bytes()?;

    let start = Instant::now();
    let mut created = 0usize;
    for d in 0..dirs {
        let dir = ns
            .create(
                NodeId::ROOT,
                format!("dir-{d:04}").as_bytes(),
                NewNode::directory(0o755),
            )?
            .id;
        created += 1;
        for f in 0..per_dir {
            ns.create(
                dir,
                format!("file-{f:03}.txt").as_bytes(),
                NewNode::file(0o644),
            )?;
            created += 1;
            if created.is_multiple_of(1_000) {
                ns.sync()?;
            }
        }
    }
    ns.sync()?;
    let create_time = start.elapsed();
    assert_eq!(created, nodes);
    trim_heap();
    let rss_full_queue = rss_bytes()?;
    let file_full_queue = std::fs::metadata(&path)?.len();

    // The events would normally have been pushed: drain the queue.
    let mut drained = 0usize;
    loop {
        let taken = engine.queue.take(10_000, u64::MAX)?;
        if taken.is_empty() {
            break;
        }
        let ids: Vec<u64> = taken.iter().map(|item| item.id).collect();
        drop(taken);
        engine.queue.ack(&ids)?;
        drained += ids.len();
    }
    ns.sync()?;
    assert_eq!(drained, nodes);
    assert!(engine.queue.is_empty()?);
    trim_heap();
    let rss_after = rss_bytes()?;
    let file_after = std::fs::metadata(&path)?.len();

    let per = |bytes: u64| bytes as f64 / nodes as f64;
    let growth = rss_after.saturating_sub(rss_before);
    let cache_label = match cache_bytes {
        None => format!("default redb cache {} MiB", DEFAULT_CACHE_BYTES >> 20),
        Some(bytes) => format!("redb cache {} MiB", bytes >> 20),
    };
    println!(
        "  ({cache_label}: {nodes} nodes = {dirs} dirs x (1 + {per_dir} files) created in \
         {:.1} s, sync() every 1000; RSS {:.1} MiB before, {:.1} MiB after creating, {:.1} MiB \
         after draining the queue)",
        create_time.as_secs_f64(),
        rss_before as f64 / 1048576.0,
        rss_full_queue as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
    );
    println!("@rss_per_node={}", per(growth));
    if cache_bytes.is_none() {
        let goal = 300.0;
        let resident = per(growth);
        println!(
            "memory (a) process RSS growth per node, queue drained ({nodes} nodes; includes \
             redb's page cache, capped at DEFAULT_CACHE_BYTES = {} MiB = {:.0} B/node at this \
             N): {resident:.0} bytes/node (goal <= {goal:.0}) {}",
            DEFAULT_CACHE_BYTES >> 20,
            per(DEFAULT_CACHE_BYTES as u64),
            verdict(resident <= goal)
        );
        println!(
            "memory (a') process RSS growth per node with the {nodes} events still queued: \
             {:.0} bytes/node (info)",
            per(rss_full_queue.saturating_sub(rss_before))
        );
        let stats = engine.db.cache_stats();
        if stats.used_bytes() > 0 {
            println!(
                "memory (b0) redb cache in use (Database::cache_stats): {} bytes = {:.0} \
                 bytes/node (hits {}, misses {}, evictions {})",
                stats.used_bytes(),
                per(stats.used_bytes() as u64),
                stats.read_hits(),
                stats.read_misses(),
                stats.evictions()
            );
        }
        println!(
            "memory (c) on disk: meta.redb {:.0} bytes/node after draining the queue \
             ({:.0} bytes/node with the events queued; redb does not shrink the file)",
            per(file_after),
            per(file_full_queue)
        );
        print_table_stats(&engine, nodes)?;
    }

    // Sanity: every node is listed.
    let mut listed = 0usize;
    let mut after: Option<Vec<u8>> = None;
    let mut dir_ids = Vec::new();
    loop {
        let batch = ns.readdir(NodeId::ROOT, after.as_deref(), 1_024)?;
        let Some(last) = batch.last() else { break };
        after = Some(last.name.as_bytes().to_vec());
        dir_ids.extend(batch.iter().map(|e| e.node));
    }
    listed += dir_ids.len();
    for dir in dir_ids {
        listed += ns.readdir(dir, None, usize::MAX)?.len();
    }
    assert_eq!(listed, nodes, "every created node is listed");
    Ok(())
}

/// The namespace tables' share of the file, from redb's own table statistics.
fn print_table_stats(engine: &Engine, nodes: usize) -> BenchResult {
    let page_size = {
        let txn = engine.db.begin_write()?;
        let size = txn.stats()?.page_size() as u64;
        txn.abort()?;
        size
    };
    let txn = engine.db.begin_read()?;
    let mut rows: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for handle in txn.list_tables()? {
        let name = handle.name().to_owned();
        if !name.starts_with("ns_") {
            continue;
        }
        let table = txn.open_untyped_table(handle)?;
        let stats = table.stats()?;
        rows.insert(
            name,
            (
                table.len()?,
                stats.stored_bytes(),
                (stats.leaf_pages() + stats.branch_pages()) * page_size,
            ),
        );
    }
    let per = |bytes: u64| bytes as f64 / nodes as f64;
    let stored: u64 = rows.values().map(|r| r.1).sum();
    let paged: u64 = rows.values().map(|r| r.2).sum();
    let detail: Vec<String> = rows
        .iter()
        .filter(|(_, r)| r.0 > 0)
        .map(|(name, r)| format!("{name} {} rows {:.0}/{:.0}", r.0, per(r.1), per(r.2)))
        .collect();
    println!(
        "memory (c') namespace tables (ns_*): {:.0} bytes/node of keys+values, {:.0} bytes/node \
         of btree pages [{}] (info)",
        per(stored),
        per(paged),
        detail.join(", ")
    );
    Ok(())
}
