//! Subscriptions to `message-summary` and the NOTIFYs that keep a
//! softphone's lamp true (RFC 3842, RFC 6665): the lamp task refreshes the
//! summary whenever the group pushes a deposit (WatchPending), this peer
//! fetches or acks, a voicemail may have expired, or every
//! [`POLL`] at the latest, and notifies every subscriber when it changes.
//! Also the one way this service sends a request of its own.

use std::sync::Arc;
use std::time::Duration;

use rsipstack::sip::prelude::{HeadersExt, ToTypedHeader};
use rsipstack::sip::typed::{From as FromHeader, To as ToHeader};
use rsipstack::sip::{Header, Method, Request, SipMessage, StatusCode, StatusCodeKind, Uri};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::{Transaction, make_tag};
use vmail_proto::names::Username;
use vmail_proto::unix_now;

use super::registrar::{Lifetime, Subscription};
use super::summary::{self, Summary};
use super::{Inner, Refused};

/// The longest the lamp goes without asking the group (acks made
/// elsewhere, expiries).
pub(super) const POLL: Duration = Duration::from_secs(30);
/// How long the lamp waits before re-opening a broken WatchPending.
const REWATCH: Duration = Duration::from_secs(5);

/// The dialog of a request this service sends: a subscription's or a
/// call's.
#[derive(Debug, Clone)]
pub(super) struct Dialog {
    pub call_id: String,
    /// Where requests go (the other side's Contact).
    pub target: String,
    /// Our end, with our tag: the From of our requests.
    pub local: String,
    /// Their end, with their tag: the To of our requests.
    pub remote: String,
}

impl Dialog {
    /// The dialog a SUBSCRIBE or INVITE opens: our tag goes on its To now
    /// (an existing one is kept), so our answer and our later requests
    /// share it; its Contact is where those requests go.
    pub(super) fn take(tx: &mut Transaction) -> Result<Dialog, Refused> {
        let bad = |what: &'static str| Refused::new(StatusCode::BadRequest, what);
        let req = &tx.original;
        let target = req
            .contact_header()
            .and_then(|c| c.typed())
            .map_err(|_| bad("no Contact"))?
            .uri
            .to_string();
        let to = req.to_header().map_err(|_| bad("bad To"))?;
        let to = match to.tag() {
            Ok(Some(_)) => to.clone(),
            _ => to.with_tag(make_tag()),
        };
        let call_id = req
            .call_id_header()
            .map_err(|_| bad("no Call-ID"))?
            .value()
            .to_owned();
        let remote = req
            .from_header()
            .map_err(|_| bad("bad From"))?
            .value()
            .to_owned();
        tx.original.headers.unique_push(Header::To(to.clone()));
        Ok(Dialog {
            call_id,
            target,
            local: to.value().to_owned(),
            remote,
        })
    }
}

impl Inner {
    /// Sends a request in `dialog` and waits for its final answer.
    pub(super) async fn send(
        &self,
        dialog: &Dialog,
        method: Method,
        cseq: u32,
        headers: Vec<Header>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<StatusCode, String> {
        let uri = Uri::try_from(dialog.target.as_str()).map_err(|e| e.to_string())?;
        let via = self
            .endpoint
            .get_via(None, None)
            .map_err(|e| e.to_string())?;
        let from = FromHeader::parse(&dialog.local).map_err(|e| e.to_string())?;
        let to = ToHeader::parse(&dialog.remote).map_err(|e| e.to_string())?;
        let mut req: Request = self.endpoint.make_request(
            method,
            uri,
            via,
            from,
            to,
            cseq,
            Some(dialog.call_id.clone().into()),
        );
        req.headers.push(self.contact());
        req.headers.extend(headers);
        let body = match body {
            Some((ty, b)) => {
                req.headers.push(Header::ContentType(ty.into()));
                b
            }
            None => Vec::new(),
        };
        req.headers
            .push(Header::ContentLength((body.len() as u32).into()));
        req.body = body;
        let key = TransactionKey::from_request(&req, TransactionRole::Client)
            .map_err(|e| e.to_string())?;
        let mut tx = Transaction::new_client(key, req, self.endpoint.clone(), None);
        tx.send().await.map_err(|e| e.to_string())?;
        while let Some(msg) = tx.receive().await {
            if let SipMessage::Response(r) = msg
                && r.status_code.kind() != StatusCodeKind::Provisional
            {
                return Ok(r.status_code);
            }
        }
        Err(format!("no answer to {method} from {}", dialog.target))
    }

    /// A NOTIFY of the current summary in `sub`'s dialog.
    async fn notify(&self, sub: &Subscription, cseq: u32, state: &str) {
        let user = self
            .peer
            .username()
            .map(|u| u.to_string())
            .unwrap_or_default();
        let account = format!("sip:{user}@{}", self.local);
        let body = self.summary.borrow().body(&account).into_bytes();
        let dialog = Dialog {
            call_id: sub.call_id.clone(),
            target: sub.contact.clone(),
            local: sub.local.clone(),
            remote: sub.remote.clone(),
        };
        let headers = vec![
            Header::Event(summary::EVENT.into()),
            Header::SubscriptionState(state.into()),
        ];
        match self
            .send(
                &dialog,
                Method::Notify,
                cseq,
                headers,
                Some((summary::CONTENT_TYPE, body)),
            )
            .await
        {
            Ok(code) if code.kind() == StatusCodeKind::Successful => {}
            Ok(code) => {
                // 481 and the like end the subscription (RFC 6665 §4.1.3).
                tracing::info!(
                    "sip: NOTIFY to {} answered {code}: subscription ended",
                    sub.contact
                );
                self.end_subscription(&sub.call_id);
            }
            Err(e) => {
                tracing::info!("sip: NOTIFY to {}: {e}: subscription ended", sub.contact);
                self.end_subscription(&sub.call_id);
            }
        }
    }

    fn end_subscription(&self, call_id: &str) {
        let mut r = self.registrar.lock().expect("registrar lock");
        let found = r.subscriptions().find(|s| s.call_id == call_id).cloned();
        if let Some(s) = found {
            let _ = r.subscribe(s, Lifetime::Remove, unix_now());
        }
    }

    /// NOTIFYs every live subscription of the current summary, each in a
    /// task of its own so a dead subscriber holds up no one.
    fn notify_all(self: &Arc<Self>) {
        let subs: Vec<(Subscription, u32)> = {
            let mut r = self.registrar.lock().expect("registrar lock");
            let subs: Vec<_> = r.subscriptions().cloned().collect();
            subs.into_iter()
                .filter_map(|s| r.next_cseq(&s.call_id).map(|c| (s, c)))
                .collect()
        };
        let now = unix_now();
        for (s, cseq) in subs {
            let state = format!("active;expires={}", s.expires_at.saturating_sub(now));
            let me = self.clone();
            tokio::spawn(async move { me.notify(&s, cseq, &state).await });
        }
    }

    /// Asks the group what waits; returns the earliest expiry, if any.
    async fn refresh(self: &Arc<Self>) -> Option<u64> {
        let pending = match self.peer.inbox().await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("sip: the lamp could not list the inbox: {e}");
                return None;
            }
        };
        let kept = {
            let mut kept = self.kept.lock().expect("kept lock");
            kept.retain(|id| pending.iter().any(|p| p.id == *id));
            kept.clone()
        };
        let now = Summary::of(pending.iter().map(|p| &p.id), &kept);
        if self
            .summary
            .send_if_modified(|s| std::mem::replace(s, now) != now)
        {
            self.notify_all();
        }
        pending
            .iter()
            .map(|p| p.meta.expires_at)
            .filter(|&e| e > 0)
            .min()
    }

    /// SUBSCRIBE: `message-summary` only; 200, then at once a NOTIFY.
    pub(super) async fn subscribe(self: Arc<Self>, mut tx: Transaction, user: &Username) {
        let answer = self.take_subscription(&mut tx, user);
        let (sub, cseq, state) = match answer {
            Ok(a) => a,
            Err(r) => {
                let _ = self.refuse(&mut tx, r).await;
                return;
            }
        };
        let expires = if state.starts_with("terminated") {
            0
        } else {
            sub.expires_at.saturating_sub(unix_now())
        };
        let headers = vec![Header::Expires(expires.to_string().into()), self.contact()];
        if let Err(e) = tx.reply_with(StatusCode::OK, headers, None).await {
            tracing::debug!("sip: answering SUBSCRIBE: {e}");
            return;
        }
        self.notify(&sub, cseq, &state).await;
    }

    /// Takes a SUBSCRIBE into the table: the subscription, the CSeq and
    /// the `Subscription-State` of its first NOTIFY.
    fn take_subscription(
        &self,
        tx: &mut Transaction,
        user: &Username,
    ) -> Result<(Subscription, u32, String), Refused> {
        let req = &tx.original;
        let event = req
            .headers
            .iter()
            .find_map(|h| match h {
                Header::Event(e) => Some(e.value().to_owned()),
                _ => None,
            })
            .unwrap_or_default();
        let package = event
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if !package.eq_ignore_ascii_case(summary::EVENT) {
            return Err(Refused::new(StatusCode::BadEvent, "unknown event package")
                .with(Header::Other("Allow-Events".into(), summary::EVENT.into())));
        }
        Self::own_address(req, user)?;
        let life = self.lifetime(req, None)?;
        let dialog = Dialog::take(tx)?;
        let sub = Subscription {
            call_id: dialog.call_id,
            contact: dialog.target,
            remote: dialog.remote,
            local: dialog.local,
            cseq: 1,
            expires_at: 0,
        };
        let now = unix_now();
        let mut registrar = self.registrar.lock().expect("registrar lock");
        let entry = registrar.subscribe(sub, life, now).map_err(|f| {
            Refused::new(StatusCode::ServiceUnavailable, "subscriptions full")
                .warn(&f.to_string())
                .with(Header::RetryAfter("60".into()))
        })?;
        Ok(match life {
            Lifetime::Remove => (entry.clone(), entry.cseq, "terminated".into()),
            Lifetime::Keep(s) => {
                let cseq = registrar.next_cseq(&entry.call_id).unwrap_or(entry.cseq);
                (entry, cseq, format!("active;expires={s}"))
            }
        })
    }
}

/// The lamp: keeps the summary true and every subscriber told, ends
/// expired subscriptions with a final NOTIFY.
pub(super) async fn lamp(inner: Arc<Inner>) {
    let mut changes = inner.peer.inbox_changes();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut watch = None;
    let mut rewatch_at = tokio::time::Instant::now();
    let mut refresh_at = tokio::time::Instant::now();
    loop {
        if watch.is_none()
            && inner.peer.username().is_some()
            && tokio::time::Instant::now() >= rewatch_at
        {
            match inner.peer.watch_inbox().await {
                Ok(s) => watch = Some(s),
                Err(e) => {
                    tracing::debug!("sip: the lamp could not watch the inbox: {e}");
                    rewatch_at = tokio::time::Instant::now() + REWATCH;
                }
            }
        }
        let pushed = async {
            match watch.as_mut() {
                Some(s) => s.message().await,
                None => std::future::pending().await,
            }
        };
        let refresh = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = inner.lamp.notified() => true,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                true
            }
            item = pushed => {
                if !matches!(item, Ok(Some(_))) {
                    watch = None;
                    rewatch_at = tokio::time::Instant::now() + REWATCH;
                }
                true
            }
            _ = tick.tick() => {
                let gone = {
                    let mut r = inner.registrar.lock().expect("registrar lock");
                    r.expire_bindings(unix_now());
                    r.expire_subscriptions(unix_now())
                };
                for s in gone {
                    let me = inner.clone();
                    tokio::spawn(async move { me.notify(&s, s.cseq, "terminated;reason=timeout").await });
                }
                tokio::time::Instant::now() >= refresh_at
            }
        };
        if refresh {
            let next = inner.refresh().await;
            let now = unix_now();
            let until_expiry =
                next.map_or(POLL, |e| Duration::from_secs(e.saturating_sub(now) + 1));
            refresh_at = tokio::time::Instant::now() + until_expiry.min(POLL);
        }
    }
}
