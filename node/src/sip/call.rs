//! Calls: an INVITE to `voicemail` plays the inbox, one to another user
//! records a voicemail for them (paper §3.3). Each call answers the
//! caller's SDP, waits for the ACK, then runs its RTP stream; a BYE from
//! either side ends it. Playback fetches through the normal fetch path
//! (hashes checked) and acks a voicemail only once it has played to the
//! end without key 7; a recording is left through the normal leave path,
//! under the same grants and policies as any leave, and the caller gets a
//! MESSAGE saying how it went.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rsipstack::sip::{Header, Method, SipMessage, StatusCode};
use rsipstack::transaction::Transaction;
use tokio_util::sync::CancellationToken;
use vmail_proto::names::Username;

use super::audio::{self, pcm_to_wav, silence, tone};
use super::notify::Dialog;
use super::rtp::{Played, Recorded, RtpStream};
use super::sdp::{self, SdpError};
use super::{Inner, Refused};
use crate::auth_client::SenderVisibility;
use crate::peer::{LeaveRequest, no_progress};

/// How long a 200 to an INVITE waits for its ACK (64·T1).
const ACK_WAIT: Duration = Duration::from_secs(32);

/// What a call does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallKind {
    /// Plays the inbox.
    Playback,
    /// Records a voicemail for this user.
    Record(Username),
}

/// A call as `vmail sip status` shows it.
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// What it does.
    pub kind: CallKind,
    /// This service's RTP address for it.
    pub media: std::net::SocketAddr,
    /// How long it has lasted.
    pub duration: Duration,
}

/// A call under way.
#[derive(Debug)]
pub(super) struct Call {
    pub hangup: CancellationToken,
    kind: CallKind,
    media: std::net::SocketAddr,
    started: Instant,
}

impl Call {
    pub(super) fn info(&self) -> CallInfo {
        CallInfo {
            kind: self.kind.clone(),
            media: self.media,
            duration: self.started.elapsed(),
        }
    }
}

impl Inner {
    /// INVITE: answer, then play or record.
    pub(super) async fn invite(self: Arc<Self>, mut tx: Transaction, user: Username) {
        let prepared = self.prepare_call(&mut tx).await;
        let (kind, stream, answer, dialog, hangup) = match prepared {
            Ok(p) => p,
            Err(r) => {
                let _ = self.refuse(&mut tx, r).await;
                return;
            }
        };
        let headers = vec![
            Header::ContentType(sdp::CONTENT_TYPE.into()),
            self.contact(),
        ];
        let answered = tx
            .reply_with(StatusCode::OK, headers, Some(answer.into_bytes()))
            .await;
        let acked = answered.is_ok()
            && tokio::time::timeout(ACK_WAIT, async {
                while let Some(m) = tx.receive().await {
                    if matches!(&m, SipMessage::Request(r) if r.method == Method::Ack) {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
        if acked {
            tracing::info!("sip: {user}'s call {} ({kind:?}) answered", dialog.call_id);
            let cseq = AtomicU32::new(1);
            match kind {
                CallKind::Playback => self.play_inbox(stream, &hangup, &dialog, &cseq).await,
                CallKind::Record(callee) => {
                    self.record_for(callee, stream, &hangup, &dialog, &cseq)
                        .await
                }
            }
        } else {
            tracing::info!("sip: call {} never acked", dialog.call_id);
        }
        self.calls
            .lock()
            .expect("calls lock")
            .remove(&dialog.call_id);
    }

    /// Checks an INVITE and sets its call up: what it does, its RTP
    /// stream, the SDP answer, its dialog and hang-up token.
    async fn prepare_call(
        &self,
        tx: &mut Transaction,
    ) -> Result<(CallKind, RtpStream, String, Dialog, CancellationToken), Refused> {
        let req = &tx.original;
        let target = req
            .uri
            .auth
            .as_ref()
            .map(|a| a.user.clone())
            .unwrap_or_default();
        let kind =
            if target == self.config.voicemail_user {
                CallKind::Playback
            } else {
                let name = target.strip_prefix(self.config.record_prefix.as_str());
                match name.map(Username::parse) {
                    Some(Ok(u)) => CallKind::Record(u),
                    _ => {
                        return Err(Refused::new(StatusCode::NotFound, "no such user").warn(&format!(
                        "call {}@… to hear your voicemail, or {}USER@… to leave one for USER",
                        self.config.voicemail_user, self.config.record_prefix
                    )));
                    }
                }
            };
        let offer = if req.body.is_empty() {
            Err(SdpError::Malformed(
                "the INVITE carries no SDP offer".into(),
            ))
        } else {
            sdp::parse_offer(&req.body)
        };
        let offer = offer.map_err(|e| match e {
            SdpError::NoCommonCodec => {
                Refused::new(StatusCode::NotAcceptableHere, "no common codec").warn(&e.to_string())
            }
            SdpError::Malformed(_) => {
                Refused::new(StatusCode::NotAcceptableHere, "bad SDP").warn(&e.to_string())
            }
        })?;
        let socket = tokio::net::UdpSocket::bind((self.local.ip(), 0))
            .await
            .map_err(|e| {
                Refused::new(StatusCode::ServerInternalError, "no RTP port").warn(&e.to_string())
            })?;
        let media = socket.local_addr().map_err(|e| {
            Refused::new(StatusCode::ServerInternalError, "no RTP port").warn(&e.to_string())
        })?;
        let answer = sdp::answer(&offer, media, rand::random::<u32>().into());
        let dialog = Dialog::take(tx)?;
        let hangup = self.cancel.child_token();
        // Checked and taken under one lock, so concurrent INVITEs cannot
        // pass the cap together.
        let mut calls = self.calls.lock().expect("calls lock");
        if calls.contains_key(&dialog.call_id) {
            return Err(Refused::new(StatusCode::NotAcceptableHere, "re-INVITE")
                .warn("a call's session cannot be changed: hang up and call again"));
        }
        if calls.len() >= self.config.max_calls {
            return Err(
                Refused::new(StatusCode::BusyHere, "too many calls").warn(&format!(
                    "already {} calls, the most sip.max_calls allows",
                    self.config.max_calls
                )),
            );
        }
        calls.insert(
            dialog.call_id.clone(),
            Call {
                hangup: hangup.clone(),
                kind: kind.clone(),
                media,
                started: Instant::now(),
            },
        );
        drop(calls);
        Ok((kind, RtpStream::new(socket, &offer), answer, dialog, hangup))
    }

    async fn hang_up(&self, dialog: &Dialog, cseq: &AtomicU32) {
        let n = cseq.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.send(dialog, Method::Bye, n, Vec::new(), None).await {
            tracing::debug!("sip: BYE for {}: {e}", dialog.call_id);
        }
    }

    /// Plays every waiting voicemail, oldest first. `#` skips to the next
    /// and `7` keeps the one playing; either way it stays in the inbox.
    async fn play_inbox(
        &self,
        mut stream: RtpStream,
        hangup: &CancellationToken,
        dialog: &Dialog,
        cseq: &AtomicU32,
    ) {
        let mut pending = match self.peer.inbox().await {
            Ok(p) => p,
            Err(e) => {
                tracing::info!("sip: playback could not list the inbox: {e}");
                stream.play(&error_tone(), hangup, |_| false).await;
                self.hang_up(dialog, cseq).await;
                return;
            }
        };
        pending.sort_by_key(|p| p.deposited_at);
        if pending.is_empty() {
            // No voicemail: two low beeps.
            let mut none = tone(400.0, 200);
            none.extend(silence(150));
            none.extend(tone(400.0, 200));
            stream.play(&none, hangup, |_| false).await;
        }
        for p in pending {
            let started = Instant::now();
            let pcm = match self.peer.fetch(p.id, no_progress()).await {
                Ok(f) => audio::wav_to_8k(&f.content).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let pcm = match pcm {
                Ok(pcm) => pcm,
                Err(e) => {
                    tracing::info!("sip: voicemail {} cannot be played: {e}", hex::encode(p.id));
                    if stream.play(&error_tone(), hangup, |_| false).await == Played::Hangup {
                        return;
                    }
                    continue;
                }
            };
            tracing::info!(
                "sip: playing voicemail {} ({} s) after {} ms",
                hex::encode(p.id),
                pcm.len() / audio::RATE as usize,
                started.elapsed().as_millis()
            );
            let mut keep = false;
            let mut intro = tone(880.0, 120);
            intro.extend(silence(200));
            let mut played = stream.play(&intro, hangup, |k| k == '#').await;
            if played == Played::Done {
                played = stream
                    .play(&pcm, hangup, |k| {
                        keep |= k == '7';
                        k == '#'
                    })
                    .await;
            }
            if played == Played::Done && !keep {
                match self.peer.ack(p.id).await {
                    Ok(_) => {
                        tracing::info!("sip: voicemail {} played and acked", hex::encode(p.id))
                    }
                    Err(e) => tracing::info!("sip: ack of {}: {e}", hex::encode(p.id)),
                }
            } else {
                self.kept.lock().expect("kept lock").insert(p.id);
                self.lamp.notify_one();
            }
            if played == Played::Hangup {
                return;
            }
        }
        stream.play(&tone(660.0, 300), hangup, |_| false).await;
        if !hangup.is_cancelled() {
            self.hang_up(dialog, cseq).await;
        }
    }

    /// Records after a beep, leaves the recording for `callee`, and tells
    /// the caller how it went.
    async fn record_for(
        &self,
        callee: Username,
        mut stream: RtpStream,
        hangup: &CancellationToken,
        dialog: &Dialog,
        cseq: &AtomicU32,
    ) {
        let cap = self.config.max_recording_secs as usize * audio::RATE as usize;
        let (pcm, how) = stream.record(&tone(1000.0, 400), cap, hangup).await;
        if how != Recorded::Hangup {
            self.hang_up(dialog, cseq).await;
        }
        if stream.wrong_source > 0 {
            tracing::info!(
                "sip: call {} dropped {} RTP packets from addresses its SDP did not name",
                dialog.call_id,
                stream.wrong_source
            );
        }
        let secs = pcm.len() as f64 / f64::from(audio::RATE);
        let mut text = if pcm.is_empty() {
            format!("nothing was recorded, so no voicemail was left for {callee}")
        } else {
            let req = LeaveRequest {
                recipients: vec![callee.to_string()],
                duration_ms: (pcm.len() as u64 * 1000) / u64::from(audio::RATE),
                content: pcm_to_wav(&pcm),
                content_type: "audio/wav".into(),
                redundancy: None,
                sender: SenderVisibility::Shown,
            };
            match self.peer.leave(req, no_progress()).await {
                Ok(r) => format!(
                    "voicemail for {callee} left: {secs:.1} s, id {}",
                    hex::encode(r.voicemail_id)
                ),
                Err(e) => format!("voicemail for {callee} was NOT left: {e}"),
            }
        };
        match how {
            Recorded::Cap => text.push_str(&format!(
                " (cut off at the {} s limit, sip.max_recording_secs)",
                self.config.max_recording_secs
            )),
            Recorded::Silent => text.push_str(" (the call went silent, so it was ended)"),
            Recorded::Hangup => {}
        }
        tracing::info!("sip: {text}");
        let n = cseq.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self
            .send(
                dialog,
                Method::Message,
                n,
                Vec::new(),
                Some(("text/plain", text.into_bytes())),
            )
            .await
        {
            tracing::info!("sip: telling the caller: {e}");
        }
    }
}

/// Three quick high beeps: this one could not be played.
fn error_tone() -> Vec<i16> {
    let mut t = Vec::new();
    for _ in 0..3 {
        t.extend(tone(1400.0, 80));
        t.extend(silence(80));
    }
    t
}
