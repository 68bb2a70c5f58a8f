//! The supernode side of the event loop: publishing and checking adverts,
//! dial-checking peers that claim to be public, rerunning the election,
//! attaching to a supernode (heartbeats, re-attach, relay reservation) and
//! serving as one (attachments, peer exchange, recommendations, the relay
//! switched on). The decisions are the pure functions of
//! [`crate::supernode::advert`], [`crate::supernode::election`] and [`crate::supernode::attach`]; this
//! module only feeds them and acts on their answers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId};
use libp2p::swarm::ConnectionId;
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, gossipsub, identity, relay};
use rand::seq::SliceRandom;
use tokio::sync::oneshot;

use super::{EventLoop, NetworkError, SupernodeSetup, SupernodeView, is_relayed};
use crate::supernode::advert::{ADVERT_VERSION, Advert, AdvertBook, AdvertError, Reachability};
use crate::supernode::attach::{
    AVOID_FOR, Attachments, Candidate, MAX_EXCHANGE_ADDRS, MAX_EXCHANGE_PEERS, MAX_RECOMMEND,
    MAX_REPORTS, Observation, Refusal, SnRequest, SnResponse, choose_supernode, patience,
};
use crate::supernode::election;

/// How long a passed dial check holds before the peer is checked again.
const DIAL_CHECK_VALID: Duration = Duration::from_secs(10 * 60);
/// How often the election reruns over adverts heard since the last run.
/// Rerunning on every advert costs O(n log n) per advert, so O(n² log n)
/// per advert period: too much for a hundred peers on one small machine.
pub(super) const ELECTION_PERIOD: Duration = Duration::from_millis(100);
/// How soon a failed dial check is tried again.
const DIAL_CHECK_RETRY: Duration = Duration::from_secs(30);

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
    rejected: u64,
    /// AutoNAT found this peer publicly reachable.
    pub(super) nat_public: bool,
    /// Relayed connections this peer's relay accepted.
    pub(super) circuits: u64,
    /// Adverts or dial checks changed since the last election.
    changed: bool,
    /// Advert bytes gossip delivered.
    advert_bytes: u64,
    checks: HashMap<PeerId, DialCheck>,
    probes: HashMap<ConnectionId, PeerId>,
    /// Claimants whose addresses were looked up in the DHT.
    looked_up: HashSet<PeerId>,
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
    ) -> Self {
        Self {
            setup,
            key,
            topic,
            book: AdvertBook::default(),
            // Milliseconds: still growing after a restart.
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            started: Instant::now(),
            supernodes: Vec::new(),
            rejected: 0,
            nat_public: false,
            circuits: 0,
            changed: false,
            advert_bytes: 0,
            checks: HashMap::new(),
            probes: HashMap::new(),
            looked_up: HashSet::new(),
            attachments: Attachments::default(),
            uplink: Uplink::default(),
            observations: HashMap::new(),
            recommends: HashMap::new(),
        }
    }

    fn local(&self) -> PeerId {
        self.key.public().to_peer_id()
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
        }
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
    /// Publishes this peer's advert, keeps it in its own book, and runs
    /// the election.
    pub(super) fn advertise(&mut self) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        let now = vmail_proto::unix_now();
        let own = e.own_advert(now);
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
            Ok(a) => match e.book.insert(a) {
                Ok(a) => {
                    check = a.reachability.is_public().then_some(a.peer_id);
                    Ok(gossipsub::MessageAcceptance::Accept)
                }
                // Heard again by another route: not the sender's fault.
                Err(AdvertError::Replay { .. }) => Ok(gossipsub::MessageAcceptance::Ignore),
                Err(err) => Err(err.to_string()),
            },
            Err(err) => Err(err.to_string()),
        };
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
        if let Some(peer) = check {
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
        if let Some(c) = e.checks.get(&peer) {
            let valid = if c.dialable {
                DIAL_CHECK_VALID
            } else {
                DIAL_CHECK_RETRY
            };
            if c.at.elapsed() < valid {
                return;
            }
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
            Err(DialError::NoAddresses) if e.looked_up.insert(peer) => {
                e.probes.remove(&id);
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
            if let Some(e) = self.elections.as_mut() {
                e.probes.remove(&connection);
            }
            return;
        }
        self.record_check(connection, false);
    }
}

impl Elections {
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
        }
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
        if e.serving() {
            let timeout = 2 * patience(e.setup.heartbeat);
            for peer in e.attachments.expire(now, timeout) {
                tracing::info!(%peer, "attached peer went silent");
            }
            return;
        }
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
            }
        } else {
            SnRequest::Attach
        };
        e.uplink.pending = Some(self.swarm.behaviour_mut().sn.send_request(&sn, request));
    }

    /// Ends the attachment to the current SN; `avoid` passes it over for a
    /// while when choosing the next.
    fn leave_sn(&mut self, reason: &str, avoid: bool) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        let Some(sn) = e.uplink.sn.take() else {
            return;
        };
        let now = Instant::now();
        if e.uplink.attached {
            e.uplink.lost_at.get_or_insert(now);
            tracing::info!(%sn, "left supernode: {reason}");
        } else {
            tracing::debug!(%sn, "gave up attaching: {reason}");
        }
        e.uplink.attached = false;
        e.uplink.pending = None;
        if avoid {
            let refused_relay = e.uplink.avoid.get(&sn).is_some_and(|(_, r)| *r);
            e.uplink.avoid.insert(sn, (now + AVOID_FOR, refused_relay));
        }
        let granted = e.uplink.relay_addr.take().is_some();
        match e.uplink.relay.take() {
            Some(listener) if granted => {
                self.swarm.remove_listener(listener);
            }
            // Still waiting for the relay's answer: libp2p-relay 0.22
            // panics on an answer for a listener already removed, so end
            // the reservation with its connection instead.
            Some(_) => {
                let _ = self.swarm.disconnect_peer_id(sn);
            }
            None => {}
        }
    }

    /// Sends an attach to the best elected SN, if there is one. Only the
    /// heartbeat tick takes an avoided SN as a `last_resort`, so a dead SN
    /// is retried once a period, never in a tight loop.
    fn attach_next(&mut self, last_resort: bool) {
        let Self {
            swarm,
            elections,
            rtts,
            ..
        } = self;
        let Some(e) = elections.as_mut() else {
            return;
        };
        if e.serving() || e.uplink.sn.is_some() {
            return;
        }
        let Some(sn) = e.best_supernode(rtts, last_resort) else {
            return;
        };
        e.uplink.sn = Some(sn);
        e.uplink.pending = Some(
            swarm
                .behaviour_mut()
                .sn
                .send_request(&sn, SnRequest::Attach),
        );
    }

    /// The SN took this peer on: learn the peers it named and, if this
    /// peer cannot be dialed, reserve a relay slot there.
    fn on_attached(&mut self, sn: PeerId, load: u32, peers: Vec<(PeerId, Vec<Multiaddr>)>) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        e.uplink.pending = None;
        if !e.uplink.attached {
            e.uplink.attached = true;
            match e.uplink.lost_at.take() {
                Some(t) => {
                    let took = t.elapsed();
                    e.uplink.last_reattach = Some(took);
                    tracing::info!(%sn, load, ?took, "re-attached to a supernode");
                }
                None => tracing::info!(%sn, load, "attached to a supernode"),
            }
        }
        let wants_relay = !e.reachability().is_public()
            && e.uplink.relay.is_none()
            && !e.uplink.avoid.get(&sn).is_some_and(|(_, refused)| *refused);
        let local = e.local();
        for (peer, addrs) in peers.into_iter().take(MAX_EXCHANGE_PEERS) {
            if peer == local {
                continue;
            }
            for addr in addrs.into_iter().take(MAX_EXCHANGE_ADDRS) {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
        }
        if !wants_relay {
            return;
        }
        let Some(addr) = self.peer_addrs.get(&sn).cloned() else {
            tracing::warn!(%sn, "no direct address of the supernode to reserve a relay slot on");
            return;
        };
        let circuit = strip_peer(addr)
            .with(Protocol::P2p(sn))
            .with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(listener) => {
                if let Some(e) = self.elections.as_mut() {
                    e.uplink.relay = Some(listener);
                }
            }
            Err(err) => tracing::warn!(%circuit, "cannot reserve a relay slot: {err}"),
        }
    }

    /// The SN granted the relay reservation.
    pub(super) fn on_reservation(&mut self, relay: PeerId) {
        let local = *self.swarm.local_peer_id();
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        if e.uplink.sn != Some(relay) {
            return;
        }
        let Some(addr) = self.peer_addrs.get(&relay) else {
            return;
        };
        let circuit = strip_peer(addr.clone())
            .with(Protocol::P2p(relay))
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(local));
        tracing::info!(%circuit, "reachable through the supernode's relay");
        e.uplink.relay_addr = Some(circuit);
    }

    /// A listener closed; if it was the relay reservation, the SN refused
    /// or dropped it: move to another SN that will relay.
    pub(super) fn on_listener_closed(&mut self, listener: ListenerId, error: Option<String>) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        if e.uplink.relay != Some(listener) {
            return;
        }
        e.uplink.relay = None;
        e.uplink.relay_addr = None;
        let Some(sn) = e.uplink.sn else {
            return;
        };
        let why = error.unwrap_or_else(|| "reservation closed".into());
        tracing::warn!(%sn, "supernode refused or dropped the relay reservation ({why}); trying another");
        e.uplink
            .avoid
            .insert(sn, (Instant::now() + AVOID_FOR, true));
        self.leave_sn("it will not relay for this peer", true);
        self.attach_next(false);
    }

    pub(super) fn on_disconnected(&mut self, peer: PeerId) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        if e.attachments.detach(&peer) {
            tracing::info!(%peer, "attached peer disconnected");
        }
        if e.uplink.sn == Some(peer) {
            self.leave_sn("connection closed", true);
            self.attach_next(false);
        }
    }

    /// Answers `count` storage peers from this peer's SN (or itself, if it
    /// serves).
    pub(super) fn recommend(
        &mut self,
        count: u16,
        exclude: Vec<PeerId>,
        reply: oneshot::Sender<Result<Vec<PeerId>, NetworkError>>,
    ) {
        let Some(e) = self.elections.as_mut() else {
            let _ = reply.send(Err(NetworkError::Supernode(
                "a one-job client peer has no supernode".into(),
            )));
            return;
        };
        if e.serving() {
            let mut exclude = exclude;
            exclude.push(e.local());
            let _ = reply.send(Ok(e.recommend(count, &exclude)));
            return;
        }
        let Some(sn) = e.uplink.sn.filter(|_| e.uplink.attached) else {
            let _ = reply.send(Err(NetworkError::Supernode(
                "not attached to a supernode yet; try again in a few seconds".into(),
            )));
            return;
        };
        let id = self
            .swarm
            .behaviour_mut()
            .sn
            .send_request(&sn, SnRequest::Recommend { count, exclude });
        e.recommends.insert(id, reply);
    }

    pub(super) fn on_sn_event(&mut self, event: request_response::Event<SnRequest, SnResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let response = self.serve(peer, request);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sn
                    .send_response(channel, response);
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.on_sn_response(peer, request_id, response),
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => self.on_sn_failure(peer, request_id, &error),
            _ => {}
        }
    }

    fn on_sn_response(&mut self, peer: PeerId, id: OutboundRequestId, response: SnResponse) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        if let Some(reply) = e.recommends.remove(&id) {
            let _ = reply.send(match response {
                SnResponse::Recommended(peers) => Ok(peers),
                SnResponse::Refused(r) => Err(NetworkError::Supernode(format!(
                    "supernode {peer} refused: {r}"
                ))),
                other => Err(NetworkError::Supernode(format!(
                    "supernode {peer} answered {other:?} to a recommendation"
                ))),
            });
            return;
        }
        if e.uplink.pending != Some(id) || e.uplink.sn != Some(peer) {
            return;
        }
        match response {
            SnResponse::Attached { load, peers } => self.on_attached(peer, load, peers),
            SnResponse::Alive { .. } => e.uplink.pending = None,
            // It forgot this peer (a restart, or heartbeats delayed):
            // attach again at once, to the same SN.
            SnResponse::Refused(Refusal::NotAttached) => {
                e.uplink.pending = Some(
                    self.swarm
                        .behaviour_mut()
                        .sn
                        .send_request(&peer, SnRequest::Attach),
                );
            }
            SnResponse::Refused(r) => {
                self.leave_sn(&format!("it refused: {r}"), true);
                self.attach_next(false);
            }
            SnResponse::Recommended(_) => e.uplink.pending = None,
        }
    }

    fn on_sn_failure(&mut self, peer: PeerId, id: OutboundRequestId, error: &OutboundFailure) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        if let Some(reply) = e.recommends.remove(&id) {
            let _ = reply.send(Err(NetworkError::Supernode(format!(
                "supernode {peer}: {error}"
            ))));
            return;
        }
        if e.uplink.pending != Some(id) {
            return;
        }
        // Unanswered for `patience`, or cannot dial, connection gone,
        // protocol refused: the SN is gone for this peer.
        self.leave_sn(&format!("request failed: {error}"), true);
        self.attach_next(false);
    }

    /// Answers a request from `peer`, as a supernode.
    fn serve(&mut self, peer: PeerId, request: SnRequest) -> SnResponse {
        let exchange = self.exchange_sample(peer);
        let Some(e) = self.elections.as_mut() else {
            return SnResponse::Refused(Refusal::NotServing);
        };
        if !e.serving() {
            return SnResponse::Refused(Refusal::NotServing);
        }
        let now = Instant::now();
        match request {
            SnRequest::Attach => match e.attachments.attach(peer, now, e.setup.max_attached) {
                Ok(load) => {
                    tracing::debug!(%peer, load, "peer attached");
                    SnResponse::Attached {
                        load,
                        peers: exchange,
                    }
                }
                Err(r) => SnResponse::Refused(r),
            },
            SnRequest::Heartbeat { reports } => e
                .attachments
                .heartbeat(peer, &reports, now)
                .map_or_else(SnResponse::Refused, |load| SnResponse::Alive { load }),
            SnRequest::Recommend { count, exclude } => {
                if !e.attachments.contains(&peer) {
                    return SnResponse::Refused(Refusal::NotAttached);
                }
                let mut exclude = exclude;
                exclude.truncate(MAX_RECOMMEND * 4);
                exclude.push(peer);
                SnResponse::Recommended(e.recommend(count, &exclude))
            }
        }
    }

    /// Up to [`MAX_EXCHANGE_PEERS`] peers from the routing table, at
    /// random, with their addresses, for a peer that just attached.
    fn exchange_sample(&mut self, asker: PeerId) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut known: Vec<(PeerId, Vec<Multiaddr>)> = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .flat_map(|b| {
                b.iter()
                    .map(|entry| {
                        (
                            *entry.node.key.preimage(),
                            entry
                                .node
                                .value
                                .iter()
                                .take(MAX_EXCHANGE_ADDRS)
                                .cloned()
                                .collect(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|(p, _)| *p != asker)
            .collect();
        known.shuffle(&mut rand::thread_rng());
        known.truncate(MAX_EXCHANGE_PEERS);
        known
    }
}

impl Elections {
    /// Storage peers from the fresh adverts and attached peers' reports.
    fn recommend(&self, count: u16, exclude: &[PeerId]) -> Vec<PeerId> {
        let now = vmail_proto::unix_now();
        let adverts = self.election_input();
        let fresh = election::current(&adverts, now, self.setup.election.max_advert_age_secs);
        crate::supernode::attach::recommend(
            &fresh,
            self.attachments.reports(),
            exclude,
            usize::from(count),
        )
    }
}

/// `addr` without a trailing `/p2p/<id>`.
fn strip_peer(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}
