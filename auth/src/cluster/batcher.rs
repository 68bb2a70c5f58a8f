//! Proposal batching: writes that arrive together share one log entry.
//!
//! openraft 0.9 appends each client write on its own and waits for that
//! append to be flushed before it takes the next, so one write per fsync is
//! all a leader could commit. The batcher proposes one entry at a time: the
//! commands that queued while the previous entry was being committed go
//! together as one [`Command::Batch`], and each caller gets its own reply.
//! A lone command is proposed as itself. (Two or four entries in flight
//! were measured too, and committed fewer writes per second: smaller
//! batches, each paying its own round.)

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::{Command, Member, Raft, Reply};
use crate::metrics::AuthMetrics;

/// Most commands in one entry.
const MAX_BATCH: usize = 256;
/// Most encoded command bytes in one entry. With 16 entries per
/// AppendEntries (`super::raft_config`) a message stays near 1 MiB, under
/// the internal service's limit and sent within a heartbeat interval.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Why a write was not applied.
#[derive(Debug, Clone)]
pub enum WriteError {
    /// This server does not lead; the leader, if known.
    NotLeader(Option<Member>),
    /// Raft could not take the write (shutting down, no quorum, ...).
    Unavailable(String),
    /// No majority confirmed it in time; it may or may not take effect.
    Timeout(Duration),
}

/// A queued command and where its reply goes.
struct Queued {
    cmd: Command,
    size: usize,
    reply: oneshot::Sender<Result<Reply, WriteError>>,
}

/// The handle on the batching task; the task ends when this is dropped.
#[derive(Debug, Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
    timeout: Duration,
}

impl Batcher {
    /// Starts the task that proposes to `raft`. A caller waits at most
    /// `timeout` in all, queueing included. Each entry proposed is counted
    /// in `metrics`.
    pub fn start(raft: Raft, timeout: Duration, metrics: Arc<AuthMetrics>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, timeout, metrics));
        Self { queue, timeout }
    }

    /// Proposes `cmd` (`size` bytes encoded) and waits until it is
    /// committed and applied here.
    pub async fn write(&self, cmd: Command, size: usize) -> Result<Reply, WriteError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || WriteError::Unavailable("the server is shutting down".into());
        self.queue
            .send(Queued { cmd, size, reply })
            .map_err(|_| stopped())?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(WriteError::Timeout(self.timeout)),
            Ok(reply) => reply.unwrap_or_else(|_| Err(stopped())),
        }
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    timeout: Duration,
    metrics: Arc<AuthMetrics>,
) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(q) => {
                    bytes += q.size;
                    batch.push(q);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up waiting was told the write may or may not
        // happen; while it is still queued, it does not.
        batch.retain(|q| !q.reply.is_closed());
        if !batch.is_empty() {
            metrics.proposed(batch.len());
            let since = std::time::Instant::now();
            propose(&raft, batch, timeout).await;
            metrics.committed(since);
        }
    }
}

async fn propose(raft: &Raft, mut batch: Vec<Queued>, timeout: Duration) {
    if batch.len() == 1 {
        let q = batch.remove(0);
        let _ = q.reply.send(write(raft, q.cmd, timeout).await);
        return;
    }
    let (cmds, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.cmd, q.reply)).unzip();
    let n = cmds.len();
    match write(raft, Command::Batch(cmds), timeout).await {
        Ok(Reply::Batch(results)) if results.len() == n => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        // A whole-batch failure (a corrupt store) or an error: each caller
        // gets it.
        Ok(other) => {
            for reply in replies {
                let _ = reply.send(Ok(other.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

async fn write(raft: &Raft, cmd: Command, timeout: Duration) -> Result<Reply, WriteError> {
    match tokio::time::timeout(timeout, raft.client_write(cmd)).await {
        Err(_) => Err(WriteError::Timeout(timeout)),
        Ok(Ok(r)) => Ok(r.data),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(WriteError::NotLeader(f.leader_node))
        }
        Ok(Err(e)) => Err(WriteError::Unavailable(e.to_string())),
    }
}
