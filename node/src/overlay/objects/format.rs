//! The object, tombstone and deposit-proof files on a holder's disk, and
//! how they are written durably and read back.
//!
//! An object file, named by the identifier in hex: `"VMO3"`, a u32 BE
//! length, the postcard [`ObjectMeta`] (with its grant), then the shard's
//! bytes. Files of versions 1 and 2 (`"VMO1"`, `"VMO2"`, stored before
//! shards and before grants) are still read.
//!
//! A tombstone file, `tombstones/<serial as 16 hex digits>`: `"VMT1"`, then
//! the postcard [`Tombstone`]: the signed delete order and the identifiers
//! it removed here.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ObjectMeta, ObjectStoreError, ShardOf, io_err};
use crate::core::locator::ObjectId;

/// The tombstones' directory, under `objects/`.
pub(super) const TOMBSTONES: &str = "tombstones";
/// The deposit proofs' directory, under `objects/`.
pub(super) const PROOFS: &str = "proofs";

const MAGIC: &[u8; 4] = b"VMO3";
const MAGIC_V2: &[u8; 4] = b"VMO2";
pub(super) const MAGIC_V1: &[u8; 4] = b"VMO1";
const TOMBSTONE_MAGIC: &[u8; 4] = b"VMT1";
/// Bytes a file's header may take, beyond the ciphertext: a layout of 32
/// shards and a grant of 64 holders.
pub(super) const MAX_META_LEN: usize = 16 * 1024;

/// The meta of a version-1 file.
#[derive(Deserialize)]
struct MetaV1 {
    len: u64,
    sha256: [u8; 32],
    expires_at: u64,
    delete_hash: [u8; 32],
}

/// The meta of a version-2 file.
#[derive(Deserialize)]
struct MetaV2 {
    len: u64,
    sha256: [u8; 32],
    expires_at: u64,
    delete_hash: [u8; 32],
    shard: Option<ShardOf>,
}

/// A deleted grant's record on a holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The delete order, in its one encoding.
    pub order: Vec<u8>,
    /// The objects it removed here.
    pub ids: Vec<ObjectId>,
}

/// The encoded header of an object file.
pub(super) fn header(meta: &ObjectMeta) -> Vec<u8> {
    let m = postcard::to_stdvec(meta).expect("meta encodes");
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(m.len() as u32).to_be_bytes());
    out.extend_from_slice(&m);
    out
}

/// Where the body starts in an object file's bytes.
pub(super) fn body_offset(bytes: &[u8]) -> Option<usize> {
    let magic = bytes.get(..4)?;
    if magic != MAGIC && magic != MAGIC_V2 && magic != MAGIC_V1 {
        return None;
    }
    let n = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
    (n <= MAX_META_LEN && bytes.len() >= 8 + n).then_some(8 + n)
}

/// The meta of an object file's bytes, any version, checked against the
/// body's length. Legacy metas come back with no grant.
pub(super) fn decode_meta(bytes: &[u8]) -> Option<ObjectMeta> {
    let start = body_offset(bytes)?;
    let header = &bytes[8..start];
    let meta = match &bytes[..4] {
        m if m == MAGIC_V1 => {
            let v1: MetaV1 = postcard::from_bytes(header).ok()?;
            ObjectMeta {
                len: v1.len,
                sha256: v1.sha256,
                expires_at: v1.expires_at,
                delete_hash: v1.delete_hash,
                shard: None,
                grant: Vec::new(),
                proof: Vec::new(),
            }
        }
        m if m == MAGIC_V2 => {
            let v2: MetaV2 = postcard::from_bytes(header).ok()?;
            ObjectMeta {
                len: v2.len,
                sha256: v2.sha256,
                expires_at: v2.expires_at,
                delete_hash: v2.delete_hash,
                shard: v2.shard,
                grant: Vec::new(),
                proof: Vec::new(),
            }
        }
        _ => postcard::from_bytes(header).ok()?,
    };
    ((bytes.len() - start) as u64 == meta.len).then_some(meta)
}

/// The bytes of a tombstone file.
pub(super) fn encode_tombstone(t: &Tombstone) -> Vec<u8> {
    let mut out = TOMBSTONE_MAGIC.to_vec();
    out.extend(postcard::to_stdvec(t).expect("tombstone encodes"));
    out
}

/// Reads a tombstone file's bytes.
pub(super) fn decode_tombstone(bytes: &[u8]) -> Option<Tombstone> {
    let rest = bytes.strip_prefix(TOMBSTONE_MAGIC)?;
    postcard::from_bytes(rest).ok()
}

/// The identifier a file name gives, if it is one.
pub(super) fn parse_name(name: &str) -> Option<ObjectId> {
    hex::decode(name).ok()?.try_into().ok()
}

/// The serial a tombstone file name gives.
pub(super) fn parse_serial(name: &str) -> Option<u64> {
    u64::from_str_radix(name, 16).ok()
}

/// Reads every file in `dir`, removing leftover temporary files, and
/// hands `keep` each one's name and bytes; a file it refuses is moved to
/// `objects`'s `corrupt/`, never deleted. Returns how many were.
pub(super) fn load_files(
    objects: &Path,
    dir: &Path,
    mut keep: impl FnMut(&str, Vec<u8>) -> bool,
) -> Result<usize, ObjectStoreError> {
    let mut quarantined = 0;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().map_err(io_err(&path))?.is_file() {
            continue;
        }
        if name.ends_with(".tmp") {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        if !keep(&name, bytes) {
            quarantine(objects, &path, &name)?;
            quarantined += 1;
        }
    }
    Ok(quarantined)
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
/// rename, directory fsync. A failed write leaves nothing behind. Each
/// write has a temporary file of its own (`<name>.<random>.tmp`), so two
/// writers never share one.
pub(super) fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ObjectStoreError> {
    let tmp = path.with_extension(format!("{:016x}.tmp", rand::random::<u64>()));
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

/// Removes `path`; one already gone is fine.
pub(super) fn remove_if_present(path: &Path) -> Result<(), ObjectStoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}
