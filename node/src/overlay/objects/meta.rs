//! What a holder knows about an object: its meta (length, hash, expiry,
//! delete hash, place in its layout, grant and deposit proof), whether that
//! agrees with the identifier it is stored under, and what it is charged.

use serde::{Deserialize, Serialize};

use super::format::header;
use crate::core::locator::{Layout, ObjectId, UNDISCLOSED};

/// The least an object is charged against the quota, however small.
pub const MIN_CHARGE: u64 = 4096;

/// What a holder knows about an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Length of the object (a shard or a whole ciphertext).
    pub len: u64,
    /// SHA-256 of the object, as the sender announced and the holder checked.
    pub sha256: [u8; 32],
    /// Unix seconds after which the holder drops the object: the grant's
    /// expiry.
    pub expires_at: u64,
    /// SHA-256 of the secret that lets the sender withdraw the object.
    pub delete_hash: [u8; 32],
    /// Which shard of which layout this is, so the holder can check and
    /// repair its siblings. None for objects stored before shards existed.
    pub shard: Option<ShardOf>,
    /// The storage grant it was stored under, in its one encoding; empty
    /// for objects stored before grants.
    pub grant: Vec<u8>,
    /// The group's deposit proof for the grant, in its one encoding, once
    /// the holder has one; empty before. A holder drops a granted object
    /// whose grant no proof reached within [`PROOF_GRACE_SECS`] after its
    /// upload window.
    pub proof: Vec<u8>,
}

/// A stored object's place in its voicemail's layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOf {
    /// This object's index in `layout.shards`.
    pub index: u8,
    /// All the voicemail's shards. Until the sender hands over the final
    /// layout (`Relayout`, once every upload is done) only this shard's
    /// identifier is disclosed; the others are
    /// [`crate::core::locator::UNDISCLOSED`].
    pub layout: Layout,
}

impl ObjectMeta {
    /// Whether the shard part agrees with the rest for the object stored
    /// under `id`: the layout is valid (sibling identifiers may be
    /// undisclosed while the upload runs), and its entry at `index` names
    /// this identifier, length and hash.
    pub fn consistent(&self, id: &ObjectId) -> bool {
        self.shard.as_ref().is_none_or(|s| {
            s.layout.validate_partial().is_ok()
                && *id != UNDISCLOSED
                && s.layout.shard_len() == self.len
                && s.layout
                    .shards
                    .get(usize::from(s.index))
                    .is_some_and(|r| r.id == *id && r.sha256 == self.sha256)
        })
    }

    /// What the object costs against the quota: its body, at least
    /// [`MIN_CHARGE`], plus its header. Saturates: a peer's meta may claim
    /// any length, and the store compares the charge with its quota.
    pub fn charge(&self) -> u64 {
        self.len
            .max(MIN_CHARGE)
            .saturating_add(header(self).len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the `blob_request` fuzz target checks: a store request's meta
    /// claiming 2^64 - 1 bytes overflowed its charge.
    #[test]
    fn the_charge_of_any_claimed_length_saturates() {
        let meta = ObjectMeta {
            len: u64::MAX,
            sha256: [1; 32],
            expires_at: 0,
            delete_hash: [2; 32],
            shard: None,
            grant: Vec::new(),
            proof: Vec::new(),
        };
        assert_eq!(meta.charge(), u64::MAX);
    }
}
