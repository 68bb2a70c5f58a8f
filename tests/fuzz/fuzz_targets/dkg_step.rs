//! What the auth group does with a member's key-generation step
//! (`ProposeDkg`, docs/THRESHOLD.md §1 and §4): the leader decodes the
//! request and its postcard `DkgStep`; every member decodes each round-1
//! package; each recipient opens the round-2 package, repair delta or
//! repair sigma sealed to it (here, to the fixed inbox key) and decodes
//! it. Refusals only, never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use vmail_auth::service::{
    DKG_ROUND2_INFO, REPAIR_DELTA_INFO, REPAIR_SIGMA_INFO, round2_aad, split_sigma,
};
use vmail_auth::store::{DkgStep, MAX_STEP_LEN, SealedPackage};
use vmail_auth::threshold::{Delta, PublicKeyPackage, Sigma, Wire, dkg_round1, dkg_round2};
use vmail_fuzz::inbox_key;
use vmail_proto::cluster_pb::ProposeDkgRequest;
use vmail_proto::share::{self, BoxSecret};

static INBOX: LazyLock<BoxSecret> = LazyLock::new(inbox_key);

/// The plaintext of `s`, sealed by `from` under `info`, if it opens.
fn open(info: &[u8], ceremony: u64, from: u64, s: &SealedPackage) -> Option<Vec<u8>> {
    let aad = round2_aad(ceremony, from, s.to, s.epoch);
    share::open_bytes(&INBOX, info, &s.enc, &s.ciphertext, &aad)
        .ok()
        .map(|b| b.to_vec())
}

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
                if let Some(bytes) = open(DKG_ROUND2_INFO, ceremony, r.node_id, &s) {
                    let _ = dkg_round2::Package::from_wire(&bytes);
                }
            }
        }
        DkgStep::RepairDeltas { ceremony, sealed } => {
            for s in sealed {
                if let Some(bytes) = open(REPAIR_DELTA_INFO, ceremony, r.node_id, &s) {
                    let _ = Delta::from_wire(&bytes);
                }
            }
        }
        DkgStep::RepairSigma { ceremony, sealed } => {
            if let Some(bytes) = open(REPAIR_SIGMA_INFO, ceremony, r.node_id, &sealed)
                && let Some((sigma, public)) = split_sigma(&bytes)
            {
                let _ = Sigma::from_wire(sigma);
                let _ = PublicKeyPackage::from_wire(public);
            }
        }
        DkgStep::Done { .. } => {}
    }
});
