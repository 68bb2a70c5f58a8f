//! The `vmail-auth` subcommands beyond `init`, `serve` and `join`, and what
//! the commands share: binding a data directory's ports (and the metrics
//! endpoint) and stopping on a signal.

pub(crate) mod admin;
pub(crate) mod docs;
pub(crate) mod start;

use std::net::SocketAddr;

use anyhow::Context;
use vmail_auth::datadir;

/// The port of a `HOST:PORT` address.
pub(crate) fn port_of(addr: &str) -> anyhow::Result<&str> {
    addr.rsplit_once(':')
        .map(|(_, p)| p)
        .with_context(|| format!("{addr:?} is not HOST:PORT"))
}

/// A future that resolves on SIGTERM or SIGINT. Both handlers are
/// installed when this is called, not when the future is first polled, so
/// a signal right after start-up stops the server cleanly instead of
/// killing it.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    }
}

/// The internal URL a member's own config points at.
pub(crate) fn own_raft_url(dir: &std::path::Path) -> anyhow::Result<String> {
    let config = datadir::load_config(dir)?;
    Ok(format!(
        "https://{}:{}",
        config.public_host(),
        port_of(&config.raft_listen)?
    ))
}

/// Binds the metrics endpoint of a data directory's server: `--metrics`
/// when given, else `metrics_listen` from its config; none when neither.
pub(crate) async fn bind_metrics(
    dir: &std::path::Path,
    flag: Option<SocketAddr>,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let addr = match flag {
        Some(a) => a,
        None => {
            let config = datadir::load_config(dir)?;
            if config.metrics_listen.is_empty() {
                return Ok(None);
            }
            config
                .metrics_listen
                .parse()
                .expect("ServerConfig::validate checked it")
        }
    };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "--metrics {addr} (or metrics_listen in {}): cannot listen there: is another process using it? Choose another address",
            dir.join(datadir::files::CONFIG).display()
        )
    })?;
    Ok(Some(listener))
}

/// Serves `/metrics` for `svc` on `listener`, if any, until the task is
/// aborted.
pub(crate) fn spawn_metrics(
    listener: Option<tokio::net::TcpListener>,
    svc: &vmail_auth::service::AuthService,
) -> Option<tokio::task::JoinHandle<()>> {
    let listener = listener?;
    let metrics = svc.metrics().clone();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
    }
    Some(tokio::spawn(async move {
        if let Err(e) =
            vmail_auth::metrics::serve_http(listener, metrics, std::future::pending()).await
        {
            tracing::error!(error = %e, "the metrics endpoint failed");
        }
    }))
}

/// Binds the public and internal listeners of a data directory.
pub(crate) async fn bind(
    dir: &std::path::Path,
    listen: Option<SocketAddr>,
    raft_listen: Option<SocketAddr>,
) -> anyhow::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    let config = datadir::load_config(dir)?;
    let parse = |s: &str| -> SocketAddr { s.parse().expect("ServerConfig::validate checked it") };
    let api = listen.unwrap_or_else(|| parse(&config.listen));
    let raft = raft_listen.unwrap_or_else(|| parse(&config.raft_listen));
    let open = |a: SocketAddr| async move {
        tokio::net::TcpListener::bind(a)
            .await
            .with_context(|| format!("cannot listen on {a}: is another server using it?"))
    };
    Ok((open(api).await?, open(raft).await?))
}
