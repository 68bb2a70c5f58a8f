//! The key-generation record: a ceremony's steps apply only in order, from
//! its members, once each; it ends with the key every member reported or
//! with the names of those who disagree; and none begins once a key exists.
//! A refresh runs among the key's share holders, keeps its threshold and
//! group key, and replaces the key only once it ends.

use super::*;
use crate::store::{Reshare, approval_bytes};

fn begin(f: &Fixture, roster: &[u64]) -> DkgOutcome {
    f.store
        .write(|tx| f.store.dkg_begin(tx, roster, T0))
        .unwrap()
}

fn step(f: &Fixture, node: u64, s: DkgStep) -> DkgOutcome {
    f.store.write(|tx| f.store.dkg_step(tx, node, s)).unwrap()
}

fn round1(ceremony: u64) -> DkgStep {
    DkgStep::Round1 {
        ceremony,
        package: vec![1, 2, 3],
    }
}

fn round2(ceremony: u64, to: &[u64]) -> DkgStep {
    DkgStep::Round2 {
        ceremony,
        sealed: to
            .iter()
            .map(|&to| SealedPackage {
                to,
                epoch: 1,
                enc: [9; 32],
                ciphertext: vec![7; 40],
            })
            .collect(),
    }
}

fn done(ceremony: u64, key: u8) -> DkgStep {
    DkgStep::Done {
        ceremony,
        group_key: [key; 32],
        public_digest: [key; 32],
    }
}

fn refused(o: DkgOutcome, why: &str) {
    assert!(
        matches!(&o, DkgOutcome::Refused(w) if w.contains(why)),
        "expected a refusal containing {why:?}, got {o:?}"
    );
}

#[test]
fn steps_apply_in_order_once_each_and_the_ceremony_ends_with_the_agreed_key() {
    let f = Fixture::new();
    refused(begin(&f, &[1, 2]), "at least 3");
    refused(begin(&f, &[1, 2, 2]), "at least 3");
    refused(step(&f, 1, round1(1)), "not the current one");
    assert_eq!(begin(&f, &[3, 1, 2]), DkgOutcome::Begun(1));
    let (n, c) = f.store.current_ceremony().unwrap().unwrap();
    assert_eq!((n, c.roster), (1, vec![1, 2, 3]));

    refused(step(&f, 4, round1(1)), "not a member");
    assert_eq!(step(&f, 1, round1(1)), DkgOutcome::Recorded);
    refused(step(&f, 1, round1(1)), "already sent");
    refused(step(&f, 1, round2(1, &[2, 3])), "before every round-1");
    assert_eq!(step(&f, 2, round1(1)), DkgOutcome::Recorded);
    assert_eq!(step(&f, 3, round1(1)), DkgOutcome::Recorded);

    refused(
        step(&f, 1, round2(1, &[2])),
        "expected one to each of [2, 3]",
    );
    refused(step(&f, 1, round2(1, &[1, 2])), "expected one to each");
    refused(step(&f, 1, done(1, 5)), "before every round-2");
    for (me, others) in [(1, [2, 3]), (2, [1, 3]), (3, [1, 2])] {
        assert_eq!(step(&f, me, round2(1, &others)), DkgOutcome::Recorded);
    }
    assert_eq!(step(&f, 1, done(1, 5)), DkgOutcome::Recorded);
    refused(step(&f, 1, done(1, 5)), "already reported");
    assert_eq!(step(&f, 2, done(1, 5)), DkgOutcome::Recorded);
    assert_eq!(f.store.group_key().unwrap(), None);
    assert_eq!(step(&f, 3, done(1, 5)), DkgOutcome::Completed([5; 32]));
    assert_eq!(f.store.group_key().unwrap(), Some((1, [5; 32])));
    refused(step(&f, 3, round1(1)), "has ended");
    refused(begin(&f, &[1, 2, 3]), "already has a key");
}

#[test]
fn disagreement_fails_the_ceremony_naming_the_odd_ones_and_a_new_one_may_begin() {
    let f = Fixture::new();
    assert_eq!(begin(&f, &[1, 2, 3]), DkgOutcome::Begun(1));
    for m in [1, 2, 3] {
        step(&f, m, round1(1));
    }
    for (me, others) in [(1, [2, 3]), (2, [1, 3]), (3, [1, 2])] {
        step(&f, me, round2(1, &others));
    }
    step(&f, 1, done(1, 5));
    step(&f, 2, done(1, 5));
    let o = step(&f, 3, done(1, 6));
    assert!(
        matches!(&o, DkgOutcome::Failed(why) if why.contains("0000000000000003")),
        "{o:?}"
    );
    assert_eq!(f.store.group_key().unwrap(), None);
    // An unfinished ceremony is abandoned by the next one too.
    assert_eq!(begin(&f, &[1, 2, 3]), DkgOutcome::Begun(2));
    assert_eq!(begin(&f, &[1, 2, 3]), DkgOutcome::Begun(3));
    refused(step(&f, 1, round1(2)), "not the current one");
    assert_eq!(step(&f, 1, round1(3)), DkgOutcome::Recorded);
}

fn refresh(f: &Fixture, roster: &[u64]) -> DkgOutcome {
    f.store
        .write(|tx| f.store.dkg_refresh_begin(tx, roster, T0))
        .unwrap()
}

/// Runs ceremony `n` among `roster` to the end, every member reporting `key`.
fn run(f: &Fixture, n: u64, roster: &[u64], key: u8) -> DkgOutcome {
    for m in roster {
        step(f, *m, round1(n));
    }
    for me in roster {
        let others: Vec<u64> = roster.iter().copied().filter(|m| m != me).collect();
        step(f, *me, round2(n, &others));
    }
    let mut last = None;
    for m in roster {
        last = Some(step(f, *m, done(n, key)));
    }
    last.unwrap()
}

#[test]
fn a_refresh_keeps_the_key_among_share_holders_and_leaves_it_in_place_until_it_ends() {
    let f = Fixture::new();
    refused(refresh(&f, &[1, 2]), "no key to reshare");
    assert_eq!(begin(&f, &[1, 2, 3]), DkgOutcome::Begun(1));
    assert_eq!(run(&f, 1, &[1, 2, 3], 5), DkgOutcome::Completed([5; 32]));
    let key = f.store.key_ceremony().unwrap().unwrap();
    assert_eq!((key.number, key.threshold), (1, 2));
    // Fewer than the key's threshold, a duplicate, or a server that holds
    // no share of the key cannot refresh it.
    refused(refresh(&f, &[1]), "needs at least 2");
    refused(refresh(&f, &[1, 1]), "needs at least 2");
    refused(refresh(&f, &[1, 4]), "0000000000000004 holds no share");

    // Server 3 left: 1 and 2 refresh 2-of-2. Until the refresh ends, the
    // key stays ceremony 1's.
    assert_eq!(refresh(&f, &[2, 1]), DkgOutcome::Begun(2));
    assert_eq!(
        f.store.reshare(2).unwrap(),
        Some(Reshare::Refresh {
            of: 1,
            threshold: 2
        })
    );
    assert_eq!(f.store.reshare(1).unwrap(), None);
    refused(step(&f, 3, round1(2)), "not a member of ceremony 2");
    step(&f, 1, round1(2));
    assert_eq!(f.store.group_key().unwrap(), Some((1, [5; 32])));
    // Abandoned for a new attempt, still under the same key.
    assert_eq!(refresh(&f, &[1, 2]), DkgOutcome::Begun(3));
    assert_eq!(run(&f, 3, &[1, 2], 5), DkgOutcome::Completed([5; 32]));
    let key = f.store.key_ceremony().unwrap().unwrap();
    assert_eq!(key.number, 3);
    assert_eq!(key.roster, vec![1, 2]);
    assert_eq!(key.threshold, 2, "a refresh keeps the key's threshold");
    // Server 3's share of ceremony 1 refreshes nothing any more.
    refused(refresh(&f, &[1, 3]), "0000000000000003 holds no share");
    refused(begin(&f, &[1, 2, 4]), "already has a key");
}

#[test]
fn a_refresh_that_changes_the_group_key_fails_and_the_old_key_stays() {
    let f = Fixture::new();
    begin(&f, &[1, 2, 3]);
    run(&f, 1, &[1, 2, 3], 5);
    assert_eq!(refresh(&f, &[1, 2, 3]), DkgOutcome::Begun(2));
    let o = run(&f, 2, &[1, 2, 3], 6);
    assert!(
        matches!(&o, DkgOutcome::Failed(why) if why.contains("reshare changed the group key")),
        "{o:?}"
    );
    assert_eq!(f.store.group_key().unwrap(), Some((1, [5; 32])));
}

#[test]
fn a_repair_for_a_node_without_a_member_key_applies_as_before_member_keys() {
    // Log entries from before member keys repaired nodes with none
    // recorded and no approvals; replayed, they must begin the same
    // ceremony.
    let f = Fixture::new();
    begin(&f, &[1, 2, 3]);
    run(&f, 1, &[1, 2, 3], 5);
    assert_eq!(repair(&f, 4, &[1, 2]), DkgOutcome::Begun(2));
}

fn repair(f: &Fixture, joining: u64, helpers: &[u64]) -> DkgOutcome {
    f.store
        .write(|tx| f.store.dkg_repair_begin(tx, joining, helpers, T0))
        .unwrap()
}

fn sealed_to(ceremony: u64, to: &[u64]) -> Vec<SealedPackage> {
    match round2(ceremony, to) {
        DkgStep::Round2 { sealed, .. } => sealed,
        _ => unreachable!(),
    }
}

#[test]
fn a_repair_takes_deltas_then_sigmas_from_exactly_its_helpers_and_every_member_reports() {
    let f = Fixture::new();
    refused(repair(&f, 4, &[1, 2]), "no key to reshare");
    begin(&f, &[1, 2, 3]);
    run(&f, 1, &[1, 2, 3], 5);
    refused(repair(&f, 3, &[1, 2]), "already holds a share");
    // A joining server is repaired only once the key's threshold of share
    // holders approved it with their member keys.
    let keys: Vec<SigningKey> = (0..=6)
        .map(|_| SigningKey::from_bytes(&random_bytes()))
        .collect();
    for n in 1..=5u64 {
        f.store
            .write(|tx| {
                f.store
                    .register_member_key(tx, n, keys[n as usize].verifying_key().to_bytes())
            })
            .unwrap();
    }
    let approve = |approver: u64, joining: u64, by: &SigningKey| {
        let joining_key = keys[joining as usize].verifying_key().to_bytes();
        let signature = ed25519_dalek::Signer::sign(by, &approval_bytes(joining, &joining_key));
        f.store
            .write(|tx| {
                f.store
                    .approve_join(tx, approver, joining, &signature.to_bytes())
            })
            .unwrap()
    };
    refused(repair(&f, 4, &[1, 2]), "has 0 of the 2 approvals");
    let not_approved = |r: Result<Vec<u64>, String>, why: &str| {
        assert!(r.as_ref().is_err_and(|e| e.contains(why)), "{r:?}");
    };
    not_approved(approve(4, 4, &keys[4]), "its own join");
    not_approved(approve(1, 4, &keys[2]), "does not verify");
    not_approved(
        approve(1, 6, &keys[1]),
        "0000000000000006 has no member key",
    );
    not_approved(
        approve(6, 4, &keys[1]),
        "0000000000000006 has no member key",
    );
    assert_eq!(approve(1, 4, &keys[1]), Ok(vec![1]));
    assert_eq!(approve(1, 4, &keys[1]), Ok(vec![1]), "once per approver");
    refused(repair(&f, 4, &[1, 2]), "has 1 of the 2 approvals");
    // Server 5 holds no share: its approval does not count.
    assert_eq!(approve(5, 4, &keys[5]), Ok(vec![1, 5]));
    refused(repair(&f, 4, &[1, 2]), "has 1 of the 2 approvals");
    assert_eq!(approve(3, 4, &keys[3]), Ok(vec![1, 3, 5]));
    assert_eq!(f.store.join_approvals(4).unwrap(), vec![1, 3, 5]);
    // An approval admits one membership: a membership without node 4
    // drops them, and one with it keeps them.
    let copy = Fixture::new();
    f.store
        .write(|tx| f.store.forget_approvals_outside(tx, &[1, 2, 3, 4, 5]))
        .unwrap();
    assert_eq!(f.store.join_approvals(4).unwrap(), vec![1, 3, 5]);
    let (snapshot, _) = f.store.export().unwrap();
    copy.store
        .write(|tx| copy.store.import(tx, &snapshot))
        .unwrap();
    copy.store
        .write(|tx| copy.store.forget_approvals_outside(tx, &[1, 2, 3]))
        .unwrap();
    assert!(copy.store.join_approvals(4).unwrap().is_empty());
    refused(repair(&f, 4, &[1]), "needs at least 2");
    refused(repair(&f, 4, &[1, 2, 3]), "exactly 2 helpers");
    refused(repair(&f, 4, &[1, 5]), "0000000000000005 holds no share");
    assert_eq!(repair(&f, 4, &[3, 1]), DkgOutcome::Begun(2));
    let (_, c) = f.store.current_ceremony().unwrap().unwrap();
    assert_eq!(c.roster, vec![1, 2, 3, 4]);

    let deltas = |to: &[u64]| DkgStep::RepairDeltas {
        ceremony: 2,
        sealed: sealed_to(2, to),
    };
    let sigma = |to: u64| DkgStep::RepairSigma {
        ceremony: 2,
        sealed: sealed_to(2, &[to]).remove(0),
    };
    refused(step(&f, 1, round1(2)), "is a repair");
    refused(step(&f, 2, deltas(&[1])), "not a helper");
    refused(step(&f, 4, deltas(&[1])), "not a helper");
    refused(step(&f, 1, deltas(&[2])), "expected one to each of [3]");
    refused(step(&f, 1, sigma(4)), "before every round-1");
    assert_eq!(step(&f, 1, deltas(&[3])), DkgOutcome::Recorded);
    refused(step(&f, 1, deltas(&[3])), "already sent its deltas");
    assert_eq!(step(&f, 3, deltas(&[1])), DkgOutcome::Recorded);
    refused(step(&f, 1, sigma(2)), "expected one to each of [4]");
    refused(step(&f, 2, done(2, 5)), "before every round-2");
    assert_eq!(step(&f, 1, sigma(4)), DkgOutcome::Recorded);
    refused(step(&f, 1, sigma(4)), "already sent its round-2");
    assert_eq!(step(&f, 3, sigma(4)), DkgOutcome::Recorded);
    for m in [1, 2, 3] {
        assert_eq!(step(&f, m, done(2, 5)), DkgOutcome::Recorded);
        assert_eq!(f.store.group_key().unwrap(), Some((1, [5; 32])));
    }
    assert_eq!(step(&f, 4, done(2, 5)), DkgOutcome::Completed([5; 32]));
    let key = f.store.key_ceremony().unwrap().unwrap();
    assert_eq!(key.number, 2);
    assert_eq!(key.roster, vec![1, 2, 3, 4]);
    assert_eq!(key.threshold, 2, "a repair keeps the key's threshold");
    // The joining member is now a share holder; a generation step in a
    // refresh is refused as a repair step.
    assert_eq!(refresh(&f, &[2, 4]), DkgOutcome::Begun(3));
    let in_refresh = DkgStep::RepairDeltas {
        ceremony: 3,
        sealed: sealed_to(3, &[4]),
    };
    refused(step(&f, 2, in_refresh), "not a repair");

    // A snapshot carries the ceremonies and what each reshares.
    let (snapshot, _) = f.store.export().unwrap();
    let path = f.dir.path().join("second.redb");
    Store::create(&path, "auth-2", &f.data_key, &f.binding, 8, false).unwrap();
    let second = Store::open(&path, f.data_key.clone(), &f.binding).unwrap();
    second.write(|tx| second.import(tx, &snapshot)).unwrap();
    assert_eq!(
        second.key_ceremony().unwrap(),
        f.store.key_ceremony().unwrap()
    );
    for n in 1..=3 {
        assert_eq!(second.reshare(n).unwrap(), f.store.reshare(n).unwrap());
    }
    assert_eq!(
        second.current_ceremony().unwrap(),
        f.store.current_ceremony().unwrap()
    );
}
