//! `vmail testnet`: a replicated auth group and N peers on loopback, in
//! background processes, for trying the CLI by hand.
//!
//! `up` starts a supervisor (`testnet serve`). It runs the peers itself and
//! each auth server as its own process (`testnet auth-serve`), so that the
//! fault drills `kill-auth-leader` and `restart-auth` kill and restart a
//! real process. `up` returns once everything is ready and the peers have
//! elected supernodes, and prints the `export` lines that point the CLI and
//! a user's own `vmail node run` at it.
//!
//! Layout of DIR: `testnet.{pid,env,log}` for the supervisor; `node.toml`,
//! the election settings for a user's own `vmail node run`
//! (`VMAIL_NODE_CONFIG` names it); `peers/`, which holds each peer's data
//! dir `peers/peer-N/` and, beside it, `peer-N.port`; and `auth/`, which
//! holds each server's data dir `auth/NAME/` and, beside it, `NAME.ports`
//! ("API RAFT"), `NAME.pid`, `NAME.ready` (its endpoint, while it serves)
//! and `NAME.log`. The port files keep a restart on the ports the others
//! know.
//!
//! The auth servers' processes, their files and the drills live in `auth`;
//! the peers' settings, ports and election wait in `peers`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use vmail_auth::datadir;

mod auth;
mod peers;

use auth::{AuthFiles, auth_serve, kill_auth_leader, restart_auth, stop_auth_servers};

const PID_FILE: &str = "testnet.pid";
const ENV_FILE: &str = "testnet.env";
const LOG_FILE: &str = "testnet.log";
/// How long `up` waits for the network to be ready.
const UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `down` waits for the processes to leave.
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// The most auth servers a testnet runs.
const MAX_AUTH_SERVERS: usize = 7;

/// `vmail-devnet testnet ...` (also reached as `vmail testnet ...`).
#[derive(Debug, clap::Subcommand)]
pub enum TestnetCommand {
    /// Start an auth group and N peers in the background; print `export` lines.
    Up {
        /// Number of peers (the default RS(4,8) needs 8 holders besides
        /// the sender; 10 leaves two spares).
        #[arg(long, default_value_t = 10)]
        peers: usize,
        /// Number of auth servers in the replicated group (1 to 7).
        #[arg(long, default_value_t = 3)]
        auth_servers: usize,
        /// Where the testnet keeps its data, logs and pids.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop the testnet running in DIR.
    Down {
        /// The testnet's dir.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Fault drill: SIGKILL the auth group's current leader.
    KillAuthLeader {
        /// The testnet's dir.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Fault drill: restart a stopped auth server from its data dir.
    RestartAuth {
        /// The server's name, e.g. auth-2 (as `kill-auth-leader` printed).
        name: String,
        /// The testnet's dir.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run the testnet in the foreground (what `up` starts).
    #[command(hide = true)]
    Serve {
        /// Number of peers.
        #[arg(long)]
        peers: usize,
        /// Number of auth servers.
        #[arg(long)]
        auth_servers: usize,
        /// The testnet's dir.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write a playable test WAV (16 kHz mono tune) to leave in drills.
    Tone {
        /// The file to create.
        out: PathBuf,
        /// Its length in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u32,
        /// Different seeds give different tunes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run one of the testnet's auth servers in the foreground.
    #[command(hide = true)]
    AuthServe {
        /// Its name, auth-1 .. auth-N.
        #[arg(long)]
        name: String,
        /// The testnet's dir.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Runs one testnet command.
pub async fn run(cmd: &TestnetCommand) -> anyhow::Result<()> {
    match cmd {
        TestnetCommand::Up {
            peers,
            auth_servers,
            dir,
        } => up(*peers, *auth_servers, dir).await,
        TestnetCommand::Down { dir } => down(dir).await,
        TestnetCommand::KillAuthLeader { dir } => kill_auth_leader(dir).await,
        TestnetCommand::RestartAuth { name, dir } => restart_auth(name, dir).await,
        TestnetCommand::Serve {
            peers,
            auth_servers,
            dir,
        } => serve(*peers, *auth_servers, dir).await,
        TestnetCommand::AuthServe { name, dir } => auth_serve(name, dir).await,
        TestnetCommand::Tone { out, seconds, seed } => tone(out, *seconds, *seed),
    }
}

/// `vmail testnet tone`: a playable WAV to leave in drills.
fn tone(out: &Path, seconds: u32, seed: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=3600).contains(&seconds),
        "--seconds must be 1 to 3600, not {seconds}"
    );
    let audio = vmail_node::core::wav::generate(seconds, 16_000, seed);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .and_then(|mut f| f.write_all(&audio))
        .with_context(|| {
            format!(
                "cannot write {} (an existing file is never overwritten)",
                out.display()
            )
        })?;
    println!(
        "wrote {} ({} s, {} bytes)",
        out.display(),
        seconds,
        audio.len()
    );
    Ok(())
}

/// Whether `pid` is a live process of ours: it exists and its command line
/// holds `marker`, so a stale pid file never aims a signal at a stranger.
fn ours(pid: i32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmd| {
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.split('\0').any(|arg| arg == marker) && !is_zombie(pid)
        })
        .unwrap_or(false)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn running_pid(dir: &Path) -> Option<i32> {
    read_pid(&dir.join(PID_FILE)).filter(|&pid| ours(pid, "serve"))
}

/// Writes `text` to `path` atomically (a temporary file, then a rename), so
/// a reader never sees half of it.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp)?.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Sends `signal` to `pid` and waits up to `timeout` for it to be gone.
async fn signal_and_wait(
    pid: i32,
    marker: &str,
    signal: Signal,
    timeout: Duration,
) -> anyhow::Result<()> {
    nix::sys::signal::kill(Pid::from_raw(pid), signal)
        .with_context(|| format!("sending {signal} to process {pid}"))?;
    let deadline = Instant::now() + timeout;
    while ours(pid, marker) {
        if Instant::now() > deadline {
            bail!("process {pid} did not stop within {timeout:?} after {signal}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn up(peers: usize, auth_servers: usize, dir: &Path) -> anyhow::Result<()> {
    if !(1..=64).contains(&peers) {
        bail!("--peers {peers} is out of range: use 1 to 64");
    }
    if !(1..=MAX_AUTH_SERVERS).contains(&auth_servers) {
        bail!("--auth-servers {auth_servers} is out of range: use 1 to {MAX_AUTH_SERVERS}");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    if let Some(pid) = running_pid(&dir) {
        bail!(
            "a testnet already runs in {} (pid {pid}); stop it with `vmail testnet down --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    let _ = std::fs::remove_file(dir.join(ENV_FILE));
    let log = std::fs::File::create(dir.join(LOG_FILE))?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["testnet", "serve", "--peers", &peers.to_string()])
        .args(["--auth-servers", &auth_servers.to_string(), "--dir"])
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the testnet process")?;
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        if let Ok(env) = std::fs::read_to_string(dir.join(ENV_FILE)) {
            print!("{env}");
            eprintln!(
                "testnet with {auth_servers} auth servers and {peers} peers is up in {}; \
                 stop it with `vmail testnet down --dir {}`",
                dir.display(),
                dir.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
            bail!("the testnet process exited ({status}) before it was ready:\n{log}");
        }
        if Instant::now() > deadline {
            // SIGTERM, so the supervisor stops the auth servers it started.
            let _ =
                signal_and_wait(child.id() as i32, "serve", Signal::SIGTERM, DOWN_TIMEOUT).await;
            bail!(
                "the testnet was not ready after {UP_TIMEOUT:?}; see {}",
                dir.join(LOG_FILE).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn down(dir: &Path) -> anyhow::Result<()> {
    let Some(pid) = running_pid(dir) else {
        // The supervisor may have died on its own: still stop its servers.
        let stopped = stop_auth_servers(&dir.join("auth")).await?;
        println!(
            "no testnet runs in {}{}",
            dir.display(),
            if stopped > 0 {
                format!("; stopped {stopped} auth servers left behind")
            } else {
                String::new()
            }
        );
        return Ok(());
    };
    signal_and_wait(pid, "serve", Signal::SIGTERM, DOWN_TIMEOUT)
        .await
        .context("stopping the testnet")?;
    stop_auth_servers(&dir.join("auth")).await?;
    println!("testnet in {} stopped (data kept)", dir.display());
    Ok(())
}

/// The supervisor: starts the auth servers one by one (auth-1 founds the
/// group, the others join it), then the peers, writes the `export` lines,
/// and on SIGTERM stops everything.
async fn serve(peers: usize, auth_servers: usize, dir: &Path) -> anyhow::Result<()> {
    let dir: PathBuf = dir.to_owned();
    std::fs::write(dir.join(PID_FILE), std::process::id().to_string())?;
    let auth_dir = dir.join("auth");
    std::fs::create_dir_all(&auth_dir)?;
    let result = serve_started(peers, auth_servers, &dir, &auth_dir).await;
    let stopped = stop_auth_servers(&auth_dir).await;
    let _ = std::fs::remove_file(dir.join(ENV_FILE));
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    result.and(stopped.map(|_| ()))
}

async fn serve_started(
    peers: usize,
    auth_servers: usize,
    dir: &Path,
    auth_dir: &Path,
) -> anyhow::Result<()> {
    // From now on a SIGTERM stops the testnet cleanly once it is up.
    let stop = crate::stop_signal()?;
    let mut endpoints = Vec::with_capacity(auth_servers);
    for i in 1..=auth_servers {
        let files = AuthFiles::new(auth_dir, &format!("auth-{i}"));
        let endpoint = match files.running() {
            Some(_) => files
                .endpoint()
                .context("a running server has no ready file")?,
            None => files.spawn().await?.1,
        };
        println!("{} ready at {endpoint}", files.name);
        endpoints.push(endpoint);
    }
    let founder = auth_dir.join("auth-1");
    let keys = datadir::load_keys(&founder)?;
    let cluster_key = keys.cluster_public_key();
    // A group of three or more makes a threshold key, which the peers and
    // the CLI then pin; a smaller one has only the cluster key.
    let group_key = if auth_servers >= vmail_auth::threshold::MIN_MEMBERS {
        let key = auth::group_key(auth_dir).await?;
        println!("group key {}", hex::encode(key.as_bytes()));
        Some(key)
    } else {
        None
    };
    let node_toml = dir.join(peers::USER_CONFIG);
    write_atomic(&node_toml, &peers::user_node_toml())?;
    let peers = peers::start(&dir.join("peers"), peers, &cluster_key, group_key.as_ref()).await?;
    let elected = peers::wait_settled(&peers).await;
    let elected = match elected {
        Ok(line) => line,
        Err(e) => {
            for p in peers {
                p.stop().await;
            }
            return Err(e);
        }
    };
    println!("{elected}");
    let boot = peers[0].listen_addrs().await?;
    let group_line = group_key.map_or_else(String::new, |k| {
        format!("export VMAIL_GROUP_KEY={}\n", hex::encode(k.as_bytes()))
    });
    let env = format!(
        "export VMAIL_AUTH={}\nexport VMAIL_CA={}\nexport VMAIL_CLUSTER_KEY={}\n{group_line}export VMAIL_BOOTSTRAP={}\nexport VMAIL_NODE_CONFIG={}\n# {elected}\n",
        endpoints.join(","),
        founder.join(datadir::files::CA_CERT).display(),
        hex::encode(keys.cluster_public_key().as_bytes()),
        boot.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        node_toml.display()
    );
    write_atomic(&dir.join(ENV_FILE), &env)?;
    println!("testnet ready:\n{env}");
    stop.await;
    println!("stopping");
    for p in peers {
        p.stop().await;
    }
    Ok(())
}
