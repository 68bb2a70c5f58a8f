//! Why a holder's store refused a request or failed, and the short reason
//! name each refusal is counted under.

use std::path::{Path, PathBuf};

use vmail_proto::grant::GrantError;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    /// The object is larger than this holder takes.
    #[error("object of {len} bytes is larger than this holder's limit of {max} bytes")]
    TooLarge {
        /// Offered size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Storing it would exceed the quota.
    #[error("holder quota full: {used} of {quota} bytes used, {len} more requested")]
    QuotaFull {
        /// Bytes stored or reserved.
        used: u64,
        /// The quota.
        quota: u64,
        /// Bytes it would be charged.
        len: u64,
    },
    /// The holder holds as many objects as it takes.
    #[error("holder full: it holds its limit of {max} objects")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// The disk ran out of space while writing.
    #[error("the holder's disk is full")]
    DiskFull,
    /// The identifier is taken by different content.
    #[error("identifier already holds different content")]
    Conflict,
    /// The content does not match its announced hash.
    #[error("content does not match its announced SHA-256")]
    HashMismatch,
    /// The shard layout sent with the object contradicts it.
    #[error("the shard layout does not match the object (identifier, index, length or hash)")]
    BadLayout,
    /// No object is held under the identifier.
    #[error("no such object here")]
    NotHeld,
    /// The secret is not the preimage of the object's delete hash.
    #[error("wrong delete secret")]
    WrongSecret,
    /// The sender replaced the object's layout as often as it may.
    #[error("the object's layout was replaced {max} times already; store it again instead")]
    TooManyRelayouts {
        /// The limit, [`super::MAX_RELAYOUTS`].
        max: u8,
    },
    /// A zero-length object.
    #[error("zero-length objects are not stored")]
    Empty,
    /// No grant came with the object.
    #[error(
        "no storage grant: holders store only what the auth group granted; upgrade the sender's vmail"
    )]
    NoGrant,
    /// This holder cannot check grants.
    #[error(
        "this holder has no cluster key, so it cannot check grants and stores nothing: set cluster_key in its node.toml"
    )]
    NoClusterKey,
    /// The grant or delete order is malformed, foreign or forged.
    #[error(transparent)]
    BadGrant(#[from] GrantError),
    /// The grant has expired.
    #[error("storage grant {serial} expired at Unix time {expires_at}")]
    GrantExpired {
        /// The grant's serial.
        serial: u64,
        /// Its expiry.
        expires_at: u64,
    },
    /// The grant asks to keep the object longer than this holder does.
    #[error(
        "the grant keeps the object until Unix time {expires_at}, past this holder's cap of {cap}"
    )]
    ExpiryTooFar {
        /// The grant's expiry.
        expires_at: u64,
        /// The latest this holder keeps anything.
        cap: u64,
    },
    /// The grant is for other holders.
    #[error("storage grant {serial} does not name this holder")]
    NotNamed {
        /// The grant's serial.
        serial: u64,
    },
    /// The object is not one the grant covers.
    #[error(
        "storage grant {serial} does not cover this shard (its layout, length or hash differs)"
    )]
    NotCovered {
        /// The grant's serial.
        serial: u64,
    },
    /// The grant's shard is held here already under another identifier.
    #[error("storage grant {serial} was used already for this shard under another identifier")]
    GrantReused {
        /// The grant's serial.
        serial: u64,
    },
    /// The grant's voicemail was deleted; the order says why.
    #[error("storage grant {serial}'s voicemail was deleted ({reason})")]
    Deleted {
        /// The grant's serial.
        serial: u64,
        /// Why it was deleted.
        reason: vmail_proto::grant::DeleteReason,
        /// The delete order, in its one encoding, for the asker to check.
        order: Vec<u8>,
    },
    /// Some other IO failure.
    #[error("object store IO error at {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
}

impl ObjectStoreError {
    /// A short name for counting refusals by reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too-large",
            Self::QuotaFull { .. } => "quota-full",
            Self::TooMany { .. } => "too-many-objects",
            Self::DiskFull => "disk-full",
            Self::Conflict => "conflict",
            Self::HashMismatch => "hash-mismatch",
            Self::BadLayout => "bad-layout",
            Self::NotHeld => "not-held",
            Self::WrongSecret => "wrong-secret",
            Self::TooManyRelayouts { .. } => "too-many-relayouts",
            Self::Empty => "empty",
            Self::NoGrant => "no-grant",
            Self::NoClusterKey => "no-cluster-key",
            Self::BadGrant(vmail_proto::grant::GrantError::NoGroupSignature { .. }) => {
                "no-group-signature"
            }
            Self::BadGrant(_) => "bad-signature",
            Self::GrantExpired { .. } => "grant-expired",
            Self::ExpiryTooFar { .. } => "expiry-too-far",
            Self::NotNamed { .. } => "not-named",
            Self::NotCovered { .. } => "not-covered",
            Self::GrantReused { .. } => "grant-reused",
            Self::Deleted { .. } => "deleted",
            Self::Io { .. } => "io",
        }
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ObjectStoreError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::StorageFull {
            ObjectStoreError::DiskFull
        } else {
            ObjectStoreError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}
