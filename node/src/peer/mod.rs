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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::kad::RecordKey;
use libp2p::{Multiaddr, PeerId, identity};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vmail_proto::meta::DEFAULT_VOICEMAIL_TTL_SECS;
use vmail_proto::names::{NameError, Recipients};
use vmail_proto::{random_bytes, unix_now};

use crate::auth_client::{
    AuthClient, AuthTarget, ClientError, LoginSession, NewDeposit, Pending, VoicemailMeta,
};
use crate::config::NodeConfig;
use crate::core::crypto::{self, DecryptError};
use crate::core::erasure::{self, ErasureError, Redundancy};
use crate::core::locator::{LOCATOR_VERSION, Layout, Locator, LocatorError, ObjectId, ShardRef};
use crate::core::placement;
use crate::core::score::{Observations, Outcome, PeerStats, Scorer};
use crate::overlay::objects::{ObjectMeta, ShardOf, Store, StoreError};
use crate::overlay::repair;
use crate::overlay::swarm::{
    Network, NetworkConfig, NetworkError, Role, SupernodeSetup, SupernodeView,
};
use crate::overlay::transfer::{self, BlobClient, TransferError};

/// Node key file in the data dir (libp2p protobuf encoding, mode 0600).
pub const NODE_KEY_FILE: &str = "node.key";
/// How often a holder drops expired objects.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// Peers tried, one after another, to take each object on a graceful leave.
pub const HANDOFF_TRIES: usize = 3;
/// This peer's observations of others, in the data dir (postcard).
pub const OBSERVATIONS_FILE: &str = "observations.bin";
/// How often a server peer samples who is online (fresh adverts) and saves
/// its observations.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(60);
/// Observations of a peer not heard of for this long are dropped: 30 days.
pub const OBSERVATION_MAX_AGE_SECS: u64 = 30 * 86_400;
/// Longest wait for the supernode's recommendations during a leave.
pub const RECOMMEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a fetch waits for any shard download to finish before it
/// starts one more shard beside the slow ones.
pub const HEDGE_AFTER: Duration = Duration::from_secs(3);

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

/// A stage of a long job, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Encrypting the voicemail.
    Encrypt,
    /// Uploading shards to holders (total = n × shard length).
    Upload,
    /// Downloading shards (total = k × shard length).
    Download,
    /// Decrypting it.
    Decrypt,
}

/// How far a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The stage.
    pub phase: Phase,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// Where progress goes.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// A progress sink that drops everything.
pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

/// Where the time of a job went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Key derivation, encryption or decryption, hashing.
    pub crypto: Duration,
    /// Routing table reads and DHT lookups.
    pub dht: Duration,
    /// Blob transfers.
    pub transfer: Duration,
    /// Calls to the auth servers.
    pub auth: Duration,
}

/// What to leave.
#[derive(Debug, Clone)]
pub struct LeaveRequest {
    /// Recipient usernames.
    pub recipients: Vec<String>,
    /// The voicemail.
    pub content: Vec<u8>,
    /// MIME type.
    pub content_type: String,
    /// Duration, when known.
    pub duration_ms: u64,
    /// Copies or erasure coding; None means the configured default.
    pub redundancy: Option<Redundancy>,
}

/// One stored shard (a whole copy when not erasure-coded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredShard {
    /// Its index in the layout.
    pub index: u8,
    /// Its identifier.
    pub id: ObjectId,
    /// The holder that acked it.
    pub holder: PeerId,
}

/// A voicemail left.
#[derive(Debug, Clone)]
pub struct LeaveReceipt {
    /// The auth server's voicemail id.
    pub voicemail_id: [u8; 16],
    /// Ciphertext bytes.
    pub ciphertext_len: u64,
    /// How it was made redundant.
    pub redundancy: Redundancy,
    /// Bytes of each shard.
    pub shard_len: u64,
    /// The shards, by index.
    pub shards: Vec<StoredShard>,
    /// Holders that refused or failed before others took their place.
    pub failures: Vec<String>,
    /// Where the time went.
    pub timings: Timings,
}

/// A voicemail fetched and decrypted.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its pending entry (sender, metadata, recipients).
    pub pending: Pending,
    /// The plaintext.
    pub content: Vec<u8>,
    /// How it was stored.
    pub redundancy: Redundancy,
    /// The holders whose shards rebuilt it, by shard index.
    pub holders: Vec<(u8, PeerId)>,
    /// Shards that failed or were skipped on the way.
    pub failures: Vec<String>,
    /// Where the time went.
    pub timings: Timings,
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
    /// Objects held.
    pub objects: usize,
    /// Bytes held.
    pub stored_bytes: u64,
    /// The holder quota.
    pub quota_bytes: u64,
    /// The logged-in user, if any.
    pub username: Option<String>,
    /// The supernode election and this peer's place in it (`None` on a
    /// one-job client peer).
    pub election: Option<SupernodeView>,
}

/// Why a peer operation failed. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No session.
    #[error("not logged in: run `vmail login USER` first")]
    NotLoggedIn,
    /// Empty voicemail.
    #[error("the voicemail is empty; nothing was stored")]
    Empty,
    /// Oversize voicemail.
    #[error("the voicemail is {len} bytes; the limit is {max} bytes. Nothing was stored")]
    TooLarge {
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Redundancy out of range.
    #[error("{0}; nothing was stored")]
    Redundancy(#[from] ErasureError),
    /// A recipient name is malformed.
    #[error("{0}; nothing was stored")]
    BadName(#[from] NameError),
    /// A recipient is not registered.
    #[error("unknown recipient {0:?}: no such user at the auth servers. Nothing was stored")]
    UnknownRecipient(String),
    /// The routing table is empty.
    #[error(
        "no reachable peers to store on: is the overlay running, and is a bootstrap peer configured (VMAIL_BOOTSTRAP or bootstrap in node.toml)? Nothing was stored"
    )]
    NoPeers,
    /// Fewer peers known than shards to place.
    #[error(
        "{redundancy} needs {needed} holders but only {known} other peers are known; use fewer shards (--erasure K/N or --replicas R) or wait for more peers. Nothing was stored"
    )]
    TooFewPeers {
        /// The redundancy asked for.
        redundancy: Redundancy,
        /// Holders it needs.
        needed: usize,
        /// Peers known.
        known: usize,
    },
    /// Fewer holders acked than asked for.
    #[error("only {got} of {wanted} holders accepted a shard, so nothing was deposited and the stored shards were withdrawn. Failures: {}", .failures.join("; "))]
    NotEnoughHolders {
        /// Copies asked for.
        wanted: usize,
        /// Copies acked.
        got: usize,
        /// What went wrong where.
        failures: Vec<String>,
    },
    /// The auth servers refused or failed.
    #[error(transparent)]
    Auth(#[from] ClientError),
    /// No pending voicemail has this id.
    #[error("no voicemail {0} is waiting for you: run `vmail inbox` to list them")]
    NoSuchVoicemail(String),
    /// The locator cannot be read.
    #[error(transparent)]
    Locator(#[from] LocatorError),
    /// Too few shards could be fetched, checked and decoded.
    #[error("voicemail {id} cannot be rebuilt: fewer than the shards needed were found intact; it stays in your inbox. {}", .failures.join("; "))]
    AllCopiesFailed {
        /// The voicemail.
        id: String,
        /// What failed where.
        failures: Vec<String>,
    },
    /// A copy matched its hash but did not decrypt: the sender's key or
    /// locator is wrong.
    #[error(
        "voicemail {id} does not decrypt with the key the auth server gave ({why}); it stays in your inbox"
    )]
    Decrypt {
        /// The voicemail.
        id: String,
        /// Why.
        why: DecryptError,
    },
    /// The network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration is unusable.
    #[error("node config: {0}")]
    Config(String),
    /// The data dir could not be used.
    #[error("peer data dir {path}: {why}")]
    DataDir {
        /// The dir or file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
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
    store: Option<Store>,
    config: NodeConfig,
    redundancy: Redundancy,
    scorer: Box<dyn Scorer + Send + Sync>,
    preferred: Vec<PeerId>,
    observations: Arc<Mutex<Observations<PeerId>>>,
    observations_file: PathBuf,
    session: RwLock<Option<Session>>,
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

/// Loads `DIR/node.key`, creating it (mode 0600) on first start.
pub fn load_or_create_node_key(dir: &Path) -> Result<identity::Keypair, PeerError> {
    let path = dir.join(NODE_KEY_FILE);
    let err = |why: String| PeerError::DataDir {
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

/// What one leave uploads: the shards and what every holder is told.
struct Upload<'a> {
    redundancy: Redundancy,
    ciphertext_len: u64,
    expires_at: u64,
    delete_secret: [u8; 32],
    shards: &'a [Vec<u8>],
    known: &'a [PeerId],
}

impl Upload<'_> {
    /// The meta holder `i` is sent, with the layout as it stands.
    fn meta(&self, i: usize, layout: Layout) -> ObjectMeta {
        ObjectMeta {
            len: self.shards[i].len() as u64,
            sha256: layout.shards[i].sha256,
            expires_at: self.expires_at,
            delete_hash: Sha256::digest(self.delete_secret).into(),
            shard: Some(ShardOf {
                index: i as u8,
                layout,
            }),
        }
    }
}

impl Peer {
    /// Starts the network and, for a server peer, the holder.
    pub async fn start(opts: PeerOptions) -> Result<Peer, PeerError> {
        let dir = &opts.data_dir;
        let dir_err = |e: std::io::Error| PeerError::DataDir {
            path: dir.clone(),
            why: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let key = match opts.role {
            Role::Server => load_or_create_node_key(dir)?,
            Role::Client => identity::Keypair::generate_ed25519(),
        };
        let store = match opts.role {
            Role::Server => {
                let (store, report) =
                    Store::open(dir, opts.config.quota_bytes, opts.config.max_object_bytes())?;
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
        let redundancy = config.redundancy().map_err(PeerError::Config)?;
        let scorer = config.placement.scorer().map_err(PeerError::Config)?;
        let preferred = config.placement.preferred().map_err(PeerError::Config)?;
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
            }
        });
        let net_config = NetworkConfig {
            listen: opts.config.listen.clone(),
            bootstrap: opts.config.bootstrap.clone(),
            max_connections: opts.config.max_connections,
            max_connections_per_peer: opts.config.max_connections_per_peer,
            max_pending_incoming: opts.config.max_pending_incoming,
            role: opts.role,
            supernode,
            relay_slots: opts.config.supernode.relay_slots,
            hole_punching: opts.config.supernode.hole_punching,
        };
        let (network, net_task) = Network::start(key, &net_config, shutdown.clone())?;
        let blobs = BlobClient::new(&network);
        let mut tasks = vec![net_task];
        if let Some(store) = &store {
            tasks.push(tokio::spawn(transfer::serve(
                network.clone(),
                store.clone(),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(maintain(
                network.clone(),
                store.clone(),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(sample(
                network.clone(),
                observations.clone(),
                observations_file.clone(),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(
                repair::Repairer {
                    network: network.clone(),
                    blobs: blobs.clone(),
                    store: store.clone(),
                    observations: observations.clone(),
                    limits: repair::Limits::from(&config.placement),
                }
                .run(shutdown.clone()),
            ));
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
            shutdown,
            tasks,
        })
    }

    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        self.network.local_peer_id()
    }

    /// The network handle.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The holder's store (None for a client peer).
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// The listen addresses, waiting up to 5 s for the first.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, PeerError> {
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
    pub async fn supernodes(&self) -> Result<Option<SupernodeView>, PeerError> {
        Ok(self.network.supernodes().await?)
    }

    /// Waits until the routing table holds at least `n` peers.
    pub async fn wait_for_peers(&self, n: usize, timeout: Duration) -> Result<usize, PeerError> {
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

    /// Replaces the session.
    pub fn set_session(&self, session: Session) {
        *self.session.write().expect("session lock") = Some(session);
    }

    fn session(&self) -> Result<Session, PeerError> {
        self.session
            .read()
            .expect("session lock")
            .clone()
            .ok_or(PeerError::NotLoggedIn)
    }

    async fn auth(&self, s: &Session) -> Result<AuthClient, PeerError> {
        let mut c = AuthClient::connect(&s.target).await?;
        c.set_token(s.login.token);
        Ok(c)
    }

    /// What this peer reports about itself.
    pub async fn status(&self) -> Result<Status, PeerError> {
        let (objects, stored_bytes) = self.store.as_ref().map_or((0, 0), Store::usage);
        Ok(Status {
            election: self.network.supernodes().await?,
            peer_id: self.peer_id(),
            listen_addrs: self.network.listen_addrs().await?,
            routing_peers: self.network.routing_peers().await?.len(),
            objects,
            stored_bytes,
            quota_bytes: self.store.as_ref().map_or(0, Store::quota),
            username: self
                .session
                .read()
                .expect("session lock")
                .as_ref()
                .map(|s| s.login.username.to_string()),
        })
    }

    /// Leaves a voicemail (paper §3.3 steps 1-5).
    pub async fn leave(
        &self,
        req: LeaveRequest,
        progress: ProgressFn,
    ) -> Result<LeaveReceipt, PeerError> {
        let session = self.session()?;
        let mut timings = Timings::default();
        let len = req.content.len() as u64;
        if len == 0 {
            return Err(PeerError::Empty);
        }
        if len > self.config.max_voicemail_bytes {
            return Err(PeerError::TooLarge {
                len,
                max: self.config.max_voicemail_bytes,
            });
        }
        let redundancy = req.redundancy.unwrap_or(self.redundancy).validate()?;
        let recipients = Recipients::parse(&req.recipients)?;

        // Every recipient must exist before anything is stored.
        let t = Instant::now();
        let mut auth = self.auth(&session).await?;
        for name in recipients.to_strings() {
            match auth.certificate(&name).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                    return Err(PeerError::UnknownRecipient(name));
                }
                Err(e) => return Err(e.into()),
            }
        }
        timings.auth += t.elapsed();

        let t = Instant::now();
        let me = self.peer_id();
        let mut candidates = self.network.routing_peers().await?;
        candidates.retain(|p| *p != me);
        if candidates.is_empty() {
            return Err(PeerError::NoPeers);
        }
        if candidates.len() < redundancy.n() {
            return Err(PeerError::TooFewPeers {
                redundancy,
                needed: redundancy.n(),
                known: candidates.len(),
            });
        }
        let order = self.rank(&candidates, redundancy.n()).await;
        timings.dht += t.elapsed();

        // Step 1-2: session key, then one encryption for every recipient,
        // then the shards.
        let t = Instant::now();
        let timestamp = unix_now();
        let salt: [u8; 32] = random_bytes();
        let session_key =
            session
                .login
                .master_key
                .derive_session_key(&salt, timestamp, &recipients);
        let message_id: [u8; 16] = random_bytes();
        let (ciphertext_len, sha256, shards) = {
            let key = session_key.clone();
            let content = req.content;
            let progress = progress.clone();
            tokio::task::spawn_blocking(move || {
                let ct = crypto::encrypt(&key, message_id, &content, &mut |done| {
                    progress(Progress {
                        phase: Phase::Encrypt,
                        done,
                        total: len,
                    })
                });
                let sha: [u8; 32] = Sha256::digest(&ct).into();
                erasure::encode(redundancy, &ct).map(|shards| (ct.len() as u64, sha, shards))
            })
            .await
            .expect("encryption task does not panic")?
        };
        timings.crypto += t.elapsed();
        let expires_at = timestamp + DEFAULT_VOICEMAIL_TTL_SECS;
        let delete_secret: [u8; 32] = random_bytes();

        // Steps 3-5: holders, identifiers in their ranges, uploads.
        let t = Instant::now();
        let mut known = candidates.clone();
        if self.store.is_some() {
            known.push(me);
        }
        let upload = Upload {
            redundancy,
            ciphertext_len,
            expires_at,
            delete_secret,
            shards: &shards,
            known: &known,
        };
        let (stored, layout, failures) = self.upload(&upload, &order, &progress).await;
        timings.transfer += t.elapsed();
        if stored.len() < redundancy.n() {
            self.withdraw(&stored, delete_secret).await;
            return Err(PeerError::NotEnoughHolders {
                wanted: redundancy.n(),
                got: stored.len(),
                failures,
            });
        }

        // Step 6: deposit only now that every shard is acked.
        let locator = Locator {
            version: LOCATOR_VERSION,
            message_id,
            ciphertext_sha256: sha256,
            layout,
        };
        let t = Instant::now();
        let deposit = NewDeposit {
            request_id: random_bytes(),
            recipients,
            locator: locator.encode(),
            session_key,
            meta: VoicemailMeta {
                size: len,
                content_type: req.content_type,
                duration_ms: req.duration_ms,
                expires_at,
            },
        };
        let receipt = match auth.deposit(&session.login.master_key, &deposit).await {
            Ok(r) => r,
            Err(e) => {
                self.withdraw(&stored, delete_secret).await;
                return Err(e.into());
            }
        };
        timings.auth += t.elapsed();
        Ok(LeaveReceipt {
            voicemail_id: receipt.voicemail_id,
            ciphertext_len,
            redundancy,
            shard_len: locator.layout.shard_len(),
            shards: stored,
            failures,
            timings,
        })
    }

    /// Every candidate, best holder first: the configured scorer over this
    /// peer's observations, the preferred list, the supernode's
    /// recommendations (asked for `n`, when attached) and RTTs.
    async fn rank(&self, candidates: &[PeerId], n: usize) -> Vec<PeerId> {
        let recommended = tokio::time::timeout(
            RECOMMEND_TIMEOUT,
            self.network
                .recommend(u16::try_from(n).unwrap_or(u16::MAX), Vec::new()),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
        let rtts = self.network.rtts().await.unwrap_or_default();
        let now = unix_now();
        let table = self.observations.lock().expect("observations lock");
        let stats: Vec<(PeerId, PeerStats)> = candidates
            .iter()
            .map(|p| {
                let mut s = table.stats(p, now);
                s.preferred = self.preferred.contains(p);
                s.recommended = recommended.contains(p);
                s.rtt_ms = rtts.get(p).map(|d| d.as_secs_f64() * 1000.0);
                (*p, s)
            })
            .collect();
        drop(table);
        crate::core::score::select(
            self.scorer.as_ref(),
            &stats,
            candidates.len(),
            &mut rand::thread_rng(),
        )
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

    /// Uploads shard `i` to the `i`-th holder in `order`, concurrently;
    /// a shard whose holder fails goes to the next spare under a new
    /// identifier in that spare's range. Holders that got an earlier draft
    /// of the layout are sent the final one (`Relayout`, with the delete
    /// secret). Returns the shards stored, the final layout and the
    /// failures.
    async fn upload(
        &self,
        up: &Upload<'_>,
        order: &[PeerId],
        progress: &ProgressFn,
    ) -> (Vec<StoredShard>, Layout, Vec<String>) {
        let n = up.redundancy.n();
        let shard_len = up.shards[0].len() as u64;
        let total = shard_len * n as u64;
        let sent = Arc::new(AtomicU64::new(0));
        let mut spares = order.iter().copied();
        let mut failures = Vec::new();
        let mut holders: Vec<Option<PeerId>> = vec![None; n];
        let mut layout = Layout {
            redundancy: up.redundancy,
            ciphertext_len: up.ciphertext_len,
            shards: up
                .shards
                .iter()
                .map(|s| ShardRef {
                    id: [0; 32],
                    sha256: Sha256::digest(s).into(),
                })
                .collect(),
        };
        // Identifiers for the first n holders before anything is sent, so
        // the layout they get is final unless one fails.
        let mut first = Vec::new();
        for i in 0..n {
            for holder in spares.by_ref() {
                match placement::identifier_in_range(&holder, up.known, &mut rand::thread_rng()) {
                    Some(id) => {
                        layout.shards[i].id = id;
                        first.push((i, holder));
                        break;
                    }
                    None => failures.push(format!("{holder}: no identifier found in its range")),
                }
            }
        }
        let attempt = |i: usize, holder: PeerId, layout: Layout| {
            let sent = sent.clone();
            let progress = progress.clone();
            async move {
                let id = layout.shards[i].id;
                let meta = up.meta(i, layout);
                let last = AtomicU64::new(0);
                let on_progress = |done: u64| {
                    let delta = done - last.swap(done, Ordering::Relaxed);
                    let all = sent.fetch_add(delta, Ordering::Relaxed) + delta;
                    progress(Progress {
                        phase: Phase::Upload,
                        done: all.min(total),
                        total,
                    });
                };
                let result = self
                    .blobs
                    .store(holder, id, meta.clone(), &up.shards[i], &on_progress)
                    .await;
                if result.is_err() {
                    sent.fetch_sub(last.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                (i, holder, meta, result)
            }
        };
        let mut running: FuturesUnordered<_> = first
            .into_iter()
            .map(|(i, holder)| attempt(i, holder, layout.clone()))
            .collect();
        let mut sent_layouts: Vec<Option<Layout>> = vec![None; n];
        while let Some((i, holder, meta, result)) = running.next().await {
            let now = unix_now();
            match result {
                Ok(()) => {
                    self.note(holder, Outcome::Good).await;
                    let mut t = self.observations.lock().expect("observations lock");
                    t.picked(&holder, now);
                    t.accepted(&holder, shard_len, now);
                    drop(t);
                    holders[i] = Some(holder);
                    sent_layouts[i] = meta.shard.map(|s| s.layout);
                }
                Err(e) => {
                    tracing::warn!(%holder, shard = i, "holder failed: {e}");
                    if matches!(e, TransferError::NoRoom { .. }) {
                        self.observations
                            .lock()
                            .expect("observations lock")
                            .refused_room(&holder, shard_len, now);
                    }
                    self.note(holder, Outcome::Failed).await;
                    failures.push(format!("shard {i} at {holder}: {e}"));
                    for next in spares.by_ref() {
                        match placement::identifier_in_range(
                            &next,
                            up.known,
                            &mut rand::thread_rng(),
                        ) {
                            Some(id) => {
                                layout.shards[i].id = id;
                                running.push(attempt(i, next, layout.clone()));
                                break;
                            }
                            None => {
                                failures.push(format!("{next}: no identifier found in its range"))
                            }
                        }
                    }
                }
            }
        }
        let stored: Vec<StoredShard> = holders
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                h.map(|holder| StoredShard {
                    index: i as u8,
                    id: layout.shards[i].id,
                    holder,
                })
            })
            .collect();
        if stored.len() == n {
            for s in &stored {
                let i = usize::from(s.index);
                if sent_layouts[i].as_ref() != Some(&layout) {
                    let shard = ShardOf {
                        index: s.index,
                        layout: layout.clone(),
                    };
                    let relayout = self.blobs.relayout(s.holder, s.id, up.delete_secret, shard);
                    if let Err(e) = relayout.await {
                        tracing::warn!(holder = %s.holder, "cannot hand it the final layout; its repair checks keep the draft: {e}");
                    }
                }
            }
        }
        (stored, layout, failures)
    }

    /// Best-effort removal of stored shards after a failed leave.
    async fn withdraw(&self, shards: &[StoredShard], secret: [u8; 32]) {
        for s in shards {
            if let Err(e) = self.blobs.delete(s.holder, s.id, secret).await {
                tracing::warn!(holder = %s.holder, "cannot withdraw shard (it expires on its own): {e}");
            }
        }
    }

    /// The voicemails waiting for the logged-in user.
    pub async fn inbox(&self) -> Result<Vec<Pending>, PeerError> {
        let session = self.session()?;
        Ok(self
            .auth(&session)
            .await?
            .list_pending(&session.login.master_key)
            .await?)
    }

    /// Fetches, checks and decrypts one pending voicemail. It stays pending
    /// until [`Peer::ack`].
    pub async fn fetch(
        &self,
        voicemail_id: [u8; 16],
        progress: ProgressFn,
    ) -> Result<Fetched, PeerError> {
        let session = self.session()?;
        let mut timings = Timings::default();
        let t = Instant::now();
        let pending = self
            .auth(&session)
            .await?
            .list_pending(&session.login.master_key)
            .await?
            .into_iter()
            .find(|p| p.id == voicemail_id)
            .ok_or_else(|| PeerError::NoSuchVoicemail(hex::encode(voicemail_id)))?;
        timings.auth += t.elapsed();
        let id_hex = hex::encode(voicemail_id);
        let locator = Locator::decode(&pending.locator)?;
        let layout = &locator.layout;
        let max = self.config.max_object_bytes();
        if layout.ciphertext_len > max {
            return Err(PeerError::AllCopiesFailed {
                id: id_hex,
                failures: vec![format!(
                    "the locator announces {} bytes, more than this peer's limit of {max}",
                    layout.ciphertext_len
                )],
            });
        }

        // Find every shard's holders at once, then fetch k in parallel,
        // quickest holders first, starting another shard for each failure.
        let t = Instant::now();
        let lookups = layout.shards.iter().enumerate().map(|(i, s)| async move {
            let found = self.network.providers(RecordKey::new(&s.id)).await;
            (i, found.map(|p| p.into_iter().collect::<Vec<_>>()))
        });
        let mut found: Vec<(usize, Vec<PeerId>)> = Vec::new();
        let mut failures = Vec::new();
        for (i, holders) in futures::future::join_all(lookups).await {
            match holders? {
                h if h.is_empty() => {
                    failures.push(format!("shard {i}: no holder found in the DHT"))
                }
                h => found.push((i, h)),
            }
        }
        timings.dht += t.elapsed();
        // This peer's own store first, then by RTT, unmeasured last.
        let rtts = self.network.rtts().await.unwrap_or_default();
        let me = self.peer_id();
        let cost = |p: &PeerId| match rtts.get(p) {
            _ if *p == me => Duration::ZERO,
            Some(rtt) => *rtt,
            None => Duration::MAX,
        };
        for (_, holders) in &mut found {
            holders.sort_by_key(cost);
        }
        // Within 5 ms of each other, original shards (index below k) come
        // first: with all k of them no decoding is needed.
        let k = layout.redundancy.k();
        found.sort_by_key(|(i, holders)| (cost(&holders[0]).as_millis() / 5, *i >= k));

        let t = Instant::now();
        let received = Arc::new(AtomicU64::new(0));
        let total = layout.shard_len() * k as u64;
        let mut queue = found.into_iter();
        let mut running: FuturesUnordered<_> = queue
            .by_ref()
            .take(k)
            .map(|(i, holders)| self.fetch_shard(layout, i, holders, &received, total, &progress))
            .collect();
        let mut shards = BTreeMap::new();
        let mut used = Vec::new();
        loop {
            // A failed shard is replaced by the next one; and a holder that
            // stalls (a cut network: its connection is not closed yet) must
            // not hold the voicemail up, so while no shard arrives for
            // HEDGE_AFTER, one more starts beside it.
            match tokio::time::timeout(HEDGE_AFTER, running.next()).await {
                Ok(None) => break,
                Ok(Some((i, Some((holder, bytes)), mut errors))) => {
                    failures.append(&mut errors);
                    used.push((i as u8, holder));
                    shards.insert(i, bytes);
                    if shards.len() == k {
                        break;
                    }
                    continue;
                }
                Ok(Some((_, None, mut errors))) => failures.append(&mut errors),
                Err(_) => tracing::info!("shard downloads are slow: starting another"),
            }
            if let Some((i, holders)) = queue.next() {
                running.push(self.fetch_shard(layout, i, holders, &received, total, &progress));
            }
        }
        drop(running);
        timings.transfer += t.elapsed();
        if shards.len() < k {
            failures.push(format!(
                "{} of the {k} shards needed ({}) were fetched intact",
                shards.len(),
                layout.redundancy
            ));
            return Err(PeerError::AllCopiesFailed {
                id: id_hex,
                failures,
            });
        }

        let t = Instant::now();
        let key = pending.session_key.clone();
        let (redundancy, ct_len, ct_sha) = (
            layout.redundancy,
            layout.ciphertext_len,
            locator.ciphertext_sha256,
        );
        let message_id = locator.message_id;
        let p = progress.clone();
        let plain = tokio::task::spawn_blocking(move || {
            let ct = erasure::decode(redundancy, ct_len, &shards).map_err(|e| e.to_string())?;
            if <[u8; 32]>::from(Sha256::digest(&ct)) != ct_sha {
                return Err(
                    "the decoded ciphertext does not match the locator's SHA-256".to_owned(),
                );
            }
            let total = ct.len() as u64;
            Ok(crypto::decrypt(&key, &message_id, &ct, &mut |done| {
                p(Progress {
                    phase: Phase::Decrypt,
                    done,
                    total,
                })
            }))
        })
        .await
        .expect("decryption task does not panic");
        timings.crypto += t.elapsed();
        let content = match plain {
            Ok(c) => c.map_err(|why| PeerError::Decrypt {
                id: id_hex.clone(),
                why,
            })?,
            Err(why) => {
                failures.push(why);
                return Err(PeerError::AllCopiesFailed {
                    id: id_hex,
                    failures,
                });
            }
        };
        used.sort();
        Ok(Fetched {
            pending,
            content,
            redundancy: layout.redundancy,
            holders: used,
            failures,
            timings,
        })
    }

    /// Shard `i` from the first of `holders` that returns bytes matching
    /// its hash; a holder that returns other bytes is marked corrupt.
    /// Returns the index, the holder and bytes if any, and what failed.
    async fn fetch_shard(
        &self,
        layout: &Layout,
        i: usize,
        holders: Vec<PeerId>,
        received: &Arc<AtomicU64>,
        total: u64,
        progress: &ProgressFn,
    ) -> (usize, Option<(PeerId, Vec<u8>)>, Vec<String>) {
        let expected = layout.shards[i];
        let len = layout.shard_len();
        let short = &hex::encode(expected.id)[..12];
        let mut failures = Vec::new();
        for holder in holders {
            let got = self
                .fetch_object(holder, &expected.id, len, received, total, progress)
                .await;
            let bytes = match got {
                Ok(b) => b,
                Err(why) => {
                    self.note(holder, Outcome::Failed).await;
                    failures.push(format!("shard {i} ({short}) at {holder}: {why}"));
                    continue;
                }
            };
            if bytes.len() as u64 != len
                || <[u8; 32]>::from(Sha256::digest(&bytes)) != expected.sha256
            {
                tracing::warn!(%holder, shard = i, "holder returned wrong bytes");
                self.note(holder, Outcome::Corrupt).await;
                failures.push(format!(
                    "shard {i} ({short}) at {holder}: wrong bytes (SHA-256 does not match the locator)"
                ));
                continue;
            }
            self.note(holder, Outcome::Good).await;
            return (i, Some((holder, bytes)), failures);
        }
        (i, None, failures)
    }

    async fn fetch_object(
        &self,
        holder: PeerId,
        id: &ObjectId,
        len: u64,
        received: &AtomicU64,
        total: u64,
        progress: &ProgressFn,
    ) -> Result<Vec<u8>, String> {
        if holder == self.peer_id() {
            let store = self.store.as_ref().ok_or("not a holder")?;
            return store
                .read_async(id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no longer held here".to_owned());
        }
        let last = AtomicU64::new(0);
        let on_progress = |done: u64| {
            let delta = done - last.swap(done, Ordering::Relaxed);
            let all = received.fetch_add(delta, Ordering::Relaxed) + delta;
            progress(Progress {
                phase: Phase::Download,
                done: all.min(total),
                total,
            })
        };
        let got = self.blobs.fetch(holder, *id, len, &on_progress).await;
        if got.is_err() {
            received.fetch_sub(last.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        got.map_err(|e: TransferError| e.to_string())
    }

    /// Tells the auth servers the voicemail is safely fetched.
    pub async fn ack(&self, voicemail_id: [u8; 16]) -> Result<bool, PeerError> {
        let session = self.session()?;
        Ok(self.auth(&session).await?.ack(&voicemail_id).await?)
    }

    /// Hands every held object to the next-closest peer for its identifier
    /// (paper §3.2: "moved automatically if the selected peer exits the
    /// system normally"). Returns (moved, kept).
    pub async fn hand_off(&self) -> (usize, usize) {
        let Some(store) = &self.store else {
            return (0, 0);
        };
        let me = self.peer_id();
        let (mut moved, mut kept) = (0, 0);
        for (id, meta) in store.list() {
            let data = match store.read_async(&id).await {
                Ok(Some(d)) => d,
                _ => {
                    kept += 1;
                    continue;
                }
            };
            let closest = self
                .network
                .closest_peers(id.to_vec())
                .await
                .unwrap_or_default();
            let mut done = false;
            for peer in closest.into_iter().filter(|p| *p != me).take(HANDOFF_TRIES) {
                match self
                    .blobs
                    .store(peer, id, meta.clone(), &data, &|_| {})
                    .await
                {
                    Ok(()) => {
                        tracing::info!(id = %hex::encode(id), to = %peer, "object handed off");
                        done = true;
                        break;
                    }
                    Err(e) => tracing::warn!(id = %hex::encode(id), "hand-off failed: {e}"),
                }
            }
            if done {
                let _ = self.network.stop_providing(RecordKey::new(&id)).await;
                let st = store.clone();
                let _ = tokio::task::spawn_blocking(move || st.remove(&id)).await;
                moved += 1;
            } else {
                kept += 1;
            }
        }
        (moved, kept)
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

/// Reads the observation table; a missing or unreadable file starts afresh
/// (it is only history, and rebuilds itself).
fn load_observations(path: &Path) -> Observations<PeerId> {
    match std::fs::read(path) {
        Ok(bytes) => postcard::from_bytes(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), "unreadable observations ({e}); starting afresh");
            Observations::default()
        }),
        Err(_) => Observations::default(),
    }
}

/// Writes the observation table atomically (a temporary file of its own,
/// synced, renamed into place, so two peers saving at once cannot mix
/// their bytes); a failure is logged, never fatal.
fn save_observations(table: &Mutex<Observations<PeerId>>, path: &Path) {
    use std::io::Write;
    let bytes = postcard::to_stdvec(&*table.lock().expect("observations lock"))
        .expect("observations encode");
    let dir = path.parent().unwrap_or(Path::new("."));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| tempfile::NamedTempFile::new_in(dir))
        .and_then(|mut f| {
            f.write_all(&bytes)?;
            f.as_file().sync_all()?;
            f.persist(path).map_err(|e| e.error)?;
            Ok(())
        });
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), "cannot save observations: {e}");
    }
}

/// Every [`SAMPLE_INTERVAL`]: one availability sample per known peer
/// (online = a fresh advert), each advert's free space, old records
/// pruned, and the table saved.
async fn sample(
    network: Network,
    table: Arc<Mutex<Observations<PeerId>>>,
    path: PathBuf,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (Ok(Some(view)), Ok(routing)) =
            (network.supernodes().await, network.routing_peers().await)
        else {
            continue;
        };
        let now = unix_now();
        {
            let mut t = table.lock().expect("observations lock");
            for a in &view.adverts {
                t.advertised(&a.peer_id, a.free_storage, now);
            }
            for p in routing {
                t.sample(&p, view.adverts.iter().any(|a| a.peer_id == p), now);
            }
            t.prune(now, OBSERVATION_MAX_AGE_SECS);
        }
        let (table, path) = (table.clone(), path.clone());
        let _ = tokio::task::spawn_blocking(move || save_observations(&table, &path)).await;
    }
}

/// The holder's background duties: announce held objects after a start,
/// then drop expired ones periodically.
async fn maintain(network: Network, store: Store, shutdown: CancellationToken) {
    for (id, _) in store.list() {
        if shutdown.is_cancelled() {
            return;
        }
        transfer::announce(&network, id).await;
    }
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for id in store.expired(unix_now()) {
            let st = store.clone();
            if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || st.remove(&id)).await {
                let _ = network.stop_providing(RecordKey::new(&id)).await;
                tracing::info!(id = %hex::encode(id), "expired object dropped");
            }
        }
    }
}
