//! What ends a granted object before its expiry, or keeps it: the group's
//! deposit proof keeps a grant's objects past the proof grace period, and
//! its delete order removes them and leaves a tombstone that refuses them
//! back until the grant's expiry. Both are checked offline against the
//! pinned keys.

use std::collections::HashSet;

use vmail_proto::grant::{DeleteOrder, DepositProof, PROOF_GRACE_SECS};

use super::format::{PROOFS, TOMBSTONES, encode_tombstone, remove_if_present, write_durably};
use super::{Grave, Held, ObjectStore, ObjectStoreError, Tombstone};
use crate::core::locator::ObjectId;

impl ObjectStore {
    /// Checks a deposit proof in its one encoding against the cluster key
    /// and the grant `serial` it should prove.
    pub(super) fn check_proof(&self, bytes: &[u8], serial: u64) -> Result<(), ObjectStoreError> {
        let proof = DepositProof::from_bytes(bytes)?;
        proof.verify_pinned(self.cluster_key()?, self.policy.group_key.as_ref())?;
        if proof.serial != serial {
            return Err(ObjectStoreError::NotCovered { serial });
        }
        Ok(())
    }

    /// Writes a checked proof for grant `serial` durably, once.
    pub(super) fn keep_proof(&self, serial: u64, bytes: &[u8]) -> Result<(), ObjectStoreError> {
        if self.lock().proofs.contains_key(&serial) {
            return Ok(());
        }
        write_durably(
            &self.dir.join(PROOFS),
            &self.by_serial(PROOFS, serial),
            bytes,
        )?;
        self.lock().proofs.insert(serial, bytes.to_vec());
        Ok(())
    }

    /// Takes the group's deposit proof (its one encoding) for objects held
    /// here: checked against the cluster key and kept, so they are no
    /// longer dropped as never deposited. Returns how many objects it
    /// covers; a refusal is counted. Blocking.
    pub fn prove(&self, proof: &[u8]) -> Result<usize, ObjectStoreError> {
        self.counted(self.take_proof(proof))
    }

    fn take_proof(&self, bytes: &[u8]) -> Result<usize, ObjectStoreError> {
        let serial = DepositProof::from_bytes(bytes)?.serial;
        self.check_proof(bytes, serial)?;
        let held = self
            .lock()
            .index
            .values()
            .filter(|h| h.serial() == Some(serial))
            .count();
        if held == 0 {
            return Err(ObjectStoreError::NotHeld);
        }
        self.keep_proof(serial, bytes)?;
        Ok(held)
    }

    /// Granted objects whose grant no deposit proved: their upload window
    /// ended more than [`PROOF_GRACE_SECS`] before `now` and no proof came.
    pub fn unproven(&self, now: u64) -> Vec<ObjectId> {
        let s = self.lock();
        s.index
            .iter()
            .filter(|(_, h)| {
                h.grant.is_some_and(|(serial, upload_until)| {
                    upload_until.saturating_add(PROOF_GRACE_SECS) < now
                        && !s.proofs.contains_key(&serial)
                })
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Drops the proofs of grants of which nothing is held any more.
    /// Blocking.
    pub fn purge_proofs(&self) -> Result<usize, ObjectStoreError> {
        let old: Vec<u64> = {
            let s = self.lock();
            let live: HashSet<u64> = s.index.values().filter_map(Held::serial).collect();
            s.proofs
                .keys()
                .filter(|serial| !live.contains(serial))
                .copied()
                .collect()
        };
        for serial in &old {
            remove_if_present(&self.by_serial(PROOFS, *serial))?;
            self.lock().proofs.remove(serial);
        }
        Ok(old.len())
    }

    /// Carries out a delete order (its one encoding): checks it against
    /// the cluster key, removes every object of its grant, and keeps a
    /// tombstone until the grant's expiry so none of them is stored or
    /// repaired back. Returns the identifiers removed; an order seen before
    /// removes nothing and succeeds. A refusal is counted. Blocking.
    pub fn erase(&self, order: &[u8]) -> Result<Vec<ObjectId>, ObjectStoreError> {
        self.counted(self.carry_out(order))
    }

    fn carry_out(&self, order: &[u8]) -> Result<Vec<ObjectId>, ObjectStoreError> {
        let parsed = DeleteOrder::from_bytes(order)?;
        parsed.verify_pinned(self.cluster_key()?, self.policy.group_key.as_ref())?;
        let serial = parsed.serial;
        let ids: Vec<ObjectId> = {
            let s = self.lock();
            if s.graves.contains_key(&serial) {
                return Ok(Vec::new());
            }
            s.index
                .iter()
                .filter(|(_, h)| h.serial() == Some(serial))
                .map(|(id, _)| *id)
                .collect()
        };
        if ids.is_empty() {
            return Err(ObjectStoreError::NotHeld);
        }
        let tombstone = Tombstone {
            order: order.to_vec(),
            ids: ids.clone(),
        };
        write_durably(
            &self.dir.join(TOMBSTONES),
            &self.by_serial(TOMBSTONES, serial),
            &encode_tombstone(&tombstone),
        )?;
        self.lock().bury(
            serial,
            Grave {
                expires_at: parsed.expires_at,
                tombstone,
            },
        );
        for id in &ids {
            self.remove(id)?;
        }
        Ok(ids)
    }

    /// Drops the tombstones whose grant has expired: nothing they guard
    /// against can be stored any more. Returns how many. Blocking.
    pub fn purge_tombstones(&self, now: u64) -> Result<usize, ObjectStoreError> {
        let old: Vec<u64> = {
            let s = self.lock();
            s.graves
                .iter()
                .filter(|(_, g)| g.expires_at <= now)
                .map(|(serial, _)| *serial)
                .collect()
        };
        for serial in &old {
            remove_if_present(&self.by_serial(TOMBSTONES, *serial))?;
            let mut s = self.lock();
            if let Some(g) = s.graves.remove(serial) {
                for id in g.tombstone.ids {
                    s.gone.remove(&id);
                }
            }
        }
        Ok(old.len())
    }
}
