//! The share keys the group's servers published: (node id, epoch) → the
//! X25519 public key and when it was published. Senders seal each server's
//! share of a session key to its newest key (the grant lists them); a
//! deposit may name only published keys. The secrets are each server's own
//! (`crate::datadir::share_keys`) and are never stored here.
//!
//! Also the share keys each storage grant hands out (`grant_rosters`),
//! recorded when the grant is issued, so that every server rebuilds the
//! same roster for the group to sign (docs/PROTOCOL.md §7.13); the shares
//! themselves as a voicemail row keeps them
//! ([`StoredShare`]), and which epochs of one server the waiting voicemails
//! still need, so that a server erases an old secret only once nothing is
//! sealed to it.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use vmail_proto::share::{PUBLIC_LEN, SealedShare, ShareKey};

use super::member_keys::{Vouch, VouchRefusal};
use super::schema::{GRANT_ROSTERS, SHARE_KEYS, VOICEMAILS};
use super::sealing::share_key_aad;
use super::voicemails::VoicemailRow;
use super::{Store, StoreError, corrupt, db_err};

/// One share of a session key as a voicemail keeps it: sealed to one
/// server's share key of one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredShare {
    /// The server it is sealed to.
    pub node_id: u64,
    /// The epoch of that server's key.
    pub epoch: u32,
    /// The Shamir x-coordinate, 1..=n.
    pub index: u8,
    /// The HPKE encapsulated key.
    pub enc: [u8; PUBLIC_LEN],
    /// The sealed share value.
    pub ciphertext: Vec<u8>,
}

impl From<&StoredShare> for SealedShare {
    fn from(s: &StoredShare) -> Self {
        SealedShare {
            node_id: s.node_id,
            epoch: s.epoch,
            index: s.index,
            enc: s.enc,
            ciphertext: s.ciphertext.clone(),
        }
    }
}

/// A published share key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedKey {
    /// The X25519 public key.
    pub public: [u8; PUBLIC_LEN],
    /// When the entry that published it was proposed, Unix seconds.
    pub published_at: u64,
}

/// The result of [`Store::publish_share_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishOutcome {
    /// The key is now the server's newest.
    Published,
    /// The same key was already published under that epoch: a retry.
    AlreadyPublished,
    /// The server already published this epoch with another key, or a
    /// newer epoch; nothing changed.
    Stale {
        /// The server's newest published epoch.
        newest: u32,
    },
    /// The publication is not vouched for by the server's member key;
    /// nothing changed.
    Unvouched(VouchRefusal),
}

/// A published key as its row stores it, with an empty blob sealed under
/// the data key over the rest ([`share_key_aad`]).
#[derive(Serialize, Deserialize)]
struct PublishedRow {
    public: [u8; PUBLIC_LEN],
    published_at: u64,
    binding_sealed: Vec<u8>,
}

impl Store {
    /// A published key row, checked against its data-key binding.
    fn decode_published(
        &self,
        node_id: u64,
        epoch: u32,
        bytes: &[u8],
    ) -> Result<PublishedKey, StoreError> {
        let name = format!("{node_id:016x}/{epoch}");
        let row: PublishedRow =
            postcard::from_bytes(bytes).map_err(|e| corrupt("share_keys", &name, e))?;
        self.data_key
            .open(
                &row.binding_sealed,
                &share_key_aad(node_id, epoch, &row.public, row.published_at),
            )
            .map_err(|e| corrupt("share_keys", &name, e))?;
        Ok(PublishedKey {
            public: row.public,
            published_at: row.published_at,
        })
    }

    /// Publishes `node_id`'s share key of `epoch`, unless that server
    /// already published this epoch or a newer one, or `vouch` does not
    /// pass [`Store::check_vouch`]. A new key (`Published`) records its
    /// vouch's member key for `node_id` when none was. Deterministic: the
    /// outcome depends only on the tables and the arguments.
    pub(crate) fn publish_share_key(
        &self,
        tx: &WriteTransaction,
        node_id: u64,
        epoch: u32,
        public: [u8; PUBLIC_LEN],
        vouch: Option<&Vouch>,
        now: u64,
    ) -> Result<PublishOutcome, StoreError> {
        if let Err(why) = self.check_vouch(tx, node_id, epoch, &public, vouch)? {
            return Ok(PublishOutcome::Unvouched(why));
        }
        let outcome = self.record_share_key(tx, node_id, epoch, public, now)?;
        // Only a new key records its signer: anyone can sign a key already
        // published (it is public) and would otherwise claim the node.
        if let Some(v) = vouch
            && outcome == PublishOutcome::Published
        {
            self.register_member_key(tx, node_id, v.member_key)?;
        }
        Ok(outcome)
    }

    fn record_share_key(
        &self,
        tx: &WriteTransaction,
        node_id: u64,
        epoch: u32,
        public: [u8; PUBLIC_LEN],
        now: u64,
    ) -> Result<PublishOutcome, StoreError> {
        let mut table = tx.open_table(SHARE_KEYS).map_err(db_err)?;
        let mut newest: Option<(u32, PublishedKey)> = None;
        for entry in table
            .range((node_id, 0u32)..=(node_id, u32::MAX))
            .map_err(db_err)?
        {
            let (k, v) = entry.map_err(db_err)?;
            let e = k.value().1;
            newest = Some((e, self.decode_published(node_id, e, v.value())?));
        }
        if let Some((e, row)) = newest {
            if e == epoch && row.public == public {
                return Ok(PublishOutcome::AlreadyPublished);
            }
            if e >= epoch {
                return Ok(PublishOutcome::Stale { newest: e });
            }
        }
        let row = PublishedRow {
            public,
            published_at: now,
            binding_sealed: self
                .data_key
                .seal(&[], &share_key_aad(node_id, epoch, &public, now)),
        };
        table
            .insert(
                (node_id, epoch),
                postcard::to_allocvec(&row).expect("encodes").as_slice(),
            )
            .map_err(db_err)?;
        Ok(PublishOutcome::Published)
    }

    /// Records the share keys grant `serial` hands out: the newest
    /// published key of each of `nodes`, in that order. A server that
    /// published none is left out (its deposit would then be refused).
    pub(crate) fn record_roster(
        &self,
        tx: &WriteTransaction,
        serial: u64,
        nodes: &[u64],
    ) -> Result<(), StoreError> {
        let keys = tx.open_table(SHARE_KEYS).map_err(db_err)?;
        let mut roster: Vec<(u64, u32)> = Vec::with_capacity(nodes.len());
        for &node in nodes {
            if let Some((k, _)) = keys
                .range((node, 0u32)..=(node, u32::MAX))
                .map_err(db_err)?
                .next_back()
                .transpose()
                .map_err(db_err)?
            {
                roster.push(k.value());
            }
        }
        drop(keys);
        tx.open_table(GRANT_ROSTERS)
            .map_err(db_err)?
            .insert(
                serial,
                postcard::to_allocvec(&roster).expect("encodes").as_slice(),
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// The share keys grant `serial` hands out, in order, as recorded when
    /// it was issued; `None` for a grant issued before rosters were kept.
    pub fn grant_roster(&self, serial: u64) -> Result<Option<Vec<ShareKey>>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let Some(row) = tx
                .open_table(GRANT_ROSTERS)
                .map_err(db_err)?
                .get(serial)
                .map_err(db_err)?
            else {
                return Ok(None);
            };
            let roster: Vec<(u64, u32)> = postcard::from_bytes(row.value())
                .map_err(|e| corrupt("grant_rosters", serial.to_string(), e))?;
            let keys = tx.open_table(SHARE_KEYS).map_err(db_err)?;
            let mut out = Vec::with_capacity(roster.len());
            for (node_id, epoch) in roster {
                let v = keys.get((node_id, epoch)).map_err(db_err)?.ok_or_else(|| {
                    corrupt(
                        "grant_rosters",
                        serial.to_string(),
                        format!("names share key ({node_id}, {epoch}), which is not published"),
                    )
                })?;
                out.push(ShareKey {
                    node_id,
                    epoch,
                    public: self.decode_published(node_id, epoch, v.value())?.public,
                });
            }
            Ok(Some(out))
        })
    }

    /// Every published share key, by (node id, epoch).
    pub fn published_share_keys(&self) -> Result<BTreeMap<(u64, u32), PublishedKey>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(SHARE_KEYS).map_err(db_err)?;
            let mut out = BTreeMap::new();
            for entry in table.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let (node, epoch) = k.value();
                out.insert(
                    (node, epoch),
                    self.decode_published(node, epoch, v.value())?,
                );
            }
            Ok(out)
        })
    }

    /// Each server's newest published key, as the grant hands them out.
    pub fn newest_share_keys(&self) -> Result<BTreeMap<u64, (ShareKey, u64)>, StoreError> {
        let mut out = BTreeMap::new();
        for ((node_id, epoch), row) in self.published_share_keys()? {
            // Ascending order: a later epoch of the same server replaces.
            out.insert(
                node_id,
                (
                    ShareKey {
                        node_id,
                        epoch,
                        public: row.public,
                    },
                    row.published_at,
                ),
            );
        }
        Ok(out)
    }

    /// The epochs of `node_id`'s share key that some stored voicemail still
    /// has a share sealed to.
    pub fn share_epochs_in_use(&self, node_id: u64) -> Result<BTreeSet<u32>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let vms = tx.open_table(VOICEMAILS).map_err(db_err)?;
            let mut out = BTreeSet::new();
            for entry in vms.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let row: VoicemailRow = postcard::from_bytes(v.value())
                    .map_err(|e| corrupt("voicemails", hex::encode(k.value()), e))?;
                out.extend(
                    row.shares
                        .iter()
                        .filter(|s| s.node_id == node_id)
                        .map(|s| s.epoch),
                );
            }
            Ok(out)
        })
    }
}
