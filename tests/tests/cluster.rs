//! The replicated auth group on loopback: real servers over TLS, real Raft
//! over the internal mutual-TLS service, real clients. Servers are killed
//! (as a crash would), restarted from their data directories, cut off from
//! the group, added and removed while clients keep working.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use vmail_auth::cluster::admin;
use vmail_auth::datadir::{self, InitOptions};
use vmail_node::auth_client::{AuthClient, ClientError, LoginSession};
use vmail_proto::share;
use vmail_tests::{TestCluster, deposit_for, granted, history, identity, password, try_granted};

/// [`history::login_on`], which these tests expect to succeed.
async fn login_on(
    cluster: &TestCluster,
    which: &[usize],
    user: &str,
) -> (AuthClient, LoginSession) {
    history::login_on(cluster, which, user)
        .await
        .expect("login")
}

fn followers(cluster: &TestCluster, leader: usize) -> Vec<usize> {
    cluster
        .running()
        .into_iter()
        .filter(|i| *i != leader)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposit_acknowledged_at_one_server_is_listed_at_another_right_after() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let f = followers(&cluster, leader);
    // Each client knows only one follower: writes reach the leader by
    // redirect, and reads are answered for the leader's current state.
    let (mut bob, _) = login_on(&cluster, &[f[0]], "bob").await;
    let (mut alice, alice_s) = login_on(&cluster, &[f[1]], "alice").await;
    for n in 0..5u8 {
        let d = granted(&mut bob, deposit_for(&["alice"], &[n; 40])).await;
        let receipt = bob.deposit(&d).await.expect("deposit");
        let listed = alice.list_pending().await.expect("list");
        assert!(
            listed.iter().any(|p| p.id == receipt.voicemail_id),
            "deposit {n} acknowledged but not listed"
        );
        let got = listed
            .iter()
            .find(|p| p.id == receipt.voicemail_id)
            .unwrap();
        // alice's client knows one server, but the voicemail names where
        // every share is: a majority answers.
        let key = alice
            .recover_session_key(&alice_s, got)
            .await
            .expect("recover the session key");
        assert_eq!(key.as_bytes(), d.session_key.as_bytes());
    }
    // Every member holds the same state once it has applied the log.
    cluster.wait_applied().await;
    for i in cluster.running() {
        let counts = cluster.server(i).service.store().counts().unwrap();
        assert_eq!(
            (counts.users, counts.voicemails),
            (2, 5),
            "{}",
            cluster.name(i)
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_majority_recovers_session_keys_and_a_minority_names_the_servers_it_misses() {
    // Each session key is split 2-of-3 among the servers. With one follower
    // down, a voicemail deposited before the kill and one deposited after
    // it (whose share for the dead server is sealed but cannot be opened)
    // are both recovered from the two live servers. With two down, one
    // share is left: recovery fails and says which servers it could not
    // reach.
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let f = followers(&cluster, leader);
    let url = |i: usize| cluster.target_of(&[i]).endpoints[0].clone();
    let down = [url(f[0]), url(f[1])];
    let (mut bob, _) = login_on(&cluster, &[0, 1, 2], "bob").await;
    let (mut alice, alice_s) = login_on(&cluster, &[0, 1, 2], "alice").await;
    let before = granted(&mut bob, deposit_for(&["alice"], b"before the kill")).await;
    let before_id = bob.deposit(&before).await.expect("deposit").voicemail_id;
    cluster.wait_applied().await;

    cluster.kill(f[0]).await;
    let after = granted(&mut bob, deposit_for(&["alice"], b"after the kill")).await;
    assert_eq!(
        after.share_keys.len(),
        3,
        "the killed server is still a member: its share is sealed too"
    );
    let after_id = bob
        .deposit(&after)
        .await
        .expect("a majority takes the deposit")
        .voicemail_id;
    let listed = alice.list_pending().await.expect("list");
    assert_eq!(listed.len(), 2);
    let pending = |id: [u8; 16]| {
        listed
            .iter()
            .find(|p| p.id == id)
            .expect("the voicemail is listed")
    };
    let sent = [(before_id, &before), (after_id, &after)];
    for (id, d) in sent {
        let p = pending(id);
        assert_eq!(
            (p.shares.threshold, p.shares.slots.len()),
            (2, 3),
            "{:?}",
            p.shares
        );
        let key = alice
            .recover_session_key(&alice_s, p)
            .await
            .unwrap_or_else(|e| panic!("2 of 3 servers up: {e}"));
        assert_eq!(key.as_bytes(), d.session_key.as_bytes());
    }

    // A second server down: at most one share is left of the two needed.
    cluster.kill(f[1]).await;
    for (id, _) in sent {
        let err = alice
            .recover_session_key(&alice_s, pending(id))
            .await
            .expect_err("one server cannot give the key")
            .to_string();
        assert!(
            err.contains("needs shares from 2 auth servers, got"),
            "{err}"
        );
        assert!(
            down.iter()
                .all(|u| err.contains(&format!("{u} unreachable"))),
            "the error does not name both unreachable servers ({down:?}): {err}"
        );
    }

    // Both back: the group recovers them again.
    cluster.restart(f[0]).await;
    cluster.restart(f[1]).await;
    cluster.wait_applied().await;
    for (id, d) in sent {
        let key = alice
            .recover_session_key(&alice_s, pending(id))
            .await
            .unwrap_or_else(|e| panic!("every server back: {e}"));
        assert_eq!(key.as_bytes(), d.session_key.as_bytes());
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposit_ordered_after_its_senders_logout_is_refused_when_it_applies() {
    // The leader takes a deposit's session from its own state, without a
    // read round; the log entry re-checks it. Here the deposit is proposed
    // with a session the log has already ended: it must change nothing.
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let svc = cluster.server(leader).service.clone();
    login_on(&cluster, &[leader], "alice").await;
    let mut bob = cluster.client().await;
    let id = identity();
    bob.register("bob", &password("bob"), &id, None)
        .await
        .unwrap();
    let login = bob.login("bob", &password("bob"), &id, &[]).await.unwrap();
    let session = svc.authenticate(&login.token).await.unwrap();
    // A real grant, asked for while the session was live.
    let grant = svc
        .request_grant(
            &session,
            vmail_auth::service::GrantRequest {
                recipients: vec!["alice".into()],
                message_id: vec![7; 16],
                data_shards: 1,
                shards: vec![vmail_auth::service::ShardRequest {
                    len: 1024,
                    sha256: vec![1; 32],
                }],
                holders: vec![vec![2; 38]],
                expires_at: 0,
                anonymous: false,
            },
        )
        .await
        .unwrap();
    svc.logout(&session).await.unwrap();

    // The deposit is well formed: its session key is split among the
    // grant's share keys, as a client splits it.
    let mut d = deposit_for(&["alice"], b"after logout");
    d.grant_serial = grant.grant.body.serial;
    d.share_keys = grant.share_keys.clone();
    let (threshold, key_check, shares) = share::split(
        &d.session_key,
        &d.share_keys,
        d.grant_serial,
        &d.recipients,
        &d.locator,
    )
    .expect("a valid split");
    let late = svc
        .deposit(
            &session,
            vmail_auth::service::Deposit {
                request_id: d.request_id.to_vec(),
                recipients: d.recipients.to_strings(),
                locator: d.locator.clone(),
                shares: shares
                    .into_iter()
                    .map(|s| vmail_proto::pb::SealedShare::from(s).into())
                    .collect(),
                threshold: u32::from(threshold),
                key_check: key_check.to_vec(),
                metadata: d.meta.clone(),
                grant_serial: d.grant_serial,
            },
        )
        .await;
    assert!(
        matches!(late, Err(vmail_auth::service::AuthError::BadToken)),
        "{late:?}"
    );
    // Through the API the token is refused too, and no member stored it.
    let err = bob.deposit(&d).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server(s) if s.code() == Code::Unauthenticated),
        "{err:?}"
    );
    cluster.wait_applied().await;
    for i in cluster.running() {
        let counts = cluster.server(i).service.store().counts().unwrap();
        assert_eq!(counts.voicemails, 0, "{}", cluster.name(i));
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_log_entries_and_each_caller_gets_its_own_reply() {
    // 32 senders deposit at once; every other one also names an unknown
    // recipient. The batcher proposes what queued together as one entry:
    // the log grows by fewer entries than there were writes, yet each
    // caller gets its own answer and each good deposit is stored once.
    const N: usize = 32;
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    login_on(&cluster, &[leader], "alice").await;
    let mut senders = Vec::new();
    for i in 0..N {
        senders.push(login_on(&cluster, &[leader], &format!("sender{i}")).await);
    }
    // RequestGrant already refuses the unknown recipient, so each sender
    // takes its storage grant first, for alice alone; the deposits that
    // also name "nobody" test the deposit's own check.
    let (c, _) = &mut senders[1];
    let refused = try_granted(c, deposit_for(&["nobody"], b"no grant"), 0).await;
    let refused = refused.expect_err("no grant for an unknown recipient");
    assert_eq!(refused.code(), Some(Code::NotFound), "{refused}");
    assert!(refused.to_string().contains("nobody"), "{refused}");
    let mut deposits = Vec::new();
    for (i, (c, _)) in senders.iter_mut().enumerate() {
        let to: &[&str] = if i % 2 == 0 {
            &["alice"]
        } else {
            &["alice", "nobody"]
        };
        // The grant (and with it the share keys the key is split among)
        // is for alice alone.
        let grant = granted(c, deposit_for(&["alice"], b"")).await;
        let mut d = deposit_for(to, format!("batch {i}").as_bytes());
        d.grant_serial = grant.grant_serial;
        d.share_keys = grant.share_keys;
        deposits.push(d);
    }
    let before = cluster.last_log_index(leader);
    let start = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for ((mut c, _), d) in senders.into_iter().zip(deposits) {
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            c.deposit(&d).await.map(|r| r.voicemail_id)
        }));
    }
    let mut ids = HashSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match (i % 2, t.await.unwrap()) {
            (0, Ok(id)) => assert!(ids.insert(id), "deposit {i} got a duplicate id"),
            (1, Err(ClientError::Server(s))) => {
                assert_eq!(s.code(), Code::NotFound, "{s:?}");
                assert!(s.message().contains("nobody"), "{s:?}");
            }
            (_, other) => panic!("deposit {i}: {other:?}"),
        }
    }
    let entries = cluster.last_log_index(leader) - before;
    assert!(
        entries < N as u64,
        "{N} concurrent writes took {entries} log entries"
    );
    cluster.wait_applied().await;
    for i in cluster.running() {
        let counts = cluster.server(i).service.store().counts().unwrap();
        assert_eq!(counts.voicemails, (N / 2) as u64, "{}", cluster.name(i));
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_during_500_deposits_loses_and_duplicates_nothing() {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 125;
    let mut cluster = TestCluster::start(3).await;
    let h = history::kill_leader_under_load(&mut cluster, "", CLIENTS, PER_CLIENT)
        .await
        .expect("the history run");
    eprintln!("{h:?}");
    assert_ne!(h.new_leader, h.killed);
    assert_eq!(h.deposits, CLIENTS * PER_CLIENT);
    assert!(h.clean(), "the history check failed: {h:?}");
    let old_leader = h.killed;

    // The killed server restarts from its data dir and catches up from the log.
    cluster.restart(old_leader).await;
    cluster.wait_applied().await;
    let counts = cluster.server(old_leader).service.store().counts().unwrap();
    assert_eq!(counts.voicemails, (CLIENTS * PER_CLIENT) as u64);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_missed_compacted_log_catches_up_from_a_snapshot() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let behind = followers(&cluster, leader)[0];
    let (mut bob, _) = login_on(&cluster, &[leader], "bob").await;
    login_on(&cluster, &[leader], "alice").await;
    cluster.kill(behind).await;
    for n in 0..40u8 {
        let d = granted(&mut bob, deposit_for(&["alice"], &[n; 20])).await;
        bob.deposit(&d).await.expect("deposit");
    }
    // Compact every running member: snapshot, then purge the log it covers,
    // so whichever leads must send the restarted server a snapshot.
    cluster.wait_applied().await;
    let mut covered = 0;
    for i in cluster.running() {
        let raft = cluster.server(i).service.raft().clone();
        let applied = raft.metrics().borrow().last_applied.unwrap().index;
        raft.trigger().snapshot().await.unwrap();
        let m = raft
            .wait(Some(Duration::from_secs(20)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot built",
            )
            .await
            .expect("snapshot");
        let snap = m.snapshot.unwrap().index;
        raft.trigger().purge_log(snap).await.unwrap();
        raft.wait(Some(Duration::from_secs(20)))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= snap), "log purged")
            .await
            .expect("purged");
        covered = snap;
    }
    cluster.restart(behind).await;
    cluster.wait_applied().await;
    let m = cluster
        .server(behind)
        .service
        .raft()
        .metrics()
        .borrow()
        .clone();
    assert!(
        m.snapshot.is_some_and(|s| s.index >= covered),
        "{} caught up without installing the snapshot: {m:?}",
        cluster.name(behind)
    );
    let counts = cluster.server(behind).service.store().counts().unwrap();
    assert_eq!((counts.users, counts.voicemails), (2, 40));
    // And it serves from that state once it leads.
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_server_joins_live_and_one_is_removed_while_clients_work() {
    let mut cluster = TestCluster::start(3).await;
    let (mut bob, _) = login_on(&cluster, &[0, 1, 2], "bob").await;
    let (mut alice, _) = login_on(&cluster, &[0, 1, 2], "alice").await;
    let (mut carol, _) = login_on(&cluster, &[0, 1, 2], "carol").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let d = deposit_for(&["alice"], &n.to_be_bytes());
                let d = try_granted(&mut bob, d, 0)
                    .await
                    .expect("storage grants keep working during membership changes");
                bob.deposit(&d)
                    .await
                    .expect("deposits keep working during membership changes");
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    // A grant taken before a join lists the three servers of its time; its
    // deposit, split among those three, still lands once the group has four.
    let before_join = try_granted(&mut carol, deposit_for(&["alice"], b"before join"), 0)
        .await
        .expect("grant before the join");
    assert_eq!(before_join.share_keys.len(), 3);
    let added = cluster.add().await;
    for by in 0..2 {
        cluster.approve(by, added).await.expect("approve the join");
    }
    cluster.wait_voters(4).await;
    carol
        .deposit(&before_join)
        .await
        .expect("a deposit under a grant from before the join");
    let before_remove = try_granted(&mut carol, deposit_for(&["alice"], b"before remove"), 0)
        .await
        .expect("grant before the removal");
    assert_eq!(before_remove.share_keys.len(), 4);
    let leader = cluster.leader().await;
    let status = admin::status(
        &cluster.server(leader).member().raft_url,
        &cluster.member_tls(leader),
    )
    .await
    .expect("status");
    assert_eq!(status.members.len(), 4);
    assert!(status.members.iter().all(|m| m.voter));

    // Remove a follower other than the new one.
    let gone = followers(&cluster, leader)
        .into_iter()
        .find(|i| *i != added)
        .unwrap();
    cluster.remove(gone).await;
    cluster.wait_voters(3).await;
    cluster.kill(gone).await;
    // Split among the four of its time, the removed one included, it lands.
    carol
        .deposit(&before_remove)
        .await
        .expect("a deposit under a grant from before the removal");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = writer.await.unwrap() + 2;
    assert!(n > 2);
    let listed = alice.list_pending().await.expect("list");
    assert_eq!(listed.len(), n as usize);
    // The new member holds the whole state.
    cluster.wait_applied().await;
    let counts = cluster.server(added).service.store().counts().unwrap();
    assert_eq!(counts.voicemails, u64::from(n));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_server_never_answers_from_stale_state() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let cut = followers(&cluster, leader)[0];
    let (mut bob, _) = login_on(&cluster, &[leader], "bob").await;
    login_on(&cluster, &[leader], "alice").await;
    cluster.wait_applied().await;
    cluster.isolate(cut, true);
    let d = try_granted(&mut bob, deposit_for(&["alice"], b"while cut off"), 0)
        .await
        .expect("the majority still grants");
    bob.deposit(&d)
        .await
        .expect("the majority still takes writes");
    // The cut-off follower refuses reads that must be current.
    let e = cluster.server(cut).service.linearize().await.unwrap_err();
    assert!(
        e.to_string().contains("not the leader") || e.to_string().contains("cannot serve"),
        "{e}"
    );
    // Also over the wire, without the client's redirect-following.
    let mut raw = AuthClient::connect(&cluster.target_of(&[cut]))
        .await
        .unwrap();
    let err = raw.certificate("alice").await;
    match err {
        Err(ClientError::Server(s)) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
        // It may also have redirected to the leader, which answers currently.
        Ok(cert) => assert_eq!(cert.username.as_str(), "alice"),
        Err(e) => panic!("unexpected: {e}"),
    }

    // Now cut off the leader itself: it must stop answering reads within
    // the read timeout, while the others elect a new leader.
    cluster.isolate(cut, false);
    cluster.wait_applied().await;
    cluster.isolate(leader, true);
    let e = cluster
        .server(leader)
        .service
        .linearize()
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("cannot serve") || e.to_string().contains("not the leader"),
        "{e}"
    );
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let mut alice = {
        let mut c = AuthClient::connect(&cluster.target_of(&[new_leader]))
            .await
            .unwrap();
        c.login("alice", &password("alice"), &identity(), &[])
            .await
            .expect("login at the new leader");
        c
    };
    assert_eq!(alice.list_pending().await.unwrap().len(), 1);
    cluster.isolate(leader, false);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_from_another_ca_cannot_join_or_read() {
    let mut cluster = TestCluster::start(1).await;
    let via = cluster.server(0).member().raft_url;
    // A server of a different group presents its own CA's certificate.
    let other = tempfile::tempdir().unwrap();
    let other_dir = other.path().join("stranger");
    datadir::init(&InitOptions::loopback(&other_dir)).unwrap();
    let foreign = admin::member_tls(&other_dir).unwrap();
    let err = admin::fetch_group(&via, &foreign)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&via), "{err}");
    let new_dir = other.path().join("joiner");
    let err = admin::prepare_join(&InitOptions::loopback(&new_dir), &via, &foreign)
        .await
        .unwrap_err();
    assert!(!new_dir.exists(), "a refused join creates nothing: {err}");
    assert!(admin::status(&via, &foreign).await.is_err());
    // A client with no certificate at all is refused on the internal port.
    let channel = tonic::transport::Endpoint::from_shared(via.clone())
        .unwrap()
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(&cluster.server(0).ca_pem),
        ))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = channel {
        let mut c = vmail_proto::cluster_pb::cluster_client::ClusterClient::new(ch);
        assert!(
            c.group_keys(vmail_proto::cluster_pb::GroupKeysRequest {})
                .await
                .is_err()
        );
    }
    // The member's own certificate works.
    let ok = admin::status(&via, &cluster.member_tls(0)).await.unwrap();
    assert_eq!(ok.members.len(), 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_server_rejoins_as_a_fresh_member() {
    let mut cluster = TestCluster::start(3).await;
    let (mut bob, _) = login_on(&cluster, &[0, 1, 2], "bob").await;
    login_on(&cluster, &[0, 1, 2], "alice").await;
    let d = granted(&mut bob, deposit_for(&["alice"], b"before the wipe")).await;
    bob.deposit(&d).await.unwrap();
    let leader = cluster.leader().await;
    let wiped = followers(&cluster, leader)[0];
    let old_id = cluster.server(wiped).node_id();
    let (api, raft) = (
        cluster.server(wiped).api_addr,
        cluster.server(wiped).raft_addr,
    );
    cluster.kill(wiped).await;
    std::fs::remove_dir_all(cluster.data_dir(wiped)).unwrap();
    // Rejoin under the same name, at the same addresses (as a container
    // does), with an empty data dir. Until the leader drops the old
    // incarnation it still sends that node's entries to this address: the
    // new server must refuse them rather than answer with its empty log.
    let name = cluster.name(wiped).to_owned();
    let via = cluster.server(leader).member().raft_url;
    let server = vmail_devnet::local_auth::LocalServer::join_on(
        &cluster.data_dir(wiped),
        &name,
        &via,
        &cluster.data_dir(leader),
        cluster.harness(),
        api,
        raft,
    )
    .await
    .expect("rejoin");
    assert_ne!(server.node_id(), old_id);
    let last = cluster
        .server(leader)
        .service
        .raft()
        .metrics()
        .borrow()
        .last_log_index;
    server
        .service
        .raft()
        .wait(Some(Duration::from_secs(30)))
        .applied_index_at_least(last, "caught up")
        .await
        .expect("caught up");
    let counts = server.service.store().counts().unwrap();
    server.stop().await.unwrap();
    assert_eq!(counts.voicemails, 1);
    let status = admin::status(&via, &cluster.member_tls(leader))
        .await
        .unwrap();
    assert_eq!(status.members.len(), 3, "{status:?}");
    assert!(status.members.iter().all(|m| m.id != old_id));
    cluster.stop().await;
}
