//! Auth-server benchmark against a real TLS `vmail-auth` server on
//! `127.0.0.1:0` ([`vmail_tests::TestAuth`]). Run it with
//! `cargo bench -p vmail-tests --bench auth`; it prints markdown for
//! `docs/BENCHMARKS.md`.
//!
//! 1. **Logins** over the raw gRPC client, timing apart the client's work
//!    (OPAQUE `ClientLogin::start` + `finish`, dominated by argon2id with
//!    m = 19 MiB, t = 2, p = 1, plus the ed25519 identity proof) and the two
//!    server round trips `LoginStart` and `LoginFinish` (loopback TLS gRPC,
//!    OPAQUE server steps, one durable redb commit). Then 8 tasks log in
//!    concurrently, each as its own user since attempts are counted per user.
//! 2. **Durable deposits** through `vmail_node::auth_client::AuthClient::deposit`,
//!    one sender to `alice`, 1 and 16 in flight, fresh request ids; alice's
//!    pending list is checked at the end. Each deposit needs a storage grant
//!    of its own (`AuthClient::request_grant`); a run's grants are all asked
//!    for before its clock starts, so it times the deposits alone.
//! 3. **Reference**: a 4 KiB append plus `sync_data()`, as each deposit is one
//!    durable redb commit.
//!
//! Server and clients share one runtime and the machine's cores.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use ed25519_dalek::{Signer, SigningKey};
use opaque_ke::{ClientLogin, ClientLoginFinishParameters, CredentialResponse};
use tonic::transport::Channel;
use vmail_node::auth_client::{AuthClient, NewDeposit, VoicemailMeta};
use vmail_proto::account::{AccountKey, SessionStatement};
use vmail_proto::cert::{ProofPurpose, identity_proof_bytes};
use vmail_proto::keys::SecretKey;
use vmail_proto::names::{Recipients, Username};
use vmail_proto::opaque::Suite;
use vmail_proto::pb::{self, auth_client::AuthClient as RawClient};
use vmail_proto::share::BoxSecret;
use vmail_tests::{TestAuth, identity, password, register_and_login, try_granted};

const SEQ_LOGINS: usize = 30;
const CONC_TASKS: usize = 8;
const CONC_LOGINS: usize = 64;
/// (concurrency, total deposits)
const DEPOSIT_RUNS: [(usize, usize); 2] = [(1, 200), (16, 800)];
const DEPOSIT_WARMUP: usize = 10;
const SYNC_WRITES: u32 = 200;

/// opaque-ke's errors are not `std::error::Error` without its `std` feature.
fn opaque(e: opaque_ke::errors::ProtocolError) -> anyhow::Error {
    anyhow::anyhow!("OPAQUE: {e}")
}

/// One row of a two-column markdown table.
fn row(measure: impl std::fmt::Display, value: f64) {
    let digits = [3, 2, 0][usize::from(value >= 1.0) + usize::from(value >= 100.0)];
    println!("| {measure} | {value:.digits$} |");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A full OPAQUE login over the raw gRPC client. The client's work runs on
/// the blocking pool, so argon2 never stalls the runtime the server shares.
/// Returns the client's work and the LoginStart and LoginFinish round trips.
async fn raw_login(
    rpc: &mut RawClient<Channel>,
    user: &str,
    id: &SigningKey,
) -> Result<[Duration; 3]> {
    let (name, pw) = (Username::parse(user)?, password(user));
    let t = Instant::now();
    let start = ClientLogin::<Suite>::start(&mut rand::rngs::OsRng, &pw).map_err(opaque)?;
    let client = t.elapsed();

    let t = Instant::now();
    let request = pb::LoginStartRequest {
        username: name.to_string(),
        credential_request: start.message.serialize().to_vec(),
    };
    let resp = rpc.login_start(request).await?.into_inner();
    let start_rtt = t.elapsed();

    let (id, login_id) = (id.clone(), resp.login_id.clone());
    let (finalization, vk, (proof, account_proof), inbox_key, finish_time) =
        tokio::task::spawn_blocking(move || -> Result<_> {
            let t = Instant::now();
            let response = CredentialResponse::<Suite>::deserialize(&resp.credential_response)
                .map_err(opaque)?;
            let params = ClientLoginFinishParameters::default();
            let finish = start.state.finish(&pw, response, params).map_err(opaque)?;
            let vk = id.verifying_key();
            let msg = identity_proof_bytes(ProofPurpose::Login, &name, &login_id, &vk, &[]);
            let proof = id.sign(&msg);
            // The session's inbox key, as a client makes one per login: the
            // servers reseal their key shares to its public half.
            let inbox_key = BoxSecret::generate().public();
            let account_proof =
                AccountKey::derive(&finish.export_key, &name).sign_session(&SessionStatement {
                    username: &name,
                    login_id: login_id.as_slice().try_into()?,
                    identity_key: vk.as_bytes(),
                    peer_id: &[],
                    inbox_key: &inbox_key,
                });
            Ok((
                finish.message.serialize().to_vec(),
                vk,
                (proof, account_proof),
                inbox_key,
                t.elapsed(),
            ))
        })
        .await??;

    let t = Instant::now();
    let request = pb::LoginFinishRequest {
        login_id: resp.login_id,
        credential_finalization: finalization,
        identity_key: vk.as_bytes().to_vec(),
        identity_proof: proof.to_bytes().to_vec(),
        peer_id: Vec::new(),
        inbox_key: inbox_key.to_vec(),
        account_proof: account_proof.to_bytes().to_vec(),
    };
    let out = rpc.login_finish(request).await?.into_inner();
    let finish = t.elapsed();
    ensure!(out.session_token.len() == 32, "no session token");
    Ok([client + finish_time, start_rtt, finish])
}

async fn register(auth: &TestAuth, user: &str) -> Result<SigningKey> {
    let id = identity();
    let mut client = auth.client().await;
    client.register(user, &password(user), &id, None).await?;
    Ok(id)
}

/// `n` deposits from `c` tasks; returns wall time and every latency, sorted.
/// Their storage grants are asked for first, outside the timing.
async fn deposits(client: &AuthClient, c: usize, n: usize) -> Result<(Duration, Vec<Duration>)> {
    let recipients = Recipients::parse(["alice"])?;
    let mut granting = client.clone();
    let mut batches = Vec::with_capacity(c);
    for _ in 0..c {
        let mut batch = Vec::with_capacity(n / c);
        for _ in 0..n / c {
            let d = NewDeposit {
                grant_serial: 0,
                request_id: vmail_proto::random_bytes(),
                recipients: recipients.clone(),
                locator: b"blob://bench/0123456789abcdef".to_vec(),
                session_key: SecretKey::random(),
                // try_granted fills in the grant's share keys.
                share_keys: Vec::new(),
                meta: VoicemailMeta {
                    content_type: "audio/ogg".into(),
                    ..Default::default()
                },
            };
            batch.push(try_granted(&mut granting, d, 0).await?);
        }
        batches.push(batch);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(c);
    for batch in batches {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(batch.len());
            for d in batch {
                let t = Instant::now();
                let receipt = client.deposit(&d).await?;
                lat.push(t.elapsed());
                ensure!(!receipt.replayed, "a fresh request id was replayed");
            }
            Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = started.elapsed();
    all.sort();
    Ok((wall, all))
}

/// Mean time of a 4 KiB append followed by `sync_data()`.
fn synced_write() -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let mut f = std::fs::File::create(dir.path().join("sync-reference"))?;
    let buf = [0x5a_u8; 4096];
    let t = Instant::now();
    for _ in 0..SYNC_WRITES {
        f.write_all(&buf)?;
        f.sync_data()?;
    }
    Ok(t.elapsed() / SYNC_WRITES)
}

async fn run() -> Result<()> {
    // alice receives every deposit of the run: lift the inbox cap to its
    // maximum. The sender holds a whole run's storage grants before the run
    // deposits under them.
    let largest_run = DEPOSIT_RUNS.iter().map(|r| r.1).max().unwrap_or(0);
    let auth = TestAuth::start_with(
        |c| {
            c.max_pending_per_user = 3000;
            c.max_open_grants_per_user = largest_run as u64;
        },
        std::sync::Arc::new(vmail_auth::service::SystemClock),
    )
    .await;

    // 1. Logins, sequential: client work and server round trips apart.
    let id = register(&auth, "bench-seq").await?;
    let mut rpc = RawClient::new(auth.channel().await);
    raw_login(&mut rpc, "bench-seq", &id).await?; // warm-up
    let mut sum = [Duration::ZERO; 3];
    for _ in 0..SEQ_LOGINS {
        let t = raw_login(&mut rpc, "bench-seq", &id).await?;
        sum.iter_mut().zip(t).for_each(|(s, t)| *s += t);
    }
    let [client_ms, start_ms, finish_ms] = sum.map(|d| ms(d) / SEQ_LOGINS as f64);
    let server_ms = start_ms + finish_ms;

    // 1b. Logins, concurrent: one user and one connection per task.
    let mut users = Vec::with_capacity(CONC_TASKS);
    for k in 0..CONC_TASKS {
        let user = format!("bench-conc-{k}");
        let id = register(&auth, &user).await?;
        users.push((user, id, RawClient::new(auth.channel().await)));
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CONC_TASKS);
    for (user, id, mut rpc) in users {
        tasks.push(tokio::spawn(async move {
            for _ in 0..CONC_LOGINS / CONC_TASKS {
                raw_login(&mut rpc, &user, &id).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let conc_rate = CONC_LOGINS as f64 / started.elapsed().as_secs_f64();

    // 2. Deposits from one logged-in sender to alice.
    let (mut alice, _, _) = register_and_login(&auth, "alice").await;
    let (sender, _, _) = register_and_login(&auth, "bench-sender").await;
    deposits(&sender, 1, DEPOSIT_WARMUP).await?;
    let mut runs = Vec::new();
    for (c, n) in DEPOSIT_RUNS {
        runs.push((c, n, deposits(&sender, c, n).await?));
    }
    let expected = DEPOSIT_WARMUP + DEPOSIT_RUNS.iter().map(|r| r.1).sum::<usize>();
    let pending = alice.list_pending().await?.len();
    ensure!(pending == expected, "alice has {pending} of {expected}");

    // 3. Reference: one synced 4 KiB write.
    let sync_ms = ms(tokio::task::spawn_blocking(synced_write).await??);

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server_rate, ratio) = (1000.0 / server_ms, server_ms / client_ms);
    let argon2_bound = cores as f64 * 1000.0 / client_ms;
    println!("### Logins (OPAQUE, ristretto255, argon2id m = 19 MiB, t = 2, p = 1)\n");
    println!("| measure | value |\n|---|---:|");
    row("client: OPAQUE start + finish + proof, ms", client_ms);
    row("server: LoginStart round trip, ms", start_ms);
    row("server: LoginFinish round trip, ms", finish_ms);
    row("server: both round trips, ms/login", server_ms);
    row("server login completions/s", server_rate);
    row("server time / client time", ratio);
    let conc = format!("full logins/s, {CONC_TASKS} concurrent tasks");
    row(conc, conc_rate);
    println!(
        "\n{cores} cores, server and clients in one process. Client and server times are \
         the means of {SEQ_LOGINS} sequential logins by one client; the client time is \
         dominated by argon2id. Server completions/s = 1000 / server ms: sequential, \
         including loopback TLS gRPC and LoginFinish's durable redb commit. The \
         concurrent run ({CONC_LOGINS} logins, one user and connection per task) is \
         bounded by client argon2 on {cores} cores: cores / client time = \
         {argon2_bound:.0} logins/s."
    );

    println!("\n### Durable deposits (one sender, recipients [\"alice\"], fresh request ids)\n");
    println!(
        "| concurrency | deposits | deposits/s | mean ms | p50 ms | p99 ms | mean latency / client argon2 | deposits per argon2 run |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (c, n, (wall, lat)) in &runs {
        let rate = *n as f64 / wall.as_secs_f64();
        let mean = ms(lat.iter().sum::<Duration>()) / lat.len() as f64;
        let (p50, p99) = (ms(lat[lat.len() / 2]), ms(lat[lat.len() * 99 / 100]));
        let (ratio, per_argon2) = (mean / client_ms, rate * client_ms / 1000.0);
        println!(
            "| {c} | {n} | {rate:.0} | {mean:.2} | {p50:.2} | {p99:.2} | {ratio:.3} | {per_argon2:.1} |"
        );
    }
    println!(
        "\nEach deposit is one durable redb commit, under a storage grant asked for \
         before the run's clock started. \"Deposits per argon2 run\" is how \
         many deposits the server completes while one client spends one login's \
         client time ({client_ms:.1} ms). alice's pending list holds all {pending}."
    );

    let (_, n, (wall, _)) = &runs[0];
    let deposit_over_sync = ms(*wall) / *n as f64 / sync_ms;
    println!("\n### Reference: synced write\n");
    println!("| measure | value |\n|---|---:|");
    row("4 KiB append + `sync_data()`, ms/op", sync_ms);
    row("deposit at concurrency 1 / synced write", deposit_over_sync);
    println!(
        "\n{SYNC_WRITES} appends to one file in a temporary directory on the same file system as the server's data."
    );
    Ok(())
}

fn main() -> Result<()> {
    println!("$ cargo bench -p vmail-tests --bench auth\n");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
