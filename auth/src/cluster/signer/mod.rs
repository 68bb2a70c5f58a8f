//! Threshold signing over the internal service (docs/THRESHOLD.md §2): the
//! signer side of the two FROST rounds, and the coordinator that runs them.
//!
//! A request never carries the bytes to sign. It names an object
//! ([`SignTarget`]) and the coordinator's applied log index; each signer
//! waits until it has applied that index, rebuilds the bytes from its own
//! state, and releases a signature share only for a signing package whose
//! message is exactly those bytes. A coordinator (or a thief holding one
//! member's key package) therefore gets the group's signature only on what
//! every signer's replicated state already says, and never without t−1
//! other members.
//!
//! This module is the signer's side and what both sides share (the loaded
//! key package, the clients of the other members); the coordinator is
//! [`coordinator`], its prepared commitments [`prepared`]. What a target's
//! bytes are is `super::sign_target`, and the batching of coordinated
//! rounds `super::sign_batcher`.
//!
//! Round-1 nonces live only in memory, under a random handle, each used at
//! most once and for at most [`NONCE_TTL`]; one coordinator holds at most
//! [`MAX_OUTSTANDING`] of them at a signer.
//!
//! A coordinator also asks each signer ahead for nonce commitments bound to
//! no message yet (FROST's preprocessing, `SignPrepare`), [`PREPARE_BATCH`]
//! at a time, and spends one per round: the round is then a single trip,
//! whose request names the target, and the signer rebuilds the bytes before
//! it answers. A round whose prepared commitments fail runs both rounds.

mod coordinator;
mod prepared;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vmail_proto::cluster_pb::cluster_client::ClusterClient;

pub use super::sign_target::{MAX_BATCH, MAX_TARGET_LEN, SignTarget};
use crate::cluster::Raft;
use crate::datadir::{DataDirError, frost_keys};
use crate::store::{Store, StoreError};
use crate::threshold::{
    KeyPackage, PublicKeyPackage, SigningCommitments, SigningNonces, SigningPackage,
    ThresholdError, Wire, sign,
};
use crate::tls::ClusterTls;

/// How long a signer keeps round-1 nonces for round 2.
pub const NONCE_TTL: Duration = Duration::from_secs(30);
/// Round-1 nonces one coordinator may hold at one signer.
pub const MAX_OUTSTANDING: usize = 1024;
/// How long a signer waits to apply the coordinator's log index.
pub const APPLY_WAIT: Duration = Duration::from_secs(2);
/// How long a coordinator waits for each round's answers.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(4);
/// Nonce commitments a coordinator asks a signer for at once, ahead of its
/// rounds; it asks again when fewer than half are left.
pub const PREPARE_BATCH: u32 = 32;
/// Why a signature share or a group signature was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// No key generation has completed.
    #[error(
        "the group has no signing key yet: it needs three servers and a completed key generation (vmail-auth status)"
    )]
    NoGroupKey,
    /// The request names another key than the group's current one.
    #[error("ceremony {asked} is not the group's current key (ceremony {current})")]
    OtherCeremony {
        /// The ceremony asked for.
        asked: u64,
        /// The current one.
        current: u64,
    },
    /// This server has no key package of the current key.
    #[error(
        "this server holds no key package of ceremony {0}; it cannot sign until the group reshares"
    )]
    NoKeyPackage(u64),
    /// The caller is not a member of the key's roster.
    #[error("{0} is not a member of the group key's roster")]
    NotInRoster(String),
    /// The signer did not reach the coordinator's log index in time.
    #[error(
        "this server has applied the log to index {applied}, behind the coordinator's {asked}; retry"
    )]
    Behind {
        /// The coordinator's index.
        asked: u64,
        /// This server's.
        applied: u64,
    },
    /// The target names no object in this server's state.
    #[error("nothing to sign: {0}")]
    Absent(String),
    /// The request could not be decoded.
    #[error("malformed signing request: {0}")]
    Malformed(String),
    /// The coordinator holds too many nonces here.
    #[error(
        "{0} would hold more than {MAX_OUTSTANDING} unanswered signing rounds here; finish or let them expire"
    )]
    Busy(String),
    /// Round 2 named no live round 1.
    #[error(
        "no signing round with this handle: it was used, expired ({NONCE_TTL:?}) or never begun"
    )]
    UnknownHandle,
    /// The signing package is not what this server rebuilt.
    #[error("the signing package from {coordinator} is not what this server's state says; refused")]
    Mismatch {
        /// Who sent it.
        coordinator: String,
    },
    /// Fewer than t members answered.
    #[error("{got} of the {needed} servers a signature needs answered; {}", missing(.failures))]
    TooFewSigners {
        /// Members that signed (this one included).
        got: usize,
        /// The threshold.
        needed: u16,
        /// The members that did not, and why.
        failures: Vec<(String, String)>,
    },
    /// A FROST step failed.
    #[error(transparent)]
    Threshold(#[from] ThresholdError),
    /// The key package could not be read.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server is shutting down.
    #[error("this server is shutting down; retry on another")]
    Stopping,
}

fn missing(failures: &[(String, String)]) -> String {
    failures
        .iter()
        .map(|(who, why)| format!("{who}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One member's round 1, kept for its round 2.
struct Round {
    coordinator: String,
    ceremony: u64,
    nonces: SigningNonces,
    commitments: SigningCommitments,
    /// The bytes round 1 rebuilt; `None` for a prepared round, whose
    /// round 2 names its target.
    message: Option<Vec<u8>>,
    expires: Instant,
}

/// A round a signer keeps for a coordinator: its handle and its encoded
/// commitments.
pub type Kept = ([u8; 16], Vec<u8>);

/// A member's answer to one internal call, within [`ROUND_TIMEOUT`], or
/// why not.
async fn answer<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    Ok(tokio::time::timeout(ROUND_TIMEOUT, call)
        .await
        .map_err(|_| format!("no answer within {ROUND_TIMEOUT:?}"))?
        .map_err(|s| s.message().to_owned())?
        .into_inner())
}

/// A loaded key package.
#[derive(Clone)]
struct Held {
    ceremony: u64,
    key: Arc<KeyPackage>,
    public: Arc<PublicKeyPackage>,
}

/// This server's part in threshold signing: its key package, its open
/// rounds, and its clients of the other members.
pub struct Signer {
    /// Weak: the service owns the signer, and stopping a server waits for
    /// its store's last strong reference to go.
    store: Weak<Store>,
    raft: Raft,
    /// The id of the cluster key, which the grants, orders and proofs
    /// the group co-signs name.
    cluster_key_id: [u8; 8],
    dir: Option<PathBuf>,
    held: Mutex<Option<Held>>,
    rounds: Mutex<HashMap<[u8; 16], Round>>,
    clients: Mutex<HashMap<String, ClusterClient<Channel>>>,
    /// As a coordinator: each other member's prepared commitments.
    pools: Arc<prepared::Pools>,
    /// Rounds this server coordinated in one trip.
    one_trip: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer of the member whose database is `store`; its key packages
    /// are in the store's directory. `cluster_key` is the group's cluster
    /// public key.
    pub fn new(store: &Arc<Store>, raft: Raft, cluster_key: &ed25519_dalek::VerifyingKey) -> Self {
        let dir = store.path().parent().map(PathBuf::from);
        Self {
            store: Arc::downgrade(store),
            raft,
            cluster_key_id: vmail_proto::grant::key_id(cluster_key),
            dir,
            held: Mutex::new(None),
            rounds: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            pools: Default::default(),
            one_trip: Default::default(),
        }
    }

    /// Runs `f` on the store off the async threads (the internal service
    /// reads through here too).
    pub(super) async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, SignError> {
        let store = self.store.upgrade().ok_or(SignError::Stopping)?;
        Ok(tokio::task::spawn_blocking(move || f(&store))
            .await
            .expect("a store read panicked")?)
    }

    /// The ceremony whose shares sign with the group key now, as this
    /// server has applied the log.
    pub async fn key_ceremony(&self) -> Result<Option<crate::store::KeyCeremony>, SignError> {
        self.db(|s| s.key_ceremony()).await
    }

    /// The current group key's ceremony, its roster, and this server's key
    /// package of it.
    async fn current(&self) -> Result<(Held, Vec<u64>), SignError> {
        // A refresh under way or failed leaves the key where it was.
        let Some(crate::store::KeyCeremony {
            number: ceremony,
            roster,
            ..
        }) = self.db(|s| s.key_ceremony()).await?
        else {
            return Err(SignError::NoGroupKey);
        };
        let cached = self.held.lock().expect("held lock").clone();
        let held = match cached {
            Some(h) if h.ceremony == ceremony => h,
            _ => {
                let dir = self.dir.clone().ok_or(SignError::NoKeyPackage(ceremony))?;
                let (key, public) = frost_keys::load_key_package(&dir, ceremony)?
                    .ok_or(SignError::NoKeyPackage(ceremony))?;
                let h = Held {
                    ceremony,
                    key: Arc::new(key),
                    public: Arc::new(public),
                };
                *self.held.lock().expect("held lock") = Some(h.clone());
                h
            }
        };
        Ok((held, roster))
    }

    /// The bytes `target` signs, from this server's state, in one read.
    async fn message(&self, target: &SignTarget) -> Result<Vec<u8>, SignError> {
        let (target, key_id) = (target.clone(), self.cluster_key_id);
        self.db(move |s| Ok(target.message_in(s, &key_id))).await?
    }

    fn applied(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// The current key, if `coordinator` (a roster member) asks for
    /// `ceremony`.
    async fn held_for(
        &self,
        coordinator: &str,
        coordinator_id: u64,
        ceremony: u64,
    ) -> Result<Held, SignError> {
        let (held, roster) = self.current().await?;
        if ceremony != held.ceremony {
            return Err(SignError::OtherCeremony {
                asked: ceremony,
                current: held.ceremony,
            });
        }
        if !roster.contains(&coordinator_id) {
            return Err(SignError::NotInRoster(coordinator.to_owned()));
        }
        Ok(held)
    }

    /// The bytes `target` names here once this server has applied the
    /// coordinator's `applied_index` (waiting [`APPLY_WAIT`] at most).
    async fn rebuild(&self, applied_index: u64, target: &[u8]) -> Result<Vec<u8>, SignError> {
        let target = SignTarget::from_bytes(target)?;
        if self.applied() < applied_index {
            let _ = self
                .raft
                .wait(Some(APPLY_WAIT))
                .applied_index_at_least(Some(applied_index), "signing round")
                .await;
            let applied = self.applied();
            if applied < applied_index {
                return Err(SignError::Behind {
                    asked: applied_index,
                    applied,
                });
            }
        }
        self.message(&target).await
    }

    /// Keeps fresh nonces for `coordinator`'s round 2, one per entry of
    /// `messages`; answers their (handle, commitments).
    fn keep(
        &self,
        coordinator: &str,
        held: &Held,
        messages: Vec<Option<Vec<u8>>>,
    ) -> Result<Vec<Kept>, SignError> {
        let now = Instant::now();
        let mut rounds = self.rounds.lock().expect("rounds lock");
        rounds.retain(|_, r| r.expires > now);
        let open = rounds
            .values()
            .filter(|r| r.coordinator == coordinator)
            .count();
        if open + messages.len() > MAX_OUTSTANDING {
            return Err(SignError::Busy(coordinator.to_owned()));
        }
        let mut answers = Vec::with_capacity(messages.len());
        for message in messages {
            let (nonces, commitments) = sign::commit(&held.key, &mut rand::rngs::OsRng);
            let handle: [u8; 16] = vmail_proto::random_bytes();
            answers.push((handle, commitments.to_wire()?));
            rounds.insert(
                handle,
                Round {
                    coordinator: coordinator.to_owned(),
                    ceremony: held.ceremony,
                    nonces,
                    commitments,
                    message,
                    expires: now + NONCE_TTL,
                },
            );
        }
        Ok(answers)
    }

    /// Round 1 for `coordinator` (a member's TLS name): checks the request
    /// against this server's state and answers (handle, commitments).
    pub async fn commit(
        &self,
        coordinator: &str,
        coordinator_id: u64,
        ceremony: u64,
        applied_index: u64,
        target: &[u8],
    ) -> Result<Kept, SignError> {
        let held = self.held_for(coordinator, coordinator_id, ceremony).await?;
        let message = self.rebuild(applied_index, target).await?;
        let mut kept = self.keep(coordinator, &held, vec![Some(message)])?;
        Ok(kept.pop().expect("one round kept"))
    }

    /// Preprocessing for `coordinator`: `count` (at most
    /// [`PREPARE_BATCH`]) rounds bound to no message yet, each spent by a
    /// round 2 that names its target. Answers their (handle, commitments).
    pub async fn prepare(
        &self,
        coordinator: &str,
        coordinator_id: u64,
        ceremony: u64,
        count: u32,
    ) -> Result<Vec<Kept>, SignError> {
        if count == 0 || count > PREPARE_BATCH {
            return Err(SignError::Malformed(format!(
                "count {count}: ask for 1 to {PREPARE_BATCH} prepared rounds"
            )));
        }
        let held = self.held_for(coordinator, coordinator_id, ceremony).await?;
        self.keep(coordinator, &held, vec![None; count as usize])
    }

    /// Round 2 for `coordinator`: the signature share on `package`, if its
    /// message is the one this server's state gives and it carries this
    /// server's commitments. A prepared round's request names its target
    /// and the coordinator's applied index (`prepared`), and the bytes are
    /// rebuilt now; a round 1's were rebuilt then. The nonces are gone
    /// after this call, whatever it answers.
    pub async fn share(
        &self,
        coordinator: &str,
        handle: &[u8],
        package: &[u8],
        prepared: Option<(u64, &[u8])>,
    ) -> Result<Vec<u8>, SignError> {
        let handle: [u8; 16] = handle.try_into().map_err(|_| SignError::UnknownHandle)?;
        let round = {
            let mut rounds = self.rounds.lock().expect("rounds lock");
            match rounds.remove(&handle) {
                Some(r) if r.coordinator == coordinator && r.expires > Instant::now() => r,
                Some(r) if r.coordinator != coordinator => {
                    // Not the caller's: put it back for its coordinator.
                    rounds.insert(handle, r);
                    return Err(SignError::UnknownHandle);
                }
                _ => return Err(SignError::UnknownHandle),
            }
        };
        let package = SigningPackage::from_wire(package)?;
        let (held, _) = self.current().await?;
        if held.ceremony != round.ceremony {
            return Err(SignError::OtherCeremony {
                asked: round.ceremony,
                current: held.ceremony,
            });
        }
        let message = match (round.message, prepared) {
            (Some(m), _) => m,
            (None, Some((applied_index, target))) => self.rebuild(applied_index, target).await?,
            (None, None) => {
                return Err(SignError::Malformed(
                    "a prepared round's share request must name its target".into(),
                ));
            }
        };
        let mine = package.signing_commitments().get(held.key.identifier());
        if package.message().as_slice() != message.as_slice() || mine != Some(&round.commitments) {
            tracing::warn!(%coordinator, "refused a signing package that is not what this server's state says");
            return Err(SignError::Mismatch {
                coordinator: coordinator.to_owned(),
            });
        }
        Ok(sign::sign_share(&package, round.nonces, &held.key)?.to_wire()?)
    }

    /// The rounds this server coordinated in one trip, on prepared
    /// commitments.
    pub fn one_trip_rounds(&self) -> u64 {
        self.one_trip.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The round-1 nonces this server holds for coordinators.
    pub fn open_rounds(&self) -> usize {
        let now = Instant::now();
        self.rounds
            .lock()
            .expect("rounds lock")
            .values()
            .filter(|r| r.expires > now)
            .count()
    }

    fn client(&self, tls: &ClusterTls, url: &str) -> Result<ClusterClient<Channel>, String> {
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(c) = clients.get(url) {
            return Ok(c.clone());
        }
        let c = tls.client(url)?;
        clients.insert(url.to_owned(), c.clone());
        Ok(c)
    }
}
