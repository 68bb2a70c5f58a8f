//! One call's RTP stream (RFC 3550): G.711 frames sent every 20 ms to the
//! address the caller's SDP named, and packets taken only from that
//! address. Playback listens for RFC 4733 keys while it sends; recording
//! places each packet by its timestamp, so a lost packet leaves silence
//! and the recording keeps the caller's timeline.

use std::net::SocketAddr;
use std::time::Duration;

use rtp_rs::{RtpPacketBuilder, RtpReader, Seq};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::audio::{Codec, FRAME, KeyPress, key_press};
use super::sdp::Offer;

/// How long a recording waits for the caller's first packet, and then for
/// each next one, before it ends the call.
pub(super) const SILENT_CALLER: Duration = Duration::from_secs(30);
/// Largest forward jump of the caller's timestamps taken as a gap (2 s of
/// silence); a packet further ahead is dropped, not allowed to grow the
/// recording.
const MAX_JUMP: usize = 16_000;

/// How a stretch of playback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Played {
    /// Every sample went out.
    Done,
    /// The caller pressed a key that ends it (`stop_on` said so).
    Key(char),
    /// The call ended.
    Hangup,
}

/// How a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recorded {
    /// The caller hung up.
    Hangup,
    /// The cap was reached.
    Cap,
    /// No packet came for [`SILENT_CALLER`].
    Silent,
}

/// One call's RTP socket and sending state.
#[derive(Debug)]
pub(super) struct RtpStream {
    socket: UdpSocket,
    remote: SocketAddr,
    codec: Codec,
    payload_type: u8,
    dtmf: Option<u8>,
    ssrc: u32,
    seq: Seq,
    ts: u32,
    /// The last key event seen, by its RTP timestamp (RFC 4733 repeats
    /// the end packet).
    last_key: Option<u32>,
    /// Packets refused for coming from another address.
    pub(super) wrong_source: u64,
}

impl RtpStream {
    /// A stream on `socket` to what `offer` named.
    pub(super) fn new(socket: UdpSocket, offer: &Offer) -> Self {
        RtpStream {
            socket,
            remote: offer.remote,
            codec: offer.codec,
            payload_type: offer.payload_type,
            dtmf: offer.dtmf,
            ssrc: rand::random(),
            seq: Seq::from(rand::random::<u16>()),
            ts: rand::random(),
            last_key: None,
            wrong_source: 0,
        }
    }

    async fn send_frame(&mut self, pcm: &[i16]) {
        let payload = self.codec.encode(pcm);
        let packet = RtpPacketBuilder::new()
            .payload_type(self.payload_type)
            .ssrc(self.ssrc)
            .sequence(self.seq)
            .timestamp(self.ts)
            .payload(&payload)
            .build()
            .expect("a G.711 frame fits an RTP packet");
        let _ = self.socket.send_to(&packet, self.remote).await;
        self.seq = self.seq.next();
        self.ts = self.ts.wrapping_add(pcm.len() as u32);
    }

    /// One packet from the caller's address, or None on any other
    /// (counted in `wrong_source`) or an unparseable one.
    async fn receive<'a>(&mut self, buf: &'a mut [u8]) -> Option<RtpReader<'a>> {
        let (len, from) = self.socket.recv_from(buf).await.ok()?;
        if from != self.remote {
            self.wrong_source += 1;
            return None;
        }
        RtpReader::new(&buf[..len]).ok()
    }

    /// A key press in a packet, once per event.
    fn key_in(&mut self, p: &RtpReader<'_>) -> Option<KeyPress> {
        if Some(p.payload_type()) != self.dtmf {
            return None;
        }
        let k = key_press(p.payload())?;
        if !k.end || self.last_key == Some(p.timestamp()) {
            return None;
        }
        self.last_key = Some(p.timestamp());
        Some(k)
    }

    /// Sends `pcm` in real time. Each key the caller presses goes to
    /// `on_key`; playback stops early on one it returns true for.
    pub(super) async fn play(
        &mut self,
        pcm: &[i16],
        hangup: &CancellationToken,
        mut on_key: impl FnMut(char) -> bool,
    ) -> Played {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut frames = pcm.chunks(FRAME);
        let mut buf = vec![0u8; 2048];
        loop {
            tokio::select! {
                _ = hangup.cancelled() => return Played::Hangup,
                _ = tick.tick() => match frames.next() {
                    Some(f) => self.send_frame(f).await,
                    None => return Played::Done,
                },
                p = self.receive(&mut buf) => {
                    let key = p.and_then(|p| self.key_in(&p));
                    if let Some(k) = key
                        && on_key(k.key)
                    {
                        return Played::Key(k.key);
                    }
                }
            }
        }
    }

    /// Records the caller until hangup, `max_samples`, or silence, while
    /// `prompt` plays to them. Returns the samples at 8 kHz.
    pub(super) async fn record(
        &mut self,
        prompt: &[i16],
        max_samples: usize,
        hangup: &CancellationToken,
    ) -> (Vec<i16>, Recorded) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut prompt = prompt.chunks(FRAME);
        let mut pcm: Vec<i16> = Vec::new();
        let mut first_ts: Option<u32> = None;
        let mut buf = vec![0u8; 2048];
        let mut deadline = tokio::time::Instant::now() + SILENT_CALLER;
        loop {
            tokio::select! {
                _ = hangup.cancelled() => return (pcm, Recorded::Hangup),
                _ = tokio::time::sleep_until(deadline) => return (pcm, Recorded::Silent),
                _ = tick.tick(), if prompt.len() > 0 => {
                    if let Some(f) = prompt.next() {
                        self.send_frame(f).await;
                    }
                }
                p = self.receive(&mut buf) => {
                    let Some(p) = p else { continue };
                    if p.payload_type() != self.payload_type {
                        continue;
                    }
                    deadline = tokio::time::Instant::now() + SILENT_CALLER;
                    let base = *first_ts.get_or_insert(p.timestamp());
                    let at = p.timestamp().wrapping_sub(base) as usize;
                    if at > pcm.len() + MAX_JUMP {
                        continue; // a timestamp from elsewhere on the timeline
                    }
                    let samples = self.codec.decode(p.payload());
                    let end = (at + samples.len()).min(max_samples);
                    if at < end {
                        if end > pcm.len() {
                            pcm.resize(end, 0);
                        }
                        pcm[at..end].copy_from_slice(&samples[..end - at]);
                    }
                    if pcm.len() >= max_samples {
                        return (pcm, Recorded::Cap);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::audio::tone;

    /// A stream on loopback and the caller's socket, which the offer names.
    async fn pair(dtmf: Option<u8>) -> (RtpStream, UdpSocket, SocketAddr) {
        let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ours = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = ours.local_addr().unwrap();
        let offer = Offer {
            remote: caller.local_addr().unwrap(),
            codec: Codec::Pcma,
            payload_type: 8,
            dtmf,
        };
        (RtpStream::new(ours, &offer), caller, at)
    }

    fn packet(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        RtpPacketBuilder::new()
            .payload_type(pt)
            .ssrc(7)
            .sequence(Seq::from(seq))
            .timestamp(ts)
            .payload(payload)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_recording_stops_at_its_cap_keeps_gaps_and_ignores_strangers() {
        let (mut stream, caller, at) = pair(None).await;
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let frame = Codec::Pcma.encode(&tone(300.0, 20));
        let sent = frame.clone();
        tokio::spawn(async move {
            for i in 0..10u32 {
                stranger
                    .send_to(&packet(8, 0, 1000, &[0xd5; 160]), at)
                    .await
                    .unwrap();
                // Packet 3 is lost: its 20 ms stay silent.
                if i != 3 {
                    caller
                        .send_to(&packet(8, i as u16, 5000 + 160 * i, &sent), at)
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let (pcm, how) = stream.record(&[], 8 * 160, &CancellationToken::new()).await;
        assert_eq!(how, Recorded::Cap);
        assert_eq!(pcm.len(), 8 * 160);
        assert!(
            pcm[3 * 160..4 * 160].iter().all(|&s| s == 0),
            "the lost packet is silence"
        );
        assert_eq!(&pcm[..160], Codec::Pcma.decode(&frame).as_slice());
        assert!(stream.wrong_source >= 1);
    }

    #[tokio::test]
    async fn a_hang_up_ends_a_recording_with_what_came() {
        let (mut stream, caller, at) = pair(None).await;
        let hangup = CancellationToken::new();
        let h = hangup.clone();
        tokio::spawn(async move {
            caller
                .send_to(&packet(8, 1, 0, &[0xd5; 160]), at)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            h.cancel();
        });
        let (pcm, how) = stream.record(&tone(1000.0, 40), 8000, &hangup).await;
        assert_eq!((pcm.len(), how), (160, Recorded::Hangup));
    }

    #[tokio::test]
    async fn a_key_press_counts_once_and_can_end_playback() {
        let (mut stream, caller, at) = pair(Some(101)).await;
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            // Wait for playback to start, then press 7, then #, each end
            // packet sent three times as RFC 4733 asks.
            caller.recv_from(&mut buf).await.unwrap();
            for (key, ts) in [(7u8, 100u32), (11, 200)] {
                for _ in 0..3 {
                    caller
                        .send_to(&packet(101, 0, ts, &[key, 0x8a, 0, 160]), at)
                        .await
                        .unwrap();
                }
            }
        });
        let mut keys = Vec::new();
        let played = stream
            .play(&tone(400.0, 2000), &CancellationToken::new(), |k| {
                keys.push(k);
                k == '#'
            })
            .await;
        assert_eq!(played, Played::Key('#'));
        assert_eq!(keys, ['7', '#']);
    }
}
