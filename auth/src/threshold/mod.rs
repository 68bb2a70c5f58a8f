//! Threshold signing by the auth group with FROST (RFC 9591), issue 22 step 2.
//!
//! Today every auth server holds the whole cluster `SigningKey`, so one stolen
//! server can forge user certificates, storage grants and delete orders. This
//! module is the pure core that replaces it: the group runs a distributed key
//! generation (DKG) so that each server holds only a share, and any `t` of the
//! `n` servers (a majority) jointly produce a plain Ed25519 signature. Peers keep
//! verifying with `ed25519_dalek::VerifyingKey::verify_strict`; nothing changes
//! for them. The DKG and its refreshes run through the group's log
//! (`crate::service::dkg`); signing runs over the internal service
//! (`crate::cluster::signer`, docs/THRESHOLD.md).
//!
//! Everything here is pure: no IO, no clock, randomness only through an `rng`
//! argument (`rand_core` 0.6 `RngCore + CryptoRng`, e.g. `rand::rngs::OsRng`).
//!
//! - [`member_identifier`] and [`Roster`]: FROST identifiers of Raft node ids
//!   and the group's threshold;
//! - [`dkg`]: the three-part DKG as plain state (`DkgRound1` → `DkgRound2` →
//!   key packages);
//! - [`sign`]: commitments, the coordinator's signing package, signature
//!   shares, aggregation with an Ed25519 `verify_strict` check, and batch
//!   signing of a Merkle root;
//! - [`membership`]: adding a member with the repairable threshold scheme and
//!   removing one with a DKG-based refresh, both keeping the group key;
//! - [`Wire`]: the byte encoding of every package that crosses the wire.
//!
//! # Identifiers
//!
//! A member's FROST identifier is `Identifier::derive(DOMAIN || node_id (u64,
//! big-endian))`, a hash of its Raft node id. A roster position
//! (`Identifier::try_from(position)`) would change when a member before it
//! leaves, which would silently make its share the share of another
//! identifier; the derived identifier depends on nothing but the node's own
//! id, so it survives every membership change. `derive` hashes with frost's
//! `HID` (frost-specific, outside the RFC), so the serialized identifier is
//! what a future store should persist next to a share.
//!
//! # Threshold
//!
//! `t = n / 2 + 1`, a majority, for `n ≥ 3`. Below three members there is no
//! threshold worth having: FROST needs `min_signers ≥ 2`, a 1-of-1 group is
//! the single stealable key of today, and a 2-of-2 group tolerates no server
//! being down (signing would stop), so it trades availability for nothing
//! 2-of-3 does not give. [`Roster::new`] refuses them.
//! The threshold of a group key is fixed for its life: membership changes
//! (repair, refresh) keep it; changing it takes a new DKG and a new group key.
//! A refresh after a removal may leave fewer than three members
//! ([`Roster::with_threshold`]): a 2-of-3 key whose group lost a server is
//! refreshed 2-of-2, so the removed server's share is useless, at the price
//! of needing both remaining servers to sign.

pub mod dkg;
pub mod membership;
pub mod sign;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use frost_ed25519::keys::dkg::{round1 as dkg_round1, round2 as dkg_round2};
pub use frost_ed25519::keys::repairable::{Delta, Sigma};
pub use frost_ed25519::keys::{KeyPackage, PublicKeyPackage};
pub use frost_ed25519::round1::{SigningCommitments, SigningNonces};
pub use frost_ed25519::round2::SignatureShare;
pub use frost_ed25519::{Identifier, SigningPackage};
pub use wire::Wire;

/// The smallest group for which threshold signing protects against one stolen
/// server (see the module doc).
pub const MIN_MEMBERS: usize = 3;

/// Domain prefix hashed with a node id into its FROST identifier; changing it
/// changes every identifier, so it carries a version.
const IDENTIFIER_DOMAIN: &[u8] = b"vmail-auth threshold member v1";

/// Why a threshold operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ThresholdError {
    /// The group is too small for threshold signing.
    #[error("a threshold group needs at least {MIN_MEMBERS} members, got {0}; add servers first")]
    TooFewMembers(usize),
    /// The group is larger than FROST's `u16` counts allow.
    #[error("a threshold group has at most 65535 members, got {0}")]
    TooManyMembers(usize),
    /// A node id appears twice in a roster.
    #[error("node {0} is listed twice in the roster")]
    DuplicateMember(u64),
    /// The node is not in the roster it was asked to act in.
    #[error("node {0} is not a member of this roster")]
    NotAMember(u64),
    /// A node id did not map to a FROST identifier.
    #[error("node {node_id} has no FROST identifier: {source}")]
    Identifier {
        /// The node id.
        node_id: u64,
        /// frost's reason.
        source: frost_ed25519::Error,
    },
    /// A step of the distributed key generation failed.
    #[error("DKG {step} failed: {source}")]
    Dkg {
        /// Which part (`part1`, `part2`, `part3`).
        step: &'static str,
        /// frost's reason; a bad package names its sender.
        source: frost_ed25519::Error,
    },
    /// Fewer signers than the threshold, or unknown ones, were offered.
    #[error("{got} signers offered, the group needs {needed}")]
    NotEnoughSigners {
        /// Signers offered.
        got: usize,
        /// The group's threshold.
        needed: u16,
    },
    /// A signer or coordinator step of a signing round failed.
    #[error("signing failed: {0}")]
    Sign(frost_ed25519::Error),
    /// Aggregation found signature shares that do not verify.
    #[error("signature shares of {culprits:?} do not verify; exclude them and sign again")]
    Cheaters {
        /// The members whose shares were wrong.
        culprits: Vec<Identifier>,
    },
    /// Aggregation failed for another reason.
    #[error("aggregation failed: {0}")]
    Aggregate(frost_ed25519::Error),
    /// The group verifying key is not a valid Ed25519 public key.
    #[error("the group key is not a valid Ed25519 key: {0}")]
    GroupKey(ed25519_dalek::SignatureError),
    /// A signature does not verify strictly under the group key.
    #[error("the signature does not verify under the group key: {0}")]
    BadSignature(ed25519_dalek::SignatureError),
    /// A batch could not be built.
    #[error(transparent)]
    Batch(#[from] vmail_proto::batch::BatchError),
    /// A step adding a member with the repairable scheme failed.
    #[error("repair {step} failed: {source}")]
    Repair {
        /// Which part (`part1`, `part3`, `verifying share`).
        step: &'static str,
        /// frost's reason.
        source: frost_ed25519::Error,
    },
    /// A repaired share does not match the group's public data.
    #[error("the repaired share of {0:?} does not match the group's verifying shares")]
    RepairMismatch(Identifier),
    /// A step of the refresh removing a member failed.
    #[error("refresh {step} failed: {source}")]
    Refresh {
        /// Which part (`part1`, `part2`, `shares`).
        step: &'static str,
        /// frost's reason.
        source: frost_ed25519::Error,
    },
    /// A refresh or repair produced another group key (a bug or an attack).
    #[error("the group key changed during a membership change")]
    GroupKeyChanged,
    /// Encoding a package failed.
    #[error("could not encode {what}: {source}")]
    Encode {
        /// The package type.
        what: &'static str,
        /// frost's reason.
        source: frost_ed25519::Error,
    },
    /// Decoding a package from the wire failed.
    #[error("could not decode {what}: {source}")]
    Decode {
        /// The package type.
        what: &'static str,
        /// frost's reason.
        source: frost_ed25519::Error,
    },
}

/// The FROST identifier of the member with Raft node id `node_id` (see the
/// module doc for why it is derived from the id rather than a position).
pub fn member_identifier(node_id: u64) -> Result<Identifier, ThresholdError> {
    let mut input = Vec::with_capacity(IDENTIFIER_DOMAIN.len() + 8);
    input.extend_from_slice(IDENTIFIER_DOMAIN);
    input.extend_from_slice(&node_id.to_be_bytes());
    Identifier::derive(&input).map_err(|source| ThresholdError::Identifier { node_id, source })
}

/// The majority threshold of a group of `n` members.
pub fn majority_threshold(n: usize) -> Result<u16, ThresholdError> {
    if n < MIN_MEMBERS {
        return Err(ThresholdError::TooFewMembers(n));
    }
    let n16 = u16::try_from(n).map_err(|_| ThresholdError::TooManyMembers(n))?;
    Ok(n16 / 2 + 1)
}

/// The members of a key generation: their node ids, identifiers and the
/// threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    members: BTreeMap<Identifier, u64>,
    threshold: u16,
}

impl Roster {
    /// A roster of the given Raft node ids with a majority threshold.
    pub fn new(node_ids: &[u64]) -> Result<Self, ThresholdError> {
        Self::with_threshold(node_ids, majority_threshold(node_ids.len())?)
    }

    /// The roster of a refresh: the given Raft node ids sharing an existing
    /// key, whose threshold stays `threshold`. It may have fewer than
    /// [`MIN_MEMBERS`] (a 2-of-3 key refreshed after a removal is 2-of-2),
    /// but never fewer than `threshold`.
    pub fn with_threshold(node_ids: &[u64], threshold: u16) -> Result<Self, ThresholdError> {
        if node_ids.len() < usize::from(threshold) || threshold < 2 {
            return Err(ThresholdError::NotEnoughSigners {
                got: node_ids.len(),
                needed: threshold,
            });
        }
        let mut members = BTreeMap::new();
        for &node_id in node_ids {
            if members
                .insert(member_identifier(node_id)?, node_id)
                .is_some()
            {
                return Err(ThresholdError::DuplicateMember(node_id));
            }
        }
        Ok(Self { members, threshold })
    }

    /// How many members sign together (`t`).
    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    /// How many members there are (`n`).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a roster has at least two members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The identifier of a member, if `node_id` is one.
    pub fn identifier(&self, node_id: u64) -> Option<Identifier> {
        self.members
            .iter()
            .find_map(|(id, n)| (*n == node_id).then_some(*id))
    }

    /// The node id of an identifier, if it is a member's.
    pub fn node_id(&self, identifier: &Identifier) -> Option<u64> {
        self.members.get(identifier).copied()
    }

    /// Every member's identifier, in identifier order.
    pub fn identifiers(&self) -> impl Iterator<Item = Identifier> + '_ {
        self.members.keys().copied()
    }
}

/// The 32-byte Ed25519 public key of a group, checked to be a valid key.
pub fn group_key_bytes(public: &PublicKeyPackage) -> Result<[u8; 32], ThresholdError> {
    let bytes = public
        .verifying_key()
        .serialize()
        .map_err(|source| ThresholdError::Encode {
            what: "group verifying key",
            source,
        })?;
    let bytes: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| ThresholdError::Encode {
            what: "group verifying key",
            source: frost_ed25519::Error::MalformedVerifyingKey,
        })?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(ThresholdError::GroupKey)?;
    Ok(bytes)
}

/// Checks `signature` on `message` under the group key exactly as peers do:
/// `ed25519_dalek` `verify_strict`.
pub fn verify(
    group_key: &[u8; 32],
    message: &[u8],
    signature: &ed25519_dalek::Signature,
) -> Result<(), ThresholdError> {
    ed25519_dalek::VerifyingKey::from_bytes(group_key)
        .map_err(ThresholdError::GroupKey)?
        .verify_strict(message, signature)
        .map_err(ThresholdError::BadSignature)
}
