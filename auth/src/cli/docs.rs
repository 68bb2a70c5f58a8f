//! `vmail-auth completions SHELL` and the hidden `vmail-auth man DIR`: the
//! command line described for shells and for `man`, from the same clap
//! definitions that parse it.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

/// Prints the completion script for `shell` on stdout.
pub(crate) fn completions(shell: clap_complete::Shell) {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(shell, &mut cmd, "vmail-auth", &mut std::io::stdout());
}

/// Writes `vmail-auth.1` and one page per subcommand, nested ones
/// included (`vmail-auth-cluster-status.1`), into `dir`; returns how many.
pub(crate) fn man_pages(dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = crate::Cli::command();
    cmd.build();
    write_pages(dir, &cmd)
}

/// Once built, a subcommand's display name is its page's name
/// (`vmail-auth-cluster-status`).
fn write_pages(dir: &Path, cmd: &clap::Command) -> anyhow::Result<usize> {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .with_context(|| format!("rendering the man page of {name}"))?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() != "help" {
            written += write_pages(dir, sub)?;
        }
    }
    Ok(written)
}
