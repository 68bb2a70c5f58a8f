//! The group's distributed key generation on this server
//! (docs/THRESHOLD.md §1): the leader begins a ceremony once the group has
//! three voters and no key (or the last ceremony failed or stalled), and
//! each member takes its steps as the log shows the previous round
//! complete: its round-1 package, then its round-2 packages sealed to each
//! other member's share key, then its key package, written to its data dir
//! before it reports the group key. The log is the broadcast; a member that
//! is not the leader proposes through the leader's internal service.
//!
//! Once the group has a key, the leader begins a refresh whenever a member
//! holding a share of it is no longer a voter (docs/THRESHOLD.md §4): the
//! same three steps among the voters that hold shares, each starting from
//! its key package, ending with the same group key and new shares. Every
//! server erases its key packages older than the key's ceremony once it
//! applies the end of a reshare, so a removed server's share combines with
//! nothing the group still holds. A server that joined after the key
//! first needs the approval of the key's threshold of share holders
//! (`vmail-auth cluster approve`): the leader then makes it a voter, if it
//! was a learner, and gives it a share by a repair (`repair`), which
//! changes no other member's share.
//!
//! The round secrets live only in this task's memory. A member that
//! restarts mid-ceremony cannot finish it; the leader begins a new one once
//! [`DKG_STALL_SECS`] pass without an end.
//!
//! Past 600 lines by the generation's and refresh's rounds, which share
//! `Mine` and the sealing helpers; the repair's rounds are in `repair`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use sha2::{Digest, Sha256};
use vmail_proto::cluster_pb as cpb;
use vmail_proto::share;

use super::AuthService;
use crate::cluster::{Command, Member, Reply};
use crate::datadir::frost_keys;
use crate::store::{Ceremony, DkgOutcome, DkgStep, KeyCeremony, Reshare, SealedPackage};
use crate::threshold::dkg::{self, DkgRound1, DkgRound2};
use crate::threshold::membership::{self, RefreshRound1, RefreshRound2};
use crate::threshold::{
    self, Identifier, KeyPackage, MIN_MEMBERS, PublicKeyPackage, Roster, ThresholdError, Wire,
    dkg_round1 as round1, dkg_round2 as round2,
};
use crate::tls::ClusterTls;

pub(super) mod repair;

/// How often the duty looks at the current ceremony.
const DKG_POLL: Duration = Duration::from_millis(300);
/// How long a ceremony may go without an end before the leader begins a
/// new one.
pub const DKG_STALL_SECS: u64 = 60;
/// HPKE info of a sealed round-2 package.
pub const DKG_ROUND2_INFO: &[u8] = b"vmail/v1/dkg-round2";

/// The AAD of a round-2 package: ceremony, sender, recipient and the
/// recipient's share-key epoch, all big-endian.
pub fn round2_aad(ceremony: u64, from: u64, to: u64, epoch: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(28);
    aad.extend_from_slice(&ceremony.to_be_bytes());
    aad.extend_from_slice(&from.to_be_bytes());
    aad.extend_from_slice(&to.to_be_bytes());
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

/// This member's state after part 1 of a generation or a refresh.
enum Round1 {
    Generate(DkgRound1),
    Refresh(RefreshRound1, Box<(KeyPackage, PublicKeyPackage)>),
}

/// This member's state after part 2.
enum Round2 {
    Generate(DkgRound2),
    Refresh(RefreshRound2, Box<(KeyPackage, PublicKeyPackage)>),
}

type Outgoing = BTreeMap<Identifier, round2::Package>;

impl Round1 {
    fn receive(
        self,
        packages: &BTreeMap<Identifier, round1::Package>,
    ) -> Result<(Round2, Outgoing), ThresholdError> {
        Ok(match self {
            Round1::Generate(s) => {
                let (next, out) = s.receive(packages)?;
                (Round2::Generate(next), out)
            }
            Round1::Refresh(s, old) => {
                let (next, out) = s.receive(packages)?;
                (Round2::Refresh(next, old), out)
            }
        })
    }
}

impl Round2 {
    fn finish(
        self,
        packages: &BTreeMap<Identifier, round2::Package>,
    ) -> Result<(KeyPackage, PublicKeyPackage), ThresholdError> {
        match self {
            Round2::Generate(s) => s.finish(packages),
            Round2::Refresh(s, old) => s.finish(packages, &old.1, &old.0),
        }
    }
}

/// This member's part of one ceremony, in memory only.
#[derive(Default)]
struct Mine {
    ceremony: u64,
    round1: Option<Round1>,
    round1_bytes: Vec<u8>,
    round2: Option<Round2>,
    /// The last step proposed, proposed again until the log shows it.
    sent: Option<DkgStep>,
    /// Key packages before this ceremony are erased.
    erased_before: u64,
    /// A repair helper's delta for itself, kept for its sigma.
    repair_delta: Option<threshold::Delta>,
    /// Whether this member built its repair report.
    repair_reported: bool,
    /// Servers without a share that the leader said wait for approvals.
    awaiting_approval: BTreeSet<u64>,
}

/// Runs the key generation duty until the service shuts down.
pub async fn dkg_duty(svc: Arc<AuthService>, tls: ClusterTls) {
    let stop = svc.shutdown_token().clone();
    let Some(dir) = svc.store().path().parent().map(PathBuf::from) else {
        tracing::error!("the database has no data directory; no key generation");
        return;
    };
    let mut mine = Mine::default();
    loop {
        if let Err(e) = pass(&svc, &tls, &dir, &mut mine).await {
            tracing::warn!(error = %e, "key generation step failed; retrying");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DKG_POLL) => {}
        }
    }
}

async fn pass(
    svc: &AuthService,
    tls: &ClusterTls,
    dir: &Path,
    mine: &mut Mine,
) -> Result<(), String> {
    let (current, key) = svc
        .db(|s| Ok((s.current_ceremony()?, s.key_ceremony()?)))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(k) = &key
        && k.number > mine.erased_before
    {
        let erased =
            frost_keys::erase_key_packages_before(dir, k.number).map_err(|e| e.to_string())?;
        if !erased.is_empty() {
            tracing::info!(
                ?erased,
                key = k.number,
                "erased the key packages a reshare replaced"
            );
        }
        mine.erased_before = k.number;
    }
    let (voters, nodes): (Vec<u64>, BTreeMap<u64, Member>) = {
        let m = svc.raft.metrics().borrow().membership_config.clone();
        (
            m.voter_ids().collect(),
            m.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        )
    };
    let mut approved = BTreeSet::new();
    if svc.is_leader()
        && let Some(k) = &key
    {
        for (id, member) in nodes.iter().filter(|(id, _)| !k.roster.contains(id)) {
            let v = *id;
            let approvers = svc
                .db(move |s| s.join_approvals(v))
                .await
                .map_err(|e| e.to_string())?;
            let n = k.holders_among(&approvers);
            if n < usize::from(k.threshold) {
                if mine.awaiting_approval.insert(v) {
                    tracing::warn!(
                        member = %member.name,
                        approvals = n,
                        needed = k.threshold,
                        "a server that joined holds no share of the group key and, if a \
                         learner, no vote, until share holders approve it (vmail-auth cluster \
                         approve NAME on each)"
                    );
                }
            } else if voters.contains(&v) {
                approved.insert(v);
            } else {
                // An approved learner votes from now on; its repair follows.
                svc.raft
                    .change_membership(
                        ChangeMembers::AddVoters(BTreeMap::from([(v, member.clone())])),
                        false,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(member = %member.name, "approved by share holders: now a voter");
                return Ok(());
            }
        }
    }
    if svc.is_leader()
        && let Some(begin) =
            ceremony_to_begin(svc, &voters, current.as_ref(), key.as_ref(), &approved)
    {
        let reply = svc
            .propose(begin.clone())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(?reply, ?begin, "began a key ceremony");
        return Ok(());
    }
    let me = svc.node_id();
    let Some((number, c)) = current else {
        return Ok(());
    };
    if c.end.is_some() || !c.roster.contains(&me) {
        return Ok(());
    }
    if mine.ceremony != number {
        *mine = Mine {
            ceremony: number,
            erased_before: mine.erased_before,
            ..Mine::default()
        };
    }
    let reshare = svc
        .db(move |s| s.reshare(number))
        .await
        .map_err(|e| e.to_string())?;
    let step = match &reshare {
        Some(Reshare::Repair {
            of,
            helpers,
            joining,
            ..
        }) => {
            let repair = repair::Repair {
                number,
                of: *of,
                helpers,
                joining: *joining,
                me,
            };
            repair.step(svc, dir, &c, reshare.as_ref(), mine).await?
        }
        _ => generation_step(svc, dir, &c, number, me, reshare.as_ref(), mine).await?,
    };
    let Some(step) = step else {
        return Ok(());
    };
    let proposed = propose(svc, tls, me, step.clone()).await;
    if proposed.is_err() {
        // Proposed again next time; once it applies, the log shows it.
        mine.sent = Some(step);
    }
    proposed
}

/// This member's next step of a generation or a refresh, if it has one.
async fn generation_step(
    svc: &AuthService,
    dir: &Path,
    c: &Ceremony,
    number: u64,
    me: u64,
    reshare: Option<&Reshare>,
    mine: &mut Mine,
) -> Result<Option<DkgStep>, String> {
    let roster = match reshare {
        Some(r) => Roster::with_threshold(&c.roster, r.threshold()),
        None => Roster::new(&c.roster),
    }
    .map_err(|e| e.to_string())?;
    Ok(if !c.round1.contains_key(&me) {
        if mine.round1_bytes.is_empty() {
            let (state, package) = start(dir, &roster, me, reshare)?;
            mine.round1_bytes = package.to_wire().map_err(|e| e.to_string())?;
            mine.round1 = Some(state);
            mine.sent = Some(DkgStep::Round1 {
                ceremony: number,
                package: mine.round1_bytes.clone(),
            });
        }
        mine.sent.take()
    } else if c.round1_complete(reshare) && !c.round2.contains_key(&me) {
        if mine.round1.is_some() {
            let Some(keys) = share_keys(svc, &c.roster, me).await? else {
                return Ok(None);
            };
            let state = mine.round1.take().expect("checked above");
            mine.sent = Some(round2(c, &roster, number, me, mine, state, &keys)?);
        }
        mine.sent.take()
    } else if c.round2_complete(reshare) && !c.done.contains_key(&me) {
        if let Some(state) = mine.round2.take() {
            mine.sent = Some(finish(svc, dir, c, &roster, number, me, state)?);
        }
        mine.sent.take()
    } else {
        None
    })
}

/// The newest share key of every server, once each of `members` other
/// than `me` has published one; `None` (logged) until then. A member's
/// share key comes with its first start: waiting for it keeps the round
/// state rather than spending it.
async fn share_keys(
    svc: &AuthService,
    members: &[u64],
    me: u64,
) -> Result<Option<ShareKeys>, String> {
    let keys = svc
        .db(|s| s.newest_share_keys())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(m) = members.iter().find(|m| **m != me && !keys.contains_key(m)) {
        tracing::debug!(member = %format!("{m:016x}"), "waiting for a member's share key");
        return Ok(None);
    }
    Ok(Some(keys))
}

type ShareKeys = BTreeMap<u64, (share::ShareKey, u64)>;

/// `bytes` sealed from `from` to member `to`'s newest share key, under
/// `info` and the AAD [`round2_aad`].
fn seal_to(
    keys: &ShareKeys,
    info: &[u8],
    ceremony: u64,
    from: u64,
    to: u64,
    bytes: &[u8],
) -> Result<SealedPackage, String> {
    let (key, _) = keys
        .get(&to)
        .ok_or_else(|| format!("{to:016x} has published no share key"))?;
    let (enc, ciphertext) = share::seal_bytes(
        &key.public,
        info,
        bytes,
        &round2_aad(ceremony, from, to, key.epoch),
    )
    .map_err(|e| e.to_string())?;
    Ok(SealedPackage {
        to,
        epoch: key.epoch,
        enc,
        ciphertext,
    })
}

/// Opens `p`, sealed by `from` to this server (`me`) under `info`.
fn open_from(
    svc: &AuthService,
    info: &[u8],
    ceremony: u64,
    from: u64,
    me: u64,
    p: &SealedPackage,
) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let secret = svc.share_keys.secret(p.epoch).ok_or_else(|| {
        format!(
            "the package of {from:016x} is sealed to share-key epoch {}, which this server no longer holds",
            p.epoch
        )
    })?;
    share::open_bytes(
        &secret,
        info,
        &p.enc,
        &p.ciphertext,
        &round2_aad(ceremony, from, me, p.epoch),
    )
    .map_err(|e| format!("the package of {from:016x} does not open: {e}"))
}

/// The key's group key and SHA-256 of its public key package, as a
/// member reports them in [`DkgStep::Done`].
fn report(ceremony: u64, public: &PublicKeyPackage) -> Result<DkgStep, String> {
    let group_key = threshold::group_key_bytes(public).map_err(|e| e.to_string())?;
    let public_digest = Sha256::digest(public.to_wire().map_err(|e| e.to_string())?).into();
    tracing::info!(
        ceremony,
        group_key = %hex::encode(group_key),
        "holds its share of the group signing key"
    );
    Ok(DkgStep::Done {
        ceremony,
        group_key,
        public_digest,
    })
}

/// Part 1 of a generation, or of a refresh from this member's key package
/// of the refreshed key.
fn start(
    dir: &Path,
    roster: &Roster,
    me: u64,
    refresh: Option<&Reshare>,
) -> Result<(Round1, round1::Package), String> {
    let rng = &mut rand::rngs::OsRng;
    let Some(r) = refresh else {
        let (state, package) = dkg::start(roster, me, rng).map_err(|e| e.to_string())?;
        return Ok((Round1::Generate(state), package));
    };
    let (key, public) = held_key(dir, r.of())?;
    let members: Vec<Identifier> = roster.identifiers().collect();
    let (state, package) =
        membership::refresh_start(&members, &key, rng).map_err(|e| e.to_string())?;
    Ok((Round1::Refresh(state, Box::new((key, public))), package))
}

/// This server's key package of ceremony `of`, which it needs to reshare it.
fn held_key(dir: &Path, of: u64) -> Result<(KeyPackage, PublicKeyPackage), String> {
    frost_keys::load_key_package(dir, of)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "this server holds no key package of ceremony {of}, so it cannot take part in resharing it"
            )
        })
}

/// The ceremony the leader should begin now, if any:
///
/// - while the group has no key, a generation among the voters, once there
///   are [`MIN_MEMBERS`];
/// - once a share holder is no longer a voter, a refresh among the voters
///   that hold shares (if at least the key's threshold remain);
/// - otherwise, for a voter without a share whose join the key's
///   threshold of share holders `approved`, a repair by that many share
///   holders, a different set on each attempt.
///
/// A ceremony that failed or made no progress is begun again after
/// [`DKG_STALL_SECS`], so a member that keeps failing it costs one entry a
/// minute.
fn ceremony_to_begin(
    svc: &AuthService,
    voters: &[u64],
    current: Option<&(u64, Ceremony)>,
    key: Option<&KeyCeremony>,
    approved: &BTreeSet<u64>,
) -> Option<Command> {
    let now = svc.now();
    let stalled = |c: &Ceremony| now.saturating_sub(c.began_at) > DKG_STALL_SECS;
    let Some(key) = key else {
        let due = voters.len() >= MIN_MEMBERS && current.is_none_or(|(_, c)| stalled(c));
        return due.then_some(Command::DkgBegin {
            roster: voters.to_vec(),
            now,
        });
    };
    // Attempts since the key: a reshare under way waits, a stalled or
    // failed one is begun again.
    let attempts = match current {
        Some((n, c)) if *n > key.number => {
            if !stalled(c) {
                return None;
            }
            *n - key.number
        }
        _ => 0,
    };
    let holders: Vec<u64> = key
        .roster
        .iter()
        .copied()
        .filter(|m| voters.contains(m))
        .collect();
    let t = usize::from(key.threshold);
    if holders.len() < key.roster.len() {
        // Too few left to refresh at all: the group cannot sign either,
        // and says so.
        return (holders.len() >= t).then_some(Command::DkgRefresh {
            roster: holders,
            now,
        });
    }
    let joining = voters
        .iter()
        .copied()
        .find(|v| !key.roster.contains(v) && approved.contains(v))?;
    let first = usize::try_from(attempts).unwrap_or(0) % holders.len();
    let helpers = (0..t)
        .map(|i| holders[(first + i) % holders.len()])
        .collect();
    Some(Command::DkgRepair {
        joining,
        helpers,
        now,
    })
}

/// Part 2: checks that the log holds this member's own round-1 package,
/// then seals one round-2 package to each other member's newest share key.
fn round2(
    c: &Ceremony,
    roster: &Roster,
    number: u64,
    me: u64,
    mine: &mut Mine,
    state: Round1,
    keys: &ShareKeys,
) -> Result<DkgStep, String> {
    if c.round1.get(&me) != Some(&mine.round1_bytes) {
        return Err(format!(
            "the log holds a round-1 package of ceremony {number} in this server's name that it did not make; it takes no further part"
        ));
    }
    let mut packages = BTreeMap::new();
    for (node, bytes) in &c.round1 {
        let id = roster
            .identifier(*node)
            .ok_or_else(|| format!("{node:016x} is not in the roster"))?;
        packages.insert(
            id,
            round1::Package::from_wire(bytes)
                .map_err(|e| format!("round-1 package of {node:016x}: {e}"))?,
        );
    }
    let (next, outgoing) = state.receive(&packages).map_err(|e| e.to_string())?;
    let mut sealed = Vec::new();
    for (id, package) in outgoing {
        let to = roster
            .node_id(&id)
            .ok_or("a round-2 package for no member")?;
        let bytes = package.to_wire().map_err(|e| e.to_string())?;
        sealed.push(seal_to(keys, DKG_ROUND2_INFO, number, me, to, &bytes)?);
    }
    mine.round2 = Some(next);
    Ok(DkgStep::Round2 {
        ceremony: number,
        sealed,
    })
}

/// Part 3: opens the packages sealed to this member, derives its key
/// package, writes it to the data dir and reports the group key.
fn finish(
    svc: &AuthService,
    dir: &Path,
    c: &Ceremony,
    roster: &Roster,
    number: u64,
    me: u64,
    state: Round2,
) -> Result<DkgStep, String> {
    let mut incoming = BTreeMap::new();
    for (from, packages) in &c.round2 {
        if *from == me {
            continue;
        }
        let p = packages
            .iter()
            .find(|p| p.to == me)
            .ok_or_else(|| format!("{from:016x} sent no round-2 package to this server"))?;
        let bytes = open_from(svc, DKG_ROUND2_INFO, number, *from, me, p)?;
        let id = roster
            .identifier(*from)
            .ok_or_else(|| format!("{from:016x} is not in the roster"))?;
        incoming.insert(
            id,
            round2::Package::from_wire(&bytes)
                .map_err(|e| format!("round-2 package of {from:016x}: {e}"))?,
        );
    }
    let (key, public) = state.finish(&incoming).map_err(|e| e.to_string())?;
    frost_keys::write_key_package(dir, number, &key, &public).map_err(|e| e.to_string())?;
    report(number, &public)
}

/// Proposes `step` in this member's name, signed by its member key:
/// directly on the leader, through the leader's internal service
/// elsewhere.
async fn propose(
    svc: &AuthService,
    tls: &ClusterTls,
    me: u64,
    step: DkgStep,
) -> Result<(), String> {
    let bytes = step.encode();
    let signature = svc
        .share_keys()
        .member_sign(&crate::store::step_bytes(me, &bytes));
    if svc.is_leader() {
        return match svc
            .propose(Command::VouchedDkg {
                node_id: me,
                step,
                signature,
            })
            .await
            .map_err(|e| e.to_string())?
        {
            Reply::Dkg(DkgOutcome::Refused(why)) => Err(format!("DKG step refused: {why}")),
            Reply::Dkg(outcome) => {
                tracing::debug!(?outcome, "DKG step recorded");
                Ok(())
            }
            other => Err(format!("unexpected reply {other:?} to a DKG step")),
        };
    }
    let (_, mut client) = svc.leader_client(tls).map_err(|e| e.to_string())?;
    client
        .propose_dkg(cpb::ProposeDkgRequest {
            node_id: me,
            step: bytes,
            signature,
        })
        .await
        .map(drop)
        .map_err(|s| s.message().to_owned())
}
