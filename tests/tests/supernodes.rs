//! Supernode adverts and election over real swarms on loopback: every peer
//! publishes signed adverts on gossipsub, checks the ones it hears, and
//! runs the pure election over them.

use std::time::{Duration, Instant};

use vmail_node::config::NodeConfig;
use vmail_node::election;
use vmail_node::localnet::JOIN_TIMEOUT;
use vmail_node::network::Role;
use vmail_node::peer::{Peer, PeerOptions};

const PEERS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_peers_agree_on_the_supernode_set_the_pure_election_gives() {
    let dir = tempfile::tempdir().unwrap();
    let mut peers: Vec<Peer> = Vec::new();
    let mut boot = Vec::new();
    for i in 0..PEERS {
        let mut config = NodeConfig::loopback();
        config.bootstrap = boot.clone();
        let sn = &mut config.supernode;
        // Every third peer is not publicly reachable, so never stands.
        sn.public = i % 3 != 0;
        sn.bandwidth_kbps = 50_000;
        sn.advert_interval_secs = 1;
        sn.peers_per_sn = 5;
        sn.min_uptime_secs = 0;
        sn.min_cpu_cores = 1;
        sn.min_memory_mib = 1;
        let peer = Peer::start(PeerOptions {
            data_dir: dir.path().join(format!("peer-{i}")),
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
        p.wait_for_peers(PEERS - 1, JOIN_TIMEOUT).await.unwrap();
    }

    let cfg = NodeConfig {
        supernode: vmail_node::config::SupernodeConfig {
            peers_per_sn: 5,
            min_uptime_secs: 0,
            min_cpu_cores: 1,
            min_memory_mib: 1,
            ..Default::default()
        },
        ..NodeConfig::loopback()
    }
    .supernode
    .election();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let agreed = loop {
        let mut views = Vec::new();
        for p in &peers {
            views.push(p.supernodes().await.unwrap().expect("a server peer elects"));
        }
        let complete = views.iter().all(|v| v.adverts.len() == PEERS);
        let first = &views[0].supernodes;
        if complete && !first.is_empty() && views.iter().all(|v| &v.supernodes == first) {
            break views;
        }
        if Instant::now() > deadline {
            let mut all: Vec<_> = views.iter().flat_map(|v| v.supernodes.clone()).collect();
            all.sort();
            all.dedup();
            for sn in &all {
                let seen: Vec<_> = views
                    .iter()
                    .map(|v| {
                        v.adverts
                            .iter()
                            .find(|a| a.peer_id == *sn)
                            .map(|a| (a.seq % 100_000, a.serving, a.issued_at % 1000))
                    })
                    .collect();
                eprintln!("{sn}: {seen:?}");
            }
            panic!(
                "no agreement after 60 s: {:?}",
                views
                    .iter()
                    .map(|v| (v.adverts.len(), v.supernodes.len()))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
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

    // Stable, and still fed: three seconds on, every peer holds adverts
    // from the last few seconds and elects the same set.
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
