//! `SecretKey::open` and `unwrap_key`: sealed secrets in log entries and at
//! rest. Mode 0 reads raw bytes (an AAD length,
//! the AAD, the sealed bytes): only genuine seals open. Mode 1 seals the
//! input and checks that it opens, and that a flipped bit anywhere in the
//! sealed bytes or the AAD does not.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use vmail_fuzz::{SEALED_PLAINTEXT, secret_key, wrapped_key};
use vmail_proto::keys::SecretKey;

static KEY: LazyLock<SecretKey> = LazyLock::new(secret_key);
static WRAPPED: LazyLock<SecretKey> = LazyLock::new(wrapped_key);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let Some((&n, rest)) = rest.split_first() else {
            return;
        };
        let (aad, sealed) = rest.split_at(usize::from(n).min(rest.len()));
        if let Ok(p) = KEY.open(sealed, aad) {
            assert!(
                p == SEALED_PLAINTEXT || p == WRAPPED.as_bytes(),
                "a forged seal opened"
            );
        }
        if let Ok(k) = KEY.unwrap_key(sealed, aad) {
            assert_eq!(k, *WRAPPED, "a forged wrap opened");
        }
        return;
    }
    if rest.len() < 3 {
        return;
    }
    let (ctl, plaintext) = rest.split_at(3);
    let aad = &plaintext[..plaintext.len().min(usize::from(ctl[2] % 32))];
    let sealed = KEY.seal(plaintext, aad);
    assert_eq!(KEY.open(&sealed, aad).as_deref(), Ok(plaintext));
    let at = usize::from(u16::from_le_bytes([ctl[0], ctl[1]]));
    let bit = 1 << (ctl[2] >> 5);
    let mut flipped = sealed.clone();
    flipped[at % sealed.len()] ^= bit;
    assert!(
        KEY.open(&flipped, aad).is_err(),
        "a flipped bit went unnoticed"
    );
    if !aad.is_empty() {
        let mut other = aad.to_vec();
        other[at % aad.len()] ^= bit;
        assert!(
            KEY.open(&sealed, &other).is_err(),
            "a changed AAD went unnoticed"
        );
    }
    let wrapped = KEY.wrap(&WRAPPED, aad);
    assert_eq!(KEY.unwrap_key(&wrapped, aad).as_ref(), Ok(&*WRAPPED));
    let mut flipped = wrapped.clone();
    flipped[at % wrapped.len()] ^= bit;
    assert!(
        KEY.unwrap_key(&flipped, aad).is_err(),
        "a flipped wrap opened"
    );
});
