//! The decisions of a leave's upload, pure: which holder gets which shard,
//! under which identifier, which spare replaces a holder that failed, which
//! holders must be told the final layout, and when the upload has failed.
//! No IO: [`super::leave`] runs the transfers and reports each outcome here;
//! the unit tests drive it with no network.
//!
//! Holders are taken in rank order. Every shard's first holder and its
//! identifier (inside that holder's key range, paper §3.2) are chosen before
//! anything is sent. A holder is sent only its own shard's identifier: a
//! co-holder that learnt its siblings' while their uploads run could announce
//! or race them. A failed shard goes to the next spare under a new
//! identifier in the spare's range. Once every shard is acked, every holder
//! is sent the final layout. When the spares run out the shard stays without
//! a holder, and the leave withdraws what was stored.

use libp2p::PeerId;
use rand::Rng;

use super::StoredShard;
use crate::core::locator::Layout;
use crate::core::placement;
use crate::overlay::transfer::TransferError;

/// One upload to run: a shard to a holder, sent with the layout as it stood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The shard's index.
    pub shard: usize,
    /// The holder asked to take it.
    pub holder: PeerId,
    /// The layout the holder is sent: this shard's identifier, every
    /// sibling's [`crate::core::locator::UNDISCLOSED`].
    pub layout: Layout,
}

/// Why a candidate did not end up holding a shard.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HolderFailure {
    /// No identifier was found inside the candidate's key range.
    #[error("{holder}: no identifier found in its range")]
    NoIdentifier {
        /// The candidate.
        holder: PeerId,
    },
    /// The holder refused the shard or failed while taking it.
    #[error("shard {shard} at {holder}: {why}")]
    Failed {
        /// The shard's index.
        shard: usize,
        /// The holder.
        holder: PeerId,
        /// What went wrong, as the transfer reported it.
        why: String,
    },
}

/// How an upload ended, once no attempt is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Every shard has a holder that acked it.
    Complete {
        /// The shards, by index.
        stored: Vec<StoredShard>,
        /// The final layout.
        layout: Layout,
        /// Holders that were sent less than the final layout (every holder
        /// of a layout with siblings) and must be told it.
        relayout: Vec<StoredShard>,
    },
    /// Some shard ran out of spares: what was stored must be withdrawn.
    Short {
        /// The shards that were stored.
        stored: Vec<StoredShard>,
    },
}

/// The state of one upload.
#[derive(Debug)]
pub struct UploadPlan {
    layout: Layout,
    spares: std::vec::IntoIter<PeerId>,
    known: Vec<PeerId>,
    holders: Vec<Option<(PeerId, Layout)>>,
    failures: Vec<HolderFailure>,
}

impl UploadPlan {
    /// Plans an upload of `draft`'s shards (identifiers not yet chosen) to
    /// the candidates in `ranked`, best first; identifiers are drawn inside
    /// each holder's range among the `known` peers. Returns the plan and the
    /// first attempt of every shard that found a holder.
    pub fn new(
        draft: Layout,
        ranked: Vec<PeerId>,
        known: Vec<PeerId>,
        rng: &mut impl Rng,
    ) -> (Self, Vec<Attempt>) {
        let n = draft.shards.len();
        let mut plan = Self {
            layout: draft,
            spares: ranked.into_iter(),
            known,
            holders: vec![None; n],
            failures: Vec::new(),
        };
        let firsts: Vec<(usize, PeerId)> = (0..n)
            .filter_map(|shard| plan.next_holder(shard, rng).map(|h| (shard, h)))
            .collect();
        let layout = plan.layout.clone();
        let attempts = firsts
            .into_iter()
            .map(|(shard, holder)| Attempt {
                shard,
                holder,
                layout: layout.own_entry_only(shard),
            })
            .collect();
        (plan, attempts)
    }

    /// The next spare with an identifier in its range, which becomes shard
    /// `shard`'s identifier in the layout; None when the spares ran out.
    fn next_holder(&mut self, shard: usize, rng: &mut impl Rng) -> Option<PeerId> {
        for holder in self.spares.by_ref() {
            match placement::identifier_in_range(&holder, &self.known, rng) {
                Some(id) => {
                    self.layout.shards[shard].id = id;
                    return Some(holder);
                }
                None => self.failures.push(HolderFailure::NoIdentifier { holder }),
            }
        }
        None
    }

    /// The holder of `attempt` acked its shard.
    pub fn stored(&mut self, attempt: Attempt) {
        self.holders[attempt.shard] = Some((attempt.holder, attempt.layout));
    }

    /// The holder of `attempt` failed: the shard's next attempt, at the next
    /// spare under a new identifier, or None when the spares ran out.
    pub fn failed(
        &mut self,
        attempt: Attempt,
        why: &TransferError,
        rng: &mut impl Rng,
    ) -> Option<Attempt> {
        self.failures.push(HolderFailure::Failed {
            shard: attempt.shard,
            holder: attempt.holder,
            why: why.to_string(),
        });
        let holder = self.next_holder(attempt.shard, rng)?;
        Some(Attempt {
            shard: attempt.shard,
            holder,
            layout: self.layout.own_entry_only(attempt.shard),
        })
    }

    /// Every candidate that failed so far, in order.
    pub fn failures(&self) -> &[HolderFailure] {
        &self.failures
    }

    /// How the upload ended; call once no attempt is running.
    pub fn finish(self) -> (UploadOutcome, Vec<HolderFailure>) {
        let stored: Vec<StoredShard> = self
            .holders
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                h.as_ref().map(|(holder, _)| StoredShard {
                    index: i as u8,
                    id: self.layout.shards[i].id,
                    holder: *holder,
                })
            })
            .collect();
        let outcome = if stored.len() == self.holders.len() {
            let relayout = stored
                .iter()
                .zip(&self.holders)
                .filter(|(_, h)| h.as_ref().is_some_and(|(_, sent)| *sent != self.layout))
                .map(|(s, _)| *s)
                .collect();
            UploadOutcome::Complete {
                stored,
                layout: self.layout,
                relayout,
            }
        } else {
            UploadOutcome::Short { stored }
        };
        (outcome, self.failures)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::core::erasure::Redundancy;
    use crate::core::locator::{ObjectId, ShardRef, UNDISCLOSED};

    fn draft(n: usize) -> Layout {
        Layout {
            redundancy: Redundancy::ReedSolomon { k: 2, n: n as u8 },
            ciphertext_len: 1000,
            shards: (0..n)
                .map(|i| ShardRef {
                    id: [0; 32],
                    sha256: [i as u8; 32],
                })
                .collect(),
        }
    }

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    fn complete(outcome: UploadOutcome) -> (Vec<StoredShard>, Layout, Vec<StoredShard>) {
        match outcome {
            UploadOutcome::Complete {
                stored,
                layout,
                relayout,
            } => (stored, layout, relayout),
            short => panic!("expected a complete upload: {short:?}"),
        }
    }

    fn refused(holder: PeerId) -> TransferError {
        TransferError::NoRoom {
            peer: holder,
            reason: "full".into(),
        }
    }

    #[test]
    fn the_best_holders_take_one_shard_each_under_identifiers_in_their_ranges_and_see_no_sibling() {
        let mut rng = StdRng::seed_from_u64(1);
        let ranked = peers(6);
        let (plan, attempts) = UploadPlan::new(draft(4), ranked.clone(), ranked.clone(), &mut rng);
        assert_eq!(attempts.len(), 4);
        for (i, a) in attempts.iter().enumerate() {
            assert_eq!((a.shard, a.holder), (i, ranked[i]));
            // A holder is sent its own identifier and no sibling's, while
            // every shard's length and hash (the grant's) stay.
            assert_eq!(a.layout.shards.len(), 4);
            for (j, s) in a.layout.shards.iter().enumerate() {
                assert_eq!(s.sha256, [j as u8; 32]);
                assert_eq!(
                    s.id == UNDISCLOSED,
                    j != i,
                    "shard {j} as holder {i} sees it"
                );
            }
            let id = a.layout.shards[i].id;
            assert!(placement::is_in_range(&id, &ranked[i], &ranked));
        }
        assert!(plan.failures().is_empty());
    }

    #[test]
    fn once_all_acked_every_holder_is_told_the_final_layout() {
        let mut rng = StdRng::seed_from_u64(2);
        let ranked = peers(4);
        let (mut plan, attempts) =
            UploadPlan::new(draft(4), ranked.clone(), ranked.clone(), &mut rng);
        let sent: Vec<ObjectId> = attempts
            .iter()
            .map(|a| a.layout.shards[a.shard].id)
            .collect();
        for a in attempts {
            plan.stored(a);
        }
        let (outcome, failures) = plan.finish();
        let (stored, layout, relayout) = complete(outcome);
        assert!(layout.is_complete());
        let ids: Vec<ObjectId> = layout.shards.iter().map(|s| s.id).collect();
        assert_eq!(ids, sent);
        assert_eq!(relayout, stored);
        assert!(failures.is_empty());
        let holders: Vec<PeerId> = stored.iter().map(|s| s.holder).collect();
        assert_eq!(holders, ranked);
        assert!(
            stored
                .iter()
                .all(|s| s.id == layout.shards[s.index as usize].id)
        );
    }

    #[test]
    fn a_failed_holder_is_replaced_by_the_next_spare_and_the_others_get_the_final_layout() {
        let mut rng = StdRng::seed_from_u64(3);
        let ranked = peers(6);
        let (mut plan, attempts) =
            UploadPlan::new(draft(4), ranked.clone(), ranked.clone(), &mut rng);
        let mut attempts = attempts.into_iter();
        let first = attempts.next().unwrap();
        plan.stored(first.clone());
        let second = attempts.next().unwrap();
        let old_id = second.layout.shards[1].id;
        let retry = plan
            .failed(second, &refused(ranked[1]), &mut rng)
            .expect("a spare is left");
        assert_eq!((retry.shard, retry.holder), (1, ranked[4]));
        assert_ne!(retry.layout.shards[1].id, old_id);
        assert!(placement::is_in_range(
            &retry.layout.shards[1].id,
            &ranked[4],
            &ranked
        ));
        plan.stored(retry.clone());
        for a in attempts {
            plan.stored(a);
        }
        let (outcome, failures) = plan.finish();
        let (stored, layout, relayout) = complete(outcome);
        assert_eq!(layout.shards[1].id, retry.layout.shards[1].id);
        assert_eq!(retry.layout, layout.own_entry_only(1));
        assert_eq!(stored[1].holder, ranked[4]);
        // Every holder, the spare included, is told the final layout.
        let told: Vec<u8> = relayout.iter().map(|s| s.index).collect();
        assert_eq!(told, [0, 1, 2, 3]);
        assert!(
            matches!(&failures[..], [HolderFailure::Failed { shard: 1, holder, .. }] if *holder == ranked[1])
        );
        assert!(failures[0].to_string().contains("has no room"));
    }

    #[test]
    fn when_the_spares_run_out_the_upload_is_short() {
        let mut rng = StdRng::seed_from_u64(4);
        let ranked = peers(5);
        let (mut plan, attempts) =
            UploadPlan::new(draft(4), ranked.clone(), ranked.clone(), &mut rng);
        let mut attempts = attempts.into_iter();
        let a = attempts.next().unwrap();
        let spare = plan.failed(a, &refused(ranked[0]), &mut rng).unwrap();
        assert_eq!(spare.holder, ranked[4]);
        assert!(plan.failed(spare, &refused(ranked[4]), &mut rng).is_none());
        for a in attempts {
            plan.stored(a);
        }
        let (outcome, failures) = plan.finish();
        let UploadOutcome::Short { stored } = outcome else {
            panic!("expected a short upload: {outcome:?}");
        };
        let indexes: Vec<u8> = stored.iter().map(|s| s.index).collect();
        assert_eq!(indexes, [1, 2, 3]);
        assert_eq!(failures.len(), 2);
    }
}
