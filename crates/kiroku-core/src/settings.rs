//! Checks of a service's settings. Each service's configuration type (`GatewayConfig`,
//! `WorkerConfig`, `AccountConfig`, `StorageConfig`) has a `validate()` built from
//! these, called by its `serve` before anything starts, so a setting out of range is
//! refused the same way whoever builds the configuration (`kiroku serve`, a test, an
//! embedding program). A setting is named as operators write it: `--flag / KIROKU_…`.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::time::Duration;

/// A setting outside what the service accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting} {problem}")]
pub struct InvalidSetting {
    /// `--flag / KIROKU_NAME`.
    pub setting: &'static str,
    pub problem: String,
}

/// `value` within `range` (inclusive; `unit` follows each bound in the message).
pub fn within<T: PartialOrd + Display>(
    setting: &'static str,
    value: T,
    range: RangeInclusive<T>,
    unit: &str,
) -> Result<(), InvalidSetting> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(InvalidSetting {
        setting,
        problem: format!(
            "must be between {}{unit} and {}{unit} (got {value}{unit})",
            range.start(),
            range.end()
        ),
    })
}

/// `value` at least `min`.
pub fn at_least<T: PartialOrd + Display>(
    setting: &'static str,
    value: T,
    min: T,
    unit: &str,
) -> Result<(), InvalidSetting> {
    if value >= min {
        return Ok(());
    }
    Err(InvalidSetting {
        setting,
        problem: format!("must be at least {min}{unit} (got {value}{unit})"),
    })
}

/// A duration within `range` seconds.
pub fn seconds_within(
    setting: &'static str,
    value: Duration,
    range: RangeInclusive<f64>,
) -> Result<(), InvalidSetting> {
    within(setting, value.as_secs_f64(), range, " s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_outside_the_range_name_the_setting_and_the_bounds() {
        assert_eq!(
            within("--sessions / KIROKU_WORKER_SESSIONS", 4, 1..=64, ""),
            Ok(())
        );
        let error = within("--sessions / KIROKU_WORKER_SESSIONS", 0, 1..=64, "")
            .expect_err("0 is out of range");
        assert_eq!(
            error.to_string(),
            "--sessions / KIROKU_WORKER_SESSIONS must be between 1 and 64 (got 0)"
        );
        let error = seconds_within(
            "--ack-wait-s / KIROKU_WORKER_ACK_WAIT_S",
            Duration::from_millis(100),
            0.5..=3600.0,
        )
        .expect_err("0.1 s is too short");
        assert_eq!(
            error.to_string(),
            "--ack-wait-s / KIROKU_WORKER_ACK_WAIT_S must be between 0.5 s and 3600 s (got 0.1 s)"
        );
        assert!(seconds_within("x", Duration::from_secs(3600), 0.5..=3600.0).is_ok());
        assert_eq!(
            at_least("--idle-timeout-s / KIROKU_IDLE_TIMEOUT_S", 0, 1, " s")
                .expect_err("0 s")
                .to_string(),
            "--idle-timeout-s / KIROKU_IDLE_TIMEOUT_S must be at least 1 s (got 0 s)"
        );
    }
}
