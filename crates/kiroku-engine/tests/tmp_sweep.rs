use kiroku_engine::audio::decode_wav;
use kiroku_engine::engine::default_model_path;
use kiroku_engine::{Engine, EngineConfig, TranscribeOptions};
use kiroku_tests::speech::{meeting_sentences, synthesize};
use kiroku_tests::wer::word_error_rate;

#[test]
fn ctx() {
    let engine = Engine::load(&EngineConfig::new(default_model_path())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sentences = meeting_sentences();
    let mut clips = Vec::new();
    for (i, s) in sentences.iter().enumerate() {
        let wav = synthesize(dir.path(), &format!("s{i}"), s, 16_000, 1, 0.3).unwrap();
        clips.push(decode_wav(std::fs::File::open(&wav).unwrap()).unwrap().samples);
    }
    let reference = sentences.join(" ");
    for margin in std::env::var("MARGINS").unwrap().split(',').map(|m| m.parse::<u32>().unwrap()) {
        let mut text = Vec::new();
        let t = std::time::Instant::now();
        for clip in &clips {
            let ctx = ((clip.len() as f64 / 16000.0 * 50.0).ceil() as u32 + margin).min(1500);
            let options = TranscribeOptions { audio_ctx: Some(ctx), no_temperature_fallback: true, ..Default::default() };
            text.push(engine.transcribe(clip.clone(), options, None).unwrap().text);
        }
        let text = text.join(" ");
        eprintln!("margin {margin}: WER {:.3} in {:?}\n  {text}", word_error_rate(&reference, &text), t.elapsed());
    }
}
