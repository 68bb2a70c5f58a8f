//! Spam control through the service and its one-node group, on the default
//! configuration: each policy mode, blocks, first contact, each sender
//! quota tripping and resetting on the injected clock, anonymous voicemail
//! and reports.

use crate::config::SpamConfig;
use crate::store::{DAY, HOUR, PolicyList, Quota, Refusal, VoicemailId};

use super::*;

/// A group on the default spam settings, with `edit` applied.
async fn spam_harness(edit: impl FnOnce(&mut SpamConfig)) -> Harness {
    Harness::start_with(|c| edit(&mut c.spam)).await
}

impl Harness {
    /// A grant for `who`'s voicemail of `data_bytes` (one data shard of
    /// two) to `recipients`.
    async fn grant_sized(
        &self,
        who: &LoggedIn,
        recipients: &[&str],
        data_bytes: u64,
        anonymous: bool,
    ) -> Result<Granted, AuthError> {
        let mut r = grant_request(recipients, 0);
        r.data_shards = 1;
        r.shards.truncate(2);
        for s in &mut r.shards {
            s.len = data_bytes;
        }
        r.anonymous = anonymous;
        self.svc.request_grant(&who.session, r).await
    }

    /// Leaves a voicemail: a grant for `recipients`, then a deposit for
    /// those who take it. Returns the voicemail id and the grant.
    async fn leave(
        &self,
        who: &LoggedIn,
        recipients: &[&str],
        anonymous: bool,
    ) -> Result<(VoicemailId, Granted), AuthError> {
        let granted = self.grant_sized(who, recipients, 1000, anonymous).await?;
        let names: Vec<&str> = granted.recipients.iter().map(|(r, _)| r.as_str()).collect();
        let mut d = self.deposit(&SecretKey::random(), &names, &random_bytes::<16>(), 0);
        self.with_grant(&mut d, granted.grant.body.serial);
        let id = self.svc.deposit(&who.session, d).await?.id;
        Ok((id, granted))
    }

    async fn contacts(&self, who: &LoggedIn, add: &[&str]) {
        self.svc
            .edit_policy(
                &who.session,
                PolicyList::Contacts,
                add.iter().map(|s| s.to_string()).collect(),
                vec![],
            )
            .await
            .unwrap();
    }
}

fn refusals(err: AuthError) -> Vec<(String, Refusal)> {
    match err {
        AuthError::NoRecipientAccepts(r) => r,
        other => panic!("expected NoRecipientAccepts, got {other:?}"),
    }
}

fn quota(err: AuthError) -> (Quota, u64, u64, u64) {
    match err {
        AuthError::Quota {
            quota,
            limit,
            used,
            resets_at,
        } => (quota, limit, used, resets_at),
        other => panic!("expected Quota, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_mode_refuses_takes_or_limits_strangers_and_takes_contacts() {
    let h = spam_harness(|_| {}).await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let carol = h.register_and_login("carol").await;
    let dave = h.register_and_login("dave").await;
    h.svc
        .set_policy(&bob.session, Some(PolicyMode::Contacts), None)
        .await
        .unwrap();
    h.svc
        .set_policy(&carol.session, Some(PolicyMode::Anyone), None)
        .await
        .unwrap();
    // dave keeps the default, contacts+first-contact.
    let p = h.svc.policy(&dave.session).await.unwrap();
    assert_eq!(p.mode, Some(PolicyMode::ContactsFirstContact));

    // Contacts only: a stranger is refused, and the reason does not say
    // whether it is a block or the mode.
    let err = h.leave(&alice, &["bob"], false).await.unwrap_err();
    assert_eq!(refusals(err), [("bob".into(), Refusal::NotAccepted)]);
    assert!(h.svc.store().storage_grant(1).unwrap().is_none());
    // Anyone, and the default, take her: both flag her as a stranger, only
    // the default limits her (shorter expiry).
    let (id, g) = h.leave(&alice, &["carol", "dave"], false).await.unwrap();
    let accepted: Vec<_> = g
        .recipients
        .iter()
        .map(|(r, a)| (r.as_str(), a.stranger, a.limited))
        .collect();
    assert_eq!(accepted, [("carol", true, false), ("dave", true, true)]);
    assert_eq!(
        g.grant.body.expires_at,
        T0 + SpamConfig::default().first_contact_ttl_secs
    );
    for who in [&carol, &dave] {
        let list = h.svc.list_pending(&who.session).await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, id);
        assert!(list[0].first_contact);
        assert!(list[0].sender_certificate.is_some());
    }
    // Once bob lists alice, she reaches him, not as a first contact, with
    // the full expiry.
    h.contacts(&bob, &["alice"]).await;
    let (_, g) = h.leave(&alice, &["bob"], false).await.unwrap();
    assert!(!g.recipients[0].1.stranger);
    assert_eq!(
        g.grant.body.expires_at,
        T0 + h.svc.config().default_voicemail_ttl_secs
    );
    let list = h.svc.list_pending(&bob.session).await.unwrap();
    assert!(!list[0].first_contact);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_drops_the_recipient_for_later_grants_and_keeps_what_waits() {
    let h = spam_harness(|_| {}).await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let carol = h.register_and_login("carol").await;
    h.contacts(&bob, &["alice"]).await;
    h.contacts(&carol, &["alice"]).await;
    let (waiting, _) = h.leave(&alice, &["bob"], false).await.unwrap();
    h.svc
        .edit_policy(
            &bob.session,
            PolicyList::Blocked,
            vec!["alice".into()],
            vec![],
        )
        .await
        .unwrap();
    // Blocking a contact takes her off the contacts.
    let p = h.svc.policy(&bob.session).await.unwrap();
    assert!(p.contacts.is_empty());
    assert_eq!(p.blocked.iter().collect::<Vec<_>>(), ["alice"]);
    // A voicemail to both reaches carol only; bob is named with a reason.
    let (_, g) = h.leave(&alice, &["bob", "carol"], false).await.unwrap();
    assert_eq!(g.recipients.len(), 1);
    assert_eq!(g.recipients[0].0, "carol");
    assert_eq!(g.refused, [("bob".into(), Refusal::NotAccepted)]);
    // The deposit must name exactly the recipients the grant covers.
    let granted = h
        .grant_sized(&alice, &["bob", "carol"], 10, false)
        .await
        .unwrap();
    let mut d = h.deposit(
        &SecretKey::random(),
        &["bob", "carol"],
        &random_bytes::<16>(),
        0,
    );
    h.with_grant(&mut d, granted.grant.body.serial);
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(
        matches!(err, AuthError::GrantRecipients { ref granted, .. } if granted == &["carol"]),
        "{err:?}"
    );
    // What waited before the block is still there.
    let list = h.svc.list_pending(&bob.session).await.unwrap();
    assert_eq!(list.iter().map(|d| d.id).collect::<Vec<_>>(), [waiting]);
    // To bob alone: PERMISSION_DENIED, with the reason, decided without a
    // log entry.
    let log_end = || h.svc.raft().metrics().borrow().last_log_index;
    let before = log_end();
    let err = h.leave(&alice, &["bob"], false).await.unwrap_err();
    assert_eq!(log_end(), before);
    assert!(
        err.to_string()
            .contains("bob does not accept voicemail from you"),
        "{err}"
    );
    assert_eq!(
        crate::grpc::status(err).code(),
        tonic::Code::PermissionDenied
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_contact_waits_alone_is_short_and_needs_an_old_enough_account() {
    let h = spam_harness(|s| {
        s.first_contact_max_bytes = 5000;
        s.first_contact_min_account_age_secs = 600;
    })
    .await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let err = h.leave(&alice, &["bob"], false).await.unwrap_err();
    assert_eq!(
        refusals(err),
        [("bob".into(), Refusal::AccountTooNew { min_age_secs: 600 })]
    );
    h.clock.advance(600);
    let err = h
        .grant_sized(&alice, &["bob"], 5001, false)
        .await
        .unwrap_err();
    assert_eq!(
        refusals(err),
        [(
            "bob".into(),
            Refusal::FirstContactTooLong { max_bytes: 5000 }
        )]
    );
    let (id, _) = h.leave(&alice, &["bob"], false).await.unwrap();
    // A second one waits for the first to be heard.
    let err = h.leave(&alice, &["bob"], false).await.unwrap_err();
    assert_eq!(
        refusals(err),
        [("bob".into(), Refusal::FirstContactWaiting)]
    );
    // Once bob has heard it, a grant is issued again; a newer grant (a
    // retry after a failed upload, say) replaces one not yet deposited,
    // whose deposit is then refused.
    h.svc.ack(&bob.session, &id).await.unwrap();
    let old = h.grant_sized(&alice, &["bob"], 10, false).await.unwrap();
    let (_, newer) = h.leave(&alice, &["bob"], false).await.unwrap();
    let mut d = h.deposit(&SecretKey::random(), &["bob"], &random_bytes::<16>(), 0);
    h.with_grant(&mut d, old.grant.body.serial);
    let err = h.svc.deposit(&alice.session, d).await.unwrap_err();
    assert!(
        matches!(err, AuthError::GrantSuperseded { serial, ref recipient } if serial == old.grant.body.serial && recipient == "bob"),
        "{err:?}"
    );
    assert!(newer.grant.body.serial > old.grant.body.serial);
    let err = h.leave(&alice, &["bob"], false).await.unwrap_err();
    assert_eq!(
        refusals(err),
        [("bob".into(), Refusal::FirstContactWaiting)]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_quota_trips_names_itself_and_resets() {
    let h = Harness::start_with(|c| {
        // Sessions outlive the day the test moves through.
        c.session_ttl_secs = 3 * DAY;
        c.certificate_ttl_secs = 3 * DAY;
        c.spam.voicemails_per_hour = 3;
        c.spam.new_recipients_per_day = 2;
        c.spam.max_outstanding_bytes = 10_000;
        c.spam.default_mode = PolicyMode::Anyone;
    })
    .await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    for u in ["carol", "dave"] {
        h.register(u).await;
    }
    // New recipients a day: bob and carol pass, dave is one too many.
    h.leave(&alice, &["bob", "carol"], false).await.unwrap();
    let err = h.leave(&alice, &["dave"], false).await.unwrap_err();
    let msg = err.to_string();
    assert_eq!(quota(err), (Quota::NewRecipientsPerDay, 2, 2, T0 + DAY));
    assert!(
        msg.contains("new_recipients_per_day") && msg.contains("vmail whoami"),
        "{msg}"
    );
    // Voicemails an hour: two more to known strangers, then refused.
    h.leave(&alice, &["bob"], false).await.unwrap();
    h.clock.advance(60);
    h.leave(&alice, &["carol"], false).await.unwrap();
    let err = h.leave(&alice, &["bob"], false).await.unwrap_err();
    let status = crate::grpc::status(AuthError::Quota {
        quota: Quota::VoicemailsPerHour,
        limit: 3,
        used: 3,
        resets_at: 0,
    });
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(quota(err), (Quota::VoicemailsPerHour, 3, 3, T0 + HOUR));
    // whoami's view agrees.
    let (allow, reports) = h.svc.allowances("alice").await.unwrap();
    assert_eq!(reports, 0);
    assert_eq!((allow[0].used, allow[0].limit), (3, 3));
    assert_eq!((allow[1].used, allow[1].limit), (2, 2));
    assert_eq!(allow[2].used, 3 * 2000);
    // An hour after the first, one slot frees; a day after, dave is reachable.
    h.clock.advance(HOUR - 60);
    h.leave(&alice, &["bob"], false).await.unwrap();
    h.clock.advance(DAY);
    // Outstanding bytes: 8000 granted of 10,000; a 2 × 1500 grant is too much.
    let err = h
        .grant_sized(&alice, &["dave"], 1500, false)
        .await
        .unwrap_err();
    assert_eq!(quota(err).0, Quota::OutstandingBytes);
    // Fetching frees them: the last ack's delete order gives the bytes back.
    for d in h.svc.list_pending(&bob.session).await.unwrap() {
        h.svc.ack(&bob.session, &d.id).await.unwrap();
    }
    h.grant_sized(&alice, &["dave"], 1500, false).await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_voicemail_hides_the_sender_from_the_recipient_only() {
    let h = spam_harness(|s| s.default_mode = PolicyMode::Anyone).await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let err = h.leave(&alice, &["bob"], true).await.unwrap_err();
    assert_eq!(refusals(err), [("bob".into(), Refusal::NoAnonymous)]);
    let p = h
        .svc
        .set_policy(&bob.session, None, Some(true))
        .await
        .unwrap();
    assert!(p.accept_anonymous);
    assert_eq!(p.mode, Some(PolicyMode::Anyone));
    let (id, _) = h.leave(&alice, &["bob"], true).await.unwrap();
    let list = h.svc.list_pending(&bob.session).await.unwrap();
    assert!(list[0].sender_certificate.is_none());
    let one = h.svc.pending_one(&bob.session, id).await.unwrap().unwrap();
    assert!(one.sender_certificate.is_none());
    // The group still knows who sent it, and charged her quota.
    let note = h.svc.store().note("bob", &id).unwrap().unwrap();
    assert_eq!((note.sender.as_str(), note.anonymous), ("alice", true));
    assert_eq!(h.svc.allowances("alice").await.unwrap().0[0].used, 1);
    // A report blocks the hidden sender without naming her to bob.
    h.svc.ack(&bob.session, &id).await.unwrap();
    let r = h.svc.report(&bob.session, &id).await.unwrap();
    assert_eq!((r.sender, r.newly_blocked), (None, true));
    let p = h.svc.policy(&bob.session).await.unwrap();
    assert!(p.blocked.is_empty());
    assert_eq!(p.hidden_blocked.len(), 1);
    assert_eq!(h.svc.allowances("alice").await.unwrap().1, 1);
    let err = h.leave(&alice, &["bob"], true).await.unwrap_err();
    assert_eq!(refusals(err), [("bob".into(), Refusal::NotAccepted)]);
    let err = h.leave(&alice, &["bob"], false).await.unwrap_err();
    assert_eq!(refusals(err), [("bob".into(), Refusal::NotAccepted)]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_blocks_the_sender_and_halves_their_reach_once_per_reporter() {
    let h = spam_harness(|s| s.new_recipients_per_day = 4).await;
    let spammer = h.register_and_login("spammer").await;
    let bob = h.register_and_login("bob").await;
    let carol = h.register_and_login("carol").await;
    let (id, _) = h.leave(&spammer, &["bob"], false).await.unwrap();
    // Only a recipient may report, and only a voicemail id.
    let err = h.svc.report(&carol.session, &id).await.unwrap_err();
    assert!(matches!(err, AuthError::NotReceived(_)), "{err:?}");
    assert_eq!(crate::grpc::status(err).code(), tonic::Code::NotFound);
    let err = h.svc.report(&bob.session, &[1, 2, 3]).await.unwrap_err();
    assert!(matches!(
        err,
        AuthError::InvalidArgument {
            field: "voicemail_id",
            ..
        }
    ));
    let r = h.svc.report(&bob.session, &id).await.unwrap();
    assert_eq!(
        (r.sender.as_deref(), r.newly_blocked),
        (Some("spammer"), true)
    );
    // A second report by the same recipient counts once.
    let r = h.svc.report(&bob.session, &id).await.unwrap();
    assert!(!r.newly_blocked);
    let (allow, reports) = h.svc.allowances("spammer").await.unwrap();
    assert_eq!(reports, 1);
    assert_eq!(allow[1].limit, 2);
    assert!(
        h.svc
            .policy(&bob.session)
            .await
            .unwrap()
            .blocked
            .contains("spammer")
    );
    let err = h.leave(&spammer, &["bob"], false).await.unwrap_err();
    assert_eq!(refusals(err), [("bob".into(), Refusal::NotAccepted)]);
    // The voicemail reported stays until bob discards it.
    assert_eq!(h.svc.list_pending(&bob.session).await.unwrap().len(), 1);
    // Carol still hears from the spammer: the report is bob's alone.
    h.leave(&spammer, &["carol"], false).await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_policy_edits_are_named_and_change_nothing() {
    let h = spam_harness(|_| {}).await;
    let bob = h.register_and_login("bob").await;
    h.register("alice").await;
    let edit = |list, add: &[&str], remove: &[&str]| {
        h.svc.edit_policy(
            &bob.session,
            list,
            add.iter().map(|s| s.to_string()).collect(),
            remove.iter().map(|s| s.to_string()).collect(),
        )
    };
    let before = h.svc.policy(&bob.session).await.unwrap();
    let cases: Vec<(AuthError, tonic::Code)> = vec![
        (
            edit(PolicyList::Contacts, &["alice", "nobody"], &[])
                .await
                .unwrap_err(),
            tonic::Code::NotFound,
        ),
        (
            edit(PolicyList::Blocked, &["bob"], &[]).await.unwrap_err(),
            tonic::Code::InvalidArgument,
        ),
        (
            edit(PolicyList::Contacts, &[], &["alice"])
                .await
                .unwrap_err(),
            tonic::Code::NotFound,
        ),
        (
            edit(PolicyList::Contacts, &["alice"], &["alice"])
                .await
                .unwrap_err(),
            tonic::Code::InvalidArgument,
        ),
        (
            h.svc
                .set_policy(&bob.session, None, None)
                .await
                .unwrap_err(),
            tonic::Code::InvalidArgument,
        ),
    ];
    for (err, code) in cases {
        let msg = err.to_string();
        assert_eq!(crate::grpc::status(err).code(), code, "{msg}");
    }
    assert_eq!(h.svc.policy(&bob.session).await.unwrap(), before);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_refused_again_and_again_is_refused_from_memory() {
    let h = spam_harness(|s| {
        s.default_mode = PolicyMode::Contacts;
        s.refused_grants_per_minute = 2;
    })
    .await;
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    h.register("carol").await;
    h.contacts(&bob, &["alice"]).await;
    for _ in 0..2 {
        let err = h.leave(&alice, &["carol"], false).await.unwrap_err();
        assert!(matches!(err, AuthError::NoRecipientAccepts(_)), "{err:?}");
    }
    // Past the rate even a grant bob would take waits, with retry-after.
    let err = h.leave(&alice, &["bob"], false).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::RateLimited {
                key: "spam.refused_grants_per_minute",
                ..
            }
        ),
        "{err:?}"
    );
    let status = crate::grpc::status(err);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.metadata().get("retry-after").is_some());
    // Others are not affected.
    let bob_leaves = h.leave(&bob, &["carol"], false).await;
    assert!(matches!(bob_leaves, Err(AuthError::NoRecipientAccepts(_))));
    h.stop().await;
}
