//! A supernode `SnResponse` as libp2p's cbor request-response codec reads it
//! off a stream (the node's `sn` behaviour): whatever decodes, written
//! back by the same codec, reads back equal.
#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec as _;
use libp2p::request_response::cbor::codec::Codec;
use vmail_node::supernode::attach::{SnRequest, SnResponse};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/vmail/sn/fuzz");

fuzz_target!(|data: &[u8]| {
    let mut codec = Codec::<SnRequest, SnResponse>::default();
    let Ok(msg) = block_on(codec.read_response(&PROTOCOL, &mut Cursor::new(data))) else {
        return;
    };
    let mut out = Cursor::new(Vec::new());
    block_on(codec.write_response(&PROTOCOL, &mut out, msg.clone())).expect("writes to memory");
    let again = block_on(codec.read_response(&PROTOCOL, &mut Cursor::new(out.into_inner())))
        .expect("what the codec wrote reads back");
    assert_eq!(again, msg);
});
