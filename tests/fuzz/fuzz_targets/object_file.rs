//! The object file reader (`VMO1`, `VMO2`, `VMO3`) with
//! `ObjectMeta::consistent`, and the tombstone reader: what a holder reads
//! back from its disk at start. A meta read from a file is written back as
//! `VMO3` and reads back the same; a consistent shard meta agrees with its
//! layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmail_node::overlay::objects::fuzzing::{
    decode_meta, decode_tombstone, encode_tombstone, header,
};

fuzz_target!(|data: &[u8]| {
    if let Some(meta) = decode_meta(data) {
        let body = &data[data.len() - meta.len as usize..];
        let mut file = header(&meta);
        file.extend_from_slice(body);
        assert_eq!(
            decode_meta(&file).as_ref(),
            Some(&meta),
            "meta does not round-trip"
        );
        let id = meta
            .shard
            .as_ref()
            .and_then(|s| s.layout.shards.get(usize::from(s.index)))
            .map_or([0; 32], |r| r.id);
        if meta.consistent(&id) {
            if let Some(s) = &meta.shard {
                assert!(s.layout.validate().is_ok());
                assert_eq!(s.layout.shard_len(), meta.len);
                assert_eq!(s.layout.shards[usize::from(s.index)].sha256, meta.sha256);
            }
        }
        let _ = meta.charge();
    }
    if let Some(t) = decode_tombstone(data) {
        assert_eq!(decode_tombstone(&encode_tombstone(&t)), Some(t));
    }
});
