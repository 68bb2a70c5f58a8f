//! Supernode adverts and election over real swarms on loopback: every peer
//! publishes signed adverts on gossipsub, checks the ones it hears, and
//! runs the pure election over them.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::{Multiaddr, gossipsub, identity, noise, tcp, yamux};
use vmail_node::advert::{ADVERT_VERSION, Advert, Reachability};
use vmail_node::config::NodeConfig;
use vmail_node::election;
use vmail_node::localnet::JOIN_TIMEOUT;
use vmail_node::network::Role;
use vmail_node::peer::{Peer, PeerOptions};

const PEERS: usize = 20;

/// Starts `n` server peers that join through the first, with adverts every
/// second and thresholds any loopback peer meets; `public(i)` says which
/// may stand.
async fn start_peers(
    dir: &std::path::Path,
    n: usize,
    peers_per_sn: usize,
    public: impl Fn(usize) -> bool,
) -> Vec<Peer> {
    let mut peers: Vec<Peer> = Vec::new();
    let mut boot = Vec::new();
    for i in 0..n {
        let mut config = NodeConfig::loopback();
        config.bootstrap = boot.clone();
        config.supernode = supernode_config(peers_per_sn);
        config.supernode.public = public(i);
        let peer = Peer::start(PeerOptions {
            data_dir: dir.join(format!("peer-{i}")),
            config,
            role: Role::Server,
        })
        .await
        .unwrap();
        if i == 0 {
            boot = peer.listen_addrs().await.unwrap();
        }
        peers.push(peer);
    }
    for p in &peers {
        p.wait_for_peers(n - 1, JOIN_TIMEOUT).await.unwrap();
    }
    peers
}

fn supernode_config(peers_per_sn: usize) -> vmail_node::config::SupernodeConfig {
    vmail_node::config::SupernodeConfig {
        bandwidth_kbps: 50_000,
        advert_interval_secs: 1,
        peers_per_sn,
        min_uptime_secs: 0,
        min_cpu_cores: 1,
        min_memory_mib: 1,
        ..Default::default()
    }
}

/// Waits (60 s at most) until every peer holds `n` adverts and all elect
/// the same non-empty set; returns the views.
async fn agreement(peers: &[Peer], n: usize) -> Vec<vmail_node::network::SupernodeView> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut views = Vec::new();
        for p in peers {
            views.push(p.supernodes().await.unwrap().expect("a server peer elects"));
        }
        let first = &views[0].supernodes;
        if views.iter().all(|v| v.adverts.len() == n)
            && !first.is_empty()
            && views.iter().all(|v| &v.supernodes == first)
        {
            return views;
        }
        assert!(
            Instant::now() < deadline,
            "no agreement after 60 s: {:?}",
            views
                .iter()
                .map(|v| (v.adverts.len(), v.supernodes.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_peers_agree_on_the_supernode_set_the_pure_election_gives() {
    let dir = tempfile::tempdir().unwrap();
    // Every third peer is not publicly reachable, so never stands.
    let peers = start_peers(dir.path(), PEERS, 5, |i| i % 3 != 0).await;
    let cfg = supernode_config(5).election();
    let started = Instant::now();
    let agreed = agreement(&peers, PEERS).await;
    eprintln!("converged in {:?}", started.elapsed());

    let sns = &agreed[0].supernodes;
    // 20 advertising peers, one supernode per 5: four, all public.
    assert_eq!(sns.len(), 4, "{sns:?}");
    let now = vmail_proto::unix_now();
    for v in &agreed {
        assert_eq!(&election::elect(&v.adverts, now, &cfg), sns);
        assert_eq!(v.rejected, 0);
    }
    for (i, p) in peers.iter().enumerate() {
        if sns.contains(&p.network().local_peer_id()) {
            assert!(i % 3 != 0, "peer {i} is not public but was elected");
        }
    }

    // Stable, and still fed: three seconds on, every peer elects the same
    // set and holds no advert older than 20 s (adverts go out every
    // second; the bound leaves room for a loaded machine).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = vmail_proto::unix_now();
    for p in &peers {
        let v = p.supernodes().await.unwrap().unwrap();
        assert_eq!(&v.supernodes, sns, "the supernode set changed");
        let oldest = v.adverts.iter().map(|a| a.issued_at).min().unwrap();
        assert!(
            now - oldest <= 4,
            "an advert {} s old is still held",
            now - oldest
        );
    }
    for p in peers {
        p.stop().await;
    }
}

/// A peer that speaks gossipsub on the advert topic and nothing else: it
/// publishes whatever bytes it is given.
async fn attacker(key: identity::Keypair, dial: Multiaddr) -> libp2p::Swarm<gossipsub::Behaviour> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossipsub::Config::default(),
            )
            .unwrap()
        })
        .unwrap()
        .build();
    let topic = gossipsub::IdentTopic::new(vmail_node::network::ADVERT_TOPIC);
    swarm.behaviour_mut().subscribe(&topic).unwrap();
    swarm.dial(dial).unwrap();
    swarm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_out_of_range_and_garbage_adverts_are_rejected_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let peers = start_peers(dir.path(), 4, 2, |_| true).await;
    let before = agreement(&peers, 4).await[0].supernodes.clone();
    let victim = peers[1].network().local_peer_id();
    let now = vmail_proto::unix_now();

    let key = identity::Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let strong = |peer_id, issued_at, cpu_cores| Advert {
        version: ADVERT_VERSION,
        peer_id,
        seq: 1,
        issued_at,
        reachability: Reachability::Configured,
        cpu_cores,
        memory_mib: 1 << 20,
        bandwidth_kbps: 10_000_000,
        uptime_secs: 1_000_000,
        load: 0,
        free_storage: 1 << 40,
        serving: true,
    };
    let bad: Vec<Vec<u8>> = vec![
        // The victim's id, the attacker's key.
        strong(victim, now, 64).sign(&key),
        // Its own advert, but ten minutes old.
        strong(me, now - 600, 64).sign(&key),
        // Its own, with an impossible core count.
        strong(me, now, 1_000_000).sign(&key),
        // Not an advert at all.
        b"\x01\x02 not postcard".to_vec(),
    ];
    let mut swarm = attacker(key, peers[0].listen_addrs().await.unwrap()[0].clone()).await;
    let topic = gossipsub::IdentTopic::new(vmail_node::network::ADVERT_TOPIC);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while sent < bad.len() {
        assert!(Instant::now() < deadline, "the attacker could not publish");
        tokio::select! {
            _ = swarm.select_next_some() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if swarm.behaviour_mut().publish(topic.clone(), bad[sent].clone()).is_ok() {
                    sent += 1;
                }
            }
        }
    }
    // Keep the attacker's swarm running while the peers judge its adverts.
    let judged = async {
        loop {
            let v = peers[0].supernodes().await.unwrap().unwrap();
            if v.rejected >= bad.len() as u64 {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let view = tokio::select! {
        v = judged => v,
        _ = async { loop { swarm.select_next_some().await; } } => unreachable!(),
        _ = tokio::time::sleep(Duration::from_secs(30)) => panic!("the adverts were not all judged"),
    };
    assert_eq!(view.rejected, bad.len() as u64);
    assert!(view.adverts.iter().all(|a| a.peer_id != me));
    let victims = view.adverts.iter().find(|a| a.peer_id == victim).unwrap();
    assert_ne!(
        victims.cpu_cores, 64,
        "the forged advert replaced the victim's"
    );
    drop(swarm);
    let after = agreement(&peers, 4).await[0].supernodes.clone();
    assert_eq!(before, after);
    for p in peers {
        p.stop().await;
    }
}
