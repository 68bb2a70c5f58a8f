//! A holder's graceful leave (paper §3.2: objects are "moved
//! automatically if the selected peer exits the system normally"): when
//! the daemon stops, each held object goes to the next-closest peer for
//! its identifier, [`HANDOFF_PARALLEL`] at once, within the configured
//! `handoff_timeout_secs`, with progress reported as it goes. What is not
//! handed off by then stays on this disk: this peer serves it again if it
//! comes back, and the siblings' repair regenerates it if it does not.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::RecordKey;

use super::{HANDOFF_TRIES, Peer};
use crate::core::locator::ObjectId;
use crate::overlay::objects::ObjectMeta;

/// Objects handed off at once: each waits mostly on a DHT lookup and on
/// its receiver, so a few overlap well without crowding the holders.
pub const HANDOFF_PARALLEL: usize = 4;
/// Least time between two progress reports.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How far a hand-off is, and in the end what it did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandOff {
    /// Objects held when it began.
    pub total: usize,
    /// Handed to another peer and removed here.
    pub moved: usize,
    /// Tried, but no peer took them (or they could not be read).
    pub failed: usize,
    /// Not tried, or not finished, when the time ran out.
    pub unfinished: usize,
    /// The time allowed.
    pub timeout: Duration,
    /// Time spent so far.
    pub took: Duration,
    /// Whether this is the final report.
    pub finished: bool,
    /// Why the last object no peer took was refused, if one was.
    pub last_error: Option<String>,
}

impl HandOff {
    /// Objects done with, handed off or not.
    pub fn done(&self) -> usize {
        self.moved + self.failed
    }

    /// Objects that stay only on this disk.
    pub fn kept(&self) -> usize {
        self.failed + self.unfinished
    }

    /// Whether the time ran out before every object was tried.
    pub fn timed_out(&self) -> bool {
        self.unfinished > 0
    }
}

impl Peer {
    /// Hands every held object to the next-closest peer for its
    /// identifier within `handoff_timeout_secs`, reporting to the log.
    /// Returns (moved, kept).
    pub async fn hand_off(&self) -> (usize, usize) {
        let timeout = Duration::from_secs(self.config.handoff_timeout_secs);
        let r = self.hand_off_within(timeout, &|_| {}).await;
        (r.moved, r.kept())
    }

    /// Hands every held object off, [`HANDOFF_PARALLEL`] at once, for at
    /// most `timeout` (zero: none is tried). `progress` hears at the
    /// start, every two seconds at most, and at the end (`finished`); the
    /// log hears the same at info level.
    pub async fn hand_off_within(
        &self,
        timeout: Duration,
        progress: &(dyn Fn(&HandOff) + Sync),
    ) -> HandOff {
        let started = Instant::now();
        let objects = self.store.as_ref().map(|s| s.list()).unwrap_or_default();
        let mut r = HandOff {
            total: objects.len(),
            timeout,
            ..HandOff::default()
        };
        if r.total > 0 && !timeout.is_zero() {
            tracing::info!(objects = r.total, ?timeout, "handing off held objects");
            progress(&r);
            let deadline = tokio::time::Instant::now() + timeout;
            let mut jobs = futures::stream::iter(objects)
                .map(|(id, meta)| self.hand_off_one(id, meta))
                .buffer_unordered(HANDOFF_PARALLEL);
            let mut noted = Instant::now();
            loop {
                match tokio::time::timeout_at(deadline, jobs.next()).await {
                    Ok(Some(Ok(()))) => r.moved += 1,
                    Ok(Some(Err(why))) => {
                        r.failed += 1;
                        r.last_error = Some(why);
                    }
                    Ok(None) => break,
                    Err(_) => break,
                }
                if noted.elapsed() >= PROGRESS_EVERY && r.done() < r.total {
                    r.took = started.elapsed();
                    tracing::info!(
                        "hand-off: {} of {} done, {} handed off",
                        r.done(),
                        r.total,
                        r.moved
                    );
                    progress(&r);
                    noted = Instant::now();
                }
            }
        }
        r.unfinished = r.total - r.done();
        r.took = started.elapsed();
        r.finished = true;
        if r.total > 0 {
            tracing::info!(
                moved = r.moved,
                failed = r.failed,
                unfinished = r.unfinished,
                took = ?r.took,
                "hand-off over: {} of {} handed off; {} stay only on this disk (their siblings repair them if this peer does not come back)",
                r.moved,
                r.total,
                r.kept()
            );
        }
        progress(&r);
        r
    }

    /// Hands one object to the first of the closest peers to take it, and
    /// then drops it here; or says why none did.
    async fn hand_off_one(&self, id: ObjectId, meta: ObjectMeta) -> Result<(), String> {
        let store = self.store.as_ref().ok_or("no store")?;
        let data = match store.read_async(&id).await {
            Ok(Some(d)) => d,
            Ok(None) => return Err("gone from the store meanwhile".into()),
            Err(e) => return Err(format!("unreadable here: {e}")),
        };
        let me = self.peer_id();
        let closest = self
            .network
            .closest_peers(id.to_vec())
            .await
            .unwrap_or_default();
        let mut why = String::from("no other peer found");
        for peer in closest.into_iter().filter(|p| *p != me).take(HANDOFF_TRIES) {
            match self
                .blobs
                .store(peer, id, meta.clone(), &data, &|_| {})
                .await
            {
                Ok(()) => {
                    tracing::debug!(id = %hex::encode(id), to = %peer, "object handed off");
                    let _ = self.network.stop_providing(RecordKey::new(&id)).await;
                    let st = store.clone();
                    let _ = tokio::task::spawn_blocking(move || st.remove(&id)).await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(id = %hex::encode(id), to = %peer, "hand-off try failed: {e}");
                    why = e.to_string();
                }
            }
        }
        Err(why)
    }
}
