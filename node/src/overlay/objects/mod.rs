//! The holder's object store: opaque ciphertexts on disk, under a quota.
//!
//! One file per object in `DIR/objects/`, named by the identifier in hex:
//! `"VMO2"`, a u32 BE length, the postcard [`ObjectMeta`], then the
//! shard's bytes. Files of version 1 (`"VMO1"`, whose meta has no
//! [`ShardOf`]) are still read. A write goes to a temporary file that is fsynced, renamed
//! into place, and the directory fsynced, so a crash leaves either the whole
//! object or nothing. The store never sees a key: it holds ciphertext only.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::locator::{Layout, ObjectId};

const MAGIC: &[u8; 4] = b"VMO2";
const MAGIC_V1: &[u8; 4] = b"VMO1";
/// Bytes a file's header may take, beyond the ciphertext: room for a
/// layout of 32 shards.
const MAX_META_LEN: usize = 4096;

/// What a holder knows about an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Length of the object (a shard or a whole ciphertext).
    pub len: u64,
    /// SHA-256 of the object, as the sender announced and the holder checked.
    pub sha256: [u8; 32],
    /// Unix seconds after which the holder drops the object.
    pub expires_at: u64,
    /// SHA-256 of the secret that lets the sender withdraw the object.
    pub delete_hash: [u8; 32],
    /// Which shard of which layout this is, so the holder can check and
    /// repair its siblings. None for objects stored before shards existed.
    pub shard: Option<ShardOf>,
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
}

/// The meta of a version-1 file.
#[derive(Deserialize)]
struct MetaV1 {
    len: u64,
    sha256: [u8; 32],
    expires_at: u64,
    delete_hash: [u8; 32],
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
        /// Offered size.
        len: u64,
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
    /// Some other IO failure.
    #[error("object store IO error at {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
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

#[derive(Debug, Default)]
struct State {
    index: HashMap<ObjectId, ObjectMeta>,
    /// Bytes of committed objects.
    used: u64,
    /// Bytes promised to uploads in flight.
    reserved: u64,
}

/// A holder's objects. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    dir: PathBuf,
    quota: u64,
    max_object: u64,
    state: Arc<Mutex<State>>,
}

/// Room promised to one upload; released when dropped uncommitted.
#[derive(Debug)]
pub struct Reservation {
    state: Arc<Mutex<State>>,
    len: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.state.lock().expect("store lock").reserved -= self.len;
    }
}

/// What opening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// Objects loaded.
    pub objects: usize,
    /// Unreadable files moved to `objects/corrupt/`.
    pub quarantined: usize,
}

impl ObjectStore {
    /// Opens (creating if needed) the store in `dir`. Leftover temporary
    /// files are removed; files that do not parse are moved aside to
    /// `corrupt/`, never deleted.
    pub fn open(
        dir: &Path,
        quota: u64,
        max_object: u64,
    ) -> Result<(Self, OpenReport), ObjectStoreError> {
        let dir = dir.join("objects");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut state = State::default();
        let mut report = OpenReport {
            objects: 0,
            quarantined: 0,
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
            let parsed = parse_name(&name).and_then(|id| Some((id, read_checked(&path, &id)?)));
            match parsed {
                Some((id, meta)) => {
                    state.used += meta.len;
                    state.index.insert(id, meta);
                    report.objects += 1;
                }
                None => {
                    let corrupt = dir.join("corrupt");
                    std::fs::create_dir_all(&corrupt).map_err(io_err(&corrupt))?;
                    std::fs::rename(&path, corrupt.join(&name)).map_err(io_err(&path))?;
                    tracing::warn!(file = %path.display(), "unreadable object file moved to corrupt/");
                    report.quarantined += 1;
                }
            }
        }
        Ok((
            Self {
                dir,
                quota,
                max_object,
                state: Arc::new(Mutex::new(state)),
            },
            report,
        ))
    }

    fn path(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(hex::encode(id))
    }

    /// The largest object this holder takes.
    pub fn max_object(&self) -> u64 {
        self.max_object
    }

    /// The quota in bytes.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// The meta of a held object.
    pub fn get(&self, id: &ObjectId) -> Option<ObjectMeta> {
        self.state
            .lock()
            .expect("store lock")
            .index
            .get(id)
            .cloned()
    }

    /// Every held object.
    pub fn list(&self) -> Vec<(ObjectId, ObjectMeta)> {
        let s = self.state.lock().expect("store lock");
        s.index.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Objects held and their bytes.
    pub fn usage(&self) -> (usize, u64) {
        let s = self.state.lock().expect("store lock");
        (s.index.len(), s.used)
    }

    /// Promises room for an upload of `len` bytes, or says why not.
    pub fn reserve(&self, len: u64) -> Result<Reservation, ObjectStoreError> {
        if len > self.max_object {
            return Err(ObjectStoreError::TooLarge {
                len,
                max: self.max_object,
            });
        }
        let mut s = self.state.lock().expect("store lock");
        let used = s.used + s.reserved;
        if used.saturating_add(len) > self.quota {
            return Err(ObjectStoreError::QuotaFull {
                used,
                quota: self.quota,
                len,
            });
        }
        s.reserved += len;
        Ok(Reservation {
            state: self.state.clone(),
            len,
        })
    }

    /// Checks `data` against `meta` and writes it durably under `id`.
    /// Storing the same content twice is a no-op; different content under a
    /// taken identifier is refused. Blocking: call from a blocking context.
    pub fn commit(
        &self,
        reservation: Reservation,
        id: &ObjectId,
        meta: ObjectMeta,
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
        self.write(id, &meta, data)?;
        let mut s = self.state.lock().expect("store lock");
        s.used += meta.len;
        s.index.insert(*id, meta.clone());
        drop(s);
        drop(reservation);
        Ok(())
    }

    /// Writes the file for `id` durably: temporary file, fsync, rename,
    /// directory fsync.
    fn write(&self, id: &ObjectId, meta: &ObjectMeta, data: &[u8]) -> Result<(), ObjectStoreError> {
        let path = self.path(id);
        let tmp = path.with_extension("tmp");
        let written = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
            let m = postcard::to_stdvec(meta).expect("meta encodes");
            f.write_all(MAGIC).map_err(io_err(&tmp))?;
            f.write_all(&(m.len() as u32).to_be_bytes())
                .map_err(io_err(&tmp))?;
            f.write_all(&m).map_err(io_err(&tmp))?;
            f.write_all(data).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
            sync_dir(&self.dir)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Whether `meta` describes the object already held under `id`: same
    /// length, hash and delete hash (a sender or a repairer storing it
    /// again).
    pub fn holds_same(&self, id: &ObjectId, meta: &ObjectMeta) -> bool {
        self.get(id).is_some_and(|old| {
            old.len == meta.len && old.sha256 == meta.sha256 && old.delete_hash == meta.delete_hash
        })
    }

    /// Replaces the layout of a held object, when the sender's final layout
    /// differs from the draft the object came with. Only the sender may:
    /// `secret` must be the preimage of the object's delete hash. Blocking.
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
        meta.shard = Some(shard);
        if !meta.consistent(id) {
            return Err(ObjectStoreError::BadLayout);
        }
        let data = self.read(id)?.unwrap_or_default();
        self.write(id, &meta, &data)?;
        self.state
            .lock()
            .expect("store lock")
            .index
            .insert(*id, meta);
        Ok(())
    }

    /// The ciphertext of a held object, as stored. Blocking.
    pub fn read(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, ObjectStoreError> {
        if self.get(id).is_none() {
            return Ok(None);
        }
        let path = self.path(id);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let start = body_offset(&bytes).ok_or_else(|| ObjectStoreError::Io {
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
        let Some(meta) = self.state.lock().expect("store lock").index.remove(id) else {
            return Ok(false);
        };
        let path = self.path(id);
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        self.state.lock().expect("store lock").used -= meta.len;
        Ok(true)
    }

    /// Objects whose expiry has passed.
    pub fn expired(&self, now: u64) -> Vec<ObjectId> {
        let s = self.state.lock().expect("store lock");
        s.index
            .iter()
            .filter(|(_, m)| m.expires_at <= now)
            .map(|(k, _)| *k)
            .collect()
    }
}

fn parse_name(name: &str) -> Option<ObjectId> {
    hex::decode(name).ok()?.try_into().ok()
}

fn body_offset(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 8 || (&bytes[..4] != MAGIC && &bytes[..4] != MAGIC_V1) {
        return None;
    }
    let n = u32::from_be_bytes(bytes[4..8].try_into().ok()?) as usize;
    (n <= MAX_META_LEN && bytes.len() >= 8 + n).then_some(8 + n)
}

fn read_meta(path: &Path) -> std::io::Result<ObjectMeta> {
    let bytes = std::fs::read(path)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad object header");
    let start = body_offset(&bytes).ok_or_else(bad)?;
    let header = &bytes[8..start];
    let meta: ObjectMeta = if &bytes[..4] == MAGIC_V1 {
        let v1: MetaV1 = postcard::from_bytes(header).map_err(|_| bad())?;
        ObjectMeta {
            len: v1.len,
            sha256: v1.sha256,
            expires_at: v1.expires_at,
            delete_hash: v1.delete_hash,
            shard: None,
        }
    } else {
        postcard::from_bytes(header).map_err(|_| bad())?
    };
    if (bytes.len() - start) as u64 != meta.len {
        return Err(bad());
    }
    Ok(meta)
}

/// Reads a file's meta and checks its layout against the identifier its
/// name gives.
fn read_checked(path: &Path, id: &ObjectId) -> Option<ObjectMeta> {
    read_meta(path).ok().filter(|m| m.consistent(id))
}

fn sync_dir(dir: &Path) -> Result<(), ObjectStoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests;
