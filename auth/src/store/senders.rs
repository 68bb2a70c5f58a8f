//! What the group remembers about each sender, to hold spam back (paper
//! §5, SPIT): quotas charged when a grant is issued, reports against the
//! sender, what each recipient was told about each voicemail, and the first
//! contacts still waiting.
//!
//! - `senders`: username → [`Ledger`]: grant times in the last hour, the
//!   strangers reached in the last day, bytes granted and not yet deleted,
//!   and how many distinct recipients reported the sender. [`Ledger::charge`]
//!   is the quota rule, pure. The ledger is replicated state, so quotas
//!   survive a leader change.
//! - `reports`: (sender, reporter) → time, so each recipient counts once.
//! - `notes`: (recipient, voicemail id) → [`DeliveryNote`], written with
//!   the deposit and kept until the voicemail's expiry, so a recipient can
//!   report a voicemail after fetching it and the group still knows a
//!   hidden sender.
//! - `first_contacts`: (recipient, sender) → the serial of the newest
//!   limited first contact's grant: one may wait per pair, and only the
//!   newest grant may be deposited.
//! - `grant_admissions`: serial → [`Admission`]: how each recipient took the
//!   grant's voicemail; the deposit must name exactly them.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::policy::{Accepted, PolicyList};
use super::schema::{
    FIRST_CONTACTS, GRANT_ADMISSIONS, GRANTS, NOTES, REPORTS, SENDERS, STORAGE_GRANTS,
};
use super::voicemails::VoicemailId;
use super::{Store, StoreError, corrupt, db_err};

/// The hourly window, seconds.
pub const HOUR: u64 = 3600;
/// The daily window, seconds.
pub const DAY: u64 = 86_400;

/// A sender's quotas, as configured (before reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderLimits {
    /// Grants issued in any hour.
    pub voicemails_per_hour: u64,
    /// Distinct recipients who do not list the sender as a contact, in any
    /// day; each report halves it.
    pub new_recipients_per_day: u64,
    /// Bytes granted and not yet deleted or expired.
    pub max_outstanding_bytes: u64,
}

impl SenderLimits {
    /// No limit at all: what grants logged before quotas apply under.
    pub const NONE: SenderLimits = SenderLimits {
        voicemails_per_hour: u64::MAX,
        new_recipients_per_day: u64::MAX,
        max_outstanding_bytes: u64::MAX,
    };

    /// The limits in force after `reports` distinct reports: each halves
    /// the new recipients a day.
    pub fn after_reports(self, reports: u32) -> SenderLimits {
        SenderLimits {
            new_recipients_per_day: self
                .new_recipients_per_day
                .checked_shr(reports)
                .unwrap_or(0),
            ..self
        }
    }
}

/// One quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quota {
    /// `voicemails_per_hour`.
    VoicemailsPerHour,
    /// `new_recipients_per_day`.
    NewRecipientsPerDay,
    /// `outstanding_bytes`.
    OutstandingBytes,
}

impl Quota {
    /// Its name, as in the config and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Quota::VoicemailsPerHour => "voicemails_per_hour",
            Quota::NewRecipientsPerDay => "new_recipients_per_day",
            Quota::OutstandingBytes => "outstanding_bytes",
        }
    }
}

/// One quota as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// Which.
    pub quota: Quota,
    /// The limit in force.
    pub limit: u64,
    /// How much is used.
    pub used: u64,
    /// When the oldest use leaves its window, Unix seconds; 0 when nothing
    /// is used, or when only deletions free it (bytes).
    pub resets_at: u64,
}

/// A sender's ledger (the `senders` row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Issue times of the grants of the last hour, oldest first.
    pub sent: Vec<u64>,
    /// Strangers reached in the last day, with when, oldest first.
    pub strangers: Vec<(String, u64)>,
    /// Bytes granted and not yet deleted or expired.
    pub outstanding_bytes: u64,
    /// Distinct recipients who reported the sender.
    pub reports: u32,
}

impl Ledger {
    fn trim(&mut self, now: u64) {
        self.sent.retain(|&t| t + HOUR > now);
        self.strangers.retain(|(_, t)| t + DAY > now);
    }

    /// Each quota as it stands at `now` under `limits` (before reports).
    pub fn allowances(&self, limits: SenderLimits, now: u64) -> [Allowance; 3] {
        let mut l = self.clone();
        l.trim(now);
        let limits = limits.after_reports(self.reports);
        [
            Allowance {
                quota: Quota::VoicemailsPerHour,
                limit: limits.voicemails_per_hour,
                used: l.sent.len() as u64,
                resets_at: l.sent.first().map_or(0, |t| t + HOUR),
            },
            Allowance {
                quota: Quota::NewRecipientsPerDay,
                limit: limits.new_recipients_per_day,
                used: l.strangers.len() as u64,
                resets_at: l.strangers.first().map_or(0, |(_, t)| t + DAY),
            },
            Allowance {
                quota: Quota::OutstandingBytes,
                limit: limits.max_outstanding_bytes,
                used: l.outstanding_bytes,
                resets_at: 0,
            },
        ]
    }

    /// Charges one grant of `bytes` reaching `strangers` at `now`, or says
    /// which quota it would pass (the ledger is then only trimmed). Pure.
    pub fn charge(
        &mut self,
        limits: SenderLimits,
        now: u64,
        strangers: &[&str],
        bytes: u64,
    ) -> Result<(), Allowance> {
        self.trim(now);
        let [hour, new, out] = self.allowances(limits, now);
        if hour.used >= hour.limit {
            return Err(hour);
        }
        if out.used.saturating_add(bytes) > out.limit {
            return Err(out);
        }
        let fresh: Vec<&str> = strangers
            .iter()
            .copied()
            .filter(|s| !self.strangers.iter().any(|(n, _)| n == s))
            .collect();
        if new.used + fresh.len() as u64 > new.limit {
            // A day's window with nothing in it yet resets a day from now.
            return Err(Allowance {
                resets_at: if new.used == 0 {
                    now + DAY
                } else {
                    new.resets_at
                },
                ..new
            });
        }
        self.sent.push(now);
        self.strangers
            .extend(fresh.into_iter().map(|s| (s.to_owned(), now)));
        self.outstanding_bytes = self.outstanding_bytes.saturating_add(bytes);
        Ok(())
    }
}

/// How the recipients took a grant's voicemail (the `grant_admissions` row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// Whether the sender is hidden.
    pub anonymous: bool,
    /// The recipients, canonical order, and how each took it.
    pub recipients: Vec<(String, Accepted)>,
}

/// What the group keeps of one voicemail for one recipient until it
/// expires (the `notes` row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryNote {
    /// The sender, even when hidden from the recipient.
    pub sender: String,
    /// The sender is not in the recipient's contacts.
    pub stranger: bool,
    /// The sender is hidden from the recipient.
    pub anonymous: bool,
    /// The voicemail's expiry, Unix seconds.
    pub expires_at: u64,
}

/// The result of [`Store::report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportOutcome {
    /// The reporter never received this voicemail (or it expired).
    NotReceived,
    /// Counted against the sender.
    Reported {
        /// The sender, unless hidden from the reporter.
        sender: Option<String>,
        /// Whether this report added the sender to the block list (false:
        /// already blocked, or the list is full).
        newly_blocked: bool,
        /// Whether this reporter had reported the sender before.
        repeat: bool,
    },
}

fn decode<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(table, key, e))
}

fn encode<T: Serialize>(row: &T) -> Vec<u8> {
    postcard::to_allocvec(row).expect("encodes")
}

impl Store {
    /// `user`'s ledger (empty when they never sent).
    pub fn ledger(&self, user: &str) -> Result<Ledger, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(SENDERS).map_err(db_err)?;
            t.get(user)
                .map_err(db_err)?
                .map_or(Ok(Ledger::default()), |v| {
                    decode("senders", user, v.value())
                })
        })
    }

    pub(super) fn ledger_in(
        &self,
        tx: &WriteTransaction,
        user: &str,
    ) -> Result<Ledger, StoreError> {
        let t = tx.open_table(SENDERS).map_err(db_err)?;
        t.get(user)
            .map_err(db_err)?
            .map_or(Ok(Ledger::default()), |v| {
                decode("senders", user, v.value())
            })
    }

    pub(super) fn put_ledger(
        &self,
        tx: &WriteTransaction,
        user: &str,
        ledger: &Ledger,
    ) -> Result<(), StoreError> {
        tx.open_table(SENDERS)
            .map_err(db_err)?
            .insert(user, encode(ledger).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// Gives back `bytes` of `owner`'s outstanding quota: their grant's
    /// shards were ordered deleted, or the grant lapsed.
    pub(super) fn release_bytes(
        &self,
        tx: &WriteTransaction,
        owner: &str,
        bytes: u64,
    ) -> Result<(), StoreError> {
        let mut ledger = self.ledger_in(tx, owner)?;
        if ledger.outstanding_bytes == 0 {
            return Ok(());
        }
        ledger.outstanding_bytes = ledger.outstanding_bytes.saturating_sub(bytes);
        self.put_ledger(tx, owner, &ledger)
    }

    /// Whether a limited first contact from `sender` still waits for
    /// `recipient` at `now`: its voicemail is deposited and still pending
    /// for them. A grant not yet deposited does not wait: a newer grant
    /// replaces it (a retry after a failed upload), and its deposit is then
    /// refused ([`Store::first_contact_current`]).
    pub(super) fn first_contact_waiting(
        &self,
        tx: &WriteTransaction,
        recipient: &str,
        sender: &str,
        now: u64,
    ) -> Result<bool, StoreError> {
        let Some(serial) = tx
            .open_table(FIRST_CONTACTS)
            .map_err(db_err)?
            .get((recipient, sender))
            .map_err(db_err)?
            .map(|v| v.value())
        else {
            return Ok(false);
        };
        let Some(record) = self.grant_in(tx, serial)? else {
            return Ok(false);
        };
        if record.deleted.is_some() || record.body.expires_at <= now {
            return Ok(false);
        }
        Ok(match record.deposited {
            Some(id) => tx
                .open_table(GRANTS)
                .map_err(db_err)?
                .get((recipient, id.as_slice()))
                .map_err(db_err)?
                .is_some(),
            None => false,
        })
    }

    /// The first limited recipient of `admission` for whom grant `serial`
    /// is no longer the newest first contact from `sender`: its deposit
    /// would make a second one wait.
    pub(super) fn first_contact_superseded(
        &self,
        tx: &WriteTransaction,
        serial: u64,
        sender: &str,
        admission: &Admission,
    ) -> Result<Option<String>, StoreError> {
        let fc = tx.open_table(FIRST_CONTACTS).map_err(db_err)?;
        for (r, _) in admission.recipients.iter().filter(|(_, a)| a.limited) {
            let newest = fc
                .get((r.as_str(), sender))
                .map_err(db_err)?
                .map(|v| v.value());
            if newest != Some(serial) {
                return Ok(Some(r.clone()));
            }
        }
        Ok(None)
    }

    /// Records the grants's admission, and the limited first contacts in it.
    pub(super) fn admitted(
        &self,
        tx: &WriteTransaction,
        serial: u64,
        sender: &str,
        admission: &Admission,
    ) -> Result<(), StoreError> {
        let mut fc = tx.open_table(FIRST_CONTACTS).map_err(db_err)?;
        for (r, a) in &admission.recipients {
            if a.limited {
                fc.insert((r.as_str(), sender), serial).map_err(db_err)?;
            }
        }
        tx.open_table(GRANT_ADMISSIONS)
            .map_err(db_err)?
            .insert(serial, encode(admission).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// How grant `serial`'s recipients took it; `None` for a grant issued
    /// before policies existed.
    pub(super) fn admission_in(
        &self,
        tx: &WriteTransaction,
        serial: u64,
    ) -> Result<Option<Admission>, StoreError> {
        tx.open_table(GRANT_ADMISSIONS)
            .map_err(db_err)?
            .get(serial)
            .map_err(db_err)?
            .map(|v| decode("grant_admissions", serial, v.value()))
            .transpose()
    }

    /// Writes each recipient's note of a deposited voicemail.
    pub(super) fn note_deliveries(
        &self,
        tx: &WriteTransaction,
        id: &VoicemailId,
        sender: &str,
        admission: &Admission,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let mut t = tx.open_table(NOTES).map_err(db_err)?;
        for (r, a) in &admission.recipients {
            let note = DeliveryNote {
                sender: sender.to_owned(),
                stranger: a.stranger,
                anonymous: admission.anonymous,
                expires_at,
            };
            t.insert((r.as_str(), id.as_slice()), encode(&note).as_slice())
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// `recipient`'s note of voicemail `id`, if they received it and it has
    /// not been purged.
    pub fn note(
        &self,
        recipient: &str,
        id: &VoicemailId,
    ) -> Result<Option<DeliveryNote>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(NOTES).map_err(db_err)?;
            t.get((recipient, id.as_slice()))
                .map_err(db_err)?
                .map(|v| decode("notes", hex::encode(id), v.value()))
                .transpose()
        })
    }

    /// `reporter` reports voicemail `id` as spam at `now`: its sender is
    /// blocked (among the hidden blocks when hidden) if the list has room,
    /// and counted once per reporter against the sender's standing.
    pub(crate) fn report(
        &self,
        tx: &WriteTransaction,
        reporter: &str,
        id: &VoicemailId,
        now: u64,
    ) -> Result<ReportOutcome, StoreError> {
        let note: DeliveryNote = match tx
            .open_table(NOTES)
            .map_err(db_err)?
            .get((reporter, id.as_slice()))
            .map_err(db_err)?
        {
            Some(v) => decode("notes", hex::encode(id), v.value())?,
            None => return Ok(ReportOutcome::NotReceived),
        };
        if note.expires_at <= now {
            return Ok(ReportOutcome::NotReceived);
        }
        let sender = note.sender.as_str();
        let mut policy = self.policy_in(tx, reporter)?;
        let held = policy.blocked.len() + policy.hidden_blocked.len();
        let already = policy.blocked.contains(sender) || policy.hidden_blocked.contains(sender);
        let newly_blocked = !already && held < PolicyList::Blocked.cap();
        if newly_blocked {
            policy.contacts.remove(sender);
            if note.anonymous {
                policy.hidden_blocked.insert(sender.to_owned());
            } else {
                policy.blocked.insert(sender.to_owned());
            }
            self.put_policy(tx, reporter, &policy)?;
        }
        let mut reports = tx.open_table(REPORTS).map_err(db_err)?;
        let repeat = reports.get((sender, reporter)).map_err(db_err)?.is_some();
        if !repeat {
            reports.insert((sender, reporter), now).map_err(db_err)?;
            let mut ledger = self.ledger_in(tx, sender)?;
            ledger.reports = ledger.reports.saturating_add(1);
            self.put_ledger(tx, sender, &ledger)?;
        }
        Ok(ReportOutcome::Reported {
            sender: (!note.anonymous).then(|| sender.to_owned()),
            newly_blocked,
            repeat,
        })
    }

    /// Drops the notes of voicemails expired at `now`, the admissions of
    /// grants no longer stored, and first contacts whose grant is gone.
    pub(super) fn purge_senders(&self, tx: &WriteTransaction, now: u64) -> Result<(), StoreError> {
        let grants = tx.open_table(STORAGE_GRANTS).map_err(db_err)?;
        tx.open_table(NOTES)
            .map_err(db_err)?
            .retain(|_, v| {
                postcard::from_bytes::<DeliveryNote>(v).map_or(true, |n| n.expires_at > now)
            })
            .map_err(db_err)?;
        let mut gone = Vec::new();
        for entry in tx
            .open_table(GRANT_ADMISSIONS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, _) = entry.map_err(db_err)?;
            if grants.get(k.value()).map_err(db_err)?.is_none() {
                gone.push(k.value());
            }
        }
        let mut t = tx.open_table(GRANT_ADMISSIONS).map_err(db_err)?;
        for serial in gone {
            t.remove(serial).map_err(db_err)?;
        }
        let mut fc = tx.open_table(FIRST_CONTACTS).map_err(db_err)?;
        let mut stale = Vec::new();
        for entry in fc.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            if grants.get(v.value()).map_err(db_err)?.is_none() {
                let (r, s) = k.value();
                stale.push((r.to_owned(), s.to_owned()));
            }
        }
        for (r, s) in stale {
            fc.remove((r.as_str(), s.as_str())).map_err(db_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! [`Ledger::charge`]: each quota trips at its limit, says when it
    //! resets, and frees up as its window passes.

    use super::*;

    const LIMITS: SenderLimits = SenderLimits {
        voicemails_per_hour: 3,
        new_recipients_per_day: 2,
        max_outstanding_bytes: 1000,
    };
    const T: u64 = 1_700_000_000;

    #[test]
    fn voicemails_per_hour_trip_and_reset_an_hour_after_the_oldest() {
        let mut l = Ledger::default();
        for i in 0..3 {
            l.charge(LIMITS, T + i * 10, &[], 1).unwrap();
        }
        let hit = l.charge(LIMITS, T + 100, &[], 1).unwrap_err();
        assert_eq!(hit.quota, Quota::VoicemailsPerHour);
        assert_eq!((hit.limit, hit.used, hit.resets_at), (3, 3, T + HOUR));
        // Nothing was charged by the refusal; the oldest leaves at T + HOUR.
        assert!(l.charge(LIMITS, T + HOUR - 1, &[], 1).is_err());
        l.charge(LIMITS, T + HOUR, &[], 1).unwrap();
        assert_eq!(l.sent, vec![T + 10, T + 20, T + HOUR]);
    }

    #[test]
    fn new_recipients_count_once_a_day_and_reports_halve_them() {
        let mut l = Ledger::default();
        l.charge(LIMITS, T, &["a", "b"], 1).unwrap();
        // Known strangers do not count again.
        l.charge(LIMITS, T + 1, &["a"], 1).unwrap();
        let hit = l.charge(LIMITS, T + 2, &["c"], 1).unwrap_err();
        assert_eq!(hit.quota, Quota::NewRecipientsPerDay);
        assert_eq!((hit.used, hit.resets_at), (2, T + DAY));
        l.charge(LIMITS, T + DAY, &["c"], 1).unwrap();
        // One report halves the daily allowance to 1.
        let mut r = Ledger {
            reports: 1,
            ..Ledger::default()
        };
        assert!(r.charge(LIMITS, T, &["a", "b"], 1).is_err());
        r.charge(LIMITS, T, &["a"], 1).unwrap();
        // Enough reports close strangers off altogether, contacts not.
        let mut s = Ledger {
            reports: 64,
            ..Ledger::default()
        };
        let hit = s.charge(LIMITS, T, &["a"], 1).unwrap_err();
        assert_eq!((hit.limit, hit.resets_at), (0, T + DAY));
        s.charge(LIMITS, T, &[], 1).unwrap();
    }

    #[test]
    fn outstanding_bytes_trip_until_released() {
        let mut l = Ledger::default();
        l.charge(LIMITS, T, &[], 600).unwrap();
        let hit = l.charge(LIMITS, T, &[], 401).unwrap_err();
        assert_eq!(hit.quota, Quota::OutstandingBytes);
        assert_eq!((hit.used, hit.limit, hit.resets_at), (600, 1000, 0));
        l.charge(LIMITS, T, &[], 400).unwrap();
        assert_eq!(l.outstanding_bytes, 1000);
    }
}
