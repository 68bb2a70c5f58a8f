//! What the event loop records for Prometheus: every swarm and behaviour
//! event that libp2p-metrics has a recorder for (Kademlia, gossipsub,
//! identify, ping, the relay server, DCUtR; AutoNAT, the relay client and
//! our own protocols have none), and the wire bytes the bandwidth counters
//! hold, for `Traffic`.

use libp2p::metrics::{Metrics, Recorder};
use libp2p::swarm::SwarmEvent;
use prometheus_client::registry::Registry;

use super::BehaviourEvent;

/// Records `event` in libp2p's series: the swarm's own, and the
/// behaviour's when it has a recorder.
pub(super) fn record(m: &Metrics, event: &SwarmEvent<BehaviourEvent>) {
    m.record(event);
    let SwarmEvent::Behaviour(event) = event else {
        return;
    };
    match event {
        BehaviourEvent::Kad(e) => m.record(e),
        BehaviourEvent::Gossip(e) => m.record(e),
        BehaviourEvent::Identify(e) => m.record(e),
        BehaviourEvent::Ping(e) => m.record(e),
        BehaviourEvent::Relay(e) => m.record(e),
        BehaviourEvent::Dcutr(e) => m.record(e),
        _ => {}
    }
}

/// Bytes both ways on every connection so far, from the bandwidth counters
/// libp2p-metrics keeps in `registry`.
pub(super) fn wire_bytes(registry: &Registry) -> u64 {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return 0;
    }
    text.lines()
        .filter(|l| l.starts_with("libp2p_bandwidth_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
