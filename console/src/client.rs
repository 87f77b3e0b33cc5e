//! The operator and file commands: gRPC clients of the coordinator's Admin
//! service and of a region's Files service.

use std::io::Write;

use anyhow::{Context, Result, bail};
use geosync::tui::app::{BulkPlan, conflict_matches};
use geosync::tui::{Choice, Operation, run_operation};
use geosync_proto::v1;
use geosync_proto::v1::admin_client::AdminClient;
use geosync_proto::v1::files_client::FilesClient;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::cli::{
    ConflictsCommand, ConsoleArgs, FileArgs, MkdirArgs, PutArgs, QueueCommand, RegionActionArgs,
    RmArgs, StatusArgs,
};

/// Bytes per message when uploading.
const PUT_PIECE: usize = 1 << 20;

async fn channel(url: &str) -> Result<Channel> {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid URL {url}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach {url}"))
}

async fn admin(url: &str) -> Result<AdminClient<Channel>> {
    Ok(AdminClient::new(channel(url).await?)
        .max_decoding_message_size(geosync_proto::MAX_MESSAGE_BYTES))
}

async fn files(url: &str) -> Result<FilesClient<Channel>> {
    Ok(FilesClient::new(channel(url).await?)
        .max_decoding_message_size(geosync_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(geosync_proto::MAX_MESSAGE_BYTES))
}

/// A status from the server as a readable error.
fn failed(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

fn state_name(state: i32) -> &'static str {
    match v1::RegionState::try_from(state) {
        Ok(v1::RegionState::Healthy) => "healthy",
        Ok(v1::RegionState::Degraded) => "degraded",
        Ok(v1::RegionState::Offline) => "offline",
        _ => "unknown",
    }
}

/// The `status --json` object (the contract scripts rely on).
pub fn status_json(view: &v1::ClusterView) -> serde_json::Value {
    let leader = view.leader.clone().unwrap_or_default();
    let quorum = view.quorum.unwrap_or_default();
    json!({
        "epoch": view.epoch,
        "head": view.head,
        "leader": {"id": leader.id, "term": leader.term},
        "quorum": {
            "total": quorum.total,
            "healthy": quorum.healthy,
            "required": quorum.required,
            "sufficient": quorum.sufficient,
        },
        "regions": view.regions.iter().map(|r| {
            let q = r.queue.clone().unwrap_or_default();
            json!({
                "id": r.id,
                "state": state_name(r.state),
                "acked": r.acked,
                "lag_events": r.lag_events,
                "lag_seconds": r.lag_seconds,
                "queue": {"pending": q.pending, "inflight": q.inflight, "retrying": q.retrying, "dead": q.dead},
                "clock_drift_ms": r.clock_drift_ms,
                "paused": r.paused,
            })
        }).collect::<Vec<_>>(),
    })
}

pub async fn status(args: StatusArgs) -> Result<()> {
    let view = admin(&args.coordinator.coordinator)
        .await?
        .get_cluster(v1::WatchRequest {})
        .await
        .map_err(failed)?
        .into_inner();
    if args.json {
        println!("{}", status_json(&view));
        return Ok(());
    }
    let leader = view.leader.clone().unwrap_or_default();
    let q = view.quorum.unwrap_or_default();
    println!(
        "epoch {}  head {}  leader {} (term {})",
        view.epoch, view.head, leader.id, leader.term
    );
    println!(
        "quorum {}/{} healthy, {} required{}",
        q.healthy,
        q.total,
        q.required,
        if q.sufficient { "" } else { "  INSUFFICIENT" }
    );
    println!(
        "{:<12} {:<9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>6} {:>9}",
        "REGION",
        "STATE",
        "ACKED",
        "LAG",
        "LAG(s)",
        "PENDING",
        "INFLIGHT",
        "RETRYING",
        "DEAD",
        "DRIFT(ms)"
    );
    for r in &view.regions {
        let qs = r.queue.clone().unwrap_or_default();
        println!(
            "{:<12} {:<9} {:>8} {:>8} {:>9.1} {:>8} {:>8} {:>8} {:>6} {:>9}",
            r.id,
            state_name(r.state),
            r.acked,
            r.lag_events,
            r.lag_seconds,
            qs.pending,
            qs.inflight,
            qs.retrying,
            qs.dead,
            r.clock_drift_ms
        );
    }
    if view.conflicts_open > 0 {
        println!(
            "{} open conflict(s): geosync conflicts list",
            view.conflicts_open
        );
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `conflicts list --json` array (the contract scripts rely on).
pub fn conflicts_json(conflicts: &[v1::Conflict]) -> serde_json::Value {
    serde_json::Value::Array(
        conflicts
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "path": c.path,
                    "strategy": c.strategy,
                    "detected_at": c.detected_at_ms,
                    "versions": c.versions.iter().map(|v| {
                        let hlc = v.hlc.clone().unwrap_or_default();
                        json!({
                            "region": v.region,
                            "size": v.size,
                            "hash": hex(&v.hash),
                            "hlc": format!("{}.{}@{}", hlc.physical_ms, hlc.logical, hlc.region),
                        })
                    }).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

pub async fn conflicts(command: ConflictsCommand) -> Result<()> {
    match command {
        ConflictsCommand::List { coordinator, json } => {
            let list = admin(&coordinator.coordinator)
                .await?
                .list_conflicts(v1::ListConflictsRequest {})
                .await
                .map_err(failed)?
                .into_inner()
                .conflicts;
            if json {
                println!("{}", conflicts_json(&list));
                return Ok(());
            }
            if list.is_empty() {
                println!("no open conflicts");
            }
            for c in &list {
                let regions: Vec<&str> = c.versions.iter().map(|v| v.region.as_str()).collect();
                println!(
                    "{}  {}  {}  versions from {}",
                    c.id,
                    c.path,
                    c.strategy,
                    regions.join(", ")
                );
            }
            Ok(())
        }
        ConflictsCommand::Resolve {
            id,
            keep,
            coordinator,
        } => {
            let choice = Choice::from_keep(&keep);
            admin(&coordinator.coordinator)
                .await?
                .resolve_conflict(v1::ResolveConflictRequest {
                    id: id.clone(),
                    choice: Some(choice.to_wire()),
                })
                .await
                .map_err(failed)?;
            println!("resolved {id}: {}", choice.describe());
            Ok(())
        }
        ConflictsCommand::ResolveAll {
            keep,
            filter,
            yes,
            coordinator,
        } => {
            let mut client = admin(&coordinator.coordinator).await?;
            let filter = filter.to_lowercase();
            let chosen: Vec<v1::Conflict> = client
                .list_conflicts(v1::ListConflictsRequest {})
                .await
                .map_err(failed)?
                .into_inner()
                .conflicts
                .into_iter()
                .filter(|c| conflict_matches(c, &filter))
                .collect();
            let choice = Choice::from_keep(&keep);
            let plan = BulkPlan::new(&chosen, &choice);
            for line in &plan.details {
                println!("{line}");
            }
            if !yes {
                println!(
                    "{} to resolve, {} skipped: nothing done; add --yes to carry it out",
                    plan.operations.len(),
                    plan.skipped
                );
                return Ok(());
            }
            let mut failures = 0;
            for op in &plan.operations {
                match run_operation(&mut client, op).await {
                    Ok(()) => println!("done: {}", op.describe()),
                    Err(e) => {
                        failures += 1;
                        eprintln!("failed: {}: {e}", op.describe());
                    }
                }
            }
            if failures > 0 {
                bail!("{failures} of {} resolutions failed", plan.operations.len());
            }
            Ok(())
        }
    }
}

fn item_state(state: i32) -> &'static str {
    match v1::QueueItemState::try_from(state) {
        Ok(v1::QueueItemState::Pending) => "pending",
        Ok(v1::QueueItemState::InFlight) => "in-flight",
        Ok(v1::QueueItemState::Retrying) => "retrying",
        Ok(v1::QueueItemState::Dead) => "dead",
        _ => "unknown",
    }
}

pub async fn queue(command: QueueCommand) -> Result<()> {
    match command {
        QueueCommand::List {
            region,
            json,
            coordinator,
        } => {
            let mut client = admin(&coordinator.coordinator).await?;
            let regions = match region {
                Some(r) => vec![r],
                None => client
                    .get_cluster(v1::WatchRequest {})
                    .await
                    .map_err(failed)?
                    .into_inner()
                    .regions
                    .into_iter()
                    .map(|r| r.id)
                    .collect(),
            };
            let mut all = Vec::new();
            for r in regions {
                let items = client
                    .list_queue(v1::ListQueueRequest {
                        region: r.clone(),
                        limit: 1000,
                    })
                    .await
                    .map_err(failed)
                    .with_context(|| format!("queue of region {r}"))?
                    .into_inner()
                    .items;
                all.extend(items.into_iter().map(|i| (r.clone(), i)));
            }
            if json {
                let items: Vec<_> = all
                    .iter()
                    .map(|(r, i)| {
                        json!({
                            "region": r, "id": i.id, "priority": i.priority,
                            "op": v1::ChangeOp::try_from(i.op).map(|o| o.as_str_name()).unwrap_or("unknown"),
                            "path": i.path, "attempts": i.attempts, "state": item_state(i.state),
                            "next_attempt_ms": i.next_attempt_ms, "last_error": i.last_error,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(items));
                return Ok(());
            }
            for (r, i) in &all {
                println!(
                    "{r:<8} {:>8} p{} {:<9} {:>3} tries {}  {}",
                    i.id,
                    i.priority,
                    item_state(i.state),
                    i.attempts,
                    i.path,
                    i.last_error
                );
            }
            Ok(())
        }
        QueueCommand::Retry {
            id,
            region,
            coordinator,
        } => {
            admin(&coordinator.coordinator)
                .await?
                .retry_queue_item(v1::QueueItemRequest {
                    region: region.clone(),
                    id,
                })
                .await
                .map_err(failed)?;
            println!("item {id} of region {region} is due now");
            Ok(())
        }
        QueueCommand::Drop {
            id,
            region,
            yes,
            coordinator,
        } => {
            if !yes {
                bail!(
                    "dropping item {id} of region {region} loses that change for the other regions; add --yes"
                );
            }
            admin(&coordinator.coordinator)
                .await?
                .drop_queue_item(v1::QueueItemRequest {
                    region: region.clone(),
                    id,
                })
                .await
                .map_err(failed)?;
            println!("dropped item {id} of region {region}");
            Ok(())
        }
    }
}

/// Pause, resume or resync: what `geosync pause|resume|resync REGION` does.
#[derive(Debug, Clone, Copy)]
pub enum RegionAction {
    Pause,
    Resume,
    Resync,
}

pub async fn region_action(args: RegionActionArgs, action: RegionAction) -> Result<()> {
    let op = match action {
        RegionAction::Pause => Operation::Pause(args.region),
        RegionAction::Resume => Operation::Resume(args.region),
        RegionAction::Resync => Operation::Resync(args.region),
    };
    let mut client = admin(&args.coordinator.coordinator).await?;
    run_operation(&mut client, &op)
        .await
        .map_err(|e| anyhow::anyhow!("cannot {}: {e}", op.describe()))?;
    println!("done: {}", op.describe());
    Ok(())
}

/// The console's log directory when none is given.
fn default_log_dir() -> std::path::PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/state"))
        })
        .unwrap_or_else(std::env::temp_dir);
    state.join("geosync")
}

pub async fn console(args: ConsoleArgs) -> Result<()> {
    let dir = args.log_dir.unwrap_or_else(default_log_dir);
    let _log = geosync::tui::log_to_file(&dir, "console")?;
    let options = geosync::tui::Options {
        coordinator: args.coordinator.coordinator,
        readonly: args.readonly,
        color: !geosync::tui::no_color(),
    };
    geosync::tui::run(options, terminated()).await?;
    Ok(())
}

/// Completes on SIGTERM (Ctrl-C reaches the console as a key while it runs).
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

pub async fn ls(args: FileArgs) -> Result<()> {
    let mut client = files(&args.region.region).await?;
    let path = args.path.into_bytes();
    let info = client
        .stat(v1::PathRequest { path: path.clone() })
        .await
        .map_err(failed)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    if info.kind() != v1::NodeKind::Directory {
        writeln!(out, "{:>12}  {}", info.size, String::from_utf8_lossy(&path))?;
        return Ok(());
    }
    let entries = client
        .list(v1::PathRequest { path })
        .await
        .map_err(failed)?
        .into_inner()
        .entries;
    for e in entries {
        let suffix = if e.kind() == v1::NodeKind::Directory {
            "/"
        } else {
            ""
        };
        writeln!(
            out,
            "{:>12}  {}{suffix}",
            e.size,
            String::from_utf8_lossy(&e.name)
        )?;
    }
    Ok(())
}

pub async fn cat(args: FileArgs) -> Result<()> {
    let mut client = files(&args.region.region).await?;
    let request = v1::ReadRequest {
        path: args.path.into_bytes(),
        offset: 0,
        length: 0,
    };
    let mut stream = client.read(request).await.map_err(failed)?.into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(piece) = stream.next().await {
        out.write_all(&piece.map_err(failed)?.data)?;
    }
    out.flush()?;
    Ok(())
}

pub async fn put(args: PutArgs) -> Result<()> {
    let mut client = files(&args.region.region).await?;
    let mut data = Vec::new();
    match args.file.as_deref() {
        Some(p) if p.as_os_str() != "-" => {
            data = tokio::fs::read(p)
                .await
                .with_context(|| format!("cannot read {}", p.display()))?;
        }
        _ => {
            tokio::io::stdin()
                .read_to_end(&mut data)
                .await
                .context("cannot read standard input")?;
        }
    }
    let header = v1::WriteRequest {
        part: Some(v1::write_request::Part::Header(v1::WriteHeader {
            path: args.path.clone().into_bytes(),
            mode: 0,
        })),
    };
    let pieces: Vec<v1::WriteRequest> = std::iter::once(header)
        .chain(data.chunks(PUT_PIECE).map(|c| v1::WriteRequest {
            part: Some(v1::write_request::Part::Data(c.to_vec())),
        }))
        .collect();
    let info = client
        .write(tokio_stream::iter(pieces))
        .await
        .map_err(failed)?
        .into_inner();
    println!("{}: {} bytes", args.path, info.size);
    Ok(())
}

pub async fn rm(args: RmArgs) -> Result<()> {
    let removed = files(&args.region.region)
        .await?
        .remove(v1::RemoveRequest {
            path: args.path.into_bytes(),
            recursive: args.recursive,
        })
        .await
        .map_err(failed)?
        .into_inner()
        .removed;
    println!("removed {removed}");
    Ok(())
}

pub async fn mkdir(args: MkdirArgs) -> Result<()> {
    files(&args.region.region)
        .await?
        .mkdir(v1::MkdirRequest {
            path: args.path.into_bytes(),
            mode: 0,
            parents: args.parents,
        })
        .await
        .map_err(failed)?;
    Ok(())
}
