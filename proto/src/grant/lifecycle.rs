//! What follows a grant (docs/PROTOCOL.md §7.7, §7.8): the deposit proof
//! that says a deposit used it, which keeps its shards past the upload
//! window, and the delete order that ends them. Same signatures and one
//! encoding as the grant (`super`).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::reader::Reader;
use super::{
    DELETE_LABEL, GRANT_VERSION, GrantError, PROOF_LABEL, encode, key_id, malformed, verify_signed,
};
use crate::batch::GroupSignature;

pub(super) const ORDER: &str = "delete order";
pub(super) const PROOF: &str = "deposit proof";

/// Why a delete order was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteReason {
    /// Every recipient fetched it (or discarded it).
    Delivered,
    /// The sender recalled it before delivery.
    Recalled,
    /// It expired unread.
    Expired,
    /// The grant was never used by a deposit.
    Unused,
}

impl DeleteReason {
    fn code(self) -> u8 {
        match self {
            Self::Delivered => 1,
            Self::Recalled => 2,
            Self::Expired => 3,
            Self::Unused => 4,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::Delivered,
            2 => Self::Recalled,
            3 => Self::Expired,
            4 => Self::Unused,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Delivered => "delivered",
            Self::Recalled => "recalled",
            Self::Expired => "expired unread",
            Self::Unused => "never deposited",
        })
    }
}

/// A signed order to delete every shard of one grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteOrder {
    /// The grant's serial.
    pub serial: u64,
    /// Why.
    pub reason: DeleteReason,
    /// The grant's expiry: holders keep a tombstone until then.
    pub expires_at: u64,
    /// The signing key's id.
    pub key_id: [u8; 8],
    /// The cluster key's signature over the signing bytes.
    pub signature: Signature,
    /// The group's threshold signature over the same bytes (or over a
    /// batch they are in), once t servers gave it.
    pub group_signature: Option<GroupSignature>,
}

/// The group's signed word that a deposit used grant `serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositProof {
    /// The grant's serial.
    pub serial: u64,
    /// The signing key's id.
    pub key_id: [u8; 8],
    /// The cluster key's signature over the signing bytes.
    pub signature: Signature,
    /// The group's threshold signature over the same bytes (or over a
    /// batch they are in), once t servers gave it.
    pub group_signature: Option<GroupSignature>,
}
/// The bytes a delete order's signatures cover.
pub fn order_signing_bytes(
    serial: u64,
    key_id: &[u8; 8],
    reason: DeleteReason,
    exp: u64,
) -> Vec<u8> {
    let mut out = DELETE_LABEL.to_vec();
    out.extend_from_slice(&GRANT_VERSION.to_be_bytes());
    out.extend_from_slice(&serial.to_be_bytes());
    out.extend_from_slice(key_id);
    out.push(reason.code());
    out.extend_from_slice(&exp.to_be_bytes());
    out
}
impl DeleteOrder {
    /// Signs an order to delete grant `serial`'s shards, which expire at
    /// `expires_at`.
    pub fn sign(
        serial: u64,
        reason: DeleteReason,
        expires_at: u64,
        cluster_key: &SigningKey,
    ) -> Self {
        let key_id = key_id(&cluster_key.verifying_key());
        let signature = cluster_key.sign(&order_signing_bytes(serial, &key_id, reason, expires_at));
        Self {
            serial,
            reason,
            expires_at,
            key_id,
            signature,
            group_signature: None,
        }
    }

    /// The bytes the signatures cover.
    pub fn signing_bytes(&self) -> Vec<u8> {
        order_signing_bytes(self.serial, &self.key_id, self.reason, self.expires_at)
    }

    /// The one encoding: signing bytes, the signature, then the group
    /// signature if any.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(
            self.signing_bytes(),
            &self.signature,
            self.group_signature.as_ref(),
        )
    }

    /// Reads [`DeleteOrder::to_bytes`]; the signature is checked by
    /// [`DeleteOrder::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GrantError> {
        let mut r = Reader::new(bytes, ORDER);
        r.label(DELETE_LABEL)?;
        let version = r.u32()?;
        if version != GRANT_VERSION {
            return Err(GrantError::Version {
                what: ORDER,
                version,
            });
        }
        let serial = r.u64()?;
        let key_id = r.array::<8>()?;
        let code = r.u8()?;
        let reason = DeleteReason::from_code(code)
            .ok_or_else(|| malformed(ORDER, format!("unknown reason {code}")))?;
        let expires_at = r.u64()?;
        let signature = Signature::from_bytes(&r.array::<64>()?);
        let group_signature = r.group_signature()?;
        Ok(Self {
            serial,
            reason,
            expires_at,
            key_id,
            signature,
            group_signature,
        })
    }

    /// Checks the key id and the signature against the pinned cluster key.
    pub fn verify(&self, cluster_key: &VerifyingKey) -> Result<(), GrantError> {
        self.verify_pinned(cluster_key, None)
    }

    /// [`DeleteOrder::verify`], and with a pinned `group_key` also the
    /// group signature, which must be there.
    pub fn verify_pinned(
        &self,
        cluster_key: &VerifyingKey,
        group_key: Option<&VerifyingKey>,
    ) -> Result<(), GrantError> {
        verify_signed(
            (ORDER, self.serial),
            &self.key_id,
            &self.signing_bytes(),
            (&self.signature, self.group_signature.as_ref()),
            (cluster_key, group_key),
        )
    }
}

/// The bytes a deposit proof's signatures cover.
pub fn proof_signing_bytes(serial: u64, key_id: &[u8; 8]) -> Vec<u8> {
    let mut out = PROOF_LABEL.to_vec();
    out.extend_from_slice(&GRANT_VERSION.to_be_bytes());
    out.extend_from_slice(&serial.to_be_bytes());
    out.extend_from_slice(key_id);
    out
}

impl DepositProof {
    /// Signs the proof that a deposit used grant `serial`.
    pub fn sign(serial: u64, cluster_key: &SigningKey) -> Self {
        let key_id = key_id(&cluster_key.verifying_key());
        let signature = cluster_key.sign(&proof_signing_bytes(serial, &key_id));
        Self {
            serial,
            key_id,
            signature,
            group_signature: None,
        }
    }

    /// The bytes the signatures cover.
    pub fn signing_bytes(&self) -> Vec<u8> {
        proof_signing_bytes(self.serial, &self.key_id)
    }

    /// The one encoding: signing bytes, the signature, then the group
    /// signature if any.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(
            self.signing_bytes(),
            &self.signature,
            self.group_signature.as_ref(),
        )
    }

    /// Reads [`DepositProof::to_bytes`]; the signature is checked by
    /// [`DepositProof::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GrantError> {
        let mut r = Reader::new(bytes, PROOF);
        r.label(PROOF_LABEL)?;
        let version = r.u32()?;
        if version != GRANT_VERSION {
            return Err(GrantError::Version {
                what: PROOF,
                version,
            });
        }
        let serial = r.u64()?;
        let key_id = r.array::<8>()?;
        let signature = Signature::from_bytes(&r.array::<64>()?);
        let group_signature = r.group_signature()?;
        Ok(Self {
            serial,
            key_id,
            signature,
            group_signature,
        })
    }

    /// Checks the key id and the signature against the pinned cluster key.
    pub fn verify(&self, cluster_key: &VerifyingKey) -> Result<(), GrantError> {
        self.verify_pinned(cluster_key, None)
    }

    /// [`DepositProof::verify`], and with a pinned `group_key` also the
    /// group signature, which must be there.
    pub fn verify_pinned(
        &self,
        cluster_key: &VerifyingKey,
        group_key: Option<&VerifyingKey>,
    ) -> Result<(), GrantError> {
        verify_signed(
            (PROOF, self.serial),
            &self.key_id,
            &self.signing_bytes(),
            (&self.signature, self.group_signature.as_ref()),
            (cluster_key, group_key),
        )
    }
}
