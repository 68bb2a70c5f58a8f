//! Unit tests of reading pending voicemail: sender certificates (cluster
//! and group signatures), key-share shapes, and what needs more servers.

use ed25519_dalek::SigningKey;
use tonic::transport::Endpoint;
use vmail_proto::cert::CertificateBody;

use super::*;

const DEPOSITED_AT: u64 = 1_800_000_000;

/// A client that never connects: `open_pending` does no IO.
fn offline_client(cluster: &SigningKey) -> AuthClient {
    let ch = Endpoint::from_static("https://127.0.0.1:9").connect_lazy();
    AuthClient {
        rpc: super::super::rpc_client(ch),
        cluster_key: cluster.verifying_key(),
        group_key: None,
        ca_pem: Vec::new(),
        endpoints: vec!["https://127.0.0.1:9".into()],
        configured: vec!["https://127.0.0.1:9".into()],
        endpoint: "https://127.0.0.1:9".into(),
        token: None,
    }
}

fn cert_of(cluster: &SigningKey, name: &str) -> UserCertificate {
    CertificateBody {
        serial: 7,
        username: Username::parse(name).unwrap(),
        identity_key: SigningKey::from_bytes(&[9; 32]).verifying_key(),
        peer_id: Vec::new(),
        not_before: DEPOSITED_AT - 60,
        not_after: DEPOSITED_AT + 3600,
    }
    .sign(cluster)
}

/// A pending voicemail for "bob", its key shared 2-of-3.
fn pending(anonymous: bool, cert: Option<UserCertificate>) -> pb::PendingVoicemail {
    let recipients = Recipients::parse(["bob"]).unwrap();
    pb::PendingVoicemail {
        voicemail_id: [5u8; 16].to_vec(),
        sender_certificate: cert.map(Into::into),
        deposited_at: DEPOSITED_AT,
        recipients: recipients.to_strings(),
        locator: vec![1, 2, 3],
        anonymous,
        first_contact: true,
        threshold: 2,
        key_check: vec![4; 32],
        shares: (1..=3)
            .map(|i| pb::ShareSlot {
                node_id: 10 + u64::from(i),
                index: i,
                api_url: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_anonymous_voicemail_opens_without_a_sender() {
    let cluster = SigningKey::from_bytes(&[1; 32]);
    let client = offline_client(&cluster);
    let p = client.open_pending(pending(true, None)).unwrap();
    assert_eq!(p.sender, Sender::Hidden);
    assert_eq!(p.sender.display_name(), "anonymous");
    assert!(p.sender.username().is_none());
    assert!(p.first_contact);
    assert_eq!(p.shares.threshold, 2);
    assert_eq!(p.shares.key_check, [4; 32]);
    assert_eq!(p.shares.slots.len(), 3);
}

#[tokio::test]
async fn a_known_sender_is_checked_and_named() {
    let cluster = SigningKey::from_bytes(&[1; 32]);
    let client = offline_client(&cluster);
    let alice = cert_of(&cluster, "alice");
    let p = client
        .open_pending(pending(false, Some(alice.clone())))
        .unwrap();
    assert_eq!(p.sender, Sender::Known(Box::new(alice)));
    assert_eq!(p.sender.display_name(), "alice");
    // A certificate another key signed is refused.
    let forged = cert_of(&SigningKey::from_bytes(&[3; 32]), "alice");
    assert!(matches!(
        client.open_pending(pending(false, Some(forged))),
        Err(ClientError::Certificate(_))
    ));
}

/// A client that pins the group key takes a sender certificate only
/// with the group's signature: one the cluster key alone signed (what a
/// stolen server mints) is refused, bare or with another's signature.
#[tokio::test]
async fn a_pinning_client_refuses_a_sender_certificate_without_the_group_signature() {
    use ed25519_dalek::Signer as _;
    let cluster = SigningKey::from_bytes(&[1; 32]);
    let group = SigningKey::from_bytes(&[2; 32]);
    let mut client = offline_client(&cluster);
    client.group_key = Some(group.verifying_key());
    let mut alice = cert_of(&cluster, "alice");
    let bare = client.open_pending(pending(false, Some(alice.clone())));
    assert!(
        matches!(&bare, Err(ClientError::Certificate(_))),
        "{bare:?}"
    );
    alice.group_signature = Some(group.sign(&cert_of(&cluster, "bob").signing_bytes()));
    assert!(matches!(
        client.open_pending(pending(false, Some(alice.clone()))),
        Err(ClientError::Certificate(_))
    ));
    alice.group_signature = Some(group.sign(&alice.signing_bytes()));
    let p = client
        .open_pending(pending(false, Some(alice.clone())))
        .unwrap();
    assert_eq!(p.sender, Sender::Known(Box::new(alice)));
}

#[tokio::test]
async fn a_missing_or_stray_certificate_breaks_the_protocol() {
    let cluster = SigningKey::from_bytes(&[1; 32]);
    let client = offline_client(&cluster);
    let err = client.open_pending(pending(false, None)).unwrap_err();
    assert!(
        matches!(&err, ClientError::Protocol(m) if m.contains("no sender certificate")),
        "{err}"
    );
    let alice = cert_of(&cluster, "alice");
    let err = client.open_pending(pending(true, Some(alice))).unwrap_err();
    assert!(
        matches!(&err, ClientError::Protocol(m) if m.contains("anonymous but carries")),
        "{err}"
    );
}

#[tokio::test]
async fn badly_shaped_key_shares_break_the_protocol() {
    let cluster = SigningKey::from_bytes(&[1; 32]);
    let client = offline_client(&cluster);
    let mut p = pending(true, None);
    p.threshold = 4;
    let err = client.open_pending(p).unwrap_err();
    assert!(
        matches!(&err, ClientError::Protocol(m)
            if m.contains(&hex::encode([5u8; 16])) && m.contains("threshold 4 for 3 key shares")),
        "{err}"
    );
    let mut p = pending(true, None);
    p.key_check.clear();
    assert!(client.open_pending(p).is_err());
}

#[tokio::test]
async fn a_key_needing_more_servers_than_configured_names_the_fix() {
    let cluster = SigningKey::from_bytes(&[1; 32]);
    let client = offline_client(&cluster);
    let p = client.open_pending(pending(true, None)).unwrap();
    let session = super::super::LoginSession {
        username: Username::parse("bob").unwrap(),
        token: [0; 32],
        master_key: vmail_proto::keys::MasterKey::from_bytes([2; 32]),
        master_key_id: [0; 16],
        expires_at: DEPOSITED_AT,
        certificate: cert_of(&cluster, "bob"),
        inbox_key: share::BoxSecret::generate(),
    };
    // One endpoint configured, two shares needed: no server is asked.
    let err = client
        .recover_session_key(&session, &p)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs shares from 2 auth servers, but only 1 are known")
            && err.contains("--auth"),
        "{err}"
    );
}
