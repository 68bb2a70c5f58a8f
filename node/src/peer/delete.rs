//! Acking a fetched (or declined) voicemail, and with the last ack, or the
//! sender's recall, deleting its shards: the group's signed delete order
//! goes to every holder this peer can find for the locator's shards (paper §5's open question, docs/PROTOCOL.md
//! "Delete orders"). A holder it misses learns of the deletion from its
//! siblings' answers during repair, or drops the shard at the grant's
//! expiry.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::kad::RecordKey;
use vmail_proto::grant::DeleteOrder;

use super::{Peer, SessionError};
use crate::core::locator::{Locator, ObjectId};
use crate::overlay::transfer;

/// How long one holder may take to answer a delete order.
pub const ERASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Voicemails whose shard identifiers a peer remembers from its fetches,
/// for the ack that may delete them.
pub(super) const REMEMBERED_FETCHES: usize = 256;

/// What an ack did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckReport {
    /// Whether this was the last recipient: the session key is erased.
    pub key_erased: bool,
    /// Shards the holders removed on the delete order.
    pub shards_deleted: u32,
    /// Holders the delete order did not reach.
    pub holders_missed: u32,
}

impl Peer {
    /// Remembers the shard identifiers of a voicemail this peer fetched.
    pub(super) fn remember_fetch(&self, voicemail_id: [u8; 16], ids: Vec<ObjectId>) {
        let mut fetched = self.fetched.lock().expect("fetched lock");
        if fetched.len() >= REMEMBERED_FETCHES {
            fetched.clear();
        }
        fetched.insert(voicemail_id, ids);
        drop(fetched);
        self.inbox_changed();
    }

    /// Tells the auth servers the voicemail is safely fetched; if this was
    /// its last recipient, hands the group's delete order to its holders.
    pub async fn ack(&self, voicemail_id: [u8; 16]) -> Result<AckReport, SessionError> {
        let session = self.session()?;
        let mut auth = self.auth(&session).await?;
        let remembered = self
            .fetched
            .lock()
            .expect("fetched lock")
            .remove(&voicemail_id);
        let ids = match remembered {
            Some(ids) => ids,
            None => auth
                .list_pending()
                .await?
                .into_iter()
                .find(|p| p.id == voicemail_id)
                .and_then(|p| Locator::decode(&p.locator).ok())
                .map(|l| l.layout.shards.iter().map(|s| s.id).collect())
                .unwrap_or_default(),
        };
        let acked = auth.ack(&voicemail_id).await?;
        self.inbox_changed();
        let mut report = AckReport {
            key_erased: acked.key_erased,
            ..AckReport::default()
        };
        if let Some(order) = acked.delete_order {
            (report.shards_deleted, report.holders_missed) =
                self.erase_everywhere(&order, &ids).await;
        }
        Ok(report)
    }

    /// Withdraws a voicemail the logged-in user left that not every
    /// recipient fetched, and hands the group's delete order to its holders.
    pub async fn recall(&self, voicemail_id: [u8; 16]) -> Result<AckReport, SessionError> {
        let session = self.session()?;
        let recalled = self.auth(&session).await?.recall(&voicemail_id).await?;
        self.inbox_changed();
        let ids: Vec<ObjectId> = Locator::decode(&recalled.locator)
            .map(|l| l.layout.shards.iter().map(|s| s.id).collect())
            .unwrap_or_default();
        let (shards_deleted, holders_missed) = match &recalled.delete_order {
            Some(order) => self.erase_everywhere(order, &ids).await,
            None => (0, 0),
        };
        Ok(AckReport {
            key_erased: true,
            shards_deleted,
            holders_missed,
        })
    }

    /// Hands `order` to every holder of the shards `ids` this peer can
    /// find (provider records, then the peers closest to each identifier),
    /// and to its own store. Returns (shards removed, holders missed).
    pub async fn erase_everywhere(&self, order: &DeleteOrder, ids: &[ObjectId]) -> (u32, u32) {
        let bytes = order.to_bytes();
        let me = self.peer_id();
        let mut deleted = 0u32;
        if let Some(store) = &self.store
            && let Ok(n) = transfer::erase(&self.network, store, bytes.clone()).await
        {
            deleted += u32::try_from(n).unwrap_or(u32::MAX);
        }
        let lookups = ids.iter().map(|id| async move {
            let mut found: Vec<PeerId> = self
                .network
                .providers(RecordKey::new(id))
                .await
                .map(|p| p.into_iter().collect())
                .unwrap_or_default();
            found.extend(
                self.network
                    .closest_peers(id.to_vec())
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .take(2),
            );
            found
        });
        let mut holders: HashSet<PeerId> = futures::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect();
        holders.remove(&me);
        // A holder that is down must not hold the ack up: each gets a few
        // seconds, and one that missed the order learns it from a sibling.
        let sends = holders.into_iter().map(|h| {
            let bytes = bytes.clone();
            async move {
                let sent = tokio::time::timeout(ERASE_TIMEOUT, self.blobs.erase(h, bytes)).await;
                (
                    h,
                    sent.unwrap_or_else(|_| {
                        Err(transfer::TransferError::Unreachable {
                            peer: h,
                            why: format!("no answer within {ERASE_TIMEOUT:?}"),
                        })
                    }),
                )
            }
        });
        let mut missed = 0u32;
        for (holder, result) in futures::future::join_all(sends).await {
            match result {
                Ok(n) => deleted += n,
                // A peer asked only because it is close holds nothing of it.
                Err(transfer::TransferError::Refused { .. }) => {}
                Err(e) => {
                    tracing::info!(%holder, "delete order not delivered: {e}");
                    missed += 1;
                }
            }
        }
        tracing::info!(
            serial = order.serial,
            deleted,
            missed,
            "delete order handed to the holders"
        );
        (deleted, missed)
    }
}
