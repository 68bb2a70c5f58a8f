//! Leaving a voicemail (paper §3.3 steps 1-5): rank holders, encrypt once,
//! shard, ask the auth group for a storage grant, upload under it, and
//! deposit only once every holder acked.
//!
//! The grant answers for each recipient's policy: those who refuse the
//! sender (a block, contacts only, no anonymous voicemail, first-contact
//! limits) are dropped with a reason, and the deposit names exactly the
//! recipients the grant covers, so the others never get the key. The
//! session key is derived before the grant, over the recipients asked for;
//! that only feeds the derivation, nothing checks it against the deposit.
//!
//! A leave never withdraws its shards while its deposit's outcome is
//! unknown: the deposit is retried with the same request id until the group
//! answers, and if it never does in time the error says so and the shards
//! stay (they expire with the grant).

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;
use sha2::{Digest, Sha256};
use vmail_proto::grant::{GrantedShard, MAX_GRANT_HOLDERS, StorageGrant};
use vmail_proto::names::{Recipients, Username};
use vmail_proto::{random_bytes, unix_now};

use super::progress::{Meter, Note};
use super::upload_plan::{Attempt, HolderFailure, UploadOutcome, UploadPlan};
use super::{LeaveError, Peer, Phase, Progress, ProgressFn, Timings};
use crate::auth_client::{
    AuthClient, ClientError, GrantRequest, NewDeposit, Refusal, SenderVisibility, VoicemailMeta,
};
use crate::core::crypto;
use crate::core::erasure::{self, Redundancy};
use crate::core::locator::{LOCATOR_VERSION, Layout, Locator, ObjectId, ShardRef};
use crate::core::score::{Outcome, PeerStats};
use crate::overlay::objects::{ObjectMeta, ShardOf};
use crate::overlay::transfer::TransferError;

/// Longest wait for the supernode's recommendations during a leave.
pub const RECOMMEND_TIMEOUT: Duration = Duration::from_secs(2);

/// What to leave.
#[derive(Debug, Clone)]
pub struct LeaveRequest {
    /// Recipient usernames.
    pub recipients: Vec<String>,
    /// The voicemail.
    pub content: Vec<u8>,
    /// MIME type.
    pub content_type: String,
    /// Duration, when known.
    pub duration_ms: u64,
    /// Copies or erasure coding; None means the configured default.
    pub redundancy: Option<Redundancy>,
    /// Whether the recipients see who left it.
    pub sender: SenderVisibility,
}

/// One stored shard (a whole copy when not erasure-coded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredShard {
    /// Its index in the layout.
    pub index: u8,
    /// Its identifier.
    pub id: ObjectId,
    /// The holder that acked it.
    pub holder: PeerId,
}

/// A voicemail left.
#[derive(Debug, Clone)]
pub struct LeaveReceipt {
    /// The auth server's voicemail id.
    pub voicemail_id: [u8; 16],
    /// The recipients it reached: those the grant covered.
    pub recipients: Recipients,
    /// The recipients whose policy dropped them, each with why.
    pub refused: Vec<Refusal>,
    /// Those of `recipients` who get it as a first contact.
    pub first_contact: Vec<Username>,
    /// Ciphertext bytes.
    pub ciphertext_len: u64,
    /// How it was made redundant.
    pub redundancy: Redundancy,
    /// Bytes of each shard.
    pub shard_len: u64,
    /// The shards, by index.
    pub shards: Vec<StoredShard>,
    /// Holders that refused or failed before others took their place.
    pub failures: Vec<HolderFailure>,
    /// Where the time went.
    pub timings: Timings,
}

/// What one leave uploads: the shards and what every holder is told.
struct Upload<'a> {
    redundancy: Redundancy,
    ciphertext_len: u64,
    grant: &'a StorageGrant,
    delete_secret: [u8; 32],
    shards: &'a [Vec<u8>],
}

/// Holders a grant names for `n` shards: the chosen ones and spares for
/// those that fail, within the grant's limit.
pub fn granted_holders(n: usize) -> usize {
    (2 * n + 4).min(MAX_GRANT_HOLDERS)
}

impl Upload<'_> {
    /// The meta holder `i` is sent, with the layout as it stands.
    fn meta(&self, i: usize, layout: Layout) -> ObjectMeta {
        ObjectMeta {
            len: self.shards[i].len() as u64,
            sha256: layout.shards[i].sha256,
            expires_at: self.grant.body.expires_at,
            delete_hash: Sha256::digest(self.delete_secret).into(),
            shard: Some(ShardOf {
                index: i as u8,
                layout,
            }),
            grant: self.grant.to_bytes(),
            proof: Vec::new(),
        }
    }
}

impl Peer {
    /// Leaves a voicemail (paper §3.3 steps 1-5).
    pub async fn leave(
        &self,
        req: LeaveRequest,
        progress: ProgressFn,
    ) -> Result<LeaveReceipt, LeaveError> {
        let session = self.session()?;
        let mut timings = Timings::default();
        let len = req.content.len() as u64;
        if len == 0 {
            return Err(LeaveError::Empty);
        }
        if len > self.config.max_voicemail_bytes {
            return Err(LeaveError::TooLarge {
                len,
                max: self.config.max_voicemail_bytes,
            });
        }
        let redundancy = req.redundancy.unwrap_or(self.redundancy).validate()?;
        let recipients = Recipients::parse(&req.recipients)?;

        let t = Instant::now();
        let me = self.peer_id();
        let mut candidates = self.network.routing_peers().await?;
        candidates.retain(|p| *p != me);
        if candidates.is_empty() {
            return Err(LeaveError::NoPeers);
        }
        if candidates.len() < redundancy.n() {
            return Err(LeaveError::TooFewPeers {
                redundancy,
                needed: redundancy.n(),
                known: candidates.len(),
            });
        }
        let mut ranked = self.rank(&candidates, redundancy.n()).await;
        ranked.truncate(granted_holders(redundancy.n()));
        timings.dht += t.elapsed();

        // Step 1-2: session key, then one encryption for every recipient,
        // then the shards.
        let t = Instant::now();
        let timestamp = unix_now();
        let salt: [u8; 32] = random_bytes();
        let session_key =
            session
                .login
                .master_key
                .derive_session_key(&salt, timestamp, &recipients);
        let message_id: [u8; 16] = random_bytes();
        let (ciphertext_len, sha256, shards, shard_hashes) = {
            let key = session_key.clone();
            let content = req.content;
            let progress = progress.clone();
            tokio::task::spawn_blocking(move || {
                let ct = crypto::encrypt(&key, message_id, &content, &mut |done| {
                    progress(Progress {
                        phase: Phase::Encrypt,
                        done,
                        total: len,
                        note: None,
                    })
                });
                let sha: [u8; 32] = Sha256::digest(&ct).into();
                erasure::encode(redundancy, &ct).map(|shards| {
                    let hashes: Vec<[u8; 32]> =
                        shards.iter().map(|s| Sha256::digest(s).into()).collect();
                    (ct.len() as u64, sha, shards, hashes)
                })
            })
            .await
            .expect("encryption task does not panic")?
        };
        timings.crypto += t.elapsed();

        // The grant: every recipient is checked, and the holders will check
        // each shard against it, before a byte is stored.
        let step = |phase, done| {
            progress(Progress {
                phase,
                done,
                total: 1,
                note: None,
            })
        };
        step(Phase::Grant, 0);
        let t = Instant::now();
        let mut auth = self.auth(&session).await?;
        timings.auth += t.elapsed();
        let t = Instant::now();
        let ask = GrantRequest {
            recipients: recipients.clone(),
            message_id,
            data_shards: u8::try_from(redundancy.k()).unwrap_or(u8::MAX),
            shards: shards
                .iter()
                .zip(&shard_hashes)
                .map(|(s, sha256)| GrantedShard {
                    len: s.len() as u64,
                    sha256: *sha256,
                })
                .collect(),
            holders: ranked.iter().map(|p| p.to_bytes()).collect(),
            expires_at: 0,
            sender: req.sender,
        };
        let granted = match auth.request_grant(&ask).await {
            Ok(g) => g,
            Err(e) => return Err(grant_refused(&mut auth, &recipients, e).await),
        };
        timings.grant += t.elapsed();
        step(Phase::Grant, 1);
        for r in &granted.refused {
            tracing::info!(recipient = %r.username, "dropped by the recipient's policy: {r}");
        }
        // The deposit names exactly the recipients the grant covers: those
        // whose policy refused the sender get nothing, not even the key.
        let grant = granted.grant;
        let expires_at = grant.body.expires_at;
        let delete_secret: [u8; 32] = random_bytes();

        // Steps 3-5: holders, identifiers in their ranges, uploads.
        let t = Instant::now();
        let mut known = candidates.clone();
        if self.store.is_some() {
            known.push(me);
        }
        let upload = Upload {
            redundancy,
            ciphertext_len,
            grant: &grant,
            delete_secret,
            shards: &shards,
        };
        let (outcome, failures) = self.upload(&upload, ranked, known, &progress).await;
        timings.transfer += t.elapsed();
        let (stored, layout) = match outcome {
            UploadOutcome::Complete { stored, layout, .. } => (stored, layout),
            UploadOutcome::Short { stored } => {
                self.withdraw(&stored, delete_secret).await;
                return Err(LeaveError::NotEnoughHolders {
                    wanted: redundancy.n(),
                    got: stored.len(),
                    failures,
                });
            }
        };

        // Step 6: deposit only now that every shard is acked. Each shard's
        // acking holder goes in as a hint, so a fetch asks it first.
        let mut holders = vec![Vec::new(); layout.shards.len()];
        for s in &stored {
            if let Some(h) = holders.get_mut(usize::from(s.index)) {
                *h = s.holder.to_bytes();
            }
        }
        let locator = Locator {
            version: LOCATOR_VERSION,
            message_id,
            ciphertext_sha256: sha256,
            layout,
            holders,
        };
        step(Phase::Deposit, 0);
        let t = Instant::now();
        let deposit = NewDeposit {
            grant_serial: grant.body.serial,
            request_id: random_bytes(),
            recipients: granted.recipients.clone(),
            locator: locator.encode(),
            session_key,
            share_keys: granted.share_keys.clone(),
            meta: VoicemailMeta {
                size: len,
                content_type: req.content_type,
                duration_ms: req.duration_ms,
                expires_at,
            },
        };
        let receipt = match auth.deposit(&deposit).await {
            Ok(r) => r,
            // The deposit may have committed: withdrawing now could leave a
            // voicemail nobody can fetch, so the shards stay.
            Err(e) if e.outcome_unknown() => {
                return Err(LeaveError::DepositUnknown { why: e, expires_at });
            }
            Err(e) => {
                self.withdraw(&stored, delete_secret).await;
                return Err(LeaveError::NotDeposited(e));
            }
        };
        timings.auth += t.elapsed();
        step(Phase::Deposit, 1);

        // The holders keep the shards only with the group's word that a
        // deposit used the grant.
        let t = Instant::now();
        let mut failures = failures;
        failures.extend(self.hand_proof(&stored, &receipt.proof.to_bytes()).await);
        timings.grant += t.elapsed();
        self.network.metrics().leave(timings.into());
        Ok(LeaveReceipt {
            voicemail_id: receipt.voicemail_id,
            recipients: granted.recipients,
            refused: granted.refused,
            first_contact: granted.first_contact,
            ciphertext_len,
            redundancy,
            shard_len: locator.layout.shard_len(),
            shards: stored,
            failures,
            timings,
        })
    }

    /// Every candidate, best holder first: the configured scorer over this
    /// peer's observations, the preferred list, the supernode's
    /// recommendations (asked for `n`, when attached) and RTTs.
    async fn rank(&self, candidates: &[PeerId], n: usize) -> Vec<PeerId> {
        let recommended = tokio::time::timeout(
            RECOMMEND_TIMEOUT,
            self.network
                .recommend(u16::try_from(n).unwrap_or(u16::MAX), Vec::new()),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
        let rtts = self.network.rtts().await.unwrap_or_default();
        let now = unix_now();
        let table = self.observations.lock().expect("observations lock");
        let stats: Vec<(PeerId, PeerStats)> = candidates
            .iter()
            .map(|p| {
                let mut s = table.stats(p, now);
                s.preferred = self.preferred.contains(p);
                s.recommended = recommended.contains(p);
                s.rtt_ms = rtts.get(p).map(|d| d.as_secs_f64() * 1000.0);
                (*p, s)
            })
            .collect();
        drop(table);
        crate::core::score::select(
            self.scorer.as_ref(),
            &stats,
            candidates.len(),
            &mut rand::thread_rng(),
        )
    }

    /// Uploads every shard concurrently, as the [`UploadPlan`] decides:
    /// holders in rank order, each sent only its own shard's identifier, a
    /// failed one replaced by the next spare, and once every shard is acked
    /// every holder sent the final layout (`Relayout`, with the delete
    /// secret). Returns how the upload ended
    /// and the holders that failed on the way.
    async fn upload(
        &self,
        up: &Upload<'_>,
        ranked: Vec<PeerId>,
        known: Vec<PeerId>,
        progress: &ProgressFn,
    ) -> (UploadOutcome, Vec<HolderFailure>) {
        let n = up.redundancy.n();
        let shard_len = up.shards[0].len() as u64;
        let meter = Meter::new(Phase::Upload, shard_len * n as u64, progress.clone());
        let draft = Layout {
            redundancy: up.redundancy,
            ciphertext_len: up.ciphertext_len,
            shards: up
                .grant
                .body
                .shards
                .iter()
                .map(|s| ShardRef {
                    id: [0; 32],
                    sha256: s.sha256,
                })
                .collect(),
        };
        let (mut plan, first) = UploadPlan::new(draft, ranked, known, &mut rand::thread_rng());
        let attempt = |a: Attempt| {
            let meter = &meter;
            async move {
                let part = meter.part();
                let meta = up.meta(a.shard, a.layout.clone());
                let id = a.layout.shards[a.shard].id;
                let result = self
                    .blobs
                    .store(a.holder, id, meta, &up.shards[a.shard], &|done| {
                        part.update(done)
                    })
                    .await;
                if result.is_err() {
                    part.undo();
                }
                (a, result)
            }
        };
        let mut running: FuturesUnordered<_> = first.into_iter().map(attempt).collect();
        while let Some((a, result)) = running.next().await {
            let now = unix_now();
            match result {
                Ok(()) => {
                    self.note(a.holder, Outcome::Good).await;
                    let mut t = self.observations.lock().expect("observations lock");
                    t.picked(&a.holder, now);
                    t.accepted(&a.holder, shard_len, now);
                    drop(t);
                    plan.stored(a);
                }
                Err(e) => {
                    tracing::warn!(holder = %a.holder, shard = a.shard, "holder failed: {e}");
                    if matches!(e, TransferError::NoRoom { .. }) {
                        self.observations
                            .lock()
                            .expect("observations lock")
                            .refused_room(&a.holder, shard_len, now);
                    }
                    // A holder that stayed busy is serving others, not failing.
                    if !matches!(e, TransferError::Busy { .. }) {
                        self.note(a.holder, Outcome::Failed).await;
                    }
                    let (shard, holder) = (a.shard, a.holder);
                    let next = plan.failed(a, &e, &mut rand::thread_rng());
                    // A replacement waited out the holder's timeout: say so.
                    meter.part().note(Note::HolderReplaced {
                        shard,
                        holder,
                        answered: !matches!(
                            e,
                            TransferError::Unreachable { .. } | TransferError::Broken { .. }
                        ),
                        next: next.as_ref().map(|n| n.holder),
                    });
                    if let Some(next) = next {
                        running.push(attempt(next));
                    }
                }
            }
        }
        drop(running);
        let (outcome, failures) = plan.finish();
        if let UploadOutcome::Complete {
            layout, relayout, ..
        } = &outcome
        {
            // Only now, every upload done, do holders learn their siblings.
            let told = relayout.iter().map(|s| async move {
                let shard = ShardOf {
                    index: s.index,
                    layout: layout.clone(),
                };
                let relayout = self.blobs.relayout(s.holder, s.id, up.delete_secret, shard);
                if let Err(e) = relayout.await {
                    tracing::warn!(holder = %s.holder, "cannot hand it the final layout; it does not repair the voicemail's shards, its siblings do: {e}");
                }
            });
            futures::future::join_all(told).await;
        }
        (outcome, failures)
    }

    /// Hands the deposit proof to every holder of `stored` at once; the
    /// holders it did not reach, as failures. They drop their shard once the
    /// proof's grace period is over, and repair regenerates it elsewhere.
    async fn hand_proof(&self, stored: &[StoredShard], proof: &[u8]) -> Vec<HolderFailure> {
        let sends = stored
            .iter()
            .map(|s| async move { (s, self.blobs.prove(s.holder, proof.to_vec()).await) });
        let mut missed = Vec::new();
        for (s, result) in futures::future::join_all(sends).await {
            if let Err(e) = result {
                tracing::warn!(holder = %s.holder, "deposit proof not delivered: {e}");
                missed.push(HolderFailure::Failed {
                    shard: usize::from(s.index),
                    holder: s.holder,
                    why: format!("deposit proof not delivered ({e}); the holder drops the shard and repair replaces it"),
                });
            }
        }
        missed
    }

    /// Best-effort removal of stored shards after a failed leave.
    async fn withdraw(&self, shards: &[StoredShard], secret: [u8; 32]) {
        for s in shards {
            if let Err(e) = self.blobs.delete(s.holder, s.id, secret).await {
                tracing::warn!(holder = %s.holder, "cannot withdraw shard (it expires on its own): {e}");
            }
        }
    }
}

/// The leave error for a refused grant: an unknown recipient by name (the
/// certificates tell which), else the group's reason in its own words (a
/// PERMISSION_DENIED naming each recipient's refusal, a RESOURCE_EXHAUSTED
/// naming the quota and when it resets).
async fn grant_refused(
    auth: &mut AuthClient,
    recipients: &Recipients,
    e: ClientError,
) -> LeaveError {
    if e.code() == Some(tonic::Code::NotFound) {
        for name in recipients.to_strings() {
            if let Err(c) = auth.certificate(&name).await
                && c.code() == Some(tonic::Code::NotFound)
            {
                return LeaveError::UnknownRecipient(name);
            }
        }
    }
    LeaveError::Grant(e)
}
