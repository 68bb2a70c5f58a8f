//! Client settings: the vmail home and where the auth servers are.
//!
//! The home is `--home`, else `VMAIL_HOME`, else `$XDG_CONFIG_HOME/vmail`,
//! else `~/.config/vmail`. It holds `config.toml`, the keystore and, later,
//! the node's data. Each setting comes from a flag, else a `VMAIL_*`
//! variable (clap reads both), else the config file: `--auth-config FILE`
//! (`VMAIL_AUTH_CONFIG`, such as the `client.toml` an auth group publishes)
//! or `HOME/config.toml`.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use vmail_proto::cert::parse_identity_key;

use crate::auth_client::AuthTarget;

/// Why the client settings could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// No home could be found.
    #[error("cannot find a vmail home: pass --home DIR or set VMAIL_HOME")]
    NoHome,
    /// The config file is unreadable or malformed.
    #[error("{path}: {why}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A required setting is absent everywhere.
    #[error(
        "no {what} configured: pass {flag}, set {env}, or add {key} to {file} (vmail-auth init writes a client.toml to copy there)"
    )]
    Missing {
        /// What is missing.
        what: &'static str,
        /// The flag.
        flag: &'static str,
        /// The variable.
        env: &'static str,
        /// The config key.
        key: &'static str,
        /// The config file.
        file: PathBuf,
    },
    /// The CA file could not be read.
    #[error("CA certificate {path}: {source}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The cluster key is malformed.
    #[error("cluster key {0:?} is not a 64-hex-digit ed25519 public key: {1}")]
    ClusterKey(String, String),
    /// The group key is malformed.
    #[error("group key {0:?} is not a 64-hex-digit ed25519 public key: {1}")]
    GroupKey(String, String),
    /// An auth endpoint that is not `https://`.
    #[error(
        "auth endpoint {url:?} (from {from}) is not an https:// URL: vmail talks to auth servers only over TLS, so write it as https://HOST:PORT"
    )]
    NotHttps {
        /// The endpoint.
        url: String,
        /// Where it was configured: the flag or the file.
        from: String,
    },
}

/// `HOME/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// Auth server URLs (all are tried at once; the first to answer is used).
    pub auth_endpoints: Vec<String>,
    /// Path of the cluster CA certificate; a relative path is relative to
    /// the config file's directory.
    pub ca_cert: Option<PathBuf>,
    /// The cluster public key, hex.
    pub cluster_key: Option<String>,
    /// The group's threshold key, hex: when set, every certificate must
    /// carry its signature too.
    pub group_key: Option<String>,
}

/// Auth settings given on the command line or in the environment.
#[derive(Debug, Default, Clone)]
pub struct AuthOverrides {
    /// Endpoint URL.
    pub auth: Option<String>,
    /// CA certificate path.
    pub ca: Option<PathBuf>,
    /// Cluster key, hex.
    pub cluster_key: Option<String>,
    /// Group key, hex.
    pub group_key: Option<String>,
    /// A config file to read instead of `HOME/config.toml`; it must exist.
    pub auth_config: Option<PathBuf>,
}

/// Resolves the vmail home from the flag/variable, or the XDG default.
pub fn resolve_home(explicit: Option<PathBuf>) -> Result<PathBuf, SettingsError> {
    if let Some(h) = explicit {
        return Ok(h);
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("vmail"));
    }
    std::env::var_os("HOME")
        .filter(|x| !x.is_empty())
        .map(|h| PathBuf::from(h).join(".config").join("vmail"))
        .ok_or(SettingsError::NoHome)
}

/// Reads `path`; a missing file is an empty config unless `must_exist`.
fn load_config_file(path: &Path, must_exist: bool) -> Result<ConfigFile, SettingsError> {
    let path = path.to_owned();
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| SettingsError::ConfigFile {
            path,
            why: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            Ok(ConfigFile::default())
        }
        Err(e) => Err(SettingsError::ConfigFile {
            path,
            why: e.to_string(),
        }),
    }
}

/// The auth config file the overrides name (else the home's), and what it
/// says.
fn config_file(home: &Path, o: &AuthOverrides) -> Result<(PathBuf, ConfigFile), SettingsError> {
    let path = o
        .auth_config
        .clone()
        .unwrap_or_else(|| home.join("config.toml"));
    let file = load_config_file(&path, o.auth_config.is_some())?;
    Ok((path, file))
}

/// The cluster key and the group key from the overrides or the config
/// file, each if either names one (a peer daemon needs only the keys, not
/// a whole target).
pub fn pinned_keys(
    home: &Path,
    o: &AuthOverrides,
) -> Result<(Option<VerifyingKey>, Option<VerifyingKey>), SettingsError> {
    let (_, file) = config_file(home, o)?;
    Ok((
        parse_key(
            o.cluster_key.clone().or(file.cluster_key),
            SettingsError::ClusterKey,
        )?,
        parse_key(
            o.group_key.clone().or(file.group_key),
            SettingsError::GroupKey,
        )?,
    ))
}

/// A public key in hex, if given; `bad` names the setting.
fn parse_key(
    key_hex: Option<String>,
    bad: fn(String, String) -> SettingsError,
) -> Result<Option<VerifyingKey>, SettingsError> {
    let Some(key_hex) = key_hex else {
        return Ok(None);
    };
    hex::decode(key_hex.trim())
        .map_err(|e| e.to_string())
        .and_then(|b| parse_identity_key(&b))
        .map(Some)
        .map_err(|why| bad(key_hex, why))
}

/// Combines overrides and the config file into a connectable target.
pub fn auth_target(home: &Path, o: &AuthOverrides) -> Result<AuthTarget, SettingsError> {
    let (config_path, file) = config_file(home, o)?;
    let config_dir = config_path.parent().unwrap_or(home).to_owned();
    let missing = |what, flag, env, key| SettingsError::Missing {
        what,
        flag,
        env,
        key,
        file: config_path.clone(),
    };
    let (endpoints, from): (Vec<String>, String) = match &o.auth {
        Some(a) => (
            a.split(',').map(|s| s.trim().to_owned()).collect(),
            "--auth or VMAIL_AUTH".to_owned(),
        ),
        None => (
            file.auth_endpoints,
            format!("auth_endpoints in {}", config_path.display()),
        ),
    };
    if let Some(url) = endpoints.iter().find(|u| !crate::auth_client::is_https(u)) {
        return Err(SettingsError::NotHttps {
            url: url.clone(),
            from,
        });
    }
    if endpoints.is_empty() {
        return Err(missing(
            "auth server",
            "--auth URL",
            "VMAIL_AUTH",
            "auth_endpoints",
        ));
    }
    let ca =
        o.ca.clone()
            // A relative path in the file is relative to the file.
            .or(file.ca_cert.map(|p| config_dir.join(p)))
            .ok_or_else(|| missing("CA certificate", "--ca FILE", "VMAIL_CA", "ca_cert"))?;
    let ca_pem = std::fs::read(&ca).map_err(|source| SettingsError::Ca { path: ca, source })?;
    let cluster_key = parse_key(
        o.cluster_key.clone().or(file.cluster_key),
        SettingsError::ClusterKey,
    )?
    .ok_or_else(|| {
        missing(
            "cluster key",
            "--cluster-key HEX",
            "VMAIL_CLUSTER_KEY",
            "cluster_key",
        )
    })?;
    let group_key = parse_key(
        o.group_key.clone().or(file.group_key),
        SettingsError::GroupKey,
    )?;
    Ok(AuthTarget {
        endpoints,
        ca_pem,
        cluster_key,
        group_key,
    })
}
