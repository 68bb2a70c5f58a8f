//! What the user sends: a leave from a recording, with its stages, and
//! what was left (sent, recall).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use vmail_proto::control_pb::{self as pb, control_server::Control};

use super::{ApiError, ApiResult, Id, S, auth, http};
use crate::auth_client::SenderVisibility;
use crate::control::status as grpc_status;
use crate::core::wav;
use crate::peer::{LeaveRequest, Phase, Progress, ProgressFn};

#[derive(Deserialize)]
pub(in crate::web) struct LeaveQuery {
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
/// [`crate::web::MAX_LEAVES`] at once, refused before the body is read; the
/// body is read up to `max_voicemail_bytes` and no further, checked as a
/// WAV (its duration is read here, not taken from the page), then left
/// through the normal leave path ([`Peer::leave`], as the control API's
/// `Leave`); the answer streams its stages. A page that goes away does
/// not stop a leave half way, and the leave keeps its turn until it ends.
pub(in crate::web) async fn leave(
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
                crate::web::MAX_LEAVES
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
        crate::web::BODY_TIMEOUT,
        axum::body::to_bytes(body, usize::try_from(max).unwrap_or(usize::MAX)),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the recording did not arrive within {} s: try again. Nothing was sent",
                crate::web::BODY_TIMEOUT.as_secs()
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
pub(in crate::web) struct SentJson {
    id: String,
    left_at: u64,
    size: u64,
    expires_at: u64,
    recipients: Vec<SentTo>,
}

#[derive(Serialize)]
pub(in crate::web) struct SentTo {
    username: String,
    /// "pending", "delivered", "expired unread" or "recalled".
    state: String,
    since: u64,
}

pub(in crate::web) async fn sent(State(s): S) -> ApiResult<Vec<SentJson>> {
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
pub(in crate::web) struct RecallJson {
    shards_deleted: u32,
    holders_missed: u32,
}

pub(in crate::web) async fn recall(State(s): S, Id(id): Id) -> ApiResult<RecallJson> {
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
