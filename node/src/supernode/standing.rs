//! Why the election came out as it did, as far as one peer can tell, pure:
//! from the adverts it holds (as the election takes them) it finds whether
//! it stands itself, which thresholds it misses, how many peers qualify,
//! how many claims to be public it confirmed by dialing, and how many
//! peers miss each threshold. `vmail status` prints it when no supernode
//! is elected or attached.

use std::collections::BTreeMap;

use crate::supernode::advert::Advert;
use crate::supernode::election::{Shortfall, Thresholds, shortfalls};

/// One peer's account of the election.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// What this peer misses to stand; `None` before its first advert.
    pub own: Option<Vec<Shortfall>>,
    /// Advertising peers, this one included, that qualify.
    pub qualified: usize,
    /// Other advertising peers that claim to be public and passed this
    /// peer's dial check (unconfirmed claims count as private here).
    pub confirmed_public: usize,
    /// Advertising peers that miss each threshold, by its setting
    /// ([`Shortfall::setting`]).
    pub missed: BTreeMap<&'static str, usize>,
}

/// The standing of the peer whose latest advert is `own` (published or,
/// since it does not qualify, kept back: `SupernodeView::own`) among the
/// fresh `adverts` as the election takes them (`SupernodeView::adverts`),
/// against `t`.
pub fn standing(adverts: &[Advert], own: Option<&Advert>, t: &Thresholds) -> Standing {
    let mut out = Standing {
        own: own.map(|a| shortfalls(a, t)),
        ..Standing::default()
    };
    let local = own.map(|a| a.peer_id);
    for a in adverts {
        let missed = shortfalls(a, t);
        if Some(a.peer_id) != local && a.reachability.is_public() {
            out.confirmed_public += 1;
        }
        if missed.is_empty() {
            out.qualified += 1;
        }
        for s in &missed {
            *out.missed.entry(s.setting()).or_default() += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supernode::advert::{ADVERT_VERSION, Reachability};

    fn advert(n: u8, reachability: Reachability, bandwidth_kbps: u64) -> Advert {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).expect("seed");
        Advert {
            version: ADVERT_VERSION,
            peer_id: key.public().to_peer_id(),
            seq: 1,
            issued_at: 1_800_000_000,
            reachability,
            cpu_cores: 4,
            memory_mib: 4096,
            bandwidth_kbps,
            uptime_secs: 600,
            load: 0,
            free_storage: 0,
            serving: false,
        }
    }

    #[test]
    fn counts_qualified_confirmed_and_missed_thresholds() {
        let t = Thresholds::default();
        let me = advert(1, Reachability::AutoNat, 0);
        // Not qualifying, this peer kept its advert back.
        let adverts = [
            advert(2, Reachability::Configured, 50_000),
            advert(3, Reachability::Configured, 0),
            advert(4, Reachability::Private, 50_000),
        ];
        let s = standing(&adverts, Some(&me), &t);
        assert_eq!(
            s.own,
            Some(vec![Shortfall::BandwidthKbps {
                have: 0,
                need: 10_000
            }])
        );
        assert_eq!(s.qualified, 1);
        assert_eq!(s.confirmed_public, 2);
        assert_eq!(
            s.missed.into_iter().collect::<Vec<_>>(),
            [("min_bandwidth_kbps", 1), ("public", 1)]
        );
        // A qualifying peer's own advert is among them: counted once.
        let both = [adverts[0].clone(), adverts[1].clone()];
        let s = standing(&both, Some(&adverts[0]), &t);
        assert_eq!(
            (s.own, s.qualified, s.confirmed_public),
            (Some(vec![]), 1, 1)
        );
        assert_eq!(standing(&adverts, None, &t).own, None);
    }
}
