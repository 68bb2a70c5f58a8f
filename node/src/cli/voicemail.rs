//! `vmail leave` and `vmail fetch`: the CLI side of sending and receiving.
//! The work happens in a peer (see `node.rs`); this reads and writes the
//! user's files and draws progress bars.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use libp2p::PeerId;
use vmail_node::auth_client::SenderVisibility;
use vmail_node::config::NodeConfig;
use vmail_node::core::erasure::Redundancy;
use vmail_node::core::wav;
use vmail_proto::control_pb as pb;

use super::node::PeerHandle;
use super::{Context, when};

/// Progress bars, one per phase; silent when stdout is not a terminal.
struct Bars {
    current: Option<(i32, ProgressBar)>,
}

impl Bars {
    fn new() -> Self {
        Self { current: None }
    }

    fn update(&mut self, p: pb::Progress) {
        if self.current.as_ref().map(|(ph, _)| *ph) != Some(p.phase) {
            if let Some((_, bar)) = self.current.take() {
                bar.finish();
            }
            let label = match pb::Phase::try_from(p.phase) {
                Ok(pb::Phase::Encrypt) => "encrypt ",
                Ok(pb::Phase::Upload) => "upload  ",
                Ok(pb::Phase::Download) => "download",
                Ok(pb::Phase::Decrypt) => "decrypt ",
                _ => "working ",
            };
            let bar = ProgressBar::with_draw_target(
                Some(p.total),
                if std::io::stdout().is_terminal() {
                    ProgressDrawTarget::stdout()
                } else {
                    ProgressDrawTarget::hidden()
                },
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label);
            self.current = Some((p.phase, bar));
        }
        if let Some((_, bar)) = &self.current {
            bar.set_position(p.done);
        }
    }

    fn finish(self) {
        if let Some((_, bar)) = self.current {
            bar.finish();
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// `vmail leave --to a,b FILE`.
pub(super) async fn leave(
    ctx: &Context,
    to: &[String],
    file: &Path,
    redundancy: Option<Redundancy>,
    sender: SenderVisibility,
) -> anyhow::Result<()> {
    // Every check that needs no network happens before anything is stored.
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
    let content = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (content_type, duration_ms) = match wav::inspect(&content) {
        Some(info) => ("audio/wav", info.duration_ms),
        None => ("application/octet-stream", 0),
    };
    let size = content.len();
    let mut peer = PeerHandle::open(ctx, redundancy.map(Redundancy::n)).await?;
    let mut bars = Bars::new();
    let result = peer
        .client
        .leave(
            pb::LeaveRequest {
                recipients: to.to_vec(),
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
    println!(
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
    println!(
        "  one ciphertext of {} bytes as {}: {} shards of {} bytes:",
        done.ciphertext_size,
        done.redundancy,
        done.copies.len(),
        done.shard_size
    );
    for line in refusal_lines(&done.refused) {
        println!("{line}");
    }
    if !done.first_contact.is_empty() {
        println!(
            "  a first contact reaches its recipient flagged as an unknown caller, and expires sooner"
        );
    }
    for c in &done.copies {
        let holder = PeerId::from_bytes(&c.holder)
            .map(|p| p.to_string())
            .unwrap_or_default();
        println!(
            "  - shard {} id {} at {holder}",
            c.index,
            hex::encode(&c.identifier)
        );
    }
    for f in &done.failures {
        println!("  (note: {f})");
    }
    if let Some(t) = done.timings {
        println!(
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
    let result = fetch_with(&mut peer, wanted, &out).await;
    peer.close().await;
    result
}

async fn fetch_with(
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
    if ids.is_empty() {
        println!("no voicemail waiting");
        return Ok(());
    }
    let mut failed = 0;
    for id in ids {
        let mut bars = Bars::new();
        let got = peer.client.fetch(id, |p| bars.update(p)).await;
        bars.finish();
        let (content, done) = match got {
            Ok(x) => x,
            Err(e) => {
                eprintln!("voicemail {}: {e}", hex::encode(id));
                failed += 1;
                continue;
            }
        };
        let entry = done.voicemail.unwrap_or_default();
        let path = save(out, &id, &entry.content_type, &content)?;
        let acked = peer.client.ack(id).await?;
        println!(
            "fetched {} from {}{} (left {}), {} bytes -> {}",
            hex::encode(id),
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
        let holders: Vec<String> = done
            .holders
            .iter()
            .map(|h| {
                let peer =
                    PeerId::from_bytes(&h.holder).map_or_else(|_| "?".into(), |p| p.to_string());
                format!(
                    "shard {} from {}",
                    h.index,
                    &peer[peer.len().saturating_sub(8)..]
                )
            })
            .collect();
        println!("  {}: {}", done.redundancy, holders.join(", "));
        for f in &done.failures {
            println!("  (skipped: {f})");
        }
        if let Some(t) = done.timings {
            println!(
                "  time: auth {}, dht {}, transfer {}, crypto {}",
                ms(t.auth_us),
                ms(t.dht_us),
                ms(t.transfer_us),
                ms(t.crypto_us)
            );
        }
        if entry.first_contact {
            let sender = (!entry.anonymous).then_some(entry.sender.as_str());
            for line in first_contact_steps(&hex::encode(id), sender) {
                println!("{line}");
            }
        }
        if acked.key_erased {
            println!(
                "  every recipient has it now: the session key is erased at the auth server, and {} shard(s) were deleted from their holders{}",
                acked.shards_deleted,
                super::sent::missed(acked.holders_missed)
            );
        }
    }
    if failed > 0 {
        bail!("{failed} voicemail(s) could not be fetched and stay in your inbox");
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
    fn bad_ids_are_refused_locally() {
        for id in ["", "xyz", "abcd", &"0".repeat(33)] {
            let err = parse_id(id).unwrap_err().to_string();
            assert!(err.contains("32 hex digits"), "{err}");
        }
        assert_eq!(parse_id(&"0f".repeat(16)).unwrap(), [0x0f; 16]);
    }
}
