//! The auth server's durable state in one redb database.
//!
//! Tables (keys → values; rows are postcard-encoded):
//! - `meta`: `schema_version` → u64 LE, `server_name`, `next_serial` → u64 LE,
//!   and the key binding: an empty blob sealed under the data key, the OPAQUE
//!   and cluster public keys, so that a swapped key file is refused at start;
//! - `users`: username → [`UserRow`];
//! - `sessions`: SHA-256(token) → [`SessionRow`];
//! - `voicemails`: voicemail id → [`VoicemailRow`];
//! - `grants`: (recipient, voicemail id) → ();
//! - `requests`: (sender, request id) → [`RequestRow`], for idempotent deposits;
//! - `invites`: SHA-256(invite code) hex → the username that used it;
//! - `waiting`: username → how many grants it holds, for the inbox cap;
//! - `raft_log`: log index → a postcard-encoded openraft entry;
//! - `raft`: `vote`, `committed`, `purged`, `applied` (last applied log id
//!   and membership), `snapshot` (the latest snapshot) and `node_id`.
//!
//! Every change to the user-facing tables comes from applying a Raft log
//! entry ([`crate::cluster`]); the applied marker is written in the same
//! transaction, so a crash never applies an entry twice.
//!
//! Secrets (OPAQUE password files, session master keys, voicemail session
//! keys) are sealed with AES-256-GCM under the data key, with an AAD naming
//! the table and row, so a sealed value cannot be moved to another row.
//! Every mutation is one durable redb transaction: it happens whole or not at all.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prost::Message;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmail_proto::cert::UserCertificate;
use vmail_proto::keys::{MasterKey, MasterKeyId, SecretKey};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::Recipients;
use vmail_proto::pb;

use crate::datadir::files;

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u64 = 2;

/// `meta` key of an empty blob sealed under the data key: proves the data key fits.
const DATA_KEY_CHECK: &str = "vmail/v1/data-key-check";
/// `meta` key of the OPAQUE server public key the password files depend on.
const OPAQUE_PUBLIC_KEY: &str = "opaque_public_key";
/// `meta` key of the cluster public key that signed the stored certificates.
const CLUSTER_PUBLIC_KEY: &str = "cluster_public_key";

/// Public values that tie a database to the key files it was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyBinding {
    /// The OPAQUE server's public key.
    pub opaque_public_key: [u8; 32],
    /// The cluster's certificate-signing public key.
    pub cluster_public_key: [u8; 32],
}

/// How long a reopen after an I/O failure waits for the old handle to close.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
const VOICEMAILS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("voicemails");
const GRANTS: TableDefinition<(&str, &[u8]), ()> = TableDefinition::new("grants");
const REQUESTS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("requests");
const INVITES: TableDefinition<&str, &str> = TableDefinition::new("invites");
const WAITING: TableDefinition<&str, u64> = TableDefinition::new("waiting");
/// The Raft log: index → postcard-encoded entry.
pub(crate) const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft's own durable state: vote, committed, purged, applied, snapshot, node id.
pub(crate) const RAFT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft");

const AAD_PASSWORD_FILE: &[u8] = b"vmail/v1/at-rest/password-file/";
const AAD_MASTER_KEY: &[u8] = b"vmail/v1/at-rest/master-key/";
const AAD_SESSION_KEY: &[u8] = b"vmail/v1/at-rest/session-key/";

/// A voicemail id: 16 random bytes chosen by the server.
pub type VoicemailId = [u8; 16];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error(
        "database {path} could not be opened: {source}. If it is corrupt or truncated, restore it from a backup; the server will not reset it"
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: redb::DatabaseError,
    },
    /// `create` was pointed at an existing file.
    #[error("database {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// A key file is not the one the database was created with.
    #[error(
        "{file} does not belong to database {path}: it was replaced or comes from another server. Restore the original file; the server will not run with it"
    )]
    KeyMismatch {
        /// The key file's name.
        file: &'static str,
        /// The database file.
        path: PathBuf,
    },
    /// The database file does not exist.
    #[error(
        "database {0} is missing; the data dir is incomplete. Restore it from a backup, or initialise a new server in an empty directory"
    )]
    Missing(PathBuf),
    /// The file is a redb database but not one this server wrote.
    #[error("database {0} has no vmail schema version: it is not a vmail-auth database")]
    NotVmail(PathBuf),
    /// The schema version is one this build does not know.
    #[error(
        "database {path} has schema version {found}, this build reads version {SCHEMA_VERSION}; run a matching vmail-auth"
    )]
    Schema {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// The disk is full; nothing was written.
    #[error("the server's disk is full, so nothing was stored: {0}. Free space and retry")]
    DiskFull(String),
    /// A row could not be decoded or unsealed.
    #[error("stored {table} row {key} is corrupt: {why}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row key, printable.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// Any other redb failure.
    #[error("database error: {0}")]
    Db(redb::Error),
}

pub(crate) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    if let redb::Error::Io(io) = &e
        && (io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28))
    {
        return StoreError::DiskFull(io.to_string());
    }
    StoreError::Db(e)
}

fn corrupt(
    table: &'static str,
    key: impl std::fmt::Display,
    why: impl std::fmt::Display,
) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_string(),
        why: why.to_string(),
    }
}

fn aad(prefix: &[u8], row: &[u8]) -> Vec<u8> {
    [prefix, row].concat()
}

/// A session's master key is bound to its token hash and its user, so a
/// sealed key moved to another row, or a row pointed at another user, fails.
fn master_key_aad(token_hash: &[u8], username: &str) -> Vec<u8> {
    [AAD_MASTER_KEY, token_hash, username.as_bytes()].concat()
}

/// A voicemail's session key is bound to its id, the sender's certificate
/// (so the sender's name), the deposit time, the recipients and the locator,
/// so none of what a recipient is shown can be changed in the database
/// unnoticed.
fn session_key_aad(
    id: &[u8],
    sender_certificate: &[u8],
    deposited_at: u64,
    recipients: &Recipients,
    locator: &[u8],
) -> Vec<u8> {
    let mut out = AAD_SESSION_KEY.to_vec();
    out.extend_from_slice(id);
    out.extend_from_slice(&Sha256::digest(sender_certificate));
    out.extend_from_slice(&deposited_at.to_be_bytes());
    out.extend_from_slice(&recipients.canonical_bytes());
    out.extend_from_slice(&vmail_proto::keys::locator_hash(locator));
    out
}

/// A registered user.
#[derive(Debug, Clone)]
pub struct User {
    /// The OPAQUE password file (unsealed).
    pub password_file: Vec<u8>,
    /// With the username, names the OPRF key of the password file.
    pub credential_nonce: [u8; 16],
    /// The current certificate.
    pub certificate: UserCertificate,
    /// Registration time, Unix seconds.
    pub registered_at: u64,
}

/// A `requests` row key: (sender, request id).
type RequestKey = (String, Vec<u8>);

/// The snapshot form of the user-facing tables: every row as stored.
#[derive(Serialize, Deserialize)]
struct Dump {
    next_serial: u64,
    users: Vec<(String, Vec<u8>)>,
    sessions: Vec<(Vec<u8>, Vec<u8>)>,
    voicemails: Vec<(Vec<u8>, Vec<u8>)>,
    grants: Vec<(String, Vec<u8>)>,
    requests: Vec<(RequestKey, Vec<u8>)>,
    invites: Vec<(String, String)>,
    waiting: Vec<(String, u64)>,
}

#[derive(Serialize, Deserialize)]
struct UserRow {
    password_file_sealed: Vec<u8>,
    credential_nonce: [u8; 16],
    certificate: Vec<u8>,
    registered_at: u64,
}

/// A login session.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 of the bearer token.
    pub token_hash: [u8; 32],
    /// Whose session.
    pub username: String,
    /// The master key negotiated at login (unsealed).
    pub master_key: MasterKey,
    /// Its id.
    pub master_key_id: MasterKeyId,
    /// Login time, Unix seconds.
    pub created_at: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

#[derive(Serialize, Deserialize)]
struct SessionRow {
    username: String,
    master_key_sealed: Vec<u8>,
    master_key_id: MasterKeyId,
    created_at: u64,
    expires_at: u64,
}

/// A deposited voicemail.
#[derive(Debug, Clone)]
pub struct Voicemail {
    /// Its id.
    pub id: VoicemailId,
    /// The sender's username.
    pub sender: String,
    /// The sender's certificate at deposit time.
    pub sender_certificate: UserCertificate,
    /// The canonical recipients.
    pub recipients: Recipients,
    /// The storage locator.
    pub locator: Vec<u8>,
    /// Sender's metadata, with the expiry resolved.
    pub metadata: VoicemailMeta,
    /// Deposit time, Unix seconds.
    pub deposited_at: u64,
    /// The session key (unsealed).
    pub session_key: SecretKey,
}

#[derive(Serialize, Deserialize)]
struct VoicemailRow {
    sender: String,
    sender_certificate: Vec<u8>,
    recipients: Vec<String>,
    locator: Vec<u8>,
    metadata: VoicemailMeta,
    deposited_at: u64,
    session_key_sealed: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct RequestRow {
    voicemail_id: VoicemailId,
    digest: [u8; 32],
    expires_at: u64,
}

/// The result of [`Store::register`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterOutcome {
    /// The user was created.
    Created,
    /// The username is taken; nothing changed.
    UserExists,
    /// The invite code was already used; nothing changed.
    InviteUsed,
}

/// The result of [`Store::deposit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DepositOutcome {
    /// A new voicemail was stored.
    Stored(VoicemailId),
    /// The request id was seen before with the same content; its first result.
    Replayed(VoicemailId),
    /// The request id was seen before with different content; nothing changed.
    RequestIdReused,
    /// A recipient is not registered; nothing changed.
    UnknownRecipient(String),
    /// A recipient has too many voicemails waiting; nothing changed.
    InboxFull(String),
}

/// The result of [`Store::ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckOutcome {
    /// The voicemail is not pending for this user; nothing changed.
    NotPending,
    /// The grant was erased; `key_erased` when it was the last one.
    Acked {
        /// Whether the voicemail and its session key are now gone.
        key_erased: bool,
    },
}

/// The auth server's database.
///
/// After an I/O failure (a full disk, say) redb refuses every further write
/// until the file is reopened, so the store drops its handle and reopens the
/// file on next use: once space is freed, writes work again without a restart.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: RwLock<Option<Arc<Database>>>,
    data_key: SecretKey,
}

fn u64_le(v: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(v.try_into().ok()?))
}

impl Store {
    /// Creates a new, empty database for Raft node `node_id`. A `founder`
    /// starts a new group on first start. Refuses a file that already exists.
    pub fn create(
        path: &Path,
        server_name: &str,
        data_key: &SecretKey,
        binding: &KeyBinding,
        node_id: u64,
        founder: bool,
    ) -> Result<(), StoreError> {
        if path.exists() {
            return Err(StoreError::Exists(path.to_owned()));
        }
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| db_err(redb::StorageError::Io(e)))?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut meta = tx.open_table(META).map_err(db_err)?;
            meta.insert("schema_version", SCHEMA_VERSION.to_le_bytes().as_slice())
                .map_err(db_err)?;
            meta.insert("server_name", server_name.as_bytes())
                .map_err(db_err)?;
            meta.insert("next_serial", 1u64.to_le_bytes().as_slice())
                .map_err(db_err)?;
            meta.insert(
                DATA_KEY_CHECK,
                data_key.seal(&[], DATA_KEY_CHECK.as_bytes()).as_slice(),
            )
            .map_err(db_err)?;
            meta.insert(OPAQUE_PUBLIC_KEY, binding.opaque_public_key.as_slice())
                .map_err(db_err)?;
            meta.insert(CLUSTER_PUBLIC_KEY, binding.cluster_public_key.as_slice())
                .map_err(db_err)?;
            tx.open_table(USERS).map_err(db_err)?;
            tx.open_table(SESSIONS).map_err(db_err)?;
            tx.open_table(VOICEMAILS).map_err(db_err)?;
            tx.open_table(GRANTS).map_err(db_err)?;
            tx.open_table(REQUESTS).map_err(db_err)?;
            tx.open_table(INVITES).map_err(db_err)?;
            tx.open_table(WAITING).map_err(db_err)?;
            tx.open_table(RAFT_LOG).map_err(db_err)?;
            let mut raft = tx.open_table(RAFT).map_err(db_err)?;
            raft.insert("node_id", node_id.to_le_bytes().as_slice())
                .map_err(db_err)?;
            if founder {
                raft.insert("founder", [1u8].as_slice()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Opens an existing database and checks its schema version and that the
    /// keys it was created with are the ones loaded.
    pub fn open(
        path: &Path,
        data_key: SecretKey,
        binding: &KeyBinding,
    ) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_owned()));
        }
        let db = Database::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        let tx = db.begin_read().map_err(db_err)?;
        let meta = tx
            .open_table(META)
            .map_err(|_| StoreError::NotVmail(path.to_owned()))?;
        let version = meta
            .get("schema_version")
            .map_err(db_err)?
            .and_then(|v| u64_le(v.value()))
            .ok_or_else(|| StoreError::NotVmail(path.to_owned()))?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::Schema {
                path: path.to_owned(),
                found: version,
            });
        }
        let stored = |key: &str| -> Result<Vec<u8>, StoreError> {
            Ok(meta
                .get(key)
                .map_err(db_err)?
                .map(|v| v.value().to_vec())
                .unwrap_or_default())
        };
        let mismatch = |file| StoreError::KeyMismatch {
            file,
            path: path.to_owned(),
        };
        if data_key
            .open(&stored(DATA_KEY_CHECK)?, DATA_KEY_CHECK.as_bytes())
            .is_err()
        {
            return Err(mismatch(files::DATA_KEY));
        }
        if stored(OPAQUE_PUBLIC_KEY)? != binding.opaque_public_key {
            return Err(mismatch(files::OPAQUE_SETUP));
        }
        if stored(CLUSTER_PUBLIC_KEY)? != binding.cluster_public_key {
            return Err(mismatch(files::CLUSTER_KEY));
        }
        drop(meta);
        drop(tx);
        Ok(Self {
            path: path.to_owned(),
            db: RwLock::new(Some(Arc::new(db))),
            data_key,
        })
    }

    /// Runs `f` on the database, reopening it first if an earlier I/O
    /// failure dropped it, and dropping it if `f` fails with one.
    pub(crate) fn run<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.handle()?;
        let result = f(&db);
        if let Err(
            StoreError::DiskFull(_) | StoreError::Db(redb::Error::Io(_) | redb::Error::PreviousIo),
        ) = &result
        {
            // Let go of the failed handle first: a reopen waits for every
            // holder of it, so holding it while waiting for the lock would stall.
            let failed = Arc::as_ptr(&db);
            drop(db);
            let mut slot = self.db.write().expect("store lock");
            if slot.as_ref().is_some_and(|cur| Arc::as_ptr(cur) == failed) {
                tracing::warn!(path = %self.path.display(), "database I/O failed; it will be reopened on next use");
                *slot = None;
            }
        }
        result
    }

    /// The open database, reopened if it was dropped after an I/O failure.
    fn handle(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.db.read().expect("store lock").as_ref() {
            return Ok(db.clone());
        }
        let mut slot = self.db.write().expect("store lock");
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        // Calls still holding the failed handle finish within milliseconds;
        // until they do, the file is locked by it.
        let deadline = Instant::now() + REOPEN_WAIT;
        let db = loop {
            match Database::open(&self.path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(redb::DatabaseError::Storage(e)) => return Err(db_err(e)),
                Err(source) => {
                    return Err(StoreError::Open {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        };
        tracing::info!(path = %self.path.display(), "database reopened");
        let db = Arc::new(db);
        *slot = Some(db.clone());
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one durable write transaction and commits it.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_with(redb::Durability::Immediate, f)
    }

    /// Runs `f` in one write transaction and commits it with `durability`.
    /// A `Durability::None` commit is atomic but reaches the disk only with
    /// the next durable commit; a crash before that loses it whole.
    pub(crate) fn write_with<T>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(|db| {
            let mut tx = db.begin_write().map_err(db_err)?;
            tx.set_durability(durability)
                .map_err(|e| StoreError::Db(e.into()))?;
            let out = f(&tx)?;
            tx.commit().map_err(db_err)?;
            Ok(out)
        })
    }

    /// This server's Raft node id, fixed when the database was created.
    pub fn node_id(&self) -> Result<u64, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let raft = tx.open_table(RAFT).map_err(db_err)?;
            raft.get("node_id")
                .map_err(db_err)?
                .and_then(|v| u64_le(v.value()))
                .ok_or_else(|| corrupt("raft", "node_id", "missing"))
        })
    }

    /// Whether this server founds its group: `serve` makes it the only member
    /// of a new group the first time it starts.
    pub fn is_founder(&self) -> Result<bool, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let raft = tx.open_table(RAFT).map_err(db_err)?;
            Ok(raft.get("founder").map_err(db_err)?.is_some())
        })
    }

    /// Every user-facing row, for a Raft snapshot (rows keep their sealing),
    /// and the raw `applied` marker read in the same transaction.
    pub(crate) fn export(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), StoreError> {
        fn rows<K: redb::Key + 'static, V: redb::Value + 'static, A, B>(
            tx: &redb::ReadTransaction,
            def: TableDefinition<K, V>,
            f: impl Fn(K::SelfType<'_>, V::SelfType<'_>) -> (A, B),
        ) -> Result<Vec<(A, B)>, StoreError> {
            let table = tx.open_table(def).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                out.push(f(k.value(), v.value()));
            }
            Ok(out)
        }
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let meta = tx.open_table(META).map_err(db_err)?;
            let next_serial = meta
                .get("next_serial")
                .map_err(db_err)?
                .and_then(|v| u64_le(v.value()))
                .ok_or_else(|| corrupt("meta", "next_serial", "missing"))?;
            let dump = Dump {
                next_serial,
                users: rows(&tx, USERS, |k, v| (k.to_owned(), v.to_vec()))?,
                sessions: rows(&tx, SESSIONS, |k, v| (k.to_vec(), v.to_vec()))?,
                voicemails: rows(&tx, VOICEMAILS, |k, v| (k.to_vec(), v.to_vec()))?,
                grants: rows(&tx, GRANTS, |(u, id), ()| (u.to_owned(), id.to_vec()))?,
                requests: rows(&tx, REQUESTS, |(u, id), v| {
                    ((u.to_owned(), id.to_vec()), v.to_vec())
                })?,
                invites: rows(&tx, INVITES, |k, v| (k.to_owned(), v.to_owned()))?,
                waiting: rows(&tx, WAITING, |k, v| (k.to_owned(), v))?,
            };
            let applied = tx
                .open_table(RAFT)
                .map_err(db_err)?
                .get("applied")
                .map_err(db_err)?
                .map(|v| v.value().to_vec());
            Ok((
                postcard::to_allocvec(&dump).expect("in-memory encoding cannot fail"),
                applied,
            ))
        })
    }

    /// Replaces every user-facing row with those of a snapshot made by
    /// [`Store::export`], inside `tx`.
    pub(crate) fn import(&self, tx: &WriteTransaction, bytes: &[u8]) -> Result<(), StoreError> {
        let dump: Dump = postcard::from_bytes(bytes).map_err(|e| corrupt("snapshot", "data", e))?;
        let mut meta = tx.open_table(META).map_err(db_err)?;
        meta.insert("next_serial", dump.next_serial.to_le_bytes().as_slice())
            .map_err(db_err)?;
        let mut t = tx.open_table(USERS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &dump.users {
            t.insert(k.as_str(), v.as_slice()).map_err(db_err)?;
        }
        let mut t = tx.open_table(SESSIONS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &dump.sessions {
            t.insert(k.as_slice(), v.as_slice()).map_err(db_err)?;
        }
        let mut t = tx.open_table(VOICEMAILS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &dump.voicemails {
            t.insert(k.as_slice(), v.as_slice()).map_err(db_err)?;
        }
        let mut t = tx.open_table(GRANTS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (u, id) in &dump.grants {
            t.insert((u.as_str(), id.as_slice()), ()).map_err(db_err)?;
        }
        let mut t = tx.open_table(REQUESTS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for ((u, id), v) in &dump.requests {
            t.insert((u.as_str(), id.as_slice()), v.as_slice())
                .map_err(db_err)?;
        }
        let mut t = tx.open_table(INVITES).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &dump.invites {
            t.insert(k.as_str(), v.as_str()).map_err(db_err)?;
        }
        let mut t = tx.open_table(WAITING).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &dump.waiting {
            t.insert(k.as_str(), *v).map_err(db_err)?;
        }
        Ok(())
    }

    /// A user by name, inside a write transaction.
    pub(crate) fn user_in(
        &self,
        tx: &WriteTransaction,
        name: &str,
    ) -> Result<Option<User>, StoreError> {
        let users = tx.open_table(USERS).map_err(db_err)?;
        match users.get(name).map_err(db_err)? {
            Some(v) => Ok(Some(self.decode_user(name, v.value())?)),
            None => Ok(None),
        }
    }

    // ---- users ----

    fn decode_user(&self, name: &str, bytes: &[u8]) -> Result<User, StoreError> {
        let row: UserRow = postcard::from_bytes(bytes).map_err(|e| corrupt("users", name, e))?;
        let password_file = self
            .data_key
            .open(
                &row.password_file_sealed,
                &aad(AAD_PASSWORD_FILE, name.as_bytes()),
            )
            .map_err(|e| corrupt("users", name, e))?;
        let certificate = decode_cert(&row.certificate).map_err(|e| corrupt("users", name, e))?;
        if certificate.username.as_str() != name {
            return Err(corrupt(
                "users",
                name,
                format!("holds {}'s certificate", certificate.username),
            ));
        }
        Ok(User {
            password_file,
            credential_nonce: row.credential_nonce,
            certificate,
            registered_at: row.registered_at,
        })
    }

    fn encode_user(&self, name: &str, user: &User) -> Vec<u8> {
        postcard::to_allocvec(&UserRow {
            password_file_sealed: self.data_key.seal(
                &user.password_file,
                &aad(AAD_PASSWORD_FILE, name.as_bytes()),
            ),
            credential_nonce: user.credential_nonce,
            certificate: pb::UserCertificate::from(user.certificate.clone()).encode_to_vec(),
            registered_at: user.registered_at,
        })
        .expect("in-memory encoding cannot fail")
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let users = tx.open_table(USERS).map_err(db_err)?;
            match users.get(name).map_err(db_err)? {
                Some(v) => Ok(Some(self.decode_user(name, v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Whether the invite code with this hash was used.
    pub fn invite_used(&self, hash: &str) -> Result<bool, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let invites = tx.open_table(INVITES).map_err(db_err)?;
            Ok(invites.get(hash).map_err(db_err)?.is_some())
        })
    }

    /// Reserves the next certificate serial number.
    fn next_serial(tx: &redb::WriteTransaction) -> Result<u64, StoreError> {
        let mut meta = tx.open_table(META).map_err(db_err)?;
        let serial = meta
            .get("next_serial")
            .map_err(db_err)?
            .and_then(|v| u64_le(v.value()))
            .ok_or_else(|| corrupt("meta", "next_serial", "missing"))?;
        meta.insert("next_serial", (serial + 1).to_le_bytes().as_slice())
            .map_err(db_err)?;
        Ok(serial)
    }

    /// Creates a user whose certificate `make_user` builds from a fresh serial.
    /// `invite_hash` marks a single-use invite code as used.
    pub(crate) fn register(
        &self,
        tx: &WriteTransaction,
        name: &str,
        invite_hash: Option<&str>,
        make_user: impl FnOnce(u64) -> User,
    ) -> Result<RegisterOutcome, StoreError> {
        {
            let mut users = tx.open_table(USERS).map_err(db_err)?;
            if users.get(name).map_err(db_err)?.is_some() {
                return Ok(RegisterOutcome::UserExists);
            }
            if let Some(h) = invite_hash {
                let mut invites = tx.open_table(INVITES).map_err(db_err)?;
                if invites.get(h).map_err(db_err)?.is_some() {
                    return Ok(RegisterOutcome::InviteUsed);
                }
                invites.insert(h, name).map_err(db_err)?;
            }
            let user = make_user(Self::next_serial(tx)?);
            users
                .insert(name, self.encode_user(name, &user).as_slice())
                .map_err(db_err)?;
        }
        Ok(RegisterOutcome::Created)
    }

    // ---- sessions ----

    /// Records a login: a new session and the user's new current
    /// certificate, built by `make_cert` from a fresh serial. A certificate
    /// for a new identity key is how a key is rotated.
    pub(crate) fn begin_session(
        &self,
        tx: &WriteTransaction,
        session: &Session,
        make_cert: impl FnOnce(u64) -> UserCertificate,
    ) -> Result<UserCertificate, StoreError> {
        let name = session.username.as_str();
        let cert;
        {
            let mut users = tx.open_table(USERS).map_err(db_err)?;
            let mut row: UserRow = match users.get(name).map_err(db_err)? {
                Some(v) => {
                    postcard::from_bytes(v.value()).map_err(|e| corrupt("users", name, e))?
                }
                None => return Err(corrupt("users", name, "vanished during login")),
            };
            cert = make_cert(Self::next_serial(tx)?);
            row.certificate = pb::UserCertificate::from(cert.clone()).encode_to_vec();
            users
                .insert(
                    name,
                    postcard::to_allocvec(&row).expect("encodes").as_slice(),
                )
                .map_err(db_err)?;
            let row = SessionRow {
                username: session.username.clone(),
                master_key_sealed: self.data_key.seal(
                    session.master_key.as_bytes(),
                    &master_key_aad(&session.token_hash, &session.username),
                ),
                master_key_id: session.master_key_id,
                created_at: session.created_at,
                expires_at: session.expires_at,
            };
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            sessions
                .insert(
                    session.token_hash.as_slice(),
                    postcard::to_allocvec(&row).expect("encodes").as_slice(),
                )
                .map_err(db_err)?;
        }
        Ok(cert)
    }

    /// A session by token hash.
    pub fn session(&self, token_hash: &[u8; 32]) -> Result<Option<Session>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            let Some(v) = sessions.get(token_hash.as_slice()).map_err(db_err)? else {
                return Ok(None);
            };
            let key = hex::encode(&token_hash[..8]);
            let row: SessionRow =
                postcard::from_bytes(v.value()).map_err(|e| corrupt("sessions", &key, e))?;
            let mk = self
                .data_key
                .open(
                    &row.master_key_sealed,
                    &master_key_aad(token_hash, &row.username),
                )
                .map_err(|e| corrupt("sessions", &key, e))?;
            let mk: [u8; 32] = mk
                .try_into()
                .map_err(|_| corrupt("sessions", &key, "master key length"))?;
            Ok(Some(Session {
                token_hash: *token_hash,
                username: row.username,
                master_key: MasterKey::from_bytes(mk),
                master_key_id: row.master_key_id,
                created_at: row.created_at,
                expires_at: row.expires_at,
            }))
        })
    }

    /// Whether the session `token_hash` exists and whose user it is, inside
    /// a write transaction: `None` if it was ended or never was, otherwise
    /// its username and expiry.
    pub(crate) fn session_in(
        &self,
        tx: &WriteTransaction,
        token_hash: &[u8; 32],
    ) -> Result<Option<(String, u64)>, StoreError> {
        let sessions = tx.open_table(SESSIONS).map_err(db_err)?;
        let Some(v) = sessions.get(token_hash.as_slice()).map_err(db_err)? else {
            return Ok(None);
        };
        let row: SessionRow = postcard::from_bytes(v.value())
            .map_err(|e| corrupt("sessions", hex::encode(&token_hash[..8]), e))?;
        Ok(Some((row.username, row.expires_at)))
    }

    /// Deletes a session and its sealed master key. Returns whether it existed.
    pub(crate) fn end_session(
        &self,
        tx: &WriteTransaction,
        token_hash: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let existed = {
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            sessions
                .remove(token_hash.as_slice())
                .map_err(db_err)?
                .is_some()
        };
        Ok(existed)
    }

    // ---- voicemails ----

    fn decode_voicemail(&self, id: &[u8], bytes: &[u8]) -> Result<Voicemail, StoreError> {
        let key = hex::encode(id);
        let row: VoicemailRow =
            postcard::from_bytes(bytes).map_err(|e| corrupt("voicemails", &key, e))?;
        let recipients =
            Recipients::parse(&row.recipients).map_err(|e| corrupt("voicemails", &key, e))?;
        let sk = self
            .data_key
            .open(
                &row.session_key_sealed,
                &session_key_aad(
                    id,
                    &row.sender_certificate,
                    row.deposited_at,
                    &recipients,
                    &row.locator,
                ),
            )
            .map_err(|e| corrupt("voicemails", &key, e))?;
        let sender_certificate =
            decode_cert(&row.sender_certificate).map_err(|e| corrupt("voicemails", &key, e))?;
        if sender_certificate.username.as_str() != row.sender {
            return Err(corrupt("voicemails", &key, "sender and certificate differ"));
        }
        Ok(Voicemail {
            id: id
                .try_into()
                .map_err(|_| corrupt("voicemails", &key, "id length"))?,
            sender: row.sender,
            sender_certificate,
            recipients,
            locator: row.locator,
            metadata: row.metadata,
            deposited_at: row.deposited_at,
            session_key: SecretKey::from_slice(&sk)
                .ok_or_else(|| corrupt("voicemails", &key, "session key length"))?,
        })
    }

    /// Stores a voicemail and a grant for each recipient, unless the request
    /// id was seen before, a recipient is unknown, or a recipient already has
    /// `max_pending` voicemails waiting.
    pub(crate) fn deposit(
        &self,
        tx: &WriteTransaction,
        request_id: &[u8],
        digest: [u8; 32],
        vm: &Voicemail,
        max_pending: u64,
    ) -> Result<DepositOutcome, StoreError> {
        {
            let mut requests = tx.open_table(REQUESTS).map_err(db_err)?;
            if let Some(v) = requests
                .get((vm.sender.as_str(), request_id))
                .map_err(db_err)?
            {
                let row: RequestRow = postcard::from_bytes(v.value())
                    .map_err(|e| corrupt("requests", hex::encode(request_id), e))?;
                return Ok(if row.digest == digest {
                    DepositOutcome::Replayed(row.voicemail_id)
                } else {
                    DepositOutcome::RequestIdReused
                });
            }
            let users = tx.open_table(USERS).map_err(db_err)?;
            for r in vm.recipients.iter() {
                if users.get(r.as_str()).map_err(db_err)?.is_none() {
                    return Ok(DepositOutcome::UnknownRecipient(r.to_string()));
                }
            }
            let mut waiting = tx.open_table(WAITING).map_err(db_err)?;
            for r in vm.recipients.iter() {
                if count(&waiting, r.as_str())? >= max_pending {
                    return Ok(DepositOutcome::InboxFull(r.to_string()));
                }
            }
            let sender_certificate =
                pb::UserCertificate::from(vm.sender_certificate.clone()).encode_to_vec();
            let row = VoicemailRow {
                sender: vm.sender.clone(),
                recipients: vm.recipients.to_strings(),
                locator: vm.locator.clone(),
                metadata: vm.metadata.clone(),
                deposited_at: vm.deposited_at,
                session_key_sealed: self.data_key.wrap(
                    &vm.session_key,
                    &session_key_aad(
                        &vm.id,
                        &sender_certificate,
                        vm.deposited_at,
                        &vm.recipients,
                        &vm.locator,
                    ),
                ),
                sender_certificate,
            };
            let mut vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            vms.insert(
                vm.id.as_slice(),
                postcard::to_allocvec(&row).expect("encodes").as_slice(),
            )
            .map_err(db_err)?;
            let mut grants = tx.open_table(GRANTS).map_err(db_err)?;
            for r in vm.recipients.iter() {
                grants
                    .insert((r.as_str(), vm.id.as_slice()), ())
                    .map_err(db_err)?;
                add(&mut waiting, r.as_str(), 1)?;
            }
            let req = RequestRow {
                voicemail_id: vm.id,
                digest,
                expires_at: vm.metadata.expires_at,
            };
            requests
                .insert(
                    (vm.sender.as_str(), request_id),
                    postcard::to_allocvec(&req).expect("encodes").as_slice(),
                )
                .map_err(db_err)?;
        }
        Ok(DepositOutcome::Stored(vm.id))
    }

    /// The voicemails pending for `recipient` that have not expired at `now`,
    /// oldest first.
    pub fn pending(&self, recipient: &str, now: u64) -> Result<Vec<Voicemail>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let grants = tx.open_table(GRANTS).map_err(db_err)?;
            let vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in grants.range((recipient, [].as_slice())..).map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                let (who, id) = k.value();
                if who != recipient {
                    break;
                }
                let Some(v) = vms.get(id).map_err(db_err)? else {
                    return Err(corrupt(
                        "grants",
                        hex::encode(id),
                        "grant without voicemail",
                    ));
                };
                let vm = self.decode_voicemail(id, v.value())?;
                check_grant(&vm, recipient)?;
                if vm.metadata.expires_at > now {
                    out.push(vm);
                }
            }
            out.sort_by_key(|v| (v.deposited_at, v.id));
            Ok(out)
        })
    }

    /// One voicemail, if it is pending for `recipient`.
    pub fn pending_one(
        &self,
        recipient: &str,
        id: &VoicemailId,
    ) -> Result<Option<Voicemail>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let grants = tx.open_table(GRANTS).map_err(db_err)?;
            if grants
                .get((recipient, id.as_slice()))
                .map_err(db_err)?
                .is_none()
            {
                return Ok(None);
            }
            let vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            match vms.get(id.as_slice()).map_err(db_err)? {
                Some(v) => {
                    let vm = self.decode_voicemail(id, v.value())?;
                    check_grant(&vm, recipient)?;
                    Ok(Some(vm))
                }
                None => Ok(None),
            }
        })
    }

    /// Whether the voicemail row (and so its session key) still exists.
    pub fn voicemail_exists(&self, id: &VoicemailId) -> Result<bool, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            Ok(vms.get(id.as_slice()).map_err(db_err)?.is_some())
        })
    }

    /// Erases `recipient`'s grant on an unexpired voicemail; erases the
    /// voicemail and its session key with the last grant.
    pub(crate) fn ack(
        &self,
        tx: &WriteTransaction,
        recipient: &str,
        id: &VoicemailId,
        now: u64,
    ) -> Result<AckOutcome, StoreError> {
        let key_erased;
        {
            let mut vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            let row = match vms.get(id.as_slice()).map_err(db_err)? {
                Some(v) => postcard::from_bytes::<VoicemailRow>(v.value())
                    .map_err(|e| corrupt("voicemails", hex::encode(id), e))?,
                None => return Ok(AckOutcome::NotPending),
            };
            // Expired voicemail is no longer pending; the sweeper erases it.
            if row.metadata.expires_at <= now {
                return Ok(AckOutcome::NotPending);
            }
            let mut grants = tx.open_table(GRANTS).map_err(db_err)?;
            if grants
                .remove((recipient, id.as_slice()))
                .map_err(db_err)?
                .is_none()
            {
                return Ok(AckOutcome::NotPending);
            }
            add(&mut tx.open_table(WAITING).map_err(db_err)?, recipient, -1)?;
            let recipients = row.recipients;
            let mut left = false;
            for r in &recipients {
                left |= grants
                    .get((r.as_str(), id.as_slice()))
                    .map_err(db_err)?
                    .is_some();
            }
            key_erased = !left;
            if key_erased {
                vms.remove(id.as_slice()).map_err(db_err)?;
            }
        }
        Ok(AckOutcome::Acked { key_erased })
    }

    /// Deletes expired sessions, voicemails (with their grants and keys) and
    /// request records. Returns how many sessions and voicemails went.
    pub(crate) fn purge_expired(
        &self,
        tx: &WriteTransaction,
        now: u64,
    ) -> Result<(usize, usize), StoreError> {
        let mut n_sessions = 0;
        let n_vms;
        {
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            // A corrupt row is reported and kept, so that it cannot stop
            // every other expired entry from being erased.
            sessions
                .retain(|k, v| match postcard::from_bytes::<SessionRow>(v) {
                    Ok(row) if row.expires_at <= now => {
                        n_sessions += 1;
                        false
                    }
                    Ok(_) => true,
                    Err(e) => {
                        let e = corrupt("sessions", hex::encode(&k[..8.min(k.len())]), e);
                        tracing::error!(error = %e, "purge skipped a corrupt row");
                        true
                    }
                })
                .map_err(db_err)?;
            let mut vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            let mut expired: Vec<(Vec<u8>, Vec<String>)> = Vec::new();
            for entry in vms.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let row: VoicemailRow = match postcard::from_bytes(v.value()) {
                    Ok(row) => row,
                    Err(e) => {
                        let e = corrupt("voicemails", hex::encode(k.value()), e);
                        tracing::error!(error = %e, "purge skipped a corrupt row");
                        continue;
                    }
                };
                if row.metadata.expires_at <= now {
                    expired.push((k.value().to_vec(), row.recipients));
                }
            }
            let mut grants = tx.open_table(GRANTS).map_err(db_err)?;
            let mut waiting = tx.open_table(WAITING).map_err(db_err)?;
            for (id, recipients) in &expired {
                vms.remove(id.as_slice()).map_err(db_err)?;
                for r in recipients {
                    if grants
                        .remove((r.as_str(), id.as_slice()))
                        .map_err(db_err)?
                        .is_some()
                    {
                        add(&mut waiting, r, -1)?;
                    }
                }
            }
            n_vms = expired.len();
            let mut requests = tx.open_table(REQUESTS).map_err(db_err)?;
            requests
                .retain(|_, v| {
                    postcard::from_bytes::<RequestRow>(v).map_or(true, |r| r.expires_at > now)
                })
                .map_err(db_err)?;
        }
        Ok((n_sessions, n_vms))
    }

    /// Counts of users, live sessions, voicemails and grants, for status and tests.
    pub fn counts(&self) -> Result<StoreCounts, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            Ok(StoreCounts {
                users: tx
                    .open_table(USERS)
                    .map_err(db_err)?
                    .len()
                    .map_err(db_err)?,
                sessions: tx
                    .open_table(SESSIONS)
                    .map_err(db_err)?
                    .len()
                    .map_err(db_err)?,
                voicemails: tx
                    .open_table(VOICEMAILS)
                    .map_err(db_err)?
                    .len()
                    .map_err(db_err)?,
                grants: tx
                    .open_table(GRANTS)
                    .map_err(db_err)?
                    .len()
                    .map_err(db_err)?,
            })
        })
    }
}

/// Row counts of the main tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreCounts {
    /// Registered users.
    pub users: u64,
    /// Stored sessions.
    pub sessions: u64,
    /// Voicemails whose session key is still held.
    pub voicemails: u64,
    /// Outstanding grants.
    pub grants: u64,
}

/// How many voicemails wait for `user`.
fn count(waiting: &impl ReadableTable<&'static str, u64>, user: &str) -> Result<u64, StoreError> {
    Ok(waiting.get(user).map_err(db_err)?.map_or(0, |v| v.value()))
}

/// Moves `user`'s waiting count by `delta`, keeping no zero rows.
fn add(
    waiting: &mut redb::Table<&'static str, u64>,
    user: &str,
    delta: i64,
) -> Result<(), StoreError> {
    let n = count(waiting, user)?.saturating_add_signed(delta);
    if n == 0 {
        waiting.remove(user).map_err(db_err)?;
    } else {
        waiting.insert(user, n).map_err(db_err)?;
    }
    Ok(())
}

/// A grant is only honoured for a recipient the sealed voicemail names.
fn check_grant(vm: &Voicemail, recipient: &str) -> Result<(), StoreError> {
    if vm.recipients.iter().any(|r| r.as_str() == recipient) {
        Ok(())
    } else {
        Err(corrupt(
            "grants",
            hex::encode(vm.id),
            format!("grant for {recipient:?}, who is not a recipient"),
        ))
    }
}

fn decode_cert(bytes: &[u8]) -> Result<UserCertificate, String> {
    let wire = pb::UserCertificate::decode(bytes).map_err(|e| e.to_string())?;
    UserCertificate::try_from(wire).map_err(|e| e.to_string())
}
