//! Progress and timing reports of a peer's long jobs.

use std::sync::Arc;
use std::time::Duration;

/// A stage of a long job, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Encrypting the voicemail.
    Encrypt,
    /// Uploading shards to holders (total = n × shard length).
    Upload,
    /// Downloading shards (total = k × shard length).
    Download,
    /// Decrypting it.
    Decrypt,
}

/// How far a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The stage.
    pub phase: Phase,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// Where progress goes.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// A progress sink that drops everything.
pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

/// Where the time of a job went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Key derivation, encryption or decryption, hashing.
    pub crypto: Duration,
    /// Routing table reads and DHT lookups.
    pub dht: Duration,
    /// Blob transfers.
    pub transfer: Duration,
    /// Calls to the auth servers.
    pub auth: Duration,
}
