//! The database's tables, its schema version and the `meta` keys that tie
//! it to its key files.

use redb::TableDefinition;

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u64 = 2;

/// `meta` key of an empty blob sealed under the data key: proves the data key fits.
pub(super) const DATA_KEY_CHECK: &str = "vmail/v1/data-key-check";
/// `meta` key of the OPAQUE server public key the password files depend on.
pub(super) const OPAQUE_PUBLIC_KEY: &str = "opaque_public_key";
/// `meta` key of the cluster public key that signed the stored certificates.
pub(super) const CLUSTER_PUBLIC_KEY: &str = "cluster_public_key";

pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
pub(super) const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
pub(super) const VOICEMAILS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("voicemails");
pub(super) const GRANTS: TableDefinition<(&str, &[u8]), ()> = TableDefinition::new("grants");
pub(super) const REQUESTS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("requests");
pub(super) const INVITES: TableDefinition<&str, &str> = TableDefinition::new("invites");
pub(super) const WAITING: TableDefinition<&str, u64> = TableDefinition::new("waiting");
/// The Raft log: index → postcard-encoded entry.
pub(crate) const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft's own durable state: vote, committed, purged, applied, snapshot, node id.
pub(crate) const RAFT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft");
