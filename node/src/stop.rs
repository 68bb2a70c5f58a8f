//! How a foreground process of ours is told to stop: SIGTERM or SIGINT
//! (Ctrl-C). The handlers are installed when [`stop_signal`] is called, not
//! when its future is first polled, so a process that calls it before it
//! says it is ready never dies of a signal's default action.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// Installs the SIGTERM and SIGINT handlers now; the future resolves at
/// the first of either.
pub fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
