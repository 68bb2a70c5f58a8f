//! A FROST signing round: commit, build the signing package, sign, aggregate.
//!
//! Each of at least `t` members calls [`commit`], keeps its nonces in memory
//! and sends its commitments to the coordinator (the Raft leader, say). The
//! coordinator builds the [`SigningPackage`] with [`signing_package`] and sends
//! it to those members; each answers with [`sign_share`]; the coordinator calls
//! [`aggregate`], which names any member whose share was wrong and returns a
//! plain Ed25519 signature only after `verify_strict` accepted it.
//!
//! [`BatchToSign`] signs many items with one round: the group signs the
//! Merkle root of the items (`vmail_proto::batch`), and each item travels
//! with its inclusion proof in a [`GroupSignature`].

use std::collections::BTreeMap;

use frost_ed25519::rand_core::{CryptoRng, RngCore};

use vmail_proto::batch::{GroupSignature, MerkleTree, batch_message};

use super::{
    Identifier, KeyPackage, PublicKeyPackage, SignatureShare, SigningCommitments, SigningNonces,
    SigningPackage, ThresholdError, group_key_bytes, verify,
};

/// Round 1 for a signer: fresh nonces (keep them secret, use them once) and
/// the commitments to send to the coordinator.
pub fn commit<R: RngCore + CryptoRng>(
    key: &KeyPackage,
    rng: &mut R,
) -> (SigningNonces, SigningCommitments) {
    frost_ed25519::round1::commit(key.signing_share(), rng)
}

/// The coordinator's signing package for `message` from the commitments of
/// the chosen signers; refuses fewer than the threshold and non-members.
pub fn signing_package(
    public: &PublicKeyPackage,
    commitments: BTreeMap<Identifier, SigningCommitments>,
    message: &[u8],
) -> Result<SigningPackage, ThresholdError> {
    let needed = public.min_signers().unwrap_or(u16::MAX);
    if commitments.len() < usize::from(needed) {
        return Err(ThresholdError::NotEnoughSigners {
            got: commitments.len(),
            needed,
        });
    }
    if commitments
        .keys()
        .any(|id| !public.verifying_shares().contains_key(id))
    {
        return Err(ThresholdError::Sign(
            frost_ed25519::Error::UnknownIdentifier,
        ));
    }
    Ok(SigningPackage::new(commitments, message))
}

/// Round 2 for a signer: its share of the signature. Takes the nonces by
/// value: reusing them with another package would leak the signing share.
pub fn sign_share(
    package: &SigningPackage,
    nonces: SigningNonces,
    key: &KeyPackage,
) -> Result<SignatureShare, ThresholdError> {
    frost_ed25519::round2::sign(package, &nonces, key).map_err(ThresholdError::Sign)
}

/// The coordinator's last step: the group signature, checked with
/// `verify_strict` under the group key before it is returned. A wrong share
/// is reported with its sender's identifier.
pub fn aggregate(
    package: &SigningPackage,
    shares: &BTreeMap<Identifier, SignatureShare>,
    public: &PublicKeyPackage,
) -> Result<ed25519_dalek::Signature, ThresholdError> {
    let signature = frost_ed25519::aggregate(package, shares, public).map_err(|e| match e {
        frost_ed25519::Error::InvalidSignatureShare { culprits } => {
            ThresholdError::Cheaters { culprits }
        }
        frost_ed25519::Error::IncorrectNumberOfShares => ThresholdError::NotEnoughSigners {
            got: shares.len(),
            needed: public.min_signers().unwrap_or(u16::MAX),
        },
        other => ThresholdError::Aggregate(other),
    })?;
    let bytes = signature
        .serialize()
        .map_err(|source| ThresholdError::Encode {
            what: "signature",
            source,
        })?;
    let signature =
        ed25519_dalek::Signature::from_slice(&bytes).map_err(ThresholdError::BadSignature)?;
    verify(&group_key_bytes(public)?, package.message(), &signature)?;
    Ok(signature)
}

/// Many items to be signed with one signing round.
#[derive(Debug, Clone)]
pub struct BatchToSign {
    tree: MerkleTree,
}

impl BatchToSign {
    /// A batch of `items`, in order; at least one.
    pub fn new<I: AsRef<[u8]>>(items: &[I]) -> Result<Self, ThresholdError> {
        Ok(Self {
            tree: MerkleTree::new(items)?,
        })
    }

    /// The message to run one signing round on.
    pub fn message(&self) -> Vec<u8> {
        batch_message(&self.tree.root(), self.tree.len() as u64)
    }

    /// Each item's group signature (the round's, with the item's inclusion
    /// proof), in item order, given the group's signature on
    /// [`BatchToSign::message`]. Each verifies with
    /// [`GroupSignature::verify`].
    pub fn item_signatures(&self, signature: ed25519_dalek::Signature) -> Vec<GroupSignature> {
        (0..self.tree.len())
            .map(|i| GroupSignature {
                signature,
                proof: self.tree.proof(i).map(Box::new),
            })
            .collect()
    }
}
