//! The blob protocol: moving ciphertext between peers on libp2p streams.
//!
//! Kademlia values are capped near 64 KiB, so voicemails travel on
//! [`BLOB_PROTOCOL`] streams of their own. Each stream carries one exchange.
//! Control messages are frames: a u32 BE length, then postcard of
//! [`Request`] or [`Reply`], at most [`MAX_FRAME`] bytes. Bodies are raw
//! bytes of the length the frame announced.
//!
//! ```text
//! store:  -> Store{id, meta}  <- Ready | Stored | NoRoom | Refused | Gone   -> body   <- Stored | NoRoom | Refused
//! fetch:  -> Fetch{id}        <- Found{len} body | Refused | Gone
//! has:    -> Has{id}          <- Held{len, sha256} | Refused | Gone
//! relayout: -> Relayout{id, secret, shard}  <- Stored | Refused
//! delete: -> Delete{id, secret}  <- Deleted | Refused
//! erase:  -> Erase{order}     <- Erased{objects} | Refused
//! prove:  -> Prove{proof}     <- Proven{objects} | Refused
//! ```
//!
//! A store's meta carries the storage grant; the holder admits it only as
//! [`crate::overlay::objects::admit`] allows, and answers `Gone` with the
//! signed delete order for a shard of a deleted voicemail. `Erase` carries
//! a delete order: the holder checks it and removes every object of its
//! grant. `Has` and `Fetch` of an identifier deleted here answer `Gone`
//! too, which is how a holder that missed a delete order learns of it from
//! its siblings (docs/PROTOCOL.md, "Delete orders"). `Prove` carries the
//! group's deposit proof for a grant, which the sender hands its holders
//! after the deposit: a holder drops granted shards that never get one.
//!
//! A holder that already has the same object (length, hash and delete hash)
//! answers `Stored` at once, without the body. `Relayout` is how a sender
//! whose layout changed during the upload hands holders the final one; like
//! `Delete` (a failed leave rolling back) it needs the leave's delete secret.
//! Version 2 added the shard layout to the stored meta, `Has` (the repair
//! check), `Relayout`, `NoRoom` and the early `Stored`; version 3 the grant
//! and the deposit proof, `Erase`, `Prove`, `Gone` and `Proven`.
//!
//! A holder acks a store only after it checked the grant, size, quota and
//! SHA-256, wrote the object durably and announced it in the DHT.

use std::sync::Arc;
use std::time::Duration;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::kad::RecordKey;
use libp2p::{PeerId, Stream, StreamProtocol};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::core::locator::ObjectId;
use crate::overlay::objects::{Admitted, ObjectMeta, ObjectStore, ObjectStoreError, ShardOf};
use crate::overlay::swarm::Network;

/// Stream protocol name for blob transfer.
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/vmail/blob/3.0.0");
/// Largest control frame.
pub const MAX_FRAME: usize = 16 * 1024;
/// Bytes per body write, and per progress report.
pub const CHUNK: usize = 64 * 1024;
/// Longest wait for any one read or write before the exchange is dropped.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a holder's DHT announcement before it acks anyway; the
/// holder stays findable because it is the closest peer to the identifier.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Exchanges one holder serves at a time.
pub const MAX_CONCURRENT_EXCHANGES: usize = 32;

/// What a peer asks a holder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Hold this object; the body follows `Ready`.
    Store {
        /// Storage identifier.
        id: ObjectId,
        /// Size, hash, expiry and delete hash.
        meta: ObjectMeta,
    },
    /// Send this object.
    Fetch {
        /// Storage identifier.
        id: ObjectId,
    },
    /// Say whether this object is held, without sending it.
    Has {
        /// Storage identifier.
        id: ObjectId,
    },
    /// Replace the layout of an object the sender stored.
    Relayout {
        /// Storage identifier.
        id: ObjectId,
        /// The preimage of the object's delete hash.
        secret: [u8; 32],
        /// The final layout and this object's index in it.
        shard: ShardOf,
    },
    /// Withdraw an object the sender stored (a failed leave rolling back).
    Delete {
        /// Storage identifier.
        id: ObjectId,
        /// The preimage of the object's delete hash.
        secret: [u8; 32],
    },
    /// Carry out a delete order: drop every object of its grant.
    Erase {
        /// The order, in its one encoding.
        order: Vec<u8>,
    },
    /// Keep the objects of a grant a deposit used: the group's proof.
    Prove {
        /// The deposit proof, in its one encoding.
        proof: Vec<u8>,
    },
}

/// What a holder answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// Send the body.
    Ready,
    /// Stored durably and announced.
    Stored,
    /// The body of this many bytes follows.
    Found {
        /// Body length.
        len: u64,
    },
    /// The object is held: its length and hash as stored.
    Held {
        /// Object length.
        len: u64,
        /// Its SHA-256.
        sha256: [u8; 32],
    },
    /// The object is gone.
    Deleted,
    /// The delete order was carried out.
    Erased {
        /// Objects it removed here.
        objects: u32,
    },
    /// The deposit proof was taken.
    Proven {
        /// Objects of its grant held here.
        objects: u32,
    },
    /// The object's voicemail was deleted: the signed delete order.
    Gone {
        /// The order, in its one encoding.
        order: Vec<u8>,
    },
    /// No room: quota or disk full.
    NoRoom(String),
    /// Refused, with the holder's reason.
    Refused(String),
}

/// Why an exchange with a holder failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The peer could not be reached or does not speak the protocol.
    #[error("cannot open a stream to {peer}: {why}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// Why.
        why: String,
    },
    /// The holder has no room for it.
    #[error("{peer} has no room: {reason}")]
    NoRoom {
        /// The peer.
        peer: PeerId,
        /// Its reason.
        reason: String,
    },
    /// The holder said no.
    #[error("{peer} refused: {reason}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// Its reason.
        reason: String,
    },
    /// The object's voicemail was deleted; the holder sent the order.
    #[error("{peer}: the voicemail was deleted")]
    Gone {
        /// The peer.
        peer: PeerId,
        /// The delete order, in its one encoding, still to be checked.
        order: Vec<u8>,
    },
    /// The exchange broke or timed out.
    #[error("transfer with {peer} failed: {why}")]
    Broken {
        /// The peer.
        peer: PeerId,
        /// Why.
        why: String,
    },
    /// The holder answered something the protocol does not allow.
    #[error("{peer} broke the blob protocol: {why}")]
    Protocol {
        /// The peer.
        peer: PeerId,
        /// Why.
        why: String,
    },
}

async fn timed<T>(
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "peer stopped answering"))?
}

async fn write_frame<S: AsyncWrite + Unpin, T: Serialize>(
    s: &mut S,
    msg: &T,
) -> std::io::Result<()> {
    let body = postcard::to_stdvec(msg).expect("protocol messages encode");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    timed(async {
        s.write_all(&frame).await?;
        s.flush().await
    })
    .await
}

async fn read_frame<S: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    s: &mut S,
) -> std::io::Result<T> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let mut len = [0u8; 4];
    timed(s.read_exact(&mut len)).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(bad("control frame too large"));
    }
    let mut buf = vec![0u8; len];
    timed(s.read_exact(&mut buf)).await?;
    postcard::from_bytes(&buf).map_err(|_| bad("malformed control frame"))
}

async fn write_body<S: AsyncWrite + Unpin>(
    s: &mut S,
    data: &[u8],
    progress: &(dyn Fn(u64) + Sync),
) -> std::io::Result<()> {
    let mut done = 0u64;
    for chunk in data.chunks(CHUNK) {
        timed(s.write_all(chunk)).await?;
        done += chunk.len() as u64;
        progress(done);
    }
    timed(s.flush()).await
}

async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    len: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let end = (done + CHUNK).min(len);
        timed(s.read_exact(&mut buf[done..end])).await?;
        done = end;
        progress(done as u64);
    }
    Ok(buf)
}

/// The client side: one exchange per call.
#[derive(Clone)]
pub struct BlobClient {
    control: libp2p_stream::Control,
}

impl std::fmt::Debug for BlobClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobClient")
    }
}

impl BlobClient {
    /// A client on the network's stream control.
    pub fn new(network: &Network) -> Self {
        Self {
            control: network.streams(),
        }
    }

    async fn open(&self, peer: PeerId) -> Result<Stream, TransferError> {
        let mut control = self.control.clone();
        tokio::time::timeout(IO_TIMEOUT, control.open_stream(peer, BLOB_PROTOCOL))
            .await
            .map_err(|_| TransferError::Unreachable {
                peer,
                why: "timed out".into(),
            })?
            .map_err(|e| TransferError::Unreachable {
                peer,
                why: brief(&e.to_string()),
            })
    }

    /// Opens a stream to `peer`, sends `request` and reads the first
    /// reply; the stream stays open for a body.
    async fn ask(&self, peer: PeerId, request: &Request) -> Result<(Stream, Reply), TransferError> {
        let mut s = self.open(peer).await?;
        write_frame(&mut s, request).await.map_err(broken(peer))?;
        let reply = read_frame(&mut s).await.map_err(broken(peer))?;
        Ok((s, reply))
    }

    /// Asks `peer` to hold `data` under `id`; Ok once it acked.
    pub async fn store(
        &self,
        peer: PeerId,
        id: ObjectId,
        meta: ObjectMeta,
        data: &[u8],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), TransferError> {
        let mut s = match self.ask(peer, &Request::Store { id, meta }).await? {
            (s, Reply::Ready) => s,
            (_, Reply::Stored) => return Ok(()),
            (_, other) => return Err(refusal(peer, other)),
        };
        write_body(&mut s, data, progress)
            .await
            .map_err(broken(peer))?;
        match read_frame(&mut s).await.map_err(broken(peer))? {
            Reply::Stored => Ok(()),
            other => Err(refusal(peer, other)),
        }
    }

    /// Asks `peer` whether it holds `id`: its length and hash if so.
    pub async fn has(&self, peer: PeerId, id: ObjectId) -> Result<(u64, [u8; 32]), TransferError> {
        match self.ask(peer, &Request::Has { id }).await? {
            (_, Reply::Held { len, sha256 }) => Ok((len, sha256)),
            (_, other) => Err(refusal(peer, other)),
        }
    }

    /// Gets the object `id` from `peer`, refusing bodies over `max_len`.
    /// The caller checks the content.
    pub async fn fetch(
        &self,
        peer: PeerId,
        id: ObjectId,
        max_len: u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<u8>, TransferError> {
        match self.ask(peer, &Request::Fetch { id }).await? {
            (mut s, Reply::Found { len }) if len <= max_len => {
                read_body(&mut s, len, progress).await.map_err(broken(peer))
            }
            (_, Reply::Found { len }) => Err(TransferError::Protocol {
                peer,
                why: format!("offered {len} bytes where at most {max_len} were expected"),
            }),
            (_, other) => Err(refusal(peer, other)),
        }
    }

    /// Hands `peer` the final layout of an object this peer stored there.
    pub async fn relayout(
        &self,
        peer: PeerId,
        id: ObjectId,
        secret: [u8; 32],
        shard: ShardOf,
    ) -> Result<(), TransferError> {
        match self
            .ask(peer, &Request::Relayout { id, secret, shard })
            .await?
        {
            (_, Reply::Stored) => Ok(()),
            (_, other) => Err(refusal(peer, other)),
        }
    }

    /// Hands `peer` a delete order; how many objects it removed.
    pub async fn erase(&self, peer: PeerId, order: Vec<u8>) -> Result<u32, TransferError> {
        match self.ask(peer, &Request::Erase { order }).await? {
            (_, Reply::Erased { objects }) => Ok(objects),
            (_, other) => Err(refusal(peer, other)),
        }
    }

    /// Hands `peer` the deposit proof for a grant it holds shards of.
    pub async fn prove(&self, peer: PeerId, proof: Vec<u8>) -> Result<u32, TransferError> {
        match self.ask(peer, &Request::Prove { proof }).await? {
            (_, Reply::Proven { objects }) => Ok(objects),
            (_, other) => Err(refusal(peer, other)),
        }
    }

    /// Withdraws an object this peer stored at `peer`.
    pub async fn delete(
        &self,
        peer: PeerId,
        id: ObjectId,
        secret: [u8; 32],
    ) -> Result<(), TransferError> {
        match self.ask(peer, &Request::Delete { id, secret }).await? {
            (_, Reply::Deleted) => Ok(()),
            (_, other) => Err(refusal(peer, other)),
        }
    }
}

/// The error for an exchange with `peer` that broke mid-way.
fn broken(peer: PeerId) -> impl Fn(std::io::Error) -> TransferError {
    move |e| TransferError::Broken {
        peer,
        why: e.to_string(),
    }
}

/// libp2p's dial errors nest every address tried; users need the gist.
fn brief(error: &str) -> String {
    if error.contains("Connection refused") {
        "connection refused (the peer is down)".into()
    } else if error.contains("does not support") {
        "it does not speak the vmail blob protocol".into()
    } else {
        error
            .lines()
            .next()
            .unwrap_or(error)
            .chars()
            .take(160)
            .collect()
    }
}

/// The error for a reply other than the one hoped for.
fn refusal(peer: PeerId, reply: Reply) -> TransferError {
    match reply {
        Reply::Refused(reason) => TransferError::Refused { peer, reason },
        Reply::NoRoom(reason) => TransferError::NoRoom { peer, reason },
        Reply::Gone { order } => TransferError::Gone { peer, order },
        other => TransferError::Protocol {
            peer,
            why: format!("unexpected reply {other:?}"),
        },
    }
}

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
            announce(network, id).await;
            tracing::info!(%peer, id = %hex::encode(id), bytes = len, "stored object");
            write_frame(&mut s, &Reply::Stored).await?;
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
