//! The group's signing key as the `dkg` and `reshares` tables record it:
//! which ceremony made the shares that sign now (always the newest that
//! ended with a key, so a reshare under way or failed leaves it in place),
//! its threshold and roster, and what each ceremony reshares. The reads the
//! key generation duty, the signer and the apply of `dkg` steps share.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::dkg::{Ceremony, CeremonyEnd, Reshare, decode};
use super::schema::{DKG, RESHARES};
use super::{Store, StoreError, corrupt, db_err};
use crate::threshold::majority_threshold;

/// The ceremony that made the group's current key shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCeremony {
    /// Its number: the name of each member's key package file.
    pub number: u64,
    /// The members holding a share, by node id in order.
    pub roster: Vec<u64>,
    /// The group's Ed25519 public key.
    pub group_key: [u8; 32],
    /// How many members sign together.
    pub threshold: u16,
}

impl KeyCeremony {
    /// How many of `members` hold a share of this key: only share holders'
    /// approvals count towards the threshold a repair needs.
    pub fn holders_among(&self, members: &[u64]) -> usize {
        members.iter().filter(|m| self.roster.contains(m)).count()
    }
}

impl Store {
    /// The newest ceremony, if any began.
    pub fn current_ceremony(&self) -> Result<Option<(u64, Ceremony)>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(DKG).map_err(db_err)?;
            match table.last().map_err(db_err)? {
                Some((k, v)) => Ok(Some((k.value(), decode(k.value(), v.value())?))),
                None => Ok(None),
            }
        })
    }

    /// What ceremony `number` does to the group's key, if it reshares it.
    pub fn reshare(&self, number: u64) -> Result<Option<Reshare>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            reshare_row(&tx.open_table(RESHARES).map_err(db_err)?, number)
        })
    }

    pub(super) fn reshare_in(
        &self,
        tx: &WriteTransaction,
        number: u64,
    ) -> Result<Option<Reshare>, StoreError> {
        reshare_row(&tx.open_table(RESHARES).map_err(db_err)?, number)
    }

    /// Ceremony `number`, if it began.
    pub fn ceremony(&self, number: u64) -> Result<Option<Ceremony>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(DKG).map_err(db_err)?;
            table
                .get(number)
                .map_err(db_err)?
                .map(|v| decode(number, v.value()))
                .transpose()
        })
    }

    /// The ceremony whose shares are the group's key now, once one completed.
    pub fn key_ceremony(&self) -> Result<Option<KeyCeremony>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            key_ceremony(
                &tx.open_table(DKG).map_err(db_err)?,
                &tx.open_table(RESHARES).map_err(db_err)?,
            )
        })
    }

    pub(super) fn key_ceremony_in(
        &self,
        tx: &WriteTransaction,
    ) -> Result<Option<KeyCeremony>, StoreError> {
        key_ceremony(
            &tx.open_table(DKG).map_err(db_err)?,
            &tx.open_table(RESHARES).map_err(db_err)?,
        )
    }

    /// [`Store::group_key`] inside a write transaction.
    pub(crate) fn group_key_in(
        &self,
        tx: &WriteTransaction,
    ) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        Ok(self.key_ceremony_in(tx)?.map(|k| (k.number, k.group_key)))
    }

    /// The group key and the ceremony whose shares sign with it, once one
    /// completed.
    pub fn group_key(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        Ok(self.key_ceremony()?.map(|k| (k.number, k.group_key)))
    }
}

fn reshare_row(
    table: &impl ReadableTable<u64, &'static [u8]>,
    number: u64,
) -> Result<Option<Reshare>, StoreError> {
    table
        .get(number)
        .map_err(db_err)?
        .map(|v| {
            postcard::from_bytes(v.value()).map_err(|e| corrupt("reshares", number.to_string(), e))
        })
        .transpose()
}

/// The newest ceremony that ended with a key, and the key's threshold: the
/// reshare's, or the majority of a generation's roster.
fn key_ceremony(
    dkg: &impl ReadableTable<u64, &'static [u8]>,
    reshares: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Option<KeyCeremony>, StoreError> {
    for entry in dkg.iter().map_err(db_err)?.rev() {
        let (k, v) = entry.map_err(db_err)?;
        let number = k.value();
        let c = decode(number, v.value())?;
        let Some(CeremonyEnd::Key { group_key, .. }) = c.end else {
            continue;
        };
        let threshold = match reshare_row(reshares, number)? {
            Some(r) => r.threshold(),
            None => majority_threshold(c.roster.len())
                .map_err(|e| corrupt("dkg", number.to_string(), e))?,
        };
        return Ok(Some(KeyCeremony {
            number,
            roster: c.roster,
            group_key,
            threshold,
        }));
    }
    Ok(None)
}
