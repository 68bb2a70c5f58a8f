//! The web inbox: `vmail node run --web 127.0.0.1:PORT` serves a small page
//! from the daemon (its files are in the binary) and a local HTTP API under
//! `/api/` that wraps the same control-API operations the CLI uses
//! ([`ControlService`], in process), plus what the CLI asks the auth group
//! directly with the user's session: login, policy, contacts, blocks, sent.
//!
//! Every request passes [`guard::Gate`] first: this daemon's own `Host`,
//! this page's `Origin`, and for the API this start's token in a header.
//! Every response carries a strict Content-Security-Policy. Connections
//! are capped and must send their headers in time. The handlers are in
//! `api/`; the page is `assets/`.

mod api;
pub mod guard;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth_client::AuthTarget;
use crate::config::WebConfig;
use crate::control::ControlService;
use crate::keystore::Keystore;
use crate::peer::Peer;
use guard::{Ask, Gate, TOKEN_HEADER};

/// File in the data dir that holds the page's URL with this start's token
/// (mode 0600), for a user who missed what `vmail node run` printed.
pub const URL_FILE: &str = "web.url";
/// Connections served at once; more wait to be accepted. Each costs a
/// file descriptor and a task, so the daemon's other sockets never run
/// short because of the page.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection must send a request's headers within this, or it is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pages that may watch for new voicemail at once; each holds a push
/// stream open at the auth group.
pub const MAX_WATCHERS: usize = 8;
/// Voicemails fetched for the page at once (each is held in memory whole
/// while it is sent); more wait their turn.
pub const MAX_FETCHES: usize = 2;
/// Leaves under way at once; one more is refused (429) before its body is
/// read.
pub const MAX_LEAVES: usize = 2;
/// Largest request body but a leave's.
const MAX_FORM: usize = 64 << 10;
/// How long a stop waits for open requests to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a stop waits for leaves under way to end.
const LEAVE_GRACE: Duration = Duration::from_secs(60);
/// How long a leave's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// What every response carries: nothing but this page's own files may run,
/// load or be framed, and the page's address never leaks in a Referer.
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
    #[error(
        "web.listen {addr}: {why} (is another program using the port? choose another with --web)"
    )]
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
    leaves: Arc<Semaphore>,
    /// Cancelled at stop: event streams end with it.
    stopping: CancellationToken,
    /// The tasks that outlive a request (event streams, leaves): a stop
    /// waits for them, so none holds the peer after it.
    tasks: TaskTracker,
}

/// A running web inbox.
#[derive(Debug)]
pub struct WebService {
    addr: SocketAddr,
    url: String,
    stopping: CancellationToken,
    task: JoinHandle<()>,
    tasks: TaskTracker,
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
        let listener = TcpListener::bind(want)
            .await
            .map_err(|why| WebError::Bind { addr: want, why })?;
        let addr = listener
            .local_addr()
            .map_err(|why| WebError::Bind { addr: want, why })?;
        let gate = Gate::new(addr, hex::encode(vmail_proto::random_bytes::<32>()));
        let url = gate.url();
        let stopping = CancellationToken::new();
        let tasks = TaskTracker::new();
        let shared = Arc::new(Shared {
            peer,
            control,
            account,
            gate,
            watchers: Arc::new(Semaphore::new(MAX_WATCHERS)),
            fetches: Semaphore::new(MAX_FETCHES),
            leaves: Arc::new(Semaphore::new(MAX_LEAVES)),
            stopping: stopping.clone(),
            tasks: tasks.clone(),
        });
        let app = router(shared);
        let task = tokio::spawn(serve(listener, app, stopping.clone()));
        Ok(WebService {
            addr,
            url,
            stopping,
            task,
            tasks,
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

    /// Stops serving: event streams end, open requests get 5 s to finish
    /// and leaves under way 60 s, so that nothing of the service holds the
    /// peer once this returns (unless a leave outlived its grace: then it
    /// says so).
    pub async fn stop(self) {
        self.stopping.cancel();
        let _ = self.task.await;
        self.tasks.close();
        if tokio::time::timeout(LEAVE_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "web inbox: a leave from the page was still under way after {} s; it ends with the daemon",
                LEAVE_GRACE.as_secs()
            );
        }
    }
}

/// Accepts at most [`MAX_CONNECTIONS`] at once, each under
/// [`HEADER_TIMEOUT`], until `stopping`; then gives the open ones
/// [`STOP_GRACE`].
async fn serve(listener: TcpListener, app: Router, stopping: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("never closed"),
            () = stopping.cancelled() => break,
        };
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!("web inbox: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopping.cancelled() => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stopping.clone();
        conns.spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(STOP_GRACE, conn).await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

fn router(shared: Arc<Shared>) -> Router {
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
        .fallback(api::no_such_page)
        .method_not_allowed_fallback(api::wrong_method)
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

fn text(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Every request through [`Gate::check`]; every response with the
/// security headers.
async fn gate(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let ask = Ask {
        api: req.uri().path().starts_with("/api/"),
        host: text(h, header::HOST),
        origin: text(h, header::ORIGIN),
        token: text(h, TOKEN_HEADER),
    };
    let mut resp = match s.gate.check(&ask) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            tracing::info!(
                "web inbox: refused {} {}: {why}",
                req.method(),
                req.uri().path()
            );
            let code = axum::http::StatusCode::from_u16(why.status())
                .unwrap_or(axum::http::StatusCode::FORBIDDEN);
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
