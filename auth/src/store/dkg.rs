//! The group's distributed key generation as the log records it
//! (docs/THRESHOLD.md §1): ceremony number → the roster, each member's
//! round-1 package, each member's round-2 packages (HPKE-sealed, one per
//! other member) and each member's word on the result. The Raft log is the
//! broadcast FROST's DKG needs: every member sees the same packages in the
//! same order. The secrets (round state, key packages) stay with each
//! member (`crate::datadir::frost_keys`) and are never stored here.
//!
//! A ceremony either generates the group's key (once) or reshares the
//! current one (`reshares` table, docs/THRESHOLD.md §4):
//!
//! - a **refresh** among the members still in the group: the same three
//!   steps, with the same group key at the end and new shares, so a removed
//!   member's old share no longer combines with them;
//! - a **repair** that gives a joining member a share of the same key: `t`
//!   helpers each send every other helper a sealed delta (round 1), then
//!   the joining member a sealed sigma (round 2), and every member reports.
//!
//! The key is always the newest ceremony that ended with one; a reshare
//! under way or failed leaves it in place.
//!
//! Applying is deterministic and refuses, with a reason, every step out of
//! order: a step for a ceremony that is not the current one, from a server
//! outside its roster, a second step of a kind from one member, a round-2
//! step before every round-1 package is in, or one not addressed to
//! exactly the other members.

use std::collections::BTreeMap;

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use vmail_proto::share::PUBLIC_LEN;

use super::key_ceremony::KeyCeremony;
use super::schema::{DKG, RESHARES};
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
    /// A repair helper's deltas, one sealed to each other helper.
    RepairDeltas {
        /// The ceremony.
        ceremony: u64,
        /// One per other helper.
        sealed: Vec<SealedPackage>,
    },
    /// A repair helper's sigma, sealed to the joining member together with
    /// the key's public key package.
    RepairSigma {
        /// The ceremony.
        ceremony: u64,
        /// For the joining member.
        sealed: SealedPackage,
    },
}

impl DkgStep {
    /// Its postcard encoding: what `ProposeDkg` carries and what a member
    /// key signs (through [`super::step_bytes`]).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("in-memory encoding cannot fail")
    }

    /// The ceremony the step belongs to.
    pub fn ceremony(&self) -> u64 {
        match self {
            DkgStep::Round1 { ceremony, .. }
            | DkgStep::Round2 { ceremony, .. }
            | DkgStep::Done { ceremony, .. }
            | DkgStep::RepairDeltas { ceremony, .. }
            | DkgStep::RepairSigma { ceremony, .. } => *ceremony,
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
    /// Round-1 packages by member; of a repair, each helper's sealed
    /// deltas (postcard `Vec<SealedPackage>`).
    pub round1: BTreeMap<u64, Vec<u8>>,
    /// Round-2 packages by sending member; of a repair, each helper's
    /// sealed sigma.
    pub round2: BTreeMap<u64, Vec<SealedPackage>>,
    /// Each member's (group key, public digest).
    pub done: BTreeMap<u64, ([u8; 32], [u8; 32])>,
    /// Set once every member reported.
    pub end: Option<CeremonyEnd>,
}

impl Ceremony {
    /// The members that send in rounds 1 and 2: a repair's helpers, or
    /// every member.
    pub fn senders<'a>(&'a self, reshare: Option<&'a Reshare>) -> &'a [u64] {
        match reshare {
            Some(Reshare::Repair { helpers, .. }) => helpers,
            _ => &self.roster,
        }
    }

    /// Whether every sender's round-1 package is in.
    pub fn round1_complete(&self, reshare: Option<&Reshare>) -> bool {
        self.round1.len() == self.senders(reshare).len()
    }

    /// Whether every sender's round-2 packages are in.
    pub fn round2_complete(&self, reshare: Option<&Reshare>) -> bool {
        self.round2.len() == self.senders(reshare).len()
    }
}

/// What a resharing ceremony does to the group's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reshare {
    /// New shares of the key among the roster, which holds shares of it.
    Refresh {
        /// The ceremony whose key it refreshes: the group's key when it began.
        of: u64,
        /// The key's threshold, which a refresh keeps.
        threshold: u16,
    },
    /// A share of the key for `joining`; every other member keeps its own.
    Repair {
        /// The ceremony whose key it extends: the group's key when it began.
        of: u64,
        /// The key's threshold, which a repair keeps.
        threshold: u16,
        /// The `threshold` share holders that make the new share.
        helpers: Vec<u64>,
        /// The member that gets it.
        joining: u64,
    },
}

impl Reshare {
    /// The ceremony whose key it reshares.
    pub fn of(&self) -> u64 {
        match self {
            Reshare::Refresh { of, .. } | Reshare::Repair { of, .. } => *of,
        }
    }

    /// The key's threshold.
    pub fn threshold(&self) -> u16 {
        match self {
            Reshare::Refresh { threshold, .. } | Reshare::Repair { threshold, .. } => *threshold,
        }
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
        if let Some(key) = self.key_ceremony_in(tx)? {
            return Ok(DkgOutcome::Refused(format!(
                "the group already has a key from ceremony {}",
                key.number
            )));
        }
        self.begin_ceremony(tx, sorted, None, now)
    }

    /// Begins ceremony (last + 1): a refresh of the group's key among
    /// `roster`, which must hold shares of it (members of the key's
    /// ceremony) and be at least its threshold. An unfinished ceremony is
    /// abandoned.
    pub(crate) fn dkg_refresh_begin(
        &self,
        tx: &WriteTransaction,
        roster: &[u64],
        now: u64,
    ) -> Result<DkgOutcome, StoreError> {
        let Some(key) = self.key_ceremony_in(tx)? else {
            return Ok(DkgOutcome::Refused(
                "the group has no key to reshare yet".into(),
            ));
        };
        let sorted = match share_holders(&key, roster, "refresh") {
            Ok(sorted) => sorted,
            Err(why) => return Ok(DkgOutcome::Refused(why)),
        };
        let reshare = Reshare::Refresh {
            of: key.number,
            threshold: key.threshold,
        };
        self.begin_ceremony(tx, sorted, Some(reshare), now)
    }

    /// Begins ceremony (last + 1): a repair that gives `joining` a share
    /// of the group's key, made by `helpers`: exactly the key's threshold of
    /// its share holders. Every share holder is a member and reports. An
    /// unfinished ceremony is abandoned.
    pub(crate) fn dkg_repair_begin(
        &self,
        tx: &WriteTransaction,
        joining: u64,
        helpers: &[u64],
        now: u64,
    ) -> Result<DkgOutcome, StoreError> {
        let Some(key) = self.key_ceremony_in(tx)? else {
            return Ok(DkgOutcome::Refused(
                "the group has no key to reshare yet".into(),
            ));
        };
        if key.roster.contains(&joining) {
            return Ok(DkgOutcome::Refused(format!(
                "node {joining:016x} already holds a share of the key of ceremony {}",
                key.number
            )));
        }
        // A node with a member key joined through `Join`, which records
        // one: it needs approvals. One without joined before member keys,
        // and its repair entries keep applying as they did then.
        let approved = key.holders_among(&self.join_approvals_in(tx, joining)?);
        if self.member_key_in_tx(tx, joining)?.is_some() && approved < usize::from(key.threshold) {
            return Ok(DkgOutcome::Refused(format!(
                "node {joining:016x} has {approved} of the {} approvals by share holders a \
                 repair needs (vmail-auth cluster approve)",
                key.threshold
            )));
        }
        let helpers = match share_holders(&key, helpers, "repair") {
            Ok(h) if h.len() == usize::from(key.threshold) => h,
            Ok(h) => {
                return Ok(DkgOutcome::Refused(format!(
                    "a repair takes exactly {} helpers, got {}",
                    key.threshold,
                    h.len()
                )));
            }
            Err(why) => return Ok(DkgOutcome::Refused(why)),
        };
        let mut roster = key.roster.clone();
        roster.push(joining);
        roster.sort_unstable();
        let reshare = Reshare::Repair {
            of: key.number,
            threshold: key.threshold,
            helpers,
            joining,
        };
        self.begin_ceremony(tx, roster, Some(reshare), now)
    }

    /// Records ceremony (last + 1) among `roster`, and what it reshares.
    fn begin_ceremony(
        &self,
        tx: &WriteTransaction,
        roster: Vec<u64>,
        reshare: Option<Reshare>,
        now: u64,
    ) -> Result<DkgOutcome, StoreError> {
        let mut table = tx.open_table(DKG).map_err(db_err)?;
        let ceremony = table.last().map_err(db_err)?.map_or(0, |(k, _)| k.value()) + 1;
        let row = Ceremony {
            roster,
            began_at: now,
            round1: BTreeMap::new(),
            round2: BTreeMap::new(),
            done: BTreeMap::new(),
            end: None,
        };
        table
            .insert(ceremony, encode(&row).as_slice())
            .map_err(db_err)?;
        if let Some(reshare) = reshare {
            tx.open_table(RESHARES)
                .map_err(db_err)?
                .insert(
                    ceremony,
                    postcard::to_allocvec(&reshare)
                        .expect("in-memory encoding cannot fail")
                        .as_slice(),
                )
                .map_err(db_err)?;
        }
        Ok(DkgOutcome::Begun(ceremony))
    }

    /// Records member `node_id`'s step, if it fits (module doc).
    pub(crate) fn dkg_step(
        &self,
        tx: &WriteTransaction,
        node_id: u64,
        step: DkgStep,
    ) -> Result<DkgOutcome, StoreError> {
        let current = match tx.open_table(DKG).map_err(db_err)?.last().map_err(db_err)? {
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
        let reshare = self.reshare_in(tx, number)?;
        let senders = row.senders(reshare.as_ref()).to_vec();
        let repair = matches!(reshare, Some(Reshare::Repair { .. }));
        let is_repair_step = matches!(
            step,
            DkgStep::RepairDeltas { .. } | DkgStep::RepairSigma { .. }
        );
        if !matches!(step, DkgStep::Done { .. }) {
            if repair != is_repair_step {
                return refused(format!(
                    "ceremony {number} is {}a repair; that step belongs to {}",
                    if repair { "" } else { "not " },
                    if repair { "another kind" } else { "a repair" },
                ));
            }
            if !senders.contains(&node_id) {
                return refused(format!(
                    "node {node_id:016x} is not a helper of ceremony {number}"
                ));
            }
        }
        let others: Vec<u64> = senders.iter().copied().filter(|m| *m != node_id).collect();
        let addressed = |to: Vec<u64>, expected: &[u64]| {
            let mut to = to;
            to.sort_unstable();
            (to != expected).then(|| {
                format!("packages addressed to {to:?}, expected one to each of {expected:?}")
            })
        };
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
            DkgStep::RepairDeltas { sealed, .. } => {
                if row.round1.contains_key(&node_id) {
                    return refused(format!("node {node_id:016x} already sent its deltas"));
                }
                if let Some(why) = addressed(sealed.iter().map(|s| s.to).collect(), &others) {
                    return refused(why);
                }
                row.round1.insert(node_id, encode_sealed(&sealed));
                DkgOutcome::Recorded
            }
            DkgStep::Round2 { .. } | DkgStep::RepairSigma { .. }
                if !row.round1_complete(reshare.as_ref()) =>
            {
                return refused("round 2 before every round-1 package is in".into());
            }
            DkgStep::Round2 { .. } | DkgStep::RepairSigma { .. }
                if row.round2.contains_key(&node_id) =>
            {
                return refused(format!(
                    "node {node_id:016x} already sent its round-2 packages"
                ));
            }
            DkgStep::Round2 { sealed, .. } => {
                if let Some(why) = addressed(sealed.iter().map(|s| s.to).collect(), &others) {
                    return refused(why);
                }
                row.round2.insert(node_id, sealed);
                DkgOutcome::Recorded
            }
            DkgStep::RepairSigma { sealed, .. } => {
                let Some(Reshare::Repair { joining, .. }) = &reshare else {
                    unreachable!("checked above");
                };
                if let Some(why) = addressed(vec![sealed.to], &[*joining]) {
                    return refused(why);
                }
                row.round2.insert(node_id, vec![sealed]);
                DkgOutcome::Recorded
            }
            DkgStep::Done {
                group_key,
                public_digest,
                ..
            } => {
                if !row.round2_complete(reshare.as_ref()) {
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
                    let kept = match &reshare {
                        Some(r) => Some(
                            self.key_ceremony_in(tx)?
                                .filter(|k| k.number == r.of())
                                .ok_or_else(|| {
                                    corrupt("dkg", number.to_string(), "reshares a lost key")
                                })?
                                .group_key,
                        ),
                        None => None,
                    };
                    let why = if let Some(old) = kept.filter(|k| *k != first.0) {
                        Some(format!(
                            "the reshare changed the group key from {} to {}",
                            hex::encode(old),
                            hex::encode(first.0)
                        ))
                    } else if odd.is_empty() {
                        None
                    } else {
                        Some(format!(
                            "the members disagree on the group key: {} differ from the first",
                            odd.join(", ")
                        ))
                    };
                    match why {
                        None => {
                            row.end = Some(CeremonyEnd::Key {
                                group_key: first.0,
                                public_digest: first.1,
                            });
                            DkgOutcome::Completed(first.0)
                        }
                        Some(why) => {
                            row.end = Some(CeremonyEnd::Failed(why.clone()));
                            DkgOutcome::Failed(why)
                        }
                    }
                }
            }
        };
        tx.open_table(DKG)
            .map_err(db_err)?
            .insert(number, encode(&row).as_slice())
            .map_err(db_err)?;
        Ok(outcome)
    }
}

/// A repair helper's deltas as its `round1` entry keeps them.
fn encode_sealed(sealed: &[SealedPackage]) -> Vec<u8> {
    postcard::to_allocvec(sealed).expect("in-memory encoding cannot fail")
}

/// A repair helper's deltas from its `round1` entry.
pub fn decode_sealed(bytes: &[u8]) -> Result<Vec<SealedPackage>, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt("dkg", "repair deltas", e))
}

fn encode(row: &Ceremony) -> Vec<u8> {
    postcard::to_allocvec(row).expect("in-memory encoding cannot fail")
}

pub(super) fn decode(ceremony: u64, bytes: &[u8]) -> Result<Ceremony, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt("dkg", ceremony.to_string(), e))
}

/// `members` sorted, if they are distinct share holders of `key`, at least
/// its threshold of them; otherwise why not.
fn share_holders(key: &KeyCeremony, members: &[u64], what: &str) -> Result<Vec<u64>, String> {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != members.len() || sorted.len() < usize::from(key.threshold) {
        return Err(format!(
            "a {what} of a {}-of-{} key needs at least {} distinct share holders, got {members:?}",
            key.threshold,
            key.roster.len(),
            key.threshold
        ));
    }
    if let Some(m) = sorted.iter().find(|m| !key.roster.contains(m)) {
        return Err(format!(
            "node {m:016x} holds no share of the key of ceremony {}, so it cannot take part in a {what}",
            key.number
        ));
    }
    Ok(sorted)
}
