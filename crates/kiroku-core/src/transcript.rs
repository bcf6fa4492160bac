//! A transcript and its renderings: plain text, JSON, SubRip (SRT) and WebVTT.
//!
//! Times are integer milliseconds from the start of the audio. The engine promises
//! words in order, non-overlapping, inside their segment and inside the audio; the
//! renderers rely on that and additionally never emit a cue that ends before it starts.

use std::fmt::Write as _;

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

/// Longest caption line before it is wrapped (the usual broadcast guideline).
pub const CAPTION_LINE_CHARS: usize = 42;

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
        for (index, segment) in self.spoken_segments().enumerate() {
            let (start, end) = cue_times(segment);
            let _ = write!(
                out,
                "{}\n{} --> {}\n{}\n\n",
                index + 1,
                timestamp(start, ','),
                timestamp(end, ','),
                caption_lines(&segment.text)
            );
        }
        out
    }

    /// WebVTT: the `WEBVTT` header, `HH:MM:SS.mmm` times, text escaped for cue payloads.
    pub fn to_vtt(&self) -> String {
        let mut out = String::from("WEBVTT\n\n");
        for segment in self.spoken_segments() {
            let (start, end) = cue_times(segment);
            let text = caption_lines(&segment.text)
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            let _ = write!(
                out,
                "{} --> {}\n{}\n\n",
                timestamp(start, '.'),
                timestamp(end, '.'),
                text
            );
        }
        out
    }

    fn spoken_segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| !s.text.trim().is_empty())
    }
}

/// A cue must end after it starts; a zero-length segment gets one millisecond.
fn cue_times(segment: &Segment) -> (u64, u64) {
    (segment.start_ms, segment.end_ms.max(segment.start_ms + 1))
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

/// Caption text: whitespace collapsed (a blank line would end the cue), "-->" defused
/// (it would start a timing line), wrapped at word boundaries to
/// [`CAPTION_LINE_CHARS`]. Text without spaces (Japanese) is wrapped by characters.
fn caption_lines(text: &str) -> String {
    let text = text.replace("-->", "->");
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > CAPTION_LINE_CHARS
        {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
        while line.chars().count() > CAPTION_LINE_CHARS {
            let head: String = line.chars().take(CAPTION_LINE_CHARS).collect();
            let tail: String = line.chars().skip(CAPTION_LINE_CHARS).collect();
            lines.push(head);
            line = tail;
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
