//! Pure supernode logic; the swarm's event loop
//! ([`crate::overlay::swarm`]) does the IO around it.
//!
//! - [`advert`]: signed supernode adverts and their checks;
//! - [`election`]: the supernode election over the adverts seen at `now`;
//! - [`attach`]: the supernode protocol's messages, choosing a supernode,
//!   and what a supernode keeps of its attached peers and recommends;
//! - [`budget`]: what unverified peers may make this peer spend (the dial
//!   check queue, the relay's admission);
//! - [`standing`]: why the election came out as it did, for `vmail status`.

pub mod advert;
pub mod attach;
pub mod budget;
pub mod election;
pub mod standing;
