//! Measures how utterance finals (the minutes) should be decoded: the live path run
//! unpaced over the test meetings (deterministic for the engine's output), once per
//! variant, beside the whole-file decode of the same audio.
//!
//! ```text
//! cargo run --release -p kiroku-engine --example finals_trials -- en|en-cont|en-long|ja [VARIANT...]
//! VARIANT = left_ms:margin_frames:prompt_chars:beam[:gather_ms]
//!           (default: the language's defaults; prompt_chars with a trailing `-`, e.g.
//!           `0-`: without the language's fixed prompt, Japanese はい。)
//! ```
//!
//! English uses tiny.en (`ggml-tiny.en.bin`), Japanese base (`ggml-base.bin`) from
//! `$KIROKU_MODEL_DIR`. Prints one row per variant: the minutes' error rate (WER for
//! English, CER for Japanese), the batch's, the decodes and the finals; then the minutes.

use anyhow::{Context as _, Result, bail};
use kiroku_engine::live::{FinalsConfig, simulate};
use kiroku_engine::streaming::PolicyConfig;
use kiroku_engine::{Engine, EngineConfig, TranscribeOptions};

fn parse_variant(text: &str, language: &str) -> Result<FinalsConfig> {
    let parts: Vec<&str> = text.split(':').collect();
    let (left, margin, prompt, beam, rest) = match parts.as_slice() {
        [left, margin, prompt, beam, rest @ ..] if rest.len() <= 1 => {
            (left, margin, prompt, beam, rest)
        }
        _ => bail!("variant {text:?} is not left_ms:margin_frames:prompt_chars:beam[:gather_ms]"),
    };
    let defaults = FinalsConfig::default();
    let (prompt, fixed_prompt) = match prompt.strip_suffix('-') {
        Some(chars) => (chars, None),
        None => (
            *prompt,
            defaults.clone().for_language(language).fixed_prompt,
        ),
    };
    Ok(FinalsConfig {
        left_context_ms: left.parse()?,
        audio_ctx_margin_frames: margin.parse()?,
        prompt_chars: prompt.parse()?,
        fixed_prompt,
        beam_size: beam.parse()?,
        gather_ms: rest.first().map_or(Ok(defaults.gather_ms), |v| v.parse())?,
        ..defaults
    })
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let language = args.next().unwrap_or_else(|| "en".into());
    let names: Vec<String> = args.collect();
    let dir = tempfile::tempdir()?;
    let (samples, reference, model, code) =
        kiroku_tests::speech::trial_meeting(&language, dir.path())?;
    let mut variants: Vec<(String, FinalsConfig)> = names
        .into_iter()
        .map(|a| parse_variant(&a, code.unwrap_or("en")).map(|c| (a, c)))
        .collect::<Result<_>>()?;
    if variants.is_empty() {
        let defaults = FinalsConfig::default().for_language(code.unwrap_or("en"));
        let name = format!(
            "{}:{}:{}:{} (defaults)",
            defaults.left_context_ms,
            defaults.audio_ctx_margin_frames,
            defaults.prompt_chars,
            defaults.beam_size
        );
        variants.push((name, defaults));
    }
    let error_rate = |text: &str| match code {
        Some(_) => kiroku_tests::cer::character_error_rate(&reference, text),
        None => kiroku_tests::wer::word_error_rate(&reference, text),
    };
    let engine = Engine::load(&EngineConfig::new(kiroku_tests::model_dir().join(model)))
        .context("loading the model (make model)")?;
    let batch = engine
        .transcribe(
            samples.clone(),
            TranscribeOptions {
                language: code.map(str::to_string),
                beam_size: 1,
                ..TranscribeOptions::default()
            },
            None,
        )?
        .text;
    let policy = PolicyConfig::default().for_language(code.unwrap_or("en"));
    println!(
        "| variant (left ms:margin:prompt:beam) | minutes | batch | decodes | finals | final decode mean / max ms |"
    );
    println!("|---|---|---|---|---|---|");
    let mut texts = Vec::new();
    for (name, finals) in variants {
        let simulation = simulate(&engine, &samples, policy.clone(), finals, code, 100, false)?;
        let minutes = simulation.minutes();
        let decode_ms = &simulation.final_decode_ms;
        println!(
            "| {name} | {:.3} | {:.3} | {} | {} | {} / {} |",
            error_rate(&minutes),
            error_rate(&batch),
            simulation.decodes,
            simulation.finals.len(),
            decode_ms.iter().sum::<u64>() / decode_ms.len().max(1) as u64,
            decode_ms.iter().max().copied().unwrap_or(0)
        );
        texts.push((name, minutes));
    }
    println!("\nbatch: {batch}");
    for (name, minutes) in texts {
        println!("{name}: {minutes}");
    }
    Ok(())
}
