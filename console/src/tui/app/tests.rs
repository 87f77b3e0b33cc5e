//! The app state's rules, without a network: selection, filters, read-only
//! refusals, confirmations and bulk previews.

use geosync_proto::v1;

use super::*;

fn options(readonly: bool) -> Options {
    Options {
        coordinator: "http://127.0.0.1:1".into(),
        readonly,
        color: true,
    }
}

fn conflict(id: &str, path: &str, regions: &[&str]) -> v1::Conflict {
    v1::Conflict {
        id: id.into(),
        path: path.into(),
        strategy: "manual".into(),
        detected_at_ms: 1,
        versions: regions
            .iter()
            .map(|r| v1::ConflictVersion {
                region: (*r).into(),
                size: 3,
                ..Default::default()
            })
            .collect(),
        node: Vec::new(),
    }
}

fn app_with_conflicts(readonly: bool) -> App {
    let mut app = App::new(options(readonly));
    app.update(Action::Show(View::Conflicts));
    app.update(Action::Conflicts(Ok(vec![
        conflict("a", "/a.txt", &["eu", "us"]),
        conflict("b", "/b.txt", &["eu", "us"]),
        conflict("c", "/c.txt", &["us", "ap"]),
    ])));
    app
}

#[test]
fn the_selection_follows_its_item_across_refreshes() {
    let mut app = app_with_conflicts(false);
    app.update(Action::Down);
    assert_eq!(app.selected_conflict().map(|c| c.id.as_str()), Some("b"));
    // "a" goes away and a new one arrives first: still "b".
    app.update(Action::Conflicts(Ok(vec![
        conflict("z", "/z.txt", &["eu", "us"]),
        conflict("b", "/b.txt", &["eu", "us"]),
        conflict("c", "/c.txt", &["us", "ap"]),
    ])));
    assert_eq!(app.selected_conflict().map(|c| c.id.as_str()), Some("b"));
    // "b" goes away: the row number stays.
    app.update(Action::Conflicts(Ok(vec![
        conflict("z", "/z.txt", &["eu", "us"]),
        conflict("c", "/c.txt", &["us", "ap"]),
    ])));
    assert_eq!(app.selected_conflict().map(|c| c.id.as_str()), Some("c"));
}

#[test]
fn readonly_refuses_every_action_with_a_message() {
    let mut app = app_with_conflicts(true);
    for action in [
        Action::Activate,
        Action::KeepBoth,
        Action::Merge,
        Action::Bulk(Choice::Both),
        Action::Command("pause eu".into()),
        Action::Command("resync eu".into()),
    ] {
        let requests = app.update(action.clone());
        assert!(requests.is_empty(), "{action:?}");
        assert!(app.confirmation.is_none(), "{action:?}");
        let m = app.message.clone().expect("a message");
        assert_eq!(m.level, Level::Error);
        assert!(m.text.contains(strings::READONLY_REFUSED), "{m:?}");
    }
}

#[test]
fn a_confirmation_names_its_target_and_runs_only_on_yes() {
    let mut app = app_with_conflicts(false);
    app.update(Action::Right);
    assert!(app.update(Action::Activate).is_empty());
    let c = app.confirmation.clone().expect("asks first");
    assert!(
        c.question.contains("/a.txt") && c.question.contains("us"),
        "{c:?}"
    );
    // A refresh between question and answer does not change the target.
    app.update(Action::Conflicts(Ok(vec![conflict(
        "c",
        "/c.txt",
        &["us", "ap"],
    )])));
    let requests = app.update(Action::Confirm);
    assert_eq!(
        requests,
        vec![Request::Run(vec![Operation::Resolve {
            id: "a".into(),
            path: "/a.txt".into(),
            choice: Choice::Keep("us".into()),
        }])]
    );
    app.update(Action::KeepBoth);
    app.update(Action::Escape);
    assert!(app.confirmation.is_none());
    assert!(
        app.update(Action::Confirm).is_empty(),
        "no means nothing runs"
    );
}

#[test]
fn bulk_resolution_previews_each_item_and_skips_what_cannot_apply() {
    let mut app = app_with_conflicts(false);
    app.update(Action::BeginFilter);
    for ch in "txt".chars() {
        app.update(Action::Input(ch));
    }
    app.update(Action::Submit);
    assert_eq!(app.filter(View::Conflicts), "txt");
    app.update(Action::Command("bulk keep eu".into()));
    let c = app.confirmation.clone().expect("preview");
    assert_eq!(c.operations.len(), 2);
    assert!(c.details.iter().any(|d| d.contains("skip /c.txt")), "{c:?}");
    assert!(c.question.contains("1 skipped"), "{c:?}");
}

#[test]
fn an_unknown_command_says_so_and_changes_nothing() {
    let mut app = app_with_conflicts(false);
    let before = app.view;
    assert!(app.update(Action::Command("frobnicate".into())).is_empty());
    assert_eq!(app.view, before);
    assert!(
        app.message
            .expect("message")
            .text
            .contains("unknown command")
    );
}

#[test]
fn a_failed_content_fetch_is_retried_on_a_move_not_every_second() {
    let mut app = App::new(options(false));
    app.update(Action::Show(View::Conflicts));
    let mut c = conflict("a", "/a.txt", &["eu"]);
    c.versions[0].hash = vec![7; 32];
    app.update(Action::Conflicts(Ok(vec![c])));
    let loads = |requests: &[Request]| {
        requests
            .iter()
            .filter(|r| matches!(r, Request::LoadContent { .. }))
            .count()
    };
    let view = v1::ClusterView {
        regions: vec![v1::RegionStatus {
            id: "eu".into(),
            grpc_endpoint: "127.0.0.1:1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    // No region known yet: nothing to fetch from. Then one fetch.
    assert_eq!(app.contents.len(), 0);
    assert_eq!(loads(&app.update(Action::Cluster(view.clone()))), 1);
    assert_eq!(
        loads(&app.update(Action::Cluster(view.clone()))),
        0,
        "in flight"
    );
    app.update(Action::Content {
        hash: vec![7; 32],
        data: Err("unreachable".into()),
    });
    assert_eq!(
        loads(&app.update(Action::Cluster(view))),
        0,
        "not every second"
    );
    assert_eq!(loads(&app.update(Action::Down)), 1, "again on a move");
}

#[test]
fn bulk_keep_chosen_keeps_the_chosen_versions_region_across_the_filtered_set() {
    let mut app = app_with_conflicts(false);
    app.update(Action::Right);
    app.update(Action::BulkKeepChosen);
    let c = app.confirmation.clone().expect("preview");
    assert!(c.question.contains("keep us's version"), "{c:?}");
    assert_eq!(
        c.operations.len(),
        3,
        "every conflict has a version from us"
    );
}
