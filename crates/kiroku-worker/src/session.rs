//! One session job, from recovery to close.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::message::PublishMessage as Publish;
use bytes::Bytes;
use futures::StreamExt as _;
use kiroku_core::nats::{Follower, Layout};
use kiroku_core::transcript::Word;
use kiroku_engine::live::{Live, UtteranceFinal};
use kiroku_engine::streaming::{Caption, DecodeKind, DecodeRequest};
use kiroku_engine::{TranscribeOptions, Turn};
use kiroku_proto::events::v1 as events;
use kiroku_proto::transcribe::v1 as api;
use prost::Message as _;
use tokio::sync::watch;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::Ctx;

const RATE: u64 = 16_000;

/// A stream asked to detect its language keeps the language of the first decode that
/// covers this much audio or commits words: later decodes are told that language, so a
/// meeting does not flip language from one chunk to the next (a Japanese meeting with
/// English product names stays Japanese).
const DETECTION_MIN_AUDIO_MS: u64 = 2_000;

/// How a session task ended.
enum Outcome {
    /// Closed (end of stream, abandoned, or failed with a reported error): ack the job.
    Closed,
    /// Handed back while draining: NAK so another worker continues at once.
    HandedBack,
    /// Could not run now (NATS trouble): let JetStream redeliver it later.
    Retry(String),
}

/// Runs one job message to its end, acking progress meanwhile.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    message: async_nats::jetstream::Message,
    drain: watch::Receiver<bool>,
) {
    let job = match events::SessionJob::decode(message.payload.as_ref()) {
        Ok(job) => job,
        Err(error) => {
            warn!(%error, "undecodable session job: terminated");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let job_session = job.session_id.clone();
    let span = info_span!(
        "worker.session",
        session = %job.session_id,
        tenant = %job.tenant_id,
        batch = job.batch,
        otel.name = "worker session",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation = "process",
    );
    kiroku_core::trace::set_parent(
        &span,
        kiroku_core::trace::context_from_traceparent(&job.traceparent),
    );
    // The job's latest delivery: a redelivery of a job this worker is already running
    // (after a NATS outage) replaces it here instead of starting a second copy.
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let (latest_tx, latest) = watch::channel(Arc::new(message));
    if let Ok(mut active) = ctx.active.lock() {
        active.insert(job.session_id.clone(), latest_tx);
    }
    let heartbeat = {
        let latest = latest.clone();
        let every = ctx.config.ack_wait / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let message = latest.borrow().clone();
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    debug!(%error, "progress ack failed");
                }
            }
        })
    };
    let outcome = async {
        if delivered > 1 {
            info!(delivered, "taking over a session (redelivered job)");
        } else {
            info!("session started");
        }
        let mut session = Session::new(ctx.clone(), job);
        let outcome = session.run(drain).await;
        kiroku_core::metrics::metrics().active_streams.dec();
        outcome
    }
    .instrument(span.clone())
    .await;
    heartbeat.abort();
    if let Ok(mut active) = ctx.active.lock() {
        active.remove(&job_session);
    }
    ctx.set_lag(&job_session, None);
    let message = latest.borrow().clone();
    let _enter = span.enter();
    match outcome {
        Outcome::Closed => {
            if let Err(error) = message.double_ack().await {
                warn!(%error, "ack of a closed session failed (it will be redelivered and closed again)");
            }
        }
        Outcome::HandedBack => {
            let _ = message.ack_with(AckKind::Nak(None)).await;
            info!("session handed back for another worker");
        }
        Outcome::Retry(why) => {
            warn!(why, "session could not run; retry in 2 s");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                .await;
        }
    }
}

struct Session {
    ctx: Arc<Ctx>,
    job: events::SessionJob,
    /// Next final's seq.
    next_result_seq: u64,
    /// Last client frame seq that carried audio (replays and duplicates are skipped).
    last_audio_seq: u64,
    /// (JetStream sequence, end sample) of frames not yet fully committed.
    frames: VecDeque<(u64, u64)>,
    /// Stream sequence of the next frame to come (when `frames` is empty).
    next_stream_seq: u64,
    /// The stream's language: the one asked for, else the detected one once detection
    /// has run (empty until then).
    language: String,
    checkpoint: events::SessionCheckpoint,
}

impl Session {
    fn new(ctx: Arc<Ctx>, job: events::SessionJob) -> Self {
        kiroku_core::metrics::metrics().active_streams.inc();
        let english_only = ctx.engine.as_ref().is_some_and(|e| !e.info().multilingual);
        // A language the model cannot transcribe stays, to be refused at the start.
        let requested = job
            .options
            .as_ref()
            .map(|o| o.language.as_str())
            .filter(|l| !l.is_empty() && *l != "auto");
        let language = match requested {
            Some(language) => language.to_string(),
            None if english_only => "en".to_string(),
            None => String::new(),
        };
        Self {
            ctx,
            job,
            next_result_seq: 1,
            last_audio_seq: 0,
            frames: VecDeque::new(),
            next_stream_seq: 0,
            language,
            checkpoint: events::SessionCheckpoint::default(),
        }
    }

    fn layout(&self) -> &Layout {
        &self.ctx.config.layout
    }

    /// The newest checkpoint: KV, or the one inside the last final if that is newer
    /// (the worker died between publishing a final and writing KV). `None` when the
    /// session already closed.
    async fn recover(&mut self) -> Result<Option<()>, String> {
        let key = &self.job.session_id;
        let mut checkpoint = match self.ctx.checkpoints.get(key).await {
            Ok(Some(bytes)) => {
                events::SessionCheckpoint::decode(bytes.as_ref()).unwrap_or_default()
            }
            Ok(None) => events::SessionCheckpoint::default(),
            Err(error) => return Err(format!("reading the checkpoint: {error}")),
        };
        let subject = self.layout().transcript_subject(&self.job.tenant_id, key);
        match self
            .ctx
            .transcripts
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(last) => {
                let last = events::TranscriptResult::decode(last.payload.as_ref())
                    .map_err(|e| format!("the last final does not decode: {e}"))?;
                if last.session_closed {
                    return Ok(None);
                }
                if let Some(carried) = last.checkpoint
                    && carried.last_result_seq > checkpoint.last_result_seq
                {
                    checkpoint = carried;
                }
            }
            Err(error)
                if error.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(error) => return Err(format!("reading the last final: {error}")),
        }
        self.next_result_seq = checkpoint.last_result_seq + 1;
        self.last_audio_seq = checkpoint.last_audio_seq;
        if !checkpoint.language.is_empty() {
            self.language = checkpoint.language.clone();
        }
        self.checkpoint = checkpoint;
        Ok(Some(()))
    }

    async fn run(&mut self, mut drain: watch::Receiver<bool>) -> Outcome {
        match self.recover().await {
            Ok(Some(())) => {}
            Ok(None) => return Outcome::Closed,
            Err(why) => return Outcome::Retry(why),
        }
        let options = self.decode_options();
        let refused = [&self.ctx.engine, &self.ctx.final_engine]
            .into_iter()
            .flatten()
            .find_map(|engine| engine.check_options(&options).err());
        if let Some(error) = refused {
            return self.close_invalid(error.to_string()).await;
        }
        if !self.job.batch {
            // The client may have been told it is queued: it no longer is.
            self.announce_running().await;
        }
        let resumed =
            self.checkpoint.last_result_seq > 0 || self.checkpoint.committed_offset_ms > 0;
        if resumed {
            info!(
                committed_ms = self.checkpoint.committed_offset_ms,
                last_result_seq = self.checkpoint.last_result_seq,
                "resuming from checkpoint"
            );
        }
        let audio_subject = self
            .layout()
            .audio_subject(&self.job.tenant_id, &self.job.session_id);
        let mut audio = match Follower::new(
            self.ctx.nats.clone(),
            self.ctx.audio.clone(),
            audio_subject,
            &format!("wk_{}", self.job.session_id),
            self.checkpoint.audio_stream_seq,
        )
        .await
        {
            Ok(audio) => audio,
            Err(error) => return Outcome::Retry(error.to_string()),
        };
        let outcome = if self.job.batch {
            self.run_batch(&mut audio, &mut drain).await
        } else if self.ctx.engine.is_none() {
            self.run_null(&mut audio, &mut drain).await
        } else {
            self.run_live(&mut audio, &mut drain, resumed).await
        };
        audio.close().await;
        outcome
    }

    /// Reads the next frame; `Err` on a consumer failure.
    fn take_frame(
        &mut self,
        message: &async_nats::jetstream::Message,
    ) -> Result<events::AudioFrame, String> {
        let frame = events::AudioFrame::decode(message.payload.as_ref())
            .map_err(|e| format!("undecodable audio frame: {e}"))?;
        let info = message.info().ok();
        let stream_seq = info.as_ref().map_or(0, |i| i.stream_sequence);
        // A file's frames are all stored before it is decoded: their age is the
        // file's queue, not the plumbing's transit time.
        if !self.job.batch
            && let Some(age) = info
                .as_ref()
                .and_then(kiroku_core::nats::stored_age_seconds)
        {
            kiroku_core::metrics::metrics()
                .audio_delivery_seconds
                .observe(age);
        }
        let end = frame.offset_samples + frame.pcm_s16le.len() as u64 / 2;
        self.frames.push_back((stream_seq, end));
        self.next_stream_seq = stream_seq + 1;
        Ok(frame)
    }

    async fn run_live(
        &mut self,
        audio: &mut Follower,
        drain: &mut watch::Receiver<bool>,
        resumed: bool,
    ) -> Outcome {
        let (Some(engine), Some(final_engine)) =
            (self.ctx.engine.clone(), self.ctx.final_engine.clone())
        else {
            return Outcome::Retry("no engine".into());
        };
        let mut track = Track {
            live: Live::new(
                self.ctx.config.policy.clone().for_language(&self.language),
                self.ctx.config.finals.clone().for_language(&self.language),
                resumed.then_some(self.checkpoint.committed_offset_ms),
            ),
            options: self.decode_options(),
            engine,
            final_engine,
            in_flight: None,
            turn: None,
            lag: crate::LagWindow::default(),
            arrivals: crate::Arrivals::default(),
            turn_asked_at_ms: 0,
            last_checkpoint_write: Instant::now(),
        };
        let presence_subject = self
            .layout()
            .presence_subject(&self.job.tenant_id, &self.job.session_id);
        let mut presence = match self.ctx.nats.subscribe(presence_subject).await {
            Ok(subscriber) => subscriber,
            Err(error) => return Outcome::Retry(format!("presence subscription: {error}")),
        };
        let mut erased = match self.erasure_notices().await {
            Ok(subscriber) => subscriber,
            Err(outcome) => return outcome,
        };
        let window = self.ctx.config.resume_window;
        let idle = tokio::time::sleep(window);
        tokio::pin!(idle);
        let mut closing: Option<&'static str> = None;

        loop {
            // Words an utterance's end committed without a decode (pushed audio or a
            // flush in the last round).
            for caption in track.live.take_captions() {
                self.publish_caption(caption).await;
            }
            if let Err(error) = track.ask_for_turn() {
                return Outcome::Retry(format!("inference pool: {error}"));
            }
            if let Some(reason) = closing
                && track.in_flight.is_none()
                && track.live.is_idle()
            {
                return self.close(reason).await;
            }
            tokio::select! {
                message = audio.next(), if closing.is_none() => {
                    let frame = match self.take_frame(&message) {
                        Ok(frame) => frame,
                        Err(error) => { warn!(error, "skipping frame"); continue; }
                    };
                    idle.as_mut().reset(tokio::time::Instant::now() + window);
                    if !frame.pcm_s16le.is_empty() {
                        // Replays after a takeover overlap finalized audio: the track
                        // takes it as left context only, so no seq check is needed.
                        self.last_audio_seq = self.last_audio_seq.max(frame.seq);
                    }
                    if track.push_frame(&frame) {
                        closing = Some("end_of_stream");
                    }
                }
                granted = wait_for_turn(&mut track.turn), if track.turn.is_some() => {
                    let Ok(granted) = granted else {
                        return Outcome::Retry("the inference pool has shut down".into());
                    };
                    track.start_decode(granted);
                }
                decoded = join_in_flight(&mut track.in_flight), if track.in_flight.is_some() => {
                    track.in_flight = None;
                    if let Err(outcome) = self.on_decoded(&mut track, decoded).await {
                        return outcome;
                    }
                }
                Some(_) = presence.next() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + window);
                    self.announce_running().await;
                    // Every 5 s: a decode that stalls shows, an old peak is forgotten.
                    let stalled = track.in_flight.is_some().then_some(track.turn_asked_at_ms);
                    self.report_lag(&mut track.lag, stalled, &track.arrivals);
                }
                Some(_) = erased.next() => {
                    if let Some(handle) = track.in_flight.take() {
                        handle.abort();
                    }
                    return self.close_erased().await;
                }
                () = &mut idle, if closing.is_none() => {
                    info!(window_s = window.as_secs(), "no client within the resume window: closing");
                    track.live.flush();
                    closing = Some("abandoned");
                }
                () = crate::drained(drain) => {
                    if let Some(handle) = track.in_flight.take() {
                        // Let the running decode finish: its words are not lost, they
                        // are simply decoded again by the next worker.
                        let _ = handle.await;
                    }
                    self.write_checkpoint(Position::of(&track.live)).await;
                    return Outcome::HandedBack;
                }
            }
        }
    }

    /// A decode of the live track ended: its captions, finals and interim are
    /// published, the lag reported, the checkpoint kept fresh. `Err` ends the session.
    async fn on_decoded(
        &mut self,
        track: &mut Track,
        decoded: Result<Decoded, tokio::task::JoinError>,
    ) -> Result<(), Outcome> {
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(error) => {
                return Err(self.close_with_error(format!("decode task: {error}")).await);
            }
        };
        let words = match decoded.words {
            Ok(words) => words,
            Err(error) => return Err(self.close_with_error(error).await),
        };
        let output = track.live.on_decoded(decoded.id, words);
        if self.language.is_empty()
            && !decoded.language.is_empty()
            && (decoded.audio_ms >= DETECTION_MIN_AUDIO_MS
                || !output.captions.is_empty()
                || !output.finals.is_empty())
        {
            info!(language = decoded.language, "language detected");
            self.language = decoded.language;
            track.options = self.decode_options();
            track.live.set_config(
                self.ctx.config.policy.clone().for_language(&self.language),
                self.ctx.config.finals.clone().for_language(&self.language),
            );
        }
        debug!(
            id = decoded.id,
            captions = output.captions.len(),
            finals = output.finals.len(),
            interim = output
                .interim
                .as_ref()
                .map(|i| i.text.as_str())
                .unwrap_or(""),
            idle = track.live.is_idle(),
            "decoded"
        );
        // The audio this decode did not cover (the peak of that staleness), and how
        // late its words are shown.
        let shown = output
            .captions
            .iter()
            .map(|c| c.end_ms)
            .chain(output.finals.iter().map(|f| f.end_ms));
        self.report_lag(
            &mut track.lag,
            shown.chain([track.turn_asked_at_ms]),
            &track.arrivals,
        );
        for caption in output.captions {
            self.publish_caption(caption).await;
        }
        let position = Position::of(&track.live);
        for final_ in output.finals {
            self.publish_utterance(final_, position)
                .await
                .map_err(Outcome::Retry)?;
            track.last_checkpoint_write = Instant::now();
        }
        if let Some(interim) = output.interim {
            self.publish_live(
                api::ResultKind::Interim,
                interim.start_ms,
                interim.end_ms,
                interim.text,
                interim.words,
            )
            .await;
        }
        if track.last_checkpoint_write.elapsed() > Duration::from_secs(5) {
            // Silence moves the minutes' boundary without finals.
            self.write_checkpoint(Position::of(&track.live)).await;
            track.last_checkpoint_write = Instant::now();
        }
        Ok(())
    }

    /// BENCHMARK ONLY (null engine): every audio frame becomes an interim whose text is
    /// the frame's seq; end of stream closes. No inference, no policy.
    async fn run_null(
        &mut self,
        audio: &mut Follower,
        drain: &mut watch::Receiver<bool>,
    ) -> Outcome {
        loop {
            tokio::select! {
                message = audio.next() => {
                    let Ok(frame) = self.take_frame(&message) else { continue };
                    if frame.end_of_stream {
                        return self.close("end_of_stream").await;
                    }
                    let ms = frame.offset_samples * 1000 / RATE;
                    self.publish_live(api::ResultKind::Interim, ms, ms, frame.seq.to_string(), Vec::new())
                        .await;
                }
                () = crate::drained(drain) => return Outcome::HandedBack,
            }
        }
    }

    /// A whole file: collect all audio, decode once, publish each segment as a final.
    async fn run_batch(
        &mut self,
        audio: &mut Follower,
        drain: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let mut samples: Vec<f32> = Vec::new();
        let mut erased = match self.erasure_notices().await {
            Ok(subscriber) => subscriber,
            Err(outcome) => return outcome,
        };
        loop {
            tokio::select! {
                Some(_) = erased.next() => return self.close_erased().await,
                message = audio.next() => {
                    let Ok(frame) = self.take_frame(&message) else { continue };
                    let start = frame.offset_samples as usize;
                    let pcm = to_f32(&frame.pcm_s16le);
                    if samples.len() < start + pcm.len() {
                        samples.resize(start + pcm.len(), 0.0);
                    }
                    samples[start..start + pcm.len()].copy_from_slice(&pcm);
                    if frame.end_of_stream {
                        break;
                    }
                }
                () = crate::drained(drain) => return Outcome::HandedBack,
            }
        }
        if self.ctx.engine.is_none() || samples.is_empty() {
            return self.close("end_of_stream").await;
        }
        let Some(engine) = self.ctx.final_engine.clone() else {
            return self.close("end_of_stream").await;
        };
        let options = TranscribeOptions {
            beam_size: self.job.options.as_ref().map_or(1, |o| o.beam_size.max(1)),
            ..self.decode_options()
        };
        let duration = samples.len() as f64 / RATE as f64;
        let started = Instant::now();
        let span = info_span!(
            "worker.decode",
            batch = true,
            audio_s = duration,
            otel.name = "worker decode"
        );
        let vad = self.ctx.config.policy.vad.clone();
        let transcript = tokio::task::spawn_blocking(move || {
            kiroku_engine::file::transcribe_file(&engine, &samples, options, vad, None)
        })
        .instrument(span)
        .await;
        kiroku_core::metrics::metrics()
            .real_time_factor
            .observe(started.elapsed().as_secs_f64() / duration.max(0.001));
        let transcript = match transcript {
            Ok(Ok(transcript)) => transcript,
            Ok(Err(kiroku_engine::EngineError::InvalidOption(why))) => {
                return self.close_invalid(why).await;
            }
            Ok(Err(error)) => return self.close_with_error(error.to_string()).await,
            Err(error) => return self.close_with_error(error.to_string()).await,
        };
        self.language = transcript.language.clone();
        for segment in transcript.segments {
            let position = Position {
                committed_offset_ms: segment.end_ms,
                replay_from_ms: segment.end_ms,
            };
            if let Err(why) = self
                .publish_final(
                    segment.start_ms,
                    segment.end_ms,
                    segment.text,
                    segment.words,
                    position,
                )
                .await
            {
                return Outcome::Retry(why);
            }
        }
        self.close("end_of_stream").await
    }

    fn decode_options(&self) -> TranscribeOptions {
        let options = self.job.options.clone().unwrap_or_default();
        let mut prompt: Vec<String> = options.vocabulary.clone();
        if !options.prompt.is_empty() {
            prompt.push(options.prompt.clone());
        }
        TranscribeOptions {
            // The stream's language once known; "auto" (or nothing) detects.
            language: if self.language.is_empty() {
                (!options.language.is_empty()).then(|| options.language.clone())
            } else {
                Some(self.language.clone())
            },
            beam_size: 1,
            prompt: (!prompt.is_empty()).then(|| prompt.join(", ")),
            ..Default::default()
        }
    }

    fn segment(start_ms: u64, end_ms: u64, text: String, words: Vec<Word>) -> api::Segment {
        let confidence = if words.is_empty() {
            0.0
        } else {
            words.iter().map(|w| w.probability).sum::<f32>() / words.len() as f32
        };
        api::Segment {
            start_ms,
            end_ms,
            text,
            words: words
                .into_iter()
                .map(|w| api::Word {
                    text: w.text,
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    probability: w.probability,
                })
                .collect(),
            confidence,
            speaker: String::new(),
        }
    }

    fn checkpoint_message(
        &mut self,
        position: Position,
        last_result_seq: u64,
    ) -> events::SessionCheckpoint {
        let needed_from = position.replay_from_ms * RATE / 1000;
        while let Some(&(_, end)) = self.frames.front() {
            if end > needed_from {
                break;
            }
            self.frames.pop_front();
        }
        let audio_stream_seq = self
            .frames
            .front()
            .map_or(self.next_stream_seq, |&(seq, _)| seq);
        events::SessionCheckpoint {
            committed_offset_ms: position.committed_offset_ms,
            last_audio_seq: self.last_audio_seq,
            last_result_seq,
            committed_text_tail: String::new(),
            language: self.language.clone(),
            audio_stream_seq,
        }
    }

    async fn write_checkpoint(&mut self, position: Position) {
        let message = self.checkpoint_message(position, self.next_result_seq - 1);
        if let Err(error) = self
            .ctx
            .checkpoints
            .put(&self.job.session_id, Bytes::from(message.encode_to_vec()))
            .await
        {
            warn!(%error, "checkpoint write failed");
        }
        self.checkpoint = message;
    }

    async fn publish_final(
        &mut self,
        start_ms: u64,
        end_ms: u64,
        text: String,
        words: Vec<Word>,
        position: Position,
    ) -> Result<(), String> {
        let seq = self.next_result_seq;
        let carried = self.checkpoint_message(position, seq);
        let message = events::TranscriptResult {
            tenant_id: self.job.tenant_id.clone(),
            session_id: self.job.session_id.clone(),
            meeting_id: self.job.meeting_id.clone(),
            result: Some(api::StreamingResult {
                result_seq: seq,
                is_final: true,
                segment: Some(Self::segment(start_ms, end_ms, text, words)),
                stability: 1.0,
                language: self.language.clone(),
                kind: api::ResultKind::Final as i32,
            }),
            committed_offset_ms: carried.committed_offset_ms,
            session_closed: false,
            checkpoint: Some(carried.clone()),
            close_reason: String::new(),
            worker_running: false,
        };
        let id = Layout::result_msg_id(&self.job.session_id, seq);
        self.publish_durable(message, id).await?;
        self.next_result_seq += 1;
        kiroku_core::metrics::metrics().finals.inc();
        if let Err(error) = self
            .ctx
            .checkpoints
            .put(&self.job.session_id, Bytes::from(carried.encode_to_vec()))
            .await
        {
            // The final carries the same checkpoint: nothing is lost.
            warn!(%error, "checkpoint write failed");
        }
        self.checkpoint = carried;
        Ok(())
    }

    /// An utterance final: the minutes, durable in `TRANSCRIPTS`.
    async fn publish_utterance(
        &mut self,
        final_: UtteranceFinal,
        position: Position,
    ) -> Result<(), String> {
        if final_.from_captions {
            warn!(
                span_start_ms = final_.span_start_ms,
                span_end_ms = final_.span_end_ms,
                "utterance final made of its captions (its decode failed or heard nothing)"
            );
        }
        self.publish_final(
            final_.start_ms,
            final_.end_ms,
            final_.text,
            final_.words,
            position,
        )
        .await
    }

    /// Records how long ago the audio at each of `ends_ms` arrived (the ends of words
    /// just shown, or of audio a running decode does not cover) and reports the
    /// stream's caption lag, the window's peak, to admission and metrics.
    fn report_lag(
        &self,
        lag: &mut crate::LagWindow,
        ends_ms: impl IntoIterator<Item = u64>,
        arrivals: &crate::Arrivals,
    ) {
        let now = Instant::now();
        for end_ms in ends_ms {
            lag.record(now, arrivals.age(end_ms, now));
        }
        self.ctx.set_lag(&self.job.session_id, Some(lag.peak(now)));
    }

    /// Tells the gateway a worker runs this session (core NATS, no result): it stops
    /// reporting the session as queued and does not refuse it for want of a worker.
    async fn announce_running(&self) {
        let message = events::TranscriptResult {
            tenant_id: self.job.tenant_id.clone(),
            session_id: self.job.session_id.clone(),
            meeting_id: self.job.meeting_id.clone(),
            worker_running: true,
            ..Default::default()
        };
        self.publish_core(message).await;
    }

    /// Publishes on the session's core NATS subject (captions, interims, notices).
    async fn publish_core(&self, message: events::TranscriptResult) {
        let subject = self
            .layout()
            .interim_subject(&self.job.tenant_id, &self.job.session_id);
        let _ = self
            .ctx
            .nats
            .publish(subject, Bytes::from(message.encode_to_vec()))
            .await;
    }

    async fn publish_caption(&self, caption: Caption) {
        self.publish_live(
            api::ResultKind::Caption,
            caption.start_ms,
            caption.end_ms,
            caption.text,
            caption.words,
        )
        .await;
    }

    /// A caption or an interim on core NATS (best effort: a lost one is replaced by the
    /// utterance's final). Interims only when the client asked for them; captions always.
    async fn publish_live(
        &self,
        kind: api::ResultKind,
        start_ms: u64,
        end_ms: u64,
        text: String,
        words: Vec<Word>,
    ) {
        let interim = kind == api::ResultKind::Interim;
        if interim && !self.job.interim_results && self.ctx.engine.is_some() {
            return;
        }
        let message = events::TranscriptResult {
            tenant_id: self.job.tenant_id.clone(),
            session_id: self.job.session_id.clone(),
            meeting_id: self.job.meeting_id.clone(),
            result: Some(api::StreamingResult {
                result_seq: self.next_result_seq,
                is_final: false,
                segment: Some(Self::segment(start_ms, end_ms, text, words)),
                stability: if interim { 0.5 } else { 1.0 },
                language: self.language.clone(),
                kind: kind as i32,
            }),
            ..Default::default()
        };
        self.publish_core(message).await;
    }

    /// Publishes to `TRANSCRIPTS` and waits for the ack, retrying with the same
    /// message id (duplicates are dropped by JetStream) for about 15 s.
    async fn publish_durable(
        &self,
        message: events::TranscriptResult,
        id: String,
    ) -> Result<(), String> {
        let subject = self
            .layout()
            .transcript_subject(&self.job.tenant_id, &self.job.session_id);
        let payload = Bytes::from(message.encode_to_vec());
        let mut headers = async_nats::HeaderMap::new();
        kiroku_core::trace::inject_nats(&tracing::Span::current(), &mut headers);
        let message = || {
            Publish::build()
                .payload(payload.clone())
                .message_id(&id)
                .headers(headers.clone())
        };
        kiroku_core::nats::publish_durable(&self.ctx.js, &subject, message, None)
            .await
            .map(|_| ())
            .map_err(|e| format!("publishing a result: {e}"))
    }

    async fn close(&mut self, reason: &str) -> Outcome {
        let message = events::TranscriptResult {
            tenant_id: self.job.tenant_id.clone(),
            session_id: self.job.session_id.clone(),
            meeting_id: self.job.meeting_id.clone(),
            result: None,
            session_closed: true,
            close_reason: reason.to_string(),
            ..Default::default()
        };
        let id = format!("{}:closed", self.job.session_id);
        match self.publish_durable(message, id).await {
            Ok(()) => {
                info!(reason, finals = self.next_result_seq - 1, "session closed");
                let _ = self.ctx.checkpoints.delete(&self.job.session_id).await;
                Outcome::Closed
            }
            Err(why) => Outcome::Retry(why),
        }
    }

    /// Notices that this session's tenant erased its minutes.
    async fn erasure_notices(&self) -> Result<async_nats::Subscriber, Outcome> {
        let subject = self.layout().erasure_subject(&self.job.tenant_id);
        self.ctx
            .nats
            .subscribe(subject)
            .await
            .map_err(|error| Outcome::Retry(format!("erasure subscription: {error}")))
    }

    /// The tenant erased its minutes while this session ran: what it still holds (audio,
    /// the text of unfinished utterances, its checkpoint) is dropped, nothing more is
    /// published, and the client is told (`ABORTED` at the gateway).
    async fn close_erased(&mut self) -> Outcome {
        info!("the tenant's minutes were erased: the session ends without keeping more");
        let outcome = self.close(kiroku_core::nats::CLOSED_ERASED).await;
        if let Err(error) = self.ctx.checkpoints.purge(&self.job.session_id).await {
            warn!(%error, "the erased session's checkpoint history was not purged");
        }
        outcome
    }

    async fn close_with_error(&mut self, error: String) -> Outcome {
        warn!(error, "session failed");
        self.close(&format!("error: {error}")).await
    }

    async fn close_invalid(&mut self, why: String) -> Outcome {
        self.close(&format!("invalid: {why}")).await
    }
}

/// 16-bit little-endian PCM as the engine's f32 samples.
fn to_f32(pcm_s16le: &[u8]) -> Vec<f32> {
    pcm_s16le
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

/// A live session's decoding: the track, its engines, the turn asked for or the decode
/// running (at most one of them), and what the lag report needs.
struct Track {
    live: Live,
    options: TranscribeOptions,
    engine: Arc<kiroku_engine::Engine>,
    /// The minutes' engine (the same as `engine` unless the worker has a final model).
    final_engine: Arc<kiroku_engine::Engine>,
    in_flight: Option<tokio::task::JoinHandle<Decoded>>,
    /// The engine turn asked for while a decode is due and none runs (see
    /// kiroku_engine::engine: the decode is taken when the turn comes, with every
    /// sample received by then).
    turn: Option<PendingTurn>,
    /// The caption lag (crate::LagWindow): received audio (ms) and when it arrived
    /// (crate::Arrivals), and the audio received when the running decode's turn was
    /// asked for (what its captions can show at most: the wait for the turn is part of
    /// the lag, as it is of caption latency).
    lag: crate::LagWindow,
    arrivals: crate::Arrivals,
    turn_asked_at_ms: u64,
    last_checkpoint_write: Instant,
}

impl Track {
    fn engine_for(&self, kind: DecodeKind) -> Arc<kiroku_engine::Engine> {
        match kind {
            DecodeKind::Final => self.final_engine.clone(),
            DecodeKind::Caption => self.engine.clone(),
        }
    }

    /// Holds a turn of the kind that is due while no decode runs: a final due replaces
    /// a waiting caption turn (finals go first); with nothing due, no turn is held.
    fn ask_for_turn(&mut self) -> Result<(), kiroku_engine::EngineError> {
        if self.in_flight.is_some() {
            return Ok(());
        }
        match self.live.due() {
            None => self.turn = None,
            Some(kind) if self.turn.as_ref().is_some_and(|t| t.kind == kind) => {}
            Some(kind) => {
                let grant = self
                    .engine_for(kind)
                    .request_turn(kind == DecodeKind::Final)?;
                self.turn = Some(PendingTurn {
                    kind,
                    grant,
                    asked_at_ms: self.arrivals.received_ms(),
                });
            }
        }
        Ok(())
    }

    /// Takes a client frame's audio and utterance marks; true at the end of the stream.
    fn push_frame(&mut self, frame: &events::AudioFrame) -> bool {
        if !frame.pcm_s16le.is_empty() {
            self.live
                .push_audio(frame.offset_samples, &to_f32(&frame.pcm_s16le));
            let end_samples = frame.offset_samples + frame.pcm_s16le.len() as u64 / 2;
            self.arrivals
                .record(end_samples * 1000 / RATE, Instant::now());
        }
        if frame.flush_utterance || frame.end_of_stream {
            self.live.flush();
        }
        frame.end_of_stream
    }

    /// The turn came: the decode is taken now, with all the audio received meanwhile
    /// (a turn no longer needed is dropped: its slot goes on).
    fn start_decode(&mut self, granted: Turn) {
        let Some(PendingTurn {
            kind, asked_at_ms, ..
        }) = self.turn.take()
        else {
            return;
        };
        if self.live.due() != Some(kind) {
            return;
        }
        let Some(request) = self.live.next_decode() else {
            return;
        };
        debug!(
            id = request.id,
            kind = ?request.kind,
            start_ms = request.start_ms,
            audio_ms = request.samples.len() as u64 / 16,
            audio_ctx = request.audio_ctx,
            "decode"
        );
        self.turn_asked_at_ms = asked_at_ms;
        self.in_flight = Some(spawn_decode(
            self.engine_for(kind),
            granted,
            request,
            self.options.clone(),
        ));
    }
}

/// An engine turn asked for a decode of `kind`, not yet granted.
struct PendingTurn {
    kind: DecodeKind,
    grant: tokio::sync::oneshot::Receiver<Turn>,
    /// Audio received (ms) when the turn was asked for.
    asked_at_ms: u64,
}

/// The pending turn's grant; pending forever when none is asked for (guarded in
/// `select!`).
async fn wait_for_turn(
    turn: &mut Option<PendingTurn>,
) -> Result<Turn, tokio::sync::oneshot::error::RecvError> {
    match turn {
        Some(pending) => (&mut pending.grant).await,
        None => std::future::pending().await,
    }
}

/// The running decode's result; pending forever when none runs (guarded in `select!`).
async fn join_in_flight(
    in_flight: &mut Option<tokio::task::JoinHandle<Decoded>>,
) -> Result<Decoded, tokio::task::JoinError> {
    match in_flight {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Where a session stands, for its checkpoint: everything before `committed_offset_ms`
/// is in the minutes, and a successor replays the audio from `replay_from_ms` (the left
/// context of the next utterance's final).
#[derive(Debug, Clone, Copy)]
struct Position {
    committed_offset_ms: u64,
    replay_from_ms: u64,
}

impl Position {
    fn of(live: &Live) -> Self {
        Self {
            committed_offset_ms: live.checkpoint_ms(),
            replay_from_ms: live.replay_from_ms(),
        }
    }
}

struct Decoded {
    id: u64,
    /// Audio decoded (with padding), ms.
    audio_ms: u64,
    /// The language Whisper decoded in (detected when none was given); empty on error.
    language: String,
    words: Result<Vec<Word>, String>,
}

/// Runs `request` on the slot that granted `turn`.
fn spawn_decode(
    engine: Arc<kiroku_engine::Engine>,
    turn: Turn,
    request: DecodeRequest,
    options: TranscribeOptions,
) -> tokio::task::JoinHandle<Decoded> {
    let audio_s = request.samples.len() as f64 / RATE as f64;
    let span = info_span!(
        "worker.decode",
        audio_s,
        start_ms = request.start_ms,
        utterance_final = request.kind == DecodeKind::Final,
        otel.name = "worker decode"
    );
    // The user's vocabulary first, then the stream's own recent text (the policy's
    // context prompt, Japanese only): Whisper reads the prompt as what came before.
    let prompt = match (options.prompt.clone(), request.prompt.clone()) {
        (Some(vocabulary), Some(context)) => Some(format!("{vocabulary} {context}")),
        (vocabulary, context) => vocabulary.or(context),
    };
    let options = TranscribeOptions {
        audio_ctx: Some(request.audio_ctx),
        no_temperature_fallback: true,
        max_tokens: Some(request.max_tokens),
        beam_size: request.beam_size,
        prompt,
        urgent: request.kind == DecodeKind::Final,
        ..options
    };
    let id = request.id;
    tokio::task::spawn_blocking(move || {
        let _enter = span.enter();
        let started = Instant::now();
        let result = turn.transcribe(&engine, request.samples, options);
        let elapsed = started.elapsed().as_secs_f64();
        kiroku_core::metrics::metrics()
            .decode_seconds
            .observe(elapsed);
        kiroku_core::metrics::metrics()
            .real_time_factor
            .observe(elapsed / audio_s.max(0.001));
        let language = result
            .as_ref()
            .map(|t| t.language.clone())
            .unwrap_or_default();
        Decoded {
            id,
            audio_ms: (audio_s * 1000.0) as u64,
            language: if language == "und" {
                String::new()
            } else {
                language
            },
            words: result
                .map(|t| t.segments.into_iter().flat_map(|s| s.words).collect())
                .map_err(|e| e.to_string()),
        }
    })
}
