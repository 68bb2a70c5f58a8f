//! `validate_deposit` on a `DepositRequest` as the gRPC adapter builds it
//! from the protobuf a client sent, against the share keys of a fixed
//! 3-server group ([`vmail_fuzz::published_share_keys`]): what passes is
//! within every limit, its shares are one per published key with indices
//! 1..=n and the majority threshold, and its recipients are those of the
//! request.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use vmail_auth::service::{
    Deposit, MAX_CONTENT_TYPE_LEN, MAX_LOCATOR_LEN, MAX_REQUEST_ID_LEN, MIN_REQUEST_ID_LEN,
    ShareIn, validate_deposit,
};
use vmail_auth::store::PublishedKey;
use vmail_fuzz::published_share_keys;
use vmail_proto::names::Recipients;
use vmail_proto::pb::DepositRequest;
use vmail_proto::share;

static PUBLISHED: LazyLock<std::collections::BTreeMap<(u64, u32), PublishedKey>> =
    LazyLock::new(published_share_keys);

fuzz_target!(|data: &[u8]| {
    let Ok(r) = DepositRequest::decode(data) else {
        return;
    };
    let Some(m) = r.metadata else {
        return;
    };
    let d = Deposit {
        request_id: r.request_id,
        recipients: r.recipients,
        locator: r.locator,
        shares: r
            .shares
            .into_iter()
            .map(ShareIn::from)
            .collect(),
        threshold: r.threshold,
        key_check: r.key_check,
        metadata: m.into(),
        grant_serial: r.grant_serial,
    };
    let Ok(checked) = validate_deposit(&d, &PUBLISHED) else {
        return;
    };
    assert!((MIN_REQUEST_ID_LEN..=MAX_REQUEST_ID_LEN).contains(&d.request_id.len()));
    assert!(d.locator.len() <= MAX_LOCATOR_LEN);
    assert!(d.metadata.content_type.len() <= MAX_CONTENT_TYPE_LEN);
    assert_ne!(d.grant_serial, 0);
    assert_eq!(Recipients::parse(&d.recipients).as_ref(), Ok(&checked.recipients));
    let n = checked.shares.len();
    assert!((1..=share::MAX_SHARES).contains(&n));
    assert_eq!(usize::from(checked.threshold), share::threshold(n));
    for (i, s) in checked.shares.iter().enumerate() {
        assert_eq!(usize::from(s.index), i + 1, "shares in index order, 1..=n");
        assert!(PUBLISHED.contains_key(&(s.node_id, s.epoch)));
        assert_eq!(s.ciphertext.len(), share::SEALED_LEN);
    }
});
