//! Usernames and recipient lists: the validation rules and the canonical form
//! that key derivation and key-wrap AADs bind.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Shortest allowed username, in characters.
pub const USERNAME_MIN: usize = 3;
/// Longest allowed username, in characters.
pub const USERNAME_MAX: usize = 64;
/// Most recipients one voicemail may name.
pub const MAX_RECIPIENTS: usize = 64;

/// Why a username or recipient list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The username is shorter or longer than allowed.
    #[error("username {0:?} must be {USERNAME_MIN} to {USERNAME_MAX} characters long")]
    Length(String),
    /// The username has a character outside `[a-z0-9._-]`.
    #[error("username {0:?} may only contain lowercase letters, digits, '.', '_' and '-'")]
    Charset(String),
    /// The recipient list is empty.
    #[error("a voicemail needs at least one recipient")]
    NoRecipients,
    /// The recipient list is too long.
    #[error("a voicemail may name at most {MAX_RECIPIENTS} recipients, not {0}")]
    TooManyRecipients(usize),
}

/// A validated username: 3-64 characters of `[a-z0-9._-]`. It deserializes
/// only from a valid name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl TryFrom<String> for Username {
    type Error = NameError;

    fn try_from(s: String) -> Result<Self, NameError> {
        Self::parse(&s)
    }
}

impl From<Username> for String {
    fn from(u: Username) -> String {
        u.0
    }
}

impl Username {
    /// Validates `s` as a username.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let n = s.chars().count();
        if !(USERNAME_MIN..=USERNAME_MAX).contains(&n) {
            return Err(NameError::Length(s.to_owned()));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(NameError::Charset(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The username as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A canonical recipient list: validated, sorted and without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipients(Vec<Username>);

impl Recipients {
    /// Validates, sorts and de-duplicates `names`.
    pub fn parse<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<Self, NameError> {
        let mut list = names
            .into_iter()
            .map(|s| Username::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        list.sort();
        list.dedup();
        match list.len() {
            0 => Err(NameError::NoRecipients),
            n if n > MAX_RECIPIENTS => Err(NameError::TooManyRecipients(n)),
            _ => Ok(Self(list)),
        }
    }

    /// The recipients in canonical order.
    pub fn iter(&self) -> impl Iterator<Item = &Username> {
        self.0.iter()
    }

    /// Whether `name` is one of the recipients.
    pub fn contains(&self, name: &Username) -> bool {
        self.0.binary_search(name).is_ok()
    }

    /// The canonical byte encoding bound by key derivation and wrap AADs:
    /// a u16 count, then each name as a u8 length and its bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.0.len() * 16);
        out.extend_from_slice(&(self.0.len() as u16).to_be_bytes());
        for name in &self.0 {
            out.push(name.0.len() as u8);
            out.extend_from_slice(name.0.as_bytes());
        }
        out
    }

    /// The recipients as plain strings, in canonical order.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|u| u.0.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(Username::parse("alice").is_ok());
        assert!(Username::parse("a.b_c-9").is_ok());
        assert_eq!(Username::parse("al"), Err(NameError::Length("al".into())));
        assert_eq!(
            Username::parse("Alice"),
            Err(NameError::Charset("Alice".into()))
        );
        assert!(Username::parse(&"a".repeat(64)).is_ok());
        assert!(Username::parse(&"a".repeat(65)).is_err());
        assert!(Username::parse("alice bob").is_err());
    }

    #[test]
    fn recipients_are_canonical() {
        let a = Recipients::parse(["carol", "alice", "carol"]).unwrap();
        let b = Recipients::parse(["alice", "carol"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical_bytes(), b.canonical_bytes());
        assert_eq!(a.to_strings(), ["alice", "carol"]);
        assert_eq!(
            Recipients::parse(Vec::<String>::new()),
            Err(NameError::NoRecipients)
        );
        let many: Vec<String> = (0..65).map(|i| format!("user{i}")).collect();
        assert_eq!(
            Recipients::parse(&many),
            Err(NameError::TooManyRecipients(65))
        );
    }
}
