//! The Raft messages a member decodes from another (`cluster::network::decode`):
//! append-entries (carrying the `Command`s), vote and install-snapshot, by
//! the first byte; and a bare `Command`. Whatever decodes re-encodes
//! stably and to an equal value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use vmail_auth::cluster::network::{decode, encode};
use vmail_auth::cluster::{Command, TypeConfig};
use vmail_fuzz::assert_reencodes;

fn check<T: serde::Serialize + serde::de::DeserializeOwned>(bytes: &[u8]) {
    if let Ok(v) = decode::<T>(bytes) {
        assert_reencodes(v, |v| encode(v), |b| decode::<T>(b).ok());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => check::<AppendEntriesRequest<TypeConfig>>(rest),
        1 => check::<VoteRequest<u64>>(rest),
        2 => check::<InstallSnapshotRequest<TypeConfig>>(rest),
        _ => {
            if let Ok(c) = decode::<Command>(rest) {
                assert_eq!(decode::<Command>(&encode(&c)).as_ref(), Ok(&c));
            }
        }
    }
});
