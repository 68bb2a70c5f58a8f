//! Test harness: real auth servers on `127.0.0.1:0`, each in its own
//! temporary data directory, real peers on loopback ([`TestNet`]), and
//! helpers to register and log users in.
//!
//! Nothing here is a mock: [`TestAuth`] runs `vmail-auth`'s own serve loop
//! over TLS, clients are `vmail-node`'s real [`AuthClient`], and peers are
//! real libp2p swarms.

pub mod attacks;
pub mod baresip;
pub mod churn;
pub mod history;
pub mod phone;
pub mod scale;
pub mod sipp;
pub mod spam;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use vmail_auth::config::ServerConfig;
use vmail_auth::datadir::{self, InitOptions, files};
use vmail_auth::service::{AuthService, Clock, SystemClock};
use vmail_devnet::local_auth::{self, Harness, LocalServer, LocalServerError};
use vmail_devnet::localnet;
use vmail_node::auth_client::{
    AuthClient, AuthTarget, ClientError, GrantRequest, LoginSession, NewDeposit, VoicemailMeta,
};
use vmail_node::config::NodeConfig;
use vmail_node::core::erasure::Redundancy;
use vmail_node::core::locator::{Layout, ObjectId, ShardRef};
use vmail_node::overlay::objects::{ObjectMeta, ShardOf};
use vmail_node::overlay::swarm::Role;
use vmail_node::peer::{LeaveRequest, Peer, PeerOptions, Session};
use vmail_proto::grant::{GrantedShard, StorageGrant};
use vmail_proto::keys::SecretKey;
use vmail_proto::names::Recipients;
use vmail_proto::pb;
use vmail_proto::share::ShareKey;

/// One auth server in a temporary data directory.
#[derive(Debug)]
pub struct TestAuth {
    dir: TempDir,
    harness: Harness,
    server: Option<LocalServer>,
}

impl TestAuth {
    /// Initialises and starts a server with the default config and the system clock.
    pub async fn start() -> Self {
        Self::start_with(|_| {}, Arc::new(SystemClock)).await
    }

    /// Initialises a server, lets `edit` change its config file, and starts
    /// it. Its spam settings never refuse ([`local_auth::no_spam_limits`])
    /// unless `edit` sets them: tests of spam control set
    /// `c.spam = SpamConfig::default()`.
    pub async fn start_with(edit: impl FnOnce(&mut ServerConfig), clock: Arc<dyn Clock>) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("auth-1");
        datadir::init(&InitOptions::loopback(&dir)).expect("init");
        let mut config = datadir::load_config(&dir).expect("config");
        local_auth::no_spam_limits(&mut config);
        edit(&mut config);
        std::fs::write(dir.join(files::CONFIG), toml_string(&config)).expect("write config");
        let harness = Harness::new(clock);
        let server = LocalServer::start(&dir, &harness).await.expect("start");
        // A founder founds its group in the background: wait until it leads,
        // so a test's first call never meets a server with no members yet.
        server
            .wait_ready(std::time::Duration::from_secs(30))
            .await
            .expect("the server founds its group");
        Self {
            dir: tmp,
            harness,
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

    /// The server's public API address.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        self.server().api_addr
    }

    /// The server's internal group service address.
    pub fn raft_addr(&self) -> std::net::SocketAddr {
        self.server().raft_addr
    }

    /// A loopback peer config that holds what this server grants.
    pub fn node_config(&self) -> NodeConfig {
        holder_config(&self.target().cluster_key)
    }

    /// How clients reach this server.
    pub fn target(&self) -> AuthTarget {
        let s = self.server();
        local_auth::target(s)
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
            LocalServer::start(&self.data_dir(), &self.harness)
                .await
                .expect("restart"),
        );
    }

    /// Starts a server on the data directory, returning the error if it refuses.
    pub async fn try_start(&mut self) -> Result<(), LocalServerError> {
        self.server = Some(LocalServer::start(&self.data_dir(), &self.harness).await?);
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

/// A deposit for `names` with a fresh request id and session key, and the
/// metadata of a 5 s WAV. It names no storage grant yet (`grant_serial` 0,
/// which the group refuses) and no share keys: pass it through [`granted`]
/// to deposit it.
pub fn deposit_for(names: &[&str], locator: &[u8]) -> NewDeposit {
    NewDeposit {
        grant_serial: 0,
        request_id: vmail_proto::random_bytes(),
        recipients: Recipients::parse(names).expect("valid recipients"),
        locator: locator.to_vec(),
        session_key: SecretKey::random(),
        share_keys: Vec::new(),
        meta: VoicemailMeta {
            size: 1234,
            content_type: "audio/wav".into(),
            duration_ms: 5000,
            expires_at: 0,
        },
    }
}

/// A storage grant request for a voicemail to `recipients` of one 1 KiB
/// shard on one made-up holder, as a leave would ask for, kept until
/// `expires_at` (0: the server's default lifetime).
fn one_shard_grant(recipients: &Recipients, expires_at: u64) -> GrantRequest {
    GrantRequest {
        recipients: recipients.clone(),
        message_id: vmail_proto::random_bytes(),
        data_shards: 1,
        shards: vec![GrantedShard {
            len: 1024,
            sha256: vmail_proto::random_bytes(),
        }],
        holders: vec![PeerId::random().to_bytes()],
        expires_at,
        sender: vmail_node::auth_client::SenderVisibility::Shown,
    }
}

/// `d` under a new storage grant that `c` asks its group for, for `d`'s
/// recipients and kept until `expires_at` (0: the server's default; the
/// voicemail expires with the grant), with the grant's share keys.
/// Everything else in `d` is kept, so a retry of the returned deposit
/// replays it: same request id, same serial.
/// The refusal of RequestGrant is returned as is (an unknown recipient is
/// NOT_FOUND naming them).
pub async fn try_granted(
    c: &mut AuthClient,
    mut d: NewDeposit,
    expires_at: u64,
) -> Result<NewDeposit, ClientError> {
    let grant = c
        .request_grant(&one_shard_grant(&d.recipients, expires_at))
        .await?;
    d.grant_serial = grant.grant.body.serial;
    d.share_keys = grant.share_keys;
    Ok(d)
}

/// `d` under a new storage grant from `c`'s group for its recipients, with
/// the server's default lifetime ([`try_granted`]); panics if refused.
pub async fn granted(c: &mut AuthClient, d: NewDeposit) -> NewDeposit {
    granted_until(c, d, 0).await
}

/// `d` under a new storage grant from `c`'s group for its recipients that
/// expires at `expires_at` (Unix seconds on the server's clock), and with
/// it the voicemail ([`try_granted`]); panics if refused.
pub async fn granted_until(c: &mut AuthClient, d: NewDeposit, expires_at: u64) -> NewDeposit {
    try_granted(c, d, expires_at)
        .await
        .expect("a storage grant for the deposit's recipients")
}

/// `msg` as an authenticated request of the session with `token`, for
/// generic gRPC clients.
pub fn bearer<T>(token: &[u8; 32], msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", hex::encode(token))
            .parse()
            .expect("header value"),
    );
    req
}

/// A RequestGrant for a voicemail to `names`: a fresh message id, two
/// 1 KiB shards of which one is needed, on two made-up holders, and the
/// server's default expiry.
pub fn grant_request_for(names: &[&str]) -> pb::GrantRequest {
    pb::GrantRequest {
        recipients: names.iter().map(|n| n.to_string()).collect(),
        message_id: vmail_proto::random_bytes::<16>().to_vec(),
        data_shards: 1,
        shards: (0..2u8)
            .map(|i| pb::GrantedShard {
                len: 1024,
                sha256: vec![i; 32],
            })
            .collect(),
        holders: (0..2u8).map(|i| vec![i; 38]).collect(),
        expires_at: 0,
        anonymous: false,
    }
}

/// A storage grant as a generic gRPC client gets it: parsed (not
/// verified), with the share keys the deposit must split its key among.
#[derive(Debug, Clone)]
pub struct RawGrant {
    /// The signed grant.
    pub grant: StorageGrant,
    /// The servers' share keys, in share order.
    pub share_keys: Vec<ShareKey>,
    /// The group's signature over the share keys, empty if none.
    pub roster_signature: Vec<u8>,
}

/// Asks for a storage grant for a voicemail to `names` on a generic gRPC
/// client, as the session with `token`.
pub async fn request_grant(
    raw: &mut pb::auth_client::AuthClient<Channel>,
    token: &[u8; 32],
    names: &[&str],
) -> Result<RawGrant, tonic::Status> {
    let resp = raw
        .request_grant(bearer(token, grant_request_for(names)))
        .await?
        .into_inner();
    Ok(RawGrant {
        grant: StorageGrant::from_bytes(&resp.grant).expect("the grant parses"),
        share_keys: vmail_node::auth_client::grant_share_keys(resp.share_keys, 0)
            .expect("well-formed share keys"),
        roster_signature: resp.roster_signature,
    })
}

/// The DepositRequest for `d` under the storage grant `grant_serial` (0:
/// none), its session key split among `share_keys`.
pub fn deposit_request(
    d: &NewDeposit,
    share_keys: &[ShareKey],
    grant_serial: u64,
) -> pb::DepositRequest {
    let (threshold, key_check, shares) = vmail_proto::share::split(
        &d.session_key,
        share_keys,
        grant_serial,
        &d.recipients,
        &d.locator,
    )
    .expect("a valid split");
    pb::DepositRequest {
        request_id: d.request_id.to_vec(),
        recipients: d.recipients.to_strings(),
        locator: d.locator.clone(),
        metadata: Some(d.meta.clone().into()),
        grant_serial,
        shares: shares.into_iter().map(Into::into).collect(),
        threshold: u32::from(threshold),
        key_check: key_check.to_vec(),
    }
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
        Self::start_on(TestAuth::start().await, n, tune).await
    }

    /// Starts `n` peers holding what `auth` grants.
    pub async fn start_on(auth: TestAuth, n: usize, tune: impl Fn(&mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = auth.target().cluster_key;
        let peers = localnet::start_peers(dir.path(), n, Vec::new(), &key, tune)
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
        login_on(&self.auth, &self.peers[index], user).await
    }

    /// Logs `user` in again on peer `index` with `identity` (a new key
    /// rotates it).
    pub async fn relogin(&self, index: usize, user: &str, identity: &SigningKey) {
        relogin_on(&self.auth, &self.peers[index], user, identity).await;
    }

    /// Ciphertext bytes held across all running peers (bodies only, not
    /// what the quotas are charged).
    pub fn stored_bytes(&self) -> u64 {
        self.peers
            .iter()
            .filter_map(|p| p.store())
            .flat_map(|s| s.list())
            .map(|(_, m)| m.len)
            .sum()
    }

    /// A loopback peer config that joins this net and holds what its auth
    /// server grants.
    pub async fn config(&self) -> NodeConfig {
        let mut c = self.auth.node_config();
        c.bootstrap = self.peers[0].listen_addrs().await.expect("listening");
        c
    }

    /// Starts one more server peer named `name` under this net's dir
    /// (re-using its data if it ran before) with `config`.
    pub async fn start_peer(&self, name: &str, config: NodeConfig) -> Peer {
        start_peer(self.dir.path(), name, config, Role::Server).await
    }

    /// Flips one byte in the middle of every stored copy of object `id`,
    /// behind the holders' backs; returns how many copies were changed.
    pub fn tamper(&self, id: &[u8; 32]) -> usize {
        let name = hex::encode(id);
        let mut n = 0;
        for dir in self.all_peer_dirs() {
            let path = dir.join("objects").join(&name);
            if let Ok(mut bytes) = std::fs::read(&path) {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
                std::fs::write(&path, bytes).expect("write");
                n += 1;
            }
        }
        n
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

/// A loopback peer config that holds what the group with `cluster_key`
/// grants.
pub fn holder_config(cluster_key: &ed25519_dalek::VerifyingKey) -> NodeConfig {
    let mut c = NodeConfig::loopback();
    c.cluster_key = Some(hex::encode(cluster_key.as_bytes()));
    c
}

/// Starts a peer with data dir `dir/name`.
pub async fn start_peer(dir: &Path, name: &str, config: NodeConfig, role: Role) -> Peer {
    Peer::start(PeerOptions {
        data_dir: dir.join(name),
        config,
        role,
        observations: None,
    })
    .await
    .expect("peer starts")
}

/// Waits (30 s at most) until `peer`'s routing table holds `target`.
pub async fn wait_until_known(peer: &Peer, target: PeerId) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !peer
        .network()
        .routing_peers()
        .await
        .expect("network runs")
        .contains(&target)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never learned of {target}",
            peer.peer_id()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Registers `user` at `auth` and logs them in on `peer`.
pub async fn login_on(auth: &TestAuth, peer: &Peer, user: &str) -> SigningKey {
    let id = identity();
    let mut c = auth.client().await;
    c.register(user, &password(user), &id, None)
        .await
        .expect("register");
    relogin_on(auth, peer, user, &id).await;
    id
}

/// Logs `user` in on `peer` with `identity` (a new key rotates it).
pub async fn relogin_on(auth: &TestAuth, peer: &Peer, user: &str, identity: &SigningKey) {
    let mut c = auth.client().await;
    let login = c
        .login(user, &password(user), identity, &peer.peer_id().to_bytes())
        .await
        .expect("login");
    peer.set_session(Session {
        login,
        identity: identity.clone(),
        target: auth.target(),
    });
}

/// A leave request for `content` to `to`, stored as `replicas` whole copies.
pub fn leave_request(to: &[&str], content: Vec<u8>, replicas: u8) -> LeaveRequest {
    LeaveRequest {
        recipients: to.iter().map(|s| (*s).to_owned()).collect(),
        content,
        content_type: "application/octet-stream".into(),
        duration_ms: 0,
        redundancy: Some(Redundancy::Replicas(replicas)),
        sender: vmail_node::auth_client::SenderVisibility::Shown,
    }
}

/// A leave request for `content` to `to`, erasure-coded `k` of `n`.
pub fn leave_coded(to: &[&str], content: Vec<u8>, k: u8, n: u8) -> LeaveRequest {
    LeaveRequest {
        redundancy: Some(Redundancy::ReedSolomon { k, n }),
        ..leave_request(to, content, 1)
    }
}

/// Asserts `r` is a holder's refusal whose reason says `what`.
pub fn refused_because<T: std::fmt::Debug>(
    r: Result<T, vmail_node::overlay::transfer::TransferError>,
    what: &str,
) {
    match r {
        Err(vmail_node::overlay::transfer::TransferError::Refused { reason, .. }) => {
            assert!(reason.contains(what), "{reason:?} does not say {what:?}")
        }
        other => panic!("expected a refusal naming {what:?}, got {other:?}"),
    }
}

/// Registers `user` through `target` and logs them in on `peer`.
pub async fn login_peer(target: &AuthTarget, peer: &Peer, user: &str) {
    let id = identity();
    let mut c = AuthClient::connect(target).await.expect("connect");
    c.register(user, &password(user), &id, None)
        .await
        .expect("register");
    let login = c
        .login(user, &password(user), &id, &peer.peer_id().to_bytes())
        .await
        .expect("login");
    peer.set_session(Session {
        login,
        identity: id,
        target: target.clone(),
    });
}

/// A shard of `data` under `id`, as the first shard of a `redundancy`
/// layout whose other shards were never stored, with `grant`.
pub fn one_copy_meta(
    data: &[u8],
    id: ObjectId,
    redundancy: Redundancy,
    grant: Vec<u8>,
) -> ObjectMeta {
    use sha2::Digest;
    let sha256: [u8; 32] = sha2::Sha256::digest(data).into();
    let n = redundancy.n();
    let mut shards = vec![ShardRef { id, sha256 }];
    // Copies the layout names beyond the first were never stored.
    shards.extend((1..n).map(|i| ShardRef {
        id: [i as u8; 32],
        sha256,
    }));
    ObjectMeta {
        len: data.len() as u64,
        sha256,
        expires_at: u64::MAX,
        delete_hash: [0; 32],
        shard: Some(ShardOf {
            index: 0,
            layout: Layout {
                redundancy,
                ciphertext_len: data.len() as u64,
                shards,
            },
        }),
        grant,
        proof: Vec::new(),
    }
}

/// `n` random bytes.
pub fn random_content(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// A replicated auth group of N servers on loopback, each in its own data
/// directory under one temporary root, formed the way `vmail-auth join`
/// forms one. Any server can be killed (a crash), stopped, restarted on its
/// old ports, cut off from the group, or wiped and rejoined.
#[derive(Debug)]
pub struct TestCluster {
    root: TempDir,
    harness: Harness,
    servers: Vec<Option<LocalServer>>,
    addrs: Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
    names: Vec<String>,
}

impl TestCluster {
    /// Founds a group of `n` servers and waits until all are voters. Its
    /// spam settings never refuse, as [`TestAuth::start_with`]'s.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, |_| {}).await
    }

    /// [`Self::start`], with the group's config changed by `edit` after
    /// the spam limits are lifted.
    pub async fn start_with(n: usize, edit: impl FnOnce(&mut ServerConfig)) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let harness = Harness::default();
        let servers = LocalServer::start_group_with(root.path(), n, &harness, |c| {
            local_auth::no_spam_limits(c);
            edit(c);
        })
        .await
        .expect("start group");
        let addrs = servers.iter().map(|s| (s.api_addr, s.raft_addr)).collect();
        let names = servers
            .iter()
            .map(|s| s.service.config().name.clone())
            .collect();
        let me = Self {
            root,
            harness,
            servers: servers.into_iter().map(Some).collect(),
            addrs,
            names,
        };
        me.wait_voters(n).await;
        me
    }

    /// Server `i`'s name (`auth-{i+1}`).
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Server `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(&self.names[i])
    }

    /// Server `i`, which must be running.
    pub fn server(&self, i: usize) -> &LocalServer {
        self.servers[i].as_ref().expect("server is running")
    }

    /// Indices of the running servers.
    pub fn running(&self) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|i| self.servers[*i].is_some())
            .collect()
    }

    /// A loopback peer config that holds what this group grants.
    pub fn node_config(&self) -> NodeConfig {
        holder_config(&self.target().cluster_key)
    }

    /// Every server's public endpoint, in order: what a client config lists.
    pub fn target(&self) -> AuthTarget {
        self.target_of(&(0..self.servers.len()).collect::<Vec<_>>())
    }

    /// A client config that lists only the given servers.
    pub fn target_of(&self, which: &[usize]) -> AuthTarget {
        let any = self
            .servers
            .iter()
            .flatten()
            .next()
            .expect("a running server");
        AuthTarget {
            endpoints: which
                .iter()
                .map(|i| format!("https://127.0.0.1:{}", self.addrs[*i].0.port()))
                .collect(),
            ca_pem: any.ca_pem.clone(),
            cluster_key: any.cluster_key,
            group_key: None,
        }
    }

    /// A raw TLS channel to server `i`, for generic gRPC clients.
    pub async fn channel(&self, i: usize) -> Channel {
        let target = self.target_of(&[i]);
        Endpoint::from_shared(target.endpoints[0].clone())
            .expect("endpoint")
            .tls_config(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&target.ca_pem)),
            )
            .expect("tls")
            .connect()
            .await
            .expect("connect")
    }

    /// A client config that lists every server and pins the group's
    /// threshold key, once every running server has it (a minute at most).
    pub async fn pinned_target(&self) -> AuthTarget {
        let key = local_auth::group_key(
            self.servers.iter().flatten(),
            std::time::Duration::from_secs(60),
        )
        .await
        .expect("a group key");
        AuthTarget {
            group_key: Some(key),
            ..self.target()
        }
    }

    /// A client that knows every server.
    pub async fn client(&self) -> AuthClient {
        AuthClient::connect(&self.target()).await.expect("connect")
    }

    /// The index of the current leader, waiting up to 20 s for one that
    /// another running server follows. (A restarted leader briefly believes
    /// it still leads its old term; the others know better.)
    pub async fn leader(&self) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let connected: Vec<usize> = self
                .running()
                .into_iter()
                .filter(|i| !self.is_isolated(*i))
                .collect();
            let metrics = |i: usize| self.server(i).service.raft().metrics().borrow().clone();
            let claim = connected
                .iter()
                .copied()
                .filter(|i| self.server(*i).service.is_leader())
                .max_by_key(|i| metrics(*i).current_term);
            if let Some(l) = claim {
                let id = metrics(l).id;
                let term = metrics(l).current_term;
                let followed = connected.len() == 1
                    || connected.iter().any(|j| {
                        *j != l && {
                            let m = metrics(*j);
                            m.current_leader == Some(id) && m.current_term == term
                        }
                    });
                if followed {
                    return l;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no leader within 20 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits until the leader's membership has `n` voters.
    pub async fn wait_voters(&self, n: usize) {
        let leader = self.leader().await;
        self.server(leader)
            .service
            .raft()
            .wait(Some(std::time::Duration::from_secs(60)))
            .metrics(
                |m| m.membership_config.membership().voter_ids().count() == n,
                "voter count",
            )
            .await
            .expect("voters");
    }

    /// The last index in server `i`'s Raft log.
    pub fn last_log_index(&self, i: usize) -> u64 {
        self.server(i)
            .service
            .raft()
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0)
    }

    /// Waits until every running, connected server has applied the leader's
    /// last log index.
    pub async fn wait_applied(&self) {
        let target = self.last_log_index(self.leader().await);
        for i in self.running() {
            if self.is_isolated(i) {
                continue;
            }
            self.server(i)
                .service
                .raft()
                .wait(Some(std::time::Duration::from_secs(60)))
                .applied_index_at_least(Some(target), "catch up")
                .await
                .unwrap_or_else(|e| panic!("{} did not catch up: {e}", self.names[i]));
        }
    }

    /// Kills server `i` as a crash would.
    pub async fn kill(&mut self, i: usize) {
        if let Some(s) = self.servers[i].take() {
            s.kill().await;
        }
    }

    /// Restarts server `i` from its data directory on its old ports.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "stop it first");
        let (api, raft) = self.addrs[i];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let server = loop {
            match LocalServer::start_on(&self.data_dir(i), &self.harness, api, raft).await {
                Ok(s) => break s,
                // The killed instance's database handle or ports are still
                // being released.
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("restarting {}: {e}", self.names[i]),
            }
        };
        self.servers[i] = Some(server);
    }

    /// Adds a new server through a join, as `vmail-auth join` does, and
    /// returns its index.
    pub async fn add(&mut self) -> usize {
        let i = self.servers.len();
        let name = format!("auth-{}", i + 1);
        let leader = self.leader().await;
        let via = self.server(leader).member().raft_url;
        let dir = self.root.path().join(&name);
        let server = LocalServer::join(&dir, &name, &via, &self.data_dir(leader), &self.harness)
            .await
            .expect("join");
        self.addrs.push((server.api_addr, server.raft_addr));
        self.names.push(name);
        self.servers.push(Some(server));
        i
    }

    /// Cuts server `i` off from the rest of the group, or reconnects it.
    pub fn isolate(&self, i: usize, isolated: bool) {
        self.harness
            .partition
            .cut(self.server(i).node_id(), isolated);
    }

    /// Whether server `i` is cut off from the rest of the group.
    pub fn is_isolated(&self, i: usize) -> bool {
        self.harness.partition.is_cut(self.server(i).node_id())
    }

    /// What the group's servers share (its partition, its clock), for
    /// servers a test starts beside it.
    pub fn harness(&self) -> &Harness {
        &self.harness
    }

    /// Member `by` approves member `joined` with its member key, as
    /// `vmail-auth cluster approve` does; returns the approvers so far, or
    /// why the group refused.
    pub async fn approve(&self, by: usize, joined: usize) -> Result<Vec<u64>, String> {
        let key = self.server(joined).service.share_keys().member_public();
        vmail_auth::cluster::admin::approve_join(
            &self.data_dir(by),
            &self.server(by).member().raft_url,
            self.name(joined),
            Some(key),
        )
        .await
        .map(|(_, _, approvers)| approvers)
        .map_err(|e| e.to_string())
    }

    /// Removes member `i` from the group through the leader's admin API
    /// (`vmail-auth cluster remove`).
    pub async fn remove(&self, i: usize) {
        let leader = self.leader().await;
        vmail_auth::cluster::admin::remove(
            &self.server(leader).member().raft_url,
            &self.member_tls(leader),
            self.name(i),
        )
        .await
        .expect("remove");
    }

    /// The TLS identity of member `i`, for admin calls.
    pub fn member_tls(&self, i: usize) -> vmail_auth::tls::ClusterTls {
        vmail_auth::cluster::admin::member_tls(&self.data_dir(i)).expect("member tls")
    }

    /// Stops every running server.
    pub async fn stop(&mut self) {
        for s in self.servers.iter_mut() {
            if let Some(s) = s.take() {
                let _ = s.stop().await;
            }
        }
    }
}

/// A loopback TCP relay to `upstream` that can lose answers: once armed,
/// the first chunk of more than 100 bytes from upstream is dropped and the
/// connection cut, as when a server's answer is lost to a crash or a
/// network fault after the server acted; in an outage, every such chunk
/// is. Otherwise it relays. A fault injector for tests, not a stand-in for
/// a component.
#[derive(Debug)]
pub struct AnswerCutter {
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    armed: Arc<std::sync::atomic::AtomicBool>,
    outage: Arc<std::sync::atomic::AtomicBool>,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerCutter {
    /// Relays 127.0.0.1:0 to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let outage = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cuts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, o, c) = (armed.clone(), outage.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (a, o, c) = (a.clone(), o.clone(), c.clone());
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if n > 100 && (a.swap(false, Ordering::SeqCst) || o.load(Ordering::SeqCst))
                        {
                            c.fetch_add(1, Ordering::SeqCst);
                            let _ = cw.shutdown().await;
                            return;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            armed,
            outage,
            cuts,
            task,
        }
    }

    /// Loses the next answer.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Loses every answer (and so every new connection's handshake) until
    /// [`AnswerCutter::end_outage`].
    pub fn start_outage(&self) {
        self.outage.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Relays normally again.
    pub fn end_outage(&self) {
        self.outage
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answers lost so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for AnswerCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
