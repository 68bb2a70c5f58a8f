//! Why a peer operation failed: one error per operation, each message
//! saying what to do next. The control API maps each to a gRPC code in one
//! table (`control::Coded`).

use std::fmt::Display;
use std::path::PathBuf;

use vmail_proto::names::NameError;

use super::fetch::FetchFailure;
use super::upload_plan::HolderFailure;
use crate::auth_client::ClientError;
use crate::config::InvalidValue;
use crate::core::crypto::DecryptError;
use crate::core::erasure::{ErasureError, Redundancy};
use crate::core::locator::LocatorError;
use crate::overlay::objects::ObjectStoreError;
use crate::overlay::swarm::NetworkError;

/// `items` on one line, `; ` between them.
fn joined<T: Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Failures a leave error lists before it only counts the rest.
const SHOWN_FAILURES: usize = 3;

/// The first [`SHOWN_FAILURES`] failures and how many more there were.
fn first_failures<T: Display>(items: &[T]) -> String {
    let shown = joined(&items[..items.len().min(SHOWN_FAILURES)]);
    match items.len() {
        0 => "No holder answered".into(),
        n if n <= SHOWN_FAILURES => format!("Failures: {shown}"),
        n => format!("Failures: {shown}; and {} more", n - SHOWN_FAILURES),
    }
}

/// Why a peer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error("node config: {0}")]
    Config(#[from] InvalidValue),
    /// The data dir could not be used.
    #[error("peer data dir {path}: {why}")]
    DataDir {
        /// The dir or file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The holder's object store could not be opened.
    #[error(transparent)]
    Store(#[from] ObjectStoreError),
    /// The network could not start.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The metrics endpoint could not be bound.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Why a call that needs only the user's session failed (inbox, ack).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No session.
    #[error("not logged in: run `vmail login USER` first")]
    NotLoggedIn,
    /// The auth servers refused or failed.
    #[error(transparent)]
    Auth(#[from] ClientError),
}

/// Why the control API refused a session (`SetSession`): its cluster key
/// is not the one this peer knows, or its certificate does not prove it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionKeyError {
    /// Another cluster key than the configured one, or than the current
    /// session's.
    #[error(
        "the session's cluster key {offered} is not this peer's {expected} (from {source_of}): log in to this peer's cluster, or change cluster_key in node.toml and restart the peer"
    )]
    Mismatch {
        /// The session's key, hex.
        offered: String,
        /// The key this peer knows, hex.
        expected: String,
        /// Where this peer knows it from.
        source_of: &'static str,
    },
    /// The session's certificate is not signed by its cluster key, or is
    /// for another user.
    #[error(
        "the session's certificate does not prove its cluster key: {0}; run `vmail login` again"
    )]
    Certificate(String),
}

/// Why a leave failed. Unless it is [`LeaveError::DepositUnknown`],
/// nothing was deposited and any shard already stored was withdrawn.
#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
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
    #[error("only {got} of {wanted} holders accepted a shard, so nothing was deposited and the stored shards were withdrawn. {}. Try again in a minute: busy or unreachable holders often take it then", first_failures(.failures))]
    NotEnoughHolders {
        /// Copies asked for.
        wanted: usize,
        /// Copies acked.
        got: usize,
        /// What went wrong where.
        failures: Vec<HolderFailure>,
    },
    /// The auth group refused the storage grant.
    #[error("the auth group refused a storage grant: {0}. Nothing was stored")]
    Grant(ClientError),
    /// The auth group refused the deposit.
    #[error(
        "the auth group refused the deposit: {0}. Nothing was deposited, and the stored shards were withdrawn"
    )]
    NotDeposited(ClientError),
    /// The deposit's outcome is unknown: it may have committed.
    #[error(
        "the deposit's outcome is unknown ({why}): it may have reached the auth group, so the stored shards are kept (they expire at Unix time {expires_at}). Ask a recipient whether it arrived before leaving it again"
    )]
    DepositUnknown {
        /// The last failure.
        why: ClientError,
        /// When the shards expire.
        expires_at: u64,
    },
    /// The auth servers could not be reached, before anything was stored.
    #[error("{0}. Nothing was stored")]
    Auth(#[from] ClientError),
    /// The network failed, before anything was stored.
    #[error("{0}. Nothing was stored")]
    Network(#[from] NetworkError),
}

impl From<SessionError> for LeaveError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotLoggedIn => LeaveError::NotLoggedIn,
            SessionError::Auth(e) => LeaveError::Auth(e),
        }
    }
}

/// Why a fetch failed. The voicemail stays pending.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No session.
    #[error("not logged in: run `vmail login USER` first")]
    NotLoggedIn,
    /// No pending voicemail has this id.
    #[error("no voicemail {0} is waiting for you: run `vmail inbox` to list them")]
    NoSuchVoicemail(String),
    /// The locator cannot be read.
    #[error(transparent)]
    Locator(#[from] LocatorError),
    /// Too few shards could be fetched, checked and decoded.
    #[error("voicemail {id} cannot be rebuilt: fewer than the shards needed were found intact; it stays in your inbox. {}", joined(.failures))]
    AllCopiesFailed {
        /// The voicemail.
        id: String,
        /// What failed where.
        failures: Vec<FetchFailure>,
    },
    /// The ciphertext matched its hash but did not decrypt: the sender's key
    /// or locator is wrong.
    #[error(
        "voicemail {id} does not decrypt with the key recovered from the auth servers' shares ({why}); it stays in your inbox"
    )]
    Decrypt {
        /// The voicemail.
        id: String,
        /// Why.
        why: DecryptError,
    },
    /// The auth servers refused or failed.
    #[error(transparent)]
    Auth(#[from] ClientError),
    /// The network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
}

impl From<SessionError> for FetchError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotLoggedIn => FetchError::NotLoggedIn,
            SessionError::Auth(e) => FetchError::Auth(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Status;

    use super::*;

    #[test]
    fn a_refused_grant_keeps_the_servers_words() {
        for status in [
            Status::permission_denied(
                "no recipient takes this voicemail: bob does not accept anonymous voicemail",
            ),
            Status::resource_exhausted(
                "voicemails_per_hour: 30 of 30 used; resets at 2026-12-03T14:00:00Z",
            ),
        ] {
            let text = status.message().to_owned();
            let e = LeaveError::Grant(ClientError::Server(status));
            let shown = e.to_string();
            assert!(shown.contains(&text), "{shown}");
            assert!(shown.ends_with("Nothing was stored"), "{shown}");
        }
    }
}
