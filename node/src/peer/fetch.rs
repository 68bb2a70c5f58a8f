//! Fetching a voicemail (retrieval steps 2-4): find its shards, download k
//! in parallel, check, decode, decrypt.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;
use libp2p::kad::RecordKey;
use sha2::{Digest, Sha256};

use super::{Peer, PeerError, Phase, Progress, ProgressFn, Timings};
use crate::auth_client::Pending;
use crate::core::crypto;
use crate::core::erasure::{self, Redundancy};
use crate::core::locator::{Layout, Locator, ObjectId};
use crate::core::score::Outcome;
use crate::overlay::transfer::TransferError;

/// How long a fetch waits for any shard download to finish before it
/// starts one more shard beside the slow ones.
pub const HEDGE_AFTER: Duration = Duration::from_secs(3);

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
    pub failures: Vec<String>,
    /// Where the time went.
    pub timings: Timings,
}

impl Peer {
    /// Fetches, checks and decrypts one pending voicemail. It stays pending
    /// until [`Peer::ack`].
    pub async fn fetch(
        &self,
        voicemail_id: [u8; 16],
        progress: ProgressFn,
    ) -> Result<Fetched, PeerError> {
        let session = self.session()?;
        let mut timings = Timings::default();
        let t = Instant::now();
        let pending = self
            .auth(&session)
            .await?
            .list_pending(&session.login.master_key)
            .await?
            .into_iter()
            .find(|p| p.id == voicemail_id)
            .ok_or_else(|| PeerError::NoSuchVoicemail(hex::encode(voicemail_id)))?;
        timings.auth += t.elapsed();
        let id_hex = hex::encode(voicemail_id);
        let locator = Locator::decode(&pending.locator)?;
        let layout = &locator.layout;
        let max = self.config.max_object_bytes();
        if layout.ciphertext_len > max {
            return Err(PeerError::AllCopiesFailed {
                id: id_hex,
                failures: vec![format!(
                    "the locator announces {} bytes, more than this peer's limit of {max}",
                    layout.ciphertext_len
                )],
            });
        }

        // Find every shard's holders at once, then fetch k in parallel,
        // quickest holders first, starting another shard for each failure.
        let t = Instant::now();
        let lookups = layout.shards.iter().enumerate().map(|(i, s)| async move {
            let found = self.network.providers(RecordKey::new(&s.id)).await;
            (i, found.map(|p| p.into_iter().collect::<Vec<_>>()))
        });
        let mut found: Vec<(usize, Vec<PeerId>)> = Vec::new();
        let mut failures = Vec::new();
        for (i, holders) in futures::future::join_all(lookups).await {
            match holders? {
                h if h.is_empty() => {
                    failures.push(format!("shard {i}: no holder found in the DHT"))
                }
                h => found.push((i, h)),
            }
        }
        timings.dht += t.elapsed();
        // This peer's own store first, then by RTT, unmeasured last.
        let rtts = self.network.rtts().await.unwrap_or_default();
        let me = self.peer_id();
        let cost = |p: &PeerId| match rtts.get(p) {
            _ if *p == me => Duration::ZERO,
            Some(rtt) => *rtt,
            None => Duration::MAX,
        };
        for (_, holders) in &mut found {
            holders.sort_by_key(cost);
        }
        // Within 5 ms of each other, original shards (index below k) come
        // first: with all k of them no decoding is needed.
        let k = layout.redundancy.k();
        found.sort_by_key(|(i, holders)| (cost(&holders[0]).as_millis() / 5, *i >= k));

        let t = Instant::now();
        let received = Arc::new(AtomicU64::new(0));
        let total = layout.shard_len() * k as u64;
        let mut queue = found.into_iter();
        let mut running: FuturesUnordered<_> = queue
            .by_ref()
            .take(k)
            .map(|(i, holders)| self.fetch_shard(layout, i, holders, &received, total, &progress))
            .collect();
        let mut shards = BTreeMap::new();
        let mut used = Vec::new();
        loop {
            // A failed shard is replaced by the next one; and a holder that
            // stalls (a cut network: its connection is not closed yet) must
            // not hold the voicemail up, so while no shard arrives for
            // HEDGE_AFTER, one more starts beside it.
            match tokio::time::timeout(HEDGE_AFTER, running.next()).await {
                Ok(None) => break,
                Ok(Some((i, Some((holder, bytes)), mut errors))) => {
                    failures.append(&mut errors);
                    used.push((i as u8, holder));
                    shards.insert(i, bytes);
                    if shards.len() == k {
                        break;
                    }
                    continue;
                }
                Ok(Some((_, None, mut errors))) => failures.append(&mut errors),
                Err(_) => tracing::info!("shard downloads are slow: starting another"),
            }
            if let Some((i, holders)) = queue.next() {
                running.push(self.fetch_shard(layout, i, holders, &received, total, &progress));
            }
        }
        drop(running);
        timings.transfer += t.elapsed();
        if shards.len() < k {
            failures.push(format!(
                "{} of the {k} shards needed ({}) were fetched intact",
                shards.len(),
                layout.redundancy
            ));
            return Err(PeerError::AllCopiesFailed {
                id: id_hex,
                failures,
            });
        }

        let t = Instant::now();
        let key = pending.session_key.clone();
        let (redundancy, ct_len, ct_sha) = (
            layout.redundancy,
            layout.ciphertext_len,
            locator.ciphertext_sha256,
        );
        let message_id = locator.message_id;
        let p = progress.clone();
        let plain = tokio::task::spawn_blocking(move || {
            let ct = erasure::decode(redundancy, ct_len, &shards).map_err(|e| e.to_string())?;
            if <[u8; 32]>::from(Sha256::digest(&ct)) != ct_sha {
                return Err(
                    "the decoded ciphertext does not match the locator's SHA-256".to_owned(),
                );
            }
            let total = ct.len() as u64;
            Ok(crypto::decrypt(&key, &message_id, &ct, &mut |done| {
                p(Progress {
                    phase: Phase::Decrypt,
                    done,
                    total,
                })
            }))
        })
        .await
        .expect("decryption task does not panic");
        timings.crypto += t.elapsed();
        let content = match plain {
            Ok(c) => c.map_err(|why| PeerError::Decrypt {
                id: id_hex.clone(),
                why,
            })?,
            Err(why) => {
                failures.push(why);
                return Err(PeerError::AllCopiesFailed {
                    id: id_hex,
                    failures,
                });
            }
        };
        used.sort();
        Ok(Fetched {
            pending,
            content,
            redundancy: layout.redundancy,
            holders: used,
            failures,
            timings,
        })
    }

    /// Shard `i` from the first of `holders` that returns bytes matching
    /// its hash; a holder that returns other bytes is marked corrupt.
    /// Returns the index, the holder and bytes if any, and what failed.
    async fn fetch_shard(
        &self,
        layout: &Layout,
        i: usize,
        holders: Vec<PeerId>,
        received: &Arc<AtomicU64>,
        total: u64,
        progress: &ProgressFn,
    ) -> (usize, Option<(PeerId, Vec<u8>)>, Vec<String>) {
        let expected = layout.shards[i];
        let len = layout.shard_len();
        let short = &hex::encode(expected.id)[..12];
        let mut failures = Vec::new();
        for holder in holders {
            let got = self
                .fetch_object(holder, &expected.id, len, received, total, progress)
                .await;
            let bytes = match got {
                Ok(b) => b,
                Err(why) => {
                    self.note(holder, Outcome::Failed).await;
                    failures.push(format!("shard {i} ({short}) at {holder}: {why}"));
                    continue;
                }
            };
            if bytes.len() as u64 != len
                || <[u8; 32]>::from(Sha256::digest(&bytes)) != expected.sha256
            {
                tracing::warn!(%holder, shard = i, "holder returned wrong bytes");
                self.note(holder, Outcome::Corrupt).await;
                failures.push(format!(
                    "shard {i} ({short}) at {holder}: wrong bytes (SHA-256 does not match the locator)"
                ));
                continue;
            }
            self.note(holder, Outcome::Good).await;
            return (i, Some((holder, bytes)), failures);
        }
        (i, None, failures)
    }

    async fn fetch_object(
        &self,
        holder: PeerId,
        id: &ObjectId,
        len: u64,
        received: &AtomicU64,
        total: u64,
        progress: &ProgressFn,
    ) -> Result<Vec<u8>, String> {
        if holder == self.peer_id() {
            let store = self.store.as_ref().ok_or("not a holder")?;
            return store
                .read_async(id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no longer held here".to_owned());
        }
        let last = AtomicU64::new(0);
        let on_progress = |done: u64| {
            let delta = done - last.swap(done, Ordering::Relaxed);
            let all = received.fetch_add(delta, Ordering::Relaxed) + delta;
            progress(Progress {
                phase: Phase::Download,
                done: all.min(total),
                total,
            })
        };
        let got = self.blobs.fetch(holder, *id, len, &on_progress).await;
        if got.is_err() {
            received.fetch_sub(last.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        got.map_err(|e: TransferError| e.to_string())
    }
}
