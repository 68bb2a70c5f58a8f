//! The spam run (paper §5, SPIT), at the sizes: 100 recipients on
//! the default policy, 10 honest senders with 3 contacts each, and 5
//! spammer accounts trying 1,000 leaves each to random recipients, all
//! through real peers and a real auth server on its default `[spam]`
//! settings. Honest leaves are timed alone, then under the spam, in the
//! same run.
//!
//! `cargo bench -p vmail-tests --bench spam`

use std::sync::Arc;

use vmail_auth::config::SpamConfig;
use vmail_auth::service::SystemClock;
use vmail_tests::spam::{SpamRun, quantile, spam_run};
use vmail_tests::{TestAuth, TestNet};

const BASE: SpamRun = SpamRun {
    recipients: 100,
    honest: 10,
    contacts: 3,
    honest_rounds: 5,
    spammers: 5,
    attempts: 1000,
    size: 64 * 1024,
    probe: false,
};

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    for probe in [false, true] {
        run(SpamRun { probe, ..BASE }).await;
    }
}

/// One run on a fresh auth server and overlay.
async fn run(run: SpamRun) {
    let auth =
        TestAuth::start_with(|c| c.spam = SpamConfig::default(), Arc::new(SystemClock)).await;
    let net = TestNet::start_on(auth, run.honest + run.spammers + 1, |_| {}).await;
    println!(
        "\n### spammers {}\n\n{} recipients, {} honest senders x {} contacts x {} voicemails a phase, {} spammers x {} tries, {} KiB each, {} peers, default [spam] settings\n",
        if run.probe {
            "ask for a grant first and leave only when granted"
        } else {
            "make and leave a whole voicemail on every try"
        },
        run.recipients,
        run.honest,
        run.contacts,
        run.honest_rounds,
        run.spammers,
        run.attempts,
        run.size / 1024,
        net.peers.len()
    );
    let r = spam_run(&net, run).await;
    println!(
        "| spam tried | spam left | spam in inboxes | recipients reached | spam per recipient (one day) | spam shard bytes stored | spammers' wall time s |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {:.2} | {} | {:.1} |\n",
        r.spam_attempts,
        r.spam_left,
        r.spam_in_inboxes,
        r.recipients_reached,
        r.spam_in_inboxes as f64 / run.recipients as f64,
        r.spam_bytes_stored,
        r.spam_wall.as_secs_f64()
    );
    println!("refusals of spam: {:?}\n", r.spam_refusals);
    println!("| honest leaves | succeeded | p50 ms | p95 ms |");
    println!("|---|---|---|---|");
    for (name, phase) in [("alone", 0), ("under spam", 1)] {
        let (tried, ok) = r.honest[phase];
        let d = &r.honest_latency[phase];
        println!(
            "| {name} | {ok}/{tried} | {:.1} | {:.1} |",
            ms(quantile(d, 0.5)),
            ms(quantile(d, 0.95))
        );
    }
    println!(
        "\nhonest p50 under spam / alone: {:.2}",
        quantile(&r.honest_latency[1], 0.5).as_secs_f64()
            / quantile(&r.honest_latency[0], 0.5).as_secs_f64()
    );
    net.stop().await;
}
