//! The `--json` documents of `vmail leave` (the receipt) and `vmail fetch`
//! (what was written where); docs/OPERATIONS.md gives their shapes.

use serde::Serialize;

/// `vmail leave --json`: the receipt.
#[derive(Debug, Serialize)]
pub(super) struct LeaveJson {
    /// The voicemail id, 32 hex digits.
    pub(super) id: String,
    pub(super) anonymous: bool,
    /// Those it was left for.
    pub(super) recipients: Vec<LeaveRecipient>,
    /// Those whose policy refused it ("USER: why").
    pub(super) refused: Vec<String>,
    /// Names given more than once in --to (each was sent it once).
    pub(super) repeated: Vec<String>,
    pub(super) size: u64,
    pub(super) content_type: String,
    /// 0 when not audio.
    pub(super) duration_ms: u64,
    pub(super) ciphertext_size: u64,
    /// "RS(4,8)" or "3 replicas".
    pub(super) redundancy: String,
    pub(super) shard_size: u64,
    /// Each shard, its identifier and its holder's whole peer id.
    pub(super) shards: Vec<LeaveShard>,
    /// Holders that failed on the way and were replaced, in words.
    pub(super) failures: Vec<String>,
    pub(super) timings_us: LeaveTimings,
}

#[derive(Debug, Serialize)]
pub(super) struct LeaveRecipient {
    pub(super) username: String,
    /// It reaches them flagged as an unknown caller.
    pub(super) first_contact: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct LeaveShard {
    pub(super) index: u32,
    /// Hex.
    pub(super) identifier: String,
    /// Base58 peer id.
    pub(super) holder: String,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct LeaveTimings {
    pub(super) dht: u64,
    pub(super) crypto: u64,
    pub(super) grant: u64,
    pub(super) transfer: u64,
    pub(super) deposit: u64,
}

/// `vmail leave --to a,b FILE`.
/// `vmail fetch --json`.
#[derive(Debug, Serialize)]
pub(super) struct FetchJson {
    /// Each voicemail saved (and acked), in order.
    pub(super) fetched: Vec<FetchedJson>,
    /// Each one that could not be fetched (`--all` goes on past them; they
    /// stay in the inbox).
    pub(super) failed: Vec<FetchFailedJson>,
}

#[derive(Debug, Serialize)]
pub(super) struct FetchedJson {
    pub(super) id: String,
    /// The sender's username; null when hidden.
    pub(super) sender: Option<String>,
    pub(super) anonymous: bool,
    pub(super) first_contact: bool,
    /// Unix seconds.
    pub(super) left_at: u64,
    pub(super) content_type: String,
    pub(super) duration_ms: u64,
    /// Bytes written.
    pub(super) size: u64,
    /// The file written, as given by --out (never overwritten).
    pub(super) path: String,
    /// SHA-256 of the file's contents, hex.
    pub(super) sha256: String,
    pub(super) redundancy: String,
    /// Whose shards rebuilt it: index and whole peer id.
    pub(super) holders: Vec<FetchHolder>,
    /// Holders skipped on the way, in words.
    pub(super) skipped: Vec<String>,
    pub(super) timings_us: FetchTimings,
    /// You were its last recipient: the key is erased and its shards
    /// deleted.
    pub(super) key_erased: bool,
    pub(super) shards_deleted: u32,
    pub(super) holders_missed: u32,
}

#[derive(Debug, Serialize)]
pub(super) struct FetchHolder {
    pub(super) index: u32,
    pub(super) holder: String,
}

#[derive(Debug, Serialize)]
pub(super) struct FetchTimings {
    pub(super) auth: u64,
    pub(super) dht: u64,
    pub(super) transfer: u64,
    pub(super) crypto: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct FetchFailedJson {
    pub(super) id: String,
    pub(super) error: String,
}
