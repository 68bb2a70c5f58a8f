//! WAV files with hound: reading a voicemail's duration for the inbox, and
//! generating real, playable audio for the demo and the tests.

use std::f64::consts::TAU;

/// Facts read from a WAV header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavInfo {
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels.
    pub channels: u16,
    /// Bits per sample.
    pub bits_per_sample: u16,
}

/// Reads the header of a WAV file; None when hound cannot read it.
pub fn inspect(bytes: &[u8]) -> Option<WavInfo> {
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes)).ok()?;
    let spec = reader.spec();
    if spec.sample_rate == 0 {
        return None;
    }
    Some(WavInfo {
        duration_ms: u64::from(reader.duration()) * 1000 / u64::from(spec.sample_rate),
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        bits_per_sample: spec.bits_per_sample,
    })
}

/// True when `bytes` begin like a RIFF/WAVE file.
pub fn looks_like_wav(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE"
}

/// A 16-bit mono PCM WAV of `seconds` seconds: a melody of tones that
/// change every 250 ms, with short fades so it does not click. The tones
/// follow `seed`, so different seeds give different audio.
pub fn generate(seconds: u32, sample_rate: u32, seed: u64) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut out, spec).expect("writing to memory");
    let note_len = (sample_rate / 4).max(1);
    let fade = (note_len / 10).max(1);
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut freq = 440.0;
    for i in 0..seconds * sample_rate {
        let k = i % note_len;
        if k == 0 {
            // xorshift: a deterministic walk over two octaves of a scale.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            freq = 220.0 * 2f64.powf((state % 24) as f64 / 12.0);
        }
        let envelope = f64::from(k.min(note_len - 1 - k).min(fade)) / f64::from(fade);
        let t = f64::from(i) / f64::from(sample_rate);
        let sample = 0.3 * envelope * (TAU * freq * t).sin();
        w.write_sample((sample * f64::from(i16::MAX)) as i16)
            .expect("writing to memory");
    }
    w.finalize().expect("writing to memory");
    out.into_inner()
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
        assert!(looks_like_wav(&a));
        assert_ne!(a, generate(30, 8000, 2));
    }

    #[test]
    fn other_bytes_are_not_wav() {
        let noise: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(inspect(&noise), None);
        assert!(!looks_like_wav(&noise));
    }
}
