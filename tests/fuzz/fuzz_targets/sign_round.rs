//! What a signer decodes from another member in a signing round
//! (docs/PROTOCOL.md §16.10): the first byte picks round 1
//! (`SignCommitRequest` and its postcard `SignTarget`) or round 2
//! (`SignShareRequest`, its frost `SigningPackage` and, for a prepared
//! round, its `SignTarget`). Refusals only, never a panic; what decodes
//! encodes back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use vmail_auth::service::SignTarget;
use vmail_auth::threshold::{SigningPackage, Wire};
use vmail_proto::cluster_pb::{SignCommitRequest, SignShareRequest};

fuzz_target!(|data: &[u8]| {
    let Some((&round, rest)) = data.split_first() else {
        return;
    };
    if round % 2 == 0 {
        let Ok(r) = SignCommitRequest::decode(rest) else {
            return;
        };
        if let Ok(target) = SignTarget::from_bytes(&r.target) {
            assert_eq!(SignTarget::from_bytes(&target.to_bytes()).ok(), Some(target));
        }
    } else {
        let Ok(r) = SignShareRequest::decode(rest) else {
            return;
        };
        if let Ok(p) = SigningPackage::from_wire(&r.signing_package) {
            let again = p.to_wire().expect("a decoded package encodes");
            assert_eq!(SigningPackage::from_wire(&again).ok(), Some(p));
        }
        if let Ok(target) = SignTarget::from_bytes(&r.target) {
            assert_eq!(SignTarget::from_bytes(&target.to_bytes()).ok(), Some(target));
        }
    }
});
