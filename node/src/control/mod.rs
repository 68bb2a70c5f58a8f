//! The peer's local control API: `vmail.node.v1.Control`, gRPC on a Unix
//! socket (mode 0600) in the data dir, which is made 0700 before the socket
//! is bound. Every connection's peer credentials (`SO_PEERCRED`) must name
//! this process's own uid ([`admit_uid`]); `SetSession` checks the
//! session's cluster key ([`crate::peer::check_session_key`]). [`ControlService`] is a thin adapter
//! over [`Peer`]; [`ControlClient`] is what `vmail leave`, `inbox` and
//! `fetch` use, whether the peer is a long-running daemon or an ephemeral
//! one the CLI started for one job. Either way it is this one code path.
//!
//! The SIP front's status message is made in `sip.rs` beside it, and a
//! session crossing `SetSession` (with its inbox key) in `session.rs`. Over 600
//! lines since issue 17 added its bounds here; the split by concern (bounds
//! apart from the protocol or store they guard) is owed, not done.

mod client;
mod session;
mod sip;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Code, Request, Response, Status};
use vmail_proto::control_pb::{self as pb, control_server};

use crate::auth_client::{ClientError, Pending, RecoveryError, SenderVisibility};
use crate::core::erasure::{ErasureError, Redundancy};
use crate::overlay::swarm::NetworkError;
use crate::peer::{
    FetchError, LeaveError, LeaveRequest, Peer, Phase, Progress, ProgressFn, Session, SessionError,
    SessionKeyError, Timings,
};
use crate::sip::SipService;
use crate::supernode::standing::{Standing, standing};

pub use client::ControlClient;

/// Socket file name in the data dir.
pub const SOCKET_FILE: &str = "control.sock";
/// Plaintext bytes per fetch chunk.
const FETCH_CHUNK: usize = 1 << 20;
/// Largest control message: a 64 MiB voicemail and its framing. The peer's
/// own limit (16 MiB by default) applies first.
pub const MAX_CONTROL_MESSAGE: usize = 65 << 20;
/// Progress events buffered per call; excess ones are dropped, never the result.
const EVENT_QUEUE: usize = 64;

/// Why the control socket could not be served or reached.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A daemon already answers on the socket.
    #[error("a vmail peer is already running on {0}")]
    AlreadyRunning(PathBuf),
    /// No daemon answers.
    #[error("no vmail peer is running on {0}")]
    NotRunning(PathBuf),
    /// The socket path is too long for a Unix socket.
    #[error(
        "socket path {0} is longer than the 107 bytes a Unix socket allows: use a shorter --data-dir"
    )]
    PathTooLong(PathBuf),
    /// Binding or serving failed.
    #[error("control socket {path}: {why}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The peer refused or failed the call.
    #[error("{}", .0.message())]
    Call(Status),
    /// The peer answered something the protocol does not allow.
    #[error("the peer broke the control protocol: {0}")]
    Protocol(String),
}

impl From<Status> for ControlError {
    fn from(s: Status) -> Self {
        ControlError::Call(s)
    }
}

impl ControlError {
    /// The gRPC code, when the peer refused the call.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ControlError::Call(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// The gRPC code of a peer error: the one table from each operation's error
/// to a status ([`status`]).
pub(crate) trait Coded: std::fmt::Display {
    fn code(&self) -> Code;
}

impl Coded for SessionError {
    fn code(&self) -> Code {
        match self {
            SessionError::NotLoggedIn => Code::Unauthenticated,
            SessionError::Auth(c) => c.code().unwrap_or(Code::Unavailable),
        }
    }
}

impl Coded for LeaveError {
    fn code(&self) -> Code {
        match self {
            LeaveError::NotLoggedIn => Code::Unauthenticated,
            LeaveError::Empty
            | LeaveError::TooLarge { .. }
            | LeaveError::Redundancy(_)
            | LeaveError::BadName(_) => Code::InvalidArgument,
            LeaveError::UnknownRecipient(_) => Code::NotFound,
            LeaveError::NoPeers
            | LeaveError::TooFewPeers { .. }
            | LeaveError::NotEnoughHolders { .. }
            | LeaveError::Network(_) => Code::Unavailable,
            LeaveError::Auth(c) | LeaveError::Grant(c) | LeaveError::NotDeposited(c) => {
                c.code().unwrap_or(Code::Unavailable)
            }
            LeaveError::DepositUnknown { .. } => Code::Unknown,
        }
    }
}

impl Coded for FetchError {
    fn code(&self) -> Code {
        match self {
            FetchError::NotLoggedIn => Code::Unauthenticated,
            FetchError::NoSuchVoicemail(_) => Code::NotFound,
            FetchError::AllCopiesFailed { .. } | FetchError::Network(_) => Code::Unavailable,
            FetchError::Auth(ClientError::KeyRecovery(RecoveryError::TooFewEndpoints {
                ..
            })) => Code::FailedPrecondition,
            FetchError::Auth(c) => c.code().unwrap_or(Code::Unavailable),
            FetchError::Locator(_) | FetchError::Decrypt { .. } => Code::DataLoss,
        }
    }
}

impl Coded for SessionKeyError {
    fn code(&self) -> Code {
        Code::PermissionDenied
    }
}

impl Coded for NetworkError {
    fn code(&self) -> Code {
        Code::Unavailable
    }
}

pub(crate) fn status(e: impl Coded) -> Status {
    Status::new(e.code(), e.to_string())
}

fn phase_pb(p: Phase) -> pb::Phase {
    match p {
        Phase::Encrypt => pb::Phase::Encrypt,
        Phase::Upload => pb::Phase::Upload,
        Phase::Download => pb::Phase::Download,
        Phase::Decrypt => pb::Phase::Decrypt,
        Phase::Grant => pb::Phase::Grant,
        Phase::Deposit => pb::Phase::Deposit,
    }
}

fn progress_pb(p: Progress) -> pb::Progress {
    pb::Progress {
        phase: phase_pb(p.phase).into(),
        done: p.done,
        total: p.total,
        note: p.note.map(|n| n.to_string()).unwrap_or_default(),
    }
}

fn timings_pb(t: Timings) -> pb::Timings {
    let us = |d: Duration| d.as_micros() as u64;
    pb::Timings {
        crypto_us: us(t.crypto),
        dht_us: us(t.dht),
        transfer_us: us(t.transfer),
        auth_us: us(t.auth),
        grant_us: us(t.grant),
    }
}

/// A pending voicemail as the control API lists it.
pub fn inbox_entry(p: &Pending) -> pb::InboxEntry {
    pb::InboxEntry {
        voicemail_id: p.id.to_vec(),
        // Empty when hidden: the control API says so with `anonymous`.
        sender: p
            .sender
            .username()
            .map(ToString::to_string)
            .unwrap_or_default(),
        deposited_at: p.deposited_at,
        size: p.meta.size,
        content_type: p.meta.content_type.clone(),
        duration_ms: p.meta.duration_ms,
        expires_at: p.meta.expires_at,
        recipients: p.recipients.to_strings(),
        anonymous: p.sender.is_hidden(),
        first_contact: p.first_contact,
    }
}

fn bytes16(b: &[u8], what: &str) -> Result<[u8; 16], Status> {
    b.try_into()
        .map_err(|_| Status::invalid_argument(format!("{what} must be 16 bytes")))
}

/// The gRPC adapter over a [`Peer`] and, when it serves SIP, its
/// [`SipService`].
#[derive(Debug, Clone)]
pub struct ControlService {
    peer: Arc<Peer>,
    sip: Option<SipService>,
}

impl ControlService {
    /// The control API of `peer`, and of its SIP front if any.
    pub fn new(peer: Arc<Peer>, sip: Option<SipService>) -> Self {
        ControlService { peer, sip }
    }
}

/// Progress into a bounded queue; when the client reads slowly, progress
/// events are dropped rather than slowing the job.
fn progress_into<T: Send + 'static>(
    tx: mpsc::Sender<Result<T, Status>>,
    wrap: fn(pb::Progress) -> T,
) -> ProgressFn {
    Arc::new(move |p| {
        let _ = tx.try_send(Ok(wrap(progress_pb(p))));
    })
}

#[tonic::async_trait]
impl control_server::Control for ControlService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.peer.status().await.map_err(status)?;
        let sn = &self.peer.config().supernode;
        let standing = s.election.as_ref().map_or_else(Standing::default, |e| {
            standing(&e.adverts, e.own.as_ref(), &sn.election().thresholds)
        });
        Ok(Response::new(pb::StatusResponse {
            shortfalls: strings(standing.own.iter().flatten()),
            advertised: standing.own.is_some(),
            qualified: standing.qualified as u32,
            confirmed_public: standing.confirmed_public as u32,
            missed: standing
                .missed
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v as u32))
                .collect(),
            public_setting: sn.public.map(|p| p.to_string()).unwrap_or_default(),
            peer_id: s.peer_id.to_bytes(),
            listen_addrs: s.listen_addrs.iter().map(ToString::to_string).collect(),
            routing_peers: s.routing_peers as u32,
            objects: s.holder.objects as u64,
            stored_bytes: s.holder.bytes,
            tombstones: s.holder.tombstones as u64,
            refusals: s
                .holder
                .refusals
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            quota_bytes: s.quota_bytes,
            username: s.username.unwrap_or_default(),
            role: match &s.election {
                Some(e) if e.supernodes.contains(&s.peer_id) => "supernode",
                Some(_) => "peer",
                None => "client",
            }
            .into(),
            supernodes: strings(s.election.iter().flat_map(|e| &e.supernodes)),
            advertising_peers: s.election.as_ref().map_or(0, |e| e.adverts.len() as u32),
            attached_to: s
                .election
                .as_ref()
                .and_then(|e| e.attached_to)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            attached_peers: strings(s.election.iter().flat_map(|e| &e.attached_peers)),
            relay_addr: s
                .election
                .as_ref()
                .and_then(|e| e.relay_addr.as_ref())
                .map(ToString::to_string)
                .unwrap_or_default(),
            reachability: s
                .election
                .as_ref()
                .map(|e| format!("{:?}", e.reachability))
                .unwrap_or_default(),
            undialable: strings(s.election.iter().flat_map(|e| &e.undialable)),
            last_reattach_ms: s
                .election
                .as_ref()
                .and_then(|e| e.last_reattach)
                .map_or(0, |d| d.as_millis() as u64),
            wire_bytes: s.traffic.wire_bytes,
            advert_bytes: s.election.as_ref().map_or(0, |e| e.advert_bytes),
            dht_requests: s.traffic.dht_requests,
            connected_peers: s.traffic.connected_peers,
        }))
    }

    async fn find_providers(
        &self,
        request: Request<pb::FindProvidersRequest>,
    ) -> Result<Response<pb::FindProvidersResponse>, Status> {
        let id: [u8; 32] = request.into_inner().identifier.try_into().map_err(|_| {
            Status::invalid_argument("the identifier must be 32 bytes (64 hex digits)")
        })?;
        let (providers, cost) = self
            .peer
            .network()
            .lookup_providers(libp2p::kad::RecordKey::new(&id))
            .await
            .map_err(status)?;
        let us = |d: Duration| d.as_micros() as u64;
        Ok(Response::new(pb::FindProvidersResponse {
            providers: strings(&providers),
            first_found_us: cost.first_found.map_or(0, us),
            duration_us: us(cost.duration),
            requests: cost.requests,
            successes: cost.successes,
        }))
    }

    async fn set_session(
        &self,
        req: Request<pb::SetSessionRequest>,
    ) -> Result<Response<pb::SetSessionResponse>, Status> {
        let session = Session::try_from(req.into_inner())?;
        self.peer.offer_session(session).map_err(status)?;
        Ok(Response::new(pb::SetSessionResponse {}))
    }

    type LeaveStream = ReceiverStream<Result<pb::LeaveEvent, Status>>;

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<Self::LeaveStream>, Status> {
        let r = req.into_inner();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let progress = progress_into(tx.clone(), |p| pb::LeaveEvent {
            event: Some(pb::leave_event::Event::Progress(p)),
        });
        let redundancy =
            redundancy(r.replicas, &r.erasure).map_err(|e| status(LeaveError::from(e)))?;
        let peer = self.peer.clone();
        tokio::spawn(async move {
            let req = LeaveRequest {
                recipients: r.recipients,
                content: r.content,
                content_type: r.content_type,
                duration_ms: r.duration_ms,
                redundancy,
                sender: if r.anonymous {
                    SenderVisibility::Hidden
                } else {
                    SenderVisibility::Shown
                },
            };
            let result = peer.leave(req, progress).await.map(|done| pb::LeaveEvent {
                event: Some(pb::leave_event::Event::Done(pb::LeaveDone {
                    voicemail_id: done.voicemail_id.to_vec(),
                    recipients: done.recipients.to_strings(),
                    refused: strings(&done.refused),
                    first_contact: strings(&done.first_contact),
                    ciphertext_size: done.ciphertext_len,
                    copies: done
                        .shards
                        .iter()
                        .map(|c| pb::StoredCopy {
                            identifier: c.id.to_vec(),
                            holder: c.holder.to_bytes(),
                            index: c.index.into(),
                        })
                        .collect(),
                    failures: done.failures.iter().map(ToString::to_string).collect(),
                    timings: Some(timings_pb(done.timings)),
                    redundancy: done.redundancy.to_string(),
                    shard_size: done.shard_len,
                })),
            });
            let _ = tx.send(result.map_err(status)).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn inbox(
        &self,
        _: Request<pb::InboxRequest>,
    ) -> Result<Response<pb::InboxResponse>, Status> {
        let pending = self.peer.inbox().await.map_err(status)?;
        Ok(Response::new(pb::InboxResponse {
            voicemails: pending.iter().map(inbox_entry).collect(),
        }))
    }

    type FetchStream = ReceiverStream<Result<pb::FetchEvent, Status>>;

    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let id = bytes16(&req.into_inner().voicemail_id, "voicemail id")?;
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let progress = progress_into(tx.clone(), |p| pb::FetchEvent {
            event: Some(pb::fetch_event::Event::Progress(p)),
        });
        let peer = self.peer.clone();
        tokio::spawn(async move {
            let fetched = match peer.fetch(id, progress).await {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(status(e))).await;
                    return;
                }
            };
            let event = |e| Ok(pb::FetchEvent { event: Some(e) });
            for chunk in fetched.content.chunks(FETCH_CHUNK) {
                if tx
                    .send(event(pb::fetch_event::Event::Chunk(chunk.to_vec())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let done = pb::FetchDone {
                voicemail: Some(inbox_entry(&fetched.pending)),
                holder: fetched
                    .holders
                    .first()
                    .map(|(_, h)| h.to_bytes())
                    .unwrap_or_default(),
                holders: fetched
                    .holders
                    .iter()
                    .map(|(index, h)| pb::ShardHolder {
                        index: (*index).into(),
                        holder: h.to_bytes(),
                    })
                    .collect(),
                redundancy: fetched.redundancy.to_string(),
                failures: fetched.failures.iter().map(ToString::to_string).collect(),
                timings: Some(timings_pb(fetched.timings)),
            };
            let _ = tx.send(event(pb::fetch_event::Event::Done(done))).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let id = bytes16(&req.into_inner().voicemail_id, "voicemail id")?;
        let acked = self.peer.ack(id).await.map_err(status)?;
        Ok(Response::new(pb::AckResponse {
            key_erased: acked.key_erased,
            shards_deleted: acked.shards_deleted,
            holders_missed: acked.holders_missed,
        }))
    }

    async fn recall(
        &self,
        req: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::RecallResponse>, Status> {
        let id = bytes16(&req.into_inner().voicemail_id, "voicemail id")?;
        let done = self.peer.recall(id).await.map_err(status)?;
        Ok(Response::new(pb::RecallResponse {
            shards_deleted: done.shards_deleted,
            holders_missed: done.holders_missed,
        }))
    }

    async fn sip_status(
        &self,
        _: Request<pb::SipStatusRequest>,
    ) -> Result<Response<pb::SipStatusResponse>, Status> {
        let sip = self.sip.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this peer serves no SIP: start it with `vmail node run --sip 127.0.0.1:5060` or set sip.listen in node.toml",
            )
        })?;
        Ok(Response::new(sip::status_pb(sip.status())))
    }
}

/// The redundancy a leave asked for: `replicas` copies, or `erasure` "K/N",
/// or neither (None: the peer's default).
fn redundancy(replicas: u32, erasure: &str) -> Result<Option<Redundancy>, ErasureError> {
    match (replicas, erasure.trim()) {
        (0, "") => Ok(None),
        (0, e) => Ok(Some(e.parse()?)),
        (r, "") => match u8::try_from(r) {
            Ok(r) => Ok(Some(Redundancy::Replicas(r).validate()?)),
            Err(_) => Err(ErasureError::BadSetting(format!(
                "{r} replicas is out of range: use 1 to {}",
                crate::core::erasure::MAX_SHARDS
            ))),
        },
        (_, _) => Err(ErasureError::BadSetting(
            "--replicas and --erasure were both given: choose one".into(),
        )),
    }
}

fn check_len(path: &Path) -> Result<(), ControlError> {
    if path.as_os_str().len() > 107 {
        return Err(ControlError::PathTooLong(path.to_owned()));
    }
    Ok(())
}

/// Serves the control API for `peer` on `socket` until `shutdown`.
/// Refuses to start when another peer answers there; removes a stale socket.
pub async fn serve(
    peer: Arc<Peer>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ControlError> {
    serve_with(ControlService::new(peer, None), socket, shutdown).await
}

/// [`serve`] for a [`ControlService`] built by the caller.
pub async fn serve_with(
    service: ControlService,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ControlError> {
    use std::os::unix::fs::PermissionsExt;
    check_len(socket)?;
    let io = |e: std::io::Error| ControlError::Io {
        path: socket.to_owned(),
        why: e.to_string(),
    };
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Err(ControlError::AlreadyRunning(socket.to_owned()));
        }
        std::fs::remove_file(socket).map_err(io)?;
    }
    private_dir(socket).map_err(io)?;
    let listener = tokio::net::UnixListener::bind(socket).map_err(io)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let own = nix::unistd::geteuid().as_raw();
    let incoming = tokio_stream::StreamExt::filter(UnixListenerStream::new(listener), move |c| {
        let Ok(stream) = c else {
            return true;
        };
        match admit_uid(stream.peer_cred().ok().map(|c| c.uid()), own) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!("control socket: refused a connection: {why}");
                false
            }
        }
    });
    let service = control_server::ControlServer::new(service)
        .max_decoding_message_size(MAX_CONTROL_MESSAGE)
        .max_encoding_message_size(MAX_CONTROL_MESSAGE);
    // The standard health service, for container health checks.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<control_server::ControlServer<ControlService>>()
        .await;
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| ControlError::Io {
            path: socket.to_owned(),
            why: e.to_string(),
        });
    let _ = std::fs::remove_file(socket);
    result
}

/// Why a connection to the control socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredRefusal {
    /// The kernel gave no peer credentials.
    #[error("no peer credentials (SO_PEERCRED) on the connection")]
    Unknown,
    /// Another user connected.
    #[error(
        "uid {peer} is not this peer's uid {own}; only the user the peer runs as may control it"
    )]
    OtherUser {
        /// The connecting process's uid.
        peer: u32,
        /// This process's effective uid.
        own: u32,
    },
}

/// Whether a connection whose peer credentials name `peer` (`None`: none
/// given) may use the control API of a process running as `own`: only the
/// same uid may, root included (root can read the data dir anyway, but a
/// peer run as a user is that user's alone).
pub fn admit_uid(peer: Option<u32>, own: u32) -> Result<(), CredRefusal> {
    match peer {
        None => Err(CredRefusal::Unknown),
        Some(p) if p != own => Err(CredRefusal::OtherUser { peer: p, own }),
        Some(_) => Ok(()),
    }
}

/// Makes the socket's directory (creating it if needed) mode 0700 before
/// the socket is bound, so there is no moment when another user could
/// reach the socket, and refuses a directory another user owns.
pub fn private_dir(socket: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let own = nix::unistd::geteuid().as_raw();
    let owner = std::fs::metadata(dir)?.uid();
    if owner != own {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {owner}, not this peer's uid {own}: use a data dir of your own",
                dir.display()
            ),
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn strings<T: ToString>(items: impl IntoIterator<Item = T>) -> Vec<String> {
    items.into_iter().map(|i| i.to_string()).collect()
}

#[cfg(test)]
mod cred_tests {
    use super::*;

    #[test]
    fn only_the_same_uid_is_admitted() {
        assert_eq!(admit_uid(Some(1000), 1000), Ok(()));
        assert_eq!(
            admit_uid(Some(1001), 1000),
            Err(CredRefusal::OtherUser {
                peer: 1001,
                own: 1000
            })
        );
        assert!(admit_uid(Some(0), 1000).is_err());
        assert_eq!(admit_uid(None, 1000), Err(CredRefusal::Unknown));
    }

    #[test]
    fn the_directory_is_private_before_the_socket_exists() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = data.join(SOCKET_FILE);
        private_dir(&socket).unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(!socket.exists());
    }
}

#[cfg(test)]
mod entry_tests {
    use vmail_proto::names::Recipients;

    use super::*;
    use crate::auth_client::{KeyShares, Sender, ShareSlot, VoicemailMeta};

    #[test]
    fn a_hidden_sender_is_listed_anonymous_and_unnamed() {
        let p = Pending {
            id: [1; 16],
            sender: Sender::Hidden,
            first_contact: true,
            deposited_at: 10,
            meta: VoicemailMeta::default(),
            locator: Vec::new(),
            recipients: Recipients::parse(["bob"]).unwrap(),
            shares: KeyShares {
                threshold: 1,
                key_check: [0; 32],
                slots: vec![ShareSlot {
                    node_id: 1,
                    index: 1,
                    api_url: None,
                }],
            },
        };
        let e = inbox_entry(&p);
        assert!(e.anonymous && e.first_contact);
        assert!(e.sender.is_empty());
    }

    #[test]
    fn a_refused_grant_keeps_its_code() {
        for code in [Code::PermissionDenied, Code::ResourceExhausted] {
            let e = LeaveError::Grant(ClientError::Server(Status::new(code, "why")));
            let s = status(e);
            assert_eq!(s.code(), code);
            assert!(s.message().contains("why"), "{}", s.message());
        }
    }
}
