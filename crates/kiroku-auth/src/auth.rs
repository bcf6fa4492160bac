//! Who is calling, and may they: credentials, roles, the per-method access rule, and
//! token revocation in Redis. Shared by the account service and the gateways.
//!
//! Deny by default: every method names its [`Access`] rule in one table (the account
//! service's `access` function, the gateway's), and anything without a valid
//! credential is refused before a handler runs.

use std::time::Duration;

use kiroku_proto::account::v1 as pb;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use crate::tokens::Claims;

/// Metadata key of an API key (`authorization: Bearer` carries user tokens).
pub const API_KEY_HEADER: &str = "x-api-key";
/// The API-key scope that allows transcription.
pub const SCOPE_TRANSCRIBE: &str = "transcribe";
/// The API-key scope that allows recording consent.
pub const SCOPE_CONSENT: &str = "consent";
pub const SCOPES: [&str; 2] = [SCOPE_TRANSCRIBE, SCOPE_CONSENT];

/// A user's role in their tenant, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Member, Role::Admin, Role::Owner];

    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::Role::try_from(value).ok()? {
            pb::Role::Viewer => Some(Self::Viewer),
            pb::Role::Member => Some(Self::Member),
            pb::Role::Admin => Some(Self::Admin),
            pb::Role::Owner => Some(Self::Owner),
            pb::Role::Unspecified => None,
        }
    }
    pub fn to_proto(self) -> pb::Role {
        match self {
            Self::Viewer => pb::Role::Viewer,
            Self::Member => pb::Role::Member,
            Self::Admin => pb::Role::Admin,
            Self::Owner => pb::Role::Owner,
        }
    }
    /// The database encoding (same numbers as the proto enum).
    pub fn to_db(self) -> i16 {
        self.to_proto() as i16
    }
    pub fn from_db(value: i16) -> Option<Self> {
        Self::from_proto(value.into())
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

/// An authenticated caller: a signed-in user or a tenant API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub tenant_id: Uuid,
    pub tenant_slug: String,
    /// User id, or API key id.
    pub subject: Uuid,
    /// Users: their role. API keys act as members, limited by their scopes.
    pub role: Role,
    pub mfa: bool,
    /// Users: the session (refresh-token family); API keys: none.
    pub session: Option<Uuid>,
    pub api_key: bool,
    pub scopes: Vec<String>,
    pub email: String,
    /// API keys: the key's name (what audit entries show for the actor).
    #[serde(default)]
    pub key_name: String,
}

impl Principal {
    pub fn from_claims(claims: &Claims) -> Self {
        Self {
            tenant_id: claims.tid,
            tenant_slug: claims.tsl.clone(),
            subject: claims.sub,
            role: claims.role,
            mfa: claims.mfa,
            session: Some(claims.sid),
            api_key: false,
            scopes: Vec::new(),
            email: claims.email.clone(),
            key_name: String::new(),
        }
    }

    /// The tenant as it appears in NATS subjects and Redis keys.
    pub fn tenant_token(&self) -> String {
        self.tenant_id.simple().to_string()
    }

    /// The audit actor for this principal.
    pub fn actor(&self) -> kiroku_core::audit::Actor {
        if self.api_key {
            kiroku_core::audit::Actor::api_key(self.subject)
                .named(format!("API key {}", self.key_name))
        } else {
            kiroku_core::audit::Actor::user(self.subject).named(self.email.clone())
        }
    }

    pub fn to_proto(&self) -> pb::Principal {
        pb::Principal {
            tenant_id: self.tenant_id.to_string(),
            tenant_slug: self.tenant_slug.clone(),
            subject: self.subject.to_string(),
            role: self.role.to_proto() as i32,
            mfa: self.mfa,
            scopes: self.scopes.clone(),
            api_key: self.api_key,
            email: self.email.clone(),
            key_name: self.key_name.clone(),
        }
    }

    pub fn from_proto(principal: &pb::Principal) -> Option<Self> {
        Some(Self {
            tenant_id: Uuid::try_parse(&principal.tenant_id).ok()?,
            tenant_slug: principal.tenant_slug.clone(),
            subject: Uuid::try_parse(&principal.subject).ok()?,
            role: Role::from_proto(principal.role)?,
            mfa: principal.mfa,
            session: None,
            api_key: principal.api_key,
            scopes: principal.scopes.clone(),
            email: principal.email.clone(),
            key_name: principal.key_name.clone(),
        })
    }
}

/// A credential as presented in request metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Bearer(String),
    ApiKey(String),
}

/// Reads the caller's credential; `UNAUTHENTICATED` when there is none or it is
/// malformed (both an API key and a token is malformed too: which one would count?).
pub fn credential(metadata: &MetadataMap) -> Result<Credential, Status> {
    let bearer = metadata.get("authorization");
    let api_key = metadata.get(API_KEY_HEADER);
    match (bearer, api_key) {
        (Some(_), Some(_)) => Err(Status::unauthenticated(
            "send either an access token or an API key, not both",
        )),
        (Some(value), None) => {
            let value = value
                .to_str()
                .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("authorization must be `Bearer <access token>`")
                })?;
            Ok(Credential::Bearer(token.trim().to_string()))
        }
        (None, Some(value)) => value
            .to_str()
            .map(|key| Credential::ApiKey(key.trim().to_string()))
            .map_err(|_| Status::unauthenticated("malformed x-api-key header")),
        (None, None) => Err(Status::unauthenticated(
            "credential required: sign in (`kiroku login`) or send an API key",
        )),
    }
}

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential (sign-in, registration, public keys).
    Public,
    /// Any signed-in user, any role (not API keys).
    SignedIn,
    /// Members, admins and owners; API keys holding `api_scope`.
    Member { api_scope: &'static str },
    /// Admins and owners whose session passed TOTP (control 9.2.3). Never API keys.
    Admin,
    /// Only an API key itself (it asks who it is).
    ApiKey,
    /// Only the service operator ([`OperatorToken`]), never a tenant's user or key.
    Operator,
}

/// What is wrong with `methods` as the access table of gRPC service `service`
/// (`kiroku.storage.v1.Storage`): a method without exactly one rule, or a rule for a
/// method the service does not have. Empty when the table is complete (deny by
/// default: each service's tests assert this).
pub fn access_table_problems(service: &str, methods: &[(&str, Access)]) -> Vec<String> {
    let rpcs = kiroku_proto::method_names(service);
    let mut problems = Vec::new();
    if rpcs.is_empty() {
        problems.push(format!("{service} has no methods in the descriptor set"));
    }
    for rpc in &rpcs {
        let rules = methods.iter().filter(|(name, _)| name == rpc).count();
        if rules != 1 {
            problems.push(format!("{service}/{rpc} has {rules} access rules"));
        }
    }
    for (name, _) in methods {
        if !rpcs.iter().any(|rpc| rpc == name) {
            problems.push(format!("a rule for {name}, which {service} does not have"));
        }
    }
    problems
}

/// Applies `access` to `principal`: `PERMISSION_DENIED` with the reason, or `Ok`.
pub fn authorize(principal: &Principal, access: Access) -> Result<(), Status> {
    let allowed = match access {
        Access::Public => true,
        Access::SignedIn => !principal.api_key,
        Access::Member { api_scope } => {
            if principal.api_key {
                principal.scopes.iter().any(|scope| scope == api_scope)
            } else {
                principal.role >= Role::Member
            }
        }
        Access::Admin => {
            if principal.api_key || principal.role < Role::Admin {
                false
            } else if !principal.mfa {
                return Err(Status::permission_denied(
                    "mfa required: admin calls need a session that passed TOTP \
                     (`kiroku mfa enroll`, then sign in again)",
                ));
            } else {
                true
            }
        }
        Access::ApiKey => principal.api_key,
        // The operator is no tenant principal: `OperatorToken::check` admits it.
        Access::Operator => false,
    };
    if allowed {
        Ok(())
    } else if principal.api_key {
        Err(Status::permission_denied(
            "this API key's scopes do not allow the call",
        ))
    } else {
        Err(Status::permission_denied(format!(
            "the {} role does not allow this call",
            principal.role.as_str()
        )))
    }
}

/// Revoked users and sessions, in Redis. Keys live as long as an access token can, so
/// the set stays small: after that, the tokens they refuse have expired anyway and
/// refresh checks the database.
#[derive(Clone)]
pub struct Revocations {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A revocation, broadcast on core NATS so gateways end live streams at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEvent {
    pub tenant_id: Uuid,
    /// Every session of this user.
    pub user_id: Option<Uuid>,
    /// One session.
    pub session_id: Option<Uuid>,
}

impl Revocations {
    /// `prefix`: the cluster's Redis key prefix; `ttl`: the access-token lifetime.
    pub fn new(redis: redis::aio::ConnectionManager, prefix: &str, ttl: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
            ttl: ttl + Duration::from_secs(60),
        }
    }

    fn user_key(&self, tenant: Uuid, user: Uuid) -> String {
        format!(
            "{}:t:{}:revoked:user:{}",
            self.prefix,
            tenant.simple(),
            user.simple()
        )
    }
    fn api_key_revoked_key(&self, tenant: Uuid, key: Uuid) -> String {
        format!(
            "{}:t:{}:revoked:key:{}",
            self.prefix,
            tenant.simple(),
            key.simple()
        )
    }

    /// Marks an API key revoked for as long as a stream it opened can last (4 h) and
    /// more: gateways check it on every call and every few seconds in live streams.
    pub async fn revoke_api_key(&self, tenant: Uuid, key: Uuid) -> redis::RedisResult<()> {
        let key = self.api_key_revoked_key(tenant, key);
        self.redis
            .clone()
            .set_ex::<_, _, ()>(key, 1, 5 * 3600)
            .await
    }

    fn session_key(&self, tenant: Uuid, session: Uuid) -> String {
        format!(
            "{}:t:{}:revoked:sid:{}",
            self.prefix,
            tenant.simple(),
            session.simple()
        )
    }

    pub async fn revoke_user(&self, tenant: Uuid, user: Uuid) -> redis::RedisResult<()> {
        let key = self.user_key(tenant, user);
        self.redis
            .clone()
            .set_ex::<_, _, ()>(key, 1, self.ttl.as_secs())
            .await
    }

    /// Lifts a user revocation (a deleted email re-invited gets a new user id, so this
    /// is only for tests and re-enabling).
    pub async fn clear_user(&self, tenant: Uuid, user: Uuid) -> redis::RedisResult<()> {
        self.redis
            .clone()
            .del::<_, ()>(self.user_key(tenant, user))
            .await
    }

    pub async fn revoke_session(&self, tenant: Uuid, session: Uuid) -> redis::RedisResult<()> {
        let key = self.session_key(tenant, session);
        self.redis
            .clone()
            .set_ex::<_, _, ()>(key, 1, self.ttl.as_secs())
            .await
    }

    fn api_key_key(&self, key_hash: &[u8]) -> String {
        format!("{}:apikey:{}", self.prefix, hex::encode(key_hash))
    }

    /// Caches a verified API key's principal (gateways), for `ttl` at most.
    pub async fn cache_api_key(
        &self,
        key_hash: &[u8],
        principal: &Principal,
        ttl: Duration,
    ) -> redis::RedisResult<()> {
        let value = serde_json::to_string(principal).unwrap_or_default();
        self.redis
            .clone()
            .set_ex::<_, _, ()>(self.api_key_key(key_hash), value, ttl.as_secs().max(1))
            .await
    }

    /// The cached principal of an API key, if any.
    pub async fn cached_api_key(&self, key_hash: &[u8]) -> redis::RedisResult<Option<Principal>> {
        let value: Option<String> = self.redis.clone().get(self.api_key_key(key_hash)).await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Drops a revoked key from the gateways' cache.
    pub async fn forget_api_key(&self, key_hash: &[u8]) -> redis::RedisResult<()> {
        self.redis
            .clone()
            .del::<_, ()>(self.api_key_key(key_hash))
            .await
    }

    /// Whether the token's user or session is revoked. An error means "unknown": the
    /// caller fails closed.
    pub async fn is_revoked(&self, principal: &Principal) -> redis::RedisResult<bool> {
        if principal.api_key {
            let key = self.api_key_revoked_key(principal.tenant_id, principal.subject);
            return self.redis.clone().exists(key).await;
        }
        let mut keys = vec![self.user_key(principal.tenant_id, principal.subject)];
        if let Some(session) = principal.session {
            keys.push(self.session_key(principal.tenant_id, session));
        }
        let found: u32 = self.redis.clone().exists(keys).await?;
        Ok(found > 0)
    }
}

/// Connects to Redis with a manager that reconnects in the background and bounds every
/// command, so a dead Redis answers with an error in about a second instead of hanging.
pub async fn connect_redis(url: &str) -> anyhow::Result<redis::aio::ConnectionManager> {
    use anyhow::Context as _;
    let shown = kiroku_core::redact_url(url);
    let client = redis::Client::open(url).with_context(|| format!("redis url {shown}"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(Duration::from_secs(1))
        .set_number_of_retries(1);
    redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .with_context(|| format!("connecting to Redis at {shown}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, mfa: bool) -> Principal {
        Principal {
            tenant_id: Uuid::new_v4(),
            tenant_slug: "acme".into(),
            subject: Uuid::new_v4(),
            role,
            mfa,
            session: Some(Uuid::new_v4()),
            api_key: false,
            scopes: vec![],
            email: "a@example.com".into(),
            key_name: String::new(),
        }
    }

    #[test]
    fn admin_calls_need_an_admin_role_and_mfa() {
        let denied = |p: &Principal| authorize(p, Access::Admin).is_err();
        assert!(denied(&principal(Role::Member, true)));
        assert!(denied(&principal(Role::Admin, false)));
        assert!(denied(&principal(Role::Owner, false)));
        assert!(!denied(&principal(Role::Admin, true)));
        assert!(!denied(&principal(Role::Owner, true)));
    }

    #[test]
    fn api_keys_act_only_within_their_scopes() {
        let mut key = principal(Role::Member, false);
        key.api_key = true;
        key.scopes = vec![SCOPE_TRANSCRIBE.into()];
        let transcribe = Access::Member {
            api_scope: SCOPE_TRANSCRIBE,
        };
        let consent = Access::Member {
            api_scope: SCOPE_CONSENT,
        };
        assert!(authorize(&key, transcribe).is_ok());
        assert!(authorize(&key, consent).is_err());
        assert!(authorize(&key, Access::SignedIn).is_err());
        assert!(authorize(&key, Access::Admin).is_err());
    }

    #[test]
    fn credentials_come_from_metadata_only() {
        let mut metadata = MetadataMap::new();
        assert!(credential(&metadata).is_err());
        metadata.insert("authorization", "Bearer abc".parse().expect("value"));
        assert_eq!(
            credential(&metadata).expect("ok"),
            Credential::Bearer("abc".into())
        );
        metadata.insert(API_KEY_HEADER, "kk_1".parse().expect("value"));
        assert!(credential(&metadata).is_err(), "both is ambiguous");
        let mut basic = MetadataMap::new();
        basic.insert("authorization", "Basic abc".parse().expect("value"));
        assert!(credential(&basic).is_err());
    }
}

/// The service operator's credential: one shared secret, configured on the account and
/// audit services as `KIROKU_OPERATOR_TOKEN` (or a file named by
/// `KIROKU_OPERATOR_TOKEN_FILE`) and sent by `kiroku admin notice` as metadata
/// `x-kiroku-operator-token`. Incoming tokens are compared by SHA-256 digest in
/// constant time; the secret itself is kept only to call another service as the
/// operator ([`OperatorToken::attach`]) and never printed. Without it configured,
/// operator methods answer `UNAVAILABLE`.
#[derive(Clone, Default)]
pub struct OperatorToken {
    digest: Option<[u8; 32]>,
    secret: Option<std::sync::Arc<str>>,
    /// Wrong or missing tokens in the current minute (guessing is throttled).
    failures: std::sync::Arc<std::sync::Mutex<Failures>>,
    /// Where refused calls are recorded: the operator's audit log
    /// ([`kiroku_core::audit::OPERATOR_LOG`]). None in unit tests.
    audit: Option<kiroku_core::audit::AuditEmitter>,
}

/// Failed operator calls in the current minute.
#[derive(Debug, Default)]
struct Failures {
    since: Option<std::time::Instant>,
    count: u32,
    /// Whether this minute's throttling was recorded (once a minute, however many calls).
    throttle_recorded: bool,
}

impl Failures {
    /// Starts a new minute when the last one is over.
    fn roll(&mut self, now: std::time::Instant) {
        if self
            .since
            .is_none_or(|s| now.duration_since(s) >= std::time::Duration::from_secs(60))
        {
            *self = Self {
                since: Some(now),
                ..Self::default()
            };
        }
    }

    fn over(&self) -> bool {
        self.count > OperatorToken::MAX_FAILURES_PER_MINUTE
    }
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorToken")
            .field("configured", &self.digest.is_some())
            .finish()
    }
}

impl OperatorToken {
    pub const METADATA: &'static str = "x-kiroku-operator-token";
    pub const ENV: &'static str = "KIROKU_OPERATOR_TOKEN";
    pub const FILE_ENV: &'static str = "KIROKU_OPERATOR_TOKEN_FILE";
    /// Shortest accepted token: it guards every tenant's notices and contacts.
    pub const MIN_LEN: usize = 32;

    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.len() < Self::MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the operator token must be at least {} printable ASCII characters",
                Self::MIN_LEN
            ));
        }
        Ok(Self {
            digest: Some(Self::digest(token)),
            secret: Some(token.into()),
            failures: Default::default(),
            audit: None,
        })
    }

    /// Wrong operator tokens one process takes per minute; past it every operator call
    /// (the right token too) is refused until the minute is over.
    pub const MAX_FAILURES_PER_MINUTE: u32 = 10;

    /// Records refused operator calls in the operator's audit log.
    pub fn audited(mut self, emitter: kiroku_core::audit::AuditEmitter) -> Self {
        self.audit = Some(emitter);
        self
    }

    /// Counts a failed attempt and records it; whether the limit is now passed. At most
    /// `MAX_FAILURES_PER_MINUTE` + 1 records a minute: the failures, then one
    /// `operator.throttled`.
    fn failed(&self, method: &str, why: &str, source: Option<std::net::IpAddr>) -> bool {
        let Ok(mut failures) = self.failures.lock() else {
            return true;
        };
        failures.roll(std::time::Instant::now());
        failures.count += 1;
        tracing::warn!(
            failures = failures.count,
            method,
            "operator call refused: {why}"
        );
        let over = failures.over();
        if !over {
            self.record(
                kiroku_core::audit::actions::OPERATOR_REFUSED,
                method,
                why,
                source,
            );
        } else if !failures.throttle_recorded {
            failures.throttle_recorded = true;
            self.record(
                kiroku_core::audit::actions::OPERATOR_THROTTLED,
                method,
                "too many wrong operator tokens",
                source,
            );
        }
        over
    }

    fn record(
        &self,
        action: &'static str,
        method: &str,
        why: &str,
        source: Option<std::net::IpAddr>,
    ) {
        use kiroku_core::audit::{Actor, AuditRecord, OPERATOR_LOG};
        if let Some(audit) = &self.audit {
            let mut record = AuditRecord::new(OPERATOR_LOG, Actor::operator(), action)
                .target(format!("method/{method}"))
                .detail("reason", why)
                .failed();
            if let Some(ip) = source {
                record = record.source_ip(ip.to_string());
            }
            audit.spawn_emit(record);
        }
    }

    /// Whether operator calls are refused for now (too many wrong tokens this minute).
    fn throttled(&self) -> bool {
        self.failures.lock().map_or(true, |mut failures| {
            failures.roll(std::time::Instant::now());
            failures.over()
        })
    }

    /// Adds the token to an outgoing request (the audit service asking the account
    /// service for notice recipients).
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) -> Result<(), Status> {
        let secret = self.secret.as_deref().ok_or_else(|| {
            Status::unavailable(
                "operator access is not configured on this service (KIROKU_OPERATOR_TOKEN)",
            )
        })?;
        let value = secret
            .parse()
            .map_err(|_| Status::internal("the operator token is not valid metadata"))?;
        request.metadata_mut().insert(Self::METADATA, value);
        Ok(())
    }

    /// From `KIROKU_OPERATOR_TOKEN` or the file `KIROKU_OPERATOR_TOKEN_FILE` names; not
    /// configured when neither is set.
    pub fn from_env() -> Result<Self, String> {
        match kiroku_core::secret::from_env(Self::ENV)? {
            Some(secret) => Self::new(&secret.text).map_err(|e| format!("{}: {e}", secret.source)),
            None => Ok(Self::default()),
        }
    }

    pub fn is_configured(&self) -> bool {
        self.digest.is_some()
    }

    fn digest(token: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// Whether the request carries an operator token at all (to choose the rule).
    pub fn presented(metadata: &MetadataMap) -> bool {
        metadata.contains_key(Self::METADATA)
    }

    /// `Ok` for the configured token; `UNAUTHENTICATED` for a wrong or missing one.
    /// `method` and the caller's address go into the record of a refusal.
    pub fn check<T>(&self, request: &tonic::Request<T>, method: &str) -> Result<(), Status> {
        let metadata = request.metadata();
        let source = request.remote_addr().map(|a| a.ip());
        let Some(expected) = self.digest else {
            return Err(Status::unavailable(
                "operator access is not configured on this service (KIROKU_OPERATOR_TOKEN)",
            ));
        };
        if self.throttled() {
            self.failed(method, "throttled", source);
            return Err(kiroku_core::status::resource_exhausted(
                "too many wrong operator tokens",
                std::time::Duration::from_secs(60),
            ));
        }
        let Some(presented) = metadata
            .get(Self::METADATA)
            .and_then(|value| value.to_str().ok())
        else {
            self.failed(method, "the operator token is missing", source);
            return Err(Status::unauthenticated("the operator token is missing"));
        };
        let got = Self::digest(presented.trim());
        let difference = got
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference == 0 {
            Ok(())
        } else if self.failed(method, "the operator token is not valid", source) {
            Err(kiroku_core::status::resource_exhausted(
                "too many wrong operator tokens",
                std::time::Duration::from_secs(60),
            ))
        } else {
            Err(Status::unauthenticated("the operator token is not valid"))
        }
    }
}

#[cfg(test)]
mod operator_tests {
    use super::*;

    fn with(token: &str) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert(OperatorToken::METADATA, token.parse().expect("ascii"));
        request
    }

    #[test]
    fn operator_token_admits_only_the_configured_secret() {
        let secret = "x".repeat(40);
        let token = OperatorToken::new(&secret).expect("long enough");
        assert!(token.check(&with(&secret), "Test").is_ok());
        let wrong = token
            .check(&with(&"y".repeat(40)), "Test")
            .expect_err("wrong");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let missing = token
            .check(&tonic::Request::new(()), "Test")
            .expect_err("missing");
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(OperatorToken::new("short").is_err());
        let off = OperatorToken::default()
            .check(&with(&secret), "Test")
            .expect_err("off");
        assert_eq!(off.code(), tonic::Code::Unavailable);
        assert!(!format!("{token:?}").contains(&secret));
    }

    /// Guessing the operator token is throttled: after the limit of wrong tokens in a
    /// minute, every operator call (the right token too) is refused with retry info.
    #[test]
    fn wrong_operator_tokens_are_throttled() {
        let secret = "x".repeat(40);
        let token = OperatorToken::new(&secret).expect("long enough");
        for _ in 0..OperatorToken::MAX_FAILURES_PER_MINUTE {
            let wrong = token
                .check(&with(&"y".repeat(40)), "Test")
                .expect_err("wrong");
            assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        }
        let throttled = token
            .check(&with(&"y".repeat(40)), "Test")
            .expect_err("one too many");
        assert_eq!(throttled.code(), tonic::Code::ResourceExhausted);
        let right = token
            .check(&with(&secret), "Test")
            .expect_err("throttled for now");
        assert_eq!(right.code(), tonic::Code::ResourceExhausted);
        assert!(kiroku_core::status::retry_after(&right).is_some());
        // Clones share the count (the service hands clones to its handlers).
        let clone = token.clone();
        assert!(clone.check(&with(&secret), "Test").is_err());
    }
}
