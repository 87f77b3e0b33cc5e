//! Replication scenarios: a real coordinator and real regions talking gRPC on
//! loopback, each with its own data directory.

use std::sync::atomic::Ordering;

use geosync_core::Engine;
use geosync_core::config::StrategyName;
use geosync_core::model::NodeId;
use geosync_core::namespace::{NewNode, RenameMode};
use geosync_proto::v1;
use geosync_tests::{Cluster, SETTLE, put, tree, wait_for};

fn mkdir(engine: &Engine, parent: NodeId, name: &str) -> NodeId {
    engine
        .namespace
        .create(parent, name.as_bytes(), NewNode::directory(0o755))
        .expect("mkdir")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_regions_converge() {
    let cluster = Cluster::start(&["eu", "us", "ap"], StrategyName::Lww).await;
    let eu = cluster.region("eu").engine().clone();
    let media = mkdir(&eu, NodeId::ROOT, "media");
    put(&eu, media, "a.mkv", b"movie a");
    cluster.converged().await.expect("first sync");

    let us = cluster.region("us").engine().clone();
    let ap = cluster.region("ap").engine().clone();
    let media_us = us
        .namespace
        .lookup(NodeId::ROOT, b"media")
        .expect("media in us")
        .id;
    put(&us, media_us, "b.mkv", b"movie b");
    let docs = mkdir(&ap, NodeId::ROOT, "docs");
    put(&ap, docs, "notes.txt", b"notes");
    us.namespace
        .rename(
            media_us,
            b"a.mkv",
            media_us,
            b"renamed.mkv",
            RenameMode::Replace,
        )
        .expect("rename");
    let t = cluster.converged().await.expect("convergence");
    let paths: Vec<String> = t
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/docs",
            "/docs/notes.txt",
            "/media",
            "/media/b.mkv",
            "/media/renamed.mkv"
        ]
    );

    ap.namespace.unlink(docs, b"notes.txt").expect("unlink");
    ap.namespace.rmdir(NodeId::ROOT, b"docs").expect("rmdir");
    let t = cluster
        .converged()
        .await
        .expect("convergence after deletes");
    assert_eq!(t.len(), 3, "{t:?}");
    // Every region holds the same content hashes (the tree shows them).
    assert_eq!(tree(&eu.namespace), tree(&ap.namespace));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_region_catches_up_and_pushes_its_offline_writes() {
    let mut cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    let eu = cluster.region("eu").engine().clone();
    put(&eu, NodeId::ROOT, "before.txt", b"1");
    cluster.converged().await.expect("first sync");

    cluster.stop_region("us").await;
    put(&eu, NodeId::ROOT, "while-away.txt", b"2");
    // The offline region keeps working locally (its own queue).
    cluster.offline("us", |offline| {
        put(offline, NodeId::ROOT, "offline.txt", b"3")
    });
    cluster.start_region("us").await;
    let t = cluster.converged().await.expect("catch up");
    let paths: Vec<String> = t
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(paths, ["/before.txt", "/offline.txt", "/while-away.txt"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_restart_keeps_the_epoch_and_regions_catch_up() {
    let mut cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    let eu = cluster.region("eu").engine().clone();
    put(&eu, NodeId::ROOT, "one.txt", b"1");
    cluster.converged().await.expect("first sync");
    let epoch = cluster
        .coordinator
        .as_ref()
        .expect("coordinator")
        .coordinator()
        .epoch()
        .to_owned();

    cluster.stop_coordinator().await;
    // Written while the coordinator is down: queued, pushed later.
    put(&eu, NodeId::ROOT, "two.txt", b"2");
    cluster.restart_coordinator(false).await;
    let c = cluster
        .coordinator
        .as_ref()
        .expect("coordinator")
        .coordinator()
        .clone();
    assert_eq!(c.epoch(), epoch, "the log was kept: same epoch");
    let t = cluster.converged().await.expect("catch up after restart");
    assert_eq!(t.len(), 2, "{t:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_coordinator_means_a_new_epoch_a_full_resync_and_nothing_lost() {
    let mut cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    let eu = cluster.region("eu").engine().clone();
    let us = cluster.region("us").engine().clone();
    put(&eu, NodeId::ROOT, "eu.txt", b"eu");
    put(&us, NodeId::ROOT, "us.txt", b"us");
    cluster.converged().await.expect("first sync");
    let old_epoch = cluster
        .coordinator
        .as_ref()
        .expect("coordinator")
        .coordinator()
        .epoch()
        .to_owned();

    cluster.restart_coordinator(true).await;
    let new_epoch = cluster
        .coordinator
        .as_ref()
        .expect("coordinator")
        .coordinator()
        .epoch()
        .to_owned();
    assert_ne!(old_epoch, new_epoch);
    put(&us, NodeId::ROOT, "after.txt", b"after");
    let t = cluster.converged().await.expect("resync");
    let paths: Vec<String> = t
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        paths,
        ["/after.txt", "/eu.txt", "/us.txt"],
        "nothing written locally is lost"
    );
    // A newcomer learns everything from the new log alone.
    cluster.start_region("ap").await;
    let t = cluster.converged().await.expect("newcomer");
    assert_eq!(t.len(), 3);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_event_is_detected_as_a_gap_and_recovered() {
    let cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    cluster.converged().await.expect("start");
    let us = cluster.region("us");
    us.status().drop_next_event.store(true, Ordering::SeqCst);
    let eu = cluster.region("eu").engine().clone();
    put(&eu, NodeId::ROOT, "a.txt", b"a");
    put(&eu, NodeId::ROOT, "b.txt", b"b");
    let t = cluster.converged().await.expect("recovered from the gap");
    assert!(
        !us.status().drop_next_event.load(Ordering::SeqCst),
        "the fault fired"
    );
    assert_eq!(t.len(), 2, "{t:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manual_conflict_waits_for_the_operator_and_converges_on_the_choice() {
    let manual = geosync_core::config::ConflictConfig {
        default: StrategyName::Manual,
        ..Default::default()
    };
    let cluster = concurrent_writes(manual).await;
    cluster.converged().await.expect("both versions everywhere");
    let eu = cluster.region("eu").engine().clone();
    let f = eu
        .namespace
        .lookup(NodeId::ROOT, b"doc.txt")
        .expect("doc.txt")
        .id;

    // The operator sees the conflict through the admin API and keeps us's version.
    let url = format!("http://{}", cluster.coordinator_addr);
    let mut admin = v1::admin_client::AdminClient::connect(url)
        .await
        .expect("admin client");
    let conflicts = admin
        .list_conflicts(v1::ListConflictsRequest {})
        .await
        .expect("list")
        .into_inner()
        .conflicts;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].path, "/doc.txt");
    assert_eq!(conflicts[0].versions.len(), 2);
    for r in ["eu", "us"] {
        assert_eq!(
            cluster.ns(r).conflicts().expect("conflicts").len(),
            1,
            "open in {r}"
        );
    }
    let bad = admin
        .resolve_conflict(v1::ResolveConflictRequest {
            id: conflicts[0].id.clone(),
            choice: Some(v1::resolve_conflict_request::Choice::KeepRegion(
                "nowhere".into(),
            )),
        })
        .await;
    assert_eq!(
        bad.expect_err("unknown region").code(),
        tonic::Code::NotFound
    );
    admin
        .resolve_conflict(v1::ResolveConflictRequest {
            id: conflicts[0].id.clone(),
            choice: Some(v1::resolve_conflict_request::Choice::KeepRegion(
                "us".into(),
            )),
        })
        .await
        .expect("resolve");
    let ok = wait_for(SETTLE, || async {
        ["eu", "us"].iter().all(|r| {
            cluster
                .ns(r)
                .conflicts()
                .map(|c| c.is_empty())
                .unwrap_or(false)
        })
    })
    .await;
    assert!(ok, "the resolution reached every region");
    cluster.converged().await.expect("converged on the choice");
    let expected = eu.content.put_bytes(b"from us").expect("hash");
    for r in ["eu", "us"] {
        assert_eq!(
            cluster.ns(r).get(f).expect("node").meta.content,
            Some(expected),
            "{r}"
        );
    }
    cluster.shutdown().await;
}

/// A file big enough to span many chunks (the cluster uses 64 KiB chunks).
fn big_file(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[0] ^ seed)
        .collect()
}

async fn read_range(
    cluster: &Cluster,
    region: &str,
    path: &str,
    offset: u64,
    length: u64,
) -> Vec<u8> {
    let url = format!("http://{}", cluster.region(region).grpc_addr());
    let mut files = v1::files_client::FilesClient::connect(url)
        .await
        .expect("files client");
    let request = v1::ReadRequest {
        path: path.as_bytes().to_vec(),
        offset,
        length,
    };
    let mut stream = files.read(request).await.expect("read").into_inner();
    let mut out = Vec::new();
    while let Some(piece) = tokio_stream::StreamExt::next(&mut stream).await {
        out.extend_from_slice(&piece.expect("piece").data);
    }
    out
}

fn sync_config(strategy: geosync_core::config::SyncStrategy) -> geosync_core::config::SyncConfig {
    geosync_core::config::SyncConfig {
        default: strategy,
        rules: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_demand_content_is_fetched_at_first_read_and_only_what_is_read() {
    let mut cluster = Cluster::start(&["eu"], StrategyName::Lww).await;
    cluster.sync = sync_config(geosync_core::config::SyncStrategy::OnDemand);
    cluster.start_region("us").await;
    let data = big_file(1 << 20, 7);
    let eu = cluster.region("eu").engine().clone();
    let id = put(&eu, NodeId::ROOT, "movie.mkv", &data);
    cluster.converged().await.expect("metadata everywhere");
    let us = cluster.region("us").engine().clone();
    let content = us
        .namespace
        .get(id)
        .expect("node")
        .meta
        .content
        .expect("content");
    assert!(
        !us.content.is_complete(&content.id).expect("presence"),
        "on-demand: nothing fetched yet"
    );

    // A media server's probe: a few random offsets.
    for (offset, len) in [(700_000u64, 1000u64), (123, 77), (1_000_000, 48_576)] {
        let got = read_range(&cluster, "us", "/movie.mkv", offset, len).await;
        assert_eq!(
            got,
            data[offset as usize..(offset + len) as usize],
            "bytes at {offset}"
        );
    }
    let missing = us
        .content
        .missing_chunks(&content.id, 0..content.size)
        .expect("missing");
    assert!(
        !missing.is_empty(),
        "random reads fetched only the chunks they touched"
    );
    assert_eq!(
        read_range(&cluster, "us", "/movie.mkv", 0, 0).await,
        data,
        "a whole read"
    );
    assert!(us.content.is_complete(&content.id).expect("presence"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eager_content_is_replicated_without_a_read() {
    let mut cluster = Cluster::start(&["eu"], StrategyName::Lww).await;
    cluster.sync = sync_config(geosync_core::config::SyncStrategy::Eager);
    cluster.start_region("us").await;
    let data = big_file(300_000, 3);
    let eu = cluster.region("eu").engine().clone();
    let id = put(&eu, NodeId::ROOT, "doc.bin", &data);
    cluster.converged().await.expect("metadata everywhere");
    let us = cluster.region("us").engine().clone();
    let content = us
        .namespace
        .get(id)
        .expect("node")
        .meta
        .content
        .expect("content");
    let complete = wait_for(SETTLE, || async {
        us.content.is_complete(&content.id).unwrap_or(false)
    })
    .await;
    assert!(
        complete,
        "eager: the content arrives without anyone reading it"
    );
    let mut buf = vec![0; data.len()];
    let n = us
        .content
        .read_at(&content.id, 0, &mut buf)
        .expect("local read");
    assert_eq!(&buf[..n], &data[..], "verified bytes");
    cluster.shutdown().await;
}

/// Makes eu and us write `/doc.txt` concurrently (us while disconnected, so
/// after eu in time) and returns the converged cluster.
async fn concurrent_writes(conflicts: geosync_core::config::ConflictConfig) -> Cluster {
    Cluster::concurrent_writes(conflicts, "doc.txt", b"base", b"from eu", b"from us").await
}

/// What every region shows: path -> file content.
fn contents(cluster: &Cluster, region: &str) -> Vec<(String, Vec<u8>)> {
    let engine = cluster.region(region).engine();
    let mut out = Vec::new();
    for (path, view) in engine.namespace.tree().expect("tree") {
        let Some(content) = view.meta.content else {
            continue;
        };
        let mut buf = vec![0; content.size as usize];
        // Content written elsewhere may be cold here: read through a region that holds it.
        let n = cluster
            .regions
            .values()
            .find_map(|r| r.engine().content.read_at(&content.id, 0, &mut buf).ok())
            .expect("some region holds the content");
        out.push((
            String::from_utf8_lossy(&path).into_owned(),
            buf[..n].to_vec(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_resolve_per_strategy() {
    use geosync_core::config::ConflictConfig;
    let eu = geosync_core::clock::RegionId::new("eu").expect("id");
    let cases: [(&str, ConflictConfig, &[u8], bool); 4] = [
        (
            "lww",
            ConflictConfig {
                default: StrategyName::Lww,
                ..Default::default()
            },
            b"from us",
            false,
        ),
        (
            "fork",
            ConflictConfig {
                default: StrategyName::Fork,
                ..Default::default()
            },
            b"from us",
            true,
        ),
        (
            "merge",
            ConflictConfig {
                default: StrategyName::Merge,
                ..Default::default()
            },
            b"from us",
            true,
        ),
        (
            "primary-wins",
            ConflictConfig {
                default: StrategyName::PrimaryWins,
                primary: Some(eu),
                rules: Vec::new(),
            },
            b"from eu",
            true,
        ),
    ];
    for (name, conflicts, winner, copy) in cases {
        let cluster = concurrent_writes(conflicts).await;
        cluster
            .converged()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let shown = contents(&cluster, "eu");
        assert_eq!(
            shown,
            contents(&cluster, "us"),
            "{name}: both regions show the same"
        );
        let main = shown
            .iter()
            .find(|(p, _)| p == "/doc.txt")
            .expect("doc.txt");
        assert_eq!(main.1, winner, "{name}: the winner keeps the name");
        let copies: Vec<_> = shown
            .iter()
            .filter(|(p, _)| p.starts_with("/doc.conflict-"))
            .collect();
        if copy {
            assert_eq!(copies.len(), 1, "{name}: {shown:?}");
            let loser: &[u8] = if winner == b"from us" {
                b"from eu"
            } else {
                b"from us"
            };
            assert_eq!(
                copies[0].1, loser,
                "{name}: the loser is kept as a conflict copy"
            );
        } else {
            assert!(copies.is_empty(), "{name}: {shown:?}");
        }
        for r in ["eu", "us"] {
            assert!(
                cluster.ns(r).conflicts().expect("conflicts").is_empty(),
                "{name}: nothing left open"
            );
        }
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_content_is_evicted_under_the_budget_and_fetched_again() {
    let mut cluster = Cluster::start(&["eu"], StrategyName::Lww).await;
    cluster.sync = sync_config(geosync_core::config::SyncStrategy::OnDemand);
    cluster.cache_budget = Some(128 * 1024);
    cluster.start_region("us").await;
    let data = big_file(1 << 20, 11);
    let eu = cluster.region("eu").engine().clone();
    let id = put(&eu, NodeId::ROOT, "big.bin", &data);
    cluster.converged().await.expect("metadata everywhere");
    assert_eq!(read_range(&cluster, "us", "/big.bin", 0, 0).await, data);
    let us = cluster.region("us").engine().clone();
    let evicted = wait_for(SETTLE, || async { us.content.usage_bytes() <= 128 * 1024 }).await;
    assert!(
        evicted,
        "usage {} over the budget",
        us.content.usage_bytes()
    );
    // The writer's own copy is the only one of its kind until someone holds it: never evicted.
    let content = eu
        .namespace
        .get(id)
        .expect("node")
        .meta
        .content
        .expect("content");
    assert!(eu.content.is_complete(&content.id).expect("presence"));
    assert_eq!(
        read_range(&cluster, "us", "/big.bin", 0, 0).await,
        data,
        "fetched again, verified"
    );
    cluster.shutdown().await;
}
