//! The audit service (`kiroku serve audit`): a durable JetStream consumer of `AUDIT`
//! stores every event exactly once in an append-only, per-tenant hash chain
//! ([`chain`]) in its own PostgreSQL schema, and tenant admins read, verify and export
//! it through `kiroku.audit.v1.AuditService`, timestamps in JST by default.
//!
//! The same service shows each tenant its usage (streams, audio minutes, errors,
//! latency per day, from the log) and carries the operator's notices ([`notice`]): listed
//! through `kiroku.audit.v1.NoticeService` and mailed over SMTP to every tenant admin.

pub mod anchor;
pub mod chain;
mod error;
pub mod notice;
pub mod render;
mod service;
pub mod settings;
pub mod store;

use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream;
use kiroku_core::audit::AuditEmitter;
use kiroku_core::db::{DatabaseConfig, Db};
use kiroku_core::nats::Layout;
use kiroku_proto::account::v1::account_service_client::AccountServiceClient;
use kiroku_proto::audit::v1::audit_service_server::AuditServiceServer;
use kiroku_proto::audit::v1::notice_service_server::NoticeServiceServer;
use kiroku_proto::events::v1::AuditEvent;
use prost::Message as _;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use service::{Audit, MAX_EXPORT, MAX_PAGE, METHODS, NOTICE_METHODS, Notices};
pub use settings::AuditSettings;

/// Default gRPC address of the audit service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50054";
/// Default admin HTTP address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9467";
/// The role the audit service connects as: INSERT and SELECT on the log, nothing more.
pub const APP_ROLE: &str = "kiroku_audit";
/// The audit schema's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The durable consumer through which audit replicas share `AUDIT`.
pub const CONSUMER: &str = "audit";

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub database: DatabaseConfig,
    pub migrate: bool,
    pub nats_url: String,
    pub layout: Layout,
    /// Replication and retention of the streams this service creates if missing.
    pub retention: kiroku_core::nats::Retention,
    pub redis_url: String,
    pub account_url: String,
    /// The operator token: publishes notices, and asks the account service for their
    /// recipients.
    pub operator: kiroku_auth::auth::OperatorToken,
    /// Where notice mail goes; without it notices are stored and listed, and their
    /// deliveries wait (pending) until a server is configured.
    pub smtp: Option<notice::SmtpConfig>,
    /// Signs the chain heads anchored outside the database ([`anchor`]); without it
    /// they are recorded unsigned.
    pub anchor_key: Option<anchor::AnchorKey>,
}

impl AuditConfig {
    pub fn new(owner_url: &str, schema: &str, account_url: &str) -> Self {
        Self {
            database: DatabaseConfig::new(owner_url, schema, APP_ROLE),
            migrate: true,
            nats_url: kiroku_core::nats::DEFAULT_NATS_URL.into(),
            layout: Layout::default(),
            retention: kiroku_core::nats::Retention::default(),
            redis_url: kiroku_auth::DEFAULT_REDIS_URL.into(),
            account_url: account_url.into(),
            operator: kiroku_auth::auth::OperatorToken::default(),
            smtp: None,
            anchor_key: None,
        }
    }
}

/// Stores events from `AUDIT` until the task is dropped. Each message is acknowledged
/// only after its row is committed; a redelivered or re-published event is stored once
/// (the event id is unique per tenant).
async fn consume(
    db: Db,
    anchors: anchor::Anchors,
    js: jetstream::Context,
    layout: Layout,
) -> anyhow::Result<()> {
    use kiroku_core::nats::Handled;
    let stream = layout.audit_stream();
    kiroku_core::nats::consume_durable(&js, &layout, &stream, CONSUMER, |payload| {
        let (db, anchors) = (db.clone(), anchors.clone());
        async move {
            let mut event = match AuditEvent::decode(payload.as_ref()) {
                Ok(event) => event,
                Err(error) => return Handled::Invalid(format!("undecodable audit event: {error}")),
            };
            // Whoever published it, a hostile string is stored harmlessly, never
            // refused by the database and redelivered forever.
            kiroku_core::audit::sanitize(&mut event);
            match store::append(&db, &event).await {
                Ok(store::Appended::New(seq, hash)) => {
                    // The event is stored; a head left behind moves with the next one.
                    if let Ok(tenant) = uuid::Uuid::try_parse(&event.tenant_id)
                        && let Err(error) = anchors.advance(tenant, seq, &hash).await
                    {
                        warn!(%error, seq, "audit chain head not anchored");
                    }
                    Handled::Done
                }
                Ok(store::Appended::Duplicate) => Handled::Done,
                Err(error) if kiroku_core::nats::is_permanent_db_error(&error) => {
                    Handled::Invalid(error.to_string())
                }
                Err(error) => Handled::Retry(error.to_string()),
            }
        }
    })
    .await
}

pub async fn serve(
    config: AuditConfig,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if config.migrate {
        kiroku_core::db::migrate(&config.database, &MIGRATOR).await?;
    }
    let db = Db::connect(&config.database).await?;
    let checker = kiroku_auth::checker::Checker::for_service(
        &config.account_url,
        &config.redis_url,
        &config.layout,
    )
    .await?;
    let (nats, js) = kiroku_core::nats::connect_and_ensure(
        &config.nats_url,
        "kiroku-audit",
        &config.layout,
        &config.retention,
    )
    .await?;
    if config.anchor_key.is_none() {
        warn!("KIROKU_AUDIT_ANCHOR_KEY is not set: audit chain heads are anchored unsigned");
    }
    let anchors = anchor::Anchors::new(
        js.get_key_value(config.layout.audit_heads_bucket())
            .await
            .context("opening the audit chain heads")?,
        config.anchor_key.clone(),
    );
    let consumer = tokio::spawn(consume(
        db.clone(),
        anchors.clone(),
        js.clone(),
        config.layout.clone(),
    ));
    info!("audit consumer started");

    let wake = Arc::new(tokio::sync::Notify::new());
    let mailer = match &config.smtp {
        Some(smtp) => {
            let mailer = notice::Mailer::new(smtp).map_err(anyhow::Error::msg)?;
            info!(host = %smtp.host, port = smtp.port, tls = ?smtp.tls, "notice mailer started");
            Some(tokio::spawn(notice::run_mailer(
                db.clone(),
                mailer,
                wake.clone(),
            )))
        }
        None => {
            warn!(
                "SMTP is not configured (KIROKU_SMTP_HOST): notices are stored and listed, their mail waits"
            );
            None
        }
    };
    if !config.operator.is_configured() {
        warn!("KIROKU_OPERATOR_TOKEN is not set: notices cannot be published");
    }
    let accounts = AccountServiceClient::new(kiroku_core::grpc_metrics::metered(
        tonic::transport::Endpoint::from_shared(config.account_url.clone())
            .with_context(|| format!("account URL {}", config.account_url))?
            .connect_lazy(),
    ));
    let operator = config
        .operator
        .clone()
        .audited(AuditEmitter::new(js.clone(), config.layout.clone()));
    let notices = Notices::new(
        db.clone(),
        checker.clone(),
        operator.clone(),
        accounts,
        AuditEmitter::new(js, config.layout.clone()),
        wake,
    );

    let ready = kiroku_core::admin::db_and_nats_readiness(db.clone(), nats, Some(CONSUMER));
    kiroku_core::admin::serve_grpc(
        <AuditServiceServer<Audit> as tonic::server::NamedService>::NAME,
        tonic::service::Routes::new(AuditServiceServer::new(Audit::new(
            db.clone(),
            checker,
            anchors,
            operator,
        )))
        .add_service(NoticeServiceServer::new(notices)),
        tonic::transport::Server::builder(),
        grpc,
        admin,
        ready,
        kiroku_core::admin::Reflection::On,
        shutdown,
    )
    .await?;
    consumer.abort();
    if let Some(mailer) = mailer {
        mailer.abort();
    }
    db.close().await;
    Ok(())
}
