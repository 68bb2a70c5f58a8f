//! A plain binary Merkle tree over SHA-256, so one threshold signature over a
//! root covers many items (a leave's delete orders, a batch of grants).
//!
//! Leaves are `SHA-256(0x00 || item)` and inner nodes `SHA-256(0x01 || left ||
//! right)`, so no leaf can pose as an inner node. A level of odd width moves
//! its last node up unchanged instead of pairing it with itself (duplicating
//! it lets two different lists share a root). A proof carries the item's index
//! and the number of items, from which the verifier derives the path; the
//! signed message binds the count too (see [`super::sign::batch_message`]).

use sha2::{Digest, Sha256};

use super::ThresholdError;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

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
    pub fn new<I: AsRef<[u8]>>(items: &[I]) -> Result<Self, ThresholdError> {
        if items.is_empty() {
            return Err(ThresholdError::EmptyBatch);
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
    pub fn root_of(&self, item: &[u8]) -> Result<Hash, ThresholdError> {
        if self.count == 0 || self.index >= self.count {
            return Err(ThresholdError::BadProof("index outside the tree"));
        }
        let mut siblings = self.siblings.iter();
        let (mut hash, mut i, mut width) = (leaf_hash(item), self.index, self.count);
        while width > 1 {
            if i % 2 == 1 {
                let left = siblings
                    .next()
                    .ok_or(ThresholdError::BadProof("too short"))?;
                hash = node_hash(left, &hash);
            } else if i + 1 < width {
                let right = siblings
                    .next()
                    .ok_or(ThresholdError::BadProof("too short"))?;
                hash = node_hash(&hash, right);
            }
            i /= 2;
            width = width.div_ceil(2);
        }
        if siblings.next().is_some() {
            return Err(ThresholdError::BadProof("too long"));
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

    /// A proof from [`InclusionProof::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ThresholdError> {
        if bytes.len() < 16 || !(bytes.len() - 16).is_multiple_of(32) {
            return Err(ThresholdError::BadProof("encoding has the wrong length"));
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
        Ok(Self {
            index: word(0),
            count: word(8),
            siblings,
        })
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
            Err(ThresholdError::EmptyBatch)
        ));
    }

    #[test]
    fn a_lone_node_is_not_paired_with_itself() {
        // With self-pairing, [a, b, c] and [a, b, c, c] would share a root.
        let three = MerkleTree::new(&[b"a", b"b", b"c"]).unwrap();
        let four = MerkleTree::new(&[b"a", b"b", b"c", b"c"]).unwrap();
        assert_ne!(three.root(), four.root());
    }
}
