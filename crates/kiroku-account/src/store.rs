//! The account tables' row types and the lookups every area of the service shares.

use chrono::{DateTime, Utc};
use kiroku_proto::account::v1 as pb;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::auth::Role;
use crate::error::{AccountError, Result};

use crate::service::timestamp;

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct UserRow {
    pub(crate) id: Uuid,
    pub(crate) tenant_id: Uuid,
    pub(crate) email: String,
    pub(crate) display_name: String,
    pub(crate) role: i16,
    pub(crate) password_hash: String,
    pub(crate) disabled: bool,
    pub(crate) totp_secret: Option<Vec<u8>>,
    pub(crate) totp_enabled: bool,
    pub(crate) totp_last_step: Option<i64>,
    pub(crate) created_at: DateTime<Utc>,
}

pub(crate) const USER_COLUMNS: &str = "id, tenant_id, email, display_name, role, password_hash, disabled, \
     totp_secret, totp_enabled, totp_last_step, created_at";

impl UserRow {
    pub(crate) fn role(&self) -> Result<Role> {
        Role::from_db(self.role)
            .ok_or_else(|| AccountError::Internal("bad role in database".into()))
    }
    pub(crate) fn to_proto(&self) -> pb::User {
        pb::User {
            user_id: self.id.to_string(),
            email: self.email.clone(),
            display_name: self.display_name.clone(),
            role: Role::from_db(self.role)
                .map(|r| r.to_proto())
                .unwrap_or_default() as i32,
            disabled: self.disabled,
            mfa_enrolled: self.totp_enabled,
            created_at: Some(timestamp(self.created_at)),
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) created_by: Uuid,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) revoked_at: Option<DateTime<Utc>>,
}

pub(crate) const API_KEY_COLUMNS: &str = "id, name, scopes, created_by, created_at, revoked_at";

impl ApiKeyRow {
    pub(crate) fn to_proto(&self) -> pb::ApiKey {
        pb::ApiKey {
            key_id: self.id.to_string(),
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            created_at: Some(timestamp(self.created_at)),
            revoked_at: self.revoked_at.map(timestamp),
            created_by: self.created_by.to_string(),
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RefreshRow {
    pub(crate) id: Uuid,
    pub(crate) user_id: Uuid,
    pub(crate) family_id: Uuid,
    pub(crate) mfa: bool,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) used_at: Option<DateTime<Utc>>,
    pub(crate) revoked_at: Option<DateTime<Utc>>,
}

pub(crate) async fn user_by_id(
    tx: &mut Transaction<'static, Postgres>,
    id: Uuid,
) -> Result<UserRow> {
    sqlx::query_as::<_, UserRow>(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(AccountError::NotFound("user"))
}

pub(crate) async fn tenant_slug(
    tx: &mut Transaction<'static, Postgres>,
    tenant: Uuid,
) -> Result<String> {
    sqlx::query_scalar("SELECT slug FROM tenants WHERE id = $1")
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(AccountError::NotFound("tenant"))
}
