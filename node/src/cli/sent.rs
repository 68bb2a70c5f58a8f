//! `vmail sent`, `vmail recall` and `vmail discard`: what happened to the
//! voicemail you left, withdrawing one before delivery, and declining one
//! left for you. Recall and discard end in a delete order that your peer
//! hands to the holders.

use anyhow::bail;
use serde::Serialize;
use tonic::Code;
use vmail_node::auth_client::Delivery;
use vmail_proto::control_pb as pb;

use super::node::PeerHandle;
use super::voicemail::parse_id;
use super::{Context, when};

/// `vmail sent --json`.
#[derive(Debug, Serialize)]
struct SentJson {
    username: String,
    /// Newest first.
    voicemails: Vec<SentVoicemail>,
}

#[derive(Debug, Serialize)]
struct SentVoicemail {
    id: String,
    /// Unix seconds.
    left_at: u64,
    size: u64,
    content_type: String,
    /// Unix seconds.
    expires_at: u64,
    recipients: Vec<SentRecipient>,
}

#[derive(Debug, Serialize)]
struct SentRecipient {
    username: String,
    /// "pending", "delivered", "expired_unread" or "recalled".
    state: &'static str,
    /// Unix seconds of the state's change; null while pending.
    since: Option<u64>,
}

fn state_name(d: Delivery) -> &'static str {
    match d {
        Delivery::Pending => "pending",
        Delivery::Delivered => "delivered",
        Delivery::ExpiredUnread => "expired_unread",
        Delivery::Recalled => "recalled",
    }
}

/// `vmail recall --json`.
#[derive(Debug, Serialize)]
struct RecallJson {
    id: String,
    shards_deleted: u32,
    /// Holders the delete order did not reach.
    holders_missed: u32,
}

/// `vmail discard --json`.
#[derive(Debug, Serialize)]
struct DiscardJson {
    id: String,
    /// You were its last recipient: the session key is erased.
    key_erased: bool,
    shards_deleted: u32,
    holders_missed: u32,
}

/// `vmail sent`: each voicemail left, newest first, with every recipient's
/// state.
pub(super) async fn sent(ctx: &Context) -> anyhow::Result<()> {
    let (mut client, session) = ctx.logged_in().await?;
    let list = client.list_sent().await?;
    if ctx.json {
        super::output::json(&SentJson {
            username: session.username.to_string(),
            voicemails: list
                .iter()
                .map(|v| SentVoicemail {
                    id: hex::encode(v.id),
                    left_at: v.deposited_at,
                    size: v.size,
                    content_type: v.content_type.clone(),
                    expires_at: v.expires_at,
                    recipients: v
                        .recipients
                        .iter()
                        .map(|(name, state, at)| SentRecipient {
                            username: name.clone(),
                            state: state_name(*state),
                            since: (*state != Delivery::Pending).then_some(*at),
                        })
                        .collect(),
                })
                .collect(),
        });
        return Ok(());
    }
    if list.is_empty() {
        outln!(
            "{} has left no voicemail that is still on record",
            session.username
        );
        return Ok(());
    }
    for v in &list {
        outln!(
            "{}  left {}  {} B {}  expires {}",
            hex::encode(v.id),
            when(v.deposited_at),
            v.size,
            v.content_type,
            when(v.expires_at)
        );
        for (name, state, at) in &v.recipients {
            let since = match state {
                Delivery::Pending => String::new(),
                _ => format!(" at {}", when(*at)),
            };
            outln!("    {name:<20} {state}{since}");
        }
    }
    let unread: usize = list
        .iter()
        .flat_map(|v| &v.recipients)
        .filter(|(_, s, _)| *s == Delivery::ExpiredUnread)
        .count();
    if unread > 0 {
        outln!("{unread} recipient(s) let a voicemail expire unread");
    }
    Ok(())
}

/// `vmail recall ID`: withdraws a voicemail you left that not every
/// recipient fetched, and deletes its shards.
pub(super) async fn recall(ctx: &Context, id: &str) -> anyhow::Result<()> {
    let id = parse_id(id)?;
    let mut peer = PeerHandle::open(ctx, None).await?;
    let result = peer.client.recall(id).await;
    peer.close().await;
    match result {
        Ok(done) if ctx.json => {
            super::output::json(&RecallJson {
                id: hex::encode(id),
                shards_deleted: done.shards_deleted,
                holders_missed: done.holders_missed,
            });
            Ok(())
        }
        Ok(done) => {
            outln!(
                "recalled {}: it left every inbox, its key is erased, and {} shard(s) were deleted from their holders{}",
                hex::encode(id),
                done.shards_deleted,
                missed(done.holders_missed)
            );
            Ok(())
        }
        Err(e) => bail!("cannot recall {}: {e}", hex::encode(id)),
    }
}

/// `vmail discard ID`: declines a voicemail left for you without fetching
/// it; it counts as your ack.
pub(super) async fn discard(ctx: &Context, id: &str) -> anyhow::Result<()> {
    let id = parse_id(id)?;
    let mut peer = PeerHandle::open(ctx, None).await?;
    let result = peer.client.ack(id).await;
    peer.close().await;
    let acked: pb::AckResponse = match result {
        Ok(a) => a,
        Err(e) if e.code() == Some(Code::NotFound) => bail!(
            "voicemail {} is not in your inbox (see `vmail inbox`)",
            hex::encode(id)
        ),
        Err(e) => return Err(e.into()),
    };
    if ctx.json {
        super::output::json(&DiscardJson {
            id: hex::encode(id),
            key_erased: acked.key_erased,
            shards_deleted: acked.shards_deleted,
            holders_missed: acked.holders_missed,
        });
        return Ok(());
    }
    outln!("discarded {}: it left your inbox", hex::encode(id));
    if acked.key_erased {
        outln!(
            "  you were its last recipient: the key is erased and {} shard(s) were deleted from their holders{}",
            acked.shards_deleted,
            missed(acked.holders_missed)
        );
    }
    Ok(())
}

/// The note on holders a delete order missed.
pub(super) fn missed(holders: u32) -> String {
    match holders {
        0 => String::new(),
        n => format!(
            " ({n} holder(s) unreachable: they learn of it from the others, or drop it at expiry)"
        ),
    }
}
