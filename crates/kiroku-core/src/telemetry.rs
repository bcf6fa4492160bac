//! Logging set-up shared by every binary role.
//!
//! Logs go to stderr (stdout is for command output such as transcripts). The level comes
//! from `RUST_LOG` (default `warn` for the CLI, `info` for services) and the format from
//! `KIROKU_LOG_FORMAT` (`json` or the default human-readable text).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are no-ops.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::env::var("KIROKU_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests call this more than once): keep the first.
    drop(result);
}
