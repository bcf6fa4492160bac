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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use kiroku_auth::auth::{Access, Principal, RevocationEvent, Revocations, SCOPE_TRANSCRIBE};
use kiroku_auth::checker::Checker;
use tonic::Status;
use tonic::metadata::MetadataMap;
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

pub(crate) struct Gatekeeper {
    checker: Arc<Checker>,
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
    ended_tx: tokio::sync::watch::Sender<Option<Ended>>,
}

/// Why a live stream must end now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The caller's credentials were revoked.
    Revoked,
    /// The caller's tenant erased its minutes.
    Erased,
}

/// A live stream's registration; dropping it unregisters.
pub(crate) struct StreamWatch {
    gatekeeper: Arc<Gatekeeper>,
    id: u64,
    pub ended: tokio::sync::watch::Receiver<Option<Ended>>,
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.gatekeeper.streams.lock() {
            streams.remove(&self.id);
        }
    }
}

impl Gatekeeper {
    /// Connects to the account service (waiting up to `wait` for it to answer) and
    /// starts following revocation broadcasts and erasure notices.
    pub async fn start(
        account_url: &str,
        revocations: Revocations,
        nats: async_nats::Client,
        layout: &kiroku_core::nats::Layout,
        wait: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        let checker = Checker::connect(account_url, revocations, wait).await?;
        let gatekeeper = Arc::new(Self {
            checker,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let mut subscription = nats
            .subscribe(layout.revocation_subject())
            .await
            .context("subscribing to revocations")?;
        let mut erasures = nats
            .subscribe(layout.erasure_subject("*"))
            .await
            .context("subscribing to erasure notices")?;
        let weak = Arc::downgrade(&gatekeeper);
        tokio::spawn(async move {
            while let Some(message) = erasures.next().await {
                let Some(gatekeeper) = weak.upgrade() else {
                    return;
                };
                // The subject's last token is the tenant id (simple form).
                let tenant = message.subject.rsplit('.').next().unwrap_or_default();
                gatekeeper.end_tenant(tenant);
            }
        });
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
        Ok(gatekeeper)
    }

    /// Authenticates and authorizes the caller of `method`.
    pub async fn admit(&self, metadata: &MetadataMap, method: &str) -> Result<Principal, Status> {
        let rule = METHODS
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(_, rule)| *rule)
            .ok_or_else(|| Status::permission_denied("method not allowed"))?;
        self.checker.admit(metadata, rule).await
    }

    /// See [`Checker::account_ready`].
    pub async fn account_ready(&self) -> Result<(), String> {
        self.checker.account_ready().await
    }

    /// See [`Checker::check_consent`].
    pub async fn check_consent(
        &self,
        metadata: &MetadataMap,
        meeting_id: &str,
    ) -> Result<(), Status> {
        self.checker.check_consent(metadata, meeting_id).await
    }

    /// See [`Checker::still_valid`].
    pub async fn still_valid(&self, principal: &Principal) -> bool {
        self.checker.still_valid(principal).await
    }

    /// Registers a live stream so a revocation can end it.
    pub fn watch(self: &Arc<Self>, principal: &Principal) -> StreamWatch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (ended_tx, ended) = tokio::sync::watch::channel(None);
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(
                id,
                Watched {
                    principal: principal.clone(),
                    ended_tx,
                },
            );
        }
        StreamWatch {
            gatekeeper: self.clone(),
            id,
            ended,
        }
    }

    /// The tenant erased its minutes: its live streams end.
    fn end_tenant(&self, tenant: &str) {
        let Ok(streams) = self.streams.lock() else {
            return;
        };
        for watched in streams.values() {
            if watched.principal.tenant_id.simple().to_string() == tenant {
                info!(subject = %watched.principal.subject, "tenant erased: ending the stream");
                let _ = watched.ended_tx.send(Some(Ended::Erased));
            }
        }
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
                let _ = watched.ended_tx.send(Some(Ended::Revoked));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deny by default: every RPC of the gateway has exactly one access rule.
    #[test]
    fn control_9_2_2_every_method_has_an_access_rule() {
        let methods = kiroku_proto::method_names("kiroku.transcribe.v1.Transcription");
        assert!(methods.len() >= 2, "{methods:?}");
        let problems =
            kiroku_auth::auth::access_table_problems("kiroku.transcribe.v1.Transcription", METHODS);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
