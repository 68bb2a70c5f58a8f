//! Attacks on supernode election and gossip: heartbeat floods, forged reports, Sybil adverts, relay reservations and the control socket.
