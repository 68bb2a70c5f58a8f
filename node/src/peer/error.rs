//! Why a peer operation failed.

use std::path::PathBuf;

use vmail_proto::names::NameError;

use crate::auth_client::ClientError;
use crate::core::crypto::DecryptError;
use crate::core::erasure::{ErasureError, Redundancy};
use crate::core::locator::LocatorError;
use crate::overlay::objects::StoreError;
use crate::overlay::swarm::NetworkError;

/// Why a peer operation failed. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No session.
    #[error("not logged in: run `vmail login USER` first")]
    NotLoggedIn,
    /// Empty voicemail.
    #[error("the voicemail is empty; nothing was stored")]
    Empty,
    /// Oversize voicemail.
    #[error("the voicemail is {len} bytes; the limit is {max} bytes. Nothing was stored")]
    TooLarge {
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Redundancy out of range.
    #[error("{0}; nothing was stored")]
    Redundancy(#[from] ErasureError),
    /// A recipient name is malformed.
    #[error("{0}; nothing was stored")]
    BadName(#[from] NameError),
    /// A recipient is not registered.
    #[error("unknown recipient {0:?}: no such user at the auth servers. Nothing was stored")]
    UnknownRecipient(String),
    /// The routing table is empty.
    #[error(
        "no reachable peers to store on: is the overlay running, and is a bootstrap peer configured (VMAIL_BOOTSTRAP or bootstrap in node.toml)? Nothing was stored"
    )]
    NoPeers,
    /// Fewer peers known than shards to place.
    #[error(
        "{redundancy} needs {needed} holders but only {known} other peers are known; use fewer shards (--erasure K/N or --replicas R) or wait for more peers. Nothing was stored"
    )]
    TooFewPeers {
        /// The redundancy asked for.
        redundancy: Redundancy,
        /// Holders it needs.
        needed: usize,
        /// Peers known.
        known: usize,
    },
    /// Fewer holders acked than asked for.
    #[error("only {got} of {wanted} holders accepted a shard, so nothing was deposited and the stored shards were withdrawn. Failures: {}", .failures.join("; "))]
    NotEnoughHolders {
        /// Copies asked for.
        wanted: usize,
        /// Copies acked.
        got: usize,
        /// What went wrong where.
        failures: Vec<String>,
    },
    /// The auth servers refused or failed.
    #[error(transparent)]
    Auth(#[from] ClientError),
    /// No pending voicemail has this id.
    #[error("no voicemail {0} is waiting for you: run `vmail inbox` to list them")]
    NoSuchVoicemail(String),
    /// The locator cannot be read.
    #[error(transparent)]
    Locator(#[from] LocatorError),
    /// Too few shards could be fetched, checked and decoded.
    #[error("voicemail {id} cannot be rebuilt: fewer than the shards needed were found intact; it stays in your inbox. {}", .failures.join("; "))]
    AllCopiesFailed {
        /// The voicemail.
        id: String,
        /// What failed where.
        failures: Vec<String>,
    },
    /// A copy matched its hash but did not decrypt: the sender's key or
    /// locator is wrong.
    #[error(
        "voicemail {id} does not decrypt with the key the auth server gave ({why}); it stays in your inbox"
    )]
    Decrypt {
        /// The voicemail.
        id: String,
        /// Why.
        why: DecryptError,
    },
    /// The network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration is unusable.
    #[error("node config: {0}")]
    Config(String),
    /// The data dir could not be used.
    #[error("peer data dir {path}: {why}")]
    DataDir {
        /// The dir or file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}
