//! A service's own PostgreSQL schema: migrations (run as the schema owner) and the
//! service's pool, which connects as a non-owner role so row-level security binds it
//! (control 13.1.3). Every tenant's data is reached through [`Db::tenant_tx`], which
//! sets the tenant for that one transaction (`SET LOCAL` semantics). The migrations of
//! each service enable and force RLS on every table and grant its role the rights it
//! needs (the account service: read-write; the audit service: insert and select only).

use std::str::FromStr as _;

use anyhow::Context as _;
use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Where the account data lives.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Owner (or superuser) connection: creates the database, schema and role, runs
    /// migrations at start-up. Not used after start-up.
    pub owner_url: String,
    /// The service's own connection as its role. When unset, `owner_url` with the user
    /// name replaced (enough where PostgreSQL trusts local connections).
    pub app_url: Option<String>,
    /// The non-owner role the service connects as (created when missing).
    pub app_role: String,
    /// Schema of the account tables (tests use one schema each).
    pub schema: String,
    pub max_connections: u32,
}

impl DatabaseConfig {
    pub fn new(
        owner_url: impl Into<String>,
        schema: impl Into<String>,
        app_role: impl Into<String>,
    ) -> Self {
        Self {
            owner_url: owner_url.into(),
            app_url: None,
            app_role: app_role.into(),
            schema: schema.into(),
            max_connections: 8,
        }
    }
}

/// A SQL error code that means "someone else created it first".
fn already_exists(error: &sqlx::Error) -> bool {
    matches!(
        error.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42P04" | "42710" | "23505" | "42P06")
    )
}

/// Creates the database named in `url` when it does not exist (connecting to the
/// `postgres` database to do so).
async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url).context("database url")?;
    let name = options.get_database().unwrap_or("postgres").to_string();
    if options.connect().await.is_ok() {
        return Ok(());
    }
    let maintenance = options.clone().database("postgres");
    let mut connection = maintenance
        .connect()
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", crate::redact_url(url)))?;
    let create = format!("CREATE DATABASE \"{}\"", name.replace('"', ""));
    match sqlx::query(&create).execute(&mut connection).await {
        Ok(_) => Ok(()),
        Err(error) if already_exists(&error) => Ok(()),
        Err(error) => Err(error).with_context(|| format!("creating database {name}")),
    }
}

fn check_schema_name(schema: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !schema.is_empty()
            && schema.len() <= 48
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "schema {schema:?}: use lowercase letters, digits and '_'"
    );
    Ok(())
}

/// Creates the database, role and schema as needed and applies `migrator`.
pub async fn migrate(
    config: &DatabaseConfig,
    migrator: &sqlx::migrate::Migrator,
) -> anyhow::Result<()> {
    check_schema_name(&config.schema)?;
    ensure_database(&config.owner_url).await?;
    let options = PgConnectOptions::from_str(&config.owner_url)?;
    let mut connection = options
        .connect()
        .await
        .context("connecting as the schema owner")?;
    for statement in [
        format!(
            "CREATE ROLE \"{}\" LOGIN NOSUPERUSER NOBYPASSRLS",
            config.app_role.replace('"', "")
        ),
        format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", config.schema),
    ] {
        match sqlx::query(&statement).execute(&mut connection).await {
            Ok(_) => {}
            Err(error) if already_exists(&error) => {}
            Err(error) => return Err(error).with_context(|| statement.clone()),
        }
    }
    drop(connection);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("search_path", config.schema.as_str())]))
        .await?;
    migrator
        .run(&pool)
        .await
        .with_context(|| format!("migrating schema {}", config.schema))?;
    pool.close().await;
    Ok(())
}

/// The service's connection pool (as its role).
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<Self> {
        check_schema_name(&config.schema)?;
        let options = match &config.app_url {
            Some(url) => PgConnectOptions::from_str(url)?,
            None => PgConnectOptions::from_str(&config.owner_url)?.username(&config.app_role),
        };
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options.options([("search_path", config.schema.as_str())]))
            .await
            .with_context(|| format!("connecting to PostgreSQL as {}", config.app_role))?;
        Ok(Self { pool })
    }

    /// A transaction that sees only `tenant`'s rows (row-level security), set with
    /// `set_config(..., is_local => true)`: `SET LOCAL` with a bound parameter.
    pub async fn tenant_tx(&self, tenant: Uuid) -> sqlx::Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('kiroku.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// A transaction acting for the service operator across tenants (`kiroku.operator`
    /// set, no tenant): only tables whose policies admit `kiroku_operator()` open up to
    /// it (the audit service's notices); every tenant table still shows nothing.
    pub async fn operator_tx(&self) -> sqlx::Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('kiroku.operator', 'on', true)")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// The tenant id for a slug (through the owner's `SECURITY DEFINER` function: the
    /// service role cannot list tenants).
    pub async fn tenant_for_slug(&self, slug: &str) -> sqlx::Result<Option<Uuid>> {
        sqlx::query_scalar("SELECT kiroku_tenant_id_for_slug($1)")
            .bind(slug)
            .fetch_one(&self.pool)
            .await
    }

    /// Whether PostgreSQL answers (readiness).
    pub async fn is_ready(&self) -> bool {
        let ready = sqlx::query("SELECT 1").execute(&self.pool).await.is_ok();
        if !ready {
            crate::metrics::metrics().db_errors.inc();
        }
        ready
    }

    /// Sets `kiroku_db_pool_connections` from the pool now.
    pub fn record_pool_metrics(&self) {
        let (size, idle) = (self.pool.size() as usize, self.pool.num_idle());
        crate::metrics::metrics().db_pool(idle, size.saturating_sub(idle));
    }

    /// The pool without a tenant: tenant tables show nothing through it. For the
    /// owner's `SECURITY DEFINER` directory functions, and for tests that show the
    /// isolation.
    pub fn pool_without_tenant(&self) -> &PgPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
