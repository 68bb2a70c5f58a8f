//! A session crossing the control socket (`SetSession`): what the CLI
//! hands its peer daemon after `vmail login`, checked field by field. The
//! inbox key travels with the token and master key: the daemon needs it to
//! open the key shares the auth servers reseal to the session. A request
//! without one comes from a CLI older than inbox keys and is refused with
//! the next step.

use ed25519_dalek::{SigningKey, VerifyingKey};
use tonic::Status;
use vmail_proto::cert::UserCertificate;
use vmail_proto::control_pb as pb;
use vmail_proto::keys::MasterKey;
use vmail_proto::names::Username;
use vmail_proto::share::BoxSecret;

use crate::auth_client::{AuthTarget, LoginSession};
use crate::peer::Session;

impl TryFrom<pb::SetSessionRequest> for Session {
    type Error = Status;

    fn try_from(r: pb::SetSessionRequest) -> Result<Self, Status> {
        let bad = Status::invalid_argument;
        let key32 = |b: &[u8], what: &str| -> Result<[u8; 32], Status> {
            b.try_into()
                .map_err(|_| bad(format!("{what} must be 32 bytes")))
        };
        let certificate = UserCertificate::from_bytes(&r.certificate)
            .map_err(|e| bad(format!("certificate: {e}")))?;
        let cluster_key = VerifyingKey::from_bytes(&key32(&r.cluster_key, "cluster key")?)
            .map_err(|e| bad(format!("cluster key: {e}")))?;
        let group_key = match r.group_key.as_slice() {
            [] => None,
            b => Some(
                VerifyingKey::from_bytes(&key32(b, "group key")?)
                    .map_err(|e| bad(format!("group key: {e}")))?,
            ),
        };
        if r.inbox_key.is_empty() {
            return Err(bad(format!(
                "the session of {} has no inbox key (it comes from an older vmail): run `vmail login {}` again",
                r.username, r.username
            )));
        }
        let inbox_key = BoxSecret::from_bytes(&key32(&r.inbox_key, "inbox key")?)
            .map_err(|e| bad(format!("inbox key: {e}")))?;
        Ok(Session {
            login: LoginSession {
                username: Username::parse(&r.username).map_err(|e| bad(e.to_string()))?,
                token: key32(&r.token, "token")?,
                master_key: MasterKey::from_bytes(key32(&r.master_key, "master key")?),
                master_key_id: r
                    .master_key_id
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("master key id must be 16 bytes".into()))?,
                expires_at: r.expires_at,
                certificate,
                inbox_key,
            },
            identity: SigningKey::from_bytes(&key32(&r.identity_key, "identity key")?),
            target: AuthTarget {
                endpoints: r.auth_endpoints,
                ca_pem: r.ca_pem,
                cluster_key,
                group_key,
            },
        })
    }
}

impl From<&Session> for pb::SetSessionRequest {
    fn from(s: &Session) -> Self {
        Self {
            username: s.login.username.to_string(),
            token: s.login.token.to_vec(),
            master_key: s.login.master_key.as_bytes().to_vec(),
            master_key_id: s.login.master_key_id.to_vec(),
            expires_at: s.login.expires_at,
            certificate: s.login.certificate.to_bytes(),
            identity_key: s.identity.to_bytes().to_vec(),
            auth_endpoints: s.target.endpoints.clone(),
            ca_pem: s.target.ca_pem.clone(),
            cluster_key: s.target.cluster_key.to_bytes().to_vec(),
            inbox_key: s.login.inbox_key.to_bytes().to_vec(),
            group_key: s
                .target
                .group_key
                .map(|k| k.to_bytes().to_vec())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn session() -> Session {
        let cluster = SigningKey::from_bytes(&[1; 32]);
        let bob = Username::parse("bob").unwrap();
        Session {
            login: LoginSession {
                username: bob.clone(),
                token: [2; 32],
                master_key: MasterKey::from_bytes([3; 32]),
                master_key_id: [4; 16],
                expires_at: 1_800_000_000,
                certificate: vmail_proto::cert::CertificateBody {
                    serial: 1,
                    username: bob,
                    identity_key: SigningKey::from_bytes(&[5; 32]).verifying_key(),
                    peer_id: Vec::new(),
                    not_before: 0,
                    not_after: 1_900_000_000,
                }
                .sign(&cluster),
                inbox_key: BoxSecret::generate(),
            },
            identity: SigningKey::from_bytes(&[5; 32]),
            target: AuthTarget {
                endpoints: vec!["https://a:1".into(), "https://b:2".into()],
                ca_pem: b"ca".to_vec(),
                cluster_key: cluster.verifying_key(),
                group_key: Some(SigningKey::from_bytes(&[6; 32]).verifying_key()),
            },
        }
    }

    #[test]
    fn a_session_crosses_the_socket_with_its_inbox_key() {
        let s = session();
        let back = Session::try_from(pb::SetSessionRequest::from(&s)).unwrap();
        assert_eq!(back.login.inbox_key.public(), s.login.inbox_key.public());
        assert_eq!(back.login.token, s.login.token);
        assert_eq!(back.target.endpoints, s.target.endpoints);
        assert_eq!(back.target.group_key, s.target.group_key);
        let mut unpinned = pb::SetSessionRequest::from(&s);
        unpinned.group_key.clear();
        assert_eq!(Session::try_from(unpinned).unwrap().target.group_key, None);
        // A CLI from before inbox keys sends none: told to log in again.
        let mut old = pb::SetSessionRequest::from(&s);
        old.inbox_key.clear();
        let err = Session::try_from(old).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("no inbox key")
                && err.message().contains("`vmail login bob` again"),
            "{}",
            err.message()
        );
        let mut short = pb::SetSessionRequest::from(&s);
        short.inbox_key.truncate(31);
        assert!(Session::try_from(short).is_err());
    }
}
