//! Retention: how long voicemail for a user may wait before it expires
//! unread. Each user may choose it ([`validate_retention`] checks the
//! choice), within the group's cap; a storage grant, and so the voicemail
//! deposited under it, expires no later than the shortest retention among
//! its recipients ([`AuthService::request_grant`]).

use super::AuthService;
use super::error::{AuthError, invalid};
use crate::cluster::{Command, Reply};
use crate::config::ServerConfig;
use crate::store::Session;

/// The shortest retention a user may choose: an hour, so that a voicemail
/// outlives its upload and a recipient's next look at the inbox.
pub const MIN_RETENTION_SECS: u64 = 3600;

/// The longest retention a user may choose: `max_voicemail_ttl_secs`, never
/// above the holders' cap (`vmail_proto::grant::MAX_RETENTION_SECS`).
pub fn retention_cap(config: &ServerConfig) -> u64 {
    config.max_grant_ttl_secs()
}

/// The retention of a user who chose none: `default_voicemail_ttl_secs`,
/// within the cap.
pub fn default_retention(config: &ServerConfig) -> u64 {
    config.default_voicemail_ttl_secs.min(retention_cap(config))
}

/// The retention in force for a user whose stored choice is `chosen`: the
/// default without one, and never above the cap (which a config change may
/// have lowered since the choice).
pub fn retention_in_force(chosen: Option<u64>, config: &ServerConfig) -> u64 {
    chosen.map_or_else(
        || default_retention(config),
        |secs| secs.min(retention_cap(config)),
    )
}

/// Checks a SetRetention request: 0 (back to the default), or
/// [`MIN_RETENTION_SECS`] to [`retention_cap`]. Pure.
pub fn validate_retention(secs: u64, config: &ServerConfig) -> Result<u64, AuthError> {
    let cap = retention_cap(config);
    if secs == 0 || (MIN_RETENTION_SECS..=cap).contains(&secs) {
        return Ok(secs);
    }
    Err(invalid(
        "retention_secs",
        format!(
            "{secs} s is outside {MIN_RETENTION_SECS}..={cap} (an hour to this group's cap, max_voicemail_ttl_secs); choose a value in that range, or send 0 for the group's default of {} s",
            default_retention(config)
        ),
    ))
}

impl AuthService {
    /// Sets how long voicemail for the caller may wait; 0 returns to the
    /// group's default. Returns the retention now in force, seconds. It
    /// applies to grants issued from now on; voicemail already deposited
    /// keeps its expiry.
    pub async fn set_retention(&self, session: &Session, secs: u64) -> Result<u64, AuthError> {
        self.charge_write(&session.username)?;
        let secs = validate_retention(secs, &self.config)?;
        let reply = self
            .propose(Command::SetRetention {
                username: session.username.clone(),
                retention_secs: secs,
            })
            .await?;
        if reply != Reply::RetentionSet {
            return Err(AuthError::Apply(format!(
                "unexpected reply {reply:?} to a retention change"
            )));
        }
        let in_force = retention_in_force((secs != 0).then_some(secs), &self.config);
        tracing::info!(user = %session.username, retention_secs = in_force, "retention set");
        Ok(in_force)
    }

    /// The retention in force for `username`, seconds, from this server's
    /// state (callers read it after a linearizable read, or accept that a
    /// change just applied elsewhere may not show yet).
    pub async fn retention(&self, username: &str) -> Result<u64, AuthError> {
        let user = username.to_owned();
        let chosen = self.db(move |s| s.retention(&user)).await?;
        Ok(retention_in_force(chosen, &self.config))
    }

    /// The shortest retention in force among `usernames`, seconds.
    pub(super) async fn shortest_retention(
        &self,
        usernames: Vec<String>,
    ) -> Result<u64, AuthError> {
        let chosen = self
            .db(move |s| {
                usernames
                    .iter()
                    .map(|u| s.retention(u))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(chosen
            .into_iter()
            .map(|c| retention_in_force(c, &self.config))
            .min()
            .unwrap_or_else(|| default_retention(&self.config)))
    }
}

#[cfg(test)]
mod tests {
    //! [`validate_retention`] and the retention in force.

    use super::*;

    #[test]
    fn retention_is_an_hour_to_the_cap_or_zero_for_the_default() {
        let config = ServerConfig {
            max_voicemail_ttl_secs: 7 * 86_400,
            default_voicemail_ttl_secs: 86_400,
            ..ServerConfig::default()
        };
        for ok in [0, MIN_RETENTION_SECS, 86_400, 7 * 86_400] {
            assert_eq!(validate_retention(ok, &config).unwrap(), ok);
        }
        for bad in [1, MIN_RETENTION_SECS - 1, 7 * 86_400 + 1, u64::MAX] {
            match validate_retention(bad, &config) {
                Err(AuthError::InvalidArgument { field, why }) => {
                    assert_eq!(field, "retention_secs");
                    assert!(
                        why.starts_with(&format!("{bad} s is outside 3600..=604800")),
                        "{why}"
                    );
                    assert!(why.contains("send 0 for the group's default of 86400 s"));
                }
                other => panic!("{bad}: expected InvalidArgument, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_retention_in_force_is_the_choice_within_the_cap_or_the_default() {
        let config = ServerConfig {
            max_voicemail_ttl_secs: 7 * 86_400,
            default_voicemail_ttl_secs: 86_400,
            ..ServerConfig::default()
        };
        assert_eq!(retention_in_force(None, &config), 86_400);
        assert_eq!(retention_in_force(Some(7200), &config), 7200);
        // A choice made under a higher cap is held to today's.
        assert_eq!(retention_in_force(Some(30 * 86_400), &config), 7 * 86_400);
        // The holders' cap bounds even a longer configured maximum.
        let long = ServerConfig {
            max_voicemail_ttl_secs: 365 * 86_400,
            default_voicemail_ttl_secs: 365 * 86_400,
            ..ServerConfig::default()
        };
        assert_eq!(
            retention_in_force(None, &long),
            vmail_proto::grant::MAX_RETENTION_SECS
        );
    }
}
