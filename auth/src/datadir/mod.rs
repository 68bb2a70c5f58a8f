//! The server's data directory: what `vmail-auth init` creates and what
//! `vmail-auth serve` loads, with errors that say which file is wrong.
//!
//! ```text
//! DIR/config.toml       server configuration (ServerConfig)
//! DIR/ca.pem            cluster CA certificate: clients trust it
//! DIR/ca.key            cluster CA private key                       0600
//! DIR/server.pem        this server's TLS certificate, signed by the CA
//! DIR/server.key        this server's TLS private key                0600
//! DIR/cluster.key       ed25519 seed that signs user certificates    0600
//! DIR/cluster.pub       its public key, hex: clients verify with it
//! DIR/opaque-setup.bin  OPAQUE server setup (OPRF seed, AKE key)     0600
//! DIR/data.key          AES-256 key sealing secrets in the database  0600
//! DIR/client.toml       ready-made client config (endpoint, CA, cluster key)
//! DIR/vmail-auth.redb   the database: auth state, Raft log, vote, snapshot
//! DIR/share-keys/N.key  this server's share-key secret of epoch N    0600
//! ```
//!
//! The CA, cluster key, OPAQUE setup and data key are the group's: `init`
//! makes them for a new group, and [`init_member`] writes the copies a
//! joining server fetched from a member. Each server has its own TLS
//! certificate, signed by the group CA, and its own Raft node id.
//!
//! Nothing here is ever overwritten: `init` refuses a non-empty directory and
//! `load` refuses anything missing or malformed. The one exception is a
//! placeholder: a server created with port 0 (`--listen 127.0.0.1:0`)
//! records the port it actually bound in `config.toml` and `client.toml`
//! when it first serves ([`record_bound_ports`]), so that `health`,
//! `cluster status` and clients can reach it.
//!
//! The share keys ([`share_keys`]) and the member key that signs them are
//! this server's alone: they are not group secrets, no other server ever
//! receives them, and old share-key epochs are erased once no voicemail
//! needs them.

pub mod frost_keys;
mod key_file;
pub mod share_keys;

pub use share_keys::{ShareKeyRing, load_share_keys, member_key};

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use opaque_ke::ServerSetup;
use vmail_proto::keys::SecretKey;
use vmail_proto::opaque::Suite;
use vmail_proto::random_bytes;

use crate::config::{ConfigError, ServerConfig};
use crate::keys::{GroupSecrets, KeyBinding, ServerKeys};
use crate::store::{Store, StoreError};

/// File names inside the data directory.
pub mod files {
    /// Server configuration.
    pub const CONFIG: &str = "config.toml";
    /// Cluster CA certificate.
    pub const CA_CERT: &str = "ca.pem";
    /// Cluster CA key.
    pub const CA_KEY: &str = "ca.key";
    /// Server TLS certificate.
    pub const SERVER_CERT: &str = "server.pem";
    /// Server TLS key.
    pub const SERVER_KEY: &str = "server.key";
    /// Cluster signing key seed.
    pub const CLUSTER_KEY: &str = "cluster.key";
    /// Cluster public key, hex.
    pub const CLUSTER_PUB: &str = "cluster.pub";
    /// OPAQUE server setup.
    pub const OPAQUE_SETUP: &str = "opaque-setup.bin";
    /// Database sealing key.
    pub const DATA_KEY: &str = "data.key";
    /// Client configuration to hand out.
    pub const CLIENT_CONFIG: &str = "client.toml";
    /// The redb database.
    pub const DATABASE: &str = "vmail-auth.redb";
    /// The directory of this server's share-key secrets, one
    /// `EPOCH.key` file (32 raw bytes, mode 0600) per epoch.
    pub const SHARE_KEYS: &str = "share-keys";
    /// This server's own Ed25519 member key seed (32 raw bytes, mode
    /// 0600), which signs its share-key publications; never handed out.
    pub const MEMBER_KEY: &str = "member.key";

    /// The file that holds `key`.
    pub fn of(key: crate::keys::BoundKey) -> &'static str {
        use crate::keys::BoundKey;
        match key {
            BoundKey::DataKey => DATA_KEY,
            BoundKey::OpaqueSetup => OPAQUE_SETUP,
            BoundKey::ClusterKey => CLUSTER_KEY,
        }
    }
}

/// Why a data directory could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// `init` was pointed at a directory that already has files.
    #[error("{0} is not empty; refusing to overwrite an existing server. Choose a new directory")]
    NotEmpty(PathBuf),
    /// `serve` was pointed at a directory that does not exist.
    #[error("data dir {0} does not exist; create one with `vmail-auth init --data-dir {0}`")]
    Missing(PathBuf),
    /// A file the server needs is absent.
    #[error(
        "{0} is missing: the data dir is incomplete. Restore it from a backup; the server will not recreate it"
    )]
    MissingFile(PathBuf),
    /// A file exists but its contents are wrong.
    #[error("{path} is corrupt: {why}. Restore it from a backup; the server will not overwrite it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The configuration file parses but its values do not fit together.
    #[error("{path}: {why}. Fix it and start the server again")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// Which key is wrong and why.
        why: ConfigError,
    },
    /// An `init` option is unusable.
    #[error("{0}; pass --listen as IP:PORT, e.g. 127.0.0.1:7443")]
    BadOption(ConfigError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Generating a TLS certificate failed.
    #[error("generating TLS certificates: {0}")]
    Tls(#[from] rcgen::Error),
    /// A key file is not the one the database was created with.
    #[error(
        "{file} does not belong to database {database}: it was replaced or comes from another server. Restore the original file; the server will not run with it"
    )]
    KeyMismatch {
        /// The key file.
        file: PathBuf,
        /// The database file.
        database: PathBuf,
    },
    /// The database could not be created or opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Options for [`init`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The directory to create.
    pub dir: PathBuf,
    /// The server's name.
    pub name: String,
    /// The listen address, for example `127.0.0.1:7443`.
    pub listen: String,
    /// The internal (Raft) listen address, for example `127.0.0.1:7444`.
    pub raft_listen: String,
    /// The host others reach this server at; empty for the listen host.
    pub advertise_host: String,
    /// Extra host names or IP addresses for the TLS certificate.
    pub sans: Vec<String>,
}

impl InitOptions {
    /// A server named `auth-1` for loopback use (`vmail demo`, tests).
    pub fn loopback(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            name: "auth-1".into(),
            listen: "127.0.0.1:0".into(),
            raft_listen: "127.0.0.1:0".into(),
            advertise_host: String::new(),
            sans: Vec::new(),
        }
    }
}

/// What [`init`] made that clients need.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// Path of the CA certificate clients must trust.
    pub ca_cert: PathBuf,
    /// The cluster public key, hex.
    pub cluster_public_key: String,
    /// Path of the ready-made client config.
    pub client_config: PathBuf,
    /// The endpoint URL written into the client config.
    pub endpoint: String,
}

/// Mode of files only the server may read.
pub(super) const SECRET: u32 = 0o600;
/// Mode of files clients may be handed.
const PUBLIC: u32 = 0o644;

pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), DataDirError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// The host part of a listen address, for the TLS certificate and client URL.
fn listen_host(listen: &str) -> &str {
    listen
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(listen)
}

/// Creates a new server's data directory, founding a new group: fresh CA,
/// cluster key, OPAQUE setup and data key. Its first `serve` makes it the
/// group's only member.
pub fn init(opts: &InitOptions) -> Result<InitReport, DataDirError> {
    create(
        opts,
        &GroupSecrets::generate()?,
        ServerConfig::default(),
        true,
    )
}

/// Creates the data directory of a server joining an existing group, with
/// the group's secrets and its policy config (TTLs, registration). The
/// server is not a member until the leader adds it (`vmail-auth join`).
pub fn init_member(
    opts: &InitOptions,
    group: &GroupSecrets,
    group_config: ServerConfig,
) -> Result<InitReport, DataDirError> {
    create(opts, group, group_config, false)
}

fn create(
    opts: &InitOptions,
    group: &GroupSecrets,
    base: ServerConfig,
    founder: bool,
) -> Result<InitReport, DataDirError> {
    let dir = &opts.dir;
    let config = ServerConfig {
        name: opts.name.clone(),
        listen: opts.listen.clone(),
        raft_listen: opts.raft_listen.clone(),
        advertise_host: opts.advertise_host.clone(),
        // Where this server's metrics are served is its own, not the group's.
        metrics_listen: String::new(),
        ..base
    };
    config.validate().map_err(DataDirError::BadOption)?;
    if dir.exists() {
        let mut entries = fs::read_dir(dir).map_err(io_err(dir))?;
        if entries.next().is_some() {
            return Err(DataDirError::NotEmpty(dir.clone()));
        }
    } else {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;

    let host = listen_host(&opts.listen).to_owned();
    let mut sans = vec![
        opts.name.clone(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    for h in [
        host.as_str(),
        listen_host(&opts.raft_listen),
        opts.advertise_host.as_str(),
    ] {
        if !h.is_empty() && h != "0.0.0.0" && h != "::" {
            sans.push(h.to_owned());
        }
    }
    sans.extend(opts.sans.iter().cloned());
    sans.sort();
    sans.dedup();
    let (server_cert, server_key) = group.issue(&opts.name, sans, None)?;

    let cluster_key = &group.cluster_key;
    let cluster_pub = hex::encode(cluster_key.verifying_key().as_bytes());
    let config_toml = toml::to_string_pretty(&config).expect("config serialises");

    write_new(
        &dir.join(files::CA_CERT),
        group.ca_cert_pem.as_bytes(),
        PUBLIC,
    )?;
    write_new(
        &dir.join(files::CA_KEY),
        group.ca_key_pem.as_bytes(),
        SECRET,
    )?;
    write_new(
        &dir.join(files::SERVER_CERT),
        server_cert.as_bytes(),
        PUBLIC,
    )?;
    write_new(&dir.join(files::SERVER_KEY), server_key.as_bytes(), SECRET)?;
    write_new(
        &dir.join(files::CLUSTER_KEY),
        cluster_key.as_bytes(),
        SECRET,
    )?;
    write_new(
        &dir.join(files::CLUSTER_PUB),
        format!("{cluster_pub}\n").as_bytes(),
        PUBLIC,
    )?;
    write_new(
        &dir.join(files::OPAQUE_SETUP),
        &group.opaque_setup.serialize(),
        SECRET,
    )?;
    write_new(
        &dir.join(files::DATA_KEY),
        group.data_key.as_bytes(),
        SECRET,
    )?;
    write_new(&dir.join(files::CONFIG), config_toml.as_bytes(), PUBLIC)?;

    let ca_path = fs::canonicalize(dir.join(files::CA_CERT)).map_err(io_err(dir))?;
    let port = opts
        .listen
        .rsplit_once(':')
        .map(|(_, p)| p)
        .unwrap_or("7443");
    let endpoint = format!("https://{}:{port}", config.public_host());
    let client = format!(
        "# vmail client configuration for the auth group of {name:?}.\n\
         # Copy it to ~/.config/vmail/config.toml, or to $VMAIL_HOME/config.toml,\n\
         # and list every member's endpoint in auth_endpoints.\n\
         auth_endpoints = [{endpoint:?}]\nca_cert = {ca:?}\ncluster_key = {cluster_pub:?}\n",
        name = opts.name,
        ca = ca_path.display().to_string(),
    );
    write_new(&dir.join(files::CLIENT_CONFIG), client.as_bytes(), PUBLIC)?;

    let binding = KeyBinding::of(&group.opaque_setup, cluster_key);
    let node_id = u64::from_le_bytes(random_bytes()) >> 1;
    Store::create(
        &dir.join(files::DATABASE),
        &opts.name,
        &group.data_key,
        &binding,
        node_id,
        founder,
    )?;

    Ok(InitReport {
        ca_cert: ca_path,
        cluster_public_key: cluster_pub,
        client_config: dir.join(files::CLIENT_CONFIG),
        endpoint,
    })
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, DataDirError> {
    let path = dir.join(name);
    fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataDirError::MissingFile(path),
        _ => DataDirError::Io { path, source: e },
    })
}

fn read_text(dir: &Path, name: &str) -> Result<String, DataDirError> {
    String::from_utf8(read(dir, name)?).map_err(|_| DataDirError::Corrupt {
        path: dir.join(name),
        why: "not UTF-8 text".into(),
    })
}

fn read_key32(dir: &Path, name: &str) -> Result<[u8; 32], DataDirError> {
    let bytes = read(dir, name)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| DataDirError::Corrupt {
            path: dir.join(name),
            why: format!("{} bytes, expected 32", bytes.len()),
        })
}

fn check_pem(dir: &Path, name: &str, tag: &str) -> Result<String, DataDirError> {
    let text = read_text(dir, name)?;
    if !text.contains(&format!("-----BEGIN {tag}")) {
        return Err(DataDirError::Corrupt {
            path: dir.join(name),
            why: format!("no PEM {tag} block"),
        });
    }
    Ok(text)
}

/// Replaces port 0 in `config.toml`'s `listen` and `raft_listen`, and in
/// `client.toml`'s endpoint, with the ports the server bound (`api`,
/// `raft`). Files that name a real port are left alone. Returns whether
/// anything changed.
pub fn record_bound_ports(dir: &Path, api: u16, raft: u16) -> Result<bool, DataDirError> {
    let mut config = load_config(dir)?;
    let endpoint = |c: &ServerConfig, port: u16| format!("\"https://{}:{port}\"", c.public_host());
    let old_endpoint = endpoint(&config, 0);
    let mut changed = false;
    for (listen, port) in [(&mut config.listen, api), (&mut config.raft_listen, raft)] {
        if let Ok(mut addr) = listen.parse::<std::net::SocketAddr>()
            && addr.port() == 0
        {
            addr.set_port(port);
            *listen = addr.to_string();
            changed = true;
        }
    }
    if !changed {
        return Ok(false);
    }
    let text = toml::to_string_pretty(&config).expect("config serialises");
    replace_file(&dir.join(files::CONFIG), text.as_bytes(), PUBLIC)?;
    let client_path = dir.join(files::CLIENT_CONFIG);
    if let Ok(client) = fs::read_to_string(&client_path)
        && client.contains(&old_endpoint)
    {
        let client = client.replace(&old_endpoint, &endpoint(&config, api));
        replace_file(&client_path, client.as_bytes(), PUBLIC)?;
    }
    Ok(true)
}

/// Replaces `path` whole with `contents`: written beside it, synced, then
/// renamed over it.
fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), DataDirError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Loads the configuration of an initialised data directory.
pub fn load_config(dir: &Path) -> Result<ServerConfig, DataDirError> {
    if !dir.is_dir() {
        return Err(DataDirError::Missing(dir.to_owned()));
    }
    let text = read_text(dir, files::CONFIG)?;
    let config: ServerConfig = toml::from_str(&text).map_err(|e| DataDirError::Corrupt {
        path: dir.join(files::CONFIG),
        why: e.to_string(),
    })?;
    config.validate().map_err(|why| DataDirError::BadConfig {
        path: dir.join(files::CONFIG),
        why,
    })?;
    Ok(config)
}

/// Opens the database of an initialised data directory with its keys; a
/// key file that does not belong to the database is named.
pub fn open_store(dir: &Path, keys: &ServerKeys) -> Result<Store, DataDirError> {
    let database = dir.join(files::DATABASE);
    Store::open(&database, keys.data_key.clone(), &keys.binding()).map_err(|e| match e {
        StoreError::KeyMismatch { key, .. } => DataDirError::KeyMismatch {
            file: dir.join(files::of(key)),
            database,
        },
        e => e.into(),
    })
}

/// Loads the keys of an initialised data directory.
pub fn load_keys(dir: &Path) -> Result<ServerKeys, DataDirError> {
    if !dir.is_dir() {
        return Err(DataDirError::Missing(dir.to_owned()));
    }
    let cluster_key = SigningKey::from_bytes(&read_key32(dir, files::CLUSTER_KEY)?);
    let published = read_text(dir, files::CLUSTER_PUB)?;
    if published.trim() != hex::encode(cluster_key.verifying_key().as_bytes()) {
        return Err(DataDirError::Corrupt {
            path: dir.join(files::CLUSTER_PUB),
            why: format!("it does not match {}", files::CLUSTER_KEY),
        });
    }
    let setup_bytes = read(dir, files::OPAQUE_SETUP)?;
    let opaque_setup =
        ServerSetup::<Suite>::deserialize(&setup_bytes).map_err(|e| DataDirError::Corrupt {
            path: dir.join(files::OPAQUE_SETUP),
            why: e.to_string(),
        })?;
    Ok(ServerKeys {
        ca_cert_pem: check_pem(dir, files::CA_CERT, "CERTIFICATE")?,
        ca_key_pem: check_pem(dir, files::CA_KEY, "PRIVATE KEY")?,
        server_cert_pem: check_pem(dir, files::SERVER_CERT, "CERTIFICATE")?,
        server_key_pem: check_pem(dir, files::SERVER_KEY, "PRIVATE KEY")?,
        cluster_key,
        opaque_setup,
        data_key: SecretKey::from_bytes(read_key32(dir, files::DATA_KEY)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> InitOptions {
        InitOptions {
            dir: dir.to_owned(),
            name: "auth-1".into(),
            listen: "127.0.0.1:0".into(),
            raft_listen: "127.0.0.1:0".into(),
            advertise_host: String::new(),
            sans: vec!["auth.example".into()],
        }
    }

    #[test]
    fn init_then_load_and_refuse_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("srv");
        let report = init(&opts(&dir)).unwrap();
        let keys = load_keys(&dir).unwrap();
        assert_eq!(
            report.cluster_public_key,
            hex::encode(keys.cluster_public_key().as_bytes())
        );
        let mode = fs::metadata(dir.join(files::DATA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let before = fs::read(dir.join(files::CLUSTER_KEY)).unwrap();
        assert!(matches!(init(&opts(&dir)), Err(DataDirError::NotEmpty(_))));
        assert_eq!(fs::read(dir.join(files::CLUSTER_KEY)).unwrap(), before);
    }

    #[test]
    fn bad_options_and_configs_are_refused_naming_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("srv");
        let err = init(&InitOptions {
            listen: "localhost:7443".into(),
            ..opts(&dir)
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("pass --listen as IP:PORT"), "{err}");
        assert!(!dir.exists(), "a refused init creates nothing");
        init(&opts(&dir)).unwrap();
        let path = dir.join(files::CONFIG);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(
            &path,
            text.replace("session_ttl_secs = 43200", "session_ttl_secs = 1"),
        )
        .unwrap();
        let err = load_config(&dir).unwrap_err().to_string();
        assert!(err.contains("session_ttl_secs = 1 is outside"), "{err}");
    }

    #[test]
    fn missing_and_corrupt_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("srv");
        assert!(matches!(load_keys(&dir), Err(DataDirError::Missing(_))));
        init(&opts(&dir)).unwrap();
        fs::write(dir.join(files::DATA_KEY), b"short").unwrap();
        let err = load_keys(&dir).unwrap_err().to_string();
        assert!(err.contains("data.key is corrupt"), "{err}");
        fs::remove_file(dir.join(files::OPAQUE_SETUP)).unwrap();
        let err = load_keys(&dir).unwrap_err().to_string();
        assert!(err.contains("opaque-setup.bin is missing"), "{err}");
    }
}
