//! Per-tenant quotas and rate limits, shared by every gateway through Redis:
//! concurrent streams per tenant (a sorted set of stream leases that expire unless
//! renewed, so a crashed gateway's streams free their slots), and token buckets per
//! tenant and per caller for starting streams and file transcriptions. Refusals are
//! `RESOURCE_EXHAUSTED` with `google.rpc.RetryInfo`.
//!
//! Redis down: each gateway falls back to the same limits counted in its own memory
//! (so N gateways admit up to N times the quota) and logs a warning; nothing already
//! running is stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiroku_auth::auth::Principal;
use tonic::Status;
use tracing::warn;

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub burst: u32,
    pub per_second: f64,
}

impl Rate {
    /// `per_second`, with a burst of 20 seconds' worth (what the rate flags set).
    pub fn per_second(per_second: f64) -> Self {
        Self {
            burst: (per_second * 20.0).ceil() as u32,
            per_second,
        }
    }
}

/// Documented public limits per tenant (docs/accounts.md).
#[derive(Debug, Clone)]
pub struct Quotas {
    /// Live streams a tenant may have open at once.
    pub streams_per_tenant: u32,
    /// Stream starts and file transcriptions per tenant.
    pub tenant_rate: Rate,
    /// Stream starts and file transcriptions per user or API key.
    pub caller_rate: Rate,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            streams_per_tenant: 20,
            tenant_rate: Rate {
                burst: 40,
                per_second: 2.0,
            },
            caller_rate: Rate {
                burst: 20,
                per_second: 1.0,
            },
        }
    }
}

/// A stream lease lives this long unless renewed (renewed every 5 s).
const LEASE: Duration = Duration::from_secs(30);

const TOKEN_BUCKET: &str = r"
local burst = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * per_ms)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / per_ms)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / per_ms) + 1000)
return wait
";

const STREAM_LEASE: &str = r"
local limit = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease_ms * 2)
return 1
";

#[derive(Default)]
struct Local {
    buckets: HashMap<String, (f64, Instant)>,
    streams: HashMap<String, u32>,
}

pub(crate) struct Admission {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    quotas: Quotas,
    token_bucket: redis::Script,
    stream_lease: redis::Script,
    local: Mutex<Local>,
}

impl Admission {
    /// `Ok` while Redis answers (quotas and revocations live there).
    pub async fn redis_ready(&self) -> Result<(), String> {
        let mut redis = self.redis.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut redis);
        match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("Redis fails: {error}")),
            Err(_) => Err("Redis does not answer".into()),
        }
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("quotas", &self.quotas)
            .finish_non_exhaustive()
    }
}

/// A held stream slot; released (in the background) when dropped.
pub(crate) struct StreamLease {
    admission: Arc<Admission>,
    key: String,
    member: String,
    tenant: String,
    /// Counted in this process only (Redis was down when it was taken).
    local: bool,
}

impl StreamLease {
    /// Keeps the slot (call every few seconds while the stream runs).
    pub async fn renew(&self) {
        if self.local {
            return;
        }
        let result: redis::RedisResult<i64> = self
            .admission
            .stream_lease
            .key(&self.key)
            .arg(u32::MAX)
            .arg(&self.member)
            .arg(LEASE.as_millis() as u64)
            .invoke_async(&mut self.admission.redis.clone())
            .await;
        if let Err(error) = result {
            warn!(%error, "stream lease not renewed (redis)");
        }
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        if self.local {
            if let Ok(mut local) = self.admission.local.lock()
                && let Some(count) = local.streams.get_mut(&self.tenant)
            {
                *count = count.saturating_sub(1);
            }
            return;
        }
        let mut redis = self.admission.redis.clone();
        let (key, member) = (self.key.clone(), self.member.clone());
        tokio::spawn(async move {
            let result: redis::RedisResult<()> = redis::cmd("ZREM")
                .arg(key)
                .arg(member)
                .query_async(&mut redis)
                .await;
            if let Err(error) = result {
                warn!(%error, "stream lease not released; it expires by itself");
            }
        });
    }
}

impl Admission {
    pub fn new(redis: redis::aio::ConnectionManager, prefix: &str, quotas: Quotas) -> Arc<Self> {
        Arc::new(Self {
            redis,
            prefix: prefix.to_string(),
            quotas,
            token_bucket: redis::Script::new(TOKEN_BUCKET),
            stream_lease: redis::Script::new(STREAM_LEASE),
            local: Mutex::new(Local::default()),
        })
    }

    /// Takes one token from the tenant's and the caller's buckets.
    pub async fn admit_request(&self, principal: &Principal) -> Result<(), Status> {
        let tenant = principal.tenant_token();
        for (key, rate, who) in [
            (
                format!("{}:t:{tenant}:rate", self.prefix),
                self.quotas.tenant_rate,
                "tenant",
            ),
            (
                format!(
                    "{}:t:{tenant}:rate:{}",
                    self.prefix,
                    principal.subject.simple()
                ),
                self.quotas.caller_rate,
                "caller",
            ),
        ] {
            let wait_ms = match self
                .token_bucket
                .key(&key)
                .arg(rate.burst)
                .arg(rate.per_second / 1000.0)
                .invoke_async::<u64>(&mut self.redis.clone())
                .await
            {
                Ok(wait_ms) => wait_ms,
                Err(error) => {
                    warn!(%error, "redis unavailable: rate limit counted in this gateway only");
                    self.local_bucket(&key, rate)
                }
            };
            if wait_ms > 0 {
                return Err(kiroku_core::status::resource_exhausted(
                    format!(
                        "{who} rate limit of {} requests per second (burst {}) reached",
                        rate.per_second, rate.burst
                    ),
                    Duration::from_millis(wait_ms),
                ));
            }
        }
        Ok(())
    }

    fn local_bucket(&self, key: &str, rate: Rate) -> u64 {
        let Ok(mut local) = self.local.lock() else {
            return 0;
        };
        let now = Instant::now();
        let (tokens, last) = local
            .buckets
            .entry(key.to_string())
            .or_insert((f64::from(rate.burst), now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate.per_second)
            .min(f64::from(rate.burst));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            0
        } else {
            ((1.0 - *tokens) / rate.per_second * 1000.0).ceil() as u64
        }
    }

    /// Takes one of the tenant's concurrent-stream slots for `session`.
    pub async fn acquire_stream(
        self: &Arc<Self>,
        principal: &Principal,
        session: &str,
    ) -> Result<StreamLease, Status> {
        let tenant = principal.tenant_token();
        let limit = self.quotas.streams_per_tenant;
        let key = format!("{}:t:{tenant}:streams", self.prefix);
        let refused = || {
            kiroku_core::status::resource_exhausted(
                format!("this tenant's quota of {limit} concurrent streams is in use"),
                Duration::from_secs(5),
            )
        };
        let result: redis::RedisResult<i64> = self
            .stream_lease
            .key(&key)
            .arg(limit)
            .arg(session)
            .arg(LEASE.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await;
        let local = match result {
            Ok(1) => false,
            Ok(_) => return Err(refused()),
            Err(error) => {
                warn!(%error, "redis unavailable: stream quota counted in this gateway only");
                let Ok(mut local) = self.local.lock() else {
                    return Err(kiroku_core::status::internal(
                        "the local stream quota",
                        &"its lock is poisoned",
                    ));
                };
                let count = local.streams.entry(tenant.clone()).or_default();
                if *count >= limit {
                    return Err(refused());
                }
                *count += 1;
                true
            }
        };
        Ok(StreamLease {
            admission: self.clone(),
            key,
            member: session.to_string(),
            tenant,
            local,
        })
    }
}
