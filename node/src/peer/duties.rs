//! The holder's background duties, each a [`Duty`] that [`spawn`] runs on
//! a task of its own until the peer stops: announcing held objects and
//! dropping expired ones ([`Maintain`]), sampling and saving what this peer
//! observes of others ([`Sample`]), and repair ([`Repairer`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::kad::RecordKey;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use vmail_proto::unix_now;

use crate::core::score::Observations;
use crate::overlay::objects::ObjectStore;
use crate::overlay::repair::Repairer;
use crate::overlay::swarm::Network;
use crate::overlay::transfer;

/// How often a holder drops expired objects.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// How often a server peer samples who is online (fresh adverts) and saves
/// its observations.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(60);
/// Observations of a peer not heard of for this long are dropped: 30 days.
pub const OBSERVATION_MAX_AGE_SECS: u64 = 30 * 86_400;

/// Reads the observation table; a missing or unreadable file starts afresh
/// (it is only history, and rebuilds itself).
pub(super) fn load_observations(path: &Path) -> Observations<PeerId> {
    match std::fs::read(path) {
        Ok(bytes) => postcard::from_bytes(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), "unreadable observations ({e}); starting afresh");
            Observations::default()
        }),
        Err(_) => Observations::default(),
    }
}

/// Writes the observation table atomically (a temporary file of its own,
/// synced, renamed into place, so two peers saving at once cannot mix
/// their bytes); a failure is logged, never fatal.
pub(super) fn save_observations(table: &Mutex<Observations<PeerId>>, path: &Path) {
    use std::io::Write;
    let bytes = postcard::to_stdvec(&*table.lock().expect("observations lock"))
        .expect("observations encode");
    let dir = path.parent().unwrap_or(Path::new("."));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| tempfile::NamedTempFile::new_in(dir))
        .and_then(|mut f| {
            f.write_all(&bytes)?;
            f.as_file().sync_all()?;
            f.persist(path).map_err(|e| e.error)?;
            Ok(())
        });
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), "cannot save observations: {e}");
    }
}

/// A background job: something to do once when the peer starts, then once
/// every period, until it stops.
pub(super) trait Duty: Send + 'static {
    /// Its name, for logs.
    const NAME: &'static str;

    /// Time between runs.
    fn period(&self) -> Duration;

    /// What to do once, as soon as the peer starts.
    fn start(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// One run.
    fn run(&mut self) -> impl Future<Output = ()> + Send;
}

/// Runs `duty` on a task of its own: its start, then a run every period
/// (a late run delays the next, never bunches them), until `shutdown`,
/// which also cuts a run short.
pub(super) fn spawn<D: Duty>(mut duty: D, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let work = async {
            duty.start().await;
            let period = duty.period();
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                duty.run().await;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => tracing::debug!(duty = D::NAME, "stopped"),
            () = work => {}
        }
    })
}

/// Announces every held object after a start, then drops expired ones,
/// ones whose grant no deposit proved, and tombstones whose grant expired,
/// every [`PURGE_INTERVAL`].
pub(super) struct Maintain {
    /// The overlay, to announce and withdraw provider records.
    pub(super) network: Network,
    /// What this holder holds.
    pub(super) store: ObjectStore,
}

impl Maintain {
    async fn purge(&self) {
        for id in self.store.expired(unix_now()) {
            let st = self.store.clone();
            if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || st.remove(&id)).await {
                let _ = self.network.stop_providing(RecordKey::new(&id)).await;
                tracing::info!(id = %hex::encode(id), "expired object dropped");
            }
        }
        // Shards whose grant no deposit proved: a leave that failed after
        // its upload, or a sender that never deposited.
        for id in self.store.unproven(unix_now()) {
            let st = self.store.clone();
            if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || st.remove(&id)).await {
                let _ = self.network.stop_providing(RecordKey::new(&id)).await;
                tracing::info!(id = %hex::encode(id), "object dropped: no deposit used its grant");
            }
        }
        let st = self.store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || st.purge_proofs()).await {
            tracing::warn!("cannot drop old deposit proofs: {e}");
        }
        let st = self.store.clone();
        match tokio::task::spawn_blocking(move || st.purge_tombstones(unix_now())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(count = n, "tombstones of expired grants dropped"),
            Ok(Err(e)) => tracing::warn!("cannot drop old tombstones: {e}"),
            Err(e) => tracing::warn!("tombstone purge failed: {e}"),
        }
    }
}

impl Duty for Maintain {
    const NAME: &'static str = "maintain";

    fn period(&self) -> Duration {
        PURGE_INTERVAL
    }

    async fn start(&mut self) {
        for (id, _) in self.store.list() {
            transfer::announce(&self.network, id).await;
        }
        self.purge().await;
    }

    async fn run(&mut self) {
        self.purge().await;
    }
}

/// Every [`SAMPLE_INTERVAL`]: one availability sample per known peer
/// (online = a fresh advert), each advert's free space, old records
/// pruned, and the table saved.
pub(super) struct Sample {
    /// The overlay, for the adverts and the routing table.
    pub(super) network: Network,
    /// This peer's observations.
    pub(super) table: Arc<Mutex<Observations<PeerId>>>,
    /// Where they are saved.
    pub(super) path: PathBuf,
}

impl Duty for Sample {
    const NAME: &'static str = "sample";

    fn period(&self) -> Duration {
        SAMPLE_INTERVAL
    }

    async fn run(&mut self) {
        let (Ok(Some(view)), Ok(routing)) = (
            self.network.supernodes().await,
            self.network.routing_peers().await,
        ) else {
            return;
        };
        let now = unix_now();
        {
            let mut t = self.table.lock().expect("observations lock");
            for a in &view.adverts {
                t.advertised(&a.peer_id, a.free_storage, now);
            }
            for p in routing {
                t.sample(&p, view.adverts.iter().any(|a| a.peer_id == p), now);
            }
            t.prune(now, OBSERVATION_MAX_AGE_SECS);
        }
        let (table, path) = (self.table.clone(), self.path.clone());
        let _ = tokio::task::spawn_blocking(move || save_observations(&table, &path)).await;
    }
}

impl Duty for Repairer {
    const NAME: &'static str = "repair";

    fn period(&self) -> Duration {
        self.interval()
    }

    async fn run(&mut self) {
        let round = self.round().await;
        if round.missing > 0 || round.failed > 0 {
            tracing::info!(?round, "repair round");
        }
    }
}
