//! The auth server's domain logic: registration, login, certificates,
//! deposits, delivery and acknowledgement. No gRPC types here: the adapter in
//! `grpc.rs` converts to and from these plain types.
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

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::Signature;
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginStartParameters, ServerRegistration,
};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use vmail_proto::cert::{
    MAX_PEER_ID_LEN, ProofPurpose, UserCertificate, identity_proof_bytes, parse_identity_key,
};
use vmail_proto::keys::{DeliveryContext, DepositContext, MasterKey, MasterKeyId, WRAPPED_KEY_LEN};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::{NameError, Recipients, Username};
use vmail_proto::opaque::{CREDENTIAL_NONCE_LEN, Suite, credential_id};
use vmail_proto::random_bytes;

use openraft::error::{CheckIsLeaderError, RaftError};
use prost::Message;
use vmail_proto::pb;

use crate::cluster::batcher::{Batcher, WriteError};
use crate::cluster::{Command, Member, Raft, Reply, seal};
use crate::config::{RegistrationMode, ServerConfig};
use crate::datadir::ServerKeys;
use crate::store::{
    AckOutcome, DepositOutcome, RegisterOutcome, Session, Store, StoreError, Voicemail, VoicemailId,
};

/// Largest locator a deposit may carry: 16 KiB.
pub const MAX_LOCATOR_LEN: usize = 16 * 1024;
/// Shortest client request id, in bytes.
pub const MIN_REQUEST_ID_LEN: usize = 16;
/// Longest client request id, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 64;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 128;
/// Most unfinished logins held in memory at once; more are refused.
pub const MAX_PENDING_LOGINS: usize = 10_000;
/// Users whose login attempts are tracked before finished windows are pruned.
const MAX_TRACKED_USERS: usize = 10_000;
/// Capacity of the new-voicemail broadcast channel.
pub const EVENT_CAPACITY: usize = 1024;
/// How long a write may wait for a majority of the group to commit it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Free space below which the leader refuses writes, so that the Raft log
/// never meets a full disk (a failed log write stops a server's Raft).
pub const MIN_FREE_BYTES: u64 = 1024 * 1024;
/// How long a read may wait for a majority to confirm this server leads.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// A source of the current Unix time, so tests can move time by hand.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in Unix seconds.
    fn now(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        vmail_proto::unix_now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `now`.
    pub fn new(now: u64) -> Self {
        Self(AtomicU64::new(now))
    }

    /// Moves the clock forward by `secs`.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why an auth operation was refused. A refusal changes no durable state; a
/// refused LoginFinish still uses up its login id, and a LoginStart counts
/// towards the lock-out.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A request field is missing or malformed.
    #[error("{field}: {why}")]
    InvalidArgument {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A username is malformed.
    #[error(transparent)]
    Name(#[from] NameError),
    /// No such user.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// A deposit names a recipient who is not registered.
    #[error("unknown recipient {0:?}")]
    UnknownRecipient(String),
    /// The username is taken.
    #[error("user {0:?} already exists; choose another name or log in")]
    UserExists(String),
    /// Registration needs an invite code and none was given.
    #[error("registration on this server needs an invite code (--invite CODE)")]
    InviteRequired,
    /// The invite code is not in the config or was already used.
    #[error("invite code is not valid or was already used")]
    InviteInvalid,
    /// The OPAQUE login did not verify.
    #[error("wrong password for {0:?}")]
    WrongPassword(String),
    /// Too many unsuccessful logins recently.
    #[error("too many unsuccessful logins for {username:?}; try again in {retry_after_secs} s")]
    LockedOut {
        /// The user.
        username: String,
        /// Seconds until the lock lifts.
        retry_after_secs: u64,
    },
    /// The login id is unknown, or its state timed out.
    #[error("login_id is unknown, already used, or older than {0} s; start the login again")]
    LoginExpired(u64),
    /// Too many logins are half-done.
    #[error("the server is handling too many logins at once; retry shortly")]
    Busy,
    /// The identity proof signature does not verify.
    #[error("identity_proof: the signature does not verify with identity_key")]
    BadIdentityProof,
    /// No bearer token was sent.
    #[error("missing session token: log in first (vmail login USER)")]
    NoToken,
    /// The token is unknown or was revoked.
    #[error("session token is not valid (logged out, or never issued): log in again")]
    BadToken,
    /// The session expired.
    #[error("session expired at Unix time {0}: log in again")]
    SessionExpired(u64),
    /// The deposit's wrapped key does not open under the sender's master key.
    #[error(
        "wrapped_key does not open under this session's master key: the client holds a different master key (log in again) or the request was altered"
    )]
    WrapFailed,
    /// A recipient has as many voicemails waiting as the server allows.
    #[error(
        "the inbox of {username:?} is full ({limit} voicemails waiting); try again once they have fetched some"
    )]
    InboxFull {
        /// The recipient.
        username: String,
        /// The configured limit.
        limit: u64,
    },
    /// The request id was used before with different content.
    #[error("request_id was already used for a different deposit; use a fresh request id")]
    RequestIdReused,
    /// The voicemail is not pending for the caller.
    #[error("voicemail {id} is not pending for {username:?}")]
    NotPending {
        /// Voicemail id, hex.
        id: String,
        /// The caller.
        username: String,
    },
    /// This server is not the leader; the client should retry at the leader.
    #[error("{}", not_leader_text(.0.as_ref()))]
    NotLeader(Option<Member>),
    /// The group cannot serve the call now: no majority, or Raft stopped.
    #[error(
        "the auth group cannot serve this right now: {0}. Retry shortly; another server may be the leader"
    )]
    Unavailable(String),
    /// A log entry could not be applied because stored data is corrupt.
    #[error("{0}")]
    Apply(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn not_leader_text(leader: Option<&Member>) -> String {
    match leader {
        Some(m) => format!(
            "this auth server is not the leader; retry at {} ({})",
            m.api_url, m.name
        ),
        None => {
            "this auth server is not the leader and no leader is known yet; retry in a few seconds"
                .to_owned()
        }
    }
}

fn invalid(field: &'static str, why: impl Into<String>) -> AuthError {
    AuthError::InvalidArgument {
        field,
        why: why.into(),
    }
}

/// Round 2 of a registration.
#[derive(Debug, Clone)]
pub struct RegisterFinish {
    /// The new user's name.
    pub username: String,
    /// OPAQUE RegistrationUpload bytes.
    pub registration_upload: Vec<u8>,
    /// ed25519 identity public key.
    pub identity_key: Vec<u8>,
    /// Proof of possession of the identity key.
    pub identity_proof: Vec<u8>,
    /// Invite code; empty for none.
    pub invite_code: String,
    /// The nonce RegisterStart handed out.
    pub credential_nonce: Vec<u8>,
}

/// Round 2 of a login.
#[derive(Debug, Clone)]
pub struct LoginFinish {
    /// From LoginStart.
    pub login_id: Vec<u8>,
    /// OPAQUE CredentialFinalization bytes.
    pub credential_finalization: Vec<u8>,
    /// Identity key to certify.
    pub identity_key: Vec<u8>,
    /// Proof of possession, bound to the login id.
    pub identity_proof: Vec<u8>,
    /// Optional libp2p peer id to bind.
    pub peer_id: Vec<u8>,
}

/// What a successful login yields. `Debug` leaves out the token.
#[derive(Clone)]
pub struct LoginOutcome {
    /// The bearer token; only its hash is stored.
    pub session_token: [u8; 32],
    /// The id of the master key both sides derived.
    pub master_key_id: MasterKeyId,
    /// Session expiry, Unix seconds.
    pub expires_at: u64,
    /// The freshly issued certificate.
    pub certificate: UserCertificate,
}

impl fmt::Debug for LoginOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginOutcome")
            .field("master_key_id", &hex::encode(self.master_key_id))
            .field("expires_at", &self.expires_at)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

/// A deposit request.
#[derive(Debug, Clone)]
pub struct Deposit {
    /// Client-chosen idempotency key.
    pub request_id: Vec<u8>,
    /// Recipient usernames.
    pub recipients: Vec<String>,
    /// Storage locator.
    pub locator: Vec<u8>,
    /// Session key wrapped under the sender's master key.
    pub wrapped_key: Vec<u8>,
    /// Metadata; `expires_at == 0` asks for the default.
    pub metadata: VoicemailMeta,
}

/// A pending voicemail as handed to one recipient.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Voicemail id.
    pub id: VoicemailId,
    /// Sender's certificate at deposit time.
    pub sender_certificate: UserCertificate,
    /// Deposit time, Unix seconds.
    pub deposited_at: u64,
    /// Metadata.
    pub metadata: VoicemailMeta,
    /// Storage locator.
    pub locator: Vec<u8>,
    /// All recipients, canonical order.
    pub recipients: Vec<String>,
    /// Session key wrapped under the recipient session's master key.
    pub wrapped_key: Vec<u8>,
}

/// Something that watchers of pending voicemail care about.
#[derive(Debug, Clone)]
pub enum Event {
    /// A voicemail was deposited for these recipients.
    Deposited {
        /// The voicemail.
        id: VoicemailId,
        /// Its recipients.
        recipients: Arc<Vec<String>>,
    },
    /// A session ended (logout).
    SessionEnded {
        /// Its token hash.
        token_hash: [u8; 32],
    },
}

struct PendingLogin {
    username: Username,
    state: ServerLogin<Suite>,
    started: Instant,
}

#[derive(Default)]
struct Failures {
    count: u32,
    window_start: u64,
}

/// The auth server's domain service.
pub struct AuthService {
    store: Arc<Store>,
    keys: Arc<ServerKeys>,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    raft: Raft,
    batcher: Batcher,
    logins: Mutex<HashMap<[u8; 16], PendingLogin>>,
    failures: Mutex<HashMap<String, Failures>>,
    events: broadcast::Sender<Event>,
    shutdown: CancellationToken,
}

impl fmt::Debug for AuthService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a session token: what the server stores instead of the token.
pub fn token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn verify_proof(
    proof: &[u8],
    vk: &ed25519_dalek::VerifyingKey,
    msg: &[u8],
) -> Result<(), AuthError> {
    let sig: [u8; 64] = proof.try_into().map_err(|_| {
        invalid(
            "identity_proof",
            format!("{} bytes, expected 64", proof.len()),
        )
    })?;
    vk.verify_strict(msg, &Signature::from_bytes(&sig))
        .map_err(|_| AuthError::BadIdentityProof)
}

impl AuthService {
    /// A service over an open store and the Raft node replicating it.
    /// `events` is the channel the state machine reports applied deposits
    /// and logouts on.
    pub fn new(
        store: Arc<Store>,
        keys: Arc<ServerKeys>,
        config: ServerConfig,
        clock: Arc<dyn Clock>,
        raft: Raft,
        events: broadcast::Sender<Event>,
    ) -> Self {
        Self {
            store,
            keys,
            config,
            clock,
            batcher: Batcher::start(raft.clone(), WRITE_TIMEOUT),
            raft,
            logins: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            events,
            shutdown: CancellationToken::new(),
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

    // ---- registration ----

    /// The hash under which an invite code is marked used, or `None` when
    /// registration is open. Refuses a missing or unknown code.
    fn invite_hash(&self, code: &str) -> Result<Option<String>, AuthError> {
        match self.config.registration.mode {
            RegistrationMode::Open => Ok(None),
            RegistrationMode::Invite if code.is_empty() => Err(AuthError::InviteRequired),
            RegistrationMode::Invite
                if !self
                    .config
                    .registration
                    .invite_codes
                    .iter()
                    .any(|c| c == code) =>
            {
                Err(AuthError::InviteInvalid)
            }
            RegistrationMode::Invite => Ok(Some(hex::encode(Sha256::digest(code.as_bytes())))),
        }
    }

    /// OPAQUE registration, round 1. Returns the registration response and
    /// the fresh credential nonce that names this registration's OPRF key.
    pub async fn register_start(
        &self,
        username: &str,
        request: &[u8],
        invite_code: &str,
    ) -> Result<(Vec<u8>, [u8; CREDENTIAL_NONCE_LEN]), AuthError> {
        let name = Username::parse(username)?;
        let request = RegistrationRequest::<Suite>::deserialize(request)
            .map_err(|e| invalid("registration_request", e.to_string()))?;
        let invite = self.invite_hash(invite_code)?;
        self.linearize().await?;
        let n = name.to_string();
        let (exists, invite_used) = self
            .db(move |s| {
                Ok((
                    s.user(&n)?.is_some(),
                    invite.map(|h| s.invite_used(&h)).transpose()?,
                ))
            })
            .await?;
        if exists {
            return Err(AuthError::UserExists(name.to_string()));
        }
        if invite_used == Some(true) {
            return Err(AuthError::InviteInvalid);
        }
        let nonce: [u8; CREDENTIAL_NONCE_LEN] = random_bytes();
        let resp = ServerRegistration::<Suite>::start(
            &self.keys.opaque_setup,
            request,
            &credential_id(&name, &nonce),
        )
        .map_err(|e| invalid("registration_request", e.to_string()))?;
        Ok((resp.message.serialize().to_vec(), nonce))
    }

    /// OPAQUE registration, round 2: creates the user.
    pub async fn register_finish(&self, req: RegisterFinish) -> Result<(), AuthError> {
        let name = Username::parse(&req.username)?;
        let credential_nonce: [u8; CREDENTIAL_NONCE_LEN] =
            req.credential_nonce.as_slice().try_into().map_err(|_| {
                invalid(
                    "credential_nonce",
                    format!(
                        "{} bytes, expected {CREDENTIAL_NONCE_LEN}",
                        req.credential_nonce.len()
                    ),
                )
            })?;
        let upload = RegistrationUpload::<Suite>::deserialize(&req.registration_upload)
            .map_err(|e| invalid("registration_upload", e.to_string()))?;
        let identity_key =
            parse_identity_key(&req.identity_key).map_err(|why| invalid("identity_key", why))?;
        let context: [u8; 32] = Sha256::digest(&req.registration_upload).into();
        verify_proof(
            &req.identity_proof,
            &identity_key,
            &identity_proof_bytes(ProofPurpose::Register, &name, &context, &identity_key, &[]),
        )?;
        let invite_hash = self.invite_hash(&req.invite_code)?;
        let password_file = ServerRegistration::<Suite>::finish(upload)
            .serialize()
            .to_vec();
        let reply = self
            .propose(Command::Register {
                password_file: seal(
                    &self.keys.data_key,
                    "password-file",
                    name.as_str().as_bytes(),
                    &password_file,
                ),
                username: name.to_string(),
                invite_hash,
                credential_nonce,
                identity_key: identity_key.to_bytes(),
                now: self.now(),
                cert_ttl: self.config.certificate_ttl_secs,
            })
            .await?;
        let Reply::Registered(outcome) = reply else {
            return Err(AuthError::Apply(format!(
                "unexpected reply {reply:?} to a registration"
            )));
        };
        match outcome {
            RegisterOutcome::Created => {
                tracing::info!(user = %name, "registered");
                Ok(())
            }
            RegisterOutcome::UserExists => Err(AuthError::UserExists(name.to_string())),
            RegisterOutcome::InviteUsed => Err(AuthError::InviteInvalid),
        }
    }

    // ---- login ----

    /// Counts a login attempt against `name`'s lock-out, or refuses it if
    /// the user is locked out. Check and count happen under one lock, so
    /// concurrent LoginStarts cannot slip past the limit. A wrong password
    /// is only detected by the client, which then never sends round 2, so
    /// attempts are counted when they start; a successful login clears them.
    fn begin_attempt(&self, name: &str) -> Result<(), AuthError> {
        let now = self.now();
        let window = self.config.lockout_window_secs;
        let mut failures = self.failures.lock().expect("lock");
        if failures.len() >= MAX_TRACKED_USERS {
            failures.retain(|_, f| now < f.window_start + window);
        }
        let f = failures.entry(name.to_owned()).or_default();
        if now >= f.window_start + window {
            *f = Failures {
                count: 0,
                window_start: now,
            };
        }
        if f.count >= self.config.max_failed_logins {
            return Err(AuthError::LockedOut {
                username: name.to_owned(),
                retry_after_secs: f.window_start + window - now,
            });
        }
        f.count += 1;
        Ok(())
    }

    /// Takes back an attempt that the server refused before it could be a guess.
    fn cancel_attempt(&self, name: &str) {
        if let Some(f) = self.failures.lock().expect("lock").get_mut(name) {
            f.count = f.count.saturating_sub(1);
        }
    }

    /// OPAQUE login, round 1. Returns the login id and the credential response.
    pub async fn login_start(
        &self,
        username: &str,
        request: &[u8],
    ) -> Result<([u8; 16], Vec<u8>), AuthError> {
        let name = Username::parse(username)?;
        let request = CredentialRequest::<Suite>::deserialize(request)
            .map_err(|e| invalid("credential_request", e.to_string()))?;
        self.linearize().await?;
        let n = name.to_string();
        let user = self
            .db(move |s| s.user(&n))
            .await?
            .ok_or_else(|| AuthError::UnknownUser(name.to_string()))?;
        let password_file =
            ServerRegistration::<Suite>::deserialize(&user.password_file).map_err(|e| {
                StoreError::Corrupt {
                    table: "users",
                    key: name.to_string(),
                    why: format!("password file: {e}"),
                }
            })?;
        self.begin_attempt(name.as_str())?;
        let start = match ServerLogin::start(
            &mut rand::rngs::OsRng,
            &self.keys.opaque_setup,
            Some(password_file),
            request,
            &credential_id(&name, &user.credential_nonce),
            ServerLoginStartParameters::default(),
        ) {
            Ok(start) => start,
            Err(e) => {
                self.cancel_attempt(name.as_str());
                return Err(invalid("credential_request", e.to_string()));
            }
        };
        let login_id: [u8; 16] = random_bytes();
        let timeout = Duration::from_secs(self.config.login_timeout_secs);
        let mut logins = self.logins.lock().expect("lock");
        logins.retain(|_, l| l.started.elapsed() < timeout);
        if logins.len() >= MAX_PENDING_LOGINS {
            drop(logins);
            self.cancel_attempt(name.as_str());
            return Err(AuthError::Busy);
        }
        logins.insert(
            login_id,
            PendingLogin {
                username: name,
                state: start.state,
                started: Instant::now(),
            },
        );
        Ok((login_id, start.message.serialize().to_vec()))
    }

    /// OPAQUE login, round 2: verifies the password proof, negotiates the
    /// master key, opens a session and issues a certificate.
    pub async fn login_finish(&self, req: LoginFinish) -> Result<LoginOutcome, AuthError> {
        let login_id: [u8; 16] = req.login_id.as_slice().try_into().map_err(|_| {
            invalid(
                "login_id",
                format!("{} bytes, expected 16", req.login_id.len()),
            )
        })?;
        let timeout = self.config.login_timeout_secs;
        let pending = self
            .logins
            .lock()
            .expect("lock")
            .remove(&login_id)
            .filter(|l| l.started.elapsed() < Duration::from_secs(timeout))
            .ok_or(AuthError::LoginExpired(timeout))?;
        let name = pending.username;
        let finalization =
            CredentialFinalization::<Suite>::deserialize(&req.credential_finalization)
                .map_err(|e| invalid("credential_finalization", e.to_string()))?;
        let finished = match pending.state.finish(finalization) {
            Ok(f) => f,
            Err(_) => {
                tracing::info!(user = %name, "login failed: wrong password");
                return Err(AuthError::WrongPassword(name.to_string()));
            }
        };
        let identity_key =
            parse_identity_key(&req.identity_key).map_err(|why| invalid("identity_key", why))?;
        if req.peer_id.len() > MAX_PEER_ID_LEN {
            return Err(invalid(
                "peer_id",
                format!("{} bytes, at most {MAX_PEER_ID_LEN}", req.peer_id.len()),
            ));
        }
        verify_proof(
            &req.identity_proof,
            &identity_key,
            &identity_proof_bytes(
                ProofPurpose::Login,
                &name,
                &login_id,
                &identity_key,
                &req.peer_id,
            ),
        )?;
        self.failures.lock().expect("lock").remove(name.as_str());

        let master_key = MasterKey::from_opaque_session_key(&finished.session_key);
        let token: [u8; 32] = random_bytes();
        let hash = token_hash(&token);
        let now = self.now();
        let session_ttl = self.config.session_ttl_secs;
        let reply = self
            .propose(Command::BeginSession {
                username: name.to_string(),
                token_hash: hash,
                master_key: seal(
                    &self.keys.data_key,
                    "master-key",
                    &hash,
                    master_key.as_bytes(),
                ),
                master_key_id: master_key.id(),
                identity_key: identity_key.to_bytes(),
                peer_id: req.peer_id,
                now,
                session_ttl,
                cert_ttl: self.config.certificate_ttl_secs,
            })
            .await?;
        let Reply::SessionBegun(cert) = reply else {
            return Err(AuthError::Apply(format!(
                "unexpected reply {reply:?} to a login"
            )));
        };
        let certificate = pb::UserCertificate::decode(cert.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|c| UserCertificate::try_from(c).map_err(|e| e.to_string()))
            .map_err(|e| {
                AuthError::Apply(format!("the issued certificate does not decode: {e}"))
            })?;
        let session = Session {
            token_hash: hash,
            username: name.to_string(),
            master_key_id: master_key.id(),
            master_key,
            created_at: now,
            expires_at: now + session_ttl,
        };
        tracing::info!(user = %session.username, serial = certificate.serial, "logged in");
        Ok(LoginOutcome {
            session_token: token,
            master_key_id: session.master_key_id,
            expires_at: session.expires_at,
            certificate,
        })
    }

    /// The current certificate of a user.
    pub async fn certificate(&self, username: &str) -> Result<UserCertificate, AuthError> {
        let name = Username::parse(username)?;
        self.linearize().await?;
        let n = name.to_string();
        self.db(move |s| s.user(&n))
            .await?
            .map(|u| u.certificate)
            .ok_or_else(|| AuthError::UnknownUser(name.to_string()))
    }

    // ---- sessions ----

    /// Resolves a bearer token to a live session.
    pub async fn authenticate(&self, token: &[u8]) -> Result<Session, AuthError> {
        self.resolve_token(token, true).await
    }

    /// Resolves a bearer token for a deposit, which then writes through the
    /// log. The leader reads its own state, without the read round of
    /// [`Self::authenticate`]: the deposit's log entry carries the token
    /// hash and applies only while that session is live, in log order. A
    /// miss may be state not yet applied, so it falls back to a current read.
    pub async fn authenticate_for_write(&self, token: &[u8]) -> Result<Session, AuthError> {
        if self.is_leader()
            && let Ok(session) = self.resolve_token(token, false).await
        {
            return Ok(session);
        }
        self.authenticate(token).await
    }

    /// The live session of `token`, from state that is current (a
    /// linearizable read first) or this server's own.
    async fn resolve_token(&self, token: &[u8], current: bool) -> Result<Session, AuthError> {
        if token.is_empty() {
            return Err(AuthError::NoToken);
        }
        let hash = token_hash(token);
        if current {
            self.linearize().await?;
        }
        let session = self
            .db(move |s| s.session(&hash))
            .await?
            .ok_or(AuthError::BadToken)?;
        if self.now() >= session.expires_at {
            return Err(AuthError::SessionExpired(session.expires_at));
        }
        Ok(session)
    }

    /// Revokes a session: its token and its master key are deleted.
    pub async fn logout(&self, session: &Session) -> Result<(), AuthError> {
        self.propose(Command::EndSession {
            token_hash: session.token_hash,
        })
        .await?;
        tracing::info!(user = %session.username, "logged out");
        Ok(())
    }

    // ---- voicemail ----

    fn validate_deposit(&self, d: &Deposit) -> Result<(Recipients, VoicemailMeta), AuthError> {
        if !(MIN_REQUEST_ID_LEN..=MAX_REQUEST_ID_LEN).contains(&d.request_id.len()) {
            return Err(invalid(
                "request_id",
                format!(
                    "{} bytes, expected {MIN_REQUEST_ID_LEN} to {MAX_REQUEST_ID_LEN}",
                    d.request_id.len()
                ),
            ));
        }
        let recipients =
            Recipients::parse(&d.recipients).map_err(|e| invalid("recipients", e.to_string()))?;
        if d.wrapped_key.len() != WRAPPED_KEY_LEN {
            return Err(invalid(
                "wrapped_key",
                format!("{} bytes, expected {WRAPPED_KEY_LEN}", d.wrapped_key.len()),
            ));
        }
        if d.locator.len() > MAX_LOCATOR_LEN {
            return Err(invalid(
                "locator",
                format!(
                    "{} bytes, at most {MAX_LOCATOR_LEN} allowed",
                    d.locator.len()
                ),
            ));
        }
        if d.metadata.content_type.len() > MAX_CONTENT_TYPE_LEN {
            return Err(invalid(
                "metadata.content_type",
                format!(
                    "{} bytes, at most {MAX_CONTENT_TYPE_LEN}",
                    d.metadata.content_type.len()
                ),
            ));
        }
        let now = self.now();
        let max = now + self.config.max_voicemail_ttl_secs;
        let expires_at = match d.metadata.expires_at {
            0 => now + self.config.default_voicemail_ttl_secs,
            t if t <= now => {
                return Err(invalid(
                    "metadata.expires_at",
                    format!("{t} is in the past (now {now})"),
                ));
            }
            t if t > max => {
                return Err(invalid(
                    "metadata.expires_at",
                    format!(
                        "{t} is more than {} s ahead; the limit is {max}",
                        self.config.max_voicemail_ttl_secs
                    ),
                ));
            }
            t => t,
        };
        Ok((
            recipients,
            VoicemailMeta {
                expires_at,
                ..d.metadata.clone()
            },
        ))
    }

    /// Deposits a voicemail's session key and locator for its recipients
    /// (paper §3.3 steps 2-3). Returns the voicemail id and whether this was
    /// a replay of an earlier request.
    pub async fn deposit(
        &self,
        session: &Session,
        d: Deposit,
    ) -> Result<(VoicemailId, bool), AuthError> {
        let (recipients, metadata) = self.validate_deposit(&d)?;
        let ctx = DepositContext {
            request_id: &d.request_id,
            recipients: &recipients,
            locator: &d.locator,
        };
        let session_key = session
            .master_key
            .unwrap_deposit(&d.wrapped_key, &ctx)
            .map_err(|_| AuthError::WrapFailed)?;
        // What makes two requests "the same deposit": a retry re-wraps the
        // key under a fresh nonce, so the digest covers the unwrapped key.
        let mut digest = Sha256::new();
        digest.update(b"vmail/v1/deposit-digest");
        digest.update(recipients.canonical_bytes());
        digest.update(vmail_proto::keys::locator_hash(&d.locator));
        digest.update(session_key.as_bytes());
        digest.update(postcard::to_allocvec(&d.metadata).expect("encodes"));
        let digest: [u8; 32] = digest.finalize().into();

        let id: VoicemailId = random_bytes();
        let n_recipients = recipients.iter().count();
        let reply = self
            .propose(Command::Deposit {
                token_hash: session.token_hash,
                request_id: d.request_id,
                digest,
                id,
                sender: session.username.clone(),
                recipients: recipients.to_strings(),
                locator: d.locator,
                metadata,
                deposited_at: self.now(),
                session_key: seal(
                    &self.keys.data_key,
                    "session-key",
                    &id,
                    session_key.as_bytes(),
                ),
                max_pending: self.config.max_pending_per_user,
            })
            .await?;
        let outcome = match reply {
            Reply::Deposited(outcome) => outcome,
            Reply::SessionGone => return Err(AuthError::BadToken),
            other => {
                return Err(AuthError::Apply(format!(
                    "unexpected reply {other:?} to a deposit"
                )));
            }
        };
        match outcome {
            DepositOutcome::Stored(id) => {
                tracing::info!(sender = %session.username, id = %hex::encode(id), n = n_recipients, "deposit");
                Ok((id, false))
            }
            DepositOutcome::Replayed(id) => Ok((id, true)),
            DepositOutcome::RequestIdReused => Err(AuthError::RequestIdReused),
            DepositOutcome::UnknownRecipient(r) => Err(AuthError::UnknownRecipient(r)),
            DepositOutcome::InboxFull(r) => Err(AuthError::InboxFull {
                username: r,
                limit: self.config.max_pending_per_user,
            }),
        }
    }

    fn deliver(&self, session: &Session, vm: Voicemail) -> Delivery {
        let wrapped_key = session.master_key.wrap_delivery(
            &vm.session_key,
            &DeliveryContext {
                voicemail_id: &vm.id,
                recipients: &vm.recipients,
                locator: &vm.locator,
            },
        );
        Delivery {
            id: vm.id,
            sender_certificate: vm.sender_certificate,
            deposited_at: vm.deposited_at,
            metadata: vm.metadata,
            recipients: vm.recipients.to_strings(),
            locator: vm.locator,
            wrapped_key,
        }
    }

    /// The voicemails waiting for the session's user, each session key
    /// re-wrapped under this session's master key (retrieval step 2).
    pub async fn list_pending(&self, session: &Session) -> Result<Vec<Delivery>, AuthError> {
        let user = session.username.clone();
        let now = self.now();
        let vms = self.db(move |s| s.pending(&user, now)).await?;
        Ok(vms
            .into_iter()
            .map(|vm| self.deliver(session, vm))
            .collect())
    }

    /// One voicemail if it is pending for the session's user and not expired.
    pub async fn pending_one(
        &self,
        session: &Session,
        id: VoicemailId,
    ) -> Result<Option<Delivery>, AuthError> {
        let user = session.username.clone();
        let now = self.now();
        let vm = self.db(move |s| s.pending_one(&user, &id)).await?;
        Ok(vm
            .filter(|vm| vm.metadata.expires_at > now)
            .map(|vm| self.deliver(session, vm)))
    }

    /// Erases the caller's grant; returns whether the session key is now gone.
    pub async fn ack(&self, session: &Session, id: &[u8]) -> Result<bool, AuthError> {
        let id: VoicemailId = id
            .try_into()
            .map_err(|_| invalid("voicemail_id", format!("{} bytes, expected 16", id.len())))?;
        let user = session.username.clone();
        let now = self.now();
        let reply = self
            .propose(Command::Ack {
                recipient: user,
                id,
                now,
            })
            .await?;
        let Reply::Acked(outcome) = reply else {
            return Err(AuthError::Apply(format!(
                "unexpected reply {reply:?} to an ack"
            )));
        };
        match outcome {
            AckOutcome::NotPending => Err(AuthError::NotPending {
                id: hex::encode(id),
                username: session.username.clone(),
            }),
            AckOutcome::Acked { key_erased } => {
                tracing::info!(user = %session.username, id = %hex::encode(id), key_erased, "ack");
                Ok(key_erased)
            }
        }
    }

    /// Drops expired sessions and voicemails.
    pub async fn purge_expired(&self) -> Result<(usize, usize), AuthError> {
        let reply = self.propose(Command::Purge { now: self.now() }).await?;
        match reply {
            Reply::Purged(s, v) => Ok((s, v)),
            other => Err(AuthError::Apply(format!(
                "unexpected reply {other:?} to a purge"
            ))),
        }
    }

    /// Direct access to the store, for status reporting and tests.
    pub fn store(&self) -> &Store {
        &self.store
    }
}
