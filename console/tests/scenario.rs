//! The console against a live in-process cluster, driven with key events
//! through the real key table, app and backend (only the terminal is left
//! out; `tmux.rs` covers that): resolving a conflict, dropping a queue item,
//! read-only mode, and a coordinator that goes away and comes back.

use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use geosync::tui::app::{App, Connection, Level, Options};
use geosync::tui::{Console, View, views};
use geosync_core::config::{ConflictConfig, StrategyName};
use geosync_core::model::NodeId;
use geosync_core::namespace::NewNode;
use geosync_tests::{Cluster, SETTLE, put, wait_for};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn console(cluster: &Cluster, readonly: bool) -> Console {
    Console::start(Options {
        coordinator: format!("http://{}", cluster.coordinator_addr),
        readonly,
        color: false,
    })
    .expect("console")
}

fn press(console: &mut Console, code: KeyCode) {
    assert!(
        console.key(KeyEvent::new(code, KeyModifiers::NONE)),
        "{code:?} means nothing in {:?}",
        console.app.view
    );
}

fn screen(app: &App) -> String {
    let mut t = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
    t.draw(|f| views::render(f, app)).expect("draw");
    t.backend().to_string()
}

async fn settle(console: &mut Console, what: &str, done: impl Fn(&App) -> bool) {
    assert!(
        console.settle(SETTLE, done).await,
        "{what}: not within {SETTLE:?}\n{}",
        screen(&console.app)
    );
}

/// eu and us write `/doc.txt` concurrently (us while cut off) under the
/// manual strategy, so a conflict waits for the operator.
async fn manual_conflict() -> Cluster {
    let manual = ConflictConfig {
        default: StrategyName::Manual,
        ..Default::default()
    };
    let mut cluster = Cluster::start_with(&["eu", "us"], manual).await;
    let eu = cluster.region("eu").engine().clone();
    put(&eu, NodeId::ROOT, "doc.txt", b"base");
    cluster.converged().await.expect("first sync");
    cluster.stop_region("us").await;
    put(&eu, NodeId::ROOT, "doc.txt", b"from eu\n");
    cluster.offline("us", |offline| {
        put(offline, NodeId::ROOT, "doc.txt", b"from us\n")
    });
    cluster.start_region("us").await;
    cluster.converged().await.expect("both versions everywhere");
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_keeps_one_side_of_a_conflict_and_every_region_converges_to_it() {
    let cluster = manual_conflict().await;
    let mut c = console(&cluster, false);
    settle(&mut c, "connected", |a| a.cluster.is_some()).await;
    press(&mut c, KeyCode::Char('3'));
    settle(&mut c, "the conflict listed", |a| a.conflicts.len() == 1).await;
    // The detail pane fetches both versions for the diff.
    settle(&mut c, "the diff", |a| {
        screen(a).contains("- from eu") && screen(a).contains("+ from us")
    })
    .await;
    // Versions are in region order (eu, us): choose us's and keep it.
    press(&mut c, KeyCode::Right);
    assert_eq!(
        c.app.selected_version().map(|v| v.region.as_str()),
        Some("us")
    );
    press(&mut c, KeyCode::Enter);
    let question = c.app.confirmation.clone().expect("asks first").question;
    assert!(
        question.contains("/doc.txt") && question.contains("keep us"),
        "{question}"
    );
    assert!(screen(&c.app).contains("/doc.txt: keep us's version?"));
    press(&mut c, KeyCode::Char('y'));
    settle(&mut c, "the resolution done", |a| {
        a.message
            .as_ref()
            .is_some_and(|m| m.text.starts_with("done: resolve /doc.txt"))
    })
    .await;
    settle(&mut c, "the list emptied", |a| a.conflicts.is_empty()).await;
    c.shutdown().await;

    let resolved = wait_for(SETTLE, || async {
        ["eu", "us"]
            .iter()
            .all(|r| cluster.ns(r).conflicts().is_ok_and(|c| c.is_empty()))
    })
    .await;
    assert!(resolved, "the resolution reached every region");
    cluster.converged().await.expect("converged on the choice");
    let eu = cluster.region("eu").engine().clone();
    let f = eu
        .namespace
        .lookup(NodeId::ROOT, b"doc.txt")
        .expect("doc")
        .id;
    let expected = eu.content.put_bytes(b"from us\n").expect("hash");
    for r in ["eu", "us"] {
        assert_eq!(
            cluster.ns(r).get(f).expect("node").meta.content,
            Some(expected),
            "{r} holds us's version"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_drops_a_queue_item_after_a_confirmation_naming_it() {
    let cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    cluster.converged().await.expect("start");
    let mut c = console(&cluster, false);
    settle(&mut c, "connected", |a| {
        a.cluster.as_ref().is_some_and(|v| v.regions.len() == 2)
    })
    .await;

    // Pause eu from the Overview (regions are in id order: eu first).
    assert_eq!(c.app.selected_region().map(|r| r.id.as_str()), Some("eu"));
    press(&mut c, KeyCode::Char('p'));
    assert!(screen(&c.app).contains("pause region eu?"));
    press(&mut c, KeyCode::Char('y'));
    settle(&mut c, "eu paused", |a| {
        a.cluster
            .as_ref()
            .is_some_and(|v| v.regions.iter().any(|r| r.id == "eu" && r.paused))
    })
    .await;

    let eu = cluster.region("eu").engine().clone();
    for name in [&b"keep.txt"[..], b"drop.txt"] {
        eu.namespace
            .create(NodeId::ROOT, name, NewNode::file(0o644))
            .expect("create");
    }
    press(&mut c, KeyCode::Enter);
    assert_eq!(c.app.view, View::Queues);
    assert_eq!(c.app.queue_region.as_deref(), Some("eu"));
    settle(&mut c, "both items queued", |a| a.queue.len() == 2).await;
    while c.app.selected_item().is_some_and(|i| i.path != "/drop.txt") {
        press(&mut c, KeyCode::Down);
    }
    let item = c.app.selected_item().expect("drop.txt's item").id;
    press(&mut c, KeyCode::Char('d'));
    let question = c.app.confirmation.clone().expect("asks first").question;
    assert!(
        question.contains(&format!("drop item {item} (/drop.txt) of region eu")),
        "{question}"
    );
    press(&mut c, KeyCode::Char('y'));
    settle(&mut c, "the item gone", |a| {
        a.queue.len() == 1 && a.queue[0].path == "/keep.txt"
    })
    .await;

    press(&mut c, KeyCode::Char('p'));
    assert!(
        c.app
            .confirmation
            .as_ref()
            .is_some_and(|q| q.question.contains("resume region eu"))
    );
    press(&mut c, KeyCode::Char('y'));
    let reached = wait_for(SETTLE, || async {
        cluster.ns("us").lookup(NodeId::ROOT, b"keep.txt").is_ok()
    })
    .await;
    assert!(reached, "the kept change reached us after the resume");
    assert!(
        cluster.ns("us").lookup(NodeId::ROOT, b"drop.txt").is_err(),
        "the dropped change never left eu"
    );
    // The Events view tails the logged change, and its filter narrows the tail.
    settle(&mut c, "the change event in the tail", |a| {
        a.events
            .iter()
            .any(|e| e.text.contains("create /keep.txt from eu"))
    })
    .await;
    press(&mut c, KeyCode::Char('5'));
    press(&mut c, KeyCode::Char('/'));
    for ch in "keep.txt".chars() {
        c.key(KeyEvent::new(KeyCode::Char(ch), KeyModifiers::NONE));
    }
    press(&mut c, KeyCode::Enter);
    let shown: Vec<&str> = c
        .app
        .visible_events()
        .into_iter()
        .map(|i| c.app.events[i].text.as_str())
        .collect();
    assert!(
        !shown.is_empty() && shown.iter().all(|t| t.contains("keep.txt")),
        "{shown:?}"
    );
    assert!(screen(&c.app).contains("filter: /keep.txt"));
    c.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readonly_refuses_actions_and_a_dead_coordinator_shows_and_recovers() {
    let mut cluster = Cluster::start(&["eu"], StrategyName::Lww).await;
    let mut c = console(&cluster, true);
    // Connected, and eu registered (a first view may come before that).
    settle(&mut c, "connected", |a| {
        a.connection == Connection::Connected
            && a.cluster
                .as_ref()
                .is_some_and(|v| v.regions.iter().any(|r| r.id == "eu"))
    })
    .await;
    for (view, key) in [
        (KeyCode::Char('1'), KeyCode::Char('p')),
        (KeyCode::Char('1'), KeyCode::Char('s')),
        (KeyCode::Char('2'), KeyCode::Char('p')),
    ] {
        press(&mut c, view);
        press(&mut c, key);
        assert!(c.app.confirmation.is_none());
        let m = c.app.message.clone().expect("a refusal");
        assert_eq!(m.level, Level::Error);
        assert!(m.text.starts_with("read-only console: refused"), "{m:?}");
    }
    assert!(screen(&c.app).contains("[read-only]"));
    // Nothing reached the coordinator.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.drain_news();
    assert!(
        c.app
            .cluster
            .as_ref()
            .is_some_and(|v| v.regions.iter().all(|r| !r.paused))
    );

    cluster.stop_coordinator().await;
    settle(&mut c, "shown disconnected", |a| {
        matches!(a.connection, Connection::Disconnected(_))
    })
    .await;
    assert!(
        screen(&c.app).contains("disconnected — retrying"),
        "{}",
        screen(&c.app)
    );
    // Keys still work while disconnected.
    press(&mut c, KeyCode::Char('5'));
    press(&mut c, KeyCode::Char('1'));

    cluster.restart_coordinator(false).await;
    settle(&mut c, "reconnected", |a| {
        a.connection == Connection::Connected
    })
    .await;
    settle(&mut c, "the region back in view", |a| {
        a.cluster
            .as_ref()
            .is_some_and(|v| v.regions.iter().any(|r| r.id == "eu"))
    })
    .await;
    assert!(!screen(&c.app).contains("disconnected"));
    assert!(
        c.app
            .events
            .iter()
            .any(|e| e.text.contains("reachable again")),
        "the events log the recovery"
    );
    c.shutdown().await;
    cluster.shutdown().await;
}

/// eu runs STRM job `media` over a local folder, us runs none: the STRM view
/// shows both, `r` runs the job after a confirmation naming it, and the run
/// is followed to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_strm_job_from_the_strm_view_and_sees_it_finish() {
    use geosync_core::config::{JobConfig, SourceConfig, StrmConfig};
    let source = tempfile::tempdir().expect("source dir");
    std::fs::write(source.path().join("film.mkv"), b"not really a film").expect("write");
    std::fs::write(source.path().join("show.mp4"), b"nor a show").expect("write");
    let strm = |jobs| StrmConfig {
        secret: Some("console-test-secret-0123456789".into()),
        public_url: None,
        webhook_token: None,
        jobs,
    };
    let job = JobConfig::new(
        "media",
        SourceConfig::Local {
            path: source.path().to_path_buf(),
            download_url: None,
        },
        "/strm/media",
    );
    let mut cluster = Cluster::start(&[], StrategyName::Lww).await;
    let eu = strm(vec![job]);
    cluster.start_region_with("eu", |r| r.strm = eu).await;
    cluster
        .start_region_with("us", |r| r.strm = strm(Vec::new()))
        .await;
    let mut console = console(&cluster, false);
    settle(&mut console, "both regions registered", |a| {
        a.strm_regions().len() == 2
    })
    .await;
    press(&mut console, KeyCode::Char('6'));
    assert_eq!(console.app.view, View::Strm);
    settle(&mut console, "the jobs of both regions", |a| {
        let loaded = |r: &str| a.strm.get(r).and_then(|s| s.snapshot.as_ref());
        loaded("eu").is_some_and(|s| s.jobs.len() == 1) && loaded("us").is_some()
    })
    .await;
    let shown = screen(&console.app);
    assert!(shown.contains("media"), "{shown}");
    assert!(shown.contains("region us: no STRM jobs"), "{shown}");

    press(&mut console, KeyCode::Char('r'));
    let question = console
        .app
        .confirmation
        .as_ref()
        .map(|c| c.question.clone())
        .expect("a run asks first");
    assert!(
        question.contains("job media (full) in region eu"),
        "{question}"
    );
    press(&mut console, KeyCode::Char('y'));
    settle(&mut console, "the console's run of media is done", |a| {
        a.strm_runs_of("eu", "media")
            .any(|r| r.trigger == "console" && r.state == "done" && r.counts.written == 2)
    })
    .await;
    let shown = screen(&console.app);
    assert!(shown.contains("done"), "{shown}");
    console.shutdown().await;
    cluster.shutdown().await;
}
