//! Plumbing shared by Kiroku's services and CLI: transcript types and caption formats,
//! telemetry set-up. Domain logic lives in the service crates.

pub mod telemetry;
pub mod transcript;
