//! Voicemail: deposits (checked by [`validate_deposit`]) under a storage
//! grant, answered with a signed deposit proof; delivery to each recipient
//! re-wrapped under their master key; acks (the last one brings a signed
//! delete order for the shards); and the purge of what expired.

use sha2::{Digest, Sha256};
use vmail_proto::cert::UserCertificate;
use vmail_proto::grant::{DeleteOrder, DepositProof};
use vmail_proto::keys::{DeliveryContext, DepositContext, WRAPPED_KEY_LEN};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::Recipients;
use vmail_proto::random_bytes;

use super::AuthService;
use super::error::{AuthError, invalid};
use crate::cluster::{Command, Reply, seal};
use crate::store::{
    AckOutcome, DEPOSIT_GRACE_SECS, DeliveryNote, DepositOutcome, GrantRefusal, PurgeCounts,
    Session, StoreError, Voicemail, VoicemailId,
};

/// Largest locator a deposit may carry: 4 KiB. The largest valid locator
/// (`vmail-node`'s `core::locator`, version 2, 32 shards of 64 bytes each
/// plus a fixed part under 80 bytes) is about 2.1 KiB; per-shard holder
/// hints of a 38-byte peer id each add about 1.3 KiB more, so 4 KiB holds
/// both with room to spare.
pub const MAX_LOCATOR_LEN: usize = 4 * 1024;
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
    /// Metadata. Its `expires_at` is ignored: the voicemail expires with
    /// its storage grant.
    pub metadata: VoicemailMeta,
    /// The serial of the sender's storage grant for this voicemail's shards;
    /// 0 (none) is refused.
    pub grant_serial: u64,
}

/// What a deposit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposited {
    /// The voicemail's id.
    pub id: VoicemailId,
    /// Whether this answers a retry of an earlier request.
    pub replayed: bool,
    /// The group's signed word that the deposit used its storage grant,
    /// for the sender's peer to hand to the holders. The same bytes on a
    /// replay: ed25519 signatures are deterministic.
    pub proof: DepositProof,
}

/// What an ack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckReceipt {
    /// Whether this was the last recipient, so the session key is gone.
    pub key_erased: bool,
    /// With `key_erased`: the signed order to delete the voicemail's shards,
    /// for the caller's peer to hand to the holders.
    pub delete_order: Option<DeleteOrder>,
}

/// A pending voicemail as handed to one recipient.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Voicemail id.
    pub id: VoicemailId,
    /// Sender's certificate at deposit time; `None` when the sender is
    /// hidden from the recipient.
    pub sender_certificate: Option<UserCertificate>,
    /// The sender is not in the recipient's contacts ("unknown caller").
    pub first_contact: bool,
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

/// Checks a deposit's fields against the protocol's limits, and returns the
/// recipients in canonical order. The metadata's expiry is not checked: the
/// voicemail expires with its storage grant, whose existence and use are
/// checked when the deposit applies. Pure: the service calls it before it
/// unwraps the key or proposes anything.
pub fn validate_deposit(d: &Deposit) -> Result<Recipients, AuthError> {
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
    if d.grant_serial == 0 {
        return Err(invalid(
            "grant_serial",
            "a deposit needs a storage grant: ask RequestGrant for one before storing the shards, then pass its serial",
        ));
    }
    Ok(recipients)
}

impl AuthService {
    /// Deposits a voicemail's session key and locator for its recipients
    /// (paper §3.3 steps 2-3). Returns the voicemail id, whether this was a
    /// replay of an earlier request, and the deposit proof for its grant.
    pub async fn deposit(&self, session: &Session, d: Deposit) -> Result<Deposited, AuthError> {
        let recipients = validate_deposit(&d)?;
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
        digest.update(d.grant_serial.to_be_bytes());
        let digest: [u8; 32] = digest.finalize().into();

        let id: VoicemailId = random_bytes();
        let grant_serial = d.grant_serial;
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
                metadata: d.metadata,
                deposited_at: self.now(),
                session_key: seal(
                    &self.keys.data_key,
                    "session-key",
                    &id,
                    session_key.as_bytes(),
                ),
                max_pending: self.config.max_pending_per_user,
                grant_serial: d.grant_serial,
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
        // Signed from the command's serial, which the stored deposit used: a
        // replay matched the first request's digest, which covers it.
        let deposited = |id, replayed| Deposited {
            id,
            replayed,
            proof: DepositProof::sign(grant_serial, &self.keys.cluster_key),
        };
        match outcome {
            DepositOutcome::Stored(id) => {
                tracing::info!(sender = %session.username, id = %hex::encode(id), n = n_recipients, "deposit");
                Ok(deposited(id, false))
            }
            DepositOutcome::Replayed(id) => Ok(deposited(id, true)),
            DepositOutcome::RequestIdReused => Err(AuthError::RequestIdReused),
            DepositOutcome::UnknownRecipient(r) => Err(AuthError::UnknownRecipient(r)),
            DepositOutcome::InboxFull(r) => Err(AuthError::InboxFull {
                username: r,
                limit: self.config.max_pending_per_user,
            }),
            DepositOutcome::GrantRefused(refusal) => Err(match refusal {
                GrantRefusal::Unknown(serial) => AuthError::GrantUnknown(serial),
                GrantRefusal::NotOwner(serial) => AuthError::GrantNotOwned(serial),
                GrantRefusal::Used { serial, voicemail } => AuthError::GrantUsed {
                    serial,
                    voicemail: hex::encode(voicemail),
                },
                GrantRefusal::Lapsed {
                    serial,
                    upload_until,
                } => AuthError::GrantLapsed {
                    serial,
                    upload_until,
                    grace: DEPOSIT_GRACE_SECS,
                },
                GrantRefusal::Recipients { serial, granted } => {
                    AuthError::GrantRecipients { serial, granted }
                }
                GrantRefusal::Superseded { serial, recipient } => {
                    AuthError::GrantSuperseded { serial, recipient }
                }
            }),
        }
    }

    fn deliver(&self, session: &Session, vm: Voicemail, note: Option<DeliveryNote>) -> Delivery {
        let wrapped_key = session.master_key.wrap_delivery(
            &vm.session_key,
            &DeliveryContext {
                voicemail_id: &vm.id,
                recipients: &vm.recipients,
                locator: &vm.locator,
            },
        );
        let hidden = note.as_ref().is_some_and(|n| n.anonymous);
        Delivery {
            id: vm.id,
            sender_certificate: (!hidden).then_some(vm.sender_certificate),
            first_contact: note.is_some_and(|n| n.stranger),
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
        let vms = self
            .db(move |s| {
                s.pending(&user, now)?
                    .into_iter()
                    .map(|vm| Ok((s.note(&user, &vm.id)?, vm)))
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await?;
        Ok(vms
            .into_iter()
            .map(|(note, vm)| self.deliver(session, vm, note))
            .collect())
    }

    /// The ids of the voicemails pending for the session's user, oldest
    /// first: a WatchPending stream's backlog, which it then fetches one
    /// voicemail at a time ([`Self::pending_one`]).
    pub async fn pending_ids(&self, session: &Session) -> Result<Vec<VoicemailId>, AuthError> {
        let user = session.username.clone();
        let now = self.now();
        self.db(move |s| s.pending_ids(&user, now)).await
    }

    /// One voicemail if it is pending for the session's user and not expired.
    pub async fn pending_one(
        &self,
        session: &Session,
        id: VoicemailId,
    ) -> Result<Option<Delivery>, AuthError> {
        let user = session.username.clone();
        let now = self.now();
        let vm = self
            .db(move |s| {
                s.pending_one(&user, &id)?
                    .map(|vm| Ok((s.note(&user, &id)?, vm)))
                    .transpose()
            })
            .await?;
        Ok(vm
            .filter(|(_, vm)| vm.metadata.expires_at > now)
            .map(|(note, vm)| self.deliver(session, vm, note)))
    }

    /// Erases the caller's grant; says whether the session key is now gone
    /// and, if so, carries the delete order for the voicemail's shards. The
    /// caller need not have fetched the voicemail: acking one unheard is how
    /// a recipient discards it.
    pub async fn ack(&self, session: &Session, id: &[u8]) -> Result<AckReceipt, AuthError> {
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
            AckOutcome::Acked {
                key_erased,
                delete_order,
            } => {
                tracing::info!(
                    user = %session.username,
                    id = %hex::encode(id),
                    key_erased,
                    delete_order = ?delete_order.as_ref().map(|o| o.serial),
                    "ack"
                );
                Ok(AckReceipt {
                    key_erased,
                    delete_order,
                })
            }
        }
    }

    /// Drops expired sessions, voicemails and storage grants, and storage
    /// grants no deposit used in time.
    pub async fn purge_expired(&self) -> Result<PurgeCounts, AuthError> {
        let reply = self.propose(Command::Purge { now: self.now() }).await?;
        match reply {
            Reply::Purged(counts) => Ok(counts),
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
            grant_serial: 1,
        }
    }

    fn accepted(edit: impl FnOnce(&mut Deposit)) -> Recipients {
        let mut d = valid();
        edit(&mut d);
        validate_deposit(&d).unwrap_or_else(|e| panic!("{d:?} should pass, got {e}"))
    }

    /// The field a refusal names, and its message.
    fn refused(edit: impl FnOnce(&mut Deposit)) -> (&'static str, String) {
        let mut d = valid();
        edit(&mut d);
        match validate_deposit(&d) {
            Err(AuthError::InvalidArgument { field, why }) => (field, why),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_deposit_is_canonicalised_and_its_expiry_left_to_the_grant() {
        assert_eq!(accepted(|_| {}).to_strings(), ["bob", "carol"]);
        // The metadata's expiry is not the deposit's to set: any value
        // passes, the grant's replaces it when the deposit applies.
        for t in [1, u64::MAX] {
            accepted(|d| d.metadata.expires_at = t);
        }
    }

    #[test]
    fn a_deposit_without_a_grant_is_refused_with_the_next_step() {
        let (field, why) = refused(|d| d.grant_serial = 0);
        assert_eq!(field, "grant_serial");
        assert!(why.contains("ask RequestGrant"), "{why}");
        accepted(|d| d.grant_serial = u64::MAX);
    }

    #[test]
    fn every_limit_is_inclusive() {
        accepted(|d| d.request_id = vec![1; MAX_REQUEST_ID_LEN]);
        accepted(|d| d.locator = vec![3; MAX_LOCATOR_LEN]);
        accepted(|d| d.locator.clear());
        accepted(|d| d.metadata.content_type = "a".repeat(MAX_CONTENT_TYPE_LEN));
        accepted(|d| d.metadata.content_type.clear());
        let names: Vec<String> = (0..vmail_proto::names::MAX_RECIPIENTS)
            .map(|i| format!("user{i}"))
            .collect();
        accepted(|d| d.recipients = names);
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
        assert_eq!(why, "4097 bytes, at most 4096 allowed");
    }

    #[test]
    fn a_content_type_over_the_limit_is_named() {
        let (field, why) =
            refused(|d| d.metadata.content_type = "a".repeat(MAX_CONTENT_TYPE_LEN + 1));
        assert_eq!(field, "metadata.content_type");
        assert_eq!(why, "129 bytes, at most 128");
    }

    #[test]
    fn the_first_bad_field_in_protocol_order_is_the_one_named() {
        let all_bad = |d: &mut Deposit| {
            d.request_id.clear();
            d.recipients.clear();
            d.wrapped_key.clear();
            d.locator = vec![3; MAX_LOCATOR_LEN + 1];
            d.metadata.content_type = "a".repeat(MAX_CONTENT_TYPE_LEN + 1);
            d.grant_serial = 0;
        };
        let order = [
            "request_id",
            "recipients",
            "wrapped_key",
            "locator",
            "metadata.content_type",
            "grant_serial",
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
