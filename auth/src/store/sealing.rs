//! At-rest sealing: the AADs that bind every sealed secret to its row, so a
//! sealed value moved to another row, or a row pointed elsewhere, no longer
//! opens.

use sha2::{Digest, Sha256};
use vmail_proto::names::Recipients;

pub(super) const AAD_PASSWORD_FILE: &[u8] = b"vmail/v1/at-rest/password-file/";
const AAD_MASTER_KEY: &[u8] = b"vmail/v1/at-rest/master-key/";
const AAD_SESSION_KEY: &[u8] = b"vmail/v1/at-rest/session-key/";

pub(super) fn aad(prefix: &[u8], row: &[u8]) -> Vec<u8> {
    [prefix, row].concat()
}

/// A session's master key is bound to its token hash and its user, so a
/// sealed key moved to another row, or a row pointed at another user, fails.
pub(super) fn master_key_aad(token_hash: &[u8], username: &str) -> Vec<u8> {
    [AAD_MASTER_KEY, token_hash, username.as_bytes()].concat()
}

/// A voicemail's session key is bound to its id, the sender's certificate
/// (so the sender's name), the deposit time, the recipients and the locator,
/// so none of those can be changed in the database unnoticed. The metadata
/// (size, type, duration, expiry) is not bound: docs/SECURITY.md lists it
/// among the fields outside the AADs.
pub(super) fn session_key_aad(
    id: &[u8],
    sender_certificate: &[u8],
    deposited_at: u64,
    recipients: &Recipients,
    locator: &[u8],
) -> Vec<u8> {
    let mut out = AAD_SESSION_KEY.to_vec();
    out.extend_from_slice(id);
    out.extend_from_slice(&Sha256::digest(sender_certificate));
    out.extend_from_slice(&deposited_at.to_be_bytes());
    out.extend_from_slice(&recipients.canonical_bytes());
    out.extend_from_slice(&vmail_proto::keys::locator_hash(locator));
    out
}
