//! The real binary: a demo cluster started as a child process, driven with
//! the CLI, stopped with SIGTERM; and clear errors for broken input.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod common;

use common::{BIN, free_base_port, wait_until};

/// Kills the child on every path, so a failing assertion leaves nothing behind.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("GEOSYNC_COORDINATOR")
        .env_remove("GEOSYNC_REGION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn geosync");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait geosync")
}

#[test]
fn demo_cluster_put_cat_status_and_graceful_stop() {
    let dir = tempfile::tempdir().expect("dir");
    let base = free_base_port(3);
    let child = Command::new(BIN)
        .args([
            "demo",
            "--headless",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let mut guard = Guard(Some(child));
    let coordinator = format!("http://127.0.0.1:{base}");
    let (eu, ap) = (
        format!("http://127.0.0.1:{}", base + 10),
        format!("http://127.0.0.1:{}", base + 12),
    );

    let healthy = wait_until(Duration::from_secs(30), || {
        let out = run(&["status", "--json", "--coordinator", &coordinator], None);
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .map(|v| v["quorum"]["healthy"] == 3)
                .unwrap_or(false)
    });
    assert!(healthy, "three healthy regions");
    let status: serde_json::Value = serde_json::from_slice(
        &run(&["status", "--json", "--coordinator", &coordinator], None).stdout,
    )
    .expect("status json");
    for key in ["epoch", "head", "leader", "quorum", "regions"] {
        assert!(status.get(key).is_some(), "status has {key}: {status}");
    }
    let regions: Vec<&str> = status["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(regions, ["ap", "eu", "us"]);
    for key in [
        "id",
        "state",
        "acked",
        "lag_events",
        "lag_seconds",
        "queue",
        "clock_drift_ms",
    ] {
        assert!(status["regions"][0].get(key).is_some(), "region has {key}");
    }

    let put = run(
        &["put", "--region", &eu, "/hello.txt"],
        Some(b"hello from eu\n"),
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let shown = wait_until(Duration::from_secs(30), || {
        let cat = run(&["cat", "--region", &ap, "/hello.txt"], None);
        cat.status.success() && cat.stdout == b"hello from eu\n"
    });
    assert!(shown, "the file written in eu reads back in ap");
    let conflicts = run(
        &["conflicts", "list", "--json", "--coordinator", &coordinator],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&conflicts.stdout).trim(), "[]");

    // What the console can do, scripts can do: pause, resume, resync, bulk resolve.
    let paused = |region: &str| -> Option<bool> {
        let out = run(&["status", "--json", "--coordinator", &coordinator], None);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["regions"]
            .as_array()?
            .iter()
            .find(|r| r["id"] == region)?["paused"]
            .as_bool()
    };
    let pause = run(&["pause", "eu", "--coordinator", &coordinator], None);
    assert!(pause.status.success(), "{pause:?}");
    assert_eq!(
        String::from_utf8_lossy(&pause.stdout).trim(),
        "done: pause region eu"
    );
    assert_eq!(paused("eu"), Some(true));
    let unknown = run(&["pause", "mars", "--coordinator", &coordinator], None);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("mars"),
        "{unknown:?}"
    );
    let resume = run(&["resume", "eu", "--coordinator", &coordinator], None);
    assert!(resume.status.success(), "{resume:?}");
    assert_eq!(paused("eu"), Some(false));
    let resync = run(&["resync", "us", "--coordinator", &coordinator], None);
    assert!(resync.status.success(), "{resync:?}");
    let bulk = run(
        &[
            "conflicts",
            "resolve-all",
            "--keep",
            "both",
            "--coordinator",
            &coordinator,
        ],
        None,
    );
    assert!(bulk.status.success(), "{bulk:?}");
    assert!(
        String::from_utf8_lossy(&bulk.stdout).contains("0 to resolve, 0 skipped: nothing done")
    );
    // The console needs a terminal, and says so.
    let log_dir = dir.path().join("console-logs");
    let console = run(
        &[
            "console",
            "--coordinator",
            &coordinator,
            "--log-dir",
            log_dir.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(!console.status.success());
    assert!(
        String::from_utf8_lossy(&console.stderr).contains("the console needs a terminal"),
        "{console:?}"
    );

    // Traversal is refused with a clear message and a failing exit code.
    let bad = run(&["put", "--region", &eu, "/a/../../etc/passwd"], Some(b"x"));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("'.' and '..' are not allowed"));

    // SIGTERM: a graceful stop, exit code 0.
    let mut child = guard.0.take().expect("child");
    // SAFETY: kill(2) on our own child's pid; no memory is shared.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let exited = wait_until(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    assert!(
        exited && status.success(),
        "demo exits 0 on SIGTERM: {status:?}"
    );
}

#[test]
fn a_broken_config_names_the_file_and_key() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("region.toml");
    std::fs::write(&path, "region = \"eu\"\nlisen = \"127.0.0.1:7410\"\n").expect("write config");
    let out = run(&["region", "--config", path.to_str().expect("utf-8")], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(path.to_str().expect("utf-8")), "{err}");
    assert!(err.contains("lisen") && err.contains("listen"), "{err}");
    let missing = run(&["region", "--config", "/nonexistent/geosync.toml"], None);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/geosync.toml")
    );
    assert!(!Path::new("/nonexistent").exists());
}
