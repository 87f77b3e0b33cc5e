//! Bad input on the gRPC surfaces: a clear error, the server keeps running,
//! and nothing changes.

use geosync_core::config::StrategyName;
use geosync_core::model::NodeId;
use geosync_core::namespace::NewNode;
use geosync_proto::v1;
use geosync_tests::Cluster;
use tonic::Code;

fn queued(engine: &geosync_core::Engine) -> Vec<v1::ChangeEvent> {
    let items = engine.queue.take(usize::MAX, u64::MAX).expect("take");
    items
        .iter()
        .map(|i| {
            v1::ChangeEvent::from(
                &geosync_core::model::ChangeEvent::decode(&i.payload).expect("decode"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_coordinator_refuses_bad_input_and_keeps_serving() {
    let cluster = Cluster::start(&["eu"], StrategyName::Lww).await;
    cluster.converged().await.expect("start");
    let url = format!("http://{}", cluster.coordinator_addr);
    let mut client = v1::coordinator_client::CoordinatorClient::connect(url)
        .await
        .expect("client")
        .max_encoding_message_size(64 << 20);
    let head = |c: &Cluster| {
        c.coordinator
            .as_ref()
            .expect("coordinator")
            .coordinator()
            .head()
    };
    let before = head(&cluster);

    // A region id that is not one, and one that never registered.
    let bad = client
        .push(v1::PushRequest {
            region: "EU!".into(),
            events: vec![],
        })
        .await;
    assert_eq!(
        bad.expect_err("bad region id").code(),
        Code::InvalidArgument
    );
    let unknown = client
        .push(v1::PushRequest {
            region: "mars".into(),
            events: vec![],
        })
        .await;
    assert_eq!(unknown.expect_err("unknown region").code(), Code::NotFound);

    // A malformed event is refused alone; its good neighbour lands.
    let scratch = tempfile::tempdir().expect("dir");
    let mut ns = geosync_core::namespace::NamespaceConfig::new(
        geosync_core::clock::RegionId::new("eu").expect("id"),
    );
    ns.policy = cluster.conflicts.policy();
    let writer =
        geosync_core::Engine::in_memory(scratch.path(), geosync_core::EngineConfig::new(ns), None)
            .expect("engine");
    writer
        .namespace
        .create(NodeId::ROOT, b"fine.txt", NewNode::file(0o644))
        .expect("create");
    let good = queued(&writer).remove(0);
    let mut broken = good.clone();
    broken.node = vec![1, 2, 3];
    let mut traversal = good.clone();
    traversal.node = vec![9; 16];
    if let Some(meta) = traversal.version.as_mut().and_then(|v| v.meta.as_mut()) {
        meta.name = b"..".to_vec();
    }
    let reply = client
        .push(v1::PushRequest {
            region: "eu".into(),
            events: vec![broken, good, traversal],
        })
        .await
        .expect("push")
        .into_inner();
    use v1::event_outcome::Status as S;
    let statuses: Vec<S> = reply.outcomes.iter().map(|o| o.status()).collect();
    assert_eq!(statuses, [S::Rejected, S::Accepted, S::Rejected]);
    assert!(
        reply.outcomes[0].error.contains("node id must be 16 bytes"),
        "{}",
        reply.outcomes[0].error
    );
    assert!(
        reply.outcomes[2].error.contains("name"),
        "{}",
        reply.outcomes[2].error
    );
    assert_eq!(head(&cluster), before + 1, "only the good event was logged");

    // An oversized message is refused by the transport.
    let huge = v1::ChangeEvent {
        node: vec![0; 20 << 20],
        ..Default::default()
    };
    let big = client
        .push(v1::PushRequest {
            region: "eu".into(),
            events: vec![huge],
        })
        .await;
    assert_eq!(big.expect_err("oversized").code(), Code::OutOfRange);

    // A subscription from another epoch, an ack beyond the head.
    let sub = client
        .subscribe(v1::SubscribeRequest {
            region: "eu".into(),
            after_seq: 0,
            epoch: "not-the-epoch".into(),
        })
        .await;
    assert_eq!(
        sub.expect_err("wrong epoch").code(),
        Code::FailedPrecondition
    );
    let ack = client
        .ack(v1::AckRequest {
            region: "eu".into(),
            seq: 1_000_000,
        })
        .await;
    assert_eq!(ack.expect_err("beyond head").code(), Code::OutOfRange);

    // Still serving, nothing else changed.
    let status = client
        .get_sync_status(v1::SyncStatusRequest {
            region: "eu".into(),
        })
        .await
        .expect("status");
    assert_eq!(status.into_inner().head, before + 1);
    cluster.converged().await.expect("cluster still converges");
    cluster.shutdown().await;
}
