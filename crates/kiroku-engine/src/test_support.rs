//! Hand-made words and audio for the unit tests of the streaming policy and the live
//! path (no model involved).

use kiroku_core::transcript::Word;

use crate::streaming::{DecodeRequest, SAMPLES_PER_MS};

pub(crate) fn word(text: &str, start_ms: u64, end_ms: u64) -> Word {
    Word {
        text: text.to_string(),
        start_ms,
        end_ms,
        probability: 0.9,
    }
}

/// Hypothesis words given in absolute ms, made relative to the request.
pub(crate) fn heard(request: &DecodeRequest, words: &[(&str, u64, u64)]) -> Vec<Word> {
    words
        .iter()
        .map(|&(text, start, end)| word(text, start - request.start_ms, end - request.start_ms))
        .collect()
}

/// A loud tone: speech to the VAD.
pub(crate) fn speech(ms: u64) -> Vec<f32> {
    (0..ms * SAMPLES_PER_MS)
        .map(|i| 0.2 * (i as f32 * 0.05).sin())
        .collect()
}

pub(crate) fn silence(ms: u64) -> Vec<f32> {
    vec![0.0; (ms * SAMPLES_PER_MS) as usize]
}
