//! The SIP front of the peer daemon (`[sip]` in node.toml, `vmail node run
//! --sip ADDR`): the user's own softphone registers here with digest
//! authentication, subscribes to `message-summary` and sees the lamp
//! follow the inbox (RFC 3842), calls `voicemail` to hear what waits, and
//! calls another user to record a voicemail that is left for them through
//! the normal leave path. SIP and RTP face the softphone; vmail's own
//! protocols face the overlay and the auth group.
//!
//! rsipstack parses SIP and runs the transactions (retransmissions,
//! timers); [`wire`] screens every datagram first so bad input is answered
//! rather than dropped, and holds each source to a share of the requests.
//! The rules are pure ([`digest`], [`registrar`], [`summary`], [`sdp`],
//! [`audio`], and [`wire::screen`]); this module, `notify` (the lamp),
//! `call` and `rtp` do the IO.

pub mod audio;
mod call;
pub mod digest;
mod notify;
pub mod registrar;
mod rtp;
pub mod sdp;
pub mod summary;
pub mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::typed::Contact;
use rsipstack::sip::{Header, Method, Request, StatusCode};
use rsipstack::transaction::Transaction;
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transport::TransportLayer;
use rsipstack::transport::udp::UdpConnection;
use tokio_util::sync::CancellationToken;
use vmail_proto::names::Username;
use vmail_proto::unix_now;

use crate::config::{InvalidValue, SipConfig};
use crate::peer::Peer;
use digest::{Digest, Refusal};
use registrar::{Binding, ExpiryBounds, Lifetime, Registrar, Subscription};
use summary::Summary;

pub use call::{CallInfo, CallKind};

/// The SIP password's file in the data dir (mode 0600).
pub const PASSWORD_FILE: &str = "sip.password";
/// Shortest SIP password `vmail sip set-password` takes.
pub const MIN_PASSWORD: usize = 8;

/// Why the SIP front could not start.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    /// `[sip]` is out of range.
    #[error("{0}")]
    Config(#[from] InvalidValue),
    /// No listen address.
    #[error("no SIP address: set sip.listen in node.toml or pass --sip ADDR")]
    NoAddress,
    /// The socket could not be bound.
    #[error(
        "SIP on {addr}: {why} (is another SIP program using the port? choose another with --sip)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
    /// The SIP stack failed.
    #[error("SIP stack: {0}")]
    Stack(String),
}

/// Writes the SIP password (0600), refusing a short one.
pub fn set_password(data_dir: &Path, password: &str) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if password.chars().count() < MIN_PASSWORD {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the SIP password must be at least {MIN_PASSWORD} characters"),
        ));
    }
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(PASSWORD_FILE);
    let tmp = data_dir.join(format!("{PASSWORD_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(password.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// What `vmail sip status` shows.
#[derive(Debug, Clone)]
pub struct SipStatus {
    /// Where SIP is served.
    pub listen: SocketAddr,
    /// The user the softphone must authenticate as (the session's).
    pub user: Option<String>,
    /// Whether a SIP password is set.
    pub password_set: bool,
    /// Registered softphones.
    pub bindings: Vec<Binding>,
    /// Message-summary subscriptions.
    pub subscriptions: Vec<Subscription>,
    /// Calls under way.
    pub calls: Vec<CallInfo>,
    /// What the lamp shows.
    pub summary: Summary,
    /// Requests refused, by reason.
    pub refused: BTreeMap<&'static str, u64>,
}

/// The running SIP front; cheap to clone.
#[derive(Debug, Clone)]
pub struct SipService {
    inner: Arc<Inner>,
}

struct Inner {
    peer: Arc<Peer>,
    config: SipConfig,
    endpoint: EndpointInnerRef,
    local: SocketAddr,
    digest: Mutex<Digest>,
    password_file: PathBuf,
    registrar: Mutex<Registrar>,
    calls: Mutex<HashMap<String, call::Call>>,
    /// Voicemails played on a call and kept (key 7, `#`, or a hang-up
    /// before the end): the lamp counts them old.
    kept: Mutex<HashSet<[u8; 16]>>,
    /// Wakes the lamp when `kept` changes.
    lamp: tokio::sync::Notify,
    summary: tokio::sync::watch::Sender<Summary>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests the gate answered 503 for want of room.
    flooded: Arc<AtomicU64>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipService")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl SipService {
    /// Binds `config.listen` and serves SIP for `peer`'s user until
    /// [`SipService::stop`]. The password is read from `password_file` at
    /// each authentication, so `vmail sip set-password` takes effect at once.
    pub async fn start(
        peer: Arc<Peer>,
        config: SipConfig,
        password_file: PathBuf,
    ) -> Result<SipService, SipError> {
        config.validate()?;
        let addr = config.listen.ok_or(SipError::NoAddress)?;
        let bind = |why: String| SipError::Bind { addr, why };
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|e| bind(e.to_string()))?;
        let local = socket.local_addr().map_err(|e| bind(e.to_string()))?;
        let cancel = CancellationToken::new();
        let stack = |e: rsipstack::Error| SipError::Stack(e.to_string());
        let flooded = Arc::new(AtomicU64::new(0));
        let conn = UdpConnection::from_socket(
            Arc::new(wire::GatedSocket::new(socket, flooded.clone())),
            None,
            Some(cancel.child_token()),
        )
        .await
        .map_err(stack)?;
        let transports = TransportLayer::new(cancel.child_token());
        transports.add_transport(conn.into());
        let endpoint = rsipstack::EndpointBuilder::new()
            .with_transport_layer(transports)
            .with_cancel_token(cancel.child_token())
            .with_user_agent(concat!("vmail/", env!("CARGO_PKG_VERSION")))
            .build();
        let mut incoming = endpoint.incoming_transactions().map_err(stack)?;
        let bounds = config.max_bindings;
        let inner = Arc::new(Inner {
            digest: Mutex::new(Digest::new(&config.realm)),
            endpoint: endpoint.inner.clone(),
            peer,
            config,
            local,
            password_file,
            registrar: Mutex::new(Registrar::new(bounds)),
            calls: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashSet::new()),
            lamp: tokio::sync::Notify::new(),
            summary: tokio::sync::watch::Sender::new(Summary::default()),
            refused: Mutex::new(BTreeMap::new()),
            flooded,
            cancel: cancel.clone(),
        });
        tokio::spawn(async move { endpoint.serve().await });
        let dispatch = inner.clone();
        tokio::spawn(async move {
            loop {
                let tx = tokio::select! {
                    _ = dispatch.cancel.cancelled() => return,
                    tx = incoming.recv() => match tx {
                        Some(tx) => tx,
                        None => return,
                    },
                };
                tokio::spawn(dispatch.clone().handle(tx));
            }
        });
        tokio::spawn(notify::lamp(inner.clone()));
        tracing::info!("SIP on udp {local}");
        Ok(SipService { inner })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Registrations, subscriptions, calls and the lamp.
    pub fn status(&self) -> SipStatus {
        let i = &self.inner;
        let now = unix_now();
        let mut registrar = i.registrar.lock().expect("registrar lock").clone();
        registrar.expire_bindings(now);
        registrar.expire_subscriptions(now);
        SipStatus {
            listen: i.local,
            user: i.peer.username().map(|u| u.to_string()),
            password_set: i.password().is_some(),
            bindings: registrar.bindings().cloned().collect(),
            subscriptions: registrar.subscriptions().cloned().collect(),
            calls: i
                .calls
                .lock()
                .expect("calls lock")
                .values()
                .map(call::Call::info)
                .collect(),
            summary: *i.summary.borrow(),
            refused: {
                let mut r = i.refused.lock().expect("refused lock").clone();
                let flooded = i.flooded.load(Ordering::Relaxed);
                if flooded > 0 {
                    r.insert("over the request rate", flooded);
                }
                r
            },
        }
    }

    /// Stops serving; calls under way end.
    pub fn stop(&self) {
        self.inner.cancel.cancel();
    }
}

/// A request that is answered with an error, and why (for the counts).
struct Refused {
    code: StatusCode,
    reason: &'static str,
    headers: Vec<Header>,
}

impl Refused {
    fn new(code: StatusCode, reason: &'static str) -> Self {
        Refused {
            code,
            reason,
            headers: Vec::new(),
        }
    }

    /// Adds a `Warning: 399` naming the problem and what to do.
    fn warn(mut self, text: &str) -> Self {
        let text = text.replace('"', "'");
        self.headers.push(Header::Other(
            "Warning".into(),
            format!("399 vmail \"{text}\""),
        ));
        self
    }

    fn with(mut self, h: Header) -> Self {
        self.headers.push(h);
        self
    }
}

impl Inner {
    fn password(&self) -> Option<String> {
        std::fs::read_to_string(&self.password_file)
            .ok()
            .map(|p| p.trim_end_matches(['\r', '\n']).to_owned())
            .filter(|p| !p.is_empty())
    }

    /// This service's own Contact.
    fn contact(&self) -> Header {
        Header::Contact(format!("<sip:{}@{}>", self.config.voicemail_user, self.local).into())
    }

    fn allow() -> Header {
        Header::Allow(wire::ALLOWED.into())
    }

    async fn handle(self: Arc<Self>, mut tx: Transaction) {
        let method = tx.original.method;
        let outcome = match method {
            Method::Ack => return,
            Method::Options => Ok(vec![
                Self::allow(),
                Header::Accept(sdp::CONTENT_TYPE.into()),
            ]),
            Method::Bye => self.bye(&tx.original),
            Method::Cancel => Err(Refused::new(
                StatusCode::CallTransactionDoesNotExist,
                "cancel of no call",
            )),
            Method::Register | Method::Subscribe | Method::Invite => {
                match self.authenticate(&tx.original) {
                    Err(r) => Err(r),
                    Ok(user) if method == Method::Register => self.register(&tx.original, &user),
                    Ok(user) if method == Method::Subscribe => {
                        return self.subscribe(tx, &user).await;
                    }
                    Ok(user) => return self.invite(tx, user).await,
                }
            }
            _ => Err(
                Refused::new(StatusCode::MethodNotAllowed, "method not allowed")
                    .with(Self::allow()),
            ),
        };
        let sent = match outcome {
            Ok(headers) => tx.reply_with(StatusCode::OK, headers, None).await,
            Err(r) => self.refuse(&mut tx, r).await,
        };
        if let Err(e) = sent {
            tracing::debug!("sip: answering {method}: {e}");
        }
    }

    async fn refuse(&self, tx: &mut Transaction, r: Refused) -> rsipstack::Result<()> {
        tracing::info!(
            "sip: {} {} from {}: {}",
            r.code,
            tx.original.method,
            tx.original
                .from_header()
                .map(|f| f.value().to_owned())
                .unwrap_or_default(),
            r.reason
        );
        *self
            .refused
            .lock()
            .expect("refused lock")
            .entry(r.reason)
            .or_default() += 1;
        tx.reply_with(r.code, r.headers, None).await
    }

    /// The logged-in user, once the request's digest checks out.
    fn authenticate(&self, req: &Request) -> Result<Username, Refused> {
        let Some(user) = self.peer.username() else {
            return Err(
                Refused::new(StatusCode::TemporarilyUnavailable, "not logged in")
                    .warn("this peer has no vmail session: run `vmail login USER`"),
            );
        };
        let Some(password) = self.password() else {
            return Err(Refused::new(StatusCode::Forbidden, "no SIP password")
                .warn("no SIP password is set: run `vmail sip set-password`"));
        };
        let auth = req.authorization_header().map(|h| h.value());
        let now = unix_now();
        let mut digest = self.digest.lock().expect("digest lock");
        match digest.check(auth, &req.method, user.as_str(), &password, now) {
            Ok(()) => Ok(user),
            Err(r) if r.challenge() => {
                let stale = matches!(r, Refusal::Stale | Refusal::ForeignNonce | Refusal::Replayed);
                Err(Refused::new(StatusCode::Unauthorized, "challenged")
                    .with(Header::WwwAuthenticate(digest.challenge(now, stale).into())))
            }
            Err(r @ Refusal::LockedOut(secs)) => Err(Refused::new(StatusCode::Forbidden, "locked out")
                .warn(&r.to_string())
                .with(Header::RetryAfter(secs.to_string().into()))),
            Err(r) => Err(Refused::new(StatusCode::Forbidden, "wrong credentials").warn(&format!(
                "{r}: the softphone must log in as {user} with the password set by `vmail sip set-password`"
            ))),
        }
    }

    fn bounds(&self) -> ExpiryBounds {
        ExpiryBounds {
            min: self.config.min_expires,
            max: self.config.max_expires,
            default: self.config.max_expires.min(3600),
        }
    }

    /// The requested lifetime: the Contact's `expires`, else `Expires`.
    fn lifetime(&self, req: &Request, contact: Option<&Contact>) -> Result<Lifetime, Refused> {
        let from_contact = contact.and_then(|c| {
            c.params.iter().find_map(|p| match p {
                rsipstack::sip::Param::Expires(e) => e.value().parse().ok(),
                _ => None,
            })
        });
        let from_header = req
            .expires_header()
            .and_then(|e| e.value().trim().parse().ok());
        self.bounds()
            .grant(from_contact.or(from_header))
            .map_err(|t| {
                Refused::new(StatusCode::IntervalTooBrief, "interval too brief")
                    .with(Header::MinExpires(t.0.to_string().into()))
            })
    }

    /// Checks the request is for the logged-in user's own address.
    fn own_address(req: &Request, user: &Username) -> Result<(), Refused> {
        let to = req
            .to_header()
            .and_then(|t| t.uri())
            .map_err(|_| Refused::new(StatusCode::BadRequest, "bad To"))?;
        match to.auth {
            Some(a) if a.user == user.as_str() => Ok(()),
            _ => Err(
                Refused::new(StatusCode::NotFound, "not this user's address")
                    .warn(&format!("this service serves only sip:{user}@…")),
            ),
        }
    }

    fn register(&self, req: &Request, user: &Username) -> Result<Vec<Header>, Refused> {
        Self::own_address(req, user)?;
        let now = unix_now();
        let mut registrar = self.registrar.lock().expect("registrar lock");
        registrar.expire_bindings(now);
        if let Ok(raw) = req.contact_header()
            && raw.value().trim() == "*"
        {
            // RFC 3261 §10.2.2: the wildcard, only with Expires: 0.
            if self.lifetime(req, None)? != Lifetime::Remove {
                return Err(Refused::new(StatusCode::BadRequest, "wildcard Contact")
                    .warn("Contact: * removes every binding and needs Expires: 0"));
            }
            registrar.unbind_all();
        } else if let Ok(raw) = req.contact_header() {
            let contact = raw
                .typed()
                .map_err(|_| Refused::new(StatusCode::BadRequest, "bad Contact"))?;
            let life = self.lifetime(req, Some(&contact))?;
            let binding = Binding {
                contact: contact.uri.to_string(),
                expires_at: 0,
            };
            registrar.bind(binding, life, now).map_err(|f| {
                Refused::new(StatusCode::ServiceUnavailable, "registrations full")
                    .warn(&f.to_string())
                    .with(Header::RetryAfter("60".into()))
            })?;
        }
        Ok(registrar
            .bindings()
            .map(|b| {
                Header::Contact(
                    format!(
                        "<{}>;expires={}",
                        b.contact,
                        b.expires_at.saturating_sub(now)
                    )
                    .into(),
                )
            })
            .collect())
    }

    /// A BYE ends the call it names; one for no call gets 481.
    fn bye(&self, req: &Request) -> Result<Vec<Header>, Refused> {
        let call_id = req
            .call_id_header()
            .map(|c| c.value().to_owned())
            .unwrap_or_default();
        match self.calls.lock().expect("calls lock").get(&call_id) {
            Some(c) => {
                c.hangup.cancel();
                Ok(Vec::new())
            }
            None => Err(Refused::new(
                StatusCode::CallTransactionDoesNotExist,
                "bye for no call",
            )),
        }
    }
}
