//! The replicated state machine: applies [`Command`]s to the [`Store`] and
//! builds and installs snapshots of it.
//!
//! A batch of entries is applied in one redb transaction together with the
//! `applied` marker (last log id and membership), so after a crash every
//! entry has been applied exactly once. That transaction is not fsynced on
//! its own (the log already is); the next durable commit carries it. Applying is deterministic: the
//! certificate and storage-grant serials come from the store, ed25519
//! signatures (certificates, storage grants, delete orders of acks and
//! recalls) are deterministic, and times and random values come from the command.
//!
//! The file stays whole past 600 lines: it is one `match` over every
//! command and the openraft trait impls around it, and the rule that every
//! arm is deterministic is easiest to check in one place.

use std::io::Cursor;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use redb::ReadableTable;
use tokio::sync::broadcast;
use vmail_proto::cert::CertificateBody;
use vmail_proto::grant::DeleteOrder;
use vmail_proto::keys::MasterKey;
use vmail_proto::names::{Recipients, Username};

use super::log_store::{get_meta, put_meta};
use super::{Command, Event, Member, Reply, TypeConfig, unseal};
use crate::keys::ServerKeys;
use crate::metrics::AuthMetrics;
use crate::store::{
    AckOutcome, DepositOutcome, DkgOutcome, RAFT, RecallOutcome, RegisterOutcome, Session, Store,
    StoreError, User, Voicemail, db_err,
};

type SErr = StorageError<u64>;
type Applied = (Option<LogId<u64>>, StoredMembership<u64, Member>);

/// The state machine: the store, the keys needed to apply commands, and
/// the channel that tells WatchPending streams about new voicemail.
#[derive(Debug, Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    keys: Arc<ServerKeys>,
    events: broadcast::Sender<Event>,
    metrics: Arc<AuthMetrics>,
}

impl StateMachine {
    /// A state machine over `store`; applies and erased keys are counted
    /// in `metrics`.
    pub fn new(
        store: Arc<Store>,
        keys: Arc<ServerKeys>,
        events: broadcast::Sender<Event>,
        metrics: Arc<AuthMetrics>,
    ) -> Self {
        Self {
            store,
            keys,
            events,
            metrics,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .expect("state machine task panicked")
    }

    /// Applies one command inside `tx`. Corrupt stored data or a sealed
    /// value that does not open becomes [`Reply::Failed`]; any other storage
    /// failure aborts the whole batch.
    fn apply_command(
        &self,
        tx: &redb::WriteTransaction,
        cmd: Command,
        events: &mut Vec<Event>,
    ) -> Result<Reply, StoreError> {
        match self.apply_inner(tx, cmd, events) {
            Err(StoreError::Corrupt { table, key, why }) => {
                let e = StoreError::Corrupt { table, key, why };
                tracing::error!(error = %e, "a log entry could not be applied");
                Ok(Reply::Failed(e.to_string()))
            }
            other => other,
        }
    }

    fn apply_inner(
        &self,
        tx: &redb::WriteTransaction,
        cmd: Command,
        events: &mut Vec<Event>,
    ) -> Result<Reply, StoreError> {
        let store = &self.store;
        let data_key = &self.keys.data_key;
        let cluster_key = &self.keys.cluster_key;
        let corrupt = |key: &str, why: String| StoreError::Corrupt {
            table: "raft_log",
            key: key.to_owned(),
            why,
        };
        let name = |n: &str| Username::parse(n).map_err(|e| corrupt(n, e.to_string()));
        let identity = |k: &[u8; 32], n: &str| {
            VerifyingKey::from_bytes(k).map_err(|e| corrupt(n, format!("identity key: {e}")))
        };
        Ok(match cmd {
            Command::Register {
                username,
                invite_hash,
                password_file,
                credential_nonce,
                identity_key,
                account_key,
                now,
                cert_ttl,
            } => {
                // A retry of a registration that was already applied.
                if let Some(u) = store.user_in(tx, &username)?
                    && u.credential_nonce == credential_nonce
                {
                    return Ok(Reply::Registered(RegisterOutcome::Created));
                }
                let user = name(&username)?;
                let identity_key = identity(&identity_key, &username)?;
                let password_file = unseal(
                    data_key,
                    "password-file",
                    username.as_bytes(),
                    &password_file,
                )
                .map_err(|why| corrupt(&username, why))?;
                Reply::Registered(store.register(
                    tx,
                    &username,
                    invite_hash.as_deref(),
                    |serial| {
                        User {
                            password_file,
                            credential_nonce,
                            certificate: CertificateBody {
                                serial,
                                username: user,
                                identity_key,
                                peer_id: Vec::new(),
                                not_before: now,
                                not_after: now + cert_ttl,
                            }
                            .sign(cluster_key),
                            registered_at: now,
                            account_key,
                        }
                    },
                )?)
            }
            Command::BeginSession {
                username,
                token_hash,
                master_key,
                master_key_id,
                identity_key,
                peer_id,
                inbox_key,
                login_id,
                account_proof,
                now,
                session_ttl,
                cert_ttl,
            } => {
                let user = name(&username)?;
                // Checked here, on every server's own state, not only by
                // the leader that proposed it: a session the user did not
                // sign would have honest servers reseal key shares to an
                // inbox key of the proposer's choosing.
                let Some(registered) = store.user_in(tx, &username)? else {
                    return Ok(Reply::SessionUnsigned(format!(
                        "no user {username} to open a session for"
                    )));
                };
                let statement = vmail_proto::account::SessionStatement {
                    username: &user,
                    login_id: &login_id,
                    identity_key: &identity_key,
                    peer_id: &peer_id,
                    inbox_key: &inbox_key,
                };
                if let Err(e) = statement.verify(&registered.account_key, &account_proof) {
                    tracing::warn!(user = %username, error = %e, "a session entry without the user's signature was refused");
                    return Ok(Reply::SessionUnsigned(e.to_string()));
                }
                let identity_key = identity(&identity_key, &username)?;
                let mk: [u8; 32] = unseal(data_key, "master-key", &token_hash, &master_key)
                    .map_err(|why| corrupt(&username, why))?
                    .try_into()
                    .map_err(|_| corrupt(&username, "master key length".into()))?;
                let session = Session {
                    token_hash,
                    username,
                    master_key: MasterKey::from_bytes(mk),
                    master_key_id,
                    created_at: now,
                    expires_at: now + session_ttl,
                    inbox_key,
                };
                let cert = store.begin_session(tx, &session, |serial| {
                    CertificateBody {
                        serial,
                        username: user,
                        identity_key,
                        peer_id,
                        not_before: now,
                        not_after: now + cert_ttl,
                    }
                    .sign(cluster_key)
                })?;
                Reply::SessionBegun(Box::new(cert))
            }
            Command::EndSession { token_hash } => {
                let existed = store.end_session(tx, &token_hash)?;
                events.push(Event::SessionEnded { token_hash });
                Reply::SessionEnded(existed)
            }
            Command::Grant {
                token_hash,
                owner,
                recipients,
                terms,
                now,
                max_open,
            } => grant(
                store,
                tx,
                token_hash,
                &owner,
                &recipients,
                terms,
                (now, max_open),
                None,
                cluster_key,
            )?,
            Command::GrantUnderPolicy {
                token_hash,
                owner,
                recipients,
                terms,
                now,
                max_open,
                policy,
            } => grant(
                store,
                tx,
                token_hash,
                &owner,
                &recipients,
                terms,
                (now, max_open),
                Some(&policy),
                cluster_key,
            )?,
            Command::Deposit {
                token_hash,
                request_id,
                digest,
                id,
                sender,
                recipients,
                locator,
                metadata,
                deposited_at,
                threshold,
                key_check,
                shares,
                max_pending,
                grant_serial,
            } => {
                // The leader checked the session against its own state
                // without a read round; the check that counts is here, in
                // log order, so a deposit ordered after a logout fails.
                match store.session_in(tx, &token_hash)? {
                    Some((user, expires_at)) if user == sender && deposited_at < expires_at => {}
                    _ => return Ok(Reply::SessionGone),
                }
                let key = hex::encode(id);
                let recipients =
                    Recipients::parse(&recipients).map_err(|e| corrupt(&key, e.to_string()))?;
                let sender_certificate = store
                    .user_in(tx, &sender)?
                    .ok_or_else(|| corrupt(&key, format!("sender {sender:?} is not registered")))?
                    .certificate;
                let vm = Voicemail {
                    id,
                    sender,
                    sender_certificate,
                    recipients,
                    locator,
                    metadata,
                    deposited_at,
                    grant_serial,
                    threshold,
                    key_check,
                    shares,
                };
                let outcome =
                    store.deposit(tx, &request_id, digest, &vm, grant_serial, max_pending)?;
                if let DepositOutcome::Stored(id) = outcome {
                    events.push(Event::Deposited {
                        id,
                        recipients: Arc::new(vm.recipients.to_strings()),
                    });
                }
                Reply::Deposited(outcome)
            }
            Command::Ack { recipient, id, now } => {
                Reply::Acked(store.ack(tx, &recipient, &id, now, |serial, reason, exp| {
                    DeleteOrder::sign(serial, reason, exp, cluster_key)
                })?)
            }
            Command::Purge { now } => Reply::Purged(store.purge_expired(tx, now)?),
            Command::SetRetention {
                username,
                retention_secs,
            } => {
                store.set_retention(tx, &username, retention_secs)?;
                Reply::RetentionSet
            }
            Command::Recall { sender, id, now } => {
                Reply::Recalled(store.recall(tx, &sender, &id, now, |serial, reason, exp| {
                    DeleteOrder::sign(serial, reason, exp, cluster_key)
                })?)
            }
            Command::SetPolicy {
                username,
                mode,
                accept_anonymous,
            } => Reply::Policy(store.set_policy(tx, &username, mode, accept_anonymous)?),
            Command::EditPolicy {
                username,
                list,
                add,
                remove,
            } => Reply::PolicyEdited(store.edit_policy(tx, &username, list, &add, &remove)?),
            Command::Report { reporter, id, now } => {
                Reply::Reported(store.report(tx, &reporter, &id, now)?)
            }
            Command::PublishShareKey {
                node_id,
                epoch,
                public_key,
                now,
            } => Reply::ShareKeyPublished(
                store.publish_share_key(tx, node_id, epoch, public_key, None, now)?,
            ),
            Command::PublishVouchedShareKey {
                node_id,
                epoch,
                public_key,
                vouch,
                now,
            } => Reply::ShareKeyPublished(store.publish_share_key(
                tx,
                node_id,
                epoch,
                public_key,
                Some(&vouch),
                now,
            )?),
            Command::RegisterMember {
                node_id,
                member_key,
            } => Reply::MemberRegistered(store.register_member_key(tx, node_id, member_key)?),
            Command::ApproveJoin {
                approver,
                joining,
                signature,
            } => Reply::JoinApproved(store.approve_join(tx, approver, joining, &signature)?),
            Command::DkgBegin { roster, now } => Reply::Dkg(store.dkg_begin(tx, &roster, now)?),
            Command::Dkg { node_id, step } => {
                match store.check_step_signature(tx, node_id, &step.encode(), None)? {
                    Ok(()) => Reply::Dkg(store.dkg_step(tx, node_id, step)?),
                    Err(why) => Reply::Dkg(DkgOutcome::Refused(why)),
                }
            }
            Command::VouchedDkg {
                node_id,
                step,
                signature,
            } => match store.check_step_signature(tx, node_id, &step.encode(), Some(&signature))? {
                Ok(()) => Reply::Dkg(store.dkg_step(tx, node_id, step)?),
                Err(why) => Reply::Dkg(DkgOutcome::Refused(why)),
            },
            Command::DkgRefresh { roster, now } => {
                Reply::Dkg(store.dkg_refresh_begin(tx, &roster, now)?)
            }
            Command::DkgRepair {
                joining,
                helpers,
                now,
            } => Reply::Dkg(store.dkg_repair_begin(tx, joining, &helpers, now)?),
            Command::CertifyGroup {
                username,
                serial,
                signature,
            } => Reply::GroupCertified(
                store
                    .certify_group(tx, &username, serial, &signature)?
                    .err(),
            ),
            Command::Batch(cmds) => Reply::Batch(
                cmds.into_iter()
                    .map(|c| self.apply_command(tx, c, events))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

/// Applies a grant: the session check that counts is the one in log order,
/// as for a deposit.
#[allow(clippy::too_many_arguments)]
fn grant(
    store: &Store,
    tx: &redb::WriteTransaction,
    token_hash: [u8; 32],
    owner: &str,
    recipients: &[String],
    terms: crate::store::GrantTerms,
    (now, max_open): (u64, u64),
    policy: Option<&crate::store::GrantPolicy>,
    cluster_key: &ed25519_dalek::SigningKey,
) -> Result<Reply, StoreError> {
    match store.session_in(tx, &token_hash)? {
        Some((user, expires_at)) if user == owner && now < expires_at => {}
        _ => return Ok(Reply::SessionGone),
    }
    let recipients = Recipients::parse(recipients).map_err(|e| StoreError::Corrupt {
        table: "raft_log",
        key: owner.to_owned(),
        why: e.to_string(),
    })?;
    Ok(Reply::Granted(store.issue_grant(
        tx,
        owner,
        &recipients,
        terms,
        now,
        max_open,
        policy,
        |body| body.sign(cluster_key),
    )?))
}

/// How many voicemail session keys applying a command erased.
fn keys_erased(reply: &Reply) -> u64 {
    match reply {
        Reply::Acked(AckOutcome::Acked {
            key_erased: true, ..
        })
        | Reply::Recalled(RecallOutcome::Recalled { .. }) => 1,
        Reply::Purged(c) => c.voicemails as u64,
        Reply::Batch(replies) => replies.iter().map(keys_erased).sum(),
        _ => 0,
    }
}

fn sm_write(e: StoreError) -> SErr {
    StorageIOError::write_state_machine(&e).into()
}

fn sm_read(e: StoreError) -> SErr {
    StorageIOError::read_state_machine(&e).into()
}

fn decode_applied(raw: Option<Vec<u8>>) -> Result<Applied, StoreError> {
    match raw {
        None => Ok((None, StoredMembership::default())),
        Some(b) => postcard::from_bytes(&b).map_err(|e| StoreError::Corrupt {
            table: "raft",
            key: "applied".into(),
            why: e.to_string(),
        }),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let built = self
            .blocking(|sm| {
                let (data, applied) = sm.store.export()?;
                let (last_log_id, last_membership) = decode_applied(applied)?;
                let snapshot_id = match last_log_id {
                    Some(l) => format!(
                        "{}-{}-{}",
                        l.leader_id.term,
                        l.index,
                        hex::encode(vmail_proto::random_bytes::<4>())
                    ),
                    None => format!("empty-{}", hex::encode(vmail_proto::random_bytes::<4>())),
                };
                let meta = SnapshotMeta {
                    last_log_id,
                    last_membership,
                    snapshot_id,
                };
                put_meta(&sm.store, "snapshot", &(meta.clone(), data.clone()))?;
                Ok((meta, data))
            })
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        tracing::info!(last_log = ?built.0.last_log_id, bytes = built.1.len(), "snapshot built");
        Ok(Snapshot {
            meta: built.0,
            snapshot: Box::new(Cursor::new(built.1)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<Applied, SErr> {
        self.blocking(|sm| {
            let raw: Option<Applied> = get_meta(&sm.store, "applied")?;
            Ok(raw.unwrap_or_default())
        })
        .await
        .map_err(sm_read)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let since = std::time::Instant::now();
        let (replies, events) = self
            .blocking(move |sm| {
                let mut events = Vec::new();
                // Not fsynced: the entries are durable in the log, and state
                // and `applied` commit together, so a crash that loses this
                // commit loses it whole and the entries are applied again.
                // The next durable commit persists it: a vote, or at the
                // latest the next snapshot, which comes before any purge of
                // the entries it covers (the log is in its own file now).
                let replies = sm.store.write_with(redb::Durability::None, |tx| {
                    let raw = tx
                        .open_table(RAFT)
                        .map_err(db_err)?
                        .get("applied")
                        .map_err(db_err)?
                        .map(|v| v.value().to_vec());
                    let (mut last, mut membership) = decode_applied(raw)?;
                    let mut replies = Vec::with_capacity(entries.len());
                    for e in entries {
                        last = Some(e.log_id);
                        replies.push(match e.payload {
                            EntryPayload::Blank => Reply::None,
                            EntryPayload::Normal(cmd) => sm.apply_command(tx, cmd, &mut events)?,
                            EntryPayload::Membership(m) => {
                                // An approval admits one membership: a node
                                // that leaves needs new ones to come back.
                                let nodes: Vec<u64> = m.nodes().map(|(id, _)| *id).collect();
                                sm.store.forget_approvals_outside(tx, &nodes)?;
                                membership = StoredMembership::new(Some(e.log_id), m);
                                Reply::None
                            }
                        });
                    }
                    let applied: Applied = (last, membership);
                    tx.open_table(RAFT)
                        .map_err(db_err)?
                        .insert(
                            "applied",
                            postcard::to_allocvec(&applied).expect("encodes").as_slice(),
                        )
                        .map_err(db_err)?;
                    Ok(replies)
                })?;
                Ok((replies, events))
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "applying Raft entries failed; this server stops replicating until restarted");
                sm_write(e)
            })?;
        self.metrics.applied(since);
        self.metrics
            .keys_erased(replies.iter().map(keys_erased).sum());
        for e in events {
            let _ = self.events.send(e);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let meta = meta.clone();
        let data = snapshot.into_inner();
        tracing::info!(last_log = ?meta.last_log_id, bytes = data.len(), "installing snapshot");
        self.blocking(move |sm| {
            sm.store.write(|tx| {
                sm.store.import(tx, &data)?;
                let applied: Applied = (meta.last_log_id, meta.last_membership.clone());
                let mut raft = tx.open_table(RAFT).map_err(db_err)?;
                raft.insert(
                    "applied",
                    postcard::to_allocvec(&applied).expect("encodes").as_slice(),
                )
                .map_err(db_err)?;
                raft.insert(
                    "snapshot",
                    postcard::to_allocvec(&(&meta, &data))
                        .expect("encodes")
                        .as_slice(),
                )
                .map_err(db_err)?;
                Ok(())
            })
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let snap: Option<(SnapshotMeta<u64, Member>, Vec<u8>)> = self
            .blocking(|sm| get_meta(&sm.store, "snapshot"))
            .await
            .map_err(sm_read)?;
        Ok(snap.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
