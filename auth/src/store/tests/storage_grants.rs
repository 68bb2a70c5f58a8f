//! Storage grants: serials, the quota, one grant per deposit, the delete
//! order on the last ack, and the purge of expired and unused grants.

use vmail_proto::grant::DeleteReason;
use vmail_proto::share::ShareKey;

use super::*;

fn issued(outcome: GrantOutcome) -> StorageGrant {
    match outcome {
        GrantOutcome::Issued(g, ..) => g,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn users(f: &Fixture, names: &[&str]) {
    for u in names {
        f.register(u);
    }
}

#[test]
fn serials_count_up_from_one_and_each_grant_is_stored_and_signed() {
    let f = Fixture::new();
    users(&f, &["alice", "bob"]);
    let vk = f.cluster.verifying_key();
    for want in 1..=3u64 {
        let g = issued(f.issue_grant("alice", &["bob"], T0, T0 + DAY, NO_CAP));
        assert_eq!(g.body.serial, want);
        g.verify(&vk).unwrap();
        // The one encoding reads back and verifies, as a holder reads it.
        let back = StorageGrant::from_bytes(&g.to_bytes()).unwrap();
        back.verify(&vk).unwrap();
        assert_eq!(back, g);
        let row = f.store.storage_grant(want).unwrap().unwrap();
        assert_eq!(
            row,
            StorageGrantRecord {
                owner: "alice".into(),
                body: g.body.clone(),
                deposited: None,
                deleted: None,
                share_nodes: vec![7],
            }
        );
    }
    assert_eq!(f.rows(STORAGE_GRANTS), 3);
    assert_eq!(f.rows(OPEN_GRANTS), 3);
    // Certificate serials are a separate counter: two registrations took
    // 1 and 2, and the grants took none.
    let (_, cert) = f.begin_session("bob", T0 + DAY);
    assert_eq!(cert.serial, 3);
}

#[test]
fn an_unknown_recipient_is_named_and_uses_no_serial() {
    let f = Fixture::new();
    users(&f, &["alice", "bob"]);
    assert_eq!(
        f.issue_grant("alice", &["bob", "mallory"], T0, T0 + DAY, NO_CAP),
        GrantOutcome::UnknownRecipient("mallory".into())
    );
    assert_eq!(f.rows(STORAGE_GRANTS), 0);
    let g = issued(f.issue_grant("alice", &["bob"], T0, T0 + DAY, NO_CAP));
    assert_eq!(g.body.serial, 1);
}

#[test]
fn the_quota_counts_open_grants_until_deposited_or_their_window_closes() {
    let f = Fixture::new();
    users(&f, &["alice", "bob", "carol"]);
    let a = issued(f.issue_grant("alice", &["bob"], T0, T0 + DAY, 2));
    issued(f.issue_grant("alice", &["bob"], T0 + 1, T0 + DAY, 2));
    assert_eq!(
        f.issue_grant("alice", &["bob"], T0 + 2, T0 + DAY, 2),
        GrantOutcome::TooMany { limit: 2 }
    );
    // The quota is per user.
    issued(f.issue_grant("carol", &["bob"], T0 + 2, T0 + DAY, 2));
    // A deposit frees its grant's place.
    let vm = f.voicemail("alice", &["bob"], T0 + 3, T0 + DAY);
    assert_eq!(
        f.deposit_under(
            &random_bytes::<16>(),
            random_bytes(),
            &vm,
            a.body.serial,
            NO_CAP
        ),
        DepositOutcome::Stored(vm.id)
    );
    let c = issued(f.issue_grant("alice", &["bob"], T0 + 4, T0 + DAY, 2));
    assert_eq!(
        f.issue_grant("alice", &["bob"], T0 + 5, T0 + DAY, 2),
        GrantOutcome::TooMany { limit: 2 }
    );
    // Once a window has closed, that grant no longer counts.
    let after = T0 + 1 + UPLOAD_WINDOW_SECS;
    issued(f.issue_grant("alice", &["bob"], after, T0 + DAY, 2));
    assert!(c.body.upload_until > after);
}

#[test]
fn a_deposit_takes_its_expiry_from_the_grant_and_uses_it_up() {
    let f = Fixture::new();
    users(&f, &["alice", "bob", "carol"]);
    let g = issued(f.issue_grant("alice", &["bob"], T0, T0 + 3600, NO_CAP));
    let serial = g.body.serial;
    // The sender asked for a day; the grant says an hour.
    let vm = f.voicemail("alice", &["bob"], T0 + 10, T0 + DAY);
    let request_id = random_bytes::<16>();
    let digest: [u8; 32] = random_bytes();
    assert_eq!(
        f.deposit_under(&request_id, digest, &vm, serial, NO_CAP),
        DepositOutcome::Stored(vm.id)
    );
    let pending = f.store.pending("bob", T0 + 10).unwrap();
    assert_eq!(pending[0].metadata.expires_at, T0 + 3600);
    assert!(f.store.pending("bob", T0 + 3600).unwrap().is_empty());
    let row = f.store.storage_grant(serial).unwrap().unwrap();
    assert_eq!((row.deposited, row.deleted), (Some(vm.id), None));
    assert_eq!(f.store.voicemail_grant(&vm.id).unwrap(), Some(serial));
    assert_eq!(f.rows(OPEN_GRANTS), 0);

    // A retry of the same request replays its first result, grant and all.
    let retry = f.voicemail("alice", &["bob"], T0 + 20, T0 + DAY);
    assert_eq!(
        f.deposit_under(&request_id, digest, &retry, serial, NO_CAP),
        DepositOutcome::Replayed(vm.id)
    );
    // Another deposit under the same grant is refused, naming the first.
    let other = f.voicemail("alice", &["carol"], T0 + 20, T0 + DAY);
    let counts = f.store.counts().unwrap();
    assert_eq!(
        f.deposit_under(
            &random_bytes::<16>(),
            random_bytes(),
            &other,
            serial,
            NO_CAP
        ),
        DepositOutcome::GrantRefused(GrantRefusal::Used {
            serial,
            voicemail: vm.id
        })
    );
    assert_eq!(f.store.counts().unwrap(), counts);
    assert!(f.store.pending("carol", T0 + 20).unwrap().is_empty());
}

#[test]
fn a_deposit_under_an_unknown_foreign_or_lapsed_grant_is_refused() {
    let f = Fixture::new();
    users(&f, &["alice", "bob", "carol"]);
    let g = issued(f.issue_grant("alice", &["bob"], T0, T0 + DAY, NO_CAP));
    let serial = g.body.serial;
    let deposit_at = |sender: &str, at: u64, serial: u64| {
        let vm = f.voicemail(sender, &["bob"], at, T0 + DAY);
        f.deposit_under(&random_bytes::<16>(), random_bytes(), &vm, serial, NO_CAP)
    };
    assert_eq!(
        deposit_at("alice", T0, 99),
        DepositOutcome::GrantRefused(GrantRefusal::Unknown(99))
    );
    assert_eq!(
        deposit_at("carol", T0, serial),
        DepositOutcome::GrantRefused(GrantRefusal::NotOwner(serial))
    );
    let closes = g.body.upload_until + DEPOSIT_GRACE_SECS;
    assert_eq!(
        deposit_at("alice", closes + 1, serial),
        DepositOutcome::GrantRefused(GrantRefusal::Lapsed {
            serial,
            upload_until: g.body.upload_until
        })
    );
    // Shares sealed to other servers than the grant lists (the fixture's
    // grants list node 7 alone): one missing, one too many.
    for nodes in [vec![], vec![7, 8]] {
        let mut vm = f.voicemail("alice", &["bob"], T0, T0 + DAY);
        let share = vm.shares[0].clone();
        vm.shares = nodes
            .iter()
            .map(|&node_id| StoredShare {
                node_id,
                ..share.clone()
            })
            .collect();
        assert_eq!(
            f.deposit_under(&random_bytes::<16>(), random_bytes(), &vm, serial, NO_CAP),
            DepositOutcome::GrantRefused(GrantRefusal::Shares {
                serial,
                listed: vec![7],
                sealed_to: nodes,
            })
        );
    }
    // Nothing of those refusals used the grant: the last second of the
    // grace still deposits.
    assert_eq!(f.store.counts().unwrap().voicemails, 0);
    assert!(matches!(
        deposit_at("alice", closes, serial),
        DepositOutcome::Stored(_)
    ));
}

#[test]
fn the_last_ack_signs_a_delete_order_and_marks_the_grant_delivered() {
    let f = Fixture::new();
    users(&f, &["alice", "bob", "carol"]);
    let vm = f.voicemail("alice", &["bob", "carol"], T0, T0 + DAY);
    let g = f.grant_for(&vm);
    let serial = g.body.serial;
    assert_eq!(
        f.deposit_under(&random_bytes::<16>(), random_bytes(), &vm, serial, NO_CAP),
        DepositOutcome::Stored(vm.id)
    );
    assert_eq!(
        f.ack("bob", &vm.id, T0 + 1),
        AckOutcome::Acked {
            key_erased: false,
            delete_order: None
        }
    );
    assert_eq!(
        f.store.storage_grant(serial).unwrap().unwrap().deleted,
        None
    );
    let AckOutcome::Acked {
        key_erased: true,
        delete_order: Some(order),
    } = f.ack("carol", &vm.id, T0 + 2)
    else {
        panic!("the last ack erases the key and orders the shards deleted");
    };
    assert_eq!(
        (order.serial, order.reason, order.expires_at),
        (serial, DeleteReason::Delivered, g.body.expires_at)
    );
    order.verify(&f.cluster.verifying_key()).unwrap();
    let back = DeleteOrder::from_bytes(&order.to_bytes()).unwrap();
    back.verify(&f.cluster.verifying_key()).unwrap();
    // The grant row stays until its expiry, marked; the mapping is gone.
    let row = f.store.storage_grant(serial).unwrap().unwrap();
    assert_eq!(
        (row.deposited, row.deleted),
        (Some(vm.id), Some(DeleteReason::Delivered))
    );
    assert_eq!(f.store.voicemail_grant(&vm.id).unwrap(), None);
    // A deleted grant still serves no other deposit.
    let other = f.voicemail("alice", &["bob"], T0 + 3, T0 + DAY);
    assert!(matches!(
        f.deposit_under(
            &random_bytes::<16>(),
            random_bytes(),
            &other,
            serial,
            NO_CAP
        ),
        DepositOutcome::GrantRefused(GrantRefusal::Used { .. })
    ));
    assert_eq!(f.purge_counts(T0 + DAY - 1).storage_grants, 0);
    assert_eq!(f.purge_counts(T0 + DAY).storage_grants, 1);
    assert!(f.store.storage_grant(serial).unwrap().is_none());
}

#[test]
fn the_purge_drops_unused_grants_after_the_grace_and_the_rest_at_expiry() {
    let f = Fixture::new();
    users(&f, &["alice", "bob"]);
    let unused = issued(f.issue_grant("alice", &["bob"], T0, T0 + DAY, NO_CAP));
    let later = issued(f.issue_grant("alice", &["bob"], T0 + 100, T0 + DAY, NO_CAP));
    let vm = f.voicemail("alice", &["bob"], T0, T0 + 2 * DAY);
    let used = f.grant_for(&vm);
    f.deposit_under(
        &random_bytes::<16>(),
        random_bytes(),
        &vm,
        used.body.serial,
        NO_CAP,
    );

    let closes = unused.body.upload_until + DEPOSIT_GRACE_SECS;
    assert_eq!(
        f.purge_counts(closes).storage_grants,
        0,
        "still depositable"
    );
    assert_eq!(f.purge_counts(closes + 1).storage_grants, 1);
    assert!(f.store.storage_grant(unused.body.serial).unwrap().is_none());
    assert!(f.store.storage_grant(later.body.serial).unwrap().is_some());
    assert_eq!(f.rows(OPEN_GRANTS), 1);
    assert_eq!(f.purge_counts(closes + 100).storage_grants, 0);
    assert_eq!(f.purge_counts(closes + 101).storage_grants, 1);
    assert_eq!(f.rows(OPEN_GRANTS), 0);
    // The deposited grant lives as long as its voicemail, and goes with it.
    assert_eq!(f.purge_counts(T0 + DAY).storage_grants, 0);
    let c = f.purge_counts(T0 + 2 * DAY);
    assert_eq!((c.voicemails, c.storage_grants), (1, 1));
    assert_eq!(f.rows(STORAGE_GRANTS), 0);
    assert_eq!(f.rows(VOICEMAIL_GRANTS), 0);
    assert_eq!(f.rows(GRANT_ROSTERS), 0, "the rosters go with their grants");
}

#[test]
fn each_grant_records_the_share_keys_it_hands_out_as_they_were_when_issued() {
    let f = Fixture::new();
    users(&f, &["alice", "bob"]);
    let publish = |epoch: u32, public: [u8; 32]| {
        f.store
            .write(|tx| f.store.publish_share_key(tx, 7, epoch, public, None, T0))
            .unwrap();
    };
    publish(1, [1; 32]);
    let first = issued(f.issue_grant("alice", &["bob"], T0, T0 + DAY, NO_CAP));
    publish(2, [2; 32]);
    let second = issued(f.issue_grant("alice", &["bob"], T0, T0 + DAY, NO_CAP));
    let key = |epoch: u32, public: [u8; 32]| ShareKey {
        node_id: 7,
        epoch,
        public,
    };
    assert_eq!(
        f.store.grant_roster(first.body.serial).unwrap(),
        Some(vec![key(1, [1; 32])]),
        "a rotation after the grant leaves its roster as issued"
    );
    assert_eq!(
        f.store.grant_roster(second.body.serial).unwrap(),
        Some(vec![key(2, [2; 32])])
    );
    assert_eq!(f.store.grant_roster(99).unwrap(), None);
    assert_eq!(f.rows(GRANT_ROSTERS), 2);
}
