//! The `vmail` binary on its own, with no auth server and no peer: the
//! errors a user meets before anything is reachable, and `vmail demo` when
//! the `vmail-devnet` program it hands the demo to is missing. The binary
//! against real servers is tested in `deploy/devnet/tests/cli.rs`.

use std::path::Path;
use std::process::Output;

fn vmail(home: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vmail"))
        .args(args)
        .env("VMAIL_HOME", home)
        .env("VMAIL_PASSWORD", "a long enough password")
        .env_remove("VMAIL_AUTH")
        .env_remove("VMAIL_AUTH_CONFIG")
        .env_remove("VMAIL_BOOTSTRAP")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running vmail")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn nothing_configured_gets_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();

    let o = vmail(home, &["login", "alice"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no auth server configured"),
        "{}",
        stderr(&o)
    );

    let o = vmail(home, &["inbox"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not logged in"), "{}", stderr(&o));

    let o = vmail(home, &["node", "status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no vmail peer is running on"),
        "{}",
        stderr(&o)
    );

    // Redundancy is checked before anything else.
    for (args, expect) in [
        (&["--erasure", "8/4"][..], "1 <= K < N <= 32"),
        (&["--erasure", "four"][..], "nor Rx"),
        (
            &["--replicas", "2", "--erasure", "2/4"][..],
            "cannot be used with",
        ),
    ] {
        let mut all = vec!["leave", "--to", "bob"];
        all.extend_from_slice(args);
        all.push("voicemail.wav");
        let o = vmail(home, &all);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(expect), "{args:?}: {}", stderr(&o));
    }
}

/// `vmail demo` and `vmail testnet` run `vmail-devnet`, found beside `vmail`
/// or on PATH; a `vmail` alone says what to build, and changes nothing.
#[test]
fn demo_without_vmail_devnet_says_what_to_build() {
    let tmp = tempfile::tempdir().unwrap();
    let alone = tmp.path().join("vmail");
    std::fs::copy(env!("CARGO_BIN_EXE_vmail"), &alone).unwrap();
    for args in [&["demo"][..], &["testnet", "up", "--dir", "tn"]] {
        // Another test's child forked while the copy was open for writing
        // holds it open a moment ("text file busy"): try again.
        let o = (0..50)
            .find_map(|_| {
                match std::process::Command::new(&alone)
                    .args(args)
                    .current_dir(tmp.path())
                    .env("PATH", tmp.path().join("no-such-dir"))
                    .output()
                {
                    Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        None
                    }
                    other => Some(other.unwrap()),
                }
            })
            .expect("the copy stayed busy for 5 s");
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.contains("runs the vmail-devnet program, which is neither beside")
                && err.contains("cargo build --release -p vmail-devnet"),
            "{args:?}: {err}"
        );
    }
    assert!(!tmp.path().join("tn").exists());
}

/// Runs `vmail node run ARGS` until `vmail sip status` answers (10 s at
/// most); returns the daemon and that answer.
fn daemon(home: &Path, args: &[&str]) -> (std::process::Child, Output) {
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_vmail"))
        .args(["node", "run"])
        .args(args)
        .env("VMAIL_HOME", home)
        .env_remove("VMAIL_BOOTSTRAP")
        .env_remove("VMAIL_NODE_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting vmail node run");
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let o = vmail(home, &["sip", "status"]);
        if !stderr(&o).contains("no vmail peer is running") {
            return (daemon, o);
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    panic!("the daemon's control socket never answered");
}

fn stop(mut daemon: std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn sip_password_and_status_from_the_cli() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let short = std::process::Command::new(env!("CARGO_BIN_EXE_vmail"))
        .args(["sip", "set-password"])
        .env("VMAIL_HOME", home)
        .env("VMAIL_PASSWORD", "short")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(short.status.code(), Some(1));
    assert!(
        stderr(&short).contains("at least 8 characters"),
        "{}",
        stderr(&short)
    );
    let file = home.join("node/sip.password");
    assert!(!file.exists());

    let o = vmail(home, &["sip", "set-password"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "a long enough password"
    );

    let (d, status) = daemon(home, &["--sip", "127.0.0.1:0"]);
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{}", stderr(&status));
    for want in [
        "sip            udp 127.0.0.1:",
        "user           (not logged in: run `vmail login USER`)",
        "password       set",
        "lamp           off (0 new, 0 old)",
        "registrations  0",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    stop(d);

    // A daemon without --sip says how to turn it on.
    let (d, status) = daemon(home, &[]);
    assert_eq!(status.status.code(), Some(1));
    assert!(
        stderr(&status).contains("--sip 127.0.0.1:5060"),
        "{}",
        stderr(&status)
    );
    stop(d);
}

/// Runs `vmail ARGS` with its stdout the write end of a pipe whose read
/// end is already closed, as `vmail ... | head -1` leaves it.
fn vmail_into_closed_pipe(home: &Path, args: &[&str]) -> Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    std::process::Command::new(env!("CARGO_BIN_EXE_vmail"))
        .args(args)
        .env("VMAIL_HOME", home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("running vmail")
}

fn json_stderr(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stderr)
        .unwrap_or_else(|e| panic!("stderr is not one JSON object ({e}): {}", stderr(o)))
}

/// Under --json an error is one JSON object on stderr and nothing on
/// stdout, usage errors included; a command without a JSON form says so.
#[test]
fn json_errors_are_json_on_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();

    let o = vmail(home, &["--json", "whoami"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = json_stderr(&o);
    assert!(
        e["error"].as_str().unwrap().contains("not logged in"),
        "{e}"
    );
    assert_eq!(e["exit_code"], 1);

    // The flag is global: after the subcommand too.
    let o = vmail(home, &["inbox", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        json_stderr(&o)["error"]
            .as_str()
            .unwrap()
            .contains("not logged in")
    );

    let o = vmail(
        home,
        &[
            "--json",
            "leave",
            "--to",
            "bob",
            "--erasure",
            "8/4",
            "x.wav",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = json_stderr(&o);
    assert!(
        e["error"].as_str().unwrap().contains("1 <= K < N <= 32"),
        "{e}"
    );
    assert_eq!(e["exit_code"], 2);

    for (args, name) in [
        (&["--json", "node", "run"][..], "vmail node run"),
        (&["--json", "sip", "set-password"], "vmail sip set-password"),
        (&["--json", "completions", "bash"], "vmail completions"),
        (&["--json", "demo"], "vmail demo"),
    ] {
        let o = vmail(home, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
        let e = json_stderr(&o);
        let msg = e["error"].as_str().unwrap();
        assert!(
            msg.contains(&format!(
                "`{name}` has no JSON output: run it without --json"
            )),
            "{args:?}: {msg}"
        );
    }
    // Nothing was started or written on the way.
    assert!(!home.join("node").exists());
    assert!(!home.join("node/sip.password").exists());
}

#[test]
fn completions_for_each_shell() {
    let tmp = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F _vmail"),
        ("zsh", "#compdef vmail"),
        ("fish", "complete -c vmail"),
    ] {
        let o = vmail(tmp.path(), &["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = String::from_utf8(o.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for sub in ["leave", "fetch", "inbox", "contacts", "json"] {
            assert!(script.contains(sub), "{shell}: {sub} missing");
        }
    }
    let o = vmail(tmp.path(), &["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid value 'tcsh'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn man_pages_for_vmail_and_each_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("share/man/man1");
    let o = vmail(tmp.path(), &["man", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for want in [
        "vmail.1",
        "vmail-leave.1",
        "vmail-fetch.1",
        "vmail-account-register.1",
        "vmail-account-set-retention.1",
        "vmail-node-status.1",
        "vmail-completions.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} missing: {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("vmail-man")), "{pages:?}");
    assert!(!pages.iter().any(|p| p.contains("help")), "{pages:?}");
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        said.trim(),
        format!("wrote {} man pages into {}", pages.len(), dir.display())
    );
    let leave = std::fs::read_to_string(dir.join("vmail-leave.1")).unwrap();
    assert!(
        leave.starts_with(".ie \\n(.g .ds Aq") || leave.contains(".TH vmail-leave 1"),
        "{leave}"
    );
    assert!(leave.contains("\\-\\-to"), "{leave}");
    assert!(
        leave.contains("\\-\\-json"),
        "global flags are on each page: {leave}"
    );
}

/// `vmail ... | head -1`: a reader that went away ends vmail quietly with
/// status 0, not with a panic about a broken pipe.
#[test]
fn a_closed_stdout_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man");
    for args in [
        &["completions", "bash"][..],
        &["man", dir.to_str().unwrap()],
        &["--help"],
    ] {
        let o = vmail_into_closed_pipe(tmp.path(), args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
    let (d, _) = daemon(tmp.path(), &["--sip", "127.0.0.1:0"]);
    for args in [&["status"][..], &["--json", "status"], &["sip", "status"]] {
        let o = vmail_into_closed_pipe(tmp.path(), args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(o.stderr.is_empty(), "{args:?}: {}", stderr(&o));
    }
    stop(d);
}

/// `status`, `node status`, `node health` and `sip status` as JSON, from a
/// real daemon.
#[test]
fn daemon_status_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let (d, _) = daemon(home, &["--sip", "127.0.0.1:0"]);
    let parse = |args: &[&str]| -> serde_json::Value {
        let o = vmail(home, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(o.stderr.is_empty(), "{args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&o.stdout)
            )
        })
    };
    let status = parse(&["--json", "status"]);
    let node_status = parse(&["node", "status", "--json"]);
    for s in [&status, &node_status] {
        let id: libp2p::PeerId = s["peer_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(id.to_string().len(), s["peer_id"].as_str().unwrap().len());
        assert!(!s["listen_addrs"].as_array().unwrap().is_empty(), "{s}");
        assert_eq!(s["role"], "peer", "{s}");
        assert_eq!(s["username"], serde_json::Value::Null, "{s}");
        assert_eq!(s["attached_to"], serde_json::Value::Null, "{s}");
        assert!(s["storage"]["quota_bytes"].as_u64().unwrap() > 0, "{s}");
        assert!(s["election"]["shortfalls"].is_array(), "{s}");
        assert!(s["refusals"].is_object(), "{s}");
    }
    assert_eq!(status["peer_id"], node_status["peer_id"]);

    let health = parse(&["--json", "node", "health"]);
    assert_eq!(health["serving"], true);
    assert!(health["socket"].as_str().unwrap().ends_with("control.sock"));

    let sip = parse(&["--json", "sip", "status"]);
    assert!(
        sip["listen"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{sip}"
    );
    assert_eq!(sip["user"], serde_json::Value::Null);
    assert_eq!(sip["password_set"], false);
    assert_eq!(sip["registrations"].as_array().unwrap().len(), 0);
    stop(d);
}
