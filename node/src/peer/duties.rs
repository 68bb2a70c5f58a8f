//! The holder's background duties: announcing and purging held objects,
//! and sampling and saving what this peer observes of others.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::kad::RecordKey;
use tokio_util::sync::CancellationToken;
use vmail_proto::unix_now;

use crate::core::score::Observations;
use crate::overlay::objects::Store;
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

/// Every [`SAMPLE_INTERVAL`]: one availability sample per known peer
/// (online = a fresh advert), each advert's free space, old records
/// pruned, and the table saved.
pub(super) async fn sample(
    network: Network,
    table: Arc<Mutex<Observations<PeerId>>>,
    path: PathBuf,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (Ok(Some(view)), Ok(routing)) =
            (network.supernodes().await, network.routing_peers().await)
        else {
            continue;
        };
        let now = unix_now();
        {
            let mut t = table.lock().expect("observations lock");
            for a in &view.adverts {
                t.advertised(&a.peer_id, a.free_storage, now);
            }
            for p in routing {
                t.sample(&p, view.adverts.iter().any(|a| a.peer_id == p), now);
            }
            t.prune(now, OBSERVATION_MAX_AGE_SECS);
        }
        let (table, path) = (table.clone(), path.clone());
        let _ = tokio::task::spawn_blocking(move || save_observations(&table, &path)).await;
    }
}

/// The holder's background duties: announce held objects after a start,
/// then drop expired ones periodically.
pub(super) async fn maintain(network: Network, store: Store, shutdown: CancellationToken) {
    for (id, _) in store.list() {
        if shutdown.is_cancelled() {
            return;
        }
        transfer::announce(&network, id).await;
    }
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for id in store.expired(unix_now()) {
            let st = store.clone();
            if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || st.remove(&id)).await {
                let _ = network.stop_providing(RecordKey::new(&id)).await;
                tracing::info!(id = %hex::encode(id), "expired object dropped");
            }
        }
    }
}
