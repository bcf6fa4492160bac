//! Sign-in throttling in Redis: failed attempts counted per account and per client
//! address in a fixed window. Over the limit, sign-in answers `RESOURCE_EXHAUSTED` with
//! the time left in the window, even for the right password. Redis down: sign-in fails
//! closed (`UNAVAILABLE`), since unthrottled guessing is what this prevents.

use std::net::IpAddr;
use std::time::Duration;

use redis::AsyncCommands as _;
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Failed sign-ins per account per window.
    pub per_account: u32,
    /// Failed sign-ins per client address per window.
    pub per_ip: u32,
    pub window: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_account: 5,
            per_ip: 50,
            window: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Clone)]
pub struct Throttle {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    config: ThrottleConfig,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Over a limit: wait this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled(pub Duration);

impl Throttle {
    pub fn new(redis: redis::aio::ConnectionManager, prefix: &str, config: ThrottleConfig) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
            config,
        }
    }

    fn keys(&self, tenant_slug: &str, email: &str, ip: Option<IpAddr>) -> (String, Option<String>) {
        // The account key holds a hash, not the email.
        let account = Sha256::digest(format!("{tenant_slug}\n{}", email.to_lowercase()));
        (
            format!(
                "{}:login:account:{}",
                self.prefix,
                hex::encode(&account[..16])
            ),
            ip.map(|ip| format!("{}:login:ip:{ip}", self.prefix)),
        )
    }

    /// `Err(Throttled)` when either counter is at its limit.
    pub async fn check(
        &self,
        tenant_slug: &str,
        email: &str,
        ip: Option<IpAddr>,
    ) -> redis::RedisResult<Result<(), Throttled>> {
        let (account, ip_key) = self.keys(tenant_slug, email, ip);
        let mut redis = self.redis.clone();
        for (key, limit) in [
            (Some(account), self.config.per_account),
            (ip_key, self.config.per_ip),
        ] {
            let Some(key) = key else { continue };
            let count: Option<u32> = redis.get(&key).await?;
            if count.unwrap_or(0) >= limit {
                let ttl: i64 = redis.ttl(&key).await?;
                let wait = Duration::from_secs(ttl.max(1) as u64);
                return Ok(Err(Throttled(wait)));
            }
        }
        Ok(Ok(()))
    }

    /// Counts a failed attempt against the account and the address.
    pub async fn failed(
        &self,
        tenant_slug: &str,
        email: &str,
        ip: Option<IpAddr>,
    ) -> redis::RedisResult<()> {
        let (account, ip_key) = self.keys(tenant_slug, email, ip);
        let window = self.config.window.as_secs() as i64;
        let mut pipe = redis::pipe();
        for key in [Some(account), ip_key].into_iter().flatten() {
            pipe.incr(&key, 1).ignore();
            // Fixed window from the first failure.
            pipe.cmd("EXPIRE").arg(&key).arg(window).arg("NX").ignore();
        }
        pipe.query_async::<()>(&mut self.redis.clone()).await
    }

    /// A successful sign-in clears the account's counter (not the address's).
    pub async fn succeeded(&self, tenant_slug: &str, email: &str) -> redis::RedisResult<()> {
        let (account, _) = self.keys(tenant_slug, email, None);
        self.redis.clone().del::<_, ()>(account).await
    }
}
