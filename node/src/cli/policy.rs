//! `vmail policy show|set`, `vmail contacts add|remove|list`, `vmail block`,
//! `vmail unblock` and `vmail report`: who may leave you voicemail. The auth
//! group holds and enforces the policy when it issues storage grants; these
//! commands read and change it there, and need no peer.

use anyhow::{Context as _, bail};
use serde::Serialize;
use tonic::Code;
use vmail_node::auth_client::{ClientError, ListEdit, Policy, PolicyChange, PolicyMode};
use vmail_proto::names::Username;

use super::Context;
use super::voicemail::parse_id;

/// Which list an edit changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum List {
    /// Contacts.
    Contacts,
    /// Blocked senders.
    Blocked,
}

impl List {
    fn noun(self) -> &'static str {
        match self {
            Self::Contacts => "contacts",
            Self::Blocked => "blocked senders",
        }
    }
}

/// Add to or remove from a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Edit {
    /// Add.
    Add,
    /// Remove.
    Remove,
}

/// What `vmail policy set` asked for, checked before any call: at least one
/// of a mode or an anonymous flag.
pub(super) fn policy_change(
    mode: Option<PolicyMode>,
    accept_anonymous: bool,
    refuse_anonymous: bool,
) -> anyhow::Result<PolicyChange> {
    let anonymous = match (accept_anonymous, refuse_anonymous) {
        (true, true) => bail!("--accept-anonymous and --refuse-anonymous contradict: give one"),
        (true, false) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    };
    if mode.is_none() && anonymous.is_none() {
        bail!(
            "nothing to change: name a mode (anyone, contacts or contacts+first-contact), --accept-anonymous or --refuse-anonymous; `vmail policy show` shows the policy in force"
        );
    }
    Ok(PolicyChange {
        mode,
        accept_anonymous: anonymous,
    })
}

/// Validated usernames for a list edit, checked before any call: at least
/// one, each well formed, none twice.
pub(super) fn usernames(names: &[String]) -> anyhow::Result<Vec<Username>> {
    if names.is_empty() {
        bail!("name at least one user");
    }
    let mut out: Vec<Username> = Vec::with_capacity(names.len());
    for n in names {
        let name = Username::parse(n)?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// The policy in `vmail policy show|set --json` and `vmail contacts list
/// --json`, and after every list edit.
#[derive(Debug, Serialize)]
struct PolicyJson {
    username: String,
    /// "anyone", "contacts" or "contacts+first-contact".
    mode: String,
    accept_anonymous: bool,
    contacts: Vec<String>,
    blocked: Vec<String>,
    /// Hidden senders blocked by your reports: counted, never named.
    hidden_blocked: u32,
    max_contacts: u32,
    max_blocked: u32,
}

impl PolicyJson {
    fn new(user: &Username, p: &Policy) -> Self {
        Self {
            username: user.to_string(),
            mode: p.mode.to_string(),
            accept_anonymous: p.accept_anonymous,
            contacts: p.contacts.clone(),
            blocked: p.blocked.clone(),
            hidden_blocked: p.hidden_blocked,
            max_contacts: p.max_contacts,
            max_blocked: p.max_blocked,
        }
    }
}

/// `vmail contacts add|remove --json`, `vmail block|unblock --json`.
#[derive(Debug, Serialize)]
struct EditJson {
    /// "contacts" or "blocked".
    list: &'static str,
    /// "add" or "remove".
    change: &'static str,
    /// The names as given, each once.
    users: Vec<String>,
    /// The policy after the change.
    policy: PolicyJson,
}

/// `vmail report --json`.
#[derive(Debug, Serialize)]
struct ReportJson {
    id: String,
    /// The blocked sender; null for a hidden one.
    sender: Option<String>,
    /// False when the sender was blocked already (the report still counts).
    newly_blocked: bool,
}

/// A mode in words for people.
fn describe(mode: PolicyMode) -> &'static str {
    match mode {
        PolicyMode::Anyone => "anyone registered may leave you voicemail",
        PolicyMode::Contacts => "only your contacts may leave you voicemail",
        PolicyMode::ContactsFirstContact => {
            "your contacts, and strangers once under first-contact limits"
        }
    }
}

/// The policy as `vmail policy show` and every change print it.
pub(super) fn policy_lines(p: &Policy) -> Vec<String> {
    let blocked = match p.hidden_blocked {
        0 => format!("{}", p.blocked.len()),
        h => format!(
            "{} (and {h} hidden sender(s) blocked by your reports)",
            p.blocked.len()
        ),
    };
    vec![
        format!("mode       {} ({})", p.mode, describe(p.mode)),
        format!(
            "anonymous  {}",
            if p.accept_anonymous {
                "accepted"
            } else {
                "refused"
            }
        ),
        format!(
            "contacts   {} of at most {}",
            p.contacts.len(),
            p.max_contacts
        ),
        format!("blocked    {blocked} of at most {}", p.max_blocked),
    ]
}

fn print_policy(p: &Policy) {
    for l in policy_lines(p) {
        outln!("{l}");
    }
}

/// An error from a list edit, with what to do about it; nothing changed.
fn edit_error(list: List, e: ClientError) -> anyhow::Error {
    let hint = match e.code() {
        Some(Code::NotFound) => "check the spelling: every name must be a registered user",
        Some(Code::InvalidArgument) => {
            "leave out your own name, and do not add and remove the same name"
        }
        Some(Code::FailedPrecondition) => match list {
            List::Contacts => "remove some with `vmail contacts remove USER...` first",
            List::Blocked => "unblock some with `vmail unblock USER...` first",
        },
        _ => "",
    };
    if hint.is_empty() {
        anyhow::anyhow!("{e}; your {} are unchanged", list.noun())
    } else {
        anyhow::anyhow!("{e}; your {} are unchanged: {hint}", list.noun())
    }
}

/// `vmail policy show`.
pub(super) async fn show(ctx: &Context) -> anyhow::Result<()> {
    let (mut client, session) = ctx.logged_in().await?;
    let p = client.get_policy().await?;
    if ctx.json {
        super::output::json(&PolicyJson::new(&session.username, &p));
        return Ok(());
    }
    outln!("policy of {}", session.username);
    print_policy(&p);
    Ok(())
}

/// `vmail policy set [MODE] [--accept-anonymous|--refuse-anonymous]`.
pub(super) async fn set(ctx: &Context, change: PolicyChange) -> anyhow::Result<()> {
    let (mut client, session) = ctx.logged_in().await?;
    let p = client
        .set_policy(change)
        .await
        .context("the policy is unchanged")?;
    if ctx.json {
        super::output::json(&PolicyJson::new(&session.username, &p));
        return Ok(());
    }
    outln!(
        "policy of {} changed; it applies to voicemail left from now on (what already waits stays)",
        session.username
    );
    print_policy(&p);
    Ok(())
}

/// `vmail contacts add|remove`, `vmail block`, `vmail unblock`.
pub(super) async fn edit(
    ctx: &Context,
    list: List,
    edit: Edit,
    names: &[String],
) -> anyhow::Result<()> {
    let names = usernames(names)?;
    let change = match edit {
        Edit::Add => ListEdit::add(names.clone()),
        Edit::Remove => ListEdit::remove(names.clone()),
    };
    let (mut client, session) = ctx.logged_in().await?;
    if names.contains(&session.username) {
        bail!(
            "{} is you: leave your own name out; your {} are unchanged",
            session.username,
            list.noun()
        );
    }
    let result = match list {
        List::Contacts => client.edit_contacts(&change).await,
        List::Blocked => client.edit_blocked(&change).await,
    };
    let p = result.map_err(|e| edit_error(list, e))?;
    if ctx.json {
        super::output::json(&EditJson {
            list: match list {
                List::Contacts => "contacts",
                List::Blocked => "blocked",
            },
            change: match edit {
                Edit::Add => "add",
                Edit::Remove => "remove",
            },
            users: names.iter().map(ToString::to_string).collect(),
            policy: PolicyJson::new(&session.username, &p),
        });
        return Ok(());
    }
    let who = names
        .iter()
        .map(Username::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    match (list, edit) {
        (List::Contacts, Edit::Add) => outln!("added to your contacts: {who}"),
        (List::Contacts, Edit::Remove) => outln!("removed from your contacts: {who}"),
        (List::Blocked, Edit::Add) => outln!("blocked: {who}"),
        (List::Blocked, Edit::Remove) => outln!("unblocked: {who}"),
    }
    match list {
        List::Contacts => outln!(
            "{} of at most {} contacts",
            p.contacts.len(),
            p.max_contacts
        ),
        List::Blocked => outln!(
            "{} of at most {} blocked",
            p.blocked.len() + p.hidden_blocked as usize,
            p.max_blocked
        ),
    }
    Ok(())
}

/// `vmail contacts list`.
pub(super) async fn list_contacts(ctx: &Context) -> anyhow::Result<()> {
    let (mut client, session) = ctx.logged_in().await?;
    let p = client.get_policy().await?;
    if ctx.json {
        super::output::json(&PolicyJson::new(&session.username, &p));
        return Ok(());
    }
    if p.contacts.is_empty() {
        outln!(
            "{} has no contacts; add one with `vmail contacts add USER`",
            session.username
        );
    } else {
        for c in &p.contacts {
            outln!("{c}");
        }
        outln!(
            "{} of at most {} contacts",
            p.contacts.len(),
            p.max_contacts
        );
    }
    if !p.blocked.is_empty() || p.hidden_blocked > 0 {
        let mut blocked = p.blocked.join(", ");
        if p.hidden_blocked > 0 {
            if !blocked.is_empty() {
                blocked.push_str(", ");
            }
            blocked.push_str(&format!("{} hidden sender(s)", p.hidden_blocked));
        }
        outln!("blocked: {blocked}");
    }
    Ok(())
}

/// What `vmail report` prints once the report is made.
pub(super) fn report_line(id: &str, sender: Option<&Username>, newly_blocked: bool) -> String {
    let who = sender.map_or_else(|| "the hidden sender".to_owned(), ToString::to_string);
    if newly_blocked {
        format!("reported {id} as spam: {who} is now blocked")
    } else {
        format!("reported {id} as spam: {who} was already blocked (the report still counts)")
    }
}

/// `vmail report ID`.
pub(super) async fn report(ctx: &Context, id: &str) -> anyhow::Result<()> {
    let id = parse_id(id)?;
    let (mut client, _) = ctx.logged_in().await?;
    let outcome = match client.report(&id).await {
        Ok(o) => o,
        Err(e) if e.code() == Some(Code::NotFound) => bail!(
            "{e}: voicemail {} was not left for you, so it cannot be reported; `vmail inbox` lists what was",
            hex::encode(id)
        ),
        Err(e) => return Err(e.into()),
    };
    if ctx.json {
        super::output::json(&ReportJson {
            id: hex::encode(id),
            sender: outcome.sender.as_ref().map(ToString::to_string),
            newly_blocked: outcome.newly_blocked,
        });
        return Ok(());
    }
    outln!(
        "{}",
        report_line(
            &hex::encode(id),
            outcome.sender.as_ref(),
            outcome.newly_blocked
        )
    );
    outln!(
        "if it is still in your inbox, `vmail discard {}` removes it without fetching it",
        hex::encode(id)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_change_needs_a_mode_or_a_flag() {
        let err = policy_change(None, false, false).unwrap_err().to_string();
        assert!(err.contains("nothing to change"), "{err}");
        assert!(policy_change(None, true, true).is_err());
        assert_eq!(
            policy_change(Some(PolicyMode::Contacts), false, false).unwrap(),
            PolicyChange {
                mode: Some(PolicyMode::Contacts),
                accept_anonymous: None
            }
        );
        assert_eq!(
            policy_change(None, false, true).unwrap().accept_anonymous,
            Some(false)
        );
        assert_eq!(
            policy_change(None, true, false).unwrap().accept_anonymous,
            Some(true)
        );
    }

    #[test]
    fn list_edits_need_valid_names() {
        assert!(
            usernames(&[])
                .unwrap_err()
                .to_string()
                .contains("at least one")
        );
        assert!(usernames(&["Bad Name".into()]).is_err());
        let names = usernames(&["bob".into(), "carol".into(), "bob".into()]).unwrap();
        assert_eq!(
            names.iter().map(Username::as_str).collect::<Vec<_>>(),
            ["bob", "carol"]
        );
    }

    #[test]
    fn a_report_names_the_blocked_sender_or_hides_them() {
        let bob = Username::parse("bob").unwrap();
        assert_eq!(
            report_line("ab", Some(&bob), true),
            "reported ab as spam: bob is now blocked"
        );
        let hidden = report_line("ab", None, false);
        assert!(
            hidden.contains("the hidden sender was already blocked"),
            "{hidden}"
        );
    }

    #[test]
    fn the_policy_shows_counts_and_caps() {
        let p = Policy {
            mode: PolicyMode::ContactsFirstContact,
            accept_anonymous: false,
            contacts: vec!["alice".into(), "bob".into()],
            blocked: vec!["spammer".into()],
            hidden_blocked: 2,
            max_contacts: 500,
            max_blocked: 1000,
        };
        let lines = policy_lines(&p).join("\n");
        assert!(lines.contains("contacts+first-contact"), "{lines}");
        assert!(lines.contains("anonymous  refused"), "{lines}");
        assert!(lines.contains("contacts   2 of at most 500"), "{lines}");
        assert!(lines.contains("blocked    1 (and 2 hidden"), "{lines}");
        assert!(lines.contains("of at most 1000"), "{lines}");
    }
}
