//! The compose testnet's fault scenario (`deploy/testnet.sh scenario`), with
//! the binaries this test run built: auth servers, supernodes and peers in
//! their own containers on two networks, a killed auth leader, a killed
//! supernode, a storage peer cut off, a holder killed during an upload and
//! auth servers restarted with and without their data.
//!
//! It needs a Docker daemon and a compose tool; without them it says so and
//! passes, as `.ci/run` documents.

use std::path::Path;
use std::process::Command;

mod common;

#[test]
fn the_compose_scenario_passes() {
    let works = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !works("docker", &["info"]) {
        eprintln!(
            "skipped: no Docker daemon answers `docker info`, so the compose scenario cannot run"
        );
        return;
    }
    if !works("docker-compose", &["version"]) && !works("docker", &["compose", "version"]) {
        eprintln!("skipped: neither docker-compose nor the docker compose plugin is installed");
        return;
    }
    let vmail = common::vmail();
    let bin_dir = vmail.parent().unwrap();
    for program in ["vmail-auth", "vmail-devnet"] {
        assert!(
            bin_dir.join(program).exists(),
            "{} is missing: build the workspace (cargo test --workspace builds it)",
            bin_dir.join(program).display()
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testnet.sh");
    let status = Command::new(script)
        .arg("scenario")
        .env("VMAIL_BIN_DIR", bin_dir)
        .env("VMAIL_SCENARIO_PROJECT", "vmailscenariotest")
        .env("VMAIL_IMAGE", "vmail-testnet:test")
        .env_remove("VMAIL_KEEP")
        .status()
        .expect("running deploy/testnet.sh");
    assert!(
        status.success(),
        "the compose scenario failed (its output above names the step and the log directory)"
    );
}
