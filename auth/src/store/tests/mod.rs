//! Unit tests of [`Store`] on a temporary redb file: opening and key binding,
//! users, sessions, voicemail deposit, delivery and acks, the expiry purge,
//! storage grants, receipts, recalls and retention, at-rest sealing of rows,
//! and snapshot export and import.
//! This module holds the fixture the test files share.

mod dkg;
mod member_keys;
mod open;
mod receipts;
mod sealing;
mod snapshot;
mod storage_grants;
mod users;
mod voicemails;

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tempfile::TempDir;
use vmail_proto::cert::{CertificateBody, UserCertificate};
use vmail_proto::grant::{DeleteOrder, GrantedShard, StorageGrant, UPLOAD_WINDOW_SECS};
use vmail_proto::keys::{MasterKey, SecretKey};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::{Recipients, Username};
use vmail_proto::random_bytes;

use super::schema::{
    GRANT_ROSTERS, GRANTS, OPEN_GRANTS, REQUESTS, SESSIONS, STORAGE_GRANTS, USERS,
    VOICEMAIL_GRANTS, VOICEMAILS, WAITING,
};
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
            account_key: [0; 32],
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
            inbox_key: vmail_proto::share::BoxSecret::generate().public(),
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
            grant_serial: 0,
            threshold: 1,
            key_check: random_bytes(),
            shares: vec![crate::store::StoredShare {
                node_id: 7,
                epoch: 1,
                index: 1,
                enc: random_bytes(),
                ciphertext: random_bytes::<48>().to_vec(),
            }],
        }
    }

    /// The terms of a one-shard grant issued at `now` that expires at
    /// `expires_at`.
    fn terms(now: u64, expires_at: u64) -> GrantTerms {
        GrantTerms {
            message_id: random_bytes(),
            data_shards: 1,
            shards: vec![GrantedShard {
                len: 4321,
                sha256: random_bytes(),
            }],
            holders: vec![vec![1; 38], vec![2; 38]],
            upload_until: (now + UPLOAD_WINDOW_SECS).min(expires_at),
            expires_at,
            share_nodes: vec![7],
        }
    }

    /// Issues a grant to `owner` for `recipients`, signed by this fixture's
    /// cluster key, under a quota of `max_open`.
    fn issue_grant(
        &self,
        owner: &str,
        recipients: &[&str],
        now: u64,
        expires_at: u64,
        max_open: u64,
    ) -> GrantOutcome {
        self.store
            .write(|tx| {
                self.store.issue_grant(
                    tx,
                    owner,
                    &Recipients::parse(recipients).unwrap(),
                    Self::terms(now, expires_at),
                    now,
                    max_open,
                    None,
                    |body| body.sign(&self.cluster),
                )
            })
            .unwrap()
    }

    /// A grant for `vm`: issued to its sender when it was deposited, and
    /// expiring with it. It names the sender as recipient, so that a
    /// deposit's own recipient checks are what a test sees.
    fn grant_for(&self, vm: &Voicemail) -> StorageGrant {
        match self.issue_grant(
            &vm.sender,
            &[&vm.sender],
            vm.deposited_at,
            vm.metadata.expires_at,
            u64::MAX,
        ) {
            GrantOutcome::Issued(g, ..) => g,
            other => panic!("grant refused: {other:?}"),
        }
    }

    /// Deposits `vm` under grant `serial`.
    fn deposit_under(
        &self,
        request_id: &[u8],
        digest: [u8; 32],
        vm: &Voicemail,
        serial: u64,
        max_pending: u64,
    ) -> DepositOutcome {
        self.store
            .write(|tx| {
                self.store
                    .deposit(tx, request_id, digest, vm, serial, max_pending)
            })
            .unwrap()
    }

    /// Deposits `vm` under a fresh grant of its own.
    fn deposit_as(
        &self,
        request_id: &[u8],
        digest: [u8; 32],
        vm: &Voicemail,
        max_pending: u64,
    ) -> DepositOutcome {
        let serial = self.grant_for(vm).body.serial;
        self.deposit_under(request_id, digest, vm, serial, max_pending)
    }

    /// Deposits `vm` under a fresh request id and checks it was stored.
    fn deposit(&self, vm: &Voicemail) {
        let outcome = self.deposit_as(&random_bytes::<16>(), random_bytes(), vm, NO_CAP);
        assert_eq!(outcome, DepositOutcome::Stored(vm.id));
    }

    fn ack(&self, recipient: &str, id: &VoicemailId, now: u64) -> AckOutcome {
        self.store
            .write(|tx| {
                self.store
                    .ack(tx, recipient, id, now, |serial, reason, exp| {
                        DeleteOrder::sign(serial, reason, exp, &self.cluster)
                    })
            })
            .unwrap()
    }

    /// Purges at `now`; returns how many sessions and voicemails went.
    fn purge(&self, now: u64) -> (usize, usize) {
        let c = self.purge_counts(now);
        (c.sessions, c.voicemails)
    }

    fn purge_counts(&self, now: u64) -> PurgeCounts {
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
    assert_eq!(got.threshold, want.threshold);
    assert_eq!(got.key_check, want.key_check);
    assert_eq!(got.shares, want.shares);
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
