//! `vmail node run|status`, and how the other commands reach a peer: the
//! running daemon if there is one, else an ephemeral peer started for one
//! job. Both answer the same control API, so the commands have one path.
//!
//! Over 600 lines since issue 21 added the daemon's metrics, hand-off report
//! and the status JSON; moving `node status` (its table and its JSON
//! document) to a file of its own is the owed split.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use libp2p::PeerId;
use vmail_node::config::NodeConfig;
use vmail_node::control::{self, ControlClient, ControlError, ControlService};
use vmail_node::overlay::swarm::Role;
use vmail_node::peer::{HandOff, OBSERVATIONS_FILE, Peer, PeerOptions, Session};
use vmail_node::sip::SipService;
use vmail_node::web::WebService;

use super::Context;

/// How long an ephemeral peer waits to learn enough peers.
const EPHEMERAL_JOIN: Duration = Duration::from_secs(5);

impl Context {
    /// The daemon's data dir: `--data-dir`, else `HOME/node`.
    pub(super) fn data_dir(&self, explicit: Option<PathBuf>) -> PathBuf {
        explicit.unwrap_or_else(|| self.home.join("node"))
    }

    /// The saved login as a peer session: keystore plus auth settings.
    pub(super) fn peer_session(&self) -> anyhow::Result<Session> {
        let login = self
            .keystore
            .session()?
            .context("not logged in: run `vmail login USER` first")?;
        let identity = self.keystore.identity(&login.username)?.with_context(|| {
            format!(
                "no identity key for {} in the keystore: run `vmail login {}` again",
                login.username, login.username
            )
        })?;
        let target = vmail_node::home::auth_target(&self.home, &self.overrides)?;
        Ok(Session {
            login,
            identity,
            target,
        })
    }
}

/// A control client on the daemon, or on an ephemeral peer that lives as
/// long as this value.
pub(super) struct PeerHandle {
    pub(super) client: ControlClient,
    ephemeral: Option<Ephemeral>,
}

struct Ephemeral {
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), ControlError>>,
    peer: Arc<Peer>,
    _dir: tempfile::TempDir,
}

impl PeerHandle {
    /// Connects to the daemon in the default data dir, or starts an
    /// ephemeral peer that waits (briefly) for `holders` peers, or as many
    /// as the default redundancy needs; either way the peer gets the saved
    /// login.
    pub(super) async fn open(ctx: &Context, holders: Option<usize>) -> anyhow::Result<Self> {
        let session = ctx.peer_session()?;
        let dir = ctx.data_dir(None);
        let socket = dir.join(control::SOCKET_FILE);
        let mut handle = match ControlClient::connect(&socket).await {
            Ok(client) => PeerHandle {
                client,
                ephemeral: None,
            },
            Err(ControlError::NotRunning(_)) => Self::ephemeral(&dir, holders).await?,
            Err(e) => return Err(e.into()),
        };
        handle.client.set_session(&session).await?;
        Ok(handle)
    }

    async fn ephemeral(data_dir: &Path, holders: Option<usize>) -> anyhow::Result<Self> {
        let config = NodeConfig::load(data_dir, None)?;
        let want = match holders {
            Some(n) => n,
            None => config.redundancy()?.n(),
        };
        let tmp = tempfile::Builder::new()
            .prefix("vmail-")
            .tempdir()
            .context("creating a temporary dir for the one-job peer")?;
        let mut config = config;
        config.listen = vec!["/ip4/0.0.0.0/tcp/0".parse().expect("valid")];
        if config.bootstrap.is_empty() {
            anyhow::bail!(
                "no vmail peer is running ({}) and no bootstrap peer is configured: start one with `vmail node run`, or set VMAIL_BOOTSTRAP",
                data_dir.join(control::SOCKET_FILE).display()
            );
        }
        let peer = Arc::new(
            Peer::start(PeerOptions {
                data_dir: tmp.path().to_owned(),
                config,
                role: Role::Client,
                observations: Some(data_dir.join(OBSERVATIONS_FILE)),
            })
            .await?,
        );
        peer.wait_for_peers(want, EPHEMERAL_JOIN).await?;
        let socket = tmp.path().join(control::SOCKET_FILE);
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let (peer, socket) = (peer.clone(), socket.clone());
            async move {
                control::serve(peer, &socket, async {
                    let _ = rx.await;
                })
                .await
            }
        });
        let client = connect_retrying(&socket).await?;
        Ok(PeerHandle {
            client,
            ephemeral: Some(Ephemeral {
                stop,
                server,
                peer,
                _dir: tmp,
            }),
        })
    }

    /// Shuts an ephemeral peer down cleanly; a daemon is left running.
    pub(super) async fn close(self) {
        drop(self.client);
        if let Some(e) = self.ephemeral {
            let _ = e.stop.send(());
            let _ = e.server.await;
            if let Ok(peer) = Arc::try_unwrap(e.peer) {
                peer.stop().await;
            }
        }
    }
}

async fn connect_retrying(socket: &Path) -> anyhow::Result<ControlClient> {
    for _ in 0..100 {
        match ControlClient::connect(socket).await {
            Ok(c) => return Ok(c),
            Err(ControlError::NotRunning(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!(
        "the one-job peer's control socket {} did not come up",
        socket.display()
    )
}

/// `vmail node run`'s flags that override node.toml.
#[derive(Debug, Default)]
pub(super) struct RunFlags {
    /// `--sip`: `sip.listen`.
    pub(super) sip: Option<std::net::SocketAddr>,
    /// `--web`: `web.listen`.
    pub(super) web: Option<std::net::SocketAddr>,
    /// `--metrics`: `metrics.listen`.
    pub(super) metrics: Option<std::net::SocketAddr>,
    /// `--handoff-timeout`: `handoff_timeout_secs`.
    pub(super) handoff_timeout: Option<Duration>,
}

/// `vmail node run`: the peer daemon, until SIGTERM or Ctrl-C.
pub(super) async fn run(
    ctx: &Context,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    flags: RunFlags,
) -> anyhow::Result<()> {
    // Before anything starts or is printed: a SIGTERM from now on stops
    // the daemon cleanly.
    let signal =
        vmail_node::stop::stop_signal().context("installing the SIGTERM and SIGINT handlers")?;
    let dir = ctx.data_dir(data_dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating data dir {}", dir.display()))?;
    let mut config = NodeConfig::load(&dir, config.as_deref())?;
    if flags.sip.is_some() {
        config.sip.listen = flags.sip;
    }
    if flags.metrics.is_some() {
        config.metrics.listen = flags.metrics;
    }
    if flags.web.is_some() {
        config.web.listen = flags.web;
        config.validate().context("--web")?;
    }
    if let Some(t) = flags.handoff_timeout {
        config.handoff_timeout_secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
        config.validate().context("--handoff-timeout")?;
    }
    if config.cluster_key.is_none() || config.group_key.is_none() {
        let (cluster, group) = cli_pinned_keys(ctx).await?;
        if config.cluster_key.is_none() {
            match cluster {
                Some(key) => config.cluster_key = Some(hex::encode(key.as_bytes())),
                None => println!(
                    "warning: no cluster key (cluster_key in node.toml, --cluster-key or VMAIL_CLUSTER_KEY): this peer stores nothing for others"
                ),
            }
        }
        if config.group_key.is_none() {
            config.group_key = group.map(|k| hex::encode(k.as_bytes()));
        }
    }
    let socket = dir.join(control::SOCKET_FILE);
    if ControlClient::connect(&socket).await.is_ok() {
        anyhow::bail!(
            "a vmail peer already runs with data dir {} (see `vmail node status`)",
            dir.display()
        );
    }
    let peer = Arc::new(
        Peer::start(PeerOptions {
            data_dir: dir.clone(),
            config,
            role: Role::Server,
            observations: None,
        })
        .await?,
    );
    println!("peer {} running, data in {}", peer.peer_id(), dir.display());
    for a in peer.listen_addrs().await? {
        println!("  listening on {a}");
    }
    if let Some(a) = peer.metrics_addr() {
        println!("  metrics on http://{a}/metrics");
    }
    // A saved login is handed over at start, so a restarted daemon can work
    // at once; `vmail login` replaces it.
    match ctx.peer_session() {
        Ok(s) => {
            println!("  session of {} loaded from the keystore", s.login.username);
            peer.set_session(s);
        }
        Err(e) => println!("  no session yet ({e})"),
    }
    let sip = match peer.config().sip.listen {
        Some(_) => {
            let password = dir.join(vmail_node::sip::PASSWORD_FILE);
            let service =
                SipService::start(peer.clone(), peer.config().sip.clone(), password).await?;
            println!("  SIP on udp {} for your softphone", service.local_addr());
            Some(service)
        }
        None => None,
    };
    let service = ControlService::new(peer.clone(), sip.clone());
    let web = match peer.config().web.listen {
        Some(_) => {
            let account = vmail_node::web::Account {
                keystore: ctx.keystore.clone(),
                target: vmail_node::home::auth_target(&ctx.home, &ctx.overrides)
                    .map_err(|e| e.to_string()),
            };
            let web = WebService::start(peer.clone(), service.clone(), account, &peer.config().web)
                .await?;
            let file = dir.join(vmail_node::web::URL_FILE);
            vmail_node::keystore::write_private(&file, format!("{}\n", web.url()).as_bytes())
                .with_context(|| format!("writing {}", file.display()))?;
            println!("  web inbox: open {}", web.url());
            Some(web)
        }
        None => None,
    };
    println!("  control socket {}", socket.display());
    control::serve_with(service, &socket, signal).await?;
    if let Some(w) = web {
        w.stop().await;
        let _ = std::fs::remove_file(dir.join(vmail_node::web::URL_FILE));
    }
    if let Some(s) = sip {
        s.stop();
    }
    let timeout = Duration::from_secs(peer.config().handoff_timeout_secs);
    peer.hand_off_within(timeout, &print_hand_off).await;
    match Arc::try_unwrap(peer) {
        Ok(p) => p.stop().await,
        Err(_) => tracing::warn!("peer still in use at exit"),
    }
    Ok(())
}

/// A stopping daemon's hand-off, as it goes, on stdout.
fn print_hand_off(h: &HandOff) {
    use std::io::Write as _;
    if h.total == 0 {
        println!("leaving: no objects held, nothing to hand off");
    } else if h.timeout.is_zero() {
        println!(
            "leaving: hand-off skipped (handoff timeout 0): {} object(s) stay only on this disk; their siblings repair them if this peer does not come back",
            h.total
        );
    } else if !h.finished && h.done() == 0 {
        println!(
            "leaving: handing off {} object(s) to the next-closest peers, {} at once, for at most {} (--handoff-timeout)",
            h.total,
            vmail_node::peer::HANDOFF_PARALLEL,
            humantime::format_duration(h.timeout)
        );
    } else if !h.finished {
        println!("  {} of {} done, {} handed off", h.done(), h.total, h.moved);
    } else {
        println!(
            "  {} of {} object(s) handed off in {:.1} s{}",
            h.moved,
            h.total,
            h.took.as_secs_f64(),
            if h.timed_out() {
                format!(
                    "; the handoff timeout of {} ran out",
                    humantime::format_duration(h.timeout)
                )
            } else {
                String::new()
            }
        );
        if h.kept() > 0 {
            println!(
                "  {} object(s) stay only on this disk ({} no peer took{}, {} not tried in time): this peer serves them again when it restarts, and their siblings repair them if it does not come back",
                h.kept(),
                h.failed,
                h.last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(", the last because: {e}")),
                h.unfinished
            );
        }
    }
    let _ = std::io::stdout().flush();
}

/// How long `vmail node run` waits for an auth config file named by
/// `--auth-config` or `VMAIL_AUTH_CONFIG` to appear: a testnet starts its
/// peers and its auth group together, and the group writes the file.
const AUTH_CONFIG_WAIT: Duration = Duration::from_secs(300);

/// The CLI's cluster and group keys, for a daemon whose node.toml names
/// none: holders check grants with them. An auth config file that was
/// named but does not exist yet is waited for.
async fn cli_pinned_keys(
    ctx: &Context,
) -> anyhow::Result<(
    Option<ed25519_dalek::VerifyingKey>,
    Option<ed25519_dalek::VerifyingKey>,
)> {
    let deadline = tokio::time::Instant::now() + AUTH_CONFIG_WAIT;
    let mut told = false;
    loop {
        match vmail_node::home::pinned_keys(&ctx.home, &ctx.overrides) {
            Ok(keys) => return Ok(keys),
            Err(e) => {
                let waiting = ctx.overrides.auth_config.as_ref().filter(|f| !f.exists());
                match waiting {
                    Some(file) if tokio::time::Instant::now() < deadline => {
                        if !told {
                            println!(
                                "waiting for {} (it names the auth group's keys)",
                                file.display()
                            );
                            told = true;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    _ => return Err(e.into()),
                }
            }
        }
    }
}

/// `vmail node health`.
pub(super) async fn health(ctx: &Context, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let socket = ctx.data_dir(data_dir).join(control::SOCKET_FILE);
    let serving = ControlClient::connect(&socket).await?.serving().await?;
    anyhow::ensure!(
        serving,
        "the vmail peer on {} is not serving",
        socket.display()
    );
    if ctx.json {
        super::output::json(&HealthJson {
            socket: socket.display().to_string(),
            serving,
        });
        return Ok(());
    }
    outln!("the vmail peer on {} is serving", socket.display());
    Ok(())
}

/// `vmail node health --json` (a peer that does not serve is an error).
#[derive(Debug, serde::Serialize)]
struct HealthJson {
    socket: String,
    serving: bool,
}

/// `vmail status --json` and `vmail node status --json`: the control API's
/// status, peer ids in base58 and empty strings as null.
#[derive(Debug, serde::Serialize)]
struct StatusJson {
    peer_id: String,
    listen_addrs: Vec<String>,
    routing_peers: u32,
    connected_peers: u32,
    /// "supernode", "peer" or "client" (a one-job peer).
    role: String,
    /// "Private", "AutoNat" or "Configured"; null for a one-job peer.
    reachability: Option<String>,
    /// node.toml's supernode.public: "true", "false"; null when unset.
    public_setting: Option<String>,
    supernodes: Vec<String>,
    advertising_peers: u32,
    undialable: Vec<String>,
    /// The supernode this peer is attached to; null if none.
    attached_to: Option<String>,
    attached_peers: Vec<String>,
    /// The relayed address reserved on its supernode; null if none.
    relay_addr: Option<String>,
    /// null if it never had to re-attach.
    last_reattach_ms: Option<u64>,
    election: ElectionJson,
    storage: StorageJson,
    /// Stores and delete orders refused since start, by reason.
    refusals: std::collections::BTreeMap<String, u64>,
    /// The logged-in user; null when nobody is.
    username: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct ElectionJson {
    /// Whether this peer has made its first advert yet.
    advertised: bool,
    /// Why this peer does not stand, one missed threshold each; empty when
    /// it stands or has not advertised.
    shortfalls: Vec<String>,
    qualified: u32,
    confirmed_public: u32,
    /// Advertising peers that miss each threshold, by node.toml setting.
    missed: std::collections::BTreeMap<String, u32>,
}

#[derive(Debug, serde::Serialize)]
struct StorageJson {
    objects: u64,
    stored_bytes: u64,
    quota_bytes: u64,
    tombstones: u64,
}

impl From<&vmail_proto::control_pb::StatusResponse> for StatusJson {
    fn from(s: &vmail_proto::control_pb::StatusResponse) -> Self {
        let some = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        Self {
            peer_id: PeerId::from_bytes(&s.peer_id)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            listen_addrs: s.listen_addrs.clone(),
            routing_peers: s.routing_peers,
            connected_peers: s.connected_peers,
            role: s.role.clone(),
            reachability: some(&s.reachability),
            public_setting: some(&s.public_setting),
            supernodes: s.supernodes.clone(),
            advertising_peers: s.advertising_peers,
            undialable: s.undialable.clone(),
            attached_to: some(&s.attached_to),
            attached_peers: s.attached_peers.clone(),
            relay_addr: some(&s.relay_addr),
            last_reattach_ms: (s.last_reattach_ms > 0).then_some(s.last_reattach_ms),
            election: ElectionJson {
                advertised: s.advertised,
                shortfalls: s.shortfalls.clone(),
                qualified: s.qualified,
                confirmed_public: s.confirmed_public,
                missed: s.missed.clone().into_iter().collect(),
            },
            storage: StorageJson {
                objects: s.objects,
                stored_bytes: s.stored_bytes,
                quota_bytes: s.quota_bytes,
                tombstones: s.tombstones,
            },
            refusals: s.refusals.clone().into_iter().collect(),
            username: some(&s.username),
        }
    }
}

/// `vmail node status`.
pub(super) async fn status(ctx: &Context, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let socket = ctx.data_dir(data_dir).join(control::SOCKET_FILE);
    let s = ControlClient::connect(&socket).await?.status().await?;
    if ctx.json {
        super::output::json(&StatusJson::from(&s));
        return Ok(());
    }
    let id = PeerId::from_bytes(&s.peer_id)
        .map(|p| p.to_string())
        .unwrap_or_default();
    outln!("peer           {id}");
    for a in &s.listen_addrs {
        outln!("listening      {a}");
    }
    outln!("routing table  {} peers", s.routing_peers);
    outln!(
        "role           {} (reachability: {})",
        s.role,
        reachability_words(&s.reachability, &s.public_setting)
    );
    outln!(
        "supernodes     {} elected from {} advertising peers",
        s.supernodes.len(),
        s.advertising_peers
    );
    for sn in &s.supernodes {
        outln!("  supernode    {sn}");
    }
    for p in &s.undialable {
        outln!("  undialable   {p} (claims to be public; not eligible)");
    }
    if s.role == "supernode" {
        outln!("attached peers {}", s.attached_peers.len());
        for p in &s.attached_peers {
            outln!("  attached     {p}");
        }
    } else if s.attached_to.is_empty() {
        outln!(
            "attached to    (no supernode yet{})",
            if s.supernodes.is_empty() {
                ""
            } else {
                ": trying the elected ones at each heartbeat"
            }
        );
    } else {
        outln!("attached to    {}", s.attached_to);
    }
    if s.role != "client"
        && (s.supernodes.is_empty() || s.role == "peer" && s.attached_to.is_empty())
    {
        explain_election(&s);
    }
    if !s.relay_addr.is_empty() {
        outln!("relayed at     {}", s.relay_addr);
    }
    if s.last_reattach_ms > 0 {
        outln!("last re-attach {} ms", s.last_reattach_ms);
    }
    outln!(
        "holding        {} objects, {} of {} bytes, {} tombstones",
        s.objects,
        s.stored_bytes,
        s.quota_bytes,
        s.tombstones
    );
    if !s.refusals.is_empty() {
        let mut reasons: Vec<_> = s.refusals.iter().collect();
        reasons.sort();
        let list: Vec<String> = reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
        outln!("refused        {}", list.join(", "));
    }
    outln!(
        "user           {}",
        if s.username.is_empty() {
            "(not logged in)"
        } else {
            &s.username
        }
    );
    Ok(())
}

/// The reachability an advert carries, in words: how this peer knows, and
/// what it means for the election.
fn reachability_words(reachability: &str, public_setting: &str) -> String {
    match (reachability, public_setting) {
        ("Configured", _) => "public (declared in node.toml)".into(),
        ("AutoNat", _) => "public (confirmed by other peers' AutoNAT probes)".into(),
        ("Private", "false") => "private (declared in node.toml): never stands".into(),
        ("Private", _) => {
            "private (AutoNAT has not confirmed a public address): never stands".into()
        }
        ("", _) => "none: a one-job peer takes no part in the election".into(),
        (other, _) => other.into(),
    }
}

/// Why no supernode is elected or attached, from what this peer knows.
fn explain_election(s: &vmail_proto::control_pb::StatusResponse) {
    // Only a peer that stands publishes (and so holds) its own advert.
    let stands = s.advertised && s.shortfalls.is_empty();
    let others = s.advertising_peers.saturating_sub(u32::from(stands));
    outln!(
        "  qualified    {} of {} advertising peers meet every threshold",
        s.qualified,
        s.advertising_peers
    );
    if !s.missed.is_empty() {
        let mut missed: Vec<_> = s.missed.iter().collect();
        missed.sort();
        let list: Vec<String> = missed
            .iter()
            .map(|(k, n)| {
                if k.as_str() == "public" {
                    format!("{n} not public")
                } else {
                    format!("{n} below {k}")
                }
            })
            .collect();
        outln!("  missing      {}", list.join(", "));
    }
    if !s.advertised {
        outln!("  this peer    has not advertised yet");
    } else if s.shortfalls.is_empty() {
        outln!("  this peer    stands: it meets every threshold");
    } else {
        outln!(
            "  this peer    does not stand, so does not advertise: {}",
            s.shortfalls.join("; ")
        );
        if s.shortfalls.iter().any(|r| r.starts_with("bandwidth 0 ")) {
            outln!(
                "               (0 means undeclared: set supernode.bandwidth_kbps in node.toml)"
            );
        }
    }
    outln!(
        "  dial checks  {} of {others} other advertising peers confirmed public by dialing them, {} refused as undialable",
        s.confirmed_public,
        s.undialable.len()
    );
}
