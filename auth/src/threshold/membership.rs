//! Membership changes that keep the group key, so peers never learn a new one.
//!
//! Adding a member uses frost's repairable threshold scheme
//! (`frost_ed25519::keys::repairable`, eprint 2017/1155): `t` helpers each
//! split their Lagrange-weighted share into deltas ([`repair_deltas`]), send
//! one delta to each helper, each helper sums what it received into a sigma
//! ([`repair_sigma`]) and sends it to the new member, who sums the sigmas into
//! its share ([`repair_finish`]). Everyone adds the new member's verifying
//! share to the public key package with [`with_member`], which computes it
//! from the existing verifying shares, so nobody has to trust the newcomer's
//! claim; [`repair_finish`] checks the repaired share against it. The
//! threshold stays what the DKG set.
//!
//! Removing a member uses frost's DKG-based refresh
//! (`frost_ed25519::keys::refresh::refresh_dkg_*`): the remaining members run
//! a DKG of a zero secret and add the result to their shares, so the group
//! key stays, the shares change, and the removed member's old share no longer
//! combines with the new ones. It needs at least `t` remaining members.

use std::collections::BTreeMap;

use frost_ed25519::keys::VerifyingShare;
use frost_ed25519::keys::dkg::{round1, round2};
use frost_ed25519::keys::refresh;
use frost_ed25519::keys::repairable::{self, Delta, Sigma};
use frost_ed25519::rand_core::{CryptoRng, RngCore};
use frost_ed25519::{Ed25519Group, Ed25519ScalarField, Ed25519Sha512, Field, Group};

use super::dkg::others;
use super::{Identifier, KeyPackage, PublicKeyPackage, ThresholdError};

/// Repair part 1, run by each helper: one delta per helper (itself included).
pub fn repair_deltas<R: RngCore + CryptoRng>(
    helpers: &[Identifier],
    key: &KeyPackage,
    new_member: Identifier,
    rng: &mut R,
) -> Result<BTreeMap<Identifier, Delta>, ThresholdError> {
    repairable::repair_share_part1::<Ed25519Sha512, R>(helpers, key, rng, new_member).map_err(
        |source| ThresholdError::Repair {
            step: "part1",
            source,
        },
    )
}

/// Repair part 2, run by each helper on the deltas sent to it: the sigma to
/// send to the new member.
pub fn repair_sigma(deltas: &[Delta]) -> Sigma {
    repairable::repair_share_part2(deltas)
}

/// Repair part 3, run by the new member: its key package, checked against
/// the verifying share the group computes for it.
pub fn repair_finish(
    sigmas: &[Sigma],
    new_member: Identifier,
    public: &PublicKeyPackage,
) -> Result<KeyPackage, ThresholdError> {
    let key = repairable::repair_share_part3(sigmas, new_member, public).map_err(|source| {
        ThresholdError::Repair {
            step: "part3",
            source,
        }
    })?;
    if *key.verifying_share() != interpolate_verifying_share(public, new_member)? {
        return Err(ThresholdError::RepairMismatch(new_member));
    }
    Ok(key)
}

/// The public key package with `new_member` added, its verifying share
/// interpolated from `t` existing ones; same group key and threshold.
pub fn with_member(
    public: &PublicKeyPackage,
    new_member: Identifier,
) -> Result<PublicKeyPackage, ThresholdError> {
    let mut shares = public.verifying_shares().clone();
    shares.insert(new_member, interpolate_verifying_share(public, new_member)?);
    Ok(PublicKeyPackage::new(
        shares,
        *public.verifying_key(),
        public.min_signers(),
    ))
}

/// `Y_x = Σ λ_i(x) Y_i` over the first `t` verifying shares: the public image
/// of the share polynomial at `x`.
fn interpolate_verifying_share(
    public: &PublicKeyPackage,
    x: Identifier,
) -> Result<VerifyingShare, ThresholdError> {
    let fail = |source| ThresholdError::Repair {
        step: "verifying share",
        source,
    };
    if let Some(existing) = public.verifying_shares().get(&x) {
        return Ok(*existing);
    }
    let t = usize::from(
        public
            .min_signers()
            .ok_or(fail(frost_ed25519::Error::InvalidMinSigners))?,
    );
    let points: Vec<_> = public.verifying_shares().iter().take(t).collect();
    if points.len() < t {
        return Err(fail(frost_ed25519::Error::IncorrectNumberOfIdentifiers));
    }
    let scalar = |id: &Identifier| {
        let bytes: [u8; 32] = id
            .serialize()
            .as_slice()
            .try_into()
            .map_err(|_| fail(frost_ed25519::Error::MalformedIdentifier))?;
        Ed25519ScalarField::deserialize(&bytes)
            .map_err(|_| fail(frost_ed25519::Error::MalformedIdentifier))
    };
    let xs = scalar(&x)?;
    let mut sum = Ed25519Group::identity();
    for (i, share) in &points {
        let xi = scalar(i)?;
        let (mut num, mut den) = (Ed25519ScalarField::one(), Ed25519ScalarField::one());
        for (j, _) in &points {
            if j != i {
                let xj = scalar(j)?;
                num *= xs - xj;
                den *= xi - xj;
            }
        }
        let den = Ed25519ScalarField::invert(&den)
            .map_err(|_| fail(frost_ed25519::Error::DuplicatedIdentifier))?;
        let bytes: [u8; 32] = share
            .serialize()
            .map_err(fail)?
            .as_slice()
            .try_into()
            .map_err(|_| fail(frost_ed25519::Error::MalformedVerifyingKey))?;
        let point = Ed25519Group::deserialize(&bytes)
            .map_err(|_| fail(frost_ed25519::Error::MalformedVerifyingKey))?;
        sum += point * (num * den);
    }
    let bytes = Ed25519Group::serialize(&sum)
        .map_err(|_| fail(frost_ed25519::Error::IdentityCommitment))?;
    VerifyingShare::deserialize(&bytes).map_err(fail)
}

/// A remaining member's state after refresh part 1.
#[derive(Debug)]
pub struct RefreshRound1 {
    me: Identifier,
    secret: round1::SecretPackage,
}

/// A remaining member's state after refresh part 2.
#[derive(Debug)]
pub struct RefreshRound2 {
    me: Identifier,
    round1: BTreeMap<Identifier, round1::Package>,
    secret: round2::SecretPackage,
}

/// Refresh part 1 for the member holding `key`, among `remaining` members
/// (itself included, the removed ones left out): its state and the package to
/// broadcast to the other remaining members.
pub fn refresh_start<R: RngCore + CryptoRng>(
    remaining: &[Identifier],
    key: &KeyPackage,
    rng: &mut R,
) -> Result<(RefreshRound1, round1::Package), ThresholdError> {
    let fail = |source| ThresholdError::Refresh {
        step: "part1",
        source,
    };
    if !remaining.contains(key.identifier()) {
        return Err(fail(frost_ed25519::Error::UnknownIdentifier));
    }
    let n = u16::try_from(remaining.len())
        .map_err(|_| ThresholdError::TooManyMembers(remaining.len()))?;
    if n < *key.min_signers() {
        return Err(ThresholdError::NotEnoughSigners {
            got: remaining.len(),
            needed: *key.min_signers(),
        });
    }
    let (secret, package) =
        refresh::refresh_dkg_part1(*key.identifier(), n, *key.min_signers(), rng).map_err(fail)?;
    Ok((
        RefreshRound1 {
            me: *key.identifier(),
            secret,
        },
        package,
    ))
}

impl RefreshRound1 {
    /// Refresh part 2: one round-2 package per other remaining member.
    pub fn receive(
        self,
        round1_packages: &BTreeMap<Identifier, round1::Package>,
    ) -> Result<(RefreshRound2, BTreeMap<Identifier, round2::Package>), ThresholdError> {
        let round1 = others(round1_packages, self.me);
        let (secret, outgoing) =
            refresh::refresh_dkg_part2(self.secret, &round1).map_err(|source| {
                ThresholdError::Refresh {
                    step: "part2",
                    source,
                }
            })?;
        Ok((
            RefreshRound2 {
                me: self.me,
                round1,
                secret,
            },
            outgoing,
        ))
    }
}

impl RefreshRound2 {
    /// Refresh part 3: the member's new key package and the group's new
    /// public key package (only the remaining members), with the group key
    /// checked unchanged.
    pub fn finish(
        self,
        round2_packages: &BTreeMap<Identifier, round2::Package>,
        old_public: &PublicKeyPackage,
        old_key: &KeyPackage,
    ) -> Result<(KeyPackage, PublicKeyPackage), ThresholdError> {
        let round2 = others(round2_packages, self.me);
        let (key, public) = refresh::refresh_dkg_shares(
            &self.secret,
            &self.round1,
            &round2,
            old_public.clone(),
            old_key.clone(),
        )
        .map_err(|source| ThresholdError::Refresh {
            step: "shares",
            source,
        })?;
        if public.verifying_key() != old_public.verifying_key() {
            return Err(ThresholdError::GroupKeyChanged);
        }
        Ok((key, public))
    }
}
