//! Storage grants through the service and its one-node group: issue and
//! signature, refusals, the quota, one grant per deposit, and the delete
//! order of the last ack.

use vmail_proto::grant::{DeleteReason, UPLOAD_WINDOW_SECS};

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_is_signed_by_the_cluster_key_with_serials_in_order() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    h.register("bob").await;
    let first = h.grant(&alice, &["bob"], 0).await.unwrap();
    let second = h.grant(&alice, &["bob"], T0 + 3600).await.unwrap();
    assert_eq!(second.body.serial, first.body.serial + 1);
    let ttl = h.svc.config().default_voicemail_ttl_secs;
    assert_eq!(first.body.expires_at, T0 + ttl);
    assert_eq!(first.body.upload_until, T0 + UPLOAD_WINDOW_SECS);
    assert_eq!(second.body.expires_at, T0 + 3600);
    let row = h
        .svc
        .store()
        .storage_grant(first.body.serial)
        .unwrap()
        .unwrap();
    assert_eq!((row.owner.as_str(), &row.body), ("alice", &first.body));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_refusals_are_named_and_issue_nothing() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    h.register("bob").await;
    let err = h.grant(&alice, &["bob", "zed"], 0).await.unwrap_err();
    assert!(
        matches!(err, AuthError::UnknownRecipient(ref r) if r == "zed"),
        "{err:?}"
    );
    let mut bad = grant_request(&["bob"], 0);
    bad.data_shards = 4;
    let err = h.svc.request_grant(&alice.session, bad).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::InvalidArgument {
                field: "data_shards",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(h.svc.store().storage_grant(1).unwrap().is_none());

    // The quota: the 65th open grant is refused, with what to do.
    let limit = h.svc.config().max_open_grants_per_user;
    for _ in 0..limit {
        h.grant(&alice, &["bob"], 0).await.unwrap();
    }
    let err = h.grant(&alice, &["bob"], 0).await.unwrap_err();
    assert!(matches!(err, AuthError::TooManyGrants { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("max_open_grants_per_user") && msg.contains("deposit"),
        "{msg}"
    );
    // Once the upload windows close, the quota frees up again.
    h.clock.advance(UPLOAD_WINDOW_SECS);
    h.grant(&alice, &["bob"], 0).await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_grant_serves_one_deposit_of_its_owner_within_its_window() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let sk = SecretKey::random();
    let grant = h.grant(&alice, &["bob"], T0 + 3600).await.unwrap();
    let serial = grant.body.serial;

    // Someone else's grant.
    let mut d = h.deposit(&sk, &["alice"], &random_bytes::<16>(), 0);
    h.with_grant(&mut d, serial);
    let err = h.svc.deposit(&bob.session, d).await.unwrap_err();
    assert!(
        matches!(err, AuthError::GrantNotOwned(s) if s == serial),
        "{err:?}"
    );
    // No such grant.
    let mut d = h.deposit(&sk, &["bob"], &random_bytes::<16>(), 0);
    h.with_grant(&mut d, 999);
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(matches!(err, AuthError::GrantUnknown(999)), "{err:?}");

    // The deposit takes the grant's expiry, whatever its metadata says.
    let request_id = random_bytes::<16>();
    let mut d = h.deposit(&sk, &["bob"], &request_id, T0 + 86_400);
    h.with_grant(&mut d, serial);
    let id = h.svc.deposit(&alice.session, d.clone()).await.unwrap().id;
    let list = h.svc.list_pending(&bob.session).await.unwrap();
    assert_eq!(list[0].metadata.expires_at, T0 + 3600);
    // Its retry replays; a second voicemail under the grant is refused.
    let replay = h.svc.deposit(&alice.session, d).await.unwrap();
    assert_eq!((replay.id, replay.replayed), (id, true));
    let mut again = h.deposit(&sk, &["bob"], &random_bytes::<16>(), 0);
    h.with_grant(&mut again, serial);
    let err = h.svc.deposit(&alice.session, again).await.unwrap_err();
    assert!(
        matches!(err, AuthError::GrantUsed { serial: s, .. } if s == serial),
        "{err:?}"
    );
    assert!(err.to_string().contains(&hex::encode(id)), "{err}");

    // A grant whose window and grace have passed.
    let late = h.grant(&alice, &["bob"], 0).await.unwrap();
    h.clock
        .advance(UPLOAD_WINDOW_SECS + crate::store::DEPOSIT_GRACE_SECS + 1);
    let mut d = h.deposit(&sk, &["bob"], &random_bytes::<16>(), 0);
    h.with_grant(&mut d, late.body.serial);
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(matches!(err, AuthError::GrantLapsed { .. }), "{err:?}");
    // The purge then drops it.
    let purged = h.svc.purge_expired().await.unwrap();
    assert_eq!(purged.storage_grants, 1);
    assert!(
        h.svc
            .store()
            .storage_grant(late.body.serial)
            .unwrap()
            .is_none()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_ack_returns_a_delete_order_that_verifies() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let carol = h.register_and_login("carol").await;
    let d = h.deposit(
        &SecretKey::random(),
        &["bob", "carol"],
        &random_bytes::<16>(),
        0,
    );
    let d = h.granted(&alice, d).await;
    let id = h.svc.deposit(&alice.session, d.clone()).await.unwrap().id;
    let grant = h
        .svc
        .store()
        .storage_grant(d.grant_serial)
        .unwrap()
        .unwrap();
    assert_eq!(grant.deposited, Some(id));

    assert_eq!(
        h.svc.ack(&bob.session, &id).await.unwrap().delete_order,
        None
    );
    let last = h.svc.ack(&carol.session, &id).await.unwrap();
    let order = last.delete_order.unwrap();
    assert_eq!(
        (order.serial, order.reason, order.expires_at),
        (
            d.grant_serial,
            DeleteReason::Delivered,
            grant.body.expires_at
        )
    );
    order.verify(&h.svc.keys().cluster_public_key()).unwrap();
    let row = h
        .svc
        .store()
        .storage_grant(d.grant_serial)
        .unwrap()
        .unwrap();
    assert_eq!(row.deleted, Some(DeleteReason::Delivered));
    h.stop().await;
}
