//! Placement, erasure coding and repair on real peers on loopback: a fetch
//! with n − k holders dead, repair bringing a voicemail back to n shards, a
//! corrupt shard caught and its holder scored down, a holder without room
//! replaced, and a locator whose shard count is wrong refused clearly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use sha2::{Digest, Sha256};
use vmail_node::auth_client::{NewDeposit, VoicemailMeta};
use vmail_node::config::{NodeConfig, PlacementConfig};
use vmail_node::core::erasure::Redundancy;
use vmail_node::core::locator::{LOCATOR_VERSION, Layout, Locator, ShardRef, UNDISCLOSED};
use vmail_node::overlay::objects::{ObjectMeta, ObjectStore};
use vmail_node::overlay::swarm::Role;
use vmail_node::peer::upload_plan::HolderFailure;
use vmail_node::peer::{FetchError, FetchFailure, LeaveReceipt, no_progress};
use vmail_proto::keys::SecretKey;
use vmail_proto::names::Recipients;
use vmail_tests::{
    TestNet, churn, granted, leave_coded, login_on, random_content, register_and_login, start_peer,
};

/// The holders of `r`'s shards, other than the peers in `spare`.
fn holders_except(r: &LeaveReceipt, spare: &[PeerId]) -> Vec<PeerId> {
    r.shards
        .iter()
        .map(|s| s.holder)
        .filter(|h| !spare.contains(h))
        .collect()
}

/// Shards of `r` held by a running peer.
fn held(net: &TestNet, r: &LeaveReceipt) -> usize {
    r.shards
        .iter()
        .filter(|s| {
            net.peers
                .iter()
                .any(|p| p.store().is_some_and(|st| st.get(&s.id).is_some()))
        })
        .count()
}

/// `n` peers configured by `tune`, with bob logged in on peer 0 (the
/// sender) and alice on peer 1.
async fn bob_and_alice(n: usize, tune: impl Fn(&mut NodeConfig)) -> TestNet {
    let net = TestNet::start_with(n, tune).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    net
}

/// `n` peers that check for lost shards every second and regenerate those
/// missing for `grace_secs`; bob on peer 0, alice on peer 1.
async fn repairing_net(n: usize, grace_secs: u64) -> TestNet {
    bob_and_alice(n, |c| {
        c.placement = PlacementConfig {
            repair_interval_secs: 1,
            repair_grace_secs: grace_secs,
            ..PlacementConfig::default()
        };
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_rs_4_8_survives_four_dead_holders_but_not_five() {
    let mut net = bob_and_alice(11, |_| {}).await;
    let content = random_content(300_000);
    let mut req = leave_coded(&["alice"], content.clone(), 1, 2);
    req.redundancy = None;
    let r = net.peers[0].leave(req, no_progress()).await.expect("leave");
    assert_eq!(r.redundancy, Redundancy::DEFAULT, "the default is RS(4,8)");
    assert_eq!(r.shards.len(), 8);
    let mut distinct: Vec<PeerId> = r.shards.iter().map(|s| s.holder).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 8, "one shard per holder");
    // About twice the ciphertext, not eight copies of it.
    let overhead = (r.shard_len * 8) as f64 / r.ciphertext_len as f64;
    assert!((2.0..2.01).contains(&overhead), "{overhead}");

    let keep = [net.peers[0].peer_id(), net.peers[1].peer_id()];
    let doomed = holders_except(&r, &keep);
    for h in doomed.iter().take(4) {
        net.kill(*h).await;
    }
    let got = net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("four of eight shards are enough");
    assert_eq!(got.content, content);
    assert_eq!(got.holders.len(), 4);
    assert!(got.holders.iter().all(|(_, h)| !doomed[..4].contains(h)));

    net.kill(doomed[4]).await;
    let err = net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::AllCopiesFailed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot be rebuilt") && msg.contains("stays in your inbox"),
        "{msg}"
    );
    assert!(msg.contains("3 of the 4 shards needed"), "{msg}");
    assert_eq!(net.peers[1].inbox().await.unwrap().len(), 1);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_regenerates_lost_shards_under_their_old_identifiers() {
    let mut net = repairing_net(9, 0).await;
    let content = random_content(200_000);
    let r = net.peers[0]
        .leave(
            leave_coded(&["alice"], content.clone(), 2, 4),
            no_progress(),
        )
        .await
        .expect("leave");
    let keep = [net.peers[0].peer_id(), net.peers[1].peer_id()];
    let first = holders_except(&r, &keep);
    assert!(first.len() >= 2, "{first:?}");
    let lost = Instant::now();
    for h in &first[..2] {
        net.kill(*h).await;
    }
    // Every shard identifier in the locator is held by a live peer again.
    let deadline = lost + Duration::from_secs(90);
    loop {
        let held = held(&net, &r);
        if held == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {held} of 4 shards held after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("repaired in {:?}", lost.elapsed());
    // The original holders of the other shards die too: the voicemail now
    // lives on regenerated shards, found under the locator's identifiers.
    for h in first.iter().skip(2) {
        net.kill(*h).await;
    }
    let got = net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("fetch from repaired shards");
    assert_eq!(got.content, content);
    assert!(
        got.holders.iter().all(|(_, h)| !first.contains(h)),
        "{got:?}"
    );
    net.stop().await;
}

/// What a watch of every holder's store during a leave saw.
#[derive(Debug, Default)]
struct LayoutWatch {
    /// Observations of a shard whose layout disclosed only its own
    /// identifier.
    own_only: usize,
    /// A holder's layout that disclosed a sibling not yet stored anywhere:
    /// (holder's object, the sibling).
    early: Vec<([u8; 32], [u8; 32])>,
}

/// Watches `stores` until `stop`: every shard a holder holds either knows
/// only its own identifier, or every sibling it knows is already stored.
fn watch_layouts(stores: Vec<ObjectStore>, stop: Arc<AtomicBool>) -> LayoutWatch {
    let mut seen = LayoutWatch::default();
    while !stop.load(Ordering::Relaxed) {
        let views: Vec<([u8; 32], Layout)> = stores
            .iter()
            .flat_map(|s| s.list())
            .filter_map(|(id, m)| m.shard.map(|sh| (id, sh.layout)))
            .collect();
        // Read after the layouts: a sibling stored before a layout naming
        // it was read is found here.
        let held = |id: &[u8; 32]| stores.iter().any(|s| s.get(id).is_some());
        for (id, layout) in views {
            let siblings: Vec<[u8; 32]> = layout
                .shards
                .iter()
                .map(|s| s.id)
                .filter(|s| *s != id && *s != UNDISCLOSED)
                .collect();
            if siblings.is_empty() {
                seen.own_only += 1;
            }
            for sibling in siblings {
                if !held(&sibling) {
                    seen.early.push((id, sibling));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_learn_their_siblings_only_once_every_upload_is_done_and_repair_still_works() {
    let mut net = repairing_net(7, 0).await;
    let stores: Vec<ObjectStore> = net
        .peers
        .iter()
        .filter_map(|p| p.store().cloned())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let stop = stop.clone();
        std::thread::spawn(move || watch_layouts(stores, stop))
    };
    let content = random_content(2_000_000);
    let r = net.peers[0]
        .leave(
            leave_coded(&["alice"], content.clone(), 2, 4),
            no_progress(),
        )
        .await
        .expect("leave");
    stop.store(true, Ordering::Relaxed);
    let seen = watch.join().expect("the watch");
    eprintln!(
        "{} observations of a shard knowing only itself",
        seen.own_only
    );
    assert!(
        seen.early.is_empty(),
        "holders knew siblings still in flight: {:?}",
        seen.early
    );

    // Every upload done, every holder has the final layout.
    let ids: Vec<[u8; 32]> = r.shards.iter().map(|s| s.id).collect();
    for s in &r.shards {
        let meta = net
            .peer(s.holder)
            .store()
            .and_then(|st| st.get(&s.id))
            .expect("held");
        let layout = meta.shard.expect("a layout").layout;
        let told: Vec<[u8; 32]> = layout.shards.iter().map(|s| s.id).collect();
        assert_eq!(told, ids, "holder of shard {}", s.index);
    }

    // And repair, which needs it, regenerates a lost shard.
    let keep = [net.peers[0].peer_id(), net.peers[1].peer_id()];
    let first = holders_except(&r, &keep);
    net.kill(first[0]).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while held(&net, &r) < 4 {
        assert!(
            Instant::now() < deadline,
            "the lost shard not regenerated in 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("fetch");
    assert_eq!(got.content, content);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_missing_for_less_than_the_grace_period_is_left_alone() {
    let mut net = repairing_net(7, 3600).await;
    let r = net.peers[0]
        .leave(
            leave_coded(&["alice"], random_content(50_000), 2, 4),
            no_progress(),
        )
        .await
        .expect("leave");
    let keep = [net.peers[0].peer_id(), net.peers[1].peer_id()];
    let gone = holders_except(&r, &keep)[0];
    net.kill(gone).await;
    // Several rounds see the shard missing; none may regenerate it yet.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        held(&net, &r),
        3,
        "a shard was regenerated within the grace period"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_shard_is_caught_and_its_holder_scored_down() {
    let net = bob_and_alice(7, |_| {}).await;
    let content = random_content(100_000);
    let r = net.peers[0]
        .leave(
            leave_coded(&["alice"], content.clone(), 2, 4),
            no_progress(),
        )
        .await
        .expect("leave");
    let alice = &net.peers[1];
    let wrong = |failures: &[FetchFailure]| -> Vec<PeerId> {
        r.shards
            .iter()
            .filter(|s| {
                failures.iter().any(
                    |f| matches!(f, FetchFailure::WrongBytes { holder, .. } if *holder == s.holder),
                )
            })
            .map(|s| s.holder)
            .collect()
    };
    let bad: Vec<_> = r
        .shards
        .iter()
        .filter(|s| s.holder != alice.peer_id())
        .take(3)
        .copied()
        .collect();
    // n - k = 2 shards served as garbage: the fetch skips whichever it
    // tries, succeeds, and scores their holders below neutral.
    for s in &bad[..2] {
        assert_eq!(net.tamper(&s.id), 1);
    }
    let got = alice
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("fetch");
    assert_eq!(got.content, content);
    assert!(
        got.failures
            .iter()
            .all(|f| matches!(f, FetchFailure::WrongBytes { .. })),
        "{:?}",
        got.failures
    );
    for h in wrong(&got.failures) {
        assert!(alice.observed(&h).experience < 0.5);
    }
    // A third: now every shard must be tried, all three bad ones are
    // caught, and the voicemail stays pending.
    assert_eq!(net.tamper(&bad[2].id), 1);
    let err = alice
        .fetch(r.voicemail_id, no_progress())
        .await
        .unwrap_err();
    let failures = match err {
        FetchError::AllCopiesFailed { failures, .. } => failures,
        other => panic!("{other}"),
    };
    let mut caught = wrong(&failures);
    caught.sort();
    let mut expected: Vec<PeerId> = bad.iter().map(|s| s.holder).collect();
    expected.sort();
    assert_eq!(caught, expected, "{failures:?}");
    let good = r
        .shards
        .iter()
        .find(|s| !expected.contains(&s.holder))
        .map(|s| s.holder)
        .expect("one intact shard");
    for h in &expected {
        let (e, g) = (
            alice.observed(h).experience,
            alice.observed(&good).experience,
        );
        assert!(e < 0.5 && e < g, "corrupt holder {e}, intact holder {g}");
    }
    assert_eq!(alice.inbox().await.unwrap().len(), 1);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_holder_without_room_is_replaced_and_loses_its_capacity_score() {
    let net = TestNet::start_with(6, |c| c.quota_bytes = 4 << 20).await;
    // Peer 3 is full: it holds its quota in other objects.
    let full = &net.peers[3];
    let store = full.store().expect("a holder");
    // (Put there directly, with the room its header takes left free.)
    let filler = vec![7u8; (4 << 20) - 8192];
    let meta = ObjectMeta {
        len: filler.len() as u64,
        sha256: Sha256::digest(&filler).into(),
        expires_at: u64::MAX,
        delete_hash: [0; 32],
        shard: None,
        grant: Vec::new(),
        proof: Vec::new(),
    };
    store
        .commit(store.reserve(&meta).unwrap(), &[1; 32], meta, &filler)
        .unwrap();
    // A sender that prefers it.
    let mut config = net.config().await;
    config.placement.preferred = vec![full.peer_id().to_string()];
    let dir = tempfile::tempdir().unwrap();
    let sender = start_peer(dir.path(), "sender", config, Role::Server).await;
    sender
        .wait_for_peers(6, Duration::from_secs(30))
        .await
        .unwrap();
    login_on(&net.auth, &sender, "bob").await;
    net.login(1, "alice").await;
    let before = sender.observed(&full.peer_id());
    let r = sender
        .leave(
            leave_coded(&["alice"], random_content(50_000), 2, 3),
            no_progress(),
        )
        .await
        .expect("the spare takes its place");
    assert!(r.shards.iter().all(|s| s.holder != full.peer_id()));
    assert!(
        r.failures
            .iter()
            .any(|f| matches!(f, HolderFailure::Failed { holder, why, .. }
                if *holder == full.peer_id() && why.contains("no room"))),
        "{:?}",
        r.failures
    );
    let after = sender.observed(&full.peer_id());
    assert!(
        after.experience < before.experience,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.capacity, 1.0);
    sender.stop().await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locator_with_the_wrong_shard_count_is_refused_and_stays_pending() {
    let net = TestNet::start(3).await;
    net.login(1, "alice").await;
    let locator = Locator {
        version: LOCATOR_VERSION,
        message_id: [1; 16],
        ciphertext_sha256: [2; 32],
        layout: Layout {
            redundancy: Redundancy::ReedSolomon { k: 4, n: 8 },
            ciphertext_len: 1000,
            shards: (0..5u8)
                .map(|i| ShardRef {
                    id: [i; 32],
                    sha256: [i; 32],
                })
                .collect(),
        },
        holders: Vec::new(),
    };
    let (mut client, _, _) = register_and_login(&net.auth, "carol").await;
    let d = granted(
        &mut client,
        NewDeposit {
            grant_serial: 0,
            request_id: vmail_proto::random_bytes(),
            recipients: Recipients::parse(["alice"]).unwrap(),
            locator: locator.encode(),
            session_key: SecretKey::random(),
            share_keys: Vec::new(),
            meta: VoicemailMeta {
                size: 900,
                content_type: "audio/wav".into(),
                duration_ms: 0,
                expires_at: vmail_proto::unix_now() + 3600,
            },
        },
    )
    .await;
    let receipt = client.deposit(&d).await.unwrap();
    let err = net.peers[1]
        .fetch(receipt.voicemail_id, no_progress())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("names 5 shards where RS(4,8) needs 8"),
        "{msg}"
    );
    assert_eq!(net.peers[1].inbox().await.unwrap().len(), 1);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_churn_model_agrees_with_the_real_network() {
    // The scenario of `churn::predict_static`: 11 candidate holders with no
    // history, 12 voicemails as RS(2,4) placed by the default scorer, then
    // 5 holders down for good.
    const CANDIDATES: usize = 11;
    const MESSAGES: usize = 12;
    const DOWN: usize = 5;
    let rs = Redundancy::ReedSolomon { k: 2, n: 4 };
    let mut net = bob_and_alice(CANDIDATES + 1, |_| {}).await;
    let candidates: Vec<PeerId> = net.peers[1..].iter().map(|p| p.peer_id()).collect();
    let mut receipts = Vec::new();
    for _ in 0..MESSAGES {
        let r = net.peers[0]
            .leave(
                leave_coded(&["alice"], random_content(20_000), 2, 4),
                no_progress(),
            )
            .await
            .expect("leave");
        receipts.push(r);
    }
    let placed: Vec<Vec<u32>> = receipts
        .iter()
        .map(|r| {
            r.shards
                .iter()
                .map(|s| {
                    candidates
                        .iter()
                        .position(|c| *c == s.holder)
                        .expect("a candidate") as u32
                })
                .collect()
        })
        .collect();

    // The model's placement and the real one, under the same failures. The
    // mean alone would match any placement with distinct holders; whether
    // every voicemail survives, and the busiest holder's load, depend on
    // how the scorer spreads shards.
    let model_placed = churn::place_static(CANDIDATES, rs, churn::Strategy::PaperMax, MESSAGES, 7);
    let model = churn::survival(&model_placed, CANDIDATES, DOWN, rs, 7);
    let real = churn::survival(&placed, CANDIDATES, DOWN, rs, 7);
    let busiest = |p: &[Vec<u32>]| {
        (0..CANDIDATES as u32)
            .map(|i| p.iter().flatten().filter(|h| **h == i).count())
            .max()
            .unwrap_or(0)
    };
    eprintln!(
        "with {DOWN} of {CANDIDATES} down: model {model:?}, busiest {}; real {real:?}, busiest {}",
        busiest(&model_placed),
        busiest(&placed)
    );
    assert!(
        (model.mean - real.mean).abs() <= 0.05,
        "{model:?} vs {real:?}"
    );
    assert!(
        (model.all - real.all).abs() <= 0.15,
        "{model:?} vs {real:?}"
    );
    assert!(busiest(&model_placed).abs_diff(busiest(&placed)) <= 2);

    // One failure set for real (alice's own peer stays up): every voicemail
    // the placement says survives is fetched, and no other.
    let dead: Vec<PeerId> = candidates[1..]
        .iter()
        .step_by(2)
        .take(DOWN)
        .copied()
        .collect();
    for d in &dead {
        net.kill(*d).await;
    }
    let mut fetched = 0;
    for r in &receipts {
        let live = r
            .shards
            .iter()
            .filter(|s| !dead.contains(&s.holder))
            .count();
        let got = net.peers[1].fetch(r.voicemail_id, no_progress()).await;
        assert_eq!(got.is_ok(), live >= 2, "{live} live shards: {got:?}");
        fetched += usize::from(got.is_ok());
    }
    eprintln!("fetched {fetched} of {MESSAGES} with {DOWN} holders dead");
    net.stop().await;
}
