//! `vmail-devnet scale`: the overlay at N real peer processes on this
//! machine. For each size it starts a replicated auth group (in this
//! process) and N `vmail node run` processes on loopback, a share of them
//! declared reachable so that they stand for election, and measures with
//! the peers' own figures (their control sockets) and the kernel's:
//!
//! - start-up to convergence: every peer attached or serving, one elected
//!   set, every standing peer's advert held by all;
//! - memory per peer, and idle CPU and traffic per peer over a quiet window
//!   (bytes on the wire, advert payload, DHT requests);
//! - 1 MiB leaves and fetches through two daemons, and provider lookups
//!   from peers that hold nothing of the voicemail;
//! - re-attach after the busiest supernode is SIGKILLed.
//!
//! It prints one markdown row per size (see `docs/BENCHMARKS.md`).

mod procs;
pub mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use libp2p::PeerId;
use vmail_node::control::ControlClient;
use vmail_proto::control_pb as pb;

use crate::local_auth::{self, Harness, LocalServer};
use procs::{PeerProc, Shared};
use report::{Row, Standing};

/// Auth servers in the group.
const AUTH_SERVERS: usize = 3;
/// The users' password.
const PASSWORD: &str = "scale harness password";
/// Peers asked to look up each voicemail's first shard.
const LOOKUPS_PER_ROUND: usize = 5;

/// `vmail-devnet scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Sizes to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "20,50,100,200")]
    peers: Vec<usize>,
    /// Share of the peers that declare themselves reachable and stand.
    #[arg(long, default_value_t = 0.25)]
    standing: f64,
    /// `supernode.advert_interval_secs` of every peer.
    #[arg(long, default_value_t = 20)]
    advert_interval: u64,
    /// Leave-and-fetch rounds per size.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// The quiet window idle CPU and traffic are measured over, seconds.
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    /// `target_peers` of every peer (connected peers kept when idle); a
    /// large value turns pruning off, for a reference run.
    #[arg(long, default_value_t = 32)]
    target_peers: usize,
    /// How long to wait for convergence, in advert intervals.
    #[arg(long, default_value_t = 15)]
    converge_intervals: u64,
    /// Where the runs keep their data and logs (default: a temporary dir,
    /// removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs every size and prints the table.
pub async fn run(args: &ScaleArgs) -> anyhow::Result<()> {
    if args.peers.iter().any(|&n| !(4..=1000).contains(&n)) {
        bail!("--peers takes sizes from 4 to 1000");
    }
    if !(0.0..=1.0).contains(&args.standing) || args.standing * 4.0 < 1.0 / 1000.0 {
        bail!("--standing is a share from 0 to 1");
    }
    let vmail = std::env::current_exe()?.with_file_name("vmail");
    if !vmail.exists() {
        bail!(
            "{} is missing: build it beside vmail-devnet (`cargo build --release -p vmail-node -p vmail-devnet`)",
            vmail.display()
        );
    }
    let temp = tempfile::tempdir()?;
    let base = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let mut rows = Vec::new();
    for &n in &args.peers {
        let dir = base.join(format!("n{n}"));
        std::fs::create_dir_all(&dir)?;
        eprintln!("== {n} peers in {}", dir.display());
        let row = one_size(args, &vmail, &dir, n).await?;
        println!("{}\n{}", Row::HEADER, row.cells());
        rows.push(row);
    }
    println!("\n{}", Row::HEADER);
    for r in &rows {
        println!("{}", r.cells());
    }
    Ok(())
}

/// The peers of one run and their control connections.
struct Net {
    procs: Vec<PeerProc>,
    clients: Vec<ControlClient>,
    ids: Vec<String>,
}

impl Net {
    async fn statuses(&mut self, which: &[usize]) -> Vec<Option<pb::StatusResponse>> {
        let calls = self
            .clients
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| which.contains(i))
            .map(|(_, c)| async move { c.status().await.ok() });
        futures::future::join_all(calls).await
    }

    async fn stop(&mut self) {
        let stops = self.procs.iter_mut().map(PeerProc::stop);
        futures::future::join_all(stops).await;
    }
}

async fn one_size(args: &ScaleArgs, vmail: &Path, dir: &Path, n: usize) -> anyhow::Result<Row> {
    let servers = LocalServer::start_group_with(
        &dir.join("auth"),
        AUTH_SERVERS,
        &Harness::default(),
        local_auth::no_spam_limits,
    )
    .await
    .context("starting the auth group")?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &servers[0].ca_pem)?;
    let shared = Shared {
        vmail: vmail.to_owned(),
        env: vec![
            (
                "VMAIL_AUTH".into(),
                servers
                    .iter()
                    .map(|s| s.endpoint.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("VMAIL_CA".into(), ca.display().to_string()),
            (
                "VMAIL_CLUSTER_KEY".into(),
                hex::encode(servers[0].cluster_key.as_bytes()),
            ),
            ("VMAIL_PASSWORD".into(), PASSWORD.into()),
        ],
        advert_interval_secs: args.advert_interval,
        target_peers: args.target_peers,
    };
    let mut net = start(&shared, dir, n, args.standing).await?;
    let result = measure(args, &shared, &mut net).await;
    net.stop().await;
    for s in servers {
        let _ = s.stop().await;
    }
    result
}

/// Whether the `i`th peer (1-based) stands: spread evenly, `share` of all.
fn stands(i: usize, share: f64) -> bool {
    (i as f64 * share).floor() > ((i - 1) as f64 * share).floor()
}

/// Starts peer 1, then the others through it, all at once; returns once
/// every one answers on its control socket.
async fn start(shared: &Shared, dir: &Path, n: usize, share: f64) -> anyhow::Result<Net> {
    let mut first = PeerProc::spawn(shared, dir, 1, true, None)?;
    let mut c = first.connect().await?;
    let s = c.status().await?;
    let id = PeerId::from_bytes(&s.peer_id)?;
    let boot = format!(
        "{}/p2p/{id}",
        s.listen_addrs.first().context("peer 1 listens nowhere")?
    );
    let mut procs = vec![first];
    for i in 2..=n {
        procs.push(PeerProc::spawn(
            shared,
            dir,
            i,
            stands(i, share),
            Some(&boot),
        )?);
    }
    let mut clients = vec![c];
    let mut ids = vec![id.to_string()];
    for p in procs.iter_mut().skip(1) {
        let mut c = p.connect().await?;
        ids.push(PeerId::from_bytes(&c.status().await?.peer_id)?.to_string());
        clients.push(c);
    }
    Ok(Net {
        procs,
        clients,
        ids,
    })
}

async fn measure(args: &ScaleArgs, shared: &Shared, net: &mut Net) -> anyhow::Result<Row> {
    let n = net.procs.len();
    let all: Vec<usize> = (0..n).collect();
    let standing = net.procs.iter().filter(|p| p.standing).count();
    let interval = Duration::from_secs(args.advert_interval);
    let mut row = Row {
        peers: n,
        standing,
        interval_secs: args.advert_interval,
        ..Row::default()
    };

    // Convergence, from the moment every peer answered.
    let started = Instant::now();
    let deadline = started + interval * args.converge_intervals as u32;
    let mut last_report = started;
    let mut last: Vec<pb::StatusResponse> = Vec::new();
    while Instant::now() < deadline {
        let statuses: Vec<pb::StatusResponse> =
            net.statuses(&all).await.into_iter().flatten().collect();
        let standings: Vec<Standing> = statuses.iter().map(standing_of).collect();
        if statuses.len() == n && report::converged(&standings, standing) {
            row.converged = Some(started.elapsed());
            last = statuses;
            break;
        }
        if last_report.elapsed() > interval {
            let (sets, least, most, loose) = report::spread(&standings);
            eprintln!(
                "   {:>5.1} s: {sets} distinct sets, {least}..{most} of {standing} adverts held, {loose} peers unattached",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        last = statuses;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    row.supernodes = last.first().map_or(0, |s| s.supernodes.len());
    eprintln!(
        "   converged: {:?}, {} supernodes",
        row.converged, row.supernodes
    );

    // Quiet window: nobody polls the peers.
    let before: Vec<_> = net.procs.iter().map(PeerProc::usage).collect();
    let traffic_before = net.statuses(&all).await;
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let after: Vec<_> = net.procs.iter().map(PeerProc::usage).collect();
    let traffic_after = net.statuses(&all).await;
    let minutes = args.idle_secs as f64 / 60.0;
    for (b, a) in before.iter().zip(&after) {
        if let (Some(b), Some(a)) = (b, a) {
            let busy = a.cpu.saturating_sub(b.cpu).as_secs_f64();
            row.cpu_permille
                .push((busy / args.idle_secs as f64 * 1000.0).round() as u64);
            row.rss_kib.push(a.rss_kib);
        }
    }
    for (b, a) in traffic_before.iter().zip(&traffic_after) {
        if let (Some(b), Some(a)) = (b, a) {
            let rate = |x: u64, y: u64| (y.saturating_sub(x) as f64 / minutes) as u64;
            row.wire_bytes_min.push(rate(b.wire_bytes, a.wire_bytes));
            row.advert_bytes_min
                .push(rate(b.advert_bytes, a.advert_bytes));
            row.dht_requests_min
                .push(rate(b.dht_requests, a.dht_requests));
            row.connected_peers.push(u64::from(a.connected_peers));
        }
    }

    traffic(args, shared, net, &mut row).await?;
    if row.converged.is_some() {
        reattach(net, &last, &mut row).await;
    }
    Ok(row)
}

fn standing_of(s: &pb::StatusResponse) -> Standing {
    Standing {
        peer: PeerId::from_bytes(&s.peer_id).map_or_else(|_| String::new(), |p| p.to_string()),
        supernodes: s.supernodes.clone(),
        attached_to: s.attached_to.clone(),
        adverts: s.advertising_peers as usize,
    }
}

/// Bob (on the last peer) leaves 1 MiB for alice (on the one before) each
/// round; alice fetches and acks it; and peers that hold nothing of it look
/// up its first shard's providers.
async fn traffic(
    args: &ScaleArgs,
    shared: &Shared,
    net: &mut Net,
    row: &mut Row,
) -> anyhow::Result<()> {
    let n = net.procs.len();
    let (bob, alice) = (n - 1, n - 2);
    for (user, i) in [("bob", bob), ("alice", alice)] {
        let home = net.procs[i].home.clone();
        cli(shared, &home, &["account", "register", user]).await?;
        cli(shared, &home, &["login", user]).await?;
    }
    for round in 0..args.rounds {
        let content = vmail_node::core::wav::generate(32, 16_000, round as u64);
        let req = pb::LeaveRequest {
            recipients: vec!["alice".into()],
            content,
            content_type: "audio/wav".into(),
            duration_ms: 32_000,
            ..pb::LeaveRequest::default()
        };
        let t = Instant::now();
        let left = net.clients[bob]
            .leave(req, |_| {})
            .await
            .with_context(|| format!("round {round}: bob's leave"))?;
        row.leaves.push(t.elapsed());
        let id: [u8; 16] = left
            .voicemail_id
            .as_slice()
            .try_into()
            .context("a 16-byte voicemail id")?;
        let t = Instant::now();
        net.clients[alice]
            .fetch(id, |_| {})
            .await
            .with_context(|| format!("round {round}: alice's fetch"))?;
        row.fetches.push(t.elapsed());
        net.clients[alice].ack(id).await?;

        let Some(shard) = left.copies.first() else {
            continue;
        };
        let shard_id: [u8; 32] = shard
            .identifier
            .as_slice()
            .try_into()
            .context("a 32-byte shard id")?;
        let holders: Vec<String> = left
            .copies
            .iter()
            .filter_map(|c| PeerId::from_bytes(&c.holder).ok())
            .map(|p| p.to_string())
            .collect();
        let askers = (0..n)
            .map(|k| (round * 7 + k * 13) % n)
            .filter(|&k| !holders.contains(&net.ids[k]))
            .take(LOOKUPS_PER_ROUND)
            .collect::<Vec<_>>();
        for k in askers {
            let found = net.clients[k].find_providers(shard_id).await?;
            if found.providers.is_empty() {
                eprintln!("   round {round}: peer {} found no provider", k + 1);
            }
            row.lookups.push(Duration::from_micros(found.duration_us));
            row.lookup_requests.push(found.requests);
        }
    }
    Ok(())
}

/// SIGKILLs the supernode with the most attached peers and times its
/// orphans' re-attach.
async fn reattach(net: &mut Net, last: &[pb::StatusResponse], row: &mut Row) {
    let Some((victim, status)) = last
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| s.attached_peers.len())
    else {
        return;
    };
    let index: HashMap<&String, usize> =
        net.ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let orphans: Vec<usize> = status
        .attached_peers
        .iter()
        .filter_map(|p| index.get(p).copied())
        .collect();
    row.orphans = orphans.len();
    let killed = net.ids[victim].clone();
    eprintln!(
        "   killing supernode peer {} with {} attached",
        victim + 1,
        orphans.len()
    );
    let t = Instant::now();
    net.procs[victim].kill().await;
    let deadline = t + Duration::from_secs(60);
    while Instant::now() < deadline {
        let statuses = net.statuses(&orphans).await;
        let moved = statuses.iter().flatten().filter(|s| {
            !s.attached_to.is_empty() && s.attached_to != killed
                || s.supernodes.contains(&standing_of(s).peer)
        });
        if moved.count() == orphans.len() {
            row.reattach_wall = Some(t.elapsed());
            row.reattach = statuses
                .iter()
                .flatten()
                .map(|s| Duration::from_millis(s.last_reattach_ms))
                .collect();
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `vmail ARGS` as the user of `home`.
async fn cli(shared: &Shared, home: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(&shared.vmail)
        .args(args)
        .env("VMAIL_HOME", home)
        .envs(shared.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "vmail {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
