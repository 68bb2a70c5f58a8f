//! Storage-peer scoring (paper §3.2), pure: what this peer has observed of
//! others, with time decay, and the scorers that rank them. No IO; every
//! call takes `now` in Unix seconds.
//!
//! The paper's example is `Score = a × e × c / min{f, 1}`:
//! - `a`, availability: the share of samples in which the peer was online;
//! - `e`, experience: the share of stores, fetches and audits that went
//!   well, starting at 0.5;
//! - `c`, free capacity on a 1–100 scale;
//! - `f`, how often this peer picked it, in picks per hour.
//!
//! **How we read `min{f, 1}`.** With `f` floored at [`MIN_PICKS_PER_HOUR`],
//! a peer picked less than once an hour has its score divided by `f`, so
//! the less it was picked the higher it ranks (up to 100× at the floor),
//! while above one pick an hour frequency stops mattering. That favours
//! rarely picked peers strongly but does nothing against a peer picked
//! constantly. The alternative `max{f, 1}` leaves rarely picked peers alone
//! and divides a busy peer's score by its rate. docs/PLACEMENT.md measures
//! both under churn: `max{f, 1}` keeps more voicemails, needs less repair
//! traffic and halves the load on the busiest peer, so it is the default;
//! [`FrequencyRule`] selects.
//!
//! The paper's other factors multiply in with the documented weights of
//! [`Weights`]: a preferred-list bonus, a supernode-recommendation bonus, a
//! penalty for having been chosen moments ago, and a network factor from
//! the RTT.
//!
//! [`FairScorer`] spreads load (issue 18): the same score with free space
//! damped, ranked by the power of `d` choices ([`Order::Choices`]) and/or
//! divided by a load term; `placement.scorer = "three-choice"` is
//! [`FairScorer::THREE_CHOICE`]. docs/PLACEMENT.md, "Fair load", measures
//! the variants.
//!
//! Over 600 lines since issue 18 added the fair scorer and its tests; the
//! split of selection ([`select`], [`Order`], [`FairScorer`]) from the
//! observation table is owed, not done.
//!
//! Over 600 lines since issue 18 added the fair-load scorers; splitting the
//! scorers from the observation table is owed.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The floor of `f`, picks per hour: a never-picked peer's divisor.
pub const MIN_PICKS_PER_HOUR: f64 = 0.01;
/// Free bytes that earn the top capacity score, 100 (1 GiB, the default
/// quota). Capacity is linear below it, and at least 1.
pub const CAPACITY_FULL_SCALE: u64 = 1 << 30;
/// Half-life of availability and experience evidence: a week. Old evidence
/// fades so that a peer can recover, and a good record cannot be coasted on.
pub const EVIDENCE_HALF_LIFE_SECS: f64 = 7.0 * 86_400.0;
/// Time constant of the pick-rate estimate: one hour, so the decayed pick
/// count reads directly as picks per hour.
pub const PICK_RATE_WINDOW_SECS: f64 = 3_600.0;
/// How much a corrupt answer weighs against experience, in failed
/// exchanges: lying is worse than being down.
pub const CORRUPT_WEIGHT: f64 = 4.0;

/// What a scorer sees of one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerStats {
    /// Availability `a`, 0 to 1.
    pub availability: f64,
    /// Experience `e`, 0 to 1 (0.5 with no history).
    pub experience: f64,
    /// Capacity `c`, 1 to 100.
    pub capacity: f64,
    /// Pick frequency `f`, picks per hour (not yet floored).
    pub picks_per_hour: f64,
    /// Seconds since this peer last chose it, if ever.
    pub since_chosen: Option<f64>,
    /// On the configured preferred list.
    pub preferred: bool,
    /// Recommended by this peer's supernode.
    pub recommended: bool,
    /// Round-trip time, milliseconds, if measured.
    pub rtt_ms: Option<f64>,
    /// Bytes this peer's table saw the candidate accept, decayed with
    /// [`EVIDENCE_HALF_LIFE_SECS`]: an estimate of the load this peer (or,
    /// with a shared table, its group) put on it.
    pub placed_bytes: f64,
}

impl Default for PeerStats {
    /// A peer nothing is known about.
    fn default() -> Self {
        Self {
            availability: 0.5,
            experience: 0.5,
            capacity: 1.0,
            picks_per_hour: 0.0,
            since_chosen: None,
            preferred: false,
            recommended: false,
            rtt_ms: None,
            placed_bytes: 0.0,
        }
    }
}

/// Ranks candidates; the higher the better. Pure, so the churn study can
/// swap scorers.
pub trait Scorer {
    /// The candidate's score, finite and non-negative.
    fn score(&self, s: &PeerStats) -> f64;

    /// The candidate's score among `pool`, for a scorer that weighs a
    /// candidate against the others; by default [`Scorer::score`].
    fn score_in(&self, s: &PeerStats, _pool: &Pool) -> f64 {
        self.score(s)
    }

    /// How [`select`] turns scores into an order; by default
    /// [`Order::Jitter`].
    fn order(&self) -> Order {
        Order::Jitter
    }
}

/// What [`select`] tells a scorer about the whole candidate pool.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pool {
    /// Mean [`PeerStats::placed_bytes`] over the candidates.
    pub mean_placed_bytes: f64,
}

/// How [`select`] orders candidates by score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Best first, each score multiplied by a random factor in
    /// `[1 − JITTER, 1 + JITTER]`.
    Jitter,
    /// The power of `d` choices: draw `d` of the candidates not yet ranked
    /// at random and rank the best of them next, until all are ranked. The
    /// best candidate wins only the draws it is in, so no candidate is
    /// picked much more than `d` times as often as the average one.
    Choices(usize),
}

/// How pick frequency enters the paper's formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrequencyRule {
    /// `/ min{f, 1}`: rarely picked peers are boosted.
    Min,
    /// `/ max{f, 1}`: often picked peers are damped.
    Max,
}

/// The weights of the factors beyond `a`, `e`, `c` and `f`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Multiplier for a peer on the preferred list.
    pub preferred: f64,
    /// Multiplier for a peer the supernode recommended.
    pub recommended: f64,
    /// A peer chosen `t` seconds ago is multiplied by
    /// `1 − recent_penalty × e^(−t / recent_secs)`.
    pub recent_penalty: f64,
    /// See `recent_penalty`.
    pub recent_secs: f64,
    /// The network factor is `1 / (1 + rtt / rtt_scale_ms)`.
    pub rtt_scale_ms: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            preferred: 2.0,
            recommended: 1.5,
            recent_penalty: 0.5,
            recent_secs: 600.0,
            rtt_scale_ms: 200.0,
        }
    }
}

/// The paper's heuristic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperScorer {
    /// `min{f, 1}` or `max{f, 1}`.
    pub rule: FrequencyRule,
    /// The other factors.
    pub weights: Weights,
}

impl Default for PaperScorer {
    /// `max{f, 1}`, the churn study's choice, with the default weights.
    fn default() -> Self {
        Self {
            rule: FrequencyRule::Max,
            weights: Weights::default(),
        }
    }
}

/// Clamps to `lo..=hi`, with NaN as `lo`.
fn clamp(x: f64, lo: f64, hi: f64) -> f64 {
    if x.is_nan() { lo } else { x.clamp(lo, hi) }
}

impl Scorer for PaperScorer {
    fn score(&self, s: &PeerStats) -> f64 {
        let w = &self.weights;
        let a = clamp(s.availability, 0.0, 1.0);
        let e = clamp(s.experience, 0.0, 1.0);
        let c = clamp(s.capacity, 1.0, 100.0);
        let f = clamp(s.picks_per_hour, MIN_PICKS_PER_HOUR, 1e9);
        let divisor = match self.rule {
            FrequencyRule::Min => f.min(1.0),
            FrequencyRule::Max => f.max(1.0),
        };
        let mut score = a * e * c / divisor;
        if s.preferred {
            score *= w.preferred;
        }
        if s.recommended {
            score *= w.recommended;
        }
        if let Some(t) = s.since_chosen {
            let t = clamp(t, 0.0, f64::MAX);
            score *= 1.0 - w.recent_penalty * (-t / w.recent_secs).exp();
        }
        if let Some(rtt) = s.rtt_ms {
            score /= 1.0 + clamp(rtt, 0.0, 1e9) / w.rtt_scale_ms;
        }
        score
    }
}

/// Every candidate the same: selection is then a uniform random draw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RandomScorer;

impl Scorer for RandomScorer {
    fn score(&self, _: &PeerStats) -> f64 {
        1.0
    }
}

/// A scorer that spreads load (docs/PLACEMENT.md, "Fair load"): the
/// paper's score, divided by a load term and/or ranked by the power of `d`
/// choices.
///
/// The load term is `(1 + placed / mean)^load_exponent`, where `placed` is
/// [`PeerStats::placed_bytes`], what this peer's own table saw the
/// candidate accept, and `mean` that over the candidate pool: information
/// a sender has without asking anyone. Randomness comes from the caller's
/// RNG through [`select`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FairScorer {
    /// The score being damped.
    pub paper: PaperScorer,
    /// How [`select`] orders by score.
    pub order: Order,
    /// Exponent of the load term; 0 leaves the score alone.
    pub load_exponent: f64,
    /// The capacity factor `c` (1–100) enters as `c^capacity_exponent`: 1
    /// is the paper's, 0 ignores free space, and in between free space
    /// weighs less against availability.
    pub capacity_exponent: f64,
}

impl FairScorer {
    /// `placement.scorer = "three-choice"`, the variant docs/PLACEMENT.md
    /// keeps: the power of three choices over the paper's `max{f, 1}`
    /// score with free space weighed as `c^0.25`, no load term.
    pub const THREE_CHOICE: FairScorer = FairScorer {
        paper: PaperScorer {
            rule: FrequencyRule::Max,
            weights: Weights {
                preferred: 2.0,
                recommended: 1.5,
                recent_penalty: 0.5,
                recent_secs: 600.0,
                rtt_scale_ms: 200.0,
            },
        },
        order: Order::Choices(3),
        load_exponent: 0.0,
        capacity_exponent: 0.25,
    };
}

impl Scorer for FairScorer {
    fn score(&self, s: &PeerStats) -> f64 {
        let c = clamp(s.capacity, 1.0, 100.0);
        self.paper.score(&PeerStats {
            capacity: c.powf(clamp(self.capacity_exponent, 0.0, 1.0)),
            ..*s
        })
    }

    fn score_in(&self, s: &PeerStats, pool: &Pool) -> f64 {
        let base = self.score(s);
        let mean = clamp(pool.mean_placed_bytes, 0.0, 1e18);
        if self.load_exponent <= 0.0 || mean <= 0.0 {
            return base;
        }
        let load = clamp(s.placed_bytes, 0.0, 1e18) / mean;
        base / (1.0 + load).powf(clamp(self.load_exponent, 0.0, 16.0))
    }

    fn order(&self) -> Order {
        self.order
    }
}

/// Share of its score a candidate may gain or lose at random in
/// [`select`], so that senders with the same view spread their picks.
pub const JITTER: f64 = 0.25;

/// The `n` best of `candidates` (distinct), best first, in the scorer's
/// [`Order`]: with [`Order::Jitter`] each score is multiplied by a random
/// factor in `[1 − JITTER, 1 + JITTER]`, and ties and zero scores are
/// ordered at random; with [`Order::Choices`] the order is drawn.
pub fn select<K: Clone + Ord>(
    scorer: &dyn Scorer,
    candidates: &[(K, PeerStats)],
    n: usize,
    rng: &mut impl Rng,
) -> Vec<K> {
    let count = candidates.len().max(1) as f64;
    let pool = Pool {
        mean_placed_bytes: candidates
            .iter()
            .map(|(_, s)| clamp(s.placed_bytes, 0.0, 1e18))
            .sum::<f64>()
            / count,
    };
    match scorer.order() {
        Order::Jitter => select_jittered(scorer, &pool, candidates, n, rng),
        Order::Choices(d) => select_choices(scorer, &pool, candidates, d.max(1), n, rng),
    }
}

fn select_jittered<K: Clone + Ord>(
    scorer: &dyn Scorer,
    pool: &Pool,
    candidates: &[(K, PeerStats)],
    n: usize,
    rng: &mut impl Rng,
) -> Vec<K> {
    let mut ranked: Vec<(f64, f64, &K)> = candidates
        .iter()
        .map(|(k, s)| {
            let jitter = 1.0 + rng.gen_range(-JITTER..=JITTER);
            (scorer.score_in(s, pool) * jitter, rng.r#gen::<f64>(), k)
        })
        .collect();
    let best_first =
        |a: &(f64, f64, &K), b: &(f64, f64, &K)| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1));
    // Only the head needs sorting; the tail is sorted if duplicates in the
    // head leave fewer than `n` distinct candidates.
    let head = n.min(ranked.len());
    if head > 0 && head < ranked.len() {
        ranked.select_nth_unstable_by(head - 1, best_first);
    }
    ranked[..head].sort_by(best_first);
    let mut out: Vec<K> = Vec::with_capacity(n);
    let push = |out: &mut Vec<K>, k: &K| {
        if out.len() < n && !out.contains(k) {
            out.push(k.clone());
        }
    };
    for (_, _, k) in &ranked[..head] {
        push(&mut out, k);
    }
    if out.len() < n {
        ranked[head..].sort_by(best_first);
        for (_, _, k) in &ranked[head..] {
            push(&mut out, k);
        }
    }
    out
}

fn select_choices<K: Clone + Ord>(
    scorer: &dyn Scorer,
    pool: &Pool,
    candidates: &[(K, PeerStats)],
    d: usize,
    n: usize,
    rng: &mut impl Rng,
) -> Vec<K> {
    let mut left: Vec<(f64, &K)> = candidates
        .iter()
        .map(|(k, s)| (scorer.score_in(s, pool), k))
        .collect();
    let mut out: Vec<K> = Vec::with_capacity(n.min(left.len()));
    while out.len() < n && !left.is_empty() {
        // `d` draws with replacement; the first drawn wins a tie.
        let mut best = rng.gen_range(0..left.len());
        for _ in 1..d {
            let i = rng.gen_range(0..left.len());
            if left[i].0 > left[best].0 {
                best = i;
            }
        }
        let (_, k) = left.swap_remove(best);
        if !out.contains(k) {
            out.push(k.clone());
        }
    }
    out
}

/// A decayed count: `value` as of `at`, halving every `half_life` seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Decayed {
    value: f64,
    at: u64,
}

impl Decayed {
    fn get(&self, now: u64, half_life: f64) -> f64 {
        let dt = now.saturating_sub(self.at) as f64;
        self.value * (-dt * std::f64::consts::LN_2 / half_life).exp()
    }

    fn add(&mut self, x: f64, now: u64, half_life: f64) {
        self.value = self.get(now, half_life) + x;
        self.at = self.at.max(now);
    }
}

/// What this peer has seen of one other peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    online: Decayed,
    samples: Decayed,
    good: Decayed,
    bad: Decayed,
    picks: Decayed,
    /// Bytes it accepted from this peer. Not saved: only the churn study's
    /// load-aware variants read it, and adding it to the postcard encoding
    /// would make every table saved before it unreadable.
    #[serde(skip)]
    placed: Decayed,
    last_chosen: Option<u64>,
    /// Free bytes it last advertised.
    advertised_free: Option<u64>,
    /// Bytes it refused for lack of room: its real free space is below.
    refused_at: Option<u64>,
    /// Last time anything was recorded.
    last_seen: u64,
}

/// The observation table, keyed by peer. Pure data; the peer persists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observations<K: Ord> {
    peers: BTreeMap<K, PeerRecord>,
}

impl<K: Ord> Default for Observations<K> {
    fn default() -> Self {
        Self {
            peers: BTreeMap::new(),
        }
    }
}

/// What one exchange with a peer showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A store, fetch or audit that went well.
    Good,
    /// It failed or did not answer.
    Failed,
    /// It answered with bytes that do not match their hash.
    Corrupt,
}

impl<K: Ord + Clone> Observations<K> {
    fn entry(&mut self, k: &K, now: u64) -> &mut PeerRecord {
        let r = self.peers.entry(k.clone()).or_default();
        r.last_seen = r.last_seen.max(now);
        r
    }

    /// Peers with a record.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer has a record.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// One availability sample: the peer was (not) online at `now`.
    pub fn sample(&mut self, k: &K, online: bool, now: u64) {
        let h = EVIDENCE_HALF_LIFE_SECS;
        let r = self.entry(k, now);
        r.samples.add(1.0, now, h);
        r.online.add(if online { 1.0 } else { 0.0 }, now, h);
    }

    /// The result of a store, fetch or audit.
    pub fn outcome(&mut self, k: &K, outcome: Outcome, now: u64) {
        let h = EVIDENCE_HALF_LIFE_SECS;
        let r = self.entry(k, now);
        match outcome {
            Outcome::Good => r.good.add(1.0, now, h),
            Outcome::Failed => r.bad.add(1.0, now, h),
            Outcome::Corrupt => r.bad.add(CORRUPT_WEIGHT, now, h),
        }
    }

    /// This peer chose `k` to hold something.
    pub fn picked(&mut self, k: &K, now: u64) {
        let r = self.entry(k, now);
        r.picks
            .add(1.0, now, PICK_RATE_WINDOW_SECS * std::f64::consts::LN_2);
        r.last_chosen = Some(now);
    }

    /// The free space `k` advertised.
    pub fn advertised(&mut self, k: &K, free_bytes: u64, now: u64) {
        let r = self.entry(k, now);
        r.advertised_free = Some(free_bytes);
        if r.refused_at.is_some_and(|b| free_bytes < b) {
            // It now admits to less than it refused: believe it again.
            r.refused_at = None;
        }
    }

    /// `k` refused `bytes` for lack of room, whatever it advertised.
    pub fn refused_room(&mut self, k: &K, bytes: u64, now: u64) {
        let r = self.entry(k, now);
        r.refused_at = Some(r.refused_at.map_or(bytes, |b| b.min(bytes)));
    }

    /// `k` accepted `bytes`: it had at least that much room.
    pub fn accepted(&mut self, k: &K, bytes: u64, now: u64) {
        let r = self.entry(k, now);
        r.placed.add(bytes as f64, now, EVIDENCE_HALF_LIFE_SECS);
        if r.refused_at.is_some_and(|b| b <= bytes) {
            r.refused_at = None;
        }
    }

    /// Drops records not touched for `max_age` seconds.
    pub fn prune(&mut self, now: u64, max_age: u64) {
        self.peers
            .retain(|_, r| now.saturating_sub(r.last_seen) <= max_age);
    }

    /// What a scorer sees of `k` at `now`. `preferred`, `recommended` and
    /// the RTT come from elsewhere and are filled in by the caller.
    pub fn stats(&self, k: &K, now: u64) -> PeerStats {
        let Some(r) = self.peers.get(k) else {
            return PeerStats::default();
        };
        let h = EVIDENCE_HALF_LIFE_SECS;
        // Laplace: one success and one failure of prior, so no history is 0.5.
        let ratio = |yes: f64, all: f64| (yes + 1.0) / (all + 2.0);
        let good = r.good.get(now, h);
        let free = match (r.advertised_free, r.refused_at) {
            (Some(f), Some(cap)) => f.min(cap.saturating_sub(1)),
            (Some(f), None) => f,
            (None, Some(cap)) => cap.saturating_sub(1),
            (None, None) => 0,
        };
        PeerStats {
            availability: ratio(r.online.get(now, h), r.samples.get(now, h)),
            experience: ratio(good, good + r.bad.get(now, h)),
            capacity: capacity_score(free),
            picks_per_hour: r
                .picks
                .get(now, PICK_RATE_WINDOW_SECS * std::f64::consts::LN_2),
            since_chosen: r.last_chosen.map(|t| now.saturating_sub(t) as f64),
            placed_bytes: r.placed.get(now, h),
            ..PeerStats::default()
        }
    }
}

/// Free bytes on the paper's 1–100 scale.
pub fn capacity_score(free_bytes: u64) -> f64 {
    (100.0 * free_bytes as f64 / CAPACITY_FULL_SCALE as f64).clamp(1.0, 100.0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn stats() -> impl Strategy<Value = PeerStats> {
        let wild = prop_oneof![
            any::<f64>(),
            -1e300..1e300f64,
            Just(f64::NAN),
            Just(f64::INFINITY),
            0.0..1.0f64
        ];
        (
            (
                wild.clone(),
                wild.clone(),
                wild.clone(),
                wild.clone(),
                proptest::option::of(wild.clone()),
                any::<bool>(),
                any::<bool>(),
                proptest::option::of(wild.clone()),
            ),
            wild,
        )
            .prop_map(|((a, e, c, f, t, p, r, rtt), placed)| PeerStats {
                availability: a,
                experience: e,
                capacity: c,
                picks_per_hour: f,
                since_chosen: t,
                preferred: p,
                recommended: r,
                rtt_ms: rtt,
                placed_bytes: placed,
            })
    }

    fn scorers() -> [PaperScorer; 2] {
        [FrequencyRule::Min, FrequencyRule::Max].map(|rule| PaperScorer {
            rule,
            ..PaperScorer::default()
        })
    }

    proptest! {
        #[test]
        fn scores_are_finite_and_non_negative_on_any_input(s in stats()) {
            for scorer in scorers() {
                let v = scorer.score(&s);
                prop_assert!(v.is_finite() && v >= 0.0, "{v} for {s:?}");
            }
        }

        #[test]
        fn the_score_is_monotone_in_a_e_and_c(
            s in stats(),
            which in 0..3usize,
            lo in 0.0..1.0f64,
            step in 0.0..1.0f64,
        ) {
            let (lo, hi) = match which {
                2 => (1.0 + lo * 99.0, 1.0 + (lo + step).min(1.0) * 99.0),
                _ => (lo, (lo + step).min(1.0)),
            };
            let set = |v: f64| {
                let mut t = s;
                match which {
                    0 => t.availability = v,
                    1 => t.experience = v,
                    _ => t.capacity = v,
                }
                t
            };
            for scorer in scorers() {
                prop_assert!(scorer.score(&set(lo)) <= scorer.score(&set(hi)));
            }
        }

        #[test]
        fn fair_scores_are_finite_and_non_negative_on_any_input(
            s in stats(),
            mean in prop_oneof![any::<f64>(), Just(f64::NAN), 0.0..1e9f64],
            exponent in prop_oneof![any::<f64>(), 0.0..4.0f64],
        ) {
            let scorer = FairScorer { load_exponent: exponent, ..two_choice(1.0) };
            let v = scorer.score_in(&s, &Pool { mean_placed_bytes: mean });
            prop_assert!(v.is_finite() && v >= 0.0, "{v} for {s:?}, mean {mean}");
        }

        #[test]
        fn frequency_is_floored(f in -1e9..MIN_PICKS_PER_HOUR) {
            for scorer in scorers() {
                let at = |f| scorer.score(&PeerStats { picks_per_hour: f, availability: 1.0, experience: 1.0, capacity: 100.0, ..PeerStats::default() });
                prop_assert_eq!(at(f), at(MIN_PICKS_PER_HOUR));
            }
        }
    }

    #[test]
    fn min_favours_the_rarely_picked_and_max_damps_the_busy() {
        let base = PeerStats {
            availability: 0.9,
            experience: 0.9,
            capacity: 50.0,
            ..PeerStats::default()
        };
        let at = |rule, f| {
            PaperScorer {
                rule,
                ..PaperScorer::default()
            }
            .score(&PeerStats {
                picks_per_hour: f,
                ..base
            })
        };
        assert!(at(FrequencyRule::Min, 0.1) > at(FrequencyRule::Min, 0.5));
        assert_eq!(at(FrequencyRule::Min, 2.0), at(FrequencyRule::Min, 20.0));
        assert_eq!(at(FrequencyRule::Max, 0.1), at(FrequencyRule::Max, 0.5));
        assert!(at(FrequencyRule::Max, 2.0) > at(FrequencyRule::Max, 20.0));
    }

    #[test]
    fn observations_decay_and_start_neutral() {
        let mut o: Observations<u32> = Observations::default();
        assert_eq!(o.stats(&1, 0).experience, 0.5);
        for _ in 0..10 {
            o.outcome(&1, Outcome::Good, 1000);
        }
        let fresh = o.stats(&1, 1000).experience;
        assert!(fresh > 0.9, "{fresh}");
        o.outcome(&1, Outcome::Corrupt, 1000);
        let hit = o.stats(&1, 1000).experience;
        assert!(hit < fresh - 0.2, "{hit}");
        // A year later the evidence has faded back towards 0.5.
        let later = o.stats(&1, 1000 + 365 * 86_400).experience;
        assert!((later - 0.5).abs() < 0.01, "{later}");
        // Picks read as a rate per hour and fade within hours.
        for _ in 0..6 {
            o.picked(&2, 5000);
        }
        let f = o.stats(&2, 5000).picks_per_hour;
        assert!((f - 6.0).abs() < 1e-9, "{f}");
        assert!(o.stats(&2, 5000 + 5 * 3600).picks_per_hour < 0.1);
        o.prune(5000 + 31 * 86_400, 30 * 86_400);
        assert!(o.is_empty());
    }

    #[test]
    fn a_peer_claiming_room_it_does_not_have_loses_its_capacity_score() {
        let mut o: Observations<u32> = Observations::default();
        o.advertised(&1, 4 << 30, 0);
        assert_eq!(o.stats(&1, 0).capacity, 100.0);
        o.refused_room(&1, 10 << 20, 1);
        let c = o.stats(&1, 1).capacity;
        assert!(c < 1.0 + 1e-9, "{c}");
        // Re-advertising the same lie does not restore it.
        o.advertised(&1, 4 << 30, 2);
        assert!(o.stats(&1, 2).capacity < 1.0 + 1e-9);
        // Accepting a large store does.
        o.accepted(&1, 20 << 20, 3);
        assert_eq!(o.stats(&1, 3).capacity, 100.0);
    }

    #[test]
    fn selection_prefers_high_scores_but_spreads_ties() {
        let mut rng = StdRng::seed_from_u64(7);
        let good = PeerStats {
            availability: 1.0,
            experience: 1.0,
            capacity: 100.0,
            ..PeerStats::default()
        };
        let bad = PeerStats {
            availability: 0.1,
            ..good
        };
        let mut cands: Vec<(u32, PeerStats)> = (0..4).map(|i| (i, good)).collect();
        cands.extend((4..10).map(|i| (i, bad)));
        let scorer = PaperScorer::default();
        let mut hits = [0u32; 10];
        for _ in 0..200 {
            let pick = select(&scorer, &cands, 3, &mut rng);
            assert_eq!(pick.len(), 3);
            assert!(pick.iter().all(|&i| i < 4), "{pick:?}");
            for i in pick {
                hits[i as usize] += 1;
            }
        }
        assert!(hits[..4].iter().all(|&h| h > 50), "{hits:?}");
        let random = select(&RandomScorer, &cands, 20, &mut rng);
        assert_eq!(random.len(), 10);
    }

    fn equal(n: u32) -> Vec<(u32, PeerStats)> {
        let s = PeerStats {
            availability: 0.9,
            experience: 0.9,
            capacity: 50.0,
            ..PeerStats::default()
        };
        (0..n).map(|i| (i, s)).collect()
    }

    fn two_choice(load_exponent: f64) -> FairScorer {
        FairScorer {
            paper: PaperScorer::default(),
            order: Order::Choices(2),
            load_exponent,
            capacity_exponent: 1.0,
        }
    }

    #[test]
    fn two_choices_give_the_best_candidate_about_twice_its_share() {
        // One clearly better candidate among 20: the jittered paper score
        // picks it every time, two choices only when it is drawn.
        let mut cands = equal(20);
        cands[7].1.availability = 1.0;
        cands[7].1.capacity = 100.0;
        let rounds = 4000;
        let mut rng = StdRng::seed_from_u64(11);
        let mut hits = [0u32; 20];
        for _ in 0..rounds {
            let pick = select(&two_choice(0.0), &cands, 1, &mut rng);
            hits[pick[0] as usize] += 1;
        }
        // 1 − (19/20)² = 9.75 % of the picks, against a fair share of 5 %.
        let best = f64::from(hits[7]) / f64::from(rounds);
        assert!((0.08..0.12).contains(&best), "{best} {hits:?}");
        assert!(hits.iter().all(|&h| h > 0), "{hits:?}");
        let paper = (0..200)
            .filter(|_| select(&PaperScorer::default(), &cands, 1, &mut rng) == [7])
            .count();
        assert_eq!(paper, 200);
    }

    #[test]
    fn two_choices_still_prefer_the_better_half() {
        // Half the candidates are online a tenth as often: they win only
        // draws against each other, a quarter of the picks.
        let mut cands = equal(40);
        for c in &mut cands[20..] {
            c.1.availability = 0.09;
        }
        let mut rng = StdRng::seed_from_u64(5);
        let mut good = 0;
        for _ in 0..2000 {
            good += select(&two_choice(0.0), &cands, 4, &mut rng)
                .iter()
                .filter(|&&i| i < 20)
                .count();
        }
        let share = good as f64 / 8000.0;
        assert!((0.70..0.80).contains(&share), "{share}");
    }

    #[test]
    fn choices_rank_every_candidate_once_and_are_deterministic() {
        let cands = equal(30);
        let scorer = two_choice(1.0);
        let a = select(&scorer, &cands, 30, &mut StdRng::seed_from_u64(3));
        let b = select(&scorer, &cands, 30, &mut StdRng::seed_from_u64(3));
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..30).collect::<Vec<_>>());
        let c = select(&scorer, &cands, 30, &mut StdRng::seed_from_u64(4));
        assert_ne!(a, c);
        assert_eq!(
            select(&scorer, &cands, 5, &mut StdRng::seed_from_u64(3)).len(),
            5
        );
    }

    #[test]
    fn the_load_term_damps_peers_holding_more_than_the_mean() {
        let pool = Pool {
            mean_placed_bytes: 1000.0,
        };
        let s = equal(1)[0].1;
        let loaded = PeerStats {
            placed_bytes: 3000.0,
            ..s
        };
        let scorer = two_choice(1.0);
        let base = scorer.score_in(&s, &pool);
        assert_eq!(base, PaperScorer::default().score(&s));
        assert!((scorer.score_in(&loaded, &pool) - base / 4.0).abs() < 1e-9);
        assert_eq!(two_choice(0.0).score_in(&loaded, &pool), base);
        // With nothing placed anywhere the term is neutral.
        assert_eq!(scorer.score_in(&loaded, &Pool::default()), base);
        // Jittered, the loaded half of the pool is picked far less often.
        let mut cands = equal(20);
        for c in &mut cands[10..] {
            c.1.placed_bytes = 10_000.0;
        }
        let jittered = FairScorer {
            order: Order::Jitter,
            ..scorer
        };
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..100 {
            let pick = select(&jittered, &cands, 5, &mut rng);
            assert!(pick.iter().all(|&i| i < 10), "{pick:?}");
        }
    }

    #[test]
    fn observations_count_accepted_bytes_with_a_week_half_life() {
        let mut o: Observations<u32> = Observations::default();
        o.accepted(&1, 1000, 0);
        o.accepted(&1, 1000, 0);
        assert_eq!(o.stats(&1, 0).placed_bytes, 2000.0);
        let week = EVIDENCE_HALF_LIFE_SECS as u64;
        assert!((o.stats(&1, week).placed_bytes - 1000.0).abs() < 1e-6);
        assert_eq!(o.stats(&2, 0).placed_bytes, 0.0);
    }

    #[test]
    fn the_head_of_a_short_selection_is_the_head_of_the_full_ranking() {
        let mut cands = equal(50);
        for (i, c) in cands.iter_mut().enumerate() {
            c.1.availability = 0.2 + i as f64 / 100.0;
        }
        for seed in 0..20 {
            let all = select(
                &PaperScorer::default(),
                &cands,
                50,
                &mut StdRng::seed_from_u64(seed),
            );
            let few = select(
                &PaperScorer::default(),
                &cands,
                4,
                &mut StdRng::seed_from_u64(seed),
            );
            assert_eq!(few, all[..4]);
        }
        // Duplicate keys are skipped, and the rest still fills `n`.
        let mut dup = equal(3);
        dup.push((0, dup[0].1));
        dup.push((0, dup[0].1));
        let picked = select(
            &PaperScorer::default(),
            &dup,
            3,
            &mut StdRng::seed_from_u64(1),
        );
        let mut sorted = picked.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2]);
    }
}
