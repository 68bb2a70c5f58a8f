//! The `vmail-auth` binary: `init` output and refusals, and `serve` answering
//! health checks over TLS, logging JSON, and stopping cleanly on SIGTERM.

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

/// Runs `vmail-auth init` for a server named auth-1.
fn init(dir: &std::path::Path, listen: &str) -> std::process::Output {
    vmail_auth()
        .args(["init", "--name", "auth-1", "--listen", listen, "--data-dir"])
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
}
