//! Snapshots of the user-facing tables: every row as stored (secrets stay
//! sealed), out for a Raft snapshot and back in when one is installed.
//!
//! A snapshot is postcard [`Dump`] followed by postcard [`Added`], the
//! tables added within schema version 3, then postcard [`Spam`], the
//! spam-control tables added after those, then postcard [`Shares`], the
//! published share keys, then postcard [`Ceremonies`], the key-generation
//! record, then postcard [`Reshares`], which of its ceremonies reshare
//! the key, then postcard [`Rosters`], the share keys each grant hands
//! out, then postcard [`Members`], the member keys and join approvals.
//! postcard records no field names, so a snapshot made before a
//! part existed (nothing after the part before it) installs with that
//! part's tables empty.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::schema::{
    DKG, FIRST_CONTACTS, GRANT_ADMISSIONS, GRANT_ROSTERS, GRANTS, INVITES, JOIN_APPROVALS,
    MEMBER_KEYS, META, NEXT_GRANT_SERIAL, NOTES, OPEN_GRANTS, POLICIES, RAFT, RECEIPTS, REPORTS,
    REQUESTS, RESHARES, RETENTION, SENDERS, SESSIONS, SHARE_KEYS, STORAGE_GRANTS, USERS,
    VOICEMAIL_GRANTS, VOICEMAILS, WAITING,
};
use super::{Store, StoreError, corrupt, db_err, u64_le};

/// A `requests` row key: (sender, request id).
type RequestKey = (String, Vec<u8>);
/// A `receipts` row key: (sender, voicemail id).
type ReceiptKey = (String, Vec<u8>);

/// The snapshot form of the user-facing tables: every row as stored.
#[derive(Serialize, Deserialize)]
struct Dump {
    next_serial: u64,
    users: Vec<(String, Vec<u8>)>,
    sessions: Vec<(Vec<u8>, Vec<u8>)>,
    voicemails: Vec<(Vec<u8>, Vec<u8>)>,
    grants: Vec<(String, Vec<u8>)>,
    requests: Vec<(RequestKey, Vec<u8>)>,
    invites: Vec<(String, String)>,
    waiting: Vec<(String, u64)>,
    next_grant_serial: u64,
    storage_grants: Vec<(u64, Vec<u8>)>,
    open_grants: Vec<((String, u64), u64)>,
    voicemail_grants: Vec<(Vec<u8>, u64)>,
}

/// The tables added after [`Dump`] was fixed, written after it.
#[derive(Default, Serialize, Deserialize)]
struct Added {
    retention: Vec<(String, u64)>,
    receipts: Vec<(ReceiptKey, Vec<u8>)>,
}

/// A (name, name) key: `reports` and `first_contacts`.
type PairKey = (String, String);

/// The spam-control tables, written after [`Added`].
#[derive(Default, Serialize, Deserialize)]
struct Spam {
    policies: Vec<(String, Vec<u8>)>,
    senders: Vec<(String, Vec<u8>)>,
    reports: Vec<(PairKey, u64)>,
    notes: Vec<(ReceiptKey, Vec<u8>)>,
    first_contacts: Vec<(PairKey, u64)>,
    grant_admissions: Vec<(u64, Vec<u8>)>,
}

/// The published share keys, written after [`Spam`].
#[derive(Default, Serialize, Deserialize)]
struct Shares {
    share_keys: Vec<((u64, u32), Vec<u8>)>,
}

/// The key-generation record, written after [`Shares`].
#[derive(Default, Serialize, Deserialize)]
struct Ceremonies {
    dkg: Vec<(u64, Vec<u8>)>,
}

/// The resharing ceremonies, written after [`Ceremonies`].
#[derive(Default, Serialize, Deserialize)]
struct Reshares {
    reshares: Vec<(u64, Vec<u8>)>,
}

/// The grants' share-key rosters, written after [`Reshares`].
#[derive(Default, Serialize, Deserialize)]
struct Rosters {
    grant_rosters: Vec<(u64, Vec<u8>)>,
}

/// The member keys and join approvals, written after [`Rosters`].
#[derive(Default, Serialize, Deserialize)]
struct Members {
    member_keys: Vec<(u64, Vec<u8>)>,
    join_approvals: Vec<(u64, Vec<u8>)>,
}

/// Every part of a snapshot.
type Parts = (
    Dump,
    Added,
    Spam,
    Shares,
    Ceremonies,
    Reshares,
    Rosters,
    Members,
);

/// Reads a snapshot's bytes: the [`Dump`], then each later part
/// ([`Added`], [`Spam`], [`Shares`], [`Ceremonies`], [`Reshares`],
/// [`Rosters`], [`Members`]) if
/// bytes follow; a
/// snapshot an older server made ends early, and the parts it lacks are
/// empty.
fn parse(bytes: &[u8]) -> Result<Parts, StoreError> {
    fn part<T: Default + serde::de::DeserializeOwned>(
        rest: &mut &[u8],
        what: &str,
    ) -> Result<T, StoreError> {
        if rest.is_empty() {
            return Ok(T::default());
        }
        let (value, tail) =
            postcard::take_from_bytes(rest).map_err(|e| corrupt("snapshot", what, e))?;
        *rest = tail;
        Ok(value)
    }
    let (dump, mut rest): (Dump, _) =
        postcard::take_from_bytes(bytes).map_err(|e| corrupt("snapshot", "data", e))?;
    let added = part(&mut rest, "added tables")?;
    let spam = part(&mut rest, "spam tables")?;
    let shares = part(&mut rest, "share keys")?;
    let ceremonies = part(&mut rest, "key generation")?;
    let reshares = part(&mut rest, "reshares")?;
    let rosters = part(&mut rest, "grant rosters")?;
    let members = part(&mut rest, "member keys")?;
    if !rest.is_empty() {
        return Err(corrupt(
            "snapshot",
            "end",
            format!("{} bytes after the last part", rest.len()),
        ));
    }
    Ok((
        dump, added, spam, shares, ceremonies, reshares, rosters, members,
    ))
}

fn encode_all(
    (dump, added, spam, shares, ceremonies, reshares, rosters, members): &Parts,
) -> Vec<u8> {
    let mut out = postcard::to_allocvec(dump).expect("in-memory encoding cannot fail");
    out.extend(postcard::to_allocvec(added).expect("in-memory encoding cannot fail"));
    out.extend(postcard::to_allocvec(spam).expect("in-memory encoding cannot fail"));
    out.extend(postcard::to_allocvec(shares).expect("in-memory encoding cannot fail"));
    out.extend(postcard::to_allocvec(ceremonies).expect("in-memory encoding cannot fail"));
    out.extend(postcard::to_allocvec(reshares).expect("in-memory encoding cannot fail"));
    out.extend(postcard::to_allocvec(rosters).expect("in-memory encoding cannot fail"));
    out.extend(postcard::to_allocvec(members).expect("in-memory encoding cannot fail"));
    out
}

/// Reads a snapshot as [`Store::import`] does and encodes what it read as
/// [`Store::export`] would. Public (hidden) for the fuzz targets in
/// `tests/fuzz`, which check that this is idempotent.
#[doc(hidden)]
pub fn reencode_snapshot(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    Ok(encode_all(&parse(bytes)?))
}

impl Store {
    /// Every user-facing row, for a Raft snapshot (rows keep their sealing),
    /// and the raw `applied` marker read in the same transaction. Public
    /// (hidden) for the seed generator of the fuzz targets in `tests/fuzz`.
    #[doc(hidden)]
    pub fn export(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), StoreError> {
        fn rows<K: redb::Key + 'static, V: redb::Value + 'static, A, B>(
            tx: &redb::ReadTransaction,
            def: TableDefinition<K, V>,
            f: impl Fn(K::SelfType<'_>, V::SelfType<'_>) -> (A, B),
        ) -> Result<Vec<(A, B)>, StoreError> {
            let table = tx.open_table(def).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                out.push(f(k.value(), v.value()));
            }
            Ok(out)
        }
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let meta = tx.open_table(META).map_err(db_err)?;
            let counter = |key: &'static str| {
                meta.get(key)
                    .map_err(db_err)?
                    .and_then(|v| u64_le(v.value()))
                    .ok_or_else(|| corrupt("meta", key, "missing"))
            };
            let next_serial = counter("next_serial")?;
            let next_grant_serial = counter(NEXT_GRANT_SERIAL)?;
            let dump = Dump {
                next_serial,
                users: rows(&tx, USERS, |k, v| (k.to_owned(), v.to_vec()))?,
                sessions: rows(&tx, SESSIONS, |k, v| (k.to_vec(), v.to_vec()))?,
                voicemails: rows(&tx, VOICEMAILS, |k, v| (k.to_vec(), v.to_vec()))?,
                grants: rows(&tx, GRANTS, |(u, id), ()| (u.to_owned(), id.to_vec()))?,
                requests: rows(&tx, REQUESTS, |(u, id), v| {
                    ((u.to_owned(), id.to_vec()), v.to_vec())
                })?,
                invites: rows(&tx, INVITES, |k, v| (k.to_owned(), v.to_owned()))?,
                waiting: rows(&tx, WAITING, |k, v| (k.to_owned(), v))?,
                next_grant_serial,
                storage_grants: rows(&tx, STORAGE_GRANTS, |k, v| (k, v.to_vec()))?,
                open_grants: rows(&tx, OPEN_GRANTS, |(u, s), v| ((u.to_owned(), s), v))?,
                voicemail_grants: rows(&tx, VOICEMAIL_GRANTS, |k, v| (k.to_vec(), v))?,
            };
            let added = Added {
                retention: rows(&tx, RETENTION, |k, v| (k.to_owned(), v))?,
                receipts: rows(&tx, RECEIPTS, |(u, id), v| {
                    ((u.to_owned(), id.to_vec()), v.to_vec())
                })?,
            };
            let spam = Spam {
                policies: rows(&tx, POLICIES, |k, v| (k.to_owned(), v.to_vec()))?,
                senders: rows(&tx, SENDERS, |k, v| (k.to_owned(), v.to_vec()))?,
                reports: rows(&tx, REPORTS, |(a, b), v| ((a.to_owned(), b.to_owned()), v))?,
                notes: rows(&tx, NOTES, |(u, id), v| {
                    ((u.to_owned(), id.to_vec()), v.to_vec())
                })?,
                first_contacts: rows(&tx, FIRST_CONTACTS, |(a, b), v| {
                    ((a.to_owned(), b.to_owned()), v)
                })?,
                grant_admissions: rows(&tx, GRANT_ADMISSIONS, |k, v| (k, v.to_vec()))?,
            };
            let shares = Shares {
                share_keys: rows(&tx, SHARE_KEYS, |k, v| (k, v.to_vec()))?,
            };
            let ceremonies = Ceremonies {
                dkg: rows(&tx, DKG, |k, v| (k, v.to_vec()))?,
            };
            let reshares = Reshares {
                reshares: rows(&tx, RESHARES, |k, v| (k, v.to_vec()))?,
            };
            let rosters = Rosters {
                grant_rosters: rows(&tx, GRANT_ROSTERS, |k, v| (k, v.to_vec()))?,
            };
            let members = Members {
                member_keys: rows(&tx, MEMBER_KEYS, |k, v| (k, v.to_vec()))?,
                join_approvals: rows(&tx, JOIN_APPROVALS, |k, v| (k, v.to_vec()))?,
            };
            let applied = tx
                .open_table(RAFT)
                .map_err(db_err)?
                .get("applied")
                .map_err(db_err)?
                .map(|v| v.value().to_vec());
            Ok((
                encode_all(&(
                    dump, added, spam, shares, ceremonies, reshares, rosters, members,
                )),
                applied,
            ))
        })
    }

    /// Replaces every user-facing row with those of a snapshot made by
    /// [`Store::export`], inside `tx`.
    pub(crate) fn import(&self, tx: &WriteTransaction, bytes: &[u8]) -> Result<(), StoreError> {
        let (dump, added, spam, shares, ceremonies, reshares, rosters, members) = parse(bytes)?;
        let mut meta = tx.open_table(META).map_err(db_err)?;
        meta.insert("next_serial", dump.next_serial.to_le_bytes().as_slice())
            .map_err(db_err)?;
        meta.insert(
            NEXT_GRANT_SERIAL,
            dump.next_grant_serial.to_le_bytes().as_slice(),
        )
        .map_err(db_err)?;
        let mut t = tx.open_table(USERS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &dump.users {
            t.insert(k.as_str(), v.as_slice()).map_err(db_err)?;
        }
        let mut t = tx.open_table(SESSIONS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &dump.sessions {
            t.insert(k.as_slice(), v.as_slice()).map_err(db_err)?;
        }
        let mut t = tx.open_table(VOICEMAILS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &dump.voicemails {
            t.insert(k.as_slice(), v.as_slice()).map_err(db_err)?;
        }
        let mut t = tx.open_table(GRANTS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (u, id) in &dump.grants {
            t.insert((u.as_str(), id.as_slice()), ()).map_err(db_err)?;
        }
        let mut t = tx.open_table(REQUESTS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for ((u, id), v) in &dump.requests {
            t.insert((u.as_str(), id.as_slice()), v.as_slice())
                .map_err(db_err)?;
        }
        let mut t = tx.open_table(INVITES).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &dump.invites {
            t.insert(k.as_str(), v.as_str()).map_err(db_err)?;
        }
        let mut t = tx.open_table(WAITING).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &dump.waiting {
            t.insert(k.as_str(), *v).map_err(db_err)?;
        }
        replace_by_serial(tx, STORAGE_GRANTS, &dump.storage_grants)?;
        let mut t = tx.open_table(OPEN_GRANTS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for ((u, serial), v) in &dump.open_grants {
            t.insert((u.as_str(), *serial), *v).map_err(db_err)?;
        }
        let mut t = tx.open_table(VOICEMAIL_GRANTS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &dump.voicemail_grants {
            t.insert(k.as_slice(), *v).map_err(db_err)?;
        }
        let mut t = tx.open_table(RETENTION).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &added.retention {
            t.insert(k.as_str(), *v).map_err(db_err)?;
        }
        let mut t = tx.open_table(RECEIPTS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for ((u, id), v) in &added.receipts {
            t.insert((u.as_str(), id.as_slice()), v.as_slice())
                .map_err(db_err)?;
        }
        let mut t = tx.open_table(POLICIES).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &spam.policies {
            t.insert(k.as_str(), v.as_slice()).map_err(db_err)?;
        }
        let mut t = tx.open_table(SENDERS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &spam.senders {
            t.insert(k.as_str(), v.as_slice()).map_err(db_err)?;
        }
        let mut t = tx.open_table(REPORTS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for ((a, b), v) in &spam.reports {
            t.insert((a.as_str(), b.as_str()), *v).map_err(db_err)?;
        }
        let mut t = tx.open_table(NOTES).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for ((u, id), v) in &spam.notes {
            t.insert((u.as_str(), id.as_slice()), v.as_slice())
                .map_err(db_err)?;
        }
        let mut t = tx.open_table(FIRST_CONTACTS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for ((a, b), v) in &spam.first_contacts {
            t.insert((a.as_str(), b.as_str()), *v).map_err(db_err)?;
        }
        replace_by_serial(tx, GRANT_ADMISSIONS, &spam.grant_admissions)?;
        let mut t = tx.open_table(SHARE_KEYS).map_err(db_err)?;
        t.retain(|_, _| false).map_err(db_err)?;
        for (k, v) in &shares.share_keys {
            t.insert(*k, v.as_slice()).map_err(db_err)?;
        }
        replace_by_serial(tx, DKG, &ceremonies.dkg)?;
        replace_by_serial(tx, RESHARES, &reshares.reshares)?;
        replace_by_serial(tx, GRANT_ROSTERS, &rosters.grant_rosters)?;
        replace_by_serial(tx, MEMBER_KEYS, &members.member_keys)?;
        replace_by_serial(tx, JOIN_APPROVALS, &members.join_approvals)?;
        Ok(())
    }
}

/// Replaces every row of a table keyed by a number with `rows`.
fn replace_by_serial(
    tx: &WriteTransaction,
    table: TableDefinition<u64, &[u8]>,
    rows: &[(u64, Vec<u8>)],
) -> Result<(), StoreError> {
    let mut t = tx.open_table(table).map_err(db_err)?;
    t.retain(|_, _| false).map_err(db_err)?;
    for (k, v) in rows {
        t.insert(*k, v.as_slice()).map_err(db_err)?;
    }
    Ok(())
}
