//! Audio for calls: G.711 (`audio-codec-algorithms`), a voicemail's WAV
//! turned into 8 kHz mono (`hound` reads it, `rubato` resamples it), a
//! recording written back as WAV, tones, and RFC 4733 telephone events.
//! Pure.

use std::io::Cursor;

use audio_codec_algorithms::{decode_alaw, decode_ulaw, encode_alaw, encode_ulaw};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

/// Samples per second on the wire.
pub const RATE: u32 = 8000;
/// Samples per 20 ms packet.
pub const FRAME: usize = 160;

/// A G.711 law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// μ-law, payload type 0.
    Pcmu,
    /// A-law, payload type 8.
    Pcma,
}

impl Codec {
    /// Its static RTP payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// Its SDP name.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// The codec of payload type `pt`.
    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// Encodes linear samples.
    pub fn encode(self, pcm: &[i16]) -> Vec<u8> {
        let f = match self {
            Codec::Pcmu => encode_ulaw,
            Codec::Pcma => encode_alaw,
        };
        pcm.iter().map(|&s| f(s)).collect()
    }

    /// Decodes a payload.
    pub fn decode(self, payload: &[u8]) -> Vec<i16> {
        let f = match self {
            Codec::Pcmu => decode_ulaw,
            Codec::Pcma => decode_alaw,
        };
        payload.iter().map(|&b| f(b)).collect()
    }
}

/// Why a voicemail cannot be played.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// Not a WAV file `hound` reads.
    #[error("not a playable WAV file: {0}")]
    NotWav(String),
    /// Resampling failed.
    #[error("resampling to 8 kHz failed: {0}")]
    Resample(String),
}

/// A WAV file as 8 kHz mono samples: channels averaged, resampled.
pub fn wav_to_8k(wav: &[u8]) -> Result<Vec<i16>, AudioError> {
    let not_wav = |e: hound::Error| AudioError::NotWav(e.to_string());
    let mut reader = hound::WavReader::new(Cursor::new(wav)).map_err(not_wav)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let scale = match spec.sample_format {
        hound::SampleFormat::Int => (1i64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32,
        hound::SampleFormat::Float => 1.0,
    };
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Int => reader
            .samples::<i32>()
            .map(|s| s.map(|v| v as f32 / scale))
            .collect::<Result<_, _>>()
            .map_err(not_wav)?,
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(not_wav)?,
    };
    let mono: Vec<f32> = samples
        .chunks(channels)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect();
    let resampled = if spec.sample_rate == RATE || mono.is_empty() {
        mono
    } else {
        let bad = |e: &dyn std::fmt::Display| AudioError::Resample(e.to_string());
        let mut r = Fft::<f32>::new(
            spec.sample_rate as usize,
            RATE as usize,
            1024,
            1,
            FixedSync::Both,
        )
        .map_err(|e| bad(&e))?;
        let input = InterleavedSlice::new(&mono, 1, mono.len()).map_err(|e| bad(&e))?;
        r.process_all(&input, mono.len(), None)
            .map_err(|e| bad(&e))?
            .take_data()
    };
    Ok(resampled
        .iter()
        .map(|&v| (v * 32768.0).clamp(-32768.0, 32767.0) as i16)
        .collect())
}

/// 8 kHz mono samples as a 16-bit WAV file.
pub fn pcm_to_wav(pcm: &[i16]) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::with_capacity(44 + 2 * pcm.len()));
    {
        let mut w = hound::WavWriter::new(&mut out, spec).expect("a WAV header fits in memory");
        for &s in pcm {
            w.write_sample(s).expect("writing to memory");
        }
        w.finalize().expect("writing to memory");
    }
    out.into_inner()
}

/// `ms` milliseconds of a sine at `hz`, at a third of full scale.
pub fn tone(hz: f32, ms: u32) -> Vec<i16> {
    let n = (RATE * ms / 1000) as usize;
    (0..n)
        .map(|i| {
            let t = i as f32 / RATE as f32;
            ((2.0 * std::f32::consts::PI * hz * t).sin() * 10_000.0) as i16
        })
        .collect()
}

/// `ms` milliseconds of silence.
pub fn silence(ms: u32) -> Vec<i16> {
    vec![0; (RATE * ms / 1000) as usize]
}

/// One RFC 4733 telephone event: which key, and whether its end bit is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPress {
    /// `0`-`9`, `*`, `#`, `A`-`D`.
    pub key: char,
    /// The event's final packet(s).
    pub end: bool,
}

/// Reads a telephone-event payload (RFC 4733 §2.3): event, E/R/volume, duration.
pub fn key_press(payload: &[u8]) -> Option<KeyPress> {
    let [event, flags, _, _] = payload.get(..4)?.try_into().ok()?;
    let key = match event {
        0..=9 => char::from(b'0' + event),
        10 => '*',
        11 => '#',
        12..=15 => char::from(b'A' + event - 12),
        _ => return None,
    };
    Some(KeyPress {
        key,
        end: flags & 0x80 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_round_trips_within_its_quantisation() {
        let pcm = tone(440.0, 100);
        for c in [Codec::Pcmu, Codec::Pcma] {
            let back = c.decode(&c.encode(&pcm));
            assert_eq!(back.len(), pcm.len());
            let worst = pcm
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .max()
                .unwrap();
            assert!(worst < 400, "{c:?} off by {worst}");
            assert_eq!(Codec::from_payload_type(c.payload_type()), Some(c));
        }
    }

    #[test]
    fn a_48k_stereo_wav_becomes_8k_mono_of_the_same_length() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut buf = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut buf, spec).unwrap();
        for i in 0..48_000 {
            let v = ((i as f32 / 48.0).sin() * 8000.0) as i16;
            w.write_sample(v).unwrap();
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
        let pcm = wav_to_8k(buf.get_ref()).unwrap();
        assert!((pcm.len() as i64 - 8000).abs() <= 2, "{}", pcm.len());
        let peak = pcm.iter().map(|s| s.abs()).max().unwrap();
        assert!((7000..9000).contains(&peak), "peak {peak}");
        assert!(matches!(
            wav_to_8k(b"not a wav"),
            Err(AudioError::NotWav(_))
        ));
    }

    #[test]
    fn a_recording_is_written_as_the_samples_it_holds() {
        let pcm = tone(300.0, 40);
        let wav = pcm_to_wav(&pcm);
        // 8 kHz 16-bit plays sample for sample.
        assert_eq!(wav_to_8k(&wav).unwrap(), pcm);
        let mut r = hound::WavReader::new(Cursor::new(&wav)).unwrap();
        let back: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(back, pcm);
    }

    #[test]
    fn telephone_events_name_their_key() {
        assert_eq!(
            key_press(&[11, 0x8a, 0, 160]),
            Some(KeyPress {
                key: '#',
                end: true
            })
        );
        assert_eq!(
            key_press(&[7, 0x0a, 0, 160]),
            Some(KeyPress {
                key: '7',
                end: false
            })
        );
        assert_eq!(key_press(&[99, 0, 0, 0]), None);
        assert_eq!(key_press(&[1]), None);
    }
}
