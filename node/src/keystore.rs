//! The client keystore: a directory of 0600 files under the vmail home.
//!
//! ```text
//! HOME/keystore/identities/USER.key   USER's ed25519 identity seed, 32 raw bytes
//! HOME/keystore/session.toml          username, token, master key, inbox key and certificate of the current login
//! ```
//!
//! A `session.toml` from before inbox keys (an older vmail) cannot fetch
//! voicemail, since the servers reseal key shares only to a session's inbox
//! key: reading it fails with [`KeystoreError::NoInboxKey`], which tells the
//! user to log in again.
//!
//! Each account has its own identity key: two accounts registered from one
//! home never share one, which would link them for anyone who compares
//! certificates. A home from before keys were per user has one
//! `HOME/keystore/identity.key`; only the account the saved login
//! (`session.toml`) names takes that one over (the file moves to
//! `identities/USER.key`), since its certificate is the one that carries
//! it; any other account gets a key of its own, so a second account never
//! inherits, and is never linked by, the first one's key.
//!
//! The directories are made (or reset to) 0700 on every write. Files are written to a temporary name and renamed,
//! so a crash never leaves half a key behind.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use vmail_proto::cert::UserCertificate;
use vmail_proto::keys::MasterKey;
use vmail_proto::names::Username;
use vmail_proto::share::BoxSecret;

use crate::auth_client::LoginSession;

/// Why the keystore could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    /// Reading or writing failed.
    #[error("keystore {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file's contents are wrong.
    #[error("keystore file {path} is corrupt ({why}); remove it and log in again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The saved login is from a vmail without inbox keys.
    #[error(
        "the saved login of {username} ({path}) is from an older vmail and has no inbox key, so it cannot open voicemail: run `vmail login {username}` again"
    )]
    NoInboxKey {
        /// The file.
        path: PathBuf,
        /// Whose login it is.
        username: String,
    },
    /// A key file is readable by others.
    #[error("keystore file {0} is readable by other users; run `chmod 600 {0}`")]
    Permissions(PathBuf),
}

/// The keystore directory.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct SessionFile {
    username: String,
    token: String,
    master_key: String,
    master_key_id: String,
    expires_at: u64,
    certificate: String,
    /// Absent in a file from before inbox keys.
    inbox_key: Option<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Keystore {
    /// The keystore under a vmail home.
    pub fn new(home: &Path) -> Self {
        Self {
            dir: home.join("keystore"),
        }
    }

    /// Where `user`'s identity key lives.
    pub fn identity_path(&self, user: &Username) -> PathBuf {
        self.dir.join("identities").join(format!("{user}.key"))
    }

    /// The one identity key of a home from before keys were per user.
    fn legacy_identity_path(&self) -> PathBuf {
        self.dir.join("identity.key")
    }

    fn session_path(&self) -> PathBuf {
        self.dir.join("session.toml")
    }

    fn write_secret(&self, path: &Path, contents: &[u8]) -> Result<(), KeystoreError> {
        let parent = path.parent().unwrap_or(&self.dir);
        for dir in [&self.dir, parent] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        }
        write_private(path, contents).map_err(io(path))
    }

    fn read_secret(&self, path: &Path) -> Result<Option<Vec<u8>>, KeystoreError> {
        match fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                return Err(KeystoreError::Permissions(path.to_owned()));
            }
            Ok(_) => {}
        }
        fs::read(path).map(Some).map_err(io(path))
    }

    /// `user`'s identity key, if one was made in this home (a home's
    /// single key from before keys were per user is taken over by the
    /// account its saved login names, and by no other).
    pub fn identity(&self, user: &Username) -> Result<Option<SigningKey>, KeystoreError> {
        let path = self.identity_path(user);
        if let Some(key) = self.read_key(&path)? {
            return Ok(Some(key));
        }
        let legacy = self.legacy_identity_path();
        if self.session_user().as_deref() != Some(user.as_str()) {
            return Ok(None);
        }
        let Some(key) = self.read_key(&legacy)? else {
            return Ok(None);
        };
        self.save_identity(user, &key)?;
        fs::remove_file(&legacy).map_err(io(&legacy))?;
        Ok(Some(key))
    }

    /// The username the saved login names, if it can be read.
    fn session_user(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Who {
            username: String,
        }
        let bytes = self.read_secret(&self.session_path()).ok()??;
        let who: Who = toml::from_str(std::str::from_utf8(&bytes).ok()?).ok()?;
        Some(who.username)
    }

    fn read_key(&self, path: &Path) -> Result<Option<SigningKey>, KeystoreError> {
        let path = path.to_owned();
        let Some(bytes) = self.read_secret(&path)? else {
            return Ok(None);
        };
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeystoreError::Corrupt {
                path,
                why: format!("{} bytes, expected 32", bytes.len()),
            })?;
        Ok(Some(SigningKey::from_bytes(&seed)))
    }

    /// `user`'s identity key, made and saved if there is none yet.
    pub fn identity_or_create(&self, user: &Username) -> Result<SigningKey, KeystoreError> {
        if let Some(k) = self.identity(user)? {
            return Ok(k);
        }
        let key = SigningKey::from_bytes(&vmail_proto::random_bytes());
        self.save_identity(user, &key)?;
        Ok(key)
    }

    /// Saves `key` as `user`'s identity key.
    pub fn save_identity(&self, user: &Username, key: &SigningKey) -> Result<(), KeystoreError> {
        self.write_secret(&self.identity_path(user), key.as_bytes())
    }

    /// Saves the current login.
    pub fn save_session(&self, s: &LoginSession) -> Result<(), KeystoreError> {
        let file = SessionFile {
            username: s.username.to_string(),
            token: hex::encode(s.token),
            master_key: hex::encode(s.master_key.as_bytes()),
            master_key_id: hex::encode(s.master_key_id),
            expires_at: s.expires_at,
            certificate: hex::encode(s.certificate.to_bytes()),
            inbox_key: Some(hex::encode(s.inbox_key.to_bytes())),
        };
        let text = toml::to_string(&file).expect("session serialises");
        self.write_secret(&self.session_path(), text.as_bytes())
    }

    /// The saved login, if any.
    pub fn session(&self) -> Result<Option<LoginSession>, KeystoreError> {
        let path = self.session_path();
        let Some(bytes) = self.read_secret(&path)? else {
            return Ok(None);
        };
        let bad = |why: String| KeystoreError::Corrupt {
            path: path.clone(),
            why,
        };
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
        let f: SessionFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let hex32 = |field: &str, s: &str| -> Result<[u8; 32], KeystoreError> {
            hex::decode(s)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad(format!("{field} is not 32 hex-encoded bytes")))
        };
        let Some(inbox_key) = &f.inbox_key else {
            return Err(KeystoreError::NoInboxKey {
                path: path.clone(),
                username: f.username,
            });
        };
        let inbox_key = BoxSecret::from_bytes(&hex32("inbox_key", inbox_key)?)
            .map_err(|e| bad(format!("inbox_key: {e}")))?;
        let cert_bytes = hex::decode(&f.certificate).map_err(|e| bad(e.to_string()))?;
        let cert = UserCertificate::from_bytes(&cert_bytes).map_err(|e| bad(e.to_string()))?;
        let master_key_id = hex::decode(&f.master_key_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("master_key_id is not 16 hex-encoded bytes".into()))?;
        Ok(Some(LoginSession {
            username: Username::parse(&f.username).map_err(|e| bad(e.to_string()))?,
            token: hex32("token", &f.token)?,
            master_key: MasterKey::from_bytes(hex32("master_key", &f.master_key)?),
            master_key_id,
            expires_at: f.expires_at,
            certificate: cert,
            inbox_key,
        }))
    }

    /// Deletes the saved login. Returns whether there was one.
    pub fn clear_session(&self) -> Result<bool, KeystoreError> {
        let path = self.session_path();
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

/// Writes a file only its owner can read (mode 0600), durably: a temporary
/// file is written and fsynced, then renamed into place.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    // Make the rename itself durable. The new file is in place either way,
    // so a failure here is not reported as a failed write.
    if let Some(dir) = path.parent() {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Username {
        Username::parse(name).unwrap()
    }

    #[test]
    fn each_account_has_its_own_key() {
        let tmp = tempfile::tempdir().unwrap();
        let ks = Keystore::new(tmp.path());
        let alice = ks.identity_or_create(&user("alice")).unwrap();
        let bob = ks.identity_or_create(&user("bob")).unwrap();
        assert_ne!(alice.as_bytes(), bob.as_bytes());
        assert_eq!(
            ks.identity(&user("alice")).unwrap().unwrap().as_bytes(),
            alice.as_bytes()
        );
        assert!(ks.identity(&user("carol")).unwrap().is_none());
        let dir = tmp.path().join("keystore/identities");
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_single_key_of_an_old_home_goes_to_the_logged_in_account_only() {
        let tmp = tempfile::tempdir().unwrap();
        let ks = Keystore::new(tmp.path());
        let old = SigningKey::from_bytes(&[7; 32]);
        fs::create_dir_all(tmp.path().join("keystore")).unwrap();
        let legacy = tmp.path().join("keystore/identity.key");
        write_private(&legacy, old.as_bytes()).unwrap();
        // No saved login: nobody takes it (a register or a login of another
        // account must not inherit alice's certified key).
        assert!(ks.identity(&user("alice")).unwrap().is_none());
        assert!(legacy.exists());
        write_private(
            &tmp.path().join("keystore/session.toml"),
            b"username = \"alice\"\n",
        )
        .unwrap();
        assert!(ks.identity(&user("bob")).unwrap().is_none());
        assert!(legacy.exists());
        let alice = ks.identity(&user("alice")).unwrap().unwrap();
        assert_eq!(alice.as_bytes(), old.as_bytes());
        assert!(!legacy.exists());
        assert!(ks.identity(&user("bob")).unwrap().is_none());
        assert_ne!(
            ks.identity_or_create(&user("bob")).unwrap().as_bytes(),
            old.as_bytes()
        );
    }

    fn session_of(name: &str) -> LoginSession {
        let cluster = SigningKey::from_bytes(&[1; 32]);
        LoginSession {
            username: user(name),
            token: [3; 32],
            master_key: MasterKey::from_bytes([4; 32]),
            master_key_id: [5; 16],
            expires_at: 1_800_000_000,
            certificate: vmail_proto::cert::CertificateBody {
                serial: 1,
                username: user(name),
                identity_key: SigningKey::from_bytes(&[6; 32]).verifying_key(),
                peer_id: Vec::new(),
                not_before: 0,
                not_after: 1_900_000_000,
            }
            .sign(&cluster),
            inbox_key: BoxSecret::generate(),
        }
    }

    #[test]
    fn a_session_round_trips_with_its_inbox_key_in_a_private_file() {
        let tmp = tempfile::tempdir().unwrap();
        let ks = Keystore::new(tmp.path());
        assert!(ks.session().unwrap().is_none());
        let s = session_of("alice");
        ks.save_session(&s).unwrap();
        let path = tmp.path().join("keystore/session.toml");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = ks.session().unwrap().unwrap();
        assert_eq!(back.username, s.username);
        assert_eq!(back.token, s.token);
        assert_eq!(back.master_key.as_bytes(), s.master_key.as_bytes());
        assert_eq!(back.inbox_key.public(), s.inbox_key.public());
        assert_eq!(back.certificate, s.certificate);
        assert!(ks.clear_session().unwrap());
        assert!(ks.session().unwrap().is_none());
    }

    #[test]
    fn a_session_from_before_inbox_keys_asks_for_a_new_login() {
        let tmp = tempfile::tempdir().unwrap();
        let ks = Keystore::new(tmp.path());
        ks.save_session(&session_of("alice")).unwrap();
        let path = tmp.path().join("keystore/session.toml");
        let old: String = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("inbox_key"))
            .map(|l| format!("{l}\n"))
            .collect();
        write_private(&path, old.as_bytes()).unwrap();
        let err = ks.session().unwrap_err();
        assert!(matches!(err, KeystoreError::NoInboxKey { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("no inbox key") && text.contains("run `vmail login alice` again"),
            "{text}"
        );
        // The saved login still names its user, for the identity key.
        assert_eq!(ks.session_user().as_deref(), Some("alice"));
    }

    #[test]
    fn identity_is_created_once_and_guarded() {
        let tmp = tempfile::tempdir().unwrap();
        let ks = Keystore::new(tmp.path());
        let alice = user("alice");
        assert!(ks.identity(&alice).unwrap().is_none());
        let k = ks.identity_or_create(&alice).unwrap();
        assert_eq!(
            ks.identity_or_create(&alice).unwrap().as_bytes(),
            k.as_bytes()
        );
        let path = tmp.path().join("keystore/identities/alice.key");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ks.identity(&alice),
            Err(KeystoreError::Permissions(_))
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            ks.identity(&alice),
            Err(KeystoreError::Corrupt { .. })
        ));
    }
}
