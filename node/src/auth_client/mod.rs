//! The client side of `vmail.auth.v1`: OPAQUE registration and login, the
//! master key, certificate checks, deposits and pending voicemail.
//!
//! The client knows a list of auth servers. A call that reaches a follower
//! comes back UNAVAILABLE naming the leader (`vmail-leader`), and the client
//! retries there; a call that finds its server dead moves on to the next
//! endpoint. Retries are safe: a deposit carries its request id, so a retry
//! after a failover never makes a second voicemail.
//!
//! Certificates and session keys a caller gets back have been verified:
//! certificates against the cluster key, session keys by their AES-GCM wrap.
//! The raw items of [`AuthClient::watch_pending`] are checked by
//! [`AuthClient::open_pending`]. The rest of the program
//! (CLI, demo, later the peer daemon) talks to the auth servers only through
//! [`AuthClient`].

use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use vmail_proto::cert::{CertError, ProofPurpose, UserCertificate, identity_proof_bytes};
use vmail_proto::keys::{DeliveryContext, DepositContext, MasterKey, MasterKeyId, SecretKey};
pub use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::{NameError, Recipients, Username};
use vmail_proto::opaque::Suite;
use vmail_proto::pb::{self, auth_client};

/// How long to wait for a TCP and TLS connection to one auth server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Clock difference tolerated between this machine and the auth servers
/// when checking a certificate's validity window.
pub const CLOCK_SKEW_SECS: u64 = 300;
/// Largest message the client accepts: a full inbox of 3000 voicemails with
/// 16 KiB locators fits.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long one call may take before the client gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a call keeps retrying other auth servers while the group fails
/// over (a new leader is elected within a few seconds).
pub const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);
/// Pause between retries when no server named the leader.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Metadata key of the leader's public URL in an UNAVAILABLE answer.
pub const LEADER_METADATA: &str = "vmail-leader";

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No configured auth server could be reached.
    #[error(
        "cannot reach any auth server ({endpoints}): {why}. Is vmail-auth running, and are --auth and --ca right?"
    )]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// Why each endpoint failed.
        why: String,
    },
    /// The endpoint URL is malformed.
    #[error("auth endpoint {0:?} is not a valid https:// URL")]
    BadEndpoint(String),
    /// The password did not open the OPAQUE envelope.
    #[error("wrong password for {0:?}")]
    WrongPassword(String),
    /// A name is malformed.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A certificate did not verify.
    #[error("certificate check failed: {0}")]
    Certificate(#[from] CertError),
    /// The server answered something that does not fit the protocol.
    #[error("the auth server broke the protocol: {0}")]
    Protocol(String),
    /// The server refused the call; its message says why.
    #[error("{}", .0.message())]
    Server(Status),
}

impl ClientError {
    /// The gRPC code, when the server refused the call.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Server(s) => Some(s.code()),
            _ => None,
        }
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        ClientError::Server(s)
    }
}

fn protocol(what: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(what.to_string())
}

/// Where and how to reach the auth servers.
#[derive(Debug, Clone)]
pub struct AuthTarget {
    /// Endpoint URLs: all are tried at once, and the first to answer is used.
    pub endpoints: Vec<String>,
    /// PEM of the cluster CA.
    pub ca_pem: Vec<u8>,
    /// The cluster public key that signs user certificates.
    pub cluster_key: VerifyingKey,
}

/// What a login yields to the client. `Debug` leaves out the token.
#[derive(Clone)]
pub struct LoginSession {
    /// The user.
    pub username: Username,
    /// Bearer token for authenticated calls.
    pub token: [u8; 32],
    /// The master key both sides derived; it never crossed the wire.
    pub master_key: MasterKey,
    /// Its id, as confirmed by the server.
    pub master_key_id: MasterKeyId,
    /// Session expiry, Unix seconds.
    pub expires_at: u64,
    /// The certificate the server issued for the identity key.
    pub certificate: UserCertificate,
}

impl std::fmt::Debug for LoginSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginSession")
            .field("username", &self.username)
            .field("master_key_id", &hex::encode(self.master_key_id))
            .field("expires_at", &self.expires_at)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

/// The server's view of a session.
#[derive(Debug, Clone)]
pub struct WhoAmI {
    /// The session's user.
    pub username: Username,
    /// The id of the session's master key.
    pub master_key_id: MasterKeyId,
    /// Session expiry, Unix seconds.
    pub expires_at: u64,
    /// The user's current certificate, verified against the cluster key.
    pub certificate: UserCertificate,
}

/// A deposit to make.
#[derive(Debug, Clone)]
pub struct NewDeposit {
    /// Idempotency key: reuse it to retry the same deposit.
    pub request_id: [u8; 16],
    /// Canonical recipients.
    pub recipients: Recipients,
    /// Storage locator.
    pub locator: Vec<u8>,
    /// The session key the voicemail is encrypted with.
    pub session_key: SecretKey,
    /// Metadata.
    pub meta: VoicemailMeta,
}

impl NewDeposit {
    /// The session key wrapped under `master_key` and bound to this
    /// deposit's request id, recipients and locator (docs/PROTOCOL.md §3.2).
    pub fn wrap_key(&self, master_key: &MasterKey) -> Vec<u8> {
        master_key.wrap_deposit(
            &self.session_key,
            &DepositContext {
                request_id: &self.request_id,
                recipients: &self.recipients,
                locator: &self.locator,
            },
        )
    }
}

/// The server's receipt for a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepositReceipt {
    /// The voicemail id.
    pub voicemail_id: [u8; 16],
    /// Whether this answered a retry of an earlier request.
    pub replayed: bool,
}

/// A voicemail waiting for the caller, with its session key unwrapped.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Voicemail id.
    pub id: [u8; 16],
    /// The sender's certificate, checked against the cluster key and valid
    /// at deposit time.
    pub sender: UserCertificate,
    /// Deposit time, Unix seconds.
    pub deposited_at: u64,
    /// Metadata.
    pub meta: VoicemailMeta,
    /// Storage locator.
    pub locator: Vec<u8>,
    /// All recipients.
    pub recipients: Recipients,
    /// The session key.
    pub session_key: SecretKey,
}

/// A connection to the auth servers. `Debug` leaves out the token.
#[derive(Clone)]
pub struct AuthClient {
    rpc: auth_client::AuthClient<Channel>,
    cluster_key: VerifyingKey,
    ca_pem: Vec<u8>,
    /// The configured endpoints, then leaders learnt from redirects.
    endpoints: Vec<String>,
    endpoint: String,
    token: Option<[u8; 32]>,
}

impl std::fmt::Debug for AuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthClient")
            .field("endpoint", &self.endpoint)
            .field("logged_in", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

fn endpoint(url: &str, ca_pem: &[u8]) -> Result<Endpoint, ClientError> {
    Endpoint::from_shared(url.to_owned())
        .map_err(|_| ClientError::BadEndpoint(url.to_owned()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))
        .map_err(|e| ClientError::BadEndpoint(format!("{url}: {e}")))
}

fn rpc_client(ch: Channel) -> auth_client::AuthClient<Channel> {
    auth_client::AuthClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// A request carrying the bearer token.
fn bearer<T>(token: [u8; 32], msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", hex::encode(token))
            .parse()
            .expect("hex is a valid header value"),
    );
    req
}

/// The outcome of [`AuthClient::call`]: the answer, and whether an earlier
/// attempt may already have taken effect.
struct Answer<T> {
    result: Result<T, Status>,
    retried: bool,
}

impl AuthClient {
    /// Connects to every endpoint of `target` at once and keeps the first
    /// that answers, so a dead server costs no time while another is up.
    /// The others are kept for failover.
    pub async fn connect(target: &AuthTarget) -> Result<Self, ClientError> {
        use futures::StreamExt as _;
        vmail_proto::tls::install_crypto_provider();
        let mut attempts = futures::stream::FuturesUnordered::new();
        for url in &target.endpoints {
            let endpoint = endpoint(url, &target.ca_pem)?;
            attempts.push(async move { (url, endpoint.connect().await) });
        }
        let mut failures = Vec::new();
        while let Some((url, result)) = attempts.next().await {
            match result {
                Ok(ch) => {
                    return Ok(Self {
                        rpc: rpc_client(ch),
                        cluster_key: target.cluster_key,
                        ca_pem: target.ca_pem.clone(),
                        endpoints: target.endpoints.clone(),
                        endpoint: url.clone(),
                        token: None,
                    });
                }
                Err(e) => failures.push(format!("{url}: {}", error_chain(&e))),
            }
        }
        Err(ClientError::Unreachable {
            endpoints: target.endpoints.join(", "),
            why: if failures.is_empty() {
                "no endpoint configured".into()
            } else {
                failures.join("; ")
            },
        })
    }

    /// The endpoint this client is talking to now.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Points the client at `url`; the connection is made on first use.
    fn switch_to(&mut self, url: &str) -> Result<(), ClientError> {
        if !self.endpoints.iter().any(|e| e == url) {
            self.endpoints.push(url.to_owned());
        }
        self.rpc = rpc_client(endpoint(url, &self.ca_pem)?.connect_lazy());
        self.endpoint = url.to_owned();
        Ok(())
    }

    /// Runs one RPC, following leader redirects and moving on from dead
    /// servers until [`FAILOVER_DEADLINE`]. `f` must build a fresh request
    /// each time; every retry sends the same content.
    async fn call<T, F, Fut>(&mut self, f: F) -> Answer<T>
    where
        F: Fn(auth_client::AuthClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + FAILOVER_DEADLINE;
        let mut retried = false;
        loop {
            let status = match f(self.rpc.clone()).await {
                Ok(r) => {
                    return Answer {
                        result: Ok(r.into_inner()),
                        retried,
                    };
                }
                Err(s) => s,
            };
            if status.code() != Code::Unavailable || tokio::time::Instant::now() >= deadline {
                return Answer {
                    result: Err(status),
                    retried,
                };
            }
            retried = true;
            let leader = status
                .metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let next = match leader {
                Some(url) if url != self.endpoint => url,
                _ => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    let at = self
                        .endpoints
                        .iter()
                        .position(|e| *e == self.endpoint)
                        .map_or(0, |i| i + 1);
                    self.endpoints[at % self.endpoints.len()].clone()
                }
            };
            tracing::debug!(from = %self.endpoint, to = %next, why = %status.message(), "retrying at another auth server");
            if let Err(e) = self.switch_to(&next) {
                return Answer {
                    result: Err(Status::unavailable(e.to_string())),
                    retried,
                };
            }
        }
    }

    fn require_token(&self) -> Result<[u8; 32], ClientError> {
        self.token.ok_or_else(|| {
            ClientError::Server(Status::unauthenticated(
                "not logged in: run `vmail login USER` first",
            ))
        })
    }

    /// Uses `token` for authenticated calls.
    pub fn set_token(&mut self, token: [u8; 32]) {
        self.token = Some(token);
    }

    /// Registers `username` with OPAQUE and uploads the identity key.
    pub async fn register(
        &mut self,
        username: &str,
        password: &[u8],
        identity: &SigningKey,
        invite_code: Option<&str>,
    ) -> Result<(), ClientError> {
        let name = Username::parse(username)?;
        let mut rng = rand::rngs::OsRng;
        let start = ClientRegistration::<Suite>::start(&mut rng, password).map_err(protocol)?;
        let req = pb::RegisterStartRequest {
            username: name.to_string(),
            registration_request: start.message.serialize().to_vec(),
            invite_code: invite_code.unwrap_or_default().to_owned(),
        };
        let resp = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.register_start(req).await }
            })
            .await
            .result?;
        let response = RegistrationResponse::<Suite>::deserialize(&resp.registration_response)
            .map_err(protocol)?;
        let finish = start
            .state
            .finish(
                &mut rng,
                password,
                response,
                ClientRegistrationFinishParameters::default(),
            )
            .map_err(protocol)?;
        let upload = finish.message.serialize().to_vec();
        let context: [u8; 32] = Sha256::digest(&upload).into();
        let vk = identity.verifying_key();
        let proof = identity.sign(&identity_proof_bytes(
            ProofPurpose::Register,
            &name,
            &context,
            &vk,
            &[],
        ));
        let req = pb::RegisterFinishRequest {
            username: name.to_string(),
            registration_upload: upload,
            identity_key: vk.as_bytes().to_vec(),
            identity_proof: proof.to_bytes().to_vec(),
            invite_code: invite_code.unwrap_or_default().to_owned(),
            credential_nonce: resp.credential_nonce,
        };
        // A retried RegisterFinish with the same nonce is recognised by the
        // group as the registration it already applied.
        self.call(|mut c| {
            let req = req.clone();
            async move { c.register_finish(req).await }
        })
        .await
        .result?;
        Ok(())
    }

    /// Logs in with OPAQUE, derives the master key, and has the server
    /// certify `identity` (and `peer_id`, if not empty). Keeps the token for
    /// later calls on this client.
    pub async fn login(
        &mut self,
        username: &str,
        password: &[u8],
        identity: &SigningKey,
        peer_id: &[u8],
    ) -> Result<LoginSession, ClientError> {
        // Both rounds must reach the same server, which holds the login
        // state in memory; if it fails in between, the login starts over.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.login_once(username, password, identity, peer_id).await {
                Err(ClientError::Server(s))
                    if attempts < 3
                        && matches!(s.code(), Code::Unavailable | Code::FailedPrecondition) =>
                {
                    tracing::debug!(why = %s.message(), "login interrupted by a failover; starting over");
                }
                other => return other,
            }
        }
    }

    async fn login_once(
        &mut self,
        username: &str,
        password: &[u8],
        identity: &SigningKey,
        peer_id: &[u8],
    ) -> Result<LoginSession, ClientError> {
        let name = Username::parse(username)?;
        let mut rng = rand::rngs::OsRng;
        let start = ClientLogin::<Suite>::start(&mut rng, password).map_err(protocol)?;
        let req = pb::LoginStartRequest {
            username: name.to_string(),
            credential_request: start.message.serialize().to_vec(),
        };
        let resp = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.login_start(req).await }
            })
            .await
            .result?;
        let credential_response =
            CredentialResponse::<Suite>::deserialize(&resp.credential_response)
                .map_err(protocol)?;
        let finish = start
            .state
            .finish(
                password,
                credential_response,
                ClientLoginFinishParameters::default(),
            )
            .map_err(|e| match e {
                opaque_ke::errors::ProtocolError::InvalidLoginError => {
                    ClientError::WrongPassword(name.to_string())
                }
                other => protocol(other),
            })?;
        let master_key = MasterKey::from_opaque_session_key(&finish.session_key);
        let vk = identity.verifying_key();
        let proof = identity.sign(&identity_proof_bytes(
            ProofPurpose::Login,
            &name,
            &resp.login_id,
            &vk,
            peer_id,
        ));
        // Not retried on another server: only this one knows the login id.
        let out = self
            .rpc
            .login_finish(pb::LoginFinishRequest {
                login_id: resp.login_id,
                credential_finalization: finish.message.serialize().to_vec(),
                identity_key: vk.as_bytes().to_vec(),
                identity_proof: proof.to_bytes().to_vec(),
                peer_id: peer_id.to_vec(),
            })
            .await?
            .into_inner();
        if out.master_key_id.as_slice() != master_key.id() {
            return Err(protocol("the server's master key id differs from ours"));
        }
        let token: [u8; 32] = out
            .session_token
            .as_slice()
            .try_into()
            .map_err(|_| protocol("session token is not 32 bytes"))?;
        let certificate = self.check_cert(out.certificate, &name)?;
        if certificate.identity_key != vk || certificate.peer_id != peer_id {
            return Err(protocol(
                "the issued certificate does not carry our identity key and peer id",
            ));
        }
        self.token = Some(token);
        Ok(LoginSession {
            username: name,
            token,
            master_key_id: master_key.id(),
            master_key,
            expires_at: out.expires_at,
            certificate,
        })
    }

    fn check_cert(
        &self,
        cert: Option<pb::UserCertificate>,
        expected: &Username,
    ) -> Result<UserCertificate, ClientError> {
        let cert = UserCertificate::try_from(cert.ok_or_else(|| protocol("no certificate"))?)?;
        cert.verify_with_skew(&self.cluster_key, vmail_proto::unix_now(), CLOCK_SKEW_SECS)?;
        if &cert.username != expected {
            return Err(protocol(format!(
                "asked for {expected}'s certificate, got {}'s",
                cert.username
            )));
        }
        Ok(cert)
    }

    /// A user's current certificate, verified against the cluster key.
    pub async fn certificate(&mut self, username: &str) -> Result<UserCertificate, ClientError> {
        let name = Username::parse(username)?;
        let req = pb::GetCertificateRequest {
            username: name.to_string(),
        };
        let resp = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.get_certificate(req).await }
            })
            .await
            .result?;
        self.check_cert(resp.certificate, &name)
    }

    /// The server's view of this client's session, with the user's current
    /// certificate verified.
    pub async fn whoami(&mut self) -> Result<WhoAmI, ClientError> {
        let token = self.require_token()?;
        let me = self
            .call(|mut c| async move { c.who_am_i(bearer(token, pb::WhoAmIRequest {})).await })
            .await
            .result?;
        let username = Username::parse(&me.username)?;
        Ok(WhoAmI {
            certificate: self.check_cert(me.certificate, &username)?,
            master_key_id: me
                .master_key_id
                .as_slice()
                .try_into()
                .map_err(|_| protocol("master key id is not 16 bytes"))?,
            expires_at: me.expires_at,
            username,
        })
    }

    /// Deposits a session key and locator for the recipients (paper §3.3 step 2).
    pub async fn deposit(
        &mut self,
        master_key: &MasterKey,
        d: &NewDeposit,
    ) -> Result<DepositReceipt, ClientError> {
        let wrapped_key = d.wrap_key(master_key);
        let req = pb::DepositRequest {
            request_id: d.request_id.to_vec(),
            recipients: d.recipients.to_strings(),
            locator: d.locator.clone(),
            wrapped_key,
            metadata: Some(d.meta.clone().into()),
        };
        let token = self.require_token()?;
        // Safe to retry anywhere: the request id makes the deposit idempotent.
        let resp = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.deposit(bearer(token, req)).await }
            })
            .await
            .result?;
        Ok(DepositReceipt {
            voicemail_id: resp
                .voicemail_id
                .as_slice()
                .try_into()
                .map_err(|_| protocol("voicemail id is not 16 bytes"))?,
            replayed: resp.replayed,
        })
    }

    /// Checks and opens one pending voicemail from the server.
    pub fn open_pending(
        &self,
        master_key: &MasterKey,
        p: pb::PendingVoicemail,
    ) -> Result<Pending, ClientError> {
        let id: [u8; 16] = p
            .voicemail_id
            .as_slice()
            .try_into()
            .map_err(|_| protocol("voicemail id is not 16 bytes"))?;
        let sender = UserCertificate::try_from(
            p.sender_certificate
                .ok_or_else(|| protocol("pending voicemail without a sender certificate"))?,
        )?;
        // The sender's certificate must have been valid when they deposited,
        // however long ago that was.
        sender.verify(&self.cluster_key, p.deposited_at)?;
        let recipients = Recipients::parse(&p.recipients)?;
        let session_key = master_key
            .unwrap_delivery(
                &p.wrapped_key,
                &DeliveryContext {
                    voicemail_id: &id,
                    recipients: &recipients,
                    locator: &p.locator,
                },
            )
            .map_err(|e| {
                protocol(format!(
                    "session key of voicemail {} does not open under our master key ({e}); log in again",
                    hex::encode(id)
                ))
            })?;
        Ok(Pending {
            id,
            sender,
            deposited_at: p.deposited_at,
            meta: p.metadata.map(Into::into).unwrap_or_default(),
            locator: p.locator,
            recipients,
            session_key,
        })
    }

    /// The voicemails waiting for this user (retrieval steps 1-2).
    pub async fn list_pending(
        &mut self,
        master_key: &MasterKey,
    ) -> Result<Vec<Pending>, ClientError> {
        let token = self.require_token()?;
        let resp = self
            .call(|mut c| async move {
                c.list_pending(bearer(token, pb::ListPendingRequest {}))
                    .await
            })
            .await
            .result?;
        resp.voicemails
            .into_iter()
            .map(|p| self.open_pending(master_key, p))
            .collect()
    }

    /// A stream of pending voicemails: the backlog, then each new one.
    /// Open each item with [`AuthClient::open_pending`].
    pub async fn watch_pending(
        &mut self,
    ) -> Result<tonic::Streaming<pb::PendingVoicemail>, ClientError> {
        let token = self.require_token()?;
        Ok(self
            .call(|mut c| async move {
                c.watch_pending(bearer(token, pb::WatchPendingRequest {}))
                    .await
            })
            .await
            .result?)
    }

    /// Tells the server this user has fetched the voicemail. Returns whether
    /// the session key is now erased everywhere.
    pub async fn ack(&mut self, id: &[u8; 16]) -> Result<bool, ClientError> {
        let token = self.require_token()?;
        let id = *id;
        let answer = self
            .call(|mut c| async move {
                c.ack(bearer(
                    token,
                    pb::AckRequest {
                        voicemail_id: id.to_vec(),
                    },
                ))
                .await
            })
            .await;
        match answer.result {
            Ok(r) => Ok(r.key_erased),
            // An earlier attempt took effect before its server failed.
            Err(s) if answer.retried && s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(s.into()),
        }
    }

    /// Revokes the session on the server.
    pub async fn logout(&mut self) -> Result<(), ClientError> {
        let token = self.require_token()?;
        let answer = self
            .call(|mut c| async move { c.logout(bearer(token, pb::LogoutRequest {})).await })
            .await;
        match answer.result {
            Ok(_) => {}
            // An earlier attempt revoked the token before its server failed.
            Err(s) if answer.retried && s.code() == Code::Unauthenticated => {}
            Err(s) => return Err(s.into()),
        }
        self.token = None;
        Ok(())
    }
}

/// An error and its sources on one line: transport errors hide the useful
/// part (connection refused, unknown issuer) in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
