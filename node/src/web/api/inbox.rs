//! What the page reads and does to the inbox: the network's status, the
//! inbox and its live events, a voicemail's audio, its ack and report.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use vmail_proto::control_pb::{self as pb, control_server::Control};

use super::{ApiError, ApiResult, Id, S, auth};
use crate::control::status as grpc_status;
use crate::core::wav;
use crate::peer::no_progress;

/// `GET /api/status`: the network, from the control API's `Status`.
#[derive(Serialize)]
pub(in crate::web) struct StatusJson {
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

pub(in crate::web) async fn status(State(s): S) -> ApiResult<StatusJson> {
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
pub(in crate::web) struct InboxJson {
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

pub(in crate::web) async fn inbox(State(s): S) -> ApiResult<Vec<InboxJson>> {
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
/// [`crate::web::MAX_WATCHERS`] at once; each holds a push stream at the group,
/// opened again for a new user, or 5 s after it failed or ended.
pub(in crate::web) async fn events(
    State(s): S,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = s.watchers.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} pages already watch this inbox: close one and reload",
                crate::web::MAX_WATCHERS
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
pub(in crate::web) async fn audio(State(s): S, Id(id): Id) -> Result<Response, ApiError> {
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
pub(in crate::web) struct AckJson {
    key_erased: bool,
    shards_deleted: u32,
    holders_missed: u32,
}

pub(in crate::web) async fn ack(State(s): S, Id(id): Id) -> ApiResult<AckJson> {
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
pub(in crate::web) struct ReportJson {
    /// Null when the sender was hidden (blocked, never named).
    sender: Option<String>,
    newly_blocked: bool,
}

pub(in crate::web) async fn report(State(s): S, Id(id): Id) -> ApiResult<ReportJson> {
    let r = auth(&s).await?.report(&id).await?;
    Ok(Json(ReportJson {
        sender: r.sender.map(|u| u.to_string()),
        newly_blocked: r.newly_blocked,
    }))
}
