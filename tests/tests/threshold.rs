//! The stolen-server drill (issue 22, docs/SECURITY.md "A compromised auth
//! server"): on a real 3-server group, voicemail is deposited through the
//! real client, which splits each session key 2-of-3 among the servers.
//! Then one server is "stolen": its process stops, its whole data directory
//! is copied, and the copy is opened as the thief would, with every key in
//! it (the data key, the share keys; a running server holds no key that is
//! not in its directory, so this is also what its memory would give).
//!
//! What the thief must not get: any pending voicemail's session key. What
//! two stolen servers do get (so the drill is not vacuous): every key.
//! Nowhere on any server's disk, log and snapshots included, are a
//! session key's bytes.
//!
//! The group's FROST signing key, generated through the log once the group
//! has three voters: any two servers' key packages sign, one alone cannot,
//! and no data dir holds another server's signing share. Signing runs in
//! two rounds over the internal service, each signer rebuilding what it
//! signs from its own state, so a stolen server gets no share on a
//! certificate the log does not hold. Certificates, grants, deposit proofs
//! and delete orders carry the group's signature beside the cluster key's:
//! a client that pins the group key refuses a certificate the stolen
//! cluster key made, and holders that pin it refuse a grant, a proof or an
//! order it made, on a real swarm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{EntryPayload, RaftLogReader};
use vmail_auth::cluster::log_store::LogStore;
use vmail_auth::cluster::{Command, Reply};
use vmail_auth::datadir;
use vmail_auth::metrics::AuthMetrics;
use vmail_auth::store::StoredShare;
use vmail_proto::keys::SecretKey;
use vmail_proto::names::Recipients;
use vmail_proto::share::{self, BoxSecret, ShareBinding, ShareError, ShareValue};
use vmail_tests::{TestCluster, deposit_for, granted, identity, password};

const VOICEMAILS: usize = 4;

/// A copy of a stopped server's data directory, opened with its own keys:
/// the sealed shares of every voicemail it knows of, from its state and
/// from its Raft log (applied state reaches the disk with the next durable
/// commit, the log at once), and its share keys.
struct Stolen {
    node_id: u64,
    deposits: BTreeMap<[u8; 16], Sealed>,
    share_keys: BTreeMap<u32, BoxSecret>,
}

/// What a server keeps of one voicemail's key.
struct Sealed {
    grant_serial: u64,
    locator: Vec<u8>,
    recipients: Recipients,
    threshold: u8,
    key_check: [u8; 32],
    shares: Vec<StoredShare>,
}

fn deposits_in(cmd: Command, out: &mut BTreeMap<[u8; 16], Sealed>) {
    match cmd {
        Command::Batch(cmds) => cmds.into_iter().for_each(|c| deposits_in(c, out)),
        Command::Deposit {
            id,
            grant_serial,
            recipients,
            threshold,
            key_check,
            shares,
            locator,
            ..
        } => {
            out.insert(
                id,
                Sealed {
                    grant_serial,
                    locator,
                    recipients: Recipients::parse(&recipients).unwrap(),
                    threshold,
                    key_check,
                    shares,
                },
            );
        }
        _ => {}
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Stops server `i` and opens a copy of its data directory.
async fn steal(cluster: &mut TestCluster, i: usize) -> Stolen {
    cluster.kill(i).await;
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&cluster.data_dir(i), copy.path());
    let keys = datadir::load_keys(copy.path()).expect("the stolen keys load");
    let store = datadir::open_store(copy.path(), &keys).expect("the stolen database opens");
    let share_keys = datadir::load_share_keys(copy.path()).expect("the stolen share keys load");
    assert!(!share_keys.is_empty(), "server {i} has share keys on disk");
    let node_id = store.node_id().unwrap();
    let mut deposits = BTreeMap::new();
    for vm in store.pending("alice", vmail_proto::unix_now()).unwrap() {
        deposits.insert(
            vm.id,
            Sealed {
                grant_serial: vm.grant_serial,
                locator: vm.locator,
                recipients: vm.recipients,
                threshold: vm.threshold,
                key_check: vm.key_check,
                shares: vm.shares,
            },
        );
    }
    let mut log = LogStore::open(Arc::new(store), Arc::new(AuthMetrics::new())).unwrap();
    for entry in log.try_get_log_entries(..).await.unwrap() {
        if let EntryPayload::Normal(cmd) = entry.payload {
            deposits_in(cmd, &mut deposits);
        }
    }
    Stolen {
        node_id,
        deposits,
        share_keys,
    }
}

impl Stolen {
    /// Every share of `vm` this thief can open, with every key it holds.
    fn open(&self, vm: &Sealed) -> Vec<ShareValue> {
        let binding = ShareBinding {
            grant_serial: vm.grant_serial,
            recipients: &vm.recipients,
            threshold: vm.threshold,
            key_check: &vm.key_check,
        };
        let mut opened = Vec::new();
        for s in &vm.shares {
            for key in self.share_keys.values() {
                if let Ok(v) = share::open_share(key, &s.into(), &binding) {
                    assert_eq!(s.node_id, self.node_id, "opened another server's share");
                    opened.push(v);
                }
            }
        }
        opened
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_stolen_server_recovers_no_session_key_and_two_recover_every_one() {
    let mut cluster = TestCluster::start(3).await;
    let mut bob = cluster.client().await;
    let mut alice = cluster.client().await;
    for (c, who) in [(&mut bob, "bob"), (&mut alice, "alice")] {
        c.register(who, &password(who), &identity(), None)
            .await
            .unwrap();
    }
    bob.login("bob", &password("bob"), &identity(), &[])
        .await
        .unwrap();
    let alice_s = alice
        .login("alice", &password("alice"), &identity(), &[])
        .await
        .unwrap();

    // Deposits through the real client: each key split 2-of-3.
    let mut keys: BTreeMap<[u8; 16], SecretKey> = BTreeMap::new();
    for n in 0..VOICEMAILS {
        let d = granted(&mut bob, deposit_for(&["alice"], &[n as u8; 64])).await;
        let r = bob.deposit(&d).await.expect("deposit");
        keys.insert(r.voicemail_id, d.session_key);
    }
    // The recipient recovers each one, so the shares are real.
    for p in alice.list_pending().await.unwrap() {
        let key = alice.recover_session_key(&alice_s, &p).await.unwrap();
        assert_eq!(key.as_bytes(), keys[&p.id].as_bytes());
        assert_eq!((p.shares.threshold, p.shares.slots.len()), (2, 3));
    }
    cluster.wait_applied().await;

    // No server's disk (database with its log and snapshots, key files)
    // holds any session key's bytes.
    for i in 0..3 {
        for f in files(&cluster.data_dir(i)) {
            let bytes = std::fs::read(&f).unwrap();
            for key in keys.values() {
                assert!(
                    !bytes.windows(32).any(|w| w == key.as_bytes()),
                    "{} holds a session key",
                    f.display()
                );
            }
        }
    }

    // One server stolen: its own share of each voicemail opens, and that is
    // all; one share recovers nothing.
    let first = steal(&mut cluster, 0).await;
    assert_eq!(
        first.deposits.len(),
        VOICEMAILS,
        "the thief reads every deposit"
    );
    let mut first_shares = BTreeMap::new();
    for (id, vm) in &first.deposits {
        let opened = first.open(vm);
        assert_eq!(opened.len(), 1, "exactly the thief's own share opens");
        assert!(matches!(
            share::combine(&opened, vm.threshold, &vm.key_check, &vm.locator),
            Err(ShareError::TooFew { got: 1, need: 2 })
        ));
        first_shares.insert(*id, opened);
    }

    // A second server stolen: now every key comes out.
    let second = steal(&mut cluster, 1).await;
    assert_eq!(second.deposits.len(), VOICEMAILS);
    for (id, vm) in &second.deposits {
        let mut both = first_shares[id].clone();
        both.extend(second.open(vm));
        let key = share::combine(&both, vm.threshold, &vm.key_check, &vm.locator).unwrap();
        assert_eq!(key.as_bytes(), keys[id].as_bytes());
    }
    cluster.stop().await;
}

/// The group signing key comes from a distributed key generation through
/// the log (docs/THRESHOLD.md §1): every server ends with the same group
/// key and a key package of its own in its data dir. Any two of them sign
/// a message `verify_strict` accepts under the group key, as peers check
/// certificates; one alone cannot even make a signing package, and no
/// server's data dir holds another's signing share.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_generate_a_group_key_any_two_sign_with_and_one_cannot() {
    use vmail_auth::threshold::{self, sign};

    let mut cluster = TestCluster::start(3).await;
    let (ceremony, group_key) = group_key(&cluster).await;
    let packages: Vec<_> = (0..3)
        .map(|i| {
            datadir::frost_keys::load_key_package(&cluster.data_dir(i), ceremony)
                .unwrap()
                .expect("every member holds its key package")
        })
        .collect();
    for (_, public) in &packages {
        assert_eq!(threshold::group_key_bytes(public).unwrap(), group_key);
    }
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&group_key).unwrap();
    let message = b"vmail threshold drill";
    for pair in [[0, 1], [0, 2], [1, 2]] {
        let mut nonces = BTreeMap::new();
        let mut commitments = BTreeMap::new();
        for i in pair {
            let (n, c) = sign::commit(&packages[i].0, &mut rand::rngs::OsRng);
            nonces.insert(*packages[i].0.identifier(), n);
            commitments.insert(*packages[i].0.identifier(), c);
        }
        let public = &packages[pair[0]].1;
        let package = sign::signing_package(public, commitments, message).unwrap();
        let shares: BTreeMap<_, _> = pair
            .iter()
            .map(|&i| {
                let id = *packages[i].0.identifier();
                let n = nonces.remove(&id).unwrap();
                (id, sign::sign_share(&package, n, &packages[i].0).unwrap())
            })
            .collect();
        let signature = sign::aggregate(&package, &shares, public).unwrap();
        verifying.verify_strict(message, &signature).unwrap();
    }
    // One server alone.
    let (key, public) = &packages[0];
    let (_, c) = sign::commit(key, &mut rand::rngs::OsRng);
    let alone = sign::signing_package(public, BTreeMap::from([(*key.identifier(), c)]), message);
    assert!(
        matches!(
            alone,
            Err(threshold::ThresholdError::NotEnoughSigners { got: 1, needed: 2 })
        ),
        "{alone:?}"
    );
    cluster.stop().await;
    for (i, (key, _)) in packages.iter().enumerate() {
        let share = key.signing_share().serialize();
        for j in (0..3).filter(|j| *j != i) {
            for file in files(&cluster.data_dir(j)) {
                let bytes = std::fs::read(&file).unwrap();
                assert!(
                    !bytes.windows(share.len()).any(|w| w == share.as_slice()),
                    "server {i}'s signing share is in {}",
                    file.display()
                );
            }
        }
    }
}

/// Waits until every running server applied the same completed key
/// generation; its number and the group key.
async fn group_key(cluster: &TestCluster) -> (u64, [u8; 32]) {
    let k = next_key(cluster, 0).await;
    (k.number, k.group_key)
}

/// Batching (docs/THRESHOLD.md §2): objects asked for together share one
/// signing round, and each verifies alone with its inclusion proof. A
/// batch is only of grants, orders and proofs; deposits made at once get
/// proofs that a pinning holder accepts, from fewer rounds than deposits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_asked_for_together_share_a_round_and_each_verifies_alone() {
    use vmail_auth::service::{SignError, SignTarget};
    use vmail_auth::tls::ClusterTls;

    let mut cluster = TestCluster::start(3).await;
    let (_, group) = group_key(&cluster).await;
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&group).unwrap();
    let cluster_key = cluster.target().cluster_key;
    let key_id = vmail_proto::grant::key_id(&cluster_key);
    let mut alice = cluster.client().await;
    alice
        .register("alice", &password("alice"), &identity(), None)
        .await
        .unwrap();
    alice
        .login("alice", &password("alice"), &identity(), &[])
        .await
        .unwrap();
    let mut serials = Vec::new();
    for i in 0..3 {
        let d = granted(
            &mut alice,
            deposit_for(&["alice"], format!("{i}").as_bytes()),
        )
        .await;
        serials.push(d.grant_serial);
    }
    cluster.wait_applied().await;

    // Three grants in one round, coordinated by a follower.
    let leader = cluster.leader().await;
    let me = (leader + 1) % 3;
    let service = &cluster.server(me).service;
    let tls = ClusterTls::of_member(service.keys());
    let targets: Vec<SignTarget> = serials
        .iter()
        .map(|&serial| SignTarget::Grant { serial })
        .collect();
    let signed = service
        .signer()
        .group_sign_many(&tls, service.node_id(), targets.clone())
        .await
        .expect("a batch of grants is signed");
    assert_eq!(signed.len(), 3);
    for (serial, g) in serials.iter().zip(&signed) {
        let body = service
            .store()
            .storage_grant(*serial)
            .unwrap()
            .unwrap()
            .body;
        let bytes = body.signing_bytes(&key_id);
        g.verify(&verifying, &bytes)
            .expect("each grant verifies alone");
        assert_eq!(g.proof.as_ref().map(|p| p.count), Some(3));
        assert_eq!(
            g.signature, signed[0].signature,
            "one round signed them all"
        );
        // The root's signature does not pass for a grant without its path,
        // nor the path for another grant.
        assert!(
            vmail_proto::batch::GroupSignature::from(g.signature)
                .verify(&verifying, &bytes)
                .is_err()
        );
    }
    let other = service
        .store()
        .storage_grant(serials[0])
        .unwrap()
        .unwrap()
        .body;
    assert!(
        signed[1]
            .verify(&verifying, &other.signing_bytes(&key_id))
            .is_err()
    );

    // A certificate is never signed in a batch: refused before any round,
    // and by every signer a coordinator asked anyway.
    let mut mixed = targets.clone();
    mixed.push(SignTarget::Certificate {
        username: "alice".into(),
        serial: 1,
    });
    let refused = service
        .signer()
        .group_sign_many(&tls, service.node_id(), mixed.clone())
        .await;
    assert!(
        matches!(refused, Err(SignError::Malformed(_))),
        "{refused:?}"
    );
    let other_signer = cluster.server(leader).service.signer();
    let applied = cluster.last_log_index(leader);
    let asked = other_signer
        .commit(
            cluster.name(me),
            service.node_id(),
            next_key(&cluster, 0).await.number,
            applied,
            &SignTarget::Batch(mixed).to_bytes(),
        )
        .await;
    assert!(matches!(asked, Err(SignError::Malformed(_))), "{asked:?}");

    // Sixteen deposits at once through the real client: every proof holds
    // under the pinned group key, and some round covered more than one.
    let mut senders = Vec::new();
    for i in 0..16 {
        let mut c = cluster.client().await;
        let user = format!("sender{i}");
        c.register(&user, &password(&user), &identity(), None)
            .await
            .unwrap();
        c.login(&user, &password(&user), &identity(), &[])
            .await
            .unwrap();
        let d = granted(&mut c, deposit_for(&["alice"], user.as_bytes())).await;
        senders.push((c, d));
    }
    let rounds = |text: &str| -> (f64, f64) {
        let at = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map_or(0.0, |v| v.trim().parse().unwrap())
        };
        (
            at("vmail_auth_group_sign_items_sum "),
            at("vmail_auth_group_sign_items_count "),
        )
    };
    let before = rounds(&cluster.server(leader).service.metrics().encode());
    let start = Arc::new(tokio::sync::Barrier::new(senders.len()));
    let mut tasks = Vec::new();
    for (mut c, d) in senders {
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            c.deposit(&d).await.map(|r| r.proof)
        }));
    }
    let mut batched = 0;
    for t in tasks {
        let proof = t.await.unwrap().expect("deposit");
        proof
            .verify_pinned(&cluster_key, Some(&verifying))
            .expect("a pinning holder takes the proof");
        let bytes = vmail_proto::grant::DepositProof::from_bytes(&proof.to_bytes()).unwrap();
        assert_eq!(bytes, proof, "the proof survives its encoding");
        batched += usize::from(proof.group_signature.unwrap().proof.is_some());
    }
    let after = rounds(&cluster.server(leader).service.metrics().encode());
    let (objects, rounds) = (after.0 - before.0, after.1 - before.1);
    eprintln!("16 deposits: {objects} objects in {rounds} rounds, {batched} proofs batched");
    assert_eq!(objects, 16.0);
    assert!(
        rounds < 16.0,
        "{rounds} rounds for 16 proofs asked for at once"
    );
    assert!(batched > 0);
    cluster.stop().await;
}

/// The signing rounds over the internal service (docs/THRESHOLD.md §2):
/// any server coordinates a group signature on what the log says (a user's
/// certificate, a storage grant) with one other; later rounds take one
/// trip on prepared commitments, and signers' restarts cost a fallback;
/// with one server down it still signs, with two down it cannot and names
/// the servers it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_sign_a_certificate_and_a_grant_over_the_internal_service_and_one_cannot() {
    use vmail_auth::service::{SignError, SignTarget};

    let mut cluster = TestCluster::start(3).await;
    let (_, group) = group_key(&cluster).await;
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&group).unwrap();
    let mut bob = cluster.client().await;
    bob.register("bob", &password("bob"), &identity(), None)
        .await
        .unwrap();
    let s = bob
        .login("bob", &password("bob"), &identity(), &[])
        .await
        .unwrap();
    let cert = s.certificate.clone();
    let mut alice = cluster.client().await;
    alice
        .register("alice", &password("alice"), &identity(), None)
        .await
        .unwrap();
    let d = granted(&mut bob, deposit_for(&["alice"], b"signed by two")).await;
    cluster.wait_applied().await;
    let grant = cluster
        .server(1)
        .service
        .store()
        .storage_grant(d.grant_serial)
        .unwrap()
        .expect("the grant is in the log");

    let cert_target = SignTarget::Certificate {
        username: "bob".into(),
        serial: cert.serial,
    };
    for i in 0..3 {
        let (sig, key) = cluster
            .server(i)
            .service
            .group_sign(&cert_target)
            .await
            .unwrap_or_else(|e| panic!("server {i} coordinates: {e}"));
        assert_eq!(key, group);
        verifying
            .verify_strict(&cert.signing_bytes(), &sig)
            .expect("the certificate's group signature verifies as peers check it");
    }
    let (sig, _) = cluster
        .server(1)
        .service
        .group_sign(&SignTarget::Grant {
            serial: d.grant_serial,
        })
        .await
        .unwrap();
    // The same bytes the cluster key signed at apply: the group co-signs.
    let cluster_key_id = vmail_proto::grant::key_id(&cluster.target().cluster_key);
    verifying
        .verify_strict(&grant.body.signing_bytes(&cluster_key_id), &sig)
        .unwrap();
    // What the log does not hold is signed by no one.
    let absent = cluster
        .server(0)
        .service
        .group_sign(&SignTarget::Certificate {
            username: "mallory".into(),
            serial: 1,
        })
        .await;
    assert!(matches!(absent, Err(SignError::Absent(_))), "{absent:?}");

    // Later rounds take one trip, on commitments the others prepared ahead
    // (preprocessing); a restart, which drops a signer's prepared nonces,
    // costs the next round a fallback to both rounds, not a failure.
    let signer = cluster.server(0).service.signer().clone();
    for _ in 0..100 {
        if signer.one_trip_rounds() > 0 {
            break;
        }
        cluster
            .server(0)
            .service
            .group_sign(&cert_target)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(signer.one_trip_rounds() > 0, "no round took one trip");
    for i in [1, 2] {
        cluster.kill(i).await;
        cluster.restart(i).await;
    }
    cluster.wait_applied().await;
    let (sig, _) = cluster
        .server(0)
        .service
        .group_sign(&cert_target)
        .await
        .expect("a round after the signers' restart falls back and signs");
    verifying
        .verify_strict(&cert.signing_bytes(), &sig)
        .unwrap();

    // One server down: the other two sign.
    cluster.kill(2).await;
    let (sig, _) = cluster
        .server(0)
        .service
        .group_sign(&cert_target)
        .await
        .unwrap();
    verifying
        .verify_strict(&cert.signing_bytes(), &sig)
        .unwrap();
    // Two down: no signature, and the error names what was missing.
    cluster.kill(1).await;
    let err = cluster
        .server(0)
        .service
        .group_sign(&cert_target)
        .await
        .unwrap_err();
    let SignError::TooFewSigners {
        got: 1,
        needed: 2,
        ref failures,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(failures.len(), 2, "{err}");
    println!("with two servers down: {err}");
    cluster.stop().await;
}

/// A stolen server (its data dir: key package and TLS identity) asks the
/// others for signature shares on what it made up: a certificate for the
/// thief's identity key in bob's name. Each honest signer rebuilds the
/// bytes from its own state and refuses; a refused round's nonces are
/// gone; a coordinator holds at most `MAX_OUTSTANDING` rounds at a signer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stolen_server_gets_no_share_on_bytes_the_log_does_not_hold() {
    use vmail_auth::service::{MAX_OUTSTANDING, PREPARE_BATCH, SignTarget};
    use vmail_auth::threshold::{self, SigningCommitments, Wire, sign};
    use vmail_proto::cert::CertificateBody;
    use vmail_proto::cluster_pb as cpb;

    let mut cluster = TestCluster::start(3).await;
    let (ceremony, _) = group_key(&cluster).await;
    let mut bob = cluster.client().await;
    bob.register("bob", &password("bob"), &identity(), None)
        .await
        .unwrap();
    let s = bob
        .login("bob", &password("bob"), &identity(), &[])
        .await
        .unwrap();
    cluster.wait_applied().await;

    // The thief: server 0's key package and TLS identity.
    let (key, public) = datadir::frost_keys::load_key_package(&cluster.data_dir(0), ceremony)
        .unwrap()
        .unwrap();
    let tls = cluster.member_tls(0);
    let url = cluster.server(1).member().raft_url;
    let mut honest = tls.client(&url).unwrap();
    let target = SignTarget::Certificate {
        username: "bob".into(),
        serial: s.certificate.serial,
    };
    let commit = |c: &mut cpb::cluster_client::ClusterClient<_>, target: &SignTarget| {
        let request = cpb::SignCommitRequest {
            ceremony,
            applied_index: 0,
            target: target.to_bytes(),
        };
        let mut c = c.clone();
        async move { c.sign_commit(request).await }
    };
    let round1 = commit(&mut honest, &target).await.unwrap().into_inner();

    // The forged certificate: bob's name and serial, the thief's key.
    let thief_key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let forged = CertificateBody {
        serial: s.certificate.serial,
        username: s.certificate.username.clone(),
        identity_key: thief_key.verifying_key(),
        peer_id: Vec::new(),
        not_before: s.certificate.not_before,
        not_after: s.certificate.not_after + 10 * 365 * 86_400,
    }
    .sign(&thief_key);
    let (_, mine) = sign::commit(&key, &mut rand::rngs::OsRng);
    let commitments = BTreeMap::from([
        (*key.identifier(), mine),
        (
            threshold::member_identifier(cluster.server(1).node_id()).unwrap(),
            SigningCommitments::from_wire(&round1.commitments).unwrap(),
        ),
    ]);
    let package = sign::signing_package(&public, commitments, &forged.signing_bytes()).unwrap();
    let share = |handle: Vec<u8>| {
        let request = cpb::SignShareRequest {
            handle,
            signing_package: package.to_wire().unwrap(),
            ..Default::default()
        };
        let mut c = honest.clone();
        async move { c.sign_share(request).await }
    };
    let refused = share(round1.handle.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("not what this server's state says"),
        "{refused:?}"
    );
    // The refused round's nonces are gone: no second try with them.
    let again = share(round1.handle).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::InvalidArgument, "{again:?}");
    // A certificate for a user the log does not hold: refused in round 1.
    let absent = commit(
        &mut honest,
        &SignTarget::Certificate {
            username: "mallory".into(),
            serial: 1,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(absent.code(), tonic::Code::FailedPrecondition, "{absent:?}");

    // Prepared rounds (preprocessing): the share request names its target,
    // and the signer rebuilds the real certificate's bytes, not the forged.
    let prepare = |count: u32| {
        let mut c = honest.clone();
        async move {
            c.sign_prepare(cpb::SignPrepareRequest { ceremony, count })
                .await
        }
    };
    for count in [0, PREPARE_BATCH + 1] {
        let bad = prepare(count).await.unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    }
    let prepared = prepare(2).await.unwrap().into_inner().rounds;
    assert_eq!(prepared.len(), 2);
    let package = |round: &cpb::SignCommitResponse| {
        let (_, mine) = sign::commit(&key, &mut rand::rngs::OsRng);
        let commitments = BTreeMap::from([
            (*key.identifier(), mine),
            (
                threshold::member_identifier(cluster.server(1).node_id()).unwrap(),
                SigningCommitments::from_wire(&round.commitments).unwrap(),
            ),
        ]);
        sign::signing_package(&public, commitments, &forged.signing_bytes())
            .unwrap()
            .to_wire()
            .unwrap()
    };
    let share_prepared = |round: &cpb::SignCommitResponse, target: Vec<u8>| {
        let request = cpb::SignShareRequest {
            handle: round.handle.clone(),
            signing_package: package(round),
            applied_index: 0,
            target,
        };
        let mut c = honest.clone();
        async move { c.sign_share(request).await }
    };
    let refused = share_prepared(&prepared[0], target.to_bytes())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let again = share_prepared(&prepared[0], target.to_bytes())
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::InvalidArgument, "{again:?}");
    // A prepared round's share request without its target: refused, spent.
    let bare = share_prepared(&prepared[1], Vec::new()).await.unwrap_err();
    assert_eq!(bare.code(), tonic::Code::InvalidArgument, "{bare:?}");
    assert!(bare.message().contains("name its target"), "{bare:?}");

    // Open rounds are bounded per coordinator, prepared ones included.
    let (mut busy, mut h) = (None, honest.clone());
    for _ in 0..=MAX_OUTSTANDING {
        if let Err(e) = commit(&mut h, &target).await {
            busy = Some(e);
            break;
        }
    }
    let busy = busy.expect("refused before the bound is passed");
    assert_eq!(busy.code(), tonic::Code::ResourceExhausted, "{busy:?}");
    let busy = prepare(1).await.unwrap_err();
    assert_eq!(busy.code(), tonic::Code::ResourceExhausted, "{busy:?}");
    // Another member still gets its rounds there, and signs.
    let (sig, group) = cluster.server(2).service.group_sign(&target).await.unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&group)
        .unwrap()
        .verify_strict(&s.certificate.signing_bytes(), &sig)
        .unwrap();
    cluster.stop().await;
}

/// The drill's certificate attempt (docs/SECURITY.md "A compromised auth
/// server"): a login on a group with a key gets a certificate that t
/// servers signed, and so does everyone who fetches it or gets voicemail
/// from its holder. A thief with one server's data dir mints a certificate
/// with the cluster key it holds, which a client that does not pin the
/// group key would still take; a client that pins it refuses it, bare or
/// with a real group signature copied from another certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_pinning_the_group_key_takes_only_certificates_t_servers_signed() {
    use vmail_node::auth_client::{AuthClient, Sender};
    use vmail_proto::cert::{CertError, CertificateBody};

    let mut cluster = TestCluster::start(3).await;
    let pinned = cluster.pinned_target().await;
    let group_key = pinned.group_key.unwrap();
    let mut bob = AuthClient::connect(&pinned).await.unwrap();
    let mut alice = AuthClient::connect(&pinned).await.unwrap();
    for (c, who) in [(&mut bob, "bob"), (&mut alice, "alice")] {
        c.register(who, &password(who), &identity(), None)
            .await
            .unwrap();
    }
    let bob_s = bob
        .login("bob", &password("bob"), &identity(), &[])
        .await
        .expect("a pinning client logs in: its certificate is group-signed");
    bob_s
        .certificate
        .verify_group_signature(&group_key)
        .unwrap();
    alice
        .login("alice", &password("alice"), &identity(), &[])
        .await
        .unwrap();
    // Others see the group signature: in the certificate they look up and
    // in the voicemail bob leaves them.
    let looked_up = alice.certificate("bob").await.unwrap();
    assert_eq!(looked_up.group_signature, bob_s.certificate.group_signature);
    let d = granted(&mut bob, deposit_for(&["alice"], b"from bob")).await;
    bob.deposit(&d).await.unwrap();
    let pending = alice.list_pending().await.unwrap();
    let Sender::Known(sender) = &pending[0].sender else {
        panic!("bob is shown: {:?}", pending[0].sender);
    };
    sender.verify_group_signature(&group_key).unwrap();

    // The thief mints a certificate for bob's name with its own key.
    let stolen = datadir::load_keys(&cluster.data_dir(0)).expect("the stolen keys load");
    let thief = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mut forged = CertificateBody {
        serial: bob_s.certificate.serial + 1,
        username: bob_s.certificate.username.clone(),
        identity_key: thief.verifying_key(),
        peer_id: Vec::new(),
        not_before: bob_s.certificate.not_before,
        not_after: bob_s.certificate.not_after,
    }
    .sign(&stolen.cluster_key);
    forged
        .verify(&pinned.cluster_key, vmail_proto::unix_now())
        .expect("the cluster key every member holds still mints what unpinned clients take");
    assert!(matches!(
        forged.verify_group_signature(&group_key),
        Err(CertError::NoGroupSignature(_))
    ));
    forged.group_signature = bob_s.certificate.group_signature;
    assert!(matches!(
        forged.verify_group_signature(&group_key),
        Err(CertError::GroupSignature(_))
    ));

    // A leader that proposes a group signature the group did not make:
    // every server checks it at apply and keeps the certificate as it was.
    let leader = cluster.leader().await;
    let bogus = ed25519_dalek::Signer::sign(&thief, &bob_s.certificate.signing_bytes());
    let applied = cluster
        .server(leader)
        .service
        .raft()
        .client_write(Command::CertifyGroup {
            username: "bob".into(),
            serial: bob_s.certificate.serial,
            signature: bogus.to_bytes().to_vec(),
        })
        .await
        .unwrap();
    assert!(
        matches!(applied.data, Reply::GroupCertified(Some(_))),
        "{:?}",
        applied.data
    );
    cluster.wait_applied().await;
    for i in 0..3 {
        let stored = cluster
            .server(i)
            .service
            .store()
            .user("bob")
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.certificate.group_signature, bob_s.certificate.group_signature,
            "server {i} kept bob's certificate as the group signed it"
        );
    }
    cluster.stop().await;
}

/// The share keys a grant hands a sender are the ones the log recorded
/// with it, and t servers sign them (docs/PROTOCOL.md §7.13). A server
/// that answers the grant request with share keys of its own, to collect
/// every share of the voicemail, gets its answer refused by a client that
/// pins the group key: the group's signature does not cover its keys, and
/// the stolen cluster key cannot make one. A pinning client's own grant
/// checks out, and its leave's deposit lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pinning_sender_takes_only_the_share_keys_the_group_recorded_with_its_grant() {
    use vmail_proto::grant::{GrantError, verify_roster};

    let mut cluster = TestCluster::start(3).await;
    let group_key = cluster.pinned_target().await.group_key.unwrap();
    let (mut bob, bob_s) = pinned_client(&cluster, &[0, 1, 2], group_key, "bob").await;
    let (mut alice, _) = pinned_client(&cluster, &[0, 1, 2], group_key, "alice").await;
    let d = granted(&mut bob, deposit_for(&["alice"], b"to pinned alice")).await;
    bob.deposit(&d)
        .await
        .expect("a pinning sender's deposit under a group-signed roster");
    assert_eq!(alice.list_pending().await.unwrap().len(), 1);

    let leader = cluster.leader().await;
    let mut raw = vmail_proto::pb::auth_client::AuthClient::new(cluster.channel(leader).await);
    let answer = vmail_tests::request_grant(&mut raw, &bob_s.token, &["alice"])
        .await
        .unwrap();
    let (serial, key_id) = (answer.grant.body.serial, answer.grant.key_id);
    let recorded = cluster
        .server(0)
        .service
        .store()
        .grant_roster(serial)
        .unwrap()
        .expect("the log recorded the grant's share keys");
    assert_eq!(answer.share_keys, recorded);
    verify_roster(
        &group_key,
        serial,
        &key_id,
        &recorded,
        &answer.roster_signature,
    )
    .expect("t servers signed the recorded share keys");

    // The thief's own share key in place of a server's, with the real
    // signature, or with none (the stolen cluster key cannot make one).
    let thief = share::BoxSecret::generate();
    let mut swapped = recorded.clone();
    swapped[1].public = thief.public();
    let refused = verify_roster(
        &group_key,
        serial,
        &key_id,
        &swapped,
        &answer.roster_signature,
    );
    assert!(
        matches!(refused, Err(GrantError::BadGroupSignature { .. })),
        "{refused:?}"
    );
    let unsigned = verify_roster(&group_key, serial, &key_id, &swapped, &[]);
    assert!(
        matches!(unsigned, Err(GrantError::NoGroupSignature { .. })),
        "{unsigned:?}"
    );
    // Nor does one grant's signature cover another grant's keys.
    let other = vmail_tests::request_grant(&mut raw, &bob_s.token, &["alice"])
        .await
        .unwrap();
    assert!(
        verify_roster(
            &group_key,
            other.grant.body.serial,
            &key_id,
            &other.share_keys,
            &answer.roster_signature
        )
        .is_err()
    );
    cluster.stop().await;
}

/// The stolen cluster key against holders that pin the group key, on a
/// real swarm. A leave between pinning clients works: its grant and deposit
/// proof carry the group's signature, and so does the last ack's delete
/// order, which removes every shard. What the thief signs with the stolen
/// cluster key alone (a grant for its own shard, a deposit proof, a delete
/// order for the real voicemail) every holder refuses, and none of it
/// changes what they hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holders_pinning_the_group_key_refuse_what_the_stolen_cluster_key_alone_signs() {
    use sha2::Digest;
    use vmail_devnet::localnet;
    use vmail_node::core::erasure::Redundancy;
    use vmail_node::overlay::transfer::BlobClient;
    use vmail_node::peer::no_progress;
    use vmail_proto::grant::{DeleteOrder, DeleteReason, DepositProof, GrantBody, GrantedShard};
    use vmail_tests::{leave_request, login_peer, one_copy_meta, random_content, refused_because};

    let mut cluster = TestCluster::start(3).await;
    let pinned = cluster.pinned_target().await;
    let group_key = pinned.group_key.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let peers = localnet::start_peers(dir.path(), 5, Vec::new(), &pinned.cluster_key, |c| {
        c.group_key = Some(hex::encode(group_key.as_bytes()));
    })
    .await
    .expect("peers join");
    login_peer(&pinned, &peers[0], "bob").await;
    login_peer(&pinned, &peers[1], "alice").await;
    let content = random_content(40_000);
    let receipt = peers[0]
        .leave(leave_request(&["alice"], content.clone(), 2), no_progress())
        .await
        .expect("a leave through holders that pin the group key");
    let held = |id: &[u8; 32]| {
        peers
            .iter()
            .filter(|p| p.store().unwrap().get(id).is_some())
            .count()
    };
    let shards: Vec<_> = receipt.shards.iter().map(|s| (s.holder, s.id)).collect();
    assert!(shards.iter().all(|(_, id)| held(id) >= 1));

    cluster.wait_applied().await;
    let store = cluster.server(0).service.store();
    let serial = store
        .voicemail_grant(&receipt.voicemail_id)
        .unwrap()
        .expect("the voicemail's grant");
    let expires_at = store
        .storage_grant(serial)
        .unwrap()
        .unwrap()
        .body
        .expires_at;
    let stolen = datadir::load_keys(&cluster.data_dir(0)).expect("the stolen keys load");
    let (holder, _) = shards[0];
    let thief = peers
        .iter()
        .find(|p| p.peer_id() != holder)
        .map(|p| BlobClient::new(p.network()))
        .unwrap();

    // A delete order for the real voicemail, and a deposit proof for its
    // grant, each signed by the stolen cluster key alone.
    let order = DeleteOrder::sign(
        serial,
        DeleteReason::Delivered,
        expires_at,
        &stolen.cluster_key,
    );
    refused_because(
        thief.erase(holder, order.to_bytes()).await,
        "no group signature",
    );
    let proof = DepositProof::sign(serial, &stolen.cluster_key);
    refused_because(
        thief.prove(holder, proof.to_bytes()).await,
        "no group signature",
    );
    // A grant for the thief's own shard on that holder.
    let data = random_content(10_000);
    let now = vmail_proto::unix_now();
    let forged = GrantBody {
        serial: serial + 1_000,
        message_id: vmail_proto::random_bytes(),
        data_shards: 1,
        shards: vec![GrantedShard {
            len: data.len() as u64,
            sha256: sha2::Sha256::digest(&data).into(),
        }],
        holders: vec![holder.to_bytes()],
        upload_until: now + 600,
        expires_at: now + 3600,
    }
    .sign(&stolen.cluster_key);
    let id = vmail_proto::random_bytes();
    refused_because(
        thief
            .store(
                holder,
                id,
                one_copy_meta(&data, id, Redundancy::Replicas(1), forged.to_bytes()),
                &data,
                &|_| {},
            )
            .await,
        "no group signature",
    );
    assert_eq!(held(&id), 0);
    assert!(
        shards.iter().all(|(_, id)| held(id) >= 1),
        "the forged order deleted nothing"
    );

    // Alice fetches and acks: the group-signed order deletes every shard.
    let got = peers[1]
        .fetch(receipt.voicemail_id, no_progress())
        .await
        .expect("alice fetches");
    assert_eq!(got.content, content);
    let acked = peers[1].ack(receipt.voicemail_id).await.expect("ack");
    assert!(acked.key_erased);
    assert!(acked.shards_deleted >= 1, "{acked:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while shards.iter().any(|(_, id)| held(id) > 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "a holder kept a shard 30 s after the group-signed order"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for p in peers {
        p.stop().await;
    }
    cluster.stop().await;
}

/// Resharing on membership change (docs/THRESHOLD.md §4), on a real group.
///
/// A fourth server joins: two share holders repair it a share of the same
/// key through the log, so it signs with any founding server, and a
/// pinning client that reaches only it logs in with a group-signed
/// certificate. Then a founding server is removed: the three that remain
/// refresh the key through the log. The group key, which clients and peers
/// pin, never changes; the remaining servers' shares do, and their old
/// ones are erased; and the removed server's share, which together with
/// one other old share still signs (so the check is not vacuous), signs
/// nothing with the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_server_gets_a_share_and_a_removed_ones_combines_with_nothing_after_a_refresh() {
    let mut cluster = TestCluster::start(3).await;
    let (first, group_key) = group_key(&cluster).await;
    let pinned = ed25519_dalek::VerifyingKey::from_bytes(&group_key).unwrap();
    let old: Vec<_> = (0..3).map(|i| key_package(&cluster, i, first)).collect();

    // A server the CA key let in neither votes nor gets a share until two
    // share holders approved it: not by its own word, not by one holder.
    let joined = cluster.add().await;
    let learner = |cluster: &TestCluster| {
        let m = cluster.server(0).service.raft().metrics().borrow().clone();
        let id = cluster.server(joined).node_id();
        let membership = m.membership_config.membership();
        membership.get_node(&id).is_some() && !membership.voter_ids().any(|v| v == id)
    };
    assert!(learner(&cluster), "a learner until approved");
    // (Asked at the learner itself, once it has applied its own joining:
    // it lists a membership as soon as it holds the entry.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let err = loop {
        let err = cluster.approve(joined, joined).await.unwrap_err();
        let early = err.contains("not a member") || err.contains("no member key recorded yet");
        if !early || std::time::Instant::now() > deadline {
            break err;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(err.contains("its own join"), "{err}");
    let one = cluster.approve(0, joined).await.unwrap();
    assert_eq!(one, [cluster.server(0).node_id()]);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(learner(&cluster), "one approval gives no vote");
    for i in 0..4 {
        let store = cluster.server(i).service.store();
        assert_eq!(
            store.current_ceremony().unwrap().map(|(n, _)| n),
            Some(first),
            "no repair begins with one approval"
        );
    }
    assert!(!datadir::frost_keys::frost_key_file(&cluster.data_dir(joined), first + 1).exists());
    cluster.approve(1, joined).await.unwrap();
    cluster.wait_voters(4).await;
    let repaired = next_key(&cluster, first).await;
    assert_eq!(
        repaired.group_key, group_key,
        "a repair keeps the group key"
    );
    assert_eq!(repaired.roster.len(), 4);
    assert_eq!(repaired.threshold, 2);
    let newcomer = key_package(&cluster, joined, repaired.number);
    let founder = key_package(&cluster, 0, repaired.number);
    assert_eq!(
        founder.0.signing_share(),
        old[0].0.signing_share(),
        "a repair changes no other member's share"
    );
    let message = b"vmail resharing drill";
    assert!(
        try_sign(&[&newcomer, &founder], message, &group_key),
        "the repaired share signs with a founding one"
    );
    let (_, session) = pinned_client(&cluster, &[joined], pinned, "carol").await;
    session.certificate.verify_group_signature(&pinned).unwrap();

    let leader = cluster.leader().await;
    let gone = (0..3).find(|i| *i != leader).unwrap();
    let stay: Vec<usize> = (0..4).filter(|i| *i != gone).collect();
    cluster.remove(gone).await;
    cluster.wait_voters(3).await;
    cluster.kill(gone).await;
    let refreshed = next_key(&cluster, repaired.number).await;
    assert_eq!(
        refreshed.group_key, group_key,
        "a refresh keeps the group key"
    );
    let mut roster: Vec<u64> = stay.iter().map(|i| cluster.server(*i).node_id()).collect();
    roster.sort_unstable();
    assert_eq!(refreshed.roster, roster);
    assert_eq!(refreshed.threshold, 2);
    let new: Vec<_> = stay
        .iter()
        .map(|i| {
            let dir = cluster.data_dir(*i);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while datadir::frost_keys::frost_key_file(&dir, repaired.number).exists()
                || datadir::frost_keys::frost_key_file(&dir, first).exists()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "server {i} kept a key package the refresh replaced"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            key_package(&cluster, *i, refreshed.number)
        })
        .collect();

    assert!(
        try_sign(&[&new[0], &new[2]], message, &group_key),
        "the refreshed shares sign under the same group key"
    );
    assert!(
        try_sign(&[&newcomer, &old[gone]], message, &group_key),
        "before the refresh, the removed share and one other signed"
    );
    for kept in &new {
        for public in [&kept.1, &old[gone].1] {
            let removed = (old[gone].0.clone(), public.clone());
            let kept = (kept.0.clone(), public.clone());
            assert!(
                !try_sign(&[&removed, &kept], message, &group_key),
                "the removed share combines with a refreshed one"
            );
        }
    }
    let (_, session) = pinned_client(&cluster, &stay, pinned, "dave").await;
    session.certificate.verify_group_signature(&pinned).unwrap();
    cluster.stop().await;
}

/// Server `i`'s key package of `ceremony`, which it must hold.
fn key_package(
    cluster: &TestCluster,
    i: usize,
    ceremony: u64,
) -> (
    vmail_auth::threshold::KeyPackage,
    vmail_auth::threshold::PublicKeyPackage,
) {
    datadir::frost_keys::load_key_package(&cluster.data_dir(i), ceremony)
        .unwrap()
        .unwrap_or_else(|| panic!("server {i} holds no key package of ceremony {ceremony}"))
}

/// Waits until every running server applied the same key ceremony after
/// `after` (a reshare of the key, or with 0 its generation), and returns it.
async fn next_key(cluster: &TestCluster, after: u64) -> vmail_auth::store::KeyCeremony {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let keys: Vec<_> = cluster
            .running()
            .into_iter()
            .map(|i| cluster.server(i).service.store().key_ceremony().unwrap())
            .collect();
        if let Some(k) = keys[0].clone().filter(|k| k.number > after)
            && keys.iter().all(|o| o.as_ref() == Some(&k))
        {
            return k;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group did not reshare its key within a minute: {keys:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Registers `user` and logs in with a client that pins `group_key` and
/// reaches only the servers `which`; the client and its session.
async fn pinned_client(
    cluster: &TestCluster,
    which: &[usize],
    group_key: ed25519_dalek::VerifyingKey,
    user: &str,
) -> (
    vmail_node::auth_client::AuthClient,
    vmail_node::auth_client::LoginSession,
) {
    let mut target = cluster.target_of(which);
    target.group_key = Some(group_key);
    let mut c = vmail_node::auth_client::AuthClient::connect(&target)
        .await
        .unwrap();
    c.register(user, &password(user), &identity(), None)
        .await
        .unwrap();
    let session = c
        .login(user, &password(user), &identity(), &[])
        .await
        .unwrap_or_else(|e| panic!("a pinning client logs in on servers {which:?}: {e}"));
    (c, session)
}

/// Whether the key packages in `signers`, each with the public key package
/// it is used with, make a signature on `message` that verifies under
/// `group_key`; false at the first step that fails.
fn try_sign(
    signers: &[&(
        vmail_auth::threshold::KeyPackage,
        vmail_auth::threshold::PublicKeyPackage,
    )],
    message: &[u8],
    group_key: &[u8; 32],
) -> bool {
    use vmail_auth::threshold::sign;

    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for (key, _) in signers {
        let (n, c) = sign::commit(key, &mut rand::rngs::OsRng);
        nonces.insert(*key.identifier(), n);
        commitments.insert(*key.identifier(), c);
    }
    let public = &signers[0].1;
    let Ok(package) = sign::signing_package(public, commitments, message) else {
        return false;
    };
    let mut shares = BTreeMap::new();
    for (key, _) in signers {
        let n = nonces.remove(key.identifier()).unwrap();
        let Ok(share) = sign::sign_share(&package, n, key) else {
            return false;
        };
        shares.insert(*key.identifier(), share);
    }
    sign::aggregate(&package, &shares, public).is_ok_and(|s| {
        ed25519_dalek::VerifyingKey::from_bytes(group_key)
            .unwrap()
            .verify_strict(message, &s)
            .is_ok()
    })
}
