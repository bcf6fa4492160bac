//! The transcription worker: takes session jobs from `SESSIONS` only while it has a free
//! session slot, replays each session's audio from `AUDIO`, runs the live path
//! ([`kiroku_engine::live::Live`]: captions from the streaming policy, then each
//! utterance decoded once more, whole) over the Whisper engine and publishes interims and
//! captions (core NATS) and utterance finals, the minutes (JetStream `TRANSCRIPTS`).
//!
//! Failure model: while a session runs, the worker acks *progress* on its job every
//! `ack_wait / 3`. A worker that dies stops doing so; after `ack_wait` JetStream
//! redelivers the job to another worker, which resumes from the checkpoint (KV, or the
//! checkpoint carried by the last final, whichever is newer). Finals carry message ids
//! `<session>:r<seq>`, so a final re-published after a takeover is dropped by JetStream.
//! On SIGTERM the worker drains: it stops taking jobs and hands running sessions back
//! (checkpoint, then NAK) so another worker continues them at once.

mod session;
pub mod settings;

pub use settings::WorkerSettings;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use kiroku_core::nats::{Layout, Retention};
use kiroku_engine::live::FinalsConfig;
use kiroku_engine::streaming::PolicyConfig;
use kiroku_engine::{Engine, EngineConfig, ThreadBudget};
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

/// What decodes the audio.
#[derive(Debug, Clone)]
pub enum EngineKind {
    /// Whisper through whisper-rs: the product.
    Whisper {
        model_path: PathBuf,
        /// The model of utterance finals and files, when not `model_path` (loaded as a
        /// second engine with the same slots, sharing the threads).
        final_model_path: Option<PathBuf>,
        /// Inference threads across all slots: never more than the cores given.
        threads: usize,
        /// Decodes that may run at once (alone, a decode gets every thread; under load
        /// each gets `threads / slots`).
        slots: usize,
    },
    /// BENCHMARK ONLY: no inference. Echoes each audio frame's seq as an interim and
    /// closes on end of stream, to measure the plumbing (gateway ⇄ NATS ⇄ worker).
    NullForBenchmarks,
}

/// Everything a worker needs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub nats_url: String,
    pub layout: Layout,
    pub retention: Retention,
    pub engine: EngineKind,
    /// Sessions this worker runs at once (it takes no job beyond that).
    pub max_sessions: usize,
    /// Below `max_sessions`, a new session is taken only while no running live stream's
    /// caption lag ([`LagWindow`]) is over this (see [`has_headroom`]); zero: only
    /// `max_sessions` limits.
    pub admit_max_lag: Duration,
    /// How long a job may go without a progress ack before JetStream hands it to
    /// another worker: the failover time after a crash.
    pub ack_wait: Duration,
    /// How long a session waits for its client after the last audio or keep-alive;
    /// then it finalises what it has and closes ("abandoned").
    pub resume_window: Duration,
    /// How long a draining worker waits for its sessions to hand over.
    pub drain_timeout: Duration,
    pub policy: PolicyConfig,
    /// How utterance finals (the minutes) are decoded.
    pub finals: FinalsConfig,
    /// The pool whose sessions this worker takes (see `SessionRoutes`).
    pub pool: String,
}

/// Sessions a worker runs at once (`--sessions`).
pub const DEFAULT_MAX_SESSIONS: usize = 4;
/// Caption lag over which a worker takes no new session (`--admit-max-lag-s`): below
/// the 2 s that captions aim for, as the session taken next adds to every stream's lag.
/// `make bench-stream`'s overload part (8 streams of the 42 s meeting offered to one
/// 2-core tiny.en worker): 2 s admitted five streams, all of them then over caption
/// p95 2 s (2.4–3.5 s); 1.5 s admitted four in two runs (p95 1.8–2.7 s).
pub const DEFAULT_ADMIT_MAX_LAG: Duration = Duration::from_millis(1_500);
/// Time without a progress ack before a job moves to another worker (`--ack-wait-s`).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(10);

impl WorkerConfig {
    pub fn new(nats_url: impl Into<String>, layout: Layout, engine: EngineKind) -> Self {
        Self {
            nats_url: nats_url.into(),
            layout,
            retention: Retention::default(),
            engine,
            max_sessions: DEFAULT_MAX_SESSIONS,
            admit_max_lag: DEFAULT_ADMIT_MAX_LAG,
            ack_wait: DEFAULT_ACK_WAIT,
            resume_window: kiroku_core::nats::DEFAULT_RESUME_WINDOW,
            drain_timeout: Duration::from_secs(10),
            policy: PolicyConfig::default(),
            finals: FinalsConfig::default(),
            pool: kiroku_core::nats::DEFAULT_POOL.to_string(),
        }
    }
}

/// Shared by every session task of this worker.
pub(crate) struct Ctx {
    pub config: WorkerConfig,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub audio: jetstream::stream::Stream,
    pub transcripts: jetstream::stream::Stream,
    pub checkpoints: jetstream::kv::Store,
    /// `None` for the benchmark-only null engine. Decodes captions.
    pub engine: Option<Arc<Engine>>,
    /// Decodes the minutes (utterance finals and files): `engine` unless the worker
    /// was given a final model.
    pub final_engine: Option<Arc<Engine>>,
    /// Sessions running here → their job's latest delivery.
    pub active: std::sync::Mutex<
        std::collections::HashMap<String, watch::Sender<Arc<async_nats::jetstream::Message>>>,
    >,
    pub model_name: String,
    /// Live sessions running here → their caption lag ([`LagWindow`]).
    pub lags: std::sync::Mutex<std::collections::HashMap<String, Duration>>,
}

/// A live stream's lag over the last [`LagWindow::PERIOD`]: for each caption and final
/// it published, how long ago the audio at the words' end reached this worker (what
/// the people in the meeting wait for their words, less the network; see
/// [`Arrivals`]), and how long the received audio a decode did not cover has waited, taken when it ends and every 5 s while it runs (a stream whose
/// decodes stall shows even before it commits anything). The session reports its peak
/// when a decode ends and every 5 s (not per audio frame); admission and
/// `kiroku_worker_stream_lag_seconds` read it: a sample at one instant would miss it, as
/// each new decode covers all audio.
#[derive(Debug, Default)]
pub(crate) struct LagWindow {
    samples: std::collections::VecDeque<(Instant, Duration)>,
}

impl LagWindow {
    const PERIOD: Duration = Duration::from_secs(10);

    pub(crate) fn record(&mut self, now: Instant, lag: Duration) {
        self.samples.push_back((now, lag));
        self.forget(now);
    }

    /// The largest lag of the last period (zero without samples).
    pub(crate) fn peak(&mut self, now: Instant) -> Duration {
        self.forget(now);
        self.samples
            .iter()
            .map(|(_, lag)| *lag)
            .max()
            .unwrap_or_default()
    }

    fn forget(&mut self, now: Instant) {
        while let Some((at, _)) = self.samples.front() {
            if now.duration_since(*at) <= Self::PERIOD {
                break;
            }
            self.samples.pop_front();
        }
    }
}

/// When a live stream's audio reached this worker: the end of each frame's audio (ms of
/// stream time) and the instant it arrived, for the last [`Arrivals::KEEP`]. A word's
/// lag is counted from the arrival of its audio, not from when it was spoken: audio
/// that waited in `AUDIO` for a worker (a queued session, a takeover) arrives at once,
/// and the wait is not this worker's lag. Counted from when it was spoken, a session
/// admitted after 3 s in the queue showed a 3 s lag for its first words, and
/// admission then took no other session for the lag window's 10 s.
#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    frames: std::collections::VecDeque<(u64, Instant)>,
}

impl Arrivals {
    const KEEP: Duration = Duration::from_secs(120);

    /// Audio up to `end_ms` arrived `now` (audio already received, a replay, is not
    /// recorded again).
    pub(crate) fn record(&mut self, end_ms: u64, now: Instant) {
        if self.frames.back().is_some_and(|(last, _)| *last >= end_ms) {
            return;
        }
        self.frames.push_back((end_ms, now));
        while self.frames.len() > 1
            && self
                .frames
                .front()
                .is_some_and(|(_, at)| now.duration_since(*at) > Self::KEEP)
        {
            self.frames.pop_front();
        }
    }

    /// The end of the audio received so far (ms of stream time).
    pub(crate) fn received_ms(&self) -> u64 {
        self.frames.back().map_or(0, |(end, _)| *end)
    }

    /// How long ago the audio at `ms` arrived (the frame holding it; the oldest kept
    /// one for older audio); zero for audio not received yet.
    pub(crate) fn age(&self, ms: u64, now: Instant) -> Duration {
        let index = self.frames.partition_point(|(end, _)| *end < ms);
        self.frames
            .get(index)
            .map_or(Duration::ZERO, |(_, at)| now.duration_since(*at))
    }
}

impl Ctx {
    /// The largest lag among the live sessions running here.
    fn max_lag(&self) -> Duration {
        self.lags
            .lock()
            .map(|lags| lags.values().copied().max().unwrap_or_default())
            .unwrap_or_default()
    }

    pub(crate) fn set_lag(&self, session: &str, lag: Option<Duration>) {
        if let Ok(mut lags) = self.lags.lock() {
            match lag {
                Some(lag) => lags.insert(session.to_string(), lag),
                None => lags.remove(session),
            };
        }
    }
}

impl WorkerConfig {
    /// The settings' ranges (`docs/configuration.md` lists them with their defaults).
    pub fn validate(&self) -> Result<(), kiroku_core::settings::InvalidSetting> {
        use kiroku_core::settings::{at_least, seconds_within, within};
        at_least(
            "--sessions / KIROKU_WORKER_SESSIONS",
            self.max_sessions,
            1,
            "",
        )?;
        seconds_within(
            "--ack-wait-s / KIROKU_WORKER_ACK_WAIT_S",
            self.ack_wait,
            0.5..=3600.0,
        )?;
        seconds_within(
            "--admit-max-lag-s / KIROKU_WORKER_ADMIT_MAX_LAG_S",
            self.admit_max_lag,
            0.0..=3600.0,
        )?;
        within(
            "--step-ms / KIROKU_WORKER_STEP_MS",
            self.policy.step_ms,
            100..=5_000,
            " ms",
        )?;
        within(
            "--caption-settle-ms / KIROKU_WORKER_CAPTION_SETTLE_MS",
            self.policy.settle_ms,
            0..=10_000,
            " ms",
        )
    }
}

/// Runs the worker until `shutdown` resolves, then drains. `ready` turns `Ok` once
/// the model is loaded and the job consumer exists, and follows NATS and the decoding
/// slots from then on (the admin port's `/readyz`).
pub async fn serve(
    config: WorkerConfig,
    ready: watch::Sender<kiroku_core::admin::Readiness>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let engines = load_engines(&config).await?;
    let (ctx, jobs) = connect(&config, engines).await?;
    info!(
        model = ctx.model_name,
        pool = config.pool,
        max_sessions = config.max_sessions,
        ack_wait_s = config.ack_wait.as_secs_f32(),
        "worker ready"
    );
    tokio::spawn(follow_readiness(ctx.clone(), ready));
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = drain_tx.send(true);
    });
    // The backlog is read from NATS on its own schedule, busy or not: with every slot
    // taken it is exactly when jobs wait (what the alert and the autoscaler watch).
    let backlog = {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            loop {
                report_backlog(&jobs).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };
    let tasks = take_jobs(&ctx, &jobs, drain_rx).await?;
    backlog.abort();
    hand_back(tasks, config.drain_timeout).await;
    Ok(())
}

/// The caption engine, the minutes' engine (the same one unless a final model was
/// given) and the name `kiroku` reports for them.
struct Engines {
    engine: Option<Arc<Engine>>,
    final_engine: Option<Arc<Engine>>,
    model_name: String,
}

/// Loads the model(s) off the async threads.
async fn load_engines(config: &WorkerConfig) -> anyhow::Result<Engines> {
    let EngineKind::Whisper {
        model_path,
        final_model_path,
        threads,
        slots,
    } = &config.engine
    else {
        warn!("BENCHMARK-ONLY null engine: no inference, captions are frame numbers");
        return Ok(Engines {
            engine: None,
            final_engine: None,
            model_name: "null-benchmark".to_string(),
        });
    };
    // One thread budget for both models: a caption and a final decoding at once never
    // run more threads than the worker was given.
    let budget = ThreadBudget::new(*threads);
    let load = |path: &PathBuf| {
        let mut engine_config = EngineConfig::new(path);
        engine_config.threads = *threads;
        engine_config.slots = *slots;
        engine_config.budget = Some(budget.clone());
        engine_config.queue_capacity = config.max_sessions.max(1);
        async move {
            tokio::task::spawn_blocking(move || Engine::load(&engine_config))
                .await
                .context("loading the model")?
                .map(Arc::new)
                .map_err(anyhow::Error::from)
        }
    };
    let engine = load(model_path).await?;
    let final_engine = match final_model_path {
        Some(path) => load(path).await?,
        None => engine.clone(),
    };
    let model_name = if Arc::ptr_eq(&engine, &final_engine) {
        engine.info().name()
    } else {
        // Captions' model + the minutes' model, e.g. "tiny.en+base".
        format!("{}+{}", engine.info().name(), final_engine.info().name())
    };
    Ok(Engines {
        engine: Some(engine),
        final_engine: Some(final_engine),
        model_name,
    })
}

/// Connects to NATS, makes sure the streams exist and binds the pool's job consumer:
/// what every session shares, and the consumer.
async fn connect(
    config: &WorkerConfig,
    engines: Engines,
) -> anyhow::Result<(Arc<Ctx>, consumer::PullConsumer)> {
    let nats = kiroku_core::nats::connect(&config.nats_url, "kiroku-worker")
        .await
        .with_context(|| format!("connecting to NATS at {}", config.nats_url))?;
    let js = jetstream::new(nats.clone());
    config.layout.ensure(&js, &config.retention).await?;
    let layout = &config.layout;
    let sessions = js.get_stream(layout.sessions_stream()).await?;
    let jobs_config = consumer::pull::Config {
        durable_name: Some(layout.workers_consumer(&config.pool)),
        filter_subject: layout.pool_sessions_filter(&config.pool),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: -1,
        max_ack_pending: -1,
        ..Default::default()
    };
    let jobs = pool_consumer(&sessions, jobs_config).await?;
    let ctx = Arc::new(Ctx {
        audio: js.get_stream(layout.audio_stream()).await?,
        transcripts: js.get_stream(layout.transcripts_stream()).await?,
        checkpoints: js.get_key_value(layout.checkpoints_bucket()).await?,
        config: config.clone(),
        nats,
        js,
        engine: engines.engine,
        final_engine: engines.final_engine,
        model_name: engines.model_name,
        active: Default::default(),
        lags: Default::default(),
    });
    Ok((ctx, jobs))
}

/// Ready while every decoding slot runs and NATS is connected; re-checked twice a
/// second so a lost connection or a slot that could not be restored shows. Also
/// refreshes `kiroku_worker_load`.
async fn follow_readiness(ctx: Arc<Ctx>, ready: watch::Sender<kiroku_core::admin::Readiness>) {
    let engines = [ctx.engine.clone(), ctx.final_engine.clone()];
    let mut load = LoadMeter::new(&engines);
    loop {
        load.update();
        kiroku_core::metrics::metrics()
            .worker_stream_lag
            .set(ctx.max_lag().as_secs_f64());
        let now = kiroku_core::admin::nats_ready(&ctx.nats).and_then(|()| {
            if engines.iter().flatten().all(|e| e.is_healthy()) {
                Ok(())
            } else {
                Err("a decoding slot could not be restored".to_string())
            }
        });
        if now != *ready.borrow() {
            match &now {
                Ok(()) => info!("ready"),
                Err(why) => warn!(why, "not ready"),
            }
        }
        if ready.send(now).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `kiroku_worker_load`: busy decoding time over wall time and slots, over the last
/// [`LoadMeter::PERIOD`], across the worker's engines (the caption and the minutes'
/// engine count once when they are the same).
struct LoadMeter {
    engines: Vec<Arc<Engine>>,
    since: Instant,
    busy_since: f64,
}

impl LoadMeter {
    const PERIOD: Duration = Duration::from_secs(5);

    fn new(engines: &[Option<Arc<Engine>>]) -> Self {
        let mut unique: Vec<Arc<Engine>> = Vec::new();
        for engine in engines.iter().flatten() {
            if !unique.iter().any(|known| Arc::ptr_eq(known, engine)) {
                unique.push(engine.clone());
            }
        }
        let busy_since = unique.iter().map(|e| e.busy_seconds()).sum();
        Self {
            engines: unique,
            since: Instant::now(),
            busy_since,
        }
    }

    /// Sets the gauge once a period has passed since the last time.
    fn update(&mut self) {
        let elapsed = self.since.elapsed();
        if elapsed < Self::PERIOD || self.engines.is_empty() {
            return;
        }
        let busy: f64 = self.engines.iter().map(|e| e.busy_seconds()).sum();
        // A worker's engines share one thread budget.
        let threads = self.engines.iter().map(|e| e.threads()).max().unwrap_or(1);
        let load = worker_load(busy - self.busy_since, elapsed, threads);
        kiroku_core::metrics::metrics().worker_load.set(load);
        self.since = Instant::now();
        self.busy_since = busy;
    }
}

/// Busy thread-seconds over `elapsed` on `threads` inference threads, as a share from 0
/// to 1.
fn worker_load(busy_s: f64, elapsed: Duration, threads: usize) -> f64 {
    let capacity = elapsed.as_secs_f64() * threads.max(1) as f64;
    if capacity <= 0.0 {
        return 0.0;
    }
    (busy_s / capacity).clamp(0.0, 1.0)
}

/// How long a newly taken session runs before the worker judges its headroom again:
/// a new stream's cost shows in the lags only once it has audio to decode.
const ADMIT_SETTLE: Duration = Duration::from_secs(3);

/// Whether a worker that has a free session slot may take one more session: always
/// when it runs none; otherwise once the newest session has run for [`ADMIT_SETTLE`]
/// and while no live stream's caption lag ([`LagWindow`]) is over `max_lag` (a worker
/// that cannot keep its streams real time takes no more; the job waits in `SESSIONS`
/// for another worker). A zero `max_lag` turns the check off.
fn has_headroom(
    running: usize,
    newest_age: Option<Duration>,
    lag: Duration,
    max_lag: Duration,
) -> bool {
    if running == 0 || max_lag.is_zero() {
        return true;
    }
    newest_age.is_none_or(|age| age >= ADMIT_SETTLE) && lag <= max_lag
}

/// Waits until [`has_headroom`] says yes; `false` when draining started meanwhile.
/// `slots` are the session slots, one of which the caller holds for the new session.
async fn wait_for_headroom(
    ctx: &Ctx,
    slots: &Semaphore,
    newest: Option<Instant>,
    drain: &mut watch::Receiver<bool>,
) -> bool {
    let mut told = false;
    loop {
        let lag = ctx.max_lag();
        let age = newest.map(|at| at.elapsed());
        // Slots taken, not sessions registered: a session just spawned has not yet.
        let running = ctx
            .config
            .max_sessions
            .saturating_sub(slots.available_permits() + 1);
        if has_headroom(running, age, lag, ctx.config.admit_max_lag) {
            return true;
        }
        if !told && age.is_some_and(|age| age >= ADMIT_SETTLE) {
            told = true;
            info!(
                lag_s = lag.as_secs_f32(),
                max_lag_s = ctx.config.admit_max_lag.as_secs_f32(),
                "streams lag: taking no new session until they catch up"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = crate::drained(drain) => return false,
        }
    }
}

/// Takes jobs, one per free session slot and only with headroom ([`has_headroom`]),
/// until the drain starts: the sessions still running then.
async fn take_jobs(
    ctx: &Arc<Ctx>,
    jobs: &consumer::PullConsumer,
    drain_rx: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let slots = Arc::new(Semaphore::new(ctx.config.max_sessions));
    let mut tasks = tokio::task::JoinSet::new();
    let mut drain = drain_rx.clone();
    let mut newest: Option<Instant> = None;
    loop {
        // A job is fetched only once a slot is free and the running streams keep up:
        // natural load balancing.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.context("slots closed")?,
            () = crate::drained(&mut drain) => break,
        };
        if !wait_for_headroom(ctx, &slots, newest, &mut drain).await {
            break;
        }
        let fetched = tokio::select! {
            batch = jobs.batch().max_messages(1).expires(Duration::from_secs(5)).messages() => batch,
            () = crate::drained(&mut drain) => break,
        };
        let mut batch = match fetched {
            Ok(batch) => batch,
            Err(error) => {
                warn!(%error, "fetching a job failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let message = tokio::select! {
            message = batch.next() => message,
            () = crate::drained(&mut drain) => break,
        };
        match message {
            Some(Ok(message)) => {
                if let Some(message) = redelivered_here(ctx, message) {
                    newest = Some(Instant::now());
                    let ctx = ctx.clone();
                    let drain = drain_rx.clone();
                    tasks.spawn(async move {
                        session::run(ctx, message, drain).await;
                        drop(permit);
                    });
                }
            }
            Some(Err(error)) => warn!(%error, "job message error"),
            None => {} // no job within `expires`: ask again
        }
        while tasks.try_join_next().is_some() {}
    }
    Ok(tasks)
}

/// Waits up to `timeout` for the running sessions to hand themselves back (each writes
/// its checkpoint); what is left fails over by ack timeout.
async fn hand_back(mut tasks: tokio::task::JoinSet<()>, timeout: Duration) {
    info!(
        running = tasks.len(),
        "draining: handing running sessions back"
    );
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            () = &mut deadline => {
                warn!(left = tasks.len(), "drain timeout: remaining sessions fail over by ack timeout");
                break;
            }
        }
    }
}

/// A job for a session this worker already runs (redelivered after a NATS outage
/// interrupted its progress acks) goes to that session, which acks it from now on;
/// otherwise the message comes back to be started.
fn redelivered_here(
    ctx: &Ctx,
    message: async_nats::jetstream::Message,
) -> Option<async_nats::jetstream::Message> {
    use prost::Message as _;
    let Ok(job) = kiroku_proto::events::v1::SessionJob::decode(message.payload.as_ref()) else {
        return Some(message);
    };
    let Ok(active) = ctx.active.lock() else {
        return Some(message);
    };
    match active.get(&job.session_id) {
        Some(latest) => {
            info!(session = %job.session_id, "job redelivered while running here: keeping it");
            let _ = latest.send(Arc::new(message));
            None
        }
        None => Some(message),
    }
}

/// The pool's durable consumer on `SESSIONS`. Another worker may have created it
/// already, possibly with another ack_wait: the first worker's settings win, as for
/// any durable consumer. One left by an older layout with another filter (jobs of every
/// pool) is replaced: `SESSIONS` is a work queue, whose consumers may not overlap.
async fn pool_consumer(
    sessions: &jetstream::stream::Stream,
    config: consumer::pull::Config,
) -> anyhow::Result<consumer::PullConsumer> {
    let name = config.durable_name.clone().unwrap_or_default();
    if let Ok(mut existing) = sessions.get_consumer::<consumer::pull::Config>(&name).await {
        match existing.info().await {
            Ok(info) if info.config.filter_subject != config.filter_subject => {
                warn!(
                    consumer = name,
                    old = info.config.filter_subject,
                    new = config.filter_subject,
                    "replacing the pool's consumer: its filter is from another layout"
                );
                let _ = sessions.delete_consumer(&name).await;
            }
            _ => return Ok(existing),
        }
    }
    match sessions.create_consumer(config.clone()).await {
        Ok(jobs) => Ok(jobs),
        Err(create_error) => sessions.get_consumer(&name).await.map_err(|_| {
            anyhow::anyhow!(
                "creating the consumer {name} for {} on SESSIONS: {create_error} \
                 (pools' subjects may not overlap on a work queue)",
                config.filter_subject
            )
        }),
    }
}

/// Resolves once draining starts (the watch guard is dropped before returning, so the
/// future stays `Send`).
pub(crate) async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

async fn report_backlog(jobs: &consumer::PullConsumer) {
    let mut jobs = jobs.clone();
    if let Ok(info) = jobs.info().await {
        kiroku_core::metrics::metrics()
            .sessions_backlog
            .set(info.num_pending as i64);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::time::Instant;

    use super::{ADMIT_SETTLE, Arrivals, LagWindow, has_headroom, worker_load};

    /// Audio that arrived at once (a backlog) ages from its arrival, not from when it
    /// was spoken; live audio ages as it is spoken.
    #[test]
    fn a_word_ages_from_the_arrival_of_its_audio() {
        let start = Instant::now();
        let later = |ms: u64| start + Duration::from_millis(ms);
        let mut arrivals = Arrivals::default();
        assert_eq!(arrivals.age(0, start), Duration::ZERO, "nothing received");
        // 3 s queued in AUDIO arrive together, then live frames every 100 ms.
        for end_ms in (100..=3_000).step_by(100) {
            arrivals.record(end_ms, start);
        }
        arrivals.record(3_100, later(100));
        arrivals.record(3_200, later(200));
        arrivals.record(3_000, later(250)); // a replay: already received
        let at = later(500);
        assert_eq!(arrivals.age(150, at), Duration::from_millis(500));
        assert_eq!(arrivals.age(2_950, at), Duration::from_millis(500));
        assert_eq!(arrivals.age(3_050, at), Duration::from_millis(400));
        assert_eq!(arrivals.age(3_200, at), Duration::from_millis(300));
        assert_eq!(arrivals.age(3_300, at), Duration::ZERO, "not received yet");
    }

    /// The peak of the last ten seconds: older samples drop out.
    #[test]
    fn the_lag_is_the_peak_of_the_last_period() {
        let start = Instant::now();
        let mut window = LagWindow::default();
        assert_eq!(window.peak(start), Duration::ZERO, "no sample");
        window.record(start, Duration::from_millis(3_000));
        window.record(start + Duration::from_secs(4), Duration::from_millis(500));
        assert_eq!(
            window.peak(start + Duration::from_secs(5)),
            Duration::from_millis(3_000)
        );
        assert_eq!(
            window.peak(start + LagWindow::PERIOD + Duration::from_secs(1)),
            Duration::from_millis(500),
            "the old peak is forgotten"
        );
        assert_eq!(
            window.peak(start + Duration::from_secs(60)),
            Duration::ZERO,
            "a quiet stream has no lag"
        );
    }

    /// The first session always; more only once the newest one has settled and while
    /// no stream lags beyond the limit; a zero limit turns the check off.
    #[test]
    fn headroom_needs_a_settled_newest_session_and_streams_that_keep_up() {
        let limit = Duration::from_secs(2);
        let settled = Some(ADMIT_SETTLE);
        let fresh = Some(Duration::from_millis(100));
        assert!(has_headroom(0, None, Duration::ZERO, limit), "idle worker");
        assert!(
            has_headroom(0, fresh, Duration::from_secs(60), limit),
            "no session runs: the lag map is stale"
        );
        assert!(has_headroom(2, settled, Duration::from_millis(500), limit));
        assert!(has_headroom(2, None, limit, limit), "at the limit");
        assert!(
            !has_headroom(2, settled, Duration::from_millis(2_001), limit),
            "a stream lags"
        );
        assert!(
            !has_headroom(1, fresh, Duration::ZERO, limit),
            "the newest session has not shown its cost yet"
        );
        assert!(
            has_headroom(3, fresh, Duration::from_secs(60), Duration::ZERO),
            "check off"
        );
    }

    /// Busy slot time over the period and the slots, never outside 0..=1.
    #[test]
    fn worker_load_is_the_busy_share_of_every_slot() {
        let five = Duration::from_secs(5);
        assert_eq!(worker_load(0.0, five, 1), 0.0);
        assert!((worker_load(2.5, five, 1) - 0.5).abs() < 1e-9);
        assert!((worker_load(5.0, five, 2) - 0.5).abs() < 1e-9);
        assert_eq!(worker_load(12.0, five, 2), 1.0, "clamped");
        assert_eq!(worker_load(1.0, Duration::ZERO, 1), 0.0, "no time, no load");
        assert_eq!(worker_load(1.0, five, 0), 0.2, "no thread counts as one");
    }
}
