//! The `vmail` binary against `vmail testnet up` (one auth server and a
//! few peers, in background processes, on loopback): the harness shared by
//! `testnet.rs` and `web.rs`. Each test binary uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

pub(crate) const PASSWORD: &str = "a long enough password";

pub(crate) fn vmail_bin() -> PathBuf {
    let vmail = PathBuf::from(env!("CARGO_BIN_EXE_vmail"));
    let devnet = vmail.with_file_name("vmail-devnet");
    assert!(
        devnet.exists(),
        "{} is missing: build it with `cargo build -p vmail-devnet` (`cargo test --workspace` builds it)",
        devnet.display()
    );
    vmail
}

/// A testnet in a temporary dir, stopped on drop.
pub(crate) struct Testnet {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) env: Vec<(String, String)>,
}

impl Testnet {
    pub(crate) fn up(peers: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(vmail_bin())
            .args(["testnet", "up", "--peers", &peers.to_string()])
            .args(["--auth-servers", "1", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "testnet up: {}", stderr(&out));
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { dir, env }
    }

    /// A new, empty vmail home.
    pub(crate) fn home(&self, name: &str) -> PathBuf {
        let home = self.dir.path().join("homes").join(name);
        std::fs::create_dir_all(&home).unwrap();
        home
    }

    pub(crate) fn command(&self, home: &Path, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(vmail_bin());
        cmd.args(args)
            .env("VMAIL_HOME", home)
            .env("VMAIL_PASSWORD", PASSWORD)
            .env_remove("VMAIL_AUTH_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    pub(crate) fn vmail(&self, home: &Path, args: &[&str]) -> Output {
        self.command(home, args).output().unwrap()
    }

    /// `vmail --json ARGS`, which must succeed with nothing on stderr and
    /// one JSON document on stdout.
    pub(crate) fn json(&self, home: &Path, args: &[&str]) -> Value {
        let all: Vec<&str> = std::iter::once("--json")
            .chain(args.iter().copied())
            .collect();
        let o = self.vmail(home, &all);
        assert!(o.status.success(), "vmail {all:?}: {}", stderr(&o));
        assert!(o.stderr.is_empty(), "vmail {all:?}: {}", stderr(&o));
        let text = String::from_utf8(o.stdout).unwrap();
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{all:?}: not JSON ({e}): {text}"))
    }

    /// `vmail ARGS` in text, which must succeed; its stdout.
    pub(crate) fn ok(&self, home: &Path, args: &[&str]) -> String {
        let o = self.vmail(home, args);
        assert!(o.status.success(), "vmail {args:?}: {}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    /// Registers and logs in `user` from `home`.
    pub(crate) fn account(&self, home: &Path, user: &str) {
        self.ok(home, &["account", "register", user]);
        self.ok(home, &["login", user]);
    }

    pub(crate) fn tone(&self, seconds: u32) -> PathBuf {
        let path = self.dir.path().join(format!("tone-{seconds}.wav"));
        if !path.exists() {
            let o = self.vmail(
                self.dir.path(),
                &[
                    "testnet",
                    "tone",
                    path.to_str().unwrap(),
                    "--seconds",
                    &seconds.to_string(),
                ],
            );
            assert!(o.status.success(), "{}", stderr(&o));
        }
        path
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = std::process::Command::new(vmail_bin())
            .args(["testnet", "down", "--dir"])
            .arg(self.dir.path())
            .output();
    }
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Starts `vmail node run` on `home`, and waits until it knows `peers`
/// peers.
pub(crate) fn daemon(net: &Testnet, home: &Path, peers: u64) -> Child {
    let mut child = net
        .command(home, &["node", "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        std::thread::sleep(Duration::from_millis(100));
        let o = net.vmail(home, &["--json", "status"]);
        if o.status.success() {
            let s: Value = serde_json::from_slice(&o.stdout).unwrap();
            if s["routing_peers"].as_u64().unwrap_or(0) >= peers {
                return child;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the daemon on {} never knew {peers} peers", home.display());
}
