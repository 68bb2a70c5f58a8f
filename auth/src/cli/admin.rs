//! `vmail-auth health` and `vmail-auth cluster status|remove|approve|credential`:
//! asking a running server, and changing the group's membership.

use std::time::Duration;

use anyhow::Context;
use vmail_auth::cluster::admin;
use vmail_auth::datadir;

use super::{own_raft_url, port_of};
use crate::ClusterCommand;

/// `vmail-auth health`: one call to the standard health service.
pub(crate) async fn health(dir: &std::path::Path) -> anyhow::Result<()> {
    use tonic::server::NamedService;
    use tonic_health::pb::health_check_response::ServingStatus;
    vmail_proto::tls::install_crypto_provider();
    let config = datadir::load_config(dir)?;
    let keys = datadir::load_keys(dir)?;
    let url = format!(
        "https://{}:{}",
        config.public_host(),
        port_of(&config.listen)?
    );
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&keys.ca_cert_pem)),
        )?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("{url}: not answering"))?;
    let service = vmail_proto::pb::auth_server::AuthServer::<vmail_auth::grpc::GrpcAuth>::NAME;
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .with_context(|| format!("{url}: health check failed"))?
        .into_inner()
        .status();
    anyhow::ensure!(
        status == ServingStatus::Serving,
        "{url}: {service} is {status:?}"
    );
    println!("{url}: {service} is serving");
    Ok(())
}

/// A member's status as the JSON object `cluster status --json` prints
/// (documented in its help and in docs/OPERATIONS.md).
pub(crate) fn status_json(s: &admin::GroupStatus) -> serde_json::Value {
    let member = |m: &admin::MemberStatus| {
        serde_json::json!({
            "name": m.member.name,
            "id": format!("{:016x}", m.id),
            "api_url": m.member.api_url,
            "raft_url": m.member.raft_url,
            "role": if m.voter { "voter" } else { "learner" },
            "matched": m.matched,
            "member_key": m.member_key.map(hex::encode),
        })
    };
    serde_json::json!({
        "member": member(&s.me),
        "state": s.state,
        "term": s.term,
        "leader": s.leader,
        "last_log_index": s.last_log_index,
        "last_applied": s.last_applied,
        "snapshot_index": s.snapshot_index,
        "members": s.members.iter().map(member).collect::<Vec<_>>(),
        "group_key": s.group_key.as_ref().map(|k| serde_json::json!({
            "key": hex::encode(k.key),
            "ceremony": k.ceremony,
            "threshold": k.threshold,
            "holders": k.holders.iter().map(|h| format!("{h:016x}")).collect::<Vec<_>>(),
        })),
    })
}

/// The status of the member at `url`, or of the member whose data
/// directory is given.
async fn group_status(
    data_dir: &std::path::Path,
    url: Option<String>,
) -> anyhow::Result<admin::GroupStatus> {
    let url = match url {
        Some(u) => u,
        None => own_raft_url(data_dir)?,
    };
    Ok(admin::status(&url, &admin::member_tls(data_dir)?).await?)
}

pub(crate) async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status {
            data_dir,
            url,
            json: true,
        } => match group_status(&data_dir, url).await {
            Ok(s) => println!("{}", status_json(&s)),
            Err(e) => {
                let causes: Vec<String> = e.chain().map(ToString::to_string).collect();
                let error = serde_json::json!({
                    "error": format!("{e:#}"),
                    "causes": causes,
                    "exit_code": 1,
                });
                eprintln!("{error}");
                std::process::exit(1);
            }
        },
        ClusterCommand::Status {
            data_dir,
            url,
            json: false,
        } => {
            let s = group_status(&data_dir, url).await?;
            println!("member:   {} (id {:016x})", s.me.member.name, s.me.id);
            println!("state:    {}", s.state);
            println!("term:     {}", s.term);
            println!(
                "leader:   {}",
                s.leader.as_deref().unwrap_or("(none known)")
            );
            println!(
                "log:      last index {}, applied {}, snapshot {}",
                s.last_log_index, s.last_applied, s.snapshot_index
            );
            match &s.group_key {
                Some(k) => {
                    let name = |id: &u64| {
                        s.members
                            .iter()
                            .find(|m| m.id == *id)
                            .map_or_else(|| format!("{id:016x}"), |m| m.member.name.clone())
                    };
                    println!(
                        "group key: {} (ceremony {}, {}-of-{}: {})",
                        hex::encode(k.key),
                        k.ceremony,
                        k.threshold,
                        k.holders.len(),
                        k.holders.iter().map(name).collect::<Vec<_>>().join(", ")
                    );
                }
                None => println!(
                    "group key: none yet (the group generates one once it has three voters)"
                ),
            }
            println!("members:");
            for m in s.members {
                let matched = if m.matched > 0 {
                    format!("matched {}", m.matched)
                } else {
                    String::new()
                };
                let role = if m.voter { "voter" } else { "learner" };
                println!(
                    "  {:<12} {:<8} api {:<28} raft {:<28} {matched}",
                    m.member.name, role, m.member.api_url, m.member.raft_url
                );
            }
        }
        ClusterCommand::Remove { name, data_dir } => {
            let url = own_raft_url(&data_dir)?;
            admin::remove(&url, &admin::member_tls(&data_dir)?, &name).await?;
            println!("removed {name} from the group");
        }
        ClusterCommand::Approve {
            name,
            data_dir,
            member_key,
        } => {
            let expected = member_key
                .map(|k| {
                    hex::decode(k.trim())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .context("--member-key: expected 64 hex digits, as `vmail-auth join` printed them")
                })
                .transpose()?;
            let url = own_raft_url(&data_dir)?;
            let (id, key, approvers) =
                admin::approve_join(&data_dir, &url, &name, expected).await?;
            println!(
                "approved {name} (node {id:016x}, member key {}); {} approval(s) so far",
                hex::encode(key),
                approvers.len()
            );
        }
        ClusterCommand::Credential {
            name,
            data_dir,
            out,
        } => {
            admin::issue_credential(&data_dir, &name, &out)?;
            println!("join credential for {name}: {}", out.display());
            println!(
                "on the new server: vmail-auth join --via {} --credential {} --data-dir DIR --name {name} ...",
                own_raft_url(&data_dir)?,
                out.display()
            );
        }
    }
    Ok(())
}
