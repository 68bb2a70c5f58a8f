//! `vmail demo` and `vmail testnet ...`: the tools that run the whole system
//! on one machine live in the `vmail-devnet` program (crate
//! `deploy/devnet`), so the peer never links an auth server. `vmail` runs it
//! in its own place, as git and cargo run their external subcommands: first
//! the one beside this executable (a build directory, or an install
//! directory), then the first on `PATH`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};

/// The program that runs `demo` and `testnet`.
const DEVNET: &str = "vmail-devnet";

/// Replaces this process with `vmail-devnet ARGS`. Returns only if that
/// cannot be done, with why.
pub(super) fn exec(args: &[OsString]) -> anyhow::Error {
    let program = match find() {
        Ok(p) => p,
        Err(e) => return e,
    };
    let err = std::process::Command::new(&program).args(args).exec();
    anyhow!("cannot run {}: {err}", program.display())
}

fn find() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name(DEVNET);
    if is_program(&beside) {
        return Ok(beside);
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(found) = std::env::split_paths(&path)
            .map(|dir| dir.join(DEVNET))
            .find(|p| is_program(p))
    {
        return Ok(found);
    }
    bail!(
        "this command runs the {DEVNET} program, which is neither beside {} nor on PATH: \
         build it with `cargo build --release -p vmail-devnet` (it lands beside vmail in \
         target/release), or install it on PATH",
        exe.display()
    )
}

fn is_program(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
