//! The holder's object store: opaque ciphertexts on disk, under a quota,
//! admitted only under a storage grant, and deleted on a delete order.
//!
//! One file per object in `DIR/objects/` and one per deleted grant in
//! `DIR/objects/tombstones/` ([`format`]). A write goes to a temporary file
//! that is fsynced, renamed into place, and the directory fsynced, so a
//! crash leaves either the whole object or nothing. The store never sees a
//! key: it holds ciphertext only.
//!
//! Every object is charged its body (at least [`MIN_CHARGE`]) plus its
//! header (meta, layout and grant) against the quota, and at most
//! `max_objects` are held. What the grant check ([`admit`]) refuses, and
//! every other refusal, is counted by reason.

mod admit;
mod format;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmail_proto::grant::{DeleteOrder, DepositProof, GrantError, PROOF_GRACE_SECS, StorageGrant};

use crate::core::locator::{Layout, ObjectId};
use format::{decode_tombstone, encode_tombstone, header, parse_name, parse_serial, read_meta};

pub use admit::{HolderPolicy, admit, covers};
pub use format::Tombstone;

/// The least an object is charged against the quota, however small.
pub const MIN_CHARGE: u64 = 4096;

/// What a holder knows about an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Length of the object (a shard or a whole ciphertext).
    pub len: u64,
    /// SHA-256 of the object, as the sender announced and the holder checked.
    pub sha256: [u8; 32],
    /// Unix seconds after which the holder drops the object: the grant's
    /// expiry.
    pub expires_at: u64,
    /// SHA-256 of the secret that lets the sender withdraw the object.
    pub delete_hash: [u8; 32],
    /// Which shard of which layout this is, so the holder can check and
    /// repair its siblings. None for objects stored before shards existed.
    pub shard: Option<ShardOf>,
    /// The storage grant it was stored under, in its one encoding; empty
    /// for objects stored before grants.
    pub grant: Vec<u8>,
    /// The group's deposit proof for the grant, in its one encoding, once
    /// the holder has one; empty before. A holder drops a granted object
    /// whose grant no proof reached within [`PROOF_GRACE_SECS`] after its
    /// upload window.
    pub proof: Vec<u8>,
}

/// A stored object's place in its voicemail's layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOf {
    /// This object's index in `layout.shards`.
    pub index: u8,
    /// All the voicemail's shards.
    pub layout: Layout,
}

impl ObjectMeta {
    /// Whether the shard part agrees with the rest for the object stored
    /// under `id`: the layout is valid, and its entry at `index` names this
    /// identifier, length and hash.
    pub fn consistent(&self, id: &ObjectId) -> bool {
        self.shard.as_ref().is_none_or(|s| {
            s.layout.validate().is_ok()
                && s.layout.shard_len() == self.len
                && s.layout
                    .shards
                    .get(usize::from(s.index))
                    .is_some_and(|r| r.id == *id && r.sha256 == self.sha256)
        })
    }

    /// What the object costs against the quota: its body, at least
    /// [`MIN_CHARGE`], plus its header.
    pub fn charge(&self) -> u64 {
        self.len.max(MIN_CHARGE) + header(self).len() as u64
    }
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    /// The object is larger than this holder takes.
    #[error("object of {len} bytes is larger than this holder's limit of {max} bytes")]
    TooLarge {
        /// Offered size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Storing it would exceed the quota.
    #[error("holder quota full: {used} of {quota} bytes used, {len} more requested")]
    QuotaFull {
        /// Bytes stored or reserved.
        used: u64,
        /// The quota.
        quota: u64,
        /// Bytes it would be charged.
        len: u64,
    },
    /// The holder holds as many objects as it takes.
    #[error("holder full: it holds its limit of {max} objects")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// The disk ran out of space while writing.
    #[error("the holder's disk is full")]
    DiskFull,
    /// The identifier is taken by different content.
    #[error("identifier already holds different content")]
    Conflict,
    /// The content does not match its announced hash.
    #[error("content does not match its announced SHA-256")]
    HashMismatch,
    /// The shard layout sent with the object contradicts it.
    #[error("the shard layout does not match the object (identifier, index, length or hash)")]
    BadLayout,
    /// No object is held under the identifier.
    #[error("no such object here")]
    NotHeld,
    /// The secret is not the preimage of the object's delete hash.
    #[error("wrong delete secret")]
    WrongSecret,
    /// A zero-length object.
    #[error("zero-length objects are not stored")]
    Empty,
    /// No grant came with the object.
    #[error(
        "no storage grant: holders store only what the auth group granted; upgrade the sender's vmail"
    )]
    NoGrant,
    /// This holder cannot check grants.
    #[error(
        "this holder has no cluster key, so it cannot check grants and stores nothing: set cluster_key in its node.toml"
    )]
    NoClusterKey,
    /// The grant or delete order is malformed, foreign or forged.
    #[error(transparent)]
    BadGrant(#[from] GrantError),
    /// The grant has expired.
    #[error("storage grant {serial} expired at Unix time {expires_at}")]
    GrantExpired {
        /// The grant's serial.
        serial: u64,
        /// Its expiry.
        expires_at: u64,
    },
    /// The grant asks to keep the object longer than this holder does.
    #[error(
        "the grant keeps the object until Unix time {expires_at}, past this holder's cap of {cap}"
    )]
    ExpiryTooFar {
        /// The grant's expiry.
        expires_at: u64,
        /// The latest this holder keeps anything.
        cap: u64,
    },
    /// The grant is for other holders.
    #[error("storage grant {serial} does not name this holder")]
    NotNamed {
        /// The grant's serial.
        serial: u64,
    },
    /// The object is not one the grant covers.
    #[error(
        "storage grant {serial} does not cover this shard (its layout, length or hash differs)"
    )]
    NotCovered {
        /// The grant's serial.
        serial: u64,
    },
    /// The grant's shard is held here already under another identifier.
    #[error("storage grant {serial} was used already for this shard under another identifier")]
    GrantReused {
        /// The grant's serial.
        serial: u64,
    },
    /// The grant's voicemail was deleted; the order says why.
    #[error("storage grant {serial}'s voicemail was deleted ({reason})")]
    Deleted {
        /// The grant's serial.
        serial: u64,
        /// Why it was deleted.
        reason: vmail_proto::grant::DeleteReason,
        /// The delete order, in its one encoding, for the asker to check.
        order: Vec<u8>,
    },
    /// Some other IO failure.
    #[error("object store IO error at {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
}

impl ObjectStoreError {
    /// A short name for counting refusals by reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too-large",
            Self::QuotaFull { .. } => "quota-full",
            Self::TooMany { .. } => "too-many-objects",
            Self::DiskFull => "disk-full",
            Self::Conflict => "conflict",
            Self::HashMismatch => "hash-mismatch",
            Self::BadLayout => "bad-layout",
            Self::NotHeld => "not-held",
            Self::WrongSecret => "wrong-secret",
            Self::Empty => "empty",
            Self::NoGrant => "no-grant",
            Self::NoClusterKey => "no-cluster-key",
            Self::BadGrant(_) => "bad-signature",
            Self::GrantExpired { .. } => "grant-expired",
            Self::ExpiryTooFar { .. } => "expiry-too-far",
            Self::NotNamed { .. } => "not-named",
            Self::NotCovered { .. } => "not-covered",
            Self::GrantReused { .. } => "grant-reused",
            Self::Deleted { .. } => "deleted",
            Self::Io { .. } => "io",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ObjectStoreError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::StorageFull {
            ObjectStoreError::DiskFull
        } else {
            ObjectStoreError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// One held object.
#[derive(Debug, Clone)]
struct Held {
    meta: ObjectMeta,
    /// Its grant's serial and upload window's end; None for objects stored
    /// before grants.
    grant: Option<(u64, u64)>,
    /// What it is charged against the quota.
    charge: u64,
}

impl Held {
    fn serial(&self) -> Option<u64> {
        self.grant.map(|(serial, _)| serial)
    }
}

/// A deleted grant: when its tombstone may go, and what it records.
#[derive(Debug, Clone)]
struct Grave {
    expires_at: u64,
    tombstone: Tombstone,
}

#[derive(Debug, Default)]
struct State {
    index: HashMap<ObjectId, Held>,
    /// Bytes charged for committed objects.
    used: u64,
    /// Bytes promised to uploads in flight.
    reserved: u64,
    /// Objects promised to uploads in flight.
    reserved_objects: usize,
    /// Deleted grants, by serial.
    graves: HashMap<u64, Grave>,
    /// Identifiers deleted here, and their grant's serial.
    gone: HashMap<ObjectId, u64>,
    /// Deposit proofs, by grant serial.
    proofs: HashMap<u64, Vec<u8>>,
    /// Refusals, by reason.
    refusals: BTreeMap<&'static str, u64>,
}

impl State {
    fn insert(&mut self, id: ObjectId, mut meta: ObjectMeta) {
        // The proof is kept per grant, not per object.
        meta.proof.clear();
        let held = Held {
            grant: grant_of(&meta),
            charge: meta.charge(),
            meta,
        };
        self.used += held.charge;
        if let Some(old) = self.index.insert(id, held) {
            self.used -= old.charge;
        }
    }

    fn bury(&mut self, serial: u64, grave: Grave) {
        for id in &grave.tombstone.ids {
            self.gone.insert(*id, serial);
        }
        self.graves.insert(serial, grave);
    }

    fn deleted(&self, serial: u64) -> Option<ObjectStoreError> {
        let grave = self.graves.get(&serial)?;
        let reason = DeleteOrder::from_bytes(&grave.tombstone.order)
            .map(|o| o.reason)
            .ok()?;
        Some(ObjectStoreError::Deleted {
            serial,
            reason,
            order: grave.tombstone.order.clone(),
        })
    }
}

/// The serial and upload window's end of the grant in `meta`, if it
/// carries a readable one.
fn grant_of(meta: &ObjectMeta) -> Option<(u64, u64)> {
    (!meta.grant.is_empty())
        .then(|| StorageGrant::from_bytes(&meta.grant).ok())
        .flatten()
        .map(|g| (g.body.serial, g.body.upload_until))
}

/// A holder's objects. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    dir: PathBuf,
    policy: Arc<HolderPolicy>,
    state: Arc<Mutex<State>>,
}

/// Room promised to one upload; released when dropped uncommitted.
#[derive(Debug)]
pub struct Reservation {
    state: Arc<Mutex<State>>,
    charge: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut s = self.state.lock().expect("store lock");
        s.reserved -= self.charge;
        s.reserved_objects -= 1;
    }
}

/// What opening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// Objects loaded.
    pub objects: usize,
    /// Unreadable files moved to `objects/corrupt/`.
    pub quarantined: usize,
    /// Objects stored before grants, now kept at most the retention cap.
    pub legacy: usize,
}

/// What a holder reports about its store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HolderStats {
    /// Objects held.
    pub objects: usize,
    /// Bytes charged for them (bodies, headers, minimums).
    pub bytes: u64,
    /// Deleted grants remembered.
    pub tombstones: usize,
    /// Refusals since start, by reason.
    pub refusals: BTreeMap<&'static str, u64>,
}

/// Whether a store needs its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// The same object is held already.
    Held,
    /// Send it.
    New,
}

impl ObjectStore {
    /// Opens (creating if needed) the store in `dir`. Leftover temporary
    /// files are removed; files that do not parse are moved aside to
    /// `corrupt/`, never deleted. Objects stored before grants are kept at
    /// most `policy.max_retention_secs` from now.
    pub fn open(dir: &Path, policy: HolderPolicy) -> Result<(Self, OpenReport), ObjectStoreError> {
        let dir = dir.join("objects");
        let graves_dir = dir.join("tombstones");
        std::fs::create_dir_all(&graves_dir).map_err(io_err(&graves_dir))?;
        let proofs_dir = dir.join("proofs");
        std::fs::create_dir_all(&proofs_dir).map_err(io_err(&proofs_dir))?;
        let now = vmail_proto::unix_now();
        let legacy_cap = now.saturating_add(policy.max_retention_secs);
        let mut state = State::default();
        let mut report = OpenReport {
            objects: 0,
            quarantined: 0,
            legacy: 0,
        };
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type().map_err(io_err(&path))?.is_file() {
                continue;
            }
            if name.ends_with(".tmp") {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let parsed = parse_name(&name)
                .and_then(|id| Some((id, read_meta(&path).filter(|m| m.consistent(&id))?)));
            match parsed {
                Some((id, mut meta)) => {
                    if meta.grant.is_empty() {
                        meta.expires_at = meta.expires_at.min(legacy_cap);
                        report.legacy += 1;
                    }
                    state.insert(id, meta);
                    report.objects += 1;
                }
                None => {
                    quarantine(&dir, &path, &name)?;
                    report.quarantined += 1;
                }
            }
        }
        for entry in std::fs::read_dir(&graves_dir).map_err(io_err(&graves_dir))? {
            let entry = entry.map_err(io_err(&graves_dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let grave = std::fs::read(&path).ok().and_then(|b| {
                let tombstone = decode_tombstone(&b)?;
                let order = DeleteOrder::from_bytes(&tombstone.order).ok()?;
                Some((
                    order.serial,
                    Grave {
                        expires_at: order.expires_at,
                        tombstone,
                    },
                ))
            });
            match grave {
                Some((serial, grave)) if parse_serial(&name) == Some(serial) => {
                    state.bury(serial, grave)
                }
                _ => {
                    quarantine(&dir, &path, &name)?;
                    report.quarantined += 1;
                }
            }
        }
        for entry in std::fs::read_dir(&proofs_dir).map_err(io_err(&proofs_dir))? {
            let entry = entry.map_err(io_err(&proofs_dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let proof = std::fs::read(&path)
                .ok()
                .and_then(|b| Some((DepositProof::from_bytes(&b).ok()?.serial, b)));
            match proof {
                Some((serial, bytes)) if parse_serial(&name) == Some(serial) => {
                    state.proofs.insert(serial, bytes);
                }
                _ => {
                    quarantine(&dir, &path, &name)?;
                    report.quarantined += 1;
                }
            }
        }
        Ok((
            Self {
                dir,
                policy: Arc::new(policy),
                state: Arc::new(Mutex::new(state)),
            },
            report,
        ))
    }

    fn path(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(hex::encode(id))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("store lock")
    }

    /// The largest object this holder takes.
    pub fn max_object(&self) -> u64 {
        self.policy.max_object
    }

    /// The quota in bytes.
    pub fn quota(&self) -> u64 {
        self.policy.quota
    }

    /// The meta of a held object, with its grant's deposit proof if the
    /// holder has one.
    pub fn get(&self, id: &ObjectId) -> Option<ObjectMeta> {
        let s = self.lock();
        s.index.get(id).map(|h| with_proof(&s, h))
    }

    /// Every held object, as [`ObjectStore::get`] gives it.
    pub fn list(&self) -> Vec<(ObjectId, ObjectMeta)> {
        let s = self.lock();
        s.index
            .iter()
            .map(|(k, h)| (*k, with_proof(&s, h)))
            .collect()
    }

    /// Objects held and the bytes charged for them.
    pub fn usage(&self) -> (usize, u64) {
        let s = self.lock();
        (s.index.len(), s.used)
    }

    /// Objects, bytes, tombstones and refusals.
    pub fn stats(&self) -> HolderStats {
        let s = self.lock();
        HolderStats {
            objects: s.index.len(),
            bytes: s.used,
            tombstones: s.graves.len(),
            refusals: s.refusals.clone(),
        }
    }

    /// Counts `result`'s refusal, if it is one, by its reason.
    fn counted<T>(&self, result: Result<T, ObjectStoreError>) -> Result<T, ObjectStoreError> {
        if let Err(e) = &result {
            *self.lock().refusals.entry(e.reason()).or_default() += 1;
        }
        result
    }

    /// If `id` was deleted here, why: the [`ObjectStoreError::Deleted`]
    /// that carries the delete order.
    pub fn deleted(&self, id: &ObjectId) -> Option<ObjectStoreError> {
        let s = self.lock();
        let serial = *s.gone.get(id)?;
        s.deleted(serial)
    }

    /// Checks a store of `id` at `now` against its grant, a tombstone and
    /// what is held, and sets `meta`'s expiry to the grant's. Whether the
    /// body is needed, or why the store is refused (and counted).
    pub fn admit(
        &self,
        id: &ObjectId,
        meta: &mut ObjectMeta,
        now: u64,
    ) -> Result<Admitted, ObjectStoreError> {
        self.counted(self.check(id, meta, now))
    }

    fn check(
        &self,
        id: &ObjectId,
        meta: &mut ObjectMeta,
        now: u64,
    ) -> Result<Admitted, ObjectStoreError> {
        if !meta.consistent(id) {
            return Err(ObjectStoreError::BadLayout);
        }
        let grant = admit(meta, &self.policy, now)?;
        meta.expires_at = grant.body.expires_at;
        if !meta.proof.is_empty() {
            self.check_proof(&meta.proof, grant.body.serial)?;
        }
        let s = self.lock();
        let serial = grant.body.serial;
        if let Some(e) = s.deleted(serial) {
            return Err(e);
        }
        // One grant, one object per shard: the same shard under another
        // identifier is a grant used twice.
        let index = meta.shard.as_ref().map(|x| x.index);
        if s.index.iter().any(|(other, h)| {
            other != id
                && h.serial() == Some(serial)
                && h.meta.shard.as_ref().map(|x| x.index) == index
        }) {
            return Err(ObjectStoreError::GrantReused { serial });
        }
        Ok(match s.index.get(id) {
            Some(old)
                if old.meta.len == meta.len
                    && old.meta.sha256 == meta.sha256
                    && old.meta.delete_hash == meta.delete_hash =>
            {
                Admitted::Held
            }
            _ => Admitted::New,
        })
    }

    /// Promises room for an object with `meta`, or says (and counts) why not.
    pub fn reserve(&self, meta: &ObjectMeta) -> Result<Reservation, ObjectStoreError> {
        self.counted(self.make_room(meta))
    }

    fn make_room(&self, meta: &ObjectMeta) -> Result<Reservation, ObjectStoreError> {
        if meta.len > self.policy.max_object {
            return Err(ObjectStoreError::TooLarge {
                len: meta.len,
                max: self.policy.max_object,
            });
        }
        let charge = meta.charge();
        let mut s = self.lock();
        if s.index.len() + s.reserved_objects >= self.policy.max_objects {
            return Err(ObjectStoreError::TooMany {
                max: self.policy.max_objects,
            });
        }
        let used = s.used + s.reserved;
        if used.saturating_add(charge) > self.policy.quota {
            return Err(ObjectStoreError::QuotaFull {
                used,
                quota: self.policy.quota,
                len: charge,
            });
        }
        s.reserved += charge;
        s.reserved_objects += 1;
        Ok(Reservation {
            state: self.state.clone(),
            charge,
        })
    }

    /// Checks `data` against `meta` and writes it durably under `id`.
    /// Storing the same content twice is a no-op; different content under a
    /// taken identifier is refused (and counted). Blocking: call from a
    /// blocking context.
    pub fn commit(
        &self,
        reservation: Reservation,
        id: &ObjectId,
        meta: ObjectMeta,
        data: &[u8],
    ) -> Result<(), ObjectStoreError> {
        self.counted(self.write_new(reservation, id, meta, data))
    }

    fn write_new(
        &self,
        reservation: Reservation,
        id: &ObjectId,
        mut meta: ObjectMeta,
        data: &[u8],
    ) -> Result<(), ObjectStoreError> {
        if data.len() as u64 != meta.len || <[u8; 32]>::from(Sha256::digest(data)) != meta.sha256 {
            return Err(ObjectStoreError::HashMismatch);
        }
        if !meta.consistent(id) {
            return Err(ObjectStoreError::BadLayout);
        }
        if let Some(old) = self.get(id) {
            return if old.sha256 == meta.sha256 {
                Ok(())
            } else {
                Err(ObjectStoreError::Conflict)
            };
        }
        // The proof is kept per grant, in a file of its own.
        let proof = std::mem::take(&mut meta.proof);
        self.write(id, &meta, data)?;
        if let Some((serial, _)) = grant_of(&meta)
            && !proof.is_empty()
        {
            self.keep_proof(serial, &proof)?;
        }
        self.lock().insert(*id, meta);
        drop(reservation);
        Ok(())
    }

    /// Checks a deposit proof in its one encoding against the cluster key
    /// and the grant `serial` it should prove.
    fn check_proof(&self, bytes: &[u8], serial: u64) -> Result<(), ObjectStoreError> {
        let key = self
            .policy
            .cluster_key
            .as_ref()
            .ok_or(ObjectStoreError::NoClusterKey)?;
        let proof = DepositProof::from_bytes(bytes)?;
        proof.verify(key)?;
        if proof.serial != serial {
            return Err(ObjectStoreError::NotCovered { serial });
        }
        Ok(())
    }

    /// Writes a checked proof for grant `serial` durably, once.
    fn keep_proof(&self, serial: u64, bytes: &[u8]) -> Result<(), ObjectStoreError> {
        if self.lock().proofs.contains_key(&serial) {
            return Ok(());
        }
        let proofs = self.dir.join("proofs");
        write_durably(&proofs, &proofs.join(format!("{serial:016x}")), bytes)?;
        self.lock().proofs.insert(serial, bytes.to_vec());
        Ok(())
    }

    /// Takes the group's deposit proof (its one encoding) for objects held
    /// here: checked against the cluster key and kept, so they are no
    /// longer dropped as never deposited. Returns how many objects it
    /// covers; a refusal is counted. Blocking.
    pub fn prove(&self, proof: &[u8]) -> Result<usize, ObjectStoreError> {
        self.counted(self.take_proof(proof))
    }

    fn take_proof(&self, bytes: &[u8]) -> Result<usize, ObjectStoreError> {
        let serial = DepositProof::from_bytes(bytes)?.serial;
        self.check_proof(bytes, serial)?;
        let held = self
            .lock()
            .index
            .values()
            .filter(|h| h.serial() == Some(serial))
            .count();
        if held == 0 {
            return Err(ObjectStoreError::NotHeld);
        }
        self.keep_proof(serial, bytes)?;
        Ok(held)
    }

    /// Granted objects whose grant no deposit proved: their upload window
    /// ended more than [`PROOF_GRACE_SECS`] before `now` and no proof came.
    pub fn unproven(&self, now: u64) -> Vec<ObjectId> {
        let s = self.lock();
        s.index
            .iter()
            .filter(|(_, h)| {
                h.grant.is_some_and(|(serial, upload_until)| {
                    upload_until.saturating_add(PROOF_GRACE_SECS) < now
                        && !s.proofs.contains_key(&serial)
                })
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Drops the proofs of grants of which nothing is held any more.
    /// Blocking.
    pub fn purge_proofs(&self) -> Result<usize, ObjectStoreError> {
        let old: Vec<u64> = {
            let s = self.lock();
            let live: std::collections::HashSet<u64> =
                s.index.values().filter_map(Held::serial).collect();
            s.proofs
                .keys()
                .filter(|serial| !live.contains(serial))
                .copied()
                .collect()
        };
        for serial in &old {
            let path = self.dir.join("proofs").join(format!("{serial:016x}"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
            self.lock().proofs.remove(serial);
        }
        Ok(old.len())
    }

    /// Writes the file for `id` durably: temporary file, fsync, rename,
    /// directory fsync.
    fn write(&self, id: &ObjectId, meta: &ObjectMeta, data: &[u8]) -> Result<(), ObjectStoreError> {
        let mut bytes = header(meta);
        bytes.extend_from_slice(data);
        write_durably(&self.dir, &self.path(id), &bytes)
    }

    /// Replaces the layout of a held object, when the sender's final layout
    /// differs from the draft the object came with. Only the sender may:
    /// `secret` must be the preimage of the object's delete hash, and the
    /// new layout must still be the one its grant covers. Blocking.
    pub fn set_shard(
        &self,
        id: &ObjectId,
        secret: &[u8; 32],
        shard: ShardOf,
    ) -> Result<(), ObjectStoreError> {
        let Some(mut meta) = self.get(id) else {
            return Err(ObjectStoreError::NotHeld);
        };
        if <[u8; 32]>::from(Sha256::digest(secret)) != meta.delete_hash {
            return Err(ObjectStoreError::WrongSecret);
        }
        if meta.shard.as_ref() == Some(&shard) {
            return Ok(());
        }
        if let Ok(grant) = StorageGrant::from_bytes(&meta.grant)
            && !covers(&grant, &shard.layout)
        {
            return Err(ObjectStoreError::NotCovered {
                serial: grant.body.serial,
            });
        }
        meta.shard = Some(shard);
        if !meta.consistent(id) {
            return Err(ObjectStoreError::BadLayout);
        }
        let data = self.read(id)?.unwrap_or_default();
        self.write(id, &meta, &data)?;
        self.lock().insert(*id, meta);
        Ok(())
    }

    /// The ciphertext of a held object, as stored. Blocking.
    pub fn read(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, ObjectStoreError> {
        if self.get(id).is_none() {
            return Ok(None);
        }
        let path = self.path(id);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let start = format::body_offset(&bytes).ok_or_else(|| ObjectStoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "bad object header"),
        })?;
        Ok(Some(bytes[start..].to_vec()))
    }

    /// [`ObjectStore::read`] on a blocking thread, for async callers.
    pub async fn read_async(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, ObjectStoreError> {
        let (store, id) = (self.clone(), *id);
        tokio::task::spawn_blocking(move || store.read(&id))
            .await
            .unwrap_or_else(|e| {
                Err(ObjectStoreError::Io {
                    path: self.dir.clone(),
                    source: std::io::Error::other(e),
                })
            })
    }

    /// Drops an object. Returns whether it was held. Blocking.
    pub fn remove(&self, id: &ObjectId) -> Result<bool, ObjectStoreError> {
        let Some(held) = self.lock().index.remove(id) else {
            return Ok(false);
        };
        let path = self.path(id);
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        self.lock().used -= held.charge;
        Ok(true)
    }

    /// Carries out a delete order (its one encoding): checks it against
    /// the cluster key, removes every object of its grant, and keeps a
    /// tombstone until the grant's expiry so none of them is stored or
    /// repaired back. Returns the identifiers removed; an order seen before
    /// removes nothing and succeeds. A refusal is counted. Blocking.
    pub fn erase(&self, order: &[u8]) -> Result<Vec<ObjectId>, ObjectStoreError> {
        self.counted(self.carry_out(order))
    }

    fn carry_out(&self, order: &[u8]) -> Result<Vec<ObjectId>, ObjectStoreError> {
        let key = self
            .policy
            .cluster_key
            .as_ref()
            .ok_or(ObjectStoreError::NoClusterKey)?;
        let parsed = DeleteOrder::from_bytes(order)?;
        parsed.verify(key)?;
        let serial = parsed.serial;
        let ids: Vec<ObjectId> = {
            let s = self.lock();
            if s.graves.contains_key(&serial) {
                return Ok(Vec::new());
            }
            s.index
                .iter()
                .filter(|(_, h)| h.serial() == Some(serial))
                .map(|(id, _)| *id)
                .collect()
        };
        if ids.is_empty() {
            return Err(ObjectStoreError::NotHeld);
        }
        let tombstone = Tombstone {
            order: order.to_vec(),
            ids: ids.clone(),
        };
        let graves = self.dir.join("tombstones");
        write_durably(
            &graves,
            &graves.join(format!("{serial:016x}")),
            &encode_tombstone(&tombstone),
        )?;
        self.lock().bury(
            serial,
            Grave {
                expires_at: parsed.expires_at,
                tombstone,
            },
        );
        for id in &ids {
            self.remove(id)?;
        }
        Ok(ids)
    }

    /// Objects whose expiry has passed.
    pub fn expired(&self, now: u64) -> Vec<ObjectId> {
        let s = self.lock();
        s.index
            .iter()
            .filter(|(_, h)| h.meta.expires_at <= now)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Drops the tombstones whose grant has expired: nothing they guard
    /// against can be stored any more. Returns how many. Blocking.
    pub fn purge_tombstones(&self, now: u64) -> Result<usize, ObjectStoreError> {
        let old: Vec<u64> = {
            let s = self.lock();
            s.graves
                .iter()
                .filter(|(_, g)| g.expires_at <= now)
                .map(|(serial, _)| *serial)
                .collect()
        };
        for serial in &old {
            let path = self.dir.join("tombstones").join(format!("{serial:016x}"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
            let mut s = self.lock();
            if let Some(g) = s.graves.remove(serial) {
                for id in g.tombstone.ids {
                    s.gone.remove(&id);
                }
            }
        }
        Ok(old.len())
    }
}

/// `h`'s meta with its grant's proof, if `s` has one.
fn with_proof(s: &State, h: &Held) -> ObjectMeta {
    let mut meta = h.meta.clone();
    if let Some(proof) = h.serial().and_then(|serial| s.proofs.get(&serial)) {
        meta.proof = proof.clone();
    }
    meta
}

/// Moves an unreadable file to `objects/corrupt/`.
fn quarantine(dir: &Path, path: &Path, name: &str) -> Result<(), ObjectStoreError> {
    let corrupt = dir.join("corrupt");
    std::fs::create_dir_all(&corrupt).map_err(io_err(&corrupt))?;
    std::fs::rename(path, corrupt.join(name)).map_err(io_err(path))?;
    tracing::warn!(file = %path.display(), "unreadable file moved to objects/corrupt/");
    Ok(())
}

/// Writes `bytes` to `path` in `dir` durably: temporary file, fsync,
/// rename, directory fsync. A failed write leaves nothing behind.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ObjectStoreError> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests;
