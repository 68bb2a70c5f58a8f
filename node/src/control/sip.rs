//! `SipStatus` of the control API: the SIP front's status as protobuf.

use vmail_proto::control_pb as pb;

use crate::sip::{CallKind, SipStatus};

/// The SIP front's registrations, subscriptions, calls and lamp.
pub(super) fn status_pb(s: SipStatus) -> pb::SipStatusResponse {
    let now = vmail_proto::unix_now();
    pb::SipStatusResponse {
        listen: s.listen.to_string(),
        user: s.user.unwrap_or_default(),
        password_set: s.password_set,
        bindings: s
            .bindings
            .iter()
            .map(|b| pb::SipBinding {
                contact: b.contact.clone(),
                expires_in_secs: b.expires_at.saturating_sub(now),
            })
            .collect(),
        subscriptions: s
            .subscriptions
            .iter()
            .map(|b| pb::SipSubscription {
                contact: b.contact.clone(),
                expires_in_secs: b.expires_at.saturating_sub(now),
            })
            .collect(),
        calls: s
            .calls
            .iter()
            .map(|c| pb::SipCall {
                kind: match &c.kind {
                    CallKind::Playback => "playback".into(),
                    CallKind::Record(u) => format!("record for {u}"),
                },
                media: c.media.to_string(),
                duration_ms: c.duration.as_millis() as u64,
            })
            .collect(),
        new_messages: s.summary.new,
        old_messages: s.summary.old,
        refused: s
            .refused
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
    }
}
