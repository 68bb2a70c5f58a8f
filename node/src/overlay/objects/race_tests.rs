//! Racing writers on the holder's object store: stores, removes,
//! relayouts and reads of the same identifiers on many threads at once,
//! and the checks that the index, the quota and the disk still agree.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::format::{self, decode_meta, parse_name};
use super::{
    HolderPolicy, MAX_RELAYOUTS, ObjectMeta, ObjectStore, ObjectStoreError, ShardOf, same_object,
};
use crate::core::erasure::Redundancy;
use crate::core::locator::{Layout, ObjectId, ShardRef};

const NOW: u64 = 1_000_000;

/// Racing writers: the meta of `data` stored under `id` as shard 0 of a
/// two-copy layout whose other shard is `[other; 32]`, with no grant (the
/// commit path does not look at it).
fn plain(id: ObjectId, data: &[u8], other: u8) -> ObjectMeta {
    let sha256: [u8; 32] = Sha256::digest(data).into();
    ObjectMeta {
        len: data.len() as u64,
        sha256,
        expires_at: NOW + 86_400,
        delete_hash: Sha256::digest([7u8; 32]).into(),
        shard: Some(ShardOf {
            index: 0,
            layout: Layout {
                redundancy: Redundancy::Replicas(2),
                ciphertext_len: data.len() as u64,
                shards: vec![
                    ShardRef { id, sha256 },
                    ShardRef {
                        id: [other; 32],
                        sha256,
                    },
                ],
            },
        }),
        grant: Vec::new(),
        proof: Vec::new(),
    }
}

/// A store with room for everything these tests write; none of them
/// goes through the grant check.
fn roomy(dir: &Path) -> ObjectStore {
    let policy = HolderPolicy {
        quota: 1 << 30,
        max_object: 1 << 20,
        max_objects: 1000,
        max_retention_secs: 30 * 86_400,
        cluster_key: None,
        group_key: None,
        me: b"this-holder".to_vec(),
    };
    ObjectStore::open(dir, policy).unwrap().0
}

fn commit_plain(s: &ObjectStore, id: ObjectId, data: &[u8]) -> Result<(), ObjectStoreError> {
    let meta = plain(id, data, 0xee);
    let r = s.reserve(&meta)?;
    s.commit(r, &id, meta, data)
}

/// The store's index, its charges and its files all tell the same story,
/// nothing is left reserved and no temporary file is left; reopening finds
/// the same objects and the same usage.
fn assert_consistent(dir: &Path, s: &ObjectStore) {
    assert_eq!(s.reserved(), (0, 0), "reservations left behind");
    let listed: HashMap<ObjectId, ObjectMeta> = s.list().into_iter().collect();
    let charged: u64 = listed.values().map(ObjectMeta::charge).sum();
    assert_eq!(s.usage(), (listed.len(), charged), "the quota charged");
    let mut files = 0;
    for entry in std::fs::read_dir(dir.join("objects")).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "temporary file left: {name}");
        let id = parse_name(&name).expect("an object file");
        let bytes = std::fs::read(entry.path()).unwrap();
        let on_disk = decode_meta(&bytes).expect("a readable file");
        let body = &bytes[format::body_offset(&bytes).unwrap()..];
        assert_eq!(<[u8; 32]>::from(Sha256::digest(body)), on_disk.sha256);
        let indexed = listed.get(&id).expect("a file the index does not know");
        assert!(
            same_object(indexed, &on_disk),
            "index and disk disagree on {name}"
        );
        files += 1;
    }
    assert_eq!(files, listed.len(), "an indexed object has no file");
    let reopened = roomy(dir);
    assert_eq!(reopened.usage(), s.usage());
}

#[test]
fn racing_stores_of_one_identifier_keep_one_winner_and_an_exact_quota() {
    let dir = tempfile::tempdir().unwrap();
    let s = roomy(dir.path());
    let id = [0x11; 32];
    for round in 0u8..5 {
        // Different bytes under one identifier: one wins, the rest conflict.
        let barrier = std::sync::Barrier::new(12);
        let results: Vec<Result<(), ObjectStoreError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0u8..12)
                .map(|i| {
                    let (s, barrier) = (&s, &barrier);
                    scope.spawn(move || {
                        let data = vec![round.wrapping_mul(16).wrapping_add(i); 20_000];
                        barrier.wait();
                        commit_plain(s, id, &data)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "{results:?}");
        assert!(
            results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .all(|e| matches!(e, ObjectStoreError::Conflict))
        );
        assert_consistent(dir.path(), &s);
        assert!(s.remove(&id).unwrap());
    }
    // The same bytes many times over: charged once.
    let data = vec![9u8; 30_000];
    std::thread::scope(|scope| {
        for _ in 0..12 {
            scope.spawn(|| commit_plain(&s, id, &data).unwrap());
        }
    });
    assert_eq!(s.usage(), (1, plain(id, &data, 0xee).charge()));
    assert_consistent(dir.path(), &s);
}

#[test]
fn racing_stores_of_one_granted_shard_under_different_identifiers_keep_one() {
    use vmail_proto::grant::{GrantBody, GrantedShard};
    let dir = tempfile::tempdir().unwrap();
    let s = roomy(dir.path());
    let data = vec![5u8; 12_000];
    let sha256: [u8; 32] = Sha256::digest(&data).into();
    let grant = GrantBody {
        serial: 77,
        message_id: [0; 16],
        data_shards: 1,
        shards: vec![
            GrantedShard {
                len: data.len() as u64,
                sha256
            };
            2
        ],
        holders: vec![b"this-holder".to_vec()],
        upload_until: NOW + 600,
        expires_at: NOW + 86_400,
    }
    .sign(&ed25519_dalek::SigningKey::from_bytes(&[1; 32]))
    .to_bytes();
    let barrier = std::sync::Barrier::new(8);
    let results: Vec<Result<(), ObjectStoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0u8..8)
            .map(|i| {
                let (s, barrier, data, grant) = (&s, &barrier, &data, &grant);
                scope.spawn(move || {
                    let id = [0x50 + i; 32];
                    let mut meta = plain(id, data, 0xee);
                    meta.grant = grant.clone();
                    let r = s.reserve(&meta)?;
                    barrier.wait();
                    s.commit(r, &id, meta, data)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, ObjectStoreError::GrantReused { serial: 77 }))
    );
    assert_consistent(dir.path(), &s);
}

#[test]
fn a_sender_may_relayout_an_object_only_a_few_times() {
    let dir = tempfile::tempdir().unwrap();
    let s = roomy(dir.path());
    let id = [0x22; 32];
    let data = vec![3u8; 10_000];
    commit_plain(&s, id, &data).unwrap();
    // Final layouts disclose every identifier: `other` is never zero.
    for other in 1..=MAX_RELAYOUTS {
        s.set_shard(&id, &[7; 32], plain(id, &data, other).shard.unwrap())
            .unwrap();
    }
    let again = s.set_shard(&id, &[7; 32], plain(id, &data, 0x99).shard.unwrap());
    assert!(
        matches!(again, Err(ObjectStoreError::TooManyRelayouts { .. })),
        "{again:?}"
    );
    assert_consistent(dir.path(), &s);
}

#[test]
fn a_read_rebuilds_the_index_entry_from_a_file_that_disagrees() {
    let dir = tempfile::tempdir().unwrap();
    let s = roomy(dir.path());
    let id = [0x33; 32];
    commit_plain(&s, id, &[1u8; 8000]).unwrap();
    // Another writer's file won the rename behind the index's back.
    let other = vec![2u8; 9000];
    s.write(&id, &plain(id, &other, 0xee), &other).unwrap();
    assert_eq!(s.read(&id).unwrap().unwrap(), other);
    assert_eq!(s.get(&id).unwrap().sha256, plain(id, &other, 0xee).sha256);
    assert_consistent(dir.path(), &s);
}

mod racing {
    //! A concurrent, stateful property test of the store: rounds of
    //! commits, removes, relayouts and loads on a few identifiers, each
    //! round's operations started together on threads; after every round
    //! the index, the quota and the disk must agree.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Commit { id: u8, bytes: u8 },
        Remove { id: u8 },
        Relayout { id: u8, bytes: u8, other: u8 },
        Load { id: u8 },
    }

    fn id_of(i: u8) -> ObjectId {
        // Two of the three share a lock stripe.
        let mut id = [0x40 + (i % 2); 32];
        id[31] = i;
        id
    }

    fn bytes_of(b: u8) -> Vec<u8> {
        vec![b; 6000 + usize::from(b) * 100]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..3, 0u8..3).prop_map(|(id, bytes)| Op::Commit { id, bytes }),
            1 => (0u8..3).prop_map(|id| Op::Remove { id }),
            1 => (0u8..3, 0u8..3, 0u8..3).prop_map(|(id, bytes, other)| Op::Relayout { id, bytes, other }),
            1 => (0u8..3).prop_map(|id| Op::Load { id }),
        ]
    }

    fn run(s: &ObjectStore, op: &Op) {
        match *op {
            Op::Commit { id, bytes } => {
                let _ = commit_plain(s, id_of(id), &bytes_of(bytes));
            }
            Op::Remove { id } => {
                s.remove(&id_of(id)).unwrap();
            }
            Op::Relayout { id, bytes, other } => {
                let shard = plain(id_of(id), &bytes_of(bytes), 0xa0 + other)
                    .shard
                    .unwrap();
                let _ = s.set_shard(&id_of(id), &[7; 32], shard);
            }
            Op::Load { id } => {
                if let Some(data) = s.read(&id_of(id)).unwrap() {
                    let held = s.get(&id_of(id));
                    // Removed since is fine; otherwise the bytes are the
                    // held object's.
                    if let Some(m) = held {
                        assert_eq!(data.len() as u64, m.len);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn index_quota_and_disk_agree_after_every_concurrent_round(
            rounds in prop::collection::vec(prop::collection::vec(op(), 2..7), 1..5)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let s = roomy(dir.path());
            for round in &rounds {
                let barrier = std::sync::Barrier::new(round.len());
                std::thread::scope(|scope| {
                    for op in round {
                        let (s, barrier) = (&s, &barrier);
                        scope.spawn(move || {
                            barrier.wait();
                            run(s, op);
                        });
                    }
                });
                assert_consistent(dir.path(), &s);
            }
        }
    }
}
