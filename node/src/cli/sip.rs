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
            outln!("SIP password saved in {} (mode 0600)", path.display());
            outln!("  a running `vmail node run --sip ADDR` uses it from the next REGISTER on");
            Ok(())
        }
        SipCommand::Status { data_dir } => status(ctx, data_dir).await,
    }
}

async fn status(ctx: &Context, data_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let socket = ctx.data_dir(data_dir).join(control::SOCKET_FILE);
    let s = ControlClient::connect(&socket).await?.sip_status().await?;
    if ctx.json {
        super::output::json(&SipStatusJson::from(&s));
        return Ok(());
    }
    outln!("sip            udp {}", s.listen);
    outln!(
        "user           {}",
        if s.user.is_empty() {
            "(not logged in: run `vmail login USER`)"
        } else {
            &s.user
        }
    );
    outln!(
        "password       {}",
        if s.password_set {
            "set"
        } else {
            "not set: run `vmail sip set-password`"
        }
    );
    outln!(
        "lamp           {} ({} new, {} old)",
        if s.new_messages + s.old_messages > 0 {
            "on"
        } else {
            "off"
        },
        s.new_messages,
        s.old_messages
    );
    outln!("registrations  {}", s.bindings.len());
    for b in &s.bindings {
        outln!("  {}  expires in {} s", b.contact, b.expires_in_secs);
    }
    outln!("subscriptions  {}", s.subscriptions.len());
    for b in &s.subscriptions {
        outln!("  {}  expires in {} s", b.contact, b.expires_in_secs);
    }
    outln!("calls          {}", s.calls.len());
    for c in &s.calls {
        outln!(
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
        outln!("refused        {}", list.join(", "));
    }
    Ok(())
}

/// `vmail sip status --json`.
#[derive(Debug, serde::Serialize)]
struct SipStatusJson {
    /// The UDP address SIP is served on.
    listen: String,
    /// The user a softphone authenticates as; null when not logged in.
    user: Option<String>,
    password_set: bool,
    new_messages: u32,
    old_messages: u32,
    registrations: Vec<SipBindingJson>,
    subscriptions: Vec<SipBindingJson>,
    calls: Vec<SipCallJson>,
    /// Requests refused, by reason.
    refused: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, serde::Serialize)]
struct SipBindingJson {
    contact: String,
    expires_in_secs: u64,
}

#[derive(Debug, serde::Serialize)]
struct SipCallJson {
    /// "playback" or "record for USER".
    kind: String,
    /// This service's RTP address for the call.
    media: String,
    duration_ms: u64,
}

impl From<&vmail_proto::control_pb::SipStatusResponse> for SipStatusJson {
    fn from(s: &vmail_proto::control_pb::SipStatusResponse) -> Self {
        let binding = |contact: &str, expires_in_secs| SipBindingJson {
            contact: contact.to_owned(),
            expires_in_secs,
        };
        Self {
            listen: s.listen.clone(),
            user: (!s.user.is_empty()).then(|| s.user.clone()),
            password_set: s.password_set,
            new_messages: s.new_messages,
            old_messages: s.old_messages,
            registrations: s
                .bindings
                .iter()
                .map(|b| binding(&b.contact, b.expires_in_secs))
                .collect(),
            subscriptions: s
                .subscriptions
                .iter()
                .map(|b| binding(&b.contact, b.expires_in_secs))
                .collect(),
            calls: s
                .calls
                .iter()
                .map(|c| SipCallJson {
                    kind: c.kind.clone(),
                    media: c.media.clone(),
                    duration_ms: c.duration_ms,
                })
                .collect(),
            refused: s.refused.clone().into_iter().collect(),
        }
    }
}
