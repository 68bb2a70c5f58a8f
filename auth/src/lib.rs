//! The vmail authentication server.
//!
//! The one trusted party of the paper (§2.1, §3.1, §3.3): it registers users
//! with OPAQUE, negotiates a master key with each at login, certifies their
//! identity keys, and keeps each voicemail's locator for the recipients its
//! sender named, with its session key split among the servers: each server
//! holds one share, sealed to its own share key, and hands it (resealed to
//! the recipient's inbox key) only to a recipient, so no single server ever
//! holds a session key.
//!
//! - [`cluster`]: replication across the group with Raft;
//! - [`config`]: the server config file;
//! - [`datadir`]: creating and loading the data directory;
//! - [`enroll`]: unattended group formation through a shared directory;
//! - [`keys`]: the group's secrets and a server's keys;
//! - [`metrics`]: Prometheus metrics and the `/metrics` endpoint;
//! - [`store`]: the redb database, with secrets sealed under the data key;
//! - [`service`]: the domain logic, free of gRPC types;
//! - [`grpc`]: the thin tonic adapter;
//! - [`server`]: TLS, health, reflection and the serve loop;
//! - [`threshold`]: FROST threshold signing by the group (not wired in yet);
//! - [`tls`]: the TLS material of the group's internal service.

pub mod cluster;
pub mod config;
pub mod datadir;
pub mod enroll;
pub mod grpc;
pub mod keys;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod threshold;
pub mod tls;
