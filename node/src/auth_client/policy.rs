//! Who may leave the user voicemail: the recipient policy (mode and the
//! anonymous opt-in), contacts and blocked senders, and spam reports. The
//! auth group enforces all of it when it issues storage grants
//! ([`AuthClient::request_grant`]); these calls only read and change it.
//!
//! Edits are all-or-nothing at the server: NOT_FOUND names an unknown user,
//! INVALID_ARGUMENT the caller's own name, a malformed one, or a name both
//! added and removed, FAILED_PRECONDITION a list that would pass its cap.

use std::fmt;
use std::str::FromStr;

use vmail_proto::names::Username;
use vmail_proto::pb::{self};

use super::{AuthClient, ClientError, bearer, protocol};

/// Whom the user takes voicemail from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    /// Anyone registered; strangers are flagged ("unknown caller") but not
    /// limited.
    Anyone,
    /// Contacts only.
    Contacts,
    /// Contacts, and strangers under first-contact limits. The group's
    /// default.
    ContactsFirstContact,
}

impl PolicyMode {
    /// Every mode, in the order the CLI lists them.
    pub const ALL: [PolicyMode; 3] = [
        PolicyMode::Anyone,
        PolicyMode::Contacts,
        PolicyMode::ContactsFirstContact,
    ];

    /// The mode's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anyone => "anyone",
            Self::Contacts => "contacts",
            Self::ContactsFirstContact => "contacts+first-contact",
        }
    }

    fn to_pb(self) -> pb::PolicyMode {
        match self {
            Self::Anyone => pb::PolicyMode::Anyone,
            Self::Contacts => pb::PolicyMode::Contacts,
            Self::ContactsFirstContact => pb::PolicyMode::ContactsFirstContact,
        }
    }

    fn from_pb(code: i32) -> Result<Self, ClientError> {
        match pb::PolicyMode::try_from(code) {
            Ok(pb::PolicyMode::Anyone) => Ok(Self::Anyone),
            Ok(pb::PolicyMode::Contacts) => Ok(Self::Contacts),
            Ok(pb::PolicyMode::ContactsFirstContact) => Ok(Self::ContactsFirstContact),
            _ => Err(protocol(format!("unknown policy mode {code}"))),
        }
    }
}

impl fmt::Display for PolicyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy mode name that is none of [`PolicyMode::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a policy mode: use anyone, contacts or contacts+first-contact")]
pub struct BadPolicyMode(pub String);

impl FromStr for PolicyMode {
    type Err = BadPolicyMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == wanted)
            .ok_or_else(|| BadPolicyMode(s.to_owned()))
    }
}

/// The user's recipient policy as the group holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Whom the user takes voicemail from.
    pub mode: PolicyMode,
    /// Whether the user takes voicemail from hidden senders.
    pub accept_anonymous: bool,
    /// Contacts, sorted.
    pub contacts: Vec<String>,
    /// Blocked senders, sorted.
    pub blocked: Vec<String>,
    /// Hidden senders blocked by a report: counted, never named.
    pub hidden_blocked: u32,
    /// The most contacts the user may have.
    pub max_contacts: u32,
    /// The most senders the user may block.
    pub max_blocked: u32,
}

impl TryFrom<pb::Policy> for Policy {
    type Error = ClientError;

    fn try_from(p: pb::Policy) -> Result<Self, ClientError> {
        Ok(Self {
            mode: PolicyMode::from_pb(p.mode)?,
            accept_anonymous: p.accept_anonymous,
            contacts: p.contacts,
            blocked: p.blocked,
            hidden_blocked: p.hidden_blocked,
            max_contacts: p.max_contacts,
            max_blocked: p.max_blocked,
        })
    }
}

/// A change to the policy: `None` keeps what is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyChange {
    /// The new mode.
    pub mode: Option<PolicyMode>,
    /// The new anonymous opt-in.
    pub accept_anonymous: Option<bool>,
}

/// Names to add to and remove from a list (contacts or blocked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListEdit {
    /// Names to add.
    pub add: Vec<Username>,
    /// Names to remove.
    pub remove: Vec<Username>,
}

impl ListEdit {
    /// An edit adding `names`.
    pub fn add(names: Vec<Username>) -> Self {
        Self {
            add: names,
            remove: Vec::new(),
        }
    }

    /// An edit removing `names`.
    pub fn remove(names: Vec<Username>) -> Self {
        Self {
            add: Vec::new(),
            remove: names,
        }
    }

    fn to_pb(&self) -> pb::EditListRequest {
        pb::EditListRequest {
            add: self.add.iter().map(ToString::to_string).collect(),
            remove: self.remove.iter().map(ToString::to_string).collect(),
        }
    }
}

/// What a spam report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOutcome {
    /// The sender now blocked; `None` when the sender was hidden (blocked
    /// too, but not named).
    pub sender: Option<Username>,
    /// False when the sender was already blocked (the report still counts,
    /// once per reporter).
    pub newly_blocked: bool,
}

impl AuthClient {
    /// The user's recipient policy, contacts and blocked senders.
    pub async fn get_policy(&mut self) -> Result<Policy, ClientError> {
        let token = self.require_token()?;
        self.call(|mut c| async move { c.get_policy(bearer(token, pb::GetPolicyRequest {})).await })
            .await
            .result?
            .try_into()
    }

    /// Changes the mode, the anonymous opt-in, or both; the policy in
    /// force after it. It applies to grants issued from now on.
    pub async fn set_policy(&mut self, change: PolicyChange) -> Result<Policy, ClientError> {
        let token = self.require_token()?;
        let req = pb::SetPolicyRequest {
            mode: change
                .mode
                .map_or(pb::PolicyMode::Unspecified, PolicyMode::to_pb)
                .into(),
            accept_anonymous: change.accept_anonymous,
        };
        // Setting the same values again changes nothing: safe to repeat.
        self.call_until_known(|mut c| async move { c.set_policy(bearer(token, req)).await })
            .await
            .result?
            .try_into()
    }

    /// Adds and removes contacts, all or nothing; the policy after it.
    pub async fn edit_contacts(&mut self, edit: &ListEdit) -> Result<Policy, ClientError> {
        let token = self.require_token()?;
        let req = edit.to_pb();
        self.call(|mut c| {
            let req = req.clone();
            async move { c.edit_contacts(bearer(token, req)).await }
        })
        .await
        .result?
        .try_into()
    }

    /// Blocks and unblocks senders, all or nothing; the policy after it.
    pub async fn edit_blocked(&mut self, edit: &ListEdit) -> Result<Policy, ClientError> {
        let token = self.require_token()?;
        let req = edit.to_pb();
        self.call(|mut c| {
            let req = req.clone();
            async move { c.edit_blocked(bearer(token, req)).await }
        })
        .await
        .result?
        .try_into()
    }

    /// Reports voicemail `id`, which the user received, as spam: its sender
    /// is blocked (a hidden one too, unnamed) and loses standing. NOT_FOUND
    /// when the user never received it.
    pub async fn report(&mut self, id: &[u8; 16]) -> Result<ReportOutcome, ClientError> {
        let token = self.require_token()?;
        let req = pb::ReportRequest {
            voicemail_id: id.to_vec(),
        };
        // A report counts once per reporter, so a repeat is harmless.
        let r = self
            .call_until_known(|mut c| {
                let req = req.clone();
                async move { c.report(bearer(token, req)).await }
            })
            .await
            .result?;
        let sender = if r.sender.is_empty() {
            None
        } else {
            Some(
                Username::parse(&r.sender)
                    .map_err(|e| protocol(format!("the report names a malformed sender: {e}")))?,
            )
        };
        Ok(ReportOutcome {
            sender,
            newly_blocked: r.newly_blocked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_modes_parse_from_their_names() {
        for m in PolicyMode::ALL {
            assert_eq!(m.as_str().parse::<PolicyMode>(), Ok(m));
            assert_eq!(m.to_string().parse::<PolicyMode>(), Ok(m));
            assert_eq!(PolicyMode::from_pb(m.to_pb().into()).unwrap(), m);
        }
        assert_eq!(
            "Contacts+First-Contact".parse::<PolicyMode>(),
            Ok(PolicyMode::ContactsFirstContact)
        );
        let err = "friends".parse::<PolicyMode>().unwrap_err().to_string();
        assert!(err.contains("\"friends\"") && err.contains("contacts+first-contact"));
        assert!(PolicyMode::from_pb(pb::PolicyMode::Unspecified.into()).is_err());
    }

    #[test]
    fn a_policy_with_an_unknown_mode_breaks_the_protocol() {
        let p = pb::Policy {
            mode: 42,
            ..Default::default()
        };
        assert!(matches!(Policy::try_from(p), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn a_policy_change_keeps_what_it_does_not_name() {
        let edit = ListEdit::add(vec![Username::parse("alice").unwrap()]);
        assert_eq!(edit.to_pb().add, vec!["alice".to_owned()]);
        assert!(edit.to_pb().remove.is_empty());
        assert_eq!(PolicyChange::default().mode, None);
    }
}
