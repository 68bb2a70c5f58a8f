//! `vmail sip set-password|status`: the softphone's password, and what the
//! daemon's SIP front sees.

use anyhow::Context as _;
use vmail_node::control::{self, ControlClient};

use super::{Ask, Context, SipCommand};

pub(super) async fn run(ctx: &Context, command: SipCommand) -> anyhow::Result<()> {
    match command {
        SipCommand::SetPassword { data_dir } => {
            let dir = ctx.data_dir(data_dir);
            let password = ctx.password("SIP password for your softphone: ", Ask::Twice)?;
            let path = vmail_node::sip::set_password(&dir, &password)
                .with_context(|| format!("setting the SIP password in {}", dir.display()))?;
            println!("SIP password saved in {} (mode 0600)", path.display());
            println!("  a running `vmail node run --sip ADDR` uses it from the next REGISTER on");
            Ok(())
        }
        SipCommand::Status { data_dir } => status(ctx, data_dir).await,
    }
}

async fn status(ctx: &Context, data_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let socket = ctx.data_dir(data_dir).join(control::SOCKET_FILE);
    let s = ControlClient::connect(&socket).await?.sip_status().await?;
    println!("sip            udp {}", s.listen);
    println!(
        "user           {}",
        if s.user.is_empty() {
            "(not logged in: run `vmail login USER`)"
        } else {
            &s.user
        }
    );
    println!(
        "password       {}",
        if s.password_set {
            "set"
        } else {
            "not set: run `vmail sip set-password`"
        }
    );
    println!(
        "lamp           {} ({} new, {} old)",
        if s.new_messages + s.old_messages > 0 {
            "on"
        } else {
            "off"
        },
        s.new_messages,
        s.old_messages
    );
    println!("registrations  {}", s.bindings.len());
    for b in &s.bindings {
        println!("  {}  expires in {} s", b.contact, b.expires_in_secs);
    }
    println!("subscriptions  {}", s.subscriptions.len());
    for b in &s.subscriptions {
        println!("  {}  expires in {} s", b.contact, b.expires_in_secs);
    }
    println!("calls          {}", s.calls.len());
    for c in &s.calls {
        println!(
            "  {}  rtp to {}  {} s",
            c.kind,
            c.media,
            c.duration_ms / 1000
        );
    }
    if !s.refused.is_empty() {
        let mut reasons: Vec<_> = s.refused.iter().collect();
        reasons.sort();
        let list: Vec<String> = reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("refused        {}", list.join(", "));
    }
    Ok(())
}
