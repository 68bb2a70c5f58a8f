//! The Raft log and vote, kept in the server's redb database next to the
//! state they produce (tables `raft_log` and `raft`).
//!
//! Group commit: openraft hands over each client write as its own append,
//! one after another. Appends go to one writer thread, which commits every
//! append queued while its last fsync ran in one durable transaction, and
//! only then tells openraft they are flushed. Until then the entries wait in
//! an in-memory map that reads consult first. Truncation, purging and the
//! vote go through the same queue, so every change reaches disk in the
//! order openraft made it.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TypeConfig;
use crate::store::{RAFT, RAFT_LOG, Store, StoreError, db_err};

type SErr = StorageError<u64>;

/// Encoded entries appended but not yet committed, by index.
type Pending = Arc<Mutex<BTreeMap<u64, Vec<u8>>>>;

/// Encoded entries: (log index, postcard `Entry`).
type Rows = Vec<(u64, Vec<u8>)>;

/// A write run in its turn by the writer thread.
type Job = Box<dyn FnOnce(&Store) -> Result<(), StoreError> + Send>;

/// Work for the writer thread.
enum Op {
    /// Append encoded entries, then report the flush to openraft.
    Append {
        rows: Rows,
        done: LogFlushed<TypeConfig>,
    },
    /// The commit hint: the newest one queued is written with the next
    /// group of appends, or alone (not fsynced) when none follow.
    Committed(Vec<u8>),
    /// Any other write, in queue order.
    Run {
        job: Job,
        done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The writer thread and its queue. Dropping the last handle closes the
/// queue and waits for the thread, so the database is released on return.
#[derive(Debug)]
struct Writer {
    queue: Option<mpsc::Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The log store: a handle on the shared [`Store`] and its writer thread.
#[derive(Debug, Clone)]
pub struct LogStore {
    store: Arc<Store>,
    pending: Pending,
    writer: Arc<Writer>,
}

impl LogStore {
    /// A log store over `store`'s database; starts its writer thread.
    pub fn new(store: Arc<Store>) -> Result<Self, StoreError> {
        let pending = Pending::default();
        let (queue, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn({
                let store = store.clone();
                let pending = pending.clone();
                move || write_loop(&store, &pending, &rx)
            })
            .map_err(|e| StoreError::Db(e.into()))?;
        Ok(Self {
            store,
            pending,
            writer: Arc::new(Writer {
                queue: Some(queue),
                thread: Some(thread),
            }),
        })
    }

    fn enqueue(&self, op: Op) -> Result<(), StoreError> {
        self.writer
            .queue
            .as_ref()
            .and_then(|q| q.send(op).ok())
            .ok_or_else(|| writer_stopped("the Raft log writer has stopped"))
    }

    /// Runs a write after everything queued before it.
    async fn ordered(
        &self,
        job: impl FnOnce(&Store) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.enqueue(Op::Run {
            job: Box::new(job),
            done,
        })?;
        result.await.unwrap_or_else(|_| {
            Err(writer_stopped(
                "the Raft log writer stopped before the write ran",
            ))
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
}

fn writer_stopped(why: &str) -> StoreError {
    StoreError::Db(std::io::Error::other(why).into())
}

/// The writer thread: takes everything queued, commits each run of appends
/// in one durable transaction, and runs other writes in their turn.
fn write_loop(store: &Store, pending: &Pending, rx: &mpsc::Receiver<Op>) {
    let mut queue = VecDeque::new();
    while let Ok(op) = rx.recv() {
        queue.push_back(op);
        queue.extend(rx.try_iter());
        let mut hint = None;
        while let Some(op) = queue.pop_front() {
            match op {
                Op::Committed(bytes) => hint = Some(bytes),
                Op::Run { job, done } => {
                    let _ = done.send(job(store));
                }
                Op::Append { rows, done } => {
                    let mut group = vec![(rows, done)];
                    loop {
                        match queue.pop_front() {
                            Some(Op::Append { rows, done }) => group.push((rows, done)),
                            Some(Op::Committed(bytes)) => hint = Some(bytes),
                            Some(other) => {
                                queue.push_front(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    commit_appends(store, pending, group, hint.take());
                }
            }
        }
        if let Some(bytes) = hint {
            let written = store.write_with(redb::Durability::None, |tx| put_hint(tx, &bytes));
            if let Err(e) = written {
                tracing::warn!(error = %e, "saving the commit hint failed");
            }
        }
    }
}

fn put_hint(tx: &redb::WriteTransaction, bytes: &[u8]) -> Result<(), StoreError> {
    tx.open_table(RAFT)
        .map_err(db_err)?
        .insert("committed", bytes)
        .map_err(db_err)?;
    Ok(())
}

fn commit_appends(
    store: &Store,
    pending: &Pending,
    group: Vec<(Rows, LogFlushed<TypeConfig>)>,
    hint: Option<Vec<u8>>,
) {
    let result = store.write(|tx| {
        let mut t = tx.open_table(RAFT_LOG).map_err(db_err)?;
        for (rows, _) in &group {
            for (i, bytes) in rows {
                t.insert(*i, bytes.as_slice()).map_err(db_err)?;
            }
        }
        if let Some(bytes) = &hint {
            put_hint(tx, bytes)?;
        }
        Ok(())
    });
    if result.is_ok() {
        let mut p = pending.lock().expect("pending entries lock");
        for (i, bytes) in group.iter().flat_map(|(rows, _)| rows) {
            if p.get(i) == Some(bytes) {
                p.remove(i);
            }
        }
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, "appending to the Raft log failed");
    }
    for (_, done) in group {
        done.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
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
        // Pending entries first: one committed after this look is in redb
        // by the time redb is read.
        let queued: BTreeMap<u64, Vec<u8>> = {
            let p = self.pending.lock().expect("pending entries lock");
            match end {
                Some(e) if e <= start => return Ok(Vec::new()),
                Some(e) => p.range(start..e),
                None => p.range(start..),
            }
            .map(|(i, b)| (*i, b.clone()))
            .collect()
        };
        self.blocking(move |s| {
            let mut rows = s.run(|db| {
                let tx = db.begin_read().map_err(db_err)?;
                let t = tx.open_table(RAFT_LOG).map_err(db_err)?;
                let iter = match end {
                    Some(e) => t.range(start..e).map_err(db_err)?,
                    None => t.range(start..).map_err(db_err)?,
                };
                let mut rows = BTreeMap::new();
                for item in iter {
                    let (k, v) = item.map_err(db_err)?;
                    rows.insert(k.value(), v.value().to_vec());
                }
                Ok(rows)
            })?;
            rows.extend(queued);
            rows.iter().map(|(i, b)| decode("raft_log", i, b)).collect()
        })
        .await
        .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        // Pending first, as in reads: a commit in between lands in redb.
        let queued = {
            let p = self.pending.lock().expect("pending entries lock");
            p.last_key_value().map(|(i, b)| (*i, b.clone()))
        };
        let queued = match queued {
            Some((i, b)) => Some(
                decode::<Entry<TypeConfig>>("raft_log", i, &b)
                    .map_err(read_err)?
                    .log_id,
            ),
            None => None,
        };
        let (purged, last) = self
            .blocking(|s| {
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
                Ok((purged, last))
            })
            .await
            .map_err(read_err)?;
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: queued.max(last).or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        let vote = *vote;
        self.ordered(move |s| put_meta(s, "vote", &vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        self.blocking(|s| get_meta(s, "vote"))
            .await
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        // A hint for a faster restart, not needed for safety: queued, not
        // waited for, so it never holds up the Raft core.
        self.enqueue(Op::Committed(encode(&committed)))
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
        let rows: Rows = entries
            .into_iter()
            .map(|e| (e.log_id.index, encode(&e)))
            .collect();
        self.pending
            .lock()
            .expect("pending entries lock")
            .extend(rows.iter().cloned());
        // Returns at once; the writer reports the flush through `callback`.
        self.enqueue(Op::Append {
            rows,
            done: callback,
        })
        .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let pending = self.pending.clone();
        self.ordered(move |s| {
            // Appends queued before this one are committed by now.
            pending
                .lock()
                .expect("pending entries lock")
                .retain(|i, _| *i < log_id.index);
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
        self.ordered(move |s| {
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
