//! The Raft log and vote: the entries in a file of their own
//! ([`super::log_file`], `DATA_DIR/raft.log`), so appends never wait for the
//! applies' database transactions; the vote, the purge point and the commit
//! hint in the server's redb database (table `raft`).
//!
//! Every append is written and `fdatasync`ed before openraft is told it is
//! on disk. A purge records its point durably before it forgets entries,
//! and opening forgets again what a crash in between left. A data dir made
//! before the log had its own file has its entries in redb table
//! `raft_log`; opening moves them to the file, then empties the table.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TypeConfig;
use super::log_file::{LOG_FILE, LogFile};
use crate::metrics::AuthMetrics;
use crate::store::{RAFT, RAFT_LOG, Store, StoreError, db_err};

type SErr = StorageError<u64>;

/// The log store: the log file, and a handle on the shared [`Store`] for
/// the vote and the purge point.
#[derive(Debug, Clone)]
pub struct LogStore {
    store: Arc<Store>,
    log: Arc<Mutex<LogFile>>,
    metrics: Arc<AuthMetrics>,
}

impl LogStore {
    /// The log store of the data dir that holds `store`'s database. The
    /// first open makes the log file and moves into it the entries of an
    /// older data dir's `raft_log` table, then records (table `raft`, key
    /// `log_file`) that the log lives in the file; a crash in between is
    /// finished on the next open. Once recorded, a missing file is refused:
    /// the data dir is incomplete. Appends are timed in `metrics`.
    pub fn open(store: Arc<Store>, metrics: Arc<AuthMetrics>) -> Result<Self, StoreError> {
        let path = store
            .path()
            .parent()
            .map_or_else(|| LOG_FILE.into(), |dir| dir.join(LOG_FILE));
        let moved = get_meta::<bool>(&store, "log_file")?.unwrap_or(false);
        if moved && !path.exists() {
            return Err(StoreError::Corrupt {
                table: LOG_FILE,
                key: path.display().to_string(),
                why: "the file is missing, though this data dir keeps its Raft log there: the data dir is incomplete. Restore it whole from a backup, or wipe it and rejoin the group".into(),
            });
        }
        let mut log = LogFile::open(&path)?;
        if !moved {
            let old: Vec<(u64, Vec<u8>)> = store.run(|db| {
                let tx = db.begin_read().map_err(db_err)?;
                let t = tx.open_table(RAFT_LOG).map_err(db_err)?;
                t.iter()
                    .map_err(db_err)?
                    .map(|r| {
                        let (k, v) = r.map_err(db_err)?;
                        Ok((k.value(), v.value().to_vec()))
                    })
                    .collect()
            })?;
            // What an interrupted earlier open already moved is in the file.
            let last = log.last_index();
            let rest: Vec<_> = old
                .into_iter()
                .filter(|(i, _)| last.is_none_or(|l| *i > l))
                .collect();
            if let (Some(l), Some((first, _))) = (last, rest.first())
                && *first != l + 1
            {
                return Err(StoreError::Corrupt {
                    table: "raft_log",
                    key: first.to_string(),
                    why: format!(
                        "the database's log goes on at entry {first}, but {} ends at {l}: restore the data dir whole from a backup, or wipe it and rejoin the group",
                        path.display()
                    ),
                });
            }
            if !rest.is_empty() {
                log.append(&rest)?;
                tracing::info!(entries = rest.len(), path = %path.display(), "moved the Raft log out of the database into its own file");
            }
            let marker = encode(&true);
            store.write(|tx| {
                tx.open_table(RAFT_LOG)
                    .map_err(db_err)?
                    .retain(|_, _| false)
                    .map_err(db_err)?;
                tx.open_table(RAFT)
                    .map_err(db_err)?
                    .insert("log_file", marker.as_slice())
                    .map_err(db_err)?;
                Ok(())
            })?;
        }
        // A purge recorded before a crash, whose entries the file kept.
        if let Some(purged) = get_meta::<LogId<u64>>(&store, "purged")?
            && log.first().is_some_and(|first| first <= purged.index)
        {
            log.purge(purged.index)?;
        }
        Ok(Self {
            store,
            log: Arc::new(Mutex::new(log)),
            metrics,
        })
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

    /// Runs blocking work on the log file off the async threads.
    async fn on_log<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut LogFile) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || f(&mut log.lock().expect("log file lock")))
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
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        self.on_log(move |log| {
            log.read(start, end)?
                .into_iter()
                .map(|(i, bytes)| decode("raft.log", i, &bytes))
                .collect()
        })
        .await
        .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let purged: Option<LogId<u64>> = self
            .blocking(|s| get_meta(s, "purged"))
            .await
            .map_err(read_err)?;
        let last = self
            .on_log(|log| {
                log.last()?
                    .map(|(i, bytes)| decode::<Entry<TypeConfig>>("raft.log", i, &bytes))
                    .transpose()
            })
            .await
            .map_err(read_err)?
            .map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
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
        let result = self.on_log(move |log| log.append(&rows)).await;
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
        self.on_log(move |log| log.truncate(log_id.index))
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        self.blocking(move |s| put_meta(s, "purged", &log_id))
            .await
            .map_err(write_err)?;
        self.on_log(move |log| log.purge(log_id.index))
            .await
            .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};
    use vmail_proto::keys::SecretKey;

    use super::*;
    use crate::keys::KeyBinding;

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 7), index),
            payload: EntryPayload::Blank,
        }
    }

    async fn entries(log: &mut LogStore) -> Vec<u64> {
        log.try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    fn store(dir: &std::path::Path) -> Arc<Store> {
        let path = dir.join("vmail-auth.redb");
        let key = SecretKey::from_bytes([3; 32]);
        let binding = KeyBinding {
            opaque_public_key: [1; 32],
            cluster_public_key: [2; 32],
        };
        if !path.exists() {
            Store::create(&path, "auth-test", &key, &binding, 7, true).unwrap();
        }
        Arc::new(Store::open(&path, key, &binding).unwrap())
    }

    /// Entries 1..=`n` in the database's `raft_log` table, as a data dir
    /// from before the log had its own file holds them.
    fn old_table(s: &Store, n: u64) {
        s.write(|tx| {
            let mut t = tx.open_table(RAFT_LOG).map_err(db_err)?;
            for i in 1..=n {
                t.insert(i, encode(&entry(i)).as_slice()).map_err(db_err)?;
            }
            Ok(())
        })
        .unwrap();
    }

    /// A data dir from before the log had its own file: its entries move
    /// from the database's `raft_log` table to the file, once.
    #[tokio::test]
    async fn an_older_data_dirs_log_moves_to_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        old_table(&s, 4);
        let metrics = Arc::new(AuthMetrics::new());
        let mut log = LogStore::open(s.clone(), metrics.clone()).unwrap();
        assert_eq!(entries(&mut log).await, [1, 2, 3, 4]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
        let left = s
            .run(|db| {
                let tx = db.begin_read().map_err(db_err)?;
                let t = tx.open_table(RAFT_LOG).map_err(db_err)?;
                Ok(t.iter().map_err(db_err)?.count())
            })
            .unwrap();
        assert_eq!(left, 0, "the table is emptied");
        drop(log);
        let mut log = LogStore::open(s.clone(), metrics.clone()).unwrap();
        assert_eq!(entries(&mut log).await, [1, 2, 3, 4]);
        drop(log);

        // From now on the file is the log: losing it is refused, not
        // taken for an empty log.
        std::fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
        let e = LogStore::open(s, metrics).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("incomplete"), "{e}");
    }

    /// A move cut short by a crash (the file made, some entries in it, the
    /// table not yet emptied) is finished by the next open, nothing lost
    /// and nothing twice.
    #[tokio::test]
    async fn a_move_cut_short_is_finished_on_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        old_table(&s, 5);
        let mut partial = LogFile::open(&dir.path().join(LOG_FILE)).unwrap();
        partial
            .append(&[(1, encode(&entry(1))), (2, encode(&entry(2)))])
            .unwrap();
        drop(partial);
        let mut log = LogStore::open(s, Arc::new(AuthMetrics::new())).unwrap();
        assert_eq!(entries(&mut log).await, [1, 2, 3, 4, 5]);
    }

    /// A purge point recorded before a crash that kept the file's
    /// entries: opening forgets them again.
    #[tokio::test]
    async fn a_purge_cut_short_by_a_crash_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let metrics = Arc::new(AuthMetrics::new());
        let log = LogStore::open(s.clone(), metrics.clone()).unwrap();
        for i in 1..=5 {
            let rows = vec![(i, encode(&entry(i)))];
            log.on_log(move |f| f.append(&rows)).await.unwrap();
        }
        // The purge point is durable; the file was not told.
        put_meta(&s, "purged", &entry(3).log_id).unwrap();
        drop(log);
        let mut log = LogStore::open(s, metrics).unwrap();
        assert_eq!(entries(&mut log).await, [4, 5]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
    }
}
