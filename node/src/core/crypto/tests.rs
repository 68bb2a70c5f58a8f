//! Unit tests of the voicemail body format.

use aes_gcm::AeadInOut;

use super::*;

const ID: [u8; 16] = [7; 16];
const FULL: usize = SEALED_SEGMENT_LEN;
const BACKENDS: [Backend; 2] = [Backend::Ring, Backend::RustCrypto];

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn seal(backend: Backend, key: &SecretKey, p: &[u8]) -> Vec<u8> {
    encrypt_with(backend, key, ID, random_bytes(), p, &mut |_| {})
}

fn open(backend: Backend, key: &SecretKey, c: &[u8]) -> Result<Vec<u8>, DecryptError> {
    decrypt_with(backend, key, &ID, c, &mut |_| {})
}

/// Segment `i` of a ciphertext (the last one may be short).
fn segment(c: &[u8], i: usize) -> &[u8] {
    let start = HEADER_LEN + i * FULL;
    &c[start..(start + FULL).min(c.len())]
}

#[test]
fn round_trips_and_lengths_agree() {
    let key = SecretKey::random();
    for n in [0, 1, 65535, 65536, 65537, 3 * 65536, 200_000] {
        let p = data(n);
        let c = encrypt(&key, ID, &p, &mut |_| {});
        assert_eq!(c.len() as u64, ciphertext_len(n as u64), "n = {n}");
        assert_eq!(plaintext_len(c.len() as u64), Some(n as u64), "n = {n}");
        assert_eq!(
            decrypt(&key, &ID, &c, &mut |_| {}).as_deref(),
            Ok(&p[..]),
            "n = {n}"
        );
    }
}

#[test]
fn backends_write_the_same_bytes_and_open_each_other() {
    let key = SecretKey::random();
    let prefix = random_bytes();
    for n in [0, 1, 65535, 65536, 65537, 3 * 65536, 200_000] {
        let p = data(n);
        let ring = encrypt_with(Backend::Ring, &key, ID, prefix, &p, &mut |_| {});
        let rust = encrypt_with(Backend::RustCrypto, &key, ID, prefix, &p, &mut |_| {});
        assert!(ring == rust, "the backends differ at n = {n}");
        assert_eq!(encrypt_with_prefix(&key, ID, prefix, &p, &mut |_| {}), ring);
        assert_eq!(
            open(Backend::RustCrypto, &key, &ring).as_deref(),
            Ok(&p[..])
        );
        assert_eq!(open(Backend::Ring, &key, &rust).as_deref(), Ok(&p[..]));
    }
}

#[test]
fn lengths_that_no_plaintext_has() {
    assert_eq!(ciphertext_len(0), 44);
    assert_eq!(ciphertext_len(65536), 28 + 65536 + 32);
    for len in [0, 27, 28, 43, 28 + FULL as u64, 28 + 2 * FULL as u64 + 15] {
        assert_eq!(plaintext_len(len), None, "len = {len}");
    }
    assert_eq!(plaintext_len(u64::MAX), None);
    assert_eq!(ciphertext_len(u64::MAX), u64::MAX);
}

#[test]
fn format_is_as_documented() {
    let key = SecretKey::random();
    let (id, prefix) = ([0xab; 16], [1, 2, 3, 4, 5, 6, 7]);
    let p = data(SEGMENT_LEN + 5);
    let mut expected_header = vec![1, 0, 1, 0, 0];
    expected_header.extend_from_slice(&id);
    expected_header.extend_from_slice(&prefix);
    let header = Header {
        message_id: id,
        nonce_prefix: prefix,
    };
    assert_eq!(header.to_bytes()[..], expected_header[..]);
    // Open each segment with plain AES-256-GCM and the documented nonce.
    let aead = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key.as_bytes()));
    for backend in BACKENDS {
        let c = encrypt_with(backend, &key, id, prefix, &p, &mut |_| {});
        assert_eq!(&c[..HEADER_LEN], &expected_header[..]);
        assert_eq!(Header::parse(&c), Ok(header));
        for (i, last, plain) in [(0u32, 0u8, &p[..SEGMENT_LEN]), (1, 1, &p[SEGMENT_LEN..])] {
            let mut nonce = [0u8; 12];
            nonce[..7].copy_from_slice(&prefix);
            nonce[7..11].copy_from_slice(&i.to_be_bytes());
            nonce[11] = last;
            let mut buf = segment(&c, i as usize).to_vec();
            aead.decrypt_in_place(&nonce.into(), &expected_header, &mut buf)
                .expect("segment opens with the documented nonce and AAD");
            assert_eq!(buf, plain, "{backend:?} segment {i}");
        }
    }
}

#[test]
fn flipped_header_byte_fails() {
    let key = SecretKey::random();
    for backend in BACKENDS {
        let c = seal(backend, &key, &data(3 * 65536 + 10));
        // The message id, telling decrypt the altered id so only the tag
        // can notice; then the nonce prefix.
        let mut t = c.clone();
        t[5] ^= 1;
        let altered: [u8; 16] = t[5..21].try_into().unwrap();
        assert_eq!(
            decrypt_with(backend, &key, &altered, &t, &mut |_| {}),
            Err(DecryptError::Authentication { segment: 0 })
        );
        let mut t = c.clone();
        t[HEADER_LEN - 1] ^= 1;
        assert_eq!(
            open(backend, &key, &t),
            Err(DecryptError::Authentication { segment: 0 })
        );
        let mut t = c;
        t[4] ^= 1;
        assert_eq!(
            open(backend, &key, &t),
            Err(DecryptError::BadSegmentLength(65537))
        );
    }
}

#[test]
fn flipped_byte_in_a_middle_segment_fails() {
    let key = SecretKey::random();
    for backend in BACKENDS {
        let mut c = seal(backend, &key, &data(3 * 65536 + 10));
        c[HEADER_LEN + FULL + 100] ^= 0x80;
        assert_eq!(
            open(backend, &key, &c),
            Err(DecryptError::Authentication { segment: 1 })
        );
    }
}

#[test]
fn flipped_byte_in_the_last_tag_fails() {
    let key = SecretKey::random();
    for backend in BACKENDS {
        let mut c = seal(backend, &key, &data(3 * 65536 + 10));
        let last = c.len() - 1;
        c[last] ^= 1;
        assert_eq!(
            open(backend, &key, &c),
            Err(DecryptError::Authentication { segment: 3 })
        );
    }
}

#[test]
fn dropping_the_last_segment_fails() {
    let key = SecretKey::random();
    for backend in BACKENDS {
        let c = seal(backend, &key, &data(3 * 65536 + 10));
        let cut = &c[..HEADER_LEN + 3 * FULL];
        assert_eq!(
            open(backend, &key, cut),
            Err(DecryptError::BadLength(cut.len() as u64))
        );
        // Even past the length check, segment 2 was not sealed as last.
        let header = Header::parse(&c).unwrap();
        let opener = || Segments::new(backend, &key, header.nonce_prefix);
        assert_eq!(
            open_segments(
                opener(),
                &c[..HEADER_LEN],
                &cut[HEADER_LEN..],
                0,
                &mut |_| {}
            ),
            Err(DecryptError::Authentication { segment: 2 })
        );
        // The whole body opens the same way, so the flag is what failed.
        assert!(
            open_segments(opener(), &c[..HEADER_LEN], &c[HEADER_LEN..], 0, &mut |_| {}).is_ok()
        );
    }
}

#[test]
fn cutting_inside_the_last_segment_fails() {
    let key = SecretKey::random();
    for backend in BACKENDS {
        let c = seal(backend, &key, &data(100));
        assert_eq!(
            open(backend, &key, &c[..c.len() - 1]),
            Err(DecryptError::Authentication { segment: 0 })
        );
    }
}

#[test]
fn reordering_segments_fails() {
    let key = SecretKey::random();
    for backend in BACKENDS {
        let c = seal(backend, &key, &data(3 * 65536 + 10));
        let mut swapped = c[..HEADER_LEN].to_vec();
        for i in [1, 0, 2, 3] {
            swapped.extend_from_slice(segment(&c, i));
        }
        assert_eq!(
            open(backend, &key, &swapped),
            Err(DecryptError::Authentication { segment: 0 })
        );
    }
}

#[test]
fn splicing_from_another_message_fails() {
    let key = SecretKey::random();
    let p = data(3 * 65536 + 10);
    for backend in BACKENDS {
        let c = seal(backend, &key, &p);
        // Same key, same message id, same plaintext: only the nonce
        // prefix differs, and that is enough.
        let other = seal(backend, &key, &p);
        let mut spliced = c[..HEADER_LEN].to_vec();
        for i in 0..4 {
            spliced.extend_from_slice(segment(if i == 1 { &other } else { &c }, i));
        }
        assert_eq!(spliced.len(), c.len());
        assert_eq!(
            open(backend, &key, &spliced),
            Err(DecryptError::Authentication { segment: 1 })
        );
    }
}

#[test]
fn wrong_key_fails() {
    for backend in BACKENDS {
        let c = seal(backend, &SecretKey::random(), &data(1000));
        assert_eq!(
            open(backend, &SecretKey::random(), &c),
            Err(DecryptError::Authentication { segment: 0 })
        );
    }
}

#[test]
fn wrong_message_id_fails() {
    let key = SecretKey::random();
    let c = encrypt(&key, ID, &data(1000), &mut |_| {});
    assert_eq!(
        decrypt(&key, &[8; 16], &c, &mut |_| {}),
        Err(DecryptError::WrongMessage {
            expected: [8; 16],
            found: ID
        })
    );
}

#[test]
fn unknown_version_and_short_input_fail() {
    let key = SecretKey::random();
    let mut c = encrypt(&key, ID, &data(1000), &mut |_| {});
    let open = |c: &[u8]| decrypt(&key, &ID, c, &mut |_| {});
    assert_eq!(open(&c[..10]), Err(DecryptError::BadLength(10)));
    c[0] = 2;
    assert_eq!(open(&c), Err(DecryptError::UnknownVersion(2)));
}

#[test]
fn progress_reaches_the_total() {
    let key = SecretKey::random();
    let p = data(200_000);
    let mut seen = Vec::new();
    let c = encrypt(&key, ID, &p, &mut |d| seen.push(d));
    assert_eq!(seen, [65536, 131072, 196608, 200_000]);
    seen.clear();
    decrypt(&key, &ID, &c, &mut |d| seen.push(d)).unwrap();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen.last(), Some(&(c.len() as u64)));
}
