//! Tenant registration (a new tenant with its owner).

use std::net::IpAddr;

use kiroku_core::audit::{Actor, AuditRecord, actions};
use kiroku_proto::account::v1 as pb;
use tracing::info;
use uuid::Uuid;

use crate::auth::Role;
use crate::error::{AccountError, Result};

use super::*;

impl State {
    pub(super) async fn register(
        &self,
        request: pb::RegisterRequest,
        ip: Option<IpAddr>,
    ) -> Result<pb::RegisterResponse> {
        let slug = check_slug(&request.tenant_slug)?;
        let name = check_text("tenant name", &request.tenant_name, 200)?;
        let email = check_email(&request.email)?;
        let display_name = check_text("display name", &request.display_name, 200)?;
        check_password(&request.password, &email)?;
        if let Err(throttled) = self.throttle.reserve_registration(ip).await? {
            return Err(AccountError::Throttled {
                message: "too many registrations from this address".into(),
                retry_after: throttled.0,
            });
        }
        let hash = hash_password(request.password).await?;
        let tenant = Uuid::new_v4();
        let mut tx = self.db.tenant_tx(tenant).await?;
        let inserted = sqlx::query("INSERT INTO tenants (id, slug, name) VALUES ($1, $2, $3)")
            .bind(tenant)
            .bind(&slug)
            .bind(&name)
            .execute(&mut *tx)
            .await
            .map_err(AccountError::from);
        if let Err(error) = inserted {
            return Err(if error.is_unique_violation() {
                AccountError::Exists(format!("tenant slug {slug:?} is taken"))
            } else {
                error
            });
        }
        let user = sqlx::query_as::<_, UserRow>(&format!(
            "INSERT INTO users (id, tenant_id, email, display_name, role, password_hash)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {USER_COLUMNS}"
        ))
        .bind(Uuid::new_v4())
        .bind(tenant)
        .bind(&email)
        .bind(&display_name)
        .bind(Role::Owner.to_db())
        .bind(hash)
        .fetch_one(&mut *tx)
        .await?;
        let tokens = self
            .issue(&mut tx, &user, &slug, false, Uuid::new_v4())
            .await?;
        tx.commit().await?;
        info!(tenant = %tenant, slug, "tenant registered");
        self.audit(
            AuditRecord::new(
                tenant.simple(),
                Actor::user(user.id).named(user.email.clone()),
                actions::TENANT_REGISTERED,
            )
            .target(format!("tenant/{tenant}"))
            .source_ip(ip.map(|ip| ip.to_string()).unwrap_or_default()),
        );
        Ok(pb::RegisterResponse {
            tenant_id: tenant.to_string(),
            user_id: user.id.to_string(),
            tokens: Some(tokens),
        })
    }
}
