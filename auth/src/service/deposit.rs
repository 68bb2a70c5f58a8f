//! Voicemail: deposits (checked by [`validate_deposit`]) under a storage
//! grant, answered with a signed deposit proof; delivery to each recipient
//! (the locator, the threshold, the key check and which server holds which
//! share: never key material, which each server hands out through
//! OpenShare, `super::share`); acks (the last one brings a signed delete
//! order for the shards); and the purge of what expired.
//!
//! No server sees a session key: the sender splits it among the servers'
//! share keys (`vmail_proto::share::split`) and deposits the sealed shares.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use vmail_proto::cert::UserCertificate;
use vmail_proto::grant::{DeleteOrder, DepositProof};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::Recipients;
use vmail_proto::random_bytes;
use vmail_proto::share::{self, MAX_SHARES, PUBLIC_LEN, SEALED_LEN};

use super::AuthService;
use super::error::{AuthError, invalid};
use crate::cluster::{Command, Reply};
use crate::store::{
    AckOutcome, DEPOSIT_GRACE_SECS, DeliveryNote, DepositOutcome, GrantRefusal, PublishedKey,
    PurgeCounts, Session, StoreError, StoredShare, Voicemail, VoicemailId,
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
    /// The session key's shares, one per server of the grant's share keys.
    pub shares: Vec<ShareIn>,
    /// Shares needed to recover the key: `share::threshold(shares.len())`.
    pub threshold: u32,
    /// The sender's key check of the session key, 32 bytes.
    pub key_check: Vec<u8>,
    /// Metadata. Its `expires_at` is ignored: the voicemail expires with
    /// its storage grant.
    pub metadata: VoicemailMeta,
    /// The serial of the sender's storage grant for this voicemail's shards;
    /// 0 (none) is refused.
    pub grant_serial: u64,
}

/// One sealed share as a deposit carries it, unchecked.
#[derive(Debug, Clone, Default)]
pub struct ShareIn {
    /// The server it is sealed to.
    pub node_id: u64,
    /// The epoch of that server's share key.
    pub epoch: u32,
    /// The Shamir x-coordinate.
    pub index: u32,
    /// The HPKE encapsulated key, 32 bytes.
    pub enc: Vec<u8>,
    /// The sealed share, 48 bytes.
    pub ciphertext: Vec<u8>,
}

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

/// What [`validate_deposit`] made of a deposit.
#[derive(Debug, Clone)]
pub struct CheckedDeposit {
    /// The recipients, canonical.
    pub recipients: Recipients,
    /// The shares, in index order.
    pub shares: Vec<StoredShare>,
    /// The threshold.
    pub threshold: u8,
    /// The key check.
    pub key_check: [u8; 32],
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

/// Checks a deposit's fields against the protocol's limits, and returns the
/// recipients in canonical order. The metadata's expiry is not checked: the
/// voicemail expires with its storage grant, whose existence and use are
/// checked when the deposit applies. `published` is every share key the
/// group published, by (node id, epoch): each share must be sealed to one.
/// Pure: the service calls it before it proposes anything, so a refused
/// deposit changes nothing.
pub fn validate_deposit(
    d: &Deposit,
    published: &BTreeMap<(u64, u32), PublishedKey>,
) -> Result<CheckedDeposit, AuthError> {
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
    let shares = validate_shares(&d.shares, published)?;
    let n = shares.len();
    let want = share::threshold(n);
    if d.threshold as usize != want {
        return Err(invalid(
            "threshold",
            format!(
                "{}, but {n} shares need a threshold of {want} (a majority): split the key with the grant's share keys again",
                d.threshold
            ),
        ));
    }
    let key_check: [u8; 32] = d.key_check.as_slice().try_into().map_err(|_| {
        invalid(
            "key_check",
            format!("{} bytes, expected 32", d.key_check.len()),
        )
    })?;
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
    Ok(CheckedDeposit {
        recipients,
        shares,
        threshold: want as u8,
        key_check,
    })
}

/// Checks a deposit's shares: 1 to [`MAX_SHARES`], indices exactly 1..=n
/// once each, one per server, each sealed to a published key, and of the
/// sizes HPKE gives. Returns them in index order.
fn validate_shares(
    shares: &[ShareIn],
    published: &BTreeMap<(u64, u32), PublishedKey>,
) -> Result<Vec<StoredShare>, AuthError> {
    let n = shares.len();
    if n == 0 {
        return Err(invalid(
            "shares",
            "none: the session key must be split among the grant's share_keys, one share for each (update the client)",
        ));
    }
    if n > MAX_SHARES {
        return Err(invalid(
            "shares",
            format!("{n} shares, at most {MAX_SHARES}"),
        ));
    }
    let mut out: Vec<StoredShare> = Vec::with_capacity(n);
    for (i, s) in shares.iter().enumerate() {
        let at = |what: &str| format!("share {} ({what})", i + 1);
        if s.index == 0 || s.index as usize > n {
            return Err(invalid(
                "shares.index",
                format!("{}: {}, expected 1 to {n}", at("index"), s.index),
            ));
        }
        if out.iter().any(|o| u32::from(o.index) == s.index) {
            return Err(invalid(
                "shares.index",
                format!("{}: index {} appears twice", at("index"), s.index),
            ));
        }
        if out.iter().any(|o| o.node_id == s.node_id) {
            return Err(invalid(
                "shares.node_id",
                format!(
                    "{}: server {:016x} has two shares; each server gets one",
                    at("node_id"),
                    s.node_id
                ),
            ));
        }
        if !published.contains_key(&(s.node_id, s.epoch)) {
            return Err(invalid(
                "shares.epoch",
                format!(
                    "{}: server {:016x} published no share key of epoch {}: seal to the keys of a fresh grant",
                    at("epoch"),
                    s.node_id,
                    s.epoch
                ),
            ));
        }
        let enc: [u8; PUBLIC_LEN] = s.enc.as_slice().try_into().map_err(|_| {
            invalid(
                "shares.enc",
                format!(
                    "{}: {} bytes, expected {PUBLIC_LEN}",
                    at("enc"),
                    s.enc.len()
                ),
            )
        })?;
        if s.ciphertext.len() != SEALED_LEN {
            return Err(invalid(
                "shares.ciphertext",
                format!(
                    "{}: {} bytes, expected {SEALED_LEN}",
                    at("ciphertext"),
                    s.ciphertext.len()
                ),
            ));
        }
        out.push(StoredShare {
            node_id: s.node_id,
            epoch: s.epoch,
            index: s.index as u8,
            enc,
            ciphertext: s.ciphertext.clone(),
        });
    }
    out.sort_by_key(|s| s.index);
    Ok(out)
}

impl AuthService {
    /// Checks that the key is split among every voter of the group, so that
    /// no server, whatever the client did, holds more than one share; and
    /// opens the share sealed to this server: a deposit split for another
    /// grant or recipient list, sealed to an epoch this server does not
    /// hold, or altered on the way is refused now rather than found out when
    /// a recipient asks. Only this server's share can be opened here; the
    /// others are the sender's word.
    fn check_shares(&self, d: &CheckedDeposit, grant_serial: u64) -> Result<(), AuthError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let name = |id: u64| {
            membership
                .membership()
                .get_node(&id)
                .map_or_else(|| format!("{id:016x}"), |m| m.name.clone())
        };
        for id in membership.membership().voter_ids() {
            if !d.shares.iter().any(|s| s.node_id == id) {
                return Err(invalid(
                    "shares",
                    format!(
                        "none for auth server {}: split the key among every server the grant lists, and ask for a new grant if the group changed since",
                        name(id)
                    ),
                ));
            }
        }
        let me = self.node_id();
        let Some(own) = d.shares.iter().find(|s| s.node_id == me) else {
            // A server that is not a voter (a learner catching up) has no
            // share to check.
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
