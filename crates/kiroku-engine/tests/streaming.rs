//! The streaming policy against the real model on real (synthesized) meeting speech:
//! accuracy of the committed words and their time order. Needs `make model` (the model
//! in `$KIROKU_MODEL_DIR`, default `~/.cache/kiroku/models`) and espeak-ng and sox.

use std::path::{Path, PathBuf};

use kiroku_engine::audio::decode_wav;
use kiroku_engine::engine::default_model_path;
use kiroku_engine::streaming::{PolicyConfig, Simulation, simulate};
use kiroku_engine::{Engine, EngineConfig};
use kiroku_tests::speech::{meeting_sentences, synthesize};
use kiroku_tests::wer::word_error_rate;

/// Chunk size the gateway forwards (its range is 20–200 ms).
const CHUNK_MS: u32 = 100;

fn model_path() -> PathBuf {
    let model = default_model_path();
    assert!(
        model.is_file(),
        "{} is missing: run `make model` first",
        model.display()
    );
    model
}

/// The meeting script spoken sentence after sentence, 0.6 s apart (sox pads 0.3 s on
/// each side), over a faint noise floor (~−55 dBFS) so the VAD does not see digital
/// silence; and the script.
fn meeting_audio(dir: &Path) -> (Vec<f32>, String) {
    let sentences = meeting_sentences();
    let mut samples = Vec::new();
    for (index, sentence) in sentences.iter().enumerate() {
        let wav = synthesize(dir, &format!("s{index}"), sentence, 16_000, 1, 0.3)
            .expect("synthesize speech");
        let file = std::fs::File::open(&wav).expect("open wav");
        samples.extend(
            decode_wav(std::io::BufReader::new(file))
                .expect("decode wav")
                .samples,
        );
    }
    // A fixed linear congruential generator: the same noise on every run.
    let mut state: u32 = 0x1234_5678;
    for sample in &mut samples {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *sample += ((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.006;
    }
    (samples, sentences.join(" "))
}

fn load_engine() -> Engine {
    Engine::load(&EngineConfig::new(model_path())).expect("load model")
}

fn check(simulation: &Simulation, reference: &str, audio_ms: u64) -> (String, f64) {
    let mut previous_end_ms = 0;
    for final_ in &simulation.finals {
        assert!(
            final_.start_ms >= previous_end_ms,
            "final {final_:?} starts before the previous one ends ({previous_end_ms})"
        );
        assert!(final_.end_ms >= final_.start_ms && final_.end_ms <= audio_ms);
        for word in &final_.words {
            assert!(word.start_ms >= previous_end_ms && word.end_ms >= word.start_ms);
            previous_end_ms = word.end_ms;
        }
        previous_end_ms = previous_end_ms.max(final_.end_ms);
    }
    let text = simulation
        .finals
        .iter()
        .filter(|f| !f.text.is_empty())
        .map(|f| f.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let wer = word_error_rate(reference, &text);
    eprintln!("finals: {text}");
    (text, wer)
}

#[test]
fn streamed_meeting_speech_is_committed_accurately_and_in_time_order() {
    let engine = load_engine();
    let dir = tempfile::tempdir().expect("tempdir");
    let (samples, reference) = meeting_audio(dir.path());
    let audio_ms = samples.len() as u64 / 16;
    let simulation =
        simulate(&engine, &samples, PolicyConfig::default(), CHUNK_MS, false).expect("simulate");
    let (text, wer) = check(&simulation, &reference, audio_ms);
    let utterances = simulation.finals.iter().filter(|f| f.utterance_end).count();
    eprintln!(
        "streaming (default config, unpaced): {} ms of audio, {} decodes, {} finals, {utterances} utterance ends, WER {wer:.3}",
        audio_ms,
        simulation.decodes,
        simulation.finals.len()
    );
    assert!(
        wer <= 0.15,
        "WER {wer:.3}\nreference:  {reference}\nhypothesis: {text}"
    );
    // Every sentence ends in a pause the VAD must catch; a few may merge if Whisper
    // puts a sentence's last word after the pause, never most of them.
    assert!(
        utterances >= meeting_sentences().len() / 2,
        "only {utterances} utterance ends"
    );
    // A decode per step of speech at most, plus one finalize per utterance: silence
    // is never decoded.
    let speech_steps = audio_ms / u64::from(PolicyConfig::default().step_ms);
    assert!(
        (simulation.decodes as u64) < speech_steps,
        "{} decodes for {speech_steps} steps of audio",
        simulation.decodes
    );
}
