//! Streaming conversion of client audio (LINEAR16, 8–48 kHz, mono or stereo) to the
//! 16 kHz mono the workers decode.

use rubato::{FftFixedIn, Resampler};

/// Whisper's sample rate: every frame on `AUDIO` is at this rate.
pub const OUTPUT_RATE_HZ: u32 = 16_000;
/// Input rates the gateway accepts (DESIGN.md, "Audio and the streaming policy").
pub const SUPPORTED_RATES_HZ: [u32; 4] = [8_000, 16_000, 44_100, 48_000];

/// Converts interleaved little-endian i16 frames into 16 kHz mono, frame by frame.
///
/// The FFT resampler works on fixed 10 ms input chunks; what does not fill a chunk
/// waits for the next frame (at most 10 ms of added latency), and `finish` flushes it.
/// Its filter delay is removed once at the start, so output sample `i` is at time
/// `i / 16 kHz` of the input.
pub struct StreamResampler {
    channels: usize,
    inner: Option<Inner>,
}

struct Inner {
    resampler: FftFixedIn<f32>,
    chunk: usize,
    pending: Vec<f32>,
    delay_left: usize,
    input_total: u64,
    output_total: u64,
    ratio: f64,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("channels", &self.channels)
            .field("resampling", &self.inner.is_some())
            .finish()
    }
}

impl StreamResampler {
    /// `rate_hz` must be one of [`SUPPORTED_RATES_HZ`] and `channels` 1 or 2 (the
    /// gateway validates both before building one).
    pub fn new(rate_hz: u32, channels: u32) -> Result<Self, String> {
        let inner = if rate_hz == OUTPUT_RATE_HZ {
            None
        } else {
            let chunk = rate_hz as usize / 100;
            let resampler =
                FftFixedIn::<f32>::new(rate_hz as usize, OUTPUT_RATE_HZ as usize, chunk, 1, 1)
                    .map_err(|e| e.to_string())?;
            Some(Inner {
                delay_left: resampler.output_delay(),
                resampler,
                chunk,
                pending: Vec::with_capacity(chunk * 2),
                input_total: 0,
                output_total: 0,
                ratio: f64::from(OUTPUT_RATE_HZ) / f64::from(rate_hz),
            })
        };
        Ok(Self {
            channels: channels.max(1) as usize,
            inner,
        })
    }

    /// Converts one frame of interleaved LINEAR16 bytes (whole sample frames: the
    /// caller checked the length) and returns 16 kHz mono i16 samples.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<i16> {
        let mono = self.downmix(bytes);
        match &mut self.inner {
            None => mono.iter().map(|&s| to_i16(s)).collect(),
            Some(inner) => {
                inner.input_total += mono.len() as u64;
                inner.pending.extend_from_slice(&mono);
                let mut out = Vec::new();
                let mut start = 0;
                while inner.pending.len() - start >= inner.chunk {
                    let chunk = &inner.pending[start..start + inner.chunk];
                    if let Ok(produced) = inner.resampler.process(&[chunk], None) {
                        inner.emit(&produced[0], &mut out);
                    }
                    start += inner.chunk;
                }
                inner.pending.drain(..start);
                out
            }
        }
    }

    /// Flushes what is buffered at the end of the stream.
    pub fn finish(&mut self) -> Vec<i16> {
        let Some(inner) = &mut self.inner else {
            return Vec::new();
        };
        let expected = (inner.input_total as f64 * inner.ratio).round() as u64;
        let mut out = Vec::new();
        let pending = std::mem::take(&mut inner.pending);
        if !pending.is_empty()
            && let Ok(produced) = inner.resampler.process_partial(Some(&[&pending]), None)
        {
            inner.emit(&produced[0], &mut out);
        }
        // Bounded: each call yields one chunk's worth of output.
        for _ in 0..8 {
            if inner.output_total >= expected {
                break;
            }
            match inner.resampler.process_partial::<&[f32]>(None, None) {
                Ok(produced) => inner.emit(&produced[0], &mut out),
                Err(_) => break,
            }
        }
        let excess = (inner.output_total.saturating_sub(expected)) as usize;
        out.truncate(out.len().saturating_sub(excess));
        inner.output_total = expected;
        out
    }

    fn downmix(&self, bytes: &[u8]) -> Vec<f32> {
        let samples = bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0);
        if self.channels == 1 {
            return samples.collect();
        }
        let all: Vec<f32> = samples.collect();
        all.chunks_exact(self.channels)
            .map(|frame| frame.iter().sum::<f32>() / self.channels as f32)
            .collect()
    }
}

impl Inner {
    fn emit(&mut self, produced: &[f32], out: &mut Vec<i16>) {
        let skip = self.delay_left.min(produced.len());
        self.delay_left -= skip;
        out.extend(produced[skip..].iter().map(|&s| to_i16(s)));
        self.output_total += (produced.len() - skip) as u64;
    }
}

fn to_i16(sample: f32) -> i16 {
    (sample * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone_bytes(rate: u32, channels: u32, seconds: f32, freq: f32) -> Vec<u8> {
        let n = (rate as f32 * seconds) as usize;
        let mut bytes = Vec::new();
        for i in 0..n {
            let s = (0.5
                * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin()
                * 32767.0) as i16;
            for _ in 0..channels {
                bytes.extend_from_slice(&s.to_le_bytes());
            }
        }
        bytes
    }

    /// Frames of uneven size in, the exact expected number of samples out, and the
    /// tone still at its place (no delay).
    #[test]
    fn resamples_in_uneven_frames_without_delay() {
        for (rate, channels) in [(48_000, 2), (44_100, 1), (8_000, 1), (16_000, 2)] {
            let bytes = tone_bytes(rate, channels, 1.0, 440.0);
            let frame_bytes = |ms: usize| rate as usize * ms / 1000 * 2 * channels as usize;
            let mut resampler = StreamResampler::new(rate, channels).expect("resampler");
            let mut out = Vec::new();
            let mut at = 0;
            for ms in [20, 37, 100, 200, 13].iter().cycle() {
                if at >= bytes.len() {
                    break;
                }
                let end = (at + frame_bytes(*ms)).min(bytes.len());
                out.extend(resampler.push(&bytes[at..end]));
                at = end;
            }
            out.extend(resampler.finish());
            assert_eq!(out.len(), 16_000, "{rate} Hz x{channels}");
            // Compare with the ideal 16 kHz tone in the middle (edges ring).
            let err: f64 = (4000..12000)
                .map(|i| {
                    let ideal =
                        0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 16_000.0).sin();
                    (f64::from(out[i]) / 32768.0 - ideal).abs()
                })
                .fold(0.0, f64::max);
            assert!(err < 0.02, "{rate} Hz x{channels}: max error {err}");
        }
    }
}
