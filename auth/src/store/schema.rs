//! The database's tables, its schema version and the `meta` keys that tie
//! it to its key files.

use redb::TableDefinition;

/// The schema this build reads and writes.
///
/// Version 3 added the storage-grant tables, the `next_grant_serial` counter
/// and the grant serial in deposit log entries and snapshots; a version-2
/// database is refused (its log and snapshots decode differently).
///
/// The `retention` and `receipts` tables came later within version 3: a
/// database without them still opens ([`Store::open`] creates them empty),
/// their log entries are new variants at the end of `Command`, and their
/// rows follow the older snapshot fields, so older logs and snapshots still
/// decode. So did the spam-control tables (`policies`, `senders`,
/// `reports`, `notes`, `first_contacts`, `grant_admissions`), and the
/// key-generation tables (`share_keys`, `dkg`, `reshares`) and
/// `grant_rosters` within version 4.
///
/// Version 4 replaced each voicemail's session key (sealed under the data
/// key) with its threshold shares, sealed to the servers' share keys
/// (`share_keys` table), and added the inbox key to sessions and their log
/// entries; a version-3 database is refused.
///
/// [`Store::open`]: super::Store::open
pub const SCHEMA_VERSION: u64 = 4;

/// `meta` key of an empty blob sealed under the data key: proves the data key fits.
pub(super) const DATA_KEY_CHECK: &str = "vmail/v1/data-key-check";
/// `meta` key of the OPAQUE server public key the password files depend on.
pub(super) const OPAQUE_PUBLIC_KEY: &str = "opaque_public_key";
/// `meta` key of the cluster public key that signed the stored certificates.
pub(super) const CLUSTER_PUBLIC_KEY: &str = "cluster_public_key";
/// `meta` key of the next storage-grant serial, u64 LE.
pub(super) const NEXT_GRANT_SERIAL: &str = "next_grant_serial";

pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
pub(super) const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
pub(super) const VOICEMAILS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("voicemails");
pub(super) const GRANTS: TableDefinition<(&str, &[u8]), ()> = TableDefinition::new("grants");
pub(super) const REQUESTS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("requests");
pub(super) const INVITES: TableDefinition<&str, &str> = TableDefinition::new("invites");
pub(super) const WAITING: TableDefinition<&str, u64> = TableDefinition::new("waiting");
/// A storage grant by serial → postcard `StorageGrantRow`. Not to be
/// confused with `grants`, a recipient's access to a voicemail.
pub(super) const STORAGE_GRANTS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("storage_grants");
/// (owner, serial) → upload_until, for each storage grant not yet deposited:
/// what the per-user quota counts.
pub(super) const OPEN_GRANTS: TableDefinition<(&str, u64), u64> =
    TableDefinition::new("open_grants");
/// Voicemail id → the serial of the storage grant it was deposited under.
pub(super) const VOICEMAIL_GRANTS: TableDefinition<&[u8], u64> =
    TableDefinition::new("voicemail_grants");
/// Username → how long voicemail for that user may wait, seconds, for users
/// who chose a retention (`SetRetention`); no row means the group's default.
pub(super) const RETENTION: TableDefinition<&str, u64> = TableDefinition::new("retention");
/// (sender, voicemail id) → postcard `Receipt`: what the sender sees of a
/// voicemail, kept until `RECEIPT_KEEP_SECS` after its expiry.
pub(super) const RECEIPTS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("receipts");
/// Username → postcard `Policy`, for users who changed theirs from the
/// default (`policy`).
pub(super) const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
/// Username → postcard `Ledger`: the sender's quota use and reports
/// (`senders`).
pub(super) const SENDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("senders");
/// (sender, reporter) → Unix seconds of the first report.
pub(super) const REPORTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("reports");
/// (recipient, voicemail id) → postcard `DeliveryNote`, until the
/// voicemail's expiry.
pub(super) const NOTES: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("notes");
/// (recipient, sender) → serial of the last limited first contact's grant.
pub(super) const FIRST_CONTACTS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("first_contacts");
/// Storage-grant serial → postcard `Admission`, for grants issued under
/// recipient policies.
pub(super) const GRANT_ADMISSIONS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("grant_admissions");
/// (node id, epoch) → postcard `PublishedKey`: the share keys the group's
/// servers published (`share_keys`).
pub(super) const SHARE_KEYS: TableDefinition<(u64, u32), &[u8]> =
    TableDefinition::new("share_keys");
/// Storage-grant serial → postcard `Vec<(node id, epoch)>`: the share keys
/// the grant hands out, as the log recorded them when it issued the grant
/// (`share_keys`).
pub(super) const GRANT_ROSTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("grant_rosters");
/// Ceremony number → postcard `Ceremony`: the group's distributed key
/// generation as the log recorded it (`dkg`).
pub(super) const DKG: TableDefinition<u64, &[u8]> = TableDefinition::new("dkg");
/// Ceremony number → postcard `Reshare`, for the ceremonies that refresh or
/// repair the existing key rather than generate one (`dkg`).
pub(super) const RESHARES: TableDefinition<u64, &[u8]> = TableDefinition::new("reshares");
/// Node id → postcard `MemberKeyRow`: the Ed25519 member key each server
/// signs its share-key publications with (`member_keys`).
pub(super) const MEMBER_KEYS: TableDefinition<u64, &[u8]> = TableDefinition::new("member_keys");
/// Joining node id → postcard `Vec<u64>`: the members that approved its
/// join with their member keys, which a repair needs (`member_keys`).
pub(super) const JOIN_APPROVALS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("join_approvals");
/// The Raft log: index → postcard-encoded entry.
pub(crate) const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft's own durable state: vote, committed, purged, applied, snapshot, node id.
pub(crate) const RAFT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft");
