//! The vmail peer and client library, in layers: each folder uses only the
//! ones listed before it.
//!
//! - [`core`]: pure protocol logic, no IO: the voicemail ciphertext format,
//!   locators, erasure coding, the placement score and identifiers, WAV;
//! - [`supernode`]: pure supernode logic: signed adverts, the election,
//!   attaching to a supernode and what one serves;
//! - [`overlay`]: the libp2p swarm task and its handle, the blob protocol,
//!   the holder's object store and repair;
//! - [`auth_client`]: the auth servers' client (OPAQUE, master key, deposits,
//!   delivery), over gRPC and `vmail-proto` only;
//! - [`peer`]: a running peer: session, the leave and fetch jobs and their
//!   pure plans, and its background duties;
//! - [`control`]: the local control API (gRPC on a Unix socket) and its client;
//! - [`web`]: the web inbox, a page and a local HTTP API over the control API;
//! - [`metrics`]: the daemon's Prometheus series and its `/metrics`
//!   endpoint (no other module of this crate below it);
//! - [`config`]: the peer's `node.toml`;
//! - [`home`], [`keystore`]: the user's vmail home, where the auth servers
//!   are, and the identity key and login saved there;
//! - [`stop`]: the stop signals of a foreground process.
//!
//! The `vmail` binary (`src/main.rs`, `src/cli/`) is a thin layer over these.

pub mod auth_client;
pub mod config;
pub mod control;
pub mod core;
pub mod home;
pub mod keystore;
pub mod metrics;
pub mod overlay;
pub mod peer;
pub mod sip;
pub mod stop;
pub mod supernode;
pub mod web;
