//! `kiroku serve storage`'s settings: each flag with its environment variable and its
//! default, turned into a [`StorageConfig`] by [`StorageSettings::config`]. The master
//! key and the operator token are not among them: they come from the environment only.

use std::sync::Arc;
use std::time::Duration;

use kiroku_core::settings::{CommonSettings, InvalidSetting};

use crate::{StorageConfig, crypto};

#[derive(Debug, Clone, clap::Args)]
pub struct StorageSettings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// gRPC listen address.
    #[arg(long, env = "KIROKU_STORAGE_LISTEN", default_value = crate::DEFAULT_LISTEN)]
    pub listen: String,
    /// Admin HTTP address: /healthz, /readyz, /metrics.
    #[arg(long, env = "KIROKU_STORAGE_ADMIN_LISTEN", default_value = crate::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// PostgreSQL as the schema owner (migrations at start-up); the service connects as
    /// the role `kiroku_storage`.
    #[arg(long, env = "KIROKU_DATABASE_URL", default_value = kiroku_core::settings::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The service's own connection (role `kiroku_storage`) [default: the owner URL with
    /// that user name].
    #[arg(long, env = "KIROKU_STORAGE_DATABASE_URL")]
    pub app_database_url: Option<String>,
    /// Schema of the storage tables.
    #[arg(long, env = "KIROKU_STORAGE_SCHEMA", default_value = "storage")]
    pub schema: String,
    /// Redis (token revocations).
    #[arg(long, env = "KIROKU_REDIS_URL", default_value = kiroku_auth::DEFAULT_REDIS_URL)]
    pub redis: String,
    /// The account service (token keys).
    #[arg(long, env = "KIROKU_ACCOUNT_URL", default_value = kiroku_core::settings::DEFAULT_ACCOUNT_URL)]
    pub account_url: String,
    /// Seconds ImportTenant waits for the client's next bundle file before abandoning
    /// the import (nothing is written until the whole bundle has arrived).
    #[arg(long, env = "KIROKU_IMPORT_IDLE_TIMEOUT_S",
          default_value_t = crate::DEFAULT_IMPORT_IDLE_TIMEOUT.as_secs())]
    pub import_idle_timeout_s: u64,
}

impl StorageSettings {
    /// The storage service's configuration with the master keys and the operator's
    /// token, checked ([`StorageConfig::validate`]).
    pub fn config(
        &self,
        keys: Arc<dyn crypto::KeyProvider>,
        operator: kiroku_auth::auth::OperatorToken,
    ) -> Result<StorageConfig, InvalidSetting> {
        let common = &self.common;
        let mut config =
            StorageConfig::new(&self.database_url, &self.schema, &self.account_url, keys);
        config.database.app_url = self.app_database_url.clone();
        config.redis_url = self.redis.clone();
        config.nats_url = common.nats.clone();
        config.layout = common.layout()?;
        config.retention = common.retention();
        config.operator = operator;
        config.import_idle_timeout = Duration::from_secs(self.import_idle_timeout_s);
        config.validate()?;
        Ok(config)
    }
}
