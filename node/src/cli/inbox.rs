//! `vmail inbox`: the voicemails waiting for you, as a table.

use tokio_stream::StreamExt;
use vmail_node::client::Pending;

use super::{Context, when};

const HEADER: [&str; 6] = ["ID", "FROM", "RECEIVED", "SIZE", "TYPE", "EXPIRES"];

fn row(p: &Pending) -> [String; 6] {
    [
        hex::encode(p.id),
        p.sender.username.to_string(),
        when(p.deposited_at),
        format!("{} B", p.meta.size),
        if p.meta.content_type.is_empty() {
            "-".to_owned()
        } else {
            p.meta.content_type.clone()
        },
        when(p.meta.expires_at),
    ]
}

fn print_table(rows: &[[String; 6]]) {
    let mut widths = HEADER.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 6]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(HEADER);
    for r in rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]].map(String::as_str));
    }
}

pub(super) async fn run(ctx: &Context, watch: bool) -> anyhow::Result<()> {
    let (mut client, session) = ctx.logged_in().await?;
    if !watch {
        let pending = client.list_pending(&session.master_key).await?;
        if pending.is_empty() {
            println!("no voicemail waiting for {}", session.username);
            return Ok(());
        }
        print_table(&pending.iter().map(row).collect::<Vec<_>>());
        println!(
            "{} voicemail(s); every sender certificate and session key checked",
            pending.len()
        );
        return Ok(());
    }
    let mut stream = client.watch_pending().await?;
    // The server may send a voicemail twice around the stream's start.
    let mut seen = std::collections::HashSet::new();
    println!(
        "watching for voicemail to {} (Ctrl-C to stop)",
        session.username
    );
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            item = stream.next() => match item {
                None => anyhow::bail!("the auth server closed the stream; run the command again"),
                Some(Err(status)) => anyhow::bail!("{}", status.message()),
                Some(Ok(p)) => {
                    let p = client.open_pending(&session.master_key, p)?;
                    if !seen.insert(p.id) {
                        continue;
                    }
                    let [id, from, at, size, ty, _] = row(&p);
                    println!("new voicemail {id} from {from} at {at}, {size}, {ty}");
                }
            }
        }
    }
}
