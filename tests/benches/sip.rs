//! The SIP front's latencies (issue 20), each against a reference measured
//! in the same run on the same net:
//!
//! - deposit to NOTIFY at the softphone, against the auth group's
//!   WatchPending push that wakes the lamp;
//! - a call to `voicemail`, INVITE to the first RTP packet, against a
//!   plain fetch of the same voicemail;
//! - a recording, the caller's BYE to the voicemail being listed in the
//!   callee's inbox, against a plain leave of the same WAV.
//!
//! `cargo bench -p vmail-tests --bench sip [-- ROUNDS]` (default 20)

use std::time::{Duration, Instant};

use rsipstack::sip::Method;
use vmail_node::auth_client::SenderVisibility;
use vmail_node::peer::{LeaveRequest, no_progress};
use vmail_node::sip::{audio, sdp};
use vmail_tests::phone::{Agent, Phone};
use vmail_tests::spam::quantile;

/// The pause between two calls (not timed).
const PACE: Duration = Duration::from_millis(150);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn row(what: &str, mut xs: Vec<Duration>, mut reference: Vec<Duration>, against: &str) {
    xs.sort();
    reference.sort();
    let (p50, p95) = (ms(quantile(&xs, 0.5)), ms(quantile(&xs, 0.95)));
    let (r50, r95) = (
        ms(quantile(&reference, 0.5)),
        ms(quantile(&reference, 0.95)),
    );
    println!(
        "| {what} | {p50:.1} / {p95:.1} | {against} | {r50:.1} / {r95:.1} | {:.2} |",
        p50 / r50
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds: usize = std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(20);
    let p = Phone::start(|_| {}).await;
    let addr = p.addr();
    let user_uri = format!("sip:alice@{addr}");
    println!("{rounds} rounds each, SIP on {addr}");
    println!("| measure | p50 / p95 ms | reference | p50 / p95 ms | ratio p50 |");
    println!("|---|---:|---|---:|---:|");

    // The lamp.
    let mut phone = Agent::new(addr).await;
    let sub = phone
        .request(
            Method::Subscribe,
            &user_uri,
            "Event: message-summary\r\nAccept: application/simple-message-summary\r\nExpires: 3600\r\n",
            "",
        )
        .await;
    assert_eq!(u16::from(sub.status_code), 200);
    let first = phone.next_request(Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&first.body).contains("Messages-Waiting: no"));
    let mut watch = p.alice.watch_inbox().await.expect("watch");
    let (mut notify, mut push) = (Vec::new(), Vec::new());
    let short = audio::tone(500.0, 500);
    for _ in 0..rounds {
        let t0 = Instant::now();
        let leave = p.bob_leaves(&short);
        let pushed = async {
            watch.message().await.expect("push").expect("an item");
            t0.elapsed()
        };
        let notified = async {
            loop {
                let n = phone.next_request(Duration::from_secs(30)).await;
                if String::from_utf8_lossy(&n.body).contains("Messages-Waiting: yes") {
                    return t0.elapsed();
                }
            }
        };
        let (id, pushed, notified) = tokio::join!(leave, pushed, notified);
        push.push(pushed);
        notify.push(notified);
        p.alice.ack(id).await.expect("ack");
        loop {
            let n = phone.next_request(Duration::from_secs(30)).await;
            if String::from_utf8_lossy(&n.body).contains("Messages-Waiting: no") {
                break;
            }
        }
    }
    row(
        "leave start to NOTIFY (lamp on)",
        notify,
        push,
        "leave start to WatchPending push",
    );

    // Playback start.
    let id = p.bob_leaves(&audio::tone(500.0, 3000)).await;
    let (mut start, mut fetch) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        p.alice.fetch(id, no_progress()).await.expect("fetch");
        fetch.push(t.elapsed());
        let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut call = Agent::new(addr).await;
        let uri = format!("sip:voicemail@{addr}");
        let t = Instant::now();
        call.call(&uri, rtp.local_addr().unwrap()).await;
        let mut buf = [0u8; 2048];
        rtp.recv_from(&mut buf).await.unwrap();
        start.push(t.elapsed());
        call.request(Method::Bye, &uri, "", "").await;
        // A phone's pace, not a flood's: 4 requests a call stay well under
        // the gate's 50 a second from one address.
        tokio::time::sleep(PACE).await;
    }
    row(
        "INVITE to first RTP (playback)",
        start,
        fetch,
        "fetch of the same voicemail",
    );

    // Recording to fetchable.
    let pcm = audio::tone(440.0, 1000);
    let (mut listed, mut leave) = (Vec::new(), Vec::new());
    let bob = &p.net.peers[1];
    for _ in 0..rounds.min(10) {
        let t = Instant::now();
        let r = p
            .alice
            .leave(
                LeaveRequest {
                    recipients: vec!["bob".into()],
                    content: audio::pcm_to_wav(&pcm),
                    content_type: "audio/wav".into(),
                    duration_ms: 1000,
                    redundancy: None,
                    sender: SenderVisibility::Shown,
                },
                no_progress(),
            )
            .await
            .expect("leave");
        leave.push(t.elapsed());
        bob.ack(r.voicemail_id).await.expect("ack");
        let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut call = Agent::new(addr).await;
        let uri = format!("sip:bob@{addr}");
        let ok = call.call(&uri, rtp.local_addr().unwrap()).await;
        let media = sdp::parse_offer(&ok.body).expect("an SDP answer").remote;
        Agent::talk(&rtp, media, &pcm).await;
        call.request(Method::Bye, &uri, "", "").await;
        let t = Instant::now();
        let id = loop {
            if let Some(v) = bob.inbox().await.expect("inbox").first() {
                break v.id;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        listed.push(t.elapsed());
        let told = call.next_request(Duration::from_secs(30)).await;
        assert!(
            String::from_utf8_lossy(&told.body).contains("left"),
            "{told}"
        );
        bob.ack(id).await.expect("ack");
    }
    row(
        "BYE to listed in the callee's inbox (recording)",
        listed,
        leave,
        "plain leave of the same WAV",
    );
}
