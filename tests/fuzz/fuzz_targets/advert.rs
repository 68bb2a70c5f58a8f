//! `Advert::verify`: the gossip bytes of a supernode advert from any peer.
//! Only genuinely signed adverts pass: anything else the fuzzer makes that
//! verifies at the same time would be a forgery.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use vmail_fuzz::{NOW, adverts};
use vmail_node::supernode::advert::{Advert, AdvertBook};

static GENUINE: LazyLock<Vec<Advert>> = LazyLock::new(adverts);

fuzz_target!(|data: &[u8]| {
    for now in [NOW, NOW + 60] {
        if let Ok(a) = Advert::verify(data, now) {
            assert!(GENUINE.contains(&a), "a forged advert verified: {a:?}");
            let mut book = AdvertBook::default();
            assert!(book.accept(data, now).is_ok());
            assert!(book.accept(data, now).is_err(), "a replay was accepted");
        }
    }
});
