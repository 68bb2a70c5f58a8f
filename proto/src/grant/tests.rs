//! Unit tests of grants, deposit proofs and delete orders: round trips,
//! every field bound by the signature, and malformed bytes refused.

use super::lifecycle::{ORDER, PROOF};
use super::*;

fn body() -> GrantBody {
    GrantBody {
        serial: 42,
        message_id: [7; 16],
        data_shards: 2,
        shards: vec![
            GrantedShard {
                len: 100,
                sha256: [1; 32],
            },
            GrantedShard {
                len: 100,
                sha256: [2; 32],
            },
            GrantedShard {
                len: 100,
                sha256: [3; 32],
            },
        ],
        holders: vec![vec![9; 38], vec![8; 38]],
        upload_until: 1_000,
        expires_at: 2_000,
    }
}

#[test]
fn a_grant_round_trips_and_verifies() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let grant = body().sign(&key);
    let back = StorageGrant::from_bytes(&grant.to_bytes()).unwrap();
    assert_eq!(back, grant);
    back.verify(&key.verifying_key()).unwrap();
    assert!(back.names_holder(&[8; 38]));
    assert!(!back.names_holder(&[7; 38]));
    assert!(back.covers(100, &[2; 32]));
    assert!(!back.covers(101, &[2; 32]));
    assert!(!back.covers(100, &[4; 32]));
}

#[test]
fn every_altered_field_breaks_the_signature() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let vk = key.verifying_key();
    let grant = body().sign(&key);
    let alter: [fn(&mut GrantBody); 6] = [
        |b| b.serial += 1,
        |b| b.shards[1].sha256[0] ^= 1,
        |b| b.shards[0].len += 1,
        |b| b.holders.push(vec![5; 38]),
        |b| b.expires_at += 1,
        |b| b.upload_until += 1,
    ];
    for f in alter {
        let mut g = grant.clone();
        f(&mut g.body);
        assert_eq!(
            g.verify(&vk),
            Err(GrantError::BadSignature {
                what: GRANT,
                serial: g.body.serial
            })
        );
    }
}

#[test]
fn a_foreign_cluster_is_named_as_such() {
    let grant = body().sign(&SigningKey::from_bytes(&[1; 32]));
    let other = SigningKey::from_bytes(&[2; 32]).verifying_key();
    assert!(matches!(
        grant.verify(&other),
        Err(GrantError::ForeignCluster { .. })
    ));
    // The same key id with another key: a forgery, not a foreign cluster.
    let mut forged = grant.clone();
    forged.signature = SigningKey::from_bytes(&[3; 32]).sign(&forged.signing_bytes());
    assert!(matches!(
        forged.verify(&SigningKey::from_bytes(&[1; 32]).verifying_key()),
        Err(GrantError::BadSignature { .. })
    ));
}

#[test]
fn malformed_bytes_are_refused_not_panicked_on() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let bytes = body().sign(&key).to_bytes();
    for cut in 0..bytes.len() {
        assert!(
            StorageGrant::from_bytes(&bytes[..cut]).is_err(),
            "cut {cut}"
        );
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(StorageGrant::from_bytes(&long).is_err());
    let mut b = body();
    b.shards[0].len = 0;
    assert!(StorageGrant::from_bytes(&b.sign(&key).to_bytes()).is_err());
    let mut b = body();
    b.data_shards = 4;
    assert!(StorageGrant::from_bytes(&b.sign(&key).to_bytes()).is_err());
    let mut b = body();
    b.holders.clear();
    assert!(StorageGrant::from_bytes(&b.sign(&key).to_bytes()).is_err());
}

#[test]
fn a_delete_order_round_trips_verifies_and_resists_change() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let vk = key.verifying_key();
    let order = DeleteOrder::sign(42, DeleteReason::Delivered, 2_000, &key);
    let bytes = order.to_bytes();
    let back = DeleteOrder::from_bytes(&bytes).unwrap();
    assert_eq!(back, order);
    back.verify(&vk).unwrap();
    let mut o = order.clone();
    o.serial = 43;
    assert!(o.verify(&vk).is_err());
    let mut o = order.clone();
    o.reason = DeleteReason::Recalled;
    assert!(o.verify(&vk).is_err());
    for cut in 0..bytes.len() {
        assert!(DeleteOrder::from_bytes(&bytes[..cut]).is_err());
    }
    // A grant's bytes are never a delete order, nor the reverse.
    assert!(DeleteOrder::from_bytes(&body().sign(&key).to_bytes()).is_err());
    assert!(StorageGrant::from_bytes(&bytes).is_err());
}

#[test]
fn a_deposit_proof_round_trips_and_is_bound_to_its_serial_and_cluster() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let proof = DepositProof::sign(42, &key);
    let bytes = proof.to_bytes();
    let back = DepositProof::from_bytes(&bytes).unwrap();
    assert_eq!(back, proof);
    back.verify(&key.verifying_key()).unwrap();
    let mut other = proof.clone();
    other.serial = 43;
    assert!(other.verify(&key.verifying_key()).is_err());
    assert!(matches!(
        proof.verify(&SigningKey::from_bytes(&[2; 32]).verifying_key()),
        Err(GrantError::ForeignCluster { .. })
    ));
    for cut in 0..bytes.len() {
        assert!(DepositProof::from_bytes(&bytes[..cut]).is_err());
    }
    // Neither a delete order nor a grant reads as a proof.
    let order = DeleteOrder::sign(42, DeleteReason::Delivered, 2_000, &key);
    assert!(DepositProof::from_bytes(&order.to_bytes()).is_err());
    assert!(DeleteOrder::from_bytes(&bytes).is_err());
}

/// A pinned group key requires the group's signature over the very bytes
/// the cluster key signed: absent, copied from another object, made with
/// another key, or with trailing junk, each is refused; an unpinned check
/// ignores it. (The group key is a plain Ed25519 key here: a FROST group
/// signature is one.)
#[test]
fn a_pinned_group_key_requires_the_group_signature_on_every_kind() {
    let cluster = SigningKey::from_bytes(&[1; 32]);
    let group = SigningKey::from_bytes(&[5; 32]);
    let (ck, gk) = (cluster.verifying_key(), group.verifying_key());
    let thief = SigningKey::from_bytes(&[6; 32]);
    // Each decodes to itself and verifies under both keys.
    let round_trip_and_verify =
        |grant: &StorageGrant, order: &DeleteOrder, proof: &DepositProof| {
            let g = StorageGrant::from_bytes(&grant.to_bytes()).unwrap();
            let o = DeleteOrder::from_bytes(&order.to_bytes()).unwrap();
            let p = DepositProof::from_bytes(&proof.to_bytes()).unwrap();
            assert_eq!((&g, &o, &p), (grant, order, proof));
            g.verify_pinned(&ck, Some(&gk)).unwrap();
            o.verify_pinned(&ck, Some(&gk)).unwrap();
            p.verify_pinned(&ck, Some(&gk)).unwrap();
        };

    let mut grant = body().sign(&cluster);
    let mut order = DeleteOrder::sign(42, DeleteReason::Delivered, 2_000, &cluster);
    let mut proof = DepositProof::sign(42, &cluster);
    for (what, err) in [
        (GRANT, grant.verify_pinned(&ck, Some(&gk))),
        (ORDER, order.verify_pinned(&ck, Some(&gk))),
        (PROOF, proof.verify_pinned(&ck, Some(&gk))),
    ] {
        assert_eq!(
            err,
            Err(GrantError::NoGroupSignature { what, serial: 42 }),
            "{what}"
        );
    }
    grant.verify_pinned(&ck, None).unwrap();

    // The thief's key, and the group's signature on another object.
    grant.group_signature = Some(thief.sign(&grant.signing_bytes()).into());
    order.group_signature = Some(group.sign(&proof.signing_bytes()).into());
    proof.group_signature = Some(group.sign(&grant.signing_bytes()).into());
    assert!(matches!(
        grant.verify_pinned(&ck, Some(&gk)),
        Err(GrantError::BadGroupSignature { .. })
    ));
    assert!(matches!(
        order.verify_pinned(&ck, Some(&gk)),
        Err(GrantError::BadGroupSignature { .. })
    ));
    assert!(matches!(
        proof.verify_pinned(&ck, Some(&gk)),
        Err(GrantError::BadGroupSignature { .. })
    ));

    grant.group_signature = Some(group.sign(&grant.signing_bytes()).into());
    order.group_signature = Some(group.sign(&order.signing_bytes()).into());
    proof.group_signature = Some(group.sign(&proof.signing_bytes()).into());
    round_trip_and_verify(&grant, &order, &proof);
    // The cluster signature still counts: a group signature alone is not
    // enough.
    let mut unsigned = grant.clone();
    unsigned.signature = thief.sign(&grant.signing_bytes());
    assert!(matches!(
        unsigned.verify_pinned(&ck, Some(&gk)),
        Err(GrantError::BadSignature { .. })
    ));

    // Nothing but a whole group signature may follow the cluster's.
    for extra in [1, 63, 65, 128] {
        let mut bytes = grant.signing_bytes();
        bytes.extend_from_slice(&grant.signature.to_bytes());
        bytes.extend(std::iter::repeat_n(0u8, extra));
        assert!(
            StorageGrant::from_bytes(&bytes).is_err(),
            "{extra} trailing bytes"
        );
    }

    // Signed in one batch, each object verifies with its own path, keeps
    // it through its encoding, and not with another member's.
    let items = [
        grant.signing_bytes(),
        order.signing_bytes(),
        proof.signing_bytes(),
    ];
    let tree = crate::batch::MerkleTree::new(&items).unwrap();
    let root_signature = group.sign(&crate::batch::batch_message(&tree.root(), 3));
    let batched = |i: usize| crate::batch::GroupSignature {
        signature: root_signature,
        proof: tree.proof(i).map(Box::new),
    };
    grant.group_signature = Some(batched(0));
    order.group_signature = Some(batched(1));
    proof.group_signature = Some(batched(2));
    round_trip_and_verify(&grant, &order, &proof);
    proof.group_signature = Some(batched(0));
    assert!(matches!(
        proof.verify_pinned(&ck, Some(&gk)),
        Err(GrantError::BadGroupSignature { .. })
    ));
}
