//! Voicemails: deposits, delivery, acks, the inbox cap and the purge.

use super::*;

#[test]
fn deposit_pending_ack_erases_the_key_with_the_last_ack() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let vm = f.voicemail("alice", &["carol", "bob"], T0, T0 + DAY);
    f.deposit(&vm);
    assert_eq!(f.store.counts().unwrap().grants, 2);

    for who in ["bob", "carol"] {
        let pending = f.store.pending(who, T0).unwrap();
        assert_eq!(ids(&pending), [vm.id], "{who}");
        assert_same_voicemail(&pending[0], &vm);
        assert_eq!(pending[0].recipients.to_strings(), ["bob", "carol"]);
        assert_same_voicemail(&f.store.pending_one(who, &vm.id).unwrap().unwrap(), &vm);
    }
    // The sender is not a recipient.
    assert!(f.store.pending("alice", T0).unwrap().is_empty());
    assert!(f.store.pending_one("alice", &vm.id).unwrap().is_none());

    assert_eq!(
        f.ack("bob", &vm.id, T0 + 1),
        AckOutcome::Acked {
            key_erased: false,
            delete_order: None
        }
    );
    assert!(f.store.voicemail_exists(&vm.id).unwrap());
    assert!(f.store.pending("bob", T0 + 1).unwrap().is_empty());
    assert!(f.store.pending_one("bob", &vm.id).unwrap().is_none());
    assert_eq!(ids(&f.store.pending("carol", T0 + 1).unwrap()), [vm.id]);

    assert!(matches!(
        f.ack("carol", &vm.id, T0 + 2),
        AckOutcome::Acked {
            key_erased: true,
            delete_order: Some(_)
        }
    ));
    assert!(!f.store.voicemail_exists(&vm.id).unwrap());
    assert!(f.store.pending("carol", T0 + 2).unwrap().is_empty());
    assert!(f.store.pending_one("carol", &vm.id).unwrap().is_none());
    let counts = f.store.counts().unwrap();
    assert_eq!((counts.voicemails, counts.grants), (0, 0));
    assert_eq!((f.waiting("bob"), f.waiting("carol")), (0, 0));
}

#[test]
fn pending_is_oldest_first_and_hides_expired_voicemail() {
    let f = Fixture::new();
    f.register("alice");
    f.register("bob");
    // Deposited out of order, so that neither insertion order nor a random
    // id can pass for deposit order.
    let newest = f.voicemail("alice", &["bob"], T0 + 30, T0 + DAY);
    let oldest = f.voicemail("alice", &["bob"], T0 + 10, T0 + DAY);
    let middle = f.voicemail("alice", &["bob"], T0 + 20, T0 + DAY);
    let short = f.voicemail("alice", &["bob"], T0 + 15, T0 + 100);
    for vm in [&newest, &oldest, &middle, &short] {
        f.deposit(vm);
    }
    assert_eq!(
        ids(&f.store.pending("bob", T0 + 99).unwrap()),
        [oldest.id, short.id, middle.id, newest.id]
    );
    // At its expiry time a voicemail is no longer pending, though its row
    // stays until the purge.
    assert_eq!(
        ids(&f.store.pending("bob", T0 + 100).unwrap()),
        [oldest.id, middle.id, newest.id]
    );
    assert!(f.store.voicemail_exists(&short.id).unwrap());
    assert!(f.store.pending("bob", T0 + DAY).unwrap().is_empty());
}

#[test]
fn pending_keeps_recipients_apart_when_one_name_prefixes_another() {
    let f = Fixture::new();
    for u in ["alice", "bob", "bobby", "bo-b"] {
        f.register(u);
    }
    let to_bob = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    let to_bobby = f.voicemail("alice", &["bobby"], T0, T0 + DAY);
    let to_bo_b = f.voicemail("alice", &["bo-b"], T0, T0 + DAY);
    for vm in [&to_bob, &to_bobby, &to_bo_b] {
        f.deposit(vm);
    }
    assert_eq!(ids(&f.store.pending("bob", T0).unwrap()), [to_bob.id]);
    assert_eq!(ids(&f.store.pending("bobby", T0).unwrap()), [to_bobby.id]);
    assert_eq!(ids(&f.store.pending("bo-b", T0).unwrap()), [to_bo_b.id]);
    assert!(f.store.pending_one("bob", &to_bobby.id).unwrap().is_none());
}

#[test]
fn a_replayed_request_id_returns_the_first_result_or_is_refused() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let request_id = random_bytes::<16>();
    let digest: [u8; 32] = random_bytes();
    let first = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    assert_eq!(
        f.deposit_as(&request_id, digest, &first, NO_CAP),
        DepositOutcome::Stored(first.id)
    );
    let counts = f.store.counts().unwrap();

    // A retry (same digest) under a new server-chosen id gets the first id.
    let retry = f.voicemail("alice", &["bob"], T0 + 5, T0 + DAY);
    assert_eq!(
        f.deposit_as(&request_id, digest, &retry, NO_CAP),
        DepositOutcome::Replayed(first.id)
    );
    // Other content under the same request id is refused.
    let other = f.voicemail("alice", &["carol"], T0 + 5, T0 + DAY);
    assert_eq!(
        f.deposit_as(&request_id, random_bytes(), &other, NO_CAP),
        DepositOutcome::RequestIdReused
    );
    assert_eq!(f.store.counts().unwrap(), counts);
    assert!(!f.store.voicemail_exists(&retry.id).unwrap());
    assert!(f.store.pending("carol", T0).unwrap().is_empty());
    assert_eq!(ids(&f.store.pending("bob", T0).unwrap()), [first.id]);

    // Request ids are per sender: bob may use the same one.
    let from_bob = f.voicemail("bob", &["carol"], T0, T0 + DAY);
    assert_eq!(
        f.deposit_as(&request_id, digest, &from_bob, NO_CAP),
        DepositOutcome::Stored(from_bob.id)
    );
}

#[test]
fn an_unknown_recipient_stores_nothing() {
    let f = Fixture::new();
    f.register("alice");
    f.register("bob");
    let mut vm = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    vm.recipients = Recipients::parse(["bob", "zed", "mallory"]).unwrap();
    let request_id = random_bytes::<16>();
    assert_eq!(
        f.deposit_as(&request_id, random_bytes(), &vm, NO_CAP),
        DepositOutcome::UnknownRecipient("mallory".into()),
        "the first unknown name in canonical order"
    );
    let counts = f.store.counts().unwrap();
    assert_eq!((counts.voicemails, counts.grants), (0, 0));
    assert_eq!(f.waiting("bob"), 0);
    assert_eq!(f.rows(REQUESTS), 0);
    // The request id was not used up.
    vm.recipients = Recipients::parse(["bob"]).unwrap();
    assert_eq!(
        f.deposit_as(&request_id, random_bytes(), &vm, NO_CAP),
        DepositOutcome::Stored(vm.id)
    );
}

#[test]
fn a_full_inbox_refuses_deposits_for_that_recipient_only() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let cap = 2;
    let a = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    let b = f.voicemail("alice", &["bob", "carol"], T0 + 1, T0 + DAY);
    for vm in [&a, &b] {
        assert_eq!(
            f.deposit_as(&random_bytes::<16>(), random_bytes(), vm, cap),
            DepositOutcome::Stored(vm.id)
        );
    }
    assert_eq!((f.waiting("bob"), f.waiting("carol")), (2, 1));
    let counts = f.store.counts().unwrap();

    let c = f.voicemail("alice", &["carol", "bob"], T0 + 2, T0 + DAY);
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &c, cap),
        DepositOutcome::InboxFull("bob".into())
    );
    assert_eq!(f.store.counts().unwrap(), counts);
    assert_eq!(f.waiting("carol"), 1, "a refused deposit grants nobody");
    let to_carol = f.voicemail("alice", &["carol"], T0 + 2, T0 + DAY);
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &to_carol, cap),
        DepositOutcome::Stored(to_carol.id)
    );

    // An ack frees a place.
    assert!(matches!(
        f.ack("bob", &a.id, T0 + 3),
        AckOutcome::Acked {
            key_erased: true,
            delete_order: Some(_)
        }
    ));
    assert_eq!(f.waiting("bob"), 1);
    let d = f.voicemail("alice", &["bob"], T0 + 4, T0 + DAY);
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &d, cap),
        DepositOutcome::Stored(d.id)
    );
}

#[test]
fn acking_twice_as_a_stranger_or_after_expiry_is_not_pending() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let vm = f.voicemail("alice", &["bob", "carol"], T0, T0 + 100);
    f.deposit(&vm);
    // Neither the sender nor an unregistered name holds a grant.
    assert_eq!(f.ack("alice", &vm.id, T0), AckOutcome::NotPending);
    assert_eq!(f.ack("mallory", &vm.id, T0), AckOutcome::NotPending);
    assert_eq!(f.ack("bob", &random_bytes(), T0), AckOutcome::NotPending);
    assert_eq!(
        f.ack("bob", &vm.id, T0),
        AckOutcome::Acked {
            key_erased: false,
            delete_order: None
        }
    );
    assert_eq!(f.ack("bob", &vm.id, T0), AckOutcome::NotPending);
    assert_eq!(f.store.counts().unwrap().grants, 1);
    // Once expired, the last recipient's ack is refused; the purge erases it.
    assert_eq!(f.ack("carol", &vm.id, T0 + 100), AckOutcome::NotPending);
    assert!(f.store.voicemail_exists(&vm.id).unwrap());
    assert_eq!(f.waiting("carol"), 1);
}

#[test]
fn purge_erases_what_expired_and_counts_it() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let (gone_session, _) = f.begin_session("alice", T0 + 100);
    let (live_session, _) = f.begin_session("bob", T0 + DAY);
    let cap = 2;
    let gone = f.voicemail("alice", &["bob", "carol"], T0, T0 + 100);
    let live = f.voicemail("alice", &["bob"], T0 + 1, T0 + DAY);
    let gone_request = random_bytes::<16>();
    let gone_digest: [u8; 32] = random_bytes();
    assert_eq!(
        f.deposit_as(&gone_request, gone_digest, &gone, cap),
        DepositOutcome::Stored(gone.id)
    );
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &live, cap),
        DepositOutcome::Stored(live.id)
    );
    // Bob's inbox is full, and expired voicemail counts until the purge.
    let blocked = f.voicemail("alice", &["bob"], T0 + 100, T0 + DAY);
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &blocked, cap),
        DepositOutcome::InboxFull("bob".into())
    );

    assert_eq!(f.purge(T0 + 99), (0, 0), "nothing has expired yet");
    assert_eq!(f.rows(REQUESTS), 2);

    assert_eq!(f.purge(T0 + 100), (1, 1));
    assert!(f.store.session(&gone_session.token_hash).unwrap().is_none());
    assert_same_session(
        &f.store.session(&live_session.token_hash).unwrap().unwrap(),
        &live_session,
    );
    assert!(!f.store.voicemail_exists(&gone.id).unwrap());
    assert!(f.store.voicemail_exists(&live.id).unwrap());
    let counts = f.store.counts().unwrap();
    assert_eq!(
        (counts.sessions, counts.voicemails, counts.grants),
        (1, 1, 1)
    );
    assert_eq!(f.rows(VOICEMAILS), 1);
    assert_eq!(f.rows(GRANTS), 1);
    assert_eq!(
        f.rows(REQUESTS),
        1,
        "the expired voicemail's request row went"
    );
    assert_eq!((f.waiting("bob"), f.waiting("carol")), (1, 0));
    assert_eq!(f.rows(WAITING), 1, "no zero counts are kept");

    // Bob has room again.
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &blocked, cap),
        DepositOutcome::Stored(blocked.id)
    );
    // With its request row gone, the old request id is fresh again.
    let again = f.voicemail("alice", &["carol"], T0 + 100, T0 + DAY);
    assert_eq!(
        f.deposit_as(&gone_request, gone_digest, &again, cap),
        DepositOutcome::Stored(again.id)
    );
    assert_eq!(f.purge(T0 + 100), (0, 0), "a second purge finds nothing");
}
