//! A full disk under the auth server: deposits are refused with a clear
//! error, nothing acknowledged is lost, and once space is freed deposits
//! work again without a restart.
//!
//! The data dir lives on a small tmpfs. Mounting needs root, which CI and
//! the development machines have; elsewhere the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use tonic::Code;
use vmail_auth::datadir::{self, InitOptions};
use vmail_devnet::local_auth::{self, Harness, LocalServer};
use vmail_node::auth_client::{AuthClient, NewDeposit, VoicemailMeta};
use vmail_proto::keys::SecretKey;
use vmail_proto::names::Recipients;
use vmail_tests::{granted, identity, password, try_granted};

/// A tmpfs mount that is unmounted when dropped, even if the test panics.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Self(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a server task still holding a file cannot keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A deposit to alice with a locator of `locator_len` bytes, before its
/// storage grant.
fn deposit(locator_len: usize) -> NewDeposit {
    NewDeposit {
        grant_serial: 0,
        request_id: vmail_proto::random_bytes(),
        recipients: Recipients::parse(["alice"]).unwrap(),
        locator: vec![0xab; locator_len],
        session_key: SecretKey::random(),
        share_keys: Vec::new(),
        meta: VoicemailMeta::default(),
    }
}

#[tokio::test]
async fn full_disk_refuses_deposits_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mnt) = Tmpfs::mount(&tmp.path().join("mnt"), "4m") else {
        println!("skipped: mounting a tmpfs needs root");
        return;
    };
    let dir = mnt.0.join("auth");
    datadir::init(&InitOptions::loopback(&dir)).unwrap();
    // Bob leaves alice many voicemails: lift the spam limits.
    let mut config = datadir::load_config(&dir).unwrap();
    local_auth::no_spam_limits(&mut config);
    // Alice opens every key at the end: hundreds fit on the disk since the
    // log has a file of its own.
    config.open_shares_per_minute_per_user = 1_000_000;
    std::fs::write(
        dir.join(datadir::files::CONFIG),
        toml::to_string(&config).unwrap(),
    )
    .unwrap();
    let mut server = LocalServer::start(&dir, &Harness::default()).await.unwrap();
    let target = local_auth::target(&server);
    let (alice_id, bob_id) = (identity(), identity());
    let mut bob = AuthClient::connect(&target).await.unwrap();
    bob.register("alice", &password("alice"), &alice_id, None)
        .await
        .unwrap();
    bob.register("bob", &password("bob"), &bob_id, None)
        .await
        .unwrap();
    bob.login("bob", &password("bob"), &bob_id, &[])
        .await
        .unwrap();

    // Fill the disk: deposits with the largest locators until one is refused.
    // Each first takes its storage grant, a write small enough to pass the
    // space check (which asks for room in proportion to the command) when
    // a full-size deposit no longer does.
    let mut stored = Vec::new();
    let (refusal, unused) = loop {
        assert!(stored.len() < 5000, "the 4 MiB disk never filled");
        let d = try_granted(&mut bob, deposit(vmail_auth::service::MAX_LOCATOR_LEN), 0)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "a storage grant before deposit {} was refused: {e}",
                    stored.len() + 1
                )
            });
        match bob.deposit(&d).await {
            Ok(r) => stored.push((r.voicemail_id, d.session_key)),
            Err(e) => break (e, d.grant_serial),
        }
    };
    assert!(stored.len() > 10, "only {} deposits fitted", stored.len());
    assert_eq!(refusal.code(), Some(Code::ResourceExhausted), "{refusal}");
    assert!(refusal.to_string().contains("disk is full"), "{refusal}");

    // Refused deposits left nothing behind, and did not spend their grant.
    assert_eq!(
        server.service.store().counts().unwrap().voicemails,
        stored.len() as u64
    );
    let grant = server.service.store().storage_grant(unused).unwrap();
    assert_eq!(grant.map(|g| g.deposited), Some(None));

    // Free space: the same server takes deposits again, no restart needed.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt.0)
        .status()
        .unwrap();
    assert!(grown.success());
    let d = granted(&mut bob, deposit(16)).await;
    let r = bob.deposit(&d).await.unwrap();
    stored.push((r.voicemail_id, d.session_key));

    // And after a restart every acknowledged deposit is intact.
    server.stop().await.unwrap();
    server = LocalServer::start(&dir, &Harness::default()).await.unwrap();
    let target = local_auth::target(&server);
    let mut alice = AuthClient::connect(&target).await.unwrap();
    let s = alice
        .login("alice", &password("alice"), &alice_id, &[])
        .await
        .unwrap();
    let mut pending = Vec::new();
    for p in alice.list_pending().await.unwrap() {
        let key = alice.recover_session_key(&s, &p).await.unwrap();
        pending.push((p.id, key));
    }
    pending.sort_by_key(|p| p.0);
    stored.sort_by_key(|p| p.0);
    assert_eq!(pending, stored);
    let mut bob = AuthClient::connect(&target).await.unwrap();
    bob.login("bob", &password("bob"), &bob_id, &[])
        .await
        .unwrap();
    let d = granted(&mut bob, deposit(16)).await;
    bob.deposit(&d).await.unwrap();
    server.stop().await.unwrap();
}
