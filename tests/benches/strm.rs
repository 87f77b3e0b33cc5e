//! Hand-written benchmarks of the STRM pipeline through a whole cluster: a coordinator and two
//! regions (eu runs the job, us only receives) in this process on loopback (the `Cluster`
//! harness). The figures are printed, one line each, with their goal.
//!
//! Run with `cargo bench -p geosync-tests --bench strm`. Figures:
//!
//! 1. full resync of a local tree of 100,000 files (media and `.nfo` files in 5,000
//!    directories) with 10 workers, in files/s: with eu alone, then with us attached (us
//!    applies every event and fetches every file's content in this process, on the same cores);
//! 2. a no-change re-run of the same tree, in files/s;
//! 3. webhook event -> `.strm` visible in the other region's namespace (p50, p99), measured on
//!    the namespace both runs above filled (200,000 outputs);
//! 4. `/stream/` sequential throughput of a hot 256 MiB file over loopback, in MB/s.
//!
//! Every run checks that it did the work it claims (counts, files present, bytes read).
//!
//! Environment: `GEOSYNC_BENCH_QUICK=1` divides sizes by ~10 (a smoke run). Without a `--bench`
//! argument (`cargo test --all-targets`) the binary prints "skipped" and exits at once.

use std::path::Path;
use std::time::{Duration, Instant};

use geosync_core::config::{JobConfig, SourceConfig, StrategyName, StrmConfig};
use geosync_core::model::NodeId;
use geosync_core::namespace::NewNode;
use geosync_core::store::content::DEFAULT_CHUNK_SIZE;
use geosync_tests::Cluster;
use serde_json::{Value, json};

type BenchError = Box<dyn std::error::Error + Send + Sync>;
type BenchResult<T = ()> = Result<T, BenchError>;

const SECRET: &str = "bench-cluster-secret-0123456789";
const TOKEN: &str = "bench-webhook-token";

/// How long any wait may take before the bench gives up on it.
const DEADLINE: Duration = Duration::from_secs(600);

/// Files per source directory (`MEDIA_PER_DIR` media, the rest `.nfo`).
const FILES_PER_DIR: usize = 20;
const MEDIA_PER_DIR: usize = 15;

/// Webhook events timed.
const WEBHOOK_EVENTS: usize = 200;

const MB: f64 = 1e6;
const MIB: usize = 1 << 20;

fn main() -> BenchResult {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "geosync strm bench: skipped (run it with `cargo bench -p geosync-tests --bench strm`)"
        );
        return Ok(());
    }
    let quick = std::env::var("GEOSYNC_BENCH_QUICK").is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(quick))
}

fn generate(root: &Path, files: usize) -> BenchResult {
    let dirs = files / FILES_PER_DIR;
    for d in 0..dirs {
        let dir = root.join(format!("Shows/Show {:03}/Season {:02}", d / 50, d % 50));
        std::fs::create_dir_all(&dir)?;
        for f in 0..FILES_PER_DIR {
            let name = if f < MEDIA_PER_DIR {
                format!("Episode {f:02}.mkv")
            } else {
                format!("Episode {f:02}.nfo")
            };
            std::fs::write(dir.join(name), format!("<episode {d} {f}/>"))?;
        }
    }
    Ok(())
}

async fn run(quick: bool) -> BenchResult {
    let scale = if quick { 10 } else { 1 };
    let files = std::env::var("GEOSYNC_BENCH_FILES")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or(100_000 / scale);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("geosync strm benchmarks");
    println!(
        "  cores: {cores}, mode: {}; a coordinator and regions eu (runs the job), us in this process on loopback",
        if quick { "QUICK (sizes / 10)" } else { "full" }
    );

    let src = tempfile::tempdir()?;
    let t = Instant::now();
    generate(src.path(), files)?;
    println!(
        "  generated {files} source files in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let job = |name: &str, output: &str| {
        let mut job = JobConfig::new(
            name,
            SourceConfig::Local {
                path: src.path().to_path_buf(),
                download_url: None,
            },
            output,
        );
        job.max_concurrency = 10;
        job.webhook_prefix = Some("/cd".into());
        job
    };
    let strm = |jobs| StrmConfig {
        secret: Some(SECRET.into()),
        public_url: None,
        webhook_token: Some(TOKEN.into()),
        jobs,
    };
    let mut c = Cluster::start(&[], StrategyName::Lww).await;
    c.chunk_size = DEFAULT_CHUNK_SIZE;
    let eu_strm = strm(vec![job("solo", "/strm/solo"), job("bench", "/strm/bench")]);
    c.start_region_with("eu", |r| r.strm = eu_strm).await;
    let base = format!("http://{}", c.region_http_addr("eu"));
    let http = reqwest::Client::builder().timeout(DEADLINE).build()?;

    // 1: full resync, eu alone (the engine's own cost), then with us attached: us receives every
    // event and fetches every file's content in this same process, on the same cores.
    let solo = timed_run(&http, &base, "solo").await?;
    check(solo.1["counts"]["written"] == files as u64, || {
        format!("solo run: {}", solo.1)
    })?;
    println!(
        "  full resync, {files} files, 10 workers, eu alone: {:.2}s = {:.0} files/s   (goal >= 5000 files/s)",
        solo.0.as_secs_f64(),
        files as f64 / solo.0.as_secs_f64()
    );
    c.start_region_with("us", |r| r.strm = strm(Vec::new()))
        .await;
    c.converged()
        .await
        .map_err(|e| format!("us catching up: {}", &e[..e.len().min(500)]))?;
    let full = timed_run(&http, &base, "bench").await?;
    check(full.1["counts"]["written"] == files as u64, || {
        format!("full run: {}", full.1)
    })?;
    println!(
        "  full resync, {files} files, 10 workers, replicated to us in-process: {:.2}s = {:.0} files/s",
        full.0.as_secs_f64(),
        files as f64 / full.0.as_secs_f64()
    );

    // 2: a no-change re-run, measured on a quiet cluster (the first run's replication done).
    c.converged()
        .await
        .map_err(|e| format!("after the full run: {}", &e[..e.len().min(500)]))?;
    let again = timed_run(&http, &base, "bench").await?;
    check(again.1["counts"]["unchanged"] == files as u64, || {
        format!("re-run: {}", again.1)
    })?;
    println!(
        "  no-change re-run, {files} files: {:.2}s = {:.0} files/s   (goal >= 20000 files/s)",
        again.0.as_secs_f64(),
        files as f64 / again.0.as_secs_f64()
    );
    c.converged()
        .await
        .map_err(|e| format!("after the runs: {}", &e[..e.len().min(500)]))?;

    // 3: webhook event -> .strm visible in us.
    let us = c.region("us").engine().clone();
    let mut latencies = Vec::with_capacity(WEBHOOK_EVENTS);
    for i in 0..WEBHOOK_EVENTS {
        let rel = format!("Hooks/Film {i}.mkv");
        std::fs::create_dir_all(src.path().join("Hooks"))?;
        std::fs::write(src.path().join(&rel), b"new")?;
        let body = json!({"event_category": "file", "event_name": "notify", "data": [
            {"action": "create", "is_dir": "false", "source_file": format!("/cd/{rel}"), "destination_file": ""}]});
        let out = format!("/strm/bench/Hooks/Film {i}.strm");
        let start = Instant::now();
        let resp = http
            .post(format!("{base}/api/v1/webhook/clouddrive"))
            .header("Authorization", TOKEN)
            .json(&body)
            .send()
            .await?;
        check(resp.status() == 200, || {
            format!("webhook answered {}", resp.status())
        })?;
        loop {
            if us.namespace.resolve(out.as_bytes()).is_ok() {
                break;
            }
            check(start.elapsed() < DEADLINE, || {
                format!("{out} never reached us")
            })?;
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "  webhook event -> .strm visible in us, {WEBHOOK_EVENTS} events: p50 {:.1} ms, p99 {:.1} ms   (goal p99 <= 200 ms)",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );

    // 4: /stream/ throughput of a hot file.
    let size = 256 * MIB / scale;
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let eu = c.region("eu").engine().clone();
    let link = {
        let lib = eu
            .namespace
            .create(NodeId::ROOT, b"media", NewNode::directory(0o755))?;
        let content = eu.content.put_bytes(&data)?;
        eu.namespace.create(
            lib.id,
            b"big.mkv",
            NewNode {
                content: Some(content),
                ..NewNode::file(0o644)
            },
        )?;
        let signer = c.region("eu").strm().signer().ok_or("no signer")?.clone();
        signer.link(&base, None, "/media/big.mkv")
    };
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let mut resp = http.get(&link).send().await?;
        check(resp.status() == 200, || {
            format!("/stream/ answered {}", resp.status())
        })?;
        let mut read = 0usize;
        while let Some(chunk) = resp.chunk().await? {
            read += chunk.len();
        }
        check(read == size, || format!("read {read} of {size} bytes"))?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "  /stream/ sequential read of a hot {} MiB file: {:.0} MB/s (best of 3)   (goal >= 500 MB/s)",
        size / MIB,
        size as f64 / MB / best
    );
    c.shutdown().await;
    Ok(())
}

fn check(ok: bool, why: impl FnOnce() -> String) -> BenchResult {
    if ok { Ok(()) } else { Err(why().into()) }
}

/// Queues a full run of `job` and waits for it; returns its duration (queued to finished, as
/// the region measured it) and the run.
async fn timed_run(
    http: &reqwest::Client,
    base: &str,
    job: &str,
) -> BenchResult<(Duration, Value)> {
    let reply: Value = http
        .post(format!("{base}/api/v1/strm/runs"))
        .json(&json!({"job": job, "strategy": "full"}))
        .send()
        .await?
        .json()
        .await?;
    let id = reply["id"].as_u64().ok_or("no run id")?;
    let end = Instant::now() + DEADLINE;
    loop {
        let run: Value = http
            .get(format!("{base}/api/v1/strm/runs/{id}"))
            .send()
            .await?
            .json()
            .await?;
        if !matches!(run["state"].as_str(), Some("queued" | "running")) {
            let started = run["started_ms"].as_u64().ok_or("no start")?;
            let finished = run["finished_ms"].as_u64().ok_or("no end")?;
            return Ok((Duration::from_millis(finished - started), run));
        }
        check(Instant::now() < end, || format!("run {id} did not finish"))?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
