//! The overlay: IO with other peers and the holder's disk.
//!
//! - [`swarm`]: the libp2p swarm, the one task that owns it, and its
//!   [`swarm::Network`] handle;
//! - [`transfer`]: the blob protocol between peers, off the event loop;
//! - [`objects`]: the holder's object store on disk;
//! - [`repair`]: holders keeping their voicemails' shards at full count.

pub mod objects;
pub mod repair;
pub mod swarm;
pub mod transfer;
