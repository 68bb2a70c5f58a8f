//! What the auth group does with a member's key-generation step
//! (`ProposeDkg`, docs/THRESHOLD.md §1): the leader decodes the request and
//! its postcard `DkgStep`; every member decodes each round-1 package; each
//! recipient opens the round-2 package sealed to it (here, to the fixed
//! inbox key) and decodes it. Refusals only, never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use vmail_auth::service::{DKG_ROUND2_INFO, round2_aad};
use vmail_auth::store::{DkgStep, MAX_STEP_LEN};
use vmail_auth::threshold::{Wire, dkg_round1, dkg_round2};
use vmail_fuzz::inbox_key;
use vmail_proto::cluster_pb::ProposeDkgRequest;
use vmail_proto::share::{self, BoxSecret};

static INBOX: LazyLock<BoxSecret> = LazyLock::new(inbox_key);

fuzz_target!(|data: &[u8]| {
    let Ok(r) = ProposeDkgRequest::decode(data) else {
        return;
    };
    if r.step.len() > MAX_STEP_LEN {
        return;
    }
    let Ok(step) = postcard::from_bytes::<DkgStep>(&r.step) else {
        return;
    };
    match step {
        DkgStep::Round1 { package, .. } => {
            if let Ok(p) = dkg_round1::Package::from_wire(&package) {
                let again = p.to_wire().expect("a decoded package encodes");
                assert_eq!(dkg_round1::Package::from_wire(&again).ok(), Some(p));
            }
        }
        DkgStep::Round2 { ceremony, sealed } => {
            for s in sealed {
                let aad = round2_aad(ceremony, r.node_id, s.to, s.epoch);
                if let Ok(bytes) =
                    share::open_bytes(&INBOX, DKG_ROUND2_INFO, &s.enc, &s.ciphertext, &aad)
                {
                    let _ = dkg_round2::Package::from_wire(&bytes);
                }
            }
        }
        DkgStep::Done { .. } => {}
    }
});
