//! Prints the utterances the live path's voice-activity detector finds in a WAV file,
//! one JSON object a line (`{"start_ms": …, "end_ms": …}`, `end_ms` being where the
//! utterance was closed: its speech end plus the finalizing silence), for
//! `tests/bench/vad_trials.py`, which compares it with Silero VAD on noisy speech.
//!
//! ```text
//! cargo run --release -p kiroku-engine --example vad_events -- FILE.wav [en|ja] [energy|silero]
//! ```

use anyhow::{Context as _, Result};
use kiroku_engine::audio::decode_wav;
use kiroku_engine::streaming::{Policy, PolicyConfig, UtteranceEvent};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().context("usage: vad_events FILE.wav [en|ja]")?;
    let language = args.next().unwrap_or_else(|| "en".into());
    let vad = kiroku_engine::vad::choose(
        &args.next().unwrap_or_else(|| "energy".into()),
        &kiroku_tests::model_dir(),
    )?;
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    let pcm = decode_wav(std::io::BufReader::new(file))?;
    let config = PolicyConfig {
        vad,
        ..PolicyConfig::default()
    };
    let mut policy = Policy::new(config.for_language(&language), None);
    let mut open: Option<u64> = None;
    let print = |events: Vec<UtteranceEvent>, open: &mut Option<u64>| {
        for event in events {
            match event {
                UtteranceEvent::Started { speech_start } => *open = Some(speech_start),
                UtteranceEvent::Ended { end } => {
                    if let Some(start) = open.take() {
                        println!(r#"{{"start_ms": {}, "end_ms": {}}}"#, start / 16, end / 16);
                    }
                }
                UtteranceEvent::Dropped => *open = None,
            }
        }
    };
    // 100 ms at a time, as the gateway forwards a stream; no decodes (the detector
    // does not depend on them).
    for (index, chunk) in pcm.samples.chunks(1_600).enumerate() {
        policy.push_audio(index as u64 * 1_600, chunk);
        print(policy.take_utterance_events(), &mut open);
    }
    policy.flush();
    print(policy.take_utterance_events(), &mut open);
    Ok(())
}
