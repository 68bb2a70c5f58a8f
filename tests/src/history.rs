//! The leader-loss history check, shared by `tests/tests/cluster.rs` and
//! the cluster bench: clients deposit under load, each through its own
//! order of the servers, while the leader is killed; then every deposit's
//! history is held against what the recipient is offered. An acknowledged
//! deposit must be listed exactly once, under the id its sender was given,
//! and nothing nobody sent may be listed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tonic::Code;
use vmail_node::auth_client::{AuthClient, LoginSession, outcome_unknown};

use crate::{TestCluster, deposit_for, identity, password, try_granted};

/// How long one deposit may take to be acknowledged, retries included.
const DEPOSIT_DEADLINE: Duration = Duration::from_secs(60);

/// One deposit's history.
#[derive(Debug, Clone)]
struct Record {
    client: usize,
    seq: usize,
    locator: Vec<u8>,
    acked: Option<[u8; 16]>,
    attempts: usize,
}

/// What one run found.
#[derive(Debug, Clone)]
pub struct History {
    /// Deposits made.
    pub deposits: usize,
    /// Deposits that needed more than one attempt.
    pub retried: usize,
    /// Deposits never acknowledged within [`DEPOSIT_DEADLINE`].
    pub unacknowledged: usize,
    /// Acknowledged deposits the recipient is not offered.
    pub lost: usize,
    /// Deposits offered more than once.
    pub duplicated: usize,
    /// Voicemails offered that nobody sent, or under another id than the
    /// one acknowledged.
    pub foreign: usize,
    /// The killed leader's index.
    pub killed: usize,
    /// The leader after the kill.
    pub new_leader: usize,
    /// From the kill to the last deposit's answer.
    pub after_kill: Duration,
}

impl History {
    /// Whether the run kept every acknowledged deposit exactly once.
    pub fn clean(&self) -> bool {
        self.unacknowledged == 0 && self.lost == 0 && self.duplicated == 0 && self.foreign == 0
    }
}

/// Registers and logs in `user` on a client that knows only the servers
/// `order`, in that order; the client and its login session (to recover
/// session keys).
pub async fn login_on(
    cluster: &TestCluster,
    order: &[usize],
    user: &str,
) -> Result<(AuthClient, LoginSession)> {
    let mut c = AuthClient::connect(&cluster.target_of(order)).await?;
    let id = identity();
    c.register(user, &password(user), &id, None).await?;
    let session = c.login(user, &password(user), &id, &[]).await?;
    Ok((c, session))
}

/// `clients` senders each make `per_client` deposits for a fresh recipient
/// (`recipient`), retrying each under its request id until acknowledged;
/// the leader is killed once a fifth are in. Returns the checked history.
/// Usernames start with `tag`, so a cluster can run this more than once.
pub async fn kill_leader_under_load(
    cluster: &mut TestCluster,
    tag: &str,
    clients: usize,
    per_client: usize,
) -> Result<History> {
    let n = cluster.running().len();
    let all: Vec<usize> = cluster.running();
    let recipient = format!("{tag}carol");
    let (mut carol, _) = login_on(cluster, &all, &recipient).await?;
    let history: Arc<Mutex<Vec<Record>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        // Each sender lists the servers in a different order.
        let order: Vec<usize> = (0..n).map(|k| all[(k + c) % n]).collect();
        let (mut client, _) = login_on(cluster, &order, &format!("{tag}sender{c}")).await?;
        let (history, done, recipient) = (history.clone(), done.clone(), recipient.clone());
        tasks.push(tokio::spawn(async move {
            for seq in 0..per_client {
                let locator = format!("client {c} deposit {seq}").into_bytes();
                let until = Instant::now() + DEPOSIT_DEADLINE;
                // First a storage grant; a lost answer at worst leaves one
                // unused, so ask again until one arrives.
                let fresh = deposit_for(&[recipient.as_str()], &locator);
                let d = loop {
                    match try_granted(&mut client, fresh.clone(), 0).await {
                        Ok(d) => break d,
                        Err(e) if e.code().is_none_or(outcome_unknown) => {
                            if Instant::now() >= until {
                                bail!("no storage grant within {DEPOSIT_DEADLINE:?}: {e}");
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => bail!("unexpected refusal of a grant: {e}"),
                    }
                };
                let mut rec = Record {
                    client: c,
                    seq,
                    locator,
                    acked: None,
                    attempts: 0,
                };
                // Retry with the same request id, under the same grant,
                // until acknowledged.
                while rec.acked.is_none() && Instant::now() < until {
                    rec.attempts += 1;
                    match client.deposit(&d).await {
                        Ok(r) => rec.acked = Some(r.voicemail_id),
                        Err(e) if matches!(e.code(), Some(Code::Unavailable) | None) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => bail!("unexpected refusal of a deposit: {e}"),
                    }
                }
                history.lock().expect("history lock").push(rec);
                done.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }));
    }
    // Kill the leader once a fifth of the deposits are in.
    while done.load(Ordering::SeqCst) < clients * per_client / 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = cluster.leader().await;
    let killed_at = Instant::now();
    cluster.kill(killed).await;
    for t in tasks {
        t.await.context("a client task panicked")??;
    }
    let after_kill = killed_at.elapsed();
    let history = history.lock().expect("history lock").clone();
    let new_leader = cluster.leader().await;

    let listed = carol.list_pending().await?;
    let mut by_locator: HashMap<Vec<u8>, Vec<[u8; 16]>> = HashMap::new();
    for p in &listed {
        by_locator.entry(p.locator.clone()).or_default().push(p.id);
    }
    let sent: HashSet<&Vec<u8>> = history.iter().map(|r| &r.locator).collect();
    let mut foreign = by_locator.keys().filter(|l| !sent.contains(l)).count();
    let duplicated = by_locator.values().filter(|ids| ids.len() > 1).count();
    let mut lost = 0;
    for r in history.iter().filter(|r| r.acked.is_some()) {
        match by_locator.get(&r.locator) {
            None => {
                eprintln!("acknowledged deposit lost: client {} #{}", r.client, r.seq);
                lost += 1;
            }
            Some(ids) if Some(ids[0]) != r.acked => foreign += 1,
            Some(_) => {}
        }
    }
    Ok(History {
        deposits: history.len(),
        retried: history.iter().filter(|r| r.attempts > 1).count(),
        unacknowledged: history.iter().filter(|r| r.acked.is_none()).count(),
        lost,
        duplicated,
        foreign,
        killed,
        new_leader,
        after_kill,
    })
}
