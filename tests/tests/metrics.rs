//! The daemon's Prometheus metrics and its bounded hand-off, on real
//! swarms on loopback with a real auth server: a leave and a fetch move
//! the counters a scrape of `/metrics` shows, next to libp2p's own series,
//! and a hand-off stops at its timeout and says what stayed.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmail_node::peer::{HandOff, no_progress};
use vmail_tests::{TestNet, leave_request, random_content};

/// `GET /metrics` on `addr`, over plain HTTP/1.1; the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: vmail\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_owned()
}

/// The value of the series `name` (with its labels, if any) in `text`,
/// 0 when absent.
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_and_a_fetch_show_in_every_peers_metrics() {
    let net = TestNet::start_with(5, |c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    let addrs: Vec<SocketAddr> = net
        .peers
        .iter()
        .map(|p| p.metrics_addr().expect("metrics served"))
        .collect();
    let before = scrape(addrs[0]).await;
    assert_eq!(value(&before, "vmail_supernode_role"), 0.0);
    assert_eq!(
        value(&before, "vmail_holder_quota_bytes"),
        net.peers[0].config().quota_bytes as f64
    );

    let content = random_content(100_000);
    let r = net.peers[0]
        .leave(leave_request(&["alice"], content.clone(), 3), no_progress())
        .await
        .expect("leave");
    let got = net.peers[1]
        .fetch(r.voicemail_id, no_progress())
        .await
        .expect("fetch");
    assert_eq!(got.content, content);

    let mut texts = Vec::new();
    for a in &addrs {
        texts.push(scrape(*a).await);
    }
    let leaver = &texts[0];
    let fetcher = &texts[1];
    for phase in ["crypto", "dht", "transfer", "auth"] {
        let leave = format!("vmail_leave_phase_seconds_count{{phase=\"{phase}\"}}");
        let fetch = format!("vmail_fetch_phase_seconds_count{{phase=\"{phase}\"}}");
        assert_eq!(value(leaver, &leave), 1.0, "{leave} in:\n{leaver}");
        assert_eq!(value(fetcher, &fetch), 1.0, "{fetch} in:\n{fetcher}");
    }
    let sum = |name: &str| texts.iter().map(|t| value(t, name)).sum::<f64>();
    assert_eq!(sum("vmail_holder_stores_accepted_total"), 3.0);
    assert_eq!(sum("vmail_holder_objects"), 3.0);
    assert!(sum("vmail_holder_bytes") >= 3.0 * 100_000.0);
    assert_eq!(
        sum("vmail_holder_transfer_seconds_count{direction=\"in\"}"),
        3.0
    );
    assert!(sum("vmail_holder_transfer_bytes_total{direction=\"in\"}") >= 3.0 * 100_000.0);
    // A fetch takes k = 1 of the three copies (hedging at most one more);
    // a copy on the fetcher's own peer is read from its disk.
    let me = net.peers[1].peer_id();
    let remote = got.holders.iter().filter(|(_, h)| *h != me).count() as f64;
    let served = sum("vmail_holder_fetches_served_total");
    assert!(served >= remote && served <= remote + 1.0, "{served}");
    assert!(sum("vmail_holder_transfer_bytes_total{direction=\"out\"}") >= remote * 100_000.0);

    // libp2p's series share the registry: the bandwidth counters, and the
    // recorders of the swarm, identify and Kademlia.
    for t in &texts {
        for series in [
            "libp2p_bandwidth_bytes_total{",
            "libp2p_swarm_connections_established_total{",
            "libp2p_identify_",
            "libp2p_kad_",
        ] {
            assert!(t.contains(series), "{series} missing");
        }
        // Labels come from fixed sets: no peer id, user or voicemail id.
        for p in &net.peers {
            assert!(!t.contains(&p.peer_id().to_string()), "a peer id label");
        }
        for word in ["alice", "bob", &hex::encode(r.voicemail_id)] {
            assert!(!t.contains(word), "{word} in a label");
        }
        assert!(t.ends_with("# EOF\n"));
    }
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_address_in_use_fails_the_start_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = vmail_node::config::NodeConfig::loopback();
    config.metrics.listen = Some(addr);
    let err = vmail_node::peer::Peer::start(vmail_node::peer::PeerOptions {
        data_dir: dir.path().to_owned(),
        config,
        role: vmail_node::overlay::swarm::Role::Server,
        observations: None,
    })
    .await
    .expect_err("the address is taken");
    let msg = err.to_string();
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("--metrics") && msg.contains("[metrics]"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_stops_at_its_timeout_and_says_what_stayed() {
    let net = TestNet::start(5).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    for _ in 0..6 {
        net.peers[0]
            .leave(
                leave_request(&["alice"], random_content(20_000), 3),
                no_progress(),
            )
            .await
            .expect("leave");
    }
    // The holder with the most objects leaves.
    let holder = net
        .peers
        .iter()
        .max_by_key(|p| p.store().map_or(0, |s| s.list().len()))
        .unwrap();
    let store = holder.store().unwrap();
    let held = store.list().len();
    assert!(held >= 4, "{held}");

    // No time: nothing is tried, everything stays.
    let t = Instant::now();
    let r = holder.hand_off_within(Duration::ZERO, &|_| {}).await;
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(
        (r.total, r.moved, r.unfinished, r.kept()),
        (held, 0, held, held)
    );
    assert!(r.finished && r.timed_out());
    assert_eq!(store.list().len(), held);

    // A little time: the hand-off stops there, and what it did not finish
    // stays here.
    let t = Instant::now();
    let r = holder
        .hand_off_within(Duration::from_millis(2), &|_| {})
        .await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(r.timed_out(), "{r:?}");
    assert_eq!(store.list().len(), held - r.moved);
    let left = held - r.moved;

    // Enough time: everything goes, with progress at the start and end.
    let seen: Mutex<Vec<HandOff>> = Mutex::new(Vec::new());
    let r = holder
        .hand_off_within(Duration::from_secs(60), &|h| {
            seen.lock().unwrap().push(h.clone())
        })
        .await;
    assert_eq!((r.total, r.moved, r.kept()), (left, left, 0), "{r:?}");
    assert!(!r.timed_out());
    assert!(store.list().is_empty());
    let seen = seen.into_inner().unwrap();
    assert_eq!(
        seen.first().map(|h| (h.done(), h.finished)),
        Some((0, false))
    );
    assert_eq!(seen.last(), Some(&r));
    net.stop().await;
}
