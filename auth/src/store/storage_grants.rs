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

use super::policy::{Accepted, Approach, FirstContactRules, PolicyMode, Refusal, admit};
use super::schema::{
    GRANT_ROSTERS, META, NEXT_GRANT_SERIAL, OPEN_GRANTS, STORAGE_GRANTS, USERS, VOICEMAIL_GRANTS,
};
use super::senders::{Admission, Allowance, SenderLimits};
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
    /// The auth servers the sender must split the session key among, by
    /// node id in order: the voters whose share keys the grant handed out.
    /// A server that joins between the grant and the deposit holds no share
    /// of it; one that leaves still holds its share.
    pub share_nodes: Vec<u64>,
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
    /// The auth servers a deposit under it splits the key among
    /// ([`GrantTerms::share_nodes`]).
    pub share_nodes: Vec<u64>,
}

/// What the group checks a grant against, beyond its terms: the
/// recipients' policies and the sender's quotas, with the values the leader
/// configured when it proposed the grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantPolicy {
    /// The mode of recipients who chose none.
    pub default_mode: PolicyMode,
    /// The sender hides from the recipients.
    pub anonymous: bool,
    /// The sender's quotas.
    pub limits: SenderLimits,
    /// The first-contact limits.
    pub first_contact: FirstContactRules,
}

/// The result of [`Store::issue_grant`].
// `Issued` is the usual outcome and each lives only until its reply is
// answered, so the grant stays inline rather than boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantOutcome {
    /// The grant was stored and signed for the recipients that take it
    /// (canonical order; empty for a grant issued without policies), and
    /// the others were dropped, each with why.
    Issued(
        #[serde(with = "grant_bytes")] StorageGrant,
        Vec<(String, Accepted)>,
        Vec<(String, Refusal)>,
    ),
    /// No recipient takes the voicemail; nothing changed.
    NoneAccepts(Vec<(String, Refusal)>),
    /// The sender's quota would be passed; nothing changed.
    Quota(Allowance),
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
    /// The deposit names other recipients than those the grant was issued
    /// for.
    Recipients {
        /// The grant.
        serial: u64,
        /// The recipients it covers, canonical order.
        granted: Vec<String>,
    },
    /// A newer first contact to this recipient replaced the grant.
    Superseded {
        /// The grant.
        serial: u64,
        /// The recipient.
        recipient: String,
    },
    /// The deposit's shares are sealed to other servers than those the
    /// grant handed share keys out for.
    Shares {
        /// The grant.
        serial: u64,
        /// The servers the grant lists, by node id in order.
        listed: Vec<u64>,
        /// The servers the deposit's shares are sealed to, in order.
        sealed_to: Vec<u64>,
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

/// Bytes a grant lets its owner store on holders: every shard.
fn stored_bytes(body: &GrantBody) -> u64 {
    body.shards.iter().map(|s| s.len).sum()
}

/// Whether an undeposited grant can no longer be deposited at `now`.
pub(super) fn lapsed(body: &GrantBody, now: u64) -> bool {
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
    /// used. Under a `policy` (every grant but those logged before policies
    /// existed), each recipient's policy is checked ([`admit`]) and those
    /// who refuse are dropped; with none left, or when the sender's quota
    /// would be passed, nothing changes. The grant expires no later than
    /// `now` plus the shortest retention among the recipients who take it,
    /// and the first-contact expiry if any takes it as a limited first
    /// contact: the leader already applied the retention when it resolved
    /// the terms, and applying it again here, in log order, covers a
    /// `SetRetention` ordered between the two. `sign` signs the body with
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
        policy: Option<&GrantPolicy>,
        sign: impl FnOnce(GrantBody) -> StorageGrant,
    ) -> Result<GrantOutcome, StoreError> {
        let registered_at = {
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
            drop(users);
            self.user_in(tx, owner)?.map_or(now, |u| u.registered_at)
        };
        let mut admission = Admission::default();
        let mut refused = Vec::new();
        let mut terms = terms;
        if let Some(policy) = policy {
            admission.anonymous = policy.anonymous;
            let approach = Approach {
                sender: owner,
                anonymous: policy.anonymous,
                account_age_secs: now.saturating_sub(registered_at),
                data_bytes: terms.shards[..usize::from(terms.data_shards)]
                    .iter()
                    .map(|s| s.len)
                    .sum(),
            };
            for r in recipients.iter() {
                let p = self.policy_in(tx, r.as_str())?;
                let waiting = self.first_contact_waiting(tx, r.as_str(), owner, now)?;
                match admit(
                    &p,
                    policy.default_mode,
                    &approach,
                    &policy.first_contact,
                    waiting,
                ) {
                    Ok(a) => admission.recipients.push((r.to_string(), a)),
                    Err(why) => refused.push((r.to_string(), why)),
                }
            }
            if admission.recipients.is_empty() {
                return Ok(GrantOutcome::NoneAccepts(refused));
            }
            let strangers: Vec<&str> = admission
                .recipients
                .iter()
                .filter(|(_, a)| a.stranger)
                .map(|(r, _)| r.as_str())
                .collect();
            let bytes = terms.shards.iter().map(|s| s.len).sum();
            let mut ledger = self.ledger_in(tx, owner)?;
            if let Err(hit) = ledger.charge(policy.limits, now, &strangers, bytes) {
                return Ok(GrantOutcome::Quota(hit));
            }
            self.put_ledger(tx, owner, &ledger)?;
            if admission.recipients.iter().any(|(_, a)| a.limited) {
                terms = terms.expiring_by(now.saturating_add(policy.first_contact.ttl_secs));
            }
        }
        let taking: Vec<&str> = if policy.is_some() {
            admission
                .recipients
                .iter()
                .map(|(r, _)| r.as_str())
                .collect()
        } else {
            recipients.iter().map(|r| r.as_str()).collect()
        };
        let terms = match self.shortest_retention_in(tx, taking)? {
            Some(secs) => terms.expiring_by(now.saturating_add(secs)),
            None => terms,
        };
        let serial = Self::next_grant_serial(tx)?;
        let share_nodes = terms.share_nodes.clone();
        let body = terms.with_serial(serial);
        let record = StorageGrantRecord {
            owner: owner.to_owned(),
            body: body.clone(),
            deposited: None,
            deleted: None,
            share_nodes,
        };
        tx.open_table(STORAGE_GRANTS)
            .map_err(db_err)?
            .insert(serial, encode(&record).as_slice())
            .map_err(db_err)?;
        tx.open_table(OPEN_GRANTS)
            .map_err(db_err)?
            .insert((owner, serial), body.upload_until)
            .map_err(db_err)?;
        self.record_roster(tx, serial, &record.share_nodes)?;
        if policy.is_some() {
            self.admitted(tx, serial, owner, &admission)?;
        }
        Ok(GrantOutcome::Issued(
            sign(body),
            admission.recipients,
            refused,
        ))
    }

    /// A storage grant by serial, inside a write transaction.
    pub(super) fn grant_in(
        &self,
        tx: &WriteTransaction,
        serial: u64,
    ) -> Result<Option<StorageGrantRecord>, StoreError> {
        tx.open_table(STORAGE_GRANTS)
            .map_err(db_err)?
            .get(serial)
            .map_err(db_err)?
            .map(|v| decode(serial, v.value()))
            .transpose()
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

    /// The grant `serial`, and how its recipients took it, if `sender` may
    /// deposit under it at `at` for `recipients` (for a grant issued under
    /// policies, exactly those who take it).
    pub(super) fn grant_for_deposit(
        &self,
        tx: &WriteTransaction,
        serial: u64,
        sender: &str,
        recipients: &Recipients,
        share_nodes: &[u64],
        at: u64,
    ) -> Result<Result<(StorageGrantRecord, Option<Admission>), GrantRefusal>, StoreError> {
        let t = tx.open_table(STORAGE_GRANTS).map_err(db_err)?;
        let Some(v) = t.get(serial).map_err(db_err)? else {
            return Ok(Err(GrantRefusal::Unknown(serial)));
        };
        let record = decode(serial, v.value())?;
        drop(v);
        Ok(if record.owner != sender {
            Err(GrantRefusal::NotOwner(serial))
        } else if let Some(voicemail) = record.deposited {
            Err(GrantRefusal::Used { serial, voicemail })
        } else if lapsed(&record.body, at) {
            Err(GrantRefusal::Lapsed {
                serial,
                upload_until: record.body.upload_until,
            })
        } else if record.share_nodes != share_nodes {
            Err(GrantRefusal::Shares {
                serial,
                listed: record.share_nodes,
                sealed_to: share_nodes.to_vec(),
            })
        } else {
            drop(t);
            let admission = self.admission_in(tx, serial)?;
            match &admission {
                Some(a)
                    if !a
                        .recipients
                        .iter()
                        .map(|(r, _)| r.as_str())
                        .eq(recipients.iter().map(|r| r.as_str())) =>
                {
                    Err(GrantRefusal::Recipients {
                        serial,
                        granted: a.recipients.iter().map(|(r, _)| r.clone()).collect(),
                    })
                }
                Some(a) => match self.first_contact_superseded(tx, serial, sender, a)? {
                    Some(recipient) => Err(GrantRefusal::Superseded { serial, recipient }),
                    None => Ok((record, admission)),
                },
                None => Ok((record, admission)),
            }
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
        let released = record.deleted.is_none();
        record.deleted = Some(reason);
        t.insert(serial, encode(&record).as_slice())
            .map_err(db_err)?;
        drop(t);
        if released {
            self.release_bytes(tx, &record.owner, stored_bytes(&record.body))?;
        }
        Ok(Some(sign(serial, reason, record.body.expires_at)))
    }

    /// Drops the grants that expired at `now`, and those no deposit used
    /// whose upload window and grace have passed. Returns how many went.
    pub(super) fn purge_grants(
        &self,
        tx: &WriteTransaction,
        now: u64,
    ) -> Result<usize, StoreError> {
        // (serial, owner, bytes still charged to the owner).
        let mut gone: Vec<(u64, String, u64)> = Vec::new();
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
                let charged = match record.deleted {
                    None => stored_bytes(&record.body),
                    Some(_) => 0,
                };
                gone.push((serial, record.owner, charged));
            }
        }
        let mut open = tx.open_table(OPEN_GRANTS).map_err(db_err)?;
        let mut rosters = tx.open_table(GRANT_ROSTERS).map_err(db_err)?;
        for (serial, owner, _) in &gone {
            t.remove(*serial).map_err(db_err)?;
            open.remove((owner.as_str(), *serial)).map_err(db_err)?;
            rosters.remove(*serial).map_err(db_err)?;
        }
        drop((t, open, rosters));
        for (_, owner, charged) in &gone {
            if *charged > 0 {
                self.release_bytes(tx, owner, *charged)?;
            }
        }
        self.purge_senders(tx, now)?;
        Ok(gone.len())
    }
}
