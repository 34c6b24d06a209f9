#!/usr/bin/env bash
# Container smoke test, with no image registry: builds the CPU image on a Debian bookworm base
# made here (debootstrap + docker import), runs it the way the Kubernetes manifests do (user
# 10001, read-only root, tmpfs /tmp and /cache, no capabilities) with a small model directory
# mounted read-only, waits for /ready and a healthy HEALTHCHECK, checks /metrics, streams one
# completion (SSE, ending in `data: [DONE]`), then sends SIGTERM while a stream is in flight and
# checks that the stream finished and the container exited with code 0 within the grace period.
#
#   .venv/bin/python scripts/make_demo_model.py .cache/smoke-model
#   scripts/container_smoke.sh .cache/smoke-model          # as root: debootstrap, dockerd
#
# Needs root (debootstrap, dockerd, apt-get), the Debian mirror and PyPI (the build runs with
# --network host), several GB of disk. If no Docker daemon answers, it starts one itself
# (`dockerd --bridge=none --iptables=false` on a private socket; installs Debian's docker.io
# when dockerd is missing) and stops it at the end; containers run with --network host, so the
# server binds 127.0.0.1:$SMOKE_PORT. Every wait is bounded; each phase prints its duration.
# On exit it removes the container and every image it made, the builder stage's intermediate
# images included (KEEP_IMAGES=1 keeps them).
#
# The base image contract (what the Dockerfile needs from BASE_IMAGE, and what this script's
# base provides): /bin/sh, groupadd/useradd, and either $PYTHON (3.11 here) with a working
# `-m venv` (ensurepip), or apt-get able to install it; CA certificates that the package
# indexes verify against. The base made here is bookworm minbase + python3 (3.11),
# python3-venv, ca-certificates, plus this host's extra CAs (/usr/local/share/ca-certificates,
# for a TLS-intercepting mirror) and PIP_CERT pointing at the system bundle. The debootstrap
# result is cached as a tarball under $SMOKE_WORKDIR, keyed by suite, package list, mirror and
# CAs, so later runs only `docker import` it.
#
# Environment (defaults in brackets):
#   CONTAINER_SMOKE [auto]    required: a missing prerequisite (root, docker, debootstrap,
#                             a daemon that will not start) fails; otherwise it is reported
#                             as SKIP and the script exits 0
#   SMOKE_PORT [18000]        port the server listens on (host network)
#   SMOKE_WORKDIR [.cache/container-smoke]  base tarball, dockerd data, logs
#   SMOKE_IMAGE [gpt2-serve:smoke-cpu]      the image built
#   SMOKE_BASE_IMAGE [gpt2-serve-base:bookworm]  the imported base
#   DEBIAN_MIRROR [http://deb.debian.org/debian]
#   TORCH_WHEEL_DIR [/opt/wheels]  a directory holding a CPU torch wheel for cp311
#                                  (torch-*+cpu-cp311-*.whl): served to the build over
#                                  127.0.0.1; without one, torch comes from TORCH_INDEX_URL
#   TORCH_INDEX_URL [https://download.pytorch.org/whl/cpu]
#   PIP_INDEX_URL [https://pypi.org/simple]  index for everything else in the build
#   BUILD_TIMEOUT [2400]      seconds for docker build
#   READY_TIMEOUT [300]       seconds to wait for /ready once the container runs
#   DRAIN_SECONDS [10]        GPT2_DRAIN_TIMEOUT_SECONDS in the container
#   STOP_TIMEOUT [DRAIN_SECONDS + 20]  the grace period: docker stop --time (SIGKILL after it)
#   KEEP_CONTAINER [0]        1: leave the stopped container for inspection
#   KEEP_IMAGES [0]           1: keep the built image and the base image (fast reruns)
#   DOCKERD_ARGS []           extra dockerd flags, e.g. --storage-driver vfs where overlay2
#                             cannot work (dockerd otherwise picks a driver itself)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -ne 1 ]]; then
    echo "usage: $0 MODEL_DIR   (make one: .venv/bin/python scripts/make_demo_model.py DIR)" >&2
    exit 2
fi
MODEL_DIR=$(realpath "$1")
[[ -f $MODEL_DIR/config.json ]] || { echo "no config.json in $MODEL_DIR" >&2; exit 2; }

MODE=${CONTAINER_SMOKE:-auto}
PORT=${SMOKE_PORT:-18000}
WORK=$(realpath -m "${SMOKE_WORKDIR:-.cache/container-smoke}")
IMAGE=${SMOKE_IMAGE:-gpt2-serve:smoke-cpu}
BASE_IMAGE=${SMOKE_BASE_IMAGE:-gpt2-serve-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WHEEL_DIR=${TORCH_WHEEL_DIR:-/opt/wheels}
INDEX_URL=${PIP_INDEX_URL:-https://pypi.org/simple}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-2400}
READY_TIMEOUT=${READY_TIMEOUT:-300}
DRAIN_SECONDS=${DRAIN_SECONDS:-10}
STOP_TIMEOUT=${STOP_TIMEOUT:-$((DRAIN_SECONDS + 20))}
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
NAME=gpt2-serve-smoke-$$
BASE_URL=http://127.0.0.1:$PORT
mkdir -p "$WORK"

DOCKERD_PID=""
WHEEL_SERVER_PID=""
STREAM_PID=""
MADE_IMAGES=()
TIMINGS=()
PHASE=""
PHASE_START=$SECONDS
T0=$SECONDS

log() { printf '\n[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '\n[smoke] FAIL: %s\n' "$*" >&2; exit 1; }
# A missing prerequisite: fatal only when the smoke test is required.
skip() {
    if [[ $MODE == required ]]; then die "$* (CONTAINER_SMOKE=required)"; fi
    printf '\n[smoke] SKIP: %s (set CONTAINER_SMOKE=required to make this fail)\n' "$*" >&2
    SKIPPED=1
    exit 0
}
SKIPPED=0
end_phase() {
    if [[ -n $PHASE ]]; then
        TIMINGS+=("$(printf '%-54s %5d s' "$PHASE" $((SECONDS - PHASE_START)))")
        printf '[smoke] %s: %d s\n' "$PHASE" $((SECONDS - PHASE_START))
    fi
    PHASE=""
}
phase() { end_phase; PHASE=$1; PHASE_START=$SECONDS; log "$1"; }

cleanup() {
    local rc=$?
    set +e
    end_phase
    PHASE="cleanup (container, images, dockerd)"
    PHASE_START=$SECONDS
    if [[ -n $STREAM_PID ]]; then kill "$STREAM_PID" 2>/dev/null; fi
    if [[ -n ${DOCKER_READY:-} ]] && docker container inspect "$NAME" >/dev/null 2>&1; then
        if [[ $rc -ne 0 ]]; then
            echo "--- container logs (last 60 lines) ---"
            docker logs --tail 60 "$NAME" 2>&1
        fi
        if [[ ${KEEP_CONTAINER:-0} != 1 ]]; then docker rm -f -v "$NAME" >/dev/null 2>&1; fi
    fi
    if [[ -n ${DOCKER_READY:-} && ${KEEP_IMAGES:-0} != 1 && ${KEEP_CONTAINER:-0} != 1 ]]; then
        for image in "${MADE_IMAGES[@]}"; do docker image rm -f "$image" >/dev/null 2>&1; done
        # The classic builder also leaves the builder stage's intermediate images: remove every
        # image that did not exist before this run (leaves first, so a few passes).
        for _ in 1 2 3 4 5; do
            mapfile -t new_images < <(comm -13 <(printf '%s\n' "$IMAGES_BEFORE") \
                <(docker images -aq --no-trunc | sort -u))
            [[ ${#new_images[@]} -gt 0 ]] || break
            docker image rm -f "${new_images[@]}" >/dev/null 2>&1
        done
    fi
    if [[ -n $WHEEL_SERVER_PID ]]; then kill "$WHEEL_SERVER_PID" 2>/dev/null; fi
    if [[ -n $DOCKERD_PID ]]; then
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        kill -9 "$DOCKERD_PID" 2>/dev/null
        wait "$DOCKERD_PID" 2>/dev/null
    fi
    TIMINGS+=("$(printf '%-54s %5d s' "$PHASE" $((SECONDS - PHASE_START)))")
    if [[ $rc -eq 0 && $SKIPPED != 1 ]]; then RESULT=PASS; elif [[ $SKIPPED == 1 ]]; then RESULT=SKIP; else RESULT=FAIL; fi
    if [[ ${#TIMINGS[@]} -gt 0 && $SKIPPED != 1 ]]; then
        printf '\n[smoke] %s; timings (total %d s):\n' "$RESULT" $((SECONDS - T0))
        printf '  %s\n' "${TIMINGS[@]}"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

is_root() { [[ $(id -u) -eq 0 ]]; }
apt_install() {  # apt_install PACKAGE...: returns non-zero instead of exiting
    is_root || return 1
    command -v apt-get >/dev/null 2>&1 || return 1
    echo "apt-get install $* (log: $WORK/apt.log)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "$@"; } >>"$WORK/apt.log" 2>&1
}

# --- prerequisites ---------------------------------------------------------------------------
phase "prerequisites (curl, docker, debootstrap)"
command -v curl >/dev/null 2>&1 || apt_install curl || skip "curl is missing and cannot be installed"
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
        apt_install docker.io || skip "docker/dockerd missing and 'apt-get install docker.io' failed (root: $(is_root && echo yes || echo no))"
    fi
fi

# --- a Docker daemon -------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    echo "using the running Docker daemon ($(docker info -f '{{.ServerVersion}}, {{.Driver}}'))"
else
    is_root || skip "no Docker daemon answers and starting dockerd needs root"
    # Runtime state under a short path in /run (socket paths have a length limit); images and
    # layers under $WORK.
    RUN_DIR=/run/gpt2-serve-smoke
    mkdir -p "$RUN_DIR"
    export DOCKER_HOST=unix://$RUN_DIR/docker.sock
    echo "starting dockerd on $DOCKER_HOST (log: $WORK/dockerd.log)"
    # shellcheck disable=SC2086  # DOCKERD_ARGS is a list of extra flags
    dockerd --bridge=none --iptables=false \
        --host "$DOCKER_HOST" \
        --data-root "$WORK/docker-data" \
        --exec-root "$RUN_DIR/exec" \
        --pidfile "$RUN_DIR/dockerd.pid" \
        ${DOCKERD_ARGS:-} >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            tail -20 "$WORK/dockerd.log"
            DOCKERD_PID=""
            skip "dockerd exited at start (log above, $WORK/dockerd.log)"
        fi
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log"; skip "dockerd did not answer in 60 s"; }
    echo "dockerd $(docker info -f '{{.ServerVersion}}, storage driver {{.Driver}}')"
fi
DOCKER_READY=1
IMAGES_BEFORE=$(docker images -aq --no-trunc | sort -u)

# --- the base image: Debian bookworm with python3 (3.11) and venv, made here ------------------
phase "base image ($SUITE, debootstrap or cached tarball)"
# The cache key: everything that changes the root filesystem.
extra_cas=$(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null | sort || true)
# shellcheck disable=SC2086  # a list of files, none with spaces
key=$( { echo "$SUITE $PACKAGES $MIRROR"; [[ -z $extra_cas ]] || cat $extra_cas; } | sha256sum | cut -c1-12)
TARBALL=$WORK/base-$SUITE-$key.tar
if [[ -f $TARBALL ]]; then
    echo "cached root filesystem: $TARBALL"
else
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap \
        || skip "debootstrap is missing and 'apt-get install debootstrap' failed"
    is_root || skip "debootstrap needs root"
    ROOTFS=$WORK/rootfs
    rm -rf "$ROOTFS"
    echo "debootstrap --variant=minbase --include=$PACKAGES $SUITE (log: $WORK/debootstrap.log)"
    timeout 1200 debootstrap --variant=minbase --include="$PACKAGES" \
        "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
    if [[ -n $extra_cas ]]; then
        echo "adding this host's CAs: $(echo "$extra_cas" | xargs -n1 basename | tr '\n' ' ')"
        # shellcheck disable=SC2086
        cp $extra_cas "$ROOTFS/usr/local/share/ca-certificates/"
        chroot "$ROOTFS" update-ca-certificates >>"$WORK/debootstrap.log" 2>&1
    fi
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
        "$ROOTFS"/var/log/*.log
    tar -C "$ROOTFS" --numeric-owner -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$ROOTFS"
    echo "cached: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
        && [[ $(docker image inspect -f '{{index .Config.Labels "smoke.base.key"}}' "$BASE_IMAGE") == "$key" ]]; then
    echo "base image $BASE_IMAGE already present"
else
    echo "docker import -> $BASE_IMAGE"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change "LABEL smoke.base.key=$key" \
        --change 'CMD ["/bin/bash"]' \
        "$TARBALL" "$BASE_IMAGE" >/dev/null
    MADE_IMAGES+=("$BASE_IMAGE")
fi

# --- where torch comes from --------------------------------------------------------------------
phase "docker build (CPU image)"
BUILD_ARGS=(
    --build-arg "BASE_IMAGE=$BASE_IMAGE"
    --build-arg "PYTHON=python3.11"
)
TORCH_WHEEL=""
if [[ -d $WHEEL_DIR ]]; then
    TORCH_WHEEL=$(find "$WHEEL_DIR" -maxdepth 1 -name 'torch-*+cpu-cp311-*.whl' -printf '%f\n' | sort -V | tail -n1)
fi
if [[ -n $TORCH_WHEEL ]]; then
    WHEEL_PORT=$((PORT + 1))
    TORCH_VERSION=${TORCH_WHEEL#torch-}
    TORCH_VERSION=${TORCH_VERSION%%-*}
    echo "torch $TORCH_VERSION from $WHEEL_DIR, served on 127.0.0.1:$WHEEL_PORT"
    python3 -m http.server --bind 127.0.0.1 --directory "$WHEEL_DIR" "$WHEEL_PORT" \
        >"$WORK/wheel-server.log" 2>&1 &
    WHEEL_SERVER_PID=$!
    for _ in $(seq 20); do
        curl -sf -o /dev/null "http://127.0.0.1:$WHEEL_PORT/" && break
        sleep 0.5
    done
    curl -sf -o /dev/null "http://127.0.0.1:$WHEEL_PORT/" || die "the wheel server did not start"
    BUILD_ARGS+=(
        --build-arg "TORCH_INDEX_URL=$INDEX_URL"
        --build-arg "TORCH_FIND_LINKS=http://127.0.0.1:$WHEEL_PORT/"
        --build-arg "TORCH_SPEC=torch==$TORCH_VERSION"
    )
else
    BUILD_ARGS+=(--build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
fi

# The classic builder: BuildKit would want the buildx plugin and its own images.
echo "docker build -t $IMAGE ${BUILD_ARGS[*]} (log: $WORK/build.log)"
MADE_IMAGES+=("$IMAGE")
DOCKER_BUILDKIT=0 timeout "$BUILD_TIMEOUT" docker build --network host --pull=false \
    "${BUILD_ARGS[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; die "docker build failed (or took over $BUILD_TIMEOUT s)"; }
if [[ -n $WHEEL_SERVER_PID ]]; then kill "$WHEEL_SERVER_PID" 2>/dev/null; WHEEL_SERVER_PID=""; fi
docker image inspect -f 'image {{.Id}}, user {{.Config.User}}, {{.Size}} bytes' "$IMAGE"

# --- run: as the Kubernetes Deployment runs it ---------------------------------------------------
phase "start until /ready"
# The container runs as 10001: it can read the model only if the files are world-readable.
if [[ -n $(find "$MODEL_DIR" ! -perm -o=r -print -quit) ]]; then
    echo "$MODEL_DIR has files only their owner can read: mounting a world-readable copy"
    rm -rf "$WORK/model"
    cp -r "$MODEL_DIR" "$WORK/model"
    chmod -R a+rX "$WORK/model"
    MODEL_DIR=$WORK/model
fi
echo "docker run $NAME: model $MODEL_DIR (read-only), port $PORT"
docker run -d --name "$NAME" --network host \
    --user 10001:10001 \
    --read-only \
    --tmpfs /tmp:rw,nosuid,nodev,size=1g \
    --tmpfs /cache:rw,nosuid,nodev,uid=10001,gid=10001,mode=0755 \
    --cap-drop ALL --security-opt no-new-privileges \
    -v "$MODEL_DIR:/models/smoke:ro" \
    -e GPT2_MODEL=/models/smoke \
    -e GPT2_DEVICE=cpu \
    -e GPT2_HOST=127.0.0.1 \
    -e GPT2_PORT="$PORT" \
    -e GPT2_MAX_NUM_SEQS=4 \
    -e GPT2_DRAIN_TIMEOUT_SECONDS="$DRAIN_SECONDS" \
    "$IMAGE" >/dev/null

running() { [[ $(docker inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null) == true ]]; }

deadline=$((SECONDS + READY_TIMEOUT))
until curl -sf --max-time 5 "$BASE_URL/ready" >/dev/null; do
    running || die "the container exited before it was ready"
    ((SECONDS < deadline)) || die "not ready after $READY_TIMEOUT s"
    sleep 1
done
echo "ready after $((SECONDS - PHASE_START)) s"

phase "health, metrics, one streamed completion"
curl -sf --max-time 5 "$BASE_URL/health" >/dev/null || die "/health did not answer 200"
metrics_code=$(curl -s --max-time 10 -o "$WORK/metrics.txt" -w '%{http_code}' "$BASE_URL/metrics" || true)
[[ $metrics_code == 200 ]] || die "/metrics answered HTTP $metrics_code"
grep -q '^gpt2_num_requests_waiting' "$WORK/metrics.txt" \
    || die "/metrics has no gpt2_num_requests_waiting (see $WORK/metrics.txt)"
echo "/metrics: HTTP 200, $(grep -c '^gpt2_' "$WORK/metrics.txt") gpt2_* samples"

: >"$WORK/stream.txt"
curl -sfN --max-time 60 "$BASE_URL/v1/completions" -H 'content-type: application/json' \
    -d '{"prompt": "Once upon a time", "max_tokens": 16, "stream": true}' >"$WORK/stream.txt" \
    || die "the streaming request failed"
chunks=$(grep -c '^data: {' "$WORK/stream.txt" || true)
last=$(grep '^data: ' "$WORK/stream.txt" | tail -n1 || true)
((chunks >= 1)) || { cat "$WORK/stream.txt"; die "no data chunks in the stream"; }
[[ $last == 'data: [DONE]' ]] || { cat "$WORK/stream.txt"; die "the stream does not end with data: [DONE]"; }
echo "stream: $chunks chunks, then data: [DONE]"

# The image's own HEALTHCHECK (first probe 30 s after the start).
deadline=$((SECONDS + 90))
until [[ $(docker inspect -f '{{.State.Health.Status}}' "$NAME") == healthy ]]; do
    running || die "the container exited"
    ((SECONDS < deadline)) || die "HEALTHCHECK not healthy: $(docker inspect -f '{{json .State.Health}}' "$NAME")"
    sleep 2
done
echo "HEALTHCHECK: healthy"

# --- SIGTERM: drain and a clean exit -------------------------------------------------------------
phase "SIGTERM with a stream in flight"
: >"$WORK/drain-stream.txt"   # empty now, so the wait below cannot see an earlier run's stream
curl -sN --max-time "$STOP_TIMEOUT" "$BASE_URL/v1/completions" -H 'content-type: application/json' \
    -d '{"prompt": "The drain test", "max_tokens": 256, "ignore_eos": true, "stream": true}' \
    >"$WORK/drain-stream.txt" 2>&1 &
STREAM_PID=$!
deadline=$((SECONDS + 30))
until grep -q '^data: {' "$WORK/drain-stream.txt"; do
    ((SECONDS < deadline)) || die "the drain-test stream sent nothing in 30 s"
    sleep 0.2
done
echo "stream in flight; docker stop --time $STOP_TIMEOUT (drain $DRAIN_SECONDS s)"
stop_start=$SECONDS
timeout $((STOP_TIMEOUT + 30)) docker stop --time "$STOP_TIMEOUT" "$NAME" >/dev/null \
    || die "docker stop did not return"
stop_took=$((SECONDS - stop_start))
wait "$STREAM_PID" || true
STREAM_PID=""
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
echo "stopped in ${stop_took} s (grace $STOP_TIMEOUT s), exit code $exit_code"
docker logs --tail 15 "$NAME" 2>&1 | sed 's/^/  | /'
[[ $exit_code == 0 ]] || die "exit code $exit_code after SIGTERM (137: killed at the grace period)"
((stop_took < STOP_TIMEOUT)) || die "the stop took the whole grace period"
drain_last=$(grep '^data: ' "$WORK/drain-stream.txt" | tail -n1 || true)
[[ $drain_last == 'data: [DONE]' ]] \
    || die "the in-flight stream did not finish during the drain (see $WORK/drain-stream.txt)"
echo "in-flight stream: $(grep -c '^data: {' "$WORK/drain-stream.txt" || true) chunks, then data: [DONE]"

end_phase
log "PASS: built $IMAGE, ready, healthy, metrics, streamed, drained and exited 0 on SIGTERM"
