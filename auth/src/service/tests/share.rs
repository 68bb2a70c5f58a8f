//! Share keys on one server: the inbox key a login must carry, OpenShare's
//! refusals, and rotation and erasure of the server's share keys.

use super::*;
use ed25519_dalek::{Signer, SigningKey};

use crate::datadir::share_keys::share_key_file;
use crate::store::{PublishOutcome, Vouch, VouchRefusal, publication_bytes};
use crate::tls::ClusterTls;

/// A login of `name` with the right password up to LoginFinish, as the
/// client makes it: a LoginFinish with the OPAQUE finalization and the
/// identity proof, `inbox_key` as given and no account proof yet; and the
/// login id.
async fn login_up_to_finish(
    h: &Harness,
    name: &str,
    identity: &SigningKey,
    inbox_key: Vec<u8>,
) -> (LoginFinish, [u8; 16]) {
    let start = ClientLogin::<Suite>::start(&mut rand::rngs::OsRng, &password(name)).unwrap();
    let (login_id, response) = h
        .svc
        .login_start(name, &start.message.serialize())
        .await
        .unwrap();
    let f = start
        .state
        .finish(
            &password(name),
            CredentialResponse::<Suite>::deserialize(&response).unwrap(),
            ClientLoginFinishParameters::default(),
        )
        .unwrap();
    let vk = identity.verifying_key();
    let proof = identity.sign(&identity_proof_bytes(
        ProofPurpose::Login,
        &Username::parse(name).unwrap(),
        &login_id,
        &vk,
        &[],
    ));
    let finish = LoginFinish {
        login_id: login_id.to_vec(),
        credential_finalization: f.message.serialize().to_vec(),
        identity_key: vk.as_bytes().to_vec(),
        identity_proof: proof.to_bytes().to_vec(),
        peer_id: Vec::new(),
        inbox_key,
        account_proof: Vec::new(),
    };
    (finish, login_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_without_a_usable_inbox_key_is_refused_naming_it() {
    let h = Harness::start().await;
    let identity = h.register("alice").await;
    for bad in [Vec::new(), vec![9; 31], vec![9; 33], vec![0; 32]] {
        let (finish, ..) = login_up_to_finish(&h, "alice", &identity, bad.clone()).await;
        let err = h.svc.login_finish(finish).await.unwrap_err();
        match err {
            AuthError::InvalidArgument { field, why } => {
                assert_eq!(field, "inbox_key", "{bad:?}");
                assert!(why.contains("update the client"), "{why}");
            }
            other => panic!("{bad:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    assert_eq!(h.svc.store().counts().unwrap().sessions, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn open_share_refuses_what_the_caller_may_not_have() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let err = h
        .svc
        .open_share(&bob.session, &random_bytes::<16>())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::NoShare { .. }), "{err:?}");
    let err = h.svc.open_share(&bob.session, &[1; 3]).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::InvalidArgument {
                field: "voicemail_id",
                ..
            }
        ),
        "{err:?}"
    );
    // An expired voicemail gives no share, though not yet purged.
    let d = h.deposit(
        &SecretKey::random(),
        &["bob"],
        &random_bytes::<16>(),
        T0 + 3600,
    );
    let d = h.granted(&alice, d).await;
    let id = h.svc.deposit(&alice.session, d).await.unwrap().id;
    h.svc.open_share(&bob.session, &id).await.unwrap();
    h.clock.advance(3600);
    let err = h.svc.open_share(&bob.session, &id).await.unwrap_err();
    assert!(matches!(err, AuthError::NoShare { .. }), "{err:?}");
    assert!(
        crate::grpc::status(err)
            .message()
            .contains("is not waiting for you on auth server auth-1")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_makes_epoch_two_and_erasure_waits_for_the_last_voicemail_of_epoch_one() {
    let h = Harness::start_with(|c| {
        c.spam.default_mode = PolicyMode::Anyone;
        c.share_key_rotation_secs = 3600;
    })
    .await;
    let tls = ClusterTls::of_member(h.svc.keys());
    let dir = h.data_dir();
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let key = SecretKey::random();
    let d = h.deposit(&key, &["bob"], &random_bytes::<16>(), 0);
    let d = h.granted(&alice, d).await;
    let id = h.svc.deposit(&alice.session, d).await.unwrap().id;
    assert_eq!(h.svc.share_keys().epochs(), [1]);

    // Not yet due: nothing changes.
    h.clock.advance(3599);
    assert_eq!(h.svc.share_key_upkeep().await.unwrap(), Upkeep::default());
    h.clock.advance(1);
    let up = h.svc.share_key_upkeep().await.unwrap();
    assert_eq!(up.rotated_to, Some(2));
    assert!(share_key_file(&dir, 2).exists());
    assert!(!h.svc.share_key_published().await.unwrap());
    h.svc.publish_share_key(&tls).await.unwrap();
    assert!(h.svc.share_key_published().await.unwrap());
    let keys = h.svc.grant_share_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].epoch, 2);
    assert_eq!(keys[0].public, h.svc.share_keys().current().1);

    // A new epoch is published, but epoch 1 stays through the grace and
    // while a waiting voicemail has a share sealed to it.
    assert_eq!(h.svc.share_key_upkeep().await.unwrap(), Upkeep::default());
    h.clock.advance(ERASE_GRACE_SECS);
    assert_eq!(h.svc.share_key_upkeep().await.unwrap(), Upkeep::default());
    assert!(share_key_file(&dir, 1).exists());
    let list = h.svc.list_pending(&bob.session).await.unwrap();
    assert_eq!(h.open(&bob, &list[0]).await.unwrap(), key);

    // Once it is fetched, epoch 1 goes: file and memory.
    h.svc.ack(&bob.session, &id).await.unwrap();
    let up = h.svc.share_key_upkeep().await.unwrap();
    assert_eq!(up.erased, [1]);
    assert!(!share_key_file(&dir, 1).exists());
    assert!(share_key_file(&dir, 2).exists());
    assert_eq!(h.svc.share_keys().epochs(), [2]);
    assert_eq!(
        crate::datadir::load_share_keys(&dir)
            .unwrap()
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [2]
    );
    // A stale epoch cannot be published again, even vouched for.
    let me = h.svc.node_id();
    let publish = |epoch: u32, public: [u8; 32], vouch: Option<Vouch>| {
        h.svc
            .store()
            .write(|tx| {
                h.svc
                    .store()
                    .publish_share_key(tx, me, epoch, public, vouch.as_ref(), T0)
            })
            .unwrap()
    };
    let vouch = |epoch, public: &[u8; 32]| h.svc.share_keys().vouch(me, epoch, public);
    assert_eq!(
        publish(1, [5; 32], Some(vouch(1, &[5; 32]))),
        PublishOutcome::Stale { newest: 2 }
    );

    // A newer key in this server's name that it did not make (an active
    // thief with the CA key publishing for it) is refused: unsigned,
    // signed by the thief's own member key, or with this server's
    // signature of another publication.
    assert_eq!(
        publish(3, [6; 32], None),
        PublishOutcome::Unvouched(VouchRefusal::Missing)
    );
    let thief = SigningKey::from_bytes(&random_bytes());
    let forged = Vouch {
        member_key: thief.verifying_key().to_bytes(),
        signature: thief
            .sign(&publication_bytes(me, 3, &[6; 32]))
            .to_bytes()
            .to_vec(),
    };
    assert_eq!(
        publish(3, [6; 32], Some(forged)),
        PublishOutcome::Unvouched(VouchRefusal::OtherKey)
    );
    assert_eq!(
        publish(3, [6; 32], Some(vouch(3, &[7; 32]))),
        PublishOutcome::Unvouched(VouchRefusal::BadSignature)
    );
    assert_eq!(
        h.svc.store().member_key(me).unwrap(),
        Some(h.svc.share_keys().member_public())
    );
    assert!(h.svc.share_key_published().await.unwrap());
    let keys = h.svc.grant_share_keys().await.unwrap();
    assert_eq!(keys[0].epoch, 2);
    assert_eq!(keys[0].public, h.svc.share_keys().current().1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn account_keys_are_proved_at_registration_and_sign_every_login() {
    let h = Harness::start().await;
    // A registration whose account proof does not verify stores nothing.
    let name = Username::parse("mallory").unwrap();
    let mut rng = rand::rngs::OsRng;
    let pw = password("mallory");
    let start = ClientRegistration::<Suite>::start(&mut rng, &pw).unwrap();
    let (response, nonce) = h
        .svc
        .register_start("mallory", &start.message.serialize(), "")
        .await
        .unwrap();
    let finish = start
        .state
        .finish(
            &mut rng,
            &pw,
            RegistrationResponse::<Suite>::deserialize(&response).unwrap(),
            ClientRegistrationFinishParameters::default(),
        )
        .unwrap();
    let upload = finish.message.serialize().to_vec();
    let identity = SigningKey::from_bytes(&random_bytes());
    let vk = identity.verifying_key();
    let context: [u8; 32] = Sha256::digest(&upload).into();
    let proof = identity.sign(&identity_proof_bytes(
        ProofPurpose::Register,
        &name,
        &context,
        &vk,
        &[],
    ));
    let account = AccountKey::derive(&finish.export_key, &name);
    let err = h
        .svc
        .register_finish(RegisterFinish {
            username: "mallory".into(),
            registration_upload: upload.clone(),
            identity_key: vk.as_bytes().to_vec(),
            identity_proof: proof.to_bytes().to_vec(),
            invite_code: String::new(),
            credential_nonce: nonce.to_vec(),
            account_key: account.public().to_bytes().to_vec(),
            // Signed over another upload.
            account_proof: account
                .sign_registration(&name, b"another upload")
                .to_bytes()
                .to_vec(),
            client_address: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthError::Account(ref why) if why.contains("does not verify")),
        "{err}"
    );
    assert_eq!(h.svc.store().counts().unwrap().users, 0);

    // A login with the right password whose session statement another
    // account key signed (a client that derives it wrongly) opens nothing.
    let identity = h.register("alice").await;
    let alice = Username::parse("alice").unwrap();
    let inbox = BoxSecret::generate();
    let (mut finish, login_id) =
        login_up_to_finish(&h, "alice", &identity, inbox.public().to_vec()).await;
    finish.account_proof = AccountKey::derive(&[1; 64], &alice)
        .sign_session(&SessionStatement {
            username: &alice,
            login_id: &login_id,
            identity_key: identity.verifying_key().as_bytes(),
            peer_id: &[],
            inbox_key: &inbox.public(),
        })
        .to_bytes()
        .to_vec();
    let err = h.svc.login_finish(finish).await.unwrap_err();
    assert!(matches!(err, AuthError::Account(_)), "{err}");
    assert_eq!(h.svc.store().counts().unwrap().sessions, 0);
    // The right key opens one (the harness's login derives it as the
    // client does).
    h.login("alice", &identity).await;
    assert_eq!(h.svc.store().counts().unwrap().sessions, 1);
    h.stop().await;
}

/// A server that proposes a session for a user without their signature
/// (to have the group reseal key shares to an inbox key it holds) has it
/// refused by the state machine itself, whoever proposed it.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_entry_the_user_did_not_sign_is_refused_when_applied() {
    let h = Harness::start().await;
    let identity = h.register("alice").await;
    let alice = Username::parse("alice").unwrap();
    let attacker_inbox = BoxSecret::generate();
    let login_id: [u8; 16] = random_bytes();
    let forged =
        AccountKey::derive(&random_bytes::<64>(), &alice).sign_session(&SessionStatement {
            username: &alice,
            login_id: &login_id,
            identity_key: identity.verifying_key().as_bytes(),
            peer_id: &[],
            inbox_key: &attacker_inbox.public(),
        });
    for account_proof in [forged.to_bytes().to_vec(), Vec::new(), vec![0; 64]] {
        let reply = h
            .svc
            .raft()
            .client_write(Command::BeginSession {
                username: "alice".into(),
                token_hash: random_bytes(),
                master_key: vec![0; 60],
                master_key_id: random_bytes(),
                identity_key: identity.verifying_key().to_bytes(),
                peer_id: Vec::new(),
                inbox_key: attacker_inbox.public(),
                login_id,
                account_proof,
                now: h.svc.now(),
                session_ttl: 3600,
                cert_ttl: 3600,
            })
            .await
            .unwrap()
            .data;
        assert!(matches!(reply, Reply::SessionUnsigned(_)), "{reply:?}");
    }
    assert_eq!(h.svc.store().counts().unwrap().sessions, 0);
    h.stop().await;
}
