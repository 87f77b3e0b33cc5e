//! The HTTP surface of a running cluster: metrics, sync status, quorum and
//! health on the coordinator and on a region, checked against what the test
//! observes directly; bad requests get 404/405 and the servers keep answering.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use geosync_core::config::StrategyName;
use geosync_core::model::NodeId;
use geosync_core::namespace::NewNode;
use geosync_tests::{Cluster, SETTLE, http_get, http_request, put, wait_for};
use serde_json::{Value, json};

/// The value of the sample written exactly as `series` (`name{labels}`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a sample value"))
}

fn has_family(text: &str, name: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with(&format!("# HELP {name} ")))
        && text
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {name} ")))
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_status_and_quorum_over_http() {
    let cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    let eu = cluster.region("eu").engine().clone();
    let us = cluster.region("us").engine().clone();
    let dir = eu
        .namespace
        .create(NodeId::ROOT, b"media", NewNode::directory(0o755))
        .expect("mkdir")
        .id;
    put(&eu, dir, "a.mkv", b"movie a");
    put(&eu, dir, "b.mkv", b"movie b");
    put(&eu, NodeId::ROOT, "notes.txt", b"notes");
    put(&us, NodeId::ROOT, "from-us.txt", b"hello");
    cluster.converged().await.expect("convergence");

    let node = cluster.coordinator.as_ref().expect("coordinator");
    let coordinator = node.coordinator().clone();
    let http = node.http_addr().expect("coordinator HTTP");
    assert_eq!(http, cluster.coordinator_http_addr);
    let head = coordinator.head();
    let regions = ["eu", "us"];

    // Acks follow the applies: wait until the coordinator has them all.
    let expected_versions: BTreeMap<String, Value> = regions
        .iter()
        .map(|r| {
            let applied = cluster.region(r).status().applied.load(Ordering::SeqCst);
            assert_eq!(applied, head, "region {r} applied the whole log");
            (r.to_string(), json!(applied))
        })
        .collect();
    let expected = json!({
        "epoch": coordinator.epoch(),
        "versions": expected_versions,
        "head": head,
    });
    let acked = wait_for(SETTLE, || async {
        get_json(http, "/api/sync/status").await == expected
    })
    .await;
    assert!(
        acked,
        "sync status {} != {expected}",
        get_json(http, "/api/sync/status").await
    );
    let status = get_json(http, "/api/sync/status").await;
    assert_eq!(
        status.as_object().map(|o| o.len()),
        Some(3),
        "exactly epoch, versions and head: {status}"
    );

    let quorum = get_json(http, "/api/v1/distributed/quorum").await;
    assert_eq!(
        quorum,
        json!({"total": 2, "healthy": 2, "required": 1, "sufficient": true})
    );

    // The events the log holds, per origin and op, as the test counts them.
    let mut logged: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    for e in coordinator.events_after(0, usize::MAX).expect("log") {
        *logged
            .entry((e.origin.to_string(), e.op.as_str()))
            .or_default() += 1;
    }
    assert_eq!(logged[&("eu".to_string(), "create")], 4, "{logged:?}");

    // Heartbeats report the emptied queues a moment after convergence.
    let settled = wait_for(SETTLE, || async {
        let (_, text) = http_get(http, "/metrics").await;
        regions.iter().all(|r| {
            sample(&text, &format!("sync_queue_size{{region=\"{r}\"}}")) == Some(0.0)
                && sample(&text, &format!("sync_lag_events{{region=\"{r}\"}}")) == Some(0.0)
        })
    })
    .await;
    let (code, text) = http_get(http, "/metrics").await;
    assert!(settled, "queues and lag never reached 0:\n{text}");
    assert_eq!(code, 200);
    for family in [
        "sync_events_total",
        "sync_queue_size",
        "sync_lag_seconds",
        "sync_lag_events",
        "conflicts_total",
        "sync_failures_total",
        "geosync_quorum_healthy",
        "geosync_quorum_required",
        "geosync_log_head",
        "geosync_region_state",
    ] {
        assert!(has_family(&text, family), "no {family} family in\n{text}");
    }
    for ((region, op), n) in &logged {
        let series = format!("sync_events_total{{region=\"{region}\",type=\"{op}\"}}");
        assert_eq!(sample(&text, &series), Some(*n as f64), "{series}\n{text}");
    }
    assert_eq!(
        sample(&text, "sync_events_total{region=\"eu\",type=\"create\"}"),
        Some(4.0)
    );
    assert_eq!(sample(&text, "geosync_log_head"), Some(head as f64));
    assert_eq!(sample(&text, "geosync_quorum_healthy"), Some(2.0));
    assert_eq!(sample(&text, "geosync_quorum_required"), Some(1.0));
    for r in regions {
        assert_eq!(
            sample(&text, &format!("sync_failures_total{{region=\"{r}\"}}")),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, &format!("sync_lag_seconds{{region=\"{r}\"}}")),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("geosync_region_state{{region=\"{r}\",state=\"healthy\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("geosync_region_state{{region=\"{r}\",state=\"offline\"}}")
            ),
            Some(0.0)
        );
    }

    // Each region registered the HTTP address it actually serves on.
    let view = coordinator
        .cluster(geosync_core::clock::system_ms())
        .expect("cluster view");
    for r in &view.regions {
        let addr = cluster.region_http_addr(r.record.id.as_str());
        assert_eq!(r.record.http_endpoint, format!("http://{addr}"));
    }

    // A region's own view agrees with its live status.
    for r in regions {
        let addr = cluster.region_http_addr(r);
        let s = cluster.region(r).status();
        let applied = s.applied.load(Ordering::SeqCst);
        assert_eq!(
            get_json(addr, "/api/sync/status").await,
            json!({"epoch": coordinator.epoch(), "versions": {r: applied}, "head": applied})
        );
        assert_eq!(
            cluster
                .region(r)
                .followed_epoch()
                .expect("epoch")
                .as_deref(),
            Some(coordinator.epoch())
        );
        let (code, text) = http_get(addr, "/metrics").await;
        assert_eq!(code, 200);
        let series = |name: &str| sample(&text, &format!("{name}{{region=\"{r}\"}}"));
        assert_eq!(
            sample(
                &text,
                &format!("sync_events_total{{region=\"{r}\",type=\"applied\"}}")
            ),
            Some(s.events_applied.load(Ordering::Relaxed) as f64),
            "{text}"
        );
        assert_eq!(series("sync_applied_seq"), Some(applied as f64));
        assert_eq!(
            series("sync_failures_total"),
            Some(s.push_failures.load(Ordering::Relaxed) as f64)
        );
        assert_eq!(series("sync_queue_size"), Some(0.0));
        assert_eq!(series("geosync_region_ready"), Some(1.0));
        for family in [
            "sync_events_total",
            "sync_queue_size",
            "sync_failures_total",
            "sync_applied_seq",
            "geosync_region_ready",
        ] {
            assert!(has_family(&text, family), "no {family} in\n{text}");
        }
    }

    // Health, bad paths and methods, and the servers keep answering.
    let all: Vec<SocketAddr> = std::iter::once(http)
        .chain(regions.iter().map(|r| cluster.region_http_addr(r)))
        .collect();
    for &addr in &all {
        assert_eq!(http_get(addr, "/healthz").await, (200, "ok".to_string()));
        assert_eq!(http_get(addr, "/no/such/path").await.0, 404);
        assert_eq!(http_get(addr, "/metrics/../../etc/passwd").await.0, 404);
        assert_eq!(http_get(addr, "/%ff%00").await.0, 404);
        assert_eq!(http_request(addr, "POST", "/metrics").await.0, 405);
        assert_eq!(
            http_request(addr, "DELETE", "/api/sync/status").await.0,
            405
        );
        assert_eq!(http_get(addr, "/healthz").await, (200, "ok".to_string()));
    }
    // Regions have no quorum endpoint.
    assert_eq!(http_get(all[1], "/api/v1/distributed/quorum").await.0, 404);
    let (code, metrics) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("# TYPE geosync_log_head gauge"));
    cluster.shutdown().await;
}
