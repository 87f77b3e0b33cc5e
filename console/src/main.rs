//! `geosync`: the one binary. Runs coordinators, regions and a whole demo
//! cluster, and is the operator's CLI (status, conflicts, queues, pause,
//! resume, resync, files) and console (the TUI lives in the library half,
//! `geosync::tui`).

mod cli;
mod client;
mod mounts;
mod serve;
mod strm;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("geosync: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("geosync: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    use cli::Command;
    match cli.command {
        Command::Demo(args) => serve::demo(args).await,
        Command::Coordinator(args) => serve::coordinator(args).await,
        Command::Region(args) => serve::region(args).await,
        Command::Status(args) => client::status(args).await,
        Command::Conflicts(args) => client::conflicts(args).await,
        Command::Queue(args) => client::queue(args).await,
        Command::Console(args) => client::console(args).await,
        Command::Pause(args) => client::region_action(args, client::RegionAction::Pause).await,
        Command::Resume(args) => client::region_action(args, client::RegionAction::Resume).await,
        Command::Resync(args) => client::region_action(args, client::RegionAction::Resync).await,
        Command::Ls(args) => client::ls(args).await,
        Command::Cat(args) => client::cat(args).await,
        Command::Put(args) => client::put(args).await,
        Command::Rm(args) => client::rm(args).await,
        Command::Mkdir(args) => client::mkdir(args).await,
        Command::Strm(command) => strm::strm(command).await,
    }
}
