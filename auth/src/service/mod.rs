//! The auth server's domain logic: registration, login, certificates,
//! deposits, delivery, acknowledgement, retention, receipts and recall. No
//! gRPC types here: the adapter in `grpc.rs` converts to and from these
//! plain types.
//!
//! - this module: [`AuthService`], proposing writes and linearizing reads;
//! - [`clock`]: the injected clock;
//! - [`error`]: [`AuthError`], every refusal;
//! - [`register`]: OPAQUE registration and invite codes;
//! - [`login`]: OPAQUE login, the lock-out, sessions and certificates;
//! - [`grant`]: storage grants ([`validate_grant_request`]);
//! - [`deposit`]: deposits ([`validate_deposit`]) and their proofs,
//!   delivery and acks;
//! - [`retention`]: how long voicemail for a user may wait
//!   ([`validate_retention`]);
//! - [`sent`]: a sender's receipts (ListSent) and recalls;
//! - [`policy`]: recipient policies, reports and sender quotas (spam
//!   control, [`validate_edit`]);
//! - [`share`]: threshold-shared session keys: the grant's share keys,
//!   OpenShare, and publishing, rotating and erasing this server's share
//!   keys ([`share_key_duty`]);
//! - [`dkg`]: the group signing key's distributed generation ([`dkg_duty`]);
//! - threshold signing rounds over the internal service are
//!   `crate::cluster::signer` ([`Signer`]), a layer below.
//!
//! Every change goes through the group's Raft log as a [`Command`]: the
//! service prepares it (validation, OPAQUE, times, random values, secrets
//! sealed under the data key), proposes it, and reads the outcome the state
//! machine produced. Reads that must be current first confirm with a
//! majority that this server is still the leader (a linearizable read), so
//! a server cut off from the group never answers from stale state.
//!
//! Blocking database work runs on tokio's blocking pool so that a durable
//! commit never stalls the network tasks.

mod clock;
mod deposit;
mod dkg;
mod error;
mod grant;
pub mod limits;
mod login;
mod policy;
mod register;
mod retention;
mod sent;
mod share;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use vmail_proto::batch::GroupSignature;

use crate::cluster::batcher::{Batcher, WriteError};
use crate::cluster::sign_batcher::SignBatcher;
use crate::cluster::{Command, Event, Raft, Reply};
use crate::config::ServerConfig;
use crate::datadir::ShareKeyRing;
use crate::keys::ServerKeys;
use crate::metrics::AuthMetrics;
use crate::store::{Session, Store, StoreError};
use limits::{RateLimiter, StreamCounts};
use login::{Failures, PendingLogins};

pub use crate::cluster::signer::{
    APPLY_WAIT, MAX_BATCH, MAX_OUTSTANDING, MAX_TARGET_LEN, NONCE_TTL, PREPARE_BATCH,
    ROUND_TIMEOUT, SignError, SignTarget, Signer,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use deposit::{
    AckReceipt, CheckedDeposit, Delivery, Deposit, Deposited, MAX_CONTENT_TYPE_LEN,
    MAX_LOCATOR_LEN, MAX_REQUEST_ID_LEN, MIN_REQUEST_ID_LEN, ShareIn, ShareSlot, validate_deposit,
};
pub use dkg::repair::{REPAIR_DELTA_INFO, REPAIR_SIGMA_INFO, sigma_plaintext, split_sigma};
pub use dkg::{DKG_ROUND2_INFO, DKG_STALL_SECS, dkg_duty, round2_aad};
pub use error::AuthError;
pub use grant::{
    GrantRequest, Granted, MESSAGE_ID_LEN, SHA256_LEN, ShardRequest, validate_grant_request,
};
pub use login::{LoginFinish, LoginOutcome};
pub use policy::{Reported, grant_policy, validate_edit};
pub use register::RegisterFinish;
pub use retention::{
    MIN_RETENTION_SECS, default_retention, retention_cap, retention_in_force, validate_retention,
};
pub use sent::{MAX_LIST_SENT, Recalled};
pub use share::{
    ERASE_GRACE_SECS, OpenedShare, PUBLISH_RETRY_MAX, PUBLISH_RETRY_MIN, SHARE_KEY_UPKEEP_INTERVAL,
    Upkeep, share_key_duty,
};

/// Capacity of the new-voicemail broadcast channel.
pub const EVENT_CAPACITY: usize = 1024;
/// How long a write may wait for a majority of the group to commit it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Free space below which the leader refuses writes, so that the Raft log
/// never meets a full disk (a failed log write stops a server's Raft).
pub const MIN_FREE_BYTES: u64 = 1024 * 1024;
/// How long a read may wait for a majority to confirm this server leads.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Most client addresses, or users, a rate limiter tracks at once; a
/// bucket that has refilled is forgotten to make room.
pub const MAX_TRACKED_KEYS: usize = 100_000;

fn per_minute(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The in-memory limit tables, built from the config.
struct Limits {
    logins: Mutex<PendingLogins>,
    streams: Mutex<StreamCounts>,
    registrations: Mutex<RateLimiter<()>>,
    registrations_by_address: Mutex<RateLimiter<std::net::IpAddr>>,
    writes: Mutex<RateLimiter<String>>,
    refused_grants: Mutex<RateLimiter<String>>,
    open_shares: Mutex<RateLimiter<String>>,
}

impl Limits {
    fn new(config: &ServerConfig) -> Self {
        Self {
            logins: Mutex::new(PendingLogins::new(login::login_caps(config))),
            streams: Mutex::new(StreamCounts::default()),
            registrations: Mutex::new(RateLimiter::new(
                per_minute(config.registrations_per_minute),
                1,
            )),
            registrations_by_address: Mutex::new(RateLimiter::new(
                per_minute(config.registrations_per_minute_per_address),
                MAX_TRACKED_KEYS,
            )),
            writes: Mutex::new(RateLimiter::new(
                per_minute(config.writes_per_minute_per_user),
                MAX_TRACKED_KEYS,
            )),
            refused_grants: Mutex::new(RateLimiter::new(
                per_minute(config.spam.refused_grants_per_minute),
                MAX_TRACKED_KEYS,
            )),
            open_shares: Mutex::new(RateLimiter::new(
                per_minute(config.open_shares_per_minute_per_user),
                MAX_TRACKED_KEYS,
            )),
        }
    }
}

/// The auth server's domain service.
pub struct AuthService {
    store: Arc<Store>,
    keys: Arc<ServerKeys>,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    raft: Raft,
    batcher: Batcher,
    logins: Mutex<PendingLogins>,
    failures: Mutex<HashMap<String, Failures>>,
    /// Open WatchPending streams per session and per user.
    streams: Mutex<StreamCounts>,
    /// Registrations from everyone.
    registrations: Mutex<RateLimiter<()>>,
    /// Registrations per client address.
    registrations_by_address: Mutex<RateLimiter<std::net::IpAddr>>,
    /// Cheap repeatable writes (SetRetention, Recall) per user.
    writes: Mutex<RateLimiter<String>>,
    /// Grant refusals (policies, quotas) per user: past the rate, further
    /// grant requests are refused from memory.
    refused_grants: Mutex<RateLimiter<String>>,
    /// OpenShare calls per user.
    open_shares: Mutex<RateLimiter<String>>,
    /// This server's own share-key secrets (never replicated).
    share_keys: Arc<ShareKeyRing>,
    /// Its share of the group signing key and its signing rounds.
    signer: Arc<Signer>,
    /// The rounds it coordinates for grants, orders and proofs, batched.
    sign_batcher: SignBatcher,
    events: broadcast::Sender<Event>,
    shutdown: CancellationToken,
    metrics: Arc<AuthMetrics>,
}

impl fmt::Debug for AuthService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl AuthService {
    /// A service over an open store and the Raft node replicating it.
    /// `events` is the channel the state machine reports applied deposits
    /// and logouts on; `metrics` is where this server counts; `share_keys`
    /// are this server's own share-key secrets.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        keys: Arc<ServerKeys>,
        share_keys: Arc<ShareKeyRing>,
        config: ServerConfig,
        clock: Arc<dyn Clock>,
        raft: Raft,
        events: broadcast::Sender<Event>,
        metrics: Arc<AuthMetrics>,
    ) -> Self {
        let limits = Limits::new(&config);
        let signer = Arc::new(Signer::new(
            &store,
            raft.clone(),
            &keys.cluster_key.verifying_key(),
        ));
        let me = raft.metrics().borrow().id;
        Self {
            sign_batcher: SignBatcher::start(
                signer.clone(),
                crate::tls::ClusterTls::of_member(&keys),
                me,
                metrics.clone(),
            ),
            signer,
            store,
            keys,
            config,
            clock,
            batcher: Batcher::start(raft.clone(), WRITE_TIMEOUT, metrics.clone()),
            raft,
            logins: limits.logins,
            failures: Mutex::new(HashMap::new()),
            streams: limits.streams,
            registrations: limits.registrations,
            registrations_by_address: limits.registrations_by_address,
            writes: limits.writes,
            refused_grants: limits.refused_grants,
            open_shares: limits.open_shares,
            share_keys,
            events,
            shutdown: CancellationToken::new(),
            metrics,
        }
    }

    /// What this server counts.
    pub fn metrics(&self) -> &Arc<AuthMetrics> {
        &self.metrics
    }

    /// This server's part in threshold signing.
    pub fn signer(&self) -> &Arc<Signer> {
        &self.signer
    }

    /// One group signature on `target`, coordinated by this server
    /// (docs/THRESHOLD.md §2), and the group key it verifies under.
    pub async fn group_sign(
        &self,
        target: &SignTarget,
    ) -> Result<(ed25519_dalek::Signature, [u8; 32]), SignError> {
        let tls = crate::tls::ClusterTls::of_member(&self.keys);
        let since = std::time::Instant::now();
        let signed = self.signer.group_sign(&tls, self.node_id(), target).await;
        if signed.is_ok() {
            self.metrics.group_signed(1, since);
        }
        signed
    }

    /// The group's signature on `target`, once the group has a signing
    /// key and `group_signing` is on: the second signature on a
    /// certificate, grant, order or proof the cluster key signed at apply.
    /// Grants, orders and proofs asked for at once share a round
    /// ([`SignBatcher`]) and carry their inclusion proof; certificates and
    /// rosters are signed alone. `None` before key generation, and,
    /// logged, when the round failed: a client or holder that pins the
    /// group key then refuses the object and says why; others are
    /// unaffected.
    pub async fn co_sign(&self, target: SignTarget) -> Option<GroupSignature> {
        if !self.config.group_signing {
            return None;
        }
        let signed = if target.batchable() {
            self.sign_batcher.sign(target.clone()).await
        } else {
            self.group_sign(&target)
                .await
                .map(|(signature, _)| signature.into())
                .map_err(Arc::new)
        };
        match signed {
            Ok(signature) => Some(signature),
            Err(e) if matches!(*e, SignError::NoGroupKey) => None,
            Err(e) => {
                tracing::warn!(?target, error = %e, "not signed by the group");
                None
            }
        }
    }

    /// Adds the group's signature to a delete order the cluster key signed
    /// at apply ([`AuthService::co_sign`]).
    async fn co_sign_order(&self, order: &mut Option<vmail_proto::grant::DeleteOrder>) {
        if let Some(o) = order {
            o.group_signature = self
                .co_sign(SignTarget::DeleteOrder { serial: o.serial })
                .await;
        }
    }

    /// The Raft node.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Whether this server is the group's leader, as far as it knows.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader == Some(m.id)
    }

    /// Refuses a write when the data disk is nearly full: the entry goes to
    /// the log and then the state, and a failed log write would stop Raft.
    fn check_space(&self, command_bytes: usize) -> Result<(), AuthError> {
        let need = MIN_FREE_BYTES + 4 * command_bytes as u64;
        let Some(dir) = self.store.path().parent() else {
            return Ok(());
        };
        match nix::sys::statvfs::statvfs(dir) {
            Ok(st) => {
                let free = st.blocks_available() * st.fragment_size();
                if free < need {
                    return Err(AuthError::Store(StoreError::DiskFull(format!(
                        "{free} bytes free on the data disk, and writes need {need}"
                    ))));
                }
                Ok(())
            }
            // Cannot tell: let the write try.
            Err(_) => Ok(()),
        }
    }

    /// Proposes a command and waits until it is committed and applied here.
    /// Commands proposed at the same time share a log entry ([`Batcher`]).
    async fn propose(&self, cmd: Command) -> Result<Reply, AuthError> {
        let size = postcard::to_allocvec(&cmd).map_or(0, |b| b.len());
        self.check_space(size)?;
        match self.batcher.write(cmd, size).await {
            Ok(Reply::Failed(why)) => Err(AuthError::Apply(why)),
            Ok(reply) => Ok(reply),
            Err(WriteError::NotLeader(leader)) => Err(AuthError::NotLeader(leader)),
            Err(WriteError::Unavailable(why)) => Err(AuthError::Unavailable(why)),
            Err(WriteError::Timeout(t)) => Err(AuthError::Unavailable(format!(
                "the write was not confirmed by a majority within {} s, so it may or may not have taken effect",
                t.as_secs()
            ))),
        }
    }

    /// Confirms with a majority that this server still leads and has
    /// applied everything committed before now: a linearizable read point.
    pub async fn linearize(&self) -> Result<(), AuthError> {
        match tokio::time::timeout(READ_TIMEOUT, self.raft.ensure_linearizable()).await {
            Err(_) => Err(AuthError::Unavailable(format!(
                "a majority of the group did not confirm this server's leadership within {} s",
                READ_TIMEOUT.as_secs()
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(AuthError::NotLeader(f.leader_node))
            }
            Ok(Err(e)) => Err(AuthError::Unavailable(e.to_string())),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The keys in force.
    pub fn keys(&self) -> &Arc<ServerKeys> {
        &self.keys
    }

    /// Now, per the injected clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Cancelled when the server begins to shut down; long-lived streams
    /// watch it so that a shutdown never waits on them.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Subscribes to deposit and logout events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs a store operation on the blocking pool.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, AuthError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&store))
            .await
            .expect("store task panicked")?)
    }

    /// Takes one of `user`'s cheap repeatable writes (SetRetention,
    /// Recall) from their rate limit.
    fn charge_write(&self, user: &str) -> Result<(), AuthError> {
        self.writes
            .lock()
            .expect("lock")
            .check(&user.to_owned(), std::time::Instant::now())
            .map_err(|wait| AuthError::RateLimited {
                what: "cheap writes (SetRetention, Recall, policy changes, reports) from this user",
                per_minute: self.config.writes_per_minute_per_user,
                key: "writes_per_minute_per_user",
                retry_after_secs: limits::retry_secs(wait),
            })
    }

    /// Refuses `user`'s grant request from memory while their refused
    /// grants are over `spam.refused_grants_per_minute`: the escalating
    /// friction for a sender who keeps asking after refusals.
    fn check_refused_grants(&self, user: &str) -> Result<(), AuthError> {
        let wait = self
            .refused_grants
            .lock()
            .expect("lock")
            .wait(&user.to_owned(), std::time::Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        Err(AuthError::RateLimited {
            what: "storage grants refused by recipients' policies or your quotas",
            per_minute: self.config.spam.refused_grants_per_minute,
            key: "spam.refused_grants_per_minute",
            retry_after_secs: limits::retry_secs(wait),
        })
    }

    /// Counts one refused grant of `user`'s.
    fn charge_refused_grant(&self, user: &str) {
        let _ = self
            .refused_grants
            .lock()
            .expect("lock")
            .check(&user.to_owned(), std::time::Instant::now());
    }

    /// Takes one registration from the per-address limit of `from` (when
    /// the address is known and not loopback), then from the server-wide
    /// limit. Loopback clients are a reverse proxy on this host, whose one
    /// address stands for all its clients, or local tools and tests: they
    /// count only against the server-wide limit.
    fn charge_registration(&self, from: Option<std::net::IpAddr>) -> Result<(), AuthError> {
        let now = std::time::Instant::now();
        let address = from.map(limits::address_key).filter(|ip| !ip.is_loopback());
        if let Some(ip) = address {
            self.registrations_by_address
                .lock()
                .expect("lock")
                .check(&ip, now)
                .map_err(|wait| AuthError::RateLimited {
                    what: "registrations from this address",
                    per_minute: self.config.registrations_per_minute_per_address,
                    key: "registrations_per_minute_per_address",
                    retry_after_secs: limits::retry_secs(wait),
                })?;
        }
        self.registrations
            .lock()
            .expect("lock")
            .check(&(), now)
            .map_err(|wait| AuthError::RateLimited {
                what: "registrations on this server",
                per_minute: self.config.registrations_per_minute,
                key: "registrations_per_minute",
                retry_after_secs: limits::retry_secs(wait),
            })
    }

    /// Counts a new WatchPending stream of `session`, unless the session
    /// or its user already holds as many as the config allows. The stream
    /// is uncounted when the returned slot is dropped.
    pub fn open_watch(self: &Arc<Self>, session: &Session) -> Result<WatchSlot, AuthError> {
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let opened = self.streams.lock().expect("lock").open(
            &session.username,
            session.token_hash,
            size(self.config.max_watch_streams_per_session),
            size(self.config.max_watch_streams_per_user),
        );
        match opened {
            Ok(()) => Ok(WatchSlot {
                svc: self.clone(),
                user: session.username.clone(),
                token_hash: session.token_hash,
            }),
            Err(cap) => Err(match cap {
                limits::StreamCap::PerSession(n) => AuthError::TooManyStreams {
                    username: session.username.clone(),
                    limit: n as u64,
                    scope: "on this session",
                    key: "max_watch_streams_per_session",
                },
                limits::StreamCap::PerUser(n) => AuthError::TooManyStreams {
                    username: session.username.clone(),
                    limit: n as u64,
                    scope: "over all their sessions",
                    key: "max_watch_streams_per_user",
                },
            }),
        }
    }

    /// How many OPAQUE logins are half-done, in all and for `user`: for
    /// status reporting and tests.
    pub fn logins_in_progress(&self, user: &str) -> (usize, usize) {
        let logins = self.logins.lock().expect("lock");
        (logins.len(), logins.of_user(user))
    }

    /// How many WatchPending streams `user` holds open.
    pub fn watch_streams(&self, user: &str) -> usize {
        self.streams.lock().expect("lock").of_user(user)
    }

    /// Direct access to the store, for status reporting and tests.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

/// One counted WatchPending stream; dropping it uncounts the stream.
pub struct WatchSlot {
    svc: Arc<AuthService>,
    user: String,
    token_hash: [u8; 32],
}

impl fmt::Debug for WatchSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchSlot")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.svc
            .streams
            .lock()
            .expect("lock")
            .close(&self.user, self.token_hash);
    }
}

#[cfg(test)]
mod tests;
