//! Tests of threshold-shared session keys: splits, seals, reseals and recombination on real keys.

use super::*;

fn group(n: usize) -> (Vec<BoxSecret>, Vec<ShareKey>) {
    let secrets: Vec<BoxSecret> = (0..n).map(|_| BoxSecret::generate()).collect();
    let keys = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| ShareKey {
            node_id: 10 + i as u64,
            epoch: 1,
            public: s.public(),
        })
        .collect();
    (secrets, keys)
}

const LOCATOR: &[u8] = b"a locator";

fn recipients() -> Recipients {
    Recipients::parse(["bob", "carol"]).unwrap()
}

struct Split {
    key: SecretKey,
    t: u8,
    check: [u8; 32],
    shares: Vec<SealedShare>,
}

fn split_for(keys: &[ShareKey], r: &Recipients) -> Split {
    let key = SecretKey::random();
    let (t, check, shares) = split(&key, keys, 7, r, LOCATOR).unwrap();
    Split {
        key,
        t,
        check,
        shares,
    }
}

fn opened(secrets: &[BoxSecret], s: &Split, r: &Recipients) -> Vec<ShareValue> {
    let binding = ShareBinding {
        grant_serial: 7,
        recipients: r,
        threshold: s.t,
        key_check: &s.check,
    };
    secrets
        .iter()
        .zip(&s.shares)
        .map(|(sk, sh)| open_share(sk, sh, &binding).unwrap())
        .collect()
}

#[test]
fn any_majority_recovers_and_fewer_do_not() {
    let r = recipients();
    for n in [1usize, 2, 3, 4, 5, 7] {
        let (secrets, keys) = group(n);
        let s = split_for(&keys, &r);
        assert_eq!(usize::from(s.t), threshold(n));
        let values = opened(&secrets, &s, &r);
        let t = usize::from(s.t);
        let key = combine(&values[n - t..], s.t, &s.check, LOCATOR).unwrap();
        assert_eq!(key.as_bytes(), s.key.as_bytes(), "{n} servers");
        if t > 1 {
            assert_eq!(
                combine(&values[..t - 1], s.t, &s.check, LOCATOR).unwrap_err(),
                ShareError::TooFew {
                    got: t - 1,
                    need: t
                }
            );
        }
    }
}

#[test]
fn a_share_opens_only_with_its_servers_key_and_binding() {
    let r = recipients();
    let (secrets, keys) = group(3);
    let s = split_for(&keys, &r);
    let binding = ShareBinding {
        grant_serial: 7,
        recipients: &r,
        threshold: s.t,
        key_check: &s.check,
    };
    // Another server's key.
    assert_eq!(
        open_share(&secrets[1], &s.shares[0], &binding).unwrap_err(),
        ShareError::Open
    );
    // Another grant, recipient list or index.
    let other = Recipients::parse(["bob"]).unwrap();
    for b in [
        ShareBinding {
            grant_serial: 8,
            ..binding
        },
        ShareBinding {
            recipients: &other,
            ..binding
        },
    ] {
        assert_eq!(
            open_share(&secrets[0], &s.shares[0], &b).unwrap_err(),
            ShareError::Open
        );
    }
    let mut moved = s.shares[0].clone();
    moved.index = 2;
    assert_eq!(
        open_share(&secrets[0], &moved, &binding).unwrap_err(),
        ShareError::Open
    );
    let mut flipped = s.shares[0].clone();
    flipped.ciphertext[3] ^= 1;
    assert_eq!(
        open_share(&secrets[0], &flipped, &binding).unwrap_err(),
        ShareError::Open
    );
}

#[test]
fn resealed_shares_open_only_for_their_recipient_and_voicemail() {
    let r = recipients();
    let (secrets, keys) = group(3);
    let s = split_for(&keys, &r);
    let values = opened(&secrets, &s, &r);
    let bob = Username::parse("bob").unwrap();
    let carol = Username::parse("carol").unwrap();
    let inbox = BoxSecret::generate();
    let binding = |i: usize, who| ResealBinding {
        voicemail_id: b"vm-1",
        recipient: who,
        node_id: keys[i].node_id,
        index: values[i].index,
    };
    let resealed: Vec<ResealedShare> = (0..3)
        .map(|i| reseal(&values[i], &inbox.public(), &binding(i, &bob)).unwrap())
        .collect();
    let back: Vec<ShareValue> = (1..3)
        .map(|i| open_resealed(&inbox, &resealed[i], &binding(i, &bob)).unwrap())
        .collect();
    let key = combine(&back, s.t, &s.check, LOCATOR).unwrap();
    assert_eq!(key.as_bytes(), s.key.as_bytes());
    assert_eq!(
        open_resealed(&inbox, &resealed[0], &binding(0, &carol)).unwrap_err(),
        ShareError::Open
    );
    assert_eq!(
        open_resealed(&BoxSecret::generate(), &resealed[0], &binding(0, &bob)).unwrap_err(),
        ShareError::Open
    );
    let mut other = binding(0, &bob);
    other.voicemail_id = b"vm-2";
    assert_eq!(
        open_resealed(&inbox, &resealed[0], &other).unwrap_err(),
        ShareError::Open
    );
}

#[test]
fn another_locator_fails_the_key_check() {
    let r = recipients();
    let (secrets, keys) = group(3);
    let s = split_for(&keys, &r);
    let values = opened(&secrets, &s, &r);
    assert_eq!(
        combine(&values, s.t, &s.check, b"another locator").unwrap_err(),
        ShareError::Mismatch
    );
}

#[test]
fn a_wrong_share_is_routed_around_when_enough_good_ones_remain() {
    let r = recipients();
    let (secrets, keys) = group(5);
    let s = split_for(&keys, &r);
    let mut values = opened(&secrets, &s, &r);
    values[0].value[0] ^= 0x55;
    let key = combine(&values, s.t, &s.check, LOCATOR).unwrap();
    assert_eq!(key.as_bytes(), s.key.as_bytes());
    // With only the threshold at hand and one of them wrong, the check
    // catches it.
    assert_eq!(
        combine(&values[..3], s.t, &s.check, LOCATOR).unwrap_err(),
        ShareError::Mismatch
    );
}

#[test]
fn secrets_round_trip_and_bad_keys_are_named() {
    let sk = BoxSecret::generate();
    let back = BoxSecret::from_bytes(&sk.to_bytes()).unwrap();
    assert_eq!(back.public(), sk.public());
    assert!(BoxSecret::from_bytes(&[1; 5]).is_err());
    let r = recipients();
    let key = SecretKey::random();
    assert_eq!(
        split(&key, &[], 1, &r, LOCATOR).unwrap_err(),
        ShareError::BadSplit {
            threshold: 1,
            servers: 0
        }
    );
}

#[test]
fn combinations_are_enumerated_in_order() {
    let mut pick = vec![0, 1];
    let mut seen = vec![pick.clone()];
    while next_combination(&mut pick, 4) {
        seen.push(pick.clone());
    }
    assert_eq!(
        seen,
        vec![
            vec![0, 1],
            vec![0, 2],
            vec![0, 3],
            vec![1, 2],
            vec![1, 3],
            vec![2, 3]
        ]
    );
}
