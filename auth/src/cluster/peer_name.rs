//! The name in a member's TLS certificate: the subject's common name, which
//! `init` sets to the server's name (`GroupSecrets::issue`). The internal
//! service is mutual TLS under the group CA, so by the time a call arrives
//! the certificate chain is verified; this only reads the name out of it
//! (x509-parser).
//!
//! Pure: bytes in, name out.

/// The subject common name of a DER certificate, if it has exactly one.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let name = names.next()?.as_str().ok()?.to_owned();
    names.next().is_none().then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_common_name_is_read_and_not_the_issuers() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "vmail group CA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["auth-2".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "auth-2");
        let cert = params.signed_by(&key, &issuer).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("auth-2"));
        assert_eq!(
            common_name(ca_cert.der()).as_deref(),
            Some("vmail group CA")
        );
        assert_eq!(common_name(b"\x30\x03garbage"), None);
        assert_eq!(common_name(&[]), None);
    }
}
