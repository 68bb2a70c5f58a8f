//! The holder's object store: opaque ciphertexts on disk, under a quota,
//! admitted only under a storage grant, and deleted on a delete order.
//!
//! One file per object in `DIR/objects/`, one per deleted grant in
//! `DIR/objects/tombstones/` and one per deposit proof in
//! `DIR/objects/proofs/` ([`format`]); proofs and delete orders are
//! [`lifecycle`]'s, refusals [`error`]'s. A write goes to a temporary file
//! that is fsynced, renamed into place, and the directory fsynced, so a
//! crash leaves either the whole object or nothing. The store never sees a
//! key: it holds ciphertext only.
//!
//! Every change to one identifier (commit, relayout, remove) and every read
//! runs under that identifier's lock (one of [`ID_LOCKS`], chosen by the
//! identifier), across its check, its file write and its index update, so
//! the index and the disk agree and an object is charged once. A read
//! checks the file's header against the index and rebuilds the entry from
//! disk if they disagree. A sender may relayout an object at most
//! [`MAX_RELAYOUTS`] times: each rewrites the whole file.
//!
//! Every object is charged its body (at least [`MIN_CHARGE`]) plus its
//! header (meta, layout and grant) against the quota, and at most
//! `max_objects` are held. What the grant check ([`admit`]) refuses, and
//! every other refusal, is counted by reason.
//!
//! Over 600 lines since issue 17 added its bounds here; the split by concern
//! (bounds apart from the protocol or store they guard) is owed, not done.

mod admit;
mod error;
mod format;
mod lifecycle;
mod meta;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};
use vmail_proto::grant::{DeleteOrder, DepositProof, StorageGrant};

use crate::core::locator::ObjectId;
use error::io_err;
use format::{
    PROOFS, TOMBSTONES, decode_meta, decode_tombstone, header, load_files, parse_name,
    parse_serial, write_durably,
};

pub use admit::{HolderPolicy, admit, covers, final_layout};
pub use error::ObjectStoreError;
pub use format::Tombstone;
pub use meta::{MIN_CHARGE, ObjectMeta, ShardOf};

/// Locks that serialise the changes to one identifier; an identifier's is
/// picked by its first byte, so unrelated objects rarely wait on each other.
pub const ID_LOCKS: usize = 256;
/// Times the sender may replace an object's layout (`Relayout`): an upload
/// needs one, and each rewrites the whole file.
pub const MAX_RELAYOUTS: u8 = 2;

/// The object and tombstone file codecs, public only for the fuzz targets
/// in `tests/fuzz` (they read untrusted bytes off a holder's disk); not
/// part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use super::{ObjectMeta, Tombstone, format};

    /// The meta of an object file's bytes (any version), as the loader reads it.
    pub fn decode_meta(bytes: &[u8]) -> Option<ObjectMeta> {
        format::decode_meta(bytes)
    }

    /// The header the store writes before an object's body.
    pub fn header(meta: &ObjectMeta) -> Vec<u8> {
        format::header(meta)
    }

    /// A tombstone file's bytes, as the loader reads them.
    pub fn decode_tombstone(bytes: &[u8]) -> Option<Tombstone> {
        format::decode_tombstone(bytes)
    }

    /// The bytes the store writes for a tombstone.
    pub fn encode_tombstone(t: &Tombstone) -> Vec<u8> {
        format::encode_tombstone(t)
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
    /// Layout replacements since it was stored (or the store opened).
    relayouts: u8,
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
            relayouts: 0,
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
    /// The identifiers' locks ([`ID_LOCKS`]); taken before `state`.
    ids: Arc<[Mutex<()>]>,
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
        let graves_dir = dir.join(TOMBSTONES);
        std::fs::create_dir_all(&graves_dir).map_err(io_err(&graves_dir))?;
        let proofs_dir = dir.join(PROOFS);
        std::fs::create_dir_all(&proofs_dir).map_err(io_err(&proofs_dir))?;
        let now = vmail_proto::unix_now();
        let legacy_cap = now.saturating_add(policy.max_retention_secs);
        let mut state = State::default();
        let mut report = OpenReport {
            objects: 0,
            quarantined: 0,
            legacy: 0,
        };
        report.quarantined += load_files(&dir, &dir, |name, bytes| {
            let Some(id) = parse_name(name) else {
                return false;
            };
            let Some(mut meta) = decode_meta(&bytes).filter(|m| m.consistent(&id)) else {
                return false;
            };
            if meta.grant.is_empty() {
                meta.expires_at = meta.expires_at.min(legacy_cap);
                report.legacy += 1;
            }
            state.insert(id, meta);
            report.objects += 1;
            true
        })?;
        report.quarantined += load_files(&dir, &graves_dir, |name, bytes| {
            let grave = decode_tombstone(&bytes).and_then(|tombstone| {
                let order = DeleteOrder::from_bytes(&tombstone.order).ok()?;
                Some((order.serial, order.expires_at, tombstone))
            });
            match grave {
                Some((serial, expires_at, tombstone)) if parse_serial(name) == Some(serial) => {
                    state.bury(
                        serial,
                        Grave {
                            expires_at,
                            tombstone,
                        },
                    );
                    true
                }
                _ => false,
            }
        })?;
        report.quarantined +=
            load_files(
                &dir,
                &proofs_dir,
                |name, bytes| match DepositProof::from_bytes(&bytes) {
                    Ok(p) if parse_serial(name) == Some(p.serial) => {
                        state.proofs.insert(p.serial, bytes);
                        true
                    }
                    _ => false,
                },
            )?;
        Ok((
            Self {
                dir,
                policy: Arc::new(policy),
                state: Arc::new(Mutex::new(state)),
                ids: (0..ID_LOCKS).map(|_| Mutex::new(())).collect(),
            },
            report,
        ))
    }

    fn path(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(hex::encode(id))
    }

    /// The file of grant `serial` in the directory `kind`.
    fn by_serial(&self, kind: &str, serial: u64) -> PathBuf {
        self.dir.join(kind).join(format!("{serial:016x}"))
    }

    /// The pinned cluster key grants, proofs and orders must verify against.
    fn cluster_key(&self) -> Result<&VerifyingKey, ObjectStoreError> {
        self.policy
            .cluster_key
            .as_ref()
            .ok_or(ObjectStoreError::NoClusterKey)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("store lock")
    }

    /// The lock of `id`'s changes; hold it across check, write and index.
    fn lock_id(&self, id: &ObjectId) -> std::sync::MutexGuard<'_, ()> {
        self.ids[usize::from(id[0]) % self.ids.len()]
            .lock()
            .expect("id lock")
    }

    /// Bytes and objects promised to stores in flight.
    pub fn reserved(&self) -> (u64, usize) {
        let s = self.lock();
        (s.reserved, s.reserved_objects)
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
        if let Some(serial) = reused(&s, id, meta) {
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
        // From here to the index update, no other change to `id` runs.
        let _id = self.lock_id(id);
        {
            let s = self.lock();
            if let Some(old) = s.index.get(id) {
                return if old.meta.sha256 == meta.sha256 {
                    Ok(())
                } else {
                    Err(ObjectStoreError::Conflict)
                };
            }
            // A delete order may have come while the body did.
            if let Some(e) = grant_of(&meta).and_then(|(serial, _)| s.deleted(serial)) {
                return Err(e);
            }
        }
        // The proof is kept per grant, in a file of its own.
        let proof = std::mem::take(&mut meta.proof);
        self.write(id, &meta, data)?;
        let indexed = (|| {
            if let Some((serial, _)) = grant_of(&meta)
                && !proof.is_empty()
            {
                self.keep_proof(serial, &proof)?;
            }
            // Checked again with the insert, under one lock: a store of the
            // same shard under another identifier may have raced this one.
            let mut s = self.lock();
            if let Some(serial) = reused(&s, id, &meta) {
                return Err(ObjectStoreError::GrantReused { serial });
            }
            if let Some(e) = grant_of(&meta).and_then(|(serial, _)| s.deleted(serial)) {
                return Err(e);
            }
            s.insert(*id, meta);
            Ok(())
        })();
        if indexed.is_err() {
            // Nothing else writes `id` while its lock is held: the file is this one.
            let _ = format::remove_if_present(&self.path(id));
        }
        drop(reservation);
        indexed
    }

    /// Writes the file for `id` durably: temporary file, fsync, rename,
    /// directory fsync.
    fn write(&self, id: &ObjectId, meta: &ObjectMeta, data: &[u8]) -> Result<(), ObjectStoreError> {
        let mut bytes = header(meta);
        bytes.extend_from_slice(data);
        write_durably(&self.dir, &self.path(id), &bytes)
    }

    /// Replaces the layout of a held object with the sender's final one,
    /// which discloses the siblings' identifiers the upload withheld. Only
    /// the sender may: `secret` must be the preimage of the object's delete
    /// hash, and the new layout must pass [`final_layout`]. Blocking.
    pub fn set_shard(
        &self,
        id: &ObjectId,
        secret: &[u8; 32],
        shard: ShardOf,
    ) -> Result<(), ObjectStoreError> {
        let _id = self.lock_id(id);
        let Some((mut meta, relayouts)) = self
            .lock()
            .index
            .get(id)
            .map(|h| (h.meta.clone(), h.relayouts))
        else {
            return Err(ObjectStoreError::NotHeld);
        };
        if <[u8; 32]>::from(Sha256::digest(secret)) != meta.delete_hash {
            return Err(ObjectStoreError::WrongSecret);
        }
        if meta.shard.as_ref() == Some(&shard) {
            return Ok(());
        }
        if relayouts >= MAX_RELAYOUTS {
            return Err(ObjectStoreError::TooManyRelayouts { max: MAX_RELAYOUTS });
        }
        final_layout(&meta, id, &shard)?;
        meta.shard = Some(shard);
        let data = self.read_locked(id)?.unwrap_or_default();
        self.write(id, &meta, &data)?;
        let mut s = self.lock();
        s.insert(*id, meta);
        if let Some(h) = s.index.get_mut(id) {
            h.relayouts = relayouts + 1;
        }
        Ok(())
    }

    /// The ciphertext of a held object, as stored. Blocking.
    pub fn read(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, ObjectStoreError> {
        let _id = self.lock_id(id);
        self.read_locked(id)
    }

    /// [`ObjectStore::read`] with `id`'s lock held. A file whose header
    /// disagrees with the index, and whose body matches its own header,
    /// is what the disk holds: the index entry is rebuilt from it.
    fn read_locked(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, ObjectStoreError> {
        let Some(indexed) = self.lock().index.get(id).map(|h| h.meta.clone()) else {
            return Ok(None);
        };
        let path = self.path(id);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let start = format::body_offset(&bytes).ok_or_else(|| ObjectStoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "bad object header"),
        })?;
        let body = bytes[start..].to_vec();
        if let Some(on_disk) = decode_meta(&bytes)
            && !same_object(&on_disk, &indexed)
            && on_disk.consistent(id)
            && <[u8; 32]>::from(Sha256::digest(&body)) == on_disk.sha256
        {
            tracing::warn!(id = %hex::encode(id), "index disagreed with the disk; rebuilt from the file");
            let mut on_disk = on_disk;
            on_disk.expires_at = on_disk.expires_at.min(indexed.expires_at);
            self.lock().insert(*id, on_disk);
        }
        Ok(Some(body))
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
        let _id = self.lock_id(id);
        if !self.lock().index.contains_key(id) {
            return Ok(false);
        }
        let path = self.path(id);
        format::remove_if_present(&path)?;
        let mut s = self.lock();
        if let Some(held) = s.index.remove(id) {
            s.used -= held.charge;
        }
        Ok(true)
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
}

/// One grant, one object per shard: the serial of `meta`'s grant if `s`
/// holds the same shard of it under another identifier than `id`.
fn reused(s: &State, id: &ObjectId, meta: &ObjectMeta) -> Option<u64> {
    let (serial, _) = grant_of(meta)?;
    let index = meta.shard.as_ref().map(|x| x.index);
    s.index
        .iter()
        .any(|(other, h)| {
            other != id
                && h.serial() == Some(serial)
                && h.meta.shard.as_ref().map(|x| x.index) == index
        })
        .then_some(serial)
}

/// Whether two metas describe the same stored object: body, delete hash
/// and layout (the expiry and proof are the holder's own).
fn same_object(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    a.len == b.len
        && a.sha256 == b.sha256
        && a.delete_hash == b.delete_hash
        && a.shard == b.shard
        && a.grant == b.grant
}

/// `h`'s meta with its grant's proof, if `s` has one.
fn with_proof(s: &State, h: &Held) -> ObjectMeta {
    let mut meta = h.meta.clone();
    if let Some(proof) = h.serial().and_then(|serial| s.proofs.get(&serial)) {
        meta.proof = proof.clone();
    }
    meta
}

#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod tests;
