//! The member keys: each server's own Ed25519 key (`DATA_DIR/member.key`,
//! never handed to another server), recorded by the log under its node id.
//! A share key enters `share_keys` only with its server's member-key
//! signature (a [`Vouch`]), so a member certificate minted with the group
//! CA key, which every member holds, no longer lets one server publish a
//! share key in another's name (docs/PROTOCOL.md §7.14).
//!
//! `Join` records a new node's key before the server becomes a learner; a
//! server with none recorded (the founder, or a group older than member
//! keys) has it recorded by its first vouched publication of a new key.
//! Once recorded, a node id's key never changes.
//!
//! Member keys also approve joins (`join_approvals`): a server that joins
//! a group with a key votes and is repaired a share of it only once the
//! key's threshold of share holders signed its node id and member key, so
//! a server the CA key alone let in gets neither (docs/PROTOCOL.md §16.9).
//! An approval lasts while the node stays in the membership.

use ed25519_dalek::{Signature, VerifyingKey};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::schema::{JOIN_APPROVALS, MEMBER_KEYS};
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

/// The label that opens the bytes a join approval signs.
const APPROVAL_LABEL: &[u8] = b"vmail/v1/join-approval";

/// The bytes a member key signs to approve node `joining`, whose member
/// key is `joining_key`: label ‖ node id (u64 BE) ‖ its member key.
pub fn approval_bytes(joining: u64, joining_key: &[u8; 32]) -> Vec<u8> {
    [APPROVAL_LABEL, &joining.to_be_bytes(), joining_key].concat()
}

/// The label that opens the bytes a member key signs for a key-ceremony
/// step.
const STEP_LABEL: &[u8] = b"vmail/v1/dkg-step";

/// The bytes a member key signs to propose `step` (its postcard encoding)
/// as node `node_id`'s: label ‖ node id (u64 BE) ‖ SHA-256 of the step.
pub fn step_bytes(node_id: u64, step: &[u8]) -> Vec<u8> {
    [STEP_LABEL, &node_id.to_be_bytes(), &Sha256::digest(step)].concat()
}

/// Whether `signature` is `key`'s Ed25519 signature over `message`.
fn signed_by(key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    VerifyingKey::from_bytes(key)
        .ok()
        .zip(Signature::from_slice(signature).ok())
        .is_some_and(|(key, sig)| key.verify_strict(message, &sig).is_ok())
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

    /// [`Store::member_key`] inside a write.
    pub(super) fn member_key_in_tx(
        &self,
        tx: &WriteTransaction,
        node_id: u64,
    ) -> Result<Option<[u8; 32]>, StoreError> {
        self.member_key_in(&tx.open_table(MEMBER_KEYS).map_err(db_err)?, node_id)
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
        let recorded = self.member_key_in_tx(tx, node_id)?;
        let Some(vouch) = vouch else {
            return Ok(match recorded {
                Some(_) => Err(VouchRefusal::Missing),
                None => Ok(()),
            });
        };
        if recorded.is_some_and(|k| k != vouch.member_key) {
            return Ok(Err(VouchRefusal::OtherKey));
        }
        let verifies = signed_by(
            &vouch.member_key,
            &publication_bytes(node_id, epoch, public),
            &vouch.signature,
        );
        Ok(if verifies {
            Ok(())
        } else {
            Err(VouchRefusal::BadSignature)
        })
    }

    /// Checks a key-ceremony step proposed as node `node_id`'s: with a
    /// member key recorded for it, `signature` must be that key's over
    /// [`step_bytes`]; without one (a step from before member keys, or a
    /// founder's before its first publication) anything passes, as before.
    pub(crate) fn check_step_signature(
        &self,
        tx: &WriteTransaction,
        node_id: u64,
        step: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<Result<(), String>, StoreError> {
        let Some(key) = self.member_key_in_tx(tx, node_id)? else {
            return Ok(Ok(()));
        };
        Ok(match signature {
            Some(sig) if signed_by(&key, &step_bytes(node_id, step), sig) => Ok(()),
            Some(_) => Err(format!(
                "the step's signature does not verify under node {node_id:016x}'s member key"
            )),
            None => Err(format!(
                "an unsigned step, but node {node_id:016x} has a member key"
            )),
        })
    }

    /// Records `approver`'s approval of node `joining`: its member key's
    /// signature over [`approval_bytes`] with `joining`'s recorded key.
    /// Returns the approvers so far, or why nothing changed.
    pub(crate) fn approve_join(
        &self,
        tx: &WriteTransaction,
        approver: u64,
        joining: u64,
        signature: &[u8],
    ) -> Result<Result<Vec<u64>, String>, StoreError> {
        if approver == joining {
            return Ok(Err("a server cannot approve its own join".into()));
        }
        let keys = tx.open_table(MEMBER_KEYS).map_err(db_err)?;
        let Some(approver_key) = self.member_key_in(&keys, approver)? else {
            return Ok(Err(format!(
                "node {approver:016x} has no member key recorded, so it cannot approve"
            )));
        };
        let Some(joining_key) = self.member_key_in(&keys, joining)? else {
            return Ok(Err(format!(
                "node {joining:016x} has no member key recorded: it has not joined"
            )));
        };
        if !signed_by(
            &approver_key,
            &approval_bytes(joining, &joining_key),
            signature,
        ) {
            return Ok(Err(format!(
                "the approval does not verify under the member key of node {approver:016x} \
                 for node {joining:016x}'s member key"
            )));
        }
        let mut table = tx.open_table(JOIN_APPROVALS).map_err(db_err)?;
        let mut approvers = approvers_in(&table, joining)?;
        if let Err(at) = approvers.binary_search(&approver) {
            approvers.insert(at, approver);
            table
                .insert(
                    joining,
                    postcard::to_allocvec(&approvers)
                        .expect("encodes")
                        .as_slice(),
                )
                .map_err(db_err)?;
        }
        Ok(Ok(approvers))
    }

    /// Drops the approvals of every node not in `nodes` (the membership an
    /// entry just made): an approval admits a server once, so one removed
    /// and joining again needs new approvals.
    pub(crate) fn forget_approvals_outside(
        &self,
        tx: &WriteTransaction,
        nodes: &[u64],
    ) -> Result<(), StoreError> {
        tx.open_table(JOIN_APPROVALS)
            .map_err(db_err)?
            .retain(|node, _| nodes.contains(&node))
            .map_err(db_err)
    }

    /// The members that approved node `joining`, in node id order.
    pub fn join_approvals(&self, joining: u64) -> Result<Vec<u64>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            approvers_in(&tx.open_table(JOIN_APPROVALS).map_err(db_err)?, joining)
        })
    }

    /// [`Store::join_approvals`] inside a write.
    pub(super) fn join_approvals_in(
        &self,
        tx: &WriteTransaction,
        joining: u64,
    ) -> Result<Vec<u64>, StoreError> {
        approvers_in(&tx.open_table(JOIN_APPROVALS).map_err(db_err)?, joining)
    }
}

fn approvers_in(
    table: &impl ReadableTable<u64, &'static [u8]>,
    joining: u64,
) -> Result<Vec<u64>, StoreError> {
    table
        .get(joining)
        .map_err(db_err)?
        .map_or(Ok(Vec::new()), |v| {
            postcard::from_bytes(v.value())
                .map_err(|e| corrupt("join_approvals", format!("{joining:016x}"), e))
        })
}
