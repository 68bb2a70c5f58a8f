//! The testnet's auth servers: each its own process (`testnet auth-serve`)
//! with its files in `DIR/auth`, and the fault drills that kill and
//! restart them.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ed25519_dalek::VerifyingKey;
use nix::sys::signal::Signal;
use vmail_auth::cluster::admin;
use vmail_auth::datadir::{self, InitOptions};
use vmail_auth::tls::ClusterTls;

use super::{DOWN_TIMEOUT, ours, read_pid, signal_and_wait, write_atomic};
use crate::local_auth::{Harness, LocalServer, LocalServerError};

/// How long one auth server gets to found, join or restart and be ready.
const AUTH_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a restarted auth server retries binding its old ports, which
/// the killed process may have left in TIME_WAIT.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `kill-auth-leader` waits for a running leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// An auth server of the testnet, by its files in `DIR/auth`.
pub(super) struct AuthFiles {
    auth_dir: PathBuf,
    /// The server's name, `auth-N`.
    pub(super) name: String,
}

impl AuthFiles {
    pub(super) fn new(auth_dir: &Path, name: &str) -> Self {
        Self {
            auth_dir: auth_dir.to_owned(),
            name: name.to_owned(),
        }
    }
    pub(super) fn file(&self, ext: &str) -> PathBuf {
        self.auth_dir.join(format!("{}.{ext}", self.name))
    }
    pub(super) fn data_dir(&self) -> PathBuf {
        self.auth_dir.join(&self.name)
    }
    /// Its process id, if that process runs.
    pub(super) fn running(&self) -> Option<i32> {
        read_pid(&self.file("pid")).filter(|&pid| ours(pid, &self.name))
    }
    /// The (API, Raft) ports it was first given.
    pub(super) fn ports(&self) -> anyhow::Result<Option<(u16, u16)>> {
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
    pub(super) fn endpoint(&self) -> Option<String> {
        std::fs::read_to_string(self.file("ready"))
            .ok()
            .map(|s| s.trim().to_owned())
    }
    /// Starts its process in the background, detached from this one, and
    /// waits until it is ready.
    pub(super) async fn spawn(&self) -> anyhow::Result<(i32, String)> {
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
pub(super) async fn stop_auth_servers(auth_dir: &Path) -> anyhow::Result<usize> {
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

/// One auth server in the foreground: founds the group (auth-1), joins it
/// through auth-1 (the others), or restarts from its data dir on the ports
/// it had. Writes its pid and, once it serves, its ready file.
pub(super) async fn auth_serve(name: &str, dir: &Path) -> anyhow::Result<()> {
    let stop = crate::stop_signal()?;
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
    stop.await;
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

/// How long `up` waits for the group's key generation.
const GROUP_KEY_TIMEOUT: Duration = Duration::from_secs(60);

/// The group key as `auth-1` reports it once its key generation completed
/// (the group needs three servers for one) and every member holds a share
/// of it, so that the peers and the CLI pin it. A server that joined after
/// the key was made (a learner until then) is approved by the key's
/// threshold of share holders, as their operators would (`vmail-auth
/// cluster approve`): the testnet runs them all.
pub(super) async fn group_key(auth_dir: &Path) -> anyhow::Result<VerifyingKey> {
    let files = AuthFiles::new(auth_dir, "auth-1");
    let (_, raft) = files
        .ports()?
        .context("auth-1 has no ports file: it never started")?;
    let url = format!("https://127.0.0.1:{raft}");
    let tls = admin::member_tls(&files.data_dir())?;
    let deadline = Instant::now() + GROUP_KEY_TIMEOUT;
    let mut approved = std::collections::BTreeSet::new();
    loop {
        let status = admin::status(&url, &tls).await;
        if let Ok(admin::GroupStatus {
            group_key: Some(k),
            members,
            ..
        }) = &status
        {
            let name_of = |id: &u64| members.iter().find(|m| m.id == *id).map(|m| &m.member.name);
            let unshared: Vec<&admin::MemberStatus> = members
                .iter()
                .filter(|m| !k.holders.contains(&m.id))
                .collect();
            if unshared.is_empty() {
                return VerifyingKey::from_bytes(&k.key)
                    .context("auth-1 reports a group key that is not an Ed25519 key");
            }
            for joined in unshared {
                for holder in k.holders.iter().take(k.threshold as usize) {
                    let Some(name) = name_of(holder) else {
                        continue;
                    };
                    if approved.contains(&(joined.id, *holder)) {
                        continue;
                    }
                    let member_dir = AuthFiles::new(auth_dir, name).data_dir();
                    // Until its key is recorded, or while the group elects,
                    // it fails; the next round tries again.
                    match admin::approve_join(&member_dir, &url, &joined.member.name, None).await {
                        Ok(_) => {
                            approved.insert((joined.id, *holder));
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, joined = %joined.member.name, "approval not taken yet");
                        }
                    }
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the auth group made no group key within {GROUP_KEY_TIMEOUT:?} (auth-1 says: {}); \
                 see {}",
                match status {
                    Ok(s) if s.group_key.is_some() =>
                        "some voters hold no share of it yet".to_owned(),
                    Ok(_) => "no key yet".to_owned(),
                    Err(e) => e.to_string(),
                },
                files.file("log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The drill: asks the servers who leads, and SIGKILLs that process.
pub(super) async fn kill_auth_leader(dir: &Path) -> anyhow::Result<()> {
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
pub(super) async fn restart_auth(name: &str, dir: &Path) -> anyhow::Result<()> {
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
