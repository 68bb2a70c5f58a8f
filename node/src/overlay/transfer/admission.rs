//! Who gets a blob exchange on a holder, and for how long: the pure
//! admission decisions of [`super::serve`]. No IO and no clock: the holder
//! reports streams opening and closing, requests entering and leaving a
//! pool and quota being reserved and released, and reads back a decision.
//!
//! A remote peer gets a bounded share of everything it can make a holder
//! spend (docs/SECURITY.md, "Holders"):
//! - open streams, including ones still sending their request:
//!   [`STREAMS_PER_PEER`] per peer, [`STREAMS_TOTAL`] in all;
//! - the heavy pool (`Store`, `Fetch`, `Relayout`, which move or rewrite up
//!   to a whole object): [`HEAVY_PER_PEER`] per peer, [`HEAVY_SLOTS`] in all;
//! - the light pool (`Has`, `Delete`, `Erase`, `Prove`), kept apart so a
//!   flood of stores never starves repair checks, deletes and proofs:
//!   [`LIGHT_PER_PEER`] per peer, [`LIGHT_SLOTS`] in all;
//! - quota promised to its stores in flight: [`RESERVED_PER_PEER`] (one
//!   store is always allowed, however large, so the cap never refuses an
//!   object the holder's size limit admits);
//! - time: the request must arrive within [`REQUEST_TIMEOUT`], and a body
//!   must move at [`MIN_RATE`] after a grace of [`EXCHANGE_GRACE`]
//!   ([`body_deadline`]), so a slow drip is cut.
//!
//! Over a bound the holder answers `Busy` with [`RETRY_AFTER`] instead of
//! dropping the stream, and the sender backs off and retries.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;

/// Open blob streams one peer may have at a holder, whatever they carry.
pub const STREAMS_PER_PEER: usize = 16;
/// Open blob streams a holder serves in all.
pub const STREAMS_TOTAL: usize = 256;
/// Heavy exchanges (`Store`, `Fetch`, `Relayout`) a holder serves at once.
pub const HEAVY_SLOTS: usize = 32;
/// Heavy exchanges one peer may have running at a holder at once.
pub const HEAVY_PER_PEER: usize = 4;
/// Light exchanges (`Has`, `Delete`, `Erase`, `Prove`) a holder serves at
/// once, apart from the heavy ones.
pub const LIGHT_SLOTS: usize = 16;
/// Light exchanges one peer may have running at a holder at once.
pub const LIGHT_PER_PEER: usize = 4;
/// Quota bytes one peer's stores in flight may hold reserved at a holder;
/// a peer with nothing reserved may always reserve one object.
pub const RESERVED_PER_PEER: u64 = 32 * 1024 * 1024;
/// Longest a peer may take to send its request once its stream is open.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a body transfer gets on top of what [`MIN_RATE`] allows.
pub const EXCHANGE_GRACE: Duration = Duration::from_secs(5);
/// Slowest a peer may send or take a body, bytes per second, before the
/// exchange is cut.
pub const MIN_RATE: u64 = 128 * 1024;
/// Streams over their peer's share that are still answered `Busy` at
/// once; past this many the holder drops them unanswered.
pub const MAX_BUSY_ANSWERS: usize = 64;
/// What a busy holder tells the sender to wait before trying again.
pub const RETRY_AFTER: Duration = Duration::from_millis(200);

/// Which pool an exchange runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Moves or rewrites a whole object: `Store`, `Fetch`, `Relayout`.
    Heavy,
    /// Cheap: `Has`, `Delete`, `Erase`, `Prove`.
    Light,
}

/// The bounds, [`Limits::default`] being the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// [`STREAMS_PER_PEER`].
    pub streams_per_peer: usize,
    /// [`STREAMS_TOTAL`].
    pub streams_total: usize,
    /// [`HEAVY_SLOTS`].
    pub heavy_slots: usize,
    /// [`HEAVY_PER_PEER`].
    pub heavy_per_peer: usize,
    /// [`LIGHT_SLOTS`].
    pub light_slots: usize,
    /// [`LIGHT_PER_PEER`].
    pub light_per_peer: usize,
    /// [`RESERVED_PER_PEER`].
    pub reserved_per_peer: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            streams_per_peer: STREAMS_PER_PEER,
            streams_total: STREAMS_TOTAL,
            heavy_slots: HEAVY_SLOTS,
            heavy_per_peer: HEAVY_PER_PEER,
            light_slots: LIGHT_SLOTS,
            light_per_peer: LIGHT_PER_PEER,
            reserved_per_peer: RESERVED_PER_PEER,
        }
    }
}

/// Why a holder is too busy for an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// This peer has its share of open streams.
    #[error("this peer has {0} blob streams open here already")]
    PeerStreams(usize),
    /// The holder has every stream it serves open.
    #[error("the holder has {0} blob streams open")]
    Streams(usize),
    /// This peer has its share of the pool.
    #[error("this peer has {running} {pool:?} exchanges running here already")]
    PeerPool {
        /// The pool.
        pool: Pool,
        /// Its exchanges running.
        running: usize,
    },
    /// The pool is full.
    #[error("every {pool:?} exchange slot ({slots}) is taken")]
    Pool {
        /// The pool.
        pool: Pool,
        /// Its size.
        slots: usize,
    },
    /// This peer's stores in flight hold their share of the quota.
    #[error("this peer's stores in flight hold {reserved} bytes of quota here (at most {cap})")]
    Reserved {
        /// Bytes it holds reserved.
        reserved: u64,
        /// The cap.
        cap: u64,
    },
}

/// What one peer holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Share {
    streams: usize,
    heavy: usize,
    light: usize,
    reserved: u64,
}

impl Share {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The holder's account of who holds what.
#[derive(Debug, Default)]
pub struct Admission {
    limits: Limits,
    peers: HashMap<PeerId, Share>,
    streams: usize,
    heavy: usize,
    light: usize,
}

impl Admission {
    /// An empty account under `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    fn share(&mut self, peer: PeerId) -> &mut Share {
        self.peers.entry(peer).or_default()
    }

    /// Forgets a peer that holds nothing any more.
    fn tidy(&mut self, peer: &PeerId) {
        if self.peers.get(peer).is_some_and(Share::is_empty) {
            self.peers.remove(peer);
        }
    }

    /// A stream from `peer` opened: admit it, or say why not.
    pub fn open(&mut self, peer: PeerId) -> Result<(), Busy> {
        let limits = self.limits;
        let mine = self.peers.get(&peer).map_or(0, |s| s.streams);
        if mine >= limits.streams_per_peer {
            return Err(Busy::PeerStreams(mine));
        }
        if self.streams >= limits.streams_total {
            return Err(Busy::Streams(self.streams));
        }
        self.streams += 1;
        self.share(peer).streams += 1;
        Ok(())
    }

    /// A stream [`Admission::open`] admitted closed.
    pub fn close(&mut self, peer: PeerId) {
        self.streams = self.streams.saturating_sub(1);
        let s = self.share(peer);
        s.streams = s.streams.saturating_sub(1);
        self.tidy(&peer);
    }

    /// `peer`'s request wants a slot in `pool`: take one, or say why not.
    pub fn enter(&mut self, peer: PeerId, pool: Pool) -> Result<(), Busy> {
        let limits = self.limits;
        let (slots, per_peer, running) = match pool {
            Pool::Heavy => (limits.heavy_slots, limits.heavy_per_peer, self.heavy),
            Pool::Light => (limits.light_slots, limits.light_per_peer, self.light),
        };
        let share = self.peers.get(&peer).copied().unwrap_or_default();
        let mine = match pool {
            Pool::Heavy => share.heavy,
            Pool::Light => share.light,
        };
        if mine >= per_peer {
            return Err(Busy::PeerPool {
                pool,
                running: mine,
            });
        }
        if running >= slots {
            return Err(Busy::Pool { pool, slots });
        }
        let s = self.share(peer);
        match pool {
            Pool::Heavy => s.heavy += 1,
            Pool::Light => s.light += 1,
        }
        match pool {
            Pool::Heavy => self.heavy += 1,
            Pool::Light => self.light += 1,
        }
        Ok(())
    }

    /// A slot [`Admission::enter`] gave is free again.
    pub fn exit(&mut self, peer: PeerId, pool: Pool) {
        let s = self.share(peer);
        match pool {
            Pool::Heavy => s.heavy = s.heavy.saturating_sub(1),
            Pool::Light => s.light = s.light.saturating_sub(1),
        }
        match pool {
            Pool::Heavy => self.heavy = self.heavy.saturating_sub(1),
            Pool::Light => self.light = self.light.saturating_sub(1),
        }
        self.tidy(&peer);
    }

    /// `peer`'s store wants `bytes` of quota promised while its body
    /// arrives: allowed within its share, or when it has none reserved.
    pub fn reserve(&mut self, peer: PeerId, bytes: u64) -> Result<(), Busy> {
        let cap = self.limits.reserved_per_peer;
        let s = self.share(peer);
        if s.reserved > 0 && s.reserved.saturating_add(bytes) > cap {
            let reserved = s.reserved;
            return Err(Busy::Reserved { reserved, cap });
        }
        s.reserved += bytes;
        Ok(())
    }

    /// Quota [`Admission::reserve`] promised is released.
    pub fn release(&mut self, peer: PeerId, bytes: u64) {
        let s = self.share(peer);
        s.reserved = s.reserved.saturating_sub(bytes);
        self.tidy(&peer);
    }

    /// Streams open in all, and heavy and light exchanges running.
    pub fn load(&self) -> (usize, usize, usize) {
        (self.streams, self.heavy, self.light)
    }

    /// Bytes `peer` holds reserved.
    pub fn reserved_by(&self, peer: &PeerId) -> u64 {
        self.peers.get(peer).map_or(0, |s| s.reserved)
    }
}

/// How long the remote side may take to send or take a body of `len`
/// bytes: [`EXCHANGE_GRACE`] plus `len` at [`MIN_RATE`].
pub fn body_deadline(len: u64) -> Duration {
    EXCHANGE_GRACE + Duration::from_millis(len.saturating_mul(1000) / MIN_RATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Limits {
        Limits {
            streams_per_peer: 3,
            streams_total: 5,
            heavy_slots: 3,
            heavy_per_peer: 2,
            light_slots: 2,
            light_per_peer: 1,
            reserved_per_peer: 100,
        }
    }

    #[test]
    fn one_peer_gets_its_share_of_streams_and_the_others_still_get_in() {
        let mut a = Admission::new(small());
        let (hog, other) = (PeerId::random(), PeerId::random());
        for _ in 0..3 {
            a.open(hog).unwrap();
        }
        assert_eq!(a.open(hog), Err(Busy::PeerStreams(3)));
        a.open(other).unwrap();
        a.open(other).unwrap();
        // Five open in all: a third peer waits.
        assert_eq!(a.open(PeerId::random()), Err(Busy::Streams(5)));
        a.close(hog);
        a.open(hog).unwrap();
    }

    #[test]
    fn a_peer_fills_its_share_of_the_heavy_pool_but_not_the_light_one() {
        let mut a = Admission::new(small());
        let (hog, other) = (PeerId::random(), PeerId::random());
        a.enter(hog, Pool::Heavy).unwrap();
        a.enter(hog, Pool::Heavy).unwrap();
        assert_eq!(
            a.enter(hog, Pool::Heavy),
            Err(Busy::PeerPool {
                pool: Pool::Heavy,
                running: 2
            })
        );
        // The light pool is apart: a repair check still gets in.
        a.enter(hog, Pool::Light).unwrap();
        a.enter(other, Pool::Light).unwrap();
        assert_eq!(
            a.enter(PeerId::random(), Pool::Light),
            Err(Busy::Pool {
                pool: Pool::Light,
                slots: 2
            })
        );
        a.enter(other, Pool::Heavy).unwrap();
        assert_eq!(
            a.enter(PeerId::random(), Pool::Heavy),
            Err(Busy::Pool {
                pool: Pool::Heavy,
                slots: 3
            })
        );
        a.exit(hog, Pool::Heavy);
        a.enter(hog, Pool::Heavy).unwrap();
        assert_eq!(a.load(), (0, 3, 2));
    }

    #[test]
    fn reservations_are_capped_per_peer_but_one_large_store_always_fits() {
        let mut a = Admission::new(small());
        let (hog, other) = (PeerId::random(), PeerId::random());
        a.reserve(hog, 500).unwrap();
        assert_eq!(
            a.reserve(hog, 1),
            Err(Busy::Reserved {
                reserved: 500,
                cap: 100
            })
        );
        a.reserve(other, 60).unwrap();
        a.reserve(other, 40).unwrap();
        assert!(a.reserve(other, 1).is_err());
        a.release(hog, 500);
        assert_eq!(a.reserved_by(&hog), 0);
        a.reserve(hog, 50).unwrap();
    }

    #[test]
    fn a_peer_that_holds_nothing_is_forgotten() {
        let mut a = Admission::new(small());
        let p = PeerId::random();
        a.open(p).unwrap();
        a.enter(p, Pool::Light).unwrap();
        a.reserve(p, 10).unwrap();
        a.release(p, 10);
        a.exit(p, Pool::Light);
        a.close(p);
        assert!(a.peers.is_empty());
        assert_eq!(a.load(), (0, 0, 0));
    }

    #[test]
    fn the_body_deadline_grows_with_the_size_at_the_minimum_rate() {
        assert_eq!(body_deadline(0), EXCHANGE_GRACE);
        assert_eq!(
            body_deadline(16 * 1024 * 1024),
            EXCHANGE_GRACE + Duration::from_secs(128)
        );
        assert_eq!(
            body_deadline(u64::MAX),
            EXCHANGE_GRACE + Duration::from_millis(u64::MAX / MIN_RATE)
        );
    }
}
