//! The thin gRPC adapter: converts `vmail.auth.v1` messages to domain calls on
//! [`AuthService`] and maps [`AuthError`] to a status code in one function,
//! [`status`].
//!
//! Over 600 lines because it is one handler, each a few lines of
//! conversion, per RPC of `vmail.auth.v1` (22 of them), with the
//! WatchPending stream; a split by RPC family (accounts, voicemail,
//! policies) is possible and owed, but would only move conversions apart
//! from the one `status` table they share.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use vmail_proto::pb;

use crate::cluster::Event;
use crate::metrics::{GrantRefusal, LoginFailure};
use crate::service::{
    AuthError, AuthService, Delivery, Deposit, GrantRequest, LoginFinish, RegisterFinish,
    ShardRequest, ShareIn, WatchSlot,
};
use crate::store::{
    Allowance, DeliveryState, Policy, PolicyList, PolicyMode, Receipt, Refusal, Session,
    StoreError, VoicemailId,
};

/// Metadata header that carries the session token.
pub const AUTHORIZATION: &str = "authorization";
/// Metadata header of an UNAVAILABLE answer that names the leader's public
/// URL: the client retries there.
pub const LEADER: &str = "vmail-leader";

/// Metadata header of a RESOURCE_EXHAUSTED answer to a rate-limited call:
/// whole seconds until the call would be accepted.
pub const RETRY_AFTER: &str = "retry-after";

/// Buffer of a WatchPending stream, in voicemails: with the task's one
/// voicemail in hand, what an unread stream holds of the pending list (a
/// voicemail is at most about 10 KiB with a 4 KiB locator).
pub const WATCH_BUFFER: usize = 16;

/// The public `vmail.auth.v1.Auth` service.
#[derive(Debug, Clone)]
pub struct GrpcAuth {
    svc: Arc<AuthService>,
}

impl GrpcAuth {
    /// Serves `svc` over gRPC.
    pub fn new(svc: Arc<AuthService>) -> Self {
        Self { svc }
    }

    async fn session<T>(&self, req: &Request<T>) -> Result<Session, Status> {
        let token = bearer_token(req)?;
        self.svc.authenticate(&token).await.map_err(status)
    }
}

/// The token in a request's `authorization: Bearer HEX` header; empty if
/// there is none.
fn bearer_token<T>(req: &Request<T>) -> Result<Vec<u8>, Status> {
    Ok(match req.metadata().get(AUTHORIZATION) {
        None => Vec::new(),
        Some(v) => {
            let v = v.to_str().map_err(|_| status(AuthError::BadToken))?;
            let hex_token = v
                .strip_prefix("Bearer ")
                .ok_or_else(|| status(AuthError::BadToken))?;
            hex::decode(hex_token.trim()).map_err(|_| status(AuthError::BadToken))?
        }
    })
}

/// Maps a domain error to a gRPC status.
pub fn status(e: AuthError) -> Status {
    use AuthError as E;
    let msg = e.to_string();
    match e {
        E::InvalidArgument { .. } | E::Name(_) => Status::invalid_argument(msg),
        E::UnknownUser(_)
        | E::UnknownRecipient(_)
        | E::NotPending { .. }
        | E::GrantUnknown(_)
        | E::NotListed { .. }
        | E::NotReceived(_)
        | E::NoShare { .. }
        | E::NothingToRecall { .. } => Status::not_found(msg),
        E::UserExists(_) | E::RequestIdReused => Status::already_exists(msg),
        E::InviteRequired
        | E::InviteInvalid
        | E::BadIdentityProof
        | E::Account(_)
        | E::GrantNotOwned(_)
        | E::NoRecipientAccepts(_)
        | E::NotSender(_) => Status::permission_denied(msg),
        E::WrongPassword(_) | E::NoToken | E::BadToken | E::SessionExpired(_) => {
            Status::unauthenticated(msg)
        }
        E::LockedOut {
            retry_after_secs, ..
        }
        | E::RateLimited {
            retry_after_secs, ..
        } => {
            let mut s = Status::resource_exhausted(msg);
            s.metadata_mut().insert(
                RETRY_AFTER,
                retry_after_secs.to_string().parse().expect("digits"),
            );
            s
        }
        E::Quota { resets_at, .. } => {
            let mut s = Status::resource_exhausted(msg);
            if let Some(secs) = resets_at.checked_sub(vmail_proto::unix_now())
                && resets_at > 0
            {
                s.metadata_mut()
                    .insert(RETRY_AFTER, secs.to_string().parse().expect("digits"));
            }
            s
        }
        E::TooManyStreams { .. } | E::InboxFull { .. } | E::TooManyGrants { .. } => {
            Status::resource_exhausted(msg)
        }
        E::LoginExpired(_)
        | E::GrantUsed { .. }
        | E::GrantLapsed { .. }
        | E::GrantRecipients { .. }
        | E::GrantSuperseded { .. }
        | E::GrantShares { .. }
        | E::ShareKeyErased { .. }
        | E::ShareUnusable(_)
        | E::ListFull { .. } => Status::failed_precondition(msg),
        E::Store(StoreError::DiskFull(_)) => Status::resource_exhausted(msg),
        E::NotLeader(leader) => {
            let mut s = Status::unavailable(msg);
            if let Some(v) = leader.and_then(|m| m.api_url.parse().ok()) {
                s.metadata_mut().insert(LEADER, v);
            }
            s
        }
        E::Unavailable(_) | E::ShareKeyMissing(_) => Status::unavailable(msg),
        E::Apply(ref why) => {
            tracing::error!(error = %why, "a log entry could not be applied");
            Status::internal(
                "the auth server's stored data is corrupt, so nothing was changed. The server log has the details",
            )
        }
        E::Store(ref inner) => {
            tracing::error!(error = %inner, "storage failure");
            Status::internal(
                "the auth server's storage failed; nothing was changed. The server log has the details; retry later",
            )
        }
    }
}

/// The metrics' reason for a refused login call.
fn login_failure(e: &AuthError) -> LoginFailure {
    use AuthError as E;
    match e {
        E::WrongPassword(_) => LoginFailure::WrongPassword,
        E::UnknownUser(_) => LoginFailure::UnknownUser,
        E::LockedOut { .. } => LoginFailure::LockedOut,
        E::LoginExpired(_) => LoginFailure::Expired,
        E::InvalidArgument { .. } | E::Name(_) | E::BadIdentityProof | E::Account(_) => {
            LoginFailure::Invalid
        }
        E::NotLeader(_) | E::Unavailable(_) => LoginFailure::Unavailable,
        _ => LoginFailure::Other,
    }
}

/// The metrics' reason for a refused storage grant request.
fn grant_refusal(e: &AuthError) -> GrantRefusal {
    use AuthError as E;
    match e {
        E::NoRecipientAccepts(_) => GrantRefusal::Policy,
        E::Quota { .. } => GrantRefusal::Quota,
        E::TooManyGrants { .. } => GrantRefusal::TooManyGrants,
        E::RateLimited { .. } => GrantRefusal::RateLimited,
        E::InvalidArgument { .. } | E::Name(_) | E::UnknownRecipient(_) => GrantRefusal::Invalid,
        _ => GrantRefusal::Other,
    }
}

fn delivery_to_pb(d: Delivery) -> pb::PendingVoicemail {
    pb::PendingVoicemail {
        voicemail_id: d.id.to_vec(),
        anonymous: d.sender_certificate.is_none(),
        first_contact: d.first_contact,
        sender_certificate: d.sender_certificate.map(Into::into),
        deposited_at: d.deposited_at,
        metadata: Some(d.metadata.into()),
        locator: d.locator,
        recipients: d.recipients,
        threshold: u32::from(d.threshold),
        key_check: d.key_check.to_vec(),
        shares: d
            .shares
            .into_iter()
            .map(|s| pb::ShareSlot {
                node_id: s.node_id,
                index: u32::from(s.index),
                api_url: s.api_url,
            })
            .collect(),
    }
}

impl From<pb::SealedShare> for ShareIn {
    fn from(s: pb::SealedShare) -> Self {
        Self {
            node_id: s.node_id,
            epoch: s.epoch,
            index: s.index,
            enc: s.enc,
            ciphertext: s.ciphertext,
        }
    }
}

fn mode_to_pb(m: PolicyMode) -> pb::PolicyMode {
    match m {
        PolicyMode::Anyone => pb::PolicyMode::Anyone,
        PolicyMode::Contacts => pb::PolicyMode::Contacts,
        PolicyMode::ContactsFirstContact => pb::PolicyMode::ContactsFirstContact,
    }
}

fn policy_to_pb(p: Policy) -> pb::Policy {
    pb::Policy {
        mode: p
            .mode
            .map_or(pb::PolicyMode::Unspecified, mode_to_pb)
            .into(),
        accept_anonymous: p.accept_anonymous,
        contacts: p.contacts.into_iter().collect(),
        blocked: p.blocked.into_iter().collect(),
        hidden_blocked: p.hidden_blocked.len() as u32,
        max_contacts: crate::store::MAX_CONTACTS as u32,
        max_blocked: crate::store::MAX_BLOCKED as u32,
    }
}

fn refusal_to_pb((username, r): (String, Refusal)) -> pb::RecipientRefusal {
    let reason = match r {
        Refusal::NotAccepted => pb::RefusalReason::NotAccepted,
        Refusal::NoAnonymous => pb::RefusalReason::NoAnonymous,
        Refusal::FirstContactWaiting => pb::RefusalReason::FirstContactWaiting,
        Refusal::FirstContactTooLong { .. } => pb::RefusalReason::FirstContactTooLong,
        Refusal::AccountTooNew { .. } => pb::RefusalReason::AccountTooNew,
    };
    pb::RecipientRefusal {
        username,
        reason: reason.into(),
        detail: r.to_string(),
    }
}

fn allowance_to_pb(a: Allowance) -> pb::Allowance {
    pb::Allowance {
        name: a.quota.name().to_owned(),
        limit: a.limit,
        used: a.used,
        resets_at: a.resets_at,
    }
}

impl GrpcAuth {
    /// One of the caller's lists edited.
    async fn edit_list(
        &self,
        req: Request<pb::EditListRequest>,
        list: PolicyList,
    ) -> Result<Response<pb::Policy>, Status> {
        let s = self.session(&req).await?;
        let r = req.into_inner();
        let p = self
            .svc
            .edit_policy(&s, list, r.add, r.remove)
            .await
            .map_err(status)?;
        Ok(Response::new(policy_to_pb(p)))
    }
}

fn receipt_to_pb(r: Receipt) -> pb::SentVoicemail {
    pb::SentVoicemail {
        voicemail_id: r.id.to_vec(),
        deposited_at: r.deposited_at,
        expires_at: r.expires_at,
        size: r.size,
        content_type: r.content_type,
        recipients: r
            .recipients
            .into_iter()
            .map(|l| pb::RecipientState {
                username: l.username,
                state: match l.state {
                    DeliveryState::Pending => pb::DeliveryState::Pending,
                    DeliveryState::Delivered => pb::DeliveryState::Delivered,
                    DeliveryState::ExpiredUnread => pb::DeliveryState::ExpiredUnread,
                    DeliveryState::Recalled => pb::DeliveryState::Recalled,
                }
                .into(),
                at: l.at,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for GrpcAuth {
    async fn register_start(
        &self,
        req: Request<pb::RegisterStartRequest>,
    ) -> Result<Response<pb::RegisterStartResponse>, Status> {
        let r = req.into_inner();
        let (registration_response, nonce) = self
            .svc
            .register_start(&r.username, &r.registration_request, &r.invite_code)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RegisterStartResponse {
            registration_response,
            credential_nonce: nonce.to_vec(),
        }))
    }

    async fn register_finish(
        &self,
        req: Request<pb::RegisterFinishRequest>,
    ) -> Result<Response<pb::RegisterFinishResponse>, Status> {
        let client_address = req.remote_addr().map(|a| a.ip());
        let r = req.into_inner();
        self.svc
            .register_finish(RegisterFinish {
                username: r.username,
                registration_upload: r.registration_upload,
                identity_key: r.identity_key,
                identity_proof: r.identity_proof,
                invite_code: r.invite_code,
                credential_nonce: r.credential_nonce,
                account_key: r.account_key,
                account_proof: r.account_proof,
                client_address,
            })
            .await
            .map_err(status)?;
        self.svc.metrics().registered();
        Ok(Response::new(pb::RegisterFinishResponse {}))
    }

    async fn login_start(
        &self,
        req: Request<pb::LoginStartRequest>,
    ) -> Result<Response<pb::LoginStartResponse>, Status> {
        let r = req.into_inner();
        let (login_id, credential_response) = self
            .svc
            .login_start(&r.username, &r.credential_request)
            .await
            .map_err(|e| {
                self.svc.metrics().login_failed(login_failure(&e));
                status(e)
            })?;
        Ok(Response::new(pb::LoginStartResponse {
            login_id: login_id.to_vec(),
            credential_response,
        }))
    }

    async fn login_finish(
        &self,
        req: Request<pb::LoginFinishRequest>,
    ) -> Result<Response<pb::LoginFinishResponse>, Status> {
        let r = req.into_inner();
        let out = self
            .svc
            .login_finish(LoginFinish {
                login_id: r.login_id,
                credential_finalization: r.credential_finalization,
                identity_key: r.identity_key,
                identity_proof: r.identity_proof,
                peer_id: r.peer_id,
                inbox_key: r.inbox_key,
                account_proof: r.account_proof,
            })
            .await
            .map_err(|e| {
                self.svc.metrics().login_failed(login_failure(&e));
                status(e)
            })?;
        self.svc.metrics().login_succeeded();
        Ok(Response::new(pb::LoginFinishResponse {
            session_token: out.session_token.to_vec(),
            master_key_id: out.master_key_id.to_vec(),
            expires_at: out.expires_at,
            certificate: Some(out.certificate.into()),
        }))
    }

    async fn get_certificate(
        &self,
        req: Request<pb::GetCertificateRequest>,
    ) -> Result<Response<pb::GetCertificateResponse>, Status> {
        let cert = self
            .svc
            .certificate(&req.into_inner().username)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetCertificateResponse {
            certificate: Some(cert.into()),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let s = self.session(&req).await?;
        let cert = self.svc.certificate(&s.username).await.map_err(status)?;
        let retention_secs = self.svc.retention(&s.username).await.map_err(status)?;
        let (allowances, reports) = self.svc.allowances(&s.username).await.map_err(status)?;
        Ok(Response::new(pb::WhoAmIResponse {
            username: s.username,
            master_key_id: s.master_key_id.to_vec(),
            expires_at: s.expires_at,
            certificate: Some(cert.into()),
            retention_secs,
            allowances: allowances.into_iter().map(allowance_to_pb).collect(),
            reports,
        }))
    }

    async fn request_grant(
        &self,
        req: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let token = bearer_token(&req)?;
        let s = self
            .svc
            .authenticate_for_write(&token)
            .await
            .map_err(status)?;
        let r = req.into_inner();
        let granted = self
            .svc
            .request_grant(
                &s,
                GrantRequest {
                    recipients: r.recipients,
                    message_id: r.message_id,
                    data_shards: r.data_shards,
                    shards: r
                        .shards
                        .into_iter()
                        .map(|s| ShardRequest {
                            len: s.len,
                            sha256: s.sha256,
                        })
                        .collect(),
                    holders: r.holders,
                    expires_at: r.expires_at,
                    anonymous: r.anonymous,
                },
            )
            .await
            .map_err(|e| {
                self.svc.metrics().grant_refused(grant_refusal(&e));
                status(e)
            })?;
        self.svc.metrics().grant_issued();
        Ok(Response::new(pb::GrantResponse {
            grant: granted.grant.to_bytes(),
            first_contact: granted
                .recipients
                .iter()
                .filter(|(_, a)| a.stranger)
                .map(|(u, _)| u.clone())
                .collect(),
            recipients: granted.recipients.into_iter().map(|(u, _)| u).collect(),
            refused: granted.refused.into_iter().map(refusal_to_pb).collect(),
            share_keys: granted
                .share_keys
                .iter()
                .map(|k| pb::ShareKey {
                    node_id: k.node_id,
                    epoch: k.epoch,
                    public_key: k.public.to_vec(),
                })
                .collect(),
            roster_signature: granted
                .roster_signature
                .map_or_else(Vec::new, |s| s.to_bytes().to_vec()),
        }))
    }

    async fn deposit(
        &self,
        req: Request<pb::DepositRequest>,
    ) -> Result<Response<pb::DepositResponse>, Status> {
        let token = bearer_token(&req)?;
        let s = self
            .svc
            .authenticate_for_write(&token)
            .await
            .map_err(status)?;
        let r = req.into_inner();
        let m = r
            .metadata
            .ok_or_else(|| Status::invalid_argument("metadata: missing"))?;
        let deposited = self
            .svc
            .deposit(
                &s,
                Deposit {
                    request_id: r.request_id,
                    recipients: r.recipients,
                    locator: r.locator,
                    shares: r.shares.into_iter().map(ShareIn::from).collect(),
                    threshold: r.threshold,
                    key_check: r.key_check,
                    metadata: m.into(),
                    grant_serial: r.grant_serial,
                },
            )
            .await
            .map_err(status)?;
        if !deposited.replayed {
            self.svc.metrics().deposited();
        }
        Ok(Response::new(pb::DepositResponse {
            voicemail_id: deposited.id.to_vec(),
            replayed: deposited.replayed,
            deposit_proof: deposited.proof.to_bytes(),
        }))
    }

    async fn open_share(
        &self,
        req: Request<pb::OpenShareRequest>,
    ) -> Result<Response<pb::OpenShareResponse>, Status> {
        // From this server's own state: every server answers for its share,
        // and none redirects to the leader.
        let token = bearer_token(&req)?;
        let s = self.svc.authenticate_local(&token).await.map_err(status)?;
        let opened = self
            .svc
            .open_share(&s, &req.into_inner().voicemail_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::OpenShareResponse {
            node_id: opened.node_id,
            index: u32::from(opened.index),
            enc: opened.enc.to_vec(),
            ciphertext: opened.ciphertext,
        }))
    }

    async fn list_pending(
        &self,
        req: Request<pb::ListPendingRequest>,
    ) -> Result<Response<pb::ListPendingResponse>, Status> {
        let s = self.session(&req).await?;
        let list = self.svc.list_pending(&s).await.map_err(status)?;
        Ok(Response::new(pb::ListPendingResponse {
            voicemails: list.into_iter().map(delivery_to_pb).collect(),
        }))
    }

    type WatchPendingStream = ReceiverStream<Result<pb::PendingVoicemail, Status>>;

    async fn watch_pending(
        &self,
        req: Request<pb::WatchPendingRequest>,
    ) -> Result<Response<Self::WatchPendingStream>, Status> {
        let s = self.session(&req).await?;
        let slot = self.svc.open_watch(&s).map_err(status)?;
        // Subscribe before listing, so nothing deposited in between is missed.
        let events = self.svc.subscribe();
        // Only the ids: the stream fetches each voicemail as it sends it, so
        // an unread stream holds at most WATCH_BUFFER of them.
        let backlog = self.svc.pending_ids(&s).await.map_err(status)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch(self.svc.clone(), s, slot, backlog, events, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let s = self.session(&req).await?;
        let receipt = self
            .svc
            .ack(&s, &req.into_inner().voicemail_id)
            .await
            .map_err(status)?;
        self.svc.metrics().acked();
        Ok(Response::new(pb::AckResponse {
            key_erased: receipt.key_erased,
            delete_order: receipt
                .delete_order
                .map(|o| o.to_bytes())
                .unwrap_or_default(),
        }))
    }

    async fn recall(
        &self,
        req: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::RecallResponse>, Status> {
        let s = self.session(&req).await?;
        let recalled = self
            .svc
            .recall(&s, &req.into_inner().voicemail_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RecallResponse {
            delete_order: recalled
                .delete_order
                .map(|o| o.to_bytes())
                .unwrap_or_default(),
            locator: recalled.locator,
        }))
    }

    async fn list_sent(
        &self,
        req: Request<pb::ListSentRequest>,
    ) -> Result<Response<pb::ListSentResponse>, Status> {
        let s = self.session(&req).await?;
        let sent = self.svc.list_sent(&s).await.map_err(status)?;
        Ok(Response::new(pb::ListSentResponse {
            voicemails: sent.into_iter().map(receipt_to_pb).collect(),
        }))
    }

    async fn set_retention(
        &self,
        req: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::SetRetentionResponse>, Status> {
        let s = self.session(&req).await?;
        let retention_secs = self
            .svc
            .set_retention(&s, req.into_inner().retention_secs)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetRetentionResponse { retention_secs }))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let s = self.session(&req).await?;
        self.svc.logout(&s).await.map_err(status)?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let s = self.session(&req).await?;
        let p = self.svc.policy(&s).await.map_err(status)?;
        Ok(Response::new(policy_to_pb(p)))
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let s = self.session(&req).await?;
        let r = req.into_inner();
        let mode = match pb::PolicyMode::try_from(r.mode) {
            Ok(pb::PolicyMode::Unspecified) => None,
            Ok(pb::PolicyMode::Anyone) => Some(PolicyMode::Anyone),
            Ok(pb::PolicyMode::Contacts) => Some(PolicyMode::Contacts),
            Ok(pb::PolicyMode::ContactsFirstContact) => Some(PolicyMode::ContactsFirstContact),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "mode: {} is not a policy mode (1 anyone, 2 contacts, 3 contacts+first-contact)",
                    r.mode
                )));
            }
        };
        let p = self
            .svc
            .set_policy(&s, mode, r.accept_anonymous)
            .await
            .map_err(status)?;
        Ok(Response::new(policy_to_pb(p)))
    }

    async fn edit_contacts(
        &self,
        req: Request<pb::EditListRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.edit_list(req, PolicyList::Contacts).await
    }

    async fn edit_blocked(
        &self,
        req: Request<pb::EditListRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        self.edit_list(req, PolicyList::Blocked).await
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let s = self.session(&req).await?;
        let r = self
            .svc
            .report(&s, &req.into_inner().voicemail_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReportResponse {
            sender: r.sender.unwrap_or_default(),
            newly_blocked: r.newly_blocked,
        }))
    }
}

type WatchItem = Result<pb::PendingVoicemail, Status>;

/// Runs one WatchPending stream until it ends, and sends why it ended. On
/// shutdown it stops at once, wherever it waits: a client that stopped
/// reading must not keep the server from exiting. The stream stays counted
/// against its session's and user's caps until `slot` drops with the task.
async fn watch(
    svc: Arc<AuthService>,
    session: Session,
    slot: WatchSlot,
    backlog: Vec<VoicemailId>,
    events: broadcast::Receiver<Event>,
    tx: mpsc::Sender<WatchItem>,
) {
    let shutdown = svc.shutdown_token().clone();
    let end = tokio::select! {
        end = feed(&svc, &session, backlog, events, &tx) => end,
        _ = shutdown.cancelled() => Some(Status::unavailable("the auth server is shutting down; reconnect")),
    };
    if let Some(status) = end {
        tokio::select! {
            biased;
            _ = tx.send(Err(status)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    drop(slot);
}

/// Sends the backlog, one voicemail fetched at a time (one acked or
/// expired meanwhile is skipped), then each new voicemail for this user.
/// Returns why the stream ends, or `None` when the client has gone.
async fn feed(
    svc: &AuthService,
    session: &Session,
    backlog: Vec<VoicemailId>,
    mut events: broadcast::Receiver<Event>,
    tx: &mpsc::Sender<WatchItem>,
) -> Option<Status> {
    for id in backlog {
        // Wait for room first, so the voicemail is read only when it can go.
        let permit = tx.reserve().await.ok()?;
        match svc.pending_one(session, id).await {
            Ok(Some(d)) => permit.send(Ok(delivery_to_pb(d))),
            Ok(None) => {}
            Err(e) => return Some(status(e)),
        }
    }
    let expired = || Some(status(AuthError::SessionExpired(session.expires_at)));
    let left = session.expires_at.saturating_sub(svc.now());
    let expiry = tokio::time::sleep(std::time::Duration::from_secs(left));
    tokio::pin!(expiry);
    loop {
        let event = tokio::select! {
            _ = tx.closed() => return None,
            _ = &mut expiry => return expired(),
            e = events.recv() => e,
        };
        let delivery = match event {
            Ok(Event::Deposited { id, recipients }) => {
                if !recipients.contains(&session.username) {
                    continue;
                }
                if svc.now() >= session.expires_at {
                    return expired();
                }
                match svc.pending_one(session, id).await {
                    Ok(Some(d)) => d,
                    Ok(None) => continue,
                    Err(e) => return Some(status(e)),
                }
            }
            Ok(Event::SessionEnded { token_hash }) if token_hash == session.token_hash => {
                return Some(status(AuthError::BadToken));
            }
            Ok(Event::SessionEnded { .. }) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    skipped = n,
                    "watcher lagged; ending stream so the client re-lists"
                );
                return Some(Status::unavailable(
                    "fell behind on new voicemail; reconnect",
                ));
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        tx.send(Ok(delivery_to_pb(delivery))).await.ok()?;
    }
}
