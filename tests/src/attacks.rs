//! Attack drivers shared by the hostile tests (`tests/tests/hostile/`) and
//! the hostile bench (`tests/benches/hostile.rs`).
//!
//! The building blocks (a granted store that never sends its body, a raw
//! blob stream, a Kademlia-only Sybil swarm with a ground id, a backlog of
//! full-size deposits) are what the tests assert bounds on. The `spawn_*`
//! drivers repeat one attack in a background task until they are told to
//! stop, reach their count or pass their deadline ([`Limits`]), so that the
//! bench can measure honest leaves and fetches while an attack runs. Every
//! attacker talks to loopback only.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use libp2p::kad::store::MemoryStore;
use libp2p::kad::{self, KBucketKey, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Stream, Swarm, identity, noise, tcp, yamux};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use vmail_node::auth_client::{AuthClient, AuthTarget, GrantRequest, LoginSession};
use vmail_node::core::erasure::Redundancy;
use vmail_node::core::locator::{Layout, ShardRef};
use vmail_node::overlay::objects::{ObjectMeta, ShardOf};
use vmail_node::overlay::swarm::{KAD_PROTOCOL, Network};
use vmail_node::overlay::transfer::admission::REQUEST_TIMEOUT;
use vmail_node::overlay::transfer::{BLOB_PROTOCOL, Reply, Request, frame, read_frame};
use vmail_node::peer::Peer;
use vmail_proto::grant::GrantedShard;
use vmail_proto::names::Recipients;
use vmail_proto::pb;

use crate::{deposit_for, granted, identity as new_identity, password};

/// When a background attack stops by itself: after `max` attack steps or at
/// `until`, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most attack steps (a step is named by each driver).
    pub max: usize,
    /// The latest moment the attack runs.
    pub until: Instant,
}

impl Limits {
    /// At most `max` steps, for at most `time` from now.
    pub fn new(max: usize, time: Duration) -> Self {
        Self {
            max,
            until: Instant::now() + time,
        }
    }
}

/// A running background attack; [`Attack::finish`] stops it and returns how
/// many steps it made.
#[derive(Debug)]
pub struct Attack {
    stop: watch::Sender<bool>,
    task: JoinHandle<usize>,
}

impl Attack {
    fn spawn<F>(limits: Limits, body: impl FnOnce(watch::Receiver<bool>) -> F) -> Self
    where
        F: Future<Output = usize> + Send + 'static,
    {
        let (stop, rx) = watch::channel(false);
        let run = body(rx);
        let task = tokio::spawn(async move {
            tokio::time::timeout_at(limits.until, run)
                .await
                .unwrap_or(usize::MAX)
        });
        Self { stop, task }
    }

    /// Whether the attack has stopped by itself.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the attack stops by itself (its count or its deadline)
    /// and returns the number of steps it made.
    pub async fn wait(self) -> usize {
        let steps = self.task.await.expect("the attack task");
        drop(self.stop);
        steps
    }

    /// Stops the attack and returns the number of steps it made
    /// (`usize::MAX` when its deadline cut it off mid-step).
    pub async fn finish(self) -> usize {
        let _ = self.stop.send(true);
        self.task.await.expect("the attack task")
    }
}

/// Whether `stop` has been raised.
fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

// ---------------------------------------------------------------------------
// Holders: stalled granted stores and silent streams.

/// Stores `auth`'s user can make under one fresh grant: `n` shards of `len`
/// bytes that only `victim` may take during the upload window.
pub async fn attack_stores(auth: &mut AuthClient, victim: PeerId, n: u8, len: u64) -> Vec<Request> {
    let shas: Vec<[u8; 32]> = (0..n).map(|_| vmail_proto::random_bytes()).collect();
    let grant = auth
        .request_grant(&GrantRequest {
            recipients: Recipients::parse(["alice"]).unwrap(),
            message_id: vmail_proto::random_bytes(),
            data_shards: 1,
            shards: shas
                .iter()
                .map(|sha256| GrantedShard {
                    len,
                    sha256: *sha256,
                })
                .collect(),
            holders: vec![victim.to_bytes()],
            expires_at: 0,
            sender: vmail_node::auth_client::SenderVisibility::Shown,
        })
        .await
        .expect("a storage grant")
        .grant;
    let layout = Layout {
        redundancy: Redundancy::Replicas(n),
        ciphertext_len: len,
        shards: shas
            .iter()
            .map(|sha256| ShardRef {
                id: vmail_proto::random_bytes(),
                sha256: *sha256,
            })
            .collect(),
    };
    (0..n)
        .map(|i| Request::Store {
            id: layout.shards[usize::from(i)].id,
            meta: ObjectMeta {
                len,
                sha256: shas[usize::from(i)],
                expires_at: 0,
                delete_hash: Sha256::digest([7u8; 32]).into(),
                shard: Some(ShardOf {
                    index: i,
                    layout: layout.clone(),
                }),
                grant: grant.to_bytes(),
                proof: Vec::new(),
            },
        })
        .collect()
}

/// Opens a raw blob stream from `from` to `to`.
pub async fn raw_stream(from: &Network, to: PeerId) -> Stream {
    try_raw_stream(from, to).await.expect("a blob stream")
}

/// Opens a raw blob stream from `from` to `to`, if the holder takes it.
async fn try_raw_stream(from: &Network, to: PeerId) -> Option<Stream> {
    from.streams().open_stream(to, BLOB_PROTOCOL).await.ok()
}

/// Sends `request` on a new raw stream and reads the first reply.
pub async fn ask(from: &Network, to: PeerId, request: &Request) -> (Stream, Reply) {
    try_ask(from, to, request).await.expect("a reply")
}

/// Sends `request` on a new raw stream and reads the first reply, if the
/// holder answers.
async fn try_ask(from: &Network, to: PeerId, request: &Request) -> Option<(Stream, Reply)> {
    let mut s = try_raw_stream(from, to).await?;
    s.write_all(&frame(request)).await.ok()?;
    s.flush().await.ok()?;
    let reply = read_frame(&mut s).await.ok()?;
    Some((s, reply))
}

/// Whether the holder has closed or reset `s`, waiting at most `wait`.
pub async fn closed_within(s: &mut Stream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The shape of [`spawn_slot_hog`]'s attack.
#[derive(Debug, Clone, Copy)]
pub struct SlotHog {
    /// Granted stores asked for in each step; their bodies never come.
    pub stores: u8,
    /// Bytes of each stalled store.
    pub store_len: u64,
    /// Streams opened in each step that never send a request.
    pub silent: usize,
}

impl Default for SlotHog {
    /// The hostile test's attack: eight stores of 12 MiB and forty silent
    /// streams.
    fn default() -> Self {
        Self {
            stores: 8,
            store_len: 12 << 20,
            silent: 40,
        }
    }
}

/// `attacker` (a peer of the net, logged in through `auth`) keeps `victim`'s
/// blob exchange slots taken: each step asks for `shape.stores` granted
/// stores and holds the streams that got `Ready`, opens `shape.silent`
/// streams that never send a request, and holds them all until the victim's
/// request timeout has cut the silent ones; then it drops them and starts
/// again. A step is one such round.
pub fn spawn_slot_hog(
    attacker: &Peer,
    mut auth: AuthClient,
    victim: PeerId,
    shape: SlotHog,
    limits: Limits,
) -> Attack {
    let net = attacker.network().clone();
    Attack::spawn(limits, move |stop| async move {
        let mut steps = 0;
        while steps < limits.max && !stopped(&stop) {
            let mut held = Vec::new();
            for request in attack_stores(&mut auth, victim, shape.stores, shape.store_len).await {
                if let Some((s, Reply::Ready)) = try_ask(&net, victim, &request).await {
                    held.push(s);
                }
            }
            for _ in 0..shape.silent {
                held.extend(try_raw_stream(&net, victim).await);
            }
            let mut stop = stop.clone();
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, stop.wait_for(|s| *s)).await;
            drop(held);
            steps += 1;
        }
        steps
    })
}

// ---------------------------------------------------------------------------
// Provider records: Sybil swarms with ground ids.

/// Where a Kademlia attacker finds the net: each peer's id and TCP
/// addresses.
pub async fn kad_contacts(peers: &[&Peer]) -> Vec<(PeerId, Vec<Multiaddr>)> {
    let mut out = Vec::new();
    for p in peers {
        let addrs = p.listen_addrs().await.expect("listening");
        let tcp = addrs
            .into_iter()
            .filter(|a| a.iter().any(|x| matches!(x, Protocol::Tcp(_))))
            .collect();
        out.push((p.peer_id(), tcp));
    }
    out
}

/// A Kademlia-only swarm in client mode with identity `key`, that knows
/// `contacts` and claims `fake_addrs` external addresses of its own: it
/// never enters a routing table, only announces.
pub fn kad_attacker(
    key: identity::Keypair,
    contacts: &[(PeerId, Vec<Multiaddr>)],
    fake_addrs: u16,
) -> Swarm<kad::Behaviour<MemoryStore>> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|key| {
            let me = key.public().to_peer_id();
            let mut config = kad::Config::new(KAD_PROTOCOL);
            config.set_query_timeout(Duration::from_secs(10));
            let mut kad = kad::Behaviour::with_config(me, MemoryStore::new(me), config);
            kad.set_mode(Some(kad::Mode::Client));
            kad
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    for (peer, addrs) in contacts {
        for addr in addrs {
            swarm.behaviour_mut().add_address(peer, addr.clone());
        }
    }
    for port in 0..fake_addrs {
        let fake: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", 40_000 + port)
            .parse()
            .expect("address");
        swarm.add_external_address(fake);
    }
    swarm
}

/// Announces every key in `keys` from `swarm` and drives it until each
/// announcement has finished (20 s at most).
pub async fn announce(swarm: &mut Swarm<kad::Behaviour<MemoryStore>>, keys: &[RecordKey]) {
    let mut running = HashSet::new();
    for k in keys {
        running.insert(
            swarm
                .behaviour_mut()
                .start_providing(k.clone())
                .expect("local store"),
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !running.is_empty() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("announcements finish within 20 s");
        if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
            id,
            result: kad::QueryResult::StartProviding(_),
            step,
            ..
        }) = event
            && step.last
        {
            running.remove(&id);
        }
    }
}

/// Keeps `swarm` running (its queued requests go out) until the handle is
/// aborted.
pub fn drive(mut swarm: Swarm<kad::Behaviour<MemoryStore>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    })
}

/// Up to `count` keys whose peer ids are closer to `target` than `than`
/// is, so that a closest-first provider list puts them ahead of it; fewer
/// when `tries` key generations find fewer.
pub fn ground_keys(
    target: &RecordKey,
    than: PeerId,
    count: usize,
    tries: usize,
) -> Vec<identity::Keypair> {
    let target = KBucketKey::new(target.clone());
    let bound = KBucketKey::from(than).distance(&target);
    let mut keys = Vec::new();
    for _ in 0..tries {
        let k = identity::Keypair::generate_ed25519();
        if KBucketKey::from(k.public().to_peer_id()).distance(&target) < bound {
            keys.push(k);
            if keys.len() == count {
                break;
            }
        }
    }
    keys
}

/// The shape of [`spawn_sybils`]'s attack.
#[derive(Debug, Clone, Copy)]
pub struct Sybils {
    /// Sybils ground and started for each shard id sent to the attack.
    pub per_key: usize,
    /// Sybil swarms kept running at once; the oldest stop first.
    pub live: usize,
}

/// For each (shard id, holder) sent on the returned channel, grinds
/// `shape.per_key` Sybil ids closer to the id than its holder, starts a
/// Kademlia-only swarm for each that announces the id, and keeps it running
/// (at most `shape.live` at once). A step is one Sybil started.
pub fn spawn_sybils(
    contacts: Vec<(PeerId, Vec<Multiaddr>)>,
    shape: Sybils,
    limits: Limits,
) -> (Attack, mpsc::Sender<(RecordKey, PeerId)>) {
    let (targets, mut rx) = mpsc::channel::<(RecordKey, PeerId)>(256);
    let attack = Attack::spawn(limits, move |mut stop| async move {
        let mut running: std::collections::VecDeque<JoinHandle<()>> = Default::default();
        let mut steps = 0;
        while steps < limits.max {
            let (key, holder) = tokio::select! {
                t = rx.recv() => match t { Some(t) => t, None => break },
                _ = stop.wait_for(|s| *s) => break,
            };
            let ground = tokio::task::spawn_blocking({
                let key = key.clone();
                move || ground_keys(&key, holder, shape.per_key, 200_000)
            })
            .await
            .expect("grinding");
            for k in ground {
                let mut sybil = kad_attacker(k, &contacts, 0);
                announce(&mut sybil, std::slice::from_ref(&key)).await;
                running.push_back(drive(sybil));
                while running.len() > shape.live {
                    running.pop_front().expect("a sybil").abort();
                }
                steps += 1;
            }
        }
        for s in running {
            s.abort();
        }
        steps
    });
    (attack, targets)
}

// ---------------------------------------------------------------------------
// The auth server: unread WatchPending streams, unfinished logins.

/// Registers `user` and logs in on a new client connected to `target`.
pub async fn register_and_login_at(target: &AuthTarget, user: &str) -> (AuthClient, LoginSession) {
    let mut c = AuthClient::connect(target).await.expect("connect");
    let id = new_identity();
    c.register(user, &password(user), &id, None)
        .await
        .expect("register");
    let s = c
        .login(user, &password(user), &id, &[])
        .await
        .expect("login");
    (c, s)
}

/// Deposits `count` voicemails from `sender` to `to`, each with a locator
/// of `locator_len` bytes; returns how many the server took (an inbox cap
/// refuses the rest).
pub async fn deposit_backlog(
    sender: &mut AuthClient,
    to: &str,
    count: usize,
    locator_len: usize,
) -> usize {
    let mut taken = 0;
    for _ in 0..count {
        let d = granted(sender, deposit_for(&[to], &vec![7; locator_len])).await;
        taken += usize::from(sender.deposit(&d).await.is_ok());
    }
    taken
}

/// The shape of [`spawn_watch_hog`]'s attack.
#[derive(Debug, Clone, Copy)]
pub struct WatchHog {
    /// Attacker accounts (each with its own inbox and stream caps).
    pub users: usize,
    /// Deposits of full-size locators into each account per step.
    pub deposits: usize,
    /// Bytes of each deposit's locator.
    pub locator_len: usize,
    /// New sessions per account per step, each opening streams until the
    /// server refuses.
    pub sessions: usize,
}

/// Registers `shape.users` accounts named `{prefix}{i}` on `target` and keeps
/// pinning the server's memory: each step deposits a backlog into every
/// account from a sender account, then logs each account in again
/// `shape.sessions` times and opens WatchPending streams on each session
/// until refused, never reading them. Streams are held until the attack
/// stops. A step is one such round.
pub fn spawn_watch_hog(
    target: AuthTarget,
    prefix: &str,
    shape: WatchHog,
    limits: Limits,
) -> Attack {
    let prefix = prefix.to_owned();
    Attack::spawn(limits, move |stop| async move {
        let (mut sender, _) = register_and_login_at(&target, &format!("{prefix}-tx")).await;
        let mut ids = Vec::new();
        for i in 0..shape.users {
            let name = format!("{prefix}{i}");
            let mut c = AuthClient::connect(&target).await.expect("connect");
            let id = new_identity();
            c.register(&name, &password(&name), &id, None)
                .await
                .expect("register");
            ids.push((name, id));
        }
        let (mut held, mut clients) = (Vec::new(), Vec::new());
        let mut steps = 0;
        while steps < limits.max && !stopped(&stop) {
            for (name, id) in &ids {
                deposit_backlog(&mut sender, name, shape.deposits, shape.locator_len).await;
                for _ in 0..shape.sessions {
                    let mut c = AuthClient::connect(&target).await.expect("connect");
                    if c.login(name, &password(name), id, &[]).await.is_err() {
                        continue;
                    }
                    while let Ok(s) = c.watch_pending().await {
                        held.push(s);
                        if stopped(&stop) {
                            break;
                        }
                    }
                    clients.push(c);
                }
            }
            steps += 1;
        }
        drop((held, clients));
        steps
    })
}

/// The shape of [`spawn_login_flood`]'s attack.
#[derive(Debug, Clone, Copy)]
pub struct LoginFlood {
    /// Names the LoginStarts are spread over (registered as `flood{i}`).
    pub names: usize,
    /// LoginStarts in flight at once.
    pub in_flight: usize,
}

/// Registers `names` flood accounts (`flood0`, `flood1`, ...) on a new client
/// of `target`.
pub async fn register_flood_names(target: &AuthTarget, names: usize) {
    let mut reg = AuthClient::connect(target).await.expect("connect");
    for i in 0..names {
        let name = format!("flood{i}");
        reg.register(&name, &password(&name), &new_identity(), None)
            .await
            .expect("register");
    }
}

/// Sends LoginStarts under the names `flood{i}` (registered first with
/// [`register_flood_names`]) on `channel`, `shape.in_flight` at a time, and
/// never finishes them. A step is one LoginStart answered; the attack ends
/// by itself after `limits.max` sent.
pub fn spawn_login_flood(
    channel: tonic::transport::Channel,
    shape: LoginFlood,
    limits: Limits,
) -> Attack {
    use opaque_ke::ClientLogin;
    Attack::spawn(limits, move |stop| async move {
        let raw = pb::auth_client::AuthClient::new(channel);
        let start = ClientLogin::<vmail_proto::opaque::Suite>::start(&mut rand::rngs::OsRng, b"x")
            .unwrap()
            .message
            .serialize()
            .to_vec();
        let sent = Arc::new(AtomicUsize::new(0));
        let mut flood = tokio::task::JoinSet::new();
        for _ in 0..shape.in_flight {
            let (mut raw, start, sent, stop) =
                (raw.clone(), start.clone(), sent.clone(), stop.clone());
            flood.spawn(async move {
                let mut answered = 0;
                loop {
                    let k = sent.fetch_add(1, Ordering::SeqCst);
                    if k >= limits.max || stopped(&stop) {
                        return answered;
                    }
                    let r = raw
                        .login_start(pb::LoginStartRequest {
                            username: format!("flood{}", k % shape.names),
                            credential_request: start.clone(),
                        })
                        .await;
                    answered += usize::from(r.is_ok());
                }
            });
        }
        flood.join_all().await.into_iter().sum()
    })
}
