//! This server's share of the group signing key (docs/THRESHOLD.md §1):
//! the FROST key package its distributed key generation gave it, with the
//! group's public key package, in `DIR/frost/CEREMONY.key` (mode 0600).
//! Never sent, never in the log: t of these, from t servers, sign; one
//! alone signs nothing. A refresh (docs/THRESHOLD.md §4) writes the
//! member's new package under the refresh's number; once the refresh
//! completes, the older packages are erased.
//!
//! File format: the key package's length (u32, big-endian), the key
//! package, then the public key package, both in frost's own encoding.

use std::fs;
use std::path::{Path, PathBuf};

use crate::threshold::{KeyPackage, PublicKeyPackage, Wire};

use super::key_file::write_secret_file;
use super::{DataDirError, io_err};

/// The directory of the data directory `dir` that holds key packages.
pub fn frost_key_dir(dir: &Path) -> PathBuf {
    dir.join("frost")
}

/// The file of ceremony `ceremony`'s key package.
pub fn frost_key_file(dir: &Path, ceremony: u64) -> PathBuf {
    frost_key_dir(dir).join(format!("{ceremony}.key"))
}

/// Writes ceremony `ceremony`'s key package ([`write_secret_file`]);
/// refuses to overwrite one.
pub fn write_key_package(
    dir: &Path,
    ceremony: u64,
    key: &KeyPackage,
    public: &PublicKeyPackage,
) -> Result<(), DataDirError> {
    let path = frost_key_file(dir, ceremony);
    let encode = |e: crate::threshold::ThresholdError| DataDirError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    };
    let key = key.to_wire().map_err(encode)?;
    let public = public.to_wire().map_err(encode)?;
    let mut bytes = (key.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&key);
    bytes.extend_from_slice(&public);
    write_secret_file(
        &frost_key_dir(dir),
        &path,
        &bytes,
        "a key package of this ceremony exists already",
    )
}

/// Ceremony `ceremony`'s key package and the group's public key package,
/// if this server holds them.
pub fn load_key_package(
    dir: &Path,
    ceremony: u64,
) -> Result<Option<(KeyPackage, PublicKeyPackage)>, DataDirError> {
    let path = frost_key_file(dir, ceremony);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let corrupt = |why: String| DataDirError::Corrupt {
        path: path.clone(),
        why,
    };
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("shorter than its length prefix".into()))?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(corrupt(format!(
            "the key package is {len} bytes, but only {} follow",
            rest.len()
        )));
    }
    let (key, public) = rest.split_at(len);
    Ok(Some((
        KeyPackage::from_wire(key).map_err(|e| corrupt(e.to_string()))?,
        PublicKeyPackage::from_wire(public).map_err(|e| corrupt(e.to_string()))?,
    )))
}

/// Erases every key package of a ceremony before `ceremony`, whose key
/// the group's shares of it replaced (a refresh), and returns their
/// ceremony numbers. Files that are not key packages are left alone.
pub fn erase_key_packages_before(dir: &Path, ceremony: u64) -> Result<Vec<u64>, DataDirError> {
    let keys = frost_key_dir(dir);
    let entries = match fs::read_dir(&keys) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&keys)(e)),
    };
    let mut erased = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(&keys))?.path();
        let old = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".key"))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n < ceremony);
        if let Some(old) = old {
            fs::remove_file(&path).map_err(io_err(&path))?;
            erased.push(old);
        }
    }
    erased.sort_unstable();
    Ok(erased)
}
