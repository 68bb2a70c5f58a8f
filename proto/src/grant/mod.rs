//! Storage grants, deposit proofs and delete orders: what the auth group
//! signs so that untrusted holders know what they may store, which of it a
//! deposit uses, and when to delete it.
//!
//! A **storage grant** lets one leave put the named shards (length and
//! SHA-256 each) on the named holders, during a short upload window, until
//! an absolute expiry. It names no sender and no recipient. A **delete
//! order** tells every holder of a grant's shards to drop them and to
//! refuse them until the grant's expiry. A **deposit proof** says a deposit
//! used the grant: holders drop shards whose grant never gets one, once its
//! upload window is over.
//!
//! All three are signed by the cluster key over a fixed, domain-separated
//! layout (never protobuf). Once the group has a threshold key, t servers
//! also sign the same bytes with it (docs/THRESHOLD.md §2); holders and
//! clients that pin the group key require that signature too. The one
//! encoding everywhere — gRPC, the blob protocol, a holder's disk — is the
//! signing bytes, the cluster key's 64-byte signature, then the group's
//! signature when there is one (integers big-endian). The group signs an
//! object alone or, when several were asked for at once, the root of a
//! batch they are in (`crate::batch`); then its 64 bytes are followed by
//! the object's inclusion proof, `index u64 || count u64 || siblings (32
//! each)`, written `[proof]` below:
//!
//! ```text
//! grant:  "vmail/v1/storage-grant" || version u32 || serial u64 || key id (8)
//!           || message id (16) || data shards u8 || shard count u8
//!           || shard count x (len u64 || sha256 (32))
//!           || holder count u8 || holder count x (u8 len || peer id)
//!           || upload_until u64 || expires_at u64 || signature (64)
//!           || [group signature (64) || [proof]]
//! delete: "vmail/v1/delete-order" || version u32 || serial u64 || key id (8)
//!           || reason u8 || expires_at u64 || signature (64)
//!           || [group signature (64) || [proof]]
//! proof:  "vmail/v1/deposit-proof" || version u32 || serial u64 || key id (8)
//!           || signature (64) || [group signature (64) || [proof]]
//! ```
//!
//! The key id is the first 8 bytes of SHA-256 of the cluster public key, so
//! a holder can tell a foreign cluster's grant from a forged one. A delete
//! order's `expires_at` is its grant's: holders keep a tombstone until then.

mod lifecycle;
mod reader;
mod roster;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use lifecycle::{
    DeleteOrder, DeleteReason, DepositProof, order_signing_bytes, proof_signing_bytes,
};
use reader::Reader;

use crate::batch::GroupSignature;
pub use roster::{ROSTER_LABEL, roster_signing_bytes, verify_roster};

/// The grant and delete-order format version this code writes and accepts.
pub const GRANT_VERSION: u32 = 1;
/// Domain-separation prefix of a grant's signing bytes.
pub const GRANT_LABEL: &[u8] = b"vmail/v1/storage-grant";
/// Domain-separation prefix of a delete order's signing bytes.
pub const DELETE_LABEL: &[u8] = b"vmail/v1/delete-order";
/// Domain-separation prefix of a deposit proof's signing bytes.
pub const PROOF_LABEL: &[u8] = b"vmail/v1/deposit-proof";
/// How long after a grant's upload window a holder keeps a shard whose
/// grant no deposit proved, seconds: the deposit and the proof's hand-over
/// come right after the upload.
pub const PROOF_GRACE_SECS: u64 = 10 * 60;
/// Most shards one grant covers (the erasure coder's limit).
pub const MAX_GRANT_SHARDS: usize = 32;
/// Most holders one grant names: the chosen ones plus spares.
pub const MAX_GRANT_HOLDERS: usize = 64;
/// Longest holder peer id, bytes.
pub const MAX_HOLDER_ID_LEN: usize = 64;
/// How long a grant's upload window stays open, seconds.
pub const UPLOAD_WINDOW_SECS: u64 = 10 * 60;
/// The longest a holder keeps anything: a grant's expiry may be at most
/// this far past its issue, and holders refuse grants beyond their own cap.
pub const MAX_RETENTION_SECS: u64 = 30 * 86_400;
/// Largest encoded grant.
pub const MAX_GRANT_BYTES: usize = GRANT_LABEL.len()
    + 4
    + 8
    + 8
    + 16
    + 2
    + MAX_GRANT_SHARDS * 40
    + 1
    + MAX_GRANT_HOLDERS * (1 + MAX_HOLDER_ID_LEN)
    + 16
    + 64
    + 64
    + crate::batch::MAX_PROOF_BYTES;

/// Why a grant or delete order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The bytes are not a well-formed grant or order.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// "storage grant" or "delete order".
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A version this code does not know.
    #[error("{what} version {version} is not supported (this build knows {GRANT_VERSION})")]
    Version {
        /// "storage grant" or "delete order".
        what: &'static str,
        /// The version found.
        version: u32,
    },
    /// Signed by another cluster's key.
    #[error("{what} is from another auth cluster (key id {found}, this holder trusts {pinned})")]
    ForeignCluster {
        /// "storage grant" or "delete order".
        what: &'static str,
        /// The key id it names, hex.
        found: String,
        /// The pinned key's id, hex.
        pinned: String,
    },
    /// The signature does not verify.
    #[error("{what} {serial} has a bad signature: forged or altered")]
    BadSignature {
        /// "storage grant" or "delete order".
        what: &'static str,
        /// Its serial.
        serial: u64,
    },
    /// The group key is pinned and the object carries no group signature.
    #[error(
        "{what} {serial} has no group signature, which the pinned group key requires: fewer than t auth servers signed it (see the server's log and `vmail-auth status`)"
    )]
    NoGroupSignature {
        /// "storage grant", "delete order" or "deposit proof".
        what: &'static str,
        /// Its serial.
        serial: u64,
    },
    /// The group signature does not verify under the pinned group key.
    #[error("{what} {serial} has a bad group signature: forged, altered or from another group")]
    BadGroupSignature {
        /// "storage grant", "delete order" or "deposit proof".
        what: &'static str,
        /// Its serial.
        serial: u64,
    },
}

/// The id of a cluster key: the first 8 bytes of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> [u8; 8] {
    let h = Sha256::digest(key.as_bytes());
    h[..8].try_into().expect("8 bytes")
}

/// One shard a grant covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedShard {
    /// Its length in bytes.
    pub len: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

/// What a grant covers, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantBody {
    /// The group's serial, unique per grant.
    pub serial: u64,
    /// The sender's message id (the ciphertext header's).
    pub message_id: [u8; 16],
    /// Shards needed to rebuild: k of a Reed-Solomon k-of-n, 1 for copies.
    pub data_shards: u8,
    /// Every shard, by index.
    pub shards: Vec<GrantedShard>,
    /// libp2p peer ids (bytes) the shards may be placed on.
    pub holders: Vec<Vec<u8>>,
    /// Unix seconds until which holders accept the upload.
    pub upload_until: u64,
    /// Unix seconds after which holders drop the shards.
    pub expires_at: u64,
}

/// A signed storage grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageGrant {
    /// What it covers.
    pub body: GrantBody,
    /// The signing key's id.
    pub key_id: [u8; 8],
    /// The cluster key's signature over the signing bytes.
    pub signature: Signature,
    /// The group's threshold signature over the same bytes, once t servers
    /// gave it.
    pub group_signature: Option<GroupSignature>,
}

const GRANT: &str = "storage grant";

impl GrantBody {
    /// The bytes a signature by the key with id `key_id` covers.
    pub fn signing_bytes(&self, key_id: &[u8; 8]) -> Vec<u8> {
        grant_signing_bytes(self, key_id)
    }

    /// Signs the body with the cluster key.
    pub fn sign(self, cluster_key: &SigningKey) -> StorageGrant {
        let key_id = key_id(&cluster_key.verifying_key());
        let signature = cluster_key.sign(&grant_signing_bytes(&self, &key_id));
        StorageGrant {
            body: self,
            key_id,
            signature,
            group_signature: None,
        }
    }

    /// Checks counts and sizes: shards 1..=32 with `data_shards` of them
    /// needed, holders 1..=64 of sane length, non-empty shards, and the
    /// upload window inside the validity.
    pub fn check(&self) -> Result<(), String> {
        let n = self.shards.len();
        if n == 0 || n > MAX_GRANT_SHARDS {
            return Err(format!("{n} shards, 1 to {MAX_GRANT_SHARDS} allowed"));
        }
        if self.data_shards == 0 || usize::from(self.data_shards) > n {
            return Err(format!("{} data shards of {n}", self.data_shards));
        }
        if self.shards.iter().any(|s| s.len == 0) {
            return Err("a zero-length shard".into());
        }
        let h = self.holders.len();
        if h == 0 || h > MAX_GRANT_HOLDERS {
            return Err(format!("{h} holders, 1 to {MAX_GRANT_HOLDERS} allowed"));
        }
        if self
            .holders
            .iter()
            .any(|p| p.is_empty() || p.len() > MAX_HOLDER_ID_LEN)
        {
            return Err(format!(
                "a holder id of bad length (1 to {MAX_HOLDER_ID_LEN} bytes)"
            ));
        }
        if self.upload_until > self.expires_at {
            return Err("the upload window ends after the expiry".into());
        }
        Ok(())
    }
}

fn grant_signing_bytes(b: &GrantBody, key_id: &[u8; 8]) -> Vec<u8> {
    let mut out = GRANT_LABEL.to_vec();
    out.extend_from_slice(&GRANT_VERSION.to_be_bytes());
    out.extend_from_slice(&b.serial.to_be_bytes());
    out.extend_from_slice(key_id);
    out.extend_from_slice(&b.message_id);
    out.push(b.data_shards);
    out.push(b.shards.len() as u8);
    for s in &b.shards {
        out.extend_from_slice(&s.len.to_be_bytes());
        out.extend_from_slice(&s.sha256);
    }
    out.push(b.holders.len() as u8);
    for p in &b.holders {
        out.push(p.len() as u8);
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&b.upload_until.to_be_bytes());
    out.extend_from_slice(&b.expires_at.to_be_bytes());
    out
}

/// Checks the key id, then the cluster signature, then with a pinned group
/// key the group signature over the same bytes.
fn verify_signed(
    (what, serial): (&'static str, u64),
    found: &[u8; 8],
    bytes: &[u8],
    (signature, group_signature): (&Signature, Option<&GroupSignature>),
    (key, group_key): (&VerifyingKey, Option<&VerifyingKey>),
) -> Result<(), GrantError> {
    let pinned = key_id(key);
    if *found != pinned {
        return Err(GrantError::ForeignCluster {
            what,
            found: hex(found),
            pinned: hex(&pinned),
        });
    }
    key.verify_strict(bytes, signature)
        .map_err(|_| GrantError::BadSignature { what, serial })?;
    let Some(group_key) = group_key else {
        return Ok(());
    };
    let group_signature = group_signature.ok_or(GrantError::NoGroupSignature { what, serial })?;
    group_signature
        .verify(group_key, bytes)
        .map_err(|_| GrantError::BadGroupSignature { what, serial })
}

/// The one encoding of a signed object.
fn encode(mut bytes: Vec<u8>, signature: &Signature, group: Option<&GroupSignature>) -> Vec<u8> {
    bytes.extend_from_slice(&signature.to_bytes());
    if let Some(g) = group {
        bytes.extend_from_slice(&g.to_bytes());
    }
    bytes
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl StorageGrant {
    /// The bytes the signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        grant_signing_bytes(&self.body, &self.key_id)
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

    /// Reads [`StorageGrant::to_bytes`]: layout, counts and sizes; the
    /// signature is checked by [`StorageGrant::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GrantError> {
        if bytes.len() > MAX_GRANT_BYTES {
            return Err(malformed(GRANT, format!("{} bytes, too long", bytes.len())));
        }
        let mut r = Reader::new(bytes, GRANT);
        r.label(GRANT_LABEL)?;
        let version = r.u32()?;
        if version != GRANT_VERSION {
            return Err(GrantError::Version {
                what: GRANT,
                version,
            });
        }
        let serial = r.u64()?;
        let key_id = r.array::<8>()?;
        let message_id = r.array::<16>()?;
        let data_shards = r.u8()?;
        let n = r.u8()?;
        let mut shards = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            shards.push(GrantedShard {
                len: r.u64()?,
                sha256: r.array::<32>()?,
            });
        }
        let h = r.u8()?;
        let mut holders = Vec::with_capacity(usize::from(h));
        for _ in 0..h {
            let len = r.u8()?;
            holders.push(r.take(usize::from(len))?.to_vec());
        }
        let body = GrantBody {
            serial,
            message_id,
            data_shards,
            shards,
            holders,
            upload_until: r.u64()?,
            expires_at: r.u64()?,
        };
        let signature = Signature::from_bytes(&r.array::<64>()?);
        let group_signature = r.group_signature()?;
        body.check().map_err(|why| malformed(GRANT, why))?;
        Ok(Self {
            body,
            key_id,
            signature,
            group_signature,
        })
    }

    /// Checks the key id and the signature against the pinned cluster key.
    pub fn verify(&self, cluster_key: &VerifyingKey) -> Result<(), GrantError> {
        self.verify_pinned(cluster_key, None)
    }

    /// [`StorageGrant::verify`], and with a pinned `group_key` also the
    /// group signature, which must be there.
    pub fn verify_pinned(
        &self,
        cluster_key: &VerifyingKey,
        group_key: Option<&VerifyingKey>,
    ) -> Result<(), GrantError> {
        verify_signed(
            (GRANT, self.body.serial),
            &self.key_id,
            &self.signing_bytes(),
            (&self.signature, self.group_signature.as_ref()),
            (cluster_key, group_key),
        )
    }

    /// Whether `peer` (peer id bytes) is one of the holders named.
    pub fn names_holder(&self, peer: &[u8]) -> bool {
        self.body.holders.iter().any(|p| p == peer)
    }

    /// Whether a shard of this length and hash is one the grant covers.
    pub fn covers(&self, len: u64, sha256: &[u8; 32]) -> bool {
        self.body
            .shards
            .iter()
            .any(|s| s.len == len && s.sha256 == *sha256)
    }
}

fn malformed(what: &'static str, why: String) -> GrantError {
    GrantError::Malformed { what, why }
}

#[cfg(test)]
mod tests;
