//! The streaming policy against the real model on real (synthesized) meeting speech:
//! accuracy of the committed words and their time order. Needs `make model` (the model
//! in `$KIROKU_MODEL_DIR`, default `~/.cache/kiroku/models`) and espeak-ng and sox.

use std::path::{Path, PathBuf};

use kiroku_engine::audio::decode_wav;
use kiroku_engine::engine::{default_model_dir, default_model_path};
use kiroku_engine::streaming::{PolicyConfig, Simulation, simulate};
use kiroku_engine::{Engine, EngineConfig};
use kiroku_tests::cer::{character_error_rate, normalize};
use kiroku_tests::speech::{
    japanese_meeting_sentences, meeting_sentences, synthesize, synthesize_japanese,
};
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
    let wavs: Vec<PathBuf> = sentences
        .iter()
        .enumerate()
        .map(|(index, sentence)| {
            synthesize(dir, &format!("s{index}"), sentence, 16_000, 1, 0.3)
                .expect("synthesize speech")
        })
        .collect();
    (over_noise_floor(&wavs), sentences.join(" "))
}

/// The 16 kHz WAV files one after the other, over a faint noise floor (~−55 dBFS).
fn over_noise_floor(wavs: &[PathBuf]) -> Vec<f32> {
    let mut samples = Vec::new();
    for wav in wavs {
        let file = std::fs::File::open(wav).expect("open wav");
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
    samples
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
    let simulation = simulate(
        &engine,
        &samples,
        PolicyConfig::default(),
        None,
        CHUNK_MS,
        false,
    )
    .expect("simulate");
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

/// Streaming CER bound for clean Japanese speech with base (issue: Japanese meetings).
const MAX_JAPANESE_STREAMING_CER: f64 = 0.12;

/// The Japanese meeting sentences (Open JTalk, 0.4 s of silence after each) as 16 kHz
/// samples, with the same faint noise floor as the English audio; and the script.
fn japanese_meeting_audio(dir: &Path) -> (Vec<f32>, String) {
    let sentences = japanese_meeting_sentences();
    let wavs: Vec<PathBuf> = sentences
        .iter()
        .enumerate()
        .map(|(index, sentence)| {
            let lead_silence_s = if index == 0 { 0.5 } else { 0.0 };
            synthesize_japanese(dir, &format!("ja{index}"), sentence, lead_silence_s)
                .expect("synthesize Japanese speech (make deps japanese-voice)")
        })
        .collect();
    (over_noise_floor(&wavs), sentences.concat())
}

/// Japanese has no spaces: before token-level agreement a whole sentence was one
/// "word", which no two hypotheses agree on until the utterance ends, so captions
/// committed only at pauses. Now tokens agree one by one: most characters are
/// committed while their sentence is still being spoken, and the committed text joins
/// without spaces. Unpaced (decodes take no simulated time): deterministic for the
/// engine's output, no wall clock involved.
#[test]
fn streamed_japanese_commits_tokens_before_the_sentence_ends() {
    let model = default_model_dir().join("ggml-base.bin");
    assert!(
        model.is_file(),
        "{} is missing: run `make model` first",
        model.display()
    );
    let engine = Engine::load(&EngineConfig::new(model)).expect("load base");
    let dir = tempfile::tempdir().expect("tempdir");
    let (samples, reference) = japanese_meeting_audio(dir.path());
    let audio_ms = samples.len() as u64 / 16;
    let config = PolicyConfig::default().for_language("ja");
    let simulation =
        simulate(&engine, &samples, config, Some("ja"), CHUNK_MS, false).expect("simulate");
    let (_, _) = check(&simulation, &reference, audio_ms);
    let text =
        kiroku_core::transcript::join_words(simulation.finals.iter().map(|f| f.text.as_str()));
    let cer = character_error_rate(&reference, &text);
    let chars = |finals: &mut dyn Iterator<Item = &kiroku_engine::streaming::Final>| -> usize {
        finals.map(|f| normalize(&f.text).len()).sum()
    };
    let before_pause = chars(&mut simulation.finals.iter().filter(|f| !f.utterance_end));
    let total = chars(&mut simulation.finals.iter());
    let mut latencies = simulation.commit_latency_ms.clone();
    latencies.sort_unstable();
    let p50 = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or(u64::MAX);
    eprintln!(
        "Japanese streaming (base, unpaced): {audio_ms} ms of audio, {} decodes, {} finals, \
         {before_pause}/{total} characters committed before a pause, commit latency p50 \
         {p50} ms, CER {cer:.3}\nreference:  {reference}\nhypothesis: {text}",
        simulation.decodes,
        simulation.finals.len()
    );
    assert!(
        cer <= MAX_JAPANESE_STREAMING_CER,
        "streaming CER {cer:.3} > {MAX_JAPANESE_STREAMING_CER}\nreference:  {reference}\nhypothesis: {text}"
    );
    assert!(!text.contains(' '), "spaces inserted into Japanese: {text}");
    assert_eq!(
        kiroku_tests::cer::doubled_phrase(&text, 4),
        None,
        "a phrase committed twice: {text}"
    );
    assert!(
        before_pause * 2 >= total,
        "only {before_pause} of {total} characters were committed before their sentence's pause"
    );
}
