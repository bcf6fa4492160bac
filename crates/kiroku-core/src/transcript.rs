//! A transcript and its renderings: plain text, JSON, SubRip (SRT) and WebVTT.
//!
//! Times are integer milliseconds from the start of the audio. The engine promises
//! words in order, non-overlapping, inside their segment and inside the audio; the
//! renderers rely on that and additionally never emit a cue that ends before it starts.
//!
//! Captions (SRT, WebVTT) keep every character of a segment's text, in order, and add
//! nothing but line breaks: whitespace collapses to one space, a line break replaces a
//! space where there is one, and text in an unspaced script (Japanese, Chinese) is never
//! given a space ("-->", which would start a timing line, becomes "->"). Lines are measured in display columns ([`char_columns`]: 2 for a
//! full-width character, 1 for a Latin letter or digit). Spaced text (English) fills
//! lines of [`CAPTION_LINE_CHARS`] greedily, breaking at spaces. Text where unspaced
//! characters dominate gets lines of [`CAPTION_LINE_COLUMNS_UNSPACED`], laid out for
//! as few cues as possible, then to break after punctuation (、。！？ and closing
//! brackets), else after the kana that end a phrase (では|新しい), else between words
//! (the engine's tokens) rather than inside one, a cue ending a sentence where it can,
//! and to keep lines even; it never starts a line with closing punctuation, a small kana
//! or the prolonged sound mark, nor ends one with an opening bracket (the basic kinsoku
//! rules), unless a line holds nothing else. A cue shows at most
//! [`CAPTION_LINES_PER_CUE`] lines: a longer segment becomes several cues, in order,
//! never overlapping, inside the segment. The first starts with the segment and the
//! last ends with it; the boundaries between them come from the word timings (a word
//! broken across two cues is shared by its characters), or from the segment's span
//! shared evenly by its characters when the words do not spell the text.

use std::fmt::Write as _;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// One recognised word with its timing and the model's confidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Mean probability of the word's tokens, 0..=1.
    pub probability: f32,
}

/// A stretch of speech, roughly a sentence, as Whisper segments it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
    pub words: Vec<Word>,
}

/// A whole transcription. The JSON rendering is this struct, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub duration_ms: u64,
    pub text: String,
    /// ISO 639-1 code of the language spoken (given or detected).
    pub language: String,
    pub segments: Vec<Segment>,
}

/// Whether `c` belongs to a script written without spaces between words: kana,
/// CJK ideographs, CJK punctuation and full-width forms (Japanese and Chinese). Text
/// in these scripts is joined without spaces, wrapped by characters and compared by
/// characters; other scripts by whitespace words.
pub fn is_unspaced(c: char) -> bool {
    matches!(c,
        '\u{3000}'..='\u{303F}'   // CJK symbols and punctuation (、。「」)
        | '\u{3040}'..='\u{30FF}' // hiragana, katakana
        | '\u{31F0}'..='\u{31FF}' // katakana phonetic extensions
        | '\u{3400}'..='\u{4DBF}' // CJK extension A
        | '\u{4E00}'..='\u{9FFF}' // CJK unified ideographs
        | '\u{F900}'..='\u{FAFF}' // CJK compatibility ideographs
        | '\u{FF00}'..='\u{FFEF}' // full-width and half-width forms (！？（）, ｶﾅ)
        | '\u{20000}'..='\u{2FA1F}') // CJK extensions B and later
}

/// Whether a space goes between `before` and `after` when they are joined: not when
/// either side of the seam is in an unspaced script ("予算" + "会議" = "予算会議",
/// "Kiroku" + "の" = "Kirokuの"), else yes ("budget" + "meeting").
pub fn needs_space(before: &str, after: &str) -> bool {
    match (
        before.trim_end().chars().last(),
        after.trim_start().chars().next(),
    ) {
        (Some(last), Some(first)) => !is_unspaced(last) && !is_unspaced(first),
        _ => false,
    }
}

/// Joins words or segment texts the way their script is written: English with single
/// spaces, Japanese without (see [`needs_space`]). Each piece is trimmed; empty pieces
/// are skipped.
pub fn join_words<'a>(pieces: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for piece in pieces {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        if needs_space(&out, piece) {
            out.push(' ');
        }
        out.push_str(piece);
    }
    out
}

/// Output formats of `kiroku transcribe` and exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Txt,
    Json,
    Srt,
    Vtt,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "txt" => Ok(Self::Txt),
            "json" => Ok(Self::Json),
            "srt" => Ok(Self::Srt),
            "vtt" => Ok(Self::Vtt),
            other => Err(format!("unknown format {other:?} (txt, json, srt, vtt)")),
        }
    }
}

/// Longest caption line of spaced text (English and other scripts written with spaces),
/// in display columns ([`char_columns`]), which for Latin text are characters: the usual
/// broadcast guideline.
pub const CAPTION_LINE_CHARS: usize = 42;

/// Longest caption line of unspaced text (Japanese, Chinese), in display columns: 16
/// full-width characters of 2 columns each. Japanese subtitle practice counts a line in
/// full-width characters, a half-width letter, digit or space counting half of one
/// (Netflix's Japanese guide counts so, allowing 13 for translated film subtitles; live
/// captions of speech usually allow 15 to 16). Counting columns rather than characters
/// measures mixed text by the room it takes on screen: "Kirokuの予算API" takes 15 of the 32.
pub const CAPTION_LINE_COLUMNS_UNSPACED: usize = 32;

/// Most lines in one caption cue; a segment that needs more becomes several cues, timed
/// by its words.
pub const CAPTION_LINES_PER_CUE: usize = 2;

/// Display columns `c` takes in a caption or a terminal: 2 for full-width characters
/// (kana, CJK ideographs and punctuation, full-width forms, Hangul, emoji), 0 for
/// control characters, combining marks and zero-width characters, 1 otherwise. An
/// approximation of Unicode's East Asian Width that covers what Whisper writes.
pub fn char_columns(c: char) -> usize {
    match c {
        '\u{0}'..='\u{1F}'
        | '\u{7F}'..='\u{9F}'
        | '\u{300}'..='\u{36F}'   // combining diacritics
        | '\u{200B}'..='\u{200F}' // zero-width space, joiners, direction marks
        | '\u{3099}'..='\u{309A}' // combining (han)dakuten
        | '\u{FE00}'..='\u{FE0F}' => 0, // variation selectors
        '\u{FF61}'..='\u{FFDC}' | '\u{FFE8}'..='\u{FFEE}' => 1, // half-width forms (ｶﾅ)
        '\u{1100}'..='\u{115F}'   // Hangul jamo
        | '\u{2E80}'..='\u{2FFF}' // CJK radicals
        | '\u{3100}'..='\u{33FF}' // bopomofo, Hangul compatibility jamo, enclosed CJK
        | '\u{A960}'..='\u{A97F}'
        | '\u{AC00}'..='\u{D7A3}' // Hangul syllables
        | '\u{FE30}'..='\u{FE6F}' // CJK compatibility and small forms
        | '\u{1F300}'..='\u{1F64F}'
        | '\u{1F900}'..='\u{1F9FF}' => 2, // emoji
        c if is_unspaced(c) => 2,
        _ => 1,
    }
}

/// Display columns of `text` (the sum of [`char_columns`]).
pub fn display_columns(text: &str) -> usize {
    text.chars().map(char_columns).sum()
}

/// The end of `text` that fits in `columns` display columns, cut at a character
/// boundary: what a one-row live caption shows of a line that keeps growing.
pub fn last_columns(text: &str, columns: usize) -> &str {
    let mut used = 0;
    for (index, c) in text.char_indices().rev() {
        used += char_columns(c);
        if used > columns {
            return &text[index + c.len_utf8()..];
        }
    }
    text
}

impl Transcript {
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Txt => self.to_txt(),
            Format::Json => self.to_json(),
            Format::Srt => self.to_srt(),
            Format::Vtt => self.to_vtt(),
        }
    }

    /// One segment per line.
    pub fn to_txt(&self) -> String {
        let mut out = String::new();
        for segment in self.spoken_segments() {
            out.push_str(segment.text.trim());
            out.push('\n');
        }
        out
    }

    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        let mut json = serde_json::to_string_pretty(self).unwrap_or_default();
        json.push('\n');
        json
    }

    /// SubRip: numbered cues, `HH:MM:SS,mmm` times, a blank line after each cue.
    pub fn to_srt(&self) -> String {
        let mut out = String::new();
        let cues = self.spoken_segments().flat_map(segment_cues);
        for (index, cue) in cues.enumerate() {
            let _ = write!(
                out,
                "{}\n{} --> {}\n{}\n\n",
                index + 1,
                timestamp(cue.start_ms, ','),
                timestamp(cue.end_ms, ','),
                cue.lines.join("\n")
            );
        }
        out
    }

    /// WebVTT: the `WEBVTT` header, `HH:MM:SS.mmm` times, text escaped for cue payloads.
    pub fn to_vtt(&self) -> String {
        let mut out = String::from("WEBVTT\n\n");
        for cue in self.spoken_segments().flat_map(segment_cues) {
            let text = cue
                .lines
                .join("\n")
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            let _ = write!(
                out,
                "{} --> {}\n{}\n\n",
                timestamp(cue.start_ms, '.'),
                timestamp(cue.end_ms, '.'),
                text
            );
        }
        out
    }

    fn spoken_segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| !s.text.trim().is_empty())
    }
}

fn timestamp(ms: u64, fraction_separator: char) -> String {
    format!(
        "{:02}:{:02}:{:02}{}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        fraction_separator,
        ms % 1000
    )
}

/// One caption cue: up to [`CAPTION_LINES_PER_CUE`] lines, shown from `start_ms` to
/// `end_ms` (always after `start_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cue {
    start_ms: u64,
    end_ms: u64,
    /// Caption text: no empty line (it would end the cue) and no "-->" (it would start
    /// a timing line; defused to "->").
    lines: Vec<String>,
}

/// The cues of a segment with text: its lines ([`layout`]) in groups of
/// [`CAPTION_LINES_PER_CUE`], timed as the module documentation says. A zero-length
/// stretch gets one millisecond.
fn segment_cues(segment: &Segment) -> Vec<Cue> {
    let chars = collapse_whitespace(&segment.text);
    let (times, token_starts) = char_times(segment, &chars);
    let lines = layout(&chars, &token_starts);
    let count = lines.len().div_ceil(CAPTION_LINES_PER_CUE);
    let segment_end_ms = segment.end_ms.max(segment.start_ms);
    let mut previous_end_ms = segment.start_ms;
    let mut cues = Vec::with_capacity(count);
    for (index, group) in lines.chunks(CAPTION_LINES_PER_CUE).enumerate() {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let start_ms = if index == 0 {
            segment.start_ms
        } else {
            times[first.start].0
        };
        let end_ms = if index + 1 == count {
            segment_end_ms
        } else {
            times[last.end - 1].1
        };
        let start_ms = start_ms.min(segment_end_ms).max(previous_end_ms);
        let end_ms = end_ms.min(segment_end_ms).max(start_ms + 1);
        previous_end_ms = end_ms;
        cues.push(Cue {
            start_ms,
            end_ms,
            lines: group
                .iter()
                .map(|line| {
                    chars[line.clone()]
                        .iter()
                        .collect::<String>()
                        .replace("-->", "->")
                })
                .collect(),
        });
    }
    cues
}

/// The text's characters with each run of whitespace made one space, none at the ends.
fn collapse_whitespace(text: &str) -> Vec<char> {
    let mut chars = Vec::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !chars.is_empty() {
            chars.push(' ');
        }
        chars.extend(word.chars());
    }
    chars
}

/// When each character of `chars` is spoken (start, end ms), and whether a word starts
/// there. From the segment's words when they spell the text (whitespace aside), each
/// word's span shared evenly by its characters; otherwise the segment's span shared
/// evenly by all characters, with no word starts. A space takes no time.
fn char_times(segment: &Segment, chars: &[char]) -> (Vec<(u64, u64)>, Vec<bool>) {
    let spelled = chars.iter().copied().filter(|&c| c != ' ');
    let words_spell_text = !segment.words.is_empty()
        && segment
            .words
            .iter()
            .flat_map(|w| w.text.chars().filter(|c| !c.is_whitespace()))
            .eq(spelled.clone());
    // (start ms, end ms, characters) of each timed stretch, in order.
    let spans: Vec<(u64, u64, u64)> = if words_spell_text {
        segment
            .words
            .iter()
            .map(|w| {
                let count = w.text.chars().filter(|c| !c.is_whitespace()).count();
                (w.start_ms, w.end_ms.max(w.start_ms), count as u64)
            })
            .filter(|&(_, _, count)| count > 0)
            .collect()
    } else {
        let end_ms = segment.end_ms.max(segment.start_ms);
        vec![(segment.start_ms, end_ms, spelled.count() as u64)]
    };
    let mut spans = spans.into_iter();
    let mut times = Vec::with_capacity(chars.len());
    let mut token_starts = Vec::with_capacity(chars.len());
    let mut current = spans.next();
    let mut in_span = 0;
    let mut previous_end_ms = segment.start_ms;
    for &c in chars {
        if c == ' ' {
            times.push((previous_end_ms, previous_end_ms));
            token_starts.push(false);
            continue;
        }
        if matches!(current, Some((_, _, count)) if in_span == count) {
            current = spans.next();
            in_span = 0;
        }
        let Some((start_ms, end_ms, count)) = current else {
            times.push((previous_end_ms, previous_end_ms));
            token_starts.push(false);
            continue;
        };
        let span_ms = end_ms - start_ms;
        let char_start_ms = start_ms + span_ms * in_span / count;
        let char_end_ms = start_ms + span_ms * (in_span + 1) / count;
        times.push((char_start_ms, char_end_ms));
        token_starts.push(words_spell_text && in_span == 0);
        previous_end_ms = char_end_ms;
        in_span += 1;
    }
    (times, token_starts)
}

/// How good a line break before a character is, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Break {
    /// Breaks a kinsoku rule (a line would start with closing punctuation or end with an
    /// opening bracket), or comes right after a space (breaking at the space is the same
    /// line, better): only when a line holds nothing else.
    Kinsoku,
    /// Inside a word of a spaced script ("Kiro|ku"): only for a word longer than a line.
    InsideWord,
    /// Between two unspaced characters of one word, or before a particle (会議|は).
    Char,
    /// At a space, a word (token) boundary, or where the script changes (共有|フォルダ).
    Word,
    /// After the kana that end a Japanese phrase (bunsetsu), before the next content
    /// word: では|新しい, までに|共有.
    Phrase,
    /// At the end of a phrase: after punctuation (、。！？) or a closing bracket.
    Punct,
}

/// Characters a line never starts with (JIS X 4051 line-start rule): closing brackets
/// and quotes, commas and stops, ? and !, middle dots, iteration marks, the prolonged
/// sound mark, small kana, and their half-width and ASCII counterparts.
fn never_starts_line(c: char) -> bool {
    matches!(
        c,
        '、' | '。' | '，' | '．' | '・' | '：' | '；' | '？' | '！' | '‼' | '⁇' | '⁈' | '⁉'
            | '…' | '‥' | '〜' | '～' | '」' | '』' | '）' | '］' | '｝' | '〕' | '〉' | '》'
            | '】' | '〙' | '〗' | '〟' | '｠' | '’' | '”' | '»' | 'ヽ' | 'ヾ' | 'ゝ' | 'ゞ'
            | '々' | '〻' | 'ー' | '゛' | '゜' | 'ぁ' | 'ぃ' | 'ぅ' | 'ぇ' | 'ぉ' | 'っ' | 'ゃ'
            | 'ゅ' | 'ょ' | 'ゎ' | 'ゕ' | 'ゖ' | 'ァ' | 'ィ' | 'ゥ' | 'ェ' | 'ォ' | 'ッ' | 'ャ'
            | 'ュ' | 'ョ' | 'ヮ' | 'ヵ' | 'ヶ' | '\u{31F0}'..='\u{31FF}' | '｡' | '､' | '｣'
            | '･' | 'ｰ' | 'ｧ'..='ｯ' | '\u{FF9E}' | '\u{FF9F}' | ')' | ']' | '}' | ','
            | '.' | ':' | ';' | '?' | '!'
    )
}

/// Characters a line never ends with: opening brackets and quotes.
fn never_ends_line(c: char) -> bool {
    matches!(
        c,
        '「' | '『'
            | '（'
            | '［'
            | '｛'
            | '〔'
            | '〈'
            | '《'
            | '【'
            | '〘'
            | '〖'
            | '〝'
            | '｟'
            | '‘'
            | '“'
            | '«'
            | '｢'
            | '('
            | '['
            | '{'
    )
}

/// Characters after which a phrase ends: the best places for a line break.
fn ends_phrase(c: char) -> bool {
    matches!(
        c,
        '、' | '。'
            | '，'
            | '．'
            | '！'
            | '？'
            | '!'
            | '?'
            | '‼'
            | '⁇'
            | '⁈'
            | '⁉'
            | '…'
            | '」'
            | '』'
            | '）'
            | '］'
            | '｝'
            | '〕'
            | '〉'
            | '》'
            | '】'
            | '〙'
            | '〗'
            | '〟'
            | '｠'
            | '｡'
            | '､'
            | '｣'
            | ')'
            | ']'
    )
}

/// The break before `chars[at]` (`0 < at < chars.len()`); `token_starts[at]` says a
/// word starts there.
fn break_before(chars: &[char], token_starts: &[bool], at: usize) -> Break {
    let (before, after) = (chars[at - 1], chars[at]);
    if before == ' ' {
        return Break::Kinsoku;
    }
    if after == ' ' {
        // The space is dropped; the next line starts after it.
        return match chars.get(at + 1) {
            Some(&next) if never_starts_line(next) => Break::Kinsoku,
            _ if ends_phrase(before) => Break::Punct,
            _ => Break::Word,
        };
    }
    let (from, to) = (Script::of(before), Script::of(after));
    if never_starts_line(after) || never_ends_line(before) {
        Break::Kinsoku
    } else if from == Script::Spaced && to == Script::Spaced {
        Break::InsideWord
    } else if ends_phrase(before) {
        Break::Punct
    } else if to == Script::Hiragana && from != Script::Hiragana {
        // A particle or an inflection stays with its word: 会議|は, API|の, 話|し.
        Break::Char
    } else if from == Script::Hiragana && to != Script::Hiragana {
        // The kana of a particle or an inflection end a phrase (bunsetsu): では|新しい.
        Break::Phrase
    } else if token_starts[at] || from != to {
        // A word boundary, or a change of script that usually is one: 予算|API.
        Break::Word
    } else {
        Break::Char
    }
}

/// The script of a character, as far as line breaking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Hiragana,
    Katakana,
    Han,
    /// Other unspaced characters: CJK punctuation and symbols, full-width forms.
    OtherUnspaced,
    /// Latin and every other script written with spaces.
    Spaced,
}

impl Script {
    fn of(c: char) -> Self {
        match c {
            '\u{3040}'..='\u{309F}' => Self::Hiragana,
            '\u{30A0}'..='\u{30FF}' | '\u{31F0}'..='\u{31FF}' | '\u{FF66}'..='\u{FF9F}' => {
                Self::Katakana
            }
            '々'
            | '\u{3400}'..='\u{4DBF}'
            | '\u{4E00}'..='\u{9FFF}'
            | '\u{F900}'..='\u{FAFF}'
            | '\u{20000}'..='\u{2FA1F}' => Self::Han,
            c if is_unspaced(c) => Self::OtherUnspaced,
            _ => Self::Spaced,
        }
    }
}

/// Whether text is laid out as unspaced (Japanese) text: it has at least as many
/// unspaced characters as words in other scripts, so "Kirokuの予算API" (3 against 2)
/// is Japanese and "We met 田中 today" (2 against 3) English.
fn is_unspaced_text(chars: &[char]) -> bool {
    let (mut unspaced, mut words, mut in_word) = (0, 0, false);
    for &c in chars {
        if is_unspaced(c) {
            unspaced += 1;
            in_word = false;
        } else if c.is_whitespace() {
            in_word = false;
        } else {
            words += usize::from(!in_word);
            in_word = true;
        }
    }
    unspaced > 0 && unspaced >= words
}

/// Caption lines of whitespace-collapsed text ([`collapse_whitespace`]) as ranges of
/// `chars`; a space a line breaks at belongs to neither line. `token_starts[i]`: a word
/// starts at `chars[i]` (word boundaries of unspaced text).
fn layout(chars: &[char], token_starts: &[bool]) -> Vec<Range<usize>> {
    let breaks: Vec<Break> = (0..chars.len())
        .map(|at| {
            if at == 0 {
                Break::Kinsoku
            } else {
                break_before(chars, token_starts, at)
            }
        })
        .collect();
    // columns[i]: display columns of chars[..i].
    let mut columns = Vec::with_capacity(chars.len() + 1);
    columns.push(0);
    for &c in chars {
        columns.push(columns[columns.len() - 1] + char_columns(c));
    }
    let lines = if is_unspaced_text(chars) {
        layout_fewest_even(chars, &breaks, &columns, CAPTION_LINE_COLUMNS_UNSPACED)
    } else {
        layout_greedy(chars, &breaks, &columns, CAPTION_LINE_CHARS)
    };
    lines
        .into_iter()
        .map(|Range { mut start, mut end }| {
            while start < end && chars[start] == ' ' {
                start += 1;
            }
            while end > start && chars[end - 1] == ' ' {
                end -= 1;
            }
            start..end
        })
        .filter(|line| !line.is_empty())
        .collect()
}

/// Where the next line starts after a break before `chars[at]`: past the space there.
fn next_line_start(chars: &[char], at: usize) -> usize {
    if chars.get(at) == Some(&' ') {
        at + 1
    } else {
        at
    }
}

/// Fills each line as far as it goes and breaks at the last space or word boundary
/// that fits (inside a word only when the word is longer than a line).
fn layout_greedy(
    chars: &[char],
    breaks: &[Break],
    columns: &[usize],
    limit: usize,
) -> Vec<Range<usize>> {
    let tier = |at: usize| match breaks[at] {
        Break::Punct | Break::Phrase | Break::Word => 3,
        Break::Char => 2,
        Break::InsideWord => 1,
        Break::Kinsoku => 0,
    };
    let mut lines = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        // The longest line from `start` that fits (at least one character).
        let mut fits = start + 1;
        while fits < chars.len() && columns[fits + 1] - columns[start] <= limit {
            fits += 1;
        }
        if fits == chars.len() {
            lines.push(start..fits);
            break;
        }
        // The last of the best breaks: max_by_key keeps the last maximum.
        let at = (start + 1..=fits)
            .max_by_key(|&at| tier(at))
            .unwrap_or(fits);
        lines.push(start..at);
        start = next_line_start(chars, at);
    }
    lines
}

/// Cost of one more cue: fewer cues come first.
const CUE_COST: u64 = 1_000_000;

/// Cost of one more line: less than a cue break inside a word costs, so a cue ends a
/// phrase rather than save a line.
const LINE_COST: u64 = 1_000;

/// How much worse any break is where one cue ends and the next begins: a cue should
/// end a phrase more than a line should.
const CUE_BREAK_FACTOR: u64 = 5;

/// Cost of breaking at a break of this kind, against [`CUE_COST`], [`LINE_COST`] and
/// the squared unused columns of each line (which keep lines even).
fn break_cost(kind: Break) -> u64 {
    match kind {
        Break::Punct => 0,
        Break::Phrase => 100,
        Break::Word => 400,
        Break::Char => 2_000,
        Break::InsideWord => 10_000_000,
        Break::Kinsoku => 1_000_000_000,
    }
}

/// The layout of least total cost (a shortest path over the break positions, as TeX
/// breaks paragraphs, counting lines modulo [`CAPTION_LINES_PER_CUE`] to know where
/// cues end): fewest cues first, then breaks after punctuation, else at word
/// boundaries, above all where a cue ends, then fewer and more even lines; a kinsoku
/// break only when nothing else fits.
fn layout_fewest_even(
    chars: &[char],
    breaks: &[Break],
    columns: &[usize],
    limit: usize,
) -> Vec<Range<usize>> {
    /// Least cost of a layout of the text before a break, and that layout's last line:
    /// the break before it and how many lines (modulo a cue) came before that.
    type Best = Option<(u64, usize, usize)>;
    let n = chars.len();
    // best[at][lines]: the cheapest layout of chars[..at] with a line ending at `at`,
    // having `lines` lines modulo a cue.
    let mut best: Vec<[Best; CAPTION_LINES_PER_CUE]> = vec![[None; CAPTION_LINES_PER_CUE]; n + 1];
    best[0][0] = Some((0, 0, 0));
    for end in 1..=n {
        for previous in (0..end).rev() {
            let start = next_line_start(chars, previous);
            if start >= end {
                continue;
            }
            let width = columns[end] - columns[start];
            if width > limit && end - start > 1 {
                // Earlier starts only make the line longer.
                break;
            }
            let slack = limit.saturating_sub(width) as u64;
            for lines_before in 0..CAPTION_LINES_PER_CUE {
                let Some((cost_before, _, _)) = best[previous][lines_before] else {
                    continue;
                };
                let lines = (lines_before + 1) % CAPTION_LINES_PER_CUE;
                let cost_here = match end {
                    _ if end == n => 0,
                    _ if lines == 0 => break_cost(breaks[end]) * CUE_BREAK_FACTOR,
                    _ => break_cost(breaks[end]),
                };
                let new_cue = if lines_before == 0 { CUE_COST } else { 0 };
                let cost = cost_before + new_cue + LINE_COST + cost_here + slack * slack;
                if best[end][lines].is_none_or(|(least, _, _)| cost < least) {
                    best[end][lines] = Some((cost, previous, lines_before));
                }
            }
        }
    }
    let mut last = best[n]
        .iter()
        .flatten()
        .min_by_key(|(cost, _, _)| *cost)
        .copied();
    let mut lines = Vec::new();
    let mut end = n;
    while let Some((_, previous, lines_before)) = last {
        if end == 0 {
            break;
        }
        lines.push(next_line_start(chars, previous)..end);
        end = previous;
        last = best[previous][lines_before];
    }
    lines.reverse();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Caption lines of `text` without word timings, joined by newlines.
    fn caption_lines(text: &str) -> String {
        let chars = collapse_whitespace(text);
        layout(&chars, &vec![false; chars.len()])
            .into_iter()
            .map(|line| chars[line].iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn sample() -> Transcript {
        let word = |text: &str, start_ms, end_ms| Word {
            text: text.into(),
            start_ms,
            end_ms,
            probability: 0.9,
        };
        Transcript {
            duration_ms: 3_725_500,
            text: "Hello world. Budget <draft> & plan --> go".into(),
            language: "en".into(),
            segments: vec![
                Segment {
                    start_ms: 0,
                    end_ms: 1_500,
                    text: " Hello world.".into(),
                    words: vec![word("Hello", 0, 600), word("world.", 650, 1_500)],
                },
                Segment {
                    start_ms: 3_723_000,
                    end_ms: 3_723_000,
                    text: "Budget <draft> & plan --> go".into(),
                    words: vec![],
                },
                Segment {
                    start_ms: 3_724_000,
                    end_ms: 3_725_000,
                    text: "  ".into(),
                    words: vec![],
                },
            ],
        }
    }

    #[test]
    fn words_are_joined_as_their_script_is_written() {
        assert_eq!(join_words(["Hello", "world."]), "Hello world.");
        assert_eq!(
            join_words(["予算", "会議", "は", "明日", "です。"]),
            "予算会議は明日です。"
        );
        assert_eq!(
            join_words(["Kiroku", "の", "予算", "API", "key"]),
            "Kirokuの予算API key"
        );
        assert_eq!(
            join_words([" 予算", "", "  ", "会議、", "Zoom", "で"]),
            "予算会議、Zoomで"
        );
        assert!(is_unspaced('、') && is_unspaced('ア') && is_unspaced('！'));
        assert!(!is_unspaced('a') && !is_unspaced('한') && !is_unspaced('1'));
    }

    #[test]
    fn srt_numbers_cues_and_uses_comma_milliseconds() {
        assert_eq!(
            sample().to_srt(),
            "1\n00:00:00,000 --> 00:00:01,500\nHello world.\n\n\
             2\n01:02:03,000 --> 01:02:03,001\nBudget <draft> & plan -> go\n\n"
        );
    }

    #[test]
    fn vtt_has_header_dot_milliseconds_and_escaped_text() {
        assert_eq!(
            sample().to_vtt(),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello world.\n\n\
             01:02:03.000 --> 01:02:03.001\nBudget &lt;draft&gt; &amp; plan -&gt; go\n\n"
        );
    }

    #[test]
    fn txt_is_one_line_per_spoken_segment() {
        assert_eq!(
            sample().to_txt(),
            "Hello world.\nBudget <draft> & plan --> go\n"
        );
    }

    #[test]
    fn json_round_trips_with_the_documented_field_names() {
        let json = sample().to_json();
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(value["duration_ms"], 3_725_500);
        assert_eq!(value["segments"][0]["words"][1]["start_ms"], 650);
        assert!(value["segments"][0]["words"][0]["probability"].is_number());
        let back: Transcript = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, sample());
    }

    #[test]
    fn long_captions_wrap_at_word_boundaries_and_unspaced_text_by_characters() {
        let long = "the quarterly budget review covers hiring travel and the new office lease";
        for line in caption_lines(long).lines() {
            assert!(line.chars().count() <= CAPTION_LINE_CHARS, "{line}");
        }
        assert_eq!(caption_lines(long).replace('\n', " "), long);
        let japanese = "予算会議".repeat(20);
        let wrapped = caption_lines(&japanese);
        assert!(
            wrapped
                .lines()
                .all(|l| l.chars().count() <= CAPTION_LINE_CHARS)
        );
        assert_eq!(wrapped.replace('\n', ""), japanese, "no spaces inserted");
    }

    /// Words one after another from `start_ms`: 60 ms per character, 40 ms apart.
    fn timed_words(texts: &[&str], start_ms: u64) -> Vec<Word> {
        let mut at_ms = start_ms;
        texts
            .iter()
            .map(|text| {
                let end_ms = at_ms + 60 * text.chars().count() as u64;
                let word = Word {
                    text: (*text).into(),
                    start_ms: at_ms,
                    end_ms,
                    probability: 0.9,
                };
                at_ms = end_ms + 40;
                word
            })
            .collect()
    }

    /// A transcript of one segment spanning its words plus 300 ms either side.
    fn one_segment(text: String, words: Vec<Word>, language: &str) -> Transcript {
        let start_ms = words
            .first()
            .map_or(10_000, |w| w.start_ms.saturating_sub(300));
        let end_ms = words.last().map_or(20_000, |w| w.end_ms + 300);
        Transcript {
            duration_ms: end_ms + 1_000,
            text: text.clone(),
            language: language.into(),
            segments: vec![Segment {
                start_ms,
                end_ms,
                text,
                words,
            }],
        }
    }

    /// A cue parsed back from SRT or WebVTT.
    #[derive(Debug)]
    struct ParsedCue {
        start_ms: u64,
        end_ms: u64,
        lines: Vec<String>,
    }

    fn parse_timestamp(timestamp: &str) -> u64 {
        let (clock, ms) = timestamp
            .split_once([',', '.'])
            .expect("fraction separator");
        let seconds = clock
            .split(':')
            .map(|part| part.parse::<u64>().expect("number"))
            .fold(0, |total, part| total * 60 + part);
        seconds * 1000 + ms.parse::<u64>().expect("milliseconds")
    }

    /// The cues of an SRT or WebVTT rendering (WebVTT unescaped).
    fn parse_cues(rendered: &str) -> Vec<ParsedCue> {
        let body = rendered.strip_prefix("WEBVTT\n\n").unwrap_or(rendered);
        assert!(body.ends_with("\n\n"), "{rendered}");
        body.trim_end()
            .split("\n\n")
            .map(|block| {
                let mut lines = block.lines().skip_while(|l| !l.contains(" --> "));
                let (start, end) = lines
                    .next()
                    .and_then(|timing| timing.split_once(" --> "))
                    .expect("timing line");
                ParsedCue {
                    start_ms: parse_timestamp(start),
                    end_ms: parse_timestamp(end),
                    lines: lines
                        .map(|l| {
                            l.replace("&lt;", "<")
                                .replace("&gt;", ">")
                                .replace("&amp;", "&")
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Checks what every caption rendering promises for one segment: cues of 1 or 2
    /// lines within `limit` columns, in order, not overlapping, the first starting and
    /// the last ending with the segment, and lines that spell the text, joined by
    /// `separator`.
    fn check_cues(cues: &[ParsedCue], segment: &Segment, limit: usize, separator: &str) {
        let mut previous_end_ms = segment.start_ms;
        for cue in cues {
            assert!(
                (1..=CAPTION_LINES_PER_CUE).contains(&cue.lines.len()),
                "{cue:?}"
            );
            for line in &cue.lines {
                assert!(display_columns(line) <= limit, "{line:?} is too long");
                assert_eq!(line.trim(), line, "{line:?}");
            }
            assert!(cue.start_ms >= previous_end_ms, "{cue:?} overlaps");
            assert!(cue.end_ms > cue.start_ms, "{cue:?}");
            assert!(
                cue.end_ms <= segment.end_ms,
                "{cue:?} ends after the segment"
            );
            previous_end_ms = cue.end_ms;
        }
        assert_eq!(cues[0].start_ms, segment.start_ms);
        assert_eq!(cues[cues.len() - 1].end_ms, segment.end_ms);
        let lines: Vec<&str> = cues
            .iter()
            .flat_map(|c| c.lines.iter().map(String::as_str))
            .collect();
        assert_eq!(
            lines.join(separator),
            segment.text,
            "every character, in order"
        );
    }

    /// Checks the Japanese rules: no space, no line starting with closing punctuation
    /// or ending with an opening bracket.
    fn check_japanese_lines(cues: &[ParsedCue]) {
        for line in cues.iter().flat_map(|c| &c.lines) {
            assert!(!line.contains(' '), "{line:?}: a space was inserted");
            let (first, last) = (line.chars().next(), line.chars().last());
            assert!(
                first.is_some_and(|c| !never_starts_line(c) && !"、。」）".contains(c)),
                "{line:?} starts with closing punctuation"
            );
            assert!(last.is_some_and(|c| !never_ends_line(c)), "{line:?}");
        }
    }

    const JAPANESE_WORDS: [&str; 37] = [
        "来週",
        "の",
        "定例",
        "会議",
        "では",
        "、",
        "新しい",
        "販売",
        "計画",
        "について",
        "話し",
        "合い",
        "ます",
        "。",
        "資料",
        "は",
        "金曜日",
        "までに",
        "共有",
        "フォルダ",
        "に",
        "保存",
        "して",
        "ください",
        "。",
        "予算",
        "の",
        "見直し",
        "には",
        "、",
        "部長",
        "の",
        "承認",
        "が",
        "必要",
        "です",
        "。",
    ];

    #[test]
    fn long_japanese_segment_becomes_two_line_cues_timed_by_its_words() {
        let words = timed_words(&JAPANESE_WORDS, 1_000);
        let text = join_words(JAPANESE_WORDS);
        let transcript = one_segment(text.clone(), words.clone(), "ja");
        let segment = &transcript.segments[0];
        let srt = parse_cues(&transcript.to_srt());
        let vtt = parse_cues(&transcript.to_vtt());
        for cues in [&srt, &vtt] {
            check_cues(cues, segment, CAPTION_LINE_COLUMNS_UNSPACED, "");
            check_japanese_lines(cues);
        }
        let lines: Vec<Vec<&str>> = srt
            .iter()
            .map(|c| c.lines.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            lines,
            [
                vec![
                    "来週の定例会議では、新しい",
                    "販売計画について話し合います。"
                ],
                vec!["資料は金曜日までに共有フォルダに", "保存してください。"],
                vec!["予算の見直しには、", "部長の承認が必要です。"],
            ],
            "a cue per sentence, lines broken between words"
        );
        // Cues change where the words do: cue 2 runs from 資料 to the second 。.
        let (first, last) = (&words[14], &words[24]);
        assert_eq!(
            (srt[1].start_ms, srt[1].end_ms),
            (first.start_ms, last.end_ms)
        );
        for (srt_cue, vtt_cue) in srt.iter().zip(&vtt) {
            assert_eq!(
                (srt_cue.start_ms, srt_cue.end_ms),
                (vtt_cue.start_ms, vtt_cue.end_ms)
            );
        }
    }

    #[test]
    fn japanese_segment_without_words_splits_cue_times_by_characters() {
        let text: String = JAPANESE_WORDS.concat();
        let transcript = one_segment(text.clone(), vec![], "ja");
        let segment = &transcript.segments[0];
        let cues = parse_cues(&transcript.to_vtt());
        check_cues(&cues, segment, CAPTION_LINE_COLUMNS_UNSPACED, "");
        check_japanese_lines(&cues);
        assert!(cues.len() >= 3, "{cues:?}");
        // Each boundary between cues falls where its characters are, pro rata.
        let total = text.chars().count() as u64;
        let span_ms = segment.end_ms - segment.start_ms;
        let mut before = 0;
        for pair in cues.windows(2) {
            before += pair[0].lines.concat().chars().count() as u64;
            assert_eq!(pair[0].end_ms, segment.start_ms + span_ms * before / total);
            assert_eq!(pair[1].start_ms, pair[0].end_ms);
        }
    }

    #[test]
    fn japanese_lines_obey_kinsoku_and_keep_punctuation() {
        for closing in ['、', '。', '」', '）', 'ー', 'ょ', '！', '？'] {
            let text = format!("{}{closing}{}", "あ".repeat(16), "い".repeat(10));
            let wrapped = caption_lines(&text);
            assert_eq!(wrapped.replace('\n', ""), text, "nothing lost or added");
            for line in wrapped.lines() {
                assert!(!line.starts_with(closing), "{wrapped}");
                assert!(display_columns(line) <= CAPTION_LINE_COLUMNS_UNSPACED);
            }
        }
        let text = format!("{}「{}」", "あ".repeat(15), "い".repeat(10));
        let wrapped = caption_lines(&text);
        assert!(wrapped.lines().all(|l| !l.ends_with('「')), "{wrapped}");
        assert_eq!(wrapped.replace('\n', ""), text);
        // A sentence end is where a line prefers to break.
        assert_eq!(
            caption_lines("会議を始めます。今日は予算を決めます。"),
            "会議を始めます。\n今日は予算を決めます。"
        );
    }

    #[test]
    fn mixed_japanese_and_latin_text_is_measured_in_columns_and_never_split_inside_words() {
        let words = timed_words(&["Kiroku", "の", "予算", "API"], 0);
        let short = one_segment(join_words(["Kiroku", "の", "予算", "API"]), words, "ja");
        assert_eq!(short.segments[0].text, "Kirokuの予算API");
        let cues = parse_cues(&short.to_srt());
        assert_eq!(cues.len(), 1);
        assert_eq!(cues[0].lines, ["Kirokuの予算API"]);
        assert_eq!(display_columns("Kirokuの予算API"), 15);

        let text =
            "KirokuのAPIキーは管理画面から発行できます。KirokuのAPIの予算は来月の会議で決めます。";
        let transcript = one_segment(text.into(), vec![], "ja");
        let cues = parse_cues(&transcript.to_srt());
        check_cues(
            &cues,
            &transcript.segments[0],
            CAPTION_LINE_COLUMNS_UNSPACED,
            "",
        );
        check_japanese_lines(&cues);
        let lines: Vec<&String> = cues.iter().flat_map(|c| &c.lines).collect();
        for pair in lines.windows(2) {
            let (end, start) = (pair[0].chars().last(), pair[1].chars().next());
            assert!(
                !(end.is_some_and(|c| c.is_ascii_alphabetic())
                    && start.is_some_and(|c| c.is_ascii_alphabetic())),
                "a Latin word was split: {lines:?}"
            );
        }

        // English with a Japanese name stays English: spaces kept, 42 columns.
        assert_eq!(
            caption_lines("We met  田中さん today"),
            "We met 田中さん today"
        );
    }

    #[test]
    fn long_english_segment_becomes_cues_of_two_greedy_lines() {
        let text = "the quarterly budget review covers hiring travel and the new office lease \
                    and we will decide on the remaining items at the next planning meeting \
                    on Thursday afternoon";
        let texts: Vec<&str> = text.split(' ').collect();
        let words = timed_words(&texts, 5_000);
        let transcript = one_segment(text.into(), words.clone(), "en");
        let segment = &transcript.segments[0];
        let srt = transcript.to_srt();
        assert!(srt.starts_with("1\n00:00:04,700 --> "), "{srt}");
        let cues = parse_cues(&srt);
        check_cues(&cues, segment, CAPTION_LINE_CHARS, " ");
        assert_eq!(cues.len(), 3, "{srt}");
        assert_eq!(
            cues[0].lines,
            [
                "the quarterly budget review covers hiring",
                "travel and the new office lease and we"
            ]
        );
        // Inner cue boundaries are the times of the words on either side.
        let mut words_before = 0;
        for pair in cues.windows(2) {
            words_before += pair[0].lines.join(" ").split(' ').count();
            assert_eq!(pair[0].end_ms, words[words_before - 1].end_ms);
            assert_eq!(pair[1].start_ms, words[words_before].start_ms);
        }
        assert_eq!(parse_cues(&transcript.to_vtt()).len(), 3);
    }

    #[test]
    fn display_columns_count_full_width_as_two_and_tails_keep_whole_characters() {
        assert_eq!(display_columns("abc"), 3);
        assert_eq!(display_columns("予算API、"), 9);
        assert_eq!(display_columns("ｶﾅ"), 2);
        assert_eq!(last_columns("会議は明日", 5), "明日");
        assert_eq!(last_columns("会議は明日", 6), "は明日");
        assert_eq!(last_columns("budget会議", 5), "t会議");
        assert_eq!(last_columns("短い", 100), "短い");
        assert_eq!(last_columns("短い", 0), "");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Word text from scripts and characters that have broken line breakers:
        /// zero-width characters, combining marks, wide CJK, emoji, long runs.
        fn word_text() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-zA-Z.,]{1,12}",
                "[ぁ-んァ-ン一-龯。、]{1,8}",
                "[\u{200B}\u{200C}\u{200D}\u{FEFF}\u{0301}]{1,4}",
                "[a-z\u{200B}]{1,60}",
                "[😀-🙏]{1,3}",
                any::<String>(),
            ]
        }

        fn transcript() -> impl Strategy<Value = Transcript> {
            proptest::collection::vec(
                (
                    proptest::collection::vec((word_text(), 0u64..3_000), 0..12),
                    0u64..5_000,
                ),
                0..5,
            )
            .prop_map(|segments| {
                let mut at = 0u64;
                let segments: Vec<Segment> = segments
                    .into_iter()
                    .map(|(words, gap)| {
                        let start_ms = at + gap;
                        let mut t = start_ms;
                        let words: Vec<Word> = words
                            .into_iter()
                            .map(|(text, length)| {
                                let word = Word {
                                    text,
                                    start_ms: t,
                                    end_ms: t + length,
                                    probability: 0.5,
                                };
                                t += length;
                                word
                            })
                            .collect();
                        at = t;
                        Segment {
                            start_ms,
                            end_ms: t,
                            text: join_words(words.iter().map(|w| w.text.as_str())),
                            words,
                        }
                    })
                    .collect();
                Transcript {
                    duration_ms: at,
                    text: join_words(segments.iter().map(|s| s.text.as_str())),
                    language: "ja".into(),
                    segments,
                }
            })
        }

        proptest! {
            /// Every format renders any transcript (terminating, no panic); caption
            /// cues never run backwards.
            #[test]
            fn every_format_renders_any_transcript(transcript in transcript()) {
                for format in [Format::Txt, Format::Json, Format::Srt, Format::Vtt] {
                    let _ = transcript.render(format);
                }
                let srt = transcript.to_srt();
                for block in srt.split("\n\n").filter(|b| !b.trim().is_empty()) {
                    let timing = block.lines().nth(1).unwrap_or_default();
                    if let Some((start, end)) = timing.split_once(" --> ") {
                        prop_assert!(start <= end, "{timing}");
                    }
                }
            }

            /// Caption layout of any text terminates and keeps every visible character.
            #[test]
            fn layout_keeps_every_character(text in proptest::collection::vec(word_text(), 0..20)) {
                let text = text.join(" ");
                let chars = collapse_whitespace(&text);
                let lines = layout(&chars, &vec![false; chars.len()]);
                let kept: usize = lines.iter().map(|l| l.len()).sum();
                let visible = chars.iter().filter(|c| **c != ' ').count();
                prop_assert!(kept >= visible, "{kept} < {visible}");
            }
        }
    }
}
