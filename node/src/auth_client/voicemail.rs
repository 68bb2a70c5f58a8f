//! Voicemail at the auth servers: deposits (paper §3.3 step 2) under a
//! grant (`grant.rs`), what the sender left, and the pending voicemail each
//! recipient lists, watches, opens and acks. A pending voicemail names its
//! sender by a certificate, or is marked anonymous and carries none.

use tonic::Code;
use vmail_proto::cert::UserCertificate;
use vmail_proto::grant::{DeleteOrder, DepositProof};
use vmail_proto::keys::{DeliveryContext, DepositContext, MasterKey, SecretKey};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::{Recipients, Username};
use vmail_proto::pb::{self};

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
    /// The session key the voicemail is encrypted with.
    pub session_key: SecretKey,
    /// Metadata.
    pub meta: VoicemailMeta,
}

impl NewDeposit {
    /// The session key wrapped under `master_key` and bound to this
    /// deposit's request id, recipients and locator (docs/PROTOCOL.md §3.2).
    pub fn wrap_key(&self, master_key: &MasterKey) -> Vec<u8> {
        master_key.wrap_deposit(
            &self.session_key,
            &DepositContext {
                request_id: &self.request_id,
                recipients: &self.recipients,
                locator: &self.locator,
            },
        )
    }
}

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
    /// The signed delete order, checked against the cluster key.
    pub delete_order: DeleteOrder,
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

/// A voicemail waiting for the caller, with its session key unwrapped.
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
    /// The session key.
    pub session_key: SecretKey,
}

impl AuthClient {
    /// Deposits a session key and locator for the recipients (paper §3.3 step 2).
    pub async fn deposit(
        &mut self,
        master_key: &MasterKey,
        d: &NewDeposit,
    ) -> Result<DepositReceipt, ClientError> {
        let wrapped_key = d.wrap_key(master_key);
        let req = pb::DepositRequest {
            request_id: d.request_id.to_vec(),
            recipients: d.recipients.to_strings(),
            locator: d.locator.clone(),
            wrapped_key,
            metadata: Some(d.meta.clone().into()),
            grant_serial: d.grant_serial,
        };
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
            .and_then(|p| p.verify(&self.cluster_key).map(|()| p))
            .map_err(|e| protocol(format!("the deposit proof: {e}")))?;
        if proof.serial != d.grant_serial {
            return Err(protocol(format!(
                "the deposit proof names grant {} where the deposit used {}",
                proof.serial, d.grant_serial
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
        let delete_order = self.check_order(&r.delete_order)?;
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

    /// A delete order from the server, parsed and checked against the
    /// cluster key.
    fn check_order(&self, bytes: &[u8]) -> Result<DeleteOrder, ClientError> {
        DeleteOrder::from_bytes(bytes)
            .and_then(|o| o.verify(&self.cluster_key).map(|()| o))
            .map_err(|e| protocol(format!("the delete order: {e}")))
    }

    /// Checks and opens one pending voicemail from the server.
    pub fn open_pending(
        &self,
        master_key: &MasterKey,
        p: pb::PendingVoicemail,
    ) -> Result<Pending, ClientError> {
        let id: [u8; 16] = p
            .voicemail_id
            .as_slice()
            .try_into()
            .map_err(|_| protocol("voicemail id is not 16 bytes"))?;
        let sender = pending_sender(
            &self.cluster_key,
            &id,
            p.anonymous,
            p.sender_certificate,
            p.deposited_at,
        )?;
        let recipients = Recipients::parse(&p.recipients)?;
        let session_key = master_key
            .unwrap_delivery(
                &p.wrapped_key,
                &DeliveryContext {
                    voicemail_id: &id,
                    recipients: &recipients,
                    locator: &p.locator,
                },
            )
            .map_err(|e| {
                protocol(format!(
                    "session key of voicemail {} does not open under our master key ({e}); log in again",
                    hex::encode(id)
                ))
            })?;
        Ok(Pending {
            id,
            sender,
            first_contact: p.first_contact,
            deposited_at: p.deposited_at,
            meta: p.metadata.map(Into::into).unwrap_or_default(),
            locator: p.locator,
            recipients,
            session_key,
        })
    }

    /// The voicemails waiting for this user (retrieval steps 1-2).
    pub async fn list_pending(
        &mut self,
        master_key: &MasterKey,
    ) -> Result<Vec<Pending>, ClientError> {
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
            .map(|p| self.open_pending(master_key, p))
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
                let delete_order = if r.delete_order.is_empty() {
                    None
                } else {
                    Some(self.check_order(&r.delete_order)?)
                };
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
/// certificate, any other with one that the cluster key signed and that was
/// valid when they deposited, however long ago that was. Anything else
/// breaks the protocol.
fn pending_sender(
    cluster_key: &ed25519_dalek::VerifyingKey,
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
            Ok(Sender::Known(Box::new(cert)))
        }
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use tonic::transport::Endpoint;
    use vmail_proto::cert::CertificateBody;

    use super::*;

    const DEPOSITED_AT: u64 = 1_800_000_000;

    /// A client that never connects: `open_pending` does no IO.
    fn offline_client(cluster: &SigningKey) -> AuthClient {
        let ch = Endpoint::from_static("https://127.0.0.1:9").connect_lazy();
        AuthClient {
            rpc: super::super::rpc_client(ch),
            cluster_key: cluster.verifying_key(),
            ca_pem: Vec::new(),
            endpoints: vec!["https://127.0.0.1:9".into()],
            endpoint: "https://127.0.0.1:9".into(),
            token: None,
        }
    }

    fn cert_of(cluster: &SigningKey, name: &str) -> UserCertificate {
        CertificateBody {
            serial: 7,
            username: Username::parse(name).unwrap(),
            identity_key: SigningKey::from_bytes(&[9; 32]).verifying_key(),
            peer_id: Vec::new(),
            not_before: DEPOSITED_AT - 60,
            not_after: DEPOSITED_AT + 3600,
        }
        .sign(cluster)
    }

    /// A pending voicemail for "bob" whose key opens under `master`.
    fn pending(
        master: &MasterKey,
        anonymous: bool,
        cert: Option<UserCertificate>,
    ) -> pb::PendingVoicemail {
        let id = [5u8; 16];
        let recipients = Recipients::parse(["bob"]).unwrap();
        let locator = vec![1, 2, 3];
        let wrapped_key = master.wrap_delivery(
            &SecretKey::random(),
            &DeliveryContext {
                voicemail_id: &id,
                recipients: &recipients,
                locator: &locator,
            },
        );
        pb::PendingVoicemail {
            voicemail_id: id.to_vec(),
            sender_certificate: cert.map(Into::into),
            deposited_at: DEPOSITED_AT,
            recipients: recipients.to_strings(),
            locator,
            wrapped_key,
            anonymous,
            first_contact: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_anonymous_voicemail_opens_without_a_sender() {
        let cluster = SigningKey::from_bytes(&[1; 32]);
        let client = offline_client(&cluster);
        let master = MasterKey::from_bytes([2; 32]);
        let p = client
            .open_pending(&master, pending(&master, true, None))
            .unwrap();
        assert_eq!(p.sender, Sender::Hidden);
        assert_eq!(p.sender.display_name(), "anonymous");
        assert!(p.sender.username().is_none());
        assert!(p.first_contact);
    }

    #[tokio::test]
    async fn a_known_sender_is_checked_and_named() {
        let cluster = SigningKey::from_bytes(&[1; 32]);
        let client = offline_client(&cluster);
        let master = MasterKey::from_bytes([2; 32]);
        let alice = cert_of(&cluster, "alice");
        let p = client
            .open_pending(&master, pending(&master, false, Some(alice.clone())))
            .unwrap();
        assert_eq!(p.sender, Sender::Known(Box::new(alice)));
        assert_eq!(p.sender.display_name(), "alice");
        // A certificate another key signed is refused.
        let forged = cert_of(&SigningKey::from_bytes(&[3; 32]), "alice");
        assert!(matches!(
            client.open_pending(&master, pending(&master, false, Some(forged))),
            Err(ClientError::Certificate(_))
        ));
    }

    #[tokio::test]
    async fn a_missing_or_stray_certificate_breaks_the_protocol() {
        let cluster = SigningKey::from_bytes(&[1; 32]);
        let client = offline_client(&cluster);
        let master = MasterKey::from_bytes([2; 32]);
        let err = client
            .open_pending(&master, pending(&master, false, None))
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Protocol(m) if m.contains("no sender certificate")),
            "{err}"
        );
        let alice = cert_of(&cluster, "alice");
        let err = client
            .open_pending(&master, pending(&master, true, Some(alice)))
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Protocol(m) if m.contains("anonymous but carries")),
            "{err}"
        );
    }
}
