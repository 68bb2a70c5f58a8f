//! Storage grants and delete orders on real peers and a real auth server:
//! holders refuse what the group did not grant and leave their disk and
//! quota untouched, and a voicemail's shards are gone from every holder
//! once its last recipient acked, including a holder that was down then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use sha2::{Digest, Sha256};
use vmail_auth::service::ManualClock;
use vmail_devnet::localnet;
use vmail_node::auth_client::{AuthClient, Delivery, GrantRequest};
use vmail_node::core::erasure::Redundancy;
use vmail_node::core::locator::ObjectId;
use vmail_node::overlay::transfer::{BlobClient, TransferError};
use vmail_node::peer::{Peer, Session, no_progress};
use vmail_proto::grant::{GrantBody, GrantedShard, StorageGrant};
use vmail_proto::names::Recipients;
use vmail_tests::{
    AnswerCutter, TestAuth, TestCluster, TestNet, deposit_for, granted, identity, leave_coded,
    leave_request, login_peer, one_copy_meta, password, random_content, refused_because,
    register_and_login,
};

/// A real grant from the group for one copy of `data` on `holders`.
async fn grant_for(c: &mut AuthClient, data: &[u8], holders: &[PeerId]) -> StorageGrant {
    c.request_grant(&GrantRequest {
        recipients: Recipients::parse(["alice"]).unwrap(),
        message_id: vmail_proto::random_bytes(),
        data_shards: 1,
        shards: vec![GrantedShard {
            len: data.len() as u64,
            sha256: Sha256::digest(data).into(),
        }],
        holders: holders.iter().map(|p| p.to_bytes()).collect(),
        expires_at: 0,
        sender: vmail_node::auth_client::SenderVisibility::Shown,
    })
    .await
    .expect("grant")
    .grant
}

/// Files in a holder's `objects/` dir (its tombstones dir not counted).
fn files(net: &TestNet, i: usize) -> usize {
    std::fs::read_dir(net.peer_dir(i).join("objects"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stores_nothing_the_group_did_not_grant() {
    let net = TestNet::start(3).await;
    let (mut mallory, _, _) = register_and_login(&net.auth, "mallory").await;
    register_and_login(&net.auth, "alice").await;
    let attacker = BlobClient::new(net.peers[0].network());
    let holder = &net.peers[1];
    let h = holder.peer_id();
    let data = random_content(10_000);
    let id: ObjectId = vmail_proto::random_bytes();
    let one = Redundancy::Replicas(1);

    // 300 empty objects without a grant: the throwaway-key flood.
    for i in 0..300u32 {
        let mut m = one_copy_meta(b"", vmail_proto::random_bytes(), one, Vec::new());
        m.len = 0;
        m.shard = None;
        m.expires_at = u64::MAX - u64::from(i);
        refused_because(attacker.store(h, id, m, b"", &|_| {}).await, "zero-length");
    }
    // A real shard without a grant.
    refused_because(
        attacker
            .store(
                h,
                id,
                one_copy_meta(&data, id, one, Vec::new()),
                &data,
                &|_| {},
            )
            .await,
        "no storage grant",
    );
    // A grant from another cluster, and a forged one.
    let foreign = GrantBody {
        serial: 1,
        message_id: [0; 16],
        data_shards: 1,
        shards: vec![GrantedShard {
            len: data.len() as u64,
            sha256: Sha256::digest(&data).into(),
        }],
        holders: vec![h.to_bytes()],
        upload_until: vmail_proto::unix_now() + 600,
        expires_at: vmail_proto::unix_now() + 3600,
    }
    .sign(&SigningKey::from_bytes(&vmail_proto::random_bytes()));
    refused_because(
        attacker
            .store(
                h,
                id,
                one_copy_meta(&data, id, one, foreign.to_bytes()),
                &data,
                &|_| {},
            )
            .await,
        "another auth cluster",
    );
    let real = grant_for(&mut mallory, &data, &[h]).await;
    let mut forged = real.clone();
    forged.body.expires_at += 1;
    refused_because(
        attacker
            .store(
                h,
                id,
                one_copy_meta(&data, id, one, forged.to_bytes()),
                &data,
                &|_| {},
            )
            .await,
        "bad signature",
    );
    // A real grant for another holder.
    let elsewhere = grant_for(&mut mallory, &data, &[net.peers[2].peer_id()]).await;
    refused_because(
        attacker
            .store(
                h,
                id,
                one_copy_meta(&data, id, one, elsewhere.to_bytes()),
                &data,
                &|_| {},
            )
            .await,
        "does not name this holder",
    );
    // The granted shard's hash with other bytes: refused after the body.
    let mut other = data.clone();
    other[0] ^= 1;
    refused_because(
        attacker
            .store(
                h,
                id,
                one_copy_meta(&data, id, one, real.to_bytes()),
                &other,
                &|_| {},
            )
            .await,
        "SHA-256",
    );
    // Other content than the grant covers, and a layout naming eight
    // copies where the grant covers one (the repair amplification).
    refused_because(
        attacker
            .store(
                h,
                id,
                one_copy_meta(&other, id, one, real.to_bytes()),
                &other,
                &|_| {},
            )
            .await,
        "does not cover",
    );
    refused_because(
        attacker
            .store(
                h,
                id,
                one_copy_meta(&data, id, Redundancy::Replicas(8), real.to_bytes()),
                &data,
                &|_| {},
            )
            .await,
        "does not cover",
    );

    let store = holder.store().unwrap();
    let stats = store.stats();
    assert_eq!((stats.objects, stats.bytes), (0, 0), "quota untouched");
    assert_eq!(files(&net, 2), 0, "nothing on disk");
    assert_eq!(stats.refusals["empty"], 300);
    assert_eq!(stats.refusals["no-grant"], 1);
    assert_eq!(stats.refusals["bad-signature"], 2);
    assert_eq!(stats.refusals["not-named"], 1);
    assert_eq!(stats.refusals["hash-mismatch"], 1);
    assert_eq!(stats.refusals["not-covered"], 2);

    // The same shard with its real grant is taken, and once only.
    attacker
        .store(
            h,
            id,
            one_copy_meta(&data, id, one, real.to_bytes()),
            &data,
            &|_| {},
        )
        .await
        .expect("a granted shard is stored");
    let again: ObjectId = vmail_proto::random_bytes();
    refused_because(
        attacker
            .store(
                h,
                again,
                one_copy_meta(&data, again, one, real.to_bytes()),
                &data,
                &|_| {},
            )
            .await,
        "used already",
    );
    assert_eq!(store.stats().objects, 1);
    // No deposit used the grant: once its upload window and the grace are
    // over, the holder's purge drops the shard.
    let lapsed = real.body.upload_until + vmail_proto::grant::PROOF_GRACE_SECS + 1;
    assert_eq!(store.unproven(lapsed), vec![id]);
    net.stop().await;
}

/// Peers holding any of `ids`.
fn holders_of(peers: &[Peer], ids: &[ObjectId]) -> usize {
    peers
        .iter()
        .filter(|p| {
            p.store()
                .is_some_and(|s| ids.iter().any(|id| s.get(id).is_some()))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_ack_deletes_every_shard_even_at_a_holder_that_was_down() {
    let mut net = TestNet::start_with(7, |c| {
        c.placement.repair_interval_secs = 1;
        c.placement.repair_grace_secs = 3600;
    })
    .await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    net.login(2, "carol").await;
    let content = random_content(200_000);
    let r = net.peers[0]
        .leave(
            leave_coded(&["alice", "carol"], content.clone(), 2, 4),
            no_progress(),
        )
        .await
        .expect("leave");
    let ids: Vec<ObjectId> = r.shards.iter().map(|s| s.id).collect();
    assert_eq!(holders_of(&net.peers, &ids), 4);
    // Every holder got the deposit proof, so none will drop its shard as
    // never deposited.
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    for s in &r.shards {
        let store = net.peer(s.holder).store().unwrap();
        assert!(store.unproven(u64::MAX).is_empty());
    }

    // Alice fetches and acks: carol has not, so every shard stays.
    let got = net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .unwrap();
    assert_eq!(got.content, content);
    let acked = net.peers[1].ack(r.voicemail_id).await.unwrap();
    assert!(!acked.key_erased);
    assert_eq!(holders_of(&net.peers, &ids), 4);

    // One holder (not a user's peer) is down when carol acks.
    let users: Vec<PeerId> = net.peers[..3].iter().map(Peer::peer_id).collect();
    let down = r
        .shards
        .iter()
        .find(|s| !users.contains(&s.holder))
        .expect("a holder that is no user's peer");
    let down_index = net
        .peers
        .iter()
        .position(|p| p.peer_id() == down.holder)
        .unwrap();
    let down_dir = net.peer_dir(down_index + 1);
    let mut config = net.config().await;
    config.placement.repair_interval_secs = 1;
    config.placement.repair_grace_secs = 3600;
    net.kill(down.holder).await;

    let got = net.peers[2]
        .fetch(r.voicemail_id, no_progress())
        .await
        .unwrap();
    assert_eq!(got.content, content);
    let started = Instant::now();
    let acked = net.peers[2].ack(r.voicemail_id).await.unwrap();
    assert!(acked.key_erased);
    // The order reaches the live holders it finds directly. One that
    // misses the ack's few seconds per holder, or that the lookups do not
    // find while a holder is down (both seen on a loaded machine), learns
    // the order from a sibling at its next repair check (every second
    // here), as the holder that is down will below.
    assert!(
        acked.shards_deleted >= 1,
        "the order reached no live holder: {acked:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while holders_of(&net.peers, &ids) > 0 {
        assert!(
            Instant::now() < deadline,
            "a live holder kept its shard a minute after the last ack: {acked:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "the live holders deleted their shards {:?} after the last ack ({} directly)",
        started.elapsed(),
        acked.shards_deleted
    );
    // Each former holder keeps a tombstone, answers for the shard with the
    // order, and refuses it back: a repair cannot resurrect it.
    let client = BlobClient::new(net.peers[0].network());
    for s in r.shards.iter().filter(|s| s.holder != down.holder) {
        let held = net.peer(s.holder).store().unwrap().stats();
        assert_eq!((held.objects, held.tombstones), (0, 1));
        assert!(matches!(
            client.has(s.holder, s.id).await,
            Err(TransferError::Gone { .. })
        ));
    }

    // The holder that was down comes back with its shard; its repair check
    // asks the siblings, sees the order, and deletes it too.
    let back = net
        .start_peer(down_dir.file_name().unwrap().to_str().unwrap(), config)
        .await;
    assert!(
        back.store().unwrap().get(&down.id).is_some(),
        "it kept its shard while down"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while back.store().unwrap().get(&down.id).is_some() {
        assert!(
            Instant::now() < deadline,
            "the returning holder never learned of the deletion"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(back.store().unwrap().stats().tombstones, 1);
    back.stop().await;
    net.stop().await;
}

/// The setup that once left a voicemail nobody could fetch: the auth
/// leader killed about a second into 50 concurrent leaves. Every leave
/// either reports success or names its failure, the inbox holds exactly
/// the voicemails whose leaves succeeded, and every one of them is
/// fetchable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_50_leaves_leaves_the_inbox_equal_to_the_successes() {
    const LEAVES: usize = 50;
    let mut cluster = TestCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let key = cluster.target().cluster_key;
    let peers = localnet::start_peers(dir.path(), 5, Vec::new(), &key, |_| {})
        .await
        .expect("peers join");
    login_peer(&cluster.target(), &peers[0], "bob").await;
    login_peer(&cluster.target(), &peers[1], "alice").await;
    let bob = &peers[0];
    let contents: Vec<Vec<u8>> = (0..LEAVES).map(|_| random_content(20_000)).collect();
    let leaves = futures::future::join_all(
        contents
            .iter()
            .map(|c| bob.leave(leave_request(&["alice"], c.clone(), 2), no_progress())),
    );
    let started = Instant::now();
    let leaves = async {
        let r = leaves.await;
        (r, started.elapsed())
    };
    let kill = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = cluster.leader().await;
        cluster.kill(leader).await;
        started.elapsed()
    };
    let ((results, done), killed) = tokio::join!(leaves, kill);
    println!("leader killed after {killed:?}; the leaves ended after {done:?}");
    assert!(killed < done, "the leader died while the leaves ran");
    let mut succeeded = std::collections::HashMap::new();
    let mut failed = 0;
    for (r, content) in results.into_iter().zip(&contents) {
        match r {
            Ok(receipt) => {
                succeeded.insert(receipt.voicemail_id, content);
            }
            Err(e) => {
                let msg = e.to_string().to_lowercase();
                assert!(
                    !msg.contains("outcome is unknown"),
                    "the group recovered in time, so every outcome is known: {msg}"
                );
                assert!(
                    msg.contains("nothing was stored") || msg.contains("nothing was deposited"),
                    "a failed leave says nothing was deposited: {msg}"
                );
                failed += 1;
            }
        }
    }
    println!("{} leaves succeeded, {failed} failed", succeeded.len());
    assert!(!succeeded.is_empty());
    let inbox: std::collections::HashSet<[u8; 16]> = peers[1]
        .inbox()
        .await
        .expect("inbox")
        .into_iter()
        .map(|p| p.id)
        .collect();
    let expected: std::collections::HashSet<[u8; 16]> = succeeded.keys().copied().collect();
    assert_eq!(
        inbox, expected,
        "the inbox holds exactly the successful leaves"
    );
    for (id, content) in &succeeded {
        let got = peers[1].fetch(*id, no_progress()).await.expect("fetchable");
        assert_eq!(&got.content, *content);
    }
    for p in peers {
        p.stop().await;
    }
    cluster.stop().await;
}

/// A deposit that reached the group but whose answer was lost (the
/// connection cut after the server acted) is asked for again with the same
/// request id, and the caller learns it succeeded: it never reports a
/// committed deposit as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_whose_answer_is_lost_is_asked_again_and_replays() {
    let auth = TestAuth::start().await;
    let (mut alice, _, _) = register_and_login(&auth, "alice").await;
    let cutter = AnswerCutter::start(auth.server_addr()).await;
    let mut target = auth.target();
    target.endpoints = vec![format!("https://127.0.0.1:{}", cutter.addr.port())];
    let mut bob = AuthClient::connect(&target).await.unwrap();
    let id = identity();
    bob.register("bob", &password("bob"), &id, None)
        .await
        .unwrap();
    let s = bob.login("bob", &password("bob"), &id, &[]).await.unwrap();
    bob.set_token(s.token);
    let d = granted(&mut bob, deposit_for(&["alice"], b"a locator")).await;

    cutter.arm();
    let receipt = bob
        .deposit(&d)
        .await
        .expect("the lost answer is asked for again");
    assert_eq!(cutter.cuts(), 1, "the first answer was lost");
    assert!(
        receipt.replayed,
        "the second ask replayed the first deposit"
    );
    let pending: Vec<[u8; 16]> = alice
        .list_pending()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(pending, vec![receipt.voicemail_id]);
}

/// A client of `net`'s auth server logged in as `user` (already registered
/// with `identity`).
async fn client_of(net: &TestNet, user: &str, identity: &SigningKey) -> AuthClient {
    let mut c = net.auth.client().await;
    let s = c
        .login(user, &password(user), identity, &[])
        .await
        .expect("login");
    c.set_token(s.token);
    c
}

/// Shards of `ids` held anywhere in `net`.
fn held(net: &TestNet, ids: &[ObjectId]) -> usize {
    holders_of(&net.peers, ids)
}

/// `bob`'s receipt for voicemail `id`: each recipient's state.
async fn states(bob: &mut AuthClient, id: [u8; 16]) -> Vec<(String, Delivery)> {
    bob.list_sent()
        .await
        .expect("list sent")
        .into_iter()
        .find(|s| s.id == id)
        .expect("a receipt")
        .recipients
        .into_iter()
        .map(|(name, state, _)| (name, state))
        .collect()
}

/// Retention, receipts, recall and discard, end to end: the grant expires
/// at the shortest retention of its recipients; `sent` follows each
/// recipient from pending to delivered, recalled or expired unread; a
/// recall or the last discard deletes every shard; only the sender may
/// recall, and only before everyone has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_receipts_recall_and_discard() {
    // The group's clock stands still until the test moves it.
    let start = vmail_proto::unix_now();
    let clock = Arc::new(ManualClock::new(start));
    let auth = TestAuth::start_with(|_| {}, clock.clone()).await;
    let net = TestNet::start_on(auth, 6, |_| {}).await;
    let bob_id = net.login(0, "bob").await;
    let alice_id = net.login(1, "alice").await;
    net.login(2, "carol").await;
    let mut bob = client_of(&net, "bob", &bob_id).await;
    let mut alice = client_of(&net, "alice", &alice_id).await;
    assert_eq!(alice.whoami().await.unwrap().retention_secs, 30 * 86_400);
    assert_eq!(alice.set_retention(3600).await.unwrap(), 3600);
    assert_eq!(alice.whoami().await.unwrap().retention_secs, 3600);
    let err = alice.set_retention(60).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");

    // To alice and carol: alice's hour is the shortest retention.
    let leave = |to: &[&str]| leave_coded(to, random_content(30_000), 2, 4);
    let v1 = net.peers[0]
        .leave(leave(&["alice", "carol"]), no_progress())
        .await
        .unwrap();
    let ids1: Vec<ObjectId> = v1.shards.iter().map(|s| s.id).collect();
    let meta = net
        .peer(v1.shards[0].holder)
        .store()
        .unwrap()
        .get(&ids1[0])
        .unwrap();
    assert_eq!(
        meta.expires_at,
        start + 3600,
        "the holders drop it at alice's retention"
    );
    let pending = |who: &str| (who.to_owned(), Delivery::Pending);
    assert_eq!(
        states(&mut bob, v1.voicemail_id).await,
        vec![pending("alice"), pending("carol")]
    );

    // carol fetches; alice declines without fetching: the last ack deletes.
    net.peers[2]
        .fetch(v1.voicemail_id, no_progress())
        .await
        .unwrap();
    net.peers[2].ack(v1.voicemail_id).await.unwrap();
    assert_eq!(
        states(&mut bob, v1.voicemail_id).await,
        vec![pending("alice"), ("carol".into(), Delivery::Delivered)]
    );
    // Only the sender may recall.
    let err = net.peers[1].recall(v1.voicemail_id).await.unwrap_err();
    assert!(err.to_string().contains("only the sender"), "{err}");
    let discarded = net.peers[1].ack(v1.voicemail_id).await.unwrap();
    assert!(discarded.key_erased);
    assert_eq!(discarded.shards_deleted, 4);
    assert_eq!(held(&net, &ids1), 0);
    assert_eq!(
        states(&mut bob, v1.voicemail_id).await,
        vec![
            ("alice".into(), Delivery::Delivered),
            ("carol".into(), Delivery::Delivered)
        ]
    );
    let err = net.peers[0].recall(v1.voicemail_id).await.unwrap_err();
    assert!(err.to_string().contains("already delivered"), "{err}");

    // A recall before delivery: gone from the inbox and from every holder.
    let v2 = net.peers[0]
        .leave(leave(&["alice"]), no_progress())
        .await
        .unwrap();
    let ids2: Vec<ObjectId> = v2.shards.iter().map(|s| s.id).collect();
    assert_eq!(held(&net, &ids2), 4);
    let recalled = net.peers[0].recall(v2.voicemail_id).await.unwrap();
    assert_eq!(recalled.shards_deleted, 4);
    assert_eq!(held(&net, &ids2), 0);
    assert!(net.peers[1].inbox().await.unwrap().is_empty());
    assert_eq!(
        states(&mut bob, v2.voicemail_id).await,
        vec![("alice".into(), Delivery::Recalled)]
    );
    let err = net.peers[0].recall(v2.voicemail_id).await.unwrap_err();
    assert!(err.to_string().contains("already recalled"), "{err}");

    // Unread past alice's retention: gone from her inbox, and the sender
    // sees it expired unread.
    let v3 = net.peers[0]
        .leave(leave(&["alice"]), no_progress())
        .await
        .unwrap();
    clock.advance(3700);
    net.auth.service().purge_expired().await.unwrap();
    assert!(net.peers[1].inbox().await.unwrap().is_empty());
    assert_eq!(
        states(&mut bob, v3.voicemail_id).await,
        vec![("alice".into(), Delivery::ExpiredUnread)]
    );
    net.stop().await;
}

/// A leave whose deposit reached the group but whose answer never comes
/// back, however often it asks, keeps its shards: it says the outcome is
/// unknown, and the voicemail the group did store stays fetchable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_whose_deposit_outcome_stays_unknown_keeps_its_shards() {
    let net = TestNet::start(4).await;
    net.login(1, "alice").await;
    let cutter = Arc::new(AnswerCutter::start(net.auth.server_addr()).await);
    let mut target = net.auth.target();
    target.endpoints = vec![format!("https://127.0.0.1:{}", cutter.addr.port())];
    let id = identity();
    let mut c = AuthClient::connect(&target).await.unwrap();
    c.register("bob", &password("bob"), &id, None)
        .await
        .unwrap();
    let login = c
        .login(
            "bob",
            &password("bob"),
            &id,
            &net.peers[0].peer_id().to_bytes(),
        )
        .await
        .unwrap();
    net.peers[0].set_session(Session {
        login,
        identity: id,
        target,
    });

    // The group goes silent once the shards are on their way: after the
    // grant, before the deposit.
    let silence = cutter.clone();
    let progress: vmail_node::peer::ProgressFn = Arc::new(move |p| {
        if p.phase == vmail_node::peer::Phase::Upload {
            silence.start_outage();
        }
    });
    let content = random_content(40_000);
    let err = net.peers[0]
        .leave(leave_request(&["alice"], content.clone(), 2), progress)
        .await
        .expect_err("no answer ever came");
    cutter.end_outage();
    assert!(
        matches!(err, vmail_node::peer::LeaveError::DepositUnknown { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("stored shards are kept"), "{err}");
    assert!(cutter.cuts() > 1, "the deposit was asked again");
    // It had committed: alice finds it, and its shards were kept.
    let inbox = net.peers[1].inbox().await.unwrap();
    assert_eq!(inbox.len(), 1);
    let got = net.peers[1]
        .fetch(inbox[0].id, no_progress())
        .await
        .unwrap();
    assert_eq!(got.content, content);
    net.stop().await;
}
