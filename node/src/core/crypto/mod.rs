//! Segmented AES-256-GCM for voicemail bodies: the STREAM construction of
//! Hoang, Reyhanitabar, Rogaway and Vizár ("Online Authenticated-Encryption
//! and its Nonce-Reuse Misuse-Resistance", 2015), STREAM-BE32 as the
//! `aead-stream` crate defines it. Pure: no IO.
//!
//! Two [`Backend`]s write the same bytes: `aead-stream`'s `EncryptorBE32` /
//! `DecryptorBE32` over RustCrypto's `Aes256Gcm`, the reference for the
//! nonce schedule, and ring's AES-256-GCM with the same schedule, the
//! default because it runs at OpenSSL's speed (`cargo bench -p vmail-node
//! --bench crypto`). The tests check that the two agree byte for byte.
//!
//! The format, byte-exact (all integers big-endian):
//!
//! ```text
//! ciphertext = header || segment_0 || segment_1 || ... || segment_last
//!
//! header     = version          1 byte    0x01
//!           || segment length   4 bytes   0x00010000 (65536)
//!           || message id      16 bytes   chosen by the sender
//!           || nonce prefix     7 bytes   random per encryption     = 28 bytes
//!
//! segment_i  = AES-256-GCM-Seal(key, nonce_i, aad = header, plaintext_i)
//!            = ciphertext_i (len(plaintext_i) bytes) || tag (16 bytes)
//! nonce_i    = nonce prefix (7) || i as u32 (4) || 0x01 if last else 0x00 (1)
//! ```
//!
//! A plaintext of `n` bytes is cut into `n / 65536 + 1` segments: every one
//! but the last holds exactly 65536 bytes, the last holds `n % 65536`, which
//! may be none (so an empty plaintext is one empty segment, and 65536 bytes
//! are a full segment then an empty last one). The ciphertext is therefore
//! `28 + n + 16 * (n / 65536 + 1)` bytes, and a valid last segment is always
//! shorter than a full one, so the length alone says where segments end.
//!
//! Every segment authenticates the whole header, and its nonce carries its
//! position and whether it is last. So a flipped bit anywhere, segments
//! reordered, a final segment dropped (the new last one was not sealed as
//! last, and the length no longer fits), a segment spliced in from another
//! message (another header, nonce prefix or key) or a header naming another
//! message all fail to decrypt.

use aead_stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::{self, Buffer, KeyInit};
use aes_gcm::{Aes256Gcm, Key};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use vmail_proto::keys::SecretKey;
use vmail_proto::random_bytes;
use zeroize::Zeroize;

/// Format version written in the header's first byte.
pub const VERSION: u8 = 1;
/// Plaintext bytes in every segment but the last.
pub const SEGMENT_LEN: usize = 64 * 1024;
/// Header length: version, segment length, message id, nonce prefix.
pub const HEADER_LEN: usize = 28;
/// AES-GCM tag length, added to every segment.
pub const TAG_LEN: usize = 16;

/// Ciphertext bytes of a full (non-last) segment.
const SEALED_SEGMENT_LEN: usize = SEGMENT_LEN + TAG_LEN;
/// Most segments STREAM-BE32 can number: counters 0 to `u32::MAX`.
const MAX_SEGMENTS: u64 = 1 << 32;

/// Why a ciphertext did not decrypt. None leaves plaintext behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The length fits no valid layout: the ciphertext was truncated or extended.
    #[error(
        "the ciphertext is {0} bytes, a length no voicemail encrypts to: it was truncated or extended in storage or transit"
    )]
    BadLength(u64),
    /// The header's version byte is not one this build knows.
    #[error("the ciphertext has format version {0}, which this vmail does not know: upgrade vmail")]
    UnknownVersion(u8),
    /// The header's segment length is not the 64 KiB this version uses.
    #[error("the ciphertext's header says segments of {0} bytes, but format version 1 uses 65536")]
    BadSegmentLength(u32),
    /// The header names another message than the one asked for.
    #[error(
        "the ciphertext is for message {}, not {}: the copy or the locator is wrong",
        hex::encode(.found),
        hex::encode(.expected)
    )]
    WrongMessage {
        /// The message id asked for.
        expected: [u8; 16],
        /// The message id in the header.
        found: [u8; 16],
    },
    /// A segment's tag did not verify.
    #[error(
        "segment {segment} failed authentication: wrong key, or the data was altered, reordered, truncated or spliced"
    )]
    Authentication {
        /// The failing segment, counting from 0.
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
    /// Reads and checks the header at the start of `ciphertext`: its length,
    /// version and segment length. Says nothing of the segments after it.
    pub fn parse(ciphertext: &[u8]) -> Result<Header, DecryptError> {
        let Some((&header, _)) = ciphertext.split_first_chunk::<HEADER_LEN>() else {
            return Err(DecryptError::BadLength(ciphertext.len() as u64));
        };
        let [version, s0, s1, s2, s3, rest @ ..] = header;
        if version != VERSION {
            return Err(DecryptError::UnknownVersion(version));
        }
        let segment_len = u32::from_be_bytes([s0, s1, s2, s3]);
        if segment_len as usize != SEGMENT_LEN {
            return Err(DecryptError::BadSegmentLength(segment_len));
        }
        let mut message_id = [0u8; 16];
        let mut nonce_prefix = [0u8; 7];
        let (id, prefix) = rest.split_at(16);
        message_id.copy_from_slice(id);
        nonce_prefix.copy_from_slice(prefix);
        Ok(Header {
            message_id,
            nonce_prefix,
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

/// Ciphertext length for a plaintext of `n` bytes (pure function of n):
/// `28 + n + 16 * (n / 65536 + 1)`. Saturates at `u64::MAX` for lengths no
/// message can have.
pub fn ciphertext_len(n: u64) -> u64 {
    let tags = (n / SEGMENT_LEN as u64 + 1).saturating_mul(TAG_LEN as u64);
    (HEADER_LEN as u64).saturating_add(n).saturating_add(tags)
}

/// Plaintext length for a ciphertext of `len` bytes, or None if no
/// plaintext length maps to it (the inverse of [`ciphertext_len`]).
pub fn plaintext_len(len: u64) -> Option<u64> {
    let body = len.checked_sub(HEADER_LEN as u64)?;
    let full = SEALED_SEGMENT_LEN as u64;
    let (full_segments, last) = (body / full, body % full);
    // The last segment is its 0..=65535 plaintext bytes plus a tag, so it is
    // at least a tag and, being a remainder, always shorter than a full one.
    if last < TAG_LEN as u64 || full_segments >= MAX_SEGMENTS {
        return None;
    }
    Some(full_segments * SEGMENT_LEN as u64 + last - TAG_LEN as u64)
}

/// Which AES-256-GCM implementation seals and opens the segments. Both
/// write and read the same bytes (the tests check it), so either opens what
/// the other sealed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// ring's AES-GCM (BoringSSL's assembly): at or above OpenSSL's speed
    /// on the same machine (the crypto bench), so the default.
    #[default]
    Ring,
    /// RustCrypto's `aes-gcm` through `aead-stream`'s `EncryptorBE32` and
    /// `DecryptorBE32`: the reference for the nonce schedule, at about half
    /// of OpenSSL's speed.
    RustCrypto,
}

/// Encrypts with a fresh random nonce prefix. `progress` is called after
/// each segment with the plaintext bytes done so far.
///
/// # Panics
///
/// If `plaintext` needs more than 2^32 segments (256 TiB).
pub fn encrypt(
    key: &SecretKey,
    message_id: [u8; 16],
    plaintext: &[u8],
    progress: &mut dyn FnMut(u64),
) -> Vec<u8> {
    encrypt_with_prefix(key, message_id, random_bytes(), plaintext, progress)
}

/// [`encrypt`] with a chosen nonce prefix, for tests and benchmarks that
/// need reproducible output. A prefix must never repeat under one key:
/// everything else should call [`encrypt`].
///
/// # Panics
///
/// If `plaintext` needs more than 2^32 segments (256 TiB).
pub fn encrypt_with_prefix(
    key: &SecretKey,
    message_id: [u8; 16],
    nonce_prefix: [u8; 7],
    plaintext: &[u8],
    progress: &mut dyn FnMut(u64),
) -> Vec<u8> {
    encrypt_with(
        Backend::default(),
        key,
        message_id,
        nonce_prefix,
        plaintext,
        progress,
    )
}

/// [`encrypt_with_prefix`] on a chosen backend, for tests and benchmarks.
///
/// # Panics
///
/// If `plaintext` needs more than 2^32 segments (256 TiB).
pub fn encrypt_with(
    backend: Backend,
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
    let total = usize::try_from(ciphertext_len(plaintext.len() as u64))
        .expect("a ciphertext of a plaintext in memory fits in memory");
    // The one allocation: each segment is sealed in place at its end.
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&header);
    let mut sealer = Segments::new(backend, key, nonce_prefix);
    let mut segments = plaintext.chunks_exact(SEGMENT_LEN);
    let mut done = 0u64;
    for segment in segments.by_ref() {
        sealer
            .seal(&header, &mut Tail::push(&mut out, segment), false)
            .expect("more than 2^32 segments (256 TiB) to encrypt");
        done += segment.len() as u64;
        progress(done);
    }
    let last = segments.remainder();
    sealer
        .seal(&header, &mut Tail::push(&mut out, last), true)
        .expect("AES-GCM sealing into a Vec cannot fail");
    progress(done + last.len() as u64);
    debug_assert_eq!(out.len(), total);
    out
}

/// Decrypts and authenticates; `expected_message_id` must equal the
/// header's. `progress` is called after each segment with the ciphertext
/// bytes consumed so far. On failure the partial plaintext is wiped.
pub fn decrypt(
    key: &SecretKey,
    expected_message_id: &[u8; 16],
    ciphertext: &[u8],
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<u8>, DecryptError> {
    decrypt_with(
        Backend::default(),
        key,
        expected_message_id,
        ciphertext,
        progress,
    )
}

/// [`decrypt`] on a chosen backend, for tests and benchmarks.
pub fn decrypt_with(
    backend: Backend,
    key: &SecretKey,
    expected_message_id: &[u8; 16],
    ciphertext: &[u8],
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<u8>, DecryptError> {
    let header = Header::parse(ciphertext)?;
    if header.message_id != *expected_message_id {
        return Err(DecryptError::WrongMessage {
            expected: *expected_message_id,
            found: header.message_id,
        });
    }
    let n = plaintext_len(ciphertext.len() as u64)
        .ok_or(DecryptError::BadLength(ciphertext.len() as u64))?;
    let (aad, body) = ciphertext.split_at(HEADER_LEN);
    // Room for the last segment's tag before it is cut off.
    let capacity = usize::try_from(n).map_or(0, |n| n + TAG_LEN);
    let opener = Segments::new(backend, key, header.nonce_prefix);
    open_segments(opener, aad, body, capacity, progress)
}

/// Opens `body` as consecutive sealed segments, the final chunk as the last
/// one, whatever its length. [`decrypt_with`] checks the layout first; the
/// tests call this directly to show the last flag alone catches a dropped
/// segment.
fn open_segments(
    mut opener: Segments,
    aad: &[u8],
    body: &[u8],
    capacity: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<u8>, DecryptError> {
    // Every chunk but the final one is a full segment; the final one, even
    // if empty or full, is opened as last.
    let last_start = body.len().saturating_sub(1) / SEALED_SEGMENT_LEN * SEALED_SEGMENT_LEN;
    let (init, last) = body.split_at(last_start);
    let mut out = Vec::with_capacity(capacity);
    let mut consumed = aad.len() as u64;
    let full = init.chunks_exact(SEALED_SEGMENT_LEN).map(|s| (s, false));
    for (index, (segment, is_last)) in full.chain([(last, true)]).enumerate() {
        if opener
            .open(aad, &mut Tail::push(&mut out, segment), is_last)
            .is_err()
        {
            out.zeroize();
            return Err(DecryptError::Authentication {
                segment: index as u64,
            });
        }
        consumed += segment.len() as u64;
        progress(consumed);
    }
    Ok(out)
}

/// One message's segment cipher on either backend, keeping the STREAM
/// position. A segment sealed or opened as last ends the stream.
#[expect(
    clippy::large_enum_variant,
    reason = "one per message, never moved while in use: boxing saves nothing"
)]
enum Segments {
    /// ring, with our own STREAM-BE32 nonce schedule, which the tests
    /// check against `aead-stream`'s.
    Ring {
        key: LessSafeKey,
        nonce_prefix: [u8; 7],
        position: u32,
        ended: bool,
    },
    /// `aead-stream` over `aes-gcm`; each is None once its last segment
    /// is done.
    RustCrypto {
        encryptor: Option<EncryptorBE32<Aes256Gcm>>,
        decryptor: Option<DecryptorBE32<Aes256Gcm>>,
    },
}

/// A segment did not seal or open: a failed tag, or past the stream's end.
#[derive(Debug)]
struct SegmentFailed;

impl Segments {
    fn new(backend: Backend, key: &SecretKey, nonce_prefix: [u8; 7]) -> Self {
        match backend {
            Backend::Ring => Segments::Ring {
                key: LessSafeKey::new(
                    UnboundKey::new(&AES_256_GCM, key.as_bytes())
                        .expect("a 32-byte key is an AES-256 key"),
                ),
                nonce_prefix,
                position: 0,
                ended: false,
            },
            Backend::RustCrypto => {
                let aead = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key.as_bytes()));
                Segments::RustCrypto {
                    encryptor: Some(EncryptorBE32::from_aead(aead.clone(), &nonce_prefix.into())),
                    decryptor: Some(DecryptorBE32::from_aead(aead, &nonce_prefix.into())),
                }
            }
        }
    }

    /// Seals the plaintext in `tail` in place, appending the tag.
    fn seal(&mut self, aad: &[u8], tail: &mut Tail<'_>, last: bool) -> Result<(), SegmentFailed> {
        match self {
            Segments::Ring {
                key,
                nonce_prefix,
                position,
                ended,
            } => {
                let nonce = ring_nonce(nonce_prefix, position, ended, last)?;
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(aad), tail.as_mut())
                    .map_err(|_| SegmentFailed)?;
                tail.out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Segments::RustCrypto { encryptor, .. } => {
                let sealed = if last {
                    encryptor
                        .take()
                        .ok_or(SegmentFailed)?
                        .encrypt_last_in_place(aad, tail)
                } else {
                    encryptor
                        .as_mut()
                        .ok_or(SegmentFailed)?
                        .encrypt_next_in_place(aad, tail)
                };
                sealed.map_err(|_| SegmentFailed)
            }
        }
    }

    /// Opens the sealed segment in `tail` in place, cutting off the tag.
    fn open(&mut self, aad: &[u8], tail: &mut Tail<'_>, last: bool) -> Result<(), SegmentFailed> {
        match self {
            Segments::Ring {
                key,
                nonce_prefix,
                position,
                ended,
            } => {
                let nonce = ring_nonce(nonce_prefix, position, ended, last)?;
                let len = key
                    .open_in_place(nonce, Aad::from(aad), tail.as_mut())
                    .map_err(|_| SegmentFailed)?
                    .len();
                tail.truncate(len);
                Ok(())
            }
            Segments::RustCrypto { decryptor, .. } => {
                let opened = if last {
                    decryptor
                        .take()
                        .ok_or(SegmentFailed)?
                        .decrypt_last_in_place(aad, tail)
                } else {
                    decryptor
                        .as_mut()
                        .ok_or(SegmentFailed)?
                        .decrypt_next_in_place(aad, tail)
                };
                opened.map_err(|_| SegmentFailed)
            }
        }
    }
}

/// The STREAM-BE32 nonce for the segment at `position`, as `aead-stream`
/// builds it: prefix || position (u32 BE) || last flag. Moves the position
/// on, refusing what `aead-stream` refuses: a segment after the last, and
/// a non-last segment at the final counter value (which would leave no
/// counter for the last one).
fn ring_nonce(
    nonce_prefix: &[u8; 7],
    position: &mut u32,
    ended: &mut bool,
    last: bool,
) -> Result<Nonce, SegmentFailed> {
    if *ended || (!last && *position == u32::MAX) {
        return Err(SegmentFailed);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..7].copy_from_slice(nonce_prefix);
    nonce[7..11].copy_from_slice(&position.to_be_bytes());
    nonce[11] = u8::from(last);
    if last {
        *ended = true;
    } else {
        *position += 1;
    }
    Ok(Nonce::assume_unique_for_key(nonce))
}

/// The end of an output buffer, from `start`, as an AEAD buffer: a segment
/// is copied there and sealed or opened in place, so neither direction
/// needs a scratch buffer.
struct Tail<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Tail<'a> {
    /// Appends `segment` to `out` and returns it as the tail.
    fn push(out: &'a mut Vec<u8>, segment: &[u8]) -> Self {
        let start = out.len();
        out.extend_from_slice(segment);
        Tail { out, start }
    }
}

impl AsRef<[u8]> for Tail<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.out[self.start..]
    }
}

impl AsMut<[u8]> for Tail<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.out[self.start..]
    }
}

impl Buffer for Tail<'_> {
    fn extend_from_slice(&mut self, other: &[u8]) -> aead::Result<()> {
        self.out.extend_from_slice(other);
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        self.out.truncate(self.start + len);
    }
}

#[cfg(test)]
mod tests;
