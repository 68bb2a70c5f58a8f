//! Unit tests of the holder's object store and its grant checks.

use ed25519_dalek::SigningKey;
use vmail_proto::grant::{DeleteReason, DepositProof, GrantBody, GrantedShard, PROOF_GRACE_SECS};

use super::format::MAGIC_V1;
use super::*;
use crate::core::erasure::Redundancy;
use crate::core::locator::{Layout, ObjectId, ShardRef, UNDISCLOSED};

const NOW: u64 = 1_000_000;
const ME: &[u8] = b"this-holder";

fn cluster() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn policy(quota: u64) -> HolderPolicy {
    HolderPolicy {
        quota,
        max_object: 64 * 1024,
        max_objects: 3,
        max_retention_secs: 30 * 86_400,
        cluster_key: Some(cluster().verifying_key()),
        group_key: None,
        me: ME.to_vec(),
    }
}

fn open(dir: &Path, quota: u64) -> ObjectStore {
    ObjectStore::open(dir, policy(quota)).unwrap().0
}

/// Two shards (RS 1-of-2: each is the whole ciphertext), a grant for them
/// signed by `key` with `edit` applied, and the meta of shard 0 under `id`.
fn granted(data: &[u8], key: &SigningKey, edit: impl FnOnce(&mut GrantBody)) -> ObjectMeta {
    let sha256: [u8; 32] = Sha256::digest(data).into();
    let layout = Layout {
        redundancy: Redundancy::Replicas(2),
        ciphertext_len: data.len() as u64,
        shards: vec![
            ShardRef {
                id: [1; 32],
                sha256,
            },
            ShardRef {
                id: [2; 32],
                sha256,
            },
        ],
    };
    let mut body = GrantBody {
        serial: 9,
        message_id: [0; 16],
        data_shards: 1,
        shards: vec![
            GrantedShard {
                len: data.len() as u64,
                sha256
            };
            2
        ],
        holders: vec![ME.to_vec()],
        upload_until: NOW + 600,
        expires_at: NOW + 86_400,
    };
    edit(&mut body);
    ObjectMeta {
        len: data.len() as u64,
        sha256,
        expires_at: u64::MAX,
        delete_hash: Sha256::digest([7u8; 32]).into(),
        shard: Some(ShardOf { index: 0, layout }),
        grant: body.sign(key).to_bytes(),
        proof: Vec::new(),
    }
}

/// Admits, reserves and commits `meta` with `data` under id [1; 32].
fn store(s: &ObjectStore, mut meta: ObjectMeta, data: &[u8]) -> Result<(), ObjectStoreError> {
    let id = [1u8; 32];
    if s.admit(&id, &mut meta, NOW)? == Admitted::Held {
        return Ok(());
    }
    let r = s.reserve(&meta)?;
    s.commit(r, &id, meta, data)
}

#[test]
fn a_granted_object_survives_reopen_with_its_charge() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    let data = vec![5u8; 500];
    let meta = granted(&data, &cluster(), |_| {});
    store(&s, meta.clone(), &data).unwrap();
    let held = s.get(&[1; 32]).unwrap();
    assert_eq!(
        held.expires_at,
        NOW + 86_400,
        "the grant's expiry, not the sender's"
    );
    let charge = held.charge();
    assert!(
        charge > MIN_CHARGE,
        "the body minimum plus the header: {charge}"
    );
    let s2 = open(dir.path(), 1 << 20);
    assert_eq!(s2.read(&[1; 32]).unwrap().unwrap(), data);
    assert_eq!(s2.usage(), (1, charge));
    assert_eq!(s2.expired(NOW + 86_399), Vec::<ObjectId>::new());
    assert_eq!(s2.expired(NOW + 86_400), vec![[1; 32]]);
    assert!(s2.remove(&[1; 32]).unwrap());
    assert_eq!(s2.usage(), (0, 0));
}

#[test]
fn every_bad_grant_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    let data = vec![5u8; 100];
    let ok = granted(&data, &cluster(), |_| {});
    let refused = |meta: ObjectMeta| store(&s, meta, &data).unwrap_err().reason();

    let mut none = ok.clone();
    none.grant.clear();
    assert_eq!(refused(none), "no-grant");
    assert_eq!(
        refused(granted(&data, &SigningKey::from_bytes(&[2; 32]), |_| {})),
        "bad-signature",
        "another cluster's grant"
    );
    let mut forged = ok.clone();
    let last = forged.grant.len() - 1;
    forged.grant[last] ^= 1;
    assert_eq!(refused(forged), "bad-signature");
    assert_eq!(
        refused(granted(&data, &cluster(), |b| b.holders = vec![b"other".to_vec()])),
        "not-named"
    );
    assert_eq!(
        refused(granted(&data, &cluster(), |b| {
            b.upload_until = NOW - 10;
            b.expires_at = NOW;
        })),
        "grant-expired"
    );
    assert_eq!(
        refused(granted(&data, &cluster(), |b| b.expires_at = NOW + 31 * 86_400)),
        "expiry-too-far"
    );
    assert_eq!(
        refused(granted(&data, &cluster(), |b| b.shards[0].sha256[0] ^= 1)),
        "not-covered"
    );
    assert_eq!(
        refused(granted(&data, &cluster(), |b| b.shards[0].len += 1)),
        "not-covered"
    );
    // The granted shard, but under another identifier than the one held.
    store(&s, ok.clone(), &data).unwrap();
    let mut again = ok.clone();
    let shard = again.shard.as_mut().unwrap();
    shard.layout.shards[0].id = [3; 32];
    let mut again_meta = again.clone();
    assert_eq!(
        s.admit(&[3; 32], &mut again_meta, NOW)
            .unwrap_err()
            .reason(),
        "grant-reused"
    );
    assert!(s.remove(&[1; 32]).unwrap());
    let mut empty = ok.clone();
    empty.len = 0;
    empty.shard = None;
    assert_eq!(refused(empty), "empty");
    // Nothing was stored, and every refusal was counted.
    let stats = s.stats();
    assert_eq!((stats.objects, stats.bytes), (0, 0));
    assert_eq!(stats.refusals.values().sum::<u64>(), 10);
    assert_eq!(stats.refusals["bad-signature"], 2);
    // After the upload window any holder may take a covered shard (repair).
    let late = granted(&data, &cluster(), |b| {
        b.holders = vec![b"other".to_vec()];
        b.upload_until = NOW - 1;
    });
    store(&s, late, &data).unwrap();
}

#[test]
fn a_holder_without_a_cluster_key_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = policy(1 << 20);
    p.cluster_key = None;
    let (s, _) = ObjectStore::open(dir.path(), p).unwrap();
    let data = vec![5u8; 100];
    let e = store(&s, granted(&data, &cluster(), |_| {}), &data).unwrap_err();
    assert_eq!(e.reason(), "no-cluster-key");
}

#[test]
fn quota_counts_headers_and_minimums_and_objects_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = vec![1u8; 1];
    let meta = granted(&tiny, &cluster(), |_| {});
    // One byte of body is charged the minimum plus its header.
    let s = open(dir.path(), meta.charge() * 2 - 1);
    assert!(meta.charge() > MIN_CHARGE);
    let _one = s.reserve(&meta).unwrap();
    assert!(matches!(
        s.reserve(&meta),
        Err(ObjectStoreError::QuotaFull { .. })
    ));
    let s = open(tempfile::tempdir().unwrap().path(), 1 << 30);
    let held: Vec<Reservation> = (0..3).map(|_| s.reserve(&meta).unwrap()).collect();
    assert!(matches!(
        s.reserve(&meta),
        Err(ObjectStoreError::TooMany { max: 3 })
    ));
    drop(held);
    s.reserve(&meta).unwrap();
}

#[test]
fn a_delete_order_removes_the_grant_and_its_tombstone_refuses_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    let data = vec![5u8; 100];
    let meta = granted(&data, &cluster(), |_| {});
    store(&s, meta.clone(), &data).unwrap();
    // Forged and foreign orders change nothing.
    let foreign = DeleteOrder::sign(
        9,
        DeleteReason::Delivered,
        NOW + 86_400,
        &SigningKey::from_bytes(&[2; 32]),
    );
    assert!(matches!(
        s.erase(&foreign.to_bytes()),
        Err(ObjectStoreError::BadGrant(_))
    ));
    let other = DeleteOrder::sign(10, DeleteReason::Delivered, NOW + 86_400, &cluster());
    assert!(matches!(
        s.erase(&other.to_bytes()),
        Err(ObjectStoreError::NotHeld)
    ));
    assert_eq!(s.usage().0, 1);

    let order = DeleteOrder::sign(9, DeleteReason::Delivered, NOW + 86_400, &cluster());
    assert_eq!(s.erase(&order.to_bytes()).unwrap(), vec![[1; 32]]);
    assert!(
        s.erase(&order.to_bytes()).unwrap().is_empty(),
        "seen before"
    );
    assert_eq!(s.usage(), (0, 0));
    // The tombstone outlives a restart, refuses the shard back (repair
    // included), and answers for the identifier with the order.
    let s = open(dir.path(), 1 << 20);
    assert_eq!(s.stats().tombstones, 1);
    match store(&s, meta.clone(), &data) {
        Err(ObjectStoreError::Deleted {
            serial: 9,
            order: o,
            ..
        }) => {
            assert_eq!(o, order.to_bytes())
        }
        other => panic!("expected Deleted, got {other:?}"),
    }
    assert!(matches!(
        s.deleted(&[1; 32]),
        Some(ObjectStoreError::Deleted { serial: 9, .. })
    ));
    assert_eq!(s.purge_tombstones(NOW + 86_399).unwrap(), 0);
    assert_eq!(s.purge_tombstones(NOW + 86_400).unwrap(), 1);
    assert!(s.deleted(&[1; 32]).is_none());
    assert_eq!(open(dir.path(), 1 << 20).stats().tombstones, 0);
}

#[test]
fn legacy_files_still_open_and_expire_within_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let data = b"old ciphertext";
    let sha: [u8; 32] = Sha256::digest(data).into();
    let header = postcard::to_stdvec(&(data.len() as u64, sha, u64::MAX, [0u8; 32])).unwrap();
    let mut file = MAGIC_V1.to_vec();
    file.extend((header.len() as u32).to_be_bytes());
    file.extend(header);
    file.extend(data);
    std::fs::write(objects.join(hex::encode([4u8; 32])), file).unwrap();
    let (s, report) = ObjectStore::open(dir.path(), policy(1 << 20)).unwrap();
    assert_eq!((report.objects, report.legacy), (1, 1));
    let m = s.get(&[4; 32]).unwrap();
    assert!(m.grant.is_empty());
    assert!(
        m.expires_at <= vmail_proto::unix_now() + 30 * 86_400,
        "never-expiring legacy objects are capped"
    );
    assert_eq!(s.read(&[4; 32]).unwrap().unwrap(), data);
}

#[test]
fn the_final_layout_replaces_the_draft_only_with_the_secret_and_within_the_grant() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    let data = vec![5u8; 100];
    let meta = granted(&data, &cluster(), |_| {});
    store(&s, meta.clone(), &data).unwrap();
    let id = [1u8; 32];
    let mut newer = meta.shard.clone().unwrap();
    newer.layout.shards[1].id = [9; 32];
    assert!(matches!(
        s.set_shard(&id, &[8; 32], newer.clone()),
        Err(ObjectStoreError::WrongSecret)
    ));
    let mut uncovered = newer.clone();
    uncovered.layout.shards[1].sha256 = [3; 32];
    assert!(matches!(
        s.set_shard(&id, &[7; 32], uncovered),
        Err(ObjectStoreError::NotCovered { serial: 9 })
    ));
    s.set_shard(&id, &[7; 32], newer.clone()).unwrap();
    let s2 = open(dir.path(), 1 << 20);
    assert_eq!(s2.get(&id).unwrap().shard, Some(newer));
    assert_eq!(s2.read(&id).unwrap().unwrap(), data);
}

#[test]
fn wrong_bytes_and_contradicting_layouts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    let data = vec![5u8; 100];
    let meta = granted(&data, &cluster(), |_| {});
    let mut wrong = data.clone();
    wrong[0] ^= 1;
    assert!(matches!(
        store(&s, meta.clone(), &wrong),
        Err(ObjectStoreError::HashMismatch)
    ));
    let mut bad = meta.clone();
    bad.shard.as_mut().unwrap().index = 1;
    assert!(matches!(
        store(&s, bad, &data),
        Err(ObjectStoreError::BadLayout)
    ));
    assert_eq!(s.usage(), (0, 0));
}

#[test]
fn corrupt_files_are_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    let data = vec![5u8; 100];
    store(&s, granted(&data, &cluster(), |_| {}), &data).unwrap();
    let file = dir.path().join("objects").join(hex::encode([1u8; 32]));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&file, bytes).unwrap();
    let (s2, report) = ObjectStore::open(dir.path(), policy(1 << 20)).unwrap();
    assert_eq!(report.quarantined, 1);
    assert_eq!(s2.usage(), (0, 0));
    assert!(
        dir.path()
            .join("objects/corrupt")
            .join(hex::encode([1u8; 32]))
            .exists()
    );
}

#[test]
fn a_grant_no_deposit_proved_is_dropped_after_its_grace_and_a_proof_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    let data = vec![5u8; 100];
    store(&s, granted(&data, &cluster(), |_| {}), &data).unwrap();
    let closed = NOW + 600 + PROOF_GRACE_SECS;
    assert!(s.unproven(closed).is_empty(), "still within the grace");
    assert_eq!(s.unproven(closed + 1), vec![[1; 32]]);

    // A proof for another grant, or from another cluster, changes nothing.
    let other = DepositProof::sign(10, &cluster());
    assert!(matches!(
        s.prove(&other.to_bytes()),
        Err(ObjectStoreError::NotHeld)
    ));
    let foreign = DepositProof::sign(9, &SigningKey::from_bytes(&[2; 32]));
    assert!(matches!(
        s.prove(&foreign.to_bytes()),
        Err(ObjectStoreError::BadGrant(_))
    ));
    assert_eq!(s.unproven(closed + 1), vec![[1; 32]]);

    let proof = DepositProof::sign(9, &cluster());
    assert_eq!(s.prove(&proof.to_bytes()).unwrap(), 1);
    assert!(s.unproven(closed + 1).is_empty());
    // The proof survives a restart and travels with the object's meta, so
    // repair and hand-off pass it on.
    let s = open(dir.path(), 1 << 20);
    assert!(s.unproven(closed + 1).is_empty());
    assert_eq!(s.get(&[1; 32]).unwrap().proof, proof.to_bytes());
    // Once nothing of the grant is held, its proof goes too.
    assert_eq!(s.purge_proofs().unwrap(), 0);
    assert!(s.remove(&[1; 32]).unwrap());
    assert_eq!(s.purge_proofs().unwrap(), 1);
}

#[test]
fn a_shard_stored_with_its_proof_is_proven_and_a_wrong_proof_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    let data = vec![5u8; 100];
    let mut meta = granted(&data, &cluster(), |_| {});
    meta.proof = DepositProof::sign(8, &cluster()).to_bytes();
    assert_eq!(
        store(&s, meta.clone(), &data).unwrap_err().reason(),
        "not-covered"
    );
    meta.proof = DepositProof::sign(9, &cluster()).to_bytes();
    store(&s, meta, &data).unwrap();
    assert!(s.unproven(u64::MAX).is_empty());
}

#[test]
fn a_shard_stored_knowing_only_its_own_identifier_gets_its_siblings_from_the_final_layout() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 20);
    let data = vec![5u8; 100];
    let full = granted(&data, &cluster(), |_| {});
    let mut own = full.clone();
    let shard = own.shard.as_mut().unwrap();
    shard.layout = shard.layout.own_entry_only(0);
    store(&s, own, &data).unwrap();
    let id = [1u8; 32];
    let held = s.get(&id).unwrap().shard.unwrap();
    assert_eq!(held.layout.shards[1].id, UNDISCLOSED);
    assert!(!held.layout.is_complete(), "repair skips it until told");
    s.set_shard(&id, &[7; 32], full.shard.clone().unwrap())
        .unwrap();
    let s2 = open(dir.path(), 1 << 20);
    let told = s2.get(&id).unwrap().shard.unwrap();
    assert!(told.layout.is_complete());
    assert_eq!(Some(told), full.shard);
}

#[test]
fn undisclosed_siblings_may_repeat_but_disclosed_identifiers_may_not() {
    let data = vec![5u8; 100];
    let sha256: [u8; 32] = Sha256::digest(&data).into();
    let id = [1u8; 32];
    let meta = |ids: [ObjectId; 3]| ObjectMeta {
        len: data.len() as u64,
        sha256,
        expires_at: NOW,
        delete_hash: [0; 32],
        shard: Some(ShardOf {
            index: 0,
            layout: Layout {
                redundancy: Redundancy::Replicas(3),
                ciphertext_len: data.len() as u64,
                shards: ids.iter().map(|&id| ShardRef { id, sha256 }).collect(),
            },
        }),
        grant: Vec::new(),
        proof: Vec::new(),
    };
    assert!(meta([id, UNDISCLOSED, UNDISCLOSED]).consistent(&id));
    assert!(meta([id, [2; 32], [3; 32]]).consistent(&id));
    assert!(!meta([id, [2; 32], [2; 32]]).consistent(&id));
    assert!(!meta([id, id, UNDISCLOSED]).consistent(&id));
    // Its own entry is never undisclosed.
    assert!(!meta([UNDISCLOSED, [2; 32], [3; 32]]).consistent(&UNDISCLOSED));
}

#[test]
fn a_final_layout_is_complete_the_grants_and_names_the_held_shard_where_it_was() {
    let data = vec![5u8; 100];
    let full = granted(&data, &cluster(), |_| {});
    let mut held = full.clone();
    let s = held.shard.as_mut().unwrap();
    s.layout = s.layout.own_entry_only(0);
    let id = [1u8; 32];
    let good = full.shard.clone().unwrap();
    final_layout(&held, &id, &good).unwrap();

    let mut partial = good.clone();
    partial.layout.shards[1].id = UNDISCLOSED;
    assert!(matches!(
        final_layout(&held, &id, &partial),
        Err(ObjectStoreError::BadLayout)
    ));
    let mut moved = good.clone();
    moved.index = 1;
    moved.layout.shards.swap(0, 1);
    assert!(matches!(
        final_layout(&held, &id, &moved),
        Err(ObjectStoreError::BadLayout)
    ));
    let mut renamed = good.clone();
    renamed.layout.shards[0].id = [4; 32];
    assert!(matches!(
        final_layout(&held, &id, &renamed),
        Err(ObjectStoreError::BadLayout)
    ));
    let mut repeated = good.clone();
    repeated.layout.shards[1].id = id;
    assert!(matches!(
        final_layout(&held, &id, &repeated),
        Err(ObjectStoreError::BadLayout)
    ));
    let mut uncovered = good.clone();
    uncovered.layout.shards[1].sha256 = [3; 32];
    assert!(matches!(
        final_layout(&held, &id, &uncovered),
        Err(ObjectStoreError::NotCovered { serial: 9 })
    ));
}

/// A holder that pins the group key takes a grant, a proof and a delete
/// order only with the group's signature beside the cluster key's: what a
/// stolen cluster key alone signs is refused and changes nothing.
#[test]
fn a_holder_pinning_the_group_key_needs_the_group_signature_on_grants_proofs_and_orders() {
    use ed25519_dalek::Signer as _;
    let group = SigningKey::from_bytes(&[3; 32]);
    let dir = tempfile::tempdir().unwrap();
    let mut p = policy(1 << 20);
    p.group_key = Some(group.verifying_key());
    let (s, _) = ObjectStore::open(dir.path(), p).unwrap();
    let data = vec![5u8; 100];

    let mut meta = granted(&data, &cluster(), |_| {});
    let e = store(&s, meta.clone(), &data).unwrap_err();
    assert_eq!(e.reason(), "no-group-signature", "{e}");
    let mut grant = StorageGrant::from_bytes(&meta.grant).unwrap();
    grant.group_signature = Some(cluster().sign(&grant.signing_bytes()).into());
    meta.grant = grant.to_bytes();
    let e = store(&s, meta.clone(), &data).unwrap_err();
    assert_eq!(e.reason(), "bad-signature", "{e}");
    assert_eq!(s.usage(), (0, 0));

    grant.group_signature = Some(group.sign(&grant.signing_bytes()).into());
    meta.grant = grant.to_bytes();
    let mut proof = DepositProof::sign(9, &cluster());
    meta.proof = proof.to_bytes();
    let e = store(&s, meta.clone(), &data).unwrap_err();
    assert_eq!(e.reason(), "no-group-signature", "{e}");
    proof.group_signature = Some(group.sign(&proof.signing_bytes()).into());
    meta.proof = proof.to_bytes();
    store(&s, meta, &data).unwrap();
    assert!(s.unproven(u64::MAX).is_empty());

    let mut order = DeleteOrder::sign(9, DeleteReason::Delivered, NOW + 86_400, &cluster());
    assert_eq!(
        s.erase(&order.to_bytes()).unwrap_err().reason(),
        "no-group-signature"
    );
    assert_eq!(s.usage().0, 1);
    order.group_signature = Some(group.sign(&order.signing_bytes()).into());
    assert_eq!(s.erase(&order.to_bytes()).unwrap(), vec![[1; 32]]);
    assert_eq!(s.usage(), (0, 0));
}
