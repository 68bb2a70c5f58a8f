//! The vmail authentication server.
//!
//! The one trusted party of the paper (§2.1, §3.1, §3.3): it registers users
//! with OPAQUE, negotiates a master key with each at login, certifies their
//! identity keys, and keeps each voicemail's session key and locator for the
//! recipients its sender named.
//!
//! - [`cluster`]: replication across the group with Raft;
//! - [`config`]: the server config file;
//! - [`datadir`]: creating and loading the data directory;
//! - [`enroll`]: unattended group formation through a shared directory;
//! - [`store`]: the redb database, with secrets sealed under the data key;
//! - [`service`]: the domain logic, free of gRPC types;
//! - [`grpc`]: the thin tonic adapter;
//! - [`server`]: TLS, health, reflection and the serve loop.

pub mod cluster;
pub mod config;
pub mod datadir;
pub mod enroll;
pub mod grpc;
pub mod server;
pub mod service;
pub mod store;
