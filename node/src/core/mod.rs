//! Pure protocol logic: functions of their inputs, with no IO except the OS
//! random source (a ciphertext's nonce prefix; an RNG passed in). Everything
//! here is unit- and property-tested without a network.
//!
//! - [`crypto`]: the voicemail body format, STREAM over AES-256-GCM;
//! - [`locator`]: where a voicemail's shards are, as deposited;
//! - [`erasure`]: whole copies or Reed-Solomon shards over ciphertext;
//! - [`score`]: observations of other peers and the placement scorers;
//! - [`placement`]: identifiers inside a holder's key range;
//! - [`wav`]: WAV inspection and generation.

pub mod crypto;
pub mod erasure;
pub mod locator;
pub mod placement;
pub mod prune;
pub mod score;
pub mod wav;
