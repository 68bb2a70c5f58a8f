//! Churn simulation for the placement study (paper §3.2 and §5,
//! docs/PLACEMENT.md): which storage-peer heuristic and which redundancy
//! keep voicemails retrievable while peers come and go.
//!
//! Pure and deterministic: a seeded `StdRng`, no IO, no clock. Time moves in
//! steps of [`STEP_SECS`]. The simulator reuses the node's real decision
//! code: [`vmail_node::core::score::select`] with [`PaperScorer`] (either
//! [`FrequencyRule`]), [`FairScorer`] (the variants of [`Strategy`] that
//! spread load) or [`RandomScorer`] over an [`Observations`] table it
//! feeds as a peer would (hourly availability samples, advertised free
//! space, picks, store outcomes, refusals), and
//! [`vmail_node::core::erasure::Redundancy`] for shard counts, sizes and the
//! recoverability rule.
//!
//! The model, every constant of which is documented where it is defined:
//! - sessions and offline gaps are Weibull with shape [`WEIBULL_SHAPE`]
//!   (heavy-tailed, Stutzbach & Rejaie, IMC 2006);
//! - a stable group ([`STABLE_SHARE`]) is online almost always and never
//!   leaves; every other peer leaves for good after a heavy-tailed lifetime,
//!   taking its shards with it, and a newcomer takes its place so the
//!   population stays constant;
//! - quotas are Pareto ([`QUOTA_MIN_BYTES`], [`QUOTA_PARETO_SHAPE`]); a
//!   full peer refuses a shard and the sender tries the next candidate;
//! - voicemails of [`MESSAGE_BYTES`] are left during the first day, after
//!   a warm-up of [`WARMUP_DAYS`] that gives the observation table history.
//!
//! One observation table is shared by all senders: the view a supernode
//! that aggregates its peers' reports would have, which is the best case for
//! the heuristic. Churn, workload and decisions use separate random
//! streams, so every strategy and [`Repair`] setting faces the same
//! sessions, departures and voicemails: comparisons are paired.
//!
//! [`place_static`], [`survival`] and [`predict_static`] are the no-churn
//! counterpart, for checking the model against the real in-process network.
//!
//! Over 600 lines; the split of the static model from the churn model is
//! owed, not done.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Pareto, Weibull};
use vmail_node::core::erasure::Redundancy;
use vmail_node::core::score::{
    FairScorer, FrequencyRule, Observations, Order, Outcome, PaperScorer, PeerStats, RandomScorer,
    Scorer, select,
};

/// Length of one simulation step: an hour, the sampling period of the
/// availability evidence and of repair.
pub const STEP_SECS: u64 = 3_600;
/// Steps per day.
const STEPS_PER_DAY: u64 = 86_400 / STEP_SECS;
/// Shape of the Weibull session and gap lengths. Stutzbach & Rejaie (IMC
/// 2006) fit Weibull shapes of 0.34–0.59 to Gnutella, Kad and BitTorrent
/// sessions; 0.5 is the middle, and makes long sessions much more common
/// than an exponential would.
pub const WEIBULL_SHAPE: f64 = 0.5;
/// Weibull scale of an ordinary peer's session, hours. With shape 0.5 the
/// median is 0.48× the scale (about 2 h) and the mean 2× (8 h): a desktop
/// client that is opened and closed during the day.
pub const SESSION_SCALE_HOURS: f64 = 4.0;
/// Weibull scale of an ordinary peer's offline gap, hours: median about
/// 3 h, mean 12 h, so an ordinary peer is online about 40 % of the time,
/// in line with the 30–50 % availability measured for desktop P2P clients.
pub const GAP_SCALE_HOURS: f64 = 6.0;
/// Share of peers in the stable group: Stutzbach & Rejaie find that a
/// small core of long-lived peers (roughly a tenth) holds most of the
/// uptime; 12 % sits in that range.
pub const STABLE_SHARE: f64 = 0.12;
/// Weibull scale of a stable peer's session, hours (mean 400 h).
pub const STABLE_SESSION_SCALE_HOURS: f64 = 200.0;
/// Weibull scale of a stable peer's gap, hours (mean 2 h: a reboot), so a
/// stable peer is online about 99 % of the time.
pub const STABLE_GAP_SCALE_HOURS: f64 = 1.0;
/// Weibull scale of an ordinary peer's lifetime before it leaves for good,
/// days: median about 7 days, mean 30, so about half the ordinary
/// population is replaced within the month, most of it early, while a long
/// tail stays (the same heavy tail as sessions).
pub const LIFETIME_SCALE_DAYS: f64 = 15.0;
/// Smallest quota, bytes. Quotas are scaled down from the 1 GiB default so
/// that, as in a populous network, the space on well-ranked peers is a
/// finite resource within the simulated month.
pub const QUOTA_MIN_BYTES: u64 = 16 << 20;
/// Pareto shape of quotas: 1.5 gives a mean of 3× the minimum and a few
/// peers with far more room than the rest, as donated disk space is.
pub const QUOTA_PARETO_SHAPE: f64 = 1.5;
/// Quotas are capped at this, so one lucky draw does not hold everything.
pub const QUOTA_MAX_BYTES: u64 = 4 << 30;
/// Ciphertext of one voicemail: about a minute of compressed audio.
pub const MESSAGE_BYTES: u64 = 1 << 20;
/// Days of churn, with availability sampling, before the first voicemail:
/// the observation table's half-life is a week, so a week of history.
pub const WARMUP_DAYS: u64 = 7;
/// Most shards one voicemail may regenerate per repair round (hour): the
/// rate limit a real repairer needs so a flapping peer does not trigger a
/// storm of rewrites.
pub const REPAIR_MAX_PER_HOUR: usize = 2;
/// How long a holder may be offline before [`Repair::Lazy`] counts its
/// shard as lost: a day, longer than all but the tail of ordinary gaps
/// (median 3 h), so most absences end before a copy is rewritten. Timeouts
/// of this kind are what Carbonite (Chun et al., NSDI 2006) and Total
/// Recall (Bhagwan et al., NSDI 2004) use to avoid repairing transient
/// failures.
pub const LAZY_TIMEOUT_HOURS: u64 = 24;
/// Ages at which retrievability is measured, days.
pub const AGES_DAYS: [u64; 3] = [1, 7, 30];
/// Down-sets drawn by [`survival`].
pub const STATIC_TRIALS: usize = 400;

/// How a sender picks the peers that hold a voicemail's shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The paper's score, `a × e × c / min{f, 1}`.
    PaperMin,
    /// The score with `max{f, 1}`: busy peers damped.
    PaperMax,
    /// Uniformly random online peers.
    Random,
    /// The online peers XOR-closest to a random 64-bit key, as a plain DHT
    /// would store.
    Kademlia,
    /// [`FairScorer`]: paper max{f,1} ranked by the power of two choices.
    PaperTwoChoice,
    /// [`FairScorer`]: paper max{f,1} divided by `(1 + placed / mean)^`
    /// [`LOAD_EXPONENT`], jittered as the paper's.
    PaperMaxLoad,
    /// [`FairScorer`]: both.
    PaperTwoChoiceLoad,
    /// [`FairScorer`]: two choices, free space weighed as `c^`
    /// [`DAMPED_CAPACITY_EXPONENT`], so availability decides more.
    DampedTwoChoice,
    /// As [`Strategy::DampedTwoChoice`] with the load term.
    DampedTwoChoiceLoad,
    /// [`FairScorer::THREE_CHOICE`], `placement.scorer = "three-choice"`:
    /// as [`Strategy::DampedTwoChoice`] with three choices.
    ThreeChoice,
}

/// The load exponent of the load-aware strategies.
pub const LOAD_EXPONENT: f64 = 1.0;
/// The capacity exponent of the damped strategies, as in
/// [`FairScorer::THREE_CHOICE`].
pub const DAMPED_CAPACITY_EXPONENT: f64 = FairScorer::THREE_CHOICE.capacity_exponent;

impl Strategy {
    /// Every strategy, in table order.
    pub const ALL: [Strategy; 10] = [
        Strategy::PaperMin,
        Strategy::PaperMax,
        Strategy::Random,
        Strategy::Kademlia,
        Strategy::PaperTwoChoice,
        Strategy::PaperMaxLoad,
        Strategy::PaperTwoChoiceLoad,
        Strategy::DampedTwoChoice,
        Strategy::DampedTwoChoiceLoad,
        Strategy::ThreeChoice,
    ];

    /// A short name for tables and plots.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::PaperMin => "paper min{f,1}",
            Strategy::PaperMax => "paper max{f,1}",
            Strategy::Random => "random",
            Strategy::Kademlia => "kademlia-closest",
            Strategy::PaperTwoChoice => "paper max, two choices",
            Strategy::PaperMaxLoad => "paper max ÷ load",
            Strategy::PaperTwoChoiceLoad => "paper max ÷ load, two choices",
            Strategy::DampedTwoChoice => "c^0.25, two choices",
            Strategy::DampedTwoChoiceLoad => "c^0.25 ÷ load, two choices",
            Strategy::ThreeChoice => "three-choice (c^0.25)",
        }
    }

    /// The command-line key: `paper-min`, `paper-max`, `random`,
    /// `kademlia`, `paper-2`, `paper-max-load`, `paper-2-load`, `damped-2`,
    /// `damped-2-load`, `three-choice`.
    pub fn key(self) -> &'static str {
        match self {
            Strategy::PaperMin => "paper-min",
            Strategy::PaperMax => "paper-max",
            Strategy::Random => "random",
            Strategy::Kademlia => "kademlia",
            Strategy::PaperTwoChoice => "paper-2",
            Strategy::PaperMaxLoad => "paper-max-load",
            Strategy::PaperTwoChoiceLoad => "paper-2-load",
            Strategy::DampedTwoChoice => "damped-2",
            Strategy::DampedTwoChoiceLoad => "damped-2-load",
            Strategy::ThreeChoice => "three-choice",
        }
    }

    /// The strategy whose [`Strategy::key`] is `key`.
    pub fn from_key(key: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.key() == key)
    }

    fn scorer(self) -> Option<Box<dyn Scorer>> {
        let paper = |rule| PaperScorer {
            rule,
            ..PaperScorer::default()
        };
        let fair = |order, load_exponent, capacity_exponent| -> Option<Box<dyn Scorer>> {
            Some(Box::new(FairScorer {
                paper: paper(FrequencyRule::Max),
                order,
                load_exponent,
                capacity_exponent,
            }))
        };
        let (two, damped) = (Order::Choices(2), DAMPED_CAPACITY_EXPONENT);
        match self {
            Strategy::PaperMin => Some(Box::new(paper(FrequencyRule::Min))),
            Strategy::PaperMax => Some(Box::new(paper(FrequencyRule::Max))),
            Strategy::Random => Some(Box::new(RandomScorer)),
            Strategy::Kademlia => None,
            Strategy::PaperTwoChoice => fair(two, 0.0, 1.0),
            Strategy::PaperMaxLoad => fair(Order::Jitter, LOAD_EXPONENT, 1.0),
            Strategy::PaperTwoChoiceLoad => fair(two, LOAD_EXPONENT, 1.0),
            Strategy::DampedTwoChoice => fair(two, 0.0, damped),
            Strategy::DampedTwoChoiceLoad => fair(two, LOAD_EXPONENT, damped),
            Strategy::ThreeChoice => Some(Box::new(FairScorer::THREE_CHOICE)),
        }
    }
}

/// The simulated population and workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Peers, constant: a departed peer is replaced at once.
    pub peers: usize,
    /// Seeds everything.
    pub seed: u64,
    /// Voicemails, left at random times during the first day.
    pub messages: usize,
    /// Days simulated after the warm-up; at least 31 to see the 30-day age.
    pub days: u64,
}

impl Default for Scenario {
    /// The study's size: 800 peers, 1500 voicemails, 31 days.
    fn default() -> Self {
        Self {
            peers: 800,
            seed: 1,
            messages: 1500,
            days: 31,
        }
    }
}

/// Whether and when lost shards are regenerated. Each round is hourly and
/// rewrites at most [`REPAIR_MAX_PER_HOUR`] shards per voicemail, and only
/// while at least k shards are online to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repair {
    /// Never: shards are only lost.
    Off,
    /// Eager: a shard whose holder is not online now counts as missing.
    On,
    /// Lazy: a shard counts as missing once its holder has been offline
    /// for [`LAZY_TIMEOUT_HOURS`] (or has left, which looks the same).
    Lazy,
}

impl Repair {
    /// Every setting, in table order.
    pub const ALL: [Repair; 3] = [Repair::On, Repair::Lazy, Repair::Off];

    /// A short name for tables and plots.
    pub fn name(self) -> &'static str {
        match self {
            Repair::Off => "off",
            Repair::On => "eager",
            Repair::Lazy => "lazy 24 h",
        }
    }

    /// The command-line key: `eager`, `lazy` or `off`.
    pub fn key(self) -> &'static str {
        match self {
            Repair::Off => "off",
            Repair::On => "eager",
            Repair::Lazy => "lazy",
        }
    }

    /// The setting whose [`Repair::key`] is `key`.
    pub fn from_key(key: &str) -> Option<Repair> {
        Repair::ALL.into_iter().find(|r| r.key() == key)
    }
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Share of voicemails retrievable (≥ k distinct shards on online
    /// peers) at each of [`AGES_DAYS`].
    pub retrievable: [f64; 3],
    /// Bytes written at placement per ciphertext byte (n/k when every
    /// shard found a home).
    pub overhead_placed: f64,
    /// Bytes held, averaged hourly from the end of day 1 to the end, per
    /// ciphertext byte.
    pub overhead_mean: f64,
    /// Bytes held at the end per ciphertext byte.
    pub overhead_end: f64,
    /// Repair bytes (k shards read per repair, plus each shard written)
    /// per voicemail.
    pub repair_bytes_per_message: f64,
    /// Shards that found no peer with room, at placement or repair.
    pub unplaced_shards: u64,
    /// Gini coefficient of bytes held per peer at the end of day 1 (all
    /// voicemails placed), over every peer.
    pub gini: f64,
    /// Largest over mean bytes held per peer at the end of day 1.
    pub max_over_mean: f64,
    /// Peers that left for good during the measured days.
    pub departures: u64,
    /// Mean share of peers online, sampled hourly.
    pub online_share: f64,
}

/// Mixed into the seed for the churn stream.
const CHURN_STREAM: u64 = 0xc4u64 << 56 | 0x5eed;
/// Mixed into the seed for the workload stream (send times, senders, keys).
const WORKLOAD_STREAM: u64 = 0x5eed_f00d;

/// One peer slot; a departure gives the slot a new identity.
#[derive(Debug, Clone)]
struct PeerState {
    id: u32,
    key: u64,
    stable: bool,
    online: bool,
    /// Step at which `online` flips next.
    next_flip: u64,
    /// Step at which `online` last flipped (or the peer joined).
    since: u64,
    /// Step at which the peer leaves for good.
    departs: u64,
    quota: u64,
    used: u64,
}

/// One copy of a shard.
#[derive(Debug, Clone, Copy)]
struct Holder {
    index: u8,
    slot: u32,
    id: u32,
}

#[derive(Debug, Clone)]
struct Message {
    sent: u64,
    sender: usize,
    key: u64,
    holders: Vec<Holder>,
}

/// Hours (at least one step) drawn from a Weibull of this scale.
fn weibull_steps(rng: &mut StdRng, scale_hours: f64) -> u64 {
    let w = Weibull::new(scale_hours, WEIBULL_SHAPE).expect("valid Weibull");
    let hours: f64 = w.sample(rng);
    ((hours * 3_600.0 / STEP_SECS as f64).round() as u64).max(1)
}

struct World {
    /// Decisions: selection jitter and ties.
    rng: StdRng,
    /// Sessions, departures and newcomers: a stream of its own, so every
    /// strategy and repair setting faces the very same churn.
    churn_rng: StdRng,
    peers: Vec<PeerState>,
    next_id: u32,
    obs: Observations<u32>,
    departures: u64,
}

impl World {
    fn new(n: usize, seed: u64) -> Self {
        let mut w = World {
            rng: StdRng::seed_from_u64(seed),
            churn_rng: StdRng::seed_from_u64(seed ^ CHURN_STREAM),
            peers: Vec::with_capacity(n),
            next_id: 0,
            obs: Observations::default(),
            departures: 0,
        };
        for _ in 0..n {
            let p = w.newcomer(0, true);
            w.peers.push(p);
        }
        w
    }

    /// A new peer joining at `step`; at the start, peers are in a random
    /// phase (online with their long-run probability).
    fn newcomer(&mut self, step: u64, initial: bool) -> PeerState {
        let rng = &mut self.churn_rng;
        let stable = rng.gen_bool(STABLE_SHARE);
        let (on_scale, off_scale) = if stable {
            (STABLE_SESSION_SCALE_HOURS, STABLE_GAP_SCALE_HOURS)
        } else {
            (SESSION_SCALE_HOURS, GAP_SCALE_HOURS)
        };
        let online = !initial || rng.gen_bool(on_scale / (on_scale + off_scale));
        let next_flip = step + weibull_steps(rng, if online { on_scale } else { off_scale });
        let departs = if stable {
            u64::MAX
        } else {
            step + weibull_steps(rng, LIFETIME_SCALE_DAYS * 24.0)
        };
        let pareto = Pareto::new(QUOTA_MIN_BYTES as f64, QUOTA_PARETO_SHAPE).expect("valid Pareto");
        let quota = (pareto.sample(rng) as u64).min(QUOTA_MAX_BYTES);
        let id = self.next_id;
        self.next_id += 1;
        PeerState {
            id,
            key: rng.r#gen(),
            stable,
            online,
            next_flip,
            since: step,
            departs,
            quota,
            used: 0,
        }
    }

    /// Advances churn to `step`; returns bytes lost to departures.
    fn churn(&mut self, step: u64) -> u64 {
        let mut lost = 0;
        for i in 0..self.peers.len() {
            if self.peers[i].departs <= step {
                lost += self.peers[i].used;
                self.departures += 1;
                let p = self.newcomer(step, false);
                self.peers[i] = p;
                continue;
            }
            while self.peers[i].next_flip <= step {
                let p = &mut self.peers[i];
                p.online = !p.online;
                p.since = p.next_flip;
                let scale = match (p.stable, p.online) {
                    (true, true) => STABLE_SESSION_SCALE_HOURS,
                    (true, false) => STABLE_GAP_SCALE_HOURS,
                    (false, true) => SESSION_SCALE_HOURS,
                    (false, false) => GAP_SCALE_HOURS,
                };
                let d = weibull_steps(&mut self.churn_rng, scale);
                self.peers[i].next_flip += d;
            }
        }
        lost
    }

    /// The hourly probe: who is online, and what room they advertise.
    fn observe(&mut self, now: u64) {
        for p in &self.peers {
            self.obs.sample(&p.id, p.online, now);
            if p.online {
                self.obs
                    .advertised(&p.id, p.quota.saturating_sub(p.used), now);
            }
        }
    }

    fn holds(&self, h: &Holder) -> bool {
        self.peers[h.slot as usize].id == h.id
    }

    fn up(&self, h: &Holder) -> bool {
        let p = &self.peers[h.slot as usize];
        p.id == h.id && p.online
    }

    /// Whether lazy repair still counts on this holder at `step`.
    fn presumed(&self, h: &Holder, step: u64) -> bool {
        let p = &self.peers[h.slot as usize];
        p.id == h.id
            && (p.online || step.saturating_sub(p.since) < LAZY_TIMEOUT_HOURS * 3_600 / STEP_SECS)
    }
}

/// The candidates a scored strategy ranks this step: online peers, with
/// their current stats, and each slot's position in that list.
struct Candidates {
    list: Vec<(u32, PeerStats)>,
    slot_of: Vec<usize>,
    pos: Vec<Option<usize>>,
}

impl Candidates {
    fn build(world: &World, now: u64, online_only: bool) -> Self {
        let mut list = Vec::new();
        let mut slot_of = Vec::new();
        let mut pos = vec![None; world.peers.len()];
        for (i, p) in world.peers.iter().enumerate() {
            if online_only && !p.online {
                continue;
            }
            pos[i] = Some(list.len());
            list.push((i as u32, world.obs.stats(&p.id, now)));
            slot_of.push(i);
        }
        Candidates { list, slot_of, pos }
    }

    fn refresh(&mut self, world: &World, slot: usize, now: u64) {
        if let Some(i) = self.pos[slot] {
            self.list[i].1 = world.obs.stats(&world.peers[slot].id, now);
        }
    }
}

/// Places `want` shard indexes of a voicemail with `key`, skipping the
/// slots in `exclude`; returns the new holders. Full peers refuse and the
/// next candidate is tried.
#[allow(clippy::too_many_arguments)]
fn place(
    world: &mut World,
    cands: &mut Candidates,
    strategy: Strategy,
    scorer: Option<&dyn Scorer>,
    key: u64,
    want: &[u8],
    shard: u64,
    exclude: &mut Vec<u32>,
    now: u64,
) -> Vec<Holder> {
    let mut out = Vec::with_capacity(want.len());
    let mut next = want.iter().copied();
    let mut pending = next.next();
    while let Some(index) = pending {
        let needed = want.len() - out.len();
        let picks: Vec<u32> = match scorer {
            Some(s) => {
                let ranked = select(s, &cands.list, needed + exclude.len(), &mut world.rng);
                ranked
                    .into_iter()
                    .filter(|k| !exclude.contains(k))
                    .take(needed)
                    .collect()
            }
            None => {
                debug_assert_eq!(strategy, Strategy::Kademlia);
                let mut near: Vec<(u64, u32)> = cands
                    .slot_of
                    .iter()
                    .map(|&s| s as u32)
                    .filter(|s| !exclude.contains(s))
                    .map(|s| (world.peers[s as usize].key ^ key, s))
                    .collect();
                let take = needed.min(near.len());
                if take > 0 && take < near.len() {
                    near.select_nth_unstable(take - 1);
                }
                near.truncate(take);
                near.sort_unstable();
                near.into_iter().map(|(_, s)| s).collect()
            }
        };
        if picks.is_empty() {
            break;
        }
        let mut index_now = index;
        let mut done = false;
        for slot in picks {
            exclude.push(slot);
            let p = &mut world.peers[slot as usize];
            let id = p.id;
            world.obs.picked(&id, now);
            if p.quota.saturating_sub(p.used) >= shard {
                p.used += shard;
                world.obs.accepted(&id, shard, now);
                world.obs.outcome(&id, Outcome::Good, now);
                out.push(Holder {
                    index: index_now,
                    slot,
                    id,
                });
                match next.next() {
                    Some(i) => index_now = i,
                    None => {
                        done = true;
                    }
                }
            } else {
                world.obs.refused_room(&id, shard, now);
            }
            cands.refresh(world, slot as usize, now);
            if done {
                break;
            }
        }
        pending = if done { None } else { Some(index_now) };
    }
    out
}

/// Gini coefficient of non-negative values: 0 when all are equal, towards
/// 1 when one holds everything.
pub fn gini(values: &[f64]) -> f64 {
    let n = values.len();
    let total: f64 = values.iter().sum();
    if n == 0 || total <= 0.0 {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let weighted: f64 = v
        .iter()
        .enumerate()
        .map(|(i, x)| (2.0 * (i as f64 + 1.0) - n as f64 - 1.0) * x)
        .sum();
    weighted / (n as f64 * total)
}

fn distinct_up(world: &World, m: &Message) -> usize {
    let mut seen = 0u64;
    for h in &m.holders {
        if world.up(h) {
            seen |= 1 << h.index;
        }
    }
    seen.count_ones() as usize
}

/// Simulates one scenario with one strategy and redundancy.
pub fn run(
    scenario: &Scenario,
    strategy: Strategy,
    redundancy: Redundancy,
    repair: Repair,
) -> Report {
    let r = redundancy.validate().expect("a valid redundancy");
    let (k, n) = (r.k(), r.n());
    let shard = r.shard_len(MESSAGE_BYTES);
    let scorer = strategy.scorer();
    let mut world = World::new(scenario.peers, scenario.seed);
    let warm = WARMUP_DAYS * STEPS_PER_DAY;
    for step in 0..warm {
        world.churn(step);
        world.observe(step * STEP_SECS);
    }
    world.departures = 0;
    // Send times and keys come from their own stream so that every
    // strategy sees the same workload.
    let mut work = StdRng::seed_from_u64(scenario.seed ^ WORKLOAD_STREAM);
    let mut msgs: Vec<Message> = (0..scenario.messages)
        .map(|_| Message {
            sent: warm + work.gen_range(0..STEPS_PER_DAY),
            sender: work.gen_range(0..scenario.peers),
            key: work.r#gen(),
            holders: Vec::new(),
        })
        .collect();
    msgs.sort_by_key(|m| m.sent);
    let end = warm + scenario.days * STEPS_PER_DAY;
    let cipher = (scenario.messages as u64 * MESSAGE_BYTES) as f64;
    let mut stored: u64 = 0;
    let mut placed_bytes: u64 = 0;
    let mut repair_bytes: u64 = 0;
    let mut unplaced: u64 = 0;
    let mut hits = [0u64; 3];
    let mut held_sum = 0.0;
    let mut held_samples = 0u64;
    let mut online_sum = 0.0;
    let mut loads_day1: Vec<f64> = Vec::new();
    let mut next_msg = 0;
    let all_indexes: Vec<u8> = (0..n as u8).collect();
    for step in warm..end {
        let now = step * STEP_SECS;
        stored -= world.churn(step);
        world.observe(now);
        online_sum +=
            world.peers.iter().filter(|p| p.online).count() as f64 / world.peers.len() as f64;
        let mut cands = Candidates::build(&world, now, true);
        // New voicemails this hour, from online senders (an offline one
        // hands over to the next online peer).
        while next_msg < msgs.len() && msgs[next_msg].sent == step {
            let mut sender = msgs[next_msg].sender;
            while !world.peers[sender].online {
                sender = (sender + 1) % world.peers.len();
            }
            msgs[next_msg].sender = sender;
            let mut exclude = vec![sender as u32];
            let key = msgs[next_msg].key;
            let got = place(
                &mut world,
                &mut cands,
                strategy,
                scorer.as_deref(),
                key,
                &all_indexes,
                shard,
                &mut exclude,
                now,
            );
            unplaced += (n - got.len()) as u64;
            placed_bytes += got.len() as u64 * shard;
            stored += got.len() as u64 * shard;
            msgs[next_msg].holders = got;
            next_msg += 1;
        }
        if repair != Repair::Off {
            for m in msgs.iter_mut().take(next_msg) {
                if m.sent == step {
                    continue;
                }
                m.holders.retain(|h| world.holds(h));
                // Surplus copies of an index whose holders are all online
                // (one came back after its shard was regenerated) are
                // dropped, so holdings stay near n.
                let mut up_mask = 0u64;
                let mut i = 0;
                while i < m.holders.len() {
                    let h = m.holders[i];
                    if world.up(&h) {
                        if up_mask & (1 << h.index) != 0 {
                            world.peers[h.slot as usize].used -= shard;
                            stored -= shard;
                            m.holders.swap_remove(i);
                            continue;
                        }
                        up_mask |= 1 << h.index;
                    }
                    i += 1;
                }
                let up = up_mask.count_ones() as usize;
                let counted = if repair == Repair::Lazy {
                    m.holders
                        .iter()
                        .filter(|h| world.presumed(h, step))
                        .fold(0u64, |acc, h| acc | 1 << h.index)
                } else {
                    up_mask
                };
                if up < k || counted.count_ones() as usize >= n {
                    continue;
                }
                let missing: Vec<u8> = (0..n as u8)
                    .filter(|i| counted & (1 << i) == 0)
                    .take(REPAIR_MAX_PER_HOUR)
                    .collect();
                let mut exclude: Vec<u32> = m.holders.iter().map(|h| h.slot).collect();
                let got = place(
                    &mut world,
                    &mut cands,
                    strategy,
                    scorer.as_deref(),
                    m.key,
                    &missing,
                    shard,
                    &mut exclude,
                    now,
                );
                unplaced += (missing.len() - got.len()) as u64;
                if !got.is_empty() {
                    repair_bytes += (k as u64 + got.len() as u64) * shard;
                    stored += got.len() as u64 * shard;
                    m.holders.extend(got);
                }
            }
        }
        // Retrievability at each age, for voicemails of that age now.
        for (a, age) in AGES_DAYS.iter().enumerate() {
            let born = step.checked_sub(age * STEPS_PER_DAY);
            for m in msgs.iter().filter(|m| Some(m.sent) == born) {
                if distinct_up(&world, m) >= k {
                    hits[a] += 1;
                }
            }
        }
        if step + 1 == warm + STEPS_PER_DAY {
            loads_day1 = world.peers.iter().map(|p| p.used as f64).collect();
        }
        if step + 1 >= warm + STEPS_PER_DAY {
            held_sum += stored as f64;
            held_samples += 1;
        }
    }
    let mean_load = loads_day1.iter().sum::<f64>() / loads_day1.len().max(1) as f64;
    let max_load = loads_day1.iter().copied().fold(0.0, f64::max);
    let msgs_n = scenario.messages.max(1) as f64;
    Report {
        retrievable: hits.map(|h| h as f64 / msgs_n),
        overhead_placed: placed_bytes as f64 / cipher,
        overhead_mean: held_sum / held_samples.max(1) as f64 / cipher,
        overhead_end: stored as f64 / cipher,
        repair_bytes_per_message: repair_bytes as f64 / msgs_n,
        unplaced_shards: unplaced,
        gini: gini(&loads_day1),
        max_over_mean: if mean_load > 0.0 {
            max_load / mean_load
        } else {
            0.0
        },
        departures: world.departures,
        online_share: online_sum / (end - warm) as f64,
    }
}

/// How `messages` voicemails are placed with `strategy` on `peers` peers
/// (all online, equal room, no history): each voicemail's holders, as peer
/// indexes in shard order. Deterministic in `seed`.
///
/// Every peer is a candidate (the sender is not one of them), every peer
/// advertises the same free space, and voicemails are placed a second
/// apart so the scored strategies see each other's picks. With fewer
/// peers than shards, each peer holds one.
pub fn place_static(
    peers: usize,
    redundancy: Redundancy,
    strategy: Strategy,
    messages: usize,
    seed: u64,
) -> Vec<Vec<u32>> {
    let r = redundancy.validate().expect("a valid redundancy");
    let mut rng = StdRng::seed_from_u64(seed);
    let keys: Vec<u64> = (0..peers).map(|_| rng.r#gen()).collect();
    let mut obs: Observations<u32> = Observations::default();
    for i in 0..peers as u32 {
        obs.advertised(&i, CAPACITY_STATIC, 0);
    }
    let scorer = strategy.scorer();
    let n = r.n().min(peers);
    let mut placed: Vec<Vec<u32>> = Vec::with_capacity(messages);
    for m in 0..messages {
        // A second apart, as senders' leave requests would be.
        let now = m as u64;
        let holders: Vec<u32> = match &scorer {
            Some(s) => {
                let cands: Vec<(u32, PeerStats)> =
                    (0..peers as u32).map(|i| (i, obs.stats(&i, now))).collect();
                select(s.as_ref(), &cands, n, &mut rng)
            }
            None => {
                let key: u64 = rng.r#gen();
                let mut near: Vec<(u64, u32)> = (0..peers as u32)
                    .map(|i| (keys[i as usize] ^ key, i))
                    .collect();
                near.sort_unstable();
                near.into_iter().take(n).map(|(_, i)| i).collect()
            }
        };
        for h in &holders {
            obs.picked(h, now);
            obs.outcome(h, Outcome::Good, now);
        }
        placed.push(holders);
    }
    placed
}

/// How a static placement fares when `down` random peers of `peers` go
/// offline for good, over [`STATIC_TRIALS`] random down-sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Survival {
    /// Mean share of voicemails still retrievable.
    pub mean: f64,
    /// Share of down-sets after which every voicemail is retrievable: this
    /// one depends on how placements overlap, not only on their sizes.
    pub all: f64,
}

/// [`Survival`] of `placed` (from [`place_static`] or a real network),
/// deterministic in `seed`.
pub fn survival(
    placed: &[Vec<u32>],
    peers: usize,
    down: usize,
    redundancy: Redundancy,
    seed: u64,
) -> Survival {
    use rand::seq::SliceRandom;
    if placed.is_empty() || peers == 0 {
        return Survival {
            mean: 0.0,
            all: 0.0,
        };
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let down = down.min(peers);
    let mut alive = vec![true; peers];
    let mut order: Vec<usize> = (0..peers).collect();
    let (mut total, mut whole) = (0.0, 0usize);
    for _ in 0..STATIC_TRIALS {
        order.shuffle(&mut rng);
        alive.iter_mut().for_each(|a| *a = true);
        for &i in &order[..down] {
            alive[i] = false;
        }
        let ok = placed
            .iter()
            .filter(|hs| {
                redundancy.recoverable(
                    hs.iter()
                        .enumerate()
                        .filter(|(_, h)| alive[**h as usize])
                        .map(|(i, _)| i),
                )
            })
            .count();
        total += ok as f64 / placed.len() as f64;
        whole += usize::from(ok == placed.len());
    }
    Survival {
        mean: total / STATIC_TRIALS as f64,
        all: whole as f64 / STATIC_TRIALS as f64,
    }
}

/// The expected share of `messages` voicemails still retrievable when they
/// were placed as in [`place_static`] and then `down` random peers went
/// offline for good: [`Survival::mean`]. Deterministic in `seed`.
pub fn predict_static(
    peers: usize,
    down: usize,
    redundancy: Redundancy,
    strategy: Strategy,
    messages: usize,
    seed: u64,
) -> f64 {
    let placed = place_static(peers, redundancy, strategy, messages, seed);
    survival(&placed, peers, down, redundancy, seed).mean
}

/// The free space every peer advertises in [`place_static`]: the default
/// 1 GiB quota, far above what the test places.
const CAPACITY_STATIC: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> Scenario {
        Scenario {
            peers: 120,
            seed,
            messages: 60,
            days: 31,
        }
    }

    const RS48: Redundancy = Redundancy::ReedSolomon { k: 4, n: 8 };

    #[test]
    fn the_same_seed_gives_the_same_report() {
        for s in [Strategy::PaperMin, Strategy::Kademlia] {
            let a = run(&small(3), s, RS48, Repair::On);
            let b = run(&small(3), s, RS48, Repair::On);
            assert_eq!(a, b);
        }
        let c = run(&small(4), Strategy::PaperMin, RS48, Repair::On);
        assert_ne!(run(&small(3), Strategy::PaperMin, RS48, Repair::On), c);
    }

    #[test]
    fn repair_keeps_more_voicemails_at_a_month() {
        // Churn is the same with and without repair, but repair's picks
        // change what later placements see and surplus copies are
        // trimmed, so a run with repair is not a superset of one without
        // voicemail by voicemail; in aggregate it must win at 30 days,
        // where losses to departures dominate.
        for (s, repair) in [
            (Strategy::Random, Repair::On),
            (Strategy::PaperMin, Repair::Lazy),
        ] {
            let (mut on, mut off) = (0.0, 0.0);
            for seed in 1..=2 {
                on += run(&small(seed), s, RS48, repair).retrievable[2];
                off += run(&small(seed), s, RS48, Repair::Off).retrievable[2];
            }
            assert!(on > off, "{s:?}, {repair:?}: {on} vs none {off}");
        }
    }

    #[test]
    fn placement_overhead_is_n_over_k() {
        let three = run(
            &small(5),
            Strategy::Random,
            Redundancy::Replicas(3),
            Repair::Off,
        );
        assert!((three.overhead_placed - 3.0).abs() < 0.01, "{three:?}");
        let rs = run(&small(5), Strategy::PaperMax, RS48, Repair::Off);
        assert!((rs.overhead_placed - 2.0).abs() < 0.01, "{rs:?}");
        assert_eq!(rs.unplaced_shards, 0);
        // Without repair, departures only take bytes away.
        assert!(rs.overhead_end <= rs.overhead_placed);
    }

    #[test]
    fn gini_is_zero_for_equal_loads_and_high_for_one_holder() {
        assert_eq!(gini(&[5.0; 10]), 0.0);
        assert_eq!(gini(&[]), 0.0);
        let mut one = vec![0.0; 10];
        one[3] = 7.0;
        assert!((gini(&one) - 0.9).abs() < 1e-9);
    }

    #[test]
    fn static_prediction_bounds() {
        for s in Strategy::ALL {
            assert_eq!(predict_static(20, 0, RS48, s, 30, 1), 1.0, "{s:?}");
            assert_eq!(predict_static(20, 17, RS48, s, 30, 1), 0.0, "{s:?}");
            let some = predict_static(20, 6, RS48, s, 30, 1);
            assert!(some > 0.0 && some < 1.0, "{s:?}: {some}");
        }
        assert_eq!(
            predict_static(20, 6, RS48, Strategy::PaperMin, 30, 9),
            predict_static(20, 6, RS48, Strategy::PaperMin, 30, 9)
        );
        // Three copies survive any two losses.
        assert_eq!(
            predict_static(10, 2, Redundancy::Replicas(3), Strategy::Random, 20, 2),
            1.0
        );
    }

    #[test]
    fn three_choices_spread_load_that_paper_max_concentrates() {
        // Placement alone (no repair), at the end of day 1: the paper's
        // score piles shards on the peers with the most free space, three
        // choices cap any peer near three times its share.
        for seed in 1..=2 {
            let paper = run(&small(seed), Strategy::PaperMax, RS48, Repair::Off);
            let three = run(&small(seed), Strategy::ThreeChoice, RS48, Repair::Off);
            assert!(
                three.max_over_mean < 6.0 && three.max_over_mean < paper.max_over_mean / 2.0,
                "seed {seed}: three-choice {three:?} vs paper {paper:?}"
            );
            assert!(three.gini < paper.gini, "seed {seed}");
            assert_eq!(three.unplaced_shards, 0);
        }
    }

    #[test]
    fn learning_availability_beats_random_on_short_sessions() {
        // The heuristic's one claim: with a week of samples it puts shards
        // on peers that are online, so more voicemails are retrievable a
        // day later than with a random pick.
        let (mut paper, mut random) = (0.0, 0.0);
        for seed in 1..=2 {
            paper += run(
                &small(seed),
                Strategy::PaperMax,
                Redundancy::Replicas(3),
                Repair::Off,
            )
            .retrievable[0];
            random += run(
                &small(seed),
                Strategy::Random,
                Redundancy::Replicas(3),
                Repair::Off,
            )
            .retrievable[0];
        }
        assert!(paper > random, "paper {paper} vs random {random}");
    }
}
