#!/usr/bin/env python3
"""Generates deploy/grafana/kiroku.json, the Kiroku Grafana dashboard, from the panel
list below (one source: edit here, not in the JSON).

  gen_dashboard.py           print the dashboard JSON
  gen_dashboard.py --write   write deploy/grafana/kiroku.json
  gen_dashboard.py --check   exit 1 when the committed file differs (check.sh)

Every query uses only metrics Kiroku exports (crates/kiroku-core/src/metrics.rs) or the
external ones listed in tests/chart/used_metrics.py; `role` is the label the chart's
ServiceMonitor sets from the pod's app.kubernetes.io/component.
"""

import json
import sys
from pathlib import Path

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
def ts(title, targets, unit, desc, w=12, h=8, thresholds=None):
    steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for c, v in (thresholds or [])]
    panels.append({"type": "timeseries", "id": pid(), "title": title, "description": desc, "datasource": DS,
        "gridPos": place(w, h),
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False,
            **({"thresholdsStyle": {"mode": "dashed"}} if thresholds else {})},
            "thresholds": {"mode": "absolute", "steps": steps}}, "overrides": []},
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

row("Overview")
stat("Live streams", f'sum(kiroku_active_streams{{{GW}}})', "none", "Streams open on all gateways (kiroku_active_streams, role=gateway).")
stat("Sessions decoding", f'sum(kiroku_active_streams{{{WK}}})', "none", "Sessions running on all workers (kiroku_active_streams, role=worker).")
stat("Live audio", f'sum(rate(kiroku_audio_seconds_total{{{GW}}}[$__rate_interval]))', "none", "Seconds of audio received per second: the number of real-time streams' worth of audio arriving.")
stat("Sessions backlog", f'max(kiroku_sessions_backlog{{{WK}}})', "none", "Session jobs waiting for a free worker slot (SESSIONS, consumer workers). Workers refresh it every 5 s while they have a free slot.", [("orange", 1), ("red", 10)])
stat("Final latency p95", q(0.95, "kiroku_final_latency_seconds", GW), "s", "Word end in the audio to its final at the gateway, p95. Target 2 s.", [("orange", 2), ("red", 5)])
stat("Server errors", f'sum(rate(kiroku_errors_total{{{GW}, {SERVER_ERR}}}[$__rate_interval])) or vector(0)', "reqps", "Streams and requests per second ending in Internal, Unknown, Unavailable or DataLoss.", [("orange", 0.01), ("red", 0.05)])
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
newline()

row("Throughput and errors")
ts("Streams per gateway", [(f'sum by (pod) (kiroku_active_streams{{{GW}}})', "{{pod}}")], "none", "Open streams on each gateway.")
ts("Audio received", [(f'sum by (pod) (rate(kiroku_audio_seconds_total{{{GW}}}[$__rate_interval]))', "{{pod}}")], "none", "Seconds of audio per second, by gateway (after resampling to 16 kHz).")
ts("Finals delivered", [(f'sum by (role) (rate(kiroku_finals_total{{{NS}, role=~"gateway|worker"}}[$__rate_interval]))', "{{role}}")], "none",
   "kiroku_finals_total per second: published by workers, delivered to clients by gateways.")
ts("Errors by status code", [(f'sum by (code) (rate(kiroku_errors_total{{{NS}}}[$__rate_interval]))', "{{code}}")], "reqps",
   "kiroku_errors_total by gRPC status. Client-caused codes (InvalidArgument, Unauthenticated, PermissionDenied, ResourceExhausted, FailedPrecondition, OutOfRange, DeadlineExceeded on idle streams) are expected in small numbers; Internal, Unknown, Unavailable and DataLoss are alerted on.")
newline()

row("Queues (NATS JetStream)")
ts("Sessions backlog", [
    (f'max(kiroku_sessions_backlog{{{WK}}})', "kiroku_sessions_backlog (workers)"),
    ('max by (stream_name) (nats_consumer_num_pending{stream_name=~"(.+_)?SESSIONS", consumer_name="workers"} or jetstream_consumer_num_pending{stream_name=~"(.+_)?SESSIONS", consumer_name="workers"})', "{{stream_name}} pending (NATS)")], "none",
   "Jobs waiting for a worker. The NATS series needs prometheus-nats-exporter -jsz=all (nats_consumer_* with the NATS chart's -prefix=nats, jetstream_consumer_* without); it is what KEDA's nats-jetstream trigger scales on.")
ts("Audit consumer", [
    ('max by (stream_name) (nats_consumer_num_pending{stream_name=~"(.+_)?AUDIT", consumer_name="audit"} or jetstream_consumer_num_pending{stream_name=~"(.+_)?AUDIT", consumer_name="audit"})', "{{stream_name}} pending"),
    ('max by (stream_name) (nats_consumer_num_ack_pending{stream_name=~"(.+_)?AUDIT", consumer_name="audit"} or jetstream_consumer_num_ack_pending{stream_name=~"(.+_)?AUDIT", consumer_name="audit"})', "{{stream_name}} unacknowledged")], "none",
   "Audit events not yet stored by the audit service (consumer audit). Needs prometheus-nats-exporter -jsz=all.")
newline()

row("Services")
ts("Targets up by role", [(f'sum by (role) (up{{{NS}, role=~"gateway|worker|account|audit|storage"}})', "{{role}}")], "none", "Pods Prometheus scrapes successfully, by role.", w=12)
panels.append({"type": "text", "id": pid(), "title": "Per-tenant usage", "gridPos": place(12, 8),
    "options": {"mode": "markdown", "content":
    "No Kiroku metric carries a tenant label, so per-tenant usage (streams, audio seconds, errors) cannot be shown from Prometheus. "
    "Tenant admins see their own activity in the audit log (`kiroku admin audit`); a per-tenant usage view is planned in the audit service."}})

dashboard = {
  "uid": "kiroku-overview",
  "title": "Kiroku",
  "description": "Kiroku streaming transcription: streams, latency, workers, queues, errors. Metrics from every role's /metrics (role label set by the chart's ServiceMonitor).",
  "tags": ["kiroku", "transcription"],
  "timezone": "browser",
  "editable": True,
  "graphTooltip": 1,
  "schemaVersion": 39,
  "version": 1,
  "refresh": "30s",
  "time": {"from": "now-6h", "to": "now"},
  "links": [],
  "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
  "templating": {"list": [
    {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
    {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
     "query": {"query": "label_values(kiroku_active_streams, namespace)", "refId": "namespace"},
     "definition": "label_values(kiroku_active_streams, namespace)",
     "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0, "sort": 1, "regex": "", "options": []}]},
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
