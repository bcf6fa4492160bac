//! The inference pool: one loaded model, a fixed number of decoding slots, a queue.
//!
//! ggml's worker threads busy-spin, so running more inference threads than cores makes
//! everything dramatically slower (2 decodes × 2 threads on 2 cores took 72–91 s instead
//! of ~6 s). The pool therefore owns `slots` named OS threads, each with its own
//! `WhisperState`, and draws inference threads for each decode from a [`ThreadBudget`]
//! (its own, or one shared with another engine: a worker's caption and final models),
//! so the total never exceeds the configured cores. Requests wait in a bounded
//! queue in front of the slots; callers block (or, from async code, await a
//! `spawn_blocking`) until a slot has run their job. Urgent requests (a live utterance's
//! final, the minutes) are taken before every other waiting request.
//!
//! A live stream does not queue its audio: it queues a *turn*
//! ([`Engine::request_turn`]) and chooses what to decode when a slot takes the turn, so
//! a decode that waited behind other streams' decodes still covers every sample that
//! arrived meanwhile (a caption decode queued with its audio would be as stale as its
//! wait). Each stream holds at most one turn, so streams take turns in arrival order,
//! the stalest first, and under load each decode simply covers more new audio: the
//! caption step widens by itself instead of a queue growing.
//!
//! How many threads a decode gets depends on what waits ([`Waiting::threads_wanted`]): a
//! decode with nothing behind it takes every free thread (one decode is fastest on all
//! cores), while one taken from a queue that still holds work takes only its share
//! (`threads / slots`), leaving the rest to the next slot. Small decodes use a second core
//! poorly (the decoder's per-token matrices are small), so under load several one-thread
//! decodes side by side get through more audio than the same decodes one after the other
//! on all cores (see docs/performance.md, "Slots").

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiroku_core::transcript::{Segment, Transcript, Word, is_unspaced, join_words};
use whisper_rs::{
    DtwMode, DtwModelPreset, DtwParameters, FullParams, SamplingStrategy, WhisperContext,
    WhisperContextParameters, WhisperState,
};

use crate::audio::WHISPER_SAMPLE_RATE_HZ;
use crate::convert::GGML_MAGIC;

/// Errors of the engine; each says what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file {0} not found (run `kiroku model fetch` or pass --model PATH)")]
    ModelMissing(PathBuf),
    #[error("could not load model {0}: not a whisper.cpp ggml model, or corrupt")]
    ModelLoad(PathBuf),
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error(
        "could not load the voice activity model {0}: {1} (run `kiroku model fetch --model silero-vad`)"
    )]
    VadLoad(PathBuf, String),
    #[error("the inference pool has shut down")]
    ShutDown,
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// How the pool is laid out.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_path: PathBuf,
    /// Total inference threads across all slots: at most the cores given to Kiroku.
    pub threads: usize,
    /// Decodes that may run at once. A decode with nothing waiting behind it takes
    /// every free thread; under load each takes `threads / slots`.
    pub slots: usize,
    /// Jobs that may wait for a slot before `transcribe` blocks the caller.
    pub queue_capacity: usize,
    /// Flash attention: less memory, slower on CPU here; disables DTW timestamps.
    pub flash_attn: bool,
    /// A thread budget shared with other engines (then `threads` is the budget's);
    /// `None`: the engine has its own `threads`.
    pub budget: Option<Arc<ThreadBudget>>,
}

impl EngineConfig {
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            slots: 1,
            queue_capacity: 16,
            flash_attn: false,
            budget: None,
        }
    }
}

/// Per-request decoding options.
#[derive(Debug, Clone, Default)]
pub struct TranscribeOptions {
    /// ISO 639-1 code; `None` means "en" for English-only models, detection otherwise.
    pub language: Option<String>,
    /// 1 = greedy decoding; more = beam search of that width (at most 16).
    pub beam_size: u32,
    /// Vocabulary or prompt text that biases decoding (names, jargon).
    pub prompt: Option<String>,
    /// Encoder context in frames of 20 ms (`None` = the model's full 1500 = 30 s).
    pub audio_ctx: Option<u32>,
    /// Never re-decode at a higher temperature when a hypothesis looks poor. Streaming
    /// sets it: the fallback turns each repetition loop into a multi-second stall, and
    /// the streaming policy has its own loop guard.
    pub no_temperature_fallback: bool,
    /// Token cap per segment (whisper.cpp `max_tokens`); `None` = no cap.
    pub max_tokens: Option<u32>,
    /// Taken from the queue before every non-urgent request (utterance finals go ahead
    /// of caption decodes, so the minutes never starve).
    pub urgent: bool,
}

/// One encoder frame covers 20 ms of 16 kHz audio.
const SAMPLES_PER_AUDIO_CTX_FRAME: usize = 320;

/// Largest accepted beam width (whisper.cpp's own limit is 16 decoders).
pub const MAX_BEAM_SIZE: u32 = 16;

/// Facts about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub multilingual: bool,
    pub n_mels: i32,
    /// Word times come from DTW over the alignment heads (not with flash attention:
    /// whisper.cpp has no DTW there, and words get Whisper's plain token times).
    pub dtw_word_times: bool,
}

impl ModelInfo {
    /// The model's name as `kiroku model list` shows it: `ggml-base.bin` → `base`.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().trim_start_matches("ggml-").to_string())
            .unwrap_or_default()
    }
}

/// Progress callback: percentage 0..=100 of the audio decoded.
pub type ProgressFn = Box<dyn FnMut(i32) + Send>;

struct Decode {
    samples: Vec<f32>,
    options: TranscribeOptions,
    progress: Option<ProgressFn>,
    reply_tx: mpsc::Sender<Result<Transcript>>,
}

/// What waits in the queue: a decode with its audio, or a turn whose owner hands over
/// the decode once a slot takes it.
enum Job {
    Decode(Decode),
    Turn {
        urgent: bool,
        grant_tx: tokio::sync::oneshot::Sender<Turn>,
    },
}

impl Job {
    fn urgent(&self) -> bool {
        match self {
            Job::Decode(decode) => decode.options.urgent,
            Job::Turn { urgent, .. } => *urgent,
        }
    }
}

/// How long a slot that granted a turn waits for its decode before it serves the next
/// job (the owner builds the decode from audio it already holds: microseconds, unless
/// it has gone).
const TURN_HANDOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// A slot ready to decode for the owner of a turn ([`Engine::request_turn`]); dropped
/// unused, the slot goes on with the next job.
pub struct Turn {
    decode_tx: mpsc::Sender<Decode>,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn").finish_non_exhaustive()
    }
}

impl Turn {
    /// Decodes `samples` on the slot that granted this turn (options checked as
    /// [`Engine::transcribe`] checks them); blocks until done.
    pub fn transcribe(
        self,
        engine: &Engine,
        samples: Vec<f32>,
        options: TranscribeOptions,
    ) -> Result<Transcript> {
        engine.check_request(&samples, &options)?;
        let (reply_tx, reply_rx) = mpsc::channel();
        self.decode_tx
            .send(Decode {
                samples,
                options,
                progress: None,
                reply_tx,
            })
            .map_err(|_| EngineError::ShutDown)?;
        reply_rx.recv().map_err(|_| EngineError::ShutDown)?
    }
}

/// Inference threads shared by the running decodes of one engine, or of several (a
/// worker's caption and final engines share one budget, so that two models decoding at
/// once never run more threads than cores).
#[derive(Debug)]
pub struct ThreadBudget {
    total: usize,
    free: Mutex<usize>,
    returned: Condvar,
}

impl ThreadBudget {
    /// A budget of `threads` (at least 1).
    pub fn new(threads: usize) -> Arc<Self> {
        let total = threads.max(1);
        Arc::new(Self {
            total,
            free: Mutex::new(total),
            returned: Condvar::new(),
        })
    }

    /// The threads in the budget.
    pub fn threads(&self) -> usize {
        self.total
    }

    /// Takes up to `wanted` threads (at least 1), waiting until one is free.
    fn acquire(&self, wanted: usize) -> usize {
        let Ok(mut free) = self.free.lock() else {
            return 1;
        };
        while *free == 0 {
            free = match self.returned.wait(free) {
                Ok(free) => free,
                Err(_) => return 1,
            };
        }
        let taken = wanted.clamp(1, *free);
        *free -= taken;
        taken
    }

    /// Gives back threads a finished decode held.
    fn release(&self, threads: usize) {
        if let Ok(mut free) = self.free.lock() {
            *free = (*free + threads).min(self.total);
        }
        self.returned.notify_all();
    }
}

/// The jobs waiting for a slot, each with when it came: urgent ones first, each kind
/// in arrival order.
struct Waiting {
    urgent: VecDeque<(Instant, Job)>,
    normal: VecDeque<(Instant, Job)>,
    closed: bool,
    /// What one decode takes while others wait: the threads split over the slots.
    share: usize,
}

impl Waiting {
    fn new(threads: usize, slots: usize) -> Self {
        Self {
            urgent: VecDeque::new(),
            normal: VecDeque::new(),
            closed: false,
            share: (threads / slots.max(1)).max(1),
        }
    }

    fn len(&self) -> usize {
        self.urgent.len() + self.normal.len()
    }

    /// Threads the job just taken asks of the budget: every free one when nothing else
    /// waits (one decode runs fastest on all cores), else its share, leaving the rest
    /// to the next.
    fn threads_wanted(&self) -> usize {
        if self.len() == 0 {
            usize::MAX
        } else {
            self.share
        }
    }
}

/// The bounded two-class queue in front of the slots.
struct JobQueue {
    waiting: Mutex<Waiting>,
    /// Signalled when a job arrives or the queue closes.
    job_ready: Condvar,
    /// Signalled when a job leaves (room for a blocked caller).
    room: Condvar,
    capacity: usize,
}

impl JobQueue {
    fn new(capacity: usize, threads: usize, slots: usize) -> Self {
        Self {
            waiting: Mutex::new(Waiting::new(threads, slots)),
            job_ready: Condvar::new(),
            room: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `job`, waiting while the queue is full (turns never wait: each stream
    /// holds at most one); `Err` once it is closed.
    fn push(&self, job: Job) -> Result<()> {
        let mut waiting = self.waiting.lock().map_err(|_| EngineError::ShutDown)?;
        while !waiting.closed && waiting.len() >= self.capacity && matches!(job, Job::Decode(_)) {
            waiting = self.room.wait(waiting).map_err(|_| EngineError::ShutDown)?;
        }
        if waiting.closed {
            return Err(EngineError::ShutDown);
        }
        let entry = (Instant::now(), job);
        if entry.1.urgent() {
            waiting.urgent.push_back(entry);
        } else {
            waiting.normal.push_back(entry);
        }
        self.job_ready.notify_one();
        Ok(())
    }

    /// The next job, urgent first, with when it was queued and the threads it asks of
    /// the budget ([`Waiting::threads_wanted`]). `None` once the queue is closed and
    /// empty.
    fn pop(&self) -> Option<(Job, Instant, usize)> {
        let mut waiting = self.waiting.lock().ok()?;
        loop {
            if let Some((queued_at, job)) = waiting
                .urgent
                .pop_front()
                .or_else(|| waiting.normal.pop_front())
            {
                let wanted = waiting.threads_wanted();
                self.room.notify_one();
                return Some((job, queued_at, wanted));
            }
            if waiting.closed {
                return None;
            }
            waiting = self.job_ready.wait(waiting).ok()?;
        }
    }

    /// No more jobs are taken; the slots finish what waits and exit.
    fn close(&self) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.closed = true;
        }
        self.job_ready.notify_all();
        self.room.notify_all();
    }
}

/// A loaded model behind a fixed pool of decoding slots.
pub struct Engine {
    queue: Arc<JobQueue>,
    slots: Vec<JoinHandle<()>>,
    /// Slots still running (see [`Engine::is_healthy`]).
    live: Arc<AtomicUsize>,
    /// Thread-nanoseconds the decodes have held (see [`Engine::busy_seconds`]).
    busy_nanos: Arc<AtomicU64>,
    info: ModelInfo,
    budget: Arc<ThreadBudget>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("info", &self.info)
            .field("slots", &self.slots.len())
            .field("threads", &self.budget.threads())
            .finish()
    }
}

impl Engine {
    /// Loads the model once and starts the slot threads.
    pub fn load(config: &EngineConfig) -> Result<Self> {
        let threads = config
            .budget
            .as_ref()
            .map_or(config.threads, |budget| budget.threads());
        if config.slots == 0 || threads == 0 {
            return Err(EngineError::InvalidOption(
                "threads and slots must be at least 1".into(),
            ));
        }
        if config.slots > threads {
            return Err(EngineError::InvalidOption(format!(
                "{} slots need at least {} threads, the budget is {threads}",
                config.slots, config.slots
            )));
        }
        if !config.model_path.is_file() {
            return Err(EngineError::ModelMissing(config.model_path.clone()));
        }
        whisper_rs::install_logging_hooks();
        let mut params = WhisperContextParameters::default();
        params.flash_attn(config.flash_attn);
        // DTW over the alignment heads places words far closer to the audio than
        // Whisper's own token timestamps (espeak-ng speech after 1 s of silence: first
        // word at 1.34 s with DTW, at 0.00 s without). whisper.cpp has no DTW with flash
        // attention, so that mode keeps the plain token times.
        let dtw = (!config.flash_attn)
            .then(|| read_ggml_header(&config.model_path).and_then(|h| dtw_mode(&h)))
            .flatten();
        let dtw_word_times = dtw.is_some();
        if let Some(mode) = dtw {
            params.dtw_parameters(DtwParameters {
                mode,
                ..DtwParameters::default()
            });
        }
        let context = WhisperContext::new_with_params(&config.model_path, params)
            .map_err(|_| EngineError::ModelLoad(config.model_path.clone()))?;
        let info = ModelInfo {
            path: config.model_path.clone(),
            multilingual: context.is_multilingual(),
            n_mels: context.model_n_mels(),
            dtw_word_times,
        };
        let context = Arc::new(context);
        let queue = Arc::new(JobQueue::new(config.queue_capacity, threads, config.slots));
        let budget = config
            .budget
            .clone()
            .unwrap_or_else(|| ThreadBudget::new(threads));
        let mut slots = Vec::with_capacity(config.slots);
        let live = Arc::new(AtomicUsize::new(config.slots));
        let busy_nanos = Arc::new(AtomicU64::new(0));
        for index in 0..config.slots {
            let state = new_state(&context)?;
            let slot = Slot {
                context: Arc::clone(&context),
                state,
                live: Arc::clone(&live),
                busy_nanos: Arc::clone(&busy_nanos),
                budget: Arc::clone(&budget),
            };
            let queue = Arc::clone(&queue);
            let handle = std::thread::Builder::new()
                .name(format!("kiroku-infer-{index}"))
                .spawn(move || slot.run(&queue))
                .map_err(|e| EngineError::Inference(format!("spawning slot thread: {e}")))?;
            slots.push(handle);
        }
        Ok(Self {
            queue,
            slots,
            live,
            busy_nanos,
            info,
            budget,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Every slot is running (false once a slot could not be restored after a panic:
    /// the worker then reports itself not ready).
    pub fn is_healthy(&self) -> bool {
        self.live.load(Ordering::SeqCst) == self.slots.len()
    }

    /// Thread-seconds the decodes have held since the engine was loaded (a decode on
    /// two threads for 1 s counts 2): its growth over a period, divided by the period
    /// and [`Engine::threads`], is the engine's load.
    pub fn busy_seconds(&self) -> f64 {
        Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed)).as_secs_f64()
    }

    /// The inference threads its decodes share (with other engines', when its
    /// budget is shared).
    pub fn threads(&self) -> usize {
        self.budget.threads()
    }

    /// Transcribes 16 kHz mono samples; blocks until a slot has decoded them.
    pub fn transcribe(
        &self,
        samples: Vec<f32>,
        options: TranscribeOptions,
        progress: Option<ProgressFn>,
    ) -> Result<Transcript> {
        self.check_request(&samples, &options)?;
        let (reply_tx, reply_rx) = mpsc::channel();
        self.queue.push(Job::Decode(Decode {
            samples,
            options,
            progress,
            reply_tx,
        }))?;
        reply_rx.recv().map_err(|_| EngineError::ShutDown)?
    }

    /// Queues a turn (urgent ones, a live utterance's final, go first): the receiver
    /// gets a [`Turn`] when a slot is ready, and the caller then decodes with
    /// [`Turn::transcribe`] the audio it holds at that moment. Dropping the receiver
    /// gives the turn up. Never blocks.
    pub fn request_turn(&self, urgent: bool) -> Result<tokio::sync::oneshot::Receiver<Turn>> {
        let (grant_tx, grant_rx) = tokio::sync::oneshot::channel();
        self.queue.push(Job::Turn { urgent, grant_tx })?;
        Ok(grant_rx)
    }

    /// [`Engine::check_options`], and the audio fits the audio context.
    fn check_request(&self, samples: &[f32], options: &TranscribeOptions) -> Result<()> {
        self.check_options(options)?;
        if let Some(audio_ctx) = options.audio_ctx {
            // whisper.cpp encodes only the first `audio_ctx` frames of each 30 s window:
            // the rest would be silently dropped (and DTW aborts), so refuse instead.
            let covered = audio_ctx as usize * SAMPLES_PER_AUDIO_CTX_FRAME;
            if samples.len() > covered {
                return Err(EngineError::InvalidOption(format!(
                    "audio context {audio_ctx} covers {} ms but the audio is {} ms long",
                    covered * 1000 / WHISPER_SAMPLE_RATE_HZ as usize,
                    samples.len() * 1000 / WHISPER_SAMPLE_RATE_HZ as usize
                )));
            }
        }
        Ok(())
    }

    /// Refuses options this model cannot honour (an unknown language, a language other
    /// than English on an English-only model, a beam or context out of range) with
    /// [`EngineError::InvalidOption`], before any audio is decoded.
    pub fn check_options(&self, options: &TranscribeOptions) -> Result<()> {
        // whisper.cpp takes NUL-terminated strings (whisper-rs panics on an interior
        // NUL): refuse them here, whoever the caller is.
        for (name, value) in [("prompt", &options.prompt), ("language", &options.language)] {
            if value.as_deref().is_some_and(|v| v.contains('\0')) {
                return Err(EngineError::InvalidOption(format!(
                    "the {name} holds a NUL character"
                )));
            }
        }
        if options.beam_size > MAX_BEAM_SIZE {
            return Err(EngineError::InvalidOption(format!(
                "beam size {} is above the maximum {MAX_BEAM_SIZE}",
                options.beam_size
            )));
        }
        if let Some(language) = &options.language {
            if language != "auto" && whisper_rs::get_lang_id(language).is_none() {
                return Err(EngineError::InvalidOption(format!(
                    "unknown language code {language:?}: use an ISO 639-1 code Whisper knows (ja, en, …) or auto"
                )));
            }
            if !self.info.multilingual && language != "en" {
                // The model's name, not its path: this message reaches API clients.
                return Err(EngineError::InvalidOption(format!(
                    "model {} is English-only; language {language:?} needs a multilingual model such as base",
                    self.info.name()
                )));
            }
        }
        if let Some(audio_ctx) = options.audio_ctx
            && !(64..=1500).contains(&audio_ctx)
        {
            return Err(EngineError::InvalidOption(format!(
                "audio context {audio_ctx} is outside 64..=1500 frames"
            )));
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the queue lets every slot finish its job and exit.
        self.queue.close();
        for handle in self.slots.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Decoder states are created one at a time, process-wide: a slot renews its state
/// after a panic while other slots (and other engines) may be doing the same, and
/// whisper.cpp's state set-up (backends, schedulers) is not documented as safe to run
/// concurrently. Rare (load, and after a panic), so never contended in practice. (A
/// full-suite run once died with SIGSEGV in the panic-recovery test while two slots
/// renewed their states at once; not reproduced since.)
static STATES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A new decoder state for `context`, created under [`STATES`].
fn new_state(context: &WhisperContext) -> Result<WhisperState> {
    let _serial = STATES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    context
        .create_state()
        .map_err(|e| EngineError::Inference(format!("creating decoder state: {e}")))
}

struct Slot {
    context: Arc<WhisperContext>,
    state: WhisperState,
    /// Slots that are running; when one cannot be restored after a panic it leaves,
    /// and the last one to leave closes the queue.
    live: Arc<AtomicUsize>,
    /// The engine's thread-time, which each slot adds to after every job.
    busy_nanos: Arc<AtomicU64>,
    budget: Arc<ThreadBudget>,
}

impl Slot {
    fn run(mut self, queue: &JobQueue) {
        // The queue's lock is held only while taking a job, not while decoding it.
        while let Some((job, queued_at, wanted)) = queue.pop() {
            // Threads first, then the turn's hand-over: its owner takes its audio only
            // when the decode can start at once (not while waiting for threads another
            // engine of the budget holds).
            let threads = self.budget.acquire(wanted);
            kiroku_core::metrics::metrics()
                .decode_queue_seconds
                .observe(queued_at.elapsed().as_secs_f64());
            let Some(Decode {
                samples,
                options,
                progress,
                reply_tx,
            }) = Self::decode_of(job)
            else {
                self.budget.release(threads);
                continue;
            };
            // A panic while decoding (whisper-rs panics on some inputs) fails this one
            // request; the slot keeps serving everyone else.
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.decode(&samples, &options, threads, progress)
            }));
            self.budget.release(threads);
            let busy =
                u64::try_from(started.elapsed().as_nanos() * threads as u128).unwrap_or(u64::MAX);
            self.busy_nanos.fetch_add(busy, Ordering::Relaxed);
            match outcome {
                Ok(result) => {
                    let _ = reply_tx.send(result);
                }
                Err(panic) => {
                    let reason = panic_message(panic.as_ref());
                    tracing::error!(%reason, "a decode panicked; the request fails, the slot goes on");
                    // The state may be half-written: start this slot over with a new
                    // one before answering, so the slot is whole again by the time
                    // its caller (or a test) sends the next job.
                    let renewed = self.renew_state();
                    let _ = reply_tx.send(Err(EngineError::Inference(format!(
                        "the decoder failed on this request: {reason}"
                    ))));
                    if let Err(error) = renewed {
                        tracing::error!(%error, "the slot cannot get a new decoder state and stops");
                        break;
                    }
                }
            }
        }
        if self.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            // No slot left: callers get `ShutDown` instead of waiting forever.
            queue.close();
        }
    }

    /// Replaces the slot's decoder state with a new one (the old one is freed).
    fn renew_state(&mut self) -> Result<()> {
        self.state = new_state(&self.context)?;
        Ok(())
    }

    /// The decode to run for `job`: its own, or the one a turn's owner hands over
    /// (`None` when the owner gave the turn up or did not answer in time).
    fn decode_of(job: Job) -> Option<Decode> {
        match job {
            Job::Decode(decode) => Some(decode),
            Job::Turn { grant_tx, .. } => {
                let (decode_tx, decode_rx) = mpsc::channel();
                grant_tx.send(Turn { decode_tx }).ok()?;
                decode_rx.recv_timeout(TURN_HANDOVER_TIMEOUT).ok()
            }
        }
    }

    fn decode(
        &mut self,
        samples: &[f32],
        options: &TranscribeOptions,
        threads: usize,
        progress: Option<ProgressFn>,
    ) -> Result<Transcript> {
        let duration_ms = samples.len() as u64 * 1000 / u64::from(WHISPER_SAMPLE_RATE_HZ);
        let strategy = if options.beam_size > 1 {
            SamplingStrategy::BeamSearch {
                beam_size: options.beam_size as i32,
                patience: -1.0,
            }
        } else {
            SamplingStrategy::Greedy { best_of: 1 }
        };
        let mut params = FullParams::new(strategy);
        params.set_n_threads(i32::try_from(threads).unwrap_or(1));
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_special(false);
        params.set_print_timestamps(false);
        params.set_token_timestamps(true);
        params.set_no_context(true);
        params.set_suppress_blank(true);
        let language = options.language.as_deref().filter(|l| *l != "auto");
        if self.context.is_multilingual() {
            params.set_language(language.or(Some("auto")));
        } else {
            params.set_language(Some("en"));
        }
        if let Some(prompt) = options.prompt.as_deref() {
            params.set_initial_prompt(prompt);
        }
        if let Some(audio_ctx) = options.audio_ctx {
            params.set_audio_ctx(audio_ctx as i32);
            // One decoder pass over the whole (at most 30 s) audio. Otherwise whisper.cpp
            // starts another pass after the last timestamp it decoded, and when fewer
            // than 160 ms remain there, its DTW median filter (width 7 over the pass's
            // audio frames) fails an assertion and aborts the process: seen with a live
            // final of 20 s (15 s of left context) on tiny.en.
            params.set_single_segment(true);
        }
        if options.no_temperature_fallback {
            params.set_temperature_inc(0.0);
        }
        if let Some(max_tokens) = options.max_tokens {
            params.set_max_tokens(max_tokens as i32);
        }
        if let Some(mut progress) = progress {
            params.set_progress_callback_safe(move |percent: i32| progress(percent));
        }
        self.state
            .full(params, samples)
            .map_err(|e| EngineError::Inference(e.to_string()))?;

        let language = if self.context.is_multilingual() {
            whisper_rs::get_lang_str(self.state.full_lang_id_from_state())
                .unwrap_or("und")
                .to_string()
        } else {
            "en".to_string()
        };
        let eot = self.context.token_eot();
        let mut segments = Vec::new();
        let mut previous_end_ms = 0u64;
        for segment in self.state.as_iter() {
            let segment_start_ms = centis_to_ms(segment.start_timestamp()).min(duration_ms);
            let segment_end_ms =
                centis_to_ms(segment.end_timestamp()).clamp(segment_start_ms, duration_ms);
            let mut words_of_tokens = WordAssembler::default();
            for index in 0..segment.n_tokens() {
                let Some(token) = segment.get_token(index) else {
                    continue;
                };
                if token.token_id() >= eot {
                    continue; // timestamps, language and other special tokens
                }
                let data = token.token_data();
                // t_dtw is -1 when DTW is off (flash attention): fall back to t0.
                let start_cs = if data.t_dtw >= 0 { data.t_dtw } else { data.t0 };
                words_of_tokens.push(
                    token.to_bytes().unwrap_or_default(),
                    start_cs,
                    data.t1,
                    data.p,
                );
            }
            let pieces = words_of_tokens.finish();
            let words = place_words(
                pieces,
                segment_start_ms,
                segment_end_ms,
                &mut previous_end_ms,
            );
            let text = join_words(words.iter().map(|w| w.text.as_str()));
            if text.is_empty() {
                continue;
            }
            // place_words keeps every word inside the segment's bounds.
            segments.push(Segment {
                start_ms: segment_start_ms,
                end_ms: segment_end_ms,
                text,
                words,
            });
        }
        let text = join_words(segments.iter().map(|s| s.text.as_str()));
        Ok(Transcript {
            duration_ms,
            text,
            language,
            segments,
        })
    }
}

#[derive(Debug, Default)]
struct WordPiece {
    bytes: Vec<u8>,
    start_cs: Option<i64>,
    end_cs: i64,
    probabilities: Vec<f32>,
}

impl WordPiece {
    fn append(&mut self, other: WordPiece) {
        self.bytes.extend_from_slice(&other.bytes);
        if self.start_cs.is_none() {
            self.start_cs = other.start_cs;
        }
        self.end_cs = other.end_cs;
        self.probabilities.extend(other.probabilities);
    }
}

/// Groups a segment's tokens into words.
///
/// Tokens are first gathered into whole characters (a byte-level token may hold part of
/// a kanji's UTF-8 bytes). In spaced scripts a word is the run of tokens from one that
/// starts with a space to the next. In unspaced scripts (Japanese, Chinese) every
/// token's characters are their own "word": captions then commit token by token and
/// word timings are token spans. Punctuation stays with the word before it.
#[derive(Debug, Default)]
struct WordAssembler {
    words: Vec<WordPiece>,
    /// Tokens whose bytes do not yet end on a character boundary.
    pending: WordPiece,
}

impl WordAssembler {
    fn push(&mut self, bytes: &[u8], start_cs: i64, end_cs: i64, probability: f32) {
        self.pending.bytes.extend_from_slice(bytes);
        self.pending.start_cs.get_or_insert(start_cs);
        self.pending.end_cs = end_cs;
        self.pending.probabilities.push(probability);
        if std::str::from_utf8(&self.pending.bytes).is_ok() {
            let unit = std::mem::take(&mut self.pending);
            self.add_unit(unit);
        }
    }

    fn add_unit(&mut self, unit: WordPiece) {
        let text = String::from_utf8_lossy(&unit.bytes);
        let continues = self.words.last().is_some_and(|previous| {
            continues_word(&String::from_utf8_lossy(&previous.bytes), &text)
        });
        match self.words.last_mut() {
            Some(previous) if continues => previous.append(unit),
            _ => self.words.push(unit),
        }
    }

    fn finish(mut self) -> Vec<WordPiece> {
        if !self.pending.bytes.is_empty() {
            // A truncated character at the end (token cap): kept, decoded lossily.
            let unit = std::mem::take(&mut self.pending);
            self.add_unit(unit);
        }
        self.words
    }
}

/// Whether the token text `next` continues the word `previous` rather than starting a
/// new one.
fn continues_word(previous: &str, next: &str) -> bool {
    let Some(first) = next.chars().next() else {
        return true;
    };
    if first.is_whitespace() {
        return false;
    }
    if !first.is_alphanumeric() {
        return true; // punctuation: "予算。", "world,"
    }
    let last = previous.trim_end().chars().last();
    !is_unspaced(first) && !last.is_some_and(is_unspaced)
}

/// The text a panic carried (`panic!("…")` or `.expect("…")`).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

fn centis_to_ms(centiseconds: i64) -> u64 {
    u64::try_from(centiseconds).unwrap_or(0) * 10
}

/// Turns token runs into words whose times are in order, do not overlap, and stay
/// inside their segment: Whisper's token times jitter by a few tens of milliseconds.
///
/// A word starts at its first token's aligned time and ends where the next word starts
/// (the segment's end for the last word), or earlier when Whisper's own end time for
/// its last token says so.
fn place_words(
    pieces: Vec<WordPiece>,
    segment_start_ms: u64,
    segment_end_ms: u64,
    previous_end_ms: &mut u64,
) -> Vec<Word> {
    let mut words = Vec::with_capacity(pieces.len());
    let next_starts: Vec<u64> = pieces
        .iter()
        .skip(1)
        .map(|p| centis_to_ms(p.start_cs.unwrap_or(0)))
        .chain(std::iter::once(segment_end_ms))
        .collect();
    for (piece, next_start_ms) in pieces.into_iter().zip(next_starts) {
        let text = String::from_utf8_lossy(&piece.bytes).trim().to_string();
        if text.is_empty() {
            continue;
        }
        let floor = (*previous_end_ms).max(segment_start_ms).min(segment_end_ms);
        let start_ms = centis_to_ms(piece.start_cs.unwrap_or(0)).clamp(floor, segment_end_ms);
        let own_end_ms = centis_to_ms(piece.end_cs);
        let end_ms = if own_end_ms > start_ms {
            own_end_ms.min(next_start_ms)
        } else {
            next_start_ms
        };
        let end_ms = end_ms.clamp(start_ms, segment_end_ms);
        let probability =
            piece.probabilities.iter().sum::<f32>() / piece.probabilities.len().max(1) as f32;
        *previous_end_ms = end_ms;
        words.push(Word {
            text,
            start_ms,
            end_ms,
            probability,
        });
    }
    words
}

/// The variable that names the model directory; the binary's configuration reads it
/// and passes the directory in (the engine reads no environment).
pub const MODEL_DIR_ENV: &str = "KIROKU_MODEL_DIR";

/// Where `kiroku` keeps models: the `configured` directory (`KIROKU_MODEL_DIR`), else
/// `<home>/.cache/kiroku/models`, else `.cache/kiroku/models` under the current one.
pub fn model_dir(configured: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    configured.unwrap_or_else(|| {
        home.unwrap_or_else(|| PathBuf::from("."))
            .join(".cache")
            .join("kiroku")
            .join("models")
    })
}

/// File name of the default converted model.
pub const DEFAULT_MODEL_FILE: &str = "ggml-tiny.en.bin";

/// The 11 header integers of a ggml Whisper file (n_vocab .. ftype), if it is one.
fn read_ggml_header(path: &Path) -> Option<GgmlHeader> {
    use std::io::Read;
    let mut bytes = [0u8; 48];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .ok()?;
    let field = |i: usize| {
        i32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    (field(0) as u32 == GGML_MAGIC).then(|| GgmlHeader {
        n_vocab: field(1),
        n_audio_layer: field(5),
        n_text_layer: field(9),
    })
}

#[derive(Debug, Clone, Copy)]
struct GgmlHeader {
    n_vocab: i32,
    n_audio_layer: i32,
    n_text_layer: i32,
}

/// whisper.cpp's alignment-head preset for a model, by its size (encoder layers) and
/// vocabulary; other shapes use the top decoder layers' heads.
fn dtw_mode(header: &GgmlHeader) -> Option<DtwMode<'static>> {
    let english_only = header.n_vocab == 51864;
    let preset = match (header.n_audio_layer, english_only) {
        (4, true) => DtwModelPreset::TinyEn,
        (4, false) => DtwModelPreset::Tiny,
        (6, true) => DtwModelPreset::BaseEn,
        (6, false) => DtwModelPreset::Base,
        (12, true) => DtwModelPreset::SmallEn,
        (12, false) => DtwModelPreset::Small,
        (24, true) => DtwModelPreset::MediumEn,
        (24, false) => DtwModelPreset::Medium,
        (32, false) if header.n_text_layer == 4 => DtwModelPreset::LargeV3Turbo,
        (32, false) if header.n_vocab == 51866 => DtwModelPreset::LargeV3,
        (32, false) => DtwModelPreset::LargeV2,
        _ => {
            return Some(DtwMode::TopMost {
                n_top: header.n_text_layer.clamp(1, 2),
            });
        }
    };
    Some(DtwMode::ModelPreset {
        model_preset: preset,
    })
}

/// Whether `path` looks like a ggml Whisper model (its header), without loading it.
pub fn is_ggml_file(path: &Path) -> bool {
    read_ggml_header(path).is_some()
}

/// How many languages a ggml Whisper model transcribes, read from its header without
/// loading it: English-only models have 51,864 tokens (1), multilingual ones 51,865
/// (99 languages) or, from large-v3 on, 51,866 (100: Cantonese added). `None` when the
/// file is not a ggml Whisper model.
pub fn model_language_count(path: &Path) -> Option<u32> {
    let header = read_ggml_header(path)?;
    Some(match header.n_vocab {
        ..=51864 => 1,
        51865 => 99,
        _ => 100,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tests::{SynthSpec, write_synthetic_ct2};
    use crate::convert::{WeightType, convert};

    fn assembled(tokens: &[&[u8]]) -> Vec<String> {
        let mut assembler = WordAssembler::default();
        for (i, bytes) in tokens.iter().enumerate() {
            assembler.push(bytes, i as i64 * 10, i as i64 * 10 + 10, 0.5);
        }
        assembler
            .finish()
            .into_iter()
            .map(|w| String::from_utf8_lossy(&w.bytes).trim().to_string())
            .collect()
    }

    #[test]
    fn tokens_become_words_by_spaces_or_by_characters() {
        assert_eq!(
            assembled(&[b" Hel", b"lo", b",", b" Kir", b"oku", b" 2025"]),
            ["Hello,", "Kiroku", "2025"]
        );
        // 予 is E4 BA 88: split across two byte-level tokens, it is still one character.
        let yo = "予".as_bytes();
        assert_eq!(
            assembled(&[
                &yo[..1],
                &yo[1..],
                "算".as_bytes(),
                "会議".as_bytes(),
                "は".as_bytes(),
                "API".as_bytes(),
                "で".as_bytes(),
                "す。".as_bytes()
            ]),
            ["予", "算", "会議", "は", "API", "で", "す。"]
        );
        let mut assembler = WordAssembler::default();
        assembler.push(&yo[..1], 0, 10, 0.2);
        assembler.push(&yo[1..], 10, 20, 0.4);
        let words = assembler.finish();
        assert_eq!(
            (
                words[0].start_cs,
                words[0].end_cs,
                words[0].probabilities.len()
            ),
            (Some(0), 20, 2)
        );
    }

    #[test]
    fn pool_refuses_more_slots_than_threads() {
        let mut config = EngineConfig::new("/nonexistent");
        config.threads = 2;
        config.slots = 3;
        let err = Engine::load(&config).expect_err("3 slots on 2 threads");
        assert!(
            err.to_string().contains("3 slots need at least 3 threads"),
            "{err}"
        );
        config.threads = 0;
        assert!(matches!(
            Engine::load(&config),
            Err(EngineError::InvalidOption(_))
        ));
    }

    #[test]
    fn language_count_comes_from_the_vocabulary_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let multilingual = SynthSpec {
            n_vocab: 51865,
            ..SynthSpec::english_like()
        };
        for (spec, languages) in [
            (SynthSpec::english_like(), 1),
            (multilingual, 99),
            (SynthSpec::large_v3_like(), 100),
        ] {
            let ct2 = dir.path().join(languages.to_string());
            std::fs::create_dir_all(&ct2).expect("mkdir");
            write_synthetic_ct2(&ct2, spec);
            let out = ct2.join("model.ggml");
            convert(&ct2, &out, WeightType::Q8_0, &mut |_| {}).expect("convert");
            assert_eq!(model_language_count(&out), Some(languages));
        }
        assert_eq!(model_language_count(&dir.path().join("1/model.bin")), None);
    }

    #[test]
    fn missing_model_names_the_fix() {
        let err = Engine::load(&EngineConfig::new("/nonexistent/m.bin")).expect_err("missing");
        assert!(err.to_string().contains("kiroku model fetch"), "{err}");
    }

    /// whisper.cpp itself loads what the converter writes for a large-v3-shaped
    /// model (128 mel bins, 51866 tokens), with f16 and q8_0 weights, and decodes with it.
    #[test]
    fn whisper_cpp_loads_converted_large_v3_shapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_synthetic_ct2(dir.path(), SynthSpec::large_v3_like());
        for weight_type in [WeightType::F16, WeightType::Q8_0] {
            let out = dir.path().join(format!("{weight_type:?}.bin"));
            convert(dir.path(), &out, weight_type, &mut |_| {}).expect("convert");
            let mut config = EngineConfig::new(&out);
            config.threads = 1;
            let engine = Engine::load(&config).expect("whisper.cpp loads the converted file");
            assert!(engine.info().multilingual);
            assert_eq!(engine.info().n_mels, 128);
            let options = TranscribeOptions {
                language: Some("ja".into()),
                audio_ctx: Some(64),
                ..TranscribeOptions::default()
            };
            // Random weights decode to nonsense; what matters is a clean run.
            let noise: Vec<f32> = (0..16_000)
                .map(|i| ((i * 7919) % 200) as f32 / 1000.0 - 0.1)
                .collect();
            let transcript = engine.transcribe(noise, options, None).expect("decode");
            assert_eq!(transcript.duration_ms, 1000);
            assert_eq!(transcript.language, "ja");
        }
    }

    /// A 1-thread engine over a synthetic English-shaped q8_0 model.
    fn small_english_engine(queue_capacity: usize) -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().expect("tempdir");
        write_synthetic_ct2(dir.path(), SynthSpec::english_like());
        let model = dir.path().join("model.ggml");
        convert(dir.path(), &model, WeightType::Q8_0, &mut |_| {}).expect("convert");
        let mut config = EngineConfig::new(&model);
        config.threads = 1;
        config.queue_capacity = queue_capacity;
        let engine = Engine::load(&config).expect("load");
        (dir, engine)
    }

    /// The smallest encoder context: fast decodes of short test audio.
    fn short_context() -> TranscribeOptions {
        TranscribeOptions {
            audio_ctx: Some(64),
            ..TranscribeOptions::default()
        }
    }

    #[test]
    fn audio_context_shorter_than_the_audio_is_refused() {
        let (_dir, engine) = small_english_engine(16);
        let options = short_context();
        let err = engine
            .transcribe(vec![0.01; 32_000], options, None)
            .expect_err("2 s > 1.28 s");
        assert!(
            err.to_string()
                .contains("covers 1280 ms but the audio is 2000 ms"),
            "{err}"
        );
    }

    /// A NUL in a prompt or language is refused before it reaches the queue; and a
    /// decode that panics anyway (here: such a job put on the queue directly, past the
    /// check) fails only its own request: the slot stays and serves the next one.
    #[test]
    fn a_panicking_decode_fails_its_request_and_the_slot_lives_on() {
        let (_dir, engine) = small_english_engine(4);
        let hostile = TranscribeOptions {
            prompt: Some("agenda\0".into()),
            ..short_context()
        };
        let err = engine
            .transcribe(vec![0.0; 16_000], hostile.clone(), None)
            .expect_err("NUL in the prompt");
        assert!(
            matches!(&err, EngineError::InvalidOption(m) if m.contains("prompt holds a NUL")),
            "{err}"
        );
        let language = TranscribeOptions {
            language: Some("e\0n".into()),
            ..short_context()
        };
        assert!(matches!(
            engine.check_options(&language),
            Err(EngineError::InvalidOption(_))
        ));

        for _ in 0..3 {
            let (reply_tx, reply_rx) = mpsc::channel();
            engine
                .queue
                .push(Job::Decode(Decode {
                    samples: vec![0.0; 16_000],
                    options: hostile.clone(),
                    progress: None,
                    reply_tx,
                }))
                .expect("queued");
            let err = reply_rx
                .recv()
                .expect("a reply, not a dead slot")
                .expect_err("panicked");
            assert!(err.to_string().contains("null byte"), "{err}");
        }
        assert!(engine.is_healthy());
        let busy_before = engine.busy_seconds();
        let transcript = engine
            .transcribe(vec![0.0; 16_000], short_context(), None)
            .expect("the slot still decodes");
        assert_eq!(transcript.duration_ms, 1000);
        // The load a worker reports: decoding time is counted, and every job's wait for
        // its slot is observed (three hostile jobs and one decode in this test).
        assert!(
            engine.busy_seconds() > busy_before,
            "decode time not counted"
        );
        let waits = kiroku_core::metrics::render()
            .lines()
            .find_map(|line| line.strip_prefix("kiroku_decode_queue_seconds_count "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("kiroku_decode_queue_seconds_count exported");
        assert!(waits >= 4, "{waits} queue waits observed");
    }

    /// An urgent job (an utterance final) is taken before every waiting caption decode;
    /// each class keeps its arrival order; a closed queue hands out what waits, then
    /// nothing, and refuses new jobs.
    #[test]
    fn urgent_jobs_are_taken_before_waiting_ones() {
        let queue = JobQueue::new(8, 2, 1);
        for (marker, urgent) in [(1, false), (2, false), (3, true), (4, false), (5, true)] {
            queue.push(queued_job(marker, urgent)).expect("queued");
        }
        let take = || queue.pop().map(|(job, _, _)| marker(&job));
        let order: Vec<usize> = (0..3).filter_map(|_| take()).collect();
        assert_eq!(order, [3, 5, 1]);
        queue.close();
        assert!(
            queue.push(queued_job(6, true)).is_err(),
            "a closed queue takes nothing"
        );
        let rest: Vec<usize> = std::iter::from_fn(take).collect();
        assert_eq!(rest, [2, 4]);
    }

    /// A job for the queue tests; `marker` samples tell jobs apart.
    fn queued_job(marker: usize, urgent: bool) -> Job {
        let (reply_tx, _) = mpsc::channel();
        Job::Decode(Decode {
            samples: vec![0.0; marker],
            options: TranscribeOptions {
                urgent,
                ..TranscribeOptions::default()
            },
            progress: None,
            reply_tx,
        })
    }

    /// The marker of a job from [`queued_job`] (a turn: 0).
    fn marker(job: &Job) -> usize {
        match job {
            Job::Decode(decode) => decode.samples.len(),
            Job::Turn { .. } => 0,
        }
    }

    /// The thread budget (2 threads, 2 slots): a decode with nothing behind it gets
    /// every thread; one taken while more wait gets its share and leaves the rest to the
    /// next; a decode (of this engine or another sharing the budget) waits while no
    /// thread is free and gets one when it comes back.
    #[test]
    fn a_decode_gets_every_thread_alone_and_its_share_under_load() {
        let queue = JobQueue::new(8, 2, 2);
        let budget = ThreadBudget::new(2);
        let take = || {
            let (_, _, wanted) = queue.pop().expect("a job");
            budget.acquire(wanted)
        };
        queue.push(queued_job(1, false)).expect("queued");
        let alone = take();
        assert_eq!(alone, 2, "nothing waits behind it");
        budget.release(alone);

        for marker in [2, 3] {
            queue.push(queued_job(marker, false)).expect("queued");
        }
        let first = take();
        assert_eq!(first, 1, "another waits: its share");
        let second = take();
        assert_eq!(second, 1, "the one thread left");
        std::thread::scope(|scope| {
            let (taken_tx, taken_rx) = mpsc::channel();
            let budget = &budget;
            scope.spawn(move || {
                let _ = taken_tx.send(budget.acquire(usize::MAX));
            });
            assert!(
                taken_rx.recv_timeout(Duration::from_millis(200)).is_err(),
                "threads were taken while every thread was lent"
            );
            budget.release(first);
            assert_eq!(
                taken_rx.recv().expect("the waiting decode answers"),
                1,
                "the thread that came back"
            );
        });
    }

    /// A turn is granted once a slot is ready and decodes what its owner hands over
    /// then; a turn given up (its receiver dropped before the grant, or the granted
    /// turn dropped unused) holds no slot: the next job runs. An urgent turn goes ahead
    /// of waiting decodes like an urgent decode.
    #[test]
    fn a_turn_decodes_what_its_owner_hands_over_when_a_slot_is_ready() {
        let (_dir, engine) = small_english_engine(4);
        let turn = engine
            .request_turn(false)
            .expect("queued")
            .blocking_recv()
            .expect("granted");
        let transcript = turn
            .transcribe(&engine, vec![0.0; 8_000], short_context())
            .expect("decoded on the granted slot");
        assert_eq!(transcript.duration_ms, 500);

        drop(engine.request_turn(true).expect("queued"));
        let unused = engine
            .request_turn(false)
            .expect("queued")
            .blocking_recv()
            .expect("granted");
        drop(unused);
        let transcript = engine
            .transcribe(vec![0.0; 16_000], short_context(), None)
            .expect("the slot goes on");
        assert_eq!(transcript.duration_ms, 1000);

        let queue = JobQueue::new(8, 2, 1);
        queue.push(queued_job(1, false)).expect("queued");
        let (grant_tx, _grant_rx) = tokio::sync::oneshot::channel();
        queue
            .push(Job::Turn {
                urgent: true,
                grant_tx,
            })
            .expect("queued");
        let (first, _, _) = queue.pop().expect("a job");
        assert!(
            matches!(first, Job::Turn { urgent: true, .. }),
            "the urgent turn first"
        );
    }

    /// Jobs from many callers queue in front of one slot and all complete.
    #[test]
    fn queued_jobs_from_many_threads_all_complete_on_one_slot() {
        let (_dir, engine) = small_english_engine(1);
        let options = short_context();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (1..=4u64)
                .map(|quarters| {
                    let (engine, options) = (&engine, options.clone());
                    scope.spawn(move || {
                        let samples = vec![0.01f32; 4_000 * quarters as usize];
                        let transcript = engine.transcribe(samples, options, None).expect("decode");
                        assert_eq!(
                            transcript.duration_ms,
                            quarters * 250,
                            "each caller gets its own result"
                        );
                    })
                })
                .collect();
            for handle in handles {
                handle.join().expect("caller thread");
            }
        });
    }
}
