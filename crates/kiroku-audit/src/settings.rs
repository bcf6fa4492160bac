//! `kiroku serve audit`'s settings: each flag with its environment variable and its
//! default, turned into an [`AuditConfig`] by [`AuditSettings::config`]. The operator
//! token, the anchor key and the SMTP password are not among them: they come from the
//! environment only.

use kiroku_core::settings::{CommonSettings, InvalidSetting};

use crate::{AuditConfig, anchor, notice};

#[derive(Debug, Clone, clap::Args)]
pub struct AuditSettings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// gRPC listen address.
    #[arg(long, env = "KIROKU_AUDIT_LISTEN", default_value = crate::DEFAULT_LISTEN)]
    pub listen: String,
    /// Admin HTTP address: /healthz, /readyz, /metrics.
    #[arg(long, env = "KIROKU_AUDIT_ADMIN_LISTEN", default_value = crate::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// PostgreSQL as the schema owner (migrations at start-up); the service connects as
    /// the role `kiroku_audit` (INSERT and SELECT only).
    #[arg(long, env = "KIROKU_DATABASE_URL", default_value = kiroku_core::settings::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The service's own connection (role `kiroku_audit`) [default: the owner URL with
    /// that user name].
    #[arg(long, env = "KIROKU_AUDIT_DATABASE_URL")]
    pub app_database_url: Option<String>,
    /// Schema of the audit tables.
    #[arg(long, env = "KIROKU_AUDIT_SCHEMA", default_value = "audit")]
    pub schema: String,
    /// Redis (token revocations).
    #[arg(long, env = "KIROKU_REDIS_URL", default_value = kiroku_auth::DEFAULT_REDIS_URL)]
    pub redis: String,
    /// The account service (token keys).
    #[arg(long, env = "KIROKU_ACCOUNT_URL", default_value = kiroku_core::settings::DEFAULT_ACCOUNT_URL)]
    pub account_url: String,
    /// SMTP server for notice mail; unset: notices are stored and listed, mail waits.
    #[arg(long, env = "KIROKU_SMTP_HOST")]
    pub smtp_host: Option<String>,
    /// SMTP port (587 for STARTTLS, 465 for TLS, 25 for a local relay).
    #[arg(long, env = "KIROKU_SMTP_PORT", default_value_t = 587)]
    pub smtp_port: u16,
    /// Transport security: starttls, tls, or none (a relay on this host or a test sink).
    #[arg(long, env = "KIROKU_SMTP_TLS", default_value = "starttls")]
    pub smtp_tls: String,
    /// The From address of notice mail.
    #[arg(
        long,
        env = "KIROKU_SMTP_FROM",
        default_value = "Kiroku <notices@kiroku.invalid>"
    )]
    pub smtp_from: String,
    /// SMTP user name (the password comes from KIROKU_SMTP_PASSWORD only).
    #[arg(long, env = "KIROKU_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
}

/// What the audit service takes from the environment only, never from a flag.
#[derive(Debug, Default)]
pub struct AuditSecrets {
    pub operator: kiroku_auth::auth::OperatorToken,
    pub anchor_key: Option<anchor::AnchorKey>,
    pub smtp_password: Option<String>,
}

impl AuditSettings {
    /// The audit service's configuration with its secrets.
    pub fn config(&self, secrets: AuditSecrets) -> Result<AuditConfig, InvalidSetting> {
        let common = &self.common;
        let mut config = AuditConfig::new(&self.database_url, &self.schema, &self.account_url);
        config.database.app_url = self.app_database_url.clone();
        config.redis_url = self.redis.clone();
        config.nats_url = common.nats.clone();
        config.layout = common.layout()?;
        config.retention = common.retention();
        config.operator = secrets.operator;
        config.anchor_key = secrets.anchor_key;
        config.smtp = self.smtp(secrets.smtp_password)?;
        Ok(config)
    }

    /// Where notice mail goes; `None` without `--smtp-host`.
    fn smtp(&self, password: Option<String>) -> Result<Option<notice::SmtpConfig>, InvalidSetting> {
        let Some(host) = self.smtp_host.clone().filter(|h| !h.trim().is_empty()) else {
            return Ok(None);
        };
        let tls = self.smtp_tls.parse().map_err(|problem| InvalidSetting {
            setting: "--smtp-tls / KIROKU_SMTP_TLS",
            problem,
        })?;
        let from = self.smtp_from.parse().map_err(|e| InvalidSetting {
            setting: "--smtp-from / KIROKU_SMTP_FROM",
            problem: format!("{:?}: {e}", self.smtp_from),
        })?;
        Ok(Some(notice::SmtpConfig {
            host,
            port: self.smtp_port,
            tls,
            from,
            username: self.smtp_username.clone(),
            password,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn config(args: &[&str]) -> Result<AuditConfig, InvalidSetting> {
        kiroku_core::settings::parse::<AuditSettings>(args)
            .expect("flags parse")
            .config(AuditSecrets::default())
    }

    #[test]
    fn smtp_flags_reach_the_configuration_and_bad_ones_name_their_flag() {
        assert!(config(&[]).expect("defaults").smtp.is_none());
        let smtp = config(&["--smtp-host", "mail.example", "--smtp-tls", "tls"])
            .expect("valid")
            .smtp
            .expect("mail configured");
        assert_eq!((smtp.host.as_str(), smtp.port), ("mail.example", 587));
        let error = config(&["--smtp-host", "m", "--smtp-tls", "ssl"]).expect_err("bad tls");
        assert_eq!(error.setting, "--smtp-tls / KIROKU_SMTP_TLS");
        let error = config(&["--smtp-host", "m", "--smtp-from", "no address"]).expect_err("from");
        assert_eq!(error.setting, "--smtp-from / KIROKU_SMTP_FROM");
    }
}
