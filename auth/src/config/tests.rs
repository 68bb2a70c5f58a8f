//! Tests of server settings: defaults, ranges and the errors that name a bad key.

use super::*;

#[test]
fn partial_files_take_defaults_and_unknown_keys_fail() {
    let c: ServerConfig =
        toml::from_str("name = \"a\"\n[registration]\nmode = \"invite\"\ninvite_codes = [\"x\"]\n")
            .unwrap();
    assert_eq!(c.name, "a");
    assert_eq!(c.registration.mode, RegistrationMode::Invite);
    assert_eq!(c.session_ttl_secs, DEFAULT_SESSION_TTL_SECS);
    assert_eq!(c.spam.default_mode, PolicyMode::ContactsFirstContact);
    let open: ServerConfig =
        toml::from_str("[spam]\ndefault_mode = \"anyone\"\nvoicemails_per_hour = 5\n").unwrap();
    assert_eq!(open.spam.default_mode, PolicyMode::Anyone);
    assert_eq!(open.spam.voicemails_per_hour, 5);
    assert_eq!(
        open.spam.new_recipients_per_day,
        DEFAULT_NEW_RECIPIENTS_PER_DAY
    );
    assert!(toml::from_str::<ServerConfig>("nmae = \"a\"").is_err());
    let round: ServerConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(round, c);
}

#[test]
fn validation_names_the_key() {
    assert_eq!(ServerConfig::default().validate(), Ok(()));
    let bad = |f: fn(&mut ServerConfig)| {
        let mut c = ServerConfig::default();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    };
    assert!(bad(|c| c.listen = "localhost:7443".into()).starts_with("listen"));
    assert!(bad(|c| c.certificate_ttl_secs = 60).starts_with("certificate_ttl_secs"));
    assert!(
        bad(|c| c.default_voicemail_ttl_secs = DEFAULT_MAX_VOICEMAIL_TTL_SECS + 1)
            .starts_with("default_voicemail_ttl_secs")
    );
    assert!(bad(|c| c.max_failed_logins = 0).starts_with("max_failed_logins"));
    assert!(bad(|c| c.session_ttl_secs = u64::MAX).starts_with("session_ttl_secs"));
    assert!(bad(|c| c.registration.mode = RegistrationMode::Invite).contains("invite_codes"));
    assert!(bad(|c| c.max_pending_per_user = 0).starts_with("max_pending_per_user"));
    assert!(bad(|c| c.max_pending_per_user = 3001).starts_with("max_pending_per_user"));
    assert!(bad(|c| c.max_shard_bytes = 0).starts_with("max_shard_bytes"));
    assert!(bad(|c| c.max_open_grants_per_user = 0).starts_with("max_open_grants_per_user"));
    assert!(bad(|c| c.login_timeout_secs = 1).starts_with("login_timeout_secs"));
    assert!(bad(|c| c.lockout_window_secs = 0).starts_with("lockout_window_secs"));
    assert!(
        bad(|c| c.max_logins_in_progress_per_user = c.max_logins_in_progress)
            .starts_with("max_logins_in_progress_per_user")
    );
    assert!(bad(|c| c.max_watch_streams_per_user = 1).starts_with("max_watch_streams_per_user"));
    assert!(
        bad(|c| c.registrations_per_minute_per_address = 601)
            .starts_with("registrations_per_minute_per_address")
    );
    assert!(bad(|c| c.writes_per_minute_per_user = 0).starts_with("writes_per_minute_per_user"));
    assert!(bad(|c| c.max_concurrent_streams = 4).starts_with("max_concurrent_streams"));
    assert!(bad(|c| c.spam.voicemails_per_hour = 0).starts_with("spam.voicemails_per_hour"));
    assert!(bad(|c| c.spam.first_contact_ttl_secs = 60).starts_with("spam.first_contact_ttl_secs"));
}
