//! The session and the account: login, logout, and what the CLI's
//! `whoami`, `retention`, `policy`, `contacts` and `block` ask the group.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tonic::Code;
use vmail_proto::names::Username;

use super::{ApiError, ApiResult, Form, S, auth};
use crate::auth_client::{AuthClient, ListEdit, PolicyChange, PolicyMode};
use crate::peer::Session;
use crate::web::Shared;

/// `GET /api/session`, and what a login or logout answers.
#[derive(Serialize)]
pub(in crate::web) struct SessionJson {
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

pub(in crate::web) async fn session(State(s): S) -> Json<SessionJson> {
    session_json(&s, None)
}

#[derive(Deserialize)]
pub(in crate::web) struct LoginForm {
    username: String,
    password: String,
}

/// `POST /api/login`: OPAQUE with the auth group, as `vmail login` does;
/// the session is saved to the home's keystore and given to the peer.
pub(in crate::web) async fn login(State(s): S, Form(f): Form<LoginForm>) -> ApiResult<SessionJson> {
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
pub(in crate::web) async fn logout(State(s): S) -> ApiResult<SessionJson> {
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

/// `GET /api/account`: the session and the sender quotas.
#[derive(Serialize)]
pub(in crate::web) struct AccountJson {
    username: String,
    session_expires_at: u64,
    retention_secs: u64,
    reports: u32,
    allowances: Vec<AllowanceJson>,
}

#[derive(Serialize)]
pub(in crate::web) struct AllowanceJson {
    name: String,
    used: u64,
    limit: u64,
}

pub(in crate::web) async fn account(State(s): S) -> ApiResult<AccountJson> {
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
pub(in crate::web) struct RetentionForm {
    days: u64,
}

/// `POST /api/retention {"days": N}`.
pub(in crate::web) async fn retention(
    State(s): S,
    Form(f): Form<RetentionForm>,
) -> ApiResult<AccountJson> {
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
pub(in crate::web) struct PolicyJson {
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

pub(in crate::web) async fn policy(State(s): S) -> ApiResult<PolicyJson> {
    Ok(Json(auth(&s).await?.get_policy().await?.into()))
}

#[derive(Deserialize)]
pub(in crate::web) struct PolicyForm {
    mode: Option<String>,
    accept_anonymous: Option<bool>,
}

/// `POST /api/policy {"mode": "contacts", "accept_anonymous": false}`.
pub(in crate::web) async fn set_policy(
    State(s): S,
    Form(f): Form<PolicyForm>,
) -> ApiResult<PolicyJson> {
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
pub(in crate::web) struct ListForm {
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
pub(in crate::web) async fn contacts(
    State(s): S,
    Form(f): Form<ListForm>,
) -> ApiResult<PolicyJson> {
    let edit = f.edit()?;
    Ok(Json(auth(&s).await?.edit_contacts(&edit).await?.into()))
}

/// `POST /api/blocked {"add": [...], "remove": [...]}`.
pub(in crate::web) async fn blocked(State(s): S, Form(f): Form<ListForm>) -> ApiResult<PolicyJson> {
    let edit = f.edit()?;
    Ok(Json(auth(&s).await?.edit_blocked(&edit).await?.into()))
}
