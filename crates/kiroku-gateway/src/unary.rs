//! Unary `Transcribe`: a whole file through the same path as a live stream (frames on
//! `AUDIO`, a job on `SESSIONS`, finals on `TRANSCRIPTS`), marked `batch` so the worker
//! decodes the audio in one pass instead of running the live policy.

use std::sync::Arc;
use std::time::Instant;

use kiroku_audio::{AudioError, decode_wav};
use kiroku_auth::auth::Principal;
use kiroku_core::audit::{AuditRecord, actions};
use kiroku_core::nats::Layout;
use kiroku_proto::events::v1 as events;
use kiroku_proto::transcribe::v1::{self as api, transcribe_request};
use prost::Message as _;
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, info};

use crate::Shared;
use crate::admission::StreamLease;
use crate::error::{GatewayError, Result};
use crate::resample::{OUTPUT_RATE_HZ, StreamResampler};
use crate::stream::{follow_finals, publish_frame, publish_job, validate_format, validate_options};

/// Samples per published frame (200 ms, the largest frame a live client may send).
const FRAME_SAMPLES: usize = OUTPUT_RATE_HZ as usize / 5;

/// The route of unary `Transcribe`, whose caller is authenticated before its body (up
/// to 64 MiB) is read.
const TRANSCRIBE_PATH: &str = "/kiroku.transcribe.v1.Transcription/Transcribe";

/// The caller of a `Transcribe` request, admitted before its body was read.
#[derive(Clone)]
struct Admitted(kiroku_auth::auth::Principal);

/// Authenticates `Transcribe` callers from their headers before tonic reads the request
/// body: an anonymous or revoked caller is refused without the gateway receiving (or
/// buffering) up to 64 MiB of audio.
pub(crate) fn authenticate_before_body(
    routes: tonic::service::Routes,
    gatekeeper: Arc<crate::access::Gatekeeper>,
) -> tonic::service::Routes {
    let layer = axum::middleware::from_fn(
        move |mut request: axum::extract::Request, next: axum::middleware::Next| {
            let gatekeeper = gatekeeper.clone();
            async move {
                if request.uri().path() != TRANSCRIBE_PATH {
                    return next.run(request).await;
                }
                let metadata =
                    tonic::metadata::MetadataMap::from_headers(request.headers().clone());
                match gatekeeper.admit(&metadata, "Transcribe").await {
                    Ok(principal) => {
                        request.extensions_mut().insert(Admitted(principal));
                        next.run(request).await
                    }
                    Err(status) => {
                        kiroku_core::metrics::metrics().error(status.code());
                        crate::stream_refused(&status);
                        status.into_http::<axum::body::Body>()
                    }
                }
            }
        },
    );
    tonic::service::Routes::from(routes.into_axum_router().layer(layer))
}

/// Bytes of decoded audio one gateway holds at once for file requests (WAV decoding
/// and resampling); a request that would go over waits for room, then is refused.
pub(crate) const DECODE_BUDGET_BYTES: usize = 256 * 1024 * 1024;
/// How long a file request waits for room in the decode budget.
const DECODE_BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The gateway's room for decoding files, in MiB permits.
pub(crate) fn decode_budget() -> tokio::sync::Semaphore {
    tokio::sync::Semaphore::new(DECODE_BUDGET_BYTES >> 20)
}

/// Decodes a WAV file or raw PCM into 16 kHz mono samples, on the blocking pool.
async fn decode_source(
    source: transcribe_request::Source,
    raw_format: Option<api::AudioFormat>,
) -> Result<Vec<i16>> {
    let decoded = tokio::task::spawn_blocking(move || match source {
        transcribe_request::Source::Wav(bytes) => match decode_wav(std::io::Cursor::new(bytes)) {
            Ok(pcm) => Ok(pcm
                .samples
                .iter()
                .map(|s| (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
                .collect()),
            Err(AudioError::Silent) => Ok(Vec::new()),
            Err(error) => Err(GatewayError::invalid(format!("wav: {error}"))),
        },
        transcribe_request::Source::Raw(bytes) => {
            let spec = validate_format(raw_format.as_ref())?;
            if !bytes.len().is_multiple_of(2 * spec.channels as usize) {
                return Err(GatewayError::invalid(format!(
                    "raw audio of {} bytes is not whole 16-bit samples for {} channel(s)",
                    bytes.len(),
                    spec.channels
                )));
            }
            let mut resampler = StreamResampler::new(spec.rate_hz, spec.channels)
                .map_err(|e| GatewayError::internal("a validated format was refused", e))?;
            let mut pcm = resampler.push(&bytes);
            pcm.extend(resampler.finish());
            Ok(pcm)
        }
    })
    .await;
    decoded.map_err(|e| GatewayError::internal("decoding the audio failed", e))?
}

/// A file request, counted as a stream: refused before it began, or ended.
pub(crate) async fn transcribe(
    shared: Arc<Shared>,
    request: Request<api::TranscribeRequest>,
) -> Result<Response<api::TranscribeResponse>, Status> {
    let mut started = false;
    // The one place a file's error becomes its status (internal causes logged here).
    let result = transcribe_file(shared, request, &mut started)
        .await
        .map_err(Status::from);
    match (&result, started) {
        (Err(status), false) => crate::stream_refused(status),
        (Err(status), true) => kiroku_core::metrics::metrics().stream_ended(status.code()),
        (Ok(_), _) => kiroku_core::metrics::metrics().stream_ended(tonic::Code::Ok),
    }
    result
}

async fn transcribe_file(
    shared: Arc<Shared>,
    request: Request<api::TranscribeRequest>,
    started: &mut bool,
) -> Result<Response<api::TranscribeResponse>> {
    let principal = admit_file(&shared, &request).await?;
    let mut request = request.into_inner();
    let Some(source) = request.source.take() else {
        return Err(GatewayError::invalid(
            "set `wav` (a WAV file) or `raw` with `raw_format`",
        ));
    };
    let input_bytes = match &source {
        transcribe_request::Source::Wav(bytes) | transcribe_request::Source::Raw(bytes) => {
            bytes.len()
        }
    };
    check_size(input_bytes, shared.config.limits.max_file_bytes)?;
    // A file counts against the tenant's concurrent-stream quota like a live stream.
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let _slot = StreamSlot::take(&shared, &principal, &session_id).await?;
    let _budget = decode_budget_for(&shared, input_bytes).await?;
    let pcm = decode_source(source, request.raw_format.take()).await?;
    let duration_ms = pcm.len() as u64 * 1000 / u64::from(OUTPUT_RATE_HZ);
    let model = request
        .options
        .as_ref()
        .map(|o| o.model.clone())
        .unwrap_or_default();
    // A child of the call's SERVER span (kiroku_core::grpc_metrics), which continues
    // the client's trace.
    let span = tracing::info_span!(
        "gateway.transcribe",
        duration_ms,
        otel.name = "gateway transcribe"
    );
    // Audited as a stream (kind "file"): the usage view counts files with streams.
    let audit = |action| {
        AuditRecord::new(principal.tenant_token(), principal.actor(), action)
            .target(format!("session/{session_id}"))
            .detail("meeting", request.meeting_id.clone())
            .detail("kind", "file")
    };
    span.in_scope(|| shared.audit.spawn_emit(audit(actions::STREAM_STARTED)));
    kiroku_core::metrics::metrics().streams_started.inc();
    *started = true;
    let ended = audit(actions::STREAM_ENDED).detail("audio_ms", duration_ms.to_string());
    let started = Instant::now();
    let outcome = run_batch(
        &shared,
        &principal.tenant_token(),
        &session_id,
        request,
        pcm,
        &span,
    )
    .instrument(span.clone())
    .await;
    let ended = match &outcome {
        Ok((segments, _)) => ended.detail("finals", segments.len().to_string()),
        Err(status) => ended
            .failed()
            .detail("code", format!("{:?}", status.code())),
    };
    span.in_scope(|| shared.audit.spawn_emit(ended));
    let (segments, language) = outcome?;
    let processing = started.elapsed();
    let text = kiroku_core::transcript::join_words(segments.iter().map(|s| s.text.as_str()));
    Ok(Response::new(api::TranscribeResponse {
        duration_ms,
        text,
        language,
        segments,
        stats: Some(api::TranscribeStats {
            processing_ms: processing.as_millis() as u64,
            real_time_factor: if duration_ms == 0 {
                0.0
            } else {
                processing.as_secs_f32() * 1000.0 / duration_ms as f32
            },
            model,
        }),
    }))
}

/// The caller of `Transcribe` (already admitted by the interceptor on the public port),
/// its request rate, the request's meeting id and options, and the meeting's consent.
async fn admit_file(
    shared: &Shared,
    request: &Request<api::TranscribeRequest>,
) -> Result<Principal> {
    let principal = match request.extensions().get::<Admitted>() {
        Some(Admitted(principal)) => principal.clone(),
        None => {
            shared
                .gatekeeper
                .admit(request.metadata(), "Transcribe")
                .await?
        }
    };
    shared.admission.admit_request(&principal).await?;
    let body = request.get_ref();
    if !body.meeting_id.trim().is_empty() {
        kiroku_core::validate::meeting_id("meeting_id", &body.meeting_id)?;
    }
    validate_options(body.options.as_ref(), &shared.config.limits)?;
    shared
        .gatekeeper
        .check_consent(request.metadata(), &body.meeting_id)
        .await?;
    Ok(principal)
}

/// One of the tenant's concurrent-stream slots, renewed every 5 s while held and
/// released when dropped.
struct StreamSlot {
    _lease: Arc<StreamLease>,
    _renewal: AbortOnDrop,
}

impl StreamSlot {
    async fn take(shared: &Shared, principal: &Principal, session: &str) -> Result<Self> {
        let lease = Arc::new(shared.admission.acquire_stream(principal, session).await?);
        let renewal = {
            let lease = lease.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    lease.renew().await;
                }
            })
        };
        Ok(Self {
            _lease: lease,
            _renewal: AbortOnDrop(renewal),
        })
    }
}

/// This gateway's memory for decoding a file of `input_bytes`: about four times the
/// input (f32 samples, then 16-bit at 16 kHz); refused with retry info when other
/// files hold it for longer than [`DECODE_BUDGET_WAIT`].
async fn decode_budget_for(
    shared: &Shared,
    input_bytes: usize,
) -> Result<tokio::sync::SemaphorePermit<'_>, Status> {
    let budget_mib = (input_bytes.saturating_mul(4) >> 20).max(1) as u32;
    match tokio::time::timeout(
        DECODE_BUDGET_WAIT,
        shared.decode_budget.acquire_many(budget_mib),
    )
    .await
    {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(kiroku_core::status::resource_exhausted(
            "this gateway is decoding other files; retry shortly",
            std::time::Duration::from_secs(5),
        )),
    }
}

/// Aborts a background task when dropped (the lease renewal of a file request).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn check_size(bytes: usize, max: usize) -> Result<()> {
    if bytes > max {
        return Err(GatewayError::invalid(format!(
            "the audio is {bytes} bytes; at most {max} bytes per request (stream longer audio)"
        )));
    }
    Ok(())
}

async fn run_batch(
    shared: &Shared,
    tenant: &str,
    session: &str,
    request: api::TranscribeRequest,
    pcm: Vec<i16>,
    span: &tracing::Span,
) -> Result<(Vec<api::Segment>, String)> {
    let (tenant, session) = (tenant.to_string(), session.to_string());
    let mut finals = follow_finals(shared, &tenant, &session).await?;

    publish_job(
        shared,
        &events::SessionJob {
            tenant_id: tenant.clone(),
            session_id: session.clone(),
            meeting_id: request.meeting_id.clone(),
            options: request.options.clone(),
            interim_results: false,
            created_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            traceparent: kiroku_core::trace::traceparent(span),
            batch: true,
        },
    )
    .await?;
    let frame = |seq: u64, offset: u64, samples: &[i16], end: bool| events::AudioFrame {
        tenant_id: tenant.clone(),
        session_id: session.clone(),
        seq,
        offset_ms: offset * 1000 / u64::from(OUTPUT_RATE_HZ),
        pcm_s16le: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        end_of_stream: end,
        flush_utterance: false,
        offset_samples: offset,
    };
    let mut acks = Vec::new();
    let mut offset = 0u64;
    let mut seq = 0u64;
    for chunk in pcm.chunks(FRAME_SAMPLES) {
        seq += 1;
        let id = Layout::frame_msg_id(&session, seq);
        let end = offset + chunk.len() as u64;
        // Pipelined: a batch worker places each frame by its offset, whatever the order.
        acks.push(
            publish_frame(shared, frame(seq, offset, chunk, false), id, seq, end, None).await?,
        );
        offset = end;
    }
    for ack in acks {
        let (seq, _, outcome) = ack.await;
        outcome
            .map_err(|e| GatewayError::unavailable(format!("frame {seq} was not stored: {e}")))?;
    }
    // The end of stream only once every frame is stored: the worker stops reading at it.
    let eos_id = format!("{session}:eos");
    let eos = publish_frame(
        shared,
        frame(seq, offset, &[], true),
        eos_id,
        seq,
        offset,
        None,
    );
    let (_, _, outcome) = eos.await?.await;
    outcome.map_err(|e| {
        GatewayError::unavailable(format!("the end of the file was not stored: {e}"))
    })?;
    info!(%session, frames = seq, "file queued");

    let deadline = tokio::time::Instant::now() + shared.config.transcribe_timeout;
    let mut segments = Vec::new();
    let mut language = String::new();
    let outcome = loop {
        let Ok(message) = tokio::time::timeout_at(deadline, finals.next()).await else {
            break Err(GatewayError::Timeout(format!(
                "no transcript within {} s (are workers running?)",
                shared.config.transcribe_timeout.as_secs()
            )));
        };
        let result = events::TranscriptResult::decode(message.payload.as_ref())
            .map_err(|e| GatewayError::internal("a stored result does not decode", e))?;
        if result.session_closed {
            break GatewayError::from_close_reason(&result.close_reason);
        }
        if let Some(result) = result.result {
            if language.is_empty() {
                language = result.language;
            }
            segments.extend(result.segment);
        }
    };
    finals.close().await;
    outcome.map(|()| (segments, language))
}
