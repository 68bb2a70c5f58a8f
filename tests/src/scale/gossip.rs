//! Advert gossip at scale: gossipsub as the node configures it (libp2p
//! defaults but for strict validation; see
//! `node/src/overlay/swarm/event_loop.rs`) over a random mesh with
//! per-hop latency, and what it costs each peer in bytes.
//!
//! The model: every peer keeps a mesh of [`MESH_N`] to [`MESH_N_HIGH`]
//! topic peers and knows [`NON_MESH_PEERS`] more. A publisher sends to all
//! of them (`flood_publish`, on by default); every peer forwards a message
//! it sees first to its mesh peers but the one it came from and the
//! author. Adverts are smaller than the 1000-byte IDONTWANT threshold, so
//! no IDONTWANT is sent and a peer takes a copy from nearly every mesh
//! peer. Once per heartbeat ([`HEARTBEAT_SECS`]) a peer sends an IHAVE
//! to [`GOSSIP_LAZY`] non-mesh peers listing the ids of the messages of
//! the last [`HISTORY_GOSSIP`] heartbeats. IWANT is not counted: a
//! message reaches every peer well within one heartbeat (the run checks
//! that), so an IHAVE almost never names a message its receiver lacks.
//!
//! Per-peer copies of a message are counted exactly on the graph for a
//! sample of [`SAMPLED_SOURCES`] authors (first arrival by Dijkstra over
//! link latencies) and averaged; bytes per minute then follow from the
//! advert rate.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// gossipsub `mesh_n` (D), libp2p-gossipsub 0.50 default.
pub const MESH_N: usize = 6;
/// gossipsub `mesh_n_low` (D_lo): below it a heartbeat grafts.
pub const MESH_N_LOW: usize = 5;
/// gossipsub `mesh_n_high` (D_hi): above it a heartbeat prunes.
pub const MESH_N_HIGH: usize = 12;
/// gossipsub `gossip_lazy`: IHAVE targets per heartbeat (the default
/// `gossip_factor` 0.25 of [`NON_MESH_PEERS`] is fewer, so this rules).
pub const GOSSIP_LAZY: usize = 6;
/// gossipsub `heartbeat_interval`, seconds.
pub const HEARTBEAT_SECS: f64 = 1.0;
/// gossipsub `history_gossip`: heartbeats of message ids an IHAVE lists.
pub const HISTORY_GOSSIP: f64 = 3.0;
/// gossipsub `max_ihave_length`: most ids in one IHAVE.
pub const MAX_IHAVE_LENGTH: f64 = 5000.0;
/// Topic peers a peer is connected to beyond its mesh. A server peer's
/// connections are its Kademlia neighbours, its supernode and the peers it
/// stores with; 12 is a modest figure for them (the real count at 200
/// peers comes from the harness).
pub const NON_MESH_PEERS: usize = 12;
/// Authors whose messages are traced hop by hop.
pub const SAMPLED_SOURCES: usize = 24;

/// Bytes of a gossipsub message beyond its data: protobuf tags and lengths
/// (about 12), `from` (a 38-byte ed25519 peer id), `seqno` (8), the topic
/// `/vmail/supernode-adverts/1` (26) and the 64-byte signature; the key is
/// left out because an ed25519 peer id holds it.
pub const MESSAGE_OVERHEAD: usize = 12 + 38 + 8 + 26 + 64;
/// Bytes every RPC frame adds on the wire: gossipsub's length prefix and
/// RPC field (about 5), the yamux header (12) and the noise frame's length
/// and tag (18).
pub const FRAME_OVERHEAD: usize = 5 + 12 + 18;
/// A message id on the wire: the default id is the author's base58 peer id
/// (52 characters) and the decimal sequence number (19 digits: it starts
/// at the Unix time in nanoseconds), plus 2 bytes of protobuf.
pub const MESSAGE_ID_BYTES: usize = 52 + 19 + 2;
/// An IHAVE's own bytes beyond its ids: the control field, the topic.
pub const IHAVE_OVERHEAD: usize = 6 + 26;

/// The topic peers of every peer.
#[derive(Debug)]
pub struct Mesh {
    /// Mesh peers of each peer.
    pub mesh: Vec<Vec<u32>>,
    /// Non-mesh topic peers of each peer.
    pub others: Vec<Vec<u32>>,
}

impl Mesh {
    /// A random mesh over `n` peers: each grafts random peers until it
    /// has [`MESH_N`], never past [`MESH_N_HIGH`] on either side, as the
    /// heartbeat's grafting does; then [`NON_MESH_PEERS`] random others.
    pub fn random(n: usize, rng: &mut StdRng) -> Self {
        let mut mesh: Vec<Vec<u32>> = vec![Vec::new(); n];
        if n < 2 {
            return Self {
                mesh,
                others: vec![Vec::new(); n],
            };
        }
        let want = MESH_N.min(n - 1);
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.shuffle(rng);
        for &i in &order {
            let mut tries = 0;
            while mesh[i as usize].len() < want && tries < 50 * n.min(100) {
                tries += 1;
                let j = rng.gen_range(0..n as u32);
                if j == i || mesh[i as usize].contains(&j) || mesh[j as usize].len() >= MESH_N_HIGH
                {
                    continue;
                }
                mesh[i as usize].push(j);
                mesh[j as usize].push(i);
            }
        }
        let others = (0..n as u32)
            .map(|i| {
                let mut o = Vec::new();
                let want = NON_MESH_PEERS.min(n - 1 - mesh[i as usize].len());
                let mut tries = 0;
                while o.len() < want && tries < 100 * want {
                    tries += 1;
                    let j = rng.gen_range(0..n as u32);
                    if j != i && !mesh[i as usize].contains(&j) && !o.contains(&j) {
                        o.push(j);
                    }
                }
                o
            })
            .collect();
        Self { mesh, others }
    }
}

/// One message traced through the mesh.
#[derive(Debug)]
pub struct Trace {
    /// Copies each peer received (first one included; 0 for the author).
    pub received: Vec<u32>,
    /// Copies each peer sent.
    pub sent: Vec<u32>,
    /// When the last peer got it, milliseconds after publishing.
    pub last_ms: f64,
    /// Hops on the path of the last first-arrival.
    pub max_hops: u32,
}

/// Traces one message from `author`; `latency_ms(a, b)` is one hop's delay.
pub fn trace(mesh: &Mesh, author: u32, latency_ms: impl Fn(u32, u32) -> f64) -> Trace {
    let n = mesh.mesh.len();
    let mut received = vec![0u32; n];
    let mut sent = vec![0u32; n];
    let mut first = vec![f64::INFINITY; n];
    let mut hops = vec![0u32; n];
    let mut done = vec![false; n];
    // (time in µs, peer, from, hops)
    let mut queue: BinaryHeap<Reverse<(u64, u32, u32, u32)>> = BinaryHeap::new();
    first[author as usize] = 0.0;
    done[author as usize] = true;
    let a = author as usize;
    for &j in mesh.mesh[a].iter().chain(&mesh.others[a]) {
        sent[a] += 1;
        let t = (latency_ms(author, j) * 1000.0) as u64;
        queue.push(Reverse((t, j, author, 1)));
    }
    while let Some(Reverse((t, p, from, h))) = queue.pop() {
        let pi = p as usize;
        received[pi] += 1;
        if done[pi] {
            continue;
        }
        done[pi] = true;
        first[pi] = t as f64 / 1000.0;
        hops[pi] = h;
        for &j in &mesh.mesh[pi] {
            if j == from || j == author {
                continue;
            }
            sent[pi] += 1;
            let dt = (latency_ms(p, j) * 1000.0) as u64;
            queue.push(Reverse((t + dt, j, p, h + 1)));
        }
    }
    let (mut last_ms, mut max_hops) = (0.0f64, 0u32);
    for i in 0..n {
        if first[i].is_finite() {
            last_ms = last_ms.max(first[i]);
            max_hops = max_hops.max(hops[i]);
        }
    }
    Trace {
        received,
        sent,
        last_ms,
        max_hops,
    }
}

/// Per-peer gossip cost, bytes per minute.
#[derive(Debug, Clone)]
pub struct Cost {
    /// Advert bytes delivered to the application (each advert once).
    pub payload: f64,
    /// Bytes on the wire, sent plus received: every copy of every advert
    /// with its framing, and IHAVE control.
    pub wire: Vec<f64>,
    /// Slowest first arrival over the sampled messages, milliseconds.
    pub last_ms: f64,
    /// Most hops to a first arrival over the sampled messages.
    pub max_hops: u32,
}

/// The cost per peer of `adverts_per_min` adverts of `advert_bytes` each
/// (a signed advert), traced over `mesh` from sampled authors.
pub fn cost(
    mesh: &Mesh,
    adverts_per_min: f64,
    advert_bytes: usize,
    rng: &mut StdRng,
    latency_ms: impl Fn(u32, u32) -> f64,
) -> Cost {
    let n = mesh.mesh.len();
    let sources = SAMPLED_SOURCES.min(n);
    let mut copies = vec![0f64; n];
    let (mut last_ms, mut max_hops) = (0.0f64, 0u32);
    let authors = rand::seq::index::sample(rng, n, sources);
    for a in authors {
        let t = trace(mesh, a as u32, &latency_ms);
        for (c, (r, s)) in copies.iter_mut().zip(t.received.iter().zip(&t.sent)) {
            *c += f64::from(r + s);
        }
        last_ms = last_ms.max(t.last_ms);
        max_hops = max_hops.max(t.max_hops);
    }
    let per_copy = (advert_bytes + MESSAGE_OVERHEAD + FRAME_OVERHEAD) as f64;
    // IHAVE: ids of the last HISTORY_GOSSIP heartbeats, to GOSSIP_LAZY
    // peers each heartbeat; a peer receives as many as it sends on average.
    // A peer sends no IHAVE when its window holds no id: with adverts
    // arriving as a Poisson stream, that is e^-ids of the heartbeats.
    let ids = (adverts_per_min / 60.0 * HEARTBEAT_SECS * HISTORY_GOSSIP).min(MAX_IHAVE_LENGTH);
    let ihave = ids * MESSAGE_ID_BYTES as f64
        + (1.0 - (-ids).exp()) * (IHAVE_OVERHEAD + FRAME_OVERHEAD) as f64;
    let ihave_per_min = 2.0 * GOSSIP_LAZY as f64 * ihave * 60.0 / HEARTBEAT_SECS;
    let wire = copies
        .iter()
        .map(|c| c / sources as f64 * adverts_per_min * per_copy + ihave_per_min)
        .collect();
    Cost {
        payload: adverts_per_min * advert_bytes as f64,
        wire,
        last_ms,
        max_hops,
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_message_reaches_everyone_and_each_takes_about_d_copies() {
        let mut rng = StdRng::seed_from_u64(3);
        let mesh = Mesh::random(500, &mut rng);
        assert!(mesh.mesh.iter().all(|m| m.len() >= MESH_N_LOW));
        assert!(mesh.mesh.iter().all(|m| m.len() <= MESH_N_HIGH));
        let t = trace(&mesh, 0, |_, _| 50.0);
        assert!(t.received.iter().skip(1).all(|r| *r >= 1));
        let mean = t.received.iter().map(|r| f64::from(*r)).sum::<f64>() / 500.0;
        assert!((3.0..=10.0).contains(&mean), "{mean} copies");
        assert!(t.max_hops <= 8, "{} hops", t.max_hops);
    }
}
