//! Login: OPAQUE's two rounds, the per-user lock-out, sessions (bearer
//! tokens and their master keys) and the certificates issued at login.

use std::time::{Duration, Instant};

use opaque_ke::{
    CredentialFinalization, CredentialRequest, ServerLogin, ServerLoginStartParameters,
    ServerRegistration,
};
use vmail_proto::cert::{
    MAX_PEER_ID_LEN, ProofPurpose, UserCertificate, identity_proof_bytes, parse_identity_key,
};
use vmail_proto::keys::{MasterKey, MasterKeyId};
use vmail_proto::names::Username;
use vmail_proto::opaque::{Suite, credential_id};
use vmail_proto::random_bytes;

use super::AuthService;
use super::error::{AuthError, invalid};
use super::limits::{LoginCaps, LoginTable};
use super::register::verify_proof;
use crate::cluster::{Command, Reply, seal};
use crate::store::{Session, StoreError, token_hash};

/// Users whose login attempts are tracked before finished windows are pruned.
const MAX_TRACKED_USERS: usize = 10_000;

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
    /// The session's inbox key: an X25519 public key, 32 bytes. Servers
    /// reseal their session-key shares to it (OpenShare).
    pub inbox_key: Vec<u8>,
    /// The user's account-key signature over the session statement.
    pub account_proof: Vec<u8>,
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

impl std::fmt::Debug for LoginOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginOutcome")
            .field("master_key_id", &hex::encode(self.master_key_id))
            .field("expires_at", &self.expires_at)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

/// The unfinished logins: OPAQUE server states by login id.
pub(super) type PendingLogins = LoginTable<ServerLogin<Suite>>;

/// The caps of the unfinished-login table, from the config.
pub(super) fn login_caps(config: &crate::config::ServerConfig) -> LoginCaps {
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    LoginCaps {
        overall: size(config.max_logins_in_progress),
        per_user: size(config.max_logins_in_progress_per_user),
        timeout: Duration::from_secs(config.login_timeout_secs),
    }
}

#[derive(Default)]
pub(super) struct Failures {
    count: u32,
    window_start: u64,
    /// Whether this window's lock-out was counted in the metrics.
    locked: bool,
}

impl AuthService {
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
                locked: false,
            };
        }
        if f.count >= self.config.max_failed_logins {
            if !f.locked {
                f.locked = true;
                self.metrics.locked_out();
            }
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
        let (evicted, abandoned) = {
            let mut logins = self.logins.lock().expect("lock");
            let evicted = logins.insert(login_id, name.as_str(), start.state, Instant::now());
            (evicted, logins.take_abandoned())
        };
        self.metrics.logins_abandoned(abandoned);
        if let Some(e) = evicted {
            tracing::debug!(user = %e.user, "an unfinished login made room for a newer one");
        }
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
        // Checked before the login is taken, so a client that sends a bad
        // one can fix it and finish the same login.
        let inbox_key = crate::cluster::x25519_public(&req.inbox_key).map_err(|why| {
            invalid(
                "inbox_key",
                format!(
                    "{why}: every login must carry the session's inbox key, which servers reseal key shares to; update the client"
                ),
            )
        })?;
        let timeout = self.config.login_timeout_secs;
        let (taken, abandoned) = {
            let mut logins = self.logins.lock().expect("lock");
            let taken = logins.take(&login_id, Instant::now());
            (taken, logins.take_abandoned())
        };
        self.metrics.logins_abandoned(abandoned);
        let (name, state) = taken.ok_or(AuthError::LoginExpired(timeout))?;
        let name = Username::parse(&name)?;
        let finalization =
            CredentialFinalization::<Suite>::deserialize(&req.credential_finalization)
                .map_err(|e| invalid("credential_finalization", e.to_string()))?;
        let finished = match state.finish(finalization) {
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
        // The leader's own check, for a clear error; every server checks
        // again when it applies the session.
        let n = name.to_string();
        let registered = self
            .db(move |s| s.user(&n))
            .await?
            .ok_or_else(|| AuthError::UnknownUser(name.to_string()))?;
        vmail_proto::account::SessionStatement {
            username: &name,
            login_id: &login_id,
            identity_key: identity_key.as_bytes(),
            peer_id: &req.peer_id,
            inbox_key: &inbox_key,
        }
        .verify(&registered.account_key, &req.account_proof)?;
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
                inbox_key,
                login_id,
                account_proof: req.account_proof,
                now,
                session_ttl,
                cert_ttl: self.config.certificate_ttl_secs,
            })
            .await?;
        if let Reply::SessionUnsigned(why) = reply {
            return Err(AuthError::Account(why));
        }
        let Reply::SessionBegun(mut certificate) = reply else {
            return Err(AuthError::Apply(format!(
                "unexpected reply {reply:?} to a login"
            )));
        };
        self.certify_in_group(&mut certificate).await;
        let session = Session {
            token_hash: hash,
            username: name.to_string(),
            master_key_id: master_key.id(),
            master_key,
            created_at: now,
            expires_at: now + session_ttl,
            inbox_key,
        };
        tracing::info!(user = %session.username, serial = certificate.serial, "logged in");
        Ok(LoginOutcome {
            session_token: token,
            master_key_id: session.master_key_id,
            expires_at: session.expires_at,
            certificate: *certificate,
        })
    }

    /// Once the group has a signing key: has t servers sign `cert` (the
    /// user's current certificate, just applied) and records the group
    /// signature in the log, so that the certificate others fetch and the
    /// one a deposit records carry it too. A failure is logged and leaves
    /// the certificate without one: a client that pins the group key then
    /// refuses it with the reason, and others are unaffected.
    async fn certify_in_group(&self, cert: &mut UserCertificate) {
        let target = super::SignTarget::Certificate {
            username: cert.username.to_string(),
            serial: cert.serial,
        };
        let Some(signature) = self.co_sign(target).await.map(|g| g.signature) else {
            return;
        };
        let recorded = self
            .propose(Command::CertifyGroup {
                username: cert.username.to_string(),
                serial: cert.serial,
                signature: signature.to_bytes().to_vec(),
            })
            .await;
        match recorded {
            Ok(Reply::GroupCertified(None)) => cert.group_signature = Some(signature),
            Ok(Reply::GroupCertified(Some(why))) => {
                tracing::warn!(user = %cert.username, serial = cert.serial, "the group signature was refused at apply: {why}");
            }
            Ok(other) => tracing::warn!("unexpected reply {other:?} to CertifyGroup"),
            Err(e) => {
                tracing::warn!(user = %cert.username, serial = cert.serial, error = %e, "the group signature was not recorded");
            }
        }
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

    /// Resolves a bearer token from this server's own applied state, with
    /// no read round: for OpenShare, which every server answers alone. A
    /// session this server has not applied yet is refused as unknown.
    pub async fn authenticate_local(&self, token: &[u8]) -> Result<Session, AuthError> {
        self.resolve_token(token, false).await
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
}
