//! Digest authentication (RFC 3261 §22, RFC 2617) of the user's own
//! softphone against the local SIP password (`vmail sip set-password`).
//! Nonces are stateless: each carries its issue time under an HMAC keyed by
//! a secret drawn at start, so an unauthenticated sender costs the service
//! no memory. Only a request that answered with the right password is
//! remembered, by its response hash (over method, uri, nonce, count and
//! client nonce) until its nonce expires, so the same answer replayed is
//! challenged afresh; a softphone's next request differs in its count or
//! client nonce and is taken. Wrong passwords are counted, and past
//! [`MAX_FAILURES`] in [`FAILURE_WINDOW_SECS`] every request is refused
//! until the window ends. Pure: the caller passes `now`.

use std::collections::HashMap;

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

/// Wrong passwords (or users) taken in one window before every request
/// is refused until it ends.
pub const MAX_FAILURES: u32 = 10;
/// The window wrong passwords are counted in, seconds.
pub const FAILURE_WINDOW_SECS: u64 = 60;
/// Answers remembered; past it, new ones are challenged again until old
/// ones expire.
pub const MAX_TRACKED_ANSWERS: usize = 16_384;

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
    /// An answer already taken (a replay): challenge afresh.
    #[error("the answer was already used")]
    Replayed,
    /// Too many wrong passwords lately: refused until the window ends.
    #[error(
        "{MAX_FAILURES} wrong passwords within {FAILURE_WINDOW_SECS} s: every request is refused for {0} s more"
    )]
    LockedOut(u64),
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
        // A nonce not issued here may be from before a restart.
        matches!(
            self,
            Refusal::Missing | Refusal::Stale | Refusal::ForeignNonce | Refusal::Replayed
        )
    }
}

/// Issues nonces and checks digests for one realm.
pub struct Digest {
    key: hmac::Key,
    realm: String,
    /// Response hashes taken, with when their nonce was issued.
    used: HashMap<String, u64>,
    /// The current failure window's start and its wrong passwords.
    failures: (u64, u32),
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
            used: HashMap::new(),
            failures: (0, 0),
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A nonce issued at `now`, one of its kind: 16 hex digits of time, 16
    /// of randomness, then 32 of HMAC over both.
    pub fn nonce(&self, now: u64) -> String {
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&now.to_be_bytes());
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut body[8..]);
        let tag = hmac::sign(&self.key, &body);
        format!("{}{}", hex::encode(body), hex::encode(&tag.as_ref()[..16]))
    }

    /// When `nonce` was issued, if this service issued it.
    fn issued(&self, nonce: &str) -> Option<u64> {
        let raw = hex::decode(nonce).ok()?;
        let (body, tag) = (raw.get(..16)?, raw.get(16..)?);
        let want = hmac::sign(&self.key, body);
        if tag.len() != 16 || !bool::from(tag.ct_eq(&want.as_ref()[..16])) {
            return None;
        }
        Some(u64::from_be_bytes(body[..8].try_into().ok()?))
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
        &mut self,
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
        if now >= self.failures.0 + FAILURE_WINDOW_SECS {
            self.failures = (now, 0);
        }
        if self.failures.1 >= MAX_FAILURES {
            return Err(Refusal::LockedOut(
                self.failures.0 + FAILURE_WINDOW_SECS - now,
            ));
        }
        let nonce = param("nonce").unwrap_or_default();
        let issued = self.issued(nonce).ok_or(Refusal::ForeignNonce)?;
        if now.saturating_sub(issued) > NONCE_LIFETIME_SECS || issued > now + 5 {
            return Err(Refusal::Stale);
        }
        if param("username") != Some(user) {
            self.failures.1 += 1;
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
        if !bool::from(want.as_bytes().ct_eq(got.to_ascii_lowercase().as_bytes())) {
            self.failures.1 += 1;
            return Err(Refusal::WrongPassword);
        }
        self.used
            .retain(|_, at| now.saturating_sub(*at) <= NONCE_LIFETIME_SECS);
        if self.used.contains_key(&want) || self.used.len() >= MAX_TRACKED_ANSWERS {
            return Err(Refusal::Replayed);
        }
        self.used.insert(want, issued);
        Ok(())
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

    const URI: &str = "sip:127.0.0.1:5060;transport=udp";

    /// The header a softphone sends, answering `nonce` with count `nc`.
    fn header(
        d: &Digest,
        nonce: &str,
        user: &str,
        password: &str,
        method: &str,
        nc: &str,
    ) -> String {
        let r = response(
            user,
            d.realm(),
            password,
            method,
            URI,
            nonce,
            Some((nc, "c0ffee")),
        );
        format!(
            "Digest username=\"{user}\", realm=\"{}\", nonce=\"{nonce}\", uri=\"{URI}\", response=\"{r}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"c0ffee\"",
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
        let mut d = Digest::new("vmail");
        let n = d.nonce(1000);
        let reg = &Method::Register;
        // baresip keeps `;transport=udp` in the uri: it is hashed as sent.
        let ok = header(&d, &n, "alice", "pw", "REGISTER", "00000001");
        assert_eq!(d.check(Some(&ok), reg, "alice", "pw", 1010), Ok(()));
        assert_eq!(
            d.check(None, reg, "alice", "pw", 1010),
            Err(Refusal::Missing)
        );
        let wrong = header(&d, &n, "alice", "guess", "REGISTER", "00000002");
        assert_eq!(
            d.check(Some(&wrong), reg, "alice", "pw", 1010),
            Err(Refusal::WrongPassword)
        );
        let other = header(&d, &n, "mallory", "pw", "REGISTER", "00000002");
        assert_eq!(
            d.check(Some(&other), reg, "alice", "pw", 1010),
            Err(Refusal::WrongUser)
        );
        // Signed for another method: REGISTER's digest does not open INVITE.
        let invite = &Method::Invite;
        assert_eq!(
            d.check(Some(&ok), invite, "alice", "pw", 1010),
            Err(Refusal::WrongPassword)
        );
        let late = 1000 + NONCE_LIFETIME_SECS + 1;
        assert_eq!(
            d.check(Some(&ok), reg, "alice", "pw", late),
            Err(Refusal::Stale)
        );
        let forged_nonce = format!("{:016x}{}", 5000u64, "0".repeat(48));
        let forged = header(&d, &forged_nonce, "alice", "pw", "REGISTER", "00000001");
        assert_eq!(
            d.check(Some(&forged), reg, "alice", "pw", 5000),
            Err(Refusal::ForeignNonce)
        );
        // Another service's nonce (another key, or before a restart) is
        // foreign too, and is challenged afresh.
        let elsewhere = Digest::new("vmail");
        let theirs = header(
            &elsewhere,
            &elsewhere.nonce(1000),
            "alice",
            "pw",
            "REGISTER",
            "00000001",
        );
        assert_eq!(
            d.check(Some(&theirs), reg, "alice", "pw", 1010),
            Err(Refusal::ForeignNonce)
        );
        assert!(Refusal::ForeignNonce.challenge());
        let realm = ok.replace("realm=\"vmail\"", "realm=\"elsewhere\"");
        assert_eq!(
            d.check(Some(&realm), reg, "alice", "pw", 1010),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn an_answer_is_taken_once() {
        let mut d = Digest::new("vmail");
        let n = d.nonce(1000);
        let reg = &Method::Register;
        let first = header(&d, &n, "alice", "pw", "REGISTER", "00000001");
        assert_eq!(d.check(Some(&first), reg, "alice", "pw", 1001), Ok(()));
        // The same answer again: a replay, challenged afresh.
        assert_eq!(
            d.check(Some(&first), reg, "alice", "pw", 1002),
            Err(Refusal::Replayed)
        );
        assert!(Refusal::Replayed.challenge());
        // The softphone's next request on the nonce counts up: taken.
        let second = header(&d, &n, "alice", "pw", "REGISTER", "00000002");
        assert_eq!(d.check(Some(&second), reg, "alice", "pw", 1003), Ok(()));
        assert_eq!(
            d.check(Some(&second), reg, "alice", "pw", 1004),
            Err(Refusal::Replayed)
        );
        // Another method on the same nonce and count (baresip's SUBSCRIBE
        // after its REGISTER) is another answer.
        let sub = header(&d, &n, "alice", "pw", "SUBSCRIBE", "00000001");
        let subscribe = &Method::Subscribe;
        assert_eq!(d.check(Some(&sub), subscribe, "alice", "pw", 1005), Ok(()));
    }

    #[test]
    fn too_many_wrong_passwords_lock_everyone_out_until_the_window_ends() {
        let mut d = Digest::new("vmail");
        let reg = &Method::Register;
        for i in 0..MAX_FAILURES {
            let guess = header(
                &d,
                &d.nonce(1000),
                "alice",
                &format!("guess{i}"),
                "REGISTER",
                "00000001",
            );
            assert_eq!(
                d.check(Some(&guess), reg, "alice", "pw", 1000),
                Err(Refusal::WrongPassword)
            );
        }
        // Now even the right password is refused, so guessing learns nothing.
        let right = header(&d, &d.nonce(1010), "alice", "pw", "REGISTER", "00000001");
        assert_eq!(
            d.check(Some(&right), reg, "alice", "pw", 1010),
            Err(Refusal::LockedOut(50))
        );
        assert!(!Refusal::LockedOut(50).challenge());
        let after = 1000 + FAILURE_WINDOW_SECS;
        let right = header(&d, &d.nonce(after), "alice", "pw", "REGISTER", "00000001");
        assert_eq!(d.check(Some(&right), reg, "alice", "pw", after), Ok(()));
    }
}
