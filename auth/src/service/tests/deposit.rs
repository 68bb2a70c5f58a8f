//! Deposits, delivery (and each recipient's share through OpenShare), acks,
//! refusals and the expiry purge, through the service.

use super::*;
use vmail_proto::grant::DepositProof;

use crate::store::PurgeCounts;

#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_is_opened_for_each_recipient_and_erased_by_the_last_ack() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let carol = h.register_and_login("carol").await;

    let session_key = SecretKey::random();
    let request_id = random_bytes::<16>();
    let d = h.deposit(&session_key, &["carol", "bob"], &request_id, 0);
    let d = h.granted(&alice, d).await;
    let first = h.svc.deposit(&alice.session, d.clone()).await.unwrap();
    let id = first.id;
    assert!(!first.replayed);
    // The deposit proof names the grant and verifies against the cluster
    // key, as a holder checks it.
    let proof = DepositProof::from_bytes(&first.proof.to_bytes()).unwrap();
    assert_eq!(proof.serial, d.grant_serial);
    proof.verify(&h.svc.keys().cluster_public_key()).unwrap();
    // A retry, the key split afresh, is answered with the same id.
    let mut retry = h.deposit(&session_key, &["carol", "bob"], &request_id, 0);
    h.with_grant(&mut retry, d.grant_serial);
    assert_ne!(retry.shares[0].ciphertext, d.shares[0].ciphertext);
    let again = h.svc.deposit(&alice.session, retry).await.unwrap();
    assert_eq!((again.id, again.replayed), (id, true));
    // The same proof, byte for byte.
    assert_eq!(again.proof.to_bytes(), first.proof.to_bytes());

    for who in [&bob, &carol] {
        let list = h.svc.list_pending(&who.session).await.unwrap();
        assert_eq!(list.len(), 1);
        let got = &list[0];
        assert_eq!(got.id, id);
        assert_eq!(got.recipients, ["bob", "carol"]);
        assert_eq!(got.locator, d.locator);
        assert_eq!(got.deposited_at, T0);
        assert_eq!(
            got.sender_certificate.as_ref().unwrap().username.as_str(),
            "alice"
        );
        assert_eq!(
            got.metadata,
            VoicemailMeta {
                expires_at: T0 + h.svc.config().default_voicemail_ttl_secs,
                ..d.metadata.clone()
            }
        );
        // No key material: the threshold, the key check and who holds
        // which share; the share itself comes from OpenShare, resealed to
        // this session's inbox key.
        assert_eq!(got.threshold, 1);
        assert_eq!(
            got.key_check,
            vmail_proto::share::key_check(&session_key, &got.locator)
        );
        assert_eq!(got.shares.len(), 1);
        assert_eq!(
            (got.shares[0].node_id, got.shares[0].index),
            (h.svc.node_id(), 1)
        );
        // The one member's public URL, where the client asks for the share.
        assert!(
            got.shares[0].api_url.starts_with("https://"),
            "{:?}",
            got.shares[0]
        );
        assert_eq!(h.open(who, got).await.unwrap(), session_key);
        // Resealed for this recipient, it opens for no one else.
        let opened = h.svc.open_share(&who.session, &id).await.unwrap();
        for other in [&bob, &carol] {
            if other.session.username != who.session.username {
                assert!(recover(other, got, std::slice::from_ref(&opened)).is_err());
            }
        }
        let one = h.svc.pending_one(&who.session, id).await.unwrap().unwrap();
        assert_eq!(one.key_check, got.key_check);
    }

    // The sender is not a recipient.
    assert!(h.svc.list_pending(&alice.session).await.unwrap().is_empty());
    assert!(
        h.svc
            .pending_one(&alice.session, id)
            .await
            .unwrap()
            .is_none()
    );
    let err = h.svc.ack(&alice.session, &id).await.unwrap_err();
    assert!(matches!(err, AuthError::NotPending { .. }), "{err:?}");
    // Nor does the sender get a share.
    let err = h.svc.open_share(&alice.session, &id).await.unwrap_err();
    assert!(matches!(err, AuthError::NoShare { .. }), "{err:?}");

    let first = h.svc.ack(&bob.session, &id).await.unwrap();
    assert_eq!(
        first,
        AckReceipt {
            key_erased: false,
            delete_order: None
        }
    );
    assert!(h.svc.list_pending(&bob.session).await.unwrap().is_empty());
    let err = h.svc.ack(&bob.session, &id).await.unwrap_err();
    assert!(matches!(err, AuthError::NotPending { .. }), "{err:?}");
    // After the ack, no more share for bob; carol still gets hers.
    let err = h.svc.open_share(&bob.session, &id).await.unwrap_err();
    assert!(matches!(err, AuthError::NoShare { .. }), "{err:?}");
    h.svc.open_share(&carol.session, &id).await.unwrap();
    assert!(h.svc.store().voicemail_exists(&id).unwrap());

    let last = h.svc.ack(&carol.session, &id).await.unwrap();
    assert!(last.key_erased, "the last ack");
    let order = last
        .delete_order
        .expect("the last ack orders the shards deleted");
    assert_eq!(order.serial, d.grant_serial);
    order.verify(&h.svc.keys().cluster_public_key()).unwrap();
    assert!(!h.svc.store().voicemail_exists(&id).unwrap());
    assert!(h.svc.list_pending(&carol.session).await.unwrap().is_empty());
    let counts = h.svc.store().counts().unwrap();
    assert_eq!((counts.voicemails, counts.grants), (0, 0));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deposit_refusals_are_named_and_store_nothing() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    h.register("bob").await;
    let sk = SecretKey::random();

    let d = h.deposit(&sk, &["bob", "zed"], &random_bytes::<16>(), 0);
    // The grant names bob alone (RequestGrant would refuse zed too).
    let mut d = d;
    h.with_grant(
        &mut d,
        h.grant(&alice, &["bob"], 0).await.unwrap().body.serial,
    );
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(
        matches!(err, AuthError::UnknownRecipient(ref r) if r == "zed"),
        "{err:?}"
    );

    // Sealed to a share key the server never published: named.
    let d = h.deposit(&sk, &["bob"], &random_bytes::<16>(), 0);
    let mut d = h.granted(&alice, d).await;
    d.shares[0].epoch = 9;
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::InvalidArgument {
                field: "shares.epoch",
                ..
            }
        ),
        "{err:?}"
    );

    // A field validate_deposit refuses comes back named: here, no grant.
    let d = h.deposit(&sk, &["bob"], &random_bytes::<16>(), 0);
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::InvalidArgument {
                field: "grant_serial",
                ..
            }
        ),
        "{err:?}"
    );

    // Another voicemail under a used request id.
    let request_id = random_bytes::<16>();
    let d = h.deposit(&sk, &["bob"], &request_id, 0);
    let d = h.granted(&alice, d).await;
    h.svc.deposit(&alice.session, d).await.unwrap();
    let d = h.deposit(&SecretKey::random(), &["bob"], &request_id, 0);
    let d = h.granted(&alice, d).await;
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(matches!(err, AuthError::RequestIdReused), "{err:?}");

    let counts = h.svc.store().counts().unwrap();
    assert_eq!((counts.voicemails, counts.grants), (1, 1));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_voicemail_is_hidden_then_purged() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let sk = SecretKey::random();
    let short = h.deposit(&sk, &["bob"], &random_bytes::<16>(), T0 + 100);
    let short = h.granted(&alice, short).await;
    let gone = h.svc.deposit(&alice.session, short).await.unwrap().id;
    let long = h.deposit(&sk, &["bob"], &random_bytes::<16>(), 0);
    let long = h.granted(&alice, long).await;
    let kept = h.svc.deposit(&alice.session, long).await.unwrap().id;

    h.clock.advance(99);
    let ids: Vec<_> = h
        .svc
        .list_pending(&bob.session)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&gone) && ids.contains(&kept));
    assert_eq!(h.svc.purge_expired().await.unwrap(), PurgeCounts::default());

    h.clock.advance(1);
    let list = h.svc.list_pending(&bob.session).await.unwrap();
    assert_eq!(list.iter().map(|d| d.id).collect::<Vec<_>>(), [kept]);
    assert!(
        h.svc
            .pending_one(&bob.session, gone)
            .await
            .unwrap()
            .is_none()
    );
    let err = h.svc.ack(&bob.session, &gone).await.unwrap_err();
    assert!(matches!(err, AuthError::NotPending { .. }), "{err:?}");
    // Hidden, but its key is still held until the purge.
    assert!(h.svc.store().voicemail_exists(&gone).unwrap());

    let purged = h.svc.purge_expired().await.unwrap();
    assert_eq!((purged.sessions, purged.voicemails), (0, 1));
    // The grant went with its voicemail.
    assert_eq!(purged.storage_grants, 1);
    assert!(!h.svc.store().voicemail_exists(&gone).unwrap());
    assert!(h.svc.store().voicemail_exists(&kept).unwrap());
    assert_eq!(h.svc.store().counts().unwrap().grants, 1);
    h.stop().await;
}
