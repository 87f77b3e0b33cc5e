//! The console's two performance figures (run with `cargo bench -p geosync
//! --bench console`):
//!
//! 1. the time to render one frame with 100 regions and 10 000 conflicts
//!    (target: at most 5 ms), into ratatui's `TestBackend` (the same drawing
//!    and diffing as on a terminal, without the terminal's write);
//!    (`GEOSYNC_BENCH_RENDER_ONLY=1` skips figure 2);
//! 2. the CPU the real `geosync console` process uses while idle against a
//!    live 3-region cluster (target: under 2 % of a core), read from
//!    `/proc/<pid>/stat` over a window; the console runs in a tmux
//!    pseudo-terminal, the cluster is `geosync demo --headless`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use geosync::tui::app::{App, Options};
use geosync::tui::{Action, View, views};
use geosync_proto::v1;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const BIN: &str = env!("CARGO_BIN_EXE_geosync");
const NOW: u64 = 1_795_248_000_000;
const REGIONS: usize = 100;
const CONFLICTS: usize = 10_000;
const FRAMES: usize = 300;
/// How long the idle console is watched.
const CPU_WINDOW: Duration = Duration::from_secs(20);

fn cluster(head: u64) -> v1::ClusterView {
    let regions = (0..REGIONS)
        .map(|i| v1::RegionStatus {
            id: format!("region-{i:03}"),
            state: if i % 17 == 0 {
                v1::RegionState::Degraded
            } else {
                v1::RegionState::Healthy
            } as i32,
            acked: head - (i as u64 % 40),
            lag_events: i as u64 % 40,
            lag_seconds: (i % 40) as f64 * 0.1,
            queue: Some(v1::QueueStats {
                pending: i as u64,
                inflight: 1,
                ..Default::default()
            }),
            clock_drift_ms: i as i64 - 50,
            last_heartbeat_ms: NOW - 1500,
            grpc_endpoint: format!("127.0.0.1:{}", 7410 + i),
            ..Default::default()
        })
        .collect();
    v1::ClusterView {
        epoch: "5f1c9a7e-2b4d-4e0a-9c1f-0d3b6e8a4c21".into(),
        head,
        leader: Some(v1::LeaderInfo {
            id: "coordinator-1".into(),
            term: 1,
        }),
        quorum: Some(v1::Quorum {
            total: REGIONS as u32,
            healthy: REGIONS as u32 - 6,
            required: REGIONS as u32 / 2,
            sufficient: true,
        }),
        regions,
        conflicts_open: CONFLICTS as u64,
        events_total: head,
    }
}

fn conflicts() -> Vec<v1::Conflict> {
    (0..CONFLICTS)
        .map(|i| v1::Conflict {
            id: format!("{i:032x}"),
            path: format!(
                "/library/shows/show-{:03}/season-{:02}/episode-{i:05}.nfo",
                i % 300,
                i % 12
            ),
            strategy: "manual".into(),
            detected_at_ms: NOW - i as u64 * 1000,
            versions: ["eu", "us"]
                .iter()
                .enumerate()
                .map(|(k, r)| v1::ConflictVersion {
                    region: (*r).into(),
                    size: 4096 + k as u64,
                    hash: vec![(i % 251) as u8 + k as u8; 32],
                    hlc: Some(v1::Timestamp {
                        physical_ms: NOW - 5000 + k as u64,
                        logical: 0,
                        region: (*r).into(),
                    }),
                    mtime_ns: 1_700_000_000_000_000_000,
                    deleted: false,
                })
                .collect(),
            node: Vec::new(),
        })
        .collect()
}

fn loaded_app() -> App {
    let mut app = App::new(Options {
        coordinator: "http://127.0.0.1:7400".into(),
        readonly: false,
        color: true,
    });
    for t in 0..120u64 {
        app.update(Action::Cluster(cluster(100_000 + t * 37)));
        app.update(Action::Tick(NOW - 120_000 + t * 1000));
    }
    app.update(Action::Conflicts(Ok(conflicts())));
    app
}

/// Renders `app` FRAMES times; returns (median, mean, p99, max) in milliseconds.
fn time_frames(app: &App, (w, h): (u16, u16)) -> (f64, f64, f64, f64) {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    let mut times = Vec::with_capacity(FRAMES);
    for i in 0..FRAMES {
        // Alternate two states so each frame really changes (as when data arrives).
        let mut a = app.clone();
        if i % 2 == 1 {
            a.update(Action::Down);
        }
        let start = Instant::now();
        terminal.draw(|f| views::render(f, &a)).expect("draw");
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    (times[times.len() / 2], mean, p99, times[times.len() - 1])
}

fn render_figures() {
    let base = loaded_app();
    println!(
        "frame render, {REGIONS} regions and {CONFLICTS} conflicts ({FRAMES} frames each; target <= 5 ms):"
    );
    let cases: Vec<(&str, App)> = vec![
        ("overview", {
            let mut a = base.clone();
            a.update(Action::Show(View::Overview));
            for _ in 0..50 {
                a.update(Action::Down);
            }
            a
        }),
        ("conflicts", {
            let mut a = base.clone();
            a.update(Action::Show(View::Conflicts));
            for _ in 0..500 {
                a.update(Action::PageDown);
            }
            a
        }),
        ("conflicts filtered", {
            let mut a = base.clone();
            a.update(Action::Show(View::Conflicts));
            a.update(Action::Command("filter season-07".into()));
            a.update(Action::PageDown);
            a
        }),
        ("events", {
            let mut a = base.clone();
            a.update(Action::Show(View::Events));
            a
        }),
    ];
    for (name, app) in &cases {
        for size in [(80, 24), (200, 60)] {
            let (median, mean, p99, max) = time_frames(app, size);
            println!(
                "  {name:<19} {:>3}x{:<3} median {median:.3} ms  mean {mean:.3} ms  p99 {p99:.3} ms  max {max:.3} ms",
                size.0, size.1
            );
        }
    }
}

/// Kills a child process on every path.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills a tmux server on every path.
struct Tmux(std::path::PathBuf);

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.0)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("tmux")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn free_base_port() -> u16 {
    let seed = std::process::id();
    for i in 0..200u32 {
        let base = 20_000 + ((seed.wrapping_mul(31).wrapping_add(i * 7919)) % 20_000) as u16;
        let ports = [base, base + 10, base + 11, base + 12];
        if ports
            .iter()
            .flat_map(|p| [*p, p + 1000])
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free ports");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at `) `.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn idle_cpu_figure() {
    if !Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("idle CPU: SKIPPED (tmux is not installed; the console needs a terminal)");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let base = free_base_port();
    let demo = Command::new(BIN)
        .args([
            "demo",
            "--headless",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo cluster");
    let _demo = Guard(demo);
    let tmux = Tmux(dir.path().join("tmux.sock"));
    let coordinator = format!("http://127.0.0.1:{base}");
    let log_dir = dir.path().join("logs");
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "bench",
        "-x",
        "120",
        "-y",
        "40",
        BIN,
        "console",
        "--coordinator",
        &coordinator,
        "--log-dir",
        &log_dir.display().to_string(),
    ]);
    assert!(started.status.success(), "tmux: {started:?}");
    let pid = String::from_utf8_lossy(
        &tmux
            .run(&["display-message", "-p", "-t", "bench", "#{pane_pid}"])
            .stdout,
    )
    .trim()
    .to_owned();
    // Wait until the console shows three healthy regions, then let it settle.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let screen =
            String::from_utf8_lossy(&tmux.run(&["capture-pane", "-p", "-t", "bench"]).stdout)
                .into_owned();
        if screen.matches("healthy").count() >= 3 {
            break;
        }
        assert!(
            Instant::now() < end,
            "the console never showed the cluster:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(&pid).expect("console's /proc stat");
    let start = Instant::now();
    std::thread::sleep(CPU_WINDOW);
    let after = cpu_ticks(&pid).expect("console's /proc stat");
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_s = (after - before) as f64 / clock_ticks_per_second() as f64;
    println!(
        "idle CPU of `geosync console` against a live 3-region cluster: {:.2} % of a core \
         ({cpu_s:.2} s CPU in {elapsed:.1} s; target < 2 %)",
        cpu_s / elapsed * 100.0
    );
    let _ = tmux.run(&["send-keys", "-t", "bench", "q"]);
}

fn main() {
    // `cargo test --benches` runs benchmarks with --bench absent: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("console bench: run with `cargo bench -p geosync --bench console`");
        return;
    }
    render_figures();
    if std::env::var_os("GEOSYNC_BENCH_RENDER_ONLY").is_none() {
        idle_cpu_figure();
    }
}
