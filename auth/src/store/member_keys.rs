//! The member keys: each server's own Ed25519 key (`DATA_DIR/member.key`,
//! never handed to another server), recorded by the log under its node id.
//! A share key enters `share_keys` only with its server's member-key
//! signature (a [`Vouch`]), so a member certificate minted with the group
//! CA key, which every member holds, no longer lets one server publish a
//! share key in another's name (docs/PROTOCOL.md §7.14).
//!
//! `Join` records a joining server's key before the server becomes a
//! learner; a server with none recorded (the founder, or a group older
//! than member keys) has it recorded by its first vouched publication.
//! Once recorded, a node id's key never changes.

use ed25519_dalek::{Signature, VerifyingKey};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::schema::MEMBER_KEYS;
use super::sealing::member_key_aad;
use super::{Store, StoreError, corrupt, db_err};

/// The label that opens the bytes a member key signs.
const PUBLICATION_LABEL: &[u8] = b"vmail/v1/share-key-publication";

/// The bytes a server's member key signs to publish its share key of
/// `epoch`: label ‖ node id (u64 BE) ‖ epoch (u32 BE) ‖ the X25519 public
/// key.
pub fn publication_bytes(node_id: u64, epoch: u32, public: &[u8; 32]) -> Vec<u8> {
    let mut out = PUBLICATION_LABEL.to_vec();
    out.extend_from_slice(&node_id.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(public);
    out
}

/// A server's signature on its share-key publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vouch {
    /// The server's member key (Ed25519 public key).
    pub member_key: [u8; 32],
    /// Its signature over [`publication_bytes`] (64 bytes).
    pub signature: Vec<u8>,
}

/// The result of recording a member key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberKeyOutcome {
    /// Recorded now.
    Registered,
    /// The node already had this key.
    AlreadyRegistered,
    /// The node has another key; nothing changed.
    OtherKey,
}

/// Why a share-key publication's vouch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VouchRefusal {
    /// The server has a member key recorded, and the publication carries no
    /// signature.
    Missing,
    /// The signature does not verify under the key it names.
    BadSignature,
    /// It is signed by a key other than the one recorded for the server.
    OtherKey,
}

impl std::fmt::Display for VouchRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => "it is not signed by the server's member key",
            Self::BadSignature => "its member-key signature does not verify",
            Self::OtherKey => {
                "it is signed by a member key other than the one the group recorded for that server"
            }
        })
    }
}

/// A member key as its row stores it, with an empty blob sealed under the
/// data key over the node id and the key.
#[derive(Serialize, Deserialize)]
struct MemberKeyRow {
    key: [u8; 32],
    binding_sealed: Vec<u8>,
}

impl Store {
    fn member_key_in(
        &self,
        table: &impl ReadableTable<u64, &'static [u8]>,
        node_id: u64,
    ) -> Result<Option<[u8; 32]>, StoreError> {
        let Some(v) = table.get(node_id).map_err(db_err)? else {
            return Ok(None);
        };
        let name = format!("{node_id:016x}");
        let row: MemberKeyRow =
            postcard::from_bytes(v.value()).map_err(|e| corrupt("member_keys", &name, e))?;
        self.data_key
            .open(&row.binding_sealed, &member_key_aad(node_id, &row.key))
            .map_err(|e| corrupt("member_keys", &name, e))?;
        Ok(Some(row.key))
    }

    /// The member key recorded for `node_id`, if any.
    pub fn member_key(&self, node_id: u64) -> Result<Option<[u8; 32]>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            self.member_key_in(&tx.open_table(MEMBER_KEYS).map_err(db_err)?, node_id)
        })
    }

    /// Records `key` as `node_id`'s member key, unless it has another.
    pub(crate) fn register_member_key(
        &self,
        tx: &WriteTransaction,
        node_id: u64,
        key: [u8; 32],
    ) -> Result<MemberKeyOutcome, StoreError> {
        let mut table = tx.open_table(MEMBER_KEYS).map_err(db_err)?;
        match self.member_key_in(&table, node_id)? {
            Some(k) if k == key => return Ok(MemberKeyOutcome::AlreadyRegistered),
            Some(_) => return Ok(MemberKeyOutcome::OtherKey),
            None => {}
        }
        let row = MemberKeyRow {
            key,
            binding_sealed: self.data_key.seal(&[], &member_key_aad(node_id, &key)),
        };
        table
            .insert(
                node_id,
                postcard::to_allocvec(&row).expect("encodes").as_slice(),
            )
            .map_err(db_err)?;
        Ok(MemberKeyOutcome::Registered)
    }

    /// Checks a share-key publication's vouch against the key recorded for
    /// `node_id`. Without a recorded key an unsigned publication passes (a
    /// log entry from before member keys) and a signed one passes if its
    /// signature verifies; the caller then records its key.
    pub(super) fn check_vouch(
        &self,
        tx: &WriteTransaction,
        node_id: u64,
        epoch: u32,
        public: &[u8; 32],
        vouch: Option<&Vouch>,
    ) -> Result<Result<(), VouchRefusal>, StoreError> {
        let recorded = self.member_key_in(&tx.open_table(MEMBER_KEYS).map_err(db_err)?, node_id)?;
        let Some(vouch) = vouch else {
            return Ok(match recorded {
                Some(_) => Err(VouchRefusal::Missing),
                None => Ok(()),
            });
        };
        if recorded.is_some_and(|k| k != vouch.member_key) {
            return Ok(Err(VouchRefusal::OtherKey));
        }
        let verifies = VerifyingKey::from_bytes(&vouch.member_key)
            .ok()
            .zip(Signature::from_slice(&vouch.signature).ok())
            .is_some_and(|(key, sig)| {
                key.verify_strict(&publication_bytes(node_id, epoch, public), &sig)
                    .is_ok()
            });
        Ok(if verifies {
            Ok(())
        } else {
            Err(VouchRefusal::BadSignature)
        })
    }
}
