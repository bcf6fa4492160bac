//! The live streaming policy: which audio to decode when, and which words to commit.
//!
//! A sans-IO state machine (no threads, no clock, no engine): the worker feeds it audio
//! with [`Policy::push_audio`], asks [`Policy::next_decode`] for work, runs that decode on
//! the engine pool and hands the words back to [`Policy::on_decoded`], which returns the
//! newly committed words ([`Caption`]) and the unstable tail ([`Interim`]). Keeping the
//! policy free of I/O makes every rule below testable with hand-made word lists.
//!
//! Each rule was measured in `shared/notes/streaming.md` (tiny.en on 2 cores):
//! - **Energy VAD** on 20 ms blocks. Silence outside an utterance is dropped (a short
//!   pre-roll is kept) and never decoded: Whisper invents "Thank you." on silence.
//!   An utterance ends after [`PolicyConfig::finalize_silence_ms`] of silence, and its
//!   whole hypothesis is then committed: sentence-final words need no agreement, and a
//!   wavering word can no longer hold commits back for seconds.
//! - **A rolling buffer** re-decoded every [`PolicyConfig::step_ms`] of new audio with the
//!   encoder's audio context sized to the buffer (`ceil(s × 50) + 100` frames): a decode
//!   drops from ~1.2 s to 0.1–0.4 s, and the 100-frame margin avoids the loops that a
//!   tight context causes.
//! - **LocalAgreement with a gap**: a word is committed once a hypothesis at least
//!   [`PolicyConfig::agreement_gap_ms`] older agrees on it and on every word before it.
//!   At short steps, agreeing with the previous hypothesis commits the still-changing
//!   words at the audio's edge. When the previous decode is at least the gap older (a
//!   busy worker), a word the decode heard [`PolicyConfig::settle_ms`] of audio after is
//!   committed without agreement (not in unspaced languages): waiting for another
//!   decode would double its delay. Likewise, when an utterance ends at least the gap
//!   after the latest decode's audio, that decode's words (all but its last 300 ms) are
//!   shown at once rather than with the utterance's final, which may wait behind other
//!   streams' finals.
//! - **De-duplication by text**: committed words still in the buffer come back in every
//!   hypothesis; they are aligned by their text, never by timestamps (which jitter and
//!   would delete real words).
//! - **Trimming** at committed words, at the earlier of the last committed word's end and
//!   the next word's start (else the next word loses its onset); a forced commit when
//!   speech runs for [`PolicyConfig::max_buffer_ms`] without a pause.
//! - **Loop guard**: decodes carry a token cap, and a hypothesis that repeats an n-gram or
//!   holds more words than the audio can is discarded (cut before the loop when it must
//!   be committed). A repeated phrase squeezed into no time (Whisper wrote it twice but
//!   heard it once) is removed from the hypothesis.
//! - No previous text as a prompt in English: it shifted timestamps ~0.9 s late and cost
//!   accuracy. Japanese gains from one (see [`PolicyConfig::for_language`]).

use std::collections::VecDeque;
use std::ops::Range;

use kiroku_core::transcript::{Word, is_unspaced, join_words};
use serde::{Deserialize, Serialize};

use crate::audio::WHISPER_SAMPLE_RATE_HZ;

pub(crate) const SAMPLES_PER_MS: u64 = WHISPER_SAMPLE_RATE_HZ as u64 / 1000;
/// VAD block: 20 ms, one encoder frame.
pub(crate) const VAD_BLOCK_SAMPLES: usize = 320;
/// Encoder frames per second of audio.
const AUDIO_CTX_FRAMES_PER_S: f64 = 50.0;
/// The model's full encoder context (30 s).
const MAX_AUDIO_CTX: u32 = 1500;
/// Shorter decodes are padded with silence: whisper.cpp skips input under 100 ms, and a
/// few hundred milliseconds of context decode poorly.
const MIN_DECODE_SAMPLES: usize = WHISPER_SAMPLE_RATE_HZ as usize;
/// Earlier hypotheses kept for the agreement gap; a handful covers any sane gap/step.
const HISTORY_LEN: usize = 8;
/// A forced commit keeps the words ending this close to the buffer's edge uncommitted:
/// they may still be cut mid-word.
const FORCE_COMMIT_EDGE_MS: u64 = 1_000;
/// A hypothesis covering an ended utterance's last speech plus this much is reused as
/// its final hypothesis: the last word's tail is in it.
const REUSE_MARGIN_MS: u32 = 200;
/// At an utterance's end, a word of the latest decode ending this close to that decode's
/// audio end may have been cut mid-word and is left to the final (see
/// [`Policy::commit_heard_at_end`]).
const CLOSING_EDGE_MS: u64 = 300;
/// Committed words remembered by text after their audio is trimmed: the buffer's start
/// may still hold the end of the last one, which Whisper then hears again.
const TRIMMED_TAIL_WORDS: usize = 2;
/// A failed finalize decode is retried this many times before the utterance is closed
/// without its uncommitted words (a persistent engine error must not stall the stream).
const MAX_FINALIZE_FAILURES: u32 = 2;

/// Tuning of the policy; units are in the names. `Default` is the best variant measured
/// on a 2-core CPU worker (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Decode again once this much new audio has arrived in an utterance.
    ///
    /// 250 ms, for the latency target (final p50 ≤ 1 s). Measured with
    /// `tests/streaming.rs` (11 meeting sentences, 47 s, paced by real decode time, idle
    /// 2-core machine): 250 ms gave commit latency p50 0.87 s / p95 1.65 s, WER 0.095,
    /// 122 decodes, the engine busy 90% of real time; 500 ms gave p50 0.93 s / p95
    /// 1.96 s, WER 0.103, 81 decodes, 72% busy (the notes: p50 0.91 s vs 0.96–1.04 s).
    /// Accuracy does not separate them (one word; committing only at utterance ends is
    /// 0.086, the batch decode 0.060). 500 ms is the knob for a worker holding more
    /// streams than its cores can re-decode every 250 ms.
    pub step_ms: u32,
    /// Agree only with a hypothesis at least this much older (by the audio it covered).
    pub agreement_gap_ms: u32,
    /// Commit a word without agreement once a decode heard at least this much audio
    /// after it (0: agreement only). Under load decodes come seconds apart, and waiting
    /// for a second one to agree doubles a word's latency; a word this far from the
    /// audio's edge rarely changes. Only when the previous decode of the buffer is at
    /// least [`PolicyConfig::agreement_gap_ms`] older: decodes closer together (an idle
    /// worker) agree soon anyway, and a word they keep changing waits for agreement (the
    /// engine tests' 11-sentence meeting, decoded every 250 ms: captions WER 0.138 with
    /// agreement only, 0.155 when settling also at that pace, 0.138 with this rule).
    /// Captions only: the utterance's final decides the minutes either way. Where it is
    /// on, an utterance that ends on a busy worker also shows its latest decode's words
    /// at once ([`Policy::commit_heard_at_end`]).
    ///
    /// 1000 ms. Measured with `make bench-stream`'s sweep (tiny.en, one 2-core worker,
    /// 1–4 streams of the 5-sentence meeting started together, two runs per point,
    /// 2026-12-05; docs/performance.md "Settled captions"): caption latency p95
    /// 1.56 / 2.46 / 2.31 / 3.51 s with agreement only, 1.53 / 2.04 / 1.72 / 2.14 s with
    /// this rule; what viewers read live WER 0.10–0.20 and 0.10–0.18; the minutes 0.040
    /// in every run. Off in unspaced languages (see [`PolicyConfig::for_language`]).
    pub settle_ms: u32,

    /// Silence that ends an utterance; its whole hypothesis is then committed.
    pub finalize_silence_ms: u32,
    /// Audio kept before the first speech block: the VAD misses soft onsets ("h", "f").
    pub preroll_ms: u32,
    /// An utterance with less speech than this is noise (a click, a cough) and is
    /// dropped without a decode.
    pub min_speech_ms: u32,
    /// Trim the buffer at committed words once it is longer than this: shorter buffers
    /// decode faster, longer ones give Whisper context.
    pub trim_after_ms: u32,
    /// Commit all but the edge of the hypothesis once the buffer is this long (speech
    /// without pauses). Must stay below 28 s: the encoder covers 30 s with the margin.
    pub max_buffer_ms: u32,
    /// A 20 ms block whose RMS is at or above this is speech (full scale 1.0). 0.01 is
    /// −40 dBFS: conversational speech at normal microphone gain is −30 to −15 dBFS RMS,
    /// a quiet room's noise floor below −50 dBFS.
    pub vad_threshold_rms: f32,
    /// Which detector decides speech ([`crate::vad`]): the energy threshold above (the
    /// default), or Silero VAD (`--vad silero|auto`).
    pub vad: crate::vad::Vad,
    /// Encoder frames added to the audio context beyond the buffer's own.
    pub audio_ctx_margin_frames: u32,
    /// Token cap per second of audio given to the decoder (English speech is 3–5
    /// tokens/s; see [`PolicyConfig::for_language`] for Japanese).
    pub max_tokens_per_s: u32,
    /// A hypothesis with more words than this per second of audio (plus slack) is a
    /// repetition loop. Words of unspaced scripts are Whisper tokens.
    pub max_words_per_s: f64,
    /// Give each decode the last this many characters of committed text whose audio
    /// has left the buffer as Whisper's prompt (0: none). See
    /// [`PolicyConfig::for_language`].
    pub prompt_chars: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            step_ms: 250,
            agreement_gap_ms: 500,
            settle_ms: 1_000,

            finalize_silence_ms: 300,
            preroll_ms: 300,
            min_speech_ms: 100,
            trim_after_ms: 10_000,
            max_buffer_ms: 20_000,
            vad_threshold_rms: 0.01,
            vad: crate::vad::Vad::Energy,
            audio_ctx_margin_frames: 100,
            max_tokens_per_s: 8,
            max_words_per_s: 6.0,
            prompt_chars: 0,
        }
    }
}

/// Committed text kept for prompts (characters).
const MAX_CONTEXT_CHARS: usize = 200;

/// Token cap per second for unspaced languages.
const UNSPACED_MAX_TOKENS_PER_S: u32 = 20;
/// Loop-guard word rate for unspaced languages (a word is a token there).
const UNSPACED_MAX_WORDS_PER_S: f64 = 15.0;

/// Silence that ends an utterance in unspaced languages (see `for_language`).
const UNSPACED_FINALIZE_SILENCE_MS: u32 = 600;
/// Committed characters given as the prompt in unspaced languages.
const UNSPACED_PROMPT_CHARS: usize = 100;

/// Languages written without spaces: their "words" are Whisper tokens, several per
/// spoken word.
pub(crate) const UNSPACED_LANGUAGES: [&str; 3] = ["ja", "zh", "yue"];

impl PolicyConfig {
    /// This configuration for a stream in `language` (ISO 639-1; empty while it is
    /// still being detected).
    ///
    /// Japanese and Chinese: every Whisper token is a word, so the token cap and the
    /// loop guard's word rate are raised to 2.5× English's, leaving headroom over the
    /// test meeting's 4.4 characters a second (123 in 27.8 s) (an unknown language
    /// gets the raised caps too: a cap is a loop guard, and a higher one only costs time
    /// when Whisper loops). Japanese also pauses at 、 mid-sentence: an utterance ends
    /// only after [`UNSPACED_FINALIZE_SILENCE_MS`], so that a clause is not decoded on its
    /// own, and decodes get the last [`UNSPACED_PROMPT_CHARS`] committed characters as a
    /// prompt, which keeps kanji and context across utterances. Measured with the
    /// unpaced simulation on the Japanese test meeting (base; `tests/streaming.rs`,
    /// `streamed_japanese_commits_tokens_before_the_sentence_ends`): CER 0.163 with the
    /// English settings, 0.138 with the longer silence, 0.098 with both (batch: 0.033).
    pub fn for_language(mut self, language: &str) -> Self {
        let unspaced = UNSPACED_LANGUAGES.contains(&language);
        if language.is_empty() || unspaced {
            self.max_tokens_per_s = self.max_tokens_per_s.max(UNSPACED_MAX_TOKENS_PER_S);
            self.max_words_per_s = self.max_words_per_s.max(UNSPACED_MAX_WORDS_PER_S);
        }
        if unspaced {
            self.finalize_silence_ms = self.finalize_silence_ms.max(UNSPACED_FINALIZE_SILENCE_MS);
            self.prompt_chars = self.prompt_chars.max(UNSPACED_PROMPT_CHARS);
            // Committing tokens on one decode made Japanese captions worse and later:
            // base, the Japanese clip, settle 1000 ms: live CER 0.13–0.29, caption p95
            // 2.74 s for one stream and 14 s for four (agreement only: 2.21 s and 6.9 s).
            self.settle_ms = 0;
        }
        self
    }
}

/// What a successor needs to continue a session without repeating words.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Where a resumed policy starts (ms from the session's start): the audio before it
    /// is committed or silence.
    pub committed_offset_ms: u64,
    /// The words committed after `committed_offset_ms`, space-joined: a resumed policy
    /// will hear them again and must not emit them twice.
    pub committed_text_tail: String,
}

/// Audio to decode: run it with `TranscribeOptions { audio_ctx: Some(audio_ctx),
/// max_tokens: Some(max_tokens), no_temperature_fallback: true, .. }` and hand the words
/// back to [`Policy::on_decoded`] with `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeRequest {
    /// Identifies the reply; a reply with another id is ignored.
    pub id: u64,
    /// 16 kHz mono; at least 1 s (short audio is padded with silence).
    pub samples: Vec<f32>,
    /// Encoder context in 20 ms frames, sized to the audio (at most 1500).
    pub audio_ctx: u32,
    /// Absolute offset of `samples[0]` from the start of the session.
    pub start_ms: u64,
    /// Token cap per segment: the loop guard's first line.
    pub max_tokens: u32,
    /// Committed text before `samples` to prompt the decoder with, if the config asks.
    pub prompt: Option<String>,
    /// What the decode is for: the engine runs utterance finals before captions.
    pub kind: DecodeKind,
    /// Beam width (1: greedy).
    pub beam_size: u32,
}

impl DecodeRequest {
    /// A request for `samples` (starting at absolute `start_ms`) shaped as every live
    /// decode is: padded to at least 1 s, the encoder context sized to the audio plus
    /// the config's margin, and a token cap of the config's rate (with a floor of 8: a
    /// short buffer still holds a word or two and timestamps).
    pub(crate) fn sized(
        id: u64,
        mut samples: Vec<f32>,
        start_ms: u64,
        config: &PolicyConfig,
        prompt: Option<String>,
        kind: DecodeKind,
    ) -> Self {
        let audio_s = samples.len() as f64 / f64::from(WHISPER_SAMPLE_RATE_HZ);
        if samples.len() < MIN_DECODE_SAMPLES {
            samples.resize(MIN_DECODE_SAMPLES, 0.0);
        }
        let padded_s = samples.len() as f64 / f64::from(WHISPER_SAMPLE_RATE_HZ);
        let audio_ctx = ((padded_s * AUDIO_CTX_FRAMES_PER_S).ceil() as u32)
            .saturating_add(config.audio_ctx_margin_frames)
            .min(MAX_AUDIO_CTX);
        let max_tokens = (audio_s * f64::from(config.max_tokens_per_s)).ceil() as u32 + 8;
        Self {
            id,
            samples,
            audio_ctx,
            start_ms,
            max_tokens,
            prompt,
            kind,
            beam_size: 1,
        }
    }

    /// The longest audio a request can hold: the encoder's 30 s less the margin.
    pub(crate) fn max_samples(config: &PolicyConfig) -> u64 {
        u64::from(MAX_AUDIO_CTX.saturating_sub(config.audio_ctx_margin_frames))
            * VAD_BLOCK_SAMPLES as u64
    }
}

/// Why a decode runs; [`DecodeKind::Final`] decodes go first in the engine's queue
/// (minutes must never starve behind captions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeKind {
    /// A re-decode of the rolling buffer for captions.
    #[default]
    Caption,
    /// A whole utterance decoded once more for the minutes.
    Final,
}

/// Voice activity as the policy's VAD saw it, for [`crate::live::Live`], which cuts
/// the minutes at the same utterance ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UtteranceEvent {
    /// Speech began at this absolute sample.
    Started { speech_start: u64 },
    /// The utterance ended (silence or flush): its audio ends at absolute sample `end`.
    Ended { end: u64 },
    /// The utterance held too little speech and was dropped as noise.
    Dropped,
}

/// Newly committed words (at least one), shown as a caption: never revised, never
/// emitted again by this policy or by one resumed from its [`Checkpoint`]. Successive
/// captions are in time order and do not overlap. (The minutes are not captions: each
/// utterance is decoded once more, whole, by [`crate::live::Live`].)
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    /// Words with absolute times (ms from the session's start).
    pub words: Vec<Word>,
    /// The words' texts joined by single spaces.
    pub text: String,
    /// The first word's start, absolute ms.
    pub start_ms: u64,
    /// The last word's end, absolute ms.
    pub end_ms: u64,
    /// The utterance ended (VAD silence or flush) with these words. An utterance whose
    /// words were all committed before it ended has no caption with this flag.
    pub utterance_end: bool,
}

/// The unstable tail of the latest hypothesis: what follows the committed words and may
/// still change.
#[derive(Debug, Clone, PartialEq)]
pub struct Interim {
    /// Words with absolute times (ms from the session's start).
    pub words: Vec<Word>,
    /// The words' texts joined by single spaces.
    pub text: String,
    /// The first word's start, absolute ms.
    pub start_ms: u64,
    /// The last word's end, absolute ms.
    pub end_ms: u64,
}

/// What one decode produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyOutput {
    /// Newly committed words, oldest first.
    pub captions: Vec<Caption>,
    /// The uncommitted tail now; `None` means there is none (clear the caption).
    pub interim: Option<Interim>,
}

/// A decode handed out and not yet answered.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: u64,
    /// Absolute samples covered (without padding).
    start: u64,
    end: u64,
    finalize: bool,
    force: bool,
}

/// The utterance being spoken: speech seen and not yet ended by silence or flush.
#[derive(Debug, Clone, Copy)]
struct OpenUtterance {
    speech_start: u64,
    /// End of the last speech block.
    speech_end: u64,
    speech_samples: u64,
    silence_samples: u64,
}

/// An utterance ended by silence or flush, waiting for its finalizing decode.
#[derive(Debug, Clone, Copy)]
struct EndedUtterance {
    /// Its last speech block's end.
    speech_end: u64,
    /// Where it ends: the audio up to here belongs to it.
    end: u64,
    failures: u32,
}

/// One decode's words, absolute times, and the end of the audio it covered.
#[derive(Debug, Clone)]
struct Hypothesis {
    end: u64,
    words: Vec<Word>,
}

/// How many of `words`, from the first, end by `edge_ms` (absolute).
fn ending_by(words: &[Word], edge_ms: u64) -> usize {
    words.iter().take_while(|w| w.end_ms <= edge_ms).count()
}

/// Root mean square of `block` (full scale 1.0): what the energy detector compares with
/// [`PolicyConfig::vad_threshold_rms`].
pub(crate) fn block_rms(block: &[f32]) -> f32 {
    (block.iter().map(|s| s * s).sum::<f32>() / block.len().max(1) as f32).sqrt()
}

/// The streaming policy of one session. See the module docs for the rules.
#[derive(Debug)]
pub struct Policy {
    config: PolicyConfig,
    /// Absolute sample the next pushed audio is expected at; earlier audio is a replay.
    position: u64,
    /// Samples after the last whole VAD block (not yet in `buffer`).
    partial_block: Vec<f32>,
    /// Audio from absolute sample `buffer_start` on, whole VAD blocks only.
    buffer: Vec<f32>,
    buffer_start: u64,
    utterance: Option<OpenUtterance>,
    ended: VecDeque<EndedUtterance>,
    /// Committed words whose audio is still in the buffer, absolute times.
    committed: Vec<Word>,
    /// Committed words from a resume checkpoint (their [`units`]), before `committed`.
    resumed_tail: Vec<Vec<String>>,
    /// The last committed words before `buffer_start` (their [`units`]).
    trimmed_tail: Vec<Vec<String>>,
    /// The end of the committed text before `buffer_start`, for the prompt.
    context: String,
    history: VecDeque<Hypothesis>,
    /// End of the last committed word (ms): committed times never go back before it.
    committed_end_ms: u64,
    /// End of the audio covered by the last decode handed out.
    last_decode_end: u64,
    in_flight: Option<InFlight>,
    next_id: u64,
    /// Utterance starts and ends not yet taken by [`Policy::take_utterance_events`].
    events: Vec<UtteranceEvent>,
    /// Captions committed at utterance ends, not yet taken by [`Policy::take_captions`].
    closing: Vec<Caption>,
    /// The voice activity detector's state ([`PolicyConfig::vad`]).
    detector: crate::vad::Detector,
}

impl Policy {
    /// A policy at the start of a session, or resuming one from `resume`: audio before
    /// the checkpoint's offset is then ignored and its committed words are not emitted
    /// again.
    pub fn new(config: PolicyConfig, resume: Option<Checkpoint>) -> Self {
        let (start, resumed_tail) = match resume {
            Some(checkpoint) => (
                checkpoint.committed_offset_ms * SAMPLES_PER_MS,
                normalized_words(&checkpoint.committed_text_tail),
            ),
            None => (0, Vec::new()),
        };
        Self {
            detector: config.vad.detector(),
            config,
            position: start,
            partial_block: Vec::with_capacity(VAD_BLOCK_SAMPLES),
            buffer: Vec::new(),
            buffer_start: start,
            utterance: None,
            ended: VecDeque::new(),
            committed: Vec::new(),
            resumed_tail,
            trimmed_tail: Vec::new(),
            context: String::new(),
            history: VecDeque::new(),
            committed_end_ms: start / SAMPLES_PER_MS,
            last_decode_end: start,
            in_flight: None,
            next_id: 1,
            events: Vec::new(),
            closing: Vec::new(),
        }
    }

    /// Adds 16 kHz mono audio starting at absolute sample `start_sample` (from the
    /// session's start). Audio before the policy's position (a replay after a takeover,
    /// overlapping chunks) is ignored; a gap is filled with silence so times stay
    /// absolute (it is held in memory only while an utterance or decode needs it).
    pub fn push_audio(&mut self, start_sample: u64, samples: &[f32]) {
        let end = start_sample + samples.len() as u64;
        if end <= self.position {
            return;
        }
        while self.position < start_sample {
            // Filled a second at a time: a long gap is trimmed as it is filled.
            let gap = (start_sample - self.position).min(WHISPER_SAMPLE_RATE_HZ.into());
            self.push_contiguous(&vec![0.0; gap as usize]);
        }
        let skip = (self.position - start_sample) as usize;
        self.push_contiguous(&samples[skip..]);
    }

    fn push_contiguous(&mut self, samples: &[f32]) {
        self.position += samples.len() as u64;
        self.partial_block.extend_from_slice(samples);
        let whole = self.partial_block.len() / VAD_BLOCK_SAMPLES * VAD_BLOCK_SAMPLES;
        let blocks: Vec<f32> = self.partial_block.drain(..whole).collect();
        for block in blocks.chunks(VAD_BLOCK_SAMPLES) {
            self.push_block(block);
        }
    }

    fn buffer_end(&self) -> u64 {
        self.buffer_start + self.buffer.len() as u64
    }

    fn ms_to_samples(ms: u32) -> u64 {
        u64::from(ms) * SAMPLES_PER_MS
    }

    fn push_block(&mut self, block: &[f32]) {
        let loud = block_rms(block) >= self.config.vad_threshold_rms;
        let speech = self.detector.is_speech(block, loud);
        self.buffer.extend_from_slice(block);
        let end = self.buffer_end();
        let length = block.len() as u64;
        match self.utterance.as_mut() {
            Some(utterance) if speech => {
                utterance.speech_end = end;
                utterance.speech_samples += length;
                utterance.silence_samples = 0;
            }
            Some(utterance) => {
                utterance.silence_samples += length;
                if utterance.silence_samples >= Self::ms_to_samples(self.config.finalize_silence_ms)
                {
                    self.end_utterance();
                }
            }
            None if speech => {
                let speech_start = end - length;
                self.utterance = Some(OpenUtterance {
                    speech_start,
                    speech_end: end,
                    speech_samples: length,
                    silence_samples: 0,
                });
                self.events.push(UtteranceEvent::Started { speech_start });
                self.trim_idle();
                // The first decode comes one step after speech starts.
                self.last_decode_end = self.last_decode_end.max(speech_start);
            }
            None => self.trim_idle(),
        }
    }

    /// Closes the open utterance at the buffer's end: it gets a finalizing decode, or is
    /// dropped as noise when it holds too little speech.
    fn end_utterance(&mut self) {
        let Some(utterance) = self.utterance.take() else {
            return;
        };
        if utterance.speech_samples >= Self::ms_to_samples(self.config.min_speech_ms) {
            let end = self.buffer_end();
            self.ended.push_back(EndedUtterance {
                speech_end: utterance.speech_end,
                end,
                failures: 0,
            });
            self.events.push(UtteranceEvent::Ended { end });
            if let Some(caption) = self.commit_heard_at_end(end) {
                self.closing.push(caption);
            }
        } else {
            self.events.push(UtteranceEvent::Dropped);
            self.trim_idle();
        }
    }

    /// At the end of an utterance on a busy worker (the latest decode of the buffer
    /// is at least [`PolicyConfig::agreement_gap_ms`] older than the end), the words of
    /// that decode not yet shown: the utterance's final, which will replace them, may
    /// wait behind other streams' finals, and these words would wait with it. A word
    /// ending within [`CLOSING_EDGE_MS`] of that decode's audio may have been cut and
    /// waits. Only where settling is on ([`PolicyConfig::settle_ms`]), and not while a
    /// decode is in flight: its answer covers the end and commits everything it hears.
    fn commit_heard_at_end(&mut self, end: u64) -> Option<Caption> {
        if self.config.settle_ms == 0 || self.in_flight.is_some() {
            return None;
        }
        let latest = self.history.back()?;
        if !self.latest_decode_is_a_gap_before(end) {
            return None;
        }
        let fresh = self.uncommitted(&latest.words);
        let count = ending_by(
            &fresh,
            (latest.end / SAMPLES_PER_MS).saturating_sub(CLOSING_EDGE_MS),
        );
        self.commit(fresh[..count].to_vec(), false)
    }

    /// Whether the latest decode's audio ends at least [`PolicyConfig::agreement_gap_ms`]
    /// before absolute sample `end` (or there is none): the stream's decodes come that
    /// far apart, as on a busy worker.
    fn latest_decode_is_a_gap_before(&self, end: u64) -> bool {
        let gap = Self::ms_to_samples(self.config.agreement_gap_ms);
        self.history
            .back()
            .is_none_or(|latest| latest.end + gap <= end)
    }

    /// Captions committed without a decode (see [`Policy::commit_heard_at_end`]) since
    /// the last call, oldest first.
    pub fn take_captions(&mut self) -> Vec<Caption> {
        std::mem::take(&mut self.closing)
    }

    /// Drops silence that no utterance or decode needs, keeping the pre-roll.
    fn trim_idle(&mut self) {
        if self.in_flight.is_some() || !self.ended.is_empty() {
            return;
        }
        let preroll = Self::ms_to_samples(self.config.preroll_ms);
        let keep_from = match &self.utterance {
            // Before its speech there is only silence (or committed audio, before
            // `buffer_start` already).
            Some(utterance) => utterance.speech_start.saturating_sub(preroll),
            None => self.buffer_end().saturating_sub(preroll),
        };
        if keep_from > self.buffer_start {
            self.trim_to(keep_from);
        }
    }

    /// Drops the audio before absolute sample `at`; the committed words that end there
    /// are remembered by text only.
    fn trim_to(&mut self, at: u64) {
        let at = at.clamp(self.buffer_start, self.buffer_end());
        self.buffer.drain(..(at - self.buffer_start) as usize);
        self.buffer_start = at;
        let at_ms = at / SAMPLES_PER_MS;
        let kept = self.committed.iter().position(|w| w.end_ms > at_ms);
        let gone: Vec<Word> = self
            .committed
            .drain(..kept.unwrap_or(self.committed.len()))
            .collect();
        if !gone.is_empty() {
            // The resumed words came before every word committed here.
            self.trimmed_tail.append(&mut self.resumed_tail);
            self.trimmed_tail
                .extend(gone.iter().map(|w| units(&w.text)));
            let excess = self.trimmed_tail.len().saturating_sub(TRIMMED_TAIL_WORDS);
            self.trimmed_tail.drain(..excess);
            if self.config.prompt_chars > 0 {
                let context = std::mem::take(&mut self.context);
                let joined = join_words(
                    std::iter::once(context.as_str()).chain(gone.iter().map(|w| w.text.as_str())),
                );
                let skip = joined.chars().count().saturating_sub(MAX_CONTEXT_CHARS);
                self.context = joined.chars().skip(skip).collect();
            }
        }
    }

    /// The prompt for the next decode: the last `prompt_chars` of the context.
    fn prompt(&self) -> Option<String> {
        if self.config.prompt_chars == 0 || self.context.is_empty() {
            return None;
        }
        let skip = self
            .context
            .chars()
            .count()
            .saturating_sub(self.config.prompt_chars);
        Some(self.context.chars().skip(skip).collect())
    }

    /// Finalizes the current utterance (push-to-talk release, end of stream): its next
    /// decode commits everything it hears. Audio pushed later starts a new utterance.
    pub fn flush(&mut self) {
        if !self.partial_block.is_empty() {
            // The partial block still belongs to the utterance.
            let partial = std::mem::take(&mut self.partial_block);
            self.push_block(&partial);
        }
        self.end_utterance();
    }

    /// True when there is nothing left to decode or commit: no open or ended utterance
    /// and no decode in flight. The worker ends a stream once flushed and idle.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.ended.is_empty() && self.utterance.is_none()
    }

    /// Whether [`Policy::next_decode`] would return a decode now (it is not taken).
    pub fn decode_due(&self) -> bool {
        self.in_flight.is_none() && (!self.ended.is_empty() || self.open_utterance_due())
    }

    /// The open utterance has `step_ms` of new audio since the last decode and enough
    /// speech to be decoded.
    fn open_utterance_due(&self) -> bool {
        let step = Self::ms_to_samples(self.config.step_ms);
        let min_speech = Self::ms_to_samples(self.config.min_speech_ms);
        self.utterance.as_ref().is_some_and(|utterance| {
            self.buffer_end() >= self.last_decode_end + step
                && utterance.speech_samples >= min_speech
        })
    }

    /// The decode to run now, if one is due and none is in flight: an ended utterance's
    /// finalizing decode first, else a re-decode of the open utterance once `step_ms` of
    /// new audio has arrived.
    pub fn next_decode(&mut self) -> Option<DecodeRequest> {
        if self.in_flight.is_some() {
            return None;
        }
        let (end, finalize, force) = if let Some(ended) = self.ended.front() {
            // An ended utterance lies inside the buffer: only its finalize trims it.
            (
                ended.end.clamp(self.buffer_start, self.buffer_end()),
                true,
                false,
            )
        } else {
            if !self.open_utterance_due() {
                return None;
            }
            let end = self.buffer_end();
            let force = end - self.buffer_start >= Self::ms_to_samples(self.config.max_buffer_ms);
            (end, false, force)
        };
        // The encoder covers at most 30 s with the margin: a buffer beyond that (only
        // when decodes keep failing) loses its oldest audio rather than failing forever.
        let max_samples = DecodeRequest::max_samples(&self.config);
        if end - self.buffer_start > max_samples {
            tracing::warn!(
                dropped_ms = (end - self.buffer_start - max_samples) / SAMPLES_PER_MS,
                "streaming buffer over the encoder window, dropping its oldest audio"
            );
            self.trim_to(end - max_samples);
            self.history.clear();
        }
        let id = self.next_id;
        self.next_id += 1;
        self.last_decode_end = self.last_decode_end.max(end);
        self.in_flight = Some(InFlight {
            id,
            start: self.buffer_start,
            end,
            finalize,
            force,
        });
        let samples = self.buffer[..(end - self.buffer_start) as usize].to_vec();
        Some(DecodeRequest::sized(
            id,
            samples,
            self.buffer_start / SAMPLES_PER_MS,
            &self.config,
            self.prompt(),
            DecodeKind::Caption,
        ))
    }

    /// Takes the words of decode `id` (times relative to the request's samples) and
    /// returns what is newly committed and the uncommitted tail. An unknown or stale
    /// `id` is ignored (empty output).
    pub fn on_decoded(&mut self, id: u64, words: Vec<Word>) -> PolicyOutput {
        let Some(request) = self.in_flight.filter(|r| r.id == id) else {
            return PolicyOutput::default();
        };
        self.in_flight = None;
        let request_start_ms = request.start / SAMPLES_PER_MS;
        let request_end_ms = request.end / SAMPLES_PER_MS;
        let words: Vec<Word> = words
            .into_iter()
            .map(|mut word| {
                word.start_ms += request_start_ms;
                word.end_ms = (word.end_ms + request_start_ms).min(request_end_ms);
                word
            })
            // The padding after the real audio holds no words.
            .filter(|word| word.start_ms < request_end_ms && !normalize(&word.text).is_empty())
            .collect();
        let audio_s = (request.end - request.start) as f64 / f64::from(WHISPER_SAMPLE_RATE_HZ);
        let (words, looped) = cut_loop(words, audio_s, self.config.max_words_per_s);
        let (words, squeezed) = drop_squeezed_repeats(words);
        if squeezed > 0 {
            tracing::debug!(
                id,
                units = squeezed,
                "squeezed repeat removed from hypothesis"
            );
        }

        // The hypothesis already covers an ended utterance's speech: it is as good as
        // the finalizing decode would be, so commit it now and save that decode.
        let covers_ended = self.ended.front().is_some_and(|ended| {
            ended.speech_end + Self::ms_to_samples(REUSE_MARGIN_MS) <= request.end
        });
        if request.finalize || (covers_ended && !looped) {
            return self.finalize(words);
        }
        if looped {
            // A looping hypothesis is no evidence for agreement; keep the last tail.
            tracing::debug!(id, "streaming hypothesis discarded: repetition loop");
            return PolicyOutput {
                captions: Vec::new(),
                interim: self.current_interim(),
            };
        }

        let fresh = self.uncommitted(&words);
        let gap = Self::ms_to_samples(self.config.agreement_gap_ms);

        let agreed = self
            .history
            .iter()
            .rev()
            .find(|older| older.end + gap <= request.end)
            .map_or(0, |older| {
                common_prefix(&self.uncommitted(&older.words), &fresh)
            });
        // Words that end at least `edge` before the decoded audio's end.
        let settled = |edge: u64| ending_by(&fresh, request_end_ms.saturating_sub(edge));
        let mut commit_count = agreed;
        if request.force {
            // Speech without a pause: commit all but the edge, where words may be cut.
            commit_count = commit_count.max(settled(FORCE_COMMIT_EDGE_MS));
        }
        // Decodes at least the agreement gap apart (a busy worker): a word heard with
        // `settle_ms` of audio after it is committed without waiting for another decode
        // to agree. Decodes closer together (an idle worker) agree soon anyway, and a
        // word they keep changing waits for agreement.
        if self.config.settle_ms > 0 && self.latest_decode_is_a_gap_before(request.end) {
            commit_count = commit_count.max(settled(u64::from(self.config.settle_ms)));
        }
        let (commit, tail) = fresh.split_at(commit_count);
        let mut output = PolicyOutput::default();
        if let Some(caption) = self.commit(commit.to_vec(), false) {
            output.captions.push(caption);
        }
        output.interim = make_interim(self.after_committed(tail.to_vec()));
        self.history.push_back(Hypothesis {
            end: request.end,
            words,
        });
        while self.history.len() > HISTORY_LEN {
            self.history.pop_front();
        }
        let buffer_ms = (self.buffer_end() - self.buffer_start) / SAMPLES_PER_MS;
        if request.force || buffer_ms >= u64::from(self.config.trim_after_ms) {
            self.trim_at_committed(tail.first(), request.force.then_some(request.end));
        }
        output
    }

    /// Tells the policy that decode `id` failed. A re-decode is simply due again later;
    /// a finalizing decode is retried, then its utterance is closed without the
    /// uncommitted words so that a persistent error cannot stall the stream.
    pub fn on_decode_failed(&mut self, id: u64) -> PolicyOutput {
        let Some(request) = self.in_flight.filter(|r| r.id == id) else {
            return PolicyOutput::default();
        };
        self.in_flight = None;
        if !request.finalize {
            return PolicyOutput {
                captions: Vec::new(),
                interim: self.current_interim(),
            };
        }
        let give_up = self.ended.front_mut().is_some_and(|ended| {
            ended.failures += 1;
            ended.failures >= MAX_FINALIZE_FAILURES
        });
        if give_up {
            tracing::warn!(id, "streaming utterance closed after failed decodes");
            return self.finalize(Vec::new());
        }
        PolicyOutput::default()
    }

    /// Commits all of `words` not yet committed and closes the oldest ended utterance.
    fn finalize(&mut self, words: Vec<Word>) -> PolicyOutput {
        let Some(ended) = self.ended.front().copied() else {
            return PolicyOutput::default();
        };
        let end_ms = ended.end / SAMPLES_PER_MS;
        let fresh: Vec<Word> = self
            .uncommitted(&words)
            .into_iter()
            .filter(|w| w.start_ms < end_ms)
            .collect();
        let output = PolicyOutput {
            captions: self.commit(fresh, true).into_iter().collect(),
            interim: None,
        };
        self.close_ended(ended.end);
        output
    }

    /// Closes every ended utterance up to absolute sample `end` without decoding it:
    /// [`crate::live::Live`] decoded it whole for the minutes, and that final replaces
    /// its captions, so the policy's own finalizing decode would be wasted. Does nothing
    /// while a decode of this policy is in flight (its answer closes the utterance).
    pub fn close_finalized(&mut self, end: u64) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(last_end) = self
            .ended
            .iter()
            .rev()
            .find(|ended| ended.end <= end)
            .map(|ended| ended.end)
        else {
            return;
        };
        self.committed_end_ms = self.committed_end_ms.max(last_end / SAMPLES_PER_MS);
        self.close_ended(last_end);
    }

    /// Drops the ended utterances up to absolute sample `end` and their audio. The next
    /// utterance starts after a silence: no word of these can be heard again.
    fn close_ended(&mut self, end: u64) {
        while self.ended.front().is_some_and(|ended| ended.end <= end) {
            self.ended.pop_front();
        }
        // Everything up to the utterance's end is done; later audio stays.
        self.trim_to(end);
        self.committed.clear();
        self.resumed_tail.clear();
        self.trimmed_tail.clear();
        self.history.clear();
        self.last_decode_end = self.last_decode_end.max(end);
        self.trim_idle();
    }

    /// Voice-activity events since the last call, oldest first.
    pub fn take_utterance_events(&mut self) -> Vec<UtteranceEvent> {
        std::mem::take(&mut self.events)
    }

    /// The tail of the latest hypothesis that is not committed.
    fn current_interim(&self) -> Option<Interim> {
        let latest = self.history.back()?;
        make_interim(self.after_committed(self.uncommitted(&latest.words)))
    }

    /// `words` moved to start no earlier than the last committed word's end: times from
    /// different decodes jitter by tens of milliseconds, and captions promise time order.
    fn after_committed(&self, mut words: Vec<Word>) -> Vec<Word> {
        let mut floor_ms = self.committed_end_ms;
        for word in &mut words {
            word.start_ms = word.start_ms.max(floor_ms);
            word.end_ms = word.end_ms.max(word.start_ms);
            floor_ms = word.end_ms;
        }
        words
    }

    /// Commits `words`: the caption to emit, if there are any.
    fn commit(&mut self, words: Vec<Word>, utterance_end: bool) -> Option<Caption> {
        let words = self.after_committed(words);
        let caption = make_caption(words, utterance_end)?;
        self.committed_end_ms = caption.end_ms;
        self.committed.extend_from_slice(&caption.words);
        Some(caption)
    }

    /// Trims the buffer at the committed words: at the earlier of the last committed
    /// word's end and the next word's start. `fallback_end`: where to cut when nothing
    /// is committed (a forced commit of audio that holds no words).
    fn trim_at_committed(&mut self, next_word: Option<&Word>, fallback_end: Option<u64>) {
        let cut_ms = match (self.committed.last(), next_word) {
            (Some(last), Some(next)) => last.end_ms.min(next.start_ms),
            (Some(last), None) => last.end_ms,
            (None, _) => match fallback_end {
                Some(end) => {
                    end.saturating_sub(FORCE_COMMIT_EDGE_MS * SAMPLES_PER_MS) / SAMPLES_PER_MS
                }
                None => return,
            },
        };
        let cut = cut_ms * SAMPLES_PER_MS;
        if cut <= self.buffer_start {
            return;
        }
        self.trim_to(cut);
        // Older hypotheses covered audio that is gone: they no longer align.
        self.history.clear();
    }

    /// The words of `hypothesis` after the committed ones it repeats, matched by text
    /// (timestamps jitter; matching by time deletes real words). Text is compared in
    /// [`units`]: whole words in spaced scripts, characters in Japanese, where a token
    /// may straddle what was committed ("予算会" committed, "会議" heard: "議" is new).
    ///
    /// First, the end of a trimmed committed word heard again at the buffer's start: an
    /// exact match of the last trimmed words only, since that audio is mostly gone.
    /// Then the committed words still in the buffer, aligned by edit distance: the split
    /// is the hypothesis prefix closest to them, preferring one that ends with the last
    /// committed unit, else the shortest (a duplicate is better than a lost word).
    fn uncommitted(&self, hypothesis: &[Word]) -> Vec<Word> {
        let heard: Vec<String> = hypothesis.iter().flat_map(|w| units(&w.text)).collect();
        let tail: Vec<String> = self.trimmed_tail.concat();
        let skip = (1..=tail.len().min(heard.len()))
            .rev()
            .find(|&k| heard[..k] == tail[tail.len() - k..])
            .unwrap_or(0);
        let committed: Vec<String> = self
            .resumed_tail
            .iter()
            .flatten()
            .cloned()
            .chain(self.committed.iter().flat_map(|w| units(&w.text)))
            .collect();
        if committed.is_empty() {
            return drop_units(hypothesis, skip);
        }
        let rest = &heard[skip..];
        let distances = prefix_distances(&committed, rest);
        let best = distances.iter().copied().min().unwrap_or(0);
        let last = committed.last();
        let split = (1..distances.len())
            .rev()
            .find(|&j| distances[j] == best && rest.get(j - 1) == last)
            .or_else(|| distances.iter().position(|&d| d == best))
            .unwrap_or(0);
        drop_units(hypothesis, skip + split)
    }

    /// Replaces the tuning (the worker does once the stream's language is known, see
    /// [`PolicyConfig::for_language`]); audio and committed words are kept.
    pub fn set_config(&mut self, config: PolicyConfig) {
        if config.vad != self.config.vad {
            self.detector = config.vad.detector();
        }
        self.config = config;
    }

    /// The tuning in use.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Where a successor should resume (persist it after each final).
    pub fn checkpoint(&self) -> Checkpoint {
        let tail: Vec<String> = self
            .resumed_tail
            .iter()
            .map(|units| units.concat())
            .chain(self.committed.iter().map(|w| w.text.clone()))
            .collect();
        Checkpoint {
            committed_offset_ms: self.buffer_start / SAMPLES_PER_MS,
            committed_text_tail: tail.join(" "),
        }
    }
}

/// What agreement and de-duplication compare: lower case, letters and digits only, so
/// "Hello," equals "hello". Works for any script (CJK characters are alphanumeric).
pub(crate) fn normalize(word: &str) -> String {
    word.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// What alignment compares, word by word: [`normalize`]d text cut into units, one per
/// run of spaced-script letters ("hello," → ["hello"]) and one per unspaced character
/// ("予算。" → ["予", "算"], "Kirokuの" → ["kiroku", "の"]). English words are one unit
/// each, so for English this is word-level alignment.
pub(crate) fn units(word: &str) -> Vec<String> {
    unit_spans(word).into_iter().map(|(_, unit)| unit).collect()
}

/// [`units`] with the byte offset in `word` where each one starts.
fn unit_spans(word: &str) -> Vec<(usize, String)> {
    let mut spans: Vec<(usize, String)> = Vec::new();
    let mut in_run = false;
    for (offset, c) in word.char_indices().filter(|(_, c)| c.is_alphanumeric()) {
        let unspaced = is_unspaced(c);
        match spans.last_mut() {
            Some((_, run)) if in_run && !unspaced => run.extend(c.to_lowercase()),
            _ => spans.push((offset, c.to_lowercase().collect())),
        }
        in_run = !unspaced;
    }
    spans
}

/// The words of a checkpoint's space-joined text tail, as [`units`].
fn normalized_words(text: &str) -> Vec<Vec<String>> {
    text.split_whitespace()
        .map(units)
        .filter(|w| !w.is_empty())
        .collect()
}

/// `words` without their first `count` [`units`]. A word cut inside keeps its text
/// after the dropped units (its punctuation included) and starts proportionally later.
fn drop_units(words: &[Word], count: usize) -> Vec<Word> {
    remove_units(words, 0..count)
}

/// `words` without the [`units`] numbered `removed` (counted over all the words). A
/// word cut inside keeps the text of its other units; its time shrinks in proportion
/// to the characters removed on each side. Punctuation goes with the unit before it,
/// except at a word's start, where it stays with the word.
fn remove_units(words: &[Word], removed: Range<usize>) -> Vec<Word> {
    let mut out = Vec::with_capacity(words.len());
    let mut first_unit = 0;
    for word in words {
        let spans = unit_spans(&word.text);
        let units = first_unit..first_unit + spans.len();
        first_unit = units.end;
        let cut = removed.start.max(units.start)..removed.end.min(units.end);
        if cut.is_empty() {
            out.push(word.clone());
            continue;
        }
        if cut == units {
            continue;
        }
        let offset = |unit: usize| {
            spans
                .get(unit - units.start)
                .map_or(word.text.len(), |s| s.0)
        };
        let cut_from = if cut.start == units.start {
            0
        } else {
            offset(cut.start)
        };
        let cut_to = offset(cut.end);
        let chars = |text: &str| text.chars().count() as u64;
        let (before, after) = (&word.text[..cut_from], &word.text[cut_to..]);
        let removed_ms = word.end_ms.saturating_sub(word.start_ms)
            * chars(&word.text[cut_from..cut_to])
            / chars(&word.text).max(1);
        // Characters removed at the start delay it; at the end, they pull it in.
        let (start_ms, end_ms) = match (before.is_empty(), after.is_empty()) {
            (true, _) => (word.start_ms + removed_ms, word.end_ms),
            (false, true) => (word.start_ms, word.end_ms - removed_ms),
            (false, false) => (word.start_ms, word.end_ms),
        };
        out.push(Word {
            text: format!("{before}{after}"),
            start_ms,
            end_ms,
            probability: word.probability,
        });
    }
    out
}

/// Edit distance between `reference` and every prefix `heard[..j]`, for j = 0..=len.
fn prefix_distances(reference: &[String], heard: &[String]) -> Vec<usize> {
    // Row i holds the distances of reference[..i] to each prefix of `heard`.
    let mut row: Vec<usize> = (0..=heard.len()).collect();
    for (i, expected) in reference.iter().enumerate() {
        let mut next = vec![i + 1; heard.len() + 1];
        for (j, word) in heard.iter().enumerate() {
            let substitution = row[j] + usize::from(expected != word);
            next[j + 1] = substitution.min(row[j + 1] + 1).min(next[j] + 1);
        }
        row = next;
    }
    row
}

/// How many leading words of `b` the older hypothesis `a` agrees on, compared by
/// [`units`]: English words must match whole ("the" never agrees with "there"), while
/// Japanese agrees character by character whatever the token split ("予算" + "会議"
/// and "予算会" + "議" agree on both words), so it commits as early as English does.
fn common_prefix(a: &[Word], b: &[Word]) -> usize {
    let mut older = a.iter().flat_map(|w| units(&w.text));
    b.iter()
        .take_while(|word| {
            units(&word.text)
                .into_iter()
                .all(|u| older.next() == Some(u))
        })
        .count()
}

fn join_text(words: &[Word]) -> String {
    join_words(words.iter().map(|w| w.text.as_str()))
}

fn make_caption(words: Vec<Word>, utterance_end: bool) -> Option<Caption> {
    let start_ms = words.first()?.start_ms;
    let end_ms = words.last()?.end_ms;
    Some(Caption {
        text: join_text(&words),
        words,
        start_ms,
        end_ms,
        utterance_end,
    })
}

fn make_interim(words: Vec<Word>) -> Option<Interim> {
    let start_ms = words.first()?.start_ms;
    let end_ms = words.last()?.end_ms;
    Some(Interim {
        text: join_text(&words),
        words,
        start_ms,
        end_ms,
    })
}

/// Longest repeated n-gram checked by the loop guard (Whisper loops on short phrases).
const MAX_LOOP_NGRAM: usize = 8;

/// Finds a repetition loop: an n-gram (2 ≤ n ≤ 8) repeated three times in a row, a single
/// word four times (three is real speech: "no, no, no"), or more words than `audio_s` of
/// speech can hold at `max_words_per_s`. Returns the words before the loop (the first
/// occurrence kept) and whether one was found.
pub(crate) fn cut_loop(words: Vec<Word>, audio_s: f64, max_words_per_s: f64) -> (Vec<Word>, bool) {
    let heard: Vec<String> = words.iter().map(|w| normalize(&w.text)).collect();
    let mut cut = None;
    'search: for start in 0..heard.len() {
        for n in 1..=MAX_LOOP_NGRAM {
            let repeats = if n == 1 { 4 } else { 3 };
            if start + repeats * n > heard.len() {
                break;
            }
            let gram = &heard[start..start + n];
            if (1..repeats).all(|k| heard[start + k * n..start + (k + 1) * n] == *gram) {
                cut = Some(start + n);
                break 'search;
            }
        }
    }
    let max_words = (audio_s * max_words_per_s).ceil() as usize + 4;
    let cut = match cut {
        Some(at) => Some(at.min(max_words)),
        None if words.len() > max_words => Some(max_words),
        None => None,
    };
    match cut {
        Some(at) => (words.into_iter().take(at).collect(), true),
        None => (words, false),
    }
}

/// A squeezed repeat has at least this many characters: shorter ones ("の", "no") are
/// common in real speech and their timestamps are too coarse to judge.
const MIN_SQUEEZED_REPEAT_CHARS: usize = 4;
/// Longest squeezed repeat looked for, in units (a Japanese sentence, a long English
/// clause); a longer copy is removed a piece at a time.
const MAX_SQUEEZED_REPEAT_UNITS: usize = 32;
/// Text given less time than this per character was not heard: the Japanese test meeting
/// is spoken at 4.4 characters a second (~230 ms each), while the recorded copies got
/// 4–14 ms a character.
const SQUEEZED_MS_PER_CHAR: u64 = 20;

/// Whisper's other loop, seen with the Japanese prompt on short buffers: a phrase heard
/// once is written twice, and the extra copy gets (almost) no time, its tokens piled
/// on one timestamp: "質問ななければ[500-1420] 質問ななければ。[1420-1450]" at the edge of
/// the audio, or a sentence squeezed in before it is spoken. The agreement rarely
/// commits one, but a finalizing decode commits everything it hears.
///
/// Removes every copy of at least [`MIN_SQUEEZED_REPEAT_CHARS`] that takes less than
/// [`SQUEEZED_MS_PER_CHAR`] a character and repeats the [`units`] right before or after
/// it (within its own length: a loop's next turn). Returns the words and how many units
/// were removed.
pub(crate) fn drop_squeezed_repeats(mut words: Vec<Word>) -> (Vec<Word>, usize) {
    let mut removed = 0;
    while let Some(copy) = find_squeezed_repeat(&words) {
        removed += copy.len();
        words = remove_units(&words, copy);
    }
    (words, removed)
}

/// The first (then longest) squeezed repeat in `words`, as a range of [`units`].
fn find_squeezed_repeat(words: &[Word]) -> Option<Range<usize>> {
    // Each unit with the word it belongs to.
    let units: Vec<(&Word, String)> = words
        .iter()
        .flat_map(|w| units(&w.text).into_iter().map(move |u| (w, u)))
        .collect();
    let same = |a: usize, b: usize, len: usize| (0..len).all(|k| units[a + k].1 == units[b + k].1);
    // chars_before[i]: characters in the units before unit i.
    let chars_before: Vec<usize> = std::iter::once(0)
        .chain(units.iter().scan(0, |total, (_, u)| {
            *total += u.chars().count();
            Some(*total)
        }))
        .collect();
    for start in 0..units.len() {
        let longest = (units.len() - start).min(MAX_SQUEEZED_REPEAT_UNITS);
        for len in (1..=longest).rev() {
            let end = start + len;
            let chars = chars_before[end] - chars_before[start];
            if chars < MIN_SQUEEZED_REPEAT_CHARS {
                break;
            }
            let span_ms = units[end - 1]
                .0
                .end_ms
                .saturating_sub(units[start].0.start_ms);
            if span_ms >= SQUEEZED_MS_PER_CHAR * chars as u64 {
                continue;
            }
            // Another copy ending at most `len` units before, or starting at most `len`
            // units after.
            let before = start.saturating_sub(2 * len)..(start + 1).saturating_sub(len);
            let after = end..(end + len + 1).min((units.len() + 1).saturating_sub(len));
            if before.chain(after).any(|other| same(other, start, len)) {
                return Some(start..end);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{heard, silence, speech, word};

    fn texts(finals: &[Caption]) -> Vec<&str> {
        finals.iter().map(|f| f.text.as_str()).collect()
    }

    /// A policy that has heard `ms` of speech from 0 (no pre-roll to account for).
    fn speaking(config: PolicyConfig, ms: u64) -> Policy {
        let mut policy = Policy::new(config, None);
        policy.push_audio(0, &speech(ms));
        policy
    }

    fn push_speech(policy: &mut Policy, ms: u64) {
        let at = policy.position;
        policy.push_audio(at, &speech(ms));
    }

    /// Runs the due decode, which hears `words` (times relative to its audio).
    fn decode_hearing(policy: &mut Policy, words: &[(&str, u64, u64)]) -> PolicyOutput {
        let request = policy.next_decode().expect("a decode is due");
        policy.on_decoded(request.id, heard(&request, words))
    }

    fn step_500() -> PolicyConfig {
        PolicyConfig {
            step_ms: 500,
            ..PolicyConfig::default()
        }
    }

    #[test]
    fn silence_is_never_decoded_and_only_the_preroll_is_kept() {
        let mut policy = Policy::new(PolicyConfig::default(), None);
        policy.push_audio(0, &silence(5_000));
        assert!(policy.next_decode().is_none());
        assert!(policy.is_idle());
        assert_eq!(policy.buffer.len() as u64, 300 * SAMPLES_PER_MS);
        assert_eq!(policy.checkpoint().committed_offset_ms, 4_700);
        policy.flush();
        assert!(
            policy.next_decode().is_none(),
            "flushing silence decodes nothing"
        );

        // Speech then starts with the pre-roll in front of it.
        push_speech(&mut policy, 300);
        let request = policy.next_decode().expect("one step of speech");
        assert_eq!(request.start_ms, 4_700);
        assert_eq!(request.samples.len(), MIN_DECODE_SAMPLES, "padded to 1 s");
        assert_eq!(request.audio_ctx, 50 + 100);
    }

    #[test]
    fn a_click_is_not_an_utterance() {
        let mut policy = Policy::new(PolicyConfig::default(), None);
        policy.push_audio(0, &speech(40));
        policy.push_audio(640, &silence(1_000));
        assert!(policy.next_decode().is_none());
        assert!(policy.is_idle());
    }

    #[test]
    fn agreement_commits_only_the_prefix_an_older_hypothesis_agrees_on() {
        let mut policy = speaking(step_500(), 500);
        let first = policy.next_decode().expect("first decode after one step");
        let out = policy.on_decoded(first.id, heard(&first, &[("Hello", 100, 400)]));
        assert!(out.captions.is_empty(), "nothing to agree with yet");
        assert_eq!(out.interim.expect("interim").text, "Hello");

        push_speech(&mut policy, 500);
        let second = policy.next_decode().expect("due after one step");
        let out = policy.on_decoded(
            second.id,
            heard(&second, &[("hello,", 100, 400), ("word", 450, 900)]),
        );
        // Agreement compares normalized text: "Hello" == "hello,".
        assert_eq!(texts(&out.captions), ["hello,"]);
        assert_eq!(out.interim.expect("interim").text, "word");

        push_speech(&mut policy, 500);
        let third = policy.next_decode().expect("due");
        let out = policy.on_decoded(
            third.id,
            heard(
                &third,
                &[
                    ("Hello", 100, 400),
                    ("world", 450, 900),
                    ("how", 1_000, 1_300),
                ],
            ),
        );
        assert!(
            out.captions.is_empty(),
            "\"word\" != \"world\": nothing new agrees"
        );
        let interim = out.interim.expect("interim");
        assert_eq!(interim.text, "world how");
        assert_eq!((interim.start_ms, interim.end_ms), (450, 1_300));
    }

    #[test]
    fn a_word_heard_with_enough_audio_after_it_is_committed_without_agreement() {
        let settling = PolicyConfig {
            settle_ms: 1_000,
            ..PolicyConfig::default()
        };
        assert_eq!(settling.step_ms, 250);
        let mut policy = speaking(settling, 2_500);
        let out = decode_hearing(
            &mut policy,
            &[
                ("Hello", 100, 400),
                ("there", 450, 1_500),
                ("friends", 1_600, 2_400),
            ],
        );
        // "Hello" and "there" end 1 s or more before the audio's end (2.5 s); "friends"
        // is at the edge and waits for agreement.
        assert_eq!(texts(&out.captions), ["Hello there"]);
        assert_eq!(out.interim.expect("interim").text, "friends");

        // The next decode only 0.3 s later (closer than the agreement gap, an idle
        // worker's pace): a word it hears differently waits for agreement, however much
        // audio follows it.
        push_speech(&mut policy, 300);
        let out = decode_hearing(
            &mut policy,
            &[
                ("Hello", 100, 400),
                ("there", 450, 1_500),
                ("fiends", 1_600, 1_700),
                ("today", 1_800, 2_700),
            ],
        );
        assert!(out.captions.is_empty(), "{:?}", out.captions);

        // Without it (as in Japanese) the same decode commits nothing on first sight.
        let agreement_only = PolicyConfig {
            settle_ms: 0,
            ..step_500()
        };
        assert_eq!(step_500().for_language("ja").settle_ms, 0);
        let mut policy = speaking(agreement_only, 2_500);
        let out = decode_hearing(&mut policy, &[("Hello", 100, 400), ("there", 450, 1_500)]);
        assert!(out.captions.is_empty(), "{:?}", out.captions);
    }

    #[test]
    fn at_an_utterance_end_on_a_busy_worker_the_latest_decode_is_shown_at_once() {
        let hypothesis = [
            ("Hello", 100, 400),
            ("there", 450, 1_500),
            ("friends", 1_600, 2_100),
            ("to", 2_300, 2_450),
        ];
        let mut policy = speaking(PolicyConfig::default(), 2_500);
        let out = decode_hearing(&mut policy, &hypothesis);
        assert_eq!(texts(&out.captions), ["Hello there"]);
        // 0.8 s more speech without a decode (a busy worker), then the pause that ends
        // the utterance 1.1 s after the decoded audio: "friends" is shown now; "to",
        // within 0.3 s of that audio's end, may have been cut and waits for the final.
        push_speech(&mut policy, 800);
        assert!(policy.take_captions().is_empty(), "the utterance is open");
        let at = policy.position;
        policy.push_audio(at, &silence(300));
        assert_eq!(texts(&policy.take_captions()), ["friends"]);
        assert!(policy.take_captions().is_empty(), "taken once");

        // The utterance ends 0.3 s after the decoded audio (an idle worker): the final
        // comes soon, nothing is shown early.
        let mut policy = speaking(PolicyConfig::default(), 2_500);
        decode_hearing(&mut policy, &hypothesis);
        let at = policy.position;
        policy.push_audio(at, &silence(300));
        assert!(policy.take_captions().is_empty());

        // Nor where settling is off (Japanese).
        let mut policy = speaking(PolicyConfig::default().for_language("ja"), 2_500);
        decode_hearing(&mut policy, &hypothesis);
        push_speech(&mut policy, 800);
        let at = policy.position;
        policy.push_audio(at, &silence(600));
        assert!(policy.take_captions().is_empty());
    }

    #[test]
    fn japanese_agrees_by_characters_whatever_the_token_split() {
        let mut policy = speaking(step_500(), 500);
        let first = policy.next_decode().expect("first decode");
        policy.on_decoded(
            first.id,
            heard(&first, &[("予算", 100, 300), ("会", 300, 400)]),
        );
        push_speech(&mut policy, 500);
        let second = policy.next_decode().expect("due");
        // The same characters split into other tokens: "予算会" + "議" vs "予算" + "会議".
        let out = policy.on_decoded(
            second.id,
            heard(
                &second,
                &[("予算会", 100, 400), ("議", 400, 500), ("は", 500, 600)],
            ),
        );
        assert_eq!(
            texts(&out.captions),
            ["予算会"],
            "議 extends beyond what agreed"
        );
        assert_eq!(out.interim.expect("interim").text, "議は");
        push_speech(&mut policy, 500);
        let third = policy.next_decode().expect("due");
        let out = policy.on_decoded(
            third.id,
            heard(
                &third,
                &[
                    ("予算", 100, 300),
                    ("会議", 300, 500),
                    ("は", 500, 600),
                    ("明日", 600, 900),
                ],
            ),
        );
        // 予算会議は agrees with the second hypothesis; "会議" straddles the committed
        // 予算会, and is recognised as committed by its text alignment.
        let committed: String = out.captions.iter().map(|f| f.text.clone()).collect();
        assert!(committed.ends_with('は'), "committed {committed:?}");
        assert!(
            !committed.contains(' '),
            "no spaces in Japanese: {committed:?}"
        );
        assert_eq!(out.interim.expect("interim").text, "明日");
    }

    #[test]
    fn units_are_words_in_english_and_characters_in_japanese() {
        assert_eq!(units("Hello,"), ["hello"]);
        assert_eq!(units("予算。"), ["予", "算"]);
        assert_eq!(units("Kirokuの2025年"), ["kiroku", "の", "2025", "年"]);
        let words = [word("会議。", 1_000, 1_400), word("は", 1_400, 1_500)];
        let rest = drop_units(&words, 1);
        assert_eq!(rest[0].text, "議。");
        assert_eq!(
            rest[0].start_ms,
            1_000 + 400 / 3,
            "starts a third of the way in"
        );
        assert_eq!(rest[1].text, "は");
        assert_eq!(drop_units(&words, 2).len(), 1);
        assert_eq!(drop_units(&words, 0), words.to_vec());
    }

    #[test]
    fn committed_text_that_left_the_buffer_prompts_later_decodes_when_asked() {
        let config = PolicyConfig {
            prompt_chars: 4,
            ..PolicyConfig::default()
        };
        let mut policy = speaking(config, 600);
        policy.flush();
        let request = policy.next_decode().expect("finalize");
        assert_eq!(request.prompt, None, "nothing committed yet");
        let out = policy.on_decoded(
            request.id,
            heard(&request, &[("予算", 100, 300), ("会議です。", 300, 600)]),
        );
        assert_eq!(texts(&out.captions), ["予算会議です。"]);
        push_speech(&mut policy, 600);
        policy.flush();
        let request = policy.next_decode().expect("next utterance");
        assert_eq!(
            request.prompt.as_deref(),
            Some("議です。"),
            "the last 4 characters"
        );
        // Off by default (English): Whisper's timestamps drift with a prompt.
        let mut english = speaking(PolicyConfig::default(), 600);
        english.flush();
        let request = english.next_decode().expect("finalize");
        english.on_decoded(request.id, heard(&request, &[("Hello.", 100, 500)]));
        push_speech(&mut english, 600);
        english.flush();
        assert_eq!(english.next_decode().expect("next").prompt, None);
    }

    #[test]
    fn english_words_agree_only_whole() {
        let b = |words: &[&str]| -> Vec<Word> { words.iter().map(|w| word(w, 0, 0)).collect() };
        assert_eq!(common_prefix(&b(&["the"]), &b(&["there", "is"])), 0);
        assert_eq!(common_prefix(&b(&["there", "is"]), &b(&["the", "re"])), 0);
        assert_eq!(
            common_prefix(&b(&["Hello,", "wor"]), &b(&["hello", "world"])),
            1
        );
        assert_eq!(
            common_prefix(&b(&["budget"]), &b(&["budget", "meeting"])),
            1
        );
        assert_eq!(common_prefix(&b(&["予算", "会"]), &b(&["予算会", "議"])), 1);
        assert_eq!(common_prefix(&b(&["Kiroku", "の"]), &b(&["Kirokuの"])), 1);
        assert_eq!(common_prefix(&b(&["Kiro"]), &b(&["Kiroku", "の"])), 0);
    }

    #[test]
    fn a_hypothesis_closer_than_the_gap_is_not_used_for_agreement() {
        let config = PolicyConfig {
            step_ms: 200,
            agreement_gap_ms: 400,
            ..PolicyConfig::default()
        };
        let mut policy = speaking(config, 1_000);
        let a = policy.next_decode().expect("decode");
        policy.on_decoded(a.id, heard(&a, &[("one", 100, 300)]));
        push_speech(&mut policy, 200);
        let b = policy.next_decode().expect("decode after 200 ms");
        let out = policy.on_decoded(b.id, heard(&b, &[("one", 100, 300), ("two", 400, 600)]));
        assert!(
            out.captions.is_empty(),
            "the only older hypothesis is 200 ms older"
        );
        push_speech(&mut policy, 200);
        let c = policy.next_decode().expect("decode");
        let out = policy.on_decoded(
            c.id,
            heard(
                &c,
                &[("one", 100, 300), ("two", 400, 600), ("three", 700, 900)],
            ),
        );
        assert_eq!(
            texts(&out.captions),
            ["one"],
            "agrees with the hypothesis 400 ms older, not with the one before"
        );
    }

    #[test]
    fn committed_words_are_recognised_by_text_even_when_heard_differently() {
        let mut policy = speaking(step_500(), 1_000);
        let a = policy.next_decode().expect("decode");
        policy.on_decoded(a.id, heard(&a, &[("we", 100, 300), ("need", 350, 600)]));
        push_speech(&mut policy, 500);
        let b = policy.next_decode().expect("decode");
        let out = policy.on_decoded(
            b.id,
            heard(
                &b,
                &[("we", 100, 300), ("need", 350, 600), ("two", 700, 900)],
            ),
        );
        assert_eq!(texts(&out.captions), ["we need"]);
        push_speech(&mut policy, 500);
        let c = policy.next_decode().expect("decode");
        // The committed words come back with shifted times and one of them heard
        // differently; "two" agrees with the previous hypothesis. Time-based de-dup
        // would drop "two" (it starts before the last committed end).
        let out = policy.on_decoded(
            c.id,
            heard(
                &c,
                &[
                    ("We'll", 120, 280),
                    ("need", 300, 650),
                    ("two", 640, 900),
                    ("more", 950, 1_200),
                ],
            ),
        );
        assert_eq!(texts(&out.captions), ["two"]);
        assert_eq!(out.interim.expect("interim").text, "more");
    }

    #[test]
    fn de_duplication_by_text_holds_after_the_buffer_is_trimmed() {
        let config = PolicyConfig {
            step_ms: 500,
            trim_after_ms: 1_000,
            ..PolicyConfig::default()
        };
        let mut policy = speaking(config, 1_000);
        let a = policy.next_decode().expect("decode");
        policy.on_decoded(
            a.id,
            heard(
                &a,
                &[("the", 100, 300), ("plan", 350, 700), ("is", 750, 950)],
            ),
        );
        push_speech(&mut policy, 500);
        let b = policy.next_decode().expect("decode");
        let out = policy.on_decoded(
            b.id,
            heard(
                &b,
                &[
                    ("the", 100, 300),
                    ("plan", 350, 700),
                    ("is", 750, 950),
                    ("ready", 1_000, 1_400),
                ],
            ),
        );
        assert_eq!(texts(&out.captions), ["the plan is"]);
        // Trimmed at the earlier of "is" ending (950) and "ready" starting (1000).
        assert_eq!(policy.checkpoint().committed_offset_ms, 950);
        assert_eq!(policy.checkpoint().committed_text_tail, "");

        push_speech(&mut policy, 500);
        let c = policy.next_decode().expect("decode");
        assert_eq!(c.start_ms, 950);
        // The trimmed buffer still holds the end of "is", and Whisper hears it again.
        let out = policy.on_decoded(
            c.id,
            heard(&c, &[("is", 950, 980), ("ready", 1_000, 1_400)]),
        );
        assert!(
            out.captions.is_empty(),
            "no older hypothesis of this buffer yet"
        );
        assert_eq!(out.interim.expect("interim").text, "ready");
        push_speech(&mut policy, 500);
        let d = policy.next_decode().expect("decode");
        let out = policy.on_decoded(
            d.id,
            heard(&d, &[("ready", 1_000, 1_400), ("now", 1_500, 1_800)]),
        );
        assert_eq!(
            texts(&out.captions),
            ["ready"],
            "\"is\" is not committed twice"
        );
        policy.flush();
        let e = policy.next_decode().expect("flush decode");
        assert_eq!(e.start_ms, 1_400, "trimmed again after \"ready\"");
        let out = policy.on_decoded(
            e.id,
            heard(&e, &[("ready", 1_400, 1_420), ("now", 1_500, 1_800)]),
        );
        assert_eq!(texts(&out.captions), ["now"]);
    }

    #[test]
    fn silence_after_speech_finalizes_the_whole_utterance() {
        let mut policy = speaking(step_500(), 800);
        let a = policy.next_decode().expect("decode");
        policy.on_decoded(a.id, heard(&a, &[("good", 50, 300)]));
        policy.push_audio(12_800, &silence(280));
        assert!(
            policy.next_decode().is_none(),
            "280 ms of silence is a pause"
        );
        policy.push_audio(12_800 + 280 * 16, &silence(40));
        let b = policy
            .next_decode()
            .expect("finalize after 300 ms of silence");
        assert_eq!(b.start_ms, 0);
        let out = policy.on_decoded(
            b.id,
            heard(&b, &[("good", 50, 300), ("morning.", 350, 750)]),
        );
        assert_eq!(texts(&out.captions), ["good morning."]);
        assert!(out.captions[0].utterance_end);
        assert!(out.interim.is_none());
        assert!(policy.is_idle());
        let at = policy.position;
        policy.push_audio(at, &silence(1_000));
        assert!(
            policy.next_decode().is_none(),
            "silence is not decoded again"
        );
    }

    #[test]
    fn the_last_hypothesis_is_reused_when_it_already_covers_the_utterance() {
        let mut policy = speaking(step_500(), 600);
        policy.push_audio(9_600, &silence(240));
        let a = policy.next_decode().expect("decode");
        // While it runs, the silence grows to 300 ms and ends the utterance.
        policy.push_audio(13_440, &silence(100));
        let out = policy.on_decoded(a.id, heard(&a, &[("yes", 100, 500)]));
        assert_eq!(texts(&out.captions), ["yes"]);
        assert!(out.captions[0].utterance_end);
        assert!(policy.is_idle(), "no extra finalizing decode");
    }

    #[test]
    fn flush_commits_everything_and_the_stream_becomes_idle() {
        let mut policy = speaking(step_500(), 700);
        let a = policy.next_decode().expect("decode");
        policy.on_decoded(a.id, heard(&a, &[("please", 50, 400)]));
        push_speech(&mut policy, 10); // half a VAD block, kept by the flush
        assert!(!policy.is_idle());
        policy.flush();
        let b = policy.next_decode().expect("flush decode");
        assert_eq!(b.samples.len(), MIN_DECODE_SAMPLES);
        let out = policy.on_decoded(b.id, heard(&b, &[("please", 50, 400), ("send", 420, 700)]));
        assert_eq!(texts(&out.captions), ["please send"]);
        assert!(policy.is_idle());
        assert_eq!(policy.checkpoint().committed_offset_ms, 710);
    }

    #[test]
    fn a_long_buffer_without_pauses_is_force_committed_but_its_edge_is_not() {
        let config = PolicyConfig {
            max_buffer_ms: 3_000,
            ..PolicyConfig::default()
        };
        let mut policy = speaking(config, 3_000);
        let request = policy.next_decode().expect("decode");
        let out = policy.on_decoded(
            request.id,
            heard(
                &request,
                &[
                    ("long", 100, 1_000),
                    ("talk", 1_100, 1_900),
                    ("with", 2_200, 2_900),
                ],
            ),
        );
        assert_eq!(texts(&out.captions), ["long talk"], "no agreement needed");
        assert_eq!(out.interim.expect("interim").text, "with");
        assert_eq!(
            policy.checkpoint().committed_offset_ms,
            1_900,
            "trimmed at once"
        );
    }

    #[test]
    fn a_looping_hypothesis_is_discarded_or_cut_before_the_loop() {
        let mut policy = speaking(step_500(), 1_000);
        let a = policy.next_decode().expect("decode");
        let looped: Vec<(&str, u64, u64)> = (0..6)
            .map(|i| {
                (
                    if i % 2 == 0 { "good" } else { "morning" },
                    i * 100,
                    i * 100 + 100,
                )
            })
            .collect();
        let out = policy.on_decoded(a.id, heard(&a, &looped));
        assert!(
            out.captions.is_empty() && out.interim.is_none(),
            "discarded"
        );
        assert!(policy.history.is_empty(), "not kept for agreement");

        policy.flush();
        let b = policy.next_decode().expect("flush decode");
        let out = policy.on_decoded(b.id, heard(&b, &looped));
        assert_eq!(
            texts(&out.captions),
            ["good morning"],
            "committed up to the loop"
        );
    }

    /// Words `(text, start, end)` as heard, in ms from the buffer's start.
    fn words(list: &[(&str, u64, u64)]) -> Vec<Word> {
        list.iter().map(|&(t, s, e)| word(t, s, e)).collect()
    }

    fn joined(words: &[Word]) -> String {
        join_text(words)
    }

    /// The hypotheses below are real ones (base, Japanese meeting, prompted decodes).
    #[test]
    fn a_repeat_squeezed_into_no_time_is_removed_but_a_spoken_one_is_kept() {
        // A copy piled on the edge of the audio (CI saw it committed by a finalize).
        let doubled = words(&[
            ("質", 500, 740),
            ("問", 740, 1_060),
            ("な", 1_060, 1_220),
            ("な", 1_220, 1_260),
            ("けれ", 1_260, 1_420),
            ("ば", 1_420, 1_420),
            ("質", 1_420, 1_420),
            ("問", 1_420, 1_420),
            ("な", 1_420, 1_420),
            ("な", 1_420, 1_420),
            ("けれ", 1_420, 1_420),
            ("ば。", 1_420, 1_450),
        ]);
        let (kept, removed) = drop_squeezed_repeats(doubled);
        assert_eq!((joined(&kept).as_str(), removed), ("質問ななければ", 7));

        // The next turn of a loop, cut short by the edge: "本日の会議は|本日の会議".
        let restarted = words(&[
            ("本", 2_140, 2_380),
            ("日", 2_380, 2_400),
            ("の", 2_540, 2_780),
            ("会", 2_780, 2_780),
            ("議", 2_780, 2_780),
            ("は", 2_780, 2_780),
            ("本", 2_780, 2_780),
            ("日", 2_780, 2_780),
            ("の", 2_780, 2_780),
            ("会", 2_780, 2_820),
            ("議。", 2_820, 2_850),
        ]);
        let (kept, _) = drop_squeezed_repeats(restarted);
        assert_eq!(joined(&kept), "本日の会議は");

        // A sentence squeezed in before it is spoken: the spoken copy stays.
        let early = words(&[
            ("今", 0, 0),
            ("月", 0, 0),
            ("の", 0, 0),
            ("利", 0, 0),
            ("用", 0, 0),
            ("今", 420, 700),
            ("月", 700, 920),
            ("の", 920, 1_000),
            ("利", 1_000, 1_100),
            ("用", 1_100, 1_300),
        ]);
        let (kept, _) = drop_squeezed_repeats(early);
        assert_eq!(joined(&kept), "今月の利用");
        assert_eq!(kept[0].start_ms, 420);

        // Spoken twice, with the time that takes: speech, kept.
        let spoken = words(&[
            ("本日", 0, 400),
            ("の", 400, 500),
            ("会議", 500, 900),
            ("本日", 1_000, 1_400),
            ("の", 1_400, 1_500),
            ("会議。", 1_500, 1_900),
        ]);
        assert_eq!(drop_squeezed_repeats(spoken.clone()), (spoken, 0));
        // Short repeats are too common in speech to judge by their timestamps.
        let short = words(&[("はい、", 0, 300), ("はい。", 300, 300)]);
        assert_eq!(drop_squeezed_repeats(short.clone()), (short, 0));
        // English is judged the same way, word by word.
        let thanks = words(&[
            ("Thank", 0, 200),
            ("you.", 200, 500),
            ("Thank", 500, 500),
            ("you.", 500, 510),
        ]);
        assert_eq!(joined(&drop_squeezed_repeats(thanks).0), "Thank you.");
    }

    #[test]
    fn a_finalizing_decode_does_not_commit_a_squeezed_repeat() {
        let mut policy = speaking(PolicyConfig::default().for_language("ja"), 1_500);
        policy.flush();
        let request = policy.next_decode().expect("finalize");
        let out = policy.on_decoded(
            request.id,
            heard(
                &request,
                &[
                    ("質問", 500, 1_060),
                    ("なければ", 1_060, 1_420),
                    ("質問", 1_420, 1_420),
                    ("なければ。", 1_420, 1_450),
                ],
            ),
        );
        assert_eq!(texts(&out.captions), ["質問なければ"]);
    }

    #[test]
    fn units_are_removed_from_inside_words_with_their_share_of_time() {
        let heard = [word("会議は", 0, 300), word("本日の", 300, 600)];
        // Units 2..4: "は" and "本".
        let kept = remove_units(&heard, 2..4);
        assert_eq!(
            kept,
            [word("会議", 0, 200), word("日の", 400, 600)],
            "the first ends a third earlier, the second starts a third later"
        );
        assert_eq!(remove_units(&heard, 0..6), Vec::<Word>::new());
        assert_eq!(remove_units(&heard, 3..3), heard.to_vec());
    }

    #[test]
    fn too_many_words_for_the_audio_is_a_loop_but_three_repeats_of_a_word_are_speech() {
        let no = |i: u64| word("no", i * 100, i * 100 + 90);
        let (words, looped) = cut_loop((0..3).map(no).collect(), 1.0, 6.0);
        assert!(!looped && words.len() == 3, "\"no, no, no\"");
        let (words, looped) = cut_loop((0..4).map(no).collect(), 1.0, 6.0);
        assert!(looped && words.len() == 1);
        let many: Vec<Word> = (0..20)
            .map(|i| word(&format!("w{i}"), i * 50, i * 50 + 40))
            .collect();
        let (words, looped) = cut_loop(many, 1.0, 6.0);
        assert!(looped && words.len() == 10, "1 s holds at most 6 + 4 words");
    }

    #[test]
    fn a_resumed_policy_skips_replayed_audio_and_committed_words() {
        let mut policy = speaking(step_500(), 1_000);
        let a = policy.next_decode().expect("decode");
        policy.on_decoded(
            a.id,
            heard(&a, &[("budget", 100, 500), ("report", 550, 900)]),
        );
        push_speech(&mut policy, 500);
        let b = policy.next_decode().expect("decode");
        let out = policy.on_decoded(
            b.id,
            heard(
                &b,
                &[
                    ("budget", 100, 500),
                    ("report", 550, 900),
                    ("by", 1_000, 1_200),
                ],
            ),
        );
        assert_eq!(texts(&out.captions), ["budget report"]);
        let checkpoint = policy.checkpoint();
        assert_eq!(
            checkpoint,
            Checkpoint {
                committed_offset_ms: 0,
                committed_text_tail: "budget report".into()
            }
        );
        let json = serde_json::to_string(&checkpoint).expect("serialize");
        let restored: Checkpoint = serde_json::from_str(&json).expect("deserialize");

        // A successor gets the session's audio again from the start, then more.
        let mut successor = Policy::new(step_500(), Some(restored));
        successor.push_audio(0, &speech(1_500));
        successor.flush();
        let request = successor.next_decode().expect("decode");
        assert_eq!(request.start_ms, checkpoint.committed_offset_ms);
        let out = successor.on_decoded(
            request.id,
            heard(
                &request,
                &[
                    ("Budget", 100, 500),
                    ("report", 550, 900),
                    ("by", 1_000, 1_200),
                    ("Thursday.", 1_250, 1_450),
                ],
            ),
        );
        assert_eq!(texts(&out.captions), ["by Thursday."]);
    }

    #[test]
    fn a_checkpoint_after_a_finalized_utterance_starts_after_it() {
        let mut policy = speaking(step_500(), 800);
        policy.flush();
        let a = policy.next_decode().expect("decode");
        policy.on_decoded(a.id, heard(&a, &[("done", 100, 700)]));
        policy.push_audio(12_800, &silence(100));
        let checkpoint = policy.checkpoint();
        assert_eq!(checkpoint.committed_text_tail, "");
        let mut successor = Policy::new(step_500(), Some(checkpoint));
        successor.push_audio(0, &speech(800));
        successor.flush();
        assert!(
            successor.next_decode().is_none(),
            "the replayed utterance is not decoded"
        );
    }

    #[test]
    fn overlapping_chunks_and_stale_replies_are_ignored() {
        let mut policy = Policy::new(step_500(), None);
        policy.push_audio(0, &speech(600));
        policy.push_audio(0, &speech(600)); // the same frames again
        policy.push_audio(4_800, &speech(600)); // half new
        assert_eq!(policy.position, 900 * SAMPLES_PER_MS);
        let request = policy.next_decode().expect("decode");
        assert_eq!(request.start_ms, 0);
        assert!(
            policy.next_decode().is_none(),
            "one decode in flight at a time"
        );
        let stale = policy.on_decoded(request.id + 7, vec![word("x", 0, 100)]);
        assert_eq!(stale, PolicyOutput::default());
        assert!(!policy.is_idle(), "the real decode is still in flight");
        policy.on_decoded(request.id, vec![word("real", 0, 500)]);
        assert!(policy.in_flight.is_none());
    }

    #[test]
    fn a_gap_in_the_audio_is_silence_and_ends_the_utterance() {
        let mut policy = speaking(step_500(), 600);
        policy.push_audio(16_000 * 60, &speech(100));
        let request = policy
            .next_decode()
            .expect("finalizing decode of the first utterance");
        assert_eq!(request.start_ms, 0);
        assert!(
            request.samples.len() < 2 * MIN_DECODE_SAMPLES,
            "not a minute of zeros"
        );
    }

    #[test]
    fn a_failing_finalize_is_retried_then_given_up() {
        let mut policy = speaking(step_500(), 600);
        policy.flush();
        let a = policy.next_decode().expect("decode");
        assert_eq!(policy.on_decode_failed(a.id), PolicyOutput::default());
        let b = policy.next_decode().expect("retried");
        assert_eq!(b.samples, a.samples);
        policy.on_decode_failed(b.id);
        assert!(
            policy.is_idle(),
            "closed after {MAX_FINALIZE_FAILURES} failures"
        );
    }

    #[test]
    fn alignment_prefers_the_split_after_the_last_committed_word() {
        let strings = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            prefix_distances(&strings("a b"), &strings("a b c")),
            [2, 1, 0, 1]
        );
        let mut policy = Policy::new(PolicyConfig::default(), None);
        policy.committed = vec![
            word("good", 0, 100),
            word("morning", 100, 200),
            word("everyone", 200, 300),
        ];
        let hypothesis = vec![
            word("good", 0, 100),
            word("morning", 100, 250),
            word("let", 300, 400),
            word("us", 400, 500),
        ];
        let rest = policy.uncommitted(&hypothesis);
        assert_eq!(
            join_text(&rest),
            "let us",
            "a missing committed word costs no new word"
        );
    }
}
