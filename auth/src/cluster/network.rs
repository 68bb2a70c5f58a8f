//! The client side of the internal `vmail.auth.cluster.v1` service: Raft
//! RPCs to the other members (openraft's `RaftNetworkFactory`), and the
//! membership calls that `join` and `cluster status|remove` make.
//!
//! Every connection is mutual TLS: the caller shows a certificate from the
//! group's CA and checks the callee's against it.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use vmail_proto::cluster_pb::{self, cluster_client::ClusterClient};

use super::{Member, TypeConfig};
use crate::tls::ClusterTls;

/// How long to wait for a TCP and TLS connection to another member.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest internal message: snapshot chunks and log batches fit.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Metadata key naming the leader's internal URL when a follower refuses a
/// membership call.
pub const LEADER_RAFT_URL: &str = "vmail-leader-raft";
/// Metadata key naming the node a Raft RPC is for. A server whose data was
/// lost rejoins at its old address under a new node id; until the group
/// drops the old incarnation, the leader still sends the old node's
/// entries there, and they must be refused, not answered with the new
/// node's empty log (openraft stops on a follower log that goes back).
pub const RAFT_TARGET: &str = "vmail-raft-target";

/// Whether `url` is an `https://` URL. Any other scheme would reach a
/// member without TLS (tonic uses TLS only for `https`), so it is refused
/// everywhere a member's URL comes in: the join and admin commands, the
/// leader's address in a redirect, and members in a membership change.
pub fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// The refusal of a URL that is not `https://`, naming it and what to do.
pub fn not_https(what: &str, url: &str) -> String {
    format!(
        "{what} {url:?} is not an https:// URL: auth servers talk only over TLS, so write it as https://HOST:PORT"
    )
}

impl ClusterTls {
    /// A lazily connecting channel to a member's internal service; only
    /// `https://` URLs are accepted.
    pub fn channel(&self, url: &str) -> Result<Channel, String> {
        if !is_https(url) {
            return Err(not_https("member URL", url));
        }
        Ok(Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("{url:?} is not a valid URL: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tls_config(self.client_config())
            .map_err(|e| format!("{url}: {e}"))?
            .connect_lazy())
    }

    /// A client of a member's internal service.
    pub fn client(&self, url: &str) -> Result<ClusterClient<Channel>, String> {
        vmail_proto::tls::install_crypto_provider();
        Ok(ClusterClient::new(self.channel(url)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// Makes a [`MemberClient`] per target, for openraft.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    tls: ClusterTls,
}

impl NetworkFactory {
    /// A factory whose connections use `tls`.
    pub fn new(tls: ClusterTls) -> Self {
        Self { tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = MemberClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> MemberClient {
        MemberClient {
            target,
            url: node.raft_url.clone(),
            client: self.tls.client(&node.raft_url),
        }
    }
}

/// Raft RPCs to one member.
#[derive(Debug)]
pub struct MemberClient {
    target: u64,
    url: String,
    client: Result<ClusterClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

/// Encodes a Raft message for the wire. Public (hidden) for the fuzz
/// targets in `tests/fuzz`.
#[doc(hidden)]
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("in-memory encoding cannot fail")
}

/// Decodes a Raft message from the wire. Public (hidden) for the fuzz
/// targets in `tests/fuzz`.
#[doc(hidden)]
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("undecodable Raft message: {e}"))
}

enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl MemberClient {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E>(
        &mut self,
        kind: Kind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, Member, RaftError<u64, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |why: String| RPCError::Unreachable(Unreachable::new(&Failure(why)));
        let client = self.client.as_mut().map_err(|e| unreachable(e.clone()))?;
        let mut request = tonic::Request::new(cluster_pb::RaftPayload {
            payload: encode(req),
            error: String::new(),
        });
        request.set_timeout(option.hard_ttl());
        request.metadata_mut().insert(
            RAFT_TARGET,
            self.target
                .to_string()
                .parse()
                .expect("digits are a valid header value"),
        );
        let reply = match kind {
            Kind::Append => client.append_entries(request).await,
            Kind::Vote => client.vote(request).await,
            Kind::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                return Err(unreachable(format!("{}: {}", self.url, s.message())));
            }
            Err(s) => {
                return Err(RPCError::Network(NetworkError::new(&Failure(format!(
                    "{}: {}",
                    self.url,
                    s.message()
                )))));
            }
        };
        if !reply.error.is_empty() {
            return Err(RPCError::Network(NetworkError::new(&Failure(reply.error))));
        }
        let result: Result<Resp, RaftError<u64, E>> = decode(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&Failure(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for MemberClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.call(Kind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(Kind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.call(Kind::Vote, &rpc, &option).await
    }
}
