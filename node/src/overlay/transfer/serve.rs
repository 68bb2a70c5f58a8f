//! The blob protocol's holder side: accepting streams within each peer's
//! share ([`super::admission`]), answering `Busy` over it, and answering
//! each request from the object store within its deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::io::AsyncWriteExt;
use libp2p::kad::RecordKey;
use libp2p::{PeerId, Stream};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::admission::{
    Admission, Busy, Limits, MAX_BUSY_ANSWERS, Pool, REQUEST_TIMEOUT, RETRY_AFTER, body_deadline,
};
use super::{
    ANNOUNCE_TIMEOUT, BLOB_PROTOCOL, Reply, Request, read_body, read_frame, timed, write_body,
    write_frame,
};
use crate::core::locator::ObjectId;
use crate::metrics::{Direction, Metrics};
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

/// Logs and counts a refused store (the store counted it too), then says
/// it.
fn refuse(peer: PeerId, id: &ObjectId, e: ObjectStoreError, metrics: &Metrics) -> Reply {
    tracing::info!(%peer, id = %hex::encode(id), reason = e.reason(), "store refused: {e}");
    metrics.store_refused(e.reason());
    store_refusal(e)
}

/// Longest a `Busy` answer may take, the request read included.
const BUSY_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The holder's admission account, shared by its exchanges.
type Gate = Arc<Mutex<Admission>>;

/// What a [`Hold`] holds.
#[derive(Debug, Clone, Copy)]
enum Held {
    Stream,
    Slot(Pool),
    Quota(u64),
}

/// A share of the admission account, given back when dropped.
#[derive(Debug)]
struct Hold {
    gate: Gate,
    peer: PeerId,
    held: Held,
}

impl Hold {
    /// Takes `held` for `peer`, or says why the holder is too busy.
    fn take(gate: &Gate, peer: PeerId, held: Held) -> Result<Self, Busy> {
        let mut a = gate.lock().expect("admission lock");
        match held {
            Held::Stream => a.open(peer)?,
            Held::Slot(pool) => a.enter(peer, pool)?,
            Held::Quota(bytes) => a.reserve(peer, bytes)?,
        }
        Ok(Self {
            gate: gate.clone(),
            peer,
            held,
        })
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut a = self.gate.lock().expect("admission lock");
        match self.held {
            Held::Stream => a.close(self.peer),
            Held::Slot(pool) => a.exit(self.peer, pool),
            Held::Quota(bytes) => a.release(self.peer, bytes),
        }
    }
}

/// The pool a request runs in.
fn pool_of(request: &Request) -> Pool {
    match request {
        Request::Store { .. } | Request::Fetch { .. } | Request::Relayout { .. } => Pool::Heavy,
        Request::Has { .. }
        | Request::Delete { .. }
        | Request::Erase { .. }
        | Request::Prove { .. } => Pool::Light,
    }
}

/// The `Busy` reply.
fn busy() -> Reply {
    Reply::Busy {
        retry_after_ms: u32::try_from(RETRY_AFTER.as_millis()).unwrap_or(u32::MAX),
    }
}

/// Says `Busy` on `s` and closes it.
async fn answer_busy(peer: PeerId, s: &mut Stream, why: Busy) -> std::io::Result<()> {
    tracing::debug!(%peer, "blob exchange deferred: {why}");
    write_frame(s, &busy()).await?;
    timed(s.close()).await
}

/// The holder side: accepts blob streams until `shutdown`, serving each on
/// its own task within its peer's share ([`super::admission`]); a stream
/// over it is answered `Busy`.
pub async fn serve(network: Network, store: ObjectStore, shutdown: CancellationToken) {
    let mut control = network.streams();
    let mut incoming = match control.accept(BLOB_PROTOCOL) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("blob protocol already registered: {e}");
            return;
        }
    };
    let gate: Gate = Arc::new(Mutex::new(Admission::new(Limits::default())));
    let answering = Arc::new(Semaphore::new(MAX_BUSY_ANSWERS));
    loop {
        let (peer, mut stream) = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = incoming.next() => match next {
                Some(s) => s,
                None => return,
            },
        };
        let hold = match Hold::take(&gate, peer, Held::Stream) {
            Ok(h) => h,
            Err(why) => {
                let Ok(permit) = answering.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "blob stream dropped: {why}, and too many busy answers");
                    continue;
                };
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(BUSY_ANSWER_TIMEOUT, async {
                        read_frame::<_, Request>(&mut stream).await?;
                        answer_busy(peer, &mut stream, why).await
                    })
                    .await;
                    drop(permit);
                });
                continue;
            }
        };
        let (network, store, gate) = (network.clone(), store.clone(), gate.clone());
        let in_use = network.in_use(peer);
        tokio::spawn(async move {
            let _in_use = in_use;
            if let Err(e) = handle(peer, stream, &network, &store, &gate).await {
                tracing::debug!(%peer, "blob exchange ended: {e}");
            }
            drop(hold);
        });
    }
}

/// The error for a body that did not move within its deadline.
fn too_slow(len: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "a body of {len} bytes did not move within {:?}",
            body_deadline(len)
        ),
    )
}

async fn handle(
    peer: PeerId,
    mut s: Stream,
    network: &Network,
    store: &ObjectStore,
    gate: &Gate,
) -> std::io::Result<()> {
    let request = tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut s))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no request within the request timeout",
            )
        })??;
    let _slot = match Hold::take(gate, peer, Held::Slot(pool_of(&request))) {
        Ok(h) => h,
        Err(why) => return answer_busy(peer, &mut s, why).await,
    };
    match request {
        Request::Store { id, mut meta } => {
            match store.admit(&id, &mut meta, vmail_proto::unix_now()) {
                Ok(Admitted::New) => {}
                Ok(Admitted::Held) => return write_frame(&mut s, &Reply::Stored).await,
                Err(e) => {
                    return write_frame(&mut s, &refuse(peer, &id, e, network.metrics())).await;
                }
            }
            let _quota = match Hold::take(gate, peer, Held::Quota(meta.charge())) {
                Ok(h) => h,
                Err(why) => return answer_busy(peer, &mut s, why).await,
            };
            let reservation = match store.reserve(&meta) {
                Ok(r) => r,
                Err(e) => {
                    return write_frame(&mut s, &refuse(peer, &id, e, network.metrics())).await;
                }
            };
            write_frame(&mut s, &Reply::Ready).await?;
            let len = meta.len;
            let started = Instant::now();
            let data = tokio::time::timeout(body_deadline(len), read_body(&mut s, len, &|_| {}))
                .await
                .map_err(|_| too_slow(len))??;
            let took = started.elapsed();
            let st = store.clone();
            let committed =
                tokio::task::spawn_blocking(move || st.commit(reservation, &id, meta, &data))
                    .await
                    .map_err(std::io::Error::other)?;
            if let Err(e) = committed {
                return write_frame(&mut s, &refuse(peer, &id, e, network.metrics())).await;
            }
            // Acked once it is on disk (committed and fsynced); the DHT
            // announcement (bounded by ANNOUNCE_TIMEOUT) runs behind it, so
            // a leave does not wait on a lookup: fetches start at the
            // locator's hinted holder and need no provider record.
            tracing::info!(%peer, id = %hex::encode(id), bytes = len, "stored object");
            network.metrics().store_accepted();
            network.metrics().transfer(Direction::In, len, took);
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
                let len = data.len() as u64;
                let started = Instant::now();
                tokio::time::timeout(body_deadline(len), write_body(&mut s, &data, &|_| {}))
                    .await
                    .map_err(|_| too_slow(len))??;
                network.metrics().fetch_served();
                network
                    .metrics()
                    .transfer(Direction::Out, len, started.elapsed());
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
