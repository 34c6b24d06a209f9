#!/usr/bin/env bash
# Container smoke test, with no image registry: builds the CPU image on a Debian bookworm base
# made here (debootstrap + docker import), runs it with a small model directory mounted, waits
# for /ready and a healthy HEALTHCHECK, streams one completion, then stops it with SIGTERM while a
# stream is in flight and checks that the stream finished and the container exited with code 0
# within the grace period.
#
#   .venv/bin/python scripts/make_demo_model.py .cache/demo-gpt2
#   scripts/container_smoke.sh .cache/demo-gpt2          # as root: debootstrap, dockerd
#
# Heavy: debootstrap, an image build that installs torch, several GB of disk. It needs the Debian
# mirror and PyPI (the build runs with --network host). If no Docker daemon answers, it starts
# one itself (`dockerd --bridge=none --iptables=false` on a private socket; installs the Debian
# docker.io package when dockerd is missing) and stops it at the end; containers run with
# --network host, so the server binds 127.0.0.1:$SMOKE_PORT.
#
# Environment (defaults in brackets):
#   SMOKE_PORT [18000]        port the server listens on (host network)
#   SMOKE_WORKDIR [.cache/container-smoke]  rootfs, dockerd data and logs
#   SMOKE_IMAGE [gpt2-serve:smoke-cpu]      the image built
#   SMOKE_BASE_IMAGE [gpt2-serve-base:bookworm]  the imported base (reused when present)
#   DEBIAN_MIRROR [http://deb.debian.org/debian]
#   TORCH_WHEEL_DIR [/opt/wheels]  a directory holding a CPU torch wheel for cp311
#                                  (torch-*+cpu-cp311-*.whl): served to the build over
#                                  127.0.0.1; without one, torch comes from TORCH_INDEX_URL
#   TORCH_INDEX_URL [https://download.pytorch.org/whl/cpu]
#   READY_TIMEOUT [600]       seconds to wait for /ready (the build is not counted)
#   DRAIN_SECONDS [10]        GPT2_DRAIN_TIMEOUT_SECONDS in the container
#   STOP_TIMEOUT [DRAIN_SECONDS + 20]  docker stop --time: SIGKILL after this
#   KEEP_CONTAINER [0]        1: leave the stopped container for inspection
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

PORT=${SMOKE_PORT:-18000}
WORK=$(realpath -m "${SMOKE_WORKDIR:-.cache/container-smoke}")
IMAGE=${SMOKE_IMAGE:-gpt2-serve:smoke-cpu}
BASE_IMAGE=${SMOKE_BASE_IMAGE:-gpt2-serve-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WHEEL_DIR=${TORCH_WHEEL_DIR:-/opt/wheels}
READY_TIMEOUT=${READY_TIMEOUT:-600}
DRAIN_SECONDS=${DRAIN_SECONDS:-10}
STOP_TIMEOUT=${STOP_TIMEOUT:-$((DRAIN_SECONDS + 20))}
NAME=gpt2-serve-smoke-$$
BASE_URL=http://127.0.0.1:$PORT
mkdir -p "$WORK"

DOCKERD_PID=""
WHEEL_SERVER_PID=""
STREAM_PID=""
log() { printf '\n[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '\n[smoke] FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local rc=$?
    set +e
    if [[ -n $STREAM_PID ]]; then kill "$STREAM_PID" 2>/dev/null; fi
    if docker container inspect "$NAME" >/dev/null 2>&1; then
        if [[ $rc -ne 0 ]]; then
            echo "--- container logs (last 60 lines) ---"
            docker logs --tail 60 "$NAME" 2>&1
        fi
        if [[ ${KEEP_CONTAINER:-0} != 1 ]]; then docker rm -f "$NAME" >/dev/null 2>&1; fi
    fi
    if [[ -n $WHEEL_SERVER_PID ]]; then kill "$WHEEL_SERVER_PID" 2>/dev/null; fi
    if [[ -n $DOCKERD_PID ]]; then
        kill "$DOCKERD_PID" 2>/dev/null
        wait "$DOCKERD_PID" 2>/dev/null
    fi
    exit "$rc"
}
trap cleanup EXIT

need_root() { [[ $(id -u) -eq 0 ]] || die "$1 needs root"; }
apt_install() {
    need_root "apt-get install $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v curl >/dev/null 2>&1 || apt_install curl

# --- a Docker daemon -------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    log "using the running Docker daemon"
else
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    need_root "starting dockerd"
    # Runtime state under a short path in /run (socket paths have a length limit); images and
    # layers under $WORK, kept between runs.
    RUN_DIR=/run/gpt2-serve-smoke
    mkdir -p "$RUN_DIR"
    export DOCKER_HOST=unix://$RUN_DIR/docker.sock
    log "starting dockerd on $DOCKER_HOST (log: $WORK/dockerd.log)"
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
        kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log"; die "dockerd exited"; }
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log"; die "dockerd did not answer in 60 s"; }
fi

# --- the base image: Debian bookworm with python3 (3.11) and venv, made here ------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE already present"
else
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    need_root "debootstrap"
    ROOTFS=$WORK/rootfs
    rm -rf "$ROOTFS"
    log "debootstrap bookworm (minbase + python3, python3-venv) into $ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    log "docker import -> $BASE_IMAGE"
    tar -C "$ROOTFS" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$ROOTFS"
fi

# --- where torch comes from --------------------------------------------------------------------
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
    log "torch $TORCH_VERSION from $WHEEL_DIR, served on 127.0.0.1:$WHEEL_PORT"
    python3 -m http.server --bind 127.0.0.1 --directory "$WHEEL_DIR" "$WHEEL_PORT" \
        >"$WORK/wheel-server.log" 2>&1 &
    WHEEL_SERVER_PID=$!
    sleep 1
    BUILD_ARGS+=(
        --build-arg "TORCH_INDEX_URL=https://pypi.org/simple"
        --build-arg "TORCH_FIND_LINKS=http://127.0.0.1:$WHEEL_PORT/"
        --build-arg "TORCH_SPEC=torch==$TORCH_VERSION"
    )
else
    BUILD_ARGS+=(--build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
fi

# --- build ---------------------------------------------------------------------------------------
# The classic builder: BuildKit would want the buildx plugin and its own images.
log "docker build -t $IMAGE (log: $WORK/build.log)"
DOCKER_BUILDKIT=0 docker build --network host "${BUILD_ARGS[@]}" -t "$IMAGE" . \
    >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "docker build failed"; }
docker image inspect -f 'image {{.Id}}, user {{.Config.User}}, {{.Size}} bytes' "$IMAGE"

# --- run -----------------------------------------------------------------------------------------
log "docker run $NAME: model $MODEL_DIR, port $PORT"
docker run -d --name "$NAME" --network host \
    --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -v "$MODEL_DIR:/models/smoke:ro" \
    -e GPT2_MODEL=/models/smoke \
    -e GPT2_DEVICE=cpu \
    -e GPT2_HOST=127.0.0.1 \
    -e GPT2_PORT="$PORT" \
    -e GPT2_MAX_NUM_SEQS=4 \
    -e GPT2_DRAIN_TIMEOUT_SECONDS="$DRAIN_SECONDS" \
    "$IMAGE" >/dev/null

running() { [[ $(docker inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null) == true ]]; }

log "waiting for /ready (up to $READY_TIMEOUT s)"
deadline=$((SECONDS + READY_TIMEOUT))
until curl -sf "$BASE_URL/ready" >/dev/null; do
    running || die "the container exited before it was ready"
    ((SECONDS < deadline)) || die "not ready after $READY_TIMEOUT s"
    sleep 2
done
log "ready after $((SECONDS - deadline + READY_TIMEOUT)) s"
curl -sf "$BASE_URL/health" >/dev/null || die "/health did not answer 200"
metrics=$(curl -s -o /dev/null -w '%{http_code}' "$BASE_URL/metrics" || true)
echo "/metrics: HTTP $metrics"

log "waiting for the image's HEALTHCHECK to report healthy (checks every 30 s)"
deadline=$((SECONDS + 90))
until [[ $(docker inspect -f '{{.State.Health.Status}}' "$NAME") == healthy ]]; do
    running || die "the container exited"
    ((SECONDS < deadline)) || die "HEALTHCHECK not healthy: $(docker inspect -f '{{json .State.Health}}' "$NAME")"
    sleep 3
done
echo "health: healthy"

log "streaming one completion"
curl -sN --max-time 60 "$BASE_URL/v1/completions" -H 'content-type: application/json' \
    -d '{"prompt": "Once upon a time", "max_tokens": 16, "stream": true}' >"$WORK/stream.txt" \
    || die "the streaming request failed"
chunks=$(grep -c '^data: {' "$WORK/stream.txt" || true)
grep -q '^data: \[DONE\]' "$WORK/stream.txt" || { cat "$WORK/stream.txt"; die "no [DONE] in the stream"; }
((chunks >= 1)) || die "no data chunks in the stream"
echo "stream: $chunks chunks, then [DONE]"

# --- SIGTERM: drain and a clean exit -------------------------------------------------------------
log "SIGTERM with a stream in flight: docker stop --time $STOP_TIMEOUT (drain $DRAIN_SECONDS s)"
curl -sN --max-time "$STOP_TIMEOUT" "$BASE_URL/v1/completions" -H 'content-type: application/json' \
    -d '{"prompt": "The drain test", "max_tokens": 256, "ignore_eos": true, "stream": true}' \
    >"$WORK/drain-stream.txt" 2>&1 &
STREAM_PID=$!
sleep 0.5
stop_start=$SECONDS
docker stop --time "$STOP_TIMEOUT" "$NAME" >/dev/null
stop_took=$((SECONDS - stop_start))
wait "$STREAM_PID" || true
STREAM_PID=""
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
echo "stopped in ${stop_took} s, exit code $exit_code"
docker logs --tail 15 "$NAME" 2>&1 | sed 's/^/  | /'
[[ $exit_code == 0 ]] || die "exit code $exit_code after SIGTERM (137: killed at the grace period)"
((stop_took < STOP_TIMEOUT)) || die "the stop took the whole grace period"
grep -q '^data: \[DONE\]' "$WORK/drain-stream.txt" \
    || die "the in-flight stream did not finish during the drain (see $WORK/drain-stream.txt)"
echo "in-flight stream: $(grep -c '^data: {' "$WORK/drain-stream.txt" || true) chunks, then [DONE]"

log "PASS: built $IMAGE, ready, healthy, streamed, drained and exited 0 on SIGTERM"
