//! `kiroku.account.v1.AccountService`: each RPC is a thin wrapper that authenticates
//! the caller against the one access table ([`METHODS`]) and calls an inner function
//! returning [`AccountError`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use kiroku_core::audit::{Actor, AuditEmitter, AuditRecord, actions};
use kiroku_core::nats::Layout;
use kiroku_proto::account::v1 as pb;
use kiroku_proto::account::v1::account_service_server::AccountService;
use sqlx::{Postgres, Transaction};
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use uuid::Uuid;

use crate::auth::{
    Access, Credential, Principal, RevocationEvent, Revocations, Role, SCOPE_CONSENT,
    SCOPE_TRANSCRIBE, SCOPES,
};
use crate::db::Db;
use crate::error::{AccountError, Result};
use crate::throttle::Throttle;
use crate::tokens::{self, Signer, Verifier, secret_hash, secret_tenant};
use crate::{password, totp};

/// Who may call each method (deny by default: a method missing here is refused).
/// The proto header documents the same table for API users.
pub const METHODS: &[(&str, Access)] = &[
    ("Register", Access::Public),
    ("Login", Access::Public),
    // The refresh token itself is the credential.
    ("Refresh", Access::Public),
    ("Logout", Access::Public),
    ("AcceptInvitation", Access::Public),
    ("GetSigningKeys", Access::Public),
    ("WhoAmI", Access::SignedIn),
    ("ChangePassword", Access::SignedIn),
    ("EnrollMfa", Access::SignedIn),
    ("ConfirmMfa", Access::SignedIn),
    ("InviteUser", Access::Admin),
    ("ListUsers", Access::Admin),
    ("DisableUser", Access::Admin),
    ("DeleteUser", Access::Admin),
    ("SetRole", Access::Admin),
    ("CreateApiKey", Access::Admin),
    ("RevokeApiKey", Access::Admin),
    ("ListApiKeys", Access::Admin),
    ("SetConsentPolicy", Access::Admin),
    (
        "SetMeetingParticipants",
        Access::Member {
            api_scope: SCOPE_CONSENT,
        },
    ),
    (
        "RecordConsent",
        Access::Member {
            api_scope: SCOPE_CONSENT,
        },
    ),
    (
        "CheckConsent",
        Access::Member {
            api_scope: SCOPE_TRANSCRIBE,
        },
    ),
    ("VerifyApiKey", Access::ApiKey),
    ("ListNoticeRecipients", Access::Operator),
];

/// The access rule of `method`, if it has one.
pub fn access(method: &str) -> Option<Access> {
    METHODS
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(_, access)| *access)
}

/// Lifetimes of what the service issues.
#[derive(Debug, Clone)]
pub struct TokenLifetimes {
    pub access: Duration,
    pub refresh: Duration,
    pub invitation: Duration,
}

impl Default for TokenLifetimes {
    fn default() -> Self {
        Self {
            access: kiroku_auth::ACCESS_TOKEN_LIFETIME,
            refresh: Duration::from_secs(30 * 24 * 3600),
            invitation: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

pub(crate) struct State {
    pub db: Db,
    pub signer: Signer,
    pub verifier: Verifier,
    pub revocations: Revocations,
    pub throttle: Throttle,
    pub audit: AuditEmitter,
    pub nats: async_nats::Client,
    pub layout: Layout,
    pub lifetimes: TokenLifetimes,
    pub operator: crate::auth::OperatorToken,
    pub trusted_proxies: crate::proxy::TrustedProxies,
}

/// The gRPC service.
#[derive(Clone)]
pub struct Accounts {
    state: Arc<State>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

impl Accounts {
    pub(crate) fn new(state: State) -> Self {
        Self {
            state: Arc::new(state),
        }
    }

    /// Authenticates and authorizes the caller of `method`.
    async fn caller<T>(&self, request: &Request<T>, method: &str) -> Result<Principal, Status> {
        let Some(rule) = access(method) else {
            return Err(Status::permission_denied("method not allowed"));
        };
        let credential = crate::auth::credential(request.metadata())?;
        let principal = self.state.authenticate(credential).await?;
        crate::auth::authorize(&principal, rule)?;
        Ok(principal)
    }
}

fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::from(time))
}

fn system_timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

// ---- input checks -------------------------------------------------------------------

/// The one meeting-id rule of every service ([`kiroku_core::validate::meeting_id`]).
fn check_meeting_id(id: &str) -> Result<String> {
    kiroku_core::validate::meeting_id("meeting_id", id)
        .map_err(|e| AccountError::Invalid(e.to_string()))
}

fn check_email(email: &str) -> Result<String> {
    kiroku_core::validate::email("email", email).map_err(|e| AccountError::Invalid(e.to_string()))
}

fn check_text(what: &str, value: &str, max_chars: usize) -> Result<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(AccountError::Invalid(format!("{what} is required")));
    }
    if value.chars().count() > max_chars {
        return Err(AccountError::Invalid(format!(
            "{what} is longer than {max_chars} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(AccountError::Invalid(format!(
            "{what} contains control characters"
        )));
    }
    Ok(value.to_string())
}

fn check_slug(slug: &str) -> Result<String> {
    let slug = slug.trim().to_string();
    let valid = (3..=40).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-');
    if valid {
        Ok(slug)
    } else {
        Err(AccountError::Invalid(
            "tenant slug must be 3 to 40 of a-z, 0-9 and '-'".into(),
        ))
    }
}

fn check_password(password: &str, email: &str) -> Result<()> {
    password::check(password, email).map_err(|rejected| AccountError::Invalid(rejected.to_string()))
}

fn parse_id(what: &'static str, id: &str) -> Result<Uuid> {
    Uuid::try_parse(id.trim()).map_err(|_| AccountError::NotFound(what))
}

fn parse_role(value: i32) -> Result<Role> {
    Role::from_proto(value)
        .ok_or_else(|| AccountError::Invalid("role must be viewer, member, admin or owner".into()))
}

/// At most this many argon2 computations at once (each holds 19 MiB for tens of ms):
/// a flood of sign-ins queues here instead of exhausting memory.
fn argon2_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    })
}

async fn hash_password(password: String) -> Result<String> {
    let _permit = argon2_permits()
        .acquire()
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|e| AccountError::Internal(format!("hashing task: {e}")))?
        .map_err(|e| AccountError::Internal(format!("hashing: {e}")))
}

async fn verify_password(password: String, stored: String) -> Result<bool> {
    let _permit = argon2_permits()
        .acquire()
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || password::verify(&password, &stored))
        .await
        .map_err(|e| AccountError::Internal(format!("verify task: {e}")))
}

// ---- rows ---------------------------------------------------------------------------

#[derive(Debug, sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    tenant_id: Uuid,
    email: String,
    display_name: String,
    role: i16,
    password_hash: String,
    disabled: bool,
    totp_secret: Option<Vec<u8>>,
    totp_enabled: bool,
    totp_last_step: Option<i64>,
    created_at: DateTime<Utc>,
}

const USER_COLUMNS: &str = "id, tenant_id, email, display_name, role, password_hash, disabled, \
     totp_secret, totp_enabled, totp_last_step, created_at";

impl UserRow {
    fn role(&self) -> Result<Role> {
        Role::from_db(self.role)
            .ok_or_else(|| AccountError::Internal("bad role in database".into()))
    }
    fn to_proto(&self) -> pb::User {
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
struct ApiKeyRow {
    id: Uuid,
    name: String,
    scopes: Vec<String>,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

const API_KEY_COLUMNS: &str = "id, name, scopes, created_by, created_at, revoked_at";

impl ApiKeyRow {
    fn to_proto(&self) -> pb::ApiKey {
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
struct RefreshRow {
    id: Uuid,
    user_id: Uuid,
    family_id: Uuid,
    mfa: bool,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

async fn user_by_id(tx: &mut Transaction<'static, Postgres>, id: Uuid) -> Result<UserRow> {
    sqlx::query_as::<_, UserRow>(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(AccountError::NotFound("user"))
}

async fn tenant_slug(tx: &mut Transaction<'static, Postgres>, tenant: Uuid) -> Result<String> {
    sqlx::query_scalar("SELECT slug FROM tenants WHERE id = $1")
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(AccountError::NotFound("tenant"))
}

// ---- the inner functions -------------------------------------------------------------

impl State {
    fn audit(&self, record: AuditRecord) {
        self.audit.spawn_emit(record);
    }

    /// Resolves a credential to a principal, checking revocation (fails closed).
    pub(crate) async fn authenticate(&self, credential: Credential) -> Result<Principal> {
        match credential {
            Credential::Bearer(token) => {
                let claims = self
                    .verifier
                    .verify(&token)
                    .map_err(|e| AccountError::Unauthenticated(e.to_string()))?;
                let principal = Principal::from_claims(&claims);
                if self.revocations.is_revoked(&principal).await? {
                    return Err(AccountError::Unauthenticated(
                        "access token revoked; sign in again".into(),
                    ));
                }
                Ok(principal)
            }
            Credential::ApiKey(key) => self.api_key_principal(&key).await,
        }
    }

    async fn api_key_principal(&self, key: &str) -> Result<Principal> {
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

    /// Starts a new session (refresh-token family) or rotates within `family`, inside
    /// `tx`, and signs the access token.
    async fn issue(
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
    async fn revoke_sessions(&self, tenant: Uuid, sessions: &[Uuid]) -> Result<()> {
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

    async fn broadcast(&self, event: RevocationEvent) {
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
    async fn revoke_user_families(
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
    async fn revoke_family(tx: &mut Transaction<'static, Postgres>, family: Uuid) -> Result<()> {
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

    async fn register(
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

    async fn login(&self, request: pb::LoginRequest, ip: Option<IpAddr>) -> Result<pb::TokenPair> {
        // Shapes first: nothing malformed is counted, looked up or audited.
        let slug = check_slug(&request.tenant_slug)?;
        let email = check_email(&request.email)?;
        let ip_text = ip.map(|ip| ip.to_string()).unwrap_or_default();
        let tenant = self.db.tenant_for_slug(&slug).await?;
        // Attempts on a tenant that does not exist are counted in their own bucket per
        // address: they cannot guess any real password, and must not use up the
        // address's budget for real accounts (or lock anyone out).
        let reserved = match tenant {
            Some(_) => self.throttle.reserve_login(&slug, &email, ip).await?,
            None => self.throttle.reserve_unknown_tenant(ip).await?,
        };
        if let Err(throttled) = reserved {
            // One `login.throttled` per account and window, however many attempts.
            if let Some(tenant) = tenant
                && self
                    .throttle
                    .first_refusal(&slug, &email)
                    .await
                    .unwrap_or(false)
            {
                self.audit(
                    AuditRecord::new(tenant.simple(), Actor::system(), actions::LOGIN_THROTTLED)
                        .target(format!("email/{email}"))
                        .failed()
                        .source_ip(&ip_text),
                );
            }
            return Err(AccountError::Throttled {
                message: "too many failed sign-ins".into(),
                retry_after: throttled.0,
            });
        }
        let invalid = || AccountError::Unauthenticated("invalid tenant, email or password".into());
        let user = match tenant {
            Some(tenant) => {
                let mut tx = self.db.tenant_tx(tenant).await?;
                let user = sqlx::query_as::<_, UserRow>(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
                ))
                .bind(&email)
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
        let password_ok = verify_password(request.password, stored).await? && user.is_some();
        let (Some(tenant), Some(user), true) = (tenant, user, password_ok) else {
            if let Some(tenant) = tenant {
                self.audit(
                    AuditRecord::new(tenant.simple(), Actor::system(), actions::LOGIN_FAILED)
                        .target(format!("email/{email}"))
                        .failed()
                        .source_ip(&ip_text)
                        .detail("reason", "bad credentials"),
                );
            }
            return Err(invalid());
        };
        if user.disabled {
            return Err(AccountError::Denied("this user is disabled".into()));
        }
        let mut tx = self.db.tenant_tx(tenant).await?;
        let mut mfa = false;
        if user.totp_enabled {
            let code = request.totp_code.trim();
            if code.is_empty() {
                return Err(AccountError::Unauthenticated(
                    "totp code required: pass the 6-digit code of your authenticator".into(),
                ));
            }
            let secret = user.totp_secret.clone().unwrap_or_default();
            let accepted =
                match totp::verify(&secret, code, tokens::unix_now(), user.totp_last_step) {
                    Some(step) => {
                        // Atomic single use: a concurrent sign-in with the same code loses.
                        sqlx::query(
                            "UPDATE users SET totp_last_step = $2
                         WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
                        )
                        .bind(user.id)
                        .bind(step)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1
                    }
                    None => false,
                };
            if !accepted {
                tx.rollback().await?;
                self.audit(
                    AuditRecord::new(
                        tenant.simple(),
                        Actor::user(user.id).named(user.email.clone()),
                        actions::MFA_FAILED,
                    )
                    .failed()
                    .source_ip(&ip_text),
                );
                return Err(AccountError::Unauthenticated(
                    "totp code wrong, expired or already used".into(),
                ));
            }
            mfa = true;
        }
        let tokens = self
            .issue(&mut tx, &user, &slug, mfa, Uuid::new_v4())
            .await?;
        tx.commit().await?;
        self.throttle.succeeded(&slug, &email, ip).await?;
        let mut record = AuditRecord::new(
            tenant.simple(),
            Actor::user(user.id).named(user.email.clone()),
            actions::LOGIN_SUCCEEDED,
        )
        .source_ip(&ip_text);
        if mfa {
            record = record.detail("mfa", "totp");
            self.audit(
                AuditRecord::new(
                    tenant.simple(),
                    Actor::user(user.id).named(user.email.clone()),
                    actions::MFA_USED,
                )
                .source_ip(&ip_text),
            );
        }
        self.audit(record);
        Ok(tokens)
    }

    async fn refresh(&self, request: pb::RefreshRequest) -> Result<pb::TokenPair> {
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

    async fn logout(&self, request: pb::LogoutRequest) -> Result<pb::LogoutResponse> {
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

    /// The signed-in user's current password, counted against the same per-account
    /// sign-in throttle as `Login`: a stolen access token cannot be used to guess the
    /// password through ChangePassword or EnrollMfa.
    async fn check_current_password(
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

    async fn change_password(
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

    async fn enroll_mfa(
        &self,
        caller: Principal,
        request: pb::EnrollMfaRequest,
    ) -> Result<pb::EnrollMfaResponse> {
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let user = user_by_id(&mut tx, caller.subject).await?;
        if user.totp_enabled {
            return Err(AccountError::Precondition("mfa is already enrolled".into()));
        }
        self.check_current_password(&caller, &user, request.current_password)
            .await?;
        let secret = totp::new_secret().map_err(AccountError::Internal)?;
        let (uri, base32) =
            totp::enrollment(&secret, &user.email).map_err(AccountError::Internal)?;
        sqlx::query("UPDATE users SET totp_secret = $2, totp_last_step = NULL WHERE id = $1")
            .bind(user.id)
            .bind(&secret)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(pb::EnrollMfaResponse {
            otpauth_uri: uri,
            secret: base32,
        })
    }

    async fn confirm_mfa(
        &self,
        caller: Principal,
        request: pb::ConfirmMfaRequest,
    ) -> Result<pb::TokenPair> {
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let user = user_by_id(&mut tx, caller.subject).await?;
        if user.totp_enabled {
            return Err(AccountError::Precondition("mfa is already enrolled".into()));
        }
        let Some(secret) = user.totp_secret.clone() else {
            return Err(AccountError::Precondition("start with EnrollMfa".into()));
        };
        let Some(step) = totp::verify(
            &secret,
            &request.totp_code,
            tokens::unix_now(),
            user.totp_last_step,
        ) else {
            // The caller is signed in; what is wrong is the code.
            return Err(AccountError::Invalid("totp code wrong or expired".into()));
        };
        sqlx::query("UPDATE users SET totp_enabled = true, totp_last_step = $2 WHERE id = $1")
            .bind(user.id)
            .bind(step)
            .execute(&mut *tx)
            .await?;
        // Sessions opened before MFA end: from now on every session of this user
        // passed TOTP.
        let families = Self::revoke_user_families(&mut tx, user.id).await?;
        let tokens = self
            .issue(&mut tx, &user, &caller.tenant_slug, true, Uuid::new_v4())
            .await?;
        tx.commit().await?;
        self.revoke_sessions(caller.tenant_id, &families).await?;
        self.audit(AuditRecord::new(
            caller.tenant_token(),
            caller.actor(),
            actions::MFA_ENROLLED,
        ));
        Ok(tokens)
    }

    async fn invite(
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

    async fn accept_invitation(
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

    async fn list_users(&self, caller: Principal) -> Result<pb::ListUsersResponse> {
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
    async fn notice_recipients(
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
    async fn admin_target(
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

    async fn end_user(
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

    async fn set_role(&self, caller: Principal, request: pb::SetRoleRequest) -> Result<pb::User> {
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

    async fn create_api_key(
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

    async fn revoke_api_key(
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

    async fn list_api_keys(&self, caller: Principal) -> Result<pb::ListApiKeysResponse> {
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

    async fn set_consent_policy(
        &self,
        caller: Principal,
        request: pb::SetConsentPolicyRequest,
    ) -> Result<pb::SetConsentPolicyResponse> {
        let policy = match pb::ConsentPolicy::try_from(request.policy) {
            Ok(policy @ (pb::ConsentPolicy::None | pb::ConsentPolicy::AllParticipants)) => policy,
            _ => {
                return Err(AccountError::Invalid(
                    "policy must be NONE or ALL_PARTICIPANTS".into(),
                ));
            }
        };
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        sqlx::query("UPDATE tenants SET consent_policy = $2 WHERE id = $1")
            .bind(caller.tenant_id)
            .bind(policy as i16)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.audit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::CONSENT_POLICY_CHANGED,
            )
            .detail("policy", policy.as_str_name()),
        );
        Ok(pb::SetConsentPolicyResponse {
            policy: policy as i32,
        })
    }

    async fn consent_status(
        tx: &mut Transaction<'static, Postgres>,
        tenant: Uuid,
        meeting: &str,
    ) -> Result<pb::ConsentStatus> {
        let policy: i16 = sqlx::query_scalar("SELECT consent_policy FROM tenants WHERE id = $1")
            .bind(tenant)
            .fetch_one(&mut **tx)
            .await?;
        let participants: Vec<String> = sqlx::query_scalar(
            "SELECT participant FROM meeting_participants WHERE meeting_id = $1 ORDER BY participant",
        )
        .bind(meeting)
        .fetch_all(&mut **tx)
        .await?;
        let consents: Vec<(String, String, DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT participant, method, given_at, recorded_by FROM consents
             WHERE meeting_id = $1 ORDER BY given_at",
        )
        .bind(meeting)
        .fetch_all(&mut **tx)
        .await?;
        let missing: Vec<String> = participants
            .iter()
            .filter(|p| !consents.iter().any(|(who, ..)| who == *p))
            .cloned()
            .collect();
        let policy =
            pb::ConsentPolicy::try_from(i32::from(policy)).unwrap_or(pb::ConsentPolicy::None);
        let satisfied = match policy {
            pb::ConsentPolicy::AllParticipants => !participants.is_empty() && missing.is_empty(),
            _ => true,
        };
        Ok(pb::ConsentStatus {
            meeting_id: meeting.to_string(),
            policy: policy as i32,
            satisfied,
            participants,
            consents: consents
                .into_iter()
                .map(
                    |(participant, method, given_at, recorded_by)| pb::ConsentRecord {
                        participant,
                        method,
                        given_at: Some(timestamp(given_at)),
                        recorded_by,
                    },
                )
                .collect(),
            missing,
        })
    }

    async fn set_participants(
        &self,
        caller: Principal,
        request: pb::SetMeetingParticipantsRequest,
    ) -> Result<pb::ConsentStatus> {
        let meeting = check_meeting_id(&request.meeting_id)?;
        if request.participants.len() > 100 {
            return Err(AccountError::Invalid(
                "at most 100 participants per meeting".into(),
            ));
        }
        let participants = request
            .participants
            .iter()
            .map(|p| check_text("participant", p, 200))
            .collect::<Result<Vec<_>>>()?;
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        // Consent cannot be "satisfied" by dropping whoever has not given it: removing a
        // participant without consent takes an admin, and every removal is audited.
        let before = Self::consent_status(&mut tx, caller.tenant_id, &meeting).await?;
        let removed: Vec<&String> = before
            .participants
            .iter()
            .filter(|p| !participants.contains(p))
            .collect();
        let removed_without_consent: Vec<&String> = removed
            .iter()
            .copied()
            .filter(|p| !before.consents.iter().any(|c| &c.participant == *p))
            .collect();
        if !removed_without_consent.is_empty()
            && crate::auth::authorize(&caller, crate::auth::Access::Admin).is_err()
        {
            return Err(AccountError::Denied(format!(
                "removing participants who have not consented ({}) needs an admin with MFA",
                removed_without_consent
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let removed = removed
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query("DELETE FROM meeting_participants WHERE meeting_id = $1")
            .bind(&meeting)
            .execute(&mut *tx)
            .await?;
        for participant in &participants {
            sqlx::query(
                "INSERT INTO meeting_participants (tenant_id, meeting_id, participant)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(caller.tenant_id)
            .bind(&meeting)
            .bind(participant)
            .execute(&mut *tx)
            .await?;
        }
        let status = Self::consent_status(&mut tx, caller.tenant_id, &meeting).await?;
        tx.commit().await?;
        self.audit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::CONSENT_PARTICIPANTS_SET,
            )
            .target(format!("meeting/{meeting}"))
            .detail("participants", participants.len().to_string())
            .detail("removed", removed),
        );
        Ok(status)
    }

    async fn record_consent(
        &self,
        caller: Principal,
        request: pb::RecordConsentRequest,
    ) -> Result<pb::ConsentStatus> {
        let meeting = check_meeting_id(&request.meeting_id)?;
        let participant = check_text("participant", &request.participant, 200)?;
        let method = check_text("consent method", &request.method, 40)?;
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        // The limit applies to new participants only.
        let declared: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM meeting_participants WHERE meeting_id = $1
             AND NOT EXISTS (SELECT 1 FROM meeting_participants
                             WHERE meeting_id = $1 AND participant = $2)",
        )
        .bind(&meeting)
        .bind(&participant)
        .fetch_one(&mut *tx)
        .await?;
        if declared >= 100 {
            return Err(AccountError::Invalid(
                "at most 100 participants per meeting".into(),
            ));
        }
        // Consent makes the person a participant of the meeting.
        sqlx::query(
            "INSERT INTO meeting_participants (tenant_id, meeting_id, participant)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(caller.tenant_id)
        .bind(&meeting)
        .bind(&participant)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO consents (id, tenant_id, meeting_id, participant, method, recorded_by)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(Uuid::new_v4())
        .bind(caller.tenant_id)
        .bind(&meeting)
        .bind(&participant)
        .bind(&method)
        .bind(caller.subject.to_string())
        .execute(&mut *tx)
        .await?;
        let status = Self::consent_status(&mut tx, caller.tenant_id, &meeting).await?;
        tx.commit().await?;
        self.audit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::CONSENT_GIVEN,
            )
            .target(format!("meeting/{meeting}"))
            .detail("participant", participant)
            .detail("method", method),
        );
        Ok(status)
    }

    /// An empty meeting id asks "may I stream without naming a meeting?": yes only
    /// under the NONE policy.
    async fn check_consent(
        &self,
        caller: Principal,
        request: pb::CheckConsentRequest,
    ) -> Result<pb::ConsentStatus> {
        let meeting = if request.meeting_id.trim().is_empty() {
            String::new()
        } else {
            check_meeting_id(&request.meeting_id)?
        };
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let status = Self::consent_status(&mut tx, caller.tenant_id, &meeting).await?;
        tx.commit().await?;
        Ok(status)
    }
}

/// Runs one RPC: authenticate + authorize for `method`, then the inner function.
macro_rules! authorized {
    ($self:ident, $request:ident, $method:literal, |$caller:ident, $body:ident| $call:expr) => {{
        let $caller = $self.caller(&$request, $method).await?;
        let $body = $request.into_inner();
        let _ = &$body;
        $call.await.map(Response::new).map_err(Status::from)
    }};
}

#[tonic::async_trait]
impl AccountService for Accounts {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let ip = self.state.trusted_proxies.client_ip(&request);
        self.state
            .register(request.into_inner(), ip)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let ip = self.state.trusted_proxies.client_ip(&request);
        self.state
            .login(request.into_inner(), ip)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        self.state
            .refresh(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.state
            .logout(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        let caller = self.caller(&request, "WhoAmI").await?;
        Ok(Response::new(caller.to_proto()))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        authorized!(self, request, "ChangePassword", |caller, body| self
            .state
            .change_password(caller, body))
    }

    async fn enroll_mfa(
        &self,
        request: Request<pb::EnrollMfaRequest>,
    ) -> Result<Response<pb::EnrollMfaResponse>, Status> {
        authorized!(self, request, "EnrollMfa", |caller, body| self
            .state
            .enroll_mfa(caller, body))
    }

    async fn confirm_mfa(
        &self,
        request: Request<pb::ConfirmMfaRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        authorized!(self, request, "ConfirmMfa", |caller, body| self
            .state
            .confirm_mfa(caller, body))
    }

    async fn invite_user(
        &self,
        request: Request<pb::InviteUserRequest>,
    ) -> Result<Response<pb::InviteUserResponse>, Status> {
        authorized!(self, request, "InviteUser", |caller, body| self
            .state
            .invite(caller, body))
    }

    async fn accept_invitation(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        self.state
            .accept_invitation(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        authorized!(self, request, "ListUsers", |caller, body| self
            .state
            .list_users(caller))
    }

    async fn disable_user(
        &self,
        request: Request<pb::UserRef>,
    ) -> Result<Response<pb::User>, Status> {
        authorized!(self, request, "DisableUser", |caller, body| self
            .state
            .end_user(caller, body, false))
    }

    async fn delete_user(
        &self,
        request: Request<pb::UserRef>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let caller = self.caller(&request, "DeleteUser").await?;
        self.state
            .end_user(caller, request.into_inner(), true)
            .await
            .map(|_| Response::new(pb::DeleteUserResponse {}))
            .map_err(Status::from)
    }

    async fn set_role(
        &self,
        request: Request<pb::SetRoleRequest>,
    ) -> Result<Response<pb::User>, Status> {
        authorized!(self, request, "SetRole", |caller, body| self
            .state
            .set_role(caller, body))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        authorized!(self, request, "CreateApiKey", |caller, body| self
            .state
            .create_api_key(caller, body))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        authorized!(self, request, "RevokeApiKey", |caller, body| self
            .state
            .revoke_api_key(caller, body))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        authorized!(self, request, "ListApiKeys", |caller, body| self
            .state
            .list_api_keys(caller))
    }

    async fn verify_api_key(
        &self,
        request: Request<pb::VerifyApiKeyRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        let caller = self.caller(&request, "VerifyApiKey").await?;
        Ok(Response::new(caller.to_proto()))
    }

    async fn set_consent_policy(
        &self,
        request: Request<pb::SetConsentPolicyRequest>,
    ) -> Result<Response<pb::SetConsentPolicyResponse>, Status> {
        authorized!(self, request, "SetConsentPolicy", |caller, body| self
            .state
            .set_consent_policy(caller, body))
    }

    async fn set_meeting_participants(
        &self,
        request: Request<pb::SetMeetingParticipantsRequest>,
    ) -> Result<Response<pb::ConsentStatus>, Status> {
        authorized!(self, request, "SetMeetingParticipants", |caller, body| self
            .state
            .set_participants(caller, body))
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::ConsentStatus>, Status> {
        authorized!(self, request, "RecordConsent", |caller, body| self
            .state
            .record_consent(caller, body))
    }

    async fn check_consent(
        &self,
        request: Request<pb::CheckConsentRequest>,
    ) -> Result<Response<pb::ConsentStatus>, Status> {
        authorized!(self, request, "CheckConsent", |caller, body| self
            .state
            .check_consent(caller, body))
    }

    async fn list_notice_recipients(
        &self,
        request: Request<pb::ListNoticeRecipientsRequest>,
    ) -> Result<Response<pb::ListNoticeRecipientsResponse>, Status> {
        self.state
            .operator
            .check(&request, "ListNoticeRecipients")?;
        self.state
            .notice_recipients(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn get_signing_keys(
        &self,
        _request: Request<pb::GetSigningKeysRequest>,
    ) -> Result<Response<pb::GetSigningKeysResponse>, Status> {
        Ok(Response::new(pb::GetSigningKeysResponse {
            keys: vec![pb::SigningKey {
                key_id: self.state.signer.key_id().to_string(),
                ed25519_public_key: self.state.signer.public_key().to_vec(),
            }],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deny by default: every RPC of the service has exactly one access rule.
    #[test]
    fn control_9_2_2_every_method_has_an_access_rule() {
        let methods = kiroku_proto::method_names("kiroku.account.v1.AccountService");
        assert!(methods.len() >= 20, "{methods:?}");
        let problems =
            crate::auth::access_table_problems("kiroku.account.v1.AccountService", METHODS);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn emails_slugs_and_texts_are_checked() {
        assert_eq!(
            check_email(" Ana@Example.COM ").expect("ok"),
            "ana@example.com"
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "a b@example.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert!(check_slug("acme-2").is_ok());
        for bad in ["ab", "Acme", "acme_2", "-acme", &"a".repeat(41)] {
            assert!(check_slug(bad).is_err(), "{bad}");
        }
        assert!(check_text("name", "  ", 10).is_err());
        assert!(check_text("name", "a\u{7}b", 10).is_err());
        assert!(check_text("name", &"あ".repeat(11), 10).is_err());
    }
}
