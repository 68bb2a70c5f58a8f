//! `vmail inbox`: the voicemails waiting for you, as a table.

use serde::Serialize;
use tokio_stream::StreamExt;
use vmail_node::control::{self, ControlClient, inbox_entry};
use vmail_proto::control_pb::InboxEntry;

use super::{Context, when};

const HEADER: [&str; 7] = [
    "ID", "FROM", "RECEIVED", "SIZE", "DURATION", "TYPE", "EXPIRES",
];

/// How the sender of `p` is shown: the username, or "anonymous".
pub(super) fn sender_name(p: &InboxEntry) -> &str {
    if p.anonymous {
        vmail_node::auth_client::ANONYMOUS
    } else {
        &p.sender
    }
}

/// The FROM column: the sender, flagged "unknown caller" on a first
/// contact.
fn from(p: &InboxEntry) -> String {
    if p.first_contact {
        format!("{} (unknown caller)", sender_name(p))
    } else {
        sender_name(p).to_owned()
    }
}

/// `vmail inbox --json`.
#[derive(Debug, Serialize)]
struct InboxJson {
    username: String,
    voicemails: Vec<VoicemailJson>,
}

/// One waiting voicemail, in `vmail inbox --json` and as each line of
/// `vmail inbox --watch --json`.
#[derive(Debug, Serialize)]
pub(super) struct VoicemailJson {
    /// 32 hex digits, as `vmail fetch` takes it.
    id: String,
    /// The sender's username; null when the sender is hidden.
    sender: Option<String>,
    anonymous: bool,
    /// The sender is not in your contacts ("unknown caller").
    first_contact: bool,
    /// Unix seconds.
    received_at: u64,
    size: u64,
    /// 0 when not audio, or unknown.
    duration_ms: u64,
    content_type: String,
    /// Unix seconds.
    expires_at: u64,
}

impl From<&InboxEntry> for VoicemailJson {
    fn from(p: &InboxEntry) -> Self {
        Self {
            id: hex::encode(&p.voicemail_id),
            sender: (!p.anonymous).then(|| p.sender.clone()),
            anonymous: p.anonymous,
            first_contact: p.first_contact,
            received_at: p.deposited_at,
            size: p.size,
            duration_ms: p.duration_ms,
            content_type: p.content_type.clone(),
            expires_at: p.expires_at,
        }
    }
}

fn row(p: &InboxEntry) -> [String; 7] {
    [
        hex::encode(&p.voicemail_id),
        from(p),
        when(p.deposited_at),
        format!("{} B", p.size),
        if p.duration_ms == 0 {
            "-".to_owned()
        } else {
            format!("{:.1} s", p.duration_ms as f64 / 1000.0)
        },
        if p.content_type.is_empty() {
            "-".to_owned()
        } else {
            p.content_type.clone()
        },
        when(p.expires_at),
    ]
}

fn print_table(rows: &[[String; 7]]) {
    let mut widths = HEADER.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 7]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", parts.join("  ").trim_end());
    };
    line(HEADER);
    for r in rows {
        line(r.each_ref().map(String::as_str));
    }
}

/// The pending list, through the peer daemon when one runs, else straight
/// from the auth servers (listing needs no overlay).
async fn list(ctx: &Context) -> anyhow::Result<Vec<InboxEntry>> {
    let socket = ctx.data_dir(None).join(control::SOCKET_FILE);
    if let Ok(mut daemon) = ControlClient::connect(&socket).await {
        daemon.set_session(&ctx.peer_session()?).await?;
        return Ok(daemon.inbox().await?);
    }
    let (mut client, _) = ctx.logged_in().await?;
    let pending = client.list_pending().await?;
    Ok(pending.iter().map(inbox_entry).collect())
}

pub(super) async fn run(ctx: &Context, watch: bool) -> anyhow::Result<()> {
    if !watch {
        let pending = list(ctx).await?;
        let user = ctx.peer_session()?.login.username;
        if ctx.json {
            super::output::json(&InboxJson {
                username: user.to_string(),
                voicemails: pending.iter().map(VoicemailJson::from).collect(),
            });
            return Ok(());
        }
        if pending.is_empty() {
            outln!("no voicemail waiting for {user}");
            return Ok(());
        }
        print_table(&pending.iter().map(row).collect::<Vec<_>>());
        outln!(
            "{} voicemail(s); every sender certificate checked (a hidden sender has none)",
            pending.len()
        );
        if pending.iter().any(|p| p.first_contact) {
            outln!(
                "an unknown caller is not in your contacts: after fetching, `vmail contacts add USER` to accept them, or `vmail report ID` if it is spam"
            );
        }
        return Ok(());
    }
    let (mut client, session) = ctx.logged_in().await?;
    let mut stream = client.watch_pending().await?;
    // The server may send a voicemail twice around the stream's start.
    let mut seen = std::collections::HashSet::new();
    if !ctx.json {
        outln!(
            "watching for voicemail to {} (Ctrl-C to stop)",
            session.username
        );
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            item = stream.next() => match item {
                None => anyhow::bail!("the auth server closed the stream; run the command again"),
                Some(Err(status)) => anyhow::bail!("{}", status.message()),
                Some(Ok(p)) => {
                    let p = inbox_entry(&client.open_pending(p)?);
                    if !seen.insert(p.voicemail_id.clone()) {
                        continue;
                    }
                    if ctx.json {
                        super::output::json(&VoicemailJson::from(&p));
                        continue;
                    }
                    let [id, from, at, size, duration, ty, _] = row(&p);
                    outln!("new voicemail {id} from {from} at {at}, {size}, {duration}, {ty}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_senders_and_first_contacts_are_marked() {
        let mut e = InboxEntry {
            sender: "bob".into(),
            ..Default::default()
        };
        assert_eq!(from(&e), "bob");
        e.first_contact = true;
        assert_eq!(from(&e), "bob (unknown caller)");
        e.anonymous = true;
        e.sender.clear();
        assert_eq!(from(&e), "anonymous (unknown caller)");
        e.first_contact = false;
        assert_eq!(sender_name(&e), "anonymous");
    }
}
