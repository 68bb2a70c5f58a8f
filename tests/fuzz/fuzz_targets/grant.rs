//! `StorageGrant::from_bytes` then `verify_pinned`: what a holder gets from a sender
//! or a sibling. The one encoding is strict (what parses re-encodes to the
//! same bytes); only genuine bytes verify under the cluster key, and only
//! genuine co-signed bytes also under the group key.
#![no_main]

use std::sync::LazyLock;

use ed25519_dalek::VerifyingKey;
use libfuzzer_sys::fuzz_target;
use vmail_proto::grant::StorageGrant;

static KEY: LazyLock<VerifyingKey> = LazyLock::new(|| vmail_fuzz::cluster_key().verifying_key());
static GROUP: LazyLock<VerifyingKey> = LazyLock::new(|| vmail_fuzz::group_key().verifying_key());
static GENUINE: LazyLock<Vec<StorageGrant>> = LazyLock::new(|| vec![vmail_fuzz::grant()]);

fuzz_target!(|data: &[u8]| {
    let Ok(v) = StorageGrant::from_bytes(data) else {
        return;
    };
    assert_eq!(v.to_bytes(), data, "the encoding is not strict");
    let bare = StorageGrant {
        group_signature: None,
        ..v.clone()
    }
    .to_bytes();
    if v.verify(&KEY).is_ok() {
        assert!(
            GENUINE.iter().any(|g| g.to_bytes() == bare),
            "a forged grant verified"
        );
    }
    if v.verify_pinned(&KEY, Some(&GROUP)).is_ok() {
        assert!(
            GENUINE
                .iter()
                .any(|g| vmail_fuzz::genuinely_co_signed(&g.to_bytes(), &g.signing_bytes(), data)),
            "a forged group signature on a grant verified"
        );
    }
});
