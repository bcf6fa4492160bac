use kiroku_engine::audio::decode_wav;
use kiroku_engine::engine::default_model_path;
use kiroku_engine::streaming::{PolicyConfig, simulate};
use kiroku_engine::{Engine, EngineConfig};
use kiroku_tests::speech::{meeting_sentences, synthesize};
use kiroku_tests::wer::word_error_rate;

#[test]
fn sweep() {
    let engine = Engine::load(&EngineConfig::new(default_model_path())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sentences = meeting_sentences();
    let mut samples = Vec::new();
    for (i, s) in sentences.iter().enumerate() {
        let wav = synthesize(dir.path(), &format!("s{i}"), s, 16_000, 1, 0.3).unwrap();
        samples.extend(
            decode_wav(std::fs::File::open(&wav).unwrap())
                .unwrap()
                .samples,
        );
    }
    let mut state: u32 = 0x1234_5678;
    for sample in &mut samples {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *sample += ((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.006;
    }
    let reference = sentences.join(" ");
    let variants: Vec<(u32, u32)> = std::env::var("SWEEP")
        .unwrap()
        .split(',')
        .map(|v| {
            let (a, b) = v.split_once(':').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    for (step_ms, gap) in variants {
        let config = PolicyConfig {
            step_ms,
            agreement_gap_ms: gap,
            ..PolicyConfig::default()
        };
        let t = std::time::Instant::now();
        let sim = simulate(&engine, &samples, config, 100, false).unwrap();
        let text = sim
            .finals
            .iter()
            .filter(|f| !f.text.is_empty())
            .map(|f| f.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        eprintln!(
            "step {step_ms} gap {gap}: decodes {} WER {:.3} in {:?}\n  {text}",
            sim.decodes,
            word_error_rate(&reference, &text),
            t.elapsed()
        );
    }
}
