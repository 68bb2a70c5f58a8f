//! The whole vmail system on one machine: every "run it all locally" tool
//! lives here, above the product crates, so that neither the peer nor the
//! auth server carries scaffolding.
//!
//! - [`local_auth`]: auth servers inside this process on loopback ports
//!   (`LocalServer`), and the group-formation helpers;
//! - [`localnet`]: a replicated auth group and N peers in one process, and
//!   [`localnet::settled`], the supernode-convergence check;
//! - [`demo`]: `vmail-devnet demo`, the protocol narrated end to end;
//! - [`testnet`]: `vmail-devnet testnet`, auth servers and peers in
//!   background processes, with the fault drills and `tone`;
//! - [`scale`]: `vmail-devnet scale`, N real `vmail node run` processes
//!   measured from start-up to re-attach.
//!
//! The `vmail` CLI runs `vmail demo` and `vmail testnet ...` by handing
//! them to the `vmail-devnet` program installed beside it. Only `vmail-tests`
//! depends on this crate.

pub mod demo;
pub mod local_auth;
pub mod localnet;
pub mod scale;
pub mod testnet;

pub use vmail_node::stop::stop_signal;
