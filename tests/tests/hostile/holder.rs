//! Attacks on holders: one peer taking every exchange slot, slow drips, racing stores of one id, and honest concurrency under load.
//!
//! The attacker is a real peer of the test net speaking the blob protocol on
//! raw streams, with a real storage grant from the auth group naming the
//! victim. The bounds it meets are `vmail_node::overlay::transfer::admission`'s;
//! racing stores of one identifier are the object store's unit and property
//! tests (`node/src/overlay/objects/race_tests.rs`).

use std::time::{Duration, Instant};

use futures::io::AsyncWriteExt;
use vmail_node::overlay::transfer::admission::{
    HEAVY_PER_PEER, REQUEST_TIMEOUT, RESERVED_PER_PEER, body_deadline,
};
use vmail_node::overlay::transfer::{BlobClient, Reply};
use vmail_node::peer::no_progress;
use vmail_tests::attacks::{ask, attack_stores, closed_within, raw_stream};
use vmail_tests::{TestNet, leave_request, random_content, register_and_login};

/// The attacker's account, with which it asks for storage grants.
async fn mallory(net: &TestNet) -> vmail_node::auth_client::AuthClient {
    register_and_login(&net.auth, "mallory").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_peer_stalling_stores_gets_its_share_and_honest_leaves_and_checks_go_on() {
    let net = TestNet::start(4).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let victim = net.peers[2].peer_id();
    let attacker = &net.peers[3];
    let victim_store = net.peers[2].store().expect("a holder").clone();

    // Eight granted stores of 12 MiB whose bodies never come: the victim
    // promises quota only up to the attacker's share, and says Busy to the
    // rest instead of reserving 96 MiB.
    let shard_len = 12 << 20;
    let mut stalled = Vec::new();
    let (mut ready, mut busy) = (0, 0);
    for request in attack_stores(&mut mallory(&net).await, victim, 8, shard_len).await {
        match ask(attacker.network(), victim, &request).await {
            (s, Reply::Ready) => {
                ready += 1;
                stalled.push(s);
            }
            (_, Reply::Busy { .. }) => busy += 1,
            (_, other) => panic!("unexpected reply {other:?}"),
        }
    }
    let (reserved, _) = victim_store.reserved();
    assert!(
        (1..=HEAVY_PER_PEER).contains(&ready),
        "{ready} stores ready"
    );
    assert_eq!(ready + busy, 8);
    assert!(
        reserved <= RESERVED_PER_PEER,
        "the attacker holds {reserved} bytes of quota reserved"
    );

    // Forty more streams that never send a request: more than the old 32
    // slots shared by everyone.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(raw_stream(attacker.network(), victim).await);
    }

    // Meanwhile an honest leave stores a shard on the victim, an honest
    // repair check reaches it, and the voicemail is fetched.
    let content = random_content(40_000);
    let receipt = net.peers[0]
        .leave(leave_request(&["alice"], content.clone(), 3), no_progress())
        .await
        .expect("an honest leave while the attack runs");
    let on_victim = receipt
        .shards
        .iter()
        .find(|s| s.holder == victim)
        .expect("the victim holds a shard");
    let (len, _) = BlobClient::new(net.peers[1].network())
        .has(victim, on_victim.id)
        .await
        .expect("an honest Has while the attack runs");
    assert!(
        len > content.len() as u64,
        "the shard's ciphertext length: {len}"
    );
    let got = net.peers[1]
        .fetch(receipt.voicemail_id, no_progress())
        .await
        .expect("an honest fetch while the attack runs");
    assert_eq!(got.content, content);

    // The silent streams are cut once their request is late.
    let start = Instant::now();
    for s in &mut silent {
        let left = (REQUEST_TIMEOUT + Duration::from_secs(3)).saturating_sub(start.elapsed());
        assert!(
            closed_within(s, left).await,
            "a stream that sent no request is still open"
        );
    }
    drop(stalled);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_drip_is_cut_at_the_minimum_rate_and_its_quota_released() {
    let net = TestNet::start(3).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let victim = net.peers[1].peer_id();
    let attacker = &net.peers[2];
    let victim_store = net.peers[1].store().expect("a holder").clone();

    let len = 64 * 1024;
    let request = attack_stores(&mut mallory(&net).await, victim, 1, len)
        .await
        .remove(0);
    let (mut s, reply) = ask(attacker.network(), victim, &request).await;
    assert!(matches!(reply, Reply::Ready), "{reply:?}");
    assert!(victim_store.reserved().0 > 0);

    // One byte every 100 ms: the old per-chunk timeout (30 s for each
    // 64 KiB) never fired on this.
    let limit = body_deadline(len) + Duration::from_secs(4);
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < limit {
        if closed_within(&mut s, Duration::from_millis(100)).await
            || s.write_all(&[0]).await.is_err()
            || s.flush().await.is_err()
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "a drip of 10 B/s still held its slot after {limit:?}");
    assert_eq!(
        victim_store.reserved(),
        (0, 0),
        "the quota promised is back"
    );

    // Honest stores go on.
    net.peers[0]
        .leave(
            leave_request(&["alice"], random_content(10_000), 2),
            no_progress(),
        )
        .await
        .expect("an honest leave after the drip");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_concurrent_honest_leaves_all_succeed() {
    let net = TestNet::start(5).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let contents: Vec<Vec<u8>> = (0..40).map(|_| random_content(2_000)).collect();
    let leaves = contents
        .iter()
        .map(|c| net.peers[0].leave(leave_request(&["alice"], c.clone(), 3), no_progress()));
    let results = futures::future::join_all(leaves).await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        failed.is_empty(),
        "{} leaves failed: {failed:?}",
        failed.len()
    );
    // Busy holders were waited for, not given up on.
    for r in &results {
        let r = r.as_ref().unwrap();
        assert!(r.failures.is_empty(), "{:?}", r.failures);
    }
    let first = results[0].as_ref().unwrap();
    let got = net.peers[1]
        .fetch(first.voicemail_id, no_progress())
        .await
        .expect("fetch");
    assert_eq!(got.content, contents[0]);
    net.stop().await;
}
