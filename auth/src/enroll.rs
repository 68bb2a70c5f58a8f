//! Unattended group formation, for servers that are started together with
//! no operator at hand (the compose testnet): `vmail-auth start`.
//!
//! The servers share an *enrolment directory* that only they mount. It
//! replaces the operator who copies a join credential "over a secure
//! channel" (README, Running an auth group):
//!
//! ```text
//! DIR/founded                  the group's CA certificate; written by the
//!                              first member that serves, so the group is
//!                              founded once, never again
//! DIR/requests/NAME.NONCE      a server with no data asks to join as NAME
//! DIR/credentials/NAME.NONCE.pem  a serving member's answer: a join
//!                              credential (0600) for that request
//! ```
//!
//! Anyone who can write the directory can obtain a credential, and a
//! credential opens the group's secrets, so it must be as private as the
//! servers' own data (docs/SECURITY.md). The client-facing half, `ca.pem`
//! and `client.toml` for every member's endpoint, goes to a separate public
//! directory ([`publish_client_config`]).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::cluster::admin::{self, AdminError};

/// Why an enrolment step failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A file in the enrolment or public directory could not be used.
    #[error("{path}: {why}. Check that the directory is mounted read-write for the auth servers")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        why: String,
    },
    /// A server name that cannot name a request file.
    #[error("{0:?} is not a usable server name: use 1 to 64 letters, digits, '-' or '_'")]
    BadName(String),
    /// Issuing the credential failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> EnrollError + '_ {
    move |e| EnrollError::Io {
        path: path.to_owned(),
        why: e.to_string(),
    }
}

/// Whether `name` may name a server in request files.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Writes `contents` to `path` through a temporary file (tempfile: a
/// random hidden name, `mode` from creation) and a rename, so a reader never
/// sees half a file and servers writing at once never share one. Requests
/// never start with a dot, so a temporary file is never taken for one.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), EnrollError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(contents).map_err(io(dir))?;
    tmp.as_file().sync_all().map_err(io(dir))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

/// A pending request for a join credential.
#[derive(Debug)]
pub struct Request {
    file: PathBuf,
    /// Where the answer will appear.
    pub credential: PathBuf,
}

impl Request {
    /// Whether a member has answered.
    pub fn answered(&self) -> bool {
        self.credential.exists()
    }

    /// Deletes the request and its credential once the join has used it.
    pub fn finish(self) {
        let _ = fs::remove_file(&self.file);
        let _ = fs::remove_file(&self.credential);
    }
}

/// The shared enrolment directory.
#[derive(Debug, Clone)]
pub struct Enrollment {
    dir: PathBuf,
}

impl Enrollment {
    /// Opens `dir`, creating its layout (mode 0700) if needed.
    pub fn open(dir: &Path) -> Result<Self, EnrollError> {
        for sub in ["requests", "credentials"] {
            let d = dir.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(io(&d))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The file that records the founding.
    pub fn founded_path(&self) -> PathBuf {
        self.dir.join("founded")
    }

    /// Whether some member has already founded the group.
    pub fn founded(&self) -> bool {
        self.founded_path().exists()
    }

    /// Records that the group exists (its CA certificate), once.
    pub fn mark_founded(&self, ca_pem: &str) -> Result<(), EnrollError> {
        if self.founded() {
            return Ok(());
        }
        write_atomic(&self.founded_path(), ca_pem.as_bytes(), 0o644)
    }

    /// Asks the serving members for a credential to join as `name`.
    pub fn request(&self, name: &str) -> Result<Request, EnrollError> {
        if !valid_name(name) {
            return Err(EnrollError::BadName(name.to_owned()));
        }
        let nonce = hex::encode(rand::random::<[u8; 8]>());
        let stem = format!("{name}.{nonce}");
        let file = self.dir.join("requests").join(&stem);
        write_atomic(&file, b"", 0o600)?;
        Ok(Request {
            file,
            credential: self.dir.join("credentials").join(format!("{stem}.pem")),
        })
    }

    /// Answers every unanswered request with a credential signed by the
    /// group CA of the member in `member_dir`. Returns the names answered.
    pub fn answer_requests(&self, member_dir: &Path) -> Result<Vec<String>, EnrollError> {
        let requests = self.dir.join("requests");
        let mut answered = Vec::new();
        for entry in fs::read_dir(&requests).map_err(io(&requests))? {
            let stem = entry.map_err(io(&requests))?.file_name();
            let Some(stem) = stem.to_str() else { continue };
            if stem.starts_with('.') {
                continue; // a request being written
            }
            let Some((name, nonce)) = stem.split_once('.') else {
                continue;
            };
            if !valid_name(name) || nonce.contains('.') {
                tracing::warn!(request = stem, "ignoring a malformed enrolment request");
                continue;
            }
            let out = self.dir.join("credentials").join(format!("{stem}.pem"));
            if out.exists() {
                continue;
            }
            let tls = admin::issue_credential_tls(member_dir, name)?;
            let bundle = format!("{}{}{}", tls.cert_pem, tls.key_pem, tls.ca_pem);
            write_atomic(&out, bundle.as_bytes(), 0o600)?;
            answered.push(name.to_owned());
        }
        Ok(answered)
    }
}

/// Writes `DIR/ca.pem` and `DIR/client.toml` (every member's endpoint, the
/// CA next to it, the cluster key) for clients to use as their config,
/// rewriting them only when they change.
pub fn publish_client_config(
    dir: &Path,
    ca_pem: &str,
    cluster_key_hex: &str,
    group_key_hex: Option<&str>,
    endpoints: &[String],
) -> Result<(), EnrollError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut client = format!(
        "# vmail client configuration, published by the auth group.\n\
         # Point VMAIL_AUTH_CONFIG at this file, or copy it with ca.pem to $VMAIL_HOME.\n\
         auth_endpoints = {endpoints:?}\nca_cert = \"ca.pem\"\ncluster_key = {cluster_key_hex:?}\n"
    );
    if let Some(g) = group_key_hex {
        client.push_str(&format!(
            "# The group's threshold key: certificates must carry its signature.\ngroup_key = {g:?}\n"
        ));
    }
    for (file, contents) in [("ca.pem", ca_pem), ("client.toml", client.as_str())] {
        let path = dir.join(file);
        if fs::read_to_string(&path).ok().as_deref() != Some(contents) {
            write_atomic(&path, contents.as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::{self, InitOptions};

    #[test]
    fn a_request_is_answered_once_with_a_credential_of_the_group() {
        let tmp = tempfile::tempdir().unwrap();
        let member = tmp.path().join("auth-1");
        datadir::init(&InitOptions::loopback(&member)).unwrap();
        let enroll = Enrollment::open(&tmp.path().join("enroll")).unwrap();
        assert!(!enroll.founded());
        enroll
            .mark_founded(&datadir::load_keys(&member).unwrap().ca_cert_pem)
            .unwrap();
        assert!(enroll.founded());

        let req = enroll.request("auth-2").unwrap();
        assert!(!req.answered());
        assert_eq!(enroll.answer_requests(&member).unwrap(), ["auth-2"]);
        assert!(req.answered());
        // The answer is a credential bundle the join path accepts, private.
        let tls = admin::read_credential(&req.credential).unwrap();
        assert_eq!(tls.ca_pem, datadir::load_keys(&member).unwrap().ca_cert_pem);
        let mode = fs::metadata(&req.credential).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // Answered requests are not answered again.
        assert!(enroll.answer_requests(&member).unwrap().is_empty());
        let credential = req.credential.clone();
        req.finish();
        assert!(!credential.exists());
    }

    #[test]
    fn bad_names_and_stray_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let member = tmp.path().join("auth-1");
        datadir::init(&InitOptions::loopback(&member)).unwrap();
        let enroll = Enrollment::open(&tmp.path().join("enroll")).unwrap();
        for bad in ["", "../auth-2", "a.b", &"x".repeat(65)] {
            assert!(matches!(enroll.request(bad), Err(EnrollError::BadName(_))));
        }
        fs::write(tmp.path().join("enroll/requests/no-nonce"), b"").unwrap();
        fs::write(tmp.path().join("enroll/requests/.auth-2.00.tmp"), b"").unwrap();
        fs::write(tmp.path().join("enroll/requests/.auth-2.00.tmp"), b"").unwrap();
        fs::write(tmp.path().join("enroll/requests/a.b.c"), b"").unwrap();
        assert!(enroll.answer_requests(&member).unwrap().is_empty());
    }

    #[test]
    fn the_published_config_names_every_endpoint_and_is_rewritten_only_on_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("public");
        let endpoints = vec![
            "https://auth-1:7443".to_owned(),
            "https://auth-2:7443".into(),
        ];
        publish_client_config(&dir, "CA", "ab", None, &endpoints).unwrap();
        let text = fs::read_to_string(dir.join("client.toml")).unwrap();
        assert!(
            text.contains(r#"auth_endpoints = ["https://auth-1:7443", "https://auth-2:7443"]"#)
        );
        assert!(text.contains(r#"ca_cert = "ca.pem""#));
        assert!(!text.contains("group_key"));
        let before = fs::metadata(dir.join("client.toml"))
            .unwrap()
            .modified()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        publish_client_config(&dir, "CA", "ab", None, &endpoints).unwrap();
        let after = fs::metadata(dir.join("client.toml"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
        assert_eq!(fs::read_to_string(dir.join("ca.pem")).unwrap(), "CA");
        // Once the group has its threshold key, clients pin it too.
        publish_client_config(&dir, "CA", "ab", Some("cd"), &endpoints).unwrap();
        let text = fs::read_to_string(dir.join("client.toml")).unwrap();
        assert!(text.contains(r#"group_key = "cd""#), "{text}");
    }
}
