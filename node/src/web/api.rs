//! The web inbox's HTTP API: thin JSON adapters over the control API
//! ([`ControlService`], called in process), over the peer's own fetch and
//! leave (where a request must be able to cancel its fetch, or a leave
//! must outlive its request), and, for what the CLI asks the auth group
//! directly, over the peer's session ([`Peer::auth_client`]). Errors are
//! `{"error": "..."}` with the status the gRPC code maps to.
//!
//! [`ControlService`]: crate::control::ControlService
//! [`Peer::auth_client`]: crate::peer::Peer::auth_client

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request as HttpRequest, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::SigningKey;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};
use vmail_proto::control_pb::{self as pb, control_server::Control};
use vmail_proto::names::Username;

use super::Shared;
use crate::auth_client::{
    AuthClient, ClientError, ListEdit, PolicyChange, PolicyMode, SenderVisibility,
};
use crate::control::status as grpc_status;
use crate::core::wav;
use crate::keystore::KeystoreError;
use crate::peer::{LeaveRequest, Phase, Progress, ProgressFn, Session, SessionError, no_progress};

type S = State<Arc<Shared>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// An API error: a status and a message that names the problem and what
/// to do.
#[derive(Debug)]
pub(super) struct ApiError {
    code: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with `code`.
    pub(super) fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct E {
            error: String,
        }
        (
            self.code,
            Json(E {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// The HTTP status of a gRPC code.
fn http(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        Self::new(http(s.code()), s.message())
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        Self::new(http(e.code().unwrap_or(Code::Unavailable)), e.to_string())
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotLoggedIn => {
                Self::new(StatusCode::UNAUTHORIZED, "not logged in: log in first")
            }
            SessionError::Auth(c) => c.into(),
        }
    }
}

impl From<KeystoreError> for ApiError {
    fn from(e: KeystoreError) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// A voicemail id in the path (32 hex digits); any other path is an
/// [`ApiError`] naming it.
pub(super) struct Id([u8; 16]);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        hex::decode(&text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .map(Id)
            .ok_or_else(|| ApiError::bad(format!("{text:?} is not a voicemail id (32 hex digits)")))
    }
}

/// A JSON body whose every rejection is an [`ApiError`].
pub(super) struct Form<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Form<T> {
    type Rejection = ApiError;

    async fn from_request(req: HttpRequest, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(t)| Form(t))
            .map_err(|e| ApiError::new(e.status(), e.body_text()))
    }
}

/// Any path the API does not have.
pub(super) async fn no_such_page() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such page or API call")
}

/// A path the API has, with another method.
pub(super) async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this API call does not take that method",
    )
}

async fn auth(s: &Shared) -> Result<AuthClient, ApiError> {
    Ok(s.peer.auth_client().await?)
}

/// `GET /api/session`, and what a login or logout answers.
#[derive(Serialize)]
pub(super) struct SessionJson {
    username: Option<String>,
    /// Why this home cannot log in (no auth group configured), if so.
    auth_error: Option<String>,
    /// What the user should know about the login or logout just made.
    note: Option<String>,
}

fn session_json(s: &Shared, note: Option<String>) -> Json<SessionJson> {
    Json(SessionJson {
        username: s.peer.username().map(|u| u.to_string()),
        auth_error: s.account.target.as_ref().err().cloned(),
        note,
    })
}

pub(super) async fn session(State(s): S) -> Json<SessionJson> {
    session_json(&s, None)
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
}

/// `POST /api/login`: OPAQUE with the auth group, as `vmail login` does;
/// the session is saved to the home's keystore and given to the peer.
pub(super) async fn login(State(s): S, Form(f): Form<LoginForm>) -> ApiResult<SessionJson> {
    let name = Username::parse(&f.username).map_err(|e| ApiError::bad(e.to_string()))?;
    if f.password.is_empty() {
        return Err(ApiError::bad("type your password"));
    }
    let target = s
        .account
        .target
        .clone()
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let keystore = &s.account.keystore;
    let stored = keystore.identity(&name)?;
    // A new key is only saved once the group has certified it.
    let identity = stored
        .clone()
        .unwrap_or_else(|| SigningKey::from_bytes(&vmail_proto::random_bytes()));
    let mut client = AuthClient::connect(&target).await?;
    // The key certified now, if any: a login with another key replaces it.
    let before = match stored {
        Some(_) => None,
        None => client.certificate(name.as_str()).await.ok(),
    };
    let login = client
        .login(
            name.as_str(),
            f.password.as_bytes(),
            &identity,
            &s.peer.peer_id().to_bytes(),
        )
        .await?;
    if stored.is_none() {
        keystore.save_identity(&name, &identity)?;
    }
    keystore.save_session(&login)?;
    let note = before
        .filter(|c| c.identity_key != identity.verifying_key())
        .map(|c| {
            format!(
                "this home had no identity key for {name}, so it made one, which replaces {}: another vmail home that holds the old key must run `vmail login {name}` again (to share one key, copy keystore/identities/{name}.key)",
                hex::encode(c.identity_key.as_bytes())
            )
        });
    s.peer.set_session(Session {
        login,
        identity,
        target,
    });
    Ok(session_json(&s, note))
}

/// `POST /api/logout`: the group ends the session, then the keystore and
/// the peer forget it. A session the group had already ended is forgotten
/// too; on any other failure both keep it, so it can be retried.
pub(super) async fn logout(State(s): S) -> ApiResult<SessionJson> {
    let note = match auth(&s).await?.logout().await {
        Ok(()) => None,
        Err(e) if e.code() == Some(Code::Unauthenticated) => {
            Some(format!("the server had already ended this session ({e})"))
        }
        Err(e) => return Err(e.into()),
    };
    s.account.keystore.clear_session()?;
    s.peer.end_session();
    Ok(session_json(&s, note))
}

/// `GET /api/status`: the network, from the control API's `Status`.
#[derive(Serialize)]
pub(super) struct StatusJson {
    peer_id: String,
    role: String,
    username: String,
    supernodes: Vec<String>,
    attached_to: String,
    attached_peers: usize,
    relay_addr: String,
    reachability: String,
    routing_peers: u32,
    connected_peers: u32,
    listen_addrs: Vec<String>,
    objects: u64,
    stored_bytes: u64,
    quota_bytes: u64,
}

pub(super) async fn status(State(s): S) -> ApiResult<StatusJson> {
    let st = s
        .control
        .status(Request::new(pb::StatusRequest {}))
        .await?
        .into_inner();
    Ok(Json(StatusJson {
        peer_id: libp2p::PeerId::from_bytes(&st.peer_id)
            .map(|p| p.to_string())
            .unwrap_or_default(),
        role: st.role,
        username: st.username,
        supernodes: st.supernodes,
        attached_to: st.attached_to,
        attached_peers: st.attached_peers.len(),
        relay_addr: st.relay_addr,
        reachability: st.reachability,
        routing_peers: st.routing_peers,
        connected_peers: st.connected_peers,
        listen_addrs: st.listen_addrs,
        objects: st.objects,
        stored_bytes: st.stored_bytes,
        quota_bytes: st.quota_bytes,
    }))
}

/// One voicemail of `GET /api/inbox`.
#[derive(Serialize)]
pub(super) struct InboxJson {
    id: String,
    /// The username its certificate names, or "anonymous".
    sender: String,
    anonymous: bool,
    /// Not in the user's contacts ("unknown caller").
    first_contact: bool,
    deposited_at: u64,
    duration_ms: u64,
    size: u64,
    content_type: String,
    expires_at: u64,
    recipients: Vec<String>,
}

impl From<pb::InboxEntry> for InboxJson {
    fn from(e: pb::InboxEntry) -> Self {
        Self {
            id: hex::encode(&e.voicemail_id),
            sender: if e.anonymous {
                crate::auth_client::ANONYMOUS.to_owned()
            } else {
                e.sender
            },
            anonymous: e.anonymous,
            first_contact: e.first_contact,
            deposited_at: e.deposited_at,
            duration_ms: e.duration_ms,
            size: e.size,
            content_type: e.content_type,
            expires_at: e.expires_at,
            recipients: e.recipients,
        }
    }
}

pub(super) async fn inbox(State(s): S) -> ApiResult<Vec<InboxJson>> {
    let r = s.control.inbox(Request::new(pb::InboxRequest {})).await?;
    Ok(Json(
        r.into_inner()
            .voicemails
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// `GET /api/events`: server-sent events, `inbox` at connect and whenever
/// the inbox may look different: the group pushed a new voicemail, this
/// peer fetched, acked or recalled one, or the session changed. At most
/// [`super::MAX_WATCHERS`] at once; each holds a push stream at the group,
/// opened again for a new user, or 5 s after it failed or ended.
pub(super) async fn events(
    State(s): S,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = s.watchers.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} pages already watch this inbox: close one and reload",
                super::MAX_WATCHERS
            ),
        )
    })?;
    let (tx, rx) = mpsc::channel::<()>(1);
    let peer = s.peer.clone();
    let stopping = s.stopping.clone();
    s.tasks.spawn(async move {
        let _permit = permit;
        let mut changes = peer.inbox_changes();
        // A full queue already says "look again": sends never wait.
        let _ = tx.try_send(());
        loop {
            let user = peer.username();
            let mut push = tokio::select! {
                w = peer.watch_inbox() => w.ok(),
                () = tx.closed() => return,
                () = stopping.cancelled() => return,
            };
            let retry = tokio::time::sleep(Duration::from_secs(5));
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    m = async { push.as_mut()?.message().await.ok().flatten() }, if push.is_some() => {
                        if m.is_some() {
                            let _ = tx.try_send(());
                        } else {
                            push = None;
                            retry.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(5));
                        }
                    }
                    () = &mut retry, if push.is_none() => break,
                    c = changes.changed() => {
                        if c.is_err() {
                            return;
                        }
                        let _ = tx.try_send(());
                        if peer.username() != user {
                            break;
                        }
                    }
                    () = tx.closed() => return,
                    () = stopping.cancelled() => return,
                }
            }
        }
    });
    // A browser drops an event with no data: each carries a word.
    let stream =
        ReceiverStream::new(rx).map(|()| Ok(Event::default().event("inbox").data("changed")));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `GET /api/voicemail/{id}/audio`: fetched and decrypted through the
/// normal fetch path (every shard's hash checked), not acked. Served as
/// `audio/wav` when it is one, else as bytes to save; never as anything a
/// browser would run. The fetch runs in this request: a page that goes
/// away cancels it and frees its turn.
pub(super) async fn audio(State(s): S, Id(id): Id) -> Result<Response, ApiError> {
    let _turn =
        s.fetches.acquire().await.map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping")
        })?;
    let fetched = s.peer.fetch(id, no_progress()).await.map_err(grpc_status)?;
    let kind = if wav::inspect(&fetched.content).is_some() {
        "audio/wav"
    } else {
        "application/octet-stream"
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"voicemail-{}.wav\"", hex::encode(id)),
            ),
        ],
        fetched.content,
    )
        .into_response())
}

/// `POST /api/voicemail/{id}/ack`: played to the end, or deleted.
#[derive(Serialize)]
pub(super) struct AckJson {
    key_erased: bool,
    shards_deleted: u32,
    holders_missed: u32,
}

pub(super) async fn ack(State(s): S, Id(id): Id) -> ApiResult<AckJson> {
    let a = s
        .control
        .ack(Request::new(pb::AckRequest {
            voicemail_id: id.to_vec(),
        }))
        .await?
        .into_inner();
    Ok(Json(AckJson {
        key_erased: a.key_erased,
        shards_deleted: a.shards_deleted,
        holders_missed: a.holders_missed,
    }))
}

/// `POST /api/voicemail/{id}/report`: spam; the sender is blocked.
#[derive(Serialize)]
pub(super) struct ReportJson {
    /// Null when the sender was hidden (blocked, never named).
    sender: Option<String>,
    newly_blocked: bool,
}

pub(super) async fn report(State(s): S, Id(id): Id) -> ApiResult<ReportJson> {
    let r = auth(&s).await?.report(&id).await?;
    Ok(Json(ReportJson {
        sender: r.sender.map(|u| u.to_string()),
        newly_blocked: r.newly_blocked,
    }))
}

#[derive(Deserialize)]
pub(super) struct LeaveQuery {
    /// Recipients, separated by commas or spaces.
    to: String,
    #[serde(default)]
    anonymous: bool,
}

/// One line of `POST /api/leave`'s answer (JSON lines): stages, then the
/// receipt or an error.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum LeaveLine {
    Stage {
        /// "encrypt", "grant", "upload" or "deposit".
        stage: &'static str,
        done: u64,
        total: u64,
        note: Option<String>,
    },
    Done {
        id: String,
        recipients: Vec<String>,
        refused: Vec<String>,
        first_contact: Vec<String>,
        redundancy: String,
    },
    Error {
        status: u16,
        message: String,
    },
}

fn stage(p: Progress) -> LeaveLine {
    LeaveLine::Stage {
        stage: match p.phase {
            Phase::Encrypt => "encrypt",
            Phase::Grant => "grant",
            Phase::Upload => "upload",
            Phase::Deposit => "deposit",
            Phase::Download | Phase::Decrypt => "fetch",
        },
        done: p.done,
        total: p.total,
        note: p.note.map(|n| n.to_string()),
    }
}

/// `POST /api/leave?to=carol,dave`, the body a WAV recording: at most
/// [`super::MAX_LEAVES`] at once, refused before the body is read; the
/// body is read up to `max_voicemail_bytes` and no further, checked as a
/// WAV (its duration is read here, not taken from the page), then left
/// through the normal leave path ([`Peer::leave`], as the control API's
/// `Leave`); the answer streams its stages. A page that goes away does
/// not stop a leave half way, and the leave keeps its turn until it ends.
pub(super) async fn leave(
    State(s): S,
    q: Result<Query<LeaveQuery>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let turn = s.leaves.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} voicemails are being left from this page already: wait for one to finish",
                super::MAX_LEAVES
            ),
        )
    })?;
    let recipients: Vec<String> =
        q.to.split([',', ' '])
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect();
    if recipients.is_empty() {
        return Err(ApiError::bad("name at least one recipient"));
    }
    let max = s.peer.config().max_voicemail_bytes;
    let body = tokio::time::timeout(
        super::BODY_TIMEOUT,
        axum::body::to_bytes(body, usize::try_from(max).unwrap_or(usize::MAX)),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the recording did not arrive within {} s: try again. Nothing was sent",
                super::BODY_TIMEOUT.as_secs()
            ),
        )
    })?
    .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the recording could not be read whole ({e}): this peer takes at most {max} bytes (max_voicemail_bytes); record a shorter one. Nothing was sent"
                ),
            )
        })?;
    let info = wav::inspect(&body).ok_or_else(|| {
        ApiError::bad("the recording is not a WAV file: record again (nothing was sent)")
    })?;
    let req = LeaveRequest {
        recipients,
        content: Vec::from(body),
        content_type: "audio/wav".into(),
        duration_ms: info.duration_ms,
        redundancy: None,
        sender: if q.anonymous {
            SenderVisibility::Hidden
        } else {
            SenderVisibility::Shown
        },
    };
    let (tx, rx) = mpsc::channel(64);
    let stages = tx.clone();
    // Stages are dropped when the page reads slowly, never the result.
    let progress: ProgressFn = Arc::new(move |p| {
        let _ = stages.try_send(stage(p));
    });
    let peer = s.peer.clone();
    s.tasks.spawn(async move {
        let line = match peer.leave(req, progress).await {
            Ok(done) => LeaveLine::Done {
                id: hex::encode(done.voicemail_id),
                recipients: done.recipients.to_strings(),
                refused: done.refused.iter().map(ToString::to_string).collect(),
                first_contact: done.first_contact.iter().map(ToString::to_string).collect(),
                redundancy: done.redundancy.to_string(),
            },
            Err(e) => {
                let st = grpc_status(e);
                LeaveLine::Error {
                    status: http(st.code()).as_u16(),
                    message: st.message().to_owned(),
                }
            }
        };
        // The turn ends with the leave, whether or not the page reads on.
        drop(turn);
        let _ = tx.send(line).await;
    });
    let lines = ReceiverStream::new(rx).map(|line| {
        let mut text = serde_json::to_vec(&line).unwrap_or_default();
        text.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(text))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// One voicemail of `GET /api/sent`.
#[derive(Serialize)]
pub(super) struct SentJson {
    id: String,
    left_at: u64,
    size: u64,
    expires_at: u64,
    recipients: Vec<SentTo>,
}

#[derive(Serialize)]
pub(super) struct SentTo {
    username: String,
    /// "pending", "delivered", "expired unread" or "recalled".
    state: String,
    since: u64,
}

pub(super) async fn sent(State(s): S) -> ApiResult<Vec<SentJson>> {
    let sent = auth(&s).await?.list_sent().await?;
    Ok(Json(
        sent.into_iter()
            .map(|v| SentJson {
                id: hex::encode(v.id),
                left_at: v.deposited_at,
                size: v.size,
                expires_at: v.expires_at,
                recipients: v
                    .recipients
                    .into_iter()
                    .map(|(username, d, since)| SentTo {
                        username,
                        state: d.to_string(),
                        since,
                    })
                    .collect(),
            })
            .collect(),
    ))
}

/// `POST /api/sent/{id}/recall`.
#[derive(Serialize)]
pub(super) struct RecallJson {
    shards_deleted: u32,
    holders_missed: u32,
}

pub(super) async fn recall(State(s): S, Id(id): Id) -> ApiResult<RecallJson> {
    let r = s
        .control
        .recall(Request::new(pb::RecallRequest {
            voicemail_id: id.to_vec(),
        }))
        .await?
        .into_inner();
    Ok(Json(RecallJson {
        shards_deleted: r.shards_deleted,
        holders_missed: r.holders_missed,
    }))
}

/// `GET /api/account`: the session and the sender quotas.
#[derive(Serialize)]
pub(super) struct AccountJson {
    username: String,
    session_expires_at: u64,
    retention_secs: u64,
    reports: u32,
    allowances: Vec<AllowanceJson>,
}

#[derive(Serialize)]
pub(super) struct AllowanceJson {
    name: String,
    used: u64,
    limit: u64,
}

pub(super) async fn account(State(s): S) -> ApiResult<AccountJson> {
    let me = auth(&s).await?.whoami().await?;
    Ok(Json(AccountJson {
        username: me.username.to_string(),
        session_expires_at: me.expires_at,
        retention_secs: me.retention_secs,
        reports: me.reports,
        allowances: me
            .allowances
            .into_iter()
            .map(|a| AllowanceJson {
                name: a.name,
                used: a.used,
                limit: a.limit,
            })
            .collect(),
    }))
}

#[derive(Deserialize)]
pub(super) struct RetentionForm {
    days: u64,
}

/// `POST /api/retention {"days": N}`.
pub(super) async fn retention(State(s): S, Form(f): Form<RetentionForm>) -> ApiResult<AccountJson> {
    if f.days == 0 {
        return Err(ApiError::bad("retention must be at least 1 day"));
    }
    auth(&s)
        .await?
        .set_retention(f.days.saturating_mul(86_400))
        .await?;
    account(State(s)).await
}

/// `GET /api/policy`: who may leave the user voicemail.
#[derive(Serialize)]
pub(super) struct PolicyJson {
    /// "anyone", "contacts" or "contacts+first-contact".
    mode: &'static str,
    accept_anonymous: bool,
    contacts: Vec<String>,
    blocked: Vec<String>,
    hidden_blocked: u32,
    max_contacts: u32,
    max_blocked: u32,
}

impl From<crate::auth_client::Policy> for PolicyJson {
    fn from(p: crate::auth_client::Policy) -> Self {
        Self {
            mode: p.mode.as_str(),
            accept_anonymous: p.accept_anonymous,
            contacts: p.contacts,
            blocked: p.blocked,
            hidden_blocked: p.hidden_blocked,
            max_contacts: p.max_contacts,
            max_blocked: p.max_blocked,
        }
    }
}

pub(super) async fn policy(State(s): S) -> ApiResult<PolicyJson> {
    Ok(Json(auth(&s).await?.get_policy().await?.into()))
}

#[derive(Deserialize)]
pub(super) struct PolicyForm {
    mode: Option<String>,
    accept_anonymous: Option<bool>,
}

/// `POST /api/policy {"mode": "contacts", "accept_anonymous": false}`.
pub(super) async fn set_policy(State(s): S, Form(f): Form<PolicyForm>) -> ApiResult<PolicyJson> {
    let mode = f
        .mode
        .as_deref()
        .map(str::parse::<PolicyMode>)
        .transpose()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let change = PolicyChange {
        mode,
        accept_anonymous: f.accept_anonymous,
    };
    Ok(Json(auth(&s).await?.set_policy(change).await?.into()))
}

#[derive(Deserialize)]
pub(super) struct ListForm {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

impl ListForm {
    fn edit(&self) -> Result<ListEdit, ApiError> {
        let parse = |names: &[String]| {
            names
                .iter()
                .map(|n| Username::parse(n.trim()).map_err(|e| ApiError::bad(e.to_string())))
                .collect::<Result<Vec<_>, _>>()
        };
        let edit = ListEdit {
            add: parse(&self.add)?,
            remove: parse(&self.remove)?,
        };
        if edit.add.is_empty() && edit.remove.is_empty() {
            return Err(ApiError::bad("name a user to add or remove"));
        }
        Ok(edit)
    }
}

/// `POST /api/contacts {"add": [...], "remove": [...]}`.
pub(super) async fn contacts(State(s): S, Form(f): Form<ListForm>) -> ApiResult<PolicyJson> {
    let edit = f.edit()?;
    Ok(Json(auth(&s).await?.edit_contacts(&edit).await?.into()))
}

/// `POST /api/blocked {"add": [...], "remove": [...]}`.
pub(super) async fn blocked(State(s): S, Form(f): Form<ListForm>) -> ApiResult<PolicyJson> {
    let edit = f.edit()?;
    Ok(Json(auth(&s).await?.edit_blocked(&edit).await?.into()))
}
