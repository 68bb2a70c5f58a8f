//! What one remote party may make the server spend, kept in memory: rate
//! limits (registration, per-user writes such as SetRetention and Recall),
//! the table of unfinished OPAQUE logins with its per-user and overall caps,
//! and the count of open WatchPending streams per session and per user.
//!
//! Everything here is pure: callers pass `now` in and do the IO; the caps
//! come from [`crate::config::ServerConfig`]. The tables live on the server
//! that answers the call (they are not replicated): a client that spreads
//! its calls over every member gets at most the members' sum.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket per key: `per_minute` calls a minute, bursts of up to
/// `per_minute`. At most `max_keys` keys are tracked; buckets that have
/// refilled are forgotten first, and a new key past the bound is refused
/// until one has (the server-wide limit is the backstop for that case).
#[derive(Debug)]
pub struct RateLimiter<K> {
    per_minute: u32,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter of `per_minute` (at least 1) calls a minute per key.
    pub fn new(per_minute: u32, max_keys: usize) -> Self {
        Self {
            per_minute: per_minute.max(1),
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    fn per_sec(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(b.at).as_secs_f64() * self.per_sec();
        (b.tokens + gained).min(f64::from(self.per_minute))
    }

    /// Takes one call from `key`'s bucket, or says how long until one is
    /// available.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            let full = f64::from(self.per_minute);
            let buckets = std::mem::take(&mut self.buckets);
            self.buckets = buckets
                .into_iter()
                .filter(|(_, b)| self.refilled(*b, now) < full)
                .collect();
            if self.buckets.len() >= self.max_keys {
                return Err(Duration::from_secs_f64(1.0 / self.per_sec()));
            }
        }
        let full = Bucket {
            tokens: f64::from(self.per_minute),
            at: now,
        };
        let b = *self.buckets.get(key).unwrap_or(&full);
        let tokens = self.refilled(b, now);
        if tokens >= 1.0 {
            self.buckets.insert(
                key.clone(),
                Bucket {
                    tokens: tokens - 1.0,
                    at: now,
                },
            );
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_sec()))
        }
    }

    /// How long until `key` has a call left: zero when it has one now.
    /// Takes nothing.
    pub fn wait(&self, key: &K, now: Instant) -> Duration {
        match self.buckets.get(key) {
            Some(b) => {
                let tokens = self.refilled(*b, now);
                if tokens >= 1.0 {
                    Duration::ZERO
                } else {
                    Duration::from_secs_f64((1.0 - tokens) / self.per_sec())
                }
            }
            None => Duration::ZERO,
        }
    }

    /// How many keys are tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Whole seconds to wait, rounded up, at least 1: what a refusal tells the client.
pub fn retry_secs(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The part of a client's address that one party is assumed to control:
/// the whole IPv4 address, or the /64 of an IPv6 address (one customer's
/// network; an IPv6 host can pick any address in it).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The caps of a [`LoginTable`].
#[derive(Debug, Clone, Copy)]
pub struct LoginCaps {
    /// Most unfinished logins in all.
    pub overall: usize,
    /// Most unfinished logins of one user; lower than `overall`.
    pub per_user: usize,
    /// How long an unfinished login is kept.
    pub timeout: Duration,
}

/// An unfinished login that made room for a newer one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// Whose login it was.
    pub user: String,
}

#[derive(Debug)]
struct LoginEntry<S> {
    user: String,
    seq: u64,
    started: Instant,
    state: S,
}

/// The unfinished OPAQUE logins (state `S`), by login id. A user's new
/// login past [`LoginCaps::per_user`] replaces that user's oldest; a new
/// login when the table holds [`LoginCaps::overall`] replaces the oldest of
/// all. So a flood under one name only ever displaces that name's own
/// logins, and a flood under many names must outpace an honest login's
/// round trip to displace it; the displaced client is told to start again.
#[derive(Debug)]
pub struct LoginTable<S> {
    caps: LoginCaps,
    next_seq: u64,
    entries: HashMap<[u8; 16], LoginEntry<S>>,
    /// Login ids by age (sequence number), oldest first.
    order: BTreeMap<u64, [u8; 16]>,
    /// Each user's login ids, oldest first; at most `per_user` each.
    per_user: HashMap<String, VecDeque<[u8; 16]>>,
    /// Logins dropped unfinished (timed out or displaced) since
    /// [`Self::take_abandoned`] last asked.
    abandoned: u64,
}

impl<S> LoginTable<S> {
    /// An empty table.
    pub fn new(caps: LoginCaps) -> Self {
        Self {
            caps,
            next_seq: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            per_user: HashMap::new(),
            abandoned: 0,
        }
    }

    /// How many logins were dropped unfinished, timed out or displaced,
    /// since the last call. A client that finds its password wrong never
    /// finishes, so to the server a wrong password looks like this.
    pub fn take_abandoned(&mut self) -> u64 {
        std::mem::take(&mut self.abandoned)
    }

    /// How many logins are unfinished.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many logins of `user` are unfinished.
    pub fn of_user(&self, user: &str) -> usize {
        self.per_user.get(user).map_or(0, VecDeque::len)
    }

    fn remove(&mut self, id: &[u8; 16]) -> Option<LoginEntry<S>> {
        let e = self.entries.remove(id)?;
        self.order.remove(&e.seq);
        if let Some(ids) = self.per_user.get_mut(&e.user) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.per_user.remove(&e.user);
            }
        }
        Some(e)
    }

    /// Drops the logins older than the timeout.
    fn expire(&mut self, now: Instant) {
        while let Some((_, id)) = self.order.first_key_value() {
            let id = *id;
            let old = self
                .entries
                .get(&id)
                .is_none_or(|e| now.saturating_duration_since(e.started) >= self.caps.timeout);
            if !old {
                break;
            }
            self.remove(&id);
            self.abandoned += 1;
        }
    }

    /// Adds a login, making room as the type's doc says; returns the one it
    /// displaced, if any.
    pub fn insert(&mut self, id: [u8; 16], user: &str, state: S, now: Instant) -> Option<Evicted> {
        self.expire(now);
        let mut evicted = None;
        if self.of_user(user) >= self.caps.per_user.max(1) {
            let oldest = self.per_user.get(user).and_then(|ids| ids.front().copied());
            if let Some(e) = oldest.and_then(|o| self.remove(&o)) {
                self.abandoned += 1;
                evicted = Some(Evicted { user: e.user });
            }
        }
        if self.entries.len() >= self.caps.overall.max(1) {
            let oldest = self.order.first_key_value().map(|(_, id)| *id);
            if let Some(e) = oldest.and_then(|o| self.remove(&o)) {
                self.abandoned += 1;
                evicted = Some(Evicted { user: e.user });
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, id);
        self.per_user
            .entry(user.to_owned())
            .or_default()
            .push_back(id);
        self.entries.insert(
            id,
            LoginEntry {
                user: user.to_owned(),
                seq,
                started: now,
                state,
            },
        );
        evicted
    }

    /// Takes a login out, if it is there and not timed out.
    pub fn take(&mut self, id: &[u8; 16], now: Instant) -> Option<(String, S)> {
        // A late finish is refused as expired, not counted abandoned.
        let e = self.remove(id)?;
        (now.saturating_duration_since(e.started) < self.caps.timeout).then_some((e.user, e.state))
    }
}

/// Which cap an open WatchPending stream would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCap {
    /// Streams of one session.
    PerSession(usize),
    /// Streams of one user, over all their sessions.
    PerUser(usize),
}

/// Open WatchPending streams per session and per user.
#[derive(Debug, Default)]
pub struct StreamCounts {
    per_user: HashMap<String, UserStreams>,
}

#[derive(Debug, Default)]
struct UserStreams {
    total: usize,
    per_session: HashMap<[u8; 32], usize>,
}

impl StreamCounts {
    /// Counts a new stream of `session` (a token hash) of `user`, unless it
    /// would pass `per_session` or `per_user`.
    pub fn open(
        &mut self,
        user: &str,
        session: [u8; 32],
        per_session: usize,
        per_user: usize,
    ) -> Result<(), StreamCap> {
        let u = self.per_user.entry(user.to_owned()).or_default();
        let s = u.per_session.get(&session).copied().unwrap_or(0);
        let refused = if s >= per_session {
            Some(StreamCap::PerSession(per_session))
        } else if u.total >= per_user {
            Some(StreamCap::PerUser(per_user))
        } else {
            None
        };
        if let Some(cap) = refused {
            if u.total == 0 {
                self.per_user.remove(user);
            }
            return Err(cap);
        }
        u.total += 1;
        *u.per_session.entry(session).or_default() += 1;
        Ok(())
    }

    /// Uncounts a stream that ended.
    pub fn close(&mut self, user: &str, session: [u8; 32]) {
        let Some(u) = self.per_user.get_mut(user) else {
            return;
        };
        if let Some(s) = u.per_session.get_mut(&session) {
            *s -= 1;
            u.total -= 1;
            if *s == 0 {
                u.per_session.remove(&session);
            }
        }
        if u.total == 0 {
            self.per_user.remove(user);
        }
    }

    /// Open streams of `user`.
    pub fn of_user(&self, user: &str) -> usize {
        self.per_user.get(user).map_or(0, |u| u.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(6, 10);
        for _ in 0..6 {
            assert_eq!(r.check(&"a", t0), Ok(()));
        }
        let wait = r.check(&"a", t0).unwrap_err();
        assert_eq!(retry_secs(wait), 10);
        // Another key has its own bucket.
        assert_eq!(r.check(&"b", t0), Ok(()));
        assert_eq!(r.check(&"a", t0 + Duration::from_secs(11)), Ok(()));
        assert!(r.check(&"a", t0 + Duration::from_secs(11)).is_err());
    }

    #[test]
    fn the_key_table_is_bounded_and_forgets_refilled_buckets() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(60, 2);
        assert!(r.check(&1, t0).is_ok());
        assert!(r.check(&2, t0).is_ok());
        assert!(r.check(&3, t0).is_err(), "a third key while two are busy");
        assert_eq!(r.tracked(), 2);
        let later = t0 + Duration::from_secs(2);
        assert!(r.check(&3, later).is_ok(), "the refilled buckets made room");
        assert_eq!(r.tracked(), 1);
    }

    #[test]
    fn retry_is_whole_seconds_rounded_up() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_secs(Duration::from_millis(3001)), 4);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(m), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    fn caps(overall: usize, per_user: usize) -> LoginCaps {
        LoginCaps {
            overall,
            per_user,
            timeout: Duration::from_secs(60),
        }
    }

    fn id(n: u32) -> [u8; 16] {
        let mut i = [0; 16];
        i[..4].copy_from_slice(&n.to_be_bytes());
        i
    }

    #[test]
    fn one_users_flood_displaces_only_that_users_logins() {
        let t0 = Instant::now();
        let mut t = LoginTable::new(caps(100, 4));
        t.insert(id(0), "bob", "bob's", t0);
        for n in 1..=1000 {
            t.insert(id(n), "mallory", "flood", t0);
        }
        assert_eq!(t.of_user("mallory"), 4);
        assert_eq!(t.len(), 5);
        assert_eq!(t.take(&id(0), t0), Some(("bob".to_owned(), "bob's")));
        assert_eq!(t.take(&id(1000), t0).unwrap().0, "mallory");
        assert!(t.take(&id(1), t0).is_none(), "displaced");
    }

    #[test]
    fn a_full_table_displaces_its_oldest_login() {
        let t0 = Instant::now();
        let mut t = LoginTable::new(caps(3, 2));
        assert_eq!(t.insert(id(1), "a", (), t0), None);
        assert_eq!(t.insert(id(2), "b", (), t0), None);
        assert_eq!(t.insert(id(3), "c", (), t0), None);
        assert_eq!(
            t.insert(id(4), "d", (), t0),
            Some(Evicted { user: "a".into() })
        );
        assert_eq!(t.len(), 3);
        assert!(t.take(&id(1), t0).is_none());
        assert!(t.take(&id(4), t0).is_some());
        assert_eq!(t.of_user("a"), 0);
    }

    #[test]
    fn timed_out_logins_are_dropped_and_not_returned() {
        let t0 = Instant::now();
        let mut t = LoginTable::new(caps(10, 10));
        t.insert(id(1), "a", (), t0);
        t.insert(id(2), "a", (), t0 + Duration::from_secs(30));
        assert!(t.take(&id(1), t0 + Duration::from_secs(60)).is_none());
        t.insert(id(3), "b", (), t0 + Duration::from_secs(61));
        assert_eq!(t.len(), 2);
        t.insert(id(4), "b", (), t0 + Duration::from_secs(95));
        assert_eq!(t.len(), 2, "id 2 timed out");
        assert_eq!(t.of_user("a"), 0);
    }

    #[test]
    fn logins_dropped_unfinished_are_counted_abandoned_once() {
        let t0 = Instant::now();
        let mut t = LoginTable::new(caps(10, 1));
        t.insert(id(1), "a", (), t0);
        // Displaced by a's next login.
        t.insert(id(2), "a", (), t0);
        assert_eq!(t.take_abandoned(), 1);
        assert_eq!(t.take_abandoned(), 0, "counted once");
        // Finished: not abandoned.
        assert!(t.take(&id(2), t0).is_some());
        t.insert(id(3), "b", (), t0);
        // Timed out, found when the next login makes room.
        t.insert(id(4), "c", (), t0 + Duration::from_secs(61));
        assert_eq!(t.take_abandoned(), 1);
        // A late finish is expired, not abandoned.
        assert!(t.take(&id(4), t0 + Duration::from_secs(200)).is_none());
        assert_eq!(t.take_abandoned(), 0);
    }

    #[test]
    fn streams_are_capped_per_session_then_per_user() {
        let mut c = StreamCounts::default();
        let (s1, s2, s3) = ([1; 32], [2; 32], [3; 32]);
        assert!(c.open("a", s1, 2, 3).is_ok());
        assert!(c.open("a", s1, 2, 3).is_ok());
        assert_eq!(c.open("a", s1, 2, 3), Err(StreamCap::PerSession(2)));
        assert!(c.open("a", s2, 2, 3).is_ok());
        assert_eq!(c.open("a", s3, 2, 3), Err(StreamCap::PerUser(3)));
        assert!(
            c.open("b", s3, 2, 3).is_ok(),
            "other users are not affected"
        );
        c.close("a", s1);
        assert!(c.open("a", s3, 2, 3).is_ok());
        for s in [s1, s2, s3] {
            c.close("a", s);
        }
        assert_eq!(c.of_user("a"), 0);
        assert_eq!(c.open("z", s1, 0, 3), Err(StreamCap::PerSession(0)));
        assert_eq!(c.of_user("z"), 0);
    }
}
