//! The storage service (`kiroku serve storage`): the minutes. A durable JetStream
//! consumer of `TRANSCRIPTS` persists every final exactly once (a final's identity is its
//! session and result seq), whether or not its client is still connected; meetings,
//! their segments and labels live in the service's own PostgreSQL schema under forced
//! row-level security, sealed with the tenant's data key ([`crypto`]); users search,
//! label and export them through `kiroku.storage.v1.Storage`.
//!
//! Also here: tenant export, import and crypto-shredding erasure ([`bundle`]),
//! master-key rotation, and `kiroku-bench-storage` (`make bench-storage`).

pub mod backup;
pub mod bundle;
pub mod crypto;
pub mod error;
pub mod search;
mod service;
pub mod settings;
pub mod store;

use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream;
use kiroku_core::audit::AuditEmitter;
use kiroku_core::db::{DatabaseConfig, Db};
use kiroku_core::nats::Layout;
use kiroku_proto::events::v1::TranscriptResult;
use kiroku_proto::storage::v1::storage_server::StorageServer;
use prost::Message as _;
use tokio::net::TcpListener;
use tracing::info;
use uuid::Uuid;

pub use service::{METHODS, StorageService, transcript};
pub use settings::StorageSettings;
pub use store::Keys;

/// Default gRPC address of the storage service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50055";
/// Default admin HTTP address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9468";
/// The role the storage service connects as.
pub const APP_ROLE: &str = "kiroku_storage";
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The largest bundle file `ImportTenant` takes (one meeting's JSON; an hour of speech
/// with word timings is about 1 MiB).
pub const MAX_BUNDLE_FILE_BYTES: usize = 64 << 20;
/// The largest total of meeting files one `ImportTenant` takes (spooled to disk before
/// the import; a tenant with more imports in parts).
pub const MAX_BUNDLE_BYTES: u64 = 8 << 30;
/// The durable consumer through which storage replicas share `TRANSCRIPTS`.
pub const CONSUMER: &str = "storage";

/// How long `ImportTenant` waits for the client's next file (`--import-idle-timeout-s`).
pub const DEFAULT_IMPORT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub database: DatabaseConfig,
    pub migrate: bool,
    pub nats_url: String,
    pub layout: Layout,
    /// Replication and retention of the streams this service creates if missing.
    pub retention: kiroku_core::nats::Retention,
    pub redis_url: String,
    pub account_url: String,
    /// Wraps the tenants' data keys.
    pub keys: Arc<dyn crypto::KeyProvider>,
    /// The operator token (master-key rotation).
    pub operator: kiroku_auth::auth::OperatorToken,
    /// How long `ImportTenant` waits for the client's next file before abandoning the
    /// import (`KIROKU_IMPORT_IDLE_TIMEOUT_S`).
    pub import_idle_timeout: std::time::Duration,
}

impl StorageConfig {
    pub fn new(
        owner_url: &str,
        schema: &str,
        account_url: &str,
        keys: Arc<dyn crypto::KeyProvider>,
    ) -> Self {
        Self {
            database: DatabaseConfig::new(owner_url, schema, APP_ROLE),
            migrate: true,
            nats_url: kiroku_core::nats::DEFAULT_NATS_URL.into(),
            layout: Layout::default(),
            retention: kiroku_core::nats::Retention::default(),
            redis_url: kiroku_auth::DEFAULT_REDIS_URL.into(),
            account_url: account_url.into(),
            keys,
            operator: kiroku_auth::auth::OperatorToken::default(),
            import_idle_timeout: DEFAULT_IMPORT_IDLE_TIMEOUT,
        }
    }
}

/// Persists one `TRANSCRIPTS` message; `Err` leaves it unacknowledged (redelivered).
async fn persist(
    db: &Db,
    keys: &Keys,
    message: &TranscriptResult,
) -> Result<(), store::StoreError> {
    let tenant = Uuid::try_parse(&message.tenant_id).map_err(|_| {
        sqlx::Error::Protocol(format!("tenant id {:?} is not a uuid", message.tenant_id))
    })?;
    if let Some(result) = &message.result
        && result.is_final
        && let Some(segment) = &result.segment
    {
        let meeting = if message.meeting_id.trim().is_empty() {
            message.session_id.as_str()
        } else {
            message.meeting_id.trim()
        };
        store::persist_final(
            db,
            keys,
            &store::Final {
                tenant,
                session_id: &message.session_id,
                meeting_id: meeting,
                result_seq: result.result_seq,
                language: &result.language,
                segment,
            },
        )
        .await?;
    }
    if message.session_closed {
        store::close_session(db, tenant, &message.session_id).await?;
    }
    Ok(())
}

/// Stores finals from `TRANSCRIPTS` until the task is dropped; each message is
/// acknowledged only after its row is committed.
async fn consume(db: Db, keys: Keys, js: jetstream::Context, layout: Layout) -> anyhow::Result<()> {
    use kiroku_core::nats::Handled;
    let stream = layout.transcripts_stream();
    kiroku_core::nats::consume_durable(&js, &layout, &stream, CONSUMER, |payload| {
        let (db, keys) = (db.clone(), keys.clone());
        async move {
            let result = match TranscriptResult::decode(payload.as_ref()) {
                Ok(result) => result,
                Err(error) => return Handled::Invalid(format!("undecodable transcript: {error}")),
            };
            match persist(&db, &keys, &result).await {
                Ok(()) => Handled::Done,
                Err(store::StoreError::Database(error))
                    if kiroku_core::nats::is_permanent_db_error(&error) =>
                {
                    Handled::Invalid(error.to_string())
                }
                Err(error) => Handled::Retry(error.to_string()),
            }
        }
    })
    .await
}

impl StorageConfig {
    /// The settings' ranges (`docs/configuration.md` lists them with their defaults).
    pub fn validate(&self) -> Result<(), kiroku_core::settings::InvalidSetting> {
        kiroku_core::settings::seconds_within(
            "--import-idle-timeout-s / KIROKU_IMPORT_IDLE_TIMEOUT_S",
            self.import_idle_timeout,
            1.0..=3600.0,
        )
    }
}

pub async fn serve(
    config: StorageConfig,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    if config.migrate {
        kiroku_core::db::migrate(&config.database, &MIGRATOR).await?;
    }
    let db = Db::connect(&config.database).await?;
    let keys = Keys::new(config.keys.clone());
    let checker = kiroku_auth::checker::Checker::for_service(
        &config.account_url,
        &config.redis_url,
        &config.layout,
    )
    .await?;
    let (nats, js) = kiroku_core::nats::connect_and_ensure(
        &config.nats_url,
        "kiroku-storage",
        &config.layout,
        &config.retention,
    )
    .await?;
    let consumer = tokio::spawn(consume(
        db.clone(),
        keys.clone(),
        js.clone(),
        config.layout.clone(),
    ));
    info!(
        master_key = config.keys.key_id(),
        "storage consumer started"
    );

    let ready = kiroku_core::admin::db_and_nats_readiness(db.clone(), nats, Some(CONSUMER));
    let erasures = js
        .get_key_value(config.layout.erasures_bucket())
        .await
        .context("opening the erasure register")?;
    let checkpoints = js
        .get_key_value(config.layout.checkpoints_bucket())
        .await
        .context("opening the session checkpoints")?;
    let service = StorageService::new(
        db.clone(),
        keys,
        checker,
        AuditEmitter::new(js.clone(), config.layout.clone()),
        config
            .operator
            .clone()
            .audited(AuditEmitter::new(js.clone(), config.layout.clone())),
        service::NatsParts {
            js,
            layout: config.layout.clone(),
            erasures,
            checkpoints,
        },
        config.import_idle_timeout,
    );
    kiroku_core::admin::serve_grpc(
        <StorageServer<StorageService> as tonic::server::NamedService>::NAME,
        tonic::service::Routes::new(
            StorageServer::new(service).max_decoding_message_size(MAX_BUNDLE_FILE_BYTES),
        ),
        tonic::transport::Server::builder(),
        grpc,
        admin,
        ready,
        kiroku_core::admin::Reflection::On,
        shutdown,
    )
    .await?;
    consumer.abort();
    db.close().await;
    Ok(())
}
