//! Whisper's mel filterbank, computed instead of shipped.
//!
//! Whisper was trained with `librosa.filters.mel(sr=16000, n_fft=400, n_mels=N)`:
//! Slaney's mel scale (linear below 1 kHz, logarithmic above) and Slaney area
//! normalisation. whisper.cpp reads the bank from the model file, so the converter
//! writes it; computing it here keeps the converter free of data files and gives
//! large-v3's 128-bin bank for free.

/// Sample rate Whisper models expect.
pub const SAMPLE_RATE_HZ: f64 = 16_000.0;
/// FFT window of Whisper's front end (25 ms at 16 kHz).
pub const N_FFT: usize = 400;

const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn logstep() -> f64 {
    (6.4f64).ln() / 27.0
}

fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / logstep()
    } else {
        hz / F_SP
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (logstep() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

/// Returns the `n_mels × (N_FFT/2 + 1)` filterbank, row-major, as librosa computes it
/// (float64 arithmetic, then rounded to f32).
pub fn filterbank(n_mels: usize) -> Vec<f32> {
    let n_bins = N_FFT / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|i| i as f64 * (SAMPLE_RATE_HZ / 2.0) / (n_bins - 1) as f64)
        .collect();
    let min_mel = hz_to_mel(0.0);
    let max_mel = hz_to_mel(SAMPLE_RATE_HZ / 2.0);
    let mel_points: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(min_mel + (max_mel - min_mel) * i as f64 / (n_mels + 1) as f64))
        .collect();

    let mut weights = Vec::with_capacity(n_mels * n_bins);
    for m in 0..n_mels {
        let lower_width = mel_points[m + 1] - mel_points[m];
        let upper_width = mel_points[m + 2] - mel_points[m + 1];
        let area_norm = 2.0 / (mel_points[m + 2] - mel_points[m]);
        for &freq in &fft_freqs {
            let rising = (freq - mel_points[m]) / lower_width;
            let falling = (mel_points[m + 2] - freq) / upper_width;
            weights.push((rising.min(falling).max(0.0) * area_norm) as f32);
        }
    }
    weights
}

#[cfg(test)]
// The reference values are printed with Python's shortest round-trip f64 digits.
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;

    /// Reference values from `whisper/assets/mel_filters.npz` of the PyPI package
    /// `openai-whisper` (the bank the models were trained with), keys `mel_80` and
    /// `mel_128`, as `(row, column, value)`.
    const MEL_80_REFERENCE: &[(usize, usize, f32)] = &include!("testdata/mel_80_reference.in");
    const MEL_128_REFERENCE: &[(usize, usize, f32)] = &include!("testdata/mel_128_reference.in");

    fn check(n_mels: usize, reference: &[(usize, usize, f32)]) {
        let bank = filterbank(n_mels);
        assert_eq!(bank.len(), n_mels * 201);
        for &(row, col, expected) in reference {
            let got = bank[row * 201 + col];
            assert!(
                (got - expected).abs() <= 1e-7 + expected.abs() * 1e-5,
                "mel_{n_mels}[{row}][{col}] = {got}, reference {expected}"
            );
        }
    }

    #[test]
    fn filterbank_80_matches_openai_reference() {
        check(80, MEL_80_REFERENCE);
    }

    #[test]
    fn filterbank_128_matches_openai_reference() {
        check(128, MEL_128_REFERENCE);
    }

    #[test]
    fn every_filter_has_weight_and_none_is_negative() {
        for n_mels in [80, 128] {
            let bank = filterbank(n_mels);
            for row in bank.chunks(201) {
                assert!(row.iter().all(|&w| w >= 0.0));
                assert!(row.iter().any(|&w| w > 0.0));
            }
        }
    }
}
