//! `kiroku serve account`'s settings: each flag with its environment variable and its
//! default, turned into an [`AccountConfig`] by [`AccountSettings::config`]. The
//! operator token is not among them: it comes from the environment only.

use std::path::PathBuf;
use std::time::Duration;

use kiroku_core::settings::{CommonSettings, InvalidSetting};

use crate::{AccountConfig, auth, proxy};

#[derive(Debug, Clone, clap::Args)]
pub struct AccountSettings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// gRPC listen address.
    #[arg(long, env = "KIROKU_ACCOUNT_LISTEN", default_value = crate::DEFAULT_LISTEN)]
    pub listen: String,
    /// Admin HTTP address: /healthz, /readyz, /metrics.
    #[arg(long, env = "KIROKU_ACCOUNT_ADMIN_LISTEN", default_value = crate::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// PostgreSQL as the schema owner: creates the database, role and schema and runs
    /// migrations at start-up. The service itself connects as the role
    /// `kiroku_account` (see --app-database-url).
    #[arg(long, env = "KIROKU_DATABASE_URL", default_value = kiroku_core::settings::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The service's own connection (role `kiroku_account`) [default: the owner URL
    /// with that user name, enough where PostgreSQL trusts local connections].
    #[arg(long, env = "KIROKU_ACCOUNT_DATABASE_URL")]
    pub app_database_url: Option<String>,
    /// Schema of the account tables.
    #[arg(long, env = "KIROKU_ACCOUNT_SCHEMA", default_value = "account")]
    pub schema: String,
    /// Redis: revocations and sign-in throttling.
    #[arg(long, env = "KIROKU_REDIS_URL", default_value = crate::DEFAULT_REDIS_URL)]
    pub redis: String,
    /// Ed25519 token signing key (PKCS#8 DER), created when missing. Every replica
    /// needs the same file.
    #[arg(
        long,
        env = "KIROKU_SIGNING_KEY_FILE",
        default_value = ".run/account-signing-key.der"
    )]
    pub signing_key_file: PathBuf,
    /// Access-token lifetime in seconds.
    #[arg(long, env = "KIROKU_ACCESS_TOKEN_TTL_S",
          default_value_t = crate::TokenLifetimes::default().access.as_secs())]
    pub access_ttl_s: u64,
    /// Failed sign-ins per account per 15 minutes before sign-in is refused.
    #[arg(long, env = "KIROKU_LOGIN_ATTEMPTS",
          default_value_t = crate::throttle::ThrottleConfig::default().per_account)]
    pub login_attempts: u32,
    /// Failed sign-ins per client address per 15 minutes.
    #[arg(long, env = "KIROKU_LOGIN_ATTEMPTS_PER_IP",
          default_value_t = crate::throttle::ThrottleConfig::default().per_ip)]
    pub login_attempts_per_ip: u32,
    /// Gateways (addresses or CIDR networks, comma-separated) whose x-forwarded-for
    /// names the client; everyone else is known by the connection's address.
    #[arg(long, env = "KIROKU_TRUSTED_PROXIES", default_value = proxy::TrustedProxies::DEFAULT)]
    pub trusted_proxies: String,
}

impl AccountSettings {
    /// The account service's configuration with the operator's token, checked
    /// ([`AccountConfig::validate`]).
    pub fn config(&self, operator: auth::OperatorToken) -> Result<AccountConfig, InvalidSetting> {
        let common = &self.common;
        let mut database = crate::db::config(&self.database_url, &self.schema);
        database.app_url = self.app_database_url.clone();
        let mut config = AccountConfig::new(database, self.signing_key_file.clone());
        config.redis_url = self.redis.clone();
        config.nats_url = common.nats.clone();
        config.layout = common.layout()?;
        config.retention = common.retention();
        config.lifetimes.access = Duration::from_secs(self.access_ttl_s);
        config.throttle.per_account = self.login_attempts;
        config.throttle.per_ip = self.login_attempts_per_ip;
        config.trusted_proxies =
            proxy::TrustedProxies::parse(&self.trusted_proxies).map_err(|problem| {
                InvalidSetting {
                    setting: "--trusted-proxies / KIROKU_TRUSTED_PROXIES",
                    problem,
                }
            })?;
        config.operator = operator;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn config(args: &[&str]) -> Result<AccountConfig, InvalidSetting> {
        kiroku_core::settings::parse::<AccountSettings>(args)
            .expect("flags parse")
            .config(auth::OperatorToken::default())
    }

    #[test]
    fn flags_reach_the_configuration_and_bad_ones_name_their_flag() {
        let config = config(&["--access-ttl-s", "60", "--login-attempts", "3"]).expect("valid");
        assert_eq!(config.lifetimes.access, Duration::from_secs(60));
        assert_eq!(config.throttle.per_account, 3);
        assert!(self::config(&[]).is_ok(), "the defaults are valid");
        let error = self::config(&["--trusted-proxies", "gateway"]).expect_err("not an address");
        assert_eq!(error.setting, "--trusted-proxies / KIROKU_TRUSTED_PROXIES");
        let error = self::config(&["--access-ttl-s", "5"]).expect_err("too short");
        assert!(error.setting.starts_with("--access-ttl-s"));
    }
}
