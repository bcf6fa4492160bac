//! Transcription worker.
