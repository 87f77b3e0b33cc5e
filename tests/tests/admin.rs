//! The operator's actions through the coordinator's Admin API, on a real
//! cluster: pause and resume a region, list and drop its queued changes,
//! trigger a full resync.

use std::sync::atomic::Ordering;

use geosync_core::config::StrategyName;
use geosync_core::model::NodeId;
use geosync_core::namespace::NewNode;
use geosync_proto::v1;
use geosync_tests::{Cluster, SETTLE, wait_for};

async fn admin(cluster: &Cluster) -> v1::admin_client::AdminClient<tonic::transport::Channel> {
    v1::admin_client::AdminClient::connect(format!("http://{}", cluster.coordinator_addr))
        .await
        .expect("admin client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_region_queues_and_an_operator_drops_one_change() {
    let cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    cluster.converged().await.expect("start");
    let mut admin = admin(&cluster).await;
    admin
        .pause_region(v1::RegionRequest {
            region: "eu".into(),
        })
        .await
        .expect("pause");
    let unknown = admin
        .pause_region(v1::RegionRequest {
            region: "mars".into(),
        })
        .await;
    assert_eq!(
        unknown.expect_err("unknown region").code(),
        tonic::Code::NotFound
    );

    let eu = cluster.region("eu").engine().clone();
    eu.namespace
        .create(NodeId::ROOT, b"keep.txt", NewNode::file(0o644))
        .expect("create");
    eu.namespace
        .create(NodeId::ROOT, b"drop.txt", NewNode::file(0o644))
        .expect("create");

    // The pushes are refused while paused, so both changes wait in eu's queue.
    let list = |admin: v1::admin_client::AdminClient<tonic::transport::Channel>| async move {
        let mut admin = admin;
        let reply = admin
            .list_queue(v1::ListQueueRequest {
                region: "eu".into(),
                limit: 0,
            })
            .await;
        reply.map(|r| r.into_inner().items).unwrap_or_default()
    };
    let queued = wait_for(SETTLE, || {
        let admin = admin.clone();
        async move {
            let items = list(admin).await;
            items.len() == 2
        }
    })
    .await;
    let items = list(admin.clone()).await;
    assert!(queued, "both changes wait in eu's queue: {items:?}");
    let paths: Vec<&str> = items.iter().map(|i| i.path.as_str()).collect();
    assert!(
        paths.contains(&"/keep.txt") && paths.contains(&"/drop.txt"),
        "{paths:?}"
    );
    // The region learns of the pause and stops pushing: waiting does not
    // spend the items' attempts (which would end in dead letters).
    let paused = wait_for(SETTLE, || async {
        cluster.region("eu").status().paused.load(Ordering::SeqCst)
    })
    .await;
    assert!(paused, "eu knows it is paused");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let items = list(admin.clone()).await;
    assert!(items.iter().all(|i| i.attempts <= 1), "{items:?}");
    let view = admin
        .get_cluster(v1::WatchRequest {})
        .await
        .expect("cluster")
        .into_inner();
    assert!(view.regions.iter().any(|r| r.id == "eu" && r.paused));

    let dropped = items
        .iter()
        .find(|i| i.path == "/drop.txt")
        .expect("drop item")
        .id;
    admin
        .drop_queue_item(v1::QueueItemRequest {
            region: "eu".into(),
            id: dropped,
        })
        .await
        .expect("drop");
    let again = admin
        .drop_queue_item(v1::QueueItemRequest {
            region: "eu".into(),
            id: dropped,
        })
        .await;
    assert_eq!(
        again.expect_err("already dropped").code(),
        tonic::Code::NotFound
    );
    let keep = items
        .iter()
        .find(|i| i.path == "/keep.txt")
        .expect("keep item")
        .id;
    admin
        .retry_queue_item(v1::QueueItemRequest {
            region: "eu".into(),
            id: keep,
        })
        .await
        .expect("retry");
    admin
        .resume_region(v1::RegionRequest {
            region: "eu".into(),
        })
        .await
        .expect("resume");

    let reached = wait_for(SETTLE, || async {
        cluster.ns("us").lookup(NodeId::ROOT, b"keep.txt").is_ok()
    })
    .await;
    assert!(reached, "the kept change reached us after resume");
    assert!(
        cluster.ns("us").lookup(NodeId::ROOT, b"drop.txt").is_err(),
        "the dropped change never left eu"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_triggered_resync_rebuilds_from_a_snapshot() {
    let cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    let eu = cluster.region("eu").engine().clone();
    eu.namespace
        .create(NodeId::ROOT, b"a.txt", NewNode::file(0o644))
        .expect("create");
    cluster.converged().await.expect("first sync");
    let us = cluster.region("us");
    assert_eq!(us.status().resyncs.load(Ordering::SeqCst), 0);
    let mut admin = admin(&cluster).await;
    admin
        .trigger_resync(v1::RegionRequest {
            region: "us".into(),
        })
        .await
        .expect("resync");
    let done = wait_for(SETTLE, || async {
        us.status().resyncs.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(done, "us resynced at its next heartbeat");
    eu.namespace
        .create(NodeId::ROOT, b"b.txt", NewNode::file(0o644))
        .expect("create");
    let t = cluster
        .converged()
        .await
        .expect("converged after the resync");
    assert_eq!(t.len(), 2, "{t:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_watch_tails_logged_changes_in_order_with_their_paths() {
    let cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    cluster.converged().await.expect("start");
    let mut admin = admin(&cluster).await;
    let mut tail = admin
        .watch_events(v1::WatchEventsRequest { after: None })
        .await
        .expect("watch events")
        .into_inner();
    let eu = cluster.region("eu").engine().clone();
    let dir = eu
        .namespace
        .create(NodeId::ROOT, b"docs", NewNode::directory(0o755))
        .expect("mkdir")
        .id;
    eu.namespace
        .create(dir, b"a.txt", NewNode::file(0o644))
        .expect("create");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let next = tokio::time::timeout(SETTLE, tokio_stream::StreamExt::next(&mut tail))
            .await
            .expect("an event within the deadline")
            .expect("the stream goes on")
            .expect("an event");
        seen.push(next);
    }
    assert!(seen[0].seq < seen[1].seq, "{seen:?}");
    let paths: Vec<&str> = seen.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/docs", "/docs/a.txt"]);
    assert!(
        seen.iter()
            .all(|e| e.origin == "eu" && e.op == v1::ChangeOp::Create as i32)
    );

    // Resuming after the first event gives the second again.
    let mut again = admin
        .watch_events(v1::WatchEventsRequest {
            after: Some(seen[0].seq),
        })
        .await
        .expect("watch events")
        .into_inner();
    let first = tokio::time::timeout(SETTLE, tokio_stream::StreamExt::next(&mut again))
        .await
        .expect("within the deadline")
        .expect("an event")
        .expect("an event");
    assert_eq!(first.seq, seen[1].seq);

    // A region has no log to watch.
    let region_url = format!("http://{}", cluster.region("eu").grpc_addr());
    let mut region_admin = v1::admin_client::AdminClient::connect(region_url)
        .await
        .expect("region admin");
    let refused = region_admin
        .watch_events(v1::WatchEventsRequest { after: None })
        .await;
    assert_eq!(
        refused.expect_err("a region refuses").code(),
        tonic::Code::FailedPrecondition
    );
    cluster.shutdown().await;
}
