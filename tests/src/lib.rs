//! Test support shared by Kiroku's end-to-end tests: real speech made with espeak-ng
//! and sox (installed by `make test`), and word error rate.

pub mod speech;
pub mod wer;
