//! Runs a server: the public API (TLS, the `vmail.auth.v1.Auth` service, the
//! standard gRPC health service, server reflection), the internal group
//! service on its own port (mutual TLS, `vmail.auth.cluster.v1`), the Raft
//! node, and the expiry sweeper.
//!
//! [`serve`] takes already-bound listeners and a shutdown future, so tests
//! run it on `127.0.0.1:0` and `main` stays a few lines.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use vmail_proto::pb::auth_server::AuthServer;

use std::collections::BTreeMap;

use tonic::transport::Certificate;
use vmail_proto::cluster_pb::cluster_server::ClusterServer;

use crate::cluster::admin;
use crate::cluster::log_store::LogStore;
use crate::cluster::network::{
    ClusterTls, Isolation, MAX_MESSAGE_BYTES as MAX_INTERNAL_MESSAGE, NetworkFactory,
};
use crate::cluster::rpc::ClusterService;
use crate::cluster::state_machine::StateMachine;
use crate::cluster::{Member, Raft, raft_config};
use crate::datadir::{self, DataDirError, files};
use crate::grpc::GrpcAuth;
use crate::service::{AuthService, Clock, EVENT_CAPACITY};
use crate::store::Store;

/// How often an idle connection is probed, so that streams to dead clients end.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive probe may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight calls may run on once shutdown has begun.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often expired sessions and voicemails are swept.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);

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
    let config = datadir::load_config(dir)?;
    let keys = Arc::new(datadir::load_keys(dir)?);
    let store = Arc::new(Store::open(
        &dir.join(files::DATABASE),
        keys.data_key.clone(),
        &keys.binding(),
    )?);
    let node_id = store.node_id().map_err(DataDirError::from)?;
    let events = tokio::sync::broadcast::channel(EVENT_CAPACITY).0;
    let isolation = Isolation::default();
    let tls = ClusterTls {
        ca_pem: keys.ca_cert_pem.clone(),
        cert_pem: keys.server_cert_pem.clone(),
        key_pem: keys.server_key_pem.clone(),
    };
    let raft_config = raft_config(&config.name)
        .validate()
        .map_err(|e| OpenError::Raft(e.to_string()))?;
    let raft = Raft::new(
        node_id,
        Arc::new(raft_config),
        NetworkFactory::new(tls, isolation.clone()),
        LogStore::new(store.clone()),
        StateMachine::new(store.clone(), keys.clone(), events.clone()),
    )
    .await
    .map_err(|e| OpenError::Raft(e.to_string()))?;
    Ok(AuthService::new(
        store, keys, config, clock, raft, events, isolation,
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
    let identity = Identity::from_pem(&svc.keys().server_cert_pem, &svc.keys().server_key_pem);
    let me = member(&svc, &listener, &raft_listener);
    let raft = svc.raft().clone();
    let internal = {
        let cluster = ClusterService::new(
            svc.raft().clone(),
            svc.keys().clone(),
            svc.config().clone(),
            svc.isolation().clone(),
        );
        let tls = ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(Certificate::from_pem(&svc.keys().ca_cert_pem));
        let router = Server::builder().tls_config(tls)?.add_service(
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
    health.set_serving::<AuthServer<GrpcAuth>>().await;
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
                    Ok((0, 0)) => {}
                    Ok((s, v)) => tracing::info!(sessions = s, voicemails = v, "purged expired"),
                    Err(e) => tracing::warn!(error = %e, "purging expired entries failed"),
                }
            }
        }))
    };

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
    let server = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tls_config(ServerTlsConfig::new().identity(identity))?
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AuthServer::new(GrpcAuth::new(svc)))
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
    drop(internal);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "stopping the Raft node");
    }
    tracing::info!("vmail-auth stopped");
    Ok(())
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

/// An auth server running inside this process on loopback ports: what
/// `vmail demo` embeds and what the integration tests start.
#[derive(Debug)]
pub struct LocalServer {
    /// `https://127.0.0.1:PORT` of the public API.
    pub endpoint: String,
    /// The public API's address.
    pub api_addr: std::net::SocketAddr,
    /// The internal group service's address.
    pub raft_addr: std::net::SocketAddr,
    /// The cluster CA certificate, PEM.
    pub ca_pem: Vec<u8>,
    /// The cluster public key.
    pub cluster_key: ed25519_dalek::VerifyingKey,
    /// The running service, for inspection.
    pub service: Arc<AuthService>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

/// Why a local server could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalServerError {
    /// The data directory is unusable, or Raft did not start.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Joining the group failed.
    #[error("joining the group: {0}")]
    Join(String),
    /// Binding a loopback port failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl LocalServer {
    /// Serves an initialised data directory on `127.0.0.1:0`, both ports.
    pub async fn start(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, LocalServerError> {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(dir, clock, any, any).await
    }

    /// Serves an initialised data directory on the given addresses. A
    /// restarted member must come back on the ports the group knows it by.
    pub async fn start_on(
        dir: &Path,
        clock: Arc<dyn Clock>,
        api: std::net::SocketAddr,
        raft: std::net::SocketAddr,
    ) -> Result<Self, LocalServerError> {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| LocalServerError::Bind { addr, source })
        };
        let listener = bind(api).await?;
        let raft_listener = bind(raft).await?;
        let local = |l: &TcpListener, addr| {
            l.local_addr()
                .map_err(|source| LocalServerError::Bind { addr, source })
        };
        let api_addr = local(&listener, api)?;
        let raft_addr = local(&raft_listener, raft)?;
        let svc = Arc::new(open(dir, clock).await?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(svc.clone(), listener, raft_listener, async {
            let _ = rx.await;
        }));
        Ok(Self {
            endpoint: format!("https://127.0.0.1:{}", api_addr.port()),
            api_addr,
            raft_addr,
            ca_pem: svc.keys().ca_cert_pem.clone().into_bytes(),
            cluster_key: svc.keys().cluster_public_key(),
            service: svc,
            shutdown: Some(tx),
            task,
        })
    }

    /// Waits until this server has a leader and has applied the log up to
    /// it: a founder elects itself within a second or two.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        self.service
            .raft()
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "{}: no leader after {timeout:?}: {e}",
                    self.service.config().name
                )
            })
    }

    /// This server as a group member.
    pub fn member(&self) -> Member {
        Member {
            name: self.service.config().name.clone(),
            api_url: self.endpoint.clone(),
            raft_url: format!("https://127.0.0.1:{}", self.raft_addr.port()),
        }
    }

    /// Its Raft node id.
    pub fn node_id(&self) -> u64 {
        self.service.raft().metrics().borrow().id
    }

    /// Founds a group of `n` servers in `root/auth-1` .. `root/auth-N` on
    /// loopback: auth-1 founds it, the others fetch the group keys over
    /// mutual TLS with a join credential and join through auth-1, one by
    /// one, each as a learner and then a voter.
    pub async fn start_group(
        root: &Path,
        n: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Vec<LocalServer>, LocalServerError> {
        let first_dir = root.join("auth-1");
        datadir::init(&datadir::InitOptions::loopback(&first_dir)).map_err(OpenError::from)?;
        let first = Self::start(&first_dir, clock.clone()).await?;
        first
            .wait_ready(Duration::from_secs(30))
            .await
            .map_err(LocalServerError::Join)?;
        let via = first.member().raft_url;
        let mut servers = vec![first];
        for i in 2..=n {
            let name = format!("auth-{i}");
            let dir = root.join(&name);
            servers.push(Self::join(&dir, &name, &via, &first_dir, clock.clone()).await?);
        }
        Ok(servers)
    }

    /// Creates a server in `dir` and joins it to the group that `via` (a
    /// member's internal URL) belongs to, with a credential issued from the
    /// member data directory `issuer_dir`.
    pub async fn join(
        dir: &Path,
        name: &str,
        via: &str,
        issuer_dir: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<LocalServer, LocalServerError> {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        Self::join_on(dir, name, via, issuer_dir, clock, any, any).await
    }

    /// [`LocalServer::join`] on the given addresses: a wiped server coming
    /// back where the group knew its earlier incarnation.
    pub async fn join_on(
        dir: &Path,
        name: &str,
        via: &str,
        issuer_dir: &Path,
        clock: Arc<dyn Clock>,
        api: std::net::SocketAddr,
        raft: std::net::SocketAddr,
    ) -> Result<LocalServer, LocalServerError> {
        let credential = admin::issue_credential_tls(issuer_dir, name)
            .map_err(|e| LocalServerError::Join(e.to_string()))?;
        let opts = datadir::InitOptions {
            name: name.to_owned(),
            ..datadir::InitOptions::loopback(dir)
        };
        admin::prepare_join(&opts, via, &credential)
            .await
            .map_err(|e| LocalServerError::Join(e.to_string()))?;
        let server = Self::start_on(dir, clock, api, raft).await?;
        let tls = admin::member_tls(dir).map_err(|e| LocalServerError::Join(e.to_string()))?;
        admin::request_join(via, &tls, server.node_id(), &server.member())
            .await
            .map_err(|e| LocalServerError::Join(e.to_string()))?;
        Ok(server)
    }

    /// Ends the server abruptly, as a crash would: its listeners and
    /// connections close at once, nothing is drained, and its Raft node
    /// stops without a word to the group.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.service.raft().shutdown().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.service) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server and waits (up to 10 s) until every user of the
    /// service, and so of its database, has let go.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = (&mut self.task).await.expect("server task panicked");
        // Wait until every clone of the service (watch streams, blocking
        // store calls) is gone, so the database file is closed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.service) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        result
    }
}
