//! The client side of `vmail.auth.v1`: OPAQUE registration and login, the
//! master key, certificate checks, deposits and pending voicemail.
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
        /// The last failure.
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
    /// Endpoint URLs, tried in order.
    pub endpoints: Vec<String>,
    /// PEM of the cluster CA.
    pub ca_pem: Vec<u8>,
    /// The cluster public key that signs user certificates.
    pub cluster_key: VerifyingKey,
}

impl From<&vmail_auth::server::LocalServer> for AuthTarget {
    fn from(s: &vmail_auth::server::LocalServer) -> Self {
        Self {
            endpoints: vec![s.endpoint.clone()],
            ca_pem: s.ca_pem.clone(),
            cluster_key: s.cluster_key,
        }
    }
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

impl AuthClient {
    /// Connects to the first reachable endpoint of `target`.
    pub async fn connect(target: &AuthTarget) -> Result<Self, ClientError> {
        vmail_auth::server::install_crypto_provider();
        let mut last = String::from("no endpoint configured");
        for url in &target.endpoints {
            let ep = Endpoint::from_shared(url.clone())
                .map_err(|_| ClientError::BadEndpoint(url.clone()))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(CALL_TIMEOUT)
                .tls_config(
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&target.ca_pem)),
                )
                .map_err(|e| ClientError::BadEndpoint(format!("{url}: {e}")))?;
            match ep.connect().await {
                Ok(ch) => {
                    return Ok(Self {
                        rpc: auth_client::AuthClient::new(ch)
                            .max_decoding_message_size(MAX_MESSAGE_BYTES),
                        cluster_key: target.cluster_key,
                        endpoint: url.clone(),
                        token: None,
                    });
                }
                Err(e) => last = format!("{url}: {}", error_chain(&e)),
            }
        }
        Err(ClientError::Unreachable {
            endpoints: target.endpoints.join(", "),
            why: last,
        })
    }

    /// The endpoint this client is connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Uses `token` for authenticated calls.
    pub fn set_token(&mut self, token: [u8; 32]) {
        self.token = Some(token);
    }

    fn authed<T>(&self, msg: T) -> Result<Request<T>, ClientError> {
        let token = self.token.ok_or_else(|| {
            ClientError::Server(Status::unauthenticated(
                "not logged in: run `vmail login USER` first",
            ))
        })?;
        let mut req = Request::new(msg);
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", hex::encode(token))
                .parse()
                .expect("hex is a valid header value"),
        );
        Ok(req)
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
        let resp = self
            .rpc
            .register_start(pb::RegisterStartRequest {
                username: name.to_string(),
                registration_request: start.message.serialize().to_vec(),
                invite_code: invite_code.unwrap_or_default().to_owned(),
            })
            .await?
            .into_inner();
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
        self.rpc
            .register_finish(pb::RegisterFinishRequest {
                username: name.to_string(),
                registration_upload: upload,
                identity_key: vk.as_bytes().to_vec(),
                identity_proof: proof.to_bytes().to_vec(),
                invite_code: invite_code.unwrap_or_default().to_owned(),
                credential_nonce: resp.credential_nonce,
            })
            .await?;
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
        let name = Username::parse(username)?;
        let mut rng = rand::rngs::OsRng;
        let start = ClientLogin::<Suite>::start(&mut rng, password).map_err(protocol)?;
        let resp = self
            .rpc
            .login_start(pb::LoginStartRequest {
                username: name.to_string(),
                credential_request: start.message.serialize().to_vec(),
            })
            .await?
            .into_inner();
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
        let resp = self
            .rpc
            .get_certificate(pb::GetCertificateRequest {
                username: name.to_string(),
            })
            .await?
            .into_inner();
        self.check_cert(resp.certificate, &name)
    }

    /// The server's view of this client's session, with the user's current
    /// certificate verified.
    pub async fn whoami(&mut self) -> Result<WhoAmI, ClientError> {
        let req = self.authed(pb::WhoAmIRequest {})?;
        let me = self.rpc.who_am_i(req).await?.into_inner();
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
        let wrapped_key = master_key.wrap_deposit(
            &d.session_key,
            &DepositContext {
                request_id: &d.request_id,
                recipients: &d.recipients,
                locator: &d.locator,
            },
        );
        let req = self.authed(pb::DepositRequest {
            request_id: d.request_id.to_vec(),
            recipients: d.recipients.to_strings(),
            locator: d.locator.clone(),
            wrapped_key,
            metadata: Some(d.meta.clone().into()),
        })?;
        let resp = self.rpc.deposit(req).await?.into_inner();
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
        let req = self.authed(pb::ListPendingRequest {})?;
        let resp = self.rpc.list_pending(req).await?.into_inner();
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
        let req = self.authed(pb::WatchPendingRequest {})?;
        Ok(self.rpc.watch_pending(req).await?.into_inner())
    }

    /// Tells the server this user has fetched the voicemail. Returns whether
    /// the session key is now erased everywhere.
    pub async fn ack(&mut self, id: &[u8; 16]) -> Result<bool, ClientError> {
        let req = self.authed(pb::AckRequest {
            voicemail_id: id.to_vec(),
        })?;
        Ok(self.rpc.ack(req).await?.into_inner().key_erased)
    }

    /// Revokes the session on the server.
    pub async fn logout(&mut self) -> Result<(), ClientError> {
        let req = self.authed(pb::LogoutRequest {})?;
        self.rpc.logout(req).await?;
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
