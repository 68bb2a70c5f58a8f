//! A deterministic scale simulator of the supernode overlay (issue 18):
//! what one machine cannot run, modelled over the node's own pure code.
//!
//! - [`overlay`]: adverts, the election ([`vmail_node::supernode::election`]),
//!   attach and re-attach ([`vmail_node::supernode::attach`]) and Weibull
//!   churn ([`crate::churn`]'s constants), in one-second steps;
//! - [`gossip`]: gossipsub as the node configures it over a random mesh,
//!   and the bytes it costs each peer;
//! - [`kad`]: Kademlia routing tables and iterative lookups, libp2p's keys
//!   and parameters.
//!
//! [`run`] plays one network of `n` peers: a cold start (every peer comes
//! up within the first advert interval), the busiest supernode killed
//! once the overlay has settled, then churn until the horizon; it returns
//! a [`Report`]. Everything is seeded: the same [`Params`] give the same
//! report. `tests/src/bin/scale_sim.rs` prints the table and writes
//! `docs/SCALE.md`.

pub mod gossip;
pub mod kad;
pub mod overlay;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vmail_node::config::SupernodeConfig;
use vmail_node::supernode::attach::patience;

pub use overlay::{Sample, World};

/// When the busiest supernode is killed, seconds after start: after the
/// 300 s uptime threshold and a dozen advert intervals more.
pub const KILL_AT_SECS: u64 = 600;
/// When churn starts, seconds after start (the re-attach window ends).
pub const CHURN_FROM_SECS: u64 = 720;
/// Default horizon, seconds.
pub const HORIZON_SECS: u64 = 3_600;
/// Seconds between samples of the time series.
pub const SAMPLE_EVERY_SECS: u64 = 10;
/// Lookups per DHT scenario.
pub const LOOKUPS: usize = 300;
/// Age of the routing tables the churn scenario's lookups use, seconds:
/// libp2p-kad 0.49 refreshes them every 5 minutes (periodic bootstrap).
pub const KAD_TABLE_AGE_SECS: u64 = 300;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Params {
    /// Peers.
    pub n: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// The node's supernode settings (the default config unless changed).
    pub sn: SupernodeConfig,
    /// Seconds simulated (at least [`CHURN_FROM_SECS`] + [`KAD_TABLE_AGE_SECS`]).
    pub horizon_secs: u64,
}

impl Params {
    /// `n` peers, the default config, the default horizon.
    pub fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            seed,
            sn: SupernodeConfig::default(),
            horizon_secs: HORIZON_SECS,
        }
    }
}

/// Percentiles and mean of a lookup measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookups {
    /// Rounds to the K closest: p50, p95.
    pub rounds: (f64, f64),
    /// Requests per lookup, mean.
    pub requests: f64,
    /// Timed-out requests per lookup, mean.
    pub timeouts: f64,
    /// Round in which a provider first answered: p50, p95.
    pub provider_round: (f64, f64),
    /// Hops on the path to the first provider that answered: p50, p95.
    pub provider_hops: (f64, f64),
    /// Lookups that never reached a provider.
    pub provider_missed: usize,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Peers.
    pub n: usize,
    /// Peers that qualify to stand.
    pub qualified: usize,
    /// Advert interval, seconds.
    pub interval: u64,
    /// First advert, seconds after start (the uptime threshold).
    pub first_advert: Option<u64>,
    /// Start of the first converged advert interval, seconds after start.
    pub converged: Option<u64>,
    /// Supernodes and online peers at convergence (or at the kill).
    pub settled_sns: usize,
    /// Load of the killed supernode (its orphans).
    pub orphans: usize,
    /// Orphans' re-attach times when the connection closes, ms, sorted.
    pub reattach_ms: Vec<f64>,
    /// Orphans still unattached when churn started.
    pub orphans_left: usize,
    /// What a silent death adds: the heartbeat patience, ms.
    pub silent_extra_ms: f64,
    /// Online peers unattached just before the kill.
    pub unattached_before_kill: usize,
    /// Changes of the elected set (the view of peers holding every fresh
    /// advert their book has room for) from the first advert to the kill.
    pub set_changes: u64,
    /// Lookups with every peer online and full tables.
    pub lookups_static: Lookups,
    /// Lookups at the horizon, tables [`KAD_TABLE_AGE_SECS`] old.
    pub lookups_churn: Lookups,
    /// Adverts per minute before the kill.
    pub adverts_per_min: f64,
    /// Mean signed advert, bytes.
    pub advert_bytes: f64,
    /// Payload per peer per minute, bytes.
    pub payload: f64,
    /// Wire bytes per peer per minute: mean, p99, max over supernodes.
    pub wire: (f64, f64, f64),
    /// Slowest first arrival of an advert, ms, and its hops.
    pub gossip_last: (f64, u32),
    /// Most fresh adverts at once, and the book's cap.
    pub max_fresh: (usize, usize),
    /// Supernodes under churn: least and most; ratio to online, least and most.
    pub churn_sns: (usize, usize),
    /// See `churn_sns`.
    pub churn_ratio: (f64, f64),
    /// Most online peers unattached at a sample under churn.
    pub churn_unattached: usize,
    /// Most distinct elected sets at a sample under churn.
    pub churn_views: usize,
    /// The time series.
    pub samples: Vec<Sample>,
}

/// The `q` quantile of sorted values (nearest rank), 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn lookups(dht: &mut kad::Dht, online: &[bool], rng: &mut StdRng) -> Lookups {
    let alive: Vec<u32> = (0..online.len() as u32)
        .filter(|i| online[*i as usize])
        .collect();
    let (mut rounds, mut prov, mut hops) = (Vec::new(), Vec::new(), Vec::new());
    let (mut requests, mut timeouts, mut missed) = (0u64, 0u64, 0);
    for _ in 0..LOOKUPS {
        let target = kad::Dht::random_key(rng);
        let from = alive[rng.gen_range(0..alive.len())];
        let holders = dht.holders(target, online);
        let l = dht.lookup(from, target, online, &holders);
        rounds.push(f64::from(l.rounds));
        requests += u64::from(l.requests);
        timeouts += u64::from(l.timeouts);
        match (l.provider_round, l.provider_hops) {
            (Some(r), Some(h)) => {
                prov.push(f64::from(r));
                hops.push(f64::from(h));
            }
            _ => missed += 1,
        }
    }
    rounds.sort_by(f64::total_cmp);
    prov.sort_by(f64::total_cmp);
    hops.sort_by(f64::total_cmp);
    Lookups {
        rounds: (quantile(&rounds, 0.5), quantile(&rounds, 0.95)),
        requests: requests as f64 / LOOKUPS as f64,
        timeouts: timeouts as f64 / LOOKUPS as f64,
        provider_round: (quantile(&prov, 0.5), quantile(&prov, 0.95)),
        provider_hops: (quantile(&hops, 0.5), quantile(&hops, 0.95)),
        provider_missed: missed,
    }
}

/// Plays one network (see the module doc).
pub fn run(p: &Params) -> Report {
    let interval = p.sn.advert_interval_secs.max(1);
    let horizon = p.horizon_secs.max(CHURN_FROM_SECS + KAD_TABLE_AGE_SECS);
    let mut w = World::new(p.n, p.seed, p.sn.clone());
    let mut rng = StdRng::seed_from_u64(p.seed ^ 0x0073_6361_6c65);
    let mut samples = Vec::new();
    let (mut window, mut converged, mut first_advert) = (None, None, None);
    let mut settled_sns = 0;
    // Cold start until the kill.
    while w.t < KILL_AT_SECS {
        w.step();
        let (s, ok) = w.sample();
        if first_advert.is_none() && w.publishes.last().is_some_and(|n| *n > 0) {
            first_advert = Some(s.t);
        }
        if s.t % SAMPLE_EVERY_SECS == 0 {
            samples.push(s);
        }
        if converged.is_none() {
            match (ok, window) {
                (true, None) => window = Some(s.t),
                (true, Some(from)) if s.t + 1 - from >= interval => {
                    converged = Some(from);
                    settled_sns = s.sns;
                }
                (false, _) => window = None,
                _ => {}
            }
        }
    }
    let unattached_before_kill = w.sample().0.unattached;
    let set_changes = w.set_changes;
    if converged.is_none() {
        settled_sns = w.sample().0.sns;
    }
    // Gossip cost over the settled overlay.
    let recent = &w.publishes[w.publishes.len().saturating_sub(60)..];
    let adverts_per_min =
        recent.iter().map(|n| f64::from(*n)).sum::<f64>() * 60.0 / recent.len().max(1) as f64;
    let advert_bytes =
        w.signed_sizes.iter().sum::<usize>() as f64 / w.signed_sizes.len().max(1) as f64;
    let pos = w.positions();
    let mesh = gossip::Mesh::random(p.n, &mut rng);
    let cost = gossip::cost(
        &mesh,
        adverts_per_min,
        advert_bytes as usize,
        &mut rng,
        |a, b| overlay::rtt_ms(pos[a as usize], pos[b as usize]) / 2.0,
    );
    let mut wire = cost.wire.clone();
    let sns = w.serving();
    let max_sn = sns
        .iter()
        .map(|s| cost.wire[*s as usize])
        .fold(0.0, f64::max);
    wire.sort_by(f64::total_cmp);
    let wire_mean = wire.iter().sum::<f64>() / wire.len().max(1) as f64;
    // Kill the busiest supernode.
    let busiest = sns.iter().copied().max_by_key(|s| (w.load(*s), *s));
    let orphans = busiest.map(|s| w.attached_to(s)).unwrap_or_default();
    if let Some(s) = busiest {
        w.kill(s);
    }
    let kill_t = w.t;
    let mut reattach = Vec::new();
    let mut waiting: std::collections::HashSet<u32> = orphans.iter().copied().collect();
    while w.t < CHURN_FROM_SECS {
        let took = w.step();
        for o in orphans.iter() {
            if waiting.contains(o)
                && let Some(ms) = took.get(o)
            {
                reattach.push((w.t - 1 - kill_t) as f64 * 1000.0 + ms);
                waiting.remove(o);
            }
        }
        // An orphan elected in the meantime serves instead.
        let now_serving = w.serving();
        waiting.retain(|o| now_serving.binary_search(o).is_err());
        let (s, _) = w.sample();
        if s.t % SAMPLE_EVERY_SECS == 0 {
            samples.push(s);
        }
    }
    reattach.sort_by(f64::total_cmp);
    // Churn.
    w.start_churn();
    let (mut sn_lo, mut sn_hi, mut r_lo, mut r_hi) = (usize::MAX, 0, f64::MAX, 0.0f64);
    let (mut worst_unattached, mut worst_views) = (0, 0);
    let mut tables_online = w.online();
    while w.t < horizon {
        if w.t == horizon - KAD_TABLE_AGE_SECS {
            tables_online = w.online();
        }
        w.step();
        let (s, _) = w.sample();
        if s.t % SAMPLE_EVERY_SECS == 0 {
            samples.push(s);
            sn_lo = sn_lo.min(s.sns);
            sn_hi = sn_hi.max(s.sns);
            let ratio = s.sns as f64 / s.online.max(1) as f64;
            r_lo = r_lo.min(ratio);
            r_hi = r_hi.max(ratio);
            worst_unattached = worst_unattached.max(s.unattached);
            worst_views = worst_views.max(s.views);
        }
    }
    // Lookups: everyone online with full tables, then at the horizon.
    let keys: Vec<kad::Key> = w.peer_ids().iter().map(kad::Key::of_peer).collect();
    let all = vec![true; p.n];
    let mut dht = kad::Dht::new(keys.clone(), all.clone(), p.seed);
    let lookups_static = lookups(&mut dht, &all, &mut rng);
    let mut dht = kad::Dht::new(keys, tables_online, p.seed ^ 1);
    let lookups_churn = lookups(&mut dht, &w.online(), &mut rng);
    Report {
        n: p.n,
        qualified: w.qualified(),
        interval,
        first_advert,
        converged,
        settled_sns,
        orphans: orphans.len(),
        reattach_ms: reattach,
        orphans_left: waiting.len(),
        silent_extra_ms: patience(p.sn.heartbeat()).as_secs_f64() * 1000.0,
        unattached_before_kill,
        set_changes,
        lookups_static,
        lookups_churn,
        adverts_per_min,
        advert_bytes,
        payload: cost.payload,
        wire: (wire_mean, quantile(&wire, 0.99), max_sn),
        gossip_last: (cost.last_ms, cost.max_hops),
        max_fresh: (w.max_fresh, p.sn.max_tracked_peers),
        churn_sns: (sn_lo, sn_hi),
        churn_ratio: (r_lo, r_hi),
        churn_unattached: worst_unattached,
        churn_views: worst_views,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few hundred peers: deterministic, converging, within bounds, and
    /// lookups that grow no faster than log2 N.
    #[test]
    fn a_small_network_converges_deterministically_within_bounds() {
        let p = Params {
            horizon_secs: 1_200,
            ..Params::new(300, 11)
        };
        let a = run(&p);
        assert_eq!(a, run(&p), "the same seed gives the same report");
        let conv = a.converged.expect("the overlay converges");
        let first = a.first_advert.expect("someone advertises");
        assert!(conv >= first);
        assert!((conv - first) as f64 / a.interval as f64 <= 10.0, "{a:?}");
        let (lo, hi) = a.churn_sns;
        assert!(lo >= p.sn.min_sns && hi <= p.sn.max_sns, "{lo}..{hi}");
        assert!(a.orphans > 0 && a.orphans_left == 0, "{a:?}");
        let log2n = (p.n as f64).log2();
        assert!(
            a.lookups_static.provider_hops.1 <= log2n,
            "{:?}",
            a.lookups_static
        );
        assert_eq!(a.lookups_static.provider_missed, 0);
    }
}
