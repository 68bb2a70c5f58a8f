//! The TLS crypto provider of the process.
//!
//! rustls picks its provider itself only when exactly one is built in. A
//! peer links two: ring (tonic's `tls-ring`) and aws-lc-rs (QUIC through
//! libp2p). So every TLS user, the auth server, its internal group service
//! and every gRPC client of it, installs ring first through
//! [`install_crypto_provider`].

/// Makes ring the process's TLS crypto provider. Idempotent; every TLS user
/// calls it before building a TLS config.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
