//! The Raft log as an append-only file of its own, `DATA_DIR/raft.log`, so
//! an append is one write and one `fdatasync` and never waits for the
//! database's write lock, which the applies hold (docs/PROTOCOL.md §16.3).
//!
//! Each entry is one record, integers big-endian:
//!
//! ```text
//! record = len u32 || check (8) || index u64 || entry (len bytes, postcard)
//! check  = SHA-256(len || index || entry)[..8]
//! ```
//!
//! Opening reads every record and keeps each index's place in memory. A
//! record cut short, or failing its check where it is the last record or
//! only zeros follow, is a torn append (the write never completed, so
//! openraft was never told it did) and is cut off with everything after
//! it; one anywhere else is corruption, and the server refuses to start. Truncation cuts the file; a purge forgets the records
//! and rewrites the file without them once they are most of it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Bound;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::store::{StoreError, db_err};

/// The log's file name in the data directory.
pub(super) const LOG_FILE: &str = "raft.log";
const HEADER: u64 = 4 + 8 + 8;
/// Largest entry accepted when reading: far above what the batcher makes.
const MAX_ENTRY: u32 = 64 << 20;
/// A purged prefix is rewritten away once it is past this size and half the
/// file.
const COMPACT_AT: u64 = 1 << 20;

fn io(e: std::io::Error) -> StoreError {
    db_err(redb::Error::Io(e))
}

fn corrupt(path: &Path, offset: u64, why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table: LOG_FILE,
        key: format!("at byte {offset} of {}", path.display()),
        why: format!(
            "{why}. The log is damaged in the middle, not by a torn append: restore the data dir from a backup, or wipe it and rejoin the group"
        ),
    }
}

fn check(len: u32, index: u64, entry: &[u8]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(len.to_be_bytes());
    h.update(index.to_be_bytes());
    h.update(entry);
    h.finalize()[..8].try_into().expect("8 bytes")
}

fn record(index: u64, entry: &[u8]) -> Vec<u8> {
    let len = u32::try_from(entry.len()).expect("an entry under 4 GiB");
    let mut out = Vec::with_capacity(HEADER as usize + entry.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&check(len, index, entry));
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(entry);
    out
}

/// Makes a directory entry change durable.
fn sync_dir(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(dir) => File::open(dir).and_then(|d| d.sync_all()).map_err(io),
        None => Ok(()),
    }
}

/// The open log file and where each entry is in it.
#[derive(Debug)]
pub(super) struct LogFile {
    path: PathBuf,
    file: File,
    /// Entry index → (offset of its record, entry length).
    places: BTreeMap<u64, (u64, u32)>,
    /// Where the next record goes.
    end: u64,
}

impl LogFile {
    /// Opens (or creates, empty) the log at `path`, cutting off a torn
    /// last record.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        if created {
            file.sync_all().map_err(io)?;
            sync_dir(path)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let size = bytes.len() as u64;
        let mut places = BTreeMap::new();
        let mut at = 0u64;
        while at < size {
            let rest = &bytes[at as usize..];
            let torn = |why: &str| -> Result<(), StoreError> {
                tracing::warn!(path = %path.display(), offset = at, why, "cutting off a torn append at the end of the Raft log");
                Ok(())
            };
            if rest.len() < HEADER as usize {
                torn("a record header cut short")?;
                break;
            }
            let len = u32::from_be_bytes(rest[..4].try_into().expect("4"));
            let index = u64::from_be_bytes(rest[12..20].try_into().expect("8"));
            if len > MAX_ENTRY {
                return Err(corrupt(path, at, format!("a record of {len} bytes")));
            }
            let whole = HEADER + u64::from(len);
            if (rest.len() as u64) < whole {
                torn("a record cut short")?;
                break;
            }
            let entry = &rest[HEADER as usize..whole as usize];
            if check(len, index, entry) != rest[4..12] {
                // An append that never completed leaves its records cut or
                // its space unwritten (zeros) up to the end of the file.
                if at + whole == size || rest.iter().all(|b| *b == 0) {
                    torn("the last records fail their check")?;
                    break;
                }
                return Err(corrupt(path, at, "a record fails its check"));
            }
            if places
                .last_key_value()
                .is_some_and(|(&last, _)| index != last + 1)
            {
                return Err(corrupt(
                    path,
                    at,
                    format!("entry {index} does not follow the one before"),
                ));
            }
            places.insert(index, (at, len));
            at += whole;
        }
        if at < size {
            file.set_len(at).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            places,
            end: at,
        })
    }

    /// Appends `entries` (index, encoded entry), in order after the last,
    /// and makes them durable before returning.
    pub(super) fn append(&mut self, entries: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        let mut at = self.end;
        let mut placed = Vec::with_capacity(entries.len());
        for (index, entry) in entries {
            let r = record(*index, entry);
            placed.push((*index, (at, entry.len() as u32)));
            at += r.len() as u64;
            buf.extend_from_slice(&r);
        }
        let written = self
            .file
            .write_all_at(&buf, self.end)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Whatever reached the file past `end` is not part of the log.
            let _ = self.file.set_len(self.end);
            return Err(io(e));
        }
        self.places.extend(placed);
        self.end = at;
        Ok(())
    }

    /// The encoded entries with indexes in `range`, in order.
    pub(super) fn read(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let inverted = match (start, end) {
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a > b
                    || (a == b && !matches!((start, end), (Bound::Included(_), Bound::Included(_))))
            }
            _ => false,
        };
        if inverted {
            return Ok(Vec::new());
        }
        let Some(first) = self.places.range((start, end)).next() else {
            return Ok(Vec::new());
        };
        let last = self
            .places
            .range((start, end))
            .next_back()
            .expect("non-empty");
        let (from, (to, to_len)) = (first.1.0, *last.1);
        let mut bytes = vec![0; (to + HEADER + u64::from(to_len) - from) as usize];
        self.file.read_exact_at(&mut bytes, from).map_err(io)?;
        Ok(self
            .places
            .range((start, end))
            .map(|(&index, &(offset, len))| {
                let at = (offset - from + HEADER) as usize;
                (index, bytes[at..at + len as usize].to_vec())
            })
            .collect())
    }

    /// The last entry, if any.
    pub(super) fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let Some(&last) = self.places.keys().next_back() else {
            return Ok(None);
        };
        Ok(self
            .read(Bound::Included(last), Bound::Included(last))?
            .pop())
    }

    /// Removes the entries from `since` on, durably.
    pub(super) fn truncate(&mut self, since: u64) -> Result<(), StoreError> {
        let Some((&first, &(offset, _))) = self.places.range(since..).next() else {
            return Ok(());
        };
        self.file.set_len(offset).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.places.split_off(&first);
        self.end = offset;
        Ok(())
    }

    /// Forgets the entries up to `upto`, durably: the file is emptied when
    /// none is left (so a later entry never follows a gap), and rewritten
    /// without them once they are past [`COMPACT_AT`] and half of it. The
    /// caller records the purge point durably first.
    pub(super) fn purge(&mut self, upto: u64) -> Result<(), StoreError> {
        self.places = self.places.split_off(&(upto + 1));
        let Some(&(dead, _)) = self.places.values().next() else {
            self.file.set_len(0).map_err(io)?;
            self.file.sync_data().map_err(io)?;
            self.end = 0;
            return Ok(());
        };
        if dead < COMPACT_AT || dead * 2 < self.end {
            return Ok(());
        }
        let live = self.read(Bound::Unbounded, Bound::Unbounded)?;
        let tmp = self.path.with_extension("log.new");
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let mut places = BTreeMap::new();
        let mut at = 0u64;
        for (index, entry) in &live {
            let r = record(*index, entry);
            out.write_all(&r).map_err(io)?;
            places.insert(*index, (at, entry.len() as u32));
            at += r.len() as u64;
        }
        out.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        sync_dir(&self.path)?;
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io)?;
        self.places = places;
        self.end = at;
        Ok(())
    }

    /// The first entry's index, if any.
    pub(super) fn first(&self) -> Option<u64> {
        self.places.keys().next().copied()
    }

    /// The last entry's index, if any.
    pub(super) fn last_index(&self) -> Option<u64> {
        self.places.keys().next_back().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range
            .map(|i| {
                (
                    i,
                    format!("entry {i}").repeat(i as usize % 7 + 1).into_bytes(),
                )
            })
            .collect()
    }

    fn all(log: &LogFile) -> Vec<(u64, Vec<u8>)> {
        log.read(Bound::Unbounded, Bound::Unbounded).unwrap()
    }

    #[test]
    fn appends_survive_a_reopen_and_truncate_and_purge_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut log = LogFile::open(&path).unwrap();
        assert_eq!(log.first(), None);
        log.append(&entries(1..6)).unwrap();
        log.append(&entries(6..9)).unwrap();
        assert_eq!(all(&log), entries(1..9));
        assert_eq!(
            log.read(Bound::Included(3), Bound::Excluded(5)).unwrap(),
            entries(3..5)
        );
        assert_eq!(log.last().unwrap(), entries(8..9).pop());
        assert!(
            log.read(Bound::Included(5), Bound::Excluded(5))
                .unwrap()
                .is_empty()
        );
        assert!(
            log.read(Bound::Included(6), Bound::Included(2))
                .unwrap()
                .is_empty()
        );
        drop(log);

        let mut log = LogFile::open(&path).unwrap();
        assert_eq!(all(&log), entries(1..9));
        log.truncate(6).unwrap();
        log.append(&entries(6..7)).unwrap();
        log.purge(2).unwrap();
        assert_eq!(all(&log), entries(3..7));
        drop(log);
        // Until the file is rewritten it keeps purged records: the purge
        // point lives with the vote, and the log store purges again on open.
        let mut log = LogFile::open(&path).unwrap();
        assert_eq!(all(&log), entries(1..7));
        log.purge(2).unwrap();
        assert_eq!(all(&log), entries(3..7));

        // A snapshot past the last entry purges it all: the next entry
        // follows a gap in indexes, and the file still opens.
        log.purge(40).unwrap();
        assert_eq!(log.first(), None);
        log.append(&entries(41..43)).unwrap();
        drop(log);
        assert_eq!(all(&LogFile::open(&path).unwrap()), entries(41..43));
    }

    #[test]
    fn a_purged_prefix_is_rewritten_away_once_it_is_most_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut log = LogFile::open(&path).unwrap();
        let big: Vec<(u64, Vec<u8>)> = (1..=300).map(|i| (i, vec![i as u8; 8 * 1024])).collect();
        log.append(&big).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        log.purge(290).unwrap();
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(after * 20 < before, "{before} → {after} bytes");
        assert_eq!(all(&log), big[290..].to_vec());
        log.append(&[(301, b"next".to_vec())]).unwrap();
        drop(log);
        let log = LogFile::open(&path).unwrap();
        assert_eq!(log.last().unwrap(), Some((301, b"next".to_vec())));
        assert_eq!(all(&log).len(), 11);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_damage_before_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut log = LogFile::open(&path).unwrap();
        log.append(&entries(1..4)).unwrap();
        drop(log);
        let good = std::fs::read(&path).unwrap();

        // Cut anywhere inside the last record: the first two remain, and the
        // next append goes where the torn one was.
        let last = record(3, &entries(3..4)[0].1).len();
        for cut in [1, 10, last - 1] {
            std::fs::write(&path, &good[..good.len() - cut]).unwrap();
            let mut log = LogFile::open(&path).unwrap();
            assert_eq!(all(&log), entries(1..3), "cut {cut}");
            log.append(&entries(3..4)).unwrap();
            drop(log);
            assert_eq!(std::fs::read(&path).unwrap(), good);
        }
        // An append whose space was never written: zeros after the good
        // records, however long.
        for zeros in [1usize, 20, 4096] {
            std::fs::write(&path, [&good[..], &vec![0u8; zeros]].concat()).unwrap();
            assert_eq!(
                all(&LogFile::open(&path).unwrap()),
                entries(1..4),
                "{zeros} zeros"
            );
        }
        // A flipped byte in the last record is a torn append too.
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(all(&LogFile::open(&path).unwrap()), entries(1..3));

        // In the first record, it is corruption, named.
        let mut damaged = good.clone();
        damaged[HEADER as usize] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let e = LogFile::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("at byte 0") && e.contains("fails its check"),
            "{e}"
        );
        // So is an oversize length or a gap in the indexes.
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(LogFile::open(&path).is_err());
        let gap = [record(1, b"one"), record(3, b"three"), record(4, b"four")].concat();
        std::fs::write(&path, gap).unwrap();
        let e = LogFile::open(&path).unwrap_err().to_string();
        assert!(e.contains("does not follow"), "{e}");
    }
}
