//! `vmail-auth`: create and run a vmail authentication server.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use vmail_auth::cluster::admin;
use vmail_auth::datadir::{self, InitOptions};
use vmail_auth::enroll::Enrollment;
use vmail_auth::server;
use vmail_auth::service::SystemClock;

#[derive(Debug, Parser)]
#[command(name = "vmail-auth", version, about = "vmail authentication server")]
pub(crate) struct Cli {
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
    /// Found a new auth group: CA, TLS certificate, cluster signing key,
    /// OPAQUE setup, data key and an empty database. The first `serve` makes
    /// this server the group's only member. Refuses a non-empty directory.
    Init {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run the server until SIGINT or SIGTERM.
    Serve {
        /// The directory `init` or `join` created.
        #[arg(long)]
        data_dir: PathBuf,
        /// Override the config's public listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override the config's internal (Raft) listen address.
        #[arg(long)]
        raft_listen: Option<SocketAddr>,
        /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP),
        /// e.g. 127.0.0.1:9464. Overrides `metrics_listen` in config.toml;
        /// off when neither is set.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
    },
    /// Join an existing group and run until SIGINT or SIGTERM. Fetches the
    /// group keys from a member over mutual TLS (with a credential from
    /// `vmail-auth cluster credential`), creates the data directory, starts
    /// serving, and asks the leader to add this server: as a learner, then
    /// as a voter once caught up. Rerun it on a directory it created to
    /// resume an unfinished join; afterwards use `serve`.
    Join {
        /// Internal URL of any member, e.g. https://auth-1:7444.
        #[arg(long)]
        via: String,
        /// The join credential (PEM bundle). Not needed to resume.
        #[arg(long)]
        credential: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Start unattended, for servers started together (the compose
    /// testnet): serve from the data directory if it exists; otherwise
    /// found the group (the founder, if no one has yet) or get a join
    /// credential through the enrolment directory, join, then serve. While
    /// serving, answer other servers' enrolment requests and publish
    /// `ca.pem` and `client.toml` for clients.
    Start {
        #[command(flatten)]
        server: ServerArgs,
        /// The member that founds the group if it has not been founded.
        #[arg(long)]
        founder: String,
        /// Every member's host name, comma-separated, this one included;
        /// each is reached on this server's two ports.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
        /// The enrolment directory that the group's servers, and only
        /// they, share.
        #[arg(long)]
        enroll_dir: PathBuf,
        /// Where to publish `ca.pem` and `client.toml` for clients.
        #[arg(long)]
        public_dir: PathBuf,
        /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP),
        /// e.g. 0.0.0.0:9464. Overrides `metrics_listen` in config.toml;
        /// off when neither is set.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
    },
    /// Ask a server's gRPC health service whether it serves; exits 0 if it
    /// does (container health checks).
    Health {
        /// The server's data directory (for its address and CA).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Show or change the group's membership.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Print a shell completion script, e.g.
    /// `vmail-auth completions bash > /etc/bash_completion.d/vmail-auth`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for vmail-auth and each subcommand into DIR.
    #[command(hide = true)]
    Man {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Where to create the server's files.
    #[arg(long)]
    data_dir: PathBuf,
    /// This server's name, unique in the group.
    #[arg(long)]
    name: String,
    /// Address for the public API.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: String,
    /// Address for the internal group service (Raft; mutual TLS).
    #[arg(long, default_value = "127.0.0.1:7444")]
    raft_listen: String,
    /// Host name or IP address others reach this server at (default: the listen host).
    #[arg(long, default_value = "")]
    advertise_host: String,
    /// Extra host name or IP address for the TLS certificate (repeatable).
    #[arg(long = "san")]
    sans: Vec<String>,
}

impl ServerArgs {
    fn init_options(&self) -> InitOptions {
        InitOptions {
            dir: self.data_dir.clone(),
            name: self.name.clone(),
            listen: self.listen.clone(),
            raft_listen: self.raft_listen.clone(),
            advertise_host: self.advertise_host.clone(),
            sans: self.sans.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// The group as this member sees it: leader, term, the group key,
    /// members and their replication progress.
    Status {
        /// A member's data directory (its certificate is used).
        #[arg(long)]
        data_dir: PathBuf,
        /// Ask this member's internal (Raft) URL instead of the local
        /// one, e.g. https://auth-2:7444 (not the public API's URL).
        #[arg(long)]
        url: Option<String>,
        /// Print one JSON object instead of the table (stable; see
        /// docs/OPERATIONS.md "JSON output: vmail-auth"):
        /// {"member": M, "state": "leader"|"follower"|"candidate"|"learner"|"shutdown",
        /// "term": N, "leader": NAME|null, "last_log_index": N, "last_applied": N,
        /// "snapshot_index": N, "members": [M, ...], "group_key": K|null}, where
        /// M is {"name", "id" (16 hex digits), "api_url", "raft_url",
        /// "role": "voter"|"learner", "matched": N (last index the leader
        /// knows it holds; 0 when not reported), "member_key" (64 hex
        /// digits, or null before it is recorded)} and K is {"key" (64 hex
        /// digits), "ceremony": N, "threshold": N, "holders": [id, ...]}
        /// (null until the group made a key). On failure nothing on stdout, and on stderr
        /// {"error": MESSAGE, "causes": [MESSAGE, ...], "exit_code": 1}, exit status 1.
        #[arg(long, verbatim_doc_comment)]
        json: bool,
    },
    /// Remove a member from the group. Clients need no change.
    Remove {
        /// The member's name.
        name: String,
        /// A member's data directory (its certificate is used).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Approve a server that joined, with this member's member key: a
    /// server gets a share of the group key only once as many share
    /// holders as the key's threshold approved it.
    Approve {
        /// The joined server's name.
        name: String,
        /// A member's data directory (its member key signs the approval).
        #[arg(long)]
        data_dir: PathBuf,
        /// The member key the joined server printed (64 hex digits); the
        /// approval is refused if the group recorded another.
        #[arg(long)]
        member_key: Option<String>,
    },
    /// Issue a join credential for a new server (a CA-signed certificate).
    Credential {
        /// The new server's name.
        name: String,
        /// A member's data directory (its CA key signs the credential).
        #[arg(long)]
        data_dir: PathBuf,
        /// Where to write the PEM bundle (created 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft repeats every unreachable member at ERROR twice a second;
        // warnings and our own lines say what matters.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Init { server } => {
            let data_dir = server.data_dir.clone();
            let report = datadir::init(&server.init_options())?;
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
        Command::Serve {
            data_dir,
            listen,
            raft_listen,
            metrics,
        } => {
            let (api, raft) = cli::bind(&data_dir, listen, raft_listen).await?;
            let metrics = cli::bind_metrics(&data_dir, metrics).await?;
            let svc = Arc::new(server::open(&data_dir, Arc::new(SystemClock)).await?);
            let metrics = cli::spawn_metrics(metrics, &svc);
            server::serve(svc, api, raft, cli::shutdown_signal()).await?;
            if let Some(m) = metrics {
                m.abort();
            }
        }
        Command::Join {
            via,
            credential,
            server: args,
        } => {
            let dir = args.data_dir.clone();
            if !dir.join(datadir::files::CONFIG).exists() {
                let credential = credential.context(
                    "--credential FILE is needed to join: issue one with `vmail-auth cluster credential NAME --data-dir MEMBER_DIR --out FILE` on a member",
                )?;
                let tls = admin::read_credential(&credential)?;
                admin::prepare_join(&args.init_options(), &via, &tls).await?;
                println!(
                    "fetched the group keys from {via}; data dir {}",
                    dir.display()
                );
            }
            let (api, raft) = cli::bind(&dir, None, None).await?;
            let metrics = cli::bind_metrics(&dir, None).await?;
            let svc = Arc::new(server::open(&dir, Arc::new(SystemClock)).await?);
            let metrics = cli::spawn_metrics(metrics, &svc);
            let me = server::member(&svc, &api, &raft);
            let id = svc.raft().metrics().borrow().id;
            let tls = admin::member_tls(&dir)?;
            let member_key = svc.share_keys().member_public();
            let name = me.name.clone();
            let joining = tokio::spawn(async move {
                match admin::request_join(&via, &tls, id, &me, member_key).await {
                    Ok(joined) => {
                        let key = hex::encode(member_key);
                        tracing::info!(
                            index = joined.log_index,
                            voter = joined.voter,
                            "joined the group"
                        );
                        if joined.voter {
                            println!("joined as {name}, a voter; member key {key}");
                        } else {
                            println!(
                                "joined as {name}, a learner; member key {key}. The group has its key, so this server votes and gets a share of it once as many share holders as the key's threshold approve it: on each, run `vmail-auth cluster approve {name} --member-key {key} --data-dir MEMBER_DIR`"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "joining the group failed; rerun `vmail-auth join` on this data dir to retry")
                    }
                }
            });
            server::serve(svc, api, raft, cli::shutdown_signal()).await?;
            joining.abort();
            if let Some(m) = metrics {
                m.abort();
            }
        }
        Command::Start {
            server: args,
            founder,
            members,
            enroll_dir,
            public_dir,
            metrics,
        } => {
            let group = cli::start::Group {
                founder,
                members,
                enrollment: Enrollment::open(&enroll_dir)?,
                public_dir,
            };
            cli::start::start(args, group, metrics).await?
        }
        Command::Health { data_dir } => cli::admin::health(&data_dir).await?,
        Command::Cluster { command } => cli::admin::cluster(command).await?,
        Command::Completions { shell } => cli::docs::completions(shell),
        Command::Man { dir } => {
            let n = cli::docs::man_pages(&dir)?;
            println!("wrote {n} man pages to {}", dir.display());
        }
    }
    Ok(())
}
