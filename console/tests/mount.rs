//! The real binary with FUSE mounts: a region killed with SIGKILL while files
//! are written through its mount comes back with every fsync'ed file intact,
//! and no other region ever saw a partly written version.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;

use common::{BIN, free_base_port, wait_until};

/// A file is written in this many pieces...
const PIECES: usize = 8;
/// ...of this size.
const PIECE: usize = 32 * 1024;
const FULL: u64 = (PIECES * PIECE) as u64;

/// Kills the child on every path; a FUSE child's mount is cleared too.
struct Proc {
    child: Option<Child>,
    mount: Option<PathBuf>,
}

impl Proc {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if let Some(m) = &self.mount {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

fn spawn(args: &[String], mount: Option<&Path>, log: &Path) -> Proc {
    let log = File::create(log).expect("log file");
    let child = Command::new(BIN)
        .args(args)
        .env_remove("GEOSYNC_COORDINATOR")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn geosync");
    Proc {
        child: Some(child),
        mount: mount.map(Path::to_path_buf),
    }
}

fn region(dir: &Path, name: &str, coordinator: u16) -> (Vec<String>, PathBuf) {
    let mount = dir.join("mnt").join(name);
    fs::create_dir_all(&mount).expect("mount point");
    let port = free_base_port(0);
    let args = [
        "region",
        "--region",
        name,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--coordinator",
        &format!("http://127.0.0.1:{coordinator}"),
        "--data-dir",
        &dir.join(name).display().to_string(),
        "--mount",
        &mount.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    (args, mount)
}

fn ready(mount: &Path) -> bool {
    fs::read(mount.join(".geosync/status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["ready"] == true)
}

/// The bytes of piece `p` of file `name`.
fn piece(name: &str, p: usize) -> Vec<u8> {
    let line = format!("{name} piece {p}\n");
    line.as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(PIECE)
        .collect()
}

fn full(name: &str) -> Vec<u8> {
    (0..PIECES).flat_map(|p| piece(name, p)).collect()
}

/// Writes `name` piece by piece (a pause between pieces), then fsyncs if asked.
fn write_file(dir: &Path, name: &str, fsync: bool, pause: Duration) -> std::io::Result<()> {
    let mut f = File::create(dir.join(name))?;
    for p in 0..PIECES {
        f.write_all(&piece(name, p))?;
        std::thread::sleep(pause);
    }
    if fsync {
        f.sync_all()?;
    }
    Ok(())
}

#[test]
fn a_killed_region_keeps_fsynced_files_and_never_replicates_a_partial_version() {
    if !Path::new("/dev/fuse").exists() {
        panic!("/dev/fuse is missing: the mount tests need FUSE (apt-get install fuse3)");
    }
    let dir = tempfile::tempdir().expect("dir");
    let dir = dir.path();
    let cport = free_base_port(0);
    let _coordinator = spawn(
        &[
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{cport}"),
            "--data-dir",
            &dir.join("coordinator").display().to_string(),
        ]
        .map(String::from),
        None,
        &dir.join("coordinator.log"),
    );
    let (eu_args, eu_mount) = region(dir, "eu", cport);
    let (us_args, us_mount) = region(dir, "us", cport);
    let mut eu = spawn(&eu_args, Some(&eu_mount), &dir.join("eu.log"));
    let _us = spawn(&us_args, Some(&us_mount), &dir.join("us.log"));
    assert!(
        wait_until(Duration::from_secs(30), || ready(&eu_mount)
            && ready(&us_mount)),
        "both regions mounted and ready: {}",
        fs::read_to_string(dir.join("eu.log")).unwrap_or_default()
    );

    // Watch us for partial versions the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, us_mount) = (stop.clone(), us_mount.clone());
        std::thread::spawn(move || {
            let mut partial = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for e in fs::read_dir(&us_mount).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Ok(data) = fs::read(e.path())
                        && !data.is_empty()
                        && data != full(&name)
                    {
                        partial.push((name, data.len()));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            partial
        })
    };

    // Durable files: written and fsync'ed.
    let durable: Vec<String> = (0..10).map(|i| format!("durable-{i}")).collect();
    for name in &durable {
        write_file(&eu_mount, name, true, Duration::ZERO).expect("write a durable file");
    }
    // Files still being written when the region dies.
    let writer = {
        let eu_mount = eu_mount.clone();
        std::thread::spawn(move || {
            for i in 0.. {
                let name = format!("inflight-{i}");
                if write_file(&eu_mount, &name, false, Duration::from_millis(15)).is_err() {
                    return i;
                }
            }
            unreachable!()
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    eu.kill();
    let written = writer.join().expect("writer thread");
    assert!(written >= 1, "the writer was mid-way through a file");

    // Restart on the same mount point (the dead mount is cleared).
    let mut eu = spawn(&eu_args, Some(&eu_mount), &dir.join("eu-restarted.log"));
    assert!(
        wait_until(Duration::from_secs(30), || ready(&eu_mount)),
        "the restarted region mounts again: {}",
        fs::read_to_string(dir.join("eu-restarted.log")).unwrap_or_default()
    );
    for name in &durable {
        assert_eq!(
            fs::read(eu_mount.join(name)).expect("a durable file"),
            full(name),
            "{name} survived the crash"
        );
    }
    assert!(
        wait_until(Duration::from_secs(30), || durable
            .iter()
            .all(|n| fs::read(us_mount.join(n)).is_ok_and(|d| d == full(n)))),
        "every durable file reached us"
    );
    // The mount works for new writes after the restart.
    write_file(&eu_mount, "after", true, Duration::ZERO).expect("write after restart");
    assert!(wait_until(Duration::from_secs(30), || fs::read(
        us_mount.join("after")
    )
    .is_ok_and(|d| d == full("after"))));
    stop.store(true, Ordering::Relaxed);
    let partial = watcher.join().expect("watcher");
    assert!(partial.is_empty(), "us saw partial versions: {partial:?}");
    for e in fs::read_dir(&us_mount).expect("list us").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let data = fs::read(e.path()).unwrap_or_default();
        assert!(
            data.is_empty() || data.len() as u64 == FULL && data == full(&name),
            "{name} is a partial version ({} bytes)",
            data.len()
        );
    }
    eu.kill();
}
