//! Signing batches: grants, delete orders and deposit proofs asked for at
//! the same time share one threshold signing round (docs/THRESHOLD.md §2).
//!
//! As the Raft [`super::batcher`] does for log entries, one task runs one
//! round at a time: the objects that queued while the previous round ran
//! are signed together, as the Merkle root of their bytes
//! ([`Signer::group_sign_many`]), and each caller gets its object's
//! signature with its inclusion proof. A lone object is signed directly,
//! so a quiet group's objects carry no proof.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use vmail_proto::batch::GroupSignature;

use super::signer::{MAX_BATCH, SignError, SignTarget, Signer};
use crate::metrics::AuthMetrics;
use crate::tls::ClusterTls;

/// A queued object and where its signature goes.
struct Queued {
    target: SignTarget,
    reply: oneshot::Sender<Result<GroupSignature, Arc<SignError>>>,
}

/// The handle on the batching task; the task ends when this is dropped.
#[derive(Debug, Clone)]
pub struct SignBatcher {
    queue: mpsc::UnboundedSender<Queued>,
}

impl SignBatcher {
    /// Starts the task that coordinates rounds as member `me` through
    /// `signer`, reaching the others with `tls`. Each round is counted in
    /// `metrics`.
    pub fn start(signer: Arc<Signer>, tls: ClusterTls, me: u64, metrics: Arc<AuthMetrics>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(signer, tls, me, rx, metrics));
        Self { queue }
    }

    /// The group's signature on `target`, which must be batchable
    /// ([`SignTarget::batchable`]), alone or in a batch.
    pub async fn sign(&self, target: SignTarget) -> Result<GroupSignature, Arc<SignError>> {
        debug_assert!(target.batchable());
        let (reply, rx) = oneshot::channel();
        let stopped = || Arc::new(SignError::Stopping);
        self.queue
            .send(Queued { target, reply })
            .map_err(|_| stopped())?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn run(
    signer: Arc<Signer>,
    tls: ClusterTls,
    me: u64,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    metrics: Arc<AuthMetrics>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        // A caller that went away needs no signature.
        batch.retain(|q| !q.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (targets, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|q| (q.target, q.reply)).unzip();
        let since = Instant::now();
        match signer.group_sign_many(&tls, me, targets).await {
            Ok(signatures) => {
                metrics.group_signed(signatures.len(), since);
                for (reply, signature) in replies.into_iter().zip(signatures) {
                    let _ = reply.send(Ok(signature));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
