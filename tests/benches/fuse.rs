//! The FUSE mount against a native directory on the same disk, in one run:
//! each figure is printed with the native figure and the ratio, next to the
//! goal from the FUSE issue. Never a timed test.
//!
//! Run with `cargo bench -p geosync-tests --bench fuse` (as root, with
//! `/dev/fuse`). Figures:
//!
//! 1. hot sequential re-read of a 1 GiB file: with FUSE passthrough (when the
//!    kernel allows it) and through the daemon (passthrough off);
//! 2. sequential write of 1 GiB (1 MiB writes) with fsync;
//! 3. create + write 4 KiB + close of 10k files;
//! 4. `stat` of 100k files, cold (fresh mount, page cache dropped) and cached;
//! 5. `readdir` of a directory of 100k entries (fresh mount);
//! 6. cold sequential read of a 512 MiB file held only by another region
//!    (`on-demand`, fetched over loopback gRPC, verified chunk by chunk).
//!
//! `GEOSYNC_BENCH_QUICK=1` divides the sizes by ~10; `GEOSYNC_BENCH_ONLY=cold`
//! (or `io`, `small`, `stat`, comma-separated) runs only those sections.
//! Without `--bench` the binary prints "skipped" and exits.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use geosync_core::config::{StrategyName, SyncConfig, SyncStrategy};
use geosync_core::store::content::DEFAULT_CHUNK_SIZE;
use geosync_tests::{Cluster, MountOptions, Mounted, wait_until};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MIB: usize = 1 << 20;
const MB: f64 = 1e6;

struct Sizes {
    big: usize,
    small_files: usize,
    stat_files: usize,
    cold: usize,
}

fn main() -> BenchResult {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "geosync FUSE bench: skipped (run it with `cargo bench -p geosync-tests --bench fuse`)"
        );
        return Ok(());
    }
    let quick = std::env::var("GEOSYNC_BENCH_QUICK").is_ok_and(|v| v == "1");
    let sizes = if quick {
        Sizes {
            big: 128 * MIB,
            small_files: 1_000,
            stat_files: 10_000,
            cold: 64 * MIB,
        }
    } else {
        Sizes {
            big: 1024 * MIB,
            small_files: 10_000,
            stat_files: 100_000,
            cold: 512 * MIB,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&sizes, quick))
}

/// Drops the kernel's page, dentry and inode caches (root only).
fn drop_caches() -> bool {
    nix_sync();
    fs::write("/proc/sys/vm/drop_caches", b"3").is_ok()
}

fn nix_sync() {
    let _ = std::process::Command::new("sync").status();
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

fn write_big(path: &Path, data: &[u8], fsync: bool) -> BenchResult<Duration> {
    let start = Instant::now();
    let mut f = File::create(path)?;
    for piece in data.chunks(MIB) {
        f.write_all(piece)?;
    }
    if fsync {
        f.sync_all()?;
    }
    drop(f);
    Ok(start.elapsed())
}

fn read_all(path: &Path) -> BenchResult<(Duration, u64)> {
    let start = Instant::now();
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; MIB];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok((start.elapsed(), total))
}

fn mbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / MB / t.as_secs_f64()
}

fn line(what: &str, ours: f64, native: Option<f64>, unit: &str, goal: &str) {
    match native {
        Some(n) => println!(
            "  {what:<58} {ours:>10.0} {unit}  native {n:>10.0} {unit}  {:>5.1} %   goal {goal}",
            100.0 * ours / n
        ),
        None => println!("  {what:<58} {ours:>10.0} {unit}  goal {goal}"),
    }
}

/// Creates `n` files of 4 KiB, each with its own content (no deduplication).
fn create_small(dir: &Path, n: usize) -> BenchResult<Duration> {
    fs::create_dir_all(dir)?;
    let mut block = [7u8; 4096];
    let start = Instant::now();
    for i in 0..n {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let mut f = File::create(dir.join(format!("f{i:06}")))?;
        f.write_all(&block)?;
    }
    Ok(start.elapsed())
}

fn stat_all(dir: &Path, n: usize) -> BenchResult<Duration> {
    let start = Instant::now();
    for i in 0..n {
        let m = fs::metadata(dir.join(format!("f{i:06}")))?;
        assert_eq!(m.len(), 0);
    }
    Ok(start.elapsed())
}

fn list(dir: &Path) -> BenchResult<(Duration, usize)> {
    let start = Instant::now();
    let n = fs::read_dir(dir)?.count();
    Ok((start.elapsed(), n))
}

/// Whether the section `name` runs (`GEOSYNC_BENCH_ONLY`, default all).
fn wanted(name: &str) -> bool {
    std::env::var("GEOSYNC_BENCH_ONLY")
        .map_or(true, |only| only.split(',').any(|o| o.trim() == name))
}

async fn run(s: &Sizes, quick: bool) -> BenchResult {
    let total = Instant::now();
    println!(
        "geosync FUSE benchmarks ({}; kernel {})",
        if quick { "QUICK, sizes / ~10" } else { "full" },
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let mut cluster = Cluster::start(&[], StrategyName::Lww).await;
    cluster.chunk_size = DEFAULT_CHUNK_SIZE;
    cluster.start_region("eu").await;
    let native = cluster.path().join("native");
    fs::create_dir_all(&native)?;
    if wanted("io") {
        big_io(&cluster, &native, s.big)?;
    }
    if wanted("small") {
        let n = s.small_files;
        let m = mount(&cluster, true);
        let native_small = create_small(&native.join("small"), n)?;
        let fuse_small = create_small(&m.path().join("small"), n)?;
        line(
            &format!("create + write 4 KiB + close, {n} files"),
            n as f64 / fuse_small.as_secs_f64(),
            Some(n as f64 / native_small.as_secs_f64()),
            "files/s",
            ">= 10k files/s",
        );
        // The same with the coordinator stopped: the mount and the region's
        // commits alone, without the pushes, the coordinator's durable log
        // and the echo being applied, which share these two cores here.
        cluster.stop_coordinator().await;
        let alone = create_small(&m.path().join("small-alone"), n)?;
        line(
            "  the same, coordinator stopped (events wait in the queue)",
            n as f64 / alone.as_secs_f64(),
            Some(n as f64 / native_small.as_secs_f64()),
            "files/s",
            "",
        );
        drop(m);
        cluster.restart_coordinator(false).await;
    }
    if wanted("stat") {
        stat_and_readdir(&cluster, &native, s.stat_files)?;
    }
    if wanted("cold") {
        cold_read(&mut cluster, s.cold).await?;
    }
    cluster.shutdown().await;
    println!("  total {:.1} s", total.elapsed().as_secs_f64());
    Ok(())
}

fn mount(cluster: &Cluster, passthrough: bool) -> Mounted {
    cluster.mount(
        "eu",
        MountOptions {
            passthrough,
            ..MountOptions::default()
        },
    )
}

/// Figures 1 and 2: a big file written with fsync, then re-read hot.
fn big_io(cluster: &Cluster, native: &Path, gib: usize) -> BenchResult {
    let data = pattern(gib);

    // 2. Sequential write with fsync (first: it also makes the read file).
    let native_big = native.join("big.bin");
    let native_w = write_big(&native_big, &data, true)?;
    let m = mount(cluster, true);
    let fuse_big = m.path().join("big.bin");
    let fuse_w = write_big(&fuse_big, &data, true)?;
    let passthrough = m.passthrough();

    // 1. Hot sequential re-read.
    read_all(&native_big)?;
    let (native_r, n) = read_all(&native_big)?;
    assert_eq!(n as usize, gib);
    read_all(&fuse_big)?;
    let (pt_r, n) = read_all(&fuse_big)?;
    assert_eq!(n as usize, gib);
    drop(m);
    let m = mount(cluster, false);
    let fuse_big = m.path().join("big.bin");
    read_all(&fuse_big)?;
    let (daemon_r, n) = read_all(&fuse_big)?;
    assert_eq!(n as usize, gib);
    fs::remove_file(&fuse_big)?;
    fs::remove_file(&native_big)?;
    drop(m);
    println!("  (sizes: big file {} MiB)", gib / MIB);
    line(
        &format!(
            "hot sequential re-read, passthrough {}",
            if passthrough { "on" } else { "UNAVAILABLE" }
        ),
        mbps(gib, pt_r),
        Some(mbps(gib, native_r)),
        "MB/s",
        ">= 95 %",
    );
    line(
        "hot sequential re-read through the daemon (no passthrough)",
        mbps(gib, daemon_r),
        Some(mbps(gib, native_r)),
        "MB/s",
        "fallback",
    );
    line(
        "sequential write, 1 MiB writes, fsync",
        mbps(gib, fuse_w),
        Some(mbps(gib, native_w)),
        "MB/s",
        ">= 70 %",
    );

    Ok(())
}

/// Figures 4 and 5: stat and readdir of many files (made through the namespace).
fn stat_and_readdir(cluster: &Cluster, native: &Path, files: usize) -> BenchResult {
    let ns = &cluster.region("eu").engine().namespace;
    let dir = ns.create(
        geosync_core::model::NodeId::ROOT,
        b"many",
        geosync_core::namespace::NewNode::directory(0o755),
    )?;
    let native_many = native.join("many");
    fs::create_dir_all(&native_many)?;
    for i in 0..files {
        let name = format!("f{i:06}");
        ns.create(
            dir.id,
            name.as_bytes(),
            geosync_core::namespace::NewNode::file(0o644),
        )?;
        File::create(native_many.join(&name))?;
    }
    ns.sync()?;
    let dropped = drop_caches();
    let m = mount(cluster, true);
    let (fuse_ls, n) = list(&m.path().join("many"))?;
    assert_eq!(n, files);
    drop(m);
    drop_caches();
    let m = mount(cluster, true);
    let fuse_cold = stat_all(&m.path().join("many"), files)?;
    let fuse_hot = stat_all(&m.path().join("many"), files)?;
    drop_caches();
    let (native_ls, _) = list(&native_many)?;
    drop_caches();
    let native_cold = stat_all(&native_many, files)?;
    let native_hot = stat_all(&native_many, files)?;
    drop(m);
    let per_s = |t: Duration| files as f64 / t.as_secs_f64();
    line(
        &format!(
            "stat of {} files, cold{}",
            files,
            if dropped { "" } else { " (caches NOT dropped)" }
        ),
        per_s(fuse_cold),
        Some(per_s(native_cold)),
        "stat/s",
        ">= 50k/s",
    );
    line(
        &format!("stat of {} files, cached", files),
        per_s(fuse_hot),
        Some(per_s(native_hot)),
        "stat/s",
        "near native",
    );
    println!(
        "  {:<58} {:>10.3} s     native {:>10.3} s            goal <= 1 s",
        format!("readdir of {} entries (fresh mount)", files),
        fuse_ls.as_secs_f64(),
        native_ls.as_secs_f64()
    );

    Ok(())
}

/// Figure 6: a cold sequential read of a file only another region holds.
async fn cold_read(cluster: &mut Cluster, size: usize) -> BenchResult {
    cluster.sync = SyncConfig {
        default: SyncStrategy::OnDemand,
        rules: Vec::new(),
    };
    cluster.start_region("us").await;
    let eu = mount(cluster, true);
    let us = cluster.mount("us", MountOptions::default());
    let cold = pattern(size);
    write_big(&eu.path().join("cold.bin"), &cold, true)?;
    let theirs: PathBuf = us.path().join("cold.bin");
    let arrived = wait_until(Duration::from_secs(60), || {
        fs::metadata(&theirs).is_ok_and(|m| m.len() == size as u64)
    });
    assert!(arrived, "the cold file's metadata reached us");
    let (t, n) = read_all(&theirs)?;
    assert_eq!(n as usize, size);
    assert_eq!(fs::read(&theirs)?, cold, "verified bytes");
    line(
        &format!(
            "cold sequential read from another region, {} MiB",
            size / MIB
        ),
        mbps(size, t),
        None,
        "MB/s",
        ">= 500 MB/s",
    );
    drop((eu, us));
    Ok(())
}
