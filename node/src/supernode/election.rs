//! Supernode election, pure: which peers serve as supernodes, computed
//! from the adverts a peer has seen and `now`. No IO and no local state,
//! so every peer that holds the same adverts computes the same set.
//!
//! - Only qualified peers stand: publicly reachable (AutoNAT or config) and
//!   at or above every resource threshold, uptime included.
//! - Only peers that qualify publish adverts; ordinary peers stay silent
//!   and attach. So the population the target is sized from is the
//!   serving supernodes plus the peers attached to them, as their adverts'
//!   `load` says, or the fresh adverts if more ([`population`]). The target is one supernode
//!   per `peers_per_sn` of that population, clamped to `min_sns..=max_sns`
//!   and to the qualified peers there are.
//! - Hysteresis, from the adverts themselves: peers already serving say so
//!   (`Advert::serving`). Their number is kept while it stays within
//!   `count_slack` of the target, and each of them ranks with its score
//!   times `1 + incumbent_bonus`, so a newcomer must clearly beat one to
//!   take its place. An elected set, once its members serve, elects
//!   itself again while the population stays within that slack (their
//!   attached peers, counted through `load`, can move it past).
//! - Ties break on the peer id, so the order of the adverts never matters.
//!
//! Over 600 lines, of which more than half are tests (unit and property);
//! the logic itself is one concern and stays in one file.

use libp2p::PeerId;

use crate::supernode::advert::{Advert, MAX_ADVERT_AGE_SECS};

/// The least a peer needs to stand for election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    /// CPU cores.
    pub min_cpu_cores: u32,
    /// Memory, MiB.
    pub min_memory_mib: u64,
    /// Upload bandwidth, kbit/s.
    pub min_bandwidth_kbps: u64,
    /// Seconds up: a peer that just started may leave as quickly.
    pub min_uptime_secs: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_cpu_cores: 2,
            min_memory_mib: 2048,
            min_bandwidth_kbps: 10_000,
            min_uptime_secs: 300,
        }
    }
}

/// The election's parameters. Every peer must use the same ones to agree.
#[derive(Debug, Clone, PartialEq)]
pub struct ElectionConfig {
    /// Peers (advertising or attached, see [`population`]) per supernode.
    pub peers_per_sn: usize,
    /// Fewest supernodes, when that many qualify. Two by default: the
    /// orphans of a supernode that dies move to the other at once, instead
    /// of waiting until its advert goes stale and a successor is elected.
    pub min_sns: usize,
    /// Most supernodes. 4096 by default: with `max_attached` 128 seats
    /// each, 16 (the earlier default) could seat only 2 048 peers, and the
    /// simulator's 10 000-peer overlay never settled (docs/SCALE.md).
    pub max_sns: usize,
    /// Who may stand.
    pub thresholds: Thresholds,
    /// Serving peers rank with their score times `1 + incumbent_bonus`.
    pub incumbent_bonus: f64,
    /// The serving count is kept while within this fraction of the target.
    pub count_slack: f64,
    /// An advert older than this counts for nothing, seconds. A few advert
    /// periods: a supernode that dies is replaced once this passes.
    pub max_advert_age_secs: u64,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        Self {
            peers_per_sn: 32,
            min_sns: 2,
            max_sns: 4096,
            thresholds: Thresholds::default(),
            incumbent_bonus: 0.5,
            count_slack: 0.25,
            max_advert_age_secs: MAX_ADVERT_AGE_SECS,
        }
    }
}

/// Whether the advertising peer may stand.
pub fn qualifies(a: &Advert, t: &Thresholds) -> bool {
    a.reachability.is_public()
        && a.cpu_cores >= t.min_cpu_cores
        && a.memory_mib >= t.min_memory_mib
        && a.bandwidth_kbps >= t.min_bandwidth_kbps
        && a.uptime_secs >= t.min_uptime_secs
}

/// One rule of [`qualifies`] an advert breaks, with what it has and the
/// threshold it misses (`have < need`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// Not publicly reachable: declared private, not confirmed by AutoNAT,
    /// or (as the election takes adverts) refused by this peer's dial check.
    NotPublic,
    /// CPU cores, against `min_cpu_cores`.
    CpuCores { have: u64, need: u64 },
    /// Memory in MiB, against `min_memory_mib`.
    MemoryMib { have: u64, need: u64 },
    /// Declared bandwidth in kbit/s, against `min_bandwidth_kbps`.
    BandwidthKbps { have: u64, need: u64 },
    /// Seconds up, against `min_uptime_secs`.
    UptimeSecs { have: u64, need: u64 },
}

impl Shortfall {
    /// The `node.toml` setting it is measured against (`public` for
    /// reachability).
    pub fn setting(&self) -> &'static str {
        match self {
            Self::NotPublic => "public",
            Self::CpuCores { .. } => "min_cpu_cores",
            Self::MemoryMib { .. } => "min_memory_mib",
            Self::BandwidthKbps { .. } => "min_bandwidth_kbps",
            Self::UptimeSecs { .. } => "min_uptime_secs",
        }
    }
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, have, need, unit) = match *self {
            Self::NotPublic => return f.write_str("not publicly reachable"),
            Self::CpuCores { have, need } => ("CPU cores", have, need, ""),
            Self::MemoryMib { have, need } => ("memory", have, need, " MiB"),
            Self::BandwidthKbps { have, need } => ("bandwidth", have, need, " kbit/s"),
            Self::UptimeSecs { have, need } => ("uptime", have, need, " s"),
        };
        write!(
            f,
            "{what} {have}{unit} is below {} = {need}",
            self.setting()
        )
    }
}

/// Every rule of [`qualifies`] the advert breaks, in that order; empty
/// exactly when it qualifies.
pub fn shortfalls(a: &Advert, t: &Thresholds) -> Vec<Shortfall> {
    let (cpu, min_cpu) = (u64::from(a.cpu_cores), u64::from(t.min_cpu_cores));
    [
        (!a.reachability.is_public()).then_some(Shortfall::NotPublic),
        (cpu < min_cpu).then_some(Shortfall::CpuCores {
            have: cpu,
            need: min_cpu,
        }),
        (a.memory_mib < t.min_memory_mib).then_some(Shortfall::MemoryMib {
            have: a.memory_mib,
            need: t.min_memory_mib,
        }),
        (a.bandwidth_kbps < t.min_bandwidth_kbps).then_some(Shortfall::BandwidthKbps {
            have: a.bandwidth_kbps,
            need: t.min_bandwidth_kbps,
        }),
        (a.uptime_secs < t.min_uptime_secs).then_some(Shortfall::UptimeSecs {
            have: a.uptime_secs,
            need: t.min_uptime_secs,
        }),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// How many supernodes `peers` advertising peers call for.
/// The peers the election sizes its target from. Every peer that does not
/// serve attaches to a supernode, so the serving adverts and the attached
/// peers their `load` reports count every peer once, the silent ordinary
/// ones included. Before anyone serves (or while few are attached), the
/// fresh adverts are the better count; the larger of the two is taken.
/// `load` is bounded by [`crate::supernode::advert::limits::LOAD`] when
/// verified; the sum saturates, so no advert can overflow it.
pub fn population(fresh: &[&Advert]) -> usize {
    let served = fresh.iter().filter(|a| a.serving).fold(0usize, |sum, a| {
        sum.saturating_add(1).saturating_add(a.load as usize)
    });
    served.max(fresh.len())
}

/// How many supernodes a population of `peers` calls for (see
/// [`population`]).
pub fn target_count(peers: usize, cfg: &ElectionConfig) -> usize {
    peers
        .div_ceil(cfg.peers_per_sn.max(1))
        .clamp(cfg.min_sns, cfg.max_sns.max(cfg.min_sns))
}

/// A qualified peer's standing: each resource as a multiple of its
/// threshold, capped at 8 so that one huge figure cannot buy the seat, and
/// summed on a log scale. Pure arithmetic, the same on every peer.
pub fn score(a: &Advert, t: &Thresholds) -> f64 {
    let factor = |value: u64, min: u64| -> f64 {
        let ratio = value as f64 / min.max(1) as f64;
        ratio.clamp(1.0, 8.0).ln()
    };
    1.0 + factor(a.cpu_cores.into(), t.min_cpu_cores.into())
        + factor(a.memory_mib, t.min_memory_mib)
        + factor(a.bandwidth_kbps, t.min_bandwidth_kbps)
        + factor(a.uptime_secs, t.min_uptime_secs)
}

/// The adverts that count at `now` (Unix seconds): ones at most `max_age`
/// seconds old, the newest per peer whatever order they came in (two with
/// one sequence number cannot both be signed by an honest peer; the greater
/// one wins).
pub fn current<'a>(
    adverts: impl IntoIterator<Item = &'a Advert>,
    now: u64,
    max_age: u64,
) -> Vec<&'a Advert> {
    let mut fresh: Vec<&Advert> = adverts
        .into_iter()
        .filter(|a| now.saturating_sub(a.issued_at) <= max_age)
        .collect();
    fresh.sort_by(|a, b| {
        a.peer_id
            .cmp(&b.peer_id)
            .then(b.seq.cmp(&a.seq))
            .then(b.cmp(a))
    });
    fresh.dedup_by(|later, first| later.peer_id == first.peer_id);
    fresh
}

/// The supernode set for the adverts seen, at `now` (Unix seconds), sorted
/// by peer id. Stale adverts count for nothing.
pub fn elect<'a>(
    adverts: impl IntoIterator<Item = &'a Advert>,
    now: u64,
    cfg: &ElectionConfig,
) -> Vec<PeerId> {
    let fresh = current(adverts, now, cfg.max_advert_age_secs);
    let target = target_count(population(&fresh), cfg);
    let mut ranked: Vec<(f64, &Advert)> = fresh
        .iter()
        .filter(|a| qualifies(a, &cfg.thresholds))
        .map(|a| {
            let bonus = if a.serving {
                1.0 + cfg.incumbent_bonus
            } else {
                1.0
            };
            (score(a, &cfg.thresholds) * bonus, *a)
        })
        .collect();
    let serving = ranked.iter().filter(|(_, a)| a.serving).count();
    let low = ((target as f64 * (1.0 - cfg.count_slack)).floor() as usize).max(cfg.min_sns);
    let high = ((target as f64 * (1.0 + cfg.count_slack)).ceil() as usize).min(cfg.max_sns);
    let count = if (low..=high).contains(&serving) {
        serving
    } else {
        target
    }
    .min(ranked.len());

    ranked.sort_by(|(sa, a), (sb, b)| sb.total_cmp(sa).then(a.peer_id.cmp(&b.peer_id)));
    let mut chosen: Vec<PeerId> = ranked[..count].iter().map(|(_, a)| a.peer_id).collect();
    chosen.sort();
    chosen
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::supernode::advert::{ADVERT_VERSION, Reachability};

    const NOW: u64 = 1_800_000_000;

    /// A peer id from a small number, so tests can name peers.
    fn peer(n: u64) -> PeerId {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_le_bytes());
        libp2p::identity::Keypair::ed25519_from_bytes(seed)
            .expect("32-byte seed")
            .public()
            .to_peer_id()
    }

    fn advert(n: u64, cpu: u32, public: bool, serving: bool) -> Advert {
        Advert {
            version: ADVERT_VERSION,
            peer_id: peer(n),
            seq: 1,
            issued_at: NOW,
            reachability: if public {
                Reachability::AutoNat
            } else {
                Reachability::Private
            },
            cpu_cores: cpu,
            memory_mib: 4096,
            bandwidth_kbps: 50_000,
            uptime_secs: 3600,
            load: 0,
            free_storage: 1 << 30,
            serving,
        }
    }

    /// The adverts again, with exactly the elected peers serving.
    fn serving_as(adverts: &[Advert], sns: &[PeerId]) -> Vec<Advert> {
        adverts
            .iter()
            .map(|a| Advert {
                serving: sns.contains(&a.peer_id),
                ..a.clone()
            })
            .collect()
    }

    #[test]
    fn unqualified_peers_never_stand() {
        let cfg = ElectionConfig::default();
        let adverts = [
            advert(1, 8, false, false), // private
            advert(2, 1, true, false),  // too few cores
            Advert {
                uptime_secs: 10,
                ..advert(3, 8, true, false)
            }, // just started
            advert(4, 2, true, false),
        ];
        assert_eq!(elect(&adverts, NOW, &cfg), vec![peer(4)]);
        assert!(elect(&adverts[..3], NOW, &cfg).is_empty());
    }

    /// The defaults, but one supernode may serve alone.
    fn single() -> ElectionConfig {
        ElectionConfig {
            min_sns: 1,
            ..ElectionConfig::default()
        }
    }

    #[test]
    fn shortfalls_name_each_missed_threshold_and_are_empty_for_a_qualified_peer() {
        let t = Thresholds::default();
        assert!(shortfalls(&advert(4, 2, true, false), &t).is_empty());
        // A fresh testnet peer before this change: private-by-default
        // aside, bandwidth 0 and just started.
        let fresh = Advert {
            bandwidth_kbps: 0,
            uptime_secs: 12,
            ..advert(5, 1, false, false)
        };
        let found = shortfalls(&fresh, &t);
        assert_eq!(
            found,
            [
                Shortfall::NotPublic,
                Shortfall::CpuCores { have: 1, need: 2 },
                Shortfall::BandwidthKbps {
                    have: 0,
                    need: 10_000
                },
                Shortfall::UptimeSecs {
                    have: 12,
                    need: 300
                },
            ]
        );
        assert_eq!(
            found[2].to_string(),
            "bandwidth 0 kbit/s is below min_bandwidth_kbps = 10000"
        );
        assert_eq!(found[0].to_string(), "not publicly reachable");
        // Exactly at a threshold is enough.
        let edge = Advert {
            memory_mib: t.min_memory_mib,
            uptime_secs: t.min_uptime_secs,
            ..advert(6, 2, true, false)
        };
        assert!(shortfalls(&edge, &t).is_empty());
        let short = Advert {
            memory_mib: t.min_memory_mib - 1,
            ..edge
        };
        assert_eq!(
            shortfalls(&short, &t),
            [Shortfall::MemoryMib {
                have: 2047,
                need: 2048
            }]
        );
    }

    proptest! {
        #[test]
        fn shortfalls_are_empty_exactly_when_the_advert_qualifies(a in arb_advert()) {
            let t = Thresholds::default();
            prop_assert_eq!(shortfalls(&a, &t).is_empty(), qualifies(&a, &t));
        }
    }

    #[test]
    fn one_supernode_per_32_peers_within_bounds() {
        let cfg = single();
        let adverts: Vec<Advert> = (0..100).map(|n| advert(n, 4, true, false)).collect();
        assert_eq!(elect(&adverts, NOW, &cfg).len(), 4); // ceil(100 / 32)
        assert_eq!(elect(&adverts[..32], NOW, &cfg).len(), 1);
        assert_eq!(elect(&adverts[..33], NOW, &cfg).len(), 2);
        let few = ElectionConfig {
            max_sns: 2,
            ..cfg.clone()
        };
        assert_eq!(elect(&adverts, NOW, &few).len(), 2);
    }

    #[test]
    fn by_default_two_serve_as_soon_as_two_qualify() {
        let cfg = ElectionConfig::default();
        let adverts: Vec<Advert> = (0..10).map(|n| advert(n, 4, n < 2, false)).collect();
        assert_eq!(elect(&adverts, NOW, &cfg), vec![peer(0), peer(1)]);
        // One qualified peer serves alone.
        assert_eq!(elect(&adverts[1..], NOW, &cfg), vec![peer(1)]);
        // Two serving: neither yields its seat to a standby.
        let serving: Vec<Advert> = (0..4).map(|n| advert(n, 4, true, n < 2)).collect();
        assert_eq!(elect(&serving, NOW, &cfg), vec![peer(0), peer(1)]);
    }

    #[test]
    fn stale_adverts_count_for_nothing() {
        let cfg = ElectionConfig::default();
        let old = Advert {
            issued_at: NOW - MAX_ADVERT_AGE_SECS - 1,
            ..advert(1, 64, true, true)
        };
        assert_eq!(
            elect(&[old, advert(2, 2, true, false)], NOW, &cfg),
            vec![peer(2)]
        );
    }

    #[test]
    fn a_silent_supernode_is_replaced_once_its_advert_ages_past_the_window() {
        let cfg = ElectionConfig {
            max_advert_age_secs: 6,
            ..single()
        };
        let dead = Advert {
            issued_at: NOW - 7,
            ..advert(1, 64, true, true)
        };
        let alive = advert(2, 2, true, false);
        assert_eq!(
            elect(&[dead.clone(), alive.clone()], NOW - 1, &cfg),
            vec![peer(1)]
        );
        assert_eq!(elect(&[dead, alive], NOW, &cfg), vec![peer(2)]);
    }

    #[test]
    fn a_slightly_better_newcomer_does_not_displace_a_serving_supernode() {
        let cfg = single();
        let incumbent = advert(1, 4, true, true);
        let newcomer = advert(2, 6, true, false); // more cores, less than 1.5x the score
        assert!(score(&newcomer, &cfg.thresholds) > score(&incumbent, &cfg.thresholds));
        assert_eq!(
            elect(&[incumbent.clone(), newcomer], NOW, &cfg),
            vec![peer(1)]
        );
        // A much stronger one does.
        let strong = Advert {
            memory_mib: 64 * 1024,
            bandwidth_kbps: 1_000_000,
            uptime_secs: 100_000,
            ..advert(3, 16, true, false)
        };
        assert_eq!(elect(&[incumbent, strong], NOW, &cfg), vec![peer(3)]);
    }

    #[test]
    fn the_count_does_not_flap_around_a_boundary() {
        let cfg = ElectionConfig::default();
        // 64 peers call for 2 supernodes; 2 serve.
        let adverts: Vec<Advert> = (0..64).map(|n| advert(n, 4, true, n < 2)).collect();
        let mut both = vec![peer(0), peer(1)];
        both.sort();
        assert_eq!(elect(&adverts, NOW, &cfg), both);
        // One more peer calls for 3 by the ratio, but 2 is within the slack.
        let mut more = adverts.clone();
        more.push(advert(64, 4, true, false));
        assert_eq!(elect(&more, NOW, &cfg).len(), 2);
    }

    #[test]
    fn every_supernode_gone_promotes_qualified_peers() {
        let cfg = ElectionConfig::default();
        let adverts: Vec<Advert> = (0..40)
            .map(|n| advert(n, 2 + (n % 3) as u32, n % 2 == 0, false))
            .collect();
        let sns = elect(&adverts, NOW, &cfg);
        assert_eq!(sns.len(), 2);
        assert!(sns.iter().all(|p| {
            adverts
                .iter()
                .any(|a| a.peer_id == *p && qualifies(a, &cfg.thresholds))
        }));
    }

    #[test]
    fn attached_peers_grow_the_target() {
        let cfg = single();
        // Four qualified peers advertise; one serves, alone: a population
        // of 4 calls for one supernode, and it keeps its seat.
        let quiet: Vec<Advert> = (0..4).map(|n| advert(n, 4, true, n == 0)).collect();
        assert_eq!(population(&current(&quiet, NOW, MAX_ADVERT_AGE_SECS)), 4);
        assert_eq!(elect(&quiet, NOW, &cfg), vec![peer(0)]);
        // 100 peers attach to it: with it, 101 call for ceil(101 / 32) = 4.
        let mut busy = quiet.clone();
        busy[0].load = 100;
        assert_eq!(population(&current(&busy, NOW, MAX_ADVERT_AGE_SECS)), 101);
        assert_eq!(elect(&busy, NOW, &cfg).len(), 4);
        // Only as many as qualify: two of the four turn private.
        for a in &mut busy[2..] {
            a.reachability = Reachability::Private;
        }
        assert_eq!(elect(&busy, NOW, &cfg).len(), 2);
    }

    #[test]
    fn qualified_peers_that_advertise_and_attach_count_once() {
        let cfg = single();
        // 12 qualified peers, 3 serve, the other 9 attached (3 each): 12.
        let adverts: Vec<Advert> = (0..12)
            .map(|n| Advert {
                load: if n < 3 { 3 } else { 0 },
                ..advert(n, 4, true, n < 3)
            })
            .collect();
        assert_eq!(population(&current(&adverts, NOW, MAX_ADVERT_AGE_SECS)), 12);
        let four = ElectionConfig {
            peers_per_sn: 4,
            ..cfg
        };
        assert_eq!(elect(&adverts, NOW, &four).len(), 3);
    }

    #[test]
    fn only_serving_adverts_bring_their_load() {
        let cfg = single();
        // A peer that does not serve claims 1000 attached peers: ignored.
        let mut adverts: Vec<Advert> = (0..4).map(|n| advert(n, 4, true, n == 0)).collect();
        adverts[1].load = 1000;
        assert_eq!(population(&current(&adverts, NOW, MAX_ADVERT_AGE_SECS)), 4);
        assert_eq!(elect(&adverts, NOW, &cfg), vec![peer(0)]);
        // A stale serving advert brings nothing either.
        adverts[0].load = 1000;
        adverts[0].issued_at = NOW - MAX_ADVERT_AGE_SECS - 1;
        assert_eq!(population(&current(&adverts, NOW, MAX_ADVERT_AGE_SECS)), 3);
    }

    #[test]
    fn the_population_saturates_and_the_target_stays_within_max_sns() {
        let cfg = ElectionConfig {
            max_sns: 16,
            ..ElectionConfig::default()
        };
        let adverts: Vec<Advert> = (0..40)
            .map(|n| Advert {
                load: u32::MAX,
                ..advert(n, 4, true, true)
            })
            .collect();
        let fresh = current(&adverts, NOW, MAX_ADVERT_AGE_SECS);
        let sum = 40usize.saturating_add(40usize.saturating_mul(u32::MAX as usize));
        assert_eq!(sum, 40 * (1 + u32::MAX as usize), "no overflow on 64 bits");
        assert_eq!(population(&fresh), sum);
        assert_eq!(elect(&adverts, NOW, &cfg).len(), cfg.max_sns);
    }

    fn arb_advert() -> impl Strategy<Value = Advert> {
        (
            0u64..60,
            1u32..12,
            any::<bool>(),
            any::<bool>(),
            1024u64..32768,
            1_000u64..200_000,
            0u64..20_000,
            0u64..200,
            0u32..400,
        )
            .prop_map(|(n, cpu, public, serving, mem, bw, up, age, load)| Advert {
                load,
                memory_mib: mem,
                bandwidth_kbps: bw,
                uptime_secs: up,
                issued_at: NOW - age,
                ..advert(n, cpu, public, serving)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn the_result_does_not_depend_on_advert_order(
            adverts in proptest::collection::vec(arb_advert(), 0..80),
            seed in any::<u64>(),
        ) {
            let cfg = ElectionConfig::default();
            let mut shuffled = adverts.clone();
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            rand::seq::SliceRandom::shuffle(shuffled.as_mut_slice(), &mut rng);
            prop_assert_eq!(elect(&adverts, NOW, &cfg), elect(&shuffled, NOW, &cfg));
        }

        #[test]
        fn the_count_respects_the_bounds(
            adverts in proptest::collection::vec(arb_advert(), 0..80),
            min_sns in 0usize..4,
            extra in 0usize..6,
            ratio in 1usize..40,
        ) {
            let cfg = ElectionConfig { peers_per_sn: ratio, min_sns, max_sns: min_sns + extra, ..ElectionConfig::default() };
            let sns = elect(&adverts, NOW, &cfg);
            let fresh = current(&adverts, NOW, cfg.max_advert_age_secs);
            let qualified = fresh.iter().filter(|a| qualifies(a, &cfg.thresholds)).count();
            prop_assert!(sns.len() <= cfg.max_sns.max(cfg.min_sns));
            prop_assert!(sns.len() <= qualified);
            prop_assert!(sns.len() >= cfg.min_sns.min(qualified));
            // Only qualified, fresh peers are elected, each once.
            for p in &sns {
                prop_assert!(fresh.iter().any(|a| a.peer_id == *p && qualifies(a, &cfg.thresholds)));
            }
            let mut unique = sns.clone();
            unique.dedup();
            prop_assert_eq!(unique.len(), sns.len());
        }

        #[test]
        fn an_elected_set_once_serving_elects_itself_again(
            adverts in proptest::collection::vec(arb_advert(), 0..80),
        ) {
            // Without attached peers: their load moves the target (see
            // `attached_peers_grow_the_target`).
            let adverts: Vec<Advert> = adverts.into_iter().map(|a| Advert { load: 0, ..a }).collect();
            let cfg = ElectionConfig::default();
            let sns = elect(&adverts, NOW, &cfg);
            let next = serving_as(&adverts, &sns);
            prop_assert_eq!(elect(&next, NOW, &cfg), sns);
        }
    }
}
