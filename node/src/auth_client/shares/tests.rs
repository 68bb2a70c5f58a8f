//! Unit tests of the share keys, the shares' shape and the collector.

use vmail_proto::names::Recipients;
use vmail_proto::share::{ShareBinding, open_share, reseal};

use super::*;

/// A group of `n` servers, a key split among them, and each server's
/// share resealed to bob's inbox key, as `OpenShare` answers it.
pub(in crate::auth_client) struct World {
    pub(in crate::auth_client) keys: Vec<ShareKey>,
    pub(in crate::auth_client) key: SecretKey,
    pub(in crate::auth_client) shares: KeyShares,
    pub(in crate::auth_client) answers: Vec<pb::OpenShareResponse>,
    pub(in crate::auth_client) inbox: BoxSecret,
    pub(in crate::auth_client) bob: Username,
}

pub(in crate::auth_client) const ID: [u8; 16] = [3; 16];

/// The locator every test voicemail is stored at.
const LOCATOR: &[u8] = b"locator";

pub(in crate::auth_client) fn world(n: usize) -> World {
    let secrets: Vec<BoxSecret> = (0..n).map(|_| BoxSecret::generate()).collect();
    let keys: Vec<ShareKey> = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| ShareKey {
            node_id: 100 + i as u64,
            epoch: 1,
            public: s.public(),
        })
        .collect();
    let recipients = Recipients::parse(["bob"]).unwrap();
    let key = SecretKey::random();
    let (threshold, key_check, sealed) =
        share::split(&key, &keys, 9, &recipients, LOCATOR).unwrap();
    let binding = ShareBinding {
        grant_serial: 9,
        recipients: &recipients,
        threshold,
        key_check: &key_check,
    };
    let inbox = BoxSecret::generate();
    let bob = Username::parse("bob").unwrap();
    let answers = secrets
        .iter()
        .zip(&sealed)
        .map(|(sk, s)| {
            let value = open_share(sk, s, &binding).unwrap();
            let r = reseal(
                &value,
                &inbox.public(),
                &ResealBinding {
                    voicemail_id: &ID,
                    recipient: &bob,
                    node_id: s.node_id,
                    index: s.index,
                },
            )
            .unwrap();
            pb::OpenShareResponse {
                node_id: s.node_id,
                index: u32::from(s.index),
                enc: r.enc.to_vec(),
                ciphertext: r.ciphertext,
            }
        })
        .collect();
    let slots = sealed
        .iter()
        .map(|s| pb::ShareSlot {
            node_id: s.node_id,
            index: u32::from(s.index),
            api_url: String::new(),
        })
        .collect();
    World {
        shares: key_shares(u32::from(threshold), &key_check, slots).unwrap(),
        keys,
        key,
        answers,
        inbox,
        bob,
    }
}

impl World {
    pub(in crate::auth_client) fn recovering(&self) -> Recovering<'_> {
        Recovering {
            voicemail_id: &ID,
            shares: &self.shares,
            recipient: &self.bob,
            inbox: &self.inbox,
            locator: LOCATOR,
        }
    }

    fn answer(&self, i: usize) -> (String, Result<pb::OpenShareResponse, ShareFailure>) {
        (format!("https://a{i}:1"), Ok(self.answers[i].clone()))
    }
}

fn pb_keys(keys: &[ShareKey]) -> Vec<pb::ShareKey> {
    keys.iter()
        .map(|k| pb::ShareKey {
            node_id: k.node_id,
            epoch: k.epoch,
            public_key: k.public.to_vec(),
        })
        .collect()
}

fn message(e: ClientError) -> String {
    e.to_string()
}

#[test]
fn grant_share_keys_are_checked() {
    let w = world(3);
    assert_eq!(grant_share_keys(pb_keys(&w.keys), 3).unwrap(), w.keys);
    assert_eq!(grant_share_keys(pb_keys(&w.keys), 1).unwrap(), w.keys);
    let err = message(grant_share_keys(Vec::new(), 1).unwrap_err());
    assert!(err.contains("there are none"), "{err}");
    let mut short = pb_keys(&w.keys);
    short[1].public_key.pop();
    let err = message(grant_share_keys(short, 3).unwrap_err());
    assert!(err.contains("server 101 is 31 bytes"), "{err}");
    let mut twice = pb_keys(&w.keys);
    twice[2].node_id = 100;
    let err = message(grant_share_keys(twice, 3).unwrap_err());
    assert!(err.contains("server 100 is listed twice"), "{err}");
    // A leader that names fewer servers than the client knows of.
    let err = message(grant_share_keys(pb_keys(&w.keys[..2]), 3).unwrap_err());
    assert!(
        err.contains("2 servers listed, but 3 auth servers are configured"),
        "{err}"
    );
    let many = (0..17)
        .map(|i| ShareKey {
            node_id: i,
            ..w.keys[0]
        })
        .collect::<Vec<_>>();
    assert!(check_share_keys(&many, 3).is_err());
}

#[test]
fn pending_shares_are_checked_for_shape() {
    let slot = |node_id, index| pb::ShareSlot {
        node_id,
        index,
        api_url: format!("https://auth-{node_id}:7443"),
    };
    let good = vec![slot(1, 1), slot(2, 2), slot(3, 3)];
    let s = key_shares(2, &[7; 32], good.clone()).unwrap();
    assert_eq!(s.threshold, 2);
    assert_eq!(
        s.slots[2],
        ShareSlot {
            node_id: 3,
            index: 3,
            api_url: Some("https://auth-3:7443".into())
        }
    );
    // The configured endpoints first, then the slots' other URLs.
    assert_eq!(
        s.endpoints(&["https://auth-2:7443".into(), "https://x:1".into()]),
        [
            "https://auth-2:7443",
            "https://x:1",
            "https://auth-1:7443",
            "https://auth-3:7443"
        ]
    );
    // A server that left the group has no URL.
    let mut gone = good.clone();
    gone[0].api_url.clear();
    let s = key_shares(2, &[7; 32], gone).unwrap();
    assert_eq!(s.slots[0].api_url, None);
    assert_eq!(s.endpoints(&[]).len(), 2);
    let mut plain = good.clone();
    plain[1].api_url = "http://auth-2:7443".into();
    let err = key_shares(2, &[7; 32], plain).unwrap_err();
    assert!(
        err.contains("\"http://auth-2:7443\", not https://"),
        "{err}"
    );
    for (t, check, slots) in [
        (0, vec![7; 32], good.clone()),
        (4, vec![7; 32], good.clone()),
        (2, vec![7; 31], good.clone()),
        (1, vec![7; 32], Vec::new()),
        (2, vec![7; 32], vec![slot(1, 1), slot(1, 2)]),
        (2, vec![7; 32], vec![slot(1, 1), slot(2, 1)]),
        (1, vec![7; 32], vec![slot(1, 0)]),
        (1, vec![7; 32], vec![slot(1, 17)]),
        (1, vec![7; 32], vec![slot(1, 257)]),
    ] {
        assert!(
            key_shares(t, &check, slots.clone()).is_err(),
            "{t} {slots:?}"
        );
    }
}

#[test]
fn a_threshold_of_answers_recovers_the_key() {
    let w = world(3);
    let key = collect(w.recovering(), [w.answer(2), w.answer(0)]).unwrap();
    assert_eq!(key, w.key);
    // The collector stops at the threshold: later answers are not needed.
    let mut c = Collector::new(w.recovering());
    assert!(c.take("https://a0:1", Ok(w.answers[0].clone())).is_none());
    assert_eq!(
        c.take("https://a1:1", Ok(w.answers[1].clone())),
        Some(w.key.clone())
    );
}

#[test]
fn a_bad_answer_is_routed_around_when_a_third_share_arrives() {
    let w = world(3);
    // Server 0 answers a share that opens but is wrong: it resealed
    // another value properly. Simulate with the right slot and a value
    // of another split.
    let other = world(3);
    let mut wrong = w.answers[0].clone();
    let value = share::open_resealed(
        &other.inbox,
        &ResealedShare {
            enc: other.answers[0].enc.as_slice().try_into().unwrap(),
            ciphertext: other.answers[0].ciphertext.clone(),
        },
        &ResealBinding {
            voicemail_id: &ID,
            recipient: &other.bob,
            node_id: 100,
            index: 1,
        },
    )
    .unwrap();
    let r = reseal(
        &value,
        &w.inbox.public(),
        &ResealBinding {
            voicemail_id: &ID,
            recipient: &w.bob,
            node_id: 100,
            index: 1,
        },
    )
    .unwrap();
    wrong.enc = r.enc.to_vec();
    wrong.ciphertext = r.ciphertext;
    let mut c = Collector::new(w.recovering());
    assert!(c.take("https://a0:1", Ok(wrong.clone())).is_none());
    assert!(c.take("https://a1:1", Ok(w.answers[1].clone())).is_none());
    assert_eq!(
        c.take("https://a2:1", Ok(w.answers[2].clone())),
        Some(w.key.clone())
    );
    // With only two answers, one of them wrong, the error says so.
    let err = collect(
        w.recovering(),
        [
            ("https://a0:1".to_owned(), Ok(wrong)),
            w.answer(1),
            (
                "https://a2:1".to_owned(),
                Err(ShareFailure::Unreachable("connection refused".into())),
            ),
        ],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("needs shares from 2 auth servers, got 2, and they do not recombine"),
        "{text}"
    );
    assert!(
        text.contains("https://a2:1 unreachable (connection refused)"),
        "{text}"
    );
}

#[test]
fn too_few_shares_name_each_server_and_why() {
    let w = world(3);
    let mut flipped = w.answers[1].clone();
    flipped.ciphertext[0] ^= 1;
    let mut stranger = w.answers[2].clone();
    stranger.node_id = 7;
    let err = collect(
        w.recovering(),
        [
            w.answer(0),
            ("https://b:2".to_owned(), Ok(flipped)),
            ("https://c:3".to_owned(), Ok(stranger)),
            (
                "https://d:4".to_owned(),
                Err(ShareFailure::NoShare("no such voicemail".into())),
            ),
            ("https://e:5".to_owned(), Ok(w.answers[0].clone())),
        ],
    )
    .unwrap_err();
    let RecoveryError::Short {
        need,
        got,
        mismatch,
        ref failures,
        ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!((need, got, mismatch), (2, 1, false));
    assert_eq!(failures.len(), 4);
    let text = err.to_string();
    for part in [
        &format!("recovering the key of voicemail {}", hex::encode(ID)),
        "needs shares from 2 auth servers, got 1: ",
        "https://b:2 answered a share that does not open",
        "https://c:3 answered share 3 of server 7, which this voicemail does not list",
        "https://d:4 has no share of it for you (no such voicemail)",
        "https://e:5 answered the same share as https://a0:1",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
}

#[test]
fn a_share_for_another_session_or_malformed_does_not_count() {
    let w = world(1);
    let mut other = w.recovering();
    let stranger_inbox = BoxSecret::generate();
    other.inbox = &stranger_inbox;
    let err = collect(other, [w.answer(0)]).unwrap_err().to_string();
    assert!(err.contains("does not open"), "{err}");
    let mut short = w.answers[0].clone();
    short.enc.truncate(5);
    let err = collect(w.recovering(), [("u".to_owned(), Ok(short))])
        .unwrap_err()
        .to_string();
    assert!(err.contains("malformed share (enc of 5 bytes"), "{err}");
    assert_eq!(collect(w.recovering(), [w.answer(0)]).unwrap(), w.key);
}

#[test]
fn too_few_endpoints_tell_the_user_to_list_them_all() {
    let w = world(3);
    assert!(enough_endpoints(&ID, &w.shares, 2).is_ok());
    let err = enough_endpoints(&ID, &w.shares, 1).unwrap_err().to_string();
    assert!(
        err.contains("needs shares from 2 auth servers, but only 1 are known")
            && err.contains("list every auth server in --auth"),
        "{err}"
    );
}
