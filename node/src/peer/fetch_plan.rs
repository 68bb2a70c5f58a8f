//! The decisions of a fetch, pure: in which order to try the shards and
//! their holders, when to start one more shard beside slow ones (hedging),
//! and when to stop. No IO: [`super::fetch`] runs the downloads and reports
//! each outcome here; the unit tests drive it with no network.
//!
//! Each shard's holders are tried cheapest first: this peer's own store,
//! then by measured round-trip time, unmeasured last. Shards are started
//! cheapest holder first; within [`SAME_COST`] of each other, original
//! shards (index below k) come first, since with all k of them no decoding
//! is needed. k shards start at once; a shard that fails at every holder is
//! replaced by the next, and so is a stall (no shard finished for a while:
//! a holder on a cut network, whose connection is not closed yet), while
//! the slow ones keep running. The fetch is done at k intact shards and has
//! failed when nothing is running and nothing is left to try.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use libp2p::PeerId;

/// Holders whose costs differ by less than this count as equally cheap.
pub const SAME_COST: Duration = Duration::from_millis(5);

/// A shard to download, and its holders in the order to try them.
pub type ShardSource = (usize, Vec<PeerId>);

/// What the caller saw since the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchEvent {
    /// A shard arrived and matched its hash.
    Got,
    /// A shard failed at every one of its holders.
    Failed,
    /// No shard finished for the hedging delay.
    Stalled,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchStep {
    /// Start downloading this shard too.
    Start(ShardSource),
    /// Wait for the shards already running.
    Wait,
    /// k shards arrived intact: stop the rest.
    Done,
    /// Nothing is running and nothing is left: fewer than k arrived.
    GiveUp,
}

/// The state of one fetch.
#[derive(Debug)]
pub struct FetchPlan {
    k: usize,
    queue: VecDeque<ShardSource>,
    running: usize,
    got: usize,
}

impl FetchPlan {
    /// Plans a fetch of any `k` of the shards `found` (each with the holders
    /// the DHT named), as this peer (`me`) sees the holders' `rtts`.
    pub fn new(
        mut found: Vec<ShardSource>,
        k: usize,
        me: PeerId,
        rtts: &HashMap<PeerId, Duration>,
    ) -> Self {
        let cost = |p: &PeerId| match rtts.get(p) {
            _ if *p == me => Duration::ZERO,
            Some(rtt) => *rtt,
            None => Duration::MAX,
        };
        for (_, holders) in &mut found {
            holders.sort_by_key(cost);
        }
        found.retain(|(_, holders)| !holders.is_empty());
        let bucket = |d: Duration| d.as_nanos() / SAME_COST.as_nanos();
        found.sort_by_key(|(i, holders)| (bucket(cost(&holders[0])), *i >= k));
        Self {
            k,
            queue: found.into(),
            running: 0,
            got: 0,
        }
    }

    /// The shards to start first: k of them, or all there are.
    pub fn start(&mut self) -> Vec<ShardSource> {
        let first: Vec<ShardSource> = (0..self.k).map_while(|_| self.queue.pop_front()).collect();
        self.running += first.len();
        first
    }

    /// The next step after `event`.
    pub fn on(&mut self, event: FetchEvent) -> FetchStep {
        match event {
            FetchEvent::Got => {
                self.running -= 1;
                self.got += 1;
                if self.got >= self.k {
                    return FetchStep::Done;
                }
                if self.running == 0 {
                    return self.next().unwrap_or(FetchStep::GiveUp);
                }
                FetchStep::Wait
            }
            FetchEvent::Failed => {
                self.running -= 1;
                self.next().unwrap_or(if self.running == 0 {
                    FetchStep::GiveUp
                } else {
                    FetchStep::Wait
                })
            }
            FetchEvent::Stalled => self.next().unwrap_or(FetchStep::Wait),
        }
    }

    fn next(&mut self) -> Option<FetchStep> {
        let source = self.queue.pop_front()?;
        self.running += 1;
        Some(FetchStep::Start(source))
    }

    /// Intact shards so far.
    pub fn got(&self) -> usize {
        self.got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    fn shard(step: &FetchStep) -> usize {
        match step {
            FetchStep::Start((i, _)) => *i,
            other => panic!("expected a start, got {other:?}"),
        }
    }

    #[test]
    fn holders_are_tried_own_store_first_then_by_rtt_unmeasured_last() {
        let p = peers(4);
        let me = p[3];
        let rtts = HashMap::from([(p[0], ms(40)), (p[1], ms(10))]);
        let mut plan = FetchPlan::new(vec![(0, vec![p[2], p[0], me, p[1]])], 1, me, &rtts);
        let first = plan.start();
        assert_eq!(first, [(0, vec![me, p[1], p[0], p[2]])]);
    }

    #[test]
    fn cheap_shards_start_first_and_originals_win_ties() {
        let p = peers(4);
        let me = PeerId::random();
        // k = 2: shards 0 and 1 are originals, 2 and 3 parity.
        let rtts = HashMap::from([
            (p[0], ms(50)),
            (p[1], ms(21)),
            (p[2], ms(20)),
            (p[3], ms(1)),
        ]);
        let found = vec![
            (0, vec![p[0]]),
            (1, vec![p[1]]),
            (2, vec![p[2]]),
            (3, vec![p[3]]),
        ];
        let mut plan = FetchPlan::new(found, 2, me, &rtts);
        let order: Vec<usize> = plan.start().iter().map(|(i, _)| *i).collect();
        // Shard 3 is far cheaper; 1 and 2 are within SAME_COST, and 1 is an
        // original, so it goes before 2.
        assert_eq!(order, [3, 1]);
        assert_eq!(shard(&plan.on(FetchEvent::Failed)), 2);
        assert_eq!(shard(&plan.on(FetchEvent::Failed)), 0);
    }

    #[test]
    fn it_is_done_at_k_intact_shards() {
        let p = peers(4);
        let found = (0..4).map(|i| (i, vec![p[i]])).collect();
        let mut plan = FetchPlan::new(found, 2, PeerId::random(), &HashMap::new());
        assert_eq!(plan.start().len(), 2);
        assert_eq!(plan.on(FetchEvent::Got), FetchStep::Wait);
        assert_eq!(plan.on(FetchEvent::Got), FetchStep::Done);
        assert_eq!(plan.got(), 2);
    }

    #[test]
    fn a_failure_starts_the_next_shard_and_a_stall_hedges_beside_the_slow_one() {
        let p = peers(5);
        let found = (0..5).map(|i| (i, vec![p[i]])).collect();
        let mut plan = FetchPlan::new(found, 2, PeerId::random(), &HashMap::new());
        plan.start();
        assert_eq!(shard(&plan.on(FetchEvent::Failed)), 2);
        // Two run (1 and 2); a stall adds a third without stopping them.
        assert_eq!(shard(&plan.on(FetchEvent::Stalled)), 3);
        assert_eq!(plan.on(FetchEvent::Got), FetchStep::Wait);
        assert_eq!(plan.on(FetchEvent::Got), FetchStep::Done);
    }

    #[test]
    fn it_gives_up_when_nothing_runs_and_nothing_is_left() {
        let p = peers(3);
        let found = (0..3).map(|i| (i, vec![p[i]])).collect();
        let mut plan = FetchPlan::new(found, 2, PeerId::random(), &HashMap::new());
        plan.start();
        assert_eq!(shard(&plan.on(FetchEvent::Failed)), 2);
        // Nothing is left to start, but two still run.
        assert_eq!(plan.on(FetchEvent::Stalled), FetchStep::Wait);
        assert_eq!(plan.on(FetchEvent::Got), FetchStep::Wait);
        assert_eq!(plan.on(FetchEvent::Failed), FetchStep::GiveUp);
        assert_eq!(plan.got(), 1);
    }

    #[test]
    fn fewer_shards_found_than_needed_start_what_there_is() {
        let p = peers(1);
        let mut plan = FetchPlan::new(
            vec![(0, vec![p[0]]), (1, vec![])],
            2,
            PeerId::random(),
            &HashMap::new(),
        );
        assert_eq!(plan.start().len(), 1);
        assert_eq!(plan.on(FetchEvent::Got), FetchStep::GiveUp);
    }
}
