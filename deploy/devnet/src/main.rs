//! `vmail-devnet`: the whole vmail system on one machine, for trying it and
//! for drills. `vmail demo` and `vmail testnet ...` run this program.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmail_devnet::testnet::TestnetCommand;

/// vmail-devnet: run the whole vmail system on this machine.
#[derive(Debug, Parser)]
#[command(name = "vmail-devnet", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system locally and narrate the paper's protocol.
    Demo,
    /// A local network (auth servers and peers) in the background.
    #[command(subcommand)]
    Testnet(TestnetCommand),
    /// Measure the overlay at N peer processes (a benchmark, minutes long).
    Scale(vmail_devnet::scale::ScaleArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and the testnet run auth servers: their Raft's complaints
    // about a server a drill killed on purpose are not the user's concern.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match &cli.command {
        Command::Demo => vmail_devnet::demo::run().await,
        Command::Testnet(t) => vmail_devnet::testnet::run(t).await,
        Command::Scale(a) => vmail_devnet::scale::run(a).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
