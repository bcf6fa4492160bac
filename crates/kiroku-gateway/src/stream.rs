//! `StreamTranscribe`: one live stream from config to close.
//!
//! The loop multiplexes the client's messages, JetStream's publish acks (each turned
//! into an `AudioAck` only once the frame is stored), the session's utterance finals (an
//! ordered consumer of its `TRANSCRIPTS` subject) and its captions and interims (core
//! NATS; captions always, interims when asked for). A client that
//! vanishes ends only this loop: the session lives on in NATS for the resume window.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage as Publish;
use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt as _, StreamExt as _};
use kiroku_core::nats::{Follower, Layout};
use kiroku_proto::events::v1 as events;
use kiroku_proto::storage::v1 as storage_api;
use kiroku_proto::storage::v1::storage_client::StorageClient;
use kiroku_proto::transcribe::v1::{
    self as api, StreamTranscribeRequest, StreamTranscribeResponse, stream_transcribe_request,
    stream_transcribe_response,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument as _, debug, info, warn};

use crate::access::{Ended, StreamWatch};
use crate::admission::StreamLease;
use crate::error::{GatewayError, Result};
use crate::resample::{OUTPUT_RATE_HZ, SUPPORTED_RATES_HZ, StreamResampler};
use crate::{Limits, ResponseStream, Shared};
use kiroku_auth::auth::Principal;
use kiroku_core::audit::{AuditRecord, actions};

type Out = mpsc::Sender<Result<StreamTranscribeResponse, Status>>;

/// Validated audio format of a stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AudioSpec {
    pub rate_hz: u32,
    pub channels: u32,
}

impl AudioSpec {
    fn bytes_per_ms(&self) -> f64 {
        f64::from(self.rate_hz) * f64::from(self.channels) * 2.0 / 1000.0
    }
}

pub(crate) fn validate_format(format: Option<&api::AudioFormat>) -> Result<AudioSpec> {
    let format = format.ok_or_else(|| {
        GatewayError::invalid("config.audio_format is required (LINEAR16, rate, channels)")
    })?;
    if format.encoding != api::AudioEncoding::Linear16 as i32 {
        return Err(GatewayError::invalid(
            "config.audio_format.encoding must be LINEAR16 (signed 16-bit little-endian PCM)",
        ));
    }
    if !SUPPORTED_RATES_HZ.contains(&format.sample_rate_hz) {
        return Err(GatewayError::invalid(format!(
            "sample rate {} Hz is not supported; use one of {SUPPORTED_RATES_HZ:?}",
            format.sample_rate_hz
        )));
    }
    if !(1..=2).contains(&format.channels) {
        return Err(GatewayError::invalid(format!(
            "{} channels are not supported; send mono or stereo",
            format.channels
        )));
    }
    Ok(AudioSpec {
        rate_hz: format.sample_rate_hz,
        channels: format.channels,
    })
}

/// Largest prompt, and largest vocabulary entry, in bytes (the character limit below
/// applies to both together).
pub(crate) const MAX_PROMPT_BYTES: usize = 4096;
/// Most vocabulary entries in one request.
pub(crate) const MAX_VOCABULARY_ENTRIES: usize = 100;
/// Longest model name, in bytes.
pub(crate) const MAX_MODEL_BYTES: usize = 64;
/// Most client labels on a stream, and the longest key or value, in bytes.
pub(crate) const MAX_LABELS: usize = 16;
pub(crate) const MAX_LABEL_BYTES: usize = 128;

/// The stream config's client labels: a few short one-line strings.
pub(crate) fn validate_labels(labels: &std::collections::HashMap<String, String>) -> Result<()> {
    use kiroku_core::validate::{Text, text};
    if labels.len() > MAX_LABELS {
        return Err(GatewayError::invalid(format!(
            "config.labels has {} entries; at most {MAX_LABELS} are allowed",
            labels.len()
        )));
    }
    for (key, value) in labels {
        text("config.labels key", key, MAX_LABEL_BYTES, Text::Line)?;
        text(
            &format!("config.labels[{key:?}]"),
            value,
            MAX_LABEL_BYTES,
            Text::Line,
        )?;
    }
    Ok(())
}

pub(crate) fn validate_options(
    options: Option<&api::RecognitionOptions>,
    limits: &Limits,
) -> Result<()> {
    use kiroku_core::validate::{Text, text};
    let Some(options) = options else {
        return Ok(());
    };
    // Every string reaches whisper.cpp (NUL-terminated C strings) or a log line: no
    // NUL or control character anywhere, byte limits before anything is counted.
    text(
        "options.prompt",
        &options.prompt,
        MAX_PROMPT_BYTES,
        Text::Multiline,
    )?;
    if options.vocabulary.len() > MAX_VOCABULARY_ENTRIES {
        return Err(GatewayError::invalid(format!(
            "options.vocabulary has {} entries; at most {MAX_VOCABULARY_ENTRIES} are allowed",
            options.vocabulary.len()
        )));
    }
    for (index, entry) in options.vocabulary.iter().enumerate() {
        text(
            &format!("options.vocabulary[{index}]"),
            entry,
            MAX_PROMPT_BYTES,
            Text::Line,
        )?;
    }
    text("options.model", &options.model, MAX_MODEL_BYTES, Text::Line)?;
    if !options
        .model
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(GatewayError::invalid(format!(
            "options.model {:?} is not a model name such as \"tiny.en\" or \"base\"",
            options.model
        )));
    }
    let prompt_chars: usize = options.prompt.chars().count()
        + options
            .vocabulary
            .iter()
            .map(|v| v.chars().count())
            .sum::<usize>();
    if prompt_chars > limits.max_prompt_chars {
        return Err(GatewayError::invalid(format!(
            "vocabulary and prompt are {prompt_chars} characters; at most {} are allowed",
            limits.max_prompt_chars
        )));
    }
    let language = options.language.as_str();
    let well_formed = language == "auto"
        || (language.len() <= 3 && language.bytes().all(|b| b.is_ascii_lowercase()));
    if !well_formed {
        return Err(GatewayError::invalid(format!(
            "language {language:?} is not an ISO 639-1 code such as \"en\" or \"ja\""
        )));
    }
    if options.beam_size > 16 {
        return Err(GatewayError::invalid(format!(
            "beam size {} is above the maximum 16",
            options.beam_size
        )));
    }
    Ok(())
}

/// Reads the config, opens or resumes the session, and spawns the stream's loop.
pub(crate) async fn start(
    shared: Arc<Shared>,
    request: Request<Streaming<StreamTranscribeRequest>>,
) -> Result<Response<ResponseStream>> {
    // Credential first: nothing of an unauthenticated caller is read.
    let metadata = request.metadata().clone();
    let principal = shared
        .gatekeeper
        .admit(&metadata, "StreamTranscribe")
        .await?;
    shared.admission.admit_request(&principal).await?;
    let mut inbound = request.into_inner();
    let (config, spec) = read_config(&mut inbound, &shared.config.limits).await?;
    if config.resume_token.is_empty() {
        // Control CLD.6.3.1: no consent, no session, no frame published.
        check_consent(&shared, &principal, &metadata, &config.meeting_id).await?;
    }
    let lease = shared
        .admission
        .acquire_stream(&principal, &uuid::Uuid::new_v4().simple().to_string())
        .await?;
    let watch = shared.gatekeeper.watch(&principal);

    let span = tracing::info_span!(
        "gateway.stream",
        session = tracing::field::Empty,
        tenant = %principal.tenant_token(),
        resumed = !config.resume_token.is_empty(),
        otel.name = "gateway stream",
    );
    // A child of the call's SERVER span (kiroku_core::grpc_metrics), which continues
    // the client's trace.
    let session = async {
        if config.resume_token.is_empty() {
            Session::create(&shared, &principal, &config, spec, &span).await
        } else {
            Session::resume(&shared, &principal, &config, spec).await
        }
    }
    .instrument(span.clone())
    .await?;
    let mut session = session;
    session.meeting = if config.meeting_id.trim().is_empty() {
        session.id.clone()
    } else {
        config.meeting_id.trim().to_string()
    };
    for header in ["authorization", kiroku_auth::auth::API_KEY_HEADER] {
        if let Some(value) = metadata.get(header) {
            session.credentials.insert(header, value.clone());
        }
    }
    span.record("session", session.id.as_str());

    let (tx, rx) = mpsc::channel(256);
    session.info = session_info(&shared, &session, &config);
    let info = StreamTranscribeResponse {
        response: Some(stream_transcribe_response::Response::Session(
            session.info.clone(),
        )),
    };
    tx.send(Ok(info))
        .await
        .map_err(|_| GatewayError::ClientGone)?;
    kiroku_core::metrics::metrics().active_streams.inc();
    kiroku_core::metrics::metrics().streams_started.inc();
    let audit_start = |action| {
        AuditRecord::new(principal.tenant_token(), principal.actor(), action)
            .target(format!("session/{}", session.id))
            .detail("meeting", config.meeting_id.clone())
    };
    span.in_scope(|| {
        shared.audit.spawn_emit(
            audit_start(actions::STREAM_STARTED).detail("resumed", session.resumed.to_string()),
        )
    });
    let ended = audit_start(actions::STREAM_ENDED);
    let guard = Guard {
        principal,
        lease,
        watch,
    };
    tokio::spawn(
        async move {
            let (outcome, usage) = session.run(&shared, inbound, &tx, guard).await;
            let ended = usage
                .into_iter()
                .fold(ended, |record, (key, value)| record.detail(key, value));
            // The one place a stream's error becomes its status (internal causes are
            // logged here, with the reference the client sees).
            let outcome = outcome.map_err(Status::from);
            shared.audit.spawn_emit(match &outcome {
                Ok(()) => ended,
                Err(status) => ended.failed().detail("code", format!("{:?}", status.code())),
            });
            kiroku_core::metrics::metrics().active_streams.dec();
            kiroku_core::metrics::metrics().stream_ended(
                outcome.as_ref().err().map_or(tonic::Code::Ok, Status::code),
            );
            if let Err(status) = outcome {
                kiroku_core::metrics::metrics().error(status.code());
                info!(code = ?status.code(), message = status.message(), "stream ended with an error");
                let _ = tx.send(Err(status)).await;
            }
        }
        .instrument(span),
    );
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

/// The stream's first message, which must be a valid `config`: it and the audio
/// format it names.
async fn read_config(
    inbound: &mut Streaming<StreamTranscribeRequest>,
    limits: &Limits,
) -> Result<(api::StreamConfig, AudioSpec)> {
    let first = match tokio::time::timeout(limits.idle_timeout, inbound.message()).await {
        Err(_) => {
            return Err(GatewayError::Timeout(format!(
                "no config message within {} s",
                limits.idle_timeout.as_secs()
            )));
        }
        Ok(Err(status)) => return Err(status.into()),
        Ok(Ok(None)) => {
            return Err(GatewayError::invalid(
                "the stream ended before its config message",
            ));
        }
        Ok(Ok(Some(message))) => message,
    };
    let config = match first.request {
        Some(stream_transcribe_request::Request::Config(config)) => config,
        Some(_) => {
            return Err(GatewayError::invalid(
                "the first message must be `config`; audio and control come after it",
            ));
        }
        None => return Err(GatewayError::invalid("empty message: expected `config`")),
    };
    let spec = validate_format(config.audio_format.as_ref())?;
    validate_options(config.options.as_ref(), limits)?;
    validate_labels(&config.labels)?;
    if !config.meeting_id.trim().is_empty() {
        kiroku_core::validate::meeting_id("config.meeting_id", &config.meeting_id)?;
    }
    kiroku_core::validate::text(
        "config.resume_token",
        &config.resume_token,
        1024,
        kiroku_core::validate::Text::Line,
    )?;
    Ok((config, spec))
}

/// Control CLD.6.3.1: a new session needs the meeting's recording consent; a refusal
/// is audited.
async fn check_consent(
    shared: &Shared,
    principal: &Principal,
    metadata: &tonic::metadata::MetadataMap,
    meeting_id: &str,
) -> Result<()> {
    let Err(status) = shared.gatekeeper.check_consent(metadata, meeting_id).await else {
        return Ok(());
    };
    if status.code() == tonic::Code::FailedPrecondition {
        shared.audit.spawn_emit(
            AuditRecord::new(
                principal.tenant_token(),
                principal.actor(),
                actions::STREAM_REFUSED,
            )
            .failed()
            .target(format!("meeting/{meeting_id}"))
            .detail("reason", "consent"),
        );
    }
    Err(status.into())
}

/// The `SessionInfo` a stream starts with.
fn session_info(
    shared: &Shared,
    session: &Session,
    config: &api::StreamConfig,
) -> api::SessionInfo {
    let options = config.options.as_ref();
    api::SessionInfo {
        session_id: session.id.clone(),
        resume_token: shared
            .config
            .resume_keys
            .issue(&session.tenant, &session.id),
        resume_window: prost_types::Duration::try_from(shared.config.resume_window).ok(),
        // Empty until detected when the client asked for detection.
        language: options
            .map(|o| o.language.clone())
            .filter(|l| l != "auto")
            .unwrap_or_default(),
        model: options.map(|o| o.model.clone()).unwrap_or_default(),
        resumed: session.resumed,
        started_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        queued: false,
    }
}

/// What a running stream holds on behalf of its caller.
struct Guard {
    principal: Principal,
    /// The tenant's concurrent-stream slot, renewed while the stream runs.
    lease: StreamLease,
    /// Says when the caller's credentials are revoked or its tenant erased.
    watch: StreamWatch,
}

/// One stream's state in this gateway.
struct Session {
    tenant: String,
    id: String,
    resumed: bool,
    interim_results: bool,
    spec: AudioSpec,
    resampler: StreamResampler,
    /// Last client frame seq published (or found in `AUDIO` on resume).
    last_seq: u64,
    /// 16 kHz samples published so far: the next frame's offset.
    next_offset: u64,
    /// `next_offset` when this connection began (not 0 for a resumed session).
    start_offset: u64,
    /// The meeting (the config's, else the session id), for bookmarks.
    meeting: String,
    /// The caller's credential headers, sent along when a bookmark is stored.
    credentials: tonic::metadata::MetadataMap,
    /// End of stream already published.
    ended: bool,
    /// Finals up to this seq were delivered (or the client said it has them).
    delivered_seq: u64,
    /// When each published frame arrived, to measure caption and final latency.
    arrivals: VecDeque<(u64, Instant)>,
    latencies_ms: Vec<u32>,
    caption_latencies_ms: Vec<u32>,
    /// End (ms) of the last word shown to the client, by a caption or a final.
    shown_until_ms: u64,
    finals: u32,
    started: Instant,
    first_interim_seen: bool,
    /// The last frame published on this connection: the next one is sent once it is
    /// stored (see [`publish_frame`]).
    last_publish: Option<AckFuture>,
    /// The session info sent to the client; sent again, once, with the language when
    /// the worker has detected it.
    info: api::SessionInfo,
    /// Client messages in the current one-second window, and when it began.
    rate_window: (Instant, u32),
    /// Bookmarks sent on this connection.
    bookmarks: u32,
    /// The previous frame was shorter than the minimum: only end of stream may follow.
    short_frame_seen: bool,
    /// The session's core NATS subject (captions, interims, the worker's notices),
    /// subscribed before the job is published so the worker's first notice is not
    /// missed; taken by the stream's loop.
    live: Option<async_nats::Subscriber>,
    /// The job's sequence in `SESSIONS` (a new session's), to withdraw it on refusal.
    job_seq: Option<u64>,
    /// Until a worker takes the session ([`crate::queue`]).
    wait: crate::queue::WorkerWait,
}

impl Session {
    async fn create(
        shared: &Shared,
        principal: &Principal,
        config: &api::StreamConfig,
        spec: AudioSpec,
        span: &tracing::Span,
    ) -> Result<Self> {
        let tenant = principal.tenant_token();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let job = events::SessionJob {
            tenant_id: tenant.clone(),
            session_id: id.clone(),
            meeting_id: config.meeting_id.clone(),
            options: config.options.clone(),
            interim_results: config.interim_results,
            created_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            traceparent: kiroku_core::trace::traceparent(span),
            batch: false,
        };
        let live = subscribe_live(shared, &tenant, &id).await?;
        let job_seq = publish_job(shared, &job).await?;
        info!(session = %id, "session opened");
        let mut session = Self::new(tenant, id, false, config, spec, 0, 0, false);
        session.live = Some(live);
        session.job_seq = Some(job_seq);
        session.wait = crate::queue::WorkerWait::new(
            tokio::time::Instant::now(),
            shared.config.queue_timeout,
            true,
        );
        Ok(session)
    }

    async fn resume(
        shared: &Shared,
        principal: &Principal,
        config: &api::StreamConfig,
        spec: AudioSpec,
    ) -> Result<Self> {
        let claim = shared
            .config
            .resume_keys
            .verify(&config.resume_token)
            .ok_or_else(|| GatewayError::invalid("resume_token is not valid for this cluster"))?;
        if claim.tenant != principal.tenant_token() {
            // Another tenant's session does not exist for this caller.
            return Err(GatewayError::NotFound(format!(
                "session {} is unknown or its audio has expired",
                claim.session
            )));
        }
        let subject = shared
            .config
            .layout
            .audio_subject(&claim.tenant, &claim.session);
        let last = shared
            .audio
            .get_last_raw_message_by_subject(&subject)
            .await
            .map_err(|_| {
                GatewayError::NotFound(format!(
                    "session {} is unknown or its audio has expired",
                    claim.session
                ))
            })?;
        let frame = events::AudioFrame::decode(last.payload.as_ref())
            .map_err(|e| GatewayError::internal("a stored audio frame does not decode", e))?;
        let next_offset = frame.offset_samples + frame.pcm_s16le.len() as u64 / 2;
        info!(session = %claim.session, last_seq = frame.seq, "session resumed");
        let mut session = Self::new(
            claim.tenant,
            claim.session,
            true,
            config,
            spec,
            frame.seq,
            next_offset,
            frame.end_of_stream,
        );
        session.delivered_seq = config.resume_after_result_seq;
        Ok(session)
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        tenant: String,
        id: String,
        resumed: bool,
        config: &api::StreamConfig,
        spec: AudioSpec,
        last_seq: u64,
        next_offset: u64,
        ended: bool,
    ) -> Self {
        // validate_format checked rate and channels, which is all `new` can refuse.
        let resampler = StreamResampler::new(spec.rate_hz, spec.channels)
            .unwrap_or_else(|e| unreachable!("validated format refused: {e}"));
        Self {
            tenant,
            id,
            resumed,
            interim_results: config.interim_results,
            spec,
            resampler,
            last_seq,
            next_offset,
            start_offset: next_offset,
            meeting: String::new(),
            credentials: tonic::metadata::MetadataMap::new(),
            ended,
            delivered_seq: 0,
            arrivals: VecDeque::new(),
            latencies_ms: Vec::new(),
            caption_latencies_ms: Vec::new(),
            shown_until_ms: 0,
            finals: 0,
            started: Instant::now(),
            first_interim_seen: false,
            last_publish: None,
            info: api::SessionInfo::default(),
            rate_window: (Instant::now(), 0),
            bookmarks: 0,
            short_frame_seen: false,
            live: None,
            job_seq: None,
            // Reported queued, never refused: see crate::queue.
            wait: crate::queue::WorkerWait::new(tokio::time::Instant::now(), Duration::ZERO, false),
        }
    }

    /// Runs the stream to its end; returns how it ended and what it carried (for the
    /// `stream.ended` audit event, from which the per-tenant usage view is computed).
    async fn run(
        mut self,
        shared: &Shared,
        inbound: Streaming<StreamTranscribeRequest>,
        tx: &Out,
        guard: Guard,
    ) -> (Result<()>, Vec<(&'static str, String)>) {
        let outcome = self.run_until_end(shared, inbound, tx, guard).await;
        let stats = self.stats();
        let audio_ms = (self.next_offset - self.start_offset.min(self.next_offset)) * 1000
            / u64::from(OUTPUT_RATE_HZ);
        let mut usage = vec![
            ("audio_ms", audio_ms.to_string()),
            ("finals", stats.finals.to_string()),
        ];
        if stats.finals > 0 {
            usage.push(("latency_p50_ms", stats.final_latency_p50_ms.to_string()));
            usage.push(("latency_p95_ms", stats.final_latency_p95_ms.to_string()));
        }
        (outcome, usage)
    }

    async fn run_until_end(
        &mut self,
        shared: &Shared,
        mut inbound: Streaming<StreamTranscribeRequest>,
        tx: &Out,
        mut guard: Guard,
    ) -> Result<()> {
        let limits = &shared.config.limits;
        let mut finals = follow_finals(shared, &self.tenant, &self.id).await?;
        let mut interims = match self.live.take() {
            Some(live) => live,
            None => subscribe_live(shared, &self.tenant, &self.id).await?,
        };
        let mut presence = tokio::time::interval(Duration::from_secs(5));
        let mut acks = FuturesOrdered::new();
        let idle = tokio::time::sleep(limits.idle_timeout);
        tokio::pin!(idle);
        let mut client_open = true;
        let mut finish_by: Option<tokio::time::Instant> = None;
        let far_future = || tokio::time::Instant::now() + Duration::from_secs(86_400);
        let wall_limit = tokio::time::sleep(limits.max_stream_wall);
        tokio::pin!(wall_limit);

        let result = loop {
            if self.ended && finish_by.is_none() {
                finish_by = Some(tokio::time::Instant::now() + shared.config.transcribe_timeout);
            }
            tokio::select! {
                message = inbound.message(), if client_open => {
                    if matches!(message, Ok(Some(_))) {
                        idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                    }
                    if let ControlFlow::Break(outcome) =
                        self.on_client_message(shared, message, tx, &mut acks, &mut client_open).await
                    {
                        break outcome;
                    }
                }
                Some((seq, offset, outcome)) = acks.next() => {
                    if let ControlFlow::Break(outcome) = on_ack(seq, offset, outcome, tx).await {
                        break outcome;
                    }
                }
                message = finals.next() => {
                    match self.relay_final(&message.payload, tx).await {
                        Ok(true) => break Ok(()),
                        Ok(false) => {}
                        Err(status) => break Err(status),
                    }
                }
                Some(message) = interims.next() => {
                    // Only the worker running the session publishes here.
                    if self.worker_running(tx).await.is_err()
                        || self.relay_live(&message.payload, tx).await.is_err()
                    {
                        break Ok(());
                    }
                }
                () = tokio::time::sleep_until(self.wait.next_at().unwrap_or_else(far_future)), if self.wait.next_at().is_some() => {
                    if let Err(status) = self.still_queued(shared, tx).await {
                        break Err(status);
                    }
                }
                () = &mut wall_limit, if !self.ended => {
                    // What was received is finalized; the client opens a new stream.
                    let _ = self.end_of_stream(shared, &mut acks).await;
                    break Err(GatewayError::OutOfRange(format!(
                        "the stream passed its limit of {} s open: open a new stream",
                        limits.max_stream_wall.as_secs()
                    )));
                }
                () = &mut idle, if client_open && !self.ended => {
                    break Err(GatewayError::Timeout(format!(
                        "no message for {} s: send keep_alive while muted",
                        limits.idle_timeout.as_secs()
                    )));
                }
                // After end of stream the client waits for us, not the other way round:
                // the idle limit no longer applies, a generous deadline for the workers
                // does.
                () = tokio::time::sleep_until(finish_by.unwrap_or_else(far_future)), if finish_by.is_some() => {
                    break Err(GatewayError::Timeout(format!(
                        "no worker finished the session within {} s of its end (are workers running?)",
                        shared.config.transcribe_timeout.as_secs()
                    )));
                }
                _ = presence.tick() => {
                    if let Err(error) = self.still_here(shared, &mut guard, &mut acks).await {
                        break Err(error);
                    }
                }
                // The client cancelled the call (RST_STREAM) after its end of stream:
                // `inbound` is no longer read, so only the closed response channel
                // tells. The session still finishes on the worker; the slot is freed.
                () = tx.closed(), if !client_open => {
                    debug!("client went away after its end of stream");
                    break Ok(());
                }
                Ok(()) = guard.watch.ended.changed() => {
                    let ended = *guard.watch.ended.borrow();
                    match ended {
                        Some(Ended::Revoked) => break Err(self.revoked(shared, &mut acks).await),
                        // Nothing is finalized: the worker drops what it held.
                        Some(Ended::Erased) => break Err(GatewayError::Erased),
                        None => {}
                    }
                }
            }
        };
        finals.close().await;
        result
    }

    /// Every few seconds: tells the worker the client is still here (muted streams
    /// too), renews the tenant's stream slot, and asks Redis whether the credentials
    /// were revoked (in case the broadcast was missed).
    async fn still_here(
        &mut self,
        shared: &Shared,
        guard: &mut Guard,
        acks: &mut FuturesOrdered<AckFuture>,
    ) -> Result<()> {
        self.tell_worker_present(shared).await;
        guard.lease.renew().await;
        if !shared.gatekeeper.still_valid(&guard.principal).await {
            return Err(self.revoked(shared, acks).await);
        }
        Ok(())
    }

    /// Tells the worker running the session that its client is still here (best
    /// effort: the worker waits a while before it gives a silent client up).
    async fn tell_worker_present(&self, shared: &Shared) {
        let subject = shared
            .config
            .layout
            .presence_subject(&self.tenant, &self.id);
        let _ = shared.nats.publish(subject, Bytes::new()).await;
    }

    /// One message from the client, or the end of its side: handled, or how the
    /// stream ends.
    async fn on_client_message(
        &mut self,
        shared: &Shared,
        message: std::result::Result<Option<StreamTranscribeRequest>, Status>,
        tx: &Out,
        acks: &mut FuturesOrdered<AckFuture>,
        client_open: &mut bool,
    ) -> ControlFlow<Result<()>> {
        let outcome = match message {
            Ok(Some(request)) => match self.count_message(&shared.config.limits) {
                Ok(()) => self.handle(shared, request, tx, acks).await,
                Err(error) => Err(error),
            },
            Ok(None) => {
                // Half-close without EndOfStream: the client is done sending.
                *client_open = false;
                if self.ended {
                    Ok(())
                } else {
                    self.end_of_stream(shared, acks).await
                }
            }
            Err(status) => {
                debug!(
                    message = status.message(),
                    "client went away; the session waits for a resume"
                );
                return ControlFlow::Break(Ok(()));
            }
        };
        match outcome {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => ControlFlow::Break(Err(error)),
        }
    }

    /// A worker runs the session: a client told it was queued learns it is not.
    async fn worker_running(&mut self, tx: &Out) -> Result<(), ()> {
        if !self.wait.taken() {
            return Ok(());
        }
        info!("a worker took the queued session");
        self.info.queued = false;
        self.send_info(tx).await
    }

    /// The session info again, after a change (language detected, queued or not).
    async fn send_info(&self, tx: &Out) -> Result<(), ()> {
        send(
            tx,
            stream_transcribe_response::Response::Session(self.info.clone()),
        )
        .await
    }

    /// No worker has taken the session yet: tell the client it is queued, or refuse
    /// the stream once the queue timeout has passed ([`crate::queue`]).
    async fn still_queued(&mut self, shared: &Shared, tx: &Out) -> Result<()> {
        match self.wait.due(tokio::time::Instant::now()) {
            crate::queue::Step::Wait => Ok(()),
            crate::queue::Step::TellQueued => {
                info!("no worker free: the session is queued");
                kiroku_core::metrics::metrics().streams_queued.inc();
                self.info.queued = true;
                self.send_info(tx)
                    .await
                    .map_err(|()| GatewayError::ClientGone)
            }
            crate::queue::Step::Refuse => {
                let job_seq = self.job_seq.unwrap_or_default();
                Err(
                    crate::queue::refuse(shared, &self.tenant, &self.id, job_seq)
                        .await
                        .into(),
                )
            }
        }
    }

    /// Counts one client message against the per-second limit.
    fn count_message(&mut self, limits: &crate::Limits) -> Result<()> {
        let (since, count) = &mut self.rate_window;
        if since.elapsed() >= Duration::from_secs(1) {
            *since = Instant::now();
            *count = 0;
        }
        *count += 1;
        if *count > limits.max_messages_per_second {
            return Err(kiroku_core::status::resource_exhausted(
                format!(
                    "more than {} messages in one second: send 20-100 ms frames",
                    limits.max_messages_per_second
                ),
                Duration::from_secs(1),
            )
            .into());
        }
        Ok(())
    }

    /// The caller's credentials were revoked: what was received is finalized (the
    /// session ends), and the client is told why.
    async fn revoked(
        &mut self,
        shared: &Shared,
        acks: &mut FuturesOrdered<AckFuture>,
    ) -> GatewayError {
        if !self.ended {
            let _ = self.end_of_stream(shared, acks).await;
        }
        GatewayError::Revoked
    }

    async fn handle(
        &mut self,
        shared: &Shared,
        request: StreamTranscribeRequest,
        tx: &Out,
        acks: &mut FuturesOrdered<AckFuture>,
    ) -> Result<()> {
        use stream_transcribe_request::Request as R;
        match request.request {
            None => Err(GatewayError::invalid("empty message")),
            Some(R::Config(_)) => Err(GatewayError::invalid(
                "config may only be sent once, as the first message",
            )),
            Some(R::Audio(frame)) => self.audio(shared, frame, acks).await,
            Some(R::Control(control)) => {
                use api::control::Action;
                match control.action {
                    Some(Action::EndOfStream(_)) => {
                        if self.ended {
                            return Ok(());
                        }
                        self.end_of_stream(shared, acks).await
                    }
                    Some(Action::FlushUtterance(_)) => {
                        let frame = self.frame(Vec::new(), false, true);
                        let id = format!("{}:flush{}", self.id, self.last_seq);
                        let (seq, offset) = (self.last_seq, self.next_offset);
                        self.publish(shared, frame, id, seq, offset, acks).await
                    }
                    Some(Action::KeepAlive(_)) => {
                        self.tell_worker_present(shared).await;
                        Ok(())
                    }
                    Some(Action::Bookmark(bookmark)) => {
                        let limit = shared.config.limits.max_bookmarks;
                        self.bookmarks += 1;
                        if self.bookmarks > limit {
                            return Err(GatewayError::Exhausted(format!(
                                "at most {limit} bookmarks per stream"
                            )));
                        }
                        let offset_ms = if bookmark.offset_ms == 0 {
                            self.next_offset * 1000 / u64::from(OUTPUT_RATE_HZ)
                        } else {
                            bookmark.offset_ms
                        };
                        if bookmark.note.chars().count() > 2000 {
                            return Err(GatewayError::invalid(
                                "a bookmark note is at most 2000 characters",
                            ));
                        }
                        kiroku_core::validate::text(
                            "bookmark.note",
                            &bookmark.note,
                            4 * 2000,
                            kiroku_core::validate::Text::Multiline,
                        )?;
                        // Stored as a label by the storage service, with the caller's
                        // own credentials, off the audio path; acknowledged once stored.
                        tokio::spawn(store_bookmark(
                            shared.storage.clone(),
                            self.credentials.clone(),
                            self.meeting.clone(),
                            bookmark.note,
                            offset_ms,
                            tx.clone(),
                        ));
                        Ok(())
                    }
                    None => Err(GatewayError::invalid("empty control message")),
                }
            }
        }
    }

    async fn audio(
        &mut self,
        shared: &Shared,
        frame: api::AudioFrame,
        acks: &mut FuturesOrdered<AckFuture>,
    ) -> Result<()> {
        let limits = &shared.config.limits;
        if frame.seq <= self.last_seq {
            // A re-send after a reconnect: already stored, dropped here (also when the
            // session had already ended: the client may not have seen those acks).
            return Ok(());
        }
        if self.ended {
            return Err(GatewayError::Precondition(
                "audio after end_of_stream: open a new stream".into(),
            ));
        }
        if frame.seq != self.last_seq + 1 {
            return Err(GatewayError::invalid(format!(
                "frame seq {} follows {}: seqs must increase by one",
                frame.seq, self.last_seq
            )));
        }
        let bytes = frame.data.len();
        let sample_frame = 2 * self.spec.channels as usize;
        if bytes == 0 || !bytes.is_multiple_of(sample_frame) {
            return Err(GatewayError::invalid(format!(
                "frame {} has {bytes} bytes: not whole 16-bit samples for {} channel(s)",
                frame.seq, self.spec.channels
            )));
        }
        if self.short_frame_seen {
            return Err(GatewayError::invalid(format!(
                "frame {} follows a frame shorter than {} ms: only the last frame before end_of_stream may be that short",
                frame.seq,
                limits.min_frame.as_millis()
            )));
        }
        let min_bytes = (limits.min_frame.as_millis() as f64 * self.spec.bytes_per_ms()) as usize;
        self.short_frame_seen = bytes < min_bytes;
        let max_bytes = (limits.max_frame.as_millis() as f64 * self.spec.bytes_per_ms()) as usize;
        if bytes > limits.max_frame_bytes || bytes > max_bytes {
            return Err(GatewayError::invalid(format!(
                "frame {} holds {:.0} ms of audio ({bytes} bytes); at most {} ms and {} bytes per frame",
                frame.seq,
                bytes as f64 / self.spec.bytes_per_ms(),
                limits.max_frame.as_millis(),
                limits.max_frame_bytes
            )));
        }
        let max_samples = limits.max_stream_audio.as_secs() * u64::from(OUTPUT_RATE_HZ);
        if self.next_offset > max_samples {
            return Err(GatewayError::OutOfRange(format!(
                "the stream passed its limit of {} h of audio",
                limits.max_stream_audio.as_secs() / 3600
            )));
        }
        let pcm = self.resampler.push(&frame.data);
        self.last_seq = frame.seq;
        let event = self.frame(pcm, false, false);
        self.next_offset += event.pcm_s16le.len() as u64 / 2;
        self.arrivals.push_back((self.next_offset, Instant::now()));
        kiroku_core::metrics::metrics()
            .audio_seconds
            .inc_by((event.pcm_s16le.len() / 2) as f64 / f64::from(OUTPUT_RATE_HZ));
        let id = Layout::frame_msg_id(&self.id, frame.seq);
        let offset = self.next_offset;
        self.publish(shared, event, id, frame.seq, offset, acks)
            .await
    }

    async fn end_of_stream(
        &mut self,
        shared: &Shared,
        acks: &mut FuturesOrdered<AckFuture>,
    ) -> Result<()> {
        let tail = self.resampler.finish();
        let event = self.frame(tail, true, false);
        self.next_offset += event.pcm_s16le.len() as u64 / 2;
        self.ended = true;
        let id = format!("{}:eos", self.id);
        let (seq, offset) = (self.last_seq, self.next_offset);
        self.publish(shared, event, id, seq, offset, acks).await
    }

    /// Publishes a frame of this stream after the previous one (see [`publish_frame`]);
    /// its ack joins `acks`.
    async fn publish(
        &mut self,
        shared: &Shared,
        frame: events::AudioFrame,
        msg_id: String,
        seq: u64,
        end_offset: u64,
        acks: &mut FuturesOrdered<AckFuture>,
    ) -> Result<()> {
        let previous = self.last_publish.take();
        let ack = publish_frame(shared, frame, msg_id, seq, end_offset, previous).await?;
        self.last_publish = Some(ack.clone());
        acks.push_back(ack);
        Ok(())
    }

    fn frame(&self, pcm: Vec<i16>, end_of_stream: bool, flush: bool) -> events::AudioFrame {
        let mut bytes = Vec::with_capacity(pcm.len() * 2);
        for sample in pcm {
            bytes.extend_from_slice(&sample.to_le_bytes());
        }
        events::AudioFrame {
            tenant_id: self.tenant.clone(),
            session_id: self.id.clone(),
            seq: self.last_seq,
            offset_ms: self.next_offset * 1000 / u64::from(OUTPUT_RATE_HZ),
            pcm_s16le: bytes,
            end_of_stream,
            flush_utterance: flush,
            offset_samples: self.next_offset,
        }
    }

    /// Returns true when the session closed.
    async fn relay_final(&mut self, payload: &[u8], tx: &Out) -> Result<bool> {
        let message = events::TranscriptResult::decode(payload)
            .map_err(|e| GatewayError::internal("a stored result does not decode", e))?;
        if message.session_closed {
            GatewayError::from_close_reason(&message.close_reason)?;
            let stats = self.stats();
            let _ = send(tx, stream_transcribe_response::Response::Stats(stats)).await;
            info!(
                reason = message.close_reason,
                finals = self.finals,
                "session closed"
            );
            return Ok(true);
        }
        let Some(result) = message.result else {
            return Ok(false);
        };
        if result.result_seq <= self.delivered_seq {
            return Ok(false); // delivered before a resume, or a duplicate
        }
        if !result.language.is_empty() && result.language != self.info.language {
            self.info.language = result.language.clone();
            self.send_info(tx)
                .await
                .map_err(|()| GatewayError::ClientGone)?;
        }
        self.delivered_seq = result.result_seq;
        self.finals += 1;
        self.observe_final(result.segment.as_ref());
        kiroku_core::metrics::metrics().finals.inc();
        send(tx, stream_transcribe_response::Response::Result(result))
            .await
            .map_err(|_| GatewayError::ClientGone)?;
        Ok(false)
    }

    /// A caption (always sent) or an interim (sent when the client asked for them).
    async fn relay_live(&mut self, payload: &[u8], tx: &Out) -> Result<(), ()> {
        let Ok(message) = events::TranscriptResult::decode(payload) else {
            return Ok(()); // captions and interims are best effort
        };
        let Some(result) = message.result else {
            return Ok(());
        };
        let caption = result.kind == api::ResultKind::Caption as i32;
        // Both precede final `result_seq`: stale once that final was sent.
        if (!caption && !self.interim_results) || result.result_seq <= self.delivered_seq {
            return Ok(());
        }
        if caption {
            self.observe_caption(result.segment.as_ref());
        }
        if !self.first_interim_seen {
            self.first_interim_seen = true;
            kiroku_core::metrics::metrics()
                .first_interim_latency
                .observe(self.started.elapsed().as_secs_f64());
        }
        send(tx, stream_transcribe_response::Response::Result(result)).await
    }

    /// How long ago the audio holding `end_ms` arrived here. With real-time clients
    /// that is what the user waits for a word.
    fn since_arrival(&self, end_ms: u64) -> Option<Duration> {
        let end = end_ms * u64::from(OUTPUT_RATE_HZ) / 1000;
        let (_, arrived) = self.arrivals.iter().find(|(offset, _)| *offset >= end)?;
        Some(arrived.elapsed())
    }

    /// Caption latency per word: its first showing.
    fn observe_caption(&mut self, segment: Option<&api::Segment>) {
        let Some(segment) = segment else { return };
        for word in &segment.words {
            self.observe_shown(word.end_ms);
        }
    }

    fn observe_shown(&mut self, end_ms: u64) {
        if end_ms <= self.shown_until_ms {
            return;
        }
        self.shown_until_ms = end_ms;
        if let Some(latency) = self.since_arrival(end_ms) {
            self.caption_latencies_ms.push(latency.as_millis() as u32);
            kiroku_core::metrics::metrics()
                .caption_latency
                .observe(latency.as_secs_f64());
        }
    }

    /// Final latency per word: time the final arrived here − time the audio holding the
    /// word's end arrived here. A word no caption showed is first shown by its final.
    fn observe_final(&mut self, segment: Option<&api::Segment>) {
        let Some(segment) = segment else { return };
        for word in &segment.words {
            if let Some(latency) = self.since_arrival(word.end_ms) {
                self.latencies_ms.push(latency.as_millis() as u32);
                kiroku_core::metrics::metrics()
                    .final_latency
                    .observe(latency.as_secs_f64());
            }
            self.observe_shown(word.end_ms);
        }
        // Frames that end before this final's start will not be looked up again.
        let start = segment.start_ms * u64::from(OUTPUT_RATE_HZ) / 1000;
        while self.arrivals.len() > 1 && self.arrivals[1].0 <= start {
            self.arrivals.pop_front();
        }
    }

    fn stats(&self) -> api::StreamStats {
        let percentiles = |latencies: &[u32]| -> (u32, u32) {
            let mut sorted = latencies.to_vec();
            sorted.sort_unstable();
            let pick = |q: f64| -> u32 {
                if sorted.is_empty() {
                    0
                } else {
                    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
                }
            };
            (pick(0.5), pick(0.95))
        };
        let (final_p50, final_p95) = percentiles(&self.latencies_ms);
        let (caption_p50, caption_p95) = percentiles(&self.caption_latencies_ms);
        api::StreamStats {
            caption_latency_p50_ms: caption_p50,
            caption_latency_p95_ms: caption_p95,
            audio_received_ms: self.next_offset * 1000 / u64::from(OUTPUT_RATE_HZ),
            audio_decoded_ms: self.next_offset * 1000 / u64::from(OUTPUT_RATE_HZ),
            finals: self.finals,
            final_latency_p50_ms: final_p50,
            final_latency_p95_ms: final_p95,
            // The decode speed is the worker's: see kiroku_real_time_factor on /metrics.
            real_time_factor: 0.0,
        }
    }
}

/// Stores a live bookmark (three tries over a few seconds) and acknowledges it; an empty
/// `bookmark_id` in the acknowledgement means it could not be stored.
async fn store_bookmark(
    storage: Option<StorageClient<kiroku_core::grpc_metrics::MeteredChannel>>,
    credentials: tonic::metadata::MetadataMap,
    meeting: String,
    note: String,
    offset_ms: u64,
    tx: Out,
) {
    let mut bookmark_id = String::new();
    if let Some(storage) = storage {
        for attempt in 0..3u32 {
            let mut request = Request::new(storage_api::AddLabelRequest {
                meeting_id: meeting.clone(),
                kind: storage_api::LabelKind::Bookmark as i32,
                text: note.clone(),
                at_ms: offset_ms,
                end_ms: 0,
                live: true,
            });
            *request.metadata_mut() = credentials.clone();
            match storage.clone().add_label(request).await {
                Ok(label) => {
                    bookmark_id = label.into_inner().label_id;
                    break;
                }
                Err(status) => {
                    warn!(code = ?status.code(), message = status.message(), attempt, "bookmark not stored");
                    if !matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        }
    }
    let ack = api::BookmarkAck {
        bookmark_id,
        offset_ms,
    };
    let _ = send(&tx, stream_transcribe_response::Response::BookmarkAck(ack)).await;
}

/// The session's utterance finals, from the first: an ordered consumer of its
/// `TRANSCRIPTS` subject (live streams and files alike).
pub(crate) async fn follow_finals(
    shared: &Shared,
    tenant: &str,
    session: &str,
) -> Result<Follower> {
    Follower::new(
        shared.nats.clone(),
        shared.transcripts.clone(),
        shared.config.layout.transcript_subject(tenant, session),
        &format!("gw_{session}"),
        0,
    )
    .await
    .map_err(|e| GatewayError::unavailable(format!("cannot follow the session's results: {e}")))
}

/// A frame's acknowledgement from JetStream: an `AudioAck` to the client once the frame
/// is stored, or the end of the stream when it was not.
async fn on_ack(
    seq: u64,
    offset: u64,
    stored: Result<(), String>,
    tx: &Out,
) -> ControlFlow<Result<()>> {
    if let Err(error) = stored {
        return ControlFlow::Break(Err(GatewayError::unavailable(format!(
            "the audio queue did not store frame {seq} ({error}); resume with the token and re-send unacknowledged frames"
        ))));
    }
    let ack = api::AudioAck {
        acked_seq: seq,
        acked_offset_ms: offset * 1000 / u64::from(OUTPUT_RATE_HZ),
    };
    match send(tx, stream_transcribe_response::Response::AudioAck(ack)).await {
        Ok(()) => ControlFlow::Continue(()),
        // The client is gone: the session waits for a resume.
        Err(()) => ControlFlow::Break(Ok(())),
    }
}

async fn send(tx: &Out, response: stream_transcribe_response::Response) -> Result<(), ()> {
    tx.send(Ok(StreamTranscribeResponse {
        response: Some(response),
    }))
    .await
    .map_err(|_| ())
}

/// The session's core NATS subject: captions, interims and the worker's notices.
async fn subscribe_live(
    shared: &Shared,
    tenant: &str,
    session: &str,
) -> Result<async_nats::Subscriber> {
    shared
        .nats
        .subscribe(shared.config.layout.interim_subject(tenant, session))
        .await
        .map_err(|e| GatewayError::unavailable(format!("cannot follow interim results: {e}")))
}

/// Queues the job on `SESSIONS`; its stream sequence.
pub(crate) async fn publish_job(shared: &Shared, job: &events::SessionJob) -> Result<u64> {
    let language = job.options.as_ref().map_or("", |o| o.language.as_str());
    let pool = shared.config.routes.pool_for(language);
    let subject = shared.config.layout.session_subject(pool, &job.tenant_id);
    let publish = Publish::build()
        .payload(Bytes::from(job.encode_to_vec()))
        .message_id(&job.session_id);
    let ack = shared
        .js
        .send_publish(subject, publish)
        .await
        .map_err(|e| GatewayError::unavailable(format!("cannot queue the session: {e}")))?;
    let ack = kiroku_core::nats::await_ack(ack)
        .await
        .map_err(|e| GatewayError::unavailable(format!("cannot queue the session: {e}")))?;
    Ok(ack.sequence)
}

/// Resolves to (client seq, end offset in samples, stored or why not). Shared: the
/// stream's loop waits for it, and so does the next frame's publish.
pub(crate) type AckFuture =
    futures::future::Shared<futures::future::BoxFuture<'static, (u64, u64, Result<(), String>)>>;

/// Publishes one frame and returns the future of its acknowledgement. A failed or
/// missing ack is retried with the same message id (JetStream drops duplicates) for
/// about 15 s, which rides out a NATS restart or the loss of a stream leader; after
/// that the stream fails with UNAVAILABLE and the client resumes.
///
/// With `after` (the previous frame of a live stream), the frame is sent only once
/// that one is stored, and not at all if it never is: `AUDIO` then holds a stream's
/// frames in the client's order even when a publish is retried. Pipelined frames
/// would not: while one waits out its ack timeout, the next ones are stored, and a
/// worker, which decodes in stream order and skips audio behind what it decoded, would
/// lose the retried stretch (seen when the NATS server leading `AUDIO` was killed, test
/// `nats_cluster`); a resume, which reads the last stored frame as the newest, would
/// start from the wrong place. Without `after` the first attempt is sent before this
/// returns, in the caller's order.
pub(crate) async fn publish_frame(
    shared: &Shared,
    frame: events::AudioFrame,
    msg_id: String,
    seq: u64,
    end_offset: u64,
    after: Option<AckFuture>,
) -> Result<AckFuture> {
    let subject = shared
        .config
        .layout
        .audio_subject(&frame.tenant_id, &frame.session_id);
    let payload = Bytes::from(frame.encode_to_vec());
    let mut headers = async_nats::HeaderMap::new();
    kiroku_core::trace::inject_nats(&tracing::Span::current(), &mut headers);
    let build = {
        let payload = payload.clone();
        let msg_id = msg_id.clone();
        let headers = headers.clone();
        move || {
            Publish::build()
                .payload(payload.clone())
                .message_id(&msg_id)
                .headers(headers.clone())
        }
    };
    let began = std::time::Instant::now();
    let first = match after {
        Some(_) => None,
        None => Some(
            shared
                .js
                .send_publish(subject.clone(), build())
                .await
                .map_err(|e| kiroku_core::nats::NatsError(e.to_string())),
        ),
    };
    let js = shared.js.clone();
    // The ack wait runs as its own task: a pending ack holds one of the JetStream
    // context's in-flight permits, and a stream's loop that waited for a permit while
    // its own acks sat unpolled would deadlock with every other stream (seen with 1,000
    // streams). The loop still takes the results in publish order.
    let task = tokio::spawn(async move {
        if let Some(previous) = after
            && let (previous_seq, _, Err(error)) = previous.await
        {
            let why = format!("not sent: frame {previous_seq} before it was not stored ({error})");
            return (seq, end_offset, Err(why));
        }
        let outcome = kiroku_core::nats::publish_durable(&js, &subject, build, first)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        if outcome.is_ok() {
            kiroku_core::metrics::metrics()
                .audio_publish_seconds
                .observe(began.elapsed().as_secs_f64());
        }
        (seq, end_offset, outcome)
    });
    Ok(async move {
        task.await
            .unwrap_or_else(|error| (seq, end_offset, Err(error.to_string())))
    }
    .boxed()
    .shared())
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any strings in the recognition options: refused or accepted, never a panic;
        /// what is accepted can reach whisper.cpp (no NUL) within the byte limits.
        #[test]
        fn any_options_are_checked_without_panicking(
            prompt in any::<String>(),
            vocabulary in proptest::collection::vec(any::<String>(), 0..4),
            language in any::<String>(),
            model in any::<String>(),
            beam_size in any::<u32>(),
        ) {
            let options = api::RecognitionOptions {
                prompt,
                vocabulary,
                language,
                model,
                beam_size,
                ..Default::default()
            };
            if validate_options(Some(&options), &crate::Limits::default()).is_ok() {
                let strings = [&options.prompt, &options.language, &options.model];
                prop_assert!(strings.iter().all(|s| !s.contains('\0')));
                prop_assert!(options.vocabulary.iter().all(|s| !s.contains('\0')));
                prop_assert!(options.prompt.len() <= MAX_PROMPT_BYTES);
                prop_assert!(options.model.len() <= MAX_MODEL_BYTES);
            }
        }
    }
}
