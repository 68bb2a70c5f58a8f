//! Leave and fetch latency on a 20-peer loopback overlay with a real auth
//! server ([`vmail_tests::TestNet`]), for 1 MiB and 16 MiB voicemails stored
//! as three whole copies and as the default RS(4,8) shards. Prints p50 and
//! p95 and the share of the time spent in crypto, DHT lookups, transfers
//! and auth calls, and a ratio to a reference measured in the same run:
//! writing the same bytes (once per shard stored, or per shard fetched)
//! over plain loopback TCP and reading them back.
//!
//! `cargo bench -p vmail-tests --bench overlay`

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmail_node::core::erasure::Redundancy;
use vmail_node::peer::{LeaveRequest, Timings, no_progress};
use vmail_tests::{TestNet, leave_request, random_content};

const PEERS: usize = 20;
const SCHEMES: [Redundancy; 2] = [Redundancy::Replicas(3), Redundancy::DEFAULT];
/// (size, rounds)
const RUNS: [(usize, usize); 2] = [(1 << 20, 20), (16 << 20, 8)];

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median time to push `bytes` through a loopback TCP connection `copies`
/// times and read it all on the other side.
async fn tcp_reference(bytes: usize, copies: usize) -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = vec![7u8; bytes];
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..copies {
            let (mut tx, accepted) = tokio::join!(
                async { tokio::net::TcpStream::connect(addr).await.unwrap() },
                listener.accept()
            );
            let (mut rx, _) = accepted.unwrap();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0;
                while n < bytes {
                    n += rx.read(&mut buf).await.unwrap();
                }
            });
            tx.write_all(&data).await.unwrap();
            reader.await.unwrap();
        }
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

fn shares(t: &[Timings], total: Duration) -> String {
    let sum = |f: fn(&Timings) -> Duration| t.iter().map(f).sum::<Duration>().as_secs_f64();
    let all = total.as_secs_f64().max(1e-9);
    format!(
        "{:.0}% | {:.0}% | {:.0}% | {:.0}%",
        100.0 * sum(|t| t.crypto) / all,
        100.0 * sum(|t| t.dht) / all,
        100.0 * sum(|t| t.transfer) / all,
        100.0 * sum(|t| t.auth) / all
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let net = TestNet::start(PEERS).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    println!("{PEERS} peers on loopback, real auth server over TLS");
    println!("reproduce: cargo bench -p vmail-tests --bench overlay\n");
    println!(
        "| size | stored as | op | p50 ms | p95 ms | crypto | dht | transfer | auth | p50 / TCP reference |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (size, rounds) in RUNS {
        let content = random_content(size);
        for scheme in SCHEMES {
            let (mut leaves, mut fetches) = (Vec::new(), Vec::new());
            let (mut lt, mut ft) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let t = Instant::now();
                let req = LeaveRequest {
                    redundancy: Some(scheme),
                    ..leave_request(&["alice"], content.clone(), 1)
                };
                let r = net.peers[0].leave(req, no_progress()).await.expect("leave");
                leaves.push(t.elapsed());
                lt.push(r.timings);
                let t = Instant::now();
                let got = net.peers[1]
                    .fetch(r.voicemail_id, no_progress())
                    .await
                    .expect("fetch");
                fetches.push(t.elapsed());
                ft.push(got.timings);
                assert_eq!(got.content.len(), size);
                net.peers[1].ack(r.voicemail_id).await.expect("ack");
            }
            let shard = scheme.shard_len(size as u64) as usize;
            let leave_ref = tcp_reference(shard, scheme.n()).await;
            let fetch_ref = tcp_reference(shard, scheme.k()).await;
            let mib = size >> 20;
            for (op, mut times, timings, reference) in [
                ("leave", leaves, lt, leave_ref),
                ("fetch", fetches, ft, fetch_ref),
            ] {
                let total: Duration = times.iter().sum();
                times.sort();
                println!(
                    "| {mib} MiB | {scheme} | {op} | {:.1} | {:.1} | {} | {:.1} (ref {:.2} ms) |",
                    ms(pct(&times, 0.5)),
                    ms(pct(&times, 0.95)),
                    shares(&timings, total),
                    pct(&times, 0.5).as_secs_f64() / reference.as_secs_f64(),
                    ms(reference)
                );
            }
        }
    }
    net.stop().await;
}
