//! Threshold-shared session keys: no single auth server ever holds a
//! voicemail's session key.
//!
//! The sender splits the key t-of-n with Shamir's scheme over GF(256)
//! ([`blahaj`]), one share per auth server, and seals share `i` to server
//! `i`'s current *share key* with HPKE (RFC 9180, base mode,
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM). Raft replicates the
//! sealed shares; each server can open only its own. When a recipient asks,
//! each server opens its share and *reseals* it to the recipient session's
//! inbox key. The recipient opens t of them, recombines, and checks the
//! result against the key check the sender deposited ([`key_check`]),
//! which commits to the key and to the voicemail's locator: a locator
//! changed after the deposit fails the check.
//!
//! Every seal is bound (HPKE `aad`) to where the share may be used, so a
//! share moved to another voicemail, recipient list, index or server does
//! not open. The byte layouts are in `docs/PROTOCOL.md`, "Threshold-shared
//! session keys".

use hpke::kem::Kem as _;
use hpke::{Deserializable, Serializable};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::keys::SecretKey;
use crate::names::{Recipients, Username};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm256;

/// HPKE `info` of a share sealed to a server.
pub const SHARE_INFO: &[u8] = b"vmail/v1/share";
/// HPKE `info` of a share a server resealed to a recipient.
pub const RESEAL_INFO: &[u8] = b"vmail/v1/share-reseal";
/// Label of the key check value.
pub const KEY_CHECK_LABEL: &[u8] = b"vmail/v1/key-check";
/// Most shares one voicemail may carry (and so most servers a group may have
/// for threshold purposes).
pub const MAX_SHARES: usize = 16;
/// Bytes of an X25519 public key and of an HPKE encapsulated key.
pub const PUBLIC_LEN: usize = 32;
/// Bytes of a sealed share's ciphertext: the 32-byte share value and the
/// AES-GCM tag.
pub const SEALED_LEN: usize = 32 + 16;

/// Why a share could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// A public key or encapsulated key is not a valid X25519 point.
    #[error("{0} is not a valid X25519 public key")]
    BadKey(&'static str),
    /// The seal did not open: another key, another binding, or altered.
    #[error(
        "the share did not open: it was sealed to another key or for another voicemail, or altered"
    )]
    Open,
    /// Fewer usable shares than the threshold.
    #[error("{got} of the {need} shares needed to recover the session key")]
    TooFew {
        /// Shares at hand.
        got: usize,
        /// The threshold.
        need: usize,
    },
    /// No `need`-subset of the shares recombines to a key matching the key
    /// check: some server answered a wrong share.
    #[error(
        "the shares do not recombine to this voicemail's key: at least one auth server answered a wrong share"
    )]
    Mismatch,
    /// The split asked for is impossible.
    #[error(
        "cannot split a key {threshold}-of-{servers} (at most {MAX_SHARES} servers, threshold 1..=servers)"
    )]
    BadSplit {
        /// The threshold asked for.
        threshold: usize,
        /// The servers.
        servers: usize,
    },
}

/// The threshold for a group of `servers`: a majority, so the servers that
/// can answer are exactly the ones that keep Raft running.
pub fn threshold(servers: usize) -> usize {
    servers / 2 + 1
}

/// An X25519 secret key for HPKE: a server's share key of one epoch, or a
/// recipient session's inbox key.
#[derive(Clone)]
pub struct BoxSecret(<Kem as hpke::Kem>::PrivateKey);

impl std::fmt::Debug for BoxSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BoxSecret")
            .field(&hex_short(&self.public()))
            .finish()
    }
}

fn hex_short(bytes: &[u8; 32]) -> String {
    bytes[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl BoxSecret {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut ikm: [u8; 32] = crate::random_bytes();
        let (sk, _) = Kem::derive_keypair(&ikm);
        ikm.zeroize();
        Self(sk)
    }

    /// The key's 32 secret bytes, for storing it.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes().into()
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ShareError> {
        <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| ShareError::BadKey("the secret key"))
    }

    /// Its public key.
    pub fn public(&self) -> [u8; PUBLIC_LEN] {
        Kem::sk_to_pk(&self.0).to_bytes().into()
    }
}

/// The server a share is sealed to: its Raft node id, the epoch of its share
/// key, and that key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareKey {
    /// The server's Raft node id.
    pub node_id: u64,
    /// The epoch of the key.
    pub epoch: u32,
    /// The X25519 public key.
    pub public: [u8; PUBLIC_LEN],
}

/// One share sealed to one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedShare {
    /// The server it is sealed to.
    pub node_id: u64,
    /// The epoch of that server's key.
    pub epoch: u32,
    /// The Shamir x-coordinate, 1..=n.
    pub index: u8,
    /// The HPKE encapsulated key.
    pub enc: [u8; PUBLIC_LEN],
    /// The sealed share value.
    pub ciphertext: Vec<u8>,
}

impl From<SealedShare> for crate::pb::SealedShare {
    fn from(s: SealedShare) -> Self {
        Self {
            node_id: s.node_id,
            epoch: s.epoch,
            index: u32::from(s.index),
            enc: s.enc.to_vec(),
            ciphertext: s.ciphertext,
        }
    }
}

/// What a voicemail's shares are bound to when the sender seals them. The
/// server computes the same from the replicated deposit.
#[derive(Debug, Clone, Copy)]
pub struct ShareBinding<'a> {
    /// The storage grant the deposit uses: one grant serves one deposit, so
    /// it names the voicemail before the group assigns its id.
    pub grant_serial: u64,
    /// The canonical recipients.
    pub recipients: &'a Recipients,
    /// The threshold.
    pub threshold: u8,
    /// The key check value.
    pub key_check: &'a [u8; 32],
}

impl ShareBinding<'_> {
    fn aad(&self, node_id: u64, epoch: u32, index: u8) -> Vec<u8> {
        let mut aad = SHARE_INFO.to_vec();
        aad.extend_from_slice(&self.grant_serial.to_be_bytes());
        aad.extend_from_slice(&self.recipients.canonical_bytes());
        aad.push(self.threshold);
        aad.extend_from_slice(self.key_check);
        aad.extend_from_slice(&node_id.to_be_bytes());
        aad.extend_from_slice(&epoch.to_be_bytes());
        aad.push(index);
        aad
    }
}

/// What a resealed share is bound to.
#[derive(Debug, Clone, Copy)]
pub struct ResealBinding<'a> {
    /// The voicemail id the group assigned.
    pub voicemail_id: &'a [u8],
    /// The recipient it is resealed for.
    pub recipient: &'a Username,
    /// The server that resealed it.
    pub node_id: u64,
    /// The share's index.
    pub index: u8,
}

impl ResealBinding<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = RESEAL_INFO.to_vec();
        aad.extend_from_slice(&(self.voicemail_id.len() as u16).to_be_bytes());
        aad.extend_from_slice(self.voicemail_id);
        let name = self.recipient.as_str().as_bytes();
        aad.push(name.len() as u8);
        aad.extend_from_slice(name);
        aad.extend_from_slice(&self.node_id.to_be_bytes());
        aad.push(self.index);
        aad
    }
}

/// A share resealed by one server to a recipient's inbox key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResealedShare {
    /// The HPKE encapsulated key.
    pub enc: [u8; PUBLIC_LEN],
    /// The sealed share value.
    pub ciphertext: Vec<u8>,
}

/// One opened share: its index and its 32 bytes. Zeroed when dropped.
#[derive(Clone, PartialEq, Eq, Zeroize)]
#[zeroize(drop)]
pub struct ShareValue {
    /// The Shamir x-coordinate.
    pub index: u8,
    value: [u8; 32],
}

impl ShareValue {
    /// A share value from its index and 32 bytes (for callers that carry
    /// opened shares between processes, and for tests).
    pub fn new(index: u8, value: [u8; 32]) -> Self {
        Self { index, value }
    }

    /// The share's 32 bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.value
    }
}

impl std::fmt::Debug for ShareValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareValue")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// The key check value of a session key for a voicemail stored at
/// `locator`: SHA-256 over the label, the key and the locator's SHA-256. A
/// recipient knows the recombined key is the sender's, for this locator,
/// when it matches; no one without the key can make one for another
/// locator.
pub fn key_check(key: &SecretKey, locator: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(KEY_CHECK_LABEL);
    h.update(key.as_bytes());
    h.update(Sha256::digest(locator));
    h.finalize().into()
}

/// HPKE-seals `plaintext` to the X25519 public key `to` (this module's
/// suite, base mode) with `info` and `aad`; returns the encapsulated key and
/// the ciphertext. The sealing of shares and of the auth group's DKG
/// packages.
pub fn seal_bytes(
    to: &[u8; PUBLIC_LEN],
    info: &[u8],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<([u8; PUBLIC_LEN], Vec<u8>), ShareError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(to)
        .map_err(|_| ShareError::BadKey("the public key"))?;
    let (enc, ciphertext) =
        hpke::single_shot_seal::<Aead, Kdf, Kem>(&hpke::OpModeS::Base, &pk, info, plaintext, aad)
            .map_err(|_| ShareError::BadKey("the public key"))?;
    Ok((enc.to_bytes().into(), ciphertext))
}

fn seal(
    to: &[u8; PUBLIC_LEN],
    info: &[u8],
    value: &[u8; 32],
    aad: &[u8],
) -> Result<([u8; PUBLIC_LEN], Vec<u8>), ShareError> {
    seal_bytes(to, info, value, aad)
}

/// Opens what [`seal_bytes`] sealed to `secret`'s public key.
pub fn open_bytes(
    secret: &BoxSecret,
    info: &[u8],
    enc: &[u8; PUBLIC_LEN],
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, ShareError> {
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
        .map_err(|_| ShareError::BadKey("the encapsulated key"))?;
    hpke::single_shot_open::<Aead, Kdf, Kem>(
        &hpke::OpModeR::Base,
        &secret.0,
        &enc,
        info,
        ciphertext,
        aad,
    )
    .map(zeroize::Zeroizing::new)
    .map_err(|_| ShareError::Open)
}

fn open(
    secret: &BoxSecret,
    info: &[u8],
    enc: &[u8; PUBLIC_LEN],
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<[u8; 32], ShareError> {
    let plain = open_bytes(secret, info, enc, ciphertext, aad)?;
    <[u8; 32]>::try_from(plain.as_slice()).map_err(|_| ShareError::Open)
}

/// Splits `key`, the session key of the voicemail stored at `locator`,
/// among `servers` (in the order given; share `i` goes to
/// `servers[i - 1]`) with the majority threshold, and seals each share.
/// Returns the threshold, the key check and the sealed shares.
pub fn split(
    key: &SecretKey,
    servers: &[ShareKey],
    grant_serial: u64,
    recipients: &Recipients,
    locator: &[u8],
) -> Result<(u8, [u8; 32], Vec<SealedShare>), ShareError> {
    let t = threshold(servers.len());
    if servers.is_empty() || servers.len() > MAX_SHARES {
        return Err(ShareError::BadSplit {
            threshold: t,
            servers: servers.len(),
        });
    }
    let check = key_check(key, locator);
    let binding = ShareBinding {
        grant_serial,
        recipients,
        threshold: t as u8,
        key_check: &check,
    };
    let dealer = blahaj::Sharks(t as u8).dealer(key.as_bytes());
    let mut sealed = Vec::with_capacity(servers.len());
    for (server, share) in servers.iter().zip(dealer) {
        let index = share.x.0;
        let value: [u8; 32] = std::array::from_fn(|i| share.y[i].0);
        let aad = binding.aad(server.node_id, server.epoch, index);
        let (enc, ciphertext) = seal(&server.public, SHARE_INFO, &value, &aad)?;
        sealed.push(SealedShare {
            node_id: server.node_id,
            epoch: server.epoch,
            index,
            enc,
            ciphertext,
        });
    }
    Ok((t as u8, check, sealed))
}

/// Opens the share sealed to this server (`secret` is its share key of the
/// share's epoch).
pub fn open_share(
    secret: &BoxSecret,
    share: &SealedShare,
    binding: &ShareBinding<'_>,
) -> Result<ShareValue, ShareError> {
    let aad = binding.aad(share.node_id, share.epoch, share.index);
    let value = open(secret, SHARE_INFO, &share.enc, &share.ciphertext, &aad)?;
    Ok(ShareValue {
        index: share.index,
        value,
    })
}

/// Reseals an opened share to a recipient's inbox key.
pub fn reseal(
    value: &ShareValue,
    inbox_key: &[u8; PUBLIC_LEN],
    binding: &ResealBinding<'_>,
) -> Result<ResealedShare, ShareError> {
    let (enc, ciphertext) = seal(inbox_key, RESEAL_INFO, &value.value, &binding.aad())?;
    Ok(ResealedShare { enc, ciphertext })
}

/// Opens a share a server resealed to this recipient.
pub fn open_resealed(
    inbox: &BoxSecret,
    share: &ResealedShare,
    binding: &ResealBinding<'_>,
) -> Result<ShareValue, ShareError> {
    let value = open(
        inbox,
        RESEAL_INFO,
        &share.enc,
        &share.ciphertext,
        &binding.aad(),
    )?;
    Ok(ShareValue {
        index: binding.index,
        value,
    })
}

/// Recombines the session key of the voicemail stored at `locator` from at
/// least `threshold` shares and checks it against `check`. When more shares
/// than needed are at hand, a wrong one is routed around: every
/// `threshold`-subset is tried (at most C(16, 8) = 12870, each a few
/// microseconds).
pub fn combine(
    shares: &[ShareValue],
    threshold: u8,
    check: &[u8; 32],
    locator: &[u8],
) -> Result<SecretKey, ShareError> {
    let need = usize::from(threshold.max(1));
    let mut distinct: Vec<&ShareValue> = Vec::new();
    for s in shares {
        if !distinct.iter().any(|d| d.index == s.index) {
            distinct.push(s);
        }
    }
    if distinct.len() < need {
        return Err(ShareError::TooFew {
            got: distinct.len(),
            need,
        });
    }
    let sharks = blahaj::Sharks(need as u8);
    let mut pick: Vec<usize> = (0..need).collect();
    loop {
        let subset: Vec<blahaj::Share> = pick
            .iter()
            .map(|&i| to_blahaj(distinct[i]))
            .collect::<Result<_, _>>()?;
        if let Ok(mut bytes) = sharks.recover(&subset) {
            let key = <[u8; 32]>::try_from(bytes.as_slice())
                .ok()
                .map(SecretKey::from_bytes);
            bytes.zeroize();
            if let Some(key) = key
                && bool::from(subtle::ConstantTimeEq::ct_eq(
                    &key_check(&key, locator)[..],
                    &check[..],
                ))
            {
                return Ok(key);
            }
        }
        if !next_combination(&mut pick, distinct.len()) {
            return Err(ShareError::Mismatch);
        }
    }
}

fn to_blahaj(s: &ShareValue) -> Result<blahaj::Share, ShareError> {
    let mut bytes = Vec::with_capacity(33);
    bytes.push(s.index);
    bytes.extend_from_slice(&s.value);
    let share = blahaj::Share::try_from(bytes.as_slice()).map_err(|_| ShareError::Open);
    bytes.zeroize();
    share
}

/// Advances `pick` (strictly increasing indices below `n`) to the next
/// combination in lexicographic order; false after the last.
fn next_combination(pick: &mut [usize], n: usize) -> bool {
    let k = pick.len();
    for i in (0..k).rev() {
        if pick[i] < n - k + i {
            pick[i] += 1;
            for j in i + 1..k {
                pick[j] = pick[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests;
