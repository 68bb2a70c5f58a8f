//! Replicated auth group benchmark: durable deposits through a one-server
//! group and a three-server group (every deposit is a Raft log entry,
//! fsynced on a majority, then applied), and failover: how long after the
//! leader is killed the next deposit is acknowledged. All servers run on
//! loopback in this process, over TLS and mutual TLS.
//!
//! Run it with `cargo bench -p vmail-tests --bench cluster`; it prints
//! markdown for `docs/BENCHMARKS.md`. The reference in the same run is a
//! 4 KiB append plus `sync_data()`: the floor under one durable commit.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use vmail_node::client::{AuthClient, NewDeposit, VoicemailMeta};
use vmail_proto::keys::{MasterKey, SecretKey};
use vmail_proto::names::Recipients;
use vmail_tests::{TestCluster, identity, password};

/// (concurrency, total deposits)
const RUNS: [(usize, usize); 2] = [(1, 200), (16, 800)];
const FAILOVERS: usize = 5;
const SYNC_WRITES: u32 = 200;

fn deposit(n: usize) -> NewDeposit {
    NewDeposit {
        request_id: vmail_proto::random_bytes(),
        recipients: Recipients::parse(["alice"]).unwrap(),
        locator: format!("bench deposit {n}").into_bytes(),
        session_key: SecretKey::random(),
        meta: VoicemailMeta::default(),
    }
}

async fn sender(cluster: &TestCluster, user: &str) -> Result<(AuthClient, MasterKey)> {
    let mut c = cluster.client().await;
    let id = identity();
    c.register(user, &password(user), &id, None).await?;
    let s = c.login(user, &password(user), &id, &[]).await?;
    Ok((c, s.master_key))
}

/// Deposits per second with `conc` senders in flight.
async fn throughput(cluster: &TestCluster, conc: usize, total: usize) -> Result<f64> {
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for i in 0..conc {
        clients.push(sender(cluster, &format!("s{conc}x{i}")).await?);
    }
    let started = Instant::now();
    for (mut c, mk) in clients {
        tasks.push(tokio::spawn(async move {
            for n in 0..total / conc {
                c.deposit(&mk, &deposit(n)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn synced_write() -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let mut f = std::fs::File::create(dir.path().join("f"))?;
    let block = [0x5au8; 4096];
    let t = Instant::now();
    for _ in 0..SYNC_WRITES {
        f.write_all(&block)?;
        f.sync_data()?;
    }
    Ok(t.elapsed() / SYNC_WRITES)
}

async fn run() -> Result<()> {
    let sync = synced_write()?;
    println!("| measure | value |\n|---|---|");
    let mut rates = Vec::new();
    for n in [1, 3] {
        let mut cluster = TestCluster::start(n).await;
        sender(&cluster, "alice").await?;
        for (conc, total) in RUNS {
            let rate = throughput(&cluster, conc, total).await?;
            println!("| {n}-server group, {conc} in flight: deposits/s | {rate:.0} |");
            rates.push(((n, conc), rate));
        }
        cluster.stop().await;
    }
    for (conc, _) in RUNS {
        let one = rates.iter().find(|r| r.0 == (1, conc)).unwrap().1;
        let three = rates.iter().find(|r| r.0 == (3, conc)).unwrap().1;
        println!(
            "| 3 servers / 1 server, {conc} in flight (ratio) | {:.2} |",
            three / one
        );
    }
    println!(
        "| 4 KiB append + `sync_data()` (reference), ms | {:.3} |",
        sync.as_secs_f64() * 1e3
    );
    for (conc, _) in RUNS {
        let three = rates.iter().find(|r| r.0 == (3, conc)).unwrap().1;
        println!(
            "| 3-server deposit time / reference sync, {conc} in flight (ratio) | {:.1} |",
            (1.0 / three) / sync.as_secs_f64() * conc as f64
        );
    }

    // Failover: kill the leader, time the next acknowledged deposit.
    let mut times = Vec::new();
    for _ in 0..FAILOVERS {
        let mut cluster = TestCluster::start(3).await;
        sender(&cluster, "alice").await?;
        let (mut c, mk) = sender(&cluster, "bob").await?;
        c.deposit(&mk, &deposit(0)).await?;
        let leader = cluster.leader().await;
        let t = Instant::now();
        cluster.kill(leader).await;
        c.deposit(&mk, &deposit(1)).await?;
        times.push(t.elapsed());
        cluster.stop().await;
    }
    times.sort();
    ensure!(times.len() == FAILOVERS);
    println!(
        "| leader killed → next deposit acknowledged, median of {FAILOVERS}, s | {:.2} |",
        times[FAILOVERS / 2].as_secs_f64()
    );
    println!(
        "| same, worst of {FAILOVERS}, s | {:.2} |",
        times[FAILOVERS - 1].as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
