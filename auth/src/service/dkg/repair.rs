//! A repair on this server (docs/THRESHOLD.md §4): a joining member gets a
//! share of the group's key from `t` helpers, and nobody else's share
//! changes.
//!
//! 1. Each helper splits its Lagrange-weighted share into one delta per
//!    helper, keeps its own in memory and seals each other one to that
//!    helper's share key (`RepairDeltas`).
//! 2. Once every helper's deltas are in, each helper sums the deltas meant
//!    for it into a sigma and seals it, with the key's public key package,
//!    to the joining member's share key (`RepairSigma`).
//! 3. Once every sigma is in, the joining member sums them into its share,
//!    checked against the verifying share the group's public data gives it,
//!    after checking that every helper sent the public key package whose
//!    digest the log recorded for the key. Every other member keeps its
//!    share. Each member writes its key package, with the public key
//!    package that now lists the joining member, under the repair's number,
//!    and reports (`Done`).

use std::collections::BTreeMap;
use std::path::Path;

use super::{Mine, ShareKeys, held_key, open_from, report, seal_to, share_keys};
use crate::datadir::frost_keys;
use crate::service::AuthService;
use crate::store::{Ceremony, CeremonyEnd, DkgStep, Reshare, decode_sealed};
use crate::threshold::{
    Delta, KeyPackage, PublicKeyPackage, Sigma, Wire, member_identifier, membership,
};
use sha2::{Digest, Sha256};

/// HPKE info of a sealed repair delta.
pub const REPAIR_DELTA_INFO: &[u8] = b"vmail/v1/repair-delta";
/// HPKE info of a sealed repair sigma.
pub const REPAIR_SIGMA_INFO: &[u8] = b"vmail/v1/repair-sigma";

/// One repair as this member (`me`) takes part in it.
pub(super) struct Repair<'a> {
    pub(super) number: u64,
    pub(super) of: u64,
    pub(super) helpers: &'a [u64],
    pub(super) joining: u64,
    pub(super) me: u64,
}

impl Repair<'_> {
    /// This member's next step, if it has one.
    pub(super) async fn step(
        &self,
        svc: &AuthService,
        dir: &Path,
        c: &Ceremony,
        reshare: Option<&Reshare>,
        mine: &mut Mine,
    ) -> Result<Option<DkgStep>, String> {
        let me = self.me;
        let helping = self.helpers.contains(&me);
        Ok(if helping && !c.round1.contains_key(&me) {
            if mine.sent.is_none() && mine.repair_delta.is_none() {
                let Some(keys) = share_keys(svc, self.helpers, me).await? else {
                    return Ok(None);
                };
                mine.sent = Some(self.deltas(dir, &keys, mine)?);
            }
            mine.sent.take()
        } else if helping && c.round1_complete(reshare) && !c.round2.contains_key(&me) {
            if let Some(own) = mine.repair_delta.take() {
                let Some(keys) = share_keys(svc, &[self.joining], me).await? else {
                    mine.repair_delta = Some(own);
                    return Ok(None);
                };
                mine.sent = Some(self.sigma(svc, dir, c, &keys, own)?);
            }
            mine.sent.take()
        } else if c.round2_complete(reshare) && !c.done.contains_key(&me) {
            if !mine.repair_reported {
                mine.sent = Some(self.finish(svc, dir, c).await?);
                mine.repair_reported = true;
            }
            mine.sent.take()
        } else {
            None
        })
    }

    /// Step 1: this helper's deltas, its own kept in `mine`.
    fn deltas(&self, dir: &Path, keys: &ShareKeys, mine: &mut Mine) -> Result<DkgStep, String> {
        let (key, _) = held_key(dir, self.of)?;
        let ids = self
            .helpers
            .iter()
            .map(|h| member_identifier(*h).map(|id| (id, *h)))
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(|e| e.to_string())?;
        let helper_ids: Vec<_> = ids.keys().copied().collect();
        let joining = member_identifier(self.joining).map_err(|e| e.to_string())?;
        let deltas = membership::repair_deltas(&helper_ids, &key, joining, &mut rand::rngs::OsRng)
            .map_err(|e| e.to_string())?;
        let mut sealed = Vec::new();
        for (id, delta) in deltas {
            let to = ids[&id];
            if to == self.me {
                mine.repair_delta = Some(delta);
            } else {
                let bytes = delta.to_wire().map_err(|e| e.to_string())?;
                sealed.push(seal_to(
                    keys,
                    REPAIR_DELTA_INFO,
                    self.number,
                    self.me,
                    to,
                    &bytes,
                )?);
            }
        }
        Ok(DkgStep::RepairDeltas {
            ceremony: self.number,
            sealed,
        })
    }

    /// Step 2: this helper's sigma, with the key's public key package,
    /// sealed to the joining member.
    fn sigma(
        &self,
        svc: &AuthService,
        dir: &Path,
        c: &Ceremony,
        keys: &ShareKeys,
        own: Delta,
    ) -> Result<DkgStep, String> {
        let mut deltas = vec![own];
        for (from, bytes) in &c.round1 {
            if *from == self.me {
                continue;
            }
            let sealed = decode_sealed(bytes).map_err(|e| e.to_string())?;
            let p = sealed
                .iter()
                .find(|p| p.to == self.me)
                .ok_or_else(|| format!("{from:016x} sent this server no delta"))?;
            let bytes = open_from(svc, REPAIR_DELTA_INFO, self.number, *from, self.me, p)?;
            deltas
                .push(Delta::from_wire(&bytes).map_err(|e| format!("delta of {from:016x}: {e}"))?);
        }
        let sigma = membership::repair_sigma(&deltas)
            .to_wire()
            .map_err(|e| e.to_string())?;
        let (_, public) = held_key(dir, self.of)?;
        let bytes = sigma_plaintext(&sigma, &public.to_wire().map_err(|e| e.to_string())?);
        Ok(DkgStep::RepairSigma {
            ceremony: self.number,
            sealed: seal_to(
                keys,
                REPAIR_SIGMA_INFO,
                self.number,
                self.me,
                self.joining,
                &bytes,
            )?,
        })
    }

    /// Step 3: this member's key package under the repair's number, written
    /// once (a restart reports the one written), and its report.
    async fn finish(&self, svc: &AuthService, dir: &Path, c: &Ceremony) -> Result<DkgStep, String> {
        if let Some((_, public)) =
            frost_keys::load_key_package(dir, self.number).map_err(|e| e.to_string())?
        {
            return report(self.number, &public);
        }
        let joining = member_identifier(self.joining).map_err(|e| e.to_string())?;
        let (key, public) = if self.me == self.joining {
            self.repaired(svc, c, joining).await?
        } else {
            let (key, public) = held_key(dir, self.of)?;
            let public = membership::with_member(&public, joining).map_err(|e| e.to_string())?;
            (key, public)
        };
        frost_keys::write_key_package(dir, self.number, &key, &public)
            .map_err(|e| e.to_string())?;
        report(self.number, &public)
    }

    /// The joining member's share from the sigmas sealed to it.
    async fn repaired(
        &self,
        svc: &AuthService,
        c: &Ceremony,
        me: crate::threshold::Identifier,
    ) -> Result<(KeyPackage, PublicKeyPackage), String> {
        let of = self.of;
        let recorded = match svc
            .db(move |s| s.ceremony(of))
            .await
            .map_err(|e| e.to_string())?
            .and_then(|k| k.end)
        {
            Some(CeremonyEnd::Key { public_digest, .. }) => public_digest,
            _ => return Err(format!("the log records no key of ceremony {of}")),
        };
        let mut sigmas = Vec::new();
        let mut public = None;
        for (from, sealed) in &c.round2 {
            let p = sealed
                .iter()
                .find(|p| p.to == self.me)
                .ok_or_else(|| format!("{from:016x} sent this server no sigma"))?;
            let bytes = open_from(svc, REPAIR_SIGMA_INFO, self.number, *from, self.me, p)?;
            let (sigma, theirs) = split_sigma(&bytes)
                .ok_or_else(|| format!("the sigma of {from:016x} is malformed"))?;
            if <[u8; 32]>::from(Sha256::digest(theirs)) != recorded {
                return Err(format!(
                    "{from:016x} sent a public key package other than the one the log records for ceremony {of}"
                ));
            }
            sigmas.push(Sigma::from_wire(sigma).map_err(|e| format!("sigma of {from:016x}: {e}"))?);
            public = Some(theirs.to_vec());
        }
        let public =
            PublicKeyPackage::from_wire(&public.ok_or("no sigma")?).map_err(|e| e.to_string())?;
        let public = membership::with_member(&public, me).map_err(|e| e.to_string())?;
        let key = membership::repair_finish(&sigmas, me, &public).map_err(|e| e.to_string())?;
        Ok((key, public))
    }
}

/// A sealed sigma's plaintext: the sigma's length (u32, big-endian), the
/// sigma, then the key's public key package.
pub fn sigma_plaintext(sigma: &[u8], public: &[u8]) -> Vec<u8> {
    let mut bytes = (sigma.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(sigma);
    bytes.extend_from_slice(public);
    bytes
}

/// The sigma and the public key package of [`sigma_plaintext`] bytes.
pub fn split_sigma(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}
