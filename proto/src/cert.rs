//! User certificates: the cluster key's ed25519 signature over a user's name,
//! identity key, optional libp2p peer id, serial and validity.
//!
//! Anyone holding the cluster public key can verify a certificate offline.
//! The signature covers [`UserCertificate::signing_bytes`], a fixed binary
//! layout (not the protobuf encoding, which is not canonical):
//!
//! ```text
//! "vmail/v1/user-certificate" || version u32 || serial u64
//!   || u8 len || username || identity key (32) || u16 len || peer id
//!   || not_before u64 || not_after u64            (integers big-endian)
//! ```
//!
//! This module also defines the identity proof: the user's signature with the
//! identity key, which shows the server the user holds the key it certifies.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::names::{NameError, Username};
use crate::pb;

/// The certificate format version this code writes and accepts.
pub const CERT_VERSION: u32 = 1;
/// Domain-separation prefix of the certificate signing bytes.
pub const CERT_LABEL: &[u8] = b"vmail/v1/user-certificate";
/// Domain-separation prefix of an identity proof.
pub const IDENTITY_PROOF_LABEL: &[u8] = b"vmail/v1/identity-proof";
/// Longest libp2p peer id accepted in a certificate, in bytes.
pub const MAX_PEER_ID_LEN: usize = 128;

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// A field is missing or has the wrong length.
    #[error("certificate field {field} is malformed: {why}")]
    Malformed {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The certificate's version is not one this code understands.
    #[error("certificate version {0} is not supported (this build knows version {CERT_VERSION})")]
    Version(u32),
    /// The username inside is invalid.
    #[error("certificate username: {0}")]
    Username(#[from] NameError),
    /// The cluster signature does not verify.
    #[error("certificate for {0:?} has a bad signature: not issued by this cluster, or altered")]
    Signature(String),
    /// `now` is before `not_before`.
    #[error("certificate for {username:?} is not valid until Unix time {not_before}")]
    NotYetValid {
        /// Certificate subject.
        username: String,
        /// Start of validity.
        not_before: u64,
    },
    /// `now` is after `not_after`.
    #[error("certificate for {username:?} expired at Unix time {not_after}")]
    Expired {
        /// Certificate subject.
        username: String,
        /// End of validity.
        not_after: u64,
    },
    /// The group key is pinned, and the certificate carries no group
    /// signature.
    #[error(
        "certificate for {0:?} carries no group signature, and this client pins the group key: the server it came from holds no share of the group key, or fewer than the threshold of servers signed; log in again, or ask the operator (vmail-auth status)"
    )]
    NoGroupSignature(String),
    /// The group signature does not verify under the pinned group key.
    #[error(
        "certificate for {0:?} has a group signature that does not verify under the pinned group key: not signed by this group, or altered"
    )]
    GroupSignature(String),
}

/// A user certificate in domain form. Its serde form carries it between
/// the parts of one program (a Raft reply); on the wire it is the protobuf
/// `UserCertificate`, and its signature covers
/// [`UserCertificate::signing_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCertificate {
    /// Format version, [`CERT_VERSION`].
    pub version: u32,
    /// Issuer-unique serial number.
    pub serial: u64,
    /// The subject.
    pub username: Username,
    /// The subject's ed25519 identity public key.
    pub identity_key: VerifyingKey,
    /// The subject's libp2p peer id bytes, empty if none is bound.
    pub peer_id: Vec<u8>,
    /// Start of validity, Unix seconds.
    pub not_before: u64,
    /// End of validity, Unix seconds.
    pub not_after: u64,
    /// The cluster's signature over [`UserCertificate::signing_bytes`].
    pub signature: Signature,
    /// The group's threshold signature over the same bytes, once t auth
    /// servers signed it (docs/PROTOCOL.md §4.2).
    #[serde(default)]
    pub group_signature: Option<Signature>,
}

/// The fields of a certificate before it is signed.
#[derive(Debug, Clone)]
pub struct CertificateBody {
    /// Issuer-unique serial number.
    pub serial: u64,
    /// The subject.
    pub username: Username,
    /// The subject's identity key.
    pub identity_key: VerifyingKey,
    /// Optional libp2p peer id bytes.
    pub peer_id: Vec<u8>,
    /// Start of validity, Unix seconds.
    pub not_before: u64,
    /// End of validity, Unix seconds.
    pub not_after: u64,
}

fn signing_bytes(version: u32, b: &CertificateBody) -> Vec<u8> {
    let mut out = CERT_LABEL.to_vec();
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&b.serial.to_be_bytes());
    out.push(b.username.as_str().len() as u8);
    out.extend_from_slice(b.username.as_str().as_bytes());
    out.extend_from_slice(b.identity_key.as_bytes());
    out.extend_from_slice(&(b.peer_id.len() as u16).to_be_bytes());
    out.extend_from_slice(&b.peer_id);
    out.extend_from_slice(&b.not_before.to_be_bytes());
    out.extend_from_slice(&b.not_after.to_be_bytes());
    out
}

impl CertificateBody {
    /// Signs the body with the cluster key.
    pub fn sign(self, cluster_key: &SigningKey) -> UserCertificate {
        let signature = cluster_key.sign(&signing_bytes(CERT_VERSION, &self));
        UserCertificate {
            version: CERT_VERSION,
            serial: self.serial,
            username: self.username,
            identity_key: self.identity_key,
            peer_id: self.peer_id,
            not_before: self.not_before,
            not_after: self.not_after,
            signature,
            group_signature: None,
        }
    }
}

impl UserCertificate {
    /// The bytes the cluster signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        signing_bytes(
            self.version,
            &CertificateBody {
                serial: self.serial,
                username: self.username.clone(),
                identity_key: self.identity_key,
                peer_id: self.peer_id.clone(),
                not_before: self.not_before,
                not_after: self.not_after,
            },
        )
    }

    /// Checks the signature only, whatever the time.
    pub fn verify_signature(&self, cluster_key: &VerifyingKey) -> Result<(), CertError> {
        cluster_key
            .verify_strict(&self.signing_bytes(), &self.signature)
            .map_err(|_| CertError::Signature(self.username.to_string()))
    }

    /// Checks the group's threshold signature, whatever the time.
    pub fn verify_group_signature(&self, group_key: &VerifyingKey) -> Result<(), CertError> {
        let signature = self
            .group_signature
            .ok_or_else(|| CertError::NoGroupSignature(self.username.to_string()))?;
        group_key
            .verify_strict(&self.signing_bytes(), &signature)
            .map_err(|_| CertError::GroupSignature(self.username.to_string()))
    }

    /// Checks the signature and that `now` (Unix seconds) is inside the validity.
    pub fn verify(&self, cluster_key: &VerifyingKey, now: u64) -> Result<(), CertError> {
        self.verify_with_skew(cluster_key, now, 0)
    }

    /// Like [`UserCertificate::verify`], allowing `skew` seconds of clock
    /// difference between the issuer and the checker at either end.
    pub fn verify_with_skew(
        &self,
        cluster_key: &VerifyingKey,
        now: u64,
        skew: u64,
    ) -> Result<(), CertError> {
        self.verify_signature(cluster_key)?;
        if now.saturating_add(skew) < self.not_before {
            return Err(CertError::NotYetValid {
                username: self.username.to_string(),
                not_before: self.not_before,
            });
        }
        if now.saturating_sub(skew) > self.not_after {
            return Err(CertError::Expired {
                username: self.username.to_string(),
                not_after: self.not_after,
            });
        }
        Ok(())
    }
}

impl UserCertificate {
    /// The certificate's protobuf encoding, the form in which it is stored
    /// (the auth database, the client keystore) as well as sent.
    pub fn to_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&pb::UserCertificate::from(self.clone()))
    }

    /// Reads [`UserCertificate::to_bytes`]. Refuses bytes that are not a
    /// well-formed certificate; the signature is checked by
    /// [`UserCertificate::verify`], not here.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertError> {
        let wire: pb::UserCertificate =
            prost::Message::decode(bytes).map_err(|e: prost::DecodeError| {
                CertError::Malformed {
                    field: "certificate",
                    why: e.to_string(),
                }
            })?;
        Self::try_from(wire)
    }
}

impl From<UserCertificate> for pb::UserCertificate {
    fn from(c: UserCertificate) -> Self {
        Self {
            version: c.version,
            serial: c.serial,
            username: c.username.to_string(),
            identity_key: c.identity_key.as_bytes().to_vec(),
            peer_id: c.peer_id,
            not_before: c.not_before,
            not_after: c.not_after,
            signature: c.signature.to_bytes().to_vec(),
            group_signature: c
                .group_signature
                .map(|s| s.to_bytes().to_vec())
                .unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::UserCertificate> for UserCertificate {
    type Error = CertError;

    fn try_from(c: pb::UserCertificate) -> Result<Self, CertError> {
        if c.version != CERT_VERSION {
            return Err(CertError::Version(c.version));
        }
        let identity_key =
            parse_identity_key(&c.identity_key).map_err(|why| CertError::Malformed {
                field: "identity_key",
                why,
            })?;
        if c.peer_id.len() > MAX_PEER_ID_LEN {
            return Err(CertError::Malformed {
                field: "peer_id",
                why: format!(
                    "{} bytes, at most {MAX_PEER_ID_LEN} allowed",
                    c.peer_id.len()
                ),
            });
        }
        let signature: [u8; 64] =
            c.signature
                .as_slice()
                .try_into()
                .map_err(|_| CertError::Malformed {
                    field: "signature",
                    why: format!("{} bytes, expected 64", c.signature.len()),
                })?;
        let group_signature = match c.group_signature.len() {
            0 => None,
            64 => Some(Signature::from_bytes(
                c.group_signature.as_slice().try_into().expect("64 bytes"),
            )),
            n => {
                return Err(CertError::Malformed {
                    field: "group_signature",
                    why: format!("{n} bytes, expected 64 or none"),
                });
            }
        };
        Ok(Self {
            group_signature,
            version: c.version,
            serial: c.serial,
            username: Username::parse(&c.username)?,
            identity_key,
            peer_id: c.peer_id,
            not_before: c.not_before,
            not_after: c.not_after,
            signature: Signature::from_bytes(&signature),
        })
    }
}

/// Parses a 32-byte ed25519 public key, refusing weak (small-order) keys.
pub fn parse_identity_key(bytes: &[u8]) -> Result<VerifyingKey, String> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("{} bytes, expected 32", bytes.len()))?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| "not a valid ed25519 point".to_owned())?;
    if key.is_weak() {
        return Err("a weak (small-order) ed25519 key".to_owned());
    }
    Ok(key)
}

/// What an identity proof is for. Each purpose signs different bytes, so a
/// proof made for one can never be replayed as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofPurpose {
    /// Registration; the context is the SHA-256 of the OPAQUE registration upload.
    Register,
    /// Login; the context is the server's login id, fresh per login.
    Login,
}

/// The bytes an identity proof signs.
pub fn identity_proof_bytes(
    purpose: ProofPurpose,
    username: &Username,
    context: &[u8],
    identity_key: &VerifyingKey,
    peer_id: &[u8],
) -> Vec<u8> {
    let mut out = IDENTITY_PROOF_LABEL.to_vec();
    out.push(match purpose {
        ProofPurpose::Register => 1,
        ProofPurpose::Login => 2,
    });
    out.push(username.as_str().len() as u8);
    out.extend_from_slice(username.as_str().as_bytes());
    out.extend_from_slice(&(context.len() as u16).to_be_bytes());
    out.extend_from_slice(context);
    out.extend_from_slice(identity_key.as_bytes());
    out.extend_from_slice(&(peer_id.len() as u16).to_be_bytes());
    out.extend_from_slice(peer_id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(key: &SigningKey) -> CertificateBody {
        CertificateBody {
            serial: 7,
            username: Username::parse("alice").unwrap(),
            identity_key: key.verifying_key(),
            peer_id: vec![1, 2, 3],
            not_before: 100,
            not_after: 200,
        }
    }

    #[test]
    fn sign_verify_and_round_trip_through_protobuf() {
        let cluster = SigningKey::from_bytes(&[1; 32]);
        let user = SigningKey::from_bytes(&[2; 32]);
        let cert = body(&user).sign(&cluster);
        cert.verify(&cluster.verifying_key(), 150).unwrap();
        let wire: pb::UserCertificate = cert.clone().into();
        let back = UserCertificate::try_from(wire).unwrap();
        assert_eq!(back, cert);
        assert!(matches!(
            cert.verify(&cluster.verifying_key(), 99),
            Err(CertError::NotYetValid { .. })
        ));
        assert!(matches!(
            cert.verify(&cluster.verifying_key(), 201),
            Err(CertError::Expired { .. })
        ));
        let vk = cluster.verifying_key();
        cert.verify_with_skew(&vk, 90, 10).unwrap();
        cert.verify_with_skew(&vk, 210, 10).unwrap();
        assert!(cert.verify_with_skew(&vk, 89, 10).is_err());
        assert!(cert.verify_with_skew(&vk, 211, 10).is_err());
    }

    #[test]
    fn any_altered_field_or_other_issuer_fails() {
        let cluster = SigningKey::from_bytes(&[1; 32]);
        let user = SigningKey::from_bytes(&[2; 32]);
        let cert = body(&user).sign(&cluster);
        let vk = cluster.verifying_key();
        let mut c = cert.clone();
        c.username = Username::parse("mallory").unwrap();
        assert!(c.verify(&vk, 150).is_err());
        let mut c = cert.clone();
        c.identity_key = SigningKey::from_bytes(&[3; 32]).verifying_key();
        assert!(c.verify(&vk, 150).is_err());
        let mut c = cert.clone();
        c.not_after = 10_000;
        assert!(c.verify(&vk, 150).is_err());
        let mut c = cert.clone();
        c.peer_id.clear();
        assert!(c.verify(&vk, 150).is_err());
        let other = SigningKey::from_bytes(&[9; 32]).verifying_key();
        assert_eq!(
            cert.verify(&other, 150),
            Err(CertError::Signature("alice".into()))
        );
    }

    #[test]
    fn malformed_wire_certificates_are_named() {
        let cluster = SigningKey::from_bytes(&[1; 32]);
        let cert: pb::UserCertificate = body(&SigningKey::from_bytes(&[2; 32]))
            .sign(&cluster)
            .into();
        let mut c = cert.clone();
        c.signature.pop();
        assert!(matches!(
            UserCertificate::try_from(c),
            Err(CertError::Malformed {
                field: "signature",
                ..
            })
        ));
        let mut c = cert.clone();
        c.version = 2;
        assert_eq!(UserCertificate::try_from(c), Err(CertError::Version(2)));
        let mut c = cert;
        c.identity_key = vec![0; 32];
        assert!(UserCertificate::try_from(c).is_err());
    }
}
