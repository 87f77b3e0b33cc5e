//! `geosync strm` against a real demo cluster (a child process): the demo's job turns
//! `<dir>/media` into `.strm` files, driven and followed from the CLI.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod common;

use common::{BIN, free_base_port, wait_until};

/// Kills the child on every path, so a failing assertion leaves nothing behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("GEOSYNC_REGION")
        .env_remove("GEOSYNC_REGION_HTTP")
        .env_remove("GEOSYNC_COORDINATOR")
        .stdin(Stdio::null())
        .output()
        .expect("run geosync")
}

#[test]
fn strm_jobs_run_runs_against_the_demo() {
    let dir = tempfile::tempdir().expect("dir");
    let base = free_base_port(2);
    let child = Command::new(BIN)
        .args([
            "demo",
            "--headless",
            "--regions",
            "eu,us",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let _guard = Guard(child);
    let http = format!("http://127.0.0.1:{}", base + 1010);
    let us = format!("http://127.0.0.1:{}", base + 11);
    let up = wait_until(Duration::from_secs(30), || {
        run(&["strm", "jobs", "--http", &http]).status.success()
    });
    assert!(up, "the demo's region answers");
    let jobs = run(&["strm", "jobs", "--json", "--http", &http]);
    let jobs: serde_json::Value = serde_json::from_slice(&jobs.stdout).expect("jobs json");
    assert_eq!(jobs[0]["name"], "demo", "{jobs}");

    let media = dir.path().join("media/Film (2001)");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("Film (2001).mkv"), b"film").unwrap();
    std::fs::write(media.join("Film (2001).nfo"), b"<movie/>").unwrap();
    let out = run(&["strm", "run", "demo", "--full", "--http", &http]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("done") && stdout.contains("written 2"),
        "{stdout}"
    );

    // The output reads back in the other region: a signed link to eu's /stream/.
    let shown = wait_until(Duration::from_secs(30), || {
        let cat = run(&[
            "cat",
            "--region",
            &us,
            "/strm/demo/Film (2001)/Film (2001).strm",
        ]);
        cat.status.success()
            && String::from_utf8_lossy(&cat.stdout).starts_with(&format!(
                "{http}/stream/Film%20%282001%29/Film%20%282001%29.mkv?job=demo&sig="
            ))
    });
    assert!(shown, "the .strm file reads back in us");

    let runs = run(&["strm", "runs", "--json", "--http", &http]);
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs json");
    assert_eq!(runs[0]["state"], "done", "{runs}");
    assert_eq!(runs[0]["counts"]["written"], 2, "{runs}");

    // Clear errors, failing exit codes.
    let unknown = run(&["strm", "run", "nope", "--http", &http]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no STRM job named \"nope\""));
    let not_held = run(&["strm", "confirm-cleanup", "1", "--http", &http]);
    assert!(!not_held.status.success());
    assert!(String::from_utf8_lossy(&not_held.stderr).contains("only a run whose cleanup is held"));
}
