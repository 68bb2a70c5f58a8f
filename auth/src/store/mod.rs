//! The auth server's durable state in one redb database.
//!
//! Tables (keys → values; rows are postcard-encoded):
//! - `meta`: `schema_version` → u64 LE, `server_name`, `next_serial` and
//!   `next_grant_serial` → u64 LE,
//!   and the key binding: an empty blob sealed under the data key, the OPAQUE
//!   and cluster public keys, so that a swapped key file is refused at start;
//! - `users`: username → [`UserRow`];
//! - `sessions`: SHA-256(token) → [`SessionRow`];
//! - `voicemails`: voicemail id → [`VoicemailRow`];
//! - `grants`: (recipient, voicemail id) → ();
//! - `requests`: (sender, request id) → [`RequestRow`], for idempotent deposits;
//! - `invites`: SHA-256(invite code) hex → the username that used it;
//! - `waiting`: username → how many grants it holds, for the inbox cap;
//! - `storage_grants`: storage-grant serial → [`StorageGrantRecord`] (what a
//!   sender may store on holders; unrelated to `grants`);
//! - `open_grants`: (owner, serial) → upload_until, for grants no deposit
//!   used yet: the per-user grant quota;
//! - `voicemail_grants`: voicemail id → the storage grant it was deposited
//!   under;
//! - `retention`: username → the retention the user chose, seconds (no row:
//!   the group's default);
//! - `receipts`: (sender, voicemail id) → [`Receipt`], what the sender sees
//!   of it, kept a week past its expiry;
//! - `policies`: username → [`Policy`], who may leave the user voicemail
//!   (no row: the default);
//! - `senders`: username → [`Ledger`], the sender's quota use and reports;
//!   `reports`: (sender, reporter) → time of the report;
//! - `notes`: (recipient, voicemail id) → [`DeliveryNote`], kept until the
//!   voicemail expires; `first_contacts`: (recipient, sender) → the grant of
//!   the last limited first contact; `grant_admissions`: serial →
//!   [`Admission`], how each recipient took the grant;
//! - `share_keys`: (node id, epoch) → [`PublishedKey`], the share keys the
//!   servers published (never their secrets);
//! - `raft_log`: log index → a postcard-encoded openraft entry;
//! - `raft`: `vote`, `committed`, `purged`, `applied` (last applied log id
//!   and membership), `snapshot` (the latest snapshot) and `node_id`.
//!
//! - [`schema`]: the tables, the schema version and the `meta` keys;
//! - [`sealing`]: the AADs that bind each sealed secret to its row;
//! - [`users`], [`sessions`], [`voicemails`], [`storage_grants`],
//!   [`retention`], [`receipts`], [`policy`], [`senders`], [`share_keys`]: the rows of each concern and the reads and
//!   mutations on them;
//! - [`snapshot`]: every user-facing row out and back in, for Raft snapshots.
//!
//! Every change to the user-facing tables comes from applying a Raft log
//! entry ([`crate::cluster`]); the applied marker is written in the same
//! transaction, so a crash never applies an entry twice.
//!
//! Secrets (OPAQUE password files, session master keys) are sealed with
//! AES-256-GCM under the data key, with an AAD naming the table and row, so
//! a sealed value cannot be moved to another row. A voicemail's session key
//! is not here at all: only its shares, each sealed to one server's share
//! key, and an empty seal under the data key that binds the row's fields.
//! Every mutation is one durable redb transaction: it happens whole or not at all.

mod dkg;
mod key_ceremony;
mod member_keys;
mod policy;
mod recall;
mod receipts;
mod retention;
mod schema;
mod sealing;
mod senders;
mod sessions;
mod share_keys;
mod snapshot;
mod storage_grants;
mod users;
mod voicemails;

#[doc(hidden)]
pub use snapshot::reencode_snapshot;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTableMetadata, WriteTransaction};
use vmail_proto::keys::SecretKey;

use crate::keys::{BoundKey, KeyBinding};
use schema::{
    CLUSTER_PUBLIC_KEY, DATA_KEY_CHECK, DKG, FIRST_CONTACTS, GRANT_ADMISSIONS, GRANT_ROSTERS,
    GRANTS, INVITES, JOIN_APPROVALS, MEMBER_KEYS, META, NEXT_GRANT_SERIAL, NOTES,
    OPAQUE_PUBLIC_KEY, OPEN_GRANTS, POLICIES, RECEIPTS, REPORTS, REQUESTS, RESHARES, RETENTION,
    SENDERS, SESSIONS, SHARE_KEYS, STORAGE_GRANTS, USERS, VOICEMAIL_GRANTS, VOICEMAILS, WAITING,
};

pub use dkg::{
    Ceremony, CeremonyEnd, DkgOutcome, DkgStep, MAX_STEP_LEN, Reshare, SealedPackage, decode_sealed,
};
pub use key_ceremony::KeyCeremony;
pub use member_keys::{
    MemberKeyOutcome, Vouch, VouchRefusal, approval_bytes, publication_bytes, step_bytes,
};
pub use policy::{
    Accepted, Approach, EditRefusal, FirstContactRules, MAX_BLOCKED, MAX_CONTACTS, Policy,
    PolicyList, PolicyMode, Refusal, admit, edited,
};
pub use recall::{RecallGone, RecallOutcome};
pub use receipts::{DeliveryState, RECEIPT_KEEP_SECS, Receipt, RecipientReceipt};
pub use schema::SCHEMA_VERSION;
pub(crate) use schema::{RAFT, RAFT_LOG};
pub use senders::{
    Admission, Allowance, DAY, DeliveryNote, HOUR, Ledger, Quota, ReportOutcome, SenderLimits,
};
pub use sessions::{Session, token_hash};
pub use share_keys::{PublishOutcome, PublishedKey, StoredShare};
pub use storage_grants::{
    DEPOSIT_GRACE_SECS, GrantOutcome, GrantPolicy, GrantRefusal, GrantTerms, StorageGrantRecord,
};
pub use users::{RegisterOutcome, User};
pub use voicemails::{AckOutcome, DepositOutcome, PurgeCounts, Voicemail, VoicemailId};

/// How long a reopen after an I/O failure waits for the old handle to close.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

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
    /// A key is not the one the database was created with.
    #[error(
        "the {key} does not belong to database {path}: it was replaced or comes from another server"
    )]
    KeyMismatch {
        /// Which key.
        key: BoundKey,
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

/// Creates, empty, the tables added within schema version 3 that a database
/// made before them lacks (`retention`, `receipts` and the spam-control
/// tables of [`policy`] and [`senders`]), so that every read
/// finds them. One durable transaction, and only when one is missing.
fn add_missing_tables(db: &Database) -> Result<(), StoreError> {
    fn exists<K: redb::Key + 'static, V: redb::Value + 'static>(
        tx: &redb::ReadTransaction,
        def: redb::TableDefinition<K, V>,
    ) -> Result<bool, StoreError> {
        match tx.open_table(def) {
            Ok(_) => Ok(true),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(db_err(e)),
        }
    }
    let tx = db.begin_read().map_err(db_err)?;
    let missing = !exists(&tx, RETENTION)?
        || !exists(&tx, RECEIPTS)?
        || !exists(&tx, POLICIES)?
        || !exists(&tx, SENDERS)?
        || !exists(&tx, REPORTS)?
        || !exists(&tx, NOTES)?
        || !exists(&tx, FIRST_CONTACTS)?
        || !exists(&tx, GRANT_ADMISSIONS)?
        || !exists(&tx, SHARE_KEYS)?
        || !exists(&tx, DKG)?
        || !exists(&tx, RESHARES)?
        || !exists(&tx, GRANT_ROSTERS)?
        || !exists(&tx, MEMBER_KEYS)?
        || !exists(&tx, JOIN_APPROVALS)?;
    drop(tx);
    if !missing {
        return Ok(());
    }
    let tx = db.begin_write().map_err(db_err)?;
    create_added_tables(&tx)?;
    tx.commit().map_err(db_err)
}

/// Opens (creating when missing) the tables added within schema version 3.
fn create_added_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(RETENTION).map_err(db_err)?;
    tx.open_table(RECEIPTS).map_err(db_err)?;
    tx.open_table(POLICIES).map_err(db_err)?;
    tx.open_table(SENDERS).map_err(db_err)?;
    tx.open_table(REPORTS).map_err(db_err)?;
    tx.open_table(NOTES).map_err(db_err)?;
    tx.open_table(FIRST_CONTACTS).map_err(db_err)?;
    tx.open_table(GRANT_ADMISSIONS).map_err(db_err)?;
    tx.open_table(SHARE_KEYS).map_err(db_err)?;
    tx.open_table(DKG).map_err(db_err)?;
    tx.open_table(RESHARES).map_err(db_err)?;
    tx.open_table(GRANT_ROSTERS).map_err(db_err)?;
    tx.open_table(MEMBER_KEYS).map_err(db_err)?;
    tx.open_table(JOIN_APPROVALS).map_err(db_err)?;
    Ok(())
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
            meta.insert(NEXT_GRANT_SERIAL, 1u64.to_le_bytes().as_slice())
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
            tx.open_table(STORAGE_GRANTS).map_err(db_err)?;
            tx.open_table(OPEN_GRANTS).map_err(db_err)?;
            tx.open_table(VOICEMAIL_GRANTS).map_err(db_err)?;
            create_added_tables(&tx)?;
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
        let mismatch = |key| StoreError::KeyMismatch {
            key,
            path: path.to_owned(),
        };
        if data_key
            .open(&stored(DATA_KEY_CHECK)?, DATA_KEY_CHECK.as_bytes())
            .is_err()
        {
            return Err(mismatch(BoundKey::DataKey));
        }
        if stored(OPAQUE_PUBLIC_KEY)? != binding.opaque_public_key {
            return Err(mismatch(BoundKey::OpaqueSetup));
        }
        if stored(CLUSTER_PUBLIC_KEY)? != binding.cluster_public_key {
            return Err(mismatch(BoundKey::ClusterKey));
        }
        drop(meta);
        drop(tx);
        add_missing_tables(&db)?;
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

    /// Runs `f` in one write transaction and throws its changes away: what
    /// a change would do, without doing it.
    pub(crate) fn dry_run<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(|db| {
            let tx = db.begin_write().map_err(db_err)?;
            let out = f(&tx)?;
            tx.abort().map_err(db_err)?;
            Ok(out)
        })
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
}

impl Store {
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
    /// Voicemails whose shares are still held.
    pub voicemails: u64,
    /// Outstanding grants.
    pub grants: u64,
}

#[cfg(test)]
mod tests;
