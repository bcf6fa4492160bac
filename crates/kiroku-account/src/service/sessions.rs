//! Sign-in sessions: login, refresh-token rotation, logout and revocation.

use std::net::IpAddr;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use kiroku_core::audit::{Actor, AuditRecord, actions};
use kiroku_proto::account::v1 as pb;
use sqlx::{Postgres, Transaction};
use tracing::warn;
use uuid::Uuid;

use crate::auth::{Principal, RevocationEvent};
use crate::error::{AccountError, Result};
use crate::tokens::{self, secret_hash, secret_tenant};
use crate::{password, totp};

use super::*;

impl State {
    /// Starts a new session (refresh-token family) or rotates within `family`, inside
    /// `tx`, and signs the access token.
    pub(super) async fn issue(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        user: &UserRow,
        slug: &str,
        mfa: bool,
        family: Uuid,
    ) -> Result<pb::TokenPair> {
        let role = user.role()?;
        let refresh = tokens::new_secret("rt", user.tenant_id)
            .map_err(|e| AccountError::Internal(e.to_string()))?;
        let now = SystemTime::now();
        let refresh_expires = now + self.lifetimes.refresh;
        sqlx::query(
            "INSERT INTO sessions (id, tenant_id, user_id) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(family)
        .bind(user.tenant_id)
        .bind(user.id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (id, tenant_id, user_id, family_id, token_hash, mfa, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(Uuid::new_v4())
        .bind(user.tenant_id)
        .bind(user.id)
        .bind(family)
        .bind(secret_hash(&refresh))
        .bind(mfa)
        .bind(DateTime::<Utc>::from(refresh_expires))
        .execute(&mut **tx)
        .await?;
        let claims = tokens::claims(
            user.tenant_id,
            slug,
            user.id,
            &user.email,
            role,
            mfa,
            family,
            self.lifetimes.access,
        );
        let access = self
            .signer
            .sign(&claims)
            .map_err(|e| AccountError::Internal(format!("signing: {e}")))?;
        Ok(pb::TokenPair {
            access_token: access,
            access_expires_at: Some(system_timestamp(now + self.lifetimes.access)),
            refresh_token: refresh,
            refresh_expires_at: Some(system_timestamp(refresh_expires)),
            principal: Some(Principal::from_claims(&claims).to_proto()),
        })
    }

    /// Revokes sessions in Redis and tells the gateways (their live streams end).
    pub(super) async fn revoke_sessions(&self, tenant: Uuid, sessions: &[Uuid]) -> Result<()> {
        for session in sessions {
            self.revocations.revoke_session(tenant, *session).await?;
            self.broadcast(RevocationEvent {
                tenant_id: tenant,
                user_id: None,
                session_id: Some(*session),
            })
            .await;
        }
        Ok(())
    }

    pub(super) async fn broadcast(&self, event: RevocationEvent) {
        match serde_json::to_vec(&event) {
            Ok(payload) => {
                if let Err(error) = self
                    .nats
                    .publish(self.layout.revocation_subject(), payload.into())
                    .await
                {
                    warn!(%error, "revocation event not published; gateways re-check within seconds");
                }
            }
            Err(error) => warn!(%error, "revocation event not encoded"),
        }
    }

    /// Marks every live session of `user` revoked in the database; returns them.
    pub(super) async fn revoke_user_families(
        tx: &mut Transaction<'static, Postgres>,
        user: Uuid,
    ) -> Result<Vec<Uuid>> {
        // Sessions first (the lock order refresh uses too), then their tokens.
        let families: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE sessions SET revoked_at = now()
             WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
        )
        .bind(user)
        .fetch_all(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user)
        .execute(&mut **tx)
        .await?;
        Ok(families)
    }

    /// Revokes one session and its refresh tokens (sessions first: the lock order).
    pub(super) async fn revoke_family(
        tx: &mut Transaction<'static, Postgres>,
        family: Uuid,
    ) -> Result<()> {
        sqlx::query("UPDATE sessions SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1")
            .bind(family)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Sign-in: throttle, credentials, TOTP when enrolled, then a new session.
    pub(super) async fn login(
        &self,
        request: pb::LoginRequest,
        ip: Option<IpAddr>,
    ) -> Result<pb::TokenPair> {
        // Shapes first: nothing malformed is counted, looked up or audited.
        let slug = check_slug(&request.tenant_slug)?;
        let email = check_email(&request.email)?;
        let ip_text = ip.map(|ip| ip.to_string()).unwrap_or_default();
        let tenant = self.db.tenant_for_slug(&slug).await?;
        self.reserve_sign_in(tenant, &slug, &email, ip, &ip_text)
            .await?;
        let (tenant, user) = self
            .check_credentials(tenant, &email, request.password, &ip_text)
            .await?;
        if user.disabled {
            return Err(AccountError::Denied("this user is disabled".into()));
        }
        let mut tx = self.db.tenant_tx(tenant).await?;
        let mfa = user.totp_enabled;
        if mfa {
            self.check_sign_in_totp(&mut tx, tenant, &user, &request.totp_code, &ip_text)
                .await?;
        }
        let tokens = self
            .issue(&mut tx, &user, &slug, mfa, Uuid::new_v4())
            .await?;
        tx.commit().await?;
        self.throttle.succeeded(&slug, &email, ip).await?;
        let actor = || Actor::user(user.id).named(user.email.clone());
        let mut record = AuditRecord::new(tenant.simple(), actor(), actions::LOGIN_SUCCEEDED)
            .source_ip(&ip_text);
        if mfa {
            record = record.detail("mfa", "totp");
            self.audit(
                AuditRecord::new(tenant.simple(), actor(), actions::MFA_USED).source_ip(&ip_text),
            );
        }
        self.audit(record);
        Ok(tokens)
    }

    /// Counts the attempt against the sign-in throttles; refused (and audited once per
    /// account and window) when they are spent.
    async fn reserve_sign_in(
        &self,
        tenant: Option<Uuid>,
        slug: &str,
        email: &str,
        ip: Option<IpAddr>,
        ip_text: &str,
    ) -> Result<()> {
        // Attempts on a tenant that does not exist are counted in their own bucket per
        // address: they cannot guess any real password, and must not use up the
        // address's budget for real accounts (or lock anyone out).
        let reserved = match tenant {
            Some(_) => self.throttle.reserve_login(slug, email, ip).await?,
            None => self.throttle.reserve_unknown_tenant(ip).await?,
        };
        let Err(throttled) = reserved else {
            return Ok(());
        };
        // One `login.throttled` per account and window, however many attempts.
        if let Some(tenant) = tenant
            && self
                .throttle
                .first_refusal(slug, email)
                .await
                .unwrap_or(false)
        {
            self.audit(
                AuditRecord::new(tenant.simple(), Actor::system(), actions::LOGIN_THROTTLED)
                    .target(format!("email/{email}"))
                    .failed()
                    .source_ip(ip_text),
            );
        }
        Err(AccountError::Throttled {
            message: "too many failed sign-ins".into(),
            retry_after: throttled.0,
        })
    }

    /// The tenant's user with this email and password. Unknown tenants, unknown users
    /// and wrong passwords get the same answer after the same hashing time.
    async fn check_credentials(
        &self,
        tenant: Option<Uuid>,
        email: &str,
        password: String,
        ip_text: &str,
    ) -> Result<(Uuid, UserRow)> {
        let user = match tenant {
            Some(tenant) => {
                let mut tx = self.db.tenant_tx(tenant).await?;
                let user = sqlx::query_as::<_, UserRow>(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
                ))
                .bind(email)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                user
            }
            None => None,
        };
        // Unknown users cost the same hashing time as wrong passwords.
        let stored = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| password::decoy_hash().to_string());
        let password_ok = verify_password(password, stored).await? && user.is_some();
        match (tenant, user, password_ok) {
            (Some(tenant), Some(user), true) => Ok((tenant, user)),
            (tenant, _, _) => {
                if let Some(tenant) = tenant {
                    self.audit(
                        AuditRecord::new(tenant.simple(), Actor::system(), actions::LOGIN_FAILED)
                            .target(format!("email/{email}"))
                            .failed()
                            .source_ip(ip_text)
                            .detail("reason", "bad credentials"),
                    );
                }
                Err(AccountError::Unauthenticated(
                    "invalid tenant, email or password".into(),
                ))
            }
        }
    }

    /// The enrolled user's TOTP code, used once (a concurrent sign-in with the same code
    /// loses); a refusal is audited, and the caller's `tx`, dropped, rolls back.
    async fn check_sign_in_totp(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        tenant: Uuid,
        user: &UserRow,
        code: &str,
        ip_text: &str,
    ) -> Result<()> {
        let code = code.trim();
        if code.is_empty() {
            return Err(AccountError::Unauthenticated(
                "totp code required: pass the 6-digit code of your authenticator".into(),
            ));
        }
        let secret = user.totp_secret.clone().unwrap_or_default();
        let accepted = match totp::verify(&secret, code, tokens::unix_now(), user.totp_last_step) {
            Some(step) => {
                sqlx::query(
                    "UPDATE users SET totp_last_step = $2
                     WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
                )
                .bind(user.id)
                .bind(step)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                    == 1
            }
            None => false,
        };
        if accepted {
            return Ok(());
        }
        self.audit(
            AuditRecord::new(
                tenant.simple(),
                Actor::user(user.id).named(user.email.clone()),
                actions::MFA_FAILED,
            )
            .failed()
            .source_ip(ip_text),
        );
        Err(AccountError::Unauthenticated(
            "totp code wrong, expired or already used".into(),
        ))
    }

    pub(super) async fn refresh(&self, request: pb::RefreshRequest) -> Result<pb::TokenPair> {
        let refused =
            || AccountError::Unauthenticated("refresh token invalid, expired or revoked".into());
        let tenant = secret_tenant("rt", &request.refresh_token).ok_or_else(refused)?;
        let mut tx = self.db.tenant_tx(tenant).await?;
        let hash = secret_hash(&request.refresh_token);
        // Lock order: the session row, then the token row (revocations use the same),
        // so a refresh racing a revocation never leaves a live token behind.
        let family: Option<Uuid> =
            sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await?;
        let family = family.ok_or_else(refused)?;
        let session_revoked: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT revoked_at FROM sessions WHERE id = $1 FOR UPDATE")
                .bind(family)
                .fetch_optional(&mut *tx)
                .await?;
        if !matches!(session_revoked, Some(None)) {
            return Err(refused());
        }
        let row: Option<RefreshRow> = sqlx::query_as(
            "SELECT id, user_id, family_id, mfa, expires_at, used_at, revoked_at
                 FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
        let RefreshRow {
            id,
            user_id,
            family_id: family,
            mfa,
            expires_at,
            used_at,
            revoked_at,
        } = row.ok_or_else(refused)?;
        if used_at.is_some() && revoked_at.is_none() {
            // Reuse: an old token of the family came back. Somebody holds a copy; end
            // the whole session for both.
            Self::revoke_family(&mut tx, family).await?;
            tx.commit().await?;
            self.revoke_sessions(tenant, &[family]).await?;
            warn!(tenant = %tenant, user = %user_id, "refresh token reuse detected; session revoked");
            self.audit(
                AuditRecord::new(
                    tenant.simple(),
                    Actor::user(user_id),
                    actions::TOKEN_REUSE_DETECTED,
                )
                .failed()
                .target(format!("session/{family}")),
            );
            return Err(refused());
        }
        if revoked_at.is_some() || used_at.is_some() || expires_at < Utc::now() {
            return Err(refused());
        }
        let user = user_by_id(&mut tx, user_id).await.map_err(|_| refused())?;
        if user.disabled {
            return Err(refused());
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let slug = tenant_slug(&mut tx, tenant).await?;
        let tokens = self.issue(&mut tx, &user, &slug, mfa, family).await?;
        tx.commit().await?;
        Ok(tokens)
    }

    pub(super) async fn logout(&self, request: pb::LogoutRequest) -> Result<pb::LogoutResponse> {
        let refused = || AccountError::Unauthenticated("refresh token invalid".into());
        let tenant = secret_tenant("rt", &request.refresh_token).ok_or_else(refused)?;
        let mut tx = self.db.tenant_tx(tenant).await?;
        let row: Option<(Uuid, Uuid)> =
            sqlx::query_as("SELECT user_id, family_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(secret_hash(&request.refresh_token))
                .fetch_optional(&mut *tx)
                .await?;
        let (user, family) = row.ok_or_else(refused)?;
        Self::revoke_family(&mut tx, family).await?;
        tx.commit().await?;
        self.revoke_sessions(tenant, &[family]).await?;
        self.audit(AuditRecord::new(
            tenant.simple(),
            Actor::user(user),
            actions::LOGOUT,
        ));
        Ok(pb::LogoutResponse {})
    }
}
