//! A minimal "service" for `tests/otlp_process.rs`: starts telemetry exactly as
//! `kiroku serve` does, records a session span (continuing the `traceparent` in
//! `KIROKU_OTLP_TEST_TRACEPARENT`) with a decode span inside, and exits normally, so the
//! test can check the spans were flushed before exit.

use kiroku_core::{telemetry, trace};

fn main() {
    let parent = std::env::var("KIROKU_OTLP_TEST_TRACEPARENT")
        .expect("KIROKU_OTLP_TEST_TRACEPARENT is set by the test");
    let runtime = tokio::runtime::Runtime::new().expect("start the runtime");
    runtime.block_on(async move {
        // The endpoint from the environment, as `kiroku serve` reads it.
        let settings = telemetry::Settings {
            otlp_endpoint: std::env::var(telemetry::OTLP_ENDPOINT_ENV).ok(),
            ..telemetry::Settings::default()
        };
        let telemetry = telemetry::init_service("kiroku-test-worker", "info", &settings);
        assert!(
            telemetry.is_exporting(),
            "OTEL_EXPORTER_OTLP_ENDPOINT turns export on"
        );
        let session = tracing::info_span!("session");
        trace::set_parent(&session, trace::context_from_traceparent(&parent));
        let decode = tracing::Instrument::instrument(
            async {
                let decode = tracing::info_span!("decode");
                let _entered = decode.enter();
                tracing::info!("decoding");
            },
            session,
        );
        decode.await;
        // The guard drops here, inside the async context, as in `kiroku serve`.
    });
}
