//! This peer's provider-record store: Kademlia's `RecordStore`, built so
//! that no remote peer can fill it or crowd out this peer's own
//! announcements.
//!
//! - This peer's own records (what it holds) live apart from remote ones
//!   and have no cap of their own: they are bounded by the holder's object
//!   quota, and no remote record can displace one.
//! - A remote record is taken only for a key this peer should hold records
//!   for: fewer than [`ProviderLimits::closer_peers`] peers of its routing
//!   table are closer to the key than itself (the event loop counts them
//!   and asks [`ProviderStore::add_remote`]). An honest announcer sends a
//!   record only to the K peers closest to the key, so it never meets this
//!   refusal; a flood of keys far from this peer does.
//! - Caps: addresses kept per record (the rest are dropped), remote
//!   providers per key, records per source peer, and remote records in
//!   all. A full key, source or store refuses the new record (updates of a
//!   record already held are always taken): provider records are a hint,
//!   and a fetch never relies on them alone (docs/SECURITY.md).
//!
//! vmail stores no DHT values, so `put` refuses every value record. No IO:
//! the unit tests drive it directly.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::kad::store::{self, RecordStore};
use libp2p::kad::{ProviderRecord, Record, RecordKey};

use crate::config::ProvidersConfig;

/// Expired records are swept out at most this often, when a cap is hit.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The provider store's bounds (`[providers]` in node.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderLimits {
    /// Most remote records in all.
    pub max_remote_records: usize,
    /// Most remote records from one source peer.
    pub max_records_per_peer: usize,
    /// Most remote providers of one key.
    pub max_providers_per_key: usize,
    /// Most addresses kept with one remote record.
    pub max_addrs_per_record: usize,
    /// A remote record is taken only while fewer than this many known
    /// peers are closer to its key than this peer.
    pub closer_peers: usize,
}

impl From<&ProvidersConfig> for ProviderLimits {
    fn from(c: &ProvidersConfig) -> Self {
        Self {
            max_remote_records: c.max_remote_records,
            max_records_per_peer: c.max_records_per_peer,
            max_providers_per_key: c.max_providers_per_key,
            max_addrs_per_record: c.max_addrs_per_record,
            closer_peers: c.closer_peers,
        }
    }
}

impl Default for ProviderLimits {
    fn default() -> Self {
        (&ProvidersConfig::default()).into()
    }
}

/// Why a remote provider record was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The key is far from this peer: other peers should hold its records.
    #[error("{closer} known peers are closer to the key than this peer")]
    Far {
        /// Known peers closer to the key.
        closer: usize,
    },
    /// The key already has its most remote providers.
    #[error("the key already has {0} remote providers")]
    KeyFull(usize),
    /// The source peer already has its most records here.
    #[error("its source already has {0} records here")]
    SourceFull(usize),
    /// The store holds its most remote records.
    #[error("the store holds its most remote records ({0})")]
    StoreFull(usize),
}

/// What the store holds and what it refused, for tests and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// This peer's own records.
    pub local: usize,
    /// Remote records held.
    pub remote: usize,
    /// Keys with a remote record.
    pub remote_keys: usize,
    /// Most remote records held from any one source.
    pub largest_source: usize,
    /// Most addresses kept with any one remote record.
    pub most_addrs: usize,
    /// Records refused as far from this peer.
    pub refused_far: u64,
    /// Records refused by a full key, source or store.
    pub refused_full: u64,
    /// Records whose addresses were cut to the cap.
    pub addrs_cut: u64,
}

/// The store. See the module doc.
#[derive(Debug)]
pub struct ProviderStore {
    me: PeerId,
    limits: ProviderLimits,
    local: HashMap<RecordKey, ProviderRecord>,
    remote: HashMap<RecordKey, Vec<ProviderRecord>>,
    per_source: HashMap<PeerId, usize>,
    remote_total: usize,
    last_sweep: Option<Instant>,
    refused_far: u64,
    refused_full: u64,
    addrs_cut: u64,
}

impl ProviderStore {
    /// An empty store for the peer `me`.
    pub fn new(me: PeerId, limits: ProviderLimits) -> Self {
        Self {
            me,
            limits,
            local: HashMap::new(),
            remote: HashMap::new(),
            per_source: HashMap::new(),
            remote_total: 0,
            last_sweep: None,
            refused_far: 0,
            refused_full: 0,
            addrs_cut: 0,
        }
    }

    /// Takes a record another peer announced, if its key is near this peer
    /// (`closer` routing-table peers are closer to it than this peer) and
    /// no cap is reached; its addresses are cut to the cap.
    pub fn add_remote(&mut self, record: ProviderRecord, closer: usize) -> Result<(), Refusal> {
        if closer >= self.limits.closer_peers {
            self.refused_far += 1;
            return Err(Refusal::Far { closer });
        }
        self.insert_remote(record, Instant::now())
    }

    fn insert_remote(&mut self, mut record: ProviderRecord, now: Instant) -> Result<(), Refusal> {
        if record.addresses.len() > self.limits.max_addrs_per_record {
            record.addresses.truncate(self.limits.max_addrs_per_record);
            self.addrs_cut += 1;
        }
        if let Some(held) = self
            .remote
            .get_mut(&record.key)
            .and_then(|v| v.iter_mut().find(|p| p.provider == record.provider))
        {
            *held = record;
            return Ok(());
        }
        if let Err(e) = self.room_for(&record) {
            if self.sweep(now) == 0 {
                self.refused_full += 1;
                return Err(e);
            }
            if let Err(e) = self.room_for(&record) {
                self.refused_full += 1;
                return Err(e);
            }
        }
        *self.per_source.entry(record.provider).or_default() += 1;
        self.remote_total += 1;
        self.remote
            .entry(record.key.clone())
            .or_default()
            .push(record);
        Ok(())
    }

    fn room_for(&self, record: &ProviderRecord) -> Result<(), Refusal> {
        let l = &self.limits;
        if self.remote.get(&record.key).map_or(0, Vec::len) >= l.max_providers_per_key {
            return Err(Refusal::KeyFull(l.max_providers_per_key));
        }
        if self.per_source.get(&record.provider).copied().unwrap_or(0) >= l.max_records_per_peer {
            return Err(Refusal::SourceFull(l.max_records_per_peer));
        }
        if self.remote_total >= l.max_remote_records {
            return Err(Refusal::StoreFull(l.max_remote_records));
        }
        Ok(())
    }

    /// Drops expired remote records, at most once per [`SWEEP_EVERY`];
    /// returns how many went.
    fn sweep(&mut self, now: Instant) -> usize {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return 0;
        }
        self.last_sweep = Some(now);
        let expired: Vec<(RecordKey, PeerId)> = self
            .remote
            .values()
            .flatten()
            .filter(|r| r.is_expired(now))
            .map(|r| (r.key.clone(), r.provider))
            .collect();
        for (key, provider) in &expired {
            self.remove_remote(key, provider);
        }
        expired.len()
    }

    fn remove_remote(&mut self, key: &RecordKey, provider: &PeerId) {
        let Some(list) = self.remote.get_mut(key) else {
            return;
        };
        let before = list.len();
        list.retain(|r| r.provider != *provider);
        if list.len() < before {
            self.remote_total -= 1;
            if let Some(n) = self.per_source.get_mut(provider) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(provider);
                }
            }
        }
        if list.is_empty() {
            self.remote.remove(key);
        }
    }

    /// The store's bounds.
    pub fn limits(&self) -> ProviderLimits {
        self.limits
    }

    /// The remote providers held for `key`, this peer's own record apart.
    pub fn remote_providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.remote.get(key).cloned().unwrap_or_default()
    }

    /// Counts and refusals so far.
    pub fn stats(&self) -> ProviderStats {
        ProviderStats {
            local: self.local.len(),
            remote: self.remote_total,
            remote_keys: self.remote.len(),
            largest_source: self.per_source.values().copied().max().unwrap_or(0),
            most_addrs: self
                .remote
                .values()
                .flatten()
                .map(|r| r.addresses.len())
                .max()
                .unwrap_or(0),
            refused_far: self.refused_far,
            refused_full: self.refused_full,
            addrs_cut: self.addrs_cut,
        }
    }
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = std::iter::Empty<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::iter::Map<
        std::collections::hash_map::Values<'a, RecordKey, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    fn get(&self, _: &RecordKey) -> Option<Cow<'_, Record>> {
        None
    }

    /// vmail keeps no DHT values.
    fn put(&mut self, _: Record) -> store::Result<()> {
        Err(store::Error::MaxRecords)
    }

    fn remove(&mut self, _: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        std::iter::empty()
    }

    /// This peer's own record goes to the local table; any other (Kademlia
    /// hands the store none with inbound filtering on, but to be safe) is
    /// capped like [`ProviderStore::add_remote`], without the distance
    /// check, which needs the routing table.
    fn add_provider(&mut self, record: ProviderRecord) -> store::Result<()> {
        if record.provider == self.me {
            self.local.insert(record.key.clone(), record);
            return Ok(());
        }
        self.insert_remote(record, Instant::now())
            .map_err(|_| store::Error::MaxProvidedKeys)
    }

    /// This peer first, when it provides `key`, then the remote providers.
    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.local
            .get(key)
            .cloned()
            .into_iter()
            .chain(self.remote.get(key).into_iter().flatten().cloned())
            .collect()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.local.values().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        if *provider == self.me {
            self.local.remove(key);
        } else {
            self.remove_remote(key, provider);
        }
    }
}

#[cfg(test)]
mod tests {
    use libp2p::Multiaddr;

    use super::*;

    fn limits() -> ProviderLimits {
        ProviderLimits {
            max_remote_records: 10,
            max_records_per_peer: 4,
            max_providers_per_key: 3,
            max_addrs_per_record: 2,
            closer_peers: 5,
        }
    }

    fn key(i: u32) -> RecordKey {
        RecordKey::new(&i.to_be_bytes())
    }

    fn record(k: u32, from: PeerId, addrs: usize) -> ProviderRecord {
        let addrs: Vec<Multiaddr> = (0..addrs)
            .map(|p| format!("/ip4/127.0.0.1/tcp/{}", 1000 + p).parse().unwrap())
            .collect();
        ProviderRecord::new(key(k), from, addrs)
    }

    #[test]
    fn far_keys_are_refused() {
        let mut s = ProviderStore::new(PeerId::random(), limits());
        let p = PeerId::random();
        assert_eq!(
            s.add_remote(record(1, p, 1), 5),
            Err(Refusal::Far { closer: 5 })
        );
        assert!(s.add_remote(record(1, p, 1), 4).is_ok());
        assert_eq!(s.stats().refused_far, 1);
        assert_eq!(s.stats().remote, 1);
    }

    #[test]
    fn addresses_are_cut_to_the_cap() {
        let mut s = ProviderStore::new(PeerId::random(), limits());
        s.add_remote(record(1, PeerId::random(), 500), 0).unwrap();
        assert_eq!(s.providers(&key(1))[0].addresses.len(), 2);
        assert_eq!(s.stats().addrs_cut, 1);
        assert_eq!(s.stats().most_addrs, 2);
    }

    #[test]
    fn per_source_per_key_and_total_caps_hold() {
        let mut s = ProviderStore::new(PeerId::random(), limits());
        let flooder = PeerId::random();
        for k in 0..10 {
            let _ = s.add_remote(record(k, flooder, 1), 0);
        }
        assert_eq!(s.stats().largest_source, 4);
        // An update of a held record is always taken.
        assert!(s.add_remote(record(0, flooder, 1), 0).is_ok());
        for _ in 0..5 {
            let _ = s.add_remote(record(100, PeerId::random(), 1), 0);
        }
        assert_eq!(s.remote_providers(&key(100)).len(), 3);
        for k in 200..220 {
            let _ = s.add_remote(record(k, PeerId::random(), 1), 0);
        }
        assert_eq!(s.stats().remote, 10);
        assert_eq!(
            s.add_remote(record(300, PeerId::random(), 1), 0),
            Err(Refusal::StoreFull(10))
        );
    }

    #[test]
    fn own_records_are_kept_apart_and_never_crowded_out() {
        let me = PeerId::random();
        let mut s = ProviderStore::new(me, limits());
        for i in 0..3 {
            s.add_remote(record(7, PeerId::random(), 1), 0).unwrap();
            s.add_remote(record(100 + i, PeerId::random(), 1), 0)
                .unwrap();
        }
        for k in 0..20 {
            let _ = s.add_remote(record(k + 500, PeerId::random(), 1), 0);
        }
        // Key 7 and the store are full of remote records; ours still go in.
        assert!(s.add_provider(record(7, me, 0)).is_ok());
        assert!(s.add_provider(record(8, me, 0)).is_ok());
        assert_eq!(s.providers(&key(7))[0].provider, me);
        assert_eq!(s.providers(&key(7)).len(), 4);
        assert_eq!(s.provided().count(), 2);
        s.remove_provider(&key(7), &me);
        assert_eq!(s.provided().count(), 1);
        assert_eq!(s.providers(&key(7)).len(), 3);
    }

    #[test]
    fn removing_and_expiry_free_room() {
        let mut s = ProviderStore::new(PeerId::random(), limits());
        let p = PeerId::random();
        let now = Instant::now();
        for k in 0..4 {
            let mut r = record(k, p, 1);
            r.expires = Some(now);
            s.insert_remote(r, now).unwrap();
        }
        assert_eq!(
            s.insert_remote(record(9, p, 1), now),
            Ok(()),
            "the full source's expired records are swept out"
        );
        assert_eq!(s.stats().remote, 1);
        s.remove_provider(&key(9), &p);
        assert_eq!(s.stats().remote, 0);
        assert_eq!(s.stats().largest_source, 0);
    }

    #[test]
    fn value_records_are_refused() {
        let mut s = ProviderStore::new(PeerId::random(), limits());
        assert!(s.put(Record::new(key(1), vec![1])).is_err());
        assert!(s.get(&key(1)).is_none());
        assert_eq!(s.records().count(), 0);
    }
}
