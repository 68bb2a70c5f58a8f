//! The README's walk-through, with the real binary: `vmail testnet up`,
//! users on their own homes, a daemon for one of them and one-job peers for
//! the others, `leave`, `inbox`, `fetch`, and `testnet down`; the testnet's
//! supernode election, and its peers' ids and ports across `down` and
//! `up`; and the auth fault drills `kill-auth-leader` and `restart-auth`.

use std::path::Path;
use std::process::Output;

use sha2::{Digest, Sha256};

mod common;

struct Testnet {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Testnet {
    async fn up(peers: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut net = Self {
            dir,
            env: Vec::new(),
        };
        net.start(peers, 3).await;
        net
    }

    /// `testnet up` on this dir; keeps the exported variables and returns
    /// what `up` printed.
    async fn start(&mut self, peers: usize, auth_servers: usize) -> String {
        let out = self
            .testnet(&[
                "up",
                "--peers",
                &peers.to_string(),
                "--auth-servers",
                &auth_servers.to_string(),
            ])
            .await;
        assert!(out.status.success(), "testnet up: {}", stderr(&out));
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        self.env = printed
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<Vec<_>>();
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        // A group of three makes a threshold key, which the CLI then pins.
        let group: &[&str] = if auth_servers >= 3 {
            &["VMAIL_GROUP_KEY"]
        } else {
            &[]
        };
        let want: Vec<&str> = ["VMAIL_AUTH", "VMAIL_CA", "VMAIL_CLUSTER_KEY"]
            .iter()
            .chain(group)
            .chain(&["VMAIL_BOOTSTRAP", "VMAIL_NODE_CONFIG"])
            .copied()
            .collect();
        assert_eq!(names, want);
        printed
    }

    fn command(&self, home: &Path, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(common::vmail());
        cmd.args(args)
            .env("VMAIL_HOME", home)
            .env("VMAIL_PASSWORD", "a long enough password")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        cmd
    }

    async fn vmail(&self, home: &Path, args: &[&str]) -> Output {
        self.command(home, args).output().await.unwrap()
    }

    async fn ok(&self, home: &Path, args: &[&str]) -> String {
        let out = self.vmail(home, args).await;
        assert!(
            out.status.success(),
            "vmail {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `vmail testnet ARGS --dir DIR`.
    async fn testnet(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(common::vmail())
            .arg("testnet")
            .args(args)
            .arg("--dir")
            .arg(self.dir.path())
            .output()
            .await
            .unwrap()
    }

    async fn down(self) {
        self.stop().await;
    }

    /// `testnet down`, keeping the dir for another `up`.
    async fn stop(&self) {
        let out = self.testnet(&["down"]).await;
        assert!(out.status.success(), "testnet down: {}", stderr(&out));
    }

    fn var(&self, name: &str) -> &str {
        &self.env.iter().find(|(k, _)| k == name).unwrap().1
    }

    /// Each peer's (id, port), from its key and its port file.
    fn peers(&self, n: usize) -> Vec<(libp2p::PeerId, u16)> {
        let peers = self.dir.path().join("peers");
        (1..=n)
            .map(|i| {
                let key = peers
                    .join(format!("peer-{i}"))
                    .join(vmail_node::peer::NODE_KEY_FILE);
                assert!(key.exists(), "{} is missing", key.display());
                let id =
                    vmail_node::peer::load_or_create_node_key(&peers.join(format!("peer-{i}")))
                        .unwrap()
                        .public()
                        .to_peer_id();
                let port = std::fs::read_to_string(peers.join(format!("peer-{i}.port")))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                (id, port)
            })
            .collect()
    }
}

/// Polls `vmail status` of the daemon in `home` (60 s at most) until
/// `check` holds; returns that status.
async fn status_until(net: &Testnet, home: &Path, check: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..240 {
        let out = net.vmail(home, &["status"]).await;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && check(&last) {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("`vmail status` never got there in 60 s; last:\n{last}")
}

/// The supernode `vmail status` says its peer is attached to, if any.
fn attached_to(status: &str) -> Option<libp2p::PeerId> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("attached to    "))
        .and_then(|s| s.parse().ok())
}

/// `testnet up` elects supernodes among its peers and attaches the rest;
/// a user's own `vmail node run` with the exported variables attaches to
/// one; `down` and `up` bring every peer back with its id and port, and
/// the daemon back to a supernode; a port taken meanwhile is named.
#[tokio::test(flavor = "multi_thread")]
async fn peers_elect_supernodes_and_keep_ids_and_ports_across_down_and_up() {
    const PEERS: usize = 4;
    let mut net = Testnet {
        dir: tempfile::tempdir().unwrap(),
        env: Vec::new(),
    };
    let printed = net.start(PEERS, 1).await;
    let elected = printed
        .lines()
        .find_map(|l| l.strip_prefix("# supernodes "))
        .unwrap_or_else(|| panic!("no election line in:\n{printed}"));
    let serving = elected.matches("peer-").count();
    assert!(serving >= 1, "{elected}");
    assert!(
        elected.ends_with(&format!("the other {} peers attached", PEERS - serving)),
        "{elected}"
    );
    let peers = net.peers(PEERS);
    let bootstrap = net.var("VMAIL_BOOTSTRAP").to_owned();
    let config = std::fs::read_to_string(net.var("VMAIL_NODE_CONFIG")).unwrap();
    assert!(config.contains("advert_interval_secs = 2"), "{config}");

    // alice's own daemon, with nothing but the exported variables.
    let homes = tempfile::tempdir().unwrap();
    let alice = homes.path().join("alice");
    net.ok(&alice, &["account", "register", "alice"]).await;
    let daemon = net
        .command(&alice, &["node", "run"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ids: Vec<libp2p::PeerId> = peers.iter().map(|(id, _)| *id).collect();
    let status = status_until(&net, &alice, |s| {
        attached_to(s).is_some_and(|sn| ids.contains(&sn))
    })
    .await;
    assert!(status.contains("role           peer"), "{status}");
    // The testnet's peers advertise; the daemon declares no bandwidth, so
    // it cannot stand and keeps its advert back.
    assert!(
        status.contains(&format!("elected from {PEERS} advertising peers")),
        "{status}"
    );

    // Down: the daemon loses its supernode.
    net.stop().await;
    status_until(&net, &alice, |s| attached_to(s).is_none()).await;

    // Up on the same dir: the same ids on the same ports, the same
    // bootstrap address, and the daemon attaches again by itself.
    let printed = net.start(PEERS, 1).await;
    assert!(printed.contains("# supernodes peer-"), "{printed}");
    assert_eq!(net.peers(PEERS), peers);
    assert_eq!(net.var("VMAIL_BOOTSTRAP"), bootstrap);
    status_until(&net, &alice, |s| {
        attached_to(s).is_some_and(|sn| ids.contains(&sn))
    })
    .await;

    // A recorded port taken by someone else: `up` names it and the fix.
    net.stop().await;
    let (_, port) = peers[1];
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = net
        .testnet(&["up", "--peers", &PEERS.to_string(), "--auth-servers", "1"])
        .await;
    assert!(!out.status.success());
    let why = stderr(&out);
    assert!(
        why.contains(&format!(
            "peer-2 cannot listen on its port 127.0.0.1:{port} again"
        )) && why.contains("peer-2.port"),
        "{why}"
    );
    drop(squatter);
    net.stop().await;

    let pid = nix::unistd::Pid::from_raw(daemon.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(daemon.wait_with_output().await.unwrap().status.success());
}

/// `vmail fetch --all --out OUT` as the user of `home`; the one file saved.
async fn fetch_one(net: &Testnet, home: &Path, out: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(out).unwrap();
    let fetched = net
        .ok(home, &["fetch", "--all", "--out", out.to_str().unwrap()])
        .await;
    assert!(fetched.contains("fetched"), "{fetched}");
    let mut files: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn leave_a_wav_for_two_users_and_fetch_it_with_the_cli() {
    let net = Testnet::up(5).await;
    let homes = tempfile::tempdir().unwrap();
    let home = |u: &str| homes.path().join(u);
    for u in ["bob", "alice", "carol"] {
        net.ok(&home(u), &["account", "register", u]).await;
    }

    // alice runs a daemon: it joins the testnet through VMAIL_BOOTSTRAP,
    // and `vmail login` hands it her session.
    let daemon = net
        .command(&home("alice"), &["node", "run"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let socket = home("alice").join("node").join("control.sock");
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let login = net.ok(&home("alice"), &["login", "alice"]).await;
    assert!(login.contains("handed to the peer daemon"), "{login}");
    let status = net.ok(&home("alice"), &["node", "status"]).await;
    assert!(status.contains("user           alice"), "{status}");
    let health = net.ok(&home("alice"), &["node", "health"]).await;
    assert!(health.contains("is serving"), "{health}");
    // alice's daemon declares no bandwidth (the testnet's node.toml leaves
    // it unset), so it never stands: the testnet's peers serve.
    assert!(status.contains("role           peer"), "{status}");

    // bob and carol have no daemon: each command starts a one-job peer.
    net.ok(&home("bob"), &["login", "bob"]).await;
    net.ok(&home("carol"), &["login", "carol"]).await;
    let wav = homes.path().join("hello.wav");
    let audio = vmail_node::core::wav::generate(3, 8000, 11);
    std::fs::write(&wav, &audio).unwrap();
    let left = net
        .ok(
            &home("bob"),
            &[
                "leave",
                "--to",
                "alice,carol",
                "--erasure",
                "2/4",
                wav.to_str().unwrap(),
            ],
        )
        .await;
    assert!(left.contains("as RS(2,4): 4 shards"), "{left}");
    assert!(left.contains("audio/wav, 3.0 s"), "{left}");
    // The one-job peer kept what it learned of the holders for the next job.
    let learned = std::fs::metadata(home("bob").join("node/observations.bin")).unwrap();
    assert!(learned.len() > 0);

    let inbox = net.ok(&home("alice"), &["inbox"]).await;
    assert!(inbox.contains("bob") && inbox.contains("3.0 s"), "{inbox}");

    for u in ["alice", "carol"] {
        let file = fetch_one(&net, &home(u), &homes.path().join(format!("out-{u}"))).await;
        assert_eq!(file.extension().unwrap(), "wav");
        assert_eq!(
            Sha256::digest(std::fs::read(&file).unwrap()),
            Sha256::digest(&audio)
        );
        let inbox = net.ok(&home(u), &["inbox"]).await;
        assert!(inbox.contains("no voicemail waiting"), "{inbox}");
    }

    // Bad input: a missing file, and an unknown recipient, store nothing.
    let out = net
        .vmail(&home("bob"), &["leave", "--to", "alice", "/no/such.wav"])
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read /no/such.wav"),
        "{}",
        stderr(&out)
    );
    let out = net
        .vmail(
            &home("bob"),
            &[
                "leave",
                "--to",
                "mallory",
                "--replicas",
                "2",
                wav.to_str().unwrap(),
            ],
        )
        .await;
    assert!(
        stderr(&out).contains("unknown recipient \"mallory\""),
        "{}",
        stderr(&out)
    );
    let out = net
        .vmail(
            &home("alice"),
            &["fetch", "00112233445566778899aabbccddeeff"],
        )
        .await;
    assert!(
        stderr(&out).contains("no voicemail 00112233445566778899aabbccddeeff"),
        "{}",
        stderr(&out)
    );

    // No daemon and no bootstrap peer: the error says what to do.
    let out = net
        .command(&home("carol"), &["fetch", "--all"])
        .env_remove("VMAIL_BOOTSTRAP")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no vmail peer is running")
            && stderr(&out).contains("VMAIL_BOOTSTRAP"),
        "{}",
        stderr(&out)
    );

    // SIGTERM: the daemon leaves gracefully and exits 0.
    let pid = nix::unistd::Pid::from_raw(daemon.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = daemon.wait_with_output().await.unwrap();
    assert!(out.status.success());
    // It reports the hand-off: what moved, or that there was nothing to move.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("handed off") || stdout.contains("nothing to hand off"),
        "{stdout}"
    );
    net.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_without_a_login_says_to_log_in() {
    let home = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(common::vmail())
        .args(["fetch", "--all"])
        .env("VMAIL_HOME", home.path())
        .env_remove("VMAIL_BOOTSTRAP")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not logged in"), "{}", stderr(&out));
}

/// The auth server's state as the group reports it, by its name.
async fn auth_status(net: &Testnet, name: &str) -> vmail_auth::cluster::admin::GroupStatus {
    let auth = net.dir.path().join("auth");
    let ports = std::fs::read_to_string(auth.join(format!("{name}.ports"))).unwrap();
    let raft = ports.split_whitespace().nth(1).unwrap();
    let tls = vmail_auth::cluster::admin::member_tls(&auth.join("auth-1")).unwrap();
    vmail_auth::cluster::admin::status(&format!("https://127.0.0.1:{raft}"), &tls)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_leader_killed_by_hand_then_restarted() {
    let net = Testnet::up(3).await;
    let endpoints = &net.env.iter().find(|(k, _)| k == "VMAIL_AUTH").unwrap().1;
    assert_eq!(endpoints.split(',').count(), 3, "{endpoints}");
    // The CLI and the peers pin the group key the group reports; the
    // leaves below are checked against it, grant, roster and proof.
    let pinned = &net
        .env
        .iter()
        .find(|(k, _)| k == "VMAIL_GROUP_KEY")
        .unwrap()
        .1;
    let reported = auth_status(&net, "auth-2")
        .await
        .group_key
        .expect("a group key");
    assert_eq!(*pinned, hex::encode(reported.key));
    assert_eq!((reported.threshold, reported.holders.len()), (2, 3));
    let homes = tempfile::tempdir().unwrap();
    let home = |u: &str| homes.path().join(u);
    for u in ["alice", "bob"] {
        net.ok(&home(u), &["account", "register", u]).await;
        net.ok(&home(u), &["login", u]).await;
    }
    let wav = homes.path().join("before.wav");
    let audio = vmail_node::core::wav::generate(2, 8000, 5);
    std::fs::write(&wav, &audio).unwrap();
    net.ok(
        &home("bob"),
        &[
            "leave",
            "--to",
            "alice",
            "--replicas",
            "2",
            wav.to_str().unwrap(),
        ],
    )
    .await;

    // The drill: the leader's process is SIGKILLed.
    let out = net.testnet(&["kill-auth-leader"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let killed = said
        .strip_prefix("killed ")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("{said}"))
        .to_owned();
    assert!(said.contains("restart-auth"), "{said}");
    assert!(!net.dir.path().join(format!("auth/{killed}.ready")).exists());

    // The deposit acknowledged before the kill is still there, and a fetch
    // (list, ack) works against the two survivors.
    let inbox = net.ok(&home("alice"), &["inbox"]).await;
    assert!(inbox.contains("bob"), "{inbox}");
    let file = fetch_one(&net, &home("alice"), &homes.path().join("out")).await;
    assert_eq!(
        Sha256::digest(std::fs::read(&file).unwrap()),
        Sha256::digest(&audio)
    );

    // Bad input: unknown names and a server that already runs.
    let out = net.testnet(&["restart-auth", "auth-9"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no auth server \"auth-9\"")
            && stderr(&out).contains("auth-1, auth-2, auth-3"),
        "{}",
        stderr(&out)
    );
    let alive = ["auth-1", "auth-2", "auth-3"]
        .into_iter()
        .find(|n| *n != killed)
        .unwrap();
    let out = net.testnet(&["restart-auth", alive]).await;
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));

    // The other half: it comes back on its old ports and catches up with
    // what the group committed while it was gone.
    let out = net.testnet(&["restart-auth", &killed]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is back"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let leader = auth_status(&net, alive).await;
    let mut caught_up = false;
    for _ in 0..100 {
        let s = auth_status(&net, &killed).await;
        if s.last_applied >= leader.last_applied && s.leader.is_some() {
            caught_up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        caught_up,
        "{killed} did not catch up to {}",
        leader.last_applied
    );

    // And the whole group serves a new voicemail.
    net.ok(
        &home("bob"),
        &[
            "leave",
            "--to",
            "alice",
            "--replicas",
            "2",
            wav.to_str().unwrap(),
        ],
    )
    .await;
    let inbox = net.ok(&home("alice"), &["inbox"]).await;
    assert!(inbox.contains("bob"), "{inbox}");

    // Two drills in a row: the second waits for the survivors to elect a
    // new leader and kills that one; a third finds no majority and says so.
    for _ in 0..2 {
        let out = net.testnet(&["kill-auth-leader"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = net.testnet(&["kill-auth-leader"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("lost its majority"),
        "{}",
        stderr(&out)
    );
    net.down().await;
}

/// The setup that once left a voicemail nobody could fetch: 50 concurrent
/// `vmail leave` processes, and the auth leader SIGKILLed about a second
/// in. Every leave that fails says whether anything was deposited, alice's
/// inbox holds exactly the voicemails whose leaves reported success, and
/// `fetch --all` gets every one of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_killed_during_50_cli_leaves_leaves_the_inbox_equal_to_the_successes() {
    const LEAVES: usize = 50;
    let net = Testnet::up(5).await;
    let homes = tempfile::tempdir().unwrap();
    let home = |u: &str| homes.path().join(u);
    for u in ["alice", "bob"] {
        net.ok(&home(u), &["account", "register", u]).await;
        net.ok(&home(u), &["login", u]).await;
    }
    let files: Vec<_> = (0..LEAVES)
        .map(|i| {
            let f = homes.path().join(format!("m{i}.wav"));
            std::fs::write(&f, vmail_node::core::wav::generate(1, 8000, i as u64)).unwrap();
            f
        })
        .collect();
    let started = std::time::Instant::now();
    let bob = home("bob");
    let leaves = futures::future::join_all(files.iter().map(|f| {
        let args = [
            "leave".to_owned(),
            "--to".into(),
            "alice".into(),
            "--replicas".into(),
            "2".into(),
            f.to_str().unwrap().to_owned(),
        ];
        let mut cmd = net.command(&bob, &[]);
        cmd.args(args);
        async move { cmd.output().await.unwrap() }
    }));
    let kill = async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let out = net.testnet(&["kill-auth-leader"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        started.elapsed()
    };
    let (outs, killed) = tokio::join!(leaves, kill);
    let done = started.elapsed();
    let mut succeeded = std::collections::HashSet::new();
    let mut failed = 0;
    for out in &outs {
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("left voicemail "))
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or_else(|| panic!("no voicemail id in: {text}"));
            succeeded.insert(id.to_owned());
        } else {
            let why = stderr(out).to_lowercase();
            assert!(
                why.contains("nothing was stored")
                    || why.contains("nothing was deposited")
                    || why.contains("outcome is unknown"),
                "a failed leave says whether anything was deposited: {why}"
            );
            assert!(
                !why.contains("outcome is unknown"),
                "the group recovered within the retry window: {why}"
            );
            if failed == 0 {
                println!("a failed leave: {}", why.lines().last().unwrap_or_default());
            }
            failed += 1;
        }
    }
    println!(
        "leader killed after {killed:?}, leaves done after {done:?}: {} succeeded, {failed} failed",
        succeeded.len()
    );
    assert!(killed < done, "the leader died while the leaves ran");
    let inbox = net.ok(&home("alice"), &["inbox"]).await;
    let listed: std::collections::HashSet<String> = inbox
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.len() == 32 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        listed, succeeded,
        "alice's inbox is exactly the successful leaves"
    );
    let out = homes.path().join("fetched");
    std::fs::create_dir_all(&out).unwrap();
    net.ok(
        &home("alice"),
        &["fetch", "--all", "--out", out.to_str().unwrap()],
    )
    .await;
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), succeeded.len());
    net.down().await;
}
