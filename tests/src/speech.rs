//! Real speech for tests: espeak-ng synthesises sentences, sox pads and converts them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Meeting sentences written for Kiroku's tests and benchmark (not from any corpus),
/// one per line in `tests/support/meeting_sentences.txt`.
pub fn meeting_sentences() -> Vec<&'static str> {
    include_str!("../support/meeting_sentences.txt")
        .lines()
        .collect()
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?} (make test installs espeak-ng and sox)"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Synthesises `text` with espeak-ng, then lets sox resample it to `rate_hz` with
/// `channels` channels and pad `lead_silence_s` seconds of silence before the speech.
pub fn synthesize(
    dir: &Path,
    name: &str,
    text: &str,
    rate_hz: u32,
    channels: u16,
    lead_silence_s: f32,
) -> Result<PathBuf> {
    let raw = dir.join(format!("{name}.espeak.wav"));
    run(Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "155", "-w"])
        .arg(&raw)
        .arg(text))?;
    let out = dir.join(format!("{name}.wav"));
    run(Command::new("sox")
        .arg(&raw)
        .args([
            "-b",
            "16",
            "-r",
            &rate_hz.to_string(),
            "-c",
            &channels.to_string(),
        ])
        .arg(&out)
        .args(["pad", &lead_silence_s.to_string(), "0.3"]))?;
    Ok(out)
}

/// Duration of a WAV file in milliseconds, as sox reports it.
pub fn duration_ms(path: &Path) -> Result<u64> {
    let output = Command::new("soxi")
        .arg("-D")
        .arg(path)
        .output()
        .context("running soxi")?;
    let seconds: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("parsing soxi -D")?;
    Ok((seconds * 1000.0).round() as u64)
}
