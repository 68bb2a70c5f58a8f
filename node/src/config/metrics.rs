//! `[metrics]` in node.toml: where the daemon serves its Prometheus
//! metrics (`crate::metrics`), off unless set.

use serde::{Deserialize, Serialize};

/// `[metrics]`: the plain-HTTP `/metrics` endpoint of `vmail node run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP address to serve `GET /metrics` on, e.g. "127.0.0.1:9101".
    /// Unset (the default): no metrics endpoint; `vmail node run --metrics
    /// ADDR` sets it. A one-job client peer never serves it.
    pub listen: Option<std::net::SocketAddr>,
}
