//! Storage grants: what the group lets a sender store on untrusted holders
//! (`vmail_proto::grant`). Each grant is a row by serial holding its owner,
//! its body, the voicemail deposited under it and, once its shards are dead,
//! why. Not to be confused with `grants`, a recipient's access to a
//! voicemail.
//!
//! A grant lives through three stages, each a change made while applying a
//! Raft entry: issued ([`Store::issue_grant`], counted against the owner's
//! quota in `open_grants` until its upload window closes), deposited (one
//! deposit only; the voicemail expires with the grant), and deleted (the
//! last ack signs a delete order, [`Store::ack`]). The purge drops a grant at
//! its expiry, and an undeposited one once its upload window and
//! [`DEPOSIT_GRACE_SECS`] have passed.
//!
//! The store never holds the cluster key: the state machine passes in the
//! signing step, as it does for certificates.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use vmail_proto::grant::{DeleteOrder, DeleteReason, GrantBody, GrantedShard, StorageGrant};
use vmail_proto::names::Recipients;

use super::schema::{
    META, NEXT_GRANT_SERIAL, OPEN_GRANTS, STORAGE_GRANTS, USERS, VOICEMAIL_GRANTS,
};
use super::voicemails::VoicemailId;
use super::{Store, StoreError, corrupt, db_err, u64_le};

/// How long after a grant's upload window closes a deposit under it is
/// still accepted: the deposit comes right after the upload, and the upload
/// may end at the last second of the window.
pub const DEPOSIT_GRACE_SECS: u64 = 5 * 60;

/// What a grant covers, as the leader resolved it; the state machine adds
/// the serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantTerms {
    /// The sender's message id.
    pub message_id: [u8; 16],
    /// Shards needed to rebuild.
    pub data_shards: u8,
    /// Every shard, by index.
    pub shards: Vec<GrantedShard>,
    /// Peer ids the shards may be placed on.
    pub holders: Vec<Vec<u8>>,
    /// Unix seconds until which holders accept the upload.
    pub upload_until: u64,
    /// Unix seconds after which holders drop the shards.
    pub expires_at: u64,
}

impl GrantTerms {
    /// These terms expiring at `at` at the latest; the upload window never
    /// outlasts the expiry.
    pub fn expiring_by(mut self, at: u64) -> Self {
        self.expires_at = self.expires_at.min(at);
        self.upload_until = self.upload_until.min(self.expires_at);
        self
    }

    /// The grant body with `serial`.
    pub fn with_serial(self, serial: u64) -> GrantBody {
        GrantBody {
            serial,
            message_id: self.message_id,
            data_shards: self.data_shards,
            shards: self.shards,
            holders: self.holders,
            upload_until: self.upload_until,
            expires_at: self.expires_at,
        }
    }
}

/// A storage grant as the group keeps it (the `storage_grants` row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageGrantRecord {
    /// The user it was issued to; only they may deposit under it.
    pub owner: String,
    /// What it covers (the signed part).
    pub body: GrantBody,
    /// The voicemail deposited under it, once one was.
    pub deposited: Option<VoicemailId>,
    /// Why its shards were ordered deleted, once they were.
    pub deleted: Option<DeleteReason>,
}

/// The result of [`Store::issue_grant`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantOutcome {
    /// The grant was stored and signed.
    Issued(#[serde(with = "grant_bytes")] StorageGrant),
    /// A recipient is not registered; nothing changed.
    UnknownRecipient(String),
    /// The owner already holds `limit` grants not yet deposited whose
    /// upload window is open; nothing changed.
    TooMany {
        /// The quota in force.
        limit: u64,
    },
}

/// Why a deposit may not use a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantRefusal {
    /// No grant has this serial (never issued, or purged).
    Unknown(u64),
    /// The grant belongs to another user.
    NotOwner(u64),
    /// The grant already serves another voicemail.
    Used {
        /// The grant.
        serial: u64,
        /// The voicemail deposited under it.
        voicemail: VoicemailId,
    },
    /// The grant's upload window (and grace) has passed.
    Lapsed {
        /// The grant.
        serial: u64,
        /// When its upload window closed.
        upload_until: u64,
    },
}

/// Serde for a [`StorageGrant`] in a Raft reply: its one encoding.
mod grant_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};
    use vmail_proto::grant::StorageGrant;

    pub(super) fn serialize<S: Serializer>(g: &StorageGrant, s: S) -> Result<S::Ok, S::Error> {
        g.to_bytes().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StorageGrant, D::Error> {
        StorageGrant::from_bytes(&Vec::<u8>::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// Serde for an optional [`DeleteOrder`] in a Raft reply: its one encoding.
pub(super) mod order_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};
    use vmail_proto::grant::DeleteOrder;

    pub(in crate::store) fn serialize<S: Serializer>(
        o: &Option<DeleteOrder>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        o.as_ref().map(DeleteOrder::to_bytes).serialize(s)
    }

    pub(in crate::store) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DeleteOrder>, D::Error> {
        Option::<Vec<u8>>::deserialize(d)?
            .map(|b| DeleteOrder::from_bytes(&b).map_err(D::Error::custom))
            .transpose()
    }
}

fn decode(serial: u64, bytes: &[u8]) -> Result<StorageGrantRecord, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt("storage_grants", serial, e))
}

fn encode(record: &StorageGrantRecord) -> Vec<u8> {
    postcard::to_allocvec(record).expect("encodes")
}

/// Whether an undeposited grant can no longer be deposited at `now`.
fn lapsed(body: &GrantBody, now: u64) -> bool {
    now > body.upload_until.saturating_add(DEPOSIT_GRACE_SECS) || now >= body.expires_at
}

impl Store {
    /// Reserves the next storage-grant serial.
    fn next_grant_serial(tx: &WriteTransaction) -> Result<u64, StoreError> {
        let mut meta = tx.open_table(META).map_err(db_err)?;
        let serial = meta
            .get(NEXT_GRANT_SERIAL)
            .map_err(db_err)?
            .and_then(|v| u64_le(v.value()))
            .ok_or_else(|| corrupt("meta", NEXT_GRANT_SERIAL, "missing"))?;
        meta.insert(NEXT_GRANT_SERIAL, (serial + 1).to_le_bytes().as_slice())
            .map_err(db_err)?;
        Ok(serial)
    }

    /// Issues a storage grant to `owner` for a voicemail to `recipients`,
    /// unless a recipient is unknown or `owner` already holds `max_open`
    /// grants whose upload window is open at `now` and that no deposit
    /// used. The grant expires no later than `now` plus the shortest
    /// retention a recipient chose: the leader already applied it when it
    /// resolved the terms, and applying it again here, in log order, covers
    /// a `SetRetention` ordered between the two. `sign` signs the body with
    /// the cluster key.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn issue_grant(
        &self,
        tx: &WriteTransaction,
        owner: &str,
        recipients: &Recipients,
        terms: GrantTerms,
        now: u64,
        max_open: u64,
        sign: impl FnOnce(GrantBody) -> StorageGrant,
    ) -> Result<GrantOutcome, StoreError> {
        {
            let users = tx.open_table(USERS).map_err(db_err)?;
            for r in recipients.iter() {
                if users.get(r.as_str()).map_err(db_err)?.is_none() {
                    return Ok(GrantOutcome::UnknownRecipient(r.to_string()));
                }
            }
            let open = tx.open_table(OPEN_GRANTS).map_err(db_err)?;
            let mut held = 0u64;
            for entry in open
                .range((owner, 0u64)..=(owner, u64::MAX))
                .map_err(db_err)?
            {
                let (_, upload_until) = entry.map_err(db_err)?;
                if upload_until.value() > now {
                    held += 1;
                }
            }
            if held >= max_open {
                return Ok(GrantOutcome::TooMany { limit: max_open });
            }
        }
        let terms = match self.shortest_retention_in(tx, recipients.iter().map(|r| r.as_str()))? {
            Some(secs) => terms.expiring_by(now.saturating_add(secs)),
            None => terms,
        };
        let serial = Self::next_grant_serial(tx)?;
        let body = terms.with_serial(serial);
        let record = StorageGrantRecord {
            owner: owner.to_owned(),
            body: body.clone(),
            deposited: None,
            deleted: None,
        };
        tx.open_table(STORAGE_GRANTS)
            .map_err(db_err)?
            .insert(serial, encode(&record).as_slice())
            .map_err(db_err)?;
        tx.open_table(OPEN_GRANTS)
            .map_err(db_err)?
            .insert((owner, serial), body.upload_until)
            .map_err(db_err)?;
        Ok(GrantOutcome::Issued(sign(body)))
    }

    /// A storage grant by serial, as stored.
    pub fn storage_grant(&self, serial: u64) -> Result<Option<StorageGrantRecord>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(STORAGE_GRANTS).map_err(db_err)?;
            t.get(serial)
                .map_err(db_err)?
                .map(|v| decode(serial, v.value()))
                .transpose()
        })
    }

    /// The serial of the grant voicemail `id` was deposited under.
    pub fn voicemail_grant(&self, id: &VoicemailId) -> Result<Option<u64>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(VOICEMAIL_GRANTS).map_err(db_err)?;
            Ok(t.get(id.as_slice()).map_err(db_err)?.map(|v| v.value()))
        })
    }

    /// The grant `serial` if `sender` may deposit under it at `at`.
    pub(super) fn grant_for_deposit(
        &self,
        tx: &WriteTransaction,
        serial: u64,
        sender: &str,
        at: u64,
    ) -> Result<Result<StorageGrantRecord, GrantRefusal>, StoreError> {
        let t = tx.open_table(STORAGE_GRANTS).map_err(db_err)?;
        let Some(v) = t.get(serial).map_err(db_err)? else {
            return Ok(Err(GrantRefusal::Unknown(serial)));
        };
        let record = decode(serial, v.value())?;
        Ok(if record.owner != sender {
            Err(GrantRefusal::NotOwner(serial))
        } else if let Some(voicemail) = record.deposited {
            Err(GrantRefusal::Used { serial, voicemail })
        } else if lapsed(&record.body, at) {
            Err(GrantRefusal::Lapsed {
                serial,
                upload_until: record.body.upload_until,
            })
        } else {
            Ok(record)
        })
    }

    /// Records that voicemail `id` was deposited under grant `record`.
    pub(super) fn grant_deposited(
        &self,
        tx: &WriteTransaction,
        mut record: StorageGrantRecord,
        id: &VoicemailId,
    ) -> Result<(), StoreError> {
        let serial = record.body.serial;
        tx.open_table(OPEN_GRANTS)
            .map_err(db_err)?
            .remove((record.owner.as_str(), serial))
            .map_err(db_err)?;
        tx.open_table(VOICEMAIL_GRANTS)
            .map_err(db_err)?
            .insert(id.as_slice(), serial)
            .map_err(db_err)?;
        record.deposited = Some(*id);
        tx.open_table(STORAGE_GRANTS)
            .map_err(db_err)?
            .insert(serial, encode(&record).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// Voicemail `id` is gone for `reason`: marks its grant's shards dead and
    /// returns the signed delete order, or `None` if it had no grant. The
    /// grant row stays until its expiry, so the group still knows the
    /// serial was used.
    pub(super) fn grant_erased(
        &self,
        tx: &WriteTransaction,
        id: &VoicemailId,
        reason: DeleteReason,
        sign: impl FnOnce(u64, DeleteReason, u64) -> DeleteOrder,
    ) -> Result<Option<DeleteOrder>, StoreError> {
        let Some(serial) = tx
            .open_table(VOICEMAIL_GRANTS)
            .map_err(db_err)?
            .remove(id.as_slice())
            .map_err(db_err)?
            .map(|v| v.value())
        else {
            return Ok(None);
        };
        let mut t = tx.open_table(STORAGE_GRANTS).map_err(db_err)?;
        let mut record = match t.get(serial).map_err(db_err)? {
            Some(v) => decode(serial, v.value())?,
            None => {
                return Err(corrupt(
                    "voicemail_grants",
                    hex::encode(id),
                    format!("names storage grant {serial}, which does not exist"),
                ));
            }
        };
        record.deleted = Some(reason);
        t.insert(serial, encode(&record).as_slice())
            .map_err(db_err)?;
        Ok(Some(sign(serial, reason, record.body.expires_at)))
    }

    /// Drops the grants that expired at `now`, and those no deposit used
    /// whose upload window and grace have passed. Returns how many went.
    pub(super) fn purge_grants(
        &self,
        tx: &WriteTransaction,
        now: u64,
    ) -> Result<usize, StoreError> {
        let mut gone: Vec<(u64, String)> = Vec::new();
        let mut t = tx.open_table(STORAGE_GRANTS).map_err(db_err)?;
        for entry in t.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let serial = k.value();
            // A corrupt row is reported and kept, so that it cannot stop
            // every other expired grant from being erased.
            let record = match decode(serial, v.value()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "purge skipped a corrupt row");
                    continue;
                }
            };
            let unused = record.deposited.is_none() && lapsed(&record.body, now);
            if record.body.expires_at <= now || unused {
                gone.push((serial, record.owner));
            }
        }
        let mut open = tx.open_table(OPEN_GRANTS).map_err(db_err)?;
        for (serial, owner) in &gone {
            t.remove(*serial).map_err(db_err)?;
            open.remove((owner.as_str(), *serial)).map_err(db_err)?;
        }
        Ok(gone.len())
    }
}
