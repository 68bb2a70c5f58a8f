//! Users and sessions: registration, invites, logins, certificates.

use super::*;

#[test]
fn register_creates_a_user_once() {
    let f = Fixture::new();
    assert!(f.store.user("alice").unwrap().is_none());
    let mut first = None;
    let outcome = f
        .store
        .write(|tx| {
            f.store.register(tx, "alice", None, |serial| {
                let user = f.user_for("alice", serial);
                first = Some(user.clone());
                user
            })
        })
        .unwrap();
    assert_eq!(outcome, RegisterOutcome::Created);
    let first = first.unwrap();
    assert_same_user(&f.store.user("alice").unwrap().unwrap(), &first);

    // A second registration of the name changes nothing, and never builds a user.
    let outcome = f
        .store
        .write(|tx| {
            f.store.register(tx, "alice", None, |_| {
                panic!("a taken name must not reach make_user")
            })
        })
        .unwrap();
    assert_eq!(outcome, RegisterOutcome::UserExists);
    assert_same_user(&f.store.user("alice").unwrap().unwrap(), &first);
    assert_eq!(f.store.counts().unwrap().users, 1);
}

#[test]
fn an_invite_registers_one_user_only() {
    let f = Fixture::new();
    let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    assert!(!f.store.invite_used(hash).unwrap());
    assert_eq!(
        f.register_with("alice", Some(hash)),
        RegisterOutcome::Created
    );
    assert!(f.store.invite_used(hash).unwrap());
    assert_eq!(
        f.register_with("bob", Some(hash)),
        RegisterOutcome::InviteUsed
    );
    assert!(f.store.user("bob").unwrap().is_none());
    // A taken name is reported before the invite is looked at, and the
    // refused attempts did not use up a serial.
    assert_eq!(
        f.register_with("alice", Some(hash)),
        RegisterOutcome::UserExists
    );
    assert_eq!(
        f.register_with("bob", Some("another")),
        RegisterOutcome::Created
    );
    assert_eq!(f.store.user("bob").unwrap().unwrap().certificate.serial, 2);
    assert_eq!(f.store.counts().unwrap().users, 2);
}

#[test]
fn begin_session_stores_the_master_key_and_a_new_certificate() {
    let f = Fixture::new();
    f.register("alice");
    let before = f.store.user("alice").unwrap().unwrap();
    let (session, cert) = f.begin_session("alice", T0 + DAY);
    let got = f.store.session(&session.token_hash).unwrap().unwrap();
    assert_same_session(&got, &session);
    // The login's certificate becomes the user's current one; the rest stays.
    let after = f.store.user("alice").unwrap().unwrap();
    assert_eq!(after.certificate, cert);
    assert_ne!(after.certificate, before.certificate);
    assert_eq!(after.password_file, before.password_file);
    assert_eq!(after.credential_nonce, before.credential_nonce);
    // An unknown token has no session.
    assert!(
        f.store
            .session(&token_hash(b"never issued"))
            .unwrap()
            .is_none()
    );
}

#[test]
fn begin_session_for_an_unknown_user_fails_and_stores_nothing() {
    let f = Fixture::new();
    let master_key = MasterKey::from_bytes(random_bytes());
    let session = Session {
        token_hash: token_hash(b"token"),
        username: "ghost".into(),
        master_key_id: master_key.id(),
        master_key,
        created_at: T0,
        expires_at: T0 + DAY,
        inbox_key: [9; 32],
    };
    let err = f
        .store
        .write(|tx| f.store.begin_session(tx, &session, |s| f.cert("ghost", s)))
        .unwrap_err();
    assert_corrupt(err, "users", "ghost");
    assert_eq!(f.store.counts().unwrap().sessions, 0);
}

#[test]
fn end_session_deletes_it() {
    let f = Fixture::new();
    f.register("alice");
    let (a, _) = f.begin_session("alice", T0 + DAY);
    let (b, _) = f.begin_session("alice", T0 + DAY);
    assert!(f.end_session(&a.token_hash));
    assert!(f.store.session(&a.token_hash).unwrap().is_none());
    assert!(
        !f.end_session(&a.token_hash),
        "a second logout finds nothing"
    );
    // The user's other session is untouched.
    assert_same_session(&f.store.session(&b.token_hash).unwrap().unwrap(), &b);
    assert_eq!(f.store.counts().unwrap().sessions, 1);
}

#[test]
fn certificate_serials_increase() {
    let f = Fixture::new();
    let serial = |name: &str| f.store.user(name).unwrap().unwrap().certificate.serial;
    f.register("alice");
    let alice_first = serial("alice");
    f.register("bob");
    let bob_first = serial("bob");
    let (_, c3) = f.begin_session("alice", T0 + DAY);
    let (_, c4) = f.begin_session("bob", T0 + DAY);
    let (_, c5) = f.begin_session("alice", T0 + DAY);
    assert_eq!(
        [alice_first, bob_first, c3.serial, c4.serial, c5.serial],
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        f.store.user("alice").unwrap().unwrap().certificate.serial,
        5
    );
}

#[test]
fn secrets_are_not_stored_in_plaintext() {
    let f = Fixture::new();
    f.register("alice");
    f.register("bob");
    let (session, _) = f.begin_session("alice", T0 + DAY);
    let vm = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    f.deposit(&vm);
    let password_file = f.store.user("alice").unwrap().unwrap().password_file;
    drop(f.store);
    let file = std::fs::read(&f.path).unwrap();
    let contains = |needle: &[u8]| file.windows(needle.len()).any(|w| w == needle);
    // The locator is stored in the clear: the search does find plaintext.
    assert!(contains(&vm.locator));
    assert!(!contains(session.master_key.as_bytes()));
    // No session key is stored at all; its shares are sealed to the
    // servers' share keys.
    assert!(contains(&vm.shares[0].ciphertext));
    assert!(!contains(&password_file));
}
