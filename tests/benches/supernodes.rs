//! Supernode figures on loopback, in one process:
//! - SN-set convergence (from the last peer's start until every peer
//!   elects the same set and every other peer is attached) and re-attach
//!   time after the busiest SN is killed, for 20, 50 and 100 peers;
//! - advert payload bytes delivered to each peer per minute;
//! - relay throughput: a 16 MiB object fetched through an SN's relay from
//!   a peer that cannot be dialed, as a ratio to the same fetch from a
//!   directly reachable peer in the same run.
//!
//! `cargo bench -p vmail-tests --bench supernodes`

use std::time::{Duration, Instant};

use libp2p::PeerId;
use vmail_devnet::localnet::settled;
use vmail_node::config::{NodeConfig, SupernodeConfig};
use vmail_node::overlay::swarm::{Role, SupernodeView};
use vmail_node::overlay::transfer::BlobClient;
use vmail_node::peer::{Peer, no_progress};
use vmail_tests::{
    TestAuth, leave_request, login_on, random_content, start_peer, wait_until_known,
};

/// Seconds between adverts for `n` peers: gossip work grows with
/// n² / interval in one process, so the interval grows with n to keep two
/// cores from saturating (20 peers: 1 s, 50: 2 s, 100: 5 s).
fn interval(n: usize) -> u64 {
    (n as u64 / 20).max(1)
}

/// Heartbeat period in the bench.
const HEARTBEAT_MS: u64 = 500;

fn config(public: bool, peers_per_sn: usize, n: usize) -> NodeConfig {
    let mut c = NodeConfig::loopback();
    c.supernode = SupernodeConfig {
        public: Some(public),
        bandwidth_kbps: 50_000,
        advert_interval_secs: interval(n),
        heartbeat_ms: HEARTBEAT_MS,
        peers_per_sn,
        min_cpu_cores: 1,
        min_memory_mib: 1,
        min_uptime_secs: 0,
        hole_punching: false,
        ..SupernodeConfig::default()
    };
    c
}

async fn views(peers: &[Peer]) -> Vec<SupernodeView> {
    let mut out = Vec::new();
    for p in peers {
        out.push(p.supernodes().await.unwrap().unwrap());
    }
    out
}

/// (convergence, re-attach wall time, slowest re-attach by the peers'
/// own clocks, orphans, advert bytes per peer per minute)
async fn election(n: usize) -> Result<(Duration, Duration, Duration, usize, f64), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut peers: Vec<Peer> = Vec::new();
    let mut boot = Vec::new();
    for i in 0..n {
        // Two in three are public; one SN per 10 peers.
        let mut c = config(i % 3 != 2, 10, n);
        c.bootstrap = boot.clone();
        let p = start_peer(dir.path(), &format!("p{i}"), c, Role::Server).await;
        if i == 0 {
            boot = p.listen_addrs().await.unwrap();
        }
        peers.push(p);
    }
    let started = Instant::now();
    let mut v = views(&peers).await;
    let ids: Vec<PeerId> = peers.iter().map(Peer::peer_id).collect();
    while !(settled(&v, &ids) && v.iter().all(|v| v.adverts.len() == n)) {
        if started.elapsed() > Duration::from_secs(120) {
            let mut sets: Vec<&Vec<PeerId>> = v.iter().map(|v| &v.supernodes).collect();
            sets.sort();
            sets.dedup();
            let why = format!(
                "no convergence in 120 s: {} distinct sets, adverts held {:?}..{:?}, {} unattached",
                sets.len(),
                v.iter().map(|v| v.adverts.len()).min().unwrap_or(0),
                v.iter().map(|v| v.adverts.len()).max().unwrap_or(0),
                v.iter().filter(|v| v.attached_to.is_none()).count(),
            );
            for p in peers {
                p.stop().await;
            }
            return Err(why);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        v = views(&peers).await;
    }
    let converged = started.elapsed();

    // Advert payload delivered per peer over a steady 30 s.
    let before: u64 = v.iter().map(|v| v.advert_bytes).sum();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after: u64 = views(&peers).await.iter().map(|v| v.advert_bytes).sum();
    let per_minute = (after - before) as f64 / n as f64 * 2.0;

    let v = views(&peers).await;
    let sns = v[0].supernodes.clone();
    let count = |sn: PeerId| v.iter().filter(|v| v.attached_to == Some(sn)).count();
    let victim = *sns.iter().max_by_key(|sn| count(**sn)).unwrap();
    let orphans: Vec<PeerId> = v
        .iter()
        .zip(&peers)
        .filter(|(v, _)| v.attached_to == Some(victim))
        .map(|(_, p)| p.peer_id())
        .collect();
    let i = peers.iter().position(|p| p.peer_id() == victim).unwrap();
    peers.remove(i).stop().await;
    let lost = Instant::now();
    let orphaned: Vec<&Peer> = peers
        .iter()
        .filter(|p| orphans.contains(&p.peer_id()))
        .collect();
    let slowest = loop {
        let mut done = Vec::new();
        for p in &orphaned {
            let v = p.supernodes().await.unwrap().unwrap();
            done.push(v.attached_to.filter(|s| *s != victim).and(v.last_reattach));
        }
        if done.iter().all(Option::is_some) {
            break done.into_iter().flatten().max().unwrap_or_default();
        }
        assert!(lost.elapsed() < Duration::from_secs(120), "no re-attach");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let wall = lost.elapsed();
    for p in peers {
        p.stop().await;
    }
    Ok((converged, wall, slowest, orphans.len(), per_minute))
}

/// Median seconds to fetch a 16 MiB copy from `from` (5 rounds each,
/// alternating): (relayed, direct).
async fn relay_throughput() -> (f64, f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start().await;
    let sn = start_peer(dir.path(), "sn", config(true, 32, 4), Role::Server).await;
    let boot = sn.listen_addrs().await.unwrap();
    let mut hidden = config(false, 32, 4);
    hidden.listen.clear();
    hidden.bootstrap = boot.clone();
    let hidden = start_peer(dir.path(), "hidden", hidden, Role::Server).await;
    let mut direct = config(false, 32, 4);
    direct.bootstrap = boot.clone();
    let direct = start_peer(dir.path(), "direct", direct, Role::Server).await;
    while hidden
        .supernodes()
        .await
        .unwrap()
        .unwrap()
        .relay_addr
        .is_none()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sender = config(false, 32, 4);
    sender.bootstrap = boot.clone();
    let sender = start_peer(dir.path(), "sender", sender, Role::Server).await;
    wait_until_known(&sender, hidden.peer_id()).await;
    login_on(&auth, &sender, "bob").await;
    login_on(&auth, &direct, "alice").await;
    let receipt = sender
        .leave(
            leave_request(&["alice"], random_content(16 << 20), 3),
            no_progress(),
        )
        .await
        .unwrap();
    let copy_at = |holder: PeerId| {
        receipt
            .shards
            .iter()
            .find(|c| c.holder == holder)
            .unwrap()
            .id
    };
    let mut client = config(false, 32, 4);
    client.bootstrap = boot;
    let client = start_peer(dir.path(), "client", client, Role::Client).await;
    wait_until_known(&client, hidden.peer_id()).await;
    let blobs = BlobClient::new(client.network());
    let (mut relayed, mut straight) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (holder, out) in [(&hidden, &mut relayed), (&direct, &mut straight)] {
            let t = Instant::now();
            let body = blobs
                .fetch(
                    holder.peer_id(),
                    copy_at(holder.peer_id()),
                    1 << 30,
                    &|_| {},
                )
                .await
                .unwrap();
            assert_eq!(body.len() as u64, receipt.ciphertext_len);
            out.push(t.elapsed().as_secs_f64());
        }
    }
    relayed.sort_by(f64::total_cmp);
    straight.sort_by(f64::total_cmp);
    (relayed[2], straight[2], receipt.ciphertext_len)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "| peers | advert interval s | convergence s (in intervals) | orphans | re-attach wall ms (in heartbeats) | slowest re-attach ms | advert bytes/peer/min |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    // `SN_BENCH_PEERS=20,50` runs only those sizes.
    let sizes: Vec<usize> = std::env::var("SN_BENCH_PEERS")
        .unwrap_or_else(|_| "20,50,100".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("SN_BENCH_PEERS: comma-separated peer counts")
        })
        .collect();
    for n in sizes {
        let every = interval(n);
        let (c, wall, slowest, orphans, bytes) = match election(n).await {
            Ok(figures) => figures,
            Err(why) => {
                println!("| {n} | {every} | {why} | | | | |");
                continue;
            }
        };
        println!(
            "| {n} | {every} | {:.1} ({:.1}) | {orphans} | {} ({:.1}) | {} | {:.0} |",
            c.as_secs_f64(),
            c.as_secs_f64() / every as f64,
            wall.as_millis(),
            wall.as_millis() as f64 / HEARTBEAT_MS as f64,
            slowest.as_millis(),
            bytes
        );
    }
    let (relayed, direct, len) = relay_throughput().await;
    let mib = len as f64 / f64::from(1u32 << 20);
    println!(
        "relay: {:.1} MiB/s relayed, {:.1} MiB/s direct, ratio {:.2} (median of 5 fetches of {mib:.1} MiB each)",
        mib / relayed,
        mib / direct,
        direct / relayed
    );
}
