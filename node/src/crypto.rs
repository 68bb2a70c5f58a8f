//! Segmented AES-256-GCM for voicemail bodies: the STREAM construction of
//! Hoang, Reyhanitabar, Rogaway and Vizár (2015), as implemented by the
//! `aead-stream` crate (`StreamBE32`). Pure: no IO.
//!
//! ```text
//! ciphertext = header || segment_0 || ... || segment_last
//! header     = version (1, u8) || segment length (65536, u32 BE)
//!              || message id (16) || nonce prefix (7 random bytes)      28 bytes
//! segment_i  = AES-256-GCM(session key, nonce_i, aad = header, plaintext_i)
//! nonce_i    = nonce prefix || i (u32 BE) || last flag (0x00, or 0x01 on the last)
//! ```
//!
//! A plaintext of `n` bytes has `n / 65536 + 1` segments; all but the last
//! hold 65536 bytes, the last holds `n % 65536` (possibly none). Every
//! segment carries a 16-byte tag and authenticates the whole header, so a
//! flipped bit anywhere, reordered segments (the counter is in the nonce),
//! a dropped final segment (the new last one was not sealed as last), a
//! segment spliced from another message (another header or key) or a wrong
//! message id all fail to decrypt.

use aead_stream::{NewStream, StreamBE32, StreamPrimitive};
use aes_gcm::aead::KeyInit;
use aes_gcm::{Aes256Gcm, Key};
use vmail_proto::keys::SecretKey;
use vmail_proto::random_bytes;

/// Format version in the header.
pub const VERSION: u8 = 1;
/// Plaintext bytes per segment.
pub const SEGMENT_LEN: usize = 64 * 1024;
/// Header length.
pub const HEADER_LEN: usize = 28;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;

/// Why a ciphertext did not decrypt. Each leaves nothing decrypted behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The length fits no valid layout: truncated or padded.
    #[error("ciphertext length {0} fits no valid layout: it was truncated or extended")]
    BadLength(u64),
    /// A format version this build does not know.
    #[error("ciphertext format version {0} is unknown: upgrade vmail")]
    UnknownVersion(u8),
    /// A segment length other than 64 KiB.
    #[error("ciphertext segment length {0} is not the 65536 this version uses")]
    BadSegmentLength(u32),
    /// The header names another message.
    #[error("the ciphertext belongs to another message")]
    WrongMessage,
    /// A tag failed.
    #[error(
        "segment {segment} failed authentication: wrong key, or the data was altered, reordered, truncated or spliced"
    )]
    Authentication {
        /// The failing segment.
        segment: u64,
    },
}

/// What a ciphertext's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message id the sender chose.
    pub message_id: [u8; 16],
    /// The STREAM nonce prefix.
    pub nonce_prefix: [u8; 7],
}

impl Header {
    /// Reads and checks the header at the start of `ciphertext`.
    pub fn parse(ciphertext: &[u8]) -> Result<Header, DecryptError> {
        if ciphertext.len() < HEADER_LEN {
            return Err(DecryptError::BadLength(ciphertext.len() as u64));
        }
        if ciphertext[0] != VERSION {
            return Err(DecryptError::UnknownVersion(ciphertext[0]));
        }
        let seg = u32::from_be_bytes(ciphertext[1..5].try_into().expect("4 bytes"));
        if seg as usize != SEGMENT_LEN {
            return Err(DecryptError::BadSegmentLength(seg));
        }
        Ok(Header {
            message_id: ciphertext[5..21].try_into().expect("16 bytes"),
            nonce_prefix: ciphertext[21..28].try_into().expect("7 bytes"),
        })
    }

    /// The header's bytes, which are also every segment's AAD.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = VERSION;
        out[1..5].copy_from_slice(&(SEGMENT_LEN as u32).to_be_bytes());
        out[5..21].copy_from_slice(&self.message_id);
        out[21..28].copy_from_slice(&self.nonce_prefix);
        out
    }
}

/// Ciphertext length for a plaintext of `n` bytes.
pub fn ciphertext_len(n: u64) -> u64 {
    HEADER_LEN as u64 + n + (n / SEGMENT_LEN as u64 + 1) * TAG_LEN as u64
}

/// Plaintext length for a ciphertext of `len` bytes, if any maps to it.
pub fn plaintext_len(len: u64) -> Option<u64> {
    let body = len.checked_sub(HEADER_LEN as u64)?;
    let full = (SEGMENT_LEN + TAG_LEN) as u64;
    let (segments, rest) = (body / full, body % full);
    // The last segment holds 0..SEGMENT_LEN-1 plaintext bytes plus a tag.
    if rest < TAG_LEN as u64 {
        return None;
    }
    Some(segments * SEGMENT_LEN as u64 + rest - TAG_LEN as u64)
}

fn stream(key: &SecretKey, prefix: &[u8; 7]) -> StreamBE32<Aes256Gcm> {
    let aead = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key.as_bytes()));
    StreamBE32::from_aead(aead, &(*prefix).into())
}

/// Encrypts with a fresh random nonce prefix. `progress` gets the plaintext
/// bytes done after each segment.
pub fn encrypt(
    key: &SecretKey,
    message_id: [u8; 16],
    plaintext: &[u8],
    progress: &mut dyn FnMut(u64),
) -> Vec<u8> {
    encrypt_with_prefix(key, message_id, random_bytes(), plaintext, progress)
}

/// [`encrypt`] with a chosen nonce prefix, for tests and benchmarks. A
/// prefix must never repeat under one key; session keys are per message.
pub fn encrypt_with_prefix(
    key: &SecretKey,
    message_id: [u8; 16],
    nonce_prefix: [u8; 7],
    plaintext: &[u8],
    progress: &mut dyn FnMut(u64),
) -> Vec<u8> {
    let header = Header {
        message_id,
        nonce_prefix,
    }
    .to_bytes();
    let s = stream(key, &nonce_prefix);
    let mut out = Vec::with_capacity(ciphertext_len(plaintext.len() as u64) as usize);
    out.extend_from_slice(&header);
    let mut buf = Vec::with_capacity(SEGMENT_LEN + TAG_LEN);
    let segments = plaintext.len() / SEGMENT_LEN + 1;
    for i in 0..segments {
        let start = i * SEGMENT_LEN;
        let end = (start + SEGMENT_LEN).min(plaintext.len());
        buf.clear();
        buf.extend_from_slice(&plaintext[start..end]);
        s.encrypt_in_place(i as u32, i + 1 == segments, &header, &mut buf)
            .expect("AES-GCM encryption of a 64 KiB segment cannot fail");
        out.extend_from_slice(&buf);
        progress(end as u64);
    }
    out
}

/// Checks and decrypts a ciphertext. `progress` gets the ciphertext bytes
/// consumed after each segment.
pub fn decrypt(
    key: &SecretKey,
    expected_message_id: &[u8; 16],
    ciphertext: &[u8],
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<u8>, DecryptError> {
    let header = Header::parse(ciphertext)?;
    if header.message_id != *expected_message_id {
        return Err(DecryptError::WrongMessage);
    }
    let n = plaintext_len(ciphertext.len() as u64)
        .ok_or(DecryptError::BadLength(ciphertext.len() as u64))?;
    let aad = &ciphertext[..HEADER_LEN];
    let s = stream(key, &header.nonce_prefix);
    let mut out = Vec::with_capacity(n as usize);
    let mut buf = Vec::with_capacity(SEGMENT_LEN + TAG_LEN);
    let body = &ciphertext[HEADER_LEN..];
    let segments = body.chunks(SEGMENT_LEN + TAG_LEN).count().max(1);
    for (i, seg) in body.chunks(SEGMENT_LEN + TAG_LEN).enumerate() {
        buf.clear();
        buf.extend_from_slice(seg);
        s.decrypt_in_place(i as u32, i + 1 == segments, aad, &mut buf)
            .map_err(|_| DecryptError::Authentication { segment: i as u64 })?;
        out.extend_from_slice(&buf);
        progress((HEADER_LEN + i * (SEGMENT_LEN + TAG_LEN) + seg.len()) as u64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 16] = [7; 16];

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn seal(key: &SecretKey, p: &[u8]) -> Vec<u8> {
        encrypt(key, ID, p, &mut |_| {})
    }

    fn open(key: &SecretKey, c: &[u8]) -> Result<Vec<u8>, DecryptError> {
        decrypt(key, &ID, c, &mut |_| {})
    }

    #[test]
    fn round_trips_and_lengths_agree() {
        let key = SecretKey::random();
        for n in [0, 1, 65535, 65536, 65537, 3 * 65536, 200_000] {
            let p = data(n);
            let c = seal(&key, &p);
            assert_eq!(c.len() as u64, ciphertext_len(n as u64), "n = {n}");
            assert_eq!(plaintext_len(c.len() as u64), Some(n as u64), "n = {n}");
            assert_eq!(open(&key, &c).unwrap(), p, "n = {n}");
        }
        assert_eq!(plaintext_len(HEADER_LEN as u64 + 15), None);
    }

    #[test]
    fn any_flipped_byte_fails() {
        let key = SecretKey::random();
        let c = seal(&key, &data(3 * 65536 + 10));
        let seg = SEGMENT_LEN + TAG_LEN;
        for at in [5, 25, HEADER_LEN + seg + 100, c.len() - 1] {
            let mut t = c.clone();
            t[at] ^= 1;
            assert!(open(&key, &t).is_err(), "flip at {at} was not noticed");
        }
    }

    #[test]
    fn truncation_reordering_and_splicing_fail() {
        let key = SecretKey::random();
        let seg = SEGMENT_LEN + TAG_LEN;
        let c = seal(&key, &data(3 * 65536 + 10));
        // Drop the whole final segment, or cut inside one: the layout no
        // longer fits, and were it to, the new last segment was not sealed
        // as last.
        for len in [
            HEADER_LEN + 3 * seg,
            HEADER_LEN + 2 * seg + 100,
            c.len() - 1,
        ] {
            assert!(
                open(&key, &c[..len]).is_err(),
                "cut to {len} was not noticed"
            );
        }
        let short = seal(&key, &data(100));
        assert_eq!(
            open(&key, &short[..short.len() - 1]),
            Err(DecryptError::Authentication { segment: 0 })
        );
        // Swap segments 0 and 1.
        let mut swapped = c.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + seg);
        let first = c[a..a + seg].to_vec();
        swapped[a..a + seg].copy_from_slice(&c[b..b + seg]);
        swapped[b..b + seg].copy_from_slice(&first);
        assert_eq!(
            open(&key, &swapped),
            Err(DecryptError::Authentication { segment: 0 })
        );
        // Splice segment 1 of another message under the same key and id.
        let other = seal(&key, &data(3 * 65536 + 10));
        let mut spliced = c.clone();
        spliced[b..b + seg].copy_from_slice(&other[b..b + seg]);
        assert_eq!(
            open(&key, &spliced),
            Err(DecryptError::Authentication { segment: 1 })
        );
    }

    #[test]
    fn wrong_key_message_or_version_fail() {
        let key = SecretKey::random();
        let c = seal(&key, &data(1000));
        assert_eq!(
            open(&SecretKey::random(), &c),
            Err(DecryptError::Authentication { segment: 0 })
        );
        assert_eq!(
            decrypt(&key, &[8; 16], &c, &mut |_| {}),
            Err(DecryptError::WrongMessage)
        );
        let mut v = c.clone();
        v[0] = 2;
        assert_eq!(open(&key, &v), Err(DecryptError::UnknownVersion(2)));
        assert_eq!(open(&key, &c[..10]), Err(DecryptError::BadLength(10)));
    }

    #[test]
    fn progress_reaches_the_total() {
        let key = SecretKey::random();
        let p = data(200_000);
        let mut last = 0;
        let c = encrypt(&key, ID, &p, &mut |d| last = d);
        assert_eq!(last, p.len() as u64);
        decrypt(&key, &ID, &c, &mut |d| last = d).unwrap();
        assert_eq!(last, c.len() as u64);
    }
}
