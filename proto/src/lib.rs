//! vmail wire formats and the protocol primitives that clients and servers share.
//!
//! - [`account`]: the account key a user derives from OPAQUE and signs each login with;
//! - [`batch`]: one group signature over many objects (Merkle batching);
//! - [`pb`]: the generated protobuf and tonic code for `vmail.auth.v1`;
//! - [`cluster_pb`]: the auth servers' internal service;
//! - [`control_pb`]: the same for `vmail.node.v1`, the peer's local control API;
//! - [`names`]: username and recipient-list rules and their canonical encoding;
//! - [`keys`]: the key schedule (master key, session key) and key wrapping;
//! - [`meta`]: voicemail metadata;
//! - [`cert`]: user certificates, their signing bytes and offline verification;
//! - [`grant`]: storage grants and delete orders, which holders check offline;
//! - [`opaque`]: the OPAQUE cipher suite both sides must agree on;
//! - [`share`]: threshold-shared session keys, sealed to each auth server;
//! - [`tls`]: the one TLS crypto provider every TLS user in a process shares.
//!
//! Everything here is pure: no IO beyond the operating system's random source
//! and clock (and [`tls`], which sets process-wide state).
//! The byte-exact formats are written down in `docs/PROTOCOL.md`.

pub mod account;
pub mod batch;
pub mod cert;
pub mod grant;
pub mod keys;
pub mod meta;
pub mod names;
pub mod opaque;
pub mod share;
pub mod tls;

/// Generated code for the `vmail.auth.v1` package.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("vmail.auth.v1");
}

/// Generated code for `vmail.auth.cluster.v1`, the auth servers' internal
/// service (Raft and membership). Only group members use it.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod cluster_pb {
    tonic::include_proto!("vmail.auth.cluster.v1");
}

/// Generated code for `vmail.node.v1`, the peer daemon's local control API.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod control_pb {
    tonic::include_proto!("vmail.node.v1");
}

/// The encoded `FileDescriptorSet` of every vmail .proto file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/vmail_descriptor.bin"));

/// Fills an array from the operating system's random source.
///
/// # Panics
/// If the operating system cannot supply randomness. Nothing secure can be done
/// without it, so this is treated like an allocation failure.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the operating system's random source failed");
    out
}

/// The current Unix time in whole seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
