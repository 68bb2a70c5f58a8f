//! Runs the external `sipp` SIP test client (Debian `sip-tester`, 3.6.1)
//! against a SIP service on loopback, with a scenario from
//! `tests/sip/scenarios/`, and returns what it saw: its exit code, its
//! message log (every SIP message sent and received) and its error log
//! (unexpected messages, failed checks), so a failing test prints them.
//!
//! Each run gets its own temporary directory and its own free SIP and media
//! ports: sipp binds `-mp` (audio) and `-mp`+2 (video) at start and dies
//! with exit code 254 if either is taken, and defaults to 5060 and 6000,
//! which parallel tests (or the service under test) would share.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Where the scenarios live.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sip/scenarios")
}

/// Makes sure `sipp` and `baresip` are on PATH, running
/// `tests/sip/install.sh` (apt-get) when one is missing.
pub fn ensure_installed() -> Result<()> {
    // Tests run in parallel: one apt-get at a time.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let on_path = |b: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if on_path("sipp") && on_path("baresip") {
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip/install.sh");
    let out = std::process::Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A free UDP port on 127.0.0.1 such that `port + 2` is free too (sipp's
/// media ports). Racy by nature: the sockets are closed before sipp binds.
fn free_port_pair() -> Result<u16> {
    for _ in 0..50 {
        let a = UdpSocket::bind("127.0.0.1:0")?;
        let p = a.local_addr()?.port();
        if p < u16::MAX - 2 && UdpSocket::bind(("127.0.0.1", p + 2)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free UDP port pair on 127.0.0.1")
}

/// One sipp run, built up before it starts.
#[derive(Debug, Clone)]
pub struct Sipp {
    scenario: String,
    server: SocketAddr,
    credentials: Option<(String, String)>,
    keys: Vec<(String, String)>,
    timeout: Duration,
}

impl Sipp {
    /// Runs `scenario` (a file name under [`scenarios_dir`]) against `server`,
    /// with a 30 s timeout.
    pub fn new(scenario: &str, server: SocketAddr) -> Self {
        Self {
            scenario: scenario.to_owned(),
            server,
            credentials: None,
            keys: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The user (`-s`, `[service]` in the scenario, and `-au`) and the
    /// digest password (`-ap`).
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// `-key NAME VALUE`: `[NAME]` in the scenario.
    pub fn key(mut self, name: &str, value: impl ToString) -> Self {
        self.keys.push((name.to_owned(), value.to_string()));
        self
    }

    /// How long sipp may run (`-timeout`, then a kill 5 s later).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs sipp to its end.
    pub async fn run(self) -> Result<SippOutcome> {
        self.spawn()?.wait().await
    }

    /// Starts sipp, to run while the test acts; [`RunningSipp::wait`] ends it.
    pub fn spawn(self) -> Result<RunningSipp> {
        let file = scenarios_dir().join(&self.scenario);
        anyhow::ensure!(file.is_file(), "no scenario {}", file.display());
        let dir = tempfile::tempdir()?;
        let path = |n: &str| dir.path().join(n);
        let secs = self.timeout.as_secs_f64().ceil().max(1.0) as u64;
        let mut cmd = tokio::process::Command::new("sipp");
        cmd.arg("-sf").arg(&file);
        cmd.args(["-i", "127.0.0.1", "-mi", "127.0.0.1"]);
        cmd.args(["-p", &free_port_pair()?.to_string()]);
        cmd.args(["-mp", &free_port_pair()?.to_string()]);
        cmd.args(["-m", "1", "-l", "1", "-nostdin"]);
        cmd.args(["-timeout", &format!("{secs}s"), "-timeout_error"]);
        cmd.arg("-trace_err")
            .arg("-error_file")
            .arg(path("errors.log"));
        cmd.arg("-trace_msg")
            .arg("-message_file")
            .arg(path("messages.log"));
        cmd.arg("-trace_logs")
            .arg("-log_file")
            .arg(path("logs.log"));
        if let Some((user, password)) = &self.credentials {
            cmd.args(["-s", user, "-au", user, "-ap", password]);
        }
        for (k, v) in &self.keys {
            cmd.args(["-key", k, v]);
        }
        cmd.arg(self.server.to_string());
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(path("stdout.txt"))?)
            .stderr(std::fs::File::create(path("stderr.txt"))?)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .context("starting sipp (tests/sip/install.sh installs it)")?;
        Ok(RunningSipp {
            child,
            dir,
            scenario: self.scenario,
            deadline: tokio::time::Instant::now() + self.timeout + Duration::from_secs(5),
        })
    }
}

/// A sipp run in progress; killed (SIGKILL by PID) when dropped.
#[derive(Debug)]
pub struct RunningSipp {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
    scenario: String,
    deadline: tokio::time::Instant,
}

impl RunningSipp {
    /// sipp's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The message log so far (sipp writes it as it goes).
    pub fn messages(&self) -> String {
        read(&self.dir.path().join("messages.log"))
    }

    /// Waits until `needle` occurs `count` times in the message log, e.g.
    /// `("NOTIFY sip:", 2)` for the second NOTIFY received.
    pub async fn wait_for_message(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<()> {
        let end = tokio::time::Instant::now() + timeout;
        while self.messages().matches(needle).count() < count {
            if tokio::time::Instant::now() > end {
                bail!(
                    "{needle:?} not seen {count} times in {timeout:?}; messages:\n{}",
                    self.messages()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Waits for sipp to end (killing it at its deadline) and collects its logs.
    pub async fn wait(mut self) -> Result<SippOutcome> {
        let status = tokio::time::timeout_at(self.deadline, self.child.wait()).await;
        let (code, killed) = match status {
            Ok(s) => (s?.code(), false),
            Err(_) => {
                self.child.start_kill()?;
                let _ = self.child.wait().await;
                (None, true)
            }
        };
        let f = |n: &str| read(&self.dir.path().join(n));
        Ok(SippOutcome {
            scenario: self.scenario.clone(),
            code,
            killed,
            messages: f("messages.log"),
            errors: f("errors.log"),
            logs: f("logs.log"),
            stdout: f("stdout.txt"),
            stderr: f("stderr.txt"),
        })
    }
}

fn read(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// What a finished sipp run saw.
#[derive(Debug, Clone)]
pub struct SippOutcome {
    /// The scenario file name.
    pub scenario: String,
    /// sipp's exit code: 0 the call succeeded, 1 it failed, 255 fatal or
    /// global timeout, 254 a port was taken; `None` if killed.
    pub code: Option<i32>,
    /// Whether the harness had to kill it.
    pub killed: bool,
    /// Every SIP message sent and received (`-trace_msg`).
    pub messages: String,
    /// Unexpected messages and failed checks (`-trace_err`).
    pub errors: String,
    /// Output of `<log>` actions (`-trace_logs`).
    pub logs: String,
    /// sipp's screen (final statistics).
    pub stdout: String,
    /// sipp's error output.
    pub stderr: String,
}

impl SippOutcome {
    /// Whether the scenario ran to its end with every check passed.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// `Ok` on success, else an error carrying everything sipp saw.
    pub fn check(&self) -> Result<()> {
        if self.success() {
            Ok(())
        } else {
            bail!("{self}")
        }
    }
}

impl std::fmt::Display for SippOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sipp {}: exit {:?}{}",
            self.scenario,
            self.code,
            if self.killed { " (killed)" } else { "" }
        )?;
        let tail: Vec<&str> = self.stdout.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        for (name, text) in [
            ("errors", self.errors.as_str()),
            ("logs", &self.logs),
            ("stderr", &self.stderr),
        ] {
            if !text.trim().is_empty() {
                writeln!(f, "--- {name}:\n{text}")?;
            }
        }
        writeln!(
            f,
            "--- messages:\n{}\n--- screen (tail):\n{}",
            self.messages,
            tail.join("\n")
        )
    }
}
