//! The peer daemon's configuration: `DIR/node.toml` (or `--config FILE`),
//! every field optional with a documented default.
//!
//! `[sip]` lives in `sip.rs` beside it, `[metrics]` in `metrics.rs`, `[web]` in `web.rs`. Over 600 lines since issue 17 added
//! its bounds here; the split by concern (bounds apart from the protocol
//! or store they guard) is owed, not done.

mod metrics;
mod sip;
mod web;

use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::core::erasure::{ErasureError, MAX_SHARDS, Redundancy};
pub use metrics::MetricsConfig;
pub use sip::SipConfig;
pub use web::WebConfig;

use crate::core::score::{FairScorer, FrequencyRule, PaperScorer, RandomScorer, Scorer};

/// Default holder quota: 1 GiB of ciphertext.
pub const DEFAULT_QUOTA_BYTES: u64 = 1 << 30;
/// Default most objects held for others.
pub const DEFAULT_MAX_OBJECTS: usize = 16_384;
/// Default largest voicemail: 16 MiB of audio.
pub const DEFAULT_MAX_VOICEMAIL_BYTES: u64 = 16 << 20;
/// Default most remote provider records held in all.
pub const DEFAULT_MAX_REMOTE_RECORDS: usize = 131_072;
/// Default most remote provider records held from one source peer: an
/// honest holder announces at most its object count (16384 by default).
pub const DEFAULT_MAX_RECORDS_PER_PEER: usize = 16_384;
/// Default most remote providers held for one key (Kademlia's K).
pub const DEFAULT_MAX_PROVIDERS_PER_KEY: usize = 20;
/// Default most addresses kept with one remote record: a direct TCP and
/// QUIC address on two interfaces.
pub const DEFAULT_MAX_ADDRS_PER_RECORD: usize = 4;
/// Default most routing-table peers closer to a key than this peer for a
/// remote record of that key to be taken (Kademlia's K).
pub const DEFAULT_CLOSER_PEERS: usize = 20;
/// Default longest hand-off of held objects when the daemon stops.
pub const DEFAULT_HANDOFF_TIMEOUT_SECS: u64 = 30;
/// Longest hand-off that may be configured: an hour.
pub const MAX_HANDOFF_TIMEOUT_SECS: u64 = 3600;
/// Name of the config file in the data dir.
pub const CONFIG_FILE: &str = "node.toml";

/// How a peer runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Listen addresses. Default: TCP and QUIC on every interface, OS-chosen ports.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, with or without a `/p2p/<peer id>` ending. Default: none;
    /// `VMAIL_BOOTSTRAP` (comma-separated) adds more.
    pub bootstrap: Vec<Multiaddr>,
    /// Ciphertext bytes this peer holds for others, each object charged its
    /// header and at least 4 KiB. Default 1 GiB.
    pub quota_bytes: u64,
    /// Most objects this peer holds for others. Default 16384.
    pub max_objects: usize,
    /// The longest this peer keeps an object, days: grants that ask for
    /// more are refused. Default 30; 1 to 365.
    pub max_retention_days: u64,
    /// The auth group's cluster public key (64 hex digits). Holders store
    /// only what it granted; without it this peer stores nothing for
    /// others. Unset: `vmail node run` takes the CLI's (`--cluster-key`,
    /// `VMAIL_CLUSTER_KEY` or `cluster_key` in the home's config.toml).
    pub cluster_key: Option<String>,
    /// The auth group's threshold key (64 hex digits), once it has one.
    /// With it, holders also require the group's signature (t servers) on
    /// every grant, deposit proof and delete order, so no single stolen
    /// auth server can make them store or delete anything. Unset: `vmail
    /// node run` takes the CLI's (`--group-key`, `VMAIL_GROUP_KEY` or
    /// `group_key` in the home's config.toml), and without one holders
    /// check the cluster key alone.
    pub group_key: Option<String>,
    /// Largest voicemail (plaintext) this peer sends or holds. Default 16 MiB.
    pub max_voicemail_bytes: u64,
    /// Whole copies a leave stores unless told otherwise. Unset (the
    /// default): `placement.redundancy` decides.
    pub replicas: Option<u32>,
    /// Most established connections. Default 256.
    pub max_connections: u32,
    /// Most established connections to one peer. Default 4.
    pub max_connections_per_peer: u32,
    /// Most incoming connections in their handshake. Default 64.
    pub max_pending_incoming: u32,
    /// Connected peers kept when idle. Beyond it, every 15 s the peers
    /// idle longest (a minute at least) are disconnected, never one in the
    /// gossip mesh, this peer's supernode, a peer attached to it, or one a
    /// blob exchange is under way with. Default 32.
    pub target_peers: usize,
    /// Supernode adverts and election (`[supernode]`).
    pub supernode: SupernodeConfig,
    /// Storage placement, redundancy and repair (`[placement]`).
    pub placement: PlacementConfig,
    /// Bounds of the DHT provider-record store (`[providers]`).
    pub providers: ProvidersConfig,
    /// The SIP front for the user's softphone (`[sip]`), off by default.
    pub sip: SipConfig,
    /// The web inbox (`[web]`), off by default.
    pub web: WebConfig,
    /// Longest time, seconds, a stopping daemon spends handing its held
    /// objects to other peers; what is not handed off by then stays on
    /// this disk (siblings repair it if this peer does not come back).
    /// Default 30; 0 skips the hand-off; at most 3600. `vmail node run
    /// --handoff-timeout` sets it.
    pub handoff_timeout_secs: u64,
    /// The Prometheus endpoint (`[metrics]`), off by default.
    pub metrics: MetricsConfig,
}

/// `[providers]`: what this peer keeps of the provider records other
/// peers announce to it (docs/SECURITY.md, "Fetch and provider records").
/// This peer's own announcements are kept apart and never refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvidersConfig {
    /// Most remote records held in all. Default 131072.
    pub max_remote_records: usize,
    /// Most remote records held from one peer. Default 16384, an honest
    /// holder's default object count.
    pub max_records_per_peer: usize,
    /// Most remote providers held for one key. Default 20 (Kademlia's K).
    pub max_providers_per_key: usize,
    /// Most addresses kept with one record; the rest are dropped. Default 4.
    pub max_addrs_per_record: usize,
    /// A record is taken only while fewer than this many routing-table
    /// peers are closer to its key than this peer. Default 20 (Kademlia's
    /// K: honest announcers send to the K closest).
    pub closer_peers: usize,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        Self {
            max_remote_records: DEFAULT_MAX_REMOTE_RECORDS,
            max_records_per_peer: DEFAULT_MAX_RECORDS_PER_PEER,
            max_providers_per_key: DEFAULT_MAX_PROVIDERS_PER_KEY,
            max_addrs_per_record: DEFAULT_MAX_ADDRS_PER_RECORD,
            closer_peers: DEFAULT_CLOSER_PEERS,
        }
    }
}

impl ProvidersConfig {
    /// Every bound at least 1.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        for (field, value) in [
            ("max_remote_records", self.max_remote_records),
            ("max_records_per_peer", self.max_records_per_peer),
            ("max_providers_per_key", self.max_providers_per_key),
            ("max_addrs_per_record", self.max_addrs_per_record),
            ("closer_peers", self.closer_peers),
        ] {
            if value == 0 {
                return Err(InvalidValue::Providers(field));
            }
        }
        Ok(())
    }
}

/// `[placement]`: how a leave picks holders and makes the voicemail
/// redundant, and how holders repair it (docs/PLACEMENT.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// `"K/N"` for Reed-Solomon (any K of N shards rebuild), or `"Rx"` for R
    /// whole copies. Default `"4/8"`, the churn study's choice.
    pub redundancy: String,
    /// `"paper-min"` (the paper's `a·e·c / min{f,1}`), `"paper-max"`
    /// (`/ max{f,1}`), `"three-choice"` (the best of three random
    /// candidates by the `max{f,1}` score with free space damped, which
    /// spreads load: docs/PLACEMENT.md) or `"random"`. Default
    /// `"paper-max"`.
    pub scorer: String,
    /// Peer ids to favour as holders.
    pub preferred: Vec<String>,
    /// Seconds between a holder's checks of its voicemails' other shards.
    /// Default 600.
    pub repair_interval_secs: u64,
    /// Most shards one peer regenerates per check. Default 8.
    pub repair_max_shards: usize,
    /// Seconds a shard must have been missing before it is regenerated
    /// (lazy repair). Default 86400, a day.
    pub repair_grace_secs: u64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            redundancy: "4/8".into(),
            scorer: "paper-max".into(),
            preferred: Vec::new(),
            repair_interval_secs: 600,
            repair_max_shards: 8,
            repair_grace_secs: 86_400,
        }
    }
}

impl PlacementConfig {
    /// The configured redundancy.
    pub fn redundancy(&self) -> Result<Redundancy, InvalidValue> {
        self.redundancy.parse().map_err(InvalidValue::Redundancy)
    }

    /// The configured scorer.
    pub fn scorer(&self) -> Result<Box<dyn Scorer + Send + Sync>, InvalidValue> {
        let paper = |rule| -> Box<dyn Scorer + Send + Sync> {
            Box::new(PaperScorer {
                rule,
                ..PaperScorer::default()
            })
        };
        match self.scorer.as_str() {
            "paper-min" => Ok(paper(FrequencyRule::Min)),
            "paper-max" => Ok(paper(FrequencyRule::Max)),
            "three-choice" => Ok(Box::new(FairScorer::THREE_CHOICE)),
            "random" => Ok(Box::new(RandomScorer)),
            other => Err(InvalidValue::Scorer(other.to_owned())),
        }
    }

    /// The preferred peers.
    pub fn preferred(&self) -> Result<Vec<PeerId>, InvalidValue> {
        self.preferred
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e: libp2p::identity::ParseError| InvalidValue::Preferred {
                        entry: p.clone(),
                        why: e.to_string(),
                    })
            })
            .collect()
    }

    fn validate(&self) -> Result<(), InvalidValue> {
        self.redundancy()?;
        self.scorer()?;
        self.preferred()?;
        if !(1..=86_400).contains(&self.repair_interval_secs) {
            return Err(InvalidValue::RepairInterval(self.repair_interval_secs));
        }
        if self.repair_grace_secs > 30 * 86_400 {
            return Err(InvalidValue::RepairGrace(self.repair_grace_secs));
        }
        if !(1..=1024).contains(&self.repair_max_shards) {
            return Err(InvalidValue::RepairMaxShards(self.repair_max_shards));
        }
        Ok(())
    }
}

/// `[supernode]`: what this peer says about itself in its adverts, the
/// election's parameters (which must be the same on every peer), and how it
/// attaches to a supernode and serves as one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupernodeConfig {
    /// `true`: the operator declares this peer publicly reachable; `false`:
    /// never stand; unset: as AutoNAT finds.
    pub public: Option<bool>,
    /// Upload bandwidth to advertise, kbit/s; 0 (unknown) never qualifies.
    pub bandwidth_kbps: u64,
    /// Seconds between adverts.
    pub advert_interval_secs: u64,
    /// Peers per supernode: the serving supernodes and the peers attached
    /// to them, or the advertising peers if more (`election::population`).
    pub peers_per_sn: usize,
    /// Fewest supernodes, when that many qualify.
    pub min_sns: usize,
    /// Most supernodes.
    pub max_sns: usize,
    /// Thresholds to stand for election.
    pub min_cpu_cores: u32,
    /// MiB.
    pub min_memory_mib: u64,
    /// kbit/s.
    pub min_bandwidth_kbps: u64,
    /// Seconds.
    pub min_uptime_secs: u64,
    /// Milliseconds between heartbeats to this peer's supernode.
    pub heartbeat_ms: u64,
    /// Most peers attached while this peer serves.
    pub max_attached: usize,
    /// Relay reservations granted while this peer serves; 0 refuses all.
    /// Only peers attached to this supernode reserve.
    pub relay_slots: usize,
    /// Most attached peers holding relay reservations from one IP address.
    /// Default 8 ([`crate::supernode::budget::DEFAULT_RELAY_SLOTS_PER_IP`]).
    pub relay_slots_per_ip: usize,
    /// Cap on every table keyed by a remote peer id (adverts, dial-check
    /// results, DHT look-ups of claimants, peer addresses); each evicts its
    /// oldest entry when full. Default 4096
    /// ([`crate::supernode::budget::DEFAULT_MAX_TRACKED_PEERS`]).
    pub max_tracked_peers: usize,
    /// Try DCUtR hole punching on relayed connections.
    pub hole_punching: bool,
}

impl Default for SupernodeConfig {
    fn default() -> Self {
        let e = crate::supernode::election::ElectionConfig::default();
        Self {
            public: None,
            bandwidth_kbps: 0,
            advert_interval_secs: 20,
            peers_per_sn: e.peers_per_sn,
            min_sns: e.min_sns,
            max_sns: e.max_sns,
            min_cpu_cores: e.thresholds.min_cpu_cores,
            min_memory_mib: e.thresholds.min_memory_mib,
            min_bandwidth_kbps: e.thresholds.min_bandwidth_kbps,
            min_uptime_secs: e.thresholds.min_uptime_secs,
            heartbeat_ms: 1000,
            max_attached: 128,
            relay_slots: 128,
            relay_slots_per_ip: crate::supernode::budget::DEFAULT_RELAY_SLOTS_PER_IP,
            max_tracked_peers: crate::supernode::budget::DEFAULT_MAX_TRACKED_PEERS,
            hole_punching: true,
        }
    }
}

/// The least `max_tracked_peers`: below it a small network's honest
/// adverts would already evict each other.
pub const MIN_TRACKED_PEERS: usize = 4;

impl SupernodeConfig {
    /// The election's parameters.
    pub fn election(&self) -> crate::supernode::election::ElectionConfig {
        crate::supernode::election::ElectionConfig {
            peers_per_sn: self.peers_per_sn,
            min_sns: self.min_sns,
            max_sns: self.max_sns,
            thresholds: crate::supernode::election::Thresholds {
                min_cpu_cores: self.min_cpu_cores,
                min_memory_mib: self.min_memory_mib,
                min_bandwidth_kbps: self.min_bandwidth_kbps,
                min_uptime_secs: self.min_uptime_secs,
            },
            // Four missed adverts: a dead supernode is replaced soon after.
            max_advert_age_secs: (4 * self.advert_interval_secs + 2)
                .min(crate::supernode::advert::MAX_ADVERT_AGE_SECS),
            ..crate::supernode::election::ElectionConfig::default()
        }
    }

    /// Time between heartbeats.
    pub fn heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.heartbeat_ms)
    }

    fn validate(&self) -> Result<(), InvalidValue> {
        let most = crate::supernode::advert::MAX_ADVERT_AGE_SECS / 2;
        if !(1..=most).contains(&self.advert_interval_secs) {
            return Err(InvalidValue::AdvertInterval {
                value: self.advert_interval_secs,
                most,
            });
        }
        if self.peers_per_sn == 0 || self.max_sns == 0 || self.min_sns > self.max_sns {
            return Err(InvalidValue::Election {
                peers_per_sn: self.peers_per_sn,
                min_sns: self.min_sns,
                max_sns: self.max_sns,
            });
        }
        if !(100..=10_000).contains(&self.heartbeat_ms) || self.max_attached == 0 {
            return Err(InvalidValue::Attach {
                heartbeat_ms: self.heartbeat_ms,
                max_attached: self.max_attached,
            });
        }
        if self.max_tracked_peers < MIN_TRACKED_PEERS || self.relay_slots_per_ip == 0 {
            return Err(InvalidValue::Tracked {
                max_tracked_peers: self.max_tracked_peers,
                relay_slots_per_ip: self.relay_slots_per_ip,
            });
        }
        let max = crate::supernode::advert::limits::BANDWIDTH_KBPS;
        if self.bandwidth_kbps > max {
            return Err(InvalidValue::Bandwidth {
                value: self.bandwidth_kbps,
                max,
            });
        }
        Ok(())
    }
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
            max_objects: DEFAULT_MAX_OBJECTS,
            max_retention_days: 30,
            cluster_key: None,
            group_key: None,
            max_voicemail_bytes: DEFAULT_MAX_VOICEMAIL_BYTES,
            replicas: None,
            max_connections: 256,
            max_connections_per_peer: 4,
            max_pending_incoming: 64,
            target_peers: 32,
            supernode: SupernodeConfig::default(),
            placement: PlacementConfig::default(),
            providers: ProvidersConfig::default(),
            sip: SipConfig::default(),
            web: WebConfig::default(),
            handoff_timeout_secs: DEFAULT_HANDOFF_TIMEOUT_SECS,
            metrics: MetricsConfig::default(),
        }
    }
}

/// A `node.toml` value that cannot be used: the message names the key and
/// the values allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    /// A `[sip]` value is out of range.
    #[error("sip.{0}")]
    Sip(String),
    /// A `[web]` value cannot be used.
    #[error("web.{0}")]
    Web(String),
    /// `placement.redundancy` does not parse or is out of range.
    #[error("placement.redundancy: {0}")]
    Redundancy(ErasureError),
    /// `replicas` is out of range.
    #[error("replicas = {0} must be 1 to {MAX_SHARDS}")]
    Replicas(u32),
    /// A `providers` bound is 0.
    #[error("providers.{0} = 0: it must be at least 1 (see the sample node.toml for defaults)")]
    Providers(&'static str),
    /// `placement.scorer` names no scorer.
    #[error(
        "placement.scorer = {0:?}: use \"paper-min\", \"paper-max\", \"three-choice\" or \"random\""
    )]
    Scorer(String),
    /// A `placement.preferred` entry is not a peer id.
    #[error("placement.preferred entry {entry:?}: {why}")]
    Preferred {
        /// The entry.
        entry: String,
        /// Why it does not parse.
        why: String,
    },
    /// `placement.repair_interval_secs` is out of range.
    #[error("placement.repair_interval_secs = {0} must be 1 to 86400")]
    RepairInterval(u64),
    /// `placement.repair_grace_secs` is out of range.
    #[error("placement.repair_grace_secs = {0} must be at most 2592000 (30 days)")]
    RepairGrace(u64),
    /// `placement.repair_max_shards` is out of range.
    #[error("placement.repair_max_shards = {0} must be 1 to 1024")]
    RepairMaxShards(usize),
    /// `supernode.advert_interval_secs` is out of range.
    #[error(
        "supernode.advert_interval_secs = {value} must be 1 to {most}, so adverts never go stale between two"
    )]
    AdvertInterval {
        /// The value.
        value: u64,
        /// The largest allowed.
        most: u64,
    },
    /// A per-peer table cap or the per-IP relay share is too small.
    #[error(
        "supernode: max_tracked_peers = {max_tracked_peers} must be at least {MIN_TRACKED_PEERS} and relay_slots_per_ip = {relay_slots_per_ip} at least 1"
    )]
    Tracked {
        /// The table cap.
        max_tracked_peers: usize,
        /// The per-IP relay share.
        relay_slots_per_ip: usize,
    },
    /// The election's bounds do not fit together.
    #[error(
        "supernode: peers_per_sn = {peers_per_sn} and max_sns = {max_sns} must be at least 1, and min_sns = {min_sns} at most max_sns"
    )]
    Election {
        /// `peers_per_sn`.
        peers_per_sn: usize,
        /// `min_sns`.
        min_sns: usize,
        /// `max_sns`.
        max_sns: usize,
    },
    /// The attachment settings are out of range.
    #[error(
        "supernode: heartbeat_ms = {heartbeat_ms} must be 100 to 10000, and max_attached = {max_attached} at least 1"
    )]
    Attach {
        /// `heartbeat_ms`.
        heartbeat_ms: u64,
        /// `max_attached`.
        max_attached: usize,
    },
    /// `supernode.bandwidth_kbps` is more than an advert may carry.
    #[error("supernode.bandwidth_kbps = {value} is above {max}")]
    Bandwidth {
        /// The value.
        value: u64,
        /// The largest an advert carries.
        max: u64,
    },
    /// `max_voicemail_bytes` is out of range.
    #[error("max_voicemail_bytes = {0} must be 1 to 1073741824")]
    MaxVoicemailBytes(u64),
    /// `target_peers` is zero.
    #[error("target_peers = 0 would disconnect every idle peer: use at least 1 (default 32)")]
    TargetPeers,
    /// A connection limit is zero.
    #[error("max_connections and max_connections_per_peer must be at least 1")]
    Connections,
    /// `max_objects` is zero.
    #[error("max_objects must be at least 1")]
    MaxObjects,
    /// `max_retention_days` is out of range.
    #[error("max_retention_days = {0} must be 1 to 365")]
    MaxRetention(u64),
    /// `handoff_timeout_secs` is out of range.
    #[error("handoff_timeout_secs = {0} must be 0 (no hand-off) to {MAX_HANDOFF_TIMEOUT_SECS}")]
    HandoffTimeout(u64),
    /// `cluster_key` is not an ed25519 public key.
    #[error("cluster_key {0:?}: {1}")]
    ClusterKey(String, String),
    /// `group_key` is not an ed25519 public key.
    #[error("group_key {0:?}: {1}")]
    GroupKey(String, String),
}

/// Why the config could not be used. Every message starts with the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("node config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a node config.
    #[error("node config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said.
        source: toml::de::Error,
    },
    /// A `VMAIL_BOOTSTRAP` entry is not a multiaddr.
    #[error("node config {path}: VMAIL_BOOTSTRAP entry {entry:?}: {source}")]
    Bootstrap {
        /// The file.
        path: PathBuf,
        /// The entry.
        entry: String,
        /// Why it does not parse.
        source: libp2p::multiaddr::Error,
    },
    /// A value is out of range.
    #[error("node config {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which value, and why.
        source: InvalidValue,
    },
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
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.is_none() => Self::default(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        if let Ok(extra) = std::env::var("VMAIL_BOOTSTRAP") {
            for a in extra.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                let addr = a.parse().map_err(|source| ConfigError::Bootstrap {
                    path: path.clone(),
                    entry: a.to_owned(),
                    source,
                })?;
                config.bootstrap.push(addr);
            }
        }
        config
            .validate()
            .map_err(|source| ConfigError::Invalid { path, source })?;
        Ok(config)
    }

    /// Checks ranges; the message names the field and the allowed values.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        self.redundancy()?;
        self.placement.validate()?;
        if self.max_voicemail_bytes == 0 || self.max_voicemail_bytes > 1 << 30 {
            return Err(InvalidValue::MaxVoicemailBytes(self.max_voicemail_bytes));
        }
        if self.target_peers == 0 {
            return Err(InvalidValue::TargetPeers);
        }
        if self.max_connections == 0 || self.max_connections_per_peer == 0 {
            return Err(InvalidValue::Connections);
        }
        if self.max_objects == 0 {
            return Err(InvalidValue::MaxObjects);
        }
        if !(1..=365).contains(&self.max_retention_days) {
            return Err(InvalidValue::MaxRetention(self.max_retention_days));
        }
        if self.handoff_timeout_secs > MAX_HANDOFF_TIMEOUT_SECS {
            return Err(InvalidValue::HandoffTimeout(self.handoff_timeout_secs));
        }
        self.cluster_key()?;
        self.group_key()?;
        self.supernode.validate()?;
        self.providers.validate()?;
        self.sip.validate()?;
        self.web.validate()?;
        Ok(())
    }

    /// What a leave stores unless told otherwise.
    pub fn redundancy(&self) -> Result<Redundancy, InvalidValue> {
        match self.replicas {
            Some(r) => Redundancy::Replicas(u8::try_from(r).unwrap_or(0))
                .validate()
                .map_err(|_| InvalidValue::Replicas(r)),
            None => self.placement.redundancy(),
        }
    }

    /// The configured cluster key, if any.
    pub fn cluster_key(&self) -> Result<Option<ed25519_dalek::VerifyingKey>, InvalidValue> {
        parse_key(self.cluster_key.as_deref(), InvalidValue::ClusterKey)
    }

    /// The configured group key, if any.
    pub fn group_key(&self) -> Result<Option<ed25519_dalek::VerifyingKey>, InvalidValue> {
        parse_key(self.group_key.as_deref(), InvalidValue::GroupKey)
    }

    /// Largest ciphertext this peer holds.
    pub fn max_object_bytes(&self) -> u64 {
        crate::core::crypto::ciphertext_len(self.max_voicemail_bytes)
    }
}

/// A public key in hex, if set; `bad` names the setting.
fn parse_key(
    hex_key: Option<&str>,
    bad: fn(String, String) -> InvalidValue,
) -> Result<Option<ed25519_dalek::VerifyingKey>, InvalidValue> {
    let Some(hex_key) = hex_key else {
        return Ok(None);
    };
    let bytes = hex::decode(hex_key.trim()).map_err(|e| bad(hex_key.to_owned(), e.to_string()))?;
    vmail_proto::cert::parse_identity_key(&bytes)
        .map(Some)
        .map_err(|why| bad(hex_key.to_owned(), why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_section_reads_and_refuses_what_cannot_work() {
        let c: NodeConfig =
            toml::from_str("[sip]\nlisten = \"127.0.0.1:5060\"\nrecord_prefix = \"vm-\"\n")
                .unwrap();
        assert_eq!(c.sip.listen, Some("127.0.0.1:5060".parse().unwrap()));
        assert_eq!(c.sip.max_calls, 4);
        c.validate().unwrap();
        for (toml, key) in [
            (
                "listen = \"0.0.0.0:5060\"",
                "sip.listen: 0.0.0.0:5060 names no one address",
            ),
            ("max_recording_secs = 0", "sip.max_recording_secs"),
            ("min_expires = 7200", "sip.min_expires"),
        ] {
            let c: NodeConfig = toml::from_str(&format!("[sip]\n{toml}\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn the_web_inbox_is_off_by_default_and_loopback_unless_allowed() {
        assert_eq!(NodeConfig::default().web.listen, None);
        let web = |toml: &str| toml::from_str::<NodeConfig>(&format!("[web]\n{toml}\n")).unwrap();
        web("listen = \"127.0.0.1:8380\"").validate().unwrap();
        web("listen = \"[::1]:8380\"").validate().unwrap();
        for addr in ["0.0.0.0:8380", "192.168.1.5:8380"] {
            let e = web(&format!("listen = \"{addr}\""))
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("web.listen: {addr} is not a loopback address"))
                    && e.contains("allow_remote"),
                "{e}"
            );
            web(&format!("listen = \"{addr}\"\nallow_remote = true"))
                .validate()
                .unwrap();
        }
        assert!(toml::from_str::<NodeConfig>("[web]\nport = 1\n").is_err());
    }

    #[test]
    fn metrics_section_and_handoff_timeout_read_and_are_checked() {
        let c = NodeConfig::default();
        assert_eq!(c.metrics.listen, None, "metrics are off by default");
        assert_eq!(c.handoff_timeout_secs, 30);
        let c: NodeConfig =
            toml::from_str("handoff_timeout_secs = 0\n[metrics]\nlisten = \"0.0.0.0:9101\"\n")
                .unwrap();
        assert_eq!(c.metrics.listen, Some("0.0.0.0:9101".parse().unwrap()));
        c.validate().unwrap();
        assert!(toml::from_str::<NodeConfig>("[metrics]\nlisten = \"nowhere\"\n").is_err());
        assert!(toml::from_str::<NodeConfig>("[metrics]\nport = 9101\n").is_err());
        let c: NodeConfig = toml::from_str("handoff_timeout_secs = 3601\n").unwrap();
        assert_eq!(c.validate(), Err(InvalidValue::HandoffTimeout(3601)));
    }

    #[test]
    fn providers_section_reads_and_refuses_zero_bounds() {
        assert!(toml::from_str::<NodeConfig>("[providers]\nclose_peers = 3\n").is_err());
        assert_eq!(NodeConfig::default().providers, ProvidersConfig::default());
        let c: NodeConfig =
            toml::from_str("[providers]\ncloser_peers = 3\nmax_addrs_per_record = 2\n").unwrap();
        assert_eq!(c.providers.closer_peers, 3);
        assert_eq!(c.providers.max_addrs_per_record, 2);
        assert_eq!(c.providers.max_remote_records, DEFAULT_MAX_REMOTE_RECORDS);
        c.validate().unwrap();
        let c: NodeConfig = toml::from_str("[providers]\nmax_records_per_peer = 0\n").unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(e, InvalidValue::Providers("max_records_per_peer"));
        assert!(e.to_string().contains("providers.max_records_per_peer = 0"));
    }

    #[test]
    fn placement_scorer_names_every_scorer_and_lists_them_on_a_typo() {
        for name in ["paper-min", "paper-max", "three-choice", "random"] {
            let c: NodeConfig =
                toml::from_str(&format!("[placement]\nscorer = \"{name}\"\n")).unwrap();
            c.validate().unwrap();
        }
        let three = PlacementConfig {
            scorer: "three-choice".into(),
            ..PlacementConfig::default()
        }
        .scorer()
        .unwrap();
        assert_eq!(three.order(), crate::core::score::Order::Choices(3));
        let c: NodeConfig = toml::from_str("[placement]\nscorer = \"three_choice\"\n").unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(e, InvalidValue::Scorer("three_choice".into()));
        let msg = e.to_string();
        for name in ["paper-min", "paper-max", "three-choice", "random"] {
            assert!(msg.contains(&format!("\"{name}\"")), "{msg}");
        }
        assert_eq!(PlacementConfig::default().scorer, "paper-max");
    }
}
