//! Threshold-shared session keys on this server (`vmail_proto::share`):
//! the share keys a grant hands out, OpenShare (open this server's share of
//! a waiting voicemail and reseal it to the caller session's inbox key),
//! and the upkeep of this server's own share keys: publishing the current
//! one through the group, rotating it, and erasing old epochs no waiting
//! voicemail needs.
//!
//! Every server answers OpenShare from its own applied state, never
//! redirecting to the leader: a recipient asks each server and recombines
//! `threshold` of the answers, so no single server ever holds a session key.

use std::sync::Arc;
use std::time::Duration;

use vmail_proto::cluster_pb as cpb;
use vmail_proto::grant::UPLOAD_WINDOW_SECS;
use vmail_proto::names::Username;
use vmail_proto::share::{self, ResealBinding, ShareBinding, ShareKey};

use super::AuthService;
use super::error::{AuthError, invalid};
use crate::cluster::{Command, Reply};
use crate::store::{DEPOSIT_GRACE_SECS, PublishOutcome, Session, VoicemailId, VouchRefusal};
use crate::tls::ClusterTls;

/// How often the upkeep looks at rotation and erasure once the current key
/// is published.
pub const SHARE_KEY_UPKEEP_INTERVAL: Duration = Duration::from_secs(60);
/// First wait before publishing again after a failure; it doubles up to
/// [`PUBLISH_RETRY_MAX`].
pub const PUBLISH_RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest wait between attempts to publish.
pub const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long after a new epoch is published an older one is kept even if no
/// stored voicemail needs it: a sender may hold a grant that lists the old
/// key and deposit until its upload window and the deposit grace close.
pub const ERASE_GRACE_SECS: u64 = UPLOAD_WINDOW_SECS + DEPOSIT_GRACE_SECS;

/// This server's share of a voicemail's session key, resealed to the
/// caller session's inbox key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedShare {
    /// This server's Raft node id.
    pub node_id: u64,
    /// The share's index.
    pub index: u8,
    /// HPKE encapsulated key.
    pub enc: [u8; 32],
    /// The sealed share value.
    pub ciphertext: Vec<u8>,
}

/// What one pass of the share-key upkeep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upkeep {
    /// The epoch made by a rotation.
    pub rotated_to: Option<u32>,
    /// The epochs erased.
    pub erased: Vec<u32>,
}

impl AuthService {
    /// This server's Raft node id.
    pub fn node_id(&self) -> u64 {
        self.raft.metrics().borrow().id
    }

    /// A server's name by node id; its id in hex once it is no longer a
    /// member.
    pub(crate) fn server_name(&self, id: u64) -> String {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map_or_else(|| format!("{id:016x}"), |m| m.name.clone())
    }

    /// Each current voter's newest published share key, by node id, as a
    /// grant lists them. Refused while a voter has published none.
    pub async fn grant_share_keys(&self) -> Result<Vec<ShareKey>, AuthError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let newest = self.db(|s| s.newest_share_keys()).await?;
        let mut out = Vec::new();
        // voter_ids come in node id order.
        for id in membership.voter_ids() {
            match newest.get(&id) {
                Some((key, _)) => out.push(*key),
                None => return Err(AuthError::ShareKeyMissing(self.server_name(id))),
            }
        }
        Ok(out)
    }

    /// Opens this server's share of voicemail `id` and reseals it to the
    /// session's inbox key, from this server's own state.
    pub async fn open_share(&self, session: &Session, id: &[u8]) -> Result<OpenedShare, AuthError> {
        let id: VoicemailId = id
            .try_into()
            .map_err(|_| invalid("voicemail_id", format!("{} bytes, expected 16", id.len())))?;
        self.open_shares
            .lock()
            .expect("lock")
            .check(&session.username, std::time::Instant::now())
            .map_err(|wait| AuthError::RateLimited {
                what: "OpenShare calls from this user on this server",
                per_minute: self.config.open_shares_per_minute_per_user,
                key: "open_shares_per_minute_per_user",
                retry_after_secs: super::limits::retry_secs(wait),
            })?;
        let user = session.username.clone();
        let now = self.now();
        let not_here = || AuthError::NoShare {
            id: hex::encode(id),
            server: self.config.name.clone(),
        };
        let vm = self
            .db(move |s| s.pending_one(&user, &id))
            .await?
            .filter(|vm| vm.metadata.expires_at > now)
            .ok_or_else(not_here)?;
        let me = self.node_id();
        let sealed = vm
            .shares
            .iter()
            .find(|s| s.node_id == me)
            .ok_or_else(|| {
                AuthError::ShareUnusable(format!(
                    "voicemail {} has no share for this server ({}): it was deposited for another group membership; ask the other servers",
                    hex::encode(id),
                    self.config.name
                ))
            })?;
        let secret = self
            .share_keys
            .secret(sealed.epoch)
            .ok_or(AuthError::ShareKeyErased {
                epoch: sealed.epoch,
                server: self.config.name.clone(),
            })?;
        let binding = ShareBinding {
            grant_serial: vm.grant_serial,
            recipients: &vm.recipients,
            threshold: vm.threshold,
            key_check: &vm.key_check,
        };
        let value = share::open_share(&secret, &share::SealedShare::from(sealed), &binding)
            .map_err(|e| {
                AuthError::ShareUnusable(format!(
                    "this server's share of voicemail {} does not open ({e}): the sender sealed it wrongly",
                    hex::encode(id)
                ))
            })?;
        let recipient = Username::parse(&session.username)?;
        let resealed = share::reseal(
            &value,
            &session.inbox_key,
            &ResealBinding {
                voicemail_id: &id,
                recipient: &recipient,
                node_id: me,
                index: sealed.index,
            },
        )
        .map_err(|e| AuthError::ShareUnusable(format!("the session's inbox key: {e}")))?;
        Ok(OpenedShare {
            node_id: me,
            index: sealed.index,
            enc: resealed.enc,
            ciphertext: resealed.ciphertext,
        })
    }

    /// Whether this server's current share key is in its replicated table
    /// of published keys, and is the newest there in its name. A newer one
    /// is a key it no longer has (its `share-keys/` restored from an older
    /// copy) or, in a group older than member keys, one it did not make:
    /// publishing again moves past it.
    pub async fn share_key_published(&self) -> Result<bool, AuthError> {
        let me = self.node_id();
        let (epoch, public) = self.share_keys.current();
        let (published, recorded) = self
            .db(move |s| Ok((s.published_share_keys()?, s.member_key(me)?)))
            .await?;
        // A member of a group older than member keys publishes once more,
        // so that the log records its member key.
        Ok(recorded.is_some()
            && published
                .get(&(me, epoch))
                .is_some_and(|k| k.public == public)
            && published
                .range((me, epoch.saturating_add(1))..=(me, u32::MAX))
                .next()
                .is_none())
    }

    /// Publishes this server's current share key: proposed directly on the
    /// leader, otherwise sent to the leader's internal service over mutual
    /// TLS. Returns once the leader committed it (a follower sees it in its
    /// own table when it has applied the entry).
    pub async fn publish_share_key(&self, tls: &ClusterTls) -> Result<(), AuthError> {
        let me = self.node_id();
        let (newest, recorded) = self
            .db(move |s| Ok((s.newest_share_keys()?, s.member_key(me)?)))
            .await?;
        if recorded.is_some_and(|k| k != self.share_keys.member_public()) {
            return Err(self.member_key_refused(VouchRefusal::OtherKey));
        }
        let (mut epoch, mut public) = self.share_keys.current();
        if let Some((k, _)) = newest.get(&me)
            && k.epoch >= epoch
        {
            if k.public != public {
                return Err(self.behind_the_group(epoch, k.epoch));
            }
            if recorded.is_none() {
                // Its key is published but not its member key: only a new
                // key records that (anyone can sign a public one).
                (epoch, public) = self
                    .share_keys
                    .rotate_past(k.epoch)
                    .map_err(|e| AuthError::Apply(e.to_string()))?;
                tracing::info!(
                    epoch,
                    "a new share-key epoch, to record this server's member key"
                );
            }
        }
        let vouch = self.share_keys.vouch(me, epoch, &public);
        if self.is_leader() {
            let reply = self
                .propose(Command::PublishVouchedShareKey {
                    node_id: me,
                    epoch,
                    public_key: public,
                    vouch,
                    now: self.now(),
                })
                .await?;
            return match reply {
                Reply::ShareKeyPublished(PublishOutcome::Stale { newest }) => {
                    Err(self.behind_the_group(epoch, newest))
                }
                Reply::ShareKeyPublished(PublishOutcome::Unvouched(why)) => {
                    Err(self.member_key_refused(why))
                }
                Reply::ShareKeyPublished(_) => Ok(()),
                other => Err(AuthError::Apply(format!(
                    "unexpected reply {other:?} to a share-key publication"
                ))),
            };
        }
        let (leader, mut client) = self.leader_client(tls)?;
        client
            .publish_share_key(cpb::PublishShareKeyRequest {
                node_id: me,
                epoch,
                public_key: public.to_vec(),
                member_key: vouch.member_key.to_vec(),
                signature: vouch.signature,
            })
            .await
            .map_err(|s| {
                AuthError::Unavailable(format!(
                    "the leader {} refused the share key: {}",
                    leader.name,
                    s.message()
                ))
            })?;
        Ok(())
    }

    /// The current leader and a client of its internal service, for what a
    /// member proposes in its own name.
    pub(crate) fn leader_client(
        &self,
        tls: &ClusterTls,
    ) -> Result<
        (
            crate::cluster::Member,
            cpb::cluster_client::ClusterClient<tonic::transport::Channel>,
        ),
        AuthError,
    > {
        let leader = {
            let m = self.raft.metrics().borrow().clone();
            m.current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l).cloned())
        }
        .ok_or_else(|| AuthError::Unavailable("no leader is known yet".into()))?;
        let client = tls
            .client(&leader.raft_url)
            .map_err(AuthError::Unavailable)?;
        Ok((leader, client))
    }

    /// This server's current share key is of an epoch the group has seen
    /// (its `share-keys/` was restored or lost): moves past the group's
    /// record to a fresh epoch, to be published next, and says so.
    /// The group refused this server's own publication: the member key it
    /// recorded for this server is not the one in `member.key`.
    fn member_key_refused(&self, why: VouchRefusal) -> AuthError {
        AuthError::Unavailable(format!(
            "the group refused the share key of {}: {why}. DATA_DIR/member.key is not the key \
             the group recorded for this server; restore it from a backup, or wipe the data \
             directory and join the group again",
            self.config.name
        ))
    }

    fn behind_the_group(&self, epoch: u32, newest: u32) -> AuthError {
        let moved = self.share_keys.rotate_past(newest);
        tracing::warn!(
            epoch,
            newest,
            ?moved,
            "this server's share-key epoch is one the group has already seen (share-keys/ restored from a backup, or lost); made a fresh epoch to publish"
        );
        AuthError::Unavailable(format!(
            "share key epoch {epoch} of {} is not newer than the published epoch {newest}: the data dir's share-keys/ was restored or lost; a fresh epoch will be published",
            self.config.name
        ))
    }

    /// Makes the next epoch's share key when the current one was published
    /// `share_key_rotation_secs` ago or more; then erases each older epoch
    /// that no stored voicemail has a share sealed to, once the current one
    /// has been published for [`ERASE_GRACE_SECS`].
    pub async fn share_key_upkeep(&self) -> Result<Upkeep, AuthError> {
        let me = self.node_id();
        let now = self.now();
        let published = self.db(|s| s.published_share_keys()).await?;
        let (epoch, public) = self.share_keys.current();
        let Some(current) = published.get(&(me, epoch)).filter(|k| k.public == public) else {
            // Not yet published: nothing to rotate from, and old epochs
            // stay until their successor is in use.
            return Ok(Upkeep::default());
        };
        let mut upkeep = Upkeep::default();
        if now.saturating_sub(current.published_at) >= self.config.share_key_rotation_secs {
            let (next, _) = self.share_keys.rotate().map_err(|e| {
                AuthError::Unavailable(format!("making the next share key failed: {e}"))
            })?;
            tracing::info!(epoch = next, "share key rotated; publishing it");
            upkeep.rotated_to = Some(next);
            return Ok(upkeep);
        }
        if now.saturating_sub(current.published_at) < ERASE_GRACE_SECS {
            return Ok(upkeep);
        }
        let in_use = self.db(move |s| s.share_epochs_in_use(me)).await?;
        for old in self.share_keys.epochs() {
            if old == epoch || in_use.contains(&old) {
                continue;
            }
            if self.share_keys.erase(old).map_err(|e| {
                AuthError::Unavailable(format!("erasing share key epoch {old} failed: {e}"))
            })? {
                tracing::info!(
                    epoch = old,
                    "old share key erased: no waiting voicemail needs it"
                );
                upkeep.erased.push(old);
            }
        }
        Ok(upkeep)
    }

    /// This server's share keys.
    pub fn share_keys(&self) -> &Arc<crate::datadir::ShareKeyRing> {
        &self.share_keys
    }
}

/// The share-key duty of a running server: until shutdown, publish the
/// current key until the replicated table has it (retrying with backoff),
/// then every [`SHARE_KEY_UPKEEP_INTERVAL`] rotate and erase
/// ([`AuthService::share_key_upkeep`]).
pub async fn share_key_duty(svc: Arc<AuthService>, tls: ClusterTls) {
    let stop = svc.shutdown_token().clone();
    let mut backoff = PUBLISH_RETRY_MIN;
    loop {
        let wait = match svc.share_key_published().await {
            Ok(false) => match svc.publish_share_key(&tls).await {
                Ok(()) => {
                    backoff = PUBLISH_RETRY_MIN;
                    // Check again at once: a follower waits to apply it.
                    PUBLISH_RETRY_MIN
                }
                Err(e) => {
                    tracing::warn!(error = %e, "publishing the share key failed; retrying");
                    let wait = backoff;
                    backoff = (backoff * 2).min(PUBLISH_RETRY_MAX);
                    wait
                }
            },
            Ok(true) => match svc.share_key_upkeep().await {
                Ok(u) if u.rotated_to.is_some() => Duration::ZERO,
                Ok(_) => SHARE_KEY_UPKEEP_INTERVAL,
                Err(e) => {
                    tracing::warn!(error = %e, "share-key upkeep failed");
                    SHARE_KEY_UPKEEP_INTERVAL
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "reading the published share keys failed");
                PUBLISH_RETRY_MAX
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
