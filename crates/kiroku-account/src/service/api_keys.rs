//! Tenant API keys: create, revoke, list, and resolving a key to its principal.

use kiroku_core::audit::{AuditRecord, actions};
use kiroku_proto::account::v1 as pb;
use uuid::Uuid;

use crate::auth::{Principal, RevocationEvent, Role, SCOPES};
use crate::error::{AccountError, Result};
use crate::tokens::{self, secret_hash, secret_tenant};

use super::*;

impl State {
    pub(super) async fn api_key_principal(&self, key: &str) -> Result<Principal> {
        let refused = || AccountError::Unauthenticated("invalid or revoked API key".into());
        let tenant = secret_tenant("kk", key).ok_or_else(refused)?;
        let mut tx = self.db.tenant_tx(tenant).await?;
        let row: Option<(Uuid, Vec<String>, String)> = sqlx::query_as(
            "SELECT id, scopes, name FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(secret_hash(key))
        .fetch_optional(&mut *tx)
        .await?;
        let (id, scopes, key_name) = row.ok_or_else(refused)?;
        let slug = tenant_slug(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(Principal {
            tenant_id: tenant,
            tenant_slug: slug,
            subject: id,
            role: Role::Member,
            mfa: false,
            session: None,
            api_key: true,
            scopes,
            email: String::new(),
            key_name,
        })
    }

    pub(super) async fn create_api_key(
        &self,
        caller: Principal,
        request: pb::CreateApiKeyRequest,
    ) -> Result<pb::CreateApiKeyResponse> {
        let name = check_text("key name", &request.name, 200)?;
        let mut scopes = request.scopes.clone();
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() || scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
            return Err(AccountError::Invalid(format!(
                "scopes must be one or more of {}",
                SCOPES.join(", ")
            )));
        }
        let key = tokens::new_secret("kk", caller.tenant_id)
            .map_err(|e| AccountError::Internal(e.to_string()))?;
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let row = sqlx::query_as::<_, ApiKeyRow>(&format!(
            "INSERT INTO api_keys (id, tenant_id, name, scopes, key_hash, created_by)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {API_KEY_COLUMNS}"
        ))
        .bind(Uuid::new_v4())
        .bind(caller.tenant_id)
        .bind(&name)
        .bind(&scopes)
        .bind(secret_hash(&key))
        .bind(caller.subject)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.audit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::APIKEY_CREATED,
            )
            .target(format!("apikey/{}", row.id))
            .detail("scopes", scopes.join(",")),
        );
        Ok(pb::CreateApiKeyResponse {
            key: Some(row.to_proto()),
            api_key: key,
        })
    }

    pub(super) async fn revoke_api_key(
        &self,
        caller: Principal,
        request: pb::RevokeApiKeyRequest,
    ) -> Result<pb::ApiKey> {
        let id = parse_id("api key", &request.key_id)?;
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let hash: Option<Vec<u8>> = sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING key_hash",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let hash = hash.ok_or(AccountError::NotFound("api key"))?;
        let row = sqlx::query_as::<_, ApiKeyRow>(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.revocations
            .revoke_api_key(caller.tenant_id, id)
            .await?;
        self.revocations.forget_api_key(&hash).await?;
        self.broadcast(RevocationEvent {
            tenant_id: caller.tenant_id,
            user_id: Some(id),
            session_id: None,
        })
        .await;
        self.audit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::APIKEY_REVOKED,
            )
            .target(format!("apikey/{id}")),
        );
        Ok(row.to_proto())
    }

    pub(super) async fn list_api_keys(&self, caller: Principal) -> Result<pb::ListApiKeysResponse> {
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let rows = sqlx::query_as::<_, ApiKeyRow>(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at"
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(pb::ListApiKeysResponse {
            keys: rows.iter().map(ApiKeyRow::to_proto).collect(),
        })
    }
}
