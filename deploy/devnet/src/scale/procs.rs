//! The scale harness's peers: `vmail node run` processes on loopback, each
//! with its own home, config and log, reached over its control socket; and
//! what the kernel says each one costs (`/proc/PID/stat` and `status`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use vmail_node::control::{ControlClient, SOCKET_FILE};

/// How long a started peer gets to answer on its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a peer gets to leave after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// What every peer of one run shares.
pub(super) struct Shared {
    /// The `vmail` program.
    pub(super) vmail: PathBuf,
    /// `VMAIL_AUTH`, `VMAIL_CA`, `VMAIL_CLUSTER_KEY`.
    pub(super) env: Vec<(String, String)>,
    /// The `[supernode]` election settings every peer uses.
    pub(super) advert_interval_secs: u64,
    /// `target_peers` of every peer.
    pub(super) target_peers: usize,
}

/// One `vmail node run` process.
pub(super) struct PeerProc {
    /// 1-based.
    pub(super) index: usize,
    /// `VMAIL_HOME`.
    pub(super) home: PathBuf,
    /// Whether it declares itself reachable and so stands for election.
    pub(super) standing: bool,
    child: Option<tokio::process::Child>,
    pid: i32,
}

impl PeerProc {
    /// Writes the peer's `node.toml` and starts it.
    pub(super) fn spawn(
        shared: &Shared,
        dir: &Path,
        index: usize,
        standing: bool,
        bootstrap: Option<&str>,
    ) -> anyhow::Result<Self> {
        let home = dir.join(format!("peer-{index}"));
        let data = home.join("node");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        // Loopback peers that stand say so and declare a bandwidth; the
        // other peers' dial checks still decide whether they may stand.
        let stand = if standing {
            "public = true\nbandwidth_kbps = 1000000\n"
        } else {
            "public = false\n"
        };
        let boot = bootstrap.map_or(String::new(), |b| format!("bootstrap = [\"{b}\"]\n"));
        // Every peer shares 127.0.0.1, so the per-IP share of a
        // supernode's relay slots (8 by default, against many peers behind
        // one address) is lifted to the slots themselves.
        let config = format!(
            "listen = [\"/ip4/127.0.0.1/tcp/0\"]\ntarget_peers = {}\n{boot}\n[supernode]\n{stand}\
             advert_interval_secs = {}\nmin_uptime_secs = 0\nrelay_slots_per_ip = 128\n",
            shared.target_peers, shared.advert_interval_secs
        );
        std::fs::write(data.join("node.toml"), config)?;
        let log = std::fs::File::create(home.join("node.log"))?;
        let child = tokio::process::Command::new(&shared.vmail)
            .args(["node", "run"])
            .env("VMAIL_HOME", &home)
            .envs(shared.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", shared.vmail.display()))?;
        let pid = child.id().context("a started peer has a pid")? as i32;
        Ok(Self {
            index,
            home,
            standing,
            child: Some(child),
            pid,
        })
    }

    /// Its control socket.
    pub(super) fn socket(&self) -> PathBuf {
        self.home.join("node").join(SOCKET_FILE)
    }

    /// A control connection, once the peer answers.
    pub(super) async fn connect(&mut self) -> anyhow::Result<ControlClient> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(c) = ControlClient::connect(&self.socket()).await {
                return Ok(c);
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "peer {} exited ({status}) before it answered; see {}",
                    self.index,
                    self.home.join("node.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "peer {} did not answer on {} within {START_TIMEOUT:?}",
                    self.index,
                    self.socket().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its CPU time so far (user and system) and resident memory.
    pub(super) fn usage(&self) -> Option<Usage> {
        usage(self.pid)
    }

    /// SIGKILLs it: a supernode dying without a word.
    pub(super) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not left within [`STOP_TIMEOUT`].
    pub(super) async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// What the kernel says a process has used.
#[derive(Debug, Clone, Copy)]
pub(super) struct Usage {
    /// User and system CPU time.
    pub(super) cpu: Duration,
    /// Resident memory, KiB.
    pub(super) rss_kib: u64,
}

/// Clock ticks per second in `/proc/PID/stat`: Linux's ABI fixes it at 100.
const USER_HZ: u64 = 100;

fn usage(pid: i32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is the
    // first, utime and stime the 12th and 13th.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Usage {
        cpu: Duration::from_millis(ticks * 1000 / USER_HZ),
        rss_kib,
    })
}
