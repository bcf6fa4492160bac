//! `kiroku serve <role>`: one service in the foreground (what a container runs).
//!
//! Each role's settings are its library's clap struct (`kiroku_gateway::GatewaySettings`,
//! …: flags, each with an environment variable, the flag winning); this module adds the
//! secrets, which come only from the environment, and the files `--model` names, and
//! starts the service. On SIGTERM or Ctrl-C the service stops taking work and drains.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use kiroku_account::AccountSettings;
use kiroku_audit::AuditSettings;
use kiroku_core::ready::ReadyLine;
use kiroku_core::settings::CommonSettings;
use kiroku_gateway::GatewaySettings;
use kiroku_storage::StorageSettings;
use kiroku_worker::WorkerSettings;
use tokio::net::TcpListener;

use crate::InputError;

#[derive(Debug, clap::Subcommand)]
pub enum Role {
    /// The public gRPC gateway (StreamTranscribe, Transcribe, health, reflection).
    Gateway(GatewaySettings),
    /// A transcription worker (Whisper) pulling session jobs from NATS.
    Worker(WorkerSettings),
    /// The account service (tenants, users, MFA, tokens, API keys, consent).
    Account(AccountSettings),
    /// The audit service (the hash-chained tenant audit log, usage, notices).
    Audit(AuditSettings),
    /// The storage service (the minutes: encrypted, searchable, labelled, exportable).
    Storage(StorageSettings),
}

/// Where clients and gateways find the account service by default.
pub use kiroku_core::settings::DEFAULT_ACCOUNT_URL;

/// The operator token from the environment (`KIROKU_OPERATOR_TOKEN` or
/// `KIROKU_OPERATOR_TOKEN_FILE`), never from a flag: flags show in `ps`.
fn operator_token() -> Result<kiroku_account::auth::OperatorToken> {
    Ok(kiroku_account::auth::OperatorToken::from_env().map_err(InputError)?)
}

/// Refuses to start when a place this role keeps data is outside the allowed regions.
fn check_location(common: &CommonSettings, database: bool) -> Result<()> {
    Ok(common.check_location(database).map_err(InputError)?)
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

/// Catches SIGTERM and Ctrl-C from this call on (inside the runtime); the future
/// resolves on the first. Call it before the ready line: a supervisor may send SIGTERM
/// the moment it reads that line, and an uncaught one would kill the service undrained.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = Signals::catch().ok();
    async move {
        #[cfg(unix)]
        if let Some(mut signals) = signals {
            signals.recv().await;
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn gateway(args: GatewaySettings) -> Result<()> {
    check_location(&args.common, false)?;
    let _telemetry = kiroku_core::telemetry::init_service(
        "kiroku-gateway",
        "info,whisper_rs=off",
        &crate::config::telemetry_settings(),
    );
    let config = args.config(resume_keys()?).map_err(invalid)?;
    let grpc = bind(&args.listen, "gRPC").await?;
    let admin = bind(&args.admin_listen, "admin").await?;
    let shutdown = shutdown_signal();
    ReadyLine::new("gateway", Some(grpc.local_addr()?), admin.local_addr()?).announce();
    kiroku_gateway::serve(config, grpc, admin, shutdown).await
}

/// The resume-token key from `KIROKU_RESUME_SECRET` (shared by every gateway of the
/// cluster), or a random one that only this gateway knows.
fn resume_keys() -> Result<kiroku_gateway::ResumeKeys> {
    let secret = match std::env::var("KIROKU_RESUME_SECRET").ok() {
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
    Ok(kiroku_gateway::ResumeKeys::new(secret))
}

async fn worker(args: WorkerSettings) -> Result<()> {
    check_location(&args.common, false)?;
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
    let vad = kiroku_engine::vad::choose(&args.vad, &crate::config::model_dir())
        .map_err(|e| InputError(e.to_string()))?;
    let config = args.config(engine, vad).map_err(invalid)?;
    tracing::info!(vad = config.policy.vad.name(), "voice activity detector");
    let admin = bind(&args.admin_listen, "admin").await?;
    let shutdown = shutdown_signal();
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
    let outcome = kiroku_worker::serve(config, ready_tx, shutdown).await;
    let _ = stop_tx.send(true);
    outcome
}

async fn account(args: AccountSettings) -> Result<()> {
    check_location(&args.common, true)?;
    let _telemetry = kiroku_core::telemetry::init_service(
        "kiroku-account",
        "info",
        &crate::config::telemetry_settings(),
    );
    let config = args.config(operator_token()?).map_err(invalid)?;
    let grpc = bind(&args.listen, "gRPC").await?;
    let admin = bind(&args.admin_listen, "admin").await?;
    let shutdown = shutdown_signal();
    ReadyLine::new("account", Some(grpc.local_addr()?), admin.local_addr()?).announce();
    kiroku_account::serve(config, grpc, admin, shutdown).await
}

async fn audit(args: AuditSettings) -> Result<()> {
    check_location(&args.common, true)?;
    let _telemetry = kiroku_core::telemetry::init_service(
        "kiroku-audit",
        "info",
        &crate::config::telemetry_settings(),
    );
    let secrets = kiroku_audit::settings::AuditSecrets {
        operator: operator_token()?,
        anchor_key: kiroku_audit::anchor::AnchorKey::from_env().map_err(InputError)?,
        smtp_password: std::env::var("KIROKU_SMTP_PASSWORD").ok(),
    };
    let config = args.config(secrets).map_err(invalid)?;
    let grpc = bind(&args.listen, "gRPC").await?;
    let admin = bind(&args.admin_listen, "admin").await?;
    let shutdown = shutdown_signal();
    ReadyLine::new("audit", Some(grpc.local_addr()?), admin.local_addr()?).announce();
    kiroku_audit::serve(config, grpc, admin, shutdown).await
}

async fn storage(args: StorageSettings) -> Result<()> {
    check_location(&args.common, true)?;
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
    let config = args
        .config(std::sync::Arc::new(keys), operator_token()?)
        .map_err(invalid)?;
    let grpc = bind(&args.listen, "gRPC").await?;
    let admin = bind(&args.admin_listen, "admin").await?;
    let shutdown = shutdown_signal();
    ReadyLine::new("storage", Some(grpc.local_addr()?), admin.local_addr()?).announce();
    kiroku_storage::serve(config, grpc, admin, shutdown).await
}

#[cfg(test)]
mod tests {
    use kiroku_account::auth::Access;

    /// The gateway refuses exactly the operator methods of the services it forwards.
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
