//! The HTTP surface of every process (axum; by default on the gRPC port + 1000).
//!
//! A coordinator serves:
//!
//! - `GET /metrics`: Prometheus text format 0.0.4 (see [`coordinator_metrics`]);
//! - `GET /api/sync/status`: `{"epoch": "...", "versions": {"<region>": <acked seq>}, "head": <seq>}`;
//! - `GET /api/v1/distributed/quorum`: `{"total", "healthy", "required", "sufficient"}`;
//! - `GET /healthz`: `ok`.
//!
//! A region serves:
//!
//! - `GET /metrics` (see [`region_metrics`]);
//! - `GET /api/sync/status`: `{"epoch": "<the epoch it follows>", "versions": {"<region>": <applied seq>}, "head": <applied seq>}`
//!   (the epoch is `""` until the region first synced with a coordinator);
//! - `GET /healthz`: `ok`;
//! - the STRM routes: `GET /stream/<path>`, `POST /api/v1/webhook/clouddrive` and the
//!   `/api/v1/strm/` API (see [`strm`]).
//!
//! Unknown paths get 404 and other methods 405. Store reads run on the
//! blocking pool; a failing one answers 500 with the error as text. The servers
//! stop on their process's [`CancellationToken`]: they stop accepting at once
//! and give open connections [`SHUTDOWN_GRACE`] to finish.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::{self, RegionId};
use crate::coordinator::registry::{Quorum, RegionState};
use crate::coordinator::{ClusterView, Coordinator, Counters};
use crate::node::RegionStatus;
use crate::queue::QueueStats;
use crate::{Engine, Error};

pub mod strm;

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long open connections may take to finish once the server is told to stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------

/// The kind of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// A sample value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(u64::from(v))
    }
}

/// Writes the Prometheus text exposition format (0.0.4): call
/// [`Exposition::family`] once per family, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape_help(help),
            kind.as_str()
        );
        self
    }

    /// One sample of the family started last.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Into<Value>,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        match value.into() {
            Value::Int(v) => {
                let _ = write!(self.out, "{v}");
            }
            Value::Float(v) => self.out.push_str(&format_float(v)),
        }
        self.out.push('\n');
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A HELP text as the text format wants it: `\` and newlines escaped.
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

// ---------------------------------------------------------------------------
// What the endpoints answer
// ---------------------------------------------------------------------------

/// The body of `GET /api/sync/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncStatus {
    pub epoch: String,
    pub versions: BTreeMap<String, u64>,
    pub head: u64,
}

const STATES: [RegionState; 3] = [
    RegionState::Healthy,
    RegionState::Degraded,
    RegionState::Offline,
];

/// The coordinator's metrics for a cluster view and its counters.
pub fn coordinator_metrics(view: &ClusterView, counters: &Counters) -> String {
    let mut m = Exposition::new();

    m.family(
        "sync_events_total",
        MetricKind::Counter,
        "Change events logged by the coordinator since it started, by origin region and op type.",
    );
    for ((region, op), n) in &counters.events {
        m.sample("sync_events_total", &[("region", region), ("type", op)], *n);
    }

    m.family(
        "sync_queue_size",
        MetricKind::Gauge,
        "Items in a region's sync queue (pending, in flight, retrying and dead) at its last heartbeat.",
    );
    for r in &view.regions {
        let q = r.record.queue;
        let size = q.pending + q.inflight + q.retrying + q.dead;
        m.sample("sync_queue_size", &[("region", r.record.id.as_str())], size);
    }

    m.family(
        "sync_lag_seconds",
        MetricKind::Gauge,
        "Age of the oldest logged event a region has not acknowledged, in seconds.",
    );
    for r in &view.regions {
        let labels = [("region", r.record.id.as_str())];
        m.sample("sync_lag_seconds", &labels, r.lag.seconds);
    }

    m.family(
        "sync_lag_events",
        MetricKind::Gauge,
        "Logged events a region has not acknowledged.",
    );
    for r in &view.regions {
        let labels = [("region", r.record.id.as_str())];
        m.sample("sync_lag_events", &labels, r.lag.events);
    }

    m.family(
        "conflicts_total",
        MetricKind::Counter,
        "Pushed events that met a conflict (resolved or left open), by pushing region and strategy.",
    );
    for ((region, strategy), n) in &counters.conflicts {
        let labels = [("region", region.as_str()), ("strategy", *strategy)];
        m.sample("conflicts_total", &labels, *n);
    }

    m.family(
        "sync_failures_total",
        MetricKind::Counter,
        "Pushed events the coordinator rejected, by pushing region.",
    );
    let mut failures: BTreeMap<&str, u64> = view
        .regions
        .iter()
        .map(|r| (r.record.id.as_str(), 0))
        .collect();
    for (region, n) in &counters.rejected {
        *failures.entry(region.as_str()).or_default() += n;
    }
    for (region, n) in failures {
        m.sample("sync_failures_total", &[("region", region)], n);
    }

    let q = view.quorum;
    m.family(
        "geosync_quorum_total",
        MetricKind::Gauge,
        "Registered regions.",
    )
    .sample("geosync_quorum_total", &[], q.total);
    m.family(
        "geosync_quorum_healthy",
        MetricKind::Gauge,
        "Healthy regions.",
    )
    .sample("geosync_quorum_healthy", &[], q.healthy);
    m.family(
        "geosync_quorum_required",
        MetricKind::Gauge,
        "Healthy regions a quorum requires (half the registered ones, rounded up).",
    )
    .sample("geosync_quorum_required", &[], q.required);
    m.family(
        "geosync_quorum_sufficient",
        MetricKind::Gauge,
        "1 when enough regions are healthy for a quorum.",
    )
    .sample("geosync_quorum_sufficient", &[], q.sufficient);

    m.family(
        "geosync_log_head",
        MetricKind::Gauge,
        "The last sequence assigned in the change log.",
    )
    .sample("geosync_log_head", &[], view.head);

    m.family(
        "geosync_conflicts_open",
        MetricKind::Gauge,
        "Manual conflicts waiting for an operator.",
    )
    .sample("geosync_conflicts_open", &[], view.conflicts_open);

    m.family(
        "geosync_region_state",
        MetricKind::Gauge,
        "1 for a region's current state (healthy, degraded or offline), 0 for the others.",
    );
    for r in &view.regions {
        for s in STATES {
            let labels = [("region", r.record.id.as_str()), ("state", s.as_str())];
            m.sample("geosync_region_state", &labels, r.state == s);
        }
    }

    m.family(
        "geosync_region_acked_seq",
        MetricKind::Gauge,
        "The highest sequence a region acknowledged.",
    );
    for r in &view.regions {
        let labels = [("region", r.record.id.as_str())];
        m.sample("geosync_region_acked_seq", &labels, r.acked);
    }

    m.finish()
}

/// What a region's metrics show, read from its live status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionSnapshot {
    pub applied: u64,
    pub ready: bool,
    pub events_applied: u64,
    pub push_failures: u64,
}

impl RegionSnapshot {
    pub fn of(status: &RegionStatus) -> Self {
        RegionSnapshot {
            applied: status.applied.load(Ordering::SeqCst),
            ready: status.ready.load(Ordering::SeqCst),
            events_applied: status.events_applied.load(Ordering::Relaxed),
            push_failures: status.push_failures.load(Ordering::Relaxed),
        }
    }
}

/// Items in a sync queue, whatever their state.
pub fn queue_size(stats: &QueueStats) -> u64 {
    stats.pending_by_priority.iter().sum::<u64>() + stats.inflight + stats.retrying + stats.dead
}

/// A region's metrics.
pub fn region_metrics(region: &str, s: RegionSnapshot, queue: &QueueStats) -> String {
    let labels = [("region", region)];
    let mut m = Exposition::new();
    m.family(
        "sync_events_total",
        MetricKind::Counter,
        "Change events this region applied from the log since it started.",
    )
    .sample(
        "sync_events_total",
        &[("region", region), ("type", "applied")],
        s.events_applied,
    );
    m.family(
        "sync_queue_size",
        MetricKind::Gauge,
        "Items in this region's sync queue (pending, in flight, retrying and dead).",
    )
    .sample("sync_queue_size", &labels, queue_size(queue));
    m.family(
        "sync_failures_total",
        MetricKind::Counter,
        "Pushes to the coordinator that failed since the region started.",
    )
    .sample("sync_failures_total", &labels, s.push_failures);
    m.family(
        "sync_applied_seq",
        MetricKind::Gauge,
        "The last log sequence this region applied.",
    )
    .sample("sync_applied_seq", &labels, s.applied);
    m.family(
        "geosync_region_ready",
        MetricKind::Gauge,
        "1 when the region is connected to a coordinator and caught up.",
    )
    .sample("geosync_region_ready", &labels, s.ready);
    m.finish()
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

/// A failure answered with 500 and the error as text.
struct Failure(String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        tracing::warn!(error = %self.0, "HTTP request failed");
        (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(e.to_string())
    }
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Failure::from),
        Err(e) => Err(Failure(format!("request task failed: {e}"))),
    }
}

fn prometheus(body: String) -> Response {
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], body).into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn coordinator_metrics_handler(
    State(c): State<Arc<Coordinator>>,
) -> Result<Response, Failure> {
    let (view, counters) = blocking(move || {
        let view = c.cluster(clock::system_ms())?;
        Ok((view, c.counters()))
    })
    .await?;
    Ok(prometheus(coordinator_metrics(&view, &counters)))
}

async fn coordinator_sync_status(
    State(c): State<Arc<Coordinator>>,
) -> Result<Json<SyncStatus>, Failure> {
    let (epoch, versions, head) = blocking(move || c.sync_status()).await?;
    Ok(Json(SyncStatus {
        epoch,
        versions: versions
            .into_iter()
            .map(|(r, seq)| (r.to_string(), seq))
            .collect(),
        head,
    }))
}

async fn coordinator_quorum(State(c): State<Arc<Coordinator>>) -> Result<Json<Quorum>, Failure> {
    Ok(Json(blocking(move || c.quorum(clock::system_ms())).await?))
}

/// The coordinator's routes.
pub fn coordinator_router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/metrics", get(coordinator_metrics_handler))
        .route("/api/sync/status", get(coordinator_sync_status))
        .route("/api/v1/distributed/quorum", get(coordinator_quorum))
        .route("/healthz", get(healthz))
        .with_state(coordinator)
}

/// What a region's HTTP server reads.
#[derive(Clone)]
pub struct RegionHttp {
    pub engine: Arc<Engine>,
    pub region: RegionId,
    pub status: Arc<RegionStatus>,
    /// The region's STRM engine (`/stream/`, the webhook, the STRM API).
    pub strm: crate::strm::Strm,
    /// Where cold content comes from (for `/stream/`).
    pub chunks: Arc<dyn crate::node::fetch::ChunkSource>,
}

async fn region_metrics_handler(State(r): State<RegionHttp>) -> Result<Response, Failure> {
    let engine = r.engine.clone();
    let stats = blocking(move || engine.queue.stats(clock::system_ms())).await?;
    let snapshot = RegionSnapshot::of(&r.status);
    Ok(prometheus(region_metrics(
        r.region.as_str(),
        snapshot,
        &stats,
    )))
}

async fn region_sync_status(State(r): State<RegionHttp>) -> Result<Json<SyncStatus>, Failure> {
    let engine = r.engine.clone();
    let epoch = blocking(move || crate::node::followed_epoch(&engine)).await?;
    let applied = r.status.applied.load(Ordering::SeqCst);
    Ok(Json(SyncStatus {
        epoch: epoch.unwrap_or_default(),
        versions: BTreeMap::from([(r.region.to_string(), applied)]),
        head: applied,
    }))
}

/// A region's routes.
pub fn region_router(state: RegionHttp) -> Router {
    Router::new()
        .route("/metrics", get(region_metrics_handler))
        .route("/api/sync/status", get(region_sync_status))
        .route("/healthz", get(healthz))
        .merge(strm::routes())
        .with_state(state)
}

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

/// Serves the coordinator's routes on `listener` until `shutdown`.
pub async fn serve_coordinator(
    coordinator: Arc<Coordinator>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    serve(
        coordinator_router(coordinator),
        listener,
        shutdown,
        "coordinator",
    )
    .await
}

/// Serves a region's routes on `listener` until `shutdown`.
pub async fn serve_region(state: RegionHttp, listener: TcpListener, shutdown: CancellationToken) {
    serve(region_router(state), listener, shutdown, "region").await
}

/// Serves `router` until `shutdown`, then waits up to [`SHUTDOWN_GRACE`] for
/// open connections (a client that never finishes its request cannot hold
/// the process's shutdown).
pub async fn serve(router: Router, listener: TcpListener, shutdown: CancellationToken, what: &str) {
    let addr = listener.local_addr().ok();
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let mut server = std::pin::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        _ = shutdown.cancelled() => match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(?addr, "{what} HTTP server: connections still open after the grace period");
                Ok(())
            }
        },
    };
    if let Err(e) = result {
        tracing::error!(?addr, error = %e, "{what} HTTP server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::log::Lag;
    use crate::coordinator::registry::{QueueReport, RegionRecord};
    use crate::coordinator::{LeaderInfo, RegionView};

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r"a\b"), r"a\\b");
        assert_eq!(escape_label_value("say \"hi\""), r#"say \"hi\""#);
        assert_eq!(escape_label_value("two\nlines"), r"two\nlines");
        assert_eq!(escape_label_value("plain é"), "plain é");
        let mut m = Exposition::new();
        m.family("x_total", MetricKind::Counter, "Help with \\ and\nnewline.")
            .sample("x_total", &[("a", "q\"\\\n"), ("b", "ok")], 3u64);
        assert_eq!(
            m.finish(),
            "# HELP x_total Help with \\\\ and\\nnewline.\n\
             # TYPE x_total counter\n\
             x_total{a=\"q\\\"\\\\\\n\",b=\"ok\"} 3\n"
        );
    }

    #[test]
    fn values_follow_the_text_format() {
        let mut m = Exposition::new();
        m.family("g", MetricKind::Gauge, "h")
            .sample("g", &[], 0.25)
            .sample("g", &[], f64::INFINITY)
            .sample("g", &[], f64::NEG_INFINITY)
            .sample("g", &[], f64::NAN)
            .sample("g", &[], true)
            .sample("g", &[], u64::MAX);
        let text = m.finish();
        let values: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(' ').nth(1).unwrap())
            .collect();
        assert_eq!(
            values,
            ["0.25", "+Inf", "-Inf", "NaN", "1", "18446744073709551615"]
        );
    }

    fn view() -> ClusterView {
        let region = |name: &str, state, queue| RegionView {
            record: RegionRecord {
                id: RegionId::new(name).unwrap(),
                grpc_endpoint: String::new(),
                http_endpoint: String::new(),
                last_seen_ms: 0,
                clock_drift_ms: 0,
                queue,
                paused: false,
                resync_requested: false,
            },
            state,
            acked: 5,
            lag: Lag {
                events: 2,
                seconds: 1.5,
            },
        };
        let regions = vec![
            region("eu", RegionState::Healthy, QueueReport::default()),
            region(
                "us",
                RegionState::Degraded,
                QueueReport {
                    pending: 1,
                    inflight: 2,
                    retrying: 3,
                    dead: 4,
                },
            ),
        ];
        ClusterView {
            epoch: "e".into(),
            head: 7,
            leader: LeaderInfo {
                id: "l".into(),
                term: 1,
            },
            quorum: Quorum::of(regions.iter().map(|r| r.state)),
            regions,
            conflicts_open: 0,
        }
    }

    #[test]
    fn coordinator_metrics_cover_every_family() {
        let mut counters = Counters::default();
        counters.events.insert(("eu".into(), "create"), 3);
        counters.conflicts.insert(("us".into(), "lww"), 1);
        counters.rejected.insert("us".into(), 2);
        let text = coordinator_metrics(&view(), &counters);
        for line in [
            "sync_events_total{region=\"eu\",type=\"create\"} 3",
            "sync_queue_size{region=\"eu\"} 0",
            "sync_queue_size{region=\"us\"} 10",
            "sync_lag_seconds{region=\"eu\"} 1.5",
            "sync_lag_events{region=\"us\"} 2",
            "conflicts_total{region=\"us\",strategy=\"lww\"} 1",
            "sync_failures_total{region=\"eu\"} 0",
            "sync_failures_total{region=\"us\"} 2",
            "geosync_quorum_healthy 1",
            "geosync_quorum_required 1",
            "geosync_log_head 7",
            "geosync_region_state{region=\"us\",state=\"degraded\"} 1",
            "geosync_region_state{region=\"us\",state=\"healthy\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample belongs to the family whose TYPE line came last.
        let mut family = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line} outside {family}");
            }
        }
    }

    #[test]
    fn region_metrics_show_the_status() {
        let queue = QueueStats {
            pending_by_priority: [1, 0, 2, 0],
            inflight: 1,
            ..QueueStats::default()
        };
        let snapshot = RegionSnapshot {
            applied: 9,
            ready: true,
            events_applied: 9,
            push_failures: 1,
        };
        let text = region_metrics("eu", snapshot, &queue);
        for line in [
            "sync_events_total{region=\"eu\",type=\"applied\"} 9",
            "sync_queue_size{region=\"eu\"} 4",
            "sync_failures_total{region=\"eu\"} 1",
            "sync_applied_seq{region=\"eu\"} 9",
            "geosync_region_ready{region=\"eu\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?}");
        }
    }
}
