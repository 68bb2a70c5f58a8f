//! The supernode link of the event loop: attaching to a supernode
//! (heartbeats, re-attach, the relay reservation on it) and, while this
//! peer serves, answering the peers attached to it (attachments, peer
//! exchange, recommendations).

use std::time::Instant;

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId};
use libp2p::{Multiaddr, PeerId};
use rand::seq::SliceRandom;
use tokio::sync::oneshot;

use super::Elections;
use crate::metrics::Side;
use crate::overlay::swarm::{EventLoop, NetworkError};
use crate::supernode::advert::Advert;
use crate::supernode::attach::{
    AVOID_FOR, MAX_EXCHANGE_ADDRS, MAX_EXCHANGE_PEERS, MAX_RECOMMEND, Refusal, SnRequest,
    SnResponse,
};
use crate::supernode::election;

impl EventLoop {
    /// Ends the attachment to the current SN; `avoid` passes it over for a
    /// while when choosing the next.
    pub(super) fn leave_sn(&mut self, reason: &str, avoid: bool) {
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
    pub(super) fn attach_next(&mut self, last_resort: bool) {
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
                    self.metrics.reattached();
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
    pub(in crate::overlay::swarm) fn on_reservation(&mut self, relay: PeerId) {
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
    pub(in crate::overlay::swarm) fn on_listener_closed(
        &mut self,
        listener: ListenerId,
        error: Option<String>,
    ) {
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

    pub(in crate::overlay::swarm) fn on_disconnected(&mut self, peer: PeerId) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        if e.detach_peer(&peer) {
            tracing::info!(%peer, "attached peer disconnected");
        }
        if e.uplink.sn == Some(peer) {
            self.leave_sn("connection closed", true);
            self.attach_next(false);
        }
    }

    /// Answers `count` storage peers from this peer's SN (or itself, if it
    /// serves).
    pub(in crate::overlay::swarm) fn recommend(
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

    pub(in crate::overlay::swarm) fn on_sn_event(
        &mut self,
        event: request_response::Event<SnRequest, SnResponse>,
    ) {
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
        if e.uplink.attached {
            self.metrics.heartbeats_missed(Side::Peer, 1);
        }
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
            SnRequest::Attach => match e.attach_peer(peer, now) {
                Ok(load) => {
                    tracing::debug!(%peer, load, "peer attached");
                    SnResponse::Attached {
                        load,
                        peers: exchange,
                    }
                }
                Err(r) => SnResponse::Refused(r),
            },
            SnRequest::Heartbeat { reports, advert } => {
                let answer = e
                    .attachments
                    .heartbeat(peer, &reports, now, e.setup.heartbeat / 2)
                    .map_or_else(SnResponse::Refused, |load| SnResponse::Alive { load });
                if let (SnResponse::Alive { .. }, Some(bytes)) = (&answer, advert) {
                    e.keep_attached_advert(peer, &bytes);
                }
                answer
            }
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
    /// Keeps the advert an attached peer handed over in a heartbeat, if it
    /// verifies and is the peer's own; refused ones count as rejected.
    fn keep_attached_advert(&mut self, peer: PeerId, bytes: &[u8]) {
        let kept = Advert::verify(bytes, vmail_proto::unix_now())
            .map_err(|e| e.to_string())
            .and_then(|a| {
                if a.peer_id == peer {
                    Ok(a)
                } else {
                    Err(format!("advert for {} handed over by {peer}", a.peer_id))
                }
            })
            .and_then(|a| {
                self.attached_adverts
                    .insert(a)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        if let Err(why) = kept {
            self.rejected += 1;
            tracing::debug!(%peer, "attached peer's advert refused: {why}");
        }
    }

    /// Storage peers from the fresh adverts, those attached peers handed
    /// over, and attached peers' reports.
    fn recommend(&self, count: u16, exclude: &[PeerId]) -> Vec<PeerId> {
        let now = vmail_proto::unix_now();
        let mut adverts = self.election_input();
        adverts.extend(self.attached_adverts.adverts().cloned());
        let fresh = election::current(&adverts, now, self.setup.election.max_advert_age_secs);
        crate::supernode::attach::recommend(
            &fresh,
            self.attachments.reports(),
            exclude,
            usize::from(count),
        )
    }
}

/// `addr` without its trailing `/p2p/<id>` parts: a dialed address can
/// carry the peer id twice (the bootstrap address named it, and the dial
/// appended it), and a relay address with a doubled id is refused.
fn strip_peer(mut addr: Multiaddr) -> Multiaddr {
    while matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trailing_peer_id_is_stripped() {
        let id = PeerId::random();
        let base: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let twice = base.clone().with(Protocol::P2p(id)).with(Protocol::P2p(id));
        assert_eq!(strip_peer(twice), base);
        assert_eq!(strip_peer(base.clone()), base);
    }
}
