//! A vmail peer: the network, the holder's store, and the two jobs of the
//! paper's §3.3 (leave a voicemail, fetch one). The control API
//! ([`crate::control`]) is a thin adapter over [`Peer`]; the daemon, the
//! ephemeral one-job peer of the CLI, the demo and the tests all run this.
//!
//! Leave: derive the session key, encrypt once, cut the ciphertext into
//! shards (Reed-Solomon k-of-n, or whole copies), rank holders with the
//! configured scorer, give each shard an identifier inside its holder's
//! range, upload, and only after every holder acked deposit the wrapped key
//! and locator. Any failure withdraws the shards already stored, so nothing
//! is left half-made.
//!
//! Fetch: get the key and locator, find the shards in the DHT, download k
//! of them in parallel from the fastest holders (falling back to the
//! others), check each one's SHA-256, decode, check the ciphertext's,
//! decrypt. The caller acks after the plaintext is safely written.
//!
//! Every exchange feeds this peer's [`Observations`] of the others, which
//! the scorer ranks holders by; the table lives in `DIR/observations.bin`.
//!
//! - this module: starting a peer (with its metrics), its session,
//!   status and inbox;
//! - `handoff`: handing held objects to other peers when the daemon stops;
//! - `delete`: the ack, and the delete order it hands to the holders;
//! - `leave` and `fetch`: the two jobs, which do the IO that the pure
//!   [`upload_plan`] and [`fetch_plan`] decide;
//! - `duties`: the holder's background jobs, one `Duty` each;
//! - `progress`: progress reports and where a job's time went;
//! - `error`: one error per operation.

mod delete;
mod duties;
mod error;
mod fetch;
pub mod fetch_plan;
mod handoff;
mod leave;
mod progress;
pub mod upload_plan;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use libp2p::{Multiaddr, PeerId, identity};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vmail_proto::names::Username;
use vmail_proto::unix_now;

use crate::auth_client::{AuthClient, AuthTarget, LoginSession, Pending};
use crate::config::NodeConfig;
use crate::core::erasure::Redundancy;
use crate::core::locator::ObjectId;
use crate::core::score::{Observations, Outcome, PeerStats, Scorer};
use crate::metrics::{HolderGauges, Metrics};
use crate::overlay::objects::{HolderPolicy, HolderStats, ObjectStore};
use crate::overlay::repair::{Limits, Repairer};
use crate::overlay::swarm::{
    Network, NetworkConfig, NetworkError, Role, SupernodeSetup, SupernodeView, Traffic,
};
use crate::overlay::transfer::{self, BlobClient};
use duties::{Maintain, Sample, load_observations, save_observations};

pub use delete::{AckReport, ERASE_TIMEOUT};
pub use duties::{OBSERVATION_MAX_AGE_SECS, PURGE_INTERVAL, SAMPLE_INTERVAL};
pub use error::{FetchError, LeaveError, SessionError, SessionKeyError, StartError};
pub use fetch::{FetchFailure, Fetched, HAS_TIMEOUT, HEDGE_AFTER, MAX_HAS_ASKED, RebuildError};
pub use handoff::{HANDOFF_PARALLEL, HandOff};
pub use leave::{LeaveReceipt, LeaveRequest, RECOMMEND_TIMEOUT, StoredShard, granted_holders};
pub use progress::{Note, Phase, Progress, ProgressFn, Timings, no_progress};

/// Node key file in the data dir (libp2p protobuf encoding, mode 0600).
pub const NODE_KEY_FILE: &str = "node.key";
/// Peers tried, one after another, to take each object on a graceful leave.
pub const HANDOFF_TRIES: usize = 3;
/// This peer's observations of others, in the data dir (postcard).
pub const OBSERVATIONS_FILE: &str = "observations.bin";

/// The user's login, as handed to the peer by `vmail login`.
#[derive(Clone)]
pub struct Session {
    /// Token, master key and certificate.
    pub login: LoginSession,
    /// The user's identity key.
    pub identity: SigningKey,
    /// Where the auth servers are.
    pub target: AuthTarget,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// What a peer reports about itself.
#[derive(Debug, Clone)]
pub struct Status {
    /// Its id.
    pub peer_id: PeerId,
    /// Its listen addresses.
    pub listen_addrs: Vec<Multiaddr>,
    /// Server peers in its routing table.
    pub routing_peers: usize,
    /// Objects held, bytes charged for them, tombstones and refusals.
    pub holder: HolderStats,
    /// The holder quota.
    pub quota_bytes: u64,
    /// The logged-in user, if any.
    pub username: Option<String>,
    /// The supernode election and this peer's place in it (`None` on a
    /// one-job client peer).
    pub election: Option<SupernodeView>,
    /// Its overlay traffic since it started.
    pub traffic: Traffic,
}

/// How to start a peer.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Data dir: node key and held objects.
    pub data_dir: PathBuf,
    /// Configuration.
    pub config: NodeConfig,
    /// Server (a full peer) or client (an ephemeral one-job peer with a
    /// fresh key, which holds nothing).
    pub role: Role,
    /// Where the observation table lives; None: `DATA_DIR/observations.bin`.
    /// A one-job peer points this at its user's daemon data dir, so that
    /// what one job learns of other peers serves the next.
    pub observations: Option<PathBuf>,
}

/// A running peer.
pub struct Peer {
    network: Network,
    blobs: BlobClient,
    store: Option<ObjectStore>,
    config: NodeConfig,
    redundancy: Redundancy,
    scorer: Box<dyn Scorer + Send + Sync>,
    preferred: Vec<PeerId>,
    observations: Arc<Mutex<Observations<PeerId>>>,
    observations_file: PathBuf,
    session: RwLock<Option<Session>>,
    /// Shard identifiers of voicemails fetched here, for their ack.
    fetched: Mutex<HashMap<[u8; 16], Vec<ObjectId>>>,
    /// Counts changes to the inbox this peer made or saw (a fetch, an ack,
    /// a recall, a new session), for whoever shows it (the SIP lamp).
    inbox_changes: tokio::sync::watch::Sender<u64>,
    /// Where `/metrics` is served, if it is.
    metrics_addr: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

/// Whether a session's cluster key may replace this peer's: its certificate
/// must be signed by that key and name its user, and the key must be the
/// `configured` one (node.toml), or with none configured the `current`
/// session's. With neither, the certificate is the only proof.
pub fn check_session_key(
    offered: &Session,
    configured: Option<&ed25519_dalek::VerifyingKey>,
    current: Option<&ed25519_dalek::VerifyingKey>,
) -> Result<(), SessionKeyError> {
    let key = &offered.target.cluster_key;
    let cert = &offered.login.certificate;
    cert.verify_signature(key)
        .map_err(|e| SessionKeyError::Certificate(e.to_string()))?;
    if cert.username != offered.login.username {
        return Err(SessionKeyError::Certificate(format!(
            "it is for {}, not {}",
            cert.username, offered.login.username
        )));
    }
    let expected = match (configured, current) {
        (Some(k), _) => Some((k, "cluster_key in node.toml")),
        (None, Some(k)) => Some((k, "the current session")),
        (None, None) => None,
    };
    match expected {
        Some((k, source_of)) if k != key => Err(SessionKeyError::Mismatch {
            offered: hex::encode(key.as_bytes()),
            expected: hex::encode(k.as_bytes()),
            source_of,
        }),
        _ => Ok(()),
    }
}

/// Loads `DIR/node.key`, creating it (mode 0600) on first start.
pub fn load_or_create_node_key(dir: &Path) -> Result<identity::Keypair, StartError> {
    let path = dir.join(NODE_KEY_FILE);
    let err = |why: String| StartError::DataDir {
        path: path.clone(),
        why,
    };
    match std::fs::read(&path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            err(format!("unreadable node key ({e}); restore it from a backup or remove it to become a new peer"))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = identity::Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            crate::keystore::write_private(&path, &bytes).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

impl Peer {
    /// Starts the network and, for a server peer, the holder.
    pub async fn start(opts: PeerOptions) -> Result<Peer, StartError> {
        let dir = &opts.data_dir;
        let dir_err = |e: std::io::Error| StartError::DataDir {
            path: dir.clone(),
            why: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        // Bound first, so an address in use fails the start before
        // anything runs. A one-job client peer serves no metrics.
        let metrics_listener = match (opts.role, opts.config.metrics.listen) {
            (Role::Server, Some(addr)) => Some(crate::metrics::bind(addr).await?),
            _ => None,
        };
        let key = match opts.role {
            Role::Server => load_or_create_node_key(dir)?,
            Role::Client => identity::Keypair::generate_ed25519(),
        };
        let store = match opts.role {
            Role::Server => {
                let cluster_key = opts.config.cluster_key()?;
                if cluster_key.is_none() {
                    tracing::warn!(
                        "no cluster key configured: this peer cannot check storage grants and stores nothing for others"
                    );
                }
                let policy = HolderPolicy {
                    quota: opts.config.quota_bytes,
                    max_object: opts.config.max_object_bytes(),
                    max_objects: opts.config.max_objects,
                    max_retention_secs: opts.config.max_retention_days * 86_400,
                    cluster_key,
                    group_key: opts.config.group_key()?,
                    me: key.public().to_peer_id().to_bytes(),
                };
                let (store, report) = ObjectStore::open(dir, policy)?;
                if report.legacy > 0 {
                    tracing::warn!(
                        count = report.legacy,
                        "objects stored before grants are kept at most max_retention_days from now"
                    );
                }
                if report.quarantined > 0 {
                    tracing::warn!(
                        count = report.quarantined,
                        "unreadable objects moved to objects/corrupt/"
                    );
                }
                Some(store)
            }
            Role::Client => None,
        };
        let config = &opts.config;
        let redundancy = config.redundancy()?;
        let scorer = config.placement.scorer()?;
        let preferred = config.placement.preferred()?;
        let observations_file = opts
            .observations
            .clone()
            .unwrap_or_else(|| dir.join(OBSERVATIONS_FILE));
        let observations = Arc::new(Mutex::new(load_observations(&observations_file)));
        let shutdown = CancellationToken::new();
        let supernode = store.as_ref().map(|store| {
            let sn = &opts.config.supernode;
            let store = store.clone();
            SupernodeSetup {
                public: sn.public,
                cpu_cores: std::thread::available_parallelism()
                    .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
                memory_mib: total_memory_mib(),
                bandwidth_kbps: sn.bandwidth_kbps,
                free_storage: Arc::new(move || store.quota().saturating_sub(store.usage().1)),
                election: sn.election(),
                interval: Duration::from_secs(sn.advert_interval_secs),
                heartbeat: sn.heartbeat(),
                max_attached: sn.max_attached,
                max_tracked_peers: sn.max_tracked_peers,
            }
        });
        let net_config = NetworkConfig {
            listen: opts.config.listen.clone(),
            bootstrap: opts.config.bootstrap.clone(),
            max_connections: opts.config.max_connections,
            max_connections_per_peer: opts.config.max_connections_per_peer,
            max_pending_incoming: opts.config.max_pending_incoming,
            target_peers: opts.config.target_peers,
            role: opts.role,
            supernode,
            relay_slots: opts.config.supernode.relay_slots,
            relay_slots_per_ip: opts.config.supernode.relay_slots_per_ip,
            hole_punching: opts.config.supernode.hole_punching,
            providers: (&opts.config.providers).into(),
            libp2p_metrics: metrics_listener.is_some(),
        };
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        if let Some(store) = &store {
            let store = store.clone();
            Metrics::register_holder(
                &mut registry,
                Box::new(move || {
                    let (objects, bytes) = store.usage();
                    HolderGauges {
                        objects: objects as u64,
                        bytes,
                        quota: store.quota(),
                    }
                }),
            );
        }
        let (network, net_task) =
            Network::start(key, &net_config, registry, metrics, shutdown.clone())?;
        let blobs = BlobClient::new(&network);
        let mut tasks = vec![net_task];
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = metrics_listener {
            tracing::info!(addr = ?metrics_addr, "serving /metrics");
            let serve = crate::metrics::serve(listener, network.registry(), shutdown.clone());
            tasks.push(tokio::spawn(serve));
        }
        if let Some(store) = &store {
            tasks.push(tokio::spawn(transfer::serve(
                network.clone(),
                store.clone(),
                shutdown.clone(),
            )));
            let maintain = Maintain {
                network: network.clone(),
                store: store.clone(),
            };
            let sample = Sample {
                network: network.clone(),
                table: observations.clone(),
                path: observations_file.clone(),
            };
            let repair = Repairer::new(
                network.clone(),
                blobs.clone(),
                store.clone(),
                observations.clone(),
                Limits::from(&config.placement),
            );
            tasks.push(duties::spawn(maintain, shutdown.clone()));
            tasks.push(duties::spawn(sample, shutdown.clone()));
            tasks.push(duties::spawn(repair, shutdown.clone()));
        }
        Ok(Peer {
            blobs,
            network,
            store,
            redundancy,
            scorer,
            preferred,
            observations,
            observations_file,
            config: opts.config,
            session: RwLock::new(None),
            fetched: Mutex::new(HashMap::new()),
            inbox_changes: tokio::sync::watch::Sender::new(0),
            metrics_addr,
            shutdown,
            tasks,
        })
    }

    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        self.network.local_peer_id()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Where this peer serves `GET /metrics`, if it does.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The network handle.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The holder's store (None for a client peer).
    pub fn store(&self) -> Option<&ObjectStore> {
        self.store.as_ref()
    }

    /// The listen addresses, waiting up to 5 s for the first.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let addrs = self.network.listen_addrs().await?;
            if !addrs.is_empty() || Instant::now() > deadline {
                return Ok(addrs);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The supernode election as this peer sees it (`None` on a one-job
    /// client peer).
    pub async fn supernodes(&self) -> Result<Option<SupernodeView>, NetworkError> {
        self.network.supernodes().await
    }

    /// Waits until the routing table holds at least `n` peers.
    pub async fn wait_for_peers(&self, n: usize, timeout: Duration) -> Result<usize, NetworkError> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.network.routing_peers().await?.len();
            if have >= n || Instant::now() > deadline {
                return Ok(have);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What this peer has observed of `other`, as the scorer sees it
    /// (without the preferred, recommended and RTT factors).
    pub fn observed(&self, other: &PeerId) -> PeerStats {
        self.observations
            .lock()
            .expect("observations lock")
            .stats(other, unix_now())
    }

    /// Replaces the session with one handed over the control socket, once
    /// its cluster key checks out ([`check_session_key`] against the
    /// configured key, else the current session's).
    pub fn offer_session(&self, session: Session) -> Result<(), SessionKeyError> {
        let configured = self.config.cluster_key().ok().flatten();
        let current = self
            .session
            .read()
            .expect("session lock")
            .as_ref()
            .map(|s| s.target.cluster_key);
        check_session_key(&session, configured.as_ref(), current.as_ref())?;
        self.set_session(session);
        Ok(())
    }

    /// Replaces the session, unchecked (the caller made it in-process).
    pub fn set_session(&self, session: Session) {
        *self.session.write().expect("session lock") = Some(session);
        self.inbox_changed();
    }

    /// Forgets the session (a logout): the peer serves its holder duties
    /// and does nothing for a user until the next session.
    pub fn end_session(&self) {
        *self.session.write().expect("session lock") = None;
        self.inbox_changed();
    }

    /// A client of the auth group holding the session's token.
    pub async fn auth_client(&self) -> Result<AuthClient, SessionError> {
        let session = self.session()?;
        self.auth(&session).await
    }

    /// The logged-in user, if any.
    pub fn username(&self) -> Option<Username> {
        self.session
            .read()
            .expect("session lock")
            .as_ref()
            .map(|s| s.login.username.clone())
    }

    /// Ticks whenever this peer fetches, acks or recalls a voicemail or
    /// gets a new session: the inbox may look different.
    pub fn inbox_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inbox_changes.subscribe()
    }

    fn inbox_changed(&self) {
        self.inbox_changes.send_modify(|n| *n += 1);
    }

    /// The group's push of new voicemail for the logged-in user (the
    /// backlog first); items are raw, for [`AuthClient::open_pending`]. None
    /// carries a session key: [`Peer::fetch`] recovers it.
    pub async fn watch_inbox(
        &self,
    ) -> Result<tonic::Streaming<vmail_proto::pb::PendingVoicemail>, SessionError> {
        let session = self.session()?;
        Ok(self.auth(&session).await?.watch_pending().await?)
    }

    fn session(&self) -> Result<Session, SessionError> {
        self.session
            .read()
            .expect("session lock")
            .clone()
            .ok_or(SessionError::NotLoggedIn)
    }

    async fn auth(&self, s: &Session) -> Result<AuthClient, SessionError> {
        let mut c = AuthClient::connect(&s.target).await?;
        c.set_token(s.login.token);
        Ok(c)
    }

    /// What this peer reports about itself.
    pub async fn status(&self) -> Result<Status, NetworkError> {
        Ok(Status {
            holder: self
                .store
                .as_ref()
                .map_or_else(HolderStats::default, ObjectStore::stats),
            election: self.network.supernodes().await?,
            traffic: self.network.traffic().await?,
            peer_id: self.peer_id(),
            listen_addrs: self.network.listen_addrs().await?,
            routing_peers: self.network.routing_peers().await?.len(),
            quota_bytes: self.store.as_ref().map_or(0, ObjectStore::quota),
            username: self
                .session
                .read()
                .expect("session lock")
                .as_ref()
                .map(|s| s.login.username.to_string()),
        })
    }

    /// Records what an exchange with `peer` showed: in this peer's table,
    /// and for its supernode's recommendations.
    async fn note(&self, peer: PeerId, outcome: Outcome) {
        if peer == self.peer_id() {
            return;
        }
        self.observations
            .lock()
            .expect("observations lock")
            .outcome(&peer, outcome, unix_now());
        self.network.observe(peer, outcome == Outcome::Good).await;
    }

    /// The voicemails waiting for the logged-in user.
    pub async fn inbox(&self) -> Result<Vec<Pending>, SessionError> {
        let session = self.session()?;
        Ok(self.auth(&session).await?.list_pending().await?)
    }

    /// Stops every task of this peer and waits for them, then saves its
    /// observations.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        save_observations(&self.observations, &self.observations_file);
    }
}

/// This machine's memory, MiB, from `/proc/meminfo`; 0 if it cannot tell,
/// which never qualifies.
fn total_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}
