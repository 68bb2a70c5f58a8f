//! What the group signs ([`SignTarget`]), and the bytes each signer
//! rebuilds for it from its own applied state.

use serde::{Deserialize, Serialize};
use vmail_proto::batch::{MerkleTree, batch_message};

use super::signer::SignError;
use crate::store::Store;

/// Most objects one [`SignTarget::Batch`] names.
pub const MAX_BATCH: usize = 256;
/// Longest encoded [`SignTarget`] accepted: a full batch of grant-family
/// targets (a tag and a serial of at most 10 bytes each).
pub const MAX_TARGET_LEN: usize = 16 + MAX_BATCH * 11;

/// What the group signs, named rather than carried: each signer rebuilds
/// the bytes from its own applied state (docs/PROTOCOL.md §16.10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignTarget {
    /// The user's current certificate, which only a session the user
    /// signed, checked by every server at apply, can have made.
    Certificate {
        /// The subject.
        username: String,
        /// Its serial, so a later login does not change what is signed.
        serial: u64,
    },
    /// The storage grant with this serial: the bytes the cluster key
    /// signed at apply.
    Grant {
        /// The grant's serial.
        serial: u64,
    },
    /// The order to delete grant `serial`'s shards, which only a last ack,
    /// a recall or an expiry applied in the log makes.
    DeleteOrder {
        /// The grant's serial.
        serial: u64,
    },
    /// The proof that a deposit used grant `serial`, which only an applied
    /// deposit makes.
    DepositProof {
        /// The grant's serial.
        serial: u64,
    },
    /// The share keys grant `serial` hands out, as the log recorded them
    /// when it issued the grant.
    Roster {
        /// The grant's serial.
        serial: u64,
    },
    /// Grants, delete orders and deposit proofs signed with one round: the
    /// message is [`batch_message`] of the Merkle root of their bytes, in
    /// this order (docs/THRESHOLD.md §2, batching).
    Batch(Vec<SignTarget>),
}

impl SignTarget {
    /// The request's encoding (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("in-memory encoding cannot fail")
    }

    /// Reads [`SignTarget::to_bytes`] from another member: at most
    /// [`MAX_TARGET_LEN`] bytes, nothing after the target.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignError> {
        if bytes.len() > MAX_TARGET_LEN {
            return Err(SignError::Malformed(format!(
                "the target is {} bytes, at most {MAX_TARGET_LEN}",
                bytes.len()
            )));
        }
        match postcard::take_from_bytes(bytes) {
            Ok((target, [])) => Ok(target),
            Ok((_, rest)) => Err(SignError::Malformed(format!(
                "{} bytes after the target",
                rest.len()
            ))),
            Err(e) => Err(SignError::Malformed(format!("not a signing target: {e}"))),
        }
    }

    /// Whether the target may be part of a [`SignTarget::Batch`]: the
    /// objects whose encoding carries a batch's inclusion proof.
    pub fn batchable(&self) -> bool {
        matches!(
            self,
            Self::Grant { .. } | Self::DeleteOrder { .. } | Self::DepositProof { .. }
        )
    }

    /// The bytes this target signs, from `s` (a signer's applied state);
    /// `key_id` is the cluster key's id, which grants, orders and proofs
    /// name.
    pub fn message_in(&self, s: &Store, key_id: &[u8; 8]) -> Result<Vec<u8>, SignError> {
        let grant = |serial: u64| {
            s.storage_grant(serial)?
                .ok_or_else(|| SignError::Absent(format!("no storage grant {serial}")))
        };
        match self {
            Self::Certificate { username, serial } => {
                let user = s
                    .user(username)?
                    .ok_or_else(|| SignError::Absent(format!("no user {username}")))?;
                if user.certificate.serial != *serial {
                    return Err(SignError::Absent(format!(
                        "the current certificate of {username} is serial {}, not {serial}",
                        user.certificate.serial
                    )));
                }
                Ok(user.certificate.signing_bytes())
            }
            Self::Grant { serial } => Ok(grant(*serial)?.body.signing_bytes(key_id)),
            Self::DeleteOrder { serial } => {
                let record = grant(*serial)?;
                let reason = record.deleted.ok_or_else(|| {
                    SignError::Absent(format!("grant {serial}'s shards were not ordered deleted"))
                })?;
                Ok(vmail_proto::grant::order_signing_bytes(
                    *serial,
                    key_id,
                    reason,
                    record.body.expires_at,
                ))
            }
            Self::DepositProof { serial } => {
                if grant(*serial)?.deposited.is_none() {
                    return Err(SignError::Absent(format!("no deposit used grant {serial}")));
                }
                Ok(vmail_proto::grant::proof_signing_bytes(*serial, key_id))
            }
            Self::Roster { serial } => {
                let keys = s.grant_roster(*serial)?.ok_or_else(|| {
                    SignError::Absent(format!("no share-key roster of grant {serial}"))
                })?;
                Ok(vmail_proto::grant::roster_signing_bytes(
                    *serial, key_id, &keys,
                ))
            }
            Self::Batch(items) => {
                let tree = MerkleTree::new(&Self::batch_items(s, key_id, items)?)
                    .map_err(|e| SignError::Malformed(e.to_string()))?;
                Ok(batch_message(&tree.root(), tree.len() as u64))
            }
        }
    }

    /// The bytes of each object of a batch, after checking the batch's
    /// size and that each may be batched.
    pub fn batch_items(
        s: &Store,
        key_id: &[u8; 8],
        items: &[SignTarget],
    ) -> Result<Vec<Vec<u8>>, SignError> {
        if items.len() < 2 || items.len() > MAX_BATCH {
            return Err(SignError::Malformed(format!(
                "a batch of {} objects; a batch has 2 to {MAX_BATCH}",
                items.len()
            )));
        }
        items
            .iter()
            .map(|t| {
                if !t.batchable() {
                    return Err(SignError::Malformed(format!(
                        "{t:?} cannot be signed in a batch"
                    )));
                }
                t.message_in(s, key_id)
            })
            .collect()
    }
}
