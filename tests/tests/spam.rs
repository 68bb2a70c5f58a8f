//! Spam control across real servers and peers: a short slice of the spam
//! run (the whole run is `cargo bench -p vmail-tests --bench spam`), quotas
//! and first contacts surviving a leader kill, and policies, contacts,
//! blocks, reports and anonymous voicemail through the gRPC client a peer
//! uses.

use std::sync::Arc;

use tonic::Code;
use vmail_auth::config::SpamConfig;
use vmail_auth::service::SystemClock;
use vmail_node::auth_client::{
    ClientError, GrantRequest, ListEdit, PolicyChange, PolicyMode, SenderVisibility,
};
use vmail_node::peer::no_progress;
use vmail_proto::grant::GrantedShard;
use vmail_proto::names::{Recipients, Username};
use vmail_tests::spam::{SpamRun, spam_run};
use vmail_tests::{
    TestAuth, TestCluster, TestNet, identity, leave_request, password, random_content,
    register_and_login,
};

/// An auth server on the default spam settings.
async fn spam_defaults() -> TestAuth {
    TestAuth::start_with(|c| c.spam = SpamConfig::default(), Arc::new(SystemClock)).await
}

fn code(e: &ClientError) -> Option<Code> {
    match e {
        ClientError::Server(s) => Some(s.code()),
        _ => None,
    }
}

fn grant_to(names: &[&str]) -> GrantRequest {
    GrantRequest {
        recipients: Recipients::parse(names).unwrap(),
        message_id: vmail_proto::random_bytes(),
        data_shards: 1,
        shards: vec![GrantedShard {
            len: 1024,
            sha256: [7; 32],
        }],
        holders: vec![vec![1; 38]],
        expires_at: 0,
        sender: SenderVisibility::Shown,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_spam_run_reaches_each_recipient_once_and_honest_senders_always() {
    let net = TestNet::start_on(spam_defaults().await, 4, |_| {}).await;
    let run = SpamRun {
        recipients: 14,
        honest: 2,
        contacts: 2,
        honest_rounds: 2,
        spammers: 1,
        attempts: 40,
        size: 4096,
        probe: false,
    };
    let r = spam_run(&net, run).await;
    // Honest senders reach their contacts every time, spam or not.
    assert_eq!(r.honest, [(4, 4), (4, 4)], "{r:?}");
    // The spammer reached at most the default 10 strangers a day, each at
    // most once (one first contact may wait), and every one of its
    // voicemails is in an inbox.
    assert!(r.spam_left <= 10, "{r:?}");
    assert_eq!(r.spam_in_inboxes, r.spam_left, "{r:?}");
    assert_eq!(r.recipients_reached, r.spam_left, "{r:?}");
    // Every refusal named a rule.
    assert_eq!(
        r.spam_refusals.values().sum::<usize>() + r.spam_left,
        r.spam_attempts
    );
    assert!(!r.spam_refusals.contains_key("other"), "{r:?}");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sender_quotas_survive_a_leader_kill() {
    let mut cluster = TestCluster::start_with(3, |c| c.spam = SpamConfig::default()).await;
    let mut c = cluster.client().await;
    let id = identity();
    c.register("spammer", &password("spammer"), &id, None)
        .await
        .unwrap();
    let names: Vec<String> = (0..11).map(|i| format!("stranger{i:02}")).collect();
    for n in &names {
        c.register(n, &password(n), &identity(), None)
            .await
            .unwrap();
    }
    c.login("spammer", &password("spammer"), &id, &[])
        .await
        .unwrap();
    // The default allows 10 new recipients a day.
    for n in &names[..10] {
        c.request_grant(&grant_to(&[n])).await.unwrap();
    }
    let leader = cluster.leader().await;
    cluster.kill(leader).await;
    let _ = cluster.leader().await;
    let mut c = cluster.client().await;
    c.login("spammer", &password("spammer"), &id, &[])
        .await
        .unwrap();
    let e = c.request_grant(&grant_to(&[&names[10]])).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("new_recipients_per_day"), "{e}");
    // A stranger already reached today does not count again.
    c.request_grant(&grant_to(&[&names[0]])).await.unwrap();
    let me = c.whoami().await.unwrap();
    let daily = me
        .allowances
        .iter()
        .find(|a| a.name == "new_recipients_per_day")
        .unwrap();
    assert_eq!((daily.used, daily.limit), (10, 10));
    assert!(daily.resets_at.is_some());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policies_blocks_reports_and_anonymous_voicemail_through_real_peers() {
    let net = TestNet::start_on(spam_defaults().await, 3, |_| {}).await;
    net.login(0, "alice").await;
    // Bob fetches on peer 1 and manages his policy from a client of his own.
    let bob_id = net.login(1, "bob").await;
    let mut bob = net.auth.client().await;
    bob.login("bob", &password("bob"), &bob_id, &[])
        .await
        .unwrap();
    register_and_login(&net.auth, "carol").await;
    let content = random_content(2048);
    let leave = |to: &[&str], sender| {
        let mut req = leave_request(to, content.clone(), 1);
        req.sender = sender;
        net.peers[0].leave(req, no_progress())
    };

    // Contacts only: alice is refused until bob lists her.
    let p = bob
        .set_policy(PolicyChange {
            mode: Some(PolicyMode::Contacts),
            accept_anonymous: None,
        })
        .await
        .unwrap();
    assert_eq!(p.mode, PolicyMode::Contacts);
    let e = leave(&["bob"], SenderVisibility::Shown).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("bob does not accept voicemail from you"),
        "{e}"
    );
    // To bob and carol: carol (default policy) takes it as a first contact.
    let r = leave(&["bob", "carol"], SenderVisibility::Shown)
        .await
        .unwrap();
    assert_eq!(r.recipients.to_strings(), ["carol"]);
    assert_eq!(r.refused.len(), 1);
    assert_eq!(r.refused[0].username.as_str(), "bob");
    assert_eq!(r.first_contact.len(), 1);
    let alice = Username::parse("alice").unwrap();
    bob.edit_contacts(&ListEdit::add(vec![alice.clone()]))
        .await
        .unwrap();
    let r = leave(&["bob"], SenderVisibility::Shown).await.unwrap();
    assert!(r.first_contact.is_empty() && r.refused.is_empty());
    let pending = bob.list_pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(!pending[0].first_contact);
    assert_eq!(pending[0].sender.username(), Some(&alice));

    // Anonymous: refused until bob opts in, then hidden from him.
    let e = leave(&["bob"], SenderVisibility::Hidden).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("does not accept anonymous voicemail"),
        "{e}"
    );
    bob.set_policy(PolicyChange {
        mode: None,
        accept_anonymous: Some(true),
    })
    .await
    .unwrap();
    let r = leave(&["bob"], SenderVisibility::Hidden).await.unwrap();
    let pending = bob.list_pending().await.unwrap();
    let hidden = pending
        .iter()
        .find(|p| p.id == r.voicemail_id)
        .expect("the anonymous voicemail is listed");
    assert!(hidden.sender.is_hidden());
    // The peer fetches and decrypts it like any other.
    let got = net.peers[1].fetch(r.voicemail_id, no_progress()).await;
    let got = got.expect("fetched");
    assert!(got.pending.sender.is_hidden());
    assert_eq!(got.content, content);

    // A report blocks the hidden sender without naming her.
    let out = bob.report(&r.voicemail_id).await.unwrap();
    assert_eq!((out.sender, out.newly_blocked), (None, true));
    let p = bob.get_policy().await.unwrap();
    assert_eq!(p.hidden_blocked, 1);
    assert!(p.blocked.is_empty());
    let e = leave(&["bob"], SenderVisibility::Shown).await.unwrap_err();
    assert!(
        e.to_string().contains("does not accept voicemail from you"),
        "{e}"
    );
    // Bad edits: an unknown user, and a report of someone else's voicemail.
    let e = bob
        .edit_blocked(&ListEdit::add(vec![Username::parse("nobody").unwrap()]))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::NotFound), "{e}");
    let (mut dave, _, _) = register_and_login(&net.auth, "dave").await;
    let e = dave.report(&r.voicemail_id).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::NotFound), "{e}");
    net.stop().await;
}
