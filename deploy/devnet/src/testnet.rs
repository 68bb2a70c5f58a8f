//! `vmail testnet`: a replicated auth group and N peers on loopback, in
//! background processes, for trying the CLI by hand.
//!
//! `up` starts a supervisor (`testnet serve`). It runs the peers itself and
//! each auth server as its own process (`testnet auth-serve`), so that the
//! fault drills `kill-auth-leader` and `restart-auth` kill and restart a
//! real process. `up` returns once everything is ready and prints the
//! `export` lines that point the CLI and a user's own `vmail node run` at it.
//!
//! Layout of DIR: `testnet.{pid,env,log}` for the supervisor, `peers/`, and
//! `auth/`, which holds each server's data dir `auth/NAME/` and, beside it,
//! `NAME.ports` ("API RAFT", kept so a restart comes back on the ports the
//! group knows), `NAME.pid`, `NAME.ready` (its endpoint, while it serves)
//! and `NAME.log`.

use std::io::Write;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use vmail_auth::cluster::admin;
use vmail_auth::datadir::{self, InitOptions};
use vmail_auth::tls::ClusterTls;

use crate::local_auth::{Harness, LocalServer, LocalServerError};
use crate::localnet;

const PID_FILE: &str = "testnet.pid";
const ENV_FILE: &str = "testnet.env";
const LOG_FILE: &str = "testnet.log";
/// How long `up` waits for the network to be ready.
const UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one auth server gets to found, join or restart and be ready.
const AUTH_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a restarted auth server retries binding its old ports, which
/// the killed process may have left in TIME_WAIT.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `down` waits for the processes to leave.
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `kill-auth-leader` waits for a running leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(15);
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

/// An auth server of the testnet, by its files in `DIR/auth`.
struct AuthFiles {
    auth_dir: PathBuf,
    name: String,
}

impl AuthFiles {
    fn new(auth_dir: &Path, name: &str) -> Self {
        Self {
            auth_dir: auth_dir.to_owned(),
            name: name.to_owned(),
        }
    }
    fn file(&self, ext: &str) -> PathBuf {
        self.auth_dir.join(format!("{}.{ext}", self.name))
    }
    fn data_dir(&self) -> PathBuf {
        self.auth_dir.join(&self.name)
    }
    /// Its process id, if that process runs.
    fn running(&self) -> Option<i32> {
        read_pid(&self.file("pid")).filter(|&pid| ours(pid, &self.name))
    }
    /// The (API, Raft) ports it was first given.
    fn ports(&self) -> anyhow::Result<Option<(u16, u16)>> {
        let path = self.file("ports");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let parse = |s: Option<&str>| s.and_then(|s| s.parse::<u16>().ok());
        let mut it = text.split_whitespace();
        match (parse(it.next()), parse(it.next())) {
            (Some(api), Some(raft)) => Ok(Some((api, raft))),
            _ => bail!(
                "{} is damaged: expected \"API_PORT RAFT_PORT\", found {text:?}",
                path.display()
            ),
        }
    }
    /// The endpoint it serves at, once ready.
    fn endpoint(&self) -> Option<String> {
        std::fs::read_to_string(self.file("ready"))
            .ok()
            .map(|s| s.trim().to_owned())
    }
    /// Starts its process in the background, detached from this one, and
    /// waits until it is ready.
    async fn spawn(&self) -> anyhow::Result<(i32, String)> {
        let _ = std::fs::remove_file(self.file("ready"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file("log"))?;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["testnet", "auth-serve", "--name", &self.name, "--dir"])
            .arg(self.auth_dir.parent().unwrap_or(&self.auth_dir))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the command that
            // started it does not reach it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        let pid = child.id() as i32;
        let deadline = Instant::now() + AUTH_READY_TIMEOUT;
        loop {
            if let Some(endpoint) = self.endpoint() {
                // Reap it whenever it ends, so it never lingers as a zombie.
                std::thread::spawn(move || child.wait());
                return Ok((pid, endpoint));
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; see {}",
                    self.name,
                    self.file("log").display()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} was not ready after {AUTH_READY_TIMEOUT:?}; see {}",
                    self.name,
                    self.file("log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The names of the auth servers in `auth_dir`, in order.
fn auth_names(auth_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(auth_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|f| f.strip_suffix(".ports").map(str::to_owned))
        .collect();
    names.sort_by_key(|n| {
        n.strip_prefix("auth-")
            .and_then(|i| i.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    });
    names
}

/// Stops every running auth server in `auth_dir`; returns how many.
async fn stop_auth_servers(auth_dir: &Path) -> anyhow::Result<usize> {
    let mut stopped = 0;
    for name in auth_names(auth_dir) {
        let files = AuthFiles::new(auth_dir, &name);
        if let Some(pid) = files.running() {
            signal_and_wait(pid, &name, Signal::SIGTERM, DOWN_TIMEOUT)
                .await
                .with_context(|| format!("stopping {name}"))?;
            stopped += 1;
        }
    }
    Ok(stopped)
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
    let peers = localnet::start_peers(&dir.join("peers"), peers, Vec::new(), |_| {}).await?;
    let boot = peers[0].listen_addrs().await?;
    let founder = auth_dir.join("auth-1");
    let keys = datadir::load_keys(&founder)?;
    let env = format!(
        "export VMAIL_AUTH={}\nexport VMAIL_CA={}\nexport VMAIL_CLUSTER_KEY={}\nexport VMAIL_BOOTSTRAP={}\n",
        endpoints.join(","),
        founder.join(datadir::files::CA_CERT).display(),
        hex::encode(keys.cluster_public_key().as_bytes()),
        boot.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    write_atomic(&dir.join(ENV_FILE), &env)?;
    println!("testnet ready:\n{env}");
    crate::stop_signal().await?;
    println!("stopping");
    for p in peers {
        p.stop().await;
    }
    Ok(())
}

/// One auth server in the foreground: founds the group (auth-1), joins it
/// through auth-1 (the others), or restarts from its data dir on the ports
/// it had. Writes its pid and, once it serves, its ready file.
async fn auth_serve(name: &str, dir: &Path) -> anyhow::Result<()> {
    let auth_dir = dir.join("auth");
    let files = AuthFiles::new(&auth_dir, name);
    std::fs::write(files.file("pid"), std::process::id().to_string())?;
    let sdir = files.data_dir();
    let harness = Harness::default();
    let ports = files.ports()?;
    let server = match ports {
        Some((api, raft)) => restart_on(&sdir, api, raft).await?,
        None if name == "auth-1" => {
            datadir::init(&InitOptions {
                name: name.to_owned(),
                ..InitOptions::loopback(&sdir)
            })?;
            LocalServer::start(&sdir, &harness).await?
        }
        None => {
            let founder = AuthFiles::new(&auth_dir, "auth-1");
            let (_, raft) = founder
                .ports()?
                .context("auth-1 has not started: it founds the group")?;
            let via = format!("https://127.0.0.1:{raft}");
            LocalServer::join(&sdir, name, &via, &founder.data_dir(), &harness).await?
        }
    };
    write_atomic(
        &files.file("ports"),
        &format!("{} {}\n", server.api_addr.port(), server.raft_addr.port()),
    )?;
    // A founder waits for its own election. A restarted member serves at
    // once: after `down` the group has no majority until more are back.
    if ports.is_none()
        && let Err(e) = server.wait_ready(AUTH_READY_TIMEOUT).await
    {
        server.stop().await?;
        bail!(e);
    }
    write_atomic(&files.file("ready"), &server.endpoint)?;
    println!("{name} serving at {}", server.endpoint);
    crate::stop_signal().await?;
    let _ = std::fs::remove_file(files.file("ready"));
    server.stop().await?;
    let _ = std::fs::remove_file(files.file("pid"));
    println!("{name} stopped");
    Ok(())
}

/// Serves `sdir` again on its old ports, retrying while they are still held.
async fn restart_on(sdir: &Path, api: u16, raft: u16) -> anyhow::Result<LocalServer> {
    let at = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + REBIND_TIMEOUT;
    loop {
        match LocalServer::start_on(sdir, &Harness::default(), at(api), at(raft)).await {
            Err(LocalServerError::Bind { addr, source }) if Instant::now() < deadline => {
                tracing::debug!(%addr, %source, "port still held; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// The leader most running servers name, if any names one.
async fn current_leader(
    auth_dir: &Path,
    names: &[String],
    tls: &ClusterTls,
) -> anyhow::Result<Option<String>> {
    let mut votes: Vec<(String, usize)> = Vec::new();
    for name in names {
        let files = AuthFiles::new(auth_dir, name);
        let Some((_, raft)) = files.ports()? else {
            continue;
        };
        if files.running().is_none() {
            continue;
        }
        let url = format!("https://127.0.0.1:{raft}");
        if let Ok(status) = admin::status(&url, tls).await
            && let Some(leader) = status.leader
        {
            match votes.iter_mut().find(|(n, _)| *n == leader) {
                Some((_, v)) => *v += 1,
                None => votes.push((leader, 1)),
            }
        }
    }
    Ok(votes.into_iter().max_by_key(|(_, v)| *v).map(|(n, _)| n))
}

/// The drill: asks the servers who leads, and SIGKILLs that process.
async fn kill_auth_leader(dir: &Path) -> anyhow::Result<()> {
    let auth_dir = dir.join("auth");
    let names = auth_names(&auth_dir);
    if names.is_empty() {
        bail!(
            "no testnet auth servers in {}: start one with `vmail testnet up --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    let tls = admin::member_tls(&auth_dir.join("auth-1"))?;
    // Right after a kill the survivors still name the dead leader until
    // they elect another, so wait for a leader that runs.
    let deadline = Instant::now() + LEADER_TIMEOUT;
    let (leader, pid) = loop {
        let leader = current_leader(&auth_dir, &names, &tls).await?;
        if let Some(leader) = &leader
            && let Some(pid) = AuthFiles::new(&auth_dir, leader).running()
        {
            break (leader.clone(), pid);
        }
        if Instant::now() > deadline {
            bail!(
                "no running auth server in {} follows a running leader after {LEADER_TIMEOUT:?}: \
                 the group may have lost its majority (restart servers with \
                 `vmail testnet restart-auth NAME --dir {}`)",
                dir.display(),
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let files = AuthFiles::new(&auth_dir, &leader);
    signal_and_wait(pid, &leader, Signal::SIGKILL, DOWN_TIMEOUT).await?;
    let _ = std::fs::remove_file(files.file("ready"));
    let _ = std::fs::remove_file(files.file("pid"));
    println!(
        "killed {leader} (pid {pid}), the auth leader; the others elect a new leader within \
         a few seconds and clients follow it.\nBring it back with \
         `vmail testnet restart-auth {leader} --dir {}`",
        dir.display()
    );
    Ok(())
}

/// The drill's other half: restarts a stopped auth server from its data dir.
async fn restart_auth(name: &str, dir: &Path) -> anyhow::Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no testnet in {}", dir.display()))?;
    let auth_dir = dir.join("auth");
    let files = AuthFiles::new(&auth_dir, name);
    if files.ports()?.is_none() {
        bail!(
            "no auth server {name:?} in {}: the servers are {}",
            dir.display(),
            auth_names(&auth_dir).join(", ")
        );
    }
    if let Some(pid) = files.running() {
        bail!("{name} is already running (pid {pid})");
    }
    let (pid, endpoint) = files.spawn().await?;
    println!(
        "{name} is back at {endpoint} (pid {pid}) and catches up from the leader; log: {}",
        files.file("log").display()
    );
    Ok(())
}
