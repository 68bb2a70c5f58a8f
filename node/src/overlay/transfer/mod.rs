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
//! any:    -> any request      <- Busy{retry_after_ms}
//! ```
//!
//! A holder over one of its bounds ([`admission`]) answers `Busy` instead
//! of the first reply, and the client waits the time it names (growing on
//! each try, [`BUSY_TRIES`] tries in all) before asking again.
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
//! hands holders the final layout once every upload is done (a leave's
//! Store names only the holder's own shard, so co-holders cannot name a
//! sibling still in flight); like
//! `Delete` (a failed leave rolling back) it needs the leave's delete secret.
//! Version 2 added the shard layout to the stored meta, `Has` (the repair
//! check), `Relayout`, `NoRoom` and the early `Stored`; version 3 the grant
//! and the deposit proof, `Erase`, `Prove`, `Gone` and `Proven`.
//!
//! A holder acks a store only after it checked the grant, size, quota and
//! SHA-256, wrote the object durably and announced it in the DHT.

//!
//! - this module: the messages, the errors and the framing;
//! - `admission`: who gets an exchange and for how long, pure;
//! - `client`: [`BlobClient`], one exchange per call;
//! - `serve`: the holder's side, [`serve`], and what it does per request.

pub mod admission;
mod client;
mod serve;

use std::time::Duration;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{AsyncRead, AsyncWrite};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::core::locator::ObjectId;
use crate::overlay::objects::{ObjectMeta, ShardOf};

pub use client::BlobClient;
pub use serve::{announce, erase, serve};

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
/// Exchanges one holder serves at a time: its heavy and light pools
/// ([`admission::HEAVY_SLOTS`] + [`admission::LIGHT_SLOTS`]).
pub const MAX_CONCURRENT_EXCHANGES: usize = admission::HEAVY_SLOTS + admission::LIGHT_SLOTS;
/// Times a client asks a busy holder before it gives up with
/// [`TransferError::Busy`].
pub const BUSY_TRIES: u32 = 7;
/// Longest a client waits between two tries at a busy holder, whatever the
/// holder asked for.
pub const MAX_BUSY_WAIT: Duration = Duration::from_secs(3);
/// Characters of a peer's reason kept when it is shown to a user; control
/// characters are escaped ([`peer_text`]).
pub const MAX_REASON_CHARS: usize = 200;

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
    /// Too busy now: ask again after this many milliseconds.
    Busy {
        /// How long to wait.
        retry_after_ms: u32,
    },
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
    /// The holder stayed busy through every try.
    #[error("{peer} stayed busy through {tries} tries ({why}); try again later")]
    Busy {
        /// The peer.
        peer: PeerId,
        /// Tries made.
        tries: u32,
        /// Its last reason.
        why: String,
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

/// Text a remote peer sent, fit to show: control characters escaped (so
/// no escape sequence reaches a terminal) and at most [`MAX_REASON_CHARS`]
/// characters, with `…` when cut.
pub fn peer_text(raw: &str) -> String {
    let mut out = String::new();
    for (i, c) in raw.chars().enumerate() {
        if i == MAX_REASON_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A control frame's bytes: the u32 BE length, then postcard of `msg`.
/// Public so the hostile tests and the fuzz targets can speak the protocol.
pub fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = postcard::to_stdvec(msg).expect("protocol messages encode");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

pub(super) async fn timed<T>(
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "peer stopped answering"))?
}

/// Reads a control frame's body (the bytes after its length), as
/// `read_frame` does once it has them. Public for the fuzz targets in
/// `tests/fuzz`.
#[doc(hidden)]
pub fn decode_frame_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> std::io::Result<T> {
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "control frame too large",
        ));
    }
    postcard::from_bytes(body).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed control frame")
    })
}

pub(super) async fn write_frame<S: AsyncWrite + Unpin, T: Serialize>(
    s: &mut S,
    msg: &T,
) -> std::io::Result<()> {
    let frame = frame(msg);
    timed(async {
        s.write_all(&frame).await?;
        s.flush().await
    })
    .await
}

/// Reads one control frame. Public so the hostile tests can speak the
/// protocol from a raw stream.
pub async fn read_frame<S: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
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
    decode_frame_body(&buf)
}

pub(super) async fn write_body<S: AsyncWrite + Unpin>(
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

pub(super) async fn read_body<S: AsyncRead + Unpin>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_escapes_control_characters_and_cuts_long_reasons() {
        assert_eq!(peer_text("quota full"), "quota full");
        assert_eq!(
            peer_text("\u{1b}[2J\u{1b}]0;pwned\u{7}x\n"),
            "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}x\\n"
        );
        let long = "a".repeat(8 * 1024);
        let shown = peer_text(&long);
        assert_eq!(shown.chars().count(), MAX_REASON_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert!(!peer_text("\u{9b}31m").chars().any(char::is_control));
    }
}
