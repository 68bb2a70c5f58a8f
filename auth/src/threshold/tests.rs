//! Threshold signing with real crypto: DKG, signing, batches, membership.

use std::collections::BTreeMap;

use frost_ed25519::keys::dkg::{round1, round2};
use rand::rngs::OsRng;

use super::membership::{refresh_start, repair_deltas, repair_finish, repair_sigma, with_member};
use super::sign::{BatchToSign, aggregate, commit, sign_share, signing_package};
use super::*;

type Keys = BTreeMap<Identifier, KeyPackage>;

/// Runs a DKG among `node_ids`, every package through its wire encoding;
/// checks every member got the same public key package.
fn run_dkg(node_ids: &[u64]) -> (Roster, Keys, PublicKeyPackage) {
    let roster = Roster::new(node_ids).unwrap();
    let mut round1_states = BTreeMap::new();
    let mut broadcast = BTreeMap::new();
    for &node in node_ids {
        let (state, package) = dkg::start(&roster, node, &mut OsRng).unwrap();
        let package = round1::Package::from_wire(&package.to_wire().unwrap()).unwrap();
        broadcast.insert(state.identifier(), package);
        round1_states.insert(state.identifier(), state);
    }
    let mut round2_states = BTreeMap::new();
    let mut inbox: BTreeMap<Identifier, BTreeMap<Identifier, round2::Package>> = BTreeMap::new();
    for (id, state) in round1_states {
        let (state, outgoing) = state.receive(&broadcast).unwrap();
        for (to, package) in outgoing {
            let package = round2::Package::from_wire(&package.to_wire().unwrap()).unwrap();
            inbox.entry(to).or_default().insert(id, package);
        }
        round2_states.insert(id, state);
    }
    let mut keys = BTreeMap::new();
    let mut publics = Vec::new();
    for (id, state) in round2_states {
        let (key, public) = state.finish(&inbox[&id]).unwrap();
        keys.insert(id, key);
        publics.push(public);
    }
    for p in &publics[1..] {
        assert_eq!(p, &publics[0], "members disagree on the public key package");
    }
    let public = PublicKeyPackage::from_wire(&publics[0].to_wire().unwrap()).unwrap();
    (roster, keys, public)
}

/// One signing round among `signers`, every package through its encoding.
fn sign_with(
    signers: &[&KeyPackage],
    public: &PublicKeyPackage,
    message: &[u8],
) -> Result<ed25519_dalek::Signature, ThresholdError> {
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for key in signers {
        let (n, c) = commit(key, &mut OsRng);
        let c = SigningCommitments::from_wire(&c.to_wire()?)?;
        nonces.insert(*key.identifier(), n);
        commitments.insert(*key.identifier(), c);
    }
    let package = signing_package(public, commitments, message)?;
    let package = SigningPackage::from_wire(&package.to_wire()?)?;
    let mut shares = BTreeMap::new();
    for key in signers {
        let share = sign_share(&package, nonces.remove(key.identifier()).unwrap(), key)?;
        shares.insert(
            *key.identifier(),
            SignatureShare::from_wire(&share.to_wire()?)?,
        );
    }
    aggregate(&package, &shares, public)
}

/// Combines shares with frost directly, no threshold or share checks: what a
/// thief holding `keys` could produce. `None` if frost refuses.
fn combine_unchecked(
    keys: &[KeyPackage],
    public: &PublicKeyPackage,
    message: &[u8],
) -> Option<ed25519_dalek::Signature> {
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for key in keys {
        let (n, c) = frost_ed25519::round1::commit(key.signing_share(), &mut OsRng);
        nonces.insert(*key.identifier(), n);
        commitments.insert(*key.identifier(), c);
    }
    let package = SigningPackage::new(commitments, message);
    let mut shares = BTreeMap::new();
    for key in keys {
        let share = frost_ed25519::round2::sign(&package, &nonces[key.identifier()], key).ok()?;
        shares.insert(*key.identifier(), share);
    }
    let sig = frost_ed25519::aggregate_custom(
        &package,
        &shares,
        public,
        frost_ed25519::CheaterDetection::Disabled,
    )
    .ok()?;
    ed25519_dalek::Signature::from_slice(&sig.serialize().ok()?).ok()
}

fn key_of(keys: &Keys, node: u64) -> &KeyPackage {
    &keys[&member_identifier(node).unwrap()]
}

#[test]
fn dkg_among_three_agrees_on_a_valid_ed25519_group_key() {
    let (roster, keys, public) = run_dkg(&[11, 22, 33]);
    assert_eq!(roster.threshold(), 2);
    assert_eq!(keys.len(), 3);
    let group_key = group_key_bytes(&public).unwrap();
    for key in keys.values() {
        assert_eq!(key.verifying_key(), public.verifying_key());
        assert_eq!(*key.min_signers(), 2);
    }
    ed25519_dalek::VerifyingKey::from_bytes(&group_key).unwrap();
}

#[test]
fn identifiers_are_stable_and_distinct() {
    assert_eq!(member_identifier(7).unwrap(), member_identifier(7).unwrap());
    assert_ne!(member_identifier(7).unwrap(), member_identifier(8).unwrap());
    let a = Roster::new(&[1, 2, 3]).unwrap();
    let b = Roster::new(&[3, 9, 1, 5]).unwrap();
    assert_eq!(a.identifier(1), b.identifier(1));
    assert_eq!(b.node_id(&b.identifier(9).unwrap()), Some(9));
}

#[test]
fn rosters_below_three_or_with_duplicates_are_refused() {
    assert!(matches!(
        Roster::new(&[1, 2]),
        Err(ThresholdError::TooFewMembers(2))
    ));
    assert!(matches!(
        Roster::new(&[1]),
        Err(ThresholdError::TooFewMembers(1))
    ));
    assert!(matches!(
        Roster::new(&[1, 2, 2]),
        Err(ThresholdError::DuplicateMember(2))
    ));
    assert_eq!(majority_threshold(3).unwrap(), 2);
    assert_eq!(majority_threshold(4).unwrap(), 3);
    assert_eq!(majority_threshold(5).unwrap(), 3);
}

#[test]
fn any_two_of_three_sign_and_verify_strict_accepts() {
    let (_, keys, public) = run_dkg(&[1, 2, 3]);
    let group_key = group_key_bytes(&public).unwrap();
    let message = b"user certificate for alice";
    for pair in [[1, 2], [1, 3], [2, 3]] {
        let signers = [key_of(&keys, pair[0]), key_of(&keys, pair[1])];
        let sig = sign_with(&signers, &public, message).unwrap();
        ed25519_dalek::VerifyingKey::from_bytes(&group_key)
            .unwrap()
            .verify_strict(message, &sig)
            .unwrap();
        assert!(verify(&group_key, b"another message", &sig).is_err());
    }
    // All three may sign too.
    let all: Vec<_> = keys.values().collect();
    sign_with(&all, &public, message).unwrap();
}

#[test]
fn one_member_alone_cannot_sign() {
    let (_, keys, public) = run_dkg(&[1, 2, 3]);
    let group_key = group_key_bytes(&public).unwrap();
    let lone = key_of(&keys, 1);
    assert!(matches!(
        sign_with(&[lone], &public, b"m"),
        Err(ThresholdError::NotEnoughSigners { got: 1, needed: 2 })
    ));
    // A thief lowering the threshold in its own packages gets a signature
    // frost may assemble, but never one the group key accepts.
    let forged_key = KeyPackage::new(
        *lone.identifier(),
        *lone.signing_share(),
        *lone.verifying_share(),
        *lone.verifying_key(),
        1,
    );
    let forged_public = PublicKeyPackage::new(
        public.verifying_shares().clone(),
        *public.verifying_key(),
        Some(1),
    );
    if let Some(sig) = combine_unchecked(&[forged_key], &forged_public, b"m") {
        assert!(verify(&group_key, b"m", &sig).is_err());
    }
}

#[test]
fn a_tampered_share_is_detected_and_its_sender_named() {
    let (_, keys, public) = run_dkg(&[1, 2, 3]);
    let (a, b) = (key_of(&keys, 1), key_of(&keys, 2));
    let (na, ca) = commit(a, &mut OsRng);
    let (nb, cb) = commit(b, &mut OsRng);
    let commitments = BTreeMap::from([(*a.identifier(), ca), (*b.identifier(), cb)]);
    let package = signing_package(&public, commitments.clone(), b"grant").unwrap();
    let other = signing_package(&public, commitments, b"delete everything").unwrap();
    let good = sign_share(&package, na, a).unwrap();
    // b signs another message: a well-formed share that is wrong here.
    let bad = sign_share(&other, nb, b).unwrap();
    let shares = BTreeMap::from([(*a.identifier(), good), (*b.identifier(), bad)]);
    match aggregate(&package, &shares, &public) {
        Err(ThresholdError::Cheaters { culprits }) => assert_eq!(culprits, vec![*b.identifier()]),
        other => panic!("expected the cheater named, got {other:?}"),
    }
}

#[test]
fn a_batch_is_signed_once_and_every_item_verifies() {
    let (_, keys, public) = run_dkg(&[1, 2, 3]);
    let group_key = group_key_bytes(&public).unwrap();
    let items: Vec<Vec<u8>> = (0..7)
        .map(|i| format!("delete order {i}").into_bytes())
        .collect();
    let batch = BatchToSign::new(&items).unwrap();
    let sig = sign_with(
        &[key_of(&keys, 2), key_of(&keys, 3)],
        &public,
        &batch.message(),
    )
    .unwrap();
    let signed = batch.item_signatures(sig);
    assert_eq!(signed.len(), items.len());
    let group_key = ed25519_dalek::VerifyingKey::from_bytes(&group_key).unwrap();
    for (item, s) in items.iter().zip(&signed) {
        s.verify(&group_key, item).unwrap();
    }
    // A changed item, a proof of another item, a changed count: all refused.
    assert!(signed[3].verify(&group_key, b"delete order 99").is_err());
    assert!(signed[3].verify(&group_key, &items[4]).is_err());
    let mut tampered = signed[3].clone();
    tampered.proof.as_mut().unwrap().siblings[0][0] ^= 1;
    assert!(tampered.verify(&group_key, &items[3]).is_err());
    let mut recounted = signed[6].clone();
    recounted.proof.as_mut().unwrap().count = 8;
    assert!(recounted.verify(&group_key, &items[6]).is_err());
}

#[test]
fn a_fourth_member_added_by_repair_signs_under_the_same_key() {
    let (_, keys, public) = run_dkg(&[1, 2, 3]);
    let group_key = group_key_bytes(&public).unwrap();
    let new_member = member_identifier(4).unwrap();
    let helpers = [
        *key_of(&keys, 1).identifier(),
        *key_of(&keys, 3).identifier(),
    ];
    // Each helper sends one delta to each helper.
    let mut received: BTreeMap<Identifier, Vec<_>> = BTreeMap::new();
    for h in &helpers {
        for (to, delta) in repair_deltas(&helpers, &keys[h], new_member, &mut OsRng).unwrap() {
            received
                .entry(to)
                .or_default()
                .push(Wire::from_wire(&delta.to_wire().unwrap()).unwrap());
        }
    }
    let sigmas: Vec<_> = helpers.iter().map(|h| repair_sigma(&received[h])).collect();
    let new_key = repair_finish(&sigmas, new_member, &public).unwrap();
    let public4 = with_member(&public, new_member).unwrap();
    assert_eq!(group_key_bytes(&public4).unwrap(), group_key);
    assert_eq!(public4.verifying_shares().len(), 4);
    assert_eq!(*new_key.min_signers(), 2);
    for old in [2, 3] {
        let sig = sign_with(&[&new_key, key_of(&keys, old)], &public4, b"after join").unwrap();
        verify(&group_key, b"after join", &sig).unwrap();
    }
    // A sigma missing makes a wrong share, which the check catches.
    assert!(matches!(
        repair_finish(&sigmas[..1], new_member, &public),
        Err(ThresholdError::RepairMismatch(_))
    ));
}

#[test]
fn a_member_removed_by_refresh_no_longer_combines() {
    let (_, keys, public) = run_dkg(&[1, 2, 3]);
    let group_key = group_key_bytes(&public).unwrap();
    let removed = key_of(&keys, 3).clone();
    let remaining = [
        *key_of(&keys, 1).identifier(),
        *key_of(&keys, 2).identifier(),
    ];

    let mut states = BTreeMap::new();
    let mut broadcast = BTreeMap::new();
    for id in &remaining {
        let (state, package) = refresh_start(&remaining, &keys[id], &mut OsRng).unwrap();
        broadcast.insert(*id, package);
        states.insert(*id, state);
    }
    let mut next = BTreeMap::new();
    let mut inbox: BTreeMap<Identifier, BTreeMap<Identifier, round2::Package>> = BTreeMap::new();
    for (id, state) in states {
        let (state, outgoing) = state.receive(&broadcast).unwrap();
        for (to, package) in outgoing {
            inbox.entry(to).or_default().insert(id, package);
        }
        next.insert(id, state);
    }
    let mut new_keys = BTreeMap::new();
    let mut new_publics = Vec::new();
    for (id, state) in next {
        let (key, p) = state.finish(&inbox[&id], &public, &keys[&id]).unwrap();
        assert_ne!(key.signing_share(), keys[&id].signing_share());
        new_keys.insert(id, key);
        new_publics.push(p);
    }
    assert_eq!(new_publics[0], new_publics[1]);
    let new_public = &new_publics[0];
    assert_eq!(group_key_bytes(new_public).unwrap(), group_key);
    assert!(
        !new_public
            .verifying_shares()
            .contains_key(removed.identifier())
    );

    let new: Vec<&KeyPackage> = new_keys.values().collect();
    let sig = sign_with(&new, new_public, b"after leave").unwrap();
    verify(&group_key, b"after leave", &sig).unwrap();

    // Control: before the refresh, the removed member's share did combine.
    let before = combine_unchecked(
        &[keys[&remaining[0]].clone(), removed.clone()],
        &public,
        b"m",
    )
    .expect("old shares combine");
    verify(&group_key, b"m", &before).unwrap();
    // After it, the old share with a new one gives no valid signature.
    let mixed = [new_keys[&remaining[0]].clone(), removed.clone()];
    if let Some(sig) = combine_unchecked(&mixed, &public, b"m") {
        assert!(verify(&group_key, b"m", &sig).is_err());
    }
    // And through the checked path the removed member is unknown.
    assert!(sign_with(&[&new_keys[&remaining[0]], &removed], new_public, b"m").is_err());
}

#[test]
fn garbage_on_the_wire_names_the_package() {
    match SigningPackage::from_wire(b"not a package") {
        Err(ThresholdError::Decode { what, .. }) => assert_eq!(what, "signing package"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert!(round1::Package::from_wire(&[0; 3]).is_err());
}
