//! Attacks on the auth server: login-state floods, registration floods, unread WatchPending streams, oversize locators and plaintext endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status};
use vmail_auth::cluster::Member;
use vmail_auth::cluster::admin;
use vmail_auth::service::{MAX_LOCATOR_LEN, SystemClock};
use vmail_auth::tls::ClusterTls;
use vmail_node::auth_client::{AuthClient, AuthTarget, ClientError};
use vmail_proto::pb;
use vmail_tests::attacks::{
    Limits, LoginFlood, deposit_backlog, register_flood_names, spawn_login_flood,
};
use vmail_tests::{TestAuth, deposit_for, granted, identity, password, register_and_login};

/// A TCP listener that counts the connections made to it and reads what
/// they send: where a client would talk in clear.
struct Sink {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Sink {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    use tokio::io::AsyncReadExt;
                    while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        Self {
            addr,
            connections,
            _task: task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (Code, String) {
    match r.unwrap_err() {
        ClientError::Server(s) => (s.code(), s.message().to_owned()),
        other => panic!("expected a server refusal, got {other}"),
    }
}

/// (a) Unread WatchPending streams: past the per-session cap a new stream
/// is refused, naming the cap; past the per-user cap too, on another
/// session; each unread stream holds only a page of a large backlog, and
/// a closed stream frees its slot. Honest calls keep working.
#[tokio::test]
async fn unread_watch_streams_are_capped_and_paged() {
    let auth = TestAuth::start_with(
        |c| {
            c.max_watch_streams_per_session = 3;
            c.max_watch_streams_per_user = 5;
        },
        Arc::new(SystemClock),
    )
    .await;
    let (mut bob, _, _) = register_and_login(&auth, "bob").await;
    let (mut alice, _, _) = register_and_login(&auth, "alice").await;
    // A backlog of full-size locators, far more than a page.
    const BACKLOG: usize = 48;
    assert_eq!(
        deposit_backlog(&mut bob, "alice", BACKLOG, MAX_LOCATOR_LEN).await,
        BACKLOG
    );

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(alice.watch_pending().await.unwrap());
    }
    let (c, msg) = code(alice.watch_pending().await);
    assert_eq!(c, Code::ResourceExhausted, "{msg}");
    assert!(
        msg.contains("3 WatchPending streams open on this session")
            && msg.contains("max_watch_streams_per_session"),
        "{msg}"
    );
    // A second session of the same user reaches the per-user cap.
    let mut alice2 = auth.client().await;
    alice2
        .login("alice", &password("alice"), &identity(), &[])
        .await
        .unwrap();
    for _ in 0..2 {
        held.push(alice2.watch_pending().await.unwrap());
    }
    let (c, msg) = code(alice2.watch_pending().await);
    assert_eq!(c, Code::ResourceExhausted, "{msg}");
    assert!(msg.contains("max_watch_streams_per_user"), "{msg}");
    assert_eq!(auth.service().watch_streams("alice"), 5);

    // Honest calls still work meanwhile: alice lists her inbox, bob watches his.
    let listed = alice.list_pending().await;
    assert!(listed.is_ok(), "{:?}", listed.err());
    drop(listed);
    let mut bobs = bob.watch_pending().await.unwrap();
    let d = granted(&mut alice, deposit_for(&["bob"], b"for bob")).await;
    alice.deposit(&d).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), bobs.message())
        .await
        .expect("bob's stream delivers")
        .unwrap()
        .unwrap();
    assert_eq!(got.locator, b"for bob");

    // A stream read to the end of its backlog delivers it all, in order,
    // one fetched page at a time.
    let mut first = held.remove(0);
    let mut n = 0;
    while n < BACKLOG {
        let item = tokio::time::timeout(Duration::from_secs(10), first.message())
            .await
            .expect("the backlog keeps coming")
            .unwrap()
            .unwrap();
        assert_eq!(item.locator.len(), MAX_LOCATOR_LEN);
        n += 1;
    }
    // Closing a stream frees its slot.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match alice.watch_pending().await {
            Ok(s) => {
                held.push(s);
                break;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the closed stream's slot was never freed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    println!(
        "resident memory with {} unread streams over a {BACKLOG}-voicemail backlog: {} KiB",
        held.len(),
        rss_kib()
    );
}

/// Resident set size of this process, KiB (0 where /proc is missing).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// (b) 10,000 unfinished LoginStarts under a few names: the table holds at
/// most the per-user cap of each, and other users log in meanwhile.
#[tokio::test]
async fn a_login_start_flood_under_a_few_names_locks_out_no_one_else() {
    const NAMES: usize = 10;
    const STARTS: usize = 10_000;
    let auth = TestAuth::start_with(
        // The lock-out alone would stop each name after a few attempts;
        // raised, so the flood reaches the login table.
        |c| c.max_failed_logins = 1000,
        Arc::new(SystemClock),
    )
    .await;
    register_flood_names(&auth.target(), NAMES).await;
    let (mut bob, bob_id, _) = register_and_login(&auth, "bob").await;

    let flood = spawn_login_flood(
        auth.channel().await,
        LoginFlood {
            names: NAMES,
            in_flight: 32,
        },
        Limits::new(STARTS, Duration::from_secs(600)),
    );
    // Honest logins while the flood runs, and after it.
    let mut honest = 0;
    while !flood.is_finished() && honest < 20 {
        bob.login("bob", &password("bob"), &bob_id, &[])
            .await
            .expect("bob logs in during the flood");
        honest += 1;
        let (all, per) = auth.service().logins_in_progress("flood0");
        assert!(per <= 4, "{per} logins of one name held");
        assert!(all <= NAMES * 4 + 1, "{all} logins held");
    }
    let answered = flood.wait().await;
    assert_eq!(answered, STARTS, "every LoginStart was answered");
    let (all, per) = auth.service().logins_in_progress("flood0");
    assert_eq!((all, per), (NAMES * 4, 4));
    let mut carol = auth.client().await;
    let carol_id = identity();
    carol
        .register("carol", &password("carol"), &carol_id, None)
        .await
        .unwrap();
    carol
        .login("carol", &password("carol"), &carol_id, &[])
        .await
        .expect("carol logs in after the flood");
    println!("{honest} honest logins during the flood");
}

/// (c) A registration flood meets the server-wide limit (RESOURCE_EXHAUSTED
/// with retry-after, naming the config key), while an invited registration
/// and logins still succeed.
#[tokio::test]
async fn a_registration_flood_is_rate_limited_but_invites_and_logins_work() {
    const LIMIT: usize = 8;
    let auth = TestAuth::start_with(
        |c| {
            c.registrations_per_minute = LIMIT as u64;
            c.registrations_per_minute_per_address = LIMIT as u64;
            c.registration.invite_codes = vec!["friend-of-the-operator".into()];
        },
        Arc::new(SystemClock),
    )
    .await;
    let started = std::time::Instant::now();
    // The honest user registered before the flood.
    let (_, alice_id, _) = register_and_login(&auth, "alice").await;

    let mut flood = tokio::task::JoinSet::new();
    for i in 0..24 {
        let target = auth.target();
        flood.spawn(async move {
            let mut c = AuthClient::connect(&target).await.unwrap();
            let name = format!("bot{i}");
            c.register(&name, &password(&name), &identity(), None).await
        });
    }
    let results = flood.join_all().await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    // The bucket held LIMIT, alice took one, and it refills at LIMIT a
    // minute while the flood runs (slowly, on a loaded machine).
    let refilled = (started.elapsed().as_secs_f64() * LIMIT as f64 / 60.0).ceil() as usize;
    assert!(
        created < LIMIT + refilled,
        "{created} registrations got through in {:?}",
        started.elapsed()
    );
    for r in results.into_iter().filter(|r| r.is_err()) {
        let ClientError::Server(s) = r.unwrap_err() else {
            panic!("expected a refusal")
        };
        assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
        assert!(
            s.message().contains("registrations_per_minute") && s.message().contains("retry in"),
            "{}",
            s.message()
        );
        let after: u64 = s
            .metadata()
            .get("retry-after")
            .expect("retry-after metadata")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&after), "retry-after {after}");
    }
    // Invited: past the limit.
    let mut invited = auth.client().await;
    let id = identity();
    invited
        .register(
            "dave",
            &password("dave"),
            &id,
            Some("friend-of-the-operator"),
        )
        .await
        .expect("an invited registration is not rate-limited");
    invited
        .login("dave", &password("dave"), &id, &[])
        .await
        .unwrap();
    // The code is single-use.
    let (c, _) = code(
        auth.client()
            .await
            .register(
                "erin",
                &password("erin"),
                &identity(),
                Some("friend-of-the-operator"),
            )
            .await,
    );
    assert_eq!(c, Code::PermissionDenied);
    // Existing users log in.
    auth.client()
        .await
        .login("alice", &password("alice"), &alice_id, &[])
        .await
        .expect("alice logs in during the flood");
}

/// A stand-in auth server (with the real server's TLS identity) that
/// answers every call UNAVAILABLE and names a plaintext "leader": what a
/// compromised or misconfigured member could send.
#[derive(Debug, Clone)]
struct HttpRedirector {
    leader: String,
}

impl HttpRedirector {
    fn refuse<T>(&self) -> Result<Response<T>, Status> {
        let mut s = Status::unavailable("not the leader");
        s.metadata_mut()
            .insert("vmail-leader", self.leader.parse().unwrap());
        Err(s)
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for HttpRedirector {
    type WatchPendingStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::PendingVoicemail, Status>>;
    async fn register_start(
        &self,
        _: Request<pb::RegisterStartRequest>,
    ) -> Result<Response<pb::RegisterStartResponse>, Status> {
        self.refuse()
    }
    async fn register_finish(
        &self,
        _: Request<pb::RegisterFinishRequest>,
    ) -> Result<Response<pb::RegisterFinishResponse>, Status> {
        self.refuse()
    }
    async fn login_start(
        &self,
        _: Request<pb::LoginStartRequest>,
    ) -> Result<Response<pb::LoginStartResponse>, Status> {
        self.refuse()
    }
    async fn login_finish(
        &self,
        _: Request<pb::LoginFinishRequest>,
    ) -> Result<Response<pb::LoginFinishResponse>, Status> {
        self.refuse()
    }
    async fn get_certificate(
        &self,
        _: Request<pb::GetCertificateRequest>,
    ) -> Result<Response<pb::GetCertificateResponse>, Status> {
        self.refuse()
    }
    async fn who_am_i(
        &self,
        _: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        self.refuse()
    }
    async fn request_grant(
        &self,
        _: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.refuse()
    }
    async fn deposit(
        &self,
        _: Request<pb::DepositRequest>,
    ) -> Result<Response<pb::DepositResponse>, Status> {
        self.refuse()
    }
    async fn list_pending(
        &self,
        _: Request<pb::ListPendingRequest>,
    ) -> Result<Response<pb::ListPendingResponse>, Status> {
        self.refuse()
    }
    async fn open_share(
        &self,
        _: Request<pb::OpenShareRequest>,
    ) -> Result<Response<pb::OpenShareResponse>, Status> {
        self.refuse()
    }
    async fn watch_pending(
        &self,
        _: Request<pb::WatchPendingRequest>,
    ) -> Result<Response<Self::WatchPendingStream>, Status> {
        self.refuse()
    }
    async fn ack(&self, _: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        self.refuse()
    }
    async fn recall(
        &self,
        _: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::RecallResponse>, Status> {
        self.refuse()
    }
    async fn list_sent(
        &self,
        _: Request<pb::ListSentRequest>,
    ) -> Result<Response<pb::ListSentResponse>, Status> {
        self.refuse()
    }
    async fn set_retention(
        &self,
        _: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::SetRetentionResponse>, Status> {
        self.refuse()
    }
    async fn logout(
        &self,
        _: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.refuse()
    }
    async fn get_policy(
        &self,
        _: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.refuse()
    }
    async fn set_policy(
        &self,
        _: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.refuse()
    }
    async fn edit_contacts(
        &self,
        _: Request<pb::EditListRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.refuse()
    }
    async fn edit_blocked(
        &self,
        _: Request<pb::EditListRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.refuse()
    }
    async fn report(
        &self,
        _: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        self.refuse()
    }
}

/// (d) Plaintext endpoints are refused before anything is sent: a
/// configured http:// endpoint, an http:// leader in a redirect, and an
/// http:// Raft URL in a join. The real https:// server keeps serving.
#[tokio::test]
async fn plaintext_endpoints_redirects_and_raft_urls_are_refused() {
    let auth = TestAuth::start().await;
    let sink = Sink::start().await;
    let http = format!("http://{}", sink.addr);

    // A configured endpoint.
    let target = AuthTarget {
        endpoints: vec![http.clone()],
        ..auth.target()
    };
    let err = AuthClient::connect(&target).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("{http:?}")) && err.contains("https://HOST:PORT"),
        "{err}"
    );

    // A leader redirect, from a server with a valid TLS identity.
    let keys = vmail_auth::datadir::load_keys(&auth.data_dir()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector_url = format!("https://{}", listener.local_addr().unwrap());
    let redirector = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(vmail_auth::tls::public_server(&keys))
            .unwrap()
            .add_service(pb::auth_server::AuthServer::new(HttpRedirector {
                leader: http.clone(),
            }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let target = AuthTarget {
        endpoints: vec![redirector_url],
        ..auth.target()
    };
    let mut c = AuthClient::connect(&target).await.unwrap();
    let err = c
        .register("mallory", &password("mallory"), &identity(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{http:?}")) && err.contains("vmail-leader"),
        "{err}"
    );
    redirector.abort();

    // A Raft URL: a join naming an http:// member.
    let tls = ClusterTls::of_member(&keys);
    let via = format!("https://{}", auth.raft_addr());
    let member = Member {
        name: "auth-evil".into(),
        api_url: format!("https://{}", sink.addr),
        raft_url: http.clone(),
    };
    let joined = tokio::time::timeout(
        Duration::from_secs(10),
        admin::request_join(
            &via,
            &tls,
            0xbad,
            &member,
            ed25519_dalek::SigningKey::from_bytes(&[7; 32])
                .verifying_key()
                .to_bytes(),
        ),
    )
    .await
    .expect("the join is answered at once");
    let err = joined.unwrap_err().to_string();
    assert!(
        err.contains("raft_url") && err.contains(&format!("{http:?}")),
        "{err}"
    );
    // And an admin command pointed at an http:// member URL.
    let err = admin::status(&http, &tls).await.unwrap_err().to_string();
    assert!(err.contains("https://HOST:PORT"), "{err}");
    assert_eq!(admin::status(&via, &tls).await.unwrap().members.len(), 1);

    assert_eq!(sink.connections(), 0, "nothing was sent in clear");
    // The real server still serves.
    register_and_login(&auth, "alice").await;
}

/// (e) An oversize locator is refused, naming its size and the cap; a
/// locator at the cap is accepted.
#[tokio::test]
async fn an_oversize_locator_is_refused() {
    let auth = TestAuth::start().await;
    let (mut bob, _, _) = register_and_login(&auth, "bob").await;
    register_and_login(&auth, "alice").await;
    let big = vec![7u8; MAX_LOCATOR_LEN + 1];
    let d = granted(&mut bob, deposit_for(&["alice"], &big)).await;
    let (c, msg) = code(bob.deposit(&d).await);
    assert_eq!(c, Code::InvalidArgument);
    assert_eq!(
        msg,
        format!(
            "locator: {} bytes, at most {MAX_LOCATOR_LEN} allowed",
            MAX_LOCATOR_LEN + 1
        )
    );
    let d = granted(&mut bob, deposit_for(&["alice"], &big[..MAX_LOCATOR_LEN])).await;
    bob.deposit(&d).await.unwrap();
    // The public API does not decode a request far past any valid one.
    let huge = vec![7u8; 1024 * 1024];
    let d = granted(&mut bob, deposit_for(&["alice"], &huge)).await;
    let (c, _) = code(bob.deposit(&d).await);
    assert_eq!(c, Code::OutOfRange);
}

/// (f) SetRetention and Recall floods meet the per-user write limit
/// (RESOURCE_EXHAUSTED with retry-after); other users' writes go through.
#[tokio::test]
async fn set_retention_and_recall_floods_are_limited_per_user() {
    const LIMIT: u64 = 10;
    let auth = TestAuth::start_with(
        |c| c.writes_per_minute_per_user = LIMIT,
        Arc::new(SystemClock),
    )
    .await;
    let (mut bob, _, _) = register_and_login(&auth, "bob").await;
    let (mut alice, _, _) = register_and_login(&auth, "alice").await;
    let d = granted(&mut bob, deposit_for(&["alice"], b"to recall")).await;
    let receipt = bob.deposit(&d).await.unwrap();

    let mut accepted = 0;
    let mut refused = None;
    for i in 0..100 {
        let r = if i % 2 == 0 {
            bob.set_retention(3600 + i).await.map(|_| ())
        } else {
            // Recalling again after the first is a cheap NOT_FOUND; each
            // is still a write attempt.
            match bob.recall(&receipt.voicemail_id).await {
                Err(ClientError::Server(s)) if s.code() == Code::NotFound => Ok(()),
                other => other.map(|_| ()),
            }
        };
        match r {
            Ok(()) => accepted += 1,
            Err(ClientError::Server(s)) if s.code() == Code::ResourceExhausted => {
                refused = Some(s);
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(accepted, LIMIT, "the burst is the per-minute limit");
    let s = refused.expect("the flood was refused");
    assert!(
        s.message().contains("writes_per_minute_per_user"),
        "{}",
        s.message()
    );
    assert!(s.metadata().get("retry-after").is_some());
    // Another user is not affected.
    assert_eq!(alice.set_retention(7200).await.unwrap(), 7200);
}
