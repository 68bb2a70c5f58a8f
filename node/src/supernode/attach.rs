//! Supernode services, pure: the request-response messages between a peer
//! and its supernode (SN), which SN a peer attaches to, the SN's book of
//! attached peers, and its storage recommendations. No IO; the network
//! task ([`crate::overlay::swarm`]) sends the messages and passes `now`.
//!
//! Paper §2.1, §3.2: every ordinary peer connects to an SN for information
//! exchange and management, finds another when its SN goes away, and may
//! ask its SN for good storage peers.
//!
//! - **Attach.** A peer picks among the elected SNs by RTT and load
//!   ([`choose_supernode`]), sends [`SnRequest::Attach`], then a
//!   [`SnRequest::Heartbeat`] every heartbeat period. The answer to an
//!   attach carries a sample of known peers and their addresses (peer
//!   exchange).
//! - **Leave.** A closed connection, or a request unanswered for
//!   [`patience`] ([`MISSED_HEARTBEATS`] heartbeat periods, at least
//!   [`MIN_PATIENCE`]), ends the attachment, and the peer attaches to
//!   another SN at once. The SN drops a peer it has not heard from for
//!   twice that.
//! - **Recommend.** Heartbeats carry the peer's observations of others
//!   (stores and fetches that worked or failed); the SN sums them and
//!   ranks storage peers ([`recommend`]) by those and the adverts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::supernode::advert::Advert;

/// The request-response protocol between a peer and its supernode.
pub const SN_PROTOCOL: StreamProtocol = StreamProtocol::new("/vmail/sn/1");
/// Unanswered heartbeats after which a peer leaves its SN, and silent
/// periods after which an SN forgets a peer.
pub const MISSED_HEARTBEATS: u32 = 3;
/// The least time a request waits for its answer: a busy peer's event
/// loop may lag a second or so, and that must not end an attachment.
pub const MIN_PATIENCE: Duration = Duration::from_secs(2);

/// How long a request to a supernode waits for its answer.
pub fn patience(heartbeat: Duration) -> Duration {
    (heartbeat * MISSED_HEARTBEATS).max(MIN_PATIENCE)
}
/// Most peers in one peer-exchange answer.
pub const MAX_EXCHANGE_PEERS: usize = 16;
/// Most addresses per exchanged peer.
pub const MAX_EXCHANGE_ADDRS: usize = 4;
/// Most observations in one heartbeat.
pub const MAX_REPORTS: usize = 64;
/// Most peers one recommendation names.
pub const MAX_RECOMMEND: usize = 32;
/// How long a peer avoids an SN that refused it or stopped answering.
pub const AVOID_FOR: Duration = Duration::from_secs(60);

/// What a peer asks its supernode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnRequest {
    /// Take me on.
    Attach,
    /// I am still here; with what I saw of other peers since the last one.
    Heartbeat {
        /// Observations, at most [`MAX_REPORTS`].
        reports: Vec<Observation>,
    },
    /// Name up to `count` good storage peers, not counting `exclude`.
    Recommend {
        /// How many, at most [`MAX_RECOMMEND`].
        count: u16,
        /// Peers not wanted (the asker, holders already chosen).
        exclude: Vec<PeerId>,
    },
}

/// A supernode's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnResponse {
    /// Attached (or still attached); `peers` is the peer exchange.
    Attached {
        /// Peers attached to this SN now, the asker included.
        load: u32,
        /// Known peers and their addresses, at most [`MAX_EXCHANGE_PEERS`].
        peers: Vec<(PeerId, Vec<Multiaddr>)>,
    },
    /// The heartbeat was heard.
    Alive {
        /// Peers attached to this SN now.
        load: u32,
    },
    /// Storage peers, best first.
    Recommended(Vec<PeerId>),
    /// Refused, and why.
    Refused(Refusal),
}

/// Why a supernode turned a request down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// It is not an elected supernode (any more).
    #[error("it does not serve as a supernode")]
    NotServing,
    /// It has as many attached peers as it takes.
    #[error("it is full")]
    Full,
    /// A heartbeat or question from a peer it does not hold: attach first.
    #[error("the asker is not attached to it")]
    NotAttached,
}

/// One peer's experience of another since its last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// The peer observed.
    pub peer: PeerId,
    /// Stores and fetches with it that worked.
    pub ok: u32,
    /// Ones that failed (unreachable, refused, corrupt).
    pub failed: u32,
}

/// An elected SN as a candidate to attach to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// The SN.
    pub peer: PeerId,
    /// Last measured round trip, if any.
    pub rtt: Option<Duration>,
    /// Attached peers, from its advert.
    pub load: u32,
}

/// RTT assumed for an SN not measured yet: a typical wide-area figure, so
/// a measured nearby SN wins and an unmeasured one still beats a far one.
pub const UNMEASURED_RTT: Duration = Duration::from_millis(100);
/// Each attached peer counts as this much extra round trip: an SN with 20
/// more peers must be 100 ms closer to win.
pub const LOAD_COST: Duration = Duration::from_millis(5);

/// The SN to attach to: least `rtt + load × LOAD_COST`, ties on the peer
/// id. SNs in `avoid` (they refused, or went silent) are passed over while
/// any other is left.
pub fn choose_supernode(candidates: &[Candidate], avoid: &[PeerId]) -> Option<PeerId> {
    let cost = |c: &Candidate| c.rtt.unwrap_or(UNMEASURED_RTT) + LOAD_COST * c.load;
    let best = |pool: &mut dyn Iterator<Item = &Candidate>| {
        pool.min_by(|a, b| cost(a).cmp(&cost(b)).then(a.peer.cmp(&b.peer)))
            .map(|c| c.peer)
    };
    best(&mut candidates.iter().filter(|c| !avoid.contains(&c.peer)))
        .or_else(|| best(&mut candidates.iter()))
}

/// What an SN knows of the peers attached to it.
#[derive(Debug, Default)]
pub struct Attachments {
    peers: HashMap<PeerId, Instant>,
    reports: HashMap<PeerId, (u64, u64)>,
}

impl Attachments {
    /// Takes `peer` on at `now`, unless `capacity` others are attached.
    pub fn attach(&mut self, peer: PeerId, now: Instant, capacity: usize) -> Result<u32, Refusal> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= capacity {
            return Err(Refusal::Full);
        }
        self.peers.insert(peer, now);
        Ok(self.load())
    }

    /// A heartbeat from `peer`: keeps it and sums its observations.
    pub fn heartbeat(
        &mut self,
        peer: PeerId,
        reports: &[Observation],
        now: Instant,
    ) -> Result<u32, Refusal> {
        let seen = self.peers.get_mut(&peer).ok_or(Refusal::NotAttached)?;
        *seen = now;
        for r in reports.iter().take(MAX_REPORTS) {
            let sum = self.reports.entry(r.peer).or_default();
            sum.0 = sum.0.saturating_add(r.ok.into());
            sum.1 = sum.1.saturating_add(r.failed.into());
        }
        Ok(self.load())
    }

    /// Whether `peer` is attached.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Drops `peer` (its connection closed).
    pub fn detach(&mut self, peer: &PeerId) -> bool {
        self.peers.remove(peer).is_some()
    }

    /// Drops peers silent for longer than `timeout` at `now`; returns them.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<PeerId> {
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(**seen) > timeout)
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.peers.remove(p);
        }
        gone
    }

    /// Forgets everyone (this peer stopped serving).
    pub fn clear(&mut self) {
        self.peers.clear();
    }

    /// Attached peers.
    pub fn load(&self) -> u32 {
        u32::try_from(self.peers.len()).unwrap_or(u32::MAX)
    }

    /// Attached peers, sorted.
    pub fn peers(&self) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = self.peers.keys().copied().collect();
        peers.sort();
        peers
    }

    /// Summed (ok, failed) observations of each peer.
    pub fn reports(&self) -> &HashMap<PeerId, (u64, u64)> {
        &self.reports
    }
}

/// Ranks storage peers for a recommendation: every advertising peer with
/// free storage, not in `exclude`, scored by
/// `success × ln(1 + free GiB) × clamp(uptime / 1 h, 0.01, 1)` where `success` is
/// `(ok + 1) / (ok + failed + 2)` from attached peers' reports (0.5 with
/// none). Best first, ties on the peer id; at most `count`.
pub fn recommend(
    adverts: &[&Advert],
    reports: &HashMap<PeerId, (u64, u64)>,
    exclude: &[PeerId],
    count: usize,
) -> Vec<PeerId> {
    let score = |a: &Advert| {
        let (ok, failed) = reports.get(&a.peer_id).copied().unwrap_or((0, 0));
        let success = (ok as f64 + 1.0) / ((ok + failed) as f64 + 2.0);
        let space = (1.0 + a.free_storage as f64 / f64::from(1u32 << 30)).ln();
        let settled = (a.uptime_secs as f64 / 3600.0).clamp(0.01, 1.0);
        success * space * settled
    };
    let mut ranked: Vec<(f64, PeerId)> = adverts
        .iter()
        .filter(|a| a.free_storage > 0 && !exclude.contains(&a.peer_id))
        .map(|a| (score(a), a.peer_id))
        .collect();
    ranked.sort_by(|(sa, a), (sb, b)| sb.total_cmp(sa).then(a.cmp(b)));
    ranked
        .into_iter()
        .take(count.min(MAX_RECOMMEND))
        .map(|(_, p)| p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supernode::advert::{ADVERT_VERSION, Reachability};

    fn peer(n: u8) -> PeerId {
        libp2p::identity::Keypair::ed25519_from_bytes([n; 32])
            .expect("32-byte seed")
            .public()
            .to_peer_id()
    }

    fn candidate(n: u8, rtt_ms: Option<u64>, load: u32) -> Candidate {
        Candidate {
            peer: peer(n),
            rtt: rtt_ms.map(Duration::from_millis),
            load,
        }
    }

    #[test]
    fn attach_to_the_nearest_lightly_loaded_supernode() {
        let near_busy = candidate(1, Some(5), 40); // 5 + 200 ms
        let far_idle = candidate(2, Some(80), 0); // 80 ms
        let unmeasured = candidate(3, None, 0); // 100 ms
        assert_eq!(
            choose_supernode(&[near_busy, far_idle, unmeasured], &[]),
            Some(peer(2))
        );
        assert_eq!(
            choose_supernode(&[near_busy, unmeasured], &[]),
            Some(peer(3))
        );
        assert_eq!(choose_supernode(&[], &[]), None);
    }

    #[test]
    fn avoided_supernodes_are_the_last_resort() {
        let a = candidate(1, Some(1), 0);
        let b = candidate(2, Some(90), 10);
        assert_eq!(choose_supernode(&[a, b], &[peer(1)]), Some(peer(2)));
        assert_eq!(choose_supernode(&[a], &[peer(1)]), Some(peer(1)));
    }

    #[test]
    fn ties_break_on_the_peer_id_whatever_the_order() {
        let a = candidate(1, Some(10), 0);
        let b = candidate(2, Some(10), 0);
        assert_eq!(
            choose_supernode(&[a, b], &[]),
            choose_supernode(&[b, a], &[])
        );
    }

    #[test]
    fn a_full_supernode_refuses_newcomers_but_keeps_its_peers() {
        let now = Instant::now();
        let mut book = Attachments::default();
        assert_eq!(book.attach(peer(1), now, 2), Ok(1));
        assert_eq!(book.attach(peer(2), now, 2), Ok(2));
        assert_eq!(book.attach(peer(3), now, 2), Err(Refusal::Full));
        assert_eq!(book.attach(peer(1), now, 2), Ok(2));
        assert_eq!(book.heartbeat(peer(3), &[], now), Err(Refusal::NotAttached));
    }

    #[test]
    fn silent_peers_expire() {
        let start = Instant::now();
        let mut book = Attachments::default();
        book.attach(peer(1), start, 8).unwrap();
        book.attach(peer(2), start, 8).unwrap();
        let later = start + Duration::from_secs(2);
        book.heartbeat(peer(2), &[], later).unwrap();
        let gone = book.expire(start + Duration::from_secs(4), Duration::from_secs(3));
        assert_eq!(gone, vec![peer(1)]);
        assert_eq!(book.peers(), vec![peer(2)]);
    }

    fn advert(n: u8, free_gib: u64, uptime_secs: u64) -> Advert {
        Advert {
            version: ADVERT_VERSION,
            peer_id: peer(n),
            seq: 1,
            issued_at: 1_800_000_000,
            reachability: Reachability::Private,
            cpu_cores: 2,
            memory_mib: 4096,
            bandwidth_kbps: 1000,
            uptime_secs,
            load: 0,
            free_storage: free_gib << 30,
            serving: false,
        }
    }

    #[test]
    fn recommendations_follow_space_uptime_and_reports() {
        let adverts = [
            advert(1, 10, 7200),
            advert(2, 100, 7200),
            advert(3, 100, 60), // just started
            advert(4, 0, 7200), // full
            advert(5, 50, 7200),
        ];
        let refs: Vec<&Advert> = adverts.iter().collect();
        let none = HashMap::new();
        assert_eq!(
            recommend(&refs, &none, &[], 10),
            vec![peer(2), peer(5), peer(1), peer(3)]
        );
        // Peer 2 keeps failing for attached peers: it drops below peer 1.
        let mut book = Attachments::default();
        let now = Instant::now();
        book.attach(peer(9), now, 8).unwrap();
        let bad = Observation {
            peer: peer(2),
            ok: 0,
            failed: 40,
        };
        book.heartbeat(peer(9), &[bad], now).unwrap();
        assert_eq!(
            recommend(&refs, book.reports(), &[peer(5)], 3),
            vec![peer(1), peer(2), peer(3)]
        );
    }
}
