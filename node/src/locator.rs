//! The storage locator: where a voicemail's ciphertext lives and how to
//! recognise it. The sender deposits it with the auth servers next to the
//! wrapped session key; the wrap's AAD binds its SHA-256, so neither the
//! servers nor anyone on the path can alter it unnoticed.
//!
//! Encoding (docs/PROTOCOL.md): postcard of [`Locator`], whose first field is
//! the format version.

use serde::{Deserialize, Serialize};

/// Format version of an encoded locator.
pub const LOCATOR_VERSION: u8 = 1;
/// Most copies one locator may name.
pub const MAX_COPIES: usize = 32;

/// A 32-byte storage identifier. Kademlia hashes it (SHA-256) into the key
/// space, like a record key.
pub type ObjectId = [u8; 32];

/// Where the copies of one ciphertext are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locator {
    /// [`LOCATOR_VERSION`].
    pub version: u8,
    /// The message id in the ciphertext's header.
    pub message_id: [u8; 16],
    /// Ciphertext length in bytes; every copy is the same ciphertext.
    pub ciphertext_len: u64,
    /// SHA-256 of the ciphertext.
    pub ciphertext_sha256: [u8; 32],
    /// The storage identifier of each copy, one per holder.
    pub copies: Vec<ObjectId>,
}

/// Why a locator could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocatorError {
    /// Not a postcard-encoded locator.
    #[error("the voicemail's locator is malformed: {0}")]
    Malformed(String),
    /// A version this build does not know.
    #[error("the voicemail's locator has version {0}; this vmail reads version 1: upgrade vmail")]
    Version(u8),
    /// No copy, or more than [`MAX_COPIES`].
    #[error("the voicemail's locator names {0} copies; 1 to 32 are allowed")]
    Copies(usize),
}

impl Locator {
    /// The bytes deposited with the auth servers.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a locator always encodes")
    }

    /// Reads and checks an encoded locator.
    pub fn decode(bytes: &[u8]) -> Result<Self, LocatorError> {
        let loc: Locator =
            postcard::from_bytes(bytes).map_err(|e| LocatorError::Malformed(e.to_string()))?;
        if loc.version != LOCATOR_VERSION {
            return Err(LocatorError::Version(loc.version));
        }
        if loc.copies.is_empty() || loc.copies.len() > MAX_COPIES {
            return Err(LocatorError::Copies(loc.copies.len()));
        }
        Ok(loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Locator {
        Locator {
            version: LOCATOR_VERSION,
            message_id: [7; 16],
            ciphertext_len: 1234,
            ciphertext_sha256: [9; 32],
            copies: vec![[1; 32], [2; 32], [3; 32]],
        }
    }

    #[test]
    fn round_trip() {
        let l = sample();
        assert_eq!(Locator::decode(&l.encode()).unwrap(), l);
    }

    #[test]
    fn refuses_bad_input() {
        let mut l = sample();
        l.version = 2;
        assert_eq!(Locator::decode(&l.encode()), Err(LocatorError::Version(2)));
        l.version = LOCATOR_VERSION;
        l.copies.clear();
        assert_eq!(Locator::decode(&l.encode()), Err(LocatorError::Copies(0)));
        let bytes = sample().encode();
        assert!(matches!(
            Locator::decode(&bytes[..bytes.len() - 1]),
            Err(LocatorError::Malformed(_))
        ));
    }
}
