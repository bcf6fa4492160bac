//! Log lines that name their trace: each event carries the `trace_id` and `span_id` of
//! the span it happened in (when that span belongs to a trace), and JSON lines also the
//! `service` and `instance`, so a log line leads to its trace and to the process that
//! wrote it. Wraps tracing-subscriber's own text and JSON formats.

use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The dispatcher the format's subscriber is installed as, filled once it exists. The
/// trace ids are read through it: inside an event, `tracing::dispatcher::get_default`
/// answers "none" (the dispatcher is busy with the event).
pub(crate) type DispatchCell =
    std::sync::Arc<std::sync::OnceLock<tracing::dispatcher::WeakDispatch>>;

/// An event format with trace ids (and, in JSON, the service and instance) added.
pub(crate) struct WithIds<F> {
    inner: F,
    json: bool,
    service: String,
    dispatch: DispatchCell,
}

impl<F> WithIds<F> {
    pub(crate) fn json(inner: F, service: &str, dispatch: DispatchCell) -> Self {
        Self {
            inner,
            json: true,
            service: service.to_string(),
            dispatch,
        }
    }

    pub(crate) fn text(inner: F, service: &str, dispatch: DispatchCell) -> Self {
        Self {
            inner,
            json: false,
            service: service.to_string(),
            dispatch,
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let dispatch = self.dispatch.get().and_then(|weak| weak.upgrade());
        let ids = ctx
            .lookup_current()
            .zip(dispatch)
            .and_then(|(span, dispatch)| {
                let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
                let span_context = cx.span().span_context().clone();
                span_context.is_valid().then(|| {
                    (
                        span_context.trace_id().to_string(),
                        span_context.span_id().to_string(),
                    )
                })
            });
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        if self.json {
            writer.write_str(&with_json_fields(
                &line,
                &self.service,
                crate::telemetry::instance(),
                ids.as_ref(),
            ))
        } else {
            // The inner format ends the line; the ids go before the newline.
            let body = line.strip_suffix('\n').unwrap_or(&line);
            writer.write_str(body)?;
            if let Some((trace_id, span_id)) = &ids {
                write!(writer, " trace_id={trace_id} span_id={span_id}")?;
            }
            writer.write_char('\n')
        }
    }
}

/// `line` (one JSON object and a newline) with `service`, `instance` and the ids added;
/// unchanged when it is not a JSON object.
fn with_json_fields(
    line: &str,
    service: &str,
    instance: &str,
    ids: Option<&(String, String)>,
) -> String {
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(line.trim_end()) else {
        return line.to_string();
    };
    object.insert("service".into(), service.into());
    object.insert("instance".into(), instance.into());
    if let Some((trace_id, span_id)) = ids {
        object.insert("trace_id".into(), trace_id.as_str().into());
        object.insert("span_id".into(), span_id.as_str().into());
    }
    let mut out = serde_json::Value::Object(object).to_string();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_gain_service_instance_and_ids() {
        let line = "{\"level\":\"INFO\",\"fields\":{\"message\":\"hi\"}}\n";
        let ids = (
            "0af7651916cd43dd8448eb211c80319c".to_string(),
            "b7ad6b7169203331".to_string(),
        );
        let out = with_json_fields(line, "kiroku-gateway", "host/1", Some(&ids));
        let value: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(value["service"], "kiroku-gateway");
        assert_eq!(value["instance"], "host/1");
        assert_eq!(value["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(value["span_id"], "b7ad6b7169203331");
        assert_eq!(value["fields"]["message"], "hi");
        assert!(out.ends_with('\n'));
        assert_eq!(with_json_fields("not json\n", "s", "i", None), "not json\n");
    }

    /// A whole subscriber as a service installs it: an event in a span of a trace is
    /// logged with that trace's id, in both formats, without colour escapes.
    #[test]
    fn events_in_a_span_carry_its_trace_id() {
        use tracing_subscriber::layer::SubscriberExt as _;
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                if let Ok(mut buffer) = self.0.lock() {
                    buffer.extend_from_slice(bytes);
                }
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        for json in [false, true] {
            let cell = DispatchCell::default();
            let buffer = Buffer::default();
            let writer = {
                let buffer = buffer.clone();
                move || buffer.clone()
            };
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
            let otel = tracing_opentelemetry::layer()
                .with_tracer(opentelemetry::trace::TracerProvider::tracer(&provider, "t"));
            let text = (!json).then(|| {
                tracing_subscriber::fmt::layer()
                    .with_writer(writer.clone())
                    .with_ansi(false)
                    .map_event_format(|f| WithIds::text(f, "kiroku-test", cell.clone()))
            });
            let structured = json.then(|| {
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(writer.clone())
                    .map_event_format(|f| WithIds::json(f, "kiroku-test", cell.clone()))
            });
            let subscriber = tracing_subscriber::registry()
                .with(otel)
                .with(text)
                .with(structured);
            let dispatch = tracing::Dispatch::new(subscriber);
            let _ = cell.set(dispatch.downgrade());
            let trace_id = tracing::dispatcher::with_default(&dispatch, || {
                let span = tracing::info_span!("work");
                let _entered = span.enter();
                tracing::info!("inside");
                crate::trace::trace_id(&span).expect("a trace")
            });
            let logged = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf-8");
            assert!(logged.contains(&trace_id), "{logged}");
            assert!(!logged.contains('\u{1b}'), "colour escapes: {logged}");
            if json {
                let value: serde_json::Value =
                    serde_json::from_str(logged.trim()).expect("one json line");
                assert_eq!(value["trace_id"], trace_id.as_str());
                assert_eq!(value["service"], "kiroku-test");
            } else {
                assert!(logged.contains(&format!("trace_id={trace_id}")), "{logged}");
            }
        }
    }
}
