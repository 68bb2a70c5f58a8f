//! Recovering a pending voicemail's session key (retrieval step 2 under
//! threshold sharing, docs/PROTOCOL.md §3.2): every configured auth server,
//! and every server the voicemail's share slots name by URL besides them,
//! is asked at once, each over its own channel and never redirected to the
//! leader, for its share resealed to this session's inbox key. (Answers are
//! only trusted as far as they open under the inbox key and recombine to
//! the key check, so a URL from the server costs at most a connection.) A
//! server that has not applied the deposit yet answers NOT_FOUND and is
//! asked again for a few seconds. The answers go to the pure [`Collector`] as they arrive;
//! the first `threshold` that recombine to the key end the recovery, and the
//! slower servers are not waited for.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use tonic::{Code, Status};
use vmail_proto::keys::SecretKey;
use vmail_proto::pb;

use super::shares::{Collector, Recovering, RecoveryError, ShareFailure, enough_endpoints};
use super::{
    AuthClient, ClientError, LoginSession, Pending, bearer, endpoint, error_chain, rpc_client,
};

/// How long a recovery keeps asking a server that has no share yet (it has
/// not applied the deposit) or cannot be reached: replicas apply a committed
/// entry within milliseconds, a restarting server takes longer than is
/// worth waiting for when others can answer.
pub const SHARE_DEADLINE: Duration = Duration::from_secs(4);
/// How long one `OpenShare` may take, connection included.
pub const SHARE_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two asks of one server.
const SHARE_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How long one server is asked, and how often.
#[derive(Debug, Clone, Copy)]
struct Patience {
    /// No new ask after this long.
    deadline: Duration,
    /// Between two asks.
    pause: Duration,
    /// One ask at most.
    call_timeout: Duration,
}

const PATIENCE: Patience = Patience {
    deadline: SHARE_DEADLINE,
    pause: SHARE_RETRY_PAUSE,
    call_timeout: SHARE_CALL_TIMEOUT,
};

impl AuthClient {
    /// Recovers `pending`'s session key from the auth servers' shares,
    /// resealed to `session`'s inbox key: every configured endpoint, and
    /// each slot's URL besides ([`super::KeyShares::endpoints`]), is asked
    /// at once, and the first `threshold` shares that recombine to the
    /// deposit's key check give the key. The error names how many shares
    /// were needed and got, and why each server's could not be used.
    pub async fn recover_session_key(
        &self,
        session: &LoginSession,
        pending: &Pending,
    ) -> Result<SecretKey, ClientError> {
        let what = Recovering {
            voicemail_id: &pending.id,
            shares: &pending.shares,
            recipient: &session.username,
            inbox: &session.inbox_key,
            locator: &pending.locator,
        };
        let ca_pem = &self.ca_pem;
        let token = session.token;
        let id = pending.id;
        let endpoints = pending.shares.endpoints(&self.configured);
        Ok(gather(what, &endpoints, |url| async move {
            open_share_at(url, ca_pem, token, &id).await
        })
        .await?)
    }
}

/// Asks every endpoint at once with `ask` and feeds the answers to a
/// [`Collector`] as they come: the key as soon as they recombine to it.
async fn gather<'a, F, Fut>(
    what: Recovering<'_>,
    endpoints: &'a [String],
    ask: F,
) -> Result<SecretKey, RecoveryError>
where
    F: Fn(&'a str) -> Fut,
    Fut: Future<Output = Result<pb::OpenShareResponse, ShareFailure>>,
{
    enough_endpoints(what.voicemail_id, what.shares, endpoints.len())?;
    let mut asks: futures::stream::FuturesUnordered<_> = endpoints
        .iter()
        .map(|url| {
            let answer = ask(url);
            async move { (url, answer.await) }
        })
        .collect();
    let mut collector = Collector::new(what);
    while let Some((url, answer)) = asks.next().await {
        if let Some(key) = collector.take(url, answer) {
            return Ok(key);
        }
    }
    Err(collector.error())
}

/// One server's share of voicemail `id`.
async fn open_share_at(
    url: &str,
    ca_pem: &[u8],
    token: [u8; 32],
    id: &[u8; 16],
) -> Result<pb::OpenShareResponse, ShareFailure> {
    let ep = endpoint(url, ca_pem, "configured or named by a share slot")
        .map_err(|e| ShareFailure::Unreachable(e.to_string()))?
        .timeout(SHARE_CALL_TIMEOUT);
    let rpc = rpc_client(ep.connect_lazy());
    ask_until(PATIENCE, || {
        let mut rpc = rpc.clone();
        let req = bearer(
            token,
            pb::OpenShareRequest {
                voicemail_id: id.to_vec(),
            },
        );
        async move { rpc.open_share(req).await.map(tonic::Response::into_inner) }
    })
    .await
}

/// Runs `attempt` until it succeeds, fails for good, or `patience` runs
/// out: NOT_FOUND (the deposit is not applied here yet) and UNAVAILABLE
/// (the server is starting or unreachable) are asked again.
async fn ask_until<T, F, Fut>(patience: Patience, mut attempt: F) -> Result<T, ShareFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = tokio::time::Instant::now() + patience.deadline;
    loop {
        let status = match tokio::time::timeout(patience.call_timeout, attempt()).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(s)) => s,
            Err(_) => Status::deadline_exceeded(format!(
                "no answer within {} ms",
                patience.call_timeout.as_millis()
            )),
        };
        let again = matches!(status.code(), Code::NotFound | Code::Unavailable);
        if !again || tokio::time::Instant::now() >= deadline {
            return Err(failure(&status));
        }
        tracing::debug!(why = %status.message(), "no share yet; asking again");
        tokio::time::sleep(patience.pause).await;
    }
}

/// What a refusal says about a server's share. Transport errors repeat
/// themselves down their source chain; each part is said once.
fn failure(s: &Status) -> ShareFailure {
    let chain = match std::error::Error::source(s) {
        Some(src) => format!("{}: {}", s.message(), error_chain(src)),
        None => s.message().to_owned(),
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in chain.split(": ").filter(|p| !p.is_empty()) {
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    let why = parts.join(": ");
    match s.code() {
        Code::NotFound => ShareFailure::NoShare(why),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            ShareFailure::Unreachable(why)
        }
        code => ShareFailure::Refused(format!("{code:?}: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::shares::tests::{ID, world};
    use super::*;

    const QUICK: Patience = Patience {
        deadline: Duration::from_millis(300),
        pause: Duration::from_millis(10),
        call_timeout: Duration::from_millis(200),
    };

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("https://a{i}:1")).collect()
    }

    #[tokio::test]
    async fn the_key_comes_as_soon_as_a_threshold_answers() {
        let w = world(3);
        let endpoints = urls(3);
        // The third server never answers: the first two are enough.
        let key = gather(w.recovering(), &endpoints, |url| {
            let i: usize = url[9..10].parse().unwrap();
            let answer = w.answers[i].clone();
            async move {
                if i == 2 {
                    std::future::pending::<()>().await;
                }
                Ok(answer)
            }
        });
        let key = tokio::time::timeout(Duration::from_secs(5), key)
            .await
            .expect("does not wait for the silent server")
            .unwrap();
        assert_eq!(key, w.key);
    }

    #[tokio::test]
    async fn every_failure_is_named_when_too_few_answer() {
        let w = world(3);
        let endpoints = urls(3);
        let err = gather(w.recovering(), &endpoints, |url| {
            let i: usize = url[9..10].parse().unwrap();
            let answer = w.answers[i].clone();
            async move {
                match i {
                    0 => Ok(answer),
                    1 => Err(ShareFailure::Unreachable("connection refused".into())),
                    _ => Err(ShareFailure::NoShare("no such voicemail".into())),
                }
            }
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(&hex::encode(ID)), "{err}");
        assert!(
            err.contains("needs shares from 2 auth servers, got 1"),
            "{err}"
        );
        assert!(
            err.contains("https://a1:1 unreachable (connection refused)"),
            "{err}"
        );
        assert!(
            err.contains("https://a2:1 has no share of it for you"),
            "{err}"
        );
        // Fewer endpoints than the threshold: nobody is asked.
        let asked = AtomicUsize::new(0);
        let err = gather(w.recovering(), &endpoints[..1], |_| {
            asked.fetch_add(1, Ordering::Relaxed);
            async { Err(ShareFailure::DoesNotOpen) }
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, RecoveryError::TooFewEndpoints { .. }),
            "{err}"
        );
        assert_eq!(asked.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn servers_that_refuse_connections_are_named_unreachable() {
        use ed25519_dalek::SigningKey;
        use vmail_proto::cert::CertificateBody;
        use vmail_proto::names::Recipients;

        use super::super::VoicemailMeta;

        // Ports nobody listens on.
        let closed: Vec<String> = (0..2)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                format!("https://127.0.0.1:{}", l.local_addr().unwrap().port())
            })
            .collect();
        let cluster = SigningKey::from_bytes(&[1; 32]);
        let ch = tonic::transport::Endpoint::from_static("https://127.0.0.1:9").connect_lazy();
        let client = AuthClient {
            rpc: rpc_client(ch),
            cluster_key: cluster.verifying_key(),
            group_key: None,
            ca_pem: Vec::new(),
            endpoints: closed.clone(),
            configured: closed.clone(),
            endpoint: closed[0].clone(),
            token: None,
        };
        let w = world(3);
        let session = LoginSession {
            username: w.bob.clone(),
            token: [0; 32],
            master_key: vmail_proto::keys::MasterKey::from_bytes([2; 32]),
            master_key_id: [0; 16],
            expires_at: 0,
            certificate: CertificateBody {
                serial: 1,
                username: w.bob.clone(),
                identity_key: SigningKey::from_bytes(&[9; 32]).verifying_key(),
                peer_id: Vec::new(),
                not_before: 0,
                not_after: 1,
            }
            .sign(&cluster),
            inbox_key: w.inbox.clone(),
        };
        let pending = Pending {
            id: ID,
            sender: super::super::Sender::Hidden,
            first_contact: false,
            deposited_at: 0,
            meta: VoicemailMeta::default(),
            locator: Vec::new(),
            recipients: Recipients::parse(["bob"]).unwrap(),
            shares: w.shares.clone(),
        };
        let err = client
            .recover_session_key(&session, &pending)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs shares from 2 auth servers, got 0"),
            "{err}"
        );
        assert_eq!(err.matches("tcp connect error").count(), 2, "{err}");
        for url in &closed {
            assert!(err.contains(&format!("{url} unreachable (")), "{err}");
        }
    }

    #[test]
    fn a_failure_says_each_part_of_its_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let s = Status::from_error(Box::new(io));
        let f = failure(&s);
        assert!(
            matches!(&f, ShareFailure::Unreachable(m) | ShareFailure::Refused(m)
                if m.matches("Connection refused").count() == 1),
            "{f:?}"
        );
        assert_eq!(
            failure(&Status::not_found("no such voicemail")),
            ShareFailure::NoShare("no such voicemail".into())
        );
    }

    #[tokio::test]
    async fn a_server_without_the_deposit_yet_is_asked_again() {
        let tries = AtomicUsize::new(0);
        let got = ask_until(QUICK, || {
            let n = tries.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 3 {
                    Err(Status::not_found("no such voicemail"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, Ok(3));
        // Until the deadline, then the last answer says why.
        let got: Result<(), _> =
            ask_until(QUICK, || async { Err(Status::unavailable("starting")) }).await;
        assert_eq!(got, Err(ShareFailure::Unreachable("starting".into())));
    }

    #[tokio::test]
    async fn a_refusal_or_a_silent_server_is_not_asked_again() {
        let tries = AtomicUsize::new(0);
        let got: Result<(), _> = ask_until(QUICK, || {
            tries.fetch_add(1, Ordering::Relaxed);
            async { Err(Status::unauthenticated("session expired")) }
        })
        .await;
        assert_eq!(
            got,
            Err(ShareFailure::Refused(
                "Unauthenticated: session expired".into()
            ))
        );
        assert_eq!(tries.load(Ordering::Relaxed), 1);
        let started = std::time::Instant::now();
        let got: Result<(), _> = ask_until(QUICK, std::future::pending).await;
        assert!(
            matches!(&got, Err(ShareFailure::Unreachable(m)) if m.contains("no answer within 200 ms")),
            "{got:?}"
        );
        // A server that does not answer in time is not waited for again.
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
