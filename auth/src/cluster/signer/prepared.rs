//! A coordinator's prepared signing rounds (FROST's preprocessing,
//! docs/THRESHOLD.md §2): per other member, the nonce commitments it made
//! ahead for this server (`SignPrepare`), asked for in the background,
//! [`PREPARE_BATCH`] at a time, and spent one per one-trip round.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vmail_proto::cluster_pb::{self as cpb, cluster_client::ClusterClient};

use super::{NONCE_TTL, PREPARE_BATCH, answer};
use crate::threshold::{SigningCommitments, Wire};

/// How long before the signer drops them a coordinator stops spending
/// prepared commitments.
const PREPARED_MARGIN: Duration = Duration::from_secs(5);
/// How long a member that refused to prepare (an older server, say), or
/// whose prepared round failed, is neither asked nor spent from.
const PREPARE_BACKOFF: Duration = Duration::from_secs(30);

/// One prepared round at a signer.
pub(super) struct Prepared {
    pub(super) handle: [u8; 16],
    pub(super) commitments: SigningCommitments,
    ceremony: u64,
    usable_until: Instant,
}

/// What one member prepared for this coordinator.
#[derive(Default)]
struct Pool {
    ready: VecDeque<Prepared>,
    /// A `SignPrepare` to the member is under way.
    asking: bool,
    /// Not asked again, nor spent, before then.
    not_before: Option<Instant>,
    /// Bumped when the pool is dropped, so an answer asked for before
    /// that is not kept.
    generation: u64,
}

impl Pool {
    fn set_aside(&self, now: Instant) -> bool {
        self.not_before.is_some_and(|t| t > now)
    }
}

/// Every other member's [`Pool`], by node id.
#[derive(Default)]
pub(super) struct Pools(Mutex<HashMap<u64, Pool>>);

impl Pools {
    /// One prepared round under `ceremony` from each of the first `count`
    /// of `members` that have one and are not set aside, or `None` (and
    /// nothing spent) when fewer do.
    pub(super) fn take(
        &self,
        ceremony: u64,
        members: impl IntoIterator<Item = u64>,
        count: usize,
    ) -> Option<Vec<(u64, Prepared)>> {
        let now = Instant::now();
        let mut pools = self.0.lock().expect("pools lock");
        let mut ready = Vec::with_capacity(count);
        for node in members {
            if ready.len() == count {
                break;
            }
            let Some(pool) = pools.get_mut(&node) else {
                continue;
            };
            pool.ready
                .retain(|p| p.ceremony == ceremony && p.usable_until > now);
            if !pool.ready.is_empty() && !pool.set_aside(now) {
                ready.push(node);
            }
        }
        if ready.len() < count {
            return None;
        }
        Some(
            ready
                .into_iter()
                .map(|node| {
                    let p = pools.get_mut(&node).and_then(|pool| pool.ready.pop_front());
                    (node, p.expect("checked above, under the same lock"))
                })
                .collect(),
        )
    }

    /// Drops what `nodes` prepared, and neither spends nor asks for their
    /// commitments for [`PREPARE_BACKOFF`]; an answer under way is not kept.
    pub(super) fn set_aside(&self, nodes: impl IntoIterator<Item = u64>) {
        let until = Instant::now() + PREPARE_BACKOFF;
        let mut pools = self.0.lock().expect("pools lock");
        for node in nodes {
            let pool = pools.entry(node).or_default();
            pool.ready.clear();
            pool.generation += 1;
            pool.not_before = Some(until);
        }
    }

    /// Asks each of `members` (node, name, client) with fewer than half of
    /// [`PREPARE_BATCH`] prepared commitments left for more under
    /// `ceremony`, in the background, one request at a time per member.
    pub(super) fn refill(
        self: &Arc<Self>,
        ceremony: u64,
        members: &[(u64, &str, ClusterClient<Channel>)],
    ) {
        let now = Instant::now();
        let mut pools = self.0.lock().expect("pools lock");
        for (node, name, client) in members {
            let pool = pools.entry(*node).or_default();
            if pool.asking
                || pool.ready.len() >= (PREPARE_BATCH / 2) as usize
                || pool.set_aside(now)
            {
                continue;
            }
            pool.asking = true;
            let generation = pool.generation;
            let (pools, node, name, mut client) =
                (self.clone(), *node, name.to_string(), client.clone());
            let request = cpb::SignPrepareRequest {
                ceremony,
                count: PREPARE_BATCH,
            };
            tokio::spawn(async move {
                let asked = Instant::now();
                let got = answer(client.sign_prepare(request))
                    .await
                    .and_then(|r| decode(r, ceremony, asked + NONCE_TTL - PREPARED_MARGIN));
                let mut all = pools.0.lock().expect("pools lock");
                let pool = all.entry(node).or_default();
                pool.asking = false;
                match got {
                    Ok(_) if pool.generation != generation => {}
                    Ok(prepared) => pool.ready.extend(prepared),
                    Err(why) => {
                        tracing::debug!(member = %name, %why, "no prepared signing rounds");
                        pool.not_before = Some(Instant::now() + PREPARE_BACKOFF);
                    }
                }
            });
        }
    }
}

/// A member's prepared rounds from its answer: at most [`PREPARE_BATCH`],
/// each a 16-byte handle and commitments that decode, or none.
fn decode(
    r: cpb::SignPrepareResponse,
    ceremony: u64,
    usable_until: Instant,
) -> Result<Vec<Prepared>, String> {
    if r.rounds.len() > PREPARE_BATCH as usize {
        return Err(format!(
            "answered {} prepared rounds where {PREPARE_BATCH} were asked for",
            r.rounds.len()
        ));
    }
    r.rounds
        .into_iter()
        .map(|r| {
            Ok(Prepared {
                handle: r.handle.as_slice().try_into().map_err(|_| {
                    format!(
                        "a prepared round's handle is {} bytes, not 16",
                        r.handle.len()
                    )
                })?,
                commitments: SigningCommitments::from_wire(&r.commitments)
                    .map_err(|e| e.to_string())?,
                ceremony,
                usable_until,
            })
        })
        .collect()
}
