#!/usr/bin/env bash
# Build the real Dockerfile and run the image: HEALTHCHECK, /ready, every endpoint,
# SIGTERM; then docker-compose.yml (encdec + Prometheus) as far as its images can be had.
# Not part of .ci/run: a from-scratch image build compiles every dependency (~15-30 min
# on 2 cores).
#
#   scripts/container-check.sh            # all phases
#   scripts/container-check.sh build run  # only some: bases build run compose
#
# Engine: docker when `docker info` answers, else podman (CONTAINER_ENGINE=podman forces
# it). For podman on hosts without systemd or with hybrid cgroups (containers in
# containers, CI sandboxes) the script uses its own containers.conf: runc, cgroupfs,
# no default ulimits (crun fails there on rlimits).
#
# Base images: with STANDIN_BASES=1 (the default when debian:trixie-slim can't be pulled)
# the `bases` phase makes local stand-ins instead of pulling:
#   localhost/debian:trixie-slim      debootstrap --variant=minbase trixie + import
#   localhost/rust-standin:trixie     that + gcc + the host's rustup toolchain (the one
#                                     `rustc` runs; Debian's own rustc is too old for
#                                     Cargo.lock)
#   localhost/prometheus-standin      that + Debian's prometheus package
# and passes them to the Dockerfile as RUST_IMAGE / RUNTIME_IMAGE build args.
# Grafana is not packaged in Debian: without its image the compose phase runs encdec and
# Prometheus only, and says so.
#
# Traffic goes to 127.0.0.1 only: the encdec container uses the host network; the compose
# phase reaches its services through their published ports.
#
# Environment: CONTAINER_ENGINE, STANDIN_BASES, IMAGE (default localhost/encdec:check),
# CHECK_PORT (default 18080), STARTUP_TIMEOUT (s, default 120), CHECK_WORK
# (default /var/tmp/encdec-container-check).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

work=${CHECK_WORK:-/var/tmp/encdec-container-check}
image=${IMAGE:-localhost/encdec:check}
port=${CHECK_PORT:-18080}
startup_timeout=${STARTUP_TIMEOUT:-120}
ctr=encdec-container-check
phases=("$@")
[[ ${#phases[@]} -gt 0 ]] || phases=(bases build run compose)
mkdir -p "$work"

log() { printf '[container-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}
want() { [[ " ${phases[*]} " == *" $1 "* ]]; }

# --- engine ------------------------------------------------------------------------
if [[ -z ${CONTAINER_ENGINE:-} ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        CONTAINER_ENGINE=docker
    elif command -v podman >/dev/null; then
        CONTAINER_ENGINE=podman
    else
        die "neither a docker engine nor podman (apt-get install podman runc)"
    fi
fi
engine=(docker)
if [[ $CONTAINER_ENGINE == podman ]]; then
    if [[ -z ${CONTAINERS_CONF:-} ]]; then
        export CONTAINERS_CONF=$work/containers.conf
        cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    fi
    engine=(podman)
    [[ -n ${PODMAN_STORAGE_DRIVER:-} ]] && engine+=(--storage-driver "$PODMAN_STORAGE_DRIVER")
fi
e() { "${engine[@]}" "$@"; }
log "engine: ${engine[*]} ($(e --version))"

has_image() { e image inspect "$1" >/dev/null 2>&1; }

# --- bases: local stand-ins for images that can't be pulled ------------------------
runtime_image=docker.io/library/debian:trixie-slim
rust_image=docker.io/library/rust:1.95-slim-trixie
prometheus_image=
if [[ -z ${STANDIN_BASES:-} ]]; then
    if has_image "$runtime_image" || e pull -q "$runtime_image" >/dev/null 2>&1; then
        STANDIN_BASES=0
    else
        STANDIN_BASES=1
    fi
fi
if [[ $STANDIN_BASES == 1 ]]; then
    runtime_image=localhost/debian:trixie-slim
    rust_image=localhost/rust-standin:trixie
    prometheus_image=localhost/prometheus-standin:trixie
fi

if want bases && [[ $STANDIN_BASES == 1 ]]; then
    if ! has_image "$runtime_image"; then
        command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"
        rootfs=$work/trixie-rootfs
        if [[ ! -x $rootfs/bin/bash ]]; then
            rm -rf "$rootfs"
            log "debootstrap --variant=minbase trixie"
            debootstrap --variant=minbase trixie "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
                || die "debootstrap failed: $(tail -n 5 "$work/debootstrap.log")"
        fi
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | e import - "$runtime_image" >/dev/null
        log "imported $runtime_image"
    fi
    if ! has_image "$rust_image"; then
        toolchain=$(rustc --print sysroot)
        version=$(rustc --version | awk '{print $2}')
        ctx=$work/rust-standin
        rm -rf "$ctx" && mkdir -p "$ctx/toolchain"
        # Everything but share/ (docs, ~800 MB).
        for d in bin lib libexec etc; do
            [[ -d $toolchain/$d ]] && cp -a "$toolchain/$d" "$ctx/toolchain/"
        done
        # The host's local CAs (e.g. a TLS-intercepting egress proxy's) so that cargo in
        # the build reaches crates.io the way the host does. Stand-in only.
        mkdir -p "$ctx/ca"
        cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
        cat >"$ctx/Containerfile" <<EOF
FROM $runtime_image
RUN apt-get update \\
    && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
# The layout of the official rust image: RUSTUP_HOME, CARGO_HOME, cargo on PATH.
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$version
COPY toolchain /usr/local/rustup/toolchains/$version-x86_64-unknown-linux-gnu
RUN mkdir -p /usr/local/cargo/bin \\
    && ln -s /usr/local/rustup/toolchains/$version-x86_64-unknown-linux-gnu/bin/* /usr/local/cargo/bin/ \\
    && cargo --version && rustc --version
EOF
        log "building $rust_image (rustc $version from $toolchain)"
        e build --network host -t "$rust_image" -f "$ctx/Containerfile" "$ctx" >"$work/rust-standin.log" 2>&1 \
            || die "stand-in rust image: $(tail -n 20 "$work/rust-standin.log")"
        rm -rf "$ctx"
    fi
    if ! has_image "$prometheus_image"; then
        ctx=$work/prometheus-standin
        mkdir -p "$ctx"
        cat >"$ctx/Containerfile" <<EOF
FROM $runtime_image
RUN apt-get update \\
    && apt-get install -y --no-install-recommends prometheus \\
    && rm -rf /var/lib/apt/lists/* \\
    && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
        log "building $prometheus_image (Debian's prometheus package)"
        e build --network host -t "$prometheus_image" -f "$ctx/Containerfile" "$ctx" >"$work/prometheus-standin.log" 2>&1 \
            || die "stand-in prometheus image: $(tail -n 20 "$work/prometheus-standin.log")"
    fi
fi

# --- build: the real Dockerfile ----------------------------------------------------
if want build; then
    fmt=()
    # OCI images drop HEALTHCHECK; podman keeps it only in the docker format.
    [[ $CONTAINER_ENGINE == podman ]] && fmt=(--format docker)
    log "building $image from Dockerfile (RUST_IMAGE=$rust_image RUNTIME_IMAGE=$runtime_image); log: $work/build.log"
    start=$SECONDS
    if ! e build "${fmt[@]}" --network host \
        --build-arg RUST_IMAGE="$rust_image" --build-arg RUNTIME_IMAGE="$runtime_image" \
        -t "$image" -f Dockerfile . >"$work/build.log" 2>&1; then
        tail -n 40 "$work/build.log" >&2
        die "image build failed"
    fi
    log "built $image in $((SECONDS - start)) s, $(e image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
fi

# --- run: the image on config/demo.toml ----------------------------------------------
url=http://127.0.0.1:$port
failures=0
check() { # check NAME EXPECTED_STATUS METHOD PATH [BODY]: one request, status and JSON shape
    local name=$1 want=$2 method=$3 path=$4 body=${5:-} out status
    local args=(-s -o "$work/resp" -w '%{http_code}' -X "$method" --max-time 30)
    [[ -n $body ]] && args+=(-H 'content-type: application/json' -d "$body")
    status=$(curl "${args[@]}" "$url$path" || true)
    out=$(head -c 160 "$work/resp" | tr '\n' ' ')
    if [[ $status == "$want" ]]; then
        log "ok   $name: $method $path -> $status $out"
    else
        log "FAIL $name: $method $path -> $status (want $want) $out"
        failures=$((failures + 1))
    fi
}
json_has() { # json_has FILE PYTHON_EXPR: the parsed body as `j` satisfies the expression
    python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$work/resp" \
        || { log "FAIL body of the last response: not ($2)"; failures=$((failures + 1)); }
}

healthy() { # the image's own HEALTHCHECK
    if [[ $CONTAINER_ENGINE == podman ]]; then
        # No systemd timers here: run the check on demand; it updates the recorded state.
        e healthcheck run "$ctr" >/dev/null 2>&1
    else
        [[ $(e inspect --format '{{.State.Health.Status}}' "$ctr") == healthy ]]
    fi
}

if want run; then
    has_image "$image" || die "$image not built (run the build phase)"
    [[ -n $(e image inspect --format '{{json .Config.Healthcheck}}' "$image" | grep -v null) ]] \
        || die "$image has no HEALTHCHECK (podman: build with --format docker)"
    if curl -s -o /dev/null --max-time 2 "$url/health"; then
        die "port $port is taken on 127.0.0.1: set CHECK_PORT"
    fi
    e rm -f "$ctr" >/dev/null 2>&1 || true
    # demo.toml's model paths are relative to the file: mount config/ and tests/fixtures/
    # side by side, read-only. PORT is the variable the image documents.
    e run -d --name "$ctr" --network host -e PORT="$port" \
        -v "$repo/config:/srv/demo/config:ro" -v "$repo/tests/fixtures:/srv/demo/tests/fixtures:ro" \
        "$image" serve --config /srv/demo/config/demo.toml --host 127.0.0.1 >/dev/null
    trap 'e rm -f "$ctr" >/dev/null 2>&1 || true' EXIT
    start=$SECONDS

    # /health answers once the listener is up; /ready is 503 until the models are loaded.
    until curl -sf -o /dev/null --max-time 2 "$url/health"; do
        [[ $(e inspect --format '{{.State.Running}}' "$ctr") == true ]] \
            || { e logs "$ctr" 2>&1 | tail -n 20 >&2; die "container exited during start-up"; }
        ((SECONDS - start < startup_timeout)) || die "no /health after ${startup_timeout}s"
        sleep 0.5
    done
    log "/health 200 after $((SECONDS - start)) s"
    until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/ready") == 200 ]]; do
        ((SECONDS - start < startup_timeout)) || die "/ready not 200 after ${startup_timeout}s"
        sleep 0.5
    done
    log "/ready 200 after $((SECONDS - start)) s"
    until healthy; do
        ((SECONDS - start < startup_timeout)) || die "HEALTHCHECK not healthy after ${startup_timeout}s"
        sleep 1
    done
    log "HEALTHCHECK healthy after $((SECONDS - start)) s"

    check health 200 GET /health
    check ready 200 GET /ready
    check info 200 GET /info
    json_has "$work/resp" "len(j['models']) == 5"
    check openapi 200 GET /openapi.json
    json_has "$work/resp" "'/summarize' in j['paths']"
    check docs-redirect 303 GET /docs
    check docs 200 GET /docs/
    check summarize 200 POST /summarize '{"inputs": ["The quick brown fox jumps over the lazy dog.", "A second article."], "parameters": {"num_beams": 2, "max_new_tokens": 8}}'
    json_has "$work/resp" "len(j['outputs']) == 2 if 'outputs' in j else True"
    check split 200 POST /split '{"inputs": "Due to the hurricane, Lobsterfest has been canceled, making Bob very happy."}'
    check fuse 200 POST /fuse '{"inputs": "Bob likes the beach. He goes there every day."}'
    check translate-en-de 200 POST /translate '{"inputs": "The house is wonderful.", "source_lang": "en", "target_lang": "de"}'
    check translate-de-en 200 POST /translate '{"inputs": "Das Haus ist wunderbar.", "source_lang": "de", "target_lang": "en"}'
    check generate 200 POST /generate '{"model": "demo_summarize", "inputs": "Hello world.", "parameters": {"num_beams": 3, "num_return_sequences": 3, "max_new_tokens": 6}, "return_token_ids": true}'
    check bad-field 422 POST /summarize '{"inputs": "x", "bogus": 1}'
    json_has "$work/resp" "'error' in j and 'message' in j"
    check bad-pair 422 POST /translate '{"inputs": "x", "source_lang": "fr", "target_lang": "xx"}'
    check not-found 404 GET /nope
    # Counters appear once something was counted: after the requests above.
    check metrics 200 GET /metrics
    grep -q '^encdec_requests_total' "$work/resp" || { log "FAIL /metrics has no encdec_requests_total"; failures=$((failures + 1)); }

    # SIGTERM with a request in flight: the request completes (or is refused cleanly),
    # the process exits 0, well inside the compose stop_grace_period (40 s).
    curl -s -o "$work/inflight" -w '%{http_code}' --max-time 60 -H 'content-type: application/json' \
        -d '{"inputs": ["one", "two", "three", "four"], "parameters": {"num_beams": 8, "max_new_tokens": 64}}' \
        "$url/summarize" >"$work/inflight.status" &
    inflight=$!
    sleep 0.2
    stop_start=$(date +%s.%N)
    e kill --signal TERM "$ctr" >/dev/null
    e wait "$ctr" >/dev/null 2>&1 || true
    stop_s=$(python3 -c "import time; print(f'{time.time() - $stop_start:.2f}')")
    wait "$inflight" || true
    code=$(e inspect --format '{{.State.ExitCode}}' "$ctr")
    log "SIGTERM: exit code $code after ${stop_s} s; in-flight request -> $(cat "$work/inflight.status")"
    [[ $code == 0 ]] || { log "FAIL exit code $code after SIGTERM"; failures=$((failures + 1)); }
    python3 -c "import sys; sys.exit(0 if $stop_s < 10 else 1)" \
        || { log "FAIL shutdown took ${stop_s} s"; failures=$((failures + 1)); }
    [[ $(cat "$work/inflight.status") =~ ^(200|503)$ ]] \
        || { log "FAIL in-flight request during shutdown: $(cat "$work/inflight.status")"; failures=$((failures + 1)); }
    if e logs "$ctr" 2>&1 | grep -qiE 'panicked|RUST_BACKTRACE'; then
        log "FAIL the server panicked:"
        e logs "$ctr" 2>&1 | grep -iE -A3 'panicked' >&2
        failures=$((failures + 1))
    fi
    log "last log lines:"
    e logs "$ctr" 2>&1 | tail -n 4 | sed 's/^/    /' >&2
    e rm -f "$ctr" >/dev/null
    trap - EXIT
    ((failures == 0)) || die "$failures check(s) failed in the run phase"
    log "run phase: all checks passed"
fi

# --- compose: docker-compose.yml with what can be run here -------------------------
if want compose; then
    if [[ $CONTAINER_ENGINE == podman ]]; then
        if ! command -v podman-compose >/dev/null; then
            [[ -x $work/venv/bin/podman-compose ]] || {
                python3 -m venv "$work/venv"
                "$work/venv/bin/pip" install --quiet --disable-pip-version-check podman-compose
            }
            export PATH=$work/venv/bin:$PATH
        fi
        compose=(podman-compose)
        [[ -n ${PODMAN_STORAGE_DRIVER:-} ]] && compose+=(--podman-args "--storage-driver $PODMAN_STORAGE_DRIVER")
    else
        compose=(docker compose)
    fi
    # The compose file's own services, with what this check changes:
    #  - encdec: the image built above, on the demo config (default.toml needs the hub;
    #    MODEL_ID/TASK/REVISION emptied, as the compose file's one-model default would
    #    replace the config's models with a hub download),
    #  - prometheus: the stand-in when prom/prometheus can't be pulled,
    #  - grafana: run only when its image is there.
    services=(encdec prometheus)
    override=$work/compose.override.yml
    {
        echo "services:"
        echo "  encdec:"
        echo "    image: $image"
        echo "    command: [\"serve\", \"--config\", \"/srv/demo/config/demo.toml\", \"--host\", \"0.0.0.0\"]"
        echo "    volumes:"
        echo "      - ./config:/srv/demo/config:ro"
        echo "      - ./tests/fixtures:/srv/demo/tests/fixtures:ro"
        echo "    environment:"
        echo "      MODEL_ID: \"\""
        echo "      TASK: \"\""
        echo "      REVISION: \"\""
        if [[ -n $prometheus_image ]]; then
            echo "  prometheus:"
            echo "    image: $prometheus_image"
        fi
    } >"$override"
    grafana_image=$(python3 -c "import sys,yaml; print(yaml.safe_load(open('docker-compose.yml'))['services']['grafana']['image'])" 2>/dev/null || echo grafana/grafana)
    if has_image "$grafana_image"; then
        services+=(grafana)
    else
        log "NOT RUN: grafana ($grafana_image can't be pulled here and Debian has no package)"
    fi
    for p in 8080 9090; do
        curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$p/" && die "port $p is taken: the compose file publishes it"
    done
    c() { "${compose[@]}" -p encdec-check -f docker-compose.yml -f "$override" "$@"; }
    trap 'c down -v >/dev/null 2>&1 || true' EXIT
    log "compose up ${services[*]}"
    c up -d --no-build "${services[@]}" >"$work/compose.log" 2>&1 \
        || { tail -n 30 "$work/compose.log" >&2; die "compose up failed"; }
    start=$SECONDS
    until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:8080/ready) == 200 ]]; do
        ((SECONDS - start < startup_timeout)) || { c logs encdec 2>&1 | tail -n 20 >&2; die "compose encdec: /ready not 200"; }
        sleep 1
    done
    log "compose encdec /ready 200 after $((SECONDS - start)) s"
    url=http://127.0.0.1:8080
    check compose-summarize 200 POST /summarize '{"inputs": "Compose says hello."}'
    # Prometheus scrapes encdec:8080 over the compose network (deploy/prometheus/prometheus.yml).
    until curl -s --max-time 2 'http://127.0.0.1:9090/api/v1/query?query=up' -o "$work/resp" \
        && python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['data']['result']; sys.exit(0 if any(x['value'][1]=='1' for x in r) else 1)" "$work/resp"; do
        ((SECONDS - start < startup_timeout)) || { log "prometheus said: $(head -c 400 "$work/resp")"; c logs prometheus 2>&1 | tail -n 10 >&2; die "prometheus never saw encdec up"; }
        sleep 2
    done
    log "prometheus: $(python3 -c "import json,sys; print([(x['metric'].get('job'), x['metric'].get('instance'), x['value'][1]) for x in json.load(open(sys.argv[1]))['data']['result']])" "$work/resp")"
    curl -s --max-time 5 'http://127.0.0.1:9090/api/v1/query?query=encdec_requests_total' -o "$work/resp"
    json_has "$work/resp" "len(j['data']['result']) > 0"
    log "compose down"
    c down -v >"$work/compose-down.log" 2>&1 || log "compose down: $(tail -n 3 "$work/compose-down.log")"
    trap - EXIT
    ((failures == 0)) || die "$failures check(s) failed in the compose phase"
    log "compose phase: passed (services run: ${services[*]})"
fi
log "OK (${phases[*]})"
