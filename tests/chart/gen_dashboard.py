#!/usr/bin/env python3
"""Generates deploy/grafana/kiroku.json, the Kiroku Grafana dashboard, from the panel
list below (one source: edit here, not in the JSON).

  gen_dashboard.py           print the dashboard JSON
  gen_dashboard.py --write   write deploy/grafana/kiroku.json
  gen_dashboard.py --check   exit 1 when the committed file differs (check.sh)

Every query uses only metrics Kiroku exports (crates/kiroku-core/src/metrics.rs) or the
external ones listed in tests/chart/used_metrics.py; `role` is the label the chart's
ServiceMonitor sets from the pod's app.kubernetes.io/component. Queries read raw series,
not the recording rules of deploy/prometheus/rules.yaml, so the dashboard works on a
Prometheus without them.

Traces: the `tracing` variable picks a Tempo data source; the dashboard link "Trace"
opens the trace whose id is typed into the `trace_id` box (audit events and logs carry
it) in Explore, and the error-ratio panels link to the errored traces of their time range.
"""

import json
import sys
from pathlib import Path
from urllib.parse import quote

TARGET = Path(__file__).resolve().parents[2] / "deploy/grafana/kiroku.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'
panels = []
next_id = [1]
y = [0]
def pid():
    i = next_id[0]; next_id[0] += 1; return i
def row(title):
    panels.append({"type": "row", "id": pid(), "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "panels": []})
    y[0] += 1
x = [0]
def place(w, h):
    if x[0] + w > 24:
        x[0] = 0; y[0] += place.h
    pos = {"h": h, "w": w, "x": x[0], "y": y[0]}
    x[0] += w; place.h = h
    return pos
place.h = 0
def newline():
    if x[0]:
        y[0] += place.h; x[0] = 0
def target(expr, legend, ref, **kw):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}
    t.update(kw); return t
def stat(title, expr, unit, desc, thresholds=None, w=4):
    steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for c, v in (thresholds or [])]
    panels.append({"type": "stat", "id": pid(), "title": title, "description": desc, "datasource": DS,
        "gridPos": place(w, 4),
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}, "color": {"mode": "thresholds"}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto", "textMode": "auto"},
        "targets": [target(expr, title, "A", instant=False)]})
def ts(title, targets, unit, desc, w=12, h=8, thresholds=None, links=None):
    steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for c, v in (thresholds or [])]
    panels.append({"type": "timeseries", "id": pid(), "title": title, "description": desc, "datasource": DS,
        "gridPos": place(w, h),
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False,
            **({"thresholdsStyle": {"mode": "dashed"}} if thresholds else {})},
            "thresholds": {"mode": "absolute", "steps": steps}, **({"links": links} if links else {})}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]}, "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [target(e, l, chr(65 + i)) for i, (e, l) in enumerate(targets)]})
def heatmap(title, expr, desc, unit, w=12, h=8):
    panels.append({"type": "heatmap", "id": pid(), "title": title, "description": desc, "datasource": DS,
        "gridPos": place(w, h),
        "options": {"calculate": False, "yAxis": {"unit": unit}, "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64}, "tooltip": {"show": True, "yHistogram": True}, "legend": {"show": True}},
        "fieldConfig": {"defaults": {}, "overrides": []},
        "targets": [target(expr, "{{le}}", "A", format="heatmap")]})
def q(quant, metric, sel, by=""):
    by_ = f"{by}, le" if by else "le"
    return f'histogram_quantile({quant}, sum by ({by_}) (rate({metric}_bucket{{{sel}}}[$__rate_interval])))'
GW = f'{NS}, role="gateway"'
WK = f'{NS}, role="worker"'
SERVER_ERR = 'code=~"Internal|Unknown|Unavailable|DataLoss"'
# The stream SLO's server-side codes (deploy/prometheus/rules.yaml, kiroku.sli).
STREAM_ERR = 'code=~"Internal|Unavailable|DataLoss|Unknown|DeadlineExceeded"'
SVC = f'{NS}, service=~"$service"'
# Streaming RPCs: their duration is the stream's length, not a latency.
STREAMING = 'method!~"StreamTranscribe|ExportEventsStream|ExportTenant|ImportTenant"'

def explore(query, time_from, time_to):
    """A Grafana Explore URL running TraceQL `query` on the `tracing` data source."""
    pane = {"trace": {"datasource": "TRACING", "queries": [{"refId": "A", "datasource": {"type": "tempo", "uid": "TRACING"},
        "queryType": "traceql", "query": query}], "range": {"from": time_from, "to": time_to}}}
    url = "/explore?schemaVersion=1&panes=" + quote(json.dumps(pane, separators=(",", ":")), safe="")
    return url.replace("TRACING", "${tracing}").replace("TRACE_ID", "${trace_id}").replace("FROM", "${__from}").replace("TO_", "${__to}")
ERRORED_TRACES = [{"title": "Errored traces in this time range", "targetBlank": True,
                   "url": explore("{ status = error }", "FROM", "TO_")}]

row("Overview")
stat("Live streams", f'sum(kiroku_active_streams{{{GW}}})', "none", "Streams open on all gateways (kiroku_active_streams, role=gateway).")
stat("Sessions decoding", f'sum(kiroku_active_streams{{{WK}}})', "none", "Sessions running on all workers (kiroku_active_streams, role=worker).")
stat("Live audio", f'sum(rate(kiroku_audio_seconds_total{{{GW}}}[$__rate_interval]))', "none", "Seconds of audio received per second: the number of real-time streams' worth of audio arriving.")
stat("Sessions backlog", f'max(kiroku_sessions_backlog{{{NS}}})', "none", "Session jobs waiting for a free worker slot (SESSIONS, consumer workers), read from NATS.", [("orange", 1), ("red", 10)])
stat("Final latency p95", q(0.95, "kiroku_final_latency_seconds", GW), "s", "Word end in the audio to its final at the gateway, p95. Target 2 s.", [("orange", 2), ("red", 5)])
stat("Stream errors (1 h)", f'(sum(rate(kiroku_streams_ended_total{{{NS}, {STREAM_ERR}}}[1h])) or vector(0)) / sum(rate(kiroku_streams_ended_total{{{NS}}}[1h]))', "percentunit",
     "Share of the streams ended in the last hour that ended in a server-side error (Internal, Unavailable, DataLoss, Unknown, DeadlineExceeded). SLO: at most 0.5 %; 7.2 % over an hour pages (burn rate 14.4).", [("orange", 0.005), ("red", 0.072)])
newline()

row("SLOs")
ts("Stream error ratio", [
    (f'(sum(rate(kiroku_streams_ended_total{{{NS}, {STREAM_ERR}}}[5m])) or vector(0)) / sum(rate(kiroku_streams_ended_total{{{NS}}}[5m]))', "5 min"),
    (f'(sum(rate(kiroku_streams_ended_total{{{NS}, {STREAM_ERR}}}[1h])) or vector(0)) / sum(rate(kiroku_streams_ended_total{{{NS}}}[1h]))', "1 h"),
    (f'(sum(rate(kiroku_streams_ended_total{{{NS}, {STREAM_ERR}}}[6h])) or vector(0)) / sum(rate(kiroku_streams_ended_total{{{NS}}}[6h]))', "6 h")], "percentunit",
   "kiroku_streams_ended_total: share of ended streams whose gRPC status is server-side. SLO 99.5 % without one (dashed: 0.5 %). KirokuStreamErrorBudgetBurn pages at 14.4x the budget over 1 h and 5 min, or 6x over 6 h and 30 min.",
   w=8, thresholds=[("red", 0.005)], links=ERRORED_TRACES)
ts("Captions later than 2 s", [
    (f'1 - sum(rate(kiroku_caption_latency_seconds_bucket{{{NS}, le="2.0"}}[5m])) / sum(rate(kiroku_caption_latency_seconds_count{{{NS}}}[5m]))', "5 min"),
    (f'1 - sum(rate(kiroku_caption_latency_seconds_bucket{{{NS}, le="2.0"}}[1h])) / sum(rate(kiroku_caption_latency_seconds_count{{{NS}}}[1h]))', "1 h"),
    (f'1 - sum(rate(kiroku_caption_latency_seconds_bucket{{{NS}, le="2.0"}}[6h])) / sum(rate(kiroku_caption_latency_seconds_count{{{NS}}}[6h]))', "6 h")], "percentunit",
   "kiroku_caption_latency_seconds: share of captions shown more than 2 s after the end of their word. SLO: 99 % within 2 s (dashed: 1 %). KirokuCaptionLatencyBudgetBurn pages at 14.4x or 6x the budget.",
   w=8, thresholds=[("red", 0.01)])
ts("Streams", [
    (f'sum(rate(kiroku_streams_started_total{{{NS}}}[$__rate_interval]))', "started"),
    (f'sum by (reason) (rate(kiroku_streams_refused_total{{{NS}}}[$__rate_interval]))', "refused: {{reason}}"),
    (f'sum by (code) (rate(kiroku_streams_ended_total{{{NS}}}[$__rate_interval]))', "ended: {{code}}")], "reqps",
   "Streams started, refused before starting (by reason) and ended (by gRPC status; Ok is a clean end), per second.", w=8)
newline()

row("Latency")
ts("Final latency (word end to final at the gateway)", [
    (q(0.5, "kiroku_final_latency_seconds", GW), "p50"),
    (q(0.95, "kiroku_final_latency_seconds", GW), "p95"),
    (q(0.99, "kiroku_final_latency_seconds", GW), "p99")], "s",
   "kiroku_final_latency_seconds: per word, the time from its audio arriving at the gateway to its final. Dashed line: 2 s p95 target.", thresholds=[("red", 2)])
ts("First interim latency", [
    (q(0.5, "kiroku_first_interim_latency_seconds", GW), "p50"),
    (q(0.95, "kiroku_first_interim_latency_seconds", GW), "p95")], "s",
   "kiroku_first_interim_latency_seconds: from a stream's first audio frame to its first interim caption.")
heatmap("Final latency distribution", f'sum by (le) (increase(kiroku_final_latency_seconds_bucket{{{GW}}}[$__rate_interval]))', "Buckets of kiroku_final_latency_seconds.", "s")
ts("Final latency p95 by gateway", [(q(0.95, "kiroku_final_latency_seconds", GW, "pod"), "{{pod}}")], "s", "One gateway much slower than the others points at that gateway (or its node), not the workers.")
newline()

row("Workers")
ts("Real-time factor", [
    (q(0.5, "kiroku_real_time_factor", WK), "p50"),
    (q(0.95, "kiroku_real_time_factor", WK), "p95")], "none",
   "kiroku_real_time_factor: decode time / audio decoded, per decode. Above 1 a worker cannot keep up with live audio.", thresholds=[("red", 1)])
ts("Decode time p95 by worker", [(q(0.95, "kiroku_decode_seconds", WK, "pod"), "{{pod}}")], "s",
   "kiroku_decode_seconds: wall time of one engine decode. A decode's time is added to the latency of the words it finalizes.", thresholds=[("red", 1.5)])
ts("Sessions per worker", [(f'sum by (pod) (kiroku_active_streams{{{WK}}})', "{{pod}}")], "none", "Sessions each worker runs (bounded by KIROKU_WORKER_SESSIONS).")
heatmap("Real-time factor distribution", f'sum by (le) (increase(kiroku_real_time_factor_bucket{{{WK}}}[$__rate_interval]))', "Buckets of kiroku_real_time_factor.", "none")
ts("Worker load", [(f'max by (pod) (kiroku_worker_load{{{WK}}})', "{{pod}}")], "percentunit",
   "kiroku_worker_load: the share of each worker's inference threads busy over the last 5 s. Near 100 % the worker has no room left: decodes queue (next panel) and captions fall behind.", thresholds=[("red", 0.9)])
ts("Decode queue wait p95 by worker", [(q(0.95, "kiroku_decode_queue_seconds", WK, "pod"), "{{pod}}")], "s",
   "kiroku_decode_queue_seconds: how long a decode waited for a free decoding slot (included in the decode time). Growing waits mean more streams than the worker can keep real-time.", thresholds=[("red", 0.5)])
ts("Stream lag by worker", [(f'max by (pod) (kiroku_worker_stream_lag_seconds{{{WK}}})', "{{pod}}")], "s",
   "kiroku_worker_stream_lag_seconds: caption lag of each worker's most behind live stream, the peak of the last 10 s (how long the words a caption or final showed had been on the worker as audio). Above the worker's --admit-max-lag-s (default 1.5 s) it takes no new session.", thresholds=[("red", 2)])
ts("Queued streams", [(f'sum(rate(kiroku_streams_queued_total{{{GW}}}[$__rate_interval]))', "told queued"),
    (f'sum(rate(kiroku_streams_ended_total{{{GW}, code="ResourceExhausted"}}[$__rate_interval]))', "ended ResourceExhausted")], "reqps",
   "Live streams that waited for a worker long enough to be told they are queued, and streams ended with ResourceExhausted (refused after the queue timeout, or a quota). Any queueing means every worker was at capacity: add workers.")
newline()

row("Throughput and errors")
ts("Streams per gateway", [(f'sum by (pod) (kiroku_active_streams{{{GW}}})', "{{pod}}")], "none", "Open streams on each gateway.")
ts("Audio received", [(f'sum by (pod) (rate(kiroku_audio_seconds_total{{{GW}}}[$__rate_interval]))', "{{pod}}")], "none", "Seconds of audio per second, by gateway (after resampling to 16 kHz).")
ts("Finals delivered", [(f'sum by (role) (rate(kiroku_finals_total{{{NS}, role=~"gateway|worker"}}[$__rate_interval]))', "{{role}}")], "none",
   "kiroku_finals_total per second: published by workers, delivered to clients by gateways.")
ts("Errors by status code", [(f'sum by (code) (rate(kiroku_errors_total{{{NS}}}[$__rate_interval]))', "{{code}}")], "reqps",
   "kiroku_errors_total by gRPC status. Client-caused codes (InvalidArgument, Unauthenticated, PermissionDenied, ResourceExhausted, FailedPrecondition, OutOfRange, DeadlineExceeded on idle streams) are expected in small numbers; Internal, Unknown, Unavailable and DataLoss are alerted on.")
newline()

row("gRPC services (requests, errors, duration)")
ts("Requests by service", [(f'sum by (service) (rate(kiroku_grpc_server_requests_total{{{SVC}}}[$__rate_interval]))', "{{service}}")], "reqps",
   "kiroku_grpc_server_requests_total: requests each gRPC service answered per second, on every role (a request the gateway forwards counts at the gateway and at the service behind it).", w=8)
ts("Server-side error ratio by service", [(f'sum by (service) (rate(kiroku_grpc_server_requests_total{{{SVC}, {SERVER_ERR}}}[$__rate_interval])) / sum by (service) (rate(kiroku_grpc_server_requests_total{{{SVC}}}[$__rate_interval]))', "{{service}}")], "percentunit",
   "Share of requests answered Internal, Unknown, Unavailable or DataLoss. KirokuErrorRateHigh fires above 5 % (StreamTranscribe left out: streams have their SLO). Click a point for the errored traces of the time range.",
   w=8, thresholds=[("red", 0.05)], links=ERRORED_TRACES)
ts("Duration p95 by method", [(q(0.95, "kiroku_grpc_server_request_duration_seconds", f'{SVC}, {STREAMING}', "service, method"), "{{service}}/{{method}}")], "s",
   "kiroku_grpc_server_request_duration_seconds: p95 time to answer, per method (streaming methods left out: their duration is the stream's).", w=8)
ts("Outgoing calls: error ratio by service", [(f'sum by (service) (rate(kiroku_grpc_client_requests_total{{{SVC}, {SERVER_ERR}}}[$__rate_interval])) / sum by (service) (rate(kiroku_grpc_client_requests_total{{{SVC}}}[$__rate_interval]))', "{{service}}")], "percentunit",
   "kiroku_grpc_client_requests_total: share of the calls Kiroku services make to each other (gateway to account, storage, audit; services to account) that came back with a server-side status, as the caller saw it (Unavailable here and not on the server side: the network or the callee's pods).",
   links=ERRORED_TRACES)
ts("Outgoing calls: duration p95 by method", [(q(0.95, "kiroku_grpc_client_request_duration_seconds", f'{SVC}, {STREAMING}', "service, method"), "{{service}}/{{method}}")], "s",
   "kiroku_grpc_client_request_duration_seconds: p95 of the calls as the caller waited for them, network included.")
newline()

row("Queues (NATS JetStream)")
ts("Sessions backlog", [
    (f'max(kiroku_sessions_backlog{{{NS}}})', "kiroku_sessions_backlog"),
    ('max by (stream_name) (nats_consumer_num_pending{stream_name=~"(.+_)?SESSIONS", consumer_name="workers"} or jetstream_consumer_num_pending{stream_name=~"(.+_)?SESSIONS", consumer_name="workers"})', "{{stream_name}} pending (NATS)")], "none",
   "Jobs waiting for a worker. The NATS series needs prometheus-nats-exporter -jsz=all (nats_consumer_* with the NATS chart's -prefix=nats, jetstream_consumer_* without); it is what KEDA's nats-jetstream trigger scales on.")
ts("Durable consumers (audit, storage)", [
    (f'max by (consumer) (kiroku_consumer_pending{{{NS}}})', "{{consumer}} pending"),
    (f'max by (consumer) (kiroku_consumer_ack_pending{{{NS}}})', "{{consumer}} unacknowledged"),
    (f'max by (consumer) (kiroku_consumer_redelivered{{{NS}}})', "{{consumer}} redelivered")], "none",
   "Messages not yet delivered, delivered and not acknowledged, and redelivered and not acknowledged, as the consumer's service reads them from NATS. Redelivered above 0 for long: KirokuConsumerStuck / KirokuAuditConsumerLagging.")
ts("Consumer retries and dead letters", [
    (f'sum by (consumer) (rate(kiroku_consumer_retries_total{{{NS}}}[$__rate_interval]))', "{{consumer}} retries"),
    (f'sum by (consumer) (increase(kiroku_consumer_dead_letters_total{{{NS}}}[$__rate_interval]))', "{{consumer}} dead letters")], "none",
   "Messages a consumer could not store and asked to get again (per second), and messages it set aside in DEADLETTER (per interval).")
ts("Audio transit p99", [
    (q(0.99, "kiroku_audio_publish_seconds", GW), "gateway publish -> stored"),
    (q(0.99, "kiroku_audio_delivery_seconds", WK), "stored -> worker")], "s",
   "kiroku_audio_publish_seconds: an audio frame handed to JetStream until stored (a stream's frames go one after the other, so a slow store holds up the frames behind it). kiroku_audio_delivery_seconds: stored until the worker has it (NATS server clock against the worker's). Normally a few ms each; both add to every caption's latency.")
newline()

row("Dependencies and processes")
ts("NATS connection", [(f'min by (role) (kiroku_nats_connected{{{NS}}})', "{{role}}")], "none",
   "kiroku_nats_connected: 1 while every pod of the role holds its NATS connection (min over the role's pods).", w=8)
ts("Database pool", [(f'sum by (role, state) (kiroku_db_pool_connections{{{NS}}})', "{{role}} {{state}}")], "none",
   "kiroku_db_pool_connections: PostgreSQL connections idle and in use, per role. All in use and requests slow: the pool is too small or queries hang.", w=8)
ts("Database errors", [(f'sum by (role) (rate(kiroku_db_errors_total{{{NS}}}[$__rate_interval]))', "{{role}}")], "reqps",
   "kiroku_db_errors_total: queries that failed, per second.", w=8)
ts("CPU by pod", [(f'sum by (pod) (rate(process_cpu_seconds_total{{{NS}, role=~"gateway|worker|account|audit|storage"}}[$__rate_interval]))', "{{pod}}")], "none",
   "process_cpu_seconds_total: CPU cores each Kiroku process uses.", w=8)
ts("Resident memory by pod", [(f'sum by (pod) (process_resident_memory_bytes{{{NS}, role=~"gateway|worker|account|audit|storage"}})', "{{pod}}")], "bytes",
   "process_resident_memory_bytes of each Kiroku process.", w=8)
ts("Open file descriptors and restarts", [
    (f'sum by (pod) (process_open_fds{{{NS}, role=~"gateway|worker|account|audit|storage"}})', "{{pod}} fds"),
    (f'sum by (pod) (changes(process_start_time_seconds{{{NS}, role=~"gateway|worker|account|audit|storage"}}[1h]))', "{{pod}} restarts (1 h)")], "none",
   "process_open_fds (sockets included: streams, NATS, PostgreSQL) and process restarts in the last hour (changes of process_start_time_seconds).", w=8)
newline()

row("Services")
ts("Targets up by role", [(f'sum by (role) (up{{{NS}, role=~"gateway|worker|account|audit|storage"}})', "{{role}}")], "none", "Pods Prometheus scrapes successfully, by role.", w=8)
ts("Versions running", [(f'count by (version) (kiroku_build_info{{{NS}}})', "{{version}}")], "none",
   "kiroku_build_info: Kiroku processes per version; two lines during a rollout, one otherwise.", w=8)
panels.append({"type": "text", "id": pid(), "title": "Per-tenant usage", "gridPos": place(8, 8),
    "options": {"mode": "markdown", "content":
    "No Kiroku metric carries a tenant label, so per-tenant usage (streams, audio seconds, errors) cannot be shown from Prometheus. "
    "Tenant admins see their own activity in the audit log (`kiroku admin audit`); a per-tenant usage view is planned in the audit service."}})

dashboard = {
  "uid": "kiroku-overview",
  "title": "Kiroku",
  "description": "Kiroku streaming transcription: SLOs, streams, latency, workers, gRPC services, queues, dependencies. Metrics from every role's /metrics (role label set by the chart's ServiceMonitor); traces from the Tempo data source chosen in Traces.",
  "tags": ["kiroku", "transcription"],
  "timezone": "browser",
  "editable": True,
  "graphTooltip": 1,
  "schemaVersion": 39,
  "version": 1,
  "refresh": "30s",
  "time": {"from": "now-6h", "to": "now"},
  "links": [{"title": "Trace ${trace_id}", "type": "link", "icon": "external link", "targetBlank": True,
             "tooltip": "Open the trace whose id is in the Trace ID box (audit events and logs carry trace_id) in Explore",
             "url": explore("TRACE_ID", "now-7d", "now"), "asDropdown": False, "includeVars": False, "keepTime": False, "tags": []}],
  "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
  "templating": {"list": [
    {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
    {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
     "query": {"query": "label_values(kiroku_active_streams, namespace)", "refId": "namespace"},
     "definition": "label_values(kiroku_active_streams, namespace)",
     "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0, "sort": 1, "regex": "", "options": []},
    {"name": "service", "label": "gRPC service", "type": "query", "datasource": DS,
     "query": {"query": 'label_values(kiroku_grpc_server_requests_total{namespace=~"$namespace"}, service)', "refId": "service"},
     "definition": 'label_values(kiroku_grpc_server_requests_total{namespace=~"$namespace"}, service)',
     "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0, "sort": 1, "regex": "", "options": []},
    {"name": "tracing", "label": "Traces", "type": "datasource", "query": "tempo", "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
    {"name": "trace_id", "label": "Trace ID", "type": "textbox", "query": "", "current": {"text": "", "value": ""}, "hide": 0, "options": []}]},
  "panels": panels,
}

def main(argv):
    text = json.dumps(dashboard, indent=2) + "\n"
    if "--write" in argv:
        TARGET.write_text(text)
    elif "--check" in argv:
        if TARGET.read_text() != text:
            print(f"{TARGET.relative_to(TARGET.parents[2])} is stale: run tests/chart/gen_dashboard.py --write")
            return 1
        print("dashboard: up to date")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
