//! Peers that cannot be dialed, over real swarms on loopback: they reserve
//! a slot on their supernode's relay, hold and serve voicemail through it,
//! and move to another supernode when theirs refuses to relay.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmail_node::config::{NodeConfig, SupernodeConfig};
use vmail_node::overlay::swarm::{Role, SupernodeView};
use vmail_node::overlay::transfer::BlobClient;
use vmail_node::peer::{Peer, no_progress};
use vmail_tests::{
    TestAuth, leave_request, login_on, random_content, start_peer, wait_until_known,
};

fn config(public: bool, bootstrap: Vec<Multiaddr>) -> NodeConfig {
    let mut c = NodeConfig::loopback();
    c.bootstrap = bootstrap;
    c.supernode = SupernodeConfig {
        public: Some(public),
        bandwidth_kbps: 50_000,
        advert_interval_secs: 1,
        heartbeat_ms: 250,
        peers_per_sn: 2,
        min_uptime_secs: 0,
        min_cpu_cores: 1,
        min_memory_mib: 1,
        // Relayed means relayed here: no upgrade to a direct connection.
        hole_punching: false,
        ..SupernodeConfig::default()
    };
    c
}

/// `c`, holding what `auth` grants.
fn holding(auth: &TestAuth, mut c: NodeConfig) -> NodeConfig {
    c.cluster_key = auth.node_config().cluster_key;
    c
}

/// A peer that accepts no inbound connection at all: it listens nowhere.
fn undialable(bootstrap: Vec<Multiaddr>) -> NodeConfig {
    let mut c = config(false, bootstrap);
    c.listen.clear();
    c
}

/// Logs to the test output, filtered by `RUST_LOG`.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn view(p: &Peer) -> SupernodeView {
    p.supernodes().await.unwrap().expect("a server peer elects")
}

/// Polls `check` every 100 ms for up to `secs`.
async fn until<T>(secs: u64, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: not after {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP forwarder to `target` that keeps a copy of every byte it carries
/// both ways: what a relay's link to the peer behind it carries.
async fn tap(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pump(ir, ow, log.clone()));
            tokio::spawn(pump(or, iw, log.clone()));
        }
    });
    (addr, seen)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seen: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        seen.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

fn tcp_socket(addr: &Multiaddr) -> SocketAddr {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    SocketAddr::from((ip.unwrap(), port.unwrap()))
}

/// Whether any 32-byte window of `plain`, taken every 1 KiB, appears in
/// `seen`.
fn leaks(plain: &[u8], seen: &[u8]) -> bool {
    let needles: HashSet<&[u8]> = plain.chunks_exact(1024).map(|c| &c[..32]).collect();
    seen.windows(32).any(|w| needles.contains(w))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undialable_peer_holds_and_serves_voicemail_through_its_supernodes_relay() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start().await;
    let sn = start_peer(
        dir.path(),
        "sn",
        holding(&auth, config(true, vec![])),
        Role::Server,
    )
    .await;
    let sn_addr = sn.listen_addrs().await.unwrap()[0].clone();
    let sn_id = sn.peer_id();
    // The undialable peer reaches the supernode through a tap.
    let (tap_addr, seen) = tap(tcp_socket(&sn_addr)).await;
    let via_tap: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}/p2p/{sn_id}", tap_addr.port())
        .parse()
        .unwrap();
    let hidden = start_peer(
        dir.path(),
        "hidden",
        holding(&auth, undialable(vec![via_tap])),
        Role::Server,
    )
    .await;
    let hidden_id = hidden.peer_id();
    let recipient = start_peer(
        dir.path(),
        "recipient",
        holding(&auth, config(false, vec![sn_addr.clone()])),
        Role::Server,
    )
    .await;
    let relayed = until(30, "relay reservation", async || {
        let v = view(&hidden).await;
        (v.attached_to == Some(sn_id))
            .then_some(v.relay_addr)
            .flatten()
    })
    .await;
    assert!(relayed.iter().any(|p| p == Protocol::P2pCircuit));
    assert!(hidden.listen_addrs().await.unwrap().iter().all(|a| {
        // Its only address is the relayed one.
        a.iter().any(|p| p == Protocol::P2pCircuit)
    }));

    // A sender that joins now knows the hidden peer only by its relayed
    // address.
    let sender = start_peer(
        dir.path(),
        "sender",
        holding(&auth, config(false, vec![sn_addr.clone()])),
        Role::Server,
    )
    .await;
    wait_until_known(&sender, hidden_id).await;
    login_on(&auth, &sender, "bob").await;
    login_on(&auth, &recipient, "alice").await;
    let plain = random_content(256 * 1024);
    let receipt = sender
        .leave(leave_request(&["alice"], plain.clone(), 3), no_progress())
        .await
        .expect("leave");
    let copy = receipt
        .shards
        .iter()
        .find(|c| c.holder == hidden_id)
        .expect("the hidden peer holds a copy");

    // A one-job client that never met the hidden peer fetches its copy
    // straight from it: the only way there is the relay.
    let client = start_peer(
        dir.path(),
        "client",
        holding(&auth, config(false, vec![sn_addr.clone()])),
        Role::Client,
    )
    .await;
    wait_until_known(&client, hidden_id).await;
    let before = seen.lock().unwrap().len() as u64;
    let body = BlobClient::new(client.network())
        .fetch(hidden_id, copy.id, 1 << 30, &|_| {})
        .await
        .expect("the hidden peer serves through the relay");
    assert_eq!(body.len() as u64, receipt.ciphertext_len);
    let hash: [u8; 32] = Sha256::digest(&body).into();
    let stored = hidden.store().unwrap().usage();
    assert_eq!(stored.0, 1);
    // The object crossed the relay's link to the hidden peer.
    let during = seen.lock().unwrap().len() as u64 - before;
    assert!(during > receipt.ciphertext_len, "{during} bytes crossed");
    assert!(view(&sn).await.relayed_circuits > 0);

    // The recipient decrypts it.
    let got = recipient
        .fetch(receipt.voicemail_id, no_progress())
        .await
        .expect("fetch");
    assert_eq!(got.content, plain);
    assert_ne!(hash, <[u8; 32]>::from(Sha256::digest(&plain)));

    // The relay's link to the hidden peer carried the object and never a
    // stretch of the plaintext.
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() as u64 > receipt.ciphertext_len,
        "only {} bytes crossed the relay link",
        seen.len()
    );
    assert!(!leaks(&plain, &seen), "plaintext crossed the relay");
    assert!(!leaks(&plain, &body), "the held object is not ciphertext");

    for p in [client, sender, recipient, hidden, sn] {
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_supernode_refuses_to_relay_moves_to_one_that_will() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    // One supernode per peer: the second public peer is elected at once
    // rather than held off by the hysteresis.
    let config = |public, boot| {
        let mut c = config(public, boot);
        c.supernode.peers_per_sn = 1;
        c
    };
    let mut stingy = config(true, vec![]);
    stingy.supernode.relay_slots = 0;
    let first = start_peer(dir.path(), "stingy", stingy, Role::Server).await;
    let first_addr = first.listen_addrs().await.unwrap()[0].clone();
    let mut hidden = config(false, vec![first_addr.clone()]);
    hidden.listen.clear();
    let hidden = start_peer(dir.path(), "hidden", hidden, Role::Server).await;
    // Alone, the refusing supernode is still the one to attach to; the
    // peer stays attached without a relayed address.
    until(30, "attached to the only supernode", async || {
        let v = view(&hidden).await;
        (v.attached_to == Some(first.peer_id())).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = view(&hidden).await;
    assert_eq!(v.attached_to, Some(first.peer_id()));
    assert_eq!(v.relay_addr, None, "a refused reservation shows no address");

    // A second supernode appears: the peer moves there and is relayed.
    let second = start_peer(
        dir.path(),
        "second",
        config(true, vec![first_addr]),
        Role::Server,
    )
    .await;
    let second_id = second.peer_id();
    let relayed = until(60, "relayed by the second supernode", async || {
        let v = view(&hidden).await;
        (v.attached_to == Some(second_id))
            .then_some(v.relay_addr)
            .flatten()
    })
    .await;
    assert!(relayed.iter().any(|p| p == Protocol::P2p(second_id)));
    for p in [hidden, second, first] {
        p.stop().await;
    }
}
