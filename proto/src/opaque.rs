//! The OPAQUE cipher suite shared by client and server.
//!
//! ristretto255 for the OPRF and the key exchange, triple Diffie-Hellman, and
//! argon2id as the key-stretching function. `Argon2::default()` is argon2id
//! v1.3 with m = 19 MiB, t = 2, p = 1: the OWASP minimum. Only the client runs
//! it, so the server never sees the password nor pays for the stretching.

use crate::names::Username;

/// The vmail OPAQUE cipher suite.
#[derive(Debug, Clone, Copy)]
pub struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeGroup = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::key_exchange::tripledh::TripleDh;
    type Ksf = argon2::Argon2<'static>;
}

/// Domain-separation prefix of an OPAQUE credential identifier.
pub const CREDENTIAL_ID_LABEL: &[u8] = b"vmail/v1/credential/";
/// Length of the per-registration credential nonce.
pub const CREDENTIAL_NONCE_LEN: usize = 16;

/// The OPAQUE credential identifier of a registration: it selects the OPRF
/// key the server evaluates for this password file. Binding a nonce the
/// server picks at registration means nobody can query, before a user
/// registers, the OPRF key their password file will use.
pub fn credential_id(username: &Username, nonce: &[u8; CREDENTIAL_NONCE_LEN]) -> Vec<u8> {
    let name = username.as_str().as_bytes();
    let mut id = CREDENTIAL_ID_LABEL.to_vec();
    id.push(name.len() as u8);
    id.extend_from_slice(name);
    id.extend_from_slice(nonce);
    id
}

/// Argon2 memory cost in KiB (19 MiB), stated here so the docs and the
/// tests can check the suite really uses it.
pub const ARGON2_M_COST_KIB: u32 = 19 * 1024;
/// Argon2 iterations.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2 lanes.
pub const ARGON2_P_COST: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_id_layout() {
        let id = credential_id(&Username::parse("bob").unwrap(), &[0xab; 16]);
        let mut expected = b"vmail/v1/credential/".to_vec();
        expected.extend_from_slice(&[3, b'b', b'o', b'b']);
        expected.extend_from_slice(&[0xab; 16]);
        assert_eq!(id, expected);
    }

    #[test]
    fn ksf_is_owasp_argon2id() {
        let a = argon2::Argon2::default();
        let p = a.params();
        assert_eq!(p.m_cost(), ARGON2_M_COST_KIB);
        assert_eq!(p.t_cost(), ARGON2_T_COST);
        assert_eq!(p.p_cost(), ARGON2_P_COST);
        assert_eq!(argon2::Algorithm::default(), argon2::Algorithm::Argon2id);
    }
}
