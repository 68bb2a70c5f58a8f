//! The server side of the internal `vmail.auth.cluster.v1` service: a thin
//! adapter that hands Raft RPCs to openraft and runs the membership
//! operations on the leader, including a member's publication of its share
//! key, its key-ceremony steps and its join approvals. It is served on its
//! own port, over mutual TLS with the group's CA. Over 600 lines because
//! it is one `impl Cluster`, a handler per RPC, each a few checks and a
//! proposal; the handlers share the caller checks above them, and a split
//! by RPC would scatter those.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use serde::Serialize;
use tonic::{Request, Response, Status};
use vmail_proto::cluster_pb::{self as pb, cluster_server::Cluster};

use super::network::{LEADER_RAFT_URL, RAFT_TARGET, decode, encode, is_https, not_https};
use super::signer::{SignError, Signer};
use super::{Command, Member, Raft, Reply, peer_name, x25519_public};
use crate::config::ServerConfig;
use crate::keys::ServerKeys;
use crate::store::{DkgOutcome, DkgStep, MAX_STEP_LEN, MemberKeyOutcome, Vouch};

/// The clock a member's entries are stamped with, Unix seconds.
pub type Now = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The internal service of one member.
#[derive(Clone)]
pub struct ClusterService {
    raft: Raft,
    keys: Arc<ServerKeys>,
    config: ServerConfig,
    now: Now,
    signer: Arc<Signer>,
}

impl std::fmt::Debug for ClusterService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterService")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// The subject common name of the caller's TLS client certificate (the
/// chain was verified against the group CA by the TLS layer).
fn caller_name<T>(req: &Request<T>) -> Option<String> {
    req.peer_certs()
        .and_then(|certs| certs.first().and_then(|c| peer_name::common_name(c)))
}

impl ClusterService {
    /// The member `node_id`, if the caller's TLS certificate names it: a
    /// server acts in the group's log only for itself.
    fn calling_member(
        &self,
        caller: Option<String>,
        node_id: u64,
        what: &str,
    ) -> Result<Member, Status> {
        let member = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&node_id)
            .cloned()
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "node {node_id:016x} is not a member of the group; a server {what}"
                ))
            })?;
        match caller {
            Some(name) if name == member.name => Ok(member),
            other => Err(Status::permission_denied(format!(
                "node {node_id:016x} is {}, but the caller's TLS certificate names {}: a server {what}",
                member.name,
                other.as_deref().unwrap_or("no one")
            ))),
        }
    }

    /// The service of the member running `raft`; `now` stamps the share
    /// keys it publishes for others; `signer` answers signing rounds.
    pub fn new(
        raft: Raft,
        keys: Arc<ServerKeys>,
        config: ServerConfig,
        now: Now,
        signer: Arc<Signer>,
    ) -> Self {
        Self {
            raft,
            keys,
            config,
            now,
            signer,
        }
    }

    /// The caller's node id and name, from its TLS certificate: only a
    /// member of the group takes part in a signing round.
    fn signing_member(&self, caller: Option<String>) -> Result<(u64, String), Status> {
        let name = caller.ok_or_else(|| {
            Status::permission_denied("a signing round needs a member's TLS client certificate")
        })?;
        let id = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .find_map(|(id, m)| (m.name == name).then_some(*id));
        id.map(|id| (id, name.clone())).ok_or_else(|| {
            Status::permission_denied(format!(
                "{name} is not a member of the group; only members take part in signing"
            ))
        })
    }

    /// Refuses a Raft RPC meant for another node than this one (an earlier
    /// incarnation of this server, at the same address), as unreachable.
    fn check_target<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let me = self.raft.metrics().borrow().id;
        let target = req
            .metadata()
            .get(RAFT_TARGET)
            .and_then(|v| v.to_str().ok());
        match target {
            Some(t) if t == me.to_string() => Ok(()),
            Some(t) => Err(Status::unavailable(format!(
                "this address now serves node {me:016x}, not node {t}"
            ))),
            None => Err(Status::invalid_argument(format!(
                "a Raft RPC must name its target node in {RAFT_TARGET}"
            ))),
        }
    }

    /// Refuses a membership call on a follower, naming the leader.
    async fn require_leader(&self) -> Result<(), Status> {
        let me = self.raft.metrics().borrow().id;
        match self.raft.current_leader().await {
            Some(l) if l == me => Ok(()),
            leader => Err(self.not_leader(leader)),
        }
    }

    fn not_leader(&self, leader: Option<u64>) -> Status {
        let node = leader.and_then(|l| {
            self.raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&l)
                .cloned()
        });
        not_leader_status(node.as_ref())
    }
}

fn not_leader_status(leader: Option<&Member>) -> Status {
    match leader {
        Some(m) => {
            let mut s = Status::unavailable(format!(
                "this server is not the leader; the leader is {}",
                m.name
            ));
            if let Ok(v) = m.raft_url.parse() {
                s.metadata_mut().insert(LEADER_RAFT_URL, v);
            }
            s
        }
        None => Status::unavailable("no leader is known right now; retry in a few seconds"),
    }
}

fn payload<T: Serialize>(v: &T) -> Response<pb::RaftPayload> {
    Response::new(pb::RaftPayload {
        payload: encode(v),
        error: String::new(),
    })
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, Member>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            not_leader_status(f.leader_node.as_ref())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Status::failed_precondition(format!("membership change refused: {c}"))
        }
        RaftError::Fatal(f) => Status::unavailable(format!("this server's Raft stopped: {f}")),
    }
}

/// The status of a refused signing round.
fn sign_status(e: SignError) -> Status {
    let why = e.to_string();
    match e {
        SignError::NoGroupKey
        | SignError::NoKeyPackage(_)
        | SignError::OtherCeremony { .. }
        | SignError::Absent(_) => Status::failed_precondition(why),
        SignError::NotInRoster(_) | SignError::Mismatch { .. } => Status::permission_denied(why),
        SignError::Behind { .. } | SignError::TooFewSigners { .. } | SignError::Stopping => {
            Status::unavailable(why)
        }
        SignError::Busy(_) => Status::resource_exhausted(why),
        SignError::Malformed(_) | SignError::UnknownHandle | SignError::Threshold(_) => {
            Status::invalid_argument(why)
        }
        SignError::DataDir(_) | SignError::Store(_) => Status::internal(why),
    }
}

/// Converts a member description from the wire.
pub fn member_from_pb(m: Option<pb::Member>) -> Result<(u64, Member), Status> {
    let m = m.ok_or_else(|| Status::invalid_argument("member: missing"))?;
    if m.name.is_empty() || m.api_url.is_empty() || m.raft_url.is_empty() {
        return Err(Status::invalid_argument(
            "member: name, api_url and raft_url must all be set",
        ));
    }
    for (what, url) in [
        ("member api_url", &m.api_url),
        ("member raft_url", &m.raft_url),
    ] {
        if !is_https(url) {
            return Err(Status::invalid_argument(not_https(what, url)));
        }
    }
    Ok((
        m.id,
        Member {
            name: m.name,
            api_url: m.api_url,
            raft_url: m.raft_url,
        },
    ))
}

/// Checks that a member-key signature has Ed25519's 64 bytes; `hint`
/// ends the error.
fn member_signature(signature: &[u8], hint: &str) -> Result<(), Status> {
    if signature.len() == 64 {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "signature: {} bytes, expected 64{hint}",
        signature.len()
    )))
}

/// Checks that `bytes` is an Ed25519 public key: 32 bytes of a valid point.
fn ed25519_public(bytes: &[u8]) -> Result<[u8; 32], String> {
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("{} bytes, expected 32", bytes.len()))?;
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| "not a valid Ed25519 public key".to_owned())?;
    Ok(key)
}

/// Converts a member description to the wire.
pub fn member_to_pb(id: u64, m: &Member) -> pb::Member {
    pb::Member {
        id,
        name: m.name.clone(),
        api_url: m.api_url.clone(),
        raft_url: m.raft_url.clone(),
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check_target(&req)?;
        let rpc = decode(&req.into_inner().payload).map_err(Status::invalid_argument)?;
        Ok(payload(&self.raft.append_entries(rpc).await))
    }

    async fn vote(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check_target(&req)?;
        let rpc = decode(&req.into_inner().payload).map_err(Status::invalid_argument)?;
        Ok(payload(&self.raft.vote(rpc).await))
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check_target(&req)?;
        let rpc = decode(&req.into_inner().payload).map_err(Status::invalid_argument)?;
        Ok(payload(&self.raft.install_snapshot(rpc).await))
    }

    async fn group_keys(
        &self,
        _req: Request<pb::GroupKeysRequest>,
    ) -> Result<Response<pb::GroupKeysResponse>, Status> {
        let k = &self.keys;
        tracing::info!("handing the group keys to a joining server");
        Ok(Response::new(pb::GroupKeysResponse {
            ca_cert_pem: k.ca_cert_pem.clone(),
            ca_key_pem: k.ca_key_pem.clone(),
            cluster_key: k.cluster_key.to_bytes().to_vec(),
            opaque_setup: k.opaque_setup.serialize().to_vec(),
            data_key: k.data_key.as_bytes().to_vec(),
            config_toml: toml::to_string_pretty(&self.config).expect("config serialises"),
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let r = req.into_inner();
        let (id, member) = member_from_pb(r.member)?;
        let member_key = ed25519_public(&r.member_key).map_err(|why| {
            Status::invalid_argument(format!(
                "member_key: {why} (the joining server's member key); is the joining server \
                 older than this one?"
            ))
        })?;
        self.require_leader().await?;
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let mut stale = BTreeSet::new();
        for (nid, m) in membership.nodes() {
            if m.name == member.name && *nid != id {
                stale.insert(*nid);
            }
        }
        if !stale.is_empty() {
            // A wiped server rejoins under its old name with a new id: the
            // old incarnation's state is gone, so it must not count as a voter.
            tracing::info!(name = %member.name, ?stale, "replacing an earlier member of the same name");
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            let stale_voters: BTreeSet<u64> = stale.intersection(&voters).copied().collect();
            if !stale_voters.is_empty() {
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(stale_voters), false)
                    .await
                    .map_err(write_error)?;
            }
            let still: BTreeSet<u64> = stale
                .into_iter()
                .filter(|n| {
                    self.raft
                        .metrics()
                        .borrow()
                        .membership_config
                        .membership()
                        .get_node(n)
                        .is_some()
                })
                .collect();
            if !still.is_empty() {
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(still), false)
                    .await
                    .map_err(write_error)?;
            }
        }
        let (member_now, voter_now) = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            (
                m.membership().get_node(&id).is_some(),
                m.voter_ids().any(|v| v == id),
            )
        };
        if voter_now {
            // A retried join of a server that already votes.
            return Ok(Response::new(pb::JoinResponse {
                log_index: self.raft.metrics().borrow().last_log_index.unwrap_or(0),
                voter: true,
            }));
        }
        // A new node's member key goes in before the node does, so that
        // nobody can record another for its id once the id is in the log.
        // A member's id is not new: its key comes from its own publication.
        if !member_now {
            let resp = self
                .raft
                .client_write(Command::RegisterMember {
                    node_id: id,
                    member_key,
                })
                .await
                .map_err(write_error)?;
            if resp.data == Reply::MemberRegistered(MemberKeyOutcome::OtherKey) {
                return Err(Status::failed_precondition(format!(
                    "node id {id} has another member key recorded: a server that lost its \
                     DATA_DIR/member.key joins again under a new node id (wipe its data directory)"
                )));
            }
        }
        tracing::info!(%member, id, "adding a learner; waiting for it to catch up");
        let learner = self
            .raft
            .add_learner(id, member.clone(), true)
            .await
            .map_err(write_error)?;
        // Once the group has a key, the CA certificate that got the caller
        // here is not enough to vote: share holders approve first, and the
        // key duty promotes it then.
        let key = self
            .signer
            .key_ceremony()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if let Some(k) = key {
            let approvers = self
                .signer
                .db(move |s| s.join_approvals(id))
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            if k.holders_among(&approvers) < usize::from(k.threshold) {
                tracing::info!(%member, id, "a learner until share holders approve it");
                return Ok(Response::new(pb::JoinResponse {
                    log_index: learner.log_id.index,
                    voter: false,
                }));
            }
        }
        let resp = self
            .raft
            .change_membership(
                ChangeMembers::AddVoters(BTreeMap::from([(id, member.clone())])),
                false,
            )
            .await
            .map_err(write_error)?;
        tracing::info!(%member, id, "now a voter");
        Ok(Response::new(pb::JoinResponse {
            log_index: resp.log_id.index,
            voter: true,
        }))
    }

    async fn approve_join(
        &self,
        req: Request<pb::ApproveJoinRequest>,
    ) -> Result<Response<pb::ApproveJoinResponse>, Status> {
        let caller = caller_name(&req);
        let r = req.into_inner();
        member_signature(&r.signature, "")?;
        self.require_leader().await?;
        let member =
            self.calling_member(caller, r.approver, "approves joins only in its own name")?;
        let resp = self
            .raft
            .client_write(Command::ApproveJoin {
                approver: r.approver,
                joining: r.joining,
                signature: r.signature,
            })
            .await
            .map_err(write_error)?;
        match resp.data {
            Reply::JoinApproved(Ok(approvers)) => {
                tracing::info!(approver = %member.name, joining = format!("{:016x}", r.joining), ?approvers, "join approved");
                Ok(Response::new(pb::ApproveJoinResponse { approvers }))
            }
            Reply::JoinApproved(Err(why)) => Err(Status::failed_precondition(why)),
            Reply::Failed(why) => Err(Status::internal(why)),
            other => Err(Status::internal(format!(
                "unexpected reply {other:?} to a join approval"
            ))),
        }
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let name = req.into_inner().name;
        self.require_leader().await?;
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let Some(id) = membership
            .nodes()
            .find(|(_, m)| m.name == name)
            .map(|(id, _)| *id)
        else {
            return Err(Status::not_found(format!(
                "no member is named {name:?}; see `vmail-auth cluster status`"
            )));
        };
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition(format!(
                    "{name} is the group's only voter; removing it would leave no group"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(write_error)?;
        tracing::info!(%name, id, "removed from the group");
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let name_of = |id: &u64| membership.get_node(id).map(|n| n.name.clone());
        let ids: Vec<u64> = membership.nodes().map(|(id, _)| *id).collect();
        let member_keys = self
            .signer
            .db(move |s| {
                ids.into_iter()
                    .map(|id| Ok((id, s.member_key(id)?)))
                    .collect::<Result<BTreeMap<u64, Option<[u8; 32]>>, _>>()
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let members = membership
            .nodes()
            .map(|(id, node)| pb::MemberStatus {
                member: Some(member_to_pb(*id, node)),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                matched: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map_or(0, |l| l.index),
                member_key: member_keys
                    .get(id)
                    .copied()
                    .flatten()
                    .map_or_else(Vec::new, |k| k.to_vec()),
            })
            .collect();
        let me = membership
            .get_node(&m.id)
            .map(|n| member_to_pb(m.id, n))
            .unwrap_or(pb::Member {
                id: m.id,
                name: self.config.name.clone(),
                ..Default::default()
            });
        let state = if m.running_state.is_err() {
            "shutdown".to_owned()
        } else {
            format!("{:?}", m.state).to_lowercase()
        };
        let key = self
            .signer
            .key_ceremony()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::StatusResponse {
            group_key: key.as_ref().map_or_else(Vec::new, |k| k.group_key.to_vec()),
            key_ceremony: key.as_ref().map_or(0, |k| k.number),
            key_threshold: key.as_ref().map_or(0, |k| u32::from(k.threshold)),
            key_holders: key.map_or_else(Vec::new, |k| k.roster),
            self_: Some(me),
            state,
            term: m.current_term,
            leader: m
                .current_leader
                .as_ref()
                .and_then(name_of)
                .unwrap_or_default(),
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            members,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
        }))
    }

    async fn propose_dkg(
        &self,
        req: Request<pb::ProposeDkgRequest>,
    ) -> Result<Response<pb::ProposeDkgResponse>, Status> {
        let caller = caller_name(&req);
        let r = req.into_inner();
        if r.step.len() > MAX_STEP_LEN {
            return Err(Status::invalid_argument(format!(
                "step: {} bytes, at most {MAX_STEP_LEN}",
                r.step.len()
            )));
        }
        let step: DkgStep = postcard::from_bytes(&r.step)
            .map_err(|e| Status::invalid_argument(format!("step: not a DKG step: {e}")))?;
        member_signature(
            &r.signature,
            "; is the proposing server older than this one?",
        )?;
        self.require_leader().await?;
        let member = self.calling_member(caller, r.node_id, "proposes only its own DKG steps")?;
        let resp = self
            .raft
            .client_write(Command::VouchedDkg {
                node_id: r.node_id,
                step,
                signature: r.signature,
            })
            .await
            .map_err(write_error)?;
        match resp.data {
            Reply::Dkg(DkgOutcome::Refused(why)) => Err(Status::failed_precondition(format!(
                "DKG step of {} refused: {why}",
                member.name
            ))),
            Reply::Dkg(_) => Ok(Response::new(pb::ProposeDkgResponse {})),
            Reply::Failed(why) => Err(Status::internal(why)),
            other => Err(Status::internal(format!(
                "unexpected reply {other:?} to a DKG step"
            ))),
        }
    }

    async fn sign_commit(
        &self,
        req: Request<pb::SignCommitRequest>,
    ) -> Result<Response<pb::SignCommitResponse>, Status> {
        let (id, name) = self.signing_member(caller_name(&req))?;
        let r = req.into_inner();
        let (handle, commitments) = self
            .signer
            .commit(&name, id, r.ceremony, r.applied_index, &r.target)
            .await
            .map_err(sign_status)?;
        Ok(Response::new(pb::SignCommitResponse {
            handle: handle.to_vec(),
            commitments,
        }))
    }

    async fn sign_share(
        &self,
        req: Request<pb::SignShareRequest>,
    ) -> Result<Response<pb::SignShareResponse>, Status> {
        let (_, name) = self.signing_member(caller_name(&req))?;
        let r = req.into_inner();
        let prepared = (!r.target.is_empty()).then_some((r.applied_index, r.target.as_slice()));
        let share = self
            .signer
            .share(&name, &r.handle, &r.signing_package, prepared)
            .await
            .map_err(sign_status)?;
        Ok(Response::new(pb::SignShareResponse { share }))
    }

    async fn sign_prepare(
        &self,
        req: Request<pb::SignPrepareRequest>,
    ) -> Result<Response<pb::SignPrepareResponse>, Status> {
        let (id, name) = self.signing_member(caller_name(&req))?;
        let r = req.into_inner();
        let rounds = self
            .signer
            .prepare(&name, id, r.ceremony, r.count)
            .await
            .map_err(sign_status)?
            .into_iter()
            .map(|(handle, commitments)| pb::SignCommitResponse {
                handle: handle.to_vec(),
                commitments,
            })
            .collect();
        Ok(Response::new(pb::SignPrepareResponse { rounds }))
    }

    async fn publish_share_key(
        &self,
        req: Request<pb::PublishShareKeyRequest>,
    ) -> Result<Response<pb::PublishShareKeyResponse>, Status> {
        // The chain was verified against the group CA by the TLS layer; the
        // name in it must be the member's whose key this is. An operator
        // credential (`cluster credential`) is CA-signed too, under a name
        // of the operator's choosing: whoever holds the CA can already
        // issue any name, so that is no new power.
        let caller = caller_name(&req);
        let r = req.into_inner();
        let public_key = x25519_public(&r.public_key)
            .map_err(|why| Status::invalid_argument(format!("public_key: {why}")))?;
        if r.epoch == 0 {
            return Err(Status::invalid_argument("epoch: 0; epochs start at 1"));
        }
        self.require_leader().await?;
        let member = self.calling_member(caller, r.node_id, "publishes only its own share key")?;
        let member_key = ed25519_public(&r.member_key).map_err(|why| {
            Status::invalid_argument(format!(
                "member_key: {why}; is the publishing server older than this one?"
            ))
        })?;
        member_signature(&r.signature, "")?;
        let resp = self
            .raft
            .client_write(Command::PublishVouchedShareKey {
                node_id: r.node_id,
                epoch: r.epoch,
                public_key,
                vouch: Vouch {
                    member_key,
                    signature: r.signature,
                },
                now: (self.now)(),
            })
            .await
            .map_err(write_error)?;
        match resp.data {
            Reply::ShareKeyPublished(crate::store::PublishOutcome::Stale { newest }) => {
                Err(Status::failed_precondition(format!(
                    "{} already published epoch {newest}; a new share key needs a later epoch",
                    member.name
                )))
            }
            Reply::ShareKeyPublished(crate::store::PublishOutcome::Unvouched(why)) => {
                tracing::warn!(member = %member.name, %why, "refused a share key");
                Err(Status::permission_denied(format!(
                    "the share key for {} is refused: {why}",
                    member.name
                )))
            }
            Reply::ShareKeyPublished(_) => {
                tracing::info!(member = %member.name, epoch = r.epoch, "share key published");
                Ok(Response::new(pb::PublishShareKeyResponse {}))
            }
            Reply::Failed(why) => Err(Status::internal(why)),
            other => Err(Status::internal(format!(
                "unexpected reply {other:?} to a share-key publication"
            ))),
        }
    }
}
