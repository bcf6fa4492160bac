//! `telemetry::init_service` in a real process, as `kiroku serve` runs it: export is on
//! because `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the trace continues the `traceparent`
//! the process was given, and every span has reached the collector by the time the
//! process exits normally.

use std::time::Duration;

use kiroku_tests::otlp::OtlpCollector;

const CHILD_ENV: &str = "KIROKU_OTLP_TEST_TRACEPARENT";
const PARENT_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_process_exports_its_spans_before_it_exits() {
    let collector = OtlpCollector::start().await.expect("start the collector");
    // The service is src/bin/otlp-service.rs.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_otlp-service"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
        .env(CHILD_ENV, PARENT_TRACEPARENT)
        .env("RUST_LOG", "info")
        .output()
        .await
        .expect("run the service process");
    assert!(
        output.status.success(),
        "service process failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // No waiting: the batch exporter's delay is 5 s, so only the flush at exit delivers
    // the spans this early.
    let spans = collector.spans();
    let session = spans
        .iter()
        .find(|span| span.name == "session")
        .unwrap_or_else(|| panic!("no session span in {spans:#?}"));
    let decode = spans
        .iter()
        .find(|span| span.name == "decode")
        .unwrap_or_else(|| panic!("no decode span in {spans:#?}"));
    assert_eq!(session.service_name, "kiroku-test-worker");
    assert_eq!(session.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(session.parent_span_id, "b7ad6b7169203331");
    assert_eq!(decode.trace_id, session.trace_id);
    assert_eq!(decode.parent_span_id, session.span_id);

    // Nothing else turns up later (the exporter's own transport is never traced).
    let later = collector
        .wait_for(|spans| spans.len() > 2, Duration::from_millis(500))
        .await;
    assert_eq!(later.len(), 2, "{later:#?}");
}
