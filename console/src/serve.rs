//! Long-running commands: a coordinator, a region, or a whole demo cluster,
//! each until Ctrl-C or SIGTERM, then a graceful shutdown.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result, bail};
use geosync_core::clock::RegionId;
use geosync_core::config::{CoordinatorConfig, RegionConfig};
use geosync_core::coordinator::CoordinatorSettings;
use geosync_core::coordinator::server::CoordinatorNode;
use geosync_core::node::{RegionNode, RegionSettings};
use tokio::net::TcpListener;

use crate::cli::{CoordinatorArgs, DemoArgs, RegionArgs};
use crate::mounts;

/// Logs go to standard error; `RUST_LOG` picks what (default: info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Waits for Ctrl-C or SIGTERM.
async fn stop_signal() -> Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}

/// How an HTTP endpoint is printed (`-` when there is none).
fn http_url(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "-".to_owned(), |a| format!("http://{a}"))
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what}"))
}

async fn start_coordinator(config: &CoordinatorConfig) -> Result<CoordinatorNode> {
    let listener = bind(config.listen, "coordinator").await?;
    let http = bind(config.http_addr(), "coordinator's HTTP").await?;
    let settings = CoordinatorSettings::from_config(config);
    CoordinatorNode::start(&config.data_dir, settings, listener, Some(http))
        .await
        .with_context(|| {
            format!(
                "cannot start the coordinator in {}",
                config.data_dir.display()
            )
        })
}

async fn start_region(config: RegionConfig) -> Result<RegionNode> {
    let listener = bind(config.listen, &format!("region {}", config.region)).await?;
    let http = bind(
        config.http_addr(),
        &format!("region {}'s HTTP", config.region),
    )
    .await?;
    let data_dir = config.data_dir.clone();
    let region = config.region.clone();
    RegionNode::start(RegionSettings::new(config), listener, Some(http))
        .await
        .with_context(|| format!("cannot start region {region} in {}", data_dir.display()))
}

pub async fn coordinator(args: CoordinatorArgs) -> Result<()> {
    if args.print_config {
        print!("{}", CoordinatorConfig::example());
        return Ok(());
    }
    init_logging();
    let mut config = match &args.config {
        Some(path) => CoordinatorConfig::load(path)?,
        None => CoordinatorConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
        config.http_listen = None;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.validate()?;
    let node = start_coordinator(&config).await?;
    println!(
        "coordinator  grpc http://{}  http {}  epoch {}",
        node.grpc_addr(),
        http_url(node.http_addr()),
        node.coordinator().epoch()
    );
    stop_signal().await?;
    node.shutdown().await;
    Ok(())
}

pub async fn region(args: RegionArgs) -> Result<()> {
    if args.print_config {
        print!("{}", RegionConfig::example());
        return Ok(());
    }
    init_logging();
    let mut config = match (&args.config, &args.region) {
        (Some(path), _) => RegionConfig::load(path)?,
        (None, Some(id)) => RegionConfig::new(RegionId::new(id.as_str())?),
        (None, None) => bail!("give --config FILE or --region ID"),
    };
    if let Some(id) = &args.region {
        config.region = RegionId::new(id.as_str())?;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
        config.http_listen = None;
    }
    if let Some(url) = args.coordinator {
        config.coordinator = vec![url];
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(dir) = args.mount {
        config.mount = Some(dir);
    }
    config.validate()?;
    let mount_dir = config.mount.clone();
    let node = start_region(config).await?;
    let mounted = match &mount_dir {
        Some(dir) => match mounts::mount(&node, dir, args.mount_options.options()).await {
            Ok(m) => Some(m),
            Err(e) => {
                node.shutdown().await?;
                return Err(e);
            }
        },
        None => None,
    };
    println!(
        "region {}  grpc http://{}  http {}  mount {}",
        node.region(),
        node.grpc_addr(),
        http_url(node.http_addr()),
        mounted
            .as_ref()
            .map_or_else(|| "-".to_owned(), |m| m.path().display().to_string())
    );
    stop_signal().await?;
    mounts::unmount_all(mounted.into_iter().collect()).await;
    node.shutdown().await?;
    Ok(())
}

/// The configurations of a demo cluster under `dir` with ports from `base_port`.
pub fn demo_configs(
    dir: &Path,
    regions: &[String],
    base_port: u16,
) -> Result<(CoordinatorConfig, Vec<RegionConfig>)> {
    let localhost = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let port = |offset: u16| {
        base_port
            .checked_add(offset)
            .filter(|p| p.checked_add(1000).is_some())
            .with_context(|| {
                format!(
                    "--base-port {base_port} leaves no room for port +{offset} and its HTTP port"
                )
            })
    };
    let mut coordinator = CoordinatorConfig {
        listen: localhost(base_port),
        http_listen: None,
        data_dir: dir.join("coordinator"),
        ..CoordinatorConfig::default()
    };
    coordinator.validate()?;
    let url = format!("http://{}", coordinator.listen);
    let mut configs = Vec::new();
    for (i, name) in regions.iter().enumerate() {
        let id = RegionId::new(name.as_str()).with_context(|| format!("--regions: {name:?}"))?;
        let mut config = RegionConfig::new(id.clone());
        config.listen = localhost(port(10 + i as u16)?);
        config.http_listen = None;
        config.data_dir = dir.join(id.as_str());
        config.coordinator = vec![url.clone()];
        config.validate()?;
        configs.push(config);
    }
    if configs.is_empty() {
        bail!("--regions is empty: name at least one region");
    }
    Ok((coordinator, configs))
}

pub async fn demo(args: DemoArgs) -> Result<()> {
    // With the console up, the terminal is the console's: logs go to a file.
    let _log = if args.headless {
        init_logging();
        None
    } else {
        Some(geosync::tui::log_to_file(&args.dir.join("logs"), "demo")?)
    };
    let (coordinator_config, mut region_configs) =
        demo_configs(&args.dir, &args.regions, args.base_port)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    crate::strm::demo_setup(&args.dir, &mut region_configs)?;
    let coordinator = start_coordinator(&coordinator_config).await?;
    let mut regions = Vec::new();
    for config in region_configs {
        regions.push(start_region(config).await?);
    }
    let mut mounted = Vec::new();
    if !args.no_mount {
        for r in &regions {
            let dir = args.dir.join("mnt").join(r.region().as_str());
            let made = std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()));
            let m = match made {
                Ok(()) => mounts::mount(r, &dir, args.mount.options()).await,
                Err(e) => Err(e),
            };
            match m {
                Ok(m) => mounted.push(m),
                Err(e) => {
                    mounts::unmount_all(mounted).await;
                    return Err(e.context("(run with --no-mount to start without mounts)"));
                }
            }
        }
    }
    println!("geosync demo: data in {}", args.dir.display());
    println!(
        "  coordinator  grpc http://{}  http {}",
        coordinator.grpc_addr(),
        http_url(coordinator.http_addr())
    );
    for r in &regions {
        let mount = mounted
            .iter()
            .find(|m| m.path().ends_with(r.region().as_str()))
            .map_or_else(|| "-".to_owned(), |m| m.path().display().to_string());
        println!(
            "  region {:<5} grpc http://{}  http {}  mount {}",
            r.region().as_str(),
            r.grpc_addr(),
            http_url(r.http_addr()),
            mount
        );
    }
    println!("try:");
    if let (Some(first), Some(last)) = (regions.first(), regions.last()) {
        println!(
            "  echo hello | geosync put --region http://{} /hello.txt",
            first.grpc_addr()
        );
        println!(
            "  geosync cat --region http://{} /hello.txt",
            last.grpc_addr()
        );
    }
    println!(
        "  geosync status --coordinator http://{}",
        coordinator.grpc_addr()
    );
    if let Some(http) = coordinator.http_addr() {
        println!("  curl http://{http}/api/sync/status");
    }
    let console = if args.headless {
        stop_signal().await?;
        Ok(())
    } else {
        // The cluster runs while the console is open; quitting it (or a
        // signal) stops the demo.
        let options = geosync::tui::Options {
            coordinator: format!("http://{}", coordinator.grpc_addr()),
            readonly: false,
            color: !geosync::tui::no_color(),
        };
        geosync::tui::run(options, async {
            let _ = stop_signal().await;
        })
        .await
    };
    println!("stopping...");
    mounts::unmount_all(mounted).await;
    for r in regions {
        r.shutdown().await?;
    }
    coordinator.shutdown().await;
    console?;
    Ok(())
}
