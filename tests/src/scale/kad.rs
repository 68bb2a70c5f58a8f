//! Kademlia lookups at scale: routing tables shaped as libp2p-kad builds
//! them, and iterative lookups that count rounds (hops) and requests.
//!
//! Keys are libp2p's own ([`libp2p::kad::KBucketKey`]: SHA-256 of the
//! peer id's bytes). A peer's bucket `i` holds peers whose key shares
//! exactly `i` leading bits with its own; in the sorted key list those
//! form one contiguous range, so a table is built by sampling up to
//! [`K_VALUE`] entries from each range, lazily, only for the peers a
//! lookup reaches. A lookup runs in synchronous rounds of at most
//! [`ALPHA`] requests to the closest peers not yet asked; a request to an
//! offline peer times out, which costs its round like any other. It ends,
//! as libp2p's `ClosestPeersIter` does, when the [`K_VALUE`] closest
//! peers known have all answered.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Bucket size and result count: libp2p-kad 0.49's `K_VALUE` (libp2p 0.57).
pub const K_VALUE: usize = 20;
/// Requests in flight per lookup: libp2p-kad 0.49's `ALPHA_VALUE`.
pub const ALPHA: usize = 3;

/// A 256-bit Kademlia key as two big-endian halves, so XOR distances
/// compare as tuples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub u128, pub u128);

impl Key {
    /// libp2p's key of a peer id.
    pub fn of_peer(peer: &libp2p::PeerId) -> Self {
        let k = libp2p::kad::KBucketKey::from(*peer);
        Self::from_bytes(k.hashed_bytes())
    }

    /// A key from 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        let hi = u128::from_be_bytes(b[..16].try_into().expect("32 bytes"));
        let lo = u128::from_be_bytes(b[16..32].try_into().expect("32 bytes"));
        Self(hi, lo)
    }

    /// XOR distance.
    pub fn distance(self, other: Key) -> Key {
        Key(self.0 ^ other.0, self.1 ^ other.1)
    }

    /// Leading bits shared with `other` (256 when equal).
    pub fn common_prefix(self, other: Key) -> u32 {
        let d = self.distance(other);
        if d.0 != 0 {
            d.0.leading_zeros()
        } else {
            128 + d.1.leading_zeros()
        }
    }

    /// The key with the first `bits` bits of `self` and the rest `fill`.
    fn with_tail(self, bits: u32, fill: bool) -> Key {
        let mask = |n: u32| -> (u128, u128) {
            // Mask of the first n bits.
            let hi = if n >= 128 {
                u128::MAX
            } else if n == 0 {
                0
            } else {
                u128::MAX << (128 - n)
            };
            let lo = if n <= 128 {
                0
            } else if n >= 256 {
                u128::MAX
            } else {
                u128::MAX << (256 - n)
            };
            (hi, lo)
        };
        let (mh, ml) = mask(bits);
        if fill {
            Key(self.0 | !mh, self.1 | !ml)
        } else {
            Key(self.0 & mh, self.1 & ml)
        }
    }

    /// `self` with bit `i` (from the most significant) flipped.
    fn flip(self, i: u32) -> Key {
        if i < 128 {
            Key(self.0 ^ (1u128 << (127 - i)), self.1)
        } else {
            Key(self.0, self.1 ^ (1u128 << (255 - i)))
        }
    }
}

/// Everyone's keys, sorted, and the routing tables built so far.
#[derive(Debug)]
pub struct Dht {
    /// Keys sorted ascending; `order[j]` is the peer whose key is `sorted[j]`.
    sorted: Vec<Key>,
    order: Vec<u32>,
    keys: Vec<Key>,
    /// Peers that were online when the tables were filled.
    in_tables: Vec<bool>,
    tables: HashMap<u32, Vec<u32>>,
    seed: u64,
}

/// What one lookup cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// Rounds until the K closest known peers had all answered.
    pub rounds: u32,
    /// Requests sent, timed out ones included.
    pub requests: u32,
    /// Requests that timed out (the peer was offline).
    pub timeouts: u32,
    /// The round in which a provider (one of the K closest online peers to
    /// the key) first answered, if any did.
    pub provider_round: Option<u32>,
    /// Hops on the path to that provider: 1 for a peer in the asker's own
    /// table, one more for each peer that named the next.
    pub provider_hops: Option<u32>,
}

impl Dht {
    /// The DHT of peers with `keys`; tables hold only peers for which
    /// `in_tables` is true (online when the tables were last refreshed).
    pub fn new(keys: Vec<Key>, in_tables: Vec<bool>, seed: u64) -> Self {
        let mut order: Vec<u32> = (0..keys.len() as u32)
            .filter(|i| in_tables[*i as usize])
            .collect();
        order.sort_by_key(|i| keys[*i as usize]);
        let sorted = order.iter().map(|i| keys[*i as usize]).collect();
        Self {
            sorted,
            order,
            keys,
            in_tables,
            tables: HashMap::new(),
            seed,
        }
    }

    /// Indices into `sorted` of keys within `lo..=hi`.
    fn range(&self, lo: Key, hi: Key) -> std::ops::Range<usize> {
        let a = self.sorted.partition_point(|k| *k < lo);
        let b = self.sorted.partition_point(|k| *k <= hi);
        a..b
    }

    /// Peer `p`'s routing table: up to K per bucket, sampled from the
    /// peers in it.
    fn table(&mut self, p: u32) -> &[u32] {
        if !self.tables.contains_key(&p) {
            let me = self.keys[p as usize];
            let mut rng = StdRng::seed_from_u64(self.seed ^ (u64::from(p) << 20) ^ 0x6b61_6421);
            let mut entries = Vec::new();
            for bits in 0..256u32 {
                // Peers sharing at least `bits` bits with me, me included.
                let same = self.range(me.with_tail(bits, false), me.with_tail(bits, true));
                let own = usize::from(self.in_tables[p as usize]);
                if same.len() <= own {
                    break;
                }
                let other = me.flip(bits);
                let r = self.range(
                    other.with_tail(bits + 1, false),
                    other.with_tail(bits + 1, true),
                );
                let n = r.len();
                if n <= K_VALUE {
                    entries.extend(r.map(|j| self.order[j]));
                } else {
                    for j in rand::seq::index::sample(&mut rng, n, K_VALUE) {
                        entries.push(self.order[r.start + j]);
                    }
                }
            }
            entries.retain(|q| *q != p);
            self.tables.insert(p, entries);
        }
        &self.tables[&p]
    }

    /// The K entries of `p`'s table closest to `target`.
    fn closest_in_table(&mut self, p: u32, target: Key) -> Vec<u32> {
        let mut t: Vec<u32> = self.table(p).to_vec();
        let keys = &self.keys;
        t.sort_by_key(|q| keys[*q as usize].distance(target));
        t.truncate(K_VALUE);
        t
    }

    /// An iterative lookup of `target` from `from`, where `online` says who
    /// answers, and `providers` are the peers holding the record.
    pub fn lookup(&mut self, from: u32, target: Key, online: &[bool], providers: &[u32]) -> Lookup {
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            New,
            Answered,
            Failed,
        }
        let mut known: HashMap<u32, State> = HashMap::new();
        let mut depth: HashMap<u32, u32> = HashMap::new();
        for q in self.closest_in_table(from, target) {
            known.insert(q, State::New);
            depth.insert(q, 1);
        }
        let mut out = Lookup {
            rounds: 0,
            requests: 0,
            timeouts: 0,
            provider_round: None,
            provider_hops: None,
        };
        loop {
            let mut live: Vec<(Key, u32, State)> = known
                .iter()
                .filter(|(_, s)| **s != State::Failed)
                .map(|(q, s)| (self.keys[*q as usize].distance(target), *q, *s))
                .collect();
            live.sort_by_key(|(d, q, _)| (*d, *q));
            live.truncate(K_VALUE);
            let ask: Vec<u32> = live
                .iter()
                .filter(|(_, _, s)| *s == State::New)
                .take(ALPHA)
                .map(|(_, q, _)| *q)
                .collect();
            if ask.is_empty() {
                return out;
            }
            out.rounds += 1;
            for q in ask {
                out.requests += 1;
                if !online[q as usize] {
                    out.timeouts += 1;
                    known.insert(q, State::Failed);
                    continue;
                }
                known.insert(q, State::Answered);
                let d = depth[&q];
                if out.provider_round.is_none() && providers.contains(&q) {
                    out.provider_round = Some(out.rounds);
                    out.provider_hops = Some(d);
                }
                for r in self.closest_in_table(q, target) {
                    if r != from {
                        known.entry(r).or_insert(State::New);
                        depth.entry(r).or_insert(d + 1);
                    }
                }
            }
        }
    }

    /// The K online peers closest to `target`: the provider record's holders.
    pub fn holders(&self, target: Key, online: &[bool]) -> Vec<u32> {
        let mut all: Vec<u32> = (0..self.keys.len() as u32)
            .filter(|i| online[*i as usize])
            .collect();
        let keys = &self.keys;
        if all.len() > K_VALUE {
            all.select_nth_unstable_by_key(K_VALUE - 1, |q| keys[*q as usize].distance(target));
            all.truncate(K_VALUE);
        }
        all
    }

    /// A random key.
    pub fn random_key(rng: &mut StdRng) -> Key {
        Key(rng.r#gen(), rng.r#gen())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_libp2ps_and_prefixes_are_counted_from_the_top() {
        let a = libp2p::PeerId::random();
        let b = libp2p::PeerId::random();
        let (ka, kb) = (Key::of_peer(&a), Key::of_peer(&b));
        let (la, lb) = (
            libp2p::kad::KBucketKey::from(a),
            libp2p::kad::KBucketKey::from(b),
        );
        // libp2p's bucket index is 255 - shared prefix bits.
        let ilog = la.distance(&lb).ilog2().expect("distinct keys");
        assert_eq!(ilog, 255 - ka.common_prefix(kb));
        assert_eq!(ka.common_prefix(ka), 256);
        let k = Key(1 << 127, 5);
        assert_eq!(k.flip(0), Key(0, 5));
        assert_eq!(k.flip(255), Key(1 << 127, 4));
        assert_eq!(k.with_tail(1, false), Key(1 << 127, 0));
        assert_eq!(k.with_tail(0, true), Key(u128::MAX, u128::MAX));
    }

    #[test]
    fn a_lookup_over_all_online_peers_finds_the_closest_in_few_rounds() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 2000;
        let keys: Vec<Key> = (0..n).map(|_| Dht::random_key(&mut rng)).collect();
        let online = vec![true; n];
        let mut dht = Dht::new(keys, online.clone(), 1);
        for _ in 0..20 {
            let target = Dht::random_key(&mut rng);
            let holders = dht.holders(target, &online);
            let from = rng.gen_range(0..n as u32);
            let l = dht.lookup(from, target, &online, &holders);
            assert_eq!(l.timeouts, 0);
            assert!(l.provider_round.is_some(), "{l:?}");
            assert!(l.rounds <= 11, "{l:?}"); // log2(2000) = 11
        }
    }
}
