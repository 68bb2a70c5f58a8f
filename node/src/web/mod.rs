//! The web inbox: `vmail node run --web 127.0.0.1:PORT` serves a small page
//! from the daemon (its files are in the binary) and a local HTTP API under
//! `/api/` that wraps the same control-API operations the CLI uses
//! ([`ControlService`], in process), plus what the CLI asks the auth group
//! directly with the user's session: login, policy, contacts, blocks, sent.
//!
//! Every request passes [`guard::Gate`] first: this daemon's own `Host`,
//! this page's `Origin`, the per-start token cookie and, for a change, the
//! CSRF header. Every response carries a strict Content-Security-Policy.
//! The handlers are in `api.rs`; the page is `assets/`.

mod api;
pub mod guard;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth_client::AuthTarget;
use crate::config::WebConfig;
use crate::control::ControlService;
use crate::keystore::Keystore;
use crate::peer::Peer;
use guard::{Ask, CSRF_HEADER, Gate, Pass};

/// File in the data dir that holds the page's URL with this start's token
/// (mode 0600), for a user who missed what `vmail node run` printed.
pub const URL_FILE: &str = "web.url";
/// Pages that may watch for new voicemail at once; each holds a push
/// stream open at the auth group.
pub const MAX_WATCHERS: usize = 8;
/// Voicemails fetched for the page at once (each is held in memory whole
/// while it is sent); more wait their turn.
pub const MAX_FETCHES: usize = 2;

/// What every response carries: nothing but this page's own files may run,
/// load or be framed, and the token URL never leaks in a Referer.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How the page logs the user in: the home's keystore (identity keys and
/// the saved session, shared with the CLI) and where the auth group is.
#[derive(Debug, Clone)]
pub struct Account {
    /// The home's keystore.
    pub keystore: Keystore,
    /// The auth group, or why the home names none.
    pub target: Result<AuthTarget, String>,
}

/// Why the web inbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// Binding failed.
    #[error("web.listen {addr}: {why}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        why: std::io::Error,
    },
}

struct Shared {
    peer: Arc<Peer>,
    control: ControlService,
    account: Account,
    gate: Gate,
    watchers: Arc<Semaphore>,
    fetches: Semaphore,
}

/// A running web inbox.
#[derive(Debug)]
pub struct WebService {
    addr: SocketAddr,
    url: String,
    shutdown: CancellationToken,
}

impl WebService {
    /// Binds `config.listen` (checked by [`WebConfig::validate`]) and
    /// serves the page for `peer` until [`WebService::stop`].
    pub async fn start(
        peer: Arc<Peer>,
        control: ControlService,
        account: Account,
        config: &WebConfig,
    ) -> Result<WebService, WebError> {
        let want = config
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = tokio::net::TcpListener::bind(want)
            .await
            .map_err(|why| WebError::Bind { addr: want, why })?;
        let addr = listener
            .local_addr()
            .map_err(|why| WebError::Bind { addr: want, why })?;
        let hex = |b: [u8; 32]| hex::encode(b);
        let gate = Gate::new(
            addr,
            hex(vmail_proto::random_bytes()),
            hex(vmail_proto::random_bytes()),
        );
        let url = gate.url();
        let body_limit = usize::try_from(peer.config().max_voicemail_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(1 << 16);
        let shared = Arc::new(Shared {
            peer,
            control,
            account,
            gate,
            watchers: Arc::new(Semaphore::new(MAX_WATCHERS)),
            fetches: Semaphore::new(MAX_FETCHES),
        });
        let app = router(shared.clone(), body_limit);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!("web inbox on {addr} stopped: {e}");
            }
        });
        Ok(WebService {
            addr,
            url,
            shutdown,
        })
    }

    /// Where the page is served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL with this start's token: whoever opens it is let in.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops serving (open event streams end).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

fn router(shared: Arc<Shared>, body_limit: usize) -> Router {
    let asset = |body: &'static str, kind: &'static str| {
        get(move || async move { ([(header::CONTENT_TYPE, kind)], body) })
    };
    Router::new()
        .route(
            "/",
            asset(
                include_str!("assets/index.html"),
                "text/html; charset=utf-8",
            ),
        )
        .route(
            "/app.js",
            asset(
                include_str!("assets/app.js"),
                "text/javascript; charset=utf-8",
            ),
        )
        .route(
            "/style.css",
            asset(include_str!("assets/style.css"), "text/css; charset=utf-8"),
        )
        .route("/api/session", get(api::session))
        .route("/api/login", post(api::login))
        .route("/api/logout", post(api::logout))
        .route("/api/status", get(api::status))
        .route("/api/inbox", get(api::inbox))
        .route("/api/events", get(api::events))
        .route("/api/voicemail/{id}/audio", get(api::audio))
        .route("/api/voicemail/{id}/ack", post(api::ack))
        .route("/api/voicemail/{id}/report", post(api::report))
        .route("/api/leave", post(api::leave))
        .route("/api/sent", get(api::sent))
        .route("/api/sent/{id}/recall", post(api::recall))
        .route("/api/account", get(api::account))
        .route("/api/retention", post(api::retention))
        .route("/api/policy", get(api::policy).post(api::set_policy))
        .route("/api/contacts", post(api::contacts))
        .route("/api/blocked", post(api::blocked))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

fn text(h: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Every request through [`Gate::check`]; every response with the
/// security headers.
async fn gate(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let url_token = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    let ask = Ask {
        safe: matches!(*req.method(), Method::GET | Method::HEAD),
        host: text(h, header::HOST),
        origin: text(h, header::ORIGIN),
        cookie: text(h, header::COOKIE),
        csrf: text(h, CSRF_HEADER),
        url_token,
    };
    let mut resp = match s.gate.check(&ask) {
        Ok(Pass::Serve) => next.run(req).await,
        Ok(Pass::SetCookie) => (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, s.gate.set_cookie()),
                (header::LOCATION, "/".to_owned()),
            ],
        )
            .into_response(),
        Err(why) => {
            tracing::info!(
                "web inbox: refused {} {}: {why}",
                req.method(),
                req.uri().path()
            );
            let code = StatusCode::from_u16(why.status()).unwrap_or(StatusCode::FORBIDDEN);
            api::ApiError::new(code, why.to_string()).into_response()
        }
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
