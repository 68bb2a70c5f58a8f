//! The web inbox's gate, pure: which requests reach the page and its API.
//!
//! The page holds a logged-in session, so
//! - every request must name this daemon's own address in `Host` (a page
//!   that reached it through another name, DNS rebinding, is refused) and
//!   come from this page's origin when it names one (`Origin`);
//! - every API request must carry this start's token in `X-Vmail-Token`.
//!
//! The token travels in the URL's fragment, which a browser never sends,
//! and the page keeps it in its own origin's storage (another port is
//! another origin) and sends it as a header. No cookie carries it: cookies
//! are shared by every port of a host, so any local server could collect
//! one. A header is also what another site cannot make a browser send,
//! so the token is the CSRF defence as well. The page's own files hold
//! no secret and are served to any request that passes the first rule.

use std::net::SocketAddr;

use subtle::ConstantTimeEq;

/// Header every API request carries the token in.
pub const TOKEN_HEADER: &str = "x-vmail-token";

/// The facts of a request the gate decides on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask<'a> {
    /// Under `/api/`.
    pub api: bool,
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// The `X-Vmail-Token` header.
    pub token: Option<&'a str>,
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
    /// No token.
    #[error(
        "no token: open the URL `vmail node run --web` printed, which carries it (it is also in the data dir, file web.url)"
    )]
    NoToken,
    /// A token that is not this start's.
    #[error(
        "wrong token: the daemon makes a new one at every start; open the URL it printed this time (data dir, file web.url)"
    )]
    WrongToken,
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

/// This start's token and the names this daemon answers to.
#[derive(Clone)]
pub struct Gate {
    token: String,
    hosts: Vec<String>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate for a page served on `addr`, with a fresh `token` (hex).
    pub fn new(addr: SocketAddr, token: String) -> Self {
        let mut hosts = vec![addr.to_string()];
        if addr.ip().is_loopback() {
            hosts.push(format!("localhost:{}", addr.port()));
        }
        Gate { token, hosts }
    }

    /// The URL that carries the token, on the first name served.
    pub fn url(&self) -> String {
        format!("http://{}/#token={}", self.hosts[0], self.token)
    }

    fn own_origin(&self, origin: &str) -> bool {
        origin
            .strip_prefix("http://")
            .is_some_and(|h| self.hosts.iter().any(|ok| ok.eq_ignore_ascii_case(h)))
    }

    /// Whether `ask` may pass.
    pub fn check(&self, ask: &Ask<'_>) -> Result<(), Refusal> {
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
        if !ask.api {
            return Ok(());
        }
        match ask.token {
            None => Err(Refusal::NoToken),
            Some(t)
                if t.len() == self.token.len()
                    && bool::from(t.as_bytes().ct_eq(self.token.as_bytes())) =>
            {
                Ok(())
            }
            Some(_) => Err(Refusal::WrongToken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate::new("127.0.0.1:8380".parse().unwrap(), "t0k".into())
    }

    fn call() -> Ask<'static> {
        Ask {
            api: true,
            host: Some("127.0.0.1:8380"),
            origin: Some("http://127.0.0.1:8380"),
            token: Some("t0k"),
        }
    }

    #[test]
    fn the_page_with_its_token_passes_and_localhost_is_the_same_page() {
        let g = gate();
        assert_eq!(g.check(&call()), Ok(()));
        assert_eq!(
            g.check(&Ask {
                origin: None,
                ..call()
            }),
            Ok(())
        );
        let local = Ask {
            host: Some("localhost:8380"),
            origin: Some("http://localhost:8380"),
            ..call()
        };
        assert_eq!(g.check(&local), Ok(()));
        assert_eq!(g.url(), "http://127.0.0.1:8380/#token=t0k");
        // The page's own files need no token.
        let file = Ask {
            api: false,
            token: None,
            ..call()
        };
        assert_eq!(g.check(&file), Ok(()));
    }

    #[test]
    fn another_host_name_is_refused_even_with_the_token() {
        let g = gate();
        for host in [
            None,
            Some("evil.example:8380"),
            Some("127.0.0.1:8381"),
            Some("127.0.0.1"),
        ] {
            for api in [true, false] {
                let e = g
                    .check(&Ask {
                        host,
                        api,
                        origin: None,
                        ..call()
                    })
                    .unwrap_err();
                assert!(matches!(e, Refusal::WrongHost { .. }), "{host:?}: {e}");
                assert_eq!(e.status(), 403);
            }
        }
        // A daemon on a public address does not answer to localhost.
        let public = Gate::new("10.0.0.5:80".parse().unwrap(), "t".into());
        let e = public
            .check(&Ask {
                api: true,
                host: Some("localhost:80"),
                origin: None,
                token: Some("t"),
            })
            .unwrap_err();
        assert!(matches!(e, Refusal::WrongHost { .. }), "{e}");
    }

    #[test]
    fn another_origin_is_refused_with_the_token_and_for_the_files() {
        let g = gate();
        for origin in ["http://evil.example", "https://127.0.0.1:8380", "null"] {
            for api in [true, false] {
                let e = g
                    .check(&Ask {
                        origin: Some(origin),
                        api,
                        ..call()
                    })
                    .unwrap_err();
                assert_eq!(e, Refusal::OtherOrigin(origin.into()));
            }
        }
    }

    #[test]
    fn the_api_needs_this_starts_token() {
        let g = gate();
        let e = g
            .check(&Ask {
                token: None,
                ..call()
            })
            .unwrap_err();
        assert_eq!((e.clone(), e.status()), (Refusal::NoToken, 401));
        for token in ["t0", "t0kk", "T0K", ""] {
            let e = g
                .check(&Ask {
                    token: Some(token),
                    ..call()
                })
                .unwrap_err();
            assert_eq!(
                (e.clone(), e.status()),
                (Refusal::WrongToken, 401),
                "{token}"
            );
        }
    }
}
