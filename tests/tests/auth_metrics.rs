//! The auth server's metrics and gRPC details on a real server: a
//! registration, a login and a wrong password counted and scraped over
//! HTTP from `/metrics`; garbage bytes in a call answered INVALID_ARGUMENT
//! (and counted so); an unknown method counted under "unknown"; and the
//! health service answering for itself by name.

use std::time::Duration;

use opaque_ke::{ClientLogin, CredentialFinalization};
use prost::bytes::{Buf, BufMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use vmail_proto::opaque::Suite;
use vmail_proto::pb;
use vmail_tests::{TestAuth, register_and_login};

/// Bytes as they are: the message body a raw call sends and receives.
#[derive(Debug, Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

/// Sends `body` as the one message of a unary call to `path`.
async fn raw_call(auth: &TestAuth, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(auth.channel().await);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Serves the server's metrics on a fresh port; returns it.
async fn metrics_endpoint(auth: &TestAuth) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let metrics = auth.service().metrics().clone();
    tokio::spawn(vmail_auth::metrics::serve_http(
        listener,
        metrics,
        std::future::pending(),
    ));
    port
}

/// `GET /metrics` over plain HTTP: the whole response.
async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .expect("scrape in time")
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// The value of the sample line `name` (labels included), 0 when absent.
fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// LoginStart as a real client sends it, then a LoginFinish whose
/// finalization is well formed but not made with the password: what a
/// client with the wrong password would send if it went on.
async fn wrong_password_login(auth: &TestAuth, user: &str) -> Status {
    let mut rpc = pb::auth_client::AuthClient::new(auth.channel().await);
    let start = ClientLogin::<Suite>::start(&mut rand::rngs::OsRng, b"not the password").unwrap();
    let resp = rpc
        .login_start(pb::LoginStartRequest {
            username: user.to_owned(),
            credential_request: start.message.serialize().to_vec(),
        })
        .await
        .expect("login start")
        .into_inner();
    let finalization = [64usize, 32]
        .into_iter()
        .map(|n| vec![7u8; n])
        .find(|b| CredentialFinalization::<Suite>::deserialize(b).is_ok())
        .expect("a finalization length the suite takes");
    rpc.login_finish(pb::LoginFinishRequest {
        login_id: resp.login_id,
        credential_finalization: finalization,
        inbox_key: vmail_proto::share::BoxSecret::generate().public().to_vec(),
        ..Default::default()
    })
    .await
    .expect_err("a forged finalization must not log in")
}

/// A LoginStart that is never finished.
async fn abandon_login(auth: &TestAuth, user: &str) -> Result<(), Status> {
    let mut rpc = pb::auth_client::AuthClient::new(auth.channel().await);
    let start = ClientLogin::<Suite>::start(&mut rand::rngs::OsRng, b"a guess").unwrap();
    rpc.login_start(pb::LoginStartRequest {
        username: user.to_owned(),
        credential_request: start.message.serialize().to_vec(),
    })
    .await
    .map(|_| ())
}

#[tokio::test]
async fn a_registration_logins_and_a_wrong_password_are_counted_and_scraped() {
    let auth = TestAuth::start().await;
    let port = metrics_endpoint(&auth).await;
    let before = scrape(port).await;
    assert!(
        before
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{before}"
    );
    assert_eq!(sample(&before, "vmail_auth_registrations_total"), 0.0);

    let (_client, _id, _session) = register_and_login(&auth, "alice").await;
    let refused = wrong_password_login(&auth, "alice").await;
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let text = scrape(port).await;
    assert_eq!(sample(&text, "vmail_auth_raft_has_leader"), 1.0, "{text}");
    assert_eq!(sample(&text, "vmail_auth_raft_is_leader"), 1.0);
    assert_eq!(sample(&text, "vmail_auth_raft_leader_changes_total"), 1.0);
    assert_eq!(sample(&text, "vmail_auth_registrations_total"), 1.0);
    assert_eq!(sample(&text, "vmail_auth_logins_succeeded_total"), 1.0);
    assert_eq!(sample(&text, "vmail_auth_certificates_issued_total"), 1.0);
    assert_eq!(
        sample(
            &text,
            "vmail_auth_logins_failed_total{reason=\"wrong_password\"}"
        ),
        1.0,
        "{text}"
    );
    // Register, BeginSession: two commands proposed, each appended and applied.
    assert!(sample(&text, "vmail_auth_raft_proposals_total") >= 2.0);
    assert!(sample(&text, "vmail_auth_raft_append_duration_seconds_count") >= 2.0);
    assert!(sample(&text, "vmail_auth_raft_apply_duration_seconds_count") >= 2.0);
    assert_eq!(
        sample(
            &text,
            "vmail_auth_grpc_requests_total{method=\"/vmail.auth.v1.Auth/LoginFinish\",code=\"OK\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "vmail_auth_grpc_requests_total{method=\"/vmail.auth.v1.Auth/LoginFinish\",code=\"UNAUTHENTICATED\"}"
        ),
        1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "vmail_auth_grpc_request_duration_seconds_count{method=\"/vmail.auth.v1.Auth/LoginStart\"}"
        ) >= 2.0,
        "{text}"
    );
    // No username anywhere in the scrape.
    assert!(!text.contains("alice"), "{text}");

    // A client that finds its password wrong stops after LoginStart: its
    // login is counted abandoned once the table drops it, here when bob's
    // fifth unfinished login displaces his first (4 per user). A sixth
    // attempt in the window is refused: bob is locked out.
    register_and_login(&auth, "bob").await;
    for _ in 0..5 {
        abandon_login(&auth, "bob").await.expect("login start");
    }
    let locked = abandon_login(&auth, "bob").await.expect_err("locked out");
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
    abandon_login(&auth, "bob")
        .await
        .expect_err("still locked out");
    let text = scrape(port).await;
    assert_eq!(
        sample(
            &text,
            "vmail_auth_logins_failed_total{reason=\"abandoned\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "vmail_auth_logins_failed_total{reason=\"locked_out\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "vmail_auth_login_lockouts_total"),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn garbage_is_invalid_argument_and_health_answers_for_itself() {
    let auth = TestAuth::start().await;
    let port = metrics_endpoint(&auth).await;

    // 100 bytes of 0xFF: a varint that never ends, so not a message.
    let garbage = raw_call(&auth, "/vmail.auth.v1.Auth/LoginStart", vec![0xFF; 100])
        .await
        .expect_err("garbage must be refused");
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
    assert!(garbage.message().contains("decode"), "{garbage:?}");

    let unknown = raw_call(&auth, "/no.such.Service/Method", Vec::new())
        .await
        .expect_err("no such method");
    assert_eq!(unknown.code(), Code::Unimplemented, "{unknown:?}");

    let mut health = HealthClient::new(auth.channel().await);
    for service in ["", "grpc.health.v1.Health", "vmail.auth.v1.Auth"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|s| panic!("{service:?}: {s:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let text = scrape(port).await;
    assert_eq!(
        sample(
            &text,
            "vmail_auth_grpc_requests_total{method=\"/vmail.auth.v1.Auth/LoginStart\",code=\"INVALID_ARGUMENT\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "vmail_auth_grpc_requests_total{method=\"unknown\",code=\"UNIMPLEMENTED\"}"
        ),
        1.0,
        "{text}"
    );
    assert!(!text.contains("no.such.Service"), "{text}");
    assert_eq!(
        sample(
            &text,
            "vmail_auth_grpc_requests_total{method=\"/grpc.health.v1.Health/Check\",code=\"OK\"}"
        ),
        3.0,
        "{text}"
    );
}
