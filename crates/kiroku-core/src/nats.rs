//! The NATS layout of a Kiroku cluster: subjects, JetStream streams and KV buckets
//! (`shared/DESIGN.md`, "NATS layout"), and the code that creates them.
//!
//! Every name derives from one *cluster root* (default `kiroku`). The default root gives
//! exactly the names of the design (`AUDIO`, subjects `kiroku.audio.<tenant>.<session>`);
//! any other root prefixes every stream (`<ROOT>_AUDIO`) and subject (`<root>.audio…`), so
//! several clusters (or parallel tests) can share one NATS server without seeing each
//! other's jobs.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::Ordered, pull::OrderedConfig};
use async_nats::jetstream::{self, stream};
use futures::StreamExt as _;
use tracing::Instrument as _;

/// Where the services find NATS when `KIROKU_NATS_URL` is unset.
/// How long a dropped stream may be resumed (gateway and worker; `--resume-window-s`).
pub const DEFAULT_RESUME_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// The default cluster root.
pub const DEFAULT_ROOT: &str = "kiroku";

/// Retention and replication of the cluster's streams.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Replicas of every stream and bucket, 1 to 5: a NATS cluster of three servers
    /// needs 3 for Kiroku's data to survive losing one (`--nats-replicas`).
    pub replicas: usize,
    /// How long session audio stays in `AUDIO` (resume and failover replay from it).
    pub audio_max_age: Duration,
    /// How long finals stay in `TRANSCRIPTS` (storage persists them long before).
    pub transcripts_max_age: Duration,
    /// How long audit events stay in `AUDIT` (the audit service stores them for good).
    pub audit_max_age: Duration,
    /// Window in which a re-published frame or final (same message id) is dropped.
    pub duplicate_window: Duration,
    /// How long messages stay in `DEADLETTER` for an operator to look at and replay.
    pub dead_letter_max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            replicas: 1,
            audio_max_age: Duration::from_secs(2 * 3600),
            transcripts_max_age: Duration::from_secs(24 * 3600),
            audit_max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            dead_letter_max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Names of every subject, stream and bucket of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

/// NATS could not be reached or set up; the message says which step failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NatsError(pub String);

/// A name that cannot be a NATS subject token (empty, or containing `.`, `*`, `>`,
/// whitespace).
#[derive(Debug, thiserror::Error)]
#[error("{what} {value:?} is not a valid NATS subject token (letters, digits, '-' and '_')")]
pub struct InvalidToken {
    pub what: &'static str,
    pub value: String,
}

/// The worker pool that takes every session no route sends elsewhere.
pub const DEFAULT_POOL: &str = "default";

/// `close_reason` of a session that ended because its tenant erased its minutes
/// ([`Layout::erasure_subject`]); the gateway answers `ABORTED`.
pub const CLOSED_ERASED: &str = "erased";

/// Which worker pool takes a session, by the language the client asked for.
///
/// Workers run one model each and belong to one pool (`kiroku serve worker --pool`);
/// each pool has its own `SESSIONS` subject, `<root>.session.<pool>.<tenant>`, and
/// durable consumer. The gateway picks the pool from `KIROKU_SESSION_ROUTES`, a comma
/// list of `LANGUAGE=POOL` (`auto` is a stream that asked for detection, `*` any other
/// language), e.g. `en=english,*=multilingual` for tiny.en workers in pool `english`
/// and base workers in pool `multilingual`. Unrouted languages go to
/// [`DEFAULT_POOL`]. A pool nobody runs leaves its sessions queued until a worker of
/// that pool starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRoutes {
    routes: Vec<(String, String)>,
    fallback: String,
}

impl Default for SessionRoutes {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            fallback: DEFAULT_POOL.to_string(),
        }
    }
}

impl SessionRoutes {
    /// Parses `LANGUAGE=POOL,…` (empty: everything to the default pool).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut routes = Self::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((language, pool)) = entry.split_once('=') else {
                return Err(format!("route {entry:?} is not LANGUAGE=POOL"));
            };
            let (language, pool) = (language.trim(), pool.trim());
            check_token("pool", pool).map_err(|e| e.to_string())?;
            let well_formed = language == "*"
                || language == "auto"
                || ((2..=3).contains(&language.len())
                    && language.bytes().all(|b| b.is_ascii_lowercase()));
            if !well_formed {
                return Err(format!(
                    "route {entry:?}: {language:?} is not a language code, auto or *"
                ));
            }
            if language == "*" {
                routes.fallback = pool.to_string();
            } else if routes.routes.iter().any(|(l, _)| l == language) {
                return Err(format!("language {language:?} is routed twice"));
            } else {
                routes.routes.push((language.to_string(), pool.to_string()));
            }
        }
        Ok(routes)
    }

    /// The pool for a stream in `language` (empty or `auto`: detection).
    pub fn pool_for(&self, language: &str) -> &str {
        let language = if language.is_empty() {
            "auto"
        } else {
            language
        };
        self.routes
            .iter()
            .find(|(l, _)| l == language)
            .map_or(self.fallback.as_str(), |(_, pool)| pool.as_str())
    }
}

/// Checks that `value` can be one subject token: ids in subjects are built from these.
pub fn check_token(what: &'static str, value: &str) -> Result<(), InvalidToken> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidToken {
            what,
            value: value.to_string(),
        })
    }
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            root: DEFAULT_ROOT.to_string(),
        }
    }
}

impl Layout {
    /// The layout under `root` (`KIROKU_CLUSTER`); see the module documentation.
    pub fn new(root: &str) -> Result<Self, InvalidToken> {
        check_token("cluster root", root)?;
        Ok(Self {
            root: root.to_string(),
        })
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    fn stream_name(&self, base: &str) -> String {
        if self.root == DEFAULT_ROOT {
            base.to_string()
        } else {
            format!("{}_{base}", self.root.to_ascii_uppercase())
        }
    }

    /// Stream of 16 kHz audio frames, one subject per session.
    pub fn audio_stream(&self) -> String {
        self.stream_name("AUDIO")
    }
    /// Work queue of session jobs.
    pub fn sessions_stream(&self) -> String {
        self.stream_name("SESSIONS")
    }
    /// Stream of final results, one subject per session.
    pub fn transcripts_stream(&self) -> String {
        self.stream_name("TRANSCRIPTS")
    }
    /// Stream of audit events (`events.v1.AuditEvent`), one subject per tenant and action.
    pub fn audit_stream(&self) -> String {
        self.stream_name("AUDIT")
    }
    /// Messages a durable consumer gave up on (invalid, or failing on every delivery),
    /// each a copy of the original with headers saying where it came from and why.
    pub fn dead_letter_stream(&self) -> String {
        self.stream_name("DEADLETTER")
    }
    /// The dead letters of durable consumer `consumer`.
    pub fn dead_letter_subject(&self, consumer: &str) -> String {
        format!("{}.dead.{consumer}", self.root)
    }
    /// KV bucket of worker checkpoints, key = session id.
    pub fn checkpoints_bucket(&self) -> String {
        format!("{}-checkpoints", self.root)
    }
    /// KV bucket of erased tenants, key = tenant id, value = when (RFC 3339). It lives
    /// outside PostgreSQL on purpose: `kiroku admin restore` re-applies every erasure
    /// it lists to a restored backup, so an erased tenant never comes back.
    pub fn erasures_bucket(&self) -> String {
        format!("{}-erasures", self.root)
    }
    /// KV bucket of every tenant's audit chain head (seq and hash of its newest entry,
    /// with a MAC), key = tenant id: the chain's end anchored outside PostgreSQL, so
    /// deleting the newest entries or rewriting the whole chain shows.
    pub fn audit_heads_bucket(&self) -> String {
        format!("{}-audit-heads", self.root)
    }
    /// Durable consumer through which the workers of `pool` share its session jobs
    /// (`workers` for the default pool).
    pub fn workers_consumer(&self, pool: &str) -> String {
        if pool == DEFAULT_POOL {
            "workers".to_string()
        } else {
            format!("workers-{pool}")
        }
    }
    /// The subjects of `pool`'s session jobs: its workers' consumer filter.
    pub fn pool_sessions_filter(&self, pool: &str) -> String {
        format!("{}.session.{pool}.>", self.root)
    }

    pub fn audio_subject(&self, tenant: &str, session: &str) -> String {
        format!("{}.audio.{tenant}.{session}", self.root)
    }
    /// A session job for the workers of `pool` (see [`SessionRoutes`]).
    pub fn session_subject(&self, pool: &str, tenant: &str) -> String {
        format!("{}.session.{pool}.{tenant}", self.root)
    }
    pub fn transcript_subject(&self, tenant: &str, session: &str) -> String {
        format!("{}.transcript.{tenant}.{session}", self.root)
    }
    /// Core NATS (not persisted): unstable hypotheses.
    pub fn interim_subject(&self, tenant: &str, session: &str) -> String {
        format!("{}.interim.{tenant}.{session}", self.root)
    }
    /// Core NATS: a gateway says "this session's client is still here" (keep-alives
    /// while muted), so the worker does not close it as abandoned.
    pub fn presence_subject(&self, tenant: &str, session: &str) -> String {
        format!("{}.presence.{tenant}.{session}", self.root)
    }

    /// JetStream: one audit event; `action` is the dotted action name (`login.failed`).
    pub fn audit_subject(&self, tenant: &str, action: &str) -> String {
        format!("{}.audit.{tenant}.{action}", self.root)
    }
    /// Core NATS: the account service tells every gateway that a user's (or a whole
    /// tenant's) credentials were revoked, so their live streams end at once.
    pub fn revocation_subject(&self) -> String {
        format!("{}.account.revoked", self.root)
    }

    /// Core NATS: storage tells the workers that `tenant`'s minutes were erased, so
    /// the sessions running at that moment end without keeping anything more.
    pub fn erasure_subject(&self, tenant: &str) -> String {
        format!("{}.tenant.erased.{tenant}", self.root)
    }

    /// `Nats-Msg-Id` of an audio frame: JetStream drops a re-published duplicate.
    pub fn frame_msg_id(session: &str, seq: u64) -> String {
        format!("{session}:{seq}")
    }
    /// `Nats-Msg-Id` of a final result.
    pub fn result_msg_id(session: &str, result_seq: u64) -> String {
        format!("{session}:r{result_seq}")
    }

    /// Creates (or updates to this configuration) every stream and bucket, each with
    /// `retention.replicas` replicas.
    pub async fn ensure(
        &self,
        js: &jetstream::Context,
        retention: &Retention,
    ) -> Result<(), NatsError> {
        let file = stream::StorageType::File;
        let num_replicas = retention.replicas;
        js.create_or_update_stream(stream::Config {
            name: self.audio_stream(),
            subjects: vec![format!("{}.audio.>", self.root)],
            storage: file,
            num_replicas,
            max_age: retention.audio_max_age,
            duplicate_window: retention.duplicate_window,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError(format!("creating stream: {e}")))?;
        js.create_or_update_stream(stream::Config {
            name: self.sessions_stream(),
            subjects: vec![format!("{}.session.>", self.root)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: file,
            num_replicas,
            duplicate_window: retention.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError(format!("creating stream: {e}")))?;
        js.create_or_update_stream(stream::Config {
            name: self.transcripts_stream(),
            subjects: vec![format!("{}.transcript.>", self.root)],
            storage: file,
            num_replicas,
            max_age: retention.transcripts_max_age,
            duplicate_window: retention.duplicate_window,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError(format!("creating stream: {e}")))?;
        js.create_or_update_stream(stream::Config {
            name: self.audit_stream(),
            subjects: vec![format!("{}.audit.>", self.root)],
            storage: file,
            num_replicas,
            max_age: retention.audit_max_age,
            duplicate_window: retention.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError(format!("creating stream: {e}")))?;
        js.create_or_update_stream(stream::Config {
            name: self.dead_letter_stream(),
            subjects: vec![format!("{}.dead.>", self.root)],
            storage: file,
            num_replicas,
            max_age: retention.dead_letter_max_age,
            // `kiroku admin dead-letters` reads it message by message.
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError(format!("creating stream: {e}")))?;
        // A KV bucket is a stream named `KV_<bucket>` on `$KV.<bucket>.>` with one
        // message per subject. It is created as that stream (the settings async-nats'
        // `create_key_value` uses) because `create_key_value` first reads the account
        // info, whose reply from NATS 2.9 (Debian bookworm) async-nats 0.50 cannot parse.
        for (bucket, max_age) in [
            (self.checkpoints_bucket(), retention.audio_max_age),
            // Erasures and the audit chains' heads are kept for good.
            (self.erasures_bucket(), Duration::ZERO),
            (self.audit_heads_bucket(), Duration::ZERO),
        ] {
            js.create_or_update_stream(stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age,
                storage: file,
                num_replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError(format!("creating KV bucket {bucket}: {e}")))?;
        }
        Ok(())
    }

    /// Deletes every stream and bucket of this cluster (tests, `kiroku up --fresh`).
    pub async fn destroy(&self, js: &jetstream::Context) {
        for name in self.stream_names() {
            let _ = js.delete_stream(&name).await;
        }
    }

    /// Every stream of this cluster, buckets (`KV_<bucket>`) included.
    pub fn stream_names(&self) -> Vec<String> {
        vec![
            self.audio_stream(),
            self.sessions_stream(),
            self.transcripts_stream(),
            self.audit_stream(),
            self.dead_letter_stream(),
            format!("KV_{}", self.checkpoints_bucket()),
            format!("KV_{}", self.erasures_bucket()),
            format!("KV_{}", self.audit_heads_bucket()),
        ]
    }
}

/// Connects as `name` and makes sure the cluster's streams and buckets exist: what every
/// service but the gateway does first.
pub async fn connect_and_ensure(
    url: &str,
    name: &str,
    layout: &Layout,
    retention: &Retention,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    use anyhow::Context as _;
    let nats = connect(url, name)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))?;
    let js = jetstream::new(nats.clone());
    layout
        .ensure(&js, retention)
        .await
        .context("creating the JetStream streams")?;
    Ok((nats, js))
}

/// How often a durable consumer's state is read from NATS into its gauges.
const CONSUMER_STATE_EVERY: Duration = Duration::from_secs(5);

/// How long a durable consumer may keep retrying one message before its service says
/// it is not ready.
const STUCK_AFTER: Duration = Duration::from_secs(60);

/// Since when each durable consumer of this process has been retrying its current
/// message (absent: making progress).
fn retrying_since()
-> &'static std::sync::Mutex<std::collections::HashMap<&'static str, std::time::Instant>> {
    static SINCE: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<&'static str, std::time::Instant>>,
    > = std::sync::OnceLock::new();
    SINCE.get_or_init(Default::default)
}

fn progress(consumer: &'static str, retrying: bool) {
    if let Ok(mut since) = retrying_since().lock() {
        if retrying {
            since
                .entry(consumer)
                .or_insert_with(std::time::Instant::now);
        } else {
            since.remove(consumer);
        }
    }
}

/// Why `consumer` counts as stuck: it has retried its current message for more than a
/// minute (the database refuses it, or is down). `None` while it makes progress.
pub fn consumer_stuck(consumer: &'static str) -> Option<String> {
    let since = *retrying_since().lock().ok()?.get(consumer)?;
    let stuck = since.elapsed();
    (stuck > STUCK_AFTER).then(|| {
        format!(
            "the {consumer} consumer has retried one message for {} s",
            stuck.as_secs()
        )
    })
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a durable consumer's handler made of one message.
#[derive(Debug)]
pub enum Handled {
    /// Stored (or already stored): acknowledge.
    Done,
    /// Can never be stored (undecodable, invalid): moved to the dead-letter stream at
    /// once, not redelivered.
    Invalid(String),
    /// Not stored now (database down): redelivered with a growing delay, and moved to
    /// the dead-letter stream after [`MAX_DELIVER`] deliveries.
    Retry(String),
}

/// Deliveries of one message before a durable consumer gives up on it and moves it to
/// the dead-letter stream. With the redelivery delay doubling from 1 s up to 60 s this
/// is about 45 minutes: a database restart is ridden out, a poison message is not
/// retried forever (nor does it hold one of the consumer's pending slots forever).
pub const MAX_DELIVER: i64 = 50;
/// The longest wait before a failed message is delivered again.
const MAX_REDELIVERY_DELAY: Duration = Duration::from_secs(60);

/// Headers of a dead letter: why it is there and where it came from.
pub const DEAD_REASON_HEADER: &str = "Kiroku-Dead-Reason";
pub const DEAD_SUBJECT_HEADER: &str = "Kiroku-Dead-Subject";
pub const DEAD_DELIVERIES_HEADER: &str = "Kiroku-Dead-Deliveries";

/// The wait before delivery `delivered + 1` of a message that failed `delivered` times.
fn redelivery_delay(delivered: i64) -> Duration {
    let exponent = delivered.clamp(1, 7) as u32 - 1;
    Duration::from_secs(1u64 << exponent).min(MAX_REDELIVERY_DELAY)
}

/// Copies `message` to `consumer`'s dead-letter subject with `reason`; true once
/// JetStream stored the copy.
async fn dead_letter(
    js: &jetstream::Context,
    layout: &Layout,
    consumer: &'static str,
    message: &jetstream::Message,
    delivered: i64,
    reason: &str,
) -> bool {
    let mut headers = async_nats::HeaderMap::new();
    // Header values are one line of bounded size.
    headers.insert(
        DEAD_REASON_HEADER,
        crate::validate::sanitized(reason, 512).replace(['\n', '\t'], " "),
    );
    headers.insert(DEAD_SUBJECT_HEADER, message.subject.as_str());
    headers.insert(DEAD_DELIVERIES_HEADER, delivered.to_string().as_str());
    let stored = match js
        .publish_with_headers(
            layout.dead_letter_subject(consumer),
            headers,
            message.payload.clone(),
        )
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    if stored {
        crate::metrics::metrics().consumer_dead_letter(consumer);
        tracing::error!(
            consumer,
            subject = %message.subject,
            delivered,
            %reason,
            "message moved to the dead-letter stream"
        );
    }
    stored
}

/// True for a database error that redelivery cannot fix: a protocol error, or SQLSTATE
/// class 22 (data exception, e.g. a NUL byte in text) or 23 (integrity violation).
pub fn is_permanent_db_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}

/// Runs the durable pull consumer `name` of `stream` until the task is dropped (the
/// audit and storage services' way of storing everything exactly once): each message's
/// payload goes to `handle`, and it is acknowledged only once `handle` says it is
/// stored; redeliveries are the handler's to recognize (idempotent stores).
pub async fn consume_durable<F, Fut>(
    js: &jetstream::Context,
    layout: &Layout,
    stream: &str,
    name: &'static str,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(bytes::Bytes) -> Fut,
    Fut: std::future::Future<Output = Handled>,
{
    use jetstream::consumer::pull;
    crate::metrics::metrics().consumer_started(name);
    let consumer = js
        .get_stream(stream)
        .await?
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 1000,
                // A backstop only: this loop moves a message to the dead-letter stream
                // after MAX_DELIVER deliveries. The server stops at twice that should
                // the handler never answer (a message that crashes the process).
                max_deliver: 2 * MAX_DELIVER,
                ..Default::default()
            },
        )
        .await?;
    // The consumer's state as NATS sees it, for the lag and stuck-redelivery alerts;
    // stops with this function.
    let watched = consumer.clone();
    let _watch = AbortOnDrop(tokio::spawn(async move {
        loop {
            match watched.get_info().await {
                Ok(info) => crate::metrics::metrics().consumer_state(
                    name,
                    info.num_pending,
                    info.num_ack_pending as u64,
                    info.num_redelivered as u64,
                ),
                Err(error) => tracing::debug!(%error, consumer = name, "consumer info"),
            }
            tokio::time::sleep(CONSUMER_STATE_EVERY).await;
        }
    }));
    loop {
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, consumer = name, "consumer: retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, consumer = name, "consumer: message error");
                    break;
                }
            };
            let delivered = message.info().map_or(1, |info| info.delivered);
            // One CONSUMER span per message, continuing the publisher's trace.
            let span = tracing::info_span!(
                "consume",
                otel.name = %format!("{name} process"),
                otel.kind = "consumer",
                messaging.system = "nats",
                messaging.operation = "process",
                messaging.destination.name = %message.subject,
                messaging.consumer.group.name = name,
                messaging.message.delivery_count = delivered,
            );
            crate::trace::set_parent(&span, crate::trace::extract_nats(message.headers.as_ref()));
            let outcome = handle(message.payload.clone()).instrument(span).await;
            progress(name, matches!(outcome, Handled::Retry(_)));
            let given_up = match outcome {
                Handled::Done => {
                    if let Err(error) = message.ack().await {
                        tracing::warn!(%error, consumer = name, "ack failed; the message will be redelivered and skipped");
                    }
                    continue;
                }
                Handled::Invalid(problem) => format!("invalid: {problem}"),
                Handled::Retry(problem) if delivered >= MAX_DELIVER => {
                    format!("still failing after {delivered} deliveries: {problem}")
                }
                Handled::Retry(problem) => {
                    crate::metrics::metrics().consumer_retry(name);
                    let delay = redelivery_delay(delivered);
                    tracing::error!(%problem, consumer = name, delivered, retry_in_s = delay.as_secs(), "not stored; will be redelivered");
                    let _ = message.ack_with(jetstream::AckKind::Nak(Some(delay))).await;
                    continue;
                }
            };
            if dead_letter(js, layout, name, &message, delivered, &given_up).await {
                let _ = message.ack_with(jetstream::AckKind::Term).await;
            } else {
                // Not copied: keep the message and try again later.
                crate::metrics::metrics().consumer_retry(name);
                let _ = message
                    .ack_with(jetstream::AckKind::Nak(Some(MAX_REDELIVERY_DELAY)))
                    .await;
            }
        }
    }
}

/// The servers of a NATS URL list: `nats://a:4222,nats://b:4222` (one cluster).
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, NatsError> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| NatsError(format!("NATS URL {u:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|addrs| {
            if addrs.is_empty() {
                Err(NatsError("no NATS URL given".into()))
            } else {
                Ok(addrs)
            }
        })
}

/// Connects to NATS with the options every Kiroku process uses: a name for
/// monitoring, unlimited reconnects (a NATS restart is survived, and with a list of
/// servers the client moves to another one), and a bounded connection timeout so
/// start-up fails clearly when nothing listens. `url` may list several servers of one
/// cluster, comma-separated.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    let client = name.to_string();
    let connected = async_nats::ConnectOptions::new()
        .name(name)
        // A lost connection is a dependency outage: WARN, and `kiroku_nats_connected`.
        .event_callback(move |event| {
            let client = client.clone();
            async move {
                use async_nats::Event;
                match event {
                    Event::Connected => {
                        crate::metrics::metrics().nats_connected.set(1);
                        tracing::info!(client, "NATS connected");
                    }
                    Event::Disconnected => {
                        crate::metrics::metrics().nats_connected.set(0);
                        tracing::warn!(client, "NATS disconnected: reconnecting");
                    }
                    Event::ServerError(error) => {
                        tracing::warn!(client, %error, "NATS server error");
                    }
                    Event::ClientError(error) => {
                        tracing::warn!(client, %error, "NATS client error");
                    }
                    other => tracing::debug!(client, event = %other, "NATS event"),
                }
            }
        })
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(server_addrs(url)?)
        .await
        .map_err(|e| NatsError(e.to_string()))?;
    crate::metrics::metrics().nats_connected.set(1);
    Ok(connected)
}

/// How long one publish waits for JetStream's ack before it is retried.
const ACK_TIMEOUT: Duration = Duration::from_secs(4);
/// Publish attempts before giving up (about 15 s of back-off in all).
const PUBLISH_ATTEMPTS: usize = 8;

/// Waits for a publish ack, at most [`ACK_TIMEOUT`].
pub async fn await_ack(
    ack: jetstream::context::PublishAckFuture,
) -> Result<jetstream::publish::PublishAck, NatsError> {
    match tokio::time::timeout(ACK_TIMEOUT, ack.into_future()).await {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(error)) => Err(NatsError(error.to_string())),
        Err(_) => Err(NatsError("no ack from JetStream in time".into())),
    }
}

/// Publishes to JetStream until the message is stored: each attempt waits at most
/// [`ACK_TIMEOUT`] for the ack, attempts back off from 200 ms to 3 s, about 15 s in
/// all, which rides out a NATS restart. `message` must set a `Nats-Msg-Id`, so a
/// retry of a message that was stored after all is dropped as a duplicate.
/// `first` is the ack of an attempt the caller already sent (to keep publish order).
pub async fn publish_durable(
    js: &jetstream::Context,
    subject: &str,
    message: impl Fn() -> jetstream::message::PublishMessage,
    first: Option<Result<jetstream::context::PublishAckFuture, NatsError>>,
) -> Result<jetstream::publish::PublishAck, NatsError> {
    let mut delay = Duration::from_millis(200);
    let mut last = match first {
        Some(Ok(ack)) => match await_ack(ack).await {
            Ok(ack) => return Ok(ack),
            Err(error) => error,
        },
        Some(Err(error)) => error,
        None => NatsError("not sent yet".into()),
    };
    for attempt in 0..PUBLISH_ATTEMPTS {
        if attempt > 0 || !last.0.starts_with("not sent") {
            // Warned: a retry holds up the caller (a worker's session loop, a frame's
            // publish) for the ack timeout, which operators must be able to see.
            tracing::warn!(%subject, error = %last, attempt, "publish not acknowledged; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
        match js.send_publish(subject.to_string(), message()).await {
            Ok(ack) => match await_ack(ack).await {
                Ok(ack) => return Ok(ack),
                Err(error) => last = error,
            },
            Err(error) => last = NatsError(error.to_string()),
        }
    }
    Err(last)
}

/// Seconds since JetStream stored the message of `info` (by the server's clock, so a
/// clock difference between the hosts adds to it; never negative).
pub fn stored_age_seconds(info: &jetstream::message::Info<'_>) -> Option<f64> {
    let stored = info.published.unix_timestamp_nanos();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let age = i128::try_from(now).ok()? - stored;
    Some(age.max(0) as f64 / 1e9)
}

/// Follows one subject of a stream in order, from a start sequence, with an ordered
/// consumer that is re-created from the last delivered sequence whenever NATS loses it.
/// A server restart drops ephemeral consumers, and in a NATS cluster the server holding
/// the consumer (a single replica, whatever the stream's) may die while the client stays
/// connected to another; async-nats' ordered stream notices only after two missed 15 s
/// heartbeat windows (a minute), or not at all. So the follower also re-creates its
/// consumer as soon as the client has reconnected, and when nothing arrived for a few
/// seconds while the stream holds messages of the subject it has not delivered.
pub struct Follower {
    client: async_nats::Client,
    /// The client's connect count when the consumer was created.
    connects: u64,
    stream: jetstream::stream::Stream,
    subject: String,
    prefix: String,
    name: String,
    next_seq: u64,
    messages: Option<Ordered>,
    /// Paces the reconnect and stall checks. Kept here, not in `next`, so that a caller
    /// re-polling `next` in a `select!` loop does not restart it.
    checks: tokio::time::Interval,
    /// When a message last arrived (or the consumer was created).
    last_progress: tokio::time::Instant,
    /// Quiet time before the stream is asked whether messages are missing; doubles (up
    /// to `PROBE_MAX`) while the subject stays quiet, so idle followers cost little.
    probe_after: Duration,
}

/// How often a follower checks for a reconnect and for a stalled consumer.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Quiet time after which a follower asks the stream whether it is missing messages.
const PROBE_AFTER: Duration = Duration::from_secs(3);
/// The longest a quiet follower waits between two such questions.
const PROBE_MAX: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("subject", &self.subject)
            .field("consumer", &self.name)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl Follower {
    /// Follows `subject` from stream sequence `start_seq` (0: from the first message).
    /// Consumer names start with `prefix` (for operators reading consumer lists).
    pub async fn new(
        client: async_nats::Client,
        stream: jetstream::stream::Stream,
        subject: String,
        prefix: &str,
        start_seq: u64,
    ) -> Result<Self, NatsError> {
        let mut checks = tokio::time::interval(CHECK_EVERY);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut follower = Self {
            client,
            connects: 0,
            stream,
            subject,
            prefix: prefix.to_string(),
            name: String::new(),
            next_seq: start_seq,
            messages: None,
            checks,
            last_progress: tokio::time::Instant::now(),
            probe_after: PROBE_AFTER,
        };
        follower.messages = Some(follower.open().await?);
        Ok(follower)
    }

    fn connects(&self) -> u64 {
        self.client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn open(&mut self) -> Result<Ordered, NatsError> {
        self.connects = self.connects();
        self.last_progress = tokio::time::Instant::now();
        self.probe_after = PROBE_AFTER;
        self.name = format!("{}_{}", self.prefix, uuid::Uuid::new_v4().simple());
        let deliver_policy = if self.next_seq > 0 {
            DeliverPolicy::ByStartSequence {
                start_sequence: self.next_seq,
            }
        } else {
            DeliverPolicy::All
        };
        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                name: Some(self.name.clone()),
                filter_subject: self.subject.clone(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError(format!("following {}: {e}", self.subject)))?;
        consumer
            .messages()
            .await
            .map_err(|e| NatsError(format!("following {}: {e}", self.subject)))
    }

    /// The next message. Waits (and re-creates the consumer) through NATS outages;
    /// cancel-safe, so it can sit in `select!`.
    pub async fn next(&mut self) -> jetstream::Message {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match self.open().await {
                    Ok(messages) => self.messages = Some(messages),
                    Err(error) => {
                        tracing::debug!(%error, "re-creating a consumer failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            };
            let next = tokio::select! {
                // A delivered message wins over a check that happens to be due.
                biased;
                next = messages.next() => next,
                _ = self.checks.tick() => {
                    if self.connects() != self.connects {
                        tracing::info!(subject = %self.subject, "NATS reconnected; re-creating the consumer");
                    } else if self.last_progress.elapsed() < self.probe_after || !self.stalled().await {
                        continue;
                    } else {
                        tracing::warn!(subject = %self.subject, next_seq = self.next_seq, "the consumer delivers nothing while the stream has more (its server lost?); re-creating it");
                    }
                    self.messages = None;
                    let _ = self.stream.delete_consumer(&self.name).await;
                    continue;
                }
            };
            match next {
                Some(Ok(message)) => {
                    if let Ok(info) = message.info() {
                        self.next_seq = info.stream_sequence + 1;
                    }
                    self.last_progress = tokio::time::Instant::now();
                    self.probe_after = PROBE_AFTER;
                    return message;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, subject = %self.subject, "consumer lost; re-creating it");
                }
                None => {
                    tracing::warn!(subject = %self.subject, "consumer ended; re-creating it");
                }
            }
            self.messages = None;
            let _ = self.stream.delete_consumer(&self.name).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Quiet for `probe_after`: true when the stream holds a message of the subject at or
    /// after `next_seq` (the consumer should have delivered it by now). When it holds
    /// none, asks again after twice as long; when it cannot say (no stream leader during
    /// an election, NATS unreachable), after `PROBE_AFTER`.
    async fn stalled(&mut self) -> bool {
        let last = self
            .stream
            .get_last_raw_message_by_subject(&self.subject)
            .await;
        let missing = matches!(&last, Ok(last) if last.sequence >= self.next_seq.max(1));
        if !missing {
            self.last_progress = tokio::time::Instant::now();
            let answered = match &last {
                Ok(_) => true,
                Err(error) => {
                    error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                }
            };
            self.probe_after = if answered {
                (self.probe_after * 2).min(PROBE_MAX)
            } else {
                PROBE_AFTER
            };
        }
        missing
    }

    /// Deletes the consumer now (it would otherwise expire after 30 s of inactivity).
    pub async fn close(mut self) {
        self.messages = None;
        let _ = self.stream.delete_consumer(&self.name).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_back_off_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| redelivery_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let total: u64 = (1..MAX_DELIVER)
            .map(|n| redelivery_delay(n).as_secs())
            .sum();
        assert!((40 * 60..=50 * 60).contains(&total), "{total} s of retries");
    }

    /// A database error that no retry can fix (bad data, a broken constraint) versus
    /// one that passes (connection lost).
    #[test]
    fn data_errors_are_permanent() {
        assert!(is_permanent_db_error(&sqlx::Error::Protocol("x".into())));
        assert!(!is_permanent_db_error(&sqlx::Error::PoolTimedOut));
    }

    #[test]
    fn default_root_gives_the_design_names() {
        let layout = Layout::default();
        assert_eq!(layout.audio_stream(), "AUDIO");
        assert_eq!(layout.sessions_stream(), "SESSIONS");
        assert_eq!(layout.transcripts_stream(), "TRANSCRIPTS");
        assert_eq!(layout.checkpoints_bucket(), "kiroku-checkpoints");
        assert_eq!(layout.audio_subject("t1", "s1"), "kiroku.audio.t1.s1");
        assert_eq!(
            layout.session_subject(DEFAULT_POOL, "t1"),
            "kiroku.session.default.t1"
        );
        assert_eq!(layout.workers_consumer(DEFAULT_POOL), "workers");
        assert_eq!(layout.workers_consumer("ja"), "workers-ja");
        assert_eq!(layout.pool_sessions_filter("ja"), "kiroku.session.ja.>");
        assert_eq!(Layout::frame_msg_id("s1", 7), "s1:7");
    }

    #[test]
    fn other_roots_prefix_everything() {
        let layout = Layout::new("test_42").expect("valid root");
        assert_eq!(layout.audio_stream(), "TEST_42_AUDIO");
        assert_eq!(layout.interim_subject("t", "s"), "test_42.interim.t.s");
    }

    #[test]
    fn sessions_are_routed_by_language() {
        let routes = SessionRoutes::parse("en=english, auto=multi,*=multi").expect("valid");
        assert_eq!(routes.pool_for("en"), "english");
        assert_eq!(routes.pool_for(""), "multi");
        assert_eq!(routes.pool_for("auto"), "multi");
        assert_eq!(routes.pool_for("ja"), "multi");
        let routes = SessionRoutes::parse("ja=base").expect("valid");
        assert_eq!(routes.pool_for("ja"), "base");
        assert_eq!(routes.pool_for("en"), DEFAULT_POOL);
        assert_eq!(
            SessionRoutes::parse("").expect("empty"),
            SessionRoutes::default()
        );
        for bad in ["ja", "ja=", "ja=a.b", "english=x", "ja=a,ja=b", "=x"] {
            assert!(SessionRoutes::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tokens_are_checked() {
        for bad in ["", "a.b", "a*", ">", "a b", &"x".repeat(129)] {
            assert!(check_token("id", bad).is_err(), "{bad:?} accepted");
        }
        check_token("id", "Tenant-1_a").expect("valid token");
    }
}
