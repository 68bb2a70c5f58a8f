//! The `vmail-auth` binary's operator surface: `serve --metrics` (the
//! endpoint, and an address in use refused naming the flag), a server
//! created on port 0 recording its real ports so `health` and `cluster
//! status` find it, `cluster status --json` and its errors, the public URL
//! given where the internal one belongs, and `completions` and `man`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn vmail_auth() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmail-auth"));
    c.env_remove("RUST_LOG")
        .env_remove("VMAIL_LOG_FORMAT")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    c
}

/// Runs a subcommand to completion: (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = vmail_auth().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops the server it holds (SIGTERM to its pid) when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// `GET path` over plain HTTP/1.1: (status line, headers and body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (status, rest) = text.split_once("\r\n").unwrap();
    (status.to_owned(), rest.to_owned())
}

/// The value of the sample line `name` (with its labels) in a scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Inits a server on port 0 (both ports) in `dir` and serves it with
/// `--metrics 127.0.0.1:metrics`; waits until `health` answers.
fn serve_on_port_zero(dir: &Path, metrics: u16) -> Kill {
    let d = dir.to_str().unwrap();
    let (ok, _, err) = run(&[
        "init",
        "--name",
        "auth-1",
        "--listen",
        "127.0.0.1:0",
        "--raft-listen",
        "127.0.0.1:0",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{err}");
    let child = vmail_auth()
        .args(["serve", "--data-dir", d, "--metrics"])
        .arg(format!("127.0.0.1:{metrics}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Kill(child);
    // `health --data-dir` reads the address from config.toml: it works
    // only once the server recorded the port it bound in place of 0.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = run(&["health", "--data-dir", d]);
        if ok {
            assert!(out.contains("is serving"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "health never passed: {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

#[test]
fn port_zero_is_recorded_metrics_are_served_and_status_speaks_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("srv");
    let d = dir.to_str().unwrap();
    let metrics = free_port();
    let _server = serve_on_port_zero(&dir, metrics);

    // Port 0 is gone from both files, replaced by the bound ports.
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let client = std::fs::read_to_string(dir.join("client.toml")).unwrap();
    assert!(!config.contains(":0\""), "{config}");
    assert!(!client.contains(":0\""), "{client}");
    let public = client
        .split('"')
        .find(|s| s.starts_with("https://127.0.0.1:"))
        .unwrap()
        .to_owned();
    assert!(
        config.contains(&format!("listen = \"{}\"", &public["https://".len()..])),
        "{config}\n{client}"
    );

    // The metrics endpoint, once the founder knows it leads.
    let deadline = Instant::now() + Duration::from_secs(30);
    let scrape = loop {
        let (status, body) = http_get(metrics, "/metrics");
        assert!(status.ends_with("200 OK"), "{status}");
        if sample(&body, "vmail_auth_raft_is_leader") == Some(1.0) {
            break body;
        }
        assert!(Instant::now() < deadline, "never leader:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        scrape
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{scrape}"
    );
    assert_eq!(sample(&scrape, "vmail_auth_raft_has_leader"), Some(1.0));
    assert_eq!(
        sample(&scrape, "vmail_auth_raft_leader_changes_total"),
        Some(1.0)
    );
    assert!(sample(&scrape, "vmail_auth_raft_term").unwrap() >= 1.0);
    assert!(sample(&scrape, "vmail_auth_raft_applied_index").unwrap() >= 1.0);
    assert!(
        scrape.contains("# HELP vmail_auth_raft_has_leader "),
        "{scrape}"
    );
    // The health checks above went through the public API's layer.
    assert!(
        sample(
            &scrape,
            "vmail_auth_grpc_requests_total{method=\"/grpc.health.v1.Health/Check\",code=\"OK\"}"
        )
        .unwrap()
            >= 1.0,
        "{scrape}"
    );
    let (status, _) = http_get(metrics, "/nothing");
    assert!(status.contains("404"), "{status}");

    // A second server on the same metrics address fails at start, naming
    // the flag and the address.
    let (ok, _, err) = run(&[
        "serve",
        "--data-dir",
        d,
        "--listen",
        "127.0.0.1:0",
        "--raft-listen",
        "127.0.0.1:0",
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!("--metrics 127.0.0.1:{metrics}")) && err.contains("another process"),
        "{err}"
    );
    let (ok, _, err) = run(&["serve", "--data-dir", d, "--metrics", "localhost"]);
    assert!(!ok);
    assert!(err.contains("--metrics"), "{err}");

    // cluster status --json: one object of the documented shape.
    let (ok, out, err) = run(&["cluster", "status", "--data-dir", d, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "leader");
    assert_eq!(v["leader"], "auth-1");
    assert_eq!(v["member"]["name"], "auth-1");
    assert_eq!(v["member"]["id"].as_str().unwrap().len(), 16);
    assert_eq!(v["member"]["api_url"], public.as_str());
    assert!(v["term"].as_u64().unwrap() >= 1);
    assert!(v["last_applied"].as_u64().unwrap() >= 1);
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["role"], "voter");
    assert_eq!(members[0]["name"], "auth-1");
    assert!(
        v["group_key"].is_null(),
        "one server makes no group key: {v}"
    );
    let (ok, out, err) = run(&["cluster", "status", "--data-dir", d]);
    assert!(ok, "{err}");
    assert!(out.contains("group key: none yet"), "{out}");

    // The public URL where the internal one belongs says so.
    let (ok, _, err) = run(&["cluster", "status", "--data-dir", d, "--url", &public]);
    assert!(!ok);
    assert!(
        err.contains(&public) && err.contains("public API") && err.contains("internal (Raft)"),
        "{err}"
    );
    // A transport error carries its causes, and in --json mode it is a
    // JSON object on stderr.
    let closed = format!("https://127.0.0.1:{}", free_port());
    let out = vmail_auth()
        .args([
            "cluster",
            "status",
            "--data-dir",
            d,
            "--json",
            "--url",
            &closed,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let e: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(e["exit_code"], 1);
    assert!(!e["causes"].as_array().unwrap().is_empty(), "{e}");
    let e = e["error"].as_str().unwrap();
    assert!(
        e.contains(&closed) && e.contains("Connection refused"),
        "{e}"
    );
}

#[test]
fn completions_name_the_subcommands_and_man_writes_pages() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = run(&["completions", shell]);
        assert!(ok, "{err}");
        for sub in ["serve", "start", "health", "cluster", "status"] {
            assert!(out.contains(sub), "{shell}: no {sub} in\n{out}");
        }
    }
    let (ok, _, err) = run(&["completions", "tcsh"]);
    assert!(!ok);
    assert!(err.contains("tcsh"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(&["man", tmp.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("man pages"), "{out}");
    for (page, title) in [
        ("vmail-auth.1", ".TH vmail-auth "),
        ("vmail-auth-serve.1", ".TH vmail-auth-serve "),
        (
            "vmail-auth-cluster-status.1",
            ".TH vmail-auth-cluster-status ",
        ),
    ] {
        let text = std::fs::read_to_string(tmp.path().join(page)).unwrap();
        // clap_mangen puts a two-line quote-string preamble before `.TH`.
        assert!(
            text.lines().take(3).any(|l| l.starts_with(title)),
            "{page}:\n{text}"
        );
    }
    assert!(tmp.path().join("vmail-auth-serve.1").exists());
    assert!(!tmp.path().join("vmail-auth-man.1").exists());
    let serve = std::fs::read_to_string(tmp.path().join("vmail-auth-serve.1")).unwrap();
    assert!(serve.contains("metrics"), "{serve}");
}
