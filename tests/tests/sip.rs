//! The SIP front with real SIP clients: sipp scenarios
//! (`tests/sip/scenarios/`) against a peer's `SipService` on loopback,
//! with a real auth server and overlay behind it. The lamp follows a
//! deposit and an ack, a call to `voicemail` plays the voicemail (checked
//! sample by sample) and acks it, a sipp caller's G.711 pcap is recorded
//! and fetched by the callee exactly as sent, and bad input gets its SIP
//! error. `tests/sip/install.sh` installs sipp when it is missing.

use std::time::{Duration, Instant};

use vmail_node::peer::no_progress;
use vmail_node::sip::audio;
use vmail_tests::baresip::Baresip;
use vmail_tests::phone::{Agent, PASSWORD, Phone};
use vmail_tests::sipp::{self, Sipp};

/// alice's phone, once sipp is installed.
async fn phone() -> Phone {
    sipp::ensure_installed().expect("sipp");
    Phone::start(|_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_takes_the_sip_password_and_nothing_else() {
    let p = phone().await;
    p.sipp("register.xml").run().await.unwrap().check().unwrap();
    // The scenario unregisters at its end.
    assert!(p.sip.status().bindings.is_empty());
    Sipp::new("register_wrong.xml", p.addr())
        .credentials("alice", "not-the-password")
        .run()
        .await
        .unwrap()
        .check()
        .unwrap();
    let s = p.sip.status();
    assert_eq!(s.refused.get("wrong credentials"), Some(&1), "{s:?}");
    assert!(s.bindings.is_empty());

    // Two contacts, then `Contact: *` removes both, and only with Expires: 0.
    let registrar = format!("sip:alice@{}", p.addr());
    let mut phone = Agent::new(p.addr()).await;
    let mut register = async |headers: &str| {
        let r = phone
            .request(rsipstack::sip::Method::Register, &registrar, headers, "")
            .await;
        u16::from(r.status_code)
    };
    for contact in ["<sip:alice@127.0.0.1:7001>", "<sip:alice@127.0.0.1:7002>"] {
        assert_eq!(
            register(&format!("Contact: {contact}\r\nExpires: 600\r\n")).await,
            200
        );
    }
    assert_eq!(p.sip.status().bindings.len(), 2);
    assert_eq!(register("Contact: *\r\nExpires: 600\r\n").await, 400);
    assert_eq!(p.sip.status().bindings.len(), 2);
    assert_eq!(register("Contact: *\r\nExpires: 0\r\n").await, 200);
    assert!(p.sip.status().bindings.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lamp_goes_on_with_a_deposit_and_off_with_the_ack() {
    let p = phone().await;
    let run = p
        .sipp("mwi.xml")
        .timeout(Duration::from_secs(120))
        .spawn()
        .unwrap();
    p.until("subscribed", |s| s.subscriptions.len() == 1).await;
    run.wait_for_message("Messages-Waiting: no", 1, Duration::from_secs(20))
        .await
        .unwrap();
    let left = Instant::now();
    let id = p.bob_leaves(&audio::tone(500.0, 300)).await;
    run.wait_for_message("Messages-Waiting: yes", 1, Duration::from_secs(30))
        .await
        .unwrap();
    println!(
        "deposit to NOTIFY at sipp: {} ms",
        left.elapsed().as_millis()
    );
    p.alice.fetch(id, no_progress()).await.unwrap();
    p.alice.ack(id).await.unwrap();
    let outcome = run.wait().await.unwrap();
    outcome.check().unwrap();
    assert!(p.sip.status().subscriptions.is_empty());
}

/// Receives RTP on `socket` until `end`, decoding G.711 by payload type;
/// once `press_after` samples have come, presses key 7 (RFC 4733, its end
/// packet three times) towards where the RTP comes from.
async fn receive_rtp(
    socket: &tokio::net::UdpSocket,
    press_after: usize,
    end: impl std::future::Future,
) -> Vec<i16> {
    let mut pcm = Vec::new();
    let mut buf = [0u8; 2048];
    let mut pressed = false;
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = &mut end => return pcm,
            r = socket.recv_from(&mut buf) => {
                let (n, from) = r.unwrap();
                let p = rtp_rs::RtpReader::new(&buf[..n]).unwrap();
                if let Some(c) = audio::Codec::from_payload_type(p.payload_type()) {
                    pcm.extend(c.decode(p.payload()));
                }
                if !pressed && pcm.len() > press_after {
                    pressed = true;
                    let seven = rtp_rs::RtpPacketBuilder::new()
                        .payload_type(101)
                        .ssrc(9)
                        .timestamp(1)
                        .payload(&[7, 0x8a, 0, 160])
                        .build()
                        .unwrap();
                    for _ in 0..3 {
                        socket.send_to(&seven, from).await.unwrap();
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_voicemail_plays_each_and_acks_all_but_the_kept_one() {
    let p = phone().await;
    let first = audio::tone(500.0, 1000);
    let second = audio::tone(700.0, 1000);
    let first_id = p.bob_leaves(&first).await;
    let second_id = p.bob_leaves(&second).await;
    p.until("the lamp shows both", |s| s.summary.new == 2).await;
    let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = rtp.local_addr().unwrap().port();
    let called = Instant::now();
    let run = p
        .sipp("play.xml")
        .key("rtp_port", port)
        .timeout(Duration::from_secs(60))
        .spawn()
        .unwrap();
    // 7 is pressed halfway through the voicemail played first (after its
    // beep). Both were left in the same second, so either may come first.
    let pcm = receive_rtp(&rtp, 2560 + 4000, async {
        run.wait().await.unwrap().check().unwrap()
    })
    .await;
    println!(
        "call answered and played in {} ms",
        called.elapsed().as_millis()
    );
    // What the caller heard holds both voicemails through G.711, whole.
    let codec = audio::Codec::Pcmu;
    let find = |v: &[i16]| {
        let want = codec.decode(&codec.encode(v));
        pcm.windows(want.len())
            .position(|w| w == want.as_slice())
            .unwrap_or_else(|| {
                panic!(
                    "a voicemail is missing from the {} samples heard",
                    pcm.len()
                )
            })
    };
    let (a, b) = (find(&first), find(&second));
    assert!(a.min(b) > 0, "a beep comes first: {a} {b}");
    let (kept, heard) = if a < b {
        (first_id, second_id)
    } else {
        (second_id, first_id)
    };
    // The one played second played to the end and was acked; the one
    // played first was kept, and the lamp counts it old.
    let left: Vec<_> = p
        .alice
        .inbox()
        .await
        .unwrap()
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(
        left,
        [kept],
        "heard {} must be acked, kept {} not",
        hex::encode(heard),
        hex::encode(kept)
    );
    p.until("the lamp shows one old", |s| {
        (s.summary.new, s.summary.old) == (0, 1)
    })
    .await;
}

/// The audio of sipp's `g711a.pcap`: each RTP payload, A-law decoded, in order.
fn pcap_audio() -> Vec<i16> {
    let file = std::fs::File::open("/usr/share/sip-tester/g711a.pcap").unwrap();
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
    let mut pcm = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap();
        let sliced = etherparse::SlicedPacket::from_ethernet(&packet.data).unwrap();
        let Some(etherparse::TransportSlice::Udp(udp)) = sliced.transport else {
            continue;
        };
        let rtp = rtp_rs::RtpReader::new(udp.payload()).unwrap();
        pcm.extend(audio::Codec::Pcma.decode(rtp.payload()));
    }
    pcm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_leaves_a_voicemail_the_callee_fetches_exactly_as_sent() {
    let p = phone().await;
    let run = p
        .sipp("record.xml")
        .key("callee", "bob")
        .timeout(Duration::from_secs(90))
        .spawn()
        .unwrap();
    // RTP from an address the SDP did not name is not recorded.
    p.until("a call", |s| !s.calls.is_empty()).await;
    let media = p.sip.status().calls[0].media;
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let junk = rtp_rs::RtpPacketBuilder::new()
        .payload_type(8)
        .ssrc(1)
        .timestamp(480)
        .payload(&[0x55; 240])
        .build()
        .unwrap();
    for _ in 0..20 {
        stranger.send_to(&junk, media).await.unwrap();
    }
    run.wait_for_message("BYE sip:", 1, Duration::from_secs(60))
        .await
        .unwrap();
    let hung_up = Instant::now();
    let bob = &p.net.peers[1];
    let pending = loop {
        let pending = bob.inbox().await.unwrap();
        if !pending.is_empty() || hung_up.elapsed() > Duration::from_secs(30) {
            break pending;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("hang-up to fetchable: {} ms", hung_up.elapsed().as_millis());
    assert_eq!(pending.len(), 1);
    let outcome = run.wait().await.unwrap();
    outcome.check().unwrap();
    assert!(
        outcome.messages.contains("voicemail for bob left"),
        "{outcome}"
    );
    let fetched = bob.fetch(pending[0].id, no_progress()).await.unwrap();
    assert_eq!(
        pending[0]
            .sender
            .username()
            .map(|u| u.to_string())
            .as_deref(),
        Some("alice")
    );
    let mut wav = hound::WavReader::new(std::io::Cursor::new(&fetched.content)).unwrap();
    assert_eq!(wav.spec().sample_rate, 8000);
    let samples: Vec<i16> = wav.samples::<i16>().map(Result::unwrap).collect();
    let want = pcap_audio();
    assert_eq!(
        samples.len(),
        want.len(),
        "duration differs from the pcap's"
    );
    assert!(
        samples == want,
        "the recording differs from the pcap's audio"
    );
    assert_eq!(pending[0].meta.duration_ms, want.len() as u64 / 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_sip_error_and_changes_nothing() {
    let p = phone().await;
    for scenario in ["bad_sdp.xml", "bad_requests.xml", "mwi_bad_event.xml"] {
        p.sipp(scenario).run().await.unwrap().check().unwrap();
    }
    // An oversize request: 513, answered along its Via.
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = s.local_addr().unwrap();
    let big = format!(
        "OPTIONS sip:voicemail@{a} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbig\r\nFrom: <sip:alice@{a}>;tag=1\r\nTo: <sip:voicemail@{a}>\r\nCall-ID: big\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nSubject: {x}\r\nContent-Length: 0\r\n\r\n",
        a = p.addr(),
        x = "x".repeat(9000)
    );
    s.send_to(big.as_bytes(), p.addr()).await.unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("SIP/2.0 513"), "{answer}");
    let st = p.sip.status();
    assert!(
        st.calls.is_empty() && st.subscriptions.is_empty() && st.bindings.is_empty(),
        "{st:?}"
    );
    assert!(p.alice.inbox().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_registers_and_its_lamp_follows_the_inbox() {
    let p = phone().await;
    let mut phone = Baresip::start(p.addr(), "alice", PASSWORD).expect("baresip starts");
    let wait = Duration::from_secs(30);
    phone.wait_for("200 OK", wait).await.unwrap();
    phone.wait_for("Messages-Waiting: no", wait).await.unwrap();
    let id = p.bob_leaves(&audio::tone(500.0, 300)).await;
    phone.wait_for("Messages-Waiting: yes", wait).await.unwrap();
    phone.wait_for("Voice-Message: 1/0", wait).await.unwrap();
    p.alice.fetch(id, no_progress()).await.unwrap();
    p.alice.ack(id).await.unwrap();
    phone.wait_for("Messages-Waiting: no", wait).await.unwrap();
    let s = p.sip.status();
    assert_eq!((s.bindings.len(), s.subscriptions.len()), (1, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_held_to_its_share_while_the_phone_registers() {
    let p = phone().await;
    let flood = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let from = flood.local_addr().unwrap();
    let (addr, sent) = (p.addr(), 1000);
    let register = p.sipp("register.xml").run();
    let flooding = async {
        for i in 0..sent {
            let invite = format!(
                "INVITE sip:voicemail@{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKflood{i}\r\nFrom: <sip:x@{from}>;tag={i}\r\nTo: <sip:voicemail@{addr}>\r\nCall-ID: flood-{i}\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{from}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            );
            flood.send_to(invite.as_bytes(), addr).await.unwrap();
        }
        let (mut challenged, mut busy) = (0, 0);
        let mut buf = [0u8; 4096];
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(500), flood.recv_from(&mut buf)).await
        {
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            if line.starts_with("SIP/2.0 401") {
                challenged += 1;
            } else if line.starts_with("SIP/2.0 503") {
                busy += 1;
            }
        }
        (challenged, busy)
    };
    let started = Instant::now();
    let (registered, (challenged, busy)) = tokio::join!(register, flooding);
    let seconds = started.elapsed().as_secs() + 1;
    registered.unwrap().check().unwrap();
    println!("flood of {sent} in {seconds} s: {challenged} challenged (401), {busy} refused (503)");
    // Only the source's share of each second reached the transaction layer
    // (and was challenged); the rest were refused at the gate, or dropped
    // by the kernel when the socket's buffer was full.
    assert!(busy > 0, "nothing was refused");
    assert!(
        challenged <= 50 * seconds as usize,
        "{challenged} passed in {seconds} s"
    );
    let refused = p
        .sip
        .status()
        .refused
        .get("over the request rate")
        .copied()
        .unwrap_or(0);
    assert!(refused >= busy as u64, "{refused} counted, {busy} answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_past_its_cap_is_cut_off_there_and_left() {
    let p = Phone::start(|c| c.max_recording_secs = 1).await;
    let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut caller = Agent::new(p.addr()).await;
    let uri = format!("sip:bob@{}", p.addr());
    let ok = caller.call(&uri, rtp.local_addr().unwrap()).await;
    let media = vmail_node::sip::sdp::parse_offer(&ok.body).unwrap().remote;
    // A re-INVITE cannot change the call.
    let offer = Agent::offer(rtp.local_addr().unwrap());
    let again = caller
        .request(
            rsipstack::sip::Method::Invite,
            &uri,
            "Content-Type: application/sdp\r\n",
            &offer,
        )
        .await;
    assert_eq!(u16::from(again.status_code.clone()), 488, "{again}");
    // Talk for 2 s; the service hangs up at 1 s.
    let pcm = audio::tone(440.0, 2000);
    let frames = Agent::talk(&rtp, media, &pcm).await;
    let bye = caller.next_request(Duration::from_secs(10)).await;
    assert_eq!(bye.method, rsipstack::sip::Method::Bye, "{bye}");
    // The BYE came while we still talked, so it may have been sent again.
    let told = loop {
        let r = caller.next_request(Duration::from_secs(30)).await;
        if r.method != rsipstack::sip::Method::Bye {
            break r;
        }
    };
    let text = String::from_utf8_lossy(&told.body).into_owned();
    assert!(text.contains("voicemail for bob left: 1.0 s"), "{told}");
    assert!(text.contains("cut off at the 1 s limit"), "{text}");
    let bob = &p.net.peers[1];
    let pending = bob.inbox().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].meta.duration_ms, 1000);
    let fetched = bob.fetch(pending[0].id, no_progress()).await.unwrap();
    let want = audio::Codec::Pcmu.decode(&frames[..8000]);
    assert_eq!(audio::wav_to_8k(&fetched.content).unwrap(), want);
}
