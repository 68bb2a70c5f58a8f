//! Auth servers inside this process, on loopback ports: what `vmail-devnet
//! demo`, the local testnet's server processes and the integration tests
//! run. Each is the real server (`vmail_auth::server::open_with` and
//! `serve`, TLS, Raft over the internal service); only its ports, its clock,
//! its lifetime and the [`Partition`] drill are the harness's.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::net::TcpListener;
use vmail_auth::cluster::network::{MemberClient, NetworkFactory};
use vmail_auth::cluster::{Member, TypeConfig, admin};
use vmail_auth::config::{PolicyMode, ServerConfig};
use vmail_auth::datadir;
use vmail_auth::server::{OpenError, ServeError, open_with, serve};
use vmail_auth::service::{AuthService, Clock, SystemClock};
use vmail_node::auth_client::AuthTarget;

/// What the servers of one local group share: the clock they read and the
/// partition drill that can cut members off.
#[derive(Debug, Clone)]
pub struct Harness {
    /// The clock every server reads (tests move a `ManualClock`).
    pub clock: Arc<dyn Clock>,
    /// Which members are cut off from the others.
    pub partition: Partition,
}

impl Harness {
    /// Servers on `clock`, none cut off.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            partition: Partition::default(),
        }
    }
}

impl Default for Harness {
    /// Servers on the system clock, none cut off.
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

/// Which members of a local group are cut off from the others: the
/// partition drill of the tests. Raft RPCs from a cut member, and to it,
/// fail as unreachable, while its public API stays up, so it finds out
/// only as a real partition would tell it: no majority answers.
#[derive(Debug, Clone, Default)]
pub struct Partition(Arc<RwLock<BTreeSet<u64>>>);

impl Partition {
    /// Cuts the member with Raft node id `node` off (`true`) or reconnects
    /// it (`false`).
    pub fn cut(&self, node: u64, cut: bool) {
        let mut set = self.0.write().expect("partition lock");
        if cut {
            set.insert(node);
        } else {
            set.remove(&node);
        }
    }

    /// Whether `node` is cut off.
    pub fn is_cut(&self, node: u64) -> bool {
        self.0.read().expect("partition lock").contains(&node)
    }

    fn separates(&self, a: u64, b: u64) -> bool {
        let set = self.0.read().expect("partition lock");
        set.contains(&a) || set.contains(&b)
    }
}

/// The server's own [`NetworkFactory`] behind the partition.
struct Partitioned {
    me: u64,
    inner: NetworkFactory,
    partition: Partition,
}

impl RaftNetworkFactory<TypeConfig> for Partitioned {
    type Network = PartitionedClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PartitionedClient {
        PartitionedClient {
            from: self.me,
            to: target,
            inner: self.inner.new_client(target, node).await,
            partition: self.partition.clone(),
        }
    }
}

/// One member's Raft RPCs to another, refused while the partition
/// separates them.
struct PartitionedClient {
    from: u64,
    to: u64,
    inner: MemberClient,
    partition: Partition,
}

#[derive(Debug, thiserror::Error)]
#[error("the partition drill separates node {from:016x} from node {to:016x}")]
struct Cut {
    from: u64,
    to: u64,
}

impl PartitionedClient {
    /// Why an RPC may not pass now, if the partition separates the two.
    fn cut(&self) -> Option<Unreachable> {
        let cut = Cut {
            from: self.from,
            to: self.to,
        };
        self.partition
            .separates(self.from, self.to)
            .then(|| Unreachable::new(&cut))
    }
}

impl RaftNetwork<TypeConfig> for PartitionedClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        if let Some(cut) = self.cut() {
            return Err(RPCError::Unreachable(cut));
        }
        self.inner.append_entries(rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        if let Some(cut) = self.cut() {
            return Err(RPCError::Unreachable(cut));
        }
        self.inner.install_snapshot(rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        if let Some(cut) = self.cut() {
            return Err(RPCError::Unreachable(cut));
        }
        self.inner.vote(rpc, option).await
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
    /// No leader appeared in time.
    #[error("{name}: no leader after {timeout:?}: {why}")]
    NoLeader {
        /// The server.
        name: String,
        /// How long it waited.
        timeout: Duration,
        /// What openraft said.
        why: String,
    },
    /// The server did not get its share key into the group's state in
    /// time, so grants would be refused.
    #[error("{name}: its share key was not published after {timeout:?}")]
    ShareKeyUnpublished {
        /// The server.
        name: String,
        /// How long it waited.
        timeout: Duration,
    },
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
    pub async fn start(dir: &Path, harness: &Harness) -> Result<Self, LocalServerError> {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(dir, harness, any, any).await
    }

    /// Serves an initialised data directory on the given addresses. A
    /// restarted member must come back on the ports the group knows it by.
    pub async fn start_on(
        dir: &Path,
        harness: &Harness,
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
        let partition = harness.partition.clone();
        let svc = open_with(dir, harness.clock.clone(), |me, inner| Partitioned {
            me,
            inner,
            partition,
        });
        let svc = Arc::new(svc.await?);
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

    /// Waits until this server has a leader and its share key is in the
    /// group's state (grants list every voter's): a founder elects itself
    /// within a second or two, and publishes its key right after.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), LocalServerError> {
        let name = || self.service.config().name.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        self.service
            .raft()
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|e| LocalServerError::NoLeader {
                name: name(),
                timeout,
                why: e.to_string(),
            })?;
        // A grant lists every voter's share key: until this server's is in
        // the group's state, grants are refused as UNAVAILABLE.
        while !self.service.share_key_published().await.unwrap_or(false) {
            if tokio::time::Instant::now() >= deadline {
                return Err(LocalServerError::ShareKeyUnpublished {
                    name: name(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
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
        harness: &Harness,
    ) -> Result<Vec<LocalServer>, LocalServerError> {
        Self::start_group_with(root, n, harness, |_| {}).await
    }

    /// [`Self::start_group`], with the founder's config (which the others
    /// take when they join) changed by `edit`.
    pub async fn start_group_with(
        root: &Path,
        n: usize,
        harness: &Harness,
        edit: impl FnOnce(&mut ServerConfig),
    ) -> Result<Vec<LocalServer>, LocalServerError> {
        let first_dir = root.join("auth-1");
        datadir::init(&datadir::InitOptions::loopback(&first_dir)).map_err(OpenError::from)?;
        let mut config = datadir::load_config(&first_dir).map_err(OpenError::from)?;
        edit(&mut config);
        let path = first_dir.join(datadir::files::CONFIG);
        std::fs::write(
            &path,
            toml::to_string(&config).expect("a config serialises"),
        )
        .map_err(|source| OpenError::from(datadir::DataDirError::Io { path, source }))?;
        let first = Self::start(&first_dir, harness).await?;
        first.wait_ready(Duration::from_secs(30)).await?;
        let via = first.member().raft_url;
        let mut servers = vec![first];
        for i in 2..=n {
            let name = format!("auth-{i}");
            let dir = root.join(&name);
            servers.push(Self::join(&dir, &name, &via, &first_dir, harness).await?);
        }
        for s in &servers {
            s.wait_ready(Duration::from_secs(30)).await?;
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
        harness: &Harness,
    ) -> Result<LocalServer, LocalServerError> {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        Self::join_on(dir, name, via, issuer_dir, harness, any, any).await
    }

    /// [`LocalServer::join`] on the given addresses: a wiped server coming
    /// back where the group knew its earlier incarnation.
    pub async fn join_on(
        dir: &Path,
        name: &str,
        via: &str,
        issuer_dir: &Path,
        harness: &Harness,
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
        let server = Self::start_on(dir, harness, api, raft).await?;
        let tls = admin::member_tls(dir).map_err(|e| LocalServerError::Join(e.to_string()))?;
        let member_key = server.service.share_keys().member_public();
        admin::request_join(via, &tls, server.node_id(), &server.member(), member_key)
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
        // store calls) and of its store (the Raft node's log and state
        // machine workers, which end after `Raft::shutdown` returns) is gone,
        // so dropping `self` closes the database file.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (Arc::strong_count(&self.service) > 1 || Arc::strong_count(self.service.store()) > 1)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        result
    }
}

/// How a client reaches one local server.
/// Spam settings that never refuse: for harnesses that measure or test
/// something else and leave many voicemails between a few users. The spam
/// tests and the spam run keep the defaults.
pub fn no_spam_limits(c: &mut ServerConfig) {
    c.spam.default_mode = PolicyMode::Anyone;
    c.spam.voicemails_per_hour = 1_000_000;
    c.spam.refused_grants_per_minute = 1_000_000;
    c.spam.new_recipients_per_day = 1_000_000;
    c.spam.max_outstanding_bytes = u64::MAX;
}

pub fn target(server: &LocalServer) -> AuthTarget {
    target_of(std::slice::from_ref(server))
}

/// How a client reaches an in-process group: every member, in order.
pub fn target_of(servers: &[LocalServer]) -> AuthTarget {
    let first = servers.first().expect("a group has a member");
    AuthTarget {
        endpoints: servers.iter().map(|s| s.endpoint.clone()).collect(),
        ca_pem: first.ca_pem.clone(),
        cluster_key: first.cluster_key,
        group_key: None,
    }
}

/// The group's threshold key once every member of `servers` applied the
/// same completed key generation, waiting up to `wait` for it.
pub async fn group_key<'a>(
    servers: impl IntoIterator<Item = &'a LocalServer> + Clone,
    wait: std::time::Duration,
) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut keys = Vec::new();
        for s in servers.clone() {
            keys.push(s.service.store().group_key()?);
        }
        if let Some(Some((_, key))) = keys.first()
            && keys.iter().all(|k| k == &keys[0])
        {
            return Ok(ed25519_dalek::VerifyingKey::from_bytes(key)?);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the auth group made no signing key within {wait:?}: it needs three servers that finish a key generation (see their logs)"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
