//! Integration tests of the auth server over TLS on 127.0.0.1:0: the happy
//! path of the paper's protocol, every bad input the issue names, restart,
//! key change, expiry and generic gRPC clients.

use std::sync::Arc;

use tokio_stream::StreamExt;
use tonic::Code;
use vmail_auth::config::RegistrationMode;
use vmail_auth::datadir::files;
use vmail_auth::service::ManualClock;
use vmail_node::auth_client::ClientError;
use vmail_proto::account::{AccountKey, SessionStatement};
use vmail_proto::grant::{DeleteOrder, DeleteReason, UPLOAD_WINDOW_SECS};
use vmail_proto::pb;
use vmail_proto::share::{
    BoxSecret, ResealBinding, ResealedShare, SEALED_LEN, ShareError, ShareKey, combine,
    open_resealed,
};
use vmail_tests::{
    TestAuth, bearer, deposit_for, deposit_request, file_bytes, granted, granted_until, identity,
    password, register_and_login, request_grant, try_granted,
};

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> (Code, String) {
    let e = r.expect_err("call should fail");
    (e.code().unwrap_or(Code::Unknown), e.to_string())
}

#[tokio::test]
async fn happy_path_register_login_deposit_list_unwrap_ack() {
    let auth = TestAuth::start().await;
    let (mut bob, bob_id, bob_s) = register_and_login(&auth, "bob").await;
    let (mut alice, _, alice_s) = register_and_login(&auth, "alice").await;
    let (mut carol, _, carol_s) = register_and_login(&auth, "carol").await;

    // The certificate binds bob's identity key and verifies offline.
    let cert = alice.certificate("bob").await.unwrap();
    cert.verify(&auth.target().cluster_key, vmail_proto::unix_now())
        .unwrap();
    assert_eq!(cert.identity_key, bob_id.verifying_key());
    assert_eq!(bob_s.certificate.identity_key, bob_id.verifying_key());

    let d = granted(
        &mut bob,
        deposit_for(&["carol", "alice"], b"locator: shard ids"),
    )
    .await;
    let receipt = bob.deposit(&d).await.unwrap();
    assert!(!receipt.replayed);

    for (client, session) in [(&mut alice, &alice_s), (&mut carol, &carol_s)] {
        let pending = client.list_pending().await.unwrap();
        assert_eq!(pending.len(), 1);
        let p = &pending[0];
        assert_eq!(p.id, receipt.voicemail_id);
        // The key is split 1-of-1 on this one server; each recipient
        // recovers the sender's key from its share.
        assert_eq!(p.shares.threshold, 1);
        assert_eq!(
            p.shares.key_check,
            vmail_proto::share::key_check(&d.session_key, &d.locator)
        );
        assert_eq!(
            client.recover_session_key(session, p).await.unwrap(),
            d.session_key
        );
        assert_eq!(p.sender.display_name(), "bob");
        assert_eq!(p.locator, b"locator: shard ids");
        assert_eq!(p.recipients, d.recipients);
        assert_eq!(p.meta.size, 1234);
        assert_eq!(p.meta.content_type, "audio/wav");
        assert!(p.meta.expires_at > vmail_proto::unix_now());
    }
    // Bob is not a recipient: nothing pending for him.
    assert!(bob.list_pending().await.unwrap().is_empty());

    let first = alice.ack(&receipt.voicemail_id).await.unwrap();
    assert!(!first.key_erased, "carol still holds a grant");
    assert_eq!(
        first.delete_order, None,
        "only the last ack orders a delete"
    );
    assert!(
        auth.service()
            .store()
            .voicemail_exists(&receipt.voicemail_id)
            .unwrap()
    );
    let last = carol.ack(&receipt.voicemail_id).await.unwrap();
    assert!(last.key_erased, "last ack erases the key");
    let order = last
        .delete_order
        .expect("the last ack carries a delete order");
    assert_eq!(order.serial, d.grant_serial);
    assert!(
        !auth
            .service()
            .store()
            .voicemail_exists(&receipt.voicemail_id)
            .unwrap()
    );
    let counts = auth.service().store().counts().unwrap();
    assert_eq!((counts.voicemails, counts.grants), (0, 0));
    assert!(alice.list_pending().await.unwrap().is_empty());
}

#[tokio::test]
async fn wrong_password_is_refused_and_changes_nothing() {
    let auth = TestAuth::start().await;
    let mut c = auth.client().await;
    let id = identity();
    c.register("alice", &password("alice"), &id, None)
        .await
        .unwrap();
    let before = auth.service().store().counts().unwrap();
    let err = c
        .login("alice", b"not the password", &id, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::WrongPassword(ref u) if u == "alice"),
        "{err}"
    );
    assert_eq!(err.to_string(), "wrong password for \"alice\"");
    assert_eq!(auth.service().store().counts().unwrap(), before);
    c.login("alice", &password("alice"), &id, &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn repeated_unsuccessful_logins_lock_the_user_out_until_the_window_ends() {
    let clock = Arc::new(ManualClock::new(vmail_proto::unix_now()));
    let auth = TestAuth::start_with(|c| c.max_failed_logins = 3, clock.clone()).await;
    let mut c = auth.client().await;
    let id = identity();
    c.register("alice", &password("alice"), &id, None)
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(
            c.login("alice", b"guess guess", &id, &[]).await,
            Err(ClientError::WrongPassword(_))
        ));
    }
    let (code_, msg) = code(c.login("alice", &password("alice"), &id, &[]).await);
    assert_eq!(code_, Code::ResourceExhausted);
    assert_eq!(
        msg,
        "too many unsuccessful logins for \"alice\"; try again in 300 s"
    );
    // Other users are unaffected.
    register_and_login(&auth, "bob").await;
    clock.advance(300);
    c.login("alice", &password("alice"), &id, &[])
        .await
        .unwrap();
    // A success clears the count.
    for _ in 0..3 {
        c.login("alice", &password("alice"), &id, &[])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn concurrent_login_starts_cannot_pass_the_lockout() {
    use opaque_ke::ClientLogin;
    let auth = TestAuth::start_with(
        |c| c.max_failed_logins = 5,
        Arc::new(ManualClock::new(1_000_000)),
    )
    .await;
    auth.client()
        .await
        .register("alice", &password("alice"), &identity(), None)
        .await
        .unwrap();
    let raw = pb::auth_client::AuthClient::new(auth.channel().await);
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let mut raw = raw.clone();
        attempts.spawn(async move {
            let start =
                ClientLogin::<vmail_proto::opaque::Suite>::start(&mut rand::rngs::OsRng, b"guess")
                    .unwrap();
            raw.login_start(pb::LoginStartRequest {
                username: "alice".into(),
                credential_request: start.message.serialize().to_vec(),
            })
            .await
        });
    }
    let results = attempts.join_all().await;
    let answered = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(answered, 5, "each answered LoginStart is one offline guess");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|s| s.code() == Code::ResourceExhausted)
    );
}

#[tokio::test]
async fn unknown_and_malformed_usernames() {
    let auth = TestAuth::start().await;
    let mut c = auth.client().await;
    let (code_, msg) = code(c.login("carol", b"whatever pw", &identity(), &[]).await);
    assert_eq!(code_, Code::NotFound);
    assert_eq!(msg, "unknown user \"carol\"");
    let (code_, msg) = code(c.certificate("nobody").await);
    assert_eq!(code_, Code::NotFound);
    assert!(msg.contains("\"nobody\""));

    // The server checks names itself, whatever the client does.
    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);
    for bad in ["Al", "a", "alice smith", "ALICE", &"x".repeat(65)] {
        let s = raw
            .get_certificate(pb::GetCertificateRequest {
                username: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{bad}");
        assert!(s.message().contains(&format!("{bad:?}")), "{}", s.message());
        let valid_request = opaque_ke::ClientRegistration::<vmail_proto::opaque::Suite>::start(
            &mut rand::rngs::OsRng,
            b"password",
        )
        .unwrap()
        .message
        .serialize()
        .to_vec();
        let s = raw
            .register_start(pb::RegisterStartRequest {
                username: bad.into(),
                registration_request: valid_request,
                invite_code: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().contains(&format!("username {bad:?}")),
            "{}",
            s.message()
        );
    }
    assert_eq!(auth.service().store().counts().unwrap().users, 0);
}

#[tokio::test]
async fn duplicate_registration_is_already_exists() {
    let auth = TestAuth::start().await;
    let mut c = auth.client().await;
    let first = identity();
    c.register("alice", &password("alice"), &first, None)
        .await
        .unwrap();
    let (code_, msg) = code(
        c.register("alice", b"another password", &identity(), None)
            .await,
    );
    assert_eq!(code_, Code::AlreadyExists);
    assert!(msg.contains("\"alice\" already exists"), "{msg}");
    // The first registration is intact.
    c.login("alice", &password("alice"), &first, &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn invite_mode_needs_an_unused_code() {
    let auth = TestAuth::start_with(
        |c| {
            c.registration.mode = RegistrationMode::Invite;
            c.registration.invite_codes = vec!["welcome-42".into()];
        },
        Arc::new(vmail_auth::service::SystemClock),
    )
    .await;
    let mut c = auth.client().await;
    let (code_, msg) = code(
        c.register("alice", &password("alice"), &identity(), None)
            .await,
    );
    assert_eq!(code_, Code::PermissionDenied);
    assert!(msg.contains("invite code"), "{msg}");
    let (code_, _) = code(
        c.register("alice", &password("alice"), &identity(), Some("nope"))
            .await,
    );
    assert_eq!(code_, Code::PermissionDenied);
    c.register("alice", &password("alice"), &identity(), Some("welcome-42"))
        .await
        .unwrap();
    let (code_, msg) = code(
        c.register("bob", &password("bob"), &identity(), Some("welcome-42"))
            .await,
    );
    assert_eq!(code_, Code::PermissionDenied);
    assert!(msg.contains("already used"), "{msg}");
    assert_eq!(auth.service().store().counts().unwrap().users, 1);
}

#[tokio::test]
async fn deposit_refusals_change_nothing() {
    let auth = TestAuth::start().await;
    let (mut bob, _, bob_s) = register_and_login(&auth, "bob").await;
    register_and_login(&auth, "alice").await;
    let before = auth.service().store().counts().unwrap();

    // Unknown recipient, named: RequestGrant refuses it before anything is
    // stored...
    let (code_, msg) = code(try_granted(&mut bob, deposit_for(&["alice", "carol"], b""), 0).await);
    assert_eq!(code_, Code::NotFound);
    assert_eq!(msg, "unknown recipient \"carol\"");
    // ...and the deposit checks again: one naming carol under a grant
    // asked for alice alone is refused the same way. Every deposit below is
    // refused under this one grant, which is left unused for the last.
    let grant = granted(&mut bob, deposit_for(&["alice"], b"")).await;
    let (serial, share_keys) = (grant.grant_serial, grant.share_keys);
    let under_grant = |names: &[&str], locator: &[u8]| {
        let mut d = deposit_for(names, locator);
        d.grant_serial = serial;
        d.share_keys = share_keys.clone();
        d
    };
    let (code_, msg) = code(bob.deposit(&under_grant(&["alice", "carol"], b"")).await);
    assert_eq!(code_, Code::NotFound);
    assert_eq!(msg, "unknown recipient \"carol\"");

    // Shares sealed to a share key the server never published (another
    // epoch than the grant's): named.
    let mut wrong = under_grant(&["alice"], b"");
    wrong.share_keys[0].epoch += 1;
    let (code_, msg) = code(bob.deposit(&wrong).await);
    assert_eq!(code_, Code::InvalidArgument);
    assert!(
        msg.starts_with("shares.epoch: share 1 (epoch): server ")
            && msg.contains(&format!(
                "published no share key of epoch {}",
                wrong.share_keys[0].epoch
            )),
        "{msg}"
    );

    // Oversize locator.
    let big = vec![7u8; vmail_auth::service::MAX_LOCATOR_LEN + 1];
    let (code_, msg) = code(bob.deposit(&under_grant(&["alice"], &big)).await);
    assert_eq!(code_, Code::InvalidArgument);
    assert!(
        msg.starts_with("locator: 4097 bytes, at most 4096"),
        "{msg}"
    );
    assert_eq!(auth.service().store().counts().unwrap(), before);
    let grant = auth
        .service()
        .store()
        .storage_grant(serial)
        .unwrap()
        .unwrap();
    assert_eq!(grant.deposited, None, "a refused deposit spends no grant");
    // Exactly the limit is accepted, under the grant the refusals left unused.
    bob.deposit(&under_grant(
        &["alice"],
        &big[..vmail_auth::service::MAX_LOCATOR_LEN],
    ))
    .await
    .unwrap();

    // A tampered request: recipients changed after the key was split. The
    // shares are bound to the recipients they were split for, so the
    // server's own share does not open and the deposit is refused, naming
    // the field; nothing is stored and the grant stays unused.
    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);
    let grant = request_grant(&mut raw, &bob_s.token, &["alice", "bob"])
        .await
        .unwrap();
    let d = deposit_for(&["alice"], b"loc");
    let mut msg = deposit_request(&d, &grant.share_keys, grant.grant.body.serial);
    msg.recipients = vec!["alice".into(), "bob".into()];
    let before = auth.service().store().counts().unwrap();
    let s = raw.deposit(bearer(&bob_s.token, msg)).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(
        s.message()
            .starts_with("shares: the share sealed to this server")
            && s.message().contains("does not open"),
        "{}",
        s.message()
    );
    assert_eq!(auth.service().store().counts().unwrap(), before);
    let unused = auth
        .service()
        .store()
        .storage_grant(grant.grant.body.serial)
        .unwrap()
        .unwrap();
    assert_eq!(unused.deposited, None, "a refused deposit spends no grant");
}

#[tokio::test]
async fn replayed_request_id_returns_the_first_result() {
    let auth = TestAuth::start().await;
    let (mut bob, _, _) = register_and_login(&auth, "bob").await;
    let (mut alice, _, alice_s) = register_and_login(&auth, "alice").await;
    let d = granted(&mut bob, deposit_for(&["alice"], b"loc")).await;
    let first = bob.deposit(&d).await.unwrap();
    let again = bob.deposit(&d).await.unwrap();
    assert_eq!(again.voicemail_id, first.voicemail_id);
    assert!(again.replayed);
    let pending = alice.list_pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    // The retry split the key afresh; the stored shares still give it.
    assert_eq!(
        alice
            .recover_session_key(&alice_s, &pending[0])
            .await
            .unwrap(),
        d.session_key
    );

    // The same id with other content (under the same grant) is refused, not
    // merged.
    let mut other = deposit_for(&["alice"], b"other loc");
    other.request_id = d.request_id;
    other.grant_serial = d.grant_serial;
    other.share_keys = d.share_keys.clone();
    let (code_, msg) = code(bob.deposit(&other).await);
    assert_eq!(code_, Code::AlreadyExists);
    assert!(msg.contains("request_id"), "{msg}");
    assert_eq!(auth.service().store().counts().unwrap().voicemails, 1);

    // Sealed once, ahead of the call, and sent twice: the second is the
    // same request, answered from the first, and the key still recovers.
    let d2 = granted(&mut bob, deposit_for(&["alice"], b"loc 2")).await;
    let sealed = bob.seal_deposit(&d2).unwrap();
    let first = bob.deposit_sealed(&sealed).await.unwrap();
    let again = bob.deposit_sealed(&sealed).await.unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(again.voicemail_id, first.voicemail_id);
    assert_eq!(auth.service().store().counts().unwrap().voicemails, 2);
    let pending = alice.list_pending().await.unwrap();
    let p = pending.iter().find(|p| p.id == first.voicemail_id).unwrap();
    assert_eq!(
        alice.recover_session_key(&alice_s, p).await.unwrap(),
        d2.session_key
    );
}

#[tokio::test]
async fn only_recipients_can_see_or_ack() {
    let auth = TestAuth::start().await;
    let (mut bob, _, bob_s) = register_and_login(&auth, "bob").await;
    let (mut alice, _, alice_s) = register_and_login(&auth, "alice").await;
    let (mut mallory, _, mallory_s) = register_and_login(&auth, "mallory").await;
    let d = granted(&mut bob, deposit_for(&["alice"], b"")).await;
    let r = bob.deposit(&d).await.unwrap();
    assert!(mallory.list_pending().await.unwrap().is_empty());
    // Neither a stranger nor the sender gets a share of the key.
    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);
    for (who, token) in [("mallory", &mallory_s.token), ("bob", &bob_s.token)] {
        let s = raw
            .open_share(bearer(
                token,
                pb::OpenShareRequest {
                    voicemail_id: r.voicemail_id.to_vec(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::NotFound, "{who}: {}", s.message());
        assert!(
            s.message().contains(&format!(
                "voicemail {} is not waiting for you",
                hex::encode(r.voicemail_id)
            )),
            "{who}: {}",
            s.message()
        );
    }
    let (code_, msg) = code(mallory.ack(&r.voicemail_id).await);
    assert_eq!(code_, Code::NotFound);
    assert_eq!(
        msg,
        format!(
            "voicemail {} is not pending for \"mallory\"",
            hex::encode(r.voicemail_id)
        )
    );
    // The sender cannot ack it away either.
    assert_eq!(code(bob.ack(&r.voicemail_id).await).0, Code::NotFound);
    let pending = alice.list_pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        alice
            .recover_session_key(&alice_s, &pending[0])
            .await
            .unwrap(),
        d.session_key
    );
    // A recipient cannot ack twice.
    alice.ack(&r.voicemail_id).await.unwrap();
    assert_eq!(code(alice.ack(&r.voicemail_id).await).0, Code::NotFound);
}

#[tokio::test]
async fn revoked_and_missing_tokens_are_unauthenticated() {
    let auth = TestAuth::start().await;
    let (mut alice, _, _) = register_and_login(&auth, "alice").await;
    let mut stale = alice.clone();
    alice.logout().await.unwrap();
    let (code_, msg) = code(stale.list_pending().await);
    assert_eq!(code_, Code::Unauthenticated);
    assert!(msg.contains("log in again"), "{msg}");
    assert_eq!(
        auth.service().store().counts().unwrap().sessions,
        0,
        "logout deletes the session and its master key"
    );

    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);
    let s = raw
        .list_pending(pb::ListPendingRequest {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("missing session token"));
    let mut req = tonic::Request::new(pb::ListPendingRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer zz-not-hex".parse().unwrap());
    assert_eq!(
        raw.list_pending(req).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn tokens_expire_on_the_injected_clock() {
    let clock = Arc::new(ManualClock::new(vmail_proto::unix_now()));
    let auth = TestAuth::start_with(|_| {}, clock.clone()).await;
    let (mut alice, _, alice_s) = register_and_login(&auth, "alice").await;
    assert_eq!(
        alice_s.expires_at,
        vmail_auth::service::Clock::now(&*clock) + 12 * 3600
    );
    clock.advance(12 * 3600 - 1);
    alice.list_pending().await.unwrap();
    clock.advance(1);
    let (code_, msg) = code(alice.list_pending().await);
    assert_eq!(code_, Code::Unauthenticated);
    assert_eq!(
        msg,
        format!(
            "session expired at Unix time {}: log in again",
            alice_s.expires_at
        )
    );
    // The sweeper's purge removes the expired session.
    auth.service().purge_expired().await.unwrap();
    assert_eq!(auth.service().store().counts().unwrap().sessions, 0);
}

#[tokio::test]
async fn restart_keeps_users_and_pending_voicemail() {
    let mut auth = TestAuth::start().await;
    let (mut bob, _, bob_s) = register_and_login(&auth, "bob").await;
    let alice_id = identity();
    auth.client()
        .await
        .register("alice", &password("alice"), &alice_id, None)
        .await
        .unwrap();
    let d = granted(&mut bob, deposit_for(&["alice"], b"loc")).await;
    let r = bob.deposit(&d).await.unwrap();
    auth.restart().await;
    let mut alice = auth.client().await;
    let s = alice
        .login("alice", &password("alice"), &alice_id, &[])
        .await
        .unwrap();
    let pending = alice.list_pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, r.voicemail_id);
    // The server's share key survived the restart: the share still opens.
    assert_eq!(
        alice.recover_session_key(&s, &pending[0]).await.unwrap(),
        d.session_key
    );
    // Bob's session survived too.
    let mut bob2 = auth.client().await;
    bob2.set_token(bob_s.token);
    bob2.whoami().await.unwrap();
}

#[tokio::test]
async fn voicemail_survives_a_master_key_change_and_identity_rotation() {
    let auth = TestAuth::start().await;
    let (mut alice, old_id, old_s) = register_and_login(&auth, "alice").await;
    alice.logout().await.unwrap();
    let (mut bob, _, _) = register_and_login(&auth, "bob").await;
    // Deposited while alice is logged out: it is bound to no key of hers.
    let d = granted(&mut bob, deposit_for(&["alice"], b"loc")).await;
    let r = bob.deposit(&d).await.unwrap();

    let new_id = identity();
    let mut alice = auth.client().await;
    let s = alice
        .login("alice", &password("alice"), &new_id, &[])
        .await
        .unwrap();
    assert_ne!(s.master_key_id, old_s.master_key_id);
    assert_eq!(s.certificate.identity_key, new_id.verifying_key());
    assert_ne!(s.inbox_key.public(), old_s.inbox_key.public());
    let pending = alice.list_pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        alice.recover_session_key(&s, &pending[0]).await.unwrap(),
        d.session_key
    );
    let watched = alice
        .watch_pending()
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap();
    let p = alice.open_pending(watched).unwrap();
    assert_eq!(p.id, r.voicemail_id);
    // The share is resealed for the new session's inbox key only: it does
    // not open under the old session's.
    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);
    let opened = raw
        .open_share(bearer(
            &s.token,
            pb::OpenShareRequest {
                voicemail_id: r.voicemail_id.to_vec(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let resealed = ResealedShare {
        enc: opened.enc.as_slice().try_into().unwrap(),
        ciphertext: opened.ciphertext,
    };
    let binding = ResealBinding {
        voicemail_id: &r.voicemail_id,
        recipient: &s.username,
        node_id: opened.node_id,
        index: u8::try_from(opened.index).unwrap(),
    };
    assert_eq!(
        open_resealed(&old_s.inbox_key, &resealed, &binding).unwrap_err(),
        ShareError::Open
    );
    let value = open_resealed(&s.inbox_key, &resealed, &binding).unwrap();
    assert_eq!(
        combine(
            &[value],
            p.shares.threshold,
            &p.shares.key_check,
            &p.locator
        )
        .unwrap(),
        d.session_key
    );
    // And the old session cannot recover the key at all.
    let err = alice
        .recover_session_key(&old_s, &p)
        .await
        .expect_err("the logged-out session recovers nothing");
    assert!(matches!(err, ClientError::KeyRecovery(_)), "{err}");
    // The old certificate stays valid until it expires; the current one is the new key's.
    old_s
        .certificate
        .verify(&auth.target().cluster_key, vmail_proto::unix_now())
        .unwrap();
    assert_eq!(old_s.certificate.identity_key, old_id.verifying_key());
    let current = bob.certificate("alice").await.unwrap();
    assert_eq!(current.identity_key, new_id.verifying_key());
    assert!(current.serial > old_s.certificate.serial);
}

#[tokio::test]
async fn watch_pending_pushes_new_voicemail_and_ends_at_logout() {
    let auth = TestAuth::start().await;
    let (mut bob, _, _) = register_and_login(&auth, "bob").await;
    let (mut alice, _, alice_s) = register_and_login(&auth, "alice").await;
    let d = granted(&mut bob, deposit_for(&["alice"], b"1")).await;
    let early = bob.deposit(&d).await.unwrap();
    let mut stream = alice.clone().watch_pending().await.unwrap();
    let first = alice
        .open_pending(stream.next().await.unwrap().unwrap())
        .unwrap();
    assert_eq!(first.id, early.voicemail_id);
    let d = granted(&mut bob, deposit_for(&["alice"], b"2")).await;
    let live = bob.deposit(&d).await.unwrap();
    // A voicemail for someone else is not pushed to alice.
    let other = granted(&mut bob, deposit_for(&["bob"], b"3")).await;
    bob.deposit(&other).await.unwrap();
    let second = alice
        .open_pending(stream.next().await.unwrap().unwrap())
        .unwrap();
    assert_eq!(second.id, live.voicemail_id);
    assert_eq!(
        alice.recover_session_key(&alice_s, &second).await.unwrap(),
        d.session_key
    );
    alice.logout().await.unwrap();
    let end = stream.next().await.unwrap().unwrap_err();
    assert_eq!(end.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn corrupt_or_missing_data_dir_is_refused_and_left_alone() {
    let mut auth = TestAuth::start().await;
    register_and_login(&auth, "alice").await;
    auth.stop().await;
    let db = auth.data_dir().join(files::DATABASE);

    // Truncated database.
    let original = file_bytes(&db);
    std::fs::write(&db, &original[..original.len() / 3]).unwrap();
    let truncated = file_bytes(&db);
    let err = auth.try_start().await.unwrap_err().to_string();
    assert!(err.contains("vmail-auth.redb"), "{err}");
    assert_eq!(
        file_bytes(&db),
        truncated,
        "a refused start must not touch the file"
    );

    // Garbage instead of a database.
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    let err = auth.try_start().await.unwrap_err().to_string();
    assert!(err.contains("restore it from a backup"), "{err}");
    assert_eq!(file_bytes(&db), vec![0x5a; 8192]);

    // Restored: it serves again with the user intact.
    std::fs::write(&db, &original).unwrap();
    auth.try_start().await.unwrap();
    auth.client().await.certificate("alice").await.unwrap();
    auth.stop().await;

    // Missing key file and missing directory.
    std::fs::remove_file(auth.data_dir().join(files::DATA_KEY)).unwrap();
    let err = auth.try_start().await.unwrap_err().to_string();
    assert!(err.contains("data.key is missing"), "{err}");
    std::fs::remove_dir_all(auth.data_dir()).unwrap();
    let err = auth.try_start().await.unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test]
async fn reflection_and_health_serve_generic_clients() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let auth = TestAuth::start().await;
    let mut client = ServerReflectionClient::new(auth.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"vmail.auth.v1.Auth".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("cluster")),
        "the internal service is not advertised on the public port: {names:?}"
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(auth.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "vmail.auth.v1.Auth".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn clients_refuse_a_server_from_another_ca() {
    let auth = TestAuth::start().await;
    let other = TestAuth::start().await;
    let mut target = auth.target();
    target.ca_pem = other.target().ca_pem;
    let err = vmail_node::auth_client::AuthClient::connect(&target)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach any auth server"), "{err}");
}

#[tokio::test]
async fn shutdown_ends_open_watch_streams() {
    let mut auth = TestAuth::start().await;
    let (mut alice, _, _) = register_and_login(&auth, "alice").await;
    let mut stream = alice.watch_pending().await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), auth.stop())
        .await
        .expect("stopping must not wait for an open WatchPending stream");
    let end = stream.next().await.unwrap().unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end}");
    assert!(end.message().contains("shutting down"), "{end}");
}

#[tokio::test]
async fn register_start_reveals_nothing_about_a_future_oprf_key() {
    use opaque_ke::ClientRegistration;
    let auth = TestAuth::start().await;
    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);
    let start =
        ClientRegistration::<vmail_proto::opaque::Suite>::start(&mut rand::rngs::OsRng, b"guess")
            .unwrap();
    let request = start.message.serialize().to_vec();
    let ask = || pb::RegisterStartRequest {
        username: "future-user".into(),
        registration_request: request.clone(),
        invite_code: String::new(),
    };
    let a = raw.register_start(ask()).await.unwrap().into_inner();
    let b = raw.register_start(ask()).await.unwrap().into_inner();
    // The same blinded password evaluates under a fresh OPRF key each time,
    // so no answer predicts the key the real registration will get.
    assert_eq!(a.credential_nonce.len(), 16);
    assert_ne!(a.credential_nonce, b.credential_nonce);
    assert_ne!(a.registration_response, b.registration_response);
    // The real registration gets a nonce of its own.
    auth.client()
        .await
        .register("future-user", &password("future-user"), &identity(), None)
        .await
        .unwrap();
    let stored = auth
        .service()
        .store()
        .user("future-user")
        .unwrap()
        .unwrap()
        .credential_nonce;
    assert!(stored.as_slice() != a.credential_nonce && stored.as_slice() != b.credential_nonce);
}

/// Runs RegisterStart for `user` on a raw client, returning what RegisterFinish needs.
async fn raw_register_start(
    raw: &mut pb::auth_client::AuthClient<tonic::transport::Channel>,
    user: &str,
    invite: &str,
) -> (pb::RegisterFinishRequest, ed25519_dalek::SigningKey) {
    use ed25519_dalek::Signer;
    use opaque_ke::{ClientRegistration, ClientRegistrationFinishParameters, RegistrationResponse};
    use vmail_proto::opaque::Suite;
    let pw = password(user);
    let start = ClientRegistration::<Suite>::start(&mut rand::rngs::OsRng, &pw).unwrap();
    let resp = raw
        .register_start(pb::RegisterStartRequest {
            username: user.into(),
            registration_request: start.message.serialize().to_vec(),
            invite_code: invite.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let response = RegistrationResponse::<Suite>::deserialize(&resp.registration_response).unwrap();
    let finish = start
        .state
        .finish(
            &mut rand::rngs::OsRng,
            &pw,
            response,
            ClientRegistrationFinishParameters::default(),
        )
        .unwrap();
    let upload = finish.message.serialize().to_vec();
    let name = vmail_proto::names::Username::parse(user).unwrap();
    let account = AccountKey::derive(&finish.export_key, &name);
    let id = identity();
    let context: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&upload).into();
    let proof = id.sign(&vmail_proto::cert::identity_proof_bytes(
        vmail_proto::cert::ProofPurpose::Register,
        &vmail_proto::names::Username::parse(user).unwrap(),
        &context,
        &id.verifying_key(),
        &[],
    ));
    let account_proof = account.sign_registration(&name, &upload);
    let finish = pb::RegisterFinishRequest {
        username: user.into(),
        registration_upload: upload,
        identity_key: id.verifying_key().as_bytes().to_vec(),
        identity_proof: proof.to_bytes().to_vec(),
        invite_code: invite.into(),
        credential_nonce: resp.credential_nonce,
        account_key: account.public().to_bytes().to_vec(),
        account_proof: account_proof.to_bytes().to_vec(),
    };
    (finish, id)
}

#[tokio::test]
async fn register_finish_checks_the_nonce_and_spends_an_invite_once() {
    let auth = TestAuth::start_with(
        |c| {
            c.registration.mode = RegistrationMode::Invite;
            c.registration.invite_codes = vec!["one-seat".into()];
        },
        Arc::new(vmail_auth::service::SystemClock),
    )
    .await;
    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);
    // Two registrations race for one invite: both pass RegisterStart.
    let (bob, bob_id) = raw_register_start(&mut raw, "bob", "one-seat").await;
    let (carol, _) = raw_register_start(&mut raw, "carol", "one-seat").await;

    let mut short = bob.clone();
    short.credential_nonce.truncate(3);
    let s = raw.register_finish(short).await.unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::InvalidArgument,
            "credential_nonce: 3 bytes, expected 16"
        )
    );

    // The account key must come with its proof over this very upload.
    let mut unproved = bob.clone();
    unproved.account_proof[0] ^= 1;
    let s = raw.register_finish(unproved).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(
        s.message().starts_with("account proof: does not verify"),
        "{}",
        s.message()
    );
    let mut short = bob.clone();
    short.account_key.truncate(31);
    let s = raw.register_finish(short).await.unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "account_key: 31 bytes, expected 32")
    );

    raw.register_finish(bob).await.unwrap();
    let s = raw.register_finish(carol).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(s.message().contains("already used"), "{}", s.message());
    assert_eq!(auth.service().store().counts().unwrap().users, 1);
    auth.client()
        .await
        .login("bob", &password("bob"), &bob_id, &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn key_files_from_another_server_are_refused() {
    let mut auth = TestAuth::start().await;
    let mut other = TestAuth::start().await;
    auth.stop().await;
    other.stop().await;
    let (dir, foreign) = (auth.data_dir(), other.data_dir());
    for (files_, named) in [
        (&[files::DATA_KEY][..], "data.key"),
        (&[files::OPAQUE_SETUP][..], "opaque-setup.bin"),
        (&[files::CLUSTER_KEY, files::CLUSTER_PUB][..], "cluster.key"),
    ] {
        let originals: Vec<_> = files_.iter().map(|f| file_bytes(&dir.join(f))).collect();
        for f in files_ {
            std::fs::copy(foreign.join(f), dir.join(f)).unwrap();
        }
        let err = auth.try_start().await.unwrap_err().to_string();
        assert!(
            err.contains(&format!("{named} does not belong to database")),
            "{err}"
        );
        for (f, bytes) in files_.iter().zip(originals) {
            std::fs::write(dir.join(f), bytes).unwrap();
        }
    }
    auth.try_start().await.unwrap();
}

#[tokio::test]
async fn a_full_inbox_refuses_deposits_for_that_recipient_only() {
    let clock = Arc::new(ManualClock::new(vmail_proto::unix_now()));
    let auth = TestAuth::start_with(|c| c.max_pending_per_user = 3, clock.clone()).await;
    let (mut bob, _, _) = register_and_login(&auth, "bob").await;
    let (mut alice, _, _) = register_and_login(&auth, "alice").await;
    register_and_login(&auth, "carol").await;
    // The voicemail expires with its storage grant.
    let soon = vmail_auth::service::Clock::now(&*clock) + 100;
    let short = granted_until(&mut bob, deposit_for(&["alice"], b""), soon).await;
    let expiring = bob.deposit(&short).await.unwrap().voicemail_id;
    for _ in 0..2 {
        let d = granted(&mut bob, deposit_for(&["alice"], b"")).await;
        bob.deposit(&d).await.unwrap();
    }
    // A deposit to carol and alice, under a grant of its own.
    let full = granted(&mut bob, deposit_for(&["carol", "alice"], b"")).await;
    let (code_, msg) = code(bob.deposit(&full).await);
    assert_eq!(code_, Code::ResourceExhausted);
    assert!(
        msg.starts_with("the inbox of \"alice\" is full (3 voicemails waiting)"),
        "{msg}"
    );
    assert_eq!(auth.service().store().counts().unwrap().voicemails, 3);
    let to_carol = granted(&mut bob, deposit_for(&["carol"], b"")).await;
    bob.deposit(&to_carol).await.unwrap();

    // An ack makes room: the refused deposit now goes through, under the
    // grant the refusal left unused...
    let pending = alice.list_pending().await.unwrap();
    let other = pending.iter().find(|p| p.id != expiring).unwrap().id;
    alice.ack(&other).await.unwrap();
    bob.deposit(&full).await.unwrap();
    let full = granted(&mut bob, deposit_for(&["carol", "alice"], b"")).await;
    assert_eq!(code(bob.deposit(&full).await).0, Code::ResourceExhausted);
    // ...and so does the purge of an expired voicemail.
    clock.advance(100);
    auth.service().purge_expired().await.unwrap();
    bob.deposit(&full).await.unwrap();
}

/// One test case's change to an otherwise valid request.
type Edit<T> = Box<dyn FnOnce(&mut T)>;

/// A raw, authenticated DepositRequest under grant `serial` that is valid
/// until a case changes it.
fn raw_deposit(
    token: &[u8; 32],
    share_keys: &[ShareKey],
    serial: u64,
    edit: impl FnOnce(&mut pb::DepositRequest),
) -> tonic::Request<pb::DepositRequest> {
    let d = deposit_for(&["alice"], b"loc");
    let mut msg = deposit_request(&d, share_keys, serial);
    edit(&mut msg);
    bearer(token, msg)
}

#[tokio::test]
async fn malformed_deposit_fields_are_named() {
    let auth = TestAuth::start().await;
    let (_, _, bob_s) = register_and_login(&auth, "bob").await;
    register_and_login(&auth, "alice").await;
    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);
    let grant = request_grant(&mut raw, &bob_s.token, &["alice"])
        .await
        .unwrap();
    let (serial, keys) = (grant.grant.body.serial, grant.share_keys);
    assert_eq!(keys.len(), 1, "one server, one share key");
    let cases: Vec<(&str, Edit<pb::DepositRequest>)> = vec![
        (
            "request_id: 15 bytes",
            Box::new(|m| m.request_id.truncate(15)),
        ),
        (
            "request_id: 65 bytes",
            Box::new(|m| m.request_id = vec![1; 65]),
        ),
        (
            "recipients: a voicemail needs at least one recipient",
            Box::new(|m| m.recipients.clear()),
        ),
        (
            "recipients: a voicemail may name at most 64 recipients, not 65",
            Box::new(|m| m.recipients = (0..65).map(|i| format!("user{i}")).collect()),
        ),
        (
            "recipients: username \"Alice\"",
            Box::new(|m| m.recipients = vec!["Alice".into()]),
        ),
        ("shares: none", Box::new(|m| m.shares.clear())),
        (
            "shares: 17 shares, at most 16",
            Box::new(|m| m.shares = vec![m.shares[0].clone(); 17]),
        ),
        (
            "shares.index: share 1 (index): 2, expected 1 to 1",
            Box::new(|m| m.shares[0].index = 2),
        ),
        (
            "shares.index: share 1 (index): 0, expected 1 to 1",
            Box::new(|m| m.shares[0].index = 0),
        ),
        (
            "shares.index: share 2 (index): index 1 appears twice",
            Box::new(|m| {
                let mut again = m.shares[0].clone();
                again.node_id += 1;
                m.shares.push(again);
                m.threshold = 2;
            }),
        ),
        (
            "shares.node_id: share 2 (node_id): server ",
            Box::new(|m| {
                let mut again = m.shares[0].clone();
                again.index = 2;
                m.shares.push(again);
                m.threshold = 2;
            }),
        ),
        (
            "shares.epoch: share 1 (epoch): server ",
            Box::new(|m| m.shares[0].epoch += 1),
        ),
        (
            "shares.enc: share 1 (enc): 31 bytes, expected 32",
            Box::new(|m| {
                m.shares[0].enc.pop();
            }),
        ),
        (
            "shares.ciphertext: share 1 (ciphertext): 47 bytes, expected 48",
            Box::new(|m| {
                m.shares[0].ciphertext.pop();
            }),
        ),
        (
            "threshold: 2, but 1 shares need a threshold of 1 (a majority)",
            Box::new(|m| m.threshold = 2),
        ),
        (
            "threshold: 0, but 1 shares need a threshold of 1 (a majority)",
            Box::new(|m| m.threshold = 0),
        ),
        (
            "key_check: 31 bytes, expected 32",
            Box::new(|m| {
                m.key_check.pop();
            }),
        ),
        (
            "key_check: 0 bytes, expected 32",
            Box::new(|m| m.key_check.clear()),
        ),
        (
            "metadata.content_type: 129 bytes",
            Box::new(|m| m.metadata.as_mut().unwrap().content_type = "a".repeat(129)),
        ),
        (
            "grant_serial: a deposit needs a storage grant",
            Box::new(|m| m.grant_serial = 0),
        ),
        ("metadata: missing", Box::new(|m| m.metadata = None)),
    ];
    for (expected, edit) in cases {
        let s = raw
            .deposit(raw_deposit(&bob_s.token, &keys, serial, edit))
            .await
            .unwrap_err();
        assert_eq!(
            s.code(),
            Code::InvalidArgument,
            "{expected}: {}",
            s.message()
        );
        assert!(
            s.message().starts_with(expected),
            "expected {expected:?}, got {:?}",
            s.message()
        );
    }
    assert_eq!(auth.service().store().counts().unwrap().voicemails, 0);
    // The unedited request is accepted, so each refusal above was the edit's.
    raw.deposit(raw_deposit(&bob_s.token, &keys, serial, |_| {}))
        .await
        .unwrap();
}

#[tokio::test]
async fn malformed_login_finish_fields_are_named_and_bad_passwords_fail_on_the_server_too() {
    use opaque_ke::{ClientLogin, ClientLoginFinishParameters, CredentialResponse};
    use vmail_proto::opaque::Suite;
    let auth = TestAuth::start_with(
        |c| c.max_failed_logins = 50,
        Arc::new(vmail_auth::service::SystemClock),
    )
    .await;
    let id = identity();
    auth.client()
        .await
        .register("alice", &password("alice"), &id, None)
        .await
        .unwrap();
    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);

    // One login round trip, with LoginFinish fields edited by the case.
    async fn attempt(
        raw: &mut pb::auth_client::AuthClient<tonic::transport::Channel>,
        pw: &[u8],
        id: &ed25519_dalek::SigningKey,
        edit: impl FnOnce(&mut pb::LoginFinishRequest),
    ) -> tonic::Status {
        use ed25519_dalek::Signer;
        let start = ClientLogin::<Suite>::start(&mut rand::rngs::OsRng, pw).unwrap();
        let resp = raw
            .login_start(pb::LoginStartRequest {
                username: "alice".into(),
                credential_request: start.message.serialize().to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        let response = CredentialResponse::<Suite>::deserialize(&resp.credential_response).unwrap();
        // With the wrong password the client cannot finish; send a forged finalization.
        let name = vmail_proto::names::Username::parse("alice").unwrap();
        let (finalization, account) =
            match start
                .state
                .finish(pw, response, ClientLoginFinishParameters::default())
            {
                Ok(f) => (
                    f.message.serialize().to_vec(),
                    AccountKey::derive(&f.export_key, &name),
                ),
                Err(_) => (vec![7; 64], AccountKey::derive(&[7; 64], &name)),
            };
        let vk = id.verifying_key();
        let proof = id.sign(&vmail_proto::cert::identity_proof_bytes(
            vmail_proto::cert::ProofPurpose::Login,
            &name,
            &resp.login_id,
            &vk,
            &[],
        ));
        let inbox_key = BoxSecret::generate().public();
        let account_proof = account.sign_session(&SessionStatement {
            username: &name,
            login_id: resp.login_id.as_slice().try_into().unwrap(),
            identity_key: vk.as_bytes(),
            peer_id: &[],
            inbox_key: &inbox_key,
        });
        let mut req = pb::LoginFinishRequest {
            login_id: resp.login_id,
            credential_finalization: finalization,
            identity_key: vk.as_bytes().to_vec(),
            identity_proof: proof.to_bytes().to_vec(),
            peer_id: Vec::new(),
            inbox_key: inbox_key.to_vec(),
            account_proof: account_proof.to_bytes().to_vec(),
        };
        edit(&mut req);
        raw.login_finish(req).await.map(|_| ()).unwrap_err()
    }

    let s = attempt(&mut raw, b"wrong password", &id, |_| {}).await;
    assert_eq!(
        (s.code(), s.message()),
        (Code::Unauthenticated, "wrong password for \"alice\"")
    );
    let pw = password("alice");
    let cases: Vec<(Code, &str, Edit<pb::LoginFinishRequest>)> = vec![
        (
            Code::InvalidArgument,
            "identity_key: 31 bytes, expected 32",
            Box::new(|r| {
                r.identity_key.pop();
            }),
        ),
        (
            Code::InvalidArgument,
            "identity_key: a weak (small-order) ed25519 key",
            Box::new(|r| {
                // The identity point of edwards25519 has order 1.
                let mut weak = vec![0u8; 32];
                weak[0] = 1;
                r.identity_key = weak;
            }),
        ),
        (
            Code::InvalidArgument,
            "identity_proof: 63 bytes, expected 64",
            Box::new(|r| {
                r.identity_proof.pop();
            }),
        ),
        (
            Code::PermissionDenied,
            "identity_proof: the signature does not verify",
            Box::new(|r| r.identity_proof[0] ^= 1),
        ),
        (
            Code::InvalidArgument,
            "peer_id: 129 bytes",
            Box::new(|r| r.peer_id = vec![1; 129]),
        ),
        (
            Code::FailedPrecondition,
            "login_id is unknown",
            Box::new(|r| r.login_id = vec![0; 16]),
        ),
        (
            Code::InvalidArgument,
            "login_id: 3 bytes, expected 16",
            Box::new(|r| r.login_id.truncate(3)),
        ),
        (
            Code::InvalidArgument,
            "inbox_key: 0 bytes, expected 32 (an X25519 public key)",
            Box::new(|r| r.inbox_key.clear()),
        ),
        (
            Code::InvalidArgument,
            "inbox_key: 31 bytes, expected 32 (an X25519 public key)",
            Box::new(|r| {
                r.inbox_key.pop();
            }),
        ),
        (
            Code::InvalidArgument,
            "inbox_key: not a usable X25519 public key",
            // All zeros is a small-order point: nothing sealed to it is secret.
            Box::new(|r| r.inbox_key = vec![0; 32]),
        ),
        (
            Code::InvalidArgument,
            "account_proof: 63 bytes, expected 64",
            Box::new(|r| {
                r.account_proof.pop();
            }),
        ),
        (
            Code::PermissionDenied,
            "account proof: does not verify under the account key registered with the user",
            Box::new(|r| r.account_proof[0] ^= 1),
        ),
        (
            // Another inbox key than the one the user signed: what a
            // server in the middle would swap in to read the shares.
            Code::PermissionDenied,
            "account proof: does not verify",
            Box::new(|r| r.inbox_key = BoxSecret::generate().public().to_vec()),
        ),
    ];
    for (code_, expected, edit) in cases {
        let s = attempt(&mut raw, &pw, &id, edit).await;
        assert_eq!(s.code(), code_, "{expected}: {}", s.message());
        assert!(
            s.message().starts_with(expected),
            "expected {expected:?}, got {:?}",
            s.message()
        );
    }
    assert_eq!(auth.service().store().counts().unwrap().sessions, 0);
}

#[tokio::test]
async fn expired_voicemail_is_hidden_then_erased() {
    let clock = Arc::new(ManualClock::new(vmail_proto::unix_now()));
    let auth = TestAuth::start_with(|_| {}, clock.clone()).await;
    let (mut bob, _, _) = register_and_login(&auth, "bob").await;
    let (mut alice, _, _) = register_and_login(&auth, "alice").await;
    // The voicemail's lifetime is its storage grant's: the one asked for
    // here, whatever the deposit's metadata says.
    let soon = vmail_auth::service::Clock::now(&*clock) + 100;
    let mut short = deposit_for(&["alice"], b"");
    short.meta.expires_at = soon + 365 * 86_400;
    let short = granted_until(&mut bob, short, soon).await;
    let gone = bob.deposit(&short).await.unwrap();
    let kept = granted(&mut bob, deposit_for(&["alice"], b"")).await;
    let kept = bob.deposit(&kept).await.unwrap();
    let expiries: Vec<_> = alice
        .list_pending()
        .await
        .unwrap()
        .iter()
        .map(|p| (p.id, p.meta.expires_at))
        .collect();
    assert!(
        expiries.contains(&(gone.voicemail_id, soon)),
        "{expiries:?}"
    );
    clock.advance(100);
    let ids: Vec<_> = alice
        .list_pending()
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, [kept.voicemail_id]);
    assert_eq!(code(alice.ack(&gone.voicemail_id).await).0, Code::NotFound);
    let purged = auth.service().purge_expired().await.unwrap();
    assert_eq!((purged.sessions, purged.voicemails), (0, 1));
    assert!(
        !auth
            .service()
            .store()
            .voicemail_exists(&gone.voicemail_id)
            .unwrap()
    );
    let counts = auth.service().store().counts().unwrap();
    assert_eq!((counts.voicemails, counts.grants), (1, 1));
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_that_stopped_reading() {
    let mut auth = TestAuth::start().await;
    let (mut bob, _, _) = register_and_login(&auth, "bob").await;
    let (mut alice, _, _) = register_and_login(&auth, "alice").await;
    // A backlog far larger than the stream's buffer and HTTP/2 window.
    for _ in 0..200 {
        let d = granted(
            &mut bob,
            deposit_for(&["alice"], &[7; vmail_auth::service::MAX_LOCATOR_LEN]),
        )
        .await;
        bob.deposit(&d).await.unwrap();
    }
    let unread = alice.watch_pending().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The stalled response holds its connection open until the drain
    // deadline, when the server cuts it.
    let limit = vmail_auth::server::DRAIN_TIMEOUT + std::time::Duration::from_secs(5);
    tokio::time::timeout(limit, auth.stop())
        .await
        .expect("stopping must not wait for ever on a client that stopped reading");
    // Every connection was cut, so the database is free for a new server.
    auth.try_start().await.unwrap();
    drop(unread);
}

/// A server that hangs (it accepts TCP and never finishes the TLS
/// handshake) first in the endpoint list costs the client nothing: it
/// connects to every endpoint at once and keeps the first that answers.
#[tokio::test]
async fn a_hanging_first_endpoint_does_not_delay_connecting() {
    let auth = TestAuth::start().await;
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut target = auth.target();
    let live = target.endpoints[0].clone();
    target.endpoints.insert(
        0,
        format!("https://127.0.0.1:{}", hanging.local_addr().unwrap().port()),
    );
    let started = std::time::Instant::now();
    let client = vmail_node::auth_client::AuthClient::connect(&target)
        .await
        .unwrap();
    assert_eq!(client.endpoint(), live);
    assert!(
        started.elapsed() < vmail_node::auth_client::CONNECT_TIMEOUT,
        "connecting waited {:?} on the hanging server",
        started.elapsed()
    );
}

#[tokio::test]
async fn storage_grants_are_signed_serve_one_deposit_and_end_in_a_delete_order() {
    let auth = TestAuth::start().await;
    let (_, _, bob_s) = register_and_login(&auth, "bob").await;
    let (_, _, alice_s) = register_and_login(&auth, "alice").await;
    let (_, _, carol_s) = register_and_login(&auth, "carol").await;
    let cluster_key = auth.target().cluster_key;
    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);
    let now = vmail_proto::unix_now();

    // The grant parses and verifies against the group's cluster key, as a
    // holder checks it.
    let raw_grant = request_grant(&mut raw, &bob_s.token, &["carol", "alice"])
        .await
        .unwrap();
    let (grant, share_keys) = (raw_grant.grant, raw_grant.share_keys);
    grant.verify(&cluster_key).unwrap();
    // One share key: this group's one server's.
    assert_eq!(share_keys.len(), 1);
    assert_eq!(share_keys[0].node_id, auth.service().node_id());
    let serial = grant.body.serial;
    assert!(grant.body.upload_until >= now + UPLOAD_WINDOW_SECS);
    assert!(grant.body.upload_until <= vmail_proto::unix_now() + UPLOAD_WINDOW_SECS);
    assert!(grant.body.expires_at > grant.body.upload_until);
    assert_eq!(grant.body.shards.len(), 2);

    // An unknown recipient is refused by name; no session, no grant.
    let s = request_grant(&mut raw, &bob_s.token, &["alice", "zed"])
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{}", s.message());
    assert_eq!(s.message(), "unknown recipient \"zed\"");
    let s = raw
        .request_grant(vmail_tests::grant_request_for(&["alice"]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{}", s.message());

    // A deposit without a grant says what to do.
    let d = deposit_for(&["alice", "carol"], b"locator");
    let s = raw
        .deposit(bearer(&bob_s.token, deposit_request(&d, &share_keys, 0)))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("RequestGrant"), "{}", s.message());

    // Someone else's grant is refused.
    let s = raw
        .deposit(bearer(
            &alice_s.token,
            deposit_request(&deposit_for(&["carol"], b"x"), &share_keys, serial),
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{}", s.message());

    // The deposit under the grant; its retry replays.
    let msg = deposit_request(&d, &share_keys, serial);
    let first = raw
        .deposit(bearer(&bob_s.token, msg.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    let again = raw
        .deposit(bearer(&bob_s.token, msg))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.voicemail_id.as_slice(), again.replayed),
        (first.voicemail_id.as_slice(), true)
    );

    // A second voicemail under the same grant is refused.
    let other = deposit_for(&["alice"], b"another");
    let s = raw
        .deposit(bearer(
            &bob_s.token,
            deposit_request(&other, &share_keys, serial),
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert!(
        s.message().contains("one grant serves one deposit"),
        "{}",
        s.message()
    );
    assert_eq!(auth.service().store().counts().unwrap().voicemails, 1);

    // The voicemail expires with its grant.
    let pending = raw
        .list_pending(bearer(&alice_s.token, pb::ListPendingRequest {}))
        .await
        .unwrap()
        .into_inner()
        .voicemails;
    assert_eq!(
        pending[0].metadata.as_ref().unwrap().expires_at,
        grant.body.expires_at
    );

    // The first ack carries no delete order; the last one does, and it
    // verifies against the cluster key.
    let ack = |token: &[u8; 32]| {
        bearer(
            token,
            pb::AckRequest {
                voicemail_id: first.voicemail_id.clone(),
            },
        )
    };
    let a1 = raw.ack(ack(&alice_s.token)).await.unwrap().into_inner();
    assert!(!a1.key_erased);
    assert!(a1.delete_order.is_empty());
    let a2 = raw.ack(ack(&carol_s.token)).await.unwrap().into_inner();
    assert!(a2.key_erased);
    let order = DeleteOrder::from_bytes(&a2.delete_order).unwrap();
    order.verify(&cluster_key).unwrap();
    assert_eq!(
        (order.serial, order.reason, order.expires_at),
        (serial, DeleteReason::Delivered, grant.body.expires_at)
    );
}

#[tokio::test]
async fn the_grant_quota_is_refused_with_the_next_step() {
    let auth = TestAuth::start_with(
        |c| c.max_open_grants_per_user = 2,
        Arc::new(vmail_auth::service::SystemClock),
    )
    .await;
    let (_, _, bob_s) = register_and_login(&auth, "bob").await;
    register_and_login(&auth, "alice").await;
    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);
    let first = request_grant(&mut raw, &bob_s.token, &["alice"])
        .await
        .unwrap();
    request_grant(&mut raw, &bob_s.token, &["alice"])
        .await
        .unwrap();
    let s = request_grant(&mut raw, &bob_s.token, &["alice"])
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
    assert!(
        s.message().contains("max_open_grants_per_user"),
        "{}",
        s.message()
    );
    // A deposit frees a place.
    let d = deposit_for(&["alice"], b"loc");
    raw.deposit(bearer(
        &bob_s.token,
        deposit_request(&d, &first.share_keys, first.grant.body.serial),
    ))
    .await
    .unwrap();
    request_grant(&mut raw, &bob_s.token, &["alice"])
        .await
        .unwrap();
}

#[tokio::test]
async fn open_share_reseals_the_servers_share_to_the_login_inbox_key() {
    let auth = TestAuth::start().await;
    let (mut bob, _, _) = register_and_login(&auth, "bob").await;
    let (mut alice, _, alice_s) = register_and_login(&auth, "alice").await;
    let d = granted(&mut bob, deposit_for(&["alice"], b"loc")).await;
    let r = bob.deposit(&d).await.unwrap();
    let pending = alice.list_pending().await.unwrap();
    let p = pending
        .iter()
        .find(|p| p.id == r.voicemail_id)
        .expect("the voicemail is pending for alice");
    // One server: the key is split 1-of-1, its one share on this server.
    assert_eq!(p.shares.threshold, 1);
    assert_eq!(p.shares.slots.len(), 1);
    let slot = &p.shares.slots[0];
    assert_eq!(slot.node_id, auth.service().node_id());

    let mut raw = pb::auth_client::AuthClient::new(auth.channel().await);
    let req = || pb::OpenShareRequest {
        voicemail_id: r.voicemail_id.to_vec(),
    };
    // Without a bearer token: UNAUTHENTICATED.
    let s = raw.open_share(req()).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{}", s.message());
    assert!(
        s.message().contains("missing session token"),
        "{}",
        s.message()
    );

    let opened = raw
        .open_share(bearer(&alice_s.token, req()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (opened.node_id, opened.index),
        (slot.node_id, u32::from(slot.index))
    );
    assert_eq!(opened.ciphertext.len(), SEALED_LEN);
    let resealed = ResealedShare {
        enc: opened
            .enc
            .as_slice()
            .try_into()
            .expect("a 32-byte encapsulated key"),
        ciphertext: opened.ciphertext,
    };
    let value = open_resealed(
        &alice_s.inbox_key,
        &resealed,
        &ResealBinding {
            voicemail_id: &r.voicemail_id,
            recipient: &alice_s.username,
            node_id: slot.node_id,
            index: slot.index,
        },
    )
    .expect("the share opens with the login's inbox key");
    assert_eq!(value.index, slot.index);
    let key = combine(&[value], 1, &p.shares.key_check, &p.locator).unwrap();
    assert_eq!(key, d.session_key);
}
