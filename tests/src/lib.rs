//! Test support shared by Kiroku's end-to-end tests: real speech made with espeak-ng
//! and sox (installed by `make test`), word error rate, and an in-process OTLP collector.

pub mod otlp;
pub mod speech;
pub mod wer;
