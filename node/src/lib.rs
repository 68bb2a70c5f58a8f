//! The vmail peer and client library.
//!
//! - [`client`]: the auth servers' client: OPAQUE, master key, deposits, delivery;
//! - [`keystore`]: the user's identity key and current login, on disk;
//! - [`settings`]: the vmail home and where the auth servers are;
//! - [`crypto`]: segmented AES-256-GCM (STREAM) for voicemail bodies;
//! - [`locator`]: where a voicemail's shards are, as deposited;
//! - [`erasure`]: whole copies or Reed-Solomon shards over ciphertext (pure);
//! - [`score`]: observations of other peers and the placement scorers (pure);
//! - [`placement`]: which peers hold shards and under which identifiers (pure);
//! - [`repair`]: holders keeping their voicemails' shards at full count;
//! - [`advert`]: signed supernode adverts and their checks (pure);
//! - [`election`]: the supernode election over the adverts seen (pure);
//! - [`storage`]: the holder's object store;
//! - [`network`]: the libp2p swarm task and its handle;
//! - [`transfer`]: the blob protocol between peers;
//! - [`peer`]: a running peer and the leave and fetch jobs;
//! - [`control`]: the local control API (gRPC on a Unix socket) and its client;
//! - [`config`]: the peer's configuration;
//! - [`wav`]: WAV inspection and generation.
//!
//! The `vmail` binary (`src/main.rs`, `src/cli/`) is a thin layer over these.

pub mod advert;
pub mod client;
pub mod config;
pub mod control;
pub mod crypto;
pub mod election;
pub mod erasure;
pub mod keystore;
pub mod locator;
pub mod network;
pub mod peer;
pub mod placement;
pub mod repair;
pub mod score;
pub mod settings;
pub mod storage;
pub mod supernode;
pub mod transfer;
pub mod wav;
