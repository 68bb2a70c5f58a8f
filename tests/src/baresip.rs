//! Runs a real baresip (Debian, 1.0.0) headless as a SIP phone for one
//! account on a SIP service on loopback: it registers, subscribes to
//! message-summary (RFC 3842 message waiting) and prints what it gets; a
//! test waits for those lines with [`Baresip::wait_for`].
//!
//! The config dir is generated: no sound card is needed (audio source
//! `ausine`, player `aubridge`), no console UI (`stdio.so` cannot poll a
//! stdin that is not a tty or pipe), modules `mwi avcodec g711 ausine
//! aubridge account menu`; `menu` is what prints the MWI notifications.
//!
//! Why `mwi` first and `avcodec`: baresip 1.0.0's mwi module starts a 1 ms
//! timer at load that calls `mwi_subscribe` for every entry of its list
//! while appending to that list. If the REGISTER 200 (which creates the
//! first entry) is handled before that timer fires, as on a fast loopback
//! server it often is, baresip spins forever printing `mwi: subscribing`
//! and flooding the server with SUBSCRIBEs (seen in 2 of 5 runs). Loading
//! `mwi` first and then the slow-to-load `avcodec` makes the timer fire,
//! on an empty list, before any REGISTER is sent (12 of 12 runs clean);
//! [`Baresip::wait_for`] still fails fast if the loop shows up.
//!
//! Lines observed from baresip 1.0.0 (ANSI colour codes and trailing `\r`
//! are stripped here; PORT is the server's port):
//!
//! ```text
//! baresip is ready.
//! alice@127.0.0.1: {0/UDP/v4} 200 OK (SERVER-HEADER) [1 binding]    <- REGISTER 200 (the parentheses hold the
//!                                                                        Server header, empty without one)
//! reg: sip:alice@127.0.0.1:PORT: 403 Forbidden ()                    <- REGISTER refused (printed in red)
//! mwi: subscribing to messages for sip:alice@127.0.0.1:PORT          <- after the REGISTER 200
//! ----- MWI for sip:alice@127.0.0.1:PORT -----                       <- each NOTIFY, then its body line by line:
//! Messages-Waiting: yes                                              (or `no`)
//! Message-Account: sip:alice@127.0.0.1
//! Voice-Message: 1/0 (0/0)
//! ```
//!
//! What baresip sends: `REGISTER sip:127.0.0.1:PORT;transport=udp` with
//! `Contact: <sip:alice-0x55dbf16a41f0@127.0.0.1:LOCAL>;expires=60` (the
//! Contact user is the user plus a per-process suffix), digest `uri=` as the
//! Request-URI (with `;transport=udp`), `qop=auth, nc=00000001`; then
//! `SUBSCRIBE sip:alice@127.0.0.1:PORT` with `Event: message-summary`,
//! `Accept: application/simple-message-summary`, `Expires: 600` and the same
//! Contact, where the NOTIFYs must go. The account line carries `;mwi=yes`
//! (1.0.0 compares the value with "yes"; an account without the parameter
//! subscribed too).

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

/// How many recent lines an error shows.
const SHOWN: usize = 40;

/// A running baresip; killed (SIGKILL by PID) when dropped.
#[derive(Debug)]
pub struct Baresip {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    recent: VecDeque<String>,
    subscribing: usize,
}

/// A port on 127.0.0.1 free for both UDP and TCP (baresip's `sip_listen`
/// binds both).
fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP on 127.0.0.1")
}

/// `line` without ANSI escape sequences and trailing white space.
fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out.trim_end().to_owned()
}

fn forward(stream: impl AsyncRead + Unpin + Send + 'static, tx: mpsc::Sender<String>) {
    tokio::spawn(async move {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        while matches!(r.read_until(b'\n', &mut buf).await, Ok(n) if n > 0) {
            if tx
                .send(clean(&String::from_utf8_lossy(&buf)))
                .await
                .is_err()
            {
                return;
            }
            buf.clear();
        }
    });
}

impl Baresip {
    /// Starts baresip registering `user` with `password` at `server` (UDP),
    /// with MWI on. Must be called inside a Tokio runtime.
    pub fn start(server: SocketAddr, user: &str, password: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = format!(
            "poll_method\tepoll\n\
             sip_listen\t{addr}\n\
             call_max_calls\t1\n\
             audio_player\taubridge,nil\n\
             audio_source\tausine,440\n\
             audio_alert\taubridge,nil\n\
             module_path\t/usr/lib/baresip/modules\n\
             module\tmwi.so\n\
             module\tavcodec.so\n\
             module\tg711.so\n\
             module\tausine.so\n\
             module\taubridge.so\n\
             module_tmp\taccount.so\n\
             module_app\tmenu.so\n"
        );
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).with_context(|| format!("writing {name}"))
        };
        write("config", &config)?;
        write(
            "accounts",
            &format!(
                "<sip:{user}@{server};transport=udp>;auth_pass={password};mwi=yes;regint=60\n"
            ),
        )?;
        write("contacts", "")?;
        let mut child = tokio::process::Command::new("baresip")
            .arg("-f")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting baresip (tests/sip/install.sh installs it)")?;
        let (tx, lines) = mpsc::channel(10_000);
        forward(child.stdout.take().context("stdout")?, tx.clone());
        forward(child.stderr.take().context("stderr")?, tx);
        Ok(Self {
            child,
            dir,
            addr,
            lines,
            recent: VecDeque::new(),
            subscribing: 0,
        })
    }

    /// Where baresip listens for SIP (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its generated config directory.
    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    /// baresip's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the next output line containing `needle` (lines before
    /// it are consumed) and returns it; errs after `timeout` or if baresip
    /// exits, with the last 40 lines.
    pub async fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(end, self.lines.recv()).await {
                Ok(Some(line)) => {
                    if self.recent.len() == SHOWN {
                        self.recent.pop_front();
                    }
                    self.recent.push_back(line.clone());
                    if line.starts_with("mwi: subscribing") {
                        self.subscribing += 1;
                        if self.subscribing > 3 {
                            bail!(
                                "baresip's mwi module is looping (see the module docs); last lines:\n{}",
                                self.tail()
                            );
                        }
                    }
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Ok(None) => bail!(
                    "baresip exited before printing {needle:?}; last lines:\n{}",
                    self.tail()
                ),
                Err(_) => bail!(
                    "baresip printed no {needle:?} in {timeout:?}; last lines:\n{}",
                    self.tail()
                ),
            }
        }
    }

    fn tail(&self) -> String {
        Vec::from(self.recent.clone()).join("\n")
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        // SIGTERM is not enough: baresip 1.0.0 waits for the MWI
        // unsubscription ("ua: in use (1) by app module") and may never end.
        let _ = self.child.start_kill();
    }
}
