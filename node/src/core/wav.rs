//! WAV files with hound: reading a voicemail's duration for the inbox, and
//! generating real, playable audio for `vmail demo` and the tests. Pure: no
//! IO beyond memory.

use std::f64::consts::TAU;
use std::io::Cursor;

/// How long each tone of [`generate`] lasts, in milliseconds.
const NOTE_MS: u64 = 250;
/// Each tone's own fade in and out, so note changes do not click.
const NOTE_FADE_MS: u64 = 20;
/// The whole clip's fade in and out.
const CLIP_FADE_MS: u64 = 500;
/// Peak amplitude, as a fraction of full scale: loud enough, never clipping.
const LEVEL: f64 = 0.3;
/// The tones: a two-octave A minor pentatonic scale from A3, in Hz.
const SCALE: [f64; 10] = [
    220.0, 261.63, 293.66, 329.63, 392.0, 440.0, 523.25, 587.33, 659.26, 783.99,
];

/// Facts read from a WAV header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavInfo {
    /// Duration in milliseconds, rounded down.
    pub duration_ms: u64,
    /// Samples per second, per channel.
    pub sample_rate: u32,
    /// Channels.
    pub channels: u16,
    /// Bits per sample.
    pub bits_per_sample: u16,
}

/// Reads the WAV header of `bytes` with hound; None when it is not a WAV
/// file hound can read.
pub fn inspect(bytes: &[u8]) -> Option<WavInfo> {
    let reader = hound::WavReader::new(Cursor::new(bytes)).ok()?;
    let spec = reader.spec();
    if spec.sample_rate == 0 {
        return None;
    }
    Some(WavInfo {
        // duration() counts frames: one sample per channel.
        duration_ms: u64::from(reader.duration()) * 1000 / u64::from(spec.sample_rate),
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        bits_per_sample: spec.bits_per_sample,
    })
}

/// True when `bytes` begin like a RIFF/WAVE file (cheap check used to pick
/// a .wav extension).
pub fn looks_like_wav(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WAVE"
}

/// A real, playable 16-bit mono PCM WAV of `seconds` seconds at
/// `sample_rate` Hz: a melody of two-tone notes (a pentatonic tone and its
/// fifth, like a DTMF pair) changing every 250 ms, each note and the whole
/// clip faded in and out. Deterministic in `seed`; different seeds give
/// different melodies.
///
/// # Panics
///
/// If `sample_rate` is 0, or the audio would not fit in a WAV file (4 GiB:
/// over 37 hours at 16 kHz).
pub fn generate(seconds: u32, sample_rate: u32, seed: u64) -> Vec<u8> {
    assert!(sample_rate > 0, "a WAV needs a sample rate above 0");
    let rate = u64::from(sample_rate);
    let total = u64::from(seconds) * rate;
    assert!(
        total * 2 + 44 <= u64::from(u32::MAX),
        "{seconds} s at {sample_rate} Hz does not fit in a WAV file"
    );
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::with_capacity(total as usize * 2 + 44));
    let mut writer = hound::WavWriter::new(&mut out, spec).expect("writing to memory");
    let note_len = (rate * NOTE_MS / 1000).max(1);
    let note_fade = (rate * NOTE_FADE_MS / 1000).max(1);
    let clip_fade = (rate * CLIP_FADE_MS / 1000).clamp(1, total.div_ceil(2).max(1));
    let mut rng = SplitMix64(seed);
    let (mut low, mut high) = (SCALE[0], SCALE[0] * 1.5);
    // Phases carry across notes so the waveform never jumps.
    let (mut low_phase, mut high_phase) = (0.0f64, 0.0f64);
    for i in 0..total {
        let k = i % note_len;
        if k == 0 {
            low = SCALE[(rng.next() % SCALE.len() as u64) as usize];
            high = low * 1.5;
        }
        let fade =
            |at: u64, len: u64, edge: u64| at.min(len - 1 - at).min(edge) as f64 / edge as f64;
        let envelope = fade(k, note_len, note_fade) * fade(i, total, clip_fade);
        let sample = LEVEL * envelope * (0.6 * low_phase.sin() + 0.4 * high_phase.sin());
        low_phase = (low_phase + TAU * low / rate as f64) % TAU;
        high_phase = (high_phase + TAU * high / rate as f64) % TAU;
        writer
            .write_sample((sample * f64::from(i16::MAX)).round() as i16)
            .expect("writing to memory");
    }
    writer.finalize().expect("writing to memory");
    out.into_inner()
}

/// SplitMix64 (Steele, Lea and Flood): a tiny, well-mixed generator, so
/// nearby seeds give unrelated melodies.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_audio_reads_back() {
        let a = generate(30, 8000, 1);
        assert_eq!(
            inspect(&a),
            Some(WavInfo {
                duration_ms: 30_000,
                sample_rate: 8000,
                channels: 1,
                bits_per_sample: 16
            })
        );
        assert_eq!(a.len(), 44 + 30 * 8000 * 2);
        assert!(looks_like_wav(&a));
    }

    #[test]
    fn generated_audio_is_sound_not_silence() {
        let a = generate(2, 8000, 1);
        let samples: Vec<i16> = hound::WavReader::new(Cursor::new(&a))
            .unwrap()
            .into_samples()
            .collect::<Result<_, _>>()
            .unwrap();
        let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak > 5000, "peak {peak} is too quiet to hear");
        // Faded in and out: starts and ends at silence.
        assert_eq!(samples[0], 0);
        assert_eq!(samples[samples.len() - 1], 0);
    }

    #[test]
    fn seeds_give_different_audio_and_the_same_seed_the_same() {
        assert_ne!(generate(3, 8000, 1), generate(3, 8000, 2));
        assert_eq!(generate(3, 8000, 1), generate(3, 8000, 1));
    }

    #[test]
    fn short_and_empty_clips_are_valid() {
        for (seconds, rate) in [(0, 8000), (1, 1), (1, 3)] {
            let info = inspect(&generate(seconds, rate, 0)).unwrap();
            assert_eq!(info.duration_ms, u64::from(seconds) * 1000);
        }
    }

    #[test]
    fn other_bytes_are_not_wav() {
        let noise: [u8; 1000] = vmail_proto::random_bytes();
        assert_eq!(inspect(&noise), None);
        assert!(!looks_like_wav(&noise));
        assert!(!looks_like_wav(b"RIFF"));
        assert!(!looks_like_wav(b"RIFF\0\0\0\0AVI LIST"));
        assert!(looks_like_wav(b"RIFF\0\0\0\0WAVEfmt "));
        assert_eq!(inspect(b"RIFF\0\0\0\0WAVEfmt "), None);
    }
}
