//! The storage locator: where a voicemail's ciphertext lives and how to
//! recognise it. The sender deposits it with the auth servers next to the
//! wrapped session key; the wrap's AAD binds its SHA-256, so neither the
//! servers nor anyone on the path can alter it unnoticed.
//!
//! Encoding (docs/PROTOCOL.md): postcard of [`Locator`], whose first field is
//! the format version. Version 3 adds each shard's holder as a hint;
//! versions 1 (whole copies only) and 2 (no hints) are still read.

use serde::{Deserialize, Serialize};

use crate::core::erasure::{MAX_SHARDS, Redundancy};

/// Format version of an encoded locator.
pub const LOCATOR_VERSION: u8 = 3;

/// Longest holder hint: a peer id's bytes (an ed25519 one takes 38).
pub const MAX_HINT_LEN: usize = 64;

/// The longest ciphertext a layout may describe: the format's 2^32
/// segments of 64 KiB (256 TiB, `crypto`'s limit). Far beyond any real
/// voicemail, it keeps the shard arithmetic of a hostile layout from
/// overflowing: a layout of a longer ciphertext is refused as inconsistent.
pub const MAX_CIPHERTEXT_LEN: u64 = 1 << 48;

/// A 32-byte storage identifier. Kademlia hashes it (SHA-256) into the key
/// space, like a record key.
pub type ObjectId = [u8; 32];

/// One stored shard (or whole copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRef {
    /// Its storage identifier.
    pub id: ObjectId,
    /// SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

/// How one ciphertext was cut into shards and where they are: all a holder
/// needs to check and repair its siblings, and nothing about the content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Copies or Reed-Solomon k-of-n.
    pub redundancy: Redundancy,
    /// Ciphertext length in bytes.
    pub ciphertext_len: u64,
    /// Shard `i` of the coding, for `i` in `0..n`.
    pub shards: Vec<ShardRef>,
}

/// Where the shards of one ciphertext are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locator {
    /// [`LOCATOR_VERSION`].
    pub version: u8,
    /// The message id in the ciphertext's header.
    pub message_id: [u8; 16],
    /// SHA-256 of the whole ciphertext.
    pub ciphertext_sha256: [u8; 32],
    /// The shards.
    pub layout: Layout,
    /// Version 3: the peer id (its bytes) that acked shard `i` at leave
    /// time, one per shard, empty where unknown; empty for versions 1 and
    /// 2. A hint only: a fetch asks this holder first and falls back on
    /// the DHT, so a wrong or stale hint costs one failed request.
    pub holders: Vec<Vec<u8>>,
}

/// Version 2: no holder hints.
#[derive(Deserialize)]
struct LocatorV2 {
    version: u8,
    message_id: [u8; 16],
    ciphertext_sha256: [u8; 32],
    layout: Layout,
}

/// Version 1: whole copies, each with the ciphertext's hash.
#[derive(Deserialize)]
struct LocatorV1 {
    message_id: [u8; 16],
    ciphertext_len: u64,
    ciphertext_sha256: [u8; 32],
    copies: Vec<ObjectId>,
}

/// Why a locator or layout could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocatorError {
    /// Not a postcard-encoded locator.
    #[error("the voicemail's locator is malformed: {0}")]
    Malformed(String),
    /// A version this build does not know.
    #[error(
        "the voicemail's locator has version {0}; this vmail reads versions 1 to 3: upgrade vmail"
    )]
    Version(u8),
    /// Shard counts or sizes that do not fit the coding.
    #[error("the voicemail's locator is inconsistent: {0}")]
    Inconsistent(String),
}

/// The identifier a holder's copy of a layout shows for a sibling shard it
/// is not yet told of: during a leave's upload each holder learns only its
/// own shard's identifier ([`Layout::own_entry_only`]), and the full layout
/// after every upload is done (docs/PROTOCOL.md, "Shard layouts").
pub const UNDISCLOSED: ObjectId = [0; 32];

impl Layout {
    /// This layout as holder `index` is sent it while the upload runs: every
    /// other shard's identifier [`UNDISCLOSED`], lengths and hashes kept
    /// (the grant lists those anyway).
    pub fn own_entry_only(&self, index: usize) -> Layout {
        let mut own = self.clone();
        for (i, s) in own.shards.iter_mut().enumerate() {
            if i != index {
                s.id = UNDISCLOSED;
            }
        }
        own
    }

    /// Whether every shard's identifier is disclosed: the final layout, as
    /// repair needs it.
    pub fn is_complete(&self) -> bool {
        self.shards.iter().all(|s| s.id != UNDISCLOSED)
    }

    /// [`Layout::validate`] for a layout whose sibling identifiers may be
    /// [`UNDISCLOSED`]: those may repeat, the disclosed ones may not.
    pub fn validate_partial(&self) -> Result<(), LocatorError> {
        self.validate_shape()?;
        Self::distinct(
            self.shards
                .iter()
                .map(|s| &s.id)
                .filter(|id| **id != UNDISCLOSED),
        )
    }

    /// Checks the coding, the shard count and that no identifier repeats.
    pub fn validate(&self) -> Result<(), LocatorError> {
        self.validate_shape()?;
        Self::distinct(self.shards.iter().map(|s| &s.id))
    }

    /// Checks the coding, the shard count and the ciphertext length.
    fn validate_shape(&self) -> Result<(), LocatorError> {
        let bad = |why: String| Err(LocatorError::Inconsistent(why));
        if let Err(e) = self.redundancy.validate() {
            return bad(e.to_string());
        }
        if self.shards.len() != self.redundancy.n() {
            return bad(format!(
                "it names {} shards where {} needs {}",
                self.shards.len(),
                self.redundancy,
                self.redundancy.n()
            ));
        }
        if self.ciphertext_len == 0 {
            return bad("the ciphertext is empty".into());
        }
        if self.ciphertext_len > MAX_CIPHERTEXT_LEN {
            return bad(format!(
                "a ciphertext of {} bytes is longer than any can be ({MAX_CIPHERTEXT_LEN})",
                self.ciphertext_len
            ));
        }
        Ok(())
    }

    /// Fails when an identifier of `ids` repeats.
    fn distinct<'a>(ids: impl Iterator<Item = &'a ObjectId>) -> Result<(), LocatorError> {
        let mut ids: Vec<&ObjectId> = ids.collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        if ids.len() != n {
            return Err(LocatorError::Inconsistent(
                "a shard identifier repeats".into(),
            ));
        }
        Ok(())
    }

    /// Bytes of each shard.
    pub fn shard_len(&self) -> u64 {
        self.redundancy.shard_len(self.ciphertext_len)
    }
}

impl Locator {
    /// The bytes deposited with the auth servers.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a locator always encodes")
    }

    /// Reads and checks an encoded locator.
    pub fn decode(bytes: &[u8]) -> Result<Self, LocatorError> {
        let malformed = |e: postcard::Error| LocatorError::Malformed(e.to_string());
        let loc = match bytes.first() {
            Some(1) => {
                let v1: LocatorV1 = postcard::from_bytes(&bytes[1..]).map_err(malformed)?;
                if v1.copies.is_empty() || v1.copies.len() > MAX_SHARDS {
                    return Err(LocatorError::Inconsistent(format!(
                        "{} copies; 1 to {MAX_SHARDS} are allowed",
                        v1.copies.len()
                    )));
                }
                // Read into the current form, which is also how it
                // re-encodes: a `version` of 1 would write version 2's body
                // behind version 1's tag.
                Locator {
                    version: LOCATOR_VERSION,
                    message_id: v1.message_id,
                    ciphertext_sha256: v1.ciphertext_sha256,
                    layout: Layout {
                        redundancy: Redundancy::Replicas(v1.copies.len() as u8),
                        ciphertext_len: v1.ciphertext_len,
                        shards: v1
                            .copies
                            .into_iter()
                            .map(|id| ShardRef {
                                id,
                                sha256: v1.ciphertext_sha256,
                            })
                            .collect(),
                    },
                    holders: Vec::new(),
                }
            }
            Some(2) => {
                let v2: LocatorV2 = postcard::from_bytes(bytes).map_err(malformed)?;
                Locator {
                    version: v2.version,
                    message_id: v2.message_id,
                    ciphertext_sha256: v2.ciphertext_sha256,
                    layout: v2.layout,
                    holders: Vec::new(),
                }
            }
            Some(3) => postcard::from_bytes(bytes).map_err(malformed)?,
            Some(&v) => return Err(LocatorError::Version(v)),
            None => return Err(LocatorError::Malformed("empty".into())),
        };
        loc.layout.validate()?;
        if !loc.holders.is_empty() && loc.holders.len() != loc.layout.shards.len() {
            return Err(LocatorError::Inconsistent(format!(
                "{} holder hints for {} shards",
                loc.holders.len(),
                loc.layout.shards.len()
            )));
        }
        if loc.holders.iter().any(|h| h.len() > MAX_HINT_LEN) {
            return Err(LocatorError::Inconsistent(format!(
                "a holder hint is longer than {MAX_HINT_LEN} bytes"
            )));
        }
        if matches!(loc.layout.redundancy, Redundancy::Replicas(_))
            && loc
                .layout
                .shards
                .iter()
                .any(|s| s.sha256 != loc.ciphertext_sha256)
        {
            return Err(LocatorError::Inconsistent(
                "a whole copy's hash differs from the ciphertext's".into(),
            ));
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
            ciphertext_sha256: [9; 32],
            layout: Layout {
                redundancy: Redundancy::ReedSolomon { k: 2, n: 3 },
                ciphertext_len: 1234,
                shards: (1..=3)
                    .map(|i| ShardRef {
                        id: [i; 32],
                        sha256: [i + 10; 32],
                    })
                    .collect(),
            },
            holders: (1..=3).map(|i| vec![i; 38]).collect(),
        }
    }

    #[test]
    fn round_trip() {
        let l = sample();
        assert_eq!(Locator::decode(&l.encode()).unwrap(), l);
    }

    #[test]
    fn version_1_reads_as_whole_copies() {
        let mut bytes = vec![1u8];
        bytes.extend(
            postcard::to_stdvec(&([7u8; 16], 1234u64, [9u8; 32], vec![[1u8; 32], [2; 32]]))
                .unwrap(),
        );
        let l = Locator::decode(&bytes).unwrap();
        assert_eq!(l.layout.redundancy, Redundancy::Replicas(2));
        assert_eq!(
            l.layout.shards[1],
            ShardRef {
                id: [2; 32],
                sha256: [9; 32]
            }
        );
        assert_eq!(l.layout.shard_len(), 1234);
        // Found by the `locator` fuzz target: it re-encoded as version 1's
        // tag with version 2's body, which read back as other shards.
        assert_eq!(Locator::decode(&l.encode()).unwrap(), l);
    }

    #[test]
    fn version_2_reads_without_hints() {
        let l = sample();
        let bytes =
            postcard::to_stdvec(&(2u8, l.message_id, l.ciphertext_sha256, l.layout.clone()))
                .unwrap();
        let v2 = Locator::decode(&bytes).unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(v2.layout, l.layout);
        assert!(v2.holders.is_empty());
    }

    #[test]
    fn refuses_bad_hints() {
        let mut l = sample();
        l.holders.pop();
        assert!(
            matches!(Locator::decode(&l.encode()), Err(LocatorError::Inconsistent(m)) if m.contains("2 holder hints for 3 shards"))
        );
        let mut l = sample();
        l.holders[0] = vec![0; MAX_HINT_LEN + 1];
        assert!(
            matches!(Locator::decode(&l.encode()), Err(LocatorError::Inconsistent(m)) if m.contains("hint is longer"))
        );
        let mut l = sample();
        l.holders.clear();
        assert!(Locator::decode(&l.encode()).unwrap().holders.is_empty());
    }

    #[test]
    fn refuses_bad_input() {
        let mut l = sample();
        l.version = 4;
        assert_eq!(Locator::decode(&l.encode()), Err(LocatorError::Version(4)));
        let mut l = sample();
        l.layout.shards.pop();
        assert!(
            matches!(Locator::decode(&l.encode()), Err(LocatorError::Inconsistent(m)) if m.contains("names 2 shards"))
        );
        let mut l = sample();
        l.layout.redundancy = Redundancy::ReedSolomon { k: 4, n: 3 };
        assert!(
            matches!(Locator::decode(&l.encode()), Err(LocatorError::Inconsistent(m)) if m.contains("1 <= K < N"))
        );
        let mut l = sample();
        l.layout.shards[2].id = l.layout.shards[0].id;
        assert!(matches!(
            Locator::decode(&l.encode()),
            Err(LocatorError::Inconsistent(_))
        ));
        let mut l = sample();
        l.layout.redundancy = Redundancy::Replicas(3);
        assert!(
            matches!(Locator::decode(&l.encode()), Err(LocatorError::Inconsistent(m)) if m.contains("whole copy"))
        );
        let bytes = sample().encode();
        assert!(matches!(
            Locator::decode(&bytes[..bytes.len() - 1]),
            Err(LocatorError::Malformed(_))
        ));
    }

    /// What the `locator` fuzz target checks (it calls `shard_len` on every
    /// layout that validates): RS(1,3) over a ciphertext of 2^64 - 1 bytes
    /// used to validate, and its shard length overflowed.
    #[test]
    fn refuses_a_ciphertext_longer_than_the_format_allows() {
        let mut l = sample();
        l.layout.redundancy = Redundancy::ReedSolomon { k: 1, n: 3 };
        l.layout.ciphertext_len = u64::MAX;
        assert!(
            matches!(Locator::decode(&l.encode()), Err(LocatorError::Inconsistent(m)) if m.contains("longer than any"))
        );
        l.layout.ciphertext_len = MAX_CIPHERTEXT_LEN;
        let l = Locator::decode(&l.encode()).unwrap();
        assert_eq!(l.layout.shard_len(), MAX_CIPHERTEXT_LEN);
    }
}
