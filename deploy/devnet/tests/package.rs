//! The Debian packages and their systemd units (deploy/pkg/), with the
//! binaries this test run built: `deploy/pkg/build.sh` builds `vmail` and
//! `vmail-auth`, `deploy/pkg/debian-image.sh` makes a minimal Debian image
//! from this host's own installed packages (no registry), and in a fresh
//! container without a network the packages are installed with `dpkg -i`.
//! There is no systemd in the container, so the test runs each unit's
//! `ExecStart=` as systemd would: as its `User=`, with its `Environment=`
//! and `EnvironmentFile=` settings, `%i` and `$VARIABLES` expanded, and its
//! `StateDirectory=` made. It founds an auth group with `vmail-auth init`
//! as the packaged `vmail-auth` user and starts `vmail-auth.service`'s
//! command, publishes the group's `client.toml` the way docs/OPERATIONS.md
//! tells operators to, starts `vmail-node@alice.service`'s command, and
//! registers and logs alice in from a login shell, which finds her daemon
//! and the auth group through the package's /etc/profile.d script.
//!
//! It needs a Docker daemon and a Debian host (dpkg); without them it says
//! so and passes. It removes its container and image when it ends.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

const PASSWORD: &str = "package test password";

/// The test's container and image; removed on drop, pass or fail.
struct Container {
    name: String,
    image: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::env::var_os("VMAIL_KEEP").is_some() {
            eprintln!(
                "VMAIL_KEEP is set: container {} and image {} stay (docker rm -f {0}; docker rmi {1})",
                self.name, self.image
            );
            return;
        }
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

impl Container {
    /// `docker exec` as USER with the environment given; the output.
    fn exec_as(&self, user: &str, env: &[(String, String)], argv: &[&str]) -> Output {
        let mut cmd = Command::new("docker");
        cmd.args(["exec", "-u", user]);
        for (k, v) in env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        cmd.arg(&self.name).args(argv);
        cmd.output().expect("running docker exec")
    }

    /// `sh -c SCRIPT` as root; panics with its output unless it succeeds.
    fn sh(&self, script: &str) -> String {
        let out = self.exec_as("root", &[], &["sh", "-ec", script]);
        assert!(
            out.status.success(),
            "in the container, `{script}` failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The logs of every unit started so far.
    fn unit_logs(&self) -> String {
        let out = self.exec_as(
            "root",
            &[],
            &[
                "sh",
                "-c",
                "for f in /run/unit-*.log; do echo \"== $f\"; cat \"$f\"; done",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits up to `secs` for `check` to hold; panics naming `what`, with the
    /// units' logs, when it does not.
    fn wait_for(&self, secs: u64, what: &str, mut check: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !check() {
            assert!(
                Instant::now() < until,
                "{what} within {secs} s; the units' logs:\n{}",
                self.unit_logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Starts a systemd unit's `ExecStart=` in the background as systemd
    /// would (see [`Unit`]), its output in /run/unit-NAME.log; returns the
    /// unit as read.
    fn start_unit(&self, file: &str, instance: &str) -> Unit {
        let text = self.sh(&format!("cat {file}"));
        let mut unit = Unit::parse(&text, instance, |path| {
            let out = self.exec_as("root", &[], &["cat", path]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        });
        unit.env.push(("PATH".into(), "/usr/sbin:/usr/bin".into()));
        for dir in &unit.state_dirs {
            self.sh(&format!(
                "install -d -o {u} -g $(id -gn {u}) -m {m} /var/lib/{dir}",
                u = unit.user,
                m = unit.state_dir_mode
            ));
        }
        let log = format!(
            "/run/unit-{}.log",
            Path::new(file).file_stem().unwrap().to_string_lossy()
        );
        self.sh(&format!("touch {log} && chmod 666 {log}"));
        let mut cmd = Command::new("docker");
        cmd.args(["exec", "-d", "-u", &unit.user]);
        for (k, v) in &unit.env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        cmd.arg(&self.name)
            .args(["sh", "-c", &format!("exec \"$@\" >>{log} 2>&1"), "unit"])
            .args(&unit.exec_start);
        let status = cmd.status().expect("docker exec -d");
        assert!(status.success(), "starting {file}'s ExecStart failed");
        unit
    }
}

/// What a systemd unit runs, with systemd's expansion rules for the subset
/// the packaged units use.
#[derive(Debug)]
struct Unit {
    user: String,
    env: Vec<(String, String)>,
    exec_start: Vec<String>,
    state_dirs: Vec<String>,
    state_dir_mode: String,
}

impl Unit {
    fn parse(text: &str, instance: &str, read: impl Fn(&str) -> Option<String>) -> Unit {
        let spec = |s: &str| s.replace("%i", instance).replace("%%", "%");
        let mut unit = Unit {
            user: "root".into(),
            env: Vec::new(),
            exec_start: Vec::new(),
            state_dirs: Vec::new(),
            state_dir_mode: "0755".into(),
        };
        let mut exec = None;
        for line in text.lines().map(str::trim) {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if line.starts_with('#') {
                continue;
            }
            match key {
                "User" => unit.user = spec(value),
                "Environment" => {
                    for word in split_words(&spec(value)) {
                        let (k, v) = word.split_once('=').expect("Environment=K=V");
                        set(&mut unit.env, k, v);
                    }
                }
                "EnvironmentFile" => {
                    let (optional, path) = match value.strip_prefix('-') {
                        Some(p) => (true, p),
                        None => (false, value),
                    };
                    match read(&spec(path)) {
                        Some(file) => {
                            for l in file.lines().map(str::trim) {
                                if l.is_empty() || l.starts_with('#') {
                                    continue;
                                }
                                let (k, v) = l.split_once('=').expect("KEY=value");
                                let v = v.trim();
                                let v = v
                                    .strip_prefix('"')
                                    .and_then(|v| v.strip_suffix('"'))
                                    .unwrap_or(v);
                                set(&mut unit.env, k.trim(), v);
                            }
                        }
                        None => assert!(optional, "EnvironmentFile {path} is missing"),
                    }
                }
                "ExecStart" => exec = Some(spec(value)),
                "StateDirectory" => unit.state_dirs.extend(split_words(&spec(value))),
                "StateDirectoryMode" => unit.state_dir_mode = value.into(),
                _ => {}
            }
        }
        let exec = exec.expect("the unit has an ExecStart=");
        let lookup = |name: &str| {
            unit.env
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        for word in split_words(&exec) {
            // `$VAR` alone is split at white space into words; `${VAR}` is
            // substituted as one word.
            if let Some(name) = word.strip_prefix('$').filter(|n| !n.starts_with('{')) {
                unit.exec_start
                    .extend(lookup(name).split_whitespace().map(String::from));
                continue;
            }
            let mut out = String::new();
            let mut rest = word.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let end = rest[start..].find('}').expect("closing }") + start;
                out.push_str(&lookup(&rest[start + 2..end]));
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            unit.exec_start.push(out);
        }
        unit
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn set(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    env.retain(|(key, _)| key != k);
    env.push((k.to_owned(), v.to_owned()));
}

/// Splits at white space, honouring double quotes.
fn split_words(s: &str) -> Vec<String> {
    let (mut words, mut cur, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

fn works(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_packages_install_and_their_units_serve() {
    if !works("docker", &["info"]) {
        eprintln!(
            "skipped: no Docker daemon answers `docker info`, so the packages cannot be installed into a container"
        );
        return;
    }
    if !works("dpkg-query", &["--version"]) || !works("dpkg-deb", &["--version"]) {
        eprintln!(
            "skipped: this is no Debian host (dpkg-query, dpkg-deb): the test image is made from its installed packages"
        );
        return;
    }
    let started = Instant::now();
    let vmail = common::vmail();
    let bin_dir = vmail.parent().unwrap();
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pkg");
    let out = tempfile::tempdir().unwrap();

    // Build both packages from this test run's binaries.
    let built = run(
        Command::new(pkg.join("build.sh"))
            .arg("--bin-dir")
            .arg(bin_dir)
            .arg("--out")
            .arg(out.path())
            .args(["--compress", "none"]),
        "deploy/pkg/build.sh",
    );
    let debs: Vec<&str> = built.lines().filter(|l| l.ends_with(".deb")).collect();
    assert_eq!(debs.len(), 2, "build.sh should print two packages: {built}");
    for (deb, name) in debs.iter().zip(["vmail", "vmail-auth"]) {
        let field = run(
            Command::new("dpkg-deb").args(["-f", deb, "Package", "Depends"]),
            "dpkg-deb -f",
        );
        assert!(
            field.contains(&format!("Package: {name}\n")) && field.contains("libc6 (>="),
            "{deb}: {field}"
        );
    }

    // A fresh Debian container without a network, the packages mounted.
    let id = std::process::id();
    let c = Container {
        name: format!("vmail-pkgtest-{id}"),
        image: format!("vmail-pkgtest-debian:{id}"),
    };
    run(
        Command::new(pkg.join("debian-image.sh")).arg(&c.image),
        "deploy/pkg/debian-image.sh",
    );
    run(
        Command::new("docker")
            .args([
                "run",
                "-d",
                "--init",
                "--network",
                "none",
                "--name",
                &c.name,
            ])
            .arg("-v")
            .arg(format!("{}:/pkgs:ro", out.path().display()))
            .args([&c.image, "sleep", "infinity"]),
        "docker run",
    );
    eprintln!(
        "[{:5.1}s] packages built, container up",
        started.elapsed().as_secs_f64()
    );

    // dpkg -i, and what the packages put in place.
    c.sh("dpkg -i /pkgs/vmail_*.deb /pkgs/vmail-auth_*.deb");
    c.sh("dpkg-query -W -f='${Status}\\n' vmail vmail-auth | grep -c 'install ok installed' | grep -qx 2");
    c.sh("test -x /usr/bin/vmail && test -x /usr/bin/vmail-auth && test -x /usr/bin/vmail-devnet");
    c.sh("test -f /lib/systemd/system/vmail-auth.service && test -f '/lib/systemd/system/vmail-node@.service'");
    c.sh("test -f /etc/default/vmail-auth && test -f /etc/default/vmail-node && test -f /etc/profile.d/vmail-node.sh");
    assert_eq!(
        c.sh("getent passwd vmail-auth | cut -d: -f6,7").trim(),
        "/var/lib/vmail-auth:/usr/sbin/nologin"
    );
    assert_eq!(
        c.sh("stat -c %U:%a /var/lib/vmail-auth").trim(),
        "vmail-auth:700"
    );
    for program in ["vmail", "vmail-auth"] {
        let host = bin_dir.join(program);
        if works(host.to_str().unwrap(), &["completions", "--help"]) {
            c.sh(&format!(
                "test -s /usr/share/zsh/vendor-completions/_{program} && \
                 test -s /usr/share/fish/vendor_completions.d/{program}.fish && \
                 bash -c '. /usr/share/bash-completion/completions/{program} && complete -p {program}'"
            ));
        } else {
            eprintln!("note: {program} has no completions subcommand yet; not checked");
        }
        if works(host.to_str().unwrap(), &["man", "--help"]) {
            c.sh(&format!("test -s /usr/share/man/man1/{program}.1.gz"));
        } else {
            eprintln!("note: {program} has no man subcommand yet; not checked");
        }
    }
    // Removing and reinstalling keeps the user and the data directory.
    c.sh("dpkg -r vmail-auth && getent passwd vmail-auth >/dev/null && test -d /var/lib/vmail-auth && dpkg -i /pkgs/vmail-auth_*.deb");
    eprintln!(
        "[{:5.1}s] installed with dpkg -i",
        started.elapsed().as_secs_f64()
    );

    // The founder: `vmail-auth init` as the service's user, then the unit.
    let data = Unit::parse(
        &c.sh("cat /lib/systemd/system/vmail-auth.service"),
        "",
        |_| None,
    )
    .var("VMAIL_AUTH_DATA")
    .expect("vmail-auth.service sets VMAIL_AUTH_DATA")
    .to_owned();
    let init = c.exec_as(
        "vmail-auth",
        &[],
        &[
            "vmail-auth",
            "init",
            "--data-dir",
            &data,
            "--name",
            "auth-1",
            "--listen",
            "127.0.0.1:7443",
            "--raft-listen",
            "127.0.0.1:7444",
        ],
    );
    assert!(
        init.status.success(),
        "vmail-auth init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let auth = c.start_unit("/lib/systemd/system/vmail-auth.service", "");
    assert_eq!(auth.user, "vmail-auth");
    assert_eq!(
        auth.exec_start[..4],
        ["/usr/bin/vmail-auth", "serve", "--data-dir", &data]
    );
    c.wait_for(60, "vmail-auth.service did not serve", || {
        c.exec_as(
            "vmail-auth",
            &[],
            &["vmail-auth", "health", "--data-dir", &data],
        )
        .status
        .success()
    });
    eprintln!(
        "[{:5.1}s] vmail-auth.service serves: {}",
        started.elapsed().as_secs_f64(),
        auth.exec_start.join(" ")
    );
    // /etc/default/vmail-auth turns metrics on: the lone member is leader.
    if let Some(addr) = auth
        .exec_start
        .iter()
        .find_map(|a| a.strip_prefix("--metrics="))
    {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let scrape = format!(
            "exec 3<>/dev/tcp/{host}/{port} && printf 'GET /metrics HTTP/1.0\\r\\nHost: {addr}\\r\\n\\r\\n' >&3 && cat <&3"
        );
        let mut last = String::new();
        c.wait_for(
            30,
            "the auth server's metrics did not show a leader",
            || {
                let out = c.exec_as("root", &[], &["bash", "-c", &scrape]);
                last = String::from_utf8_lossy(&out.stdout).into_owned();
                last.lines()
                    .any(|l| l.trim() == "vmail_auth_raft_is_leader 1")
                    && last
                        .lines()
                        .any(|l| l.trim() == "vmail_auth_raft_has_leader 1")
            },
        );
        eprintln!(
            "[{:5.1}s] http://{addr}/metrics: the server is its group's leader",
            started.elapsed().as_secs_f64()
        );
    }

    // The group's client config, published as docs/OPERATIONS.md says.
    c.sh(&format!(
        "ca=$(sed -n 's/^ca_cert = \"\\(.*\\)\"$/\\1/p' {data}/client.toml) && \
         install -m 644 \"$ca\" /etc/vmail/ca.pem && \
         sed 's|^ca_cert = .*|ca_cert = \"ca.pem\"|' {data}/client.toml >/etc/vmail/client.toml && \
         chmod 644 /etc/vmail/client.toml"
    ));

    // alice's daemon from vmail-node@alice.service.
    c.sh("useradd --create-home --shell /bin/bash alice");
    let node = c.start_unit("/lib/systemd/system/vmail-node@.service", "alice");
    assert_eq!(node.user, "alice");
    assert_eq!(node.var("VMAIL_HOME"), Some("/var/lib/vmail-node/alice"));
    assert_eq!(
        c.sh("stat -c %U:%a /var/lib/vmail-node/alice").trim(),
        "alice:700"
    );
    let home = [(
        "VMAIL_HOME".to_owned(),
        "/var/lib/vmail-node/alice".to_owned(),
    )];
    c.wait_for(60, "vmail-node@alice did not serve", || {
        c.exec_as("alice", &home, &["vmail", "node", "health"])
            .status
            .success()
    });
    eprintln!(
        "[{:5.1}s] vmail-node@alice serves: {}",
        started.elapsed().as_secs_f64(),
        node.exec_start.join(" ")
    );

    // alice registers and logs in from a login shell: the profile script
    // points her CLI at her daemon and at the group's client.toml.
    let login = c.exec_as(
        "alice",
        &[("VMAIL_PASSWORD".to_owned(), PASSWORD.to_owned())],
        &[
            "bash",
            "-lc",
            "echo \"home=$VMAIL_HOME auth=$VMAIL_AUTH_CONFIG\" && vmail account register alice && vmail login alice && vmail inbox",
        ],
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&login.stdout),
        String::from_utf8_lossy(&login.stderr)
    );
    assert!(
        login.status.success(),
        "alice's register, login and inbox failed:\n{said}\nthe units' logs:\n{}",
        c.unit_logs()
    );
    assert!(
        said.contains("home=/var/lib/vmail-node/alice auth=/etc/vmail/client.toml"),
        "the profile script did not set VMAIL_HOME and VMAIL_AUTH_CONFIG: {said}"
    );
    // The login bound alice's daemon: its status names her.
    let status = c.exec_as("alice", &home, &["vmail", "status"]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["user", "alice"])),
        "vmail status does not show alice logged in:\n{status}"
    );
    eprintln!(
        "[{:5.1}s] alice registered and logged in through her daemon; `vmail status`:\n{status}",
        started.elapsed().as_secs_f64()
    );
}
