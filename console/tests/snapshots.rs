//! Snapshot tests of every view with representative data, at 80×24 and at a
//! large size, rendered into ratatui's `TestBackend`. The app state is built
//! the way the console builds it: through actions.
//!
//! A changed screen fails here (CI sets `CI=true`, so insta never writes);
//! review the new one with `cargo insta review` or `INSTA_UPDATE=always`.

use geosync::tui::app::{App, Options};
use geosync::tui::{Action, View, views};
use geosync_proto::v1;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

/// 2026-11-21 08:00:00 UTC, the console's clock in these tests.
const NOW: u64 = 1_795_248_000_000;

const SIZES: [(u16, u16); 2] = [(80, 24), (160, 48)];

fn region(
    id: &str,
    state: v1::RegionState,
    lag: u64,
    queue: [u64; 4],
    drift: i64,
) -> v1::RegionStatus {
    v1::RegionStatus {
        id: id.into(),
        state: state as i32,
        acked: 1200 - lag,
        lag_events: lag,
        lag_seconds: lag as f64 * 0.25,
        queue: Some(v1::QueueStats {
            pending: queue[0],
            pending_by_priority: Vec::new(),
            inflight: queue[1],
            retrying: queue[2],
            dead: queue[3],
            oldest_age_ms: None,
        }),
        clock_drift_ms: drift,
        last_heartbeat_ms: if state == v1::RegionState::Offline {
            NOW - 42_000
        } else {
            NOW - 1_200
        },
        paused: id == "ap",
        grpc_endpoint: format!("127.0.0.1:74{}", id.len()),
        http_endpoint: String::new(),
    }
}

fn cluster(head: u64, healthy: bool) -> v1::ClusterView {
    use v1::RegionState::*;
    let mut regions = vec![
        region("eu", Healthy, 0, [0, 0, 0, 0], 3),
        region("us", Healthy, 12, [4, 1, 0, 0], -18),
        region("ap", Degraded, 240, [31, 0, 2, 1], 1450),
    ];
    if !healthy {
        regions.push(region("sa", Offline, 900, [0, 0, 0, 0], 0));
        regions[2].state = Offline as i32;
    }
    let healthy_count = regions.iter().filter(|r| r.state == Healthy as i32).count() as u32;
    let required = (regions.len() as u32).div_ceil(2) + u32::from(!healthy);
    v1::ClusterView {
        epoch: "5f1c9a7e-2b4d-4e0a-9c1f-0d3b6e8a4c21".into(),
        head,
        leader: Some(v1::LeaderInfo {
            id: "coordinator-1".into(),
            term: 3,
        }),
        quorum: Some(v1::Quorum {
            total: regions.len() as u32,
            healthy: healthy_count,
            required,
            sufficient: healthy_count >= required,
        }),
        regions,
        conflicts_open: 3,
        events_total: head,
    }
}

fn version(region: &str, hash: u8, size: u64, ms: u64) -> v1::ConflictVersion {
    v1::ConflictVersion {
        region: region.into(),
        size,
        hash: vec![hash; 32],
        hlc: Some(v1::Timestamp {
            physical_ms: ms,
            logical: 0,
            region: region.into(),
        }),
        mtime_ns: (ms * 1_000_000) as i64,
        deleted: false,
    }
}

fn conflicts() -> Vec<v1::Conflict> {
    let c = |id: &str, path: &str, age_s: u64, versions: Vec<v1::ConflictVersion>| v1::Conflict {
        id: id.into(),
        path: path.into(),
        strategy: "manual".into(),
        detected_at_ms: NOW - age_s * 1000,
        versions,
        node: Vec::new(),
    };
    let mut deleted = version("us", 0, 0, NOW - 50_000);
    deleted.deleted = true;
    deleted.hash.clear();
    vec![
        c(
            "000000000000000000000000000000a1",
            "/docs/plan.txt",
            125,
            vec![
                version("eu", 0xa1, 41, NOW - 130_000),
                version("us", 0xb2, 47, NOW - 128_000),
            ],
        ),
        c(
            "000000000000000000000000000000a2",
            "/media/movie.mkv",
            3_700,
            vec![
                version("ap", 0xc3, 4 << 30, NOW - 3_800_000),
                version("eu", 0xd4, 5 << 30, NOW - 3_750_000),
            ],
        ),
        c(
            "000000000000000000000000000000a3",
            "/notes/todo.md",
            30,
            vec![version("eu", 0xe5, 12, NOW - 60_000), deleted],
        ),
    ]
}

fn queue() -> Vec<v1::QueueItem> {
    let item = |id: u64,
                p: u32,
                op: v1::ChangeOp,
                path: &str,
                attempts: u32,
                state: v1::QueueItemState,
                error: &str| v1::QueueItem {
        id,
        priority: p,
        op: op as i32,
        path: path.into(),
        attempts,
        next_attempt_ms: NOW + u64::from(attempts) * 4000,
        last_error: error.into(),
        state: state as i32,
        enqueued_at_ms: NOW - 60_000,
    };
    use v1::ChangeOp::*;
    use v1::QueueItemState::*;
    vec![
        item(41, 2, Update, "/docs/plan.txt", 0, InFlight, ""),
        item(42, 0, Delete, "/tmp/old.log", 0, Pending, ""),
        item(43, 1, Create, "/photos/2026/beach.jpg", 0, Pending, ""),
        item(
            44,
            2,
            Update,
            "/media/movie.mkv",
            3,
            Retrying,
            "coordinator unavailable: connection refused",
        ),
        item(
            45,
            3,
            Metadata,
            "/notes/todo.md",
            8,
            Dead,
            "refused: region is paused",
        ),
    ]
}

/// An app as an operator sees it after a minute with the cluster.
fn app(view: View) -> App {
    let mut app = App::new(Options {
        coordinator: "http://127.0.0.1:7400".into(),
        readonly: false,
        color: true,
    });
    app.update(Action::Tick(NOW - 20_000));
    for (i, head) in [1000u64, 1012, 1030, 1031, 1080, 1100, 1150, 1200]
        .iter()
        .enumerate()
    {
        let mut view = cluster(*head, true);
        for r in &mut view.regions {
            r.lag_events = r.lag_events * (i as u64 + 1) / 8;
        }
        app.update(Action::Cluster(view));
        app.update(Action::Tick(NOW - 16_000 + i as u64 * 2000));
    }
    let changes = [
        (
            1198,
            v1::ChangeOp::Create,
            "/photos/2026/beach.jpg",
            "us",
            2_400_000,
        ),
        (1199, v1::ChangeOp::Update, "/docs/plan.txt", "eu", 41),
        (1200, v1::ChangeOp::Delete, "/tmp/old.log", "ap", 0),
    ];
    for (seq, op, path, origin, size) in changes {
        app.update(Action::Change(v1::LoggedEvent {
            seq,
            op: op as i32,
            path: path.into(),
            origin: origin.into(),
            hlc: None,
            size,
        }));
    }
    app.update(Action::Tick(NOW));
    app.update(Action::Conflicts(Ok(conflicts())));
    app.update(Action::Content {
        hash: vec![0xa1; 32],
        data: Ok(b"goals\nship the console\nreview: Friday\n".to_vec()),
    });
    app.update(Action::Content {
        hash: vec![0xb2; 32],
        data: Ok(b"goals\nship the console\nreview: Thursday\nretro\n".to_vec()),
    });
    app.update(Action::Command("queue ap".into()));
    app.update(Action::Queue {
        region: "ap".into(),
        items: Ok(queue()),
    });
    app.update(Action::Done {
        operation: geosync::tui::Operation::Pause("ap".into()),
        result: Ok(()),
    });
    app.update(Action::Show(view));
    app.update(Action::Tick(NOW));
    app.message = None;
    app
}

fn render(app: &App, (w, h): (u16, u16)) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    terminal.draw(|f| views::render(f, app)).expect("draw");
    terminal.backend().to_string()
}

fn snapshot(name: &str, app: &App) {
    for size in SIZES {
        insta::assert_snapshot!(format!("{name}_{}x{}", size.0, size.1), render(app, size));
    }
}

#[test]
fn overview() {
    snapshot("overview", &app(View::Overview));
}

#[test]
fn overview_with_quorum_lost() {
    let mut a = app(View::Overview);
    a.update(Action::Cluster(cluster(1210, false)));
    snapshot("overview_quorum_lost", &a);
}

#[test]
fn queues() {
    let mut a = app(View::Queues);
    a.update(Action::Down);
    a.update(Action::Down);
    a.update(Action::Down);
    snapshot("queues", &a);
}

#[test]
fn queue_drop_confirmation_names_the_item() {
    let mut a = app(View::Queues);
    a.update(Action::Bottom);
    a.update(Action::Drop);
    snapshot("queue_drop_confirmation", &a);
}

#[test]
fn conflicts_with_a_line_diff() {
    let mut a = app(View::Conflicts);
    a.update(Action::Right);
    snapshot("conflicts", &a);
}

#[test]
fn conflicts_filtered_with_bulk_preview() {
    let mut a = app(View::Conflicts);
    a.update(Action::BeginFilter);
    for c in ".".chars() {
        a.update(Action::Input(c));
    }
    a.update(Action::Submit);
    a.update(Action::Command("bulk keep us".into()));
    snapshot("conflicts_bulk_preview", &a);
}

#[test]
fn cluster_view() {
    snapshot("cluster", &app(View::Cluster));
}

#[test]
fn events() {
    snapshot("events", &app(View::Events));
}

#[test]
fn key_table() {
    let mut a = app(View::Conflicts);
    a.update(Action::ToggleHelp);
    snapshot("help", &a);
}

#[test]
fn disconnected_and_readonly() {
    let mut a = app(View::Overview);
    a.options.readonly = true;
    a.update(Action::Disconnected(
        "transport error: connection refused".into(),
    ));
    a.update(Action::TogglePause);
    snapshot("disconnected_readonly", &a);
}

#[test]
fn no_color_renders_the_same_text_without_colours() {
    let mut colour = app(View::Overview);
    let mut plain = colour.clone();
    plain.options.color = false;
    colour.options.color = true;
    let draw = |app: &App| {
        let mut t = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
        t.draw(|f| views::render(f, app)).expect("draw");
        t.backend().buffer().clone()
    };
    let (c, p) = (draw(&colour), draw(&plain));
    assert!(
        c.content()
            .iter()
            .any(|cell| cell.fg != ratatui::style::Color::Reset)
    );
    assert!(
        p.content()
            .iter()
            .all(|cell| cell.fg == ratatui::style::Color::Reset
                && cell.bg == ratatui::style::Color::Reset)
    );
    let text = |b: &ratatui::buffer::Buffer| {
        b.content()
            .iter()
            .map(|c| c.symbol().to_owned())
            .collect::<String>()
    };
    assert_eq!(text(&c), text(&p));
}

#[test]
fn tiny_and_odd_sizes_do_not_panic() {
    for view in View::ALL {
        let mut a = app(view);
        a.update(Action::ToggleHelp);
        for size in [(1, 1), (10, 3), (33, 7), (79, 23), (300, 100)] {
            render(&a, size);
        }
    }
}

fn strm_run(
    id: u64,
    job: &str,
    state: &str,
    counts: [u64; 6],
    ago_ms: u64,
) -> geosync::strm_api::Run {
    let [scanned, written, unchanged, skipped, deleted, failed] = counts;
    let active = matches!(state, "queued" | "running");
    geosync::strm_api::Run {
        id,
        job: job.into(),
        strategy: "full".into(),
        trigger: if id.is_multiple_of(2) {
            "console"
        } else {
            "schedule"
        }
        .into(),
        state: state.into(),
        counts: geosync::strm_api::Counts {
            scanned,
            written,
            unchanged,
            skipped,
            deleted,
            failed,
        },
        errors: if state == "failed" {
            vec!["source /srv/tv: permission denied".into()]
        } else {
            Vec::new()
        },
        held: if state == "held" { 240 } else { 0 },
        confirmed_by: None,
        created_ms: NOW - ago_ms - 1_000,
        started_ms: Some(NOW - ago_ms),
        finished_ms: (!active).then_some(NOW - ago_ms + 500),
    }
}

/// The app on the STRM view: region eu runs two jobs (one running, one with
/// a held cleanup), us runs none, ap's API is unreachable.
fn strm_app() -> App {
    use geosync::tui::action::StrmSnapshot;
    let mut a = app(View::Strm);
    let mut view = cluster(1200, true);
    for (i, r) in view.regions.iter_mut().enumerate() {
        r.http_endpoint = format!("http://127.0.0.1:841{i}");
    }
    a.update(Action::Cluster(view));
    let runs = vec![
        strm_run(42, "media", "running", [1830, 12, 1790, 0, 0, 0], 12_000),
        strm_run(41, "media", "done", [5210, 3, 5207, 0, 1, 0], 3_600_000),
        strm_run(39, "movies", "held", [880, 0, 640, 0, 0, 0], 7_200_000),
        strm_run(38, "tv", "failed", [0, 0, 0, 0, 0, 1], 9_000_000),
    ];
    let job = |name: &str, source: &str, mode: &str, last: Option<usize>| geosync::strm_api::Job {
        name: name.into(),
        source: source.into(),
        output: format!("/strm/{name}"),
        mode: mode.into(),
        strategy: "full".into(),
        last_run: last.map(|i| runs[i].clone()),
    };
    let jobs = vec![
        job("media", "/srv/media", "local", Some(0)),
        job(
            "movies",
            "openlist http://alist:5244/movies",
            "openlist",
            Some(2),
        ),
        job("tv", "/srv/tv", "local", Some(3)),
    ];
    a.update(Action::Strm {
        region: "eu".into(),
        result: Ok(StrmSnapshot { jobs, runs }),
    });
    a.update(Action::Strm {
        region: "us".into(),
        result: Ok(StrmSnapshot::default()),
    });
    a.update(Action::Strm {
        region: "ap".into(),
        result: Err("cannot reach the region at http://127.0.0.1:8412".into()),
    });
    a.update(Action::Tick(NOW));
    a
}

#[test]
fn strm() {
    snapshot("strm", &strm_app());
}

#[test]
fn strm_confirm_cleanup_names_the_run_job_and_deletions() {
    let mut a = strm_app();
    a.update(Action::Down);
    a.update(Action::StrmConfirm);
    let c = a.confirmation.as_ref().expect("a confirmation");
    assert!(
        c.question.contains("run 39") && c.question.contains("movies"),
        "{}",
        c.question
    );
    assert!(c.question.contains("240"), "{}", c.question);
    snapshot("strm_confirm_cleanup", &a);
}

#[test]
fn strm_actions_need_a_target_and_readonly_refuses_them() {
    let mut a = strm_app();
    // media has no held cleanup; tv has no active run.
    a.update(Action::StrmConfirm);
    assert!(a.confirmation.is_none());
    a.update(Action::Bottom);
    a.update(Action::StrmCancel);
    assert!(a.confirmation.is_none());
    a.update(Action::Top);
    a.update(Action::StrmCancel);
    assert!(
        a.confirmation
            .as_ref()
            .is_some_and(|c| c.question.contains("cancel run 42")),
        "{:?}",
        a.confirmation
    );
    a.update(Action::Escape);
    a.options.readonly = true;
    a.update(Action::StrmRun("full"));
    assert!(a.confirmation.is_none());
    assert!(
        a.message
            .as_ref()
            .is_some_and(|m| m.text.contains("read-only")),
        "{:?}",
        a.message
    );
}
