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
//! The supernode side of the loop (adverts, dial checks, the election,
//! attaching and serving) lives in [`sn`].

mod sn;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::kad::store::{MemoryStore, RecordStore};
use libp2p::kad::{self, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, connection_limits, dcutr, gossipsub,
    identify, identity, noise, ping, relay, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::supernode::advert::{Advert, Reachability};
use crate::supernode::attach::{SN_PROTOCOL, SnRequest, SnResponse};
use crate::supernode::election::ElectionConfig;

/// Kademlia protocol name of the vmail overlay.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/vmail/kad/1.0.0");
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/vmail/id/1.0.0";
/// How long one DHT query may run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// An idle connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
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
    /// Server or client.
    pub role: Role,
    /// Adverts and election; `None` for a one-job client peer.
    pub supernode: Option<SupernodeSetup>,
    /// Relay reservations this peer grants while it serves as a
    /// supernode; 0 refuses all.
    pub relay_slots: usize,
    /// Try DCUtR hole punching to turn relayed connections direct.
    pub hole_punching: bool,
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
        reply: oneshot::Sender<HashSet<PeerId>>,
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
}

/// A cheap handle on the swarm task.
#[derive(Clone)]
pub struct Network {
    commands: mpsc::Sender<Command>,
    local: PeerId,
    streams: libp2p_stream::Control,
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
    kad: kad::Behaviour<MemoryStore>,
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
enum PendingQuery {
    Providing(oneshot::Sender<Result<(), NetworkError>>),
    Providers(oneshot::Sender<HashSet<PeerId>>),
    Closest(oneshot::Sender<Vec<PeerId>>),
}

impl Network {
    /// Builds the swarm, starts listening and joining, and spawns the event
    /// loop. The loop ends when `shutdown` is cancelled.
    pub fn start(
        key: identity::Keypair,
        config: &NetworkConfig,
        shutdown: CancellationToken,
    ) -> Result<(Network, tokio::task::JoinHandle<()>), NetworkError> {
        let build = |e: &dyn std::fmt::Display| NetworkError::Build(e.to_string());
        let local = key.public().to_peer_id();
        let advert_key = key.clone();
        let role = config.role;
        let relay_slots = config.relay_slots;
        let hole_punching = config.hole_punching;
        let sn_timeout = config
            .supernode
            .as_ref()
            .map_or(Duration::from_secs(10), |s| {
                crate::supernode::attach::patience(s.heartbeat)
            });
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_pending_incoming(Some(config.max_pending_incoming));
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build(&e))?
            .with_quic()
            .with_dns()
            .map_err(|e| build(&e))?
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| build(&e))?
            .with_behaviour(|key, relay_client| {
                let local = key.public().to_peer_id();
                let mut kad_config = kad::Config::new(KAD_PROTOCOL);
                kad_config.set_query_timeout(QUERY_TIMEOUT);
                // vmail stores no DHT values; provider records are checked
                // and stored by the loop, other records are dropped.
                kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
                let store = MemoryStore::with_config(
                    local,
                    kad::store::MemoryStoreConfig {
                        max_records: 0,
                        max_value_bytes: 0,
                        max_providers_per_key: 20,
                        max_provided_keys: 1_000_000,
                    },
                );
                let mut kad = kad::Behaviour::with_config(local, store, kad_config);
                kad.set_mode(Some(match role {
                    Role::Server => kad::Mode::Server,
                    Role::Client => kad::Mode::Client,
                }));
                let gossip_config = gossipsub::ConfigBuilder::default()
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .validate_messages()
                    // A frame carries several messages and control data
                    // (IHAVE lists); one advert's size is checked apart.
                    .max_transmit_size(GOSSIP_MAX_FRAME)
                    .build()
                    .map_err(|e| e.to_string())?;
                let gossip = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?;
                let mut relay = relay::Behaviour::new(local, relay_config(relay_slots));
                // Off until this peer is elected (see `sn`).
                relay.set_status(Some(relay::Status::Disable));
                let sn_codec = request_response::cbor::codec::Codec::default()
                    .set_request_size_maximum(SN_MAX_MESSAGE)
                    .set_response_size_maximum(SN_MAX_MESSAGE);
                Ok(Behaviour {
                    limits: connection_limits::Behaviour::new(limits),
                    identify: identify::Behaviour::new(
                        identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                            .with_agent_version(format!("vmail/{}", env!("CARGO_PKG_VERSION")))
                            // A relayed address must reach peers at once.
                            .with_push_listen_addr_updates(true),
                    ),
                    ping: ping::Behaviour::new(
                        ping::Config::new()
                            .with_interval(PING_INTERVAL)
                            .with_timeout(PING_TIMEOUT),
                    ),
                    kad,
                    streams: libp2p_stream::Behaviour::new(),
                    gossip,
                    autonat: autonat::Behaviour::new(
                        local,
                        autonat::Config {
                            // Private and loopback networks are real
                            // deployments here (tests, the compose testnet).
                            only_global_ips: false,
                            boot_delay: Duration::from_secs(2),
                            retry_interval: Duration::from_secs(20),
                            refresh_interval: Duration::from_secs(5 * 60),
                            ..autonat::Config::default()
                        },
                    ),
                    relay_client,
                    relay,
                    dcutr: hole_punching.then(|| dcutr::Behaviour::new(local)).into(),
                    sn: request_response::Behaviour::with_codec(
                        sn_codec,
                        [(SN_PROTOCOL, ProtocolSupport::Full)],
                        request_response::Config::default().with_request_timeout(sn_timeout),
                    ),
                })
            })
            .map_err(|e| build(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
            .build();
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetworkError::Listen {
                    addr: addr.clone(),
                    why: e.to_string(),
                })?;
        }
        let bootstrap: Vec<Multiaddr> = config
            .bootstrap
            .iter()
            .filter(|a| !matches!(a.iter().last(), Some(Protocol::P2p(p)) if p == local))
            .cloned()
            .collect();
        for addr in &bootstrap {
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
        }
        // Without a known peer this fails; Kademlia then bootstraps by
        // itself once identify has put the first peer in the routing table.
        let _ = swarm.behaviour_mut().kad.bootstrap();
        dial_all(&mut swarm, &bootstrap);
        let streams = swarm.behaviour().streams.new_control();
        let elections = match &config.supernode {
            Some(setup) => {
                let topic = gossipsub::IdentTopic::new(ADVERT_TOPIC);
                swarm
                    .behaviour_mut()
                    .gossip
                    .subscribe(&topic)
                    .map_err(|e| build(&e))?;
                Some(sn::Elections::new(setup.clone(), advert_key, topic))
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let event_loop = EventLoop {
            swarm,
            commands: rx,
            pending: HashMap::new(),
            listen_addrs: Vec::new(),
            elections,
            peer_addrs: HashMap::new(),
            rtts: HashMap::new(),
            bootstrap,
        };
        let task = tokio::spawn(event_loop.run(shutdown));
        Ok((
            Network {
                commands: tx,
                local,
                streams,
            },
            task,
        ))
    }

    /// This peer's id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// A stream control for opening and accepting blob streams.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
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

    /// Peers that announced `key`; returns as soon as some are found.
    pub async fn providers(&self, key: RecordKey) -> Result<HashSet<PeerId>, NetworkError> {
        self.ask(|reply| Command::GetProviders { key, reply }).await
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

    /// Notes that a store or fetch with `peer` worked (`ok`) or failed; the
    /// next heartbeat reports it to this peer's supernode.
    pub async fn observe(&self, peer: PeerId, ok: bool) {
        let _ = self.commands.send(Command::Observe { peer, ok }).await;
    }
}

/// The relay server's limits: `slots` reservations, circuits long and
/// large enough for a voicemail, and rate limits that stop one peer from
/// churning reservations.
fn relay_config(slots: usize) -> relay::Config {
    relay::Config {
        max_reservations: slots,
        max_circuit_bytes: RELAY_CIRCUIT_BYTES,
        max_circuit_duration: RELAY_CIRCUIT_DURATION,
        max_circuits: 64,
        max_circuits_per_peer: 8,
        ..relay::Config::default()
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
    /// first direct listen address they reported.
    peer_addrs: HashMap<PeerId, Multiaddr>,
    /// Last ping round trip to each connected peer.
    rtts: HashMap<PeerId, Duration>,
    /// Where to rejoin when this peer has no connection left.
    bootstrap: Vec<Multiaddr>,
}

/// How often a peer with no connections dials its bootstrap peers again
/// (they were not up yet, or its network was cut and has come back).
const REJOIN_PERIOD: Duration = Duration::from_secs(5);

fn dial_all(swarm: &mut Swarm<Behaviour>, addrs: &[Multiaddr]) {
    for addr in addrs {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
        }
    }
}

impl EventLoop {
    /// Dials the bootstrap peers again if no connection is left.
    fn rejoin_if_alone(&mut self) {
        if self.swarm.connected_peers().next().is_none() && !self.bootstrap.is_empty() {
            tracing::info!("no connections: dialing the bootstrap peers again");
            dial_all(&mut self.swarm, &self.bootstrap);
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let every = |period: Duration| {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        let setup = self.elections.as_ref().map(|e| e.setup.clone());
        let hour = Duration::from_secs(3600);
        let mut adverts = every(setup.as_ref().map_or(hour, |s| s.interval));
        let mut heartbeats = every(setup.as_ref().map_or(hour, |s| s.heartbeat));
        let mut elections = every(sn::ELECTION_PERIOD);
        let mut rejoin = every(REJOIN_PERIOD);
        rejoin.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = rejoin.tick() => self.rejoin_if_alone(),
                _ = adverts.tick(), if setup.is_some() => self.advertise(),
                _ = elections.tick(), if setup.is_some() => self.reelect_if_changed(),
                _ = heartbeats.tick(), if setup.is_some() => self.on_heartbeat_tick(),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
            }
        }
        tracing::debug!(peer = %self.swarm.local_peer_id(), "network task stopped");
    }

    fn on_command(&mut self, command: Command) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        match command {
            Command::StartProviding { key, reply } => match kad.start_providing(key) {
                Ok(id) => {
                    self.pending.insert(id, PendingQuery::Providing(reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(NetworkError::Announce(e.to_string())));
                }
            },
            Command::StopProviding { key } => kad.stop_providing(&key),
            Command::GetProviders { key, reply } => {
                let id = kad.get_providers(key);
                self.pending.insert(id, PendingQuery::Providers(reply));
            }
            Command::GetClosestPeers { key, reply } => {
                let id = kad.get_closest_peers(key);
                self.pending.insert(id, PendingQuery::Closest(reply));
            }
            Command::RoutingPeers { reply } => {
                let peers = kad
                    .kbuckets()
                    .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Rtts { reply } => {
                let _ = reply.send(self.rtts.clone());
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::Supernodes { reply } => {
                let _ = reply.send(self.elections.as_ref().map(sn::Elections::view));
            }
            Command::Recommend {
                count,
                exclude,
                reply,
            } => self.recommend(count, exclude, reply),
            Command::Observe { peer, ok } => {
                if let Some(e) = self.elections.as_mut() {
                    e.observe(peer, ok);
                }
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let local = *self.swarm.local_peer_id();
                tracing::info!(%address, "listening");
                // A peer declared public is reachable where it listens: say
                // so, so that its relay and its provider records carry
                // those addresses (AutoNAT confirms them for the others).
                if self
                    .elections
                    .as_ref()
                    .is_some_and(|e| e.setup.public == Some(true))
                    && !is_relayed(&address)
                {
                    self.swarm.add_external_address(address.clone());
                }
                let full = match address.iter().last() {
                    Some(Protocol::P2p(_)) => address,
                    _ => address.with(Protocol::P2p(local)),
                };
                self.listen_addrs.push(full);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs
                    .retain(|a| !a.iter().zip(address.iter()).all(|(x, y)| x == y));
            }
            // Only DHT servers go into the routing table: a one-job client
            // peer must never be picked as a holder.
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&KAD_PROTOCOL) => {
                if let Some(direct) = info.listen_addrs.iter().find(|a| !is_relayed(a)) {
                    self.peer_addrs
                        .entry(peer_id)
                        .or_insert_with(|| direct.clone());
                }
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_advert(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Sn(event)) => self.on_sn_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.rtts.insert(peer, rtt);
            }
            // A connection whose far end vanished without closing it (a
            // cut cable, a frozen host) would otherwise stay open for
            // ever, and every new stream to that peer would wait on it.
            // libp2p reports the second failure in a row.
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(failure),
            })) if !matches!(failure, ping::Failure::Unsupported) => {
                tracing::info!(%peer, "ping failed twice ({failure}): closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => {
                tracing::info!(status = ?new, "AutoNAT status changed");
                if let Some(e) = self.elections.as_mut() {
                    e.nat_public = new.is_public();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => self.on_reservation(relay_peer_id),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => {
                tracing::debug!(?event, "relay");
                if let (relay::Event::CircuitReqAccepted { .. }, Some(e)) =
                    (&event, self.elections.as_mut())
                {
                    e.circuits += 1;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => {
                tracing::debug!(peer = %event.remote_peer_id, result = ?event.result, "hole punch");
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => self.on_listener_closed(listener_id, reason.err().map(|e| e.to_string())),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                if let libp2p::core::ConnectedPoint::Dialer { address, .. } = &endpoint
                    && !is_relayed(address)
                {
                    self.peer_addrs.insert(peer_id, address.clone());
                }
                self.on_connected(peer_id, connection_id, &endpoint);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.rtts.remove(&peer_id);
                self.on_disconnected(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                tracing::debug!(?peer_id, "outgoing connection failed: {error}");
                self.on_dial_failed(connection_id, &error);
            }
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .add_provider(record)
                {
                    tracing::debug!("provider record dropped: {e}");
                }
            }
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                QueryResult::StartProviding(r) => {
                    if let Some(PendingQuery::Providing(reply)) = self.pending.remove(&id) {
                        let _ = reply.send(
                            r.map(|_| ())
                                .map_err(|e| NetworkError::Announce(e.to_string())),
                        );
                    }
                }
                QueryResult::GetProviders(r) => {
                    let found = match r {
                        Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => providers,
                        _ => HashSet::new(),
                    };
                    if !found.is_empty() || step.last {
                        if let Some(PendingQuery::Providers(reply)) = self.pending.remove(&id) {
                            let _ = reply.send(found);
                        }
                        if !step.last
                            && let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id)
                        {
                            q.finish();
                        }
                    }
                }
                QueryResult::GetClosestPeers(r) => {
                    if let Some(PendingQuery::Closest(reply)) = self.pending.remove(&id) {
                        let peers = match r {
                            Ok(ok) => ok.peers,
                            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                        };
                        let _ = reply.send(peers.into_iter().map(|p| p.peer_id).collect());
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
}
