//! Unit tests of [`Store`] on a temporary redb file: opening and key binding,
//! users, sessions, voicemail deposit, delivery and acks, the expiry purge,
//! at-rest sealing of rows, and snapshot export and import.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tempfile::TempDir;
use vmail_proto::cert::{CertificateBody, UserCertificate};
use vmail_proto::keys::{MasterKey, SecretKey};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::{Recipients, Username};
use vmail_proto::random_bytes;

use super::schema::{GRANTS, REQUESTS, SESSIONS, USERS, VOICEMAILS, WAITING};
use super::*;

/// "Now" for every test: rows are stamped relative to it.
const T0: u64 = 1_700_000_000;
const DAY: u64 = 86_400;
/// An inbox cap large enough never to matter, for tests not about the cap.
const NO_CAP: u64 = 1000;

/// A fresh store in a temporary directory, with the keys it was made with.
struct Fixture {
    dir: TempDir,
    path: PathBuf,
    data_key: SecretKey,
    binding: KeyBinding,
    cluster: SigningKey,
    store: Store,
}

fn fresh_binding(cluster: &SigningKey) -> KeyBinding {
    KeyBinding {
        opaque_public_key: random_bytes(),
        cluster_public_key: cluster.verifying_key().to_bytes(),
    }
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.redb");
        let data_key = SecretKey::random();
        let cluster = SigningKey::from_bytes(&random_bytes());
        let binding = fresh_binding(&cluster);
        Store::create(&path, "auth-test", &data_key, &binding, 7, true).unwrap();
        let store = Store::open(&path, data_key.clone(), &binding).unwrap();
        Self {
            dir,
            path,
            data_key,
            binding,
            cluster,
            store,
        }
    }

    /// A certificate for `name` signed by this fixture's cluster key.
    fn cert(&self, name: &str, serial: u64) -> UserCertificate {
        CertificateBody {
            serial,
            username: Username::parse(name).unwrap(),
            identity_key: SigningKey::from_bytes(&random_bytes()).verifying_key(),
            peer_id: Vec::new(),
            not_before: T0,
            not_after: T0 + DAY,
        }
        .sign(&self.cluster)
    }

    fn user_for(&self, name: &str, serial: u64) -> User {
        User {
            password_file: format!("password file of {name}").into_bytes(),
            credential_nonce: random_bytes(),
            certificate: self.cert(name, serial),
            registered_at: T0,
        }
    }

    fn register_with(&self, name: &str, invite_hash: Option<&str>) -> RegisterOutcome {
        self.store
            .write(|tx| {
                self.store
                    .register(tx, name, invite_hash, |serial| self.user_for(name, serial))
            })
            .unwrap()
    }

    fn register(&self, name: &str) -> RegisterOutcome {
        self.register_with(name, None)
    }

    /// Opens a session for `name` expiring at `expires_at`; returns it as
    /// stored and the certificate the login issued.
    fn begin_session(&self, name: &str, expires_at: u64) -> (Session, UserCertificate) {
        let master_key = MasterKey::from_bytes(random_bytes());
        let session = Session {
            token_hash: token_hash(&random_bytes::<32>()),
            username: name.to_owned(),
            master_key_id: master_key.id(),
            master_key,
            created_at: T0,
            expires_at,
        };
        let cert = self
            .store
            .write(|tx| {
                self.store
                    .begin_session(tx, &session, |serial| self.cert(name, serial))
            })
            .unwrap();
        (session, cert)
    }

    fn end_session(&self, hash: &[u8; 32]) -> bool {
        self.store
            .write(|tx| self.store.end_session(tx, hash))
            .unwrap()
    }

    /// A voicemail from `sender` (who must be registered) to `recipients`.
    fn voicemail(
        &self,
        sender: &str,
        recipients: &[&str],
        deposited_at: u64,
        expires_at: u64,
    ) -> Voicemail {
        let id: VoicemailId = random_bytes();
        Voicemail {
            id,
            sender: sender.to_owned(),
            sender_certificate: self.store.user(sender).unwrap().unwrap().certificate,
            recipients: Recipients::parse(recipients).unwrap(),
            locator: format!("locator {}", hex::encode(id)).into_bytes(),
            metadata: VoicemailMeta {
                size: 4321,
                content_type: "audio/wav".into(),
                duration_ms: 5000,
                expires_at,
            },
            deposited_at,
            session_key: SecretKey::random(),
        }
    }

    fn deposit_as(
        &self,
        request_id: &[u8],
        digest: [u8; 32],
        vm: &Voicemail,
        max_pending: u64,
    ) -> DepositOutcome {
        self.store
            .write(|tx| self.store.deposit(tx, request_id, digest, vm, max_pending))
            .unwrap()
    }

    /// Deposits `vm` under a fresh request id and checks it was stored.
    fn deposit(&self, vm: &Voicemail) {
        let outcome = self.deposit_as(&random_bytes::<16>(), random_bytes(), vm, NO_CAP);
        assert_eq!(outcome, DepositOutcome::Stored(vm.id));
    }

    fn ack(&self, recipient: &str, id: &VoicemailId, now: u64) -> AckOutcome {
        self.store
            .write(|tx| self.store.ack(tx, recipient, id, now))
            .unwrap()
    }

    fn purge(&self, now: u64) -> (usize, usize) {
        self.store
            .write(|tx| self.store.purge_expired(tx, now))
            .unwrap()
    }

    /// How many rows a table holds, read straight from the database.
    fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: redb::TableDefinition<K, V>,
    ) -> u64 {
        self.store
            .run(|db| {
                let tx = db.begin_read().map_err(db_err)?;
                let t = tx.open_table(table).map_err(db_err)?;
                t.len().map_err(db_err)
            })
            .unwrap()
    }

    /// `user`'s waiting count behind the inbox cap (0 when it has no row).
    fn waiting(&self, user: &str) -> u64 {
        self.store
            .run(|db| {
                let tx = db.begin_read().map_err(db_err)?;
                let t = tx.open_table(WAITING).map_err(db_err)?;
                Ok(t.get(user).map_err(db_err)?.map_or(0, |v| v.value()))
            })
            .unwrap()
    }
}

fn assert_same_user(got: &User, want: &User) {
    assert_eq!(got.password_file, want.password_file);
    assert_eq!(got.credential_nonce, want.credential_nonce);
    assert_eq!(got.certificate, want.certificate);
    assert_eq!(got.registered_at, want.registered_at);
}

fn assert_same_session(got: &Session, want: &Session) {
    assert_eq!(got.token_hash, want.token_hash);
    assert_eq!(got.username, want.username);
    assert_eq!(got.master_key, want.master_key);
    assert_eq!(got.master_key_id, want.master_key_id);
    assert_eq!(got.created_at, want.created_at);
    assert_eq!(got.expires_at, want.expires_at);
}

fn assert_same_voicemail(got: &Voicemail, want: &Voicemail) {
    assert_eq!(got.id, want.id);
    assert_eq!(got.sender, want.sender);
    assert_eq!(got.sender_certificate, want.sender_certificate);
    assert_eq!(got.recipients, want.recipients);
    assert_eq!(got.locator, want.locator);
    assert_eq!(got.metadata, want.metadata);
    assert_eq!(got.deposited_at, want.deposited_at);
    assert_eq!(got.session_key, want.session_key);
}

fn ids(vms: &[Voicemail]) -> Vec<VoicemailId> {
    vms.iter().map(|v| v.id).collect()
}

fn assert_corrupt(err: StoreError, want_table: &str, want_key: &str) {
    match err {
        StoreError::Corrupt { table, key, .. } => {
            assert_eq!((table, key.as_str()), (want_table, want_key));
        }
        other => panic!("expected a corrupt {want_table} row {want_key}, got {other:?}"),
    }
}

// ---- creating and opening ----

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

// ---- users and sessions ----

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
    assert!(!contains(vm.session_key.as_bytes()));
    assert!(!contains(&password_file));
}

// ---- voicemails ----

#[test]
fn deposit_pending_ack_erases_the_key_with_the_last_ack() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let vm = f.voicemail("alice", &["carol", "bob"], T0, T0 + DAY);
    f.deposit(&vm);
    assert_eq!(f.store.counts().unwrap().grants, 2);

    for who in ["bob", "carol"] {
        let pending = f.store.pending(who, T0).unwrap();
        assert_eq!(ids(&pending), [vm.id], "{who}");
        assert_same_voicemail(&pending[0], &vm);
        assert_eq!(pending[0].recipients.to_strings(), ["bob", "carol"]);
        assert_same_voicemail(&f.store.pending_one(who, &vm.id).unwrap().unwrap(), &vm);
    }
    // The sender is not a recipient.
    assert!(f.store.pending("alice", T0).unwrap().is_empty());
    assert!(f.store.pending_one("alice", &vm.id).unwrap().is_none());

    assert_eq!(
        f.ack("bob", &vm.id, T0 + 1),
        AckOutcome::Acked { key_erased: false }
    );
    assert!(f.store.voicemail_exists(&vm.id).unwrap());
    assert!(f.store.pending("bob", T0 + 1).unwrap().is_empty());
    assert!(f.store.pending_one("bob", &vm.id).unwrap().is_none());
    assert_eq!(ids(&f.store.pending("carol", T0 + 1).unwrap()), [vm.id]);

    assert_eq!(
        f.ack("carol", &vm.id, T0 + 2),
        AckOutcome::Acked { key_erased: true }
    );
    assert!(!f.store.voicemail_exists(&vm.id).unwrap());
    assert!(f.store.pending("carol", T0 + 2).unwrap().is_empty());
    assert!(f.store.pending_one("carol", &vm.id).unwrap().is_none());
    let counts = f.store.counts().unwrap();
    assert_eq!((counts.voicemails, counts.grants), (0, 0));
    assert_eq!((f.waiting("bob"), f.waiting("carol")), (0, 0));
}

#[test]
fn pending_is_oldest_first_and_hides_expired_voicemail() {
    let f = Fixture::new();
    f.register("alice");
    f.register("bob");
    // Deposited out of order, so that neither insertion order nor a random
    // id can pass for deposit order.
    let newest = f.voicemail("alice", &["bob"], T0 + 30, T0 + DAY);
    let oldest = f.voicemail("alice", &["bob"], T0 + 10, T0 + DAY);
    let middle = f.voicemail("alice", &["bob"], T0 + 20, T0 + DAY);
    let short = f.voicemail("alice", &["bob"], T0 + 15, T0 + 100);
    for vm in [&newest, &oldest, &middle, &short] {
        f.deposit(vm);
    }
    assert_eq!(
        ids(&f.store.pending("bob", T0 + 99).unwrap()),
        [oldest.id, short.id, middle.id, newest.id]
    );
    // At its expiry time a voicemail is no longer pending, though its row
    // stays until the purge.
    assert_eq!(
        ids(&f.store.pending("bob", T0 + 100).unwrap()),
        [oldest.id, middle.id, newest.id]
    );
    assert!(f.store.voicemail_exists(&short.id).unwrap());
    assert!(f.store.pending("bob", T0 + DAY).unwrap().is_empty());
}

#[test]
fn pending_keeps_recipients_apart_when_one_name_prefixes_another() {
    let f = Fixture::new();
    for u in ["alice", "bob", "bobby", "bo-b"] {
        f.register(u);
    }
    let to_bob = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    let to_bobby = f.voicemail("alice", &["bobby"], T0, T0 + DAY);
    let to_bo_b = f.voicemail("alice", &["bo-b"], T0, T0 + DAY);
    for vm in [&to_bob, &to_bobby, &to_bo_b] {
        f.deposit(vm);
    }
    assert_eq!(ids(&f.store.pending("bob", T0).unwrap()), [to_bob.id]);
    assert_eq!(ids(&f.store.pending("bobby", T0).unwrap()), [to_bobby.id]);
    assert_eq!(ids(&f.store.pending("bo-b", T0).unwrap()), [to_bo_b.id]);
    assert!(f.store.pending_one("bob", &to_bobby.id).unwrap().is_none());
}

#[test]
fn a_replayed_request_id_returns_the_first_result_or_is_refused() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let request_id = random_bytes::<16>();
    let digest: [u8; 32] = random_bytes();
    let first = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    assert_eq!(
        f.deposit_as(&request_id, digest, &first, NO_CAP),
        DepositOutcome::Stored(first.id)
    );
    let counts = f.store.counts().unwrap();

    // A retry (same digest) under a new server-chosen id gets the first id.
    let retry = f.voicemail("alice", &["bob"], T0 + 5, T0 + DAY);
    assert_eq!(
        f.deposit_as(&request_id, digest, &retry, NO_CAP),
        DepositOutcome::Replayed(first.id)
    );
    // Other content under the same request id is refused.
    let other = f.voicemail("alice", &["carol"], T0 + 5, T0 + DAY);
    assert_eq!(
        f.deposit_as(&request_id, random_bytes(), &other, NO_CAP),
        DepositOutcome::RequestIdReused
    );
    assert_eq!(f.store.counts().unwrap(), counts);
    assert!(!f.store.voicemail_exists(&retry.id).unwrap());
    assert!(f.store.pending("carol", T0).unwrap().is_empty());
    assert_eq!(ids(&f.store.pending("bob", T0).unwrap()), [first.id]);

    // Request ids are per sender: bob may use the same one.
    let from_bob = f.voicemail("bob", &["carol"], T0, T0 + DAY);
    assert_eq!(
        f.deposit_as(&request_id, digest, &from_bob, NO_CAP),
        DepositOutcome::Stored(from_bob.id)
    );
}

#[test]
fn an_unknown_recipient_stores_nothing() {
    let f = Fixture::new();
    f.register("alice");
    f.register("bob");
    let mut vm = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    vm.recipients = Recipients::parse(["bob", "zed", "mallory"]).unwrap();
    let request_id = random_bytes::<16>();
    assert_eq!(
        f.deposit_as(&request_id, random_bytes(), &vm, NO_CAP),
        DepositOutcome::UnknownRecipient("mallory".into()),
        "the first unknown name in canonical order"
    );
    let counts = f.store.counts().unwrap();
    assert_eq!((counts.voicemails, counts.grants), (0, 0));
    assert_eq!(f.waiting("bob"), 0);
    assert_eq!(f.rows(REQUESTS), 0);
    // The request id was not used up.
    vm.recipients = Recipients::parse(["bob"]).unwrap();
    assert_eq!(
        f.deposit_as(&request_id, random_bytes(), &vm, NO_CAP),
        DepositOutcome::Stored(vm.id)
    );
}

#[test]
fn a_full_inbox_refuses_deposits_for_that_recipient_only() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let cap = 2;
    let a = f.voicemail("alice", &["bob"], T0, T0 + DAY);
    let b = f.voicemail("alice", &["bob", "carol"], T0 + 1, T0 + DAY);
    for vm in [&a, &b] {
        assert_eq!(
            f.deposit_as(&random_bytes::<16>(), random_bytes(), vm, cap),
            DepositOutcome::Stored(vm.id)
        );
    }
    assert_eq!((f.waiting("bob"), f.waiting("carol")), (2, 1));
    let counts = f.store.counts().unwrap();

    let c = f.voicemail("alice", &["carol", "bob"], T0 + 2, T0 + DAY);
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &c, cap),
        DepositOutcome::InboxFull("bob".into())
    );
    assert_eq!(f.store.counts().unwrap(), counts);
    assert_eq!(f.waiting("carol"), 1, "a refused deposit grants nobody");
    let to_carol = f.voicemail("alice", &["carol"], T0 + 2, T0 + DAY);
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &to_carol, cap),
        DepositOutcome::Stored(to_carol.id)
    );

    // An ack frees a place.
    assert_eq!(
        f.ack("bob", &a.id, T0 + 3),
        AckOutcome::Acked { key_erased: true }
    );
    assert_eq!(f.waiting("bob"), 1);
    let d = f.voicemail("alice", &["bob"], T0 + 4, T0 + DAY);
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &d, cap),
        DepositOutcome::Stored(d.id)
    );
}

#[test]
fn acking_twice_as_a_stranger_or_after_expiry_is_not_pending() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let vm = f.voicemail("alice", &["bob", "carol"], T0, T0 + 100);
    f.deposit(&vm);
    // Neither the sender nor an unregistered name holds a grant.
    assert_eq!(f.ack("alice", &vm.id, T0), AckOutcome::NotPending);
    assert_eq!(f.ack("mallory", &vm.id, T0), AckOutcome::NotPending);
    assert_eq!(f.ack("bob", &random_bytes(), T0), AckOutcome::NotPending);
    assert_eq!(
        f.ack("bob", &vm.id, T0),
        AckOutcome::Acked { key_erased: false }
    );
    assert_eq!(f.ack("bob", &vm.id, T0), AckOutcome::NotPending);
    assert_eq!(f.store.counts().unwrap().grants, 1);
    // Once expired, the last recipient's ack is refused; the purge erases it.
    assert_eq!(f.ack("carol", &vm.id, T0 + 100), AckOutcome::NotPending);
    assert!(f.store.voicemail_exists(&vm.id).unwrap());
    assert_eq!(f.waiting("carol"), 1);
}

#[test]
fn purge_erases_what_expired_and_counts_it() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let (gone_session, _) = f.begin_session("alice", T0 + 100);
    let (live_session, _) = f.begin_session("bob", T0 + DAY);
    let cap = 2;
    let gone = f.voicemail("alice", &["bob", "carol"], T0, T0 + 100);
    let live = f.voicemail("alice", &["bob"], T0 + 1, T0 + DAY);
    let gone_request = random_bytes::<16>();
    let gone_digest: [u8; 32] = random_bytes();
    assert_eq!(
        f.deposit_as(&gone_request, gone_digest, &gone, cap),
        DepositOutcome::Stored(gone.id)
    );
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &live, cap),
        DepositOutcome::Stored(live.id)
    );
    // Bob's inbox is full, and expired voicemail counts until the purge.
    let blocked = f.voicemail("alice", &["bob"], T0 + 100, T0 + DAY);
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &blocked, cap),
        DepositOutcome::InboxFull("bob".into())
    );

    assert_eq!(f.purge(T0 + 99), (0, 0), "nothing has expired yet");
    assert_eq!(f.rows(REQUESTS), 2);

    assert_eq!(f.purge(T0 + 100), (1, 1));
    assert!(f.store.session(&gone_session.token_hash).unwrap().is_none());
    assert_same_session(
        &f.store.session(&live_session.token_hash).unwrap().unwrap(),
        &live_session,
    );
    assert!(!f.store.voicemail_exists(&gone.id).unwrap());
    assert!(f.store.voicemail_exists(&live.id).unwrap());
    let counts = f.store.counts().unwrap();
    assert_eq!(
        (counts.sessions, counts.voicemails, counts.grants),
        (1, 1, 1)
    );
    assert_eq!(f.rows(VOICEMAILS), 1);
    assert_eq!(f.rows(GRANTS), 1);
    assert_eq!(
        f.rows(REQUESTS),
        1,
        "the expired voicemail's request row went"
    );
    assert_eq!((f.waiting("bob"), f.waiting("carol")), (1, 0));
    assert_eq!(f.rows(WAITING), 1, "no zero counts are kept");

    // Bob has room again.
    assert_eq!(
        f.deposit_as(&random_bytes::<16>(), random_bytes(), &blocked, cap),
        DepositOutcome::Stored(blocked.id)
    );
    // With its request row gone, the old request id is fresh again.
    let again = f.voicemail("alice", &["carol"], T0 + 100, T0 + DAY);
    assert_eq!(
        f.deposit_as(&gone_request, gone_digest, &again, cap),
        DepositOutcome::Stored(again.id)
    );
    assert_eq!(f.purge(T0 + 100), (0, 0), "a second purge finds nothing");
}

// ---- sealing binds each secret to its row ----

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
            let row = |name: &str| -> Result<users::UserRow, StoreError> {
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

// ---- snapshots ----

#[test]
fn export_then_import_gives_identical_reads() {
    let f = Fixture::new();
    for u in ["alice", "bob", "carol"] {
        f.register(u);
    }
    let invite = "c0ffee";
    f.register_with("dave", Some(invite));
    let (s1, _) = f.begin_session("alice", T0 + DAY);
    let (s2, _) = f.begin_session("bob", T0 + 100);
    let a = f.voicemail("alice", &["bob", "carol"], T0, T0 + DAY);
    let b = f.voicemail("carol", &["bob"], T0 + 1, T0 + DAY);
    f.deposit(&a);
    f.deposit(&b);
    let request_id = random_bytes::<16>();
    let digest: [u8; 32] = random_bytes();
    let c = f.voicemail("alice", &["dave"], T0 + 2, T0 + DAY);
    assert_eq!(
        f.deposit_as(&request_id, digest, &c, NO_CAP),
        DepositOutcome::Stored(c.id)
    );
    assert_eq!(
        f.ack("carol", &a.id, T0 + 3),
        AckOutcome::Acked { key_erased: false }
    );
    let (snapshot, _applied) = f.store.export().unwrap();

    // A second server of the same group (same keys) that held other rows.
    let path2 = f.dir.path().join("second.redb");
    Store::create(&path2, "auth-2", &f.data_key, &f.binding, 8, false).unwrap();
    let second = Store::open(&path2, f.data_key.clone(), &f.binding).unwrap();
    second
        .write(|tx| second.register(tx, "zoe", None, |serial| f.user_for("zoe", serial)))
        .unwrap();
    second.write(|tx| second.import(tx, &snapshot)).unwrap();

    assert!(
        second.user("zoe").unwrap().is_none(),
        "import replaces rows"
    );
    for u in ["alice", "bob", "carol", "dave"] {
        assert_same_user(
            &second.user(u).unwrap().unwrap(),
            &f.store.user(u).unwrap().unwrap(),
        );
        let want = f.store.pending(u, T0 + 3).unwrap();
        let got = second.pending(u, T0 + 3).unwrap();
        assert_eq!(ids(&got), ids(&want), "{u}");
        for (g, w) in got.iter().zip(&want) {
            assert_same_voicemail(g, w);
        }
    }
    for s in [&s1, &s2] {
        assert_same_session(&second.session(&s.token_hash).unwrap().unwrap(), s);
    }
    assert!(second.invite_used(invite).unwrap());
    assert_eq!(second.counts().unwrap(), f.store.counts().unwrap());
    assert_eq!(
        second.export().unwrap().0,
        snapshot,
        "a byte-identical copy"
    );
    // Request rows, waiting counts and the serial counter came too.
    let retry = f.voicemail("alice", &["dave"], T0 + 4, T0 + DAY);
    let replay = second
        .write(|tx| second.deposit(tx, &request_id, digest, &retry, NO_CAP))
        .unwrap();
    assert_eq!(replay, DepositOutcome::Replayed(c.id));
    assert_eq!(
        second
            .write(|tx| second.ack(tx, "carol", &a.id, T0 + 4))
            .unwrap(),
        AckOutcome::NotPending
    );
    let next = |s: &Store| {
        s.write(|tx| s.register(tx, "erin", None, |serial| f.user_for("erin", serial)))
            .unwrap();
        s.user("erin").unwrap().unwrap().certificate.serial
    };
    assert_eq!(next(&second), next(&f.store));
}
