//! The distributed key generation (FROST's Pedersen DKG, `frost_ed25519::keys::dkg`).
//!
//! Each member calls [`start`], broadcasts its round-1 package to every other
//! member, feeds the round-1 packages it received to [`DkgRound1::receive`],
//! sends each round-2 package privately (over the authenticated, encrypted
//! internal channel) to the member it is keyed by, and finishes with
//! [`DkgRound2::finish`]. Every member ends with its own [`KeyPackage`] and the
//! same [`PublicKeyPackage`], whose group key no single member knows the
//! secret of. Packages must be keyed by the identifier of the member they came
//! from as the transport authenticated it; frost trusts that mapping.

use std::collections::BTreeMap;

use frost_ed25519::keys::dkg::{self as frost_dkg, round1, round2};
use frost_ed25519::rand_core::{CryptoRng, RngCore};

use super::{Identifier, KeyPackage, PublicKeyPackage, Roster, ThresholdError};

/// A member's state after part 1: its secret polynomial, kept in memory only.
#[derive(Debug)]
pub struct DkgRound1 {
    me: Identifier,
    secret: round1::SecretPackage,
}

/// A member's state after part 2, kept in memory only until [`DkgRound2::finish`].
#[derive(Debug)]
pub struct DkgRound2 {
    me: Identifier,
    round1: BTreeMap<Identifier, round1::Package>,
    secret: round2::SecretPackage,
}

/// Part 1 for member `node_id` of `roster`: its state and the package to
/// broadcast to every other member.
pub fn start<R: RngCore + CryptoRng>(
    roster: &Roster,
    node_id: u64,
    rng: &mut R,
) -> Result<(DkgRound1, round1::Package), ThresholdError> {
    let me = roster
        .identifier(node_id)
        .ok_or(ThresholdError::NotAMember(node_id))?;
    let n =
        u16::try_from(roster.len()).map_err(|_| ThresholdError::TooManyMembers(roster.len()))?;
    let (secret, package) =
        frost_dkg::part1(me, n, roster.threshold(), rng).map_err(|source| ThresholdError::Dkg {
            step: "part1",
            source,
        })?;
    Ok((DkgRound1 { me, secret }, package))
}

/// `packages` without the entry of `me`, so callers may pass a whole broadcast.
pub(super) fn others<T: Clone>(
    packages: &BTreeMap<Identifier, T>,
    me: Identifier,
) -> BTreeMap<Identifier, T> {
    packages
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, p)| (*id, p.clone()))
        .collect()
}

impl DkgRound1 {
    /// This member's identifier.
    pub fn identifier(&self) -> Identifier {
        self.me
    }

    /// Part 2: checks every other member's round-1 package (its proof of
    /// knowledge) and returns the state and one round-2 package per other
    /// member, to be sent to that member only.
    pub fn receive(
        self,
        round1_packages: &BTreeMap<Identifier, round1::Package>,
    ) -> Result<(DkgRound2, BTreeMap<Identifier, round2::Package>), ThresholdError> {
        let round1 = others(round1_packages, self.me);
        let (secret, outgoing) =
            frost_dkg::part2(self.secret, &round1).map_err(|source| ThresholdError::Dkg {
                step: "part2",
                source,
            })?;
        Ok((
            DkgRound2 {
                me: self.me,
                round1,
                secret,
            },
            outgoing,
        ))
    }
}

impl DkgRound2 {
    /// Part 3: checks the round-2 packages sent to this member against the
    /// round-1 commitments and returns its long-lived key package and the
    /// group's public key package.
    pub fn finish(
        self,
        round2_packages: &BTreeMap<Identifier, round2::Package>,
    ) -> Result<(KeyPackage, PublicKeyPackage), ThresholdError> {
        let round2 = others(round2_packages, self.me);
        frost_dkg::part3(&self.secret, &self.round1, &round2).map_err(|source| {
            ThresholdError::Dkg {
                step: "part3",
                source,
            }
        })
    }
}
