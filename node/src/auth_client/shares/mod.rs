//! Threshold-shared session keys, the client's pure half
//! (`vmail_proto::share`, docs/PROTOCOL.md §3.2): the share keys a grant
//! names, checked before the sender splits a key among them; the shape of
//! a pending voicemail's shares; and the [`Collector`] that turns the auth
//! servers' `OpenShare` answers into the session key, or into an error that
//! says, per server, why its share could not be used.
//!
//! No IO here: `recover.rs` asks the servers and feeds their answers in as
//! they come, so every rule below is tested without a server.

use std::collections::HashSet;

use vmail_proto::keys::SecretKey;
use vmail_proto::names::Username;
use vmail_proto::pb;
use vmail_proto::share::{
    self, BoxSecret, MAX_SHARES, PUBLIC_LEN, ResealBinding, ResealedShare, SEALED_LEN, ShareError,
    ShareKey, ShareValue,
};

use super::{ClientError, protocol};

/// Which auth server holds which share of a voicemail's session key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShareSlot {
    /// The server's Raft node id.
    pub node_id: u64,
    /// The share's index (Shamir x-coordinate), 1..=16.
    pub index: u8,
    /// The server's public API URL as the group knows it (`https://`),
    /// `None` when it is no longer a member. A recovery asks it besides the
    /// configured endpoints.
    pub api_url: Option<String>,
}

impl KeyShares {
    /// The endpoints a recovery asks: the `configured` ones, then each
    /// slot's URL that is not among them.
    pub fn endpoints(&self, configured: &[String]) -> Vec<String> {
        let mut all = configured.to_vec();
        for url in self.slots.iter().filter_map(|s| s.api_url.as_ref()) {
            if !all.contains(url) {
                all.push(url.clone());
            }
        }
        all
    }
}

/// How a pending voicemail's session key is shared among the auth servers,
/// checked for shape when it is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyShares {
    /// Shares needed to recover the key.
    pub threshold: u8,
    /// The deposit's key check: the recombined key must match it.
    pub key_check: [u8; 32],
    /// Who holds which share, one per server.
    pub slots: Vec<ShareSlot>,
}

/// The share keys of a grant answer, checked: at least one, at most
/// [`MAX_SHARES`], each 32 bytes, each server once, and no fewer than the
/// `configured` auth endpoints (a leader that leaves servers out of the list
/// would see more of the key than a majority allows).
pub fn grant_share_keys(
    keys: Vec<pb::ShareKey>,
    configured: usize,
) -> Result<Vec<ShareKey>, ClientError> {
    let keys = keys
        .into_iter()
        .map(|k| {
            let public: [u8; PUBLIC_LEN] = k.public_key.as_slice().try_into().map_err(|_| {
                protocol(format!(
                    "the storage grant's share key of server {} is {} bytes, not {PUBLIC_LEN}",
                    k.node_id,
                    k.public_key.len()
                ))
            })?;
            Ok(ShareKey {
                node_id: k.node_id,
                epoch: k.epoch,
                public,
            })
        })
        .collect::<Result<Vec<_>, ClientError>>()?;
    check_share_keys(&keys, configured)?;
    Ok(keys)
}

/// Checks share keys before a key is split among them (see
/// [`grant_share_keys`]).
pub fn check_share_keys(keys: &[ShareKey], configured: usize) -> Result<(), ClientError> {
    let bad = |what: String| Err(protocol(format!("the storage grant's share keys: {what}")));
    if keys.is_empty() {
        return bad("there are none, so the session key could not be deposited".into());
    }
    if keys.len() > MAX_SHARES {
        return bad(format!("{} of them, at most {MAX_SHARES}", keys.len()));
    }
    let mut seen = HashSet::new();
    if let Some(k) = keys.iter().find(|k| !seen.insert(k.node_id)) {
        return bad(format!("server {} is listed twice", k.node_id));
    }
    if keys.len() < configured {
        return bad(format!(
            "{} servers listed, but {configured} auth servers are configured: the leader may be leaving servers out (or --auth lists a server that is not in the group)",
            keys.len()
        ));
    }
    Ok(())
}

/// A pending voicemail's shares from the server, checked for shape: 1 to
/// [`MAX_SHARES`] slots, indices 1..=16 each once, servers each once, each
/// URL empty or `https://`, a threshold in 1..=slots and a 32-byte key
/// check.
pub fn key_shares(
    threshold: u32,
    key_check: &[u8],
    slots: Vec<pb::ShareSlot>,
) -> Result<KeyShares, String> {
    if slots.is_empty() || slots.len() > MAX_SHARES {
        return Err(format!(
            "{} key shares, expected 1 to {MAX_SHARES}",
            slots.len()
        ));
    }
    let slots = slots
        .into_iter()
        .map(|s| {
            let index = u8::try_from(s.index)
                .ok()
                .filter(|i| (1..=MAX_SHARES).contains(&usize::from(*i)))
                .ok_or_else(|| format!("key share index {} is not 1 to {MAX_SHARES}", s.index))?;
            let api_url = match s.api_url {
                url if url.is_empty() => None,
                url if super::is_https(&url) => Some(url),
                url => {
                    return Err(format!(
                        "server {} of key share {index} has API URL {url:?}, not https://",
                        s.node_id
                    ));
                }
            };
            Ok(ShareSlot {
                node_id: s.node_id,
                index,
                api_url,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (mut nodes, mut indices) = (HashSet::new(), HashSet::new());
    for s in &slots {
        if !nodes.insert(s.node_id) || !indices.insert(s.index) {
            return Err(format!(
                "key share {} of server {} repeats a server or an index",
                s.index, s.node_id
            ));
        }
    }
    let threshold = u8::try_from(threshold)
        .ok()
        .filter(|t| (1..=slots.len()).contains(&usize::from(*t)))
        .ok_or_else(|| format!("threshold {threshold} for {} key shares", slots.len()))?;
    let key_check = key_check
        .try_into()
        .map_err(|_| format!("key check of {} bytes, not 32", key_check.len()))?;
    Ok(KeyShares {
        threshold,
        key_check,
        slots,
    })
}

/// Why one auth server's share could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareFailure {
    /// It could not be reached, or did not answer in time.
    #[error("unreachable ({0})")]
    Unreachable(String),
    /// It had no share for the caller (it has not applied the deposit, or
    /// the caller no longer waits for the voicemail).
    #[error("has no share of it for you ({0})")]
    NoShare(String),
    /// It refused the call.
    #[error("refused ({0})")]
    Refused(String),
    /// Its answer is not shaped like a share.
    #[error("answered a malformed share ({0})")]
    Malformed(String),
    /// It answered a share the voicemail does not list.
    #[error("answered share {index} of server {node_id}, which this voicemail does not list")]
    NotListed {
        /// The node id it named.
        node_id: u64,
        /// The index it named.
        index: u32,
    },
    /// It answered a share another endpoint answered already (two URLs of
    /// one server).
    #[error("answered the same share as {0}")]
    Duplicate(String),
    /// The share did not open with this session's inbox key.
    #[error("answered a share that does not open")]
    DoesNotOpen,
}

/// Why a voicemail's session key could not be recovered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// Fewer auth servers are known (configured, or named by a share slot)
    /// than shares are needed.
    #[error(
        "recovering the key of voicemail {id} needs shares from {need} auth servers, but only {known} are known: list every auth server in --auth"
    )]
    TooFewEndpoints {
        /// The voicemail, hex.
        id: String,
        /// The threshold.
        need: usize,
        /// Endpoints known: configured, or named by a share slot.
        known: usize,
    },
    /// Too few servers answered a share that opens, or the shares did not
    /// recombine to the key.
    #[error("recovering the key of voicemail {id} needs shares from {need} auth servers, got {got}{}{}{}",
        if *.mismatch { ", and they do not recombine to the voicemail's key (at least one auth server answered a wrong share)" } else { "" },
        failures_text(.failures),
        if *.got == 0 && !.failures.is_empty() && .failures.iter().all(|(_, f)| *f == ShareFailure::DoesNotOpen) {
            ". No share opens with this login's inbox key: log in again"
        } else { "" })]
    Short {
        /// The voicemail, hex.
        id: String,
        /// The threshold.
        need: usize,
        /// Shares that opened.
        got: usize,
        /// Whether `need` or more opened but no subset matched the key check.
        mismatch: bool,
        /// Each endpoint whose share could not be used, and why.
        failures: Vec<(String, ShareFailure)>,
    },
}

fn failures_text(failures: &[(String, ShareFailure)]) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let each: Vec<String> = failures.iter().map(|(u, f)| format!("{u} {f}")).collect();
    format!(": {}", each.join("; "))
}

/// What a recovery needs to know of the voicemail and the session.
#[derive(Debug, Clone, Copy)]
pub struct Recovering<'a> {
    /// The voicemail.
    pub voicemail_id: &'a [u8; 16],
    /// Its shares.
    pub shares: &'a KeyShares,
    /// The session's user: the recipient the shares are resealed for.
    pub recipient: &'a Username,
    /// The session's inbox key.
    pub inbox: &'a BoxSecret,
    /// The voicemail's locator, as listed: the key check commits to it.
    pub locator: &'a [u8],
}

/// Collects the auth servers' `OpenShare` answers into the session key:
/// each answer is checked against the voicemail's slots and opened with the
/// inbox key; once `threshold` distinct shares are in they are combined and
/// checked against the key check, and on a mismatch the collector waits for
/// more, so one wrong share is routed around when another arrives.
#[derive(Debug)]
pub struct Collector<'a> {
    what: Recovering<'a>,
    values: Vec<ShareValue>,
    /// Each share taken, by (node id, index), and who answered it.
    from: Vec<((u64, u8), String)>,
    failures: Vec<(String, ShareFailure)>,
    mismatch: bool,
}

impl<'a> Collector<'a> {
    /// A collector with no answer yet.
    pub fn new(what: Recovering<'a>) -> Self {
        Self {
            what,
            values: Vec::new(),
            from: Vec::new(),
            failures: Vec::new(),
            mismatch: false,
        }
    }

    /// Takes `endpoint`'s answer; the key once the shares at hand recombine
    /// to it.
    pub fn take(
        &mut self,
        endpoint: &str,
        answer: Result<pb::OpenShareResponse, ShareFailure>,
    ) -> Option<SecretKey> {
        match answer.and_then(|a| self.open(a)) {
            Err(f) => {
                self.failures.push((endpoint.to_owned(), f));
                None
            }
            Ok((slot, value)) => {
                if let Some((_, first)) = self.from.iter().find(|(s, _)| *s == slot) {
                    let f = ShareFailure::Duplicate(first.clone());
                    self.failures.push((endpoint.to_owned(), f));
                    return None;
                }
                self.from.push((slot, endpoint.to_owned()));
                self.values.push(value);
                self.combine()
            }
        }
    }

    fn open(&self, a: pb::OpenShareResponse) -> Result<((u64, u8), ShareValue), ShareFailure> {
        let slot = self
            .what
            .shares
            .slots
            .iter()
            .find(|s| s.node_id == a.node_id && u32::from(s.index) == a.index)
            .ok_or(ShareFailure::NotListed {
                node_id: a.node_id,
                index: a.index,
            })?;
        let enc: [u8; PUBLIC_LEN] = a.enc.as_slice().try_into().map_err(|_| {
            ShareFailure::Malformed(format!("enc of {} bytes, not {PUBLIC_LEN}", a.enc.len()))
        })?;
        if a.ciphertext.len() != SEALED_LEN {
            return Err(ShareFailure::Malformed(format!(
                "ciphertext of {} bytes, not {SEALED_LEN}",
                a.ciphertext.len()
            )));
        }
        let binding = ResealBinding {
            voicemail_id: self.what.voicemail_id,
            recipient: self.what.recipient,
            node_id: slot.node_id,
            index: slot.index,
        };
        let sealed = ResealedShare {
            enc,
            ciphertext: a.ciphertext,
        };
        let value = share::open_resealed(self.what.inbox, &sealed, &binding)
            .map_err(|_| ShareFailure::DoesNotOpen)?;
        Ok(((slot.node_id, slot.index), value))
    }

    fn combine(&mut self) -> Option<SecretKey> {
        let shares = self.what.shares;
        if self.values.len() < usize::from(shares.threshold) {
            return None;
        }
        match share::combine(
            &self.values,
            shares.threshold,
            &shares.key_check,
            self.what.locator,
        ) {
            Ok(key) => Some(key),
            Err(ShareError::Mismatch) => {
                self.mismatch = true;
                None
            }
            Err(_) => None,
        }
    }

    /// Why no key came out of the answers taken.
    pub fn error(self) -> RecoveryError {
        RecoveryError::Short {
            id: hex::encode(self.what.voicemail_id),
            need: usize::from(self.what.shares.threshold),
            got: self.values.len(),
            mismatch: self.mismatch,
            failures: self.failures,
        }
    }
}

/// The session key from all the `answers` of the endpoints, in order (the
/// [`Collector`] over a finished list).
pub fn collect(
    what: Recovering<'_>,
    answers: impl IntoIterator<Item = (String, Result<pb::OpenShareResponse, ShareFailure>)>,
) -> Result<SecretKey, RecoveryError> {
    let mut c = Collector::new(what);
    for (endpoint, answer) in answers {
        if let Some(key) = c.take(&endpoint, answer) {
            return Ok(key);
        }
    }
    Err(c.error())
}

/// Checks that enough endpoints are known to recover a key shared
/// `threshold`-of-n.
pub fn enough_endpoints(
    voicemail_id: &[u8; 16],
    shares: &KeyShares,
    known: usize,
) -> Result<(), RecoveryError> {
    let need = usize::from(shares.threshold);
    if known < need {
        return Err(RecoveryError::TooFewEndpoints {
            id: hex::encode(voicemail_id),
            need,
            known,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests;
