//! Prometheus metrics of one auth server, and the plain-HTTP `/metrics`
//! endpoint that serves them (`--metrics ADDR`, `metrics_listen`).
//!
//! [`AuthMetrics`] is a plain value the server builds once
//! (`server::open_with`) and hands down, behind an `Arc`, to the parts that
//! count: the batcher (proposals), the log store (append fsyncs), the state
//! machine (applies, erased keys), the service (logins, lock-outs, grants),
//! the gRPC adapter and its tower layer ([`GrpcMetricsLayer`]). No globals:
//! two servers in one process (the devnet, the tests) count apart.
//!
//! Every name starts `vmail_auth_`; counters end `_total` (prometheus-client
//! appends it), durations are `_seconds`. Labels take values from small
//! fixed sets ([`LoginFailure`], [`GrantRefusal`], the gRPC methods this
//! server implements, the gRPC codes); never a username or a peer id. The
//! names of the Raft gauges are a contract with the compose testnet's checks.
//!
//! What serves and feeds them over the network, the `/metrics` endpoint and
//! the gRPC layer, is in `serve`.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod serve;
pub use serve::{GrpcMetrics, GrpcMetricsLayer, serve_http};

/// The content type of `/metrics`: what prometheus-client's text encoder
/// writes (OpenMetrics 1.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a login failed: the `reason` label of `vmail_auth_logins_failed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// The password proof did not verify (LoginFinish).
    WrongPassword,
    /// No such user (LoginStart).
    UnknownUser,
    /// The user is locked out after too many attempts.
    LockedOut,
    /// The login id was unknown or had timed out (LoginFinish).
    Expired,
    /// Malformed input: username, OPAQUE message, identity key or proof.
    Invalid,
    /// The group could not serve it (no leader, not the leader, timeout).
    Unavailable,
    /// Anything else (a rate limit, a storage error).
    Other,
    /// A LoginStart answered but never finished: it timed out
    /// (`login_timeout_secs`) or a newer login displaced it. A client that
    /// finds its password wrong stops after LoginStart, so this is how a
    /// wrong password, or a guess, looks from the server. Counted when the
    /// server next looks at its unfinished logins (the next login call).
    Abandoned,
}

impl LoginFailure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WrongPassword => "wrong_password",
            Self::UnknownUser => "unknown_user",
            Self::LockedOut => "locked_out",
            Self::Expired => "expired",
            Self::Invalid => "invalid",
            Self::Unavailable => "unavailable",
            Self::Other => "other",
            Self::Abandoned => "abandoned",
        }
    }
}

/// Why a storage grant was refused: the `reason` label of
/// `vmail_auth_grants_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantRefusal {
    /// No recipient's policy accepts the sender.
    Policy,
    /// A sender quota (grants an hour, new recipients, bytes) is spent.
    Quota,
    /// The sender holds too many unused grants.
    TooManyGrants,
    /// Refused from memory after too many refusals a minute.
    RateLimited,
    /// The request itself is malformed (shards, holders, expiry, recipients).
    Invalid,
    /// Anything else (no session, no leader, a storage error).
    Other,
}

impl GrantRefusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::Quota => "quota",
            Self::TooManyGrants => "too_many_grants",
            Self::RateLimited => "rate_limited",
            Self::Invalid => "invalid",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    method: String,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Durations from 100 µs to about 52 s, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Everything one auth server counts, and the registry that encodes it.
#[derive(Debug)]
pub struct AuthMetrics {
    registry: Registry,
    raft_has_leader: Gauge,
    raft_is_leader: Gauge,
    raft_leader_changes: Counter,
    raft_term: Gauge,
    raft_last_log_index: Gauge,
    raft_applied_index: Gauge,
    proposals: Counter,
    proposal_commands: Histogram,
    append_seconds: Histogram,
    apply_seconds: Histogram,
    commit_seconds: Histogram,
    group_sign_seconds: Histogram,
    group_sign_items: Histogram,
    logins_succeeded: Counter,
    logins_failed: Family<Reason, Counter>,
    lockouts: Counter,
    registrations: Counter,
    certificates: Counter,
    deposits: Counter,
    acks: Counter,
    session_keys_held: Gauge,
    session_keys_erased: Counter,
    grants_issued: Counter,
    grants_refused: Family<Reason, Counter>,
    grpc_requests: Family<Call, Counter>,
    grpc_seconds: Histograms<Method>,
}

impl Default for AuthMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthMetrics {
    /// Every metric at zero, registered under `vmail_auth_`.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("vmail_auth"),
            raft_has_leader: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_leader_changes: Counter::default(),
            raft_term: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            proposals: Counter::default(),
            // 1, 2, 4 .. 256: MAX_BATCH is 256.
            proposal_commands: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            append_seconds: seconds(),
            apply_seconds: seconds(),
            commit_seconds: seconds(),
            group_sign_seconds: seconds(),
            // 1, 2, 4 .. 256: the signing batch's bound.
            group_sign_items: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            logins_succeeded: Counter::default(),
            logins_failed: Family::default(),
            lockouts: Counter::default(),
            registrations: Counter::default(),
            certificates: Counter::default(),
            deposits: Counter::default(),
            acks: Counter::default(),
            session_keys_held: Gauge::default(),
            session_keys_erased: Counter::default(),
            grants_issued: Counter::default(),
            grants_refused: Family::default(),
            grpc_requests: Family::default(),
            grpc_seconds: Family::new_with_constructor(seconds),
        };
        let r = &mut m.registry;
        r.register(
            "raft_has_leader",
            "1 when this server knows a leader of its group, else 0",
            m.raft_has_leader.clone(),
        );
        r.register(
            "raft_is_leader",
            "1 when this server is the group's leader, else 0",
            m.raft_is_leader.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Times this server saw a new leader (the first one included)",
            m.raft_leader_changes.clone(),
        );
        r.register(
            "raft_term",
            "This server's current Raft term",
            m.raft_term.clone(),
        );
        r.register(
            "raft_last_log_index",
            "Index of the last entry in this server's Raft log",
            m.raft_last_log_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Index of the last log entry this server applied",
            m.raft_applied_index.clone(),
        );
        r.register(
            "raft_proposals",
            "Log entries this server proposed as leader (one command or a batch each)",
            m.proposals.clone(),
        );
        r.register(
            "raft_proposal_commands",
            "Commands in each log entry this server proposed",
            m.proposal_commands.clone(),
        );
        r.register(
            "raft_append_duration_seconds",
            "Time to append entries to the Raft log and fsync them",
            m.append_seconds.clone(),
        );
        r.register(
            "raft_apply_duration_seconds",
            "Time to apply a run of committed entries to the state",
            m.apply_seconds.clone(),
        );
        r.register(
            "raft_commit_duration_seconds",
            "Time from proposing a log entry as leader to its reply: replication to a majority, fsyncs and the apply",
            m.commit_seconds.clone(),
        );
        r.register(
            "group_sign_duration_seconds",
            "Time of one threshold signing round this server coordinated, both rounds with the other signers",
            m.group_sign_seconds.clone(),
        );
        r.register(
            "group_sign_items",
            "Objects covered by each threshold signing round this server coordinated",
            m.group_sign_items.clone(),
        );
        r.register(
            "logins_succeeded",
            "Logins this server completed",
            m.logins_succeeded.clone(),
        );
        r.register(
            "logins_failed",
            "Login calls (LoginStart or LoginFinish) this server refused, by reason",
            m.logins_failed.clone(),
        );
        r.register(
            "login_lockouts",
            "Times a user was locked out after too many login attempts",
            m.lockouts.clone(),
        );
        r.register(
            "registrations",
            "Users this server registered",
            m.registrations.clone(),
        );
        r.register(
            "certificates_issued",
            "User certificates this server issued (one per login)",
            m.certificates.clone(),
        );
        r.register(
            "deposits",
            "Voicemail deposits this server accepted (replays not counted)",
            m.deposits.clone(),
        );
        r.register(
            "acks",
            "Voicemail acks this server accepted",
            m.acks.clone(),
        );
        r.register(
            "session_keys_held",
            "Voicemail session keys in this server's state",
            m.session_keys_held.clone(),
        );
        r.register(
            "session_keys_erased",
            "Voicemail session keys erased as this server applied the log (last ack, recall, expiry)",
            m.session_keys_erased.clone(),
        );
        r.register(
            "grants_issued",
            "Storage grants this server issued",
            m.grants_issued.clone(),
        );
        r.register(
            "grants_refused",
            "Storage grant requests this server refused, by reason",
            m.grants_refused.clone(),
        );
        r.register(
            "grpc_requests",
            "Public gRPC calls answered, by method (the gRPC path; \"unknown\" for paths this server does not serve) and status code",
            m.grpc_requests.clone(),
        );
        r.register(
            "grpc_request_duration_seconds",
            "Time from a public gRPC call's arrival to its response headers, by method",
            m.grpc_seconds.clone(),
        );
        m
    }

    /// The metrics in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Records what openraft's metrics say: leader, term, indexes. `seen`
    /// is the last leader this caller saw; a different one counts as a
    /// leader change.
    pub fn observe_raft(
        &self,
        id: u64,
        leader: Option<u64>,
        term: u64,
        last_log_index: u64,
        applied_index: u64,
        seen: &mut Option<u64>,
    ) {
        self.raft_has_leader.set(i64::from(leader.is_some()));
        self.raft_is_leader.set(i64::from(leader == Some(id)));
        if leader.is_some() && leader != *seen {
            self.raft_leader_changes.inc();
            *seen = leader;
        }
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.raft_term.set(gauge(term));
        self.raft_last_log_index.set(gauge(last_log_index));
        self.raft_applied_index.set(gauge(applied_index));
    }

    /// A log entry of `commands` commands was proposed.
    pub fn proposed(&self, commands: usize) {
        self.proposals.inc();
        self.proposal_commands.observe(commands as f64);
    }

    /// An append to the Raft log, fsync included, took `since.elapsed()`.
    pub fn appended(&self, since: Instant) {
        self.append_seconds.observe(since.elapsed().as_secs_f64());
    }

    /// Applying a run of entries took `since.elapsed()`.
    pub fn applied(&self, since: Instant) {
        self.apply_seconds.observe(since.elapsed().as_secs_f64());
    }

    /// A proposed entry's commit and apply took `since.elapsed()`.
    pub fn committed(&self, since: Instant) {
        self.commit_seconds.observe(since.elapsed().as_secs_f64());
    }

    /// A signing round on `items` objects took `since.elapsed()`.
    pub fn group_signed(&self, items: usize, since: Instant) {
        self.group_sign_seconds
            .observe(since.elapsed().as_secs_f64());
        self.group_sign_items.observe(items as f64);
    }

    /// A login succeeded, and a certificate was issued with it.
    pub fn login_succeeded(&self) {
        self.logins_succeeded.inc();
        self.certificates.inc();
    }

    /// A login call was refused.
    pub fn login_failed(&self, why: LoginFailure) {
        self.logins_failed
            .get_or_create(&Reason {
                reason: why.as_str(),
            })
            .inc();
    }

    /// `n` logins were abandoned ([`LoginFailure::Abandoned`]).
    pub fn logins_abandoned(&self, n: u64) {
        if n > 0 {
            self.logins_failed
                .get_or_create(&Reason {
                    reason: LoginFailure::Abandoned.as_str(),
                })
                .inc_by(n);
        }
    }

    /// A user was locked out.
    pub fn locked_out(&self) {
        self.lockouts.inc();
    }

    /// A user registered.
    pub fn registered(&self) {
        self.registrations.inc();
    }

    /// A deposit was accepted.
    pub fn deposited(&self) {
        self.deposits.inc();
    }

    /// An ack was accepted.
    pub fn acked(&self) {
        self.acks.inc();
    }

    /// `n` session keys were erased.
    pub fn keys_erased(&self, n: u64) {
        self.session_keys_erased.inc_by(n);
    }

    /// This server's state holds `n` session keys.
    pub fn keys_held(&self, n: u64) {
        self.session_keys_held
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A storage grant was issued.
    pub fn grant_issued(&self) {
        self.grants_issued.inc();
    }

    /// A storage grant request was refused.
    pub fn grant_refused(&self, why: GrantRefusal) {
        self.grants_refused
            .get_or_create(&Reason {
                reason: why.as_str(),
            })
            .inc();
    }

    fn grpc_answered(&self, method: String, code: &'static str, since: Instant) {
        self.grpc_seconds
            .get_or_create(&Method {
                method: method.clone(),
            })
            .observe(since.elapsed().as_secs_f64());
        self.grpc_requests
            .get_or_create(&Call { method, code })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_names_are_there_with_help() {
        let m = AuthMetrics::new();
        m.observe_raft(7, Some(7), 3, 10, 9, &mut None);
        m.login_failed(LoginFailure::WrongPassword);
        let text = m.encode();
        for line in [
            "# HELP vmail_auth_raft_has_leader ",
            "vmail_auth_raft_has_leader 1",
            "vmail_auth_raft_is_leader 1",
            "vmail_auth_raft_leader_changes_total 1",
            "vmail_auth_raft_term 3",
            "vmail_auth_raft_applied_index 9",
            "vmail_auth_logins_failed_total{reason=\"wrong_password\"} 1",
            "# TYPE vmail_auth_raft_append_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn a_leader_change_counts_once_and_losing_the_leader_does_not() {
        let m = AuthMetrics::new();
        let mut seen = None;
        for leader in [None, Some(1), Some(1), None, Some(1), Some(2)] {
            m.observe_raft(1, leader, 1, 0, 0, &mut seen);
        }
        assert_eq!(m.raft_leader_changes.get(), 2);
        assert_eq!(m.raft_is_leader.get(), 0);
        assert_eq!(m.raft_has_leader.get(), 1);
    }
}
