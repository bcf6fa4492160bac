//! The Whisper engine: model conversion, audio decoding and inference. No network.

pub mod audio;
pub mod convert;
pub mod engine;
pub mod file;
pub mod live;
pub mod streaming;
#[cfg(test)]
mod test_support;
pub mod vad;

pub use engine::{Engine, EngineConfig, EngineError, TranscribeOptions};
