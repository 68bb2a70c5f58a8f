//! Accounts: OPAQUE registration and login (the master key both sides
//! derive, the certificate the login issues, checked against the cluster
//! key), the session's inbox key (a fresh X25519 key per login, whose
//! public half the servers reseal key shares to), the server's view of a
//! session (with the sender quotas), and logout.

use ed25519_dalek::{Signer, SigningKey};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use sha2::{Digest, Sha256};
use tonic::Code;
use vmail_proto::account::{AccountKey, SessionStatement};
use vmail_proto::cert::{ProofPurpose, UserCertificate, identity_proof_bytes};
use vmail_proto::keys::{MasterKey, MasterKeyId};
use vmail_proto::names::Username;
use vmail_proto::opaque::Suite;
use vmail_proto::pb::{self};
use vmail_proto::share::BoxSecret;

use super::{AuthClient, CLOCK_SKEW_SECS, ClientError, bearer, protocol};

/// What a login yields to the client. `Debug` leaves out the token and the
/// inbox key.
#[derive(Clone)]
pub struct LoginSession {
    /// The user.
    pub username: Username,
    /// Bearer token for authenticated calls.
    pub token: [u8; 32],
    /// The master key both sides derived; it never crossed the wire.
    pub master_key: MasterKey,
    /// Its id, as confirmed by the server.
    pub master_key_id: MasterKeyId,
    /// Session expiry, Unix seconds.
    pub expires_at: u64,
    /// The certificate the server issued for the identity key.
    pub certificate: UserCertificate,
    /// The session's inbox key: the servers reseal their shares of a
    /// voicemail's session key to its public half, which the login sent.
    /// It never leaves the client and its peer daemon.
    pub inbox_key: BoxSecret,
}

impl std::fmt::Debug for LoginSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginSession")
            .field("username", &self.username)
            .field("master_key_id", &hex::encode(self.master_key_id))
            .field("expires_at", &self.expires_at)
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

/// The server's view of a session.
#[derive(Debug, Clone)]
pub struct WhoAmI {
    /// The session's user.
    pub username: Username,
    /// The id of the session's master key.
    pub master_key_id: MasterKeyId,
    /// Session expiry, Unix seconds.
    pub expires_at: u64,
    /// The user's current certificate, verified against the cluster key.
    pub certificate: UserCertificate,
    /// How long voicemail for the user may wait, seconds.
    pub retention_secs: u64,
    /// The user's sender quotas as they stand.
    pub allowances: Vec<Allowance>,
    /// Distinct recipients who reported the user's voicemail as spam; each
    /// halves the allowance of new recipients per day.
    pub reports: u32,
}

/// One sender quota as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    /// Which: "voicemails_per_hour", "new_recipients_per_day" or
    /// "outstanding_bytes".
    pub name: String,
    /// The limit in force (after the user's reports).
    pub limit: u64,
    /// How much of it is used now.
    pub used: u64,
    /// Unix seconds when the oldest use leaves the window; `None` when
    /// nothing is used, or the use ends only with deletions.
    pub resets_at: Option<u64>,
}

impl From<pb::Allowance> for Allowance {
    fn from(a: pb::Allowance) -> Self {
        Self {
            name: a.name,
            limit: a.limit,
            used: a.used,
            resets_at: (a.resets_at != 0).then_some(a.resets_at),
        }
    }
}

impl AuthClient {
    /// Registers `username` with OPAQUE and uploads the identity key.
    pub async fn register(
        &mut self,
        username: &str,
        password: &[u8],
        identity: &SigningKey,
        invite_code: Option<&str>,
    ) -> Result<(), ClientError> {
        let name = Username::parse(username)?;
        let mut rng = rand::rngs::OsRng;
        let start = ClientRegistration::<Suite>::start(&mut rng, password).map_err(protocol)?;
        let req = pb::RegisterStartRequest {
            username: name.to_string(),
            registration_request: start.message.serialize().to_vec(),
            invite_code: invite_code.unwrap_or_default().to_owned(),
        };
        let resp = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.register_start(req).await }
            })
            .await
            .result?;
        let response = RegistrationResponse::<Suite>::deserialize(&resp.registration_response)
            .map_err(protocol)?;
        let finish = start
            .state
            .finish(
                &mut rng,
                password,
                response,
                ClientRegistrationFinishParameters::default(),
            )
            .map_err(protocol)?;
        let upload = finish.message.serialize().to_vec();
        let context: [u8; 32] = Sha256::digest(&upload).into();
        let vk = identity.verifying_key();
        let proof = identity.sign(&identity_proof_bytes(
            ProofPurpose::Register,
            &name,
            &context,
            &vk,
            &[],
        ));
        let account = AccountKey::derive(&finish.export_key, &name);
        let account_proof = account.sign_registration(&name, &upload);
        let req = pb::RegisterFinishRequest {
            username: name.to_string(),
            registration_upload: upload,
            identity_key: vk.as_bytes().to_vec(),
            identity_proof: proof.to_bytes().to_vec(),
            invite_code: invite_code.unwrap_or_default().to_owned(),
            credential_nonce: resp.credential_nonce,
            account_key: account.public().to_bytes().to_vec(),
            account_proof: account_proof.to_bytes().to_vec(),
        };
        // A retried RegisterFinish with the same nonce is recognised by the
        // group as the registration it already applied.
        self.call(|mut c| {
            let req = req.clone();
            async move { c.register_finish(req).await }
        })
        .await
        .result?;
        Ok(())
    }

    /// Logs in with OPAQUE, derives the master key, and has the server
    /// certify `identity` (and `peer_id`, if not empty). Keeps the token for
    /// later calls on this client.
    pub async fn login(
        &mut self,
        username: &str,
        password: &[u8],
        identity: &SigningKey,
        peer_id: &[u8],
    ) -> Result<LoginSession, ClientError> {
        // Both rounds must reach the same server, which holds the login
        // state in memory; if it fails in between, the login starts over.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.login_once(username, password, identity, peer_id).await {
                Err(ClientError::Server(s))
                    if attempts < 3
                        && matches!(s.code(), Code::Unavailable | Code::FailedPrecondition) =>
                {
                    tracing::debug!(why = %s.message(), "login interrupted by a failover; starting over");
                }
                other => return other,
            }
        }
    }

    async fn login_once(
        &mut self,
        username: &str,
        password: &[u8],
        identity: &SigningKey,
        peer_id: &[u8],
    ) -> Result<LoginSession, ClientError> {
        let name = Username::parse(username)?;
        let mut rng = rand::rngs::OsRng;
        let start = ClientLogin::<Suite>::start(&mut rng, password).map_err(protocol)?;
        let req = pb::LoginStartRequest {
            username: name.to_string(),
            credential_request: start.message.serialize().to_vec(),
        };
        let resp = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.login_start(req).await }
            })
            .await
            .result?;
        let credential_response =
            CredentialResponse::<Suite>::deserialize(&resp.credential_response)
                .map_err(protocol)?;
        let finish = start
            .state
            .finish(
                password,
                credential_response,
                ClientLoginFinishParameters::default(),
            )
            .map_err(|e| match e {
                opaque_ke::errors::ProtocolError::InvalidLoginError => {
                    ClientError::WrongPassword(name.to_string())
                }
                other => protocol(other),
            })?;
        let master_key = MasterKey::from_opaque_session_key(&finish.session_key);
        let vk = identity.verifying_key();
        let proof = identity.sign(&identity_proof_bytes(
            ProofPurpose::Login,
            &name,
            &resp.login_id,
            &vk,
            peer_id,
        ));
        let inbox_key = BoxSecret::generate();
        let login_id: [u8; 16] = resp
            .login_id
            .as_slice()
            .try_into()
            .map_err(|_| protocol("login id is not 16 bytes"))?;
        let account_proof =
            AccountKey::derive(&finish.export_key, &name).sign_session(&SessionStatement {
                username: &name,
                login_id: &login_id,
                identity_key: vk.as_bytes(),
                peer_id,
                inbox_key: &inbox_key.public(),
            });
        // Not retried on another server: only this one knows the login id.
        let out = self
            .rpc
            .login_finish(pb::LoginFinishRequest {
                login_id: resp.login_id,
                credential_finalization: finish.message.serialize().to_vec(),
                identity_key: vk.as_bytes().to_vec(),
                identity_proof: proof.to_bytes().to_vec(),
                peer_id: peer_id.to_vec(),
                inbox_key: inbox_key.public().to_vec(),
                account_proof: account_proof.to_bytes().to_vec(),
            })
            .await?
            .into_inner();
        if out.master_key_id.as_slice() != master_key.id() {
            return Err(protocol("the server's master key id differs from ours"));
        }
        let token: [u8; 32] = out
            .session_token
            .as_slice()
            .try_into()
            .map_err(|_| protocol("session token is not 32 bytes"))?;
        let certificate = self.check_cert(out.certificate, &name)?;
        if certificate.identity_key != vk || certificate.peer_id != peer_id {
            return Err(protocol(
                "the issued certificate does not carry our identity key and peer id",
            ));
        }
        self.token = Some(token);
        Ok(LoginSession {
            username: name,
            token,
            master_key_id: master_key.id(),
            master_key,
            expires_at: out.expires_at,
            certificate,
            inbox_key,
        })
    }

    fn check_cert(
        &self,
        cert: Option<pb::UserCertificate>,
        expected: &Username,
    ) -> Result<UserCertificate, ClientError> {
        let cert = UserCertificate::try_from(cert.ok_or_else(|| protocol("no certificate"))?)?;
        cert.verify_with_skew(&self.cluster_key, vmail_proto::unix_now(), CLOCK_SKEW_SECS)?;
        if let Some(group_key) = &self.group_key {
            cert.verify_group_signature(group_key)?;
        }
        if &cert.username != expected {
            return Err(protocol(format!(
                "asked for {expected}'s certificate, got {}'s",
                cert.username
            )));
        }
        Ok(cert)
    }

    /// A user's current certificate, verified against the cluster key.
    pub async fn certificate(&mut self, username: &str) -> Result<UserCertificate, ClientError> {
        let name = Username::parse(username)?;
        let req = pb::GetCertificateRequest {
            username: name.to_string(),
        };
        let resp = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.get_certificate(req).await }
            })
            .await
            .result?;
        self.check_cert(resp.certificate, &name)
    }

    /// The server's view of this client's session, with the user's current
    /// certificate verified.
    pub async fn whoami(&mut self) -> Result<WhoAmI, ClientError> {
        let token = self.require_token()?;
        let me = self
            .call(|mut c| async move { c.who_am_i(bearer(token, pb::WhoAmIRequest {})).await })
            .await
            .result?;
        let username = Username::parse(&me.username)?;
        Ok(WhoAmI {
            certificate: self.check_cert(me.certificate, &username)?,
            master_key_id: me
                .master_key_id
                .as_slice()
                .try_into()
                .map_err(|_| protocol("master key id is not 16 bytes"))?,
            expires_at: me.expires_at,
            retention_secs: me.retention_secs,
            allowances: me.allowances.into_iter().map(Into::into).collect(),
            reports: me.reports,
            username,
        })
    }

    /// Sets how long voicemail for this user may wait before it expires
    /// unread (0: the group's default); returns the retention in force.
    pub async fn set_retention(&mut self, retention_secs: u64) -> Result<u64, ClientError> {
        let token = self.require_token()?;
        let req = pb::SetRetentionRequest { retention_secs };
        Ok(self
            .call(|mut c| async move { c.set_retention(bearer(token, req)).await })
            .await
            .result?
            .retention_secs)
    }

    /// Revokes the session on the server.
    pub async fn logout(&mut self) -> Result<(), ClientError> {
        let token = self.require_token()?;
        let answer = self
            .call(|mut c| async move { c.logout(bearer(token, pb::LogoutRequest {})).await })
            .await;
        match answer.result {
            Ok(_) => {}
            // An earlier attempt revoked the token before its server failed.
            Err(s) if answer.retried && s.code() == Code::Unauthenticated => {}
            Err(s) => return Err(s.into()),
        }
        self.token = None;
        Ok(())
    }
}
