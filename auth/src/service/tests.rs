//! Unit tests of [`AuthService`] over a temporary data dir and a one-node
//! Raft group, with a manual clock and no network: OPAQUE registration and
//! login, the lock-out, sessions, deposit, delivery, acks and expiry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use opaque_ke::errors::ProtocolError;
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use vmail_proto::cert::{ProofPurpose, identity_proof_bytes};
use vmail_proto::keys::{DeliveryContext, DepositContext, MasterKey, SecretKey};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::{Recipients, Username};
use vmail_proto::opaque::Suite;
use vmail_proto::random_bytes;

use super::*;
use crate::cluster::Member;
use crate::datadir::{self, InitOptions};
use crate::store::Session;

/// Where the manual clock starts.
const T0: u64 = 1_700_000_000;
/// How long a test waits for its one-node group to elect itself.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A service over a fresh data dir, leading its own one-node group.
struct Harness {
    svc: AuthService,
    clock: Arc<ManualClock>,
    _dir: TempDir,
}

/// A logged-in user, as the client holds it.
struct LoggedIn {
    token: [u8; 32],
    master_key: MasterKey,
    session: Session,
}

fn password(user: &str) -> Vec<u8> {
    format!("correct horse battery staple of {user}").into_bytes()
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("auth-1");
        datadir::init(&InitOptions::loopback(&data)).unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let svc = crate::server::open(&data, clock.clone()).await.unwrap();
        let raft = svc.raft();
        let id = raft.metrics().borrow().id;
        // A one-node group never dials anyone, so the URLs are never used.
        let me = Member {
            name: svc.config().name.clone(),
            api_url: "https://127.0.0.1:1".into(),
            raft_url: "https://127.0.0.1:1".into(),
        };
        raft.initialize(BTreeMap::from([(id, me)])).await.unwrap();
        raft.wait(Some(LEADER_TIMEOUT))
            .metrics(|m| m.current_leader == Some(m.id), "leader")
            .await
            .unwrap();
        assert!(svc.is_leader());
        Self {
            svc,
            clock,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.svc.raft().shutdown().await.unwrap();
    }

    /// Registers `name` with real OPAQUE, as the client does; returns the
    /// identity key the server certified.
    async fn register(&self, name: &str) -> SigningKey {
        let pw = password(name);
        let identity = SigningKey::from_bytes(&random_bytes());
        let mut rng = rand::rngs::OsRng;
        let start = ClientRegistration::<Suite>::start(&mut rng, &pw).unwrap();
        let (response, nonce) = self
            .svc
            .register_start(name, &start.message.serialize(), "")
            .await
            .unwrap();
        let response = RegistrationResponse::<Suite>::deserialize(&response).unwrap();
        let finish = start
            .state
            .finish(
                &mut rng,
                &pw,
                response,
                ClientRegistrationFinishParameters::default(),
            )
            .unwrap();
        let upload = finish.message.serialize().to_vec();
        let context: [u8; 32] = Sha256::digest(&upload).into();
        let vk = identity.verifying_key();
        let proof = identity.sign(&identity_proof_bytes(
            ProofPurpose::Register,
            &Username::parse(name).unwrap(),
            &context,
            &vk,
            &[],
        ));
        self.svc
            .register_finish(RegisterFinish {
                username: name.into(),
                registration_upload: upload,
                identity_key: vk.as_bytes().to_vec(),
                identity_proof: proof.to_bytes().to_vec(),
                invite_code: String::new(),
                credential_nonce: nonce.to_vec(),
            })
            .await
            .unwrap();
        identity
    }

    /// Both rounds of a login with `pw`, as the client does. A client
    /// with the wrong password cannot finish OPAQUE (it sees
    /// `InvalidLoginError` and would stop); to have the server judge the
    /// attempt too, it then sends a made-up finalization.
    async fn try_login(
        &self,
        name: &str,
        pw: &[u8],
        identity: &SigningKey,
    ) -> Result<(LoginOutcome, MasterKey), AuthError> {
        let start = ClientLogin::<Suite>::start(&mut rand::rngs::OsRng, pw).unwrap();
        let (login_id, response) = self
            .svc
            .login_start(name, &start.message.serialize())
            .await?;
        let response = CredentialResponse::<Suite>::deserialize(&response).unwrap();
        let (finalization, master_key) =
            match start
                .state
                .finish(pw, response, ClientLoginFinishParameters::default())
            {
                Ok(f) => (
                    f.message.serialize().to_vec(),
                    Some(MasterKey::from_opaque_session_key(&f.session_key)),
                ),
                Err(ProtocolError::InvalidLoginError) => (vec![7; 64], None),
                Err(e) => panic!("client side of the login failed: {e}"),
            };
        let vk = identity.verifying_key();
        let proof = identity.sign(&identity_proof_bytes(
            ProofPurpose::Login,
            &Username::parse(name).unwrap(),
            &login_id,
            &vk,
            &[],
        ));
        let outcome = self
            .svc
            .login_finish(LoginFinish {
                login_id: login_id.to_vec(),
                credential_finalization: finalization,
                identity_key: vk.as_bytes().to_vec(),
                identity_proof: proof.to_bytes().to_vec(),
                peer_id: Vec::new(),
            })
            .await?;
        let master_key =
            master_key.expect("the server accepted a login the client could not finish");
        Ok((outcome, master_key))
    }

    /// A successful login, checked the way the client checks it.
    async fn login(&self, name: &str, identity: &SigningKey) -> LoggedIn {
        let (outcome, master_key) = self
            .try_login(name, &password(name), identity)
            .await
            .unwrap();
        assert_eq!(outcome.master_key_id, master_key.id());
        let cert = &outcome.certificate;
        assert_eq!(cert.username.as_str(), name);
        assert_eq!(cert.identity_key, identity.verifying_key());
        cert.verify(&self.svc.keys().cluster_public_key(), self.svc.now())
            .unwrap();
        let session = self.svc.authenticate(&outcome.session_token).await.unwrap();
        LoggedIn {
            token: outcome.session_token,
            master_key,
            session,
        }
    }

    async fn register_and_login(&self, name: &str) -> LoggedIn {
        let identity = self.register(name).await;
        self.login(name, &identity).await
    }
}

/// A deposit of `session_key` for `recipients`, wrapped as the client's
/// `NewDeposit::wrap_key` does.
fn deposit(
    sender: &MasterKey,
    session_key: &SecretKey,
    recipients: &[&str],
    request_id: &[u8],
    expires_at: u64,
) -> Deposit {
    let locator = b"holder-set:v1:0123456789abcdef".to_vec();
    let canonical = Recipients::parse(recipients).unwrap();
    let wrapped_key = sender.wrap_deposit(
        session_key,
        &DepositContext {
            request_id,
            recipients: &canonical,
            locator: &locator,
        },
    );
    Deposit {
        request_id: request_id.to_vec(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        locator,
        wrapped_key,
        metadata: VoicemailMeta {
            size: 48_000,
            content_type: "audio/wav".into(),
            duration_ms: 3000,
            expires_at,
        },
    }
}

/// Opens a delivered key as the recipient's client does.
fn unwrap_delivery(d: &Delivery, master_key: &MasterKey) -> Option<SecretKey> {
    master_key
        .unwrap_delivery(
            &d.wrapped_key,
            &DeliveryContext {
                voicemail_id: &d.id,
                recipients: &Recipients::parse(&d.recipients).unwrap(),
                locator: &d.locator,
            },
        )
        .ok()
}

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
    assert_eq!(h.svc.purge_expired().await.unwrap(), (1, 0));
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
    let d = deposit(
        &first.master_key,
        &SecretKey::random(),
        &["alice"],
        &random_bytes::<16>(),
        0,
    );
    let err = h.svc.deposit(&first.session, d).await.unwrap_err();
    assert!(matches!(err, AuthError::BadToken), "{err:?}");
    assert_eq!(h.svc.store().counts().unwrap().voicemails, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_is_rewrapped_for_each_recipient_and_erased_by_the_last_ack() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let carol = h.register_and_login("carol").await;

    let session_key = SecretKey::random();
    let request_id = random_bytes::<16>();
    let d = deposit(
        &alice.master_key,
        &session_key,
        &["carol", "bob"],
        &request_id,
        0,
    );
    let (id, replayed) = h.svc.deposit(&alice.session, d.clone()).await.unwrap();
    assert!(!replayed);
    // A retry, re-wrapped under a fresh nonce, is answered with the same id.
    let retry = deposit(
        &alice.master_key,
        &session_key,
        &["carol", "bob"],
        &request_id,
        0,
    );
    assert_ne!(retry.wrapped_key, d.wrapped_key);
    assert_eq!(
        h.svc.deposit(&alice.session, retry).await.unwrap(),
        (id, true)
    );

    for who in [&bob, &carol] {
        let list = h.svc.list_pending(&who.session).await.unwrap();
        assert_eq!(list.len(), 1);
        let got = &list[0];
        assert_eq!(got.id, id);
        assert_eq!(got.recipients, ["bob", "carol"]);
        assert_eq!(got.locator, d.locator);
        assert_eq!(got.deposited_at, T0);
        assert_eq!(got.sender_certificate.username.as_str(), "alice");
        assert_eq!(
            got.metadata,
            VoicemailMeta {
                expires_at: T0 + h.svc.config().default_voicemail_ttl_secs,
                ..d.metadata.clone()
            }
        );
        // Re-wrapped under this recipient's master key, and no one else's.
        assert_eq!(
            unwrap_delivery(got, &who.master_key),
            Some(session_key.clone())
        );
        assert_ne!(got.wrapped_key, d.wrapped_key);
        for other in [&alice, &bob, &carol] {
            if other.session.username != who.session.username {
                assert!(unwrap_delivery(got, &other.master_key).is_none());
            }
        }
        let one = h.svc.pending_one(&who.session, id).await.unwrap().unwrap();
        assert_eq!(
            unwrap_delivery(&one, &who.master_key),
            Some(session_key.clone())
        );
    }

    // The sender is not a recipient.
    assert!(h.svc.list_pending(&alice.session).await.unwrap().is_empty());
    assert!(
        h.svc
            .pending_one(&alice.session, id)
            .await
            .unwrap()
            .is_none()
    );
    let err = h.svc.ack(&alice.session, &id).await.unwrap_err();
    assert!(matches!(err, AuthError::NotPending { .. }), "{err:?}");

    assert!(!h.svc.ack(&bob.session, &id).await.unwrap());
    assert!(h.svc.list_pending(&bob.session).await.unwrap().is_empty());
    let err = h.svc.ack(&bob.session, &id).await.unwrap_err();
    assert!(matches!(err, AuthError::NotPending { .. }), "{err:?}");
    assert!(h.svc.store().voicemail_exists(&id).unwrap());

    assert!(
        h.svc.ack(&carol.session, &id).await.unwrap(),
        "the last ack"
    );
    assert!(!h.svc.store().voicemail_exists(&id).unwrap());
    assert!(h.svc.list_pending(&carol.session).await.unwrap().is_empty());
    let counts = h.svc.store().counts().unwrap();
    assert_eq!((counts.voicemails, counts.grants), (0, 0));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deposit_refusals_are_named_and_store_nothing() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    h.register("bob").await;
    let sk = SecretKey::random();

    let d = deposit(
        &alice.master_key,
        &sk,
        &["bob", "zed"],
        &random_bytes::<16>(),
        0,
    );
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(
        matches!(err, AuthError::UnknownRecipient(ref r) if r == "zed"),
        "{err:?}"
    );

    // Wrapped for another request id: the key does not open in this context.
    let mut d = deposit(&alice.master_key, &sk, &["bob"], &random_bytes::<16>(), 0);
    d.request_id = random_bytes::<16>().to_vec();
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(matches!(err, AuthError::WrapFailed), "{err:?}");

    // A field validate_deposit refuses comes back named.
    let d = deposit(
        &alice.master_key,
        &sk,
        &["bob"],
        &random_bytes::<16>(),
        T0 - 1,
    );
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::InvalidArgument {
                field: "metadata.expires_at",
                ..
            }
        ),
        "{err:?}"
    );

    // Another voicemail under a used request id.
    let request_id = random_bytes::<16>();
    let d = deposit(&alice.master_key, &sk, &["bob"], &request_id, 0);
    h.svc.deposit(&alice.session, d).await.unwrap();
    let d = deposit(
        &alice.master_key,
        &SecretKey::random(),
        &["bob"],
        &request_id,
        0,
    );
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(matches!(err, AuthError::RequestIdReused), "{err:?}");

    let counts = h.svc.store().counts().unwrap();
    assert_eq!((counts.voicemails, counts.grants), (1, 1));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_voicemail_is_hidden_then_purged() {
    let h = Harness::start().await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let sk = SecretKey::random();
    let short = deposit(
        &alice.master_key,
        &sk,
        &["bob"],
        &random_bytes::<16>(),
        T0 + 100,
    );
    let (gone, _) = h.svc.deposit(&alice.session, short).await.unwrap();
    let long = deposit(&alice.master_key, &sk, &["bob"], &random_bytes::<16>(), 0);
    let (kept, _) = h.svc.deposit(&alice.session, long).await.unwrap();

    h.clock.advance(99);
    let ids: Vec<_> = h
        .svc
        .list_pending(&bob.session)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&gone) && ids.contains(&kept));
    assert_eq!(h.svc.purge_expired().await.unwrap(), (0, 0));

    h.clock.advance(1);
    let list = h.svc.list_pending(&bob.session).await.unwrap();
    assert_eq!(list.iter().map(|d| d.id).collect::<Vec<_>>(), [kept]);
    assert!(
        h.svc
            .pending_one(&bob.session, gone)
            .await
            .unwrap()
            .is_none()
    );
    let err = h.svc.ack(&bob.session, &gone).await.unwrap_err();
    assert!(matches!(err, AuthError::NotPending { .. }), "{err:?}");
    // Hidden, but its key is still held until the purge.
    assert!(h.svc.store().voicemail_exists(&gone).unwrap());

    assert_eq!(h.svc.purge_expired().await.unwrap(), (0, 1));
    assert!(!h.svc.store().voicemail_exists(&gone).unwrap());
    assert!(h.svc.store().voicemail_exists(&kept).unwrap());
    assert_eq!(h.svc.store().counts().unwrap().grants, 1);
    h.stop().await;
}
