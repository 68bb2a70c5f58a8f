//! The blob protocol's holder side: accepting streams within the exchange
//! slots, and answering each request from the object store.

use std::sync::Arc;

use futures::StreamExt;
use futures::io::AsyncWriteExt;
use libp2p::kad::RecordKey;
use libp2p::{PeerId, Stream};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{
    ANNOUNCE_TIMEOUT, BLOB_PROTOCOL, MAX_CONCURRENT_EXCHANGES, Reply, Request, read_body,
    read_frame, timed, write_body, write_frame,
};
use crate::core::locator::ObjectId;
use crate::overlay::objects::{Admitted, ObjectStore, ObjectStoreError};
use crate::overlay::swarm::Network;

/// The reply for a request the local store refused.
fn store_refusal(e: ObjectStoreError) -> Reply {
    match e {
        ObjectStoreError::QuotaFull { .. }
        | ObjectStoreError::TooMany { .. }
        | ObjectStoreError::DiskFull => Reply::NoRoom(e.to_string()),
        ObjectStoreError::Deleted { order, .. } => Reply::Gone { order },
        e => Reply::Refused(e.to_string()),
    }
}

/// The reply for an object not held here: `Gone` if it was deleted.
fn not_here(store: &ObjectStore, id: &ObjectId) -> Reply {
    store.deleted(id).map_or_else(
        || Reply::Refused(ObjectStoreError::NotHeld.to_string()),
        store_refusal,
    )
}

/// Logs a refusal (the store counted it), then says it.
fn refuse(peer: PeerId, id: &ObjectId, e: ObjectStoreError) -> Reply {
    tracing::info!(%peer, id = %hex::encode(id), reason = e.reason(), "store refused: {e}");
    store_refusal(e)
}

/// The holder side: accepts blob streams until `shutdown`, serving each on
/// its own task, at most [`MAX_CONCURRENT_EXCHANGES`] at a time.
pub async fn serve(network: Network, store: ObjectStore, shutdown: CancellationToken) {
    let mut control = network.streams();
    let mut incoming = match control.accept(BLOB_PROTOCOL) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("blob protocol already registered: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_EXCHANGES));
    loop {
        let (peer, stream) = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = incoming.next() => match next {
                Some(s) => s,
                None => return,
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many transfers in flight; stream dropped");
            continue;
        };
        let (network, store) = (network.clone(), store.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(peer, stream, &network, &store).await {
                tracing::debug!(%peer, "blob exchange ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn handle(
    peer: PeerId,
    mut s: Stream,
    network: &Network,
    store: &ObjectStore,
) -> std::io::Result<()> {
    match read_frame(&mut s).await? {
        Request::Store { id, mut meta } => {
            match store.admit(&id, &mut meta, vmail_proto::unix_now()) {
                Ok(Admitted::New) => {}
                Ok(Admitted::Held) => return write_frame(&mut s, &Reply::Stored).await,
                Err(e) => return write_frame(&mut s, &refuse(peer, &id, e)).await,
            }
            let reservation = match store.reserve(&meta) {
                Ok(r) => r,
                Err(e) => return write_frame(&mut s, &refuse(peer, &id, e)).await,
            };
            write_frame(&mut s, &Reply::Ready).await?;
            let len = meta.len;
            let data = read_body(&mut s, len, &|_| {}).await?;
            let st = store.clone();
            let committed =
                tokio::task::spawn_blocking(move || st.commit(reservation, &id, meta, &data))
                    .await
                    .map_err(std::io::Error::other)?;
            if let Err(e) = committed {
                return write_frame(&mut s, &refuse(peer, &id, e)).await;
            }
            // Acked once it is on disk (committed and fsynced); the DHT
            // announcement (bounded by ANNOUNCE_TIMEOUT) runs behind it, so
            // a leave does not wait on a lookup: fetches start at the
            // locator's hinted holder and need no provider record.
            tracing::info!(%peer, id = %hex::encode(id), bytes = len, "stored object");
            write_frame(&mut s, &Reply::Stored).await?;
            let network = network.clone();
            tokio::spawn(async move { announce(&network, id).await });
        }
        Request::Fetch { id } => match store.read_async(&id).await {
            Ok(Some(data)) => {
                write_frame(
                    &mut s,
                    &Reply::Found {
                        len: data.len() as u64,
                    },
                )
                .await?;
                write_body(&mut s, &data, &|_| {}).await?;
            }
            Ok(None) => write_frame(&mut s, &not_here(store, &id)).await?,
            Err(e) => {
                tracing::error!(id = %hex::encode(id), "cannot read object: {e}");
                write_frame(
                    &mut s,
                    &Reply::Refused("holder cannot read the object".into()),
                )
                .await?;
            }
        },
        Request::Has { id } => {
            let reply = match store.get(&id) {
                Some(m) => Reply::Held {
                    len: m.len,
                    sha256: m.sha256,
                },
                None => not_here(store, &id),
            };
            write_frame(&mut s, &reply).await?;
        }
        Request::Relayout { id, secret, shard } => {
            let st = store.clone();
            let reply = tokio::task::spawn_blocking(move || st.set_shard(&id, &secret, shard))
                .await
                .map_err(std::io::Error::other)?
                .map_or_else(store_refusal, |()| Reply::Stored);
            write_frame(&mut s, &reply).await?;
        }
        Request::Delete { id, secret } => {
            let reply = match store.get(&id) {
                None => Reply::Refused("no such object here".into()),
                Some(m) if <[u8; 32]>::from(Sha256::digest(secret)) != m.delete_hash => {
                    Reply::Refused("wrong delete secret".into())
                }
                Some(_) => {
                    let st = store.clone();
                    match tokio::task::spawn_blocking(move || st.remove(&id))
                        .await
                        .map_err(std::io::Error::other)?
                    {
                        Ok(_) => {
                            let _ = network.stop_providing(RecordKey::new(&id)).await;
                            Reply::Deleted
                        }
                        Err(e) => Reply::Refused(e.to_string()),
                    }
                }
            };
            write_frame(&mut s, &reply).await?;
        }
        Request::Prove { proof } => {
            let st = store.clone();
            let reply = match tokio::task::spawn_blocking(move || st.prove(&proof))
                .await
                .map_err(std::io::Error::other)?
            {
                Ok(n) => Reply::Proven {
                    objects: u32::try_from(n).unwrap_or(u32::MAX),
                },
                Err(e) => {
                    tracing::info!(%peer, reason = e.reason(), "deposit proof refused: {e}");
                    Reply::Refused(e.to_string())
                }
            };
            write_frame(&mut s, &reply).await?;
        }
        Request::Erase { order } => {
            let reply = match erase(network, store, order).await {
                Ok(n) => Reply::Erased {
                    objects: u32::try_from(n).unwrap_or(u32::MAX),
                },
                Err(e) => {
                    tracing::info!(%peer, reason = e.reason(), "delete order refused: {e}");
                    Reply::Refused(e.to_string())
                }
            };
            write_frame(&mut s, &reply).await?;
        }
    }
    timed(s.close()).await
}

/// Carries out a delete order on `store` and withdraws the provider
/// records of what it removed. Returns how many objects went.
pub async fn erase(
    network: &Network,
    store: &ObjectStore,
    order: Vec<u8>,
) -> Result<usize, ObjectStoreError> {
    let st = store.clone();
    let ids = tokio::task::spawn_blocking(move || st.erase(&order))
        .await
        .map_err(|e| ObjectStoreError::Io {
            path: std::path::PathBuf::from("objects"),
            source: std::io::Error::other(e),
        })??;
    for id in &ids {
        let _ = network.stop_providing(RecordKey::new(id)).await;
        tracing::info!(id = %hex::encode(id), "object deleted by order");
    }
    Ok(ids.len())
}

/// Announces a held object in the DHT, waiting at most [`ANNOUNCE_TIMEOUT`].
pub async fn announce(network: &Network, id: ObjectId) {
    match tokio::time::timeout(
        ANNOUNCE_TIMEOUT,
        network.start_providing(RecordKey::new(&id)),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(id = %hex::encode(id), "announcement incomplete: {e}"),
        Err(_) => tracing::debug!(id = %hex::encode(id), "announcement still running"),
    }
}
