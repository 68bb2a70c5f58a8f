//! What threshold-shared session keys cost (issue 22), against the
//! single-key wraps they replaced, in the same run:
//!
//! 1. The key's crypto per voicemail, on one core: the sender's split and
//!    seals, one server's open and reseal, and the recipient's opens and
//!    recombination, for groups of 3 and 5 servers. The reference is what
//!    the same party did before: the sender's AES-GCM deposit wrap, the
//!    server's unwrap and delivery re-wrap, the recipient's unwrap.
//! 2. Logins, and 1 MiB leaves and fetches through the real path, on two
//!    3-server groups with 8 peers each, trips alternating: one where the
//!    cluster key alone signs (`group_signing = false`, the single-key
//!    design) and one where 2 of the 3 servers also co-sign every
//!    certificate, grant, deposit proof and delete order, which pinning
//!    clients and holders check. The share collection a fetch does
//!    (OpenShare on every server, recombination) is timed on its own: the
//!    ratio fetch p50 / (fetch p50 − collection p50) bounds what the
//!    shares add, since a fetch collects them while the shards download.
//!
//! 3. Group signatures (docs/THRESHOLD.md): a FROST t-of-n signature made
//!    by every party in one process (t commitments, the signing package, t
//!    signature shares, aggregation with its `verify_strict`), against one
//!    Ed25519 signature by a single key; and the peers' check of either,
//!    which is the same `verify_strict`.
//! 4. Group signatures over the network: on a 3-server group on loopback,
//!    one server coordinates the two rounds over the internal mTLS service
//!    with one other (each rebuilding the certificate from its own state),
//!    one at a time (latency) and 16 at once (signatures/s), against one
//!    Ed25519 signature by a single key.
//!
//! `cargo bench -p vmail-tests --bench threshold`

use std::hint::black_box;
use std::time::{Duration, Instant};

use vmail_devnet::localnet;
use vmail_node::auth_client::{AuthClient, LoginSession};
use vmail_node::peer::{Peer, no_progress};
use vmail_proto::keys::SecretKey;
use vmail_proto::names::{Recipients, Username};
use vmail_proto::share::{self, BoxSecret, ResealBinding, ShareBinding, ShareKey};
use vmail_tests::{TestCluster, identity, leave_request, login_peer, password, random_content};

/// Rounds of each crypto measurement.
const ROUNDS: u32 = 2000;
/// Peers of the end-to-end run.
const PEERS: usize = 8;
/// Leaves and fetches of the end-to-end run.
const TRIPS: usize = 20;

fn per_op(rounds: u32, mut f: impl FnMut()) -> Duration {
    // Warm up, then time.
    for _ in 0..rounds / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..rounds {
        f();
    }
    start.elapsed() / rounds
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn crypto() {
    let recipients = Recipients::parse(["alice", "carol"]).unwrap();
    let alice = Username::parse("alice").unwrap();
    // The single-key design: the session key sealed (AES-256-GCM) under a
    // key derived from the sender's master key with an AAD naming the
    // request, unsealed and sealed again under the recipient's for
    // delivery, and unsealed by the recipient.
    let sender_wrap = SecretKey::from_bytes([7; 32]);
    let recipient_wrap = SecretKey::from_bytes([8; 32]);
    let key = SecretKey::random();
    let locator = vec![9u8; 600];
    let aad = [b"vmail/v1/deposit-wrap".as_slice(), &[1; 16], &locator].concat();
    let wrapped = sender_wrap.wrap(&key, &aad);
    let delivered = recipient_wrap.wrap(&key, &aad);
    let old_sender = per_op(ROUNDS, || {
        black_box(sender_wrap.wrap(&key, &aad));
    });
    let old_server = per_op(ROUNDS, || {
        let k = sender_wrap.unwrap_key(&wrapped, &aad).unwrap();
        black_box(recipient_wrap.wrap(&k, &aad));
    });
    let old_recipient = per_op(ROUNDS, || {
        black_box(recipient_wrap.unwrap_key(&delivered, &aad).unwrap());
    });
    println!("one core, {ROUNDS} rounds each; the reference is the single-key wrap it replaced\n");
    println!("| servers | party | single key µs | shares µs | **shares / single key** |");
    println!("|---:|---|---:|---:|---:|");
    for n in [3usize, 5] {
        let secrets: Vec<BoxSecret> = (0..n).map(|_| BoxSecret::generate()).collect();
        let keys: Vec<ShareKey> = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| ShareKey {
                node_id: i as u64 + 1,
                epoch: 1,
                public: s.public(),
            })
            .collect();
        let (t, check, sealed) = share::split(&key, &keys, 11, &recipients, &locator).unwrap();
        let binding = ShareBinding {
            grant_serial: 11,
            recipients: &recipients,
            threshold: t,
            key_check: &check,
        };
        let inbox = BoxSecret::generate();
        let inbox_public = inbox.public();
        let reseal_for = |i: usize| ResealBinding {
            voicemail_id: &[2; 16],
            recipient: &alice,
            node_id: keys[i].node_id,
            index: sealed[i].index,
        };
        let resealed: Vec<_> = (0..n)
            .map(|i| {
                let v = share::open_share(&secrets[i], &sealed[i], &binding).unwrap();
                share::reseal(&v, &inbox_public, &reseal_for(i)).unwrap()
            })
            .collect();
        let sender = per_op(ROUNDS / 4, || {
            black_box(share::split(&key, &keys, 11, &recipients, &locator).unwrap());
        });
        let server = per_op(ROUNDS / 4, || {
            let v = share::open_share(&secrets[0], &sealed[0], &binding).unwrap();
            black_box(share::reseal(&v, &inbox_public, &reseal_for(0)).unwrap());
        });
        let recipient = per_op(ROUNDS / 4, || {
            let values: Vec<_> = (0..usize::from(t))
                .map(|i| share::open_resealed(&inbox, &resealed[i], &reseal_for(i)).unwrap())
                .collect();
            black_box(share::combine(&values, t, &check, &locator).unwrap());
        });
        for (party, old, new) in [
            ("sender: split and seal", old_sender, sender),
            ("one server: open and reseal", old_server, server),
            ("recipient: open t and recombine", old_recipient, recipient),
        ] {
            println!(
                "| {n} ({t}-of-{n}) | {party} | {:.1} | {:.1} | **{:.1}** |",
                us(old),
                us(new),
                new.as_secs_f64() / old.as_secs_f64()
            );
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One 3-server group with its peers: bob logged in on peer 0, alice on
/// peer 1, and a client of alice's own to time logins and the share
/// collection alone.
struct Side {
    cluster: TestCluster,
    peers: Vec<Peer>,
    alice: AuthClient,
    alice_s: LoginSession,
    _dir: tempfile::TempDir,
}

/// Latencies of one side, each sorted at the end.
#[derive(Default)]
struct Trips {
    logins: Vec<Duration>,
    leaves: Vec<Duration>,
    fetches: Vec<Duration>,
    recovers: Vec<Duration>,
}

impl Side {
    /// A group whose servers co-sign (`group_signing`), with clients and
    /// holders that pin the group key; or one where the cluster key alone
    /// signs, as before the group key.
    async fn start(group_signing: bool) -> Self {
        let cluster = TestCluster::start_with(3, |c| c.group_signing = group_signing).await;
        // Both groups wait for their key, so they differ only in signing.
        let pinned = cluster.pinned_target().await;
        let target = if group_signing {
            pinned
        } else {
            cluster.target()
        };
        let dir = tempfile::tempdir().unwrap();
        let group_key = target.group_key.map(|k| hex::encode(k.as_bytes()));
        let peers =
            localnet::start_peers(dir.path(), PEERS, Vec::new(), &target.cluster_key, |c| {
                c.group_key = group_key.clone();
            })
            .await
            .unwrap();
        login_peer(&target, &peers[0], "bob").await;
        login_peer(&target, &peers[1], "alice").await;
        let mut alice = AuthClient::connect(&target).await.unwrap();
        let alice_s = alice
            .login("alice", &password("alice"), &identity(), &[])
            .await
            .unwrap();
        Self {
            cluster,
            peers,
            alice,
            alice_s,
            _dir: dir,
        }
    }

    /// One login, then one leave, share collection, fetch and ack of
    /// `content`.
    async fn trip(&mut self, content: &[u8], out: &mut Trips) {
        let t = Instant::now();
        self.alice
            .login("alice", &password("alice"), &identity(), &[])
            .await
            .unwrap();
        out.logins.push(t.elapsed());
        let t = Instant::now();
        let r = self.peers[0]
            .leave(
                leave_request(&["alice"], content.to_vec(), 3),
                no_progress(),
            )
            .await
            .unwrap();
        out.leaves.push(t.elapsed());
        let pending = self.alice.list_pending().await.unwrap();
        let p = pending.iter().find(|p| p.id == r.voicemail_id).unwrap();
        let t = Instant::now();
        self.alice
            .recover_session_key(&self.alice_s, p)
            .await
            .unwrap();
        out.recovers.push(t.elapsed());
        let t = Instant::now();
        let got = self.peers[1]
            .fetch(r.voicemail_id, no_progress())
            .await
            .unwrap();
        out.fetches.push(t.elapsed());
        assert_eq!(got.content, content);
        let acked = self.peers[1].ack(r.voicemail_id).await.unwrap();
        assert!(acked.shards_deleted >= 1, "the delete order was taken");
    }

    async fn stop(mut self) {
        for p in self.peers {
            p.stop().await;
        }
        self.cluster.stop().await;
    }
}

/// Part 2 of the module doc.
async fn end_to_end() {
    let mut single = Side::start(false).await;
    let mut group = Side::start(true).await;
    let content = random_content(1 << 20);
    let (mut a, mut b) = (Trips::default(), Trips::default());
    // Alternate, so both sides see the same machine; the first trip of
    // each warms connections and is dropped.
    single.trip(&content, &mut Trips::default()).await;
    group.trip(&content, &mut Trips::default()).await;
    for _ in 0..TRIPS {
        single.trip(&content, &mut a).await;
        group.trip(&content, &mut b).await;
    }
    for t in [&mut a, &mut b] {
        for v in [
            &mut t.logins,
            &mut t.leaves,
            &mut t.fetches,
            &mut t.recovers,
        ] {
            v.sort();
        }
    }
    println!(
        "\ntwo 3-server groups (2-of-3 shares), {PEERS} peers each on loopback, 1 MiB as 3 copies, {TRIPS} trips alternating; \
         the reference signs with the cluster key alone (group_signing = false), the other also has 2 of 3 servers co-sign \
         every certificate, grant, deposit proof and delete order, checked by pinning clients and holders\n"
    );
    println!(
        "| measure | cluster key alone p50 / p95 ms | group co-signed p50 / p95 ms | **p50 ratio** |"
    );
    println!("|---|---:|---:|---:|");
    for (what, x, y) in [
        ("login (OPAQUE, argon2, certificate)", &a.logins, &b.logins),
        (
            "leave (grant, upload, deposit, proof)",
            &a.leaves,
            &b.leaves,
        ),
        ("fetch (incl. share collection)", &a.fetches, &b.fetches),
        (
            "share collection alone (OpenShare on 3 servers)",
            &a.recovers,
            &b.recovers,
        ),
    ] {
        println!(
            "| {what} | {:.1} / {:.1} | {:.1} / {:.1} | **{:.2}** |",
            ms(pct(x, 0.5)),
            ms(pct(x, 0.95)),
            ms(pct(y, 0.5)),
            ms(pct(y, 0.95)),
            pct(y, 0.5).as_secs_f64() / pct(x, 0.5).as_secs_f64()
        );
    }
    let (fetch, recover) = (pct(&b.fetches, 0.5), pct(&b.recovers, 0.5));
    println!(
        "\n**fetch p50 / (fetch p50 − share collection p50), co-signed group: {:.2}** (an upper bound of what the shares add: the fetch collects them while the shards download)",
        fetch.as_secs_f64() / (fetch.saturating_sub(recover)).as_secs_f64()
    );
    single.stop().await;
    group.stop().await;
}

/// Key packages of a fresh DKG among `n` members, made in one process.
fn dkg_packages(
    n: u64,
) -> Vec<(
    vmail_auth::threshold::KeyPackage,
    vmail_auth::threshold::PublicKeyPackage,
)> {
    use std::collections::BTreeMap;
    use vmail_auth::threshold::{Roster, dkg};
    let ids: Vec<u64> = (1..=n).collect();
    let roster = Roster::new(&ids).unwrap();
    let mut rng = rand::rngs::OsRng;
    let starts: Vec<_> = ids
        .iter()
        .map(|&m| dkg::start(&roster, m, &mut rng).unwrap())
        .collect();
    let round1: BTreeMap<_, _> = starts
        .iter()
        .map(|(s, p)| (s.identifier(), p.clone()))
        .collect();
    let mut states = Vec::new();
    let mut sent = BTreeMap::new();
    for (s, _) in starts {
        let id = s.identifier();
        let (state, out) = s.receive(&round1).unwrap();
        states.push((id, state));
        sent.insert(id, out);
    }
    states
        .into_iter()
        .map(|(me, state)| {
            let incoming: BTreeMap<_, _> = sent
                .iter()
                .filter(|(from, _)| **from != me)
                .map(|(from, out)| (*from, out[&me].clone()))
                .collect();
            state.finish(&incoming).unwrap()
        })
        .collect()
}

/// Part 3 of the module doc.
fn signing() {
    use ed25519_dalek::Signer;
    use std::collections::BTreeMap;
    use vmail_auth::threshold::sign;

    let message = [0x5au8; 200];
    let single = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let single_sig = single.sign(&message);
    let sign_single = per_op(ROUNDS, || {
        black_box(single.sign(black_box(&message)));
    });
    let verify_single = per_op(ROUNDS, || {
        single
            .verifying_key()
            .verify_strict(black_box(&message), &single_sig)
            .unwrap();
    });
    println!(
        "\ngroup signatures, one core, {ROUNDS} rounds each; the reference is one Ed25519 key\n"
    );
    println!(
        "| group | single sign µs | threshold sign µs (all t parties) | **threshold / single** | signatures/s single | signatures/s threshold | peer verify µs single | peer verify µs threshold |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for n in [3u64, 5] {
        let packages = dkg_packages(n);
        let public = packages[0].1.clone();
        let t = usize::from(*packages[0].0.min_signers());
        let signers = &packages[..t];
        let mut rng = rand::rngs::OsRng;
        let mut make = || {
            let mut nonces = BTreeMap::new();
            let mut commitments = BTreeMap::new();
            for (key, _) in signers {
                let (nn, c) = sign::commit(key, &mut rng);
                nonces.insert(*key.identifier(), nn);
                commitments.insert(*key.identifier(), c);
            }
            let package = sign::signing_package(&public, commitments, &message).unwrap();
            let shares: BTreeMap<_, _> = signers
                .iter()
                .map(|(key, _)| {
                    let nn = nonces.remove(key.identifier()).unwrap();
                    (
                        *key.identifier(),
                        sign::sign_share(&package, nn, key).unwrap(),
                    )
                })
                .collect();
            sign::aggregate(&package, &shares, &public).unwrap()
        };
        let group_sig = make();
        let group_key = ed25519_dalek::VerifyingKey::from_bytes(
            &vmail_auth::threshold::group_key_bytes(&public).unwrap(),
        )
        .unwrap();
        let rounds = ROUNDS / 4;
        let sign_threshold = per_op(rounds, || {
            black_box(make());
        });
        let verify_threshold = per_op(ROUNDS, || {
            group_key
                .verify_strict(black_box(&message), &group_sig)
                .unwrap();
        });
        println!(
            "| {t}-of-{n} | {:.1} | {:.1} | **{:.1}** | {:.0} | {:.0} | {:.1} | {:.1} |",
            us(sign_single),
            us(sign_threshold),
            sign_threshold.as_secs_f64() / sign_single.as_secs_f64(),
            1.0 / sign_single.as_secs_f64(),
            1.0 / sign_threshold.as_secs_f64(),
            us(verify_single),
            us(verify_threshold),
        );
    }
}

/// Signatures per second from `tasks` concurrent coordinations of `each`
/// signatures on server 0, and the per-signature latencies.
async fn sign_over_network(
    cluster: &TestCluster,
    target: &vmail_auth::service::SignTarget,
    tasks: usize,
    each: usize,
) -> (f64, Vec<Duration>) {
    let svc = cluster.server(0).service.clone();
    let start = Instant::now();
    let runs = (0..tasks).map(|_| {
        let svc = svc.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let mut took = Vec::with_capacity(each);
            for _ in 0..each {
                let t = Instant::now();
                svc.group_sign(&target).await.unwrap();
                took.push(t.elapsed());
            }
            took
        })
    });
    let mut all = Vec::new();
    for r in futures::future::join_all(runs).await {
        all.extend(r.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

async fn network_signing() {
    use vmail_auth::service::SignTarget;

    let mut cluster = TestCluster::start(3).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (0..3).any(|i| {
        cluster
            .server(i)
            .service
            .store()
            .group_key()
            .unwrap()
            .is_none()
    }) {
        assert!(Instant::now() < deadline, "no group key within two minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = identity();
    let mut bob = cluster.client().await;
    bob.register("bob", &password("bob"), &id, None)
        .await
        .unwrap();
    let serial = bob
        .login("bob", &password("bob"), &id, &[])
        .await
        .unwrap()
        .certificate
        .serial;
    cluster.wait_applied().await;
    let target = SignTarget::Certificate {
        username: "bob".into(),
        serial,
    };
    let cert = cluster
        .server(0)
        .service
        .store()
        .user("bob")
        .unwrap()
        .unwrap()
        .certificate;
    let single_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let bytes = cert.signing_bytes();
    let single = per_op(ROUNDS, || {
        black_box(ed25519_dalek::Signer::sign(&single_key, black_box(&bytes)));
    });
    // Warm the connections, then measure.
    sign_over_network(&cluster, &target, 1, 10).await;
    let (_, one) = sign_over_network(&cluster, &target, 1, 200).await;
    let (rate16, sixteen) = sign_over_network(&cluster, &target, 16, 25).await;
    let sign = pct(&one, 0.5);
    println!(
        "\nGroup signatures over the network: 3-server group (2-of-3) on loopback, mTLS, coordinated by one server\n"
    );
    println!("| measure | p50 ms | p95 ms | signatures/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| single Ed25519 key, in process | {:.4} | | {:.0} |",
        ms(single),
        1.0 / single.as_secs_f64()
    );
    println!(
        "| group signature, one at a time | {:.2} | {:.2} | {:.0} |",
        ms(sign),
        ms(pct(&one, 0.95)),
        1.0 / sign.as_secs_f64()
    );
    println!(
        "| group signature, 16 at once | {:.2} | {:.2} | {:.0} |",
        ms(pct(&sixteen, 0.5)),
        ms(pct(&sixteen, 0.95)),
        rate16
    );
    println!(
        "\n**group / single signature time: {:.0}×; signatures/s single / group (16 at once): {:.0}×**",
        sign.as_secs_f64() / single.as_secs_f64(),
        (1.0 / single.as_secs_f64()) / rate16,
    );
    cluster.stop().await;
}

fn main() {
    crypto();
    signing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(network_signing());
    rt.block_on(end_to_end());
}
