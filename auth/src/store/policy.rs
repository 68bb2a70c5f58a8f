//! Recipient policies: who may leave a user voicemail (paper §5, SPIT).
//!
//! Each user's [`Policy`] (the `policies` row; no row means the default) is
//! a mode, an anonymous opt-in, a contacts list and a block list. The group
//! checks it for every recipient when it issues a storage grant, before a
//! single byte is stored: [`admit`] is that rule, pure, and the state
//! machine runs it in log order, so a change applies to every grant ordered
//! after it and to none before.

use std::collections::BTreeSet;

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::schema::{POLICIES, USERS};
use super::{Store, StoreError, corrupt, db_err};

/// Most contacts one user may list.
pub const MAX_CONTACTS: usize = 1000;
/// Most senders one user may block, by name and hidden together.
pub const MAX_BLOCKED: usize = 1000;

pub use crate::config::PolicyMode;

/// A user's policy (the `policies` row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The mode; `None` follows the group's default (`spam.default_mode`).
    pub mode: Option<PolicyMode>,
    /// Whether voicemail with a hidden sender is taken.
    pub accept_anonymous: bool,
    /// Senders taken under any mode, without first-contact limits.
    pub contacts: BTreeSet<String>,
    /// Senders never taken.
    pub blocked: BTreeSet<String>,
    /// Hidden senders blocked by a report: never taken, never shown.
    pub hidden_blocked: BTreeSet<String>,
}

/// Which list an edit changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyList {
    /// The contacts.
    Contacts,
    /// The blocked senders.
    Blocked,
}

impl PolicyList {
    /// The list's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            PolicyList::Contacts => "contacts",
            PolicyList::Blocked => "blocked senders",
        }
    }

    /// The list's cap.
    pub fn cap(self) -> usize {
        match self {
            PolicyList::Contacts => MAX_CONTACTS,
            PolicyList::Blocked => MAX_BLOCKED,
        }
    }
}

/// Why an edit of a list was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EditRefusal {
    /// A name to add is not registered.
    UnknownUser(String),
    /// A name to remove is not on the list.
    NotListed(String),
    /// The list would hold more than its cap.
    OverCap {
        /// Names it would hold.
        would_hold: usize,
        /// The cap.
        cap: usize,
    },
}

/// What a sender may be told about one recipient. Blocked and
/// contacts-only read the same ([`Refusal::NotAccepted`]): a sender never
/// learns which, so a block cannot be told from a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Blocked, or a stranger to a contacts-only recipient.
    NotAccepted,
    /// Hidden sender, and the recipient does not accept that.
    NoAnonymous,
    /// A first contact from the sender already waits for the recipient.
    FirstContactWaiting,
    /// Longer than a first contact may be.
    FirstContactTooLong {
        /// The limit, bytes of the voicemail's data.
        max_bytes: u64,
    },
    /// The sender's account is younger than first contact needs.
    AccountTooNew {
        /// The minimum age, seconds.
        min_age_secs: u64,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotAccepted => f.write_str("does not accept voicemail from you"),
            Refusal::NoAnonymous => {
                f.write_str("does not accept anonymous voicemail; leave it without --anonymous")
            }
            Refusal::FirstContactWaiting => f.write_str(
                "has not heard your last voicemail yet; as a stranger you may have one waiting at a time",
            ),
            Refusal::FirstContactTooLong { max_bytes } => write!(
                f,
                "takes at most {max_bytes} bytes (about a minute of audio) from a stranger; shorten it"
            ),
            Refusal::AccountTooNew { min_age_secs } => write!(
                f,
                "takes voicemail from strangers only once their account is {min_age_secs} s old"
            ),
        }
    }
}

/// How a recipient takes a voicemail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The sender is not in the recipient's contacts ("unknown caller").
    pub stranger: bool,
    /// It comes under the first-contact limits (one waiting per sender,
    /// shorter expiry).
    pub limited: bool,
}

/// The first-contact limits the group applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstContactRules {
    /// Most bytes of voicemail data (the data shards) a first contact may have.
    pub max_bytes: u64,
    /// Longest a first contact may wait, seconds.
    pub ttl_secs: u64,
    /// Youngest account that may make a first contact, seconds.
    pub min_account_age_secs: u64,
}

/// What [`admit`] needs to know about the sender and the voicemail.
#[derive(Debug, Clone, Copy)]
pub struct Approach<'a> {
    /// The sender.
    pub sender: &'a str,
    /// Whether the sender hides from the recipients.
    pub anonymous: bool,
    /// How old the sender's account is, seconds.
    pub account_age_secs: u64,
    /// Bytes of voicemail data.
    pub data_bytes: u64,
}

/// Whether a recipient with `policy` takes this voicemail, under
/// `default_mode` when they chose none. `waiting` says whether a first
/// contact from the sender already waits for them. Pure.
///
/// In order: a block (named or hidden) refuses; a hidden sender needs the
/// opt-in; a contact is taken; under `Contacts` a stranger is refused,
/// under `Anyone` taken, and under `ContactsFirstContact` taken when the
/// account is old enough, the voicemail short enough and nothing from the
/// sender waits.
pub fn admit(
    policy: &Policy,
    default_mode: PolicyMode,
    a: &Approach<'_>,
    rules: &FirstContactRules,
    waiting: bool,
) -> Result<Accepted, Refusal> {
    if policy.blocked.contains(a.sender) || policy.hidden_blocked.contains(a.sender) {
        return Err(Refusal::NotAccepted);
    }
    if a.anonymous && !policy.accept_anonymous {
        return Err(Refusal::NoAnonymous);
    }
    if policy.contacts.contains(a.sender) {
        return Ok(Accepted {
            stranger: false,
            limited: false,
        });
    }
    match policy.mode.unwrap_or(default_mode) {
        PolicyMode::Contacts => Err(Refusal::NotAccepted),
        PolicyMode::Anyone => Ok(Accepted {
            stranger: true,
            limited: false,
        }),
        PolicyMode::ContactsFirstContact => {
            if a.account_age_secs < rules.min_account_age_secs {
                Err(Refusal::AccountTooNew {
                    min_age_secs: rules.min_account_age_secs,
                })
            } else if a.data_bytes > rules.max_bytes {
                Err(Refusal::FirstContactTooLong {
                    max_bytes: rules.max_bytes,
                })
            } else if waiting {
                Err(Refusal::FirstContactWaiting)
            } else {
                Ok(Accepted {
                    stranger: true,
                    limited: true,
                })
            }
        }
    }
}

/// `policy` with `add` and `remove` applied to `list`, or why not. Adding a
/// name already listed, or listed on the other list, is allowed (a contact
/// added to the block list stops being a contact, and the other way round).
/// `known` says whether a name is registered. Pure.
pub fn edited(
    mut policy: Policy,
    list: PolicyList,
    add: &[String],
    remove: &[String],
    known: impl Fn(&str) -> bool,
) -> Result<Policy, EditRefusal> {
    if let Some(u) = add.iter().find(|u| !known(u)) {
        return Err(EditRefusal::UnknownUser(u.clone()));
    }
    let (this, other) = match list {
        PolicyList::Contacts => (&mut policy.contacts, &mut policy.blocked),
        PolicyList::Blocked => (&mut policy.blocked, &mut policy.contacts),
    };
    for u in remove {
        if !this.remove(u) {
            return Err(EditRefusal::NotListed(u.clone()));
        }
    }
    for u in add {
        other.remove(u);
        this.insert(u.clone());
    }
    let held = match list {
        PolicyList::Contacts => policy.contacts.len(),
        PolicyList::Blocked => policy.blocked.len() + policy.hidden_blocked.len(),
    };
    if held > list.cap() {
        return Err(EditRefusal::OverCap {
            would_hold: held,
            cap: list.cap(),
        });
    }
    Ok(policy)
}

fn decode(user: &str, bytes: &[u8]) -> Result<Policy, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt("policies", user, e))
}

impl Store {
    /// `user`'s policy (the default when they never set one).
    pub fn policy(&self, user: &str) -> Result<Policy, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(POLICIES).map_err(db_err)?;
            t.get(user)
                .map_err(db_err)?
                .map_or(Ok(Policy::default()), |v| decode(user, v.value()))
        })
    }

    /// `user`'s policy, inside a write transaction.
    pub(super) fn policy_in(
        &self,
        tx: &WriteTransaction,
        user: &str,
    ) -> Result<Policy, StoreError> {
        let t = tx.open_table(POLICIES).map_err(db_err)?;
        t.get(user)
            .map_err(db_err)?
            .map_or(Ok(Policy::default()), |v| decode(user, v.value()))
    }

    pub(super) fn put_policy(
        &self,
        tx: &WriteTransaction,
        user: &str,
        policy: &Policy,
    ) -> Result<(), StoreError> {
        let mut t = tx.open_table(POLICIES).map_err(db_err)?;
        if *policy == Policy::default() {
            t.remove(user).map_err(db_err)?;
        } else {
            t.insert(
                user,
                postcard::to_allocvec(policy).expect("encodes").as_slice(),
            )
            .map_err(db_err)?;
        }
        Ok(())
    }

    /// Sets `user`'s mode and anonymous opt-in (`None` keeps each); returns
    /// the policy now in force.
    pub(crate) fn set_policy(
        &self,
        tx: &WriteTransaction,
        user: &str,
        mode: Option<PolicyMode>,
        accept_anonymous: Option<bool>,
    ) -> Result<Policy, StoreError> {
        let mut policy = self.policy_in(tx, user)?;
        if mode.is_some() {
            policy.mode = mode;
        }
        if let Some(a) = accept_anonymous {
            policy.accept_anonymous = a;
        }
        self.put_policy(tx, user, &policy)?;
        Ok(policy)
    }

    /// Applies an edit of one of `user`'s lists ([`edited`]); returns the
    /// policy now in force, or why nothing changed.
    pub(crate) fn edit_policy(
        &self,
        tx: &WriteTransaction,
        user: &str,
        list: PolicyList,
        add: &[String],
        remove: &[String],
    ) -> Result<Result<Policy, EditRefusal>, StoreError> {
        let policy = self.policy_in(tx, user)?;
        let users = tx.open_table(USERS).map_err(db_err)?;
        let mut unknown = None;
        for u in add {
            if users.get(u.as_str()).map_err(db_err)?.is_none() {
                unknown = Some(u.clone());
                break;
            }
        }
        let edit = edited(policy, list, add, remove, |u| Some(u) != unknown.as_deref());
        if let Ok(p) = &edit {
            self.put_policy(tx, user, p)?;
        }
        Ok(edit)
    }
}

#[cfg(test)]
mod tests {
    //! [`admit`] under each mode, and [`edited`].

    use super::*;

    const RULES: FirstContactRules = FirstContactRules {
        max_bytes: 1000,
        ttl_secs: 3600,
        min_account_age_secs: 60,
    };

    fn approach(sender: &str) -> Approach<'_> {
        Approach {
            sender,
            anonymous: false,
            account_age_secs: 3600,
            data_bytes: 500,
        }
    }

    fn policy(mode: PolicyMode) -> Policy {
        Policy {
            mode: Some(mode),
            contacts: ["alice".to_owned()].into(),
            blocked: ["mallory".to_owned()].into(),
            ..Policy::default()
        }
    }

    /// The group default, which a chosen mode overrides.
    const D: PolicyMode = PolicyMode::Contacts;

    const CONTACT: Accepted = Accepted {
        stranger: false,
        limited: false,
    };

    #[test]
    fn each_mode_takes_contacts_and_refuses_blocked_senders() {
        for mode in [
            PolicyMode::Anyone,
            PolicyMode::Contacts,
            PolicyMode::ContactsFirstContact,
        ] {
            let p = policy(mode);
            assert_eq!(admit(&p, D, &approach("alice"), &RULES, true), Ok(CONTACT));
            assert_eq!(
                admit(&p, D, &approach("mallory"), &RULES, false),
                Err(Refusal::NotAccepted)
            );
        }
    }

    #[test]
    fn strangers_are_refused_taken_or_limited_by_mode() {
        let bob = approach("bob");
        assert_eq!(
            admit(&policy(PolicyMode::Contacts), D, &bob, &RULES, false),
            Err(Refusal::NotAccepted)
        );
        assert_eq!(
            admit(&policy(PolicyMode::Anyone), D, &bob, &RULES, true),
            Ok(Accepted {
                stranger: true,
                limited: false
            })
        );
        let fc = policy(PolicyMode::ContactsFirstContact);
        assert_eq!(
            admit(&fc, D, &bob, &RULES, false),
            Ok(Accepted {
                stranger: true,
                limited: true
            })
        );
        assert_eq!(
            admit(&fc, D, &bob, &RULES, true),
            Err(Refusal::FirstContactWaiting)
        );
        let long = Approach {
            data_bytes: 1001,
            ..bob
        };
        assert_eq!(
            admit(&fc, D, &long, &RULES, false),
            Err(Refusal::FirstContactTooLong { max_bytes: 1000 })
        );
        let young = Approach {
            account_age_secs: 59,
            ..bob
        };
        assert_eq!(
            admit(&fc, D, &young, &RULES, false),
            Err(Refusal::AccountTooNew { min_age_secs: 60 })
        );
        // Limits are inclusive.
        let edge = Approach {
            account_age_secs: 60,
            data_bytes: 1000,
            ..bob
        };
        assert!(admit(&fc, D, &edge, &RULES, false).is_ok());
    }

    #[test]
    fn a_user_without_a_mode_follows_the_group_default() {
        let p = Policy::default();
        let bob = approach("bob");
        assert_eq!(
            admit(&p, PolicyMode::Contacts, &bob, &RULES, false),
            Err(Refusal::NotAccepted)
        );
        assert!(admit(&p, PolicyMode::Anyone, &bob, &RULES, false).is_ok());
    }

    #[test]
    fn a_hidden_sender_needs_the_opt_in_and_a_hidden_block_refuses() {
        let hidden = Approach {
            anonymous: true,
            ..approach("alice")
        };
        let mut p = policy(PolicyMode::Anyone);
        assert_eq!(
            admit(&p, D, &hidden, &RULES, false),
            Err(Refusal::NoAnonymous)
        );
        p.accept_anonymous = true;
        assert_eq!(admit(&p, D, &hidden, &RULES, false), Ok(CONTACT));
        p.hidden_blocked.insert("alice".into());
        assert_eq!(
            admit(&p, D, &hidden, &RULES, false),
            Err(Refusal::NotAccepted)
        );
    }

    #[test]
    fn edits_check_names_and_caps_and_move_names_between_lists() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = policy(PolicyMode::ContactsFirstContact);
        let known = |u: &str| u != "nobody";
        assert_eq!(
            edited(
                p.clone(),
                PolicyList::Contacts,
                &names(&["nobody"]),
                &[],
                known
            ),
            Err(EditRefusal::UnknownUser("nobody".into()))
        );
        assert_eq!(
            edited(
                p.clone(),
                PolicyList::Contacts,
                &[],
                &names(&["bob"]),
                known
            ),
            Err(EditRefusal::NotListed("bob".into()))
        );
        // Blocking a contact drops them from the contacts.
        let q = edited(
            p.clone(),
            PolicyList::Blocked,
            &names(&["alice"]),
            &[],
            known,
        )
        .unwrap();
        assert!(q.contacts.is_empty());
        assert_eq!(q.blocked.len(), 2);
        let q = edited(q, PolicyList::Blocked, &[], &names(&["mallory"]), known).unwrap();
        assert_eq!(q.blocked, ["alice".to_owned()].into());
        let many: Vec<String> = (0..MAX_CONTACTS).map(|i| format!("u{i}")).collect();
        assert_eq!(
            edited(p, PolicyList::Contacts, &many, &[], known),
            Err(EditRefusal::OverCap {
                would_hold: MAX_CONTACTS + 1,
                cap: MAX_CONTACTS
            })
        );
    }
}
