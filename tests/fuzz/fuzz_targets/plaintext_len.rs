//! `crypto::plaintext_len`, which a fetcher applies to a length a holder
//! announced: it is the exact inverse of `ciphertext_len` on every length
//! the format allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmail_node::core::crypto::{ciphertext_len, plaintext_len};

fuzz_target!(|data: &[u8]| {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    let x = u64::from_le_bytes(b);
    if let Some(p) = plaintext_len(x) {
        assert_eq!(
            ciphertext_len(p),
            x,
            "plaintext_len({x}) = {p} is not an inverse"
        );
    }
    // The format has at most 2^32 segments of 64 KiB: plaintexts under 2^48
    // bytes. `ciphertext_len` is defined beyond, `plaintext_len` is not.
    let c = ciphertext_len(x);
    if x < 1 << 48 {
        assert_eq!(
            plaintext_len(c),
            Some(x),
            "ciphertext_len({x}) = {c} does not invert"
        );
    }
});
