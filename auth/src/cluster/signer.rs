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
        "{0} holds {MAX_OUTSTANDING} unanswered signing rounds here; finish or let them expire"
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
    nonces: SigningNonces,
    commitments: SigningCommitments,
    message: Vec<u8>,
    expires: Instant,
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

    /// Round 1 for `coordinator` (a member's TLS name): checks the request
    /// against this server's state and answers (handle, commitments).
    pub async fn commit(
        &self,
        coordinator: &str,
        coordinator_id: u64,
        ceremony: u64,
        applied_index: u64,
        target: &[u8],
    ) -> Result<([u8; 16], Vec<u8>), SignError> {
        let target = SignTarget::from_bytes(target)?;
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
        let message = self.message(&target).await?;
        let (nonces, commitments) = sign::commit(&held.key, &mut rand::rngs::OsRng);
        let encoded = commitments.to_wire()?;
        let handle: [u8; 16] = vmail_proto::random_bytes();
        let now = Instant::now();
        let mut rounds = self.rounds.lock().expect("rounds lock");
        rounds.retain(|_, r| r.expires > now);
        if rounds
            .values()
            .filter(|r| r.coordinator == coordinator)
            .count()
            >= MAX_OUTSTANDING
        {
            return Err(SignError::Busy(coordinator.to_owned()));
        }
        rounds.insert(
            handle,
            Round {
                coordinator: coordinator.to_owned(),
                nonces,
                commitments,
                message,
                expires: now + NONCE_TTL,
            },
        );
        Ok((handle, encoded))
    }

    /// Round 2 for `coordinator`: the signature share on `package`, if its
    /// message is the one round 1 rebuilt and it carries this server's
    /// commitments. The nonces are gone after this call, whatever it answers.
    pub async fn share(
        &self,
        coordinator: &str,
        handle: &[u8],
        package: &[u8],
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
        let mine = package.signing_commitments().get(held.key.identifier());
        if package.message().as_slice() != round.message.as_slice()
            || mine != Some(&round.commitments)
        {
            tracing::warn!(%coordinator, "refused a signing package that is not what this server's state says");
            return Err(SignError::Mismatch {
                coordinator: coordinator.to_owned(),
            });
        }
        Ok(sign::sign_share(&package, round.nonces, &held.key)?.to_wire()?)
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
    /// other roster members, the first to answer round 1. Returns the
    /// signature, checked with `verify_strict` under the group key, and the
    /// group key.
    pub async fn group_sign(
        &self,
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
        &self,
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

    /// One signing round on `message`, the bytes `target` names here.
    async fn round(
        &self,
        tls: &ClusterTls,
        me: u64,
        target: &SignTarget,
        message: &[u8],
    ) -> Result<(ed25519_dalek::Signature, [u8; 32]), SignError> {
        let (held, roster) = self.current().await?;
        let needed = *held.key.min_signers();
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
        let asks = others.iter().map(|(node, name, url)| {
            let request = request.clone();
            async move {
                let answer = async {
                    let mut client = self.client(tls, url)?;
                    let r = tokio::time::timeout(ROUND_TIMEOUT, client.sign_commit(request))
                        .await
                        .map_err(|_| format!("no answer within {ROUND_TIMEOUT:?}"))?
                        .map_err(|s| s.message().to_owned())?
                        .into_inner();
                    let id =
                        crate::threshold::member_identifier(*node).map_err(|e| e.to_string())?;
                    let commitments =
                        SigningCommitments::from_wire(&r.commitments).map_err(|e| e.to_string())?;
                    Ok::<_, String>((id, r.handle, commitments, client))
                }
                .await;
                (name.clone(), answer)
            }
        });
        let mut failures = Vec::new();
        let mut chosen = Vec::new();
        let mut commitments = BTreeMap::new();
        // The first t−1 to answer sign; the rest are not waited for, and
        // the nonces of any that answer later expire unused.
        let mut asks: futures::stream::FuturesUnordered<_> = asks.collect();
        while chosen.len() + 1 < usize::from(needed) {
            let Some((name, answer)) = futures::StreamExt::next(&mut asks).await else {
                break;
            };
            match answer {
                Ok((id, handle, c, client)) => {
                    commitments.insert(id, c);
                    chosen.push((name, id, handle, client));
                }
                Err(why) => failures.push((name, why)),
            }
        }
        drop(asks);
        if chosen.len() + 1 < usize::from(needed) {
            return Err(SignError::TooFewSigners {
                got: chosen.len() + 1,
                needed,
                failures,
            });
        }
        let (nonces, mine) = sign::commit(&held.key, &mut rand::rngs::OsRng);
        commitments.insert(*held.key.identifier(), mine);
        let package = sign::signing_package(&held.public, commitments, message)?;
        let package_bytes = package.to_wire()?;
        let asks = chosen.into_iter().map(|(name, id, handle, mut client)| {
            let request = cpb::SignShareRequest {
                handle,
                signing_package: package_bytes.clone(),
            };
            async move {
                let answer = async {
                    let r = tokio::time::timeout(ROUND_TIMEOUT, client.sign_share(request))
                        .await
                        .map_err(|_| format!("no answer within {ROUND_TIMEOUT:?}"))?
                        .map_err(|s| s.message().to_owned())?
                        .into_inner();
                    SignatureShare::from_wire(&r.share).map_err(|e| e.to_string())
                }
                .await;
                (name, id, answer)
            }
        });
        let mut shares = BTreeMap::new();
        for (name, id, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(share) => {
                    shares.insert(id, share);
                }
                Err(why) => failures.push((name, why)),
            }
        }
        if !failures.is_empty() && shares.len() + 1 < usize::from(needed) {
            return Err(SignError::TooFewSigners {
                got: shares.len() + 1,
                needed,
                failures,
            });
        }
        shares.insert(
            *held.key.identifier(),
            sign::sign_share(&package, nonces, &held.key)?,
        );
        let group_key = crate::threshold::group_key_bytes(&held.public)?;
        Ok((sign::aggregate(&package, &shares, &held.public)?, group_key))
    }
}
