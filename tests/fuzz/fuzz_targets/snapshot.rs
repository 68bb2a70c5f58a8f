//! The snapshot import's reader (`Store::import`): a leader's snapshot as a
//! follower installs it. Whatever reads is written back the way `export`
//! writes, and that reads back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmail_auth::store::reencode_snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(once) = reencode_snapshot(data) {
        let twice = reencode_snapshot(&once).expect("an exported snapshot reads");
        assert_eq!(twice, once, "snapshot encoding is not stable");
    }
});
