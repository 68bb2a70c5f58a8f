//! `vmail-auth start`: servers started together with no one at hand (the
//! compose testnet) form their group through a shared enrolment directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmail_auth::cluster::admin;
use vmail_auth::datadir;
use vmail_auth::enroll::{self, Enrollment};
use vmail_auth::server;
use vmail_auth::service::SystemClock;

use super::{bind, bind_metrics, port_of, shutdown_signal, spawn_metrics};
use crate::ServerArgs;

/// How long `start` waits for the founder, or for an answer to its
/// enrolment request, before giving up.
const ENROLL_WAIT: Duration = Duration::from_secs(600);

/// The group as `vmail-auth start` is told it.
#[derive(Debug)]
pub(crate) struct Group {
    /// The member that founds the group.
    pub(crate) founder: String,
    /// Every member's name.
    pub(crate) members: Vec<String>,
    /// The shared enrolment directory.
    pub(crate) enrollment: Enrollment,
    /// Where the clients' config is published.
    pub(crate) public_dir: PathBuf,
}

/// Waits until `ready()` holds, polling; fails after [`ENROLL_WAIT`].
async fn wait_for(what: &str, ready: impl Fn() -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + ENROLL_WAIT;
    tracing::info!("waiting for {what}");
    while !ready() {
        if Instant::now() > until {
            anyhow::bail!(
                "gave up after {} s waiting for {what}",
                ENROLL_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// `vmail-auth start`: makes the data directory if there is none, then
/// serves, joining the group if this server is not a member yet, and keeps
/// answering enrolment requests and publishing the clients' config.
pub(crate) async fn start(
    args: ServerArgs,
    group: Group,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let dir = args.data_dir.clone();
    let (api_port, raft_port) = (port_of(&args.listen)?, port_of(&args.raft_listen)?);
    let raft_urls: Vec<String> = group
        .members
        .iter()
        .filter(|m| **m != args.name)
        .map(|m| format!("https://{m}:{raft_port}"))
        .collect();
    let endpoints: Vec<String> = group
        .members
        .iter()
        .map(|m| format!("https://{m}:{api_port}"))
        .collect();
    // A flag's address is taken at once, so a bad one fails before the wait
    // for the group.
    let early = match metrics {
        Some(_) => bind_metrics(&dir, metrics).await?,
        None => None,
    };
    if !dir.join(datadir::files::CONFIG).exists() {
        make_data_dir(&args, &group, raft_port, &raft_urls).await?;
    }
    let (api, raft) = bind(&dir, None, None).await?;
    let metrics = match early {
        Some(l) => Some(l),
        None => bind_metrics(&dir, None).await?,
    };
    let svc = Arc::new(server::open(&dir, Arc::new(SystemClock)).await?);
    let metrics = spawn_metrics(metrics, &svc);
    let me = server::member(&svc, &api, &raft);
    let needs_join = !svc
        .raft()
        .is_initialized()
        .await
        .map_err(anyhow::Error::msg)?
        && !svc.store().is_founder()?;
    let tls = admin::member_tls(&dir)?;
    let keys = svc.keys().clone();
    let cluster_key = hex::encode(keys.cluster_public_key().to_bytes());
    let raft_handle = svc.raft().clone();
    let member_key = svc.share_keys().member_public();
    let store = svc.store().clone();
    // A group of three or more publishes the clients' config only once it
    // has its threshold key, so no client pins a group without it.
    let threshold = group.members.len() >= vmail_auth::threshold::MIN_MEMBERS;
    let enrollment = group.enrollment.clone();
    let tasks = tokio::spawn(async move {
        if needs_join {
            let id = raft_handle.metrics().borrow().id;
            let joined = at_any_member(&raft_urls, "join the group", None, |url| {
                admin::request_join(url, &tls, id, &me, member_key)
            })
            .await;
            match joined {
                Ok(j) if j.voter => {
                    tracing::info!(index = j.log_index, "joined the group as a voter")
                }
                Ok(j) => tracing::warn!(
                    index = j.log_index,
                    member_key = %hex::encode(member_key),
                    "joined the group as a learner: it votes and gets a share of the group key once share holders approve it (vmail-auth cluster approve NAME --member-key KEY)"
                ),
                Err(_) => {}
            }
        }
        // A member of the group answers enrolment requests and keeps the
        // clients' config current.
        loop {
            if raft_handle.is_initialized().await.unwrap_or(false) {
                let group_key = match store.group_key() {
                    Ok(k) => k.map(|(_, k)| hex::encode(k)),
                    Err(e) => {
                        tracing::warn!("reading the group key: {e}");
                        None
                    }
                };
                let done = enrollment
                    .mark_founded(&keys.ca_cert_pem)
                    .and_then(|()| {
                        if threshold && group_key.is_none() {
                            return Ok(());
                        }
                        enroll::publish_client_config(
                            &group.public_dir,
                            &keys.ca_cert_pem,
                            &cluster_key,
                            group_key.as_deref(),
                            &endpoints,
                        )
                    })
                    .and_then(|()| enrollment.answer_requests(&dir));
                match done {
                    Ok(names) => {
                        for name in names {
                            tracing::info!(%name, "issued a join credential through the enrolment directory");
                        }
                    }
                    Err(e) => tracing::warn!("enrolment: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    server::serve(svc, api, raft, shutdown_signal()).await?;
    tasks.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    Ok(())
}

/// Creates this server's data directory: the founder founds the group if
/// no one has, unless another member already answers; every other server
/// asks for a join credential through the enrolment directory and fetches
/// the group's keys from any member.
async fn make_data_dir(
    args: &ServerArgs,
    group: &Group,
    raft_port: &str,
    raft_urls: &[String],
) -> anyhow::Result<()> {
    let enrollment = &group.enrollment;
    if !enrollment.founded() && args.name == group.founder {
        // A founder whose data is gone must not found a second group
        // beside a running one: members only listen once they joined.
        for m in group.members.iter().filter(|m| **m != args.name) {
            let addr = format!("{m}:{raft_port}");
            let probe = tokio::net::TcpStream::connect(&addr);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                anyhow::bail!(
                    "{m} already serves a group at {addr}, but {} has no data and the enrolment \
                     directory records no founding: restore this server's data dir, or copy the \
                     group's CA certificate to {} so that this server joins it",
                    args.data_dir.display(),
                    enrollment.founded_path().display()
                );
            }
        }
        let report = datadir::init(&args.init_options())?;
        tracing::info!(cluster_key = %report.cluster_public_key, "founded a new auth group");
        return Ok(());
    }
    wait_for("the founder to found the group", || enrollment.founded()).await?;
    let request = enrollment.request(&args.name)?;
    wait_for("a member to answer this server's enrolment request", || {
        request.answered()
    })
    .await?;
    let credential = admin::read_credential(&request.credential)?;
    let until = Instant::now() + ENROLL_WAIT;
    let opts = args.init_options();
    at_any_member(raft_urls, "fetch the group keys", Some(until), |url| {
        admin::prepare_join(&opts, url, &credential)
    })
    .await?;
    request.finish();
    Ok(())
}

/// Tries `f` at each member's internal URL in turn, round after round a
/// second apart, until one succeeds or `until` passes (None: for ever).
async fn at_any_member<'a, T, F, Fut>(
    urls: &'a [String],
    what: &str,
    until: Option<Instant>,
    f: F,
) -> Result<T, admin::AdminError>
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = Result<T, admin::AdminError>>,
{
    loop {
        for url in urls {
            match f(url).await {
                Ok(v) => {
                    tracing::info!(via = %url, "did {what}");
                    return Ok(v);
                }
                Err(e) if until.is_none_or(|u| Instant::now() < u) => {
                    tracing::info!(via = %url, "cannot {what} yet: {e}")
                }
                Err(e) => return Err(e),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
