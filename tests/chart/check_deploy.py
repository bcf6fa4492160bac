#!/usr/bin/env python3
"""Consistency checks of the observability bundle and the chart against the code.

  check_deploy.py RENDERED_WITH_PROMETHEUSRULE.yaml

- deploy/prometheus/rules.yaml is byte-identical to helm/kiroku/files/prometheus-rules.yaml,
  and the rendered PrometheusRule carries exactly those groups;
- every alert: a unique group, a parseable PromQL expression, `for`, severity warning or
  critical, summary, description, runbook_url ending in docs/runbooks/<alert>.md, and that
  runbook exists (and no runbook without an alert); every recording rule: a
  level:kiroku_metric:operation name recorded once, a parseable expression, no `for`,
  labels or annotations, and a use in some alert;
- the Grafana dashboard: unique panel ids, a grid position each, the datasource
  variable on every query, parseable PromQL;
- every metric used by dashboards, alerts and autoscalers is exported by Kiroku or a
  listed external exporter (used_metrics.py);
- the OpenTelemetry Collector config references only components it defines;
- the NATS examples and the chart's nats values agree on file storage, 3 replicas and
  sync_interval: always;
- values the code also knows agree with it: default ports, the model package pin and the
  files `kiroku model fetch` writes, the Dockerfile's exposed ports.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import promql_parser
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import used_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RULES_SOURCE = ROOT / "helm/kiroku/files/prometheus-rules.yaml"
RULES_COPY = ROOT / "deploy/prometheus/rules.yaml"
RUNBOOKS = ROOT / "docs/runbooks"

problems: list[str] = []


def fail(message: str) -> None:
    problems.append(message)


def parse_promql(expr: str, where: str) -> None:
    try:
        promql_parser.parse(re.sub(r"\$__(rate_interval|interval|range)", "5m", re.sub(r"\$\{?namespace\}?", ".*", expr)))
    except Exception as error:  # the parser raises plain ValueError/RuntimeError
        fail(f"{where}: PromQL does not parse: {error}")


RECORD_NAME = re.compile(r"[a-z_]+:kiroku_[a-z0-9_]+:[a-z0-9_]+")


def check_rules(rendered: Path) -> tuple[int, int]:
    if RULES_SOURCE.read_bytes() != RULES_COPY.read_bytes():
        fail(f"{RULES_COPY.relative_to(ROOT)} differs from {RULES_SOURCE.relative_to(ROOT)}: cp {RULES_SOURCE.relative_to(ROOT)} {RULES_COPY.relative_to(ROOT)}")
    source = yaml.safe_load(RULES_SOURCE.read_text())
    alerts: set[str] = set()
    groups = [g["name"] for g in source["groups"]]
    if len(groups) != len(set(groups)):
        fail("rules: duplicate group names")
    count = 0
    records: dict[str, str] = {}
    alert_exprs: list[str] = []
    for group in source["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                name = rule["record"]
                where = f"rules {group['name']}/{name}"
                if not RECORD_NAME.fullmatch(str(name)):
                    fail(f"{where}: recording rules are named <labels>:kiroku_<metric>:<operation>")
                if name in records:
                    fail(f"{where}: recorded twice (also in {records[name]})")
                records[name] = group["name"]
                parse_promql(rule.get("expr", ""), where)
                for key in ("for", "annotations", "labels", "alert"):
                    if key in rule:
                        fail(f"{where}: a recording rule has no `{key}`")
                continue
            count += 1
            alert_exprs.append(rule.get("expr", ""))
            name = rule.get("alert")
            where = f"rules {group['name']}/{name}"
            if not name or not re.fullmatch(r"Kiroku[A-Z][A-Za-z]+", name):
                fail(f"{where}: alerts are named Kiroku<Something>")
                continue
            alerts.add(name)
            parse_promql(rule.get("expr", ""), where)
            if not re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))):
                fail(f"{where}: `for` missing (alerts must not fire on one bad scrape)")
            if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                fail(f"{where}: severity must be warning or critical")
            notes = rule.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                if not notes.get(key):
                    fail(f"{where}: annotation {key} missing")
            if not str(notes.get("runbook_url", "")).endswith(f"/docs/runbooks/{name}.md"):
                fail(f"{where}: runbook_url must point at docs/runbooks/{name}.md")
            if not (RUNBOOKS / f"{name}.md").is_file():
                fail(f"{where}: docs/runbooks/{name}.md is missing")
    used_by_alerts: set[str] = set()
    for expr in alert_exprs:
        try:
            used_by_alerts |= used_metrics.promql_metric_names(expr)
        except Exception:  # reported by parse_promql above
            pass
    for name in sorted(set(records) - used_by_alerts):
        fail(f"rules {records[name]}/{name}: recorded but no alert uses it")
    for runbook in RUNBOOKS.glob("*.md"):
        if runbook.stem not in alerts and runbook.stem != "README":
            fail(f"docs/runbooks/{runbook.name}: no alert of that name")
    rendered_rules = [
        d for d in yaml.safe_load_all(rendered.read_text()) if d and d.get("kind") == "PrometheusRule"
    ]
    if len(rendered_rules) != 1:
        fail(f"{rendered.name}: expected one PrometheusRule, found {len(rendered_rules)}")
    elif rendered_rules[0]["spec"]["groups"] != source["groups"]:
        fail(f"{rendered.name}: the chart's PrometheusRule differs from {RULES_SOURCE.relative_to(ROOT)}")
    return count, len(records)


def check_dashboard() -> int:
    panels_seen = 0
    for path in sorted((ROOT / "deploy/grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        where = path.relative_to(ROOT).as_posix()
        for key in ("uid", "title", "panels", "templating", "schemaVersion"):
            if key not in dashboard:
                fail(f"{where}: `{key}` missing")
        variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
        if "datasource" not in variables:
            fail(f"{where}: no `datasource` variable (dashboards must not pin a data source uid)")
        ids = []
        stack = list(dashboard.get("panels", []))
        while stack:
            panel = stack.pop()
            stack.extend(panel.get("panels", []))
            panels_seen += 1
            ids.append(panel.get("id"))
            title = f"{where} panel {panel.get('title')!r}"
            if "gridPos" not in panel:
                fail(f"{title}: no gridPos")
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("uid") != "${datasource}":
                    fail(f"{title}: query not on the ${{datasource}} variable")
                parse_promql(target.get("expr", ""), title)
        if len(ids) != len(set(ids)):
            fail(f"{where}: duplicate panel ids")
    return panels_seen


def check_metrics() -> str:
    uses = used_metrics.used()
    exported = used_metrics.exported_names()
    recorded = used_metrics.recorded_names()
    for name, where in sorted(uses.items()):
        if name not in exported and name not in recorded and name not in used_metrics.EXTERNAL:
            fail(f"metric {name} (used by {', '.join(sorted(set(where)))}) is not exported by Kiroku, recorded by a rule, nor a listed external exporter")
    # The check must be able to fail: a made-up name is neither.
    if "kiroku_made_up_total" in exported:
        fail("used_metrics: registrations were not read correctly")
    kiroku = sorted(n for n in uses if n.startswith("kiroku_") or n in used_metrics.PROCESS)
    rules = sorted(n for n in uses if n in recorded)
    return (
        f"{len(uses)} metric names ({len(kiroku)} Kiroku, {len(rules)} recorded, "
        f"{len(uses) - len(kiroku) - len(rules)} external)"
    )


def check_otel() -> None:
    path = ROOT / "deploy/otel/collector.yaml"
    config = yaml.safe_load(path.read_text())
    where = path.relative_to(ROOT).as_posix()
    service = config.get("service", {})
    for extension in service.get("extensions", []):
        if extension not in config.get("extensions", {}):
            fail(f"{where}: extension {extension} used but not defined")
    pipelines = service.get("pipelines", {})
    if "traces" not in pipelines:
        fail(f"{where}: no traces pipeline")
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                if component not in (config.get(kind) or {}):
                    fail(f"{where}: pipeline {name} uses {kind[:-1]} {component}, not defined")
        processors = pipeline.get("processors", [])
        if processors and processors[0] != "memory_limiter":
            fail(f"{where}: memory_limiter must be the first processor")
        if processors and processors[-1] != "batch":
            fail(f"{where}: batch must be the last processor")
    grpc = config.get("receivers", {}).get("otlp", {}).get("protocols", {}).get("grpc", {})
    if not str(grpc.get("endpoint", "")).endswith(":4317"):
        fail(f"{where}: the otlp receiver must listen for gRPC on 4317 (what OTEL_EXPORTER_OTLP_ENDPOINT points at)")


def check_nats(values: dict) -> None:
    conf = (ROOT / "deploy/nats/nats.conf").read_text()
    expected = values["nats"]["jetstream"]
    if not re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.M):
        fail("deploy/nats/nats.conf: jetstream needs sync_interval: always")
    if not re.search(r"^\s*store_dir:", conf, re.M):
        fail("deploy/nats/nats.conf: jetstream needs a store_dir (file storage)")
    routes = re.findall(r"nats://nats-\d+", conf)
    if len(routes) != expected["replicas"]:
        fail(f"deploy/nats/nats.conf: {len(routes)} routes, the chart expects {expected['replicas']} servers")
    chart = yaml.safe_load((ROOT / "deploy/nats/values-nats-chart.yaml").read_text())
    config = chart["config"]
    if config["cluster"]["replicas"] != expected["replicas"] or not config["cluster"]["enabled"]:
        fail("deploy/nats/values-nats-chart.yaml: cluster must be enabled with the expected replicas")
    if not config["jetstream"]["fileStore"]["enabled"] or config["jetstream"]["merge"].get("sync_interval") != expected["syncInterval"]:
        fail("deploy/nats/values-nats-chart.yaml: JetStream file store with sync_interval: always")
    tag = chart["container"]["image"]["tag"]
    if tuple(int(x) for x in tag.split("-")[0].split(".")) < tuple(int(x) for x in expected["minServerVersion"].split(".")):
        fail(f"deploy/nats/values-nats-chart.yaml: NATS {tag} is older than {expected['minServerVersion']}")


def rust_const(path: str, name: str) -> str:
    text = (ROOT / path).read_text()
    match = re.search(rf'const {name}: &str = "([^"]*)";', text)
    if not match:
        fail(f"{path}: constant {name} not found (renamed? update check_deploy.py)")
        return ""
    return match.group(1)


def check_code_agreement(values: dict) -> None:
    for role, crate in (("gateway", "kiroku-gateway"), ("account", "kiroku-account"), ("audit", "kiroku-audit")):
        for key, const in (("grpc", "DEFAULT_LISTEN"), ("admin", "DEFAULT_ADMIN_LISTEN")):
            default = rust_const(f"crates/{crate}/src/lib.rs", const)
            port = int(default.rsplit(":", 1)[1]) if default else None
            if port is not None and values[role]["ports"][key] != port:
                fail(f"values {role}.ports.{key} {values[role]['ports'][key]} differs from the code's default {default}")
    package = rust_const("crates/kiroku-cli/src/model.rs", "PACKAGE")
    fetch = values["worker"]["model"]["fetch"]
    if package and fetch["package"] != package:
        fail(f"values worker.model.fetch.package {fetch['package']} differs from `kiroku model fetch`'s {package}")
    default_file = rust_const("crates/kiroku-engine/src/engine.rs", "DEFAULT_MODEL_FILE")
    produced = {default_file, default_file.replace(".bin", "-q8_0.bin")}
    if values["worker"]["model"]["file"] not in produced:
        fail(f"values worker.model.file is not one of the files `kiroku model fetch` writes ({sorted(produced)})")
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.*)$", dockerfile, re.M) for p in line.split()}
    for role in ("gateway", "worker", "account", "audit"):
        for port in values[role]["ports"].values():
            if port not in exposed:
                fail(f"Dockerfile: EXPOSE lacks {role} port {port}")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    values = yaml.safe_load((ROOT / "helm/kiroku/values.yaml").read_text())
    alerts, records = check_rules(Path(sys.argv[1]))
    panels = check_dashboard()
    metrics = check_metrics()
    check_otel()
    check_nats(values)
    check_code_agreement(values)
    for line in problems:
        print(line)
    print(
        f"deploy bundle: {alerts} alert rules, {records} recording rules, {panels} dashboard panels, "
        f"{metrics}; {len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
