//! The peer daemon's configuration: `DIR/node.toml` (or `--config FILE`),
//! every field optional with a documented default.

use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// Default holder quota: 1 GiB of ciphertext.
pub const DEFAULT_QUOTA_BYTES: u64 = 1 << 30;
/// Default largest voicemail: 16 MiB of audio.
pub const DEFAULT_MAX_VOICEMAIL_BYTES: u64 = 16 << 20;
/// Default number of copies a leave stores.
pub const DEFAULT_REPLICAS: u32 = 3;
/// Most copies a leave may ask for.
pub const MAX_REPLICAS: u32 = crate::locator::MAX_COPIES as u32;
/// Name of the config file in the data dir.
pub const CONFIG_FILE: &str = "node.toml";

/// How a peer runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Listen addresses. Default: TCP and QUIC on every interface, OS-chosen ports.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, each ending in `/p2p/<peer id>`. Default: none;
    /// `VMAIL_BOOTSTRAP` (comma-separated) adds more.
    pub bootstrap: Vec<Multiaddr>,
    /// Ciphertext bytes this peer holds for others. Default 1 GiB.
    pub quota_bytes: u64,
    /// Largest voicemail (plaintext) this peer sends or holds. Default 16 MiB.
    pub max_voicemail_bytes: u64,
    /// Copies a leave stores unless told otherwise. Default 3.
    pub replicas: u32,
    /// Most established connections. Default 256.
    pub max_connections: u32,
    /// Most established connections to one peer. Default 4.
    pub max_connections_per_peer: u32,
    /// Most incoming connections in their handshake. Default 64.
    pub max_pending_incoming: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid"),
                "/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("valid"),
            ],
            bootstrap: Vec::new(),
            quota_bytes: DEFAULT_QUOTA_BYTES,
            max_voicemail_bytes: DEFAULT_MAX_VOICEMAIL_BYTES,
            replicas: DEFAULT_REPLICAS,
            max_connections: 256,
            max_connections_per_peer: 4,
            max_pending_incoming: 64,
        }
    }
}

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
#[error("node config {path}: {why}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub why: String,
}

impl NodeConfig {
    /// A peer listening on loopback TCP only, for demos and tests.
    pub fn loopback() -> Self {
        Self {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid")],
            ..Self::default()
        }
    }

    /// Reads `file`, or `DIR/node.toml` when `file` is None; a missing
    /// default file means defaults. Then adds `VMAIL_BOOTSTRAP`.
    pub fn load(dir: &Path, file: Option<&Path>) -> Result<Self, ConfigError> {
        let path = file.map_or_else(|| dir.join(CONFIG_FILE), Path::to_path_buf);
        let err = |why: String| ConfigError {
            path: path.clone(),
            why,
        };
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| err(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.is_none() => Self::default(),
            Err(e) => return Err(err(e.to_string())),
        };
        if let Ok(extra) = std::env::var("VMAIL_BOOTSTRAP") {
            for a in extra.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                config.bootstrap.push(
                    a.parse()
                        .map_err(|e| err(format!("VMAIL_BOOTSTRAP entry {a:?}: {e}")))?,
                );
            }
        }
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Checks ranges; the message names the field and the allowed values.
    pub fn validate(&self) -> Result<(), String> {
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return Err(format!(
                "replicas = {} must be 1 to {MAX_REPLICAS}",
                self.replicas
            ));
        }
        if self.max_voicemail_bytes == 0 || self.max_voicemail_bytes > 1 << 30 {
            return Err(format!(
                "max_voicemail_bytes = {} must be 1 to 1073741824",
                self.max_voicemail_bytes
            ));
        }
        if self.max_connections == 0 || self.max_connections_per_peer == 0 {
            return Err("max_connections and max_connections_per_peer must be at least 1".into());
        }
        Ok(())
    }

    /// Largest ciphertext this peer holds.
    pub fn max_object_bytes(&self) -> u64 {
        crate::crypto::ciphertext_len(self.max_voicemail_bytes)
    }
}
