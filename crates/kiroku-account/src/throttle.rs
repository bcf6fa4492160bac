//! Sign-in throttling in Redis: failed attempts counted per account and per client
//! address in a fixed window. Over the limit, sign-in answers `RESOURCE_EXHAUSTED` with
//! the time left in the window, even for the right password. Redis down: sign-in fails
//! closed (`UNAVAILABLE`), since unthrottled guessing is what this prevents.

use std::net::IpAddr;
use std::time::Duration;

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

/// Counts one attempt against every key (each with its limit) atomically; when a key
/// is over its limit the attempt is taken back and the key's remaining window (ms) is
/// returned, else 0. Counting before the password is checked means parallel requests
/// cannot slip past the limit.
const RESERVE: &str = r"
local window_ms = ARGV[#KEYS + 1]
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, window_ms) end
  if n > tonumber(ARGV[i]) then
    for j = 1, i do redis.call('DECR', KEYS[j]) end
    local ttl = redis.call('PTTL', key)
    if ttl < 1 then ttl = 1 end
    return ttl
  end
end
return 0
";

/// Registrations per client address per hour.
pub const REGISTRATIONS_PER_IP_PER_HOUR: u32 = 10;

impl Throttle {
    pub fn new(redis: redis::aio::ConnectionManager, prefix: &str, config: ThrottleConfig) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
            config,
        }
    }

    fn account_key(&self, tenant_slug: &str, email: &str) -> String {
        // The key holds a hash, not the email.
        let account = Sha256::digest(format!("{tenant_slug}\n{}", email.to_lowercase()));
        format!(
            "{}:login:account:{}",
            self.prefix,
            hex::encode(&account[..16])
        )
    }

    fn ip_key(&self, ip: IpAddr) -> String {
        format!("{}:login:ip:{ip}", self.prefix)
    }

    async fn reserve(
        &self,
        keys: &[(String, u32)],
        window: Duration,
    ) -> redis::RedisResult<Result<(), Throttled>> {
        let script = redis::Script::new(RESERVE);
        let mut invocation = script.prepare_invoke();
        for (key, _) in keys {
            invocation.key(key);
        }
        for (_, limit) in keys {
            invocation.arg(*limit);
        }
        invocation.arg(window.as_millis() as u64);
        let wait_ms: u64 = invocation.invoke_async(&mut self.redis.clone()).await?;
        Ok(if wait_ms == 0 {
            Ok(())
        } else {
            Err(Throttled(Duration::from_millis(wait_ms)))
        })
    }

    /// Counts a sign-in attempt before the password is checked; `Err(Throttled)` when
    /// the account or the address is at its limit.
    pub async fn reserve_login(
        &self,
        tenant_slug: &str,
        email: &str,
        ip: Option<IpAddr>,
    ) -> redis::RedisResult<Result<(), Throttled>> {
        let mut keys = vec![(
            self.account_key(tenant_slug, email),
            self.config.per_account,
        )];
        if let Some(ip) = ip {
            keys.push((self.ip_key(ip), self.config.per_ip));
        }
        self.reserve(&keys, self.config.window).await
    }

    /// Counts a sign-in attempt on a tenant that does not exist, per client address
    /// (same limit as real sign-ins, separate counter).
    pub async fn reserve_unknown_tenant(
        &self,
        ip: Option<IpAddr>,
    ) -> redis::RedisResult<Result<(), Throttled>> {
        let Some(ip) = ip else { return Ok(Ok(())) };
        let key = format!("{}:login:unknown-tenant:ip:{ip}", self.prefix);
        self.reserve(&[(key, self.config.per_ip)], self.config.window)
            .await
    }

    /// True for the first refused attempt on an account within a window, false for the
    /// rest: a throttled account is audited once per window, not once per attempt (an
    /// attacker's retries must not write to the tenant's audit log for free).
    pub async fn first_refusal(&self, tenant_slug: &str, email: &str) -> redis::RedisResult<bool> {
        let key = format!("{}:refused", self.account_key(tenant_slug, email));
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(self.config.window.as_millis() as u64)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(set.is_some())
    }

    /// A successful sign-in: the account's counter is cleared and the attempt is given
    /// back to the address (only failures count against it).
    pub async fn succeeded(
        &self,
        tenant_slug: &str,
        email: &str,
        ip: Option<IpAddr>,
    ) -> redis::RedisResult<()> {
        // DECR only a live counter: one that expired meanwhile must not come back
        // without a TTL.
        let script = redis::Script::new(
            r"redis.call('DEL', KEYS[1])
              if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DECR', KEYS[2]) end
              return 0",
        );
        let mut invocation = script.prepare_invoke();
        invocation.key(self.account_key(tenant_slug, email));
        if let Some(ip) = ip {
            invocation.key(self.ip_key(ip));
        }
        invocation
            .invoke_async::<i64>(&mut self.redis.clone())
            .await
            .map(drop)
    }

    /// Counts a self-registration from `ip` ([`REGISTRATIONS_PER_IP_PER_HOUR`]).
    pub async fn reserve_registration(
        &self,
        ip: Option<IpAddr>,
    ) -> redis::RedisResult<Result<(), Throttled>> {
        let Some(ip) = ip else { return Ok(Ok(())) };
        let key = format!("{}:register:ip:{ip}", self.prefix);
        self.reserve(
            &[(key, REGISTRATIONS_PER_IP_PER_HOUR)],
            Duration::from_secs(3600),
        )
        .await
    }
}
