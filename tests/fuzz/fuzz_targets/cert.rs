//! `UserCertificate::from_bytes` then `verify` and `verify_group_signature`:
//! a certificate a peer shows. What parses re-encodes to the same
//! certificate; only the genuine one verifies under either key.
#![no_main]

use std::sync::LazyLock;

use ed25519_dalek::VerifyingKey;
use libfuzzer_sys::fuzz_target;
use vmail_fuzz::{NOW, certificate, cluster_key};
use vmail_proto::cert::UserCertificate;

static KEY: LazyLock<VerifyingKey> = LazyLock::new(|| cluster_key().verifying_key());
static GENUINE: LazyLock<UserCertificate> = LazyLock::new(certificate);

fuzz_target!(|data: &[u8]| {
    let Ok(c) = UserCertificate::from_bytes(data) else {
        return;
    };
    assert_eq!(UserCertificate::from_bytes(&c.to_bytes()).as_ref(), Ok(&c));
    // The group signature is not under the cluster signature: only the
    // rest of the certificate must be the genuine one.
    if c.verify(&KEY, NOW).is_ok() {
        let bare = UserCertificate {
            group_signature: None,
            ..c.clone()
        };
        assert_eq!(bare, *GENUINE, "a forged certificate verified");
    }
    // The cluster key stands in for the group key here.
    if c.verify_group_signature(&KEY).is_ok() {
        assert_eq!(
            c.signing_bytes(),
            GENUINE.signing_bytes(),
            "a forged group signature verified"
        );
    }
});
