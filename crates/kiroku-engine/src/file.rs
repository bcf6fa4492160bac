//! Files transcribed the way a live stream's minutes are made ([`crate::live`]): the
//! recording is cut at the voice-activity detector's utterance ends, and each piece is
//! decoded with the audio before it as left context and an encoder window sized to it,
//! keeping only its own words. A file and a live stream of the same audio therefore get
//! their minutes from the same cuts, the same context and the same word rules; the
//! difference is that a file gathers consecutive utterances into one decode of at least
//! [`FILE_GATHER_MS`] (a live final cannot wait for the next utterance).
//!
//! Segments are sentences: each decoded piece is split after its sentence-ending
//! punctuation (`.`, `?`, `!`, `。`, `？`, `！`), so a transcript reads one sentence a
//! line, as whole-file Whisper segments do.

use kiroku_core::transcript::{Segment, Transcript, Word, join_words};

use crate::engine::{Engine, EngineError, ProgressFn, TranscribeOptions};
use crate::live::{FinalsConfig, Live, UtteranceFinal};
use crate::streaming::{PolicyConfig, SAMPLES_PER_MS};
use crate::vad::Vad;

/// [`FinalsConfig::gather_ms`] of files. Measured with `examples/file_trials.rs` (the
/// table in docs/streaming.md, "Files"): within 0.01 of the whole-file decode on the
/// three test meetings at 1.0–1.15× its time, where one decode per utterance took
/// 1.7–2×; 6 s and 20 s lost words at piece edges.
pub const FILE_GATHER_MS: u32 = 12_000;

/// Audio handed to the detector at a time (1 s): decodes run as soon as a piece is cut.
const FEED_SAMPLES: usize = 16_000;

/// Transcribes a whole 16 kHz mono recording as utterance finals (see the module docs),
/// its pauses found by `vad`.
/// `options.language` `None` (or "auto") detects the language on the first piece and
/// keeps it; `options.prompt` biases every decode (in Japanese,
/// [`crate::live::JAPANESE_PROMPT`] when it is `None`, as in live finals);
/// `options.beam_size` is the beam of every decode; `options.audio_ctx` and `max_tokens`
/// are sized per piece and ignored.
/// `progress` gets the share of the audio done, 0–100.
///
/// Cutting needs DTW word times to tell each piece's own words from its context's: an
/// engine without them (flash attention) decodes the recording whole, in Whisper's own
/// 30 s windows (cut into pieces, a Japanese clip came back garbled, CER 0.268 against
/// 0.033).
pub fn transcribe_file(
    engine: &Engine,
    samples: &[f32],
    options: TranscribeOptions,
    vad: Vad,
    progress: Option<ProgressFn>,
) -> Result<Transcript, EngineError> {
    transcribe_gathered(engine, samples, options, vad, FILE_GATHER_MS, progress)
}

/// [`transcribe_file`] with another [`FinalsConfig::gather_ms`] (0: one decode per
/// utterance, exactly a live stream's finals). For measurements.
pub fn transcribe_gathered(
    engine: &Engine,
    samples: &[f32],
    options: TranscribeOptions,
    vad: Vad,
    gather_ms: u32,
    mut progress: Option<ProgressFn>,
) -> Result<Transcript, EngineError> {
    engine.check_options(&options)?;
    if !engine.info().dtw_word_times {
        return engine.transcribe(samples.to_vec(), options, progress);
    }
    let mut language = options.language.clone().filter(|l| l != "auto");
    if language.is_none() && !engine.info().multilingual {
        language = Some("en".into());
    }
    let finals = FinalsConfig {
        gather_ms,
        beam_size: options.beam_size.max(1),
        ..FinalsConfig::default()
    };
    let code = language.clone().unwrap_or_default();
    let policy = PolicyConfig {
        vad,
        ..PolicyConfig::default()
    };
    let mut live = Live::for_file(
        policy.clone().for_language(&code),
        finals.clone().for_language(&code),
    );
    let mut pieces: Vec<UtteranceFinal> = Vec::new();
    let mut fed = 0usize;
    let mut flushed = false;
    loop {
        while let Some(request) = live.next_decode() {
            let decode_options = TranscribeOptions {
                language: language.clone(),
                audio_ctx: Some(request.audio_ctx),
                no_temperature_fallback: true,
                max_tokens: Some(request.max_tokens),
                beam_size: request.beam_size,
                prompt: options.prompt.clone().or(request.prompt),
                urgent: false,
            };
            let transcript = engine.transcribe(request.samples, decode_options, None)?;
            if language.is_none() && !matches!(transcript.language.as_str(), "" | "und") {
                language = Some(transcript.language.clone());
                live.set_config(
                    policy.clone().for_language(&transcript.language),
                    finals.clone().for_language(&transcript.language),
                );
            }
            let words = transcript
                .segments
                .into_iter()
                .flat_map(|segment| segment.words)
                .collect();
            pieces.extend(live.on_decoded(request.id, words).finals);
        }
        if fed < samples.len() {
            let end = (fed + FEED_SAMPLES).min(samples.len());
            live.push_audio(fed as u64, &samples[fed..end]);
            fed = end;
            if let Some(progress) = progress.as_mut() {
                progress((fed * 100 / samples.len().max(1)) as i32);
            }
        } else if !flushed {
            live.flush();
            flushed = true;
        } else {
            break;
        }
    }
    let segments: Vec<Segment> = pieces
        .into_iter()
        .flat_map(|piece| sentences(piece.words))
        .collect();
    Ok(Transcript {
        duration_ms: samples.len() as u64 / SAMPLES_PER_MS,
        text: join_words(segments.iter().map(|s| s.text.as_str())),
        language: language.unwrap_or_else(|| "und".into()),
        segments,
    })
}

/// Whether `word` ends a sentence (trailing quotes and brackets aside).
fn ends_sentence(word: &str) -> bool {
    let trimmed = word.trim_end_matches(['"', '\'', ')', '」', '』', '）', '”', '’']);
    trimmed.ends_with(['.', '?', '!', '。', '？', '！'])
}

/// `words` (in time order) as one segment per sentence; words after the last sentence
/// end form a segment of their own.
fn sentences(words: Vec<Word>) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut current: Vec<Word> = Vec::new();
    let close = |current: &mut Vec<Word>, segments: &mut Vec<Segment>| {
        if let (Some(first), Some(last)) = (current.first(), current.last()) {
            segments.push(Segment {
                start_ms: first.start_ms,
                end_ms: last.end_ms,
                text: join_words(current.iter().map(|w| w.text.as_str())),
                words: std::mem::take(current),
            });
        }
    };
    for word in words {
        let end = ends_sentence(&word.text);
        current.push(word);
        if end {
            close(&mut current, &mut segments);
        }
    }
    close(&mut current, &mut segments);
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(text: &str, start_ms: u64) -> Word {
        Word {
            text: text.into(),
            start_ms,
            end_ms: start_ms + 100,
            probability: 0.9,
        }
    }

    #[test]
    fn a_piece_is_split_into_sentences_after_their_end_marks() {
        let words = vec![
            word("Hello", 0),
            word("there.", 200),
            word("Is", 400),
            word("it?\"", 600),
            word("来週", 800),
            word("です。", 900),
            word("and", 1000),
            word("then", 1100),
        ];
        let segments = sentences(words);
        let texts: Vec<&str> = segments.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            ["Hello there.", "Is it?\"", "来週です。", "and then"]
        );
        assert_eq!((segments[1].start_ms, segments[1].end_ms), (400, 700));
        assert!(sentences(Vec::new()).is_empty());
    }

    #[test]
    fn numbers_and_abbreviations_inside_a_word_do_not_end_a_sentence() {
        assert!(!ends_sentence("3.5"));
        assert!(!ends_sentence("e.g"));
        assert!(ends_sentence("done.)"));
        assert!(ends_sentence("ですか？"));
    }
}
