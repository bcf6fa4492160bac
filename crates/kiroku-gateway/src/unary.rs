//! Unary `Transcribe`: a whole file through the same path as a live stream (frames on
//! `AUDIO`, a job on `SESSIONS`, finals on `TRANSCRIPTS`), marked `batch` so the worker
//! decodes the audio in one pass instead of running the live policy.

use std::sync::Arc;
use std::time::Instant;

use kiroku_core::nats::{Follower, Layout};
use kiroku_engine::audio::{AudioError, decode_wav};
use kiroku_proto::events::v1 as events;
use kiroku_proto::transcribe::v1::{self as api, transcribe_request};
use prost::Message as _;
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, info};

use crate::Shared;
use crate::resample::{OUTPUT_RATE_HZ, StreamResampler};
use crate::stream::{publish_frame, publish_job, validate_format, validate_options};

/// Samples per published frame (200 ms, the largest frame a live client may send).
const FRAME_SAMPLES: usize = OUTPUT_RATE_HZ as usize / 5;

pub(crate) async fn transcribe(
    shared: Arc<Shared>,
    request: Request<api::TranscribeRequest>,
) -> Result<Response<api::TranscribeResponse>, Status> {
    let parent = kiroku_core::trace::extract_grpc(request.metadata());
    let principal = shared
        .gatekeeper
        .admit(request.metadata(), "Transcribe")
        .await?;
    shared.admission.admit_request(&principal).await?;
    shared
        .gatekeeper
        .check_consent(request.metadata(), &request.get_ref().meeting_id)
        .await?;
    let request = request.into_inner();
    let limits = &shared.config.limits;
    validate_options(request.options.as_ref(), limits)?;
    let pcm = match &request.source {
        None => {
            return Err(Status::invalid_argument(
                "set `wav` (a WAV file) or `raw` with `raw_format`",
            ));
        }
        Some(transcribe_request::Source::Wav(bytes)) => {
            check_size(bytes.len(), limits.max_file_bytes)?;
            match decode_wav(std::io::Cursor::new(bytes)) {
                Ok(pcm) => pcm
                    .samples
                    .iter()
                    .map(|s| (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
                    .collect(),
                Err(AudioError::Silent) => Vec::new(),
                Err(error) => return Err(Status::invalid_argument(format!("wav: {error}"))),
            }
        }
        Some(transcribe_request::Source::Raw(bytes)) => {
            check_size(bytes.len(), limits.max_file_bytes)?;
            let spec = validate_format(request.raw_format.as_ref())?;
            if !bytes.len().is_multiple_of(2 * spec.channels as usize) {
                return Err(Status::invalid_argument(format!(
                    "raw audio of {} bytes is not whole 16-bit samples for {} channel(s)",
                    bytes.len(),
                    spec.channels
                )));
            }
            let mut resampler =
                StreamResampler::new(spec.rate_hz, spec.channels).map_err(Status::internal)?;
            let mut pcm = resampler.push(bytes);
            pcm.extend(resampler.finish());
            pcm
        }
    };
    let duration_ms = pcm.len() as u64 * 1000 / u64::from(OUTPUT_RATE_HZ);
    let model = request
        .options
        .as_ref()
        .map(|o| o.model.clone())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "gateway.transcribe",
        duration_ms,
        otel.name = "gateway transcribe"
    );
    kiroku_core::trace::set_parent(&span, parent);
    let started = Instant::now();
    let (segments, language) = run_batch(&shared, &principal.tenant_token(), request, pcm, &span)
        .instrument(span.clone())
        .await?;
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

fn check_size(bytes: usize, max: usize) -> Result<(), Status> {
    if bytes > max {
        return Err(Status::invalid_argument(format!(
            "the audio is {bytes} bytes; at most {max} bytes per request (stream longer audio)"
        )));
    }
    Ok(())
}

async fn run_batch(
    shared: &Shared,
    tenant: &str,
    request: api::TranscribeRequest,
    pcm: Vec<i16>,
    span: &tracing::Span,
) -> Result<(Vec<api::Segment>, String), Status> {
    let tenant = tenant.to_string();
    let session = uuid::Uuid::new_v4().simple().to_string();
    let layout = &shared.config.layout;
    let mut finals = Follower::new(
        shared.nats.clone(),
        shared.transcripts.clone(),
        layout.transcript_subject(&tenant, &session),
        &format!("gw_{session}"),
        0,
    )
    .await
    .map_err(|e| Status::unavailable(format!("cannot follow results: {e}")))?;

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
        outcome.map_err(|e| Status::unavailable(format!("frame {seq} was not stored: {e}")))?;
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
    outcome.map_err(|e| Status::unavailable(format!("the end of the file was not stored: {e}")))?;
    info!(%session, frames = seq, "file queued");

    let deadline = tokio::time::Instant::now() + shared.config.transcribe_timeout;
    let mut segments = Vec::new();
    let mut language = String::new();
    let outcome = loop {
        let Ok(message) = tokio::time::timeout_at(deadline, finals.next()).await else {
            break Err(Status::deadline_exceeded(format!(
                "no transcript within {} s (are workers running?)",
                shared.config.transcribe_timeout.as_secs()
            )));
        };
        let result = events::TranscriptResult::decode(message.payload.as_ref())
            .map_err(|e| Status::internal(format!("a stored result does not decode: {e}")))?;
        if result.session_closed {
            if let Some(error) = result.close_reason.strip_prefix("invalid: ") {
                break Err(Status::invalid_argument(error.to_string()));
            }
            if let Some(error) = result.close_reason.strip_prefix("error: ") {
                break Err(Status::internal(format!("the worker failed: {error}")));
            }
            break Ok(());
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
