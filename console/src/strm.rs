//! `geosync strm`: STRM jobs and runs of a region, over the region's HTTP API
//! (`/api/v1/strm/...`), and the demo's STRM setup.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
pub use geosync::strm_api::DEFAULT_REGION_HTTP;
use geosync::strm_api::{Api, REQUEST_TIMEOUT};
use geosync_core::config::{JobConfig, RegionConfig, SourceConfig};
use serde_json::{Value, json};

/// How often `strm run` looks at its run's progress.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Width of the progress bar, in characters.
const BAR_WIDTH: usize = 30;

#[derive(Args, Debug)]
pub struct RegionHttp {
    /// The region's HTTP URL (where its STRM jobs run).
    #[arg(long = "http", env = "GEOSYNC_REGION_HTTP", default_value = DEFAULT_REGION_HTTP)]
    pub http: String,
}

#[derive(Subcommand, Debug)]
pub enum StrmCommand {
    /// List the region's STRM jobs and their last run.
    Jobs {
        #[command(flatten)]
        region: RegionHttp,
        #[arg(long)]
        json: bool,
    },
    /// Queue a run of a job and follow it to the end.
    Run {
        /// The job's name.
        job: String,
        /// Scan everything, write what changed, clean up orphans.
        #[arg(long, group = "strategy")]
        full: bool,
        /// Process only the given `--path`s (relative to the job's source), no scan.
        #[arg(long, group = "strategy", requires = "path")]
        incremental: bool,
        /// Scan, skip files whose output exists.
        #[arg(long, group = "strategy")]
        skip_existing: bool,
        /// Source paths for `--incremental` (repeatable).
        #[arg(long)]
        path: Vec<String>,
        /// Delete orphans at once instead of after one more run.
        #[arg(long)]
        now: bool,
        /// Queue the run and return without following it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        region: RegionHttp,
    },
    /// List recent runs (newest first).
    Runs {
        #[command(flatten)]
        region: RegionHttp,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running run.
    Cancel {
        run: u64,
        #[command(flatten)]
        region: RegionHttp,
    },
    /// Let a held cleanup (more deletions than the job's threshold) go ahead.
    ConfirmCleanup {
        run: u64,
        #[command(flatten)]
        region: RegionHttp,
    },
}

/// The region's STRM API for a subcommand.
fn api(region: &RegionHttp) -> Result<Api> {
    Api::new(&region.http, REQUEST_TIMEOUT)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn counts_line(run: &Value) -> String {
    let c = &run["counts"];
    format!(
        "scanned {} written {} unchanged {} skipped {} deleted {} failed {}",
        n(&c["scanned"]),
        n(&c["written"]),
        n(&c["unchanged"]),
        n(&c["skipped"]),
        n(&c["deleted"]),
        n(&c["failed"])
    )
}

fn run_line(run: &Value) -> String {
    format!(
        "{:>5}  {:<16} {:<13} {:<9} {:<9} {}",
        n(&run["id"]),
        run["job"].as_str().unwrap_or(""),
        run["strategy"].as_str().unwrap_or(""),
        run["trigger"].as_str().unwrap_or(""),
        run["state"].as_str().unwrap_or(""),
        counts_line(run)
    )
}

/// Runs a `geosync strm` subcommand.
pub async fn strm(command: StrmCommand) -> Result<()> {
    match command {
        StrmCommand::Jobs { region, json } => {
            let jobs = api(&region)?.get("/api/v1/strm/jobs").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
                return Ok(());
            }
            let list = jobs.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no STRM jobs in this region (add [[strm.jobs]] to its configuration)");
            }
            for j in list {
                println!(
                    "{}  {} -> {}  mode {}  strategy {}  workers {}",
                    j["name"].as_str().unwrap_or(""),
                    j["source"].as_str().unwrap_or(""),
                    j["output"].as_str().unwrap_or(""),
                    j["mode"].as_str().unwrap_or(""),
                    j["strategy"].as_str().unwrap_or(""),
                    n(&j["max_concurrency"]),
                );
                if let Some(note) = j["note"].as_str() {
                    println!("    note: {note}");
                }
                if j["last_run"].is_object() {
                    println!("    last run: {}", run_line(&j["last_run"]).trim_start());
                }
            }
            Ok(())
        }
        StrmCommand::Run {
            job,
            full,
            incremental,
            skip_existing,
            path,
            now,
            no_wait,
            region,
        } => {
            let api = api(&region)?;
            let strategy = match (full, incremental, skip_existing) {
                (true, _, _) => Some("full"),
                (_, true, _) => Some("incremental"),
                (_, _, true) => Some("skip-existing"),
                _ => None,
            };
            if !path.is_empty() && !incremental {
                bail!("--path goes with --incremental");
            }
            let estimate = last_scanned(&api, &job).await;
            let reply = api
                .post(
                    "/api/v1/strm/runs",
                    json!({"job": job, "strategy": strategy, "now": now, "paths": path}),
                )
                .await?;
            let id = n(&reply["id"]);
            eprintln!("run {id} queued");
            if no_wait {
                println!("{id}");
                return Ok(());
            }
            follow(&api, id, estimate).await
        }
        StrmCommand::Runs {
            region,
            limit,
            json,
        } => {
            let runs = api(&region)?
                .get(&format!("/api/v1/strm/runs?limit={limit}"))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
                return Ok(());
            }
            println!(
                "{:>5}  {:<16} {:<13} {:<9} {:<9} COUNTS",
                "RUN", "JOB", "STRATEGY", "TRIGGER", "STATE"
            );
            for r in runs.as_array().cloned().unwrap_or_default() {
                println!("{}", run_line(&r));
                if n(&r["held"]) > 0 && r["confirmed_by"].is_null() {
                    println!(
                        "       cleanup of {} files held: geosync strm confirm-cleanup {}",
                        n(&r["held"]),
                        n(&r["id"])
                    );
                }
            }
            Ok(())
        }
        StrmCommand::Cancel { run, region } => {
            api(&region)?
                .post(&format!("/api/v1/strm/runs/{run}/cancel"), json!({}))
                .await?;
            println!("run {run} cancelled");
            Ok(())
        }
        StrmCommand::ConfirmCleanup { run, region } => {
            let api = api(&region)?;
            let reply = api
                .post(
                    &format!("/api/v1/strm/runs/{run}/confirm-cleanup"),
                    json!({}),
                )
                .await?;
            let id = n(&reply["id"]);
            eprintln!("cleanup of run {run} confirmed: run {id} deletes the held files");
            follow(&api, id, 0).await
        }
    }
}

/// Files the job's newest finished run scanned: the progress bar's estimate of the total.
async fn last_scanned(api: &Api, job: &str) -> u64 {
    let Ok(runs) = api.get("/api/v1/strm/runs?limit=100").await else {
        return 0;
    };
    runs.as_array()
        .and_then(|r| {
            r.iter()
                .find(|r| r["job"] == job && r["state"] == "done" && r["strategy"] != "incremental")
        })
        .map_or(0, |r| n(&r["counts"]["scanned"]))
}

/// Shows the run's progress on standard error until it ends; prints its result.
async fn follow(api: &Api, id: u64, estimate: u64) -> Result<()> {
    let mut spin = 0usize;
    let run = loop {
        let run = api.get(&format!("/api/v1/strm/runs/{id}")).await?;
        let state = run["state"].as_str().unwrap_or("");
        let scanned = n(&run["counts"]["scanned"]);
        let bar = match (scanned.min(estimate) * BAR_WIDTH as u64).checked_div(estimate) {
            Some(filled) => {
                let filled = filled as usize;
                format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR_WIDTH - filled))
            }
            None => {
                spin = (spin + 1) % 4;
                format!("[{}]", ["|", "/", "-", "\\"][spin])
            }
        };
        eprint!("\r{bar} {state:<8} {}   ", counts_line(&run));
        let _ = std::io::stderr().flush();
        if !matches!(state, "queued" | "running") {
            eprintln!();
            break run;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    println!("{}", run_line(&run).trim_start());
    for w in run["warnings"].as_array().into_iter().flatten() {
        println!("warning: {}", w.as_str().unwrap_or(""));
    }
    for e in run["errors"].as_array().into_iter().flatten() {
        println!("error: {}", e.as_str().unwrap_or(""));
    }
    match run["state"].as_str() {
        Some("done") => Ok(()),
        Some("held") => bail!(
            "run {id}: the cleanup of {} files is over the job's threshold; check, then run \
             `geosync strm confirm-cleanup {id}`",
            n(&run["held"])
        ),
        Some(state) => bail!("run {id} ended {state}"),
        None => bail!("run {id}: no state in {run}"),
    }
}

/// A demo secret kept in `<dir>/<name>`, so links and the webhook stay valid across restarts.
pub fn demo_secret(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 16 => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom for the STRM secret")?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secret)
}

/// The demo's STRM setup: every region shares the secret; the first one runs job `demo`, which
/// turns `<dir>/media` into `.strm` files under `/strm/demo`.
pub fn demo_setup(dir: &Path, configs: &mut [RegionConfig]) -> Result<()> {
    let secret = demo_secret(dir, "strm-secret")?;
    let token = demo_secret(dir, "strm-webhook-token")?;
    let media = std::path::absolute(dir.join("media"))
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    std::fs::create_dir_all(&media)
        .with_context(|| format!("cannot create {}", media.display()))?;
    for (i, config) in configs.iter_mut().enumerate() {
        config.strm.secret = Some(secret.clone());
        config.strm.webhook_token = Some(token.clone());
        if i == 0 {
            let source = SourceConfig::Local {
                path: media.clone(),
                download_url: None,
            };
            config.strm.jobs = vec![JobConfig::new("demo", source, "/strm/demo")];
        }
        config.validate()?;
    }
    Ok(())
}
