//! The sender's recall: a voicemail not every recipient fetched leaves
//! every inbox, its session key is erased, its receipt says who had it
//! recalled, and its storage grant is marked recalled with a signed delete
//! order; and, when there is nothing to recall, why, as the receipt tells.

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use vmail_proto::grant::{DeleteOrder, DeleteReason};

use super::receipts::DeliveryState;
use super::schema::{GRANTS, VOICEMAILS, WAITING};
use super::storage_grants::order_bytes;
use super::voicemails::{VoicemailId, VoicemailRow, add};
use super::{Store, StoreError, corrupt, db_err};

/// The result of [`Store::recall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecallOutcome {
    /// The voicemail is gone for every recipient still pending.
    Recalled {
        /// Its locator, to find the shards.
        locator: Vec<u8>,
        /// The signed order to delete the shards of its storage grant.
        #[serde(with = "order_bytes")]
        delete_order: Option<DeleteOrder>,
    },
    /// The voicemail exists but the caller did not send it; nothing changed.
    NotSender,
    /// There is nothing to recall; nothing changed.
    Gone(RecallGone),
}

/// Why a recall found nothing to recall, as far as the sender's receipt
/// tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecallGone {
    /// Every recipient acked it.
    Delivered,
    /// It was recalled already, at this time.
    Recalled(u64),
    /// It expired, at this time.
    Expired(u64),
    /// No voicemail of the caller's has this id (never existed, another
    /// user's that is gone, or its receipt was dropped).
    Unknown,
}

impl Store {
    /// The sender withdraws voicemail `id` at `now`: unless it expired, it
    /// leaves every inbox it is still in and its session key is erased (as
    /// with the last ack), the recipients still pending become `Recalled`
    /// on the receipt, and its storage grant is marked recalled, with `sign`
    /// signing the delete order. Only `sender` may; for anyone else a
    /// voicemail that exists is [`RecallOutcome::NotSender`], one that does
    /// not is [`RecallGone::Unknown`].
    pub(crate) fn recall(
        &self,
        tx: &WriteTransaction,
        sender: &str,
        id: &VoicemailId,
        now: u64,
        sign: impl FnOnce(u64, DeleteReason, u64) -> DeleteOrder,
    ) -> Result<RecallOutcome, StoreError> {
        let locator;
        {
            let mut vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            let row = match vms.get(id.as_slice()).map_err(db_err)? {
                Some(v) => postcard::from_bytes::<VoicemailRow>(v.value())
                    .map_err(|e| corrupt("voicemails", hex::encode(id), e))?,
                None => return Ok(RecallOutcome::Gone(self.why_gone(tx, sender, id)?)),
            };
            if row.sender != sender {
                return Ok(RecallOutcome::NotSender);
            }
            if row.metadata.expires_at <= now {
                return Ok(RecallOutcome::Gone(RecallGone::Expired(
                    row.metadata.expires_at,
                )));
            }
            let mut grants = tx.open_table(GRANTS).map_err(db_err)?;
            let mut waiting = tx.open_table(WAITING).map_err(db_err)?;
            for r in &row.recipients {
                if grants
                    .remove((r.as_str(), id.as_slice()))
                    .map_err(db_err)?
                    .is_some()
                {
                    add(&mut waiting, r, -1)?;
                }
            }
            vms.remove(id.as_slice()).map_err(db_err)?;
            locator = row.locator;
        }
        self.receipt_ended(tx, sender, id, DeliveryState::Recalled, now)?;
        let delete_order = self.grant_erased(tx, id, DeleteReason::Recalled, sign)?;
        Ok(RecallOutcome::Recalled {
            locator,
            delete_order,
        })
    }

    /// Why `sender`'s voicemail `id` is no longer there, per its receipt.
    fn why_gone(
        &self,
        tx: &WriteTransaction,
        sender: &str,
        id: &VoicemailId,
    ) -> Result<RecallGone, StoreError> {
        let Some(receipt) = self.receipt_in(tx, sender, id)? else {
            return Ok(RecallGone::Unknown);
        };
        Ok(match receipt.ended() {
            Some((DeliveryState::Delivered, _)) => RecallGone::Delivered,
            Some((DeliveryState::Recalled, at)) => RecallGone::Recalled(at),
            Some((DeliveryState::ExpiredUnread, at)) => RecallGone::Expired(at),
            // A receipt still pending without its voicemail: not
            // reachable through the log; say nothing more.
            Some((DeliveryState::Pending, _)) | None => RecallGone::Unknown,
        })
    }
}
