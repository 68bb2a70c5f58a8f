//! Digest authentication (RFC 3261 §22, RFC 2617) of the user's own
//! softphone against the local SIP password (`vmail sip set-password`).
//! Nonces are stateless: each carries its issue time under an HMAC keyed by
//! a secret drawn at start, so an unauthenticated sender costs the service
//! no memory. Pure: the caller passes `now`.

use ring::hmac;
use rsipstack::sip::headers::auth::{Algorithm, Qop, Scheme};
use rsipstack::sip::typed::{Authorization, WwwAuthenticate};
use rsipstack::sip::{DigestGenerator, Method};
use subtle::ConstantTimeEq;

/// How long a nonce stays good, seconds. A softphone that sends an older
/// one is challenged again with `stale=true`, without re-asking its user.
pub const NONCE_LIFETIME_SECS: u64 = 300;

/// Why a request's credentials were not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Authorization` header, or one for another realm: challenge.
    #[error("no credentials for this realm")]
    Missing,
    /// The nonce is ours but too old: challenge again, `stale=true`.
    #[error("the nonce has expired")]
    Stale,
    /// A nonce this service never issued.
    #[error("the nonce was not issued here")]
    ForeignNonce,
    /// Credentials for a user other than the logged-in one.
    #[error("the credentials name another user")]
    WrongUser,
    /// The digest does not match the SIP password.
    #[error("the digest does not match the SIP password")]
    WrongPassword,
}

impl Refusal {
    /// Whether the answer is a fresh challenge (401) rather than 403.
    pub fn challenge(self) -> bool {
        matches!(self, Refusal::Missing | Refusal::Stale)
    }
}

/// Issues nonces and checks digests for one realm.
pub struct Digest {
    key: hmac::Key,
    realm: String,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digest")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

impl Digest {
    /// A digest checker for `realm` with a fresh nonce key.
    pub fn new(realm: &str) -> Self {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        Digest {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            realm: realm.to_owned(),
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A nonce issued at `now`: 16 hex digits of time, then 32 of HMAC.
    pub fn nonce(&self, now: u64) -> String {
        let t = now.to_be_bytes();
        let tag = hmac::sign(&self.key, &t);
        format!("{}{}", hex::encode(t), hex::encode(&tag.as_ref()[..16]))
    }

    /// When `nonce` was issued, if this service issued it.
    fn issued(&self, nonce: &str) -> Option<u64> {
        let raw = hex::decode(nonce).ok()?;
        let (t, tag) = (raw.get(..8)?, raw.get(8..)?);
        let want = hmac::sign(&self.key, t);
        if tag.len() != 16 || !bool::from(tag.ct_eq(&want.as_ref()[..16])) {
            return None;
        }
        Some(u64::from_be_bytes(t.try_into().ok()?))
    }

    /// The `WWW-Authenticate` of a 401.
    pub fn challenge(&self, now: u64, stale: bool) -> WwwAuthenticate {
        WwwAuthenticate {
            scheme: Scheme::Digest,
            realm: self.realm.clone(),
            nonce: self.nonce(now),
            algorithm: Some(Algorithm::Md5),
            qop: Some(Qop::Auth),
            stale: stale.then(|| "true".to_owned()),
            ..Default::default()
        }
    }

    /// Checks `auth` on a `method` request against `user`'s `password`.
    pub fn check(
        &self,
        auth: Option<&Authorization>,
        method: &Method,
        user: &str,
        password: &str,
        now: u64,
    ) -> Result<(), Refusal> {
        let auth = match auth {
            Some(a) if a.realm == self.realm && a.scheme == Scheme::Digest => a,
            _ => return Err(Refusal::Missing),
        };
        let issued = self.issued(&auth.nonce).ok_or(Refusal::ForeignNonce)?;
        if now.saturating_sub(issued) > NONCE_LIFETIME_SECS || issued > now + 5 {
            return Err(Refusal::Stale);
        }
        if auth.username != user {
            return Err(Refusal::WrongUser);
        }
        let want = DigestGenerator::from(auth, password, method).compute();
        if bool::from(want.as_bytes().ct_eq(auth.response.as_bytes())) {
            Ok(())
        } else {
            Err(Refusal::WrongPassword)
        }
    }
}

#[cfg(test)]
mod tests {
    use rsipstack::sip::headers::auth::AuthQop;

    use super::*;

    fn answer(d: &Digest, nonce: &str, user: &str, password: &str) -> Authorization {
        let uri: rsipstack::sip::Uri = "sip:127.0.0.1".try_into().unwrap();
        let qop = AuthQop::Auth {
            cnonce: "c0ffee".into(),
            nc: 1,
        };
        let response = DigestGenerator {
            username: user,
            password,
            nonce,
            uri: &uri,
            realm: d.realm(),
            method: &Method::Register,
            qop: Some(&qop),
            algorithm: Algorithm::Md5,
        }
        .compute();
        Authorization {
            scheme: Scheme::Digest,
            username: user.into(),
            realm: d.realm().into(),
            nonce: nonce.into(),
            uri,
            response,
            algorithm: Some(Algorithm::Md5),
            opaque: None,
            qop: Some(qop),
        }
    }

    #[test]
    fn the_right_password_passes_and_everything_else_is_refused() {
        let d = Digest::new("vmail");
        let n = d.nonce(1000);
        let ok = answer(&d, &n, "alice", "pw");
        let m = &Method::Register;
        assert_eq!(d.check(Some(&ok), m, "alice", "pw", 1010), Ok(()));
        assert_eq!(d.check(None, m, "alice", "pw", 1010), Err(Refusal::Missing));
        let wrong = answer(&d, &n, "alice", "guess");
        assert_eq!(
            d.check(Some(&wrong), m, "alice", "pw", 1010),
            Err(Refusal::WrongPassword)
        );
        let other = answer(&d, &n, "mallory", "pw");
        assert_eq!(
            d.check(Some(&other), m, "alice", "pw", 1010),
            Err(Refusal::WrongUser)
        );
        // Signed for another method: REGISTER's digest does not open INVITE.
        assert_eq!(
            d.check(Some(&ok), &Method::Invite, "alice", "pw", 1010),
            Err(Refusal::WrongPassword)
        );
        assert_eq!(
            d.check(Some(&ok), m, "alice", "pw", 1000 + NONCE_LIFETIME_SECS + 1),
            Err(Refusal::Stale)
        );
        let forged = answer(
            &d,
            &format!("{:016x}{}", 5000u64, "0".repeat(32)),
            "alice",
            "pw",
        );
        assert_eq!(
            d.check(Some(&forged), m, "alice", "pw", 5000),
            Err(Refusal::ForeignNonce)
        );
        // Another service's nonce (another key) is foreign too.
        let elsewhere = Digest::new("vmail");
        let theirs = answer(&elsewhere, &elsewhere.nonce(1000), "alice", "pw");
        assert_eq!(
            d.check(Some(&theirs), m, "alice", "pw", 1010),
            Err(Refusal::ForeignNonce)
        );
    }
}
