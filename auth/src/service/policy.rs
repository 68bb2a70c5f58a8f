//! Spam control at the key-issuing point (paper §5, SPIT): a user's policy
//! (mode, anonymous opt-in, contacts, blocks), reports, and the sender
//! quotas as the user sees them. The checks themselves run when a grant
//! applies (`crate::store::admit`, `crate::store::Ledger::charge`); this
//! module checks requests ([`validate_edit`], pure) and proposes changes.

use vmail_proto::names::Username;

use super::AuthService;
use super::error::{AuthError, invalid};
use crate::cluster::{Command, Reply};
use crate::config::ServerConfig;
use crate::store::{
    Allowance, EditRefusal, FirstContactRules, GrantPolicy, Ledger, Policy, PolicyList, PolicyMode,
    ReportOutcome, SenderLimits, Session, VoicemailId,
};

/// The grant policy the leader proposes under `config`.
pub fn grant_policy(config: &ServerConfig, anonymous: bool) -> GrantPolicy {
    let s = &config.spam;
    GrantPolicy {
        default_mode: s.default_mode,
        anonymous,
        limits: SenderLimits {
            voicemails_per_hour: s.voicemails_per_hour,
            new_recipients_per_day: s.new_recipients_per_day,
            max_outstanding_bytes: s.max_outstanding_bytes,
        },
        first_contact: FirstContactRules {
            max_bytes: s.first_contact_max_bytes,
            ttl_secs: s.first_contact_ttl_secs.min(config.max_grant_ttl_secs()),
            min_account_age_secs: s.first_contact_min_account_age_secs,
        },
    }
}

/// Checks an edit of one of `caller`'s lists: at least one name, every
/// name well formed and not the caller's own, none both added and removed,
/// none twice. Returns the names, canonical. Pure.
pub fn validate_edit(
    caller: &str,
    add: &[String],
    remove: &[String],
) -> Result<(Vec<String>, Vec<String>), AuthError> {
    if add.is_empty() && remove.is_empty() {
        return Err(invalid(
            "add",
            "nothing to change: name at least one user to add or remove",
        ));
    }
    let parse = |field: &'static str, names: &[String]| {
        let mut out: Vec<String> = Vec::with_capacity(names.len());
        for n in names {
            let u = Username::parse(n).map_err(|e| invalid(field, e.to_string()))?;
            if u.as_str() == caller {
                return Err(invalid(
                    field,
                    format!("{caller:?} is you: a policy names other users"),
                ));
            }
            if out.iter().any(|o| o == u.as_str()) {
                return Err(invalid(field, format!("{n:?} is named twice")));
            }
            out.push(u.as_str().to_owned());
        }
        Ok(out)
    };
    let add = parse("add", add)?;
    let remove = parse("remove", remove)?;
    if let Some(both) = add.iter().find(|a| remove.contains(a)) {
        return Err(invalid(
            "remove",
            format!("{both:?} is both added and removed; name each user once"),
        ));
    }
    Ok((add, remove))
}

/// What a report did, as the reporter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// The sender, unless they were hidden.
    pub sender: Option<String>,
    /// Whether the report added them to the block list.
    pub newly_blocked: bool,
}

impl AuthService {
    /// `p` with the group's default mode filled in when the user chose none.
    fn in_force(&self, mut p: Policy) -> Policy {
        p.mode.get_or_insert(self.config.spam.default_mode);
        p
    }

    /// The caller's policy, from this server's state, with the mode in
    /// force.
    pub async fn policy(&self, session: &Session) -> Result<Policy, AuthError> {
        let user = session.username.clone();
        let p = self.db(move |s| s.policy(&user)).await?;
        Ok(self.in_force(p))
    }

    /// Sets the caller's mode, anonymous opt-in, or both; returns the
    /// policy now in force.
    pub async fn set_policy(
        &self,
        session: &Session,
        mode: Option<PolicyMode>,
        accept_anonymous: Option<bool>,
    ) -> Result<Policy, AuthError> {
        if mode.is_none() && accept_anonymous.is_none() {
            return Err(invalid(
                "mode",
                "nothing to change: give a mode, accept_anonymous, or both",
            ));
        }
        self.charge_write(&session.username)?;
        match self
            .propose(Command::SetPolicy {
                username: session.username.clone(),
                mode,
                accept_anonymous,
            })
            .await?
        {
            Reply::Policy(p) => {
                tracing::info!(user = %session.username, mode = ?p.mode, anonymous = p.accept_anonymous, "policy set");
                Ok(self.in_force(p))
            }
            other => Err(AuthError::Apply(format!(
                "unexpected reply {other:?} to a policy change"
            ))),
        }
    }

    /// Adds and removes names on one of the caller's lists; returns the
    /// policy now in force. Nothing changes on any error.
    pub async fn edit_policy(
        &self,
        session: &Session,
        list: PolicyList,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<Policy, AuthError> {
        let (add, remove) = validate_edit(&session.username, &add, &remove)?;
        self.charge_write(&session.username)?;
        let reply = self
            .propose(Command::EditPolicy {
                username: session.username.clone(),
                list,
                add,
                remove,
            })
            .await?;
        match reply {
            Reply::PolicyEdited(Ok(p)) => Ok(self.in_force(p)),
            Reply::PolicyEdited(Err(refusal)) => Err(match refusal {
                EditRefusal::UnknownUser(u) => AuthError::UnknownUser(u),
                EditRefusal::NotListed(user) => AuthError::NotListed {
                    user,
                    list: list.name(),
                },
                EditRefusal::OverCap { would_hold, cap } => AuthError::ListFull {
                    list: list.name(),
                    would_hold,
                    cap,
                },
            }),
            other => Err(AuthError::Apply(format!(
                "unexpected reply {other:?} to a policy edit"
            ))),
        }
    }

    /// The caller reports voicemail `id` as spam.
    pub async fn report(&self, session: &Session, id: &[u8]) -> Result<Reported, AuthError> {
        let id: VoicemailId = id
            .try_into()
            .map_err(|_| invalid("voicemail_id", format!("{} bytes, expected 16", id.len())))?;
        self.charge_write(&session.username)?;
        let reply = self
            .propose(Command::Report {
                reporter: session.username.clone(),
                id,
                now: self.now(),
            })
            .await?;
        match reply {
            Reply::Reported(ReportOutcome::NotReceived) => {
                Err(AuthError::NotReceived(hex::encode(id)))
            }
            Reply::Reported(ReportOutcome::Reported {
                sender,
                newly_blocked,
                repeat,
            }) => {
                tracing::info!(reporter = %session.username, id = %hex::encode(id), newly_blocked, repeat, "spam report");
                Ok(Reported {
                    sender,
                    newly_blocked,
                })
            }
            other => Err(AuthError::Apply(format!(
                "unexpected reply {other:?} to a report"
            ))),
        }
    }

    /// `username`'s sender quotas as they stand now, and how many
    /// recipients reported them.
    pub async fn allowances(&self, username: &str) -> Result<([Allowance; 3], u32), AuthError> {
        let user = username.to_owned();
        let ledger: Ledger = self.db(move |s| s.ledger(&user)).await?;
        let limits = grant_policy(&self.config, false).limits;
        Ok((ledger.allowances(limits, self.now()), ledger.reports))
    }
}

#[cfg(test)]
mod tests {
    //! [`validate_edit`]: every bad edit is named and nothing reaches the log.

    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn refused(add: &[&str], remove: &[&str]) -> (&'static str, String) {
        match validate_edit("carol", &names(add), &names(remove)) {
            Err(AuthError::InvalidArgument { field, why }) => (field, why),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_good_edit_passes() {
        let (a, r) = validate_edit("carol", &names(&["alice", "bob"]), &names(&["dave"])).unwrap();
        assert_eq!((a, r), (names(&["alice", "bob"]), names(&["dave"])));
    }

    #[test]
    fn bad_edits_are_named() {
        assert!(refused(&[], &[]).1.contains("nothing to change"));
        assert_eq!(refused(&["carol"], &[]).0, "add");
        assert!(refused(&["carol"], &[]).1.contains("is you"));
        assert_eq!(refused(&[], &["carol"]).0, "remove");
        assert!(refused(&["bob", "bob"], &[]).1.contains("named twice"));
        let (field, why) = refused(&["bob"], &["bob"]);
        assert_eq!(field, "remove");
        assert!(why.contains("both added and removed"), "{why}");
        assert_eq!(refused(&["Not A Name"], &[]).0, "add");
    }
}
