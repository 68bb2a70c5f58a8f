//! The account key: an ed25519 key each user derives from the OPAQUE
//! export key, so only someone who knows the password can make it, and
//! which the group records with the user at registration and never changes.
//!
//! Every login signs a session statement with it: the login id, the
//! identity key to certify, the peer id and the session's inbox key. Each
//! auth server checks that signature when it applies the session to its own
//! state, so a server that proposes a session it made up (to have its
//! peers reseal key shares to an inbox key it holds) has it refused by
//! every honest one. The export key never leaves the client; the server
//! sees only the public key and the signatures.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};

use crate::cert::parse_identity_key;
use crate::names::Username;

/// HKDF salt of the account key.
const ACCOUNT_KEY_SALT: &[u8] = b"vmail/v1/account-key";
/// Label of the statement a registration signs.
const REGISTER_LABEL: &[u8] = b"vmail/v1/account-register";
/// Label of the statement a login signs.
const SESSION_LABEL: &[u8] = b"vmail/v1/account-session";

/// A user's account key, derived from the OPAQUE export key.
pub struct AccountKey(SigningKey);

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AccountKey").field(&self.public()).finish()
    }
}

impl AccountKey {
    /// The account key of `username` from the export key its OPAQUE
    /// registration or login gave: HKDF-SHA256 with salt
    /// `vmail/v1/account-key`, the export key as input and the username
    /// as info, 32 bytes taken as an ed25519 secret key.
    pub fn derive(export_key: &[u8], username: &Username) -> Self {
        let mut seed = [0u8; 32];
        Hkdf::<Sha256>::new(Some(ACCOUNT_KEY_SALT), export_key)
            .expand(username.as_str().as_bytes(), &mut seed)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Self(SigningKey::from_bytes(&seed))
    }

    /// The public key the group records with the user.
    pub fn public(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// Signs the registration statement: proof that the registering client
    /// holds the key it registers.
    pub fn sign_registration(&self, username: &Username, upload: &[u8]) -> Signature {
        self.0
            .sign(&registration_statement(username, upload, &self.public()))
    }

    /// Signs a login's session statement.
    pub fn sign_session(&self, s: &SessionStatement<'_>) -> Signature {
        self.0.sign(&s.to_bytes())
    }
}

/// What a login binds with the account key.
#[derive(Debug, Clone, Copy)]
pub struct SessionStatement<'a> {
    /// The user.
    pub username: &'a Username,
    /// The login id LoginStart handed out, fresh per login.
    pub login_id: &'a [u8; 16],
    /// The identity key the login certifies.
    pub identity_key: &'a [u8; 32],
    /// The peer id the login binds, possibly empty.
    pub peer_id: &'a [u8],
    /// The session's inbox key.
    pub inbox_key: &'a [u8; 32],
}

impl SessionStatement<'_> {
    /// The signed bytes: the label, the username (length-prefixed, u8),
    /// the login id, the identity key, the peer id (length-prefixed, u16
    /// big-endian) and the inbox key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = SESSION_LABEL.to_vec();
        push_name(&mut out, self.username);
        out.extend_from_slice(self.login_id);
        out.extend_from_slice(self.identity_key);
        out.extend_from_slice(&(self.peer_id.len() as u16).to_be_bytes());
        out.extend_from_slice(self.peer_id);
        out.extend_from_slice(self.inbox_key);
        out
    }

    /// Checks `signature` (64 bytes) by `account_key` over this statement.
    pub fn verify(&self, account_key: &[u8; 32], signature: &[u8]) -> Result<(), AccountError> {
        verify(account_key, signature, &self.to_bytes())
    }
}

/// The bytes a registration signs: the label, the username
/// (length-prefixed, u8), SHA-256 of the OPAQUE registration upload and the
/// account public key.
pub fn registration_statement(username: &Username, upload: &[u8], key: &VerifyingKey) -> Vec<u8> {
    let mut out = REGISTER_LABEL.to_vec();
    push_name(&mut out, username);
    out.extend_from_slice(&Sha256::digest(upload));
    out.extend_from_slice(key.as_bytes());
    out
}

/// Checks a registration's account key and its proof of possession.
pub fn verify_registration(
    username: &Username,
    upload: &[u8],
    account_key: &[u8],
    signature: &[u8],
) -> Result<[u8; 32], AccountError> {
    let key: [u8; 32] = account_key
        .try_into()
        .map_err(|_| AccountError::KeyLength(account_key.len()))?;
    let vk = parse_identity_key(&key).map_err(AccountError::Key)?;
    verify(
        &key,
        signature,
        &registration_statement(username, upload, &vk),
    )?;
    Ok(key)
}

fn push_name(out: &mut Vec<u8>, username: &Username) {
    out.push(username.as_str().len() as u8);
    out.extend_from_slice(username.as_str().as_bytes());
}

fn verify(account_key: &[u8; 32], signature: &[u8], msg: &[u8]) -> Result<(), AccountError> {
    let vk = parse_identity_key(account_key).map_err(AccountError::Key)?;
    let sig = Signature::from_slice(signature)
        .map_err(|_| AccountError::SignatureLength(signature.len()))?;
    vk.verify_strict(msg, &sig)
        .map_err(|_| AccountError::BadSignature)
}

/// Why an account key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The key is not 32 bytes.
    #[error("account key: {0} bytes, expected 32")]
    KeyLength(usize),
    /// The key is not a usable ed25519 key.
    #[error("account key: {0}")]
    Key(String),
    /// The signature is not 64 bytes.
    #[error("account proof: {0} bytes, expected 64")]
    SignatureLength(usize),
    /// The signature does not verify.
    #[error(
        "account proof: does not verify under the account key registered with the user (a client that derives it differently, or a forged statement)"
    )]
    BadSignature,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    #[test]
    fn the_key_depends_on_export_key_and_username_only() {
        let a = AccountKey::derive(&[7; 64], &name("alice"));
        assert_eq!(
            a.public(),
            AccountKey::derive(&[7; 64], &name("alice")).public()
        );
        assert_ne!(
            a.public(),
            AccountKey::derive(&[8; 64], &name("alice")).public()
        );
        assert_ne!(
            a.public(),
            AccountKey::derive(&[7; 64], &name("bob")).public()
        );
    }

    #[test]
    fn a_registration_proof_verifies_only_for_its_upload_and_name() {
        let key = AccountKey::derive(&[1; 64], &name("alice"));
        let sig = key.sign_registration(&name("alice"), b"upload");
        let public = key.public().to_bytes();
        assert_eq!(
            verify_registration(&name("alice"), b"upload", &public, &sig.to_bytes()),
            Ok(public)
        );
        for (user, upload) in [("alice", &b"other"[..]), ("bob", b"upload")] {
            assert_eq!(
                verify_registration(&name(user), upload, &public, &sig.to_bytes()),
                Err(AccountError::BadSignature)
            );
        }
        assert_eq!(
            verify_registration(&name("alice"), b"upload", &public[..31], &sig.to_bytes()),
            Err(AccountError::KeyLength(31))
        );
        assert!(matches!(
            verify_registration(&name("alice"), b"upload", &[0; 32], &sig.to_bytes()),
            Err(AccountError::Key(_))
        ));
    }

    #[test]
    fn a_session_statement_binds_every_field() {
        let user = name("bob");
        let key = AccountKey::derive(&[2; 64], &user);
        let public = key.public().to_bytes();
        let s = SessionStatement {
            username: &user,
            login_id: &[1; 16],
            identity_key: &[2; 32],
            peer_id: b"peer",
            inbox_key: &[3; 32],
        };
        let sig = key.sign_session(&s).to_bytes();
        assert_eq!(s.verify(&public, &sig), Ok(()));
        let other = name("carol");
        let changed = [
            SessionStatement {
                username: &other,
                ..s
            },
            SessionStatement {
                login_id: &[9; 16],
                ..s
            },
            SessionStatement {
                identity_key: &[9; 32],
                ..s
            },
            SessionStatement {
                peer_id: b"other",
                ..s
            },
            SessionStatement {
                inbox_key: &[9; 32],
                ..s
            },
        ];
        for c in changed {
            assert_eq!(c.verify(&public, &sig), Err(AccountError::BadSignature));
        }
        assert_eq!(
            s.verify(&public, &sig[..63]),
            Err(AccountError::SignatureLength(63))
        );
        let stranger = AccountKey::derive(&[2; 64], &name("eve"))
            .public()
            .to_bytes();
        assert_eq!(s.verify(&stranger, &sig), Err(AccountError::BadSignature));
    }
}
