//! The process's Prometheus metrics: one global registry, rendered as Prometheus text
//! (format 0.0.4) at `/metrics` by [`crate::admin`].
//!
//! Every family is created on first use of [`metrics()`] and lives for the process, so an
//! unlabelled family appears (at zero) on the first scrape even before anything happened.
//! Durations are in seconds, as Prometheus expects.
//!
//! ```
//! use kiroku_core::metrics::metrics;
//!
//! let stream = metrics().stream_started(); // kiroku_active_streams + 1 until dropped
//! metrics().audio_seconds.inc_by(0.2);
//! metrics().final_latency.observe(0.35);
//! metrics().error(tonic::Code::ResourceExhausted);
//! drop(stream);
//! ```

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Latency buckets, 50 ms to 10 s: what a live-caption user notices, up to a stalled stream.
const LATENCY_BUCKETS_S: [f64; 13] = [
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
];
/// Real-time-factor buckets: below 1 a worker keeps up with live audio, above it falls behind.
const REAL_TIME_FACTOR_BUCKETS: [f64; 12] = [
    0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
];
/// Decode-time buckets, 10 ms (tiny model, short buffer) to 10 s (large model on CPU).
const DECODE_BUCKETS_S: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0,
];

/// Audio-frame transit buckets, 0.5 ms to 2.5 s: the plumbing's own share of a caption's
/// latency, normally a millisecond or two.
const TRANSIT_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// gRPC call durations, 1 ms to an hour: unary calls, then streams that run a meeting.
const CALL_BUCKETS_S: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0, 3600.0,
];

/// Labels of the gRPC request counters: service, method, status code name.
type CallLabels = [(&'static str, &'static str); 3];
/// Labels of the gRPC duration histograms: service, method.
type MethodLabels = [(&'static str, &'static str); 2];
/// A histogram family with the call buckets.
type CallHistograms = Family<MethodLabels, Histogram, fn() -> Histogram>;
/// Label set of a family with one label, its value from a closed set.
type OneLabel = [(&'static str, &'static str); 1];

/// Label set of `kiroku_errors_total`: the gRPC status code name (`NotFound`, `Internal`…).
type CodeLabel = [(&'static str, &'static str); 1];
/// Label set of the durable-consumer families: the consumer's name (`audit`, `storage`).
type ConsumerLabel = [(&'static str, &'static str); 1];

/// Every metric family Kiroku exports. Fields are the families themselves; see each for
/// its exported name and meaning.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `kiroku_active_streams`: streams open on this gateway (or sessions decoding on this
    /// worker) right now. Prefer [`Metrics::stream_started`], which cannot leak a count.
    pub active_streams: Gauge,
    /// `kiroku_audio_seconds_total`: seconds of audio received, after resampling.
    pub audio_seconds: Counter<f64, AtomicU64>,
    /// `kiroku_real_time_factor`: decode time divided by the audio duration decoded, one
    /// observation per decode.
    pub real_time_factor: Histogram,
    /// `kiroku_first_interim_latency_seconds`: from a stream's first audio frame to its
    /// first interim result.
    pub first_interim_latency: Histogram,
    /// `kiroku_final_latency_seconds`: from the end of a word's audio to the utterance
    /// final holding it reaching the gateway.
    pub final_latency: Histogram,
    /// `kiroku_caption_latency_seconds`: from the end of a word's audio to its first
    /// showing at the gateway (its caption, or its final when no caption held it).
    pub caption_latency: Histogram,
    /// `kiroku_decode_seconds`: wall time of one engine decode.
    pub decode_seconds: Histogram,
    /// `kiroku_decode_queue_seconds`: how long a decode waited for a free decoding slot
    /// (part of `kiroku_decode_seconds`, which a worker measures around the whole call).
    pub decode_queue_seconds: Histogram,
    /// `kiroku_worker_load`: the share of a worker's inference threads busy over the
    /// last 5 s, 0 to 1. Near 1, new decodes queue (`kiroku_decode_queue_seconds`) and
    /// captions fall behind.
    pub worker_load: Gauge<f64, AtomicU64>,
    /// `kiroku_worker_stream_lag_seconds`: the caption lag of the worker's most behind
    /// live stream: the peak over the last 10 s of how long the audio of the words a
    /// caption or final showed (or that a running decode does not cover) had been on
    /// the worker (audio that waited in the queue counts from its arrival). Above the
    /// worker's `--admit-max-lag-s` it takes no new session.
    pub worker_stream_lag: Gauge<f64, AtomicU64>,
    /// `kiroku_audio_publish_seconds`: on a gateway, from an audio frame's arrival at
    /// the publish step to JetStream's acknowledgement that it is stored. A stream's
    /// frames are sent in order, each once the previous one is stored, so a slow ack
    /// holds up the frames behind it and counts in theirs too.
    pub audio_publish_seconds: Histogram,
    /// `kiroku_audio_delivery_seconds`: on a worker, from JetStream storing an audio
    /// frame (the server's timestamp) to the worker receiving it. Between hosts, their
    /// clock difference adds to it; a session taken over from another worker counts the
    /// age of the frames it replays.
    pub audio_delivery_seconds: Histogram,
    /// `kiroku_sessions_backlog`: session jobs waiting for a worker (the `SESSIONS`
    /// stream's pending count), the signal GPU workers scale on.
    pub sessions_backlog: Gauge,
    /// `kiroku_finals_total`: final segments delivered.
    pub finals: Counter,
    /// `kiroku_errors_total{code}`: requests and streams that ended in a gRPC error, by
    /// status code name; a code's series appears with its first error. Use
    /// [`Metrics::error`].
    errors: Family<CodeLabel, Counter>,
    /// `kiroku_consumer_retries_total{consumer}`: messages a durable consumer could not
    /// store and asked to be redelivered (database down, or a message it cannot store).
    consumer_retries: Family<ConsumerLabel, Counter>,
    /// `kiroku_consumer_dead_letters_total{consumer}`: messages moved to the dead-letter
    /// stream (invalid, or still failing after the last delivery). Alerted on.
    consumer_dead_letters: Family<ConsumerLabel, Counter>,
    /// `kiroku_consumer_{pending,ack_pending,redelivered}{consumer}`: a durable
    /// consumer's messages not yet delivered, delivered but not acknowledged, and
    /// redelivered and still unacknowledged (from NATS, every few seconds).
    consumer_pending: Family<ConsumerLabel, Gauge>,
    consumer_ack_pending: Family<ConsumerLabel, Gauge>,
    consumer_redelivered: Family<ConsumerLabel, Gauge>,
    /// `kiroku_grpc_server_requests_total{service,method,code}` and
    /// `kiroku_grpc_server_request_duration_seconds{service,method}`: every call served
    /// ([`crate::grpc_metrics`]).
    grpc_server_requests: Family<CallLabels, Counter>,
    grpc_server_duration: CallHistograms,
    /// The same for calls this process makes to another service.
    grpc_client_requests: Family<CallLabels, Counter>,
    grpc_client_duration: CallHistograms,
    /// `kiroku_streams_started_total`: live streams and files accepted by the gateway.
    pub streams_started: Counter,
    /// `kiroku_streams_queued_total`: live streams that waited for a worker long
    /// enough to be told they are queued (`SessionInfo.queued`); those refused after
    /// the gateway's queue timeout end with `RESOURCE_EXHAUSTED`
    /// (`kiroku_streams_ended_total{code}`).
    pub streams_queued: Counter,
    /// `kiroku_streams_refused_total{reason}`: streams refused before they began
    /// (`unauthenticated`, `quota`, `consent`, `invalid`, `unavailable`).
    streams_refused: Family<OneLabel, Counter>,
    /// `kiroku_streams_ended_total{code}`: streams that ended, by final status (`Ok`
    /// for a clean end).
    streams_ended: Family<OneLabel, Counter>,
    /// `kiroku_nats_connected`: 1 while this process's NATS connection is up.
    pub nats_connected: Gauge,
    /// `kiroku_db_pool_connections{state}`: database connections idle and in use.
    db_pool_connections: Family<OneLabel, Gauge>,
    /// `kiroku_db_errors_total`: database operations that failed.
    pub db_errors: Counter,
    /// `kiroku_build_info{version,role}`: 1, labelled with what runs.
    build_info: Family<[(&'static str, &'static str); 2], Gauge>,
}

/// The process's metrics, created on first use.
/// The nearest-rank `q` quantile (0–1) of `sorted` (ascending); NaN when it is empty.
/// What `kiroku stream --stats` and the benchmarks report as p50/p95/p99.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Every family in the Prometheus text format (0.0.4), served with [`CONTENT_TYPE`].
pub fn render() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; an encoder error would leave a partial page,
    // which Prometheus reports as a failed scrape.
    if let Err(error) = prometheus_text::encode(&mut text, &metrics().registry) {
        tracing::warn!(%error, "encoding metrics failed");
    }
    text
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let active_streams = Gauge::default();
        registry.register(
            "kiroku_active_streams",
            "Streams open right now",
            active_streams.clone(),
        );
        let audio_seconds = Counter::<f64, AtomicU64>::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "kiroku_audio_seconds",
            "Seconds of audio received",
            audio_seconds.clone(),
        );
        let real_time_factor = Histogram::new(REAL_TIME_FACTOR_BUCKETS);
        registry.register(
            "kiroku_real_time_factor",
            "Decode time divided by audio duration, per decode",
            real_time_factor.clone(),
        );
        let first_interim_latency = Histogram::new(LATENCY_BUCKETS_S);
        registry.register(
            "kiroku_first_interim_latency_seconds",
            "Seconds from a stream's first audio to its first interim result",
            first_interim_latency.clone(),
        );
        let final_latency = Histogram::new(LATENCY_BUCKETS_S);
        registry.register(
            "kiroku_final_latency_seconds",
            "Seconds from the end of an utterance to its final result",
            final_latency.clone(),
        );
        let caption_latency = Histogram::new(LATENCY_BUCKETS_S);
        registry.register(
            "kiroku_caption_latency_seconds",
            "Seconds from the end of a word to its first caption",
            caption_latency.clone(),
        );
        let decode_seconds = Histogram::new(DECODE_BUCKETS_S);
        registry.register(
            "kiroku_decode_seconds",
            "Wall time of one engine decode",
            decode_seconds.clone(),
        );
        let decode_queue_seconds = Histogram::new(DECODE_BUCKETS_S);
        registry.register(
            "kiroku_decode_queue_seconds",
            "Seconds a decode waited for a free decoding slot",
            decode_queue_seconds.clone(),
        );
        let worker_load = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "kiroku_worker_load",
            "Share of the worker's inference threads busy over the last 5 s (0 to 1)",
            worker_load.clone(),
        );
        let worker_stream_lag = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "kiroku_worker_stream_lag_seconds",
            "Caption lag of the worker's most behind live stream, peak of the last 10 s",
            worker_stream_lag.clone(),
        );
        let audio_publish_seconds = Histogram::new(TRANSIT_BUCKETS_S);
        registry.register(
            "kiroku_audio_publish_seconds",
            "Seconds from an audio frame reaching the gateway's publish step to JetStream storing it",
            audio_publish_seconds.clone(),
        );
        let audio_delivery_seconds = Histogram::new(TRANSIT_BUCKETS_S);
        registry.register(
            "kiroku_audio_delivery_seconds",
            "Seconds from JetStream storing an audio frame to a worker receiving it",
            audio_delivery_seconds.clone(),
        );
        let sessions_backlog = Gauge::default();
        registry.register(
            "kiroku_sessions_backlog",
            "Session jobs waiting for a worker",
            sessions_backlog.clone(),
        );
        let finals = Counter::default();
        registry.register(
            "kiroku_finals",
            "Utterance finals (the minutes) delivered",
            finals.clone(),
        );
        let errors = Family::<CodeLabel, Counter>::default();
        registry.register(
            "kiroku_errors",
            "Requests and streams that ended in a gRPC error, by status code",
            errors.clone(),
        );
        let consumer_retries = Family::<ConsumerLabel, Counter>::default();
        registry.register(
            "kiroku_consumer_retries",
            "Messages a durable consumer could not store and will get again",
            consumer_retries.clone(),
        );
        let consumer_dead_letters = Family::<ConsumerLabel, Counter>::default();
        registry.register(
            "kiroku_consumer_dead_letters",
            "Messages a durable consumer moved to the dead-letter stream",
            consumer_dead_letters.clone(),
        );
        let consumer_pending = Family::<ConsumerLabel, Gauge>::default();
        registry.register(
            "kiroku_consumer_pending",
            "Messages a durable consumer has not been delivered yet",
            consumer_pending.clone(),
        );
        let consumer_ack_pending = Family::<ConsumerLabel, Gauge>::default();
        registry.register(
            "kiroku_consumer_ack_pending",
            "Messages a durable consumer was delivered and has not acknowledged",
            consumer_ack_pending.clone(),
        );
        let consumer_redelivered = Family::<ConsumerLabel, Gauge>::default();
        registry.register(
            "kiroku_consumer_redelivered",
            "Messages delivered more than once and not acknowledged yet",
            consumer_redelivered.clone(),
        );
        let grpc_server_requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "kiroku_grpc_server_requests",
            "gRPC calls served, by service, method and status code",
            grpc_server_requests.clone(),
        );
        let grpc_server_duration =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                call_histogram,
            );
        registry.register(
            "kiroku_grpc_server_request_duration_seconds",
            "Seconds from a served call's start to its status (a stream's whole life)",
            grpc_server_duration.clone(),
        );
        let grpc_client_requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "kiroku_grpc_client_requests",
            "gRPC calls made to other services, by service, method and status code",
            grpc_client_requests.clone(),
        );
        let grpc_client_duration =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                call_histogram,
            );
        registry.register(
            "kiroku_grpc_client_request_duration_seconds",
            "Seconds from an outgoing call's start to its status",
            grpc_client_duration.clone(),
        );
        let streams_started = Counter::default();
        registry.register(
            "kiroku_streams_started",
            "Streams and files accepted",
            streams_started.clone(),
        );
        let streams_queued = Counter::default();
        registry.register(
            "kiroku_streams_queued",
            "Live streams told they wait for a worker (SessionInfo.queued)",
            streams_queued.clone(),
        );
        let streams_refused = Family::<OneLabel, Counter>::default();
        registry.register(
            "kiroku_streams_refused",
            "Streams refused before they began, by reason",
            streams_refused.clone(),
        );
        let streams_ended = Family::<OneLabel, Counter>::default();
        registry.register(
            "kiroku_streams_ended",
            "Streams that ended, by final status code",
            streams_ended.clone(),
        );
        let nats_connected = Gauge::default();
        registry.register(
            "kiroku_nats_connected",
            "1 while the NATS connection is up",
            nats_connected.clone(),
        );
        let db_pool_connections = Family::<OneLabel, Gauge>::default();
        registry.register(
            "kiroku_db_pool_connections",
            "Database connections of the pool, idle and in use",
            db_pool_connections.clone(),
        );
        let db_errors = Counter::default();
        registry.register(
            "kiroku_db_errors",
            "Database operations that failed",
            db_errors.clone(),
        );
        let build_info = Family::<[(&'static str, &'static str); 2], Gauge>::default();
        registry.register(
            "kiroku_build_info",
            "1, labelled with the version and role that run",
            build_info.clone(),
        );
        registry.register_collector(Box::new(crate::process::ProcessCollector));
        Self {
            registry,
            active_streams,
            audio_seconds,
            real_time_factor,
            first_interim_latency,
            final_latency,
            caption_latency,
            decode_seconds,
            decode_queue_seconds,
            worker_load,
            worker_stream_lag,
            audio_publish_seconds,
            audio_delivery_seconds,
            sessions_backlog,
            finals,
            errors,
            consumer_retries,
            consumer_dead_letters,
            consumer_pending,
            consumer_ack_pending,
            consumer_redelivered,
            grpc_server_requests,
            grpc_server_duration,
            grpc_client_requests,
            grpc_client_duration,
            streams_started,
            streams_queued,
            streams_refused,
            streams_ended,
            nats_connected,
            db_pool_connections,
            db_errors,
            build_info,
        }
    }

    /// Records one gRPC call ([`crate::grpc_metrics`]).
    pub fn grpc_call(
        &self,
        side: crate::grpc_metrics::Side,
        service: &'static str,
        method: &'static str,
        code: tonic::Code,
        seconds: f64,
    ) {
        let (requests, duration) = match side {
            crate::grpc_metrics::Side::Server => {
                (&self.grpc_server_requests, &self.grpc_server_duration)
            }
            crate::grpc_metrics::Side::Client => {
                (&self.grpc_client_requests, &self.grpc_client_duration)
            }
        };
        requests
            .get_or_create(&[
                ("service", service),
                ("method", method),
                ("code", code_name(code)),
            ])
            .inc();
        duration
            .get_or_create(&[("service", service), ("method", method)])
            .observe(seconds);
    }

    /// Counts a stream refused before it began; `reason` from a closed set.
    pub fn stream_refused(&self, reason: &'static str) {
        self.streams_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Counts a stream that ended with `code` (`Ok` for a clean end).
    pub fn stream_ended(&self, code: tonic::Code) {
        self.streams_ended
            .get_or_create(&[("code", code_name(code))])
            .inc();
    }

    /// A durable consumer's state as NATS reports it.
    pub fn consumer_state(
        &self,
        consumer: &'static str,
        pending: u64,
        ack_pending: u64,
        redelivered: u64,
    ) {
        let label = [("consumer", consumer)];
        let set = |family: &Family<ConsumerLabel, Gauge>, value: u64| {
            family
                .get_or_create(&label)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.consumer_pending, pending);
        set(&self.consumer_ack_pending, ack_pending);
        set(&self.consumer_redelivered, redelivered);
    }

    /// The database pool's connections.
    pub fn db_pool(&self, idle: usize, used: usize) {
        for (state, n) in [("idle", idle), ("used", used)] {
            self.db_pool_connections
                .get_or_create(&[("state", state)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Labels this process's build info with its `role` (once, at start).
    pub fn started_as(&self, role: &'static str) {
        self.build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION")), ("role", role)])
            .set(1);
    }

    /// Shows `consumer`'s retry and dead-letter series at zero from its start (alerts on
    /// `increase()` need the series before the first event).
    pub fn consumer_started(&self, consumer: &'static str) {
        let _ = self
            .consumer_retries
            .get_or_create(&[("consumer", consumer)]);
        let _ = self
            .consumer_dead_letters
            .get_or_create(&[("consumer", consumer)]);
    }

    /// Counts one message `consumer` will get again.
    pub fn consumer_retry(&self, consumer: &'static str) {
        self.consumer_retries
            .get_or_create(&[("consumer", consumer)])
            .inc();
    }

    /// Counts one message `consumer` moved to the dead-letter stream.
    pub fn consumer_dead_letter(&self, consumer: &'static str) {
        self.consumer_dead_letters
            .get_or_create(&[("consumer", consumer)])
            .inc();
    }

    /// Counts one stream as active until the returned guard is dropped, however the
    /// stream ends (including a panic or a dropped future).
    pub fn stream_started(&'static self) -> ActiveStream {
        self.active_streams.inc();
        ActiveStream { metrics: self }
    }

    /// Counts one error with gRPC status `code` in `kiroku_errors_total`.
    pub fn error(&self, code: tonic::Code) {
        self.errors
            .get_or_create(&[("code", code_name(code))])
            .inc();
    }

    /// Records one decode of `audio_seconds` of audio that took `decode_seconds`: both
    /// `kiroku_decode_seconds` and `kiroku_real_time_factor`.
    pub fn decode(&self, decode_seconds: f64, audio_seconds: f64) {
        self.decode_seconds.observe(decode_seconds);
        if audio_seconds > 0.0 {
            self.real_time_factor
                .observe(decode_seconds / audio_seconds);
        }
    }
}

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS_S)
}

/// One stream counted in `kiroku_active_streams`; dropping it uncounts the stream.
#[derive(Debug)]
#[must_use = "the stream is uncounted as soon as this is dropped"]
pub struct ActiveStream {
    metrics: &'static Metrics,
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.metrics.active_streams.dec();
    }
}

/// The status code's name as gRPC libraries print it (`DeadlineExceeded`), a closed set so
/// the label cannot explode.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_nan_when_empty() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 51.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted, 1.0), 100.0);
        assert_eq!(percentile(&sorted, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 0.95), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn every_family_is_rendered_with_help_and_type() {
        // A labelled family has no series, hence no lines, before its first value.
        metrics().error(tonic::Code::Aborted);
        let text = render();
        for (name, kind) in [
            ("kiroku_active_streams", "gauge"),
            ("kiroku_audio_seconds_total", "counter"),
            ("kiroku_real_time_factor", "histogram"),
            ("kiroku_first_interim_latency_seconds", "histogram"),
            ("kiroku_final_latency_seconds", "histogram"),
            ("kiroku_caption_latency_seconds", "histogram"),
            ("kiroku_decode_seconds", "histogram"),
            ("kiroku_decode_queue_seconds", "histogram"),
            ("kiroku_worker_load", "gauge"),
            ("kiroku_worker_stream_lag_seconds", "gauge"),
            ("kiroku_streams_queued_total", "counter"),
            ("kiroku_sessions_backlog", "gauge"),
            ("kiroku_errors_total", "counter"),
            ("kiroku_finals_total", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind} missing from:\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help"
            );
        }
        assert!(
            !text.contains("# EOF"),
            "prometheus 0.0.4 text, not openmetrics"
        );
    }

    #[test]
    fn observations_show_up_in_the_text() {
        // The registry is global and tests run in parallel: assert on what only this
        // test records.
        metrics().error(tonic::Code::DataLoss);
        metrics().decode(0.5, 2.0);
        let text = render();
        assert!(
            text.contains("kiroku_errors_total{code=\"DataLoss\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kiroku_real_time_factor_bucket{le=\"0.3\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn active_stream_guard_counts_while_alive() {
        // Other tests never open streams, so the gauge is this test's alone.
        let before = metrics().active_streams.get();
        let first = metrics().stream_started();
        let second = metrics().stream_started();
        assert_eq!(metrics().active_streams.get(), before + 2);
        drop(first);
        drop(second);
        assert_eq!(metrics().active_streams.get(), before);
    }
}
