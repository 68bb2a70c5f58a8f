//! A spam run (paper §5, SPIT): honest senders and spammers leave real
//! voicemail through real peers and a real auth server on its default
//! spam settings, and the run counts what reached an inbox.
//!
//! The recipients keep the default policy (`contacts+first-contact`); each
//! honest sender is a contact of a few of them. The honest leaves are timed
//! twice in the same run: alone, then while every spammer tries its leaves
//! to random recipients. The bench (`cargo bench -p vmail-tests --bench
//! spam`) runs the sizes; `tests/tests/spam.rs` runs a short slice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vmail_node::auth_client::{AuthClient, GrantRequest, ListEdit, LoginSession, SenderVisibility};
use vmail_node::peer::{Peer, no_progress};
use vmail_proto::grant::GrantedShard;
use vmail_proto::names::{Recipients, Username};

use crate::{TestNet, leave_request, password, random_content, register_and_login};

/// The shape of a run.
#[derive(Debug, Clone, Copy)]
pub struct SpamRun {
    /// Recipients, on the default policy.
    pub recipients: usize,
    /// Honest senders; sender `i` is a contact of recipients
    /// `i * contacts .. (i + 1) * contacts` (wrapping).
    pub honest: usize,
    /// Contacts each honest sender has.
    pub contacts: usize,
    /// Voicemails each honest sender leaves in each phase, one to all its
    /// contacts at a time.
    pub honest_rounds: usize,
    /// Spam accounts.
    pub spammers: usize,
    /// Leaves each spammer tries, each to one random recipient.
    pub attempts: usize,
    /// Plaintext bytes of every voicemail.
    pub size: usize,
    /// Spammers ask for a grant first, with no voicemail made yet, and
    /// leave one only when it is granted: an attacker whose refused tries
    /// cost them nothing. Otherwise every try is a whole leave (encrypt,
    /// code, ask), whose cost lands on this machine's two cores too.
    pub probe: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct SpamReport {
    /// Spam leaves tried.
    pub spam_attempts: usize,
    /// Spam leaves the group granted and the holders stored.
    pub spam_left: usize,
    /// Spam voicemails waiting in recipients' inboxes at the end.
    pub spam_in_inboxes: usize,
    /// Recipients with at least one spam voicemail.
    pub recipients_reached: usize,
    /// Shard bytes the spammers got stored on holders.
    pub spam_bytes_stored: u64,
    /// Why spam leaves were refused, by the quota or reason named.
    pub spam_refusals: BTreeMap<&'static str, usize>,
    /// Honest leaves tried and succeeded in each phase: (alone, under spam).
    pub honest: [(usize, usize); 2],
    /// Honest leave latencies, sorted: (alone, under spam).
    pub honest_latency: [Vec<Duration>; 2],
    /// How long the spammers ran.
    pub spam_wall: Duration,
}

/// A grant request for one small shard of a voicemail to `to`, on a
/// made-up holder: what a probing spammer asks before making anything.
fn probe_grant(to: &str) -> GrantRequest {
    GrantRequest {
        recipients: Recipients::parse([to]).expect("recipient"),
        message_id: vmail_proto::random_bytes(),
        data_shards: 1,
        shards: vec![GrantedShard {
            len: 1024,
            sha256: vmail_proto::random_bytes(),
        }],
        holders: vec![libp2p::PeerId::random().to_bytes()],
        expires_at: 0,
        sender: SenderVisibility::Shown,
    }
}

/// The reason a refused spam leave names, from the group's message.
fn reason(text: &str) -> &'static str {
    [
        ("new_recipients_per_day", "new_recipients_per_day"),
        ("voicemails_per_hour", "voicemails_per_hour"),
        ("outstanding_bytes", "outstanding_bytes"),
        ("has not heard your last voicemail", "first contact waiting"),
        ("does not accept voicemail from you", "not accepted"),
        ("takes at most", "first contact too long"),
        (
            "spam.refused_grants_per_minute",
            "refused_grants_per_minute",
        ),
    ]
    .into_iter()
    .find(|(needle, _)| text.contains(needle))
    .map_or("other", |(_, name)| name)
}

fn recipient(i: usize) -> String {
    format!("rcpt{i:03}")
}

/// Runs `run` on `net`, whose first `run.honest + run.spammers` peers host
/// the senders. Returns what it measured.
pub async fn spam_run(net: &TestNet, run: SpamRun) -> SpamReport {
    assert!(
        net.peers.len() >= run.honest + run.spammers,
        "a peer per sender"
    );
    let mut inboxes: Vec<(AuthClient, LoginSession)> = Vec::new();
    for i in 0..run.recipients {
        let (c, _, s) = register_and_login(&net.auth, &recipient(i)).await;
        inboxes.push((c, s));
    }
    let honest: Vec<String> = (0..run.honest).map(|i| format!("honest{i:02}")).collect();
    let spammers: Vec<String> = (0..run.spammers).map(|i| format!("spammer{i}")).collect();
    let mut probes = Vec::new();
    for (i, name) in honest.iter().chain(&spammers).enumerate() {
        let key = net.login(i, name).await;
        if i >= run.honest {
            let mut c = net.auth.client().await;
            c.login(name, &password(name), &key, &[])
                .await
                .expect("spammer login");
            probes.push(c);
        }
    }
    let contacts_of = |i: usize| -> Vec<String> {
        (0..run.contacts)
            .map(|j| recipient((i * run.contacts + j) % run.recipients))
            .collect()
    };
    for (i, name) in honest.iter().enumerate() {
        for r in contacts_of(i) {
            let idx: usize = r[4..].parse().expect("recipient index");
            let edit = ListEdit::add(vec![Username::parse(name).expect("name")]);
            inboxes[idx]
                .0
                .edit_contacts(&edit)
                .await
                .expect("add contact");
        }
    }

    let content = random_content(run.size);
    let honest_phase = || {
        let content = content.clone();
        let contacts: Vec<Vec<String>> = (0..run.honest).map(contacts_of).collect();
        let peers: Vec<&Peer> = net.peers[..run.honest].iter().collect();
        async move {
            let tasks = peers.into_iter().zip(contacts).map(|(peer, to)| {
                let content = content.clone();
                async move {
                    let mut times = Vec::new();
                    for _ in 0..run.honest_rounds {
                        let names: Vec<&str> = to.iter().map(String::as_str).collect();
                        let t = Instant::now();
                        let ok = peer
                            .leave(leave_request(&names, content.clone(), 1), no_progress())
                            .await
                            .is_ok_and(|r| r.refused.is_empty());
                        times.push((ok, t.elapsed()));
                    }
                    times
                }
            });
            futures::future::join_all(tasks)
                .await
                .into_iter()
                .flatten()
                .collect::<Vec<(bool, Duration)>>()
        }
    };

    let mut report = SpamReport::default();
    let alone = honest_phase().await;

    let spam = async {
        let started = Instant::now();
        let tasks = net.peers[run.honest..run.honest + run.spammers]
            .iter()
            .zip(probes)
            .enumerate()
            .map(|(i, (peer, mut probe))| {
                let content = content.clone();
                // Seeded, so a run is repeatable.
                let mut rng = StdRng::seed_from_u64(i as u64);
                async move {
                    let mut out = (0usize, 0u64, BTreeMap::<&'static str, usize>::new());
                    for _ in 0..run.attempts {
                        let to = recipient(rng.gen_range(0..run.recipients));
                        if run.probe
                            && let Err(e) = probe.request_grant(&probe_grant(&to)).await
                        {
                            *out.2.entry(reason(&e.to_string())).or_default() += 1;
                            continue;
                        }
                        match peer
                            .leave(leave_request(&[&to], content.clone(), 1), no_progress())
                            .await
                        {
                            Ok(r) => {
                                out.0 += 1;
                                out.1 += r.shard_len * r.shards.len() as u64;
                            }
                            Err(e) => *out.2.entry(reason(&e.to_string())).or_default() += 1,
                        }
                    }
                    out
                }
            });
        let results = futures::future::join_all(tasks).await;
        (results, started.elapsed())
    };
    let (under, (spam_results, spam_wall)) = tokio::join!(honest_phase(), spam);
    report.spam_wall = spam_wall;
    report.spam_attempts = run.spammers * run.attempts;
    for (left, bytes, refusals) in spam_results {
        report.spam_left += left;
        report.spam_bytes_stored += bytes;
        for (k, v) in refusals {
            *report.spam_refusals.entry(k).or_default() += v;
        }
    }
    for (phase, times) in [alone, under].into_iter().enumerate() {
        report.honest[phase] = (times.len(), times.iter().filter(|(ok, _)| *ok).count());
        let mut d: Vec<Duration> = times.into_iter().map(|(_, d)| d).collect();
        d.sort();
        report.honest_latency[phase] = d;
    }
    for (c, _) in &mut inboxes {
        let pending = c.list_pending().await.expect("list pending");
        let spam = pending
            .iter()
            .filter(|p| {
                p.sender
                    .username()
                    .is_some_and(|u| u.as_str().starts_with("spammer"))
            })
            .count();
        report.spam_in_inboxes += spam;
        report.recipients_reached += usize::from(spam > 0);
    }
    report
}

/// The `p` quantile of sorted durations.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
