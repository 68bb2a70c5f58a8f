//! [`validate_deposit`]: what a deposit may carry, and the field each
//! refusal names. Pure: no server.

use super::*;

/// Three servers, 10, 11 and 12, with a published key of epoch 1 each.
fn published() -> BTreeMap<(u64, u32), crate::store::PublishedKey> {
    (10..13u64)
        .map(|n| {
            (
                (n, 1),
                crate::store::PublishedKey {
                    public: [n as u8; 32],
                    published_at: T0,
                },
            )
        })
        .collect()
}

fn share(node_id: u64, index: u32) -> ShareIn {
    ShareIn {
        node_id,
        epoch: 1,
        index,
        enc: vec![3; 32],
        ciphertext: vec![4; 48],
    }
}

fn valid() -> Deposit {
    Deposit {
        request_id: vec![1; MIN_REQUEST_ID_LEN],
        recipients: vec!["carol".into(), "bob".into(), "carol".into()],
        locator: b"locator".to_vec(),
        shares: vec![share(10, 1), share(11, 2), share(12, 3)],
        threshold: 2,
        key_check: vec![5; 32],
        metadata: VoicemailMeta {
            size: 1234,
            content_type: "audio/wav".into(),
            duration_ms: 5000,
            expires_at: 0,
        },
        grant_serial: 1,
    }
}

fn accepted(edit: impl FnOnce(&mut Deposit)) -> Recipients {
    let mut d = valid();
    edit(&mut d);
    validate_deposit(&d, &published())
        .unwrap_or_else(|e| panic!("{d:?} should pass, got {e}"))
        .recipients
}

/// The field a refusal names, and its message.
fn refused(edit: impl FnOnce(&mut Deposit)) -> (&'static str, String) {
    let mut d = valid();
    edit(&mut d);
    match validate_deposit(&d, &published()) {
        Err(AuthError::InvalidArgument { field, why }) => (field, why),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn a_valid_deposit_is_canonicalised_and_its_expiry_left_to_the_grant() {
    assert_eq!(accepted(|_| {}).to_strings(), ["bob", "carol"]);
    // The metadata's expiry is not the deposit's to set: any value
    // passes, the grant's replaces it when the deposit applies.
    for t in [1, u64::MAX] {
        accepted(|d| d.metadata.expires_at = t);
    }
}

#[test]
fn a_deposit_without_a_grant_is_refused_with_the_next_step() {
    let (field, why) = refused(|d| d.grant_serial = 0);
    assert_eq!(field, "grant_serial");
    assert!(why.contains("ask RequestGrant"), "{why}");
    accepted(|d| d.grant_serial = u64::MAX);
}

#[test]
fn every_limit_is_inclusive() {
    accepted(|d| d.request_id = vec![1; MAX_REQUEST_ID_LEN]);
    accepted(|d| d.locator = vec![3; MAX_LOCATOR_LEN]);
    accepted(|d| d.locator.clear());
    accepted(|d| d.metadata.content_type = "a".repeat(MAX_CONTENT_TYPE_LEN));
    accepted(|d| d.metadata.content_type.clear());
    let names: Vec<String> = (0..vmail_proto::names::MAX_RECIPIENTS)
        .map(|i| format!("user{i}"))
        .collect();
    accepted(|d| d.recipients = names);
}

#[test]
fn a_bad_request_id_is_named() {
    for len in [0, MIN_REQUEST_ID_LEN - 1, MAX_REQUEST_ID_LEN + 1] {
        let (field, why) = refused(|d| d.request_id = vec![1; len]);
        assert_eq!(field, "request_id", "{len} bytes");
        assert_eq!(why, format!("{len} bytes, expected 16 to 64"));
    }
}

#[test]
fn bad_recipients_are_named() {
    let many: Vec<String> = (0..=vmail_proto::names::MAX_RECIPIENTS)
        .map(|i| format!("user{i}"))
        .collect();
    let cases: Vec<Vec<String>> = vec![
        Vec::new(),
        vec!["Bob".into()],
        vec!["bob".into(), "al".into()],
        vec!["bob smith".into()],
        vec!["a".repeat(65)],
        many,
    ];
    for names in cases {
        let (field, why) = refused(|d| d.recipients = names.clone());
        assert_eq!(field, "recipients", "{names:?}: {why}");
    }
    let (_, why) = refused(|d| d.recipients.clear());
    assert_eq!(why, "a voicemail needs at least one recipient");
}

#[test]
fn each_bad_shares_field_is_named_with_what_is_wrong() {
    /// The field named, part of the message, and the edit that breaks it.
    type Case = (&'static str, &'static str, Box<dyn Fn(&mut Deposit)>);
    let cases: Vec<Case> = vec![
        ("shares", "none", Box::new(|d| d.shares.clear())),
        (
            "shares",
            "17 shares, at most 16",
            Box::new(|d| d.shares = (0..17u64).map(|i| share(i, i as u32 + 1)).collect()),
        ),
        (
            "shares.index",
            "share 1 (index): 0, expected 1 to 3",
            Box::new(|d| d.shares[0].index = 0),
        ),
        (
            "shares.index",
            "share 3 (index): 4, expected 1 to 3",
            Box::new(|d| d.shares[2].index = 4),
        ),
        (
            "shares.index",
            "share 2 (index): index 1 appears twice",
            Box::new(|d| d.shares[1].index = 1),
        ),
        (
            "shares.node_id",
            "share 2 (node_id): server 000000000000000a has two shares",
            Box::new(|d| d.shares[1].node_id = 10),
        ),
        (
            "shares.epoch",
            "share 3 (epoch): server 000000000000000c published no share key of epoch 2",
            Box::new(|d| d.shares[2].epoch = 2),
        ),
        (
            "shares.epoch",
            "server 000000000000000d published no share key",
            Box::new(|d| d.shares[2].node_id = 13),
        ),
        (
            "shares.enc",
            "share 1 (enc): 31 bytes, expected 32",
            Box::new(|d| {
                d.shares[0].enc.pop();
            }),
        ),
        (
            "shares.ciphertext",
            "share 2 (ciphertext): 47 bytes, expected 48",
            Box::new(|d| d.shares[1].ciphertext.truncate(47)),
        ),
        (
            "threshold",
            "3, but 3 shares need a threshold of 2",
            Box::new(|d| d.threshold = 3),
        ),
        (
            "threshold",
            "1, but 3 shares need a threshold of 2",
            Box::new(|d| d.threshold = 1),
        ),
        (
            "key_check",
            "31 bytes, expected 32",
            Box::new(|d| d.key_check.truncate(31)),
        ),
    ];
    for (want_field, want_why, edit) in cases {
        let (field, why) = refused(|d| edit(d));
        assert_eq!(field, want_field, "{why}");
        assert!(why.contains(want_why), "{want_field}: {why}");
    }
    // Shares in any order are put in index order.
    let mut d = valid();
    d.shares.reverse();
    let checked = validate_deposit(&d, &published()).unwrap();
    let order: Vec<u8> = checked.shares.iter().map(|s| s.index).collect();
    assert_eq!(order, [1, 2, 3]);
    assert_eq!(checked.threshold, 2);
    // One share, threshold 1: a one-server group.
    accepted(|d| {
        d.shares = vec![share(11, 1)];
        d.threshold = 1;
    });
}

#[test]
fn a_locator_over_the_limit_is_named() {
    let (field, why) = refused(|d| d.locator = vec![3; MAX_LOCATOR_LEN + 1]);
    assert_eq!(field, "locator");
    assert_eq!(why, "4097 bytes, at most 4096 allowed");
}

#[test]
fn a_content_type_over_the_limit_is_named() {
    let (field, why) = refused(|d| d.metadata.content_type = "a".repeat(MAX_CONTENT_TYPE_LEN + 1));
    assert_eq!(field, "metadata.content_type");
    assert_eq!(why, "129 bytes, at most 128");
}

#[test]
fn the_first_bad_field_in_protocol_order_is_the_one_named() {
    let all_bad = |d: &mut Deposit| {
        d.request_id.clear();
        d.recipients.clear();
        d.shares.clear();
        d.locator = vec![3; MAX_LOCATOR_LEN + 1];
        d.metadata.content_type = "a".repeat(MAX_CONTENT_TYPE_LEN + 1);
        d.grant_serial = 0;
    };
    let order = [
        "request_id",
        "recipients",
        "shares",
        "locator",
        "metadata.content_type",
        "grant_serial",
    ];
    // Fix the fields one by one, in order: each time the next is named.
    for (i, want) in order.iter().enumerate() {
        let (field, _) = refused(|d| {
            all_bad(d);
            let good = valid();
            for fixed in &order[..i] {
                match *fixed {
                    "request_id" => d.request_id = good.request_id.clone(),
                    "recipients" => d.recipients = good.recipients.clone(),
                    "shares" => d.shares = good.shares.clone(),
                    "locator" => d.locator = good.locator.clone(),
                    "metadata.content_type" => {
                        d.metadata.content_type = good.metadata.content_type.clone()
                    }
                    _ => unreachable!(),
                }
            }
        });
        assert_eq!(field, *want);
    }
}
