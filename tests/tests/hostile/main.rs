//! Hostile peers and hostile clients: one test per attack on a real swarm or
//! a real auth server, each asserting that the attack meets its bound and
//! that honest traffic still succeeds while it runs.

mod auth;
mod fetch;
mod gossip;
mod holder;
