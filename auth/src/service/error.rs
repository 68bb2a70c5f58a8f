//! Why an auth operation was refused: one error type for the service, mapped
//! to gRPC codes in one table (`grpc::status`).

use vmail_proto::names::NameError;

use crate::cluster::Member;
use crate::store::{Quota, RecallGone, Refusal, StoreError};

/// Why an auth operation was refused. A refusal changes no durable state; a
/// refused LoginFinish still uses up its login id, and a LoginStart counts
/// towards the lock-out.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A request field is missing or malformed.
    #[error("{field}: {why}")]
    InvalidArgument {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A username is malformed.
    #[error(transparent)]
    Name(#[from] NameError),
    /// No such user.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// A deposit names a recipient who is not registered.
    #[error("unknown recipient {0:?}")]
    UnknownRecipient(String),
    /// The username is taken.
    #[error("user {0:?} already exists; choose another name or log in")]
    UserExists(String),
    /// Registration needs an invite code and none was given.
    #[error("registration on this server needs an invite code (--invite CODE)")]
    InviteRequired,
    /// The invite code is not in the config or was already used.
    #[error("invite code is not valid or was already used")]
    InviteInvalid,
    /// The OPAQUE login did not verify.
    #[error("wrong password for {0:?}")]
    WrongPassword(String),
    /// Too many unsuccessful logins recently.
    #[error("too many unsuccessful logins for {username:?}; try again in {retry_after_secs} s")]
    LockedOut {
        /// The user.
        username: String,
        /// Seconds until the lock lifts.
        retry_after_secs: u64,
    },
    /// The login id is unknown, or its state timed out.
    #[error("login_id is unknown, already used, or older than {0} s; start the login again")]
    LoginExpired(u64),
    /// A rate limit was reached.
    #[error(
        "too many {what}: at most {per_minute} a minute ({key} in the server config); retry in {retry_after_secs} s"
    )]
    RateLimited {
        /// What was limited, e.g. "registrations from this address".
        what: &'static str,
        /// The configured rate.
        per_minute: u64,
        /// The config key that sets it.
        key: &'static str,
        /// Seconds until a call would be accepted.
        retry_after_secs: u64,
    },
    /// A WatchPending stream past the per-session or per-user cap.
    #[error(
        "{username:?} already has {limit} WatchPending streams open {scope} ({key}); close one (one stream per client is enough) and retry"
    )]
    TooManyStreams {
        /// The user.
        username: String,
        /// The cap reached.
        limit: u64,
        /// "on this session" or "over all sessions".
        scope: &'static str,
        /// The config key that sets it.
        key: &'static str,
    },
    /// The identity proof signature does not verify.
    #[error("identity_proof: the signature does not verify with identity_key")]
    BadIdentityProof,
    /// An account key or an account-key signature was refused
    /// ([`vmail_proto::account`]).
    #[error("{0}")]
    Account(String),
    /// No bearer token was sent.
    #[error("missing session token: log in first (vmail login USER)")]
    NoToken,
    /// The token is unknown or was revoked.
    #[error("session token is not valid (logged out, or never issued): log in again")]
    BadToken,
    /// The session expired.
    #[error("session expired at Unix time {0}: log in again")]
    SessionExpired(u64),
    /// A recipient has as many voicemails waiting as the server allows.
    #[error(
        "the inbox of {username:?} is full ({limit} voicemails waiting); try again once they have fetched some"
    )]
    InboxFull {
        /// The recipient.
        username: String,
        /// The configured limit.
        limit: u64,
    },
    /// The user holds as many open storage grants as the server allows.
    #[error(
        "{username:?} already holds {limit} storage grants that no deposit has used (max_open_grants_per_user); deposit the voicemails already uploaded, or wait until their {window} s upload windows close, then ask again"
    )]
    TooManyGrants {
        /// The user.
        username: String,
        /// The configured limit.
        limit: u64,
        /// The upload window, seconds.
        window: u64,
    },
    /// The deposit names a storage grant that does not exist.
    #[error(
        "storage grant {0} does not exist (never issued, or dropped after its upload window closed): ask RequestGrant for a new grant, upload the shards under it and deposit again"
    )]
    GrantUnknown(u64),
    /// The deposit names another user's storage grant.
    #[error(
        "storage grant {0} was issued to another user: deposit under a grant of your own (RequestGrant)"
    )]
    GrantNotOwned(u64),
    /// The storage grant already serves another deposit.
    #[error(
        "storage grant {serial} already serves voicemail {voicemail}: one grant serves one deposit, so ask RequestGrant for a new grant for a new voicemail (a retry of the same deposit must reuse its request_id)"
    )]
    GrantUsed {
        /// The grant's serial.
        serial: u64,
        /// The voicemail deposited under it, hex.
        voicemail: String,
    },
    /// The storage grant's upload window has closed.
    #[error(
        "storage grant {serial}'s upload window closed at Unix time {upload_until} (deposits get {grace} s more): ask RequestGrant for a new grant, upload the shards again and deposit"
    )]
    GrantLapsed {
        /// The grant's serial.
        serial: u64,
        /// When its upload window closed.
        upload_until: u64,
        /// The grace after it, seconds.
        grace: u64,
    },
    /// Every recipient's policy refuses the voicemail. The reasons say
    /// "does not accept voicemail from you" for a block and for a
    /// contacts-only policy alike.
    #[error("{}", none_accepts_text(.0))]
    NoRecipientAccepts(Vec<(String, Refusal)>),
    /// A sender quota would be passed.
    #[error("{}", quota_text(*.quota, *.limit, *.used, *.resets_at))]
    Quota {
        /// Which quota.
        quota: Quota,
        /// The limit in force.
        limit: u64,
        /// How much is used.
        used: u64,
        /// When it frees up, Unix seconds; 0 when only deletions free it.
        resets_at: u64,
    },
    /// The deposit names other recipients than its grant covers.
    #[error(
        "storage grant {serial} covers recipients {granted:?} only (the others refused the voicemail): deposit for exactly those"
    )]
    GrantRecipients {
        /// The grant.
        serial: u64,
        /// The recipients it covers.
        granted: Vec<String>,
    },
    /// A newer first contact to the recipient replaced the grant.
    #[error(
        "storage grant {serial} was replaced by a newer voicemail of yours to {recipient}, who takes one at a time from you: deposit under the newer grant"
    )]
    GrantSuperseded {
        /// The grant.
        serial: u64,
        /// The recipient.
        recipient: String,
    },
    /// The deposit's shares are sealed to other servers than its grant
    /// lists.
    #[error(
        "shares: sealed to auth servers {sealed_to:?}, but storage grant {serial} lists {listed:?}: split the key among exactly the share keys the grant returned"
    )]
    GrantShares {
        /// The grant.
        serial: u64,
        /// The servers the grant lists, by name.
        listed: Vec<String>,
        /// The servers the shares are sealed to, by name.
        sealed_to: Vec<String>,
    },
    /// A name to remove is not on the list.
    #[error("{user:?} is not among your {list}; nothing changed")]
    NotListed {
        /// The name.
        user: String,
        /// Which list.
        list: &'static str,
    },
    /// A list would pass its cap.
    #[error(
        "your {list} would hold {would_hold} users, at most {cap} allowed; remove some first. Nothing changed"
    )]
    ListFull {
        /// Which list.
        list: &'static str,
        /// How many it would hold.
        would_hold: usize,
        /// The cap.
        cap: usize,
    },
    /// A report of a voicemail the caller did not receive.
    #[error(
        "you did not receive voicemail {0}, or it expired: you may report only voicemail sent to you, until it expires"
    )]
    NotReceived(
        /// Voicemail id, hex.
        String,
    ),
    /// The request id was used before with different content.
    #[error("request_id was already used for a different deposit; use a fresh request id")]
    RequestIdReused,
    /// The voicemail is not pending for the caller.
    #[error("voicemail {id} is not pending for {username:?}")]
    NotPending {
        /// Voicemail id, hex.
        id: String,
        /// The caller.
        username: String,
    },
    /// A recall of a voicemail the caller did not send. The message names
    /// neither its sender nor its recipients.
    #[error("only the sender of voicemail {0} may recall it")]
    NotSender(
        /// Voicemail id, hex.
        String,
    ),
    /// A recall of a voicemail that is no longer there.
    #[error("{}", nothing_to_recall_text(.id, .why))]
    NothingToRecall {
        /// Voicemail id, hex.
        id: String,
        /// Why, as far as the caller's receipt tells.
        why: RecallGone,
    },
    /// A voter of the group has not published a share key yet, so no grant
    /// can list one for every server.
    #[error("auth server {0} has not published its share key yet; try again in a few seconds")]
    ShareKeyMissing(
        /// The server's name.
        String,
    ),
    /// OpenShare for a voicemail this server does not hold for the caller.
    #[error(
        "voicemail {id} is not waiting for you on auth server {server}: it was fetched, discarded or expired, was never sent to you, or this server has not applied its deposit yet (retry in a moment, or ask the other servers)"
    )]
    NoShare {
        /// Voicemail id, hex.
        id: String,
        /// This server's name.
        server: String,
    },
    /// The share key epoch a share is sealed to was erased on this server.
    #[error(
        "auth server {server} no longer holds its share key of epoch {epoch}, which this voicemail's share is sealed to; ask the other servers for theirs"
    )]
    ShareKeyErased {
        /// The epoch.
        epoch: u32,
        /// This server's name.
        server: String,
    },
    /// This server's share of a voicemail cannot be used.
    #[error("{0}")]
    ShareUnusable(String),
    /// This server is not the leader; the client should retry at the leader.
    #[error("{}", not_leader_text(.0.as_ref()))]
    NotLeader(Option<Member>),
    /// The group cannot serve the call now: no majority, or Raft stopped.
    #[error(
        "the auth group cannot serve this right now: {0}. Retry shortly; another server may be the leader"
    )]
    Unavailable(String),
    /// A log entry could not be applied because stored data is corrupt.
    #[error("{0}")]
    Apply(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn nothing_to_recall_text(id: &str, why: &RecallGone) -> String {
    match why {
        RecallGone::Delivered => {
            format!("voicemail {id} was already delivered to everyone; nothing to recall")
        }
        RecallGone::Recalled(at) => {
            format!("voicemail {id} was already recalled at Unix time {at}; nothing to recall")
        }
        RecallGone::Expired(at) => format!(
            "voicemail {id} expired at Unix time {at}, and its recipients can no longer fetch it; nothing to recall"
        ),
        RecallGone::Unknown => format!(
            "you have no voicemail {id} to recall (never deposited by you, or its record is gone a week after it expired); ListSent shows what you can recall"
        ),
    }
}

fn none_accepts_text(refusals: &[(String, Refusal)]) -> String {
    let each: Vec<String> = refusals.iter().map(|(u, r)| format!("{u} {r}")).collect();
    format!(
        "no recipient takes this voicemail, so nothing was stored: {}",
        each.join("; ")
    )
}

fn quota_text(quota: Quota, limit: u64, used: u64, resets_at: u64) -> String {
    let when = match (quota, resets_at) {
        (Quota::OutstandingBytes, _) => {
            "it frees up as your recipients fetch or discard your voicemail, as it expires, or when you recall some (vmail recall)".to_owned()
        }
        (_, 0) => "reports against you have closed it".to_owned(),
        (_, t) => format!("it frees up at Unix time {t}"),
    };
    format!(
        "sender quota {} reached ({used} used of {limit}; [spam] in the group's config): {when}. `vmail whoami` shows every quota",
        quota.name()
    )
}

fn not_leader_text(leader: Option<&Member>) -> String {
    match leader {
        Some(m) => format!(
            "this auth server is not the leader; retry at {} ({})",
            m.api_url, m.name
        ),
        None => {
            "this auth server is not the leader and no leader is known yet; retry in a few seconds"
                .to_owned()
        }
    }
}

pub(super) fn invalid(field: &'static str, why: impl Into<String>) -> AuthError {
    AuthError::InvalidArgument {
        field,
        why: why.into(),
    }
}

impl From<vmail_proto::account::AccountError> for AuthError {
    fn from(e: vmail_proto::account::AccountError) -> Self {
        use vmail_proto::account::AccountError as E;
        match e {
            E::KeyLength(n) => invalid("account_key", format!("{n} bytes, expected 32")),
            E::Key(why) => invalid("account_key", why),
            E::SignatureLength(n) => invalid("account_proof", format!("{n} bytes, expected 64")),
            E::BadSignature => AuthError::Account(e.to_string()),
        }
    }
}
