//! Users of a tenant: passwords, invitations, roles, disabling and deleting, and the
//! operator's notice recipients.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use kiroku_core::audit::{Actor, AuditRecord, actions};
use kiroku_proto::account::v1 as pb;
use sqlx::{Postgres, Transaction};
use tracing::info;
use uuid::Uuid;

use crate::auth::{Principal, RevocationEvent, Role};
use crate::error::{AccountError, Result};
use crate::tokens::{self, secret_hash, secret_tenant};

use super::*;

impl State {
    /// The signed-in user's current password, counted against the same per-account
    /// sign-in throttle as `Login`: a stolen access token cannot be used to guess the
    /// password through ChangePassword or EnrollMfa.
    pub(super) async fn check_current_password(
        &self,
        caller: &Principal,
        user: &UserRow,
        password: String,
    ) -> Result<()> {
        let slug = &caller.tenant_slug;
        if let Err(throttled) = self.throttle.reserve_login(slug, &user.email, None).await? {
            return Err(AccountError::Throttled {
                message: "too many wrong passwords".into(),
                retry_after: throttled.0,
            });
        }
        if !verify_password(password, user.password_hash.clone()).await? {
            return Err(AccountError::Denied("current password is wrong".into()));
        }
        self.throttle.succeeded(slug, &user.email, None).await?;
        Ok(())
    }

    pub(super) async fn change_password(
        &self,
        caller: Principal,
        request: pb::ChangePasswordRequest,
    ) -> Result<pb::TokenPair> {
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let user = user_by_id(&mut tx, caller.subject).await?;
        self.check_current_password(&caller, &user, request.current_password)
            .await?;
        check_password(&request.new_password, &user.email)?;
        let hash = hash_password(request.new_password).await?;
        sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(user.id)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        // Every session ends, this one included; this one continues with a new pair.
        let families = Self::revoke_user_families(&mut tx, user.id).await?;
        let tokens = self
            .issue(
                &mut tx,
                &user,
                &caller.tenant_slug,
                caller.mfa,
                Uuid::new_v4(),
            )
            .await?;
        tx.commit().await?;
        self.revoke_sessions(caller.tenant_id, &families).await?;
        self.audit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::PASSWORD_CHANGED,
            )
            .detail("sessions_revoked", families.len().to_string()),
        );
        Ok(tokens)
    }

    pub(super) async fn invite(
        &self,
        caller: Principal,
        request: pb::InviteUserRequest,
    ) -> Result<pb::InviteUserResponse> {
        let email = check_email(&request.email)?;
        let role = parse_role(request.role)?;
        if role > caller.role {
            return Err(AccountError::Denied(
                "cannot grant a role above your own".into(),
            ));
        }
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let exists: Option<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(AccountError::Exists(format!(
                "{email} is already a user of this tenant"
            )));
        }
        let token = tokens::new_secret("inv", caller.tenant_id)
            .map_err(|e| AccountError::Internal(e.to_string()))?;
        let id = Uuid::new_v4();
        let expires = SystemTime::now() + self.lifetimes.invitation;
        sqlx::query(
            "INSERT INTO invitations (id, tenant_id, email, role, token_hash, invited_by, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(caller.tenant_id)
        .bind(&email)
        .bind(role.to_db())
        .bind(secret_hash(&token))
        .bind(caller.subject)
        .bind(DateTime::<Utc>::from(expires))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.audit(
            AuditRecord::new(caller.tenant_token(), caller.actor(), actions::USER_INVITED)
                .target(format!("invitation/{id}"))
                .detail("role", role.as_str()),
        );
        Ok(pb::InviteUserResponse {
            invitation_id: id.to_string(),
            invitation_token: token,
            expires_at: Some(system_timestamp(expires)),
        })
    }

    pub(super) async fn accept_invitation(
        &self,
        request: pb::AcceptInvitationRequest,
    ) -> Result<pb::TokenPair> {
        let refused =
            || AccountError::Unauthenticated("invitation invalid, used or expired".into());
        let tenant = secret_tenant("inv", &request.invitation_token).ok_or_else(refused)?;
        let display_name = check_text("display name", &request.display_name, 200)?;
        let mut tx = self.db.tenant_tx(tenant).await?;
        let invitation: Option<(Uuid, String, i16)> = sqlx::query_as(
            "SELECT id, email, role FROM invitations
             WHERE token_hash = $1 AND accepted_at IS NULL AND expires_at > now() FOR UPDATE",
        )
        .bind(secret_hash(&request.invitation_token))
        .fetch_optional(&mut *tx)
        .await?;
        let (id, email, role) = invitation.ok_or_else(refused)?;
        check_password(&request.password, &email)?;
        let hash = hash_password(request.password).await?;
        let user = sqlx::query_as::<_, UserRow>(&format!(
            "INSERT INTO users (id, tenant_id, email, display_name, role, password_hash)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {USER_COLUMNS}"
        ))
        .bind(Uuid::new_v4())
        .bind(tenant)
        .bind(&email)
        .bind(&display_name)
        .bind(role)
        .bind(hash)
        .fetch_one(&mut *tx)
        .await
        .map_err(AccountError::from)
        .map_err(|e| {
            if e.is_unique_violation() {
                AccountError::Exists(format!("{email} is already a user of this tenant"))
            } else {
                e
            }
        })?;
        sqlx::query("UPDATE invitations SET accepted_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let slug = tenant_slug(&mut tx, tenant).await?;
        let tokens = self
            .issue(&mut tx, &user, &slug, false, Uuid::new_v4())
            .await?;
        tx.commit().await?;
        self.audit(
            AuditRecord::new(
                tenant.simple(),
                Actor::user(user.id).named(user.email.clone()),
                actions::USER_JOINED,
            )
            .target(format!("invitation/{id}")),
        );
        Ok(tokens)
    }

    pub(super) async fn list_users(&self, caller: Principal) -> Result<pb::ListUsersResponse> {
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let users = sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, email"
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(pb::ListUsersResponse {
            users: users.iter().map(UserRow::to_proto).collect(),
        })
    }

    /// Every active admin and owner address of the tenants asked for (ids or slugs;
    /// none: all). An unknown tenant is `NOT_FOUND`, so a typo never mails nobody.
    pub(super) async fn notice_recipients(
        &self,
        request: pb::ListNoticeRecipientsRequest,
    ) -> Result<pb::ListNoticeRecipientsResponse> {
        let directory: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, slug FROM kiroku_tenant_directory()")
                .fetch_all(self.db.pool_without_tenant())
                .await?;
        let mut wanted = Vec::new();
        for name in &request.tenants {
            let name = name.trim();
            let found = directory
                .iter()
                .find(|(id, slug)| slug == name || id.to_string() == name)
                .ok_or(AccountError::NotFound("tenant"))?;
            if !wanted.contains(found) {
                wanted.push(found.clone());
            }
        }
        if request.tenants.is_empty() {
            wanted = directory;
        }
        let mut tenants = Vec::with_capacity(wanted.len());
        for (id, slug) in wanted {
            let mut tx = self.db.tenant_tx(id).await?;
            let emails: Vec<String> = sqlx::query_scalar(
                "SELECT email FROM users WHERE role >= $1 AND NOT disabled ORDER BY email",
            )
            .bind(Role::Admin.to_db())
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            tenants.push(pb::TenantRecipients {
                tenant_id: id.to_string(),
                tenant_slug: slug,
                emails,
            });
        }
        Ok(pb::ListNoticeRecipientsResponse { tenants })
    }

    /// Loads the target of an admin action on a user and applies the rules every such
    /// action shares: not yourself, and owners only by owners.
    pub(super) async fn admin_target(
        tx: &mut Transaction<'static, Postgres>,
        caller: &Principal,
        user_id: &str,
    ) -> Result<UserRow> {
        let id = parse_id("user", user_id)?;
        let user = user_by_id(tx, id).await?;
        if user.id == caller.subject {
            return Err(AccountError::Precondition(
                "you cannot do this to your own user".into(),
            ));
        }
        if user.role()? == Role::Owner && caller.role != Role::Owner {
            return Err(AccountError::Denied(
                "only an owner can change an owner".into(),
            ));
        }
        Ok(user)
    }

    pub(super) async fn end_user(
        &self,
        caller: Principal,
        request: pb::UserRef,
        delete: bool,
    ) -> Result<pb::User> {
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let mut user = Self::admin_target(&mut tx, &caller, &request.user_id).await?;
        let families = Self::revoke_user_families(&mut tx, user.id).await?;
        if delete {
            sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(user.id)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query("UPDATE users SET disabled = true WHERE id = $1")
                .bind(user.id)
                .execute(&mut *tx)
                .await?;
            user.disabled = true;
        }
        tx.commit().await?;
        // Every token of the user is refused from now on, and live streams end.
        self.revocations
            .revoke_user(caller.tenant_id, user.id)
            .await?;
        self.broadcast(RevocationEvent {
            tenant_id: caller.tenant_id,
            user_id: Some(user.id),
            session_id: None,
        })
        .await;
        info!(user = %user.id, delete, sessions = families.len(), "user access ended");
        self.audit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                if delete {
                    actions::USER_DELETED
                } else {
                    actions::USER_DISABLED
                },
            )
            .target(format!("user/{}", user.id)),
        );
        Ok(user.to_proto())
    }

    pub(super) async fn set_role(
        &self,
        caller: Principal,
        request: pb::SetRoleRequest,
    ) -> Result<pb::User> {
        let role = parse_role(request.role)?;
        if role > caller.role {
            return Err(AccountError::Denied(
                "cannot grant a role above your own".into(),
            ));
        }
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let mut user = Self::admin_target(&mut tx, &caller, &request.user_id).await?;
        let old = user.role()?;
        sqlx::query("UPDATE users SET role = $2 WHERE id = $1")
            .bind(user.id)
            .bind(role.to_db())
            .execute(&mut *tx)
            .await?;
        // The new role applies at once: the user's sessions end and sign-in again.
        let families = Self::revoke_user_families(&mut tx, user.id).await?;
        tx.commit().await?;
        self.revoke_sessions(caller.tenant_id, &families).await?;
        user.role = role.to_db();
        self.audit(
            AuditRecord::new(caller.tenant_token(), caller.actor(), actions::ROLE_CHANGED)
                .target(format!("user/{}", user.id))
                .detail("from", old.as_str())
                .detail("to", role.as_str()),
        );
        Ok(user.to_proto())
    }
}
