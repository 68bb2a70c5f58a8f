//! Progress and timing reports of a peer's long jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::PeerId;

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
    /// Asking the auth group for the storage grant (total 1, done 0 then 1).
    Grant,
    /// Depositing the locator and key shares (total 1, done 0 then 1).
    Deposit,
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
    /// Something the user should hear about while the bytes wait (a holder
    /// that failed and is being replaced); `done` and `total` are then
    /// those of the phase so far.
    pub note: Option<Note>,
}

/// A turn a long job took that would otherwise look like a stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// A holder failed to take its shard (after its timeout, when it did
    /// not answer); the shard goes to `next`, or to nobody when the spares
    /// ran out.
    HolderReplaced {
        /// The shard's index.
        shard: usize,
        /// The holder that failed.
        holder: PeerId,
        /// Whether it answered at all (a refusal) or not (unreachable, or
        /// the exchange broke or timed out).
        answered: bool,
        /// The spare now asked.
        next: Option<PeerId>,
    },
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HolderReplaced {
                shard,
                holder,
                answered,
                next,
            } => {
                if *answered {
                    write!(f, "holder {holder} refused shard {shard}; ")?;
                } else {
                    write!(f, "holder {holder} did not answer for shard {shard}; ")?;
                }
                match next {
                    Some(n) => write!(f, "trying another: {n}"),
                    None => write!(f, "no spare holder is left to try"),
                }
            }
        }
    }
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

impl From<Timings> for crate::metrics::PhaseTimes {
    /// The metrics' four phases: a grant and a deposit proof are auth calls.
    fn from(t: Timings) -> Self {
        Self {
            crypto: t.crypto,
            dht: t.dht,
            transfer: t.transfer,
            auth: t.auth + t.grant,
        }
    }
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
            note: None,
        });
    }

    /// Tells the sink about `note`, at the phase's bytes so far.
    pub(crate) fn note(&self, note: Note) {
        (self.meter.sink)(Progress {
            phase: self.meter.phase,
            done: self
                .meter
                .done
                .load(Ordering::Relaxed)
                .min(self.meter.total),
            total: self.meter.total,
            note: Some(note),
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

    #[test]
    fn a_replaced_holder_is_said_in_words() {
        let (holder, next) = (PeerId::random(), PeerId::random());
        let silent = Note::HolderReplaced {
            shard: 3,
            holder,
            answered: false,
            next: Some(next),
        };
        assert_eq!(
            silent.to_string(),
            format!("holder {holder} did not answer for shard 3; trying another: {next}")
        );
        let refused = Note::HolderReplaced {
            shard: 0,
            holder,
            answered: true,
            next: None,
        };
        assert_eq!(
            refused.to_string(),
            format!("holder {holder} refused shard 0; no spare holder is left to try")
        );
    }

    #[test]
    fn a_note_keeps_the_bytes_so_far() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink: ProgressFn = {
            let seen = seen.clone();
            Arc::new(move |p: Progress| seen.lock().unwrap().push(p))
        };
        let meter = Meter::new(Phase::Upload, 100, sink);
        let part = meter.part();
        part.update(40);
        let note = Note::HolderReplaced {
            shard: 1,
            holder: PeerId::random(),
            answered: false,
            next: None,
        };
        meter.part().note(note);
        let last = *seen.lock().unwrap().last().unwrap();
        assert_eq!((last.done, last.total, last.note), (40, 100, Some(note)));
    }
}
