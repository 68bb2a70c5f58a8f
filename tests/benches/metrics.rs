//! What the daemon's Prometheus metrics cost (`vmail node run --metrics`).
//!
//! 1. Overhead: two 10-peer loopback overlays with real auth servers, one
//!    serving metrics (libp2p's recorders on, every peer scraped once a
//!    second throughout) and one not; 1 MiB leaves and fetches as RS(4,8)
//!    shards, alternating between the two nets round by round so drift
//!    hits both alike. Prints p50 and p95 of each and the ratio on / off.
//! 2. Scrape cost: a 4-peer net where the three peers other than the
//!    sender hold a copy each of 1,000 real voicemails (leaves as three
//!    whole copies), then the same
//!    holder with 100 one-job client peers connected to it: `/metrics`
//!    latency (p50, p95 over 50 scrapes) and response bytes.
//!
//! `cargo bench -p vmail-tests --bench metrics` (with `VMAIL_BENCH_AA=1`,
//! both nets of part 1 run without metrics: the control; with
//! `VMAIL_BENCH_NO_SCRAPE=1`, metrics are on but never scraped; with
//! `VMAIL_BENCH_SCRAPE_MS=N`, every peer is scraped every N ms, not 1000).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmail_node::core::erasure::Redundancy;
use vmail_node::overlay::swarm::Role;
use vmail_node::peer::{LeaveRequest, no_progress};
use vmail_tests::{TestNet, leave_request, random_content};

const PEERS: usize = 10;
const ROUNDS: usize = 60;
const SIZE: usize = 1 << 20;
const HELD: usize = 1000;
const CLIENTS: usize = 100;
const SCRAPES: usize = 50;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `GET /metrics`: the time to the last byte, and the body's length.
async fn scrape(addr: SocketAddr) -> (Duration, usize) {
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: vmail\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let took = t.elapsed();
    let head = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    (took, answer.len() - head - 4)
}

fn metrics_on(c: &mut vmail_node::config::NodeConfig) {
    c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
}

/// One leave and one fetch on `net`; their durations.
async fn round(net: &TestNet, content: &[u8]) -> (Duration, Duration) {
    let t = Instant::now();
    let req = LeaveRequest {
        redundancy: Some(Redundancy::DEFAULT),
        ..leave_request(&["alice"], content.to_vec(), 1)
    };
    let r = net.peers[0].leave(req, no_progress()).await.expect("leave");
    let leave = t.elapsed();
    let t = Instant::now();
    net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("fetch");
    let fetch = t.elapsed();
    net.peers[1].ack(r.voicemail_id).await.expect("ack");
    (leave, fetch)
}

async fn overhead() {
    let off = TestNet::start(PEERS).await;
    // VMAIL_BENCH_AA=1 runs the second net without metrics too: the
    // difference two nets show with nothing between them.
    let control = std::env::var_os("VMAIL_BENCH_AA").is_some();
    let on = TestNet::start_with(PEERS, |c| {
        if !control {
            metrics_on(c);
        }
    })
    .await;
    for net in [&off, &on] {
        net.login(0, "bob").await;
        net.login(1, "alice").await;
    }
    let addrs: Vec<SocketAddr> = on.peers.iter().filter_map(|p| p.metrics_addr()).collect();
    // VMAIL_BENCH_NO_SCRAPE=1: metrics on, but nobody scrapes them.
    let scrape_too = std::env::var_os("VMAIL_BENCH_NO_SCRAPE").is_none();
    // VMAIL_BENCH_SCRAPE_MS: the pause between two scrapes of every peer.
    let every = Duration::from_millis(
        std::env::var("VMAIL_BENCH_SCRAPE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    let scraper = tokio::spawn(async move {
        if !scrape_too {
            return;
        }
        loop {
            for a in &addrs {
                scrape(*a).await;
            }
            tokio::time::sleep(every).await;
        }
    });
    let content = random_content(SIZE);
    // One warm-up round each.
    round(&off, &content).await;
    round(&on, &content).await;
    let (mut off_t, mut on_t) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for i in 0..ROUNDS {
        let order = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for metrics in order {
            let (net, into) = if metrics {
                (&on, &mut on_t)
            } else {
                (&off, &mut off_t)
            };
            let (l, f) = round(net, &content).await;
            into.0.push(l);
            into.1.push(f);
        }
    }
    scraper.abort();
    println!(
        "## Overhead: {PEERS}-peer nets, 1 MiB as RS(4,8), {ROUNDS} rounds each, alternating\n"
    );
    println!("| op | p50 off ms | p50 on ms | on / off | p95 off ms | p95 on ms |");
    println!("|---|---|---|---|---|---|");
    for (op, mut a, mut b) in [("leave", off_t.0, on_t.0), ("fetch", off_t.1, on_t.1)] {
        a.sort();
        b.sort();
        println!(
            "| {op} | {:.1} | {:.1} | {:.3} | {:.1} | {:.1} |",
            ms(pct(&a, 0.5)),
            ms(pct(&b, 0.5)),
            pct(&b, 0.5).as_secs_f64() / pct(&a, 0.5).as_secs_f64(),
            ms(pct(&a, 0.95)),
            ms(pct(&b, 0.95))
        );
    }
    off.stop().await;
    on.stop().await;
}

/// p50, p95 and the bytes of `SCRAPES` scrapes of `addr`.
async fn scrape_cost(addr: SocketAddr) -> (Duration, Duration, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..SCRAPES {
        let (t, b) = scrape(addr).await;
        times.push(t);
        bytes = b;
    }
    times.sort();
    (pct(&times, 0.5), pct(&times, 0.95), bytes)
}

async fn scrapes() {
    let net = TestNet::start_with(4, metrics_on).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let t = Instant::now();
    let content = random_content(1024);
    let done = futures::stream::iter(0..HELD)
        .map(|_| net.peers[0].leave(leave_request(&["alice"], content.clone(), 3), no_progress()))
        .buffer_unordered(8)
        .filter_map(|r| async move { r.map_err(|e| eprintln!("a leave failed: {e}")).ok() })
        .count()
        .await;
    let holder = net.peers[1..]
        .iter()
        .max_by_key(|p| p.store().map_or(0, |s| s.list().len()))
        .unwrap();
    let held = holder.store().unwrap().list().len();
    println!(
        "\n## Scrape cost: {done} leaves as 3 copies on 4 peers in {:.1} s; the holder holds {held} objects\n",
        t.elapsed().as_secs_f64()
    );
    println!("| holder | connected peers | p50 ms | p95 ms | bytes |");
    println!("|---|---|---|---|---|");
    let addr = holder.metrics_addr().unwrap();
    let connected = holder.network().traffic().await.unwrap().connected_peers;
    let (p50, p95, bytes) = scrape_cost(addr).await;
    println!(
        "| {held} objects | {connected} | {:.2} | {:.2} | {bytes} |",
        ms(p50),
        ms(p95)
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = net.auth.node_config();
    config.bootstrap = holder.listen_addrs().await.unwrap();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let c = config.clone();
        clients.push(vmail_tests::start_peer(dir.path(), &format!("c{i}"), c, Role::Client).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut connected = 0;
    while Instant::now() < deadline {
        connected = holder.network().traffic().await.unwrap().connected_peers;
        if connected as usize >= CLIENTS + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Identify has run on every connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (p50, p95, bytes) = scrape_cost(addr).await;
    println!(
        "| {held} objects, {CLIENTS} one-job clients | {connected} | {:.2} | {:.2} | {bytes} |",
        ms(p50),
        ms(p95)
    );
    for c in clients {
        c.stop().await;
    }
    net.stop().await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    println!("reproduce: cargo bench -p vmail-tests --bench metrics\n");
    overhead().await;
    scrapes().await;
}
