//! The peer overlay end to end: real swarms on 127.0.0.1, a real auth
//! server, voicemail left by one peer and fetched by others.

use std::collections::HashSet;
use std::path::Path;

use libp2p::PeerId;
use sha2::{Digest, Sha256};
use vmail_node::core::locator::Locator;
use vmail_node::core::placement;
use vmail_node::peer::{FetchError, FetchFailure, LeaveError, no_progress};
use vmail_tests::{TestNet, identity, leave_request, random_content};

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_and_three_recipients_store_one_ciphertext_r_times() {
    let net = TestNet::start(6).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    net.login(2, "carol").await;
    net.login(3, "dave").await;

    let one = random_content(300_000);
    let r1 = net.peers[0]
        .leave(leave_request(&["alice"], one.clone(), 3), no_progress())
        .await
        .expect("leave for one");
    assert_eq!(r1.shards.len(), 3);
    assert_eq!(net.stored_bytes(), 3 * r1.ciphertext_len);
    let got = net.peers[1]
        .fetch(r1.voicemail_id, no_progress())
        .await
        .expect("fetch");
    assert_eq!(got.content, one);

    let three = random_content(500_000);
    let r3 = net.peers[0]
        .leave(
            leave_request(&["alice", "carol", "dave"], three.clone(), 3),
            no_progress(),
        )
        .await
        .expect("leave for three");
    // One ciphertext, three copies: not one per recipient.
    assert_eq!(
        net.stored_bytes(),
        3 * r1.ciphertext_len + 3 * r3.ciphertext_len
    );
    assert!(r3.ciphertext_len < three.len() as u64 + 1024);
    for i in 1..=3 {
        let got = net.peers[i]
            .fetch(r3.voicemail_id, no_progress())
            .await
            .expect("fetch");
        assert_eq!(Sha256::digest(&got.content), Sha256::digest(&three));
        net.peers[i].ack(r3.voicemail_id).await.expect("ack");
    }
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_works_after_the_recipient_rotates_key_and_logs_in_again() {
    let net = TestNet::start(5).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let content = random_content(100_000);
    let r = net.peers[0]
        .leave(leave_request(&["alice"], content.clone(), 2), no_progress())
        .await
        .expect("leave");
    // Paper §2.3: alice changes her identity key and logs in anew; the
    // server re-wraps the session key under her new master key.
    net.relogin(1, "alice", &identity()).await;
    let got = net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("fetch after rotation");
    assert_eq!(got.content, content);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_peers_learn_nothing() {
    let net = TestNet::start(5).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let content = random_content(200_000);
    let r = net.peers[0]
        .leave(leave_request(&["alice"], content.clone(), 3), no_progress())
        .await
        .expect("leave");
    let pending = net.peers[1].inbox().await.expect("inbox");
    // Fetching writes nothing to any peer's directory; it yields the key
    // the holders must not have.
    let fetched = net.peers[1]
        .fetch(pending[0].id, no_progress())
        .await
        .expect("fetch");
    let session_key = *fetched.session_key.as_bytes();

    let windows: HashSet<&[u8]> = content.windows(64).collect();
    let mut scanned = 0;
    for dir in net.all_peer_dirs() {
        for f in files(&dir) {
            let bytes = std::fs::read(&f).expect("read");
            scanned += bytes.len();
            assert!(
                !bytes.windows(64).any(|w| windows.contains(w)),
                "{} holds plaintext",
                f.display()
            );
            assert!(
                !bytes.windows(32).any(|w| w == session_key),
                "{} holds the session key",
                f.display()
            );
        }
    }
    // The scan covered the copies themselves.
    assert!(
        scanned as u64 >= 3 * r.ciphertext_len,
        "scanned only {scanned} bytes"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_copies_are_detected() {
    let net = TestNet::start(5).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let content = random_content(150_000);
    let r = net.peers[0]
        .leave(leave_request(&["alice"], content.clone(), 3), no_progress())
        .await
        .expect("leave");
    let locator = Locator::decode(&net.peers[1].inbox().await.unwrap()[0].locator).unwrap();

    // Two copies altered: the fetch skips whichever it tries and succeeds
    // from the third (tests/placement.rs forces every bad shard to be
    // tried and checks the holders are scored down).
    for s in &locator.layout.shards[..2] {
        assert_eq!(net.tamper(&s.id), 1);
    }
    let got = net.peers[1]
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

    // Every copy altered: a clear error, and the voicemail stays pending.
    assert_eq!(net.tamper(&locator.layout.shards[2].id), 1);
    let err = net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::AllCopiesFailed { .. }), "{err}");
    assert!(err.to_string().contains("stays in your inbox"), "{err}");
    assert_eq!(err.to_string().matches("wrong bytes").count(), 3, "{err}");
    assert_eq!(net.peers[1].inbox().await.unwrap().len(), 1);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_loss_and_graceful_leave() {
    let mut net = TestNet::start(7).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let content = random_content(120_000);
    let r = net.peers[0]
        .leave(leave_request(&["alice"], content.clone(), 3), no_progress())
        .await
        .expect("leave");
    let holders: Vec<PeerId> = r.shards.iter().map(|c| c.holder).collect();
    let alice = net.peers[1].peer_id();

    // A crash: the first holder (unless it is alice's own peer) dies.
    let dead = *holders.iter().find(|h| **h != alice).expect("a holder");
    net.kill(dead).await;
    let got = net
        .peer(alice)
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("fetch after a crash");
    assert_eq!(got.content, content);
    assert_ne!(got.holders[0].1, dead);

    // A graceful leave: another holder hands its copy on first. With three
    // distinct holders, one is neither the dead one nor alice's peer.
    let leaving = *holders
        .iter()
        .find(|h| **h != dead && **h != alice)
        .expect("a third holder");
    let copy = r.shards.iter().find(|c| c.holder == leaving).unwrap().id;
    let (moved, kept) = net.peer(leaving).hand_off().await;
    assert_eq!((moved, kept), (1, 0));
    net.kill(leaving).await;
    let new_holder = net
        .peers
        .iter()
        .find(|p| p.store().and_then(|s| s.get(&copy)).is_some())
        .expect("the copy moved to another peer")
        .peer_id();
    // Only the moved copy may remain: drop the other survivor's copy so the
    // fetch must find the moved one through the DHT.
    for c in r.shards.iter().filter(|c| c.id != copy) {
        for p in &net.peers {
            if let Some(store) = p.store() {
                store.remove(&c.id).unwrap();
            }
        }
    }
    let got = net
        .peer(alice)
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("fetch after hand-off");
    assert_eq!(got.content, content);
    assert_eq!(got.holders[0].1, new_holder);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_fall_in_their_holders_range() {
    let net = TestNet::start(8).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let everyone: Vec<PeerId> = net.peers.iter().map(|p| p.peer_id()).collect();
    for _ in 0..3 {
        let r = net.peers[0]
            .leave(
                leave_request(&["alice"], random_content(10_000), 4),
                no_progress(),
            )
            .await
            .expect("leave");
        for c in &r.shards {
            assert!(
                placement::is_in_range(&c.id, &c.holder, &everyone),
                "identifier {} is not in {}'s range",
                hex::encode(c.id),
                c.holder
            );
        }
    }
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_is_stored() {
    let net = TestNet::start_with(4, |c| c.max_voicemail_bytes = 100_000).await;
    let bob = &net.peers[0];

    // Not logged in.
    let err = bob
        .leave(
            leave_request(&["alice"], random_content(10), 1),
            no_progress(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LeaveError::NotLoggedIn), "{err}");

    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let cases = [
        (leave_request(&["alice"], Vec::new(), 1), "empty"),
        (
            leave_request(&["alice"], random_content(100_001), 1),
            "limit is 100000",
        ),
        (
            leave_request(&["alice", "mallory"], random_content(10), 1),
            "unknown recipient \"mallory\"",
        ),
        (
            leave_request(&["Not A Name!"], random_content(10), 1),
            "nothing was stored",
        ),
        (
            leave_request(&["alice"], random_content(10), 99),
            "out of range",
        ),
    ];
    for (req, expect) in cases {
        let err = bob.leave(req, no_progress()).await.unwrap_err();
        assert!(
            err.to_string().contains(expect),
            "{err} should say {expect:?}"
        );
    }

    // More copies than peers: refused before anything is stored.
    let err = bob
        .leave(
            leave_request(&["alice"], random_content(1000), 5),
            no_progress(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LeaveError::TooFewPeers {
                needed: 5,
                known: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(net.stored_bytes(), 0, "a failed leave left copies behind");
    assert!(
        net.peers[1].inbox().await.unwrap().is_empty(),
        "a failed leave deposited"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_quota_is_refused_and_nothing_is_deposited() {
    let net = TestNet::start_with(4, |c| c.quota_bytes = 50_000).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let err = net.peers[0]
        .leave(
            leave_request(&["alice"], random_content(60_000), 2),
            no_progress(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, LeaveError::NotEnoughHolders { got: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("quota full"), "{err}");
    assert!(net.peers[1].inbox().await.unwrap().is_empty());

    // Within quota it works.
    net.peers[0]
        .leave(
            leave_request(&["alice"], random_content(20_000), 2),
            no_progress(),
        )
        .await
        .expect("leave within quota");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_peer_reports_no_reachable_peers() {
    let net = TestNet::start(1).await;
    net.login(0, "bob").await;
    let mut c = net.auth.client().await;
    c.register("alice", &vmail_tests::password("alice"), &identity(), None)
        .await
        .unwrap();
    let err = net.peers[0]
        .leave(
            leave_request(&["alice"], random_content(10), 1),
            no_progress(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LeaveError::NoPeers), "{err}");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voicemail_travels_over_quic_too() {
    let net = TestNet::start_with(4, |c| {
        c.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    })
    .await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let content = random_content(200_000);
    let r = net.peers[0]
        .leave(leave_request(&["alice"], content.clone(), 2), no_progress())
        .await
        .expect("leave over QUIC");
    let got = net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("fetch over QUIC");
    assert_eq!(got.content, content);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_with_the_wrong_key_is_told_to_log_in_again() {
    let net = TestNet::start(4).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let r = net.peers[0]
        .leave(
            leave_request(&["alice"], random_content(5000), 2),
            no_progress(),
        )
        .await
        .expect("leave");
    // alice's peer holds her token but an inbox key the servers never saw:
    // every server's share is resealed to the key her login sent.
    let mut c = net.auth.client().await;
    let mut login = c
        .login("alice", &vmail_tests::password("alice"), &identity(), &[])
        .await
        .unwrap();
    login.inbox_key = vmail_proto::share::BoxSecret::generate();
    net.peers[1].set_session(vmail_node::peer::Session {
        login,
        identity: identity(),
        target: net.auth.target(),
    });
    let err = net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("log in again"), "{err}");
    net.stop().await;
}

/// A bootstrap address may leave out `/p2p/<id>` (the compose testnet names
/// its supernodes by host name), and a peer whose bootstrap peer is not up
/// yet keeps dialing it while it has no connection, so start order does not
/// matter.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_joins_through_an_address_without_a_peer_id_that_comes_up_later() {
    use vmail_node::config::NodeConfig;
    use vmail_node::overlay::swarm::Role;
    use vmail_tests::{start_peer, wait_until_known};

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let mut config = NodeConfig::loopback();
    config.bootstrap = vec![addr.clone()];
    let joiner = start_peer(dir.path(), "joiner", config, Role::Server).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        joiner.network().routing_peers().await.unwrap().is_empty(),
        "nothing listens at {addr} yet"
    );

    let mut config = NodeConfig::loopback();
    config.listen = vec![addr];
    let late = start_peer(dir.path(), "late", config, Role::Server).await;
    wait_until_known(&joiner, late.peer_id()).await;
    wait_until_known(&late, joiner.peer_id()).await;
    joiner.stop().await;
    late.stop().await;
}
