//! The `vmail` binary against a real network: `vmail testnet up` (one auth
//! server and a few peers, in background processes, on loopback) and users
//! on their own homes. Each command's `--json` document is parsed with
//! serde_json; identity keys per account and across homes; repeated
//! recipients; the fetch errors; a closed stdout; and the note a leave
//! prints when a holder does not answer.
//!
//! `vmail testnet` runs `vmail-devnet`, which must be built beside `vmail`
//! (`cargo test --workspace` builds both).

mod common;

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use common::{Testnet, daemon, stderr, stdout};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn is_hex(v: &Value, len: usize) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Every command that reports data, as JSON: register, login, whoami,
/// leave (its receipt), inbox, fetch (what was written where, with its
/// hash), sent, policy, contacts, block, report, discard, retention and
/// logout.
#[test]
fn every_data_command_as_json() {
    let net = Testnet::up(3);
    let (alice, bob) = (net.home("alice"), net.home("bob"));

    let reg = net.json(&alice, &["account", "register", "alice"]);
    assert_eq!(reg["username"], "alice");
    assert!(is_hex(&reg["identity_key"], 64), "{reg}");
    assert!(reg["auth_server"].as_str().unwrap().starts_with("https://"));
    let login = net.json(&alice, &["login", "alice"]);
    assert_eq!(login["identity_key"], reg["identity_key"], "{login}");
    assert_eq!(login["identity_rotated"], false, "{login}");
    assert_eq!(login["previous_identity_key"], Value::Null);
    assert!(is_hex(&login["master_key_id"], 32), "{login}");
    net.account(&bob, "bob");

    let me = net.json(&alice, &["whoami"]);
    assert_eq!(me["username"], "alice");
    assert_eq!(me["identity_key"], reg["identity_key"]);
    assert!(me["certificate"]["serial"].as_u64().is_some(), "{me}");
    assert!(me["retention_secs"].as_u64().unwrap() > 0);
    let names: Vec<&str> = me["allowances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"voicemails_per_hour"), "{me}");

    let inbox = net.json(&alice, &["inbox"]);
    assert_eq!(inbox["username"], "alice");
    assert_eq!(inbox["voicemails"], serde_json::json!([]));

    // `inbox --watch --json`: one voicemail per line as they arrive.
    let mut watch = net
        .command(&alice, &["inbox", "--watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, arrived) = std::sync::mpsc::channel();
    let watched = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(watched)) {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // The stream is open once the server has it; a voicemail left before
    // would be listed at its start anyway.
    std::thread::sleep(Duration::from_millis(500));

    // Bob leaves alice a voicemail: the receipt names every holder whole.
    let tone = net.tone(1);
    let left = net.json(
        &bob,
        &[
            "leave",
            "--to",
            "alice",
            "--replicas",
            "2",
            tone.to_str().unwrap(),
        ],
    );
    assert!(is_hex(&left["id"], 32), "{left}");
    let id = left["id"].as_str().unwrap().to_owned();
    assert_eq!(
        left["recipients"],
        serde_json::json!([{"username": "alice", "first_contact": true}])
    );
    assert_eq!(left["repeated"], serde_json::json!([]));
    assert_eq!(left["redundancy"], "2 replicas");
    assert_eq!(left["content_type"], "audio/wav");
    assert_eq!(left["duration_ms"], 1000);
    assert_eq!(
        left["size"].as_u64().unwrap(),
        std::fs::metadata(&tone).unwrap().len()
    );
    let shards = left["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2, "{left}");
    for s in shards {
        let holder: libp2p::PeerId = s["holder"].as_str().unwrap().parse().unwrap();
        assert_eq!(holder.to_string(), s["holder"]);
        assert!(is_hex(&s["identifier"], 64), "{s}");
    }
    for t in ["dht", "crypto", "grant", "transfer", "deposit"] {
        assert!(left["timings_us"][t].as_u64().is_some(), "{t}: {left}");
    }

    let line = arrived.recv_timeout(Duration::from_secs(30));
    let _ = watch.kill();
    let _ = watch.wait();
    let seen: Value =
        serde_json::from_str(&line.expect("no line from inbox --watch --json")).unwrap();
    assert_eq!(seen["id"], id.as_str(), "{seen}");
    assert_eq!(seen["sender"], "bob", "{seen}");

    let inbox = net.json(&alice, &["inbox"]);
    let waiting = &inbox["voicemails"][0];
    assert_eq!(waiting["id"], id.as_str());
    assert_eq!(waiting["sender"], "bob");
    assert_eq!(waiting["first_contact"], true);
    assert_eq!(waiting["anonymous"], false);
    assert_eq!(waiting["size"], left["size"]);

    let sent = net.json(&bob, &["sent"]);
    assert_eq!(sent["voicemails"][0]["id"], id.as_str());
    assert_eq!(
        sent["voicemails"][0]["recipients"],
        serde_json::json!([{"username": "alice", "state": "pending", "since": null}])
    );

    // Fetch: what was written where, with its hash.
    let out = net.home("alice-out");
    let fetched = net.json(&alice, &["fetch", "--all", "--out", out.to_str().unwrap()]);
    assert_eq!(fetched["failed"], serde_json::json!([]));
    let f = &fetched["fetched"][0];
    assert_eq!(f["id"], id.as_str());
    let path = PathBuf::from(f["path"].as_str().unwrap());
    let content = std::fs::read(&path).unwrap();
    assert_eq!(content, std::fs::read(&tone).unwrap());
    assert_eq!(f["sha256"], hex::encode(Sha256::digest(&content)));
    assert_eq!(f["size"].as_u64().unwrap(), content.len() as u64);
    let holders = f["holders"].as_array().unwrap();
    assert!(!holders.is_empty(), "{f}");
    let left_holders: Vec<&Value> = shards.iter().map(|s| &s["holder"]).collect();
    for h in holders {
        assert!(left_holders.contains(&&h["holder"]), "{h} not in {left}");
    }
    assert_eq!(f["key_erased"], true, "{f}");
    assert_eq!(f["sender"], "bob");

    let sent = net.json(&bob, &["sent"]);
    let r = &sent["voicemails"][0]["recipients"][0];
    assert_eq!(r["state"], "delivered", "{sent}");
    assert!(r["since"].as_u64().is_some(), "{sent}");

    // Policy and lists.
    let policy = net.json(&alice, &["policy", "show"]);
    assert_eq!(policy["mode"], "contacts+first-contact");
    assert_eq!(policy["accept_anonymous"], false);
    let policy = net.json(&alice, &["policy", "set", "anyone", "--accept-anonymous"]);
    assert_eq!(policy["mode"], "anyone");
    assert_eq!(policy["accept_anonymous"], true);
    let edit = net.json(&alice, &["contacts", "add", "bob", "bob"]);
    assert_eq!(edit["list"], "contacts");
    assert_eq!(edit["change"], "add");
    assert_eq!(edit["users"], serde_json::json!(["bob"]));
    assert_eq!(edit["policy"]["contacts"], serde_json::json!(["bob"]));
    let list = net.json(&alice, &["contacts", "list"]);
    assert_eq!(list["contacts"], serde_json::json!(["bob"]));
    let edit = net.json(&alice, &["contacts", "remove", "bob"]);
    assert_eq!(edit["policy"]["contacts"], serde_json::json!([]));
    let edit = net.json(&alice, &["block", "bob"]);
    assert_eq!(edit["list"], "blocked");
    assert_eq!(edit["policy"]["blocked"], serde_json::json!(["bob"]));
    let edit = net.json(&alice, &["unblock", "bob"]);
    assert_eq!(edit["change"], "remove");
    assert_eq!(edit["policy"]["blocked"], serde_json::json!([]));

    // A second voicemail, reported and then discarded.
    let left = net.json(
        &bob,
        &[
            "leave",
            "--to",
            "alice",
            "--replicas",
            "2",
            tone.to_str().unwrap(),
        ],
    );
    let id2 = left["id"].as_str().unwrap();
    let report = net.json(&alice, &["report", id2]);
    assert_eq!(report["id"], id2);
    assert_eq!(report["sender"], "bob");
    assert_eq!(report["newly_blocked"], true);
    let discard = net.json(&alice, &["discard", id2]);
    assert_eq!(discard["id"], id2);
    assert_eq!(discard["key_erased"], true, "{discard}");
    assert!(discard["shards_deleted"].as_u64().is_some());

    let kept = net.json(&alice, &["account", "set", "retention", "2d"]);
    assert_eq!(kept["username"], "alice");
    assert_eq!(kept["retention_secs"], 2 * 86_400);

    let out = net.json(&alice, &["logout"]);
    assert_eq!(
        out,
        serde_json::json!({"username": "alice", "revoked": true})
    );
    let out = net.json(&alice, &["logout"]);
    assert_eq!(out, serde_json::json!({"username": null, "revoked": false}));
}

/// Two accounts registered from one home get two keys; a login from a
/// second home rotates the account's key and says what the first home
/// must do.
#[test]
fn identity_keys_per_account_and_across_homes() {
    let net = Testnet::up(1);
    let home = net.home("shared");
    let a = net.json(&home, &["account", "register", "alice"]);
    let b = net.json(&home, &["account", "register", "bob"]);
    assert_ne!(
        a["identity_key"], b["identity_key"],
        "one home, one key per account"
    );
    for (user, registered) in [("alice", &a), ("bob", &b)] {
        let login = net.json(&home, &["login", user]);
        assert_eq!(login["identity_rotated"], false, "{login}");
        let key = net.json(&home, &["whoami"])["identity_key"].clone();
        assert_eq!(key, registered["identity_key"], "{user}");
    }
    for user in ["alice", "bob"] {
        assert!(
            home.join(format!("keystore/identities/{user}.key"))
                .exists()
        );
    }

    // Alice from a second home: a new key, certified, and said.
    let other = net.home("laptop");
    let o = net.vmail(&other, &["login", "alice"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = stdout(&o);
    let old = a["identity_key"].as_str().unwrap();
    assert!(said.contains("(rotated)"), "{said}");
    assert!(
        said.contains(&format!("identity key rotated (this home had no key for this account, so it made one): it replaces {old}")),
        "{said}"
    );
    assert!(said.contains("no longer matches"), "{said}");
    assert!(said.contains("run `vmail login alice` again"), "{said}");

    // Back on the first home: the login rotates it back, and says so in
    // JSON too.
    let login = net.json(&home, &["login", "alice"]);
    assert_eq!(login["identity_rotated"], true, "{login}");
    assert_eq!(login["identity_key"], old);
    assert_ne!(login["previous_identity_key"], Value::Null);
    assert_ne!(login["previous_identity_key"], old);
    // Logging in again changes nothing.
    let login = net.json(&home, &["login", "alice"]);
    assert_eq!(login["identity_rotated"], false, "{login}");
}

/// `leave --to alice,alice` leaves it once for alice and says so once; a
/// fetch of an id that was never in the inbox says so, with the id once.
#[test]
fn repeated_recipients_and_fetch_errors() {
    let net = Testnet::up(3);
    let (alice, bob) = (net.home("alice"), net.home("bob"));
    net.account(&alice, "alice");
    net.account(&bob, "bob");
    let tone = net.tone(1);
    let o = net.vmail(
        &bob,
        &[
            "leave",
            "--to",
            "alice,alice",
            "--replicas",
            "2",
            tone.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let said = stdout(&o);
    let first = said.lines().next().unwrap();
    assert!(first.contains(" for alice (first contact) ("), "{first}");
    assert!(!said.contains("alice, alice"), "{said}");
    assert_eq!(
        stderr(&o)
            .matches("note: alice named more than once in --to; each recipient gets it once")
            .count(),
        1,
        "{}",
        stderr(&o)
    );
    // Holders are printed whole by leave, and by fetch too.
    let holders: Vec<String> = said
        .lines()
        .filter_map(|l| l.split(" at ").nth(1))
        .map(str::to_owned)
        .collect();
    assert_eq!(holders.len(), 2, "{said}");
    let inbox = net.json(&alice, &["inbox"]);
    assert_eq!(inbox["voicemails"].as_array().unwrap().len(), 1, "{inbox}");
    let id = inbox["voicemails"][0]["id"].as_str().unwrap().to_owned();
    let out = net.home("out");
    let fetched = net.ok(&alice, &["fetch", &id, "--out", out.to_str().unwrap()]);
    let line = fetched
        .lines()
        .find(|l| l.contains("shard "))
        .unwrap_or_else(|| panic!("no holders line in:\n{fetched}"));
    assert!(
        holders.iter().any(|h| line.contains(&format!("from {h}"))),
        "{line} names none of {holders:?} whole"
    );

    // The same id again: it is not in the inbox any more.
    let unknown = "0f".repeat(16);
    for gone in [id.as_str(), unknown.as_str()] {
        let o = net.vmail(&alice, &["fetch", gone, "--out", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert_eq!(err.matches(gone).count(), 1, "the id once: {err}");
        assert!(
            err.contains(&format!("no voicemail {gone} is in your inbox")),
            "{err}"
        );
        assert!(err.contains("run `vmail inbox`"), "{err}");
        assert!(!err.contains("stay in your inbox"), "{err}");
        assert!(!err.contains("stays in your inbox"), "{err}");
    }
}

/// Runs `vmail ARGS` with stdout a pipe whose reader already left.
fn into_closed_pipe(mut cmd: std::process::Command) -> Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    cmd.stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// `vmail account register ... | head -1` and `vmail login ... | head -1`
/// end quietly, and their work is done.
#[test]
fn register_and_login_into_a_closed_pipe() {
    let net = Testnet::up(1);
    let home = net.home("alice");
    for args in [&["account", "register", "alice"][..], &["login", "alice"]] {
        let o = into_closed_pipe(net.command(&home, args));
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(o.stderr.is_empty(), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(net.json(&home, &["whoami"])["username"], "alice");
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
}

/// A holder that stopped answering (SIGSTOP: its connections stay open,
/// nothing comes back) stalls its shard until the transfer times out; the
/// leave says which holder did not answer instead of sitting silent.
#[test]
fn a_holder_that_does_not_answer_is_named() {
    use nix::sys::signal::Signal;
    let net = Testnet::up(2);
    let (alice, bob, mute) = (net.home("alice"), net.home("bob"), net.home("mute"));
    net.account(&alice, "alice");
    net.account(&bob, "bob");
    // Bob's daemon and a silent holder join the testnet's two peers.
    let mut silent = daemon(&net, &mute, 2);
    let mut sender = daemon(&net, &bob, 3);
    let mute_id = net.json(&mute, &["status"])["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    signal(&silent, Signal::SIGSTOP);
    // Three copies on three candidates: the silent one must take one.
    let tone = net.tone(1);
    let o = net.vmail(
        &bob,
        &[
            "leave",
            "--to",
            "alice",
            "--replicas",
            "3",
            tone.to_str().unwrap(),
        ],
    );
    signal(&silent, Signal::SIGCONT);
    for child in [&mut sender, &mut silent] {
        signal(child, Signal::SIGTERM);
        let _ = child.wait();
    }
    let err = stderr(&o);
    assert!(
        err.contains(&format!("note: holder {mute_id} did not answer for shard ")),
        "no note about {mute_id}:\n{}\n{err}",
        stdout(&o)
    );
}

/// On a terminal each progress bar ends on a line of its own: the next
/// phase's bar and the summary never start on the line of the one before.
#[test]
fn progress_bars_end_before_the_next_line() {
    let net = Testnet::up(2);
    let (alice, bob) = (net.home("alice"), net.home("bob"));
    net.account(&alice, "alice");
    net.account(&bob, "bob");
    let tone = net.tone(20);
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&size, None).unwrap();
    let mut cmd = net.command(
        &bob,
        &[
            "leave",
            "--to",
            "alice",
            "--replicas",
            "2",
            tone.to_str().unwrap(),
        ],
    );
    cmd.stdout(Stdio::from(pty.slave)).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Only the child holds the terminal now: its exit ends the reading.
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::fs::File::from(pty.master), &mut seen);
        seen
    });
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let screen = String::from_utf8_lossy(&reader.join().unwrap()).replace("\x1b[2K", "");
    let lines: Vec<&str> = screen
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .collect();
    let summary = lines
        .iter()
        .find(|l| l.contains("left voicemail"))
        .unwrap_or_else(|| panic!("no summary in {screen:?}"));
    assert!(summary.starts_with("left voicemail"), "{summary:?}");
    for phase in ["encrypt ", "upload  "] {
        let bar_lines: Vec<&&str> = lines.iter().filter(|l| l.contains(phase)).collect();
        assert_eq!(bar_lines.len(), 1, "{phase}: {bar_lines:?}");
        // The bar is cleared and its phase left as one line.
        let last = bar_lines[0].rsplit('\r').next().unwrap();
        assert!(
            last.starts_with(phase) && last.contains(" in ") && last.ends_with(" ms"),
            "{phase}: {last:?}"
        );
    }
}
