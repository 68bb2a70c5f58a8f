//! Voicemail metadata: what a sender states about a voicemail, shared by the
//! client, the server's store and the wire.

use serde::{Deserialize, Serialize};

use crate::pb;

/// How long a voicemail, its key deposit and its stored shards live unless
/// the sender asks otherwise: 30 days. The auth group's default expiry, and
/// the expiry a sender tells its holders.
pub const DEFAULT_VOICEMAIL_TTL_SECS: u64 = 30 * 86_400;

/// Metadata a sender attaches to a voicemail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoicemailMeta {
    /// Plaintext size in bytes.
    pub size: u64,
    /// MIME type, for example `audio/wav`.
    pub content_type: String,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Unix seconds after which the voicemail is dropped; 0 in a deposit
    /// asks for the server's default.
    pub expires_at: u64,
}

impl From<VoicemailMeta> for pb::VoicemailMetadata {
    fn from(m: VoicemailMeta) -> Self {
        Self {
            size: m.size,
            content_type: m.content_type,
            duration_ms: m.duration_ms,
            expires_at: m.expires_at,
        }
    }
}

impl From<pb::VoicemailMetadata> for VoicemailMeta {
    fn from(m: pb::VoicemailMetadata) -> Self {
        Self {
            size: m.size,
            content_type: m.content_type,
            duration_ms: m.duration_ms,
            expires_at: m.expires_at,
        }
    }
}
