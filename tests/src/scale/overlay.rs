//! The supernode overlay in one-second steps: adverts, the election, attach
//! and re-attach, and churn, over the node's own pure code.
//!
//! One step is one gossipsub and attach heartbeat (1 s by default). An
//! advert published in a step reaches every online peer within it: the
//! gossip model ([`super::gossip`]) measures the slowest first arrival and
//! the report shows it is well under a second. What differs between peers
//! is what they joined in time for: gossipsub does not replay history, so a
//! peer that came online at `j` holds only adverts issued at or after `j`,
//! and its book keeps at most `max_tracked_peers` of them, the newest
//! ([`vmail_node::supernode::advert::AdvertBook`] evicts the one issued
//! longest ago). Sorting the fresh adverts newest first, every peer's view
//! is a prefix of that list, so peers are grouped by prefix length and
//! [`election::elect`] runs once per distinct prefix: exactly what each
//! peer of the group computes, at the cost of a few runs per step.
//!
//! Left out: dial checks (every peer that claims to be public is taken to
//! pass), the protection of confirmed peers in a full book, relay
//! reservations and recommendations.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Weibull};
use vmail_node::config::SupernodeConfig;
use vmail_node::supernode::advert::{ADVERT_VERSION, Advert, AdvertBook, Reachability};
use vmail_node::supernode::attach::{Attachments, Candidate, choose_supernode, patience};
use vmail_node::supernode::election;

use crate::churn;

/// Unix time of step 0 (any fixed value: only differences matter).
pub const EPOCH: u64 = 1_800_000_000;
/// Share of peers that qualify to stand: public, with the cores, memory
/// and bandwidth the thresholds ask. They are the churn study's stable
/// class ([`churn::STABLE_SHARE`], 12 %): always-on, well-connected
/// machines, with its long sessions.
pub const QUALIFIED_SHARE: f64 = churn::STABLE_SHARE;
/// Round trip between two peers: this base plus [`RTT_SPAN_MS`] times
/// their distance on a unit torus (at most 0.71), a continent-sized spread.
pub const RTT_BASE_MS: f64 = 20.0;
/// See [`RTT_BASE_MS`].
pub const RTT_SPAN_MS: f64 = 200.0;

/// One simulated peer.
#[derive(Debug)]
struct Peer {
    key: Keypair,
    id: PeerId,
    qualified: bool,
    cpu: u32,
    memory_mib: u64,
    bandwidth_kbps: u64,
    pos: (f64, f64),
    online: bool,
    joined: u64,
    left: u64,
    /// Next churn transition, seconds (u64::MAX: none).
    next_change: u64,
    seq: u64,
    serving: bool,
    attachments: Attachments,
    uplink: Option<u32>,
    avoid: Vec<(u32, u64)>,
    /// The view (distinct elected set) this peer holds this step.
    view: usize,
    /// Signed size of its last signed advert, and its serving flag then.
    signed: Option<(usize, bool)>,
}

/// One step, milliseconds: the default attach heartbeat.
const HEARTBEAT_MS: f64 = 1000.0;

/// The round trip between peers at two positions, milliseconds.
pub fn rtt_ms(a: (f64, f64), b: (f64, f64)) -> f64 {
    let d = |x: f64, y: f64| {
        let d = (x - y).abs();
        d.min(1.0 - d)
    };
    let (dx, dy) = (d(a.0, b.0), d(a.1, b.1));
    RTT_BASE_MS + RTT_SPAN_MS * (dx * dx + dy * dy).sqrt()
}

/// The state of one step, for the time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Seconds since start.
    pub t: u64,
    /// Online peers.
    pub online: usize,
    /// Online peers that serve (elected in their own view).
    pub sns: usize,
    /// Online peers neither serving nor attached.
    pub unattached: usize,
    /// Distinct elected sets among online peers.
    pub views: usize,
    /// Fresh adverts in the newest view.
    pub adverts: usize,
}

/// The whole overlay.
#[derive(Debug)]
pub struct World {
    cfg: SupernodeConfig,
    ecfg: election::ElectionConfig,
    peers: Vec<Peer>,
    index: HashMap<PeerId, u32>,
    book: AdvertBook,
    churn_rng: StdRng,
    clock: Instant,
    /// The elected sets of this step's distinct views.
    views: Vec<Vec<u32>>,
    /// The elected sets by prefix length, kept while no advert changes.
    cache: HashMap<usize, usize>,
    book_version: u64,
    cached_version: u64,
    /// Fresh adverts a peer that has been online long enough holds.
    full: usize,
    /// Publishes per step, and signed advert sizes seen.
    pub publishes: Vec<u32>,
    /// Signed advert sizes, bytes.
    pub signed_sizes: Vec<usize>,
    /// Most fresh adverts at once.
    pub max_fresh: usize,
    /// Seconds since start: the next step's time.
    pub t: u64,
    /// Times the elected set of the fullest view changed.
    pub set_changes: u64,
    full_set: Vec<u32>,
}

fn weibull_secs(rng: &mut StdRng, scale_hours: f64) -> u64 {
    let w = Weibull::new(scale_hours, churn::WEIBULL_SHAPE).expect("valid Weibull");
    let h: f64 = w.sample(rng);
    ((h * 3600.0).round() as u64).max(1)
}

impl World {
    /// `n` peers starting at random times within the first advert interval.
    pub fn new(n: usize, seed: u64, cfg: SupernodeConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let spread = cfg.advert_interval_secs.max(1);
        let peers: Vec<Peer> = (0..n)
            .map(|_| {
                let key = Keypair::ed25519_from_bytes(rng.r#gen::<[u8; 32]>()).expect("32 bytes");
                let qualified = rng.gen_bool(QUALIFIED_SHARE);
                Peer {
                    id: key.public().to_peer_id(),
                    key,
                    qualified,
                    cpu: rng.gen_range(2..=16),
                    memory_mib: rng.gen_range(2048..=32768),
                    bandwidth_kbps: rng.gen_range(10_000..=1_000_000),
                    pos: (rng.r#gen(), rng.r#gen()),
                    online: true,
                    joined: rng.gen_range(0..spread),
                    left: 0,
                    next_change: u64::MAX,
                    seq: 0,
                    serving: false,
                    attachments: Attachments::default(),
                    uplink: None,
                    avoid: Vec::new(),
                    view: 0,
                    signed: None,
                }
            })
            .collect();
        let index = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id, i as u32))
            .collect();
        Self {
            ecfg: cfg.election(),
            cfg,
            peers,
            index,
            book: AdvertBook::with_cap(usize::MAX),
            churn_rng: StdRng::seed_from_u64(seed ^ 0x6368_7572_6e21),
            clock: Instant::now(),
            views: Vec::new(),
            cache: HashMap::new(),
            book_version: 0,
            cached_version: u64::MAX,
            full: 0,
            publishes: Vec::new(),
            signed_sizes: Vec::new(),
            max_fresh: 0,
            t: 0,
            set_changes: 0,
            full_set: Vec::new(),
        }
    }

    /// Peer count.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are no peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Peers that qualify to stand.
    pub fn qualified(&self) -> usize {
        self.peers.iter().filter(|p| p.qualified).count()
    }

    /// Who is online now.
    pub fn online(&self) -> Vec<bool> {
        self.peers.iter().map(|p| p.online).collect()
    }

    /// Peer ids, by index.
    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.peers.iter().map(|p| p.id).collect()
    }

    /// Positions, by index.
    pub fn positions(&self) -> Vec<(f64, f64)> {
        self.peers.iter().map(|p| p.pos).collect()
    }

    /// Online serving peers.
    pub fn serving(&self) -> Vec<u32> {
        (0..self.peers.len() as u32)
            .filter(|i| self.peers[*i as usize].online && self.peers[*i as usize].serving)
            .collect()
    }

    /// Attached peers of `sn`.
    pub fn load(&self, sn: u32) -> u32 {
        self.peers[sn as usize].attachments.load()
    }

    /// Peers attached to `sn` now.
    pub fn attached_to(&self, sn: u32) -> Vec<u32> {
        (0..self.peers.len() as u32)
            .filter(|i| self.peers[*i as usize].uplink == Some(sn))
            .collect()
    }

    /// Whether peer `i` is attached, to a serving peer.
    pub fn is_attached(&self, i: u32) -> bool {
        self.peers[i as usize].uplink.is_some()
    }

    /// From now on peers leave and return with the churn study's Weibull
    /// sessions and gaps (qualified peers with the stable class's).
    pub fn start_churn(&mut self) {
        let t = self.t;
        for p in &mut self.peers {
            let scale = if p.qualified {
                churn::STABLE_SESSION_SCALE_HOURS
            } else {
                churn::SESSION_SCALE_HOURS
            };
            p.next_change = t + weibull_secs(&mut self.churn_rng, scale);
        }
    }

    /// Takes `i` offline for good (a crash): its connections close.
    pub fn kill(&mut self, i: u32) {
        self.leave(i);
        self.peers[i as usize].next_change = u64::MAX;
    }

    fn leave(&mut self, i: u32) {
        let t = self.t;
        let sn = {
            let p = &mut self.peers[i as usize];
            p.online = false;
            p.left = t;
            p.serving = false;
            p.attachments.clear();
            p.avoid.clear();
            p.uplink.take()
        };
        if let Some(s) = sn {
            let id = self.peers[i as usize].id;
            self.peers[s as usize].attachments.detach(&id);
        }
    }

    fn churn(&mut self) {
        let t = self.t;
        for i in 0..self.peers.len() {
            if self.peers[i].next_change > t {
                continue;
            }
            let (online, qualified) = (self.peers[i].online, self.peers[i].qualified);
            let (session, gap) = if qualified {
                (
                    churn::STABLE_SESSION_SCALE_HOURS,
                    churn::STABLE_GAP_SCALE_HOURS,
                )
            } else {
                (churn::SESSION_SCALE_HOURS, churn::GAP_SCALE_HOURS)
            };
            if online {
                self.leave(i as u32);
                self.peers[i].next_change = t + weibull_secs(&mut self.churn_rng, gap);
            } else {
                let p = &mut self.peers[i];
                p.online = true;
                p.joined = t;
                p.next_change = t + weibull_secs(&mut self.churn_rng, session);
            }
        }
    }

    /// Qualified online peers publish on their advert ticks.
    fn advertise(&mut self) {
        let (t, interval) = (self.t, self.cfg.advert_interval_secs.max(1));
        let mut published = 0;
        for i in 0..self.peers.len() {
            let p = &self.peers[i];
            if !p.online
                || !p.qualified
                || t <= p.joined
                || !(t - p.joined).is_multiple_of(interval)
            {
                continue;
            }
            let advert = Advert {
                version: ADVERT_VERSION,
                peer_id: p.id,
                seq: p.seq + 1,
                issued_at: EPOCH + t,
                reachability: Reachability::AutoNat,
                cpu_cores: p.cpu,
                memory_mib: p.memory_mib,
                bandwidth_kbps: p.bandwidth_kbps,
                uptime_secs: t - p.joined,
                load: p.attachments.load(),
                free_storage: 10 << 30,
                serving: p.serving,
            };
            // Only peers that qualify publish at all.
            if !election::qualifies(&advert, &self.ecfg.thresholds) {
                continue;
            }
            // Signed (and verified) whenever its serving flag changes: the
            // size moves by a byte or two with load and uptime otherwise.
            if p.signed.is_none_or(|(_, s)| s != p.serving) {
                let bytes = advert.sign(&p.key);
                let back = Advert::verify(&bytes, EPOCH + t).expect("a signed advert verifies");
                assert_eq!(back, advert);
                self.signed_sizes.push(bytes.len());
                self.peers[i].signed = Some((bytes.len(), advert.serving));
            }
            self.peers[i].seq += 1;
            self.book.insert(advert).expect("sequence numbers grow");
            published += 1;
        }
        if published > 0 {
            self.book_version += 1;
        }
        self.publishes.push(published);
    }

    /// Groups online peers by the prefix of the fresh adverts they hold
    /// and elects once per group.
    fn elect(&mut self) {
        let now = EPOCH + self.t;
        self.book.expire(now);
        let mut fresh = election::current(self.book.adverts(), now, self.ecfg.max_advert_age_secs);
        fresh.sort_by(|a, b| {
            b.issued_at
                .cmp(&a.issued_at)
                .then(b.peer_id.cmp(&a.peer_id))
        });
        self.max_fresh = self.max_fresh.max(fresh.len());
        let version = self.book_version ^ ((fresh.len() as u64) << 40);
        if version != self.cached_version {
            self.cache.clear();
            self.views.clear();
            self.cached_version = version;
        }
        let cap = self.cfg.max_tracked_peers;
        self.full = fresh.len().min(cap);
        for i in 0..self.peers.len() {
            if !self.peers[i].online {
                continue;
            }
            let since = EPOCH + self.peers[i].joined;
            let held = fresh.partition_point(|a| a.issued_at >= since).min(cap);
            let view = match self.cache.get(&held) {
                Some(v) => *v,
                None => {
                    let ids = election::elect(fresh[..held].iter().copied(), now, &self.ecfg);
                    let mut set: Vec<u32> = ids.iter().map(|p| self.index[p]).collect();
                    set.sort_unstable();
                    self.views.push(set);
                    self.cache.insert(held, self.views.len() - 1);
                    self.views.len() - 1
                }
            };
            self.peers[i].view = view;
        }
        if let Some(v) = self.cache.get(&self.full)
            && self.views[*v] != self.full_set
        {
            self.full_set = self.views[*v].clone();
            self.set_changes += 1;
        }
        // Roles follow each peer's own view; one that stops serving drops
        // its attached peers (they hear NotServing at their next heartbeat).
        for i in 0..self.peers.len() {
            if !self.peers[i].online {
                continue;
            }
            let me = i as u32;
            let serving = self.views[self.peers[i].view].binary_search(&me).is_ok();
            if serving != self.peers[i].serving {
                self.peers[i].serving = serving;
                self.peers[i].attachments.clear();
                if serving && let Some(s) = self.peers[i].uplink.take() {
                    let id = self.peers[i].id;
                    self.peers[s as usize].attachments.detach(&id);
                }
            }
        }
    }

    /// Every online peer that does not serve keeps or finds a supernode.
    /// Returns, per peer that attached this step, the milliseconds its
    /// attach requests took (refusals and failures included).
    fn attach(&mut self) -> HashMap<u32, f64> {
        let t = self.t;
        let now = self.clock + Duration::from_secs(t);
        let silent = patience(self.cfg.heartbeat()).as_secs_f64() * 1000.0;
        let avoid_for = vmail_node::supernode::attach::AVOID_FOR.as_secs();
        let mut took = HashMap::new();
        // Candidates per view: the members and the load their adverts say.
        let loads: Vec<Vec<(u32, u32)>> = self
            .views
            .iter()
            .map(|set| {
                set.iter()
                    .map(|s| {
                        let id = self.peers[*s as usize].id;
                        (*s, self.book.get(&id).map_or(0, |a| a.load))
                    })
                    .collect()
            })
            .collect();
        for i in 0..self.peers.len() {
            let p = &self.peers[i];
            if !p.online || p.serving {
                continue;
            }
            let me = i as u32;
            if let Some(s) = p.uplink {
                let sp = &self.peers[s as usize];
                let gone = !sp.online || !sp.serving || !sp.attachments.contains(&p.id);
                let elected = self.views[p.view].binary_search(&s).is_ok();
                if !gone && elected {
                    continue;
                }
                if sp.online {
                    let id = p.id;
                    self.peers[s as usize].attachments.detach(&id);
                }
                self.peers[i].uplink = None;
            }
            // A peer whose every candidate is full, gone or not serving is
            // refused whatever it tries; skipping its tries changes nothing
            // but its avoid list, and saves most of the work when capacity
            // runs out at scale.
            let max = self.cfg.max_attached;
            let room = |s: &u32| {
                let sp = &self.peers[*s as usize];
                *s != me && sp.online && sp.serving && (sp.attachments.load() as usize) < max
            };
            if !self.views[self.peers[i].view].iter().any(room) {
                continue;
            }
            let p = &mut self.peers[i];
            p.avoid.retain(|(_, until)| *until > t);
            let cands = &loads[p.view];
            let mut spent = 0.0;
            let mut last_resort = true;
            // Tries follow each other at once, as long as one heartbeat
            // lasts; the rest wait for the next.
            while spent < HEARTBEAT_MS {
                let p = &self.peers[i];
                let candidates: Vec<Candidate> = cands
                    .iter()
                    .filter(|(s, _)| *s != me)
                    .map(|(s, load)| Candidate {
                        peer: self.peers[*s as usize].id,
                        rtt: Some(Duration::from_secs_f64(
                            rtt_ms(p.pos, self.peers[*s as usize].pos) / 1000.0,
                        )),
                        load: *load,
                    })
                    .collect();
                let avoid: Vec<PeerId> = p
                    .avoid
                    .iter()
                    .map(|(s, _)| self.peers[*s as usize].id)
                    .collect();
                let Some(best) = choose_supernode(&candidates, &avoid) else {
                    break;
                };
                if !last_resort && avoid.contains(&best) {
                    break;
                }
                last_resort = false;
                let s = self.index[&best];
                let (pos, id) = (p.pos, p.id);
                let sp = &mut self.peers[s as usize];
                if !sp.online {
                    spent += silent;
                } else {
                    spent += rtt_ms(pos, sp.pos);
                    if sp.serving
                        && sp
                            .attachments
                            .attach(id, now, self.cfg.max_attached)
                            .is_ok()
                    {
                        self.peers[i].uplink = Some(s);
                        took.insert(me, spent);
                        break;
                    }
                }
                self.peers[i].avoid.push((s, t + avoid_for));
            }
        }
        took
    }

    /// Runs one step; returns who attached in it and what it took them.
    pub fn step(&mut self) -> HashMap<u32, f64> {
        self.churn();
        self.advertise();
        self.elect();
        let took = self.attach();
        self.t += 1;
        took
    }

    /// The state after the last step, and whether it is converged: every
    /// online peer holds the same fresh adverts (all of them, or all its
    /// book holds), elects the same set, and every online non-member is
    /// attached to a member.
    pub fn sample(&self) -> (Sample, bool) {
        let mut views: Vec<usize> = Vec::new();
        let (mut online, mut sns, mut unattached) = (0, 0, 0);
        for p in self.peers.iter().filter(|p| p.online) {
            online += 1;
            if !views.contains(&p.view) {
                views.push(p.view);
            }
            if p.serving {
                sns += 1;
            } else if p.uplink.is_none() {
                unattached += 1;
            }
        }
        let full = self.full;
        let all_full = self
            .peers
            .iter()
            .filter(|p| p.online)
            .all(|p| self.cache.get(&full) == Some(&p.view));
        let s = Sample {
            t: self.t.saturating_sub(1),
            online,
            sns,
            unattached,
            views: views.len(),
            adverts: full,
        };
        (
            s,
            all_full && views.len() == 1 && unattached == 0 && sns > 0,
        )
    }
}
