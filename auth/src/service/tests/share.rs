//! Share keys on one server: the inbox key a login must carry, OpenShare's
//! refusals, and rotation and erasure of the server's share keys.

use super::*;
use crate::datadir::share_keys::share_key_file;
use crate::tls::ClusterTls;

#[tokio::test(flavor = "multi_thread")]
async fn a_login_without_a_usable_inbox_key_is_refused_naming_it() {
    let h = Harness::start().await;
    let identity = h.register("alice").await;
    for bad in [Vec::new(), vec![9; 31], vec![9; 33], vec![0; 32]] {
        let start =
            ClientLogin::<Suite>::start(&mut rand::rngs::OsRng, &password("alice")).unwrap();
        let (login_id, response) = h
            .svc
            .login_start("alice", &start.message.serialize())
            .await
            .unwrap();
        let response = CredentialResponse::<Suite>::deserialize(&response).unwrap();
        let f = start
            .state
            .finish(
                &password("alice"),
                response,
                ClientLoginFinishParameters::default(),
            )
            .unwrap();
        let vk = identity.verifying_key();
        let proof = identity.sign(&identity_proof_bytes(
            ProofPurpose::Login,
            &Username::parse("alice").unwrap(),
            &login_id,
            &vk,
            &[],
        ));
        let err = h
            .svc
            .login_finish(LoginFinish {
                login_id: login_id.to_vec(),
                credential_finalization: f.message.serialize().to_vec(),
                identity_key: vk.as_bytes().to_vec(),
                identity_proof: proof.to_bytes().to_vec(),
                peer_id: Vec::new(),
                inbox_key: bad.clone(),
            })
            .await
            .unwrap_err();
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
    // A stale epoch cannot be published again.
    let stale = h
        .svc
        .store()
        .write(|tx| {
            h.svc
                .store()
                .publish_share_key(tx, h.svc.node_id(), 1, [5; 32], T0)
        })
        .unwrap();
    assert_eq!(stale, crate::store::PublishOutcome::Stale { newest: 2 });
    h.stop().await;
}
