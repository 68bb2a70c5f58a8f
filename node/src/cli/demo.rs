//! `vmail demo`: runs the system on loopback and narrates the paper's
//! protocol step by step. Everything is real: an embedded auth server over
//! TLS, OPAQUE with argon2id, the key schedule and the wraps.

use std::sync::Arc;

use anyhow::{Context as _, ensure};
use ed25519_dalek::SigningKey;
use vmail_auth::datadir::{self, InitOptions};
use vmail_auth::server::LocalServer;
use vmail_auth::service::SystemClock;
use vmail_node::client::{AuthClient, AuthTarget, NewDeposit, VoicemailMeta};
use vmail_proto::names::Recipients;
use vmail_proto::{random_bytes, unix_now};

fn step(n: &str, text: &str) {
    println!("\n[{n}] {text}");
}

pub(super) async fn run() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("creating a temporary data dir")?;
    let dir = tmp.path().join("auth-1");
    step(
        "setup",
        "initialising an auth server: cluster CA, TLS certificate, cluster signing key, OPAQUE setup, data key",
    );
    let report = datadir::init(&InitOptions::loopback(&dir))?;
    let server = LocalServer::start(&dir, Arc::new(SystemClock)).await?;
    println!(
        "  auth server on {} (TLS, CA {})",
        server.endpoint,
        report.ca_cert.display()
    );
    println!("  cluster public key {}", report.cluster_public_key);
    let target = AuthTarget::from(&server);

    let result = narrate(&target).await;
    server.stop().await?;
    result?;
    println!(
        "\ndemo finished: the session key reached alice intact and is now erased from the server"
    );
    Ok(())
}

async fn narrate(target: &AuthTarget) -> anyhow::Result<()> {
    let alice_id = SigningKey::from_bytes(&random_bytes());
    let bob_id = SigningKey::from_bytes(&random_bytes());
    let (alice_pw, bob_pw) = (b"alice: correct horse battery", b"bob: staple tuna origami");

    step(
        "register",
        "alice and bob register with OPAQUE (argon2id m=19 MiB, t=2, p=1 on the client); the server never sees a password",
    );
    let mut bob = AuthClient::connect(target).await?;
    bob.register("alice", alice_pw, &alice_id, None).await?;
    bob.register("bob", bob_pw, &bob_id, None).await?;
    println!("  registered alice and bob, with their ed25519 identity keys");

    step(
        "0",
        "bob logs in; he and the server negotiate a shared master key (HKDF over the OPAQUE session key); it never crosses the wire",
    );
    let bob_session = bob.login("bob", bob_pw, &bob_id, &[]).await?;
    println!(
        "  master key id {}; certificate serial {} signed by the cluster key",
        hex::encode(bob_session.master_key_id),
        bob_session.certificate.serial
    );
    let alice_cert = bob.certificate("alice").await?;
    println!(
        "  bob fetched alice's certificate and verified it offline (identity key {})",
        &hex::encode(alice_cert.identity_key.as_bytes())[..16]
    );

    step(
        "1",
        "alice is offline; bob derives a session key from his master key, 32 random bytes, the timestamp and the recipient list",
    );
    let recipients = Recipients::parse(["alice"])?;
    let salt: [u8; 32] = random_bytes();
    let session_key = bob_session
        .master_key
        .derive_session_key(&salt, unix_now(), &recipients);
    println!(
        "  session key fingerprint {}",
        fingerprint(session_key.as_bytes())
    );

    step(
        "2-3",
        "bob deposits the session key, wrapped under his master key, with the recipients; the server unwraps it (proving bob holds the master key), seals it at rest and notes alice has voicemail",
    );
    let deposit = NewDeposit {
        request_id: random_bytes(),
        recipients,
        // The overlay that stores the ciphertext comes in a later release;
        // the locator that will name its storage identifiers is empty here.
        locator: Vec::new(),
        session_key: session_key.clone(),
        meta: VoicemailMeta {
            size: 0,
            content_type: "audio/wav".into(),
            duration_ms: 0,
            expires_at: 0,
        },
    };
    let receipt = bob.deposit(&bob_session.master_key, &deposit).await?;
    println!("  voicemail id {}", hex::encode(receipt.voicemail_id));
    let again = bob.deposit(&bob_session.master_key, &deposit).await?;
    ensure!(
        again.voicemail_id == receipt.voicemail_id && again.replayed,
        "a retried deposit made a second voicemail"
    );
    println!("  a retry with the same request id returns the same voicemail, not a second one");

    step(
        "retrieval 1",
        "alice logs in; she negotiates her own master key, which bob's deposit never knew",
    );
    let mut alice = AuthClient::connect(target).await?;
    let alice_session = alice.login("alice", alice_pw, &alice_id, &[]).await?;
    println!(
        "  alice's master key id {}",
        hex::encode(alice_session.master_key_id)
    );

    step(
        "retrieval 2",
        "the server re-wraps the session key under alice's master key and hands it over with the locator",
    );
    let pending = alice.list_pending(&alice_session.master_key).await?;
    ensure!(
        pending.len() == 1,
        "alice should have exactly one voicemail, found {}",
        pending.len()
    );
    let vm = &pending[0];
    println!(
        "  from {} (certificate verified), deposited at {}",
        vm.sender.username, vm.deposited_at
    );
    ensure!(
        vm.session_key == session_key,
        "alice unwrapped a different session key"
    );
    println!(
        "  alice unwrapped session key fingerprint {}: the same key bob derived",
        fingerprint(vm.session_key.as_bytes())
    );

    step(
        "ack",
        "alice acknowledges; with no recipient left, the server erases the session key",
    );
    let erased = alice.ack(&vm.id).await?;
    ensure!(
        erased,
        "the session key should be erased after the last recipient's ack"
    );
    ensure!(
        alice
            .list_pending(&alice_session.master_key)
            .await?
            .is_empty(),
        "the voicemail is still pending after ack"
    );
    println!("  key erased; alice's inbox is empty");
    alice.logout().await?;
    bob.logout().await?;
    println!("  both logged out: tokens and master keys revoked");
    Ok(())
}

/// A short, non-secret fingerprint of a key for display.
fn fingerprint(key: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(key)[..8])
}
