//! At-rest sealing: a row moved or altered in the file is caught as corrupt.

use super::*;

/// Copies the raw bytes of row `from` over row `to` in a `&str`-keyed table.
fn copy_str_row(f: &Fixture, table: redb::TableDefinition<&str, &[u8]>, from: &str, to: &str) {
    f.store
        .write(|tx| {
            let mut t = tx.open_table(table).map_err(db_err)?;
            let bytes = t.get(from).map_err(db_err)?.unwrap().value().to_vec();
            t.insert(to, bytes.as_slice()).map_err(db_err)?;
            Ok(())
        })
        .unwrap();
}

/// Copies the raw bytes of row `from` over row `to` in a `&[u8]`-keyed table.
fn copy_bytes_row(f: &Fixture, table: redb::TableDefinition<&[u8], &[u8]>, from: &[u8], to: &[u8]) {
    f.store
        .write(|tx| {
            let mut t = tx.open_table(table).map_err(db_err)?;
            let bytes = t.get(from).map_err(db_err)?.unwrap().value().to_vec();
            t.insert(to, bytes.as_slice()).map_err(db_err)?;
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_user_row_copied_over_another_user_is_corrupt() {
    let f = Fixture::new();
    f.register("alice");
    f.register("bob");
    copy_str_row(&f, USERS, "alice", "bob");
    assert_corrupt(f.store.user("bob").unwrap_err(), "users", "bob");
    // Inside a write transaction too, which is how login and deposit read it.
    let err = f.store.write(|tx| f.store.user_in(tx, "bob")).unwrap_err();
    assert_corrupt(err, "users", "bob");
    // The original is untouched.
    assert!(f.store.user("alice").unwrap().is_some());
}

#[test]
fn a_user_row_holding_another_users_certificate_is_corrupt() {
    let f = Fixture::new();
    f.register("alice");
    f.register("bob");
    // Bob's row keeps its own sealed password file but takes alice's
    // certificate: his logins must not hand out alice's identity.
    f.store
        .write(|tx| {
            let mut users = tx.open_table(USERS).map_err(db_err)?;
            let row = |name: &str| -> Result<crate::store::users::UserRow, StoreError> {
                let bytes = users.get(name).map_err(db_err)?.unwrap().value().to_vec();
                Ok(postcard::from_bytes(&bytes).unwrap())
            };
            let alice = row("alice")?;
            let mut bob = row("bob")?;
            bob.certificate = alice.certificate;
            users
                .insert("bob", postcard::to_allocvec(&bob).unwrap().as_slice())
                .map_err(db_err)?;
            Ok(())
        })
        .unwrap();
    let err = f.store.user("bob").unwrap_err();
    assert!(
        err.to_string().contains("holds alice's certificate"),
        "{err}"
    );
    assert_corrupt(err, "users", "bob");
}

#[test]
fn a_session_row_copied_to_another_token_is_corrupt() {
    let f = Fixture::new();
    f.register("alice");
    f.register("bob");
    let (alice, _) = f.begin_session("alice", T0 + DAY);
    let (bob, _) = f.begin_session("bob", T0 + DAY);
    // Pointing bob's token at alice's session must not hand bob alice's key.
    copy_bytes_row(&f, SESSIONS, &alice.token_hash, &bob.token_hash);
    let err = f.store.session(&bob.token_hash).unwrap_err();
    assert_corrupt(err, "sessions", &hex::encode(&bob.token_hash[..8]));
    assert_same_session(
        &f.store.session(&alice.token_hash).unwrap().unwrap(),
        &alice,
    );
}

#[test]
fn a_voicemail_row_moved_to_another_id_is_corrupt() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let to_bob = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    let to_carol = f.voicemail("alice", &["carol"], T0, T0 + DAY);
    f.deposit(&to_bob);
    f.deposit(&to_carol);
    // Carol's row under bob's id: bob must not get carol's session key.
    copy_bytes_row(&f, VOICEMAILS, &to_carol.id, &to_bob.id);
    let key = hex::encode(to_bob.id);
    assert_corrupt(
        f.store.pending_one("bob", &to_bob.id).unwrap_err(),
        "voicemails",
        &key,
    );
    assert_corrupt(f.store.pending("bob", T0).unwrap_err(), "voicemails", &key);
    assert_same_voicemail(
        &f.store.pending_one("carol", &to_carol.id).unwrap().unwrap(),
        &to_carol,
    );
}

#[test]
fn a_grant_for_someone_not_a_recipient_is_corrupt() {
    let f = Fixture::new();
    for u in ["alice", "bob", "mallory"] {
        f.register(u);
    }
    let vm = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    f.deposit(&vm);
    f.store
        .write(|tx| {
            let mut grants = tx.open_table(GRANTS).map_err(db_err)?;
            grants
                .insert(("mallory", vm.id.as_slice()), ())
                .map_err(db_err)?;
            Ok(())
        })
        .unwrap();
    let key = hex::encode(vm.id);
    assert_corrupt(
        f.store.pending_one("mallory", &vm.id).unwrap_err(),
        "grants",
        &key,
    );
    assert_corrupt(f.store.pending("mallory", T0).unwrap_err(), "grants", &key);
}

#[test]
fn a_share_key_written_without_the_data_key_is_corrupt() {
    let f = Fixture::new();
    let real = vmail_proto::share::BoxSecret::generate().public();
    f.store
        .write(|tx| f.store.publish_share_key(tx, 7, 1, real, None, T0))
        .unwrap();
    assert_eq!(f.store.newest_share_keys().unwrap()[&7].0.public, real);
    // A newer epoch for server 7 with a key of the writer's own, in the
    // row's plain layout: refused as corrupt, so no grant ever lists it.
    #[derive(serde::Serialize)]
    struct Row {
        public: [u8; 32],
        published_at: u64,
        binding_sealed: Vec<u8>,
    }
    let forged = postcard::to_allocvec(&Row {
        public: vmail_proto::share::BoxSecret::generate().public(),
        published_at: T0,
        binding_sealed: vec![1; 29],
    })
    .unwrap();
    f.store
        .write(|tx| {
            let mut t = tx.open_table(SHARE_KEYS).map_err(db_err)?;
            t.insert((7u64, 2u32), forged.as_slice()).map_err(db_err)?;
            Ok(())
        })
        .unwrap();
    assert_corrupt(
        f.store.newest_share_keys().unwrap_err(),
        "share_keys",
        &format!("{:016x}/2", 7),
    );
}
