//! `kiroku serve <role>`: one service in the foreground (what a container runs).
//!
//! Configuration comes from flags, each with an environment variable (the flag wins).
//! On SIGTERM or Ctrl-C the service stops taking work and drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kiroku_core::nats::{DEFAULT_NATS_URL, DEFAULT_ROOT, Layout};
use kiroku_core::ready::ReadyLine;
use tokio::net::TcpListener;

use crate::InputError;

#[derive(Debug, clap::Subcommand)]
pub enum Role {
    /// The public gRPC gateway (StreamTranscribe, Transcribe, health, reflection).
    Gateway(GatewayArgs),
    /// A transcription worker (Whisper) pulling session jobs from NATS.
    Worker(WorkerArgs),
    /// The account service (tenants, users, MFA, tokens, API keys, consent).
    Account(AccountArgs),
    /// The audit service (the hash-chained tenant audit log, usage, notices).
    Audit(AuditArgs),
    /// The storage service (the minutes: encrypted, searchable, labelled, exportable).
    Storage(StorageArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    #[command(flatten)]
    pub common: Common,
    /// gRPC listen address.
    #[arg(long, env = "KIROKU_STORAGE_LISTEN", default_value = kiroku_storage::DEFAULT_LISTEN)]
    pub listen: String,
    /// Admin HTTP address: /healthz, /readyz, /metrics.
    #[arg(long, env = "KIROKU_STORAGE_ADMIN_LISTEN", default_value = kiroku_storage::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// PostgreSQL as the schema owner (migrations at start-up); the service connects as
    /// the role `kiroku_storage`.
    #[arg(long, env = "KIROKU_DATABASE_URL", default_value = kiroku_account::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The service's own connection (role `kiroku_storage`) [default: the owner URL with
    /// that user name].
    #[arg(long, env = "KIROKU_STORAGE_DATABASE_URL")]
    pub app_database_url: Option<String>,
    /// Schema of the storage tables.
    #[arg(long, env = "KIROKU_STORAGE_SCHEMA", default_value = "storage")]
    pub schema: String,
    /// Redis (token revocations).
    #[arg(long, env = "KIROKU_REDIS_URL", default_value = kiroku_account::DEFAULT_REDIS_URL)]
    pub redis: String,
    /// The account service (token keys).
    #[arg(long, env = "KIROKU_ACCOUNT_URL", default_value = DEFAULT_ACCOUNT_URL)]
    pub account_url: String,
    /// Seconds ImportTenant waits for the client's next bundle file before abandoning
    /// the import (nothing is written until the whole bundle has arrived).
    #[arg(long, env = "KIROKU_IMPORT_IDLE_TIMEOUT_S",
          default_value_t = kiroku_storage::DEFAULT_IMPORT_IDLE_TIMEOUT.as_secs())]
    pub import_idle_timeout_s: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub common: Common,
    /// gRPC listen address.
    #[arg(long, env = "KIROKU_AUDIT_LISTEN", default_value = kiroku_audit::DEFAULT_LISTEN)]
    pub listen: String,
    /// Admin HTTP address: /healthz, /readyz, /metrics.
    #[arg(long, env = "KIROKU_AUDIT_ADMIN_LISTEN", default_value = kiroku_audit::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// PostgreSQL as the schema owner (migrations at start-up); the service connects as
    /// the role `kiroku_audit` (INSERT and SELECT only).
    #[arg(long, env = "KIROKU_DATABASE_URL", default_value = kiroku_account::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The service's own connection (role `kiroku_audit`) [default: the owner URL with
    /// that user name].
    #[arg(long, env = "KIROKU_AUDIT_DATABASE_URL")]
    pub app_database_url: Option<String>,
    /// Schema of the audit tables.
    #[arg(long, env = "KIROKU_AUDIT_SCHEMA", default_value = "audit")]
    pub schema: String,
    /// Redis (token revocations).
    #[arg(long, env = "KIROKU_REDIS_URL", default_value = kiroku_account::DEFAULT_REDIS_URL)]
    pub redis: String,
    /// The account service (token keys).
    #[arg(long, env = "KIROKU_ACCOUNT_URL", default_value = DEFAULT_ACCOUNT_URL)]
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

/// The operator token from the environment (`KIROKU_OPERATOR_TOKEN` or
/// `KIROKU_OPERATOR_TOKEN_FILE`), never from a flag: flags show in `ps`.
fn operator_token() -> Result<kiroku_account::auth::OperatorToken> {
    Ok(kiroku_account::auth::OperatorToken::from_env().map_err(InputError)?)
}

fn smtp_config(args: &AuditArgs) -> Result<Option<kiroku_audit::notice::SmtpConfig>> {
    let Some(host) = args.smtp_host.clone().filter(|h| !h.trim().is_empty()) else {
        return Ok(None);
    };
    let tls = args.smtp_tls.parse().map_err(InputError)?;
    let from = args
        .smtp_from
        .parse()
        .map_err(|e| InputError(format!("--smtp-from {:?}: {e}", args.smtp_from)))?;
    Ok(Some(kiroku_audit::notice::SmtpConfig {
        host,
        port: args.smtp_port,
        tls,
        from,
        username: args.smtp_username.clone(),
        password: std::env::var("KIROKU_SMTP_PASSWORD").ok(),
    }))
}

/// Settings every role shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// NATS server.
    #[arg(long, env = "KIROKU_NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats: String,
    /// Cluster root: prefixes every NATS subject and stream (see DESIGN.md).
    #[arg(long, env = "KIROKU_CLUSTER", default_value = DEFAULT_ROOT)]
    pub cluster: String,
    /// How long a dropped stream may be resumed, in seconds.
    #[arg(long, env = "KIROKU_RESUME_WINDOW_S",
          default_value_t = kiroku_core::nats::DEFAULT_RESUME_WINDOW.as_secs())]
    pub resume_window_s: u64,
    /// The region this service runs in (control 6.1.3).
    #[arg(long, env = "KIROKU_REGION", default_value = kiroku_core::region::DEFAULT_REGION)]
    pub region: String,
    /// Regions customer data may be kept in, comma-separated.
    #[arg(long, env = "KIROKU_ALLOWED_REGIONS", default_value = kiroku_core::region::DEFAULT_REGION)]
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

impl Common {
    fn layout(&self) -> Result<Layout> {
        Ok(Layout::new(&self.cluster).map_err(|e| InputError(e.to_string()))?)
    }

    fn retention(&self) -> kiroku_core::nats::Retention {
        kiroku_core::nats::Retention {
            replicas: self.nats_replicas.into(),
            ..Default::default()
        }
    }

    /// Refuses to start when a place this role keeps data is outside the allowed
    /// regions (control 6.1.3).
    fn check_location(&self, database: bool) -> Result<()> {
        let location = kiroku_core::region::DataLocation::new(&self.region, &self.allowed_regions)
            .map_err(InputError)?;
        location
            .check("NATS JetStream", self.nats_region.as_deref())
            .map_err(InputError)?;
        if database {
            location
                .check("PostgreSQL", self.database_region.as_deref())
                .map_err(InputError)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub common: Common,
    /// gRPC listen address (port 0 picks a free port; the bound one is printed).
    #[arg(long, env = "KIROKU_GATEWAY_LISTEN", default_value = kiroku_gateway::DEFAULT_LISTEN)]
    pub listen: String,
    /// Admin HTTP address: /healthz, /readyz, /metrics.
    #[arg(long, env = "KIROKU_GATEWAY_ADMIN_LISTEN", default_value = kiroku_gateway::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// Seconds without any client message before a stream is closed
    /// (DEADLINE_EXCEEDED); clients send keep_alive while muted.
    #[arg(long, env = "KIROKU_IDLE_TIMEOUT_S",
          default_value_t = kiroku_gateway::Limits::default().idle_timeout.as_secs())]
    pub idle_timeout_s: u64,
    /// Seconds one stream connection may stay open, audio or not (OUT_OF_RANGE after;
    /// what was received is finalized).
    #[arg(long, env = "KIROKU_MAX_STREAM_WALL_S",
          default_value_t = kiroku_gateway::Limits::default().max_stream_wall.as_secs())]
    pub max_stream_wall_s: u64,
    /// Seconds a live session may wait for a worker (every worker at capacity) before
    /// the stream is refused with RESOURCE_EXHAUSTED; the client is told it is queued
    /// after 2 s.
    #[arg(long, env = "KIROKU_QUEUE_TIMEOUT_S",
          default_value_t = kiroku_gateway::DEFAULT_QUEUE_TIMEOUT.as_secs())]
    pub queue_timeout_s: u64,
    /// Secret shared by all gateways of the cluster, for resume tokens (read from the
    /// environment only, never a flag: flags show up in `ps`).
    #[arg(skip)]
    pub resume_secret: Option<String>,
    /// The account service (signing keys, API keys, consent; its API is forwarded).
    #[arg(long, env = "KIROKU_ACCOUNT_URL", default_value = DEFAULT_ACCOUNT_URL)]
    pub account_url: String,
    /// The audit service, whose API (audit log, usage, notices) the gateway forwards.
    #[arg(long, env = "KIROKU_AUDIT_URL", default_value = crate::audit::DEFAULT_AUDIT_URL)]
    pub audit_url: String,
    /// The storage service, whose API (minutes, search, labels, exports) it forwards.
    #[arg(long, env = "KIROKU_STORAGE_URL", default_value = crate::minutes::DEFAULT_STORAGE_URL)]
    pub storage_url: String,
    /// Redis: revocations, quotas and rate limits.
    #[arg(long, env = "KIROKU_REDIS_URL", default_value = kiroku_account::DEFAULT_REDIS_URL)]
    pub redis: String,
    /// Live streams a tenant may have open at once.
    #[arg(long, env = "KIROKU_STREAMS_PER_TENANT",
          default_value_t = kiroku_gateway::Quotas::default().streams_per_tenant)]
    pub streams_per_tenant: u32,
    /// Stream starts and file transcriptions per second per tenant (burst: 20x).
    #[arg(long, env = "KIROKU_TENANT_RATE",
          default_value_t = kiroku_gateway::Quotas::default().tenant_rate.per_second)]
    pub tenant_rate: f64,
    /// The same per user or API key (burst: 20x).
    #[arg(long, env = "KIROKU_CALLER_RATE",
          default_value_t = kiroku_gateway::Quotas::default().caller_rate.per_second)]
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

/// Where clients and gateways find the account service by default.
pub const DEFAULT_ACCOUNT_URL: &str = "http://127.0.0.1:50053";

#[derive(Debug, Clone, clap::Args)]
pub struct AccountArgs {
    #[command(flatten)]
    pub common: Common,
    /// gRPC listen address.
    #[arg(long, env = "KIROKU_ACCOUNT_LISTEN", default_value = kiroku_account::DEFAULT_LISTEN)]
    pub listen: String,
    /// Admin HTTP address: /healthz, /readyz, /metrics.
    #[arg(long, env = "KIROKU_ACCOUNT_ADMIN_LISTEN", default_value = kiroku_account::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,
    /// PostgreSQL as the schema owner: creates the database, role and schema and runs
    /// migrations at start-up. The service itself connects as the role
    /// `kiroku_account` (see --app-database-url).
    #[arg(long, env = "KIROKU_DATABASE_URL", default_value = kiroku_account::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The service's own connection (role `kiroku_account`) [default: the owner URL
    /// with that user name, enough where PostgreSQL trusts local connections].
    #[arg(long, env = "KIROKU_ACCOUNT_DATABASE_URL")]
    pub app_database_url: Option<String>,
    /// Schema of the account tables.
    #[arg(long, env = "KIROKU_ACCOUNT_SCHEMA", default_value = "account")]
    pub schema: String,
    /// Redis: revocations and sign-in throttling.
    #[arg(long, env = "KIROKU_REDIS_URL", default_value = kiroku_account::DEFAULT_REDIS_URL)]
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
          default_value_t = kiroku_account::TokenLifetimes::default().access.as_secs())]
    pub access_ttl_s: u64,
    /// Failed sign-ins per account per 15 minutes before sign-in is refused.
    #[arg(long, env = "KIROKU_LOGIN_ATTEMPTS",
          default_value_t = kiroku_account::throttle::ThrottleConfig::default().per_account)]
    pub login_attempts: u32,
    /// Failed sign-ins per client address per 15 minutes.
    #[arg(long, env = "KIROKU_LOGIN_ATTEMPTS_PER_IP",
          default_value_t = kiroku_account::throttle::ThrottleConfig::default().per_ip)]
    pub login_attempts_per_ip: u32,
    /// Gateways (addresses or CIDR networks, comma-separated) whose x-forwarded-for
    /// names the client; everyone else is known by the connection's address.
    #[arg(long, env = "KIROKU_TRUSTED_PROXIES", default_value = kiroku_account::proxy::TrustedProxies::DEFAULT)]
    pub trusted_proxies: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: Common,
    /// Model: an installed model's name (tiny.en, base, base-q8_0, …: `kiroku model
    /// list`) or the path of a ggml file [default: tiny.en].
    #[arg(long, env = "KIROKU_MODEL", value_name = "NAME|PATH")]
    pub model: Option<String>,
    /// A second model for the minutes: utterance finals and files are decoded with it,
    /// captions with --model (e.g. tiny.en captions, base finals). Default: --model for
    /// everything. See docs/streaming.md, "Two models".
    #[arg(long, env = "KIROKU_FINAL_MODEL", value_name = "NAME|PATH")]
    pub final_model: Option<String>,
    /// Inference threads across all slots [default: all cores].
    #[arg(long, env = "KIROKU_WORKER_THREADS")]
    pub threads: Option<usize>,
    /// Decodes at once (alone, a decode gets every thread; under load each gets
    /// threads/slots).
    #[arg(long, env = "KIROKU_WORKER_SLOTS", default_value_t = 1)]
    pub slots: usize,
    /// Sessions this worker runs at once.
    #[arg(long, env = "KIROKU_WORKER_SESSIONS",
          default_value_t = kiroku_worker::DEFAULT_MAX_SESSIONS)]
    pub sessions: usize,
    /// Seconds without a progress ack before a job moves to another worker.
    #[arg(long, env = "KIROKU_WORKER_ACK_WAIT_S",
          default_value_t = kiroku_worker::DEFAULT_ACK_WAIT.as_secs_f64())]
    pub ack_wait_s: f64,
    /// Below --sessions, take a new session only while no running live stream's
    /// caption lag (peak of the last 10 s) is over this many seconds, and the newest
    /// session has run 3 s; otherwise the job waits for another worker. 0: only
    /// --sessions.
    #[arg(long, env = "KIROKU_WORKER_ADMIT_MAX_LAG_S",
          default_value_t = kiroku_worker::DEFAULT_ADMIT_MAX_LAG.as_secs_f64())]
    pub admit_max_lag_s: f64,
    /// Admin HTTP address (/healthz, /readyz, /metrics); port 0 picks a free one.
    #[arg(
        long,
        env = "KIROKU_WORKER_ADMIN_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub admin_listen: String,
    /// Streaming policy: decode again after this much new audio (ms). Shorter commits
    /// sooner and costs more CPU per stream.
    #[arg(long, env = "KIROKU_WORKER_STEP_MS")]
    pub step_ms: Option<u32>,
    /// Voice activity detector that finds the pauses ending utterances: energy (a level
    /// threshold, which background noise defeats), silero (Silero VAD, `kiroku model
    /// fetch --model silero-vad`; finds pauses in noise, but lost sentences of a clean
    /// meeting's minutes: docs/streaming.md) or auto (silero when installed).
    #[arg(long, env = "KIROKU_VAD", default_value = "energy",
          value_parser = ["auto", "silero", "energy"])]
    pub vad: String,
    /// `whisper`, or `null-benchmark`: BENCHMARK ONLY, no inference (plumbing runs).
    #[arg(long, default_value = "whisper")]
    pub engine: String,
    /// The worker pool this worker serves: the gateways' KIROKU_SESSION_ROUTES send
    /// sessions to pools by language (e.g. tiny.en workers in `english`, base workers
    /// in `multilingual`).
    #[arg(long, env = "KIROKU_WORKER_POOL", default_value = kiroku_core::nats::DEFAULT_POOL)]
    pub pool: String,
}

pub fn run(role: Role) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let name = match &role {
        Role::Gateway(_) => "gateway",
        Role::Worker(_) => "worker",
        Role::Account(_) => "account",
        Role::Audit(_) => "audit",
        Role::Storage(_) => "storage",
    };
    kiroku_core::metrics::metrics().started_as(name);
    runtime.block_on(async move {
        match role {
            Role::Gateway(args) => gateway(args).await,
            Role::Worker(args) => worker(args).await,
            Role::Account(args) => account(args).await,
            Role::Audit(args) => audit(args).await,
            Role::Storage(args) => storage(args).await,
        }
    })
}

/// A setting the service's `validate()` refused, as a usage error (exit code 2).
fn invalid(error: kiroku_core::settings::InvalidSetting) -> InputError {
    InputError(error.to_string())
}

async fn bind(address: &str, what: &str) -> Result<TcpListener> {
    let address: SocketAddr = address
        .parse()
        .map_err(|_| InputError(format!("{what} address {address:?} is not HOST:PORT")))?;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the {what} address {address}"))
}

/// SIGTERM and SIGINT, caught from the moment this is made: one that arrives before
/// anything waits for it is kept for [`Signals::recv`] instead of killing the process
/// (a supervisor such as `kiroku up` would leave its children running).
#[cfg(unix)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    /// Starts catching both signals (inside the runtime).
    pub fn catch() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("catching SIGINT")?,
        })
    }

    /// Resolves on the first signal caught since [`Signals::catch`].
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    if let Ok(mut signals) = Signals::catch() {
        signals.recv().await;
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn gateway(args: GatewayArgs) -> Result<()> {
    args.common.check_location(false)?;
    let _telemetry = kiroku_core::telemetry::init_service(
        "kiroku-gateway",
        "info,whisper_rs=off",
        &crate::config::telemetry_settings(),
    );
    let secret = match args
        .resume_secret
        .or_else(|| std::env::var("KIROKU_RESUME_SECRET").ok())
    {
        Some(secret) if secret.len() >= 16 => secret.into_bytes(),
        Some(_) => {
            return Err(
                InputError("KIROKU_RESUME_SECRET must be at least 16 characters".into()).into(),
            );
        }
        None => {
            tracing::warn!(
                "KIROKU_RESUME_SECRET is unset: resume tokens work on this gateway only"
            );
            format!("{}{}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4()).into_bytes()
        }
    };
    let mut config = kiroku_gateway::GatewayConfig::new(
        args.common.nats.clone(),
        args.common.layout()?,
        kiroku_gateway::ResumeKeys::new(secret),
        args.account_url.clone(),
    );
    config.retention = args.common.retention();
    config.audit_url = Some(args.audit_url.clone());
    config.storage_url = Some(args.storage_url.clone());
    config.redis_url = args.redis.clone();
    config.quotas.streams_per_tenant = args.streams_per_tenant;
    config.quotas.tenant_rate = kiroku_gateway::Rate {
        burst: (args.tenant_rate * 20.0).ceil() as u32,
        per_second: args.tenant_rate,
    };
    config.quotas.caller_rate = kiroku_gateway::Rate {
        burst: (args.caller_rate * 20.0).ceil() as u32,
        per_second: args.caller_rate,
    };
    config.resume_window = Duration::from_secs(args.common.resume_window_s);
    config.limits.idle_timeout = Duration::from_secs(args.idle_timeout_s);
    config.limits.max_stream_wall = Duration::from_secs(args.max_stream_wall_s);
    config.queue_timeout = Duration::from_secs(args.queue_timeout_s);
    config.routes = kiroku_core::nats::SessionRoutes::parse(&args.routes)
        .map_err(|e| InputError(format!("--routes / KIROKU_SESSION_ROUTES: {e}")))?;
    config.reflection = args.reflection;
    config.trusted_proxies = kiroku_account::proxy::TrustedProxies::parse(&args.trusted_proxies)
        .map_err(|e| {
            InputError(format!(
                "--trusted-proxies / KIROKU_GATEWAY_TRUSTED_PROXIES: {e}"
            ))
        })?;
    config.validate().map_err(invalid)?;
    let grpc = bind(&args.listen, "gRPC").await?;
    let admin = bind(&args.admin_listen, "admin").await?;
    ReadyLine::new("gateway", Some(grpc.local_addr()?), admin.local_addr()?).announce();
    kiroku_gateway::serve(config, grpc, admin, shutdown_signal()).await
}

async fn worker(args: WorkerArgs) -> Result<()> {
    args.common.check_location(false)?;
    let _telemetry = kiroku_core::telemetry::init_service(
        "kiroku-worker",
        "info,whisper_rs=off",
        &crate::config::telemetry_settings(),
    );
    let engine = match args.engine.as_str() {
        "whisper" => {
            let model_path = match &args.model {
                Some(model) => crate::model::resolve(model)?,
                None => crate::config::default_model_path(),
            };
            let final_model_path = match &args.final_model {
                Some(model) => Some(crate::model::resolve(model)?),
                None => None,
            };
            for (flag, path) in [
                ("--model", Some(&model_path)),
                ("--final-model", final_model_path.as_ref()),
            ] {
                if let Some(path) = path
                    && !path.is_file()
                {
                    return Err(InputError(format!(
                        "model file {} not found (run `kiroku model fetch` or pass {flag} NAME|PATH)",
                        path.display()
                    ))
                    .into());
                }
            }
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            kiroku_worker::EngineKind::Whisper {
                model_path,
                final_model_path,
                threads: args.threads.unwrap_or(cores),
                slots: args.slots,
            }
        }
        "null-benchmark" => kiroku_worker::EngineKind::NullForBenchmarks,
        other => {
            return Err(InputError(format!(
                "unknown engine {other:?}: use whisper or null-benchmark"
            ))
            .into());
        }
    };
    let mut config =
        kiroku_worker::WorkerConfig::new(args.common.nats.clone(), args.common.layout()?, engine);
    config.retention = args.common.retention();
    config.max_sessions = args.sessions;
    kiroku_core::nats::check_token("pool", &args.pool).map_err(|e| InputError(e.to_string()))?;
    config.pool = args.pool.clone();
    // Negative, NaN or huge seconds are not durations; the ranges are validate()'s.
    let seconds = |flag: &str, value: f64| {
        Duration::try_from_secs_f64(value)
            .map_err(|_| InputError(format!("{flag} {value} is not a number of seconds")))
    };
    config.ack_wait = seconds("--ack-wait-s", args.ack_wait_s)?;
    config.admit_max_lag = seconds("--admit-max-lag-s", args.admit_max_lag_s)?;
    config.resume_window = Duration::from_secs(args.common.resume_window_s);
    if let Some(step_ms) = args.step_ms {
        config.policy.step_ms = step_ms;
    }
    config.validate().map_err(invalid)?;
    config.policy.vad = kiroku_engine::vad::choose(&args.vad, &crate::config::model_dir())
        .map_err(|e| InputError(e.to_string()))?;
    tracing::info!(vad = config.policy.vad.name(), "voice activity detector");
    let admin = bind(&args.admin_listen, "admin").await?;
    ReadyLine::new("worker", None, admin.local_addr()?).announce();
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(kiroku_core::admin::starting());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(kiroku_core::admin::serve_admin(
        admin,
        ready_rx,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let outcome = kiroku_worker::serve(config, ready_tx, shutdown_signal()).await;
    let _ = stop_tx.send(true);
    outcome
}

async fn account(args: AccountArgs) -> Result<()> {
    args.common.check_location(true)?;
    let _telemetry = kiroku_core::telemetry::init_service(
        "kiroku-account",
        "info",
        &crate::config::telemetry_settings(),
    );
    let mut database = kiroku_account::db::config(&args.database_url, &args.schema);
    database.app_url = args.app_database_url.clone();
    let mut config = kiroku_account::AccountConfig::new(database, args.signing_key_file.clone());
    config.redis_url = args.redis.clone();
    config.nats_url = args.common.nats.clone();
    config.layout = args.common.layout()?;
    config.retention = args.common.retention();
    config.lifetimes.access = Duration::from_secs(args.access_ttl_s);
    config.throttle.per_account = args.login_attempts;
    config.throttle.per_ip = args.login_attempts_per_ip;
    config.trusted_proxies =
        kiroku_account::proxy::TrustedProxies::parse(&args.trusted_proxies).map_err(InputError)?;
    config.operator = operator_token()?;
    config.validate().map_err(invalid)?;
    let grpc = bind(&args.listen, "gRPC").await?;
    let admin = bind(&args.admin_listen, "admin").await?;
    ReadyLine::new("account", Some(grpc.local_addr()?), admin.local_addr()?).announce();
    kiroku_account::serve(config, grpc, admin, shutdown_signal()).await
}

async fn audit(args: AuditArgs) -> Result<()> {
    args.common.check_location(true)?;
    let _telemetry = kiroku_core::telemetry::init_service(
        "kiroku-audit",
        "info",
        &crate::config::telemetry_settings(),
    );
    let mut config =
        kiroku_audit::AuditConfig::new(&args.database_url, &args.schema, &args.account_url);
    config.database.app_url = args.app_database_url.clone();
    config.redis_url = args.redis.clone();
    config.nats_url = args.common.nats.clone();
    config.layout = args.common.layout()?;
    config.retention = args.common.retention();
    config.operator = operator_token()?;
    config.anchor_key = kiroku_audit::anchor::AnchorKey::from_env().map_err(InputError)?;
    config.smtp = smtp_config(&args)?;
    let grpc = bind(&args.listen, "gRPC").await?;
    let admin = bind(&args.admin_listen, "admin").await?;
    ReadyLine::new("audit", Some(grpc.local_addr()?), admin.local_addr()?).announce();
    kiroku_audit::serve(config, grpc, admin, shutdown_signal()).await
}

async fn storage(args: StorageArgs) -> Result<()> {
    args.common.check_location(true)?;
    let _telemetry = kiroku_core::telemetry::init_service(
        "kiroku-storage",
        "info",
        &crate::config::telemetry_settings(),
    );
    // The master key wraps every tenant's data key: from KIROKU_MASTER_KEY_FILE (or
    // KIROKU_MASTER_KEY), never a flag.
    let keys = kiroku_storage::crypto::MasterKeys::from_env().map_err(|e| {
        InputError(format!(
            "{e} (64 hex characters, e.g. `openssl rand -hex 32` into a 0600 file)"
        ))
    })?;
    let mut config = kiroku_storage::StorageConfig::new(
        &args.database_url,
        &args.schema,
        &args.account_url,
        std::sync::Arc::new(keys),
    );
    config.database.app_url = args.app_database_url.clone();
    config.redis_url = args.redis.clone();
    config.nats_url = args.common.nats.clone();
    config.layout = args.common.layout()?;
    config.retention = args.common.retention();
    config.operator = operator_token()?;
    config.import_idle_timeout = Duration::from_secs(args.import_idle_timeout_s);
    config.validate().map_err(invalid)?;
    let grpc = bind(&args.listen, "gRPC").await?;
    let admin = bind(&args.admin_listen, "admin").await?;
    ReadyLine::new("storage", Some(grpc.local_addr()?), admin.local_addr()?).announce();
    kiroku_storage::serve(config, grpc, admin, shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use kiroku_account::auth::Access;

    /// The gateway refuses exactly the operator methods of the services it forwards.
    /// `--nats-replicas` (KIROKU_NATS_REPLICAS) reaches the streams every role creates
    /// and stays within what NATS allows.
    #[test]
    fn nats_replicas_are_checked_and_reach_the_retention() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            common: super::Common,
        }
        use clap::Parser as _;
        let parse = |value: &str| Cli::try_parse_from(["kiroku", "--nats-replicas", value]);
        let three = parse("3").expect("3 replicas");
        assert_eq!(three.common.retention().replicas, 3);
        for bad in ["0", "6", "three"] {
            assert!(parse(bad).is_err(), "--nats-replicas {bad} was accepted");
        }
        let default = Cli::try_parse_from(["kiroku"]).expect("defaults");
        assert_eq!(default.common.retention().replicas, 1);
    }

    #[test]
    fn the_gateway_blocks_every_operator_method_it_could_forward() {
        let tables = [
            ("kiroku.account.v1.AccountService", kiroku_account::METHODS),
            ("kiroku.audit.v1.AuditService", kiroku_audit::METHODS),
            (
                "kiroku.audit.v1.NoticeService",
                kiroku_audit::NOTICE_METHODS,
            ),
            ("kiroku.storage.v1.Storage", kiroku_storage::METHODS),
        ];
        let mut operator: Vec<String> = tables
            .iter()
            .flat_map(|(service, methods)| {
                methods
                    .iter()
                    .filter(|(_, access)| matches!(access, Access::Operator))
                    .map(move |(method, _)| format!("/{service}/{method}"))
            })
            .collect();
        operator.sort();
        let mut blocked: Vec<String> = kiroku_gateway::forward::OPERATOR_METHODS
            .iter()
            .map(|m| m.to_string())
            .collect();
        blocked.sort();
        assert_eq!(blocked, operator);
    }
}
