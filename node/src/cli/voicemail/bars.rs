//! Progress bars of `vmail leave` and `vmail fetch`, fed by the peer's
//! `Progress` events.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vmail_proto::control_pb as pb;

use super::super::Context;
use super::ms;

/// Progress bars, one per phase, drawn on stdout when it is a terminal
/// (never under --json). Each phase's bar is cleared when the next begins
/// and left behind as one line of its own, so bars, notes and the summary
/// never share a line. Notes (a holder replaced) go to stderr.
pub(super) struct Bars {
    current: Option<(i32, ProgressBar, Instant)>,
    draw: bool,
    notes: bool,
}

impl Bars {
    pub(super) fn new(ctx: &Context) -> Self {
        Self {
            current: None,
            draw: !ctx.json && std::io::stdout().is_terminal(),
            notes: !ctx.json,
        }
    }

    pub(super) fn update(&mut self, p: pb::Progress) {
        if !p.note.is_empty() {
            self.note(&p.note);
            // A note carries no bytes of its own.
            return;
        }
        // The grant and deposit are round trips with no bytes to count:
        // the summary reports their time.
        if matches!(
            pb::Phase::try_from(p.phase),
            Ok(pb::Phase::Grant | pb::Phase::Deposit)
        ) {
            return;
        }
        if self.current.as_ref().map(|(ph, _, _)| *ph) != Some(p.phase) {
            self.end_phase();
            let bar = ProgressBar::with_draw_target(
                Some(p.total),
                if self.draw {
                    ProgressDrawTarget::stdout()
                } else {
                    ProgressDrawTarget::hidden()
                },
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label(p.phase));
            self.current = Some((p.phase, bar, Instant::now()));
        }
        if let Some((_, bar, _)) = &self.current {
            bar.set_position(p.done);
        }
    }

    /// A note about the job, above the bar.
    pub(super) fn note(&self, note: &str) {
        if !self.notes {
            return;
        }
        let say = || {
            let _ = writeln!(std::io::stderr(), "note: {note}");
        };
        match &self.current {
            Some((_, bar, _)) => bar.suspend(say),
            None => say(),
        }
    }

    /// Clears the current bar and prints its phase as one finished line.
    pub(super) fn end_phase(&mut self) {
        if let Some((phase, bar, started)) = self.current.take() {
            bar.finish_and_clear();
            if self.draw {
                outln!(
                    "{} {} in {}",
                    label(phase),
                    HumanBytes(bar.position()),
                    ms(started.elapsed().as_micros() as u64)
                );
            }
        }
    }

    pub(super) fn finish(mut self) {
        self.end_phase();
    }
}

fn label(phase: i32) -> &'static str {
    match pb::Phase::try_from(phase) {
        Ok(pb::Phase::Encrypt) => "encrypt ",
        Ok(pb::Phase::Upload) => "upload  ",
        Ok(pb::Phase::Download) => "download",
        Ok(pb::Phase::Decrypt) => "decrypt ",
        _ => "working ",
    }
}
