//! What a holder admits: the pure check of a `Store` against its storage
//! grant (docs/PROTOCOL.md, "Storage grants"). No IO: the caller supplies
//! the pinned cluster key, its own peer id and the time.
//!
//! A shard is admitted only when all of these hold:
//! - it is not empty, and a grant came with it;
//! - the grant is well formed and signed by the pinned cluster key, and by
//!   the group when its key is pinned;
//! - the grant has not expired, and its expiry is within this holder's cap;
//! - during the upload window the grant names this holder (afterwards any
//!   holder may take a covered shard: that is how repair and hand-off move
//!   shards the sender could not foresee);
//! - the shard's layout is the grant's: same shard count, data shards,
//!   length and hash at every index. Sibling identifiers may be
//!   undisclosed: a sender tells each holder only its own shard's
//!   identifier until every upload is done.
//!
//! The final layout a sender hands over afterwards (`Relayout`) is admitted
//! by [`final_layout`]: complete, the grant's, and naming this shard where
//! the held layout did.

use ed25519_dalek::VerifyingKey;
use vmail_proto::grant::StorageGrant;

use super::{ObjectMeta, ObjectStoreError, ShardOf};
use crate::core::locator::{Layout, ObjectId};

/// What a holder accepts, besides room.
#[derive(Debug, Clone)]
pub struct HolderPolicy {
    /// Bytes of quota, every object charged its header and a minimum.
    pub quota: u64,
    /// Largest object body.
    pub max_object: u64,
    /// Most objects held at once.
    pub max_objects: usize,
    /// Longest a grant may keep an object here, seconds from now.
    pub max_retention_secs: u64,
    /// The auth group's public key grants and delete orders must verify
    /// against; without it nothing is admitted.
    pub cluster_key: Option<VerifyingKey>,
    /// The group's threshold key: when pinned, grants, proofs and orders
    /// must also carry its signature.
    pub group_key: Option<VerifyingKey>,
    /// This holder's libp2p peer id, as grants name holders.
    pub me: Vec<u8>,
}

/// Checks `meta` (with its grant) for a store at `now`. Returns the parsed
/// grant; the object's expiry is the grant's.
pub fn admit(
    meta: &ObjectMeta,
    policy: &HolderPolicy,
    now: u64,
) -> Result<StorageGrant, ObjectStoreError> {
    if meta.len == 0 {
        return Err(ObjectStoreError::Empty);
    }
    if meta.grant.is_empty() {
        return Err(ObjectStoreError::NoGrant);
    }
    let key = policy
        .cluster_key
        .as_ref()
        .ok_or(ObjectStoreError::NoClusterKey)?;
    let grant = StorageGrant::from_bytes(&meta.grant)?;
    grant.verify_pinned(key, policy.group_key.as_ref())?;
    let g = &grant.body;
    if g.expires_at <= now {
        return Err(ObjectStoreError::GrantExpired {
            serial: g.serial,
            expires_at: g.expires_at,
        });
    }
    let cap = now.saturating_add(policy.max_retention_secs);
    if g.expires_at > cap {
        return Err(ObjectStoreError::ExpiryTooFar {
            expires_at: g.expires_at,
            cap,
        });
    }
    if now <= g.upload_until && !grant.names_holder(&policy.me) {
        return Err(ObjectStoreError::NotNamed { serial: g.serial });
    }
    let shard = meta.shard.as_ref().ok_or(ObjectStoreError::BadLayout)?;
    if !covers(&grant, &shard.layout) || meta.len != shard.layout.shard_len() {
        return Err(ObjectStoreError::NotCovered { serial: g.serial });
    }
    Ok(grant)
}

/// Whether `layout` is exactly the shards `grant` covers: the same count,
/// data shards, and length and hash at every index.
pub fn covers(grant: &StorageGrant, layout: &Layout) -> bool {
    let g = &grant.body;
    let len = layout.shard_len();
    layout.shards.len() == g.shards.len()
        && layout.redundancy.k() == usize::from(g.data_shards)
        && layout
            .shards
            .iter()
            .zip(&g.shards)
            .all(|(s, granted)| s.sha256 == granted.sha256 && granted.len == len)
}

/// Checks `new`, the final layout a sender hands over (`Relayout`), for the
/// object held under `id` with `held`: every identifier disclosed and none
/// repeating, the grant's shards (when the object has a grant), and this
/// object at the same index with the same length and hash.
pub fn final_layout(
    held: &ObjectMeta,
    id: &ObjectId,
    new: &ShardOf,
) -> Result<(), ObjectStoreError> {
    if !new.layout.is_complete() || new.layout.validate().is_err() {
        return Err(ObjectStoreError::BadLayout);
    }
    if held.shard.as_ref().is_some_and(|s| s.index != new.index) {
        return Err(ObjectStoreError::BadLayout);
    }
    if let Ok(grant) = StorageGrant::from_bytes(&held.grant)
        && !covers(&grant, &new.layout)
    {
        return Err(ObjectStoreError::NotCovered {
            serial: grant.body.serial,
        });
    }
    let meta = ObjectMeta {
        shard: Some(new.clone()),
        ..held.clone()
    };
    if !meta.consistent(id) {
        return Err(ObjectStoreError::BadLayout);
    }
    Ok(())
}
