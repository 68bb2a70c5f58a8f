//! The web inbox in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver, by fantoccini), against `vmail node run --web`
//! on a `vmail testnet`. alice logs in from the page, sees bob's voicemail
//! arrive without a reload, plays it to the end (the audio element's
//! duration against the WAV's) and it leaves the inbox; she records from a
//! fake microphone and leaves it for carol, who fetches it with the CLI;
//! she blocks bob from the settings and bob's next leave is refused. The
//! gate refuses another origin, a missing token and a wrong Host.
//!
//! Screenshots go to `target/tmp/web-screenshots/` for a person to look at.
//! `tests/web/install.sh` installs Chromium and chromedriver; without them
//! the test says so and skips.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PASSWORD, Testnet, stderr, vmail_bin};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use vmail_node::core::wav;

/// alice's peer's largest voicemail.
const MAX_BYTES: usize = 1_000_000;

/// A child process killed when dropped, with its process group when it
/// leads one (chromedriver's browsers are in its group).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on a free loopback port, once it answers.
fn chromedriver() -> (Running, String) {
    let port = free_port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let running = Running(child);
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "chromedriver never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (running, format!("http://127.0.0.1:{port}"))
}

/// Headless Chromium whose microphone plays `mic` (a WAV file).
async fn browser(driver: &str, mic: &Path) -> Client {
    let args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--disable-gpu".to_owned(),
        "--window-size=1100,900".to_owned(),
        "--use-fake-ui-for-media-stream".to_owned(),
        "--use-fake-device-for-media-stream".to_owned(),
        format!("--use-file-for-fake-audio-capture={}", mic.display()),
        "--autoplay-policy=no-user-gesture-required".to_owned(),
    ];
    let caps = json!({ "goog:chromeOptions": { "args": args } });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a chromedriver session")
}

/// alice's daemon with the web inbox, and the URL it printed.
fn web_daemon(net: &Testnet, home: &Path, config: &Path) -> (Running, String, Arc<Mutex<String>>) {
    let mut child = net
        .command(
            home,
            &[
                "node",
                "run",
                "--web",
                "127.0.0.1:0",
                "--config",
                config.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let errors = Arc::new(Mutex::new(String::new()));
    let mut stderr_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = errors.clone();
    std::thread::spawn(move || {
        for line in stderr_lines.by_ref().map_while(Result::ok) {
            let mut all = sink.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(u) = line.trim().strip_prefix("web inbox: open ") {
            url = Some(u.to_owned());
            break;
        }
    }
    // The rest of its output is drained, so the daemon never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    let running = Running(child);
    (
        running,
        url.expect("the daemon prints the web inbox's URL"),
        errors,
    )
}

/// An HTTP answer, read raw.
struct Answer {
    code: u16,
    /// The status line and headers.
    head: String,
    body: String,
}

/// One raw HTTP/1.1 request. A server that answers before it read the
/// whole request may close on the rest: what it answered is read all the
/// same.
fn http(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(request);
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Answer {
        code: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// A request's head sent on a new connection, the rest (if any) never.
fn hold(addr: SocketAddr, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// The status code of the answer on `s`, within `timeout`; None when none
/// came.
fn status_within(s: &mut TcpStream, timeout: Duration) -> Option<u16> {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    String::from_utf8_lossy(&head[9..12]).parse().ok()
}

/// Polls `script` (a JS expression) until it is true, 60 s at most.
async fn until(c: &Client, what: &str, script: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let v = c.execute(&format!("return !!({script});"), vec![]).await;
        if matches!(v, Ok(Value::Bool(true))) {
            return;
        }
        if Instant::now() > end {
            screenshot(c, "failed").await;
            let page = c
                .execute("const x = new XMLHttpRequest(); x.open('GET', '/api/inbox', false); x.send(); return document.querySelector('main').innerText + ' | inbox: ' + x.responseText", vec![])
                .await;
            let message = c
                .execute(
                    "const m = document.getElementById('message'); return m.hidden ? '' : m.textContent",
                    vec![],
                )
                .await;
            panic!("{what}: not within 60 s (message: {message:?}; page: {page:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Voicemails the inbox lists.
async fn listed(c: &Client) -> Value {
    js(
        c,
        "return document.querySelectorAll('#inbox-list li').length",
    )
    .await
}

async fn click(c: &Client, css: &str) {
    let clicked = match c.find(Locator::Css(css)).await {
        Ok(e) => e.click().await,
        Err(e) => Err(e),
    };
    if let Err(e) = clicked {
        screenshot(c, "failed").await;
        panic!("clicking {css}: {e}");
    }
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

/// Saves what the page looks like now, for a person to look at.
async fn screenshot(c: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// A testnet with alice, bob and carol registered (bob and carol logged
/// in on the CLI), and alice's daemon serving the web inbox.
struct Net {
    net: Testnet,
    homes: [PathBuf; 3],
    daemon: Running,
    /// What the daemon wrote on stderr.
    errors: Arc<Mutex<String>>,
    url: String,
    addr: SocketAddr,
    token: String,
}

impl Net {
    fn up() -> Self {
        let _ = vmail_bin();
        let net = Testnet::up(3);
        let homes = ["alice", "bob", "carol"].map(|u| net.home(u));
        for (home, user) in homes.iter().zip(["alice", "bob", "carol"]) {
            net.ok(home, &["account", "register", user]);
        }
        net.ok(&homes[1], &["login", "bob"]);
        net.ok(&homes[2], &["login", "carol"]);
        // The testnet's election settings, and two whole copies: three
        // peers cannot hold the default RS(4,8).
        let testnet_config = net
            .env
            .iter()
            .find(|(k, _)| k == "VMAIL_NODE_CONFIG")
            .map(|(_, v)| std::fs::read_to_string(v).unwrap())
            .unwrap();
        let config = net.dir.path().join("alice-node.toml");
        std::fs::write(
            &config,
            format!("replicas = 2\nmax_voicemail_bytes = {MAX_BYTES}\n{testnet_config}"),
        )
        .unwrap();
        let (daemon, url, errors) = web_daemon(&net, &homes[0], &config);
        let (addr, token) = url
            .strip_prefix("http://")
            .and_then(|u| u.split_once("/#token="))
            .unwrap();
        Net {
            addr: addr.parse().unwrap(),
            token: token.to_owned(),
            url,
            net,
            homes,
            daemon,
            errors,
        }
    }

    /// `METHOD PATH` with these headers (`Host` the daemon's, unless given)
    /// and body; the status and body.
    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let a = self.answer(method, path, headers, body);
        (a.code, a.body)
    }

    /// [`Net::call`], the whole answer.
    fn answer(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let host = self.addr.to_string();
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| *k == "Host") {
            head.push_str(&format!("Host: {host}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        http(self.addr, &request)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_and_the_bounds_hold_on_a_live_daemon() {
    let n = Net::up();
    let token = n.token.as_str();
    let own = format!("http://{}", n.addr);
    // Another token: the first digit changed.
    let wrong = format!(
        "{}{}",
        if token.starts_with('0') { '1' } else { '0' },
        &token[1..]
    );

    // The same call passes with this start's token and fails for each one
    // thing wrong.
    let (code, body) = n.call("GET", "/api/session", &[("X-Vmail-Token", token)], b"");
    assert_eq!(code, 200, "{body}");
    let (code, body) = n.call("GET", "/api/session", &[], b"");
    assert_eq!(code, 401, "no token: {body}");
    assert!(body.contains("no token"), "{body}");
    let (code, body) = n.call("GET", "/api/session", &[("X-Vmail-Token", &wrong)], b"");
    assert_eq!(code, 401, "wrong token: {body}");
    assert!(body.contains("wrong token"), "{body}");
    let rebound = format!("rebound.example:{}", n.addr.port());
    for path in ["/api/session", "/"] {
        let (code, body) = n.call(
            "GET",
            path,
            &[("Host", &rebound), ("X-Vmail-Token", token)],
            b"",
        );
        assert_eq!(code, 403, "wrong Host on {path}: {body}");
        assert!(body.contains("DNS rebinding"), "{body}");
    }
    // A change from another site, even with the token, and a read.
    let block = br#"{"add":["carol"]}"#;
    for (method, path, body) in [
        ("POST", "/api/blocked", &block[..]),
        ("GET", "/api/inbox", b""),
    ] {
        let (code, text) = n.call(
            method,
            path,
            &[
                ("Origin", "http://evil.example"),
                ("X-Vmail-Token", token),
                ("Content-Type", "application/json"),
            ],
            body,
        );
        assert_eq!(code, 403, "another origin: {text}");
        assert!(
            text.contains("requests from http://evil.example are refused"),
            "{text}"
        );
    }
    // The page's own files need no token; they and the refusals carry
    // the security headers.
    let page = n.answer("GET", "/", &[], b"");
    assert_eq!(page.code, 200);
    assert!(
        page.body
            .contains("<script type=\"module\" src=\"/app.js\">"),
        "{}",
        page.body
    );
    let refused = n.answer("GET", "/api/inbox", &[], b"");
    assert_eq!(refused.code, 401);
    for a in [&page, &refused] {
        let head = a.head.to_ascii_lowercase();
        for header in [
            "content-security-policy: default-src 'none'; script-src 'self';",
            "frame-ancestors 'none'",
            "x-content-type-options: nosniff",
            "referrer-policy: no-referrer",
            "x-frame-options: deny",
            "cache-control: no-store",
        ] {
            assert!(head.contains(header), "{header} missing in:\n{}", a.head);
        }
        assert!(!head.contains("set-cookie"), "{}", a.head);
    }

    // Bad input gets a JSON error naming it.
    let with = |extra: (&'static str, &'static str)| {
        [("X-Vmail-Token", token), ("Origin", own.as_str()), extra]
    };
    let json = ("Content-Type", "application/json");
    for (path, body, code) in [
        ("/api/policy", &b"not json"[..], 400),
        ("/api/policy", br#"{"mode": "everybody"}"#, 400),
        ("/api/contacts", br#"{"add": ["no such name!"]}"#, 400),
        ("/api/nothing-here", b"{}", 404),
    ] {
        let (got, text) = n.call("POST", path, &with(json), body);
        let error = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        assert!(
            got == code && error.is_some(),
            "{path} {body:?}: {got} {text}"
        );
    }
    let (code, text) = n.call("GET", "/api/logout", &with(json), b"");
    assert_eq!(code, 405, "{text}");
    // A form over 64 KiB, and uploads over the peer's limit, are refused
    // whole, and say so.
    let (code, text) = n.call("POST", "/api/contacts", &with(json), &vec![b' '; 70 << 10]);
    assert_eq!(code, 413, "{text}");
    for len in [MAX_BYTES + 1, MAX_BYTES + (1 << 17)] {
        let (code, text) = n.call(
            "POST",
            "/api/leave?to=carol",
            &with(("Content-Type", "audio/wav")),
            &vec![b'x'; len],
        );
        assert_eq!(code, 413, "{len} bytes: {text}");
        assert!(text.contains("max_voicemail_bytes"), "{text}");
    }

    let bad_id = n.call("POST", "/api/voicemail/%FF/ack", &with(json), b"");
    assert!(
        bad_id.0 == 400 && bad_id.1.starts_with("{\"error\""),
        "{bad_id:?}"
    );

    // Two leaves whose bodies never come hold both places: a third is
    // refused before its body is read.
    let leave_head = format!(
        "POST /api/leave?to=carol HTTP/1.1\r\nHost: {}\r\nX-Vmail-Token: {token}\r\nOrigin: {own}\r\nContent-Length: 1000\r\n\r\n",
        n.addr
    );
    let hung: Vec<TcpStream> = (0..vmail_node::web::MAX_LEAVES)
        .map(|_| hold(n.addr, &leave_head))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (code, text) = n.call(
        "POST",
        "/api/leave?to=carol",
        &with(("Content-Type", "audio/wav")),
        b"RIFF",
    );
    assert_eq!(code, 429, "{text}");
    drop(hung);

    // Connections are capped: with every place held by a client that
    // sends nothing, the next waits, and is served once the header timeout
    // closes those.
    let idle: Vec<TcpStream> = (0..vmail_node::web::MAX_CONNECTIONS)
        .map(|_| hold(n.addr, ""))
        .collect();
    let session = format!(
        "GET /api/session HTTP/1.1\r\nHost: {}\r\nX-Vmail-Token: {token}\r\n\r\n",
        n.addr
    );
    let mut waiting = hold(n.addr, &session);
    let waited = Instant::now();
    assert_eq!(
        status_within(&mut waiting, Duration::from_secs(3)),
        None,
        "a connection past the cap was served"
    );
    assert_eq!(
        status_within(
            &mut waiting,
            vmail_node::web::HEADER_TIMEOUT + Duration::from_secs(10)
        ),
        Some(200),
        "the waiting connection was never served"
    );
    assert!(waited.elapsed() >= vmail_node::web::HEADER_TIMEOUT - Duration::from_secs(2));
    drop((idle, waiting));

    // Event streams are bounded, and each follows alice's push stream once
    // she logs in; with them open, the daemon still stops cleanly and at
    // once on SIGTERM.
    n.net.ok(&n.homes[0], &["login", "alice"]);
    let mut streams = Vec::new();
    let refused = loop {
        assert!(
            streams.len() <= vmail_node::web::MAX_WATCHERS,
            "no bound on event streams"
        );
        let mut s = TcpStream::connect(n.addr).unwrap();
        s.write_all(
            format!(
                "GET /api/events HTTP/1.1\r\nHost: {}\r\nX-Vmail-Token: {token}\r\n\r\n",
                n.addr
            )
            .as_bytes(),
        )
        .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        match &head[9..12] {
            b"200" => streams.push(s),
            b"429" => break streams.len(),
            other => panic!(
                "an event stream answered {}",
                String::from_utf8_lossy(other)
            ),
        }
    };
    assert_eq!(refused, vmail_node::web::MAX_WATCHERS);
    let mut daemon = n.daemon;
    let pid = nix::unistd::Pid::from_raw(daemon.0.id() as i32);
    let stopped = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // Each stream ends (its last chunk) rather than being cut at the grace.
    for mut s in streams {
        s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.ends_with(b"0\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => seen.extend_from_slice(&buf[..k]),
            }
        }
        assert!(
            seen.ends_with(b"0\r\n\r\n"),
            "an event stream did not end at the stop: {}",
            String::from_utf8_lossy(&seen)
        );
    }
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "the daemon did not stop within 30 s with event streams open"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let errors = n.errors.lock().unwrap().clone();
    assert!(!errors.contains("still in use"), "{errors}");
    assert!(
        !n.homes[0]
            .join("node")
            .join(vmail_node::web::URL_FILE)
            .exists(),
        "web.url outlived the daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_inbox_in_a_real_browser() {
    if !(on_path("chromium") && on_path("chromedriver")) {
        assert!(
            std::env::var_os("VMAIL_REQUIRE_BROWSER").is_none(),
            "VMAIL_REQUIRE_BROWSER is set but chromium or chromedriver is not on PATH"
        );
        eprintln!(
            "skipped: chromium and chromedriver are not on PATH; tests/web/install.sh installs them (.ci/run runs it)"
        );
        return;
    }
    let n = Net::up();
    let mic = n.net.dir.path().join("mic.wav");
    let o = n.net.vmail(
        n.net.dir.path(),
        &["testnet", "tone", mic.to_str().unwrap(), "--seconds", "5"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_driver, driver_url) = chromedriver();
    let c = browser(&driver_url, &mic).await;
    let [alice, bob, carol] = &n.homes;
    let mut result = drive(&c, &n.net, &n.url, [bob, carol]).await;
    if result.is_ok() {
        result = log_out(&c, &n.net, alice).await;
    }
    let _ = c.close().await;
    result.unwrap();
}

/// Logging out from the page when the CLI had already ended the session:
/// the page forgets it too, and says so.
async fn log_out(c: &Client, net: &Testnet, alice: &Path) -> Result<(), String> {
    net.ok(alice, &["logout"]);
    click(c, "#tabs button[data-tab=settings]").await;
    click(c, "#logout").await;
    until(
        c,
        "the login form again",
        "!document.getElementById('login').hidden",
    )
    .await;
    let message = js(c, "return document.getElementById('message').textContent").await;
    assert!(
        message
            .as_str()
            .unwrap()
            .contains("the server had already ended this session"),
        "{message}"
    );
    screenshot(c, "08-logged-out").await;
    Ok(())
}

/// What alice does in the page, and what bob and carol see.
async fn drive(
    c: &Client,
    net: &Testnet,
    url: &str,
    [bob, carol]: [&PathBuf; 2],
) -> Result<(), String> {
    // The page takes the token from the URL's fragment and drops it from
    // the address bar.
    c.goto(url).await.map_err(|e| e.to_string())?;
    until(
        c,
        "the token leaves the address bar",
        "location.hash === ''",
    )
    .await;
    until(
        c,
        "the login form",
        "!document.getElementById('login').hidden",
    )
    .await;
    type_into(c, "#login-user", "alice").await;
    type_into(c, "#login-pass", "not the password").await;
    click(c, "#login-submit").await;
    until(
        c,
        "a wrong password is named",
        "document.getElementById('message').textContent.includes('wrong password')",
    )
    .await;
    screenshot(c, "01-login-wrong-password").await;
    type_into(c, "#login-pass", PASSWORD).await;
    click(c, "#login-submit").await;
    until(
        c,
        "logged in",
        "document.getElementById('who').textContent === 'logged in as alice'",
    )
    .await;

    // bob leaves a voicemail; it appears without a reload.
    let tone = net.tone(2);
    let expected = wav::inspect(&std::fs::read(&tone).unwrap()).unwrap();
    let marker = js(c, "window.notReloaded = true; return 1").await;
    assert_eq!(marker, json!(1));
    net.ok(
        bob,
        &[
            "leave",
            "--replicas",
            "2",
            "--to",
            "alice",
            tone.to_str().unwrap(),
        ],
    );
    until(
        c,
        "bob's voicemail in the inbox",
        "document.querySelectorAll('#inbox-list li.voicemail').length === 1",
    )
    .await;
    assert_eq!(
        js(c, "return window.notReloaded === true").await,
        json!(true)
    );
    let row = js(
        c,
        "return document.querySelector('#inbox-list li').textContent",
    )
    .await;
    let row = row.as_str().unwrap();
    assert!(
        row.contains("bob") && row.contains("unknown caller"),
        "{row}"
    );
    assert!(row.contains("2.0 s"), "{row}");
    screenshot(c, "02-inbox").await;

    // Skipped to the end, it stays: only what was heard is acked.
    click(c, "#inbox-list li .play").await;
    until(
        c,
        "playback started",
        "document.getElementById('player').currentTime > 0",
    )
    .await;
    js(
        c,
        "const p = document.getElementById('player'); p.currentTime = p.duration - 0.05; return 1",
    )
    .await;
    until(
        c,
        "a skip to the end is not a hearing",
        "document.getElementById('message').textContent.includes('of it was played: it stays in your inbox')",
    )
    .await;
    assert_eq!(
        listed(c).await,
        json!(1),
        "a skipped voicemail left the inbox"
    );

    // Played to the end with "Keep unheard", it stays.
    click(c, "#keep").await;
    click(c, "#inbox-list li .play").await;
    until(
        c,
        "kept unheard",
        "document.getElementById('player').ended && document.getElementById('message').textContent.startsWith('kept unheard')",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        listed(c).await,
        json!(1),
        "a voicemail kept unheard left the inbox"
    );
    click(c, "#keep").await;

    // Played to the end: the audio element's duration is the WAV's, and once
    // it ended the voicemail is acked and leaves the inbox.
    click(c, "#inbox-list li .play").await;
    until(
        c,
        "playback started",
        "document.getElementById('player').currentTime > 0.3",
    )
    .await;
    screenshot(c, "03-playing").await;
    let duration = js(c, "return document.getElementById('player').duration").await;
    let duration = duration.as_f64().unwrap();
    let want = expected.duration_ms as f64 / 1000.0;
    assert!(
        (duration - want).abs() < 0.05,
        "the page plays {duration} s of a {want} s WAV"
    );
    until(
        c,
        "the played voicemail leaves the inbox",
        "document.getElementById('player').ended && document.querySelectorAll('#inbox-list li').length === 0",
    )
    .await;
    let sent = net.json(bob, &["sent"]);
    assert_eq!(
        sent["voicemails"][0]["recipients"][0]["state"], "delivered",
        "{sent}"
    );

    // carol, an unknown caller, becomes a contact from her voicemail, which
    // alice then deletes.
    let short = net.tone(1);
    net.ok(
        carol,
        &[
            "leave",
            "--replicas",
            "2",
            "--to",
            "alice",
            short.to_str().unwrap(),
        ],
    );
    until(
        c,
        "carol's voicemail in the inbox",
        "document.querySelector('#inbox-list li .add-contact')",
    )
    .await;
    click(c, "#inbox-list li .add-contact").await;
    until(
        c,
        "carol is a contact",
        "document.getElementById('message').textContent === 'carol is now a contact'",
    )
    .await;
    click(c, "#inbox-list li .delete").await;
    c.accept_alert().await.map_err(|e| e.to_string())?;
    until(
        c,
        "the deleted voicemail leaves the inbox",
        "document.querySelectorAll('#inbox-list li').length === 0",
    )
    .await;
    let sent = net.json(carol, &["sent"]);
    assert_eq!(
        sent["voicemails"][0]["recipients"][0]["state"], "delivered",
        "{sent}"
    );

    // Record from the (fake) microphone and leave it for carol.
    click(c, "#tabs button[data-tab=record]").await;
    click(c, "#rec-start").await;
    until(
        c,
        "recording",
        "document.getElementById('rec-status').textContent === 'Recording…'",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    click(c, "#rec-stop").await;
    until(
        c,
        "the recording is ready",
        "document.getElementById('rec-status').dataset.durationMs",
    )
    .await;
    let recorded: u64 = js(
        c,
        "return document.getElementById('rec-status').dataset.durationMs",
    )
    .await
    .as_str()
    .unwrap()
    .parse()
    .unwrap();
    assert!(
        (1500..=4000).contains(&recorded),
        "a 2.5 s recording came out {recorded} ms"
    );
    type_into(c, "#rec-to", "carol").await;
    click(c, "#rec-send").await;
    until(
        c,
        "the leave's receipt",
        "document.getElementById('rec-result').textContent.startsWith('Left for carol')",
    )
    .await;
    let stages = js(
        c,
        "return [...document.querySelectorAll('#rec-stages li.done')].map(l => l.dataset.stage)",
    )
    .await;
    assert_eq!(stages, json!(["encrypt", "grant", "upload", "deposit"]));
    screenshot(c, "04-recorded-and-left").await;
    let out = net.dir.path().join("carol-out");
    std::fs::create_dir_all(&out).unwrap();
    let fetched = net.json(carol, &["fetch", "--all", "--out", out.to_str().unwrap()]);
    let path = fetched["fetched"][0]["path"].as_str().unwrap().to_owned();
    let got = wav::inspect(&std::fs::read(&path).unwrap()).expect("carol gets a WAV");
    assert_eq!(
        got.duration_ms, recorded,
        "carol's copy lasts as long as the preview"
    );
    assert_eq!(fetched["fetched"][0]["sender"], "alice", "{fetched}");

    // Block bob from the settings: his next leave is refused.
    click(c, "#tabs button[data-tab=settings]").await;
    until(
        c,
        "the settings",
        "document.getElementById('retention-days').value !== ''",
    )
    .await;
    let contacts = js(c, "return document.getElementById('contacts').textContent").await;
    assert!(contacts.as_str().unwrap().contains("carol"), "{contacts}");
    type_into(c, "#block-name", "bob").await;
    click(c, "#block-add").await;
    until(
        c,
        "bob is blocked",
        "document.getElementById('blocked').textContent.includes('bob')",
    )
    .await;
    screenshot(c, "05-settings-blocked").await;
    let o = net.vmail(
        bob,
        &[
            "leave",
            "--replicas",
            "2",
            "--to",
            "alice",
            tone.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success(), "bob's leave went through a block");
    let err = stderr(&o);
    assert!(
        err.contains("alice does not accept voicemail from you"),
        "{err}"
    );

    click(c, "#tabs button[data-tab=sent]").await;
    until(
        c,
        "the sent list",
        "document.querySelectorAll('#sent-list tr').length === 1",
    )
    .await;
    let state = js(
        c,
        "return document.querySelector('#sent-list tr').textContent",
    )
    .await;
    assert!(state.as_str().unwrap().contains("carol: "), "{state}");
    screenshot(c, "06-sent").await;
    click(c, "#tabs button[data-tab=network]").await;
    until(
        c,
        "the network",
        "document.getElementById('net').textContent.includes('peer id')",
    )
    .await;
    screenshot(c, "07-network").await;
    Ok(())
}
