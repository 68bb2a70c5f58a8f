//! Progress and timing reports of a peer's long jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A stage of a long job, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Encrypting the voicemail.
    Encrypt,
    /// Uploading shards to holders (total = n × shard length).
    Upload,
    /// Downloading shards (total = k × shard length).
    Download,
    /// Decrypting it.
    Decrypt,
}

/// How far a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The stage.
    pub phase: Phase,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// Where progress goes.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// A progress sink that drops everything.
pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

/// Where the time of a job went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Key derivation, encryption or decryption, hashing.
    pub crypto: Duration,
    /// Routing table reads and DHT lookups.
    pub dht: Duration,
    /// Blob transfers.
    pub transfer: Duration,
    /// Calls to the auth servers, but for the grant.
    pub auth: Duration,
    /// What grants add to a leave: asking the auth group for the storage
    /// grant, and handing the holders the deposit proof.
    pub grant: Duration,
}

/// One phase's bytes, summed over the parts that run at once (shard uploads
/// or downloads) and reported to a [`ProgressFn`] as they move.
pub(crate) struct Meter {
    phase: Phase,
    total: u64,
    done: AtomicU64,
    sink: ProgressFn,
}

impl Meter {
    /// A meter of `total` bytes in `phase`.
    pub(crate) fn new(phase: Phase, total: u64, sink: ProgressFn) -> Self {
        Self {
            phase,
            total,
            done: AtomicU64::new(0),
            sink,
        }
    }

    /// A part of the phase, which reports its own bytes so far.
    pub(crate) fn part(&self) -> Part<'_> {
        Part {
            meter: self,
            last: AtomicU64::new(0),
        }
    }
}

/// One transfer's share of a [`Meter`].
pub(crate) struct Part<'a> {
    meter: &'a Meter,
    last: AtomicU64,
}

impl Part<'_> {
    /// This part has moved `done` bytes in all.
    pub(crate) fn update(&self, done: u64) {
        let delta = done.saturating_sub(self.last.swap(done, Ordering::Relaxed));
        let all = self.meter.done.fetch_add(delta, Ordering::Relaxed) + delta;
        (self.meter.sink)(Progress {
            phase: self.meter.phase,
            done: all.min(self.meter.total),
            total: self.meter.total,
        });
    }

    /// This part failed: its bytes no longer count.
    pub(crate) fn undo(&self) {
        self.meter
            .done
            .fetch_sub(self.last.swap(0, Ordering::Relaxed), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn parts_add_up_and_a_failed_part_is_taken_back() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink: ProgressFn = {
            let seen = seen.clone();
            Arc::new(move |p: Progress| seen.lock().unwrap().push(p.done))
        };
        let meter = Meter::new(Phase::Upload, 100, sink);
        let (a, b) = (meter.part(), meter.part());
        a.update(30);
        b.update(20);
        a.update(50);
        b.undo();
        // A retry of b's bytes counts from zero again.
        let c = meter.part();
        c.update(40);
        c.update(60);
        assert_eq!(*seen.lock().unwrap(), [30, 50, 70, 90, 100]);
        // Reports never exceed the total, however the parts overlap.
        a.update(80);
        assert_eq!(seen.lock().unwrap().last(), Some(&100));
    }
}
