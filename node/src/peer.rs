//! A vmail peer: the network, the holder's store, and the two jobs of the
//! paper's §3.3 (leave a voicemail, fetch one). The control API
//! ([`crate::control`]) is a thin adapter over [`Peer`]; the daemon, the
//! ephemeral one-job peer of the CLI, the demo and the tests all run this.
//!
//! Leave: derive the session key, encrypt once, pick holders, give each
//! copy an identifier inside its holder's range, upload, and only after
//! every holder acked deposit the wrapped key and locator. Any failure
//! withdraws the copies already stored, so nothing is left half-made.
//!
//! Fetch: get the key and locator, find each copy in the DHT, stream it
//! from a holder, check its SHA-256, decrypt. The caller acks after the
//! plaintext is safely written.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::kad::RecordKey;
use libp2p::{Multiaddr, PeerId, identity};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vmail_proto::names::{NameError, Recipients};
use vmail_proto::{random_bytes, unix_now};

use crate::client::{
    AuthClient, AuthTarget, ClientError, LoginSession, NewDeposit, Pending, VoicemailMeta,
};
use crate::config::NodeConfig;
use crate::crypto::{self, DecryptError};
use crate::locator::{LOCATOR_VERSION, Locator, LocatorError, ObjectId};
use crate::network::{Network, NetworkConfig, NetworkError, Role, SupernodeSetup, SupernodeView};
use crate::placement;
use crate::storage::{ObjectMeta, Store, StoreError};
use crate::transfer::{self, BlobClient, TransferError};

/// Node key file in the data dir (libp2p protobuf encoding, mode 0600).
pub const NODE_KEY_FILE: &str = "node.key";
/// How long a voicemail and its copies live unless the sender says otherwise.
pub const DEFAULT_TTL_SECS: u64 = vmail_auth::config::DEFAULT_VOICEMAIL_TTL_SECS;
/// How often a holder drops expired objects.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// Peers tried, one after another, to take each object on a graceful leave.
pub const HANDOFF_TRIES: usize = 3;

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
    /// Uploading copies to holders (total = copies × ciphertext).
    Upload,
    /// Downloading a copy.
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
    /// Copies to store; 0 means the configured default.
    pub replicas: u32,
}

/// One stored copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
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
    /// Ciphertext bytes (each copy).
    pub ciphertext_len: u64,
    /// The copies.
    pub copies: Vec<Copy>,
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
    /// The holder it came from.
    pub holder: PeerId,
    /// Copies that failed before one worked.
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
    /// Replica count out of range.
    #[error("--replicas {0} is out of range: use 1 to 32")]
    Replicas(u32),
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
    /// Fewer holders acked than asked for.
    #[error("only {got} of {wanted} holders accepted the voicemail, so nothing was deposited and the stored copies were withdrawn. Failures: {}", .failures.join("; "))]
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
    /// Every copy failed.
    #[error("every copy of voicemail {id} failed; it stays in your inbox. {}", .failures.join("; "))]
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
}

/// A running peer.
pub struct Peer {
    network: Network,
    blobs: BlobClient,
    store: Option<Store>,
    config: NodeConfig,
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
        }
        Ok(Peer {
            blobs: BlobClient::new(&network),
            network,
            store,
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
        let replicas = match req.replicas {
            0 => self.config.replicas,
            r if r > crate::config::MAX_REPLICAS => return Err(PeerError::Replicas(r)),
            r => r,
        } as usize;
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
        timings.dht += t.elapsed();
        if candidates.is_empty() {
            return Err(PeerError::NoPeers);
        }

        // Step 1-2: session key, then one encryption for every recipient.
        let t = Instant::now();
        let timestamp = unix_now();
        let salt: [u8; 32] = random_bytes();
        let session_key =
            session
                .login
                .master_key
                .derive_session_key(&salt, timestamp, &recipients);
        let message_id: [u8; 16] = random_bytes();
        let (ciphertext, sha256) = {
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
                (ct, sha)
            })
            .await
            .expect("encryption task does not panic")
        };
        timings.crypto += t.elapsed();
        let ct_len = ciphertext.len() as u64;
        let expires_at = timestamp + DEFAULT_TTL_SECS;
        let delete_secret: [u8; 32] = random_bytes();
        let meta = ObjectMeta {
            len: ct_len,
            sha256,
            expires_at,
            delete_hash: Sha256::digest(delete_secret).into(),
        };

        // Steps 3-5: holders, identifiers in their ranges, uploads.
        let t = Instant::now();
        let order =
            placement::choose_holders(&candidates, candidates.len(), &mut rand::thread_rng());
        let mut known = candidates.clone();
        if self.store.is_some() {
            known.push(me);
        }
        let (copies, failures) = self
            .upload(&order, &known, replicas, meta, &ciphertext, &progress)
            .await;
        timings.transfer += t.elapsed();
        if copies.len() < replicas {
            self.withdraw(&copies, delete_secret).await;
            return Err(PeerError::NotEnoughHolders {
                wanted: replicas,
                got: copies.len(),
                failures,
            });
        }

        // Step 6: deposit only now that every copy is acked.
        let locator = Locator {
            version: LOCATOR_VERSION,
            message_id,
            ciphertext_len: ct_len,
            ciphertext_sha256: sha256,
            copies: copies.iter().map(|c| c.id).collect(),
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
                self.withdraw(&copies, delete_secret).await;
                return Err(e.into());
            }
        };
        timings.auth += t.elapsed();
        Ok(LeaveReceipt {
            voicemail_id: receipt.voicemail_id,
            ciphertext_len: ct_len,
            copies,
            failures,
            timings,
        })
    }

    /// Uploads to holders in `order` until `want` acked or none are left.
    async fn upload(
        &self,
        order: &[PeerId],
        known: &[PeerId],
        want: usize,
        meta: ObjectMeta,
        data: &[u8],
        progress: &ProgressFn,
    ) -> (Vec<Copy>, Vec<String>) {
        let total = meta.len * want as u64;
        let sent = Arc::new(AtomicU64::new(0));
        let attempt = |holder: PeerId| {
            let sent = sent.clone();
            let progress = progress.clone();
            async move {
                let Some(id) =
                    placement::identifier_in_range(&holder, known, &mut rand::thread_rng())
                else {
                    return (holder, Err("no identifier found in its range".to_owned()));
                };
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
                let result = self.blobs.store(holder, id, meta, data, &on_progress).await;
                let undo = last.load(Ordering::Relaxed);
                match result {
                    Ok(()) => (holder, Ok(id)),
                    Err(e) => {
                        sent.fetch_sub(undo, Ordering::Relaxed);
                        (holder, Err(e.to_string()))
                    }
                }
            }
        };
        let mut spares = order.iter().copied();
        let mut running: FuturesUnordered<_> = spares.by_ref().take(want).map(attempt).collect();
        let (mut copies, mut failures) = (Vec::new(), Vec::new());
        while let Some((holder, result)) = running.next().await {
            // What it saw goes to its supernode with the next heartbeat.
            self.network.observe(holder, result.is_ok()).await;
            match result {
                Ok(id) => copies.push(Copy { id, holder }),
                Err(why) => {
                    tracing::warn!(%holder, "holder failed: {why}");
                    failures.push(format!("{holder}: {why}"));
                    if let Some(next) = spares.next() {
                        running.push(attempt(next));
                    }
                }
            }
        }
        (copies, failures)
    }

    /// Best-effort removal of stored copies after a failed leave.
    async fn withdraw(&self, copies: &[Copy], secret: [u8; 32]) {
        for c in copies {
            if let Err(e) = self.blobs.delete(c.holder, c.id, secret).await {
                tracing::warn!(holder = %c.holder, "cannot withdraw copy (it expires on its own): {e}");
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
        let max = self.config.max_object_bytes();
        if locator.ciphertext_len > max {
            return Err(PeerError::AllCopiesFailed {
                id: id_hex,
                failures: vec![format!(
                    "the locator announces {} bytes, more than this peer's limit of {max}",
                    locator.ciphertext_len
                )],
            });
        }
        let mut failures = Vec::new();
        for copy in &locator.copies {
            let short = &hex::encode(copy)[..12];
            let t = Instant::now();
            let providers = self.network.providers(RecordKey::new(copy)).await?;
            timings.dht += t.elapsed();
            if providers.is_empty() {
                failures.push(format!("copy {short}: no holder found in the DHT"));
                continue;
            }
            for holder in providers {
                let t = Instant::now();
                let got = self
                    .fetch_copy(holder, copy, locator.ciphertext_len, &progress)
                    .await;
                timings.transfer += t.elapsed();
                let data = match got {
                    Ok(d) => d,
                    Err(why) => {
                        self.network.observe(holder, false).await;
                        failures.push(format!("copy {short} at {holder}: {why}"));
                        continue;
                    }
                };
                let t = Instant::now();
                let digest: [u8; 32] = Sha256::digest(&data).into();
                let intact = data.len() as u64 == locator.ciphertext_len
                    && digest == locator.ciphertext_sha256;
                if holder != self.peer_id() {
                    self.network.observe(holder, intact).await;
                }
                if !intact {
                    timings.crypto += t.elapsed();
                    tracing::warn!(%holder, copy = short, "holder returned wrong bytes");
                    failures.push(format!(
                        "copy {short} at {holder}: wrong bytes (SHA-256 does not match the locator)"
                    ));
                    continue;
                }
                let key = pending.session_key.clone();
                let message_id = locator.message_id;
                let total = data.len() as u64;
                let p = progress.clone();
                let plain = tokio::task::spawn_blocking(move || {
                    crypto::decrypt(&key, &message_id, &data, &mut |done| {
                        p(Progress {
                            phase: Phase::Decrypt,
                            done,
                            total,
                        })
                    })
                })
                .await
                .expect("decryption task does not panic");
                timings.crypto += t.elapsed();
                let content = plain.map_err(|why| PeerError::Decrypt {
                    id: id_hex.clone(),
                    why,
                })?;
                return Ok(Fetched {
                    pending,
                    content,
                    holder,
                    failures,
                    timings,
                });
            }
        }
        Err(PeerError::AllCopiesFailed {
            id: id_hex,
            failures,
        })
    }

    async fn fetch_copy(
        &self,
        holder: PeerId,
        id: &ObjectId,
        len: u64,
        progress: &ProgressFn,
    ) -> Result<Vec<u8>, String> {
        if holder == self.peer_id() {
            let store = self.store.clone().ok_or("not a holder")?;
            let id = *id;
            return tokio::task::spawn_blocking(move || store.read(&id))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no longer held here".to_owned());
        }
        let on_progress = |done| {
            progress(Progress {
                phase: Phase::Download,
                done,
                total: len,
            })
        };
        self.blobs
            .fetch(holder, *id, len, &on_progress)
            .await
            .map_err(|e: TransferError| e.to_string())
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
            let st = store.clone();
            let data = match tokio::task::spawn_blocking(move || st.read(&id)).await {
                Ok(Ok(Some(d))) => d,
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
                match self.blobs.store(peer, id, meta, &data, &|_| {}).await {
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

    /// Stops every task of this peer and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The holder's background duties: announce held objects after a start,
/// then drop expired ones periodically.
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
