//! What storage grants and delete orders cost, measured on real servers:
//!
//! 1. Leave latency on a 20-peer loopback overlay with a real auth server,
//!    1 MiB and 16 MiB as RS(4,8), and the part of it that grants add
//!    (asking for the grant, handing the holders the deposit proof). The
//!    ratio is the leave's p50 against the same leaves without those steps
//!    (p50 of leave minus grant steps), measured in the same run.
//! 2. Bytes of grant per shard, as the holders store them.
//! 3. Deletion: from the last recipient's ack until no holder holds a shard
//!    (the ack returns once the holders answered the delete order), p50
//!    and p95, each run checked.
//! 4. Grants signed per second on a 3-server group, against deposits per
//!    second on the same group in the same run, at 16 concurrent clients.
//!
//! `cargo bench -p vmail-tests --bench grants`

use std::time::{Duration, Instant};

use vmail_node::auth_client::{AuthClient, GrantRequest, NewDeposit, VoicemailMeta};
use vmail_node::core::erasure::Redundancy;
use vmail_node::core::locator::ObjectId;
use vmail_node::peer::{LeaveRequest, no_progress};
use vmail_proto::grant::GrantedShard;
use vmail_proto::keys::SecretKey;
use vmail_proto::names::Recipients;
use vmail_tests::{TestCluster, TestNet, identity, leave_request, password, random_content};

const PEERS: usize = 20;
/// (size, rounds)
const RUNS: [(usize, usize); 2] = [(1 << 20, 20), (16 << 20, 8)];
/// Clients and writes per client for the group's rates.
const CLIENTS: usize = 16;
const WRITES_PER_CLIENT: usize = 40;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn overlay() {
    let net = TestNet::start(PEERS).await;
    net.login(0, "bob").await;
    net.login(1, "alice").await;
    net.login(2, "carol").await;
    println!("{PEERS} peers on loopback, real auth server over TLS, RS(4,8), to alice and carol\n");
    println!(
        "| size | leave p50 ms | leave p95 ms | grant steps p50 ms | leave / leave without grant steps | last ack to no shard held p50 ms | p95 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut grant_bytes = Vec::new();
    for (size, rounds) in RUNS {
        let content = random_content(size);
        let (mut leaves, mut grants, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let req = LeaveRequest {
                redundancy: Some(Redundancy::DEFAULT),
                ..leave_request(&["alice", "carol"], content.clone(), 1)
            };
            let t = Instant::now();
            let r = net.peers[0].leave(req, no_progress()).await.expect("leave");
            leaves.push(t.elapsed());
            grants.push(r.timings.grant);
            let ids: Vec<ObjectId> = r.shards.iter().map(|s| s.id).collect();
            let held = net.peer(r.shards[0].holder).store().unwrap();
            let grant = held.get(&ids[0]).unwrap().grant;
            let named = vmail_proto::grant::StorageGrant::from_bytes(&grant)
                .unwrap()
                .body
                .holders
                .len();
            grant_bytes.push((grant.len(), ids.len(), named));
            for i in [1, 2] {
                let got = net.peers[i]
                    .fetch(r.voicemail_id, no_progress())
                    .await
                    .expect("fetch");
                assert_eq!(got.content.len(), size);
            }
            net.peers[1].ack(r.voicemail_id).await.expect("ack");
            let t = Instant::now();
            let acked = net.peers[2].ack(r.voicemail_id).await.expect("last ack");
            let took = t.elapsed();
            assert!(acked.key_erased && acked.holders_missed == 0);
            let left = net
                .peers
                .iter()
                .filter_map(|p| p.store())
                .filter(|s| ids.iter().any(|id| s.get(id).is_some()))
                .count();
            assert_eq!(left, 0, "a holder kept a shard after the last ack");
            deletes.push(took);
        }
        leaves.sort();
        grants.sort();
        deletes.sort();
        let (leave, grant) = (pct(&leaves, 0.5), pct(&grants, 0.5));
        println!(
            "| {} MiB | {:.1} | {:.1} | {:.1} | {:.3} | {:.1} | {:.1} |",
            size >> 20,
            ms(leave),
            ms(pct(&leaves, 0.95)),
            ms(grant),
            leave.as_secs_f64() / (leave - grant).as_secs_f64(),
            ms(pct(&deletes, 0.5)),
            ms(pct(&deletes, 0.95)),
        );
    }
    let (bytes, shards, named) = grant_bytes[0];
    println!(
        "\ngrant: {bytes} bytes for {shards} shards and {named} named holders (at most {}) = {} bytes per shard",
        vmail_node::peer::granted_holders(shards),
        bytes / shards
    );
    net.stop().await;
}

/// Logs `user` in on a client of `cluster`.
async fn client(cluster: &TestCluster, user: &str) -> AuthClient {
    let mut c = cluster.client().await;
    let id = identity();
    c.register(user, &password(user), &id, None).await.unwrap();
    let s = c.login(user, &password(user), &id, &[]).await.unwrap();
    c.set_token(s.token);
    c
}

fn grant_request(to: &str) -> GrantRequest {
    GrantRequest {
        recipients: Recipients::parse([to]).unwrap(),
        message_id: vmail_proto::random_bytes(),
        data_shards: 4,
        shards: (0..8)
            .map(|_| GrantedShard {
                len: 120_032,
                sha256: vmail_proto::random_bytes(),
            })
            .collect(),
        holders: (0..20)
            .map(|_| libp2p::PeerId::random().to_bytes())
            .collect(),
        expires_at: 0,
        sender: vmail_node::auth_client::SenderVisibility::Shown,
    }
}

/// Writes per second by `CLIENTS` clients running `op` `WRITES_PER_CLIENT`
/// times each.
async fn rate<F, Fut>(clients: Vec<(AuthClient, String)>, op: F) -> f64
where
    F: Fn(AuthClient, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let t = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(c, me)| {
            let op = op.clone();
            tokio::spawn(async move { op(c, me).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (CLIENTS * WRITES_PER_CLIENT) as f64 / t.elapsed().as_secs_f64()
}

async fn group() {
    let mut cluster = TestCluster::start(3).await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let me = format!("sender{i}");
        let c = client(&cluster, &me).await;
        clients.push((c, me));
    }
    let grants = rate(clients.clone(), |mut c, me| async move {
        for _ in 0..WRITES_PER_CLIENT {
            c.request_grant(&grant_request(&me)).await.expect("grant");
        }
    })
    .await;
    // Each deposit needs a grant of its own, asked for outside the clock.
    let deposits = rate(clients, |mut c, me| async move {
        for _ in 0..WRITES_PER_CLIENT {
            let grant = c.request_grant(&grant_request(&me)).await.expect("grant");
            let d = NewDeposit {
                grant_serial: grant.grant.body.serial,
                request_id: vmail_proto::random_bytes(),
                recipients: Recipients::parse([me.as_str()]).unwrap(),
                locator: vec![7; 600],
                session_key: SecretKey::random(),
                share_keys: grant.share_keys,
                meta: VoicemailMeta {
                    size: 480_044,
                    content_type: "audio/wav".into(),
                    duration_ms: 30_000,
                    expires_at: 0,
                },
            };
            c.deposit(&d).await.expect("deposit");
        }
    })
    .await;
    println!(
        "\n3-server group, {CLIENTS} clients: {grants:.0} grants/s; {deposits:.0} grant+deposit pairs/s ({:.0} writes/s); grants/s / writes/s = {:.2}",
        2.0 * deposits,
        grants / (2.0 * deposits)
    );
    cluster.stop().await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    println!("reproduce: cargo bench -p vmail-tests --bench grants\n");
    overlay().await;
    group().await;
}
