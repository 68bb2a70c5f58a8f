//! The message-waiting summary a softphone's lamp shows (RFC 3842,
//! `application/simple-message-summary`): how many voicemails wait, new
//! (not played on a call to `voicemail`) and old (played on such a call
//! and kept: key 7, `#`, or a hang-up before the end). Pure.

use std::collections::HashSet;

/// The MIME type of a summary.
pub const CONTENT_TYPE: &str = "application/simple-message-summary";
/// The event package.
pub const EVENT: &str = "message-summary";

/// Voicemails waiting for the user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Not yet played on a call.
    pub new: u32,
    /// Played on a call and kept.
    pub old: u32,
}

impl Summary {
    /// The summary of `pending` voicemail ids, those in `played` (played on
    /// a call and kept) counted old.
    pub fn of<'a>(
        pending: impl IntoIterator<Item = &'a [u8; 16]>,
        played: &HashSet<[u8; 16]>,
    ) -> Self {
        pending.into_iter().fold(Summary::default(), |mut s, id| {
            if played.contains(id) {
                s.old += 1;
            } else {
                s.new += 1;
            }
            s
        })
    }

    /// Whether any voicemail waits.
    pub fn waiting(&self) -> bool {
        self.new + self.old > 0
    }

    /// The body of a NOTIFY for `account` (the user's SIP URI).
    pub fn body(&self, account: &str) -> String {
        format!(
            "Messages-Waiting: {}\r\nMessage-Account: {account}\r\nVoice-Message: {}/{} (0/0)\r\n",
            if self.waiting() { "yes" } else { "no" },
            self.new,
            self.old
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn played_voicemail_counts_old_and_the_lamp_follows_both() {
        let played: HashSet<_> = [[2; 16]].into_iter().collect();
        let s = Summary::of(&[[1; 16], [2; 16], [3; 16]], &played);
        assert_eq!(s, Summary { new: 2, old: 1 });
        assert_eq!(
            s.body("sip:alice@vmail"),
            "Messages-Waiting: yes\r\nMessage-Account: sip:alice@vmail\r\nVoice-Message: 2/1 (0/0)\r\n"
        );
        let none = Summary::of(&[], &played);
        assert!(none.body("sip:a@b").starts_with("Messages-Waiting: no\r\n"));
        assert!(Summary { new: 0, old: 1 }.waiting());
    }
}
