//! The supernode side of the event loop: publishing and checking adverts,
//! dial-checking peers that claim to be public, rerunning the election,
//! attaching to a supernode (heartbeats, re-attach, relay reservation) and
//! serving as one (attachments, peer exchange, recommendations, the relay
//! switched on). The decisions are the pure functions of
//! [`crate::supernode::advert`], [`crate::supernode::election`] and [`crate::supernode::attach`]; this
//! module only feeds them and acts on their answers.
//!
//! Over 600 lines since issue 17 added its bounds here; the split by concern
//! (bounds apart from the protocol or store they guard) is owed, not done.

mod uplink;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::ConnectionId;
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, gossipsub, identity, relay};
use tokio::sync::oneshot;

use super::{EventLoop, NetworkError, SupernodeSetup, SupernodeView, TableSizes, is_relayed};
use crate::metrics::Side;
use crate::supernode::advert::{ADVERT_VERSION, Advert, AdvertBook, AdvertError, Reachability};
use crate::supernode::attach::{
    Attachments, Candidate, MAX_REPORTS, Observation, Refusal, SnRequest, choose_supernode,
    patience,
};
use crate::supernode::budget::{CheckQueue, MAX_CHECKS_IN_FLIGHT, RelayGate, evict_least};
use crate::supernode::election;

/// How long a passed dial check holds before the peer is checked again.
const DIAL_CHECK_VALID: Duration = Duration::from_secs(10 * 60);
/// How often the election reruns over adverts heard since the last run.
/// Rerunning on every advert costs O(n log n) per advert, so O(n² log n)
/// per advert period: too much for a hundred peers on one small machine.
pub(super) const ELECTION_PERIOD: Duration = Duration::from_millis(100);
/// How soon a failed dial check is tried again.
const DIAL_CHECK_RETRY: Duration = Duration::from_secs(30);
/// How long a claimant looked up in the DHT is remembered as such.
const LOOKUP_MEMORY: Duration = Duration::from_secs(60);

/// The outcome of dialing a peer that claims to be public.
struct DialCheck {
    dialable: bool,
    at: Instant,
}

/// This peer's link to its supernode.
#[derive(Default)]
struct Uplink {
    /// The SN attached to, or being attached to.
    sn: Option<PeerId>,
    /// Whether it answered the attach.
    attached: bool,
    /// The attach or heartbeat in flight.
    pending: Option<OutboundRequestId>,
    /// When the last attachment ended, until the next one starts.
    lost_at: Option<Instant>,
    /// SNs passed over until a time; `true` where the SN refused to relay.
    avoid: HashMap<PeerId, (Instant, bool)>,
    /// The relay reservation listener on the SN.
    relay: Option<ListenerId>,
    /// The address reserved there.
    relay_addr: Option<Multiaddr>,
    /// How long the last re-attach took.
    last_reattach: Option<Duration>,
}

/// The advert, election and attachment state of a server peer.
pub(super) struct Elections {
    pub(super) setup: SupernodeSetup,
    key: identity::Keypair,
    topic: gossipsub::IdentTopic,
    book: AdvertBook,
    seq: u64,
    started: Instant,
    supernodes: Vec<PeerId>,
    /// This peer's latest advert, published or (not qualifying) kept back.
    last_own: Option<Advert>,
    /// A kept-back advert, signed, for the next heartbeat to hand the SN.
    kept_back: Option<Vec<u8>>,
    /// The signed adverts attached peers handed over, at most
    /// `max_attached`: ranked for recommendations, never for election.
    attached_adverts: AdvertBook,
    rejected: u64,
    /// AutoNAT found this peer publicly reachable.
    pub(super) nat_public: bool,
    /// Relayed connections this peer's relay accepted.
    pub(super) circuits: u64,
    /// Adverts or dial checks changed since the last election.
    changed: bool,
    /// Advert bytes gossip delivered.
    advert_bytes: u64,
    /// Dial-check results, at most `max_tracked_peers`; forgotten twice
    /// [`DIAL_CHECK_VALID`] after they were made.
    checks: HashMap<PeerId, DialCheck>,
    /// Dial checks waiting to run, capped per gossip source and in all.
    queue: CheckQueue,
    /// Dial checks running, at most [`MAX_CHECKS_IN_FLIGHT`].
    probes: HashMap<ConnectionId, PeerId>,
    /// Claimants whose addresses were looked up in the DHT, and when; at
    /// most `max_tracked_peers`, for [`LOOKUP_MEMORY`].
    looked_up: HashMap<PeerId, Instant>,
    /// Who may reserve on this peer's relay; shared with the relay.
    relay_gate: Arc<Mutex<RelayGate>>,
    attachments: Attachments,
    uplink: Uplink,
    observations: HashMap<PeerId, (u32, u32)>,
    recommends: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<PeerId>, NetworkError>>>,
}

impl Elections {
    pub(super) fn new(
        setup: SupernodeSetup,
        key: identity::Keypair,
        topic: gossipsub::IdentTopic,
        relay_gate: Arc<Mutex<RelayGate>>,
    ) -> Self {
        let attached_adverts = AdvertBook::with_cap(setup.max_attached.max(1));
        Self {
            book: AdvertBook::with_cap(setup.max_tracked_peers),
            setup,
            key,
            topic,
            // Milliseconds: still growing after a restart.
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            started: Instant::now(),
            supernodes: Vec::new(),
            last_own: None,
            kept_back: None,
            attached_adverts,
            rejected: 0,
            nat_public: false,
            circuits: 0,
            changed: false,
            advert_bytes: 0,
            checks: HashMap::new(),
            queue: CheckQueue::default(),
            probes: HashMap::new(),
            looked_up: HashMap::new(),
            relay_gate,
            attachments: Attachments::default(),
            uplink: Uplink::default(),
            observations: HashMap::new(),
            recommends: HashMap::new(),
        }
    }

    fn local(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    /// Peers whose connections must never be pruned: this peer's
    /// supernode and the peers attached to it.
    pub(super) fn protected_peers(&self) -> Vec<PeerId> {
        let mut peers = self.attachments.peers();
        peers.extend(self.uplink.sn);
        peers
    }

    fn serving(&self) -> bool {
        self.supernodes.contains(&self.local())
    }

    /// This peer's reachability: declared, or as AutoNAT found.
    fn reachability(&self) -> Reachability {
        match self.setup.public {
            Some(true) => Reachability::Configured,
            Some(false) => Reachability::Private,
            None if self.nat_public => Reachability::AutoNat,
            None => Reachability::Private,
        }
    }

    /// The elected SN to attach to, by RTT and load, passing over the ones
    /// avoided; with `last_resort`, an avoided one when there is no other.
    fn best_supernode(
        &self,
        rtts: &HashMap<PeerId, Duration>,
        last_resort: bool,
    ) -> Option<PeerId> {
        let local = self.local();
        let candidates: Vec<Candidate> = self
            .supernodes
            .iter()
            .filter(|p| **p != local)
            .map(|p| Candidate {
                peer: *p,
                rtt: rtts.get(p).copied(),
                load: self.book.get(p).map_or(0, |a| a.load),
            })
            .collect();
        let avoid: Vec<PeerId> = self.uplink.avoid.keys().copied().collect();
        let best = choose_supernode(&candidates, &avoid);
        best.filter(|p| last_resort || !avoid.contains(p))
    }

    /// Whether `peer` claims to be public without a passed dial check.
    fn unconfirmed(&self, a: &Advert) -> bool {
        a.reachability.is_public()
            && a.peer_id != self.local()
            && !self.checks.get(&a.peer_id).is_some_and(|c| c.dialable)
    }

    /// The adverts as the election takes them: a claim to be public that
    /// this peer could not confirm by dialing counts as private.
    fn election_input(&self) -> Vec<Advert> {
        self.book
            .adverts()
            .map(|a| {
                let mut a = a.clone();
                if self.unconfirmed(&a) {
                    a.reachability = Reachability::Private;
                }
                a
            })
            .collect()
    }

    /// Reruns the election; true if this peer's own role changed.
    fn elect(&mut self, now: u64) -> bool {
        let was = self.serving();
        self.book.expire(now);
        let elected = election::elect(&self.election_input(), now, &self.setup.election);
        if elected != self.supernodes {
            tracing::info!(supernodes = ?elected, "supernode set changed");
            self.supernodes = elected;
        }
        was != self.serving()
    }

    /// This peer's advert as of `now`.
    fn own_advert(&mut self, now: u64) -> Advert {
        self.seq += 1;
        let s = &self.setup;
        Advert {
            version: ADVERT_VERSION,
            peer_id: self.local(),
            seq: self.seq,
            issued_at: now,
            reachability: self.reachability(),
            cpu_cores: s.cpu_cores,
            memory_mib: s.memory_mib,
            bandwidth_kbps: s.bandwidth_kbps,
            uptime_secs: self.started.elapsed().as_secs().min(now),
            load: self.attachments.load(),
            free_storage: (s.free_storage)().min(crate::supernode::advert::limits::FREE_STORAGE),
            serving: self.serving(),
        }
    }

    pub(super) fn view(&self) -> SupernodeView {
        let mut undialable: Vec<PeerId> = self
            .book
            .adverts()
            .filter(|a| self.unconfirmed(a) && self.checks.contains_key(&a.peer_id))
            .map(|a| a.peer_id)
            .collect();
        undialable.sort();
        let input = self.election_input();
        let now = vmail_proto::unix_now();
        let fresh = election::current(&input, now, self.setup.election.max_advert_age_secs);
        SupernodeView {
            own: self.last_own.clone(),
            supernodes: self.supernodes.clone(),
            adverts: fresh.into_iter().cloned().collect(),
            rejected: self.rejected,
            undialable,
            reachability: self.reachability(),
            attached_to: self.uplink.sn.filter(|_| self.uplink.attached),
            attached_peers: self.attachments.peers(),
            relay_addr: self.uplink.relay_addr.clone(),
            relayed_circuits: self.circuits,
            advert_bytes: self.advert_bytes,
            last_reattach: self.uplink.last_reattach,
            tables: TableSizes {
                adverts: self.book.len(),
                checks: self.checks.len(),
                queued_checks: self.queue.len(),
                probes: self.probes.len(),
                looked_up: self.looked_up.len(),
                peer_addrs: 0,
                reports: self.attachments.reports().len(),
                early_heartbeats: self.attachments.early_heartbeats(),
            },
        }
    }

    /// The relay gate, locked.
    fn gate(&self) -> std::sync::MutexGuard<'_, RelayGate> {
        self.relay_gate.lock().expect("relay gate")
    }

    /// Takes `peer` on as an attached peer at `now`; it may then reserve
    /// on the relay.
    fn attach_peer(&mut self, peer: PeerId, now: Instant) -> Result<u32, Refusal> {
        let load = self
            .attachments
            .attach(peer, now, self.setup.max_attached)?;
        self.gate().attach(peer);
        Ok(load)
    }

    /// Drops `peer` as an attached peer: its reports, and its right to
    /// reserve on the relay.
    fn detach_peer(&mut self, peer: &PeerId) -> bool {
        self.gate().detach(peer);
        self.attached_adverts.remove(peer);
        self.attachments.detach(peer)
    }

    /// Forgets dial checks and look-ups that no longer hold. A check is
    /// kept twice its validity: a peer still advertising is checked again
    /// well before, so its standing never lapses in between.
    fn prune(&mut self) {
        self.checks
            .retain(|_, c| c.at.elapsed() < 2 * DIAL_CHECK_VALID);
        self.looked_up.retain(|_, at| at.elapsed() < LOOKUP_MEMORY);
    }

    pub(super) fn observe(&mut self, peer: PeerId, ok: bool) {
        if self.observations.len() >= MAX_REPORTS && !self.observations.contains_key(&peer) {
            return;
        }
        let o = self.observations.entry(peer).or_default();
        if ok {
            o.0 = o.0.saturating_add(1);
        } else {
            o.1 = o.1.saturating_add(1);
        }
    }

    /// The observations since the last heartbeat.
    fn take_reports(&mut self) -> Vec<Observation> {
        self.observations
            .drain()
            .map(|(peer, (ok, failed))| Observation { peer, ok, failed })
            .collect()
    }
}

impl EventLoop {
    /// Publishes this peer's advert if it may stand for election, keeps it
    /// in its own book, and runs the election. A peer that does not qualify
    /// stays silent (and drops its own advert from its book, so that it
    /// elects from what everyone else holds): its advert could only ever
    /// count, never stand, and the population the election sizes its
    /// target from counts attached peers through their supernode's load.
    pub(super) fn advertise(&mut self) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        let now = vmail_proto::unix_now();
        let own = e.own_advert(now);
        e.last_own = Some(own.clone());
        if !election::qualifies(&own, &e.setup.election.thresholds) {
            e.book.remove(&own.peer_id);
            e.kept_back = Some(own.sign(&e.key));
            self.reelect(now);
            return;
        }
        let bytes = own.sign(&e.key);
        // Its own advert is newer than any it held: seq only grows.
        let _ = e.book.insert(own);
        let topic = e.topic.clone();
        self.reelect(now);
        if let Err(err) = self.swarm.behaviour_mut().gossip.publish(topic, bytes) {
            // No subscribed peer yet, most often: the next tick retries.
            tracing::debug!("advert not published: {err}");
        }
    }

    /// Checks an advert heard on the topic, tells gossipsub whether to pass
    /// it on (a refused one also costs its sender score), dial-checks a
    /// new claim to be public, and re-elects.
    pub(super) fn on_advert(
        &mut self,
        from: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        let now = vmail_proto::unix_now();
        e.advert_bytes += message.data.len() as u64;
        let mut check = None;
        let verdict = match Advert::verify(&message.data, now) {
            // Only the advertiser may publish its advert.
            Ok(a) if message.source != Some(a.peer_id) => Err(format!(
                "advert for {} published by {:?}",
                a.peer_id, message.source
            )),
            Ok(a) => match e.keep(a) {
                Ok(a) => {
                    check = a.reachability.is_public().then_some(a.peer_id);
                    Ok(gossipsub::MessageAcceptance::Accept)
                }
                // Heard again by another route: not the sender's fault.
                Err(AdvertError::Replay { .. }) => Ok(gossipsub::MessageAcceptance::Ignore),
                Err(err) => Err(err.to_string()),
            },
            // Too old or too new by this peer's clock: refused, but the
            // forwarder's clock may have judged it fresh, so no penalty.
            Err(err @ (AdvertError::Stale { .. } | AdvertError::Future { .. })) => {
                e.rejected += 1;
                tracing::debug!(%from, "advert refused: {err}");
                Ok(gossipsub::MessageAcceptance::Ignore)
            }
            Err(err) => Err(err.to_string()),
        };
        // Anything else a forwarder should have caught itself: refused, and
        // the forwarder's gossipsub score pays for it (see `scoring`).
        let acceptance = verdict.unwrap_or_else(|why| {
            e.rejected += 1;
            tracing::debug!(%from, "advert refused: {why}");
            gossipsub::MessageAcceptance::Reject
        });
        if acceptance == gossipsub::MessageAcceptance::Accept {
            e.changed = true;
        }
        self.swarm
            .behaviour_mut()
            .gossip
            .report_message_validation_result(&id, &from, acceptance);
        if let Some(peer) = check
            && peer != e.local()
            && !e.fresh_check(&peer)
        {
            if let Some(dropped) = e.queue.push(from, peer) {
                tracing::debug!(%from, %dropped, "dial check queue full: dropped a check");
            }
            self.run_checks();
        }
    }

    /// Starts queued dial checks while fewer than [`MAX_CHECKS_IN_FLIGHT`]
    /// run.
    pub(super) fn run_checks(&mut self) {
        loop {
            let Some(e) = self.elections.as_mut() else {
                return;
            };
            if e.probes.len() >= MAX_CHECKS_IN_FLIGHT {
                return;
            }
            let Some(peer) = e.queue.pop() else {
                return;
            };
            self.dial_check(peer);
        }
    }

    /// Reruns the election if adverts or dial checks changed since the
    /// last run (at most once per [`ELECTION_PERIOD`]).
    pub(super) fn reelect_if_changed(&mut self) {
        if self
            .elections
            .as_mut()
            .is_some_and(|e| std::mem::take(&mut e.changed))
        {
            self.reelect(vmail_proto::unix_now());
        }
    }

    /// Dials `peer` on a fresh connection, unless a recent check stands:
    /// a peer that says it is public must be reachable directly before it
    /// may stand for election.
    fn dial_check(&mut self, peer: PeerId) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        if peer == e.local() || e.probes.values().any(|p| *p == peer) {
            return;
        }
        if e.fresh_check(&peer) {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        e.probes.insert(id, peer);
        match self.swarm.dial(opts) {
            Ok(()) => {}
            // No address known yet: look it up first, and let its next
            // advert bring the check back. Only a second miss counts.
            Err(DialError::NoAddresses) if !e.looked_up.contains_key(&peer) => {
                e.probes.remove(&id);
                if e.looked_up.len() >= e.setup.max_tracked_peers {
                    evict_least(&mut e.looked_up, |_, at| *at);
                }
                e.looked_up.insert(peer, Instant::now());
                self.swarm.behaviour_mut().kad.get_closest_peers(peer);
            }
            Err(err) => {
                tracing::debug!(%peer, "dial check failed at once: {err}");
                self.on_dial_failed(id, &err);
            }
        }
    }

    fn record_check(&mut self, connection: ConnectionId, dialable: bool) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        let Some(peer) = e.probes.remove(&connection) else {
            return;
        };
        e.record(peer, dialable);
        self.run_checks();
    }

    pub(super) fn on_connected(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &libp2p::core::ConnectedPoint,
    ) {
        let direct = !is_relayed(endpoint.get_remote_address());
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        if e.probes.contains_key(&connection) {
            self.record_check(connection, direct);
            self.swarm.close_connection(connection);
        } else if endpoint.is_dialer() && direct && !e.dialable(&peer) {
            // Any direct connection this peer dialed proves the same.
            e.record(peer, true);
        }
    }

    /// A dial failed; a probe's failure is a verdict unless this side
    /// stopped it (connection limits, or the dial was aborted).
    pub(super) fn on_dial_failed(&mut self, connection: ConnectionId, error: &DialError) {
        if matches!(
            error,
            DialError::Denied { .. } | DialError::Aborted | DialError::DialPeerConditionFalse(_)
        ) {
            if let Some(e) = self.elections.as_mut()
                && e.probes.remove(&connection).is_some()
            {
                self.run_checks();
            }
            return;
        }
        self.record_check(connection, false);
    }
}

impl Elections {
    /// Keeps a verified advert in the book. This peer and peers that
    /// passed a dial check keep their adverts when throwaway ones fill it.
    fn keep(&mut self, advert: Advert) -> Result<&Advert, AdvertError> {
        let (checks, local) = (&self.checks, self.local());
        self.book.insert_protecting(advert, |p| {
            *p == local || checks.get(p).is_some_and(|c| c.dialable)
        })
    }

    /// Whether a check of `peer` ran recently enough to stand: a passed one
    /// for [`DIAL_CHECK_VALID`], a failed one for [`DIAL_CHECK_RETRY`].
    fn fresh_check(&self, peer: &PeerId) -> bool {
        self.checks.get(peer).is_some_and(|c| {
            let valid = if c.dialable {
                DIAL_CHECK_VALID
            } else {
                DIAL_CHECK_RETRY
            };
            c.at.elapsed() < valid
        })
    }

    /// Whether `peer` passed a dial check that still holds.
    fn dialable(&self, peer: &PeerId) -> bool {
        self.checks
            .get(peer)
            .is_some_and(|c| c.dialable && c.at.elapsed() < DIAL_CHECK_VALID)
    }

    /// Keeps the outcome of a dial check of `peer`.
    fn record(&mut self, peer: PeerId, dialable: bool) {
        self.looked_up.remove(&peer);
        if !dialable {
            tracing::info!(%peer, "peer claims to be public but cannot be dialed");
        }
        if !self.checks.contains_key(&peer) && self.checks.len() >= self.setup.max_tracked_peers {
            // Peers without an advert go first, then the oldest check.
            let book = &self.book;
            evict_least(&mut self.checks, |p, c| (book.get(p).is_some(), c.at));
        }
        self.checks.insert(
            peer,
            DialCheck {
                dialable,
                at: Instant::now(),
            },
        );
        self.changed = true;
    }
}

impl EventLoop {
    /// Reruns the election and acts on a change of this peer's role: a new
    /// supernode leaves its own SN and opens its relay; a former one
    /// forgets its peers and closes it.
    fn reelect(&mut self, now: u64) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        if !e.elect(now) {
            return;
        }
        let serving = e.serving();
        tracing::info!(serving, "this peer's supernode role changed");
        if !serving {
            e.attachments.clear();
            e.attached_adverts = AdvertBook::with_cap(e.setup.max_attached.max(1));
            e.gate().clear();
        }
        self.metrics.supernode(serving, e.attachments.peers().len());
        self.swarm
            .behaviour_mut()
            .relay
            .set_status(Some(if serving {
                relay::Status::Enable
            } else {
                relay::Status::Disable
            }));
        if serving {
            self.leave_sn("this peer now serves as a supernode", false);
        }
    }

    /// Heartbeat tick: an SN drops silent peers; a peer keeps its SN alive,
    /// notices that it stopped serving, or attaches to one.
    pub(super) fn on_heartbeat_tick(&mut self) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        let now = Instant::now();
        e.uplink.avoid.retain(|_, (until, _)| *until > now);
        e.prune();
        if e.serving() {
            let timeout = 2 * patience(e.setup.heartbeat);
            let silent = e.attachments.expire(now, timeout);
            for peer in &silent {
                e.gate().detach(peer);
                e.attached_adverts.remove(peer);
                tracing::info!(%peer, "attached peer went silent");
            }
            let m = &self.metrics;
            m.heartbeats_missed(Side::Supernode, silent.len() as u64);
            m.supernode(true, e.attachments.peers().len());
            self.run_checks();
            return;
        }
        self.metrics.supernode(false, 0);
        self.run_checks();
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        let Some(sn) = e.uplink.sn else {
            self.attach_next(true);
            return;
        };
        if !e.supernodes.contains(&sn) {
            self.leave_sn("it no longer serves as a supernode", false);
            self.attach_next(true);
            return;
        }
        // Attached, as a last resort, to an SN that will not relay for a
        // peer that needs it: move as soon as another SN is there.
        let needs_relay = !e.reachability().is_public() && e.uplink.relay.is_none();
        if needs_relay && e.uplink.attached && e.best_supernode(&self.rtts, true) != Some(sn) {
            self.leave_sn("another supernode may relay for this peer", false);
            self.attach_next(true);
            return;
        }
        if e.uplink.pending.is_some() {
            return;
        }
        let request = if e.uplink.attached {
            SnRequest::Heartbeat {
                reports: e.take_reports(),
                advert: e.kept_back.take(),
            }
        } else {
            SnRequest::Attach
        };
        e.uplink.pending = Some(self.swarm.behaviour_mut().sn.send_request(&sn, request));
    }
}
