//! The vmail peer and client library.
//!
//! - [`client`]: the auth servers' client: OPAQUE, master key, deposits, delivery;
//! - [`keystore`]: the user's identity key and current login, on disk;
//! - [`settings`]: the vmail home and where the auth servers are.
//!
//! The `vmail` binary (`src/main.rs`, `src/cli/`) is a thin layer over these.

pub mod client;
pub mod keystore;
pub mod settings;
