//! The Raft log and vote, kept in the server's redb database next to the
//! state they produce (tables `raft_log` and `raft`).
//!
//! Each call is one durable redb transaction, so an appended entry is on
//! disk before openraft is told it is.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TypeConfig;
use crate::metrics::AuthMetrics;
use crate::store::{RAFT, RAFT_LOG, Store, StoreError, db_err};

type SErr = StorageError<u64>;

/// The log store: a handle on the shared [`Store`].
#[derive(Debug, Clone)]
pub struct LogStore {
    store: Arc<Store>,
    metrics: Arc<AuthMetrics>,
}

impl LogStore {
    /// A log store over `store`'s database; appends are timed in `metrics`.
    pub fn new(store: Arc<Store>, metrics: Arc<AuthMetrics>) -> Self {
        Self { store, metrics }
    }

    /// Runs blocking database work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .expect("log store task panicked")
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("in-memory encoding cannot fail")
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: impl ToString,
    b: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_string(),
        why: e.to_string(),
    })
}

/// Reads one value of the `raft` table.
pub(crate) fn get_meta<T: DeserializeOwned>(
    store: &Store,
    key: &'static str,
) -> Result<Option<T>, StoreError> {
    store.run(|db| {
        let tx = db.begin_read().map_err(db_err)?;
        let t = tx.open_table(RAFT).map_err(db_err)?;
        match t.get(key).map_err(db_err)? {
            Some(v) => Ok(Some(decode("raft", key, v.value())?)),
            None => Ok(None),
        }
    })
}

/// Writes one value of the `raft` table, durably.
pub(crate) fn put_meta<T: Serialize>(
    store: &Store,
    key: &'static str,
    v: &T,
) -> Result<(), StoreError> {
    let bytes = encode(v);
    store.write(|tx| {
        tx.open_table(RAFT)
            .map_err(db_err)?
            .insert(key, bytes.as_slice())
            .map_err(db_err)?;
        Ok(())
    })
}

fn read_err(e: StoreError) -> SErr {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: StoreError) -> SErr {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i + 1),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        self.blocking(move |s| {
            s.run(|db| {
                let tx = db.begin_read().map_err(db_err)?;
                let t = tx.open_table(RAFT_LOG).map_err(db_err)?;
                let mut out = Vec::new();
                let iter = match end {
                    Some(e) if e <= start => return Ok(out),
                    Some(e) => t.range(start..e).map_err(db_err)?,
                    None => t.range(start..).map_err(db_err)?,
                };
                for item in iter {
                    let (k, v) = item.map_err(db_err)?;
                    out.push(decode("raft_log", k.value(), v.value())?);
                }
                Ok(out)
            })
        })
        .await
        .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        self.blocking(|s| {
            let purged: Option<LogId<u64>> = get_meta(s, "purged")?;
            let last = s.run(|db| {
                let tx = db.begin_read().map_err(db_err)?;
                let t = tx.open_table(RAFT_LOG).map_err(db_err)?;
                match t.last().map_err(db_err)? {
                    Some((k, v)) => {
                        let e: Entry<TypeConfig> = decode("raft_log", k.value(), v.value())?;
                        Ok(Some(e.log_id))
                    }
                    None => Ok(None),
                }
            })?;
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last.or(purged),
            })
        })
        .await
        .map_err(read_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        let vote = *vote;
        self.blocking(move |s| put_meta(s, "vote", &vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        self.blocking(|s| get_meta(s, "vote"))
            .await
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        // A hint for a faster restart, not needed for safety: not fsynced.
        let bytes = encode(&committed);
        self.blocking(move |s| {
            s.write_with(redb::Durability::None, |tx| {
                tx.open_table(RAFT)
                    .map_err(db_err)?
                    .insert("committed", bytes.as_slice())
                    .map_err(db_err)?;
                Ok(())
            })
        })
        .await
        .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        self.blocking(|s| Ok(get_meta::<Option<LogId<u64>>>(s, "committed")?.flatten()))
            .await
            .map_err(read_err)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, encode(&e)))
            .collect();
        let since = std::time::Instant::now();
        let result = self
            .blocking(move |s| {
                s.write(|tx| {
                    let mut t = tx.open_table(RAFT_LOG).map_err(db_err)?;
                    for (i, bytes) in &rows {
                        t.insert(*i, bytes.as_slice()).map_err(db_err)?;
                    }
                    Ok(())
                })
            })
            .await;
        self.metrics.appended(since);
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "appending to the Raft log failed");
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        self.blocking(move |s| {
            s.write(|tx| {
                let mut t = tx.open_table(RAFT_LOG).map_err(db_err)?;
                t.retain_in(log_id.index.., |_, _| false).map_err(db_err)?;
                Ok(())
            })
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let bytes = encode(&log_id);
        self.blocking(move |s| {
            s.write(|tx| {
                tx.open_table(RAFT)
                    .map_err(db_err)?
                    .insert("purged", bytes.as_slice())
                    .map_err(db_err)?;
                let mut t = tx.open_table(RAFT_LOG).map_err(db_err)?;
                t.retain_in(..=log_id.index, |_, _| false).map_err(db_err)?;
                Ok(())
            })
        })
        .await
        .map_err(write_err)
    }
}
