//! `vmail account register|set`, `vmail login`, `vmail logout`, `vmail whoami`.

use anyhow::bail;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use tonic::Code;
use vmail_node::auth_client::Allowance;
use vmail_node::keystore::KeystoreError;
use vmail_proto::names::Username;

use super::{Ask, Context, MIN_PASSWORD_LEN, when};

/// `vmail account register --json`.
#[derive(Debug, Serialize)]
struct Registered {
    username: String,
    auth_server: String,
    /// The new account's own identity key, hex.
    identity_key: String,
}

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
    // Each account gets its own key: one shared by two accounts would link
    // them.
    let identity = ctx.keystore.identity_or_create(&name)?;
    let mut client = ctx.connect().await?;
    client
        .register(name.as_str(), password.as_bytes(), &identity, invite)
        .await?;
    let key = hex::encode(identity.verifying_key().as_bytes());
    if ctx.json {
        super::output::json(&Registered {
            username: name.to_string(),
            auth_server: client.endpoint().to_owned(),
            identity_key: key,
        });
        return Ok(());
    }
    outln!("registered {name} at {}", client.endpoint());
    outln!("identity key {key}");
    outln!("next: vmail login {name}");
    Ok(())
}

/// `vmail login --json`.
#[derive(Debug, Serialize)]
struct LoggedIn {
    username: String,
    auth_server: String,
    session_expires_at: u64,
    master_key_id: String,
    certificate_serial: u64,
    /// The identity key now certified, hex.
    identity_key: String,
    /// The certificate now names another key than before this login.
    identity_rotated: bool,
    /// The key certified before, hex, when it rotated (a key another home
    /// may still hold); null otherwise.
    previous_identity_key: Option<String>,
    /// Whether a running peer daemon got the session.
    daemon: bool,
}

pub(super) async fn login(ctx: &Context, user: &str, rotate: bool) -> anyhow::Result<()> {
    let name = Username::parse(user)?;
    let stored = ctx.keystore.identity(&name)?;
    // A new key is only saved once the server has certified it.
    let identity = match (rotate, &stored) {
        (false, Some(k)) => k.clone(),
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
    // The key certified now, if any: a login with another key replaces it,
    // and whichever home holds it loses its standing certificate.
    let before = client.certificate(name.as_str()).await.ok();
    let session = client
        .login(name.as_str(), password.as_bytes(), &identity, &peer_id)
        .await?;
    if stored.map(|k| k.to_bytes()) != Some(identity.to_bytes()) {
        ctx.keystore.save_identity(&name, &identity)?;
    }
    ctx.keystore.save_session(&session)?;
    let previous = before
        .map(|c| c.identity_key)
        .filter(|k| *k != identity.verifying_key());
    if let Some(d) = &mut daemon {
        d.set_session(&ctx.peer_session()?).await?;
    }
    let key = hex::encode(session.certificate.identity_key.as_bytes());
    if ctx.json {
        super::output::json(&LoggedIn {
            username: name.to_string(),
            auth_server: client.endpoint().to_owned(),
            session_expires_at: session.expires_at,
            master_key_id: hex::encode(session.master_key_id),
            certificate_serial: session.certificate.serial,
            identity_key: key,
            identity_rotated: previous.is_some(),
            previous_identity_key: previous.map(|k| hex::encode(k.as_bytes())),
            daemon: daemon.is_some(),
        });
        return Ok(());
    }
    outln!("logged in as {name} at {}", client.endpoint());
    if daemon.is_some() {
        outln!("session handed to the peer daemon; the certificate binds its peer id");
    }
    outln!("session valid until {}", when(session.expires_at));
    outln!("master key id {}", hex::encode(session.master_key_id));
    outln!(
        "certificate serial {} for identity key {key}{}",
        session.certificate.serial,
        if previous.is_some() { " (rotated)" } else { "" }
    );
    if let Some(old) = previous {
        for line in rotation_lines(&name, &hex::encode(old.as_bytes()), rotate) {
            outln!("{line}");
        }
    }
    Ok(())
}

/// What a login that certified a new identity key says: which key it
/// replaced, and what that means for a home that still holds the old one.
fn rotation_lines(name: &Username, old: &str, asked: bool) -> Vec<String> {
    let why = if asked {
        "as --rotate-identity asked"
    } else {
        "this home had no key for this account, so it made one"
    };
    vec![
        format!("identity key rotated ({why}): it replaces {old}"),
        format!(
            "  another vmail home that holds the old key now has a certificate that no longer matches: there, run `vmail login {name}` again before using it (which certifies that home's key, and replaces this one)"
        ),
        format!(
            "  to use {name} from several homes with one key, copy keystore/identities/{name}.key between them (mode 0600)"
        ),
    ]
}

/// `vmail logout --json`.
#[derive(Debug, Serialize)]
struct LoggedOut {
    /// Who was logged in; null when nobody was.
    username: Option<String>,
    /// Whether the server revoked the session now (false: it had ended it
    /// already, or nobody was logged in).
    revoked: bool,
}

pub(super) async fn logout(ctx: &Context) -> anyhow::Result<()> {
    let saved = match ctx.keystore.session() {
        // A login saved by an older vmail cannot be used any more; logging
        // out only forgets it (its server session ends at its expiry).
        Err(KeystoreError::NoInboxKey { username, .. }) => {
            ctx.keystore.clear_session()?;
            if ctx.json {
                super::output::json(&LoggedOut {
                    username: Some(username),
                    revoked: false,
                });
            } else {
                outln!(
                    "forgot the saved login of {username}, from an older vmail; the server ends its session when it expires"
                );
            }
            return Ok(());
        }
        other => other?,
    };
    let Some(session) = saved else {
        if ctx.json {
            super::output::json(&LoggedOut {
                username: None,
                revoked: false,
            });
        } else {
            outln!("not logged in");
        }
        return Ok(());
    };
    let (mut client, _) = ctx.logged_in().await?;
    let revoked = match client.logout().await {
        Ok(()) => true,
        Err(e) if e.code() == Some(Code::Unauthenticated) => {
            if !ctx.json {
                outln!("the server had already ended this session ({e})");
            }
            false
        }
        Err(e) => bail!("logout failed, the local session is kept so you can retry: {e}"),
    };
    ctx.keystore.clear_session()?;
    if ctx.json {
        super::output::json(&LoggedOut {
            username: Some(session.username.to_string()),
            revoked,
        });
    } else if revoked {
        outln!(
            "logged out {}: token and master key revoked on the server",
            session.username
        );
    }
    Ok(())
}

/// `vmail whoami --json`.
#[derive(Debug, Serialize)]
struct WhoAmIJson {
    username: String,
    auth_server: String,
    session_expires_at: u64,
    master_key_id: String,
    identity_key: String,
    certificate: CertificateJson,
    retention_secs: u64,
    allowances: Vec<AllowanceJson>,
    reports: u32,
}

#[derive(Debug, Serialize)]
struct CertificateJson {
    serial: u64,
    not_before: u64,
    not_after: u64,
}

#[derive(Debug, Serialize)]
struct AllowanceJson {
    name: String,
    used: u64,
    limit: u64,
    /// Unix seconds; null when nothing is used or only deletions free it.
    resets_at: Option<u64>,
}

pub(super) async fn whoami(ctx: &Context) -> anyhow::Result<()> {
    let (mut client, session) = ctx.logged_in().await?;
    let me = match client.whoami().await {
        Ok(me) => me,
        Err(e) if e.code() == Some(Code::Unauthenticated) => {
            bail!(
                "the saved session for {} is no longer valid: {e}; run `vmail login {}`",
                session.username,
                session.username
            )
        }
        Err(e) => return Err(e.into()),
    };
    let cert = &me.certificate;
    if ctx.json {
        super::output::json(&WhoAmIJson {
            username: me.username.to_string(),
            auth_server: client.endpoint().to_owned(),
            session_expires_at: me.expires_at,
            master_key_id: hex::encode(me.master_key_id),
            identity_key: hex::encode(cert.identity_key.as_bytes()),
            certificate: CertificateJson {
                serial: cert.serial,
                not_before: cert.not_before,
                not_after: cert.not_after,
            },
            retention_secs: me.retention_secs,
            allowances: me
                .allowances
                .iter()
                .map(|a| AllowanceJson {
                    name: a.name.clone(),
                    used: a.used,
                    limit: a.limit,
                    resets_at: a.resets_at,
                })
                .collect(),
            reports: me.reports,
        });
        return Ok(());
    }
    outln!("user           {}", me.username);
    outln!("auth server    {}", client.endpoint());
    outln!("session until  {}", when(me.expires_at));
    outln!("master key id  {}", hex::encode(me.master_key_id));
    outln!(
        "identity key   {}",
        hex::encode(cert.identity_key.as_bytes())
    );
    outln!(
        "certificate    serial {}, valid {} to {}",
        cert.serial,
        when(cert.not_before),
        when(cert.not_after)
    );
    outln!("retention      {}", days(me.retention_secs));
    for line in allowance_lines(&me.allowances, vmail_proto::unix_now()) {
        outln!("{line}");
    }
    outln!("spam reports   {}", reports(me.reports));
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
    if ctx.json {
        super::output::json(&RetentionJson {
            username: session.username.to_string(),
            retention_secs: now,
        });
        return Ok(());
    }
    outln!(
        "voicemail for {} now waits at most {} before it expires unread",
        session.username,
        days(now)
    );
    Ok(())
}

/// `vmail account set retention --json`: the retention now in force.
#[derive(Debug, Serialize)]
struct RetentionJson {
    username: String,
    retention_secs: u64,
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
    fn a_rotation_says_what_the_other_home_must_do() {
        let alice = Username::parse("alice").unwrap();
        let text = rotation_lines(&alice, "ab12", false).join("\n");
        assert!(text.contains("identity key rotated"), "{text}");
        assert!(text.contains("replaces ab12"), "{text}");
        assert!(text.contains("no longer matches"), "{text}");
        assert!(text.contains("run `vmail login alice` again"), "{text}");
        let asked = rotation_lines(&alice, "ab12", true).join("\n");
        assert!(asked.contains("--rotate-identity"), "{asked}");
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
