//! Writes the seed corpus, `corpus/<target>/`, from genuine encodings made
//! by the real encoders (`vmail_fuzz`'s genuine values). Run it after a
//! wire format changes:
//!
//! ```text
//! cargo run --manifest-path tests/fuzz/Cargo.toml --example seeds
//! ```
//!
//! It replaces only the `seed-*` files; inputs kept from fuzzing (crashes
//! that were fixed, named `crash-*`) stay.

use std::path::{Path, PathBuf};

use futures::executor::block_on;
use futures::io::Cursor;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec as _;
use libp2p::request_response::cbor::codec::Codec;
use prost::Message as _;
use vmail_auth::cluster::network::encode;
use vmail_auth::keys::KeyBinding;
use vmail_auth::store::Store;
use vmail_fuzz::*;
use vmail_node::core::crypto::ciphertext_len;
use vmail_node::core::erasure::Redundancy;
use vmail_node::overlay::objects::fuzzing::{encode_tombstone, header};
use vmail_node::overlay::transfer::frame;
use vmail_node::supernode::attach::{SnRequest, SnResponse};
use vmail_proto::names::Recipients;

const PROTOCOL: StreamProtocol = StreamProtocol::new("/vmail/sn/seeds");

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut seeds: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();

    seeds.push(("locator", locators().iter().map(|l| l.encode()).collect()));
    let metas = object_metas();
    let mut files: Vec<Vec<u8>> = metas
        .iter()
        .map(|(_, m)| {
            let mut f = header(m);
            f.extend((0..m.len).map(|i| i as u8));
            f
        })
        .collect();
    files.push(encode_tombstone(&tombstone()));
    seeds.push(("object_file", files));
    let body = |frame: Vec<u8>| frame[4..].to_vec();
    seeds.push((
        "blob_request",
        requests().iter().map(|r| body(frame(r))).collect(),
    ));
    seeds.push((
        "blob_reply",
        replies().iter().map(|r| body(frame(r))).collect(),
    ));
    seeds.push(("advert", signed_adverts()));
    let mut codec = Codec::<SnRequest, SnResponse>::default();
    let mut sn = Vec::new();
    for r in sn_requests() {
        let mut out = Cursor::new(Vec::new());
        block_on(codec.write_request(&PROTOCOL, &mut out, r))?;
        sn.push(out.into_inner());
    }
    seeds.push(("sn_request", sn));
    let mut sn = Vec::new();
    for r in sn_responses() {
        let mut out = Cursor::new(Vec::new());
        block_on(codec.write_response(&PROTOCOL, &mut out, r))?;
        sn.push(out.into_inner());
    }
    seeds.push(("sn_response", sn));
    // Mode 0: a genuine ciphertext; mode 1: a plaintext to encrypt (a
    // length control, backend, nonce prefix and flip position, then text).
    let mut dec: Vec<Vec<u8>> = ciphertexts()
        .into_iter()
        .map(|c| [vec![0], c].concat())
        .collect();
    for (i, p) in plaintexts().into_iter().enumerate().skip(1) {
        let len = (p.len() as u16 / 4).to_le_bytes();
        let ctl = [len[0], len[1], i as u8, 1, 2, 3, 4, 5, 6, 7, 9, 0];
        dec.push([vec![1], ctl.to_vec(), p].concat());
    }
    seeds.push(("decrypt", dec));
    seeds.push((
        "plaintext_len",
        ciphertexts()
            .iter()
            .map(|c| (c.len() as u64).to_le_bytes().to_vec())
            .chain([ciphertext_len(65_536).to_le_bytes().to_vec()])
            .collect(),
    ));
    let ct = ciphertexts().remove(2);
    seeds.push((
        "erasure",
        [
            Redundancy::DEFAULT,
            Redundancy::ReedSolomon { k: 2, n: 3 },
            Redundancy::Replicas(3),
        ]
        .into_iter()
        .zip([0b1111_0000u32, 0b101, 0b100])
        .map(|(r, mask)| {
            let (k, n) = match r {
                Redundancy::Replicas(n) => (0, n),
                Redundancy::ReedSolomon { k, n } => (k, n),
            };
            [vec![k, n], mask.to_le_bytes().to_vec(), vec![0], ct.clone()].concat()
        })
        .collect(),
    ));
    let mut group_signed = certificate();
    group_signed.group_signature = Some(group_signed.signature);
    seeds.push((
        "cert",
        vec![certificate().to_bytes(), group_signed.to_bytes()],
    ));
    let key = secret_key();
    seeds.push((
        "secret_key",
        vec![
            [
                vec![0, SEALED_AAD.len() as u8],
                SEALED_AAD.to_vec(),
                key.seal(SEALED_PLAINTEXT, SEALED_AAD),
            ]
            .concat(),
            [
                vec![0, SEALED_AAD.len() as u8],
                SEALED_AAD.to_vec(),
                key.wrap(&wrapped_key(), SEALED_AAD),
            ]
            .concat(),
            [vec![1, 5, 0, 8], SEALED_PLAINTEXT.to_vec()].concat(),
        ],
    ));
    seeds.push((
        "recipients",
        recipient_lists()
            .iter()
            .map(|l| l.join("\n").into_bytes())
            .collect(),
    ));
    seeds.push(("deposit", vec![deposit_request().encode_to_vec()]));
    seeds.push(("share", {
        let key = secret_key();
        let locator = b"a locator";
        let check = vmail_proto::share::key_check(&key, locator);
        let servers: Vec<vmail_proto::share::ShareKey> = (1..=3)
            .map(|i| vmail_proto::share::ShareKey {
                node_id: i,
                epoch: 1,
                public: inbox_key().public(),
            })
            .collect();
        let names = recipient_lists().remove(1);
        let recipients = Recipients::parse(&names).expect("valid recipients");
        let (t, _, sealed) = vmail_proto::share::split(&key, &servers, 7, &recipients, locator)
            .expect("a valid split");
        let binding = vmail_proto::share::ShareBinding {
            grant_serial: 7,
            recipients: &recipients,
            threshold: t,
            key_check: &check,
        };
        let mut combine = vec![1, t];
        combine.extend_from_slice(&check);
        for s in &sealed {
            let v = vmail_proto::share::open_share(&inbox_key(), s, &binding).expect("opens");
            combine.push(v.index);
            combine.extend_from_slice(v.bytes());
        }
        combine.extend_from_slice(locator);
        vec![
            [vec![0], open_share_response().encode_to_vec()].concat(),
            combine,
        ]
    }));
    seeds.push(("dkg_step", dkg_steps()));
    seeds.push(("sign_round", sign_rounds()));
    let mut raft: Vec<Vec<u8>> = raft_messages()
        .iter()
        .map(|m| match m {
            RaftMessage::Append(r) => [vec![0], encode(r)].concat(),
            RaftMessage::Vote(r) => [vec![1], encode(r)].concat(),
            RaftMessage::Snapshot(r) => [vec![2], encode(r)].concat(),
        })
        .collect();
    raft.extend(commands().iter().map(|c| [vec![3], encode(c)].concat()));
    seeds.push(("raft_command", raft));
    seeds.push(("snapshot", vec![fresh_snapshot()?]));
    let (g, p) = (grant(), deposit_proof());
    let with_group = |bytes: Vec<u8>, signed: Vec<u8>| {
        vec![
            co_signed(&bytes, &signed),
            batch_co_signed(&bytes, &signed),
            bytes,
        ]
    };
    seeds.push(("grant", with_group(g.to_bytes(), g.signing_bytes())));
    seeds.push((
        "delete_order",
        delete_orders()
            .iter()
            .flat_map(|o| with_group(o.to_bytes(), o.signing_bytes()))
            .collect(),
    ));
    seeds.push(("deposit_proof", with_group(p.to_bytes(), p.signing_bytes())));
    seeds.push(("sip_message", sip_requests()));
    let offers = sdp_offers();
    let answer = vmail_node::sip::sdp::answer(
        &vmail_node::sip::sdp::parse_offer(offers[0].as_bytes())?,
        "127.0.0.1:7078".parse()?,
        1,
    );
    seeds.push((
        "sdp_offer",
        offers
            .into_iter()
            .chain([answer])
            .map(String::into_bytes)
            .collect(),
    ));

    for (target, inputs) in seeds {
        write(&root.join(target), &inputs)?;
    }
    Ok(())
}

/// The snapshot a new auth server's store exports: a genuine encoding of
/// every table, empty.
fn fresh_snapshot() -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("auth.redb");
    let data_key = secret_key();
    let binding = KeyBinding {
        opaque_public_key: [0x0b; 32],
        cluster_public_key: cluster_key().verifying_key().to_bytes(),
    };
    Store::create(&path, "auth-1", &data_key, &binding, 1, true)?;
    let store = Store::open(&path, data_key, &binding)?;
    Ok(store.export()?.0)
}

/// Replaces `dir`'s `seed-*` files with `inputs`.
fn write(dir: &Path, inputs: &[Vec<u8>]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("seed-") {
            std::fs::remove_file(entry.path())?;
        }
    }
    for (i, input) in inputs.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), input)?;
    }
    println!("{}: {} seeds", dir.display(), inputs.len());
    Ok(())
}

/// Genuine `ProposeDkg` requests of member 1 of a 3-member ceremony 1: its
/// round-1 package, its round-2 packages sealed to the fixed inbox key, and
/// its result.
fn dkg_steps() -> Vec<Vec<u8>> {
    use vmail_auth::service::DKG_ROUND2_INFO;
    use vmail_auth::store::DkgStep;
    use vmail_auth::threshold::{Roster, Wire, dkg};

    let roster = Roster::new(&[1, 2, 3]).expect("three members");
    let mut rng = rand::rngs::OsRng;
    let starts: Vec<_> = [1u64, 2, 3]
        .iter()
        .map(|&m| dkg::start(&roster, m, &mut rng).expect("part 1"))
        .collect();
    let round1: std::collections::BTreeMap<_, _> = starts
        .iter()
        .map(|(s, p)| (s.identifier(), p.clone()))
        .collect();
    let (first, package) = starts.into_iter().next().expect("three");
    let package = package.to_wire().expect("encodes");
    let (_, outgoing) = first.receive(&round1).expect("part 2");
    let sealed = outgoing
        .iter()
        .map(|(id, p)| {
            let to = roster.node_id(id).expect("a member");
            sealed_to_inbox(DKG_ROUND2_INFO, to, &p.to_wire().expect("encodes"))
        })
        .collect();
    [
        DkgStep::Round1 {
            ceremony: 1,
            package,
        },
        DkgStep::Round2 {
            ceremony: 1,
            sealed,
        },
        DkgStep::Done {
            ceremony: 1,
            group_key: [0x67; 32],
            public_digest: [0x64; 32],
        },
    ]
    .into_iter()
    .chain(repair_steps())
    .collect::<Vec<_>>()
    .iter()
    .map(|step| {
        vmail_proto::cluster_pb::ProposeDkgRequest {
            node_id: 1,
            step: postcard::to_allocvec(step).expect("encodes"),
            ..Default::default()
        }
        .encode_to_vec()
    })
    .collect()
}

/// Genuine repair steps of helper 1 in ceremony 1, giving member 4 a
/// share of a real 2-of-3 key with helper 3: its delta for helper 3 and
/// its sigma for member 4 (with the key's public key package), sealed to
/// the fixed inbox key.
fn repair_steps() -> Vec<vmail_auth::store::DkgStep> {
    use vmail_auth::service::{REPAIR_DELTA_INFO, REPAIR_SIGMA_INFO, sigma_plaintext};
    use vmail_auth::store::DkgStep;
    use vmail_auth::threshold::{Wire, member_identifier, membership};

    let keys = key_packages();
    let (key, public) = &keys[0];
    let id = |n: u64| member_identifier(n).expect("an identifier");
    let deltas = membership::repair_deltas(&[id(1), id(3)], key, id(4), &mut rand::rngs::OsRng)
        .expect("repair part 1");
    let delta = deltas[&id(3)].to_wire().expect("encodes");
    let sigma = membership::repair_sigma(&[deltas[&id(1)].clone()])
        .to_wire()
        .expect("encodes");
    let sigma = sigma_plaintext(&sigma, &public.to_wire().expect("encodes"));
    vec![
        DkgStep::RepairDeltas {
            ceremony: 1,
            sealed: vec![sealed_to_inbox(REPAIR_DELTA_INFO, 3, &delta)],
        },
        DkgStep::RepairSigma {
            ceremony: 1,
            sealed: sealed_to_inbox(REPAIR_SIGMA_INFO, 4, &sigma),
        },
    ]
}

/// `bytes` sealed by member 1 to member `to` in ceremony 1 under `info`,
/// as a key ceremony seals, to the fixed inbox key (epoch 1).
fn sealed_to_inbox(info: &[u8], to: u64, bytes: &[u8]) -> vmail_auth::store::SealedPackage {
    let (enc, ciphertext) = vmail_proto::share::seal_bytes(
        &inbox_key().public(),
        info,
        bytes,
        &vmail_auth::service::round2_aad(1, 1, to, 1),
    )
    .expect("seals");
    vmail_auth::store::SealedPackage {
        to,
        epoch: 1,
        enc,
        ciphertext,
    }
}

/// The key packages of members 1, 2 and 3 of a real 2-of-3 key generation.
fn key_packages() -> Vec<(
    vmail_auth::threshold::KeyPackage,
    vmail_auth::threshold::PublicKeyPackage,
)> {
    use vmail_auth::threshold::{Roster, dkg};

    let roster = Roster::new(&[1, 2, 3]).expect("three members");
    let mut rng = rand::rngs::OsRng;
    let starts: Vec<_> = [1u64, 2, 3]
        .iter()
        .map(|&m| dkg::start(&roster, m, &mut rng).expect("part 1"))
        .collect();
    let round1: std::collections::BTreeMap<_, _> = starts
        .iter()
        .map(|(s, p)| (s.identifier(), p.clone()))
        .collect();
    let mut seconds = Vec::new();
    let mut sent = std::collections::BTreeMap::new();
    for (s, _) in starts {
        let me = s.identifier();
        let (state, out) = s.receive(&round1).expect("part 2");
        sent.insert(me, out);
        seconds.push((me, state));
    }
    seconds
        .into_iter()
        .map(|(me, state)| {
            let incoming = sent
                .iter()
                .filter_map(|(from, out)| Some((*from, out.get(&me)?.clone())))
                .collect();
            state.finish(&incoming).expect("part 3")
        })
        .collect()
}

/// A signing round as a signer receives it: round 1 for a certificate and
/// for a grant, and round 2 with a real signing package of a 2-of-3 key,
/// alone and naming its target as a prepared round's does.
fn sign_rounds() -> Vec<Vec<u8>> {
    use vmail_auth::service::SignTarget;
    use vmail_auth::threshold::{Wire, sign};
    use vmail_proto::cluster_pb::{SignCommitRequest, SignShareRequest};

    let mut rng = rand::rngs::OsRng;
    let finished = key_packages();
    let public = finished[0].1.clone();
    let commitments = finished
        .iter()
        .take(2)
        .map(|(k, _)| (*k.identifier(), sign::commit(k, &mut rng).1))
        .collect();
    let package =
        sign::signing_package(&public, commitments, b"vmail/v1/user-certificate").expect("package");
    let mut out: Vec<Vec<u8>> = [
        SignTarget::Certificate {
            username: "alice".into(),
            serial: 7,
        },
        SignTarget::Grant { serial: 9 },
        SignTarget::DeleteOrder { serial: 9 },
        SignTarget::DepositProof { serial: 9 },
        SignTarget::Roster { serial: 9 },
    ]
    .iter()
    .map(|t| {
        let r = SignCommitRequest {
            ceremony: 1,
            applied_index: 42,
            target: t.to_bytes(),
        };
        [vec![0], r.encode_to_vec()].concat()
    })
    .collect();
    let r = SignShareRequest {
        handle: vec![0x68; 16],
        signing_package: package.to_wire().expect("encodes"),
        ..Default::default()
    };
    out.push([vec![1], r.encode_to_vec()].concat());
    // Round 2 of a prepared round names its target.
    let r = SignShareRequest {
        applied_index: 42,
        target: SignTarget::DepositProof { serial: 9 }.to_bytes(),
        ..r
    };
    out.push([vec![1], r.encode_to_vec()].concat());
    out
}
