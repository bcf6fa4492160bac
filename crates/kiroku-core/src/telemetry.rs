//! Logging and tracing set-up shared by every binary role.
//!
//! Logs go to stderr (stdout is for command output such as transcripts). The binary reads
//! the [`Settings`] from its environment: the filter from `RUST_LOG` (default `warn` for
//! the CLI, `info` for services), the format from `KIROKU_LOG_FORMAT` (`json` or the
//! default human-readable text). The same filter decides which spans exist at all, so a
//! span below the log level is neither logged nor traced.
//!
//! Every process also tracks OpenTelemetry span context (trace and span ids) for its
//! `tracing` spans and installs the W3C TraceContext propagator, so [`crate::trace`] can
//! carry a trace across gRPC and NATS whether or not spans are exported. Services export
//! spans over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`init_service`]).

use std::fmt;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// The environment variable that turns OTLP span export on (`http://collector:4317`).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How a process logs and traces. The binary fills it from its environment
/// (`RUST_LOG`, `KIROKU_LOG_FORMAT`, [`OTLP_ENDPOINT_ENV`]); this module reads none.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Filter directives in `RUST_LOG` syntax; the caller's default level when `None` or
    /// not valid.
    pub filter: Option<String>,
    /// One JSON object a log line (service, instance, trace ids) instead of text.
    pub json: bool,
    /// Export spans over OTLP/gRPC to this collector (services only; off when `None`).
    pub otlp_endpoint: Option<String>,
}

/// How long dropping a [`TelemetryGuard`] waits for the last spans to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the global subscriber once (logs, span context, no export); later calls are
/// no-ops. For CLI commands; services call [`init_service`].
pub fn init(default_level: &str, settings: &Settings) {
    let settings = Settings {
        otlp_endpoint: None,
        ..settings.clone()
    };
    let (dispatch, _guard, _error) = build("kiroku", default_level, &settings);
    install(dispatch);
}

/// Installs the global subscriber of a service: the logs of [`init`] plus, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, batch export of spans over OTLP/gRPC with
/// resource `service.name = service_name`.
///
/// Keep the guard alive until the process is about to exit: dropping it flushes the spans
/// still buffered. If a subscriber is already installed (tests), the first one stays and
/// this returns a guard that flushes nothing. A bad endpoint is logged and export stays
/// off: telemetry never stops a service from starting.
pub fn init_service(
    service_name: &str,
    default_level: &str,
    settings: &Settings,
) -> TelemetryGuard {
    let endpoint = settings
        .otlp_endpoint
        .clone()
        .filter(|value| !value.trim().is_empty());
    let settings = Settings {
        otlp_endpoint: endpoint.clone(),
        ..settings.clone()
    };
    let (dispatch, guard, error) = build(service_name, default_level, &settings);
    if !install(dispatch) {
        return TelemetryGuard::disabled();
    }
    match (&endpoint, error) {
        (Some(endpoint), None) => {
            tracing::info!(service = service_name, %endpoint, "exporting spans over otlp");
        }
        (Some(endpoint), Some(error)) => {
            tracing::warn!(service = service_name, %endpoint, %error, "otlp export disabled");
        }
        (None, _) => {}
    }
    guard
}

/// Builds, without installing, the dispatcher [`init_service`] would install, exporting
/// to `otlp_endpoint` when given. For tests that run several "services" in one process,
/// each under its own `tracing::dispatcher::with_default`.
pub fn service_subscriber(
    service_name: &str,
    default_level: &str,
    otlp_endpoint: Option<&str>,
) -> (tracing::Dispatch, TelemetryGuard) {
    let settings = Settings {
        otlp_endpoint: otlp_endpoint.map(str::to_string),
        ..Settings::default()
    };
    let (dispatch, guard, error) = build(service_name, default_level, &settings);
    if let Some(error) = error {
        eprintln!("kiroku telemetry: otlp export disabled: {error}");
    }
    (dispatch, guard)
}

/// Flushes and shuts down span export when dropped, so spans are not lost when a service
/// exits normally. Dropping blocks for at most a few seconds (an unreachable collector).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    /// Runs the OTLP client (tonic channel, connections) apart from the service's own
    /// runtime: export works from any thread, and a flush at drop cannot deadlock on a
    /// runtime that the dropping thread itself blocks.
    export_runtime: Option<tokio::runtime::Runtime>,
}

impl TelemetryGuard {
    fn disabled() -> Self {
        Self {
            provider: None,
            export_runtime: None,
        }
    }

    /// Whether spans are being exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("exporting", &self.is_exporting())
            .finish()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            eprintln!("kiroku telemetry: flushing spans failed: {error}");
        }
        // Exports are done; `shutdown_background` neither blocks nor panics when the
        // guard is dropped inside an async context.
        if let Some(runtime) = self.export_runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Sets the global propagator and dispatcher; false when one was already set.
fn install(dispatch: tracing::Dispatch) -> bool {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Already initialised (tests call this more than once): keep the first.
    dispatch.try_init().is_ok()
}

/// The dispatcher: one level filter, stderr logs (text or json, with trace ids), and the
/// OpenTelemetry layer, exporting when `otlp_endpoint` is given. The third value says why
/// export is off although an endpoint was given.
fn build(
    service_name: &str,
    default_level: &str,
    settings: &Settings,
) -> (tracing::Dispatch, TelemetryGuard, Option<String>) {
    let otlp_endpoint = settings.otlp_endpoint.as_deref();
    let cell = crate::logfmt::DispatchCell::default();
    let filter = settings
        .filter
        .as_deref()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default_level));
    let json = settings.json;
    let json_logs = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .map_event_format(|format| {
                crate::logfmt::WithIds::json(format, service_name, cell.clone())
            })
    });
    // Colours only on a terminal: never escape codes in a log file or a collector.
    let text_logs = (!json).then(|| {
        use std::io::IsTerminal as _;
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .map_event_format(|format| {
                crate::logfmt::WithIds::text(format, service_name, cell.clone())
            })
    });

    let (provider, guard, error) = match otlp_endpoint {
        Some(endpoint) => match exporting_provider(service_name, endpoint) {
            Ok((provider, export_runtime)) => {
                let guard = TelemetryGuard {
                    provider: Some(provider.clone()),
                    export_runtime: Some(export_runtime),
                };
                (provider, guard, None)
            }
            Err(error) => (
                local_provider(service_name),
                TelemetryGuard::disabled(),
                Some(error),
            ),
        },
        None => (
            local_provider(service_name),
            TelemetryGuard::disabled(),
            None,
        ),
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("kiroku"))
        .with_filter(export_targets());

    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(json_logs)
        .with(text_logs)
        .with(spans);
    let dispatch = tracing::Dispatch::new(subscriber);
    let _ = cell.set(dispatch.downgrade());
    (dispatch, guard, error)
}

/// Span ids without export: enough for propagation, nothing leaves the process.
fn local_provider(service_name: &str) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_resource(resource(service_name))
        .build()
}

fn exporting_provider(
    service_name: &str,
    endpoint: &str,
) -> Result<(SdkTracerProvider, tokio::runtime::Runtime), String> {
    let export_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|error| format!("starting the export runtime: {error}"))?;
    // The tonic channel spawns its tasks on the runtime entered while it is built.
    let built = {
        let _entered = export_runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
    };
    let exporter = match built {
        Ok(exporter) => exporter,
        Err(error) => {
            // Dropping a runtime blocks, which panics inside an async context.
            export_runtime.shutdown_background();
            return Err(format!("building the otlp exporter: {error}"));
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_resource(resource(service_name))
        .with_batch_exporter(exporter)
        .build();
    Ok((provider, export_runtime))
}

fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attributes([
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            opentelemetry::KeyValue::new("service.instance.id", instance().to_string()),
        ])
        .build()
}

/// This process among its role's replicas: the host (a pod's name on Kubernetes) and
/// the process id, `kiroku-gateway-7d9f/1`.
pub fn instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| {
        // The kernel's host name: a pod's name on Kubernetes.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}/{}", std::process::id())
    })
}

/// The exporter's own transport (h2, hyper, tonic, tower) and the SDK's internal events
/// never become spans: exporting them would feed the exporter with its own work.
fn export_targets() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF)
        .with_target("opentelemetry-otlp", LevelFilter::OFF)
}
