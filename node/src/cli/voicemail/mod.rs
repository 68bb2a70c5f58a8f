//! `vmail leave` and `vmail fetch`: the CLI side of sending and receiving.
//! The work happens in a peer (see `node.rs`); this reads and writes the
//! user's files and draws progress bars.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use libp2p::PeerId;
use sha2::{Digest, Sha256};
use tonic::Code;
use vmail_node::auth_client::SenderVisibility;
use vmail_node::config::NodeConfig;
use vmail_node::core::erasure::Redundancy;
use vmail_node::core::wav;
use vmail_proto::control_pb as pb;
use vmail_proto::names::Username;

use super::node::PeerHandle;
use super::{Context, when};

mod bars;
mod json;

use bars::Bars;
use json::*;

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// A holder's id as every command prints it: whole, base58.
fn peer_name(bytes: &[u8]) -> String {
    PeerId::from_bytes(bytes).map_or_else(|_| "?".into(), |p| p.to_string())
}

/// The recipients of `--to`, checked before anything is stored: each a
/// valid username, each once in the order given. Also returns the names
/// that were given more than once.
fn recipients(to: &[String]) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut once: Vec<String> = Vec::with_capacity(to.len());
    let mut repeated: Vec<String> = Vec::new();
    for name in to {
        let name = Username::parse(name.trim())
            .with_context(|| format!("--to {name:?} is not a username; nothing was sent"))?
            .to_string();
        if once.contains(&name) {
            if !repeated.contains(&name) {
                repeated.push(name);
            }
        } else {
            once.push(name);
        }
    }
    Ok((once, repeated))
}

pub(super) async fn leave(
    ctx: &Context,
    to: &[String],
    file: &Path,
    redundancy: Option<Redundancy>,
    sender: SenderVisibility,
) -> anyhow::Result<()> {
    // Every check that needs no network happens before anything is stored.
    let (to, repeated) = recipients(to)?;
    let max = NodeConfig::load(&ctx.data_dir(None), None)?.max_voicemail_bytes;
    let meta =
        std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", file.display());
    }
    if meta.len() == 0 {
        bail!("{} is empty; nothing was sent", file.display());
    }
    if meta.len() > max {
        bail!(
            "{} is {} bytes; the limit is {max} bytes (max_voicemail_bytes in node.toml). Nothing was sent",
            file.display(),
            meta.len()
        );
    }
    if !repeated.is_empty() && !ctx.json {
        let _ = writeln!(
            std::io::stderr(),
            "note: {} named more than once in --to; each recipient gets it once",
            repeated.join(", ")
        );
    }
    let content = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (content_type, duration_ms) = match wav::inspect(&content) {
        Some(info) => ("audio/wav", info.duration_ms),
        None => ("application/octet-stream", 0),
    };
    let size = content.len();
    let mut peer = PeerHandle::open(ctx, redundancy.map(Redundancy::n)).await?;
    let mut bars = Bars::new(ctx);
    let result = peer
        .client
        .leave(
            pb::LeaveRequest {
                recipients: to.clone(),
                content,
                content_type: content_type.into(),
                duration_ms,
                replicas: match redundancy {
                    Some(Redundancy::Replicas(r)) => r.into(),
                    _ => 0,
                },
                erasure: match redundancy {
                    Some(Redundancy::ReedSolomon { k, n }) => format!("{k}/{n}"),
                    _ => String::new(),
                },
                anonymous: sender == SenderVisibility::Hidden,
            },
            |p| bars.update(p),
        )
        .await;
    bars.finish();
    peer.close().await;
    let done = result?;
    if ctx.json {
        let t = done.timings.unwrap_or_default();
        super::output::json(&LeaveJson {
            id: hex::encode(&done.voicemail_id),
            anonymous: sender == SenderVisibility::Hidden,
            recipients: done
                .recipients
                .iter()
                .map(|r| LeaveRecipient {
                    username: r.clone(),
                    first_contact: done.first_contact.contains(r),
                })
                .collect(),
            refused: done.refused.clone(),
            repeated,
            size: size as u64,
            content_type: content_type.to_owned(),
            duration_ms,
            ciphertext_size: done.ciphertext_size,
            redundancy: done.redundancy.clone(),
            shard_size: done.shard_size,
            shards: done
                .copies
                .iter()
                .map(|c| LeaveShard {
                    index: c.index,
                    identifier: hex::encode(&c.identifier),
                    holder: peer_name(&c.holder),
                })
                .collect(),
            failures: done.failures.clone(),
            timings_us: LeaveTimings {
                dht: t.dht_us,
                crypto: t.crypto_us,
                grant: t.grant_us,
                transfer: t.transfer_us,
                deposit: t.auth_us,
            },
        });
        return Ok(());
    }
    outln!(
        "left voicemail {}{} for {} ({size} bytes, {content_type}{})",
        hex::encode(&done.voicemail_id),
        if sender == SenderVisibility::Hidden {
            " anonymously"
        } else {
            ""
        },
        recipients_line(&done.recipients, &done.first_contact),
        if duration_ms > 0 {
            format!(", {:.1} s", duration_ms as f64 / 1000.0)
        } else {
            String::new()
        }
    );
    outln!(
        "  one ciphertext of {} bytes as {}: {} shards of {} bytes:",
        done.ciphertext_size,
        done.redundancy,
        done.copies.len(),
        done.shard_size
    );
    for line in refusal_lines(&done.refused) {
        outln!("{line}");
    }
    if !done.first_contact.is_empty() {
        outln!(
            "  a first contact reaches its recipient flagged as an unknown caller, and expires sooner"
        );
    }
    for c in &done.copies {
        outln!(
            "  - shard {} id {} at {}",
            c.index,
            hex::encode(&c.identifier),
            peer_name(&c.holder)
        );
    }
    for f in &done.failures {
        outln!("  (note: {f})");
    }
    if let Some(t) = done.timings {
        outln!(
            "  time: dht {}, crypto {}, grant {}, transfer {}, deposit {}",
            ms(t.dht_us),
            ms(t.crypto_us),
            ms(t.grant_us),
            ms(t.transfer_us),
            ms(t.auth_us)
        );
    }
    Ok(())
}

/// The recipients a leave reached, first contacts marked.
fn recipients_line(recipients: &[String], first_contact: &[String]) -> String {
    recipients
        .iter()
        .map(|r| {
            if first_contact.contains(r) {
                format!("{r} (first contact)")
            } else {
                r.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The recipients a leave did not reach ("USER: why" each), one line each.
fn refusal_lines(refused: &[String]) -> Vec<String> {
    refused
        .iter()
        .map(|r| format!("  not left for {r}"))
        .collect()
}

/// The steps `vmail fetch` suggests after a first contact: add the sender
/// to your contacts (unless hidden), or report it.
fn first_contact_steps(id: &str, sender: Option<&str>) -> Vec<String> {
    let mut out = vec!["  a first contact from an unknown caller. Next:".to_owned()];
    if let Some(s) = sender {
        out.push(format!(
            "    vmail contacts add {s}    to take their voicemail from now on"
        ));
    }
    out.push(format!(
        "    vmail report {id}    if it is spam: blocks the sender"
    ));
    out
}

pub(super) fn parse_id(s: &str) -> anyhow::Result<[u8; 16]> {
    hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| {
            format!("{s:?} is not a voicemail id (32 hex digits, as `vmail inbox` shows)")
        })
}

/// Writes `content` to a new file in `dir`, durably; never overwrites.
fn save(dir: &Path, id: &[u8], content_type: &str, content: &[u8]) -> anyhow::Result<PathBuf> {
    let ext = if content_type == "audio/wav" || wav::looks_like_wav(content) {
        "wav"
    } else {
        "bin"
    };
    let path = dir.join(format!("{}.{ext}", hex::encode(id)));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| {
            format!(
                "cannot create {} (it is not overwritten; move it away and fetch again)",
                path.display()
            )
        })?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .with_context(|| {
            let _ = std::fs::remove_file(&path);
            format!(
                "cannot write {}; the voicemail stays in your inbox",
                path.display()
            )
        })?;
    Ok(path)
}

/// `vmail fetch ID|--all [--out DIR]`.
pub(super) async fn fetch(
    ctx: &Context,
    id: Option<String>,
    all: bool,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let out = out.unwrap_or_else(|| PathBuf::from("."));
    if !out.is_dir() {
        bail!("--out {} is not a directory", out.display());
    }
    let wanted = match (id, all) {
        (Some(id), false) => Some(parse_id(&id)?),
        (None, true) => None,
        _ => bail!("name one voicemail id, or pass --all"),
    };
    let mut peer = PeerHandle::open(ctx, None).await?;
    let result = fetch_with(ctx, &mut peer, wanted, &out).await;
    peer.close().await;
    result
}

/// An error of one fetch, as said: its own message when that names the
/// voicemail already, else prefixed with the id.
fn fetch_error(id: &str, e: &vmail_node::control::ControlError) -> String {
    if e.code() == Some(Code::NotFound) {
        return format!(
            "no voicemail {id} is in your inbox (it was never left for you, or was fetched or discarded already): run `vmail inbox` to list what is"
        );
    }
    let text = e.to_string();
    if text.contains(id) {
        text
    } else {
        format!("voicemail {id}: {text}")
    }
}

async fn fetch_with(
    ctx: &Context,
    peer: &mut PeerHandle,
    wanted: Option<[u8; 16]>,
    out: &Path,
) -> anyhow::Result<()> {
    let ids: Vec<[u8; 16]> = match wanted {
        Some(id) => vec![id],
        None => peer
            .client
            .inbox()
            .await?
            .iter()
            .filter_map(|e| e.voicemail_id.as_slice().try_into().ok())
            .collect(),
    };
    let mut doc = FetchJson {
        fetched: Vec::new(),
        failed: Vec::new(),
    };
    if ids.is_empty() {
        if ctx.json {
            super::output::json(&doc);
        } else {
            outln!("no voicemail waiting");
        }
        return Ok(());
    }
    for id in ids {
        let hex_id = hex::encode(id);
        let mut bars = Bars::new(ctx);
        let got = peer.client.fetch(id, |p| bars.update(p)).await;
        bars.finish();
        let (content, done) = match got {
            Ok(x) => x,
            // One named voicemail: its error is the command's.
            Err(e) if wanted.is_some() => bail!("{}", fetch_error(&hex_id, &e)),
            Err(e) => {
                let error = fetch_error(&hex_id, &e);
                if !ctx.json {
                    let _ = writeln!(std::io::stderr(), "{error}");
                }
                doc.failed.push(FetchFailedJson { id: hex_id, error });
                continue;
            }
        };
        let entry = done.voicemail.clone().unwrap_or_default();
        // A save or ack that fails ends the command; under --json what was
        // already fetched (and acked) is still reported on stdout first.
        let report = |doc: &FetchJson| {
            if ctx.json {
                super::output::json(doc);
            }
        };
        let path = save(out, &id, &entry.content_type, &content).inspect_err(|_| report(&doc))?;
        let acked = peer.client.ack(id).await.inspect_err(|_| report(&doc))?;
        let holders: Vec<FetchHolder> = done
            .holders
            .iter()
            .map(|h| FetchHolder {
                index: h.index,
                holder: peer_name(&h.holder),
            })
            .collect();
        if ctx.json {
            let t = done.timings.unwrap_or_default();
            doc.fetched.push(FetchedJson {
                id: hex_id,
                sender: (!entry.anonymous).then(|| entry.sender.clone()),
                anonymous: entry.anonymous,
                first_contact: entry.first_contact,
                left_at: entry.deposited_at,
                content_type: entry.content_type.clone(),
                duration_ms: entry.duration_ms,
                size: content.len() as u64,
                path: path.display().to_string(),
                sha256: hex::encode(Sha256::digest(&content)),
                redundancy: done.redundancy.clone(),
                holders,
                skipped: done.failures.clone(),
                timings_us: FetchTimings {
                    auth: t.auth_us,
                    dht: t.dht_us,
                    transfer: t.transfer_us,
                    crypto: t.crypto_us,
                },
                key_erased: acked.key_erased,
                shards_deleted: acked.shards_deleted,
                holders_missed: acked.holders_missed,
            });
            continue;
        }
        outln!(
            "fetched {hex_id} from {}{} (left {}), {} bytes -> {}",
            super::inbox::sender_name(&entry),
            if entry.first_contact {
                " (unknown caller)"
            } else {
                ""
            },
            when(entry.deposited_at),
            content.len(),
            path.display()
        );
        let holders: Vec<String> = holders
            .iter()
            .map(|h| format!("shard {} from {}", h.index, h.holder))
            .collect();
        outln!("  {}: {}", done.redundancy, holders.join(", "));
        for f in &done.failures {
            outln!("  (skipped: {f})");
        }
        if let Some(t) = done.timings {
            outln!(
                "  time: auth {}, dht {}, transfer {}, crypto {}",
                ms(t.auth_us),
                ms(t.dht_us),
                ms(t.transfer_us),
                ms(t.crypto_us)
            );
        }
        if entry.first_contact {
            let sender = (!entry.anonymous).then_some(entry.sender.as_str());
            for line in first_contact_steps(&hex_id, sender) {
                outln!("{line}");
            }
        }
        if acked.key_erased {
            outln!(
                "  every recipient has it now: the session key is erased at the auth server, and {} shard(s) were deleted from their holders{}",
                acked.shards_deleted,
                super::sent::missed(acked.holders_missed)
            );
        }
    }
    if ctx.json {
        super::output::json(&doc);
    }
    if !doc.failed.is_empty() {
        bail!(
            "{} voicemail(s) could not be fetched and stay in your inbox (see above; `vmail inbox` lists them)",
            doc.failed.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_output_marks_first_contacts_and_refusals() {
        let line = recipients_line(&["alice".into(), "bob".into()], &["bob".into()]);
        assert_eq!(line, "alice, bob (first contact)");
        assert_eq!(
            refusal_lines(&["carol: does not accept anonymous voicemail".into()]),
            ["  not left for carol: does not accept anonymous voicemail"]
        );
    }

    #[test]
    fn a_first_contact_suggests_adding_or_reporting() {
        let steps = first_contact_steps("ab12", Some("mallory")).join("\n");
        assert!(steps.contains("vmail contacts add mallory"), "{steps}");
        assert!(steps.contains("vmail report ab12"), "{steps}");
        let steps = first_contact_steps("ab12", None).join("\n");
        assert!(!steps.contains("contacts add"), "{steps}");
        assert!(steps.contains("vmail report ab12"), "{steps}");
    }

    #[test]
    fn repeated_recipients_are_merged_and_named_once() {
        let to: Vec<String> = ["alice", "bob", "alice", "alice"]
            .map(String::from)
            .to_vec();
        let (once, repeated) = recipients(&to).unwrap();
        assert_eq!(once, ["alice", "bob"]);
        assert_eq!(repeated, ["alice"]);
        let err = recipients(&["Bad Name".into()]).unwrap_err();
        assert!(
            format!("{err:#}").contains("\"Bad Name\" is not a username"),
            "{err:#}"
        );
    }

    #[test]
    fn a_fetch_error_names_the_voicemail_once() {
        use vmail_node::control::ControlError;
        let id = "ab".repeat(16);
        let gone = ControlError::Call(tonic::Status::not_found(format!(
            "no voicemail {id} is waiting for you"
        )));
        let text = fetch_error(&id, &gone);
        assert_eq!(text.matches(&id).count(), 1, "{text}");
        assert!(text.contains("run `vmail inbox`"), "{text}");
        assert!(!text.contains("stays in your inbox"), "{text}");
        let broken = ControlError::Call(tonic::Status::unavailable(format!(
            "voicemail {id} cannot be rebuilt; it stays in your inbox"
        )));
        assert_eq!(fetch_error(&id, &broken).matches(&id).count(), 1);
        let bare = ControlError::Call(tonic::Status::unavailable("the auth group is down"));
        assert_eq!(
            fetch_error(&id, &bare),
            format!("voicemail {id}: the auth group is down")
        );
    }

    #[test]
    fn bad_ids_are_refused_locally() {
        for id in ["", "xyz", "abcd", &"0".repeat(33)] {
            let err = parse_id(id).unwrap_err().to_string();
            assert!(err.contains("32 hex digits"), "{err}");
        }
        assert_eq!(parse_id(&"0f".repeat(16)).unwrap(), [0x0f; 16]);
    }
}
