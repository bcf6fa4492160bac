//! `kiroku.account.v1.AccountService`: each RPC is a thin wrapper that authenticates
//! the caller against the one access table ([`METHODS`]) and calls an inner function
//! returning [`AccountError`]. The inner functions are methods of [`State`], one file per
//! area: `tenants` (registration), `sessions` (sign-in, refresh, logout,
//! revocation), `users`, `mfa`, `api_keys` and `consent`; the row types and
//! shared lookups are in `crate::store`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use kiroku_auth::authorized;
use kiroku_core::audit::{AuditEmitter, AuditRecord};
use kiroku_core::nats::Layout;
use kiroku_proto::account::v1 as pb;
use kiroku_proto::account::v1::account_service_server::AccountService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::auth::{
    Access, Credential, Principal, Revocations, Role, SCOPE_CONSENT, SCOPE_TRANSCRIBE,
};
use crate::db::Db;
use crate::error::{AccountError, Result};
use crate::password;
use crate::throttle::Throttle;
use crate::tokens::{Signer, Verifier};

use crate::store::*;

mod api_keys;
mod consent;
mod mfa;
mod sessions;
mod tenants;
mod users;

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

pub(crate) fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
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
