//! Runs a server: the public API (TLS, the `vmail.auth.v1.Auth` service, the
//! standard gRPC health service, server reflection), the internal group
//! service on its own port (mutual TLS, `vmail.auth.cluster.v1`), the Raft
//! node, the expiry sweeper, and the share-key duty (publish, rotate and
//! erase this server's share keys).
//!
//! [`serve`] takes already-bound listeners and a shutdown future, so tests
//! run it on `127.0.0.1:0` and `main` stays a few lines.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::network::RaftNetworkFactory;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::codegen::http;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use vmail_proto::cluster_pb::cluster_server::ClusterServer;
use vmail_proto::pb::auth_server::AuthServer;

use crate::cluster::log_store::LogStore;
use crate::cluster::network::{MAX_MESSAGE_BYTES as MAX_INTERNAL_MESSAGE, NetworkFactory};
use crate::cluster::rpc::ClusterService;
use crate::cluster::state_machine::StateMachine;
use crate::cluster::{Member, Raft, TypeConfig, raft_config};
use crate::datadir::{self, DataDirError};
use crate::grpc::GrpcAuth;
use crate::metrics::{AuthMetrics, GrpcMetricsLayer};
use crate::service::{AuthService, Clock, EVENT_CAPACITY};
use crate::store::PurgeCounts;
use crate::tls::{self, ClusterTls};

/// How often an idle connection is probed, so that streams to dead clients end.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive probe may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight calls may run on once shutdown has begun.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request the public API decodes: 256 KiB. The largest valid
/// request (a deposit: a 4 KiB locator, 64 recipients, up to 16 sealed
/// shares of about 100 bytes each and metadata; or a storage grant request for 32 shards and their holders) is
/// a few tens of KiB.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Largest answer the public API encodes: 64 MiB, the client's own limit
/// (`vmail_node::auth_client::MAX_MESSAGE_BYTES`); a full inbox lists in
/// far less.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Largest HTTP/2 header list a client may send, on either service: 16 KiB
/// (a bearer token and the gRPC headers need well under 1 KiB).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Streams a client may reset before the server acknowledges them, per
/// connection (the HTTP/2 "rapid reset" flood).
pub const MAX_PENDING_RESETS: usize = 32;

/// How often expired sessions and voicemails are swept.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// How often the session keys held are counted for the metrics.
pub const KEYS_HELD_INTERVAL: Duration = Duration::from_secs(15);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The Raft node could not start or be founded.
    #[error("raft: {0}")]
    Raft(String),
    /// The TLS identity or reflection service could not be built.
    #[error("server set-up failed: {0}")]
    Setup(String),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Opens an initialised data directory, starts its Raft node and builds
/// the service over it.
pub async fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<AuthService, OpenError> {
    open_with(dir, clock, |_, network| network).await
}

/// [`open`], with the Raft node's connections to the other members made by
/// what `network` builds around the real [`NetworkFactory`], given this
/// node's id: how a test harness cuts a member off from its group.
pub async fn open_with<N: RaftNetworkFactory<TypeConfig>>(
    dir: &Path,
    clock: Arc<dyn Clock>,
    network: impl FnOnce(u64, NetworkFactory) -> N,
) -> Result<AuthService, OpenError> {
    let config = datadir::load_config(dir)?;
    let keys = Arc::new(datadir::load_keys(dir)?);
    let share_keys = Arc::new(datadir::ShareKeyRing::open(dir)?);
    let store = Arc::new(datadir::open_store(dir, &keys)?);
    let node_id = store.node_id().map_err(DataDirError::from)?;
    let events = tokio::sync::broadcast::channel(EVENT_CAPACITY).0;
    let tls = ClusterTls::of_member(&keys);
    let raft_config = raft_config(&config.name)
        .validate()
        .map_err(|e| OpenError::Raft(e.to_string()))?;
    let metrics = Arc::new(AuthMetrics::new());
    let log = LogStore::open(store.clone(), metrics.clone())?;
    let raft = Raft::new(
        node_id,
        Arc::new(raft_config),
        network(node_id, NetworkFactory::new(tls)),
        log,
        StateMachine::new(store.clone(), keys.clone(), events.clone(), metrics.clone()),
    )
    .await
    .map_err(|e| OpenError::Raft(e.to_string()))?;
    Ok(AuthService::new(
        store, keys, share_keys, config, clock, raft, events, metrics,
    ))
}

/// Why a server could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory is unusable.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The Raft node could not start.
    #[error("starting the Raft node: {0}")]
    Raft(String),
}

impl From<crate::store::StoreError> for OpenError {
    fn from(e: crate::store::StoreError) -> Self {
        OpenError::DataDir(e.into())
    }
}

/// This server as a member: its name and the URLs it is reached at, built
/// from the advertised host and the ports actually bound.
pub fn member(svc: &AuthService, api: &TcpListener, raft: &TcpListener) -> Member {
    let host = svc.config().public_host();
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).unwrap_or(0);
    Member {
        name: svc.config().name.clone(),
        api_url: format!("https://{host}:{}", port(api)),
        raft_url: format!("https://{host}:{}", port(raft)),
    }
}

/// Records the ports bound in the data directory's files where they name
/// port 0 ([`datadir::record_bound_ports`]). A failure is logged: the
/// server serves all the same.
fn record_ports(svc: &AuthService, api: &TcpListener, raft: &TcpListener) {
    let (Ok(a), Ok(r)) = (api.local_addr(), raft.local_addr()) else {
        return;
    };
    let Some(dir) = svc.store().path().parent() else {
        return;
    };
    match datadir::record_bound_ports(dir, a.port(), r.port()) {
        Ok(true) => tracing::info!(
            api = a.port(),
            raft = r.port(),
            "recorded the ports bound in place of port 0 in config.toml and client.toml"
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "recording the ports bound in the data directory"),
    }
}

/// Founds the group on a founder's first start: it becomes the only voter.
async fn found_if_new(svc: &AuthService, me: Member) -> Result<(), ServeError> {
    let raft = svc.raft();
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| ServeError::Raft(e.to_string()))?;
    let founder = svc
        .store()
        .is_founder()
        .map_err(|e| ServeError::Raft(e.to_string()))?;
    if initialized || !founder {
        if !initialized {
            tracing::info!(
                "not a member of a group yet: waiting for the leader to add this server (vmail-auth join)"
            );
        }
        return Ok(());
    }
    let id = raft.metrics().borrow().id;
    tracing::info!(%me, id, "founding a new auth group");
    raft.initialize(BTreeMap::from([(id, me)]))
        .await
        .map_err(|e| ServeError::Raft(e.to_string()))
}

/// Serves `svc`'s public API on `listener` and its group service on
/// `raft_listener` until `shutdown` completes, then drains in-flight calls,
/// stops the Raft node and returns.
pub async fn serve(
    svc: Arc<AuthService>,
    listener: TcpListener,
    raft_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    vmail_proto::tls::install_crypto_provider();
    let me = member(&svc, &listener, &raft_listener);
    record_ports(&svc, &listener, &raft_listener);
    let raft = svc.raft().clone();
    let internal = {
        // Weak: the internal service must not keep the service alive.
        let clock = Arc::downgrade(&svc);
        let cluster = ClusterService::new(
            svc.raft().clone(),
            svc.keys().clone(),
            svc.config().clone(),
            Arc::new(move || {
                clock
                    .upgrade()
                    .map_or_else(vmail_proto::unix_now, |s| s.now())
            }),
            svc.signer().clone(),
        );
        let router = limited(Server::builder(), svc.config())
            .tls_config(tls::internal_server(svc.keys()))?
            .add_service(
                ClusterServer::new(cluster)
                    .max_decoding_message_size(MAX_INTERNAL_MESSAGE)
                    .max_encoding_message_size(MAX_INTERNAL_MESSAGE),
            );
        let stop = svc.shutdown_token().clone();
        let incoming = TcpIncoming::from(raft_listener).with_nodelay(Some(true));
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "the internal group service failed");
            }
        }))
    };
    found_if_new(&svc, me.clone()).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    // The whole server ("", serving from the start), the API, and the
    // health service itself, which probes may name too.
    health.set_serving::<AuthServer<GrpcAuth>>().await;
    health
        .set_service_status(
            "grpc.health.v1.Health",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    // Both reflection versions: grpcurl and older tools still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vmail_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The descriptor set also holds the internal and peer services,
            // which this port does not serve.
            .with_service_name("vmail.auth.v1.Auth")
            .with_service_name("grpc.health.v1.Health")
    };
    let setup = |e: tonic_reflection::server::Error| ServeError::Setup(e.to_string());
    let reflection_v1 = reflection().build_v1().map_err(setup)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(setup)?;

    let sweeper = {
        let svc = svc.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PURGE_INTERVAL);
            loop {
                tick.tick().await;
                if !svc.is_leader() {
                    continue;
                }
                match svc.purge_expired().await {
                    Ok(c) if c == PurgeCounts::default() => {}
                    Ok(c) => tracing::info!(
                        sessions = c.sessions,
                        voicemails = c.voicemails,
                        storage_grants = c.storage_grants,
                        "purged expired"
                    ),
                    Err(e) => tracing::warn!(error = %e, "purging expired entries failed"),
                }
            }
        }))
    };

    let watcher = AbortOnDrop(tokio::spawn(watch_raft(svc.clone())));
    let share_keys = AbortOnDrop(tokio::spawn(crate::service::share_key_duty(
        svc.clone(),
        ClusterTls::of_member(svc.keys()),
    )));
    let dkg = AbortOnDrop(tokio::spawn(crate::service::dkg_duty(
        svc.clone(),
        ClusterTls::of_member(svc.keys()),
    )));
    let addr = listener.local_addr().ok();
    tracing::info!(name = %svc.config().name, ?addr, member = %me, "vmail-auth serving");
    // On shutdown, end the long-lived WatchPending streams first: the server
    // waits for every open stream before it returns.
    let watchers = svc.shutdown_token().clone();
    let shutdown = async move {
        shutdown.await;
        health.set_not_serving::<AuthServer<GrpcAuth>>().await;
        watchers.cancel();
    };
    let svc_token = svc.shutdown_token().clone();
    let cut = CancellationToken::new();
    let incoming = {
        let cut = cut.clone();
        TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(move |conn| conn.map(|tcp| Severable::new(tcp, &cut)))
    };
    let server = limited(Server::builder(), svc.config())
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tls_config(tls::public_server(svc.keys()))?
        .layer(GrpcMetricsLayer(svc.metrics().clone()))
        .layer(tower::util::MapResponseLayer::new(
            decode_error_is_invalid_argument as fn(_) -> _,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            AuthServer::new(GrpcAuth::new(svc))
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown);
    // Calls in flight get DRAIN_TIMEOUT to finish once shutdown begins; then
    // the connections still open are cut, so that serve returns only when
    // every connection, and every handle on the service, is gone.
    let drain_over = async {
        svc_token.cancelled().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served?,
        _ = drain_over => {
            tracing::warn!("calls still open {DRAIN_TIMEOUT:?} after shutdown began; cutting their connections");
            cut.cancel();
            server.await?;
        }
    }
    drop(sweeper);
    drop(watcher);
    drop(share_keys);
    drop(dkg);
    drop(internal);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "stopping the Raft node");
    }
    tracing::info!("vmail-auth stopped");
    Ok(())
}

/// Keeps the metrics of `svc`'s Raft node (leader, term, indexes) and of
/// the session keys it holds current, for as long as the server runs.
async fn watch_raft(svc: Arc<AuthService>) {
    let metrics = svc.metrics().clone();
    let mut raft = svc.raft().metrics();
    let mut seen = None;
    let mut keys = tokio::time::interval(KEYS_HELD_INTERVAL);
    loop {
        {
            let m = raft.borrow_and_update();
            metrics.observe_raft(
                m.id,
                m.current_leader,
                m.current_term,
                m.last_log_index.unwrap_or(0),
                m.last_applied.map_or(0, |l| l.index),
                &mut seen,
            );
        }
        tokio::select! {
            changed = raft.changed() => if changed.is_err() { return },
            _ = keys.tick() => {
                let store = svc.store().clone();
                match tokio::task::spawn_blocking(move || store.counts()).await {
                    Ok(Ok(c)) => metrics.keys_held(c.voicemails),
                    Ok(Err(e)) => tracing::debug!(error = %e, "counting session keys"),
                    Err(_) => {}
                }
            }
        }
    }
}

/// prost's decode errors come back INTERNAL (tonic-prost's choice); bytes
/// a client sent that are not the message it names are the client's
/// error, INVALID_ARGUMENT.
fn decode_error_is_invalid_argument(
    mut res: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let h = res.headers();
    let internal = h.get("grpc-status").is_some_and(|v| v == "13");
    let decode = h.get("grpc-message").is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"failed%20to%20decode%20Protobuf") || v.starts_with(b"failed to decode")
    });
    if internal && decode {
        res.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::InvalidArgument as i32),
        );
    }
    res
}

/// A server builder with the transport limits every connection gets, on
/// the public and the internal service alike.
fn limited(b: Server, config: &crate::config::ServerConfig) -> Server {
    let streams = u32::try_from(config.max_concurrent_streams).unwrap_or(u32::MAX);
    let calls = usize::try_from(config.concurrency_per_connection).unwrap_or(usize::MAX);
    b.concurrency_limit_per_connection(calls)
        .max_concurrent_streams(streams)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
}

/// A task handle that aborts the task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TCP connection that fails every read and write once `cut` is
/// cancelled, so the server can close connections whose clients will not
/// let their calls finish.
struct Severable {
    tcp: TcpStream,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Severable {
    fn new(tcp: TcpStream, cut: &CancellationToken) -> Self {
        Self {
            tcp,
            cut: Box::pin(cut.clone().cancelled_owned()),
        }
    }

    /// Ready with an error once cut; otherwise registers for the cut and is pending.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.cut.as_mut().poll(cx).map(|()| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the auth server is shutting down",
            )
        })
    }
}

impl AsyncRead for Severable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(e) = self.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Severable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(e) = self.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Poll::Ready(e) = self.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Connected for Severable {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}
