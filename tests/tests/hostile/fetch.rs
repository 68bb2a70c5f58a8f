//! Attacks on fetch and the provider records: Sybil providers that hide a
//! holder, a flooded provider store.
//!
//! The attackers are real libp2p swarms speaking the overlay's Kademlia
//! protocol (`/vmail/kad/1.0.0`) in client mode, so they never enter a
//! routing table, only announce.

use std::time::Duration;

use libp2p::kad::{KBucketKey, RecordKey};
use libp2p::{PeerId, identity};
use vmail_node::auth_client::NewDeposit;
use vmail_node::config::DEFAULT_MAX_ADDRS_PER_RECORD;
use vmail_node::core::locator::Locator;
use vmail_node::overlay::swarm::providers::ProviderStats;
use vmail_node::peer::{Peer, no_progress};
use vmail_tests::attacks::{announce, drive, ground_keys, kad_attacker, kad_contacts};
use vmail_tests::{TestNet, granted, leave_request, random_content, register_and_login};

/// Waits (10 s at most) until `peer`'s provider store has seen at least
/// `records` remote records, held or refused.
async fn wait_seen(peer: &Peer, records: u64) -> ProviderStats {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = peer.network().provider_stats().await.unwrap();
        if s.remote as u64 + s.refused_far + s.refused_full >= records
            || tokio::time::Instant::now() > deadline
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deposits `locator` again for `to`, from a fresh sender, with the session
/// key and metadata of a voicemail `to` already fetched: a second
/// voicemail on the very same shards.
async fn redeposit(
    net: &TestNet,
    sender: &str,
    to: &str,
    fetched: &vmail_node::peer::Fetched,
    locator: &Locator,
) -> [u8; 16] {
    let (mut client, _, _) = register_and_login(&net.auth, sender).await;
    let d = granted(
        &mut client,
        NewDeposit {
            grant_serial: 0,
            request_id: vmail_proto::random_bytes(),
            recipients: vmail_proto::names::Recipients::parse([to]).expect("a valid name"),
            locator: locator.encode(),
            session_key: fetched.session_key.clone(),
            share_keys: Vec::new(),
            meta: fetched.pending.meta.clone(),
        },
    )
    .await;
    client.deposit(&d).await.expect("deposit").voicemail_id
}

/// 24 Sybils, their ids ground closer to a shard's identifier than its
/// holder, announce it: without a bound a closest-first provider list
/// drops the holder for them, and a lookup that stops at its first answer
/// (this peer's own store) names only Sybils. The fetch still succeeds:
/// through the locator's hint, and with no hint or a hint naming a Sybil,
/// through the gathered providers and the closest peers, each asked `Has`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sybil_providers_do_not_hide_a_holder() {
    let net = TestNet::start(4).await;
    net.login(0, "bob").await;
    let alice_id = net.login(1, "alice").await;
    let content = random_content(40_000);
    let left = net.peers[0]
        .leave(leave_request(&["alice"], content.clone(), 1), no_progress())
        .await
        .expect("leave");
    let shard = left.shards[0];
    let holder = shard.holder;
    let key = RecordKey::new(&shard.id);
    // Alice fetches on a peer that neither left nor holds the voicemail.
    let at = (1..4)
        .find(|&i| net.peers[i].peer_id() != holder)
        .expect("a peer that is not the holder");
    if at != 1 {
        net.relogin(at, "alice", &alice_id).await;
    }
    let alice = &net.peers[at];

    let peers: Vec<&Peer> = net.peers.iter().collect();
    let contacts = kad_contacts(&peers).await;
    let sybil_keys = ground_keys(&key, holder, 24, 2_000_000);
    assert_eq!(
        sybil_keys.len(),
        24,
        "could not grind 24 ids closer than the holder"
    );
    let sybil_ids: Vec<PeerId> = sybil_keys.iter().map(|k| k.public().to_peer_id()).collect();
    let mut sybils = Vec::new();
    for k in sybil_keys {
        let mut sybil = kad_attacker(k, &contacts, 0);
        announce(&mut sybil, std::slice::from_ref(&key)).await;
        sybils.push(drive(sybil));
    }
    // The bound: at most K remote providers per key, so some of the 24
    // Sybils were refused.
    let stats = wait_seen(alice, 24).await;
    assert!(stats.refused_full > 0, "{stats:?}");
    let held = alice.network().held_providers(key.clone()).await.unwrap();
    assert!(
        held.len() <= 20,
        "{} providers held for one key",
        held.len()
    );

    // With the hint.
    let got = alice
        .fetch(left.voicemail_id, no_progress())
        .await
        .expect("fetch through the hint");
    assert_eq!(got.content, content);
    assert_eq!(got.holders, [(0, holder)]);
    let mut locator = Locator::decode(&got.pending.locator).unwrap();
    assert_eq!(locator.holders, [holder.to_bytes()]);

    // No hint: the search must find the holder among the Sybils.
    locator.holders.clear();
    let bare = redeposit(&net, "carol", "alice", &got, &locator).await;
    let again = alice
        .fetch(bare, no_progress())
        .await
        .expect("fetch with no hint");
    assert_eq!(again.content, content);
    assert_eq!(again.holders, [(0, holder)]);

    // A hint naming a Sybil (or a holder gone): one failed request, then
    // the search.
    locator.holders = vec![sybil_ids[0].to_bytes()];
    let lied = redeposit(&net, "dave", "alice", &got, &locator).await;
    let third = alice
        .fetch(lied, no_progress())
        .await
        .expect("fetch past a wrong hint");
    assert_eq!(third.content, content);
    assert_eq!(third.holders, [(0, holder)]);

    // Honest traffic meanwhile: a new leave and fetch.
    let more = random_content(20_000);
    let r = net.peers[0]
        .leave(leave_request(&["alice"], more.clone(), 2), no_progress())
        .await
        .expect("honest leave");
    let got = alice
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("honest fetch");
    assert_eq!(got.content, more);
    net.stop().await;
}

/// One peer announces 150 keys, each with 300 addresses, to a small net
/// whose peers take records only for keys they are the closest to and at
/// most 16 from one source: the far keys are refused, the source cap and
/// the address cap hold, and the victim's own announcements and an honest
/// leave and fetch still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_flood_meets_the_caps_and_far_keys_are_refused() {
    let net = TestNet::start_with(3, |c| {
        c.providers.closer_peers = 1;
        c.providers.max_records_per_peer = 16;
    })
    .await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let victim = &net.peers[0];
    let me = KBucketKey::from(victim.peer_id());
    let others: Vec<KBucketKey<PeerId>> = victim
        .network()
        .routing_peers()
        .await
        .unwrap()
        .into_iter()
        .map(KBucketKey::from)
        .collect();
    assert!(!others.is_empty(), "the victim knows the other peers");

    let peers: Vec<&Peer> = net.peers.iter().collect();
    let mut flooder = kad_attacker(
        identity::Keypair::generate_ed25519(),
        &kad_contacts(&peers).await,
        300,
    );
    let keys: Vec<RecordKey> = (0..150)
        .map(|_| RecordKey::new(&vmail_proto::random_bytes::<32>()))
        .collect();
    announce(&mut flooder, &keys).await;
    let flooder_id = *flooder.local_peer_id();
    let flooding = drive(flooder);
    wait_seen(victim, keys.len() as u64).await;

    let far = |k: &RecordKey| {
        let t = KBucketKey::new(k.clone());
        let ours = me.distance(&t);
        others.iter().any(|o| o.distance(&t) < ours)
    };
    let stats = victim.network().provider_stats().await.unwrap();
    assert!(stats.refused_far > 0, "{stats:?}");
    assert!(stats.largest_source <= 16, "{stats:?}");
    assert!(
        stats.most_addrs <= DEFAULT_MAX_ADDRS_PER_RECORD,
        "{stats:?}"
    );
    let mut held_near = 0;
    for k in &keys {
        let held = victim.network().held_providers(k.clone()).await.unwrap();
        let from_flooder = held.iter().filter(|r| r.provider == flooder_id).count();
        if far(k) {
            assert_eq!(from_flooder, 0, "a far key's record was kept");
        } else {
            held_near += from_flooder;
        }
    }
    assert!(held_near <= 16, "{held_near} records from one source");

    // The victim's own announcement is taken and found.
    let own = RecordKey::new(&vmail_proto::random_bytes::<32>());
    victim
        .network()
        .start_providing(own.clone())
        .await
        .expect("own announcement");
    let found = net.peers[1].network().providers(own).await.unwrap();
    assert!(found.contains(&victim.peer_id()), "{found:?}");

    // Honest traffic.
    let content = random_content(30_000);
    let r = victim
        .leave(leave_request(&["alice"], content.clone(), 2), no_progress())
        .await
        .expect("honest leave");
    let got = net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("honest fetch");
    assert_eq!(got.content, content);
    flooding.abort();
    net.stop().await;
}
