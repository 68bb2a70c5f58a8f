//! Unit tests of [`AuthService`] over a temporary data dir and a one-node
//! Raft group, with a manual clock and no network: OPAQUE registration and
//! login, the lock-out, sessions, storage grants, deposit and its proof,
//! delivery, acks, expiry, retention, receipts and recall.

mod cluster;
mod deposit;
mod grant;
mod limits;
mod login;
mod sent;
mod share;
mod spam;
mod validate_deposit;

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
use vmail_proto::account::{AccountKey, SessionStatement};
use vmail_proto::cert::{ProofPurpose, identity_proof_bytes};
use vmail_proto::grant::StorageGrant;
use vmail_proto::keys::{MasterKey, SecretKey};
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::{Recipients, Username};
use vmail_proto::opaque::Suite;
use vmail_proto::random_bytes;
use vmail_proto::share::{BoxSecret, ShareKey};

use super::*;
use crate::cluster::Member;
use crate::config::{PolicyMode, ServerConfig};
use crate::datadir::{self, InitOptions};
use crate::store::Session;

/// Where the manual clock starts.
const T0: u64 = 1_700_000_000;
/// How long a test waits for its one-node group to elect itself.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A service over a fresh data dir, leading its own one-node group, its
/// share key published.
struct Harness {
    svc: Arc<AuthService>,
    clock: Arc<ManualClock>,
    /// The group's share keys, as a grant lists them.
    share_keys: Vec<ShareKey>,
    /// The session key behind each key check [`Harness::deposit`] made, so
    /// that [`Harness::granted`] can split it again under the real grant.
    keys: std::sync::Mutex<std::collections::HashMap<[u8; 32], SecretKey>>,
    dir: TempDir,
}

/// A logged-in user, as the client holds it.
struct LoggedIn {
    token: [u8; 32],
    master_key: MasterKey,
    session: Session,
    /// The session's inbox secret: servers reseal shares to its public key.
    inbox: BoxSecret,
}

fn password(user: &str) -> Vec<u8> {
    format!("correct horse battery staple of {user}").into_bytes()
}

impl Harness {
    /// A group whose users take voicemail from anyone and whose senders
    /// meet no quota: what the tests of grants and deposits need.
    async fn start() -> Self {
        Self::start_with(|c| {
            c.spam.default_mode = PolicyMode::Anyone;
            c.spam.voicemails_per_hour = 1_000_000;
            c.spam.refused_grants_per_minute = 1_000_000;
            c.spam.new_recipients_per_day = 1_000_000;
        })
        .await
    }

    /// A group with the default configuration changed by `edit`.
    async fn start_with(edit: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("auth-1");
        datadir::init(&InitOptions::loopback(&data)).unwrap();
        let file = data.join(datadir::files::CONFIG);
        let mut config: ServerConfig =
            toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
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
        // What the share-key duty of a serving server does first.
        svc.publish_share_key(&crate::tls::ClusterTls::of_member(svc.keys()))
            .await
            .unwrap();
        let share_keys = svc.grant_share_keys().await.unwrap();
        Self {
            svc: Arc::new(svc),
            clock,
            share_keys,
            keys: Default::default(),
            dir,
        }
    }

    /// The data dir of the server.
    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("auth-1")
    }

    async fn stop(self) {
        self.svc.raft().shutdown().await.unwrap();
    }

    /// Registers `name` with real OPAQUE, as the client does; returns the
    /// identity key the server certified.
    async fn register(&self, name: &str) -> SigningKey {
        self.register_from(name, None).await.unwrap()
    }

    /// Both rounds of a registration, from the client address `from`.
    async fn register_from(
        &self,
        name: &str,
        from: Option<std::net::IpAddr>,
    ) -> Result<SigningKey, AuthError> {
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
        let account = AccountKey::derive(&finish.export_key, &Username::parse(name).unwrap());
        let account_proof = account.sign_registration(&Username::parse(name).unwrap(), &upload);
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
                account_key: account.public().to_bytes().to_vec(),
                account_proof: account_proof.to_bytes().to_vec(),
                client_address: from,
            })
            .await?;
        Ok(identity)
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
    ) -> Result<(LoginOutcome, MasterKey, BoxSecret), AuthError> {
        let start = ClientLogin::<Suite>::start(&mut rand::rngs::OsRng, pw).unwrap();
        let (login_id, response) = self
            .svc
            .login_start(name, &start.message.serialize())
            .await?;
        let response = CredentialResponse::<Suite>::deserialize(&response).unwrap();
        let user = Username::parse(name).unwrap();
        let (finalization, master_key, account) =
            match start
                .state
                .finish(pw, response, ClientLoginFinishParameters::default())
            {
                Ok(f) => (
                    f.message.serialize().to_vec(),
                    Some(MasterKey::from_opaque_session_key(&f.session_key)),
                    AccountKey::derive(&f.export_key, &user),
                ),
                Err(ProtocolError::InvalidLoginError) => {
                    (vec![7; 64], None, AccountKey::derive(&[7; 64], &user))
                }
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
        let inbox = BoxSecret::generate();
        let account_proof = account.sign_session(&SessionStatement {
            username: &user,
            login_id: &login_id,
            identity_key: vk.as_bytes(),
            peer_id: &[],
            inbox_key: &inbox.public(),
        });
        let outcome = self
            .svc
            .login_finish(LoginFinish {
                login_id: login_id.to_vec(),
                credential_finalization: finalization,
                identity_key: vk.as_bytes().to_vec(),
                identity_proof: proof.to_bytes().to_vec(),
                peer_id: Vec::new(),
                inbox_key: inbox.public().to_vec(),
                account_proof: account_proof.to_bytes().to_vec(),
            })
            .await?;
        let master_key =
            master_key.expect("the server accepted a login the client could not finish");
        Ok((outcome, master_key, inbox))
    }

    /// A successful login, checked the way the client checks it.
    async fn login(&self, name: &str, identity: &SigningKey) -> LoggedIn {
        let (outcome, master_key, inbox) = self
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
        assert_eq!(session.inbox_key, inbox.public());
        LoggedIn {
            token: outcome.session_token,
            master_key,
            session,
            inbox,
        }
    }

    async fn register_and_login(&self, name: &str) -> LoggedIn {
        let identity = self.register(name).await;
        self.login(name, &identity).await
    }

    /// A storage grant for `who`'s voicemail to `recipients`, checked
    /// against the cluster key as a holder checks it.
    async fn grant(
        &self,
        who: &LoggedIn,
        recipients: &[&str],
        expires_at: u64,
    ) -> Result<StorageGrant, AuthError> {
        let grant = self
            .svc
            .request_grant(&who.session, grant_request(recipients, expires_at))
            .await?
            .grant;
        let back = StorageGrant::from_bytes(&grant.to_bytes()).unwrap();
        back.verify(&self.svc.keys().cluster_public_key()).unwrap();
        Ok(grant)
    }

    /// `d` with a fresh grant for its recipients and expiry, its key split
    /// again under that grant (so that the shares open).
    async fn granted(&self, who: &LoggedIn, mut d: Deposit) -> Deposit {
        let names: Vec<&str> = d.recipients.iter().map(String::as_str).collect();
        let grant = self
            .grant(who, &names, d.metadata.expires_at)
            .await
            .unwrap();
        self.with_grant(&mut d, grant.body.serial);
        d
    }

    /// Puts `d` under grant `serial`, splitting its key again under it.
    fn with_grant(&self, d: &mut Deposit, serial: u64) {
        d.grant_serial = serial;
        let key: [u8; 32] = d.key_check.as_slice().try_into().unwrap();
        let sk = self.keys.lock().unwrap().get(&key).cloned();
        if let Some(sk) = sk {
            let recipients = Recipients::parse(&d.recipients).unwrap();
            d.shares = split(&sk, &self.share_keys, serial, &recipients, &d.locator).2;
        }
    }

    /// A deposit of `session_key` for `recipients`, split among the group's
    /// share keys as the client does, under no grant yet
    /// ([`Harness::granted`]).
    fn deposit(
        &self,
        session_key: &SecretKey,
        recipients: &[&str],
        request_id: &[u8],
        expires_at: u64,
    ) -> Deposit {
        let locator = b"holder-set:v1:0123456789abcdef".to_vec();
        let canonical = Recipients::parse(recipients).unwrap();
        let (threshold, key_check, shares) =
            split(session_key, &self.share_keys, 0, &canonical, &locator);
        self.keys
            .lock()
            .unwrap()
            .insert(key_check, session_key.clone());
        Deposit {
            request_id: request_id.to_vec(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            locator,
            shares,
            threshold: threshold.into(),
            key_check: key_check.to_vec(),
            metadata: VoicemailMeta {
                size: 48_000,
                content_type: "audio/wav".into(),
                duration_ms: 3000,
                expires_at,
            },
            grant_serial: 0,
        }
    }

    /// What `who` recovers of voicemail `id` through OpenShare on this
    /// (one-server) group.
    async fn open(&self, who: &LoggedIn, d: &Delivery) -> Result<SecretKey, AuthError> {
        let opened = self.svc.open_share(&who.session, &d.id).await?;
        Ok(recover(who, d, &[opened]).expect("the share opens and recombines"))
    }
}

/// `key` split among `servers` under grant `serial`, as the deposit carries it.
fn split(
    key: &SecretKey,
    servers: &[ShareKey],
    serial: u64,
    recipients: &Recipients,
    locator: &[u8],
) -> (u8, [u8; 32], Vec<ShareIn>) {
    let (t, check, sealed) =
        vmail_proto::share::split(key, servers, serial, recipients, locator).unwrap();
    let shares = sealed
        .into_iter()
        .map(|s| ShareIn {
            node_id: s.node_id,
            epoch: s.epoch,
            index: s.index.into(),
            enc: s.enc.to_vec(),
            ciphertext: s.ciphertext,
        })
        .collect();
    (t, check, shares)
}

/// Opens resealed shares with `who`'s inbox secret and recombines them as
/// the recipient's client does.
fn recover(
    who: &LoggedIn,
    d: &Delivery,
    opened: &[OpenedShare],
) -> Result<SecretKey, vmail_proto::share::ShareError> {
    let me = Username::parse(&who.session.username).unwrap();
    let values = opened
        .iter()
        .map(|o| {
            vmail_proto::share::open_resealed(
                &who.inbox,
                &vmail_proto::share::ResealedShare {
                    enc: o.enc,
                    ciphertext: o.ciphertext.clone(),
                },
                &vmail_proto::share::ResealBinding {
                    voicemail_id: &d.id,
                    recipient: &me,
                    node_id: o.node_id,
                    index: o.index,
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    vmail_proto::share::combine(&values, d.threshold, &d.key_check, &d.locator)
}

/// A request for a grant of three shards, two needed, on three holders.
fn grant_request(recipients: &[&str], expires_at: u64) -> GrantRequest {
    GrantRequest {
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        message_id: random_bytes::<16>().to_vec(),
        data_shards: 2,
        shards: (0..3u8)
            .map(|i| ShardRequest {
                len: 24_000,
                sha256: vec![i; 32],
            })
            .collect(),
        holders: (0..3u8).map(|i| vec![i; 38]).collect(),
        expires_at,
        anonymous: false,
    }
}
