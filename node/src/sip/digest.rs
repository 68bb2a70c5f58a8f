//! Digest authentication (RFC 3261 §22, RFC 2617) of the user's own
//! softphone against the local SIP password (`vmail sip set-password`).
//! Nonces are stateless: each carries its issue time under an HMAC keyed by
//! a secret drawn at start, so an unauthenticated sender costs the service
//! no memory. Pure: the caller passes `now`.

use md5::{Digest as _, Md5};
use ring::hmac;
use rsipstack::sip::Method;
use rsipstack::sip::headers::auth::{Algorithm, Qop, Scheme};
use rsipstack::sip::typed::Tokenize as _;
use rsipstack::sip::typed::WwwAuthenticate;
use rsipstack::sip::typed::tokenizers::AuthTokenizer;
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

    /// Checks an `Authorization` header's value on a `method` request
    /// against `user`'s `password`. The header is read by rsipstack's
    /// tokenizer, and the digest is computed over its `uri` exactly as the
    /// softphone sent it (re-serialising the URI would change
    /// `transport=udp` to `UDP` and break baresip's digest).
    pub fn check(
        &self,
        header: Option<&str>,
        method: &Method,
        user: &str,
        password: &str,
        now: u64,
    ) -> Result<(), Refusal> {
        let Some(tok) = header.and_then(|h| AuthTokenizer::tokenize(h).ok()) else {
            return Err(Refusal::Missing);
        };
        let param = |name: &str| {
            tok.params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        if !tok.scheme.eq_ignore_ascii_case("digest") || param("realm") != Some(self.realm.as_str())
        {
            return Err(Refusal::Missing);
        }
        let nonce = param("nonce").unwrap_or_default();
        let issued = self.issued(nonce).ok_or(Refusal::ForeignNonce)?;
        if now.saturating_sub(issued) > NONCE_LIFETIME_SECS || issued > now + 5 {
            return Err(Refusal::Stale);
        }
        if param("username") != Some(user) {
            return Err(Refusal::WrongUser);
        }
        if param("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("md5")) {
            return Err(Refusal::WrongPassword);
        }
        let qop = match param("qop") {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => Some((
                param("nc").unwrap_or_default(),
                param("cnonce").unwrap_or_default(),
            )),
            Some(_) => return Err(Refusal::WrongPassword),
        };
        let want = response(
            user,
            &self.realm,
            password,
            &method.to_string(),
            param("uri").unwrap_or_default(),
            nonce,
            qop,
        );
        let got = param("response").unwrap_or_default();
        if bool::from(want.as_bytes().ct_eq(got.to_ascii_lowercase().as_bytes())) {
            Ok(())
        } else {
            Err(Refusal::WrongPassword)
        }
    }
}

/// The MD5 digest response of RFC 2617 §3.2.2, over the request's
/// method and `uri` as sent, with `qop=auth` as `(nc, cnonce)` or without.
pub fn response(
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let h = |s: String| hex::encode(Md5::digest(s.as_bytes()));
    let ha1 = h(format!("{user}:{realm}:{password}"));
    let ha2 = h(format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => h(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => h(format!("{ha1}:{nonce}:{ha2}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header a softphone sends for `uri`, answering `nonce`.
    fn header(
        d: &Digest,
        nonce: &str,
        user: &str,
        password: &str,
        method: &str,
        uri: &str,
    ) -> String {
        let r = response(
            user,
            d.realm(),
            password,
            method,
            uri,
            nonce,
            Some(("00000001", "c0ffee")),
        );
        format!(
            "Digest username=\"{user}\", realm=\"{}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{r}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\"",
            d.realm()
        )
    }

    #[test]
    fn the_response_is_rfc_2617s() {
        // RFC 2617 §3.5's example.
        let r = response(
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn the_right_password_passes_and_everything_else_is_refused() {
        let d = Digest::new("vmail");
        let n = d.nonce(1000);
        let reg = &Method::Register;
        // baresip keeps `;transport=udp` in the uri: hashed as sent.
        let uri = "sip:127.0.0.1:5060;transport=udp";
        let ok = header(&d, &n, "alice", "pw", "REGISTER", uri);
        assert_eq!(d.check(Some(&ok), reg, "alice", "pw", 1010), Ok(()));
        assert_eq!(
            d.check(None, reg, "alice", "pw", 1010),
            Err(Refusal::Missing)
        );
        let wrong = header(&d, &n, "alice", "guess", "REGISTER", uri);
        assert_eq!(
            d.check(Some(&wrong), reg, "alice", "pw", 1010),
            Err(Refusal::WrongPassword)
        );
        let other = header(&d, &n, "mallory", "pw", "REGISTER", uri);
        assert_eq!(
            d.check(Some(&other), reg, "alice", "pw", 1010),
            Err(Refusal::WrongUser)
        );
        // Signed for another method: REGISTER's digest does not open INVITE.
        assert_eq!(
            d.check(Some(&ok), &Method::Invite, "alice", "pw", 1010),
            Err(Refusal::WrongPassword)
        );
        assert_eq!(
            d.check(
                Some(&ok),
                reg,
                "alice",
                "pw",
                1000 + NONCE_LIFETIME_SECS + 1
            ),
            Err(Refusal::Stale)
        );
        let forged = header(
            &d,
            &format!("{:016x}{}", 5000u64, "0".repeat(32)),
            "alice",
            "pw",
            "REGISTER",
            uri,
        );
        assert_eq!(
            d.check(Some(&forged), reg, "alice", "pw", 5000),
            Err(Refusal::ForeignNonce)
        );
        // Another service's nonce (another key) is foreign too.
        let elsewhere = Digest::new("vmail");
        let theirs = header(
            &elsewhere,
            &elsewhere.nonce(1000),
            "alice",
            "pw",
            "REGISTER",
            uri,
        );
        assert_eq!(
            d.check(Some(&theirs), reg, "alice", "pw", 1010),
            Err(Refusal::ForeignNonce)
        );
        let realm = ok.replace("realm=\"vmail\"", "realm=\"elsewhere\"");
        assert_eq!(
            d.check(Some(&realm), reg, "alice", "pw", 1010),
            Err(Refusal::Missing)
        );
    }
}
