//! Storage grants: checking a RequestGrant ([`validate_grant_request`]),
//! its expiry rules, and issuing the grant through the group.
//!
//! The grant's expiry is also held to the shortest retention among the
//! recipients (`super::retention`).
//!
//! A sender asks for a grant before it stores any byte of a voicemail on
//! holders; the holders store only shards a grant covers, and the deposit
//! that follows names the grant ([`super::Deposit::grant_serial`]). The
//! cluster key signs the grant at apply time, so every member stores the
//! same row and a retry after a leader change cannot mint two serials for
//! one entry; t servers then co-sign it with the group key
//! (`AuthService::co_sign`).

use vmail_proto::grant::{
    GrantedShard, MAX_GRANT_HOLDERS, MAX_GRANT_SHARDS, MAX_HOLDER_ID_LEN, StorageGrant,
    UPLOAD_WINDOW_SECS,
};
use vmail_proto::names::Recipients;
use vmail_proto::share::ShareKey;

use super::error::{AuthError, invalid};
use super::{AuthService, SignTarget};
use crate::cluster::{Command, Reply};
use crate::config::ServerConfig;
use crate::store::{Accepted, GrantOutcome, GrantTerms, Refusal, Session};

/// Length of a message id, bytes.
pub const MESSAGE_ID_LEN: usize = 16;
/// Length of a shard's SHA-256, bytes.
pub const SHA256_LEN: usize = 32;

/// A request for a storage grant.
#[derive(Debug, Clone, Default)]
pub struct GrantRequest {
    /// Recipient usernames, as the deposit will name them.
    pub recipients: Vec<String>,
    /// The ciphertext header's message id.
    pub message_id: Vec<u8>,
    /// Shards needed to rebuild.
    pub data_shards: u32,
    /// Every shard, by index.
    pub shards: Vec<ShardRequest>,
    /// Peer ids the shards may be placed on.
    pub holders: Vec<Vec<u8>>,
    /// Unix seconds the sender wants the shards kept until; 0 asks for the
    /// server's default voicemail lifetime.
    pub expires_at: u64,
    /// Hide the sender from the recipients.
    pub anonymous: bool,
}

/// A grant issued: the signed grant, and how each recipient took it.
#[derive(Debug, Clone)]
pub struct Granted {
    /// The signed grant.
    pub grant: StorageGrant,
    /// The recipients it covers, canonical order; the deposit names exactly
    /// these.
    pub recipients: Vec<(String, Accepted)>,
    /// The recipients dropped, each with why.
    pub refused: Vec<(String, Refusal)>,
    /// The share keys the log recorded with the grant (each voter's newest
    /// when it was issued, by node id): share i of the session key is
    /// sealed to `share_keys[i - 1]`.
    pub share_keys: Vec<ShareKey>,
    /// The group's signature over them (docs/PROTOCOL.md §7.13), when t
    /// servers gave it.
    pub roster_signature: Option<ed25519_dalek::Signature>,
}

/// One shard of a [`GrantRequest`].
#[derive(Debug, Clone, Default)]
pub struct ShardRequest {
    /// Length in bytes.
    pub len: u64,
    /// SHA-256 of the shard.
    pub sha256: Vec<u8>,
}

/// Checks a grant request against the protocol's limits and resolves its
/// times at `now`: the recipients in canonical order, and the terms of the
/// grant. Fields are checked in this order, and the first bad one is named:
/// recipients, message_id, shards, data_shards (which depends on the shard
/// count), holders, expires_at.
///
/// The expiry is the one asked for (0: `default_voicemail_ttl_secs` from
/// now), capped at `now + ServerConfig::max_grant_ttl_secs`; one in the
/// past is refused. The upload window closes `UPLOAD_WINDOW_SECS` after
/// `now`, or at the expiry if that comes first. Pure: the service calls it
/// before it proposes anything.
pub fn validate_grant_request(
    r: &GrantRequest,
    now: u64,
    config: &ServerConfig,
) -> Result<(Recipients, GrantTerms), AuthError> {
    let recipients =
        Recipients::parse(&r.recipients).map_err(|e| invalid("recipients", e.to_string()))?;
    let message_id: [u8; MESSAGE_ID_LEN] = r.message_id.as_slice().try_into().map_err(|_| {
        invalid(
            "message_id",
            format!("{} bytes, expected {MESSAGE_ID_LEN}", r.message_id.len()),
        )
    })?;
    let n = r.shards.len();
    if n == 0 || n > MAX_GRANT_SHARDS {
        return Err(invalid(
            "shards",
            format!("{n} shards, 1 to {MAX_GRANT_SHARDS} allowed"),
        ));
    }
    let mut shards = Vec::with_capacity(n);
    for (i, s) in r.shards.iter().enumerate() {
        if s.len == 0 || s.len > config.max_shard_bytes {
            return Err(invalid(
                "shards",
                format!(
                    "shard {i} is {} bytes, 1 to {} allowed (max_shard_bytes)",
                    s.len, config.max_shard_bytes
                ),
            ));
        }
        let sha256: [u8; SHA256_LEN] = s.sha256.as_slice().try_into().map_err(|_| {
            invalid(
                "shards",
                format!(
                    "shard {i}'s sha256 is {} bytes, expected {SHA256_LEN}",
                    s.sha256.len()
                ),
            )
        })?;
        shards.push(GrantedShard { len: s.len, sha256 });
    }
    let data_shards = match u8::try_from(r.data_shards) {
        Ok(k) if k >= 1 && usize::from(k) <= n => k,
        _ => {
            return Err(invalid(
                "data_shards",
                format!("{} of {n} shards; 1 to {n} allowed", r.data_shards),
            ));
        }
    };
    let h = r.holders.len();
    if h == 0 || h > MAX_GRANT_HOLDERS {
        return Err(invalid(
            "holders",
            format!("{h} holders, 1 to {MAX_GRANT_HOLDERS} allowed"),
        ));
    }
    if let Some((i, p)) = r
        .holders
        .iter()
        .enumerate()
        .find(|(_, p)| p.is_empty() || p.len() > MAX_HOLDER_ID_LEN)
    {
        return Err(invalid(
            "holders",
            format!(
                "holder {i} is {} bytes, 1 to {MAX_HOLDER_ID_LEN} allowed (a libp2p peer id)",
                p.len()
            ),
        ));
    }
    let cap = now.saturating_add(config.max_grant_ttl_secs());
    let expires_at = match r.expires_at {
        0 => now.saturating_add(config.default_voicemail_ttl_secs),
        t if t <= now => {
            return Err(invalid(
                "expires_at",
                format!("{t} is in the past (now {now}); send 0 for the server's default"),
            ));
        }
        t => t,
    }
    .min(cap);
    let upload_until = now.saturating_add(UPLOAD_WINDOW_SECS).min(expires_at);
    Ok((
        recipients,
        GrantTerms {
            message_id,
            data_shards,
            shards,
            holders: r.holders.clone(),
            upload_until,
            expires_at,
            share_nodes: Vec::new(),
        },
    ))
}

impl AuthService {
    /// Issues a storage grant for one voicemail of the caller's, signed by
    /// the cluster key and, once it has a key, the group, for the
    /// recipients whose policy takes it, under the caller's quotas. It expires no later than now plus the shortest
    /// retention in force among the recipients (and the first-contact
    /// expiry when one is a limited first contact).
    pub async fn request_grant(
        &self,
        session: &Session,
        r: GrantRequest,
    ) -> Result<Granted, AuthError> {
        let now = self.now();
        let (recipients, terms) = validate_grant_request(&r, now, self.config())?;
        self.check_refused_grants(&session.username)?;
        let retention = self.shortest_retention(recipients.to_strings()).await?;
        let terms = terms.expiring_by(now.saturating_add(retention));
        let policy = super::grant_policy(&self.config, r.anonymous);
        let max_open = self.config.max_open_grants_per_user;
        // Refusals are decided on this server's state first, so a sender
        // refused by every recipient or over a quota costs the group no log
        // entry; what passes is decided again in log order.
        let (owner, names, t) = (session.username.clone(), recipients.clone(), terms.clone());
        let key = self.keys.cluster_key.clone();
        let dry = self
            .db(move |s| {
                s.dry_run(|tx| {
                    s.issue_grant(tx, &owner, &names, t, now, max_open, Some(&policy), |b| {
                        b.sign(&key)
                    })
                })
            })
            .await?;
        if !matches!(dry, GrantOutcome::Issued(..)) {
            self.charge_refused_grant(&session.username);
            return self.granted(session, dry);
        }
        // Before the grant is issued: a grant the sender could not split
        // the key for would only hold a quota slot.
        let share_keys = self.grant_share_keys().await?;
        let terms = GrantTerms {
            share_nodes: share_keys.iter().map(|k| k.node_id).collect(),
            ..terms
        };
        let reply = self
            .propose(Command::GrantUnderPolicy {
                token_hash: session.token_hash,
                owner: session.username.clone(),
                recipients: recipients.to_strings(),
                terms,
                now,
                max_open,
                policy,
            })
            .await?;
        match reply {
            Reply::Granted(outcome) => {
                let mut g = self.granted(session, outcome)?;
                let serial = g.grant.body.serial;
                // What the log recorded, which may be newer than what was
                // read before the proposal if a server rotated meanwhile.
                let share_keys = self
                    .db(move |s| s.grant_roster(serial))
                    .await?
                    .unwrap_or(share_keys);
                let (grant, roster) = tokio::join!(
                    self.co_sign(SignTarget::Grant { serial }),
                    self.co_sign(SignTarget::Roster { serial })
                );
                g.grant.group_signature = grant;
                Ok(Granted {
                    share_keys,
                    roster_signature: roster.map(|g| g.signature),
                    ..g
                })
            }
            Reply::SessionGone => Err(AuthError::BadToken),
            other => Err(AuthError::Apply(format!(
                "unexpected reply {other:?} to a grant request"
            ))),
        }
    }

    /// The grant, or the error for a refusal.
    fn granted(&self, session: &Session, outcome: GrantOutcome) -> Result<Granted, AuthError> {
        match outcome {
            GrantOutcome::Issued(grant, recipients, refused) => {
                tracing::info!(
                    owner = %session.username,
                    serial = grant.body.serial,
                    shards = grant.body.shards.len(),
                    expires_at = grant.body.expires_at,
                    recipients = recipients.len(),
                    refused = refused.len(),
                    "storage grant"
                );
                Ok(Granted {
                    grant,
                    recipients,
                    refused,
                    share_keys: Vec::new(),
                    roster_signature: None,
                })
            }
            GrantOutcome::NoneAccepts(refused) => {
                tracing::info!(owner = %session.username, refused = refused.len(), "grant refused by every recipient");
                Err(AuthError::NoRecipientAccepts(refused))
            }
            GrantOutcome::Quota(a) => {
                tracing::info!(owner = %session.username, quota = a.quota.name(), "grant refused by a sender quota");
                Err(AuthError::Quota {
                    quota: a.quota,
                    limit: a.limit,
                    used: a.used,
                    resets_at: a.resets_at,
                })
            }
            GrantOutcome::UnknownRecipient(name) => Err(AuthError::UnknownRecipient(name)),
            GrantOutcome::TooMany { limit } => Err(AuthError::TooManyGrants {
                username: session.username.clone(),
                limit,
                window: UPLOAD_WINDOW_SECS,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    //! [`validate_grant_request`]: what a grant request may carry, the field
    //! each refusal names, and the expiry rules.

    use vmail_proto::grant::MAX_RETENTION_SECS;

    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn valid() -> GrantRequest {
        GrantRequest {
            recipients: vec!["carol".into(), "bob".into()],
            message_id: vec![7; MESSAGE_ID_LEN],
            data_shards: 2,
            shards: (0..3)
                .map(|i| ShardRequest {
                    len: 1000,
                    sha256: vec![i; SHA256_LEN],
                })
                .collect(),
            holders: vec![vec![1; 38], vec![2; 38], vec![3; 38]],
            expires_at: 0,
            anonymous: false,
        }
    }

    fn accepted_with(config: &ServerConfig, edit: impl FnOnce(&mut GrantRequest)) -> GrantTerms {
        let mut r = valid();
        edit(&mut r);
        validate_grant_request(&r, NOW, config)
            .unwrap_or_else(|e| panic!("{r:?} should pass, got {e}"))
            .1
    }

    fn accepted(edit: impl FnOnce(&mut GrantRequest)) -> GrantTerms {
        accepted_with(&ServerConfig::default(), edit)
    }

    fn refused(edit: impl FnOnce(&mut GrantRequest)) -> (&'static str, String) {
        let mut r = valid();
        edit(&mut r);
        match validate_grant_request(&r, NOW, &ServerConfig::default()) {
            Err(AuthError::InvalidArgument { field, why }) => (field, why),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_request_becomes_terms_with_times_resolved() {
        let config = ServerConfig::default();
        let r = valid();
        let (recipients, terms) = validate_grant_request(&r, NOW, &config).unwrap();
        assert_eq!(recipients.to_strings(), ["bob", "carol"]);
        assert_eq!(terms.message_id, [7; 16]);
        assert_eq!(terms.data_shards, 2);
        assert_eq!(terms.shards.len(), 3);
        assert_eq!(
            terms.shards[2],
            GrantedShard {
                len: 1000,
                sha256: [2; 32]
            }
        );
        assert_eq!(terms.holders, r.holders);
        assert_eq!(terms.upload_until, NOW + UPLOAD_WINDOW_SECS);
        assert_eq!(terms.expires_at, NOW + config.default_voicemail_ttl_secs);
        // The body signs and reads back as a well-formed grant.
        terms.with_serial(1).check().unwrap();
    }

    #[test]
    fn the_expiry_is_the_one_asked_for_capped_and_the_window_never_outlasts_it() {
        // An expiry asked for is kept.
        assert_eq!(
            accepted(|r| r.expires_at = NOW + 3600).expires_at,
            NOW + 3600
        );
        // Too far ahead is capped, not refused.
        let far = accepted(|r| r.expires_at = u64::MAX);
        assert_eq!(far.expires_at, NOW + MAX_RETENTION_SECS);
        // The cap is the config's when lower, and never above the holders'.
        let short = ServerConfig {
            max_voicemail_ttl_secs: 7 * 86_400,
            default_voicemail_ttl_secs: 86_400,
            ..ServerConfig::default()
        };
        assert_eq!(
            accepted_with(&short, |r| r.expires_at = NOW + 30 * 86_400).expires_at,
            NOW + 7 * 86_400
        );
        assert_eq!(accepted_with(&short, |_| {}).expires_at, NOW + 86_400);
        let long = ServerConfig {
            max_voicemail_ttl_secs: 365 * 86_400,
            default_voicemail_ttl_secs: 365 * 86_400,
            ..ServerConfig::default()
        };
        assert_eq!(
            accepted_with(&long, |_| {}).expires_at,
            NOW + MAX_RETENTION_SECS
        );
        // An expiry inside the upload window shortens the window.
        let soon = accepted(|r| r.expires_at = NOW + 60);
        assert_eq!((soon.upload_until, soon.expires_at), (NOW + 60, NOW + 60));
        for t in [1, NOW - 1, NOW] {
            let (field, why) = refused(|r| r.expires_at = t);
            assert_eq!(field, "expires_at");
            assert!(why.starts_with(&format!("{t} is in the past")), "{why}");
        }
    }

    #[test]
    fn every_limit_is_inclusive() {
        let max = ServerConfig::default().max_shard_bytes;
        accepted(|r| {
            r.shards = (0..MAX_GRANT_SHARDS)
                .map(|_| ShardRequest {
                    len: max,
                    sha256: vec![1; 32],
                })
                .collect();
            r.data_shards = MAX_GRANT_SHARDS as u32;
        });
        accepted(|r| {
            r.shards.truncate(1);
            r.shards[0].len = 1;
            r.data_shards = 1;
        });
        accepted(|r| r.holders = vec![vec![1; MAX_HOLDER_ID_LEN]; MAX_GRANT_HOLDERS]);
        accepted(|r| r.holders = vec![vec![1]]);
        let names: Vec<String> = (0..vmail_proto::names::MAX_RECIPIENTS)
            .map(|i| format!("user{i}"))
            .collect();
        accepted(|r| r.recipients = names);
    }

    /// A change to a valid request.
    type Edit = Box<dyn FnOnce(&mut GrantRequest)>;

    #[test]
    fn each_bad_field_is_named_with_what_is_wrong() {
        let max = ServerConfig::default().max_shard_bytes;
        let cases: Vec<(&str, &str, Edit)> = vec![
            (
                "recipients",
                "a voicemail needs at least one recipient",
                Box::new(|r| r.recipients.clear()),
            ),
            (
                "recipients",
                "",
                Box::new(|r| r.recipients = vec!["Bob".into()]),
            ),
            (
                "message_id",
                "15 bytes, expected 16",
                Box::new(|r| r.message_id.truncate(15)),
            ),
            (
                "message_id",
                "0 bytes, expected 16",
                Box::new(|r| r.message_id.clear()),
            ),
            (
                "shards",
                "0 shards, 1 to 32 allowed",
                Box::new(|r| r.shards.clear()),
            ),
            (
                "shards",
                "33 shards, 1 to 32 allowed",
                Box::new(|r| {
                    r.shards = vec![
                        ShardRequest {
                            len: 1,
                            sha256: vec![0; 32]
                        };
                        33
                    ]
                }),
            ),
            (
                "shards",
                "shard 1 is 0 bytes",
                Box::new(|r| r.shards[1].len = 0),
            ),
            (
                "shards",
                "(max_shard_bytes)",
                Box::new(move |r| r.shards[0].len = max + 1),
            ),
            (
                "shards",
                "shard 2's sha256 is 31 bytes, expected 32",
                Box::new(|r| r.shards[2].sha256.truncate(31)),
            ),
            (
                "data_shards",
                "0 of 3 shards; 1 to 3 allowed",
                Box::new(|r| r.data_shards = 0),
            ),
            (
                "data_shards",
                "4 of 3 shards; 1 to 3 allowed",
                Box::new(|r| r.data_shards = 4),
            ),
            (
                "data_shards",
                "257 of 3 shards",
                Box::new(|r| r.data_shards = 257),
            ),
            (
                "holders",
                "0 holders, 1 to 64 allowed",
                Box::new(|r| r.holders.clear()),
            ),
            (
                "holders",
                "65 holders, 1 to 64 allowed",
                Box::new(|r| r.holders = vec![vec![1; 38]; 65]),
            ),
            (
                "holders",
                "holder 1 is 0 bytes",
                Box::new(|r| r.holders[1].clear()),
            ),
            (
                "holders",
                "holder 0 is 65 bytes",
                Box::new(|r| r.holders[0] = vec![1; 65]),
            ),
        ];
        for (want_field, want_why, edit) in cases {
            let (field, why) = refused(edit);
            assert_eq!(field, want_field, "{why}");
            assert!(
                why.contains(want_why),
                "{want_field}: {why:?} lacks {want_why:?}"
            );
        }
    }

    #[test]
    fn the_first_bad_field_is_the_one_named() {
        let (field, _) = refused(|r| {
            r.message_id.clear();
            r.shards.clear();
            r.holders.clear();
            r.expires_at = 1;
        });
        assert_eq!(field, "message_id");
        let (field, _) = refused(|r| {
            r.data_shards = 0;
            r.holders.clear();
        });
        assert_eq!(field, "data_shards");
        let (field, _) = refused(|r| {
            r.holders.clear();
            r.expires_at = 1;
        });
        assert_eq!(field, "holders");
    }
}
