//! The swarm's construction and the one task that owns it: transports,
//! behaviours and limits, then the loop that takes [`Command`]s from the
//! [`Network`] handles and the swarm's events, keeps pending queries, and
//! rejoins through the bootstrap peers when this peer is left alone.
//!
//! Over 600 lines since issue 18 added connection pruning and the traffic
//! figures; splitting the swarm's construction from the loop is owed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::kad::{self, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{
    Multiaddr, Swarm, autonat, connection_limits, dcutr, gossipsub, identify, identity, noise,
    ping, relay, tcp, yamux,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::prune;
use crate::supernode::attach::SN_PROTOCOL;
use crate::supernode::budget::{DEFAULT_MAX_TRACKED_PEERS, RelayGate, evict_least};

use super::providers::ProviderStore;
use super::{
    ADVERT_TOPIC, Behaviour, BehaviourEvent, COMMAND_QUEUE, Command, EventLoop, GOSSIP_MAX_FRAME,
    IDENTIFY_PROTOCOL, IDLE_TIMEOUT, InUse, KAD_PROTOCOL, LookupStats, MAX_PROVIDERS_GATHERED,
    Network, NetworkConfig, NetworkError, PING_INTERVAL, PING_TIMEOUT, PendingQuery,
    ProviderLookup, QUERY_TIMEOUT, RELAY_CIRCUIT_BYTES, RELAY_CIRCUIT_DURATION, Role,
    SN_MAX_MESSAGE, Traffic, is_relayed, scoring, sn, telemetry,
};

impl Network {
    /// Builds the swarm, starts listening and joining, and spawns the event
    /// loop. The loop ends when `shutdown` is cancelled. libp2p's series
    /// join `registry` (which holds `metrics`), which is complete after.
    pub fn start(
        key: identity::Keypair,
        config: &NetworkConfig,
        mut registry: prometheus_client::registry::Registry,
        metrics: Arc<crate::metrics::Metrics>,
        shutdown: CancellationToken,
    ) -> Result<(Network, tokio::task::JoinHandle<()>), NetworkError> {
        let build = |e: &dyn std::fmt::Display| NetworkError::Build(e.to_string());
        let local = key.public().to_peer_id();
        let advert_key = key.clone();
        let role = config.role;
        let relay_slots = config.relay_slots;
        // Who may reserve on the relay: peers attached to this supernode,
        // a share per IP. The event loop keeps it; the relay asks it.
        let relay_gate = Arc::new(Mutex::new(RelayGate::new(config.relay_slots_per_ip)));
        let gate = relay_gate.clone();
        let hole_punching = config.hole_punching;
        let provider_limits = config.providers;
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
        // Bytes on the wire, counted per connection by libp2p-metrics.
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
            .with_bandwidth_metrics(&mut registry)
            .with_behaviour(|key, relay_client| {
                let local = key.public().to_peer_id();
                let mut kad_config = kad::Config::new(KAD_PROTOCOL);
                kad_config.set_query_timeout(QUERY_TIMEOUT);
                // vmail stores no DHT values; provider records are checked
                // and stored by the loop, other records are dropped.
                kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
                let store = ProviderStore::new(local, provider_limits);
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
                let mut gossip = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?;
                // A rejected advert costs its sender (see `scoring`).
                gossip.with_peer_score(
                    scoring::score_params(gossipsub::IdentTopic::new(ADVERT_TOPIC).hash()),
                    scoring::thresholds(),
                )?;
                let mut relay = relay::Behaviour::new(local, relay_config(relay_slots, gate));
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
                Some(sn::Elections::new(
                    setup.clone(),
                    advert_key,
                    topic,
                    relay_gate,
                ))
            }
            None => None,
        };
        let libp2p_metrics = config
            .libp2p_metrics
            .then(|| libp2p::metrics::Metrics::new(&mut registry));
        let registry = Arc::new(registry);
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let in_use = InUse::default();
        let event_loop = EventLoop {
            swarm,
            commands: rx,
            pending: HashMap::new(),
            listen_addrs: Vec::new(),
            elections,
            registry: registry.clone(),
            metrics: metrics.clone(),
            libp2p_metrics,
            dht_requests: 0,
            in_use: in_use.clone(),
            last_active: HashMap::new(),
            target_peers: config.target_peers,
            peer_addrs: HashMap::new(),
            max_tracked_peers: config
                .supernode
                .as_ref()
                .map_or(DEFAULT_MAX_TRACKED_PEERS, |s| s.max_tracked_peers)
                .max(1),
            rtts: HashMap::new(),
            bootstrap,
        };
        let task = tokio::spawn(event_loop.run(shutdown));
        Ok((
            Network {
                commands: tx,
                local,
                streams,
                in_use,
                metrics,
                registry,
            },
            task,
        ))
    }
}

/// Reservations one peer may hold on this relay at a time.
const RELAY_RESERVATIONS_PER_PEER: usize = 2;

/// The relay server's limits: `slots` reservations, only for peers the
/// `gate` admits (attached to this supernode, a share per IP), circuits
/// long and large enough for a voicemail (they reach only attached peers,
/// who alone hold reservations), and libp2p's default rate limits on
/// reservations and on circuit sources per peer and per IP.
fn relay_config(slots: usize, gate: Arc<Mutex<RelayGate>>) -> relay::Config {
    let mut config = relay::Config {
        max_reservations: slots,
        max_reservations_per_peer: RELAY_RESERVATIONS_PER_PEER,
        max_circuit_bytes: RELAY_CIRCUIT_BYTES,
        max_circuit_duration: RELAY_CIRCUIT_DURATION,
        max_circuits: 64,
        max_circuits_per_peer: 8,
        ..relay::Config::default()
    };
    // First, so that a refused peer does not use up its rate limit.
    config.reservation_rate_limiters.insert(
        0,
        Box::new(move |peer, addr: &Multiaddr, _now| {
            match gate.lock().expect("relay gate").admit(peer, addr) {
                Ok(()) => true,
                Err(why) => {
                    tracing::info!(%peer, %addr, "relay reservation refused: {why}");
                    false
                }
            }
        }),
    );
    config
}

/// How often idle connections beyond `target_peers` are pruned.
const PRUNE_PERIOD: Duration = Duration::from_secs(15);

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
    /// Keeps `addr` as `peer`'s address; when `max_tracked_peers` are
    /// kept, first forgets one of a peer no longer connected (or, failing
    /// that, any other).
    fn remember_addr(&mut self, peer: libp2p::PeerId, addr: Multiaddr) {
        if !self.peer_addrs.contains_key(&peer) && self.peer_addrs.len() >= self.max_tracked_peers {
            let swarm = &self.swarm;
            evict_least(&mut self.peer_addrs, |p, _| swarm.is_connected(p));
        }
        self.peer_addrs.insert(peer, addr);
    }

    /// Disconnects the longest idle peers beyond `target_peers`: never a
    /// gossip mesh peer, this peer's supernode or attached peers, or one a
    /// blob exchange is under way with ([`prune::to_close`]).
    fn prune_connections(&mut self) {
        let connected: Vec<libp2p::PeerId> = self.swarm.connected_peers().copied().collect();
        if connected.len() <= self.target_peers {
            return;
        }
        let mut protected: HashSet<libp2p::PeerId> = self
            .swarm
            .behaviour()
            .gossip
            .all_mesh_peers()
            .copied()
            .collect();
        if let Some(e) = &self.elections {
            protected.extend(e.protected_peers());
        }
        let now = std::time::Instant::now();
        let peers: Vec<prune::Connected> = connected
            .into_iter()
            .map(|peer| prune::Connected {
                peer,
                protected: protected.contains(&peer) || self.in_use.contains(&peer),
                last_active: self.last_active.get(&peer).copied().unwrap_or(now),
            })
            .collect();
        let close = prune::to_close(&peers, self.target_peers, now, IDLE_TIMEOUT);
        if !close.is_empty() {
            tracing::debug!(
                closed = close.len(),
                kept = peers.len() - close.len(),
                "pruned idle connections"
            );
        }
        for peer in close {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

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
        let mut prune = every(PRUNE_PERIOD);
        prune.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = rejoin.tick() => self.rejoin_if_alone(),
                _ = prune.tick() => self.prune_connections(),
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
                let lookup = ProviderLookup {
                    reply,
                    gathered: HashSet::new(),
                    stats: LookupStats::default(),
                };
                self.pending
                    .insert(id, PendingQuery::Providers(Box::new(lookup)));
            }
            Command::Connect { peer } => {
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                    .build();
                // Connected or dialing already is no error; a failure shows
                // in the stream that waits for the connection.
                let _ = self.swarm.dial(opts);
            }
            Command::Traffic { reply } => {
                let _ = reply.send(Traffic {
                    wire_bytes: telemetry::wire_bytes(&self.registry),
                    dht_requests: self.dht_requests,
                    connected_peers: self.swarm.connected_peers().count() as u32,
                    mesh_peers: self.swarm.behaviour().gossip.all_mesh_peers().count() as u32,
                });
            }
            Command::ProviderStats { reply } => {
                let _ = reply.send(kad.store_mut().stats());
            }
            Command::HeldProviders { key, reply } => {
                let _ = reply.send(kad.store_mut().remote_providers(&key));
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
                let view = self.elections.as_ref().map(|e| {
                    let mut v = e.view();
                    v.tables.peer_addrs = self.peer_addrs.len();
                    v
                });
                let _ = reply.send(view);
            }
            Command::Recommend {
                count,
                exclude,
                reply,
            } => self.recommend(count, exclude, reply),
            Command::GossipScore { peer, reply } => {
                let _ = reply.send(self.swarm.behaviour().gossip.peer_score(&peer));
            }
            Command::Observe { peer, ok } => {
                if let Some(e) = self.elections.as_mut() {
                    e.observe(peer, ok);
                }
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(m) = &self.libp2p_metrics {
            telemetry::record(m, &event);
        }
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
                if let Some(direct) = info.listen_addrs.iter().find(|a| !is_relayed(a))
                    && !self.peer_addrs.contains_key(&peer_id)
                {
                    self.remember_addr(peer_id, direct.clone());
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
            SwarmEvent::Behaviour(BehaviourEvent::Sn(event)) => {
                if let request_response::Event::Message { peer, .. } = &event {
                    self.last_active.insert(*peer, std::time::Instant::now());
                }
                self.on_sn_event(event)
            }
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
                    self.remember_addr(peer_id, address.clone());
                }
                self.last_active.insert(peer_id, std::time::Instant::now());
                self.on_connected(peer_id, connection_id, &endpoint);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.rtts.remove(&peer_id);
                self.peer_addrs.remove(&peer_id);
                self.last_active.remove(&peer_id);
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
        match &event {
            kad::Event::InboundRequest { .. } => self.dht_requests += 1,
            kad::Event::OutboundQueryProgressed { step, stats, .. } if step.last => {
                self.dht_requests += u64::from(stats.num_requests());
            }
            _ => {}
        }
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => self.on_provider_record(record),
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => match result {
                QueryResult::StartProviding(r) => {
                    if let Some(PendingQuery::Providing(reply)) = self.pending.remove(&id) {
                        let _ = reply.send(
                            r.map(|_| ())
                                .map_err(|e| NetworkError::Announce(e.to_string())),
                        );
                    }
                }
                // Every answer counts until the lookup ends: the first one
                // (even this peer's own store) may hold only Sybils.
                QueryResult::GetProviders(r) => {
                    let Some(PendingQuery::Providers(lookup)) = self.pending.get_mut(&id) else {
                        return;
                    };
                    let elapsed = stats.duration().unwrap_or_default();
                    if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = r {
                        let room = MAX_PROVIDERS_GATHERED.saturating_sub(lookup.gathered.len());
                        lookup.gathered.extend(providers.into_iter().take(room));
                        lookup.stats.first_found.get_or_insert(elapsed);
                    }
                    lookup.stats.duration = elapsed;
                    lookup.stats.requests = stats.num_requests();
                    lookup.stats.successes = stats.num_successes();
                    let full = lookup.gathered.len() >= MAX_PROVIDERS_GATHERED;
                    if step.last || full {
                        if let Some(PendingQuery::Providers(lookup)) = self.pending.remove(&id) {
                            let _ = lookup.reply.send((lookup.gathered, lookup.stats));
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

    /// A provider record another peer announced: taken only for a key near
    /// this peer (fewer than the configured number of routing-table peers
    /// closer to it), and under the store's caps.
    fn on_provider_record(&mut self, record: kad::ProviderRecord) {
        let target = kad::KBucketKey::new(record.key.clone());
        let me = kad::KBucketKey::from(*self.swarm.local_peer_id());
        let ours = me.distance(&target);
        let kad = &mut self.swarm.behaviour_mut().kad;
        let most = kad.store_mut().limits().closer_peers;
        let closer = kad
            .get_closest_local_peers(&target)
            .take(most)
            .take_while(|p| p.distance(&target) < ours)
            .count();
        if let Err(e) = kad.store_mut().add_remote(record, closer) {
            tracing::debug!("provider record refused: {e}");
        }
    }
}
