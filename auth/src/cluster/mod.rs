//! Replication of the auth state across the group with Raft (openraft).
//!
//! Every change to the auth state is a [`Command`] in the Raft log. The
//! leader fills in everything a command needs, times and random values
//! included, so applying it is deterministic on every member. Secrets in a
//! command are sealed under the group's data key ([`seal`]), so the log and
//! snapshots hold no plaintext secret. A voicemail's session key is not
//! there at all: its shares are sealed to each server's share key.
//!
//! - [`batcher`]: proposes writes that arrive together as one entry;
//! - [`log_store`]: the Raft log (an append-only file of its own,
//!   `log_file`) and the vote (in the server's redb database);
//! - [`state_machine`]: applies commands to the [`crate::store::Store`], builds
//!   and installs snapshots;
//! - [`network`]: the client side of the internal `vmail.auth.cluster.v1`
//!   service, over mutual TLS;
//! - [`rpc`]: the server side of that service;
//! - [`signer`]: the threshold signing rounds that service carries, and
//!   their coordinator; `sign_target`: what a round signs, rebuilt from a
//!   signer's state;
//! - [`sign_batcher`]: grants, orders and proofs asked for together share
//!   one round;
//! - [`peer_name`]: the name in a member's TLS client certificate.

pub mod admin;
pub mod batcher;
mod log_file;
pub mod log_store;
pub mod network;
pub mod peer_name;
pub mod rpc;
pub mod sign_batcher;
mod sign_target;
pub mod signer;
pub mod state_machine;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use vmail_proto::keys::{MasterKeyId, SecretKey};
use vmail_proto::meta::VoicemailMeta;

use std::sync::Arc;

use vmail_proto::cert::UserCertificate;

use crate::store::{
    AckOutcome, DepositOutcome, DkgOutcome, DkgStep, EditRefusal, GrantOutcome, GrantPolicy,
    GrantTerms, MemberKeyOutcome, Policy, PolicyList, PolicyMode, PublishOutcome, PurgeCounts,
    RecallOutcome, RegisterOutcome, ReportOutcome, StoredShare, VoicemailId, Vouch,
};

openraft::declare_raft_types!(
    /// The Raft type configuration of the auth group.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The group's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// A member of the auth group, as recorded in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The server's name, unique in the group.
    pub name: String,
    /// `https://HOST:PORT` of its public `vmail.auth.v1` API.
    pub api_url: String,
    /// `https://HOST:PORT` of its internal `vmail.auth.cluster.v1` service.
    pub raft_url: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (api {}, raft {})",
            self.name, self.api_url, self.raft_url
        )
    }
}

/// A change to the auth state: one Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a user (OPAQUE registration, round 2).
    Register {
        /// The username.
        username: String,
        /// SHA-256 of the invite code used, hex.
        invite_hash: Option<String>,
        /// The OPAQUE password file, sealed (see [`seal`]).
        password_file: Vec<u8>,
        /// Names the OPRF key of the password file.
        credential_nonce: [u8; 16],
        /// The identity key to certify.
        identity_key: [u8; 32],
        /// The account public key (checked by the leader), recorded with
        /// the user for good.
        account_key: [u8; 32],
        /// Registration time, Unix seconds.
        now: u64,
        /// Certificate lifetime, seconds.
        cert_ttl: u64,
    },
    /// Open a session and issue a certificate (login, round 2).
    BeginSession {
        /// The user.
        username: String,
        /// SHA-256 of the bearer token.
        token_hash: [u8; 32],
        /// The master key, sealed (see [`seal`]).
        master_key: Vec<u8>,
        /// Its id.
        master_key_id: MasterKeyId,
        /// The identity key to certify.
        identity_key: [u8; 32],
        /// The peer id to bind, possibly empty.
        peer_id: Vec<u8>,
        /// The session's inbox key (X25519 public key, checked by the leader).
        inbox_key: [u8; 32],
        /// The login id the statement signed.
        login_id: [u8; 16],
        /// The user's signature by their account key over the session
        /// statement; every server checks it when it applies the entry.
        account_proof: Vec<u8>,
        /// Login time, Unix seconds.
        now: u64,
        /// Session lifetime, seconds.
        session_ttl: u64,
        /// Certificate lifetime, seconds.
        cert_ttl: u64,
    },
    /// Revoke a session (logout).
    EndSession {
        /// SHA-256 of its token.
        token_hash: [u8; 32],
    },
    /// Issue a storage grant, if the owner's session is still live when the
    /// entry applies; the serial comes from the store.
    Grant {
        /// SHA-256 of the owner's session token.
        token_hash: [u8; 32],
        /// The user asking.
        owner: String,
        /// Canonical recipients of the voicemail to be deposited.
        recipients: Vec<String>,
        /// What the grant covers, times resolved.
        terms: GrantTerms,
        /// Issue time, Unix seconds.
        now: u64,
        /// The per-user quota of open grants in force.
        max_open: u64,
    },
    /// Keep a voicemail's session-key shares and locator for its
    /// recipients, if the sender's session is still live when the entry
    /// applies. The shares are sealed to the servers' share keys; no server
    /// sees the session key.
    Deposit {
        /// SHA-256 of the sender's session token: the entry applies only
        /// while that session exists and has not expired at `deposited_at`.
        token_hash: [u8; 32],
        /// The sender's idempotency key.
        request_id: Vec<u8>,
        /// What makes two requests the same deposit.
        digest: [u8; 32],
        /// The voicemail id the leader chose.
        id: VoicemailId,
        /// The sender.
        sender: String,
        /// Canonical recipients.
        recipients: Vec<String>,
        /// The storage locator.
        locator: Vec<u8>,
        /// Metadata, expiry resolved.
        metadata: VoicemailMeta,
        /// Deposit time, Unix seconds.
        deposited_at: u64,
        /// Shares needed to recover the session key.
        threshold: u8,
        /// The sender's key check of the session key.
        key_check: [u8; 32],
        /// The shares, one per server, as the leader checked them.
        shares: Vec<StoredShare>,
        /// The inbox cap in force.
        max_pending: u64,
        /// The sender's storage grant this deposit uses.
        grant_serial: u64,
    },
    /// A recipient has fetched a voicemail.
    Ack {
        /// The recipient.
        recipient: String,
        /// The voicemail.
        id: VoicemailId,
        /// Time of the ack, Unix seconds.
        now: u64,
    },
    /// Erase what expired at `now`.
    Purge {
        /// Unix seconds.
        now: u64,
    },
    /// Several commands proposed together ([`batcher`]), applied in order.
    Batch(Vec<Command>),
    // New variants go after this line: postcard numbers variants by
    // position, so entries already in a log must keep decoding.
    /// Set how long voicemail for a user may wait (the leader checked the
    /// range against its configuration).
    SetRetention {
        /// The user.
        username: String,
        /// Seconds; 0 returns to the group's default.
        retention_secs: u64,
    },
    /// The sender withdraws a voicemail.
    Recall {
        /// The caller, who must be its sender.
        sender: String,
        /// The voicemail.
        id: VoicemailId,
        /// Time of the recall, Unix seconds.
        now: u64,
    },
    /// Issue a storage grant as [`Command::Grant`] does, under the
    /// recipients' policies and the owner's quotas.
    GrantUnderPolicy {
        /// SHA-256 of the owner's session token.
        token_hash: [u8; 32],
        /// The user asking.
        owner: String,
        /// Canonical recipients asked for.
        recipients: Vec<String>,
        /// What the grant covers, times resolved.
        terms: GrantTerms,
        /// Issue time, Unix seconds.
        now: u64,
        /// The per-user quota of open grants in force.
        max_open: u64,
        /// Anonymity, quotas and first-contact limits in force.
        policy: GrantPolicy,
    },
    /// Change a user's mode or anonymous opt-in (`None` keeps each).
    SetPolicy {
        /// The user.
        username: String,
        /// The new mode.
        mode: Option<PolicyMode>,
        /// The new opt-in.
        accept_anonymous: Option<bool>,
    },
    /// Add and remove names on one of a user's lists (the leader checked
    /// the names' form; the apply checks they exist and the cap).
    EditPolicy {
        /// The user.
        username: String,
        /// Which list.
        list: PolicyList,
        /// Names to add.
        add: Vec<String>,
        /// Names to remove.
        remove: Vec<String>,
    },
    /// A recipient reports a voicemail as spam.
    Report {
        /// The recipient.
        reporter: String,
        /// The voicemail.
        id: VoicemailId,
        /// Time of the report, Unix seconds.
        now: u64,
    },
    /// A server publishes its share key of a new epoch (the leader checked
    /// the caller and the key). Refused when that server already published
    /// this epoch or a newer one.
    PublishShareKey {
        /// The server's Raft node id.
        node_id: u64,
        /// The key's epoch.
        epoch: u32,
        /// The X25519 public key.
        public_key: [u8; 32],
        /// Publication time, Unix seconds.
        now: u64,
    },
    /// Begin a distributed key generation among `roster` (the leader's
    /// voters), docs/THRESHOLD.md §1.
    DkgBegin {
        /// The members, by node id.
        roster: Vec<u64>,
        /// The leader's clock, Unix seconds.
        now: u64,
    },
    /// One member's step of the current ceremony (the leader checked that
    /// the member's TLS name proposed it).
    Dkg {
        /// The member.
        node_id: u64,
        /// Its step.
        step: DkgStep,
    },
    /// The group's threshold signature on a user's current certificate
    /// (docs/PROTOCOL.md §16.10), checked under the group key at apply.
    CertifyGroup {
        /// The subject.
        username: String,
        /// The certificate's serial.
        serial: u64,
        /// The group signature (64 bytes).
        signature: Vec<u8>,
    },
    /// Begin a refresh of the group key among `roster` (the voters that
    /// hold a share of it), docs/THRESHOLD.md §4.
    DkgRefresh {
        /// The members, by node id.
        roster: Vec<u64>,
        /// The leader's clock, Unix seconds.
        now: u64,
    },
    /// Begin a repair that gives `joining` (a voter) a share of the group
    /// key, made by `helpers`, docs/THRESHOLD.md §4.
    DkgRepair {
        /// The member that gets a share.
        joining: u64,
        /// The key's threshold of its share holders.
        helpers: Vec<u64>,
        /// The leader's clock, Unix seconds.
        now: u64,
    },
    /// Record a joining server's member key (docs/PROTOCOL.md §7.14), which
    /// `Join` proposes before it adds the server as a learner.
    RegisterMember {
        /// The server's Raft node id.
        node_id: u64,
        /// Its Ed25519 member key.
        member_key: [u8; 32],
    },
    /// [`Command::PublishShareKey`] signed by the server's member key, as
    /// every server now publishes (§7.14). Refused when the signature does
    /// not verify or names a key other than the one recorded for it.
    PublishVouchedShareKey {
        /// The server's Raft node id.
        node_id: u64,
        /// The key's epoch.
        epoch: u32,
        /// The X25519 public key.
        public_key: [u8; 32],
        /// The server's member key and signature.
        vouch: Vouch,
        /// Publication time, Unix seconds.
        now: u64,
    },
    /// A member approves a joining server, which a repair of the group key
    /// needs from the key's threshold of share holders (§16.9).
    ApproveJoin {
        /// The approving member's node id.
        approver: u64,
        /// The joining server's node id.
        joining: u64,
        /// The approver's member-key signature over
        /// `store::approval_bytes(joining, its member key)` (64 bytes).
        signature: Vec<u8>,
    },
    /// [`Command::Dkg`] signed by the member's member key over
    /// `store::step_bytes` (§16.9); refused when a key is recorded for the
    /// member and the signature does not verify under it.
    VouchedDkg {
        /// The member.
        node_id: u64,
        /// Its step.
        step: DkgStep,
        /// The signature (64 bytes).
        signature: Vec<u8>,
    },
}

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A blank or membership entry.
    None,
    /// Result of [`Command::Register`].
    Registered(RegisterOutcome),
    /// Result of [`Command::BeginSession`]: the certificate issued.
    SessionBegun(Box<UserCertificate>),
    /// Result of [`Command::EndSession`]: whether it existed.
    SessionEnded(bool),
    /// Result of [`Command::Grant`] and [`Command::GrantUnderPolicy`].
    Granted(GrantOutcome),
    /// Result of [`Command::Deposit`].
    Deposited(DepositOutcome),
    /// A [`Command::Deposit`] or [`Command::Grant`] whose user's session had
    /// ended or expired by the time it applied; nothing changed.
    SessionGone,
    /// Result of [`Command::Ack`].
    Acked(AckOutcome),
    /// Result of [`Command::Purge`]: what was erased.
    Purged(PurgeCounts),
    /// The command could not be applied because stored data is corrupt; the
    /// state did not change.
    Failed(String),
    /// Result of [`Command::Batch`]: one reply per command, in order.
    Batch(Vec<Reply>),
    /// Result of [`Command::SetRetention`].
    RetentionSet,
    /// Result of [`Command::Recall`].
    Recalled(RecallOutcome),
    /// Result of [`Command::SetPolicy`]: the policy now in force.
    Policy(Policy),
    /// Result of [`Command::EditPolicy`]: the policy now in force, or why
    /// nothing changed.
    PolicyEdited(Result<Policy, EditRefusal>),
    /// Result of [`Command::Report`].
    Reported(ReportOutcome),
    /// Result of [`Command::PublishShareKey`] and
    /// [`Command::PublishVouchedShareKey`].
    ShareKeyPublished(PublishOutcome),
    /// Result of [`Command::DkgBegin`], [`Command::DkgRefresh`],
    /// [`Command::DkgRepair`], [`Command::Dkg`] and [`Command::VouchedDkg`].
    Dkg(DkgOutcome),
    /// A [`Command::BeginSession`] whose statement the user's account key
    /// did not sign (or whose user does not exist); nothing changed.
    SessionUnsigned(String),
    /// Result of [`Command::CertifyGroup`]: `None` once stored, else why
    /// not (nothing changed).
    GroupCertified(Option<String>),
    /// Result of [`Command::RegisterMember`].
    MemberRegistered(MemberKeyOutcome),
    /// Result of [`Command::ApproveJoin`]: the approvers so far, or why
    /// nothing changed.
    JoinApproved(Result<Vec<u64>, String>),
}

/// What applying an entry tells the watchers of pending voicemail: the
/// state machine sends these after each batch commits.
#[derive(Debug, Clone)]
pub enum Event {
    /// A voicemail was deposited for these recipients.
    Deposited {
        /// The voicemail.
        id: VoicemailId,
        /// Its recipients.
        recipients: Arc<Vec<String>>,
    },
    /// A session ended (logout).
    SessionEnded {
        /// Its token hash.
        token_hash: [u8; 32],
    },
}

/// Checks that `bytes` is an X25519 public key a share can be sealed to:
/// 32 bytes, and not a point HPKE refuses (a low-order point, whose shared
/// secret would be zero). The check seals a throwaway key to it.
pub fn x25519_public(bytes: &[u8]) -> Result<[u8; 32], String> {
    let public: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("{} bytes, expected 32 (an X25519 public key)", bytes.len()))?;
    let recipients = vmail_proto::names::Recipients::parse(["check"]).expect("a valid username");
    let probe = vmail_proto::share::ShareKey {
        node_id: 0,
        epoch: 0,
        public,
    };
    vmail_proto::share::split(&SecretKey::random(), &[probe], 0, &recipients, &[])
        .map_err(|_| "not a usable X25519 public key".to_owned())?;
    Ok(public)
}

/// The AAD prefix of a secret sealed into a log entry.
const AAD_LOG: &[u8] = b"vmail/v1/raft-log/";

/// Seals a secret for a log entry under the group's data key. `what` names
/// the field and `row` the entry it belongs to, so a sealed value cannot be
/// moved to another command.
pub fn seal(data_key: &SecretKey, what: &str, row: &[u8], secret: &[u8]) -> Vec<u8> {
    data_key.seal(secret, &[AAD_LOG, what.as_bytes(), b"/", row].concat())
}

/// Opens a secret sealed by [`seal`].
pub fn unseal(
    data_key: &SecretKey,
    what: &str,
    row: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, String> {
    data_key
        .open(sealed, &[AAD_LOG, what.as_bytes(), b"/", row].concat())
        .map_err(|e| format!("sealed {what} does not open under the data key: {e}"))
}

/// The Raft timing the group runs with. Heartbeats go out every 200 ms. A
/// follower that hears none stands for election after openraft 0.9's
/// leader lease (`election_timeout_max`) plus a random 400-800 ms: 1.2-1.6
/// s of silence, six heartbeats or more (etcd's defaults wait 1-2 s). In
/// openraft 0.9 an AppendEntries must also be answered within the
/// heartbeat interval, the follower's fsync included, so one carries at
/// most 16 entries (1 MiB at the batcher's 64 KiB bound). A snapshot is
/// taken every 5000 entries and the log before it is purged, keeping 1000.
pub fn raft_config(cluster_name: &str) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster_name.to_owned(),
        heartbeat_interval: 200,
        election_timeout_min: 400,
        election_timeout_max: 800,
        max_payload_entries: 16,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    }
}
