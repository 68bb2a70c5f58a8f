//! The `vmail-auth` binary: `init` output and refusals; `serve` answering
//! health checks over TLS, logging JSON, and stopping cleanly on SIGTERM;
//! and a group formed, inspected and shrunk with `cluster credential`,
//! `join`, `cluster status` and `cluster remove`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn vmail_auth() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmail-auth"));
    c.env_remove("RUST_LOG").env_remove("VMAIL_LOG_FORMAT");
    c
}

/// Runs `vmail-auth init` for a server named auth-1 (internal port free).
fn init(dir: &std::path::Path, listen: &str) -> std::process::Output {
    let raft = format!("127.0.0.1:{}", free_port());
    vmail_auth()
        .args(["init", "--name", "auth-1", "--listen", listen])
        .args(["--raft-listen", &raft, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn init_prints_what_clients_need_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("srv");
    let out = init(&dir, "127.0.0.1:7443");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let ca = std::fs::canonicalize(dir.join("ca.pem")).unwrap();
    assert!(
        text.contains(&format!(
            "CA certificate (clients trust it): {}",
            ca.display()
        )),
        "{text}"
    );
    let key = std::fs::read_to_string(dir.join("cluster.pub")).unwrap();
    assert!(text.contains(key.trim()), "{text}");

    let before = std::fs::read(dir.join("cluster.key")).unwrap();
    let out = init(&dir, "127.0.0.1:7443");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty; refusing to overwrite"));
    assert_eq!(std::fs::read(dir.join("cluster.key")).unwrap(), before);

    let out = vmail_auth()
        .args([
            "serve",
            "--data-dir",
            tmp.path().join("nope").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vmail-auth init --data-dir"));
}

#[tokio::test]
async fn serve_answers_health_logs_json_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("srv");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let ok = init(&dir, &listen);
    assert!(ok.status.success());
    let child = vmail_auth()
        .args([
            "--log-format",
            "json",
            "serve",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("server never came up: {e}"),
        }
    };
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    // The container health check: the same service, through the binary.
    let health = vmail_auth()
        .args(["health", "--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(String::from_utf8_lossy(&health.stdout).contains("vmail.auth.v1.Auth is serving"));

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.status.success(), "exit status {:?}", exit.status);
    let lines: Vec<String> = BufReader::new(exit.stderr.as_slice())
        .lines()
        .map(Result::unwrap)
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l.starts_with('{') && l.ends_with('}'),
            "not a JSON log line: {l}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("SIGTERM: shutting down")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("vmail-auth stopped")),
        "{lines:?}"
    );
    let health = vmail_auth()
        .args(["health", "--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!health.status.success());
    assert!(
        String::from_utf8_lossy(&health.stderr).contains("not answering"),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
}

/// Runs a `vmail-auth` subcommand to completion; returns (success, stdout+stderr).
fn run(args: &[&str]) -> (bool, String) {
    let out = vmail_auth().args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Polls `cluster status` on `dir` until `want` holds (at most 60 s).
fn wait_status(dir: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, text) = run(&["cluster", "status", "--data-dir", dir]);
        if ok && want(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "cluster status never matched:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn a_group_is_formed_inspected_and_shrunk_with_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let d1 = tmp.path().join("auth-1");
    let d2 = tmp.path().join("auth-2");
    let (p1, r1) = (free_port(), free_port());
    let raft1 = format!("127.0.0.1:{r1}");
    let (ok, text) = run(&[
        "init",
        "--name",
        "auth-1",
        "--listen",
        &format!("127.0.0.1:{p1}"),
        "--raft-listen",
        &raft1,
        "--data-dir",
        d1.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let _auth1 = Kill(
        vmail_auth()
            .args(["serve", "--data-dir", d1.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let d1s = d1.to_str().unwrap();
    wait_status(d1s, |t| t.contains("state:    leader"));

    // A credential, then a join through auth-1.
    let cred = tmp.path().join("auth-2.pem");
    let (ok, text) = run(&[
        "cluster",
        "credential",
        "auth-2",
        "--data-dir",
        d1s,
        "--out",
        cred.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("--via https://127.0.0.1:{r1}")),
        "{text}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cred).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let (ok, text) = run(&[
        "cluster",
        "credential",
        "auth-2",
        "--data-dir",
        d1s,
        "--out",
        cred.to_str().unwrap(),
    ]);
    assert!(
        !ok && text.contains("auth-2.pem"),
        "never overwrites: {text}"
    );
    let via = format!("https://127.0.0.1:{r1}");
    let _auth2 = Kill(
        vmail_auth()
            .args([
                "join",
                "--via",
                &via,
                "--credential",
                cred.to_str().unwrap(),
            ])
            .args([
                "--name",
                "auth-2",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .args(["--raft-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--data-dir", d2.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let text = wait_status(d1s, |t| t.matches(" voter ").count() == 2);
    assert!(
        text.contains("auth-2") && text.contains("leader:   auth-1"),
        "{text}"
    );
    // The new member answers for itself with its own certificate.
    let text = wait_status(d2.to_str().unwrap(), |t| t.contains("leader:   auth-1"));
    assert!(text.contains("member:   auth-2"), "{text}");

    // A server of another group cannot join with its own certificate.
    let other = tmp.path().join("other");
    let (ok, _) = run(&[
        "init",
        "--name",
        "other",
        "--listen",
        "127.0.0.1:1",
        "--raft-listen",
        "127.0.0.1:2",
        "--data-dir",
        other.to_str().unwrap(),
    ]);
    assert!(ok);
    let foreign = tmp.path().join("foreign.pem");
    assert!(
        run(&[
            "cluster",
            "credential",
            "x",
            "--data-dir",
            other.to_str().unwrap(),
            "--out",
            foreign.to_str().unwrap(),
        ])
        .0
    );
    let d3 = tmp.path().join("auth-3");
    let (ok, text) = run(&[
        "join",
        "--via",
        &via,
        "--credential",
        foreign.to_str().unwrap(),
        "--name",
        "auth-3",
        "--data-dir",
        d3.to_str().unwrap(),
    ]);
    assert!(!ok, "a foreign credential must not join: {text}");
    assert!(text.contains(&via), "{text}");
    assert!(!d3.exists(), "a refused join creates nothing");

    // Remove auth-2; unknown names are refused by name.
    let (ok, text) = run(&["cluster", "remove", "nobody", "--data-dir", d1s]);
    assert!(
        !ok && text.contains("no member is named \"nobody\""),
        "{text}"
    );
    let (ok, text) = run(&["cluster", "remove", "auth-2", "--data-dir", d1s]);
    assert!(ok, "{text}");
    wait_status(d1s, |t| {
        t.matches(" voter ").count() == 1 && !t.contains("auth-2")
    });
}

/// `vmail-auth start` with an empty data dir founds the group, publishes
/// the clients' config, and answers an enrolment request; a second founder
/// with no data refuses to found another group beside it.
#[test]
fn start_founds_publishes_and_enrols_and_never_founds_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |p: &str| tmp.path().join(p).to_str().unwrap().to_owned();
    let (api, raft) = (free_port(), free_port());
    let start = |name: &str, members: &str, data: &str, enroll: &str| {
        let mut c = vmail_auth();
        c.args([
            "start",
            "--name",
            name,
            "--founder",
            name,
            "--members",
            members,
        ])
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
        .args(["--advertise-host", "localhost", "--data-dir", &path(data)])
        .args([
            "--enroll-dir",
            &path(enroll),
            "--public-dir",
            &path("public"),
        ]);
        c
    };
    let _server = Kill(
        start("localhost", "localhost", "data", "enroll")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tmp.path().join("public/client.toml").exists() {
        assert!(
            Instant::now() < deadline,
            "start never published client.toml"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = std::fs::read_to_string(tmp.path().join("public/client.toml")).unwrap();
    assert!(
        client.contains(&format!(r#"auth_endpoints = ["https://localhost:{api}"]"#)),
        "{client}"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("public/ca.pem")).unwrap(),
        std::fs::read(tmp.path().join("data/ca.pem")).unwrap()
    );
    assert!(tmp.path().join("enroll/founded").exists());
    let (ok, text) = run(&["health", "--data-dir", &path("data")]);
    assert!(ok, "{text}");

    // A server without data asks; the running member answers with a
    // credential of its group.
    std::fs::write(
        tmp.path().join("enroll/requests/auth-2.0123456789abcdef"),
        b"",
    )
    .unwrap();
    let answer = tmp
        .path()
        .join("enroll/credentials/auth-2.0123456789abcdef.pem");
    while !answer.exists() {
        assert!(
            Instant::now() < deadline,
            "the enrolment request was never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let bundle = std::fs::read_to_string(&answer).unwrap();
    assert!(bundle.ends_with(&std::fs::read_to_string(tmp.path().join("data/ca.pem")).unwrap()));

    // A founder that lost its data (and a fresh enrolment dir) must not
    // found a second group while a member answers.
    let out = start("other", "other,localhost", "data-2", "enroll-2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("localhost already serves a group"), "{err}");
    assert!(!tmp.path().join("data-2/config.toml").exists());
}
