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
//! and no data dir holds another server's signing share. Certificates,
//! grants and delete orders are still signed by the cluster key every
//! member holds (docs/THRESHOLD.md); this drill gains those attempts when
//! they move to the group key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{EntryPayload, RaftLogReader};
use vmail_auth::cluster::Command;
use vmail_auth::cluster::log_store::LogStore;
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
    let mut log = LogStore::new(Arc::new(store), Arc::new(AuthMetrics::new()));
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (ceremony, group_key) = loop {
        let keys: Vec<_> = (0..3)
            .map(|i| cluster.server(i).service.store().group_key().unwrap())
            .collect();
        if let Some(first) = keys[0]
            && keys.iter().all(|k| *k == Some(first))
        {
            break first;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no group key on every server within a minute: {keys:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
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
