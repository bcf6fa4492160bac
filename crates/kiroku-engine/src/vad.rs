//! Voice activity detection for the live path and files: which 20 ms blocks are speech.
//! Utterance ends (and so when finals come) follow from it ([`crate::streaming::Policy`]).
//!
//! - [`Vad::Energy`]: a block is speech when its RMS is at or above
//!   [`crate::streaming::PolicyConfig::vad_threshold_rms`]. Right on clean audio; any
//!   background noise above the threshold (a fan, a phone line, a breath) holds an
//!   utterance open until the 20 s cut.
//! - [`Vad::Silero`]: Silero VAD v6, the ONNX model inside the PyPI faster-whisper 1.2.1
//!   wheel (MIT; `kiroku model fetch --model silero-vad` installs it as
//!   [`SILERO_FILE`]), run with `tract-onnx` on 512-sample windows (32 ms, with 64 samples
//!   of the previous window as context, as faster-whisper feeds it) and faster-whisper's
//!   thresholds: speech from probability 0.5, silence below 0.35, unchanged in between.
//!   Measured with `make vad-trials` (docs/streaming.md): on the three-voice meeting
//!   with pink noise at 20 dB SNR it found 40 of 40 turn ends against the energy
//!   detector's 20, at 10 dB 40 against 1; clean, both found all 40. About 0.15 ms of one
//!   core per 32 ms window. Not the default yet: see docs/streaming.md for the
//!   sentences its cuts lost on a clean meeting.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::engine::EngineError;

/// The installed file name of Silero VAD v6 in the model directory.
pub const SILERO_FILE: &str = "silero_vad_v6.onnx";

/// Samples per Silero window (32 ms at 16 kHz) and of context before it.
const WINDOW: usize = 512;
const CONTEXT: usize = 64;
/// faster-whisper's `VadOptions` defaults: speech from this probability…
const SPEECH_FROM: f32 = 0.5;
/// …and silence below this one (hysteresis).
const SILENCE_BELOW: f32 = 0.35;
/// LSTM state size of the model.
const STATE: usize = 128;

type Plan = TypedRunnableModel<TypedModel>;

/// Silero VAD loaded once per process and shared by every track.
pub struct SileroModel {
    plan: Plan,
}

impl fmt::Debug for SileroModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SileroModel")
    }
}

impl SileroModel {
    /// Loads and optimizes the ONNX model (inputs `input` [1, 576], `h` and `c`
    /// [1, 1, 128]).
    pub fn load(path: &Path) -> Result<Arc<Self>, EngineError> {
        let load = || -> TractResult<Plan> {
            tract_onnx::onnx()
                .model_for_path(path)?
                .with_input_fact(0, f32::fact([1, WINDOW + CONTEXT]).into())?
                .with_input_fact(1, f32::fact([1, 1, STATE]).into())?
                .with_input_fact(2, f32::fact([1, 1, STATE]).into())?
                .into_optimized()?
                .into_runnable()
        };
        if !path.is_file() {
            return Err(EngineError::VadLoad(
                path.to_path_buf(),
                "no such file".into(),
            ));
        }
        let plan = load().map_err(|e| EngineError::VadLoad(path.to_path_buf(), e.to_string()))?;
        Ok(Arc::new(Self { plan }))
    }
}

/// Where `kiroku model fetch --model silero-vad` installs Silero VAD in a model directory.
pub fn silero_path(model_dir: &Path) -> std::path::PathBuf {
    model_dir.join(SILERO_FILE)
}

/// The detector a `--vad` value names: `silero` (its model must be installed),
/// `energy`, or `auto` (Silero when installed, else energy, with a warning).
/// Silero's model is looked for in `model_dir`.
pub fn choose(choice: &str, model_dir: &Path) -> Result<Vad, EngineError> {
    let path = silero_path(model_dir);
    match choice {
        "silero" => Ok(Vad::Silero(SileroModel::load(&path)?)),
        "energy" => Ok(Vad::Energy),
        "auto" if path.is_file() => Ok(Vad::Silero(SileroModel::load(&path)?)),
        "auto" => {
            tracing::warn!(
                path = %path.display(),
                "Silero VAD is not installed (kiroku model fetch --model silero-vad): pauses are found by energy, which background noise defeats"
            );
            Ok(Vad::Energy)
        }
        other => Err(EngineError::InvalidOption(format!(
            "unknown voice activity detector {other:?}: use auto, silero or energy"
        ))),
    }
}

/// Which detector a track uses. `Energy` is the default: it needs no model file (the
/// unit tests speak in tones, which Silero rightly does not take for speech).
#[derive(Clone, Default)]
pub enum Vad {
    #[default]
    Energy,
    Silero(Arc<SileroModel>),
}

impl Vad {
    /// "energy" or "silero".
    pub fn name(&self) -> &'static str {
        match self {
            Vad::Energy => "energy",
            Vad::Silero(_) => "silero",
        }
    }

    pub(crate) fn detector(&self) -> Detector {
        match self {
            Vad::Energy => Detector::Energy,
            Vad::Silero(model) => Detector::Silero(Box::new(SileroTrack::new(model.clone()))),
        }
    }
}

impl PartialEq for Vad {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Vad::Energy, Vad::Energy) => true,
            (Vad::Silero(a), Vad::Silero(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl fmt::Debug for Vad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One track's detector state.
pub(crate) enum Detector {
    Energy,
    Silero(Box<SileroTrack>),
}

impl fmt::Debug for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detector::Energy => f.write_str("Energy"),
            Detector::Silero(track) => write!(f, "Silero(speech: {})", track.speech),
        }
    }
}

impl Detector {
    /// Whether `block` (the next 20 ms of the track) is speech; `loud` is the energy
    /// detector's answer for it.
    pub(crate) fn is_speech(&mut self, block: &[f32], loud: bool) -> bool {
        match self {
            Detector::Energy => loud,
            Detector::Silero(track) => track.push(block).unwrap_or(loud),
        }
    }
}

/// Silero's recurrent state over one track.
pub(crate) struct SileroTrack {
    model: Arc<SileroModel>,
    h: Tensor,
    c: Tensor,
    /// The last [`CONTEXT`] samples of the previous window.
    context: Vec<f32>,
    /// Samples not yet in a window.
    pending: Vec<f32>,
    speech: bool,
    /// The model failed once: the track falls back to the energy detector.
    failed: bool,
}

impl SileroTrack {
    fn new(model: Arc<SileroModel>) -> Self {
        Self {
            model,
            h: tract_ndarray::Array3::<f32>::zeros((1, 1, STATE)).into_tensor(),
            c: tract_ndarray::Array3::<f32>::zeros((1, 1, STATE)).into_tensor(),
            context: vec![0.0; CONTEXT],
            pending: Vec::with_capacity(2 * WINDOW),
            speech: false,
            failed: false,
        }
    }

    /// Takes the next samples; the speech state after every whole window in them
    /// (`None` once the model has failed: the caller uses the energy detector).
    fn push(&mut self, samples: &[f32]) -> Option<bool> {
        if self.failed {
            return None;
        }
        self.pending.extend_from_slice(samples);
        let mut used = 0;
        while self.pending.len() - used >= WINDOW {
            let result = run(
                &self.model,
                &mut self.h,
                &mut self.c,
                &mut self.context,
                &self.pending[used..used + WINDOW],
            );
            used += WINDOW;
            match result {
                Ok(probability) => {
                    if probability >= SPEECH_FROM {
                        self.speech = true;
                    } else if probability < SILENCE_BELOW {
                        self.speech = false;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "voice activity model failed: this track uses the energy detector");
                    self.failed = true;
                    return None;
                }
            }
        }
        self.pending.drain(..used);
        Some(self.speech)
    }
}

/// One window through the model: its speech probability; the LSTM state and the
/// context move on.
fn run(
    model: &SileroModel,
    h: &mut Tensor,
    c: &mut Tensor,
    context: &mut [f32],
    window: &[f32],
) -> TractResult<f32> {
    let mut input = Vec::with_capacity(CONTEXT + WINDOW);
    input.extend_from_slice(context);
    input.extend_from_slice(window);
    context.copy_from_slice(&window[WINDOW - CONTEXT..]);
    let input = tract_ndarray::Array2::from_shape_vec((1, CONTEXT + WINDOW), input)?;
    let outputs = model.plan.run(tvec!(
        input.into_tensor().into(),
        h.clone().into(),
        c.clone().into()
    ))?;
    let probability = outputs[0]
        .to_array_view::<f32>()?
        .iter()
        .next()
        .copied()
        .unwrap_or(0.0);
    *h = outputs[1].clone().into_tensor();
    *c = outputs[2].clone().into_tensor();
    Ok(probability)
}
