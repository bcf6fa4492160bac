//! Plumbing shared by Kiroku's services and CLI: transcript types and caption formats,
//! telemetry set-up, trace propagation, metrics and the admin HTTP port. Domain logic
//! lives in the service crates.

pub mod admin;
pub mod audit;
pub mod metrics;
pub mod nats;
pub mod status;
pub mod telemetry;
pub mod trace;
pub mod transcript;
