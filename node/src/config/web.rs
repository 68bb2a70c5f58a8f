//! `[web]` in node.toml: where the daemon serves the web inbox
//! (`crate::web`), off unless set, and loopback only unless allowed.

use serde::{Deserialize, Serialize};

use super::InvalidValue;

/// `[web]`: the browser page of `vmail node run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// TCP address to serve the page on, e.g. "127.0.0.1:8380". Unset (the
    /// default): no page; `vmail node run --web ADDR` sets it.
    pub listen: Option<std::net::SocketAddr>,
    /// Serve on an address other than loopback. The page holds the user's
    /// logged-in session and speaks plain HTTP, so this is for a machine
    /// whose network only its user reaches (put TLS in front). Default false.
    pub allow_remote: bool,
}

impl WebConfig {
    /// Refuses a non-loopback address unless `allow_remote` is set.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        match self.listen {
            Some(a) if !a.ip().is_loopback() && !self.allow_remote => {
                Err(InvalidValue::Web(format!(
                    "listen: {a} is not a loopback address, and the page holds your logged-in session over plain HTTP: serve it on 127.0.0.1:{} (reach it from elsewhere through an SSH tunnel), or set web.allow_remote = true behind a TLS proxy",
                    a.port()
                )))
            }
            _ => Ok(()),
        }
    }
}
