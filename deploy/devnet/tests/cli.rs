//! The `vmail` binary end to end: account commands against a real auth
//! server on 127.0.0.1:0, their errors, `vmail status` explaining the
//! supernode election of a lone daemon, and `vmail demo` and `vmail testnet
//! tone`, which `vmail` hands to `vmail-devnet`. The errors `vmail` gives
//! without any server are tested in `node/tests/cli.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

mod common;

use vmail_auth::datadir::{self, InitOptions};
use vmail_devnet::local_auth::{self, Harness, LocalServer};
use vmail_node::auth_client::{AuthClient, Grant, GrantRequest, NewDeposit, VoicemailMeta};
use vmail_proto::grant::GrantedShard;
use vmail_proto::keys::SecretKey;
use vmail_proto::names::Recipients;

struct Env {
    _tmp: tempfile::TempDir,
    server: LocalServer,
    root: std::path::PathBuf,
}

async fn start() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("auth");
    datadir::init(&InitOptions::loopback(&dir)).unwrap();
    let server = LocalServer::start(&dir, &Harness::default()).await.unwrap();
    Env {
        root: tmp.path().to_owned(),
        _tmp: tmp,
        server,
    }
}

impl Env {
    /// A vmail home for `user` with a config.toml pointing at the server.
    fn home(&self, user: &str) -> std::path::PathBuf {
        let home = self.root.join(format!("home-{user}"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("ca.pem"), &self.server.ca_pem).unwrap();
        std::fs::write(
            home.join("config.toml"),
            format!(
                // A relative ca_cert is found in the home, wherever vmail runs.
                "auth_endpoints = [{:?}]\nca_cert = \"ca.pem\"\ncluster_key = {:?}\n",
                self.server.endpoint,
                hex::encode(self.server.cluster_key.as_bytes())
            ),
        )
        .unwrap();
        home
    }
}

async fn vmail(home: &Path, password: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(common::vmail());
    cmd.args(args)
        .env("VMAIL_HOME", home)
        .env_remove("VMAIL_PASSWORD")
        .env_remove("VMAIL_AUTH")
        .env_remove("VMAIL_CA")
        .env_remove("VMAIL_CLUSTER_KEY")
        .env_remove("VMAIL_AUTH_CONFIG")
        .stdin(std::process::Stdio::null());
    if let Some(p) = password {
        cmd.env("VMAIL_PASSWORD", p);
    }
    cmd.output().await.unwrap()
}

/// A grant request for one 4 KiB shard of a voicemail to alice.
fn grant_for_alice() -> GrantRequest {
    GrantRequest {
        recipients: Recipients::parse(["alice"]).unwrap(),
        message_id: vmail_proto::random_bytes(),
        data_shards: 1,
        shards: vec![GrantedShard {
            len: 4096,
            sha256: vmail_proto::random_bytes(),
        }],
        holders: vec![libp2p::PeerId::random().to_bytes()],
        expires_at: 0,
        sender: vmail_node::auth_client::SenderVisibility::Shown,
    }
}

/// Deposits a 4 KiB voicemail's key for alice under `grant`, split among
/// its share keys as bob's client does; returns the voicemail id.
async fn deposit_for_alice(bob: &mut AuthClient, grant: &Grant) -> [u8; 16] {
    bob.deposit(&NewDeposit {
        grant_serial: grant.grant.body.serial,
        share_keys: grant.share_keys.clone(),
        request_id: vmail_proto::random_bytes(),
        recipients: Recipients::parse(["alice"]).unwrap(),
        locator: Vec::new(),
        session_key: SecretKey::random(),
        meta: VoicemailMeta {
            size: 4096,
            content_type: "audio/wav".into(),
            duration_ms: 1000,
            expires_at: 0,
        },
    })
    .await
    .unwrap()
    .voicemail_id
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn account_commands_and_inbox() {
    let env = start().await;
    let home = env.home("alice");
    let pw = Some("alice's password");

    let o = vmail(&home, pw, &["account", "register", "alice"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("registered alice"));
    let pw_file = env.root.join("alice.pw");
    std::fs::write(&pw_file, "alice's password\n").unwrap();
    let o = vmail(
        &home,
        None,
        &[
            "login",
            "alice",
            "--password-file",
            pw_file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["identities/alice.key", "session.toml"] {
        let mode = std::fs::metadata(home.join("keystore").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let o = vmail(&home, None, &["whoami"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("user           alice"),
        "{}",
        stdout(&o)
    );
    let o = vmail(&home, None, &["inbox"]).await;
    assert_eq!(stdout(&o).trim(), "no voicemail waiting for alice");

    // Bob, on his own client, leaves alice a voicemail key.
    let target = local_auth::target(&env.server);
    let mut bob = AuthClient::connect(&target).await.unwrap();
    let bob_id = ed25519_dalek::SigningKey::from_bytes(&vmail_proto::random_bytes());
    bob.register("bob", b"bob's password", &bob_id, None)
        .await
        .unwrap();
    bob.login("bob", b"bob's password", &bob_id, &[])
        .await
        .unwrap();
    let grant = bob.request_grant(&grant_for_alice()).await.unwrap();
    let voicemail_id = deposit_for_alice(&mut bob, &grant).await;
    let o = vmail(&home, None, &["inbox"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let row = out
        .lines()
        .find(|l| l.starts_with(&hex::encode(voicemail_id)))
        .unwrap_or_else(|| panic!("no row for the voicemail in:\n{out}"));
    assert!(
        row.contains("bob") && row.contains("4096 B") && row.contains("audio/wav"),
        "{row}"
    );

    let o = vmail(&home, None, &["logout"]).await;
    assert!(stdout(&o).contains("logged out alice"), "{}", stdout(&o));
    let o = vmail(&home, None, &["whoami"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not logged in"), "{}", stderr(&o));

    // Logging in again with --rotate-identity certifies a new key.
    let old_key = std::fs::read(home.join("keystore/identities/alice.key")).unwrap();
    let o = vmail(&home, pw, &["login", "alice", "--rotate-identity"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("(rotated)"));
    assert_ne!(
        std::fs::read(home.join("keystore/identities/alice.key")).unwrap(),
        old_key
    );
    env.server.stop().await.unwrap();
}

/// `--auth-config` reads a published client.toml where it lies, with its
/// CA beside it, instead of the home's config.toml; a missing one is named.
#[tokio::test(flavor = "multi_thread")]
async fn an_auth_config_file_elsewhere_is_used() {
    let env = start().await;
    let published = env.home("published");
    std::fs::rename(published.join("config.toml"), published.join("client.toml")).unwrap();
    let config = published.join("client.toml");
    let home = env.root.join("home-dave");
    std::fs::create_dir_all(&home).unwrap();
    let flag = ["--auth-config", config.to_str().unwrap()];
    let o = vmail(
        &home,
        Some("dave's password"),
        &[&["account", "register", "dave"][..], &flag].concat(),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    // Without it, the empty home names what is missing.
    let o = vmail(&home, Some("dave's password"), &["login", "dave"]).await;
    assert!(
        stderr(&o).contains("no auth server configured"),
        "{}",
        stderr(&o)
    );
    let missing = env.root.join("nowhere.toml");
    let o = vmail(
        &home,
        Some("dave's password"),
        &["login", "dave", "--auth-config", missing.to_str().unwrap()],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("{}: No such file", missing.display())),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_error() {
    let env = start().await;
    let home = env.home("alice");
    let o = vmail(
        &home,
        Some("right password"),
        &["account", "register", "alice"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));

    let o = vmail(&home, Some("wrong password"), &["login", "alice"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim(), "error: wrong password for \"alice\"");
    assert!(!home.join("keystore/session.toml").exists());

    let o = vmail(&home, Some("whatever pw"), &["login", "carol"]).await;
    assert_eq!(stderr(&o).trim(), "error: unknown user \"carol\"");

    let o = vmail(
        &home,
        Some("right password"),
        &["account", "register", "Bad Name"],
    )
    .await;
    assert!(
        stderr(&o).contains("may only contain lowercase letters"),
        "{}",
        stderr(&o)
    );

    let o = vmail(&home, Some("short"), &["account", "register", "dave"]).await;
    assert!(
        stderr(&o).contains("at least 8 characters"),
        "{}",
        stderr(&o)
    );

    let o = vmail(&home, None, &["login", "alice"]).await;
    assert!(stderr(&o).contains("VMAIL_PASSWORD"), "{}", stderr(&o));

    env.server.stop().await.unwrap();

    // A dead server is named, with what to check.
    let o = vmail(&home, Some("right password"), &["login", "alice"]).await;
    assert!(
        stderr(&o).contains("cannot reach any auth server"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_runs_the_protocol_and_exits_zero() {
    let o = tokio::process::Command::new(common::vmail())
        .arg("demo")
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.matches("SHA-256 matches the original").count(),
        2,
        "{out}"
    );
    assert!(out.contains("is killed without warning"), "{out}");
    assert!(out.contains("RS(4,8) over the ciphertext"), "{out}");
    assert!(out.contains("regenerated at"), "{out}");
    assert!(out.contains("erases the session key's shares"), "{out}");
    assert!(out.contains("split 2-of-3 among the auth servers"), "{out}");
    assert!(out.contains("no peer holds any shard"), "{out}");
    assert!(out.contains("demo finished"), "{out}");
}

/// `vmail testnet tone` writes a WAV that hound reads back at the length
/// asked for, and refuses to overwrite a file or to make an empty one.
#[tokio::test]
async fn testnet_tone_writes_a_playable_wav_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tone.wav");
    let path = out.to_str().unwrap();
    let o = vmail(
        tmp.path(),
        None,
        &["testnet", "tone", path, "--seconds", "3"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let written = std::fs::read(&out).unwrap();
    let info = vmail_node::core::wav::inspect(&written).expect("hound reads it");
    assert_eq!(
        (info.duration_ms, info.sample_rate, info.channels),
        (3000, 16_000, 1)
    );

    let o = vmail(tmp.path(), None, &["testnet", "tone", path]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("never overwritten"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), written);
    let o = vmail(
        tmp.path(),
        None,
        &["testnet", "tone", "x.wav", "--seconds", "0"],
    )
    .await;
    assert!(
        stderr(&o).contains("--seconds must be 1 to 3600"),
        "{}",
        stderr(&o)
    );
}

/// Starts `vmail node run` for `home` with `env` set, and waits (10 s at
/// most) until `vmail status` shows its first advert judged.
async fn daemon_status(home: &Path, env: &[(&str, &Path)]) -> (tokio::process::Child, String) {
    let mut cmd = tokio::process::Command::new(common::vmail());
    cmd.args(["node", "run"])
        .env("VMAIL_HOME", home)
        .env_remove("VMAIL_BOOTSTRAP")
        .env_remove("VMAIL_NODE_CONFIG")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let daemon = cmd.spawn().unwrap();
    let mut last = String::new();
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let out = vmail(home, None, &["status"]).await;
        last = stdout(&out);
        if last.contains("  this peer    ") && !last.contains("has not advertised yet") {
            return (daemon, last);
        }
    }
    panic!("no explanation in `vmail status` after 10 s:\n{last}");
}

async fn stop(mut daemon: tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(daemon.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(daemon.wait().await.unwrap().success());
}

/// A peer alone, with the default node.toml, says why no supernode is
/// elected; a node.toml named by VMAIL_NODE_CONFIG that declares the peer
/// private is read and named as the reason.
#[tokio::test(flavor = "multi_thread")]
async fn status_says_why_no_supernode_is_elected() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (daemon, status) = daemon_status(&home, &[]).await;
    for want in [
        "reachability: private (AutoNAT has not confirmed a public address): never stands",
        "supernodes     0 elected from 0 advertising peers",
        "attached to    (no supernode yet)",
        "  qualified    0 of 0 advertising peers meet every threshold",
        "  this peer    does not stand, so does not advertise: not publicly reachable; bandwidth 0 kbit/s is below \
         min_bandwidth_kbps = 10000; uptime ",
        " s is below min_uptime_secs = 300",
        "(0 means undeclared: set supernode.bandwidth_kbps in node.toml)",
        "  dial checks  0 of 0 other advertising peers confirmed public by dialing them, \
         0 refused as undialable",
    ] {
        assert!(status.contains(want), "{want:?} missing from:\n{status}");
    }
    // It keeps its advert back, so nobody's advert misses anything.
    assert!(!status.contains("  missing"), "{status}");
    stop(daemon).await;

    let config = tmp.path().join("private.toml");
    std::fs::write(
        &config,
        "[supernode]\npublic = false\nbandwidth_kbps = 50000\nmin_uptime_secs = 0\n\
         min_cpu_cores = 1\nmin_memory_mib = 1\n",
    )
    .unwrap();
    let (daemon, status) = daemon_status(&home, &[("VMAIL_NODE_CONFIG", &config)]).await;
    for want in [
        "reachability: private (declared in node.toml): never stands",
        "  this peer    does not stand, so does not advertise: not publicly reachable\n",
    ] {
        assert!(status.contains(want), "{want:?} missing from:\n{status}");
    }
    assert!(!status.contains("0 means undeclared"), "{status}");
    stop(daemon).await;
}

/// Spam control from the CLI: a stranger's voicemail is flagged "unknown
/// caller", and `policy`, `contacts`, `block`, `unblock`, `report` and
/// `whoami` work against a real server, refusing bad input with nothing
/// changed.
#[tokio::test(flavor = "multi_thread")]
async fn policy_contacts_blocks_and_reports_from_the_cli() {
    let env = start().await;
    let home = env.home("alice");
    let pw = Some("alice's password");
    assert!(
        vmail(&home, pw, &["account", "register", "alice"])
            .await
            .status
            .success()
    );
    assert!(vmail(&home, pw, &["login", "alice"]).await.status.success());

    // Bob, a stranger, leaves alice a voicemail key: a first contact.
    let target = local_auth::target(&env.server);
    let mut bob = AuthClient::connect(&target).await.unwrap();
    let bob_id = ed25519_dalek::SigningKey::from_bytes(&vmail_proto::random_bytes());
    bob.register("bob", b"bob's password", &bob_id, None)
        .await
        .unwrap();
    bob.login("bob", b"bob's password", &bob_id, &[])
        .await
        .unwrap();
    let granted = bob.request_grant(&grant_for_alice()).await.unwrap();
    assert_eq!(granted.first_contact.len(), 1);
    assert_eq!(granted.recipients.to_strings(), ["alice"]);
    let id = hex::encode(deposit_for_alice(&mut bob, &granted).await);
    let o = vmail(&home, None, &["inbox"]).await;
    assert!(stdout(&o).contains("unknown caller"), "{}", stdout(&o));

    let o = vmail(&home, None, &["policy", "show"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("contacts+first-contact"),
        "{}",
        stdout(&o)
    );
    let o = vmail(
        &home,
        None,
        &["policy", "set", "contacts", "--accept-anonymous"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = vmail(&home, None, &["policy", "show"]).await;
    assert!(stdout(&o).contains("contacts"), "{}", stdout(&o));
    let o = vmail(&home, None, &["contacts", "add", "bob"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = vmail(&home, None, &["contacts", "list"]).await;
    assert!(
        stdout(&o).lines().any(|l| l.trim() == "bob"),
        "{}",
        stdout(&o)
    );

    // Bad input is refused and changes nothing.
    for (args, want) in [
        (vec!["contacts", "add", "nobody"], "nobody"),
        (vec!["block", "alice"], "is you"),
        (vec!["contacts", "remove", "carol"], "carol"),
        (vec!["policy", "set"], "nothing to change"),
        (vec!["report", "zz"], "zz"),
    ] {
        let o = vmail(&home, None, &args).await;
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    let o = vmail(&home, None, &["contacts", "list"]).await;
    assert!(
        stdout(&o).lines().any(|l| l.trim() == "bob"),
        "{}",
        stdout(&o)
    );

    // A report blocks bob (and takes him off the contacts); unblock undoes
    // the block.
    let o = vmail(&home, None, &["report", &id]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("bob is now blocked"), "{}", stdout(&o));
    let o = vmail(&home, None, &["contacts", "list"]).await;
    assert!(stdout(&o).contains("blocked: bob"), "{}", stdout(&o));
    let e = bob.request_grant(&grant_for_alice()).await.unwrap_err();
    assert!(
        e.to_string().contains("does not accept voicemail from you"),
        "{e}"
    );
    let o = vmail(&home, None, &["unblock", "bob"]).await;
    assert!(o.status.success(), "{}", stderr(&o));

    // whoami shows each sender quota.
    let o = vmail(&home, None, &["whoami"]).await;
    let out = stdout(&o);
    for q in [
        "voicemails_per_hour",
        "new_recipients_per_day",
        "outstanding_bytes",
    ] {
        assert!(out.contains(q), "{out}");
    }
    env.server.stop().await.unwrap();
}
