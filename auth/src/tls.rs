//! TLS for the group's internal service: the material a member (or a
//! joining server) shows and trusts on it. Every connection there is mutual
//! TLS under the group's own CA.

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The TLS material a member (or `join`) uses on the internal service: the
/// group CA and its own CA-signed certificate and key.
#[derive(Clone)]
pub struct ClusterTls {
    /// The group CA certificate, PEM.
    pub ca_pem: String,
    /// This server's certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls").finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// The client side: trust the group CA, show this certificate.
    pub(crate) fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}
