//! Receipts: what a sender sees of the voicemail they left (`ListSent`).
//!
//! A receipt is written when a deposit is stored and changes with each
//! recipient's fate: an ack makes that recipient `Delivered`, a recall makes
//! every one still pending `Recalled`, and the purge of an expired voicemail
//! makes them `ExpiredUnread`. It outlives the voicemail row on purpose, so
//! that a sender can still learn what became of a message, and a recall of
//! one that is gone can say why; the purge drops it [`RECEIPT_KEEP_SECS`]
//! after the voicemail's expiry.
//!
//! Rows are keyed by (sender, voicemail id): every change knows the sender
//! (the voicemail row or the caller names it), and a sender's rows are one
//! range.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::schema::RECEIPTS;
use super::voicemails::VoicemailId;
use super::{Store, StoreError, corrupt, db_err};

/// How long a receipt outlives its voicemail's expiry: a week.
pub const RECEIPT_KEEP_SECS: u64 = 7 * 86_400;

/// What became of a voicemail for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    /// Not fetched yet.
    Pending,
    /// Fetched (or discarded) and acked.
    Delivered,
    /// The voicemail expired before this recipient acked it.
    ExpiredUnread,
    /// The sender recalled it before this recipient acked it.
    Recalled,
}

/// One recipient's line of a [`Receipt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientReceipt {
    /// The recipient.
    pub username: String,
    /// Their state.
    pub state: DeliveryState,
    /// When they reached it, Unix seconds (the deposit time while pending).
    pub at: u64,
}

/// A sender's record of one voicemail (the `receipts` row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The voicemail.
    pub id: VoicemailId,
    /// Deposit time, Unix seconds.
    pub deposited_at: u64,
    /// When it expires (its storage grant's expiry), Unix seconds.
    pub expires_at: u64,
    /// Plaintext size, as the sender stated it.
    pub size: u64,
    /// MIME type, as the sender stated it.
    pub content_type: String,
    /// Every recipient, canonical order.
    pub recipients: Vec<RecipientReceipt>,
}

impl Receipt {
    /// Whether no recipient is pending any more, and why: the state that
    /// ended the voicemail for those who had not acked, or `Delivered` when
    /// every recipient acked. `None` while someone is pending.
    pub fn ended(&self) -> Option<(DeliveryState, u64)> {
        if self
            .recipients
            .iter()
            .any(|r| r.state == DeliveryState::Pending)
        {
            return None;
        }
        let undelivered = self
            .recipients
            .iter()
            .find(|r| r.state != DeliveryState::Delivered);
        Some(match undelivered {
            Some(r) => (r.state, r.at),
            None => (
                DeliveryState::Delivered,
                self.recipients.iter().map(|r| r.at).max().unwrap_or(0),
            ),
        })
    }

    /// Moves every pending recipient to `state` at `at`.
    fn end_pending(&mut self, state: DeliveryState, at: u64) {
        for r in &mut self.recipients {
            if r.state == DeliveryState::Pending {
                r.state = state;
                r.at = at;
            }
        }
    }
}

fn decode(sender: &str, id: &[u8], bytes: &[u8]) -> Result<Receipt, StoreError> {
    postcard::from_bytes(bytes)
        .map_err(|e| corrupt("receipts", format!("{sender}/{}", hex::encode(id)), e))
}

fn encode(r: &Receipt) -> Vec<u8> {
    postcard::to_allocvec(r).expect("encodes")
}

impl Store {
    /// Writes the receipt of a voicemail just stored.
    pub(super) fn receipt_stored(
        &self,
        tx: &WriteTransaction,
        sender: &str,
        receipt: &Receipt,
    ) -> Result<(), StoreError> {
        tx.open_table(RECEIPTS)
            .map_err(db_err)?
            .insert((sender, receipt.id.as_slice()), encode(receipt).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// Changes the receipt of `sender`'s voicemail `id` with `f`, if there
    /// is one (a voicemail deposited before receipts existed has none).
    fn receipt_update(
        &self,
        tx: &WriteTransaction,
        sender: &str,
        id: &VoicemailId,
        f: impl FnOnce(&mut Receipt),
    ) -> Result<(), StoreError> {
        let mut t = tx.open_table(RECEIPTS).map_err(db_err)?;
        let Some(mut receipt) = t
            .get((sender, id.as_slice()))
            .map_err(db_err)?
            .map(|v| decode(sender, id, v.value()))
            .transpose()?
        else {
            return Ok(());
        };
        f(&mut receipt);
        t.insert((sender, id.as_slice()), encode(&receipt).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// `recipient` acked voicemail `id` at `at`.
    pub(super) fn receipt_delivered(
        &self,
        tx: &WriteTransaction,
        sender: &str,
        id: &VoicemailId,
        recipient: &str,
        at: u64,
    ) -> Result<(), StoreError> {
        self.receipt_update(tx, sender, id, |r| {
            if let Some(line) = r
                .recipients
                .iter_mut()
                .find(|l| l.username == recipient && l.state == DeliveryState::Pending)
            {
                line.state = DeliveryState::Delivered;
                line.at = at;
            }
        })
    }

    /// Voicemail `id` ended at `at` (recalled, or expired) for everyone
    /// still pending.
    pub(super) fn receipt_ended(
        &self,
        tx: &WriteTransaction,
        sender: &str,
        id: &VoicemailId,
        state: DeliveryState,
        at: u64,
    ) -> Result<(), StoreError> {
        self.receipt_update(tx, sender, id, |r| r.end_pending(state, at))
    }

    /// The receipt of `sender`'s voicemail `id`, inside `tx`.
    pub(super) fn receipt_in(
        &self,
        tx: &WriteTransaction,
        sender: &str,
        id: &VoicemailId,
    ) -> Result<Option<Receipt>, StoreError> {
        let t = tx.open_table(RECEIPTS).map_err(db_err)?;
        t.get((sender, id.as_slice()))
            .map_err(db_err)?
            .map(|v| decode(sender, id, v.value()))
            .transpose()
    }

    /// The receipts of `sender`'s voicemail, newest deposit first, at most
    /// `limit`.
    pub fn sent(&self, sender: &str, limit: usize) -> Result<Vec<Receipt>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(RECEIPTS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in t.range((sender, [].as_slice())..).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let (who, id) = k.value();
                if who != sender {
                    break;
                }
                out.push(decode(sender, id, v.value())?);
            }
            out.sort_by_key(|r| std::cmp::Reverse((r.deposited_at, r.id)));
            out.truncate(limit);
            Ok(out)
        })
    }

    /// Drops the receipts whose voicemail expired [`RECEIPT_KEEP_SECS`]
    /// before `now`. Returns how many went.
    pub(super) fn purge_receipts(
        &self,
        tx: &WriteTransaction,
        now: u64,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        tx.open_table(RECEIPTS)
            .map_err(db_err)?
            .retain(|(sender, id), v| match decode(sender, id, v) {
                Ok(r) if r.expires_at.saturating_add(RECEIPT_KEEP_SECS) <= now => {
                    n += 1;
                    false
                }
                Ok(_) => true,
                // Reported and kept, so that it cannot stop the rest.
                Err(e) => {
                    tracing::error!(error = %e, "purge skipped a corrupt row");
                    true
                }
            })
            .map_err(db_err)?;
        Ok(n)
    }
}
