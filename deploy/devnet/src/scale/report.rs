//! What the scale harness reports, pure: percentiles, the convergence check
//! over the peers' own statuses, and the table rows. No IO.

use std::collections::BTreeSet;
use std::time::Duration;

/// One peer's supernode standing, as its status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The peer's id (base58).
    pub peer: String,
    /// The supernodes it elects.
    pub supernodes: Vec<String>,
    /// Whom it is attached to; empty if nobody.
    pub attached_to: String,
    /// Fresh adverts it holds, its own included.
    pub adverts: usize,
}

/// Whether the overlay has converged: every peer elects the same non-empty
/// set, holds `adverts` fresh adverts (one per peer that stands), and is
/// either in the set or attached to a member of it.
pub fn converged(peers: &[Standing], adverts: usize) -> bool {
    let Some(first) = peers.first() else {
        return false;
    };
    let set: BTreeSet<&String> = first.supernodes.iter().collect();
    !set.is_empty()
        && peers.iter().all(|p| {
            p.supernodes.iter().collect::<BTreeSet<_>>() == set
                && p.adverts == adverts
                && (set.contains(&p.peer) || set.contains(&p.attached_to))
        })
}

/// How far from converged, for the progress line: distinct elected sets,
/// the fewest and most adverts held, peers neither serving nor attached.
pub fn spread(peers: &[Standing]) -> (usize, usize, usize, usize) {
    let sets: BTreeSet<BTreeSet<&String>> = peers
        .iter()
        .map(|p| p.supernodes.iter().collect())
        .collect();
    let least = peers.iter().map(|p| p.adverts).min().unwrap_or(0);
    let most = peers.iter().map(|p| p.adverts).max().unwrap_or(0);
    let loose = peers
        .iter()
        .filter(|p| !p.supernodes.contains(&p.peer) && p.attached_to.is_empty())
        .count();
    (sets.len(), least, most, loose)
}

/// The `q`-quantile (0..=1) of `xs` by the nearest-rank method; None if
/// empty.
pub fn quantile<T: Copy + Ord>(xs: &[T], q: f64) -> Option<T> {
    let mut v = xs.to_vec();
    v.sort_unstable();
    let n = v.len();
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    Some(v[rank - 1])
}

/// The median and 95th percentile, in ms with one decimal, as "p50 / p95".
pub fn p50_p95(xs: &[Duration]) -> String {
    match (quantile(xs, 0.5), quantile(xs, 0.95)) {
        (Some(a), Some(b)) => format!("{:.1} / {:.1}", ms(a), ms(b)),
        _ => "n/a".into(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One size's figures.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Peer processes.
    pub peers: usize,
    /// Of them, declared reachable and standing.
    pub standing: usize,
    /// The advert interval, s.
    pub interval_secs: u64,
    /// From the last peer's start to convergence; None if it never came.
    pub converged: Option<Duration>,
    /// Supernodes elected.
    pub supernodes: usize,
    /// Orphans of the killed supernode.
    pub orphans: usize,
    /// Until every orphan was attached elsewhere, by the harness's clock.
    pub reattach_wall: Option<Duration>,
    /// Each orphan's re-attach by its own clock.
    pub reattach: Vec<Duration>,
    /// Provider lookups: until each ended, by the query's own clock.
    pub lookups: Vec<Duration>,
    /// Provider lookups: requests each sent.
    pub lookup_requests: Vec<u32>,
    /// Whole 1 MiB leaves.
    pub leaves: Vec<Duration>,
    /// Whole 1 MiB fetches.
    pub fetches: Vec<Duration>,
    /// Resident memory per peer, KiB.
    pub rss_kib: Vec<u64>,
    /// Idle CPU per peer, per mille of one core.
    pub cpu_permille: Vec<u64>,
    /// Per peer per minute while idle: all bytes on the wire, both ways.
    pub wire_bytes_min: Vec<u64>,
    /// Per peer per minute while idle: advert payload delivered.
    pub advert_bytes_min: Vec<u64>,
    /// Per peer per minute while idle: DHT requests sent and answered.
    pub dht_requests_min: Vec<u64>,
    /// Peers connected to each peer at the end of the quiet window.
    pub connected_peers: Vec<u64>,
}

impl Row {
    /// The table's header, in the order of [`Row::cells`].
    pub const HEADER: &'static str = "| peers (standing) | interval | converged (intervals) | SNs | orphans | re-attach wall | re-attach p50 / p95 ms | lookup p50 / p95 ms | lookup requests p50 / p95 | leave 1 MiB p50 / p95 ms | fetch 1 MiB p50 / p95 ms | RSS MiB p50 / max | idle CPU % p50 / max | wire KB/min p50 / max | adverts KB/min p50 | DHT req/min p50 | connected peers p50 / max |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

    /// The row in the table's markdown.
    pub fn cells(&self) -> String {
        let interval = Duration::from_secs(self.interval_secs);
        let converged = self.converged.map_or("no".into(), |d| {
            format!(
                "{:.1} s ({:.1})",
                d.as_secs_f64(),
                d.as_secs_f64() / interval.as_secs_f64()
            )
        });
        let p = |xs: &[u64], q| quantile(xs, q).unwrap_or(0);
        let reqs = |q| quantile(&self.lookup_requests, q).unwrap_or(0);
        format!(
            "| {} ({}) | {} s | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {:.1} / {:.1} | {:.2} / {:.2} | {:.1} / {:.1} | {:.1} | {} | {} / {} |",
            self.peers,
            self.standing,
            self.interval_secs,
            converged,
            self.supernodes,
            self.orphans,
            self.reattach_wall
                .map_or("n/a".into(), |d| format!("{} ms", d.as_millis())),
            p50_p95(&self.reattach),
            p50_p95(&self.lookups),
            reqs(0.5),
            reqs(0.95),
            p50_p95(&self.leaves),
            p50_p95(&self.fetches),
            p(&self.rss_kib, 0.5) as f64 / 1024.0,
            p(&self.rss_kib, 1.0) as f64 / 1024.0,
            p(&self.cpu_permille, 0.5) as f64 / 10.0,
            p(&self.cpu_permille, 1.0) as f64 / 10.0,
            p(&self.wire_bytes_min, 0.5) as f64 / 1e3,
            p(&self.wire_bytes_min, 1.0) as f64 / 1e3,
            p(&self.advert_bytes_min, 0.5) as f64 / 1e3,
            p(&self.dht_requests_min, 0.5),
            p(&self.connected_peers, 0.5),
            p(&self.connected_peers, 1.0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(peer: &str, sns: &[&str], to: &str, adverts: usize) -> Standing {
        Standing {
            peer: peer.into(),
            supernodes: sns.iter().map(|s| s.to_string()).collect(),
            attached_to: to.into(),
            adverts,
        }
    }

    #[test]
    fn convergence_needs_one_set_all_adverts_and_everyone_attached() {
        let good = vec![
            standing("a", &["a"], "", 1),
            standing("b", &["a"], "a", 1),
            standing("c", &["a"], "a", 1),
        ];
        assert!(converged(&good, 1));
        assert!(!converged(&good, 2), "an advert missing");
        let mut loose = good.clone();
        loose[2].attached_to.clear();
        assert!(!converged(&loose, 1), "c attached to nobody");
        let mut split = good.clone();
        split[1].supernodes = vec!["b".into()];
        assert!(!converged(&split, 1), "two sets");
        assert_eq!(spread(&split), (2, 1, 1, 0));
        assert!(!converged(&[standing("a", &[], "", 0)], 0), "empty set");
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let xs: Vec<u64> = (1..=20).collect();
        assert_eq!(quantile(&xs, 0.5), Some(10));
        assert_eq!(quantile(&xs, 0.95), Some(19));
        assert_eq!(quantile(&xs, 1.0), Some(20));
        assert_eq!(quantile::<u64>(&[], 0.5), None);
    }
}
