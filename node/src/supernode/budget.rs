//! What unverified peers may make this peer spend, pure: the queue of dial
//! checks (capped per gossip source and in all, with an eviction rule), and
//! the relay's admission of reservations (attached peers only, capped per
//! IP). No IO; the event loop ([`crate::overlay::swarm`]) dials and relays.
//!
//! Every valid advert that claims a public address costs each peer that
//! hears it a dial and perhaps a DHT lookup. Adverts are free to make (one
//! throwaway key each), so the checks they ask for wait in a
//! [`CheckQueue`]: at most [`MAX_QUEUED_CHECKS_PER_SOURCE`] for the adverts
//! one gossip neighbour passed on, at most [`MAX_QUEUED_CHECKS`] in all,
//! and at most [`MAX_CHECKS_IN_FLIGHT`] dials at a time. A full queue drops
//! the oldest check of the source holding the most; the claimant's next
//! advert asks again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use libp2p::PeerId;
use libp2p::multiaddr::{Multiaddr, Protocol};

/// Dial checks waiting, in all.
pub const MAX_QUEUED_CHECKS: usize = 256;
/// Dial checks waiting for the adverts one gossip neighbour passed on.
pub const MAX_QUEUED_CHECKS_PER_SOURCE: usize = 16;
/// Dial checks running at a time.
pub const MAX_CHECKS_IN_FLIGHT: usize = 32;
/// Default cap on every table this peer keys by a remote peer id: adverts,
/// dial-check results, DHT look-ups of claimants and peer addresses
/// (`max_tracked_peers` in `[supernode]`).
pub const DEFAULT_MAX_TRACKED_PEERS: usize = 4096;
/// Default most peers, attached to this supernode, that hold relay
/// reservations from one IP address (`relay_slots_per_ip`).
pub const DEFAULT_RELAY_SLOTS_PER_IP: usize = 8;

/// Dial checks waiting to run, each with the gossip neighbour whose advert
/// asked for it.
#[derive(Debug, Default)]
pub struct CheckQueue {
    queue: VecDeque<(PeerId, PeerId)>,
    per_source: HashMap<PeerId, usize>,
}

impl CheckQueue {
    /// Queues a check of `claimant` asked for by an advert `source` passed
    /// on. Already queued: nothing changes. The source at its share: its
    /// oldest check goes. The queue full: the oldest check of the source
    /// holding the most goes. Returns the claimant dropped, if any.
    pub fn push(&mut self, source: PeerId, claimant: PeerId) -> Option<PeerId> {
        if self.queue.iter().any(|(_, c)| *c == claimant) {
            return None;
        }
        let mut dropped = None;
        if self.per_source.get(&source).copied().unwrap_or(0) >= MAX_QUEUED_CHECKS_PER_SOURCE {
            dropped = self.remove_oldest_of(source);
        } else if self.queue.len() >= MAX_QUEUED_CHECKS {
            let greediest = self
                .per_source
                .iter()
                .max_by(|(pa, a), (pb, b)| a.cmp(b).then(pb.cmp(pa)))
                .map(|(s, _)| *s);
            if let Some(s) = greediest {
                dropped = self.remove_oldest_of(s);
            }
        }
        self.queue.push_back((source, claimant));
        *self.per_source.entry(source).or_default() += 1;
        dropped
    }

    fn remove_oldest_of(&mut self, source: PeerId) -> Option<PeerId> {
        let at = self.queue.iter().position(|(s, _)| *s == source)?;
        let (_, claimant) = self.queue.remove(at)?;
        self.forget_one(source);
        Some(claimant)
    }

    fn forget_one(&mut self, source: PeerId) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// The next check to run, oldest first.
    pub fn pop(&mut self) -> Option<PeerId> {
        let (source, claimant) = self.queue.pop_front()?;
        self.forget_one(source);
        Some(claimant)
    }

    /// Checks waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Checks waiting for `source`'s adverts.
    pub fn of_source(&self, source: &PeerId) -> usize {
        self.per_source.get(source).copied().unwrap_or(0)
    }
}

/// Why the relay turned a reservation down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayRefusal {
    /// Only peers attached to this supernode reserve on its relay.
    #[error("{0} is not attached to this supernode: attach first")]
    NotAttached(PeerId),
    /// Its IP address already holds its share of reservations.
    #[error("{ip} already holds {held} reservations, the per-IP limit")]
    PerIp {
        /// The address.
        ip: IpAddr,
        /// Peers holding reservations from it.
        held: usize,
    },
}

/// Who may reserve on this supernode's relay: peers attached to it, at
/// most `per_ip` of them from one IP address.
#[derive(Debug)]
pub struct RelayGate {
    attached: HashSet<PeerId>,
    by_ip: HashMap<IpAddr, HashSet<PeerId>>,
    per_ip: usize,
}

impl RelayGate {
    /// A gate that admits at most `per_ip` peers per IP address.
    pub fn new(per_ip: usize) -> Self {
        Self {
            attached: HashSet::new(),
            by_ip: HashMap::new(),
            per_ip,
        }
    }

    /// `peer` attached to this supernode.
    pub fn attach(&mut self, peer: PeerId) {
        self.attached.insert(peer);
    }

    /// `peer` detached: it reserves no more, and frees its IP's share.
    pub fn detach(&mut self, peer: &PeerId) {
        self.attached.remove(peer);
        self.by_ip.retain(|_, peers| {
            peers.remove(peer);
            !peers.is_empty()
        });
    }

    /// Forgets every peer (this peer stopped serving).
    pub fn clear(&mut self) {
        self.attached.clear();
        self.by_ip.clear();
    }

    /// Whether `peer`, reaching the relay from `addr`, may reserve (or
    /// renew) a slot.
    pub fn admit(&mut self, peer: PeerId, addr: &Multiaddr) -> Result<(), RelayRefusal> {
        if !self.attached.contains(&peer) {
            return Err(RelayRefusal::NotAttached(peer));
        }
        let Some(ip) = ip_of(addr) else {
            return Ok(());
        };
        let peers = self.by_ip.entry(ip).or_default();
        if !peers.contains(&peer) && peers.len() >= self.per_ip {
            return Err(RelayRefusal::PerIp {
                ip,
                held: peers.len(),
            });
        }
        peers.insert(peer);
        Ok(())
    }
}

/// The IP address an address starts with.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Removes the entry of `map` with the least `key`, if any: the eviction
/// rule of every capped table (the least key is the oldest, or the least
/// useful, entry).
pub fn evict_least<K, V, O: Ord>(
    map: &mut HashMap<K, V>,
    key: impl Fn(&K, &V) -> O,
) -> Option<(K, V)>
where
    K: Eq + std::hash::Hash + Clone,
{
    let least = map.iter().min_by_key(|(k, v)| key(k, v))?.0.clone();
    map.remove_entry(&least)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_fills_only_its_share_of_the_queue() {
        let mallory = PeerId::random();
        let honest = PeerId::random();
        let mut q = CheckQueue::default();
        for _ in 0..1000 {
            q.push(mallory, PeerId::random());
        }
        assert_eq!(q.len(), MAX_QUEUED_CHECKS_PER_SOURCE);
        let claimant = PeerId::random();
        assert_eq!(q.push(honest, claimant), None);
        assert_eq!(q.of_source(&honest), 1);
        // The same claimant twice is one check.
        q.push(honest, claimant);
        assert_eq!(q.of_source(&honest), 1);
    }

    #[test]
    fn a_full_queue_drops_from_the_greediest_source() {
        let mut q = CheckQueue::default();
        let sources: Vec<PeerId> = (0..MAX_QUEUED_CHECKS / MAX_QUEUED_CHECKS_PER_SOURCE)
            .map(|_| PeerId::random())
            .collect();
        for s in &sources {
            for _ in 0..MAX_QUEUED_CHECKS_PER_SOURCE {
                q.push(*s, PeerId::random());
            }
        }
        assert_eq!(q.len(), MAX_QUEUED_CHECKS);
        let newcomer = PeerId::random();
        assert!(q.push(newcomer, PeerId::random()).is_some());
        assert_eq!(q.len(), MAX_QUEUED_CHECKS);
        assert_eq!(q.of_source(&newcomer), 1);
        let mut popped = 0;
        while q.pop().is_some() {
            popped += 1;
        }
        assert_eq!(popped, MAX_QUEUED_CHECKS);
        assert_eq!(q.of_source(&newcomer), 0);
    }

    #[test]
    fn only_attached_peers_reserve_and_each_ip_has_a_share() {
        let mut gate = RelayGate::new(2);
        let addr: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        let stranger = PeerId::random();
        assert_eq!(
            gate.admit(stranger, &addr),
            Err(RelayRefusal::NotAttached(stranger))
        );
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for p in &peers {
            gate.attach(*p);
        }
        assert!(gate.admit(peers[0], &addr).is_ok());
        assert!(gate.admit(peers[1], &addr).is_ok());
        // A renewal is no new share.
        assert!(gate.admit(peers[0], &addr).is_ok());
        assert!(matches!(
            gate.admit(peers[2], &addr),
            Err(RelayRefusal::PerIp { held: 2, .. })
        ));
        let other: Multiaddr = "/ip4/10.0.0.2/tcp/4001".parse().unwrap();
        assert!(gate.admit(peers[2], &other).is_ok());
        gate.detach(&peers[0]);
        assert!(gate.admit(peers[0], &addr).is_err());
        gate.attach(peers[0]);
        assert!(gate.admit(peers[0], &addr).is_ok());
    }

    #[test]
    fn eviction_takes_the_least() {
        let mut m: HashMap<u8, u32> = [(1, 30), (2, 10), (3, 20)].into();
        assert_eq!(evict_least(&mut m, |_, v| *v), Some((2, 10)));
        assert_eq!(m.len(), 2);
    }
}
