//! `crypto::decrypt` on both backends (ring and RustCrypto), differentially:
//! on any bytes they agree exactly, and only genuine ciphertexts open. In
//! the second mode the input is a plaintext: it is encrypted (spread over
//! several segments when asked), must decrypt on both, and every one-bit
//! change or truncation of it must fail on both.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use vmail_fuzz::{MESSAGE_ID, plaintexts, secret_key};
use vmail_node::core::crypto::{
    Backend, DecryptError, HEADER_LEN, SEGMENT_LEN, decrypt_with, encrypt_with,
};
use vmail_proto::keys::SecretKey;

static KEY: LazyLock<SecretKey> = LazyLock::new(secret_key);
static GENUINE: LazyLock<Vec<Vec<u8>>> = LazyLock::new(plaintexts);

fn both(key: &SecretKey, id: &[u8; 16], ct: &[u8]) -> Result<Vec<u8>, DecryptError> {
    let ring = decrypt_with(Backend::Ring, key, id, ct, &mut |_| {});
    let rust = decrypt_with(Backend::RustCrypto, key, id, ct, &mut |_| {});
    assert_eq!(ring, rust, "the backends disagree");
    ring
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // Raw bytes, read with the header's own message id when it has one.
        let id: [u8; 16] = rest
            .get(5..21)
            .map_or(MESSAGE_ID, |b| b.try_into().expect("16 bytes"));
        if let Ok(p) = both(&KEY, &id, rest) {
            assert!(GENUINE.contains(&p), "a forged ciphertext opened");
        }
        return;
    }
    // Encrypt, then tamper. The plaintext is `rest` repeated to a length
    // that may span several segments.
    if rest.len() < 12 {
        return;
    }
    let (ctl, body) = rest.split_at(12);
    let len = usize::from(u16::from_le_bytes([ctl[0], ctl[1]])) * 4 % (3 * SEGMENT_LEN);
    let plaintext: Vec<u8> = body.iter().copied().cycle().take(len).collect();
    let backend = if ctl[2] & 1 == 0 {
        Backend::Ring
    } else {
        Backend::RustCrypto
    };
    let prefix: [u8; 7] = ctl[3..10].try_into().expect("7 bytes");
    let ct = encrypt_with(backend, &KEY, MESSAGE_ID, prefix, &plaintext, &mut |_| {});
    assert_eq!(both(&KEY, &MESSAGE_ID, &ct).as_deref(), Ok(&plaintext[..]));
    let at = usize::from(u16::from_le_bytes([ctl[10], ctl[11]])) * 7 % ct.len();
    let mut flipped = ct.clone();
    flipped[at] ^= 1 << (ctl[2] >> 5);
    assert!(
        both(&KEY, &MESSAGE_ID, &flipped).is_err(),
        "a flipped bit at {at} went unnoticed"
    );
    assert!(
        both(&KEY, &MESSAGE_ID, &ct[..at.max(HEADER_LEN)]).is_err(),
        "a truncation went unnoticed"
    );
    let mut longer = ct.clone();
    longer.push(ctl[0]);
    assert!(
        both(&KEY, &MESSAGE_ID, &longer).is_err(),
        "an appended byte went unnoticed"
    );
});
