//! A blob protocol `Request` frame's body, as `read_frame` decodes it off a
//! stream from a remote peer: whatever decodes re-encodes stably.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmail_fuzz::assert_reencodes;
use vmail_node::overlay::transfer::{Request, decode_frame_body, frame};

fn body<T: serde::Serialize>(v: &T) -> Vec<u8> {
    frame(v)[4..].to_vec()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_frame_body::<Request>(data) {
        let msg = assert_reencodes(msg, body, |b| decode_frame_body::<Request>(b).ok());
        if let Request::Store { id, meta } = &msg {
            // What a holder computes before it admits a store.
            let _ = meta.consistent(id);
            let _ = meta.charge();
        }
    }
});
