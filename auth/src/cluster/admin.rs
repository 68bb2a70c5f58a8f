//! Membership operations from the outside: issuing a join credential,
//! joining a group, and asking a member for the group's status or to remove
//! a member. `vmail-auth join` and `vmail-auth cluster`, the tests and the
//! local testnet all use these.
//!
//! Every call is mutual TLS on the internal service. A follower refuses a
//! membership change naming the leader, and the call is retried there.

use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use opaque_ke::ServerSetup;
use vmail_proto::cluster_pb as pb;
use vmail_proto::keys::SecretKey;
use vmail_proto::opaque::Suite;

use super::Member;
use super::network::LEADER_RAFT_URL;
use super::rpc::member_to_pb;
use crate::config::ServerConfig;
use crate::datadir::{self, DataDirError, InitOptions};
use crate::keys::{GroupSecrets, ServerKeys};
use crate::tls::ClusterTls;

/// Why a membership operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A local file is wrong.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The credential file is not a bundle `cluster credential` wrote.
    #[error("{path}: {why}. Issue a new one with `vmail-auth cluster credential` on a member")]
    Credential {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A join approval cannot be made.
    #[error("{0}")]
    Approve(String),
    /// The member refused or could not be reached.
    #[error("{url}: {why}")]
    Call {
        /// The member called.
        url: String,
        /// What went wrong.
        why: String,
    },
}

fn call_err(url: &str, s: &tonic::Status) -> AdminError {
    let chain = status_chain(s);
    let why = match s.code() {
        tonic::Code::Unavailable if chain.contains("tls") || chain.contains("certificate") => {
            format!("{chain}. The TLS handshake failed: is the credential from this group's CA?")
        }
        // The public API answers every internal method UNIMPLEMENTED.
        tonic::Code::Unimplemented => format!(
            "{chain}: this is not a member's internal (Raft) service; is it the public API's URL? \
             Give the internal URL, on the member's raft_listen port (e.g. https://auth-1:7444), \
             or leave --url out to ask the member whose --data-dir is given"
        ),
        _ => chain,
    };
    AdminError::Call {
        url: url.to_owned(),
        why,
    }
}

/// A status as one line: its code, its message, and every cause under it
/// (a transport error's own message says little: "transport error").
pub fn status_chain(s: &tonic::Status) -> String {
    let mut out = format!("{:?}", s.code());
    if !s.message().is_empty() {
        out.push_str(": ");
        out.push_str(s.message());
    }
    let mut cause = std::error::Error::source(s);
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

/// How long a join credential is valid: it opens the group's secrets, so it
/// should not outlive the join it was made for.
pub const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Issues a join credential for a new server named `name`: a certificate
/// and key signed by the group CA of the member in `member_dir`.
pub fn issue_credential_tls(member_dir: &Path, name: &str) -> Result<ClusterTls, AdminError> {
    let keys = datadir::load_keys(member_dir)?;
    let group = secrets_of(&keys);
    let (cert_pem, key_pem) = group
        .issue(
            &format!("join credential for {name}"),
            vec![name.to_owned()],
            Some(CREDENTIAL_LIFETIME),
        )
        .map_err(DataDirError::from)?;
    Ok(ClusterTls {
        ca_pem: keys.ca_cert_pem,
        cert_pem,
        key_pem,
    })
}

/// Writes a join credential ([`issue_credential_tls`]) as one PEM bundle:
/// certificate, key, CA certificate. Created 0600, never overwritten.
pub fn issue_credential(member_dir: &Path, name: &str, out: &Path) -> Result<(), AdminError> {
    let tls = issue_credential_tls(member_dir, name)?;
    let bundle = format!("{}{}{}", tls.cert_pem, tls.key_pem, tls.ca_pem);
    datadir::write_new(out, bundle.as_bytes(), 0o600)?;
    Ok(())
}

fn secrets_of(keys: &ServerKeys) -> GroupSecrets {
    GroupSecrets {
        ca_cert_pem: keys.ca_cert_pem.clone(),
        ca_key_pem: keys.ca_key_pem.clone(),
        cluster_key: keys.cluster_key.clone(),
        opaque_setup: keys.opaque_setup.clone(),
        data_key: keys.data_key.clone(),
    }
}

/// Reads a join credential bundle.
pub fn read_credential(path: &Path) -> Result<ClusterTls, AdminError> {
    let bad = |why: String| AdminError::Credential {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    let mut key = None;
    for block in text.split("-----BEGIN ").skip(1) {
        let pem = format!("-----BEGIN {block}");
        if block.starts_with("CERTIFICATE") {
            certs.push(pem);
        } else if block.starts_with("PRIVATE KEY") {
            key = Some(pem);
        }
    }
    match (certs.as_slice(), key) {
        ([cert, ca], Some(key)) => Ok(ClusterTls {
            ca_pem: ca.clone(),
            cert_pem: cert.clone(),
            key_pem: key,
        }),
        _ => Err(bad(
            "expected a certificate, a private key and the CA certificate".into(),
        )),
    }
}

/// The TLS identity of a member, from its data directory.
pub fn member_tls(dir: &Path) -> Result<ClusterTls, AdminError> {
    Ok(ClusterTls::of_member(&datadir::load_keys(dir)?))
}

/// Fetches the group's secrets and policy config from a member.
pub async fn fetch_group(
    via: &str,
    tls: &ClusterTls,
) -> Result<(GroupSecrets, ServerConfig), AdminError> {
    let mut client = tls.client(via).map_err(|why| AdminError::Call {
        url: via.to_owned(),
        why,
    })?;
    let r = client
        .group_keys(pb::GroupKeysRequest {})
        .await
        .map_err(|s| call_err(via, &s))?
        .into_inner();
    let bad = |why: String| AdminError::Call {
        url: via.to_owned(),
        why: format!("sent unusable group keys: {why}"),
    };
    let cluster_key: [u8; 32] = r
        .cluster_key
        .as_slice()
        .try_into()
        .map_err(|_| bad("cluster key length".into()))?;
    let data_key: [u8; 32] = r
        .data_key
        .as_slice()
        .try_into()
        .map_err(|_| bad("data key length".into()))?;
    let opaque_setup =
        ServerSetup::<Suite>::deserialize(&r.opaque_setup).map_err(|e| bad(e.to_string()))?;
    let config: ServerConfig = toml::from_str(&r.config_toml).map_err(|e| bad(e.to_string()))?;
    Ok((
        GroupSecrets {
            ca_cert_pem: r.ca_cert_pem,
            ca_key_pem: r.ca_key_pem,
            cluster_key: SigningKey::from_bytes(&cluster_key),
            opaque_setup,
            data_key: SecretKey::from_bytes(data_key),
        },
        config,
    ))
}

/// Creates the data directory of a server that will join the group `via`
/// reaches, with the group's secrets fetched over mutual TLS using
/// `credential`.
pub async fn prepare_join(
    opts: &InitOptions,
    via: &str,
    credential: &ClusterTls,
) -> Result<(), AdminError> {
    let (group, config) = fetch_group(via, credential).await?;
    datadir::init_member(opts, &group, config)?;
    Ok(())
}

/// How long [`request_join`] keeps trying while the group elects a leader.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(120);

/// Asks the group to add `member` (node `id`, whose member key is
/// `member_key`, `ShareKeyRing::member_public`): as a learner first, then,
/// once it has caught up, as a voter, unless the group has a key and the
/// joined server awaits approval. Follows leader redirects and retries
/// while no leader is known, up to [`JOIN_DEADLINE`].
pub async fn request_join(
    via: &str,
    tls: &ClusterTls,
    id: u64,
    member: &Member,
    member_key: [u8; 32],
) -> Result<Joined, AdminError> {
    let req = pb::JoinRequest {
        member: Some(member_to_pb(id, member)),
        member_key: member_key.to_vec(),
    };
    with_leader(via, tls, JOIN_DEADLINE, |mut c| {
        let req = req.clone();
        async move {
            c.join(req).await.map(|r| {
                let r = r.into_inner();
                Joined {
                    log_index: r.log_index,
                    voter: r.voter,
                }
            })
        }
    })
    .await
}

/// What [`request_join`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The index of the membership entry that added the server.
    pub log_index: u64,
    /// Whether it votes already; a group with a key keeps it a learner
    /// until the key's threshold of share holders approved it
    /// ([`approve_join`]).
    pub voter: bool,
}

/// Approves the join of the member named `name` with the member key of
/// the member whose data directory is `member_dir`, through the group at
/// `via` (docs/PROTOCOL.md §16.9). With `expected`, the member key the log
/// recorded for `name` must be that one. Returns the joining member's
/// node id and member key, and the members that approved it so far.
pub async fn approve_join(
    member_dir: &Path,
    via: &str,
    name: &str,
    expected: Option<[u8; 32]>,
) -> Result<(u64, [u8; 32], Vec<u64>), AdminError> {
    let tls = member_tls(member_dir)?;
    let me = datadir::load_config(member_dir)?.name;
    let group = status(via, &tls).await?;
    let approver = group
        .members
        .iter()
        .find(|m| m.member.name == me)
        .or((group.me.member.name == me).then_some(&group.me))
        .ok_or_else(|| {
            AdminError::Approve(format!(
                "{me} (the data directory's server) is not a member of the group at {via}"
            ))
        })?
        .id;
    let named: Vec<&MemberStatus> = group
        .members
        .iter()
        .filter(|m| m.member.name == name)
        .collect();
    let joining = match (named.as_slice(), expected) {
        ([], _) => {
            return Err(AdminError::Approve(format!(
                "{name} is not a member of the group; it must join first (vmail-auth join)"
            )));
        }
        ([one], _) => *one,
        // A wiped server rejoining: its old incarnation is still listed.
        (_, Some(want)) => named
            .iter()
            .find(|m| m.member_key == Some(want))
            .copied()
            .unwrap_or(named[0]),
        (_, None) => {
            return Err(AdminError::Approve(format!(
                "{} members are named {name} (a server rejoining while its old incarnation is \
                 still listed); give --member-key as its join printed it",
                named.len()
            )));
        }
    };
    let key = joining.member_key.ok_or_else(|| {
        AdminError::Approve(format!(
            "{name} has no member key recorded yet; approve it once it has joined"
        ))
    })?;
    if let Some(want) = expected
        && want != key
    {
        return Err(AdminError::Approve(format!(
            "the group recorded member key {} for {name}, not the {} given: this is not the \
             server you set up; do not approve it, and remove it (vmail-auth cluster remove)",
            hex::encode(key),
            hex::encode(want)
        )));
    }
    // Made by the server's first start; one made here the group never
    // recorded, and its approval would be refused.
    let key_file = member_dir.join(datadir::files::MEMBER_KEY);
    if !key_file.exists() {
        return Err(AdminError::Approve(format!(
            "{} is missing: start this member's server once (it makes its member key), or give \
             the data directory of a member that runs",
            key_file.display()
        )));
    }
    let signer = datadir::member_key(member_dir)?;
    let req = pb::ApproveJoinRequest {
        approver,
        joining: joining.id,
        signature: ed25519_dalek::Signer::sign(
            &signer,
            &crate::store::approval_bytes(joining.id, &key),
        )
        .to_bytes()
        .to_vec(),
    };
    let approvers = with_leader(via, &tls, Duration::from_secs(30), |mut c| {
        let req = req.clone();
        async move { c.approve_join(req).await.map(|r| r.into_inner().approvers) }
    })
    .await?;
    Ok((joining.id, key, approvers))
}

/// Removes the member named `name` from the group.
pub async fn remove(via: &str, tls: &ClusterTls, name: &str) -> Result<(), AdminError> {
    let req = pb::RemoveRequest {
        name: name.to_owned(),
    };
    with_leader(via, tls, Duration::from_secs(30), |mut c| {
        let req = req.clone();
        async move { c.remove(req).await.map(|_| ()) }
    })
    .await
}

/// A member's view of the group.
pub async fn status(url: &str, tls: &ClusterTls) -> Result<GroupStatus, AdminError> {
    let mut client = tls.client(url).map_err(|why| AdminError::Call {
        url: url.to_owned(),
        why,
    })?;
    Ok(client
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| call_err(url, &s))?
        .into_inner()
        .into())
}

/// The group as one member sees it ([`status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// The member that answered.
    pub me: MemberStatus,
    /// Its Raft state: "leader", "follower", "candidate", "learner" or
    /// "shutdown".
    pub state: String,
    /// Its current term.
    pub term: u64,
    /// The leader's name, if it knows one.
    pub leader: Option<String>,
    /// The last index in its log.
    pub last_log_index: u64,
    /// The last index it applied.
    pub last_applied: u64,
    /// The last index in its snapshot.
    pub snapshot_index: u64,
    /// Every member of the group's membership.
    pub members: Vec<MemberStatus>,
    /// The group's threshold signing key, once a key generation completed.
    pub group_key: Option<GroupKeyStatus>,
}

/// The group key, as [`GroupStatus`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKeyStatus {
    /// The Ed25519 public key clients and peers pin.
    pub key: [u8; 32],
    /// The ceremony whose shares sign with it now.
    pub ceremony: u64,
    /// How many members sign together.
    pub threshold: u32,
    /// The node ids holding a share.
    pub holders: Vec<u64>,
}

/// One member, as [`GroupStatus`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its Raft node id.
    pub id: u64,
    /// Its name and URLs.
    pub member: Member,
    /// Whether it votes (a learner does not).
    pub voter: bool,
    /// The last log index the leader knows it holds (0 when not reported).
    pub matched: u64,
    /// Its member key as the log recorded it (docs/PROTOCOL.md §7.14).
    pub member_key: Option<[u8; 32]>,
}

impl From<pb::StatusResponse> for GroupStatus {
    fn from(s: pb::StatusResponse) -> Self {
        let member = |m: pb::Member| Member {
            name: m.name,
            api_url: m.api_url,
            raft_url: m.raft_url,
        };
        let me = s.self_.unwrap_or_default();
        Self {
            me: MemberStatus {
                id: me.id,
                voter: s
                    .members
                    .iter()
                    .any(|m| m.role == "voter" && m.member.as_ref().is_some_and(|x| x.id == me.id)),
                matched: 0,
                member_key: s
                    .members
                    .iter()
                    .find(|m| m.member.as_ref().is_some_and(|x| x.id == me.id))
                    .and_then(|m| m.member_key.as_slice().try_into().ok()),
                member: member(me),
            },
            state: s.state,
            term: s.term,
            leader: Some(s.leader).filter(|l| !l.is_empty()),
            last_log_index: s.last_log_index,
            last_applied: s.last_applied,
            snapshot_index: s.snapshot_index,
            members: s
                .members
                .into_iter()
                .map(|m| {
                    let info = m.member.unwrap_or_default();
                    MemberStatus {
                        id: info.id,
                        voter: m.role == "voter",
                        matched: m.matched,
                        member_key: m.member_key.as_slice().try_into().ok(),
                        member: member(info),
                    }
                })
                .collect(),
            group_key: <[u8; 32]>::try_from(s.group_key.as_slice())
                .ok()
                .map(|key| GroupKeyStatus {
                    key,
                    ceremony: s.key_ceremony,
                    threshold: s.key_threshold,
                    holders: s.key_holders,
                }),
        }
    }
}

type Client = pb::cluster_client::ClusterClient<tonic::transport::Channel>;

/// Runs `f` against the leader: starts at `via`, follows redirects, and
/// retries UNAVAILABLE answers until `deadline` passes.
async fn with_leader<T, F, Fut>(
    via: &str,
    tls: &ClusterTls,
    deadline: Duration,
    f: F,
) -> Result<T, AdminError>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let until = Instant::now() + deadline;
    let mut url = via.to_owned();
    loop {
        let client = tls.client(&url).map_err(|why| AdminError::Call {
            url: url.clone(),
            why,
        })?;
        match f(client).await {
            Ok(v) => return Ok(v),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < until => {
                if let Some(leader) = s
                    .metadata()
                    .get(LEADER_RAFT_URL)
                    .and_then(|v| v.to_str().ok())
                {
                    if !super::network::is_https(leader) {
                        return Err(AdminError::Call {
                            url: url.clone(),
                            why: super::network::not_https(
                                "it redirected to the leader at",
                                leader,
                            ),
                        });
                    }
                    tracing::info!(from = %url, to = %leader, "redirected to the leader");
                    url = leader.to_owned();
                    continue;
                }
                if s.message().contains("certificate") || s.message().contains("tls handshake") {
                    return Err(call_err(&url, &s));
                }
                tracing::info!(%url, why = %s.message(), "group not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => return Err(call_err(&url, &s)),
        }
    }
}
