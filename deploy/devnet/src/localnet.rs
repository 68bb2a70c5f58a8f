//! A whole vmail system in one process on loopback: a replicated group of
//! auth servers and N peers that join each other. `vmail-devnet demo`, the
//! local testnet (its peers) and the integration tests run it; every part is
//! the real component.

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use libp2p::{Multiaddr, PeerId};
use vmail_node::config::NodeConfig;
use vmail_node::overlay::swarm::NetworkError;
use vmail_node::overlay::swarm::{Role, SupernodeView};
use vmail_node::peer::{Peer, PeerOptions, StartError};

use crate::local_auth::{Harness, LocalServer, LocalServerError};

/// How long started peers get to fill their routing tables.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the local system could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalNetError {
    /// The auth server.
    #[error(transparent)]
    Auth(#[from] LocalServerError),
    /// A peer did not start.
    #[error(transparent)]
    Peer(#[from] StartError),
    /// A peer's network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The peers did not find each other in time.
    #[error("peer {index} knows only {have} of {want} peers after {JOIN_TIMEOUT:?}")]
    Join {
        /// Which peer.
        index: usize,
        /// Peers it knows.
        have: usize,
        /// Peers it should know.
        want: usize,
    },
}

/// Starts a replicated group of `n` auth servers in `dir/auth-1` ..
/// `dir/auth-n`: auth-1 founds it and the others join over mutual TLS.
pub async fn start_auth_group(dir: &Path, n: usize) -> Result<Vec<LocalServer>, LocalNetError> {
    Ok(LocalServer::start_group(dir, n, &Harness::default()).await?)
}

/// Starts `n` server peers with data dirs `dir/peer-1` .. `dir/peer-n` on
/// loopback TCP, holding what the group with `cluster_key` grants. The
/// first joins through `bootstrap` (may be empty), the rest through the
/// first. Returns once every peer knows the others.
pub async fn start_peers(
    dir: &Path,
    n: usize,
    bootstrap: Vec<Multiaddr>,
    cluster_key: &VerifyingKey,
    tune: impl Fn(&mut NodeConfig),
) -> Result<Vec<Peer>, LocalNetError> {
    start_peers_each(dir, n, bootstrap, cluster_key, |_, c| tune(c)).await
}

/// [`start_peers`], with `tune(i, config)` adjusting peer `i` (1 to `n`).
pub async fn start_peers_each(
    dir: &Path,
    n: usize,
    bootstrap: Vec<Multiaddr>,
    cluster_key: &VerifyingKey,
    tune: impl Fn(usize, &mut NodeConfig),
) -> Result<Vec<Peer>, LocalNetError> {
    let mut peers: Vec<Peer> = Vec::with_capacity(n);
    let mut boot = bootstrap;
    for i in 1..=n {
        let mut config = NodeConfig::loopback();
        config.bootstrap = boot.clone();
        config.cluster_key = Some(hex::encode(cluster_key.as_bytes()));
        tune(i, &mut config);
        let peer = Peer::start(PeerOptions {
            data_dir: dir.join(format!("peer-{i}")),
            config,
            role: Role::Server,
            observations: None,
        })
        .await?;
        if i == 1 {
            boot = peer.listen_addrs().await?;
        }
        peers.push(peer);
    }
    let want = n.saturating_sub(1);
    for (index, peer) in peers.iter().enumerate() {
        let have = peer.wait_for_peers(want, JOIN_TIMEOUT).await?;
        if have < want {
            return Err(LocalNetError::Join {
                index: index + 1,
                have,
                want,
            });
        }
    }
    Ok(peers)
}

/// Whether the peers `ids` (with `views[i]` the view of `ids[i]`) all elect
/// the same non-empty set and every one outside it is attached to a member.
pub fn settled(views: &[SupernodeView], ids: &[PeerId]) -> bool {
    let Some(sns) = views.first().map(|v| &v.supernodes) else {
        return false;
    };
    !sns.is_empty()
        && views.iter().zip(ids).all(|(v, id)| {
            &v.supernodes == sns
                && (sns.contains(id) || v.attached_to.is_some_and(|s| sns.contains(&s)))
        })
}
