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
