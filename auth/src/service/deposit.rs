//! Voicemail: deposits (checked by [`validate_deposit`]), delivery to each
//! recipient re-wrapped under their master key, acks, and the purge of what
//! expired.

use sha2::{Digest, Sha256};
use vmail_proto::cert::UserCertificate;
use vmail_proto::keys::{DeliveryContext, DepositContext, WRAPPED_KEY_LEN};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::Recipients;
use vmail_proto::random_bytes;

use super::AuthService;
use super::error::{AuthError, invalid};
use crate::cluster::{Command, Reply, seal};
use crate::config::ServerConfig;
use crate::store::{AckOutcome, DepositOutcome, Session, Voicemail, VoicemailId};

/// Largest locator a deposit may carry: 16 KiB.
pub const MAX_LOCATOR_LEN: usize = 16 * 1024;
/// Shortest client request id, in bytes.
pub const MIN_REQUEST_ID_LEN: usize = 16;
/// Longest client request id, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 64;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 128;

/// A deposit request.
#[derive(Debug, Clone)]
pub struct Deposit {
    /// Client-chosen idempotency key.
    pub request_id: Vec<u8>,
    /// Recipient usernames.
    pub recipients: Vec<String>,
    /// Storage locator.
    pub locator: Vec<u8>,
    /// Session key wrapped under the sender's master key.
    pub wrapped_key: Vec<u8>,
    /// Metadata; `expires_at == 0` asks for the default.
    pub metadata: VoicemailMeta,
}

/// A pending voicemail as handed to one recipient.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Voicemail id.
    pub id: VoicemailId,
    /// Sender's certificate at deposit time.
    pub sender_certificate: UserCertificate,
    /// Deposit time, Unix seconds.
    pub deposited_at: u64,
    /// Metadata.
    pub metadata: VoicemailMeta,
    /// Storage locator.
    pub locator: Vec<u8>,
    /// All recipients, canonical order.
    pub recipients: Vec<String>,
    /// Session key wrapped under the recipient session's master key.
    pub wrapped_key: Vec<u8>,
}

/// Checks a deposit's fields against the protocol's limits and the
/// server's expiry policy, at `now`: the recipients in canonical order, and
/// the metadata with its expiry resolved (0 asks for the default). Pure: the
/// service calls it before it unwraps the key or proposes anything.
pub fn validate_deposit(
    d: &Deposit,
    now: u64,
    config: &ServerConfig,
) -> Result<(Recipients, VoicemailMeta), AuthError> {
    if !(MIN_REQUEST_ID_LEN..=MAX_REQUEST_ID_LEN).contains(&d.request_id.len()) {
        return Err(invalid(
            "request_id",
            format!(
                "{} bytes, expected {MIN_REQUEST_ID_LEN} to {MAX_REQUEST_ID_LEN}",
                d.request_id.len()
            ),
        ));
    }
    let recipients =
        Recipients::parse(&d.recipients).map_err(|e| invalid("recipients", e.to_string()))?;
    if d.wrapped_key.len() != WRAPPED_KEY_LEN {
        return Err(invalid(
            "wrapped_key",
            format!("{} bytes, expected {WRAPPED_KEY_LEN}", d.wrapped_key.len()),
        ));
    }
    if d.locator.len() > MAX_LOCATOR_LEN {
        return Err(invalid(
            "locator",
            format!(
                "{} bytes, at most {MAX_LOCATOR_LEN} allowed",
                d.locator.len()
            ),
        ));
    }
    if d.metadata.content_type.len() > MAX_CONTENT_TYPE_LEN {
        return Err(invalid(
            "metadata.content_type",
            format!(
                "{} bytes, at most {MAX_CONTENT_TYPE_LEN}",
                d.metadata.content_type.len()
            ),
        ));
    }
    let max = now + config.max_voicemail_ttl_secs;
    let expires_at = match d.metadata.expires_at {
        0 => now + config.default_voicemail_ttl_secs,
        t if t <= now => {
            return Err(invalid(
                "metadata.expires_at",
                format!("{t} is in the past (now {now})"),
            ));
        }
        t if t > max => {
            return Err(invalid(
                "metadata.expires_at",
                format!(
                    "{t} is more than {} s ahead; the limit is {max}",
                    config.max_voicemail_ttl_secs
                ),
            ));
        }
        t => t,
    };
    Ok((
        recipients,
        VoicemailMeta {
            expires_at,
            ..d.metadata.clone()
        },
    ))
}

impl AuthService {
    /// Deposits a voicemail's session key and locator for its recipients
    /// (paper §3.3 steps 2-3). Returns the voicemail id and whether this was
    /// a replay of an earlier request.
    pub async fn deposit(
        &self,
        session: &Session,
        d: Deposit,
    ) -> Result<(VoicemailId, bool), AuthError> {
        let (recipients, metadata) = validate_deposit(&d, self.now(), self.config())?;
        let ctx = DepositContext {
            request_id: &d.request_id,
            recipients: &recipients,
            locator: &d.locator,
        };
        let session_key = session
            .master_key
            .unwrap_deposit(&d.wrapped_key, &ctx)
            .map_err(|_| AuthError::WrapFailed)?;
        // What makes two requests "the same deposit": a retry re-wraps the
        // key under a fresh nonce, so the digest covers the unwrapped key.
        let mut digest = Sha256::new();
        digest.update(b"vmail/v1/deposit-digest");
        digest.update(recipients.canonical_bytes());
        digest.update(vmail_proto::keys::locator_hash(&d.locator));
        digest.update(session_key.as_bytes());
        digest.update(postcard::to_allocvec(&d.metadata).expect("encodes"));
        let digest: [u8; 32] = digest.finalize().into();

        let id: VoicemailId = random_bytes();
        let n_recipients = recipients.iter().count();
        let reply = self
            .propose(Command::Deposit {
                token_hash: session.token_hash,
                request_id: d.request_id,
                digest,
                id,
                sender: session.username.clone(),
                recipients: recipients.to_strings(),
                locator: d.locator,
                metadata,
                deposited_at: self.now(),
                session_key: seal(
                    &self.keys.data_key,
                    "session-key",
                    &id,
                    session_key.as_bytes(),
                ),
                max_pending: self.config.max_pending_per_user,
            })
            .await?;
        let outcome = match reply {
            Reply::Deposited(outcome) => outcome,
            Reply::SessionGone => return Err(AuthError::BadToken),
            other => {
                return Err(AuthError::Apply(format!(
                    "unexpected reply {other:?} to a deposit"
                )));
            }
        };
        match outcome {
            DepositOutcome::Stored(id) => {
                tracing::info!(sender = %session.username, id = %hex::encode(id), n = n_recipients, "deposit");
                Ok((id, false))
            }
            DepositOutcome::Replayed(id) => Ok((id, true)),
            DepositOutcome::RequestIdReused => Err(AuthError::RequestIdReused),
            DepositOutcome::UnknownRecipient(r) => Err(AuthError::UnknownRecipient(r)),
            DepositOutcome::InboxFull(r) => Err(AuthError::InboxFull {
                username: r,
                limit: self.config.max_pending_per_user,
            }),
        }
    }

    fn deliver(&self, session: &Session, vm: Voicemail) -> Delivery {
        let wrapped_key = session.master_key.wrap_delivery(
            &vm.session_key,
            &DeliveryContext {
                voicemail_id: &vm.id,
                recipients: &vm.recipients,
                locator: &vm.locator,
            },
        );
        Delivery {
            id: vm.id,
            sender_certificate: vm.sender_certificate,
            deposited_at: vm.deposited_at,
            metadata: vm.metadata,
            recipients: vm.recipients.to_strings(),
            locator: vm.locator,
            wrapped_key,
        }
    }

    /// The voicemails waiting for the session's user, each session key
    /// re-wrapped under this session's master key (retrieval step 2).
    pub async fn list_pending(&self, session: &Session) -> Result<Vec<Delivery>, AuthError> {
        let user = session.username.clone();
        let now = self.now();
        let vms = self.db(move |s| s.pending(&user, now)).await?;
        Ok(vms
            .into_iter()
            .map(|vm| self.deliver(session, vm))
            .collect())
    }

    /// One voicemail if it is pending for the session's user and not expired.
    pub async fn pending_one(
        &self,
        session: &Session,
        id: VoicemailId,
    ) -> Result<Option<Delivery>, AuthError> {
        let user = session.username.clone();
        let now = self.now();
        let vm = self.db(move |s| s.pending_one(&user, &id)).await?;
        Ok(vm
            .filter(|vm| vm.metadata.expires_at > now)
            .map(|vm| self.deliver(session, vm)))
    }

    /// Erases the caller's grant; returns whether the session key is now gone.
    pub async fn ack(&self, session: &Session, id: &[u8]) -> Result<bool, AuthError> {
        let id: VoicemailId = id
            .try_into()
            .map_err(|_| invalid("voicemail_id", format!("{} bytes, expected 16", id.len())))?;
        let user = session.username.clone();
        let now = self.now();
        let reply = self
            .propose(Command::Ack {
                recipient: user,
                id,
                now,
            })
            .await?;
        let Reply::Acked(outcome) = reply else {
            return Err(AuthError::Apply(format!(
                "unexpected reply {reply:?} to an ack"
            )));
        };
        match outcome {
            AckOutcome::NotPending => Err(AuthError::NotPending {
                id: hex::encode(id),
                username: session.username.clone(),
            }),
            AckOutcome::Acked { key_erased } => {
                tracing::info!(user = %session.username, id = %hex::encode(id), key_erased, "ack");
                Ok(key_erased)
            }
        }
    }

    /// Drops expired sessions and voicemails.
    pub async fn purge_expired(&self) -> Result<(usize, usize), AuthError> {
        let reply = self.propose(Command::Purge { now: self.now() }).await?;
        match reply {
            Reply::Purged(s, v) => Ok((s, v)),
            other => Err(AuthError::Apply(format!(
                "unexpected reply {other:?} to a purge"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    //! [`validate_deposit`]: what a deposit may carry, and the field each
    //! refusal names.

    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn valid() -> Deposit {
        Deposit {
            request_id: vec![1; MIN_REQUEST_ID_LEN],
            recipients: vec!["carol".into(), "bob".into(), "carol".into()],
            locator: b"locator".to_vec(),
            wrapped_key: vec![2; WRAPPED_KEY_LEN],
            metadata: VoicemailMeta {
                size: 1234,
                content_type: "audio/wav".into(),
                duration_ms: 5000,
                expires_at: 0,
            },
        }
    }

    fn accepted(edit: impl FnOnce(&mut Deposit)) -> (Recipients, VoicemailMeta) {
        let mut d = valid();
        edit(&mut d);
        validate_deposit(&d, NOW, &ServerConfig::default())
            .unwrap_or_else(|e| panic!("{d:?} should pass, got {e}"))
    }

    /// The field a refusal names, and its message.
    fn refused(edit: impl FnOnce(&mut Deposit)) -> (&'static str, String) {
        let mut d = valid();
        edit(&mut d);
        match validate_deposit(&d, NOW, &ServerConfig::default()) {
            Err(AuthError::InvalidArgument { field, why }) => (field, why),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_deposit_is_canonicalised_with_its_expiry_resolved() {
        let config = ServerConfig::default();
        let d = valid();
        let (recipients, meta) = validate_deposit(&d, NOW, &config).unwrap();
        assert_eq!(recipients.to_strings(), ["bob", "carol"]);
        assert_eq!(
            meta,
            VoicemailMeta {
                expires_at: NOW + config.default_voicemail_ttl_secs,
                ..d.metadata.clone()
            }
        );
        // With another config, the default follows it.
        let short = ServerConfig {
            default_voicemail_ttl_secs: 600,
            ..ServerConfig::default()
        };
        assert_eq!(
            validate_deposit(&d, NOW, &short).unwrap().1.expires_at,
            NOW + 600
        );
        // An expiry the sender chose is kept.
        let (_, meta) = accepted(|d| d.metadata.expires_at = NOW + 3600);
        assert_eq!(meta.expires_at, NOW + 3600);
    }

    #[test]
    fn every_limit_is_inclusive() {
        let max_ttl = ServerConfig::default().max_voicemail_ttl_secs;
        accepted(|d| d.request_id = vec![1; MAX_REQUEST_ID_LEN]);
        accepted(|d| d.locator = vec![3; MAX_LOCATOR_LEN]);
        accepted(|d| d.locator.clear());
        accepted(|d| d.metadata.content_type = "a".repeat(MAX_CONTENT_TYPE_LEN));
        accepted(|d| d.metadata.content_type.clear());
        let names: Vec<String> = (0..vmail_proto::names::MAX_RECIPIENTS)
            .map(|i| format!("user{i}"))
            .collect();
        accepted(|d| d.recipients = names);
        assert_eq!(
            accepted(|d| d.metadata.expires_at = NOW + 1).1.expires_at,
            NOW + 1
        );
        assert_eq!(
            accepted(|d| d.metadata.expires_at = NOW + max_ttl)
                .1
                .expires_at,
            NOW + max_ttl
        );
    }

    #[test]
    fn a_bad_request_id_is_named() {
        for len in [0, MIN_REQUEST_ID_LEN - 1, MAX_REQUEST_ID_LEN + 1] {
            let (field, why) = refused(|d| d.request_id = vec![1; len]);
            assert_eq!(field, "request_id", "{len} bytes");
            assert_eq!(why, format!("{len} bytes, expected 16 to 64"));
        }
    }

    #[test]
    fn bad_recipients_are_named() {
        let many: Vec<String> = (0..=vmail_proto::names::MAX_RECIPIENTS)
            .map(|i| format!("user{i}"))
            .collect();
        let cases: Vec<Vec<String>> = vec![
            Vec::new(),
            vec!["Bob".into()],
            vec!["bob".into(), "al".into()],
            vec!["bob smith".into()],
            vec!["a".repeat(65)],
            many,
        ];
        for names in cases {
            let (field, why) = refused(|d| d.recipients = names.clone());
            assert_eq!(field, "recipients", "{names:?}: {why}");
        }
        let (_, why) = refused(|d| d.recipients.clear());
        assert_eq!(why, "a voicemail needs at least one recipient");
    }

    #[test]
    fn a_wrapped_key_of_the_wrong_length_is_named() {
        for len in [0, WRAPPED_KEY_LEN - 1, WRAPPED_KEY_LEN + 1] {
            let (field, why) = refused(|d| d.wrapped_key = vec![2; len]);
            assert_eq!(field, "wrapped_key", "{len} bytes");
            assert_eq!(why, format!("{len} bytes, expected {WRAPPED_KEY_LEN}"));
        }
    }

    #[test]
    fn a_locator_over_the_limit_is_named() {
        let (field, why) = refused(|d| d.locator = vec![3; MAX_LOCATOR_LEN + 1]);
        assert_eq!(field, "locator");
        assert_eq!(why, "16385 bytes, at most 16384 allowed");
    }

    #[test]
    fn a_content_type_over_the_limit_is_named() {
        let (field, why) =
            refused(|d| d.metadata.content_type = "a".repeat(MAX_CONTENT_TYPE_LEN + 1));
        assert_eq!(field, "metadata.content_type");
        assert_eq!(why, "129 bytes, at most 128");
    }

    #[test]
    fn an_expiry_in_the_past_or_too_far_ahead_is_named() {
        let max_ttl = ServerConfig::default().max_voicemail_ttl_secs;
        for t in [1, NOW - 1, NOW] {
            let (field, why) = refused(|d| d.metadata.expires_at = t);
            assert_eq!(field, "metadata.expires_at", "{t}");
            assert_eq!(why, format!("{t} is in the past (now {NOW})"));
        }
        for t in [NOW + max_ttl + 1, u64::MAX] {
            let (field, why) = refused(|d| d.metadata.expires_at = t);
            assert_eq!(field, "metadata.expires_at", "{t}");
            assert!(why.contains("s ahead; the limit is"), "{why}");
        }
    }

    #[test]
    fn the_first_bad_field_in_protocol_order_is_the_one_named() {
        let all_bad = |d: &mut Deposit| {
            d.request_id.clear();
            d.recipients.clear();
            d.wrapped_key.clear();
            d.locator = vec![3; MAX_LOCATOR_LEN + 1];
            d.metadata.content_type = "a".repeat(MAX_CONTENT_TYPE_LEN + 1);
            d.metadata.expires_at = 1;
        };
        let order = [
            "request_id",
            "recipients",
            "wrapped_key",
            "locator",
            "metadata.content_type",
            "metadata.expires_at",
        ];
        // Fix the fields one by one, in order: each time the next is named.
        for (i, want) in order.iter().enumerate() {
            let (field, _) = refused(|d| {
                all_bad(d);
                let good = valid();
                for fixed in &order[..i] {
                    match *fixed {
                        "request_id" => d.request_id = good.request_id.clone(),
                        "recipients" => d.recipients = good.recipients.clone(),
                        "wrapped_key" => d.wrapped_key = good.wrapped_key.clone(),
                        "locator" => d.locator = good.locator.clone(),
                        "metadata.content_type" => {
                            d.metadata.content_type = good.metadata.content_type.clone()
                        }
                        _ => unreachable!(),
                    }
                }
            });
            assert_eq!(field, *want);
        }
    }
}
