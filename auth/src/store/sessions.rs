//! Login sessions: the token hash, the sealed master key, the inbox key
//! (the public key servers reseal session-key shares to) and the expiry.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmail_proto::cert::UserCertificate;
use vmail_proto::keys::{MasterKey, MasterKeyId};

use super::schema::{SESSIONS, USERS};
use super::sealing::master_key_aad;
use super::users::UserRow;
use super::{Store, StoreError, corrupt, db_err};

/// SHA-256 of a session token: what the server stores instead of the token.
pub fn token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// A login session.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 of the bearer token.
    pub token_hash: [u8; 32],
    /// Whose session.
    pub username: String,
    /// The master key negotiated at login (unsealed).
    pub master_key: MasterKey,
    /// Its id.
    pub master_key_id: MasterKeyId,
    /// Login time, Unix seconds.
    pub created_at: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// The session's inbox key (X25519 public key): OpenShare reseals
    /// shares to it.
    pub inbox_key: [u8; 32],
}

#[derive(Serialize, Deserialize)]
pub(super) struct SessionRow {
    pub(super) username: String,
    pub(super) master_key_sealed: Vec<u8>,
    pub(super) master_key_id: MasterKeyId,
    pub(super) created_at: u64,
    pub(super) expires_at: u64,
    pub(super) inbox_key: [u8; 32],
}

impl Store {
    /// Records a login: a new session and the user's new current
    /// certificate, built by `make_cert` from a fresh serial. A certificate
    /// for a new identity key is how a key is rotated.
    pub(crate) fn begin_session(
        &self,
        tx: &WriteTransaction,
        session: &Session,
        make_cert: impl FnOnce(u64) -> UserCertificate,
    ) -> Result<UserCertificate, StoreError> {
        let name = session.username.as_str();
        let cert;
        {
            let mut users = tx.open_table(USERS).map_err(db_err)?;
            let mut row: UserRow = match users.get(name).map_err(db_err)? {
                Some(v) => {
                    postcard::from_bytes(v.value()).map_err(|e| corrupt("users", name, e))?
                }
                None => return Err(corrupt("users", name, "vanished during login")),
            };
            cert = make_cert(Self::next_serial(tx)?);
            row.certificate = cert.to_bytes();
            users
                .insert(
                    name,
                    postcard::to_allocvec(&row).expect("encodes").as_slice(),
                )
                .map_err(db_err)?;
            let row = SessionRow {
                username: session.username.clone(),
                master_key_sealed: self.data_key.seal(
                    session.master_key.as_bytes(),
                    &master_key_aad(&session.token_hash, &session.username, &session.inbox_key),
                ),
                master_key_id: session.master_key_id,
                created_at: session.created_at,
                expires_at: session.expires_at,
                inbox_key: session.inbox_key,
            };
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            sessions
                .insert(
                    session.token_hash.as_slice(),
                    postcard::to_allocvec(&row).expect("encodes").as_slice(),
                )
                .map_err(db_err)?;
        }
        Ok(cert)
    }

    /// Adds the group's threshold signature to `username`'s current
    /// certificate, if that is serial `serial` and the signature verifies
    /// under the group key (every server checks it at apply). `Err(why)`
    /// leaves the row as it was.
    pub(crate) fn certify_group(
        &self,
        tx: &WriteTransaction,
        username: &str,
        serial: u64,
        signature: &[u8],
    ) -> Result<Result<(), String>, StoreError> {
        let Some((_, group_key)) = self.group_key_in(tx)? else {
            return Ok(Err("the group has no signing key".into()));
        };
        let mut users = tx.open_table(USERS).map_err(db_err)?;
        let mut row: UserRow = match users.get(username).map_err(db_err)? {
            Some(v) => {
                postcard::from_bytes(v.value()).map_err(|e| corrupt("users", username, e))?
            }
            None => return Ok(Err(format!("no user {username}"))),
        };
        let mut cert = UserCertificate::from_bytes(&row.certificate)
            .map_err(|e| corrupt("users", username, e))?;
        if cert.serial != serial {
            return Ok(Err(format!(
                "the current certificate of {username} is serial {}, not {serial}",
                cert.serial
            )));
        }
        let Ok(signature) = <[u8; 64]>::try_from(signature) else {
            return Ok(Err(format!("a signature of {} bytes", signature.len())));
        };
        cert.group_signature = Some(ed25519_dalek::Signature::from_bytes(&signature));
        let key = ed25519_dalek::VerifyingKey::from_bytes(&group_key)
            .map_err(|e| corrupt("dkg", "group key", e))?;
        if let Err(e) = cert.verify_group_signature(&key) {
            return Ok(Err(e.to_string()));
        }
        row.certificate = cert.to_bytes();
        users
            .insert(
                username,
                postcard::to_allocvec(&row).expect("encodes").as_slice(),
            )
            .map_err(db_err)?;
        Ok(Ok(()))
    }

    /// A session by token hash.
    pub fn session(&self, token_hash: &[u8; 32]) -> Result<Option<Session>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            let Some(v) = sessions.get(token_hash.as_slice()).map_err(db_err)? else {
                return Ok(None);
            };
            let key = hex::encode(&token_hash[..8]);
            let row: SessionRow =
                postcard::from_bytes(v.value()).map_err(|e| corrupt("sessions", &key, e))?;
            let mk = self
                .data_key
                .open(
                    &row.master_key_sealed,
                    &master_key_aad(token_hash, &row.username, &row.inbox_key),
                )
                .map_err(|e| corrupt("sessions", &key, e))?;
            let mk: [u8; 32] = mk
                .try_into()
                .map_err(|_| corrupt("sessions", &key, "master key length"))?;
            Ok(Some(Session {
                token_hash: *token_hash,
                username: row.username,
                master_key: MasterKey::from_bytes(mk),
                master_key_id: row.master_key_id,
                created_at: row.created_at,
                expires_at: row.expires_at,
                inbox_key: row.inbox_key,
            }))
        })
    }

    /// Whether the session `token_hash` exists and whose user it is, inside
    /// a write transaction: `None` if it was ended or never was, otherwise
    /// its username and expiry.
    pub(crate) fn session_in(
        &self,
        tx: &WriteTransaction,
        token_hash: &[u8; 32],
    ) -> Result<Option<(String, u64)>, StoreError> {
        let sessions = tx.open_table(SESSIONS).map_err(db_err)?;
        let Some(v) = sessions.get(token_hash.as_slice()).map_err(db_err)? else {
            return Ok(None);
        };
        let row: SessionRow = postcard::from_bytes(v.value())
            .map_err(|e| corrupt("sessions", hex::encode(&token_hash[..8]), e))?;
        Ok(Some((row.username, row.expires_at)))
    }

    /// Deletes a session and its sealed master key. Returns whether it existed.
    pub(crate) fn end_session(
        &self,
        tx: &WriteTransaction,
        token_hash: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let existed = {
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            sessions
                .remove(token_hash.as_slice())
                .map_err(db_err)?
                .is_some()
        };
        Ok(existed)
    }
}
