//! The web inbox's gate, pure: which requests reach the page and its API.
//!
//! The page holds a logged-in session, so every request must
//! - name this daemon's own address in `Host` (a page that reached it
//!   through another name, DNS rebinding, is refused);
//! - come from this page's origin when it names one (`Origin`);
//! - carry the per-start token, as the cookie the token URL set;
//! - and, when it changes something (any method but GET and HEAD), also
//!   carry this page's `Origin` and the CSRF token in `X-Vmail-Csrf`.

use std::net::SocketAddr;

use subtle::ConstantTimeEq;

/// Header a change must carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-vmail-csrf";

/// The facts of a request the gate decides on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask<'a> {
    /// GET or HEAD: reads only.
    pub safe: bool,
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// The `Cookie` header.
    pub cookie: Option<&'a str>,
    /// The `X-Vmail-Csrf` header.
    pub csrf: Option<&'a str>,
    /// `token=` in the query string.
    pub url_token: Option<&'a str>,
}

/// What the gate lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The request carries the cookie: serve it.
    Serve,
    /// The token URL: set the cookie, and send the browser to the page
    /// without the token in its address bar.
    SetCookie,
}

/// Why the gate refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `Host` names something else than this daemon's address.
    #[error(
        "Host {got:?} is not this daemon's address ({want}): requests through another name are refused (DNS rebinding); open the URL `vmail node run --web` printed"
    )]
    WrongHost {
        /// The header, or "" when missing.
        got: String,
        /// The names accepted.
        want: String,
    },
    /// `Origin` names another site.
    #[error("requests from {0} are refused: only this page may call its API")]
    OtherOrigin(String),
    /// No token cookie.
    #[error(
        "no token: open the URL `vmail node run --web` printed, which carries it (it is also in the data dir, file web.url)"
    )]
    NoToken,
    /// A token that is not this start's.
    #[error(
        "wrong token: the daemon makes a new one at every start; open the URL it printed this time (data dir, file web.url)"
    )]
    WrongToken,
    /// A change without this page's origin and CSRF token.
    #[error(
        "a change needs this page's Origin and CSRF token (X-Vmail-Csrf): reload the page and try again"
    )]
    Csrf,
}

impl Refusal {
    /// The HTTP status: 401 for the token, 403 for the rest.
    pub fn status(&self) -> u16 {
        match self {
            Self::NoToken | Self::WrongToken => 401,
            _ => 403,
        }
    }
}

/// The per-start secrets and the names this daemon answers to.
#[derive(Clone)]
pub struct Gate {
    token: String,
    csrf: String,
    hosts: Vec<String>,
    cookie: String,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Gate {
    /// A gate for a page served on `addr`, with fresh `token` and `csrf`
    /// secrets (hex).
    pub fn new(addr: SocketAddr, token: String, csrf: String) -> Self {
        let mut hosts = vec![addr.to_string()];
        if addr.ip().is_loopback() {
            hosts.push(format!("localhost:{}", addr.port()));
        }
        Gate {
            token,
            csrf,
            hosts,
            // Cookies ignore ports: a name of its own per port keeps two
            // daemons on one machine from overwriting each other's.
            cookie: format!("vmail_web_{}", addr.port()),
        }
    }

    /// The URL that carries the token, on the first name served.
    pub fn url(&self) -> String {
        format!("http://{}/?token={}", self.hosts[0], self.token)
    }

    /// The CSRF token, which the page reads from `/api/session`.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// The `Set-Cookie` value for the token.
    pub fn set_cookie(&self) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            self.cookie, self.token
        )
    }

    fn cookie_token<'a>(&self, header: &'a str) -> Option<&'a str> {
        header.split(';').find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == self.cookie).then_some(value)
        })
    }

    fn own_origin(&self, origin: &str) -> bool {
        origin
            .strip_prefix("http://")
            .is_some_and(|h| self.hosts.iter().any(|ok| ok == h))
    }

    /// Whether `ask` may pass, and how.
    pub fn check(&self, ask: &Ask<'_>) -> Result<Pass, Refusal> {
        let host = ask.host.unwrap_or_default();
        if !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Err(Refusal::WrongHost {
                got: host.to_owned(),
                want: self.hosts.join(" or "),
            });
        }
        if let Some(o) = ask.origin
            && !self.own_origin(o)
        {
            return Err(Refusal::OtherOrigin(o.to_owned()));
        }
        if let Some(t) = ask.url_token
            && ask.safe
        {
            return if same(t, &self.token) {
                Ok(Pass::SetCookie)
            } else {
                Err(Refusal::WrongToken)
            };
        }
        match ask.cookie.and_then(|c| self.cookie_token(c)) {
            None => return Err(Refusal::NoToken),
            Some(t) if !same(t, &self.token) => return Err(Refusal::WrongToken),
            Some(_) => {}
        }
        if !ask.safe {
            let csrf_ok = ask.csrf.is_some_and(|c| same(c, &self.csrf));
            if !csrf_ok || ask.origin.is_none() {
                return Err(Refusal::Csrf);
            }
        }
        Ok(Pass::Serve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate::new(
            "127.0.0.1:8380".parse().unwrap(),
            "t0k".into(),
            "c5rf".into(),
        )
    }

    const COOKIE: &str = "other=1; vmail_web_8380=t0k";

    fn read() -> Ask<'static> {
        Ask {
            safe: true,
            host: Some("127.0.0.1:8380"),
            cookie: Some(COOKIE),
            ..Ask::default()
        }
    }

    fn change() -> Ask<'static> {
        Ask {
            safe: false,
            origin: Some("http://127.0.0.1:8380"),
            csrf: Some("c5rf"),
            ..read()
        }
    }

    #[test]
    fn the_page_with_its_cookie_passes_and_localhost_is_the_same_page() {
        let g = gate();
        assert_eq!(g.check(&read()), Ok(Pass::Serve));
        assert_eq!(g.check(&change()), Ok(Pass::Serve));
        let local = Ask {
            host: Some("localhost:8380"),
            origin: Some("http://localhost:8380"),
            ..change()
        };
        assert_eq!(g.check(&local), Ok(Pass::Serve));
        assert_eq!(g.url(), "http://127.0.0.1:8380/?token=t0k");
        assert!(g.set_cookie().starts_with("vmail_web_8380=t0k;"));
        assert!(g.set_cookie().contains("HttpOnly; SameSite=Strict"));
    }

    #[test]
    fn another_host_name_is_refused_even_with_the_cookie() {
        let g = gate();
        for host in [
            None,
            Some("evil.example:8380"),
            Some("127.0.0.1:8381"),
            Some("127.0.0.1"),
        ] {
            let e = g.check(&Ask { host, ..read() }).unwrap_err();
            assert!(matches!(e, Refusal::WrongHost { .. }), "{host:?}: {e}");
            assert_eq!(e.status(), 403);
        }
        // A daemon on a public address does not answer to localhost.
        let public = Gate::new("10.0.0.5:80".parse().unwrap(), "t".into(), "c".into());
        assert!(
            public
                .check(&Ask {
                    host: Some("localhost:80"),
                    ..Ask::default()
                })
                .is_err()
        );
    }

    #[test]
    fn another_origin_is_refused_for_reads_and_changes() {
        let g = gate();
        for origin in ["http://evil.example", "https://127.0.0.1:8380", "null"] {
            let e = g
                .check(&Ask {
                    origin: Some(origin),
                    ..change()
                })
                .unwrap_err();
            assert_eq!(e, Refusal::OtherOrigin(origin.into()));
            let e = g
                .check(&Ask {
                    origin: Some(origin),
                    ..read()
                })
                .unwrap_err();
            assert_eq!(e, Refusal::OtherOrigin(origin.into()));
        }
    }

    #[test]
    fn the_token_is_needed_and_must_be_this_starts() {
        let g = gate();
        let e = g
            .check(&Ask {
                cookie: None,
                ..read()
            })
            .unwrap_err();
        assert_eq!((e.clone(), e.status()), (Refusal::NoToken, 401));
        for cookie in [
            "vmail_web_8380=t0",
            "vmail_web_8380=t0kk",
            "vmail_web_8381=t0k",
        ] {
            let e = g
                .check(&Ask {
                    cookie: Some(cookie),
                    ..read()
                })
                .unwrap_err();
            assert!(
                matches!(e, Refusal::WrongToken | Refusal::NoToken),
                "{cookie}"
            );
        }
        let url = |t| Ask {
            cookie: None,
            url_token: Some(t),
            ..read()
        };
        assert_eq!(g.check(&url("t0k")), Ok(Pass::SetCookie));
        assert_eq!(g.check(&url("bad")), Err(Refusal::WrongToken));
    }

    #[test]
    fn a_change_needs_the_csrf_token_and_an_origin() {
        let g = gate();
        for ask in [
            Ask {
                csrf: None,
                ..change()
            },
            Ask {
                csrf: Some("c5rg"),
                ..change()
            },
            Ask {
                origin: None,
                ..change()
            },
            // The token in the URL never stands in for the cookie on a change.
            Ask {
                cookie: None,
                url_token: Some("t0k"),
                ..change()
            },
        ] {
            assert!(g.check(&ask).is_err(), "{ask:?}");
        }
    }
}
