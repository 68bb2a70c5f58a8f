//! `Locator::decode` (the bytes a recipient gets from the auth group, which
//! the sender wrote) and `Layout::validate` on a layout as a `Relayout`
//! request carries it: a decoded locator re-encodes to itself and is valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmail_node::core::locator::{Layout, Locator};

fuzz_target!(|data: &[u8]| {
    if let Ok(loc) = Locator::decode(data) {
        assert!(
            loc.layout.validate().is_ok(),
            "decode let an invalid layout through"
        );
        assert_eq!(loc.layout.shards.len(), loc.layout.redundancy.n());
        let again = Locator::decode(&loc.encode()).expect("a decoded locator re-decodes");
        assert_eq!(again, loc, "a locator does not round-trip");
        let _ = loc.layout.shard_len();
    }
    if let Ok(layout) = postcard::from_bytes::<Layout>(data) {
        if layout.validate().is_ok() {
            let mut ids: Vec<_> = layout.shards.iter().map(|s| s.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(
                ids.len(),
                layout.redundancy.n(),
                "a valid layout repeats an id"
            );
            assert!(layout.ciphertext_len > 0);
            let _ = layout.shard_len();
        }
    }
});
