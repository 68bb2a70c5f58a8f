//! The compose testnet's fault scenario (`deploy/testnet.sh scenario`), with
//! the binaries this test run built: auth servers, supernodes and peers in
//! their own containers on two networks, a killed auth leader, a killed
//! supernode, a storage peer cut off, a holder killed during an upload and
//! auth servers restarted with and without their data; Prometheus, in the
//! testnet, is asked over its API whether it saw the faults, the leader
//! change and the repair.
//!
//! It needs a Docker daemon and a compose tool; without them it says so and
//! passes, as `.ci/run` documents. The scenario removes its containers,
//! networks and volumes; this test removes the two images it built.

use std::path::Path;
use std::process::Command;

mod common;

/// The images the scenario builds; removed when the test ends, pass or fail.
struct Images([&'static str; 2]);

impl Drop for Images {
    fn drop(&mut self) {
        for image in self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

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
    let images = Images(["vmail-testnet:test", "vmail-prometheus:test"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testnet.sh");
    let status = Command::new(script)
        .arg("scenario")
        .env("VMAIL_BIN_DIR", bin_dir)
        .env("VMAIL_SCENARIO_PROJECT", "vmailscenariotest")
        .env("VMAIL_IMAGE", images.0[0])
        .env("VMAIL_PROMETHEUS_IMAGE", images.0[1])
        .env_remove("VMAIL_PROMETHEUS_PORT")
        .env_remove("VMAIL_KEEP")
        .status()
        .expect("running deploy/testnet.sh");
    assert!(
        status.success(),
        "the compose scenario failed (its output above names the step and the log directory)"
    );
}
