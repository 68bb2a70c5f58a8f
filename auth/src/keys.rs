//! The keys of a group and of one server: the secrets every member shares
//! ([`GroupSecrets`]: CA, cluster signing key, OPAQUE setup, data key), what
//! a running server loads ([`ServerKeys`]), and the public values that tie a
//! database to its key files ([`KeyBinding`]). The data directory
//! ([`crate::datadir`]) reads and writes them.

use ed25519_dalek::{SigningKey, VerifyingKey};
use opaque_ke::ServerSetup;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use vmail_proto::keys::SecretKey;
use vmail_proto::opaque::Suite;
use vmail_proto::random_bytes;

/// The secrets every member of a group shares.
pub struct GroupSecrets {
    /// Group CA certificate, PEM.
    pub ca_cert_pem: String,
    /// Group CA private key, PEM.
    pub ca_key_pem: String,
    /// Signs user certificates.
    pub cluster_key: SigningKey,
    /// The OPAQUE server setup.
    pub opaque_setup: ServerSetup<Suite>,
    /// Seals secrets in the log, snapshots and database.
    pub data_key: SecretKey,
}

impl std::fmt::Debug for GroupSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSecrets").finish_non_exhaustive()
    }
}

/// The parameters of the group CA. Issuing needs only these and the CA
/// key: the issuer name and key identifier come out the same every time.
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "vmail cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca_params)
}

impl GroupSecrets {
    /// Fresh secrets for a new group.
    pub fn generate() -> Result<Self, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params()?.self_signed(&ca_key)?;
        Ok(Self {
            ca_cert_pem: ca_cert.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            cluster_key: SigningKey::from_bytes(&random_bytes()),
            opaque_setup: ServerSetup::<Suite>::new(&mut rand::rngs::OsRng),
            data_key: SecretKey::random(),
        })
    }

    /// Issues a certificate and key, signed by the group CA, for `name` with
    /// the given subject alternative names, valid from now on for
    /// `valid_for` (or without end). Servers use one for TLS on both ports;
    /// `join` uses a short-lived one to fetch the group keys.
    pub fn issue(
        &self,
        name: &str,
        sans: Vec<String>,
        valid_for: Option<std::time::Duration>,
    ) -> Result<(String, String), rcgen::Error> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::new(ca_params()?, &ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, name);
        if let Some(d) = valid_for {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::minutes(5);
            params.not_after = now + d;
        }
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The keys a running server uses, loaded from the data directory.
/// `Debug` shows only public values.
pub struct ServerKeys {
    /// Cluster CA certificate, PEM.
    pub ca_cert_pem: String,
    /// Cluster CA private key, PEM: members issue certificates with it.
    pub ca_key_pem: String,
    /// Server TLS certificate, PEM.
    pub server_cert_pem: String,
    /// Server TLS key, PEM.
    pub server_key_pem: String,
    /// Signs user certificates.
    pub cluster_key: SigningKey,
    /// The OPAQUE server setup.
    pub opaque_setup: ServerSetup<Suite>,
    /// Seals secrets in the database.
    pub data_key: SecretKey,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys")
            .field(
                "cluster_public_key",
                &hex::encode(self.cluster_key.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

impl ServerKeys {
    /// The cluster public key clients verify certificates with.
    pub fn cluster_public_key(&self) -> VerifyingKey {
        self.cluster_key.verifying_key()
    }

    /// The public values the database checks these keys against.
    pub fn binding(&self) -> KeyBinding {
        KeyBinding::of(&self.opaque_setup, &self.cluster_key)
    }
}

impl KeyBinding {
    /// The binding of an OPAQUE setup and a cluster key.
    pub fn of(opaque_setup: &ServerSetup<Suite>, cluster_key: &SigningKey) -> Self {
        Self {
            opaque_public_key: opaque_setup
                .keypair()
                .public()
                .serialize()
                .to_vec()
                .try_into()
                .expect("a ristretto255 public key is 32 bytes"),
            cluster_public_key: cluster_key.verifying_key().to_bytes(),
        }
    }
}

/// Public values that tie a database to the key files it was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyBinding {
    /// The OPAQUE server's public key.
    pub opaque_public_key: [u8; 32],
    /// The cluster's certificate-signing public key.
    pub cluster_public_key: [u8; 32],
}

/// One of the keys a database is bound to ([`KeyBinding`]), as a database
/// that refuses it names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundKey {
    /// The data key: it must open the database's sealed check value.
    DataKey,
    /// The OPAQUE server setup: its public key must match.
    OpaqueSetup,
    /// The cluster signing key: its public key must match.
    ClusterKey,
}

impl std::fmt::Display for BoundKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BoundKey::DataKey => "data key",
            BoundKey::OpaqueSetup => "OPAQUE setup",
            BoundKey::ClusterKey => "cluster key",
        })
    }
}
