//! This server's share keys: the HPKE (X25519) secrets that open the
//! session-key shares sealed to it (`vmail_proto::share`).
//!
//! Each epoch's secret is a file `DIR/share-keys/EPOCH.key`, 32 raw bytes,
//! mode 0600. The newest epoch is current: deposits seal to it once the
//! group has replicated its public half. Older epochs stay until no waiting
//! voicemail has a share sealed to them, then [`ShareKeyRing::erase`]
//! deletes the file. Unlike the group secrets, these never leave the server:
//! a joining server gets none of them, so no single server can open every
//! share of a voicemail.
//!
//! Beside them, `DIR/member.key` is the server's member key: the Ed25519
//! seed that signs each share-key publication, so no other member can
//! publish one in its name (docs/PROTOCOL.md §7.14). It too never leaves
//! the server.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ed25519_dalek::{Signer, SigningKey};
use vmail_proto::share::BoxSecret;

use crate::store::{Vouch, publication_bytes};

use super::key_file::write_secret_file;
use super::{DataDirError, files, io_err};

/// The directory that holds the share keys of the data directory `dir`.
pub fn share_key_dir(dir: &Path) -> PathBuf {
    dir.join(files::SHARE_KEYS)
}

/// The file of epoch `epoch`'s secret.
pub fn share_key_file(dir: &Path, epoch: u32) -> PathBuf {
    share_key_dir(dir).join(format!("{epoch}.key"))
}

/// Every share-key secret of the data directory `dir`, by epoch; empty when
/// it has none yet. A file that is not `EPOCH.key` with 32 bytes of a valid
/// key is named as corrupt. This is also how a test (the "stolen server"
/// drill) reads what an attacker who copied one server's disk would hold.
pub fn load_share_keys(dir: &Path) -> Result<BTreeMap<u32, BoxSecret>, DataDirError> {
    let keys_dir = share_key_dir(dir);
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(&keys_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&keys_dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_err(&keys_dir))?.path();
        let corrupt = |why: String| DataDirError::Corrupt {
            path: path.clone(),
            why,
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Leftovers of an interrupted write are not keys.
        if name.ends_with(".tmp") {
            continue;
        }
        let epoch: u32 = name
            .strip_suffix(".key")
            .and_then(|e| e.parse().ok())
            .filter(|e| *e > 0)
            .ok_or_else(|| corrupt("not a share key: expected EPOCH.key, EPOCH from 1".into()))?;
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        if bytes.len() != 32 {
            return Err(corrupt(format!("{} bytes, expected 32", bytes.len())));
        }
        let secret = BoxSecret::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
        out.insert(epoch, secret);
    }
    Ok(out)
}

/// Writes a new epoch's secret, refusing to overwrite one.
fn write_secret(dir: &Path, epoch: u32, secret: &BoxSecret) -> Result<(), DataDirError> {
    write_secret_file(
        &share_key_dir(dir),
        &share_key_file(dir, epoch),
        &secret.to_bytes(),
        "a share key of this epoch exists already",
    )
}

/// The member key of the data directory `dir`, made (and written, mode
/// 0600) when it has none: at a server's first start, or the first since
/// member keys (docs/PROTOCOL.md §7.14).
pub fn member_key(dir: &Path) -> Result<SigningKey, DataDirError> {
    let path = dir.join(files::MEMBER_KEY);
    match fs::read(&path) {
        Ok(bytes) => {
            let seed =
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| DataDirError::Corrupt {
                    path: path.clone(),
                    why: format!("{} bytes, expected 32", bytes.len()),
                })?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::from_bytes(&vmail_proto::random_bytes());
            write_secret_file(dir, &path, key.as_bytes(), "a member key exists already")?;
            Ok(key)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// This server's share keys in memory, backed by their files, and the
/// member key that vouches for them.
pub struct ShareKeyRing {
    dir: PathBuf,
    keys: RwLock<BTreeMap<u32, BoxSecret>>,
    member: SigningKey,
}

impl std::fmt::Debug for ShareKeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareKeyRing")
            .field("epochs", &self.epochs())
            .finish_non_exhaustive()
    }
}

impl ShareKeyRing {
    /// Loads the share keys and the member key of the data directory
    /// `dir`, creating epoch 1 and the member key when there is none.
    pub fn open(dir: &Path) -> Result<Self, DataDirError> {
        let member = member_key(dir)?;
        let mut keys = load_share_keys(dir)?;
        if keys.is_empty() {
            let secret = BoxSecret::generate();
            write_secret(dir, 1, &secret)?;
            keys.insert(1, secret);
        }
        Ok(Self {
            dir: dir.to_owned(),
            keys: RwLock::new(keys),
            member,
        })
    }

    /// The public half of this server's member key.
    pub fn member_public(&self) -> [u8; 32] {
        self.member.verifying_key().to_bytes()
    }

    /// The member key's signature on publishing `public` as node
    /// `node_id`'s share key of `epoch`.
    pub fn vouch(&self, node_id: u64, epoch: u32, public: &[u8; 32]) -> Vouch {
        Vouch {
            member_key: self.member_public(),
            signature: self.member_sign(&publication_bytes(node_id, epoch, public)),
        }
    }

    /// The member key's signature over `message` (64 bytes): one of the
    /// labelled byte strings of `crate::store::member_keys`.
    pub fn member_sign(&self, message: &[u8]) -> Vec<u8> {
        self.member.sign(message).to_bytes().to_vec()
    }

    /// The current (newest) epoch and its public key.
    pub fn current(&self) -> (u32, [u8; 32]) {
        let keys = self.keys.read().expect("share keys lock");
        let (epoch, secret) = keys.last_key_value().expect("the ring is never empty");
        (*epoch, secret.public())
    }

    /// The secret of `epoch`, unless it was erased (or never was).
    pub fn secret(&self, epoch: u32) -> Option<BoxSecret> {
        self.keys
            .read()
            .expect("share keys lock")
            .get(&epoch)
            .cloned()
    }

    /// The epochs held, oldest first.
    pub fn epochs(&self) -> Vec<u32> {
        self.keys
            .read()
            .expect("share keys lock")
            .keys()
            .copied()
            .collect()
    }

    /// Makes the next epoch's secret and makes it current; returns its
    /// epoch and public key. The group learns it once it is published.
    pub fn rotate(&self) -> Result<(u32, [u8; 32]), DataDirError> {
        self.rotate_past(0)
    }

    /// [`ShareKeyRing::rotate`], to an epoch above `published` too: a data
    /// directory restored from a backup (or whose `share-keys/` was lost)
    /// is behind what the group recorded for this server, which refuses an
    /// epoch it has seen.
    pub fn rotate_past(&self, published: u32) -> Result<(u32, [u8; 32]), DataDirError> {
        let mut keys = self.keys.write().expect("share keys lock");
        let epoch = keys
            .last_key_value()
            .map_or(1, |(e, _)| e + 1)
            .max(published + 1);
        let secret = BoxSecret::generate();
        write_secret(&self.dir, epoch, &secret)?;
        let public = secret.public();
        keys.insert(epoch, secret);
        Ok((epoch, public))
    }

    /// Erases an old epoch's secret: its file, then the copy in memory.
    /// The current epoch is never erased; returns whether `epoch` went.
    pub fn erase(&self, epoch: u32) -> Result<bool, DataDirError> {
        let mut keys = self.keys.write().expect("share keys lock");
        let current = keys.last_key_value().map(|(e, _)| *e);
        if current == Some(epoch) || !keys.contains_key(&epoch) {
            return Ok(false);
        }
        let path = share_key_file(&self.dir, epoch);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        keys.remove(&epoch);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_ring_creates_epoch_one_rotates_and_erases_only_old_epochs() {
        let tmp = tempfile::tempdir().unwrap();
        let ring = ShareKeyRing::open(tmp.path()).unwrap();
        let (e1, p1) = ring.current();
        assert_eq!(e1, 1);
        let mode = fs::metadata(share_key_file(tmp.path(), 1))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Reopening loads the same key.
        assert_eq!(ShareKeyRing::open(tmp.path()).unwrap().current(), (1, p1));
        let (e2, p2) = ring.rotate().unwrap();
        assert_eq!(e2, 2);
        assert_ne!(p1, p2);
        assert_eq!(ring.current(), (2, p2));
        assert!(!ring.erase(2).unwrap(), "the current epoch stays");
        assert!(ring.erase(1).unwrap());
        assert!(ring.secret(1).is_none());
        assert!(!share_key_file(tmp.path(), 1).exists());
        assert_eq!(
            load_share_keys(tmp.path())
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [&2]
        );
    }

    #[test]
    fn a_ring_behind_the_group_moves_past_its_record_and_a_torn_write_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let ring = ShareKeyRing::open(tmp.path()).unwrap();
        // The group recorded epoch 5 for this server; the ring holds 1.
        let (e, _) = ring.rotate_past(5).unwrap();
        assert_eq!(e, 6);
        assert_eq!(ring.epochs(), [1, 6]);
        // Behind nothing: the next epoch, as a plain rotation.
        assert_eq!(ring.rotate_past(2).unwrap().0, 7);
        // A write cut short leaves only a temporary file, which is skipped
        // and replaced by the next write of that epoch.
        fs::write(tmp.path().join("share-keys/8.key.tmp"), b"torn").unwrap();
        assert_eq!(load_share_keys(tmp.path()).unwrap().keys().max(), Some(&7));
        assert_eq!(ring.rotate().unwrap().0, 8);
        assert!(!tmp.path().join("share-keys/8.key.tmp").exists());
        assert_eq!(load_share_keys(tmp.path()).unwrap().len(), 4);
    }

    #[test]
    fn the_member_key_is_made_once_kept_and_a_corrupt_one_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let first = ShareKeyRing::open(tmp.path()).unwrap().member_public();
        let path = tmp.path().join(files::MEMBER_KEY);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            ShareKeyRing::open(tmp.path()).unwrap().member_public(),
            first
        );
        fs::write(&path, b"short").unwrap();
        let err = ShareKeyRing::open(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("member.key is corrupt: 5 bytes, expected 32"),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_share_key_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        ShareKeyRing::open(tmp.path()).unwrap();
        fs::write(share_key_file(tmp.path(), 1), b"short").unwrap();
        let err = ShareKeyRing::open(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("1.key is corrupt: 5 bytes, expected 32"),
            "{err}"
        );
    }
}
