//! `validate_deposit` on a `DepositRequest` as the gRPC adapter builds it
//! from the protobuf a client sent: what passes is within every limit, and
//! its recipients are those of the request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use vmail_auth::service::{
    Deposit, MAX_CONTENT_TYPE_LEN, MAX_LOCATOR_LEN, MAX_REQUEST_ID_LEN, MIN_REQUEST_ID_LEN,
    validate_deposit,
};
use vmail_proto::keys::WRAPPED_KEY_LEN;
use vmail_proto::names::Recipients;
use vmail_proto::pb::DepositRequest;

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
        wrapped_key: r.wrapped_key,
        metadata: m.into(),
        grant_serial: r.grant_serial,
    };
    let Ok(recipients) = validate_deposit(&d) else {
        return;
    };
    assert!((MIN_REQUEST_ID_LEN..=MAX_REQUEST_ID_LEN).contains(&d.request_id.len()));
    assert_eq!(d.wrapped_key.len(), WRAPPED_KEY_LEN);
    assert!(d.locator.len() <= MAX_LOCATOR_LEN);
    assert!(d.metadata.content_type.len() <= MAX_CONTENT_TYPE_LEN);
    assert_ne!(d.grant_serial, 0);
    assert_eq!(Recipients::parse(&d.recipients).as_ref(), Ok(&recipients));
});
