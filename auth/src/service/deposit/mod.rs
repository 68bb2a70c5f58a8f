//! Voicemail: deposits (checked by [`validate_deposit`]) under a storage
//! grant, answered with a signed deposit proof; delivery to each recipient
//! (the locator, the threshold, the key check and which server holds which
//! share: never key material, which each server hands out through
//! OpenShare, `super::share`); acks (the last one brings a signed delete
//! order for the shards); and the purge of what expired.
//!
//! No server sees a session key: the sender splits it among the servers'
//! share keys (`vmail_proto::share::split`) and deposits the sealed shares.

use sha2::{Digest, Sha256};
use vmail_proto::cert::UserCertificate;
use vmail_proto::grant::{DeleteOrder, DepositProof};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::random_bytes;
use vmail_proto::share;

mod check;

pub use check::{
    CheckedDeposit, Deposit, MAX_CONTENT_TYPE_LEN, MAX_LOCATOR_LEN, MAX_REQUEST_ID_LEN,
    MIN_REQUEST_ID_LEN, ShareIn, validate_deposit,
};

use super::error::{AuthError, invalid};
use super::{AuthService, SignTarget};
use crate::cluster::{Command, Reply};
use crate::store::{
    AckOutcome, DEPOSIT_GRACE_SECS, DeliveryNote, DepositOutcome, GrantRefusal, PurgeCounts,
    Session, StoreError, Voicemail, VoicemailId,
};

/// Which server holds which share of a voicemail, and where to ask it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSlot {
    /// The server's Raft node id.
    pub node_id: u64,
    /// The share's index.
    pub index: u8,
    /// The server's public API URL; empty when it is no longer a member.
    pub api_url: String,
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
    /// Shares needed to recover the session key.
    pub threshold: u8,
    /// The deposit's key check.
    pub key_check: [u8; 32],
    /// Which server holds which share.
    pub shares: Vec<ShareSlot>,
}

impl AuthService {
    /// Opens the share sealed to this server: a deposit split for another
    /// grant or recipient list, sealed to an epoch this server does not
    /// hold, or altered on the way is refused now rather than found out when
    /// a recipient asks. Only this server's share can be opened here; the
    /// others are the sender's word. That the shares go to exactly the
    /// servers the grant lists, one each, is checked when the deposit
    /// applies ([`GrantRefusal::Shares`]).
    fn check_shares(&self, d: &CheckedDeposit, grant_serial: u64) -> Result<(), AuthError> {
        let me = self.node_id();
        let Some(own) = d.shares.iter().find(|s| s.node_id == me) else {
            // A server the grant does not list (it joined since, or is a
            // learner catching up) has no share to check.
            return Ok(());
        };
        let Some(secret) = self.share_keys.secret(own.epoch) else {
            return Err(invalid(
                "shares",
                format!(
                    "the share for this server ({}) is sealed to its epoch {}, a key it does not hold (never made here, or erased since): ask for a new grant",
                    self.config.name, own.epoch
                ),
            ));
        };
        let binding = share::ShareBinding {
            grant_serial,
            recipients: &d.recipients,
            threshold: d.threshold,
            key_check: &d.key_check,
        };
        share::open_share(&secret, &own.into(), &binding)
            .map(drop)
            .map_err(|_| {
                invalid(
                    "shares",
                    format!(
                        "the share sealed to this server ({}, epoch {}) does not open: the key was split for another grant or recipient list, or the request was altered; split it again with this grant's share keys",
                        self.config.name, own.epoch
                    ),
                )
            })
    }

    /// Deposits a voicemail's session key and locator for its recipients
    /// (paper §3.3 steps 2-3). Returns the voicemail id, whether this was a
    /// replay of an earlier request, and the deposit proof for its grant.
    pub async fn deposit(&self, session: &Session, d: Deposit) -> Result<Deposited, AuthError> {
        let published = self.db(|s| s.published_share_keys()).await?;
        let checked = validate_deposit(&d, &published)?;
        self.check_shares(&checked, d.grant_serial)?;
        let recipients = checked.recipients;
        // What makes two requests "the same deposit": the key check stands
        // for the session key (a retry may split it afresh, so the shares
        // themselves may differ).
        let mut digest = Sha256::new();
        digest.update(b"vmail/v2/deposit-digest");
        digest.update(recipients.canonical_bytes());
        digest.update(vmail_proto::keys::locator_hash(&d.locator));
        digest.update(checked.key_check);
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
                threshold: checked.threshold,
                key_check: checked.key_check,
                shares: checked.shares,
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
        let deposited = async |id, replayed| {
            let mut proof = DepositProof::sign(grant_serial, &self.keys.cluster_key);
            proof.group_signature = self
                .co_sign(SignTarget::DepositProof {
                    serial: grant_serial,
                })
                .await;
            Deposited {
                id,
                replayed,
                proof,
            }
        };
        match outcome {
            DepositOutcome::Stored(id) => {
                tracing::info!(sender = %session.username, id = %hex::encode(id), n = n_recipients, "deposit");
                Ok(deposited(id, false).await)
            }
            DepositOutcome::Replayed(id) => Ok(deposited(id, true).await),
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
                GrantRefusal::Shares {
                    serial,
                    listed,
                    sealed_to,
                } => AuthError::GrantShares {
                    serial,
                    listed: listed.into_iter().map(|id| self.server_name(id)).collect(),
                    sealed_to: sealed_to
                        .into_iter()
                        .map(|id| self.server_name(id))
                        .collect(),
                },
            }),
        }
    }

    fn deliver(&self, vm: Voicemail, note: Option<DeliveryNote>) -> Delivery {
        let hidden = note.as_ref().is_some_and(|n| n.anonymous);
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let api_url = |id: u64| {
            membership
                .membership()
                .get_node(&id)
                .map(|m| m.api_url.clone())
                .unwrap_or_default()
        };
        Delivery {
            id: vm.id,
            sender_certificate: (!hidden).then_some(vm.sender_certificate),
            first_contact: note.is_some_and(|n| n.stranger),
            deposited_at: vm.deposited_at,
            metadata: vm.metadata,
            recipients: vm.recipients.to_strings(),
            locator: vm.locator,
            threshold: vm.threshold,
            key_check: vm.key_check,
            shares: vm
                .shares
                .iter()
                .map(|s| ShareSlot {
                    node_id: s.node_id,
                    index: s.index,
                    api_url: api_url(s.node_id),
                })
                .collect(),
        }
    }

    /// The voicemails waiting for the session's user (retrieval step 2):
    /// where each is stored and which server holds which share of its key.
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
            .map(|(note, vm)| self.deliver(vm, note))
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
            .map(|(note, vm)| self.deliver(vm, note)))
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
                mut delete_order,
            } => {
                self.co_sign_order(&mut delete_order).await;
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
