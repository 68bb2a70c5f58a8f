//! Receipts, recalls and retention: each recipient's state through acks,
//! the expiry purge and a recall; what a recall erases and why it refuses;
//! how long receipts are kept; retention rows and their hold on a grant's
//! expiry; and a database from before these tables.

use vmail_proto::grant::DeleteReason;

use super::super::schema::{RECEIPTS, RETENTION};
use super::*;

fn users(f: &Fixture, names: &[&str]) {
    for u in names {
        f.register(u);
    }
}

impl Fixture {
    fn recall(&self, sender: &str, id: &VoicemailId, now: u64) -> RecallOutcome {
        self.store
            .write(|tx| {
                self.store
                    .recall(tx, sender, id, now, |serial, reason, exp| {
                        DeleteOrder::sign(serial, reason, exp, &self.cluster)
                    })
            })
            .unwrap()
    }

    /// `sender`'s receipt of `id`, from ListSent.
    fn receipt(&self, sender: &str, id: &VoicemailId) -> Receipt {
        self.store
            .sent(sender, usize::MAX)
            .unwrap()
            .into_iter()
            .find(|r| &r.id == id)
            .expect("a receipt")
    }

    fn set_retention(&self, user: &str, secs: u64) {
        self.store
            .write(|tx| self.store.set_retention(tx, user, secs))
            .unwrap()
    }
}

/// Each recipient's (name, state, at).
fn states(r: &Receipt) -> Vec<(&str, DeliveryState, u64)> {
    r.recipients
        .iter()
        .map(|l| (l.username.as_str(), l.state, l.at))
        .collect()
}

use DeliveryState::{Delivered, ExpiredUnread, Pending, Recalled};

#[test]
fn a_receipt_follows_each_recipient_from_deposit_through_their_acks() {
    let f = Fixture::new();
    users(&f, &["alice", "bob", "carol"]);
    let vm = f.voicemail("alice", &["carol", "bob"], T0, T0 + DAY);
    f.deposit(&vm);
    let r = f.receipt("alice", &vm.id);
    assert_eq!(
        (
            r.deposited_at,
            r.expires_at,
            r.size,
            r.content_type.as_str()
        ),
        (T0, T0 + DAY, 4321, "audio/wav")
    );
    assert_eq!(states(&r), [("bob", Pending, T0), ("carol", Pending, T0)]);
    // Only the sender has it.
    assert!(f.store.sent("bob", 10).unwrap().is_empty());

    // An ack needs no fetch before it: this is also how a recipient
    // discards a voicemail unheard.
    f.ack("carol", &vm.id, T0 + 5);
    assert_eq!(
        states(&f.receipt("alice", &vm.id)),
        [("bob", Pending, T0), ("carol", Delivered, T0 + 5)]
    );
    f.ack("bob", &vm.id, T0 + 9);
    assert!(!f.store.voicemail_exists(&vm.id).unwrap());
    // The receipt outlives the voicemail row.
    assert_eq!(
        states(&f.receipt("alice", &vm.id)),
        [("bob", Delivered, T0 + 9), ("carol", Delivered, T0 + 5)]
    );
    // A stranger's or a second ack changes nothing.
    f.ack("bob", &vm.id, T0 + 10);
    assert_eq!(f.receipt("alice", &vm.id).recipients[0].at, T0 + 9);
}

#[test]
fn the_expiry_purge_marks_whoever_was_pending_expired_unread() {
    let f = Fixture::new();
    users(&f, &["alice", "bob", "carol"]);
    let vm = f.voicemail("alice", &["bob", "carol"], T0, T0 + 100);
    f.deposit(&vm);
    f.ack("bob", &vm.id, T0 + 1);
    assert_eq!(f.purge(T0 + 100), (0, 1));
    assert_eq!(
        states(&f.receipt("alice", &vm.id)),
        [
            ("bob", Delivered, T0 + 1),
            ("carol", ExpiredUnread, T0 + 100)
        ]
    );
}

#[test]
fn list_sent_is_newest_first_and_capped() {
    let f = Fixture::new();
    users(&f, &["alice", "bob"]);
    let older = f.voicemail("alice", &["bob"], T0 + 10, T0 + DAY);
    let newer = f.voicemail("alice", &["bob"], T0 + 20, T0 + DAY);
    let oldest = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    for vm in [&older, &newer, &oldest] {
        f.deposit(vm);
    }
    let ids = |n| -> Vec<VoicemailId> {
        f.store
            .sent("alice", n)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(ids(10), [newer.id, older.id, oldest.id]);
    assert_eq!(ids(2), [newer.id, older.id]);
}

#[test]
fn a_recall_erases_the_voicemail_for_those_pending_and_signs_a_delete_order() {
    let f = Fixture::new();
    users(&f, &["alice", "bob", "carol"]);
    let vm = f.voicemail("alice", &["bob", "carol"], T0, T0 + DAY);
    let g = f.grant_for(&vm);
    let serial = g.body.serial;
    f.deposit_under(&random_bytes::<16>(), random_bytes(), &vm, serial, NO_CAP);
    f.ack("bob", &vm.id, T0 + 1);

    // Not the sender: refused, and nothing changes.
    assert_eq!(f.recall("bob", &vm.id, T0 + 2), RecallOutcome::NotSender);
    assert_eq!(f.recall("carol", &vm.id, T0 + 2), RecallOutcome::NotSender);
    assert!(f.store.voicemail_exists(&vm.id).unwrap());

    let RecallOutcome::Recalled {
        locator,
        delete_order: Some(order),
    } = f.recall("alice", &vm.id, T0 + 3)
    else {
        panic!("the sender's recall erases the voicemail and signs an order");
    };
    assert_eq!(locator, vm.locator);
    assert_eq!(
        (order.serial, order.reason, order.expires_at),
        (serial, DeleteReason::Recalled, g.body.expires_at)
    );
    order.verify(&f.cluster.verifying_key()).unwrap();
    // Gone like after the last ack: row, key, inbox entry, waiting count.
    assert!(!f.store.voicemail_exists(&vm.id).unwrap());
    assert!(f.store.pending("carol", T0 + 3).unwrap().is_empty());
    assert_eq!(f.waiting("carol"), 0);
    assert_eq!(f.rows(GRANTS), 0);
    assert_eq!(f.store.voicemail_grant(&vm.id).unwrap(), None);
    assert_eq!(
        f.store.storage_grant(serial).unwrap().unwrap().deleted,
        Some(DeleteReason::Recalled)
    );
    // Who had it keeps it; who had not is marked recalled.
    assert_eq!(
        states(&f.receipt("alice", &vm.id)),
        [("bob", Delivered, T0 + 1), ("carol", Recalled, T0 + 3)]
    );
    assert_eq!(f.ack("carol", &vm.id, T0 + 4), AckOutcome::NotPending);
    // Twice: nothing to recall, and the receipt says why. A stranger
    // learns nothing of a voicemail that is gone.
    assert_eq!(
        f.recall("alice", &vm.id, T0 + 5),
        RecallOutcome::Gone(RecallGone::Recalled(T0 + 3))
    );
    assert_eq!(
        f.recall("bob", &vm.id, T0 + 5),
        RecallOutcome::Gone(RecallGone::Unknown)
    );
}

#[test]
fn a_recall_of_what_is_delivered_expired_or_unknown_says_which() {
    let f = Fixture::new();
    users(&f, &["alice", "bob"]);
    let delivered = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    let expired = f.voicemail("alice", &["bob"], T0, T0 + 100);
    f.deposit(&delivered);
    f.deposit(&expired);
    f.ack("bob", &delivered.id, T0 + 1);
    assert_eq!(
        f.recall("alice", &delivered.id, T0 + 2),
        RecallOutcome::Gone(RecallGone::Delivered)
    );
    // Expired but not yet purged, then purged: the same answer.
    assert_eq!(
        f.recall("alice", &expired.id, T0 + 100),
        RecallOutcome::Gone(RecallGone::Expired(T0 + 100))
    );
    assert!(f.store.voicemail_exists(&expired.id).unwrap());
    f.purge(T0 + 100);
    assert_eq!(
        f.recall("alice", &expired.id, T0 + 101),
        RecallOutcome::Gone(RecallGone::Expired(T0 + 100))
    );
    assert_eq!(
        f.recall("alice", &random_bytes(), T0 + 101),
        RecallOutcome::Gone(RecallGone::Unknown)
    );
}

#[test]
fn receipts_are_kept_until_a_week_after_expiry() {
    let f = Fixture::new();
    users(&f, &["alice", "bob"]);
    let vm = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    let later = f.voicemail("alice", &["bob"], T0, T0 + 2 * DAY);
    f.deposit(&vm);
    f.deposit(&later);
    f.ack("bob", &vm.id, T0 + 1);
    let gone = T0 + DAY + RECEIPT_KEEP_SECS;
    assert_eq!(f.purge_counts(gone - 1).receipts, 0);
    assert_eq!(f.store.sent("alice", 10).unwrap().len(), 2);
    assert_eq!(f.purge_counts(gone).receipts, 1);
    let left = f.store.sent("alice", 10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, later.id);
    assert_eq!(states(&left[0]), [("bob", ExpiredUnread, T0 + 2 * DAY)]);
    assert_eq!(f.purge_counts(gone + DAY).receipts, 1);
    assert_eq!(f.rows(RECEIPTS), 0);
}

#[test]
fn a_grant_expires_by_the_shortest_retention_its_recipients_chose() {
    let f = Fixture::new();
    users(&f, &["alice", "bob", "carol", "dave"]);
    assert_eq!(f.store.retention("bob").unwrap(), None);
    f.set_retention("bob", 2 * 3600);
    f.set_retention("carol", 5 * 3600);
    assert_eq!(f.store.retention("bob").unwrap(), Some(7200));
    let issued =
        |recipients: &[&str]| match f.issue_grant("alice", recipients, T0, T0 + DAY, NO_CAP) {
            GrantOutcome::Issued(g, ..) => g.body,
            other => panic!("{other:?}"),
        };
    let both = issued(&["carol", "bob"]);
    assert_eq!((both.expires_at, both.upload_until), (T0 + 7200, T0 + 600));
    assert_eq!(issued(&["carol", "dave"]).expires_at, T0 + 5 * 3600);
    // Nobody chose one: the terms stand.
    assert_eq!(issued(&["dave"]).expires_at, T0 + DAY);
    // 0 removes the choice.
    f.set_retention("bob", 0);
    assert_eq!(f.store.retention("bob").unwrap(), None);
    assert_eq!(f.rows(RETENTION), 1);
    assert_eq!(issued(&["bob"]).expires_at, T0 + DAY);
}

#[test]
fn a_database_from_before_retention_and_receipts_opens_with_them_empty() {
    let f = Fixture::new();
    f.register("alice");
    f.set_retention("alice", 7200);
    // Make the file look as it did before: without the two tables.
    f.store
        .write(|tx| {
            tx.delete_table(RETENTION).map_err(db_err)?;
            tx.delete_table(RECEIPTS).map_err(db_err)?;
            Ok(())
        })
        .unwrap();
    drop(f.store);
    let store = Store::open(&f.path, f.data_key.clone(), &f.binding).unwrap();
    assert!(store.user("alice").unwrap().is_some());
    assert_eq!(store.retention("alice").unwrap(), None);
    assert!(store.sent("alice", 10).unwrap().is_empty());
    // And it snapshots.
    store.export().unwrap();
}
