//! Which connections to close, pure. libp2p-gossipsub keeps a substream
//! open to every peer it meets, and an open substream keeps a connection
//! from ever idling out: left alone, a peer stays connected to every peer
//! it ever spoke to, and its pings, gossip (IHAVE to a quarter of its topic
//! peers every second) and buffers grow with the network. So the event loop
//! keeps at most a target of connected peers, as lighthouse's peer manager
//! does: when more are connected, it closes the ones idle longest, never a
//! protected one (the gossip mesh, this peer's supernode or the peers
//! attached to it, a peer a blob exchange is under way with).

use std::time::{Duration, Instant};

use libp2p::PeerId;

/// A connected peer, as the pruner sees it.
#[derive(Debug, Clone, Copy)]
pub struct Connected {
    /// The peer.
    pub peer: PeerId,
    /// Never closed: a gossip mesh peer, this peer's supernode, an
    /// attached peer, one with a blob exchange under way.
    pub protected: bool,
    /// When it was connected or last used.
    pub last_active: Instant,
}

/// The peers to disconnect so that at most `target` stay connected: the
/// unprotected ones idle for at least `grace`, longest idle first (ties on
/// the peer id). Fewer, or none, when not enough are idle.
pub fn to_close(peers: &[Connected], target: usize, now: Instant, grace: Duration) -> Vec<PeerId> {
    let excess = peers.len().saturating_sub(target);
    if excess == 0 {
        return Vec::new();
    }
    let mut idle: Vec<&Connected> = peers
        .iter()
        .filter(|c| !c.protected && now.saturating_duration_since(c.last_active) >= grace)
        .collect();
    idle.sort_by(|a, b| a.last_active.cmp(&b.last_active).then(a.peer.cmp(&b.peer)));
    idle.into_iter().take(excess).map(|c| c.peer).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    fn peers(now: Instant, idle_secs: &[(u64, bool)]) -> Vec<Connected> {
        idle_secs
            .iter()
            .map(|&(idle, protected)| Connected {
                peer: PeerId::random(),
                protected,
                last_active: now - Duration::from_secs(idle),
            })
            .collect()
    }

    #[test]
    fn within_the_target_nothing_is_closed() {
        let now = Instant::now();
        let p = peers(now, &[(600, false), (600, false)]);
        assert!(to_close(&p, 2, now, GRACE).is_empty());
    }

    #[test]
    fn the_longest_idle_unprotected_peers_go_first() {
        let now = Instant::now();
        let p = peers(
            now,
            &[
                (900, true),
                (300, false),
                (600, false),
                (10, false),
                (700, false),
            ],
        );
        // Five connected, a target of two: three go, the protected one and
        // the one used 10 s ago stay.
        assert_eq!(
            to_close(&p, 2, now, GRACE),
            vec![p[4].peer, p[2].peer, p[1].peer]
        );
        // A target of four: the one idle longest of the closable.
        assert_eq!(to_close(&p, 4, now, GRACE), vec![p[4].peer]);
    }

    #[test]
    fn protected_and_recently_used_peers_are_kept_even_over_the_target() {
        let now = Instant::now();
        let p = peers(now, &[(900, true), (59, false), (0, false), (61, false)]);
        assert_eq!(to_close(&p, 0, now, GRACE), vec![p[3].peer]);
    }
}
