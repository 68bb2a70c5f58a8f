//! `vmail completions SHELL` and the hidden `vmail man DIR`: the shell
//! completion script and the man pages, both made from the clap definition
//! so they never drift from the commands. A package build runs `vmail man
//! DIR` and installs what it writes.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory;

use super::Cli;

/// `vmail completions SHELL`: the script on stdout.
pub(super) fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vmail", &mut script);
    let text = String::from_utf8(script).context("the completion script is not UTF-8")?;
    // Through outln!, so `vmail completions bash | head` ends quietly.
    outln!("{}", text.trim_end());
    Ok(())
}

/// `vmail man DIR`: `vmail.1` and one page per subcommand
/// (`vmail-account-register.1`, ...), hidden ones left out.
pub(super) fn man(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot make the man page directory {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    outln!(
        "wrote {} man pages into {}",
        pages(&Cli::command().disable_help_subcommand(true)),
        dir.display()
    );
    Ok(())
}

/// How many pages `generate_to` writes for `cmd`: its own and each visible
/// subcommand's, all the way down.
fn pages(cmd: &clap::Command) -> usize {
    1 + cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(pages)
        .sum::<usize>()
}
