//! Retention, receipts (ListSent) and recall through the service and its
//! one-node group, with the status codes a client sees.

use tonic::Code;
use vmail_proto::grant::{DeleteOrder, DeleteReason};

use super::*;
use crate::grpc::status;
use crate::store::{DeliveryState, RECEIPT_KEEP_SECS, Receipt, VoicemailId};

use DeliveryState::{Delivered, ExpiredUnread, Pending, Recalled};

const HOUR: u64 = 3600;

/// Each recipient's (name, state, at).
fn states(r: &Receipt) -> Vec<(String, DeliveryState, u64)> {
    r.recipients
        .iter()
        .map(|l| (l.username.clone(), l.state, l.at))
        .collect()
}

impl Harness {
    /// Deposits a voicemail from `who` to `recipients` under a fresh grant
    /// expiring at `expires_at` (0: the default); returns its id.
    async fn send(&self, who: &LoggedIn, recipients: &[&str], expires_at: u64) -> VoicemailId {
        let d = self.deposit(
            &SecretKey::random(),
            recipients,
            &random_bytes::<16>(),
            expires_at,
        );
        let d = self.granted(who, d).await;
        self.svc.deposit(&who.session, d).await.unwrap().id
    }

    /// `who`'s only receipt.
    async fn only_receipt(&self, who: &LoggedIn) -> Receipt {
        let mut sent = self.svc.list_sent(&who.session).await.unwrap();
        assert_eq!(sent.len(), 1);
        sent.remove(0)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_is_bounded_reported_and_holds_grants_to_the_shortest() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let carol = h.register_and_login("carol").await;
    let default = h.svc.config().default_voicemail_ttl_secs;
    let cap = crate::service::retention_cap(h.svc.config());
    assert_eq!(h.svc.retention("bob").await.unwrap(), default);

    for bad in [1, HOUR - 1, cap + 1] {
        let err = h.svc.set_retention(&bob.session, bad).await.unwrap_err();
        let s = status(err);
        assert_eq!(s.code(), Code::InvalidArgument, "{bad}");
        assert!(
            s.message()
                .starts_with(&format!("retention_secs: {bad} s is outside 3600..={cap}")),
            "{}",
            s.message()
        );
        assert!(s.message().contains("send 0"), "{}", s.message());
    }
    assert_eq!(h.svc.retention("bob").await.unwrap(), default);
    assert_eq!(
        h.svc.set_retention(&bob.session, 2 * HOUR).await.unwrap(),
        2 * HOUR
    );
    assert_eq!(h.svc.set_retention(&carol.session, cap).await.unwrap(), cap);
    assert_eq!(
        h.svc.set_retention(&carol.session, 5 * HOUR).await.unwrap(),
        5 * HOUR
    );
    assert_eq!(h.svc.retention("bob").await.unwrap(), 2 * HOUR);
    assert_eq!(h.svc.retention("carol").await.unwrap(), 5 * HOUR);

    // Two recipients: the grant follows the shorter retention, whatever
    // the sender asked for, and a shorter request still wins.
    for asked in [0, T0 + 30 * 86_400] {
        let g = h.grant(&alice, &["carol", "bob"], asked).await.unwrap();
        assert_eq!(g.body.expires_at, T0 + 2 * HOUR, "asked {asked}");
    }
    let g = h.grant(&alice, &["carol", "bob"], T0 + HOUR).await.unwrap();
    assert_eq!(g.body.expires_at, T0 + HOUR);
    let g = h.grant(&alice, &["carol"], 0).await.unwrap();
    assert_eq!(g.body.expires_at, T0 + 5 * HOUR);
    // The voicemail expires with its grant.
    let id = h.send(&alice, &["bob", "carol"], 0).await;
    let list = h.svc.list_pending(&carol.session).await.unwrap();
    assert_eq!(list[0].id, id);
    assert_eq!(list[0].metadata.expires_at, T0 + 2 * HOUR);

    // 0 returns to the default.
    assert_eq!(h.svc.set_retention(&bob.session, 0).await.unwrap(), default);
    assert_eq!(h.svc.retention("bob").await.unwrap(), default);
    let g = h.grant(&alice, &["bob"], 0).await.unwrap();
    assert_eq!(g.body.expires_at, T0 + default);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receipt_shows_each_recipient_pending_then_delivered() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let carol = h.register_and_login("carol").await;
    let id = h.send(&alice, &["carol", "bob"], 0).await;
    let grant_expiry = T0 + h.svc.config().default_voicemail_ttl_secs;

    let r = h.only_receipt(&alice).await;
    assert_eq!(
        (r.id, r.deposited_at, r.expires_at, r.size),
        (id, T0, grant_expiry, 48_000)
    );
    assert_eq!(r.content_type, "audio/wav");
    assert_eq!(
        states(&r),
        [("bob".into(), Pending, T0), ("carol".into(), Pending, T0)]
    );
    assert!(h.svc.list_sent(&bob.session).await.unwrap().is_empty());

    // Neither recipient fetches first: an ack is also a discard.
    h.clock.advance(10);
    h.svc.ack(&carol.session, &id).await.unwrap();
    assert_eq!(
        states(&h.only_receipt(&alice).await),
        [
            ("bob".into(), Pending, T0),
            ("carol".into(), Delivered, T0 + 10)
        ]
    );
    h.clock.advance(10);
    let last = h.svc.ack(&bob.session, &id).await.unwrap();
    assert!(last.key_erased);
    assert_eq!(
        states(&h.only_receipt(&alice).await),
        [
            ("bob".into(), Delivered, T0 + 20),
            ("carol".into(), Delivered, T0 + 10)
        ]
    );
    // Nothing left to recall, and the message says why.
    let s = status(h.svc.recall(&alice.session, &id).await.unwrap_err());
    assert_eq!(s.code(), Code::NotFound);
    assert_eq!(
        s.message(),
        format!(
            "voicemail {} was already delivered to everyone; nothing to recall",
            hex::encode(id)
        )
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_marks_the_unread_and_receipts_go_a_week_later() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    h.register("carol").await;
    let id = h.send(&alice, &["bob", "carol"], T0 + 2 * HOUR).await;
    h.svc.ack(&bob.session, &id).await.unwrap();

    h.clock.advance(2 * HOUR);
    let purged = h.svc.purge_expired().await.unwrap();
    assert_eq!((purged.voicemails, purged.receipts), (1, 0));
    assert_eq!(
        states(&h.only_receipt(&alice).await),
        [
            ("bob".into(), Delivered, T0),
            ("carol".into(), ExpiredUnread, T0 + 2 * HOUR)
        ]
    );
    let s = status(h.svc.recall(&alice.session, &id).await.unwrap_err());
    assert_eq!(s.code(), Code::NotFound);
    assert!(
        s.message().contains("expired at Unix time"),
        "{}",
        s.message()
    );

    h.clock.advance(RECEIPT_KEEP_SECS - 1);
    assert_eq!(h.svc.purge_expired().await.unwrap().receipts, 0);
    h.clock.advance(1);
    assert_eq!(h.svc.purge_expired().await.unwrap().receipts, 1);
    assert!(h.svc.list_sent(&alice.session).await.unwrap().is_empty());
    // With the receipt gone, a recall can only say there is nothing.
    let s = status(h.svc.recall(&alice.session, &id).await.unwrap_err());
    assert_eq!(s.code(), Code::NotFound);
    assert!(s.message().contains("ListSent"), "{}", s.message());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_sender_recalls_and_gets_a_delete_order_that_verifies() {
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
    h.clock.advance(5);
    h.svc.ack(&bob.session, &id).await.unwrap();

    // A recipient may not recall it; the message names no one.
    for who in [&bob, &carol] {
        let s = status(h.svc.recall(&who.session, &id).await.unwrap_err());
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(
            s.message(),
            format!(
                "only the sender of voicemail {} may recall it",
                hex::encode(id)
            )
        );
        assert!(!s.message().contains("alice"));
    }
    let s = status(h.svc.recall(&alice.session, &[1; 3]).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(s.message(), "voicemail_id: 3 bytes, expected 16");
    assert_eq!(h.svc.list_pending(&carol.session).await.unwrap().len(), 1);

    h.clock.advance(5);
    let recalled = h.svc.recall(&alice.session, &id).await.unwrap();
    assert_eq!(recalled.locator, d.locator);
    let order = DeleteOrder::from_bytes(&recalled.delete_order.unwrap().to_bytes()).unwrap();
    assert_eq!(
        (order.serial, order.reason, order.expires_at),
        (
            d.grant_serial,
            DeleteReason::Recalled,
            grant.body.expires_at
        )
    );
    order.verify(&h.svc.keys().cluster_public_key()).unwrap();

    // Gone from the inbox it was still in, and its key with it.
    assert!(h.svc.list_pending(&carol.session).await.unwrap().is_empty());
    assert!(
        h.svc
            .pending_one(&carol.session, id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!h.svc.store().voicemail_exists(&id).unwrap());
    let err = h.svc.ack(&carol.session, &id).await.unwrap_err();
    assert!(matches!(err, AuthError::NotPending { .. }), "{err:?}");
    assert_eq!(
        states(&h.only_receipt(&alice).await),
        [
            ("bob".into(), Delivered, T0 + 5),
            ("carol".into(), Recalled, T0 + 10)
        ]
    );
    // A second recall: not found, and says so.
    let s = status(h.svc.recall(&alice.session, &id).await.unwrap_err());
    assert_eq!(s.code(), Code::NotFound);
    assert!(
        s.message()
            .contains(&format!("already recalled at Unix time {}", T0 + 10)),
        "{}",
        s.message()
    );
    h.stop().await;
}
