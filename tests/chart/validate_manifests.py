#!/usr/bin/env python3
"""Validates rendered chart manifests: Kubernetes schemas, CRD kinds, and the chart's own
promises (hardening, probes, PDBs, NetworkPolicies, env names the code reads).

  validate_manifests.py --k8s 1.30.0 [--k8s 1.37.0 ...] RENDERED.yaml...

Schemas: PyPI kubernetes-validate (--strict: unknown fields are errors). Kinds without a
built-in schema must be listed in CRD_KINDS: they are checked here for the fields the
chart relies on; any other unknown kind fails.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]

# Custom resources the chart renders on purpose (no built-in schema): API version,
# and the spec fields that must be there.
CRD_KINDS = {
    "ServiceMonitor": ("monitoring.coreos.com/v1", ["selector", "endpoints"]),
    "PrometheusRule": ("monitoring.coreos.com/v1", ["groups"]),
    "ScaledObject": ("keda.sh/v1alpha1", ["scaleTargetRef", "triggers"]),
}

# Environment variables a container may get that no KIROKU_ flag of today's code reads.
STANDARD_ENV = {"HOME", "RUST_LOG", "RUST_BACKTRACE", "OTEL_EXPORTER_OTLP_ENDPOINT", "PIP_NO_INPUT", "PIP_INDEX_URL"}
# Read by code that is not written yet: allowed, and reported once the code reads them
# (then they leave this list). Empty while the chart sets only flags the code reads.
PENDING_ENV: dict[str, str] = {}


def env_names_in_code() -> set[str]:
    names: set[str] = set()
    for source in (ROOT / "crates").rglob("*.rs"):
        names.update(re.findall(r'"(KIROKU_[A-Z0-9_]+)"', source.read_text(errors="replace")))
    return names


class Report:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")


def validate_schemas(docs, versions, where, report: Report, counts: dict) -> None:
    for doc in docs:
        kind, api = doc.get("kind"), doc.get("apiVersion")
        name = f"{where} {kind}/{doc.get('metadata', {}).get('name')}"
        if kind in CRD_KINDS:
            expected_api, required = CRD_KINDS[kind]
            if api != expected_api:
                report.fail(name, f"apiVersion {api}, expected {expected_api}")
            spec = doc.get("spec") or {}
            for field in required:
                if not spec.get(field):
                    report.fail(name, f"spec.{field} missing")
            counts["crd"] += 1
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                report.fail(name, f"no Kubernetes {version} schema and not a listed CRD kind ({', '.join(CRD_KINDS)})")
            except kubernetes_validate.ValidationError as error:
                path = "/".join(str(p) for p in error.path) if hasattr(error, "path") else ""
                report.fail(name, f"Kubernetes {version}: {error.message} at {path}")
        counts["builtin"] += 1


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_policies(docs, where, report: Report, code_env: set[str]) -> None:
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    config_maps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    pdbs = by_kind.get("PodDisruptionBudget", [])
    policies = by_kind.get("NetworkPolicy", [])
    autoscaled = {
        d["spec"]["scaleTargetRef"]["name"] for d in by_kind.get("HorizontalPodAutoscaler", []) + by_kind.get("ScaledObject", [])
    }
    deployments = {d["metadata"]["name"] for d in by_kind.get("Deployment", [])}
    for target in autoscaled - deployments:
        report.fail(where, f"autoscaler targets {target}, which is not rendered")

    for deployment in by_kind.get("Deployment", []):
        name = f"{where} Deployment/{deployment['metadata']['name']}"
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        annotations = spec["template"]["metadata"].get("annotations", {})
        if deployment["metadata"]["name"] in autoscaled and "replicas" in spec:
            report.fail(name, "replicas set although an autoscaler owns them")
        if "checksum/config" not in annotations:
            report.fail(name, "no checksum/config pod annotation")
        if pod.get("automountServiceAccountToken") is not False:
            report.fail(name, "service account token mounted")
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            report.fail(name, "pod securityContext must be runAsNonRoot with seccomp RuntimeDefault")
        if not pod.get("terminationGracePeriodSeconds"):
            report.fail(name, "no terminationGracePeriodSeconds")
        containers = pod["containers"] + pod.get("initContainers", [])
        for container in containers:
            cname = f"{name} container {container['name']}"
            sc = container.get("securityContext", {})
            if not (
                sc.get("runAsNonRoot") is True
                and sc.get("allowPrivilegeEscalation") is False
                and sc.get("readOnlyRootFilesystem") is True
                and "ALL" in sc.get("capabilities", {}).get("drop", [])
                and not sc.get("capabilities", {}).get("add")
                and sc.get("privileged") is not True
            ):
                report.fail(cname, "securityContext not hardened (non-root, no escalation, read-only root, drop ALL)")
            image = container["image"]
            if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
                report.fail(cname, f"image {image} is not pinned")
            resources = container.get("resources", {})
            if not {"cpu", "memory"} <= set(resources.get("requests", {})) or "memory" not in resources.get("limits", {}):
                report.fail(cname, "needs cpu and memory requests and a memory limit")
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if "/tmp" not in mounts:
                report.fail(cname, "no writable /tmp (the root filesystem is read-only)")
            for env in container.get("env", []):
                check_env_name(env["name"], cname, report, code_env)
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref and ref not in config_maps:
                    report.fail(cname, f"envFrom ConfigMap {ref} is not rendered")
                elif ref:
                    for key in config_maps[ref].get("data", {}):
                        check_env_name(key, cname, report, code_env)
        for container in pod["containers"]:
            cname = f"{name} container {container['name']}"
            if container.get("args", [])[:1] != ["serve"]:
                report.fail(cname, f"runs {container.get('args')}, expected `kiroku serve <role>`")
            ports = {p["name"] for p in container.get("ports", [])}
            if "admin" not in ports:
                report.fail(cname, "no admin port")
            for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                http = container.get(probe, {}).get("httpGet", {})
                if http.get("path") != path or http.get("port") != "admin":
                    report.fail(cname, f"{probe} must GET {path} on the admin port")
        if not any(labels_match(p["spec"]["selector"].get("matchLabels"), labels) for p in pdbs):
            report.fail(name, "no PodDisruptionBudget selects its pods")
        selecting = [p for p in policies if labels_match(p["spec"]["podSelector"].get("matchLabels"), labels)]
        if policies and not selecting:
            report.fail(name, "no NetworkPolicy selects its pods")
        for policy in selecting:
            if sorted(policy["spec"].get("policyTypes", [])) != ["Egress", "Ingress"]:
                report.fail(name, "its NetworkPolicy must restrict both Ingress and Egress")
            open_rules = [r for r in policy["spec"].get("ingress", []) if not r.get("from")]
            component = labels.get("app.kubernetes.io/component")
            if open_rules and component != "gateway":
                report.fail(name, "ingress open to any source: only the gateway is public")
            for rule in open_rules:
                ports = {str(p.get("port")) for p in rule.get("ports", [])}
                if ports != {"grpc"}:
                    report.fail(name, f"the gateway's open ingress must be its gRPC port only, not {sorted(ports)}")
    for service in by_kind.get("Service", []):
        selector = service["spec"].get("selector", {})
        if not any(labels_match(selector, d["spec"]["template"]["metadata"]["labels"]) for d in by_kind.get("Deployment", [])):
            report.fail(f"{where} Service/{service['metadata']['name']}", "selects no rendered Deployment")
        if service["spec"].get("type") in ("LoadBalancer", "NodePort"):
            if any(p["name"] == "admin" for p in service["spec"]["ports"]):
                report.fail(f"{where} Service/{service['metadata']['name']}", "exposes the admin port outside the cluster")


def check_env_name(name: str, where: str, report: Report, code_env: set[str]) -> None:
    if name in STANDARD_ENV or name in code_env:
        if name in PENDING_ENV and name in code_env:
            report.notes.append(f"{name} is now read by the code: drop it from PENDING_ENV")
        return
    if name in PENDING_ENV:
        report.notes.append(f"{name}: not read by the code yet ({PENDING_ENV[name]})")
        return
    report.fail(where, f"env {name} is not read by any Kiroku code (typo, or a renamed flag?)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k8s", action="append", required=True, help="Kubernetes version, e.g. 1.30.0")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    report = Report()
    code_env = env_names_in_code()
    counts = {"builtin": 0, "crd": 0}
    for path in args.files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if not docs:
            report.fail(path.name, "renders nothing")
        validate_schemas(docs, args.k8s, path.name, report, counts)
        check_policies(docs, path.name, report, code_env)
    for line in report.problems:
        print(line)
    for note in sorted(set(report.notes)):
        print(f"note: {note}")
    print(
        f"manifests: {counts['builtin']} objects checked against Kubernetes {', '.join(args.k8s)} (strict), "
        f"{counts['crd']} custom resources checked ({', '.join(CRD_KINDS)}), {len(report.problems)} problem(s)"
    )
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
