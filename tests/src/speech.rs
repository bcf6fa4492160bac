//! Real speech for tests: espeak-ng (English) and Open JTalk (Japanese) synthesise
//! sentences, sox pads, joins and converts them.

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
    let output = command.output().with_context(|| {
        format!("running {command:?} (make test installs espeak-ng, open-jtalk and sox)")
    })?;
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
    synthesize_voice(
        dir,
        name,
        text,
        "en-us",
        rate_hz,
        channels,
        lead_silence_s,
        0.3,
    )
}

/// [`synthesize`] with an espeak-ng `voice` (e.g. `en-gb+m3`) and `trail_silence_s`
/// seconds of silence after the speech.
#[allow(clippy::too_many_arguments)]
pub fn synthesize_voice(
    dir: &Path,
    name: &str,
    text: &str,
    voice: &str,
    rate_hz: u32,
    channels: u16,
    lead_silence_s: f32,
    trail_silence_s: f32,
) -> Result<PathBuf> {
    let raw = dir.join(format!("{name}.espeak.wav"));
    run(Command::new("espeak-ng")
        .args(["-v", voice, "-s", "155", "-w"])
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
        .args([
            "pad",
            &lead_silence_s.to_string(),
            &trail_silence_s.to_string(),
        ]))?;
    Ok(out)
}

/// The meeting sentences the streaming tests use: without those whose numbers Whisper
/// writes as digits, and the one tiny.en mishears with a streaming buffer's short
/// context ("The cost customer", see README, streaming benchmark), so the word error
/// rate measures the streaming (nothing lost, nothing doubled), not the model.
pub fn streaming_meeting_sentences() -> Vec<&'static str> {
    meeting_sentences()
        .into_iter()
        .filter(|s| {
            !s.contains("twelve percent")
                && !s.contains("at ten")
                && !s.contains("Osaka")
                && !s.contains("customer asked")
        })
        .collect()
}

/// Japanese meeting sentences written for Kiroku's tests (not from any corpus), one per
/// line in `tests/support/japanese_meeting_sentences.txt`.
pub fn japanese_meeting_sentences() -> Vec<&'static str> {
    include_str!("../support/japanese_meeting_sentences.txt")
        .lines()
        .collect()
}

/// Open JTalk's dictionary as Debian's `open-jtalk-mecab-naist-jdic` installs it.
pub const OPEN_JTALK_DICTIONARY: &str = "/var/lib/mecab/dic/open-jtalk/naist-jdic";

/// The HTS voice Open JTalk speaks with: `$KIROKU_TEST_HTS_VOICE`, else what
/// `make japanese-voice` installs (`build/voice/mei_normal.htsvoice`).
pub fn japanese_voice() -> Result<PathBuf> {
    let voice = std::env::var_os("KIROKU_TEST_HTS_VOICE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/voice/mei_normal.htsvoice"),
        PathBuf::from,
    );
    if !voice.is_file() {
        bail!(
            "{} is missing: run `make japanese-voice` (or set KIROKU_TEST_HTS_VOICE)",
            voice.display()
        );
    }
    Ok(voice)
}

/// Synthesises Japanese `text` with Open JTalk (voice Mei, 48 kHz), then lets sox
/// resample it to 16 kHz mono 16-bit and pad `lead_silence_s` seconds of silence before
/// and 0.4 s after the speech.
pub fn synthesize_japanese(
    dir: &Path,
    name: &str,
    text: &str,
    lead_silence_s: f32,
) -> Result<PathBuf> {
    let voice = japanese_voice()?;
    if !Path::new(OPEN_JTALK_DICTIONARY).is_dir() {
        bail!(
            "{OPEN_JTALK_DICTIONARY} is missing: install open-jtalk-mecab-naist-jdic (make deps)"
        );
    }
    let text_file = dir.join(format!("{name}.txt"));
    std::fs::write(&text_file, format!("{text}\n"))
        .with_context(|| format!("writing {}", text_file.display()))?;
    let raw = dir.join(format!("{name}.jtalk.wav"));
    run(Command::new("open_jtalk")
        .arg("-x")
        .arg(OPEN_JTALK_DICTIONARY)
        .arg("-m")
        .arg(&voice)
        .arg("-ow")
        .arg(&raw)
        .arg(&text_file))?;
    let out = dir.join(format!("{name}.wav"));
    // -G: guard against clipping while resampling (Open JTalk speaks near full scale).
    run(Command::new("sox")
        .arg("-G")
        .arg(&raw)
        .args(["-b", "16", "-r", "16000", "-c", "1"])
        .arg(&out)
        .args(["pad", &lead_silence_s.to_string(), "0.4"]))?;
    Ok(out)
}

/// Joins WAV files of the same format, one after the other, into `out`.
pub fn concatenate(parts: &[PathBuf], out: &Path) -> Result<()> {
    run(Command::new("sox").args(parts).arg(out))
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

/// 16 kHz mono 16-bit WAV files one after the other as samples in -1..1, over a faint
/// noise floor (~−55 dBFS) so a VAD does not see digital silence. The noise is a fixed
/// linear congruential generator: the same on every run.
pub fn over_noise_floor(wavs: &[PathBuf]) -> Result<Vec<f32>> {
    let mut samples = concatenated(wavs)?;
    let mut state: u32 = 0x1234_5678;
    for sample in &mut samples {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *sample += ((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.006;
    }
    Ok(samples)
}

/// 16 kHz mono 16-bit WAV files one after the other as samples in -1..1, the pauses
/// digital silence (as a noise gate or a conferencing app's noise suppression leaves).
pub fn concatenated(wavs: &[PathBuf]) -> Result<Vec<f32>> {
    let mut samples = Vec::new();
    for wav in wavs {
        let reader =
            hound::WavReader::open(wav).with_context(|| format!("opening {}", wav.display()))?;
        for sample in reader.into_samples::<i16>() {
            samples.push(f32::from(sample?) / 32768.0);
        }
    }
    Ok(samples)
}

/// The English meeting script spoken sentence after sentence, 0.6 s apart (sox pads
/// 0.3 s on each side), over the noise floor; and the script.
pub fn english_meeting(dir: &Path) -> Result<(Vec<f32>, String)> {
    let sentences = meeting_sentences();
    let wavs = sentences
        .iter()
        .enumerate()
        .map(|(index, sentence)| synthesize(dir, &format!("s{index}"), sentence, 16_000, 1, 0.3))
        .collect::<Result<Vec<_>>>()?;
    Ok((over_noise_floor(&wavs)?, sentences.join(" ")))
}

/// The English meeting script spoken as one text (a single espeak-ng call: only its
/// short pauses between sentences, 0.5 s of silence before and after), over the noise
/// floor; and the script. This is `make bench-stream`'s 42 s meeting: harder for
/// utterance cuts than [`english_meeting`], as real speech without long pauses is.
pub fn english_continuous_meeting(dir: &Path) -> Result<(Vec<f32>, String)> {
    let script = meeting_sentences().join(" ");
    let wav = synthesize_voice(dir, "continuous", &script, "en-us", 16_000, 1, 0.5, 0.5)?;
    Ok((over_noise_floor(&[wav])?, script))
}

/// The long English meeting (`tests/support/long_meeting.txt`, written for Kiroku's
/// tests): three speakers, about 40 turns, as (espeak-ng voice, sentence).
pub fn long_meeting_turns() -> Vec<(&'static str, &'static str)> {
    include_str!("../support/long_meeting.txt")
        .lines()
        .filter_map(|line| line.split_once('|'))
        .map(|(speaker, text)| {
            let voice = match speaker {
                "A" => "en-us",
                "B" => "en-gb+m3",
                _ => "en-us+f3",
            };
            (voice, text)
        })
        .collect()
}

/// The long meeting spoken turn after turn by three voices, with pauses of 0.3–0.9 s
/// between turns (shorter within one speaker's turns), over the noise floor; and the
/// script. About 3.5 minutes.
pub fn english_long_meeting(dir: &Path) -> Result<(Vec<f32>, String)> {
    let (wavs, script) = english_long_meeting_turns(dir)?;
    Ok((over_noise_floor(&wavs)?, script))
}

/// The long meeting's turns as WAV files (see [`english_long_meeting`]) and the script.
pub fn english_long_meeting_turns(dir: &Path) -> Result<(Vec<PathBuf>, String)> {
    let turns = long_meeting_turns();
    let mut wavs = Vec::with_capacity(turns.len());
    for (index, (voice, text)) in turns.iter().enumerate() {
        let same_speaker = turns.get(index + 1).is_some_and(|(next, _)| next == voice);
        let pause_s = if same_speaker {
            0.3
        } else {
            0.5 + 0.1 * (index % 5) as f32
        };
        let lead_s = if index == 0 { 0.5 } else { 0.0 };
        wavs.push(synthesize_voice(
            dir,
            &format!("long{index}"),
            text,
            voice,
            16_000,
            1,
            lead_s,
            pause_s,
        )?);
    }
    let script: Vec<&str> = turns.iter().map(|(_, text)| *text).collect();
    Ok((wavs, script.join(" ")))
}

/// The Japanese meeting sentences (Open JTalk, 0.5 s of silence before the first, 0.4 s
/// after each) over the noise floor; and the script.
pub fn japanese_meeting(dir: &Path) -> Result<(Vec<f32>, String)> {
    let sentences = japanese_meeting_sentences();
    let wavs = sentences
        .iter()
        .enumerate()
        .map(|(index, sentence)| {
            let lead_silence_s = if index == 0 { 0.5 } else { 0.0 };
            synthesize_japanese(dir, &format!("ja{index}"), sentence, lead_silence_s)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((over_noise_floor(&wavs)?, sentences.concat()))
}

/// A test meeting of the engine's trial examples (`finals_trials`, `file_trials`) by
/// name: `en` ([`english_meeting`], tiny.en), `en-cont` ([`english_continuous_meeting`],
/// tiny.en), `en-long` ([`english_long_meeting`],
/// tiny.en) or `ja` ([`japanese_meeting`], base). Returns the samples, the script, the
/// model file name in the model directory and the language to pass (`None`: the
/// model's own, English).
pub fn trial_meeting(
    name: &str,
    dir: &Path,
) -> Result<(Vec<f32>, String, &'static str, Option<&'static str>)> {
    Ok(match name {
        "ja" => {
            let (samples, reference) = japanese_meeting(dir)?;
            (samples, reference, "ggml-base.bin", Some("ja"))
        }
        "en" => {
            let (samples, reference) = english_meeting(dir)?;
            (samples, reference, "ggml-tiny.en.bin", None)
        }
        "en-long" => {
            let (samples, reference) = english_long_meeting(dir)?;
            (samples, reference, "ggml-tiny.en.bin", None)
        }
        "en-cont" => {
            let (samples, reference) = english_continuous_meeting(dir)?;
            (samples, reference, "ggml-tiny.en.bin", None)
        }
        other => bail!("meeting {other:?}: use en, en-cont, en-long or ja"),
    })
}
