//! Test harness: real auth servers on `127.0.0.1:0`, each in its own
//! temporary data directory, real peers on loopback ([`TestNet`]), and
//! helpers to register and log users in.
//!
//! Nothing here is a mock: [`TestAuth`] runs `vmail-auth`'s own serve loop
//! over TLS, clients are `vmail-node`'s real [`AuthClient`], and peers are
//! real libp2p swarms.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use vmail_auth::config::ServerConfig;
use vmail_auth::datadir::{self, InitOptions, files};
use vmail_auth::server::LocalServer;
use vmail_auth::service::{AuthService, Clock, SystemClock};
use vmail_node::client::{AuthClient, AuthTarget, LoginSession};
use vmail_node::config::NodeConfig;
use vmail_node::localnet;
use vmail_node::peer::{LeaveRequest, Peer, Session};

/// One auth server in a temporary data directory.
#[derive(Debug)]
pub struct TestAuth {
    dir: TempDir,
    clock: Arc<dyn Clock>,
    server: Option<LocalServer>,
}

impl TestAuth {
    /// Initialises and starts a server with the default config and the system clock.
    pub async fn start() -> Self {
        Self::start_with(|_| {}, Arc::new(SystemClock)).await
    }

    /// Initialises a server, lets `edit` change its config file, and starts it.
    pub async fn start_with(edit: impl FnOnce(&mut ServerConfig), clock: Arc<dyn Clock>) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("auth-1");
        datadir::init(&InitOptions::loopback(&dir)).expect("init");
        let mut config = datadir::load_config(&dir).expect("config");
        edit(&mut config);
        std::fs::write(dir.join(files::CONFIG), toml_string(&config)).expect("write config");
        let server = LocalServer::start(&dir, clock.clone())
            .await
            .expect("start");
        Self {
            dir: tmp,
            clock,
            server: Some(server),
        }
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("auth-1")
    }

    fn server(&self) -> &LocalServer {
        self.server.as_ref().expect("server is running")
    }

    /// The running service, to inspect its store.
    pub fn service(&self) -> &AuthService {
        &self.server().service
    }

    /// How clients reach this server.
    pub fn target(&self) -> AuthTarget {
        let s = self.server();
        AuthTarget::from(s)
    }

    /// A connected client.
    pub async fn client(&self) -> AuthClient {
        AuthClient::connect(&self.target()).await.expect("connect")
    }

    /// A raw TLS channel, for generic gRPC clients.
    pub async fn channel(&self) -> Channel {
        let s = self.server();
        Endpoint::from_shared(s.endpoint.clone())
            .expect("endpoint")
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&s.ca_pem)))
            .expect("tls")
            .connect()
            .await
            .expect("connect")
    }

    /// Stops the server, leaving its data directory in place.
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.expect("clean stop");
        }
    }

    /// Stops the server and starts a new one on the same data directory
    /// (on a new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.server = Some(
            LocalServer::start(&self.data_dir(), self.clock.clone())
                .await
                .expect("restart"),
        );
    }

    /// Starts a server on the data directory, returning the error if it refuses.
    pub async fn try_start(&mut self) -> Result<(), vmail_auth::server::LocalServerError> {
        self.server = Some(LocalServer::start(&self.data_dir(), self.clock.clone()).await?);
        Ok(())
    }
}

fn toml_string(c: &ServerConfig) -> String {
    toml::to_string(c).expect("config serialises")
}

/// A fresh identity key.
pub fn identity() -> SigningKey {
    SigningKey::from_bytes(&vmail_proto::random_bytes())
}

/// The password tests use for `user`.
pub fn password(user: &str) -> Vec<u8> {
    format!("{user}'s long test password").into_bytes()
}

/// Registers `user` and logs in on a new client.
pub async fn register_and_login(
    auth: &TestAuth,
    user: &str,
) -> (AuthClient, SigningKey, LoginSession) {
    let mut c = auth.client().await;
    let id = identity();
    c.register(user, &password(user), &id, None)
        .await
        .expect("register");
    let s = c
        .login(user, &password(user), &id, &[])
        .await
        .expect("login");
    (c, id, s)
}

/// Reads the database file into memory, to prove it was not changed.
pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read file")
}

/// An auth server and N real peers on loopback that know each other.
#[derive(Debug)]
pub struct TestNet {
    /// The auth server.
    pub auth: TestAuth,
    /// The running peers, in start order; killed peers are removed.
    pub peers: Vec<Peer>,
    dir: TempDir,
}

impl TestNet {
    /// Starts an auth server and `n` peers with the default peer config.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, |_| {}).await
    }

    /// Starts an auth server and `n` peers, letting `tune` change each
    /// peer's config.
    pub async fn start_with(n: usize, tune: impl Fn(&mut NodeConfig)) -> Self {
        let auth = TestAuth::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let peers = localnet::start_peers(dir.path(), n, Vec::new(), tune)
            .await
            .expect("peers join");
        Self { auth, peers, dir }
    }

    /// The directory under which peer `i` (1-based) keeps its data.
    pub fn peer_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("peer-{i}"))
    }

    /// Every peer data dir, including those of killed peers.
    pub fn all_peer_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .collect()
    }

    /// The running peer with this id.
    pub fn peer(&self, id: PeerId) -> &Peer {
        self.peers
            .iter()
            .find(|p| p.peer_id() == id)
            .expect("a running peer")
    }

    /// Registers `user` and logs them in on peer `index` (0-based).
    pub async fn login(&self, index: usize, user: &str) -> SigningKey {
        let id = identity();
        let mut c = self.auth.client().await;
        c.register(user, &password(user), &id, None)
            .await
            .expect("register");
        self.relogin(index, user, &id).await;
        id
    }

    /// Logs `user` in again on peer `index` with `identity` (a new key
    /// rotates it).
    pub async fn relogin(&self, index: usize, user: &str, identity: &SigningKey) {
        let peer = &self.peers[index];
        let mut c = self.auth.client().await;
        let login = c
            .login(user, &password(user), identity, &peer.peer_id().to_bytes())
            .await
            .expect("login");
        peer.set_session(Session {
            login,
            identity: identity.clone(),
            target: self.auth.target(),
        });
    }

    /// Ciphertext bytes held across all running peers.
    pub fn stored_bytes(&self) -> u64 {
        self.peers
            .iter()
            .filter_map(|p| p.store())
            .map(|s| s.usage().1)
            .sum()
    }

    /// Stops a peer abruptly (no hand-off), as a crash would.
    pub async fn kill(&mut self, id: PeerId) {
        let i = self
            .peers
            .iter()
            .position(|p| p.peer_id() == id)
            .expect("a running peer");
        self.peers.remove(i).stop().await;
    }

    /// Stops every peer and the auth server.
    pub async fn stop(mut self) {
        for p in self.peers.drain(..) {
            p.stop().await;
        }
        self.auth.stop().await;
    }
}

/// A leave request for `content` to `to`.
pub fn leave_request(to: &[&str], content: Vec<u8>, replicas: u32) -> LeaveRequest {
    LeaveRequest {
        recipients: to.iter().map(|s| (*s).to_owned()).collect(),
        content,
        content_type: "application/octet-stream".into(),
        duration_ms: 0,
        replicas,
    }
}

/// `n` random bytes.
pub fn random_content(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}
