//! `vmail-auth`: create and run a vmail authentication server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use vmail_auth::datadir::{self, InitOptions};
use vmail_auth::server;
use vmail_auth::service::SystemClock;

#[derive(Debug, Parser)]
#[command(name = "vmail-auth", version, about = "vmail authentication server")]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "VMAIL_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new server: CA, TLS certificate, cluster signing key, OPAQUE
    /// setup, data key and an empty database. Refuses a non-empty directory.
    Init {
        /// Where to create the server's files.
        #[arg(long)]
        data_dir: PathBuf,
        /// This server's name.
        #[arg(long)]
        name: String,
        /// Address for the public API.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: String,
        /// Extra host name or IP address for the TLS certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Run the server until SIGINT or SIGTERM.
    Serve {
        /// The directory `init` created.
        #[arg(long)]
        data_dir: PathBuf,
        /// Override the config's listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Init {
            data_dir,
            name,
            listen,
            sans,
        } => {
            let report = datadir::init(&InitOptions {
                dir: data_dir.clone(),
                name,
                listen,
                sans,
            })?;
            println!("initialised vmail-auth in {}", data_dir.display());
            println!(
                "CA certificate (clients trust it): {}",
                report.ca_cert.display()
            );
            println!(
                "cluster public key (clients verify certificates with it): {}",
                report.cluster_public_key
            );
            println!("clients connect to: {}", report.endpoint);
            println!(
                "client config: {} (copy to $VMAIL_HOME/config.toml)",
                report.client_config.display()
            );
            println!(
                "start it with: vmail-auth serve --data-dir {}",
                data_dir.display()
            );
        }
        Command::Serve { data_dir, listen } => {
            let svc = server::open(&data_dir, Arc::new(SystemClock))?;
            let addr = match listen {
                Some(a) => a,
                None => svc
                    .config()
                    .listen
                    .parse()
                    .expect("ServerConfig::validate checked the listen address"),
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}: is another server using it?"))?;
            server::serve(Arc::new(svc), listener, shutdown_signal()).await?;
        }
    }
    Ok(())
}
