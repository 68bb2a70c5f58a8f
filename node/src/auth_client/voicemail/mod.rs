//! Voicemail at the auth servers: deposits (paper §3.3 step 2) under a
//! grant (`grant.rs`), the session key split among the grant's share keys so
//! no server holds it; what the sender left; and the pending voicemail each
//! recipient lists, watches, opens and acks. A pending voicemail names its
//! sender by a certificate, or is marked anonymous and carries none; it
//! carries no key, only where its shares are (`recover.rs` gets them).

use tonic::Code;
use vmail_proto::cert::UserCertificate;
use vmail_proto::grant::{DeleteOrder, DepositProof};
use vmail_proto::keys::SecretKey;
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::{Recipients, Username};
use vmail_proto::pb::{self};
use vmail_proto::share::{self, ShareKey};

use super::shares::{self as checks, KeyShares};
use super::{AuthClient, ClientError, bearer, protocol};

/// The answer to an ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// Whether this was the last recipient: the session key is erased.
    pub key_erased: bool,
    /// With `key_erased`, the signed order to delete the shards, checked
    /// against the cluster key.
    pub delete_order: Option<DeleteOrder>,
}

/// A deposit to make.
#[derive(Debug, Clone)]
pub struct NewDeposit {
    /// The storage grant the shards were stored under.
    pub grant_serial: u64,
    /// Idempotency key: reuse it to retry the same deposit.
    pub request_id: [u8; 16],
    /// Canonical recipients.
    pub recipients: Recipients,
    /// Storage locator.
    pub locator: Vec<u8>,
    /// The session key the voicemail is encrypted with. It is split among
    /// `share_keys`; no server sees it.
    pub session_key: SecretKey,
    /// The grant's share keys ([`super::Grant::share_keys`]), in its order.
    pub share_keys: Vec<ShareKey>,
    /// Metadata.
    pub meta: VoicemailMeta,
}

/// A deposit as it goes on the wire, its session key already split and
/// each share sealed ([`AuthClient::seal_deposit`]).
#[derive(Debug, Clone)]
pub struct SealedDeposit(pb::DepositRequest);

/// The server's receipt for a deposit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositReceipt {
    /// The voicemail id.
    pub voicemail_id: [u8; 16],
    /// Whether this answered a retry of an earlier request.
    pub replayed: bool,
    /// The group's signed word that the deposit used its grant, checked
    /// against the cluster key: the holders keep the shards only with it.
    pub proof: DepositProof,
}

/// A recalled voicemail: the order to delete its shards, and where they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recalled {
    /// The signed delete order, checked against the pinned keys; none if
    /// it failed the check (logged: the shards then stay until expiry).
    pub delete_order: Option<DeleteOrder>,
    /// The voicemail's locator.
    pub locator: Vec<u8>,
}

/// Where one recipient of a sent voicemail stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Not fetched yet.
    Pending,
    /// Fetched (or discarded) and acked.
    Delivered,
    /// It expired before this recipient fetched it.
    ExpiredUnread,
    /// The sender recalled it first.
    Recalled,
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::ExpiredUnread => "expired unread",
            Self::Recalled => "recalled",
        })
    }
}

/// A voicemail the user left, as the group reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Voicemail id.
    pub id: [u8; 16],
    /// Deposit time, Unix seconds.
    pub deposited_at: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// Plaintext size, as the sender stated it.
    pub size: u64,
    /// MIME type.
    pub content_type: String,
    /// Each recipient, its state, and since when (Unix seconds).
    pub recipients: Vec<(String, Delivery, u64)>,
}

/// Who left a pending voicemail, as its recipient knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// The sender's certificate, checked against the cluster key and valid
    /// at deposit time.
    Known(Box<UserCertificate>),
    /// The sender chose to stay hidden.
    Hidden,
}

impl Sender {
    /// What a user is shown: the username, or "anonymous".
    pub fn display_name(&self) -> &str {
        match self {
            Self::Known(cert) => cert.username.as_str(),
            Self::Hidden => ANONYMOUS,
        }
    }

    /// The sender's username, when known.
    pub fn username(&self) -> Option<&Username> {
        match self {
            Self::Known(cert) => Some(&cert.username),
            Self::Hidden => None,
        }
    }

    /// Whether the sender is hidden.
    pub fn is_hidden(&self) -> bool {
        matches!(self, Self::Hidden)
    }
}

/// How a hidden sender is shown.
pub const ANONYMOUS: &str = "anonymous";

/// A voicemail waiting for the caller. Its session key is not here: get it
/// with [`AuthClient::recover_session_key`] when it is fetched.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Voicemail id.
    pub id: [u8; 16],
    /// Who left it.
    pub sender: Sender,
    /// The sender is not in the caller's contacts ("unknown caller").
    pub first_contact: bool,
    /// Deposit time, Unix seconds.
    pub deposited_at: u64,
    /// Metadata.
    pub meta: VoicemailMeta,
    /// Storage locator.
    pub locator: Vec<u8>,
    /// All recipients.
    pub recipients: Recipients,
    /// How its session key is shared among the auth servers.
    pub shares: KeyShares,
}

impl AuthClient {
    /// Deposits a locator for the recipients, and the session key split
    /// among the grant's share keys, each share sealed to its server
    /// (paper §3.3 step 2, docs/PROTOCOL.md §3.2): [`AuthClient::seal_deposit`]
    /// then [`AuthClient::deposit_sealed`].
    pub async fn deposit(&mut self, d: &NewDeposit) -> Result<DepositReceipt, ClientError> {
        let sealed = self.seal_deposit(d)?;
        self.deposit_sealed(&sealed).await
    }

    /// Splits `d`'s session key among its grant's share keys and seals each
    /// share to its server: the deposit as it goes on the wire. No IO; the
    /// X25519 work of one HPKE seal per server is done here, so a sender can
    /// do it ahead of the call.
    pub fn seal_deposit(&self, d: &NewDeposit) -> Result<SealedDeposit, ClientError> {
        checks::check_share_keys(&d.share_keys, self.configured.len())?;
        let (threshold, key_check, shares) = share::split(
            &d.session_key,
            &d.share_keys,
            d.grant_serial,
            &d.recipients,
            &d.locator,
        )
        .map_err(|e| protocol(format!("the storage grant's share keys: {e}")))?;
        Ok(SealedDeposit(pb::DepositRequest {
            request_id: d.request_id.to_vec(),
            recipients: d.recipients.to_strings(),
            locator: d.locator.clone(),
            metadata: Some(d.meta.clone().into()),
            grant_serial: d.grant_serial,
            shares: shares.into_iter().map(Into::into).collect(),
            threshold: u32::from(threshold),
            key_check: key_check.to_vec(),
        }))
    }

    /// Sends a sealed deposit ([`AuthClient::seal_deposit`]). Sending the
    /// same one again retries the same deposit.
    pub async fn deposit_sealed(
        &mut self,
        d: &SealedDeposit,
    ) -> Result<DepositReceipt, ClientError> {
        let req = &d.0;
        let token = self.require_token()?;
        // Safe to retry anywhere: the request id makes the deposit
        // idempotent, so a lost answer is asked for again until it is known.
        let resp = self
            .call_until_known(|mut c| {
                let req = req.clone();
                async move { c.deposit(bearer(token, req)).await }
            })
            .await
            .result?;
        let proof = DepositProof::from_bytes(&resp.deposit_proof)
            .and_then(|p| {
                p.verify_pinned(&self.cluster_key, self.group_key.as_ref())
                    .map(|()| p)
            })
            .map_err(|e| protocol(format!("the deposit proof: {e}")))?;
        if proof.serial != req.grant_serial {
            return Err(protocol(format!(
                "the deposit proof names grant {} where the deposit used {}",
                proof.serial, req.grant_serial
            )));
        }
        Ok(DepositReceipt {
            voicemail_id: resp
                .voicemail_id
                .as_slice()
                .try_into()
                .map_err(|_| protocol("voicemail id is not 16 bytes"))?,
            replayed: resp.replayed,
            proof,
        })
    }

    /// Withdraws a voicemail this user left that not every recipient has
    /// fetched: the order to delete its shards, and its locator.
    pub async fn recall(&mut self, id: &[u8; 16]) -> Result<Recalled, ClientError> {
        let token = self.require_token()?;
        let req = pb::RecallRequest {
            voicemail_id: id.to_vec(),
        };
        // Retried until known: a recall that took effect answers NOT_FOUND
        // the second time, which says so.
        let r = self
            .call_until_known(|mut c| {
                let req = req.clone();
                async move { c.recall(bearer(token, req)).await }
            })
            .await
            .result?;
        let delete_order = self.check_order(&r.delete_order);
        Ok(Recalled {
            delete_order,
            locator: r.locator,
        })
    }

    /// The voicemails this user left, newest first, with each recipient's
    /// state.
    pub async fn list_sent(&mut self) -> Result<Vec<Sent>, ClientError> {
        let token = self.require_token()?;
        let resp = self
            .call(|mut c| async move { c.list_sent(bearer(token, pb::ListSentRequest {})).await })
            .await
            .result?;
        resp.voicemails
            .into_iter()
            .map(|v| {
                let recipients = v
                    .recipients
                    .into_iter()
                    .map(|r| {
                        let state = match pb::DeliveryState::try_from(r.state) {
                            Ok(pb::DeliveryState::Pending) => Delivery::Pending,
                            Ok(pb::DeliveryState::Delivered) => Delivery::Delivered,
                            Ok(pb::DeliveryState::ExpiredUnread) => Delivery::ExpiredUnread,
                            Ok(pb::DeliveryState::Recalled) => Delivery::Recalled,
                            _ => {
                                return Err(protocol(format!(
                                    "unknown delivery state {} for {}",
                                    r.state, r.username
                                )));
                            }
                        };
                        Ok((r.username, state, r.at))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Sent {
                    id: v
                        .voicemail_id
                        .as_slice()
                        .try_into()
                        .map_err(|_| protocol("voicemail id is not 16 bytes"))?,
                    deposited_at: v.deposited_at,
                    expires_at: v.expires_at,
                    size: v.size,
                    content_type: v.content_type,
                    recipients,
                })
            })
            .collect()
    }

    /// The delete order that came with an ack or a recall, parsed and
    /// checked against the pinned keys; none if there was none. The ack or
    /// recall took effect either way, so an order that fails the check is
    /// only logged and dropped: holders then keep the shards, which they
    /// cannot read, until the grant's expiry.
    fn check_order(&self, bytes: &[u8]) -> Option<DeleteOrder> {
        if bytes.is_empty() {
            return None;
        }
        let checked = DeleteOrder::from_bytes(bytes).and_then(|o| {
            o.verify_pinned(&self.cluster_key, self.group_key.as_ref())
                .map(|()| o)
        });
        checked
            .inspect_err(|e| {
                tracing::warn!(
                    "the delete order is dropped ({e}): holders keep the shards until the grant expires"
                );
            })
            .ok()
    }

    /// Checks one pending voicemail from the server: its sender and the
    /// shape of its key shares.
    pub fn open_pending(&self, p: pb::PendingVoicemail) -> Result<Pending, ClientError> {
        let id: [u8; 16] = p
            .voicemail_id
            .as_slice()
            .try_into()
            .map_err(|_| protocol("voicemail id is not 16 bytes"))?;
        let sender = pending_sender(
            &self.cluster_key,
            self.group_key.as_ref(),
            &id,
            p.anonymous,
            p.sender_certificate,
            p.deposited_at,
        )?;
        let recipients = Recipients::parse(&p.recipients)?;
        let shares = checks::key_shares(p.threshold, &p.key_check, p.shares)
            .map_err(|e| protocol(format!("pending voicemail {}: {e}", hex::encode(id))))?;
        Ok(Pending {
            id,
            sender,
            first_contact: p.first_contact,
            deposited_at: p.deposited_at,
            meta: p.metadata.map(Into::into).unwrap_or_default(),
            locator: p.locator,
            recipients,
            shares,
        })
    }

    /// The voicemails waiting for this user (retrieval steps 1-2).
    pub async fn list_pending(&mut self) -> Result<Vec<Pending>, ClientError> {
        let token = self.require_token()?;
        let resp = self
            .call(|mut c| async move {
                c.list_pending(bearer(token, pb::ListPendingRequest {}))
                    .await
            })
            .await
            .result?;
        resp.voicemails
            .into_iter()
            .map(|p| self.open_pending(p))
            .collect()
    }

    /// A stream of pending voicemails: the backlog, then each new one.
    /// Open each item with [`AuthClient::open_pending`].
    pub async fn watch_pending(
        &mut self,
    ) -> Result<tonic::Streaming<pb::PendingVoicemail>, ClientError> {
        let token = self.require_token()?;
        Ok(self
            .call(|mut c| async move {
                c.watch_pending(bearer(token, pb::WatchPendingRequest {}))
                    .await
            })
            .await
            .result?)
    }

    /// Tells the server this user has fetched the voicemail: whether the
    /// session key is now erased everywhere, and if so the order to delete
    /// the shards.
    pub async fn ack(&mut self, id: &[u8; 16]) -> Result<Acked, ClientError> {
        let token = self.require_token()?;
        let id = *id;
        let answer = self
            .call(|mut c| async move {
                c.ack(bearer(
                    token,
                    pb::AckRequest {
                        voicemail_id: id.to_vec(),
                    },
                ))
                .await
            })
            .await;
        match answer.result {
            Ok(r) => {
                let delete_order = self.check_order(&r.delete_order);
                Ok(Acked {
                    key_erased: r.key_erased,
                    delete_order,
                })
            }
            // An earlier attempt took effect before its server failed.
            Err(s) if answer.retried && s.code() == Code::NotFound => Ok(Acked {
                key_erased: false,
                delete_order: None,
            }),
            Err(s) => Err(s.into()),
        }
    }
}

/// Who left a pending voicemail: a hidden sender must come without a
/// certificate, any other with one that the cluster key signed (and the
/// group key, if pinned) and that was valid when they deposited, however
/// long ago that was. Anything else breaks the protocol.
fn pending_sender(
    cluster_key: &ed25519_dalek::VerifyingKey,
    group_key: Option<&ed25519_dalek::VerifyingKey>,
    id: &[u8; 16],
    anonymous: bool,
    certificate: Option<pb::UserCertificate>,
    deposited_at: u64,
) -> Result<Sender, ClientError> {
    match (anonymous, certificate) {
        (true, None) => Ok(Sender::Hidden),
        (true, Some(_)) => Err(protocol(format!(
            "pending voicemail {} is marked anonymous but carries a sender certificate",
            hex::encode(id)
        ))),
        (false, None) => Err(protocol(format!(
            "pending voicemail {} has no sender certificate and is not marked anonymous",
            hex::encode(id)
        ))),
        (false, Some(cert)) => {
            let cert = UserCertificate::try_from(cert)?;
            cert.verify(cluster_key, deposited_at)?;
            if let Some(group_key) = group_key {
                cert.verify_group_signature(group_key)?;
            }
            Ok(Sender::Known(Box::new(cert)))
        }
    }
}

#[cfg(test)]
mod tests;
