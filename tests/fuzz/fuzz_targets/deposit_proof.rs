//! `DepositProof::from_bytes` then `verify`: what a holder gets from a sender or
//! a sibling. The one encoding is strict (what parses re-encodes to the
//! same bytes), and only genuine bytes verify under the cluster key.
#![no_main]

use std::sync::LazyLock;

use ed25519_dalek::VerifyingKey;
use libfuzzer_sys::fuzz_target;
use vmail_proto::grant::DepositProof;

static KEY: LazyLock<VerifyingKey> = LazyLock::new(|| vmail_fuzz::cluster_key().verifying_key());
static GENUINE: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let genuine: Vec<DepositProof> = vec![vmail_fuzz::deposit_proof()];
    genuine.iter().map(DepositProof::to_bytes).collect()
});

fuzz_target!(|data: &[u8]| {
    let Ok(v) = DepositProof::from_bytes(data) else {
        return;
    };
    assert_eq!(v.to_bytes(), data, "the encoding is not strict");
    if v.verify(&KEY).is_ok() {
        assert!(
            GENUINE.iter().any(|g| g == data),
            "a forged deposit_proof verified"
        );
    }
});
