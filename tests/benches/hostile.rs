//! Honest leave and fetch latency while one attacker runs an attack, against
//! the same operations with no attacker, in one command, on a 10-peer
//! loopback overlay with a real auth server ([`vmail_tests::TestNet`]).
//!
//! The attacks are the hostile tests' drivers ([`vmail_tests::attacks`]),
//! each running in the background for the whole of its block of rounds:
//!
//! 1. one peer takes a holder's blob exchange slots (stalled granted Stores
//!    and silent streams, renewed every request timeout);
//! 2. Sybils with ids ground closer to each new shard id than its holder
//!    announce it;
//! 4. unread WatchPending streams on sessions of accounts that keep
//!    receiving full-size deposits;
//! 5. a flood of unfinished OPAQUE LoginStarts.
//!
//! Each round is a timed leave of 1 MiB (RS(4,8)) from bob to alice, then a
//! timed fetch (and ack) of the voicemail left in the round before, so that
//! the Sybils have had a round to announce its shards. Baseline blocks with
//! no attacker run before every attack and after the last, and are pooled,
//! so drift over the run does not bias the ratios.
//!
//! `cargo bench -p vmail-tests --bench hostile`

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::kad::RecordKey;
use tokio::sync::mpsc;
use vmail_auth::service::{MAX_LOCATOR_LEN, SystemClock};
use vmail_node::core::erasure::Redundancy;
use vmail_node::peer::{LeaveRequest, no_progress};
use vmail_tests::attacks::{
    Attack, Limits, LoginFlood, SlotHog, Sybils, WatchHog, kad_contacts, register_flood_names,
    spawn_login_flood, spawn_slot_hog, spawn_sybils, spawn_watch_hog,
};
use vmail_tests::{TestAuth, TestNet, leave_request, random_content, register_and_login};

const PEERS: usize = 10;
const SIZE: usize = 1 << 20;
/// Timed rounds with an attack running.
const ATTACK_ROUNDS: usize = 16;
/// Timed rounds in each baseline block (one before each attack, one after
/// the last).
const BASE_ROUNDS: usize = 8;
/// No attack runs longer than this, whatever happens to the bench.
const ATTACK_TIME: Duration = Duration::from_secs(300);
/// The peer that bob leaves from.
const BOB: usize = 0;
/// The peer alice fetches on.
const ALICE: usize = 1;
/// The holder whose slots the attacker takes.
const VICTIM: usize = 2;
/// The attacker's peer.
const MALLORY: usize = PEERS - 1;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Leave and fetch times of a block of rounds.
#[derive(Default)]
struct Times {
    leave: Vec<Duration>,
    fetch: Vec<Duration>,
}

impl Times {
    fn stats(&self) -> [Duration; 4] {
        let (mut l, mut f) = (self.leave.clone(), self.fetch.clone());
        l.sort();
        f.sort();
        [pct(&l, 0.5), pct(&l, 0.95), pct(&f, 0.5), pct(&f, 0.95)]
    }
}

/// Runs `rounds` timed rounds; `fetch_next` is the voicemail left by the
/// round before; the shards of each leave go to `sybils` if given.
async fn rounds(
    net: &TestNet,
    rounds: usize,
    fetch_next: &mut [u8; 16],
    sybils: Option<&mpsc::Sender<(RecordKey, libp2p::PeerId)>>,
    into: &mut Times,
) {
    let content = random_content(SIZE);
    for _ in 0..rounds {
        let req = LeaveRequest {
            redundancy: Some(Redundancy::DEFAULT),
            ..leave_request(&["alice"], content.clone(), 1)
        };
        let t = Instant::now();
        let r = net.peers[BOB]
            .leave(req, no_progress())
            .await
            .expect("leave");
        into.leave.push(t.elapsed());
        if let Some(s) = sybils {
            for shard in &r.shards {
                let _ = s.try_send((RecordKey::new(&shard.id), shard.holder));
            }
        }
        let t = Instant::now();
        let got = net.peers[ALICE]
            .fetch(*fetch_next, no_progress())
            .await
            .expect("fetch");
        into.fetch.push(t.elapsed());
        assert_eq!(got.content.len(), SIZE);
        net.peers[ALICE].ack(*fetch_next).await.expect("ack");
        *fetch_next = r.voicemail_id;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // The lock-out alone would stop each flood name after a few attempts;
    // raised, as in the hostile test, so the flood reaches the login table.
    let auth = TestAuth::start_with(|c| c.max_failed_logins = 1000, Arc::new(SystemClock)).await;
    let net = TestNet::start_on(auth, PEERS, |_| {}).await;
    net.login(BOB, "bob").await;
    net.login(ALICE, "alice").await;
    let victim = net.peers[VICTIM].peer_id();
    let mallory = register_and_login(&net.auth, "mallory").await.0;
    let all: Vec<_> = net.peers.iter().collect();
    let contacts = kad_contacts(&all).await;
    register_flood_names(&net.auth.target(), 10).await;
    println!("{PEERS} peers on loopback, real auth server over TLS; 1 MiB voicemails, RS(4,8)");
    println!("reproduce: cargo bench -p vmail-tests --bench hostile\n");

    // One untimed round, so the first timed fetch has a voicemail.
    let mut next = net.peers[BOB]
        .leave(
            leave_request(&["alice"], random_content(SIZE), 1),
            no_progress(),
        )
        .await
        .expect("warm-up leave")
        .voicemail_id;

    let mut base = Times::default();
    let mut blocks = Vec::new();
    let mut mallory = Some(mallory);
    let attacks = [
        "1. holder slots taken",
        "2. Sybil provider records",
        "4. unread WatchPending streams",
        "5. LoginStart flood",
    ];
    for (i, name) in attacks.iter().enumerate() {
        let mut block = Times::default();
        rounds(&net, BASE_ROUNDS, &mut next, None, &mut block).await;
        base.leave.extend(&block.leave);
        base.fetch.extend(&block.fetch);
        blocks.push(block);

        let limits = Limits::new(1_000_000, ATTACK_TIME);
        let mut sybils = None;
        let attack: Attack = match i {
            0 => spawn_slot_hog(
                &net.peers[MALLORY],
                mallory.take().expect("one slot attack"),
                victim,
                SlotHog::default(),
                limits,
            ),
            1 => {
                let (a, tx) = spawn_sybils(
                    contacts.clone(),
                    Sybils {
                        per_key: 2,
                        live: 24,
                    },
                    limits,
                );
                sybils = Some(tx);
                a
            }
            2 => spawn_watch_hog(
                net.auth.target(),
                "watcher",
                WatchHog {
                    users: 4,
                    deposits: 50,
                    locator_len: MAX_LOCATOR_LEN,
                    sessions: 4,
                },
                limits,
            ),
            _ => spawn_login_flood(
                net.auth.channel().await,
                LoginFlood {
                    names: 10,
                    in_flight: 32,
                },
                limits,
            ),
        };
        // Let the attack take hold before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut times = Times::default();
        rounds(&net, ATTACK_ROUNDS, &mut next, sybils.as_ref(), &mut times).await;
        let still_running = !attack.is_finished();
        let steps = attack.finish().await;
        eprintln!("{name}: {steps} attack steps, running to the end: {still_running}");
        blocks.push(times);
    }
    let mut last = Times::default();
    rounds(&net, BASE_ROUNDS, &mut next, None, &mut last).await;
    base.leave.extend(&last.leave);
    base.fetch.extend(&last.fetch);

    let b = base.stats();
    println!(
        "| attack | leave p50 ms | leave p95 ms | fetch p50 ms | fetch p95 ms | leave p50 / base | leave p95 / base | fetch p50 / base | fetch p95 / base |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| none (baseline, {} rounds in 5 blocks) | {:.1} | {:.1} | {:.1} | {:.1} | 1.00 | 1.00 | 1.00 | 1.00 |",
        base.leave.len(),
        ms(b[0]),
        ms(b[1]),
        ms(b[2]),
        ms(b[3])
    );
    for (name, t) in attacks.iter().zip(blocks.iter().skip(1).step_by(2)) {
        let s = t.stats();
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ms(s[0]),
            ms(s[1]),
            ms(s[2]),
            ms(s[3]),
            s[0].as_secs_f64() / b[0].as_secs_f64(),
            s[1].as_secs_f64() / b[1].as_secs_f64(),
            s[2].as_secs_f64() / b[2].as_secs_f64(),
            s[3].as_secs_f64() / b[3].as_secs_f64(),
        );
    }
    println!("\nBaseline blocks (drift over the run), leave p50 / fetch p50 ms:");
    for (i, t) in blocks.iter().step_by(2).chain([&last]).enumerate() {
        let s = t.stats();
        println!("- block {}: {:.1} / {:.1}", i + 1, ms(s[0]), ms(s[2]));
    }
    net.stop().await;
}
