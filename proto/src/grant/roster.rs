//! The share-key roster of a grant (docs/PROTOCOL.md §7.13): the auth
//! servers and share keys a sender splits the session key among. The group
//! records them with the grant when it issues it, and t servers sign them,
//! each from its own log, so a server that answers a grant request cannot
//! hand the sender share keys of its own to a client that pins the group
//! key.
//!
//! ```text
//! roster: "vmail/v1/share-roster" || version u32 || serial u64 || key id (8)
//!           || count u8 || count x (node id u64 || epoch u32 || public (32))
//! ```
//!
//! Only the group signs it; there is no cluster signature and no encoding
//! beyond the signature's 64 bytes, which travel beside the keys in the
//! grant answer.

use ed25519_dalek::{Signature, VerifyingKey};

use super::{GRANT_VERSION, GrantError};
use crate::share::ShareKey;

/// Domain-separation prefix of a roster's signing bytes.
pub const ROSTER_LABEL: &[u8] = b"vmail/v1/share-roster";

const ROSTER: &str = "share-key roster of storage grant";

/// The bytes the group signs for the share keys of grant `serial`, issued
/// under the cluster key with id `key_id`, in the order given.
pub fn roster_signing_bytes(serial: u64, key_id: &[u8; 8], keys: &[ShareKey]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ROSTER_LABEL.len() + 21 + keys.len() * 44);
    out.extend_from_slice(ROSTER_LABEL);
    out.extend_from_slice(&GRANT_VERSION.to_be_bytes());
    out.extend_from_slice(&serial.to_be_bytes());
    out.extend_from_slice(key_id);
    out.push(u8::try_from(keys.len()).unwrap_or(u8::MAX));
    for k in keys {
        out.extend_from_slice(&k.node_id.to_be_bytes());
        out.extend_from_slice(&k.epoch.to_be_bytes());
        out.extend_from_slice(&k.public);
    }
    out
}

/// Checks the group's `signature` (empty when the group gave none) over
/// the share keys of grant `serial`, as a client that pins `group_key`
/// does before it splits a session key among them.
pub fn verify_roster(
    group_key: &VerifyingKey,
    serial: u64,
    key_id: &[u8; 8],
    keys: &[ShareKey],
    signature: &[u8],
) -> Result<(), GrantError> {
    if signature.is_empty() {
        return Err(GrantError::NoGroupSignature {
            what: ROSTER,
            serial,
        });
    }
    let bad = || GrantError::BadGroupSignature {
        what: ROSTER,
        serial,
    };
    let signature = Signature::from_slice(signature).map_err(|_| bad())?;
    group_key
        .verify_strict(&roster_signing_bytes(serial, key_id, keys), &signature)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn keys() -> Vec<ShareKey> {
        (1..=3)
            .map(|i| ShareKey {
                node_id: i,
                epoch: 1,
                public: [i as u8; 32],
            })
            .collect()
    }

    #[test]
    fn only_the_group_signed_roster_of_this_grant_verifies() {
        let group = SigningKey::from_bytes(&[9; 32]);
        let pinned = group.verifying_key();
        let id = [4; 8];
        let signed = group.sign(&roster_signing_bytes(7, &id, &keys()));
        verify_roster(&pinned, 7, &id, &keys(), &signed.to_bytes()).unwrap();

        let refused = |r: Result<(), GrantError>| {
            assert!(
                matches!(r, Err(GrantError::BadGroupSignature { .. })),
                "{r:?}"
            )
        };
        // A key swapped, an epoch changed, the order changed, one left out.
        let mut swapped = keys();
        swapped[1].public = [0xee; 32];
        refused(verify_roster(&pinned, 7, &id, &swapped, &signed.to_bytes()));
        let mut older = keys();
        older[2].epoch = 0;
        refused(verify_roster(&pinned, 7, &id, &older, &signed.to_bytes()));
        let mut reordered = keys();
        reordered.swap(0, 1);
        refused(verify_roster(
            &pinned,
            7,
            &id,
            &reordered,
            &signed.to_bytes(),
        ));
        refused(verify_roster(
            &pinned,
            7,
            &id,
            &keys()[..2],
            &signed.to_bytes(),
        ));
        // Another grant's roster, another cluster, another signer, junk.
        refused(verify_roster(&pinned, 8, &id, &keys(), &signed.to_bytes()));
        refused(verify_roster(
            &pinned,
            7,
            &[5; 8],
            &keys(),
            &signed.to_bytes(),
        ));
        let thief = SigningKey::from_bytes(&[7; 32]);
        let forged = thief.sign(&roster_signing_bytes(7, &id, &swapped));
        refused(verify_roster(&pinned, 7, &id, &swapped, &forged.to_bytes()));
        refused(verify_roster(&pinned, 7, &id, &keys(), &[1; 10]));
        let none = verify_roster(&pinned, 7, &id, &keys(), &[]);
        assert!(
            matches!(&none, Err(e @ GrantError::NoGroupSignature { .. })
                if e.to_string().contains("share-key roster of storage grant 7 has no group signature")),
            "{none:?}"
        );
    }
}
