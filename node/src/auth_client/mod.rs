//! The client side of `vmail.auth.v1`: OPAQUE registration and login, the
//! master key, certificate checks, grants, deposits and pending voicemail,
//! and the user's recipient policy (contacts, blocks, spam reports).
//!
//! The client knows a list of auth servers. A call that reaches a follower
//! comes back UNAVAILABLE naming the leader (`vmail-leader`), and the client
//! retries there; a call that finds its server dead moves on to the next
//! endpoint. Retries are safe: a deposit carries its request id, so a retry
//! after a failover never makes a second voicemail.
//!
//! Certificates a caller gets back have been verified against the cluster
//! key. No auth server holds a voicemail's session key: the sender splits
//! it among the servers' share keys (`shares.rs`, pure), and the recipient
//! recovers it from a majority of their shares, asking every server at once
//! ([`AuthClient::recover_session_key`], `recover.rs`), checked against the
//! deposit's key check. The raw items of [`AuthClient::watch_pending`] are
//! checked by [`AuthClient::open_pending`]. The rest of the program
//! (CLI, demo, later the peer daemon) talks to the auth servers only through
//! [`AuthClient`].

mod account;
mod grant;
mod policy;
mod recover;
mod shares;
mod voicemail;

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use vmail_proto::cert::CertError;
pub use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::NameError;
use vmail_proto::pb::auth_client;

pub use account::{Allowance, LoginSession, WhoAmI};
pub use grant::{Grant, GrantRequest, Refusal, RefusalReason, SenderVisibility};
pub use policy::{BadPolicyMode, ListEdit, Policy, PolicyChange, PolicyMode, ReportOutcome};
pub use recover::{SHARE_CALL_TIMEOUT, SHARE_DEADLINE};
pub use shares::{
    Collector, KeyShares, Recovering, RecoveryError, ShareFailure, ShareSlot, check_share_keys,
    collect, enough_endpoints, grant_share_keys, key_shares,
};
pub use voicemail::{
    ANONYMOUS, Acked, Delivery, DepositReceipt, NewDeposit, Pending, Recalled, SealedDeposit,
    Sender, Sent,
};

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
const RETRY_PAUSE: Duration = Duration::from_millis(100);
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
    /// An endpoint, configured or named in a leader redirect, that is not
    /// `https://`.
    #[error(
        "auth endpoint {url:?} ({from}) is not an https:// URL: vmail talks to auth servers only over TLS, so write it as https://HOST:PORT"
    )]
    NotHttps {
        /// The URL.
        url: String,
        /// Where it came from.
        from: &'static str,
    },
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
    /// A voicemail's session key could not be recovered from the servers'
    /// shares.
    #[error(transparent)]
    KeyRecovery(#[from] RecoveryError),
}

impl ClientError {
    /// Whether the call may have taken effect although it failed: the
    /// server was unreachable or the answer was lost.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Server(s) => outcome_unknown(s.code()),
            _ => false,
        }
    }

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
    /// The group's threshold key, if pinned: then every certificate must
    /// also carry its signature (docs/THRESHOLD.md).
    pub group_key: Option<VerifyingKey>,
}

/// A connection to the auth servers. `Debug` leaves out the token.
#[derive(Clone)]
pub struct AuthClient {
    rpc: auth_client::AuthClient<Channel>,
    cluster_key: VerifyingKey,
    group_key: Option<VerifyingKey>,
    ca_pem: Vec<u8>,
    /// The configured endpoints, then leaders learnt from redirects.
    endpoints: Vec<String>,
    /// The configured endpoints only: every one is asked for its share of a
    /// session key.
    configured: Vec<String>,
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

/// Whether `url` is an `https://` URL. tonic uses TLS only for `https`,
/// so any other scheme would send names, password rounds and tokens in
/// clear; every endpoint is checked before it is used.
pub fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

fn endpoint(url: &str, ca_pem: &[u8], from: &'static str) -> Result<Endpoint, ClientError> {
    if !is_https(url) {
        return Err(ClientError::NotHttps {
            url: url.to_owned(),
            from,
        });
    }
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
            let endpoint = endpoint(url, &target.ca_pem, "configured")?;
            attempts.push(async move { (url, endpoint.connect().await) });
        }
        let mut failures = Vec::new();
        while let Some((url, result)) = attempts.next().await {
            match result {
                Ok(ch) => {
                    return Ok(Self {
                        rpc: rpc_client(ch),
                        cluster_key: target.cluster_key,
                        group_key: target.group_key,
                        ca_pem: target.ca_pem.clone(),
                        endpoints: target.endpoints.clone(),
                        configured: target.endpoints.clone(),
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
    /// `from` says where the URL came from, for the error if it is not
    /// `https://`.
    fn switch_to(&mut self, url: &str, from: &'static str) -> Result<(), ClientError> {
        let ch = endpoint(url, &self.ca_pem, from)?.connect_lazy();
        if !self.endpoints.iter().any(|e| e == url) {
            self.endpoints.push(url.to_owned());
        }
        self.rpc = rpc_client(ch);
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
            let (next, from) = match leader {
                Some(url) if url != self.endpoint => (
                    url,
                    "named as the leader in an auth server's vmail-leader redirect",
                ),
                _ => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    let at = self
                        .endpoints
                        .iter()
                        .position(|e| *e == self.endpoint)
                        .map_or(0, |i| i + 1);
                    (
                        self.endpoints[at % self.endpoints.len()].clone(),
                        "configured",
                    )
                }
            };
            tracing::debug!(from = %self.endpoint, to = %next, why = %status.message(), "retrying at another auth server");
            if let Err(e) = self.switch_to(&next, from) {
                return Answer {
                    result: Err(Status::failed_precondition(e.to_string())),
                    retried,
                };
            }
        }
    }

    /// Like [`AuthClient::call`], for a call that is safe to repeat: an
    /// answer that leaves the outcome unknown (a broken connection, a
    /// timeout, a leader that stepped down mid-write) is retried too, until
    /// [`FAILOVER_DEADLINE`], so the caller learns a definite outcome
    /// whenever the group recovers in time.
    async fn call_until_known<T, F, Fut>(&mut self, f: F) -> Answer<T>
    where
        F: Fn(auth_client::AuthClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + FAILOVER_DEADLINE;
        let mut retried = false;
        loop {
            let answer = self.call(&f).await;
            retried |= answer.retried;
            match &answer.result {
                Err(s) if outcome_unknown(s.code()) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(endpoint = %self.endpoint, why = %s.message(), "outcome unknown; retrying");
                    retried = true;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                _ => {
                    return Answer {
                        result: answer.result,
                        retried,
                    };
                }
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
}

/// Whether an answer with `code` leaves it unknown whether the call took
/// effect.
pub fn outcome_unknown(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_endpoints_are_used() {
        assert!(is_https("https://auth-1:7443"));
        assert!(is_https("HTTPS://auth-1:7443"));
        for url in [
            "http://auth-1:7443",
            "auth-1:7443",
            "grpc://x",
            "",
            "https:/x",
        ] {
            assert!(!is_https(url), "{url}");
            let err = endpoint(url, b"", "configured").unwrap_err().to_string();
            assert!(
                err.contains(&format!("{url:?}")) && err.contains("https://HOST:PORT"),
                "{err}"
            );
        }
    }
}
