//! Publishing audit events (`events.v1.AuditEvent`) to JetStream `AUDIT`.
//!
//! Every service that performs something a customer must be able to see later (sign-ins,
//! role changes, API keys, consent, streams) emits one event through [`AuditEmitter`].
//! The event id doubles as the `Nats-Msg-Id`, so a retried publish is stored once; the
//! audit service (its own issue) de-duplicates on it too.

use std::collections::HashMap;
use std::time::SystemTime;

use async_nats::jetstream;
use kiroku_proto::events::v1::{ActorKind, AuditEvent, Outcome};
use prost::Message as _;

use crate::nats::{Layout, NatsError, publish_durable};

/// Who performed an audited action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: String,
    pub kind: ActorKind,
    /// Who that is for a reader of the log, as it was when the event happened (a
    /// user's e-mail, an API key's name); recorded as the detail `actor`.
    pub name: String,
}

impl Actor {
    fn of(id: impl ToString, kind: ActorKind) -> Self {
        Self {
            id: id.to_string(),
            kind,
            name: String::new(),
        }
    }
    pub fn user(id: impl ToString) -> Self {
        Self::of(id, ActorKind::User)
    }
    pub fn api_key(id: impl ToString) -> Self {
        Self::of(id, ActorKind::ApiKey)
    }
    /// The service operator (notices).
    pub fn operator() -> Self {
        Self::of("operator", ActorKind::Operator)
    }
    /// Someone not yet identified (a failed sign-in), or the service itself.
    pub fn system() -> Self {
        Self::of("system", ActorKind::System)
    }
    /// The actor with its readable name (see [`Actor::name`]).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// One audited action, built by the service and sent with [`AuditEmitter::emit`].
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub tenant_id: String,
    pub actor: Actor,
    /// Dotted action name, e.g. `login.failed`; one NATS subject token per part.
    pub action: &'static str,
    pub target: String,
    pub success: bool,
    pub source_ip: String,
    pub details: HashMap<String, String>,
}

impl AuditRecord {
    pub fn new(tenant_id: impl ToString, actor: Actor, action: &'static str) -> Self {
        Self {
            tenant_id: tenant_id.to_string(),
            actor,
            action,
            target: String::new(),
            success: true,
            source_ip: String::new(),
            details: HashMap::new(),
        }
    }
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = target.into();
        self
    }
    pub fn failed(mut self) -> Self {
        self.success = false;
        self
    }
    pub fn source_ip(mut self, ip: impl Into<String>) -> Self {
        self.source_ip = ip.into();
        self
    }
    pub fn detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

/// The detail holding the actor's readable name ([`Actor::name`]).
pub const ACTOR_DETAIL: &str = "actor";

/// Bytes kept of an event's target, and of each detail value.
pub const MAX_TARGET_BYTES: usize = 512;
pub const MAX_DETAIL_BYTES: usize = 1024;
/// Details kept per event.
pub const MAX_DETAILS: usize = 32;

/// Makes `event` storable whatever its strings hold: control characters (NUL would
/// make PostgreSQL refuse the row, and redelivery would never fix it) become U+FFFD and
/// every field is cut to a bounded size. A hostile string is still recorded, harmlessly:
/// the audit log shows what was tried. Applied when an event is emitted and again when
/// the audit service stores one.
pub fn sanitize(event: &mut AuditEvent) {
    use crate::validate::sanitized;
    for (field, max) in [
        (&mut event.event_id, 64),
        (&mut event.tenant_id, 64),
        (&mut event.actor_id, 128),
        (&mut event.action, 128),
        (&mut event.target, MAX_TARGET_BYTES),
        (&mut event.source_ip, 64),
        (&mut event.user_agent, 256),
        (&mut event.trace_id, 64),
    ] {
        *field = sanitized(field, max);
    }
    if event.details.len() > MAX_DETAILS
        || event.details.iter().any(|(k, v)| {
            k.len() > 64
                || v.len() > MAX_DETAIL_BYTES
                || k.contains(char::is_control)
                || v.contains(char::is_control)
        })
    {
        let mut details: Vec<(String, String)> =
            std::mem::take(&mut event.details).into_iter().collect();
        details.sort();
        event.details = details
            .into_iter()
            .take(MAX_DETAILS)
            .map(|(k, v)| (sanitized(&k, 64), sanitized(&v, MAX_DETAIL_BYTES)))
            .collect();
    }
}

/// Publishes audit events of one cluster.
#[derive(Debug, Clone)]
pub struct AuditEmitter {
    js: jetstream::Context,
    layout: Layout,
}

impl AuditEmitter {
    pub fn new(js: jetstream::Context, layout: Layout) -> Self {
        Self { js, layout }
    }

    /// Publishes `record` and waits until JetStream stored it (retrying through a NATS
    /// outage for a while). Returns the event id.
    pub async fn emit(&self, record: AuditRecord) -> Result<String, NatsError> {
        let event_id = uuid::Uuid::new_v4().simple().to_string();
        let event = AuditEvent {
            event_id: event_id.clone(),
            tenant_id: record.tenant_id.clone(),
            occurred_at: Some(prost_types::Timestamp::from(SystemTime::now())),
            actor_id: record.actor.id,
            actor_kind: record.actor.kind as i32,
            action: record.action.to_string(),
            target: record.target,
            outcome: if record.success {
                Outcome::Success
            } else {
                Outcome::Failure
            } as i32,
            source_ip: record.source_ip,
            user_agent: String::new(),
            details: {
                let mut details = record.details;
                if !record.actor.name.is_empty() {
                    details
                        .entry(ACTOR_DETAIL.to_string())
                        .or_insert(record.actor.name);
                }
                details
            },
            trace_id: crate::trace::trace_id(&tracing::Span::current()).unwrap_or_default(),
        };
        let mut event = event;
        sanitize(&mut event);
        let subject = self.layout.audit_subject(&record.tenant_id, record.action);
        let payload = bytes::Bytes::from(event.encode_to_vec());
        // The audit service's append continues the caller's trace.
        let mut headers = async_nats::HeaderMap::new();
        crate::trace::inject_nats(&tracing::Span::current(), &mut headers);
        let message = || {
            jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(&event_id)
                .headers(headers.clone())
        };
        publish_durable(&self.js, &subject, message, None).await?;
        Ok(event_id)
    }

    /// Emits without making the caller wait or fail: a lost NATS connection must not
    /// fail a sign-in, but the loss is logged loudly. The event keeps the caller's
    /// trace (its `trace_id`, and the audit append's parent).
    pub fn spawn_emit(&self, record: AuditRecord) {
        use tracing::Instrument as _;
        let emitter = self.clone();
        tokio::spawn(
            async move {
                let action = record.action;
                if let Err(error) = emitter.emit(record).await {
                    tracing::error!(action, %error, "audit event not published");
                }
            }
            .instrument(tracing::Span::current()),
        );
    }
}

/// The one list of audited actions. Every emitted event uses one of these names; the
/// audit service's tests check each appears exactly once when performed.
/// The tenant id of the service operator's own audit log (the nil UUID, simple form):
/// refused operator calls, which belong to no tenant. Read with
/// `kiroku admin audit list --operator` (the operator token).
pub const OPERATOR_LOG: &str = "00000000000000000000000000000000";

pub mod actions {
    pub const TENANT_REGISTERED: &str = "tenant.registered";
    pub const LOGIN_SUCCEEDED: &str = "login.succeeded";
    pub const LOGIN_FAILED: &str = "login.failed";
    pub const LOGIN_THROTTLED: &str = "login.throttled";
    pub const LOGOUT: &str = "logout";
    pub const TOKEN_REUSE_DETECTED: &str = "token.reuse_detected";
    pub const PASSWORD_CHANGED: &str = "password.changed";
    pub const MFA_ENROLLED: &str = "mfa.enrolled";
    pub const MFA_USED: &str = "mfa.used";
    pub const MFA_FAILED: &str = "mfa.failed";
    pub const USER_INVITED: &str = "user.invited";
    pub const USER_JOINED: &str = "user.joined";
    pub const USER_DISABLED: &str = "user.disabled";
    pub const USER_DELETED: &str = "user.deleted";
    pub const ROLE_CHANGED: &str = "role.changed";
    pub const APIKEY_CREATED: &str = "apikey.created";
    pub const APIKEY_REVOKED: &str = "apikey.revoked";
    pub const CONSENT_POLICY_CHANGED: &str = "consent.policy_changed";
    pub const CONSENT_PARTICIPANTS_SET: &str = "consent.participants_set";
    pub const CONSENT_GIVEN: &str = "consent.given";
    pub const STREAM_STARTED: &str = "stream.started";
    pub const STREAM_REFUSED: &str = "stream.refused";
    pub const STREAM_ENDED: &str = "stream.ended";
    pub const NOTICE_PUBLISHED: &str = "notice.published";
    pub const MEETING_EXPORTED: &str = "meeting.exported";
    pub const LABEL_ADDED: &str = "label.added";
    pub const LABEL_REMOVED: &str = "label.removed";
    pub const TENANT_EXPORTED: &str = "tenant.exported";
    pub const TENANT_IMPORTED: &str = "tenant.imported";
    pub const TENANT_ERASED: &str = "tenant.erased";
    /// The operator's log ([`super::OPERATOR_LOG`]): a call with a wrong or missing
    /// operator token, and the first call refused in a minute of throttling.
    pub const OPERATOR_REFUSED: &str = "operator.refused";
    pub const OPERATOR_THROTTLED: &str = "operator.throttled";

    pub const ALL: &[&str] = &[
        TENANT_REGISTERED,
        LOGIN_SUCCEEDED,
        LOGIN_FAILED,
        LOGIN_THROTTLED,
        LOGOUT,
        TOKEN_REUSE_DETECTED,
        PASSWORD_CHANGED,
        MFA_ENROLLED,
        MFA_USED,
        MFA_FAILED,
        USER_INVITED,
        USER_JOINED,
        USER_DISABLED,
        USER_DELETED,
        ROLE_CHANGED,
        APIKEY_CREATED,
        APIKEY_REVOKED,
        CONSENT_POLICY_CHANGED,
        CONSENT_PARTICIPANTS_SET,
        CONSENT_GIVEN,
        STREAM_STARTED,
        STREAM_REFUSED,
        STREAM_ENDED,
        NOTICE_PUBLISHED,
        MEETING_EXPORTED,
        LABEL_ADDED,
        LABEL_REMOVED,
        TENANT_EXPORTED,
        TENANT_IMPORTED,
        TENANT_ERASED,
    ];
}
