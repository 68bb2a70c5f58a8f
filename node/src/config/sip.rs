//! `[sip]` in node.toml: where and how the SIP front (`crate::sip`) serves
//! the user's softphone, and the bounds checked at load.

use serde::{Deserialize, Serialize};

use super::InvalidValue;

/// `[sip]`: the SIP front (`node/src/sip/`) for the user's own softphone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// UDP address to serve SIP on, e.g. "127.0.0.1:5060". Unset (the
    /// default): no SIP; `vmail node run --sip ADDR` sets it.
    pub listen: Option<std::net::SocketAddr>,
    /// Digest realm. Default "vmail".
    pub realm: String,
    /// The user part that plays your voicemail. Default "voicemail".
    pub voicemail_user: String,
    /// Prefix of the user part that records for another user: with
    /// "vm-", `sip:vm-bob@…` records for bob. Default "" (any user part
    /// other than `voicemail_user` is a vmail username).
    pub record_prefix: String,
    /// Longest recording, seconds; a longer call is cut off there and
    /// what was recorded is left. Default 120; 1 to 600.
    pub max_recording_secs: u32,
    /// Most calls at once; one more gets 486 Busy Here. Default 4.
    pub max_calls: usize,
    /// Most registrations, and most subscriptions, kept. Default 16.
    pub max_bindings: usize,
    /// Shortest registration or subscription taken, seconds (423 below).
    /// Default 60.
    pub min_expires: u32,
    /// Longest, seconds; longer requests are cut to it. Default 3600.
    pub max_expires: u32,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: None,
            realm: "vmail".into(),
            voicemail_user: "voicemail".into(),
            record_prefix: String::new(),
            max_recording_secs: 120,
            max_calls: 4,
            max_bindings: 16,
            min_expires: 60,
            max_expires: 3600,
        }
    }
}

impl SipConfig {
    /// Checks the bounds, naming the key that is out of them.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let bad = |key: &str, why: String| Err(InvalidValue::Sip(format!("{key}: {why}")));
        if let Some(a) = self.listen
            && a.ip().is_unspecified()
        {
            return bad(
                "listen",
                format!(
                    "{a} names no one address, and the softphone is told where to send its media: use the address it reaches this machine on, e.g. 127.0.0.1:{}",
                    a.port()
                ),
            );
        }
        if !(1..=600).contains(&self.max_recording_secs) {
            return bad(
                "max_recording_secs",
                format!("{} is outside 1 to 600", self.max_recording_secs),
            );
        }
        if self.max_calls == 0 || self.max_bindings == 0 {
            return bad("max_calls/max_bindings", "must be at least 1".into());
        }
        if self.min_expires == 0 || self.min_expires > self.max_expires {
            return bad(
                "min_expires",
                format!(
                    "{} must be at least 1 and at most max_expires ({})",
                    self.min_expires, self.max_expires
                ),
            );
        }
        if self.realm.is_empty() || self.voicemail_user.is_empty() {
            return bad("realm/voicemail_user", "must not be empty".into());
        }
        Ok(())
    }
}
