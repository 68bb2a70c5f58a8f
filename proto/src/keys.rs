//! The vmail key schedule, and sealing under a symmetric key.
//!
//! ```text
//! master key     = HKDF-SHA256(salt = none, ikm = OPAQUE session key, info = "vmail/v1/master-key")
//! master key id  = HKDF-SHA256(salt = none, ikm = master key, info = "vmail/v1/master-key-id")[..16]
//! session key    = HKDF-SHA256(salt = 32 random bytes, ikm = master key,
//!                  info = "vmail/v1/session-key" || timestamp u64 BE || canonical recipients)
//! sealed         = 0x01 || nonce (12) || AES-256-GCM(key, nonce, plaintext, aad)
//! ```
//!
//! The salt is never sent, so the master key, which the auth servers also
//! derive, does not yield the session key; the key reaches the servers only
//! as threshold shares ([`crate::share`]). The master key never crosses the
//! wire: both sides derive it from the OPAQUE session key. Sealing protects
//! secrets at rest and in log entries on the servers. See
//! `docs/PROTOCOL.md` for the exact bytes.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::names::Recipients;
use crate::random_bytes;

/// HKDF info for the master key.
pub const MASTER_KEY_LABEL: &[u8] = b"vmail/v1/master-key";
/// HKDF info for the master key id.
pub const MASTER_KEY_ID_LABEL: &[u8] = b"vmail/v1/master-key-id";
/// HKDF info prefix for a voicemail session key.
pub const SESSION_KEY_LABEL: &[u8] = b"vmail/v1/session-key";
/// Version byte that opens every sealed blob.
pub const SEALED_VERSION: u8 = 1;
/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of a wrapped 32-byte key: version, nonce, key and tag.
pub const WRAPPED_KEY_LEN: usize = 1 + NONCE_LEN + 32 + TAG_LEN;

/// Why a sealed blob or wrapped key could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The blob is shorter than a header and tag, or its version is unknown.
    #[error("sealed data is malformed (version byte or length wrong)")]
    Malformed,
    /// The tag did not verify: wrong key, wrong context, or altered bytes.
    #[error("sealed data failed authentication: wrong key, or the data or its context was altered")]
    Authentication,
}

/// A 256-bit symmetric key. Zeroed on drop; `Debug` never prints it;
/// equality is checked in constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SecretKey {}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A fresh random key.
    pub fn random() -> Self {
        Self(random_bytes())
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a key from a slice, which must be exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// HKDF-SHA256 expansion of this key with no salt.
    fn derive(&self, info: &[u8]) -> SecretKey {
        hkdf_sha256(None, &self.0, info)
    }

    /// Encrypts `plaintext` with AES-256-GCM under a fresh random nonce.
    /// Output: version byte, nonce, ciphertext and tag.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random_bytes();
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.0));
        let ct = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`SecretKey::seal`] produced with the same key and AAD.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != SEALED_VERSION {
            return Err(OpenError::Malformed);
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().expect("length checked");
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.0));
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad,
                },
            )
            .map_err(|_| OpenError::Authentication)
    }

    /// Seals another 32-byte key.
    pub fn wrap(&self, key: &SecretKey, aad: &[u8]) -> Vec<u8> {
        self.seal(&key.0, aad)
    }

    /// Opens a key sealed by [`SecretKey::wrap`].
    pub fn unwrap_key(&self, wrapped: &[u8], aad: &[u8]) -> Result<SecretKey, OpenError> {
        if wrapped.len() != WRAPPED_KEY_LEN {
            return Err(OpenError::Malformed);
        }
        let mut plain = self.open(wrapped, aad)?;
        let key = SecretKey::from_slice(&plain).ok_or(OpenError::Malformed);
        plain.zeroize();
        key
    }
}

/// HKDF-SHA256 (extract, then expand) to one 32-byte key.
fn hkdf_sha256(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> SecretKey {
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    SecretKey(okm)
}

/// The 16-byte public name of a master key.
pub type MasterKeyId = [u8; 16];

/// The key a user shares with the auth servers for one login session.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MasterKey(SecretKey);

impl MasterKey {
    /// Derives the master key from an OPAQUE session key.
    pub fn from_opaque_session_key(opaque_session_key: &[u8]) -> Self {
        Self(hkdf_sha256(None, opaque_session_key, MASTER_KEY_LABEL))
    }

    /// Rebuilds a master key from its stored bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretKey(bytes))
    }

    /// The raw key, for the client's keystore and the server's sealed store.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The key's public name. Both sides compute it; equal ids mean equal keys.
    pub fn id(&self) -> MasterKeyId {
        self.0.derive(MASTER_KEY_ID_LABEL).0[..16]
            .try_into()
            .expect("16 of 32 bytes")
    }

    /// Derives a voicemail session key (paper §3.3 step 1).
    pub fn derive_session_key(
        &self,
        salt: &[u8; 32],
        timestamp: u64,
        recipients: &Recipients,
    ) -> SecretKey {
        let mut info = SESSION_KEY_LABEL.to_vec();
        info.extend_from_slice(&timestamp.to_be_bytes());
        info.extend_from_slice(&recipients.canonical_bytes());
        hkdf_sha256(Some(salt), self.as_bytes(), &info)
    }
}

/// The SHA-256 of a locator, as bound into the at-rest voicemail AAD and
/// the deposit digest.
pub fn locator_hash(locator: &[u8]) -> [u8; 32] {
    Sha256::digest(locator).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recips(names: &[&str]) -> Recipients {
        Recipients::parse(names).unwrap()
    }

    #[test]
    fn master_key_is_deterministic_and_separated() {
        let a = MasterKey::from_opaque_session_key(&[7u8; 64]);
        let b = MasterKey::from_opaque_session_key(&[7u8; 64]);
        let c = MasterKey::from_opaque_session_key(&[8u8; 64]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_ne!(a.as_bytes(), &[7u8; 32]);
    }

    #[test]
    fn session_key_binds_every_input() {
        let mk = MasterKey::from_opaque_session_key(&[1u8; 64]);
        let r = recips(&["alice", "carol"]);
        let base = mk.derive_session_key(&[2; 32], 100, &r);
        assert_eq!(
            base,
            mk.derive_session_key(&[2; 32], 100, &recips(&["carol", "alice"]))
        );
        assert_ne!(base, mk.derive_session_key(&[3; 32], 100, &r));
        assert_ne!(base, mk.derive_session_key(&[2; 32], 101, &r));
        assert_ne!(
            base,
            mk.derive_session_key(&[2; 32], 100, &recips(&["alice"]))
        );
        let other = MasterKey::from_opaque_session_key(&[9u8; 64]);
        assert_ne!(base, other.derive_session_key(&[2; 32], 100, &r));
    }
}
