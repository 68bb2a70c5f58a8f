//! `vmail account register|set`, `vmail login`, `vmail logout`, `vmail whoami`.

use anyhow::bail;
use ed25519_dalek::SigningKey;
use tonic::Code;
use vmail_node::auth_client::Allowance;
use vmail_proto::names::Username;

use super::{Ask, Context, MIN_PASSWORD_LEN, when};

pub(super) async fn register(
    ctx: &Context,
    user: &str,
    invite: Option<&str>,
) -> anyhow::Result<()> {
    let name = Username::parse(user)?;
    let password = ctx.password(&format!("New password for {name}: "), Ask::Twice)?;
    if password.chars().count() < MIN_PASSWORD_LEN {
        bail!(
            "the password must be at least {MIN_PASSWORD_LEN} characters; nothing was registered"
        );
    }
    let identity = ctx.keystore.identity_or_create()?;
    let mut client = ctx.connect().await?;
    client
        .register(name.as_str(), password.as_bytes(), &identity, invite)
        .await?;
    println!("registered {name} at {}", client.endpoint());
    println!(
        "identity key {}",
        hex::encode(identity.verifying_key().as_bytes())
    );
    println!("next: vmail login {name}");
    Ok(())
}

pub(super) async fn login(ctx: &Context, user: &str, rotate: bool) -> anyhow::Result<()> {
    let name = Username::parse(user)?;
    // A rotated key is only saved once the server has certified it.
    let identity = match (rotate, ctx.keystore.identity()?) {
        (false, Some(k)) => k,
        _ => SigningKey::from_bytes(&vmail_proto::random_bytes()),
    };
    let password = ctx.password(&format!("Password for {name}: "), Ask::Once)?;
    // A running peer daemon gets its PeerId bound into the certificate.
    let socket = ctx.data_dir(None).join(vmail_node::control::SOCKET_FILE);
    let mut daemon = vmail_node::control::ControlClient::connect(&socket)
        .await
        .ok();
    let peer_id = match &mut daemon {
        Some(d) => d.status().await?.peer_id,
        None => Vec::new(),
    };
    let mut client = ctx.connect().await?;
    let session = client
        .login(name.as_str(), password.as_bytes(), &identity, &peer_id)
        .await?;
    if ctx.keystore.identity()?.map(|k| k.to_bytes()) != Some(identity.to_bytes()) {
        ctx.keystore.save_identity(&identity)?;
    }
    ctx.keystore.save_session(&session)?;
    println!("logged in as {name} at {}", client.endpoint());
    if let Some(d) = &mut daemon {
        d.set_session(&ctx.peer_session()?).await?;
        println!("session handed to the peer daemon; the certificate binds its peer id");
    }
    println!("session valid until {}", when(session.expires_at));
    println!("master key id {}", hex::encode(session.master_key_id));
    println!(
        "certificate serial {} for identity key {}{}",
        session.certificate.serial,
        hex::encode(session.certificate.identity_key.as_bytes()),
        if rotate { " (rotated)" } else { "" }
    );
    Ok(())
}

pub(super) async fn logout(ctx: &Context) -> anyhow::Result<()> {
    let Some(session) = ctx.keystore.session()? else {
        println!("not logged in");
        return Ok(());
    };
    let (mut client, _) = ctx.logged_in().await?;
    match client.logout().await {
        Ok(()) => println!(
            "logged out {}: token and master key revoked on the server",
            session.username
        ),
        Err(e) if e.code() == Some(Code::Unauthenticated) => {
            println!("the server had already ended this session ({e})")
        }
        Err(e) => bail!("logout failed, the local session is kept so you can retry: {e}"),
    }
    ctx.keystore.clear_session()?;
    Ok(())
}

pub(super) async fn whoami(ctx: &Context) -> anyhow::Result<()> {
    let (mut client, session) = ctx.logged_in().await?;
    let me = match client.whoami().await {
        Ok(me) => me,
        Err(e) if e.code() == Some(Code::Unauthenticated) => {
            bail!(
                "the saved session for {} is no longer valid: {e}",
                session.username
            )
        }
        Err(e) => return Err(e.into()),
    };
    let cert = &me.certificate;
    println!("user           {}", me.username);
    println!("auth server    {}", client.endpoint());
    println!("session until  {}", when(me.expires_at));
    println!("master key id  {}", hex::encode(me.master_key_id));
    println!(
        "identity key   {}",
        hex::encode(cert.identity_key.as_bytes())
    );
    println!(
        "certificate    serial {}, valid {} to {}",
        cert.serial,
        when(cert.not_before),
        when(cert.not_after)
    );
    println!("retention      {}", days(me.retention_secs));
    for line in allowance_lines(&me.allowances, vmail_proto::unix_now()) {
        println!("{line}");
    }
    println!("spam reports   {}", reports(me.reports));
    Ok(())
}

/// A Unix time in this machine's time zone, e.g. `2026-12-03 15:00:00 +01:00`.
fn local_time(unix: u64) -> String {
    match i64::try_from(unix)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
    {
        Some(t) => t
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        None => when(unix),
    }
}

/// Each sender quota: "name: used/limit, resets at TIME (in DURATION)",
/// the time in this machine's zone.
fn allowance_lines(allowances: &[Allowance], now: u64) -> Vec<String> {
    if allowances.is_empty() {
        return vec!["allowances     (none reported by the auth group)".to_owned()];
    }
    let mut out = vec!["allowances".to_owned()];
    for a in allowances {
        let resets = match a.resets_at {
            Some(at) => format!(
                ", resets at {} (in {})",
                local_time(at),
                days(at.saturating_sub(now))
            ),
            None => String::new(),
        };
        out.push(format!("  {}: {}/{}{resets}", a.name, a.used, a.limit));
    }
    out
}

/// The report count, with what it costs.
fn reports(n: u32) -> String {
    match n {
        0 => "0".to_owned(),
        n => format!(
            "{n} recipient(s) reported your voicemail; each halves your new recipients per day"
        ),
    }
}

/// `vmail account set retention DURATION|default`.
pub(super) async fn set_retention(ctx: &Context, value: &str) -> anyhow::Result<()> {
    let secs = if value == "default" {
        0
    } else {
        match humantime::parse_duration(value) {
            Ok(d) => d.as_secs().max(1),
            Err(e) => bail!(
                "retention {value:?} is not a duration ({e}): use e.g. `7d`, `36h`, or `default`"
            ),
        }
    };
    let (mut client, session) = ctx.logged_in().await?;
    let now = client.set_retention(secs).await?;
    println!(
        "voicemail for {} now waits at most {} before it expires unread",
        session.username,
        days(now)
    );
    Ok(())
}

/// A retention in days and hours.
fn days(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowances_show_use_limit_and_reset() {
        let lines = allowance_lines(
            &[
                Allowance {
                    name: "voicemails_per_hour".into(),
                    limit: 30,
                    used: 3,
                    resets_at: Some(1_800_003_600),
                },
                Allowance {
                    name: "outstanding_bytes".into(),
                    limit: 1000,
                    used: 0,
                    resets_at: None,
                },
            ],
            1_800_000_000,
        );
        assert_eq!(lines[0], "allowances");
        assert!(
            lines[1].starts_with(&format!(
                "  voicemails_per_hour: 3/30, resets at {}",
                local_time(1_800_003_600)
            )),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("(in 1h)"), "{}", lines[1]);
        assert_eq!(lines[2], "  outstanding_bytes: 0/1000");
        assert!(reports(2).starts_with("2 recipient(s)"));
    }

    #[test]
    fn local_time_names_its_offset() {
        let t = local_time(1_800_003_600);
        // "YYYY-MM-DD HH:MM:SS +HH:MM", whatever the zone.
        assert_eq!(t.len(), 26, "{t}");
        assert!(t.starts_with("2027-01-1"), "{t}");
        assert!(t.contains(" +") || t.contains(" -"), "{t}");
    }
}
