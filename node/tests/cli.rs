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
        let o = std::process::Command::new(&alone)
            .args(args)
            .current_dir(tmp.path())
            .env("PATH", tmp.path().join("no-such-dir"))
            .output()
            .unwrap();
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
