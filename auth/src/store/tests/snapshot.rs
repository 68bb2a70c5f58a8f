//! Snapshots: export then import gives the same reads.

use super::*;
use crate::store::{
    FirstContactRules, GrantPolicy, PolicyList, PolicyMode, SenderLimits, reencode_snapshot,
};

#[test]
fn export_then_import_gives_identical_reads() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let invite = "c0ffee";
    f.register_with("dave", Some(invite));
    let (s1, _) = f.begin_session("alice", T0 + DAY);
    let (s2, _) = f.begin_session("bob", T0 + 100);
    let a = f.voicemail("alice", &["bob", "carol"], T0, T0 + DAY);
    let b = f.voicemail("carol", &["bob"], T0 + 1, T0 + DAY);
    f.deposit(&a);
    f.deposit(&b);
    let request_id = random_bytes::<16>();
    let digest: [u8; 32] = random_bytes();
    let c = f.voicemail("alice", &["dave"], T0 + 2, T0 + DAY);
    assert_eq!(
        f.deposit_as(&request_id, digest, &c, NO_CAP),
        DepositOutcome::Stored(c.id)
    );
    assert_eq!(
        f.ack("carol", &a.id, T0 + 3),
        AckOutcome::Acked {
            key_erased: false,
            delete_order: None
        }
    );
    f.store
        .write(|tx| f.store.set_retention(tx, "bob", 7200))
        .unwrap();
    // Spam-control rows: a policy, a contact, and a grant under policies
    // (a sender's ledger, its admission, a first contact).
    f.store
        .write(|tx| {
            f.store
                .set_policy(tx, "carol", Some(PolicyMode::Anyone), Some(true))?;
            f.store
                .edit_policy(tx, "bob", PolicyList::Contacts, &["carol".into()], &[])
                .map(|r| r.unwrap())
        })
        .unwrap();
    let policy = GrantPolicy {
        default_mode: PolicyMode::ContactsFirstContact,
        anonymous: false,
        limits: SenderLimits::NONE,
        first_contact: FirstContactRules {
            max_bytes: u64::MAX,
            ttl_secs: DAY,
            min_account_age_secs: 0,
        },
    };
    let outcome = f
        .store
        .write(|tx| {
            f.store.issue_grant(
                tx,
                "alice",
                &Recipients::parse(["dave"]).unwrap(),
                Fixture::terms(T0 + 2, T0 + DAY),
                T0 + 2,
                NO_CAP,
                Some(&policy),
                |body| body.sign(&f.cluster),
            )
        })
        .unwrap();
    assert!(matches!(outcome, GrantOutcome::Issued(..)), "{outcome:?}");
    let member_key = random_bytes();
    f.store
        .write(|tx| f.store.register_member_key(tx, 7, member_key))
        .unwrap();
    let (snapshot, _applied) = f.store.export().unwrap();

    // A second server of the same group (same keys) that held other rows.
    let path2 = f.dir.path().join("second.redb");
    Store::create(&path2, "auth-2", &f.data_key, &f.binding, 8, false).unwrap();
    let second = Store::open(&path2, f.data_key.clone(), &f.binding).unwrap();
    second
        .write(|tx| second.register(tx, "zoe", None, |serial| f.user_for("zoe", serial)))
        .unwrap();
    second.write(|tx| second.import(tx, &snapshot)).unwrap();

    assert!(
        second.user("zoe").unwrap().is_none(),
        "import replaces rows"
    );
    for u in ["alice", "bob", "carol", "dave"] {
        assert_same_user(
            &second.user(u).unwrap().unwrap(),
            &f.store.user(u).unwrap().unwrap(),
        );
        let want = f.store.pending(u, T0 + 3).unwrap();
        let got = second.pending(u, T0 + 3).unwrap();
        assert_eq!(ids(&got), ids(&want), "{u}");
        for (g, w) in got.iter().zip(&want) {
            assert_same_voicemail(g, w);
        }
    }
    for s in [&s1, &s2] {
        assert_same_session(&second.session(&s.token_hash).unwrap().unwrap(), s);
    }
    assert!(second.invite_used(invite).unwrap());
    assert_eq!(second.member_key(7).unwrap(), Some(member_key));
    for u in ["bob", "carol"] {
        assert_eq!(second.policy(u).unwrap(), f.store.policy(u).unwrap());
    }
    assert_eq!(second.ledger("alice").unwrap().sent, [T0 + 2]);
    assert_eq!(second.counts().unwrap(), f.store.counts().unwrap());
    assert_eq!(
        second.export().unwrap().0,
        snapshot,
        "a byte-identical copy"
    );
    // Request rows, waiting counts and the serial counter came too.
    let retry = f.voicemail("alice", &["dave"], T0 + 4, T0 + DAY);
    let replay = second
        .write(|tx| second.deposit(tx, &request_id, digest, &retry, 0, NO_CAP))
        .unwrap();
    assert_eq!(replay, DepositOutcome::Replayed(c.id));
    assert_eq!(
        second
            .write(|tx| {
                second.ack(tx, "carol", &a.id, T0 + 4, |s, r, e| {
                    DeleteOrder::sign(s, r, e, &f.cluster)
                })
            })
            .unwrap(),
        AckOutcome::NotPending
    );
    let next = |s: &Store| {
        s.write(|tx| s.register(tx, "erin", None, |serial| f.user_for("erin", serial)))
            .unwrap();
        s.user("erin").unwrap().unwrap().certificate.serial
    };
    assert_eq!(next(&second), next(&f.store));
    // So did the storage grants, their link to the voicemails, and their
    // serial counter.
    let serial = f.store.voicemail_grant(&a.id).unwrap().unwrap();
    assert_eq!(second.voicemail_grant(&a.id).unwrap(), Some(serial));
    assert_eq!(
        second.storage_grant(serial).unwrap(),
        f.store.storage_grant(serial).unwrap()
    );
    let next_grant = |s: &Store| {
        let outcome = s
            .write(|tx| {
                s.issue_grant(
                    tx,
                    "alice",
                    &Recipients::parse(["bob"]).unwrap(),
                    Fixture::terms(T0 + 5, T0 + DAY),
                    T0 + 5,
                    NO_CAP,
                    None,
                    |body| body.sign(&f.cluster),
                )
            })
            .unwrap();
        match outcome {
            GrantOutcome::Issued(g, ..) => g.body.serial,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(next_grant(&second), next_grant(&f.store));
    // And the retention choices and the senders' receipts.
    assert_eq!(second.retention("bob").unwrap(), Some(7200));
    assert_eq!(second.retention("carol").unwrap(), None);
    for sender in ["alice", "carol"] {
        let want = f.store.sent(sender, 100).unwrap();
        assert!(!want.is_empty());
        assert_eq!(second.sent(sender, 100).unwrap(), want, "{sender}");
    }
}

#[test]
fn a_snapshot_from_before_retention_and_receipts_still_installs() {
    let f = Fixture::new();
    for u in ["alice", "bob"] {
        f.register(u);
    }
    let (s, _) = f.begin_session("alice", T0 + DAY);
    let (snapshot, _) = f.store.export().unwrap();
    // With every added table empty, a snapshot ends in their zero lengths
    // (two of `Added`, six spam-control ones, the share keys, the key
    // generation, the reshares, the grant rosters, the member keys and join
    // approvals); without them it is what an older server made.
    let old = snapshot
        .strip_suffix(&[0; 14])
        .expect("fourteen empty tables last");
    for (part, tables) in [
        ("spam", 12),
        ("shares", 6),
        ("dkg", 5),
        ("reshares", 4),
        ("rosters", 3),
        ("members", 2),
    ] {
        let before = snapshot.strip_suffix(vec![0; tables].as_slice()).unwrap();
        assert_eq!(
            reencode_snapshot(before).unwrap(),
            snapshot,
            "before {part}"
        );
    }
    // Bytes after the last part are refused, not ignored.
    let mut long = snapshot.clone();
    long.push(0);
    assert!(reencode_snapshot(&long).is_err());

    let path2 = f.dir.path().join("second.redb");
    Store::create(&path2, "auth-2", &f.data_key, &f.binding, 8, false).unwrap();
    let second = Store::open(&path2, f.data_key.clone(), &f.binding).unwrap();
    second
        .write(|tx| second.set_retention(tx, "bob", 7200))
        .unwrap();
    second.write(|tx| second.import(tx, old)).unwrap();
    assert!(second.user("alice").unwrap().is_some());
    assert_same_session(&second.session(&s.token_hash).unwrap().unwrap(), &s);
    // The install replaced the added tables too: empty.
    assert_eq!(second.retention("bob").unwrap(), None);
    assert_eq!(second.export().unwrap().0, snapshot);
}
