//! `vmail`: the vmail command-line client.

mod cli;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A usage error is JSON too when --json was asked for, however it ends.
    let json = std::env::args_os()
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) if json && e.use_stderr() => {
            cli::output::JsonError::usage(&e).print();
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let json = args.json();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            return fail(json, anyhow::anyhow!("cannot start the async runtime: {e}"));
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(json, e),
    }
}

/// Reports a failed command on stderr (a JSON object under --json) and
/// gives its exit status: 2 for a command line that cannot run, else 1.
fn fail(json: bool, e: anyhow::Error) -> ExitCode {
    let code = if e.downcast_ref::<cli::output::UsageError>().is_some() {
        2
    } else {
        1
    };
    if json {
        cli::output::JsonError::new(&e, code).print();
    } else {
        // A closed stderr has no one left to tell.
        let _ = writeln!(std::io::stderr(), "error: {e:#}");
    }
    ExitCode::from(code)
}
