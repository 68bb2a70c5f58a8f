//! The group's distributed key generation on this server
//! (docs/THRESHOLD.md §1): the leader begins a ceremony once the group has
//! three voters and no key (or the last ceremony failed or stalled), and
//! each member takes its steps as the log shows the previous round
//! complete: its round-1 package, then its round-2 packages sealed to each
//! other member's share key, then its key package, written to its data dir
//! before it reports the group key. The log is the broadcast; a member that
//! is not the leader proposes through the leader's internal service.
//!
//! The round secrets live only in this task's memory. A member that
//! restarts mid-ceremony cannot finish it; the leader begins a new one once
//! [`DKG_STALL_SECS`] pass without an end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use vmail_proto::cluster_pb as cpb;
use vmail_proto::share;

use super::AuthService;
use crate::cluster::{Command, Reply};
use crate::datadir::frost_keys;
use crate::store::{Ceremony, CeremonyEnd, DkgOutcome, DkgStep, SealedPackage};
use crate::threshold::dkg::{self, DkgRound1, DkgRound2};
use crate::threshold::{
    self, MIN_MEMBERS, Roster, Wire, dkg_round1 as round1, dkg_round2 as round2,
};
use crate::tls::ClusterTls;

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

/// This member's part of one ceremony, in memory only.
#[derive(Default)]
struct Mine {
    ceremony: u64,
    round1: Option<DkgRound1>,
    round1_bytes: Vec<u8>,
    round2: Option<DkgRound2>,
    /// The last step proposed, proposed again until the log shows it.
    sent: Option<DkgStep>,
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
    dir: &std::path::Path,
    mine: &mut Mine,
) -> Result<(), String> {
    let current = svc
        .db(|s| s.current_ceremony())
        .await
        .map_err(|e| e.to_string())?;
    if svc.is_leader()
        && let Some(roster) = roster_to_begin(svc, current.as_ref())
    {
        let reply = svc
            .propose(Command::DkgBegin {
                roster: roster.clone(),
                now: svc.now(),
            })
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(?reply, ?roster, "began a key generation");
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
            ..Mine::default()
        };
    }
    let roster = Roster::new(&c.roster).map_err(|e| e.to_string())?;
    let step = if !c.round1.contains_key(&me) {
        if mine.round1_bytes.is_empty() {
            let (state, package) =
                dkg::start(&roster, me, &mut rand::rngs::OsRng).map_err(|e| e.to_string())?;
            mine.round1_bytes = package.to_wire().map_err(|e| e.to_string())?;
            mine.round1 = Some(state);
            mine.sent = Some(DkgStep::Round1 {
                ceremony: number,
                package: mine.round1_bytes.clone(),
            });
        }
        mine.sent.take()
    } else if c.round1_complete() && !c.round2.contains_key(&me) {
        if mine.round1.is_some() {
            let keys = svc
                .db(|s| s.newest_share_keys())
                .await
                .map_err(|e| e.to_string())?;
            if let Some(m) = c.roster.iter().find(|m| **m != me && !keys.contains_key(m)) {
                // Its share key comes with its first start; wait for it
                // rather than spend the round state.
                tracing::debug!(member = %format!("{m:016x}"), "waiting for a member's share key");
                return Ok(());
            }
            let state = mine.round1.take().expect("checked above");
            mine.sent = Some(round2(&c, &roster, number, me, mine, state, &keys)?);
        }
        mine.sent.take()
    } else if c.round2_complete() && !c.done.contains_key(&me) {
        if let Some(state) = mine.round2.take() {
            mine.sent = Some(finish(svc, dir, &c, &roster, number, me, state)?);
        }
        mine.sent.take()
    } else {
        None
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

/// The voters among whom the leader should begin a ceremony now, if it
/// should.
fn roster_to_begin(svc: &AuthService, current: Option<&(u64, Ceremony)>) -> Option<Vec<u64>> {
    let voters: Vec<u64> = svc
        .raft
        .metrics()
        .borrow()
        .membership_config
        .voter_ids()
        .collect();
    let due = voters.len() >= MIN_MEMBERS
        && match current {
            None => true,
            Some((_, c)) => match &c.end {
                Some(CeremonyEnd::Key { .. }) => false,
                // A failed ceremony is begun again no sooner than a stalled
                // one, so a member that keeps failing it costs one entry a
                // minute.
                Some(CeremonyEnd::Failed(_)) | None => {
                    svc.now().saturating_sub(c.began_at) > DKG_STALL_SECS
                }
            },
        };
    due.then_some(voters)
}

/// Part 2: checks that the log holds this member's own round-1 package,
/// then seals one round-2 package to each other member's newest share key.
fn round2(
    c: &Ceremony,
    roster: &Roster,
    number: u64,
    me: u64,
    mine: &mut Mine,
    state: DkgRound1,
    keys: &BTreeMap<u64, (share::ShareKey, u64)>,
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
        let (key, _) = keys
            .get(&to)
            .ok_or_else(|| format!("{to:016x} has published no share key"))?;
        let bytes = package.to_wire().map_err(|e| e.to_string())?;
        let (enc, ciphertext) = share::seal_bytes(
            &key.public,
            DKG_ROUND2_INFO,
            &bytes,
            &round2_aad(number, me, to, key.epoch),
        )
        .map_err(|e| e.to_string())?;
        sealed.push(SealedPackage {
            to,
            epoch: key.epoch,
            enc,
            ciphertext,
        });
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
    dir: &std::path::Path,
    c: &Ceremony,
    roster: &Roster,
    number: u64,
    me: u64,
    state: DkgRound2,
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
        let secret = svc.share_keys.secret(p.epoch).ok_or_else(|| {
            format!(
                "the round-2 package of {from:016x} is sealed to share-key epoch {}, which this server no longer holds",
                p.epoch
            )
        })?;
        let bytes = share::open_bytes(
            &secret,
            DKG_ROUND2_INFO,
            &p.enc,
            &p.ciphertext,
            &round2_aad(number, *from, me, p.epoch),
        )
        .map_err(|e| format!("the round-2 package of {from:016x} does not open: {e}"))?;
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
    let group_key = threshold::group_key_bytes(&public).map_err(|e| e.to_string())?;
    let public_digest = Sha256::digest(public.to_wire().map_err(|e| e.to_string())?).into();
    tracing::info!(
        ceremony = number,
        group_key = %hex::encode(group_key),
        "holds its share of the group signing key"
    );
    Ok(DkgStep::Done {
        ceremony: number,
        group_key,
        public_digest,
    })
}

/// Proposes `step` in this member's name: directly on the leader, through
/// the leader's internal service elsewhere.
async fn propose(
    svc: &AuthService,
    tls: &ClusterTls,
    me: u64,
    step: DkgStep,
) -> Result<(), String> {
    if svc.is_leader() {
        return match svc
            .propose(Command::Dkg { node_id: me, step })
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
            step: postcard::to_allocvec(&step).expect("in-memory encoding cannot fail"),
        })
        .await
        .map(drop)
        .map_err(|s| s.message().to_owned())
}
