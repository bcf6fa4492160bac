//! Test support shared by Kiroku's end-to-end tests: real speech made with espeak-ng,
//! Open JTalk and sox (installed by `make test`), word and character error rates, and an
//! in-process OTLP collector; with the `cluster` feature, a real Kiroku cluster of
//! `kiroku serve` processes ([`cluster`]).

pub mod cer;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod otlp;
pub mod speech;
pub mod wer;

/// A `kiroku` run that failed on bad input: exit code 2, one `error: ...` line on
/// stderr containing `expected`, nothing on stdout.
pub fn assert_input_error(out: &std::process::Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code for {expected}: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains(expected),
        "expected {expected:?} in {stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// The model directory the tests load from: `KIROKU_MODEL_DIR`, else
/// `~/.cache/kiroku/models` (where `make model` puts them), as `kiroku` resolves it.
pub fn model_dir() -> std::path::PathBuf {
    let configured = std::env::var_os("KIROKU_MODEL_DIR").map(Into::into);
    let home: Option<std::path::PathBuf> = std::env::var_os("HOME").map(Into::into);
    configured.unwrap_or_else(|| {
        home.unwrap_or_else(|| ".".into())
            .join(".cache/kiroku/models")
    })
}

/// The test-side Python (`KIROKU_TEST_PYTHON`, else `build/pyenv/bin/python` as `make
/// pyenv` leaves it) with the subtitle parsers, aiosmtpd and promql-parser.
pub fn test_python() -> std::path::PathBuf {
    let python = std::env::var_os("KIROKU_TEST_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/pyenv/bin/python"),
        std::path::PathBuf::from,
    );
    assert!(
        python.is_file(),
        "{} is missing: run `make pyenv` (or set KIROKU_TEST_PYTHON)",
        python.display()
    );
    python
}

/// Parses SRT and WebVTT `files` with the real parsers (PyPI `srt`, `webvtt-py`, by
/// `tests/support/check_captions.py`), which also check that they agree cue for cue;
/// with `cues_out`, the checker writes the cues there as JSON. Panics with the
/// checker's complaint.
pub fn check_captions(files: &[std::path::PathBuf], cues_out: Option<&std::path::Path>) {
    let mut command = std::process::Command::new(test_python());
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/support/check_captions.py"
        ))
        .args(files);
    if let Some(out) = cues_out {
        command.arg("--cues").arg(out);
    }
    let check = command.output().expect("run caption checker");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
