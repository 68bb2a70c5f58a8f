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
fn web_daemon(net: &Testnet, home: &Path, config: &Path) -> (Running, String) {
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
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
    (running, url.expect("the daemon prints the web inbox's URL"))
}

/// One raw HTTP/1.1 request; the status code and body.
fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (code, body)
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

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_inbox_in_a_real_browser() {
    if !(on_path("chromium") && on_path("chromedriver")) {
        eprintln!(
            "skipped: chromium and chromedriver are not on PATH; tests/web/install.sh installs them (.ci/run runs it)"
        );
        return;
    }
    let _ = vmail_bin();
    let net = Testnet::up(3);
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|u| net.home(u));
    for (home, user) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        net.ok(home, &["account", "register", user]);
    }
    net.ok(&bob, &["login", "bob"]);
    net.ok(&carol, &["login", "carol"]);
    // The testnet's election settings, and two whole copies: three peers
    // cannot hold the default RS(4,8).
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
    let (_daemon, url) = web_daemon(&net, &alice, &config);
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|u| u.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let token = url.split("token=").nth(1).unwrap();
    let cookie = format!("vmail_web_{}={token}", addr.port());

    // The gate, on the live daemon: the same request passes with the
    // right Host and cookie, and fails for each one thing wrong.
    let session = |host: &str, cookie: &str, extra: &str| {
        http(
            addr,
            &format!(
                "GET /api/session HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n{extra}Connection: close\r\n\r\n"
            ),
        )
    };
    let host = addr.to_string();
    let (code, body) = session(&host, &cookie, "");
    assert_eq!(code, 200, "{body}");
    let csrf = serde_json::from_str::<Value>(&body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, body) = session(&host, "", "");
    assert_eq!(code, 401, "no token: {body}");
    assert!(body.contains("no token"), "{body}");
    let (code, body) = session(&host, &format!("vmail_web_{}=0{token}", addr.port()), "");
    assert_eq!(code, 401, "wrong token: {body}");
    let (code, body) = session(&format!("rebound.example:{}", addr.port()), &cookie, "");
    assert_eq!(code, 403, "wrong Host: {body}");
    assert!(body.contains("DNS rebinding"), "{body}");
    let (code, body) = session(&host, &cookie, "Origin: http://evil.example\r\n");
    assert_eq!(code, 403, "another origin: {body}");
    // A change from another origin, even with the cookie and CSRF token.
    let block = |origin: &str| {
        let body = r#"{"add":["carol"]}"#;
        http(
            addr,
            &format!(
                "POST /api/blocked HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nOrigin: {origin}\r\nX-Vmail-Csrf: {csrf}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (code, body) = block("http://evil.example");
    assert_eq!(code, 403, "{body}");
    // An upload over the peer's limit is refused whole, and says so.
    for len in [MAX_BYTES + 1, MAX_BYTES + (1 << 17)] {
        let mut req = format!(
            "POST /api/leave?to=carol HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nOrigin: http://{host}\r\nX-Vmail-Csrf: {csrf}\r\nContent-Type: audio/wav\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        req.push_str(&"x".repeat(len));
        let (code, body) = http(addr, &req);
        assert_eq!(code, 413, "{len} bytes: {body}");
        assert!(body.contains("max_voicemail_bytes"), "{body}");
    }

    let mic = net.dir.path().join("mic.wav");
    let o = net.vmail(
        net.dir.path(),
        &["testnet", "tone", mic.to_str().unwrap(), "--seconds", "5"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_driver, driver_url) = chromedriver();
    let c = browser(&driver_url, &mic).await;
    let result = drive(&c, &net, &url, [&bob, &carol]).await;
    // The page holds one event stream; more pages may open others, up to
    // the bound, and the next is refused.
    let mut streams = Vec::new();
    let refused = loop {
        assert!(
            streams.len() <= vmail_node::web::MAX_WATCHERS,
            "no bound on event streams"
        );
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(
            format!("GET /api/events HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n")
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
    assert_eq!(
        refused,
        vmail_node::web::MAX_WATCHERS - 1,
        "the page's own stream counts"
    );
    drop(streams);
    let logged_out = match &result {
        Ok(()) => log_out(&c, &net, &alice).await,
        Err(_) => Ok(()),
    };
    let _ = c.close().await;
    result.unwrap();
    logged_out.unwrap();
}

/// Logging out from the settings ends the session for the CLI too.
async fn log_out(c: &Client, net: &Testnet, alice: &Path) -> Result<(), String> {
    click(c, "#tabs button[data-tab=settings]").await;
    click(c, "#logout").await;
    until(
        c,
        "the login form again",
        "!document.getElementById('login').hidden",
    )
    .await;
    screenshot(c, "08-logged-out").await;
    let o = net.vmail(alice, &["whoami"]);
    if o.status.success() {
        return Err(format!(
            "alice is still logged in for the CLI: {}",
            common::stdout(&o)
        ));
    }
    Ok(())
}

/// What alice does in the page, and what bob and carol see.
async fn drive(
    c: &Client,
    net: &Testnet,
    url: &str,
    [bob, carol]: [&PathBuf; 2],
) -> Result<(), String> {
    // The token URL sets the cookie and sends the browser to the page
    // without it.
    c.goto(url).await.map_err(|e| e.to_string())?;
    let here = c.current_url().await.unwrap();
    assert_eq!(here.query(), None, "the token left the address bar: {here}");
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
    let listed = js(
        c,
        "return document.querySelectorAll('#inbox-list li').length",
    )
    .await;
    assert_eq!(listed, json!(1), "a voicemail kept unheard left the inbox");
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
