//! The account service (`kiroku serve account`): tenants, users and roles, passwords,
//! TOTP MFA, access and refresh tokens, tenant API keys and recording consent.
//!
//! Data lives in the service's own PostgreSQL schema, reached as a non-owner role with
//! row-level security forced on every table ([`db`]); Redis holds revocations and
//! sign-in throttles ([`auth`], [`throttle`]); every security event goes to JetStream
//! `AUDIT`. The [`auth`] and [`tokens`] modules (crate `kiroku-auth`) are also what
//! the other services use to check credentials.

pub mod db;
pub mod error;
pub mod password;
mod service;
pub mod settings;
mod store;
pub mod throttle;
pub mod totp;

// What every service uses to check credentials lives in `kiroku-auth`; re-exported so
// the account service's own code reads `crate::auth`, `crate::tokens`.
pub use kiroku_auth::{DEFAULT_REDIS_URL, auth, checker, proxy, redis_prefix, tokens};

use std::net::SocketAddr;
use std::path::PathBuf;

use kiroku_core::audit::AuditEmitter;
use kiroku_core::nats::Layout;
use kiroku_proto::account::v1::account_service_server::AccountServiceServer;
use tokio::net::TcpListener;

pub use service::{Accounts, METHODS, TokenLifetimes, access};

/// Default gRPC address of the account service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50053";
/// Default admin HTTP address (`/healthz`, `/readyz`, `/metrics`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9466";
/// Where the services find PostgreSQL when `KIROKU_DATABASE_URL` is unset.
pub use kiroku_core::settings::DEFAULT_DATABASE_URL;
pub use settings::AccountSettings;

/// Everything the account service needs.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub database: db::DatabaseConfig,
    /// Run migrations (as `database.owner_url`) at start-up.
    pub migrate: bool,
    pub redis_url: String,
    pub nats_url: String,
    pub layout: Layout,
    /// Replication and retention of the streams this service creates if missing.
    pub retention: kiroku_core::nats::Retention,
    /// Ed25519 signing key (PKCS#8 DER), created when missing; share it between
    /// replicas.
    pub signing_key_file: PathBuf,
    pub lifetimes: TokenLifetimes,
    pub throttle: throttle::ThrottleConfig,
    /// The service operator's token (notice recipients); operator calls are refused
    /// when it is not configured.
    pub operator: auth::OperatorToken,
    /// Gateways whose `x-forwarded-for` names the client (sign-in throttles, audit).
    pub trusted_proxies: proxy::TrustedProxies,
}

impl AccountConfig {
    pub fn new(database: db::DatabaseConfig, signing_key_file: PathBuf) -> Self {
        Self {
            database,
            migrate: true,
            redis_url: DEFAULT_REDIS_URL.into(),
            nats_url: kiroku_core::nats::DEFAULT_NATS_URL.into(),
            layout: Layout::default(),
            retention: kiroku_core::nats::Retention::default(),
            signing_key_file,
            lifetimes: TokenLifetimes::default(),
            throttle: throttle::ThrottleConfig::default(),
            operator: auth::OperatorToken::default(),
            trusted_proxies: proxy::TrustedProxies::default(),
        }
    }
}

/// Bound sockets and what they serve.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl AccountConfig {
    /// The settings' ranges (`docs/configuration.md` lists them with their defaults).
    pub fn validate(&self) -> Result<(), kiroku_core::settings::InvalidSetting> {
        use kiroku_core::settings::{at_least, seconds_within};
        seconds_within(
            "--access-ttl-s / KIROKU_ACCESS_TOKEN_TTL_S",
            self.lifetimes.access,
            30.0..=86_400.0,
        )?;
        at_least(
            "--login-attempts / KIROKU_LOGIN_ATTEMPTS",
            self.throttle.per_account,
            1,
            "",
        )?;
        at_least(
            "--login-attempts-per-ip / KIROKU_LOGIN_ATTEMPTS_PER_IP",
            self.throttle.per_ip,
            1,
            "",
        )
    }
}

/// Migrates, connects to PostgreSQL, Redis and NATS, then serves gRPC (with health and
/// reflection) and the admin port until `shutdown` resolves.
pub async fn serve(
    config: AccountConfig,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    if config.migrate {
        kiroku_core::db::migrate(&config.database, &db::MIGRATOR).await?;
    }
    let db = db::Db::connect(&config.database).await?;
    let signer = tokens::Signer::load_or_create(&config.signing_key_file)?;
    let verifier = tokens::Verifier::new([signer.public_key().as_slice()]);
    let redis = auth::connect_redis(&config.redis_url).await?;
    let prefix = redis_prefix(&config.layout);
    let revocations = auth::Revocations::new(redis.clone(), &prefix, config.lifetimes.access);
    let throttle = throttle::Throttle::new(redis, &prefix, config.throttle.clone());
    let (nats, js) = kiroku_core::nats::connect_and_ensure(
        &config.nats_url,
        "kiroku-account",
        &config.layout,
        &config.retention,
    )
    .await?;
    let accounts = Accounts::new(service::State {
        db: db.clone(),
        signer,
        verifier,
        revocations,
        throttle,
        audit: AuditEmitter::new(js.clone(), config.layout.clone()),
        nats: nats.clone(),
        layout: config.layout.clone(),
        lifetimes: config.lifetimes.clone(),
        operator: config
            .operator
            .clone()
            .audited(AuditEmitter::new(js, config.layout.clone())),
        trusted_proxies: config.trusted_proxies.clone(),
    });

    let ready = kiroku_core::admin::db_and_nats_readiness(db.clone(), nats.clone(), None);
    kiroku_core::admin::serve_grpc(
        <AccountServiceServer<Accounts> as tonic::server::NamedService>::NAME,
        tonic::service::Routes::new(AccountServiceServer::new(accounts)),
        tonic::transport::Server::builder(),
        grpc,
        admin,
        ready,
        kiroku_core::admin::Reflection::On,
        shutdown,
    )
    .await?;
    db.close().await;
    Ok(())
}
