//! `sip::sdp::parse_offer`: the SDP body of any INVITE. An offer that is
//! taken is answered with SDP that reads back as the same choice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmail_node::sip::sdp::{answer, parse_offer};

fuzz_target!(|data: &[u8]| {
    if let Ok(offer) = parse_offer(data) {
        let local = "127.0.0.1:7078".parse().unwrap();
        let back = parse_offer(answer(&offer, local, 1).as_bytes()).expect("our answer parses");
        assert_eq!((back.codec, back.dtmf, back.remote), (offer.codec, offer.dtmf, local));
    }
});
