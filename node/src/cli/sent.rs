//! `vmail sent`, `vmail recall` and `vmail discard`: what happened to the
//! voicemail you left, withdrawing one before delivery, and declining one
//! left for you. Recall and discard end in a delete order that your peer
//! hands to the holders.

use anyhow::bail;
use tonic::Code;
use vmail_node::auth_client::Delivery;
use vmail_proto::control_pb as pb;

use super::node::PeerHandle;
use super::voicemail::parse_id;
use super::{Context, when};

/// `vmail sent`: each voicemail left, newest first, with every recipient's
/// state.
pub(super) async fn sent(ctx: &Context) -> anyhow::Result<()> {
    let (mut client, session) = ctx.logged_in().await?;
    let list = client.list_sent().await?;
    if list.is_empty() {
        println!(
            "{} has left no voicemail that is still on record",
            session.username
        );
        return Ok(());
    }
    for v in &list {
        println!(
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
            println!("    {name:<20} {state}{since}");
        }
    }
    let unread: usize = list
        .iter()
        .flat_map(|v| &v.recipients)
        .filter(|(_, s, _)| *s == Delivery::ExpiredUnread)
        .count();
    if unread > 0 {
        println!("{unread} recipient(s) let a voicemail expire unread");
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
        Ok(done) => {
            println!(
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
    println!("discarded {}: it left your inbox", hex::encode(id));
    if acked.key_erased {
        println!(
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
