//! The `vmail-auth` subcommands beyond `init`, `serve` and `join`, and what
//! the commands share: binding a data directory's ports and stopping on a
//! signal.

pub(crate) mod admin;
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

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
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
