//! One threshold signature over many objects (docs/THRESHOLD.md §2,
//! batching): the objects' signing bytes become the leaves of a plain
//! binary Merkle tree over SHA-256, the group signs [`batch_message`] of its
//! root, and each object carries a [`GroupSignature`] with its inclusion
//! proof. A lone object is signed directly and carries no proof.
//!
//! Leaves are `SHA-256(0x00 || item)` and inner nodes `SHA-256(0x01 || left ||
//! right)`, so no leaf can pose as an inner node. A level of odd width moves
//! its last node up unchanged instead of pairing it with itself (duplicating
//! it lets two different lists share a root). A proof carries the item's index
//! and the number of items, from which the verifier derives the path; the
//! signed message binds the count too.

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Most objects one batch signature covers. A coordinator batches fewer;
/// a reader refuses a proof that claims more.
pub const MAX_BATCH: u64 = 1 << 16;
/// Longest encoded inclusion proof: index, count and the 16 siblings of a
/// path in a tree of [`MAX_BATCH`] items.
pub const MAX_PROOF_BYTES: usize = 16 + 32 * 16;

/// Domain prefix of the message signed for a batch, so a batch signature is
/// never a signature on anything else the group signs.
const BATCH_DOMAIN: &[u8] = b"vmail-auth batch root v1";

/// Why a batch could not be built or a batch signature does not hold.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A batch to sign has no items.
    #[error("a batch to sign needs at least one item")]
    Empty,
    /// A Merkle inclusion proof is malformed or does not lead to its root.
    #[error("bad inclusion proof: {0}")]
    BadProof(&'static str),
    /// The group signature does not verify under the group key.
    #[error("the group signature does not verify under the group key")]
    BadSignature,
}

/// The message the group signs for a batch: domain, item count, Merkle root.
pub fn batch_message(root: &Hash, count: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(BATCH_DOMAIN.len() + 8 + 32);
    m.extend_from_slice(BATCH_DOMAIN);
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(root);
    m
}

const LEAF_TAG: u8 = 0x00;
const NODE_TAG: u8 = 0x01;

/// The hash of an item as a leaf.
pub fn leaf_hash(item: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_TAG]);
    h.update(item);
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_TAG]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Every level of the tree, leaves first, root last.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

/// The path from one item to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The item's position among the items.
    pub index: u64,
    /// How many items the tree has.
    pub count: u64,
    /// Sibling hashes from the leaf level up, skipping levels where the node
    /// moved up alone.
    pub siblings: Vec<Hash>,
}

impl MerkleTree {
    /// The tree of `items`, in order; at least one item.
    pub fn new<I: AsRef<[u8]>>(items: &[I]) -> Result<Self, BatchError> {
        if items.is_empty() {
            return Err(BatchError::Empty);
        }
        let mut levels = vec![
            items
                .iter()
                .map(|i| leaf_hash(i.as_ref()))
                .collect::<Vec<_>>(),
        ];
        while let Some(level) = levels.last().filter(|l| l.len() > 1) {
            let next = level
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    [alone] => *alone,
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            levels.push(next);
        }
        Ok(Self { levels })
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        self.levels[self.levels.len() - 1][0]
    }

    /// How many items the tree has.
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    /// Always false: a tree has at least one item.
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The inclusion proof of item `index`, if there is one.
    pub fn proof(&self, index: usize) -> Option<InclusionProof> {
        if index >= self.len() {
            return None;
        }
        let mut siblings = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = i ^ 1;
            if sibling < level.len() {
                siblings.push(level[sibling]);
            }
            i /= 2;
        }
        Some(InclusionProof {
            index: index as u64,
            count: self.len() as u64,
            siblings,
        })
    }
}

impl InclusionProof {
    /// The root that `item` at this proof's position leads to.
    pub fn root_of(&self, item: &[u8]) -> Result<Hash, BatchError> {
        if self.count == 0 || self.index >= self.count {
            return Err(BatchError::BadProof("index outside the tree"));
        }
        let mut siblings = self.siblings.iter();
        let (mut hash, mut i, mut width) = (leaf_hash(item), self.index, self.count);
        while width > 1 {
            if i % 2 == 1 {
                let left = siblings.next().ok_or(BatchError::BadProof("too short"))?;
                hash = node_hash(left, &hash);
            } else if i + 1 < width {
                let right = siblings.next().ok_or(BatchError::BadProof("too short"))?;
                hash = node_hash(&hash, right);
            }
            i /= 2;
            width = width.div_ceil(2);
        }
        if siblings.next().is_some() {
            return Err(BatchError::BadProof("too long"));
        }
        Ok(hash)
    }

    /// The proof as bytes: index and count (u64, big-endian), then the siblings.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 32 * self.siblings.len());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        for s in &self.siblings {
            out.extend_from_slice(s);
        }
        out
    }

    /// A proof from [`InclusionProof::to_bytes`]: an index inside at most
    /// [`MAX_BATCH`] items, and exactly the siblings its path needs.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < 16 || !(bytes.len() - 16).is_multiple_of(32) {
            return Err(BatchError::BadProof("encoding has the wrong length"));
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(w)
        };
        let siblings = bytes[16..]
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        let proof = Self {
            index: word(0),
            count: word(8),
            siblings,
        };
        if proof.count > MAX_BATCH || proof.index >= proof.count {
            return Err(BatchError::BadProof("index outside the tree"));
        }
        if proof.siblings.len() != path_len(proof.index, proof.count) {
            return Err(BatchError::BadProof("not as many siblings as the path has"));
        }
        Ok(proof)
    }
}

/// How many siblings the path from item `index` of `count` has.
fn path_len(mut index: u64, mut width: u64) -> usize {
    let mut n = 0;
    while width > 1 {
        if index % 2 == 1 || index + 1 < width {
            n += 1;
        }
        index /= 2;
        width = width.div_ceil(2);
    }
    n
}

/// The group's signature on one object: on its signing bytes directly, or
/// on the root of a batch the object is in, with its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSignature {
    /// The signature: on the object's bytes, or on [`batch_message`].
    pub signature: Signature,
    /// With a batch signature, the path from the object to the root
    /// (boxed: most objects are signed alone and carry none).
    pub proof: Option<Box<InclusionProof>>,
}

impl From<Signature> for GroupSignature {
    fn from(signature: Signature) -> Self {
        Self {
            signature,
            proof: None,
        }
    }
}

impl GroupSignature {
    /// The encoding: the 64-byte signature, then with a batch signature the
    /// proof ([`InclusionProof::to_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.signature.to_bytes().to_vec();
        if let Some(p) = &self.proof {
            out.extend_from_slice(&p.to_bytes());
        }
        out
    }

    /// Reads [`GroupSignature::to_bytes`], which must be all of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BatchError> {
        let Some((signature, proof)) = bytes.split_first_chunk::<64>() else {
            return Err(BatchError::BadProof("shorter than a signature"));
        };
        Ok(Self {
            signature: Signature::from_bytes(signature),
            proof: (!proof.is_empty())
                .then(|| InclusionProof::from_bytes(proof).map(Box::new))
                .transpose()?,
        })
    }

    /// Checks that the group signed `bytes`, directly or in a batch.
    pub fn verify(&self, group_key: &VerifyingKey, bytes: &[u8]) -> Result<(), BatchError> {
        let message = match &self.proof {
            None => bytes.to_vec(),
            Some(p) => batch_message(&p.root_of(bytes)?, p.count),
        };
        group_key
            .verify_strict(&message, &self.signature)
            .map_err(|_| BatchError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("item {i}").into_bytes()).collect()
    }

    #[test]
    fn every_proof_leads_to_the_root_for_all_small_sizes() {
        for n in 1..=17 {
            let items = items(n);
            let tree = MerkleTree::new(&items).unwrap();
            for (i, item) in items.iter().enumerate() {
                let proof = tree.proof(i).unwrap();
                assert_eq!(proof.root_of(item).unwrap(), tree.root(), "n={n} i={i}");
                let decoded = InclusionProof::from_bytes(&proof.to_bytes()).unwrap();
                assert_eq!(decoded, proof);
            }
            assert!(tree.proof(n).is_none());
        }
    }

    #[test]
    fn a_changed_item_or_proof_leads_elsewhere() {
        let items = items(5);
        let tree = MerkleTree::new(&items).unwrap();
        let proof = tree.proof(2).unwrap();
        assert_ne!(proof.root_of(b"item 9").unwrap(), tree.root());
        let mut moved = proof.clone();
        moved.index = 3;
        assert_ne!(moved.root_of(&items[2]).unwrap(), tree.root());
        let mut short = proof.clone();
        short.siblings.pop();
        assert!(short.root_of(&items[2]).is_err());
        let mut long = proof;
        long.siblings.push([0; 32]);
        assert!(long.root_of(&items[2]).is_err());
    }

    #[test]
    fn single_item_root_is_its_leaf_and_empty_is_refused() {
        let tree = MerkleTree::new(&[b"only"]).unwrap();
        assert_eq!(tree.root(), leaf_hash(b"only"));
        assert!(matches!(
            MerkleTree::new::<&[u8]>(&[]),
            Err(BatchError::Empty)
        ));
    }

    #[test]
    fn a_lone_node_is_not_paired_with_itself() {
        // With self-pairing, [a, b, c] and [a, b, c, c] would share a root.
        let three = MerkleTree::new(&[b"a", b"b", b"c"]).unwrap();
        let four = MerkleTree::new(&[b"a", b"b", b"c", b"c"]).unwrap();
        assert_ne!(three.root(), four.root());
    }

    #[test]
    fn a_group_signature_round_trips_and_verifies_directly_or_in_a_batch() {
        use ed25519_dalek::{Signer, SigningKey};
        let key = SigningKey::from_bytes(&[7; 32]);
        let group = key.verifying_key();
        let items = items(5);

        let direct = GroupSignature::from(key.sign(&items[0]));
        let back = GroupSignature::from_bytes(&direct.to_bytes()).unwrap();
        assert_eq!(back, direct);
        back.verify(&group, &items[0]).unwrap();
        assert!(back.verify(&group, &items[1]).is_err());

        let tree = MerkleTree::new(&items).unwrap();
        let signature = key.sign(&batch_message(&tree.root(), 5));
        for (i, item) in items.iter().enumerate() {
            let batched = GroupSignature {
                signature,
                proof: tree.proof(i).map(Box::new),
            };
            let back = GroupSignature::from_bytes(&batched.to_bytes()).unwrap();
            assert_eq!(back, batched);
            back.verify(&group, item).unwrap();
            // Another batch member's bytes, or the root signed as if it
            // were an object, do not pass.
            assert!(back.verify(&group, &items[(i + 1) % 5]).is_err());
            assert!(
                GroupSignature::from(signature)
                    .verify(&group, item)
                    .is_err()
            );
        }
        // A proof with a sibling too many or too few, an index past the
        // count, or a count past the bound is refused when read.
        let good = GroupSignature {
            signature,
            proof: tree.proof(2).map(Box::new),
        }
        .to_bytes();
        assert!(GroupSignature::from_bytes(&good[..good.len() - 32]).is_err());
        assert!(GroupSignature::from_bytes(&[&good[..], &[0; 32]].concat()).is_err());
        let mut past = good.clone();
        past[64..72].copy_from_slice(&5u64.to_be_bytes());
        assert!(GroupSignature::from_bytes(&past).is_err());
        let mut huge = good.clone();
        huge[72..80].copy_from_slice(&(MAX_BATCH + 1).to_be_bytes());
        assert!(GroupSignature::from_bytes(&huge).is_err());
        assert!(GroupSignature::from_bytes(&good[..63]).is_err());
    }
}
