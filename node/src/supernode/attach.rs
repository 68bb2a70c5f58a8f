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
//!   (stores and fetches that worked or failed); the SN keeps them per
//!   reporter, bounded ([`Reports`]: counts clamped per heartbeat,
//!   heartbeats rate limited, tallies aged and capped, a lone reporter moves
//!   nothing), and ranks storage peers ([`recommend`]) by those and the
//!   adverts.
//!
//! Over 600 lines since issue 17 added its bounds here; the split by concern
//! (bounds apart from the protocol or store they guard) is owed, not done.

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
        /// The asker's newest signed advert, when it changed since the last
        /// heartbeat and the asker keeps it back from gossip (it cannot
        /// stand): the SN ranks it for recommendations, never for election.
        #[serde(default)]
        advert: Option<Vec<u8>>,
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

/// Most observed peers counted per observation in one heartbeat: a
/// peer's stores and fetches with one other peer in one heartbeat period.
/// A larger `ok + failed` is scaled down to this, keeping its ratio, so
/// `u32::MAX` counts no more than an honest busy period.
pub const MAX_COUNT_PER_REPORT: u32 = 64;
/// Most subjects one reporter's reports are kept about; beyond it the one
/// reported least recently is forgotten.
pub const MAX_SUBJECTS_PER_REPORTER: usize = 256;
/// Most (reporter, subject) tallies an SN keeps in all; beyond it the one
/// reported least recently is forgotten.
pub const MAX_TALLIES: usize = 16 * 1024;
/// A tally not added to for this long is forgotten.
pub const REPORT_MAX_AGE: Duration = Duration::from_secs(3600);
/// A tally whose `ok + failed` passes this is halved, both counts, so old
/// experience fades and no count grows without bound.
pub const MAX_TALLY: u64 = 1024;
/// Distinct reporters a subject needs before reports move its standing: a
/// lone reporter (an attacker praising its Sybil, or sinking a rival) moves
/// nothing.
pub const MIN_REPORTERS: usize = 2;

/// One reporter's summed experience of one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Stores and fetches that worked.
    pub ok: u64,
    /// Ones that failed.
    pub failed: u64,
    /// When it was last added to.
    pub at: Instant,
}

impl Tally {
    /// The reporter's success ratio, `(ok + 1) / (ok + failed + 2)`.
    pub fn success(&self) -> f64 {
        (self.ok as f64 + 1.0) / ((self.ok + self.failed) as f64 + 2.0)
    }
}

/// `(ok, failed)` scaled down, keeping the ratio, so that the sum is at
/// most [`MAX_COUNT_PER_REPORT`]: no heartbeat claims more than one period
/// of honest work.
pub fn clamp_report(ok: u32, failed: u32) -> (u64, u64) {
    let (ok, failed) = (u64::from(ok), u64::from(failed));
    let total = ok + failed;
    let max = u64::from(MAX_COUNT_PER_REPORT);
    if total <= max {
        return (ok, failed);
    }
    let ok = (ok * max).div_ceil(total).min(max);
    (ok, max - ok)
}

/// What attached peers reported about others, per reporter, bounded: see
/// [`MAX_COUNT_PER_REPORT`], [`MAX_SUBJECTS_PER_REPORTER`], [`MAX_TALLIES`],
/// [`REPORT_MAX_AGE`], [`MAX_TALLY`] and [`MIN_REPORTERS`].
#[derive(Debug, Default)]
pub struct Reports {
    by_reporter: HashMap<PeerId, HashMap<PeerId, Tally>>,
    len: usize,
}

impl Reports {
    /// Adds `reporter`'s observations at `now`, clamped, then prunes.
    pub fn add(&mut self, reporter: PeerId, observations: &[Observation], now: Instant) {
        for o in observations.iter().take(MAX_REPORTS) {
            if o.peer == reporter {
                // Nobody vouches for itself.
                continue;
            }
            let (ok, failed) = clamp_report(o.ok, o.failed);
            if ok + failed == 0 {
                continue;
            }
            let mine = self.by_reporter.entry(reporter).or_default();
            if !mine.contains_key(&o.peer) {
                if mine.len() >= MAX_SUBJECTS_PER_REPORTER {
                    evict_oldest(mine);
                    self.len -= 1;
                }
                self.len += 1;
            }
            let t = mine.entry(o.peer).or_insert(Tally {
                ok: 0,
                failed: 0,
                at: now,
            });
            t.ok += ok;
            t.failed += failed;
            t.at = now;
            if t.ok + t.failed > MAX_TALLY {
                t.ok /= 2;
                t.failed /= 2;
            }
        }
        self.prune(now);
    }

    /// Forgets tallies older than [`REPORT_MAX_AGE`] at `now`, then the
    /// least recent ones while more than [`MAX_TALLIES`] are kept.
    pub fn prune(&mut self, now: Instant) {
        for mine in self.by_reporter.values_mut() {
            mine.retain(|_, t| now.saturating_duration_since(t.at) <= REPORT_MAX_AGE);
        }
        self.by_reporter.retain(|_, mine| !mine.is_empty());
        self.len = self.by_reporter.values().map(HashMap::len).sum();
        while self.len > MAX_TALLIES {
            let oldest = self
                .by_reporter
                .iter()
                .flat_map(|(r, mine)| mine.iter().map(move |(s, t)| (t.at, *r, *s)))
                .min();
            let Some((_, r, s)) = oldest else { break };
            if let Some(mine) = self.by_reporter.get_mut(&r) {
                mine.remove(&s);
                if mine.is_empty() {
                    self.by_reporter.remove(&r);
                }
            }
            self.len -= 1;
        }
    }

    /// Forgets everything `reporter` said (it detached or went silent).
    pub fn forget_reporter(&mut self, reporter: &PeerId) {
        if let Some(mine) = self.by_reporter.remove(reporter) {
            self.len -= mine.len();
        }
    }

    /// Tallies kept, all reporters together.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Each subject's standing: the median of its reporters' success
    /// ratios, for subjects with at least [`MIN_REPORTERS`] reporters. A
    /// subject not here stands at the prior, 0.5.
    pub fn standings(&self) -> HashMap<PeerId, f64> {
        let mut votes: HashMap<PeerId, Vec<f64>> = HashMap::new();
        for mine in self.by_reporter.values() {
            for (subject, t) in mine {
                votes.entry(*subject).or_default().push(t.success());
            }
        }
        votes
            .into_iter()
            .filter(|(_, v)| v.len() >= MIN_REPORTERS)
            .map(|(s, mut v)| {
                v.sort_by(f64::total_cmp);
                let mid = v.len() / 2;
                let median = if v.len() % 2 == 0 {
                    (v[mid - 1] + v[mid]) / 2.0
                } else {
                    v[mid]
                };
                (s, median)
            })
            .collect()
    }
}

/// Removes the entry added to least recently.
fn evict_oldest(mine: &mut HashMap<PeerId, Tally>) {
    if let Some(oldest) = mine.iter().min_by_key(|(_, t)| t.at).map(|(p, _)| *p) {
        mine.remove(&oldest);
    }
}

/// What an SN knows of the peers attached to it.
#[derive(Debug, Default)]
pub struct Attachments {
    /// Each attached peer: when it was last heard, and when its reports
    /// were last taken.
    peers: HashMap<PeerId, (Instant, Option<Instant>)>,
    reports: Reports,
    /// Heartbeats whose reports were ignored, because they came sooner
    /// than the minimum gap after the last one.
    early: u64,
}

impl Attachments {
    /// Takes `peer` on at `now`, unless `capacity` others are attached.
    pub fn attach(&mut self, peer: PeerId, now: Instant, capacity: usize) -> Result<u32, Refusal> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= capacity {
            return Err(Refusal::Full);
        }
        self.peers.entry(peer).or_insert((now, None)).0 = now;
        Ok(self.load())
    }

    /// A heartbeat from `peer`: keeps it and adds its observations, unless
    /// it came less than `min_gap` after the last heartbeat whose reports
    /// were taken (then it only counts as a sign of life: heartbeats are
    /// rate limited per peer).
    pub fn heartbeat(
        &mut self,
        peer: PeerId,
        reports: &[Observation],
        now: Instant,
        min_gap: Duration,
    ) -> Result<u32, Refusal> {
        let (seen, taken) = self.peers.get_mut(&peer).ok_or(Refusal::NotAttached)?;
        *seen = now;
        if taken.is_some_and(|t| now.saturating_duration_since(t) < min_gap) {
            self.early += 1;
            return Ok(self.load());
        }
        *taken = Some(now);
        self.reports.add(peer, reports, now);
        Ok(self.load())
    }

    /// Whether `peer` is attached.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Drops `peer` (its connection closed) and what it reported.
    pub fn detach(&mut self, peer: &PeerId) -> bool {
        self.reports.forget_reporter(peer);
        self.peers.remove(peer).is_some()
    }

    /// Drops peers silent for longer than `timeout` at `now`, and what
    /// they reported; returns them.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<PeerId> {
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, (seen, _))| now.saturating_duration_since(*seen) > timeout)
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.detach(p);
        }
        self.reports.prune(now);
        gone
    }

    /// Forgets everyone (this peer stopped serving).
    pub fn clear(&mut self) {
        self.peers.clear();
        self.reports = Reports::default();
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

    /// The attached peers' reports.
    pub fn reports(&self) -> &Reports {
        &self.reports
    }

    /// Heartbeats whose reports were ignored as too early.
    pub fn early_heartbeats(&self) -> u64 {
        self.early
    }
}

/// Ranks storage peers for a recommendation: every advertising peer with
/// free storage, not in `exclude`, scored by
/// `success × ln(1 + free GiB) × clamp(uptime / 1 h, 0.01, 1)` where `success` is
/// the subject's standing from attached peers' reports ([`Reports::standings`]:
/// the median reporter's `(ok + 1) / (ok + failed + 2)`, 0.5 with fewer than
/// [`MIN_REPORTERS`] reporters). Best first, ties on the peer id; at most
/// `count`.
pub fn recommend(
    adverts: &[&Advert],
    reports: &Reports,
    exclude: &[PeerId],
    count: usize,
) -> Vec<PeerId> {
    let standings = reports.standings();
    let score = |a: &Advert| {
        let success = standings.get(&a.peer_id).copied().unwrap_or(0.5);
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
        assert_eq!(
            book.heartbeat(peer(3), &[], now, Duration::ZERO),
            Err(Refusal::NotAttached)
        );
    }

    #[test]
    fn silent_peers_expire() {
        let start = Instant::now();
        let mut book = Attachments::default();
        book.attach(peer(1), start, 8).unwrap();
        book.attach(peer(2), start, 8).unwrap();
        let later = start + Duration::from_secs(2);
        book.heartbeat(peer(2), &[], later, Duration::ZERO).unwrap();
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
        let none = Reports::default();
        assert_eq!(
            recommend(&refs, &none, &[], 10),
            vec![peer(2), peer(5), peer(1), peer(3)]
        );
        // Peer 2 keeps failing for two attached peers: it drops below peer 1.
        let mut book = Attachments::default();
        let now = Instant::now();
        let bad = Observation {
            peer: peer(2),
            ok: 0,
            failed: 40,
        };
        book.attach(peer(9), now, 8).unwrap();
        book.heartbeat(peer(9), &[bad], now, Duration::ZERO)
            .unwrap();
        // One reporter alone moves nothing.
        assert_eq!(
            recommend(&refs, book.reports(), &[peer(5)], 3),
            vec![peer(2), peer(1), peer(3)]
        );
        book.attach(peer(8), now, 8).unwrap();
        book.heartbeat(peer(8), &[bad], now, Duration::ZERO)
            .unwrap();
        assert_eq!(
            recommend(&refs, book.reports(), &[peer(5)], 3),
            vec![peer(1), peer(2), peer(3)]
        );
    }

    fn obs(n: u8, ok: u32, failed: u32) -> Observation {
        Observation {
            peer: peer(n),
            ok,
            failed,
        }
    }

    #[test]
    fn a_report_counts_no_more_than_one_heartbeat_of_honest_work() {
        assert_eq!(clamp_report(3, 4), (3, 4));
        assert_eq!(clamp_report(u32::MAX, 0), (64, 0));
        assert_eq!(clamp_report(0, u32::MAX), (0, 64));
        assert_eq!(clamp_report(u32::MAX, u32::MAX), (32, 32));
        let (ok, failed) = clamp_report(1, u32::MAX);
        assert!(ok <= 1 && ok + failed == 64);
    }

    #[test]
    fn a_lone_liar_neither_sinks_an_honest_peer_nor_promotes_a_sybil() {
        let now = Instant::now();
        let mut r = Reports::default();
        // Two honest reporters saw peer 1 work.
        r.add(peer(10), &[obs(1, 5, 0)], now);
        r.add(peer(11), &[obs(1, 4, 1)], now);
        // The liar says peer 1 always fails and its Sybil, peer 2, never does.
        for _ in 0..100 {
            r.add(peer(12), &[obs(1, 0, u32::MAX), obs(2, u32::MAX, 0)], now);
        }
        let s = r.standings();
        assert!(s[&peer(1)] > 0.7, "{s:?}");
        assert!(!s.contains_key(&peer(2)), "a lone reporter moves nothing");
        // Self-praise is dropped.
        r.add(peer(13), &[obs(13, 50, 0)], now);
        assert!(!r.standings().contains_key(&peer(13)));
    }

    #[test]
    fn heartbeats_closer_than_the_gap_only_count_as_signs_of_life() {
        let now = Instant::now();
        let gap = Duration::from_millis(500);
        let mut book = Attachments::default();
        book.attach(peer(1), now, 8).unwrap();
        book.heartbeat(peer(1), &[obs(2, 1, 0)], now, gap).unwrap();
        for i in 0..10 {
            let t = now + Duration::from_millis(10 * i);
            book.heartbeat(peer(1), &[obs(3 + i as u8, 1, 0)], t, gap)
                .unwrap();
        }
        assert_eq!(book.reports().len(), 1);
        assert_eq!(book.early_heartbeats(), 10);
        book.heartbeat(peer(1), &[obs(20, 1, 0)], now + gap, gap)
            .unwrap();
        assert_eq!(book.reports().len(), 2);
    }

    #[test]
    fn the_report_table_is_bounded_aged_and_forgets_detached_reporters() {
        let start = Instant::now();
        let mut r = Reports::default();
        // One reporter naming fresh random peers every heartbeat.
        for round in 0..20u64 {
            let at = start + Duration::from_secs(round);
            let batch: Vec<Observation> = (0..MAX_REPORTS)
                .map(|_| Observation {
                    peer: PeerId::random(),
                    ok: u32::MAX,
                    failed: 0,
                })
                .collect();
            r.add(peer(1), &batch, at);
            assert!(r.len() <= MAX_SUBJECTS_PER_REPORTER);
        }
        assert_eq!(r.len(), MAX_SUBJECTS_PER_REPORTER);
        r.add(peer(2), &[obs(3, 1, 0)], start);
        r.forget_reporter(&peer(1));
        assert_eq!(r.len(), 1);
        r.prune(start + REPORT_MAX_AGE + Duration::from_secs(1));
        assert!(r.is_empty());
        // Counts halve past MAX_TALLY, keeping their ratio.
        for _ in 0..100 {
            r.add(peer(4), &[obs(5, 48, 16)], start);
        }
        let t = r.by_reporter[&peer(4)][&peer(5)];
        assert!(t.ok + t.failed <= MAX_TALLY);
        assert!((t.success() - 0.75).abs() < 0.05, "{t:?}");
    }
}
