//! `sip::wire::screen` and the digest check: any datagram a LAN host sends
//! the SIP front. What is handed on (or waits for admission) parses as
//! SIP; what is answered is a SIP error response; no credentials the
//! fuzzer makes ever pass.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rsipstack::sip::{Method, SipMessage};
use vmail_fuzz::NOW;
use vmail_node::sip::digest::Digest;
use vmail_node::sip::wire::{Screened, screen};

fuzz_target!(|data: &[u8]| {
    match screen(data) {
        Screened::Pass => {
            if !data.iter().all(u8::is_ascii_whitespace) {
                assert!(SipMessage::try_from(data).is_ok(), "an unparseable message was passed on");
            }
        }
        Screened::Request(req) => {
            assert!(req.method != Method::Ack, "an ACK waits for admission");
            assert!(
                matches!(SipMessage::try_from(data), Ok(SipMessage::Request(_))),
                "a request to admit does not parse"
            );
        }
        Screened::Answer(bytes) => match SipMessage::try_from(bytes.as_slice()) {
            Ok(SipMessage::Response(r)) => assert!(r.status_code.code() >= 400),
            other => panic!("an answer that is not a SIP error response: {other:?}"),
        },
        Screened::Drop(_) => {}
    }
    if let Ok(SipMessage::Request(req)) = SipMessage::try_from(data) {
        let auth = req.headers.iter().find_map(|h| match h {
            rsipstack::sip::Header::Authorization(a) => Some(a.value().to_owned()),
            _ => None,
        });
        let mut digest = Digest::new("vmail");
        for method in [req.method, Method::Register] {
            assert!(
                digest.check(auth.as_deref(), &method, "alice", "password", NOW).is_err(),
                "forged credentials passed"
            );
        }
    }
});
