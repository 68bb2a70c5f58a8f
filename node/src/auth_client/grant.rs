//! Storage grants (paper §3.3, before anything is stored): what a leave
//! asks for, and the answer checked, the signed grant against the cluster
//! key and the recipients it covers against those asked for. The group
//! applies every recipient's policy here: those who refuse the sender are
//! dropped with a reason ([`Refusal`]), and the deposit must name exactly
//! the recipients left ([`Grant::recipients`]). The answer also lists the
//! group's share keys ([`Grant::share_keys`]), which the deposit splits the
//! session key among; they are checked here (`shares::grant_share_keys`),
//! and with the group key pinned, so is the group's signature over them
//! (`vmail_proto::grant::verify_roster`).

use vmail_proto::grant::{GrantedShard, StorageGrant};
use vmail_proto::names::{Recipients, Username};
use vmail_proto::pb::{self};

use vmail_proto::share::ShareKey;

use super::{AuthClient, ClientError, bearer, protocol, shares};

/// What a leave asks a storage grant for.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    /// Canonical recipients; each must be registered.
    pub recipients: Recipients,
    /// The ciphertext header's message id.
    pub message_id: [u8; 16],
    /// Shards needed to rebuild.
    pub data_shards: u8,
    /// Every shard, by index.
    pub shards: Vec<GrantedShard>,
    /// libp2p peer ids (bytes) the shards may go to.
    pub holders: Vec<Vec<u8>>,
    /// Wanted expiry, Unix seconds; 0 for the group's default lifetime.
    pub expires_at: u64,
    /// Whether the recipients see who left it.
    pub sender: SenderVisibility,
}

/// Whether a voicemail's recipients see who left it. The auth group always
/// knows, and applies the sender's quotas either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SenderVisibility {
    /// The recipients get the sender's certificate.
    #[default]
    Shown,
    /// The sender stays hidden; only recipients who accept anonymous
    /// voicemail take it.
    Hidden,
}

/// Why a recipient's policy dropped them from a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// They block the sender, or take voicemail from contacts only (which
    /// one is not told).
    NotAccepted,
    /// They do not accept anonymous voicemail.
    NoAnonymous,
    /// A first contact from the sender already waits for them.
    FirstContactWaiting,
    /// The voicemail is longer than a first contact may be.
    FirstContactTooLong,
    /// The sender's account is younger than a first contact needs.
    AccountTooNew,
    /// A reason this client does not know (a newer server).
    Other,
}

impl RefusalReason {
    fn from_pb(code: i32) -> Self {
        match pb::RefusalReason::try_from(code) {
            Ok(pb::RefusalReason::NotAccepted) => Self::NotAccepted,
            Ok(pb::RefusalReason::NoAnonymous) => Self::NoAnonymous,
            Ok(pb::RefusalReason::FirstContactWaiting) => Self::FirstContactWaiting,
            Ok(pb::RefusalReason::FirstContactTooLong) => Self::FirstContactTooLong,
            Ok(pb::RefusalReason::AccountTooNew) => Self::AccountTooNew,
            _ => Self::Other,
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotAccepted => "does not accept voicemail from you",
            Self::NoAnonymous => "does not accept anonymous voicemail",
            Self::FirstContactWaiting => "already has a first contact from you waiting",
            Self::FirstContactTooLong => "takes only short voicemail as a first contact",
            Self::AccountTooNew => "takes first contacts only from older accounts",
            Self::Other => "refused it",
        })
    }
}

/// A recipient the grant dropped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The recipient.
    pub username: String,
    /// Why, as a kind.
    pub reason: RefusalReason,
    /// Why, in the server's words for people (with the limit when there is
    /// one); empty when it gave none.
    pub detail: String,
}

impl std::fmt::Display for Refusal {
    /// `USER: why`, the form `LeaveDone.refused` carries.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}: {}", self.username, self.reason)
        } else {
            write!(f, "{}: {}", self.username, self.detail)
        }
    }
}

/// A storage grant, checked against the cluster key, and whom it covers.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The signed grant: hand it to every holder unchanged.
    pub grant: StorageGrant,
    /// The recipients it covers, canonical: the deposit must name exactly
    /// these.
    pub recipients: Recipients,
    /// The recipients dropped by their policy.
    pub refused: Vec<Refusal>,
    /// Those of `recipients` who get it as a first contact ("unknown
    /// caller" in their inbox, shorter expiry).
    pub first_contact: Vec<Username>,
    /// The group's servers and their current share keys, in the order the
    /// session key's shares must follow ([`super::NewDeposit::share_keys`]);
    /// checked: 32-byte keys, each server once, no fewer than the configured
    /// endpoints.
    pub share_keys: Vec<ShareKey>,
}

impl AuthClient {
    /// Asks for a storage grant, before anything is stored. Every recipient
    /// is checked: an unknown one comes back as NOT_FOUND naming it; those
    /// whose policy refuses the sender are dropped and listed in
    /// [`Grant::refused`], and when none is left the call fails with
    /// PERMISSION_DENIED naming every reason. A sender quota hit is
    /// RESOURCE_EXHAUSTED naming the limit and when it resets. The grant is
    /// checked against the cluster key, and its recipients against those
    /// asked for. With the group key pinned, the grant and its share keys
    /// must carry the group's signatures, so the server that answered
    /// cannot hand out share keys the log did not record.
    pub async fn request_grant(&mut self, g: &GrantRequest) -> Result<Grant, ClientError> {
        let req = pb::GrantRequest {
            recipients: g.recipients.to_strings(),
            message_id: g.message_id.to_vec(),
            data_shards: u32::from(g.data_shards),
            shards: g
                .shards
                .iter()
                .map(|s| pb::GrantedShard {
                    len: s.len,
                    sha256: s.sha256.to_vec(),
                })
                .collect(),
            holders: g.holders.clone(),
            expires_at: g.expires_at,
            anonymous: g.sender == SenderVisibility::Hidden,
        };
        let token = self.require_token()?;
        // A retry at worst issues a second grant that no deposit uses; the
        // group drops it when its upload window closes.
        let resp = self
            .call_until_known(|mut c| {
                let req = req.clone();
                async move { c.request_grant(bearer(token, req)).await }
            })
            .await
            .result?;
        let grant = StorageGrant::from_bytes(&resp.grant)
            .map_err(|e| protocol(format!("the storage grant: {e}")))?;
        grant
            .verify_pinned(&self.cluster_key, self.group_key.as_ref())
            .map_err(|e| protocol(format!("the storage grant: {e}")))?;
        let (recipients, refused, first_contact) = grant_recipients(
            &g.recipients,
            resp.recipients,
            resp.refused,
            resp.first_contact,
        )?;
        let share_keys = shares::grant_share_keys(resp.share_keys, self.configured.len())?;
        if let Some(group_key) = &self.group_key {
            vmail_proto::grant::verify_roster(
                group_key,
                grant.body.serial,
                &grant.key_id,
                &share_keys,
                &resp.roster_signature,
            )
            .map_err(|e| protocol(format!("the storage grant's share keys: {e}")))?;
        }
        Ok(Grant {
            grant,
            recipients,
            refused,
            first_contact,
            share_keys,
        })
    }
}

/// The recipients a grant answer covers, its refusals and first contacts,
/// checked against the recipients `asked` for: the covered ones must be a
/// non-empty canonical subset of them, every refused one one of the rest,
/// and every first contact one of the covered.
fn grant_recipients(
    asked: &Recipients,
    recipients: Vec<String>,
    refused: Vec<pb::RecipientRefusal>,
    first_contact: Vec<String>,
) -> Result<(Recipients, Vec<Refusal>, Vec<Username>), ClientError> {
    let bad = |what: String| protocol(format!("the storage grant: {what}"));
    let covered = Recipients::parse(&recipients)
        .map_err(|e| bad(format!("its recipient list {recipients:?}: {e}")))?;
    if covered.to_strings() != recipients {
        return Err(bad(format!(
            "its recipient list {recipients:?} is not in canonical order"
        )));
    }
    if let Some(extra) = covered.iter().find(|r| !asked.contains(r)) {
        return Err(bad(format!("it covers {extra}, who was not asked for")));
    }
    let refused: Vec<Refusal> = refused
        .into_iter()
        .map(|r| Refusal {
            reason: RefusalReason::from_pb(r.reason),
            username: r.username,
            detail: r.detail,
        })
        .collect();
    for r in &refused {
        let known = Username::parse(&r.username)
            .is_ok_and(|name| asked.contains(&name) && !covered.contains(&name));
        if !known {
            return Err(bad(format!(
                "it refuses {:?}, who was not asked for or is also covered",
                r.username
            )));
        }
    }
    let first_contact = first_contact
        .iter()
        .map(|name| match Username::parse(name) {
            Ok(u) if covered.contains(&u) => Ok(u),
            _ => Err(bad(format!(
                "it names {name:?} as a first contact, who is not among its recipients"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((covered, refused, first_contact))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(name: &str, reason: pb::RefusalReason) -> pb::RecipientRefusal {
        pb::RecipientRefusal {
            username: name.into(),
            reason: reason.into(),
            detail: String::new(),
        }
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_grant_covers_a_subset_of_those_asked_for() {
        let asked = Recipients::parse(["alice", "bob", "carol"]).unwrap();
        let (covered, refused, first) = grant_recipients(
            &asked,
            strings(&["alice", "carol"]),
            vec![refusal("bob", pb::RefusalReason::NoAnonymous)],
            strings(&["carol"]),
        )
        .unwrap();
        assert_eq!(covered.to_strings(), ["alice", "carol"]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].reason, RefusalReason::NoAnonymous);
        assert_eq!(
            refused[0].to_string(),
            "bob: does not accept anonymous voicemail"
        );
        assert_eq!(first, [Username::parse("carol").unwrap()]);

        let with_detail = Refusal {
            username: "bob".into(),
            reason: RefusalReason::FirstContactTooLong,
            detail: "a first contact may be at most 60 s".into(),
        };
        assert_eq!(
            with_detail.to_string(),
            "bob: a first contact may be at most 60 s"
        );
    }

    #[test]
    fn a_grant_outside_what_was_asked_breaks_the_protocol() {
        let asked = Recipients::parse(["alice", "bob"]).unwrap();
        let bad = [
            // Covers someone not asked for.
            (strings(&["alice", "mallory"]), vec![], vec![]),
            // Not canonical.
            (strings(&["bob", "alice"]), vec![], vec![]),
            // Covers no one.
            (vec![], vec![], vec![]),
            // Refuses someone it also covers.
            (
                strings(&["alice"]),
                vec![refusal("alice", pb::RefusalReason::NotAccepted)],
                vec![],
            ),
            // A first contact it does not cover.
            (strings(&["alice"]), vec![], strings(&["bob"])),
        ];
        for (recipients, refused, first) in bad {
            let r = grant_recipients(&asked, recipients.clone(), refused, first);
            assert!(
                matches!(r, Err(ClientError::Protocol(_))),
                "{recipients:?}: {r:?}"
            );
        }
    }
}
