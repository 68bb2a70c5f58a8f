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
//! The signer's rounds and the coordinator that drives them share the
//! round table and the loaded key package, so they live together; what a
//! target's bytes are is `super::sign_target`, and the batching of
//! coordinated rounds `super::sign_batcher`.
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

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vmail_proto::batch::GroupSignature;
use vmail_proto::cluster_pb::{self as cpb, cluster_client::ClusterClient};

pub use super::sign_target::{MAX_BATCH, MAX_TARGET_LEN, SignTarget};
use crate::cluster::Raft;
use crate::datadir::{DataDirError, frost_keys};
use crate::store::{Store, StoreError};
use crate::threshold::{
    KeyPackage, PublicKeyPackage, SignatureShare, SigningCommitments, SigningNonces,
    SigningPackage, ThresholdError, Wire, sign,
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
/// How long before the signer drops them a coordinator stops spending
/// prepared commitments.
const PREPARED_MARGIN: Duration = Duration::from_secs(5);
/// How long a coordinator waits before it asks a signer that refused to
/// prepare (an older server, say) again.
const PREPARE_BACKOFF: Duration = Duration::from_secs(30);
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

/// Commitments a signer prepared for this coordinator.
#[derive(Default)]
struct Pool {
    ready: std::collections::VecDeque<Prepared>,
    /// A `SignPrepare` to the member is under way.
    asking: bool,
    /// Not asked again, nor spent, before then: it refused or failed.
    not_before: Option<Instant>,
    /// Bumped when the pool is dropped, so an answer asked for before
    /// that is not kept.
    generation: u64,
}

/// One prepared round at a signer.
struct Prepared {
    handle: [u8; 16],
    commitments: SigningCommitments,
    ceremony: u64,
    usable_until: Instant,
}

/// A round a signer keeps for a coordinator: its handle and its encoded
/// commitments.
pub type Kept = ([u8; 16], Vec<u8>);

/// A signer chosen for a round.
struct Chosen {
    node: u64,
    name: String,
    id: crate::threshold::Identifier,
    handle: Vec<u8>,
    commitments: SigningCommitments,
    client: ClusterClient<Channel>,
}

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
    pools: Mutex<HashMap<u64, Pool>>,
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
            pools: Mutex::new(HashMap::new()),
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

    /// Coordinates one group signature on `target`: this server and t−1
    /// other roster members, the first to answer round 1, or t−1 whose
    /// prepared commitments it holds. Returns the signature, checked with
    /// `verify_strict` under the group key, and the group key.
    pub async fn group_sign(
        self: &Arc<Self>,
        tls: &ClusterTls,
        me: u64,
        target: &SignTarget,
    ) -> Result<(ed25519_dalek::Signature, [u8; 32]), SignError> {
        let message = self.message(target).await?;
        self.round(tls, me, target, &message).await
    }

    /// The group's signatures on `targets` (grants, delete orders, deposit
    /// proofs) from one round, in order: each on the Merkle root of their
    /// bytes, with its inclusion proof. A lone target is signed directly.
    /// The batch is signed as a whole or not at all.
    pub async fn group_sign_many(
        self: &Arc<Self>,
        tls: &ClusterTls,
        me: u64,
        targets: Vec<SignTarget>,
    ) -> Result<Vec<GroupSignature>, SignError> {
        if let [one] = targets.as_slice() {
            return Ok(vec![self.group_sign(tls, me, one).await?.0.into()]);
        }
        let (items, key_id) = (targets.clone(), self.cluster_key_id);
        let messages = self
            .db(move |s| Ok(SignTarget::batch_items(s, &key_id, &items)))
            .await??;
        let batch = sign::BatchToSign::new(&messages)?;
        let (signature, _) = self
            .round(tls, me, &SignTarget::Batch(targets), &batch.message())
            .await?;
        Ok(batch.item_signatures(signature))
    }

    /// One signing round on `message`, the bytes `target` names here: a
    /// single trip on prepared commitments when t−1 members have some
    /// left, else (or when that fails) both rounds.
    async fn round(
        self: &Arc<Self>,
        tls: &ClusterTls,
        me: u64,
        target: &SignTarget,
        message: &[u8],
    ) -> Result<(ed25519_dalek::Signature, [u8; 32]), SignError> {
        let (held, roster) = self.current().await?;
        let needed = usize::from(*held.key.min_signers());
        let members = self.raft.metrics().borrow().membership_config.clone();
        let request = cpb::SignCommitRequest {
            ceremony: held.ceremony,
            applied_index: self.applied(),
            target: target.to_bytes(),
        };
        let others: Vec<(u64, String, String)> = roster
            .iter()
            .filter(|n| **n != me)
            .map(|n| match members.membership().get_node(n) {
                Some(m) => (*n, m.name.clone(), m.raft_url.clone()),
                None => (*n, format!("{n:016x}"), String::new()),
            })
            .collect();
        let chosen = self.take_prepared(tls, &held, &others, needed - 1);
        self.refill(tls, &held, &others);
        if let Some(chosen) = chosen {
            let nodes: Vec<(u64, String)> =
                chosen.iter().map(|c| (c.node, c.name.clone())).collect();
            let prepared = Some((request.applied_index, request.target.as_slice()));
            match self
                .finish(&held, message, chosen, prepared, Vec::new())
                .await
            {
                Ok(signed) => {
                    self.one_trip
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(signed);
                }
                Err(e) => {
                    // A signer that restarted lost its nonces, one that lags
                    // or refused would again: drop what they prepared, leave
                    // them out of one-trip rounds for a while, and run both
                    // rounds, where the first to answer signs.
                    let names: Vec<_> = nodes.iter().map(|(_, n)| n.as_str()).collect();
                    tracing::warn!(signers = ?names, error = %e, "a round on prepared commitments failed; running both rounds");
                    self.set_aside(nodes.iter().map(|(n, _)| *n));
                }
            }
        }
        let asks = others.iter().map(|(node, name, url)| {
            let request = request.clone();
            async move {
                let got = async {
                    let mut client = self.client(tls, url)?;
                    let r = answer(client.sign_commit(request)).await?;
                    let id =
                        crate::threshold::member_identifier(*node).map_err(|e| e.to_string())?;
                    let commitments =
                        SigningCommitments::from_wire(&r.commitments).map_err(|e| e.to_string())?;
                    Ok::<_, String>((id, r.handle, commitments, client))
                }
                .await;
                (*node, name.clone(), got)
            }
        });
        let mut failures = Vec::new();
        let mut chosen = Vec::new();
        // The first t−1 to answer sign; the rest are not waited for, and
        // the nonces of any that answer later expire unused.
        let mut asks: futures::stream::FuturesUnordered<_> = asks.collect();
        while chosen.len() + 1 < needed {
            let Some((node, name, got)) = futures::StreamExt::next(&mut asks).await else {
                break;
            };
            match got {
                Ok((id, handle, commitments, client)) => chosen.push(Chosen {
                    node,
                    name,
                    id,
                    handle,
                    commitments,
                    client,
                }),
                Err(why) => failures.push((name, why)),
            }
        }
        drop(asks);
        if chosen.len() + 1 < needed {
            return Err(too_few(chosen.len() + 1, needed, failures));
        }
        self.finish(&held, message, chosen, None, failures).await
    }

    /// Round 2 with `chosen`'s commitments and this server's: the package,
    /// the shares, the aggregate. `prepared` is the (applied index, target)
    /// a round 2 on prepared commitments names; `failures`, the members
    /// that already failed this round.
    async fn finish(
        &self,
        held: &Held,
        message: &[u8],
        chosen: Vec<Chosen>,
        prepared: Option<(u64, &[u8])>,
        mut failures: Vec<(String, String)>,
    ) -> Result<(ed25519_dalek::Signature, [u8; 32]), SignError> {
        let needed = usize::from(*held.key.min_signers());
        let mut commitments: BTreeMap<_, _> =
            chosen.iter().map(|c| (c.id, c.commitments)).collect();
        let (nonces, mine) = sign::commit(&held.key, &mut rand::rngs::OsRng);
        commitments.insert(*held.key.identifier(), mine);
        let package = sign::signing_package(&held.public, commitments, message)?;
        let package_bytes = package.to_wire()?;
        let (applied_index, target) = prepared.unwrap_or_default();
        let asks = chosen.into_iter().map(|mut c| {
            let request = cpb::SignShareRequest {
                handle: c.handle,
                signing_package: package_bytes.clone(),
                applied_index,
                target: target.to_vec(),
            };
            async move {
                let got = answer(c.client.sign_share(request))
                    .await
                    .and_then(|r| SignatureShare::from_wire(&r.share).map_err(|e| e.to_string()));
                (c.name, c.id, got)
            }
        });
        let mut shares = BTreeMap::new();
        for (name, id, got) in futures::future::join_all(asks).await {
            match got {
                Ok(share) => {
                    shares.insert(id, share);
                }
                Err(why) => failures.push((name, why)),
            }
        }
        if shares.len() + 1 < needed {
            return Err(too_few(shares.len() + 1, needed, failures));
        }
        shares.insert(
            *held.key.identifier(),
            sign::sign_share(&package, nonces, &held.key)?,
        );
        let group_key = crate::threshold::group_key_bytes(&held.public)?;
        Ok((sign::aggregate(&package, &shares, &held.public)?, group_key))
    }

    /// `count` other members' prepared commitments for one round under
    /// `held`'s key, one each, or `None` (and nothing spent) when fewer
    /// members have some. Members set aside are skipped.
    fn take_prepared(
        &self,
        tls: &ClusterTls,
        held: &Held,
        others: &[(u64, String, String)],
        count: usize,
    ) -> Option<Vec<Chosen>> {
        let now = Instant::now();
        let mut pools = self.pools.lock().expect("pools lock");
        let mut ready = Vec::with_capacity(count);
        for (node, name, url) in others {
            if ready.len() == count {
                break;
            }
            let Some(pool) = pools.get_mut(node) else {
                continue;
            };
            pool.ready
                .retain(|p| p.ceremony == held.ceremony && p.usable_until > now);
            if pool.ready.is_empty() || pool.not_before.is_some_and(|t| t > now) {
                continue;
            }
            let (Ok(client), Ok(id)) = (
                self.client(tls, url),
                crate::threshold::member_identifier(*node),
            ) else {
                continue;
            };
            ready.push((*node, name, id, client));
        }
        if ready.len() < count {
            return None;
        }
        let chosen = ready
            .into_iter()
            .map(|(node, name, id, client)| {
                let p = pools
                    .get_mut(&node)
                    .and_then(|pool| pool.ready.pop_front())
                    .expect("checked above, under the same lock");
                Chosen {
                    node,
                    name: name.clone(),
                    id,
                    handle: p.handle.to_vec(),
                    commitments: p.commitments,
                    client,
                }
            })
            .collect();
        Some(chosen)
    }

    /// Drops what `nodes` prepared, and neither spends nor asks for their
    /// commitments for [`PREPARE_BACKOFF`]; an answer under way is not kept.
    fn set_aside(&self, nodes: impl IntoIterator<Item = u64>) {
        let until = Instant::now() + PREPARE_BACKOFF;
        let mut pools = self.pools.lock().expect("pools lock");
        for node in nodes {
            let pool = pools.entry(node).or_default();
            pool.ready.clear();
            pool.generation += 1;
            pool.not_before = Some(until);
        }
    }

    /// Asks each other member with fewer than half of [`PREPARE_BATCH`]
    /// prepared commitments left for more, in the background, one request
    /// at a time per member.
    fn refill(self: &Arc<Self>, tls: &ClusterTls, held: &Held, others: &[(u64, String, String)]) {
        let now = Instant::now();
        let mut pools = self.pools.lock().expect("pools lock");
        for (node, name, url) in others {
            let pool = pools.entry(*node).or_default();
            if pool.asking
                || pool.ready.len() >= (PREPARE_BATCH / 2) as usize
                || pool.not_before.is_some_and(|t| t > now)
            {
                continue;
            }
            let Ok(mut client) = self.client(tls, url) else {
                continue;
            };
            pool.asking = true;
            let generation = pool.generation;
            let (signer, node, name, ceremony) = (self.clone(), *node, name.clone(), held.ceremony);
            let request = cpb::SignPrepareRequest {
                ceremony,
                count: PREPARE_BATCH,
            };
            tokio::spawn(async move {
                let asked = Instant::now();
                let got = answer(client.sign_prepare(request))
                    .await
                    .and_then(|r| prepared(r, ceremony, asked + NONCE_TTL - PREPARED_MARGIN));
                let mut pools = signer.pools.lock().expect("pools lock");
                let pool = pools.entry(node).or_default();
                pool.asking = false;
                match got {
                    Ok(_) if pool.generation != generation => {}
                    Ok(prepared) => pool.ready.extend(prepared),
                    Err(why) => {
                        tracing::debug!(member = %name, %why, "no prepared signing rounds");
                        pool.not_before = Some(Instant::now() + PREPARE_BACKOFF);
                    }
                }
            });
        }
    }
}

/// A member's prepared rounds from its answer: at most [`PREPARE_BATCH`],
/// each a 16-byte handle and commitments that decode, or none.
fn prepared(
    r: cpb::SignPrepareResponse,
    ceremony: u64,
    usable_until: Instant,
) -> Result<Vec<Prepared>, String> {
    if r.rounds.len() > PREPARE_BATCH as usize {
        return Err(format!(
            "answered {} prepared rounds where {PREPARE_BATCH} were asked for",
            r.rounds.len()
        ));
    }
    r.rounds
        .into_iter()
        .map(|r| {
            Ok(Prepared {
                handle: r.handle.as_slice().try_into().map_err(|_| {
                    format!(
                        "a prepared round's handle is {} bytes, not 16",
                        r.handle.len()
                    )
                })?,
                commitments: SigningCommitments::from_wire(&r.commitments)
                    .map_err(|e| e.to_string())?,
                ceremony,
                usable_until,
            })
        })
        .collect()
}

fn too_few(got: usize, needed: usize, failures: Vec<(String, String)>) -> SignError {
    SignError::TooFewSigners {
        got,
        needed: needed as u16,
        failures,
    }
}
