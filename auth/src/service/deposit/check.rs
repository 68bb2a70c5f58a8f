//! The checks a deposit request passes before anything is proposed
//! ([`validate_deposit`], pure): sizes and names, and the shape of its
//! shares against the share keys the group published.

use std::collections::BTreeMap;

use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::Recipients;
use vmail_proto::share::{self, MAX_SHARES, PUBLIC_LEN, SEALED_LEN};

use super::super::error::{AuthError, invalid};
use crate::store::{PublishedKey, StoredShare};

/// Largest locator a deposit may carry: 4 KiB. The largest valid locator
/// (`vmail-node`'s `core::locator`, version 2, 32 shards of 64 bytes each
/// plus a fixed part under 80 bytes) is about 2.1 KiB; per-shard holder
/// hints of a 38-byte peer id each add about 1.3 KiB more, so 4 KiB holds
/// both with room to spare.
pub const MAX_LOCATOR_LEN: usize = 4 * 1024;
/// Shortest client request id, in bytes.
pub const MIN_REQUEST_ID_LEN: usize = 16;
/// Longest client request id, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 64;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 128;

/// A deposit request.
#[derive(Debug, Clone)]
pub struct Deposit {
    /// Client-chosen idempotency key.
    pub request_id: Vec<u8>,
    /// Recipient usernames.
    pub recipients: Vec<String>,
    /// Storage locator.
    pub locator: Vec<u8>,
    /// The session key's shares, one per server of the grant's share keys.
    pub shares: Vec<ShareIn>,
    /// Shares needed to recover the key: `share::threshold(shares.len())`.
    pub threshold: u32,
    /// The sender's key check of the session key, 32 bytes.
    pub key_check: Vec<u8>,
    /// Metadata. Its `expires_at` is ignored: the voicemail expires with
    /// its storage grant.
    pub metadata: VoicemailMeta,
    /// The serial of the sender's storage grant for this voicemail's shards;
    /// 0 (none) is refused.
    pub grant_serial: u64,
}

/// One sealed share as a deposit carries it, unchecked.
#[derive(Debug, Clone, Default)]
pub struct ShareIn {
    /// The server it is sealed to.
    pub node_id: u64,
    /// The epoch of that server's share key.
    pub epoch: u32,
    /// The Shamir x-coordinate.
    pub index: u32,
    /// The HPKE encapsulated key, 32 bytes.
    pub enc: Vec<u8>,
    /// The sealed share, 48 bytes.
    pub ciphertext: Vec<u8>,
}

/// What [`validate_deposit`] made of a deposit.
#[derive(Debug, Clone)]
pub struct CheckedDeposit {
    /// The recipients, canonical.
    pub recipients: Recipients,
    /// The shares, in index order.
    pub shares: Vec<StoredShare>,
    /// The threshold.
    pub threshold: u8,
    /// The key check.
    pub key_check: [u8; 32],
}

/// Checks a deposit's fields against the protocol's limits, and returns the
/// recipients in canonical order. The metadata's expiry is not checked: the
/// voicemail expires with its storage grant, whose existence and use are
/// checked when the deposit applies. `published` is every share key the
/// group published, by (node id, epoch): each share must be sealed to one.
/// Pure: the service calls it before it proposes anything, so a refused
/// deposit changes nothing.
pub fn validate_deposit(
    d: &Deposit,
    published: &BTreeMap<(u64, u32), PublishedKey>,
) -> Result<CheckedDeposit, AuthError> {
    if !(MIN_REQUEST_ID_LEN..=MAX_REQUEST_ID_LEN).contains(&d.request_id.len()) {
        return Err(invalid(
            "request_id",
            format!(
                "{} bytes, expected {MIN_REQUEST_ID_LEN} to {MAX_REQUEST_ID_LEN}",
                d.request_id.len()
            ),
        ));
    }
    let recipients =
        Recipients::parse(&d.recipients).map_err(|e| invalid("recipients", e.to_string()))?;
    let shares = validate_shares(&d.shares, published)?;
    let n = shares.len();
    let want = share::threshold(n);
    if d.threshold as usize != want {
        return Err(invalid(
            "threshold",
            format!(
                "{}, but {n} shares need a threshold of {want} (a majority): split the key with the grant's share keys again",
                d.threshold
            ),
        ));
    }
    let key_check: [u8; 32] = d.key_check.as_slice().try_into().map_err(|_| {
        invalid(
            "key_check",
            format!("{} bytes, expected 32", d.key_check.len()),
        )
    })?;
    if d.locator.len() > MAX_LOCATOR_LEN {
        return Err(invalid(
            "locator",
            format!(
                "{} bytes, at most {MAX_LOCATOR_LEN} allowed",
                d.locator.len()
            ),
        ));
    }
    if d.metadata.content_type.len() > MAX_CONTENT_TYPE_LEN {
        return Err(invalid(
            "metadata.content_type",
            format!(
                "{} bytes, at most {MAX_CONTENT_TYPE_LEN}",
                d.metadata.content_type.len()
            ),
        ));
    }
    if d.grant_serial == 0 {
        return Err(invalid(
            "grant_serial",
            "a deposit needs a storage grant: ask RequestGrant for one before storing the shards, then pass its serial",
        ));
    }
    Ok(CheckedDeposit {
        recipients,
        shares,
        threshold: want as u8,
        key_check,
    })
}

/// Checks a deposit's shares: 1 to [`MAX_SHARES`], indices exactly 1..=n
/// once each, one per server, each sealed to a published key, and of the
/// sizes HPKE gives. Returns them in index order.
fn validate_shares(
    shares: &[ShareIn],
    published: &BTreeMap<(u64, u32), PublishedKey>,
) -> Result<Vec<StoredShare>, AuthError> {
    let n = shares.len();
    if n == 0 {
        return Err(invalid(
            "shares",
            "none: the session key must be split among the grant's share_keys, one share for each (update the client)",
        ));
    }
    if n > MAX_SHARES {
        return Err(invalid(
            "shares",
            format!("{n} shares, at most {MAX_SHARES}"),
        ));
    }
    let mut out: Vec<StoredShare> = Vec::with_capacity(n);
    for (i, s) in shares.iter().enumerate() {
        let at = |what: &str| format!("share {} ({what})", i + 1);
        if s.index == 0 || s.index as usize > n {
            return Err(invalid(
                "shares.index",
                format!("{}: {}, expected 1 to {n}", at("index"), s.index),
            ));
        }
        if out.iter().any(|o| u32::from(o.index) == s.index) {
            return Err(invalid(
                "shares.index",
                format!("{}: index {} appears twice", at("index"), s.index),
            ));
        }
        if out.iter().any(|o| o.node_id == s.node_id) {
            return Err(invalid(
                "shares.node_id",
                format!(
                    "{}: server {:016x} has two shares; each server gets one",
                    at("node_id"),
                    s.node_id
                ),
            ));
        }
        if !published.contains_key(&(s.node_id, s.epoch)) {
            return Err(invalid(
                "shares.epoch",
                format!(
                    "{}: server {:016x} published no share key of epoch {}: seal to the keys of a fresh grant",
                    at("epoch"),
                    s.node_id,
                    s.epoch
                ),
            ));
        }
        let enc: [u8; PUBLIC_LEN] = s.enc.as_slice().try_into().map_err(|_| {
            invalid(
                "shares.enc",
                format!(
                    "{}: {} bytes, expected {PUBLIC_LEN}",
                    at("enc"),
                    s.enc.len()
                ),
            )
        })?;
        if s.ciphertext.len() != SEALED_LEN {
            return Err(invalid(
                "shares.ciphertext",
                format!(
                    "{}: {} bytes, expected {SEALED_LEN}",
                    at("ciphertext"),
                    s.ciphertext.len()
                ),
            ));
        }
        out.push(StoredShare {
            node_id: s.node_id,
            epoch: s.epoch,
            index: s.index as u8,
            enc,
            ciphertext: s.ciphertext.clone(),
        });
    }
    out.sort_by_key(|s| s.index);
    Ok(out)
}
