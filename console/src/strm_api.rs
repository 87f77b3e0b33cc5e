//! The client of a region's STRM API (`/api/v1/strm/...`), shared by
//! `geosync strm` and the console's STRM view, and the jobs and runs it
//! answers with.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The region HTTP URL when none is given (the first demo region).
pub const DEFAULT_REGION_HTTP: &str = "http://127.0.0.1:8410";

/// How long one API request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A region's STRM API.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// A client of the region at `url` (its HTTP URL), each request taking at most `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Api> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--http {base:?}: expected the region's HTTP URL, such as {DEFAULT_REGION_HTTP}");
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api { base, http })
    }

    async fn answer(&self, what: &str, request: reqwest::RequestBuilder) -> Result<Value> {
        let resp = request
            .send()
            .await
            .with_context(|| format!("{what}: cannot reach the region at {}", self.base))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{what}: {} ({status})", body.trim());
        }
        serde_json::from_str(&body).with_context(|| format!("{what}: unreadable answer {body:?}"))
    }

    /// `GET <path>` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        self.answer(path, self.http.get(&url)).await
    }

    /// `POST <path>` with a JSON body; the answer as JSON.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        self.answer(path, self.http.post(&url).json(&body)).await
    }

    /// The region's jobs, each with its newest run.
    pub async fn jobs(&self) -> Result<Vec<Job>> {
        let v = self.get("/api/v1/strm/jobs").await?;
        Ok(list(&v).iter().map(Job::from_json).collect())
    }

    /// The newest `limit` runs, newest first.
    pub async fn runs(&self, limit: usize) -> Result<Vec<Run>> {
        let v = self
            .get(&format!("/api/v1/strm/runs?limit={limit}"))
            .await?;
        Ok(list(&v).iter().map(Run::from_json).collect())
    }

    /// Queues a run of `job` (`strategy` such as `full` or `skip-existing`; `None`: the
    /// job's own), as the console asked for it; returns its id.
    pub async fn start_console_run(&self, job: &str, strategy: Option<&str>) -> Result<u64> {
        let reply = self
            .post(
                "/api/v1/strm/runs",
                json!({"job": job, "strategy": strategy, "trigger": "console"}),
            )
            .await?;
        Ok(n(&reply["id"]))
    }

    /// Cancels a queued or running run.
    pub async fn cancel(&self, run: u64) -> Result<()> {
        self.post(&format!("/api/v1/strm/runs/{run}/cancel"), json!({}))
            .await
            .map(drop)
    }

    /// Lets a held cleanup go ahead; returns the id of the run that deletes the files.
    pub async fn confirm_cleanup(&self, run: u64) -> Result<u64> {
        let reply = self
            .post(
                &format!("/api/v1/strm/runs/{run}/confirm-cleanup"),
                json!({}),
            )
            .await?;
        Ok(n(&reply["id"]))
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

/// What a run did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub scanned: u64,
    pub written: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub deleted: u64,
    pub failed: u64,
}

impl Counts {
    fn from_json(c: &Value) -> Counts {
        Counts {
            scanned: n(&c["scanned"]),
            written: n(&c["written"]),
            unchanged: n(&c["unchanged"]),
            skipped: n(&c["skipped"]),
            deleted: n(&c["deleted"]),
            failed: n(&c["failed"]),
        }
    }
}

/// One run of a job, as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    pub id: u64,
    pub job: String,
    pub strategy: String,
    pub trigger: String,
    /// `queued`, `running`, `done`, `held`, `failed` or `cancelled`.
    pub state: String,
    pub counts: Counts,
    pub errors: Vec<String>,
    /// How many deletions a held cleanup waits to make.
    pub held: u64,
    /// For a held run: the confirmation run queued for it.
    pub confirmed_by: Option<u64>,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

impl Run {
    /// A run from its JSON (missing fields read as empty).
    pub fn from_json(r: &Value) -> Run {
        Run {
            id: n(&r["id"]),
            job: s(&r["job"]),
            strategy: s(&r["strategy"]),
            trigger: s(&r["trigger"]),
            state: s(&r["state"]),
            counts: Counts::from_json(&r["counts"]),
            errors: list(&r["errors"]).iter().map(s).collect(),
            held: n(&r["held"]),
            confirmed_by: r["confirmed_by"].as_u64(),
            created_ms: n(&r["created_ms"]),
            started_ms: r["started_ms"].as_u64(),
            finished_ms: r["finished_ms"].as_u64(),
        }
    }

    /// Whether it is queued or running.
    pub fn is_active(&self) -> bool {
        matches!(self.state.as_str(), "queued" | "running")
    }

    /// Whether its cleanup is held and no one confirmed it yet.
    pub fn awaits_confirmation(&self) -> bool {
        self.state == "held" && self.confirmed_by.is_none()
    }
}

/// A job, as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    pub source: String,
    pub output: String,
    pub mode: String,
    pub strategy: String,
    /// The newest run, if any.
    pub last_run: Option<Run>,
}

impl Job {
    /// A job from its JSON (missing fields read as empty).
    pub fn from_json(j: &Value) -> Job {
        Job {
            name: s(&j["name"]),
            source: s(&j["source"]),
            output: s(&j["output"]),
            mode: s(&j["mode"]),
            strategy: s(&j["strategy"]),
            last_run: j["last_run"]
                .is_object()
                .then(|| Run::from_json(&j["last_run"])),
        }
    }
}
