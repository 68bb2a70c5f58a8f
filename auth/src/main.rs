//! `vmail-auth`: create and run a vmail authentication server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use vmail_auth::cluster::admin;
use vmail_auth::datadir::{self, InitOptions};
use vmail_auth::enroll::{self, Enrollment};
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
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
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
enum ClusterCommand {
    /// The group as this member sees it: leader, term, members and their
    /// replication progress.
    Status {
        /// A member's data directory (its certificate is used).
        #[arg(long)]
        data_dir: PathBuf,
        /// Ask this member's internal URL instead of the local one.
        #[arg(long)]
        url: Option<String>,
    },
    /// Remove a member from the group. Clients need no change.
    Remove {
        /// The member's name.
        name: String,
        /// A member's data directory (its certificate is used).
        #[arg(long)]
        data_dir: PathBuf,
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// The internal URL a member's own config points at.
fn own_raft_url(dir: &std::path::Path) -> anyhow::Result<String> {
    let config = datadir::load_config(dir)?;
    Ok(format!(
        "https://{}:{}",
        config.public_host(),
        port_of(&config.raft_listen)?
    ))
}

/// Binds the public and internal listeners of a data directory.
async fn bind(
    dir: &std::path::Path,
    listen: Option<SocketAddr>,
    raft_listen: Option<SocketAddr>,
) -> anyhow::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    let config = datadir::load_config(dir)?;
    let parse = |s: &str| -> SocketAddr { s.parse().expect("ServerConfig::validate checked it") };
    let api = listen.unwrap_or_else(|| parse(&config.listen));
    let raft = raft_listen.unwrap_or_else(|| parse(&config.raft_listen));
    let open = |a: SocketAddr| async move {
        tokio::net::TcpListener::bind(a)
            .await
            .with_context(|| format!("cannot listen on {a}: is another server using it?"))
    };
    Ok((open(api).await?, open(raft).await?))
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
        } => {
            let (api, raft) = bind(&data_dir, listen, raft_listen).await?;
            let svc = server::open(&data_dir, Arc::new(SystemClock)).await?;
            server::serve(Arc::new(svc), api, raft, shutdown_signal()).await?;
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
            let (api, raft) = bind(&dir, None, None).await?;
            let svc = Arc::new(server::open(&dir, Arc::new(SystemClock)).await?);
            let me = server::member(&svc, &api, &raft);
            let id = svc.raft().metrics().borrow().id;
            let tls = admin::member_tls(&dir)?;
            let joining = tokio::spawn(async move {
                match admin::request_join(&via, &tls, id, &me).await {
                    Ok(index) => tracing::info!(index, "joined the group as a voter"),
                    Err(e) => {
                        tracing::error!(error = %e, "joining the group failed; rerun `vmail-auth join` on this data dir to retry")
                    }
                }
            });
            server::serve(svc, api, raft, shutdown_signal()).await?;
            joining.abort();
        }
        Command::Start {
            server: args,
            founder,
            members,
            enroll_dir,
            public_dir,
        } => {
            let group = Group {
                founder,
                members,
                enrollment: Enrollment::open(&enroll_dir)?,
                public_dir,
            };
            start(args, group).await?
        }
        Command::Health { data_dir } => health(&data_dir).await?,
        Command::Cluster { command } => cluster(command).await?,
    }
    Ok(())
}

/// How long `start` waits for the founder, or for an answer to its
/// enrolment request, before giving up.
const ENROLL_WAIT: Duration = Duration::from_secs(600);

/// The group as `vmail-auth start` is told it.
#[derive(Debug)]
struct Group {
    founder: String,
    members: Vec<String>,
    enrollment: Enrollment,
    public_dir: PathBuf,
}

fn port_of(addr: &str) -> anyhow::Result<&str> {
    addr.rsplit_once(':')
        .map(|(_, p)| p)
        .with_context(|| format!("{addr:?} is not HOST:PORT"))
}

/// Waits until `ready()` holds, polling; fails after [`ENROLL_WAIT`].
async fn wait_for(what: &str, ready: impl Fn() -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + ENROLL_WAIT;
    tracing::info!("waiting for {what}");
    while !ready() {
        if Instant::now() > until {
            anyhow::bail!(
                "gave up after {} s waiting for {what}",
                ENROLL_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// `vmail-auth start`: makes the data directory if there is none, then
/// serves, joining the group if this server is not a member yet, and keeps
/// answering enrolment requests and publishing the clients' config.
async fn start(args: ServerArgs, group: Group) -> anyhow::Result<()> {
    let dir = args.data_dir.clone();
    let (api_port, raft_port) = (port_of(&args.listen)?, port_of(&args.raft_listen)?);
    let raft_urls: Vec<String> = group
        .members
        .iter()
        .filter(|m| **m != args.name)
        .map(|m| format!("https://{m}:{raft_port}"))
        .collect();
    let endpoints: Vec<String> = group
        .members
        .iter()
        .map(|m| format!("https://{m}:{api_port}"))
        .collect();
    if !dir.join(datadir::files::CONFIG).exists() {
        make_data_dir(&args, &group, raft_port, &raft_urls).await?;
    }
    let (api, raft) = bind(&dir, None, None).await?;
    let svc = Arc::new(server::open(&dir, Arc::new(SystemClock)).await?);
    let me = server::member(&svc, &api, &raft);
    let needs_join = !svc
        .raft()
        .is_initialized()
        .await
        .map_err(anyhow::Error::msg)?
        && !svc.store().is_founder()?;
    let tls = admin::member_tls(&dir)?;
    let keys = svc.keys().clone();
    let cluster_key = hex::encode(keys.cluster_public_key().to_bytes());
    let raft_handle = svc.raft().clone();
    let enrollment = group.enrollment.clone();
    let tasks = tokio::spawn(async move {
        if needs_join {
            let id = raft_handle.metrics().borrow().id;
            let joined = at_any_member(&raft_urls, "join the group", None, |url| {
                admin::request_join(url, &tls, id, &me)
            })
            .await;
            if let Ok(index) = joined {
                tracing::info!(index, "joined the group as a voter");
            }
        }
        // A member of the group answers enrolment requests and keeps the
        // clients' config current.
        loop {
            if raft_handle.is_initialized().await.unwrap_or(false) {
                let done = enrollment
                    .mark_founded(&keys.ca_cert_pem)
                    .and_then(|()| {
                        enroll::publish_client_config(
                            &group.public_dir,
                            &keys.ca_cert_pem,
                            &cluster_key,
                            &endpoints,
                        )
                    })
                    .and_then(|()| enrollment.answer_requests(&dir));
                match done {
                    Ok(names) => {
                        for name in names {
                            tracing::info!(%name, "issued a join credential through the enrolment directory");
                        }
                    }
                    Err(e) => tracing::warn!("enrolment: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    server::serve(svc, api, raft, shutdown_signal()).await?;
    tasks.abort();
    Ok(())
}

/// Creates this server's data directory: the founder founds the group if
/// no one has, unless another member already answers; every other server
/// asks for a join credential through the enrolment directory and fetches
/// the group's keys from any member.
async fn make_data_dir(
    args: &ServerArgs,
    group: &Group,
    raft_port: &str,
    raft_urls: &[String],
) -> anyhow::Result<()> {
    let enrollment = &group.enrollment;
    if !enrollment.founded() && args.name == group.founder {
        // A founder whose data is gone must not found a second group
        // beside a running one: members only listen once they joined.
        for m in group.members.iter().filter(|m| **m != args.name) {
            let addr = format!("{m}:{raft_port}");
            let probe = tokio::net::TcpStream::connect(&addr);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                anyhow::bail!(
                    "{m} already serves a group at {addr}, but {} has no data and the enrolment \
                     directory records no founding: restore this server's data dir, or copy the \
                     group's CA certificate to {} so that this server joins it",
                    args.data_dir.display(),
                    enrollment.founded_path().display()
                );
            }
        }
        let report = datadir::init(&args.init_options())?;
        tracing::info!(cluster_key = %report.cluster_public_key, "founded a new auth group");
        return Ok(());
    }
    wait_for("the founder to found the group", || enrollment.founded()).await?;
    let request = enrollment.request(&args.name)?;
    wait_for("a member to answer this server's enrolment request", || {
        request.answered()
    })
    .await?;
    let credential = admin::read_credential(&request.credential)?;
    let until = Instant::now() + ENROLL_WAIT;
    let opts = args.init_options();
    at_any_member(raft_urls, "fetch the group keys", Some(until), |url| {
        admin::prepare_join(&opts, url, &credential)
    })
    .await?;
    request.finish();
    Ok(())
}

/// Tries `f` at each member's internal URL in turn, round after round a
/// second apart, until one succeeds or `until` passes (None: for ever).
async fn at_any_member<'a, T, F, Fut>(
    urls: &'a [String],
    what: &str,
    until: Option<Instant>,
    f: F,
) -> Result<T, admin::AdminError>
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = Result<T, admin::AdminError>>,
{
    loop {
        for url in urls {
            match f(url).await {
                Ok(v) => {
                    tracing::info!(via = %url, "did {what}");
                    return Ok(v);
                }
                Err(e) if until.is_none_or(|u| Instant::now() < u) => {
                    tracing::info!(via = %url, "cannot {what} yet: {e}")
                }
                Err(e) => return Err(e),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `vmail-auth health`: one call to the standard health service.
async fn health(dir: &std::path::Path) -> anyhow::Result<()> {
    use tonic::server::NamedService;
    use tonic_health::pb::health_check_response::ServingStatus;
    vmail_proto::tls::install_crypto_provider();
    let config = datadir::load_config(dir)?;
    let keys = datadir::load_keys(dir)?;
    let url = format!(
        "https://{}:{}",
        config.public_host(),
        port_of(&config.listen)?
    );
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&keys.ca_cert_pem)),
        )?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("{url}: not answering"))?;
    let service = vmail_proto::pb::auth_server::AuthServer::<vmail_auth::grpc::GrpcAuth>::NAME;
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .with_context(|| format!("{url}: health check failed"))?
        .into_inner()
        .status();
    anyhow::ensure!(
        status == ServingStatus::Serving,
        "{url}: {service} is {status:?}"
    );
    println!("{url}: {service} is serving");
    Ok(())
}

async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { data_dir, url } => {
            let url = match url {
                Some(u) => u,
                None => own_raft_url(&data_dir)?,
            };
            let s = admin::status(&url, &admin::member_tls(&data_dir)?).await?;
            let me = s.self_.unwrap_or_default();
            println!("member:   {} (id {:016x})", me.name, me.id);
            println!("state:    {}", s.state);
            println!("term:     {}", s.term);
            println!(
                "leader:   {}",
                if s.leader.is_empty() {
                    "(none known)"
                } else {
                    &s.leader
                }
            );
            println!(
                "log:      last index {}, applied {}, snapshot {}",
                s.last_log_index, s.last_applied, s.snapshot_index
            );
            println!("members:");
            for m in s.members {
                let info = m.member.unwrap_or_default();
                let matched = if m.matched > 0 {
                    format!("matched {}", m.matched)
                } else {
                    String::new()
                };
                println!(
                    "  {:<12} {:<8} api {:<28} raft {:<28} {matched}",
                    info.name, m.role, info.api_url, info.raft_url
                );
            }
        }
        ClusterCommand::Remove { name, data_dir } => {
            let url = own_raft_url(&data_dir)?;
            admin::remove(&url, &admin::member_tls(&data_dir)?, &name).await?;
            println!("removed {name} from the group");
        }
        ClusterCommand::Credential {
            name,
            data_dir,
            out,
        } => {
            admin::issue_credential(&data_dir, &name, &out)?;
            println!("join credential for {name}: {}", out.display());
            println!(
                "on the new server: vmail-auth join --via {} --credential {} --data-dir DIR --name {name} ...",
                own_raft_url(&data_dir)?,
                out.display()
            );
        }
    }
    Ok(())
}
