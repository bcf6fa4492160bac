#!/usr/bin/env python3
"""Generates helm/kiroku/values.schema.json, the chart's values schema (JSON Schema
draft-07, what `helm lint` and `helm install` validate values against).

  gen_values_schema.py           print the schema
  gen_values_schema.py --write   write helm/kiroku/values.schema.json
  gen_values_schema.py --check   exit 1 when the committed file differs (check.sh)

Unknown keys are refused everywhere except in Kubernetes pass-through objects
(resources, affinity, tolerations, NetworkPolicy peers...), and the hardening cannot be
switched off: runAsNonRoot, no privilege escalation, read-only root filesystem, drop ALL.
"""

import json
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parents[2] / "helm/kiroku/values.schema.json"

def obj(props, required=None, addl=False, desc=None):
    """A closed object: unknown keys refused; every property required unless listed."""
    schema = {"type": "object", "additionalProperties": addl, "properties": props}
    required = list(props) if required is None else required
    if required:
        schema["required"] = required
    if desc:
        schema["description"] = desc
    return schema


def with_desc(schema, desc):
    return {**schema, "description": desc} if desc else schema


def S(desc=None, **constraints):
    return with_desc({"type": "string", **constraints}, desc)


def I(minimum=None, maximum=None, desc=None):
    schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return with_desc(schema, desc)


def N(minimum=None, maximum=None, desc=None):
    return {**I(minimum, maximum, desc), "type": "number"}


def B(desc=None):
    return with_desc({"type": "boolean"}, desc)


MAP = {"type": "object", "additionalProperties": {"type": "string"}}
ANYOBJ = {"type": "object"}
ARR = {"type": "array"}
ARR_OBJ = {"type": "array", "items": {"type": "object"}}
PORT = I(1024, 65535)
QTY = {"anyOf": [{"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"}, {"type": "number", "minimum": 0}]}
secret_ref = obj({"name": S("existing Secret name; empty leaves the setting out"), "key": S(minLength=1)})
probe = obj({
    "initialDelaySeconds": I(0), "periodSeconds": I(1), "timeoutSeconds": I(1),
    "failureThreshold": I(1), "successThreshold": I(1)}, required=["periodSeconds", "timeoutSeconds", "failureThreshold"])
probes = obj({"startup": {"$ref": "#/definitions/probe"}, "liveness": {"$ref": "#/definitions/probe"}, "readiness": {"$ref": "#/definitions/probe"}})
resources = obj({"requests": {"type": "object", "additionalProperties": QTY}, "limits": {"type": "object", "additionalProperties": QTY}}, required=[])
pdb = obj(
    {
        "enabled": B(),
        "maxUnavailable": {"type": ["integer", "string", "null"]},
        "minAvailable": {"type": ["integer", "string", "null"], "description": "wins over maxUnavailable when set"},
    },
    required=["enabled"],
)
strategy = obj({"type": S(enum=["RollingUpdate", "Recreate"]), "rollingUpdate": ANYOBJ}, required=["type"])
def role(extra, ports):
    """One role's values: the settings every role has, plus its own."""
    props = {
        "enabled": B(), "replicas": I(0),
        "ports": obj({p: PORT for p in ports}),
        "resources": {"$ref": "#/definitions/resources"},
        "probes": {"$ref": "#/definitions/probes"},
        "terminationGracePeriodSeconds": I(1, 3600),
        "strategy": {"$ref": "#/definitions/strategy"},
        "pdb": {"$ref": "#/definitions/pdb"},
        "nodeSelector": MAP, "tolerations": ARR_OBJ, "affinity": ANYOBJ,
        "topologySpreadConstraints": ARR_OBJ,
        "extraEnv": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    }
    props.update(extra)
    return obj(props)


peer_rule = obj({"ports": {"type": "array", "items": obj({"port": {"type": ["integer", "string"]}, "protocol": S(enum=["TCP", "UDP", "SCTP"]), "endPort": I(1)}, required=["port"])}, "to": ARR_OBJ})
schema = {
  "$schema": "http://json-schema.org/draft-07/schema#",
  "title": "Kiroku Helm chart values",
  "type": "object",
  "additionalProperties": False,
  "definitions": {"secretRef": secret_ref, "probe": probe, "probes": probes, "resources": resources, "pdb": pdb, "strategy": strategy, "dependency": peer_rule},
  "properties": {
    "global": ANYOBJ,
    "image": obj({"repository": S(minLength=1), "tag": S(), "digest": S(pattern="^(|sha256:[0-9a-f]{64})$"), "pullPolicy": S(enum=["Always", "IfNotPresent", "Never"]), "cudaTagSuffix": S()}),
    "imagePullSecrets": {"type": "array", "items": obj({"name": S(minLength=1)})},
    "nameOverride": S(), "fullnameOverride": S(), "commonLabels": MAP,
    "cluster": obj({"root": S(pattern="^[A-Za-z0-9_-]{1,128}$", desc="KIROKU_CLUSTER: one NATS subject token"), "resumeWindowSeconds": I(1)}),
    "nats": obj({
        "url": S(pattern="^(nats|tls)://"), "urlSecret": {"$ref": "#/definitions/secretRef"},
        "monitoringEndpoint": S(), "account": S(minLength=1),
        "jetstream": obj({"storage": S(enum=["file"], desc="memory storage loses acknowledged audio on restart"),
                          "replicas": I(3, 5, desc="at least 3 servers; also KIROKU_NATS_REPLICAS (1-5)"), "syncInterval": S(enum=["always"]),
                          "minServerVersion": S(pattern="^[0-9]+\\.[0-9]+\\.[0-9]+$")})}),
    "secrets": obj({k: {"$ref": "#/definitions/secretRef"} for k in ["redisUrl", "databaseOwnerUrl", "accountDatabaseUrl", "auditDatabaseUrl", "resumeSecret", "signingKey", "operatorToken", "auditAnchorKey", "smtpPassword", "storageDatabaseUrl", "storageMasterKey", "storagePreviousMasterKey"]}),
    "dataLocation": obj({"region": S(pattern="^[a-z0-9-]+$", desc="KIROKU_REGION: where this release runs"),
        "allowedRegions": {"type": "array", "minItems": 1, "items": S(pattern="^[a-z0-9-]+$"), "description": "KIROKU_ALLOWED_REGIONS: where customer data may be kept"},
        "natsRegion": S(pattern="^[a-z0-9-]*$", desc="KIROKU_NATS_REGION; empty: region"),
        "databaseRegion": S(pattern="^[a-z0-9-]*$", desc="KIROKU_DATABASE_REGION; empty: region")}),
    "telemetry": obj({"logFormat": S(enum=["json", "text"]), "logLevel": S(), "otlpEndpoint": S(pattern="^(|https?://.+)$")}),
    "serviceAccount": obj({"create": B(), "name": S(), "annotations": MAP}),
    "podSecurityContext": {"type": "object", "required": ["runAsNonRoot", "seccompProfile"],
        "properties": {"runAsNonRoot": {"const": True}, "runAsUser": I(1), "runAsGroup": I(1), "fsGroup": I(1), "fsGroupChangePolicy": S(), "seccompProfile": ANYOBJ}},
    "containerSecurityContext": {"type": "object", "required": ["runAsNonRoot", "allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"],
        "properties": {"runAsNonRoot": {"const": True}, "allowPrivilegeEscalation": {"const": False}, "privileged": {"const": False},
                       "readOnlyRootFilesystem": {"const": True, "description": "the image writes only to /tmp and the model volume"},
                       "runAsUser": I(1), "runAsGroup": I(1), "seccompProfile": ANYOBJ,
                       "capabilities": {"type": "object", "required": ["drop"], "properties": {"drop": {"type": "array", "contains": {"const": "ALL"}}, "add": {"type": "array", "maxItems": 0}}}}},
    "podAnnotations": MAP, "podLabels": MAP, "priorityClassName": S(), "tmpSizeLimit": QTY,
    "gateway": role({
        "idleTimeoutSeconds": I(1), "queueTimeoutSeconds": I(1, 3600), "streamsPerTenant": I(1), "tenantRate": N(0.01, 10000), "callerRate": N(0.01, 10000),
        "trustedProxies": {"type": "array", "items": S(minLength=1), "description": "KIROKU_GATEWAY_TRUSTED_PROXIES: the ingress controller's pod network"},
        "preStopSleepSeconds": I(0, 60),
        "service": obj({"type": S(enum=["ClusterIP", "LoadBalancer", "NodePort"]), "annotations": MAP, "loadBalancerSourceRanges": {"type": "array", "items": S()}, "externalTrafficPolicy": S(enum=["", "Cluster", "Local"])}),
        "ingress": obj({"enabled": B(), "className": S(), "host": S(), "annotations": MAP, "tlsSecretName": S()}),
        "autoscaling": obj({"enabled": B(), "minReplicas": I(1), "maxReplicas": I(1), "targetCPUUtilizationPercentage": I(1, 100), "activeStreamsPerPod": I(0)}),
    }, ["grpc", "admin"]),
    "worker": role({
        "threads": I(0), "slots": I(1), "sessions": I(1), "ackWaitSeconds": N(0.5, 3600), "admitMaxLagSeconds": N(0, 3600), "stepMs": {"anyOf": [{"const": 0}, I(100, 5000)]},
        "model": obj({"dir": S(pattern="^/"), "file": S(pattern="^[^/]+$"), "existingClaim": S(), "sizeLimit": QTY,
                      "fetch": obj({"enabled": B(), "package": S(pattern="^[A-Za-z0-9_.-]+==[A-Za-z0-9_.]+$"), "vadPackage": S(pattern="^([A-Za-z0-9_.-]+==[A-Za-z0-9_.]+)?$"), "quantize": S(enum=["", "q8_0"]),
                                    "downloaderImage": S(pattern=":[^:]*[0-9][^:]*$"), "indexUrl": S(), "resources": {"$ref": "#/definitions/resources"}})}),
        "gpu": obj({"enabled": B(), "count": I(1), "resourceName": S(minLength=1), "runtimeClassName": S()}),
        "keda": obj({"enabled": B(), "trigger": S(enum=["nats-jetstream", "prometheus"]), "minReplicas": I(0), "maxReplicas": I(1),
                     "pollingIntervalSeconds": I(1), "cooldownPeriodSeconds": I(0), "lagThreshold": I(1), "activationLagThreshold": I(0),
                     "prometheus": obj({"serverAddress": S(pattern="^https?://")})}),
    }, ["admin"]),
    "account": role({"schema": S(pattern="^[a-z_][a-z0-9_]*$"), "accessTokenTtlSeconds": I(30, 86400), "loginAttempts": I(1), "loginAttemptsPerIp": I(1),
        "trustedProxies": {"type": "array", "minItems": 1, "items": S(minLength=1), "description": "KIROKU_TRUSTED_PROXIES: the gateways' pod network"}}, ["grpc", "admin"]),
    "audit": role({"schema": S(pattern="^[a-z_][a-z0-9_]*$"),
        "smtp": obj({"host": S(), "port": I(1, 65535), "tls": S(enum=["starttls", "tls", "none"]), "from": S(minLength=3), "username": S()})}, ["grpc", "admin"]),
    "storage": role({"schema": S(pattern="^[a-z_][a-z0-9_]*$")}, ["grpc", "admin"]),
    "monitoring": obj({
        "serviceMonitor": obj({"enabled": B(), "interval": S(pattern="^[0-9]+(ms|s|m)$"), "scrapeTimeout": S(pattern="^[0-9]+(ms|s|m)$"), "labels": MAP}),
        "prometheusRule": obj({"enabled": B(), "labels": MAP})}),
    "networkPolicy": obj({
        "enabled": B(), "gatewayIngressFrom": ARR_OBJ, "monitoringFrom": ARR_OBJ,
        "accountIngressFrom": ARR_OBJ, "auditIngressFrom": ARR_OBJ, "storageIngressFrom": ARR_OBJ, "apiClients": B(),
        **{k: {"$ref": "#/definitions/dependency"} for k in ["dns", "nats", "redis", "postgresql", "otelCollector", "modelDownload"]},
        "smtp": obj({"to": ARR_OBJ}),
        "extraEgress": obj({r: ARR_OBJ for r in ["gateway", "worker", "account", "audit", "storage"]})}),
  },
}
# Every top-level key is required except global (set by parent charts).
schema["required"] = [k for k in schema["properties"] if k != "global"]

def main(argv):
    text = json.dumps(schema, indent=2) + "\n"
    if "--write" in argv:
        TARGET.write_text(text)
    elif "--check" in argv:
        if TARGET.read_text() != text:
            print(f"{TARGET.relative_to(TARGET.parents[2])} is stale: run tests/chart/gen_values_schema.py --write")
            return 1
        print("values schema: up to date")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
