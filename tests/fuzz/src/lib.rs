//! Shared parts of the fuzz targets in `fuzz_targets/`: the genuine values
//! (made by the real encoders and signers, from fixed keys) that the seed
//! generator (`examples/seeds.rs`) writes into `corpus/<target>/` and that
//! the targets check against, and the one round-trip helper.
//!
//! The keys are fixed so that a target can tell a genuine signed encoding
//! from a forged one: whatever the fuzzer makes, a signature check under
//! these keys may pass only for bytes this module itself produced.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use libp2p::{Multiaddr, PeerId, identity::Keypair};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership,
    Vote,
    raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest},
};
use vmail_auth::cluster::{Command, Member, TypeConfig};
use vmail_node::core::crypto;
use vmail_node::core::erasure::Redundancy;
use vmail_node::core::locator::{LOCATOR_VERSION, Layout, Locator, ObjectId, ShardRef};
use vmail_node::overlay::objects::{ObjectMeta, ShardOf, Tombstone};
use vmail_node::overlay::transfer::{Reply, Request};
use vmail_node::supernode::advert::{ADVERT_VERSION, Advert, Reachability};
use vmail_node::supernode::attach::{Observation, Refusal, SnRequest, SnResponse};
use vmail_proto::cert::{CertificateBody, UserCertificate};
use vmail_proto::grant::{
    DeleteOrder, DeleteReason, DepositProof, GrantBody, GrantedShard, StorageGrant,
};
use vmail_proto::keys::SecretKey;
use vmail_proto::meta::VoicemailMeta;
use vmail_proto::names::{Recipients, Username};

/// The time every genuine advert and certificate is checked at.
pub const NOW: u64 = 1_800_000_000;

/// The auth group's cluster key: signs the genuine grants, delete orders,
/// deposit proofs and certificates.
pub fn cluster_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5a; 32])
}

/// The group key that co-signs the genuine grants, orders and proofs (a
/// FROST group signature is a plain Ed25519 one).
pub fn group_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5b; 32])
}

/// `bytes`, the encoding of a cluster-signed object, with the group's
/// signature over `signing_bytes` appended: the object co-signed.
pub fn co_signed(bytes: &[u8], signing_bytes: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer;
    [bytes, &group_key().sign(signing_bytes).to_bytes()].concat()
}

/// `bytes` co-signed as the second of a batch of three (the others two
/// made-up objects): the group's signature on the batch root, then the
/// object's inclusion proof.
pub fn batch_co_signed(bytes: &[u8], signing_bytes: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer;
    use vmail_proto::batch::{GroupSignature, MerkleTree, batch_message};
    let items: [&[u8]; 3] = [b"another object", signing_bytes, b"a third object"];
    let tree = MerkleTree::new(&items).expect("three items");
    let signed = GroupSignature {
        signature: group_key().sign(&batch_message(&tree.root(), 3)),
        proof: tree.proof(1).map(Box::new),
    };
    [bytes, &signed.to_bytes()].concat()
}

/// Whether `data` is `bytes` genuinely co-signed, alone or in a batch.
pub fn genuinely_co_signed(bytes: &[u8], signing_bytes: &[u8], data: &[u8]) -> bool {
    data == co_signed(bytes, signing_bytes) || data == batch_co_signed(bytes, signing_bytes)
}

/// The identity of the peer behind the genuine adverts.
pub fn peer_key() -> Keypair {
    Keypair::ed25519_from_bytes([0x33; 32]).expect("32 bytes are an ed25519 secret")
}

/// A second peer, for peer lists.
pub fn other_peer() -> PeerId {
    Keypair::ed25519_from_bytes([0x34; 32])
        .expect("32 bytes are an ed25519 secret")
        .public()
        .to_peer_id()
}

/// The key the genuine sealed values and ciphertexts are made under.
pub fn secret_key() -> SecretKey {
    SecretKey::from_bytes([0x42; 32])
}

/// The key the genuine wrapped keys wrap.
pub fn wrapped_key() -> SecretKey {
    SecretKey::from_bytes([0x24; 32])
}

/// The inbox key the genuine resealed share is sealed to.
pub fn inbox_key() -> vmail_proto::share::BoxSecret {
    vmail_proto::share::BoxSecret::from_bytes(&[0x77; 32]).expect("32 bytes are an X25519 secret")
}

/// The value of the genuine resealed share.
pub const SHARE_VALUE: [u8; 32] = [0x5e; 32];

/// The voicemail the genuine resealed share belongs to.
pub const SHARE_VOICEMAIL_ID: [u8; 16] = [0x76; 16];

/// Calls `f` with the reseal binding of the genuine share's voicemail and
/// recipient, for the given server and index.
pub fn reseal_binding<T>(
    node_id: u64,
    index: u8,
    f: impl FnOnce(&vmail_proto::share::ResealBinding<'_>) -> T,
) -> T {
    let bob = Username::parse("bob").expect("a valid name");
    f(&vmail_proto::share::ResealBinding {
        voicemail_id: &SHARE_VOICEMAIL_ID,
        recipient: &bob,
        node_id,
        index,
    })
}

/// A genuine `OpenShareResponse`: server 2's share 2 resealed to
/// [`inbox_key`].
pub fn open_share_response() -> vmail_proto::pb::OpenShareResponse {
    let value = vmail_proto::share::ShareValue::new(2, SHARE_VALUE);
    let r = reseal_binding(2, 2, |b| {
        vmail_proto::share::reseal(&value, &inbox_key().public(), b).expect("a valid key")
    });
    vmail_proto::pb::OpenShareResponse {
        node_id: 2,
        index: 2,
        enc: r.enc.to_vec(),
        ciphertext: r.ciphertext,
    }
}

/// What the genuine sealed values seal.
pub const SEALED_PLAINTEXT: &[u8] = b"a voicemail's session key, or a password file";

/// The AAD of the genuine sealed values.
pub const SEALED_AAD: &[u8] = b"vmail/v1/fuzz-seed";

/// The message id of the genuine ciphertexts.
pub const MESSAGE_ID: [u8; 16] = [0x6d; 16];

/// The plaintexts of the genuine ciphertexts.
pub fn plaintexts() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        b"hello".to_vec(),
        (0..600u32).map(|i| (i % 251) as u8).collect(),
    ]
}

/// The genuine ciphertexts of [`plaintexts`], under [`secret_key`].
pub fn ciphertexts() -> Vec<Vec<u8>> {
    plaintexts()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            crypto::encrypt_with_prefix(&secret_key(), MESSAGE_ID, [i as u8; 7], p, &mut |_| {})
        })
        .collect()
}

fn shard_ref(i: u8) -> ShardRef {
    ShardRef {
        id: [i; 32],
        sha256: [i.wrapping_add(100); 32],
    }
}

/// Genuine layouts: Reed-Solomon and whole copies.
pub fn layouts() -> Vec<Layout> {
    vec![
        Layout {
            redundancy: Redundancy::ReedSolomon { k: 2, n: 3 },
            ciphertext_len: 100,
            shards: (1..=3).map(shard_ref).collect(),
        },
        Layout {
            redundancy: Redundancy::Replicas(2),
            ciphertext_len: 64,
            shards: (1..=2)
                .map(|i| ShardRef {
                    id: [i; 32],
                    sha256: [0x99; 32],
                })
                .collect(),
        },
    ]
}

/// Genuine locators of [`layouts`]: the first with a holder hint per
/// shard (the peer id of [`peer_key`]), the others without.
pub fn locators() -> Vec<Locator> {
    let hint = peer_key().public().to_peer_id().to_bytes();
    layouts()
        .into_iter()
        .enumerate()
        .map(|(i, layout)| Locator {
            version: LOCATOR_VERSION,
            message_id: MESSAGE_ID,
            ciphertext_sha256: [0x99; 32],
            holders: match i {
                0 => vec![hint.clone(); layout.shards.len()],
                _ => Vec::new(),
            },
            layout,
        })
        .collect()
}

/// A genuine storage grant.
pub fn grant() -> StorageGrant {
    GrantBody {
        serial: 7,
        message_id: MESSAGE_ID,
        data_shards: 2,
        shards: (1..=3)
            .map(|i| GrantedShard {
                len: 50,
                sha256: [i + 100; 32],
            })
            .collect(),
        holders: vec![peer_key().public().to_peer_id().to_bytes()],
        upload_until: NOW + 600,
        expires_at: NOW + 86_400,
    }
    .sign(&cluster_key())
}

/// Genuine delete orders, one per reason.
pub fn delete_orders() -> Vec<DeleteOrder> {
    [
        DeleteReason::Delivered,
        DeleteReason::Recalled,
        DeleteReason::Expired,
        DeleteReason::Unused,
    ]
    .into_iter()
    .map(|r| DeleteOrder::sign(7, r, NOW + 86_400, &cluster_key()))
    .collect()
}

/// A genuine deposit proof.
pub fn deposit_proof() -> DepositProof {
    DepositProof::sign(7, &cluster_key())
}

/// Genuine object metas: a legacy whole object, a shard with its grant,
/// and one with its deposit proof too. Each one's body is `len` bytes.
pub fn object_metas() -> Vec<(ObjectId, ObjectMeta)> {
    let layout = layouts().remove(0);
    let shard = ShardOf {
        index: 1,
        layout: layout.clone(),
    };
    let sharded = ObjectMeta {
        len: layout.shard_len(),
        sha256: layout.shards[1].sha256,
        expires_at: NOW + 86_400,
        delete_hash: [0x44; 32],
        shard: Some(shard),
        grant: grant().to_bytes(),
        proof: Vec::new(),
    };
    vec![
        (
            [0x10; 32],
            ObjectMeta {
                len: 16,
                sha256: [0x55; 32],
                expires_at: NOW + 3600,
                delete_hash: [0x44; 32],
                shard: None,
                grant: Vec::new(),
                proof: Vec::new(),
            },
        ),
        (layout.shards[1].id, sharded.clone()),
        (
            layout.shards[1].id,
            ObjectMeta {
                proof: deposit_proof().to_bytes(),
                ..sharded
            },
        ),
    ]
}

/// A genuine tombstone.
pub fn tombstone() -> Tombstone {
    Tombstone {
        order: delete_orders()[0].to_bytes(),
        ids: vec![[1; 32], [2; 32]],
    }
}

/// Every blob protocol request, genuine.
pub fn requests() -> Vec<Request> {
    let (id, meta) = object_metas().remove(1);
    vec![
        Request::Store {
            id,
            meta: meta.clone(),
        },
        Request::Fetch { id },
        Request::Has { id },
        Request::Relayout {
            id,
            secret: [0x45; 32],
            shard: meta.shard.clone().expect("a shard"),
        },
        Request::Delete {
            id,
            secret: [0x45; 32],
        },
        Request::Erase {
            order: delete_orders()[1].to_bytes(),
        },
        Request::Prove {
            proof: deposit_proof().to_bytes(),
        },
    ]
}

/// Every blob protocol reply, genuine.
pub fn replies() -> Vec<Reply> {
    vec![
        Reply::Ready,
        Reply::Stored,
        Reply::Found { len: 50 },
        Reply::Held {
            len: 50,
            sha256: [0x66; 32],
        },
        Reply::Deleted,
        Reply::Erased { objects: 2 },
        Reply::Proven { objects: 3 },
        Reply::Gone {
            order: delete_orders()[2].to_bytes(),
        },
        Reply::NoRoom("the quota of 1 GiB is full".into()),
        Reply::Refused("no grant".into()),
        Reply::Busy {
            retry_after_ms: 200,
        },
    ]
}

/// Genuine adverts of [`peer_key`], fresh at [`NOW`].
pub fn adverts() -> Vec<Advert> {
    let peer_id = peer_key().public().to_peer_id();
    let base = Advert {
        version: ADVERT_VERSION,
        peer_id,
        seq: 3,
        issued_at: NOW - 10,
        reachability: Reachability::Private,
        cpu_cores: 4,
        memory_mib: 8192,
        bandwidth_kbps: 100_000,
        uptime_secs: 3600,
        load: 0,
        free_storage: 1 << 30,
        serving: false,
    };
    vec![
        base.clone(),
        Advert {
            seq: 4,
            issued_at: NOW,
            reachability: Reachability::Configured,
            load: 12,
            serving: true,
            ..base
        },
    ]
}

/// Genuine signed adverts: [`adverts`] signed by [`peer_key`].
pub fn signed_adverts() -> Vec<Vec<u8>> {
    adverts().iter().map(|a| a.sign(&peer_key())).collect()
}

/// Every supernode request, genuine.
pub fn sn_requests() -> Vec<SnRequest> {
    vec![
        SnRequest::Attach,
        SnRequest::Heartbeat {
            reports: vec![Observation {
                peer: other_peer(),
                ok: 3,
                failed: 1,
            }],
            advert: None,
        },
        SnRequest::Heartbeat {
            reports: Vec::new(),
            advert: signed_adverts().pop(),
        },
        SnRequest::Recommend {
            count: 8,
            exclude: vec![other_peer()],
        },
    ]
}

/// Every supernode response, genuine.
pub fn sn_responses() -> Vec<SnResponse> {
    let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().expect("an address");
    vec![
        SnResponse::Attached {
            load: 2,
            peers: vec![(other_peer(), vec![addr])],
        },
        SnResponse::Alive { load: 2 },
        SnResponse::Recommended(vec![other_peer()]),
        SnResponse::Refused(Refusal::Full),
    ]
}

/// A genuine user certificate, valid at [`NOW`].
pub fn certificate() -> UserCertificate {
    CertificateBody {
        serial: 11,
        username: Username::parse("alice").expect("a username"),
        identity_key: SigningKey::from_bytes(&[0x11; 32]).verifying_key(),
        peer_id: peer_key().public().to_peer_id().to_bytes(),
        not_before: NOW - 100,
        not_after: NOW + 86_400,
    }
    .sign(&cluster_key())
}

/// Genuine recipient lists, as a client sends them.
pub fn recipient_lists() -> Vec<Vec<String>> {
    vec![
        vec!["bob".into()],
        vec!["carol".into(), "bob".into(), "dave_2".into()],
    ]
}

/// A genuine deposit request, as a client sends it.
pub fn deposit_request() -> vmail_proto::pb::DepositRequest {
    let names = recipient_lists().remove(1);
    let recipients = Recipients::parse(&names).expect("valid recipients");
    let locator = locators().remove(0).encode();
    let servers: Vec<vmail_proto::share::ShareKey> = published_share_keys()
        .into_iter()
        .map(|((node_id, epoch), k)| vmail_proto::share::ShareKey {
            node_id,
            epoch,
            public: k.public,
        })
        .collect();
    let (threshold, key_check, shares) =
        vmail_proto::share::split(&wrapped_key(), &servers, 7, &recipients, &locator)
            .expect("a valid split");
    vmail_proto::pb::DepositRequest {
        request_id: vec![0x72; 16],
        recipients: names,
        locator,
        metadata: Some(
            VoicemailMeta {
                size: 600,
                content_type: "audio/wav".into(),
                duration_ms: 1500,
                expires_at: 0,
            }
            .into(),
        ),
        grant_serial: 7,
        shares: shares.into_iter().map(Into::into).collect(),
        threshold: u32::from(threshold),
        key_check: key_check.to_vec(),
    }
}

/// The share keys of the fixed 3-server group the genuine deposit is split
/// among: nodes 1 to 3, epoch 1, each with [`inbox_key`]'s public key.
pub fn published_share_keys() -> BTreeMap<(u64, u32), vmail_auth::store::PublishedKey> {
    (1..=3)
        .map(|node_id| {
            (
                (node_id, 1),
                vmail_auth::store::PublishedKey {
                    public: inbox_key().public(),
                    published_at: NOW,
                },
            )
        })
        .collect()
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Genuine Raft commands.
pub fn commands() -> Vec<Command> {
    let register = Command::Register {
        username: "alice".into(),
        invite_hash: Some("c0ffee".into()),
        password_file: vec![0x50; 48],
        credential_nonce: [0x4e; 16],
        identity_key: [0x11; 32],
        account_key: [0x12; 32],
        now: NOW,
        cert_ttl: 86_400,
    };
    vec![
        register.clone(),
        Command::BeginSession {
            username: "alice".into(),
            token_hash: [0x74; 32],
            master_key: vec![0x6d; 60],
            master_key_id: [0x6b; 16],
            identity_key: [0x11; 32],
            peer_id: vec![0x70; 38],
            inbox_key: [0x69; 32],
            login_id: [0x6c; 16],
            account_proof: vec![0x61; 64],
            now: NOW,
            session_ttl: 3600,
            cert_ttl: 86_400,
        },
        Command::EndSession {
            token_hash: [0x74; 32],
        },
        Command::Ack {
            recipient: "bob".into(),
            id: [0x76; 16],
            now: NOW,
        },
        Command::Purge { now: NOW },
        Command::Batch(vec![register, Command::Purge { now: NOW + 1 }]),
        Command::SetRetention {
            username: "bob".into(),
            retention_secs: 7200,
        },
        Command::Recall {
            sender: "alice".into(),
            id: [0x76; 16],
            now: NOW,
        },
        Command::DkgBegin {
            roster: vec![1, 2, 3],
            now: NOW,
        },
        Command::Dkg {
            node_id: 2,
            step: vmail_auth::store::DkgStep::Done {
                ceremony: 1,
                group_key: [0x67; 32],
                public_digest: [0x64; 32],
            },
        },
        Command::DkgRefresh {
            roster: vec![1, 3],
            now: NOW,
        },
        Command::DkgRepair {
            joining: 4,
            helpers: vec![1, 3],
            now: NOW,
        },
        Command::RegisterMember {
            node_id: 4,
            member_key: member_key().verifying_key().to_bytes(),
        },
        Command::PublishVouchedShareKey {
            node_id: 4,
            epoch: 2,
            public_key: [0x58; 32],
            vouch: vmail_auth::store::Vouch {
                member_key: member_key().verifying_key().to_bytes(),
                signature: ed25519_dalek::Signer::sign(
                    &member_key(),
                    &vmail_auth::store::publication_bytes(4, 2, &[0x58; 32]),
                )
                .to_bytes()
                .to_vec(),
            },
            now: NOW,
        },
        Command::ApproveJoin {
            approver: 1,
            joining: 4,
            signature: ed25519_dalek::Signer::sign(
                &SigningKey::from_bytes(&[0x61; 32]),
                &vmail_auth::store::approval_bytes(4, &member_key().verifying_key().to_bytes()),
            )
            .to_bytes()
            .to_vec(),
        },
        {
            let step = vmail_auth::store::DkgStep::Done {
                ceremony: 2,
                group_key: [0x67; 32],
                public_digest: [0x64; 32],
            };
            let signature = ed25519_dalek::Signer::sign(
                &member_key(),
                &vmail_auth::store::step_bytes(4, &step.encode()),
            )
            .to_bytes()
            .to_vec();
            Command::VouchedDkg {
                node_id: 4,
                step,
                signature,
            }
        },
    ]
}

/// A fixed member key (docs/PROTOCOL.md §7.14).
fn member_key() -> SigningKey {
    SigningKey::from_bytes(&[0x6d; 32])
}

fn member(name: &str) -> Member {
    Member {
        name: name.into(),
        ..Member::default()
    }
}

/// Genuine Raft messages of each kind the cluster service decodes, in the
/// wire encoding (`vmail_auth::cluster::network::encode`).
pub fn raft_messages() -> Vec<RaftMessage> {
    let vote = Vote::new_committed(2, 1);
    let entries: Vec<Entry<TypeConfig>> = commands()
        .into_iter()
        .enumerate()
        .map(|(i, c)| Entry {
            log_id: log_id(2, i as u64 + 5),
            payload: EntryPayload::Normal(c),
        })
        .chain([Entry {
            log_id: log_id(2, 4),
            payload: EntryPayload::Blank,
        }])
        .collect();
    let nodes = BTreeMap::from([(1, member("auth-1")), (2, member("auth-2"))]);
    let membership = Membership::new(vec![nodes.keys().copied().collect()], nodes);
    vec![
        RaftMessage::Append(AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(2, 3)),
            entries,
            leader_commit: Some(log_id(2, 3)),
        }),
        RaftMessage::Vote(VoteRequest {
            vote: Vote::new(3, 2),
            last_log_id: Some(log_id(2, 9)),
        }),
        RaftMessage::Snapshot(InstallSnapshotRequest {
            vote,
            meta: SnapshotMeta {
                last_log_id: Some(log_id(2, 9)),
                last_membership: StoredMembership::new(Some(log_id(1, 1)), membership),
                snapshot_id: "2-1-9-1".into(),
            },
            offset: 0,
            data: vec![0; 32],
            done: true,
        }),
    ]
}

/// One Raft message; the fuzz target's first byte picks the kind.
#[derive(Debug)]
pub enum RaftMessage {
    /// Kind 0.
    Append(AppendEntriesRequest<TypeConfig>),
    /// Kind 1.
    Vote(VoteRequest<u64>),
    /// Kind 2.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// Asserts that decoding is a projection: the encoding of what `decode`
/// read decodes again to a value with the same encoding. Returns the value.
pub fn assert_reencodes<T>(
    value: T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Option<T>,
) -> T {
    let once = encode(&value);
    let again = decode(&once).expect("the encoding of a decoded value decodes");
    assert_eq!(encode(&again), once, "decode then encode is not stable");
    again
}

/// What a softphone sends the SIP front (RFC 3261 requests as sipp and
/// baresip send them): a REGISTER, a SUBSCRIBE to message-summary, an
/// INVITE with its SDP offer, and one with an Authorization answer.
pub fn sip_requests() -> Vec<Vec<u8>> {
    let head = |line: &str, cseq: &str| {
        format!(
            "{line} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-fuzz-1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: fuzz-1@127.0.0.1\r\nCSeq: {cseq}\r\nContact: <sip:alice@127.0.0.1:5062;transport=udp>\r\n"
        )
    };
    let offer = sdp_offers().remove(0);
    vec![
        format!("{}Expires: 600\r\nContent-Length: 0\r\n\r\n", head("REGISTER sip:127.0.0.1", "1 REGISTER")),
        format!(
            "{}Event: message-summary\r\nAccept: application/simple-message-summary\r\nExpires: 300\r\nContent-Length: 0\r\n\r\n",
            head("SUBSCRIBE sip:alice@127.0.0.1", "1 SUBSCRIBE")
        ),
        format!(
            "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
            head("INVITE sip:voicemail@127.0.0.1", "1 INVITE"),
            offer.len()
        ),
        format!(
            "{}Authorization: Digest username=\"alice\", realm=\"vmail\", nonce=\"00000000000000010123456789abcdef0123456789abcdef\", uri=\"sip:127.0.0.1\", response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\"\r\nContent-Length: 0\r\n\r\n",
            head("REGISTER sip:127.0.0.1", "2 REGISTER")
        ),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// SDP offers as softphones make them: PCMU, PCMA and telephone events,
/// and one with only G.729.
pub fn sdp_offers() -> Vec<String> {
    let offer = |formats: &str, maps: &str| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP {formats}\r\n{maps}a=sendrecv\r\n"
        )
    };
    vec![
        offer(
            "0 8 101",
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n",
        ),
        offer("8", "a=rtpmap:8 PCMA/8000\r\n"),
        offer("18", "a=rtpmap:18 G729/8000\r\n"),
    ]
}
