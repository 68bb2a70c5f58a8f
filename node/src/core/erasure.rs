//! Redundancy over ciphertext: whole copies, or Reed-Solomon k-of-n shards
//! (reed-solomon-simd). Pure: bytes in, bytes out.
//!
//! Reed-Solomon here is systematic. The ciphertext is zero-padded to
//! `k × shard_len` and cut into k original shards (indexes `0..k`); the
//! `n − k` recovery shards follow (indexes `k..n`). Any k distinct shards
//! give the ciphertext back. `shard_len` is `ceil(len / k)` rounded up to an
//! even number, which the library needs. The coding never sees a key, so a
//! holder can regenerate lost shards without being able to read them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most shards (or copies) one voicemail may have.
pub const MAX_SHARDS: usize = 32;

/// How a voicemail's ciphertext is made redundant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Redundancy {
    /// This many whole copies.
    Replicas(u8),
    /// Reed-Solomon: `n` shards, any `k` of which rebuild the ciphertext.
    ReedSolomon {
        /// Shards needed.
        k: u8,
        /// Shards stored.
        n: u8,
    },
}

/// Why a redundancy setting or a set of shards is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErasureError {
    /// A redundancy setting outside what is allowed.
    #[error("{0}")]
    BadSetting(String),
    /// Fewer than k distinct usable shards.
    #[error("only {got} of the {k} shards needed are at hand")]
    TooFewShards {
        /// Shards needed.
        k: usize,
        /// Distinct shards given.
        got: usize,
    },
    /// A shard of the wrong size or index.
    #[error("shard {index} is malformed: {why}")]
    BadShard {
        /// Its index.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// The decoder refused the shards.
    #[error("the shards do not decode: {0}")]
    Decode(String),
}

impl Redundancy {
    /// The default: RS(4, 8), chosen by the churn study (docs/PLACEMENT.md).
    pub const DEFAULT: Redundancy = Redundancy::ReedSolomon { k: 4, n: 8 };

    /// Shards needed to rebuild.
    pub fn k(self) -> usize {
        match self {
            Redundancy::Replicas(_) => 1,
            Redundancy::ReedSolomon { k, .. } => k.into(),
        }
    }

    /// Shards stored.
    pub fn n(self) -> usize {
        match self {
            Redundancy::Replicas(r) => r.into(),
            Redundancy::ReedSolomon { n, .. } => n.into(),
        }
    }

    /// Checks the counts: 1 to [`MAX_SHARDS`] copies, or `1 ≤ k < n ≤ MAX_SHARDS`.
    pub fn validate(self) -> Result<Self, ErasureError> {
        let bad = |why: String| Err(ErasureError::BadSetting(why));
        match self {
            Redundancy::Replicas(r) if r == 0 || usize::from(r) > MAX_SHARDS => bad(format!(
                "{r} replicas is out of range: use 1 to {MAX_SHARDS}"
            )),
            Redundancy::ReedSolomon { k, n } if k == 0 || k >= n || usize::from(n) > MAX_SHARDS => {
                bad(format!(
                    "erasure coding {k}/{n} is out of range: use K/N with 1 <= K < N <= {MAX_SHARDS}"
                ))
            }
            ok => Ok(ok),
        }
    }

    /// Bytes stored per ciphertext byte (ignoring padding).
    pub fn overhead(self) -> f64 {
        self.n() as f64 / self.k() as f64
    }

    /// Bytes of each shard for a ciphertext of `len` bytes.
    pub fn shard_len(self, len: u64) -> u64 {
        match self {
            Redundancy::Replicas(_) => len,
            Redundancy::ReedSolomon { k, .. } => {
                let per = len.div_ceil(k.into()).max(1);
                per + per % 2
            }
        }
    }

    /// Whether a voicemail whose shards `alive` (by index) are still held
    /// can be rebuilt.
    pub fn recoverable(self, alive: impl IntoIterator<Item = usize>) -> bool {
        let mut seen = [false; MAX_SHARDS];
        let distinct = alive
            .into_iter()
            .filter(|&i| i < self.n().min(MAX_SHARDS) && !std::mem::replace(&mut seen[i], true))
            .count();
        distinct >= self.k()
    }
}

impl fmt::Display for Redundancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redundancy::Replicas(r) => write!(f, "{r} replicas"),
            Redundancy::ReedSolomon { k, n } => write!(f, "RS({k},{n})"),
        }
    }
}

impl FromStr for Redundancy {
    type Err = ErasureError;

    /// `K/N` for erasure coding, `Rx` for R whole copies.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            ErasureError::BadSetting(format!(
                "{s:?} is neither K/N (erasure coding, e.g. 4/8) nor Rx (copies, e.g. 3x)"
            ))
        };
        if let Some(r) = s.trim().strip_suffix('x') {
            return Redundancy::Replicas(r.parse().map_err(|_| bad())?).validate();
        }
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k = k.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        Redundancy::ReedSolomon { k, n }.validate()
    }
}

/// The `n` shards of `data`, each [`Redundancy::shard_len`] bytes.
pub fn encode(r: Redundancy, data: &[u8]) -> Result<Vec<Vec<u8>>, ErasureError> {
    let r = r.validate()?;
    let Redundancy::ReedSolomon { k, n } = r else {
        return Ok(vec![data.to_vec(); r.n()]);
    };
    let len = r.shard_len(data.len() as u64) as usize;
    let mut shards: Vec<Vec<u8>> = (0..usize::from(k))
        .map(|i| {
            let start = (i * len).min(data.len());
            let mut s = data[start..(start + len).min(data.len())].to_vec();
            s.resize(len, 0);
            s
        })
        .collect();
    let recovery = reed_solomon_simd::encode(k.into(), usize::from(n - k), &shards)
        .map_err(|e| ErasureError::Decode(e.to_string()))?;
    shards.extend(recovery);
    Ok(shards)
}

/// The ciphertext of `len` bytes from at least k shards given by index.
pub fn decode(
    r: Redundancy,
    len: u64,
    shards: &BTreeMap<usize, Vec<u8>>,
) -> Result<Vec<u8>, ErasureError> {
    let originals = restore_originals(r, len, shards)?;
    let mut out = originals.concat();
    out.truncate(len as usize);
    Ok(out)
}

/// Rebuilds the shards `wanted` (by index) from at least k others: what a
/// holder does to repair a voicemail it cannot read.
pub fn regenerate(
    r: Redundancy,
    len: u64,
    shards: &BTreeMap<usize, Vec<u8>>,
    wanted: &[usize],
) -> Result<BTreeMap<usize, Vec<u8>>, ErasureError> {
    let originals = restore_originals(r, len, shards)?;
    let all = match r {
        Redundancy::Replicas(_) => vec![originals[0].clone(); r.n()],
        Redundancy::ReedSolomon { k, n } => {
            let mut all = originals.clone();
            all.extend(
                reed_solomon_simd::encode(k.into(), usize::from(n - k), &originals)
                    .map_err(|e| ErasureError::Decode(e.to_string()))?,
            );
            all
        }
    };
    wanted
        .iter()
        .map(|&i| {
            all.get(i)
                .map(|s| (i, s.clone()))
                .ok_or_else(|| ErasureError::BadShard {
                    index: i,
                    why: format!("there are only {} shards", r.n()),
                })
        })
        .collect()
}

/// The k original shards (for replicas, the one copy).
fn restore_originals(
    r: Redundancy,
    len: u64,
    shards: &BTreeMap<usize, Vec<u8>>,
) -> Result<Vec<Vec<u8>>, ErasureError> {
    let r = r.validate()?;
    let shard_len = r.shard_len(len) as usize;
    for (&index, s) in shards {
        if index >= r.n() {
            return Err(ErasureError::BadShard {
                index,
                why: format!("there are only {} shards", r.n()),
            });
        }
        if s.len() != shard_len {
            return Err(ErasureError::BadShard {
                index,
                why: format!("{} bytes where {shard_len} were expected", s.len()),
            });
        }
    }
    if shards.len() < r.k() {
        return Err(ErasureError::TooFewShards {
            k: r.k(),
            got: shards.len(),
        });
    }
    let Redundancy::ReedSolomon { k, n } = r else {
        let first = shards.values().next().expect("at least one shard");
        return Ok(vec![first.clone()]);
    };
    let k = usize::from(k);
    let original = shards.range(..k).map(|(&i, s)| (i, s));
    let recovery = shards.range(k..).map(|(&i, s)| (i - k, s));
    let mut restored = reed_solomon_simd::decode(k, usize::from(n) - k, original, recovery)
        .map_err(|e| ErasureError::Decode(e.to_string()))?;
    (0..k)
        .map(|i| {
            shards
                .get(&i)
                .cloned()
                .or_else(|| restored.remove(&i))
                .ok_or(ErasureError::TooFewShards {
                    k,
                    got: shards.len(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn subset(shards: &[Vec<u8>], pick: &[usize]) -> BTreeMap<usize, Vec<u8>> {
        pick.iter().map(|&i| (i, shards[i].clone())).collect()
    }

    #[test]
    fn settings_are_checked() {
        assert!(Redundancy::ReedSolomon { k: 5, n: 4 }.validate().is_err());
        assert!(Redundancy::ReedSolomon { k: 4, n: 4 }.validate().is_err());
        assert!(Redundancy::ReedSolomon { k: 0, n: 4 }.validate().is_err());
        assert!(Redundancy::ReedSolomon { k: 4, n: 33 }.validate().is_err());
        assert!(Redundancy::Replicas(0).validate().is_err());
        assert_eq!("4/8".parse(), Ok(Redundancy::ReedSolomon { k: 4, n: 8 }));
        assert_eq!("3x".parse(), Ok(Redundancy::Replicas(3)));
        assert!("0x".parse::<Redundancy>().is_err());
        let e = "8/4".parse::<Redundancy>().unwrap_err().to_string();
        assert!(e.contains("1 <= K < N"), "{e}");
        assert!("four".parse::<Redundancy>().is_err());
        assert!(encode(Redundancy::ReedSolomon { k: 3, n: 2 }, b"x").is_err());
    }

    #[test]
    fn too_few_wrong_size_and_out_of_range_shards_are_refused() {
        let r = Redundancy::ReedSolomon { k: 3, n: 5 };
        let data = vec![7u8; 1000];
        let shards = encode(r, &data).unwrap();
        assert_eq!(
            decode(r, 1000, &subset(&shards, &[0, 4])),
            Err(ErasureError::TooFewShards { k: 3, got: 2 })
        );
        let mut short = subset(&shards, &[0, 1, 4]);
        short.get_mut(&4).unwrap().pop();
        assert!(matches!(
            decode(r, 1000, &short),
            Err(ErasureError::BadShard { index: 4, .. })
        ));
        let mut far = subset(&shards, &[0, 1]);
        far.insert(9, shards[2].clone());
        assert!(matches!(
            decode(r, 1000, &far),
            Err(ErasureError::BadShard { index: 9, .. })
        ));
    }

    #[test]
    fn recoverable_counts_distinct_shards_in_range() {
        let r = Redundancy::ReedSolomon { k: 4, n: 8 };
        assert!(r.recoverable([0, 3, 5, 7]));
        assert!(!r.recoverable([0, 0, 0, 7]));
        assert!(!r.recoverable([0, 1, 2, 8]));
        assert!(Redundancy::Replicas(3).recoverable([2]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn any_k_of_n_shards_rebuild_the_ciphertext(
            data in proptest::collection::vec(any::<u8>(), 1..5000),
            k in 1u8..6,
            extra in 1u8..6,
            seed in any::<u64>(),
        ) {
            use rand::{SeedableRng, seq::SliceRandom};
            let r = Redundancy::ReedSolomon { k, n: k + extra };
            let shards = encode(r, &data).unwrap();
            prop_assert_eq!(shards.len(), r.n());
            let mut idx: Vec<usize> = (0..r.n()).collect();
            idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            let pick = &idx[..usize::from(k)];
            prop_assert_eq!(&decode(r, data.len() as u64, &subset(&shards, pick)).unwrap(), &data);
            // Whatever is missing regenerates bit for bit.
            let missing: Vec<usize> = idx[usize::from(k)..].to_vec();
            let again = regenerate(r, data.len() as u64, &subset(&shards, pick), &missing).unwrap();
            for (i, s) in again {
                prop_assert_eq!(&s, &shards[i]);
            }
        }
    }

    #[test]
    fn replicas_are_whole_copies() {
        let r = Redundancy::Replicas(3);
        let shards = encode(r, b"hello").unwrap();
        assert_eq!(shards, vec![b"hello".to_vec(); 3]);
        assert_eq!(decode(r, 5, &subset(&shards, &[2])).unwrap(), b"hello");
        let again = regenerate(r, 5, &subset(&shards, &[1]), &[0]).unwrap();
        assert_eq!(again[&0], b"hello");
    }
}
