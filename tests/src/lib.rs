//! Test support shared by Kiroku's end-to-end tests: real speech made with espeak-ng,
//! Open JTalk and sox (installed by `make test`), word and character error rates, and an
//! in-process OTLP collector.

pub mod cer;
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
