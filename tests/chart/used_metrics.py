#!/usr/bin/env python3
"""Every metric name the observability bundle uses, and whether something exports it.

Sources read (PromQL parsed with PyPI `promql-parser`, not grepped):
  deploy/grafana/*.json           every panel target's `expr` and templating query
  deploy/prometheus/rules.yaml    every rule's `expr` (the chart's PrometheusRule is the
                                  same file, helm/kiroku/files/prometheus-rules.yaml)
  helm/kiroku/templates/*.yaml    metric names used by autoscalers (HPA, KEDA)

Kiroku's own names (kiroku_*) must be registered in the Rust sources: the registrations
(`registry.register("name", ..., family)`) are read from crates/**/*.rs, and a counter
`x` is exported as `x_total`, a histogram as `x_bucket`, `x_sum`, `x_count` (the
prometheus-client crate's text format 0.0.4). The standard process metrics every Kiroku
process serves are listed in PROCESS (registered or collected, either way they are on
/metrics). Names the recording rules of deploy/prometheus/rules.yaml produce
(`record:`) are known too. Any other name must be listed in EXTERNAL with the exporter
that provides it.

Usage:
  used_metrics.py              print every used name with its origin, one a line
  used_metrics.py --kiroku     print only the names a Kiroku process serves, kiroku_* and
                               process_* (what a test scraping /metrics of a running
                               cluster should find; a labelled family such as
                               kiroku_errors_total appears after its first sample)
  used_metrics.py --check      exit 1 unless every used name is exported, recorded or
                               EXTERNAL
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Metrics the bundle uses that Kiroku does not export, and who does.
EXTERNAL = {
    "up": "Prometheus (scrape health of every target)",
    # prometheus-nats-exporter -jsz=all: `nats_` with -prefix=nats (how the official NATS
    # chart's promExporter runs it), `jetstream_` without (collector/jsz.go upstream).
    "nats_consumer_num_pending": "prometheus-nats-exporter -jsz=all -prefix=nats (NATS chart promExporter)",
    "jetstream_consumer_num_pending": "prometheus-nats-exporter -jsz=all (no -prefix)",
    "certmanager_certificate_expiration_timestamp_seconds": "cert-manager controller",
}

# The standard process metrics (Prometheus client conventions) every Kiroku process
# serves next to its kiroku_* families.
PROCESS = {
    "process_cpu_seconds_total": "Kiroku process metrics (user + system CPU seconds)",
    "process_resident_memory_bytes": "Kiroku process metrics (resident memory)",
    "process_open_fds": "Kiroku process metrics (open file descriptors)",
    "process_start_time_seconds": "Kiroku process metrics (start time, Unix seconds)",
}

REGISTER = re.compile(r'\.register\(\s*"([a-z_:][a-z0-9_:]*)"\s*,\s*"[^"]*"\s*,\s*([a-z_]+)\.clone\(\)', re.S)
TYPED_LET = re.compile(
    r"let\s+([a-z_]+)\s*=\s*(?:(Gauge|Counter|Histogram)\b|Family::<[^>]*?,\s*(Gauge|Counter|Histogram)\b)"
)


def registered_families(root: Path = ROOT) -> dict[str, str]:
    """Family name -> kind (gauge, counter, histogram) from every .rs file's registrations."""
    families: dict[str, str] = {}
    for source in sorted((root / "crates").rglob("*.rs")):
        text = source.read_text(errors="replace")
        if ".register(" not in text:
            continue
        kinds = {m.group(1): (m.group(2) or m.group(3)).lower() for m in TYPED_LET.finditer(text)}
        for match in REGISTER.finditer(text):
            name, variable = match.groups()
            if variable not in kinds:
                raise SystemExit(f"{source}: cannot tell the type of {name} ({variable})")
            families[name] = kinds[variable]
    return families


def exported_names(root: Path = ROOT) -> dict[str, str]:
    """Sample names as /metrics shows them -> the family they belong to (kiroku_* from
    the registrations, and the PROCESS names unless registered)."""
    names: dict[str, str] = {name: name for name in PROCESS}
    for family, kind in registered_families(root).items():
        if kind == "counter":
            names[f"{family}_total"] = family
        elif kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[family + suffix] = family
        else:
            names[family] = family
    return names


def promql_metric_names(expr: str) -> set[str]:
    import promql_parser  # PyPI promql-parser (build/chart-tools venv)

    # Grafana variables are not PromQL: give them a neutral value before parsing.
    expr = re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)
    expr = re.sub(r"\$\{?[A-Za-z_]+\}?", ".*", expr)
    names: set[str] = set()

    def visit(node, *_):
        if type(node).__name__ == "VectorSelector":
            name = node.name
            if not name:
                for matcher in node.matchers.matchers:
                    if matcher.name == "__name__":
                        name = matcher.value
            if name:
                names.add(name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def dashboard_exprs(root: Path = ROOT) -> list[tuple[str, str]]:
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str) and node["expr"].strip():
                found.append((where, node["expr"]))
            query = node.get("query")
            if node.get("type") == "query" and isinstance(query, (str, dict)):
                text = query if isinstance(query, str) else query.get("query", "")
                metrics = re.match(r"\s*label_values\((.*),\s*[A-Za-z_]+\)\s*$", text)
                if metrics:
                    found.append((where + " (variable)", metrics.group(1)))
            for key, value in node.items():
                walk(value, f"{where}/{node.get('title', key)}" if key == "panels" else where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    for path in sorted((root / "deploy/grafana").glob("*.json")):
        walk(json.loads(path.read_text()), path.relative_to(root).as_posix())
    return found


RULES = "deploy/prometheus/rules.yaml"


def _rules(root: Path) -> list[dict]:
    import yaml

    return [rule for group in yaml.safe_load((root / RULES).read_text())["groups"] for rule in group["rules"]]


def rule_exprs(root: Path = ROOT) -> list[tuple[str, str]]:
    return [(f"{RULES}:{rule.get('alert') or rule.get('record')}", rule["expr"]) for rule in _rules(root)]


def recorded_names(root: Path = ROOT) -> set[str]:
    """Series the recording rules produce (level:metric:operation)."""
    return {rule["record"] for rule in _rules(root) if "record" in rule}


def autoscaler_exprs(root: Path = ROOT) -> list[tuple[str, str]]:
    found = []
    for path in sorted((root / "helm/kiroku/templates").glob("*.yaml")):
        text = path.read_text()
        for name in re.findall(r"\b(kiroku_[a-z0-9_]+)\b", text):
            found.append((path.relative_to(root).as_posix(), name))
    return found


def used(root: Path = ROOT) -> dict[str, list[str]]:
    """Metric name -> where it is used."""
    uses: dict[str, list[str]] = {}
    for where, expr in dashboard_exprs(root) + rule_exprs(root) + autoscaler_exprs(root):
        for name in promql_metric_names(expr):
            uses.setdefault(name, []).append(where)
    return uses


def main(argv: list[str]) -> int:
    uses = used()
    exported = exported_names()
    recorded = recorded_names()
    if "--kiroku" in argv:
        for name in sorted(n for n in uses if n.startswith("kiroku_") or n in PROCESS):
            print(name)
        return 0
    problems = []
    for name in sorted(uses):
        if name in exported:
            origin = f"kiroku ({exported[name]})"
        elif name in recorded:
            origin = f"recording rule ({RULES})"
        elif name in EXTERNAL:
            origin = f"external: {EXTERNAL[name]}"
        else:
            origin = "NOT EXPORTED by Kiroku and not a known external metric"
            problems.append(f"{name}: used by {', '.join(sorted(set(uses[name])))}, {origin}")
        if "--check" not in argv:
            print(f"{name}\t{origin}")
    if "--check" in argv:
        for line in problems:
            print(line)
        unused = sorted({f for f in exported.values()} - {exported[n] for n in uses if n in exported})
        print(
            f"metrics: {len(uses)} used ({sum(n in exported for n in uses)} Kiroku, "
            f"{sum(n in recorded for n in uses)} recorded, "
            f"{sum(n in EXTERNAL for n in uses)} external), {len(problems)} unknown"
            + (f"; Kiroku families no dashboard or alert uses: {', '.join(unused)}" if unused else "")
        )
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
