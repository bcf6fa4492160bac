//! Measures how files should be cut ([`kiroku_engine::file`]): each test meeting decoded
//! whole (Whisper's own 30 s windows, the previous file path) and as utterance pieces
//! gathered up to N ms, with decode time and error rate side by side, alternating over
//! `ROUNDS` rounds (median time).
//!
//! ```text
//! cargo run --release -p kiroku-engine --example file_trials -- en|en-long|ja [GATHER_MS...]
//! ```
//!
//! English uses tiny.en (`ggml-tiny.en.bin`), Japanese base (`ggml-base.bin`) from
//! `$KIROKU_MODEL_DIR` (the model may be overridden with `KIROKU_TRIAL_MODEL`, a file name
//! in that folder).

use std::time::Instant;

use anyhow::{Context as _, Result};
use kiroku_engine::file::{FILE_GATHER_MS, transcribe_gathered};
use kiroku_engine::{Engine, EngineConfig, TranscribeOptions};

const ROUNDS: usize = 3;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let meeting = args.next().unwrap_or_else(|| "en".into());
    let mut gathers: Vec<u32> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    if gathers.is_empty() {
        gathers = vec![0, FILE_GATHER_MS];
    }
    let dir = tempfile::tempdir()?;
    let (samples, reference, model, code) =
        kiroku_tests::speech::trial_meeting(&meeting, dir.path())?;
    let model = std::env::var("KIROKU_TRIAL_MODEL").unwrap_or_else(|_| model.into());
    let error_rate = |text: &str| match code {
        Some(_) => kiroku_tests::cer::character_error_rate(&reference, text),
        None => kiroku_tests::wer::word_error_rate(&reference, text),
    };
    let engine = Engine::load(&EngineConfig::new(kiroku_tests::model_dir().join(&model)))
        .context("loading the model (make model)")?;
    let options = TranscribeOptions {
        language: code.map(str::to_string),
        beam_size: 1,
        ..TranscribeOptions::default()
    };
    let audio_s = samples.len() as f64 / 16_000.0;
    // KIROKU_TRIAL_VAD: auto (default), silero or energy.
    let vad = kiroku_engine::vad::choose(
        &std::env::var("KIROKU_TRIAL_VAD").unwrap_or_else(|_| "auto".into()),
        &kiroku_tests::model_dir(),
    )?;
    println!("voice activity: {vad:?}");
    // (name, times, text, segments)
    let mut rows: Vec<(String, Vec<f64>, String, usize)> = Vec::new();
    rows.push(("whole file".into(), Vec::new(), String::new(), 0));
    for gather in &gathers {
        rows.push((
            format!("pieces, gathered to {gather} ms"),
            Vec::new(),
            String::new(),
            0,
        ));
    }
    for _ in 0..ROUNDS {
        for (index, row) in rows.iter_mut().enumerate() {
            let started = Instant::now();
            let transcript = if index == 0 {
                engine.transcribe(samples.clone(), options.clone(), None)?
            } else {
                transcribe_gathered(
                    &engine,
                    &samples,
                    options.clone(),
                    vad.clone(),
                    gathers[index - 1],
                    None,
                )?
            };
            row.1.push(started.elapsed().as_secs_f64());
            row.2 = transcript.text;
            row.3 = transcript.segments.len();
        }
    }
    println!("{model}, {audio_s:.1} s of audio, {ROUNDS} alternating rounds, median decode time");
    println!("| file path | RTF | error rate | segments |");
    println!("|---|---|---|---|");
    for (name, times, text, segments) in &mut rows {
        times.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.4} | {:.3} | {segments} |",
            times[times.len() / 2] / audio_s,
            error_rate(text)
        );
    }
    for (name, _, text, _) in &rows {
        println!("\n{name}: {text}");
    }
    Ok(())
}
