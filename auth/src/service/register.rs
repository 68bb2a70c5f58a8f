//! Registration: OPAQUE's two rounds, invite codes, and the identity key's
//! proof of possession.

use ed25519_dalek::Signature;
use opaque_ke::{RegistrationRequest, RegistrationUpload, ServerRegistration};
use sha2::{Digest, Sha256};
use vmail_proto::cert::{ProofPurpose, identity_proof_bytes, parse_identity_key};
use vmail_proto::names::Username;
use vmail_proto::opaque::{CREDENTIAL_NONCE_LEN, Suite, credential_id};
use vmail_proto::random_bytes;

use super::AuthService;
use super::error::{AuthError, invalid};
use crate::cluster::{Command, Reply, seal};
use crate::config::RegistrationMode;
use crate::store::RegisterOutcome;

/// Round 2 of a registration.
#[derive(Debug, Clone)]
pub struct RegisterFinish {
    /// The new user's name.
    pub username: String,
    /// OPAQUE RegistrationUpload bytes.
    pub registration_upload: Vec<u8>,
    /// ed25519 identity public key.
    pub identity_key: Vec<u8>,
    /// Proof of possession of the identity key.
    pub identity_proof: Vec<u8>,
    /// Invite code; empty for none.
    pub invite_code: String,
    /// The nonce RegisterStart handed out.
    pub credential_nonce: Vec<u8>,
    /// The account public key, derived from the OPAQUE export key.
    pub account_key: Vec<u8>,
    /// Its signature over the registration statement.
    pub account_proof: Vec<u8>,
    /// The client's address, for the per-address registration limit;
    /// `None` when unknown.
    pub client_address: Option<std::net::IpAddr>,
}

pub(super) fn verify_proof(
    proof: &[u8],
    vk: &ed25519_dalek::VerifyingKey,
    msg: &[u8],
) -> Result<(), AuthError> {
    let sig: [u8; 64] = proof.try_into().map_err(|_| {
        invalid(
            "identity_proof",
            format!("{} bytes, expected 64", proof.len()),
        )
    })?;
    vk.verify_strict(msg, &Signature::from_bytes(&sig))
        .map_err(|_| AuthError::BadIdentityProof)
}

impl AuthService {
    /// The hash under which an invite code is marked used, or `None` for
    /// an open registration without one. Refuses a missing code where one
    /// is needed, and an unknown code. On an open server a listed code is
    /// optional; it is used up like an invite and lets its holder past the
    /// registration rate limit.
    fn invite_hash(&self, code: &str) -> Result<Option<String>, AuthError> {
        let listed = |code: &str| {
            self.config
                .registration
                .invite_codes
                .iter()
                .any(|c| c == code)
        };
        match self.config.registration.mode {
            RegistrationMode::Open if code.is_empty() => Ok(None),
            RegistrationMode::Open if listed(code) => {
                Ok(Some(hex::encode(Sha256::digest(code.as_bytes()))))
            }
            RegistrationMode::Open => Err(AuthError::InviteInvalid),
            RegistrationMode::Invite if code.is_empty() => Err(AuthError::InviteRequired),
            RegistrationMode::Invite
                if !self
                    .config
                    .registration
                    .invite_codes
                    .iter()
                    .any(|c| c == code) =>
            {
                Err(AuthError::InviteInvalid)
            }
            RegistrationMode::Invite => Ok(Some(hex::encode(Sha256::digest(code.as_bytes())))),
        }
    }

    /// OPAQUE registration, round 1. Returns the registration response and
    /// the fresh credential nonce that names this registration's OPRF key.
    pub async fn register_start(
        &self,
        username: &str,
        request: &[u8],
        invite_code: &str,
    ) -> Result<(Vec<u8>, [u8; CREDENTIAL_NONCE_LEN]), AuthError> {
        let name = Username::parse(username)?;
        let request = RegistrationRequest::<Suite>::deserialize(request)
            .map_err(|e| invalid("registration_request", e.to_string()))?;
        let invite = self.invite_hash(invite_code)?;
        self.linearize().await?;
        let n = name.to_string();
        let (exists, invite_used) = self
            .db(move |s| {
                Ok((
                    s.user(&n)?.is_some(),
                    invite.map(|h| s.invite_used(&h)).transpose()?,
                ))
            })
            .await?;
        if exists {
            return Err(AuthError::UserExists(name.to_string()));
        }
        if invite_used == Some(true) {
            return Err(AuthError::InviteInvalid);
        }
        let nonce: [u8; CREDENTIAL_NONCE_LEN] = random_bytes();
        let resp = ServerRegistration::<Suite>::start(
            &self.keys.opaque_setup,
            request,
            &credential_id(&name, &nonce),
        )
        .map_err(|e| invalid("registration_request", e.to_string()))?;
        Ok((resp.message.serialize().to_vec(), nonce))
    }

    /// OPAQUE registration, round 2: creates the user.
    pub async fn register_finish(&self, req: RegisterFinish) -> Result<(), AuthError> {
        let name = Username::parse(&req.username)?;
        let credential_nonce: [u8; CREDENTIAL_NONCE_LEN] =
            req.credential_nonce.as_slice().try_into().map_err(|_| {
                invalid(
                    "credential_nonce",
                    format!(
                        "{} bytes, expected {CREDENTIAL_NONCE_LEN}",
                        req.credential_nonce.len()
                    ),
                )
            })?;
        let upload = RegistrationUpload::<Suite>::deserialize(&req.registration_upload)
            .map_err(|e| invalid("registration_upload", e.to_string()))?;
        let identity_key =
            parse_identity_key(&req.identity_key).map_err(|why| invalid("identity_key", why))?;
        let context: [u8; 32] = Sha256::digest(&req.registration_upload).into();
        verify_proof(
            &req.identity_proof,
            &identity_key,
            &identity_proof_bytes(ProofPurpose::Register, &name, &context, &identity_key, &[]),
        )?;
        let account_key = vmail_proto::account::verify_registration(
            &name,
            &req.registration_upload,
            &req.account_key,
            &req.account_proof,
        )?;
        let invite_hash = self.invite_hash(&req.invite_code)?;
        match &invite_hash {
            // An invited registration is bounded by its single-use code.
            Some(h) => {
                let h = h.clone();
                if self.db(move |s| s.invite_used(&h)).await? {
                    return Err(AuthError::InviteInvalid);
                }
            }
            None => self.charge_registration(req.client_address)?,
        }
        let password_file = ServerRegistration::<Suite>::finish(upload)
            .serialize()
            .to_vec();
        let reply = self
            .propose(Command::Register {
                password_file: seal(
                    &self.keys.data_key,
                    "password-file",
                    name.as_str().as_bytes(),
                    &password_file,
                ),
                username: name.to_string(),
                invite_hash,
                credential_nonce,
                identity_key: identity_key.to_bytes(),
                account_key,
                now: self.now(),
                cert_ttl: self.config.certificate_ttl_secs,
            })
            .await?;
        let Reply::Registered(outcome) = reply else {
            return Err(AuthError::Apply(format!(
                "unexpected reply {reply:?} to a registration"
            )));
        };
        match outcome {
            RegisterOutcome::Created => {
                tracing::info!(user = %name, "registered");
                Ok(())
            }
            RegisterOutcome::UserExists => Err(AuthError::UserExists(name.to_string())),
            RegisterOutcome::InviteUsed => Err(AuthError::InviteInvalid),
        }
    }
}
