//! Supernode adverts, pure: what each peer periodically publishes about
//! itself on the advert gossip topic, how it is signed, and the checks an
//! advert must pass before a peer believes it or passes it on. No IO; the
//! caller passes `now`.
//!
//! Paper §2.1, §3.2: supernodes are chosen from qualified ordinary nodes (a
//! public address, reasonable CPU, memory and bandwidth). An advert carries
//! those facts, the peer's load and free storage, its uptime and a sequence
//! number, and whether it currently serves as a supernode.
//!
//! Wire format (docs/PROTOCOL.md): postcard of [`SignedAdvert`], whose
//! `body` is postcard of [`Advert`] and whose `signature` is the peer's
//! libp2p identity key signing `ADVERT_CONTEXT || body`.

use std::collections::HashMap;

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use serde::{Deserialize, Serialize};

/// Format version of an advert body.
pub const ADVERT_VERSION: u8 = 1;
/// Domain separation for advert signatures.
pub const ADVERT_CONTEXT: &[u8] = b"vmail/v1/supernode-advert";
/// Largest encoded signed advert accepted; real ones are about 200 bytes.
pub const MAX_ADVERT_BYTES: usize = 1024;
/// An advert older than this is stale: peers re-publish well within it.
pub const MAX_ADVERT_AGE_SECS: u64 = 120;
/// How far in the future an advert's time may be (clock skew).
pub const MAX_CLOCK_SKEW_SECS: u64 = 30;

/// Upper bounds of the sane ranges. They are generous: they only catch
/// values no real peer has, which would otherwise skew the election.
pub mod limits {
    /// CPU cores.
    pub const CPU_CORES: u32 = 4096;
    /// Memory, MiB (64 TiB).
    pub const MEMORY_MIB: u64 = 64 * 1024 * 1024;
    /// Bandwidth, kbit/s (400 Gbit/s).
    pub const BANDWIDTH_KBPS: u64 = 400_000_000;
    /// Attached peers.
    pub const LOAD: u32 = 1_000_000;
    /// Free storage, bytes (1 PiB).
    pub const FREE_STORAGE: u64 = 1 << 50;
}

/// How a peer knows it is publicly reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Reachability {
    /// Not known to be reachable from outside.
    Private,
    /// AutoNAT probes by other peers confirmed a public address.
    AutoNat,
    /// The operator declared it public in the config.
    Configured,
}

impl Reachability {
    /// Whether this counts as publicly reachable.
    pub fn is_public(self) -> bool {
        !matches!(self, Self::Private)
    }
}

/// What a peer says about itself. Ordered field by field, so that any set
/// of adverts has one order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Advert {
    /// [`ADVERT_VERSION`].
    pub version: u8,
    /// The advertising peer.
    pub peer_id: PeerId,
    /// Grows with every advert the peer publishes; replays are refused.
    pub seq: u64,
    /// When it was made, Unix seconds.
    pub issued_at: u64,
    /// Whether the peer is publicly reachable, and how it knows.
    pub reachability: Reachability,
    /// CPU cores available to the peer.
    pub cpu_cores: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Upload bandwidth, kbit/s, measured or configured.
    pub bandwidth_kbps: u64,
    /// Seconds since the peer started.
    pub uptime_secs: u64,
    /// Peers attached to it (0 unless it serves as a supernode).
    pub load: u32,
    /// Free storage for others' voicemail, bytes.
    pub free_storage: u64,
    /// Whether it serves as a supernode now.
    pub serving: bool,
}

/// An advert as it travels: the encoded body and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAdvert {
    /// The signer's public key, protobuf-encoded (libp2p's encoding).
    pub public_key: Vec<u8>,
    /// postcard of [`Advert`].
    pub body: Vec<u8>,
    /// Signature over `ADVERT_CONTEXT || body`.
    pub signature: Vec<u8>,
}

/// Why an advert was refused. Every one of these but [`AdvertError::Stale`]
/// and [`AdvertError::Future`] (which depend on the receiver's clock) also
/// costs the peer that relayed it gossipsub score (see `docs/SECURITY.md`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    /// Larger than [`MAX_ADVERT_BYTES`].
    #[error("advert of {0} bytes exceeds the {MAX_ADVERT_BYTES}-byte limit")]
    Oversize(usize),
    /// Not a postcard-encoded signed advert, or a body that is not one.
    #[error("advert is malformed: {0}")]
    Malformed(String),
    /// A version this build does not read.
    #[error("advert has version {0}; this vmail reads version {ADVERT_VERSION}")]
    Version(u8),
    /// The key does not belong to the peer id the body names.
    #[error("advert for {0} is signed by another peer's key")]
    WrongSigner(PeerId),
    /// The signature does not verify.
    #[error("advert from {0} has a bad signature")]
    BadSignature(PeerId),
    /// Older than [`MAX_ADVERT_AGE_SECS`].
    #[error("advert from {peer} is {age} s old; the limit is {MAX_ADVERT_AGE_SECS} s")]
    Stale {
        /// The advertiser.
        peer: PeerId,
        /// Its age, seconds.
        age: u64,
    },
    /// More than [`MAX_CLOCK_SKEW_SECS`] in the future.
    #[error(
        "advert from {peer} is dated {ahead} s in the future; the limit is {MAX_CLOCK_SKEW_SECS} s"
    )]
    Future {
        /// The advertiser.
        peer: PeerId,
        /// How far ahead, seconds.
        ahead: u64,
    },
    /// A field outside its sane range.
    #[error("advert from {peer} has {field} = {value}, outside 0..={max}")]
    OutOfRange {
        /// The advertiser.
        peer: PeerId,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The largest value accepted.
        max: u64,
    },
    /// An uptime longer than the peer's clock allows.
    #[error("advert from {0} claims an uptime longer than Unix time")]
    Uptime(PeerId),
    /// A sequence number not above the last one seen from the peer.
    #[error("advert from {peer} repeats sequence number {seq} (last seen {last})")]
    Replay {
        /// The advertiser.
        peer: PeerId,
        /// Its sequence number.
        seq: u64,
        /// The last one accepted from it.
        last: u64,
    },
}

impl Advert {
    /// Signs and encodes the advert with the peer's identity key.
    pub fn sign(&self, key: &Keypair) -> Vec<u8> {
        let body = postcard::to_allocvec(self).expect("in-memory encoding cannot fail");
        let signature = key
            .sign(&signed_message(&body))
            .expect("ed25519 signing cannot fail");
        postcard::to_allocvec(&SignedAdvert {
            public_key: key.public().encode_protobuf(),
            body,
            signature,
        })
        .expect("in-memory encoding cannot fail")
    }

    /// Decodes and checks an advert as received: size, format, version,
    /// signature, freshness at `now` (Unix seconds) and ranges. Replays are
    /// caught by [`AdvertBook`], which remembers sequence numbers.
    pub fn verify(bytes: &[u8], now: u64) -> Result<Self, AdvertError> {
        if bytes.len() > MAX_ADVERT_BYTES {
            return Err(AdvertError::Oversize(bytes.len()));
        }
        let signed: SignedAdvert =
            postcard::from_bytes(bytes).map_err(|e| AdvertError::Malformed(e.to_string()))?;
        let advert: Advert = postcard::from_bytes(&signed.body)
            .map_err(|e| AdvertError::Malformed(e.to_string()))?;
        if advert.version != ADVERT_VERSION {
            return Err(AdvertError::Version(advert.version));
        }
        let key = PublicKey::try_decode_protobuf(&signed.public_key)
            .map_err(|e| AdvertError::Malformed(format!("public key: {e}")))?;
        let signer = key.to_peer_id();
        if signer != advert.peer_id {
            return Err(AdvertError::WrongSigner(advert.peer_id));
        }
        if !key.verify(&signed_message(&signed.body), &signed.signature) {
            return Err(AdvertError::BadSignature(signer));
        }
        advert.check(now)?;
        Ok(advert)
    }

    /// Freshness and ranges.
    fn check(&self, now: u64) -> Result<(), AdvertError> {
        let peer = self.peer_id;
        if self.issued_at > now + MAX_CLOCK_SKEW_SECS {
            return Err(AdvertError::Future {
                peer,
                ahead: self.issued_at - now,
            });
        }
        let age = now.saturating_sub(self.issued_at);
        if age > MAX_ADVERT_AGE_SECS {
            return Err(AdvertError::Stale { peer, age });
        }
        let ranges: [(&'static str, u64, u64); 5] = [
            ("cpu_cores", self.cpu_cores.into(), limits::CPU_CORES.into()),
            ("memory_mib", self.memory_mib, limits::MEMORY_MIB),
            (
                "bandwidth_kbps",
                self.bandwidth_kbps,
                limits::BANDWIDTH_KBPS,
            ),
            ("load", self.load.into(), limits::LOAD.into()),
            ("free_storage", self.free_storage, limits::FREE_STORAGE),
        ];
        for (field, value, max) in ranges {
            if value > max {
                return Err(AdvertError::OutOfRange {
                    peer,
                    field,
                    value,
                    max,
                });
            }
        }
        if self.uptime_secs > self.issued_at {
            return Err(AdvertError::Uptime(peer));
        }
        Ok(())
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    [ADVERT_CONTEXT, body].concat()
}

/// The newest valid advert of every peer heard from: what the election
/// runs on. It holds at most `cap` peers' adverts; a new peer's advert
/// when full evicts the one issued longest ago (honest peers re-publish
/// every advert period, so theirs are the fresh ones).
#[derive(Debug, Clone)]
pub struct AdvertBook {
    adverts: HashMap<PeerId, Advert>,
    cap: usize,
}

impl Default for AdvertBook {
    fn default() -> Self {
        Self::with_cap(crate::supernode::budget::DEFAULT_MAX_TRACKED_PEERS)
    }
}

impl AdvertBook {
    /// An empty book that holds at most `cap` peers' adverts (at least 1).
    pub fn with_cap(cap: usize) -> Self {
        Self {
            adverts: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// Verifies an advert received at `now` and keeps it if it is newer
    /// than the one held for its peer. A replayed or older sequence number
    /// is refused, so an old advert cannot bring back a stale claim.
    pub fn accept(&mut self, bytes: &[u8], now: u64) -> Result<&Advert, AdvertError> {
        self.insert(Advert::verify(bytes, now)?)
    }

    /// Keeps an advert that already passed [`Advert::verify`] (or this
    /// peer's own) if it is newer than the one held for its peer.
    pub fn insert(&mut self, advert: Advert) -> Result<&Advert, AdvertError> {
        self.insert_protecting(advert, |_| false)
    }

    /// [`AdvertBook::insert`], where a full book evicts the advert issued
    /// longest ago among peers not `protected` first (the caller protects
    /// peers it has confirmed, so that throwaway Sybil adverts evict each
    /// other rather than honest ones).
    pub fn insert_protecting(
        &mut self,
        advert: Advert,
        protected: impl Fn(&PeerId) -> bool,
    ) -> Result<&Advert, AdvertError> {
        if let Some(held) = self.adverts.get(&advert.peer_id)
            && advert.seq <= held.seq
        {
            return Err(AdvertError::Replay {
                peer: advert.peer_id,
                seq: advert.seq,
                last: held.seq,
            });
        }
        let peer = advert.peer_id;
        if !self.adverts.contains_key(&peer) && self.adverts.len() >= self.cap {
            crate::supernode::budget::evict_least(&mut self.adverts, |p, a| {
                (protected(p), a.issued_at, *p)
            });
        }
        self.adverts.insert(peer, advert);
        Ok(&self.adverts[&peer])
    }

    /// Drops adverts that went stale by `now`: their peers stopped
    /// re-publishing, most likely because they left.
    pub fn expire(&mut self, now: u64) {
        self.adverts
            .retain(|_, a| now.saturating_sub(a.issued_at) <= MAX_ADVERT_AGE_SECS);
    }

    /// Forgets a peer (it left gracefully).
    pub fn remove(&mut self, peer: &PeerId) {
        self.adverts.remove(peer);
    }

    /// The advert held for `peer`.
    pub fn get(&self, peer: &PeerId) -> Option<&Advert> {
        self.adverts.get(peer)
    }

    /// The adverts held, in no particular order.
    pub fn adverts(&self) -> impl Iterator<Item = &Advert> {
        self.adverts.values()
    }

    /// How many peers the book holds adverts from.
    pub fn len(&self) -> usize {
        self.adverts.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.adverts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn advert(key: &Keypair, seq: u64) -> Advert {
        Advert {
            version: ADVERT_VERSION,
            peer_id: key.public().to_peer_id(),
            seq,
            issued_at: NOW,
            reachability: Reachability::AutoNat,
            cpu_cores: 4,
            memory_mib: 8192,
            bandwidth_kbps: 100_000,
            uptime_secs: 3600,
            load: 3,
            free_storage: 10 << 30,
            serving: false,
        }
    }

    #[test]
    fn a_signed_advert_verifies_and_is_small() {
        let key = Keypair::generate_ed25519();
        let a = advert(&key, 1);
        let bytes = a.sign(&key);
        assert!(bytes.len() < 300, "{} bytes", bytes.len());
        assert_eq!(Advert::verify(&bytes, NOW + 5).unwrap(), a);
    }

    #[test]
    fn forged_adverts_are_refused() {
        let key = Keypair::generate_ed25519();
        let mallory = Keypair::generate_ed25519();
        // Signed by another key: the key does not match the claimed peer.
        let forged = advert(&key, 1).sign(&mallory);
        assert!(matches!(
            Advert::verify(&forged, NOW),
            Err(AdvertError::WrongSigner(_))
        ));
        // The right key, but the body changed after signing.
        let mut signed: SignedAdvert = postcard::from_bytes(&advert(&key, 1).sign(&key)).unwrap();
        let mut body = advert(&key, 1);
        body.cpu_cores = 64;
        signed.body = postcard::to_allocvec(&body).unwrap();
        let tampered = postcard::to_allocvec(&signed).unwrap();
        assert!(matches!(
            Advert::verify(&tampered, NOW),
            Err(AdvertError::BadSignature(_))
        ));
    }

    #[test]
    fn malformed_oversize_stale_future_and_out_of_range_adverts_are_refused() {
        let key = Keypair::generate_ed25519();
        assert!(matches!(
            Advert::verify(b"\x07garbage", NOW),
            Err(AdvertError::Malformed(_))
        ));
        assert!(matches!(
            Advert::verify(&vec![0u8; MAX_ADVERT_BYTES + 1], NOW),
            Err(AdvertError::Oversize(_))
        ));
        let a = advert(&key, 1).sign(&key);
        assert!(matches!(
            Advert::verify(&a, NOW + MAX_ADVERT_AGE_SECS + 1),
            Err(AdvertError::Stale { .. })
        ));
        assert!(matches!(
            Advert::verify(&a, NOW - MAX_CLOCK_SKEW_SECS - 1),
            Err(AdvertError::Future { .. })
        ));
        let mut big = advert(&key, 1);
        big.cpu_cores = limits::CPU_CORES + 1;
        let err = Advert::verify(&big.sign(&key), NOW).unwrap_err();
        assert!(
            matches!(
                err,
                AdvertError::OutOfRange {
                    field: "cpu_cores",
                    ..
                }
            ),
            "{err}"
        );
        let mut old = advert(&key, 1);
        old.uptime_secs = NOW + 1;
        assert!(matches!(
            Advert::verify(&old.sign(&key), NOW),
            Err(AdvertError::Uptime(_))
        ));
        let mut v2 = advert(&key, 1);
        v2.version = 2;
        assert!(matches!(
            Advert::verify(&v2.sign(&key), NOW),
            Err(AdvertError::Version(2))
        ));
    }

    #[test]
    fn the_book_keeps_the_newest_advert_and_refuses_replays() {
        let key = Keypair::generate_ed25519();
        let mut book = AdvertBook::default();
        let first = advert(&key, 5).sign(&key);
        book.accept(&first, NOW).unwrap();
        assert!(matches!(
            book.accept(&first, NOW),
            Err(AdvertError::Replay {
                seq: 5,
                last: 5,
                ..
            })
        ));
        assert!(matches!(
            book.accept(&advert(&key, 4).sign(&key), NOW),
            Err(AdvertError::Replay { seq: 4, .. })
        ));
        let mut newer = advert(&key, 6);
        newer.load = 9;
        assert_eq!(book.accept(&newer.sign(&key), NOW).unwrap().load, 9);
        assert_eq!(book.len(), 1);
        book.expire(NOW + MAX_ADVERT_AGE_SECS + 1);
        assert!(book.is_empty());
    }

    #[test]
    fn a_full_book_evicts_the_advert_issued_longest_ago() {
        let mut book = AdvertBook::with_cap(3);
        let keys: Vec<Keypair> = (0..5).map(|_| Keypair::generate_ed25519()).collect();
        for (i, k) in keys.iter().enumerate() {
            let mut a = advert(k, 1);
            a.issued_at = NOW + i as u64;
            book.insert(a).unwrap();
            assert!(book.len() <= 3);
        }
        assert!(book.get(&keys[0].public().to_peer_id()).is_none());
        assert!(book.get(&keys[4].public().to_peer_id()).is_some());
        // A protected peer's advert outlives newer unprotected ones.
        let kept = keys[2].public().to_peer_id();
        for i in 0..5 {
            let k = Keypair::generate_ed25519();
            let mut a = advert(&k, 1);
            a.issued_at = NOW + 10 + i;
            book.insert_protecting(a, |p| *p == kept).unwrap();
        }
        assert!(book.get(&kept).is_some());
    }
}
