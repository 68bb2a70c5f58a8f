//! `vmail testnet up|down`: an auth server and N peers on loopback, in a
//! background process, for trying the CLI by hand. `up` returns once the
//! network is ready and prints the `export` lines that point the CLI and
//! a user's own `vmail node run` at it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use vmail_node::localnet;

use super::TestnetCommand;

const PID_FILE: &str = "testnet.pid";
const ENV_FILE: &str = "testnet.env";
const LOG_FILE: &str = "testnet.log";
/// How long `up` waits for the network to be ready.
const UP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `down` waits for the processes to leave.
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) async fn run(cmd: &TestnetCommand) -> anyhow::Result<()> {
    match cmd {
        TestnetCommand::Up { peers, dir } => up(*peers, dir).await,
        TestnetCommand::Down { dir } => down(dir).await,
        TestnetCommand::Serve { peers, dir } => serve(*peers, dir).await,
    }
}

fn alive(pid: i32) -> bool {
    // No signal: only checks that the process exists.
    nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
}

fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid).then_some(pid)
}

async fn up(peers: usize, dir: &Path) -> anyhow::Result<()> {
    if !(1..=64).contains(&peers) {
        bail!("--peers {peers} is out of range: use 1 to 64");
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
        .args(["testnet", "serve", "--peers", &peers.to_string(), "--dir"])
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
                "testnet with {peers} peers is up in {}; stop it with `vmail testnet down --dir {}`",
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
            let _ = child.kill();
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
        println!("no testnet runs in {}", dir.display());
        return Ok(());
    };
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM)
        .with_context(|| format!("stopping testnet process {pid}"))?;
    let deadline = Instant::now() + DOWN_TIMEOUT;
    while alive(pid) {
        if Instant::now() > deadline {
            bail!("testnet process {pid} did not stop within {DOWN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("testnet in {} stopped (data kept)", dir.display());
    Ok(())
}

async fn serve(peers: usize, dir: &Path) -> anyhow::Result<()> {
    let dir: PathBuf = dir.to_owned();
    std::fs::write(dir.join(PID_FILE), std::process::id().to_string())?;
    let auth = localnet::start_auth(&dir.join("auth")).await?;
    let started = localnet::start_peers(&dir.join("peers"), peers, Vec::new(), |_| {}).await;
    let peers = match started {
        Ok(p) => p,
        Err(e) => {
            auth.stop().await?;
            return Err(e.into());
        }
    };
    let boot = peers[0].listen_addrs().await?;
    let env = format!(
        "export VMAIL_AUTH={}\nexport VMAIL_CA={}\nexport VMAIL_CLUSTER_KEY={}\nexport VMAIL_BOOTSTRAP={}\n",
        auth.endpoint,
        dir.join("auth")
            .join(vmail_auth::datadir::files::CA_CERT)
            .display(),
        hex::encode(auth.cluster_key.as_bytes()),
        boot.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let tmp = dir.join(format!("{ENV_FILE}.tmp"));
    std::fs::File::create(&tmp)?.write_all(env.as_bytes())?;
    std::fs::rename(&tmp, dir.join(ENV_FILE))?;
    println!("testnet ready:\n{env}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("stopping");
    for p in peers {
        p.stop().await;
    }
    auth.stop().await?;
    let _ = std::fs::remove_file(dir.join(ENV_FILE));
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    Ok(())
}
