//! The live path of one audio track: fast captions, then each utterance decoded once
//! more, whole, for the minutes.
//!
//! A sans-IO state machine over [`Policy`] (no threads, no clock, no engine), driven the
//! same way: [`Live::push_audio`], [`Live::next_decode`], [`Live::on_decoded`].
//!
//! - **Captions** are what the streaming policy commits (LocalAgreement + VAD over a
//!   short rolling buffer): fast and never revised, but decided with a few seconds of
//!   context, so they carry its errors (来週 → 来数, "The new office" → "The Mafis").
//! - **Finals** are the minutes. When the VAD ends an utterance (or it reaches
//!   [`FinalsConfig::max_utterance_ms`] without a pause, cut at its quietest point), its
//!   audio is decoded again together with [`FinalsConfig::left_context_ms`] of the audio
//!   before it, and only the words that start inside the utterance are kept (word
//!   starts are aligned by DTW; Whisper's word ends run late at a segment's end, which
//!   would put the previous sentence's last word into the next final). A word timed up
//!   to 300 ms early still counts unless it repeats the previous final's end: a soft
//!   onset the VAD took for silence starts before the cut (English simulation: minutes
//!   WER 0.069 → 0.060 with this tolerance, the file decode's).
//!   Measured on a Japanese meeting with base (each sentence decoded with N s of the audio
//!   before it): N = 0 → CER 0.098, 5 s → 0.055, 10 s → 0.055 (the whole file at once:
//!   0.055), 20 s → 0.074; English speech without pauses needs more (10 s: WER 0.078
//!   against 0.043 for the whole file, 5 s: 0.138), which is why a cut without a pause
//!   also waits [`FinalsConfig::right_context_ms`] past the cut.
//! - Finals tile the timeline: final *n* holds the words from the end of final *n − 1*'s
//!   span to the end of its own, so a client replaces the captions of that span with it.
//!   A final decode goes ahead of every caption decode, and the policy's own finalizing
//!   decode of the utterance is skipped (the final replaces its captions anyway).
//! - A final whose decode fails twice, or hears nothing, falls back to the captions of
//!   its span: every caption word is covered by a final.

use std::collections::VecDeque;
use std::time::Instant;

use kiroku_core::transcript::{Word, join_words};

use crate::engine::{Engine, EngineError, TranscribeOptions};
use crate::streaming::{
    Caption, Checkpoint, DecodeKind, DecodeRequest, Interim, Policy, PolicyConfig, SAMPLES_PER_MS,
    UNSPACED_LANGUAGES, UtteranceEvent, VAD_BLOCK_SAMPLES, block_rms, cut_loop,
    drop_squeezed_repeats, units,
};

/// Final decode ids have this bit set, caption decode ids (the policy's) do not.
const FINAL_ID_BIT: u64 = 1 << 62;
/// A final decode that fails this many times falls back to the span's captions.
const MAX_FINAL_FAILURES: u32 = 2;
/// Previous finals' text kept for the prompt (characters).
const MAX_PROMPT_CONTEXT_CHARS: usize = 400;
/// A final's leading words that repeat the previous final's last words, starting within
/// this long after the boundary, are that final's words heard again in the left context
/// (Whisper's segment start pushed their time past the boundary).
const REPEAT_WINDOW_MS: u64 = 1_500;
/// How far before its span's start a word may be timed and still be the span's own
/// (unless it repeats the previous final's end).
const EARLY_START_TOLERANCE_MS: u64 = 300;
/// At most this many units are compared for such a repeat.
const MAX_REPEAT_UNITS: usize = 8;
/// A repeat must hold at least this many characters ("meeting", "10"), so that one kana
/// that happens to end one sentence and start the next is kept.
const MIN_REPEAT_CHARS: usize = 2;
/// Silence appended to a final's window: whisper.cpp ends a segment at a timestamp within
/// 100 ms of the audio's end, and a final whose last words came after such an early
/// timestamp lost them (seen with 10 s of left context on the long test meeting).
const FINAL_PAD_MS: u64 = 1_000;
/// Between utterances the minutes' boundary follows the audio, this far behind it: the
/// next utterance's pre-roll (its first syllable, before the VAD fires) stays inside it.
const IDLE_BOUNDARY_LAG_MS: u64 = 1_000;

/// Voiced audio this long after a word's end, with no word in it, is speech the decode
/// skipped: Whisper ends a single-segment decode with its end token mid-speech now and
/// then, or jumps over a phrase (seen on a 14 s piece that stopped after "Let us move
/// the design" with 7 s of speech left, and "Can someone take notes [on the decisions
/// we make] today?"; DTW stretches the word before the gap over it). The final then
/// holds the words before that word, and the rest of the span, from that word's start,
/// is decoded again with them as its left context.
const MISSED_SPEECH_MARGIN_MS: u64 = 500;
/// At least this much voiced audio (by the VAD's threshold) after that margin makes a
/// decode incomplete.
const MISSED_SPEECH_MS: u64 = 400;
/// A span's audio is cut for skipped speech at most this often: the energy test behind
/// it takes background noise for speech, and each cut costs a decode.
const MAX_SPLITS: u32 = 3;
/// From this many cuts on, the rest of a span is decoded without left context. Whisper
/// can skip the same speech again with the same context: in a 3.5-minute file, a decode
/// stopped after "…plus the cost of the new test servers." and the re-decode from
/// "servers" did too, losing the next speaker's sentence ("Support needs two more
/// people…", another voice), both times with DTW stretching "servers" over it.
const CONTEXT_FREE_SPLITS: u32 = 2;
/// A word is taken to end at most this long after its start (DTW stretches the word
/// before skipped speech over it).
const MAX_WORD_MS: u64 = 1_200;

/// Left context of Japanese and Chinese finals (see [`FinalsConfig::for_language`]).
const UNSPACED_LEFT_CONTEXT_MS: u32 = 7_500;

/// The prompt of Japanese finals and file pieces when the caller gives none. Decoded
/// after the audio before it, a piece now and then came back without a single 。
/// (sentences run together on one line; the whole-file decode keeps them). Measured on
/// three Japanese clips of six sentences as files (base, 2026-12-05): sentences ending
/// in 。 3, 3 and 4 of 6 without it, 6 of 6 with it; CER 0.033 = 0.033, 0.152 → 0.160,
/// 0.105 = 0.105. Live finals: see [`FinalsConfig::fixed_prompt`].
pub const JAPANESE_PROMPT: &str = "はい。";

/// How finals are decoded; units are in the names. `Default` is what measured best for
/// English with tiny.en; [`FinalsConfig::for_language`] adapts it.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalsConfig {
    /// Audio before an utterance decoded with it (its words are dropped): Whisper then
    /// hears the utterance as it would inside a file. See the module docs.
    ///
    /// 5 s for English: measured with `examples/finals_trials.rs` on the 11-sentence
    /// test meeting (tiny.en, greedy, unpaced): minutes WER 0.069 with 5 s, 0.095 with
    /// 7.5 s, 0.103 with 10 s, 0.086 with 15 s (the file decode: 0.060); a final decode
    /// took 0.53 s on average with 5 s, 0.68 s with 7.5 s.
    pub left_context_ms: u32,
    /// An utterance without a pause is cut into finals of at most this much audio.
    pub max_utterance_ms: u32,
    /// Where a cut falls: the quietest 100 ms in this much audio before the maximum.
    pub cut_search_ms: u32,
    /// A cut without a pause is decoded with this much audio after it (its words go to
    /// the next final): the words at the cut then have their ending.
    pub right_context_ms: u32,
    /// Beam width of final decodes (1: greedy). Beam 5 measured worse for English
    /// (minutes WER 0.155 against 0.069 greedy, and 1.6× the decode time) and equal for
    /// Japanese at 5 s of left context (CER 0.065 against 0.106 greedy, the gain that
    /// 7.5 s of context gives greedy decodes at less cost).
    pub beam_size: u32,
    /// The last this many characters of the previous finals as the prompt (0: none).
    /// Measured for Japanese (base, 5 s of left context): 100 characters gave CER
    /// 0.154 against 0.106 without: Whisper took the prompt as already said and left
    /// out the first words of sentences.
    pub prompt_chars: usize,
    /// The prompt of final decodes when `prompt_chars` gives none (Japanese:
    /// [`JAPANESE_PROMPT`]): a punctuated prompt keeps Whisper's punctuation. Measured
    /// live on the Japanese test clip (base, `bench_stream.py … japanese`, two runs each,
    /// 2026-12-05): sentences ending in 。 4 → 6 of 6, CER 0.041 → 0.057 (見直し written
    /// in kana); unpaced (`examples/finals_trials.rs`): CER 0.057 → 0.049.
    pub fixed_prompt: Option<&'static str>,
    /// Encoder frames added to a final's audio context beyond its window's own (at most
    /// 1500 frames in all: 1500 decodes every final with the full 30 s window).
    pub audio_ctx_margin_frames: u32,
    /// Consecutive utterances are gathered into one final until it spans at least this
    /// long (0: every utterance is its own final, as live streams need). Files use
    /// [`crate::file::FILE_GATHER_MS`]: fewer, longer decodes, each cut at a pause and
    /// with the same left context.
    pub gather_ms: u32,
}

impl FinalsConfig {
    /// This configuration for a stream in `language` (ISO 639-1; empty while it is still
    /// being detected). Japanese and Chinese finals get [`UNSPACED_LEFT_CONTEXT_MS`] of
    /// left context: on the 6-sentence Japanese test meeting (base, greedy, unpaced) the
    /// minutes' CER was 0.106 with 5 s, 0.057 with 7.5 s and 0.057 with 10 s (the file
    /// decode: 0.065), a final decode 1.1 s, 1.5 s and 1.7 s on average.
    pub fn for_language(mut self, language: &str) -> Self {
        if UNSPACED_LANGUAGES.contains(&language) {
            self.left_context_ms = self.left_context_ms.max(UNSPACED_LEFT_CONTEXT_MS);
        }
        if language == "ja" && self.fixed_prompt.is_none() {
            self.fixed_prompt = Some(JAPANESE_PROMPT);
        }
        self
    }
}

impl Default for FinalsConfig {
    fn default() -> Self {
        Self {
            left_context_ms: 5_000,
            max_utterance_ms: 20_000,
            cut_search_ms: 5_000,
            right_context_ms: 1_500,
            beam_size: 1,
            prompt_chars: 0,
            fixed_prompt: None,
            audio_ctx_margin_frames: 100,
            gather_ms: 0,
        }
    }
}

/// One utterance of the minutes: its words decoded with the utterance's whole audio and
/// the audio before it. Finals are in time order, do not overlap, and each covers the
/// audio from the previous final's `span_end_ms` to its own.
#[derive(Debug, Clone, PartialEq)]
pub struct UtteranceFinal {
    /// Words with absolute times (ms from the session's start).
    pub words: Vec<Word>,
    /// The words joined as their script is written.
    pub text: String,
    /// The first word's start, absolute ms.
    pub start_ms: u64,
    /// The last word's end, absolute ms.
    pub end_ms: u64,
    /// The audio this final covers (and whose captions it replaces), absolute ms.
    pub span_start_ms: u64,
    pub span_end_ms: u64,
    /// The words are the span's captions: its decode failed or heard nothing.
    pub from_captions: bool,
}

/// What one decode produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveOutput {
    /// Newly committed caption words, oldest first.
    pub captions: Vec<Caption>,
    /// The uncommitted caption tail, when it changed.
    pub interim: Option<Interim>,
    /// Utterances finished for the minutes, oldest first.
    pub finals: Vec<UtteranceFinal>,
}

/// A final due: the audio from the boundary to `end` (absolute samples), decoded up to
/// `decode_end`.
#[derive(Debug, Clone, Copy)]
struct Span {
    end: u64,
    decode_end: u64,
    failures: u32,
    /// Times this span's audio was cut after a decode that skipped speech.
    splits: u32,
}

#[derive(Debug, Clone, Copy)]
enum InFlight {
    Caption { id: u64 },
    Final { id: u64, window_start: u64 },
}

/// Captions and minutes of one track. See the module docs.
#[derive(Debug)]
pub struct Live {
    policy: Policy,
    finals: FinalsConfig,
    /// Audio from absolute sample `audio_start` on: the left context and what is not
    /// yet in a final.
    audio: Vec<f32>,
    audio_start: u64,
    /// Everything before this absolute sample is in the minutes.
    boundary: u64,
    /// Speech start of the utterance the VAD has open, if any.
    open_start: Option<u64>,
    /// Spans cut and waiting for their final decode, oldest first.
    spans: VecDeque<Span>,
    in_flight: Option<InFlight>,
    next_final_id: u64,
    /// Caption words after the boundary: a failed final falls back to them.
    captioned: Vec<Word>,
    /// The end of the previous finals' text, for the prompt.
    context: String,
    /// The last final's words, as [`units`], to recognise them heard again.
    previous_units: Vec<String>,
    /// False for a file: no caption decodes, finals only.
    captions: bool,
    /// The end of the last utterance gathered into the next final, not yet cut
    /// ([`FinalsConfig::gather_ms`]).
    gathered: Option<u64>,
}

impl Live {
    /// A track at the session's start, or resuming after `resume_from_ms` (the previous
    /// worker's [`Live::checkpoint`]): audio before it is only left context.
    pub fn new(policy: PolicyConfig, finals: FinalsConfig, resume_from_ms: Option<u64>) -> Self {
        let boundary = resume_from_ms.unwrap_or(0) * SAMPLES_PER_MS;
        let resume = resume_from_ms.map(|ms| Checkpoint {
            committed_offset_ms: ms,
            committed_text_tail: String::new(),
        });
        let audio_start =
            boundary.saturating_sub(u64::from(finals.left_context_ms) * SAMPLES_PER_MS);
        Self {
            policy: Policy::new(policy, resume),
            finals,
            audio: Vec::new(),
            audio_start,
            boundary,
            open_start: None,
            spans: VecDeque::new(),
            in_flight: None,
            next_final_id: FINAL_ID_BIT,
            captioned: Vec::new(),
            context: String::new(),
            previous_units: Vec::new(),
            captions: true,
            gathered: None,
        }
    }

    /// A track of a whole recording (a file): finals only, no captions. A final that
    /// cannot be decoded is an error for the caller ([`crate::file`]), as there are
    /// no captions to fall back to.
    pub fn for_file(policy: PolicyConfig, finals: FinalsConfig) -> Self {
        Self {
            captions: false,
            ..Self::new(policy, finals, None)
        }
    }

    /// Adds 16 kHz mono audio starting at absolute sample `start_sample`. Audio before
    /// what the track needs (a replay after a takeover) is ignored; a gap is silence.
    /// An utterance it ends may commit caption words without a decode: take them with
    /// [`Live::take_captions`].
    pub fn push_audio(&mut self, start_sample: u64, samples: &[f32]) {
        self.policy.push_audio(start_sample, samples);
        let end = start_sample + samples.len() as u64;
        let position = self.position();
        if end > position {
            if start_sample > position {
                self.audio
                    .resize(self.audio.len() + (start_sample - position) as usize, 0.0);
            }
            let skip = position.saturating_sub(start_sample) as usize;
            self.audio.extend_from_slice(&samples[skip..]);
        }
        self.take_events();
    }

    /// Caption words committed when an utterance ended on a busy worker, before its
    /// final (see `Policy::commit_heard_at_end`), since the last call; call it after
    /// [`Live::push_audio`] and [`Live::flush`].
    pub fn take_captions(&mut self) -> Vec<Caption> {
        let closing = self.policy.take_captions();
        self.captions(closing, None).captions
    }

    /// Ends the current utterance now (push-to-talk release, end of stream).
    pub fn flush(&mut self) {
        self.policy.flush();
        self.take_events();
        self.cut_gathered();
        // Captions after the last cut with no utterance end to close them (the policy
        // dropped the rest as noise): they still get a final.
        let position = self.position();
        if position > self.scheduled_end() && self.pending_speech() {
            self.spans.push_back(Span {
                end: position,
                decode_end: position,
                failures: 0,
                splits: 0,
            });
        }
    }

    /// Absolute sample the next pushed audio is expected at.
    fn position(&self) -> u64 {
        self.audio_start + self.audio.len() as u64
    }

    /// Cuts the utterances gathered so far into a final.
    fn cut_gathered(&mut self) {
        if let Some(end) = self.gathered.take() {
            self.spans.push_back(Span {
                end,
                decode_end: end,
                failures: 0,
                splits: 0,
            });
        }
    }

    /// End of the last span cut (the boundary when none waits).
    fn scheduled_end(&self) -> u64 {
        self.spans.back().map_or(self.boundary, |span| span.end)
    }

    /// Whether captions hold words after the last span cut (flush must not lose them).
    fn pending_speech(&self) -> bool {
        let from_ms = self.scheduled_end() / SAMPLES_PER_MS;
        self.captioned.iter().any(|w| w.start_ms >= from_ms)
    }

    fn take_events(&mut self) {
        for event in self.policy.take_utterance_events() {
            match event {
                UtteranceEvent::Started { speech_start } => {
                    self.open_start = Some(speech_start);
                }
                UtteranceEvent::Ended { end } => {
                    self.open_start = None;
                    let from = self.scheduled_end();
                    if end > from {
                        self.gathered = Some(end);
                        if end - from >= u64::from(self.finals.gather_ms) * SAMPLES_PER_MS {
                            self.cut_gathered();
                        }
                    }
                }
                UtteranceEvent::Dropped => self.open_start = None,
            }
        }
        self.cut_long_utterance();
        if self.open_start.is_none()
            && self.gathered.is_none()
            && self.spans.is_empty()
            && self.in_flight.is_none()
        {
            // Silence: the boundary follows the audio, so the left context of the next
            // utterance is the audio just before it and old audio is let go.
            let lagging = self
                .position()
                .saturating_sub(IDLE_BOUNDARY_LAG_MS * SAMPLES_PER_MS);
            if lagging > self.boundary {
                self.boundary = lagging;
                self.captioned.clear();
                self.trim_audio();
            }
        }
    }

    /// Speech without a pause: once the open utterance holds `max_utterance_ms` (plus
    /// the right context) after the last cut, cut it at its quietest 100 ms. Gathered
    /// utterances are cut first, at their pause, once the open one would make their
    /// final longer than that.
    fn cut_long_utterance(&mut self) {
        let Some(speech_start) = self.open_start else {
            return;
        };
        let max = u64::from(self.finals.max_utterance_ms) * SAMPLES_PER_MS;
        let right = u64::from(self.finals.right_context_ms) * SAMPLES_PER_MS;
        if self.gathered.is_some() && self.position() >= self.scheduled_end() + max {
            self.cut_gathered();
        }
        let from = self.scheduled_end().max(speech_start);
        if self.position() < from + max + right {
            return;
        }
        let search = u64::from(self.finals.cut_search_ms) * SAMPLES_PER_MS;
        let cut = self.quietest(from + max.saturating_sub(search), from + max);
        self.spans.push_back(Span {
            end: cut,
            decode_end: cut + right,
            failures: 0,
            splits: 0,
        });
    }

    /// The end of the quietest 100 ms window (in 20 ms steps) within absolute samples
    /// `from..to`.
    fn quietest(&self, from: u64, to: u64) -> u64 {
        const WINDOW_BLOCKS: usize = 5;
        let block = VAD_BLOCK_SAMPLES;
        let local =
            |sample: u64| (sample.saturating_sub(self.audio_start) as usize).min(self.audio.len());
        let (from, to) = (local(from), local(to));
        let energies: Vec<f32> = self.audio[from..to]
            .chunks(block)
            .map(|b| b.iter().map(|s| s * s).sum::<f32>())
            .collect();
        let best = (WINDOW_BLOCKS..=energies.len())
            .min_by(|&a, &b| {
                let sum = |end: usize| energies[end - WINDOW_BLOCKS..end].iter().sum::<f32>();
                sum(a).total_cmp(&sum(b))
            })
            .unwrap_or(energies.len());
        // The middle of the quietest window.
        let middle = (best.saturating_sub(WINDOW_BLOCKS / 2 + 1)) * block;
        self.audio_start + (from + middle).min(to) as u64
    }

    /// The first word of `words` (a decode of a span ending at `span_end`) after which
    /// the decode skipped speech (see [`MISSED_SPEECH_MARGIN_MS`]), and where to cut
    /// the span: at that word's start, when that is after the boundary (a cut must
    /// move the minutes on, so a span is never decoded again forever).
    fn skipped_speech(&self, words: &[Word], span_end: u64) -> Option<(usize, u64)> {
        words.iter().enumerate().find_map(|(index, word)| {
            let cut = word.start_ms * SAMPLES_PER_MS;
            if cut <= self.boundary {
                return None;
            }
            let next = words
                .get(index + 1)
                .map_or(span_end, |next| next.start_ms * SAMPLES_PER_MS);
            let heard_to_ms = word.end_ms.min(word.start_ms + MAX_WORD_MS);
            let missed = self.voiced_ms(
                (heard_to_ms + MISSED_SPEECH_MARGIN_MS) * SAMPLES_PER_MS,
                next.min(span_end),
            );
            (missed >= MISSED_SPEECH_MS).then_some((index, cut))
        })
    }

    /// Voiced audio (20 ms blocks at or above the VAD's threshold) within absolute
    /// samples `from..to`, in ms.
    fn voiced_ms(&self, from: u64, to: u64) -> u64 {
        let local =
            |sample: u64| (sample.saturating_sub(self.audio_start) as usize).min(self.audio.len());
        let (from, to) = (local(from), local(to));
        if from >= to {
            return 0;
        }
        let threshold = self.policy.config().vad_threshold_rms;
        let voiced = self.audio[from..to]
            .chunks(VAD_BLOCK_SAMPLES)
            .filter(|block| block_rms(block) >= threshold)
            .count();
        voiced as u64 * VAD_BLOCK_SAMPLES as u64 / SAMPLES_PER_MS
    }

    /// Drops audio no final needs any more: all but the left context of the boundary.
    fn trim_audio(&mut self) {
        let keep_from = self
            .boundary
            .saturating_sub(u64::from(self.finals.left_context_ms) * SAMPLES_PER_MS);
        if keep_from > self.audio_start {
            let drop = ((keep_from - self.audio_start) as usize).min(self.audio.len());
            self.audio.drain(..drop);
            self.audio_start += drop as u64;
        }
    }

    /// True when nothing is left to decode: no utterance open, no final due, no decode
    /// in flight. The worker ends a flushed stream once idle.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none()
            && self.spans.is_empty()
            && self.gathered.is_none()
            && (self.policy.is_idle() || !self.captions)
    }

    /// What [`Live::next_decode`] would return now, without taking it: a worker asks
    /// the engine for a turn of that kind, and takes the decode (with every sample
    /// received by then) only when the turn comes.
    pub fn due(&self) -> Option<DecodeKind> {
        if self.in_flight.is_some() {
            None
        } else if self.final_due().is_some() {
            Some(DecodeKind::Final)
        } else {
            (self.captions && self.policy.decode_due()).then_some(DecodeKind::Caption)
        }
    }

    /// The first span, once all of its decode's audio has arrived.
    fn final_due(&self) -> Option<Span> {
        self.spans
            .front()
            .copied()
            .filter(|span| self.position() >= span.decode_end)
    }

    /// The decode to run now, if one is due and none is in flight: a final first (the
    /// minutes never wait behind captions), else the policy's caption decode.
    pub fn next_decode(&mut self) -> Option<DecodeRequest> {
        if self.in_flight.is_some() {
            return None;
        }
        if let Some(span) = self.final_due() {
            return Some(self.final_request(span));
        }
        if !self.captions {
            return None;
        }
        let request = self.policy.next_decode()?;
        self.in_flight = Some(InFlight::Caption { id: request.id });
        Some(request)
    }

    fn final_request(&mut self, span: Span) -> DecodeRequest {
        let config = self.policy.config().clone();
        let left = if span.splits >= CONTEXT_FREE_SPLITS {
            0
        } else {
            u64::from(self.finals.left_context_ms) * SAMPLES_PER_MS
        };
        let end = span.decode_end.min(self.position());
        // The encoder's window bounds the whole decode: left context gives way first.
        let window_start = self
            .boundary
            .saturating_sub(left)
            .max(end.saturating_sub(DecodeRequest::max_samples(&config)))
            .max(self.audio_start);
        let local = |sample: u64| (sample - self.audio_start) as usize;
        let mut samples = self.audio[local(window_start)..local(end)].to_vec();
        let room = DecodeRequest::max_samples(&config).saturating_sub(samples.len() as u64);
        samples.resize(
            samples.len() + (FINAL_PAD_MS * SAMPLES_PER_MS).min(room) as usize,
            0.0,
        );
        let id = self.next_final_id;
        self.next_final_id += 1;
        self.in_flight = Some(InFlight::Final { id, window_start });
        let sizing = PolicyConfig {
            audio_ctx_margin_frames: self.finals.audio_ctx_margin_frames,
            ..config
        };
        let mut request = DecodeRequest::sized(
            id,
            samples,
            window_start / SAMPLES_PER_MS,
            &sizing,
            self.prompt(),
            DecodeKind::Final,
        );
        request.beam_size = self.finals.beam_size.max(1);
        request
    }

    fn prompt(&self) -> Option<String> {
        if self.finals.prompt_chars == 0 || self.context.is_empty() {
            return self.finals.fixed_prompt.map(str::to_string);
        }
        let skip = self
            .context
            .chars()
            .count()
            .saturating_sub(self.finals.prompt_chars);
        Some(self.context.chars().skip(skip).collect())
    }

    /// Takes the words of decode `id` (times relative to the request's samples). An
    /// unknown or stale `id` is ignored (empty output).
    pub fn on_decoded(&mut self, id: u64, words: Vec<Word>) -> LiveOutput {
        match self.in_flight {
            Some(InFlight::Caption { id: expected }) if expected == id => {
                self.in_flight = None;
                let output = self.policy.on_decoded(id, words);
                self.captions(output.captions, output.interim)
            }
            Some(InFlight::Final {
                id: expected,
                window_start,
            }) if expected == id => {
                self.in_flight = None;
                self.finish_span(Some((window_start, words)))
            }
            _ => LiveOutput::default(),
        }
    }

    /// Tells the track that decode `id` failed: a caption decode is due again later; a
    /// final is retried once, then made of its span's captions.
    pub fn on_decode_failed(&mut self, id: u64) -> LiveOutput {
        match self.in_flight {
            Some(InFlight::Caption { id: expected }) if expected == id => {
                self.in_flight = None;
                let output = self.policy.on_decode_failed(id);
                self.captions(output.captions, output.interim)
            }
            Some(InFlight::Final { id: expected, .. }) if expected == id => {
                self.in_flight = None;
                let give_up = self.spans.front_mut().is_some_and(|span| {
                    span.failures += 1;
                    span.failures >= MAX_FINAL_FAILURES
                });
                if give_up {
                    tracing::warn!(
                        id,
                        "utterance final made of its captions after failed decodes"
                    );
                    return self.finish_span(None);
                }
                LiveOutput::default()
            }
            _ => LiveOutput::default(),
        }
    }

    /// Caption words before the boundary are already in a final: they are dropped.
    fn captions(&mut self, captions: Vec<Caption>, interim: Option<Interim>) -> LiveOutput {
        let boundary_ms = self.boundary / SAMPLES_PER_MS;
        let captions: Vec<Caption> = captions
            .into_iter()
            .filter_map(|mut caption| {
                caption.words.retain(|w| w.start_ms >= boundary_ms);
                let first = caption.words.first()?;
                caption.start_ms = first.start_ms;
                caption.end_ms = caption.words.last().map_or(caption.start_ms, |w| w.end_ms);
                caption.text = join_words(caption.words.iter().map(|w| w.text.as_str()));
                Some(caption)
            })
            .collect();
        for caption in &captions {
            self.captioned.extend_from_slice(&caption.words);
        }
        LiveOutput {
            captions,
            interim,
            finals: Vec::new(),
        }
    }

    /// Closes the oldest span with the words of its decode (`window_start`, words
    /// relative to it), or with its captions when there is no decode or it heard nothing.
    fn finish_span(&mut self, decoded: Option<(u64, Vec<Word>)>) -> LiveOutput {
        let Some(span) = self.spans.pop_front() else {
            return LiveOutput::default();
        };
        let span_start_ms = self.boundary / SAMPLES_PER_MS;
        let span_end_ms = span.end / SAMPLES_PER_MS;
        // A word timed a little before the span's start still belongs to it unless it
        // repeats the previous final's end (removed just below): a soft onset the VAD
        // took for silence, or DTW placing a word early, must not drop it between finals.
        let from_ms = span_start_ms.saturating_sub(EARLY_START_TOLERANCE_MS);
        // A span decoded only up to its end holds every word the decode heard after the
        // left context, however late DTW times it (a sentence's soft last word, timed
        // after the utterance's end, was lost: "…the weekly planning [meeting.]"). Only
        // a span decoded with right context leaves the words after its end to the next.
        let until_ms = if span.decode_end > span.end {
            span_end_ms
        } else {
            u64::MAX
        };
        let inside = |w: &Word| (from_ms..until_ms).contains(&w.start_ms);
        let words = match decoded {
            Some((window_start, words)) => {
                let offset_ms = window_start / SAMPLES_PER_MS;
                let decode_end_ms = span.decode_end / SAMPLES_PER_MS;
                let words: Vec<Word> = words
                    .into_iter()
                    .map(|mut word| {
                        word.start_ms += offset_ms;
                        word.end_ms = (word.end_ms + offset_ms).min(decode_end_ms);
                        word
                    })
                    .collect();
                let audio_s = decode_end_ms.saturating_sub(offset_ms) as f64 / 1000.0;
                let (words, _) = cut_loop(words, audio_s, self.policy.config().max_words_per_s);
                let (words, _) = drop_squeezed_repeats(words);
                words
                    .into_iter()
                    .filter(|w| inside(w) && !is_marker(w))
                    .collect()
            }
            None => Vec::new(),
        };
        let mut words = self.drop_repeated_tail(words, span_start_ms);
        let mut span = span;
        let skipped = if span.splits < MAX_SPLITS {
            self.skipped_speech(&words, span.end)
        } else {
            None
        };
        if let Some((index, cut)) = skipped {
            tracing::debug!(
                cut_ms = cut / SAMPLES_PER_MS,
                span_end_ms = span.end / SAMPLES_PER_MS,
                "final decode skipped speech: decoding the rest of its span again"
            );
            words.truncate(index);
            // No word kept: the minutes do not move on (no empty final, no gap between
            // finals), and the same decode again would hear the same: the rest goes
            // without left context at once.
            let (end, splits) = if words.is_empty() {
                (self.boundary, (span.splits + 1).max(CONTEXT_FREE_SPLITS))
            } else {
                (cut, span.splits + 1)
            };
            self.spans.push_front(Span { splits, ..span });
            span = Span {
                end,
                decode_end: end,
                failures: span.failures,
                splits: span.splits,
            };
        }
        let span_end_ms = span.end / SAMPLES_PER_MS;
        let from_captions = words.is_empty() && skipped.is_none();
        if from_captions {
            words = self
                .captioned
                .iter()
                .filter(|w| inside(w))
                .cloned()
                .collect();
        }
        // Times stay inside the span and in order (Whisper's jitter by a few tens of ms).
        let mut floor_ms = span_start_ms;
        for word in &mut words {
            word.start_ms = word.start_ms.clamp(floor_ms, span_end_ms);
            word.end_ms = word.end_ms.clamp(word.start_ms, span_end_ms);
            floor_ms = word.end_ms;
        }
        self.boundary = span.end;
        self.captioned.retain(|w| w.start_ms >= span_end_ms);
        self.policy.close_finalized(span.end);
        self.trim_audio();
        let mut output = LiveOutput::default();
        if !words.is_empty() {
            self.previous_units = words.iter().flat_map(|w| units(&w.text)).collect();
        }
        if let (Some(first), Some(last)) = (words.first(), words.last()) {
            let text = join_words(words.iter().map(|w| w.text.as_str()));
            if self.finals.prompt_chars > 0 {
                let joined = join_words([self.context.as_str(), text.as_str()]);
                let skip = joined
                    .chars()
                    .count()
                    .saturating_sub(MAX_PROMPT_CONTEXT_CHARS);
                self.context = joined.chars().skip(skip).collect();
            }
            output.finals.push(UtteranceFinal {
                start_ms: first.start_ms,
                end_ms: last.end_ms,
                text,
                words,
                span_start_ms,
                span_end_ms,
                from_captions,
            });
        }
        output
    }

    /// `words` without leading words that start within [`REPEAT_WINDOW_MS`] of the span's
    /// start and repeat the end of the previous final exactly (compared as [`units`]).
    fn drop_repeated_tail(&self, words: Vec<Word>, span_start_ms: u64) -> Vec<Word> {
        let near: Vec<&Word> = words
            .iter()
            .take_while(|w| w.start_ms < span_start_ms + REPEAT_WINDOW_MS)
            .collect();
        let heard: Vec<String> = near.iter().flat_map(|w| units(&w.text)).collect();
        let tail = &self.previous_units;
        let longest = (1..=heard.len().min(tail.len()).min(MAX_REPEAT_UNITS))
            .rev()
            .find(|&k| {
                heard[..k] == tail[tail.len() - k..]
                    && heard[..k].iter().map(|u| u.chars().count()).sum::<usize>()
                        >= MIN_REPEAT_CHARS
            });
        let Some(repeated) = longest else {
            // The end of the previous final's last word heard again ("program." then
            // "ram."): Whisper cut the word at the window's start.
            let first = near.first().map(|w| units(&w.text));
            let cut_word = matches!((first.as_deref(), tail.last()),
                (Some([unit]), Some(last)) if unit.chars().count() >= 3
                    && last.len() > unit.len()
                    && last.ends_with(unit.as_str()));
            return if cut_word { words[1..].to_vec() } else { words };
        };
        // Whole words only: the repeat must end at a word's end.
        let mut counted = 0;
        let whole = near.iter().position(|w| {
            counted += units(&w.text).len();
            counted >= repeated
        });
        match whole {
            Some(index) if counted == repeated => words[index + 1..].to_vec(),
            _ => words,
        }
    }

    /// Where a successor resumes: everything before it is in the minutes (persist it
    /// with each final). Replay must start [`Live::replay_from_ms`] before, for context.
    pub fn checkpoint_ms(&self) -> u64 {
        self.boundary / SAMPLES_PER_MS
    }

    /// The oldest audio this track still needs (the left context of the next final).
    pub fn replay_from_ms(&self) -> u64 {
        self.audio_start / SAMPLES_PER_MS
    }

    /// Replaces the tuning (once the stream's language is known); audio, captions and
    /// pending finals are kept.
    pub fn set_config(&mut self, policy: PolicyConfig, finals: FinalsConfig) {
        self.policy.set_config(policy);
        self.finals = finals;
    }
}

/// Whisper's non-speech markers (`[BLANK_AUDIO]`, `[MUSIC]`): not words of the minutes.
fn is_marker(word: &Word) -> bool {
    let text = word.text.trim();
    text.starts_with('[') && text.ends_with(']')
}

/// The outcome of [`simulate`].
#[derive(Debug, Clone, Default)]
pub struct Simulation {
    /// Every caption, in the order they were emitted.
    pub captions: Vec<Caption>,
    /// Every final (the minutes), in order.
    pub finals: Vec<UtteranceFinal>,
    /// Decodes run (captions and finals).
    pub decodes: usize,
    /// For each caption word: simulated time of its commit minus its end in the audio,
    /// in ms (Whisper's word end; it can run late or early by a few hundred ms).
    pub caption_latency_ms: Vec<u64>,
    /// For each final: simulated time it was emitted minus its last word's end, in ms.
    pub final_latency_ms: Vec<u64>,
    /// Wall time of each final's decode, in ms (measured paced or not).
    pub final_decode_ms: Vec<u64>,
}

impl Simulation {
    /// The minutes as one text.
    pub fn minutes(&self) -> String {
        join_words(self.finals.iter().map(|f| f.text.as_str()))
    }

    fn add_captions(&mut self, captions: Vec<Caption>, clock_ms: u64) {
        for caption in captions {
            self.caption_latency_ms.extend(
                caption
                    .words
                    .iter()
                    .map(|w| clock_ms.saturating_sub(w.end_ms)),
            );
            self.captions.push(caption);
        }
    }
}

/// Runs the live path over a whole recording as if it arrived live in `chunk_ms`
/// chunks, decoding on `engine` in `language` (`None`: detect, or English on an
/// English-only model) whenever a decode is due.
///
/// With `paced`, the simulated clock advances by each decode's measured wall time and the
/// audio that arrives meanwhile is pushed before the decode's result is handed back, as
/// in the worker (so latencies include compute; numbers depend on the machine's load).
/// Without, decodes take no time: deterministic given the engine's output.
pub fn simulate(
    engine: &Engine,
    samples: &[f32],
    policy: PolicyConfig,
    finals: FinalsConfig,
    language: Option<&str>,
    chunk_ms: u32,
    paced: bool,
) -> Result<Simulation, EngineError> {
    let chunk = (u64::from(chunk_ms.max(1)) * SAMPLES_PER_MS) as usize;
    let chunks: Vec<&[f32]> = samples.chunks(chunk).collect();
    let arrival_ms = |index: usize| (index as u64 + 1) * u64::from(chunk_ms.max(1));
    let mut live = Live::new(policy, finals, None);
    let mut simulation = Simulation::default();
    let mut clock_ms = 0u64;
    let mut next_chunk = 0usize;
    let mut flushed = false;
    let deliver = |live: &mut Live, next_chunk: &mut usize, clock_ms: u64| {
        while *next_chunk < chunks.len() && arrival_ms(*next_chunk) <= clock_ms {
            live.push_audio((*next_chunk * chunk) as u64, chunks[*next_chunk]);
            *next_chunk += 1;
        }
    };
    loop {
        deliver(&mut live, &mut next_chunk, clock_ms);
        simulation.add_captions(live.take_captions(), clock_ms);
        if let Some(request) = live.next_decode() {
            let options = TranscribeOptions {
                language: language.map(str::to_string),
                prompt: request.prompt.clone(),
                audio_ctx: Some(request.audio_ctx),
                no_temperature_fallback: true,
                max_tokens: Some(request.max_tokens),
                beam_size: request.beam_size,
                ..TranscribeOptions::default()
            };
            let started = Instant::now();
            let kind = request.kind;
            let transcript = engine.transcribe(request.samples, options, None)?;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            simulation.decodes += 1;
            if kind == DecodeKind::Final {
                simulation.final_decode_ms.push(elapsed_ms);
            }
            if paced {
                clock_ms += elapsed_ms;
                deliver(&mut live, &mut next_chunk, clock_ms);
                simulation.add_captions(live.take_captions(), clock_ms);
            }
            let words = transcript
                .segments
                .into_iter()
                .flat_map(|segment| segment.words)
                .collect();
            let output = live.on_decoded(request.id, words);
            simulation.add_captions(output.captions, clock_ms);
            for final_ in output.finals {
                simulation
                    .final_latency_ms
                    .push(clock_ms.saturating_sub(final_.end_ms));
                simulation.finals.push(final_);
            }
            continue;
        }
        if next_chunk < chunks.len() {
            clock_ms = clock_ms.max(arrival_ms(next_chunk));
        } else if !flushed {
            live.flush();
            simulation.add_captions(live.take_captions(), clock_ms);
            flushed = true;
        } else {
            // After the flush every due decode has run: the track is idle.
            break;
        }
    }
    Ok(simulation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{heard, silence, speech};

    fn push(live: &mut Live, samples: &[f32]) {
        let at = live.position();
        live.push_audio(at, samples);
    }

    fn texts(finals: &[UtteranceFinal]) -> Vec<&str> {
        finals.iter().map(|f| f.text.as_str()).collect()
    }

    /// Answers every caption decode with nothing until a final is asked for; returns it.
    fn next_final(live: &mut Live) -> DecodeRequest {
        loop {
            let due = live.due();
            let request = live.next_decode().expect("a decode is due");
            assert_eq!(due, Some(request.kind), "due() foretells next_decode()");
            if request.kind == DecodeKind::Final {
                return request;
            }
            live.on_decoded(request.id, Vec::new());
        }
    }

    /// Two utterances of 2 s, each followed by 1 s of silence; the first final is decoded
    /// with `first_words`. Returns the track, the first final's span end (ms) and the
    /// second final's decode request.
    fn second_final_due(first_words: &[(&str, u64, u64)]) -> (Live, u64, DecodeRequest) {
        let mut live = Live::new(PolicyConfig::default(), FinalsConfig::default(), None);
        push(&mut live, &speech(2_000));
        push(&mut live, &silence(1_000));
        let first = next_final(&mut live);
        let output = live.on_decoded(first.id, heard(&first, first_words));
        let boundary = output.finals[0].span_end_ms;
        push(&mut live, &speech(2_000));
        push(&mut live, &silence(1_000));
        let second = next_final(&mut live);
        (live, boundary, second)
    }

    #[test]
    fn an_ended_utterance_is_decoded_again_with_the_audio_before_it_and_keeps_only_its_words() {
        let mut live = Live::new(PolicyConfig::default(), FinalsConfig::default(), None);
        push(&mut live, &speech(2_000));
        push(&mut live, &silence(1_000));
        let first = next_final(&mut live);
        assert_eq!(first.start_ms, 0, "nothing before the first utterance");
        assert_eq!(first.beam_size, 1);
        let output = live.on_decoded(
            first.id,
            heard(&first, &[("Good", 100, 600), ("morning.", 600, 1_900)]),
        );
        assert_eq!(texts(&output.finals), ["Good morning."]);
        let span_end = output.finals[0].span_end_ms;
        assert!(
            (2_200..=2_400).contains(&span_end),
            "span ends at {span_end}"
        );

        push(&mut live, &speech(2_000));
        push(&mut live, &silence(1_000));
        let second = next_final(&mut live);
        // The previous utterance is in the window as context…
        assert_eq!(second.start_ms, 0);
        assert!(second.samples.len() as u64 >= 5_000 * SAMPLES_PER_MS);
        // …but its words, heard again, stay in its own final.
        let output = live.on_decoded(
            second.id,
            heard(
                &second,
                &[
                    ("Good", 100, 600),
                    ("morning.", 600, 1_900),
                    ("Budget", 3_100, 3_600),
                    ("first.", 3_600, 4_900),
                ],
            ),
        );
        assert_eq!(texts(&output.finals), ["Budget first."]);
        assert_eq!(
            output.finals[0].span_start_ms, span_end,
            "finals tile the timeline"
        );
        assert!(!output.finals[0].from_captions);
        assert!(live.is_idle());
    }

    #[test]
    fn a_decode_that_skips_speech_keeps_the_words_before_and_decodes_the_rest_again() {
        let mut live = Live::new(PolicyConfig::default(), FinalsConfig::default(), None);
        push(&mut live, &speech(6_000));
        push(&mut live, &silence(1_000));
        let first = next_final(&mut live);
        // Whisper stopped after "move the", DTW stretching "the" over 4 s of speech.
        let output = live.on_decoded(
            first.id,
            heard(
                &first,
                &[
                    ("Let", 100, 400),
                    ("us", 400, 700),
                    ("move", 700, 1_100),
                    ("the", 1_100, 5_900),
                ],
            ),
        );
        assert_eq!(texts(&output.finals), ["Let us move"]);
        assert_eq!(
            output.finals[0].span_end_ms, 1_100,
            "cut at the stretched word"
        );
        assert!(!live.is_idle());
        // The rest of the span is decoded again, the kept words as its left context.
        let rest = next_final(&mut live);
        assert_eq!(rest.start_ms, 0);
        let output = live.on_decoded(
            rest.id,
            heard(
                &rest,
                &[
                    ("Let", 100, 400),
                    ("us", 400, 700),
                    ("move", 700, 1_100),
                    ("the", 1_100, 1_300),
                    ("design", 1_300, 1_800),
                    ("review", 1_800, 3_000),
                    ("to", 3_000, 4_000),
                    ("Tuesday.", 4_000, 5_900),
                ],
            ),
        );
        assert_eq!(texts(&output.finals), ["the design review to Tuesday."]);
        assert_eq!(
            output.finals[0].span_start_ms, 1_100,
            "finals tile the timeline"
        );
        assert!(live.is_idle());
    }

    #[test]
    fn speech_skipped_again_with_the_same_context_is_decoded_without_it() {
        let mut live = Live::new(PolicyConfig::default(), FinalsConfig::default(), None);
        push(&mut live, &speech(6_000));
        push(&mut live, &silence(1_000));
        // Twice Whisper stops after "servers", stretched over 4 s of the next speaker.
        let stopped = [("test", 100, 900), ("servers.", 1_000, 5_900)];
        let first = next_final(&mut live);
        assert_eq!(first.start_ms, 0);
        let output = live.on_decoded(first.id, heard(&first, &stopped));
        assert_eq!(texts(&output.finals), ["test"]);
        let again = next_final(&mut live);
        assert_eq!(
            again.start_ms, 0,
            "the first re-decode keeps the left context"
        );
        let output = live.on_decoded(again.id, heard(&again, &[("servers.", 1_060, 5_900)]));
        assert!(output.finals.is_empty(), "{output:?}");
        assert_eq!(live.checkpoint_ms(), 1_000, "no word kept: no empty final");
        // The third decode of the rest starts at the boundary: no left context.
        let alone = next_final(&mut live);
        assert_eq!(alone.start_ms, 1_000);
        let output = live.on_decoded(
            alone.id,
            heard(
                &alone,
                &[
                    ("servers.", 1_060, 1_600),
                    ("Support", 2_000, 2_500),
                    ("needs", 2_500, 3_000),
                    ("two", 3_000, 3_500),
                    ("more", 3_500, 4_500),
                    ("people.", 4_500, 5_900),
                ],
            ),
        );
        assert_eq!(
            texts(&output.finals),
            ["servers. Support needs two more people."]
        );
        assert_eq!(output.finals[0].span_start_ms, 1_000);
        assert!(live.is_idle());
    }

    #[test]
    fn a_last_word_timed_after_its_utterance_ends_stays_in_its_final() {
        let mut live = Live::new(PolicyConfig::default(), FinalsConfig::default(), None);
        push(&mut live, &speech(2_000));
        push(&mut live, &silence(1_000));
        let first = next_final(&mut live);
        // DTW times the soft last word after the utterance's end (span end ~2.3 s).
        let output = live.on_decoded(
            first.id,
            heard(
                &first,
                &[("planning", 100, 1_900), ("meeting.", 2_450, 2_900)],
            ),
        );
        assert_eq!(texts(&output.finals), ["planning meeting."]);
        let final_ = &output.finals[0];
        assert!(final_.words.iter().all(|w| w.end_ms <= final_.span_end_ms));
    }

    #[test]
    fn a_word_stretched_over_silence_is_not_skipped_speech() {
        let mut live = Live::new(PolicyConfig::default(), FinalsConfig::default(), None);
        push(&mut live, &speech(2_000));
        push(&mut live, &silence(1_000));
        let first = next_final(&mut live);
        let output = live.on_decoded(
            first.id,
            heard(&first, &[("Good", 100, 600), ("morning.", 600, 2_900)]),
        );
        assert_eq!(texts(&output.finals), ["Good morning."]);
        assert!(live.is_idle());
    }

    #[test]
    fn a_file_gathers_utterances_into_pieces_of_the_gather_length_cut_at_pauses() {
        let finals = FinalsConfig {
            gather_ms: 6_000,
            ..FinalsConfig::default()
        };
        let mut live = Live::for_file(PolicyConfig::default(), finals);
        // Three utterances of 2 s and their pauses: the first two (5.3 s up to the end
        // of the second pause) make a piece of at least 6 s only with the third.
        for _ in 0..3 {
            push(&mut live, &speech(2_000));
            push(&mut live, &silence(1_000));
        }
        let piece = live.next_decode().expect("a piece is due");
        assert_eq!(piece.kind, DecodeKind::Final, "files decode no captions");
        let output = live.on_decoded(
            piece.id,
            heard(
                &piece,
                &[
                    ("One.", 100, 1_900),
                    ("Two.", 3_100, 4_900),
                    ("Three.", 6_100, 7_900),
                ],
            ),
        );
        assert_eq!(texts(&output.finals), ["One. Two. Three."]);
        assert!(live.next_decode().is_none());
        // A last utterance shorter than the gather length is cut by the flush.
        push(&mut live, &speech(2_000));
        assert!(
            live.next_decode().is_none(),
            "no piece before the pause or the end"
        );
        live.flush();
        let last = live.next_decode().expect("the flush cuts the last piece");
        let output = live.on_decoded(last.id, heard(&last, &[("Four.", 9_100, 10_900)]));
        assert_eq!(texts(&output.finals), ["Four."]);
        assert!(live.is_idle());
    }

    #[test]
    fn the_previous_finals_last_words_heard_again_after_the_boundary_are_dropped() {
        let (mut live, boundary, second) =
            second_final_due(&[("planning", 100, 1_000), ("meeting.", 1_000, 1_900)]);
        // Whisper started a segment with the context's last word, after the boundary.
        let output = live.on_decoded(
            second.id,
            heard(
                &second,
                &[
                    ("planning", 100, 1_000),
                    ("meeting.", boundary + 100, boundary + 400),
                    ("Meeting", boundary + 2_000, boundary + 2_400),
                    ("notes.", boundary + 2_400, boundary + 2_900),
                ],
            ),
        );
        // Said again later in the utterance, it is a real word and stays.
        assert_eq!(texts(&output.finals), ["Meeting notes."]);
    }

    #[test]
    fn a_word_timed_just_before_its_span_stays_unless_it_repeats_the_previous_final() {
        let (mut live, boundary, second) =
            second_final_due(&[("weekly", 100, 1_000), ("planning", 1_000, 1_900)]);
        // "planning" heard again 250 ms early is the previous final's word; "meeting",
        // whose soft onset came 200 ms before the cut, is this one's; "weekly" at 1 s
        // before the cut is context.
        let output = live.on_decoded(
            second.id,
            heard(
                &second,
                &[
                    ("weekly", boundary - 1_000, boundary - 600),
                    ("planning", boundary - 250, boundary - 220),
                    ("meeting.", boundary - 200, boundary + 300),
                    ("Next", boundary + 1_000, boundary + 2_400),
                ],
            ),
        );
        assert_eq!(texts(&output.finals), ["meeting. Next"]);
        assert_eq!(
            output.finals[0].start_ms, boundary,
            "times stay inside the span"
        );
    }

    /// `due` tells which decode `next_decode` would take, without taking it: none while
    /// one runs, a caption only after a step of new speech, a final once its utterance
    /// has ended.
    #[test]
    fn due_tells_which_decode_next_decode_would_take() {
        let mut live = Live::new(PolicyConfig::default(), FinalsConfig::default(), None);
        assert_eq!(live.due(), None, "no speech yet");
        push(&mut live, &speech(1_000));
        assert_eq!(live.due(), Some(DecodeKind::Caption));
        assert_eq!(
            live.due(),
            Some(DecodeKind::Caption),
            "asking takes nothing"
        );
        let caption = live.next_decode().expect("a caption decode");
        assert_eq!(live.due(), None, "one decode at a time");
        live.on_decoded(caption.id, Vec::new());
        push(&mut live, &speech(100));
        assert_eq!(live.due(), None, "less than a step of new audio");
        assert!(live.next_decode().is_none());
        push(&mut live, &silence(400));
        assert_eq!(live.due(), Some(DecodeKind::Final));
        assert_eq!(
            live.next_decode().map(|request| request.kind),
            Some(DecodeKind::Final)
        );
    }

    /// A worker takes the decode only when the engine's turn comes: the audio that
    /// arrived while it waited is in that decode (under load the caption step widens
    /// instead of decodes going stale in a queue).
    #[test]
    fn a_decode_taken_late_covers_the_audio_received_while_waiting() {
        let mut live = Live::new(PolicyConfig::default(), FinalsConfig::default(), None);
        push(&mut live, &speech(500));
        assert_eq!(live.due(), Some(DecodeKind::Caption));
        // The turn comes 1.5 s later.
        push(&mut live, &speech(1_500));
        let request = live.next_decode().expect("a caption decode");
        assert_eq!(request.kind, DecodeKind::Caption);
        let covered_ms = request.start_ms + request.samples.len() as u64 / SAMPLES_PER_MS;
        assert_eq!(covered_ms, 2_000, "every sample received by the turn");
    }

    #[test]
    fn a_due_final_goes_ahead_of_caption_decodes_and_replaces_the_policy_finalize() {
        let mut live = Live::new(PolicyConfig::default(), FinalsConfig::default(), None);
        push(&mut live, &speech(1_000));
        let caption = live.next_decode().expect("a caption decode");
        assert_eq!(caption.kind, DecodeKind::Caption);
        assert!(live.next_decode().is_none(), "one decode at a time");
        // The utterance ends and the next one starts while the caption decode runs.
        push(&mut live, &silence(400));
        push(&mut live, &speech(1_000));
        live.on_decoded(caption.id, Vec::new());
        let request = live.next_decode().expect("the final is due");
        assert_eq!(request.kind, DecodeKind::Final);
        let output = live.on_decoded(request.id, heard(&request, &[("Hello.", 100, 900)]));
        assert_eq!(texts(&output.finals), ["Hello."]);
        // The ended utterance needs no finalizing caption decode any more: the next
        // decode is the new utterance's caption.
        let next = live
            .next_decode()
            .expect("a caption decode of the new utterance");
        assert_eq!(next.kind, DecodeKind::Caption);
        assert!(
            next.start_ms >= 1_200,
            "caption decode starts at {}",
            next.start_ms
        );
    }

    /// The prompt of `language`'s first final decode after one utterance.
    fn first_final_prompt(language: &str) -> Option<String> {
        let mut live = Live::new(
            PolicyConfig::default().for_language(language),
            FinalsConfig::default().for_language(language),
            None,
        );
        push(&mut live, &speech(1_000));
        push(&mut live, &silence(3_000));
        for _ in 0..20 {
            let request = live.next_decode().expect("a decode is due");
            if request.kind == DecodeKind::Final {
                return request.prompt;
            }
            live.on_decoded(request.id, Vec::new());
        }
        panic!("no final decode after 20 caption decodes");
    }

    #[test]
    fn japanese_finals_get_the_punctuated_prompt_and_english_ones_none() {
        assert_eq!(first_final_prompt("ja").as_deref(), Some(JAPANESE_PROMPT));
        assert_eq!(first_final_prompt("en"), None);
        // Not detected yet: no prompt.
        assert_eq!(first_final_prompt(""), None);
    }

    #[test]
    fn speech_without_a_pause_is_cut_at_its_quietest_point_with_right_context() {
        let finals = FinalsConfig::default();
        let mut live = Live::new(PolicyConfig::default(), finals.clone(), None);
        // 17 s of speech, a soft 100 ms (still speech to the VAD), 10 s more.
        push(&mut live, &speech(17_000));
        let soft: Vec<f32> = speech(100).iter().map(|s| s * 0.1).collect();
        push(&mut live, &soft);
        push(&mut live, &speech(10_000));
        let request = next_final(&mut live);
        let Some(InFlight::Final { .. }) = live.in_flight else {
            panic!("a final is in flight");
        };
        let span = live.spans.front().copied().expect("a span was cut");
        let cut_ms = span.end / SAMPLES_PER_MS;
        assert!((17_000..=17_100).contains(&cut_ms), "cut at {cut_ms} ms");
        assert_eq!(
            span.decode_end - span.end,
            u64::from(finals.right_context_ms) * SAMPLES_PER_MS
        );
        // A word across the cut belongs to the side where it starts.
        let output = live.on_decoded(
            request.id,
            heard(
                &request,
                &[
                    ("before", 16_000, 16_900),
                    ("across", 16_950, 17_300),
                    ("after", 17_300, 18_000),
                ],
            ),
        );
        assert_eq!(texts(&output.finals), ["before across"]);
        assert_eq!(output.finals[0].span_end_ms, cut_ms);
        assert!(live.open_start.is_some(), "the utterance goes on");
    }

    #[test]
    fn a_final_whose_decode_fails_twice_is_made_of_its_captions() {
        let mut live = Live::new(PolicyConfig::default(), FinalsConfig::default(), None);
        push(&mut live, &speech(3_000));
        // Captions commit two words by agreement.
        let mut captioned = Vec::new();
        for _ in 0..6 {
            let request = live.next_decode().expect("caption decode");
            let output = live.on_decoded(
                request.id,
                heard(&request, &[("one", 100, 500), ("two", 600, 1_000)]),
            );
            captioned.extend(output.captions);
            push(&mut live, &speech(300));
        }
        assert!(!captioned.is_empty(), "captions were committed");
        push(&mut live, &silence(1_000));
        for _ in 0..MAX_FINAL_FAILURES - 1 {
            let request = next_final(&mut live);
            assert!(
                live.on_decode_failed(request.id).finals.is_empty(),
                "retried first"
            );
        }
        let request = next_final(&mut live);
        let output = live.on_decode_failed(request.id);
        assert_eq!(texts(&output.finals), ["one two"]);
        assert!(output.finals[0].from_captions);
    }

    #[test]
    fn a_resumed_track_takes_replayed_audio_as_context_only() {
        let mut live = Live::new(
            PolicyConfig::default(),
            FinalsConfig::default(),
            Some(8_000),
        );
        assert_eq!(live.checkpoint_ms(), 8_000);
        assert_eq!(live.replay_from_ms(), 3_000);
        // The replay starts at 3 s: speech that was finalized, then a new utterance.
        live.push_audio(3_000 * SAMPLES_PER_MS, &speech(4_800));
        live.push_audio(7_800 * SAMPLES_PER_MS, &silence(400));
        live.push_audio(8_200 * SAMPLES_PER_MS, &speech(1_500));
        live.push_audio(9_700 * SAMPLES_PER_MS, &silence(1_000));
        let request = next_final(&mut live);
        assert_eq!(
            request.start_ms, 3_000,
            "the left context is the replayed audio"
        );
        let output = live.on_decoded(
            request.id,
            heard(&request, &[("old", 7_000, 7_700), ("new", 8_300, 9_600)]),
        );
        assert_eq!(texts(&output.finals), ["new"]);
        assert_eq!(output.finals[0].span_start_ms, 8_000);
    }

    #[test]
    fn silence_moves_the_boundary_and_lets_old_audio_go() {
        let mut live = Live::new(PolicyConfig::default(), FinalsConfig::default(), None);
        push(&mut live, &silence(60_000));
        assert!(live.is_idle());
        assert_eq!(live.checkpoint_ms(), 59_000);
        assert!(
            live.audio.len() as u64 <= 6_000 * SAMPLES_PER_MS,
            "only the left context is kept"
        );
        assert!(live.next_decode().is_none(), "silence is never decoded");
    }
}
