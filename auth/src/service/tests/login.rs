//! Registration, login, the lock-out, session expiry and logout, through
//! the service with real OPAQUE on the client side.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn register_and_log_in_with_real_opaque() {
    let h = Harness::start().await;
    let identity = h.register("alice").await;
    let user = h.svc.store().user("alice").unwrap().unwrap();
    assert_eq!(user.certificate.identity_key, identity.verifying_key());
    assert_eq!(user.registered_at, T0);
    assert_eq!(h.svc.certificate("alice").await.unwrap(), user.certificate);

    let me = h.login("alice", &identity).await;
    // Both sides derived the same master key; the server keeps it, sealed.
    assert_eq!(me.session.master_key, me.master_key);
    assert_eq!(me.session.username, "alice");
    assert_eq!(me.session.created_at, T0);
    assert_eq!(me.session.expires_at, T0 + h.svc.config().session_ttl_secs);
    // The login's certificate is now the current one.
    let current = h.svc.certificate("alice").await.unwrap();
    assert!(current.serial > user.certificate.serial);
    assert_eq!(current.not_before, T0);

    // A second login is a second session with another master key.
    let again = h.login("alice", &identity).await;
    assert_ne!(again.token, me.token);
    assert_ne!(again.master_key, me.master_key);
    assert_eq!(h.svc.store().counts().unwrap().sessions, 2);

    // The name is now taken.
    let start = ClientRegistration::<Suite>::start(&mut rand::rngs::OsRng, b"pw").unwrap();
    let err = h
        .svc
        .register_start("alice", &start.message.serialize(), "")
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthError::UserExists(ref u) if u == "alice"),
        "{err:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_refused_and_an_unknown_user_is_named() {
    let h = Harness::start().await;
    let identity = h.register("alice").await;
    let err = h
        .try_login("alice", b"not the password", &identity)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthError::WrongPassword(ref u) if u == "alice"),
        "{err:?}"
    );
    assert_eq!(h.svc.store().counts().unwrap().sessions, 0);

    let err = h
        .try_login("nobody", b"whatever", &identity)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthError::UnknownUser(ref u) if u == "nobody"),
        "{err:?}"
    );
    let err = h.svc.certificate("nobody").await.unwrap_err();
    assert!(matches!(err, AuthError::UnknownUser(_)), "{err:?}");

    // The right password still works.
    h.login("alice", &identity).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_lock_the_user_out_until_the_window_ends() {
    let h = Harness::start().await;
    let max = h.svc.config().max_failed_logins;
    let window = h.svc.config().lockout_window_secs;
    let alice = h.register("alice").await;
    let bob = h.register("bob").await;
    for _ in 0..max {
        let err = h.try_login("alice", b"a guess", &alice).await.unwrap_err();
        assert!(matches!(err, AuthError::WrongPassword(_)), "{err:?}");
    }
    // Now even the right password is refused, before any OPAQUE work.
    let locked = |err: AuthError| match err {
        AuthError::LockedOut {
            username,
            retry_after_secs,
        } => {
            assert_eq!(username, "alice");
            retry_after_secs
        }
        other => panic!("expected a lock-out, got {other:?}"),
    };
    let err = h
        .try_login("alice", &password("alice"), &alice)
        .await
        .unwrap_err();
    assert_eq!(locked(err), window);
    // Other users are not affected.
    h.login("bob", &bob).await;

    h.clock.advance(window - 1);
    let err = h
        .try_login("alice", &password("alice"), &alice)
        .await
        .unwrap_err();
    assert_eq!(locked(err), 1);

    h.clock.advance(1);
    h.login("alice", &alice).await;
    // A success clears the count: as many failures as allowed lock nobody out.
    for _ in 0..max - 1 {
        let err = h.try_login("alice", b"a guess", &alice).await.unwrap_err();
        assert!(matches!(err, AuthError::WrongPassword(_)), "{err:?}");
    }
    h.login("alice", &alice).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_expires_on_the_manual_clock() {
    let h = Harness::start().await;
    let ttl = h.svc.config().session_ttl_secs;
    let me = h.register_and_login("alice").await;
    h.clock.advance(ttl - 1);
    let session = h.svc.authenticate(&me.token).await.unwrap();
    assert_eq!(session.username, "alice");
    assert_eq!(session.master_key, me.master_key);
    h.clock.advance(1);
    let err = h.svc.authenticate(&me.token).await.unwrap_err();
    assert!(
        matches!(err, AuthError::SessionExpired(t) if t == T0 + ttl),
        "{err:?}"
    );
    let err = h.svc.authenticate_for_write(&me.token).await.unwrap_err();
    assert!(matches!(err, AuthError::SessionExpired(_)), "{err:?}");
    // The purge then erases it.
    let purged = h.svc.purge_expired().await.unwrap();
    assert_eq!((purged.sessions, purged.voicemails), (1, 0));
    let err = h.svc.authenticate(&me.token).await.unwrap_err();
    assert!(matches!(err, AuthError::BadToken), "{err:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_the_token() {
    let h = Harness::start().await;
    let identity = h.register("alice").await;
    let first = h.login("alice", &identity).await;
    let second = h.login("alice", &identity).await;
    h.svc.logout(&first.session).await.unwrap();
    let err = h.svc.authenticate(&first.token).await.unwrap_err();
    assert!(matches!(err, AuthError::BadToken), "{err:?}");
    let err = h
        .svc
        .authenticate_for_write(&first.token)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::BadToken), "{err:?}");
    // Only that session ended.
    h.svc.authenticate(&second.token).await.unwrap();
    let err = h.svc.authenticate(&[]).await.unwrap_err();
    assert!(matches!(err, AuthError::NoToken), "{err:?}");
    let err = h.svc.authenticate(&random_bytes::<32>()).await.unwrap_err();
    assert!(matches!(err, AuthError::BadToken), "{err:?}");
    // A deposit on the revoked session is refused.
    let mut d = h.deposit(&SecretKey::random(), &["alice"], &random_bytes::<16>(), 0);
    // The session check comes before the grant's, so any serial will do.
    h.with_grant(&mut d, 1);
    let err = h.svc.deposit(&first.session, d).await.unwrap_err();
    assert!(matches!(err, AuthError::BadToken), "{err:?}");
    assert_eq!(h.svc.store().counts().unwrap().voicemails, 0);
    h.stop().await;
}
