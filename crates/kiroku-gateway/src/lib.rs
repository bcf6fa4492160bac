//! The public gRPC gateway: `kiroku.transcribe.v1.Transcription`.
//!
//! Stateless by design: everything a stream needs lives in NATS (audio in `AUDIO`, the
//! job in `SESSIONS`, finals in `TRANSCRIPTS`), so any replica can serve any stream and
//! resume a dropped one. Per stream the gateway validates the client's audio, converts
//! it to 16 kHz mono, publishes it frame by frame (acknowledging each frame to the
//! client only once JetStream has stored it) and relays the worker's results.
//!
//! Limits (also in the proto header and docs/live-streaming.md): see [`Limits`].

mod access;
mod admission;
mod error;
pub mod forward;
mod queue;
mod resample;
pub mod settings;
mod stream;
mod token;
mod unary;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use kiroku_core::nats::{Layout, Retention};
use kiroku_proto::transcribe::v1::transcription_server::{Transcription, TranscriptionServer};
use kiroku_proto::transcribe::v1::{
    StreamTranscribeRequest, StreamTranscribeResponse, TranscribeRequest, TranscribeResponse,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

/// Counts and logs a stream or file refused before it began, by reason (never the
/// credential: status messages do not carry it).
pub(crate) fn stream_refused(status: &Status) {
    use tonic::Code;
    let reason = match status.code() {
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission",
        Code::ResourceExhausted => "quota",
        Code::FailedPrecondition => "consent",
        Code::InvalidArgument | Code::OutOfRange => "invalid",
        Code::DeadlineExceeded => "timeout",
        Code::Unavailable => "unavailable",
        Code::Cancelled => "cancelled",
        _ => "other",
    };
    kiroku_core::metrics::metrics().stream_refused(reason);
    tracing::info!(reason, code = ?status.code(), message = status.message(), "stream refused");
}

pub use access::METHODS;
pub use admission::{Quotas, Rate};
pub use error::WORKER_FAILED;
pub use resample::{OUTPUT_RATE_HZ, SUPPORTED_RATES_HZ};
pub use settings::GatewaySettings;
pub use token::{ResumeClaim, ResumeKeys};

/// Default gRPC address (what `kiroku stream` connects to by default).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default admin HTTP address (`/healthz`, `/readyz`, `/metrics`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

/// Public limits, enforced per stream and documented in the proto and docs/live-streaming.md.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest audio frame.
    pub max_frame: Duration,
    /// Largest frame in bytes.
    pub max_frame_bytes: usize,
    /// Longest stream (audio time).
    pub max_stream_audio: Duration,
    /// Longest time without any client message (send `keep_alive` while muted).
    pub idle_timeout: Duration,
    /// Largest unary `Transcribe` request.
    pub max_file_bytes: usize,
    /// Vocabulary plus prompt, in characters.
    pub max_prompt_chars: usize,
    /// Longest time one stream connection stays open (`KIROKU_MAX_STREAM_WALL_S`),
    /// audio or not.
    pub max_stream_wall: Duration,
    /// Most client messages a stream may send in one second (frames, keep-alives,
    /// bookmarks together).
    pub max_messages_per_second: u32,
    /// Most bookmarks one stream connection may send.
    pub max_bookmarks: u32,
    /// Shortest audio frame; only the last frame before the end may be shorter.
    pub min_frame: Duration,
}

/// How long a live session may wait for a worker before it is refused
/// (`--queue-timeout-s`).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: Duration::from_millis(200),
            max_frame_bytes: 64 * 1024,
            max_stream_audio: Duration::from_secs(4 * 3600),
            idle_timeout: Duration::from_secs(30),
            max_file_bytes: 64 * 1024 * 1024,
            max_prompt_chars: 1024,
            max_stream_wall: Duration::from_secs(4 * 3600),
            max_messages_per_second: 200,
            max_bookmarks: 500,
            min_frame: Duration::from_millis(10),
        }
    }
}

/// Everything a gateway replica needs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub nats_url: String,
    pub layout: Layout,
    pub retention: Retention,
    /// Shared by every gateway of a cluster (resume tokens are HMACs under it).
    pub resume_keys: ResumeKeys,
    /// How long a session waits for a dropped client to come back. The worker
    /// enforces it; the gateway reports it in `SessionInfo`.
    pub resume_window: Duration,
    pub limits: Limits,
    /// How long a gateway waits, at most, for a file transcription's results.
    pub transcribe_timeout: Duration,
    /// How long a live session may wait for a worker to take it (every worker at
    /// capacity) before the stream is refused with `RESOURCE_EXHAUSTED`.
    pub queue_timeout: Duration,
    /// The account service (token keys, API keys, consent); its public API is also
    /// forwarded ([`forward`]).
    pub account_url: String,
    /// The audit service, whose public API (audit log, usage, notices) the gateway
    /// forwards; `None`: not forwarded (`UNIMPLEMENTED`).
    pub audit_url: Option<String>,
    /// The storage service, whose public API (minutes, search, labels, exports) the
    /// gateway forwards; `None`: not forwarded.
    pub storage_url: Option<String>,
    /// Redis: revocations, the API-key cache, quotas and rate limits.
    pub redis_url: String,
    pub quotas: Quotas,
    /// Which worker pool takes a session, by its language.
    pub routes: kiroku_core::nats::SessionRoutes,
    /// Proxies in front of the gateway (an ingress) whose `x-forwarded-for` names the
    /// client; empty: the connection's address is the client.
    pub trusted_proxies: kiroku_auth::proxy::TrustedProxies,
    /// Serve gRPC server reflection on the public port (`KIROKU_GATEWAY_REFLECTION`);
    /// off by default: it hands anyone the schema of every API behind the gateway.
    pub reflection: bool,
}

impl GatewayConfig {
    pub fn new(
        nats_url: impl Into<String>,
        layout: Layout,
        resume_keys: ResumeKeys,
        account_url: impl Into<String>,
    ) -> Self {
        Self {
            account_url: account_url.into(),
            audit_url: None,
            storage_url: None,
            redis_url: kiroku_auth::DEFAULT_REDIS_URL.into(),
            quotas: Quotas::default(),
            routes: Default::default(),
            trusted_proxies: kiroku_auth::proxy::TrustedProxies::parse("").unwrap_or_default(),
            reflection: false,
            nats_url: nats_url.into(),
            layout,
            retention: Retention::default(),
            resume_keys,
            resume_window: kiroku_core::nats::DEFAULT_RESUME_WINDOW,
            limits: Limits::default(),
            transcribe_timeout: Duration::from_secs(600),
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        }
    }
}

/// Shared state of the service: one NATS connection for all streams.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: GatewayConfig,
    nats: async_nats::Client,
    js: jetstream::Context,
    audio: jetstream::stream::Stream,
    transcripts: jetstream::stream::Stream,
    gatekeeper: Arc<access::Gatekeeper>,
    admission: Arc<admission::Admission>,
    audit: kiroku_core::audit::AuditEmitter,
    /// Where live bookmarks are stored (the caller's own credentials go along).
    storage: Option<
        kiroku_proto::storage::v1::storage_client::StorageClient<
            kiroku_core::grpc_metrics::MeteredChannel,
        >,
    >,
    /// Room for decoding files at once ([`unary::DECODE_BUDGET_BYTES`]), in MiB.
    decode_budget: tokio::sync::Semaphore,
}

impl Gateway {
    /// Connects to NATS and makes sure the cluster's streams exist.
    pub async fn connect(config: GatewayConfig) -> anyhow::Result<Self> {
        let nats = kiroku_core::nats::connect(&config.nats_url, "kiroku-gateway")
            .await
            .with_context(|| format!("connecting to NATS at {}", config.nats_url))?;
        let js = jetstream::new(nats.clone());
        config
            .layout
            .ensure(&js, &config.retention)
            .await
            .context("creating the JetStream streams")?;
        let audio = js.get_stream(config.layout.audio_stream()).await?;
        let transcripts = js.get_stream(config.layout.transcripts_stream()).await?;
        let redis = kiroku_auth::auth::connect_redis(&config.redis_url).await?;
        let prefix = kiroku_auth::redis_prefix(&config.layout);
        let revocations = kiroku_auth::auth::Revocations::new(
            redis.clone(),
            &prefix,
            kiroku_auth::ACCESS_TOKEN_LIFETIME,
        );
        let gatekeeper = access::Gatekeeper::start(
            &config.account_url,
            revocations,
            nats.clone(),
            &config.layout,
            Duration::from_secs(30),
        )
        .await?;
        let admission = admission::Admission::new(redis, &prefix, config.quotas.clone());
        let audit = kiroku_core::audit::AuditEmitter::new(js.clone(), config.layout.clone());
        let storage = match &config.storage_url {
            Some(url) => Some(
                kiroku_proto::storage::v1::storage_client::StorageClient::new(
                    kiroku_core::grpc_metrics::metered(
                        tonic::transport::Endpoint::from_shared(url.clone())
                            .with_context(|| format!("storage URL {url:?}"))?
                            .connect_timeout(Duration::from_secs(3))
                            .connect_lazy(),
                    ),
                ),
            ),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Shared {
                storage,
                config,
                nats,
                js,
                audio,
                transcripts,
                gatekeeper,
                admission,
                audit,
                decode_budget: unary::decode_budget(),
            }),
        })
    }

    /// `Ok` while every dependency of a stream answers: NATS, Redis (quotas,
    /// revocations) and the account service (credentials, consent).
    pub async fn readiness(&self) -> kiroku_core::admin::Readiness {
        kiroku_core::admin::nats_ready(&self.inner.nats)?;
        self.inner.admission.redis_ready().await?;
        self.inner.gatekeeper.account_ready().await
    }
}

type ResponseStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<StreamTranscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Transcription for Gateway {
    type StreamTranscribeStream = ResponseStream;

    async fn stream_transcribe(
        &self,
        request: Request<Streaming<StreamTranscribeRequest>>,
    ) -> Result<Response<Self::StreamTranscribeStream>, Status> {
        // Refusals before the stream starts are counted here; those inside the
        // stream's loop where they happen.
        stream::start(self.inner.clone(), request)
            .await
            .map_err(Status::from)
            .inspect_err(|status| {
                kiroku_core::metrics::metrics().error(status.code());
                stream_refused(status);
            })
    }

    async fn transcribe(
        &self,
        request: Request<TranscribeRequest>,
    ) -> Result<Response<TranscribeResponse>, Status> {
        unary::transcribe(self.inner.clone(), request)
            .await
            .inspect_err(|status| kiroku_core::metrics::metrics().error(status.code()))
    }
}

/// Bound sockets and what they serve.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

/// Largest message of unary `Transcribe` (a 64 MiB file and its options).
pub const MAX_FILE_MESSAGE_BYTES: usize = 64 * 1024 * 1024 + 64 * 1024;
/// Largest message of `StreamTranscribe` (a frame is at most 64 KiB, a config a few):
/// a client cannot make the gateway buffer more than this per message.
pub const MAX_STREAM_MESSAGE_BYTES: usize = 1024 * 1024;

/// The transcription service with a message limit per method: tonic checks each
/// message's length prefix against its server's limit before reading it, so streams get
/// their own server with the small limit, on their own route.
fn transcription_routes(gateway: Gateway) -> tonic::service::Routes {
    use tower::ServiceExt as _;
    let files =
        TranscriptionServer::new(gateway.clone()).max_decoding_message_size(MAX_FILE_MESSAGE_BYTES);
    let streams =
        TranscriptionServer::new(gateway).max_decoding_message_size(MAX_STREAM_MESSAGE_BYTES);
    let router = tonic::service::Routes::new(files)
        .into_axum_router()
        .route_service(
            "/kiroku.transcribe.v1.Transcription/StreamTranscribe",
            streams.map_request(|request: http::Request<axum::body::Body>| {
                request.map(tonic::body::Body::new)
            }),
        );
    tonic::service::Routes::from(router)
}

impl GatewayConfig {
    /// The settings' ranges (`docs/configuration.md` lists them with their defaults).
    pub fn validate(&self) -> Result<(), kiroku_core::settings::InvalidSetting> {
        use kiroku_core::settings::{at_least, seconds_within, within};
        at_least(
            "--streams-per-tenant / KIROKU_STREAMS_PER_TENANT",
            self.quotas.streams_per_tenant,
            1,
            "",
        )?;
        within(
            "--tenant-rate / KIROKU_TENANT_RATE",
            self.quotas.tenant_rate.per_second,
            0.01..=10_000.0,
            "/s",
        )?;
        within(
            "--caller-rate / KIROKU_CALLER_RATE",
            self.quotas.caller_rate.per_second,
            0.01..=10_000.0,
            "/s",
        )?;
        at_least(
            "--idle-timeout-s / KIROKU_IDLE_TIMEOUT_S",
            self.limits.idle_timeout.as_secs_f64(),
            1.0,
            " s",
        )?;
        at_least(
            "--max-stream-wall-s / KIROKU_MAX_STREAM_WALL_S",
            self.limits.max_stream_wall.as_secs_f64(),
            1.0,
            " s",
        )?;
        seconds_within(
            "--queue-timeout-s / KIROKU_QUEUE_TIMEOUT_S",
            self.queue_timeout,
            1.0..=3600.0,
        )
    }
}

/// Serves gRPC (with health and reflection) and the admin HTTP port until `shutdown`
/// resolves; in-flight streams then get a few seconds to finish.
pub async fn serve(
    config: GatewayConfig,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let mut forwards = Vec::new();
    let channel = |url: &str| -> anyhow::Result<kiroku_core::grpc_metrics::MeteredChannel> {
        use anyhow::Context as _;
        Ok(kiroku_core::grpc_metrics::metered(
            tonic::transport::Endpoint::from_shared(url.to_string())
                .with_context(|| format!("service URL {url:?}"))?
                .connect_timeout(Duration::from_secs(3))
                .connect_lazy(),
        ))
    };
    let trusted = std::sync::Arc::new(config.trusted_proxies.clone());
    let reflection = config.reflection;
    let account = channel(&config.account_url)?;
    forwards.push(forward::Forward::new(
        "kiroku.account.v1.AccountService",
        account,
        trusted.clone(),
    ));
    if let Some(url) = &config.audit_url {
        let audit = channel(url)?;
        for service in [
            "kiroku.audit.v1.AuditService",
            "kiroku.audit.v1.NoticeService",
        ] {
            forwards.push(forward::Forward::new(
                service,
                audit.clone(),
                trusted.clone(),
            ));
        }
    }
    if let Some(url) = &config.storage_url {
        forwards.push(forward::Forward::new(
            "kiroku.storage.v1.Storage",
            channel(url)?,
            trusted.clone(),
        ));
    }
    let gateway = Gateway::connect(config).await?;
    let gatekeeper = gateway.inner.gatekeeper.clone();
    let ready_gateway = gateway.clone();
    // Readiness follows NATS, Redis and the account service: without any of them a
    // gateway cannot stream.
    let ready = kiroku_core::admin::poll_readiness(move || {
        let gateway = ready_gateway.clone();
        async move { gateway.readiness().await }
    });
    let mut server = tonic::transport::Server::builder();
    server = server
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    kiroku_core::admin::serve_grpc(
        <TranscriptionServer<Gateway> as tonic::server::NamedService>::NAME,
        unary::authenticate_before_body(
            forward::add(transcription_routes(gateway), &forwards),
            gatekeeper,
        ),
        server,
        grpc,
        admin,
        ready,
        if reflection {
            kiroku_core::admin::Reflection::On
        } else {
            kiroku_core::admin::Reflection::Off
        },
        shutdown,
    )
    .await
}
