//! The account schema: its migrations and role. The connection plumbing (owner-run
//! migrations, the non-owner pool, per-transaction tenant) is `kiroku_core::db`.

pub use kiroku_core::db::{DatabaseConfig, Db};

/// The role the account service connects as (created by the migrating owner when
/// missing; the migrations grant it read-write rights on the account tables).
pub const APP_ROLE: &str = "kiroku_account";

/// The account schema's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A database config for the account schema.
pub fn config(owner_url: &str, schema: &str) -> DatabaseConfig {
    DatabaseConfig::new(owner_url, schema, APP_ROLE)
}
