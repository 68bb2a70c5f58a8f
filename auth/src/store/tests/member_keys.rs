//! Member keys: recorded once per node, and required on every share-key
//! publication after that.

use ed25519_dalek::Signer;

use super::*;
use crate::store::{
    DkgStep, MemberKeyOutcome, PublishOutcome, Vouch, VouchRefusal, publication_bytes, step_bytes,
};

fn vouch(key: &SigningKey, node: u64, epoch: u32, public: &[u8; 32]) -> Vouch {
    Vouch {
        member_key: key.verifying_key().to_bytes(),
        signature: key
            .sign(&publication_bytes(node, epoch, public))
            .to_bytes()
            .to_vec(),
    }
}

#[test]
fn a_member_key_is_recorded_once_and_vouches_for_every_later_share_key() {
    let f = Fixture::new();
    let publish = |node, epoch, public: [u8; 32], v: Option<Vouch>| {
        f.store
            .write(|tx| {
                f.store
                    .publish_share_key(tx, node, epoch, public, v.as_ref(), T0)
            })
            .unwrap()
    };
    let (a, b) = (
        SigningKey::from_bytes(&random_bytes()),
        SigningKey::from_bytes(&random_bytes()),
    );
    // A log entry from before member keys: no key recorded, none asked.
    assert_eq!(publish(7, 1, [1; 32], None), PublishOutcome::Published);
    assert_eq!(f.store.member_key(7).unwrap(), None);
    // The first vouched publication records its key.
    let p2 = [2; 32];
    assert_eq!(
        publish(7, 2, p2, Some(vouch(&a, 7, 2, &p2))),
        PublishOutcome::Published
    );
    assert_eq!(
        f.store.member_key(7).unwrap(),
        Some(a.verifying_key().to_bytes())
    );
    // From then on only that key publishes for node 7.
    let p3 = [3; 32];
    assert_eq!(
        publish(7, 3, p3, None),
        PublishOutcome::Unvouched(VouchRefusal::Missing)
    );
    assert_eq!(
        publish(7, 3, p3, Some(vouch(&b, 7, 3, &p3))),
        PublishOutcome::Unvouched(VouchRefusal::OtherKey)
    );
    assert_eq!(
        publish(7, 3, p3, Some(vouch(&a, 7, 3, &[4; 32]))),
        PublishOutcome::Unvouched(VouchRefusal::BadSignature)
    );
    assert_eq!(
        publish(7, 3, p3, Some(vouch(&a, 8, 3, &p3))),
        PublishOutcome::Unvouched(VouchRefusal::BadSignature),
        "a signature for another node"
    );
    assert_eq!(f.store.newest_share_keys().unwrap()[&7].0.public, p2);
    assert_eq!(
        publish(7, 3, p3, Some(vouch(&a, 7, 3, &p3))),
        PublishOutcome::Published
    );

    // A joining server's key, recorded by its join, is the only one its
    // first publication may carry; a stale one records nothing.
    let register = |node, key: &SigningKey| {
        f.store
            .write(|tx| {
                f.store
                    .register_member_key(tx, node, key.verifying_key().to_bytes())
            })
            .unwrap()
    };
    assert_eq!(register(9, &b), MemberKeyOutcome::Registered);
    assert_eq!(register(9, &b), MemberKeyOutcome::AlreadyRegistered);
    assert_eq!(register(9, &a), MemberKeyOutcome::OtherKey);
    assert_eq!(
        publish(9, 1, p2, Some(vouch(&a, 9, 1, &p2))),
        PublishOutcome::Unvouched(VouchRefusal::OtherKey)
    );
    assert_eq!(
        publish(9, 1, p2, Some(vouch(&b, 9, 1, &p2))),
        PublishOutcome::Published
    );
    assert_eq!(publish(10, 1, p2, None), PublishOutcome::Published);
    assert_eq!(
        publish(10, 1, p3, Some(vouch(&a, 10, 1, &p3))),
        PublishOutcome::Stale { newest: 1 }
    );
    assert_eq!(f.store.member_key(10).unwrap(), None, "stale: not recorded");
    // Node 10's published key is public: signing it again claims nothing.
    assert_eq!(
        publish(10, 1, p2, Some(vouch(&a, 10, 1, &p2))),
        PublishOutcome::AlreadyPublished
    );
    assert_eq!(
        f.store.member_key(10).unwrap(),
        None,
        "a retry records nothing"
    );
}

#[test]
fn a_member_with_a_key_proposes_only_ceremony_steps_it_signed() {
    let f = Fixture::new();
    let key = SigningKey::from_bytes(&random_bytes());
    f.store
        .write(|tx| {
            f.store
                .register_member_key(tx, 2, key.verifying_key().to_bytes())
        })
        .unwrap();
    let step = DkgStep::Round1 {
        ceremony: 1,
        package: vec![1, 2, 3],
    }
    .encode();
    let check = |node, signature: Option<Vec<u8>>| {
        f.store
            .write(|tx| {
                f.store
                    .check_step_signature(tx, node, &step, signature.as_deref())
            })
            .unwrap()
    };
    let signed = |node| key.sign(&step_bytes(node, &step)).to_bytes().to_vec();
    assert_eq!(check(2, Some(signed(2))), Ok(()));
    let err = check(2, None).unwrap_err();
    assert!(err.contains("unsigned step"), "{err}");
    let err = check(2, Some(signed(3))).unwrap_err();
    assert!(err.contains("does not verify"), "{err}");
    let other = SigningKey::from_bytes(&random_bytes());
    let err = check(
        2,
        Some(other.sign(&step_bytes(2, &step)).to_bytes().to_vec()),
    )
    .unwrap_err();
    assert!(err.contains("does not verify"), "{err}");
    // A member with no key recorded yet (a founder before its first
    // publication, or a log from before member keys) proposes as before.
    assert_eq!(check(3, None), Ok(()));
}
