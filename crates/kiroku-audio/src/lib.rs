//! Audio input (its own crate so the gateway and the CLI decode WAV without linking
//! whisper.cpp): WAV decoding, downmixing and resampling to Whisper's 16 kHz mono f32.
//!
//! Accepted: RIFF/WAVE PCM 8/16/24/32-bit integer or 32-bit float, 1 to
//! [`MAX_CHANNELS`] channels (averaged to mono), sample rates from
//! [`MIN_SAMPLE_RATE_HZ`] to [`MAX_SAMPLE_RATE_HZ`] (resampled with a windowed-sinc
//! resampler from `rubato`). Anything else is refused with an [`AudioError`] that says
//! what is wrong; nothing here panics on input.

use std::io::Read;

use rubato::{FftFixedIn, Resampler};

/// Whisper's input rate.
pub const WHISPER_SAMPLE_RATE_HZ: u32 = 16_000;
/// Lowest accepted input rate (narrow-band telephony).
pub const MIN_SAMPLE_RATE_HZ: u32 = 8_000;
/// Highest accepted input rate (studio audio).
pub const MAX_SAMPLE_RATE_HZ: u32 = 192_000;
/// Most channels accepted (7.1 surround); all are averaged into one.
pub const MAX_CHANNELS: u16 = 8;
/// A file whose loudest 30 ms frame stays below this RMS (about −50 dBFS) holds no speech.
pub const SILENCE_RMS: f32 = 0.003;

/// Why audio cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("not a WAV file ({0})")]
    NotWav(String),
    #[error("unsupported WAV format: {0}")]
    Unsupported(String),
    #[error("WAV data is truncated: the file ends before the length its header declares")]
    Truncated,
    #[error("WAV file holds no audio samples")]
    Empty,
    #[error(
        "audio is silent: no frame is louder than -50 dBFS, so there is no speech to transcribe"
    )]
    Silent,
    #[error("{channels} channels: supported are 1 to {MAX_CHANNELS}")]
    Channels { channels: u16 },
    #[error(
        "sample rate {rate_hz} Hz: supported are {MIN_SAMPLE_RATE_HZ} to {MAX_SAMPLE_RATE_HZ} Hz"
    )]
    SampleRate { rate_hz: u32 },
    #[error("could not read audio: {0}")]
    Io(#[from] std::io::Error),
    #[error("resampling failed: {0}")]
    Resample(String),
}

/// Mono 16 kHz samples in [-1, 1], ready for Whisper.
#[derive(Debug, Clone)]
pub struct Pcm16k {
    pub samples: Vec<f32>,
    /// Format of the source, for reports.
    pub source_rate_hz: u32,
    pub source_channels: u16,
}

impl Pcm16k {
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / u64::from(WHISPER_SAMPLE_RATE_HZ)
    }
}

/// Decodes a WAV stream into 16 kHz mono, refusing silent audio.
pub fn decode_wav(reader: impl Read) -> Result<Pcm16k, AudioError> {
    let mut wav = hound::WavReader::new(reader).map_err(|e| match e {
        hound::Error::IoError(io) if is_short_read(&io) => {
            AudioError::NotWav("file is too short to hold a WAV header".into())
        }
        hound::Error::IoError(io) => AudioError::Io(io),
        hound::Error::FormatError(what) => AudioError::NotWav(what.to_string()),
        hound::Error::Unsupported => AudioError::Unsupported(
            "compressed or unknown WAV encoding (PCM or float expected)".into(),
        ),
        other => AudioError::NotWav(other.to_string()),
    })?;
    let spec = wav.spec();
    if spec.channels == 0 || spec.channels > MAX_CHANNELS {
        return Err(AudioError::Channels {
            channels: spec.channels,
        });
    }
    if !(MIN_SAMPLE_RATE_HZ..=MAX_SAMPLE_RATE_HZ).contains(&spec.sample_rate) {
        return Err(AudioError::SampleRate {
            rate_hz: spec.sample_rate,
        });
    }
    let interleaved = read_samples(&mut wav, spec)?;
    if interleaved.is_empty() {
        return Err(AudioError::Empty);
    }
    let mono = downmix(interleaved, usize::from(spec.channels));
    if is_silent(&mono, spec.sample_rate) {
        return Err(AudioError::Silent);
    }
    let samples = if spec.sample_rate == WHISPER_SAMPLE_RATE_HZ {
        mono
    } else {
        resample(&mono, spec.sample_rate, WHISPER_SAMPLE_RATE_HZ)?
    };
    Ok(Pcm16k {
        samples,
        source_rate_hz: spec.sample_rate,
        source_channels: spec.channels,
    })
}

fn read_samples<R: Read>(
    wav: &mut hound::WavReader<R>,
    spec: hound::WavSpec,
) -> Result<Vec<f32>, AudioError> {
    let map_err = |e: hound::Error| match e {
        hound::Error::IoError(io) if is_short_read(&io) => AudioError::Truncated,
        hound::Error::IoError(io) => AudioError::Io(io),
        other => AudioError::Unsupported(other.to_string()),
    };
    let declared = wav.len() as usize;
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        // NaN and infinities (any bytes are a float) would make the resampler's FFT
        // panic, and out-of-range values clip anyway: silence and clamp them here.
        (hound::SampleFormat::Float, 32) => wav
            .samples::<f32>()
            .map(|s| {
                s.map(|v| {
                    if v.is_finite() {
                        v.clamp(-1.0, 1.0)
                    } else {
                        0.0
                    }
                })
                .map_err(map_err)
            })
            .collect::<Result<_, _>>()?,
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            wav.samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale).map_err(map_err))
                .collect::<Result<_, _>>()?
        }
        (format, bits) => {
            return Err(AudioError::Unsupported(format!(
                "{bits}-bit {format:?} samples (PCM 8/16/24/32-bit or 32-bit float expected)"
            )));
        }
    };
    // hound stops early, without an error, when the data chunk is cut mid-sample.
    if samples.len() < declared {
        return Err(AudioError::Truncated);
    }
    Ok(samples)
}

/// hound reports a short read as `UnexpectedEof` or as an `Other` error with this text.
fn is_short_read(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::UnexpectedEof
        || io.to_string().contains("Failed to read enough bytes")
}

/// Averages interleaved channels into one (mono input is returned as it is).
fn downmix(interleaved: Vec<f32>, channels: usize) -> Vec<f32> {
    if channels == 1 {
        return interleaved;
    }
    interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect()
}

fn is_silent(mono: &[f32], rate_hz: u32) -> bool {
    let frame = (rate_hz as usize * 30 / 1000).max(1);
    !mono.chunks(frame).any(|chunk| {
        let energy = chunk.iter().map(|s| s * s).sum::<f32>() / chunk.len() as f32;
        energy.sqrt() >= SILENCE_RMS
    })
}

/// Resamples mono audio with a windowed-sinc filter, compensating the filter delay so
/// that sample `i` of the output is at time `i / to_hz` of the input.
pub fn resample(mono: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, AudioError> {
    if from_hz == to_hz {
        return Ok(mono.to_vec());
    }
    let err = |e: &dyn std::fmt::Display| AudioError::Resample(e.to_string());
    let ratio = f64::from(to_hz) / f64::from(from_hz);
    const CHUNK_FRAMES: usize = 4096;
    let mut resampler =
        FftFixedIn::<f32>::new(from_hz as usize, to_hz as usize, CHUNK_FRAMES, 2, 1)
            .map_err(|e| err(&e))?;
    let expected = (mono.len() as f64 * ratio).round() as usize;
    let delay = resampler.output_delay();
    let mut out = Vec::with_capacity(expected + delay + CHUNK_FRAMES);
    let mut chunks = mono.chunks_exact(CHUNK_FRAMES);
    for chunk in chunks.by_ref() {
        let produced = resampler.process(&[chunk], None).map_err(|e| err(&e))?;
        out.extend_from_slice(&produced[0]);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let produced = resampler
            .process_partial(Some(&[rest]), None)
            .map_err(|e| err(&e))?;
        out.extend_from_slice(&produced[0]);
    }
    while out.len() < expected + delay {
        let produced = resampler
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| err(&e))?;
        out.extend_from_slice(&produced[0]);
    }
    Ok(out[delay..delay + expected].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav_bytes(
        spec: hound::WavSpec,
        write: impl FnOnce(&mut hound::WavWriter<std::io::Cursor<&mut Vec<u8>>>),
    ) -> Vec<u8> {
        let mut bytes = Vec::new();
        {
            let mut writer =
                hound::WavWriter::new(std::io::Cursor::new(&mut bytes), spec).expect("writer");
            write(&mut writer);
            writer.finalize().expect("finalize");
        }
        bytes
    }

    fn tone(rate_hz: u32, seconds: f32, freq_hz: f32) -> Vec<f32> {
        (0..(rate_hz as f32 * seconds) as usize)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * freq_hz * i as f32 / rate_hz as f32).sin())
            .collect()
    }

    fn spec(channels: u16, rate: u32, bits: u16, format: hound::SampleFormat) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: format,
        }
    }

    #[test]
    fn resampling_keeps_duration_and_frequency() {
        let input = tone(44_100, 1.0, 440.0);
        let out = resample(&input, 44_100, 16_000).expect("resample");
        assert_eq!(out.len(), 16_000);
        // Zero crossings of a 440 Hz tone: 880 per second.
        let crossings = out.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        assert!(
            (435..=445).contains(&crossings),
            "{crossings} upward crossings"
        );
        // Delay compensated: the tone starts at t=0 and keeps its amplitude.
        let peak = out[100..16_000 - 100]
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        assert!((0.45..0.55).contains(&peak), "peak {peak}");
    }

    #[test]
    fn decodes_24_bit_stereo_48k_to_16k_mono() {
        let left = tone(48_000, 0.5, 300.0);
        let bytes = wav_bytes(spec(2, 48_000, 24, hound::SampleFormat::Int), |w| {
            for s in &left {
                let v = (s * 8_388_607.0) as i32;
                w.write_sample(v).expect("write");
                w.write_sample(v).expect("write");
            }
        });
        let pcm = decode_wav(bytes.as_slice()).expect("decode");
        assert_eq!(pcm.samples.len(), 8_000);
        assert_eq!((pcm.source_rate_hz, pcm.source_channels), (48_000, 2));
        let peak = pcm.samples.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!((0.45..0.55).contains(&peak), "24-bit scaling, peak {peak}");
    }

    #[test]
    fn decodes_float_and_8_bit() {
        let t = tone(16_000, 0.2, 500.0);
        let float = wav_bytes(spec(1, 16_000, 32, hound::SampleFormat::Float), |w| {
            t.iter().for_each(|s| w.write_sample(*s).expect("write"));
        });
        assert_eq!(decode_wav(float.as_slice()).expect("float").samples, t);
        let eight = wav_bytes(spec(1, 16_000, 8, hound::SampleFormat::Int), |w| {
            t.iter()
                .for_each(|s| w.write_sample((s * 127.0) as i8).expect("write"));
        });
        let pcm = decode_wav(eight.as_slice()).expect("8-bit");
        assert!((pcm.samples[40] - t[40]).abs() < 0.02);
    }

    #[test]
    fn opposite_stereo_channels_cancel_into_silence() {
        let t = tone(16_000, 0.3, 500.0);
        let bytes = wav_bytes(spec(2, 16_000, 16, hound::SampleFormat::Int), |w| {
            for s in &t {
                w.write_sample((s * 32767.0) as i16).expect("write");
                w.write_sample((-s * 32767.0) as i16).expect("write");
            }
        });
        assert!(matches!(
            decode_wav(bytes.as_slice()),
            Err(AudioError::Silent)
        ));
    }

    #[test]
    fn bad_inputs_are_refused_precisely() {
        assert!(matches!(
            decode_wav(&b"hello, not audio at all"[..]),
            Err(AudioError::NotWav(_))
        ));
        let err = decode_wav(&b""[..]).expect_err("empty file");
        assert!(matches!(err, AudioError::NotWav(_)), "{err:?}");
        let empty = wav_bytes(spec(1, 16_000, 16, hound::SampleFormat::Int), |_| {});
        assert!(matches!(
            decode_wav(empty.as_slice()),
            Err(AudioError::Empty)
        ));
        let full = wav_bytes(spec(1, 16_000, 16, hound::SampleFormat::Int), |w| {
            tone(16_000, 0.5, 200.0)
                .iter()
                .for_each(|s| w.write_sample((s * 32767.0) as i16).expect("write"));
        });
        assert!(matches!(
            decode_wav(&full[..full.len() - 1001]),
            Err(AudioError::Truncated)
        ));
        let nine = wav_bytes(spec(9, 16_000, 16, hound::SampleFormat::Int), |w| {
            (0..90).for_each(|_| w.write_sample(1000i16).expect("write"));
        });
        assert!(matches!(
            decode_wav(nine.as_slice()),
            Err(AudioError::Channels { channels: 9 })
        ));
        let slow = wav_bytes(spec(1, 100, 16, hound::SampleFormat::Int), |w| {
            (0..100).for_each(|_| w.write_sample(1000i16).expect("write"));
        });
        assert!(matches!(
            decode_wav(slow.as_slice()),
            Err(AudioError::SampleRate { rate_hz: 100 })
        ));
        let silent = wav_bytes(spec(1, 16_000, 16, hound::SampleFormat::Int), |w| {
            (0..16_000).for_each(|_| w.write_sample(0i16).expect("write"));
        });
        assert!(matches!(
            decode_wav(silent.as_slice()),
            Err(AudioError::Silent)
        ));
    }

    #[test]
    fn zero_channel_header_is_refused() {
        // hound's writer cannot write 0 channels: patch the fmt chunk by hand.
        let mut bytes = wav_bytes(spec(1, 16_000, 16, hound::SampleFormat::Int), |w| {
            (0..1600).for_each(|_| w.write_sample(1000i16).expect("write"));
        });
        bytes[22] = 0;
        bytes[23] = 0;
        let err = decode_wav(bytes.as_slice()).expect_err("0 channels");
        assert!(
            matches!(
                err,
                AudioError::Channels { channels: 0 } | AudioError::NotWav(_)
            ),
            "{err}"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A RIFF/WAVE header with any format fields, then `data`.
        fn wav_header(format: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
            let block = channels.wrapping_mul(bits / 8);
            let mut out = Vec::new();
            out.extend_from_slice(b"RIFF");
            out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
            out.extend_from_slice(b"WAVEfmt ");
            out.extend_from_slice(&16u32.to_le_bytes());
            out.extend_from_slice(&format.to_le_bytes());
            out.extend_from_slice(&channels.to_le_bytes());
            out.extend_from_slice(&rate.to_le_bytes());
            out.extend_from_slice(&rate.wrapping_mul(u32::from(block)).to_le_bytes());
            out.extend_from_slice(&block.to_le_bytes());
            out.extend_from_slice(&bits.to_le_bytes());
            out.extend_from_slice(b"data");
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
            out
        }

        proptest! {
            /// Any bytes: an error or audio, never a panic.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = decode_wav(bytes.as_slice());
            }

            /// Well-formed headers with any format fields: no panic, and the decoded
            /// audio is bounded by what the file holds (16 kHz output from at least
            /// 1 Hz input: at most 16 000 samples per input sample, plus filter tail).
            #[test]
            fn any_header_fields_decode_or_are_refused(
                format in prop_oneof![Just(1u16), Just(3u16), any::<u16>()],
                channels in 0u16..10,
                rate in prop_oneof![Just(8_000u32), Just(16_000), Just(44_100), Just(48_000), 0u32..200_000],
                bits in prop_oneof![Just(8u16), Just(16), Just(24), Just(32), any::<u16>()],
                data in proptest::collection::vec(any::<u8>(), 0..4096),
            ) {
                let bytes = wav_header(format, channels, rate, bits, &data);
                if let Ok(pcm) = decode_wav(bytes.as_slice()) {
                    prop_assert!(rate >= 1);
                    let input_samples = data.len() as u64 / u64::from((bits / 8).max(1));
                    let bound = (input_samples + 1) * 16_000 / u64::from(rate.max(1)) + 16_000;
                    prop_assert!((pcm.samples.len() as u64) <= bound, "{} > {bound}", pcm.samples.len());
                    prop_assert!(pcm.samples.iter().all(|s| s.is_finite()));
                }
            }
        }
    }
}
