//! Creating and opening a store: refusals, the key binding, reopening.

use super::*;

#[test]
fn create_refuses_an_existing_file_and_leaves_it_alone() {
    let f = Fixture::new();
    assert_eq!(f.register("alice"), RegisterOutcome::Created);
    drop(f.store);
    let before = std::fs::read(&f.path).unwrap();
    let other_key = SecretKey::random();
    let err = Store::create(&f.path, "auth-2", &other_key, &f.binding, 8, false).unwrap_err();
    assert!(
        matches!(err, StoreError::Exists(ref p) if p == &f.path),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&f.path).unwrap(), before);
    let store = Store::open(&f.path, f.data_key.clone(), &f.binding).unwrap();
    assert!(store.user("alice").unwrap().is_some());
    assert_eq!(store.node_id().unwrap(), 7);
    assert!(store.is_founder().unwrap());

    // Any existing file, not just a database.
    let junk = f.dir.path().join("junk");
    std::fs::write(&junk, b"not a database").unwrap();
    let err = Store::create(&junk, "auth-2", &other_key, &f.binding, 8, false).unwrap_err();
    assert!(matches!(err, StoreError::Exists(_)), "{err:?}");
    assert_eq!(std::fs::read(&junk).unwrap(), b"not a database");
}

#[test]
fn open_refuses_a_missing_file_without_creating_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.redb");
    let cluster = SigningKey::from_bytes(&random_bytes());
    let err = Store::open(&path, SecretKey::random(), &fresh_binding(&cluster)).unwrap_err();
    assert!(
        matches!(err, StoreError::Missing(ref p) if p == &path),
        "{err:?}"
    );
    assert!(!path.exists());
}

fn open_err(path: &Path, key: SecretKey, binding: &KeyBinding) -> StoreError {
    Store::open(path, key, binding).expect_err("open should refuse")
}

#[test]
fn open_refuses_a_wrong_key_naming_which() {
    let f = Fixture::new();
    let path = f.path.clone();
    drop(f.store);
    let mismatch = |err: StoreError| match err {
        StoreError::KeyMismatch { key, path: p } => {
            assert_eq!(p, path);
            key
        }
        other => panic!("expected a key mismatch, got {other:?}"),
    };

    let err = open_err(&path, SecretKey::random(), &f.binding);
    assert_eq!(mismatch(err), BoundKey::DataKey);

    let other_opaque = KeyBinding {
        opaque_public_key: random_bytes(),
        ..f.binding
    };
    let err = open_err(&path, f.data_key.clone(), &other_opaque);
    assert_eq!(mismatch(err), BoundKey::OpaqueSetup);

    let other_cluster = KeyBinding {
        cluster_public_key: SigningKey::from_bytes(&random_bytes())
            .verifying_key()
            .to_bytes(),
        ..f.binding
    };
    let err = open_err(&path, f.data_key.clone(), &other_cluster);
    assert_eq!(mismatch(err), BoundKey::ClusterKey);

    // The refusals changed nothing: the right keys still open it.
    Store::open(&path, f.data_key.clone(), &f.binding).unwrap();
}

#[test]
fn what_was_written_survives_a_reopen() {
    let f = Fixture::new();
    f.register("alice");
    f.register("bob");
    let (session, _) = f.begin_session("alice", T0 + DAY);
    let vm = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    f.deposit(&vm);
    let alice = f.store.user("alice").unwrap().unwrap();
    drop(f.store);
    let store = Store::open(&f.path, f.data_key.clone(), &f.binding).unwrap();
    assert_same_user(&store.user("alice").unwrap().unwrap(), &alice);
    assert_same_session(
        &store.session(&session.token_hash).unwrap().unwrap(),
        &session,
    );
    let pending = store.pending("bob", T0).unwrap();
    assert_eq!(pending.len(), 1);
    assert_same_voicemail(&pending[0], &vm);
}
