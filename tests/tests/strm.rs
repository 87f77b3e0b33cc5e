//! STRM scenarios across regions: a media library (local directory, OpenList server, namespace
//! subtree) becomes `.strm` files and metadata in the namespace, visible in every region, and
//! every `.strm` link plays (`/stream/` with ranges, cold content from another region).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use geosync_core::config::{
    JobConfig, MetaMode, SourceConfig, StrategyName, StrmConfig, SyncRule, SyncStrategy,
};
use geosync_core::model::NodeKind;
use geosync_core::strm::sign::Signer;
use geosync_core::{Engine, namespace::NewNode};
use geosync_tests::{Cluster, SETTLE, wait_for};
use serde_json::{Value, json};

const SECRET: &str = "test-cluster-secret-0123456789";
const TOKEN: &str = "webhook-token-abc";
/// How long one run may take in these tests.
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// A fixed source mtime (2023-11-14T22:13:20Z), so copied mtimes are checkable.
const SOURCE_MTIME_S: u64 = 1_700_000_000;

fn strm_config(jobs: Vec<JobConfig>) -> StrmConfig {
    StrmConfig {
        secret: Some(SECRET.into()),
        public_url: None,
        webhook_token: Some(TOKEN.into()),
        jobs,
    }
}

fn local_job(name: &str, src: &Path, output: &str) -> JobConfig {
    JobConfig::new(
        name,
        SourceConfig::Local {
            path: src.to_path_buf(),
            download_url: None,
        },
        output,
    )
}

/// Starts `eu` running `jobs` and `us` without jobs (same secret), both on `sync` rules.
async fn cluster(jobs: Vec<JobConfig>, on_demand: &[&str]) -> Cluster {
    let mut c = Cluster::start(&[], StrategyName::Lww).await;
    for prefix in on_demand {
        c.sync.rules.push(SyncRule {
            prefix: (*prefix).into(),
            strategy: SyncStrategy::OnDemand,
        });
    }
    let eu = strm_config(jobs);
    c.start_region_with("eu", |r| r.strm = eu).await;
    c.start_region_with("us", |r| r.strm = strm_config(Vec::new()))
        .await;
    c
}

fn base(c: &Cluster, region: &str) -> String {
    format!("http://{}", c.region_http_addr(region))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// Queues a run through the region's API and waits until it is finished; returns the run.
async fn run_job(c: &Cluster, job: &str, strategy: &str, now: bool) -> Value {
    let http = client();
    let reply: Value = http
        .post(format!("{}/api/v1/strm/runs", base(c, "eu")))
        .json(&json!({"job": job, "strategy": strategy, "now": now}))
        .send()
        .await
        .expect("queue a run")
        .json()
        .await
        .expect("run id");
    let id = reply["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no run id in {reply}"));
    wait_run(c, id).await
}

async fn wait_run(c: &Cluster, id: u64) -> Value {
    let http = client();
    let url = format!("{}/api/v1/strm/runs/{id}", base(c, "eu"));
    let end = Instant::now() + RUN_DEADLINE;
    loop {
        let run: Value = http
            .get(&url)
            .send()
            .await
            .expect("run")
            .json()
            .await
            .expect("run json");
        if !matches!(run["state"].as_str(), Some("queued" | "running")) {
            return run;
        }
        assert!(
            Instant::now() < end,
            "run {id} not finished within {RUN_DEADLINE:?}: {run}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(run: &Value, what: &str) -> u64 {
    run["counts"][what]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {what} in {run}"))
}

/// Writes a source file with the fixed mtime.
fn source_file(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, data).expect("write source");
    let f = std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(SOURCE_MTIME_S))
        .expect("set mtime");
}

/// A library: movies and shows with posters, nfo files, subtitles and nested seasons.
fn library(root: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let files: Vec<(&'static str, Vec<u8>)> = vec![
        (
            "Movies/Alpha (2020)/Alpha (2020).mkv",
            b"alpha video".to_vec(),
        ),
        (
            "Movies/Alpha (2020)/Alpha (2020).nfo",
            b"<movie><title>Alpha</title></movie>".to_vec(),
        ),
        ("Movies/Alpha (2020)/poster.jpg", vec![0xff, 0xd8, 1, 2, 3]),
        (
            "Movies/Alpha (2020)/Alpha (2020).en.srt",
            b"1\n00:00:01,000 --> 00:00:02,000\nHi\n".to_vec(),
        ),
        (
            "Movies/Beta Space (2021)/Beta Space (2021).mp4",
            b"beta video".to_vec(),
        ),
        ("Movies/Beta Space (2021)/fanart.jpg", vec![0xff, 0xd8, 9]),
        ("Shows/Gamma/tvshow.nfo", b"<tvshow/>".to_vec()),
        ("Shows/Gamma/Season 01/Gamma S01E01.mkv", b"e1".to_vec()),
        (
            "Shows/Gamma/Season 01/Gamma S01E01.nfo",
            b"<episodedetails/>".to_vec(),
        ),
        (
            "Shows/Gamma/Season 02/Gamma S02E01 #1 é.mkv",
            b"e2".to_vec(),
        ),
        ("Shows/Gamma/Season 02/notes.doc", b"not media".to_vec()),
    ];
    for (rel, data) in &files {
        source_file(root, rel, data);
    }
    files
}

fn read(engine: &Engine, path: &str) -> Option<Vec<u8>> {
    let view = engine.namespace.resolve(path.as_bytes()).ok()?;
    let Some(content) = view.meta.content else {
        return Some(Vec::new());
    };
    let mut buf = vec![0u8; content.size as usize];
    let n = engine.content.read_at(&content.id, 0, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn exists(engine: &Engine, path: &str) -> bool {
    engine.namespace.resolve(path.as_bytes()).is_ok()
}

fn strm_of(rel: &str) -> String {
    format!("{}.strm", rel.rsplit_once('.').expect("extension").0)
}

/// Every output file below `dir` in a namespace: path -> (content id, mtime).
fn outputs(engine: &Engine, dir: &str) -> BTreeMap<Vec<u8>, (String, i64)> {
    engine
        .namespace
        .tree()
        .expect("tree")
        .into_iter()
        .filter(|(p, v)| p.starts_with(dir.as_bytes()) && v.meta.kind == NodeKind::File)
        .map(|(p, v)| {
            let id = v.meta.content.map(|c| c.id.to_hex()).unwrap_or_default();
            (p, (id, v.meta.mtime_ns))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_resync_writes_strm_and_metadata_visible_in_every_region() {
    let src = tempfile::tempdir().expect("source dir");
    let files = library(src.path());
    let c = cluster(vec![local_job("movies", src.path(), "/strm/lib")], &[]).await;
    let run = run_job(&c, "movies", "full", false).await;
    assert_eq!(run["state"], "done", "{run}");
    // 5 media files, 5 metadata files (3 nfo + 2 jpg + 1 srt is 6), 1 ignored document.
    assert_eq!(count(&run, "scanned"), 11, "{run}");
    assert_eq!(count(&run, "written"), 10, "{run}");
    assert_eq!(count(&run, "failed"), 0, "{run}");

    let eu = c.region("eu").engine();
    let base_eu = base(&c, "eu");
    let signer = Signer::new(SECRET);
    for (rel, data) in &files {
        let ext = rel.rsplit_once('.').unwrap().1;
        let out = format!("/strm/lib/{rel}");
        match ext {
            "mkv" | "mp4" => {
                let text =
                    String::from_utf8(read(eu, &strm_of(&out)).expect("strm written")).unwrap();
                let expected = format!(
                    "{}\n",
                    signer.link(&base_eu, Some("movies"), &format!("/{rel}"))
                );
                assert_eq!(text, expected);
                assert!(
                    !text.trim_end().contains(' '),
                    "unencoded space in {text:?}"
                );
                // The link plays: the source bytes come back.
                let body = client()
                    .get(text.trim_end())
                    .send()
                    .await
                    .expect("play")
                    .bytes()
                    .await
                    .unwrap();
                assert_eq!(&body[..], &data[..], "{rel}");
                assert!(!exists(eu, &out), "the media file itself is not copied");
            }
            "doc" => assert!(!exists(eu, &out)),
            _ => {
                assert_eq!(read(eu, &out).as_deref(), Some(&data[..]), "{rel}");
                let mtime = eu.namespace.resolve(out.as_bytes()).unwrap().meta.mtime_ns;
                assert_eq!(
                    mtime,
                    SOURCE_MTIME_S as i64 * 1_000_000_000,
                    "mtime of {rel}"
                );
            }
        }
    }
    let alpha = read(eu, "/strm/lib/Movies/Alpha (2020)/Alpha (2020).strm").unwrap();
    let prefix = format!(
        "{base_eu}/stream/Movies/Alpha%20%282020%29/Alpha%20%282020%29.mkv?job=movies&sig="
    );
    assert!(String::from_utf8(alpha).unwrap().starts_with(&prefix));

    // Visible from the second region.
    c.converged().await.expect("regions converge");
    let us = c.region("us").engine();
    assert_eq!(outputs(us, "/strm/lib"), outputs(eu, "/strm/lib"));
    assert_eq!(outputs(us, "/strm/lib").len(), 10);

    // A re-run rewrites nothing: same contents, same mtimes, same versions.
    let before: BTreeMap<_, _> = eu
        .namespace
        .tree()
        .unwrap()
        .into_iter()
        .filter(|(p, _)| p.starts_with(b"/strm/lib"))
        .map(|(p, v)| (p, v.write))
        .collect();
    let commits = eu.namespace.commits();
    let rerun = run_job(&c, "movies", "full", false).await;
    assert_eq!(rerun["state"], "done", "{rerun}");
    assert_eq!(count(&rerun, "written"), 0, "{rerun}");
    assert_eq!(count(&rerun, "unchanged"), 10, "{rerun}");
    let after: BTreeMap<_, _> = eu
        .namespace
        .tree()
        .unwrap()
        .into_iter()
        .filter(|(p, _)| p.starts_with(b"/strm/lib"))
        .map(|(p, v)| (p, v.write))
        .collect();
    assert_eq!(before, after, "a re-run changed outputs");
    assert_eq!(
        eu.namespace.commits(),
        commits,
        "a re-run committed changes"
    );

    // A source file goes: its outputs go (after the grace run, or at once with --now); a file a
    // media server wrote into the output tree stays.
    let beta_dir = eu
        .namespace
        .resolve("/strm/lib/Movies/Beta Space (2021)".as_bytes())
        .unwrap();
    let poster = eu.content.put_bytes(b"jellyfin poster").unwrap();
    eu.namespace
        .create(
            beta_dir.id,
            b"Beta Space (2021)-poster.jpg",
            NewNode {
                content: Some(poster),
                ..NewNode::file(0o644)
            },
        )
        .unwrap();
    std::fs::remove_file(
        src.path()
            .join("Movies/Beta Space (2021)/Beta Space (2021).mp4"),
    )
    .unwrap();
    let graced = run_job(&c, "movies", "full", false).await;
    assert_eq!(count(&graced, "deleted"), 0, "{graced}");
    assert!(exists(
        eu,
        "/strm/lib/Movies/Beta Space (2021)/Beta Space (2021).strm"
    ));
    let cleaned = run_job(&c, "movies", "full", false).await;
    assert_eq!(cleaned["state"], "done", "{cleaned}");
    assert_eq!(count(&cleaned, "deleted"), 1, "{cleaned}");
    assert!(!exists(
        eu,
        "/strm/lib/Movies/Beta Space (2021)/Beta Space (2021).strm"
    ));
    assert!(exists(
        eu,
        "/strm/lib/Movies/Beta Space (2021)/Beta Space (2021)-poster.jpg"
    ));
    assert!(exists(eu, "/strm/lib/Movies/Beta Space (2021)/fanart.jpg"));
    // --now: no grace run.
    std::fs::remove_file(src.path().join("Movies/Beta Space (2021)/fanart.jpg")).unwrap();
    let now = run_job(&c, "movies", "full", true).await;
    assert_eq!(count(&now, "deleted"), 1, "{now}");
    assert!(!exists(eu, "/strm/lib/Movies/Beta Space (2021)/fanart.jpg"));
    assert!(exists(
        eu,
        "/strm/lib/Movies/Beta Space (2021)/Beta Space (2021)-poster.jpg"
    ));
    c.converged().await.expect("regions converge");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_errors_block_cleanup_and_mass_deletion_waits_for_confirmation() {
    let src = tempfile::tempdir().expect("source dir");
    for i in 0..10 {
        source_file(src.path(), &format!("M/m{i}/m{i}.mkv"), b"v");
    }
    let c = cluster(vec![local_job("lib", src.path(), "/out")], &[]).await;
    let eu = c.region("eu").engine();
    let first = run_job(&c, "lib", "full", true).await;
    assert_eq!(count(&first, "written"), 10, "{first}");

    // A listing that fails (a symlink loop: an I/O error, never "absent") stops all deletion.
    std::fs::remove_dir_all(src.path().join("M/m0")).unwrap();
    std::os::unix::fs::symlink("loop", src.path().join("M/m1/loop")).unwrap();
    let errored = run_job(&c, "lib", "full", true).await;
    assert_eq!(count(&errored, "deleted"), 0, "{errored}");
    assert!(
        !errored["errors"].as_array().unwrap().is_empty(),
        "{errored}"
    );
    assert!(
        exists(eu, "/out/M/m0/m0.strm"),
        "deleted on an unclear listing"
    );
    std::fs::remove_file(src.path().join("M/m1/loop")).unwrap();

    // Most of the library vanishes (an unmounted drive looks like this): held.
    for i in 1..8 {
        std::fs::remove_dir_all(src.path().join(format!("M/m{i}"))).unwrap();
    }
    let held = run_job(&c, "lib", "full", true).await;
    assert_eq!(held["state"], "held", "{held}");
    assert_eq!(held["held"], 8, "{held}");
    assert_eq!(count(&held, "deleted"), 0);
    assert!(exists(eu, "/out/M/m3/m3.strm"));
    // Confirming a run that is not held is refused.
    let http = client();
    let refused = http
        .post(format!(
            "{}/api/v1/strm/runs/{}/confirm-cleanup",
            base(&c, "eu"),
            first["id"]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let confirm: Value = http
        .post(format!(
            "{}/api/v1/strm/runs/{}/confirm-cleanup",
            base(&c, "eu"),
            held["id"]
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let done = wait_run(&c, confirm["id"].as_u64().expect("confirmation run")).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["strategy"], "cleanup");
    assert_eq!(count(&done, "deleted"), 8, "{done}");
    for i in 0..8 {
        assert!(!exists(eu, &format!("/out/M/m{i}/m{i}.strm")));
    }
    assert!(exists(eu, "/out/M/m9/m9.strm"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn depth_limit_cuts_deep_directories_and_names_them() {
    let src = tempfile::tempdir().expect("source dir");
    source_file(src.path(), "a/top.mkv", b"1");
    source_file(src.path(), "a/b/mid.mkv", b"2");
    source_file(src.path(), "a/b/c/deep.mkv", b"3");
    let mut job = local_job("deep", src.path(), "/deep");
    job.max_depth = 2;
    let c = cluster(vec![job], &[]).await;
    let eu = c.region("eu").engine();
    let run = run_job(&c, "deep", "full", true).await;
    assert_eq!(run["state"], "done", "{run}");
    assert!(exists(eu, "/deep/a/top.strm"));
    assert!(exists(eu, "/deep/a/b/mid.strm"));
    assert!(!exists(eu, "/deep/a/b/c/deep.strm"));
    let warnings = run["warnings"].to_string();
    assert!(
        warnings.contains("a/b/c") && warnings.contains("max_depth"),
        "{warnings}"
    );
    c.shutdown().await;
}

/// Serves `files` (path -> bytes) under `/files/`; other paths 404.
async fn download_server(files: HashMap<String, Vec<u8>>) -> SocketAddr {
    let files = Arc::new(files);
    let app =
        axum::Router::new()
            .route(
                "/files/{*path}",
                get(
                    |State(f): State<Arc<HashMap<String, Vec<u8>>>>,
                     UrlPath(p): UrlPath<String>| async move {
                        match f.get(&p) {
                            Some(d) => (StatusCode::OK, d.clone()).into_response(),
                            None => StatusCode::NOT_FOUND.into_response(),
                        }
                    },
                ),
            )
            .with_state(files);
    serve(app).await
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_copy_failure_falls_back_to_download() {
    let src = tempfile::tempdir().expect("source dir");
    source_file(src.path(), "Film/Film.mkv", b"film");
    source_file(src.path(), "Film/Film.nfo", b"<movie/>");
    // Reading /proc/self/mem at offset 0 fails with an I/O error (EIO): a copy that breaks.
    std::os::unix::fs::symlink("/proc/self/mem", src.path().join("Film/poster.jpg")).unwrap();
    std::os::unix::fs::symlink("/proc/self/mem", src.path().join("Film/lost.jpg")).unwrap();
    let server = download_server(HashMap::from([(
        "Film/poster.jpg".to_owned(),
        b"downloaded poster".to_vec(),
    )]))
    .await;
    let mut job = local_job("films", src.path(), "/films");
    job.source = SourceConfig::Local {
        path: src.path().to_path_buf(),
        download_url: Some(format!("http://{server}/files")),
    };
    let c = cluster(vec![job], &[]).await;
    let eu = c.region("eu").engine();
    let run = run_job(&c, "films", "full", true).await;
    // Both failing (lost.jpg: copy error, then 404) is reported, not fatal.
    assert_eq!(run["state"], "done", "{run}");
    assert_eq!(count(&run, "failed"), 1, "{run}");
    assert_eq!(count(&run, "written"), 3, "{run}");
    let errors = run["errors"].to_string();
    assert!(
        errors.contains("lost.jpg") && errors.contains("404"),
        "{errors}"
    );
    assert_eq!(
        read(eu, "/films/Film/poster.jpg").as_deref(),
        Some(&b"downloaded poster"[..])
    );
    assert_eq!(
        read(eu, "/films/Film/Film.nfo").as_deref(),
        Some(&b"<movie/>"[..])
    );
    assert!(!exists(eu, "/films/Film/lost.jpg"));
    c.shutdown().await;
}

// ---------------------------------------------------------------------------
// OpenList
// ---------------------------------------------------------------------------

/// An OpenList server with the API shapes of the real one (always HTTP 200 with a `code`).
struct FakeOpenlist {
    token: String,
    /// Directory -> entries (name, is_dir, data).
    dirs: BTreeMap<String, Vec<(String, bool, Vec<u8>)>>,
    broken: HashSet<String>,
    list_calls: Mutex<Vec<Instant>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    gets: AtomicUsize,
    addr: Mutex<Option<SocketAddr>>,
}

fn sign_of(path: &str) -> String {
    format!(
        "sig-{}",
        blake3::hash(path.as_bytes())
            .to_hex()
            .as_str()
            .get(..8)
            .unwrap_or("")
    )
}

async fn ol_list(
    State(f): State<Arc<FakeOpenlist>>,
    headers: HeaderMap,
    Json(req): Json<Value>,
) -> Json<Value> {
    f.list_calls.lock().unwrap().push(Instant::now());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(f.token.as_str()) {
        return Json(json!({"code": 401, "message": "token is invalidated", "data": null}));
    }
    let path = req["path"]
        .as_str()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_owned();
    if f.broken.contains(&path) {
        return Json(json!({"code": 500, "message": "failed get storage: timeout", "data": null}));
    }
    let Some(entries) = f.dirs.get(&path) else {
        return Json(json!({"code": 500, "message": "object not found", "data": null}));
    };
    let page = req["page"].as_u64().unwrap_or(1).max(1) as usize;
    let per_page = req["per_page"].as_u64().unwrap_or(0) as usize;
    let slice: Vec<Value> = if per_page == 0 {
        entries.iter().collect::<Vec<_>>()
    } else {
        entries.iter().skip((page - 1) * per_page).take(per_page).collect()
    }
    .into_iter()
    .map(|(name, is_dir, data)| {
        json!({"name": name, "size": data.len(), "is_dir": is_dir,
               "modified": "2023-11-14T22:13:20Z", "sign": if *is_dir { String::new() } else { sign_of(&format!("{path}/{name}")) },
               "thumb": "", "type": 0})
    })
    .collect();
    let content = if entries.is_empty() {
        Value::Null
    } else {
        Value::Array(slice)
    };
    Json(json!({"code": 200, "message": "success",
                "data": {"content": content, "total": entries.len(), "readme": "", "write": false, "provider": "Local"}}))
}

async fn ol_get(State(f): State<Arc<FakeOpenlist>>, Json(req): Json<Value>) -> Json<Value> {
    let n = f.gets.fetch_add(1, Ordering::SeqCst);
    let path = req["path"].as_str().unwrap_or("").to_owned();
    let addr = f.addr.lock().unwrap().expect("address");
    Json(json!({"code": 200, "message": "success", "data": {
        "name": path.rsplit('/').next(), "size": 1, "is_dir": false, "modified": "2023-11-14T22:13:20Z",
        "sign": sign_of(&path), "raw_url": format!("http://{addr}/raw{path}?fresh={n}")}}))
}

async fn ol_download(
    State(f): State<Arc<FakeOpenlist>>,
    UrlPath(path): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let path = format!("/{path}");
    if q.get("sign") != Some(&sign_of(&path)) {
        return (StatusCode::FORBIDDEN, "bad sign").into_response();
    }
    let now = f.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    f.peak.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(40)).await;
    f.in_flight.fetch_sub(1, Ordering::SeqCst);
    let (dir, name) = path.rsplit_once('/').unwrap();
    match f
        .dirs
        .get(dir)
        .and_then(|e| e.iter().find(|(n, _, _)| n == name))
    {
        Some((_, _, data)) => (StatusCode::OK, data.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openlist_source_pages_paces_limits_and_redirects() {
    let mut dirs: BTreeMap<String, Vec<(String, bool, Vec<u8>)>> = BTreeMap::new();
    let entry = |n: &str, d: bool, data: &[u8]| (n.to_owned(), d, data.to_vec());
    dirs.insert(
        "/lib".into(),
        vec![
            entry("Big", true, b""),
            entry("Empty", true, b""),
            entry("Film", true, b""),
            entry("Broken", true, b""),
        ],
    );
    dirs.insert("/lib/Empty".into(), vec![]);
    dirs.insert(
        "/lib/Film".into(),
        (0..8)
            .map(|i| {
                entry(
                    &format!("p{i}.jpg"),
                    false,
                    format!("poster {i}").as_bytes(),
                )
            })
            .chain([entry("Film Name.mkv", false, b"video")])
            .collect(),
    );
    // More entries than one page.
    dirs.insert(
        "/lib/Big".into(),
        (0..250)
            .map(|i| entry(&format!("e{i:03}.mkv"), false, b"x"))
            .collect(),
    );
    let fake = Arc::new(FakeOpenlist {
        token: "ol-token".into(),
        dirs,
        broken: HashSet::from(["/lib/Broken".to_owned()]),
        list_calls: Mutex::new(Vec::new()),
        in_flight: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        gets: AtomicUsize::new(0),
        addr: Mutex::new(None),
    });
    let app = axum::Router::new()
        .route("/api/fs/list", post(ol_list))
        .route("/api/fs/get", post(ol_get))
        .route("/d/{*path}", get(ol_download))
        .with_state(fake.clone());
    let addr = serve(app).await;
    *fake.addr.lock().unwrap() = Some(addr);

    let mut job = JobConfig::new(
        "ol",
        SourceConfig::Openlist {
            url: format!("http://{addr}"),
            token: "ol-token".into(),
            root: "/lib".into(),
            password: String::new(),
        },
        "/ol",
    );
    job.max_concurrency = 3;
    job.qps = 10.0;
    job.metadata.mode = MetaMode::Download;
    let c = cluster(vec![job], &[]).await;
    let eu = c.region("eu").engine();
    let run = run_job(&c, "ol", "full", true).await;
    assert_eq!(run["state"], "done", "{run}");
    assert_eq!(count(&run, "written"), 250 + 9, "{run}");
    // The broken directory (code 500) is an error, and blocks cleanup.
    let errors = run["errors"].to_string();
    assert!(
        errors.contains("/lib/Broken") && errors.contains("failed get storage"),
        "{errors}"
    );
    assert!(run["warnings"].to_string().contains("no cleanup"), "{run}");
    assert!(exists(eu, "/ol/Big/e249.strm"), "second page missing");
    assert_eq!(
        read(eu, "/ol/Film/p3.jpg").as_deref(),
        Some(&b"poster 3"[..])
    );
    let mtime = eu
        .namespace
        .resolve(b"/ol/Film/p3.jpg")
        .unwrap()
        .meta
        .mtime_ns;
    assert_eq!(mtime, SOURCE_MTIME_S as i64 * 1_000_000_000);

    // Concurrency: never more than max_concurrency downloads at once (and the pool was used).
    let peak = fake.peak.load(Ordering::SeqCst);
    assert!((2..=3).contains(&peak), "peak concurrent downloads {peak}");
    // Pacing: listing calls at most 10 per second.
    let calls = fake.list_calls.lock().unwrap().clone();
    assert!(calls.len() >= 5, "{} list calls", calls.len());
    for w in calls.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(90), "list calls {gap:?} apart");
    }

    // The .strm holds a stable region link that redirects to a freshly signed OpenList link.
    let text = String::from_utf8(read(eu, "/ol/Film/Film Name.strm").unwrap()).unwrap();
    assert!(
        text.starts_with(&format!(
            "{}/stream/Film/Film%20Name.mkv?job=ol&sig=",
            base(&c, "eu")
        )),
        "{text}"
    );
    let first = client().get(text.trim_end()).send().await.unwrap();
    assert_eq!(first.status(), 302);
    let second = client().get(text.trim_end()).send().await.unwrap();
    let l1 = first.headers()["location"].to_str().unwrap().to_owned();
    let l2 = second.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        l1.starts_with(&format!("http://{addr}/raw/lib/Film/Film Name.mkv?fresh=")),
        "{l1}"
    );
    assert_ne!(l1, l2, "each play gets a fresh link");
    c.shutdown().await;
}

// ---------------------------------------------------------------------------
// Webhook
// ---------------------------------------------------------------------------

fn payload(items: Vec<Value>) -> Value {
    json!({"device_name": "nas", "user_name": "me", "version": "0.9", "event_category": "file",
           "event_name": "notify", "event_time": "1700000000", "send_time": "1700000000", "data": items})
}

fn item(action: &str, is_dir: bool, src: &str, dst: &str) -> Value {
    json!({"action": action, "is_dir": if is_dir { "true" } else { "false" },
           "source_file": src, "destination_file": dst})
}

async fn post_webhook(c: &Cluster, token: &str, body: Vec<u8>) -> (u16, String) {
    let r = client()
        .post(format!("{}/api/v1/webhook/clouddrive", base(c, "eu")))
        .header("Authorization", token)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("webhook");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn run_count(c: &Cluster) -> usize {
    let runs: Value = client()
        .get(format!("{}/api/v1/strm/runs?limit=1000", base(c, "eu")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    runs.as_array().map_or(0, Vec::len)
}

/// Waits until `path` exists (or not) in region `us`.
async fn wait_in_us(c: &Cluster, path: &str, present: bool) {
    let us = c.region("us").engine().clone();
    let ok = wait_for(SETTLE, || {
        let us = us.clone();
        async move { exists(&us, path) == present }
    })
    .await;
    assert!(
        ok,
        "{path} present={present} not reached in us within {SETTLE:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_events_update_outputs_without_a_scan() {
    let src = tempfile::tempdir().expect("source dir");
    source_file(src.path(), "Old/Old.mkv", b"old");
    let mut job = local_job("hook", src.path(), "/hook");
    job.webhook_prefix = Some("/CloudDrive/lib".into());
    let c = cluster(vec![job], &[]).await;
    let eu = c.region("eu").engine();

    // Create: a new file and its poster, announced in one request.
    source_file(src.path(), "New Film/New Film.mkv", b"new");
    source_file(src.path(), "New Film/poster.jpg", b"img");
    let body = payload(vec![
        item("create", false, "/CloudDrive/lib/New Film/New Film.mkv", ""),
        item("create", false, "/CloudDrive/lib/New Film/poster.jpg", ""),
        item("create", false, "/CloudDrive/other/x.mkv", ""),
    ]);
    let (status, reply) = post_webhook(&c, TOKEN, body.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{reply}");
    let queued: Value = serde_json::from_str(&reply).unwrap();
    let id = queued["queued"][0].as_u64().expect("one run");
    let run = wait_run(&c, id).await;
    assert_eq!(run["strategy"], "incremental");
    assert_eq!(count(&run, "written"), 2, "{run}");
    // No scan: the file that was there before and never announced is not written.
    assert!(!exists(eu, "/hook/Old/Old.strm"));
    wait_in_us(&c, "/hook/New Film/New Film.strm", true).await;
    wait_in_us(&c, "/hook/New Film/poster.jpg", true).await;

    // Rename a directory: old outputs go, new ones come.
    std::fs::rename(src.path().join("New Film"), src.path().join("Renamed")).unwrap();
    let body = payload(vec![item(
        "rename",
        true,
        "/CloudDrive/lib/New Film",
        "/CloudDrive/lib/Renamed",
    )]);
    let (status, reply) = post_webhook(
        &c,
        &format!("Bearer {TOKEN}"),
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    wait_in_us(&c, "/hook/Renamed/New Film.strm", true).await;
    wait_in_us(&c, "/hook/New Film/New Film.strm", false).await;
    assert!(exists(eu, "/hook/Renamed/poster.jpg"));

    // Delete: outputs removed at once.
    std::fs::remove_file(src.path().join("Renamed/New Film.mkv")).unwrap();
    let body = payload(vec![item(
        "delete",
        false,
        "/CloudDrive/lib/Renamed/New Film.mkv",
        "",
    )]);
    assert_eq!(
        post_webhook(&c, TOKEN, body.to_string().into_bytes())
            .await
            .0,
        200
    );
    wait_in_us(&c, "/hook/Renamed/New Film.strm", false).await;
    assert!(exists(eu, "/hook/Renamed/poster.jpg"));

    // Bad requests: their codes, nothing queued.
    let runs = run_count(&c).await;
    let good = payload(vec![item(
        "create",
        false,
        "/CloudDrive/lib/Old/Old.mkv",
        "",
    )])
    .to_string();
    assert_eq!(
        post_webhook(&c, "wrong", good.clone().into_bytes()).await.0,
        401
    );
    assert_eq!(
        post_webhook(&c, TOKEN, b"{\"data\": [".to_vec()).await.0,
        400
    );
    let bad_dir = payload(vec![item("create", false, "/CloudDrive/lib/a.mkv", "")])
        .to_string()
        .replace("\"false\"", "false");
    assert_eq!(post_webhook(&c, TOKEN, bad_dir.into_bytes()).await.0, 400);
    let traversal = payload(vec![item(
        "create",
        false,
        "/CloudDrive/lib/../../etc/passwd",
        "",
    )]);
    assert_eq!(
        post_webhook(&c, TOKEN, traversal.to_string().into_bytes())
            .await
            .0,
        400
    );
    let many = payload(vec![
        item("delete", false, "/CloudDrive/lib/a.mkv", "");
        1001
    ]);
    assert_eq!(
        post_webhook(&c, TOKEN, many.to_string().into_bytes())
            .await
            .0,
        413
    );
    let huge = vec![b' '; 2 << 20];
    assert_eq!(post_webhook(&c, TOKEN, huge).await.0, 413);
    assert_eq!(run_count(&c).await, runs, "a bad request queued a run");
    assert!(!exists(eu, "/hook/Old/Old.strm"));

    // An operator's incremental run of named paths (`geosync strm run --incremental --path`).
    let http = client();
    let refused = http
        .post(format!("{}/api/v1/strm/runs", base(&c, "eu")))
        .json(&json!({"job": "hook", "strategy": "incremental", "paths": ["../x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let queued: Value = http
        .post(format!("{}/api/v1/strm/runs", base(&c, "eu")))
        .json(&json!({"job": "hook", "strategy": "incremental", "paths": ["Old"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = wait_run(&c, queued["id"].as_u64().expect("run id")).await;
    assert_eq!(count(&run, "written"), 1, "{run}");
    assert!(exists(eu, "/hook/Old/Old.strm"));
    c.shutdown().await;
}

// ---------------------------------------------------------------------------
// /stream/
// ---------------------------------------------------------------------------

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "-D", "-"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    (
        String::from_utf8_lossy(&out.stdout[..split]).to_lowercase(),
        out.stdout[split + 4..].to_vec(),
    )
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_serves_ranges_heads_cold_content_and_refuses_bad_links() {
    // The library lives in the namespace, on demand: region us holds metadata only.
    let job = JobConfig::new(
        "ns",
        SourceConfig::Namespace {
            path: "/library".into(),
        },
        "/strm/ns",
    );
    let c = cluster(vec![job], &["/library"]).await;
    let eu = c.region("eu").engine();
    let data = random_bytes(300_000, 7);
    let lib = eu
        .namespace
        .create(
            geosync_core::model::NodeId::ROOT,
            b"library",
            NewNode::directory(0o755),
        )
        .unwrap();
    let content = eu.content.put_bytes(&data).unwrap();
    eu.namespace
        .create(
            lib.id,
            b"clip one.mkv",
            NewNode {
                content: Some(content),
                ..NewNode::file(0o644)
            },
        )
        .unwrap();
    let run = run_job(&c, "ns", "full", false).await;
    assert_eq!(count(&run, "written"), 1, "{run}");
    let link = String::from_utf8(read(eu, "/strm/ns/clip one.strm").unwrap()).unwrap();
    let link = link.trim_end().to_owned();
    assert!(
        link.starts_with(&format!(
            "{}/stream/library/clip%20one.mkv?sig=",
            base(&c, "eu")
        )),
        "{link}"
    );

    // curl: full, ranged, suffix range, HEAD.
    let (head, body) = curl(&[&link]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: video/x-matroska") && head.contains("accept-ranges: bytes"),
        "{head}"
    );
    assert_eq!(body, data);
    let (head, body) = curl(&["-r", "100000-165535", &link]);
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert!(
        head.contains("content-range: bytes 100000-165535/300000"),
        "{head}"
    );
    assert_eq!(body, &data[100_000..165_536]);
    let (_, body) = curl(&["-r", "-10", &link]);
    assert_eq!(body, &data[300_000 - 10..]);
    let (head, _) = curl(&["-I", &link]);
    assert!(
        head.starts_with("http/1.1 200") && head.contains("content-length: 300000"),
        "{head}"
    );
    let head = client().head(&link).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "300000");
    assert!(head.bytes().await.unwrap().is_empty());
    let (head, _) = curl(&["-r", "400000-", &link]);
    assert!(
        head.starts_with("http/1.1 416") && head.contains("bytes */300000"),
        "{head}"
    );

    // The same link from the other region, whose content is cold: fetched from eu on demand.
    c.converged().await.expect("regions converge");
    let us = c.region("us").engine();
    assert!(
        !us.content.is_complete(&content.id).unwrap(),
        "us already holds the content"
    );
    let us_link = link.replace(&base(&c, "eu"), &base(&c, "us"));
    let (head, body) = curl(&["-r", "200000-", &us_link]);
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(body, &data[200_000..]);
    let (_, body) = curl(&[&us_link]);
    assert_eq!(body, data);

    // Refused: a wrong or missing signature (403), a path out of the namespace (400).
    let http = client();
    let forged = format!("{}0", &link[..link.len() - 1]);
    assert_eq!(http.get(&forged).send().await.unwrap().status(), 403);
    let unsigned = link.split('?').next().unwrap().to_owned();
    assert_eq!(http.get(&unsigned).send().await.unwrap().status(), 403);
    let other = link.replace("clip%20one.mkv", "clip%20two.mkv");
    assert_eq!(http.get(&other).send().await.unwrap().status(), 403);
    let (head, _) = curl(&[
        "--path-as-is",
        &format!("{}/stream/library/../etc/passwd?sig=00", base(&c, "eu")),
    ]);
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let (head, _) = curl(&[&format!(
        "{}/stream/library/%2e%2e/x?sig=00",
        base(&c, "eu")
    )]);
    assert!(head.starts_with("http/1.1 400"), "{head}");

    // A real player, where installed.
    ffprobe_check(&c, eu).await;
    c.shutdown().await;
}

/// ffprobe on a small generated media file through its `.strm` URL (needs ffmpeg + ffprobe).
async fn ffprobe_check(c: &Cluster, eu: &Engine) {
    let have = |tool: &str| {
        std::process::Command::new(tool)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("ffprobe") || !have("ffmpeg") {
        println!("ffprobe/ffmpeg not installed: skipping the ffprobe check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip: PathBuf = dir.path().join("tone.mkv");
    let made = std::process::Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=1",
            "-y",
        ])
        .arg(&clip)
        .status()
        .expect("ffmpeg");
    assert!(made.success());
    let data = std::fs::read(&clip).unwrap();
    let lib = eu.namespace.resolve(b"/library").unwrap();
    let content = eu.content.put_bytes(&data).unwrap();
    eu.namespace
        .create(
            lib.id,
            b"tone.mkv",
            NewNode {
                content: Some(content),
                ..NewNode::file(0o644)
            },
        )
        .unwrap();
    run_job(c, "ns", "full", false).await;
    let link = String::from_utf8(read(eu, "/strm/ns/tone.strm").unwrap()).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            link.trim_end(),
        ])
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duration: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("duration");
    assert!((0.9..1.2).contains(&duration), "duration {duration}");
}

// ---------------------------------------------------------------------------
// The run queue
// ---------------------------------------------------------------------------

async fn queue_run(c: &Cluster, job: &str) -> u64 {
    let reply: Value = client()
        .post(format!("{}/api/v1/strm/runs", base(c, "eu")))
        .json(&json!({"job": job, "strategy": "full"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no run id in {reply}"))
}

async fn run_state(c: &Cluster, id: u64) -> Value {
    client()
        .get(format!("{}/api/v1/strm/runs/{id}", base(c, "eu")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_never_overlap_and_can_be_cancelled() {
    let src = tempfile::tempdir().expect("source dir");
    for i in 0..20 {
        source_file(src.path(), &format!("d{i}/f.mkv"), b"v");
    }
    // Two listings per second: a full run takes ~10 s, long enough to watch.
    let mut slow = local_job("slow", src.path(), "/slow");
    slow.qps = 2.0;
    let c = cluster(vec![slow], &[]).await;
    let first = queue_run(&c, "slow").await;
    let second = queue_run(&c, "slow").await;
    let running = wait_for(SETTLE, || async {
        run_state(&c, first).await["state"] == "running"
    })
    .await;
    assert!(running, "the first run starts");
    // One run at a time: the second waits while the first runs.
    assert_eq!(run_state(&c, second).await["state"], "queued");
    let http = client();
    let cancel = |id: u64| {
        let http = http.clone();
        let url = format!("{}/api/v1/strm/runs/{id}/cancel", base(&c, "eu"));
        async move { http.post(url).send().await.unwrap().status() }
    };
    assert_eq!(cancel(second).await, 200);
    assert_eq!(run_state(&c, second).await["state"], "cancelled");
    assert_eq!(cancel(first).await, 200);
    let done = wait_run(&c, first).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(
        done["warnings"].to_string().contains("no cleanup"),
        "{done}"
    );
    assert!(count(&done, "scanned") < 20, "{done}");
    // A finished run cannot be cancelled; an unknown one is 404.
    assert_eq!(cancel(first).await, 409);
    assert_eq!(cancel(999).await, 404);
    // The cancelled queued run never started.
    assert!(run_state(&c, second).await["started_ms"].is_null());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_queues_runs() {
    let src = tempfile::tempdir().expect("source dir");
    source_file(src.path(), "a.mkv", b"v");
    let mut job = local_job("timed", src.path(), "/timed");
    job.schedule_secs = Some(1);
    let c = cluster(vec![job], &[]).await;
    let eu = c.region("eu").engine().clone();
    let ran = wait_for(Duration::from_secs(20), || {
        let eu = eu.clone();
        async move { exists(&eu, "/timed/a.strm") }
    })
    .await;
    assert!(ran, "no scheduled run wrote the output");
    let runs: Value = client()
        .get(format!("{}/api/v1/strm/runs", base(&c, "eu")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = runs
        .as_array()
        .and_then(|r| r.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["trigger"], "schedule", "{runs}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_mass_deletion_is_held() {
    let src = tempfile::tempdir().expect("source dir");
    for i in 0..4 {
        source_file(src.path(), &format!("lib/m{i}.mkv"), b"v");
    }
    let mut job = local_job("mass", src.path(), "/mass");
    job.webhook_prefix = Some("/cd".into());
    let c = cluster(vec![job], &[]).await;
    let eu = c.region("eu").engine();
    assert_eq!(
        count(&run_job(&c, "mass", "full", true).await, "written"),
        4
    );
    // The whole library "deleted" in one event (an unmount can look like this).
    let body = payload(vec![item("delete", true, "/cd/lib", "")]);
    let (status, reply) = post_webhook(&c, TOKEN, body.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{reply}");
    let id = serde_json::from_str::<Value>(&reply).unwrap()["queued"][0]
        .as_u64()
        .expect("run");
    let held = wait_run(&c, id).await;
    assert_eq!(held["state"], "held", "{held}");
    assert_eq!(held["held"], 4, "{held}");
    assert!(exists(eu, "/mass/lib/m0.strm"));
    c.shutdown().await;
}
