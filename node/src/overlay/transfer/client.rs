//! The blob protocol's client: one exchange with one holder per call, and
//! the errors a user reads for each way it can fail. A holder that answers
//! `Busy` is asked again after the wait it names, doubled on every try
//! (at most [`MAX_BUSY_WAIT`], [`BUSY_TRIES`] tries), with jitter so
//! senders that were turned away together do not return together. Every
//! string a holder sends is shown through [`peer_text`].

use libp2p::{PeerId, Stream};

use std::time::Duration;

use rand::Rng;

use super::{
    BLOB_PROTOCOL, BUSY_TRIES, IO_TIMEOUT, MAX_BUSY_WAIT, Reply, Request, TransferError, peer_text,
    read_body, read_frame, write_body, write_frame,
};
use crate::core::locator::ObjectId;
use crate::overlay::objects::{ObjectMeta, ShardOf};
use crate::overlay::swarm::Network;

/// The client side: one exchange per call.
#[derive(Clone)]
pub struct BlobClient {
    control: libp2p_stream::Control,
    network: Network,
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
            network: network.clone(),
        }
    }

    async fn open(&self, peer: PeerId) -> Result<Stream, TransferError> {
        self.network.connect(peer).await;
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
    /// reply; the stream stays open for a body. A `Busy` holder is asked
    /// again after a wait, [`BUSY_TRIES`] times in all; so is one whose
    /// stream broke before any reply, other than by a timeout, since the
    /// holder's stream queue (libp2p-stream keeps one waiting stream per
    /// connection) drops a stream that arrives in a burst before it is
    /// read. Every request is safe to repeat: a store of a held object,
    /// a proof or an order seen before all succeed again.
    async fn ask(&self, peer: PeerId, request: &Request) -> Result<(Stream, Reply), TransferError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut s = self.open(peer).await?;
            let first = async {
                write_frame(&mut s, request).await?;
                read_frame(&mut s).await
            }
            .await;
            let retry_after_ms = match first {
                Ok(Reply::Busy { retry_after_ms }) if tries < BUSY_TRIES => retry_after_ms,
                Ok(Reply::Busy { retry_after_ms }) => {
                    return Err(TransferError::Busy {
                        peer,
                        tries,
                        why: format!("it last asked for {retry_after_ms} ms"),
                    });
                }
                Ok(reply) => return Ok((s, reply)),
                Err(e) if tries < BUSY_TRIES && dropped_at_the_door(&e) => {
                    tracing::debug!(%peer, "blob stream dropped before a reply; trying again: {e}");
                    DOOR_RETRY_MS
                }
                Err(e) => return Err(broken(peer)(e)),
            };
            drop(s);
            tokio::time::sleep(busy_wait(retry_after_ms, tries)).await;
        }
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
        let _in_use = self.network.in_use(peer);
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
        let _in_use = self.network.in_use(peer);
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
        let _in_use = self.network.in_use(peer);
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
        let _in_use = self.network.in_use(peer);
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
        let _in_use = self.network.in_use(peer);
        match self.ask(peer, &Request::Erase { order }).await? {
            (_, Reply::Erased { objects }) => Ok(objects),
            (_, other) => Err(refusal(peer, other)),
        }
    }

    /// Hands `peer` the deposit proof for a grant it holds shards of.
    pub async fn prove(&self, peer: PeerId, proof: Vec<u8>) -> Result<u32, TransferError> {
        let _in_use = self.network.in_use(peer);
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
        let _in_use = self.network.in_use(peer);
        match self.ask(peer, &Request::Delete { id, secret }).await? {
            (_, Reply::Deleted) => Ok(()),
            (_, other) => Err(refusal(peer, other)),
        }
    }
}

/// The wait, before doubling, after a stream dropped before any reply.
const DOOR_RETRY_MS: u32 = 50;

/// Whether an exchange that broke before its first reply was dropped
/// unread (reset or closed), rather than timed out or answered garbage.
fn dropped_at_the_door(e: &std::io::Error) -> bool {
    !matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::InvalidData
    )
}

/// How long to wait before try `tries + 1` at a holder that asked for
/// `retry_after_ms`: that, doubled per try so far, at most
/// [`MAX_BUSY_WAIT`], times a random 1 to 1.5.
fn busy_wait(retry_after_ms: u32, tries: u32) -> Duration {
    let asked = Duration::from_millis(u64::from(retry_after_ms.max(20)));
    let base = asked
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(MAX_BUSY_WAIT);
    base.mul_f64(rand::thread_rng().gen_range(1.0..1.5))
}

/// The error for an exchange with `peer` that broke mid-way.
fn broken(peer: PeerId) -> impl Fn(std::io::Error) -> TransferError {
    move |e| TransferError::Broken {
        peer,
        why: e.to_string(),
    }
}

/// libp2p's dial errors nest every address tried (some learnt from other
/// peers); users need the gist, escaped and cut like any peer's text.
fn brief(error: &str) -> String {
    peer_text(&gist(error))
}

fn gist(error: &str) -> String {
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
        Reply::Refused(reason) => TransferError::Refused {
            peer,
            reason: peer_text(&reason),
        },
        Reply::NoRoom(reason) => TransferError::NoRoom {
            peer,
            reason: peer_text(&reason),
        },
        Reply::Gone { order } => TransferError::Gone { peer, order },
        other => TransferError::Protocol {
            peer,
            why: peer_text(&format!("unexpected reply {other:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_at_a_busy_holder_doubles_within_its_cap_and_jitter() {
        for tries in 1..=BUSY_TRIES {
            let base = Duration::from_millis(200 << (tries - 1)).min(MAX_BUSY_WAIT);
            let wait = busy_wait(200, tries);
            assert!(
                wait >= base && wait < base.mul_f64(1.5),
                "{tries}: {wait:?}"
            );
        }
        // A holder that asks for nothing still gets a pause.
        assert!(busy_wait(0, 1) >= Duration::from_millis(20));
    }

    #[test]
    fn only_streams_dropped_unread_are_asked_again() {
        use std::io::{Error, ErrorKind};
        assert!(dropped_at_the_door(&Error::from(
            ErrorKind::ConnectionReset
        )));
        assert!(dropped_at_the_door(&Error::from(ErrorKind::UnexpectedEof)));
        assert!(!dropped_at_the_door(&Error::from(ErrorKind::TimedOut)));
        assert!(!dropped_at_the_door(&Error::from(ErrorKind::InvalidData)));
    }
}
