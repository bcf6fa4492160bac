//! The Whisper engine: model conversion and inference. No network. Audio decoding is
//! the `kiroku-audio` crate, re-exported here as [`audio`].

pub use kiroku_audio as audio;
pub mod convert;
pub mod engine;
pub mod file;
pub mod live;
pub mod streaming;
#[cfg(test)]
mod test_support;
pub mod vad;

pub use engine::{Engine, EngineConfig, EngineError, ThreadBudget, TranscribeOptions, Turn};
