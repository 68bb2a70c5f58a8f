//! The byte encoding of every threshold package that crosses the wire (or is
//! stored), through frost's own `serialize`/`deserialize`, with failures
//! named by package.

use frost_ed25519::keys::dkg::{round1, round2};
use frost_ed25519::keys::repairable::{Delta, Sigma};

use super::{
    Identifier, KeyPackage, PublicKeyPackage, SignatureShare, SigningCommitments, SigningPackage,
    ThresholdError,
};

/// A threshold package with a byte encoding.
pub trait Wire: Sized {
    /// The package's name in errors.
    const WHAT: &'static str;
    /// The package as bytes.
    fn to_wire(&self) -> Result<Vec<u8>, ThresholdError>;
    /// A package from bytes of [`Wire::to_wire`].
    fn from_wire(bytes: &[u8]) -> Result<Self, ThresholdError>;
}

macro_rules! wire {
    ($ty:ty, $what:literal, fallible) => {
        impl Wire for $ty {
            const WHAT: &'static str = $what;
            fn to_wire(&self) -> Result<Vec<u8>, ThresholdError> {
                self.serialize().map_err(|source| ThresholdError::Encode {
                    what: Self::WHAT,
                    source,
                })
            }
            fn from_wire(bytes: &[u8]) -> Result<Self, ThresholdError> {
                <$ty>::deserialize(bytes).map_err(|source| ThresholdError::Decode {
                    what: Self::WHAT,
                    source,
                })
            }
        }
    };
    ($ty:ty, $what:literal) => {
        impl Wire for $ty {
            const WHAT: &'static str = $what;
            fn to_wire(&self) -> Result<Vec<u8>, ThresholdError> {
                Ok(self.serialize())
            }
            fn from_wire(bytes: &[u8]) -> Result<Self, ThresholdError> {
                <$ty>::deserialize(bytes).map_err(|source| ThresholdError::Decode {
                    what: Self::WHAT,
                    source,
                })
            }
        }
    };
}

wire!(round1::Package, "DKG round-1 package", fallible);
wire!(round2::Package, "DKG round-2 package", fallible);
wire!(SigningCommitments, "signing commitments", fallible);
wire!(SigningPackage, "signing package", fallible);
wire!(SignatureShare, "signature share");
wire!(PublicKeyPackage, "public key package", fallible);
wire!(KeyPackage, "key package", fallible);
wire!(Delta, "repair delta");
wire!(Sigma, "repair sigma");
wire!(Identifier, "member identifier");
