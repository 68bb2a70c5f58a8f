//! The key-generation record: a ceremony's steps apply only in order, from
//! its members, once each; it ends with the key every member reported or
//! with the names of those who disagree; and none begins once a key exists.

use super::*;

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
