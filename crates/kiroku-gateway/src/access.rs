//! Who may use the gateway: every RPC needs a bearer token or an API key (deny by
//! default, [`METHODS`]); the tenant comes from the credential only. Live streams are
//! registered so a revocation (user disabled or deleted, session logged out, API key
//! revoked) ends them within seconds: the account service broadcasts it on NATS, and
//! each stream re-checks Redis every few seconds in case a broadcast was missed.
//!
//! Redis down: new calls are refused with `UNAVAILABLE` (revocation cannot be checked,
//! so authentication fails closed); streams already running continue, and still end
//! on a NATS revocation broadcast.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use kiroku_account::auth::{
    self, Access, Credential, Principal, RevocationEvent, Revocations, SCOPE_TRANSCRIBE,
};
use kiroku_account::tokens::{Verifier, secret_hash};
use kiroku_proto::account::v1 as account_pb;
use kiroku_proto::account::v1::account_service_client::AccountServiceClient;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tracing::{info, warn};

/// Who may call each gateway method.
pub const METHODS: &[(&str, Access)] = &[
    (
        "StreamTranscribe",
        Access::Member {
            api_scope: SCOPE_TRANSCRIBE,
        },
    ),
    (
        "Transcribe",
        Access::Member {
            api_scope: SCOPE_TRANSCRIBE,
        },
    ),
];

/// How long a verified API key is trusted from the Redis cache.
const API_KEY_CACHE: Duration = Duration::from_secs(60);

pub(crate) struct Gatekeeper {
    verifier: RwLock<Verifier>,
    revocations: Revocations,
    account: AccountServiceClient<Channel>,
    streams: Mutex<HashMap<u64, Watched>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Gatekeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gatekeeper").finish_non_exhaustive()
    }
}

struct Watched {
    principal: Principal,
    revoked_tx: tokio::sync::watch::Sender<bool>,
}

/// A live stream's registration; dropping it unregisters.
pub(crate) struct StreamWatch {
    gatekeeper: Arc<Gatekeeper>,
    id: u64,
    pub revoked: tokio::sync::watch::Receiver<bool>,
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.gatekeeper.streams.lock() {
            streams.remove(&self.id);
        }
    }
}

/// Copies the caller's credential headers for a call to the account service on its
/// behalf (so the account service derives the same tenant).
fn forwarded(metadata: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for key in ["authorization", auth::API_KEY_HEADER] {
        if let Some(value) = metadata.get(key) {
            out.insert(key, value.clone());
        }
    }
    out
}

async fn fetch_verifier(account: &mut AccountServiceClient<Channel>) -> Result<Verifier, Status> {
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

impl Gatekeeper {
    /// Connects to the account service (waiting up to `wait` for it to answer) and
    /// starts following revocation broadcasts.
    pub async fn start(
        account_url: &str,
        revocations: Revocations,
        nats: async_nats::Client,
        revocation_subject: String,
        wait: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        let channel = Channel::from_shared(account_url.to_string())
            .with_context(|| format!("account service url {account_url}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        let mut account = AccountServiceClient::new(channel);
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
        let gatekeeper = Arc::new(Self {
            verifier: RwLock::new(verifier),
            revocations,
            account,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let mut subscription = nats
            .subscribe(revocation_subject)
            .await
            .context("subscribing to revocations")?;
        let weak = Arc::downgrade(&gatekeeper);
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let Some(gatekeeper) = weak.upgrade() else {
                    return;
                };
                match serde_json::from_slice::<RevocationEvent>(&message.payload) {
                    Ok(event) => gatekeeper.revoke(&event),
                    Err(error) => warn!(%error, "malformed revocation event"),
                }
            }
        });
        // Key rotation: pick up new signing keys once a minute.
        let weak = Arc::downgrade(&gatekeeper);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(gatekeeper) = weak.upgrade() else {
                    return;
                };
                let mut account = gatekeeper.account.clone();
                if let Ok(verifier) = fetch_verifier(&mut account).await
                    && let Ok(mut current) = gatekeeper.verifier.write()
                {
                    *current = verifier;
                }
            }
        });
        Ok(gatekeeper)
    }

    /// Authenticates and authorizes the caller of `method`.
    pub async fn admit(&self, metadata: &MetadataMap, method: &str) -> Result<Principal, Status> {
        let rule = METHODS
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(_, rule)| *rule)
            .ok_or_else(|| Status::permission_denied("method not allowed"))?;
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

    /// Registers a live stream so a revocation can end it.
    pub fn watch(self: &Arc<Self>, principal: &Principal) -> StreamWatch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (revoked_tx, revoked) = tokio::sync::watch::channel(false);
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(
                id,
                Watched {
                    principal: principal.clone(),
                    revoked_tx,
                },
            );
        }
        StreamWatch {
            gatekeeper: self.clone(),
            id,
            revoked,
        }
    }

    /// Whether `principal` is still valid per Redis. When Redis cannot answer, a
    /// running stream continues (revocations still arrive over NATS).
    pub async fn still_valid(&self, principal: &Principal) -> bool {
        !matches!(self.revocations.is_revoked(principal).await, Ok(true))
    }

    fn revoke(&self, event: &RevocationEvent) {
        let Ok(streams) = self.streams.lock() else {
            return;
        };
        for watched in streams.values() {
            let p = &watched.principal;
            let hit = p.tenant_id == event.tenant_id
                && (event.user_id == Some(p.subject)
                    || (event.session_id.is_some() && event.session_id == p.session));
            if hit {
                info!(subject = %p.subject, "credentials revoked: ending the stream");
                let _ = watched.revoked_tx.send(true);
            }
        }
    }
}
