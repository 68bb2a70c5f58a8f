//! `vmail demo`: the whole system in one process on loopback, narrated as
//! a timeline. Everything is real: a group of three auth servers
//! replicating over Raft, TLS, OPAQUE with argon2id, twelve libp2p peers
//! with Kademlia, a gossiped supernode election with one supernode killed
//! and its peers re-attaching, Reed-Solomon shards of one ciphertext on
//! holders picked by the paper's score under a storage grant, three holders
//! and the auth leader killed before the last fetch, the lost shards
//! repaired, and every shard deleted after the last recipient's ack.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use vmail_node::auth_client::{AuthClient, AuthTarget};
use vmail_node::config::{PlacementConfig, SupernodeConfig};
use vmail_node::core::locator::Locator;
use vmail_node::core::wav;
use vmail_node::overlay::swarm::SupernodeView;
use vmail_node::peer::{LeaveRequest, Peer, Session, no_progress};
use vmail_proto::random_bytes;

use crate::local_auth::{self, LocalServer};
use crate::localnet;

/// Peers in the demo overlay: after the supernode is killed, the sender
/// still knows the 8 holders RS(4,8) needs, plus spares.
const PEERS: usize = 12;
/// Holders killed before the last fetch: more than a copy scheme with the
/// same storage (two copies) could lose, fewer than RS(4,8)'s four.
const HOLDERS_KILLED: usize = 3;
/// Auth servers in the demo group.
const AUTH_SERVERS: usize = 3;
/// Length of the generated voicemail.
const SECONDS: u32 = 30;

struct Timeline(Instant);

impl Timeline {
    fn step(&self, text: &str) {
        let t = self.0.elapsed();
        println!("\n[{:>6.2} s] {text}", t.as_secs_f64());
    }
}

fn short(b: &[u8]) -> String {
    hex::encode(&b[..8.min(b.len())])
}

/// Runs the demo: the whole system, narrated, exiting with an error unless
/// every check passed.
pub async fn run() -> anyhow::Result<()> {
    let tl = Timeline(Instant::now());
    let tmp = tempfile::tempdir().context("creating a temporary data dir")?;
    tl.step(&format!(
        "auth group: auth-1 founds it (CA, cluster signing key, OPAQUE setup, data key); \
         {} more join over mutual TLS, as learners then voters",
        AUTH_SERVERS - 1
    ));
    let mut auth = localnet::start_auth_group(&tmp.path().join("auth"), AUTH_SERVERS).await?;
    let leader = auth
        .iter()
        .find(|s| s.service.is_leader())
        .map(|s| s.service.config().name.clone())
        .unwrap_or_default();
    for s in &auth {
        let m = s.member();
        println!(
            "  {} api {} (TLS), raft {} (mutual TLS)",
            m.name, m.api_url, m.raft_url
        );
    }
    println!("  Raft leader: {leader}");
    tl.step("the auth servers make the group's signing key by FROST key generation through their Raft log; clients and holders pin it");
    let group_key = local_auth::group_key(&auth, Duration::from_secs(60)).await?;
    println!(
        "  group key {}: each server holds a share, any 2 of the 3 sign, none holds it whole; \
         certificates, grants, deposit proofs and delete orders carry its signature beside the cluster key's",
        short(group_key.as_bytes())
    );
    tl.step(&format!(
        "{PEERS} peers join a Kademlia overlay (/vmail/kad/1.0.0) on loopback"
    ));
    let cluster_key = local_auth::target_of(&auth).cluster_key;
    let mut peers = localnet::start_peers(
        &tmp.path().join("peers"),
        PEERS,
        Vec::new(),
        &cluster_key,
        |c| {
            c.group_key = Some(hex::encode(group_key.as_bytes()));
            c.supernode = SupernodeConfig {
                public: Some(true),
                bandwidth_kbps: 50_000,
                advert_interval_secs: 1,
                heartbeat_ms: 250,
                peers_per_sn: 4,
                min_cpu_cores: 1,
                min_memory_mib: 1,
                min_uptime_secs: 0,
                ..SupernodeConfig::default()
            };
            c.placement = PlacementConfig {
                repair_interval_secs: 2,
                repair_grace_secs: 0,
                ..PlacementConfig::default()
            };
        },
    )
    .await?;
    for p in &peers {
        println!("  {}", p.peer_id());
    }
    supernodes(&tl, &mut peers).await?;
    let target = AuthTarget {
        group_key: Some(group_key),
        ..local_auth::target_of(&auth)
    };
    let result = narrate(&tl, &target, peers, &mut auth).await;
    for s in auth {
        s.stop().await?;
    }
    result?;
    tl.step("demo finished: every check passed");
    Ok(())
}

/// Every peer's view once `done` holds for all of them (30 s at most).
async fn views_when(
    peers: &[Peer],
    what: &str,
    done: impl Fn(&[SupernodeView], &[Peer]) -> bool,
) -> anyhow::Result<Vec<SupernodeView>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for p in peers {
            views.push(p.supernodes().await?.context("a server peer elects")?);
        }
        if done(&views, peers) {
            return Ok(views);
        }
        ensure!(
            Instant::now() < deadline,
            "{what} did not happen within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The election, then one supernode killed and its peers re-attaching.
async fn supernodes(tl: &Timeline, peers: &mut Vec<Peer>) -> anyhow::Result<()> {
    tl.step("every peer gossips a signed advert each second; all run the same pure election (one supernode per 4 peers)");
    let views = views_when(peers, "the election", |views, peers| {
        let ids: Vec<_> = peers.iter().map(Peer::peer_id).collect();
        localnet::settled(views, &ids)
    })
    .await?;
    let sns = views[0].supernodes.clone();
    for sn in &sns {
        let attached = views.iter().filter(|v| v.attached_to == Some(*sn)).count();
        println!("  supernode {sn}: {attached} peer(s) attached by RTT and load");
    }
    let victim = *sns
        .iter()
        .max_by_key(|sn| views.iter().filter(|v| v.attached_to == Some(**sn)).count())
        .context("a supernode")?;
    let orphans: Vec<_> = views
        .iter()
        .zip(peers.iter())
        .filter(|(v, _)| v.attached_to == Some(victim))
        .map(|(_, p)| p.peer_id())
        .collect();
    tl.step(&format!(
        "supernode {victim} is killed without warning; its {} peer(s) must re-attach",
        orphans.len()
    ));
    let index = peers
        .iter()
        .position(|p| p.peer_id() == victim)
        .context("the supernode is a demo peer")?;
    peers.remove(index).stop().await;
    let views = views_when(peers, "re-attaching", |views, peers| {
        views.iter().zip(peers).all(|(v, p)| {
            !orphans.contains(&p.peer_id()) || v.attached_to.is_some_and(|s| s != victim)
        })
    })
    .await?;
    for (v, p) in views.iter().zip(peers.iter()) {
        if let (true, Some(sn), Some(took)) = (
            orphans.contains(&p.peer_id()),
            v.attached_to,
            v.last_reattach,
        ) {
            println!(
                "  {} re-attached to {sn} in {} ms",
                p.peer_id(),
                took.as_millis()
            );
        }
    }
    Ok(())
}

async fn login(target: &AuthTarget, peer: &Peer, user: &str) -> anyhow::Result<()> {
    let identity = SigningKey::from_bytes(&random_bytes());
    let password = format!("{user}: correct horse battery staple");
    let mut client = AuthClient::connect(target).await?;
    client
        .register(user, password.as_bytes(), &identity, None)
        .await?;
    let login = client
        .login(
            user,
            password.as_bytes(),
            &identity,
            &peer.peer_id().to_bytes(),
        )
        .await?;
    peer.set_session(Session {
        login,
        identity,
        target: target.clone(),
    });
    Ok(())
}

async fn narrate(
    tl: &Timeline,
    target: &AuthTarget,
    mut peers: Vec<Peer>,
    auth: &mut Vec<LocalServer>,
) -> anyhow::Result<()> {
    tl.step("alice, bob and carol register (OPAQUE: the server never sees a password) and log in on peers 1-3");
    for (i, user) in ["bob", "alice", "carol"].iter().enumerate() {
        login(target, &peers[i], user).await?;
        println!(
            "  {user} on peer {}: master key negotiated, certificate binds the peer id and carries the group's 2-of-3 signature",
            i + 1
        );
    }

    let audio = wav::generate(SECONDS, 16_000, 7);
    let original = Sha256::digest(&audio);
    tl.step(&format!(
        "bob leaves a {SECONDS}-second WAV ({} bytes, SHA-256 {}) for alice and carol",
        audio.len(),
        short(&original)
    ));
    let receipt = peers[0]
        .leave(
            LeaveRequest {
                recipients: vec!["alice".into(), "carol".into()],
                content: audio.clone(),
                content_type: "audio/wav".into(),
                duration_ms: u64::from(SECONDS) * 1000,
                redundancy: None,
                sender: vmail_node::auth_client::SenderVisibility::Shown,
            },
            no_progress(),
        )
        .await?;
    println!(
        "  session key from HKDF(master key, salt, time, recipients); encrypted once: {} bytes of AES-256-GCM segments",
        receipt.ciphertext_len
    );
    println!(
        "  {} over the ciphertext: {} shards of {} bytes, any {} rebuild it; holders ranked by a*e*c/max(f,1)",
        receipt.redundancy,
        receipt.shards.len(),
        receipt.shard_len,
        receipt.redundancy.k()
    );
    for c in &receipt.shards {
        println!(
            "  shard {} id {} at {} (identifier inside its range)",
            c.index,
            short(&c.id),
            c.holder
        );
    }
    println!(
        "  the group (2 of the 3 servers) granted exactly these shards on these holders, and every holder checked both signatures offline"
    );
    println!(
        "  deposited the locator and the session key split {}-of-{AUTH_SERVERS} among the auth servers, each share sealed to that server's own key: voicemail {} (dht {:?}, crypto {:?}, grant {:?}, transfer {:?}, deposit {:?})",
        vmail_proto::share::threshold(AUTH_SERVERS),
        hex::encode(receipt.voicemail_id),
        receipt.timings.dht,
        receipt.timings.crypto,
        receipt.timings.grant,
        receipt.timings.transfer,
        receipt.timings.auth
    );
    let stored: u64 = peers
        .iter()
        .filter_map(|p| p.store())
        .map(|s| s.usage().1)
        .sum();
    println!(
        "  bytes on all holders: {stored} = {:.2} x one ciphertext, not one copy per recipient",
        stored as f64 / receipt.ciphertext_len as f64
    );

    tl.step("alice fetches: the locator from the auth group, and the key from 2 of the 3 servers' shares (each resealed to her login's inbox key) while k shards are fetched in parallel, hashes checked, decoded, decrypted");
    let got = peers[1].fetch(receipt.voicemail_id, no_progress()).await?;
    ensure!(
        Sha256::digest(&got.content) == original,
        "alice's copy differs from the original"
    );
    peers[1].ack(receipt.voicemail_id).await?;
    println!(
        "  shards {:?}; SHA-256 matches the original; acked",
        got.holders.iter().map(|(i, _)| *i).collect::<Vec<_>>()
    );

    // Kill holders other than carol's and bob's peers, so her fetch must
    // route around them and repair has work to do.
    let spared = [peers[0].peer_id(), peers[2].peer_id()];
    let victims: Vec<_> = receipt
        .shards
        .iter()
        .filter(|c| !spared.contains(&c.holder))
        .take(HOLDERS_KILLED)
        .copied()
        .collect();
    tl.step(&format!(
        "{} holders are killed without warning (shards {:?})",
        victims.len(),
        victims.iter().map(|c| c.index).collect::<Vec<_>>()
    ));
    for v in &victims {
        let index = peers
            .iter()
            .position(|p| p.peer_id() == v.holder)
            .context("the holder is one of the demo peers")?;
        peers.remove(index).stop().await;
        println!("  {} is gone", v.holder);
    }
    let killed = Instant::now();

    let at = auth
        .iter()
        .position(|s| s.service.is_leader())
        .context("the auth group has a leader")?;
    let dead = auth.remove(at);
    let name = dead.service.config().name.clone();
    tl.step(&format!(
        "the auth leader {name} is killed without warning; the other two elect a new leader"
    ));
    dead.kill().await;
    let started = Instant::now();
    let new_leader = loop {
        if let Some(s) = auth.iter().find(|s| s.service.is_leader()) {
            break s.service.config().name.clone();
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "no new auth leader within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("  {new_leader} leads after {:?}", started.elapsed());

    tl.step("carol fetches after both deaths: her client fails over to a live auth server, and the two live servers' shares rebuild the key");
    let started = Instant::now();
    let carol_peer = spared[1];
    let carol = peers
        .iter()
        .find(|p| p.peer_id() == carol_peer)
        .context("carol's peer")?;
    let got = carol.fetch(receipt.voicemail_id, no_progress()).await?;
    ensure!(
        Sha256::digest(&got.content) == original,
        "carol's copy differs from the original"
    );
    for f in &got.failures {
        println!("  skipped: {f}");
    }
    println!(
        "  rebuilt from shards {:?} in {:?}; SHA-256 matches the original",
        got.holders.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        started.elapsed()
    );
    tl.step("repair: the surviving holders find shards missing, rebuild them from any 4 (ciphertext only, no key), and store each under its old identifier at the peer now closest to it (the demo sets the grace period to 0; by default a shard must be missing for a day)");
    let locator = Locator::decode(&got.pending.locator)?;
    let held_by = |id: &[u8; 32]| {
        peers
            .iter()
            .find(|p| p.store().is_some_and(|s| s.get(id).is_some()))
    };
    loop {
        if locator
            .layout
            .shards
            .iter()
            .all(|s| held_by(&s.id).is_some())
        {
            break;
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(90),
            "repair did not restore every shard within 90 s of the kills"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for v in &victims {
        let id = locator.layout.shards[usize::from(v.index)].id;
        if let Some(p) = held_by(&id) {
            println!("  shard {} regenerated at {}", v.index, p.peer_id());
        }
    }
    println!(
        "  all {} shards held again {:.1} s after the holders died; the locator at the auth servers is unchanged",
        locator.layout.shards.len(),
        killed.elapsed().as_secs_f64()
    );

    tl.step("carol acks: she is the last recipient, so the group erases the session key's shares and 2 of the 3 servers sign a delete order; her peer hands it to every holder, which checks it offline, deletes its shard and keeps a tombstone");
    let started = Instant::now();
    let acked = carol.ack(receipt.voicemail_id).await?;
    ensure!(
        acked.key_erased,
        "the session key's shares should be erased after the last recipient's ack"
    );
    let left = locator
        .layout
        .shards
        .iter()
        .filter(|s| held_by(&s.id).is_some())
        .count();
    let tombstones: usize = peers
        .iter()
        .filter_map(|p| p.store())
        .map(|s| s.stats().tombstones)
        .sum();
    ensure!(
        left == 0,
        "{left} shard(s) still held after the delete order"
    );
    println!(
        "  {} shard(s) deleted in {:?}, {} holder(s) missed; no peer holds any shard; {tombstones} tombstone(s) refuse them back until the grant expires",
        acked.shards_deleted,
        started.elapsed(),
        acked.holders_missed
    );
    for p in peers {
        tokio::time::timeout(Duration::from_secs(10), p.stop())
            .await
            .ok();
    }
    Ok(())
}
