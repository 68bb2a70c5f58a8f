//! The peer's libp2p swarm and the one task that owns it.
//!
//! The rest of the program holds a [`Network`] handle and sends the event
//! loop typed [`Command`]s, each with a `oneshot` for the answer (the shape
//! of rust-libp2p's file-sharing example). Blob transfers do not pass
//! through the loop: they run on libp2p streams opened with the handle's
//! [`libp2p_stream::Control`], so a 16 MiB upload never stalls the DHT.
//!
//! Transports: TCP and QUIC, with Noise and Yamux on TCP, and circuit
//! relay v2 as a client. Behaviours: connection limits, identify, ping,
//! Kademlia in server mode on [`KAD_PROTOCOL`] (our own name, so it never
//! joins another network's DHT), the stream behaviour for
//! [`crate::overlay::transfer`], gossipsub on [`ADVERT_TOPIC`], AutoNAT, a relay
//! server (switched on while this peer serves as a supernode), DCUtR, and
//! the supernode request-response protocol ([`crate::supernode::attach`]).
//!
//! Building the swarm and the loop itself live in `event_loop`, what it
//! records for Prometheus in `telemetry`; the
//! supernode side of the loop (adverts, dial checks, the election, and in
//! `sn::uplink` attaching and serving) lives in `sn`.
//!
//! Over 600 lines because the handle's typed commands (`Command`) and their
//! one-line senders on `Network` must match one for one; issue 21 added the
//! metrics handle to it. Splitting the command enum from the handle's
//! methods would put each pair in two files.

mod event_loop;
pub mod providers;
pub mod scoring;
mod sn;
mod telemetry;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::kad::{self, QueryId, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, connection_limits, dcutr, gossipsub,
    identify, ping, relay,
};
use tokio::sync::{mpsc, oneshot};

use self::providers::{ProviderLimits, ProviderStats, ProviderStore};
use crate::supernode::advert::{Advert, Reachability};
use crate::supernode::attach::{SnRequest, SnResponse};
use crate::supernode::election::ElectionConfig;

/// Kademlia protocol name of the vmail overlay.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/vmail/kad/1.0.0");
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/vmail/id/1.0.0";
/// How long one DHT query may run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// An idle connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most providers one lookup gathers before it stops: enough that a few
/// dozen Sybil records cannot hide a holder, and a bound on what a flood
/// of answers can make this peer keep. Fetch and repair never rely on
/// providers alone (they also ask the closest peers with `Has`).
pub const MAX_PROVIDERS_GATHERED: usize = 64;
/// Commands queued for the event loop before senders wait.
const COMMAND_QUEUE: usize = 64;
/// Largest gossipsub frame: several adverts and their control messages.
const GOSSIP_MAX_FRAME: usize = 64 * 1024;
/// The gossipsub topic of supernode adverts.
pub const ADVERT_TOPIC: &str = "/vmail/supernode-adverts/1";
/// Largest supernode request or response.
const SN_MAX_MESSAGE: u64 = 64 * 1024;
/// Bytes one relayed connection may carry: a largest voicemail's
/// ciphertext with room to spare.
const RELAY_CIRCUIT_BYTES: u64 = 1 << 31;
/// How often each connection is pinged (for RTT, and to find dead ones).
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered this long closes its connection.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one relayed connection may last.
const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(30 * 60);

/// What a server peer needs to advertise itself, take part in the
/// supernode election, attach to a supernode and serve as one.
#[derive(Clone)]
pub struct SupernodeSetup {
    /// Declared reachability: `Some(true)` public, `Some(false)` private,
    /// `None` as AutoNAT finds.
    pub public: Option<bool>,
    /// CPU cores.
    pub cpu_cores: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Upload bandwidth, kbit/s.
    pub bandwidth_kbps: u64,
    /// Free holder space now, bytes.
    pub free_storage: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// The election's parameters.
    pub election: ElectionConfig,
    /// Time between adverts.
    pub interval: Duration,
    /// Time between heartbeats to this peer's supernode.
    pub heartbeat: Duration,
    /// Most peers attached while this peer serves.
    pub max_attached: usize,
    /// Cap on every table keyed by a remote peer id (adverts, dial-check
    /// results, look-ups, peer addresses).
    pub max_tracked_peers: usize,
}

impl std::fmt::Debug for SupernodeSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupernodeSetup")
            .field("public", &self.public)
            .field("election", &self.election)
            .finish_non_exhaustive()
    }
}

/// This peer's view of the supernode election and its place in it.
#[derive(Debug, Clone)]
pub struct SupernodeView {
    /// The elected supernodes, sorted.
    pub supernodes: Vec<PeerId>,
    /// This peer's latest advert: published if it qualifies, kept back
    /// (and absent from `adverts`) if not; None before the first.
    pub own: Option<Advert>,
    /// The fresh adverts as the election takes them, this peer's own
    /// included: a peer that claims to be public but has not passed this
    /// peer's dial check counts as private.
    pub adverts: Vec<Advert>,
    /// Adverts refused so far (forged, stale, malformed, out of range).
    pub rejected: u64,
    /// Peers that claim to be public but could not be dialed.
    pub undialable: Vec<PeerId>,
    /// This peer's reachability now.
    pub reachability: Reachability,
    /// The supernode this peer is attached to.
    pub attached_to: Option<PeerId>,
    /// The peers attached to this peer, while it serves.
    pub attached_peers: Vec<PeerId>,
    /// The relayed address reserved on this peer's supernode.
    pub relay_addr: Option<Multiaddr>,
    /// Relayed connections this peer's relay accepted while it served.
    pub relayed_circuits: u64,
    /// Advert bytes gossip delivered to this peer so far.
    pub advert_bytes: u64,
    /// How long the last re-attach took, from losing a supernode to being
    /// attached to the next.
    pub last_reattach: Option<Duration>,
    /// How full the tables keyed by remote peer ids are.
    pub tables: TableSizes,
}

/// Entries in each table this peer keys by a remote peer id; each is
/// capped (`max_tracked_peers`, or the constants of
/// [`crate::supernode::attach`] and [`crate::supernode::budget`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableSizes {
    /// Adverts held.
    pub adverts: usize,
    /// Dial-check results held.
    pub checks: usize,
    /// Dial checks waiting.
    pub queued_checks: usize,
    /// Dial checks running.
    pub probes: usize,
    /// Claimants looked up in the DHT.
    pub looked_up: usize,
    /// Peer addresses held.
    pub peer_addrs: usize,
    /// Report tallies held, while serving.
    pub reports: usize,
    /// Heartbeats whose reports were ignored as too early, while serving.
    pub early_heartbeats: u64,
}

/// Whether this peer serves the DHT or only uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A full peer: answers DHT queries and may hold voicemail.
    Server,
    /// An ephemeral peer that does one job: it queries but is never put in
    /// others' routing tables, so nobody picks it as a holder.
    Client,
}

/// How to build the swarm.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through. With a `/p2p/<peer id>` ending the peer is
    /// known before it answers; without one (`/dns4/sn-1/tcp/4001`) its id
    /// is whatever key completes the Noise handshake there.
    pub bootstrap: Vec<Multiaddr>,
    /// Most established connections in all.
    pub max_connections: u32,
    /// Most established connections to one peer.
    pub max_connections_per_peer: u32,
    /// Most incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Connected peers kept: beyond it, the longest idle unprotected ones
    /// are disconnected ([`crate::core::prune`]).
    pub target_peers: usize,
    /// Server or client.
    pub role: Role,
    /// Adverts and election; `None` for a one-job client peer.
    pub supernode: Option<SupernodeSetup>,
    /// Relay reservations this peer grants while it serves as a
    /// supernode, to attached peers only; 0 refuses all.
    pub relay_slots: usize,
    /// Most attached peers holding reservations from one IP address.
    pub relay_slots_per_ip: usize,
    /// Try DCUtR hole punching to turn relayed connections direct.
    pub hole_punching: bool,
    /// Bounds of the provider-record store.
    pub providers: ProviderLimits,
    /// Record every behaviour's events in libp2p's own series
    /// (`libp2p_metrics`), for a peer that serves its metrics.
    pub libp2p_metrics: bool,
}

/// Why the network could not start or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The swarm could not be built.
    #[error("cannot build the libp2p swarm: {0}")]
    Build(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {why}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        why: String,
    },
    /// The event loop has stopped.
    #[error("the peer's network task has stopped")]
    Stopped,
    /// Announcing a provider record failed.
    #[error("could not announce the object in the DHT: {0}")]
    Announce(String),
    /// A question to this peer's supernode failed.
    #[error("supernode request failed: {0}")]
    Supernode(String),
}

/// Typed requests to the event loop.
#[derive(Debug)]
enum Command {
    StartProviding {
        key: RecordKey,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    StopProviding {
        key: RecordKey,
    },
    GetProviders {
        key: RecordKey,
        reply: oneshot::Sender<(HashSet<PeerId>, LookupStats)>,
    },
    ProviderStats {
        reply: oneshot::Sender<ProviderStats>,
    },
    Traffic {
        reply: oneshot::Sender<Traffic>,
    },
    Connect {
        peer: PeerId,
    },
    HeldProviders {
        key: RecordKey,
        reply: oneshot::Sender<Vec<kad::ProviderRecord>>,
    },
    GetClosestPeers {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    RoutingPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Rtts {
        reply: oneshot::Sender<HashMap<PeerId, Duration>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Supernodes {
        reply: oneshot::Sender<Option<SupernodeView>>,
    },
    Recommend {
        count: u16,
        exclude: Vec<PeerId>,
        reply: oneshot::Sender<Result<Vec<PeerId>, NetworkError>>,
    },
    Observe {
        peer: PeerId,
        ok: bool,
    },
    GossipScore {
        peer: PeerId,
        reply: oneshot::Sender<Option<f64>>,
    },
}

/// A cheap handle on the swarm task.
#[derive(Clone)]
pub struct Network {
    commands: mpsc::Sender<Command>,
    local: PeerId,
    streams: libp2p_stream::Control,
    in_use: InUse,
    /// Our series, recorded by whoever holds the handle.
    metrics: Arc<crate::metrics::Metrics>,
    /// Every series of this peer, ours and libp2p's, complete once built.
    registry: Arc<prometheus_client::registry::Registry>,
}

/// Peers a blob exchange is under way with, shared by the network's
/// handles and its event loop, which never prunes their connections
/// ([`crate::core::prune`]).
#[derive(Debug, Clone, Default)]
pub struct InUse(Arc<Mutex<HashMap<PeerId, u32>>>);

impl InUse {
    /// Marks `peer` in use until the guard drops.
    pub fn hold(&self, peer: PeerId) -> InUseGuard {
        *self.0.lock().expect("in-use lock").entry(peer).or_default() += 1;
        InUseGuard {
            set: self.clone(),
            peer,
        }
    }

    /// Whether an exchange with `peer` is under way.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.0.lock().expect("in-use lock").contains_key(peer)
    }
}

/// `peer` is in use while this lives.
#[derive(Debug)]
pub struct InUseGuard {
    set: InUse,
    peer: PeerId,
}

impl Drop for InUseGuard {
    fn drop(&mut self) {
        let mut map = self.set.0.lock().expect("in-use lock");
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("local", &self.local)
            .finish()
    }
}

/// The behaviours this peer runs.
#[derive(NetworkBehaviour)]
struct Behaviour {
    /// Caps on connections, so a flood cannot exhaust file descriptors.
    limits: connection_limits::Behaviour,
    /// Learns peers' listen addresses and protocols.
    identify: identify::Behaviour,
    /// Keeps connections alive and measures RTT.
    ping: ping::Behaviour,
    /// The DHT: routing and provider records for storage identifiers.
    kad: kad::Behaviour<ProviderStore>,
    /// Raw streams for blob transfer.
    streams: libp2p_stream::Behaviour,
    /// Supernode adverts.
    gossip: gossipsub::Behaviour,
    /// Asks peers to dial this one back: is it publicly reachable?
    autonat: autonat::Behaviour,
    /// Reserves slots on a supernode's relay, and dials through relays.
    relay_client: relay::client::Behaviour,
    /// The relay this peer runs while it serves as a supernode.
    relay: relay::Behaviour,
    /// Hole punching over relayed connections.
    dcutr: Toggle<dcutr::Behaviour>,
    /// Attach, heartbeat and recommend, between a peer and its supernode.
    sn: request_response::cbor::Behaviour<SnRequest, SnResponse>,
}

/// What the event loop waits on for each running query.
/// A provider lookup under way: who asked, what it gathered, what it cost.
struct ProviderLookup {
    reply: oneshot::Sender<(HashSet<PeerId>, LookupStats)>,
    gathered: HashSet<PeerId>,
    stats: LookupStats,
}

/// What this peer's overlay traffic came to since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes sent and received on all connections.
    pub wire_bytes: u64,
    /// Kademlia requests answered, and sent by finished queries.
    pub dht_requests: u64,
    /// Peers connected now (each by one connection or more).
    pub connected_peers: u32,
    /// Peers in this peer's gossip mesh now.
    pub mesh_peers: u32,
}

/// What one provider lookup cost, by the Kademlia query's own figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// From the start to the first answer that named a provider.
    pub first_found: Option<Duration>,
    /// From the start until the lookup ended.
    pub duration: Duration,
    /// Requests the query sent.
    pub requests: u32,
    /// Of them, answered.
    pub successes: u32,
}

enum PendingQuery {
    Providing(oneshot::Sender<Result<(), NetworkError>>),
    Providers(Box<ProviderLookup>),
    Closest(oneshot::Sender<Vec<PeerId>>),
}

impl Network {
    /// This peer's id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Our Prometheus series, for the IO layers that record them.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The registry of every series, for the `/metrics` endpoint.
    pub fn registry(&self) -> Arc<prometheus_client::registry::Registry> {
        self.registry.clone()
    }

    /// A stream control for opening and accepting blob streams.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Marks `peer` in use, so its connection is not pruned, until the
    /// guard drops: held for every blob exchange.
    pub fn in_use(&self, peer: PeerId) -> InUseGuard {
        self.in_use.hold(peer)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetworkError::Stopped)?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }

    /// Announces in the DHT that this peer holds `key`, and waits for the
    /// announcement to reach the closest peers.
    pub async fn start_providing(&self, key: RecordKey) -> Result<(), NetworkError> {
        self.ask(|reply| Command::StartProviding { key, reply })
            .await?
    }

    /// Stops announcing `key` (others forget it when their records expire).
    pub async fn stop_providing(&self, key: RecordKey) -> Result<(), NetworkError> {
        self.commands
            .send(Command::StopProviding { key })
            .await
            .map_err(|_| NetworkError::Stopped)
    }

    /// Peers that announced `key`, this peer included when it does: every
    /// answer the lookup gets until it finishes (or [`QUERY_TIMEOUT`]), up
    /// to [`MAX_PROVIDERS_GATHERED`]. Records are only a hint: Sybils can
    /// announce what they do not hold, so check with `Has` or the bytes.
    pub async fn providers(&self, key: RecordKey) -> Result<HashSet<PeerId>, NetworkError> {
        Ok(self.lookup_providers(key).await?.0)
    }

    /// [`Network::providers`], with what the lookup cost.
    pub async fn lookup_providers(
        &self,
        key: RecordKey,
    ) -> Result<(HashSet<PeerId>, LookupStats), NetworkError> {
        self.ask(|reply| Command::GetProviders { key, reply }).await
    }

    /// Dials `peer` unless connected or dialing already. A blob stream to
    /// a peer that is not connected needs it: libp2p-stream 0.5 asks for
    /// its own dial through a channel of capacity 0 and drops the request
    /// when another is waiting, so of several streams opened at once to
    /// pruned peers, all but one would wait for a dial that never comes.
    pub async fn connect(&self, peer: PeerId) {
        let _ = self.commands.send(Command::Connect { peer }).await;
    }

    /// What this peer's traffic came to so far.
    pub async fn traffic(&self) -> Result<Traffic, NetworkError> {
        self.ask(|reply| Command::Traffic { reply }).await
    }

    /// What this peer's provider store holds and refused so far.
    pub async fn provider_stats(&self) -> Result<ProviderStats, NetworkError> {
        self.ask(|reply| Command::ProviderStats { reply }).await
    }

    /// The remote provider records this peer's store holds for `key` (no
    /// lookup; this peer's own record apart).
    pub async fn held_providers(
        &self,
        key: RecordKey,
    ) -> Result<Vec<kad::ProviderRecord>, NetworkError> {
        self.ask(|reply| Command::HeldProviders { key, reply })
            .await
    }

    /// The peers closest to `key` in the DHT, nearest first, not counting
    /// this peer.
    pub async fn closest_peers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetworkError> {
        self.ask(|reply| Command::GetClosestPeers { key, reply })
            .await
    }

    /// The server peers in this peer's routing table.
    pub async fn routing_peers(&self) -> Result<Vec<PeerId>, NetworkError> {
        self.ask(|reply| Command::RoutingPeers { reply }).await
    }

    /// The round-trip time last measured to each connected peer.
    pub async fn rtts(&self) -> Result<HashMap<PeerId, Duration>, NetworkError> {
        self.ask(|reply| Command::Rtts { reply }).await
    }

    /// The addresses this peer listens on, each with `/p2p/<id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// The supernode election as this peer sees it; `None` on a one-job
    /// client peer, which takes no part.
    pub async fn supernodes(&self) -> Result<Option<SupernodeView>, NetworkError> {
        self.ask(|reply| Command::Supernodes { reply }).await
    }

    /// Asks this peer's supernode for up to `count` good storage peers,
    /// none of them in `exclude`.
    pub async fn recommend(
        &self,
        count: u16,
        exclude: Vec<PeerId>,
    ) -> Result<Vec<PeerId>, NetworkError> {
        self.ask(|reply| Command::Recommend {
            count,
            exclude,
            reply,
        })
        .await?
    }

    /// `peer`'s gossipsub score as this peer keeps it (`None` if it has no
    /// score: not a gossip peer, or scoring is off).
    pub async fn gossip_score(&self, peer: PeerId) -> Result<Option<f64>, NetworkError> {
        self.ask(|reply| Command::GossipScore { peer, reply }).await
    }

    /// Notes that a store or fetch with `peer` worked (`ok`) or failed; the
    /// next heartbeat reports it to this peer's supernode.
    pub async fn observe(&self, peer: PeerId, ok: bool) {
        let _ = self.commands.send(Command::Observe { peer, ok }).await;
    }
}

/// Whether an address goes through a relay.
fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    pending: HashMap<QueryId, PendingQuery>,
    listen_addrs: Vec<Multiaddr>,
    elections: Option<sn::Elections>,
    /// Addresses peers are reachable at: the one this peer dialed, or the
    /// first direct listen address they reported. At most
    /// `max_tracked_peers`; a peer's entry goes with its last connection.
    peer_addrs: HashMap<PeerId, Multiaddr>,
    /// The cap on `peer_addrs`.
    max_tracked_peers: usize,
    /// Last ping round trip to each connected peer.
    rtts: HashMap<PeerId, Duration>,
    /// Where to rejoin when this peer has no connection left.
    bootstrap: Vec<Multiaddr>,
    /// Every series of this peer; the bandwidth counters of every
    /// connection among them.
    registry: Arc<prometheus_client::registry::Registry>,
    /// Our series.
    metrics: Arc<crate::metrics::Metrics>,
    /// libp2p's per-behaviour series, when this peer serves its metrics.
    libp2p_metrics: Option<libp2p::metrics::Metrics>,
    /// Kademlia requests answered, and sent by finished queries.
    dht_requests: u64,
    /// Peers with a blob exchange under way.
    in_use: InUse,
    /// When each connected peer connected or was last used.
    last_active: HashMap<PeerId, std::time::Instant>,
    /// Connected peers kept when idle.
    target_peers: usize,
}
