//! Storage identifiers, pure: which identifier each shard gets once its
//! holder is chosen ([`crate::core::score`] ranks the holders). No IO; the caller
//! passes the peers it knows and a random source.
//!
//! Paper §3.2: the sender picks a storage peer, then picks an identifier at
//! random inside that peer's range of the key space, so the DHT maps the
//! identifier to that very peer. In Kademlia a peer's range is the set of
//! keys closer (by XOR of SHA-256 points) to it than to any other peer.

use libp2p::PeerId;
use libp2p::kad::KBucketKey;
use rand::Rng;

use crate::core::locator::ObjectId;

/// Most random identifiers tried for one peer before giving up. With `n`
/// known peers a random identifier lands in a given peer's range with
/// probability about 1/n, so this bound is far above need for any realistic
/// routing table and only stops a pathological input.
pub const MAX_GRIND_ATTEMPTS: u32 = 1_000_000;

/// The key-space point of a storage identifier.
pub fn object_key(id: &ObjectId) -> KBucketKey<Vec<u8>> {
    KBucketKey::new(id.to_vec())
}

/// Whether `id` is strictly closer to `target` than to every peer in
/// `others` (entries equal to `target` are ignored).
pub fn is_in_range(id: &ObjectId, target: &PeerId, others: &[PeerId]) -> bool {
    let key = object_key(id);
    let mine = key.distance(&KBucketKey::from(*target));
    others
        .iter()
        .filter(|p| *p != target)
        .all(|p| mine < key.distance(&KBucketKey::from(*p)))
}

/// Draws random identifiers until one falls in `target`'s range among the
/// known peers `others`. None after [`MAX_GRIND_ATTEMPTS`] tries.
pub fn identifier_in_range(
    target: &PeerId,
    others: &[PeerId],
    rng: &mut impl Rng,
) -> Option<ObjectId> {
    (0..MAX_GRIND_ATTEMPTS).find_map(|_| {
        let id: ObjectId = rng.r#gen();
        is_in_range(&id, target, others).then_some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn identifiers_fall_in_the_target_range() {
        let mut rng = StdRng::seed_from_u64(2);
        let ps = peers(20);
        for target in &ps {
            let id = identifier_in_range(target, &ps, &mut rng).expect("found");
            // Closer to the target than to every other peer, by brute force.
            let key = object_key(&id);
            let d = key.distance(&KBucketKey::from(*target));
            for p in ps.iter().filter(|p| *p != target) {
                assert!(d < key.distance(&KBucketKey::from(*p)));
            }
        }
    }

    #[test]
    fn every_identifier_is_in_exactly_one_peers_range() {
        // Guards the check itself: the ranges split the key space, so each
        // random id belongs to one peer of 20, and no peer owns them all.
        let mut rng = StdRng::seed_from_u64(3);
        let ps = peers(20);
        let mut hits = vec![0usize; ps.len()];
        for _ in 0..2000 {
            let id = rng.r#gen();
            let owners: Vec<usize> = (0..ps.len())
                .filter(|&i| is_in_range(&id, &ps[i], &ps))
                .collect();
            assert_eq!(owners.len(), 1, "{owners:?}");
            hits[owners[0]] += 1;
        }
        assert!(hits.iter().all(|&h| h < 2000), "{hits:?}");
    }
}
