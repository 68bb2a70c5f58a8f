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
