//! TLS on both of a server's ports, and the material a member (or a joining
//! server) shows and trusts on the group's internal service. The public API
//! is server-authenticated TLS under the group CA; every connection to the
//! internal service is mutual TLS under it.

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::keys::ServerKeys;

/// The public API's TLS: this server's certificate; clients show none.
pub fn public_server(keys: &ServerKeys) -> ServerTlsConfig {
    ServerTlsConfig::new().identity(identity(keys))
}

/// The internal service's TLS: this server's certificate, and only callers
/// that show a certificate from the group CA.
pub fn internal_server(keys: &ServerKeys) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(identity(keys))
        .client_ca_root(Certificate::from_pem(&keys.ca_cert_pem))
}

fn identity(keys: &ServerKeys) -> Identity {
    Identity::from_pem(&keys.server_cert_pem, &keys.server_key_pem)
}

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
    /// What a member shows and trusts: the group CA and its own server
    /// certificate.
    pub fn of_member(keys: &ServerKeys) -> Self {
        Self {
            ca_pem: keys.ca_cert_pem.clone(),
            cert_pem: keys.server_cert_pem.clone(),
            key_pem: keys.server_key_pem.clone(),
        }
    }

    /// The client side: trust the group CA, show this certificate.
    pub(crate) fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}
