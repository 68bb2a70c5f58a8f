//! Repair: holders keep their voicemails at full shard count.
//!
//! Every `repair_interval_secs` each holder checks, for every shard it
//! holds, that the voicemail's other shards can still be found: a DHT
//! provider lookup, then `Has` at the providers, whose answer must name the
//! layout's length and hash. Repair is lazy (docs/PLACEMENT.md): a shard
//! counts as lost only once it has been missing for `repair_grace_secs`
//! (default a day), because most holders that vanish come back, and
//! rewriting their shards at once costs about ten times the traffic. When
//! some shards are lost and at least k are alive, the alive holder with the
//! lowest shard index (see [`plan`]; all holders reach the same verdict from
//! the same facts) fetches k shards, regenerates the lost ones
//! ([`crate::core::erasure::regenerate`]: the coding is over ciphertext, so no key
//! is needed), and stores each under its old identifier at the peer now
//! closest to it. The locators at the auth servers therefore stay valid.
//!
//! It never runs away: at most `repair_max_shards` shards per round, and a
//! voicemail whose repair failed waits twice as long each time (up to a
//! day) before it is tried again. A holder that comes back after its shard
//! was regenerated keeps its copy: a `Has` answer is no proof of
//! possession, so dropping a copy on one would let a liar erase shards. The
//! surplus expires with the voicemail.
//!
//! Deletion reaches holders that missed a delete order this way: a
//! sibling that deleted its shard answers `Has` with the signed order,
//! which this holder checks and carries out ([`ObjectStore::erase`]).
//! Repair stores a regenerated shard under the original grant, and a
//! holder with a tombstone for it refuses, so repair never brings a
//! deleted voicemail back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::kad::RecordKey;
use sha2::{Digest, Sha256};
use vmail_proto::unix_now;

use crate::config::PlacementConfig;
use crate::core::erasure;
use crate::core::locator::{ObjectId, ShardRef};
use crate::core::score::{Observations, Outcome};
use crate::overlay::objects::{ObjectMeta, ObjectStore, ObjectStoreError, ShardOf};
use crate::overlay::swarm::Network;
use crate::overlay::transfer::{self, BlobClient, TransferError};

/// Providers, and then peers closest to the identifier, asked `Has` per
/// sibling shard before it counts as missing.
pub const PROVIDERS_TRIED: usize = 3;
/// Peers tried, nearest first, to take one regenerated shard.
pub const TARGETS_TRIED: usize = 3;
/// The longest a voicemail whose repair keeps failing waits.
pub const MAX_BACKOFF: Duration = Duration::from_secs(86_400);

/// How hard and how soon repair works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time between rounds.
    pub interval: Duration,
    /// Most shards regenerated per round.
    pub max_shards: usize,
    /// How long a shard must have been missing before it is regenerated.
    pub grace: Duration,
}

impl From<&PlacementConfig> for Limits {
    fn from(c: &PlacementConfig) -> Self {
        Self {
            interval: Duration::from_secs(c.repair_interval_secs),
            max_shards: c.repair_max_shards,
            grace: Duration::from_secs(c.repair_grace_secs),
        }
    }
}

/// What a holder of shard `own` does, given which shards are alive
/// (`alive[i]`, its own included), which are lost (missing past the grace
/// period), and that `k` rebuild: the lost indexes if it is the repairer
/// (the lowest alive index) and at least k are alive; otherwise nothing.
pub fn plan(own: usize, alive: &[bool], lost: &[bool], k: usize) -> Vec<usize> {
    let count = alive.iter().filter(|a| **a).count();
    let leader = alive.iter().position(|a| *a);
    if leader != Some(own) || count < k {
        return Vec::new();
    }
    (0..alive.len())
        .filter(|&i| !alive[i] && lost.get(i).copied().unwrap_or(false))
        .collect()
}

/// One round's outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Voicemails whose siblings were checked.
    pub checked: usize,
    /// Sibling shards found missing.
    pub missing: usize,
    /// Of those, missing for less than the grace period.
    pub waiting: usize,
    /// Shards regenerated and stored.
    pub regenerated: usize,
    /// Voicemails this holder should have repaired but could not.
    pub failed: usize,
    /// Voicemails with fewer than k shards alive: beyond repair for now.
    pub lost: usize,
    /// Voicemails a sibling showed a delete order for, deleted here.
    pub deleted: usize,
}

/// The repair duty of one holder: what it checks with, and what it
/// remembers between rounds.
#[derive(Debug)]
pub struct Repairer {
    network: Network,
    blobs: BlobClient,
    store: ObjectStore,
    observations: Arc<Mutex<Observations<PeerId>>>,
    limits: Limits,
    memory: Memory,
}

/// A voicemail waiting out a failed repair.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    wait: Duration,
    until: Instant,
}

/// What repair remembers between rounds.
#[derive(Debug, Default)]
struct Memory {
    /// Per voicemail (by this holder's object), a failed repair's wait.
    backoff: HashMap<ObjectId, Backoff>,
    /// Per sibling shard identifier, when it was first found missing.
    missing_since: HashMap<ObjectId, Instant>,
}

impl Repairer {
    /// Repair of what `store` holds: `Has` checks over `network` and
    /// `blobs`, whose outcomes feed `observations`, within `limits`.
    pub fn new(
        network: Network,
        blobs: BlobClient,
        store: ObjectStore,
        observations: Arc<Mutex<Observations<PeerId>>>,
        limits: Limits,
    ) -> Self {
        Self {
            network,
            blobs,
            store,
            observations,
            limits,
            memory: Memory::default(),
        }
    }

    /// Time between rounds.
    pub fn interval(&self) -> Duration {
        self.limits.interval
    }

    /// One round over every held shard that has its final layout.
    pub async fn round(&mut self) -> Round {
        let mut memory = std::mem::take(&mut self.memory);
        let round = self.round_with(&mut memory).await;
        self.memory = memory;
        let lost_shards = round.missing - round.waiting;
        self.network.metrics().repair_round(
            round.checked as u64,
            lost_shards as u64,
            round.regenerated as u64,
            round.failed as u64,
        );
        round
    }

    async fn round_with(&self, memory: &mut Memory) -> Round {
        let Memory {
            backoff,
            missing_since,
        } = memory;
        let mut seen = HashSet::new();
        let mut round = Round::default();
        let mut budget = self.limits.max_shards;
        let now = unix_now();
        let horizon = now + self.limits.interval.as_secs();
        for (id, meta) in self.store.list() {
            let Some(shard) = meta.shard.clone() else {
                continue;
            };
            // Until the sender hands over the final layout, this holder
            // knows no sibling to check or regenerate.
            if !shard.layout.is_complete()
                || meta.expires_at <= horizon
                || backoff
                    .get(&id)
                    .is_some_and(|b: &Backoff| b.until > Instant::now())
            {
                continue;
            }
            round.checked += 1;
            let alive = self.alive(&shard).await;
            if self.store.get(&id).is_none() {
                // A sibling's delete order removed it while it was checked.
                round.deleted += 1;
                continue;
            }
            let up: Vec<bool> = alive.iter().map(Option::is_some).collect();
            let lost: Vec<bool> = shard
                .layout
                .shards
                .iter()
                .zip(&up)
                .map(|(s, up)| {
                    seen.insert(s.id);
                    if *up {
                        missing_since.remove(&s.id);
                        return false;
                    }
                    let since = *missing_since.entry(s.id).or_insert_with(Instant::now);
                    since.elapsed() >= self.limits.grace
                })
                .collect();
            let missing = up.iter().filter(|a| !**a).count();
            round.missing += missing;
            round.waiting += missing - lost.iter().filter(|l| **l).count();
            if up.iter().filter(|a| **a).count() < shard.layout.redundancy.k() {
                round.lost += 1;
                continue;
            }
            let todo = plan(
                usize::from(shard.index),
                &up,
                &lost,
                shard.layout.redundancy.k(),
            );
            if todo.is_empty() || budget == 0 {
                continue;
            }
            let todo: Vec<usize> = todo.into_iter().take(budget).collect();
            let outcome = self.regenerate(&id, &meta, &shard, &alive, &todo).await;
            let done = *outcome.as_ref().unwrap_or(&0);
            budget -= done.min(budget);
            round.regenerated += done;
            if done == todo.len() {
                backoff.remove(&id);
                continue;
            }
            match outcome {
                Ok(_) => {
                    tracing::warn!(id = %hex::encode(id), "repair stored {done} of {} shards", todo.len())
                }
                Err(why) => tracing::warn!(id = %hex::encode(id), "repair failed: {why}"),
            }
            round.failed += 1;
            let wait = backoff
                .get(&id)
                .map_or(self.limits.interval, |b| (b.wait * 2).min(MAX_BACKOFF));
            backoff.insert(
                id,
                Backoff {
                    wait,
                    until: Instant::now() + wait,
                },
            );
        }
        // A wait is remembered one more period after it ends, so the next
        // failure doubles it.
        backoff.retain(|_, b| b.until + b.wait > Instant::now());
        missing_since.retain(|id, _| seen.contains(id));
        round
    }

    /// For each shard of the layout, a holder that proved it holds it (this
    /// peer for its own shard), or None.
    async fn alive(&self, shard: &ShardOf) -> Vec<Option<PeerId>> {
        let me = self.network.local_peer_id();
        let len = shard.layout.shard_len();
        let checks = shard
            .layout
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| async move {
                let own = self.store.get(&s.id);
                if i == usize::from(shard.index) || own.is_some_and(|m| m.sha256 == s.sha256) {
                    return Some(me);
                }
                // Provider records outlive dead holders, and Sybils announce
                // what they do not hold: if no provider proves it holds the shard,
                // the peers closest to the identifier, where a repaired shard
                // goes, are asked too. Only providers are held to account.
                let mut asked = vec![me];
                let providers = self
                    .network
                    .providers(RecordKey::new(&s.id))
                    .await
                    .unwrap_or_default();
                for p in providers.into_iter().take(PROVIDERS_TRIED) {
                    if let Some(p) = self.holds(p, s, len, &mut asked, true).await {
                        return Some(p);
                    }
                }
                let closest = self
                    .network
                    .closest_peers(s.id.to_vec())
                    .await
                    .unwrap_or_default();
                for p in closest.into_iter().take(PROVIDERS_TRIED) {
                    if let Some(p) = self.holds(p, s, len, &mut asked, false).await {
                        return Some(p);
                    }
                }
                None
            });
        futures::future::join_all(checks).await
    }

    /// `p` if it says it holds shard `s` with the right hash; skips peers
    /// already `asked`. A provider's answer goes into the observations.
    async fn holds(
        &self,
        p: PeerId,
        s: &ShardRef,
        len: u64,
        asked: &mut Vec<PeerId>,
        provider: bool,
    ) -> Option<PeerId> {
        if asked.contains(&p) {
            return None;
        }
        asked.push(p);
        let answer = self.blobs.has(p, s.id).await;
        if let Err(TransferError::Gone { order, .. }) = &answer {
            self.carry_out(p, order.clone()).await;
        }
        let ok = matches!(answer, Ok(held) if held == (len, s.sha256));
        // A holder that stayed busy is serving others, not failing.
        let busy = matches!(answer, Err(TransferError::Busy { .. }));
        if provider && !busy {
            let outcome = if ok { Outcome::Good } else { Outcome::Failed };
            self.observations
                .lock()
                .expect("observations lock")
                .outcome(&p, outcome, unix_now());
        }
        ok.then_some(p)
    }

    /// Carries out a delete order a peer showed; a bad one is only logged.
    async fn carry_out(&self, from: PeerId, order: Vec<u8>) {
        match transfer::erase(&self.network, &self.store, order).await {
            Ok(n) => {
                tracing::info!(%from, objects = n, "a sibling showed a delete order; carried out")
            }
            Err(ObjectStoreError::NotHeld) => {}
            Err(e) => {
                tracing::warn!(%from, "a sibling showed a delete order that does not hold: {e}")
            }
        }
    }

    /// An object from this holder's own store.
    async fn read_local(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, String> {
        self.store.read_async(id).await.map_err(|e| e.to_string())
    }

    /// Fetches k alive shards, regenerates `todo` and stores each at the
    /// peer now closest to its identifier. Returns how many were stored.
    async fn regenerate(
        &self,
        own_id: &ObjectId,
        meta: &ObjectMeta,
        shard: &ShardOf,
        alive: &[Option<PeerId>],
        todo: &[usize],
    ) -> Result<usize, String> {
        let layout = &shard.layout;
        let k = layout.redundancy.k();
        let len = layout.shard_len();
        let me = self.network.local_peer_id();
        let mut have = BTreeMap::new();
        let mine = self
            .read_local(own_id)
            .await?
            .ok_or("this holder's own shard is gone")?;
        have.insert(usize::from(shard.index), mine);
        for (i, holder) in alive.iter().enumerate() {
            if have.len() == k {
                break;
            }
            let Some(holder) = holder.filter(|_| !have.contains_key(&i)) else {
                continue;
            };
            let expected = layout.shards[i];
            let got = if holder == me {
                self.read_local(&expected.id)
                    .await
                    .and_then(|b| b.ok_or_else(|| "gone".into()))
            } else {
                self.blobs
                    .fetch(holder, expected.id, len, &|_| {})
                    .await
                    .map_err(|e| e.to_string())
            };
            match got {
                Ok(b) if <[u8; 32]>::from(Sha256::digest(&b)) == expected.sha256 => {
                    have.insert(i, b);
                }
                Ok(_) => self
                    .observations
                    .lock()
                    .expect("observations lock")
                    .outcome(&holder, Outcome::Corrupt, unix_now()),
                Err(e) => tracing::debug!(%holder, "repair fetch failed: {e}"),
            }
        }
        let (r, ct_len, want) = (layout.redundancy, layout.ciphertext_len, todo.to_vec());
        let rebuilt =
            tokio::task::spawn_blocking(move || erasure::regenerate(r, ct_len, &have, &want))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        // One shard per peer where possible: alive holders and the peers
        // this round already gave a shard are tried last.
        let mut taken: Vec<PeerId> = alive.iter().flatten().copied().collect();
        let mut stored = 0;
        for (i, bytes) in rebuilt {
            let id = layout.shards[i].id;
            let closest = self
                .network
                .closest_peers(id.to_vec())
                .await
                .unwrap_or_default();
            let (fresh, busy): (Vec<PeerId>, Vec<PeerId>) = closest
                .into_iter()
                .filter(|p| *p != me)
                .partition(|p| !taken.contains(p));
            let new_meta = ObjectMeta {
                len,
                sha256: layout.shards[i].sha256,
                expires_at: meta.expires_at,
                delete_hash: meta.delete_hash,
                shard: Some(ShardOf {
                    index: i as u8,
                    layout: layout.clone(),
                }),
                grant: meta.grant.clone(),
                proof: meta.proof.clone(),
            };
            for target in fresh.into_iter().chain(busy).take(TARGETS_TRIED) {
                match self
                    .blobs
                    .store(target, id, new_meta.clone(), &bytes, &|_| {})
                    .await
                {
                    Ok(()) => {
                        tracing::info!(id = %hex::encode(id), shard = i, to = %target, "shard regenerated");
                        taken.push(target);
                        stored += 1;
                        break;
                    }
                    Err(TransferError::Gone { order, .. }) => {
                        self.carry_out(target, order).await;
                        return Err("the voicemail was deleted".into());
                    }
                    Err(e) => {
                        tracing::warn!(id = %hex::encode(id), shard = i, "repair store failed: {e}")
                    }
                }
            }
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_lowest_alive_holder_repairs_and_only_when_it_can() {
        let alive = [false, true, true, false, true];
        let lost = [true, false, false, true, false];
        assert_eq!(plan(1, &alive, &lost, 2), vec![0, 3]);
        assert!(plan(2, &alive, &lost, 2).is_empty(), "not the leader");
        assert!(
            plan(1, &alive, &lost, 4).is_empty(),
            "3 alive cannot rebuild k = 4"
        );
        assert!(
            plan(0, &[true; 4], &[false; 4], 2).is_empty(),
            "nothing missing"
        );
        assert_eq!(plan(0, &[true, false], &[false, true], 1), vec![1]);
    }

    #[test]
    fn shards_missing_within_the_grace_period_wait() {
        let alive = [true, false, false, true];
        assert_eq!(plan(0, &alive, &[false, false, true, false], 2), vec![2]);
        assert!(plan(0, &alive, &[false; 4], 2).is_empty());
    }
}
