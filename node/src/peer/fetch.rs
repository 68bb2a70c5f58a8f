//! Fetching a voicemail (retrieval steps 2-4): find its shards, download k
//! in parallel as the [`FetchPlan`] orders them, check each, decode, check
//! the ciphertext, decrypt.
//!
//! Each shard is asked first of the holder the locator names (version 3),
//! with no DHT lookup. Where there is no hint, or the hinted holder fails,
//! the shard's holders are searched for: the providers a full lookup
//! gathers and the peers closest to the identifier (where the shard was
//! placed, and where repair puts it), each asked `Has`; only those whose
//! answer names the locator's length and hash are tried. Provider records
//! alone are never trusted: anyone can announce any key.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;
use libp2p::kad::RecordKey;
use sha2::{Digest, Sha256};
use vmail_proto::keys::SecretKey;

use super::fetch_plan::{FetchEvent, FetchPlan, FetchStep, ShardSource};
use super::progress::{Meter, Part};
use super::{FetchError, Peer, Phase, Progress, ProgressFn, Timings};
use crate::auth_client::Pending;
use crate::core::crypto;
use crate::core::erasure::{self, ErasureError, Redundancy};
use crate::core::locator::{Layout, Locator, ObjectId};
use crate::core::score::Outcome;
use crate::overlay::transfer::TransferError;

/// How long a fetch waits for any shard download to finish before it
/// starts one more shard beside the slow ones.
pub const HEDGE_AFTER: Duration = Duration::from_secs(3);
/// Most peers one shard's search asks `Has` of (providers first, then the
/// closest peers): a Sybil flood of provider records costs at most this.
pub const MAX_HAS_ASKED: usize = 48;
/// How long one `Has` in a shard's search may take.
pub const HAS_TIMEOUT: Duration = Duration::from_secs(5);

/// A voicemail fetched and decrypted.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its pending entry (sender, metadata, recipients).
    pub pending: Pending,
    /// The plaintext.
    pub content: Vec<u8>,
    /// How it was stored.
    pub redundancy: Redundancy,
    /// The holders whose shards rebuilt it, by shard index.
    pub holders: Vec<(u8, PeerId)>,
    /// Shards that failed or were skipped on the way.
    pub failures: Vec<FetchFailure>,
    /// Where the time went.
    pub timings: Timings,
    /// The session key, recombined from the auth servers' shares.
    pub session_key: SecretKey,
}

/// The shards a fetch downloaded, and how.
struct Downloaded {
    /// Shard bytes by index, each checked against its hash.
    shards: BTreeMap<usize, Vec<u8>>,
    /// The holders whose shards arrived, by shard index.
    used: Vec<(u8, PeerId)>,
    /// Shards that failed or were skipped.
    failures: Vec<FetchFailure>,
    /// Time spent finding holders.
    dht: Duration,
    /// Time spent downloading.
    transfer: Duration,
}

/// What went wrong on the way to a voicemail's plaintext: a shard that
/// could not be had, or the rebuilt ciphertext.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchFailure {
    /// The locator announces more than this peer takes.
    #[error("the locator announces {len} bytes, more than this peer's limit of {max}")]
    TooLarge {
        /// Ciphertext bytes announced.
        len: u64,
        /// This peer's limit.
        max: u64,
    },
    /// The DHT named no holder of a shard.
    #[error("shard {shard}: no holder found in the DHT")]
    NoHolder {
        /// The shard's index.
        shard: usize,
    },
    /// A holder did not deliver the shard.
    #[error("shard {shard} ({id}) at {holder}: {why}")]
    Unavailable {
        /// The shard's index.
        shard: usize,
        /// The start of its identifier, hex.
        id: String,
        /// The holder.
        holder: PeerId,
        /// What the transfer reported.
        why: String,
    },
    /// A holder delivered bytes that do not match the locator.
    #[error("shard {shard} ({id}) at {holder}: wrong bytes (SHA-256 does not match the locator)")]
    WrongBytes {
        /// The shard's index.
        shard: usize,
        /// The start of its identifier, hex.
        id: String,
        /// The holder.
        holder: PeerId,
    },
    /// Fewer than k shards arrived intact.
    #[error("{got} of the {k} shards needed ({redundancy}) were fetched intact")]
    TooFew {
        /// Shards that arrived intact.
        got: usize,
        /// Shards needed.
        k: usize,
        /// The voicemail's redundancy.
        redundancy: Redundancy,
    },
    /// The shards that arrived did not give back the ciphertext.
    #[error(transparent)]
    Rebuild(#[from] RebuildError),
}

/// Why k intact shards did not give back the voicemail's ciphertext.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RebuildError {
    /// The shards did not decode.
    #[error("{0}")]
    Decode(ErasureError),
    /// The decoded ciphertext is not the one the locator names.
    #[error("the decoded ciphertext does not match the locator's SHA-256")]
    CiphertextHash,
}

/// The holder the locator names for shard `i`, if it names one that
/// parses.
fn hint(locator: &Locator, i: usize) -> Option<PeerId> {
    locator
        .holders
        .get(i)
        .filter(|b| !b.is_empty())
        .and_then(|b| PeerId::from_bytes(b).ok())
}

impl Peer {
    /// Fetches, checks and decrypts one pending voicemail. It stays pending
    /// until [`Peer::ack`].
    pub async fn fetch(
        &self,
        voicemail_id: [u8; 16],
        progress: ProgressFn,
    ) -> Result<Fetched, FetchError> {
        let session = self.session()?;
        let mut timings = Timings::default();
        let t = Instant::now();
        let mut auth = self.auth(&session).await?;
        let pending = auth
            .list_pending()
            .await?
            .into_iter()
            .find(|p| p.id == voicemail_id)
            .ok_or_else(|| FetchError::NoSuchVoicemail(hex::encode(voicemail_id)))?;
        timings.auth += t.elapsed();
        let id_hex = hex::encode(voicemail_id);
        let locator = Locator::decode(&pending.locator)?;
        let layout = &locator.layout;
        let max = self.config.max_object_bytes();
        if layout.ciphertext_len > max {
            return Err(FetchError::AllCopiesFailed {
                id: id_hex,
                failures: vec![FetchFailure::TooLarge {
                    len: layout.ciphertext_len,
                    max,
                }],
            });
        }
        // Retrieval step 2, the key from a majority of the auth servers'
        // shares, runs while the shards download: a fetch waits for the
        // slower of the two, not for both in turn.
        let recover = async {
            let t = Instant::now();
            let key = auth.recover_session_key(&session.login, &pending).await;
            (key, t.elapsed())
        };
        let ((key, took), downloaded) =
            tokio::join!(recover, self.download(&locator, &id_hex, &progress));
        timings.auth += took;
        let key = key?;
        let Downloaded {
            shards,
            mut used,
            mut failures,
            dht,
            transfer,
        } = downloaded?;
        timings.dht += dht;
        timings.transfer += transfer;

        let t = Instant::now();
        let (redundancy, ct_len, ct_sha) = (
            layout.redundancy,
            layout.ciphertext_len,
            locator.ciphertext_sha256,
        );
        let message_id = locator.message_id;
        let p = progress.clone();
        let session_key = key.clone();
        let plain = tokio::task::spawn_blocking(move || {
            let ct = erasure::decode(redundancy, ct_len, &shards).map_err(RebuildError::Decode)?;
            if <[u8; 32]>::from(Sha256::digest(&ct)) != ct_sha {
                return Err(RebuildError::CiphertextHash);
            }
            let total = ct.len() as u64;
            Ok(crypto::decrypt(&key, &message_id, &ct, &mut |done| {
                p(Progress {
                    phase: Phase::Decrypt,
                    done,
                    total,
                    note: None,
                })
            }))
        })
        .await
        .expect("decryption task does not panic");
        timings.crypto += t.elapsed();
        let content = match plain {
            Ok(c) => c.map_err(|why| FetchError::Decrypt {
                id: id_hex.clone(),
                why,
            })?,
            Err(why) => {
                failures.push(why.into());
                return Err(FetchError::AllCopiesFailed {
                    id: id_hex,
                    failures,
                });
            }
        };
        used.sort();
        self.remember_fetch(voicemail_id, layout.shards.iter().map(|s| s.id).collect());
        self.network.metrics().fetch(timings.into());
        Ok(Fetched {
            pending,
            content,
            redundancy: layout.redundancy,
            holders: used,
            failures,
            timings,
            session_key,
        })
    }

    /// Finds and downloads `k` of the locator's shards, each checked
    /// against its hash, hedging slow ones.
    async fn download(
        &self,
        locator: &Locator,
        id_hex: &str,
        progress: &ProgressFn,
    ) -> Result<Downloaded, FetchError> {
        let layout = &locator.layout;
        // Each shard starts at its hinted holder; shards without a hint are
        // searched for now, all at once.
        let t = Instant::now();
        let loc = locator;
        let lookups = layout.shards.iter().enumerate().map(|(i, _)| async move {
            match hint(loc, i) {
                Some(h) => (i, vec![h]),
                None => (i, self.find_holders(layout, i, &[]).await),
            }
        });
        let mut found: Vec<ShardSource> = Vec::new();
        let mut failures = Vec::new();
        for (shard, holders) in futures::future::join_all(lookups).await {
            match holders {
                h if h.is_empty() => failures.push(FetchFailure::NoHolder { shard }),
                h => found.push((shard, h)),
            }
        }
        let dht = t.elapsed();

        // Download k in parallel as the plan orders and hedges them.
        let rtts = self.network.rtts().await.unwrap_or_default();
        let k = layout.redundancy.k();
        let mut plan = FetchPlan::new(found, k, self.peer_id(), &rtts);
        let t = Instant::now();
        let meter = Meter::new(
            Phase::Download,
            layout.shard_len() * k as u64,
            progress.clone(),
        );
        let mut running: FuturesUnordered<_> = plan
            .start()
            .into_iter()
            .map(|source| self.fetch_shard(layout, source, &meter))
            .collect();
        let mut shards = BTreeMap::new();
        let mut used = Vec::new();
        loop {
            let event = match tokio::time::timeout(HEDGE_AFTER, running.next()).await {
                Ok(None) => break,
                Ok(Some((i, got, mut errors))) => {
                    failures.append(&mut errors);
                    match got {
                        Some((holder, bytes)) => {
                            used.push((i as u8, holder));
                            shards.insert(i, bytes);
                            FetchEvent::Got
                        }
                        None => FetchEvent::Failed,
                    }
                }
                Err(_) => {
                    tracing::info!("shard downloads are slow: starting another");
                    FetchEvent::Stalled
                }
            };
            match plan.on(event) {
                FetchStep::Start(source) => running.push(self.fetch_shard(layout, source, &meter)),
                FetchStep::Wait => {}
                FetchStep::Done | FetchStep::GiveUp => break,
            }
        }
        drop(running);
        let transfer = t.elapsed();
        if shards.len() < k {
            failures.push(FetchFailure::TooFew {
                got: shards.len(),
                k,
                redundancy: layout.redundancy,
            });
            return Err(FetchError::AllCopiesFailed {
                id: id_hex.to_owned(),
                failures,
            });
        }
        Ok(Downloaded {
            shards,
            used,
            failures,
            dht,
            transfer,
        })
    }

    /// Shard `i` from the first of `holders` that returns bytes matching
    /// its hash; a holder that returns other bytes is marked corrupt. When
    /// all fail, the shard's holders are searched for once
    /// ([`Peer::find_holders`]) and those not yet tried are tried too.
    /// Returns the index, the holder and bytes if any, and what failed.
    async fn fetch_shard(
        &self,
        layout: &Layout,
        (i, holders): ShardSource,
        meter: &Meter,
    ) -> (usize, Option<(PeerId, Vec<u8>)>, Vec<FetchFailure>) {
        let expected = layout.shards[i];
        let len = layout.shard_len();
        let short = hex::encode(expected.id)[..12].to_owned();
        let mut failures = Vec::new();
        let mut queue: std::collections::VecDeque<PeerId> = holders.into();
        let mut tried = Vec::new();
        let mut searched = false;
        loop {
            let Some(holder) = queue.pop_front() else {
                if searched {
                    break;
                }
                searched = true;
                queue.extend(self.find_holders(layout, i, &tried).await);
                // A shard whose holders all failed already has its failures.
                if queue.is_empty() && tried.is_empty() {
                    failures.push(FetchFailure::NoHolder { shard: i });
                }
                continue;
            };
            tried.push(holder);
            let bytes = match self.fetch_object(holder, &expected.id, len, meter).await {
                Ok(b) => b,
                Err(why) => {
                    self.note(holder, Outcome::Failed).await;
                    failures.push(FetchFailure::Unavailable {
                        shard: i,
                        id: short.clone(),
                        holder,
                        why,
                    });
                    continue;
                }
            };
            if bytes.len() as u64 != len
                || <[u8; 32]>::from(Sha256::digest(&bytes)) != expected.sha256
            {
                tracing::warn!(%holder, shard = i, "holder returned wrong bytes");
                self.note(holder, Outcome::Corrupt).await;
                failures.push(FetchFailure::WrongBytes {
                    shard: i,
                    id: short.clone(),
                    holder,
                });
                continue;
            }
            self.note(holder, Outcome::Good).await;
            return (i, Some((holder, bytes)), failures);
        }
        (i, None, failures)
    }

    /// The peers that say they hold shard `i`, not counting `tried`: the
    /// providers a full lookup gathers, then the peers closest to its
    /// identifier, at most [`MAX_HAS_ASKED`] in all, each asked `Has` at
    /// once; only answers with the locator's length and hash count. This
    /// peer's own store is checked without asking.
    async fn find_holders(&self, layout: &Layout, i: usize, tried: &[PeerId]) -> Vec<PeerId> {
        let s = layout.shards[i];
        let len = layout.shard_len();
        let me = self.peer_id();
        let (providers, closest) = futures::join!(
            self.network.providers(RecordKey::new(&s.id)),
            self.network.closest_peers(s.id.to_vec())
        );
        let mut candidates: Vec<PeerId> = Vec::new();
        for p in providers
            .unwrap_or_default()
            .into_iter()
            .chain(closest.unwrap_or_default())
        {
            if candidates.len() < MAX_HAS_ASKED && !tried.contains(&p) && !candidates.contains(&p) {
                candidates.push(p);
            }
        }
        let asks = candidates.into_iter().map(|p| async move {
            if p == me {
                let own = self.store.as_ref().and_then(|st| st.get(&s.id));
                return own.is_some_and(|m| m.sha256 == s.sha256).then_some(p);
            }
            match tokio::time::timeout(HAS_TIMEOUT, self.blobs.has(p, s.id)).await {
                Ok(Ok((l, sha))) if l == len && sha == s.sha256 => Some(p),
                _ => None,
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// One object's bytes: from this peer's own store, or downloaded from
    /// `holder` (counted on the meter unless the download fails).
    async fn fetch_object(
        &self,
        holder: PeerId,
        id: &ObjectId,
        len: u64,
        meter: &Meter,
    ) -> Result<Vec<u8>, String> {
        if holder == self.peer_id() {
            let store = self.store.as_ref().ok_or("not a holder")?;
            return store
                .read_async(id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no longer held here".to_owned());
        }
        let part: Part<'_> = meter.part();
        let got = self
            .blobs
            .fetch(holder, *id, len, &|done| part.update(done))
            .await;
        if got.is_err() {
            part.undo();
        }
        got.map_err(|e: TransferError| e.to_string())
    }
}
