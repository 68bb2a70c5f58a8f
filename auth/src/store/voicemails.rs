//! Voicemails: each one's session-key shares (sealed to the servers' share
//! keys), threshold and key check, locator, metadata and recipients; a grant per recipient still to fetch it; the per-recipient
//! waiting counts behind the inbox cap; the request ids that make deposits
//! idempotent; and the sweep of everything that expired (the sender's
//! recall is [`super::recall`]'s). Each change also updates the sender's receipt
//! ([`super::receipts`]).

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use vmail_proto::cert::UserCertificate;
use vmail_proto::grant::{DeleteOrder, DeleteReason};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::Recipients;

use super::receipts::{DeliveryState, Receipt, RecipientReceipt};
use super::schema::{GRANTS, REQUESTS, SESSIONS, USERS, VOICEMAIL_GRANTS, VOICEMAILS, WAITING};
use super::sealing::voicemail_aad;
use super::sessions::SessionRow;
use super::share_keys::StoredShare;
use super::storage_grants::{GrantRefusal, order_bytes};
use super::{Store, StoreError, corrupt, db_err};

/// A voicemail id: 16 random bytes chosen by the server.
pub type VoicemailId = [u8; 16];

/// A deposited voicemail.
#[derive(Debug, Clone)]
pub struct Voicemail {
    /// Its id.
    pub id: VoicemailId,
    /// The sender's username.
    pub sender: String,
    /// The sender's certificate at deposit time.
    pub sender_certificate: UserCertificate,
    /// The canonical recipients.
    pub recipients: Recipients,
    /// The storage locator.
    pub locator: Vec<u8>,
    /// Sender's metadata; a deposit replaces the expiry with its storage
    /// grant's.
    pub metadata: VoicemailMeta,
    /// Deposit time, Unix seconds.
    pub deposited_at: u64,
    /// The storage grant it was deposited under; the shares are bound to it.
    pub grant_serial: u64,
    /// Shares needed to recover the session key.
    pub threshold: u8,
    /// The sender's key check of the session key.
    pub key_check: [u8; 32],
    /// The session key's shares, one per server, each sealed to that
    /// server's share key: no server can open any but its own.
    pub shares: Vec<StoredShare>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct VoicemailRow {
    pub(super) sender: String,
    sender_certificate: Vec<u8>,
    pub(super) recipients: Vec<String>,
    pub(super) locator: Vec<u8>,
    pub(super) metadata: VoicemailMeta,
    deposited_at: u64,
    grant_serial: u64,
    threshold: u8,
    key_check: [u8; 32],
    pub(super) shares: Vec<StoredShare>,
    /// An empty blob sealed under the data key, binding the fields above
    /// ([`voicemail_aad`]).
    binding_sealed: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RequestRow {
    voicemail_id: VoicemailId,
    digest: [u8; 32],
    expires_at: u64,
}

/// The result of [`Store::deposit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DepositOutcome {
    /// A new voicemail was stored.
    Stored(VoicemailId),
    /// The request id was seen before with the same content; its first result.
    Replayed(VoicemailId),
    /// The request id was seen before with different content; nothing changed.
    RequestIdReused,
    /// A recipient is not registered; nothing changed.
    UnknownRecipient(String),
    /// A recipient has too many voicemails waiting; nothing changed.
    InboxFull(String),
    /// The storage grant named may not be used; nothing changed.
    GrantRefused(GrantRefusal),
}

/// The result of [`Store::ack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckOutcome {
    /// The voicemail is not pending for this user; nothing changed.
    NotPending,
    /// The grant was erased; `key_erased` when it was the last one.
    Acked {
        /// Whether the voicemail and its session key are now gone.
        key_erased: bool,
        /// With `key_erased`: the signed order to delete the shards of the
        /// voicemail's storage grant.
        #[serde(with = "order_bytes")]
        delete_order: Option<DeleteOrder>,
    },
}

/// What [`Store::purge_expired`] erased.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeCounts {
    /// Sessions.
    pub sessions: usize,
    /// Voicemails, with their grants and keys.
    pub voicemails: usize,
    /// Storage grants past their expiry, or never deposited in time.
    pub storage_grants: usize,
    /// Receipts a week past their voicemail's expiry.
    pub receipts: usize,
}

impl Store {
    fn decode_voicemail(&self, id: &[u8], bytes: &[u8]) -> Result<Voicemail, StoreError> {
        let key = hex::encode(id);
        let row: VoicemailRow =
            postcard::from_bytes(bytes).map_err(|e| corrupt("voicemails", &key, e))?;
        let recipients =
            Recipients::parse(&row.recipients).map_err(|e| corrupt("voicemails", &key, e))?;
        self.data_key
            .open(
                &row.binding_sealed,
                &voicemail_aad(
                    id,
                    &row.sender_certificate,
                    row.deposited_at,
                    &recipients,
                    &row.locator,
                    row.grant_serial,
                ),
            )
            .map_err(|e| corrupt("voicemails", &key, e))?;
        let sender_certificate = UserCertificate::from_bytes(&row.sender_certificate)
            .map_err(|e| corrupt("voicemails", &key, e))?;
        if sender_certificate.username.as_str() != row.sender {
            return Err(corrupt("voicemails", &key, "sender and certificate differ"));
        }
        Ok(Voicemail {
            id: id
                .try_into()
                .map_err(|_| corrupt("voicemails", &key, "id length"))?,
            sender: row.sender,
            sender_certificate,
            recipients,
            locator: row.locator,
            metadata: row.metadata,
            deposited_at: row.deposited_at,
            grant_serial: row.grant_serial,
            threshold: row.threshold,
            key_check: row.key_check,
            shares: row.shares,
        })
    }

    /// Stores a voicemail and a grant for each recipient under the sender's
    /// storage grant `grant_serial`, unless the request id was seen before,
    /// a recipient is unknown, the storage grant may not be used (see
    /// [`GrantRefusal`]), or a recipient already has `max_pending`
    /// voicemails waiting. The voicemail expires with the storage grant,
    /// whatever `vm.metadata` says, and the grant is used up.
    pub(crate) fn deposit(
        &self,
        tx: &WriteTransaction,
        request_id: &[u8],
        digest: [u8; 32],
        vm: &Voicemail,
        grant_serial: u64,
        max_pending: u64,
    ) -> Result<DepositOutcome, StoreError> {
        {
            let mut requests = tx.open_table(REQUESTS).map_err(db_err)?;
            if let Some(v) = requests
                .get((vm.sender.as_str(), request_id))
                .map_err(db_err)?
            {
                let row: RequestRow = postcard::from_bytes(v.value())
                    .map_err(|e| corrupt("requests", hex::encode(request_id), e))?;
                return Ok(if row.digest == digest {
                    DepositOutcome::Replayed(row.voicemail_id)
                } else {
                    DepositOutcome::RequestIdReused
                });
            }
            let users = tx.open_table(USERS).map_err(db_err)?;
            for r in vm.recipients.iter() {
                if users.get(r.as_str()).map_err(db_err)?.is_none() {
                    return Ok(DepositOutcome::UnknownRecipient(r.to_string()));
                }
            }
            let mut share_nodes: Vec<u64> = vm.shares.iter().map(|s| s.node_id).collect();
            share_nodes.sort_unstable();
            let (grant, admission) = match self.grant_for_deposit(
                tx,
                grant_serial,
                &vm.sender,
                &vm.recipients,
                &share_nodes,
                vm.deposited_at,
            )? {
                Ok(g) => g,
                Err(refusal) => return Ok(DepositOutcome::GrantRefused(refusal)),
            };
            let mut waiting = tx.open_table(WAITING).map_err(db_err)?;
            for r in vm.recipients.iter() {
                if count(&waiting, r.as_str())? >= max_pending {
                    return Ok(DepositOutcome::InboxFull(r.to_string()));
                }
            }
            let expires_at = grant.body.expires_at;
            self.grant_deposited(tx, grant, &vm.id)?;
            if let Some(admission) = &admission {
                self.note_deliveries(tx, &vm.id, &vm.sender, admission, expires_at)?;
            }
            let sender_certificate = vm.sender_certificate.to_bytes();
            let row = VoicemailRow {
                sender: vm.sender.clone(),
                recipients: vm.recipients.to_strings(),
                locator: vm.locator.clone(),
                metadata: VoicemailMeta {
                    expires_at,
                    ..vm.metadata.clone()
                },
                deposited_at: vm.deposited_at,
                grant_serial,
                threshold: vm.threshold,
                key_check: vm.key_check,
                shares: vm.shares.clone(),
                binding_sealed: self.data_key.seal(
                    &[],
                    &voicemail_aad(
                        &vm.id,
                        &sender_certificate,
                        vm.deposited_at,
                        &vm.recipients,
                        &vm.locator,
                        grant_serial,
                    ),
                ),
                sender_certificate,
            };
            let mut vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            vms.insert(
                vm.id.as_slice(),
                postcard::to_allocvec(&row).expect("encodes").as_slice(),
            )
            .map_err(db_err)?;
            let mut grants = tx.open_table(GRANTS).map_err(db_err)?;
            for r in vm.recipients.iter() {
                grants
                    .insert((r.as_str(), vm.id.as_slice()), ())
                    .map_err(db_err)?;
                add(&mut waiting, r.as_str(), 1)?;
            }
            self.receipt_stored(
                tx,
                &vm.sender,
                &Receipt {
                    id: vm.id,
                    deposited_at: vm.deposited_at,
                    expires_at,
                    size: vm.metadata.size,
                    content_type: vm.metadata.content_type.clone(),
                    recipients: vm
                        .recipients
                        .iter()
                        .map(|r| RecipientReceipt {
                            username: r.to_string(),
                            state: DeliveryState::Pending,
                            at: vm.deposited_at,
                        })
                        .collect(),
                },
            )?;
            let req = RequestRow {
                voicemail_id: vm.id,
                digest,
                expires_at,
            };
            requests
                .insert(
                    (vm.sender.as_str(), request_id),
                    postcard::to_allocvec(&req).expect("encodes").as_slice(),
                )
                .map_err(db_err)?;
        }
        Ok(DepositOutcome::Stored(vm.id))
    }

    /// The voicemails pending for `recipient` that have not expired at `now`,
    /// oldest first.
    pub fn pending(&self, recipient: &str, now: u64) -> Result<Vec<Voicemail>, StoreError> {
        let mut out = self.pending_by(recipient, now, |vm| vm)?;
        out.sort_by_key(|v| (v.deposited_at, v.id));
        Ok(out)
    }

    /// The ids of the voicemails pending for `recipient` that have not
    /// expired at `now`, in [`Self::pending`]'s order: what a WatchPending
    /// stream keeps of its backlog, fetching each voicemail as it sends it.
    pub fn pending_ids(&self, recipient: &str, now: u64) -> Result<Vec<VoicemailId>, StoreError> {
        let mut out = self.pending_by(recipient, now, |vm| (vm.deposited_at, vm.id))?;
        out.sort();
        Ok(out.into_iter().map(|(_, id)| id).collect())
    }

    /// `keep` of each voicemail pending for `recipient` that has not expired
    /// at `now`, in key order; each voicemail is dropped once `keep` had it.
    fn pending_by<T>(
        &self,
        recipient: &str,
        now: u64,
        keep: impl Fn(Voicemail) -> T,
    ) -> Result<Vec<T>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let grants = tx.open_table(GRANTS).map_err(db_err)?;
            let vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in grants.range((recipient, [].as_slice())..).map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                let (who, id) = k.value();
                if who != recipient {
                    break;
                }
                let Some(v) = vms.get(id).map_err(db_err)? else {
                    return Err(corrupt(
                        "grants",
                        hex::encode(id),
                        "grant without voicemail",
                    ));
                };
                let vm = self.decode_voicemail(id, v.value())?;
                check_grant(&vm, recipient)?;
                if vm.metadata.expires_at > now {
                    out.push(keep(vm));
                }
            }
            Ok(out)
        })
    }

    /// One voicemail, if it is pending for `recipient`.
    pub fn pending_one(
        &self,
        recipient: &str,
        id: &VoicemailId,
    ) -> Result<Option<Voicemail>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let grants = tx.open_table(GRANTS).map_err(db_err)?;
            if grants
                .get((recipient, id.as_slice()))
                .map_err(db_err)?
                .is_none()
            {
                return Ok(None);
            }
            let vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            match vms.get(id.as_slice()).map_err(db_err)? {
                Some(v) => {
                    let vm = self.decode_voicemail(id, v.value())?;
                    check_grant(&vm, recipient)?;
                    Ok(Some(vm))
                }
                None => Ok(None),
            }
        })
    }

    /// Whether the voicemail row (and so its sealed shares) still exists.
    pub fn voicemail_exists(&self, id: &VoicemailId) -> Result<bool, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            Ok(vms.get(id.as_slice()).map_err(db_err)?.is_some())
        })
    }

    /// Erases `recipient`'s grant on an unexpired voicemail and marks them
    /// delivered on the sender's receipt; erases the voicemail and its
    /// session key with the last grant, and then marks its storage grant
    /// delivered and has `sign` sign the delete order. Nothing here asks
    /// whether the recipient fetched the voicemail: an ack is also how a
    /// recipient discards one unheard.
    pub(crate) fn ack(
        &self,
        tx: &WriteTransaction,
        recipient: &str,
        id: &VoicemailId,
        now: u64,
        sign: impl FnOnce(u64, DeleteReason, u64) -> DeleteOrder,
    ) -> Result<AckOutcome, StoreError> {
        let key_erased;
        let sender;
        {
            let mut vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            let row = match vms.get(id.as_slice()).map_err(db_err)? {
                Some(v) => postcard::from_bytes::<VoicemailRow>(v.value())
                    .map_err(|e| corrupt("voicemails", hex::encode(id), e))?,
                None => return Ok(AckOutcome::NotPending),
            };
            // Expired voicemail is no longer pending; the sweeper erases it.
            if row.metadata.expires_at <= now {
                return Ok(AckOutcome::NotPending);
            }
            let mut grants = tx.open_table(GRANTS).map_err(db_err)?;
            if grants
                .remove((recipient, id.as_slice()))
                .map_err(db_err)?
                .is_none()
            {
                return Ok(AckOutcome::NotPending);
            }
            add(&mut tx.open_table(WAITING).map_err(db_err)?, recipient, -1)?;
            let mut left = false;
            for r in &row.recipients {
                left |= grants
                    .get((r.as_str(), id.as_slice()))
                    .map_err(db_err)?
                    .is_some();
            }
            key_erased = !left;
            if key_erased {
                vms.remove(id.as_slice()).map_err(db_err)?;
            }
            sender = row.sender;
        }
        self.receipt_delivered(tx, &sender, id, recipient, now)?;
        let delete_order = if key_erased {
            self.grant_erased(tx, id, DeleteReason::Delivered, sign)?
        } else {
            None
        };
        Ok(AckOutcome::Acked {
            key_erased,
            delete_order,
        })
    }

    /// Deletes expired sessions, voicemails (with their grants and keys;
    /// their receipts mark whoever was still pending `ExpiredUnread`),
    /// request records and storage grants, storage grants no deposit used in
    /// time, and receipts a week past their voicemail's expiry. Returns how
    /// many of each went.
    pub(crate) fn purge_expired(
        &self,
        tx: &WriteTransaction,
        now: u64,
    ) -> Result<PurgeCounts, StoreError> {
        let mut n_sessions = 0;
        let n_vms;
        {
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            // A corrupt row is reported and kept, so that it cannot stop
            // every other expired entry from being erased.
            sessions
                .retain(|k, v| match postcard::from_bytes::<SessionRow>(v) {
                    Ok(row) if row.expires_at <= now => {
                        n_sessions += 1;
                        false
                    }
                    Ok(_) => true,
                    Err(e) => {
                        let e = corrupt("sessions", hex::encode(&k[..8.min(k.len())]), e);
                        tracing::error!(error = %e, "purge skipped a corrupt row");
                        true
                    }
                })
                .map_err(db_err)?;
            let mut vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            let mut expired: Vec<(Vec<u8>, VoicemailRow)> = Vec::new();
            for entry in vms.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let row: VoicemailRow = match postcard::from_bytes(v.value()) {
                    Ok(row) => row,
                    Err(e) => {
                        let e = corrupt("voicemails", hex::encode(k.value()), e);
                        tracing::error!(error = %e, "purge skipped a corrupt row");
                        continue;
                    }
                };
                if row.metadata.expires_at <= now {
                    expired.push((k.value().to_vec(), row));
                }
            }
            let mut grants = tx.open_table(GRANTS).map_err(db_err)?;
            let mut waiting = tx.open_table(WAITING).map_err(db_err)?;
            let mut voicemail_grants = tx.open_table(VOICEMAIL_GRANTS).map_err(db_err)?;
            for (id, row) in &expired {
                vms.remove(id.as_slice()).map_err(db_err)?;
                voicemail_grants.remove(id.as_slice()).map_err(db_err)?;
                for r in &row.recipients {
                    if grants
                        .remove((r.as_str(), id.as_slice()))
                        .map_err(db_err)?
                        .is_some()
                    {
                        add(&mut waiting, r, -1)?;
                    }
                }
            }
            n_vms = expired.len();
            for (id, row) in &expired {
                if let Ok(id) = <VoicemailId>::try_from(id.as_slice()) {
                    self.receipt_ended(
                        tx,
                        &row.sender,
                        &id,
                        DeliveryState::ExpiredUnread,
                        row.metadata.expires_at,
                    )?;
                }
            }
            let mut requests = tx.open_table(REQUESTS).map_err(db_err)?;
            requests
                .retain(|_, v| {
                    postcard::from_bytes::<RequestRow>(v).map_or(true, |r| r.expires_at > now)
                })
                .map_err(db_err)?;
        }
        Ok(PurgeCounts {
            sessions: n_sessions,
            voicemails: n_vms,
            storage_grants: self.purge_grants(tx, now)?,
            receipts: self.purge_receipts(tx, now)?,
        })
    }
}

/// How many voicemails wait for `user`.
fn count(waiting: &impl ReadableTable<&'static str, u64>, user: &str) -> Result<u64, StoreError> {
    Ok(waiting.get(user).map_err(db_err)?.map_or(0, |v| v.value()))
}

/// Moves `user`'s waiting count by `delta`, keeping no zero rows.
pub(super) fn add(
    waiting: &mut redb::Table<&'static str, u64>,
    user: &str,
    delta: i64,
) -> Result<(), StoreError> {
    let n = count(waiting, user)?.saturating_add_signed(delta);
    if n == 0 {
        waiting.remove(user).map_err(db_err)?;
    } else {
        waiting.insert(user, n).map_err(db_err)?;
    }
    Ok(())
}

/// A grant is only honoured for a recipient the sealed voicemail names.
fn check_grant(vm: &Voicemail, recipient: &str) -> Result<(), StoreError> {
    if vm.recipients.iter().any(|r| r.as_str() == recipient) {
        Ok(())
    } else {
        Err(corrupt(
            "grants",
            hex::encode(vm.id),
            format!("grant for {recipient:?}, who is not a recipient"),
        ))
    }
}
