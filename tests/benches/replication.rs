//! Hand-written benchmarks of replication through a whole cluster: a
//! coordinator and three regions (eu, us, ap) in this process, talking gRPC
//! on loopback, each in its own temporary directory (the `Cluster` harness).
//! No criterion, and never a timed test: the figures are printed, one line
//! each, with their goal.
//!
//! Run with `cargo bench -p geosync-tests --bench replication`. Figures:
//!
//! 1. sync lag, commit in eu -> entry visible in us, at 100 and 1,000 creates/s;
//! 2. bulk copy replicated with `eager` (many 64 KiB files and one big file),
//!    next to `rsync -a --whole-file` of the same tree when rsync is installed;
//! 3. coordinator ingest through gRPC `Push` (batches of 256, 1 and 2 clients)
//!    and how long until every region applied the head;
//! 4. offline backlog: a stopped region restarts and catches up;
//! 5. cold read of an `on-demand` file through the Files gRPC `Read` stream.
//!
//! Every run checks that it did the work it claims (counts, heads, hashes).
//!
//! Environment:
//! - `GEOSYNC_BENCH_QUICK=1` divides sizes and durations by ~10 (a smoke run).
//! - `GEOSYNC_BENCH_ONLY=lag,bulk` runs only the named sections (`lag`, `bulk`,
//!   `ingest`, `backlog`, `read`).
//!
//! Without a `--bench` argument (`cargo test --all-targets`) the binary prints
//! "skipped" and exits at once.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use geosync_core::config::{StrategyName, SyncConfig, SyncStrategy};
use geosync_core::model::{ChangeEvent, NodeId};
use geosync_core::namespace::{NamespaceConfig, NewNode, Notification, NotificationKind};
use geosync_core::store::content::{ContentId, ContentRef, DEFAULT_CHUNK_SIZE};
use geosync_core::{Engine, EngineConfig};
use geosync_proto::v1;
use geosync_tests::Cluster;
use tokio::sync::broadcast::error::RecvError;

type BenchError = Box<dyn std::error::Error + Send + Sync>;
type BenchResult<T = ()> = Result<T, BenchError>;

/// The regions of every cluster, in start order.
const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// How long any wait may take before the bench gives up on it.
const DEADLINE: Duration = Duration::from_secs(120);

/// Events per `Push` in the ingest figure.
const PUSH_BATCH: usize = 256;

/// Bytes per megabyte in the MB/s figures.
const MB: f64 = 1e6;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

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
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "geosync replication bench: skipped (run it with \
             `cargo bench -p geosync-tests --bench replication`)"
        );
        return Ok(());
    }
    let quick = std::env::var("GEOSYNC_BENCH_QUICK").is_ok_and(|v| v == "1");
    let settings = Settings { quick };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let workers = runtime.metrics().num_workers();
    runtime.block_on(run(&settings, workers))
}

async fn run(s: &Settings, workers: usize) -> BenchResult {
    let total = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("geosync replication benchmarks");
    println!(
        "  cores: {cores}, mode: {}, tokio workers: {workers}; every figure: a coordinator and \
         regions {} in this process on loopback (gRPC), temp dirs under {}, chunk size {} MiB",
        if s.quick {
            "QUICK (sizes / 10)"
        } else {
            "full"
        },
        REGIONS.join(", "),
        std::env::temp_dir().display(),
        DEFAULT_CHUNK_SIZE as usize / MIB,
    );
    println!();
    let only = std::env::var("GEOSYNC_BENCH_ONLY").unwrap_or_default();
    let wanted = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    if wanted("lag") {
        bench_lag(s).await?;
        println!();
    }
    if wanted("bulk") {
        bench_bulk(s).await?;
        println!();
    }
    if wanted("ingest") {
        bench_ingest(s).await?;
        println!();
    }
    if wanted("backlog") {
        bench_backlog(s).await?;
        println!();
    }
    if wanted("read") {
        bench_cold_read(s).await?;
        println!();
    }
    println!("total bench time: {:.1} s", total.elapsed().as_secs_f64());
    Ok(())
}

// ----- helpers -----

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

/// The CPU time (user + system, every thread) this process used so far.
fn cpu_time() -> Duration {
    // SAFETY: `rusage` is plain data (all zeroes is a valid value), and
    // getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// How busy the machine's cores were (on this process's behalf) over a window.
struct CpuMeter {
    cpu: Duration,
    wall: Instant,
}

impl CpuMeter {
    fn start() -> CpuMeter {
        CpuMeter {
            cpu: cpu_time(),
            wall: Instant::now(),
        }
    }

    /// "CPU 1.6 of 2 cores busy" since `start`.
    fn busy(&self) -> String {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = cpu_time().saturating_sub(self.cpu).as_secs_f64();
        let wall = self.wall.elapsed().as_secs_f64();
        format!("CPU {:.1} of {cores} cores busy", cpu / wall)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MB / d.as_secs_f64()
}

/// A cluster of [`REGIONS`] with the production chunk size and one content
/// sync strategy for every path, settled.
async fn start_cluster(strategy: SyncStrategy) -> BenchResult<Cluster> {
    let mut cluster = Cluster::start(&[], StrategyName::Lww).await;
    cluster.chunk_size = DEFAULT_CHUNK_SIZE;
    cluster.sync = SyncConfig {
        default: strategy,
        rules: Vec::new(),
    };
    for r in REGIONS {
        cluster.start_region(r).await;
    }
    cluster.converged().await?;
    Ok(cluster)
}

fn head(cluster: &Cluster) -> u64 {
    cluster
        .coordinator
        .as_ref()
        .expect("the coordinator runs")
        .coordinator()
        .head()
}

fn applied(cluster: &Cluster, region: &str) -> u64 {
    cluster
        .region(region)
        .status()
        .applied
        .load(Ordering::SeqCst)
}

/// Polls `condition` every millisecond until it holds (returns when it was
/// first seen holding) or [`DEADLINE`] passes (an error naming `what`).
async fn poll(what: &str, mut condition: impl FnMut() -> bool) -> BenchResult<Instant> {
    let end = Instant::now() + DEADLINE;
    loop {
        if condition() {
            return Ok(Instant::now());
        }
        if Instant::now() >= end {
            return Err(format!("{what}: not within {DEADLINE:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs blocking work (engine calls) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> BenchResult<T> + Send + 'static,
) -> BenchResult<T> {
    tokio::task::spawn_blocking(f).await?
}

/// ~100 bytes of content unique to `(seed, i)`.
fn small_content(seed: u64, i: usize) -> Vec<u8> {
    let mut data = vec![0u8; 104];
    pattern(seed, i as u64 * 13, &mut data);
    data
}

/// Deterministic incompressible bytes: word `w` of the stream `seed` is
/// `splitmix64(seed, w)`; `out` starts at word `first_word` (its length is a
/// multiple of 8).
fn pattern(seed: u64, first_word: u64, out: &mut [u8]) {
    for (k, word) in out.chunks_exact_mut(8).enumerate() {
        let mut z = (seed << 40 ^ (first_word + k as u64)).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

/// Writes `len` bytes of `pattern(seed, ..)` into a new staging file of
/// `engine`'s content store; returns its path and the bytes' BLAKE3 hash.
fn stage_big_file(
    engine: &Engine,
    seed: u64,
    len: usize,
) -> BenchResult<(std::path::PathBuf, blake3::Hash)> {
    let (path, file) = engine.content.staging_file()?;
    let mut out = std::io::BufWriter::with_capacity(MIB, file);
    let mut hasher = blake3::Hasher::new();
    let mut block = vec![0u8; 4 * MIB];
    let mut at = 0usize;
    while at < len {
        let n = (len - at).min(block.len());
        pattern(seed, (at / 8) as u64, &mut block[..n]);
        out.write_all(&block[..n])?;
        hasher.update(&block[..n]);
        at += n;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((path, hasher.finalize()))
}

fn file_with(content: ContentRef) -> NewNode {
    NewNode {
        content: Some(content),
        ..NewNode::file(0o644)
    }
}

/// The `p`-th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ----- 1. sync lag -----

async fn bench_lag(s: &Settings) -> BenchResult {
    println!(
        "[1] sync lag: a writer in eu creates 100 B files at a paced rate (content.put_bytes, \
         then namespace.create with the content; commit time = when create returns); a watcher \
         on us's namespace notifications records when each entry appears; sync strategy lazy \
         (the default: us also fetches each file's content in the background)"
    );
    let cluster = start_cluster(SyncStrategy::Lazy).await?;
    for (rate, secs) in [(100usize, 5usize), (1_000, 3)] {
        let secs = if s.quick { 1 } else { secs };
        lag_run(&cluster, rate, rate * secs).await?;
    }
    cluster.converged().await?;
    cluster.shutdown().await;
    Ok(())
}

async fn lag_run(cluster: &Cluster, rate: usize, total: usize) -> BenchResult {
    let eu = cluster.region("eu").engine().clone();
    let us = cluster.region("us").engine().clone();
    let dir = eu
        .namespace
        .create(
            NodeId::ROOT,
            format!("lag-{rate}").as_bytes(),
            NewNode::directory(0o755),
        )?
        .id;
    cluster.converged().await?;

    let mut notes = us.namespace.subscribe();
    let watch_for = Duration::from_secs_f64(total as f64 / rate as f64) + Duration::from_secs(30);
    let watcher = tokio::spawn(async move {
        let end = tokio::time::Instant::now() + watch_for;
        let mut seen: HashMap<Vec<u8>, Instant> = HashMap::with_capacity(total);
        let mut lagged = 0u64;
        while seen.len() < total {
            match tokio::time::timeout_at(end, notes.recv()).await {
                Err(_) | Ok(Err(RecvError::Closed)) => break,
                Ok(Err(RecvError::Lagged(n))) => lagged += n,
                Ok(Ok(Notification {
                    kind: NotificationKind::EntryAdded { parent, name },
                    ..
                })) if parent == dir => {
                    let now = Instant::now();
                    seen.entry(name.as_bytes().to_vec()).or_insert(now);
                }
                Ok(Ok(_)) => {}
            }
        }
        (seen, lagged)
    });

    let writer = eu.clone();
    let meter = CpuMeter::start();
    let (commits, wrote_in) = blocking(move || {
        let mut commits = Vec::with_capacity(total);
        let start = Instant::now();
        for i in 0..total {
            let due = start + Duration::from_nanos((i as u64 * 1_000_000_000) / rate as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let name = format!("f-{i:06}");
            let content = writer.content.put_bytes(&small_content(rate as u64, i))?;
            writer
                .namespace
                .create(dir, name.as_bytes(), file_with(content))?;
            commits.push((name.into_bytes(), Instant::now()));
        }
        Ok((commits, start.elapsed()))
    })
    .await?;
    let busy = meter.busy();
    let (seen, lagged) = watcher.await?;

    let mut lags: Vec<f64> = commits
        .iter()
        .filter_map(|(name, at)| seen.get(name).map(|s| ms(s.saturating_duration_since(*at))))
        .collect();
    lags.sort_by(f64::total_cmp);
    let arrived = lags.len();
    let (p50, p99, max) = (
        percentile(&lags, 50.0),
        percentile(&lags, 99.0),
        lags.last().copied().unwrap_or(f64::NAN),
    );
    let goal = if rate == 100 {
        let ok = arrived == total && p50 <= 25.0 && p99 <= 100.0;
        format!("(goal p50 <= 25 ms, p99 <= 100 ms) {}", verdict(ok))
    } else {
        format!(
            "(no goal at this rate) {}",
            if arrived == total {
                "info"
            } else {
                "MISSED (not all arrived)"
            }
        )
    };
    println!(
        "sync lag at {rate} ev/s (eu -> us): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms, \
         {arrived}/{total} arrived {goal}"
    );
    println!(
        "  (writer: {total} creates in {:.2} s = {:.0} ev/s achieved; notifications lost to \
         broadcast lag: {lagged}; {busy} while writing)",
        wrote_in.as_secs_f64(),
        total as f64 / wrote_in.as_secs_f64()
    );
    // Sanity: us lists every file.
    cluster.converged().await?;
    let listed = us.namespace.readdir(dir, None, usize::MAX)?.len();
    assert_eq!(listed, total, "us lists every file written in eu");
    Ok(())
}

// ----- 2. bulk copy, eager -----

async fn bench_bulk(s: &Settings) -> BenchResult {
    let small_n = s.n(200);
    let small_len = 64 * KIB;
    let big_len = if s.quick { 20 * MIB } else { 200 * MIB };
    let total_bytes = (small_n * small_len + big_len) as u64;
    println!(
        "[2] bulk copy replicated with eager: {small_n} files x 64 KiB + one {} MiB file written \
         in eu (put_bytes / put_file from a staging file, then create), timed from the first \
         write in eu until us holds every content completely ({:.1} MB in all)",
        big_len / MIB,
        total_bytes as f64 / MB
    );
    let cluster = start_cluster(SyncStrategy::Eager).await?;
    let eu = cluster.region("eu").engine().clone();
    let us = cluster.region("us").engine().clone();
    let ap = cluster.region("ap").engine().clone();
    let smalls: Vec<Vec<u8>> = (0..small_n)
        .map(|i| {
            let mut data = vec![0u8; small_len];
            pattern(1_000 + i as u64, 0, &mut data);
            data
        })
        .collect();
    let staging = eu.clone();
    let (big_path, big_hash) = blocking(move || stage_big_file(&staging, 2, big_len)).await?;

    let writer = eu.clone();
    let meter = CpuMeter::start();
    let start = Instant::now();
    let refs: Vec<ContentRef> = blocking(move || {
        let ns = &writer.namespace;
        let dir = ns
            .create(NodeId::ROOT, b"bulk", NewNode::directory(0o755))?
            .id;
        let mut refs = Vec::with_capacity(smalls.len() + 1);
        for (i, data) in smalls.iter().enumerate() {
            let content = writer.content.put_bytes(data)?;
            ns.create(
                dir,
                format!("small-{i:04}.bin").as_bytes(),
                file_with(content),
            )?;
            refs.push(content);
        }
        let content = writer.content.put_file(&big_path)?;
        ns.create(dir, b"big.bin", file_with(content))?;
        refs.push(content);
        Ok(refs)
    })
    .await?;
    let committed = start.elapsed();
    assert_eq!(refs.last().map(|c| c.size), Some(big_len as u64));

    // Both replicas are watched at once; each set shrinks as contents complete.
    let mut us_left: HashSet<ContentId> = refs.iter().map(|c| c.id).collect();
    let mut ap_left = us_left.clone();
    let big = refs[refs.len() - 1];
    let (mut us_done, mut ap_done, mut us_smalls_done) = (None, None, None);
    let mut busy = String::new();
    poll("us and ap hold every content", || {
        us_left.retain(|id| !us.content.is_complete(id).unwrap_or(false));
        ap_left.retain(|id| !ap.content.is_complete(id).unwrap_or(false));
        if us_smalls_done.is_none() && us_left.iter().all(|id| *id == big.id) {
            us_smalls_done = Some(start.elapsed());
        }
        if us_left.is_empty() && us_done.is_none() {
            us_done = Some(start.elapsed());
            busy = meter.busy();
        }
        if ap_left.is_empty() && ap_done.is_none() {
            ap_done = Some(start.elapsed());
        }
        us_done.is_some() && ap_done.is_some()
    })
    .await?;
    let (us_done, ap_done, us_smalls_done) = (
        us_done.unwrap_or_default(),
        ap_done.unwrap_or_default(),
        us_smalls_done.unwrap_or_default(),
    );
    let rate = mb_per_s(total_bytes, us_done);
    println!(
        "bulk copy eager (eu -> us, {} files, {:.1} MB): {rate:.0} MB/s in {:.2} s (goal >= 300 \
         MB/s) {}",
        small_n + 1,
        total_bytes as f64 / MB,
        us_done.as_secs_f64(),
        verdict(rate >= 300.0)
    );
    println!(
        "  (eu ingest incl. hashing done at {:.2} s; us had the small files at {:.2} s and \
         everything at {:.2} s ({busy}); ap complete at {:.2} s = {:.0} MB/s; both replicas \
         fetch from eu at once)",
        committed.as_secs_f64(),
        us_smalls_done.as_secs_f64(),
        us_done.as_secs_f64(),
        ap_done.as_secs_f64(),
        mb_per_s(total_bytes, ap_done)
    );

    // Sanity: us's copy of the big file has the right bytes.
    let reader = us.clone();
    let got = blocking(move || {
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 4 * MIB];
        let mut at = 0u64;
        while at < big.size {
            let n = reader.content.read_at(&big.id, at, &mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(hasher.finalize())
    })
    .await?;
    assert_eq!(got, big_hash, "us holds the big file's bytes");
    cluster.shutdown().await;

    rsync_comparison(small_n, small_len, big_len, total_bytes, rate).await
}

/// The same tree copied by `rsync -a --whole-file` between two local
/// directories (when rsync is installed), and by a plain file copy.
async fn rsync_comparison(
    small_n: usize,
    small_len: usize,
    big_len: usize,
    total_bytes: u64,
    geosync_rate: f64,
) -> BenchResult {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src");
    blocking({
        let src = src.clone();
        move || {
            std::fs::create_dir_all(&src)?;
            let mut data = vec![0u8; small_len];
            for i in 0..small_n {
                pattern(1_000 + i as u64, 0, &mut data);
                std::fs::write(src.join(format!("small-{i:04}.bin")), &data)?;
            }
            let mut big =
                std::io::BufWriter::with_capacity(MIB, std::fs::File::create(src.join("big.bin"))?);
            let mut block = vec![0u8; 4 * MIB];
            let mut at = 0;
            while at < big_len {
                let n = (big_len - at).min(block.len());
                pattern(2, (at / 8) as u64, &mut block[..n]);
                big.write_all(&block[..n])?;
                at += n;
            }
            big.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(())
        }
    })
    .await?;
    let rsync = Command::new("rsync").arg("--version").output();
    match rsync {
        Ok(out) if out.status.success() => {
            let dst = dir.path().join("rsync-dst");
            let start = Instant::now();
            let status = Command::new("rsync")
                .arg("-a")
                .arg("--whole-file")
                .arg(format!("{}/", src.display()))
                .arg(format!("{}/", dst.display()))
                .status()?;
            let took = start.elapsed();
            assert!(status.success(), "rsync failed: {status}");
            assert_eq!(
                std::fs::metadata(dst.join("big.bin"))?.len(),
                big_len as u64
            );
            println!(
                "rsync -a --whole-file of the same tree (local dir -> dir, no network, no \
                 daemon): {:.0} MB/s in {:.2} s, vs geosync eager {geosync_rate:.0} MB/s (info)",
                mb_per_s(total_bytes, took),
                took.as_secs_f64()
            );
        }
        _ => println!(
            "rsync -a comparison: rsync is not installed on this machine (the bench installs \
             nothing); skipped"
        ),
    }
    let dst = dir.path().join("copy-dst");
    let start = Instant::now();
    blocking({
        let (src, dst) = (src.clone(), dst.clone());
        move || {
            copy_tree(&src, &dst)?;
            Ok(())
        }
    })
    .await?;
    let took = start.elapsed();
    println!(
        "plain local copy of the same tree (std::fs::copy per file + fsync, same disk, source in \
         the page cache): {:.0} MB/s in {:.2} s, vs geosync eager {geosync_rate:.0} MB/s \
         (reference)",
        mb_per_s(total_bytes, took),
        took.as_secs_f64()
    );
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> BenchResult {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        std::fs::copy(entry.path(), &to)?;
        std::fs::File::open(&to)?.sync_all()?;
    }
    Ok(())
}

// ----- 3. coordinator ingest -----

/// The events of `n` empty files created in root by a scratch engine of
/// region eu, as pushed on the wire.
fn generate_events(engine: &Engine, prefix: &str, n: usize) -> BenchResult<Vec<v1::ChangeEvent>> {
    for i in 0..n {
        engine.namespace.create(
            NodeId::ROOT,
            format!("{prefix}-{i:06}").as_bytes(),
            NewNode::file(0o644),
        )?;
    }
    let items = engine.queue.take(usize::MAX, u64::MAX)?;
    let events = items
        .iter()
        .map(|i| ChangeEvent::decode(&i.payload).map(|e| v1::ChangeEvent::from(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    engine.queue.ack(&ids)?;
    assert_eq!(events.len(), n);
    Ok(events)
}

/// Round trips of a tiny unary call (`GetSyncStatus`) and of an empty `Push`
/// on one connection: the fixed cost every push pays besides its work.
async fn rpc_round_trips(url: &str) -> BenchResult {
    let mut client = v1::coordinator_client::CoordinatorClient::connect(url.to_owned()).await?;
    let mut status = Vec::new();
    let mut push = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        client
            .get_sync_status(v1::SyncStatusRequest {
                region: "eu".into(),
            })
            .await?;
        status.push(ms(t.elapsed()));
        let t = Instant::now();
        client
            .push(v1::PushRequest {
                region: "eu".into(),
                events: Vec::new(),
            })
            .await?;
        push.push(ms(t.elapsed()));
    }
    status.sort_by(f64::total_cmp);
    push.sort_by(f64::total_cmp);
    println!(
        "  (round trip on one connection: GetSyncStatus p50 {:.2} ms, max {:.2} ms; empty Push \
         p50 {:.2} ms, max {:.2} ms)",
        percentile(&status, 50.0),
        percentile(&status, 100.0),
        percentile(&push, 50.0),
        percentile(&push, 100.0)
    );
    Ok(())
}

async fn bench_ingest(s: &Settings) -> BenchResult {
    let n = s.n(100_000);
    println!(
        "[3] coordinator ingest: {n} pre-generated create events (empty files, from a scratch \
         engine of region eu) pushed through the coordinator's gRPC Push in batches of \
         {PUSH_BATCH}, all three regions subscribed"
    );
    let cluster = start_cluster(SyncStrategy::Lazy).await?;
    let scratch_dir = tempfile::tempdir()?;
    let scratch_path = scratch_dir.path().to_path_buf();
    let scratch = Arc::new(
        blocking(move || {
            let region = geosync_core::clock::RegionId::new("eu")?;
            Ok(Engine::in_memory(
                &scratch_path,
                EngineConfig::new(NamespaceConfig::new(region)),
                None,
            )?)
        })
        .await?,
    );
    let url = format!("http://{}", cluster.coordinator_addr);
    rpc_round_trips(&url).await?;
    for clients in [1usize, 2] {
        let gen_start = Instant::now();
        let engine = scratch.clone();
        let prefix = format!("ingest{clients}");
        let events = blocking(move || generate_events(&engine, &prefix, n)).await?;
        let generated = gen_start.elapsed();
        let before = head(&cluster);

        let mut lanes: Vec<Vec<Vec<v1::ChangeEvent>>> = vec![Vec::new(); clients];
        for (i, batch) in events.chunks(PUSH_BATCH).enumerate() {
            lanes[i % clients].push(batch.to_vec());
        }
        drop(events);
        let mut connections = Vec::with_capacity(clients);
        for _ in 0..clients {
            let client = v1::coordinator_client::CoordinatorClient::connect(url.clone())
                .await?
                .max_encoding_message_size(geosync_proto::MAX_MESSAGE_BYTES)
                .max_decoding_message_size(geosync_proto::MAX_MESSAGE_BYTES);
            connections.push(client);
        }
        let meter = CpuMeter::start();
        let start = Instant::now();
        let tasks: Vec<_> = lanes
            .into_iter()
            .zip(connections)
            .map(|(lane, mut client)| {
                tokio::spawn(async move {
                    let mut accepted = 0usize;
                    let mut latencies = Vec::with_capacity(lane.len());
                    for events in lane {
                        let t = Instant::now();
                        let reply = client
                            .push(v1::PushRequest {
                                region: "eu".into(),
                                events,
                            })
                            .await?
                            .into_inner();
                        latencies.push(ms(t.elapsed()));
                        accepted += reply
                            .outcomes
                            .iter()
                            .filter(|o| o.status() == v1::event_outcome::Status::Accepted)
                            .count();
                    }
                    Ok::<_, tonic::Status>((accepted, latencies))
                })
            })
            .collect();
        let mut accepted = 0;
        let mut latencies = Vec::new();
        for task in tasks {
            let (a, l) = task.await??;
            accepted += a;
            latencies.extend(l);
        }
        latencies.sort_by(f64::total_cmp);
        let pushed = start.elapsed();
        let busy = meter.busy();
        let head_now = head(&cluster);
        assert_eq!(accepted, n, "every pushed event is accepted");
        assert_eq!(head_now, before + n as u64, "every event is logged once");
        let all_applied = poll("every region applied the head", || {
            REGIONS.iter().all(|r| applied(&cluster, r) >= head_now)
        })
        .await?;
        let rate = n as f64 / pushed.as_secs_f64();
        println!(
            "coordinator ingest, {clients} client task(s): {rate:.0} events/s ({n} events in \
             {:.2} s, {busy}) (goal >= 20000) {}",
            pushed.as_secs_f64(),
            verdict(rate >= 20_000.0)
        );
        println!(
            "  (all regions applied the head {:.2} s after the first push, {:.2} s after the \
             last push returned; one Push of {PUSH_BATCH} took p50 {:.1} ms, p99 {:.1} ms; \
             events generated in {:.1} s, not timed)",
            (all_applied - start).as_secs_f64(),
            all_applied
                .saturating_duration_since(start + pushed)
                .as_secs_f64(),
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            generated.as_secs_f64()
        );
    }
    cluster.shutdown().await;
    Ok(())
}

// ----- 4. offline backlog -----

async fn bench_backlog(s: &Settings) -> BenchResult {
    let n = s.n(100_000);
    let goal = 10.0 * n as f64 / 100_000.0;
    println!(
        "[4] offline backlog: region ap stopped, {n} events written in eu (a directory and {} \
         files of 100 B, content in the create; sync strategy on-demand, so only metadata \
         moves), then ap restarted: time from the restart until ap applied the head",
        n - 1
    );
    let mut cluster = start_cluster(SyncStrategy::OnDemand).await?;
    let ap_before = applied(&cluster, "ap");
    cluster.stop_region("ap").await;
    let eu = cluster.region("eu").engine().clone();
    let before = head(&cluster);
    let write_start = Instant::now();
    let writer = eu.clone();
    let dir = blocking(move || {
        let dir = writer
            .namespace
            .create(NodeId::ROOT, b"backlog", NewNode::directory(0o755))?
            .id;
        let files = n - 1;
        let threads = 2;
        std::thread::scope(|scope| -> BenchResult {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let writer = &writer;
                    scope.spawn(move || -> Result<(), String> {
                        for i in (t..files).step_by(threads) {
                            let content = writer
                                .content
                                .put_bytes(&small_content(4, i))
                                .map_err(|e| e.to_string())?;
                            writer
                                .namespace
                                .create(dir, format!("f-{i:06}").as_bytes(), file_with(content))
                                .map_err(|e| e.to_string())?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join().map_err(|_| "writer panicked")??;
            }
            Ok(())
        })?;
        writer.namespace.sync()?;
        Ok(dir)
    })
    .await?;
    let written = write_start.elapsed();
    let target = before + n as u64;
    poll("the coordinator logged the backlog", || {
        head(&cluster) >= target && eu.queue.is_empty().unwrap_or(false)
    })
    .await?;
    let logged = write_start.elapsed();
    let head_now = head(&cluster);
    assert_eq!(head_now, target, "exactly the backlog was logged");
    // us settles first, so ap's catch-up has the machine to itself.
    poll("us applied the backlog", || {
        applied(&cluster, "us") >= head_now
    })
    .await?;

    let meter = CpuMeter::start();
    let start = Instant::now();
    cluster.start_region("ap").await;
    let started = start.elapsed();
    let done = poll("ap caught up", || applied(&cluster, "ap") >= head_now).await?;
    let took = done - start;
    let busy = meter.busy();
    println!(
        "offline backlog: ap caught up {n} events in {:.2} s = {:.0} events/s (goal <= {goal:.0} \
         s for {n}) {}",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        verdict(took.as_secs_f64() <= goal)
    );
    println!(
        "  (restart incl. engine open {:.0} ms; eu wrote the backlog in {:.1} s, logged by {:.1} \
         s; ap was at sequence {ap_before} of {head_now}; {busy} while catching up)",
        ms(started),
        written.as_secs_f64(),
        logged.as_secs_f64()
    );
    let ap = cluster.region("ap").engine().clone();
    let listed = blocking(move || Ok(ap.namespace.readdir(dir, None, usize::MAX)?.len())).await?;
    assert_eq!(listed, n - 1, "ap lists every backlog file");
    cluster.shutdown().await;
    Ok(())
}

// ----- 5. cold read -----

/// What reading a whole file through `Files.Read` gave.
struct WholeRead {
    bytes: u64,
    hash: blake3::Hash,
    took: Duration,
    busy: String,
}

async fn read_whole(cluster: &Cluster, region: &str, path: &str) -> BenchResult<WholeRead> {
    let url = format!("http://{}", cluster.region(region).grpc_addr());
    let mut files = v1::files_client::FilesClient::connect(url)
        .await?
        .max_decoding_message_size(geosync_proto::MAX_MESSAGE_BYTES);
    let meter = CpuMeter::start();
    let start = Instant::now();
    let mut stream = files
        .read(v1::ReadRequest {
            path: path.as_bytes().to_vec(),
            offset: 0,
            length: 0,
        })
        .await?
        .into_inner();
    let mut hasher = blake3::Hasher::new();
    let mut bytes = 0u64;
    while let Some(piece) = stream.message().await? {
        hasher.update(&piece.data);
        bytes += piece.data.len() as u64;
    }
    Ok(WholeRead {
        bytes,
        hash: hasher.finalize(),
        took: start.elapsed(),
        busy: meter.busy(),
    })
}

async fn bench_cold_read(s: &Settings) -> BenchResult {
    let len = if s.quick { 20 * MIB } else { 200 * MIB };
    println!(
        "[5] cold read: a {} MiB file written in eu under on-demand, read end to end from us \
         through the Files gRPC Read stream (a client over loopback; bytes hashed as they \
         arrive)",
        len / MIB
    );
    let cluster = start_cluster(SyncStrategy::OnDemand).await?;
    let eu = cluster.region("eu").engine().clone();
    let us = cluster.region("us").engine().clone();
    let writer = eu.clone();
    let (content, expected) = blocking(move || {
        let (path, hash) = stage_big_file(&writer, 5, len)?;
        let content = writer.content.put_file(&path)?;
        writer
            .namespace
            .create(NodeId::ROOT, b"cold.bin", file_with(content))?;
        writer.namespace.sync()?;
        Ok((content, hash))
    })
    .await?;
    cluster.converged().await?;
    assert!(
        !us.content.is_complete(&content.id)?,
        "on-demand: nothing fetched before the read"
    );

    let cold = read_whole(&cluster, "us", "/cold.bin").await?;
    assert_eq!(cold.bytes, len as u64, "the whole file was read");
    assert_eq!(cold.hash, expected, "the bytes read match what eu wrote");
    assert!(us.content.is_complete(&content.id)?);
    let rate = mb_per_s(cold.bytes, cold.took);
    println!(
        "cold read (us reads eu's file, fetched on demand): {rate:.0} MB/s, {:.1} MB in {:.2} s, \
         {} (goal >= 300 MB/s) {}",
        cold.bytes as f64 / MB,
        cold.took.as_secs_f64(),
        cold.busy,
        verdict(rate >= 300.0)
    );
    let warm = read_whole(&cluster, "us", "/cold.bin").await?;
    assert_eq!((warm.bytes, warm.hash), (len as u64, expected));
    let own = read_whole(&cluster, "eu", "/cold.bin").await?;
    assert_eq!((own.bytes, own.hash), (len as u64, expected));
    println!(
        "  (the same read again, now local in us: {:.0} MB/s, {}; eu reading its own copy: {:.0} \
         MB/s)",
        mb_per_s(warm.bytes, warm.took),
        warm.busy,
        mb_per_s(own.bytes, own.took),
    );
    cluster.shutdown().await;
    Ok(())
}
