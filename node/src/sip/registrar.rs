//! The registrar's and the notifier's bookkeeping (RFC 3261 §10, RFC 6665):
//! the softphone bindings of the one local user and their subscriptions to
//! `message-summary`, each with an expiry clamped to configured bounds, in
//! tables of bounded size. Pure: callers pass `now`.

use std::collections::BTreeMap;

/// How long a binding or subscription may last, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryBounds {
    /// Shorter requests (other than 0) get 423 Interval Too Brief.
    pub min: u32,
    /// Longer requests are cut to this.
    pub max: u32,
    /// What an `Expires`-less request gets.
    pub default: u32,
}

/// What an `Expires` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Remove the binding or end the subscription.
    Remove,
    /// Keep it this many seconds.
    Keep(u32),
}

/// A request asked for less than the minimum: answer 423 with `Min-Expires`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interval too brief: at least {0} s")]
pub struct TooBrief(pub u32);

impl ExpiryBounds {
    /// The lifetime granted for `requested` seconds (None: not given).
    pub fn grant(&self, requested: Option<u32>) -> Result<Lifetime, TooBrief> {
        match requested {
            Some(0) => Ok(Lifetime::Remove),
            Some(s) if s < self.min => Err(TooBrief(self.min)),
            Some(s) => Ok(Lifetime::Keep(s.min(self.max))),
            None => Ok(Lifetime::Keep(self.default)),
        }
    }
}

/// One softphone binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Where it asked to be reached.
    pub contact: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// One `message-summary` subscription: the dialog the NOTIFYs go in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The dialog's Call-ID.
    pub call_id: String,
    /// Where NOTIFYs go (the SUBSCRIBE's Contact).
    pub contact: String,
    /// The subscriber's From (with its tag): our NOTIFY's To.
    pub remote: String,
    /// Our To (with our tag): our NOTIFY's From.
    pub local: String,
    /// Our next CSeq in the dialog.
    pub cseq: u32,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A table is full: answer 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("already {0} entries, the most this service keeps")]
pub struct Full(pub usize);

/// Bindings by contact and subscriptions by Call-ID, each capped.
#[derive(Debug, Clone, Default)]
pub struct Registrar {
    bindings: BTreeMap<String, Binding>,
    subscriptions: BTreeMap<String, Subscription>,
    cap: usize,
}

impl Registrar {
    /// Empty tables of at most `cap` entries each.
    pub fn new(cap: usize) -> Self {
        Registrar {
            cap,
            ..Registrar::default()
        }
    }

    /// Drops the bindings that have expired by `now`.
    pub fn expire_bindings(&mut self, now: u64) {
        self.bindings.retain(|_, b| b.expires_at > now);
    }

    /// Drops the subscriptions that have expired by `now` and returns them:
    /// their subscribers are owed a final NOTIFY, so only the lamp, which
    /// sends it, calls this.
    pub fn expire_subscriptions(&mut self, now: u64) -> Vec<Subscription> {
        let (gone, kept) = std::mem::take(&mut self.subscriptions)
            .into_iter()
            .partition(|(_, s)| s.expires_at <= now);
        self.subscriptions = kept;
        gone.into_values().collect()
    }

    /// Adds, refreshes or (`Remove`) drops a binding.
    pub fn bind(&mut self, b: Binding, life: Lifetime, now: u64) -> Result<(), Full> {
        match life {
            Lifetime::Remove => {
                self.bindings.remove(&b.contact);
            }
            Lifetime::Keep(s) => {
                if !self.bindings.contains_key(&b.contact) && self.bindings.len() >= self.cap {
                    return Err(Full(self.cap));
                }
                let expires_at = now + u64::from(s);
                self.bindings
                    .insert(b.contact.clone(), Binding { expires_at, ..b });
            }
        }
        Ok(())
    }

    /// Adds or refreshes a subscription; `Remove` ends it and returns it.
    pub fn subscribe(
        &mut self,
        s: Subscription,
        life: Lifetime,
        now: u64,
    ) -> Result<Subscription, Full> {
        let known = self.subscriptions.get(&s.call_id).cloned();
        match life {
            Lifetime::Remove => {
                self.subscriptions.remove(&s.call_id);
                Ok(Subscription {
                    expires_at: now,
                    ..known.unwrap_or(s)
                })
            }
            Lifetime::Keep(secs) => {
                if known.is_none() && self.subscriptions.len() >= self.cap {
                    return Err(Full(self.cap));
                }
                let mut entry = known.unwrap_or(s);
                entry.expires_at = now + u64::from(secs);
                self.subscriptions
                    .insert(entry.call_id.clone(), entry.clone());
                Ok(entry)
            }
        }
    }

    /// Drops every binding (`Contact: *`, `Expires: 0`).
    pub fn unbind_all(&mut self) {
        self.bindings.clear();
    }

    /// The next CSeq of subscription `call_id`, counting it used.
    pub fn next_cseq(&mut self, call_id: &str) -> Option<u32> {
        let s = self.subscriptions.get_mut(call_id)?;
        s.cseq += 1;
        Some(s.cseq - 1)
    }

    /// Every live binding.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    /// Every live subscription.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: ExpiryBounds = ExpiryBounds {
        min: 60,
        max: 3600,
        default: 600,
    };

    fn binding(contact: &str) -> Binding {
        Binding {
            contact: contact.into(),
            expires_at: 0,
        }
    }

    fn sub(call_id: &str) -> Subscription {
        Subscription {
            call_id: call_id.into(),
            contact: "sip:a@127.0.0.1:5062".into(),
            remote: "<sip:a@h>;tag=1".into(),
            local: "<sip:a@h>;tag=2".into(),
            cseq: 1,
            expires_at: 0,
        }
    }

    #[test]
    fn expires_is_clamped_and_zero_removes() {
        assert_eq!(BOUNDS.grant(Some(0)), Ok(Lifetime::Remove));
        assert_eq!(BOUNDS.grant(Some(30)), Err(TooBrief(60)));
        assert_eq!(BOUNDS.grant(Some(7200)), Ok(Lifetime::Keep(3600)));
        assert_eq!(BOUNDS.grant(None), Ok(Lifetime::Keep(600)));
    }

    #[test]
    fn bindings_expire_refresh_and_stay_under_the_cap() {
        let mut r = Registrar::new(2);
        r.bind(binding("a"), Lifetime::Keep(60), 0).unwrap();
        r.bind(binding("b"), Lifetime::Keep(120), 0).unwrap();
        assert_eq!(r.bind(binding("c"), Lifetime::Keep(60), 0), Err(Full(2)));
        // A refresh of a known contact is not a new entry.
        r.bind(binding("a"), Lifetime::Keep(300), 10).unwrap();
        r.expire_bindings(200);
        let left: Vec<_> = r.bindings().map(|b| b.contact.as_str()).collect();
        assert_eq!(left, ["a"]);
        r.bind(binding("a"), Lifetime::Remove, 200).unwrap();
        assert_eq!(r.bindings().count(), 0);
    }

    #[test]
    fn subscriptions_keep_their_dialog_and_expire_into_a_final_notify() {
        let mut r = Registrar::new(1);
        r.subscribe(sub("x"), Lifetime::Keep(60), 0).unwrap();
        assert_eq!(r.next_cseq("x"), Some(1));
        assert_eq!(r.next_cseq("x"), Some(2));
        // A refresh keeps the dialog's CSeq.
        let again = r.subscribe(sub("x"), Lifetime::Keep(60), 30).unwrap();
        assert_eq!((again.cseq, again.expires_at), (3, 90));
        assert_eq!(r.subscribe(sub("y"), Lifetime::Keep(60), 30), Err(Full(1)));
        assert!(r.expire_subscriptions(89).is_empty());
        let gone = r.expire_subscriptions(90);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].call_id, "x");
        assert_eq!(r.subscriptions().count(), 0);
    }
}
