//! At-rest sealing: the AADs that bind every sealed secret to its row, so a
//! sealed value moved to another row, or a row pointed elsewhere, no longer
//! opens.

use sha2::{Digest, Sha256};
use vmail_proto::names::Recipients;

pub(super) const AAD_PASSWORD_FILE: &[u8] = b"vmail/v1/at-rest/password-file/";
const AAD_MASTER_KEY: &[u8] = b"vmail/v1/at-rest/master-key/";
const AAD_VOICEMAIL: &[u8] = b"vmail/v1/at-rest/voicemail/";
const AAD_SHARE_KEY: &[u8] = b"vmail/v1/at-rest/share-key/";
const AAD_MEMBER_KEY: &[u8] = b"vmail/v1/at-rest/member-key/";

pub(super) fn aad(prefix: &[u8], row: &[u8]) -> Vec<u8> {
    [prefix, row].concat()
}

/// A session's master key is bound to its token hash, its user and its
/// inbox key, so a sealed key moved to another row, a row pointed at
/// another user, or an inbox key swapped in the database (servers reseal
/// their shares to it) fails.
pub(super) fn master_key_aad(token_hash: &[u8], username: &str, inbox_key: &[u8; 32]) -> Vec<u8> {
    [AAD_MASTER_KEY, token_hash, username.as_bytes(), inbox_key].concat()
}

/// A voicemail row carries an empty blob sealed under the data key whose
/// AAD is its id, the sender's certificate (so the sender's name), the
/// deposit time, the recipients, the locator and the storage grant, so none
/// of those can be changed in the database unnoticed. (The session key is
/// not in the row: its shares are sealed to the servers' share keys, and
/// bound to the grant, recipients, threshold and key check by HPKE.) The
/// metadata (size, type, duration, expiry) is not bound: docs/SECURITY.md
/// lists it among the fields outside the AADs.
pub(super) fn voicemail_aad(
    id: &[u8],
    sender_certificate: &[u8],
    deposited_at: u64,
    recipients: &Recipients,
    locator: &[u8],
    grant_serial: u64,
) -> Vec<u8> {
    let mut out = AAD_VOICEMAIL.to_vec();
    out.extend_from_slice(id);
    out.extend_from_slice(&Sha256::digest(sender_certificate));
    out.extend_from_slice(&deposited_at.to_be_bytes());
    out.extend_from_slice(&recipients.canonical_bytes());
    out.extend_from_slice(&vmail_proto::keys::locator_hash(locator));
    out.extend_from_slice(&grant_serial.to_be_bytes());
    out
}

/// A published share key's row carries an empty blob sealed under the data
/// key whose AAD is the server, the epoch, the public key and the time: a
/// key written into the database by someone without the data key is
/// refused as corrupt, so it never reaches a grant.
pub(super) fn share_key_aad(
    node_id: u64,
    epoch: u32,
    public: &[u8; 32],
    published_at: u64,
) -> Vec<u8> {
    let mut out = AAD_SHARE_KEY.to_vec();
    out.extend_from_slice(&node_id.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(public);
    out.extend_from_slice(&published_at.to_be_bytes());
    out
}

/// A recorded member key carries an empty blob sealed under the data key
/// over its node id and the key, like a published share key.
pub(super) fn member_key_aad(node_id: u64, key: &[u8; 32]) -> Vec<u8> {
    [AAD_MEMBER_KEY, &node_id.to_be_bytes(), key].concat()
}
