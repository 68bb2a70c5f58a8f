//! The coordinator of a group signature (docs/THRESHOLD.md §2): the
//! server that answers a client runs the round with t−1 other roster
//! members, in one trip on commitments they prepared ahead
//! ([`super::prepared`]) or in both rounds, and aggregates.

use std::collections::BTreeMap;

use tonic::transport::Channel;
use vmail_proto::batch::GroupSignature;
use vmail_proto::cluster_pb::{self as cpb, cluster_client::ClusterClient};

use super::{Held, SignError, SignTarget, Signer, answer};
use crate::threshold::{Identifier, SignatureShare, SigningCommitments, Wire, sign};
use crate::tls::ClusterTls;

/// A signer chosen for a round.
struct Chosen {
    node: u64,
    name: String,
    id: Identifier,
    handle: Vec<u8>,
    commitments: SigningCommitments,
    client: ClusterClient<Channel>,
}

impl Signer {
    /// Coordinates one group signature on `target`: this server and t−1
    /// other roster members, the first to answer round 1, or t−1 whose
    /// prepared commitments it holds. Returns the signature, checked with
    /// `verify_strict` under the group key, and the group key.
    pub async fn group_sign(
        &self,
        tls: &ClusterTls,
        me: u64,
        target: &SignTarget,
    ) -> Result<(ed25519_dalek::Signature, [u8; 32]), SignError> {
        let message = self.message(target).await?;
        self.round(tls, me, target, &message).await
    }

    /// The group's signatures on `targets` (grants, delete orders, deposit
    /// proofs) from one round, in order: each on the Merkle root of their
    /// bytes, with its inclusion proof. A lone target is signed directly.
    /// The batch is signed as a whole or not at all.
    pub async fn group_sign_many(
        &self,
        tls: &ClusterTls,
        me: u64,
        targets: Vec<SignTarget>,
    ) -> Result<Vec<GroupSignature>, SignError> {
        if let [one] = targets.as_slice() {
            return Ok(vec![self.group_sign(tls, me, one).await?.0.into()]);
        }
        let (items, key_id) = (targets.clone(), self.cluster_key_id);
        let messages = self
            .db(move |s| Ok(SignTarget::batch_items(s, &key_id, &items)))
            .await??;
        let batch = sign::BatchToSign::new(&messages)?;
        let (signature, _) = self
            .round(tls, me, &SignTarget::Batch(targets), &batch.message())
            .await?;
        Ok(batch.item_signatures(signature))
    }

    /// One signing round on `message`, the bytes `target` names here: a
    /// single trip on prepared commitments when t−1 members have some
    /// left, else (or when that fails) both rounds.
    async fn round(
        &self,
        tls: &ClusterTls,
        me: u64,
        target: &SignTarget,
        message: &[u8],
    ) -> Result<(ed25519_dalek::Signature, [u8; 32]), SignError> {
        let (held, roster) = self.current().await?;
        let needed = usize::from(*held.key.min_signers());
        let members = self.raft.metrics().borrow().membership_config.clone();
        let request = cpb::SignCommitRequest {
            ceremony: held.ceremony,
            applied_index: self.applied(),
            target: target.to_bytes(),
        };
        let others: Vec<(u64, String, String)> = roster
            .iter()
            .filter(|n| **n != me)
            .map(|n| match members.membership().get_node(n) {
                Some(m) => (*n, m.name.clone(), m.raft_url.clone()),
                None => (*n, format!("{n:016x}"), String::new()),
            })
            .collect();
        // The members this server can reach: one-trip rounds and the
        // asks for prepared commitments go to them.
        let reachable: Vec<(u64, &str, Identifier, ClusterClient<Channel>)> = others
            .iter()
            .filter_map(|(node, name, url)| {
                let client = self.client(tls, url).ok()?;
                let id = crate::threshold::member_identifier(*node).ok()?;
                Some((*node, name.as_str(), id, client))
            })
            .collect();
        let chosen = self
            .pools
            .take(held.ceremony, reachable.iter().map(|r| r.0), needed - 1)
            .map(|taken| {
                taken
                    .into_iter()
                    .filter_map(|(node, p)| {
                        let (_, name, id, client) = reachable.iter().find(|r| r.0 == node)?;
                        Some(Chosen {
                            node,
                            name: name.to_string(),
                            id: *id,
                            handle: p.handle.to_vec(),
                            commitments: p.commitments,
                            client: client.clone(),
                        })
                    })
                    .collect::<Vec<_>>()
            });
        let asked: Vec<_> = reachable
            .iter()
            .map(|(node, name, _, client)| (*node, *name, client.clone()))
            .collect();
        self.pools.refill(held.ceremony, &asked);
        if let Some(chosen) = chosen {
            let nodes: Vec<(u64, String)> =
                chosen.iter().map(|c| (c.node, c.name.clone())).collect();
            let prepared = Some((request.applied_index, request.target.as_slice()));
            match self
                .finish(&held, message, chosen, prepared, Vec::new())
                .await
            {
                Ok(signed) => {
                    self.one_trip
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(signed);
                }
                Err(e) => {
                    // A signer that restarted lost its nonces, one that lags
                    // or refused would again: drop what they prepared, leave
                    // them out of one-trip rounds for a while, and run both
                    // rounds, where the first to answer signs.
                    let names: Vec<_> = nodes.iter().map(|(_, n)| n.as_str()).collect();
                    tracing::warn!(signers = ?names, error = %e, "a round on prepared commitments failed; running both rounds");
                    self.pools.set_aside(nodes.iter().map(|(n, _)| *n));
                }
            }
        }
        let asks = others.iter().map(|(node, name, url)| {
            let request = request.clone();
            async move {
                let got = async {
                    let mut client = self.client(tls, url)?;
                    let r = answer(client.sign_commit(request)).await?;
                    let id =
                        crate::threshold::member_identifier(*node).map_err(|e| e.to_string())?;
                    let commitments =
                        SigningCommitments::from_wire(&r.commitments).map_err(|e| e.to_string())?;
                    Ok::<_, String>((id, r.handle, commitments, client))
                }
                .await;
                (*node, name.clone(), got)
            }
        });
        let mut failures = Vec::new();
        let mut chosen = Vec::new();
        // The first t−1 to answer sign; the rest are not waited for, and
        // the nonces of any that answer later expire unused.
        let mut asks: futures::stream::FuturesUnordered<_> = asks.collect();
        while chosen.len() + 1 < needed {
            let Some((node, name, got)) = futures::StreamExt::next(&mut asks).await else {
                break;
            };
            match got {
                Ok((id, handle, commitments, client)) => chosen.push(Chosen {
                    node,
                    name,
                    id,
                    handle,
                    commitments,
                    client,
                }),
                Err(why) => failures.push((name, why)),
            }
        }
        drop(asks);
        if chosen.len() + 1 < needed {
            return Err(too_few(chosen.len() + 1, needed, failures));
        }
        self.finish(&held, message, chosen, None, failures).await
    }

    /// Round 2 with `chosen`'s commitments and this server's: the package,
    /// the shares, the aggregate. `prepared` is the (applied index, target)
    /// a round 2 on prepared commitments names; `failures`, the members
    /// that already failed this round.
    async fn finish(
        &self,
        held: &Held,
        message: &[u8],
        chosen: Vec<Chosen>,
        prepared: Option<(u64, &[u8])>,
        mut failures: Vec<(String, String)>,
    ) -> Result<(ed25519_dalek::Signature, [u8; 32]), SignError> {
        let needed = usize::from(*held.key.min_signers());
        let mut commitments: BTreeMap<_, _> =
            chosen.iter().map(|c| (c.id, c.commitments)).collect();
        let (nonces, mine) = sign::commit(&held.key, &mut rand::rngs::OsRng);
        commitments.insert(*held.key.identifier(), mine);
        let package = sign::signing_package(&held.public, commitments, message)?;
        let package_bytes = package.to_wire()?;
        let (applied_index, target) = prepared.unwrap_or_default();
        let asks = chosen.into_iter().map(|mut c| {
            let request = cpb::SignShareRequest {
                handle: c.handle,
                signing_package: package_bytes.clone(),
                applied_index,
                target: target.to_vec(),
            };
            async move {
                let got = answer(c.client.sign_share(request))
                    .await
                    .and_then(|r| SignatureShare::from_wire(&r.share).map_err(|e| e.to_string()));
                (c.name, c.id, got)
            }
        });
        let mut shares = BTreeMap::new();
        for (name, id, got) in futures::future::join_all(asks).await {
            match got {
                Ok(share) => {
                    shares.insert(id, share);
                }
                Err(why) => failures.push((name, why)),
            }
        }
        if shares.len() + 1 < needed {
            return Err(too_few(shares.len() + 1, needed, failures));
        }
        shares.insert(
            *held.key.identifier(),
            sign::sign_share(&package, nonces, &held.key)?,
        );
        let group_key = crate::threshold::group_key_bytes(&held.public)?;
        Ok((sign::aggregate(&package, &shares, &held.public)?, group_key))
    }
}

fn too_few(got: usize, needed: usize, failures: Vec<(String, String)>) -> SignError {
    SignError::TooFewSigners {
        got,
        needed: needed as u16,
        failures,
    }
}
