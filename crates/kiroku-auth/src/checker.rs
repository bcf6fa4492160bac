//! Checking credentials in a service other than the account service (gateways, and
//! later storage and audit): access tokens verified locally with the account service's
//! public keys (refetched every minute), API keys resolved through the account service
//! and cached in Redis for a minute, revocations checked in Redis on every call (fail
//! closed), then the method's [`Access`] rule.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kiroku_core::grpc_metrics::MeteredChannel;
use kiroku_proto::account::v1 as account_pb;
use kiroku_proto::account::v1::account_service_client::AccountServiceClient;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::auth::{self, Access, Credential, Principal, Revocations};
use crate::tokens::{Verifier, secret_hash};

/// How long a verified API key is trusted from the Redis cache.
const API_KEY_CACHE: Duration = Duration::from_secs(60);

pub struct Checker {
    verifier: RwLock<Verifier>,
    revocations: Revocations,
    account: AccountServiceClient<MeteredChannel>,
    /// The same channel, for health checks.
    channel: MeteredChannel,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker").finish_non_exhaustive()
    }
}

/// Copies the caller's credential headers for a call to the account service on its
/// behalf (so the account service derives the same tenant).
pub fn forwarded(metadata: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for key in ["authorization", auth::API_KEY_HEADER] {
        if let Some(value) = metadata.get(key) {
            out.insert(key, value.clone());
        }
    }
    out
}

async fn fetch_verifier(
    account: &mut AccountServiceClient<MeteredChannel>,
) -> Result<Verifier, Status> {
    let keys = account
        .get_signing_keys(account_pb::GetSigningKeysRequest {})
        .await?
        .into_inner()
        .keys;
    if keys.is_empty() {
        return Err(Status::unavailable(
            "the account service has no signing key",
        ));
    }
    Ok(Verifier::new(
        keys.iter().map(|k| k.ed25519_public_key.as_slice()),
    ))
}

impl Checker {
    /// `Ok` while the account service answers (readiness of the services that check
    /// credentials through it).
    pub async fn account_ready(&self) -> Result<(), String> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let call = health.check(tonic_health::pb::HealthCheckRequest {
            service: "kiroku.account.v1.AccountService".into(),
        });
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(answer)) if answer.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
            Ok(Ok(_)) => Err("the account service is not serving".into()),
            Ok(Err(status)) => Err(format!("the account service answers {:?}", status.code())),
            Err(_) => Err("the account service does not answer".into()),
        }
    }

    /// Connects to the account service at `account_url`, waiting up to `wait` for its
    /// signing keys, and keeps the keys fresh (key rotation) while the checker lives.
    /// The checker a service behind the gateway uses: revocations in `redis_url` under
    /// the cluster's prefix, keys from the account service (waiting up to 30 s for it).
    pub async fn for_service(
        account_url: &str,
        redis_url: &str,
        layout: &kiroku_core::nats::Layout,
    ) -> anyhow::Result<Arc<Self>> {
        let redis = crate::auth::connect_redis(redis_url).await?;
        let revocations = Revocations::new(
            redis,
            &crate::redis_prefix(layout),
            crate::ACCESS_TOKEN_LIFETIME,
        );
        Self::connect(account_url, revocations, Duration::from_secs(30)).await
    }

    pub async fn connect(
        account_url: &str,
        revocations: Revocations,
        wait: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        let channel = Channel::from_shared(account_url.to_string())
            .with_context(|| format!("account service url {account_url}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        let channel = kiroku_core::grpc_metrics::metered(channel);
        let mut account = AccountServiceClient::new(channel.clone());
        let deadline = tokio::time::Instant::now() + wait;
        let verifier = loop {
            match fetch_verifier(&mut account).await {
                Ok(verifier) => break verifier,
                Err(status) if tokio::time::Instant::now() < deadline => {
                    info!(
                        message = status.message(),
                        "waiting for the account service"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(status) => {
                    anyhow::bail!(
                        "the account service at {account_url} did not answer: {}",
                        status.message()
                    )
                }
            }
        };
        let checker = Arc::new(Self {
            verifier: RwLock::new(verifier),
            revocations,
            account,
            channel,
        });
        let weak = Arc::downgrade(&checker);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(checker) = weak.upgrade() else {
                    return;
                };
                let mut account = checker.account.clone();
                if let Ok(verifier) = fetch_verifier(&mut account).await
                    && let Ok(mut current) = checker.verifier.write()
                {
                    *current = verifier;
                }
            }
        });
        Ok(checker)
    }

    /// The account service, for calls made on a caller's behalf.
    pub fn account(&self) -> AccountServiceClient<MeteredChannel> {
        self.account.clone()
    }

    /// Authenticates the caller and applies `rule` (deny by default: callers pass the
    /// rule from their own method table, and a method without one is refused there).
    /// Admits the caller of `method` by its rule in a service's access table
    /// (deny by default: a method missing there is refused).
    pub async fn admit_method(
        &self,
        metadata: &MetadataMap,
        methods: &[(&str, Access)],
        method: &str,
    ) -> Result<Principal, Status> {
        let rule = methods
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(_, rule)| *rule)
            .ok_or_else(|| Status::permission_denied("method not allowed"))?;
        self.admit(metadata, rule).await
    }

    pub async fn admit(&self, metadata: &MetadataMap, rule: Access) -> Result<Principal, Status> {
        let principal = match auth::credential(metadata)? {
            Credential::Bearer(token) => {
                let claims = self
                    .verifier
                    .read()
                    .map_err(|_| Status::internal("internal error"))?
                    .verify(&token)
                    .map_err(|e| Status::unauthenticated(e.to_string()))?;
                Principal::from_claims(&claims)
            }
            Credential::ApiKey(key) => self.api_key(metadata, &key).await?,
        };
        // Revoked users, sessions and keys (a key's cache entry may predate its
        // revocation by a moment: the marker wins).
        match self.revocations.is_revoked(&principal).await {
            Ok(false) => {}
            Ok(true) => {
                return Err(Status::unauthenticated("credential revoked; sign in again"));
            }
            Err(error) => {
                warn!(%error, "redis unavailable: refusing the call (fail closed)");
                return Err(Status::unavailable(
                    "authentication temporarily unavailable; retry shortly",
                ));
            }
        }
        auth::authorize(&principal, rule)?;
        Ok(principal)
    }

    async fn api_key(&self, metadata: &MetadataMap, key: &str) -> Result<Principal, Status> {
        let hash = secret_hash(key);
        match self.revocations.cached_api_key(&hash).await {
            Ok(Some(principal)) => return Ok(principal),
            Ok(None) => {}
            Err(error) => {
                warn!(%error, "redis unavailable: refusing the call (fail closed)");
                return Err(Status::unavailable(
                    "authentication temporarily unavailable; retry shortly",
                ));
            }
        }
        let mut request = tonic::Request::new(account_pb::VerifyApiKeyRequest {});
        *request.metadata_mut() = forwarded(metadata);
        let principal = self
            .account
            .clone()
            .verify_api_key(request)
            .await?
            .into_inner();
        let principal =
            Principal::from_proto(&principal).ok_or_else(|| Status::internal("internal error"))?;
        if let Err(error) = self
            .revocations
            .cache_api_key(&hash, &principal, API_KEY_CACHE)
            .await
        {
            warn!(%error, "api key not cached");
        }
        Ok(principal)
    }

    /// Recording consent (control CLD.6.3.1): asks the account service, as the
    /// caller, whether `meeting_id` may be recorded. `FAILED_PRECONDITION` naming the
    /// participants still missing when not.
    pub async fn check_consent(
        &self,
        metadata: &MetadataMap,
        meeting_id: &str,
    ) -> Result<(), Status> {
        let mut request = tonic::Request::new(account_pb::CheckConsentRequest {
            meeting_id: meeting_id.to_string(),
        });
        *request.metadata_mut() = forwarded(metadata);
        let status = self
            .account
            .clone()
            .check_consent(request)
            .await?
            .into_inner();
        if status.satisfied {
            return Ok(());
        }
        Err(Status::failed_precondition(if meeting_id.is_empty() {
            "recording consent required: this tenant's policy needs a meeting_id whose \
             participants all consented"
                .to_string()
        } else if status.participants.is_empty() {
            format!(
                "recording consent required: meeting {meeting_id:?} has no participants \
                 with consent yet"
            )
        } else {
            format!(
                "recording consent missing for meeting {meeting_id:?}: {}",
                status.missing.join(", ")
            )
        }))
    }

    /// Whether `principal` is still valid per Redis. When Redis cannot answer, a
    /// running stream continues (revocations still arrive over NATS).
    pub async fn still_valid(&self, principal: &Principal) -> bool {
        !matches!(self.revocations.is_revoked(principal).await, Ok(true))
    }
}
