//! Users: the registration row (sealed OPAQUE password file, credential
//! nonce, current certificate), invite codes and certificate serials.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use vmail_proto::cert::UserCertificate;

use super::schema::{INVITES, META, USERS};
use super::sealing::{AAD_PASSWORD_FILE, aad};
use super::{Store, StoreError, corrupt, db_err, u64_le};

/// A registered user.
#[derive(Debug, Clone)]
pub struct User {
    /// The OPAQUE password file (unsealed).
    pub password_file: Vec<u8>,
    /// With the username, names the OPRF key of the password file.
    pub credential_nonce: [u8; 16],
    /// The current certificate.
    pub certificate: UserCertificate,
    /// Registration time, Unix seconds.
    pub registered_at: u64,
    /// The account public key ([`vmail_proto::account`]), fixed at
    /// registration: every session of the user must be signed by it.
    pub account_key: [u8; 32],
}

#[derive(Serialize, Deserialize)]
pub(super) struct UserRow {
    pub(super) password_file_sealed: Vec<u8>,
    pub(super) credential_nonce: [u8; 16],
    pub(super) certificate: Vec<u8>,
    pub(super) registered_at: u64,
    pub(super) account_key: [u8; 32],
}

/// The result of [`Store::register`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterOutcome {
    /// The user was created.
    Created,
    /// The username is taken; nothing changed.
    UserExists,
    /// The invite code was already used; nothing changed.
    InviteUsed,
}

impl Store {
    /// A user by name, inside a write transaction.
    pub(crate) fn user_in(
        &self,
        tx: &WriteTransaction,
        name: &str,
    ) -> Result<Option<User>, StoreError> {
        let users = tx.open_table(USERS).map_err(db_err)?;
        match users.get(name).map_err(db_err)? {
            Some(v) => Ok(Some(self.decode_user(name, v.value())?)),
            None => Ok(None),
        }
    }

    fn decode_user(&self, name: &str, bytes: &[u8]) -> Result<User, StoreError> {
        let row: UserRow = postcard::from_bytes(bytes).map_err(|e| corrupt("users", name, e))?;
        let password_file = self
            .data_key
            .open(
                &row.password_file_sealed,
                &aad(AAD_PASSWORD_FILE, name.as_bytes()),
            )
            .map_err(|e| corrupt("users", name, e))?;
        let certificate =
            UserCertificate::from_bytes(&row.certificate).map_err(|e| corrupt("users", name, e))?;
        if certificate.username.as_str() != name {
            return Err(corrupt(
                "users",
                name,
                format!("holds {}'s certificate", certificate.username),
            ));
        }
        Ok(User {
            password_file,
            credential_nonce: row.credential_nonce,
            certificate,
            registered_at: row.registered_at,
            account_key: row.account_key,
        })
    }

    fn encode_user(&self, name: &str, user: &User) -> Vec<u8> {
        postcard::to_allocvec(&UserRow {
            password_file_sealed: self.data_key.seal(
                &user.password_file,
                &aad(AAD_PASSWORD_FILE, name.as_bytes()),
            ),
            credential_nonce: user.credential_nonce,
            certificate: user.certificate.to_bytes(),
            registered_at: user.registered_at,
            account_key: user.account_key,
        })
        .expect("in-memory encoding cannot fail")
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let users = tx.open_table(USERS).map_err(db_err)?;
            match users.get(name).map_err(db_err)? {
                Some(v) => Ok(Some(self.decode_user(name, v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Whether the invite code with this hash was used.
    pub fn invite_used(&self, hash: &str) -> Result<bool, StoreError> {
        self.run(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let invites = tx.open_table(INVITES).map_err(db_err)?;
            Ok(invites.get(hash).map_err(db_err)?.is_some())
        })
    }

    /// Reserves the next certificate serial number.
    pub(super) fn next_serial(tx: &redb::WriteTransaction) -> Result<u64, StoreError> {
        let mut meta = tx.open_table(META).map_err(db_err)?;
        let serial = meta
            .get("next_serial")
            .map_err(db_err)?
            .and_then(|v| u64_le(v.value()))
            .ok_or_else(|| corrupt("meta", "next_serial", "missing"))?;
        meta.insert("next_serial", (serial + 1).to_le_bytes().as_slice())
            .map_err(db_err)?;
        Ok(serial)
    }

    /// Creates a user whose certificate `make_user` builds from a fresh serial.
    /// `invite_hash` marks a single-use invite code as used.
    pub(crate) fn register(
        &self,
        tx: &WriteTransaction,
        name: &str,
        invite_hash: Option<&str>,
        make_user: impl FnOnce(u64) -> User,
    ) -> Result<RegisterOutcome, StoreError> {
        {
            let mut users = tx.open_table(USERS).map_err(db_err)?;
            if users.get(name).map_err(db_err)?.is_some() {
                return Ok(RegisterOutcome::UserExists);
            }
            if let Some(h) = invite_hash {
                let mut invites = tx.open_table(INVITES).map_err(db_err)?;
                if invites.get(h).map_err(db_err)?.is_some() {
                    return Ok(RegisterOutcome::InviteUsed);
                }
                invites.insert(h, name).map_err(db_err)?;
            }
            let user = make_user(Self::next_serial(tx)?);
            users
                .insert(name, self.encode_user(name, &user).as_slice())
                .map_err(db_err)?;
        }
        Ok(RegisterOutcome::Created)
    }
}
