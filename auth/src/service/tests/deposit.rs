//! Deposits, delivery re-wrapped for each recipient, acks, refusals and
//! the expiry purge, through the service.

use super::*;
use vmail_proto::grant::DepositProof;

use crate::store::PurgeCounts;

#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_is_rewrapped_for_each_recipient_and_erased_by_the_last_ack() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let carol = h.register_and_login("carol").await;

    let session_key = SecretKey::random();
    let request_id = random_bytes::<16>();
    let d = deposit(
        &alice.master_key,
        &session_key,
        &["carol", "bob"],
        &request_id,
        0,
    );
    let d = h.granted(&alice, d).await;
    let first = h.svc.deposit(&alice.session, d.clone()).await.unwrap();
    let id = first.id;
    assert!(!first.replayed);
    // The deposit proof names the grant and verifies against the cluster
    // key, as a holder checks it.
    let proof = DepositProof::from_bytes(&first.proof.to_bytes()).unwrap();
    assert_eq!(proof.serial, d.grant_serial);
    proof.verify(&h.svc.keys().cluster_public_key()).unwrap();
    // A retry, re-wrapped under a fresh nonce, is answered with the same id.
    let mut retry = deposit(
        &alice.master_key,
        &session_key,
        &["carol", "bob"],
        &request_id,
        0,
    );
    retry.grant_serial = d.grant_serial;
    assert_ne!(retry.wrapped_key, d.wrapped_key);
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
        // Re-wrapped under this recipient's master key, and no one else's.
        assert_eq!(
            unwrap_delivery(got, &who.master_key),
            Some(session_key.clone())
        );
        assert_ne!(got.wrapped_key, d.wrapped_key);
        for other in [&alice, &bob, &carol] {
            if other.session.username != who.session.username {
                assert!(unwrap_delivery(got, &other.master_key).is_none());
            }
        }
        let one = h.svc.pending_one(&who.session, id).await.unwrap().unwrap();
        assert_eq!(
            unwrap_delivery(&one, &who.master_key),
            Some(session_key.clone())
        );
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

    let d = deposit(
        &alice.master_key,
        &sk,
        &["bob", "zed"],
        &random_bytes::<16>(),
        0,
    );
    // The grant names bob alone (RequestGrant would refuse zed too).
    let mut d = d;
    d.grant_serial = h.grant(&alice, &["bob"], 0).await.unwrap().body.serial;
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(
        matches!(err, AuthError::UnknownRecipient(ref r) if r == "zed"),
        "{err:?}"
    );

    // Wrapped for another request id: the key does not open in this context.
    let d = deposit(&alice.master_key, &sk, &["bob"], &random_bytes::<16>(), 0);
    let mut d = h.granted(&alice, d).await;
    d.request_id = random_bytes::<16>().to_vec();
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(matches!(err, AuthError::WrapFailed), "{err:?}");

    // A field validate_deposit refuses comes back named: here, no grant.
    let d = deposit(&alice.master_key, &sk, &["bob"], &random_bytes::<16>(), 0);
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
    let d = deposit(&alice.master_key, &sk, &["bob"], &request_id, 0);
    let d = h.granted(&alice, d).await;
    h.svc.deposit(&alice.session, d).await.unwrap();
    let d = deposit(
        &alice.master_key,
        &SecretKey::random(),
        &["bob"],
        &request_id,
        0,
    );
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
    let short = deposit(
        &alice.master_key,
        &sk,
        &["bob"],
        &random_bytes::<16>(),
        T0 + 100,
    );
    let short = h.granted(&alice, short).await;
    let gone = h.svc.deposit(&alice.session, short).await.unwrap().id;
    let long = deposit(&alice.master_key, &sk, &["bob"], &random_bytes::<16>(), 0);
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
