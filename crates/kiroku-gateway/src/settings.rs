//! `kiroku serve gateway`'s settings: each flag with its environment variable and its
//! default, turned into a [`GatewayConfig`] by [`GatewaySettings::config`]. The resume
//! secret is not among them: it comes from the environment only (flags show in `ps`).

use std::time::Duration;

use kiroku_core::settings::{CommonSettings, InvalidSetting};

use crate::{GatewayConfig, Limits, Quotas, Rate, ResumeKeys};

#[derive(Debug, Clone, clap::Args)]
pub struct GatewaySettings {
    #[command(flatten)]
    pub common: CommonSettings,
    /// gRPC listen address (port 0 picks a free port; the bound one is printed).
    #[arg(long, env = "KIROKU_GATEWAY_LISTEN", default_value = crate::DEFAULT_LISTEN)]
    pub listen: String,
    /// Admin HTTP address: /healthz, /readyz, /metrics.
    #[arg(long, env = "KIROKU_GATEWAY_ADMIN_LISTEN", default_value = crate::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// Seconds without any client message before a stream is closed
    /// (DEADLINE_EXCEEDED); clients send keep_alive while muted.
    #[arg(long, env = "KIROKU_IDLE_TIMEOUT_S",
          default_value_t = Limits::default().idle_timeout.as_secs())]
    pub idle_timeout_s: u64,
    /// Seconds one stream connection may stay open, audio or not (OUT_OF_RANGE after;
    /// what was received is finalized).
    #[arg(long, env = "KIROKU_MAX_STREAM_WALL_S",
          default_value_t = Limits::default().max_stream_wall.as_secs())]
    pub max_stream_wall_s: u64,
    /// Seconds a live session may wait for a worker (every worker at capacity) before
    /// the stream is refused with RESOURCE_EXHAUSTED; the client is told it is queued
    /// after 2 s.
    #[arg(long, env = "KIROKU_QUEUE_TIMEOUT_S",
          default_value_t = crate::DEFAULT_QUEUE_TIMEOUT.as_secs())]
    pub queue_timeout_s: u64,
    /// The account service (signing keys, API keys, consent; its API is forwarded).
    #[arg(long, env = "KIROKU_ACCOUNT_URL", default_value = kiroku_core::settings::DEFAULT_ACCOUNT_URL)]
    pub account_url: String,
    /// The audit service, whose API (audit log, usage, notices) the gateway forwards.
    #[arg(long, env = "KIROKU_AUDIT_URL", default_value = kiroku_core::settings::DEFAULT_AUDIT_URL)]
    pub audit_url: String,
    /// The storage service, whose API (minutes, search, labels, exports) it forwards.
    #[arg(long, env = "KIROKU_STORAGE_URL", default_value = kiroku_core::settings::DEFAULT_STORAGE_URL)]
    pub storage_url: String,
    /// Redis: revocations, quotas and rate limits.
    #[arg(long, env = "KIROKU_REDIS_URL", default_value = kiroku_auth::DEFAULT_REDIS_URL)]
    pub redis: String,
    /// Live streams a tenant may have open at once.
    #[arg(long, env = "KIROKU_STREAMS_PER_TENANT",
          default_value_t = Quotas::default().streams_per_tenant)]
    pub streams_per_tenant: u32,
    /// Stream starts and file transcriptions per second per tenant (burst: 20x).
    #[arg(long, env = "KIROKU_TENANT_RATE",
          default_value_t = Quotas::default().tenant_rate.per_second)]
    pub tenant_rate: f64,
    /// The same per user or API key (burst: 20x).
    #[arg(long, env = "KIROKU_CALLER_RATE",
          default_value_t = Quotas::default().caller_rate.per_second)]
    pub caller_rate: f64,
    /// Worker pool per language, `LANGUAGE=POOL,…` (`auto`: streams that ask for
    /// detection; `*`: any other language), e.g. `en=english,*=multilingual`.
    /// Unrouted languages go to the pool `default`.
    #[arg(long, env = "KIROKU_SESSION_ROUTES", default_value = "")]
    pub routes: String,
    /// Proxies in front of the gateway (the ingress or load balancer: addresses or CIDR
    /// networks, comma-separated) whose x-forwarded-for names the client. Empty: the
    /// connection's address is the client (right for a gateway clients reach directly).
    #[arg(long, env = "KIROKU_GATEWAY_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Serve gRPC server reflection on the public port (off: it describes every API
    /// behind the gateway to anyone; the internal services always serve it).
    #[arg(long, env = "KIROKU_GATEWAY_REFLECTION")]
    pub reflection: bool,
}

impl GatewaySettings {
    /// The gateway's configuration, checked ([`GatewayConfig::validate`]).
    pub fn config(&self, resume_keys: ResumeKeys) -> Result<GatewayConfig, InvalidSetting> {
        let common = &self.common;
        let mut config = GatewayConfig::new(
            common.nats.clone(),
            common.layout()?,
            resume_keys,
            self.account_url.clone(),
        );
        config.retention = common.retention();
        config.resume_window = common.resume_window();
        config.audit_url = Some(self.audit_url.clone());
        config.storage_url = Some(self.storage_url.clone());
        config.redis_url = self.redis.clone();
        config.quotas.streams_per_tenant = self.streams_per_tenant;
        config.quotas.tenant_rate = Rate::per_second(self.tenant_rate);
        config.quotas.caller_rate = Rate::per_second(self.caller_rate);
        config.limits.idle_timeout = Duration::from_secs(self.idle_timeout_s);
        config.limits.max_stream_wall = Duration::from_secs(self.max_stream_wall_s);
        config.queue_timeout = Duration::from_secs(self.queue_timeout_s);
        config.routes =
            kiroku_core::nats::SessionRoutes::parse(&self.routes).map_err(|problem| {
                InvalidSetting {
                    setting: "--routes / KIROKU_SESSION_ROUTES",
                    problem,
                }
            })?;
        config.reflection = self.reflection;
        config.trusted_proxies = kiroku_auth::proxy::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|problem| InvalidSetting {
            setting: "--trusted-proxies / KIROKU_GATEWAY_TRUSTED_PROXIES",
            problem,
        })?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn config(args: &[&str]) -> Result<GatewayConfig, InvalidSetting> {
        kiroku_core::settings::parse::<GatewaySettings>(args)
            .expect("flags parse")
            .config(ResumeKeys::new(b"0123456789abcdef".to_vec()))
    }

    #[test]
    fn flags_reach_the_configuration_and_bad_ones_name_their_flag() {
        let config = config(&["--tenant-rate", "3", "--idle-timeout-s", "7"]).expect("valid");
        assert_eq!(config.quotas.tenant_rate.per_second, 3.0);
        assert_eq!(config.quotas.tenant_rate.burst, 60);
        assert_eq!(config.limits.idle_timeout, Duration::from_secs(7));
        let defaults = self::config(&[]).expect("the defaults are valid");
        assert_eq!(
            defaults.quotas.streams_per_tenant,
            Quotas::default().streams_per_tenant
        );

        let error = self::config(&["--routes", "en"]).expect_err("a route needs a pool");
        assert_eq!(error.setting, "--routes / KIROKU_SESSION_ROUTES");
        let error = self::config(&["--trusted-proxies", "not-an-address"]).expect_err("bad");
        assert_eq!(
            error.setting,
            "--trusted-proxies / KIROKU_GATEWAY_TRUSTED_PROXIES"
        );
        let error = self::config(&["--cluster", "a b"]).expect_err("bad root");
        assert_eq!(error.setting, "--cluster / KIROKU_CLUSTER");
        let error = self::config(&["--streams-per-tenant", "0"]).expect_err("0 streams");
        assert!(error.setting.starts_with("--streams-per-tenant"));
    }
}
