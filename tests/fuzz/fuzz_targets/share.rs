//! What a client does with the shares auth servers send back
//! (`vmail_proto::share`). Mode 0 decodes an `OpenShareResponse` and opens it
//! with the fixed inbox key: only the genuine reseal opens, to the genuine
//! value. Mode 1 recombines arbitrary share values (33-byte chunks: index,
//! value) under a threshold and a key check from the input, for the locator
//! that follows them: a key comes out only when it matches the check, and
//! never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use vmail_fuzz::{SHARE_VALUE, inbox_key, reseal_binding};
use vmail_proto::pb::OpenShareResponse;
use vmail_proto::share::{self, BoxSecret, ResealedShare, ShareValue};

static INBOX: LazyLock<BoxSecret> = LazyLock::new(inbox_key);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let Ok(r) = OpenShareResponse::decode(rest) else {
            return;
        };
        let (Ok(enc), Ok(index)) = (<[u8; 32]>::try_from(r.enc.as_slice()), u8::try_from(r.index))
        else {
            return;
        };
        let resealed = ResealedShare {
            enc,
            ciphertext: r.ciphertext,
        };
        reseal_binding(r.node_id, index, |binding| {
            if let Ok(v) = share::open_resealed(&INBOX, &resealed, binding) {
                assert_eq!(v, ShareValue::new(index, SHARE_VALUE), "a forged reseal opened");
            }
        });
        return;
    }
    let Some((&t, rest)) = rest.split_first() else {
        return;
    };
    if rest.len() < 32 {
        return;
    }
    let (check, rest) = rest.split_at(32);
    let check: [u8; 32] = check.try_into().expect("32 bytes");
    let n = (rest.len() / 33).min(share::MAX_SHARES);
    let (chunks, locator) = rest.split_at(n * 33);
    let values: Vec<ShareValue> = chunks
        .chunks_exact(33)
        .map(|c| ShareValue::new(c[0], c[1..].try_into().expect("32 bytes")))
        .collect();
    if let Ok(key) = share::combine(&values, t % 9, &check, locator) {
        assert_eq!(
            share::key_check(&key, locator),
            check,
            "a key that fails its check came out"
        );
    }
});
