//! Threshold-shared keys across a real three-server group on 127.0.0.1:0:
//! each server publishes its own share key, the grant lists all three, and
//! every server (followers too, never redirected) answers OpenShare from
//! its own state with a share only the recipient opens.

use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cluster::admin;

/// How long the group may take to form, replicate or publish.
const GROUP_TIMEOUT: Duration = Duration::from_secs(60);

/// One serving member.
struct Node {
    svc: Arc<AuthService>,
    dir: PathBuf,
    member: Member,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(dir: PathBuf, clock: Arc<ManualClock>) -> Node {
    let svc = Arc::new(crate::server::open(&dir, clock).await.unwrap());
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raft = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let member = crate::server::member(&svc, &api, &raft);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (svc, stop) = (svc.clone(), stop.clone());
        async move {
            crate::server::serve(svc, api, raft, stop.cancelled_owned())
                .await
                .unwrap();
        }
    });
    Node {
        svc,
        dir,
        member,
        stop,
        task,
    }
}

/// Polls `f` until it gives `Some`, or panics naming `what`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + GROUP_TIMEOUT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three members: auth-1 founds the group, auth-2 and auth-3 join it.
async fn group(tmp: &TempDir, clock: &Arc<ManualClock>) -> Vec<Node> {
    let first = tmp.path().join("auth-1");
    datadir::init(&InitOptions::loopback(&first)).unwrap();
    let file = first.join(datadir::files::CONFIG);
    let mut config: ServerConfig =
        toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    config.spam.default_mode = PolicyMode::Anyone;
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let mut nodes = vec![serve(first.clone(), clock.clone()).await];
    let leader = nodes[0].svc.clone();
    until("auth-1 to lead", || async {
        leader.is_leader().then_some(())
    })
    .await;
    let via = nodes[0].member.raft_url.clone();
    let credential = admin::member_tls(&first).unwrap();
    for name in ["auth-2", "auth-3"] {
        let dir = tmp.path().join(name);
        let opts = InitOptions {
            name: name.into(),
            ..InitOptions::loopback(&dir)
        };
        admin::prepare_join(&opts, &via, &credential).await.unwrap();
        let node = serve(dir.clone(), clock.clone()).await;
        let tls = admin::member_tls(&dir).unwrap();
        admin::request_join(
            &via,
            &tls,
            node.svc.node_id(),
            &node.member,
            node.svc.share_keys().member_public(),
        )
        .await
        .unwrap();
        nodes.push(node);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_each_open_their_share_and_any_two_recover_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let nodes = group(&tmp, &clock).await;
    let leader = nodes[0].svc.clone();

    // Each server publishes its own key, without being asked; the grant
    // lists all three, by node id.
    for n in &nodes {
        let svc = n.svc.clone();
        until("every share key published", || {
            let svc = svc.clone();
            async move {
                let keys = svc.store().newest_share_keys().ok()?;
                (keys.len() == 3).then_some(())
            }
        })
        .await;
    }
    let share_keys = leader.grant_share_keys().await.unwrap();
    assert_eq!(share_keys.len(), 3);
    let mut ids: Vec<u64> = nodes.iter().map(|n| n.svc.node_id()).collect();
    ids.sort();
    assert_eq!(
        share_keys.iter().map(|k| k.node_id).collect::<Vec<_>>(),
        ids
    );
    for n in &nodes {
        let (epoch, public) = n.svc.share_keys().current();
        let listed = share_keys
            .iter()
            .find(|k| k.node_id == n.svc.node_id())
            .unwrap();
        assert_eq!((listed.epoch, listed.public), (epoch, public));
    }

    // A member publishes only its own key, and only a usable one.
    let at = nodes.iter().find(|n| n.svc.is_leader()).unwrap();
    let mut as_second = admin::member_tls(&nodes[1].dir)
        .unwrap()
        .client(&at.member.raft_url)
        .unwrap();
    let publish = |node_id, public_key| vmail_proto::cluster_pb::PublishShareKeyRequest {
        node_id,
        epoch: 7,
        public_key,
        ..Default::default()
    };
    let fresh = BoxSecret::generate().public().to_vec();
    let err = as_second
        .publish_share_key(publish(nodes[2].svc.node_id(), fresh.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("names auth-2"), "{}", err.message());
    let err = as_second
        .publish_share_key(publish(nodes[1].svc.node_id(), vec![1; 31]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("public_key"), "{}", err.message());

    // A thief with the second server's keys mints a certificate in the
    // third's name with the CA key. Its share key for the third is refused
    // all the same: unsigned, or signed by a member key of its own.
    let stolen = nodes[1].svc.keys();
    let (cert_pem, key_pem) = crate::keys::GroupSecrets {
        ca_cert_pem: stolen.ca_cert_pem.clone(),
        ca_key_pem: stolen.ca_key_pem.clone(),
        cluster_key: stolen.cluster_key.clone(),
        opaque_setup: stolen.opaque_setup.clone(),
        data_key: stolen.data_key.clone(),
    }
    .issue(&nodes[2].member.name, vec!["localhost".into()], None)
    .unwrap();
    let mut as_third = crate::tls::ClusterTls {
        ca_pem: stolen.ca_cert_pem.clone(),
        cert_pem,
        key_pem,
    }
    .client(&at.member.raft_url)
    .unwrap();
    let third = nodes[2].svc.node_id();
    let err = as_third
        .publish_share_key(publish(third, fresh.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("member_key"), "{}", err.message());
    let thief = ed25519_dalek::SigningKey::from_bytes(&vmail_proto::random_bytes());
    let fresh_key: [u8; 32] = fresh.clone().try_into().unwrap();
    let signed = vmail_proto::cluster_pb::PublishShareKeyRequest {
        member_key: thief.verifying_key().to_bytes().to_vec(),
        signature: ed25519_dalek::Signer::sign(
            &thief,
            &crate::store::publication_bytes(third, 7, &fresh_key),
        )
        .to_bytes()
        .to_vec(),
        ..publish(third, fresh.clone())
    };
    let err = as_third.publish_share_key(signed).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("a member key other than the one the group recorded"),
        "{}",
        err.message()
    );
    let listed = leader.grant_share_keys().await.unwrap();
    let theirs = listed.iter().find(|k| k.node_id == third).unwrap();
    assert_eq!(theirs.public, nodes[2].svc.share_keys().current().1);
    for n in &nodes {
        assert_eq!(
            n.svc.store().member_key(n.svc.node_id()).unwrap(),
            Some(n.svc.share_keys().member_public()),
            "every member's key is recorded, by its join or its first publication"
        );
    }

    // The group keys a joining server is handed hold no share key.
    let (group, config) = admin::fetch_group(
        &nodes[0].member.raft_url,
        &admin::member_tls(&nodes[1].dir).unwrap(),
    )
    .await
    .unwrap();
    let handed = [
        group.ca_cert_pem.as_bytes().to_vec(),
        group.ca_key_pem.as_bytes().to_vec(),
        group.cluster_key.to_bytes().to_vec(),
        group.opaque_setup.serialize().to_vec(),
        group.data_key.as_bytes().to_vec(),
        toml::to_string(&config).unwrap().into_bytes(),
    ]
    .concat();
    for n in &nodes {
        let secrets = datadir::load_share_keys(&n.dir).unwrap();
        assert_eq!(secrets.len(), 1);
        for s in secrets.values() {
            let bytes = s.to_bytes();
            assert!(!handed.windows(32).any(|w| w == bytes));
            let hex = hex::encode(bytes);
            assert!(!String::from_utf8_lossy(&handed).contains(&hex));
        }
    }

    // A deposit split among the three keys, as the sender's client does.
    let h = Harness {
        svc: leader.clone(),
        clock: clock.clone(),
        share_keys: share_keys.clone(),
        keys: Default::default(),
        dir: tempfile::tempdir().unwrap(),
    };
    let alice = h.register_and_login("alice").await;
    let bob = h.register_and_login("bob").await;
    let carol = h.register_and_login("carol").await;
    // Split among two of the three servers only (a 2-of-2 the third never
    // sees), the key would need just those two: refused, naming the third.
    let key = SecretKey::random();
    let d = h.deposit(&key, &["bob"], &random_bytes::<16>(), 0);
    let mut two = h.granted(&alice, d).await;
    let left_out = share_keys[2].node_id;
    let recipients = vmail_proto::names::Recipients::parse(["bob"]).unwrap();
    two.shares = split(
        &key,
        &share_keys[..2],
        two.grant_serial,
        &recipients,
        &two.locator,
    )
    .2;
    let err = h.svc.deposit(&alice.session, two).await.unwrap_err();
    let name = nodes
        .iter()
        .find(|n| n.svc.node_id() == left_out)
        .map(|n| n.member.name.clone())
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.starts_with("shares: sealed to auth servers") && msg.contains(&name),
        "{msg}"
    );

    let d = h.deposit(&key, &["bob"], &random_bytes::<16>(), 0);
    let d = h.granted(&alice, d).await;
    assert_eq!(d.shares.len(), 3);
    assert_eq!(d.threshold, 2);
    let id = h.svc.deposit(&alice.session, d).await.unwrap().id;
    let delivery = h.svc.pending_one(&bob.session, id).await.unwrap().unwrap();
    assert_eq!(delivery.threshold, 2);
    assert_eq!(delivery.shares.len(), 3);

    // Every server answers for its own share, followers included.
    let mut opened = Vec::new();
    for n in &nodes {
        let svc = n.svc.clone();
        let session = bob.session.clone();
        let share = until("the deposit to reach every server", || {
            let (svc, session) = (svc.clone(), session.clone());
            async move { svc.open_share(&session, &id).await.ok() }
        })
        .await;
        assert_eq!(share.node_id, n.svc.node_id());
        opened.push(share);
    }
    for pair in [[0, 1], [0, 2], [1, 2]] {
        let two = [opened[pair[0]].clone(), opened[pair[1]].clone()];
        assert_eq!(recover(&bob, &delivery, &two).unwrap(), key);
    }
    assert_eq!(
        recover(&bob, &delivery, &opened[..1]).unwrap_err(),
        vmail_proto::share::ShareError::TooFew { got: 1, need: 2 }
    );
    // Resealed to bob's inbox key: carol's inbox, or another inbox under
    // bob's name, opens nothing.
    assert!(recover(&carol, &delivery, &opened).is_err());
    let mut other = LoggedIn {
        inbox: BoxSecret::generate(),
        session: carol.session.clone(),
        token: carol.token,
        master_key: carol.master_key.clone(),
    };
    other.session.username = "bob".into();
    assert!(recover(&other, &delivery, &opened).is_err());

    // Not a recipient: not found, on every server.
    for n in &nodes {
        session_applied(&n.svc, &carol.session).await;
        let err = n.svc.open_share(&carol.session, &id).await.unwrap_err();
        assert_eq!(crate::grpc::status(err).code(), tonic::Code::NotFound);
    }

    // After bob's ack, no server hands out a share.
    h.svc.ack(&bob.session, &id).await.unwrap();
    for n in &nodes {
        let svc = n.svc.clone();
        let session = bob.session.clone();
        let err = until("the ack to reach every server", || {
            let (svc, session) = (svc.clone(), session.clone());
            async move { svc.open_share(&session, &id).await.err() }
        })
        .await;
        assert_eq!(crate::grpc::status(err).code(), tonic::Code::NotFound);
    }

    for n in nodes {
        n.stop.cancel();
        n.task.await.unwrap();
    }
}

/// Waits until `svc` has applied `session`.
async fn session_applied(svc: &Arc<AuthService>, session: &Session) {
    let hash = session.token_hash;
    until("the session to reach every server", || {
        let svc = svc.clone();
        async move { svc.store().session(&hash).ok().flatten().map(|_| ()) }
    })
    .await;
}
