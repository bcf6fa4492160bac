//! Settings of the services, and the checks of them.
//!
//! Each service's settings are one clap struct in its own library (`GatewaySettings` in
//! `kiroku_gateway::settings`, `WorkerSettings`, `AccountSettings`, `AuditSettings`,
//! `StorageSettings`), each flag with its `KIROKU_…` environment variable and a default
//! taken from the library's own constants; the settings every role shares are
//! [`CommonSettings`]. `kiroku serve <role>` parses them and turns them into the
//! library's configuration type (`GatewayConfig`, …) with the secrets, which never come
//! from a flag. Each configuration type has a `validate()` built from the checks below,
//! called by its `serve` before anything starts, so a setting out of range is refused
//! the same way whoever builds the configuration (`kiroku serve`, a test, an embedding
//! program). A setting is named as operators write it: `--flag / KIROKU_…`.

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

/// Where clients and gateways find the account service by default.
pub const DEFAULT_ACCOUNT_URL: &str = "http://127.0.0.1:50053";
/// Where clients and gateways find the audit service by default.
pub const DEFAULT_AUDIT_URL: &str = "http://127.0.0.1:50054";
/// Where clients and gateways find the storage service by default.
pub const DEFAULT_STORAGE_URL: &str = "http://127.0.0.1:50055";
/// PostgreSQL as the schema owner when `KIROKU_DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/kiroku";

/// Settings every role shares (`kiroku serve <role>` flattens them into its own).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonSettings {
    /// NATS server.
    #[arg(long, env = "KIROKU_NATS_URL", default_value = crate::nats::DEFAULT_NATS_URL)]
    pub nats: String,
    /// Cluster root: prefixes every NATS subject and stream (see docs/design.md).
    #[arg(long, env = "KIROKU_CLUSTER", default_value = crate::nats::DEFAULT_ROOT)]
    pub cluster: String,
    /// How long a dropped stream may be resumed, in seconds.
    #[arg(long, env = "KIROKU_RESUME_WINDOW_S",
          default_value_t = crate::nats::DEFAULT_RESUME_WINDOW.as_secs())]
    pub resume_window_s: u64,
    /// The region this service runs in (control 6.1.3).
    #[arg(long, env = "KIROKU_REGION", default_value = crate::region::DEFAULT_REGION)]
    pub region: String,
    /// Regions customer data may be kept in, comma-separated.
    #[arg(long, env = "KIROKU_ALLOWED_REGIONS", default_value = crate::region::DEFAULT_REGION)]
    pub allowed_regions: String,
    /// Region of the NATS JetStream servers (audio, transcripts) [default: --region].
    #[arg(long, env = "KIROKU_NATS_REGION")]
    pub nats_region: Option<String>,
    /// Region of PostgreSQL [default: --region].
    #[arg(long, env = "KIROKU_DATABASE_REGION")]
    pub database_region: Option<String>,
    /// Replicas of every JetStream stream and bucket (each service creates missing ones),
    /// 1 to 5 (3 on a 3-server NATS cluster).
    #[arg(long, env = "KIROKU_NATS_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,
}

impl CommonSettings {
    /// The cluster's subjects and streams (`--cluster`).
    pub fn layout(&self) -> Result<crate::nats::Layout, InvalidSetting> {
        crate::nats::Layout::new(&self.cluster).map_err(|e| InvalidSetting {
            setting: "--cluster / KIROKU_CLUSTER",
            problem: e.to_string(),
        })
    }

    /// How long and how many times the JetStream streams keep what they hold.
    pub fn retention(&self) -> crate::nats::Retention {
        crate::nats::Retention {
            replicas: self.nats_replicas.into(),
            ..Default::default()
        }
    }

    /// How long a dropped stream may be resumed.
    pub fn resume_window(&self) -> Duration {
        Duration::from_secs(self.resume_window_s)
    }

    /// Refuses to start when a place this role keeps data is outside the allowed
    /// regions (control 6.1.3); `database`: the role keeps data in PostgreSQL too.
    pub fn check_location(&self, database: bool) -> Result<(), String> {
        let location = crate::region::DataLocation::new(&self.region, &self.allowed_regions)?;
        location.check("NATS JetStream", self.nats_region.as_deref())?;
        if database {
            location.check("PostgreSQL", self.database_region.as_deref())?;
        }
        Ok(())
    }
}

/// Parses `args` (flags only, no program name) as one settings struct, with its
/// environment variables and defaults: how tests and embedding programs build a
/// service's settings the way `kiroku serve` does.
pub fn parse<T: clap::Args>(args: &[&str]) -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new("kiroku").no_binary_name(true));
    T::from_arg_matches(&command.try_get_matches_from(args)?)
}

/// A number of seconds given as a decimal (`--ack-wait-s 0.5`) as a duration; negative,
/// NaN or huge values are not durations (the ranges are each `validate()`'s).
pub fn seconds(setting: &'static str, value: f64) -> Result<Duration, InvalidSetting> {
    Duration::try_from_secs_f64(value).map_err(|_| InvalidSetting {
        setting,
        problem: format!("{value} is not a number of seconds"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--nats-replicas` (KIROKU_NATS_REPLICAS) reaches the streams every role creates
    /// and stays within what NATS allows.
    #[test]
    fn nats_replicas_are_checked_and_reach_the_retention() {
        let replicas = |value: &str| parse::<CommonSettings>(&["--nats-replicas", value]);
        let three = replicas("3").expect("3 replicas");
        assert_eq!(three.retention().replicas, 3);
        for bad in ["0", "6", "three"] {
            assert!(replicas(bad).is_err(), "--nats-replicas {bad} was accepted");
        }
        let default = parse::<CommonSettings>(&[]).expect("defaults");
        assert_eq!(default.retention().replicas, 1);
    }

    #[test]
    fn seconds_refuse_what_is_not_a_duration() {
        assert_eq!(seconds("x", 0.5), Ok(Duration::from_millis(500)));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(seconds("--ack-wait-s / KIROKU_WORKER_ACK_WAIT_S", bad).is_err());
        }
    }

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
