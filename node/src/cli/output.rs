//! Where the CLI's output goes: human lines and `--json` documents on
//! stdout, errors on stderr (a JSON object under `--json`). A stdout that
//! was closed (`vmail inbox | head -1`) ends the process quietly with exit
//! status 0, as Unix tools do, instead of panicking as `println!` would.

use std::fmt;
use std::io::{ErrorKind, Write};

use serde::Serialize;

/// `outln!(...)`: like `println!`, but a closed stdout exits quietly.
macro_rules! outln {
    () => {
        $crate::cli::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}

/// Writes one line to stdout; see [`outln!`].
pub(crate) fn line(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    written.and_then(|()| out.flush()).unwrap_or_else(closed);
}

/// Writes `value` to stdout as one line of JSON: every `--json` command's
/// document (and each event of `inbox --watch --json`).
pub(crate) fn json<T: Serialize>(value: &T) {
    let text = serde_json::to_string(value).expect("CLI documents serialise");
    line(format_args!("{text}"));
}

/// Stdout could not be written: a reader that went away ends the process
/// quietly; anything else is said on stderr.
fn closed(e: std::io::Error) {
    if e.kind() == ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// A failed command's error as `--json` prints it on stderr.
#[derive(Debug, Serialize)]
pub(crate) struct JsonError {
    /// The whole message, causes included, as the human form prints it.
    pub(crate) error: String,
    /// Each cause on its own, outermost first.
    pub(crate) causes: Vec<String>,
    /// The process's exit status.
    pub(crate) exit_code: u8,
}

impl JsonError {
    /// The JSON form of `e`.
    pub(crate) fn new(e: &anyhow::Error, exit_code: u8) -> Self {
        Self {
            error: format!("{e:#}"),
            causes: e.chain().map(ToString::to_string).collect(),
            exit_code,
        }
    }

    /// The JSON form of a command-line error clap found.
    pub(crate) fn usage(e: &clap::Error) -> Self {
        let text = e.render().to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_owned();
        Self {
            error: first,
            causes: vec![text.trim_end().to_owned()],
            exit_code: 2,
        }
    }

    /// Prints it on stderr, one line.
    pub(crate) fn print(&self) {
        let text = serde_json::to_string(self).expect("errors serialise");
        let _ = writeln!(std::io::stderr(), "{text}");
    }
}

/// A command line that cannot run, found before any work: exit status 2,
/// as clap gives for its own usage errors.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
