//! Retention: how long voicemail for a user may wait before it expires
//! unread, for the users who chose one (`SetRetention`). A user without a
//! row has the group's default; the service resolves it, since the store
//! does not know the configuration. Its own table, so that a database made
//! before retention existed reads as "everyone has the default".

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::schema::RETENTION;
use super::{Store, StoreError, db_err};

impl Store {
    /// Sets `username`'s retention to `secs`; 0 removes the setting.
    pub(crate) fn set_retention(
        &self,
        tx: &WriteTransaction,
        username: &str,
        secs: u64,
    ) -> Result<(), StoreError> {
        let mut t = tx.open_table(RETENTION).map_err(db_err)?;
        if secs == 0 {
            t.remove(username).map_err(db_err)?;
        } else {
            t.insert(username, secs).map_err(db_err)?;
        }
        Ok(())
    }

    /// `username`'s chosen retention, seconds; `None` for the default.
    pub fn retention(&self, username: &str) -> Result<Option<u64>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(RETENTION).map_err(db_err)?;
            Ok(t.get(username).map_err(db_err)?.map(|v| v.value()))
        })
    }

    /// The shortest retention chosen among `usernames`, inside `tx`; `None`
    /// when none of them chose one.
    pub(super) fn shortest_retention_in(
        &self,
        tx: &WriteTransaction,
        usernames: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Option<u64>, StoreError> {
        let t = tx.open_table(RETENTION).map_err(db_err)?;
        let mut shortest = None;
        for u in usernames {
            if let Some(v) = t.get(u.as_ref()).map_err(db_err)? {
                shortest = Some(shortest.map_or(v.value(), |s: u64| s.min(v.value())));
            }
        }
        Ok(shortest)
    }
}
