//! Runs the public API: TLS, the `vmail.auth.v1.Auth` service, the standard
//! gRPC health service, server reflection, and the expiry sweeper.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests
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

use crate::datadir::{self, DataDirError, files};
use crate::grpc::GrpcAuth;
use crate::service::{AuthService, Clock};
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
    /// The TLS identity or reflection service could not be built.
    #[error("server set-up failed: {0}")]
    Setup(String),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Opens an initialised data directory and builds the service over it.
pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<AuthService, DataDirError> {
    let config = datadir::load_config(dir)?;
    let keys = datadir::load_keys(dir)?;
    let store = Store::open(
        &dir.join(files::DATABASE),
        keys.data_key.clone(),
        &keys.binding(),
    )?;
    Ok(AuthService::new(store, keys, config, clock))
}

/// Makes ring the process's TLS crypto provider. The peer's QUIC transport
/// also links aws-lc-rs, and with two providers built in rustls will not
/// pick one by itself. Idempotent; every TLS user calls it first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Serves `svc` on `listener` until `shutdown` completes, then drains
/// in-flight calls and returns.
pub async fn serve(
    svc: Arc<AuthService>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    install_crypto_provider();
    let identity = Identity::from_pem(&svc.keys().server_cert_pem, &svc.keys().server_key_pem);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AuthServer<GrpcAuth>>().await;
    // Both reflection versions: grpcurl and older tools still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vmail_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
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
                match svc.purge_expired().await {
                    Ok((0, 0)) => {}
                    Ok((s, v)) => tracing::info!(sessions = s, voicemails = v, "purged expired"),
                    Err(e) => tracing::warn!(error = %e, "purging expired entries failed"),
                }
            }
        }))
    };

    let addr = listener.local_addr().ok();
    tracing::info!(name = %svc.config().name, ?addr, "vmail-auth serving");
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

/// An auth server running inside this process on a loopback port: what
/// `vmail demo` embeds and what the integration tests start.
#[derive(Debug)]
pub struct LocalServer {
    /// `https://127.0.0.1:PORT`.
    pub endpoint: String,
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
    /// The data directory is unusable.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// Binding the loopback port failed.
    #[error("binding 127.0.0.1:0: {0}")]
    Bind(std::io::Error),
}

impl LocalServer {
    /// Serves an initialised data directory on `127.0.0.1:0`.
    pub async fn start(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, LocalServerError> {
        let svc = Arc::new(open(dir, clock)?);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(LocalServerError::Bind)?;
        let port = listener
            .local_addr()
            .map_err(LocalServerError::Bind)?
            .port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(svc.clone(), listener, async {
            let _ = rx.await;
        }));
        Ok(Self {
            endpoint: format!("https://127.0.0.1:{port}"),
            ca_pem: svc.keys().ca_cert_pem.clone().into_bytes(),
            cluster_key: svc.keys().cluster_public_key(),
            service: svc,
            shutdown: Some(tx),
            task,
        })
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
