//! The web inbox's HTTP API: thin JSON adapters over the control API
//! ([`ControlService`], called in process), over the peer's own fetch and
//! leave (where a request must be able to cancel its fetch, or a leave
//! must outlive its request), and, for what the CLI asks the auth group
//! directly, over the peer's session ([`Peer::auth_client`]). Errors are
//! `{"error": "..."}` with the status the gRPC code maps to.
//!
//! [`ControlService`]: crate::control::ControlService
//! [`Peer::auth_client`]: crate::peer::Peer::auth_client
//!
//! By concern: `account.rs` (session, login, policy, contacts, blocks,
//! retention), `inbox.rs` (status, inbox, events, audio, ack, report),
//! `sending.rs` (leave, sent, recall); here, the error type and the
//! extractors every handler shares.

mod account;
mod inbox;
mod sending;

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Request as HttpRequest, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Code;

use super::Shared;
use crate::auth_client::{AuthClient, ClientError};
use crate::keystore::KeystoreError;
use crate::peer::SessionError;

pub(super) use account::*;
pub(super) use inbox::*;
pub(super) use sending::*;

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
