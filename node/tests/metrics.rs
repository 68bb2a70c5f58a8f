//! `vmail node run --metrics ADDR` as a user meets it: the daemon says
//! where it serves, `/metrics` answers in the Prometheus text format with
//! our series and libp2p's, SIGTERM ends it with a word on the hand-off,
//! and an address in use or malformed stops it at once, naming the flag.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn node_run(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmail"));
    c.args(["node", "run"])
        .args(args)
        .env("VMAIL_HOME", home)
        .env_remove("VMAIL_BOOTSTRAP")
        .env_remove("VMAIL_NODE_CONFIG")
        .env_remove("VMAIL_AUTH")
        .env_remove("VMAIL_AUTH_CONFIG")
        .stdin(Stdio::null());
    c
}

/// Reads the daemon's stdout until the line that names the metrics
/// address; returns it and the lines so far.
fn metrics_line(daemon: &mut Child) -> (String, Vec<String>) {
    let out = daemon.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(out).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("stdout");
        seen.push(line.clone());
        if let Some(rest) = line.trim().strip_prefix("metrics on http://") {
            let addr = rest.trim_end_matches("/metrics").to_owned();
            // Keep draining stdout so the daemon never blocks on it.
            std::thread::spawn(move || for _ in lines {});
            return (addr, seen);
        }
    }
    panic!("no metrics line in: {seen:?}");
}

fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: vmail\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn node_run_serves_metrics_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut daemon = node_run(tmp.path(), &["--metrics", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting vmail node run");
    let (addr, _) = metrics_line(&mut daemon);
    let answer = get(&addr, "/metrics");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for series in [
        "# TYPE vmail_holder_quota_bytes gauge",
        "vmail_holder_objects 0",
        "# TYPE vmail_repair_shards_regenerated counter",
        "# TYPE vmail_supernode_role gauge",
        "libp2p_swarm_",
    ] {
        assert!(body.contains(series), "{series} missing from:\n{body}");
    }
    assert!(get(&addr, "/").starts_with("HTTP/1.1 404"));
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn a_metrics_address_in_use_or_malformed_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = node_run(tmp.path(), &["--metrics", &addr])
        .output()
        .expect("running vmail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot serve metrics on {addr} (--metrics")),
        "{err}"
    );

    let o = node_run(tmp.path(), &["--metrics", "9101"])
        .output()
        .expect("running vmail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--metrics <ADDR>"), "{err}");

    let o = node_run(tmp.path(), &["--handoff-timeout", "soon"])
        .output()
        .expect("running vmail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--handoff-timeout <DURATION>"), "{err}");
}
