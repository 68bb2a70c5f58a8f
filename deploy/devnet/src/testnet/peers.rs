//! The testnet's peers: their supernode settings (the same election
//! settings for them and for a user's own `vmail node run`, through
//! `DIR/node.toml`), their ports kept across `down` and `up`, and the wait
//! until they have elected supernodes.
//!
//! Each peer keeps its data in `DIR/peers/peer-N/` (its key, hence its id,
//! is `node.key` there) and, beside it, `peer-N.port`: the loopback TCP
//! port it was first given, which it listens on again after a restart, so
//! that `VMAIL_BOOTSTRAP` and every routing table that knew it stay right.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ed25519_dalek::VerifyingKey;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use vmail_node::config::SupernodeConfig;
use vmail_node::peer::Peer;
use vmail_node::supernode::standing::standing;

use super::write_atomic;
use crate::localnet;

/// Seconds between adverts. An advert then counts for 4 × 2 + 2 = 10 s
/// (`SupernodeConfig::election`), so a supernode that stops is replaced
/// about 10 s later.
const ADVERT_INTERVAL_SECS: u64 = 2;
/// Seconds up before a peer may stand: two advert periods.
const MIN_UPTIME_SECS: u64 = 4;
/// What each peer declares as its upload bandwidth, kbit/s: 100 Mbit/s.
/// The peers talk over loopback, which carried 7.8 Gbit/s of plain TCP
/// (1 GiB between two Python sockets) on a 2-core machine, so the figure
/// is a floor, not a boast.
const BANDWIDTH_KBPS: u64 = 100_000;
/// The thresholds a testnet peer must meet besides bandwidth and uptime.
/// All peers run on one machine and each advertises its cores and memory,
/// so these are the machine's: 1 core and 512 MiB let a small VM elect.
const MIN_CPU_CORES: u32 = 1;
const MIN_MEMORY_MIB: u64 = 512;
/// How long `up` waits for the peers to elect and attach.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a recorded port that is still held is retried before `up`
/// gives up on it.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);
/// The file `vmail node run` reads the testnet's election settings from.
pub(super) const USER_CONFIG: &str = "node.toml";

/// The election settings every peer of the testnet uses, a user's own
/// daemon included; everything else is the default.
fn election_settings() -> SupernodeConfig {
    SupernodeConfig {
        advert_interval_secs: ADVERT_INTERVAL_SECS,
        min_uptime_secs: MIN_UPTIME_SECS,
        min_cpu_cores: MIN_CPU_CORES,
        min_memory_mib: MIN_MEMORY_MIB,
        ..SupernodeConfig::default()
    }
}

/// A testnet peer's `[supernode]`: the election settings, and what it
/// declares. It listens on loopback, where every other peer can dial it,
/// so it declares itself public; each other peer still dial-checks the
/// claim before it counts.
pub(super) fn peer_settings() -> SupernodeConfig {
    SupernodeConfig {
        public: Some(true),
        bandwidth_kbps: BANDWIDTH_KBPS,
        ..election_settings()
    }
}

/// `DIR/node.toml` for a user's own `vmail node run`: the election settings
/// and nothing else, so the daemon takes part in the same election and
/// declares nothing about itself.
pub(super) fn user_node_toml() -> String {
    let s = election_settings();
    format!(
        "# Written by `vmail testnet up`. Every peer of one overlay must elect\n\
         # with the same settings; `vmail node run` reads this file when\n\
         # VMAIL_NODE_CONFIG (or --config) names it. It declares nothing about\n\
         # your peer: add `public` or `bandwidth_kbps` to let it stand.\n\
         [supernode]\n\
         advert_interval_secs = {}\n\
         peers_per_sn = {}\n\
         min_sns = {}\n\
         max_sns = {}\n\
         min_cpu_cores = {}\n\
         min_memory_mib = {}\n\
         min_bandwidth_kbps = {}\n\
         min_uptime_secs = {}\n",
        s.advert_interval_secs,
        s.peers_per_sn,
        s.min_sns,
        s.max_sns,
        s.min_cpu_cores,
        s.min_memory_mib,
        s.min_bandwidth_kbps,
        s.min_uptime_secs,
    )
}

/// Peer N's port file.
fn port_file(peers_dir: &Path, i: usize) -> PathBuf {
    peers_dir.join(format!("peer-{i}.port"))
}

/// The port peer `i` was first given, if it ran before.
fn recorded_port(peers_dir: &Path, i: usize) -> anyhow::Result<Option<u16>> {
    let path = port_file(peers_dir, i);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    match text.trim().parse() {
        Ok(port) => Ok(Some(port)),
        Err(_) => bail!(
            "{} is damaged: expected a port number, found {text:?}; delete it to give peer-{i} a new port",
            path.display()
        ),
    }
}

/// Waits until `port` on loopback can be bound, or says who to ask.
async fn wait_free(peers_dir: &Path, i: usize, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + REBIND_TIMEOUT;
    loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => bail!(
                "peer-{i} cannot listen on its port 127.0.0.1:{port} again ({e}): another process \
                 holds it. Peers keep their ports so that VMAIL_BOOTSTRAP and the daemons that \
                 knew them stay right; stop that process (`ss -ltnp 'sport = :{port}'` names it), \
                 or delete {} to give peer-{i} a new port (daemons started before must then be \
                 restarted if it was peer-1)",
                port_file(peers_dir, i).display()
            ),
        }
    }
}

/// The loopback TCP port among `addrs`.
fn tcp_port(addrs: &[Multiaddr]) -> Option<u16> {
    addrs.iter().find_map(|a| {
        a.iter().find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
    })
}

/// Starts `n` peers in `peers_dir`, each on the port it had before (a new
/// one the first time, then recorded), pinning the group key when there
/// is one.
pub(super) async fn start(
    peers_dir: &Path,
    n: usize,
    cluster_key: &VerifyingKey,
    group_key: Option<&VerifyingKey>,
) -> anyhow::Result<Vec<Peer>> {
    std::fs::create_dir_all(peers_dir)?;
    let mut ports = Vec::with_capacity(n);
    for i in 1..=n {
        let port = recorded_port(peers_dir, i)?;
        if let Some(port) = port {
            wait_free(peers_dir, i, port).await?;
        }
        ports.push(port);
    }
    let peers = localnet::start_peers_each(peers_dir, n, Vec::new(), cluster_key, |i, c| {
        c.supernode = peer_settings();
        c.group_key = group_key.map(|k| hex::encode(k.as_bytes()));
        if let Some(port) = ports[i - 1] {
            c.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("valid")];
        }
    })
    .await
    .context("starting the testnet's peers")?;
    for (i, peer) in (1..).zip(&peers) {
        let addrs = peer.listen_addrs().await?;
        let port = tcp_port(&addrs).context("a testnet peer listens on no TCP port")?;
        if ports[i - 1] != Some(port) {
            write_atomic(&port_file(peers_dir, i), &format!("{port}\n"))?;
        }
        println!("peer-{i} {} at 127.0.0.1:{port}", peer.peer_id());
    }
    Ok(peers)
}

/// Waits until the peers agree on a non-empty supernode set and every
/// other peer is attached to one of them; returns a line saying who
/// serves. The error says why no peer stands, as peer-1 sees it.
pub(super) async fn wait_settled(peers: &[Peer]) -> anyhow::Result<String> {
    let ids: Vec<PeerId> = peers.iter().map(Peer::peer_id).collect();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let started = Instant::now();
    loop {
        let mut views = Vec::with_capacity(peers.len());
        for p in peers {
            views.push(p.supernodes().await?.context("a testnet peer elects")?);
        }
        if localnet::settled(&views, &ids) {
            let names: Vec<String> = views[0]
                .supernodes
                .iter()
                .map(|sn| {
                    let i = ids.iter().position(|id| id == sn).map_or(0, |i| i + 1);
                    format!("peer-{i} ({sn})")
                })
                .collect();
            return Ok(format!(
                "supernodes {} elected after {:.1} s; the other {} peers attached",
                names.join(", "),
                started.elapsed().as_secs_f64(),
                peers.len() - names.len()
            ));
        }
        if Instant::now() > deadline {
            let v = &views[0];
            let s = standing(
                &v.adverts,
                v.own.as_ref(),
                &peer_settings().election().thresholds,
            );
            let own: Vec<String> = s.own.iter().flatten().map(ToString::to_string).collect();
            bail!(
                "the testnet's peers did not settle on supernodes within {SETTLE_TIMEOUT:?}: \
                 peer-1 sees {} elected, {} of {} advertising peers qualified, {} confirmed \
                 public by dialing, {} undialable; peer-1 itself misses: {}",
                v.supernodes.len(),
                s.qualified,
                v.adverts.len(),
                s.confirmed_public,
                v.undialable.len(),
                if own.is_empty() {
                    "nothing".to_owned()
                } else {
                    own.join("; ")
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_node_toml_elects_like_the_peers_and_declares_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(USER_CONFIG);
        std::fs::write(&file, user_node_toml()).unwrap();
        let user = vmail_node::config::NodeConfig::load(dir.path(), Some(&file)).unwrap();
        assert_eq!(user.supernode.election(), peer_settings().election());
        assert_eq!(user.supernode.advert_interval_secs, ADVERT_INTERVAL_SECS);
        assert_eq!(user.supernode.public, None);
        assert_eq!(user.supernode.bandwidth_kbps, 0);
        // The peers qualify by what they declare.
        let p = peer_settings();
        assert!(p.bandwidth_kbps >= p.min_bandwidth_kbps);
        assert_eq!(p.public, Some(true));
    }
}
