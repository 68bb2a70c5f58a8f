//! The peer's libp2p swarm and the one task that owns it.
//!
//! The rest of the program holds a [`Network`] handle and sends the event
//! loop typed [`Command`]s, each with a `oneshot` for the answer (the shape
//! of rust-libp2p's file-sharing example). Blob transfers do not pass
//! through the loop: they run on libp2p streams opened with the handle's
//! [`libp2p_stream::Control`], so a 16 MiB upload never stalls the DHT.
//!
//! Transports: TCP and QUIC, with Noise and Yamux on TCP. Behaviours:
//! connection limits, identify, ping, Kademlia in server mode on
//! [`KAD_PROTOCOL`] (our own name, so it never joins another network's
//! DHT), the stream behaviour for [`crate::transfer`], and gossipsub on
//! [`ADVERT_TOPIC`]: server peers publish signed supernode adverts
//! ([`crate::advert`]) and run the election ([`crate::election`]) over the
//! ones that pass validation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::store::{MemoryStore, RecordStore};
use libp2p::kad::{self, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, gossipsub, identify, identity,
    noise, ping, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::advert::{ADVERT_VERSION, Advert, AdvertBook, AdvertError, Reachability};
use crate::election::{self, ElectionConfig};

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

/// What a server peer needs to advertise itself and take part in the
/// supernode election.
#[derive(Clone)]
pub struct SupernodeSetup {
    /// Reachability, cores, memory and bandwidth to advertise.
    pub reachability: Reachability,
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
}

impl std::fmt::Debug for SupernodeSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupernodeSetup")
            .field("reachability", &self.reachability)
            .field("election", &self.election)
            .finish_non_exhaustive()
    }
}

/// This peer's view of the supernode election.
#[derive(Debug, Clone)]
pub struct SupernodeView {
    /// The elected supernodes, sorted.
    pub supernodes: Vec<PeerId>,
    /// The adverts held, this peer's own included.
    pub adverts: Vec<Advert>,
    /// Adverts refused so far (forged, stale, malformed, out of range).
    pub rejected: u64,
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
    /// Peers to join through; each must end in `/p2p/<peer id>`.
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
    /// A bootstrap address has no `/p2p/` part.
    #[error("bootstrap address {0} must end in /p2p/<peer id>")]
    BootstrapWithoutPeerId(Multiaddr),
    /// The event loop has stopped.
    #[error("the peer's network task has stopped")]
    Stopped,
    /// Announcing a provider record failed.
    #[error("could not announce the object in the DHT: {0}")]
    Announce(String),
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
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Supernodes {
        reply: oneshot::Sender<Option<SupernodeView>>,
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
            .with_behaviour(|key| {
                let mut kad_config = kad::Config::new(KAD_PROTOCOL);
                kad_config.set_query_timeout(QUERY_TIMEOUT);
                // vmail stores no DHT values; provider records are checked
                // and stored by the loop, other records are dropped.
                kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
                let store = MemoryStore::with_config(
                    key.public().to_peer_id(),
                    kad::store::MemoryStoreConfig {
                        max_records: 0,
                        max_value_bytes: 0,
                        max_providers_per_key: 20,
                        max_provided_keys: 1_000_000,
                    },
                );
                let mut kad =
                    kad::Behaviour::with_config(key.public().to_peer_id(), store, kad_config);
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
                Ok(Behaviour {
                    limits: connection_limits::Behaviour::new(limits),
                    identify: identify::Behaviour::new(
                        identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                            .with_agent_version(format!("vmail/{}", env!("CARGO_PKG_VERSION"))),
                    ),
                    ping: ping::Behaviour::default(),
                    kad,
                    streams: libp2p_stream::Behaviour::new(),
                    gossip,
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
        for addr in &config.bootstrap {
            let Some(Protocol::P2p(peer)) = addr.iter().last() else {
                return Err(NetworkError::BootstrapWithoutPeerId(addr.clone()));
            };
            if peer == local {
                continue;
            }
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
            }
        }
        if !config.bootstrap.is_empty() {
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
        let streams = swarm.behaviour().streams.new_control();
        let elections = match &config.supernode {
            Some(setup) => {
                let topic = gossipsub::IdentTopic::new(ADVERT_TOPIC);
                swarm
                    .behaviour_mut()
                    .gossip
                    .subscribe(&topic)
                    .map_err(|e| build(&e))?;
                Some(Elections {
                    setup: setup.clone(),
                    key: advert_key,
                    topic,
                    book: AdvertBook::default(),
                    // Milliseconds: still growing after a restart.
                    seq: unix_now_millis(),
                    started: Instant::now(),
                    supernodes: Vec::new(),
                    rejected: 0,
                })
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

    /// The addresses this peer listens on, each with `/p2p/<id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// The supernode election as this peer sees it; `None` on a one-job
    /// client peer, which takes no part.
    pub async fn supernodes(&self) -> Result<Option<SupernodeView>, NetworkError> {
        self.ask(|reply| Command::Supernodes { reply }).await
    }
}

fn unix_now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The advert and election state of a server peer.
struct Elections {
    setup: SupernodeSetup,
    key: identity::Keypair,
    topic: gossipsub::IdentTopic,
    book: AdvertBook,
    seq: u64,
    started: Instant,
    supernodes: Vec<PeerId>,
    rejected: u64,
}

impl Elections {
    /// This peer's advert as of `now`.
    fn own_advert(&mut self, local: PeerId, now: u64) -> Advert {
        self.seq += 1;
        Advert {
            version: ADVERT_VERSION,
            peer_id: local,
            seq: self.seq,
            issued_at: now,
            reachability: self.setup.reachability,
            cpu_cores: self.setup.cpu_cores,
            memory_mib: self.setup.memory_mib,
            bandwidth_kbps: self.setup.bandwidth_kbps,
            uptime_secs: self.started.elapsed().as_secs().min(now),
            load: 0,
            free_storage: (self.setup.free_storage)().min(crate::advert::limits::FREE_STORAGE),
            serving: self.supernodes.contains(&local),
        }
    }

    fn elect(&mut self, now: u64) {
        self.book.expire(now);
        let elected = election::elect(self.book.adverts(), now, &self.setup.election);
        if elected != self.supernodes {
            tracing::info!(supernodes = ?elected, "supernode set changed");
            self.supernodes = elected;
        }
    }
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    pending: HashMap<QueryId, PendingQuery>,
    listen_addrs: Vec<Multiaddr>,
    elections: Option<Elections>,
}

impl EventLoop {
    async fn run(mut self, shutdown: CancellationToken) {
        let period = self
            .elections
            .as_ref()
            .map_or(Duration::from_secs(3600), |e| e.setup.interval);
        let mut adverts = tokio::time::interval(period);
        adverts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = adverts.tick(), if self.elections.is_some() => self.advertise(),
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
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::Supernodes { reply } => {
                let _ = reply.send(self.elections.as_ref().map(|e| SupernodeView {
                    supernodes: e.supernodes.clone(),
                    adverts: e.book.adverts().cloned().collect(),
                    rejected: e.rejected,
                }));
            }
        }
    }

    /// Publishes this peer's advert, keeps it in its own book, and runs
    /// the election.
    fn advertise(&mut self) {
        let local = *self.swarm.local_peer_id();
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        let now = vmail_proto::unix_now();
        let own = e.own_advert(local, now);
        let bytes = own.sign(&e.key);
        // Its own advert is newer than any it held: seq only grows.
        let _ = e.book.insert(own);
        e.elect(now);
        let topic = e.topic.clone();
        if let Err(err) = self.swarm.behaviour_mut().gossip.publish(topic, bytes) {
            // No subscribed peer yet, most often: the next tick retries.
            tracing::debug!("advert not published: {err}");
        }
    }

    /// Checks an advert heard on the topic, tells gossipsub whether to pass
    /// it on (a refused one also costs its sender score), and re-elects.
    fn on_advert(&mut self, from: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let Some(e) = self.elections.as_mut() else {
            return;
        };
        let now = vmail_proto::unix_now();
        let verdict = match Advert::verify(&message.data, now) {
            // Only the advertiser may publish its advert.
            Ok(a) if message.source != Some(a.peer_id) => Err(format!(
                "advert for {} published by {:?}",
                a.peer_id, message.source
            )),
            Ok(a) => match e.book.insert(a) {
                Ok(_) => Ok(gossipsub::MessageAcceptance::Accept),
                // Heard again by another route: not the sender's fault.
                Err(AdvertError::Replay { .. }) => Ok(gossipsub::MessageAcceptance::Ignore),
                Err(err) => Err(err.to_string()),
            },
            Err(err) => Err(err.to_string()),
        };
        let acceptance = verdict.unwrap_or_else(|why| {
            e.rejected += 1;
            tracing::debug!(%from, "advert refused: {why}");
            gossipsub::MessageAcceptance::Reject
        });
        if acceptance == gossipsub::MessageAcceptance::Accept {
            e.elect(now);
        }
        self.swarm
            .behaviour_mut()
            .gossip
            .report_message_validation_result(&id, &from, acceptance);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let local = *self.swarm.local_peer_id();
                tracing::info!(%address, "listening");
                self.listen_addrs.push(address.with(Protocol::P2p(local)));
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
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, "outgoing connection failed: {error}");
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
