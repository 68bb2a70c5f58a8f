//! Unit tests of the holder's object store.

use super::*;

fn meta_for(data: &[u8]) -> ObjectMeta {
    ObjectMeta {
        len: data.len() as u64,
        sha256: Sha256::digest(data).into(),
        expires_at: 100,
        delete_hash: [0; 32],
        shard: None,
    }
}

#[test]
fn store_survives_reopen_and_enforces_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = ObjectStore::open(dir.path(), 1000, 600).unwrap();
    let data = vec![5u8; 500];
    let r = s.reserve(500).unwrap();
    s.commit(r, &[1; 32], meta_for(&data), &data).unwrap();
    assert!(matches!(
        s.reserve(700),
        Err(ObjectStoreError::TooLarge { .. })
    ));
    assert!(matches!(
        s.reserve(600),
        Err(ObjectStoreError::QuotaFull { .. })
    ));
    let (s2, report) = ObjectStore::open(dir.path(), 1000, 600).unwrap();
    assert_eq!(report.objects, 1);
    assert_eq!(s2.read(&[1; 32]).unwrap().unwrap(), data);
    assert_eq!(s2.usage(), (1, 500));
    assert_eq!(s2.expired(99), Vec::<ObjectId>::new());
    assert_eq!(s2.expired(100), vec![[1; 32]]);
    assert!(s2.remove(&[1; 32]).unwrap());
    assert_eq!(s2.usage(), (0, 0));
}

#[test]
fn refuses_wrong_hash_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = ObjectStore::open(dir.path(), 1000, 600).unwrap();
    let data = vec![5u8; 10];
    let mut wrong = meta_for(&data);
    wrong.sha256[0] ^= 1;
    let r = s.reserve(10).unwrap();
    assert!(matches!(
        s.commit(r, &[1; 32], wrong, &data),
        Err(ObjectStoreError::HashMismatch)
    ));
    assert_eq!(s.usage(), (0, 0));
    s.commit(s.reserve(10).unwrap(), &[1; 32], meta_for(&data), &data)
        .unwrap();
    let other = vec![6u8; 10];
    assert!(matches!(
        s.commit(s.reserve(10).unwrap(), &[1; 32], meta_for(&other), &other),
        Err(ObjectStoreError::Conflict)
    ));
}

#[test]
fn version_1_files_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let data = b"old ciphertext";
    let m = meta_for(data);
    let header = postcard::to_stdvec(&(m.len, m.sha256, m.expires_at, m.delete_hash)).unwrap();
    let mut file = MAGIC_V1.to_vec();
    file.extend((header.len() as u32).to_be_bytes());
    file.extend(header);
    file.extend(data);
    std::fs::write(objects.join(hex::encode([4u8; 32])), file).unwrap();
    let (s, report) = ObjectStore::open(dir.path(), 1000, 600).unwrap();
    assert_eq!(report.objects, 1);
    assert_eq!(s.get(&[4; 32]), Some(m));
    assert_eq!(s.read(&[4; 32]).unwrap().unwrap(), data);
}

#[test]
fn a_layout_that_contradicts_the_object_is_refused() {
    use crate::core::erasure::Redundancy;
    use crate::core::locator::ShardRef;
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = ObjectStore::open(dir.path(), 1000, 600).unwrap();
    let data = vec![5u8; 10];
    let mut meta = meta_for(&data);
    let layout = Layout {
        redundancy: Redundancy::ReedSolomon { k: 2, n: 3 },
        ciphertext_len: 20,
        shards: (0..3u8)
            .map(|i| ShardRef {
                id: [i; 32],
                sha256: meta.sha256,
            })
            .collect(),
    };
    let secret = [7u8; 32];
    meta.delete_hash = Sha256::digest(secret).into();
    let id = [2u8; 32];
    // Index out of range, and an index naming another identifier.
    for index in [3, 1] {
        meta.shard = Some(ShardOf {
            index,
            layout: layout.clone(),
        });
        assert!(matches!(
            s.commit(s.reserve(10).unwrap(), &id, meta.clone(), &data),
            Err(ObjectStoreError::BadLayout)
        ));
    }
    meta.shard = Some(ShardOf {
        index: 2,
        layout: layout.clone(),
    });
    s.commit(s.reserve(10).unwrap(), &id, meta.clone(), &data)
        .unwrap();
    // The sender's final layout replaces the draft, and survives a
    // reopen; nobody without the delete secret can replace it.
    let mut newer = layout;
    newer.shards[0].id = [9; 32];
    let shard = ShardOf {
        index: 2,
        layout: newer,
    };
    assert!(s.holds_same(&id, &meta));
    assert!(matches!(
        s.set_shard(&id, &[8; 32], shard.clone()),
        Err(ObjectStoreError::WrongSecret)
    ));
    s.set_shard(&id, &secret, shard.clone()).unwrap();
    meta.shard = Some(shard);
    let (s2, _) = ObjectStore::open(dir.path(), 1000, 600).unwrap();
    assert_eq!(s2.get(&id), Some(meta));
    assert_eq!(s2.read(&id).unwrap().unwrap(), data);
}

#[test]
fn corrupt_files_are_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = ObjectStore::open(dir.path(), 1000, 600).unwrap();
    let data = vec![5u8; 10];
    s.commit(s.reserve(10).unwrap(), &[1; 32], meta_for(&data), &data)
        .unwrap();
    let file = dir.path().join("objects").join(hex::encode([1u8; 32]));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&file, bytes).unwrap();
    let (s2, report) = ObjectStore::open(dir.path(), 1000, 600).unwrap();
    assert_eq!(report.quarantined, 1);
    assert_eq!(s2.usage(), (0, 0));
    assert!(
        dir.path()
            .join("objects/corrupt")
            .join(hex::encode([1u8; 32]))
            .exists()
    );
}
