//! The server's configuration file, `DIR/config.toml`.
//!
//! Written by `vmail-auth init`, read by `vmail-auth serve`. Every field has a
//! default, so an operator only writes what they change.

use serde::{Deserialize, Serialize};

/// Default for how many OPAQUE logins may be half-done at once, over all
/// users: 10,000 (each holds a few hundred bytes of state for
/// `login_timeout_secs`). When full, a new login displaces the oldest.
pub const DEFAULT_MAX_LOGINS_IN_PROGRESS: u64 = 10_000;
/// Default for how many OPAQUE logins one user may have half-done at once:
/// 4. A user's next login displaces their oldest, so a flood under one name
/// never touches anyone else's.
pub const DEFAULT_MAX_LOGINS_IN_PROGRESS_PER_USER: u64 = 4;
/// Default for how many WatchPending streams one session may hold open: 4.
pub const DEFAULT_MAX_WATCH_STREAMS_PER_SESSION: u64 = 4;
/// Default for how many WatchPending streams one user may hold open over
/// all their sessions: 16.
pub const DEFAULT_MAX_WATCH_STREAMS_PER_USER: u64 = 16;
/// Default for registrations the server accepts a minute, from everyone:
/// 600 (ten a second, in bursts of up to 600).
pub const DEFAULT_REGISTRATIONS_PER_MINUTE: u64 = 600;
/// Default for registrations the server accepts a minute from one client
/// address (an IPv4 address or an IPv6 /64; loopback clients count only
/// server-wide): 10.
pub const DEFAULT_REGISTRATIONS_PER_MINUTE_PER_ADDRESS: u64 = 10;
/// Default for cheap repeatable writes (SetRetention, Recall, policy
/// changes, reports) one user may make a minute: 30, in bursts of up to 30.
pub const DEFAULT_WRITES_PER_MINUTE_PER_USER: u64 = 30;
/// Default for how long a server's share key serves before it rotates to
/// the next epoch: 7 days.
pub const DEFAULT_SHARE_KEY_ROTATION_SECS: u64 = 7 * 24 * 3600;
/// Default for OpenShare calls one user may make a minute on one server:
/// 600 (a fetch asks each server once per voicemail).
pub const DEFAULT_OPEN_SHARES_PER_MINUTE_PER_USER: u64 = 600;
/// Default for how many calls one connection may have in progress at
/// once, on the public and the internal service: 32.
pub const DEFAULT_CONCURRENCY_PER_CONNECTION: u64 = 32;
/// Default for how many HTTP/2 streams one connection may hold open at
/// once (WatchPending streams included): 64.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u64 = 64;

/// Default session and certificate lifetime: 12 hours.
pub const DEFAULT_SESSION_TTL_SECS: u64 = 12 * 3600;
/// Default lifetime of a voicemail whose sender asked for none: the
/// protocol's 30 days, which senders also tell their holders.
pub use vmail_proto::meta::DEFAULT_VOICEMAIL_TTL_SECS;
/// Default for the longest lifetime a sender may ask for: 30 days, the
/// longest any holder keeps shards (`vmail_proto::grant::MAX_RETENTION_SECS`).
/// A voicemail expires with its storage grant, and a grant never outlives
/// that, whatever this is set to.
pub const DEFAULT_MAX_VOICEMAIL_TTL_SECS: u64 = vmail_proto::grant::MAX_RETENTION_SECS;
/// Default for the largest shard a storage grant covers: 1 GiB and 1 MiB,
/// room for the ciphertext of a peer's largest allowed voicemail (1 GiB,
/// `max_voicemail_bytes`) stored as a whole copy, with its header and tags.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = (1 << 30) + (1 << 20);
/// Largest `max_shard_bytes` the server accepts: 1 TiB.
pub const MAX_SHARD_BYTES_LIMIT: u64 = 1 << 40;
/// Default for how many storage grants one user may hold that no deposit
/// used yet and whose upload window is open.
pub const DEFAULT_MAX_OPEN_GRANTS_PER_USER: u64 = 64;
/// Default limit of voicemails waiting for one user. Each listed voicemail
/// is at most about 21 KiB (16 KiB locator, 64 recipients, certificate,
/// wrapped key), so even the largest allowed cap, 3000, lists in about
/// 61 MiB, inside the client's 64 MiB message limit.
pub const DEFAULT_MAX_PENDING_PER_USER: u64 = 1000;
/// How long the server keeps an unfinished login's state: 60 seconds.
pub const DEFAULT_LOGIN_TIMEOUT_SECS: u64 = 60;
/// Unsuccessful logins allowed per user inside [`DEFAULT_LOCKOUT_WINDOW_SECS`].
pub const DEFAULT_MAX_FAILED_LOGINS: u32 = 5;
/// The window over which login attempts are counted: 5 minutes. A user over
/// the limit is locked out until the window that began with their first
/// counted attempt ends.
pub const DEFAULT_LOCKOUT_WINDOW_SECS: u64 = 300;

/// Default for grants one sender may get an hour: 60.
pub const DEFAULT_VOICEMAILS_PER_HOUR: u64 = 60;
/// Default for distinct recipients a day who do not list the sender as a
/// contact: 10. Five spam accounts reach at most 50 strangers a day.
pub const DEFAULT_NEW_RECIPIENTS_PER_DAY: u64 = 10;
/// Default for bytes one sender may have granted and not yet deleted: 4 GiB
/// (the largest voicemail, 1 GiB, with its redundancy).
pub const DEFAULT_MAX_OUTSTANDING_BYTES: u64 = 4 << 30;
/// Default for the longest first contact: 12 MiB of voicemail data, about
/// 60 s of CD-quality WAV (44.1 kHz, 16-bit stereo).
pub const DEFAULT_FIRST_CONTACT_MAX_BYTES: u64 = 12 << 20;
/// Default for refused grant requests one sender may make a minute before
/// the rest are refused from memory: 20.
pub const DEFAULT_REFUSED_GRANTS_PER_MINUTE: u64 = 20;
/// Default for how long a first contact may wait: 3 days.
pub const DEFAULT_FIRST_CONTACT_TTL_SECS: u64 = 3 * 86_400;

/// Whom a user takes voicemail from: a user's own choice, or the group's
/// default for users who made none (`spam.default_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyMode {
    /// Anyone registered; strangers are flagged "unknown caller" but not
    /// limited.
    #[serde(rename = "anyone")]
    Anyone,
    /// Contacts only.
    #[serde(rename = "contacts")]
    Contacts,
    /// Contacts, and strangers under the first-contact limits.
    #[default]
    #[serde(rename = "contacts+first-contact")]
    ContactsFirstContact,
}

/// Spam control (paper §5): the sender quotas and first-contact limits the
/// group applies when it issues a storage grant (`[spam]` in the file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SpamConfig {
    /// The policy mode of users who did not choose one.
    pub default_mode: PolicyMode,
    /// Grants one sender may get in any hour.
    pub voicemails_per_hour: u64,
    /// Distinct recipients one sender may reach in any day who do not list
    /// them as a contact; each report against the sender halves it.
    pub new_recipients_per_day: u64,
    /// Bytes of shards one sender may have granted and not yet deleted or
    /// expired.
    pub max_outstanding_bytes: u64,
    /// Most bytes of voicemail data a first contact may have.
    pub first_contact_max_bytes: u64,
    /// Longest a first contact may wait before it expires, seconds.
    pub first_contact_ttl_secs: u64,
    /// Youngest account, seconds since registration, that may make a first
    /// contact; 0 lets new accounts make them at once.
    pub first_contact_min_account_age_secs: u64,
    /// Grant requests one sender may have refused (by policies or quotas)
    /// a minute; past it, their grant requests are refused from memory,
    /// with `retry-after`, until the rate allows again.
    pub refused_grants_per_minute: u64,
}

impl Default for SpamConfig {
    fn default() -> Self {
        Self {
            default_mode: PolicyMode::default(),
            voicemails_per_hour: DEFAULT_VOICEMAILS_PER_HOUR,
            new_recipients_per_day: DEFAULT_NEW_RECIPIENTS_PER_DAY,
            max_outstanding_bytes: DEFAULT_MAX_OUTSTANDING_BYTES,
            first_contact_max_bytes: DEFAULT_FIRST_CONTACT_MAX_BYTES,
            first_contact_ttl_secs: DEFAULT_FIRST_CONTACT_TTL_SECS,
            first_contact_min_account_age_secs: 0,
            refused_grants_per_minute: DEFAULT_REFUSED_GRANTS_PER_MINUTE,
        }
    }
}

/// The auth server's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// This server's name; it is also a subject alternative name of its TLS certificate.
    pub name: String,
    /// The address the public gRPC API listens on.
    pub listen: String,
    /// The address the internal group service (Raft, membership; mutual
    /// TLS) listens on.
    pub raft_listen: String,
    /// The host name or IP address other members and clients use to reach
    /// this server. Empty: the host of `listen` (127.0.0.1 if unspecified).
    pub advertise_host: String,
    /// The address `/metrics` (Prometheus text, plain HTTP) is served on,
    /// e.g. `127.0.0.1:9464`. Empty, the default: no metrics endpoint.
    /// `--metrics ADDR` on `serve` and `start` overrides it. A server's own
    /// setting: a joining server does not take the group's.
    pub metrics_listen: String,
    /// Who may register.
    pub registration: Registration,
    /// Lifetime of a session token and its master key, in seconds.
    pub session_ttl_secs: u64,
    /// Lifetime of a user certificate, in seconds.
    pub certificate_ttl_secs: u64,
    /// Lifetime of a voicemail whose sender asked for none, in seconds.
    pub default_voicemail_ttl_secs: u64,
    /// Longest voicemail lifetime a sender may ask for, in seconds. Storage
    /// grants, and so voicemails, are also capped at 30 days
    /// (`vmail_proto::grant::MAX_RETENTION_SECS`).
    pub max_voicemail_ttl_secs: u64,
    /// Largest shard, in bytes, a storage grant may cover.
    pub max_shard_bytes: u64,
    /// Most storage grants one user may hold that no deposit used yet and
    /// whose upload window is open; RequestGrant beyond it is refused.
    pub max_open_grants_per_user: u64,
    /// Most voicemails that may wait for one user; deposits beyond it are refused.
    pub max_pending_per_user: u64,
    /// How long an unfinished login is remembered, in seconds.
    pub login_timeout_secs: u64,
    /// Unsuccessful logins allowed per user inside one window.
    pub max_failed_logins: u32,
    /// The window over which login attempts are counted, in seconds.
    pub lockout_window_secs: u64,
    /// Most OPAQUE logins half-done at once, over all users; when full, a
    /// new login displaces the oldest (whose client is told to start again).
    pub max_logins_in_progress: u64,
    /// Most OPAQUE logins one user may have half-done at once; their next
    /// displaces their oldest. Must be below `max_logins_in_progress`.
    pub max_logins_in_progress_per_user: u64,
    /// Most WatchPending streams one session may hold open.
    pub max_watch_streams_per_session: u64,
    /// Most WatchPending streams one user may hold open over all sessions.
    pub max_watch_streams_per_user: u64,
    /// Registrations (RegisterStart) accepted a minute from everyone;
    /// invited registrations count too.
    pub registrations_per_minute: u64,
    /// Registrations accepted a minute from one client address (IPv4
    /// address or IPv6 /64). Loopback clients (a reverse proxy on this
    /// host, local tools) count only against `registrations_per_minute`.
    pub registrations_per_minute_per_address: u64,
    /// SetRetention, Recall, SetPolicy, EditContacts, EditBlocked and
    /// Report calls one user may make a minute.
    pub writes_per_minute_per_user: u64,
    /// OpenShare calls one user may make a minute on this server.
    pub open_shares_per_minute_per_user: u64,
    /// How long this server's share key serves before it makes and
    /// publishes the next epoch's, seconds. Old epochs are erased once no
    /// waiting voicemail has a share sealed to them.
    pub share_key_rotation_secs: u64,
    /// Whether this server, answering a login, a grant, a deposit, a last
    /// ack or a recall, has the group co-sign what the cluster key signed,
    /// once the group has a threshold key. Off, clients and holders that
    /// pin the group key refuse what it answers; for measuring what the
    /// rounds cost, and for a group none of whose clients pins the key.
    pub group_signing: bool,
    /// Calls one connection may have in progress at once (public and
    /// internal service); more wait their turn.
    pub concurrency_per_connection: u64,
    /// HTTP/2 streams one connection may hold open at once (public and
    /// internal service).
    pub max_concurrent_streams: u64,
    /// Sender quotas and first-contact limits.
    pub spam: SpamConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            name: "auth-1".to_owned(),
            listen: "127.0.0.1:7443".to_owned(),
            raft_listen: "127.0.0.1:7444".to_owned(),
            advertise_host: String::new(),
            metrics_listen: String::new(),
            registration: Registration::default(),
            session_ttl_secs: DEFAULT_SESSION_TTL_SECS,
            certificate_ttl_secs: DEFAULT_SESSION_TTL_SECS,
            default_voicemail_ttl_secs: DEFAULT_VOICEMAIL_TTL_SECS,
            max_voicemail_ttl_secs: DEFAULT_MAX_VOICEMAIL_TTL_SECS,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            max_open_grants_per_user: DEFAULT_MAX_OPEN_GRANTS_PER_USER,
            max_pending_per_user: DEFAULT_MAX_PENDING_PER_USER,
            login_timeout_secs: DEFAULT_LOGIN_TIMEOUT_SECS,
            max_failed_logins: DEFAULT_MAX_FAILED_LOGINS,
            lockout_window_secs: DEFAULT_LOCKOUT_WINDOW_SECS,
            max_logins_in_progress: DEFAULT_MAX_LOGINS_IN_PROGRESS,
            max_logins_in_progress_per_user: DEFAULT_MAX_LOGINS_IN_PROGRESS_PER_USER,
            max_watch_streams_per_session: DEFAULT_MAX_WATCH_STREAMS_PER_SESSION,
            max_watch_streams_per_user: DEFAULT_MAX_WATCH_STREAMS_PER_USER,
            registrations_per_minute: DEFAULT_REGISTRATIONS_PER_MINUTE,
            registrations_per_minute_per_address: DEFAULT_REGISTRATIONS_PER_MINUTE_PER_ADDRESS,
            writes_per_minute_per_user: DEFAULT_WRITES_PER_MINUTE_PER_USER,
            open_shares_per_minute_per_user: DEFAULT_OPEN_SHARES_PER_MINUTE_PER_USER,
            share_key_rotation_secs: DEFAULT_SHARE_KEY_ROTATION_SECS,
            group_signing: true,
            concurrency_per_connection: DEFAULT_CONCURRENCY_PER_CONNECTION,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            spam: SpamConfig::default(),
        }
    }
}

/// Longest session, certificate or voicemail lifetime the server accepts: 10 years.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 86_400;

impl ServerConfig {
    /// The host other members and clients reach this server at.
    pub fn public_host(&self) -> String {
        if !self.advertise_host.is_empty() {
            return self.advertise_host.clone();
        }
        match self.listen.parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => "127.0.0.1".to_owned(),
            Ok(std::net::SocketAddr::V6(a)) => format!("[{}]", a.ip()),
            Ok(a) => a.ip().to_string(),
            Err(_) => "127.0.0.1".to_owned(),
        }
    }

    /// The longest a storage grant, and so a voicemail, may live, in
    /// seconds: `max_voicemail_ttl_secs`, never above the holders' cap.
    pub fn max_grant_ttl_secs(&self) -> u64 {
        self.max_voicemail_ttl_secs
            .min(vmail_proto::grant::MAX_RETENTION_SECS)
    }

    /// Checks that the values make sense together. The error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let in_range = |key: &'static str, value: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange { key, value, lo, hi })
            }
        };
        for (key, value) in [("listen", &self.listen), ("raft_listen", &self.raft_listen)] {
            if value.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::NotAnAddress {
                    key,
                    value: value.clone(),
                });
            }
        }
        if !self.metrics_listen.is_empty()
            && self.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::NotAnAddress {
                key: "metrics_listen",
                value: self.metrics_listen.clone(),
            });
        }
        if self.advertise_host.contains(['/', ' ', ':']) && !self.advertise_host.starts_with('[') {
            return Err(ConfigError::AdvertiseHost(self.advertise_host.clone()));
        }
        in_range("session_ttl_secs", self.session_ttl_secs, 60, MAX_TTL_SECS)?;
        if !(self.session_ttl_secs..=MAX_TTL_SECS).contains(&self.certificate_ttl_secs) {
            return Err(ConfigError::CertificateTtl {
                value: self.certificate_ttl_secs,
                session: self.session_ttl_secs,
            });
        }
        in_range(
            "max_voicemail_ttl_secs",
            self.max_voicemail_ttl_secs,
            60,
            MAX_TTL_SECS,
        )?;
        in_range(
            "default_voicemail_ttl_secs",
            self.default_voicemail_ttl_secs,
            60,
            self.max_voicemail_ttl_secs,
        )?;
        in_range("max_pending_per_user", self.max_pending_per_user, 1, 3000)?;
        in_range(
            "max_shard_bytes",
            self.max_shard_bytes,
            1,
            MAX_SHARD_BYTES_LIMIT,
        )?;
        in_range(
            "max_open_grants_per_user",
            self.max_open_grants_per_user,
            1,
            10_000,
        )?;
        in_range("login_timeout_secs", self.login_timeout_secs, 5, 3600)?;
        in_range("max_failed_logins", self.max_failed_logins.into(), 1, 1000)?;
        in_range("lockout_window_secs", self.lockout_window_secs, 1, 86_400)?;
        in_range(
            "max_logins_in_progress",
            self.max_logins_in_progress,
            2,
            1_000_000,
        )?;
        in_range(
            "max_logins_in_progress_per_user",
            self.max_logins_in_progress_per_user,
            1,
            self.max_logins_in_progress - 1,
        )?;
        in_range(
            "max_watch_streams_per_session",
            self.max_watch_streams_per_session,
            1,
            1000,
        )?;
        in_range(
            "max_watch_streams_per_user",
            self.max_watch_streams_per_user,
            self.max_watch_streams_per_session,
            10_000,
        )?;
        in_range(
            "registrations_per_minute",
            self.registrations_per_minute,
            1,
            1_000_000,
        )?;
        in_range(
            "registrations_per_minute_per_address",
            self.registrations_per_minute_per_address,
            1,
            self.registrations_per_minute,
        )?;
        in_range(
            "writes_per_minute_per_user",
            self.writes_per_minute_per_user,
            1,
            1_000_000,
        )?;
        in_range(
            "open_shares_per_minute_per_user",
            self.open_shares_per_minute_per_user,
            1,
            1_000_000,
        )?;
        // At least an hour: an old epoch is erased only 15 minutes after the
        // next one is published (a grant may still list it), so a shorter
        // rotation would never let one go.
        in_range(
            "share_key_rotation_secs",
            self.share_key_rotation_secs,
            3600,
            10 * 365 * 24 * 3600,
        )?;
        in_range(
            "concurrency_per_connection",
            self.concurrency_per_connection,
            1,
            10_000,
        )?;
        in_range(
            "max_concurrent_streams",
            self.max_concurrent_streams,
            self.max_watch_streams_per_session + 1,
            10_000,
        )?;
        in_range(
            "spam.voicemails_per_hour",
            self.spam.voicemails_per_hour,
            1,
            1_000_000,
        )?;
        in_range(
            "spam.new_recipients_per_day",
            self.spam.new_recipients_per_day,
            0,
            1_000_000,
        )?;
        in_range(
            "spam.max_outstanding_bytes",
            self.spam.max_outstanding_bytes,
            1,
            u64::MAX,
        )?;
        in_range(
            "spam.first_contact_max_bytes",
            self.spam.first_contact_max_bytes,
            1,
            u64::MAX,
        )?;
        in_range(
            "spam.first_contact_ttl_secs",
            self.spam.first_contact_ttl_secs,
            3600,
            self.max_voicemail_ttl_secs,
        )?;
        in_range(
            "spam.refused_grants_per_minute",
            self.spam.refused_grants_per_minute,
            1,
            1_000_000,
        )?;
        in_range(
            "spam.first_contact_min_account_age_secs",
            self.spam.first_contact_min_account_age_secs,
            0,
            365 * 86_400,
        )?;
        if self.registration.mode == RegistrationMode::Invite
            && self.registration.invite_codes.is_empty()
        {
            return Err(ConfigError::NoInviteCodes);
        }
        Ok(())
    }
}

/// A server setting that cannot be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A number outside its range.
    #[error("{key} = {value} is outside {lo}..={hi}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// Its value.
        value: u64,
        /// The smallest allowed.
        lo: u64,
        /// The largest allowed.
        hi: u64,
    },
    /// A listen address that is not `IP:PORT`.
    #[error("{key} = {value:?} is not an IP:PORT address")]
    NotAnAddress {
        /// `listen`, `raft_listen` or `metrics_listen`.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// `advertise_host` is not a bare host.
    #[error("advertise_host = {0:?} must be a bare host name or IP address")]
    AdvertiseHost(String),
    /// The certificate lifetime is shorter than the session's (or too long).
    #[error(
        "certificate_ttl_secs = {value} is outside {session}..={MAX_TTL_SECS}: a certificate must outlive the session it is issued with"
    )]
    CertificateTtl {
        /// Its value.
        value: u64,
        /// `session_ttl_secs`.
        session: u64,
    },
    /// Invite mode without codes.
    #[error("registration.mode = \"invite\" needs at least one entry in registration.invite_codes")]
    NoInviteCodes,
}

/// Who may register.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Registration {
    /// `open`: anyone; `invite`: only with one of `invite_codes`.
    pub mode: RegistrationMode,
    /// Single-use invite codes; each registers one account.
    pub invite_codes: Vec<String>,
}

impl Default for Registration {
    fn default() -> Self {
        Self {
            mode: RegistrationMode::Open,
            invite_codes: Vec::new(),
        }
    }
}

/// Registration policy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Anyone may register.
    Open,
    /// Registration needs an unused invite code from the config.
    Invite,
}

#[cfg(test)]
mod tests;
