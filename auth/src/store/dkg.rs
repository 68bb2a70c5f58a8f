//! The group's distributed key generation as the log records it
//! (docs/THRESHOLD.md §1): ceremony number → the roster, each member's
//! round-1 package, each member's round-2 packages (HPKE-sealed, one per
//! other member) and each member's word on the result. The Raft log is the
//! broadcast FROST's DKG needs: every member sees the same packages in the
//! same order. The secrets (round state, key packages) stay with each
//! member (`crate::datadir::frost_keys`) and are never stored here.
//!
//! Applying is deterministic and refuses, with a reason, every step out of
//! order: a step for a ceremony that is not the current one, from a server
//! outside its roster, a second step of a kind from one member, a round-2
//! step before every round-1 package is in, or one not addressed to
//! exactly the other members.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use vmail_proto::share::PUBLIC_LEN;

use super::schema::DKG;
use super::{Store, StoreError, corrupt, db_err};
use crate::threshold::MIN_MEMBERS;

/// Largest encoded step a member may propose: a round-1 package of a
/// 2-of-3 to 9-of-16 group is well under 1 KiB.
pub const MAX_STEP_LEN: usize = 16 * 1024;

/// A round-2 package sealed to one member's share key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPackage {
    /// The member it is for.
    pub to: u64,
    /// The epoch of that member's share key it is sealed to.
    pub epoch: u32,
    /// HPKE encapsulated key.
    pub enc: [u8; PUBLIC_LEN],
    /// The sealed package.
    pub ciphertext: Vec<u8>,
}

/// One member's step of a ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DkgStep {
    /// The member's round-1 package (public: commitments and a proof of
    /// knowledge).
    Round1 {
        /// The ceremony.
        ceremony: u64,
        /// frost `round1::Package` bytes.
        package: Vec<u8>,
    },
    /// The member's round-2 packages, one sealed to each other member.
    Round2 {
        /// The ceremony.
        ceremony: u64,
        /// One per other member.
        sealed: Vec<SealedPackage>,
    },
    /// The member holds its key package; what it computed.
    Done {
        /// The ceremony.
        ceremony: u64,
        /// The group's Ed25519 public key.
        group_key: [u8; 32],
        /// SHA-256 of the serialized public key package (every member's
        /// verifying share), so members agree on more than the group key.
        public_digest: [u8; 32],
    },
}

impl DkgStep {
    /// The ceremony the step belongs to.
    pub fn ceremony(&self) -> u64 {
        match self {
            DkgStep::Round1 { ceremony, .. }
            | DkgStep::Round2 { ceremony, .. }
            | DkgStep::Done { ceremony, .. } => *ceremony,
        }
    }
}

/// How a ceremony ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CeremonyEnd {
    /// Every member reported the same key.
    Key {
        /// The group's Ed25519 public key.
        group_key: [u8; 32],
        /// The agreed public key package digest.
        public_digest: [u8; 32],
    },
    /// The members disagree; the reason names them.
    Failed(String),
}

/// A ceremony as the `dkg` table keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ceremony {
    /// The members, by node id in order.
    pub roster: Vec<u64>,
    /// When it began (the leader's clock), Unix seconds.
    pub began_at: u64,
    /// Round-1 packages by member.
    pub round1: BTreeMap<u64, Vec<u8>>,
    /// Round-2 packages by sending member.
    pub round2: BTreeMap<u64, Vec<SealedPackage>>,
    /// Each member's (group key, public digest).
    pub done: BTreeMap<u64, ([u8; 32], [u8; 32])>,
    /// Set once every member reported.
    pub end: Option<CeremonyEnd>,
}

impl Ceremony {
    /// Whether every member's round-1 package is in.
    pub fn round1_complete(&self) -> bool {
        self.round1.len() == self.roster.len()
    }

    /// Whether every member's round-2 packages are in.
    pub fn round2_complete(&self) -> bool {
        self.round2.len() == self.roster.len()
    }
}

/// What applying a DKG command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DkgOutcome {
    /// A ceremony began under this number.
    Begun(u64),
    /// The step was recorded.
    Recorded,
    /// The last member reported and all agree: the group key.
    Completed([u8; 32]),
    /// The last member reported and they disagree.
    Failed(String),
    /// Nothing changed, for this reason.
    Refused(String),
}

impl Store {
    /// Begins ceremony (last + 1) among `roster`, unless the group already
    /// has a key or the roster is too small. An unfinished ceremony is
    /// abandoned: its steps are refused from now on.
    pub(crate) fn dkg_begin(
        &self,
        tx: &WriteTransaction,
        roster: &[u64],
        now: u64,
    ) -> Result<DkgOutcome, StoreError> {
        let mut sorted = roster.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != roster.len() || sorted.len() < MIN_MEMBERS {
            return Ok(DkgOutcome::Refused(format!(
                "a ceremony needs at least {MIN_MEMBERS} distinct members, got {roster:?}"
            )));
        }
        let mut table = tx.open_table(DKG).map_err(db_err)?;
        let mut last = 0;
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            last = k.value();
            if matches!(decode(last, v.value())?.end, Some(CeremonyEnd::Key { .. })) {
                return Ok(DkgOutcome::Refused(format!(
                    "the group already has a key from ceremony {last}"
                )));
            }
        }
        let ceremony = last + 1;
        let row = Ceremony {
            roster: sorted,
            began_at: now,
            round1: BTreeMap::new(),
            round2: BTreeMap::new(),
            done: BTreeMap::new(),
            end: None,
        };
        table
            .insert(ceremony, encode(&row).as_slice())
            .map_err(db_err)?;
        Ok(DkgOutcome::Begun(ceremony))
    }

    /// Records member `node_id`'s step, if it fits (module doc).
    pub(crate) fn dkg_step(
        &self,
        tx: &WriteTransaction,
        node_id: u64,
        step: DkgStep,
    ) -> Result<DkgOutcome, StoreError> {
        let mut table = tx.open_table(DKG).map_err(db_err)?;
        let current = match table.last().map_err(db_err)? {
            Some((k, v)) => Some((k.value(), decode(k.value(), v.value())?)),
            None => None,
        };
        let refused = |why: String| Ok(DkgOutcome::Refused(why));
        let ceremony = step.ceremony();
        let Some((number, mut row)) = current.filter(|(n, _)| *n == ceremony) else {
            return refused(format!("ceremony {ceremony} is not the current one"));
        };
        if row.end.is_some() {
            return refused(format!("ceremony {number} has ended"));
        }
        if !row.roster.contains(&node_id) {
            return refused(format!(
                "node {node_id:016x} is not a member of ceremony {number}"
            ));
        }
        let outcome = match step {
            DkgStep::Round1 { package, .. } => {
                if row.round1.contains_key(&node_id) {
                    return refused(format!(
                        "node {node_id:016x} already sent its round-1 package"
                    ));
                }
                row.round1.insert(node_id, package);
                DkgOutcome::Recorded
            }
            DkgStep::Round2 { sealed, .. } => {
                if !row.round1_complete() {
                    return refused("round 2 before every round-1 package is in".into());
                }
                if row.round2.contains_key(&node_id) {
                    return refused(format!(
                        "node {node_id:016x} already sent its round-2 packages"
                    ));
                }
                let mut to: Vec<u64> = sealed.iter().map(|s| s.to).collect();
                to.sort_unstable();
                let others: Vec<u64> = row
                    .roster
                    .iter()
                    .copied()
                    .filter(|m| *m != node_id)
                    .collect();
                if to != others {
                    return refused(format!(
                        "round-2 packages addressed to {to:?}, expected one to each of {others:?}"
                    ));
                }
                row.round2.insert(node_id, sealed);
                DkgOutcome::Recorded
            }
            DkgStep::Done {
                group_key,
                public_digest,
                ..
            } => {
                if !row.round2_complete() {
                    return refused("a result before every round-2 package is in".into());
                }
                if row.done.contains_key(&node_id) {
                    return refused(format!("node {node_id:016x} already reported"));
                }
                row.done.insert(node_id, (group_key, public_digest));
                if row.done.len() < row.roster.len() {
                    DkgOutcome::Recorded
                } else {
                    let first = row.done.values().next().copied().expect("not empty");
                    let odd: Vec<String> = row
                        .done
                        .iter()
                        .filter(|(_, v)| **v != first)
                        .map(|(m, _)| format!("{m:016x}"))
                        .collect();
                    if odd.is_empty() {
                        row.end = Some(CeremonyEnd::Key {
                            group_key: first.0,
                            public_digest: first.1,
                        });
                        DkgOutcome::Completed(first.0)
                    } else {
                        let why = format!(
                            "the members disagree on the group key: {} differ from the first",
                            odd.join(", ")
                        );
                        row.end = Some(CeremonyEnd::Failed(why.clone()));
                        DkgOutcome::Failed(why)
                    }
                }
            }
        };
        table
            .insert(number, encode(&row).as_slice())
            .map_err(db_err)?;
        Ok(outcome)
    }

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

    /// [`Store::group_key`] inside a write transaction.
    pub(crate) fn group_key_in(
        &self,
        tx: &WriteTransaction,
    ) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let table = tx.open_table(DKG).map_err(db_err)?;
        let Some((k, v)) = table.last().map_err(db_err)? else {
            return Ok(None);
        };
        Ok(match decode(k.value(), v.value())?.end {
            Some(CeremonyEnd::Key { group_key, .. }) => Some((k.value(), group_key)),
            _ => None,
        })
    }

    /// The group key and the ceremony that made it, once one completed.
    pub fn group_key(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        Ok(self.current_ceremony()?.and_then(|(n, c)| match c.end {
            Some(CeremonyEnd::Key { group_key, .. }) => Some((n, group_key)),
            _ => None,
        }))
    }
}

fn encode(row: &Ceremony) -> Vec<u8> {
    postcard::to_allocvec(row).expect("in-memory encoding cannot fail")
}

fn decode(ceremony: u64, bytes: &[u8]) -> Result<Ceremony, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt("dkg", ceremony.to_string(), e))
}
