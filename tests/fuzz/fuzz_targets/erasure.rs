//! Erasure `decode` and `regenerate` on shards a holder or fetcher got from
//! other peers. Input: k, n, a mask of the shards at hand, a corruption
//! byte, then the ciphertext. With k or more good shards both give back
//! exactly what was encoded; with fewer, or a shard of the wrong size or
//! index, they refuse.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use vmail_node::core::erasure::{ErasureError, Redundancy, decode, encode, regenerate};

fuzz_target!(|data: &[u8]| {
    if data.len() < 7 {
        return;
    }
    let (k, n) = (data[0], data[1]);
    let mask = u32::from_le_bytes([data[2], data[3], data[4], data[5]]);
    let corrupt = data[6];
    let ciphertext = &data[7..];
    let r = if k == 0 {
        Redundancy::Replicas(n)
    } else {
        Redundancy::ReedSolomon { k, n }
    };
    let len = ciphertext.len() as u64;
    let Ok(shards) = encode(r, ciphertext) else {
        assert!(r.validate().is_err(), "a valid setting did not encode");
        assert!(decode(r, len, &BTreeMap::new()).is_err());
        return;
    };
    assert_eq!(shards.len(), r.n());
    assert!(shards.iter().all(|s| s.len() as u64 == r.shard_len(len)));
    let mut have: BTreeMap<usize, Vec<u8>> = shards
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(i, s)| (i, s.clone()))
        .collect();
    let wanted: Vec<usize> = (0..r.n()).filter(|i| !have.contains_key(i)).collect();
    match corrupt % 4 {
        // A shard cut short, or one index too many.
        // (Whole copies of an empty ciphertext are empty: none to cut.)
        1 if have.values().any(|s| !s.is_empty()) => {
            let i = *have
                .keys()
                .nth(usize::from(corrupt >> 2) % have.len())
                .expect("in range");
            have.get_mut(&i).expect("present").pop();
            assert!(matches!(
                decode(r, len, &have),
                Err(ErasureError::BadShard { .. })
            ));
            assert!(regenerate(r, len, &have, &wanted).is_err());
            return;
        }
        2 => {
            have.insert(r.n() + usize::from(corrupt >> 2), shards[0].clone());
            assert!(matches!(
                decode(r, len, &have),
                Err(ErasureError::BadShard { .. })
            ));
            return;
        }
        _ => {}
    }
    if have.len() >= r.k() {
        assert_eq!(
            decode(r, len, &have).as_deref(),
            Ok(ciphertext),
            "decode lost data"
        );
        let rebuilt = regenerate(r, len, &have, &wanted).expect("regenerates");
        for (i, s) in rebuilt {
            assert_eq!(s, shards[i], "regenerated shard {i} differs");
        }
    } else {
        assert!(matches!(
            decode(r, len, &have),
            Err(ErasureError::TooFewShards { .. })
        ));
        assert!(regenerate(r, len, &have, &wanted).is_err());
    }
});
