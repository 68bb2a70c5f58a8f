//! gossipsub peer scoring for the advert topic: the parameters, written
//! down in one place (docs/SECURITY.md repeats them), so that an advert
//! this peer refuses (`Reject`) costs its sender score, and a sender that
//! keeps sending them is first no longer gossiped to, then graylisted (its
//! messages are dropped unread).
//!
//! The advert topic is slow (one advert per peer per advert period), so
//! only P1 (time in mesh, a small reward), P2 (first deliveries, a small
//! reward) and P4 (invalid deliveries, the penalty) are on; P3 and P3b
//! (too few mesh deliveries) would punish honest peers on a quiet topic.
//! Several peers on one IP address are normal in tests and the devnet on
//! loopback, so loopback is exempt from the IP colocation penalty.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libp2p::gossipsub::{self, PeerScoreParams, PeerScoreThresholds, TopicScoreParams};

/// Weight of invalid adverts, squared: `-15 × n²` (topic weight 1), so one
/// rejected advert takes a fresh peer below [`GOSSIP_THRESHOLD`], and
/// three take even a peer with the topic's best reward (+10) below
/// [`GRAYLIST_THRESHOLD`].
pub const INVALID_ADVERT_WEIGHT: f64 = -15.0;
/// The invalid-advert counter halves about every minute
/// (decay factor per one-second decay interval).
pub const INVALID_ADVERT_DECAY: f64 = 0.99;
/// Below this score no gossip (IHAVE/IWANT) is sent to or taken from a peer.
pub const GOSSIP_THRESHOLD: f64 = -10.0;
/// Below this score this peer does not publish to a peer.
pub const PUBLISH_THRESHOLD: f64 = -50.0;
/// Below this score a peer's messages are dropped unread.
pub const GRAYLIST_THRESHOLD: f64 = -80.0;
/// Peers on one IP address beyond this count cost each of them
/// `IP_COLOCATION_WEIGHT × excess²`.
pub const IP_COLOCATION_THRESHOLD: f64 = 10.0;
/// See [`IP_COLOCATION_THRESHOLD`].
pub const IP_COLOCATION_WEIGHT: f64 = -5.0;
/// Protocol misbehaviour (IWANT promises broken, GRAFTs during backoff)
/// beyond this count costs `BEHAVIOUR_PENALTY_WEIGHT × excess²`: a busy
/// honest peer breaks a few promises; a misbehaving one many.
pub const BEHAVIOUR_PENALTY_THRESHOLD: f64 = 6.0;
/// See [`BEHAVIOUR_PENALTY_THRESHOLD`].
pub const BEHAVIOUR_PENALTY_WEIGHT: f64 = -10.0;

/// The advert topic's score parameters.
pub fn advert_topic_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        // P1: a small reward for time in the mesh, capped at 5.
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 500.0,
        // P2: a small reward for first deliveries, capped at 5.
        first_message_deliveries_weight: 0.1,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 50.0,
        // P3, P3b: off (a quiet topic).
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // P4: the penalty for adverts this peer rejects.
        invalid_message_deliveries_weight: INVALID_ADVERT_WEIGHT,
        invalid_message_deliveries_decay: INVALID_ADVERT_DECAY,
        ..TopicScoreParams::default()
    }
}

/// Peer score parameters with the advert topic's.
pub fn score_params(advert_topic: gossipsub::TopicHash) -> PeerScoreParams {
    let mut params = PeerScoreParams {
        ip_colocation_factor_weight: IP_COLOCATION_WEIGHT,
        ip_colocation_factor_threshold: IP_COLOCATION_THRESHOLD,
        ip_colocation_factor_whitelist: [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
        .into(),
        behaviour_penalty_threshold: BEHAVIOUR_PENALTY_THRESHOLD,
        behaviour_penalty_weight: BEHAVIOUR_PENALTY_WEIGHT,
        ..PeerScoreParams::default()
    };
    params.topics.insert(advert_topic, advert_topic_params());
    params
}

/// The score thresholds.
pub fn thresholds() -> PeerScoreThresholds {
    PeerScoreThresholds {
        gossip_threshold: GOSSIP_THRESHOLD,
        publish_threshold: PUBLISH_THRESHOLD,
        graylist_threshold: GRAYLIST_THRESHOLD,
        ..PeerScoreThresholds::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameters_are_valid_and_three_rejects_graylist() {
        let topic = gossipsub::IdentTopic::new(super::super::ADVERT_TOPIC).hash();
        score_params(topic).validate().unwrap();
        thresholds().validate().unwrap();
        let p = advert_topic_params();
        // The most a peer earns on the topic (P1 and P2 at their caps).
        let best = p.time_in_mesh_weight * p.time_in_mesh_cap
            + p.first_message_deliveries_weight * p.first_message_deliveries_cap;
        let three = p.invalid_message_deliveries_weight * 9.0;
        assert!(best + three < GRAYLIST_THRESHOLD, "{best} + {three}");
        assert!(p.invalid_message_deliveries_weight < GOSSIP_THRESHOLD);
    }
}
