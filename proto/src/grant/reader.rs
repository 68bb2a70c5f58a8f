//! A bounds-checked cursor over untrusted bytes, for reading grants, deposit
//! proofs and delete orders: every read says what was truncated or wrong.

use super::{GrantError, malformed};
use crate::batch::GroupSignature;

/// A bounds-checked cursor over untrusted bytes.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], GrantError> {
        if self.bytes.len() < n {
            return Err(malformed(self.what, "truncated".into()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], GrantError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    pub(super) fn u8(&mut self) -> Result<u8, GrantError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u32(&mut self) -> Result<u32, GrantError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, GrantError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(super) fn label(&mut self, label: &[u8]) -> Result<(), GrantError> {
        if self.take(label.len())? != label {
            return Err(malformed(self.what, "wrong label".into()));
        }
        Ok(())
    }

    /// What may end an object after its cluster signature: nothing, or
    /// the group's signature (64 bytes, then a batch's inclusion proof if
    /// any); then the end.
    pub(super) fn group_signature(&mut self) -> Result<Option<GroupSignature>, GrantError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let rest = self.take(self.bytes.len())?;
        GroupSignature::from_bytes(rest).map(Some).map_err(|e| {
            malformed(
                self.what,
                format!(
                    "{} bytes after the signature are not a group signature: {e}",
                    rest.len()
                ),
            )
        })
    }
}
