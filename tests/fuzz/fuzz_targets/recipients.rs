//! `Recipients::parse` on the names a client sends, one per line here:
//! what it accepts is canonical (parsing its own output gives it back) and
//! within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmail_proto::names::{MAX_RECIPIENTS, Recipients};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let names: Vec<&str> = text.split('\n').collect();
    let Ok(r) = Recipients::parse(&names) else {
        return;
    };
    let strings = r.to_strings();
    assert!(!strings.is_empty() && strings.len() <= MAX_RECIPIENTS);
    assert!(
        strings.windows(2).all(|w| w[0] < w[1]),
        "not sorted and unique"
    );
    let again = Recipients::parse(&strings).expect("canonical recipients parse");
    assert_eq!(again, r);
    assert_eq!(again.canonical_bytes(), r.canonical_bytes());
});
