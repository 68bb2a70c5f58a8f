//! Attacks on supernode election and gossip: heartbeat floods, forged reports, Sybil adverts, relay reservations and the control socket.
//!
//! Each attack runs on real swarms on loopback (the attackers are bare
//! libp2p swarms speaking our protocols), asserts its bound, and checks
//! that honest peers are still served while it runs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, gossipsub, identity, noise, relay, tcp, yamux};
use vmail_node::config::{NodeConfig, SupernodeConfig};
use vmail_node::control::{self, ControlClient};
use vmail_node::overlay::swarm::scoring::GRAYLIST_THRESHOLD;
use vmail_node::overlay::swarm::{ADVERT_TOPIC, Role, SupernodeView};
use vmail_node::peer::{Peer, PeerOptions, Session};
use vmail_node::supernode::advert::{ADVERT_VERSION, Advert, Reachability};
use vmail_node::supernode::attach::{
    MAX_REPORTS, MAX_SUBJECTS_PER_REPORTER, Observation, SN_PROTOCOL, SnRequest, SnResponse,
};
use vmail_node::supernode::budget::{MAX_CHECKS_IN_FLIGHT, MAX_QUEUED_CHECKS_PER_SOURCE};
use vmail_tests::{TestAuth, identity as user_identity, password};

fn sn_config(public: bool, bootstrap: Vec<Multiaddr>) -> NodeConfig {
    let mut c = NodeConfig::loopback();
    c.bootstrap = bootstrap;
    c.supernode = SupernodeConfig {
        public: Some(public),
        bandwidth_kbps: 50_000,
        advert_interval_secs: 1,
        heartbeat_ms: 250,
        peers_per_sn: 32,
        min_uptime_secs: 0,
        min_cpu_cores: 1,
        min_memory_mib: 1,
        hole_punching: false,
        ..SupernodeConfig::default()
    };
    c
}

async fn start(dir: &Path, name: &str, config: NodeConfig) -> Peer {
    Peer::start(PeerOptions {
        data_dir: dir.join(name),
        config,
        role: Role::Server,
        observations: None,
    })
    .await
    .unwrap()
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

type SnBehaviour = request_response::cbor::Behaviour<SnRequest, SnResponse>;

/// A bare swarm that speaks only the supernode protocol.
fn sn_speaker(key: identity::Keypair) -> libp2p::Swarm<SnBehaviour> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                request_response::cbor::codec::Codec::default()
                    .set_request_size_maximum(64 * 1024)
                    .set_response_size_maximum(64 * 1024),
                [(SN_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Sends `requests` to `to` on `swarm` and waits for all the answers.
async fn ask_all(
    swarm: &mut libp2p::Swarm<SnBehaviour>,
    to: PeerId,
    requests: Vec<SnRequest>,
) -> Vec<SnResponse> {
    let mut pending = std::collections::HashSet::new();
    for r in requests {
        pending.insert(swarm.behaviour_mut().send_request(&to, r));
    }
    let mut answers = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    while !pending.is_empty() {
        tokio::select! {
            _ = &mut deadline => panic!("{} requests unanswered", pending.len()),
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { request_id, response },
                    ..
                }) => {
                    pending.remove(&request_id);
                    answers.push(response);
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                    panic!("request failed: {error}")
                }
                _ => {}
            }
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_flood_with_forged_reports_neither_sinks_nor_promotes_and_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let sn = start(dir.path(), "sn", sn_config(true, vec![])).await;
    let boot = sn.listen_addrs().await.unwrap();
    // The Sybil starts before the honest holder, so without reports it
    // ranks at least as high (a longer uptime, the same free space).
    let sybil = start(dir.path(), "sybil", sn_config(false, boot.clone())).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let honest = start(dir.path(), "honest", sn_config(false, boot.clone())).await;
    let r1 = start(dir.path(), "r1", sn_config(false, boot.clone())).await;
    let r2 = start(dir.path(), "r2", sn_config(false, boot.clone())).await;
    let (h, s) = (honest.peer_id(), sybil.peer_id());
    until(60, "four peers attached", async || {
        let v = view(&sn).await;
        // Only the supernode stands and advertises; the four hand their
        // adverts over in heartbeats, for recommendations.
        let known = sn
            .network()
            .recommend(10, Vec::new())
            .await
            .unwrap_or_default();
        (v.supernodes == vec![sn.peer_id()]
            && v.attached_peers.len() == 4
            && v.adverts.len() == 1
            && known.len() == 4)
            .then_some(())
    })
    .await;
    // Two honest reporters saw the honest holder work.
    for r in [&r1, &r2] {
        for _ in 0..5 {
            r.network().observe(h, true).await;
        }
    }

    // The attacker attaches, then floods heartbeats: each says the honest
    // holder failed u32::MAX times, the Sybil worked u32::MAX times, and
    // names 62 random peers.
    let mut attacker = sn_speaker(identity::Keypair::generate_ed25519());
    attacker.dial(boot[0].clone()).unwrap();
    let attached = ask_all(&mut attacker, sn.peer_id(), vec![SnRequest::Attach]).await;
    assert!(
        matches!(attached[0], SnResponse::Attached { .. }),
        "{attached:?}"
    );
    let forged = || {
        let mut reports = vec![
            Observation {
                peer: h,
                ok: 0,
                failed: u32::MAX,
            },
            Observation {
                peer: s,
                ok: u32::MAX,
                failed: 0,
            },
        ];
        reports.extend((2..MAX_REPORTS).map(|_| Observation {
            peer: PeerId::random(),
            ok: u32::MAX,
            failed: 0,
        }));
        SnRequest::Heartbeat {
            reports,
            advert: None,
        }
    };
    let mut sent = 0;
    for _ in 0..10 {
        let burst: Vec<SnRequest> = (0..30).map(|_| forged()).collect();
        sent += burst.len();
        let answers = ask_all(&mut attacker, sn.peer_id(), burst).await;
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, SnResponse::Alive { .. }))
        );
        let v = view(&sn).await;
        assert!(
            v.tables.reports <= MAX_SUBJECTS_PER_REPORTER + 16,
            "{} tallies after {sent} forged heartbeats",
            v.tables.reports
        );
    }
    let v = view(&sn).await;
    assert!(
        v.tables.early_heartbeats > 0,
        "no heartbeat was rate limited"
    );
    assert_eq!(v.attached_peers.len(), 5);

    // The honest reports arrive with the reporters' next heartbeats. While
    // the attacker stays attached and keeps lying, the holder still ranks
    // above the Sybil, and reporters are still served.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answers = ask_all(&mut attacker, sn.peer_id(), vec![forged()]).await;
        assert!(
            matches!(answers[0], SnResponse::Alive { .. }),
            "{answers:?}"
        );
        assert_eq!(view(&sn).await.attached_peers.len(), 5);
        let got = r1.network().recommend(10, Vec::new()).await.unwrap();
        let rank = |p| got.iter().position(|q| *q == p).unwrap();
        if rank(h) < rank(s) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Sybil still ranks above the honest holder: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mine = sn.network().recommend(10, Vec::new()).await.unwrap();
    let (ph, ps) = (
        mine.iter().position(|p| *p == h).unwrap(),
        mine.iter().position(|p| *p == s).unwrap(),
    );
    assert!(ph < ps, "{mine:?}");
    assert_eq!(view(&sn).await.attached_peers.len(), 5);
    drop(attacker);
    for p in [sn, sybil, honest, r1, r2] {
        p.stop().await;
    }
}

/// A bare swarm that speaks only gossipsub on the advert topic.
fn gossiper(key: identity::Keypair, dial: Multiaddr) -> libp2p::Swarm<gossipsub::Behaviour> {
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
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let topic = gossipsub::IdentTopic::new(ADVERT_TOPIC);
    swarm.behaviour_mut().subscribe(&topic).unwrap();
    swarm.dial(dial).unwrap();
    swarm
}

/// A strong, valid advert of `key`'s peer claiming a public address.
fn sybil_advert(key: &identity::Keypair, seq: u64) -> Vec<u8> {
    let now = vmail_proto::unix_now();
    Advert {
        version: ADVERT_VERSION,
        peer_id: key.public().to_peer_id(),
        seq,
        issued_at: now,
        reachability: Reachability::Configured,
        cpu_cores: 64,
        memory_mib: 1 << 20,
        bandwidth_kbps: 10_000_000,
        uptime_secs: 1_000_000,
        load: 0,
        free_storage: 1 << 40,
        serving: true,
    }
    .sign(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sybil_and_invalid_adverts_cost_their_sender_and_the_tables_stay_capped() {
    const CAP: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let capped = |mut c: NodeConfig| {
        c.supernode.max_tracked_peers = CAP;
        c
    };
    let victim = start(dir.path(), "victim", capped(sn_config(true, vec![]))).await;
    let boot = victim.listen_addrs().await.unwrap();
    let other = start(dir.path(), "other", capped(sn_config(true, boot.clone()))).await;
    let (v_id, o_id) = (victim.peer_id(), other.peer_id());
    // Both adverts held, the other peer's claim to be public confirmed by
    // a dial check, and the two agree on the supernode.
    let before = until(60, "both peers hold both confirmed adverts", async || {
        let v = view(&victim).await;
        let o = view(&other).await;
        let confirmed = v
            .adverts
            .iter()
            .any(|a| a.peer_id == o_id && a.reachability.is_public());
        (confirmed
            && v.adverts.len() == 2
            && !v.supernodes.is_empty()
            && v.supernodes == o.supernodes)
            .then_some(v.supernodes)
    })
    .await;

    // Ten Sybils, each with a valid advert claiming a public address it
    // does not have, re-published every 200 ms; and one peer publishing
    // garbage.
    let topic = gossipsub::IdentTopic::new(ADVERT_TOPIC);
    let mut sybils: Vec<(identity::Keypair, libp2p::Swarm<gossipsub::Behaviour>)> = (0..10)
        .map(|_| {
            let key = identity::Keypair::generate_ed25519();
            let swarm = gossiper(key.clone(), boot[0].clone());
            (key, swarm)
        })
        .collect();
    let liar_key = identity::Keypair::generate_ed25519();
    let liar = liar_key.public().to_peer_id();
    let mut liar_swarm = gossiper(liar_key, boot[0].clone());
    let mut seq = 0;
    let mut published = 0;
    let mut garbage = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut worst = view(&victim).await;
    let mut score = None;
    while Instant::now() < deadline {
        seq += 1;
        for (key, swarm) in &mut sybils {
            if swarm
                .behaviour_mut()
                .publish(topic.clone(), sybil_advert(key, seq))
                .is_ok()
            {
                published += 1;
            }
        }
        if liar_swarm
            .behaviour_mut()
            .publish(topic.clone(), format!("not an advert {seq}").into_bytes())
            .is_ok()
        {
            garbage += 1;
        }
        // Let every swarm run a little.
        let run = async {
            loop {
                tokio::select! {
                    _ = liar_swarm.select_next_some() => {}
                    _ = futures::future::select_all(
                        sybils.iter_mut().map(|(_, s)| Box::pin(s.select_next_some()))
                    ) => {}
                }
            }
        };
        tokio::select! {
            _ = run => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let v = view(&victim).await;
        let t = v.tables;
        assert!(t.adverts <= CAP, "{t:?}");
        assert!(t.checks <= CAP, "{t:?}");
        assert!(t.looked_up <= CAP, "{t:?}");
        assert!(t.peer_addrs <= CAP, "{t:?}");
        assert!(t.probes <= MAX_CHECKS_IN_FLIGHT, "{t:?}");
        assert!(
            t.queued_checks <= 12 * MAX_QUEUED_CHECKS_PER_SOURCE,
            "{t:?}"
        );
        score = victim.network().gossip_score(liar).await.unwrap();
        worst = v;
        if published >= 200 && garbage >= 5 && score.is_some_and(|s| s < GRAYLIST_THRESHOLD) {
            break;
        }
    }
    let score = score.expect("the victim keeps gossipsub scores");
    assert!(
        score < GRAYLIST_THRESHOLD,
        "the liar's score is {score} after {garbage} garbage adverts"
    );
    assert!(worst.rejected >= 3, "{}", worst.rejected);
    // Honest traffic: the other honest peer keeps its advert, its
    // standing and its score on the victim; the election is unchanged.
    let v = view(&victim).await;
    assert!(v.adverts.iter().any(|a| a.peer_id == o_id), "{v:?}");
    assert!(v.adverts.iter().any(|a| a.peer_id == v_id), "{v:?}");
    assert_eq!(v.supernodes, before);
    let honest = victim.network().gossip_score(o_id).await.unwrap();
    assert!(honest.is_some_and(|s| s >= 0.0), "{honest:?}");
    drop(sybils);
    drop(liar_swarm);
    for p in [victim, other] {
        p.stop().await;
    }
}

/// A bare swarm that is only a relay client.
fn relay_user(key: identity::Keypair) -> libp2p::Swarm<relay::client::Behaviour> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_, relay_client| relay_client)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_not_attached_gets_no_relay_reservation_while_an_attached_one_is_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let sn = start(dir.path(), "sn", sn_config(true, vec![])).await;
    let sn_addr = sn.listen_addrs().await.unwrap()[0].clone();
    let sn_id = sn.peer_id();
    // An honest peer nobody can dial: it attaches and reserves.
    let mut hidden_config = sn_config(false, vec![sn_addr.clone()]);
    hidden_config.listen.clear();
    let hidden = start(dir.path(), "hidden", hidden_config).await;
    let hidden_id = hidden.peer_id();
    let relayed = until(30, "the attached peer's reservation", async || {
        let v = view(&hidden).await;
        (v.attached_to == Some(sn_id))
            .then_some(v.relay_addr)
            .flatten()
    })
    .await;

    // The attacker connects and asks for reservations without attaching.
    let mut attacker = relay_user(identity::Keypair::generate_ed25519());
    let circuit = sn_addr
        .clone()
        .with(libp2p::multiaddr::Protocol::P2pCircuit);
    let mut refused = 0;
    let mut granted = 0;
    for _ in 0..3 {
        let listener = attacker.listen_on(circuit.clone()).unwrap();
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => panic!("no answer to the reservation"),
                event = attacker.select_next_some() => match event {
                    SwarmEvent::Behaviour(relay::client::Event::ReservationReqAccepted { .. }) => {
                        granted += 1;
                        attacker.remove_listener(listener);
                        break;
                    }
                    SwarmEvent::ListenerClosed { listener_id, .. } if listener_id == listener => {
                        refused += 1;
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    assert_eq!(granted, 0, "a peer that never attached got a reservation");
    assert_eq!(refused, 3);

    // Meanwhile the attached peer is reachable through its reservation,
    // even by the attacker.
    attacker.dial(relayed.clone()).unwrap();
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => panic!("the attached peer is not reachable at {relayed}"),
            event = attacker.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == hidden_id => break,
                _ => {}
            }
        }
    }
    let v = view(&hidden).await;
    assert_eq!(v.relay_addr, Some(relayed));
    drop(attacker);
    for p in [sn, hidden] {
        p.stop().await;
    }
}

/// Connects to `socket` as uid `uid` (a Python child that drops to it),
/// sends the HTTP/2 preface, and says how many bytes the server answered
/// before closing (0: the connection was refused).
fn bytes_answered_as(uid: u32, socket: &Path) -> usize {
    let script = format!(
        r#"
import os, socket
os.setgid({uid}); os.setuid({uid})
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect({path:?})
try:
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    print(len(s.recv(4096)))
except (BrokenPipeError, ConnectionResetError):
    print(0)
"#,
        path = socket.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_refuses_other_users_and_sessions_for_another_cluster() {
    use std::os::unix::fs::PermissionsExt;
    let auth = TestAuth::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("peer");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = NodeConfig::loopback();
    config.cluster_key = auth.node_config().cluster_key;
    let peer = Arc::new(
        Peer::start(PeerOptions {
            data_dir: data.clone(),
            config,
            role: Role::Client,
            observations: None,
        })
        .await
        .unwrap(),
    );
    let socket = data.join(control::SOCKET_FILE);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let (peer, socket) = (peer.clone(), socket.clone());
        async move {
            control::serve(peer, &socket, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    let mut client = until(10, "the control socket", async || {
        ControlClient::connect(&socket).await.ok()
    })
    .await;
    // The directory was made private.
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    // Another user, let in by an operator who loosened the modes, is
    // refused on its credentials; this user is answered.
    // This process's uid: the owner of the directory it just made private.
    let own = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&data).unwrap());
    if own == 0 {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            bytes_answered_as(65534, &socket),
            0,
            "another uid was served"
        );
        assert!(bytes_answered_as(0, &socket) > 0, "this uid was not served");
    }

    // A session for another cluster: its own key and a certificate that
    // key signed, self-consistent, but not this peer's cluster.
    let mut c = auth.client().await;
    let id = user_identity();
    c.register("alice", &password("alice"), &id, None)
        .await
        .unwrap();
    let login = c
        .login("alice", &password("alice"), &id, &peer.peer_id().to_bytes())
        .await
        .unwrap();
    let honest = Session {
        login,
        identity: id.clone(),
        target: auth.target(),
    };
    let rogue_cluster = user_identity();
    let cert = &honest.login.certificate;
    let rogue_cert = vmail_proto::cert::CertificateBody {
        serial: cert.serial,
        username: cert.username.clone(),
        identity_key: cert.identity_key,
        peer_id: cert.peer_id.clone(),
        not_before: cert.not_before,
        not_after: cert.not_after,
    }
    .sign(&rogue_cluster);
    let mut rogue = honest.clone();
    rogue.login.certificate = rogue_cert;
    rogue.target.cluster_key = rogue_cluster.verifying_key();
    rogue.target.endpoints = vec!["https://127.0.0.1:1".into()];
    let err = client.set_session(&rogue).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    assert!(err.to_string().contains("cluster key"), "{err}");
    // Only the key swapped: the certificate does not prove it.
    let mut swapped = honest.clone();
    swapped.target.cluster_key = rogue_cluster.verifying_key();
    let err = client.set_session(&swapped).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    // The honest session is taken, and the peer still talks to its cluster.
    client.set_session(&honest).await.unwrap();
    assert!(client.inbox().await.unwrap().is_empty());
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
